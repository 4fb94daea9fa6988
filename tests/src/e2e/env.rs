//! The kernel environment prepared by `ci/setup-kernel`, read from `$KSPLICE_CACHE/kernel.env`.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Default cache directory when `KSPLICE_CACHE` is not set.
pub const DEFAULT_CACHE: &str = "/var/cache/ksplice-ci";

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
    /// Reads `$KSPLICE_CACHE/kernel.env` (default [`DEFAULT_CACHE`]).
    pub fn load() -> Result<Self> {
        let cache = std::env::var_os("KSPLICE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
        let file = cache.join("kernel.env");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "cannot read {}: run ci/setup-kernel first to install Debian's kernel",
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

    /// Directory for what the end-to-end suite caches per kernel version.
    pub fn e2e_cache(&self) -> PathBuf {
        self.kdir.join("e2e")
    }
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
}
