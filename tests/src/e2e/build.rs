//! Host-side builds: the livepatch sample module, signed packages, and `ksplice-create` updates.

use super::kgit::{patched_files, KernelRepo, PRE};
use super::profile::Profile;
use super::runner::Harness;
use super::scenario::{Alteration, Build, PackageVariant};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a build hands to the guest.
#[derive(Debug, Clone, Default)]
pub struct Built {
    /// The file the guest gets as `$PKG` (empty: none).
    pub file: PathBuf,
    /// Extra variables for the guest script.
    pub env: Vec<(String, String)>,
    /// The exact refusal text the guest must see (`{PKG}` stands for the guest path of `file`).
    pub expect: Option<String>,
    /// More files for the guest: (variable, file), e.g. ("PKG2", second package).
    pub extra: Vec<(String, PathBuf)>,
    /// A directory the host serves to the guest over HTTP during the boot
    /// (a TUF repository for the fleet scenarios); the guest finds it at `$MIRROR`.
    pub serve: Option<PathBuf>,
}

/// State shared by the builds of one run (keys, trust policy, the sample module).
#[derive(Debug)]
pub struct Context<'a> {
    h: &'a Harness,
    profile: Option<&'a Profile>,
    dir: PathBuf,
    sample: Option<PathBuf>,
    trust: Option<PathBuf>,
    /// (private key path, key id) of the trusted test key and of a key nobody trusts.
    keys: Option<[(PathBuf, String); 2]>,
    /// Packages `ksplice-create` made in this run, by patch: scenarios that share an
    /// update (cmdline-string is in four) build it once.
    created: std::collections::BTreeMap<PathBuf, PathBuf>,
    /// [`Build::Cumulative`] levels already built this run, by (stream, patches).
    streams: std::collections::BTreeMap<(String, Vec<PathBuf>), Built>,
}

