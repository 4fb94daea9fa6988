//! Crash-safe file operations: a file is either the old or the new version
//! after a power loss, never a mix (temp file, fsync, rename, fsync dir).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn tmp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp"))
}

/// Make the directory entries of `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or_else(|| Path::new("."))
}

/// Replace `dest` with `data` atomically and durably.
pub fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_path(dest);
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
    sync_dir(parent(dest))
}

/// Copy `src` to `dest` atomically and durably.
pub fn copy_atomic(src: &Path, dest: &Path) -> Result<()> {
    let tmp = tmp_path(dest);
    let copy = || -> io::Result<()> {
        let mut from = File::open(src)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()
    };
    copy().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
    sync_dir(parent(dest))
}

/// Remove a file durably; a missing file is fine (the step is idempotent).
pub fn remove_durable(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Create a directory (and parents), durably.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    sync_dir(parent(dir))
}

/// Lowercase hex sha256 of a file, streaming.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

/// Read a small sysfs/procfs text file, trimmed.
pub fn read_trimmed(path: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("journal.json");
        write_atomic(&p, b"one").expect("first write");
        write_atomic(&p, b"two").expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("journal.json")]);
    }

    #[test]
    fn remove_durable_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x");
        fs::write(&p, b"x").expect("write");
        remove_durable(&p).expect("remove");
        remove_durable(&p).expect("remove again");
        assert!(!p.exists());
    }
}
