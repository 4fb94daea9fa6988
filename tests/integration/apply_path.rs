//! The client's apply path against hostile package files (issue 9 findings 1-3): the
//! package is read once from one descriptor, installed from the verified bytes, the module
//! reaches `finit_module` from a re-hashed descriptor, extraction modes are exact whatever
//! the umask, and `ksplice verify` needs no temporary directory.

use ksplice_tests::elf_note;
use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use client::error::Error;
use client::ops;
use client::{Host, Step, Sys, Uname};
use manifests::{Manifest, SigningKey, TrustPolicy};

const RELEASE: &str = "6.1.0-56-amd64";
const VERSION: &str = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)";
const BUILD_ID: [u8; 20] = [7; 20];

/// Set in the environment of a child test process (see [`run_child`]).
const CHILD: &str = "KSPLICE_APPLY_PATH_CHILD";

/// A kernel that records what it was asked to load and what the work directory held
/// at that moment, and finishes every transition at once.
struct Kernel {
    root: PathBuf,
    loaded: RefCell<Vec<Vec<u8>>>,
    /// `(relative path, mode)` of everything under the state's `work/` during the load.
    work: RefCell<Vec<(String, u32)>>,
    /// Run once at the first journal write (before the package is installed).
    on_first_journal: RefCell<Option<Box<dyn FnOnce()>>>,
}

impl Kernel {
    fn new(root: &Path) -> Self {
        Kernel {
            root: root.to_owned(),
            loaded: RefCell::new(Vec::new()),
            work: RefCell::new(Vec::new()),
            on_first_journal: RefCell::new(None),
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32)>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let path = e.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        let rel = path
            .strip_prefix(root)
            .expect("prefix")
            .display()
            .to_string();
        out.push((rel, meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            walk(root, &path, out);
        }
    }
}

impl Sys for Kernel {
    fn uname(&self) -> io::Result<Uname> {
        Ok(Uname {
            release: RELEASE.into(),
            version: VERSION.into(),
            machine: "x86_64".into(),
        })
    }

    fn finit_module(&self, module: &fs::File) -> io::Result<()> {
        let mut bytes = Vec::new();
        (&*module).read_to_end(&mut bytes)?;
        let work = self.root.join("var/lib/ksplice/work");
        walk(&work, &work, &mut self.work.borrow_mut());
        let text = String::from_utf8_lossy(&bytes).into_owned();
        self.loaded.borrow_mut().push(bytes);
        let name = text
            .trim()
            .strip_prefix("fake-module:")
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOEXEC))?
            .to_owned();
        fs::create_dir_all(self.root.join("sys/module").join(&name))?;
        let dir = self.root.join("sys/kernel/livepatch").join(&name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("enabled"), "1\n")?;
        fs::write(dir.join("transition"), "0\n")?;
        Ok(())
    }

    fn delete_module(&self, _name: &str) -> io::Result<()> {
        Ok(())
    }

    fn sleep(&self, _d: Duration) {}

    fn checkpoint(&self, step: Step) -> io::Result<()> {
        if matches!(step, Step::Journaled(_)) {
            if let Some(hook) = self.on_first_journal.borrow_mut().take() {
                hook();
            }
        }
        Ok(())
    }
}