impl<'a> Context<'a> {
    pub fn new(h: &'a Harness, profile: Option<&'a Profile>, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            h,
            profile,
            dir: dir.to_path_buf(),
            sample: None,
            trust: None,
            keys: None,
            created: std::collections::BTreeMap::new(),
            streams: std::collections::BTreeMap::new(),
        })
    }

    /// The guest's trust policy, once a build has made one.
    pub fn trust(&self) -> Option<&Path> {
        self.trust.as_deref()
    }

    /// Builds `what` into `out`.
    pub fn build(&mut self, what: &Build, out: &Path) -> Result<Built> {
        match what {
            Build::Nothing => Ok(Built::default()),
            Build::SampleModule => Ok(Built {
                file: self.sample_module()?,
                ..Built::default()
            }),
            Build::SamplePackage(v) => self.sample_package(*v, out),
            Build::Create { patch } => Ok(Built {
                file: self.create_once(patch, out)?,
                ..Built::default()
            }),
            Build::CreateDiffext { patch } => self.create_diffext(patch, out),
            Build::Refused { patch, reason } => {
                let id = stem(patch).to_lowercase();
                let branch = self.repo()?.patch_branch(&stem(patch), patch)?;
                match self.create_git(&id, PRE, &branch, out) {
                    Ok(pkg) => bail!("ksplice-create built {} instead of refusing", pkg.display()),
                    Err(e) => {
                        let text = format!("{e:#}");
                        if !text.to_lowercase().contains(&reason.to_lowercase()) {
                            bail!(
                                "{text}\nrefused, but not for the expected reason ({reason:?}): {}",
                                refusal_line(&text)
                            );
                        }
                        eprintln!("e2e: {id}: refused as expected: {}", last_line(&text));
                        Ok(Built::default())
                    }
                }
            }
            Build::RunPreMismatch { patch, alteration } => {
                self.run_pre_mismatch(patch, *alteration, out)
            }
            Build::Cumulative { stream, patches } => self.cumulative_once(stream, patches),
            Build::Fleet { stream, patches } | Build::SystemdHost { stream, patches } => {
                self.fleet(stream, patches, out)
            }
            Build::Published(p) => published(p),
            Build::CoverageSample(dir) => coverage_sample(dir),
            Build::CreateMany { patches } => {
                let mut files = Vec::new();
                for patch in patches {
                    files.push(self.create_once(patch, &out.join(stem(patch)))?);
                }
                packages(files)
            }
        }
    }

    /// [`Self::cumulative`] once per run: the fleet scenario publishes the same levels.
    fn cumulative_once(&mut self, stream: &str, patches: &[PathBuf]) -> Result<Built> {
        let key = (stream.to_owned(), patches.to_vec());
        if let Some(b) = self.streams.get(&key) {
            return Ok(b.clone());
        }
        let out = self.dir.join(format!("stream-{stream}"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let built = self.cumulative(stream, patches, &out)?;
        self.streams.insert(key, built.clone());
        Ok(built)
    }

    /// [`Build::Fleet`]: the stream's levels 1 and 2 published with `ksplice-build
    /// repo` (a development repository: its keys stay on the host), one copy of
    /// the public tree per state the guest fetches, in publication order:
    /// `a/` level 1; `wave/` level 2 in a wave that starts in 30 days for every
    /// seed; `b/` level 2 for everyone; `replay/` is `a/` again (an old snapshot
    /// replayed); `expired/` a republished timestamp that expires after 1 s.
    fn fleet(&mut self, stream: &str, patches: &[PathBuf], out: &Path) -> Result<Built> {
        let levels = self.cumulative_once(stream, patches)?;
        let (l1, l2) = match levels.extra.first() {
            Some((_, l2)) => (levels.file.clone(), l2.clone()),
            None => bail!("the fleet scenario needs two levels"),
        };
        let repo = out.join("repo");
        let www = out.join("www");
        let _ = std::fs::remove_dir_all(&repo);
        let _ = std::fs::remove_dir_all(&www);
        std::fs::create_dir_all(&www)?;
        let build = self.h.bin("ksplice-build");
        let repo_cmd = |args: &[&std::ffi::OsStr]| -> Result<String> {
            run(Command::new(&build).arg("repo").args(args))
        };
        let snapshot =
            |state: &str| -> Result<()> { copy_tree(&repo.join("public"), &www.join(state)) };
        repo_cmd(&["init".as_ref(), repo.as_os_str()])?;
        repo_cmd(&["add".as_ref(), repo.as_os_str(), l1.as_os_str()])?;
        repo_cmd(&["publish".as_ref(), repo.as_os_str()])?;
        snapshot("a")?;
        repo_cmd(&[
            "add".as_ref(),
            repo.as_os_str(),
            l2.as_os_str(),
            "--waves".as_ref(),
            "2048@+720h".as_ref(),
        ])?;
        repo_cmd(&["publish".as_ref(), repo.as_os_str()])?;
        snapshot("wave")?;
        repo_cmd(&[
            "add".as_ref(),
            repo.as_os_str(),
            l2.as_os_str(),
            "--replace".as_ref(),
        ])?;
        repo_cmd(&["publish".as_ref(), repo.as_os_str()])?;
        snapshot("b")?;
        copy_tree(&www.join("a"), &www.join("replay"))?;
        repo_cmd(&[
            "publish".as_ref(),
            repo.as_os_str(),
            "--expires".as_ref(),
            "timestamp=1s".as_ref(),
        ])?;
        snapshot("expired")?;
        let id = |p: &Path| -> Result<String> {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .context("package name")?;
            Ok(name
                .trim_start_matches("ksplice-")
                .trim_end_matches(".tar.gz")
                .to_owned())
        };
        Ok(Built {
            env: vec![("ID1".into(), id(&l1)?), ("ID2".into(), id(&l2)?)],
            extra: vec![("ROOT_JSON".into(), repo.join("public/metadata/1.root.json"))],
            serve: Some(www),
            ..Built::default()
        })
    }

    /// [`Build::Cumulative`]: level N = `pre` + the first N patches, one branch per
    /// level (`<stream>-level-N`, each on the one below), each built with
    /// `--cumulative --stream --level --replaces <every lower level>`.
    fn cumulative(&mut self, stream: &str, patches: &[PathBuf], out: &Path) -> Result<Built> {
        let repo = self.repo()?;
        let mut base = PRE.to_string();
        let mut files = Vec::new();
        for (i, patch) in patches.iter().enumerate() {
            let level = i + 1;
            base = repo.branch_on(&format!("{stream}-level-{level}"), &base, patch)?;
            let id = format!("{stream}-{level}");
            let level_s = level.to_string();
            let mut extra: Vec<String> = vec![
                "--cumulative".into(),
                "--stream".into(),
                stream.into(),
                "--level".into(),
                level_s,
            ];
            for lower in 1..level {
                extra.push("--replaces".into());
                extra.push(format!("{stream}-{lower}"));
            }
            let dir = out.join(&id);
            std::fs::create_dir_all(&dir)?;
            files.push(self.create_git_with(&id, PRE, &base, &dir, &extra)?);
        }
        packages(files)
    }

    /// [`Build::Create`]'s package for `patch`, built once per run.
    fn create_once(&mut self, patch: &Path, out: &Path) -> Result<PathBuf> {
        if let Some(pkg) = self.created.get(patch) {
            return Ok(pkg.clone());
        }
        std::fs::create_dir_all(out)?;
        let id = stem(patch).to_lowercase();
        let branch = self.repo()?.patch_branch(&stem(patch), patch)?;
        let pkg = self.create_git(&id, PRE, &branch, out)?;
        self.created.insert(patch.to_path_buf(), pkg.clone());
        Ok(pkg)
    }

    /// A package whose pre build does not match the running kernel, refused inside the kernel.
    ///
    /// Built like any update, but from a pre tree in which the patched function was
    /// deliberately altered ([`RUN_PRE_ALTERATION`]: one immediate of cmdline_proc_show)
    /// to the same post tree. ksplice-create would refuse it offline if it had the target
    /// image, so it gets only the target profile (SRC/ksplice/, without the image): the
    /// update module's own run-pre check must refuse it in the kernel. The expected line
    /// (function, offset, both bytes) comes from comparing the run-pre code of this update
    /// with that of the good update built from the real pre tree, which ksplice-create
    /// matched against the image.
    ///
    /// With [`Alteration::CallTarget`] ([`RUN_PRE_CALL_ALTERATION`]: seq_putc becomes
    /// seq_pad, same signature and code size) the bytes match and the relocation value
    /// check must refuse, naming the offset of the call's field from report.json, the
    /// symbol the pre build calls and the one the running kernel calls.
    fn run_pre_mismatch(
        &mut self,
        patch: &Path,
        alteration: Alteration,
        out: &Path,
    ) -> Result<Built> {
        let id = stem(patch).to_lowercase();
        let repo = self.repo()?;
        let branch = repo.patch_branch(&stem(patch), patch)?;
        let good = self.create_git(&id, PRE, &branch, &out.join("good"))?;
        let (_, good_rp) = unpack_run_pre(&good, &out.join("good-unpacked"))?;

        let (text, pre_branch, suffix) = match alteration {
            Alteration::Immediate => (RUN_PRE_ALTERATION, "runpre-altered-pre", "runpre"),
            Alteration::CallTarget => (
                RUN_PRE_CALL_ALTERATION,
                "runpre-call-altered-pre",
                "runpre-call",
            ),
        };
        let alteration_file = out.join("alter-pre.patch");
        std::fs::write(&alteration_file, text)?;
        let altered_pre = repo.branch_on(pre_branch, PRE, &alteration_file)?;
        let p = self.profile()?;
        let target = out.join("target");
        std::fs::create_dir_all(target.join("ksplice"))?;
        for f in [
            "System.map",
            "config",
            "release",
            "version",
            "arch",
            "build-id",
        ] {
            std::fs::copy(p.dir.join(f), target.join("ksplice").join(f))?;
        }
        let [trusted, _] = self.keys()?;
        let new_id = format!("{id}-{suffix}");
        let work = self.h.work.join("create").join(&new_id);
        std::fs::create_dir_all(&work)?;
        let pkg_dir = out.join("altered");
        let result = run(Command::new(self.h.bin("ksplice-create"))
            .arg("--git")
            .arg(&repo.git_dir)
            .args(["--pre", &altered_pre, "--post", &branch, "--id", &new_id])
            .arg("--sign-key")
            .arg(&trusted.0)
            .arg("--output")
            .arg(&pkg_dir)
            .arg("--work")
            .arg(&work)
            .args(self.h.env.symvers_args())
            .arg(&target));
        log_create(out, &result);
        result?;
        let pkg = find_package(&pkg_dir)?;
        let (module, rp) = unpack_run_pre(&pkg, &out.join("altered-unpacked"))?;
        if rp.func != good_rp.func || rp.code.len() != good_rp.code.len() {
            bail!(
                "the altered pre build replaces {} ({} bytes), the good one {} ({} bytes)",
                rp.func,
                rp.code.len(),
                good_rp.func,
                good_rp.code.len()
            );
        }
        if alteration == Alteration::CallTarget {
            if rp.code != good_rp.code {
                bail!("the call-target alteration changed more than a relocation's symbol");
            }
            let off = rp
                .relocs
                .iter()
                .find(|(_, name)| name == "seq_pad")
                .map(|(off, _)| *off)
                .context("report.json: no value-checked relocation against seq_pad")?;
            return Ok(Built {
                file: pkg,
                env: vec![(
                    "DMESG_ALLOW".into(),
                    format!("{module}:.run-pre|livepatch:.(pre-patch.callback|failed.to)"),
                )],
                expect: Some(format!(
                    "refused: {module}: run-pre check failed: \n{module}: run-pre: relocation mismatch in {}+0x{off:x}: expected seq_pad found seq_putc+0x0/",
                    rp.func
                )),
                ..Built::default()
            });
        }
        let off = (0..rp.code.len())
            .find(|&i| rp.code[i] != good_rp.code[i] && !rp.skipped(i))
            .context("the altered pre code matches the running kernel everywhere")?;
        let (expected, running) = (rp.code[off], good_rp.code[off]);
        Ok(Built {
            file: pkg,
            env: vec![(
                "DMESG_ALLOW".into(),
                // Plan values are single words: `.` stands for the spaces.
                format!("{module}:.run-pre|livepatch:.(pre-patch.callback|failed.to)"),
            )],
            expect: Some(format!(
                "refused: {module}: run-pre check failed: \n{module}: run-pre: mismatch in {}+0x{off:x}: expected {expected:02x} found {running:02x}",
                rp.func
            )),
            ..Built::default()
        })
    }

    fn repo(&self) -> Result<KernelRepo> {
        KernelRepo::open_or_create(
            &self.h.env.e2e_cache().join("linux.git"),
            &self.h.env.source,
        )
    }

    fn profile(&self) -> Result<&'a Profile> {
        match self.profile {
            Some(p) if p.complete => Ok(p),
            _ => bail!("no complete target profile (the profile boot failed)"),
        }
    }

    /// `ksplice-create --git` from `pre` to `post`, signed with the test key; returns the package.
    fn create_git(&mut self, id: &str, pre: &str, post: &str, out: &Path) -> Result<PathBuf> {
        self.create_git_with(id, pre, post, out, &[])
    }

    /// [`Self::create_git`] with more `ksplice-create` options.
    fn create_git_with(
        &mut self,
        id: &str,
        pre: &str,
        post: &str,
        out: &Path,
        extra: &[String],
    ) -> Result<PathBuf> {
        let p = self.profile()?;
        let [trusted, _] = self.keys()?;
        let repo = self.repo()?;
        let work = self.h.work.join("create").join(id);
        std::fs::create_dir_all(&work)?;
        let result = run(Command::new(self.h.bin("ksplice-create"))
            .arg("--git")
            .arg(&repo.git_dir)
            .args(["--pre", pre, "--post", post, "--id", id])
            .arg("--config")
            .arg(p.dir.join("config"))
            .arg("--system-map")
            .arg(p.dir.join("System.map"))
            .args(["--release", &p.release, "--kernel-version", &p.version])
            .arg("--target-image")
            .arg(&self.h.env.vmlinuz)
            .arg("--sign-key")
            .arg(&trusted.0)
            .arg("--output")
            .arg(out)
            .arg("--work")
            .arg(&work)
            .args(self.h.env.symvers_args())
            .args(extra));
        log_create(out, &result);
        result?;
        find_package(out)
    }

    /// The seed's flow: `mkdir -p src/ksplice; cp System.map src/ksplice; cp .config src/;
    /// ksplice-create --diffext=new src/` on a copy of the source with FILE.new beside each
    /// file the patch changes.
    fn create_diffext(&mut self, patch: &Path, out: &Path) -> Result<Built> {
        let p = self.profile()?;
        let [trusted, _] = self.keys()?;
        let src = self.h.env.e2e_cache().join("seed-src");
        std::fs::create_dir_all(&src)?;
        // A private copy: ksplice-create may build in SRC, the pristine source stays untouched.
        run(Command::new("rsync")
            .args(["-a", "--delete", "--exclude=/ksplice", "--exclude=/.config"])
            .arg(format!("{}/", self.h.env.source.display()))
            .arg(format!("{}/", src.display())))?;
        let scratch = out.join("patched");
        std::fs::create_dir_all(&scratch)?;
        for file in patched_files(patch)? {
            let from = self.h.env.source.join(&file);
            let to = scratch.join(&file);
            std::fs::create_dir_all(to.parent().context("no parent")?)?;
            if from.exists() {
                std::fs::copy(&from, &to)?;
            }
        }
        run(Command::new("patch")
            .args(["-s", "-p1", "-d"])
            .arg(&scratch)
            .arg("-i")
            .arg(patch))?;
        for file in patched_files(patch)? {
            let new = src.join(format!("{file}.new"));
            std::fs::copy(scratch.join(&file), &new)?;
        }
        std::fs::create_dir_all(src.join("ksplice"))?;
        std::fs::copy(p.dir.join("System.map"), src.join("ksplice/System.map"))?;
        std::fs::copy(p.dir.join("config"), src.join(".config"))?;
        // The rest of the profile (release, version, arch, build-id) says which kernel it is.
        for f in ["release", "version", "arch", "build-id", "config"] {
            if p.dir.join(f).exists() {
                std::fs::copy(p.dir.join(f), src.join("ksplice").join(f))?;
            }
        }
        let result = run(Command::new(self.h.bin("ksplice-create"))
            .arg("--diffext=new")
            .arg("--sign-key")
            .arg(&trusted.0)
            .arg("--output")
            .arg(out)
            .args(self.h.env.symvers_args())
            .arg(format!("{}/", src.display())));
        log_create(out, &result);
        for file in patched_files(patch)? {
            let _ = std::fs::remove_file(src.join(format!("{file}.new")));
        }
        result?;
        Ok(Built {
            file: find_package(out)?,
            ..Built::default()
        })
    }
    /// samples/livepatch/livepatch-sample.c from the kernel source, built against the installed headers.
    fn sample_module(&mut self) -> Result<PathBuf> {
        if let Some(p) = &self.sample {
            return Ok(p.clone());
        }
        // Another release's headers are unpacked, not installed: their kbuild (`scripts`)
        // is missing, and make would fail with a message about a Makefile (docs/releases.md).
        let headers = &self.h.env.headers;
        if !headers.join("scripts").is_dir() {
            bail!(
                "building livepatch-sample.ko needs installed headers with kbuild; {} has none \
                 (a release other than apt's candidate: see docs/releases.md)",
                headers.display()
            );
        }
        let dir = self.dir.join("livepatch-sample");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(
            self.h
                .env
                .source
                .join("samples/livepatch/livepatch-sample.c"),
            dir.join("livepatch-sample.c"),
        )
        .context("copy samples/livepatch/livepatch-sample.c")?;
        std::fs::write(dir.join("Kbuild"), "obj-m := livepatch-sample.o\n")?;
        let out = Command::new("make")
            .arg("-C")
            .arg(&self.h.env.headers)
            .arg(format!("M={}", dir.display()))
            .args(["-j2", "modules"])
            .output()
            .context("run make")?;
        if !out.status.success() {
            bail!(
                "building livepatch-sample.ko failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ko = dir.join("livepatch-sample.ko");
        self.sample = Some(ko.clone());
        Ok(ko)
    }

    /// The test signing key (trusted by the guest) and a second key the guest does not trust.
    fn keys(&mut self) -> Result<[(PathBuf, String); 2]> {
        if let Some(k) = &self.keys {
            return Ok(k.clone());
        }
        let mut made = Vec::new();
        for name in ["trusted", "unknown"] {
            let dir = self.dir.join("keys").join(name);
            let _ = std::fs::remove_dir_all(&dir);
            let out = run(Command::new(self.h.bin("ksplice-build"))
                .arg("keygen")
                .arg("--out")
                .arg(&dir))?;
            let id = out
                .lines()
                .find_map(|l| l.strip_prefix("key id "))
                .context("ksplice-build keygen printed no key id")?
                .trim()
                .to_string();
            made.push((dir.join("signing.key"), id));
        }
        self.trust = Some(self.dir.join("keys/trusted/trust.toml"));
        let keys: [(PathBuf, String); 2] = made.try_into().expect("invariant: two keys");
        self.keys = Some(keys.clone());
        Ok(keys)
    }

    /// The sample module as a signed ksplice package, good or deliberately bad.
    fn sample_package(&mut self, v: PackageVariant, out: &Path) -> Result<Built> {
        let ko = self.sample_module()?;
        let [trusted, unknown] = self.keys()?;
        let p = self
            .profile
            .context("no target profile (the profile boot failed)")?;
        let (id, key, build_id) = match v {
            PackageVariant::Good => ("sample", &trusted, p.build_id.clone()),
            PackageVariant::UnknownKey => ("sample-unknown-key", &unknown, p.build_id.clone()),
            // Same release and version strings, another build: only the build-id tells them apart.
            PackageVariant::OtherKernel => ("sample-other-kernel", &trusted, "0".repeat(40)),
            PackageVariant::Corrupted => ("sample-corrupted", &trusted, p.build_id.clone()),
        };
        let manifest = format!(
            r#"format = 1
id = "{id}"
description = "samples/livepatch/livepatch-sample.c: /proc/cmdline reads 'this has been live patched'"
created = "2026-01-01T00:00:00Z"
builder_version = "e2e"

[target]
release = {release:?}
version = {version:?}
arch = {arch:?}
build_id = "{build_id}"

[module]
name = "livepatch_sample"
file = "livepatch-sample.ko"
"#,
            release = p.release,
            version = p.version,
            arch = p.arch,
        );
        let mpath = out.join("manifest.toml");
        std::fs::write(&mpath, manifest)?;
        let pkg = out.join(format!("ksplice-{id}.tar.gz"));
        run(Command::new(self.h.bin("ksplice-build"))
            .arg("pack")
            .arg("--manifest")
            .arg(&mpath)
            .arg("--key")
            .arg(&key.0)
            .arg("--output")
            .arg(&pkg)
            .arg(format!("livepatch-sample.ko={}", ko.display())))?;
        let mut built = Built {
            file: pkg.clone(),
            env: vec![("ID".into(), id.into())],
            ..Built::default()
        };
        built.expect = match v {
            PackageVariant::Good => None,
            PackageVariant::UnknownKey => Some(format!(
                "refused: {{PKG}}: manifest.sig: signed only by untrusted key(s) {}",
                key.1
            )),
            PackageVariant::OtherKernel => Some(format!(
                "refused: {id} was built for another kernel: build-id is \"{build_id}\", running kernel has \"{}\"",
                p.build_id
            )),
            PackageVariant::Corrupted => {
                corrupt_payload(&pkg, "livepatch-sample.ko")?;
                Some(
                    "refused: {PKG}: package file \"livepatch-sample.ko\" does not match its sha256 in the manifest"
                        .into(),
                )
            }
        };
        Ok(built)
    }
}

/// Flips one byte in the middle of payload `file` inside the archive itself, so that every
/// header stays exactly as `ksplice-build pack` wrote it (the reader refuses any other tar
/// header) and only the payload's digest can catch the change.
fn corrupt_payload(pkg: &Path, file: &str) -> Result<()> {
    use std::io::{Read, Write};
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(pkg)?).read_to_end(&mut tar)?;
    let mut at = 0;
    let data = loop {
        let header = tar
            .get(at..at + 512)
            .with_context(|| format!("{file} is not in {}", pkg.display()))?;
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let size_field = std::str::from_utf8(&header[124..136])?.trim_matches(['\0', ' ']);
        let size = usize::from_str_radix(size_field, 8)
            .with_context(|| format!("tar size field {size_field:?}"))?;
        if &header[..name_end] == file.as_bytes() {
            break at + 512..at + 512 + size;
        }
        at += 512 + size.div_ceil(512) * 512;
    };
    tar[data.start + data.len() / 2] ^= 0xff;
    // The header ksplice reads is the canonical one (mtime 0, XFL 0, OS 255).
    let mut gz = flate2::GzBuilder::new()
        .operating_system(0xff)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    std::fs::write(pkg, gz.finish()?)?;
    Ok(())
}

/// Runs a command, returning its stdout then stderr, failing with both.
/// Several packages for the guest: the first as PKG, the others as PKG2, PKG3, ...
fn packages(files: Vec<PathBuf>) -> Result<Built> {
    let mut files = files.into_iter();
    let first = files.next().context("no packages were built")?;
    Ok(Built {
        file: first,
        extra: files
            .enumerate()
            .map(|(i, f)| (format!("PKG{}", i + 2), f))
            .collect(),
        ..Built::default()
    })
}

/// `cp -a SRC DST`: a state of the repository, frozen for the guest.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    run(Command::new("cp").arg("-a").arg(src).arg(dst)).map(|_| ())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}):\n{}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The string value of `key` in TOML `table` (the first `key = "..."` after the header).
fn toml_field(text: &str, table: &str, key: &str) -> Result<String> {
    let start = text
        .find(table)
        .with_context(|| format!("manifest has no {table}"))?;
    text[start..]
        .lines()
        .skip(1)
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .with_context(|| format!("manifest {table} has no {key}"))
}

fn hex_decode(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd-length hex");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex"))
        .collect()
}

