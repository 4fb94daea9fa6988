//! The package file on the apply path: read once, from one descriptor, into memory; the
//! installed copy is written from those same bytes (`fsutil::write_atomic`, mode 0600).

use std::path::Path;

use crate::error::{Error, Result};

/// Reads a package: no symlink as the last component, no fifo or device, at most
/// `manifests::package::MAX_PACKAGE_BYTES` (see `manifests::package::read_package_file`).
pub(crate) fn read(pkg: &Path) -> Result<Vec<u8>> {
    manifests::package::read_package_file(pkg).map_err(|source| Error::Package {
        path: pkg.to_owned(),
        source: Box::new(source),
    })
}
