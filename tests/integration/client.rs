//! The client against a fixture root and a simulated kernel: trust policy,
//! identity checks, bad packages, apply/undo/boot, and recovery after a crash
//! injected at every step of apply and undo.

use ksplice_tests::elf_note;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use client::error::Error;
use client::ops::{self, Event, Targets};
use client::state::{Phase, State};
use client::{exit, Host, Step, Sys, Uname};
use manifests::{
    ChangeKind, FunctionChange, Manifest, ModuleInfo, PatchedObject, SigningKey, TargetKernel,
    TrustPolicy,
};

const RELEASE: &str = "6.1.0-56-amd64";
const VERSION: &str = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)";
const BUILD_ID: [u8; 20] = [
    0xe4, 0xf1, 0x8d, 0x9d, 0xc1, 0xd0, 0xe6, 0xfc, 0x2b, 0x17, 0xe9, 0x3e, 0x88, 0x5a, 0x64, 0x7b,
    0x3c, 0x0a, 0x6f, 0xc1,
];

// ---- the simulated kernel ------------------------------------------------------------------

/// How the simulated kernel treats an update module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Loads; every transition finishes at the next poll.
    Normal,
    /// The run-pre check refuses: one KERN_ERR line in /dev/kmsg, EINVAL.
    RunPre,
    /// Enabling transitions never finish (reversals do).
    StallEnable,
    /// Enabling transitions finish once `signal` was written.
    StallUntilSignal,
    /// Disabling transitions never finish (re-enabling does).
    StallDisable,
    /// Someone disables every patch during its enabling transition: the
    /// reversal completes and the kernel frees the patch.
    DisabledWhileEnabling,
}

/// A kernel made of files under the fixture root: /sys/module/<name>,
/// /sys/kernel/livepatch/<name>/{enabled,transition}. Its state lives in the
/// files, so a new instance after a "crash" sees what the old one left.
///
/// Like the real kernel, when a disable transition completes the patch is
/// freed: its livepatch directory first answers ENODEV (the kobject is going
/// away under open files) for `enodev_window` accesses, then disappears
/// (ENOENT). The module stays loaded until delete_module.
///
/// A module whose file says `replace` (a cumulative update) models 6.1's
/// atomic replace (kernel/livepatch/transition.c, klp_complete_transition
/// and klp_free_replaced_patches_async): when its enabling transition
/// completes, every other patch is disabled and freed like a disabled one
/// (its directory vanishes, its module can be unloaded); a reversed replace
/// transition leaves them alone. Loading while a transition runs is refused
/// with EBUSY (klp_enable_patch).
pub(crate) struct FakeKernel {
    root: PathBuf,
    pub(crate) uname: Uname,
    mode: Mode,
    /// Fail the n-th checkpoint (0-based), like a SIGKILL there.
    crash_at: Option<usize>,
    checkpoints: Cell<usize>,
    pub(crate) steps: RefCell<Vec<Step>>,
    /// The enabled, not freed patches at every checkpoint and poll, in
    /// order: what the kernel ran at each moment.
    pub(crate) live_history: RefCell<Vec<Vec<String>>>,
    /// Accesses answered ENODEV after a patch is freed, before it vanishes.
    pub(crate) enodev_window: usize,
    /// Freed patches still answering ENODEV: name -> accesses left.
    dying: RefCell<HashMap<String, usize>>,
    /// After the next successful read of this attribute of a disabling patch,
    /// its transition completes (a completion between two reads).
    finish_after_read: Cell<Option<&'static str>>,
    /// `Some(k)`: after k more writes to `enabled`, the patch's disable has
    /// just completed (by another actor, or a stalled transition finishing
    /// at last) and the patch is freed before the write reaches it.
    vanish_before_write: Cell<Option<usize>>,
}

impl FakeKernel {
    pub(crate) fn new(root: &Path, mode: Mode) -> Self {
        FakeKernel {
            root: root.to_owned(),
            uname: Uname {
                release: RELEASE.into(),
                version: VERSION.into(),
                machine: "x86_64".into(),
            },
            mode,
            crash_at: None,
            checkpoints: Cell::new(0),
            steps: RefCell::new(Vec::new()),
            live_history: RefCell::new(Vec::new()),
            enodev_window: 1,
            dying: RefCell::new(HashMap::new()),
            finish_after_read: Cell::new(None),
            vanish_before_write: Cell::new(None),
        }
    }

    fn name_of(dir: &Path) -> String {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A disable transition completed: the kernel frees the patch.
    fn free(&self, dir: &Path) {
        fs::write(dir.join("enabled"), "0\n").expect("enabled");
        fs::write(dir.join("transition"), "0\n").expect("transition");
        if self.enodev_window == 0 {
            fs::remove_dir_all(dir).expect("free patch");
        } else {
            self.dying
                .borrow_mut()
                .insert(Self::name_of(dir), self.enodev_window);
        }
    }

    /// An access to an attribute of the patch in `dir`: ENODEV while it is
    /// being freed, then the directory is gone.
    fn access(&self, dir: &Path) -> io::Result<()> {
        let name = Self::name_of(dir);
        let mut dying = self.dying.borrow_mut();
        match dying.get_mut(&name) {
            Some(0) => {
                dying.remove(&name);
                let _ = fs::remove_dir_all(dir);
                Ok(())
            }
            Some(n) => {
                *n -= 1;
                Err(io::Error::from_raw_os_error(libc::ENODEV))
            }
            None => Ok(()),
        }
    }

    fn is_dying(&self, dir: &Path) -> bool {
        self.dying.borrow().contains_key(&Self::name_of(dir))
    }

    /// Snapshot the enabled patches that are not being freed.
    fn record_live(&self) {
        let live: Vec<String> = self
            .patches()
            .iter()
            .filter(|d| !self.is_dying(d) && read(&d.join("enabled")) == "1")
            .map(|d| Self::name_of(d))
            .collect();
        self.live_history.borrow_mut().push(live);
    }

    fn is_replace(&self, name: &str) -> bool {
        self.root
            .join("sys/module")
            .join(name)
            .join("replace")
            .exists()
    }

    pub(crate) fn crashing_at(mut self, n: usize) -> Self {
        self.crash_at = Some(n);
        self
    }

    fn lp(&self) -> PathBuf {
        self.root.join("sys/kernel/livepatch")
    }

    fn log(&self, line: &str) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("kernel.log"))
            .expect("kernel log");
        writeln!(f, "{line}").expect("kernel log write");
    }

    fn patches(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.lp())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub(crate) fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default().trim().to_owned()
}

impl Sys for FakeKernel {
    fn uname(&self) -> io::Result<Uname> {
        Ok(self.uname.clone())
    }