/// Keeps ksplice-create's report next to the package and shows its timing summary.
fn log_create(out: &Path, result: &Result<String>) {
    let text = match result {
        Ok(t) => t.clone(),
        Err(e) => format!("{e:#}"),
    };
    let _ = std::fs::write(out.join("ksplice-create.log"), &text);
    if let Some(l) = text.lines().find(|l| l.trim_start().starts_with("time:")) {
        eprintln!("e2e:   ksplice-create {}", l.trim());
    }
}

/// The patch's file stem: branch name, and (lowercased, as update ids must be) update id.
fn stem(patch: &Path) -> String {
    patch
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// ksplice-create's first refusal reason (the line after `refused:`), else its last line.
fn refusal_line(text: &str) -> &str {
    let mut lines = text.lines().map(str::trim);
    while let Some(l) = lines.next() {
        if l.ends_with("refused:") {
            if let Some(next) = lines.next() {
                return next;
            }
        }
    }
    last_line(text)
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or("")
}

/// The one `ksplice-*.tar.gz` in `dir`.
fn find_package(dir: &Path) -> Result<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ksplice-") && n.ends_with(".tar.gz"))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one ksplice-*.tar.gz in {}, found {found:?}",
            dir.display()
        ),
    }
}

/// The deliberate change to the pre tree of the run-pre scenario: the character
/// cmdline_proc_show prints after the command line (an immediate operand, not a
/// relocation field, so run-pre matching must see it).
const RUN_PRE_ALTERATION: &str = "--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -8,5 +8,5 @@
 {
 \tseq_puts(m, saved_command_line);
-\tseq_putc(m, '\\n');
+\tseq_putc(m, '\\r');
 \treturn 0;
 }
