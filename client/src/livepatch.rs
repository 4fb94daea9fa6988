//! The kernel's livepatch sysfs interface (Documentation/livepatch/livepatch.rst
//! §5 "Sysfs"): patch state, transitions, stalled tasks, and unloading.

use std::fs;
use std::io;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fsutil::read_trimmed;
use crate::host::Host;
use crate::sys::Step;

/// What /sys/kernel/livepatch/<name>/ says about one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchState {
    /// No such livepatch (never loaded, or disabled and freed).
    Absent,
    /// `enabled` and `transition` as read.
    Present { enabled: bool, transition: bool },
}

impl PatchState {
    pub fn read(host: &Host<'_>, module: &str) -> Result<Self> {
        let dir = host.livepatch_dir(module);
        let flag = |name: &str| -> Result<Option<bool>> {
            let p = dir.join(name);
            match read_trimmed(&p) {
                Ok(v) => Ok(Some(v == "1")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(p, e)),
            }
        };
        match (flag("enabled")?, flag("transition")?) {
            (Some(enabled), Some(transition)) => Ok(PatchState::Present {
                enabled,
                transition,
            }),
            // The directory vanishes while a disabled patch is freed.
            _ => Ok(PatchState::Absent),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PatchState::Absent => "not loaded",
            PatchState::Present {
                enabled: true,
                transition: false,
            } => "enabled",
            PatchState::Present {
                enabled: true,
                transition: true,
            } => "enabling (transition in progress)",
            PatchState::Present {
                enabled: false,
                transition: true,
            } => "disabling (transition in progress)",
            PatchState::Present {
                enabled: false,
                transition: false,
            } => "disabled",
        }
    }
}

/// A task that has not switched to the target patch state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockingTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Kernel stack frames from /proc/<pid>/task/<tid>/stack (may be empty
    /// when the stack is not readable).
    pub stack: Vec<String>,
}

impl std::fmt::Display for BlockingTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.comm, self.tid)?;
        if !self.stack.is_empty() {
            write!(f, " at {}", self.stack.join(" < "))?;
        }
        Ok(())
    }
}

/// How a wait for a transition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `transition` reads 0 (or the patch is gone: a disabled patch is freed).
    Done,
    /// Still transitioning after the timeout.
    Stalled,
}

/// Wait for the patch's transition to finish, signalling stalled tasks once
/// `signal_after` has passed where the kernel has a `signal` file (removed in
/// Linux 5.1; 6.1 signals stalled tasks itself after 15 s).
pub fn wait_transition(host: &Host<'_>, module: &str) -> Result<Wait> {
    let t = host.timeouts;
    let dir = host.livepatch_dir(module);
    let mut waited = Duration::ZERO;
    let mut signalled = false;
    loop {
        match PatchState::read(host, module)? {
            PatchState::Absent
            | PatchState::Present {
                transition: false, ..
            } => return Ok(Wait::Done),
            PatchState::Present {
                transition: true, ..
            } => {}
        }
        if waited >= t.transition {
            return Ok(Wait::Stalled);
        }
        if !signalled && waited >= t.signal_after {
            signalled = true;
            let signal = dir.join("signal");
            if signal.exists() {
                fs::write(&signal, b"1").map_err(|e| Error::Sysfs {
                    module: module.to_owned(),
                    action: "signal stalled tasks of",
                    source: e,
                })?;
            }
        }
        host.sys.sleep(t.poll);
        waited += t.poll;
    }
}

/// Write `enabled`: 0 disables an applied patch or reverses an enabling
/// transition; 1 reverses a disabling transition.
pub fn write_enabled(host: &Host<'_>, module: &str, enabled: bool) -> Result<()> {
    let p = host.livepatch_dir(module).join("enabled");
    fs::write(&p, if enabled { b"1" } else { b"0" }).map_err(|e| Error::Sysfs {
        module: module.to_owned(),
        action: if enabled { "re-enable" } else { "disable" },
        source: e,
    })?;
    host.sys
        .checkpoint(Step::EnabledWritten)
        .map_err(|_| interrupted(Step::EnabledWritten))
}

pub(crate) fn interrupted(step: Step) -> Error {
    Error::Interrupted {
        step: step.to_string(),
    }
}

/// Tasks whose `patch_state` is not `target` (1 = patched, 0 = unpatched;
/// -1 means no transition is running).
pub fn blocking_tasks(host: &Host<'_>, target: i32) -> Vec<BlockingTask> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir(host.path("/proc")) else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(tasks) = fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let dir = t.path();
            let Some(state) = read_trimmed(&dir.join("patch_state"))
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if state == -1 || state == target {
                continue;
            }
            let comm = read_trimmed(&dir.join("comm")).unwrap_or_default();
            let stack = fs::read_to_string(dir.join("stack"))
                .map(|s| parse_stack(&s))
                .unwrap_or_default();
            out.push(BlockingTask {
                pid,
                tid,
                comm,
                stack,
            });
        }
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// `[<0>] do_wait+0x1c7/0x2f0` → `do_wait+0x1c7/0x2f0`
fn parse_stack(raw: &str) -> Vec<String> {
    raw.lines()
        .map(|l| match l.split_once("] ") {
            Some((_, f)) => f.trim().to_owned(),
            None => l.trim().to_owned(),
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// Unload a module, retrying while the kernel still holds it (a disabled
/// patch keeps a reference until it is freed asynchronously). A module that
/// is not loaded counts as unloaded, so the step can be repeated.
pub fn unload(host: &Host<'_>, module: &str) -> Result<()> {
    let t = host.timeouts;
    let mut waited = Duration::ZERO;
    loop {
        match host.sys.delete_module(module) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EWOULDBLOCK) | Some(libc::EBUSY)
                ) && waited < t.unload =>
            {
                host.sys.sleep(t.poll);
                waited += t.poll;
            }
            Err(source) => {
                return Err(Error::Unload {
                    module: module.to_owned(),
                    source,
                })
            }
        }
    }
    host.sys
        .checkpoint(Step::Unloaded)
        .map_err(|_| interrupted(Step::Unloaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_frames_lose_their_prefix() {
        let s = "[<0>] klp_ftrace_handler+0x10/0x20\n[<0>] do_syscall_64+0x5b/0xc0\n";
        assert_eq!(
            parse_stack(s),
            vec!["klp_ftrace_handler+0x10/0x20", "do_syscall_64+0x5b/0xc0"]
        );
    }
}
