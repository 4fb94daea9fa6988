//! The target kernel's profile: SRC/ksplice/ files and options, checked against each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use manifests::profile as layout;

use crate::error::{Error, Result};
use crate::target::identity::TargetImage;

/// Where the target's description may come from (options win over SRC files).
#[derive(Debug, Default, Clone)]
pub struct ProfileInputs {
    /// The kernel source tree given on the command line (for `SRC/.config`, `SRC/ksplice/`).
    pub src: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub system_map: Option<PathBuf>,
    pub target_image: Option<PathBuf>,
    pub release: Option<String>,
    pub version: Option<String>,
    pub symvers: Option<PathBuf>,
    /// Root for `/usr/src/linux-headers-<release>` and `/boot` (tests use a fake root).
    pub system_root: PathBuf,
    /// The image `target_image` names, already read: a release job reads
    /// (and decompresses) its image once for all its levels.
    pub loaded_image: Option<Arc<TargetImage>>,
}

/// Everything the builder knows about the kernel the update is for.
#[derive(Debug)]
pub struct Profile {
    pub release: String,
    pub version: String,
    pub arch: String,
    pub build_id: String,
    pub config: PathBuf,
    pub system_map: PathBuf,
    pub symvers: PathBuf,
    pub image: Option<Arc<TargetImage>>,
    /// The target's `lib/modules/<release>`: beside the image's `boot/` (an
    /// unpacked image package) or under the system root.
    pub modules: Option<PathBuf>,
}

fn read_trimmed(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn first_existing(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

/// A `CONFIG_X=value` of a .config, `None` when unset.
pub fn config_value(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(rest.trim_matches('"').to_string())
    })
}

/// Agree two optional sources of one field; either alone is fine.
fn agree(
    field: &'static str,
    a: (String, Option<String>),
    b: (String, Option<String>),
) -> Result<Option<(String, String)>> {
    match (a.1, b.1) {
        (Some(x), Some(y)) if x != y => Err(Error::Disagree {
            field,
            first_source: a.0,
            first: x,
            second_source: b.0,
            second: y,
        }),
        (Some(x), _) => Ok(Some((a.0, x))),
        (None, Some(y)) => Ok(Some((b.0, y))),
        (None, None) => Ok(None),
    }
}