    fn finit_module(&self, module: &fs::File) -> io::Result<()> {
        let mut text = String::new();
        (&*module).read_to_string(&mut text)?;
        let mut lines = text.lines();
        let name = lines
            .next()
            .and_then(|l| l.trim().strip_prefix("fake-module:"))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOEXEC))?
            .to_owned();
        let replace = lines.next().map(str::trim) == Some("replace");
        if self.root.join("sys/module").join(&name).exists() {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        // klp_enable_patch: one transition at a time.
        if self
            .patches()
            .iter()
            .any(|d| !self.is_dying(d) && read(&d.join("transition")) == "1")
        {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        if self.mode == Mode::RunPre {
            let mut kmsg = fs::OpenOptions::new()
                .append(true)
                .open(self.root.join("dev/kmsg"))?;
            writeln!(kmsg, "6,900,1000,-;{name}: loading")?;
            writeln!(
                kmsg,
                "3,901,1001,-;{name}: run-pre: mismatch in cmdline_proc_show+0x12: expected 48 found 90"
            )?;
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        fs::create_dir_all(self.root.join("sys/module").join(&name))?;
        if replace {
            fs::write(self.root.join("sys/module").join(&name).join("replace"), "")?;
        }
        let dir = self.lp().join(&name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("enabled"), "1\n")?;
        fs::write(dir.join("transition"), "1\n")?;
        fs::write(dir.join("force"), "")?;
        if self.mode == Mode::StallUntilSignal {
            fs::write(dir.join("signal"), "")?;
        }
        self.log(&format!("load {name}"));
        Ok(())
    }

    fn delete_module(&self, name: &str) -> io::Result<()> {
        let module = self.root.join("sys/module").join(name);
        if !module.exists() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let dir = self.lp().join(name);
        if self.dying.borrow_mut().remove(name).is_some() {
            // Freed: the patch dropped its module reference.
            fs::remove_dir_all(&dir)?;
        }
        if dir.exists() {
            if read(&dir.join("enabled")) == "1" || read(&dir.join("transition")) == "1" {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            // A disabled, finished patch is freed and drops its reference.
            fs::remove_dir_all(&dir)?;
        }
        fs::remove_dir_all(&module)?;
        self.log(&format!("unload {name}"));
        Ok(())
    }

    fn read_attr(&self, path: &Path) -> io::Result<String> {
        let dir = path.parent().expect("attribute in a patch directory");
        self.access(dir)?;
        let value = fs::read_to_string(path)?.trim().to_owned();
        let attr = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if self.finish_after_read.get() == Some(attr)
            && read(&dir.join("enabled")) == "0"
            && read(&dir.join("transition")) == "1"
        {
            self.finish_after_read.set(None);
            self.free(dir);
        }
        Ok(value)
    }

    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        let dir = path.parent().expect("attribute in a patch directory");
        let attr = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if attr == "enabled" {
            match self.vanish_before_write.get() {
                Some(0) => {
                    self.vanish_before_write.set(None);
                    if dir.exists() {
                        self.free(dir);
                    }
                }
                Some(k) => self.vanish_before_write.set(Some(k - 1)),
                None => {}
            }
        }
        self.access(dir)?;
        if !path.exists() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if attr == "enabled" {
            // klp's enabled_store: EINVAL for the value it already has; any
            // other value starts a transition or reverses the running one.
            if read(path) == value {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            fs::write(dir.join("transition"), "1\n")?;
        }
        fs::write(path, format!("{value}\n"))
    }

    fn sleep(&self, _d: Duration) {
        for dir in self.patches() {
            if self.is_dying(&dir) || read(&dir.join("transition")) != "1" {
                continue;
            }
            let enabling = read(&dir.join("enabled")) == "1";
            let finishes = match (self.mode, enabling) {
                (Mode::StallEnable, true) => false,
                (Mode::StallUntilSignal, true) => read(&dir.join("signal")) == "1",
                (Mode::StallDisable, false) => false,
                _ => true,
            };
            match (finishes, enabling) {
                (true, true) if self.mode == Mode::DisabledWhileEnabling => self.free(&dir),
                (true, true) => {
                    fs::write(dir.join("transition"), "0\n").expect("transition");
                    let name = Self::name_of(&dir);
                    if self.is_replace(&name) {
                        // Atomic replace: every other patch is disabled and freed.
                        for other in self.patches() {
                            if other != dir && !self.is_dying(&other) {
                                self.log(&format!("replaced {} by {name}", Self::name_of(&other)));
                                self.free(&other);
                            }
                        }
                    }
                }
                (true, false) => self.free(&dir),
                (false, _) => {}
            }
        }
        self.record_live();
    }

    fn checkpoint(&self, step: Step) -> io::Result<()> {
        self.record_live();
        self.steps.borrow_mut().push(step);
        let n = self.checkpoints.get();
        self.checkpoints.set(n + 1);
        if self.crash_at == Some(n) {
            return Err(io::Error::other("crash injected"));
        }
        Ok(())
    }
}

// ---- the fixture host ----------------------------------------------------------------------

pub(crate) struct Fixture {
    _tmp: Option<tempfile::TempDir>,
    pub(crate) root: PathBuf,
    out: PathBuf,
    key: SigningKey,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fx = Self::build(tmp.path().to_owned());
        Fixture {
            _tmp: Some(tmp),
            ..fx
        }
    }

    /// A fixture already laid out under `base` by another process.
    fn at(base: PathBuf) -> Self {
        Fixture {
            _tmp: None,
            root: base.join("root"),
            out: base.join("out"),
            key: SigningKey::from_seed(&[7; 32]),
        }
    }

    fn base(&self) -> PathBuf {
        self.root.parent().expect("fixture base").to_owned()
    }

    fn build(base: PathBuf) -> Self {
        let root = base.join("root");
        let out = base.join("out");
        for d in [
            "proc/1/task/1",
            "proc/4242/task/4243",
            "sys/kernel/livepatch",
            "sys/module",
            "dev",
            "etc/ksplice",
        ] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        fs::create_dir_all(&out).expect("mkdir out");
        let mut notes = elf_note(b"Linux\0", 6, b"6.1.0\0");
        notes.extend(elf_note(b"GNU\0", 3, &BUILD_ID));
        fs::write(root.join("sys/kernel/notes"), notes).expect("notes");
        fs::write(
            root.join("proc/cmdline"),
            "BOOT_IMAGE=/vmlinuz root=/dev/vda ro\n",
        )
        .expect("cmdline");
        fs::write(root.join("dev/kmsg"), "6,1,1,-;Linux version 6.1.0\n").expect("kmsg");
        // One task that switched, one stuck in a function being patched.
        fs::write(root.join("proc/1/task/1/patch_state"), "1\n").expect("ps");
        fs::write(root.join("proc/1/task/1/comm"), "init\n").expect("comm");
        fs::write(root.join("proc/4242/task/4243/patch_state"), "0\n").expect("ps");
        fs::write(root.join("proc/4242/task/4243/comm"), "stuck\n").expect("comm");
        fs::write(
            root.join("proc/4242/task/4243/stack"),
            "[<0>] cmdline_proc_show+0x5/0x30\n[<0>] seq_read_iter+0x11f/0x460\n",
        )
        .expect("stack");
        let key = SigningKey::from_seed(&[7; 32]);
        let policy = TrustPolicy::new(vec![key.public()], 1).expect("policy");
        fs::write(root.join("etc/ksplice/trust.toml"), policy.to_toml()).expect("trust");
        Fixture {
            _tmp: None,
            root,
            out,
            key,
        }
    }

    pub(crate) fn host<'s>(&self, sys: &'s dyn Sys) -> Host<'s> {
        let mut h = Host::new(&self.root, sys);
        h.timeouts.transition = Duration::from_secs(2);
        h.timeouts.signal_after = Duration::from_millis(500);
        h.timeouts.poll = Duration::from_millis(100);
        h.timeouts.unload = Duration::from_secs(1);
        h
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.join("var/lib/ksplice")
    }

    fn manifest(id: &str) -> Manifest {
        let module = format!("ksplice_{}", id.replace('-', "_"));
        Manifest {
            format: manifests::FORMAT,
            id: id.into(),
            description: format!("fix {id}"),
            cves: vec!["CVE-2026-0001".into()],
            created: "2026-11-27T21:38:41Z".into(),
            builder_version: "0.1.0".into(),
            builds_on: vec![],
            stream: None,
            target: TargetKernel {
                release: RELEASE.into(),
                version: VERSION.into(),
                arch: "x86_64".into(),
                build_id: hex::encode(BUILD_ID),
            },
            module: ModuleInfo {
                name: module.clone(),
                file: format!("{module}.ko"),
            },
            objects: vec![PatchedObject {
                name: "vmlinux".into(),
                functions: vec![FunctionChange {
                    name: "cmdline_proc_show".into(),
                    sympos: 0,
                    kind: ChangeKind::Replaced,
                    pre_sha256: Some("ab".repeat(32)),
                    old_size: 48,
                    new_size: 64,
                }],
            }],
            files: vec![],
        }
    }

    /// A package signed by the fixture's trusted key.
    pub(crate) fn package(&self, id: &str, edit: impl FnOnce(&mut Manifest)) -> PathBuf {
        self.package_signed(id, edit, &self.key)
    }

    fn package_signed(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Manifest),
        key: &SigningKey,
    ) -> PathBuf {
        let mut m = Self::manifest(id);
        edit(&mut m);
        let ko = self.out.join(format!("{}.ko.src", m.module.name));
        // A cumulative update's module sets klp_patch.replace.
        let replace = if m.stream.is_some() { "replace\n" } else { "" };
        fs::write(&ko, format!("fake-module:{}\n{replace}", m.module.name)).expect("ko");
        let dir = self.out.join(format!("{id}-{}", m.target.release));
        fs::create_dir_all(&dir).expect("pkg dir");
        manifests::write_package(&dir, &m, &[key], &[(m.module.file.clone(), ko)]).expect("package")
    }

    pub(crate) fn loads(&self) -> Vec<String> {
        read(&self.root.join("kernel.log"))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Pretend the machine rebooted: nothing is loaded any more.
    pub(crate) fn reboot(&self) {
        for d in ["sys/kernel/livepatch", "sys/module"] {
            let p = self.root.join(d);
            fs::remove_dir_all(&p).expect("clear");
            fs::create_dir_all(&p).expect("recreate");
        }
    }
}

pub(crate) fn apply(
    fx: &Fixture,
    sys: &dyn Sys,
    pkgs: &[PathBuf],
) -> (Result<(), Error>, Vec<Event>) {
    let host = fx.host(sys);
    let mut events = Vec::new();
    let r = ops::apply(&host, pkgs, &mut |e| events.push(e));
    (r, events)
}

pub(crate) fn undo(
    fx: &Fixture,
    sys: &dyn Sys,
    targets: Targets,
) -> (Result<(), Error>, Vec<Event>) {
    let host = fx.host(sys);
    let mut events = Vec::new();
    let r = ops::undo(&host, &targets, &mut |e| events.push(e));
    (r, events)
}

pub(crate) fn applied(id: &str) -> Event {
    Event::Applied { id: id.into() }
}

pub(crate) fn undone(id: &str) -> Event {
    Event::Undone { id: id.into() }
}

