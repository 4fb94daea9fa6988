//! Runs the scenarios: detect landed pieces, capture the target profile, build packages, boot, report.

use super::env::KernelEnv;
use super::kmod::ModuleTree;
use super::markers::{self, Log};
use super::qemu::{self, Boot, Ended};
use super::report::{Outcome, Row};
use super::scenario::{self, Build, Piece, Scenario};
use super::{build, cpio, profile, serve};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The guest NIC driver for fleet scenarios (QEMU's e1000; a module in Debian's config).
const NIC_MODULE: &str = "e1000";

/// Which serial lines the harness echoes while the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Markers and `!!` problem lines (ci/e2e).
    Markers,
    /// Everything the guest prints.
    All,
    /// What scenario scripts print, without markers (the demo).
    Scripts,
}

/// Where things are, for one run.
#[derive(Debug, Clone)]
pub struct Harness {
    pub env: KernelEnv,
    /// Workspace root (for ci/guest).
    pub root: PathBuf,
    /// Directory of the workspace's built binaries (`target/debug`).
    pub bins: PathBuf,
    /// Where the client staged into the guest comes from (`target/release`
    /// when ci/e2e built it so: a debug client verifying packages under TCG
    /// spends seconds per apply in user space).
    pub guest_bins: PathBuf,
    /// Scratch and artifacts: `target/e2e`.
    pub work: PathBuf,
    /// The test patches (`$KSPLICE_PATCHES`, else `tests/patches`).
    pub patches: PathBuf,
    /// Pieces whose binaries answer `--help` for their subcommand.
    pub pieces: BTreeSet<Piece>,
    /// Which guest lines to print as they arrive.
    pub show: Show,
}