";

/// The same-size call to another function in cmdline_proc_show: only the relocation differs.
const RUN_PRE_CALL_ALTERATION: &str = "--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -8,5 +8,5 @@
 {
 \tseq_puts(m, saved_command_line);
-\tseq_putc(m, '\\n');
+\tseq_pad(m, '\\n');
 \treturn 0;
 }
";

/// The first replaced function's run-pre data in a package's report.json.
struct PackageRunPre {
    func: String,
    code: Vec<u8>,
    skip: Vec<(usize, usize)>,
    /// Value-checked relocations: (offset, symbol name).
    relocs: Vec<(usize, String)>,
}

impl PackageRunPre {
    fn skipped(&self, i: usize) -> bool {
        self.skip.iter().any(|&(s, l)| (s..s + l).contains(&i))
    }
}

/// Unpacks a package into `dir`; returns its module name and first run-pre entry.
fn unpack_run_pre(pkg: &Path, dir: &Path) -> Result<(String, PackageRunPre)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    run(Command::new("tar").arg("-C").arg(dir).arg("-xzf").arg(pkg))?;
    let manifest = std::fs::read_to_string(dir.join("manifest.toml"))?;
    let module = toml_field(&manifest, "[module]", "name")?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json"))?).context("report.json")?;
    let rp = &report[0]["run_pre"][0];
    let func = rp["name"]
        .as_str()
        .context("report.json: no run_pre")?
        .to_string();
    let code = hex_decode(rp["code"].as_str().context("run_pre code")?)?;
    let skip = rp["skip"]
        .as_array()
        .context("run_pre skip")?
        .iter()
        .filter_map(|r| Some((r[0].as_u64()? as usize, r[1].as_u64()? as usize)))
        .collect();
    let relocs = rp["relocs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["offset"].as_u64()? as usize,
                r["target"]["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    Ok((
        module,
        PackageRunPre {
            func,
            code,
            skip,
            relocs,
        },
    ))
}