/// The journal and the kernel agree; nothing half-done is left behind.
pub(crate) fn assert_consistent(fx: &Fixture) {
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let host = fx.host(&sys);
    let state = State::peek(&host).expect("journal readable");
    let mut expected_pkgs = Vec::new();
    for e in state.entries() {
        let lp = fx.root.join("sys/kernel/livepatch").join(&e.module);
        let module_loaded = fx.root.join("sys/module").join(&e.module).exists();
        match e.phase {
            Phase::Applied => {
                assert_eq!(
                    read(&lp.join("enabled")),
                    "1",
                    "{}: applied but not enabled",
                    e.id
                );
                assert_eq!(
                    read(&lp.join("transition")),
                    "0",
                    "{}: applied mid-transition",
                    e.id
                );
            }
            Phase::Installed | Phase::Superseded => {
                assert!(!module_loaded, "{}: installed but module loaded", e.id);
                assert!(
                    !lp.exists(),
                    "{}: {:?} but its livepatch is present",
                    e.id,
                    e.phase
                );
            }
            other => panic!("{}: left in phase {other:?}", e.id),
        }
        let pkg = fx
            .state_dir()
            .join("packages")
            .join(format!("ksplice-{}.tar.gz", e.id));
        assert_eq!(
            client::fsutil::sha256_file(&pkg).expect("installed package"),
            e.package_sha256
        );
        expected_pkgs.push(format!("ksplice-{}.tar.gz", e.id));
    }
    let mut pkgs: Vec<String> = fs::read_dir(fx.state_dir().join("packages"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    pkgs.sort();
    expected_pkgs.sort();
    assert_eq!(pkgs, expected_pkgs, "package files vs journal");
    let work: Vec<_> = fs::read_dir(fx.state_dir().join("work"))
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default();
    assert!(work.is_empty(), "work/ not cleaned: {work:?}");
    // Every loaded ksplice module belongs to an applied update.
    for m in fs::read_dir(fx.root.join("sys/module"))
        .expect("sys/module")
        .flatten()
    {
        let name = m.file_name().to_string_lossy().into_owned();
        assert!(
            state
                .entries()
                .iter()
                .any(|e| e.module == name && e.phase == Phase::Applied),
            "module {name} loaded without an applied update"
        );
    }
}

pub(crate) fn is_interrupted(r: &Result<(), Error>) -> bool {
    matches!(r, Err(Error::Interrupted { .. }))
}

// ---- trust policy and identity ---------------------------------------------------------------

#[test]
fn client_trust_policy_missing_or_malformed_is_refused_before_anything() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    fs::remove_file(fx.root.join("etc/ksplice/trust.toml")).expect("rm trust");
    let (r, _) = apply(&fx, &sys, std::slice::from_ref(&pkg));
    match r {
        Err(e @ Error::TrustPolicy { .. }) => assert_eq!(e.exit_code(), exit::VERIFICATION),
        other => panic!("unexpected {other:?}"),
    }
    fs::write(
        fx.root.join("etc/ksplice/trust.toml"),
        "threshold = \"one\"\n",
    )
    .expect("write");
    let (r, _) = apply(&fx, &sys, &[pkg]);
    assert!(matches!(r, Err(Error::TrustPolicy { .. })), "{r:?}");
    assert!(!fx.state_dir().exists());
    assert!(fx.loads().is_empty());
}

#[test]
fn client_trust_policy_override_path_is_used() {
    let fx = Fixture::new();
    let other = SigningKey::from_seed(&[9; 32]);
    let pkg = fx.package_signed("fix-a", |_| {}, &other);
    let alt = fx.out.join("fleet-trust.toml");
    let policy = TrustPolicy::new(vec![other.public()], 1).expect("policy");
    fs::write(&alt, policy.to_toml()).expect("write");
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let mut host = fx.host(&sys);
    host.trust = alt;
    let mut events = Vec::new();
    ops::apply(&host, &[pkg], &mut |e| events.push(e)).expect("trusted by the override");
    assert_eq!(events, vec![applied("fix-a")]);
}

#[test]
fn client_identity_read_from_notes_and_uname() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let host = fx.host(&sys);
    let running = client::identity::Running::read(&host).expect("identity");
    assert_eq!(
        running,
        client::identity::Running {
            release: RELEASE.into(),
            version: VERSION.into(),
            arch: "x86_64".into(),
            build_id: hex::encode(BUILD_ID),
        }
    );
    fs::write(
        fx.root.join("sys/kernel/notes"),
        elf_note(b"Linux\0", 6, b"6.1\0"),
    )
    .expect("notes");
    assert!(matches!(
        client::identity::Running::read(&host),
        Err(Error::NoBuildId { .. })
    ));
    fs::remove_file(fx.root.join("sys/kernel/notes")).expect("rm");
    assert!(matches!(
        client::identity::Running::read(&host),
        Err(Error::Io { .. })
    ));
}

// ---- bad input -------------------------------------------------------------------------------

/// Rewrite a package's archive entries (same archive format), to craft bad ones.
fn repack(src: &Path, dest: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) {
    let f = fs::File::open(src).expect("open");
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut entries: Vec<(String, Vec<u8>)> = ar
        .entries()
        .expect("entries")
        .map(|e| {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            (name, data)
        })
        .collect();
    edit(&mut entries);
    let out = fs::File::create(dest).expect("create");
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        // The reader accepts only the exact header pack writes (uid/gid "0000000").
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, name, data.as_slice())
            .expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gz");
}

#[test]
fn client_bad_packages_are_refused_before_kernel_or_state_is_touched() {
    let fx = Fixture::new();
    let good = fx.package("fix-a", |_| {});
    let bad = |name: &str| fx.out.join(name);

    // Sanity: the unmodified repack is accepted, so each refusal below is the edit's.
    repack(&good, &bad("same.tar.gz"), |_| {});
    let policy = TrustPolicy::load(&fx.root.join("etc/ksplice/trust.toml")).expect("policy");
    ops::verify(&bad("same.tar.gz"), &policy).expect("identical repack verifies");

    repack(&good, &bad("unsigned.tar.gz"), |e| {
        e[1].1 = b"ksplice-signatures-v1\n".to_vec();
    });
    repack(&good, &bad("no-sig.tar.gz"), |e| {
        e.remove(1);
    });
    repack(&good, &bad("tampered.tar.gz"), |e| {
        let text = String::from_utf8(e[0].1.clone()).expect("utf8");
        e[0].1 = text.replace("fix fix-a", "fix fix-b").into_bytes();
    });
    repack(&good, &bad("corrupt.tar.gz"), |e| {
        let ko = &mut e[2].1;
        ko[0] ^= 0xff;
    });
    let untrusted = fx.package_signed("fix-u", |_| {}, &SigningKey::from_seed(&[3; 32]));
    let bytes = fs::read(&good).expect("read");
    fs::write(bad("truncated.tar.gz"), &bytes[..bytes.len() / 2]).expect("write");
    let oversized = fs::File::create(bad("oversized.tar.gz")).expect("create");
    oversized.set_len(65 << 20).expect("sparse");
    let release = fx.package("fix-r", |m| m.target.release = "6.1.0-55-amd64".into());
    let version = fx.package("fix-v", |m| {
        m.target.version = "#1 SMP Debian 6.1.191-1".into()
    });
    let build_id = fx.package("fix-b", |m| m.target.build_id = "00".repeat(20));
    let arch = fx.package("fix-arch", |m| m.target.arch = "aarch64".into());

    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let check = |pkg: PathBuf, what: &str, ok: &dyn Fn(&Error) -> bool, code: u8| {
        // The good package goes first: nothing may be applied when a later one is bad.
        let (r, events) = apply(&fx, &sys, &[good.clone(), pkg]);
        let e = r.expect_err(what);
        assert!(ok(&e), "{what}: unexpected error {e:?}");
        assert_eq!(e.exit_code(), code, "{what}");
        assert!(events.is_empty(), "{what}: {events:?}");
        assert!(!fx.state_dir().exists(), "{what}: state directory touched");
        assert!(fx.loads().is_empty(), "{what}: kernel touched");
    };
    use manifests::Error as M;
    let pkg_err = |f: fn(&M) -> bool| move |e: &Error| matches!(e, Error::Package { source, .. } if f(source));
    check(
        bad("unsigned.tar.gz"),
        "unsigned",
        &pkg_err(|s| {
            matches!(
                s,
                M::MalformedSignatureFile {
                    line: 2,
                    reason: "no signatures"
                }
            )
        }),
        exit::VERIFICATION,
    );
    check(
        untrusted,
        "untrusted",
        &pkg_err(|s| matches!(s, M::UntrustedSigner { .. })),
        exit::VERIFICATION,
    );
    check(
        bad("no-sig.tar.gz"),
        "no signature file",
        &pkg_err(|s| matches!(s, M::SignatureNotSecond { .. })),
        exit::VERIFICATION,
    );
    check(
        bad("tampered.tar.gz"),
        "tampered manifest",
        &pkg_err(|s| matches!(s, M::BadSignature { .. })),
        exit::VERIFICATION,
    );
    check(
        bad("corrupt.tar.gz"),
        "corrupt",
        &pkg_err(|s| matches!(s, M::DigestMismatch { .. })),
        exit::VERIFICATION,
    );
    check(
        bad("truncated.tar.gz"),
        "truncated",
        &pkg_err(|s| matches!(s, M::MalformedArchive { .. })),
        exit::VERIFICATION,
    );
    check(
        bad("oversized.tar.gz"),
        "oversized",
        &pkg_err(|s| matches!(s, M::PackageTooLarge { .. })),
        exit::VERIFICATION,
    );
    let field_is = |want: &'static str| move |e: &Error| matches!(e, Error::KernelMismatch { field, .. } if *field == want);
    check(release, "release", &field_is("release"), exit::WRONG_KERNEL);
    check(version, "version", &field_is("version"), exit::WRONG_KERNEL);
    check(
        build_id,
        "build-id",
        &field_is("build-id"),
        exit::WRONG_KERNEL,
    );
    check(arch, "arch", &field_is("arch"), exit::WRONG_KERNEL);
}

