//! The hand-written C template (`loader-module/`), embedded so that an
//! installed builder needs no source checkout, and written into each build.

use std::path::{Path, PathBuf};

use super::{Error, Result};

/// The template's core, compiled as `ksplice-core.o`.  Build-directory names
/// use `-`, which module names never contain, so no part can clash with the
/// composite module's own name.
pub(crate) const CORE: (&str, &str) = (
    "ksplice-core.c",
    include_str!("../../../loader-module/ksplice.c"),
);
/// Shared declarations of the template and the generated file.
pub(crate) const HEADER: (&str, &str) = (
    "ksplice.h",
    include_str!("../../../loader-module/ksplice.h"),
);
/// Patch-author headers, by the names patches `#include`.
pub(crate) const AUTHOR_HEADERS: [(&str, &str); 2] = [
    (
        "kpatch-macros.h",
        include_str!("../../../loader-module/include/kpatch-macros.h"),
    ),
    (
        "kpatch-syscall.h",
        include_str!("../../../loader-module/include/kpatch-syscall.h"),
    ),
];

/// Write the template into the module build directory `dir`.
pub(crate) fn run(dir: &Path) -> Result<()> {
    for (name, text) in [CORE, HEADER] {
        write(&dir.join(name), text)?;
    }
    write_author_headers(&dir.join("include"))?;
    Ok(())
}

/// Write the patch-author headers (`kpatch-macros.h`, `kpatch-syscall.h`)
/// into `dir` and return it: the builder adds it to the include path
/// (`KCFLAGS=-I<dir>`) when it compiles pre and post objects, so patches
/// written for kpatch build unchanged.
pub fn write_author_headers(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    for (name, text) in AUTHOR_HEADERS {
        write(&dir.join(name), text)?;
    }
    Ok(dir.to_owned())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(Error::io(path))
}
