//! The state directory and its journal: which updates are installed and
//! applied, and where an interrupted apply or undo stopped.
//!
//! Layout of the state directory (default /var/lib/ksplice):
//! - `journal.json`: every update and its phase, rewritten atomically before
//!   and after each step that changes the host;
//! - `packages/ksplice-<id>.tar.gz`: the installed package, verified again
//!   each time it is loaded;
//! - `work/`: packages being extracted for loading (removed afterwards);
//! - `lock`: held (flock) by the command that owns the state.
//!
//! Recovery ([`State::open`]) drives every entry that a crash left in the
//! middle of a step to the end its phase implies, reading the kernel's
//! livepatch state to learn which side of the step the crash was on.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;

use manifests::manifest::Manifest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::host::Host;
use crate::livepatch::{self, interrupted, PatchState, Wait, Written};
use crate::sys::Step;

/// Journal format version.
const JOURNAL_FORMAT: u32 = 1;
/// A journal larger than this is not ours.
const MAX_JOURNAL: u64 = 16 * 1024 * 1024;

/// Where an update is. The order follows apply (top) and undo (bottom).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The package is being copied into the state directory.
    Installing,
    /// Installed, not in the kernel.
    Installed,
    /// finit_module is about to be called or was just called.
    Loading,
    /// Loaded; the enabling transition may be running.
    Transitioning,
    /// An apply failed after loading; disabling and unloading.
    Reverting,
    /// Applied: the livepatch is enabled.
    Applied,
    /// Undo: `enabled` is being written 0 and the transition awaited.
    Disabling,
    /// Undo: the module is being unloaded.
    Unloading,
    /// Undo: the package is being removed from the state directory.
    Removing,
}

impl Phase {
    /// Whether the phase is the middle of a step (only a crash leaves one).
    pub fn in_flight(self) -> bool {
        !matches!(self, Phase::Installed | Phase::Applied)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Installing => "installing",
            Phase::Installed => "installed",
            Phase::Loading => "loading",
            Phase::Transitioning => "transitioning",
            Phase::Reverting => "reverting",
            Phase::Applied => "applied",
            Phase::Disabling => "disabling",
            Phase::Unloading => "unloading",
            Phase::Removing => "removing",
        }
    }
}

/// One installed update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    /// Module and livepatch name.
    pub module: String,
    pub phase: Phase,
    /// sha256 of the installed package file.
    pub package_sha256: String,
    /// RFC 3339 UTC.
    pub installed_at: String,
    pub applied_at: Option<String>,
    /// Order of application, for `undo --all`.
    pub applied_seq: Option<u64>,
    /// The verified manifest, kept for `view` and dependency checks.
    pub manifest: Manifest,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    format: u32,
    next_seq: u64,
    updates: Vec<Entry>,
}

/// The state directory, locked for this command, its journal consistent with
/// the kernel.
pub struct State<'h, 's> {
    pub(crate) host: &'h Host<'s>,
    journal: Journal,
    _lock: Option<File>,
}

impl std::fmt::Debug for State<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn read_journal(host: &Host<'_>) -> Result<Journal> {
    let path = host.state("journal.json");
    let bytes = match crate::identity::read_bounded(&path, MAX_JOURNAL + 1) {
        Ok(b) => b,
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Journal {
                format: JOURNAL_FORMAT,
                ..Journal::default()
            })
        }
        Err(e) => return Err(e),
    };
    let bad = |reason: String| Error::Journal {
        path: path.clone(),
        reason,
    };
    if bytes.len() as u64 > MAX_JOURNAL {
        return Err(bad(format!("larger than {MAX_JOURNAL} bytes")));
    }
    let j: Journal = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if j.format != JOURNAL_FORMAT {
        return Err(bad(format!(
            "format {} (expected {JOURNAL_FORMAT})",
            j.format
        )));
    }
    Ok(j)
}