#[test]
fn client_wrong_kernel_message_names_field_and_both_values() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-r", |m| m.target.release = "6.1.0-55-amd64".into());
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let (r, _) = apply(&fx, &sys, &[pkg]);
    assert_eq!(
        r.expect_err("wrong kernel").to_string(),
        "refused: fix-r was built for another kernel: release is \"6.1.0-55-amd64\", running kernel has \"6.1.0-56-amd64\""
    );
}

// ---- apply, undo, view, status -----------------------------------------------------------------

#[test]
fn client_apply_view_status_undo() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let (r, events) = apply(&fx, &sys, std::slice::from_ref(&pkg));
    r.expect("apply");
    assert_eq!(events, vec![applied("fix-a")]);
    assert_eq!(fx.loads(), vec!["load ksplice_fix_a"]);
    assert_consistent(&fx);

    let (r, events) = apply(&fx, &sys, &[pkg]);
    r.expect("second apply");
    assert_eq!(events, vec![Event::AlreadyApplied { id: "fix-a".into() }]);
    assert_eq!(fx.loads(), vec!["load ksplice_fix_a"], "applied twice");

    let host = fx.host(&sys);
    let views = ops::view(&host).expect("view").updates;
    assert_eq!(views.len(), 1);
    assert_eq!(
        (
            views[0].id.as_str(),
            views[0].state.as_str(),
            views[0].livepatch.as_str()
        ),
        ("fix-a", "applied", "enabled")
    );
    assert!(views[0].applied_at.is_some());
    let status = ops::status(&host).expect("status");
    assert_eq!(status.exit_code(), exit::OK);
    assert_eq!(
        status.to_string(),
        "effective kernel 6.1.0-56-amd64+fix-a: up to date (1 applied)"
    );

    let (r, events) = undo(&fx, &sys, Targets::Ids(vec!["fix-a".into()]));
    r.expect("undo");
    assert_eq!(events, vec![undone("fix-a")]);
    assert_eq!(
        fx.loads(),
        vec!["load ksplice_fix_a", "unload ksplice_fix_a"]
    );
    assert_consistent(&fx);
    assert!(State::peek(&host).expect("peek").entries().is_empty());
    let (r, _) = undo(&fx, &sys, Targets::Ids(vec!["fix-a".into()]));
    assert!(matches!(r, Err(Error::UnknownUpdate { .. })), "{r:?}");
}

#[test]
fn client_run_pre_refusal_is_reported_and_changes_nothing() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    let sys = FakeKernel::new(&fx.root, Mode::RunPre);
    let (r, events) = apply(&fx, &sys, &[pkg]);
    match r {
        Err(
            ref e @ Error::RunPre {
                ref module,
                ref messages,
            },
        ) => {
            assert_eq!(module, "ksplice_fix_a");
            assert_eq!(
                messages,
                &vec!["ksplice_fix_a: run-pre: mismatch in cmdline_proc_show+0x12: expected 48 found 90".to_owned()]
            );
            assert_eq!(e.exit_code(), exit::KERNEL_REFUSED);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(events.is_empty());
    assert!(fx.loads().is_empty());
    assert_consistent(&fx);
    let host = fx.host(&sys);
    assert!(State::peek(&host).expect("peek").entries().is_empty());
}

#[test]
fn client_stalled_transition_is_signalled_then_finishes() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    let sys = FakeKernel::new(&fx.root, Mode::StallUntilSignal);
    let (r, events) = apply(&fx, &sys, &[pkg]);
    r.expect("signal unblocks the transition");
    assert_eq!(events, vec![applied("fix-a")]);
    assert_eq!(
        read(&fx.root.join("sys/kernel/livepatch/ksplice_fix_a/signal")),
        "1"
    );
    assert_consistent(&fx);
}

#[test]
fn client_stalled_transition_is_reverted_and_blockers_reported() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    let sys = FakeKernel::new(&fx.root, Mode::StallEnable);
    let (r, _) = apply(&fx, &sys, &[pkg]);
    match r {
        Err(ref e @ Error::TransitionTimeout { ref blocking, .. }) => {
            let tids: Vec<(u32, u32, &str)> = blocking
                .iter()
                .map(|t| (t.pid, t.tid, t.comm.as_str()))
                .collect();
            assert_eq!(tids, vec![(4242, 4243, "stuck")]);
            assert_eq!(
                blocking[0].stack,
                vec!["cmdline_proc_show+0x5/0x30", "seq_read_iter+0x11f/0x460"]
            );
            assert_eq!(e.exit_code(), exit::TRANSITION_TIMEOUT);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        fx.loads(),
        vec!["load ksplice_fix_a", "unload ksplice_fix_a"]
    );
    assert_consistent(&fx);
}

#[test]
fn client_stalled_undo_keeps_the_update_applied() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    apply(&fx, &FakeKernel::new(&fx.root, Mode::Normal), &[pkg])
        .0
        .expect("apply");
    let sys = FakeKernel::new(&fx.root, Mode::StallDisable);
    let (r, _) = undo(&fx, &sys, Targets::All);
    assert!(
        matches!(
            r,
            Err(Error::TransitionTimeout {
                outcome: "the update stays applied",
                ..
            })
        ),
        "{r:?}"
    );
    assert_consistent(&fx);
    let host = fx.host(&sys);
    assert_eq!(
        State::peek(&host).expect("peek").entries()[0].phase,
        Phase::Applied
    );
}

#[test]
fn client_builds_on_orders_apply_and_undo() {
    let fx = Fixture::new();
    let base = fx.package("base", |_| {});
    let top = fx.package("top", |m| m.builds_on = vec!["base".into()]);
    let sys = FakeKernel::new(&fx.root, Mode::Normal);

    let (r, _) = apply(&fx, &sys, std::slice::from_ref(&top));
    assert!(
        matches!(r, Err(Error::MissingBase { ref missing, .. }) if missing == "base"),
        "{r:?}"
    );
    assert!(fx.loads().is_empty());

    let (r, events) = apply(&fx, &sys, &[base, top]);
    r.expect("apply in order");
    assert_eq!(events, vec![applied("base"), applied("top")]);

    let (r, _) = undo(&fx, &sys, Targets::Ids(vec!["base".into()]));
    match r {
        Err(ref e @ Error::UndoBlocked { ref by, .. }) => {
            assert_eq!(by, "top");
            assert_eq!(e.exit_code(), exit::DEPENDENCY);
        }
        other => panic!("unexpected {other:?}"),
    }
    let (r, events) = undo(&fx, &sys, Targets::All);
    r.expect("undo all");
    assert_eq!(events, vec![undone("top"), undone("base")]);
    assert_consistent(&fx);
}

#[test]
fn client_boot_reapplies_installed_for_this_kernel_only() {
    let fx = Fixture::new();
    let a = fx.package("fix-a", |_| {});
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[a]).0.expect("apply a");

    // Boot another kernel and apply an update built for it.
    fx.reboot();
    let mut other = FakeKernel::new(&fx.root, Mode::Normal);
    other.uname.release = "6.1.0-57-amd64".into();
    let b = fx.package("fix-b", |m| m.target.release = "6.1.0-57-amd64".into());
    apply(&fx, &other, &[b]).0.expect("apply b");

    // Back to the first kernel: a is pending, b is for another kernel.
    fx.reboot();
    let host = fx.host(&sys);
    let status = ops::status(&host).expect("status");
    assert_eq!(status.exit_code(), exit::PENDING);
    assert_eq!(
        status.to_string(),
        "effective kernel 6.1.0-56-amd64: 1 installed update(s) not applied: fix-a"
    );
    let mut events = Vec::new();
    ops::apply_installed(&host, &mut |e| events.push(e)).expect("boot apply");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], applied("fix-a"));
    assert!(
        matches!(&events[1], Event::Skipped { id, reason } if id == "fix-b" && reason.contains("release is \"6.1.0-57-amd64\"")),
        "{events:?}"
    );
    assert_eq!(ops::status(&host).expect("status").exit_code(), exit::OK);
    assert_consistent(&fx);
}

#[test]
fn client_boot_respects_ksplice_off() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[fx.package("fix-a", |_| {})])
        .0
        .expect("apply");
    fx.reboot();
    fs::write(
        fx.root.join("proc/cmdline"),
        "root=/dev/vda ksplice=off quiet\n",
    )
    .expect("cmdline");
    let host = fx.host(&sys);
    let mut events = Vec::new();
    ops::apply_installed(&host, &mut |e| events.push(e)).expect("boot");
    assert_eq!(events, vec![Event::DisabledByCmdline]);
    assert_eq!(fx.loads(), vec!["load ksplice_fix_a"]);
}