/// A host root with a trust policy for key 7 and the running kernel's identity.
struct Fixture {
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    out: PathBuf,
    key: SigningKey,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut fx = Fixture::at(tmp.path());
        fx._tmp = Some(tmp);
        fx
    }

    /// The fixture under `base` (made by a parent test for a child process).
    fn at(base: &Path) -> Self {
        let root = base.join("root");
        let out = base.join("out");
        let key = SigningKey::from_seed(&[7; 32]);
        if !root.exists() {
            for d in [
                "sys/kernel/livepatch",
                "sys/module",
                "dev",
                "proc",
                "etc/ksplice",
            ] {
                fs::create_dir_all(root.join(d)).expect("mkdir");
            }
            fs::create_dir_all(&out).expect("mkdir");
            let mut notes = elf_note(b"Linux\0", 6, b"6.1.0\0");
            notes.extend(elf_note(b"GNU\0", 3, &BUILD_ID));
            fs::write(root.join("sys/kernel/notes"), notes).expect("notes");
            fs::write(root.join("proc/cmdline"), "ro\n").expect("cmdline");
            fs::write(root.join("dev/kmsg"), "").expect("kmsg");
            let policy = TrustPolicy::new(vec![key.public()], 1).expect("policy");
            fs::write(root.join("etc/ksplice/trust.toml"), policy.to_toml()).expect("trust");
        }
        Fixture {
            _tmp: None,
            root,
            out,
            key,
        }
    }

    fn host<'s>(&self, sys: &'s dyn Sys) -> Host<'s> {
        let mut h = Host::new(&self.root, sys);
        h.timeouts.transition = Duration::from_secs(5);
        h.timeouts.poll = Duration::from_millis(1);
        h
    }

    fn policy(&self) -> TrustPolicy {
        TrustPolicy::new(vec![self.key.public()], 1).expect("policy")
    }

    fn module(id: &str) -> Vec<u8> {
        format!("fake-module:ksplice_{}\n", id.replace('-', "_")).into_bytes()
    }

    /// A signed package for `id` written to `out/<name>`.
    fn package(&self, id: &str, name: &str, edit: impl FnOnce(&mut Manifest)) -> PathBuf {
        let mut m = manifests::manifest::example(id);
        m.target.release = RELEASE.into();
        m.target.version = VERSION.into();
        m.target.build_id = hex::encode(BUILD_ID);
        edit(&mut m);
        let ko = self.out.join(format!("{name}.ko"));
        fs::write(&ko, Fixture::module(id)).expect("ko");
        let pkg = self.out.join(name);
        manifests::write_package(&pkg, &m, &[&self.key], &[(m.module.file.clone(), ko)])
            .expect("package")
    }

    fn installed(&self) -> Vec<String> {
        match fs::read_dir(self.root.join("var/lib/ksplice/packages")) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
            Err(_) => Vec::new(),
        }
    }
}

fn apply(fx: &Fixture, kernel: &Kernel, pkgs: &[PathBuf]) -> Result<(), Error> {
    let host = fx.host(kernel);
    ops::apply(&host, pkgs, &mut |_| {})
}

/// Issue 9 finding 1: the package path was opened three times following symlinks, with
/// no size cap: a symlink flipped to /dev/zero filled the state directory, and a fifo
/// hung apply forever. Each is now refused before the state directory is touched.
#[test]
fn apply_refuses_package_paths_that_are_not_regular_files() {
    let fx = Fixture::new();
    let good = fx.package("fix-a", "ksplice-fix-a.tar.gz", |_| {});
    let link = fx.out.join("link.tar.gz");
    std::os::unix::fs::symlink(&good, &link).expect("symlink");
    let zero = fx.out.join("zero.tar.gz");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    let fifo = fx.out.join("fifo.tar.gz");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    for (pkg, kind) in [
        (link, "a symbolic link"),
        (zero, "a symbolic link"),
        (fifo, "a fifo"),
        (PathBuf::from("/dev/zero"), "a device"),
    ] {
        let kernel = Kernel::new(&fx.root);
        let err = apply(&fx, &kernel, std::slice::from_ref(&pkg)).expect_err("refused");
        assert!(
            matches!(&err, Error::Package { source, .. }
                if matches!(**source, manifests::Error::NotRegularFile { kind: k, .. } if k == kind)),
            "{}: {err}",
            pkg.display()
        );
        assert_eq!(err.exit_code(), client::exit::VERIFICATION);
        assert!(fx.installed().is_empty(), "{:?}", fx.installed());
        assert!(kernel.loaded.borrow().is_empty());
        let err = ops::verify(&pkg, &fx.policy()).expect_err("verify refuses too");
        assert!(matches!(err, Error::Package { .. }), "{err}");
    }
    // The regular file itself is fine.
    let kernel = Kernel::new(&fx.root);
    apply(&fx, &kernel, &[good]).expect("applies");
    assert_eq!(*kernel.loaded.borrow(), vec![Fixture::module("fix-a")]);
}

