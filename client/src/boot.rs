//! Crash-loop protection for the boot-time re-apply (`apply --installed --boot`).
//!
//! A live update that hangs or panics the kernel would, re-applied at every
//! boot, take the host down again and again. So the boot unit writes a
//! *boot-attempt marker* (the boot's id) before it re-applies updates, and a
//! later unit (`ksplice confirm-boot`, run by a timer after a configurable
//! uptime) removes it once the boot has proved itself. A boot that finds a
//! marker left by an earlier boot, never confirmed, does not re-apply: it
//! records a *hold*, logs why, and `status` reports it until an administrator
//! re-applies by hand (`ksplice apply --installed`, which releases the hold).
//! `ksplice=off` on the kernel command line stays the manual kill switch.
//!
//! Both files live in the state directory (0700, root's), are written
//! atomically with mode 0600, and are validated when read back.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::host::Host;

/// The marker of a boot that re-applied updates and is not yet confirmed.
pub const MARKER: &str = "boot-attempt";
/// The hold recorded when a boot found an unconfirmed marker.
pub const HOLD: &str = "held";
/// Both files are a few lines; anything longer is not ours.
const MAX_FILE: u64 = 4096;
/// The only format of both files.
const FORMAT: u32 = 1;

/// A boot that re-applied updates: which boot, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    pub format: u32,
    /// `/proc/sys/kernel/random/boot_id` of that boot.
    pub boot_id: String,
    /// When it started re-applying, RFC 3339 UTC.
    pub since: String,
}

/// Automatic apply is held: the boot `attempt` never confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub format: u32,
    /// The unconfirmed boot.
    pub attempt: Attempt,
    /// When a later boot found it and held automatic apply, RFC 3339 UTC.
    pub held_at: String,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "automatic apply held since {}: the boot {} that re-applied updates at {} was never confirmed; run `ksplice apply --installed` to re-apply and release the hold",
            self.held_at, self.attempt.boot_id, self.attempt.since
        )
    }
}

/// What the boot unit may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Re-apply; the marker for this boot is written.
    Proceed,
    /// Do not re-apply automatically.
    Held(Hold),
}

/// The running boot's id, validated (`8-4-4-4-12` lowercase hex).
pub fn current_boot_id(host: &Host<'_>) -> Result<String> {
    let path = host.path("/proc/sys/kernel/random/boot_id");
    let id = fsutil::read_trimmed(&path).map_err(|e| Error::io(&path, e))?;
    if is_uuid(&id) {
        Ok(id)
    } else {
        Err(invalid(&path, format!("not a boot id: {id:?}")))
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::BootMarker {
        path: path.to_owned(),
        reason,
    }
}

/// Reads a marker or hold file: no symlink, a regular file, capped, TOML of
/// the right shape. `None` when it does not exist.
fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(invalid(path, "not a regular file".into()));
    }
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(path, e))?;
    if text.len() as u64 > MAX_FILE {
        return Err(invalid(path, format!("longer than {MAX_FILE} bytes")));
    }
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| invalid(path, e.message().to_owned()))
}

fn check_attempt(path: &Path, a: &Attempt) -> Result<()> {
    if a.format != FORMAT {
        return Err(invalid(path, format!("unknown format {}", a.format)));
    }
    if !is_uuid(&a.boot_id) {
        return Err(invalid(path, format!("not a boot id: {:?}", a.boot_id)));
    }
    manifests::fleet::parse_utc("since", &a.since).map_err(|e| invalid(path, e.to_string()))?;
    Ok(())
}

fn read_attempt(path: &Path) -> Result<Option<Attempt>> {
    let a: Option<Attempt> = read(path)?;
    if let Some(a) = &a {
        check_attempt(path, a)?;
    }
    Ok(a)
}

/// The current hold, if automatic apply is held.
pub fn held(host: &Host<'_>) -> Result<Option<Hold>> {
    let path = host.state_dir.join(HOLD);
    let h: Option<Hold> = read(&path)?;
    if let Some(h) = &h {
        if h.format != FORMAT {
            return Err(invalid(&path, format!("unknown format {}", h.format)));
        }
        check_attempt(&path, &h.attempt)?;
        manifests::fleet::parse_utc("held_at", &h.held_at)
            .map_err(|e| invalid(&path, e.to_string()))?;
    }
    Ok(h)
}

fn write<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string(value).map_err(|e| invalid(path, e.to_string()))?;
    fsutil::write_atomic(path, text.as_bytes(), fsutil::PRIVATE_FILE)
}

fn marker_path(host: &Host<'_>) -> PathBuf {
    host.state_dir.join(MARKER)
}

fn mark(host: &Host<'_>, boot_id: String) -> Result<()> {
    fsutil::create_private_dir(&host.state_dir)?;
    let attempt = Attempt {
        format: FORMAT,
        boot_id,
        since: crate::state::now_utc(),
    };
    write(&marker_path(host), &attempt)
}

/// The boot unit's check before re-applying: held stays held; a marker of
/// another boot (never confirmed) becomes a hold; otherwise this boot is
/// marked and may proceed.
pub fn gate(host: &Host<'_>) -> Result<Gate> {
    if let Some(h) = held(host)? {
        return Ok(Gate::Held(h));
    }
    let boot_id = current_boot_id(host)?;
    let path = marker_path(host);
    match read_attempt(&path)? {
        Some(a) if a.boot_id != boot_id => {
            let hold = Hold {
                format: FORMAT,
                attempt: a,
                held_at: crate::state::now_utc(),
            };
            write(&host.state_dir.join(HOLD), &hold)?;
            fsutil::remove_durable(&path)?;
            Ok(Gate::Held(hold))
        }
        Some(_) => Ok(Gate::Proceed),
        None => {
            mark(host, boot_id)?;
            Ok(Gate::Proceed)
        }
    }
}

