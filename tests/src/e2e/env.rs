//! The kernel environment prepared by `ci/setup-kernel`, read from `$KSPLICE_CACHE/kernel.env`
//! or, with `KSPLICE_KERNEL` set, from that release's `$KSPLICE_CACHE/<version>/kernel.env`.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Default cache directory when `KSPLICE_CACHE` is not set.
pub const DEFAULT_CACHE: &str = "/var/cache/ksplice-ci";

/// The variable naming the release to run against (a Debian version such as `6.1.187-1`,
/// or an ABI such as `6.1.0-53` or `6.1.0-53-amd64`); unset means apt's candidate.
pub const KERNEL_VAR: &str = "KSPLICE_KERNEL";

/// The file of the environment: `kernel.env` holds the candidate; each release set up by
/// `ci/setup-kernel <release>` has its own `<version>/kernel.env` (docs/releases.md).
const ENV_FILE: &str = "kernel.env";

/// Paths and versions of Debian's kernel triple the end-to-end suite runs against.
#[derive(Debug, Clone)]
pub struct KernelEnv {
    /// The cache root (`$KSPLICE_CACHE`).
    pub cache: PathBuf,
    /// Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Per-version cache directory.
    pub kdir: PathBuf,
    /// Pristine extracted source: never modified.
    pub source: PathBuf,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// `lib/modules/<release>` of the unpacked image package.
    pub modules: PathBuf,
    /// Installed headers, the `-C` directory for external module builds.
    pub headers: PathBuf,
}

