//! Crash-safe file operations: a file is either the old or the new version
//! after a power loss, never a mix (temp file, fsync, rename, fsync dir).

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Mode of the directories the client creates for its own state.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of the files the client writes into its state (and of secrets such
/// as a System.map, which reveals the KASLR offset).
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of profile files that reveal nothing (config, release, ...).
pub const PUBLIC_FILE: u32 = 0o644;
/// Temporary files are `.<dest name>.<random>.tmp` beside their destination;
/// the next command removes any a crash left behind.
pub const TMP_SUFFIX: &str = ".tmp";

/// Whether a directory entry is a temporary file of [`write_atomic`].
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Make the directory entries of `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A fresh temporary file beside `dest`, with exactly `mode`. Created with
/// O_CREAT|O_EXCL under a random name: a name planted in a directory the
/// caller does not own (a symlink to /etc/shadow) can never be opened
/// through, unlike a fixed `.NAME.tmp`.
fn temp_beside(dest: &Path, mode: u32) -> Result<NamedTempFile> {
    let dir = parent(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TMP_SUFFIX)
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    // The umask narrowed the mode at creation; set it exactly.
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(|e| Error::io(tmp.path(), e))?;
    Ok(tmp)
}

/// Rename the finished temporary file over `dest` (rename(2) replaces a
/// symlink at `dest` itself, never its target) and make that durable.
fn persist(tmp: NamedTempFile, dest: &Path) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    sync_dir(parent(dest))
}

/// Replace `dest` with `data` atomically and durably; the file gets `mode`.
pub fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut tmp = temp_beside(dest, mode)?;
    tmp.write_all(data).map_err(|e| Error::io(tmp.path(), e))?;
    persist(tmp, dest)
}

/// Refuse a directory (or file) the client trusts (its state, its trust
/// policy) that another user could change under us: owned by someone other
/// than the running (effective) user or root, or writable by group or others
/// (ssh's StrictModes rule).
pub fn check_trusted(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let euid = rustix::process::geteuid().as_raw();
    let reason = if meta.uid() != euid && meta.uid() != 0 {
        Some("owned by another user")
    } else if meta.mode() & 0o022 != 0 {
        Some("writable by group or others")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::UnsafePermissions {
            path: path.to_owned(),
            reason,
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
            euid,
        }),
    }
}

/// Create a private directory (mode 0700 whatever the umask; missing parents
/// get 0755), durably; an existing one must pass [`check_trusted`].
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let up = parent(dir);
    if !up.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(up)
            .map_err(|e| Error::io(up, e))?;
    }
    match DirBuilder::new().mode(PRIVATE_DIR).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, Permissions::from_mode(PRIVATE_DIR))
                .map_err(|e| Error::io(dir, e))?;
            sync_dir(up)?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            check_trusted(dir)?;
            // Left readable by an older client (umask modes): ours, so
            // narrow it; the files inside are then out of others' reach.
            let meta = fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
            if meta.mode() & 0o077 != 0 && meta.uid() == rustix::process::geteuid().as_raw() {
                fs::set_permissions(dir, Permissions::from_mode(PRIVATE_DIR))
                    .map_err(|e| Error::io(dir, e))?;
            }
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    check_trusted(dir)
}

/// Remove a file durably; a missing file is fine (the step is idempotent).
pub fn remove_durable(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
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
        write_atomic(&p, b"one", PRIVATE_FILE).expect("first write");
        write_atomic(&p, b"two", PRIVATE_FILE).expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("journal.json")]);
    }

    /// Pins issue 9 item 3: `ksplice profile DIR` as root wrote through the
    /// fixed name `.System.map.tmp`, so a user owning DIR could plant a
    /// symlink there and have a root file overwritten.
    #[test]
    fn write_atomic_never_writes_through_a_planted_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("shadow");
        fs::write(&victim, b"root:secret").expect("victim");
        let dest = dir.path().join("System.map");
        std::os::unix::fs::symlink(&victim, dir.path().join(".System.map.tmp")).expect("plant");
        write_atomic(&dest, b"ffffffff81000000 T _stext\n", PRIVATE_FILE).expect("write");
        assert_eq!(fs::read(&victim).expect("victim"), b"root:secret");
        assert_eq!(
            fs::read(&dest).expect("dest"),
            b"ffffffff81000000 T _stext\n"
        );
        let mode = fs::metadata(&dest).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A symlink planted at the destination itself is replaced, not followed.
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&victim, &link).expect("plant");
        write_atomic(&link, b"CONFIG_X=y\n", PUBLIC_FILE).expect("write");
        assert_eq!(fs::read(&victim).expect("victim"), b"root:secret");
        assert!(!fs::symlink_metadata(&link)
            .expect("meta")
            .file_type()
            .is_symlink());
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
