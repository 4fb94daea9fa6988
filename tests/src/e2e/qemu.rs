//! Boots Debian's kernel under QEMU (TCG) with an initramfs and a hard timeout.
//!
//! Two serial ports, each to its own file: ttyS0 carries what the guest's init and
//! scenarios print (the markers), ttyS1 is the kernel's console at loglevel 7, so
//! kernel messages never split a marker line and a guest that wedges (a soft lockup
//! that stops init from printing `dmesg`) still leaves its stack traces on the host.

use anyhow::{Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One guest boot.
#[derive(Debug, Clone)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub serial_log: PathBuf,
    /// The kernel console (ttyS1): every message up to KERN_INFO, with stack traces.
    pub kernel_log: PathBuf,
    /// Extra kernel command line words after the console set-up.
    pub append: String,
    pub timeout: Duration,
    /// When set, the guest gets one NIC on QEMU user-mode networking with
    /// `restrict=on` (no route out) and a single `guestfwd` rule: TCP to
    /// [`MIRROR_ADDR`] port 80 reaches this port on the host's 127.0.0.1.
    /// The rule's target is `cmd:socat`, spawned per guest connection: a
    /// `tcp:` target is one chardev connection made at start-up, so only the
    /// guest's first HTTP request would get through.
    pub mirror_port: Option<u16>,
    /// A raw disk image the guest sees as `/dev/vda` (virtio), kept across boots
    /// (the systemd-host scenario's Debian root).
    pub disk: Option<PathBuf>,
    /// Whether a guest reboot restarts the guest in the same run (no `-no-reboot`):
    /// the systemd-host scenario reboots for real. Otherwise a reboot ends the run.
    pub reboot: bool,
}

/// The guest's address of the host's loopback mirror (`guestfwd`).
pub const MIRROR_ADDR: &str = "10.0.2.100";

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// QEMU exited (the guest powered off, or QEMU failed) with this status.
    Exited(Option<i32>),
    /// The hard timeout fired and QEMU was killed.
    TimedOut,
}

impl Boot {
    /// The network options: none at all, or restricted user-mode networking
    /// whose only reachable address forwards to the loopback mirror.
    fn net_args(&self) -> Vec<String> {
        match self.mirror_port {
            None => vec!["-nic".into(), "none".into()],
            Some(port) => vec![
                "-netdev".into(),
                format!(
                    "user,id=n0,restrict=on,guestfwd=tcp:{MIRROR_ADDR}:80-cmd:socat - TCP:127.0.0.1:{port}"
                ),
                "-device".into(),
                "e1000,netdev=n0,romfile=".into(),
            ],
        }
    }

