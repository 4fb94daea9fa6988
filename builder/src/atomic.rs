//! Replacing a file whole: the one write path the repository and the profile writer share.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, mode `mode` set on the descriptor (the umask does
/// not matter): a fresh randomly named file in the same directory (created
/// exclusively, so a planted symlink is not followed), fsynced, renamed over
/// `path`. A failure names the file it happened on (the temporary or `path`).
pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| (dir.to_path_buf(), e))?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| temp.write_all(bytes))
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| (temp.path().to_path_buf(), e))?;
    temp.persist(path)
        .map_err(|e| (path.to_path_buf(), e.error))?;
    Ok(())
}
