//! Opening files named by a user or an administrator: never through a final symlink,
//! never blocking on a fifo, regular files only, and reads bounded before they start.
//!
//! Every input file of this crate (packages, key files, trust policies) goes through
//! [`open_regular`], so a path flipped to `/dev/zero`, a fifo or a directory is refused
//! on the one descriptor that is then read.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};

/// Opens `path` read-only with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` and checks by `fstat`
/// that it is a regular file. Returns the descriptor and its metadata.
///
/// `O_NONBLOCK` makes opening a fifo return at once (it is then refused by type) instead
/// of waiting for a writer; on a regular file it changes nothing.
pub fn open_regular(path: &Path) -> Result<(File, Metadata)> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(Error::NotRegularFile {
                path: path.to_owned(),
                kind: "a symbolic link",
            })
        }
        // A socket cannot be opened at all.
        Err(rustix::io::Errno::NXIO) => {
            return Err(Error::NotRegularFile {
                path: path.to_owned(),
                kind: "a socket or an absent device",
            })
        }
        Err(e) => return Err(Error::io(path, e.into())),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    check_regular(path, &meta)?;
    Ok((file, meta))
}

/// Refuses anything but a regular file, naming what it is.
pub(crate) fn check_regular(path: &Path, meta: &Metadata) -> Result<()> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    };
    Err(Error::NotRegularFile {
        path: path.to_owned(),
        kind,
    })
}

/// Reads all of an opened regular file, at most `max` bytes: `Ok(None)` when it holds more
/// (it may have grown after its size was checked).
pub(crate) fn read_bounded(file: &mut File, path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// The effective uid of this process: who owns the files it creates, and who may own the
/// files it trusts.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `io::Error` from an errno, for the few rustix calls whose errors need a path.
pub(crate) fn errno(e: rustix::io::Errno) -> io::Error {
    e.into()
}