// ---- crash at every step ---------------------------------------------------------------------

/// Run `op` crashing at checkpoint 0, 1, 2, ... until it completes without
/// reaching the crash point; after each crash, the next command must bring
/// journal and kernel back into agreement, and finishing the job must leave
/// `expect_loaded` applied exactly once.
fn crash_everywhere(
    mode: Mode,
    setup: &dyn Fn(&Fixture),
    op: &dyn Fn(&Fixture, &FakeKernel) -> Result<(), Error>,
    finish: &dyn Fn(&Fixture, &FakeKernel),
    expect_steps: &[Step],
) -> usize {
    let mut n = 0;
    loop {
        let fx = Fixture::new();
        setup(&fx);
        let loads_before = fx.loads().len();
        let crashing = FakeKernel::new(&fx.root, mode).crashing_at(n);
        let r = op(&fx, &crashing);
        if !is_interrupted(&r) {
            // Ran to the end: every checkpoint has had its crash.
            let steps = crashing.steps.borrow().clone();
            for s in expect_steps {
                assert!(steps.contains(s), "step {s} never reached: {steps:?}");
            }
            return n;
        }
        // The next command (status here) resolves the interruption.
        let sys = FakeKernel::new(&fx.root, mode);
        let host = fx.host(&sys);
        match ops::status(&host) {
            Ok(_) | Err(Error::TransitionTimeout { .. }) => {}
            Err(e) => panic!("crash at {n}: recovery failed: {e:?}"),
        }
        assert_consistent(&fx);
        finish(&fx, &sys);
        assert_consistent(&fx);
        let loads = &fx.loads()[loads_before..];
        let net = loads.iter().filter(|l| l.starts_with("load ")).count() as i64
            - loads.iter().filter(|l| l.starts_with("unload ")).count() as i64;
        let applied_now = fx.root.join("sys/kernel/livepatch/ksplice_fix_a").exists() as i64;
        let applied_before = (loads_before > 0) as i64;
        assert_eq!(
            applied_before + net,
            applied_now,
            "crash at {n}: kernel log {loads:?}"
        );
        n += 1;
    }
}

#[test]
fn client_apply_recovers_from_a_crash_at_every_step() {
    let setup = |_: &Fixture| {};
    let op = |fx: &Fixture, sys: &FakeKernel| apply(fx, sys, &[fx.package("fix-a", |_| {})]).0;
    let finish = |fx: &Fixture, sys: &FakeKernel| {
        let (r, events) = apply(fx, sys, &[fx.package("fix-a", |_| {})]);
        r.expect("apply after recovery");
        assert_eq!(events.len(), 1);
        assert!(matches!(
            events[0],
            Event::Applied { .. } | Event::AlreadyApplied { .. }
        ));
        assert!(fx.root.join("sys/kernel/livepatch/ksplice_fix_a").exists());
    };
    let steps = [
        Step::Journaled("installing"),
        Step::StateFile("package installed"),
        Step::Journaled("installed"),
        Step::Journaled("loading"),
        Step::Loaded,
        Step::Journaled("transitioning"),
        Step::Journaled("applied"),
    ];
    let n = crash_everywhere(Mode::Normal, &setup, &op, &finish, &steps);
    assert_eq!(n, steps.len(), "checkpoints of a clean apply");
}

#[test]
fn client_failed_apply_recovers_from_a_crash_at_every_step() {
    let setup = |_: &Fixture| {};
    let op = |fx: &Fixture, sys: &FakeKernel| apply(fx, sys, &[fx.package("fix-a", |_| {})]).0;
    let finish = |fx: &Fixture, sys: &FakeKernel| {
        let (r, _) = apply(fx, sys, &[fx.package("fix-a", |_| {})]);
        assert!(matches!(r, Err(Error::TransitionTimeout { .. })), "{r:?}");
        assert!(!fx.root.join("sys/module/ksplice_fix_a").exists());
    };
    let steps = [
        Step::Journaled("reverting"),
        Step::EnabledWritten,
        Step::Unloaded,
        Step::Journaled("installed"),
        Step::StateFile("package removed"),
        Step::Journaled("entry removed"),
    ];
    crash_everywhere(Mode::StallEnable, &setup, &op, &finish, &steps);
}

#[test]
fn client_undo_recovers_from_a_crash_at_every_step() {
    let setup = |fx: &Fixture| {
        let sys = FakeKernel::new(&fx.root, Mode::Normal);
        apply(fx, &sys, &[fx.package("fix-a", |_| {})])
            .0
            .expect("setup apply");
    };
    let op = |fx: &Fixture, sys: &FakeKernel| undo(fx, sys, Targets::Ids(vec!["fix-a".into()])).0;
    let finish = |fx: &Fixture, sys: &FakeKernel| {
        let host = fx.host(sys);
        if State::peek(&host).expect("peek").find("fix-a").is_some() {
            undo(fx, sys, Targets::Ids(vec!["fix-a".into()]))
                .0
                .expect("undo after recovery");
        }
        assert!(State::peek(&host).expect("peek").entries().is_empty());
        assert!(!fx.root.join("sys/module/ksplice_fix_a").exists());
    };
    let steps = [
        Step::Journaled("disabling"),
        Step::EnabledWritten,
        Step::Journaled("unloading"),
        Step::Unloaded,
        Step::Journaled("removing"),
        Step::StateFile("package removed"),
        Step::Journaled("entry removed"),
    ];
    let n = crash_everywhere(Mode::Normal, &setup, &op, &finish, &steps);
    assert_eq!(n, steps.len(), "checkpoints of a clean undo");
}

// ---- profile ---------------------------------------------------------------------------------

#[test]
fn client_profile_writes_the_builder_layout() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let host = fx.host(&sys);
    fs::write(
        fx.root.join("proc/kallsyms"),
        "ffffffff81000000 T _stext\nffffffff81234560 t cmdline_proc_show\n",
    )
    .expect("kallsyms");
    let cfg = "CONFIG_LIVEPATCH=y\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(cfg.as_bytes()).expect("gz");
    fs::write(fx.root.join("proc/config.gz"), gz.finish().expect("gz")).expect("config.gz");
    let headers = fx.root.join(format!("usr/src/linux-headers-{RELEASE}"));
    fs::create_dir_all(&headers).expect("headers");
    fs::write(
        headers.join("Module.symvers"),
        "0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n",
    )
    .expect("symvers");

    let dir = fx.out.join("profile");
    let files = client::profile::profile(&host, &dir).expect("profile");
    assert_eq!(
        files,
        vec![
            "System.map",
            "config",
            "build-id",
            "release",
            "version",
            "arch",
            "Module.symvers"
        ]
    );
    assert_eq!(read(&dir.join("config")), cfg.trim());
    assert_eq!(read(&dir.join("build-id")), hex::encode(BUILD_ID));
    assert_eq!(read(&dir.join("release")), RELEASE);
    assert_eq!(read(&dir.join("version")), VERSION);
    assert_eq!(read(&dir.join("arch")), "x86_64");
    assert!(read(&dir.join("System.map")).contains("t cmdline_proc_show"));
    // Issue 9 item 3: the System.map reveals the KASLR offset.
    assert_eq!(mode_of(&dir.join("System.map")), 0o600);

    // /boot/config-<release> wins over /proc/config.gz.
    fs::create_dir_all(fx.root.join("boot")).expect("boot");
    fs::write(
        fx.root.join(format!("boot/config-{RELEASE}")),
        "CONFIG_X=y\n",
    )
    .expect("cfg");
    client::profile::profile(&host, &dir).expect("profile");
    assert_eq!(read(&dir.join("config")), "CONFIG_X=y");

    // Without CAP_SYSLOG kallsyms shows zeros: refuse rather than mislead the builder.
    fs::write(
        fx.root.join("proc/kallsyms"),
        "0000000000000000 T _stext\n0000000000000000 t cmdline_proc_show\n",
    )
    .expect("kallsyms");
    assert!(matches!(
        client::profile::profile(&host, &dir),
        Err(Error::KallsymsHidden { .. })
    ));
}

