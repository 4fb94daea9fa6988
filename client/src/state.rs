//! The state directory and its journal: which updates are installed and
//! applied, and where an interrupted apply or undo stopped.
//!
//! Layout of the state directory (default /var/lib/ksplice):
//! - `journal.json`: every update and its phase, rewritten atomically before
//!   and after each step that changes the host (compact JSON, format 3: what
//!   view, status, undo and boot need of each manifest, not the manifest);
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

use manifests::manifest::{
    check_id, check_update_module_name, ChangeKind, Manifest, Stream, TargetKernel,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::host::Host;
use crate::livepatch::{self, interrupted, PatchState, Wait, Written};
use crate::sys::Step;

/// Journal format version: 3 adds each update's stream (name, level,
/// replaces) and the phases `superseded` and `stepping-back`; format 2 (the
/// same summary without streams) and format 1 (whole manifests,
/// pretty-printed) are still read and rewritten as 3.
pub const JOURNAL_FORMAT: u32 = 3;
/// A journal larger than this is not ours (the default of
/// [`Host::max_journal`]); an install that would grow it past this is refused.
pub const MAX_JOURNAL: u64 = 16 * 1024 * 1024;
/// Room kept per entry for what grows after the install (phase names,
/// `applied_at`, `applied_seq`), so that no later step can hit the cap.
const GROWTH_PER_ENTRY: u64 = 256;

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
    /// Installed, not in the kernel: a higher level of its stream replaced
    /// it (livepatch atomic replace). Kept so that undoing that level can
    /// return to this one; not pending.
    Superseded,
    /// Undo of a stream level: the highest lower level installed is being
    /// loaded to replace this one (one transition back).
    SteppingBack,
}

impl Phase {
    /// Whether the phase is the middle of a step (only a crash leaves one).
    pub fn in_flight(self) -> bool {
        !matches!(self, Phase::Installed | Phase::Applied | Phase::Superseded)
    }

    /// Whether the update is out of the kernel and stays so until asked.
    pub fn at_rest(self) -> bool {
        matches!(self, Phase::Installed | Phase::Superseded)
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
            Phase::Superseded => "superseded",
            Phase::SteppingBack => "stepping-back",
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// Order of application, for `undo --all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_seq: Option<u64>,
    /// What `view`, dependency checks and boot need of the verified manifest.
    pub manifest: Recorded,
}

/// The journal's summary of a verified manifest: no payload list, no
/// per-function digests or sizes (a manifest may be 1 MiB; the journal keeps
/// a fraction of it, so a few large updates cannot outgrow its cap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds_on: Vec<String>,
    /// A cumulative update's stream, name, level and replaced ids (format 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    pub target: TargetKernel,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectSummary>,
    /// sha256 of the whole verified manifest (its JSON form): the installed
    /// package must carry exactly this manifest when it is loaded.
    pub manifest_sha256: String,
}

/// The functions an update changes in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectSummary {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionSummary>,
}

/// One changed function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSummary {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sympos: u32,
    pub kind: ChangeKind,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl From<&Manifest> for Recorded {
    fn from(m: &Manifest) -> Self {
        Recorded {
            description: m.description.clone(),
            cves: m.cves.clone(),
            builds_on: m.builds_on.clone(),
            stream: m.stream.clone(),
            target: m.target.clone(),
            objects: m
                .objects
                .iter()
                .map(|o| ObjectSummary {
                    name: o.name.clone(),
                    functions: o
                        .functions
                        .iter()
                        .map(|f| FunctionSummary {
                            name: f.name.clone(),
                            sympos: f.sympos,
                            kind: f.kind,
                        })
                        .collect(),
                })
                .collect(),
            manifest_sha256: manifest_sha256(m),
        }
    }
}

/// The JSON form of a manifest is a pure function of its fields (struct
/// order), so equal digests mean equal manifests.
fn manifest_sha256(m: &Manifest) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(m).unwrap_or_default()))
}

