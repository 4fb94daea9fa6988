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
        let u = rustix::system::uname();
        let field = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
        Ok(Uname {
            release: field(u.release()),
            version: field(u.version()),
            machine: field(u.machine()),
        })
    }

    fn finit_module(&self, module: &File) -> io::Result<()> {
        // No module parameters, no flags.
        rustix::system::finit_module(module, c"", 0).map_err(io::Error::from)
    }

    fn delete_module(&self, name: &str) -> io::Result<()> {
        let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // O_NONBLOCK: fail with EWOULDBLOCK while the module is in use
        // instead of waiting in the kernel; `livepatch::unload` retries.
        rustix::system::delete_module(&name, libc::O_NONBLOCK).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rustix calls (issue 9 item 8) answer like the kernel.
    #[test]
    fn real_uname_and_delete_module() {
        let u = RealSys.uname().expect("uname");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        assert_eq!(u.release, release.trim());
        assert_eq!(u.machine, std::env::consts::ARCH);
        // No such module: ENOENT as root, EPERM otherwise, ENOSYS in a
        // sandbox without module support; never loads anything.
        let e = RealSys
            .delete_module("ksplice_no_such_module_for_tests")
            .expect_err("no such module");
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::EPERM) | Some(libc::ENOSYS)
            ),
            "{e}"
        );
        assert_eq!(
            RealSys.delete_module("nul\0inside").map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidInput)
        );
    }
}
