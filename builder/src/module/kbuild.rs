//! Links the update module with the target kernel's own kbuild.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{module_path, Error, ModuleName, Result};

/// How much of kbuild's output a failure carries.
const OUTPUT_TAIL: usize = 4000;

/// `make -C <tree> M=<dir> KBUILD_MODPOST_WARN=1 modules`.
///
/// KBUILD_MODPOST_WARN=1 because the patch objects reference non-exported
/// kernel symbols as `.klp.sym.*` undefined symbols, which modpost would
/// otherwise reject; [`super::inspect::check`] afterwards makes sure nothing
/// else is left unresolved.
pub(crate) fn run(tree: &Path, dir: &Path, name: &ModuleName, jobs: usize) -> Result<PathBuf> {
    let ko = module_path(dir, name);
    // A stale module from an earlier build must not pass for this one.
    match std::fs::remove_file(&ko) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&ko)(e)),
        _ => {}
    }
    let mut m_arg = std::ffi::OsString::from("M=");
    m_arg.push(dir);
    let out = Command::new("make")
        .arg("-C")
        .arg(tree)
        .arg(m_arg)
        .arg(format!("-j{}", jobs.max(1)))
        .arg("KBUILD_MODPOST_WARN=1")
        .arg("modules")
        // Flags meant for the pre/post objects must not leak into the template.
        .env_remove("KCFLAGS")
        .env_remove("MAKEFLAGS")
        .output()
        .map_err(|source| Error::Spawn { source })?;
    if !out.status.success() || !ko.is_file() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let start = text.len().saturating_sub(OUTPUT_TAIL);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        return Err(Error::Make {
            dir: dir.to_owned(),
            status: out.status,
            output: text[start..].to_owned(),
        });
    }
    Ok(ko)
}
