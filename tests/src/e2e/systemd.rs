//! The systemd-host scenario: a real Debian 12 root (ci/setup-debroot) with the client's `.deb`, booted from a disk under systemd.
//!
//! The host makes one ext4 disk image without mounting it (`mke2fs -d`): the cached
//! debootstrap root, the package installed with `dpkg --root` (its postinst enables the
//! units as on any host), `/etc/ksplice` pointing at the loopback mirror, and a test
//! driver unit (ci/guest/systemd/) that runs one stage of checks per boot. A busybox
//! initramfs loads the disk and ext4 drivers and switch_roots to the disk's systemd.
//! Three QEMU runs of the same disk:
//!
//! 1. stages a and b: the first boot applies level 1 through the update timer's unit
//!    and reboots for real (QEMU without `-no-reboot`); the host switches the mirror
//!    to level 2 when stage a ends; the second boot finds level 1 re-applied by the
//!    boot unit, switches to level 2 and powers off without confirming;
//! 2. stage c: the boot unit holds;
//! 3. stage d: `ksplice=off` on the kernel command line.

use super::build::Built;
use super::kmod::ModuleTree;
use super::markers::{self, GuestResult};
use super::qemu::{self, Boot, Ended};
use super::report::{Outcome, Row};
use super::runner::Harness;
use super::{cpio, serve};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The scenario's name; the driver reports each stage as `<NAME>-<stage>`.
pub const NAME: &str = "systemd-host";

/// The debootstrap root's archive under the cache (ci/setup-debroot writes it).
pub const DEBROOT: &str = "debroot/bookworm-minbase.tar";

/// The disk's size: the root is about 200 MB; room for the updates and the journal.
const DISK_SIZE: &str = "1G";

/// Modules the initramfs loads to mount the disk (crc32c: ext4's metadata checksums).
const INITRAMFS_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// Modules the root carries: the mirror's NIC (udev loads it), autofs4 (systemd
/// loads it at start and logs an error without it), and the disk drivers, as a
/// real host has them. Not the whole 390 MB tree: the image stays small.
const ROOT_MODULES: [&str; 6] = [
    "e1000",
    "autofs4",
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
];

/// The units the package must enable, and the symlinks that say so.
const ENABLED: [(&str, &str); 3] = [
    ("sysinit.target.wants", "ksplice.service"),
    ("timers.target.wants", "ksplice-update.timer"),
    ("timers.target.wants", "ksplice-confirm.timer"),
];

/// One QEMU run: which stages it must report, the extra kernel command line, and
/// whether the guest may reboot (stage a reboots into stage b in the same run).
struct Run {
    stages: &'static [&'static str],
    append: &'static str,
    reboot: bool,
}

const RUNS: [Run; 3] = [
    Run {
        stages: &["a", "b"],
        append: "",
        reboot: true,
    },
    Run {
        stages: &["c"],
        append: "",
        reboot: false,
    },
    Run {
        stages: &["d"],
        append: "ksplice=off",
        reboot: false,
    },
];

/// Host seconds one QEMU run may take: two systemd boots under TCG on a loaded
/// machine, each with a fetch and an apply; only stops a hung guest.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// Builds the disk and runs the three boots; one table row.
pub fn run(h: &Harness, built: &Built, trust: Option<&Path>, build_s: f64) -> Row {
    let t = Instant::now();
    let mut row = match run_stages(h, built, trust) {
        Ok((outcome, notes)) => {
            let mut r = Row::new(NAME, outcome);
            r.note = Some(notes.join(", "));
            r
        }
        Err(e) => {
            eprintln!("e2e: {NAME}: {e:#}");
            Row::new(NAME, Outcome::Fail(format!("set-up: {e:#}")))
        }
    };
    row.build_s = Some(build_s);
    eprintln!(
        "e2e: {NAME}: image and boots took {:.0} s",
        t.elapsed().as_secs_f64()
    );
    row
}

