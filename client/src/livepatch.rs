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

/// Whether an error from a livepatch sysfs attribute means the patch is gone.
/// Once a disable transition completes, the kernel frees the patch and removes
/// `/sys/kernel/livepatch/<name>/` asynchronously: an access then answers
/// ENOENT (already removed) or ENODEV (the kobject went away under an open
/// file). That is the end of the transition, never a state error.
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

impl PatchState {
    pub fn read(host: &Host<'_>, module: &str) -> Result<Self> {
        let dir = host.livepatch_dir(module);
        let flag = |name: &str| -> Result<Option<bool>> {
            let p = dir.join(name);
            match host.sys.read_attr(&p) {
                Ok(v) => Ok(Some(v == "1")),
                Err(e) if is_gone(&e) => Ok(None),
                Err(e) => Err(Error::io(p, e)),
            }
        };
        // The patch may be freed between the two reads (a disable transition
        // completing): a `transition` that is gone after `enabled` was read
        // means the patch is absent, whatever `enabled` said.
        let Some(enabled) = flag("enabled")? else {
            return Ok(PatchState::Absent);
        };
        let Some(transition) = flag("transition")? else {
            return Ok(PatchState::Absent);
        };
        Ok(PatchState::Present {
            enabled,
            transition,
        })
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
            // No `signal` file (Linux >= 5.1) and a patch freed meanwhile
            // both answer "gone": nothing to signal then.
            match host.sys.write_attr(&dir.join("signal"), "1") {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => {
                    return Err(Error::Sysfs {
                        module: module.to_owned(),
                        action: "signal stalled tasks of",
                        source: e,
                    })
                }
            }
        }
        host.sys.sleep(t.poll);
        waited += t.poll;
    }
}

/// How a write to `enabled` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// `enabled` now holds the value (written by us, or already there).
    Done,
    /// The patch is gone: its disable transition had completed and the kernel
    /// freed it before the write reached it.
    Gone,
}

/// Write `enabled`: 0 disables an applied patch or reverses an enabling
/// transition; 1 reverses a disabling transition.
pub fn write_enabled(host: &Host<'_>, module: &str, enabled: bool) -> Result<Written> {
    let p = host.livepatch_dir(module).join("enabled");
    if let Err(e) = host.sys.write_attr(&p, if enabled { "1" } else { "0" }) {
        if is_gone(&e) {
            return Ok(Written::Gone);
        }
        // The kernel refuses (EINVAL) a value `enabled` already holds: another
        // actor got there first, which is the outcome asked for. Anything else
        // (EBUSY while another patch transitions) is a refusal.
        match PatchState::read(host, module)? {
            PatchState::Absent => return Ok(Written::Gone),
            PatchState::Present { enabled: now, .. } if now == enabled => {}
            PatchState::Present { .. } => {
                return Err(Error::Sysfs {
                    module: module.to_owned(),
                    action: if enabled { "re-enable" } else { "disable" },
                    source: e,
                })
            }
        }
    }
    host.sys
        .checkpoint(Step::EnabledWritten)
        .map_err(|_| interrupted(Step::EnabledWritten))?;
    Ok(Written::Done)
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
