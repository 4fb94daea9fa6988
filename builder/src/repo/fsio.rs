//! File placement for the repository: atomic replacement, exact modes, the lock.
//!
//! A mirror may copy `public/` at any moment, so every file there appears whole
//! or not at all: written to a fresh temporary file in the same directory,
//! fsynced, renamed over the old name, then the directory is fsynced.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::{Error, Result};

/// Replaces `path` with `bytes` atomically, mode `mode` (set on the descriptor so
/// the umask does not matter), then fsyncs the directory so the rename survives.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    crate::atomic::write_atomic(path, bytes, mode)
        .map_err(|(path, source)| Error::Io { path, source })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsync of a directory, so a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// Creates `path` (not its parents) with exactly `mode`; an existing directory
/// gets `mode` too. A symlink in its place is refused by `symlink_metadata`.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source: std::io::Error::other("exists and is not a directory"),
            })
        }
        Err(_) => fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(Error::io(path))?,
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io(path))
}

/// Writes a new file that must not exist yet, with exactly `mode`.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let io = Error::io(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(Error::io(path))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .map_err(io)
}

/// An exclusive lock on the repository (`DIR/lock`), held until dropped: a
/// timer's `repo publish` and an administrator's `repo add` take turns.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

impl Lock {
    /// `create` only for `init`: other commands must not leave a lock file in a
    /// directory that is not a repository.
    pub(crate) fn take(dir: &Path, create: bool) -> Result<Lock> {
        let path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    Error::NotARepository {
                        path: dir.to_owned(),
                        reason: "no lock file; run ksplice-build repo init".into(),
                    }
                } else {
                    Error::Io {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            Error::Io {
                path: path.clone(),
                source: e.into(),
            }
        })?;
        Ok(Lock { _file: file })
    }
}

/// `O_NOFOLLOW` as an `OpenOptionsExt::custom_flags` value.
fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}
