//! The commands that change a host: verify, apply (also `--installed` at
//! boot) and undo, as sequences of journaled steps.

use std::path::{Path, PathBuf};

use manifests::keys::TrustPolicy;
use manifests::manifest::{ChangeKind, Manifest};
use manifests::{Verified, VerifiedPackage};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::host::Host;
use crate::identity::Running;
use crate::kmsg;
use crate::livepatch::PatchState;
use crate::pkgfile;
use crate::state::{now_utc, Entry, Phase, State};
use crate::sys::Step;

/// What a command did, one event per update, for the CLI to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Applied {
        id: String,
    },
    AlreadyApplied {
        id: String,
    },
    Skipped {
        id: String,
        reason: String,
    },
    Undone {
        id: String,
    },
    /// Removed from the state directory; it was installed but not applied.
    Removed {
        id: String,
    },
    /// `apply --installed` found `ksplice=off` on the kernel command line.
    DisabledByCmdline,
    /// `by`, a higher level of the stream, replaced `id` in its transition;
    /// `id`'s module was unloaded, its package kept for undo.
    Superseded {
        id: String,
        by: String,
    },
    /// `id` was undone by loading `to`, a lower level of its stream, in one
    /// transition; `id` was unloaded and removed.
    SteppedBack {
        id: String,
        to: String,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Applied { id } => write!(f, "applied {id}"),
            Event::AlreadyApplied { id } => write!(f, "already applied {id}: nothing to do"),
            Event::Skipped { id, reason } => write!(f, "skipped {id}: {reason}"),
            Event::Undone { id } => write!(f, "undone {id}"),
            Event::Removed { id } => write!(f, "removed {id} (installed, was not applied)"),
            Event::DisabledByCmdline => {
                f.write_str("skipped: ksplice=off on the kernel command line")
            }
            Event::Superseded { id, by } => write!(
                f,
                "superseded {id} by {by} (one transition; {id} unloaded, kept installed for undo)"
            ),
            Event::SteppedBack { id, to } => {
                write!(f, "undone {id}: back to {to} in one transition")
            }
        }
    }
}

/// Load the trust policy the host is configured with.
pub fn load_policy(host: &Host<'_>) -> Result<TrustPolicy> {
    // Whoever can write the policy or its directory (/etc/ksplice) decides
    // which keys the host trusts.
    let dir = match host.trust.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    for p in [dir, host.trust.as_path()] {
        if p.exists() {
            fsutil::check_trusted(p)?;
        }
    }
    TrustPolicy::load(&host.trust).map_err(|source| Error::TrustPolicy {
        path: host.trust.clone(),
        source: Box::new(source),
    })
}

/// Verify signatures and payload digests, then check the names the client
/// turns into paths. Touches nothing, and needs no temporary directory.
pub fn verify(pkg: &Path, policy: &TrustPolicy) -> Result<Verified<Manifest>> {
    let bytes = pkgfile::read(pkg)?;
    Ok(verify_bytes(pkg, &bytes, policy)?.manifest)
}

/// [`verify`] of package bytes already read (`pkg` names them in errors).
fn verify_bytes(pkg: &Path, bytes: &[u8], policy: &TrustPolicy) -> Result<VerifiedPackage> {
    let verified = manifests::package::verify_package_bytes(bytes, policy).map_err(|source| {
        Error::Package {
            path: pkg.to_owned(),
            source: Box::new(source),
        }
    })?;
    check_names(&verified.manifest.id, &verified.manifest.module.name)?;
    Ok(verified)
}

/// The id becomes a file name and the module name a sysfs path: both must be
/// plain names whatever the signer wrote (defence in depth: manifest
/// validation checks them too, with these same rules).
pub(crate) fn check_names(id: &str, module: &str) -> Result<()> {
    manifests::manifest::check_id(id).map_err(|_| Error::InvalidName {
        what: "update id",
        name: id.to_owned(),
    })?;
    manifests::manifest::check_update_module_name(module).map_err(|_| Error::InvalidName {
        what: "module name",
        name: module.to_owned(),
    })
}

/// `ksplice apply PKG...`: verify every package and check it against the
/// running kernel before touching anything, then apply them in order,
/// stopping at the first failure.
pub fn apply(host: &Host<'_>, pkgs: &[PathBuf], on: &mut dyn FnMut(Event)) -> Result<()> {
    let policy = load_policy(host)?;
    let running = Running::read(host)?;
    let mut checked = Vec::with_capacity(pkgs.len());
    for pkg in pkgs {
        // 1. Read once, from one descriptor: a regular file, not through a symlink,
        //    within the package cap. Verify, hash and install these bytes, never the
        //    path again (it may point elsewhere by now).
        let bytes = pkgfile::read(pkg)?;
        // 2. Signatures over the exact manifest bytes, then payload digests;
        //    the names that become paths.
        let m = verify_bytes(pkg, &bytes, &policy)?.manifest;
        // 3. The exact kernel it was built for, field by field.
        running.check(&m.id, &m.target)?;
        checked.push((bytes, m));
    }
    let mut state = State::open(host)?;
    for (bytes, m) in checked {
        apply_one(&mut state, bytes, &m, &policy, on)?;
    }
    Ok(())
}