#[test]
fn client_verify_summary_names_the_trusted_signers() {
    let fx = Fixture::new();
    let other = SigningKey::from_seed(&[9; 32]);
    let mut m = Fixture::manifest("fix-a");
    m.builds_on = vec!["base".into()];
    let ko = fx.out.join("a.ko");
    fs::write(&ko, "fake-module:ksplice_fix_a\n").expect("ko");
    let pkg = manifests::write_package(
        &fx.out,
        &m,
        &[&fx.key, &other],
        &[(m.module.file.clone(), ko)],
    )
    .expect("package");
    // Only the fixture key is trusted: the other signature is ignored, not listed.
    let policy = TrustPolicy::load(&fx.root.join("etc/ksplice/trust.toml")).expect("policy");
    let summary = ops::summarize(&pkg, &policy).expect("verify");
    assert_eq!(
        summary.signers,
        vec![fx.key.public().key_id().as_str().to_owned()]
    );
    let text = summary.to_string();
    for line in [
        "verified fix-a (",
        "  description: fix fix-a\n",
        "  cves: CVE-2026-0001\n",
        "  module: ksplice_fix_a (ksplice_fix_a.ko)\n",
        "  builds on: base\n",
        "  vmlinux: cmdline_proc_show (replaced)\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let both = TrustPolicy::new(vec![fx.key.public(), other.public()], 2).expect("policy");
    let summary = ops::summarize(&pkg, &both).expect("verify with threshold 2");
    assert_eq!(summary.signers.len(), 2);
}

#[test]
fn client_swapped_installed_package_is_refused_at_boot() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[fx.package("fix-a", |_| {})])
        .0
        .expect("apply");
    fx.reboot();
    // Another validly signed build under the same id replaces the installed copy.
    let other = fx.package("fix-a", |m| {
        m.description = "something else".into();
        m.target.release = "6.1.0-57-amd64".into();
    });
    let installed = fx.state_dir().join("packages/ksplice-fix-a.tar.gz");
    fs::copy(&other, &installed).expect("swap");
    let host = fx.host(&sys);
    let mut events = Vec::new();
    let r = ops::apply_installed(&host, &mut |e| events.push(e));
    match r {
        Err(ref e @ Error::InstalledMismatch { ref id, .. }) => {
            assert_eq!(id, "fix-a");
            assert_eq!(e.exit_code(), exit::VERIFICATION);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        fx.loads(),
        vec!["load ksplice_fix_a"],
        "the swapped copy reached the kernel"
    );
}

// ---- the kernel frees a disabled patch (issue 9, item 1) -------------------------------------

/// Apply fix-a with a kernel that frees patches instantly, for the undo tests.
fn applied_fixture() -> Fixture {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    apply(&fx, &FakeKernel::new(&fx.root, Mode::Normal), &[pkg])
        .0
        .expect("apply");
    fx
}

fn assert_undone(fx: &Fixture, r: Result<(), Error>, events: Vec<Event>, what: &str) {
    r.unwrap_or_else(|e| panic!("{what}: {e} (exit {})", e.exit_code()));
    assert_eq!(events, vec![undone("fix-a")], "{what}");
    assert_eq!(
        fx.loads(),
        vec!["load ksplice_fix_a", "unload ksplice_fix_a"],
        "{what}"
    );
    assert!(!fx.root.join("sys/kernel/livepatch/ksplice_fix_a").exists());
    assert_consistent(fx);
}

/// Pins issue 9 item 1: CI's `ksplice undo` failed with `.../enabled: No such
/// device (os error 19)`, exit 7, after the kernel logged 'unpatching
/// complete': the freed patch's directory answers ENODEV, then ENOENT.
#[test]
fn client_undo_succeeds_when_the_kernel_frees_the_patch() {
    for window in [0, 1, 3] {
        let fx = applied_fixture();
        let mut sys = FakeKernel::new(&fx.root, Mode::Normal);
        sys.enodev_window = window;
        let (r, events) = undo(&fx, &sys, Targets::Ids(vec!["fix-a".into()]));
        assert_undone(&fx, r, events, &format!("ENODEV window {window}"));
    }
}

/// Pins issue 9 item 1: the reverse transition completes between the read of
/// `enabled` and the read of `transition`.
#[test]
fn client_patch_freed_between_two_reads_is_absent() {
    for window in [0, 1] {
        let fx = applied_fixture();
        let mut sys = FakeKernel::new(&fx.root, Mode::Normal);
        sys.enodev_window = window;
        sys.finish_after_read.set(Some("enabled"));
        let (r, events) = undo(&fx, &sys, Targets::Ids(vec!["fix-a".into()]));
        assert_undone(&fx, r, events, &format!("ENODEV window {window}"));
        assert_eq!(sys.finish_after_read.get(), None, "the race was not hit");
    }
}

/// Pins issue 9 item 1: the patch is disabled and freed (by another actor)
/// after undo read it enabled and before its write to `enabled`.
#[test]
fn client_patch_freed_before_the_disable_write_is_undone() {
    for window in [0, 1] {
        let fx = applied_fixture();
        let mut sys = FakeKernel::new(&fx.root, Mode::Normal);
        sys.enodev_window = window;
        sys.vanish_before_write.set(Some(0));
        let (r, events) = undo(&fx, &sys, Targets::Ids(vec!["fix-a".into()]));
        assert_undone(&fx, r, events, &format!("ENODEV window {window}"));
        assert!(
            !sys.steps.borrow().contains(&Step::EnabledWritten),
            "nothing was written"
        );
    }
}

/// Pins issue 9 item 1: a stalled undo gives up and writes `enabled` = 1 just
/// as the reverse transition completes and the patch is freed: the undo
/// succeeded, it must not be reported as a state error nor left applied.
#[test]
fn client_stalled_undo_completing_at_the_last_moment_is_undone() {
    let fx = applied_fixture();
    let sys = FakeKernel::new(&fx.root, Mode::StallDisable);
    sys.vanish_before_write.set(Some(1));
    let (r, events) = undo(&fx, &sys, Targets::Ids(vec!["fix-a".into()]));
    assert_undone(&fx, r, events, "stall then completion");
}

/// Pins issue 9 item 1: recovery (run by status) of an undo interrupted right
/// after `enabled` was written, while the kernel frees the patch.
#[test]
fn client_recovery_of_an_undo_sees_the_freed_patch_as_done() {
    let fx = applied_fixture();
    let crashing = FakeKernel::new(&fx.root, Mode::Normal).crashing_at(1);
    let (r, _) = undo(&fx, &crashing, Targets::Ids(vec!["fix-a".into()]));
    assert!(is_interrupted(&r), "{r:?}");
    assert_eq!(crashing.steps.borrow().last(), Some(&Step::EnabledWritten));
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    sys.sleep(Duration::ZERO); // the transition completes; the patch is freed
    let host = fx.host(&sys);
    let status = ops::status(&host).expect("status recovers");
    assert_eq!(status.exit_code(), exit::OK);
    assert!(State::peek(&host).expect("peek").entries().is_empty());
    assert_eq!(
        fx.loads(),
        vec!["load ksplice_fix_a", "unload ksplice_fix_a"]
    );
    assert_consistent(&fx);
}

// ---- file modes and ownership (issue 9, items 3 and 4) ---------------------------------------

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn write_profile_inputs(fx: &Fixture) {
    fs::write(fx.root.join("proc/kallsyms"), "ffffffff81000000 T _stext\n").expect("kallsyms");
    fs::create_dir_all(fx.root.join("boot")).expect("boot");
    fs::write(
        fx.root.join(format!("boot/config-{RELEASE}")),
        "CONFIG_X=y\n",
    )
    .expect("cfg");
}

/// Pins issue 9 item 3: `ksplice profile DIR` (as root) wrote through the
/// fixed temp name `DIR/.System.map.tmp`: a user owning DIR planted a symlink
/// there and had a root file overwritten.
#[test]
fn client_profile_does_not_write_through_planted_symlinks() {
    let fx = Fixture::new();
    write_profile_inputs(&fx);
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let host = fx.host(&sys);
    let dir = fx.out.join("profile");
    fs::create_dir_all(&dir).expect("dir");
    let victim = fx.out.join("shadow");
    fs::write(&victim, "root:$6$secret\n").expect("victim");
    for name in [".System.map.tmp", ".config.tmp", ".release.tmp", "arch"] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).expect("plant");
    }
    client::profile::profile(&host, &dir).expect("profile");
    assert_eq!(read(&victim), "root:$6$secret");
    assert_eq!(read(&dir.join("arch")), "x86_64");
    assert_eq!(mode_of(&dir.join("System.map")), 0o600);
    assert_eq!(mode_of(&dir.join("config")), 0o644);
}

/// What a run of apply under umask 0 left: every mode in the state directory.
fn state_modes(fx: &Fixture) -> Vec<(String, u32)> {
    let sd = fx.state_dir();
    let mut out = vec![(".".to_owned(), mode_of(&sd))];
    for rel in [
        "packages",
        "work",
        "journal.json",
        "lock",
        "packages/ksplice-fix-a.tar.gz",
    ] {
        out.push((rel.to_owned(), mode_of(&sd.join(rel))));
    }
    out
}

/// Pins issue 9 item 4: the state directory and everything in it got the
/// umask's modes (0777/0666 under umask 0). The umask is per process, so the
/// apply runs in a child process of this test binary.
#[test]
fn client_state_modes_are_private_under_umask_zero() {
    const CHILD: &str = "KSPLICE_TEST_UMASK_ROOT";
    if let Some(dir) = std::env::var_os(CHILD) {
        // The child: only this test runs in this process.
        let _ = rustix::process::umask(rustix::fs::Mode::empty());
        let fx = Fixture::at(PathBuf::from(dir));
        let pkg = fx.package("fix-a", |_| {});
        apply(&fx, &FakeKernel::new(&fx.root, Mode::Normal), &[pkg])
            .0
            .expect("apply under umask 0");
        return;
    }
    let fx = Fixture::new();
    let child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "client::client_state_modes_are_private_under_umask_zero",
            "--test-threads=1",
        ])
        .env(CHILD, fx.base())
        .output()
        .expect("run child");
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && out.contains("1 passed"),
        "child test failed: {out}{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(
        state_modes(&fx),
        vec![
            (".".to_owned(), 0o700),
            ("packages".to_owned(), 0o700),
            ("work".to_owned(), 0o700),
            ("journal.json".to_owned(), 0o600),
            ("lock".to_owned(), 0o600),
            ("packages/ksplice-fix-a.tar.gz".to_owned(), 0o600),
        ]
    );
}