    /// Runs QEMU to completion, calling `on_line` for every serial line as it arrives.
    pub fn run(&self, mut on_line: impl FnMut(&str)) -> Result<(Ended, Duration)> {
        // KVM hangs on this machine; TCG with `-cpu max` boots Debian's kernel in ~10 s.
        // KASLR stays on (no `nokaslr`): run-pre matching must cope with it.
        // Two vCPUs on ONE TCG thread (`thread=single`, round-robin): with one host
        // thread per vCPU (MTTCG, QEMU 7.2), a vCPU can keep running a stale
        // translation of code another vCPU rewrote. The soak caught it: CPU#1 spun for
        // minutes at `cmdline_proc_show+0x0` (soft lockup) while memory there held the
        // 5-byte NOP ftrace had restored; the CPU still saw the int3 of the finished
        // text_poke_bp, and the kernel's int3 path for a breakpoint another CPU already
        // removed (kprobe_int3_handler) re-executes the instruction, so it looped.
        // Hardware serialises after text_poke_bp's sync IPIs; the guest stays SMP here.
        let _ = std::fs::remove_file(&self.serial_log);
        let _ = std::fs::remove_file(&self.kernel_log);
        let start = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg,thread=single", "-cpu", "max", "-m", "2G", "-smp", "2"])
            .args(["-nographic", "-monitor", "none"])
            .args(if self.reboot {
                None
            } else {
                Some("-no-reboot")
            })
            .args(self.net_args())
            .args(self.disk.iter().flat_map(|d| {
                [
                    "-drive".to_string(),
                    format!("file={},format=raw,if=virtio", d.display()),
                ]
            }))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            // `loglevel` after `quiet` wins. A soft lockup dumps every CPU's stack (so
            // the CPU that holds the others up shows too) and panics: the boot ends at
            // once (panic=-1 reboots, -no-reboot exits) instead of when the scenario's
            // time limit, up to the soak's 52 minutes, runs out.
            .arg(format!(
                "console=ttyS1 quiet loglevel=7 softlockup_all_cpu_backtrace=1 softlockup_panic=1 panic=-1 {}",
                self.append
            ))
            .arg("-serial")
            .arg(format!("file:{}", self.serial_log.display()))
            .arg("-serial")
            .arg(format!("file:{}", self.kernel_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start qemu-system-x86_64 (package qemu-system-x86)")?;
        let mut pos = 0u64;
        let mut partial = Vec::new();
        let mut feed = |pos: &mut u64, partial: &mut Vec<u8>| -> Result<()> {
            let Ok(mut f) = std::fs::File::open(&self.serial_log) else {
                return Ok(());
            };
            f.seek(SeekFrom::Start(*pos))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            *pos += buf.len() as u64;
            partial.extend_from_slice(&buf);
            while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=i).collect();
                on_line(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']));
            }
            Ok(())
        };
        let ended = loop {
            if let Some(st) = child.try_wait()? {
                break Ended::Exited(st.code());
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                break Ended::TimedOut;
            }
            feed(&mut pos, &mut partial)?;
            std::thread::sleep(Duration::from_millis(200));
        };
        feed(&mut pos, &mut partial)?;
        if !partial.is_empty() {
            on_line(String::from_utf8_lossy(&partial).trim_end());
        }
        if let Ended::Exited(code) = ended {
            if code != Some(0) {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                eprintln!("qemu exited with {code:?}: {}", err.trim());
            }
        }
        Ok((ended, start.elapsed()))
    }
}

/// Whether the machine can run the guest at all (qemu installed).
pub fn available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What a kernel console log shows of an oops, a warning, a trace or a lockup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    /// How many lines name a problem.
    pub count: usize,
    /// The first such line and the 79 after it (its stack trace).
    pub excerpt: Vec<String>,
}

/// The trouble in a boot's kernel console log (ttyS1), if any: the words of an
/// oops, a `WARN`, a stack trace, a soft lockup or a hung task.
pub fn kernel_trouble(path: &Path) -> Option<Trouble> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let bad = |l: &str| {
        [
            "BUG:",
            "Call Trace",
            "WARNING:",
            "Oops",
            "soft lockup",
            "blocked for more than",
        ]
        .iter()
        .any(|w| l.contains(w))
    };
    let first = lines.iter().position(|l| bad(l))?;
    Some(Trouble {
        count: lines.iter().filter(|l| bad(l)).count(),
        excerpt: lines[first..]
            .iter()
            .take(80)
            .map(|l| l.to_string())
            .collect(),
    })
}

/// Path helper so callers need not import Path.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.serial.log"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn kernel_trouble_starts_at_the_first_problem_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.log");
        std::fs::write(
            &p,
            "ok\r\n[ 1.0] WARNING: CPU: 0 at x\r\n[ 1.1] Call Trace:\r\n[ 1.2]  f+0x1\r\n",
        )
        .unwrap();
        let t = kernel_trouble(&p).unwrap();
        assert_eq!(t.count, 2);
        assert_eq!(
            t.excerpt,
            [
                "[ 1.0] WARNING: CPU: 0 at x",
                "[ 1.1] Call Trace:",
                "[ 1.2]  f+0x1"
            ]
        );
        std::fs::write(&p, "systemd[1]: Started ksplice.service\n").unwrap();
        assert_eq!(kernel_trouble(&p), None);
        assert_eq!(kernel_trouble(&dir.path().join("missing")), None);
    }
}