/// Installs `bytes` (taken by value: they are dropped once installed, so that
/// loading, which reads the installed copy again, does not hold two copies).
fn apply_one(
    state: &mut State<'_, '_>,
    bytes: Vec<u8>,
    m: &Verified<Manifest>,
    policy: &TrustPolicy,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let host = state.host;
    let id = m.id.clone();
    let sha = manifests::sha256_hex(&bytes);
    if let Some(i) = state.index(&id) {
        let e = state.entry(i);
        if e.phase == Phase::Applied {
            on(Event::AlreadyApplied { id });
            return Ok(());
        }
    }
    // 4a. A cumulative update replaces every live patch: only lower levels of
    //     its own stream may be live, and it must be above the applied level.
    if let Some(stream) = &m.stream {
        check_stream(state, &id, &m.module.name, stream, &m.target.build_id)?;
    }
    if let Some(i) = state.index(&id) {
        let e = state.entry(i);
        if e.package_sha256 != sha {
            // Another build under the same id, not applied: replace it.
            state.remove(i)?;
        }
    }
    if let Some(other) = state
        .entries()
        .iter()
        .find(|e| e.module == m.module.name && e.id != id)
    {
        return Err(Error::ModuleClash {
            id,
            module: m.module.name.clone(),
            other: other.id.clone(),
        });
    }
    // 4. Its bases are applied.
    check_bases(state, m)?;
    // 5. Install: journal first, so a crash mid-copy is recognised.
    let (i, fresh) = match state.index(&id) {
        Some(i) => (i, false),
        None => {
            let i = state.push(Entry {
                id: id.clone(),
                module: m.module.name.clone(),
                phase: Phase::Installing,
                package_sha256: sha,
                installed_at: now_utc(),
                applied_at: None,
                applied_seq: None,
                manifest: (&**m).into(),
            })?;
            // The verified bytes themselves, never the path again.
            fsutil::write_atomic(&host.package_path(&id), &bytes, fsutil::PRIVATE_FILE)?;
            state.checkpoint(Step::StateFile("package installed"))?;
            state.set_phase(i, Phase::Installed)?;
            (i, true)
        }
    };
    drop(bytes);
    match load(state, i, policy) {
        Ok(()) => {
            on(Event::Applied { id: id.clone() });
            supersede(state, i, on)
        }
        // A crash leaves everything for the next command to resolve.
        Err(e @ Error::Interrupted { .. }) => Err(e),
        Err(e) => {
            // The kernel is unchanged; forget an install made by this command.
            if fresh {
                if let Some(i) = state.index(&id) {
                    if state.entry(i).phase == Phase::Installed {
                        state.remove(i)?;
                    }
                }
            }
            Err(e)
        }
    }
}

/// After stream level `i` was applied: the lower levels it replaced.
fn supersede(state: &mut State<'_, '_>, i: usize, on: &mut dyn FnMut(Event)) -> Result<()> {
    let by = state.entry(i).id.clone();
    for id in state.supersede_lower(i)? {
        on(Event::Superseded { id, by: by.clone() });
    }
    Ok(())
}

/// Every livepatch present in the kernel (enabled, or in a transition),
/// by name; a patch being freed is not.
fn live_patches(host: &Host<'_>) -> Result<Vec<String>> {
    let dir = host.path("/sys/kernel/livepatch");
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(dir, e)),
    };
    names.sort();
    let mut live = Vec::new();
    for name in names {
        if PatchState::read(host, &name)? != PatchState::Absent {
            live.push(name);
        }
    }
    Ok(live)
}

/// How a live patch is named in a refusal.
fn describe_live(state: &State<'_, '_>, module: &str) -> String {
    match state.entries().iter().find(|e| e.module == module) {
        Some(e) => match &e.manifest.stream {
            Some(s) => format!(
                "{} (update {}, stream {} level {})",
                module, e.id, s.name, s.level
            ),
            None => format!("{} (stand-alone update {})", module, e.id),
        },
        None => format!("{module} (not installed by ksplice)"),
    }
}