/// [`Build::CoverageSample`]: nothing to build; the guest gets every sampled package
/// as PKG<i> with its id (ID<i>) and target (MOD<i>: vmlinux or the module name), the
/// trust policy of the key that signed them, and the release they were built for.
fn coverage_sample(dir: &Path) -> Result<Built> {
    let sample = super::scenario::CoverageSample::load(dir)?;
    if sample.updates.is_empty() {
        bail!(
            "{}: the coverage run built no update to sample",
            dir.join("sample.json").display()
        );
    }
    let mut built = Built {
        env: vec![
            ("COUNT".into(), sample.updates.len().to_string()),
            ("RELEASE".into(), sample.release.clone()),
        ],
        extra: vec![("TRUST_TOML".into(), dir.join(&sample.trust))],
        ..Built::default()
    };
    for (i, u) in sample.updates.iter().enumerate() {
        let n = i + 1;
        built.env.push((format!("ID{n}"), u.id.clone()));
        built.env.push((format!("MOD{n}"), u.target.clone()));
        built.extra.push((format!("PKG{n}"), dir.join(&u.package)));
    }
    Ok(built)
}

/// [`Build::Published`]: nothing to build; the guest gets the repository, the trust
/// policy, the root metadata and the id of the release's top level (from its report).
fn published(p: &super::scenario::Published) -> Result<Built> {
    #[derive(serde::Deserialize)]
    struct Report {
        kernel: ReportKernel,
        levels: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct ReportKernel {
        release: String,
    }
    let text = std::fs::read_to_string(&p.report)
        .with_context(|| format!("KSPLICE_PIPELINE_REPORT {}", p.report.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a release report", p.report.display()))?;
    let Some(top) = report.levels.last() else {
        bail!(
            "{}: the pipeline built no level for {}",
            p.report.display(),
            report.kernel.release
        );
    };
    let root = p.public.join("metadata/1.root.json");
    for f in [&root, &p.trust] {
        if !f.is_file() {
            bail!("{} is missing: run ci/pipeline", f.display());
        }
    }
    Ok(Built {
        env: vec![
            ("TOP".into(), top.clone()),
            ("LEVELS".into(), report.levels.len().to_string()),
            ("RELEASE".into(), report.kernel.release),
        ],
        extra: vec![
            ("ROOT_JSON".into(), root),
            ("TRUST_TOML".into(), p.trust.clone()),
        ],
        serve: Some(p.public.clone()),
        ..Built::default()
    })
}