/// A manifest is the recorded one when its digest is, and so is what the
/// journal shows of it (a summary edited behind our back does not match).
impl PartialEq<Recorded> for Manifest {
    fn eq(&self, r: &Recorded) -> bool {
        let objects_match = self.objects.len() == r.objects.len()
            && self.objects.iter().zip(&r.objects).all(|(o, s)| {
                o.name == s.name
                    && o.functions.len() == s.functions.len()
                    && o.functions
                        .iter()
                        .zip(&s.functions)
                        .all(|(f, g)| f.name == g.name && f.sympos == g.sympos && f.kind == g.kind)
            });
        self.description == r.description
            && self.cves == r.cves
            && self.builds_on == r.builds_on
            && self.stream == r.stream
            && self.target == r.target
            && objects_match
            && manifest_sha256(self) == r.manifest_sha256
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    format: u32,
    next_seq: u64,
    updates: Vec<Entry>,
}

/// Format 1: whole manifests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalV1 {
    #[allow(dead_code)]
    format: u32,
    next_seq: u64,
    updates: Vec<EntryV1>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryV1 {
    id: String,
    module: String,
    phase: Phase,
    package_sha256: String,
    installed_at: String,
    applied_at: Option<String>,
    applied_seq: Option<u64>,
    manifest: Manifest,
}

impl From<JournalV1> for Journal {
    fn from(v1: JournalV1) -> Self {
        Journal {
            format: JOURNAL_FORMAT,
            next_seq: v1.next_seq,
            updates: v1
                .updates
                .into_iter()
                .map(|e| Entry {
                    manifest: Recorded::from(&e.manifest),
                    id: e.id,
                    module: e.module,
                    phase: e.phase,
                    package_sha256: e.package_sha256,
                    installed_at: e.installed_at,
                    applied_at: e.applied_at,
                    applied_seq: e.applied_seq,
                })
                .collect(),
        }
    }
}

/// Only the format number, read first so each format gets its own schema.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

impl Entry {
    /// Whether `self` and `other` are levels of one stream: same stream name,
    /// same kernel build (a stream is the series of updates of one build).
    pub fn same_stream(&self, other: &Entry) -> bool {
        match (&self.manifest.stream, &other.manifest.stream) {
            (Some(a), Some(b)) => {
                a.name == b.name && self.manifest.target.build_id == other.manifest.target.build_id
            }
            _ => false,
        }
    }