/// Pins issue 9 item 4: a pre-existing group/world-writable state directory
/// (or trust policy directory) was used as is; now it is refused, exit 7,
/// before anything changes.
#[test]
fn client_world_writable_state_or_policy_dir_is_refused() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    fs::create_dir_all(fx.state_dir()).expect("state dir");
    for mode in [0o777, 0o770, 0o702] {
        set_mode(&fx.state_dir(), mode);
        let (r, _) = apply(&fx, &sys, std::slice::from_ref(&pkg));
        match r {
            Err(ref e @ Error::UnsafePermissions { ref path, .. }) => {
                assert_eq!(path, &fx.state_dir());
                assert_eq!(e.exit_code(), exit::STATE);
            }
            other => panic!("mode {mode:o}: unexpected {other:?}"),
        }
        let host = fx.host(&sys);
        assert!(
            matches!(ops::status(&host), Err(Error::UnsafePermissions { .. })),
            "status with mode {mode:o}"
        );
        assert!(fx.loads().is_empty());
        assert!(!fx.state_dir().join("journal.json").exists());
    }
    // A state directory an older client left 0755 is narrowed to 0700.
    set_mode(&fx.state_dir(), 0o755);
    let host = fx.host(&sys);
    ops::status(&host).expect("status");
    assert_eq!(mode_of(&fx.state_dir()), 0o700);
    set_mode(&fx.root.join("etc/ksplice"), 0o777);
    let (r, _) = apply(&fx, &sys, std::slice::from_ref(&pkg));
    assert!(
        matches!(r, Err(Error::UnsafePermissions { ref path, .. }) if path == &fx.root.join("etc/ksplice")),
        "{r:?}"
    );
    set_mode(&fx.root.join("etc/ksplice"), 0o755);
    set_mode(&fx.root.join("etc/ksplice/trust.toml"), 0o666);
    let (r, _) = apply(&fx, &sys, std::slice::from_ref(&pkg));
    assert!(matches!(r, Err(Error::UnsafePermissions { .. })), "{r:?}");
    set_mode(&fx.root.join("etc/ksplice/trust.toml"), 0o644);
    apply(&fx, &sys, &[pkg])
        .0
        .expect("apply once the modes are safe");
}

// ---- the journal (issue 9, item 5) -----------------------------------------------------------

pub(crate) fn journal_path(fx: &Fixture) -> PathBuf {
    fx.state_dir().join("journal.json")
}

pub(crate) fn journal_json(fx: &Fixture) -> serde_json::Value {
    serde_json::from_slice(&fs::read(journal_path(fx)).expect("journal")).expect("json")
}

/// A manifest of about `bytes` bytes of TOML: many small replaced functions,
/// the shape that made format 1's pretty-printed copies explode.
fn large_manifest(m: &mut Manifest, bytes: usize) {
    let func = |i: usize| FunctionChange {
        name: format!("f{i}"),
        sympos: 0,
        kind: ChangeKind::Replaced,
        pre_sha256: Some(format!("{:064x}", i)),
        old_size: 16,
        new_size: 16,
    };
    let base = m.to_toml().expect("toml").len();
    m.objects[0].functions = (0..1000).map(func).collect();
    let per = (m.to_toml().expect("toml").len() - base) / 1000 + 1;
    m.objects[0].functions = (0..(bytes - base) / per).map(func).collect();
}

/// Pins issue 9 item 5: four valid large manifests grew the format-1 journal
/// (pretty-printed whole manifests) past the 16 MiB read cap and wedged
/// every command with exit 7. Format 2 keeps a summary, a small fraction of
/// format 1 (measured with manifests of 250 kB to keep the test quick; the
/// ratio is what matters: 1 MiB manifests scale linearly).
#[test]
fn client_large_manifests_are_summarized_in_the_journal() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let ids = ["big-a", "big-b", "big-c", "big-d"];
    let pkgs: Vec<PathBuf> = ids
        .iter()
        .map(|id| fx.package(id, |m| large_manifest(m, 250_000)))
        .collect();
    let (r, events) = apply(&fx, &sys, &pkgs);
    r.expect("apply four large updates");
    assert_eq!(events.len(), 4);
    let size = fs::metadata(journal_path(&fx)).expect("journal").len();
    // What format 1 would have written for the same four manifests.
    let policy = TrustPolicy::load(&fx.root.join("etc/ksplice/trust.toml")).expect("policy");
    let manifests: Vec<serde_json::Value> = pkgs
        .iter()
        .map(|p| {
            let m = ops::verify(p, &policy).expect("verify");
            serde_json::json!({ "manifest": &*m })
        })
        .collect();
    let v1 = serde_json::to_vec_pretty(&serde_json::json!({ "updates": manifests }))
        .expect("json")
        .len() as u64;
    eprintln!("journal of four 250 kB manifests: format 2 {size} bytes, format 1 {v1} bytes");
    assert!(v1 > 8 * size, "format 1 {v1} vs format 2 {size}");
    let host = fx.host(&sys);
    let status = ops::status(&host).expect("status after four large installs");
    assert_eq!(status.applied_ids(), ids);
    assert_eq!(journal_json(&fx)["format"], 3);
    assert_consistent(&fx);
}

/// Pins issue 9 item 5: the cap is enforced before writing. An install that
/// would outgrow it is refused with nothing changed, and the updates already
/// there can still be undone.
#[test]
fn client_install_that_would_outgrow_the_journal_is_refused() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let mut host = fx.host(&sys);
    host.max_journal = 2000;
    let mut events = Vec::new();
    let a = fx.package("fix-a", |_| {});
    ops::apply(&host, &[a], &mut |e| events.push(e)).expect("first fits");
    let before = fs::read(journal_path(&fx)).expect("journal");
    let b = fx.package("fix-b", |m| m.description = "x".repeat(1200));
    let r = ops::apply(&host, &[b], &mut |e| events.push(e));
    match r {
        Err(ref e @ Error::JournalFull { ref id, max, .. }) => {
            assert_eq!((id.as_str(), max), ("fix-b", 2000));
            assert_eq!(e.exit_code(), exit::STATE);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fs::read(journal_path(&fx)).expect("journal"), before);
    assert!(!fx
        .state_dir()
        .join("packages/ksplice-fix-b.tar.gz")
        .exists());
    assert_eq!(fx.loads(), vec!["load ksplice_fix_a"]);
    assert_consistent(&fx);
    ops::undo(&host, &Targets::All, &mut |e| events.push(e)).expect("undo");
    assert_eq!(events, vec![applied("fix-a"), undone("fix-a")]);
}

/// Pins issue 9 item 5: ids and module names read back from the journal
/// became paths and delete_module arguments unchecked during recovery (which
/// status and view run). Every name is checked like a package's, and
/// duplicates are refused.
#[test]
fn client_journal_names_are_validated_before_use() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let a = fx.package("fix-a", |_| {});
    let b = fx.package("fix-b", |_| {});
    apply(&fx, &sys, &[a, b]).0.expect("apply");
    let good = journal_json(&fx);
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 7] = [
        ("id with ..", |j| {
            j["updates"][0]["id"] = "../../etc/x".into()
        }),
        ("id too long", |j| {
            j["updates"][0]["id"] = "a".repeat(49).into()
        }),
        ("module with /", |j| {
            j["updates"][0]["module"] = "../../../module/x".into()
        }),
        ("module too long", |j| {
            j["updates"][0]["module"] = "m".repeat(56).into()
        }),
        ("builds_on with /", |j| {
            j["updates"][1]["manifest"]["builds_on"] = serde_json::json!(["a/b"])
        }),
        ("duplicate id", |j| j["updates"][1]["id"] = "fix-a".into()),
        ("duplicate module", |j| {
            j["updates"][1]["module"] = "ksplice_fix_a".into()
        }),
    ];
    for (what, edit) in cases {
        let mut j = good.clone();
        edit(&mut j);
        j["updates"][0]["phase"] = "unloading".into();
        fs::write(journal_path(&fx), serde_json::to_vec(&j).expect("json")).expect("write");
        let host = fx.host(&sys);
        match ops::status(&host) {
            Err(ref e @ Error::Journal { .. }) => assert_eq!(e.exit_code(), exit::STATE, "{what}"),
            other => panic!("{what}: unexpected {other:?}"),
        }
        assert_eq!(
            fx.loads(),
            vec!["load ksplice_fix_a", "load ksplice_fix_b"],
            "{what}: recovery acted on the journal"
        );
    }
    fs::write(journal_path(&fx), serde_json::to_vec(&good).expect("json")).expect("restore");
    let host = fx.host(&sys);
    assert_eq!(
        ops::status(&host).expect("status").applied_ids(),
        ["fix-a", "fix-b"]
    );
}