impl<'h, 's> State<'h, 's> {
    /// Lock the state directory (creating it), read the journal, and resolve
    /// whatever an interrupted command left behind.
    pub fn open(host: &'h Host<'s>) -> Result<Self> {
        // 0700 directories, 0600 files, whatever the umask; an existing state
        // directory another user could write to is refused.
        fsutil::create_private_dir(&host.state_dir)?;
        for d in ["packages", "work"] {
            fsutil::create_private_dir(&host.state(d))?;
        }
        let lock_path = host.state("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(fsutil::PRIVATE_FILE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        let journal = read_journal(host)?;
        let mut state = State {
            host,
            journal,
            _lock: Some(lock),
        };
        state.clean_work()?;
        state.recover()?;
        Ok(state)
    }

    /// Read the journal without locking or changing anything (for a user who
    /// may not write the state directory). In-flight phases are shown as such.
    pub fn peek(host: &'h Host<'s>) -> Result<Self> {
        if host.state_dir.exists() {
            fsutil::check_trusted(&host.state_dir, fsutil::Owner::RunningUserOrRoot)?;
        }
        Ok(State {
            host,
            journal: read_journal(host)?,
            _lock: None,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.journal.updates
    }

    pub fn find(&self, id: &str) -> Option<&Entry> {
        self.journal.updates.iter().find(|e| e.id == id)
    }

    pub(crate) fn index(&self, id: &str) -> Option<usize> {
        self.journal.updates.iter().position(|e| e.id == id)
    }

    pub(crate) fn entry(&self, i: usize) -> &Entry {
        &self.journal.updates[i]
    }

    /// Write the journal durably, then pass the crash checkpoint.
    pub(crate) fn commit(&mut self, what: &'static str) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.journal).map_err(|e| Error::Journal {
            path: self.host.state("journal.json"),
            reason: e.to_string(),
        })?;
        fsutil::write_atomic(
            &self.host.state("journal.json"),
            &bytes,
            fsutil::PRIVATE_FILE,
        )?;
        self.checkpoint(Step::Journaled(what))
    }

    pub(crate) fn checkpoint(&self, step: Step) -> Result<()> {
        self.host
            .sys
            .checkpoint(step)
            .map_err(|_| interrupted(step))
    }

    pub(crate) fn set_phase(&mut self, i: usize, phase: Phase) -> Result<()> {
        self.journal.updates[i].phase = phase;
        if phase == Phase::Applied {
            let e = &mut self.journal.updates[i];
            if e.applied_seq.is_none() {
                e.applied_seq = Some(self.journal.next_seq);
                e.applied_at = Some(now_utc());
                self.journal.next_seq += 1;
            }
        } else if phase == Phase::Installed {
            let e = &mut self.journal.updates[i];
            e.applied_seq = None;
            e.applied_at = None;
        }
        self.commit(phase.name())
    }

    pub(crate) fn push(&mut self, entry: Entry) -> Result<usize> {
        self.journal.updates.push(entry);
        self.commit("installing")?;
        Ok(self.journal.updates.len() - 1)
    }

    /// Remove the package of entry `i` and then the entry itself.
    pub(crate) fn remove(&mut self, i: usize) -> Result<()> {
        if self.journal.updates[i].phase != Phase::Removing {
            self.set_phase(i, Phase::Removing)?;
        }
        let id = self.journal.updates[i].id.clone();
        fsutil::remove_durable(&self.host.package_path(&id))?;
        self.checkpoint(Step::StateFile("package removed"))?;
        self.journal.updates.remove(i);
        self.commit("entry removed")
    }

    fn clean_work(&self) -> Result<()> {
        let work = self.host.state("work");
        let Ok(rd) = fs::read_dir(&work) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let p = e.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(|err| Error::io(&p, err))?;
        }
        // Temp files of an interrupted journal write or package copy.
        for dir in [self.host.state_dir.clone(), self.host.state("packages")] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if fsutil::is_temp_name(&e.file_name().to_string_lossy()) {
                    fsutil::remove_durable(&e.path())?;
                }
            }
        }
        Ok(())
    }

    /// Bring every entry to a phase that agrees with the kernel.
    fn recover(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.journal.updates.len() {
            let before = self.journal.updates.len();
            self.recover_one(i)?;
            if self.journal.updates.len() == before {
                i += 1;
            }
        }
        Ok(())
    }

    fn recover_one(&mut self, i: usize) -> Result<()> {
        let e = self.entry(i).clone();
        let kernel = PatchState::read(self.host, &e.module)?;
        match e.phase {
            Phase::Installing => {
                let pkg = self.host.package_path(&e.id);
                let complete = pkg.exists() && fsutil::sha256_file(&pkg)? == e.package_sha256;
                if complete {
                    self.set_phase(i, Phase::Installed)
                } else {
                    self.remove(i)
                }
            }
            Phase::Installed => Ok(()),
            Phase::Applied => match kernel {
                // Rebooted, or unloaded behind our back.
                PatchState::Absent => self.set_phase(i, Phase::Installed),
                PatchState::Present { .. } => Ok(()),
            },
            Phase::Loading | Phase::Transitioning => match kernel {
                PatchState::Absent => self.finish_revert(i),
                PatchState::Present { enabled: true, .. } => {
                    if e.phase == Phase::Loading {
                        self.set_phase(i, Phase::Transitioning)?;
                    }
                    self.finish_apply(i).map(|_| ())
                }
                PatchState::Present { enabled: false, .. } => {
                    self.set_phase(i, Phase::Reverting)?;
                    self.finish_revert(i)
                }
            },
            Phase::Reverting => self.finish_revert(i),
            Phase::Disabling | Phase::Unloading => self.finish_undo(i),
            Phase::Removing => self.remove(i),
        }
    }

    /// From `Transitioning`: wait for the enabling transition; on a stall,
    /// collect the blocking tasks, reverse, unload, and report them.
    pub(crate) fn finish_apply(&mut self, i: usize) -> Result<()> {
        let module = self.entry(i).module.clone();
        match livepatch::wait_transition(self.host, &module)? {
            Wait::Done => {
                if PatchState::read(self.host, &module)? == PatchState::Absent {
                    // Loaded, then gone: nothing is applied.
                    return self.finish_revert(i);
                }
                self.set_phase(i, Phase::Applied)
            }
            Wait::Stalled => {
                let blocking = livepatch::blocking_tasks(self.host, 1);
                self.set_phase(i, Phase::Reverting)?;
                self.finish_revert(i)?;
                Err(Error::TransitionTimeout {
                    module,
                    secs: self.host.timeouts.transition.as_secs(),
                    outcome: "reverted and unloaded",
                    blocking,
                })
            }
        }
    }

    /// From `Loading`/`Reverting`: disable if still enabled, wait, unload,
    /// back to `Installed`.
    pub(crate) fn finish_revert(&mut self, i: usize) -> Result<()> {
        let module = self.entry(i).module.clone();
        if self.entry(i).phase != Phase::Reverting {
            self.set_phase(i, Phase::Reverting)?;
        }
        if let PatchState::Present { enabled: true, .. } = PatchState::read(self.host, &module)? {
            livepatch::write_enabled(self.host, &module, false)?;
        }
        if livepatch::wait_transition(self.host, &module)? == Wait::Stalled {
            // Reversing an enabling transition cannot be refused; a reverse
            // transition that stalls leaves the journal in Reverting so the
            // next command retries.
            return Err(Error::TransitionTimeout {
                module,
                secs: self.host.timeouts.transition.as_secs(),
                outcome: "reversal still pending; the next ksplice command retries",
                blocking: livepatch::blocking_tasks(self.host, 0),
            });
        }
        livepatch::unload(self.host, &module)?;
        self.set_phase(i, Phase::Installed)
    }

    /// From `Disabling`/`Unloading`: disable, wait (re-enabling and reporting
    /// on a stall), unload, remove the package and the entry.
    pub(crate) fn finish_undo(&mut self, i: usize) -> Result<()> {
        let module = self.entry(i).module.clone();
        if self.entry(i).phase == Phase::Disabling {
            if let PatchState::Present { enabled: true, .. } = PatchState::read(self.host, &module)?
            {
                // `Gone` means the patch was disabled and freed meanwhile:
                // the undo goes on.
                if let Err(e) = livepatch::write_enabled(self.host, &module, false) {
                    // Refused (EBUSY while another patch transitions): nothing
                    // changed, so the update stays applied.
                    if matches!(e, Error::Sysfs { .. }) {
                        self.set_phase(i, Phase::Applied)?;
                    }
                    return Err(e);
                }
            }
            if livepatch::wait_transition(self.host, &module)? == Wait::Stalled {
                let blocking = livepatch::blocking_tasks(self.host, 0);
                // Reverse the reverse transition: the update stays applied.
                // Unless it finished just now and the patch is gone: then the
                // undo succeeded after all and goes on below.
                if livepatch::write_enabled(self.host, &module, true)? == Written::Done {
                    let outcome = match livepatch::wait_transition(self.host, &module)? {
                        Wait::Done if PatchState::read(self.host, &module)? != PatchState::Absent => {
                            self.set_phase(i, Phase::Applied)?;
                            Some("the update stays applied")
                        }
                        Wait::Done => None,
                        Wait::Stalled => Some(
                            "re-enabling is still in progress; the next ksplice command resolves it",
                        ),
                    };
                    if let Some(outcome) = outcome {
                        return Err(Error::TransitionTimeout {
                            module,
                            secs: self.host.timeouts.transition.as_secs(),
                            outcome,
                            blocking,
                        });
                    }
                }
            }
            self.set_phase(i, Phase::Unloading)?;
        }
        livepatch::unload(self.host, &module)?;
        self.remove(i)
    }
}
