//! The package file on the apply path: read once, from one descriptor, into memory; the
//! installed copy is written from those same bytes, with an explicit mode.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil;

/// Mode of the installed package copy (the state directory is private anyway).
const INSTALLED_MODE: u32 = 0o600;

/// Reads a package: no symlink as the last component, no fifo or device, at most
/// `manifests::package::MAX_PACKAGE_BYTES` (see `manifests::package::read_package_file`).
pub(crate) fn read(pkg: &Path) -> Result<Vec<u8>> {
    manifests::package::read_package_file(pkg).map_err(|source| Error::Package {
        path: pkg.to_owned(),
        source: Box::new(source),
    })
}

/// Writes `bytes` to `dest` atomically and durably: a fresh randomly named temporary file
/// next to it (created `O_EXCL`, so no planted name or link is followed; its `.tmp`
/// suffix lets an interrupted install be cleaned up), mode set to 0600 on the descriptor,
/// fsync, rename, fsync of the directory.
pub(crate) fn install(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dest.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".ksplice-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let written = tmp
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(INSTALLED_MODE))
        .and_then(|()| tmp.write_all(bytes))
        .and_then(|()| tmp.as_file().sync_all());
    written.map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    fsutil::sync_dir(dir)
}