/// Pins issue 9 item 5: a format-1 journal (whole manifests) is still read,
/// its installed packages still recognised at boot, and it is rewritten as
/// the current format (3) by the next change.
#[test]
fn client_format_1_journal_is_read_and_upgraded() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let pkg = fx.package("fix-a", |_| {});
    apply(&fx, &sys, std::slice::from_ref(&pkg))
        .0
        .expect("apply");
    let policy = TrustPolicy::load(&fx.root.join("etc/ksplice/trust.toml")).expect("policy");
    let m = ops::verify(&pkg, &policy).expect("verify");
    let mut j = journal_json(&fx);
    j["format"] = 1.into();
    let e = &mut j["updates"][0];
    e["manifest"] = serde_json::to_value(&*m).expect("manifest");
    fs::write(
        journal_path(&fx),
        serde_json::to_vec_pretty(&j).expect("json"),
    )
    .expect("v1");

    let host = fx.host(&sys);
    assert_eq!(ops::status(&host).expect("status").applied_ids(), ["fix-a"]);
    fx.reboot();
    let mut events = Vec::new();
    ops::apply_installed(&host, &mut |e| events.push(e)).expect("boot");
    assert_eq!(events, vec![applied("fix-a")]);
    assert_eq!(journal_json(&fx)["format"], 3);
    assert_consistent(&fx);
}

// ---- reconciliation with the kernel (issue 9, item 2) ----------------------------------------

/// Pins issue 9 item 2: with the journal gone while ksplice patches were live
/// (and their packages still in packages/), status said "up to date (0
/// applied)", exit 0. It now names what the journal does not know, exit 10.
#[test]
fn client_missing_journal_with_live_patches_is_not_up_to_date() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    let a = fx.package("fix-a", |_| {});
    let b = fx.package("fix-b", |_| {});
    apply(&fx, &sys, &[a, b]).0.expect("apply");
    // Another vendor's livepatch is not ours to report.
    let other = fx.root.join("sys/kernel/livepatch/kpatch_other");
    fs::create_dir_all(&other).expect("other");
    fs::write(other.join("enabled"), "1\n").expect("enabled");
    fs::write(other.join("transition"), "0\n").expect("transition");
    fs::remove_file(journal_path(&fx)).expect("lose the journal");

    let host = fx.host(&sys);
    let status = ops::status(&host).expect("status");
    assert_eq!(
        status.not_in_journal,
        ops::NotInJournal {
            livepatches: vec!["ksplice_fix_a".into(), "ksplice_fix_b".into()],
            packages: vec!["ksplice-fix-a.tar.gz".into(), "ksplice-fix-b.tar.gz".into()],
        }
    );
    assert_eq!(status.exit_code(), exit::NOT_IN_JOURNAL);
    assert_ne!(status.exit_code(), exit::OK);
    assert_eq!(
        status.to_string(),
        "effective kernel 6.1.0-56-amd64: 2 livepatch(es) applied, not in the journal: \
         ksplice_fix_a, ksplice_fix_b; 2 package(s) in the state directory, not in the \
         journal: ksplice-fix-a.tar.gz, ksplice-fix-b.tar.gz"
    );
    let view = ops::view(&host).expect("view");
    assert!(view.updates.is_empty());
    assert_eq!(view.exit_code(), exit::NOT_IN_JOURNAL);
    assert_eq!(
        view.not_in_journal.to_string(),
        "ksplice_fix_a: applied, not in the journal (live ksplice livepatch)\n\
         ksplice_fix_b: applied, not in the journal (live ksplice livepatch)\n\
         ksplice-fix-a.tar.gz: in the state directory, not in the journal\n\
         ksplice-fix-b.tar.gz: in the state directory, not in the journal\n"
    );
    // With the journal intact nothing is reported beyond it.
    let fx2 = Fixture::new();
    let sys2 = FakeKernel::new(&fx2.root, Mode::Normal);
    apply(&fx2, &sys2, &[fx2.package("fix-a", |_| {})])
        .0
        .expect("apply");
    let status = ops::status(&fx2.host(&sys2)).expect("status");
    assert!(status.not_in_journal.is_empty());
    assert_eq!(status.exit_code(), exit::OK);
}

/// Pins issue 9 item 7: strings from manifests (through the journal) are
/// escaped when view and status print them to a terminal.
#[test]
fn client_view_escapes_control_characters() {
    let fx = Fixture::new();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    apply(&fx, &sys, &[fx.package("fix-a", |_| {})])
        .0
        .expect("apply");
    // A journal written by an older client that did not refuse these.
    let mut j = journal_json(&fx);
    j["updates"][0]["manifest"]["description"] = "ok\u{1b}]0;owned\u{7}\nfix-z: applied".into();
    j["updates"][0]["manifest"]["cves"] = serde_json::json!(["CVE-2026-0001\r"]);
    fs::write(journal_path(&fx), serde_json::to_vec(&j).expect("json")).expect("write");
    let host = fx.host(&sys);
    let views = ops::view(&host).expect("view").updates;
    let text = ops::ViewText(&views[0]).to_string();
    assert!(
        text.contains("  description: ok\\u{1b}]0;owned\\u{7}\\nfix-z: applied\n"),
        "{text}"
    );
    assert!(text.contains("  cves: CVE-2026-0001\\r\n"), "{text}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
}

// ---- the binary (issue 9, items 6 and 7) ------------------------------------------------------

/// Pins issue 9 item 7: `ksplice verify a a a | head -1` panicked on the
/// closed pipe (exit 101). Output to a reader that went away is dropped
/// quietly and the command's own exit code stands.
#[test]
fn client_binary_closed_stdout_is_quiet() {
    let ksplice = ksplice_tests::cargo_bin("client", "ksplice");
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    let trust = fx.root.join("etc/ksplice/trust.toml");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(&ksplice)
        .arg("verify")
        .args([&pkg, &pkg, &pkg])
        .arg("--trust")
        .arg(&trust)
        .stdout(writer)
        .output()
        .expect("run ksplice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::OK as i32), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    // The same with an error: its code, its message, no panic.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(&ksplice)
        .args(["verify", "/nonexistent.tar.gz", "--trust"])
        .arg(&trust)
        .stdout(writer)
        .output()
        .expect("run ksplice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(exit::VERIFICATION as i32),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Pins issue 9 item 6: the production binary took a fake root (`--root`,
/// KSPLICE_ROOT) while its system calls were real: a fake `notes` file
/// passed the identity check and finit_module loaded for real. Fake roots
/// are for the library's tests with a simulated kernel only.
#[test]
fn client_binary_refuses_a_fake_root() {
    let ksplice = ksplice_tests::cargo_bin("client", "ksplice");
    let fx = Fixture::new();
    let out = std::process::Command::new(&ksplice)
        .arg("status")
        .env("KSPLICE_ROOT", &fx.root)
        .output()
        .expect("run ksplice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::USAGE as i32), "{stderr}");
    assert!(stderr.contains("KSPLICE_ROOT"), "{stderr}");
    let out = std::process::Command::new(&ksplice)
        .arg("status")
        .arg("--root")
        .arg(&fx.root)
        .output()
        .expect("run ksplice");
    assert_eq!(out.status.code(), Some(exit::USAGE as i32));
    assert!(!fx.state_dir().exists());
}

/// Issue 9 item 1 (audit): a patch disabled behind the client's back is freed
/// by the kernel while its module stays loaded; recovery unloads the module
/// and records the update as installed, not applied.
#[test]
fn client_patch_disabled_behind_our_back_is_unloaded_by_recovery() {
    let fx = applied_fixture();
    let sys = FakeKernel::new(&fx.root, Mode::Normal);
    // An admin's `echo 0 > enabled`, and the transition completing.
    sys.write_attr(
        &fx.root.join("sys/kernel/livepatch/ksplice_fix_a/enabled"),
        "0",
    )
    .expect("disable");
    sys.sleep(Duration::ZERO);
    assert!(fx.root.join("sys/module/ksplice_fix_a").exists());
    let host = fx.host(&sys);
    let status = ops::status(&host).expect("status");
    assert_eq!(status.pending, ["fix-a"]);
    assert_eq!(status.exit_code(), exit::PENDING);
    assert_eq!(
        fx.loads(),
        vec!["load ksplice_fix_a", "unload ksplice_fix_a"]
    );
    assert_consistent(&fx);
}

/// Issue 9 item 1 (audit): a patch disabled and freed during its enabling
/// transition was reported "applied" (exit 0) while nothing was applied.
#[test]
fn client_patch_freed_while_enabling_is_not_reported_applied() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-a", |_| {});
    let sys = FakeKernel::new(&fx.root, Mode::DisabledWhileEnabling);
    let (r, events) = apply(&fx, &sys, &[pkg]);
    match r {
        Err(ref e @ Error::PatchVanished { ref module }) => {
            assert_eq!(module, "ksplice_fix_a");
            assert_eq!(e.exit_code(), exit::KERNEL_REFUSED);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        fx.loads(),
        vec!["load ksplice_fix_a", "unload ksplice_fix_a"]
    );
    assert_consistent(&fx);
    let host = fx.host(&sys);
    assert!(State::peek(&host).expect("peek").entries().is_empty());
}

// The fleet client against these fixtures; a child module, so that it uses
// the simulated kernel and fixture host above.
#[path = "update.rs"]
mod update;