/// The rules of a cumulative update `id` (its module, stream and kernel
/// build), checked before anything changes:
/// 1. its stream's applied level is below its level ("already at level X");
/// 2. the only live patches are lower levels of its stream: the kernel's
///    atomic replace would disable and free every other one, whoever loaded
///    it (kernel/livepatch/transition.c, klp_free_replaced_patches_async).
fn check_stream(
    state: &State<'_, '_>,
    id: &str,
    module: &str,
    stream: &manifests::Stream,
    build_id: &str,
) -> Result<()> {
    let same = |e: &Entry| {
        e.manifest
            .stream
            .as_ref()
            .is_some_and(|s| s.name == stream.name)
            && e.manifest.target.build_id == build_id
    };
    // 1. Not at or below the applied level.
    if let Some(top) = state
        .entries()
        .iter()
        .filter(|e| e.id != id && same(e) && e.phase == Phase::Applied)
        .max_by_key(|e| e.level())
    {
        if top.level() >= stream.level {
            return Err(Error::StreamLevel {
                id: id.to_owned(),
                stream: stream.name.clone(),
                level: stream.level,
                applied: top.level(),
                applied_id: top.id.clone(),
            });
        }
    }
    // 2. Nothing live but lower levels of the stream.
    let mut others = Vec::new();
    for name in live_patches(state.host)? {
        if name == module {
            continue;
        }
        let lower_level = state
            .entries()
            .iter()
            .any(|e| e.module == name && same(e) && e.level() < stream.level);
        if !lower_level {
            others.push(describe_live(state, &name));
        }
    }
    if !others.is_empty() {
        return Err(Error::StreamBlocked {
            id: id.to_owned(),
            stream: stream.name.clone(),
            level: stream.level,
            live: others,
        });
    }
    Ok(())
}

fn check_bases(state: &State<'_, '_>, m: &Manifest) -> Result<()> {
    check_bases_of(state, &m.id, &m.builds_on)
}

fn check_bases_of(state: &State<'_, '_>, id: &str, builds_on: &[String]) -> Result<()> {
    for base in builds_on {
        let applied = state.find(base).is_some_and(|e| e.phase == Phase::Applied);
        if !applied {
            return Err(Error::MissingBase {
                id: id.to_owned(),
                missing: base.clone(),
            });
        }
    }
    Ok(())
}

/// Load entry `i` from its installed package (verified again: the state
/// directory is not trusted more than the network), and wait for the switch.
fn load(state: &mut State<'_, '_>, i: usize, policy: &TrustPolicy) -> Result<()> {
    let host = state.host;
    let e = state.entry(i).clone();
    let pkg = host.package_path(&e.id);
    let package_err = |source| Error::Package {
        path: pkg.clone(),
        source: Box::new(source),
    };
    let bytes = pkgfile::read(&pkg)?;
    // The copy must be the very package the journal recorded (and whose target
    // was checked): one swapped in the state directory may be validly signed,
    // but is another one.
    if manifests::sha256_hex(&bytes) != e.package_sha256 {
        return Err(Error::InstalledMismatch {
            id: e.id.clone(),
            path: pkg.clone(),
        });
    }
    // Extracted with modes 0700/0600 set on the descriptors, whatever the umask.
    let opened = manifests::package::open_package_bytes(&bytes, policy, &host.state("work"))
        .map_err(package_err)?;
    drop(bytes);
    let result = (|| {
        if *opened.manifest != e.manifest {
            return Err(Error::InstalledMismatch {
                id: e.id.clone(),
                path: pkg.clone(),
            });
        }
        // Opened relative to the extraction directory's descriptor, never through
        // a link, and re-hashed from that descriptor against the verified manifest:
        // the kernel gets the verified bytes whatever happened to the paths.
        let ko = opened.dir.join(&opened.manifest.module.file);
        let file = opened
            .open_payload(&opened.manifest.module.file)
            .map_err(package_err)?;
        state.set_phase(i, Phase::Loading)?;
        let mark = kmsg::Mark::now(host);
        if let Err(err) = host.sys.finit_module(&file) {
            let lines = kmsg::run_pre_lines(&mark.messages(), &e.module);
            let rest = state.resting_phase(i)?;
            state.set_phase(i, rest)?;
            if !lines.is_empty() {
                return Err(Error::RunPre {
                    module: e.module.clone(),
                    messages: lines,
                });
            }
            return Err(Error::Load {
                module: e.module.clone(),
                path: ko,
                source: err,
            });
        }
        state.checkpoint(Step::Loaded)?;
        state.set_phase(i, Phase::Transitioning)?;
        state.finish_apply(i)
    })();
    // Best effort: work/ is emptied by the next command anyway. A simulated
    // crash leaves it behind, as a real one would.
    if !matches!(result, Err(Error::Interrupted { .. })) {
        let _ = std::fs::remove_dir_all(&opened.dir);
    }
    result
}

