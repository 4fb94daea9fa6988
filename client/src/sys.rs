//! The few things the client asks of the kernel directly, behind a trait so
//! tests can replace the kernel and inject a crash at every step.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

/// `uname(2)` fields the identity check uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uname {
    /// `uname -r`
    pub release: String,
    /// `uname -v`
    pub version: String,
    /// `uname -m`
    pub machine: String,
}

/// A named point in an apply or undo, in the order they happen. Tests crash
/// the client at each one and check that the next command recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Just after a journal write (the journal now says `what`).
    Journaled(&'static str),
    /// Just after a file in the state directory was written or removed.
    StateFile(&'static str),
    /// Just after finit_module returned successfully.
    Loaded,
    /// Just after `enabled` was written.
    EnabledWritten,
    /// Just after delete_module returned successfully.
    Unloaded,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Journaled(what) => write!(f, "journal {what}"),
            Step::StateFile(what) => write!(f, "state file {what}"),
            Step::Loaded => f.write_str("finit_module"),
            Step::EnabledWritten => f.write_str("write to enabled"),
            Step::Unloaded => f.write_str("delete_module"),
        }
    }
}

/// The kernel interface: system calls plus hooks for tests.
pub trait Sys {
    fn uname(&self) -> io::Result<Uname>;
    /// Load a module from an open file (`finit_module(2)`, no parameters).
    fn finit_module(&self, module: &File) -> io::Result<()>;
    /// Unload a module without waiting (`delete_module(2)` with `O_NONBLOCK`).
    fn delete_module(&self, name: &str) -> io::Result<()>;
    /// Read a livepatch sysfs attribute (`/sys/kernel/livepatch/<name>/<attr>`),
    /// trimmed. A patch being freed answers ENODEV or ENOENT (see
    /// [`crate::livepatch::is_gone`]); tests return those at chosen moments.
    fn read_attr(&self, path: &Path) -> io::Result<String> {
        crate::fsutil::read_trimmed(path)
    }
    /// Write a livepatch sysfs attribute. Never creates the file: a vanished
    /// patch must answer ENOENT, not gain a regular file.
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(value.as_bytes())
    }
    /// Wait between two polls of a livepatch transition.
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
    /// Called after each step of apply and undo; an error stops the command
    /// there as a crash would (tests only; the real kernel never fails here).
    fn checkpoint(&self, _step: Step) -> io::Result<()> {
        Ok(())
    }
}

/// The running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

impl Sys for RealSys {
    fn uname(&self) -> io::Result<Uname> {
        raw::uname()
    }

    fn finit_module(&self, module: &File) -> io::Result<()> {
        raw::finit_module(module)
    }

    fn delete_module(&self, name: &str) -> io::Result<()> {
        let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        raw::delete_module(&name)
    }
}

#[allow(unsafe_code)]
mod raw {
    //! The only `unsafe` in the client: three system calls through libc.
    use std::ffi::{CStr, CString};
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    use super::Uname;

    pub(super) fn finit_module(module: &File) -> io::Result<()> {
        let params = CString::default();
        // SAFETY: the fd is open for the lifetime of `module`, `params` is a
        // valid NUL-terminated string that outlives the call, flags are 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                module.as_raw_fd(),
                params.as_ptr(),
                0 as libc::c_int,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(super) fn delete_module(name: &CStr) -> io::Result<()> {
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let rc = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(super) fn uname() -> io::Result<Uname> {
        // SAFETY: utsname is plain old data; all-zero bytes are a valid value.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `uts` is a valid, writable utsname for the duration of the call.
        if unsafe { libc::uname(&mut uts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        fn field(raw: &[libc::c_char]) -> String {
            let bytes: Vec<u8> = raw
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Ok(Uname {
            release: field(&uts.release),
            version: field(&uts.version),
            machine: field(&uts.machine),
        })
    }
}
