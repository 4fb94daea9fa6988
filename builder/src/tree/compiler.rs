//! The build compiler must be the one the target kernel was built with.
//!
//! kbuild compiles with `gcc` (no `CC=` is passed, `CROSS_COMPILE` is empty), and
//! objects from another compiler version do not match the running code: run-pre
//! would refuse them at best. The target's `.config` records its compiler as
//! `CONFIG_CC_VERSION_TEXT`, the first line of `$CC --version` (Debian's:
//! `gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`). The program name before the first
//! space is how the compiler was called (`gcc-12` there, `gcc` here, one binary on
//! Debian), so the comparison is of the rest: package version and release.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};
use crate::target::profile::config_value;

/// The compiler kbuild runs in our trees.
pub const CC: &str = "gcc";

/// The part of a `--version` line that names the build: everything after the
/// program name (`(Debian 12.2.0-14+deb12u1) 12.2.0`).
pub fn build_text(version_line: &str) -> &str {
    let line = version_line.trim();
    line.split_once(' ').map_or(line, |(_, rest)| rest.trim())
}

/// The first line of `cc --version`.
pub fn version_line(cc: &str) -> Result<String> {
    let out = Command::new(cc)
        .arg("--version")
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| Error::Missing {
            what: "compiler",
            hint: format!("`{cc} --version` failed ({e}); install the target's compiler (gcc)"),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next() {
        Some(l) if out.status.success() && !l.trim().is_empty() => Ok(l.trim().to_string()),
        _ => Err(Error::Missing {
            what: "compiler",
            hint: format!("`{cc} --version` printed no version ({})", out.status),
        }),
    }
}

/// Refuses a build compiler other than the target's, naming both. `Ok(None)`
/// when the target's config does not record its compiler (kernels before 5.8),
/// so the caller can say the check was skipped; `Ok(Some(line))` when they match.
pub fn check(config_text: &str, config_path: &Path, cc: &str) -> Result<Option<String>> {
    let Some(target) = config_value(config_text, "CONFIG_CC_VERSION_TEXT") else {
        return Ok(None);
    };
    let ours = version_line(cc)?;
    if build_text(&target) != build_text(&ours) {
        return Err(Error::Disagree {
            field: "compiler",
            first_source: format!("{} (CONFIG_CC_VERSION_TEXT)", config_path.display()),
            first: target,
            second_source: format!("`{cc} --version` on this build host"),
            second: ours,
        });
    }
    Ok(Some(ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_name_does_not_count() {
        assert_eq!(
            build_text("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"),
            build_text("gcc (Debian 12.2.0-14+deb12u1) 12.2.0\n")
        );
        assert_ne!(
            build_text("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"),
            build_text("gcc-12 (Debian 12.2.0-14) 12.2.0")
        );
        assert_eq!(build_text("gcc"), "gcc");
    }

    #[test]
    fn another_compiler_is_refused_naming_both() {
        let ours = version_line(CC).expect("gcc is installed on the build host");
        let p = Path::new("/profile/config");
        let same = format!(
            "CONFIG_X=y\nCONFIG_CC_VERSION_TEXT=\"gcc-99 {}\"\n",
            build_text(&ours)
        );
        assert_eq!(check(&same, p, CC).expect("same build"), Some(ours.clone()));
        let other = "CONFIG_CC_VERSION_TEXT=\"gcc-11 (Debian 11.3.0-12) 11.3.0\"\n";
        match check(other, p, CC) {
            Err(
                e @ Error::Disagree {
                    field: "compiler", ..
                },
            ) => {
                let text = e.to_string();
                assert!(text.contains("gcc-11 (Debian 11.3.0-12) 11.3.0"), "{text}");
                assert!(text.contains(&ours), "{text}");
                assert!(text.contains("/profile/config"), "{text}");
                assert_eq!(e.exit_code(), 1);
            }
            r => panic!("expected a compiler disagreement, got {r:?}"),
        }
        assert_eq!(check("CONFIG_X=y\n", p, CC).expect("unrecorded"), None);
        assert!(matches!(
            check(other, p, "/nonexistent/gcc"),
            Err(Error::Missing {
                what: "compiler",
                ..
            })
        ));
    }
}