    /// The stream level, 0 for a stand-alone update.
    pub fn level(&self) -> u32 {
        self.manifest.stream.as_ref().map_or(0, |s| s.level)
    }
}

/// The journal is not trusted more than a package: its ids and module names
/// become paths and delete_module arguments during recovery, its stream
/// levels decide what undo loads.
fn validate(j: &Journal) -> std::result::Result<(), String> {
    let mut ids = std::collections::BTreeSet::new();
    let mut modules = std::collections::BTreeSet::new();
    let mut levels = std::collections::BTreeSet::new();
    for e in &j.updates {
        check_id(&e.id).map_err(|err| format!("update {:?}: {err}", e.id))?;
        match &e.manifest.stream {
            Some(s) => {
                // The manifest's own stream rules (name, level >= 1,
                // replaces, no builds_on).
                s.validate(&e.id, &e.manifest.builds_on)
                    .map_err(|err| format!("update {}: {err}", e.id))?;
                if !levels.insert((
                    s.name.as_str(),
                    e.manifest.target.build_id.as_str(),
                    s.level,
                )) {
                    return Err(format!(
                        "update {}: level {} of stream {} is listed twice",
                        e.id, s.level, s.name
                    ));
                }
            }
            None if matches!(e.phase, Phase::Superseded | Phase::SteppingBack) => {
                return Err(format!(
                    "update {}: phase {} needs a stream",
                    e.id,
                    e.phase.name()
                ));
            }
            None => {}
        }
        for base in &e.manifest.builds_on {
            check_id(base).map_err(|err| format!("update {}: builds_on: {err}", e.id))?;
        }
        check_update_module_name(&e.module).map_err(|err| format!("update {}: {err}", e.id))?;
        let hex64 = |s: &str| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex64(&e.package_sha256) || !hex64(&e.manifest.manifest_sha256) {
            return Err(format!("update {}: malformed sha256", e.id));
        }
        if !ids.insert(e.id.as_str()) {
            return Err(format!("update {} is listed twice", e.id));
        }
        if !modules.insert(e.module.as_str()) {
            return Err(format!("module {} is listed twice", e.module));
        }
    }
    Ok(())
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
    let bytes = match crate::identity::read_bounded(&path, host.max_journal + 1) {
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
    if bytes.len() as u64 > host.max_journal {
        return Err(bad(format!("larger than {} bytes", host.max_journal)));
    }
    let format = serde_json::from_slice::<FormatOnly>(&bytes)
        .map_err(|e| bad(e.to_string()))?
        .format;
    let mut j: Journal = match format {
        1 => serde_json::from_slice::<JournalV1>(&bytes)
            .map_err(|e| bad(e.to_string()))?
            .into(),
        2 | JOURNAL_FORMAT => serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?,
        other => {
            return Err(bad(format!(
                "format {other} (this client reads 1 to {JOURNAL_FORMAT})"
            )))
        }
    };
    // Format 2 had no streams: a field or phase of format 3 in it was not
    // written by a client.
    if format == 2 {
        if let Some(e) = j.updates.iter().find(|e| {
            e.manifest.stream.is_some()
                || matches!(e.phase, Phase::Superseded | Phase::SteppingBack)
        }) {
            return Err(bad(format!("update {}: format 2 has no streams", e.id)));
        }
    }
    j.format = JOURNAL_FORMAT;
    validate(&j).map_err(bad)?;
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
            fsutil::check_trusted(&host.state_dir)?;
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

    fn serialize(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(&self.journal).map_err(|e| Error::Journal {
            path: self.host.state("journal.json"),
            reason: e.to_string(),
        })
    }

    /// Write the journal durably, then pass the crash checkpoint. Never
    /// writes a journal the next command could not read back.
    pub(crate) fn commit(&mut self, what: &'static str) -> Result<()> {
        let bytes = self.serialize()?;
        if bytes.len() as u64 > self.host.max_journal {
            return Err(Error::Journal {
                path: self.host.state("journal.json"),
                reason: format!(
                    "would grow to {} bytes, over its {}-byte limit",
                    bytes.len(),
                    self.host.max_journal
                ),
            });
        }
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
        } else if phase.at_rest() {
            let e = &mut self.journal.updates[i];
            e.applied_seq = None;
            e.applied_at = None;
        }
        self.commit(phase.name())
    }

    /// Add an entry (journal first). Refused, with nothing changed, when the
    /// journal would outgrow its cap, keeping room for every entry's later
    /// steps: a full journal must never wedge the commands that shrink it.
    pub(crate) fn push(&mut self, entry: Entry) -> Result<usize> {
        let id = entry.id.clone();
        self.journal.updates.push(entry);
        let size = self.serialize()?.len() as u64;
        let needed = size + GROWTH_PER_ENTRY * self.journal.updates.len() as u64;
        if needed > self.host.max_journal {
            self.journal.updates.pop();
            return Err(Error::JournalFull {
                id,
                path: self.host.state("journal.json"),
                needed,
                max: self.host.max_journal,
            });
        }
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

    /// Bring every entry to a phase that agrees with the kernel. An entry
    /// stepping back comes last: whether the lower level it was returning to
    /// took over is known once that level is resolved.
    fn recover(&mut self) -> Result<()> {
        let ids = |stepping: bool| -> Vec<String> {
            self.journal
                .updates
                .iter()
                .filter(|e| (e.phase == Phase::SteppingBack) == stepping)
                .map(|e| e.id.clone())
                .collect()
        };
        let mut order = ids(false);
        order.extend(ids(true));
        for id in order {
            if let Some(i) = self.index(&id) {
                self.recover_one(i)?;
            }
        }
        Ok(())
    }

    /// Where entry `i` rests when it is not in the kernel: superseded while a
    /// higher level of its stream is applied (in the journal, or enabled in
    /// the kernel, which a crash may not have journaled yet), else installed.
    pub(crate) fn resting_phase(&self, i: usize) -> Result<Phase> {
        let e = self.entry(i);
        for o in self.entries() {
            if o.id == e.id || !e.same_stream(o) || o.level() <= e.level() {
                continue;
            }
            let live = matches!(o.phase, Phase::Applied | Phase::SteppingBack)
                || matches!(
                    PatchState::read(self.host, &o.module)?,
                    PatchState::Present { enabled: true, .. }
                );
            if live {
                return Ok(Phase::Superseded);
            }
        }
        Ok(Phase::Installed)
    }

    /// Entry `i` (a stream level) is applied: the kernel replaced every lower
    /// level that was live. Unload their modules (the kernel drops its
    /// reference once it has freed the replaced patch) and mark them, and the
    /// lower levels that were only installed, superseded. Returns the ids
    /// that were applied until now.
    pub(crate) fn supersede_lower(&mut self, i: usize) -> Result<Vec<String>> {
        let top = self.entry(i).clone();
        let lower: Vec<(String, String, Phase)> = self
            .entries()
            .iter()
            .filter(|o| o.id != top.id && top.same_stream(o) && o.level() < top.level())
            .filter(|o| matches!(o.phase, Phase::Applied | Phase::Installed))
            .map(|o| (o.id.clone(), o.module.clone(), o.phase))
            .collect();
        let mut was_applied = Vec::new();
        for (id, module, phase) in lower {
            if phase == Phase::Applied {
                livepatch::unload(self.host, &module)?;
                was_applied.push(id.clone());
            }
            if let Some(j) = self.index(&id) {
                self.set_phase(j, Phase::Superseded)?;
            }
        }
        Ok(was_applied)
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
            Phase::Installed | Phase::Superseded => Ok(()),
            Phase::Applied => match kernel {
                // Rebooted, or disabled (and freed) or unloaded behind our
                // back, or replaced by a higher level of its stream (a crash
                // before that was journaled): a disabled or replaced patch's
                // module stays loaded until delete_module, so unload it (not
                // loaded counts as done). Never an error.
                PatchState::Absent => {
                    let rest = self.resting_phase(i)?;
                    livepatch::unload(self.host, &e.module)?;
                    self.set_phase(i, rest)
                }
                // Replaced, not freed yet: `enabled` reads 0 until the
                // kernel removes the directory.
                PatchState::Present {
                    enabled: false,
                    transition: false,
                } if self.resting_phase(i)? == Phase::Superseded => {
                    livepatch::unload(self.host, &e.module)?;
                    self.set_phase(i, Phase::Superseded)
                }
                PatchState::Present { .. } => Ok(()),
            },
            Phase::Loading | Phase::Transitioning => match kernel {
                PatchState::Absent => self.finish_revert(i),
                PatchState::Present { enabled: true, .. } => {
                    if e.phase == Phase::Loading {
                        self.set_phase(i, Phase::Transitioning)?;
                    }
                    match self.finish_apply(i) {
                        // Reverted to installed: that resolves the entry.
                        Err(Error::PatchVanished { .. }) => Ok(()),
                        Ok(()) => self.supersede_lower(i).map(drop),
                        r => r,
                    }
                }
                PatchState::Present { enabled: false, .. } => {
                    self.set_phase(i, Phase::Reverting)?;
                    self.finish_revert(i)
                }
            },
            Phase::Reverting => self.finish_revert(i),
            Phase::Disabling | Phase::Unloading => self.finish_undo(i),
            Phase::Removing => self.remove(i),
            // The lower level took over (this patch was replaced): finish
            // the undo. Still enabled: it did not (the lower level's load
            // failed or was reverted), so this level stays applied.
            Phase::SteppingBack => match kernel {
                PatchState::Absent
                | PatchState::Present {
                    enabled: false,
                    transition: false,
                } => {
                    self.set_phase(i, Phase::Unloading)?;
                    self.finish_undo(i)
                }
                PatchState::Present { .. } => self.set_phase(i, Phase::Applied),
            },
        }
    }

    /// From `Transitioning`: wait for the enabling transition; on a stall,
    /// collect the blocking tasks, reverse, unload, and report them.
    pub(crate) fn finish_apply(&mut self, i: usize) -> Result<()> {
        let module = self.entry(i).module.clone();
        match livepatch::wait_transition(self.host, &module)? {
            Wait::Done => {
                if PatchState::read(self.host, &module)? == PatchState::Absent {
                    // Loaded, then disabled and freed (by someone else):
                    // nothing is applied, and the command must not say it is.
                    self.finish_revert(i)?;
                    return Err(Error::PatchVanished { module });
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
        let rest = self.resting_phase(i)?;
        self.set_phase(i, rest)
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