/// Issue 9 finding 1: verify, hash and copy each re-opened the path, so what was
/// installed was whatever the path held by then. The installed copy is now the verified
/// bytes even when the path is changed between verification and installation.
#[test]
fn apply_installs_the_bytes_it_verified_even_if_the_path_changes() {
    let fx = Fixture::new();
    let pkg = fx.package("fix-b", "ksplice-fix-b.tar.gz", |_| {});
    let original = fs::read(&pkg).expect("read");
    // Another validly signed build of the same id, swapped in at the first journal write.
    let other = fx.package("fix-b", "other.tar.gz", |m| {
        m.description = "other build".into()
    });
    let kernel = Kernel::new(&fx.root);
    let (from, to) = (other.clone(), pkg.clone());
    *kernel.on_first_journal.borrow_mut() = Some(Box::new(move || {
        fs::rename(&from, &to).expect("swap");
    }));
    apply(&fx, &kernel, std::slice::from_ref(&pkg)).expect("applies what it verified");
    assert_ne!(fs::read(&pkg).expect("read"), original, "the swap happened");
    let installed = fx
        .root
        .join("var/lib/ksplice/packages/ksplice-fix-b.tar.gz");
    assert_eq!(fs::read(&installed).expect("installed"), original);
    let mode = fs::metadata(&installed).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        fx.installed(),
        ["ksplice-fix-b.tar.gz"],
        "no temporary file left"
    );
    assert_eq!(*kernel.loaded.borrow(), vec![Fixture::module("fix-b")]);
}

/// Runs the test `name` of this binary in a child process with `envs` (and [`CHILD`]
/// set), and fails with its output unless it ran and passed.
fn run_child(name: &str, envs: &[(&str, OsString)]) {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .envs(envs.iter().map(|(k, v)| (*k, v)))
        .output()
        .expect("run child test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed"),
        "the child test did not run: {text}"
    );
}

/// Issue 9 finding 2: the module was re-opened by path after extraction, and with a
/// permissive umask the extracted tree was open to other users. With umask 000 the
/// files of the extraction are 0600 and its directories 0700, and the kernel is handed
/// the module bytes that were verified.
#[test]
fn extraction_modes_are_exact_whatever_the_umask() {
    let base = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::at(base.path());
    fx.package("fix-c", "ksplice-fix-c.tar.gz", |_| {});
    run_child(
        "apply_path::child_apply_with_umask_000",
        &[("KSPLICE_CHILD_BASE", base.path().into())],
    );
}

/// The child of [`extraction_modes_are_exact_whatever_the_umask`]; does nothing unless
/// run by it (the umask is per process, so it cannot change under other tests).
#[test]
fn child_apply_with_umask_000() {
    let Some(base) =
        std::env::var_os("KSPLICE_CHILD_BASE").filter(|_| std::env::var_os(CHILD).is_some())
    else {
        return;
    };
    rustix::process::umask(rustix::fs::Mode::empty());
    let fx = Fixture::at(Path::new(&base));
    let kernel = Kernel::new(&fx.root);
    apply(&fx, &kernel, &[fx.out.join("ksplice-fix-c.tar.gz")]).expect("applies");
    assert_eq!(*kernel.loaded.borrow(), vec![Fixture::module("fix-c")]);
    let work = kernel.work.borrow();
    assert!(!work.is_empty(), "the extraction was seen during the load");
    for (rel, mode) in work.iter() {
        let want = if rel.ends_with(".ko") { 0o600 } else { 0o700 };
        assert_eq!(*mode, want, "{rel}: {mode:o}");
    }
}

/// Issue 9 finding 3: `ksplice verify` extracted the payload into $TMPDIR, so it failed
/// without a writable temporary directory. It now verifies in memory.
#[test]
fn verify_needs_no_temporary_directory() {
    let base = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::at(base.path());
    fx.package("fix-d", "ksplice-fix-d.tar.gz", |_| {});
    run_child(
        "apply_path::child_verify_without_tmpdir",
        &[
            ("KSPLICE_CHILD_BASE", base.path().into()),
            ("TMPDIR", base.path().join("no/such/dir").into()),
        ],
    );
}

/// The child of [`verify_needs_no_temporary_directory`].
#[test]
fn child_verify_without_tmpdir() {
    let Some(base) =
        std::env::var_os("KSPLICE_CHILD_BASE").filter(|_| std::env::var_os(CHILD).is_some())
    else {
        return;
    };
    let fx = Fixture::at(Path::new(&base));
    let summary = ops::summarize(&fx.out.join("ksplice-fix-d.tar.gz"), &fx.policy())
        .expect("verified without a temporary directory");
    assert_eq!(summary.manifest.id, "fix-d");
    assert_eq!(summary.signers, [fx.key.public().key_id().to_string()]);
}