/// `ksplice apply --installed` (at boot): apply every installed update built
/// for the running kernel; skip the others with a message. Of each stream only
/// the highest installed level is applied (it contains the lower ones), and
/// streams come first: a cumulative update replaces every live patch, so the
/// stand-alone updates (in install order) go on top of it. Goes on after a
/// failure and returns the first one.
pub fn apply_installed(host: &Host<'_>, on: &mut dyn FnMut(Event)) -> Result<()> {
    if host.disabled_on_cmdline() {
        on(Event::DisabledByCmdline);
        return Ok(());
    }
    let policy = load_policy(host)?;
    let running = Running::read(host)?;
    let mut state = State::open(host)?;
    let (mut ids, standalone): (Vec<&Entry>, Vec<&Entry>) = state
        .entries()
        .iter()
        .partition(|e| e.manifest.stream.is_some());
    ids.extend(standalone);
    let ids: Vec<String> = ids.iter().map(|e| e.id.clone()).collect();
    let mut first_err = None;
    for id in ids {
        let Some(i) = state.index(&id) else { continue };
        let e = state.entry(i).clone();
        if e.phase == Phase::Applied {
            on(Event::AlreadyApplied { id });
            continue;
        }
        if let Err(mismatch) = running.check(&e.id, &e.manifest.target) {
            on(Event::Skipped {
                id,
                reason: mismatch.to_string(),
            });
            continue;
        }
        if let Some(top) = state
            .entries()
            .iter()
            .filter(|o| e.same_stream(o) && o.level() > e.level())
            .max_by_key(|o| o.level())
        {
            let reason = format!(
                "superseded by {} (level {} of stream {})",
                top.id,
                top.level(),
                e.manifest.stream.as_ref().map_or("", |s| s.name.as_str())
            );
            on(Event::Skipped { id, reason });
            continue;
        }
        let r = check_bases_of(&state, &e.id, &e.manifest.builds_on)
            .and_then(|()| match &e.manifest.stream {
                Some(s) => check_stream(&state, &e.id, &e.module, s, &e.manifest.target.build_id),
                None => Ok(()),
            })
            .and_then(|()| load(&mut state, i, &policy));
        match r {
            Ok(()) => {
                on(Event::Applied { id });
                if let Err(err) = supersede(&mut state, i, on) {
                    first_err.get_or_insert(err);
                }
            }
            Err(err @ Error::Interrupted { .. }) => return Err(err),
            Err(err) => {
                on(Event::Skipped {
                    id,
                    reason: err.to_string(),
                });
                first_err.get_or_insert(err);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Which updates `undo` works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    Ids(Vec<String>),
    /// Every update: applied ones newest first, then installed ones.
    All,
}

/// `ksplice undo ID... | --all`
pub fn undo(host: &Host<'_>, targets: &Targets, on: &mut dyn FnMut(Event)) -> Result<()> {
    let mut state = State::open(host)?;
    let ids = match targets {
        Targets::Ids(ids) => ids.clone(),
        Targets::All => {
            // Superseded levels first: with nothing below it, a stream's
            // applied level is then undone by a plain disable, not by
            // stepping back through every level.
            let mut ids: Vec<String> = state
                .entries()
                .iter()
                .filter(|e| e.phase == Phase::Superseded)
                .map(|e| e.id.clone())
                .collect();
            let mut applied: Vec<&Entry> = state
                .entries()
                .iter()
                .filter(|e| e.phase == Phase::Applied)
                .collect();
            applied.sort_by_key(|e| std::cmp::Reverse(e.applied_seq));
            ids.extend(applied.iter().map(|e| e.id.clone()));
            ids.extend(
                state
                    .entries()
                    .iter()
                    .filter(|e| !matches!(e.phase, Phase::Applied | Phase::Superseded))
                    .map(|e| e.id.clone()),
            );
            ids
        }
    };
    let mut policy = None;
    for id in ids {
        undo_one(&mut state, &id, &mut policy, on)?;
    }
    Ok(())
}

/// The level undo of applied stream level `i` returns to: the highest lower
/// level of its stream still installed (its package is in packages/).
fn step_back_target(state: &State<'_, '_>, i: usize) -> Option<usize> {
    let e = state.entry(i);
    let to = state
        .entries()
        .iter()
        .filter(|o| e.same_stream(o) && o.level() < e.level() && o.phase.at_rest())
        .max_by_key(|o| o.level())?;
    state.index(&to.id)
}

/// Undo applied stream level `i` by loading lower level `to` (it carries the
/// replace flag): one transition from `i`'s code to `to`'s, never a moment
/// without `to`'s fixes. Then `i`, replaced and freed by the kernel, is
/// unloaded and removed.
fn step_back(
    state: &mut State<'_, '_>,
    i: usize,
    to: usize,
    policy: &TrustPolicy,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let e = state.entry(i).clone();
    let target = state.entry(to).clone();
    // 1. Loading `to` replaces every live patch: only `i` may be live.
    let others: Vec<String> = live_patches(state.host)?
        .into_iter()
        .filter(|m| *m != e.module)
        .map(|m| describe_live(state, &m))
        .collect();
    if !others.is_empty() {
        return Err(Error::StepBackBlocked {
            id: e.id,
            to: target.id,
            live: others,
        });
    }
    // 2. Journal first: a crash from here on is finished by recovery once
    //    it knows whether `to` took over.
    state.set_phase(i, Phase::SteppingBack)?;
    if let Err(err) = load(state, to, policy) {
        // `to` is back at rest (superseded); `i` was never touched.
        if !matches!(err, Error::Interrupted { .. }) {
            if let Some(i) = state.index(&e.id) {
                state.set_phase(i, Phase::Applied)?;
            }
        }
        return Err(err);
    }
    // 3. The kernel replaced `i`: unload and remove it.
    let i = state
        .index(&e.id)
        .expect("invariant: only this command changes the journal");
    state.set_phase(i, Phase::Unloading)?;
    state.finish_undo(i)?;
    on(Event::SteppedBack {
        id: e.id,
        to: target.id.clone(),
    });
    if let Some(to) = state.index(&target.id) {
        supersede(state, to, on)?;
    }
    Ok(())
}

fn undo_one(
    state: &mut State<'_, '_>,
    id: &str,
    policy: &mut Option<TrustPolicy>,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let i = state
        .index(id)
        .ok_or_else(|| Error::UnknownUpdate { id: id.to_owned() })?;
    // An applied update built on top of this one would lose its base.
    if let Some(by) = state.entries().iter().find(|e| {
        e.id != id && e.phase != Phase::Installed && e.manifest.builds_on.iter().any(|b| b == id)
    }) {
        return Err(Error::UndoBlocked {
            id: id.to_owned(),
            by: by.id.clone(),
        });
    }
    let e = state.entry(i).clone();
    if e.phase == Phase::Applied {
        if let Some(to) = step_back_target(state, i) {
            // The lower level is verified again before it is loaded.
            if policy.is_none() {
                *policy = Some(load_policy(state.host)?);
            }
            let policy = policy.as_ref().expect("invariant: loaded just above");
            return step_back(state, i, to, policy, on);
        }
        state.set_phase(i, Phase::Disabling)?;
        state.finish_undo(i)?;
        on(Event::Undone { id: e.id });
    } else {
        state.remove(i)?;
        on(Event::Removed { id: e.id });
    }
    Ok(())
}

/// One update as `view` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpdateView {
    pub id: String,
    pub description: String,
    pub cves: Vec<String>,
    /// Journal phase: `installed`, `applied`, or an interrupted step.
    pub state: String,
    /// What /sys/kernel/livepatch/<module>/ says.
    pub livepatch: String,
    pub module: String,
    pub installed_at: String,
    pub applied_at: Option<String>,
    pub builds_on: Vec<String>,
    /// A cumulative update's stream: name, level, replaced ids.
    pub stream: Option<manifests::Stream>,
    pub target: manifests::manifest::TargetKernel,
    pub for_running_kernel: bool,
    pub objects: Vec<crate::state::ObjectSummary>,
}

/// What `view` shows.
#[derive(Debug, Clone)]
pub struct View {
    pub running: Running,
    /// Everything installed, in install order.
    pub updates: Vec<UpdateView>,
    pub not_in_journal: NotInJournal,
}

impl View {
    /// 0, or [`exit::NOT_IN_JOURNAL`](crate::error::exit::NOT_IN_JOURNAL)
    /// when the kernel or the state directory holds updates the journal does
    /// not know.
    pub fn exit_code(&self) -> u8 {
        self.not_in_journal.exit_code()
    }
}

/// What the kernel and the state directory hold that the journal does not
/// know (a journal lost or replaced while updates were live).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NotInJournal {
    /// Live `ksplice_*` livepatches (/sys/kernel/livepatch/<name>) that no
    /// journal entry names: applied, not in the journal.
    pub livepatches: Vec<String>,
    /// `packages/ksplice-<id>.tar.gz` files that no journal entry names.
    pub packages: Vec<String>,
}

impl NotInJournal {
    pub fn is_empty(&self) -> bool {
        self.livepatches.is_empty() && self.packages.is_empty()
    }

    fn exit_code(&self) -> u8 {
        if self.is_empty() {
            crate::error::exit::OK
        } else {
            crate::error::exit::NOT_IN_JOURNAL
        }
    }

    /// Compare the journal with the kernel's livepatches and the packages/
    /// directory. Only `ksplice_*` livepatches are ours (the builder names
    /// every update module so); other vendors' livepatches are left alone.
    fn read(host: &Host<'_>, state: &State<'_, '_>) -> Result<Self> {
        let mut out = NotInJournal::default();
        let names = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        for name in names(&host.path("/sys/kernel/livepatch")) {
            let ours = name.starts_with("ksplice_");
            let known = state.entries().iter().any(|e| e.module == name);
            // A patch being freed right now is not live any more.
            if ours && !known && PatchState::read(host, &name)? != PatchState::Absent {
                out.livepatches.push(name);
            }
        }
        for name in names(&host.state("packages")) {
            if crate::fsutil::is_temp_name(&name) {
                continue;
            }
            let known = state
                .entries()
                .iter()
                .any(|e| host.package_path(&e.id).file_name() == Some(std::ffi::OsStr::new(&name)));
            if !known {
                out.packages.push(name);
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for NotInJournal {
    /// One line per item, for `view`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::output::escape;
        for m in &self.livepatches {
            writeln!(
                f,
                "{}: applied, not in the journal (live ksplice livepatch)",
                escape(m)
            )?;
        }
        for p in &self.packages {
            writeln!(
                f,
                "{}: in the state directory, not in the journal",
                escape(p)
            )?;
        }
        Ok(())
    }
}

/// Everything installed, in install order, and what the kernel and the
/// state directory hold beyond the journal. Recovers first when the state
/// directory is writable; otherwise reads it as it is.
pub fn view(host: &Host<'_>) -> Result<View> {
    let running = Running::read(host)?;
    let state = open_for_reading(host)?;
    let mut out = Vec::new();
    for e in state.entries() {
        out.push(UpdateView {
            id: e.id.clone(),
            description: e.manifest.description.clone(),
            cves: e.manifest.cves.clone(),
            state: e.phase.name().to_owned(),
            livepatch: PatchState::read(host, &e.module)?.describe().to_owned(),
            module: e.module.clone(),
            installed_at: e.installed_at.clone(),
            applied_at: e.applied_at.clone(),
            builds_on: e.manifest.builds_on.clone(),
            stream: e.manifest.stream.clone(),
            target: e.manifest.target.clone(),
            for_running_kernel: running.matches(&e.manifest.target),
            objects: e.manifest.objects.clone(),
        });
    }
    let not_in_journal = NotInJournal::read(host, &state)?;
    Ok(View {
        running,
        updates: out,
        not_in_journal,
    })
}

fn open_for_reading<'h, 's>(host: &'h Host<'s>) -> Result<State<'h, 's>> {
    if !host.state_dir.exists() {
        return State::peek(host);
    }
    match State::open(host) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            State::peek(host)
        }
        r => r,
    }
}

/// One applied update as `status` sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedUpdate {
    pub id: String,
    /// Stream name and level of a cumulative update.
    pub stream: Option<StreamLevel>,
    pub cves: Vec<String>,
    pub applied_at: Option<String>,
}

/// A stream and the level of it that is applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamLevel {
    pub name: String,
    pub level: u32,
}