impl Harness {
    /// Locates the workspace with `cargo metadata` and reads the kernel environment.
    pub fn discover(profile: &str) -> Result<Self> {
        let env = KernelEnv::load()?;
        let meta = cargo_metadata::MetadataCommand::new()
            .no_deps()
            .exec()
            .context("cargo metadata")?;
        let root = PathBuf::from(meta.workspace_root.as_std_path());
        let target = PathBuf::from(meta.target_directory.as_std_path());
        let bins = target.join(profile);
        let guest_bins = match std::env::var("KSPLICE_GUEST_PROFILE") {
            Ok(p) if !p.is_empty() => {
                let dir = target.join(p);
                if !dir.join("ksplice").is_file() {
                    bail!(
                        "KSPLICE_GUEST_PROFILE: no client in {} (build it, or unset the variable)",
                        dir.display()
                    );
                }
                dir
            }
            _ => bins.clone(),
        };
        let work = target.join("e2e");
        std::fs::create_dir_all(&work)?;
        // The test patches: $KSPLICE_PATCHES, else tests/patches in the workspace.
        // Missing patches are a set-up error, not fewer scenarios.
        let patches = std::env::var_os("KSPLICE_PATCHES")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("tests/patches"));
        if !patches.join("cmdline-string.patch").is_file() {
            bail!(
                "no test patches in {} (set KSPLICE_PATCHES to the directory of *.patch files)",
                patches.display()
            );
        }
        if !qemu::available() {
            bail!("qemu-system-x86_64 is missing: run ci/setup-kernel");
        }
        let mut h = Self {
            env,
            root,
            bins,
            guest_bins,
            work,
            patches,
            pieces: BTreeSet::new(),
            show: Show::Markers,
        };
        h.pieces = [
            Piece::Client,
            Piece::Profile,
            Piece::Pack,
            Piece::Create,
            Piece::Repo,
        ]
        .into_iter()
        .filter(|p| h.has(*p))
        .collect();
        Ok(h)
    }

    fn has(&self, piece: Piece) -> bool {
        let (bin, args) = piece.probe();
        let out = Command::new(self.bins.join(bin)).args(args).output();
        matches!(out, Ok(o) if o.status.success() && !o.stdout.is_empty())
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// The scenario table for this machine.
    pub fn scenarios(&self) -> Vec<Scenario> {
        scenario::all(&self.patches)
    }

    /// Runs `selected` and returns one row per scenario, in table order.
    pub fn run(&self, selected: &[Scenario]) -> Result<Vec<Row>> {
        let mut rows: Vec<Row> = Vec::new();
        let mut runnable = Vec::new();
        for s in selected {
            let missing: Vec<Piece> = s
                .needs
                .iter()
                .copied()
                .filter(|p| !self.pieces.contains(p))
                .collect();
            if missing.is_empty() {
                runnable.push(s.clone());
            } else {
                rows.push(Row::new(
                    &s.name,
                    Outcome::NotRun(format!("not landed: {missing:?}")),
                ));
            }
        }

        // 1. The target profile, from its own boot of the unmodified kernel (cached per version).
        let needs_profile = runnable.iter().any(|s| {
            s.name == scenario::PROFILE
                || matches!(
                    s.build,
                    Build::SamplePackage(_)
                        | Build::Create { .. }
                        | Build::CreateDiffext { .. }
                        | Build::RunPreMismatch { .. }
                        | Build::CreateMany { .. }
                        | Build::Cumulative { .. }
                        | Build::Fleet { .. }
                        | Build::SystemdHost { .. }
                )
        });
        let mut prof = None;
        if needs_profile {
            let want_full = self.pieces.contains(&Piece::Profile);
            let t = Instant::now();
            match profile::capture(self, want_full) {
                Ok((p, booted)) => {
                    if let Some(s) = runnable.iter().find(|s| s.name == scenario::PROFILE) {
                        let outcome = if p.complete {
                            Outcome::Pass
                        } else {
                            Outcome::Fail("ksplice profile output incomplete".into())
                        };
                        let mut row = Row::new(&s.name, outcome);
                        if booted {
                            row.note = Some(format!(
                                "captured by a boot of the unmodified kernel in {:.0} s",
                                t.elapsed().as_secs_f64()
                            ));
                        } else {
                            row.note = Some(format!(
                                "cached in {}; remove it to capture again",
                                p.dir.display()
                            ));
                        }
                        rows.push(row);
                    }
                    prof = Some(p);
                }
                Err(e) => {
                    eprintln!("e2e: target profile: {e:#}");
                    if runnable.iter().any(|s| s.name == scenario::PROFILE) {
                        rows.push(Row::new(scenario::PROFILE, Outcome::Fail(format!("{e:#}"))));
                    }
                }
            }
        }
        runnable.retain(|s| s.name != scenario::PROFILE);

        // 2. Build every package on the host.
        let pkgdir = self.work.join("pkg");
        for s in &runnable {
            let _ = std::fs::remove_dir_all(pkgdir.join(&s.name));
        }
        let mut boot_list: Vec<(Scenario, build::Built, f64)> = Vec::new();
        let mut ctx = build::Context::new(self, prof.as_ref(), &pkgdir)?;
        for s in runnable {
            let t = Instant::now();
            let dir = pkgdir.join(&s.name);
            std::fs::create_dir_all(&dir)?;
            eprintln!("e2e: building {}", s.name);
            let built = ctx.build(&s.build, &dir);
            let secs = t.elapsed().as_secs_f64();
            match (built, &s.guest) {
                (Ok(out), Some(_)) => boot_list.push((s, out, secs)),
                (Ok(_), None) => {
                    let mut r = Row::new(&s.name, Outcome::Pass);
                    r.build_s = Some(secs);
                    rows.push(r);
                }
                (Err(e), _) => {
                    eprintln!("e2e: {}: build failed: {e:#}", s.name);
                    let text = format!("{e:#}");
                    let mut r = Row::new(
                        &s.name,
                        Outcome::Fail(format!("build: {}", summary_line(&text))),
                    );
                    r.build_s = Some(secs);
                    rows.push(r);
                }
            }
        }

        // 3. Scenarios with a guest limit beyond the default (the soak, about 10 of
        //    the suite's 20 minutes) boot alone, beside the others: with one vCPU
        //    thread per guest (qemu.rs) the two boots use both cores.
        let (long, boot_list): (Vec<_>, Vec<_>) = boot_list.into_iter().partition(|(s, _, _)| {
            s.guest
                .as_ref()
                .is_some_and(|g| scenario::guest_timeout(g) > 180)
        });
        let trust = ctx.trust();
        let (systemd, boot_list): (Vec<_>, Vec<_>) = boot_list
            .into_iter()
            .partition(|(s, _, _)| matches!(s.build, Build::SystemdHost { .. }));
        std::thread::scope(|scope| -> Result<()> {
            let long_boot = (!long.is_empty()).then(|| {
                let long = &long;
                scope.spawn(move || self.boot_rows("long", long, trust))
            });

            // 4. The systemd host boots its own disk, several times.
            for (_, built, build_s) in &systemd {
                rows.push(super::systemd::run(self, built, trust, *build_s));
            }

            // 5. One boot for every other scenario that built.
            let main = if boot_list.is_empty() {
                Ok(Vec::new())
            } else {
                self.boot_rows("main", &boot_list, trust)
            };
            let long_rows = match long_boot {
                Some(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the long scenarios' boot panicked"))),
                None => Ok(Vec::new()),
            };
            rows.extend(main?);
            rows.extend(long_rows?);
            Ok(())
        })?;
        let order: Vec<String> = selected.iter().map(|s| s.name.clone()).collect();
        rows.sort_by_key(|r| order.iter().position(|n| *n == r.scenario));
        Ok(rows)
    }

    /// Boot `name` with the scenarios of `list` and give each its row.
    fn boot_rows(
        &self,
        name: &str,
        list: &[(Scenario, build::Built, f64)],
        trust: Option<&Path>,
    ) -> Result<Vec<Row>> {
        let plan: Vec<(Scenario, build::Built)> = list
            .iter()
            .map(|(s, p, _)| (s.clone(), p.clone()))
            .collect();
        let (log, ended) = self.boot(name, &plan, trust)?;
        let mut rows = Vec::new();
        for (s, _, build_s) in list {
            let mut row = match log.scenarios.get(&s.name) {
                Some(g) => {
                    let mut r = Row::new(
                        &s.name,
                        match g.passed {
                            Some(true) => Outcome::Pass,
                            Some(false) => Outcome::Fail(failed_step(g)),
                            None => Outcome::Fail(format!("did not finish ({ended:?})")),
                        },
                    );
                    r.apply_s = g.step_secs("apply");
                    if !g.metrics.is_empty() {
                        r.note = Some(
                            g.metrics
                                .iter()
                                .map(|(k, v)| format!("{k} {v}"))
                                .collect::<Vec<_>>()
                                .join(", "),
                        );
                    }
                    r
                }
                None => Row::new(&s.name, Outcome::Fail(format!("did not run ({ended:?})"))),
            };
            row.build_s = Some(*build_s);
            rows.push(row);
        }
        Ok(rows)
    }

    /// The README demo: build the cmdline-string update, boot, show /proc/cmdline before,
    /// apply, after, undo. Falls back to the signed livepatch-sample package (and says so)
    /// when ksplice-create cannot build the update.
    pub fn demo(&self) -> Result<bool> {
        let (prof, _) = profile::capture(self, self.pieces.contains(&Piece::Profile))?;
        let pkgdir = self.work.join("pkg");
        let out = pkgdir.join("demo");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let mut ctx = build::Context::new(self, Some(&prof), &pkgdir)?;
        let patch = self.patches.join("cmdline-string.patch");
        println!("demo: building the cmdline-string update with ksplice-create (git form: pre -> cmdline-string)");
        let t = Instant::now();
        let built = match ctx.build(&Build::Create { patch }, &out) {
            Ok(b) => b,
            Err(e) => {
                println!("demo: ksplice-create could not build it: {e:#}");
                println!("demo: showing the kernel's livepatch-sample, packed and signed by ksplice-build, instead");
                let _ = std::fs::remove_dir_all(&out);
                std::fs::create_dir_all(&out)?;
                ctx.build(&Build::SamplePackage(scenario::PackageVariant::Good), &out)?
            }
        };
        println!(
            "demo: built {} in {:.1} s",
            built.file.display(),
            t.elapsed().as_secs_f64()
        );
        let s = Scenario {
            name: "demo".into(),
            needs: vec![],
            build: Build::Nothing,
            guest: Some(scenario::Guest {
                script: "demo.sh",
                env: vec![],
                modules: vec![],
            }),
        };
        println!("demo: booting Debian's kernel {} in QEMU", self.env.release);
        let (log, _) = self.boot("demo", &[(s, built)], ctx.trust())?;
        Ok(log.scenarios.get("demo").and_then(|g| g.passed) == Some(true))
    }

    /// Boots the kernel with `plan` and returns the parsed serial log.
    pub fn boot(
        &self,
        name: &str,
        plan: &[(Scenario, build::Built)],
        trust: Option<&Path>,
    ) -> Result<(Log, Ended)> {
        let dir = self.work.join(format!("boot-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("ksplice/pkg"))?;
        self.stage_base(&root, trust)?;
        let mut modules = Vec::new();
        let mut plan_text = String::new();
        let www = dir.join("www");
        for (s, built) in plan {
            let g = s
                .guest
                .as_ref()
                .expect("invariant: only guest scenarios are booted");
            modules.extend(g.modules.iter().map(String::as_str));
            let mut line = format!("{} {}", s.name, g.script);
            if !built.file.as_os_str().is_empty() {
                let dst = root.join("ksplice/pkg").join(&s.name);
                std::fs::create_dir_all(&dst)?;
                let file = built.file.file_name().context("built output has no name")?;
                std::fs::copy(&built.file, dst.join(file))
                    .with_context(|| format!("copy {}", built.file.display()))?;
                let guest_path = format!("/ksplice/pkg/{}/{}", s.name, file.to_string_lossy());
                if let Some(e) = &built.expect {
                    std::fs::write(dst.join("expect"), e.replace("{PKG}", &guest_path))?;
                }
                line.push_str(&format!(" PKG={guest_path}"));
            }
            for (var, file) in &built.extra {
                let dst = root.join("ksplice/pkg").join(&s.name);
                std::fs::create_dir_all(&dst)?;
                let name = file.file_name().context("built output has no name")?;
                std::fs::copy(file, dst.join(name))
                    .with_context(|| format!("copy {}", file.display()))?;
                let guest_path = format!("/ksplice/pkg/{}/{}", s.name, name.to_string_lossy());
                line.push_str(&format!(" {var}={guest_path}"));
            }
            if let Some(served) = &built.serve {
                std::fs::create_dir_all(&www)?;
                std::os::unix::fs::symlink(std::fs::canonicalize(served)?, www.join(&s.name))
                    .with_context(|| format!("serve {}", served.display()))?;
                line.push_str(&format!(" MIRROR=http://{}/{}", qemu::MIRROR_ADDR, s.name));
                modules.push(NIC_MODULE);
            }
            for (k, v) in g.env.iter().chain(&built.env) {
                if v.contains(char::is_whitespace) || v.contains(['*', '?', '[']) {
                    bail!(
                        "{}: guest variable {k}={v:?} must be one word without glob characters",
                        s.name
                    );
                }
                line.push_str(&format!(" {k}={v}"));
            }
            plan_text.push_str(&line);
            plan_text.push('\n');
        }
        std::fs::write(root.join("ksplice/plan"), plan_text)?;
        if !modules.is_empty() {
            ModuleTree::scan(&self.env.modules)?.install(&modules, &root, &self.env.release)?;
        }
        let initrd = dir.join("initrd.cpio");
        cpio::write_tree(&root, &initrd)?;
        let serial = dir.join("serial.log");
        // Kept alive until the boot ends; the guest reaches it only through guestfwd.
        let mirror = if www.exists() {
            let m = serve::Mirror::start(&www, &dir.join("mirror.log"))?;
            eprintln!("e2e: serving {} on 127.0.0.1:{}", www.display(), m.port);
            Some(m)
        } else {
            None
        };
        let b = Boot {
            kernel: self.env.vmlinuz.clone(),
            initrd,
            serial_log: serial.clone(),
            kernel_log: dir.join("kernel.log"),
            append: String::new(),
            mirror_port: mirror.as_ref().map(|m| m.port),
            disk: None,
            reboot: false,
            timeout: Duration::from_secs(boot_timeout(
                plan.iter()
                    .map(|(s, _)| s.guest.as_ref().map_or(180, scenario::guest_timeout)),
            )),
        };
        eprintln!(
            "e2e: boot {name}: {} with {} scenario(s), serial log {}",
            self.env.release,
            plan.len(),
            serial.display()
        );
        let show = self.show;
        let mut in_script = false;
        let (ended, took) = b.run(|line| match show {
            Show::All => println!("{line}"),
            Show::Markers => {
                if line.contains("@@KSPLICE ") || line.starts_with("!!") {
                    eprintln!("  {name}: {line}");
                }
            }
            Show::Scripts => {
                if line.contains("event=start") {
                    in_script = true;
                } else if line.contains("event=end") {
                    in_script = false;
                } else if in_script && !line.contains("@@KSPLICE") {
                    println!("{line}");
                }
            }
        })?;
        eprintln!(
            "e2e: boot {name} ended after {:.1} s: {ended:?}",
            took.as_secs_f64()
        );
        report_kernel_trouble(&b.kernel_log);
        let text = std::fs::read(&serial)?;
        Ok((markers::parse(&String::from_utf8_lossy(&text)), ended))
    }

    /// Busybox, init and scenario scripts, the client with its shared libraries, the patch tests.
    fn stage_base(&self, root: &Path, trust: Option<&Path>) -> Result<()> {
        for d in [
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "etc/ksplice",
            "ksplice/tests",
        ] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox"))
            .context("copy /usr/bin/busybox (package busybox-static)")?;
        let guest = self.root.join("ci/guest");
        std::fs::copy(guest.join("init"), root.join("init"))?;
        std::fs::copy(guest.join("lib.sh"), root.join("ksplice/lib.sh"))?;
        let sdir = root.join("ksplice/scenarios");
        std::fs::create_dir_all(&sdir)?;
        for e in std::fs::read_dir(guest.join("scenarios"))? {
            let p = e?.path();
            std::fs::copy(&p, sdir.join(p.file_name().context("no name")?))?;
        }
        if let Ok(rd) = std::fs::read_dir(&self.patches) {
            for e in rd {
                let p = e?.path();
                let name = p
                    .file_name()
                    .context("no name")?
                    .to_string_lossy()
                    .into_owned();
                if name.ends_with(".test") {
                    // The tests were written for a sudo-capable bash host; the guest runs them as root with sh.
                    let text = std::fs::read_to_string(&p)?.replace("sudo ", "");
                    std::fs::write(root.join("ksplice/tests").join(name), text)?;
                }
            }
        }
        // A Debian host has its kernel's config in /boot (from the image package); `ksplice profile` reads it.
        std::fs::create_dir_all(root.join("boot"))?;
        std::fs::copy(
            &self.env.config,
            root.join("boot")
                .join(format!("config-{}", self.env.release)),
        )?;
        if let Some(t) = trust {
            std::fs::copy(t, root.join("etc/ksplice/trust.toml"))?;
        }
        if self.pieces.contains(&Piece::Client) {
            self.stage_client(root)?;
        }
        Ok(())
    }

    fn stage_client(&self, root: &Path) -> Result<()> {
        let main = self.guest_bins.join("ksplice");
        let dst = root.join("usr/sbin/ksplice");
        strip_copy(&main, &dst)?;
        // The seed's names are symlinks, as the Debian package ships them: the binary
        // picks its subcommand from its name (and a stale alias binary left in the
        // target directory by an older build can never reach the guest).
        for alias in ["ksplice-apply", "ksplice-undo", "ksplice-view"] {
            std::os::unix::fs::symlink("ksplice", root.join("usr/sbin").join(alias))?;
        }
        for lib in shared_libs(&main)? {
            let to = root.join(lib.strip_prefix("/").unwrap_or(&lib));
            std::fs::create_dir_all(to.parent().context("lib has no parent")?)?;
            std::fs::copy(&lib, &to).with_context(|| format!("copy {}", lib.display()))?;
        }
        Ok(())
    }
}

/// Prints where the kernel console log first shows trouble and the lines from there:
/// a wedged guest never reaches init's `dmesg` dump, and its scenario's own kernel-log
/// check may never run.
fn report_kernel_trouble(path: &Path) {
    if let Some(t) = qemu::kernel_trouble(path) {
        eprintln!(
            "e2e: the kernel log {} has {} problem line(s); from the first:",
            path.display(),
            t.count
        );
        for l in &t.excerpt {
            eprintln!("  kernel: {l}");
        }
    }
}

/// The line of a build failure worth a table cell: the compiler's error, else the last line.
fn summary_line(text: &str) -> &str {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("error:") && !l.starts_with("make"))
        .or_else(|| lines.last())
        .copied()
        .unwrap_or("")
}

fn failed_step(g: &markers::GuestResult) -> String {
    match g.steps.iter().find(|s| !s.1) {
        Some(s) => format!("step {} failed", s.0),
        None => "kernel log or leftover patch".into(),
    }
}

/// The hard limit of one boot, in seconds: 120 s to boot and 180 s per scenario, at
/// most 25 minutes, plus what scenarios with a longer guest limit (the soak) ask beyond
/// 180 s, so a long scenario does not eat the others' time.
fn boot_timeout(limits: impl Iterator<Item = u64>) -> u64 {
    let limits: Vec<u64> = limits.collect();
    let base = (120 + 180 * limits.len() as u64).min(1500);
    base + limits.iter().map(|l| l.saturating_sub(180)).sum::<u64>()
}

/// Copies a binary without its debug info (the initramfs stays small).
fn strip_copy(src: &Path, dst: &Path) -> Result<()> {
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(src)
        .arg(dst)
        .status()
        .context("run objcopy (package binutils)")?;
    if !st.success() {
        bail!("objcopy --strip-debug {} failed", src.display());
    }
    Ok(())
}

/// The shared libraries `ldd` lists for `bin`, the dynamic loader included.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn summary_prefers_the_compiler_error() {
        let text = "cmd failed:\nkernel/sys.c:1299:10: fatal error: kpatch-syscall.h: No such file or directory\nmake[2]: *** [x] Error 1\nmake: *** [Makefile:2065: .] Error 2\n";
        assert_eq!(
            summary_line(text),
            "kernel/sys.c:1299:10: fatal error: kpatch-syscall.h: No such file or directory"
        );
        assert_eq!(summary_line("a\n\nlast one\n"), "last one");
    }

    #[test]
    fn a_long_scenario_extends_the_boot_limit() {
        assert_eq!(boot_timeout([180, 180].into_iter()), 480);
        assert_eq!(boot_timeout(std::iter::repeat_n(180, 30)), 1500);
        assert_eq!(boot_timeout([180, 3120].into_iter()), 480 + 2940);
    }
}