/// An administrator re-applies by hand: the hold is released and this boot
/// is marked (it too must be confirmed).
pub fn release(host: &Host<'_>) -> Result<Option<Hold>> {
    let was = held(host)?;
    let boot_id = current_boot_id(host)?;
    mark(host, boot_id)?;
    fsutil::remove_durable(&host.state_dir.join(HOLD))?;
    Ok(was)
}

/// What `confirm-boot` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    /// This boot's marker was removed.
    Confirmed(Attempt),
    /// No marker: nothing was re-applied in this boot, or it was confirmed.
    Nothing,
    /// The marker is another boot's (a hold is pending for the next boot
    /// unit); left alone.
    OtherBoot(Attempt),
}

/// `ksplice confirm-boot`: the boot proved itself; remove its marker.
pub fn confirm(host: &Host<'_>) -> Result<Confirmed> {
    let path = marker_path(host);
    let Some(a) = read_attempt(&path)? else {
        return Ok(Confirmed::Nothing);
    };
    if a.boot_id != current_boot_id(host)? {
        return Ok(Confirmed::OtherBoot(a));
    }
    fsutil::remove_durable(&path)?;
    Ok(Confirmed::Confirmed(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RealSys;

    const A: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";
    const B: &str = "1f0e0d0c-0b0a-4908-8706-050403020101";

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("proc/sys/kernel/random")).expect("proc");
            let f = Fixture { dir };
            f.boot(A);
            f
        }
        fn boot(&self, id: &str) {
            std::fs::write(
                self.dir.path().join("proc/sys/kernel/random/boot_id"),
                format!("{id}\n"),
            )
            .expect("boot_id");
        }
        fn host(&self) -> Host<'static> {
            Host::new(self.dir.path(), &RealSys)
        }
    }

    #[test]
    fn an_unconfirmed_boot_holds_the_next_one_until_released() {
        let f = Fixture::new();
        let host = f.host();
        assert_eq!(gate(&host).expect("gate"), Gate::Proceed);
        assert_eq!(gate(&host).expect("same boot"), Gate::Proceed);
        f.boot(B);
        let Gate::Held(h) = gate(&host).expect("gate") else {
            panic!("not held")
        };
        assert_eq!(h.attempt.boot_id, A);
        assert!(!host.state_dir.join(MARKER).exists());
        assert_eq!(held(&host).expect("held"), Some(h.clone()));
        // Held stays held across boots until someone acts.
        f.boot(A);
        assert!(matches!(gate(&host).expect("gate"), Gate::Held(_)));
        assert_eq!(release(&host).expect("release"), Some(h));
        assert_eq!(held(&host).expect("held"), None);
        assert_eq!(
            read_attempt(&host.state_dir.join(MARKER))
                .expect("marker")
                .map(|a| a.boot_id),
            Some(A.to_owned())
        );
    }

    #[test]
    fn a_confirmed_boot_lets_the_next_one_proceed() {
        let f = Fixture::new();
        let host = f.host();
        assert_eq!(confirm(&host).expect("confirm"), Confirmed::Nothing);
        assert_eq!(gate(&host).expect("gate"), Gate::Proceed);
        assert!(
            matches!(confirm(&host).expect("confirm"), Confirmed::Confirmed(a) if a.boot_id == A)
        );
        f.boot(B);
        assert_eq!(gate(&host).expect("gate"), Gate::Proceed);
        f.boot(A);
        // B's marker is not A's to confirm: the next boot unit will hold.
        assert!(
            matches!(confirm(&host).expect("confirm"), Confirmed::OtherBoot(a) if a.boot_id == B)
        );
        assert!(host.state_dir.join(MARKER).exists());
    }

    #[test]
    fn hostile_or_malformed_markers_are_refused() {
        let f = Fixture::new();
        let host = f.host();
        fsutil::create_private_dir(&host.state_dir).expect("state");
        let marker = host.state_dir.join(MARKER);
        type Make<'a> = Box<dyn Fn() + 'a>;
        let cases: [(&str, Make<'_>); 5] = [
            (
                "symlink",
                Box::new(|| std::os::unix::fs::symlink("/etc/passwd", &marker).expect("link")),
            ),
            (
                "too long",
                Box::new(|| std::fs::write(&marker, "#".repeat(5000)).expect("write")),
            ),
            (
                "bad boot id",
                Box::new(|| {
                    std::fs::write(
                        &marker,
                        "format = 1\nboot_id = \"../../x\"\nsince = \"2026-11-29T10:00:00Z\"\n",
                    )
                    .expect("write")
                }),
            ),
            (
                "unknown field",
                Box::new(|| {
                    std::fs::write(
                        &marker,
                        format!("format = 1\nboot_id = \"{A}\"\nsince = \"2026-11-29T10:00:00Z\"\nx = 1\n"),
                    )
                    .expect("write")
                }),
            ),
            (
                "fifo",
                Box::new(|| {
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        &marker,
                        rustix::fs::FileType::Fifo,
                        rustix::fs::Mode::from_raw_mode(0o600),
                        0,
                    )
                    .expect("mkfifo")
                }),
            ),
        ];
        for (what, make) in cases {
            let _ = std::fs::remove_file(&marker);
            make();
            assert!(
                matches!(
                    gate(&host),
                    Err(Error::BootMarker { .. } | Error::Io { .. })
                ),
                "{what} accepted"
            );
            assert!(confirm(&host).is_err(), "{what} confirmed");
        }
        std::fs::remove_file(&marker).expect("rm");
        f.boot("not-a-boot-id");
        assert!(matches!(gate(&host), Err(Error::BootMarker { .. })));
    }
}