/// `ksplice status`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub running: Running,
    /// Applied updates, in application order.
    pub applied: Vec<AppliedUpdate>,
    /// Installed for this kernel, not applied (or interrupted).
    pub pending: Vec<String>,
    /// Lower stream levels a higher applied level replaced (installed, kept
    /// for undo, not pending).
    pub superseded: Vec<String>,
    /// Live livepatches and package files the journal does not know.
    pub not_in_journal: NotInJournal,
}

impl Status {
    /// The applied ids, in application order.
    pub fn applied_ids(&self) -> Vec<String> {
        self.applied.iter().map(|a| a.id.clone()).collect()
    }

    /// The effective release (`ksplice uname -r`, docs/client.md "Effective
    /// kernel version"): the base release, then `+ksplice.<stream>.<level>`
    /// per applied stream (by stream name), then `+<id>` per applied
    /// stand-alone update in application order:
    /// `6.1.0-57-amd64+ksplice.main.2+fix-a`.
    pub fn effective_version(&self) -> String {
        let (streams, standalone) = self.applied_items();
        let mut v = self.running.release.clone();
        for s in streams {
            v.push_str("+ksplice.");
            v.push_str(&s);
        }
        for id in standalone {
            v.push('+');
            v.push_str(&id);
        }
        v
    }