impl Profile {
    /// Gather and cross-check the target's identity; refuse when something is
    /// missing or two sources disagree rather than build for the wrong kernel.
    pub fn resolve(inp: &ProfileInputs) -> Result<Profile> {
        let kdir = inp.src.as_ref().map(|s| s.join(layout::DIR));
        let in_profile = |name: &str| kdir.as_ref().map(|k| k.join(name));

        // 1. Config: --config, SRC/.config, SRC/ksplice/config.
        let mut cands = Vec::new();
        cands.extend(inp.config.clone());
        cands.extend(inp.src.as_ref().map(|s| s.join(".config")));
        cands.extend(in_profile(layout::CONFIG));
        let config = first_existing(&cands).ok_or_else(|| Error::Missing {
            what: "kernel .config",
            hint: "put the target's config in SRC/.config or give --config".into(),
        })?;
        let config_text = std::fs::read_to_string(&config).map_err(Error::io(&config))?;

        // 2. Symbol table.
        let mut cands = Vec::new();
        cands.extend(inp.system_map.clone());
        cands.extend(in_profile(layout::SYSTEM_MAP));
        let system_map = first_existing(&cands).ok_or_else(|| Error::Missing {
            what: "System.map",
            hint: "copy the target's /proc/kallsyms (as root) to SRC/ksplice/System.map or give --system-map".into(),
        })?;

        // 3. Release and version: options and profile files must agree.
        let opt = |name: &str, v: &Option<String>| (format!("--{name}"), v.clone());
        let file = |name: &str| -> Result<(String, Option<String>)> {
            match in_profile(name) {
                Some(p) => Ok((p.display().to_string(), read_trimmed(&p)?)),
                None => Ok((String::new(), None)),
            }
        };
        let release = agree(
            "release",
            opt("release", &inp.release),
            file(layout::RELEASE)?,
        )?;
        let version = agree(
            "version",
            opt("kernel-version", &inp.version),
            file(layout::VERSION)?,
        )?;

        // 4. The image, when given or installed for that release.
        let image_path = inp.target_image.clone().or_else(|| {
            let rel = release.as_ref()?;
            let p = inp.system_root.join(format!("boot/vmlinuz-{}", rel.1));
            p.is_file().then_some(p)
        });
        let image = match (&inp.loaded_image, image_path) {
            (Some(loaded), _) => Some(Arc::clone(loaded)),
            (None, Some(p)) => Some(Arc::new(TargetImage::load(&p)?)),
            (None, None) => None,
        };
        let (release, version) = match &image {
            Some(img) => {
                let src = format!("{} banner", img.path.display());
                let r = agree(
                    "release",
                    release.map_or((String::new(), None), |(s, v)| (s, Some(v))),
                    (src.clone(), img.release.clone()),
                )?;
                // linux_banner's build number may differ from uname -v's
                // (the release build fills it in late): compare the rest.
                if let (Some((vs, v)), Some(iv)) = (&version, &img.version) {
                    let tail = |s: &str| {
                        s.split_once(' ')
                            .map(|x| x.1.to_string())
                            .unwrap_or_default()
                    };
                    if tail(v) != tail(iv) {
                        return Err(Error::Disagree {
                            field: "version",
                            first_source: vs.clone(),
                            first: v.clone(),
                            second_source: src,
                            second: iv.clone(),
                        });
                    }
                }
                let v = version;
                (r, v)
            }
            None => (release, version),
        };
        let (_, release) = release.ok_or_else(|| Error::Missing {
            what: "target release (uname -r)",
            hint: "write it to SRC/ksplice/release or give --release".into(),
        })?;
        let (_, version) = version.ok_or_else(|| Error::Missing {
            what: "target version (uname -v)",
            hint: "write it to SRC/ksplice/version or give --kernel-version".into(),
        })?;
        check_against_config(&release, &version, &config, &config_text)?;

        // 5. Architecture: only x86-64 is supported by the differ.
        let arch = file(layout::ARCH)?.1.unwrap_or_else(|| "x86_64".into());
        if arch != "x86_64" {
            return Err(Error::InvalidOption {
                option: "arch",
                reason: format!("target is {arch}; only x86_64 is supported"),
            });
        }

        // 6. Build-id: profile and image must agree, one of them must exist.
        let from_image = image.as_ref().map(|i| {
            (
                format!("{} build-id note", i.path.display()),
                Some(i.build_id.clone()),
            )
        });
        let build_id = agree(
            "build-id",
            file(layout::BUILD_ID)?,
            from_image.unwrap_or((String::new(), None)),
        )?
        .map(|(_, b)| b.to_ascii_lowercase())
        .ok_or_else(|| Error::Missing {
            what: "target build-id",
            hint: "give --target-image (the target's vmlinuz) or SRC/ksplice/build-id".into(),
        })?;

        // 7. Symbol versions: refuse rather than build a module the kernel rejects.
        let mut cands = Vec::new();
        cands.extend(inp.symvers.clone());
        cands.extend(inp.src.as_ref().map(|s| s.join("Module.symvers")));
        cands.extend(in_profile(layout::MODULE_SYMVERS));
        cands.push(
            inp.system_root
                .join(format!("usr/src/linux-headers-{release}/Module.symvers")),
        );
        let symvers = if config_value(&config_text, "CONFIG_MODVERSIONS").as_deref() == Some("y") {
            first_existing(&cands).ok_or_else(|| Error::Missing {
                what: "Module.symvers",
                hint: format!(
                    "CONFIG_MODVERSIONS=y needs the target's symbol versions; tried {}",
                    cands
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?
        } else {
            first_existing(&cands).unwrap_or_default()
        };

        // 8. The target's modules, for the positions of module-local names.
        let beside_image = image
            .as_ref()
            .and_then(|i| i.path.parent())
            .filter(|boot| boot.file_name().is_some_and(|n| n == "boot"))
            .and_then(Path::parent)
            .map(|root| root.join("lib/modules").join(&release));
        let modules = beside_image
            .into_iter()
            .chain([inp.system_root.join("lib/modules").join(&release)])
            .find(|d| d.join("kernel").is_dir());

        Ok(Profile {
            release,
            version,
            arch,
            build_id,
            config,
            system_map,
            symvers,
            image,
            modules,
        })
    }
}

/// The release must belong to the kernel the config was made for, and the
/// version string's SMP / PREEMPT flags must match the config's choices.
pub(crate) fn check_against_config(
    release: &str,
    version: &str,
    path: &Path,
    config: &str,
) -> Result<()> {
    let header = config.lines().take(5).find_map(|l| {
        l.strip_prefix("# Linux/")?
            .split(' ')
            .nth(1)
            .map(str::to_string)
    });
    let disagree = |field: &'static str, cfg: String, ours: &str| Error::Disagree {
        field,
        first_source: path.display().to_string(),
        first: cfg,
        second_source: "target profile".into(),
        second: ours.to_string(),
    };
    if let Some(kver) = header {
        let major_minor: Vec<&str> = kver.split('.').take(2).collect();
        let rel_mm: Vec<&str> = release.split(['.', '-']).take(2).collect();
        if major_minor != rel_mm {
            return Err(disagree("release", kver, release));
        }
    }
    let localversion = config_value(config, "CONFIG_LOCALVERSION").unwrap_or_default();
    if !release.ends_with(&localversion) {
        return Err(disagree(
            "release",
            format!("CONFIG_LOCALVERSION={localversion:?}"),
            release,
        ));
    }
    for (key, word) in [
        ("CONFIG_SMP", " SMP"),
        ("CONFIG_PREEMPT_DYNAMIC", " PREEMPT_DYNAMIC"),
    ] {
        let on = config_value(config, key).as_deref() == Some("y");
        if on != version.contains(word) {
            let cfg = format!("{key}={}", if on { "y" } else { "n" });
            return Err(disagree("version", cfg, version));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.192 Kernel Configuration\nCONFIG_SMP=y\nCONFIG_PREEMPT_DYNAMIC=y\nCONFIG_LOCALVERSION=\"\"\nCONFIG_MODVERSIONS=y\n";
    const VERSION: &str = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)";

    fn src_with_profile(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("ksplice")).expect("mkdir");
        std::fs::write(dir.path().join(".config"), CONFIG).expect("write");
        for (name, text) in files {
            std::fs::write(dir.path().join("ksplice").join(name), text).expect("write");
        }
        dir
    }

    fn inputs(src: &Path) -> ProfileInputs {
        ProfileInputs {
            src: Some(src.to_path_buf()),
            system_root: src.join("no-such-root"),
            ..Default::default()
        }
    }

    #[test]
    fn full_profile_resolves() {
        let d = src_with_profile(&[
            ("System.map", "ffffffff81000000 T _text\n"),
            ("release", "6.1.0-56-amd64\n"),
            ("version", VERSION),
            ("build-id", "ABCDEF01\n"),
            ("Module.symvers", ""),
        ]);
        let p = Profile::resolve(&inputs(d.path())).expect("resolves");
        assert_eq!(p.release, "6.1.0-56-amd64");
        assert_eq!(p.build_id, "abcdef01");
        assert_eq!(p.symvers, d.path().join("ksplice/Module.symvers"));
    }

    #[test]
    fn missing_release_and_symvers_are_refused() {
        let d = src_with_profile(&[
            ("System.map", "x"),
            ("version", VERSION),
            ("build-id", "ab"),
        ]);
        let e = Profile::resolve(&inputs(d.path())).expect_err("must be refused");
        assert!(
            matches!(
                e,
                Error::Missing {
                    what: "target release (uname -r)",
                    ..
                }
            ),
            "{e}"
        );
        let mut i = inputs(d.path());
        i.release = Some("6.1.0-56-amd64".into());
        let e = Profile::resolve(&i).expect_err("must be refused");
        assert!(
            matches!(
                e,
                Error::Missing {
                    what: "Module.symvers",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn disagreements_are_refused() {
        let d = src_with_profile(&[
            ("System.map", "x"),
            ("release", "6.1.0-56-amd64"),
            ("version", VERSION),
            ("build-id", "ab"),
            ("Module.symvers", ""),
        ]);
        let mut i = inputs(d.path());
        i.release = Some("6.1.0-57-amd64".into());
        let e = Profile::resolve(&i).expect_err("must be refused");
        assert!(
            matches!(
                e,
                Error::Disagree {
                    field: "release",
                    ..
                }
            ),
            "{e}"
        );
        let e = check_against_config("6.2.0-1-amd64", VERSION, Path::new("c"), CONFIG)
            .expect_err("must be refused");
        assert!(
            matches!(
                e,
                Error::Disagree {
                    field: "release",
                    ..
                }
            ),
            "{e}"
        );
        let e = check_against_config("6.1.0-56-amd64", "#1 SMP Debian", Path::new("c"), CONFIG)
            .expect_err("must be refused");
        assert!(
            matches!(
                e,
                Error::Disagree {
                    field: "version",
                    ..
                }
            ),
            "{e}"
        );
    }
}