fn run_stages(h: &Harness, built: &Built, trust: Option<&Path>) -> Result<(Outcome, Vec<String>)> {
    let dir = h.work.join(format!("boot-{NAME}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut notes = Vec::new();

    // 1. The disk image.
    let t = Instant::now();
    let deb = build_deb(h)?;
    let disk = dir.join("disk.img");
    make_disk(h, built, trust, &deb, &dir, &disk)?;
    let initrd = dir.join("initrd.cpio");
    make_initramfs(h, &dir.join("initramfs"), &initrd)?;
    notes.push(format!(
        "image {} MB used of {DISK_SIZE} in {:.0} s",
        disk_used_mb(&disk)?,
        t.elapsed().as_secs_f64()
    ));

    // 2. The mirror: `current` is the state the guest sees; the host turns it from
    //    a/ (level 1) to b/ (level 2) when stage a ends.
    let www = built
        .serve
        .as_ref()
        .context("the systemd-host build serves no repository")?;
    let served = dir.join("www");
    std::fs::create_dir_all(&served)?;
    let current = served.join("current");
    point(&current, &std::fs::canonicalize(www.join("a"))?)?;
    let level2 = std::fs::canonicalize(www.join("b"))?;
    let mirror = serve::Mirror::start(&current, &dir.join("mirror.log"))?;

    // 3. The boots.
    let mut failed: Option<String> = None;
    for (i, r) in RUNS.iter().enumerate() {
        let serial = dir.join(format!("serial-{}.log", i + 1));
        let kernel_log = dir.join(format!("kernel-{}.log", i + 1));
        let boot = Boot {
            kernel: h.env.vmlinuz.clone(),
            initrd: initrd.clone(),
            serial_log: serial.clone(),
            kernel_log: kernel_log.clone(),
            append: r.append.into(),
            mirror_port: Some(mirror.port),
            timeout: RUN_TIMEOUT,
            disk: Some(disk.clone()),
            reboot: r.reboot,
        };
        eprintln!(
            "e2e: {NAME}: boot {} (stage {}{}), serial log {}",
            i + 1,
            r.stages.join("+"),
            if r.append.is_empty() {
                String::new()
            } else {
                format!(", {}", r.append)
            },
            serial.display()
        );
        let mut switch_err = None;
        let (ended, took) = boot.run(|line| {
            if line.contains("@@KSPLICE ") || line.starts_with("!!") {
                eprintln!("  guest: {line}");
            }
            if line.contains(&format!("scenario={NAME}-a event=end result=pass")) {
                if let Err(e) = point(&current, &level2) {
                    switch_err = Some(e);
                }
            }
        })?;
        if let Some(e) = switch_err {
            return Err(e.context("switch the mirror to level 2"));
        }
        eprintln!(
            "e2e: {NAME}: boot {} ended after {:.1} s: {ended:?}",
            i + 1,
            took.as_secs_f64()
        );
        notes.push(format!(
            "boot {} ({}) {:.0} s",
            i + 1,
            r.stages.join("+"),
            took.as_secs_f64()
        ));
        let log = markers::parse(&String::from_utf8_lossy(&std::fs::read(&serial)?));
        for stage in r.stages {
            let name = format!("{NAME}-{stage}");
            let g = log.scenarios.get(&name).cloned().unwrap_or_default();
            if let Some(m) = stage_uptime(&g) {
                notes.push(format!("{stage}: driver at {m}"));
            }
            if let Err(why) = verdict(stage, &g, &ended) {
                failed.get_or_insert(why);
            }
        }
        if let Some(trouble) =
            qemu::kernel_trouble(&kernel_log).map(|t| t.excerpt[0].trim().to_owned())
        {
            failed.get_or_insert(format!("boot {}: kernel log: {trouble}", i + 1));
        }
        if failed.is_some() {
            break;
        }
    }
    let outcome = match failed {
        None => Outcome::Pass,
        Some(why) => Outcome::Fail(why),
    };
    Ok((outcome, notes))
}

/// Whether one stage passed: every step ok and its end marker `pass`.
fn verdict(stage: &str, g: &GuestResult, ended: &Ended) -> std::result::Result<(), String> {
    if let Some(s) = g.steps.iter().find(|s| !s.1) {
        return Err(format!("stage {stage}: step {} failed", s.0));
    }
    match g.passed {
        Some(true) if !g.steps.is_empty() => Ok(()),
        Some(true) => Err(format!("stage {stage}: no steps reported")),
        Some(false) => Err(format!("stage {stage}: failed (kernel log or driver)")),
        None if g.started => Err(format!("stage {stage}: did not finish ({ended:?})")),
        None => Err(format!("stage {stage}: did not run ({ended:?})")),
    }
}

/// "boot-to-driver / driver-end" guest uptimes of a stage, for the notes.
fn stage_uptime(g: &GuestResult) -> Option<String> {
    let get = |n: &str| g.metrics.iter().find(|m| m.0 == n).map(|m| m.1.clone());
    Some(format!(
        "{} s, done at {} s uptime",
        get("driver-started-uptime-s")?,
        get("driver-ended-uptime-s")?
    ))
}

/// Points the symlink `link` at `to`, atomically (a rename over the old link), so a
/// request in flight sees one state or the other.
fn point(link: &Path, to: &Path) -> Result<()> {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(to, &tmp)?;
    std::fs::rename(&tmp, link).with_context(|| format!("rename to {}", link.display()))
}

/// The client's package, made by ci/build-deb from the release client ci/e2e built.
fn build_deb(h: &Harness) -> Result<PathBuf> {
    let out = Command::new(h.root.join("ci/build-deb"))
        .arg("--no-build")
        .current_dir(&h.root)
        .output()
        .context("run ci/build-deb")?;
    if !out.status.success() {
        bail!(
            "ci/build-deb --no-build failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // "<path>.deb (N KiB; ...)"
    let text = String::from_utf8_lossy(&out.stdout);
    let deb = text
        .split_whitespace()
        .next()
        .filter(|p| p.ends_with(".deb"))
        .with_context(|| format!("ci/build-deb printed no package: {text:?}"))?;
    Ok(PathBuf::from(deb))
}

/// The root tree: the cached debootstrap root, the package installed, the host
/// configured for the mirror, the test driver; then the ext4 image of it.
fn make_disk(
    h: &Harness,
    built: &Built,
    trust: Option<&Path>,
    deb: &Path,
    dir: &Path,
    disk: &Path,
) -> Result<()> {
    let tar = h.env.cache.join(DEBROOT);
    if !tar.is_file() {
        bail!("{} is missing: run ci/setup-debroot", tar.display());
    }
    let root = dir.join("root");
    std::fs::create_dir_all(&root)?;
    sh(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&tar)
        .arg("-C")
        .arg(&root))?;

    // The package, as `apt install ./ksplice-client_*.deb` would: dpkg runs its
    // postinst chrooted into the root, where deb-systemd-helper enables the units.
    sh(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-unsafe-io", "-i"])
        .arg(deb))?;
    for (wants, unit) in ENABLED {
        let link = root.join("etc/systemd/system").join(wants).join(unit);
        if std::fs::symlink_metadata(&link).is_err() {
            bail!(
                "the package's postinst did not enable {unit} ({} is missing)",
                link.display()
            );
        }
    }

    // /etc/ksplice as docs/fleet.md sets up a host: the mirror, auto on, the
    // repository's root installed once, the package keys.
    let etc = root.join("etc/ksplice");
    write(
        &etc.join("client.toml"),
        &format!(
            "mirrors = [\"http://{}/\"]\nauto = true\n",
            super::qemu::MIRROR_ADDR
        ),
        0o644,
    )?;
    let root_json = built
        .extra
        .iter()
        .find(|(k, _)| k == "ROOT_JSON")
        .map(|(_, p)| p)
        .context("the fleet build gave no ROOT_JSON")?;
    copy(root_json, &etc.join("root.json"), 0o644)?;
    copy(
        trust.context("no trust policy was built")?,
        &etc.join("trust.toml"),
        0o644,
    )?;

    // The host: a fixed machine-id (the rollout seed, and no first-boot set-up), a
    // name, its root in fstab, the NIC configured by systemd-networkd.
    write(
        &root.join("etc/machine-id"),
        "5f1d9b3c2a7e4d6f8091a2b3c4d5e6f7\n",
        0o444,
    )?;
    write(&root.join("etc/hostname"), "ksplice-host\n", 0o644)?;
    write(
        &root.join("etc/fstab"),
        "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
        0o644,
    )?;
    write(
        &root.join("etc/systemd/network/10-mirror.network"),
        "# The only network: QEMU's restricted user-mode net, whose 10.0.2.100 is the host's mirror.\n\
         [Match]\nType=ether\n\n[Network]\nAddress=10.0.2.15/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
        0o644,
    )?;
    enable(&root, "multi-user.target.wants", "systemd-networkd.service")?;
    enable(
        &root,
        "network-online.target.wants",
        "systemd-networkd-wait-online.service",
    )?;

    // The kernel's modules the root needs (udev loads the NIC's).
    ModuleTree::scan(&h.env.modules)?.install(&ROOT_MODULES, &root, &h.env.release)?;

    // The test driver and what it reads.
    let guest = h.root.join("ci/guest");
    let lib = root.join("usr/local/lib/ksplice-e2e");
    std::fs::create_dir_all(lib.join("tests"))?;
    copy(&guest.join("lib.sh"), &lib.join("lib.sh"), 0o644)?;
    for t in ["cmdline-string-LOADED.test", "proc-version-LOADED.test"] {
        // Written for a sudo-capable bash host; the driver runs them as root with sh.
        let text = std::fs::read_to_string(h.patches.join(t))
            .with_context(|| format!("read {t}"))?
            .replace("sudo ", "");
        write(&lib.join("tests").join(t), &text, 0o644)?;
    }
    let env: String = built
        .env
        .iter()
        .chain(std::iter::once(&("STREAM".to_string(), "main".to_string())))
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    write(&lib.join("env"), &env, 0o644)?;
    std::fs::create_dir_all(root.join("usr/local/sbin"))?;
    copy(
        &guest.join("systemd/ksplice-e2e"),
        &root.join("usr/local/sbin/ksplice-e2e"),
        0o755,
    )?;
    copy(
        &guest.join("systemd/ksplice-e2e.service"),
        &root.join("etc/systemd/system/ksplice-e2e.service"),
        0o644,
    )?;
    enable(&root, "multi-user.target.wants", "ksplice-e2e.service")?;
    let state = root.join("var/lib/ksplice-e2e");
    std::fs::create_dir_all(&state)?;
    write(&state.join("stage"), "a\n", 0o644)?;

    // The image, made from the tree without mounting anything.
    sh(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "ksplice-root", "-d"])
        .arg(&root)
        .arg(disk)
        .arg(DISK_SIZE))?;
    Ok(())
}

/// `systemctl enable` for a root: the wants symlink to the unit in /lib/systemd/system
/// (or /etc/systemd/system for the driver).
fn enable(root: &Path, wants: &str, unit: &str) -> Result<()> {
    let dir = root.join("etc/systemd/system").join(wants);
    std::fs::create_dir_all(&dir)?;
    let target = if root.join("etc/systemd/system").join(unit).is_file() {
        format!("/etc/systemd/system/{unit}")
    } else if root.join("lib/systemd/system").join(unit).is_file() {
        format!("/lib/systemd/system/{unit}")
    } else {
        bail!("no unit {unit} in the root");
    };
    let link = dir.join(unit);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(target, &link)?;
    Ok(())
}

/// Busybox, the initramfs init and the disk's drivers.
fn make_initramfs(h: &Harness, tree: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox"))
        .context("copy /usr/bin/busybox (package busybox-static)")?;
    copy(
        &h.root.join("ci/guest/systemd/initramfs-init"),
        &tree.join("init"),
        0o755,
    )?;
    ModuleTree::scan(&h.env.modules)?.install(&INITRAMFS_MODULES, tree, &h.env.release)?;
    cpio::write_tree(tree, out)
}

/// Blocks the image really uses (it is sparse), in MB.
fn disk_used_mb(disk: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(disk)?.blocks() * 512 / 1_000_000)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn result(steps: &[(&str, bool)], passed: Option<bool>) -> GuestResult {
        GuestResult {
            started: true,
            passed,
            steps: steps
                .iter()
                .map(|(n, ok)| (n.to_string(), *ok, 0.0))
                .collect(),
            metrics: Vec::new(),
        }
    }

    /// A stage passes only with steps, all ok, and its end marker; anything missing fails it.
    #[test]
    fn a_stage_passes_only_when_complete() {
        let ended = Ended::Exited(Some(0));
        assert_eq!(
            verdict("a", &result(&[("x", true)], Some(true)), &ended),
            Ok(())
        );
        assert_eq!(
            verdict(
                "a",
                &result(&[("x", true), ("y", false)], Some(false)),
                &ended
            ),
            Err("stage a: step y failed".into())
        );
        assert_eq!(
            verdict("b", &result(&[("x", true)], None), &Ended::TimedOut),
            Err("stage b: did not finish (TimedOut)".into())
        );
        assert_eq!(
            verdict("c", &GuestResult::default(), &ended),
            Err("stage c: did not run (Exited(Some(0)))".into())
        );
        assert_eq!(
            verdict("d", &result(&[], Some(true)), &ended),
            Err("stage d: no steps reported".into())
        );
        assert!(verdict("a", &result(&[("x", true)], Some(false)), &ended).is_err());
    }
}