    /// `ksplice uname -v`: the running `uname -v`, then ` ksplice:` and the
    /// applied items (`main.2`, stand-alone ids) joined by `,` when any is
    /// applied.
    pub fn effective_uname_v(&self) -> String {
        let (mut items, standalone) = self.applied_items();
        items.extend(standalone);
        if items.is_empty() {
            self.running.version.clone()
        } else {
            format!("{} ksplice:{}", self.running.version, items.join(","))
        }
    }

    /// The applied streams (by name, as `<stream>.<level>`) and the applied
    /// stand-alone ids (in application order).
    fn applied_items(&self) -> (Vec<String>, Vec<String>) {
        let mut streams: Vec<&StreamLevel> = self
            .applied
            .iter()
            .filter_map(|a| a.stream.as_ref())
            .collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        let streams = streams
            .iter()
            .map(|s| format!("{}.{}", s.name, s.level))
            .collect();
        let standalone = self
            .applied
            .iter()
            .filter(|a| a.stream.is_none())
            .map(|a| a.id.clone())
            .collect();
        (streams, standalone)
    }

    /// Every CVE the applied updates fix, sorted, once each.
    pub fn cves_fixed(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> =
            self.applied.iter().flat_map(|a| &a.cves).collect();
        set.into_iter().cloned().collect()
    }