impl KernelEnv {
    /// Reads `$KSPLICE_CACHE/kernel.env` (default [`DEFAULT_CACHE`]), or the file of the
    /// release named by `$KSPLICE_KERNEL` (see [`env_file`]).
    pub fn load() -> Result<Self> {
        let cache = std::env::var_os("KSPLICE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
        let kernel = std::env::var(KERNEL_VAR).ok().filter(|k| !k.is_empty());
        let file = env_file(&cache, kernel.as_deref())?;
        let text = std::fs::read_to_string(&file).with_context(|| {
            let setup = match &kernel {
                Some(k) => format!("ci/setup-kernel {k}"),
                None => "ci/setup-kernel".to_string(),
            };
            format!(
                "cannot read {}: run {setup} first to install Debian's kernel",
                file.display()
            )
        })?;
        Self::parse(&cache, &text).with_context(|| format!("in {}", file.display()))
    }

    fn parse(cache: &Path, text: &str) -> Result<Self> {
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |k: &str| -> Result<String> {
            match vars.get(k) {
                Some(v) if !v.is_empty() => Ok((*v).to_string()),
                _ => bail!("{k} is missing: run ci/setup-kernel again"),
            }
        };
        let env = Self {
            cache: cache.to_path_buf(),
            version: get("KSPLICE_KVERSION")?,
            release: get("KSPLICE_KRELEASE")?,
            kdir: get("KSPLICE_KDIR")?.into(),
            source: get("KSPLICE_KSOURCE")?.into(),
            vmlinuz: get("KSPLICE_VMLINUZ")?.into(),
            config: get("KSPLICE_KCONFIG")?.into(),
            modules: get("KSPLICE_KMODULES")?.into(),
            headers: get("KSPLICE_KHEADERS")?.into(),
        };
        for p in [&env.vmlinuz, &env.modules, &env.headers, &env.source] {
            if !p.exists() {
                bail!("{} does not exist: run ci/setup-kernel again", p.display());
            }
        }
        Ok(env)
    }

    /// The `--symvers` option for `ksplice-create`: none for the candidate, whose installed
    /// headers are where ksplice-create looks by default (so its runs keep proving that
    /// lookup); another release's headers are unpacked under its cache (docs/releases.md),
    /// where ksplice-create cannot guess them.
    pub fn symvers_args(&self) -> Vec<OsString> {
        let installed = Path::new("/usr/src").join(format!("linux-headers-{}", self.release));
        if self.headers == installed {
            return Vec::new();
        }
        vec![
            "--symvers".into(),
            self.headers.join("Module.symvers").into_os_string(),
        ]
    }

    /// Directory for what the end-to-end suite caches per kernel version.
    pub fn e2e_cache(&self) -> PathBuf {
        self.kdir.join("e2e")
    }
}

/// The environment file of a release under `cache`: without one, the candidate's
/// `kernel.env`; otherwise the builder's rule ([`builder::release::env_file`]: a
/// version's `<version>/kernel.env`, an ABI's by its `KSPLICE_KRELEASE`).
pub fn env_file(cache: &Path, kernel: Option<&str>) -> Result<PathBuf> {
    let Some(kernel) = kernel else {
        return Ok(cache.join(ENV_FILE));
    };
    builder::release::env_file(cache, kernel).with_context(|| format!("{KERNEL_VAR}={kernel}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn missing_variable_is_named() {
        let err = KernelEnv::parse(Path::new("/c"), "KSPLICE_KVERSION=1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "KSPLICE_KRELEASE is missing: run ci/setup-kernel again"
        );
    }

    fn env_with_headers(headers: &str) -> KernelEnv {
        KernelEnv {
            cache: "/c".into(),
            version: "6.1.187-1".into(),
            release: "6.1.0-53-amd64".into(),
            kdir: "/c/6.1.187-1".into(),
            source: "/c/6.1.187-1/source".into(),
            vmlinuz: "/v".into(),
            config: "/cfg".into(),
            modules: "/m".into(),
            headers: headers.into(),
        }
    }

    /// Regression: ksplice-create looked for another release's Module.symvers in
    /// /usr/src/linux-headers-<release>, where only the candidate's headers are installed.
    #[test]
    fn symvers_given_only_when_headers_are_not_installed() {
        let installed = env_with_headers("/usr/src/linux-headers-6.1.0-53-amd64");
        assert!(installed.symvers_args().is_empty());
        let unpacked = "/c/6.1.187-1/headers/usr/src/linux-headers-6.1.0-53-amd64";
        assert_eq!(
            env_with_headers(unpacked).symvers_args(),
            vec![
                OsString::from("--symvers"),
                OsString::from(format!("{unpacked}/Module.symvers"))
            ]
        );
    }

    /// A cache with the candidate (6.1.192-3, ABI 57) and one other release set up.
    fn cache() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (version, abi) in [("6.1.192-3", "57"), ("6.1.187-1", "53")] {
            let kdir = dir.path().join(version);
            std::fs::create_dir_all(&kdir).unwrap();
            std::fs::write(
                kdir.join(ENV_FILE),
                format!("KSPLICE_KVERSION={version}\nKSPLICE_KRELEASE=6.1.0-{abi}-amd64\n"),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join(ENV_FILE), "KSPLICE_KVERSION=6.1.192-3\n").unwrap();
        // Cache entries that are not releases are skipped.
        std::fs::create_dir_all(dir.path().join("trees")).unwrap();
        std::fs::write(dir.path().join(".apt-updated"), "").unwrap();
        dir
    }

    #[test]
    fn unset_is_the_candidate() {
        let c = cache();
        assert_eq!(
            env_file(c.path(), None).unwrap(),
            c.path().join("kernel.env")
        );
    }

    #[test]
    fn version_abi_and_release_name_one_file() {
        let c = cache();
        let want = c.path().join("6.1.187-1/kernel.env");
        for name in ["6.1.187-1", "6.1.0-53", "6.1.0-53-amd64"] {
            assert_eq!(env_file(c.path(), Some(name)).unwrap(), want, "{name}");
        }
        assert_eq!(
            env_file(c.path(), Some("6.1.0-57")).unwrap(),
            c.path().join("6.1.192-3/kernel.env")
        );
    }

    #[test]
    fn release_not_set_up_says_how() {
        let c = cache();
        let err = format!("{:#}", env_file(c.path(), Some("6.1.0-47")).unwrap_err());
        assert!(
            err.contains(&format!(
                "6.1.0-47 is not set up in {}: run ci/setup-kernel 6.1.0-47",
                c.path().display()
            )),
            "{err}"
        );
        // A version that is not set up either (no directory, no release of that name).
        assert!(env_file(c.path(), Some("6.1.170-3")).is_err());
    }

    #[test]
    fn path_like_names_are_refused() {
        let c = cache();
        for name in ["..", "../etc", "6.1.187-1/../x", ".hidden", ""] {
            let err = format!("{:#}", env_file(c.path(), Some(name)).unwrap_err());
            assert!(err.contains("is not a package version"), "{name}: {err}");
        }
    }
}