    /// The exit code for monitoring: 0 up to date, 1 updates pending, 10
    /// updates live or installed that the journal does not know (never "up
    /// to date": the journal was lost or replaced).
    pub fn exit_code(&self) -> u8 {
        if !self.not_in_journal.is_empty() {
            self.not_in_journal.exit_code()
        } else if self.pending.is_empty() {
            crate::error::exit::OK
        } else {
            crate::error::exit::PENDING
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::output::{escape, escape_join};
        write!(
            f,
            "effective kernel {}: ",
            escape(&self.effective_version())
        )?;
        let superseded = if self.superseded.is_empty() {
            String::new()
        } else {
            format!(
                ", {} superseded: {}",
                self.superseded.len(),
                escape_join(&self.superseded, ", ")
            )
        };
        let mut parts = Vec::new();
        let nij = &self.not_in_journal;
        if !nij.livepatches.is_empty() {
            parts.push(format!(
                "{} livepatch(es) applied, not in the journal: {}",
                nij.livepatches.len(),
                escape_join(&nij.livepatches, ", ")
            ));
        }
        if !nij.packages.is_empty() {
            parts.push(format!(
                "{} package(s) in the state directory, not in the journal: {}",
                nij.packages.len(),
                escape_join(&nij.packages, ", ")
            ));
        }
        if !self.pending.is_empty() {
            parts.push(format!(
                "{} installed update(s) not applied: {}",
                self.pending.len(),
                escape_join(&self.pending, ", ")
            ));
        }
        if parts.is_empty() {
            write!(f, "up to date ({} applied{superseded})", self.applied.len())
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// `ksplice status`: the journal reconciled with the kernel (recovery, then
/// the live livepatches and package files the journal does not know).
pub fn status(host: &Host<'_>) -> Result<Status> {
    let running = Running::read(host)?;
    let state = open_for_reading(host)?;
    let mut applied: Vec<&Entry> = Vec::new();
    let mut pending = Vec::new();
    let mut superseded = Vec::new();
    for e in state.entries() {
        let live = matches!(
            PatchState::read(host, &e.module)?,
            PatchState::Present { enabled: true, .. }
        );
        if e.phase == Phase::Applied && live {
            applied.push(e);
        } else if e.phase == Phase::Superseded {
            superseded.push(e.id.clone());
        } else if running.matches(&e.manifest.target) {
            pending.push(e.id.clone());
        }
    }
    applied.sort_by_key(|e| e.applied_seq);
    let not_in_journal = NotInJournal::read(host, &state)?;
    Ok(Status {
        running,
        applied: applied
            .iter()
            .map(|e| AppliedUpdate {
                id: e.id.clone(),
                stream: e.manifest.stream.as_ref().map(|s| StreamLevel {
                    name: s.name.clone(),
                    level: s.level,
                }),
                cves: e.manifest.cves.clone(),
                applied_at: e.applied_at.clone(),
            })
            .collect(),
        pending,
        superseded,
        not_in_journal,
    })
}

/// What `ksplice verify` prints for a good package.
#[derive(Debug, Clone)]
pub struct Summary {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// Trusted keys whose signature verified.
    pub signers: Vec<String>,
}

/// Verify a package fully (signatures, payload digests) in memory and summarize
/// it. Writes nothing: no temporary directory is needed.
pub fn summarize(pkg: &Path, policy: &TrustPolicy) -> Result<Summary> {
    let bytes = pkgfile::read(pkg)?;
    let verified = verify_bytes(pkg, &bytes, policy)?;
    // Every trusted key listed in manifest.sig verified (the verifier refuses a
    // bad signature by a trusted key), so those are the signers.
    let trusted: Vec<String> = policy
        .keys()
        .iter()
        .map(|k| k.key_id().as_str().to_owned())
        .collect();
    let sig = String::from_utf8_lossy(&verified.signature_bytes).into_owned();
    let mut signers: Vec<String> = Vec::new();
    for k in sig.lines().filter_map(|l| l.split_whitespace().next()) {
        if trusted.iter().any(|t| t == k) && !signers.iter().any(|s| s == k) {
            signers.push(k.to_owned());
        }
    }
    Ok(Summary {
        path: pkg.to_owned(),
        manifest: (*verified.manifest).clone(),
        signers,
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.manifest;
        writeln!(f, "verified {} ({})", m.id, self.path.display())?;
        writeln!(f, "  description: {}", m.description)?;
        if !m.cves.is_empty() {
            writeln!(f, "  cves: {}", m.cves.join(", "))?;
        }
        writeln!(
            f,
            "  target: {} {} build-id {} ({})",
            m.target.release, m.target.arch, m.target.build_id, m.target.version
        )?;
        writeln!(f, "  signed by: {}", self.signers.join(", "))?;
        writeln!(f, "  module: {} ({})", m.module.name, m.module.file)?;
        if !m.builds_on.is_empty() {
            writeln!(f, "  builds on: {}", m.builds_on.join(", "))?;
        }
        write_objects(
            f,
            m.objects.iter().map(|o| {
                let funcs = o.functions.iter();
                (
                    o.name.as_str(),
                    funcs.map(|c| (c.name.as_str(), c.sympos, c.kind)).collect(),
                )
            }),
        )
    }
}

/// One line per patched object; names come from a manifest, so they are
/// escaped for the terminal (validation refuses control characters, this is
/// the second line of defence).
fn write_objects<'a>(
    f: &mut std::fmt::Formatter<'_>,
    objects: impl IntoIterator<Item = (&'a str, Vec<(&'a str, u32, ChangeKind)>)>,
) -> std::fmt::Result {
    use crate::output::escape;
    for (object, functions) in objects {
        let funcs: Vec<String> = functions
            .into_iter()
            .map(|(name, sympos, kind)| {
                let kind = match kind {
                    ChangeKind::Replaced => "replaced",
                    ChangeKind::Added => "added",
                };
                let name = escape(name);
                if sympos > 0 {
                    format!("{name},{sympos} ({kind})")
                } else {
                    format!("{name} ({kind})")
                }
            })
            .collect();
        writeln!(f, "  {}: {}", escape(object), funcs.join(", "))?;
    }
    Ok(())
}

/// Human-readable form of one [`UpdateView`]. Every string from the journal
/// (that is, from a manifest) is escaped for the terminal.
#[derive(Debug)]
pub struct ViewText<'a>(pub &'a UpdateView);

impl std::fmt::Display for ViewText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::output::{escape, escape_join};
        let u = self.0;
        writeln!(f, "{}: {}", escape(&u.id), u.state)?;
        writeln!(f, "  description: {}", escape(&u.description))?;
        if !u.cves.is_empty() {
            writeln!(f, "  cves: {}", escape_join(&u.cves, ", "))?;
        }
        writeln!(f, "  livepatch: {} ({})", escape(&u.module), u.livepatch)?;
        writeln!(f, "  installed: {}", escape(&u.installed_at))?;
        if let Some(at) = &u.applied_at {
            writeln!(f, "  applied: {}", escape(at))?;
        }
        if !u.builds_on.is_empty() {
            writeln!(f, "  builds on: {}", escape_join(&u.builds_on, ", "))?;
        }
        if let Some(s) = &u.stream {
            write!(f, "  stream: {} level {}", escape(&s.name), s.level)?;
            if !s.replaces.is_empty() {
                write!(f, " (replaces {})", escape_join(&s.replaces, ", "))?;
            }
            writeln!(f)?;
        }
        if !u.for_running_kernel {
            writeln!(
                f,
                "  target: {} build-id {} (not the running kernel)",
                escape(&u.target.release),
                escape(&u.target.build_id)
            )?;
        }
        write_objects(
            f,
            u.objects.iter().map(|o| {
                let funcs = o.functions.iter();
                (
                    o.name.as_str(),
                    funcs.map(|c| (c.name.as_str(), c.sympos, c.kind)).collect(),
                )
            }),
        )
    }
}
