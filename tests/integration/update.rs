//! `ksplice update` against TUF repositories written by tough's editor and
//! served from file:// and from an HTTP server on 127.0.0.1: the TUF attack
//! suite (each refusal named, the host unchanged), the HTTP failure modes,
//! and the selection end to end.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use client::error::Error;
use client::update::config::Config;
use client::update::tuf::Refusal;
use client::update::{self, Mode as Run, Options, Outcome, Report};
use manifests::fleet::{format_utc, TargetInfo, DEFAULT_CHANNEL};
use manifests::{SigningKey, Stream};
use time::OffsetDateTime;

use super::{FakeKernel, Fixture, Mode};
use crate::tuf_repo::{in_hours, Repo, Roles, TestKey};

// ---- the fleet fixture ---------------------------------------------------------------------

struct Fleet {
    fx: Fixture,
    _tmp: tempfile::TempDir,
    repo: Repo,
}

fn info(id: &str, stream: Option<u32>) -> TargetInfo {
    let mut m = Fixture::manifest(id);
    m.stream = stream.map(|level| Stream {
        name: "main".into(),
        level,
        replaces: vec![],
    });
    TargetInfo::from_manifest(
        &m,
        DEFAULT_CHANNEL,
        OffsetDateTime::now_utc() - time::Duration::hours(1),
        vec![],
    )
    .expect("target info")
}

impl Fleet {
    /// A host trusting root 1 of a repository that holds `fix-1`, with a
    /// client.toml naming `mirrors` (the repository's file:// URL if empty).
    fn new() -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(&tmp.path().join("repo"));
        Fleet::with_repo(tmp, repo)
    }

    fn with_repo(tmp: tempfile::TempDir, mut repo: Repo) -> Fleet {
        let fx = Fixture::new();
        let fleet_pkg = fx.package("fix-1", |_| {});
        repo.add(&fleet_pkg, &info("fix-1", None));
        repo.publish();
        fs::write(fx.root.join("etc/ksplice/root.json"), repo.root_bytes(1)).expect("root");
        fs::write(
            fx.root.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .expect("machine-id");
        let fleet = Fleet {
            fx,
            _tmp: tmp,
            repo,
        };
        let url = fleet.file_url();
        fleet.config(&[url], "");
        fleet
    }

    fn file_url(&self) -> String {
        format!("file://{}/", self.repo.dir.display())
    }

    fn config(&self, mirrors: &[String], extra: &str) {
        let list: Vec<String> = mirrors.iter().map(|m| format!("{m:?}")).collect();
        fs::write(
            self.fx.root.join("etc/ksplice/client.toml"),
            format!("mirrors = [{}]\n{extra}\n", list.join(", ")),
        )
        .expect("client.toml");
    }

    fn run_at(&self, mode: Run, now: OffsetDateTime) -> Result<Report, Error> {
        let sys = FakeKernel::new(&self.fx.root, Mode::Normal);
        let host = self.fx.host(&sys);
        let cfg = Config::load(&host, &self.fx.root.join("etc/ksplice/client.toml"))?;
        update::update(&host, &cfg, Options { mode, now }, &mut |_| {})
    }

    fn run(&self, mode: Run) -> Result<Report, Error> {
        self.run_at(mode, OffsetDateTime::now_utc())
    }

    fn report(&self) -> Report {
        self.run(Run::Apply).expect("update")
    }

    /// Every file of the host that an update could change: the state
    /// directory (journal, packages, TUF metadata, downloads), the loaded
    /// modules and livepatches, and the simulated kernel's log.
    fn host_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for d in ["var/lib/ksplice", "sys/module", "sys/kernel/livepatch"] {
            walk(&self.fx.root.join(d), &mut out);
        }
        let log = self.fx.root.join("kernel.log");
        out.insert(log.clone(), fs::read(&log).unwrap_or_default());
        out
    }

    fn trusted(&self, file: &str) -> Option<serde_json::Value> {
        let p = self.fx.state_dir().join("tuf").join(file);
        fs::read(p)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("json"))
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.insert(p.clone(), Vec::new());
            walk(&p, out);
        } else {
            out.insert(p.clone(), fs::read(&p).unwrap_or_default());
        }
    }
}

/// Files only: a refused run may leave the empty directories it created.
fn files_only(m: BTreeMap<PathBuf, Vec<u8>>) -> BTreeMap<PathBuf, Vec<u8>> {
    m.into_iter().filter(|(p, _)| !p.is_dir()).collect()
}

/// Runs an update that must be refused with `expect`, and checks that the
/// host is exactly as before.
fn assert_refused(fleet: &Fleet, expect: impl Fn(&Refusal) -> bool) -> Report {
    let before = files_only(fleet.host_files());
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Refused, "{r:#?}");
    assert_eq!(r.outcome.exit_code(), 3);
    let refusal = r.errors[0].refusal.as_ref().expect("a named refusal");
    assert!(expect(refusal), "wrong refusal: {refusal:?}");
    assert!(r.applied.is_empty());
    assert_eq!(files_only(fleet.host_files()), before, "the host changed");
    r
}

fn journal_ids(fleet: &Fleet) -> Vec<String> {
    let sys = FakeKernel::new(&fleet.fx.root, Mode::Normal);
    let host = fleet.fx.host(&sys);
    client::state::State::peek(&host)
        .expect("journal")
        .entries()
        .iter()
        .map(|e| e.id.clone())
        .collect()
}

// ---- the normal flow -----------------------------------------------------------------------

#[test]
fn update_applies_then_is_up_to_date_and_check_changes_nothing() {
    let mut fleet = Fleet::new();
    // --check first: says what it would apply, writes nothing at all.
    let before = fleet.host_files();
    let r = fleet.run(Run::Check).expect("check");
    assert_eq!(r.outcome, Outcome::WouldApply);
    assert_eq!(r.outcome.exit_code(), 1);
    assert_eq!(r.chosen, ["fix-1"]);
    assert_eq!(fleet.host_files(), before);
    assert!(!fleet.fx.state_dir().exists());

    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    assert_eq!(r.outcome.exit_code(), 11);
    assert_eq!(r.applied, ["fix-1"]);
    assert_eq!(r.mirror.as_deref(), Some(fleet.file_url().as_str()));
    assert_eq!(journal_ids(&fleet), ["fix-1"]);
    assert!(fleet.fx.loads().iter().any(|l| l == "load ksplice_fix_1"));
    // Trusted metadata persisted, private.
    let tuf = fleet.fx.state_dir().join("tuf");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&tuf).expect("tuf").permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fleet.trusted("timestamp.json").expect("ts")["signed"]["version"],
        1
    );
    // Downloads are not left behind.
    let leftovers: Vec<_> = fs::read_dir(fleet.fx.state_dir().join("downloads"))
        .expect("downloads")
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::UpToDate);
    assert_eq!(r.outcome.exit_code(), 0);

    // A new stand-alone update: --check sees it and leaves the trusted
    // metadata at version 1.
    let pkg = fleet.fx.package("fix-2", |_| {});
    fleet.repo.add(&pkg, &info("fix-2", None));
    fleet.repo.publish();
    let before = fleet.host_files();
    let r = fleet.run(Run::Check).expect("check");
    assert_eq!(r.chosen, ["fix-2"]);
    assert_eq!(fleet.host_files(), before);
    assert_eq!(fleet.report().applied, ["fix-2"]);
    assert_eq!(
        fleet.trusted("timestamp.json").expect("ts")["signed"]["version"],
        2
    );
}

#[test]
fn update_timer_does_nothing_with_auto_off() {
    let fleet = Fleet::new();
    let before = fleet.host_files();
    let r = fleet.run(Run::Timer).expect("timer");
    assert_eq!(r.outcome, Outcome::AutoOff);
    assert_eq!(r.outcome.exit_code(), 0);
    assert_eq!(fleet.host_files(), before);
    let url = fleet.file_url();
    fleet.config(&[url], "auto = true");
    assert_eq!(
        fleet.run(Run::Timer).expect("timer").outcome,
        Outcome::Applied
    );
}

/// Crash-loop protection: while automatic apply is held (an earlier boot
/// that re-applied updates never confirmed), the timer applies nothing; a
/// run by hand still does.
#[test]
fn update_timer_does_nothing_while_automatic_apply_is_held() {
    let fleet = Fleet::new();
    let url = fleet.file_url();
    fleet.config(&[url], "auto = true");
    fs::create_dir_all(fleet.fx.state_dir()).expect("state dir");
    fs::write(
        fleet.fx.state_dir().join(client::boot::HOLD),
        "format = 1\nheld_at = \"2026-11-29T10:05:00Z\"\n\n[attempt]\nformat = 1\nboot_id = \"0f0e0d0c-0b0a-4908-8706-050403020100\"\nsince = \"2026-11-29T09:00:00Z\"\n",
    )
    .expect("hold");
    let before = fleet.host_files();
    let r = fleet.run(Run::Timer).expect("timer");
    assert_eq!(r.outcome, Outcome::Held);
    assert_eq!(r.outcome.exit_code(), client::exit::HELD);
    assert_eq!(fleet.host_files(), before);
    assert_eq!(fleet.report().outcome, Outcome::Applied);
}

#[test]
fn update_wave_not_started_waits_and_says_when() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut repo = Repo::new(&tmp.path().join("repo"));
    let fx = Fixture::new();
    let pkg = fx.package("late", |_| {});
    let mut late = info("late", None);
    let start = OffsetDateTime::now_utc() + time::Duration::days(3);
    // One wave for every seed, in three days.
    late.waves = vec![manifests::fleet::Wave {
        seeds_below: manifests::fleet::SEED_RANGE,
        start: format_utc(start),
    }];
    repo.add(&pkg, &late);
    drop(fx);
    let fleet = Fleet::with_repo(tmp, repo);
    let before = files_only(fleet.host_files());
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "fix-1 has no wave");
    assert_eq!(r.applied, ["fix-1"]);
    assert_eq!(r.waiting.len(), 1);
    assert_eq!(r.waiting[0].id, "late");
    assert_eq!(format_utc(r.waiting[0].from), format_utc(start));
    assert_ne!(files_only(fleet.host_files()), before);
    // After the wave started (an injected clock), it is applied.
    let r = fleet
        .run_at(Run::Apply, start + time::Duration::seconds(1))
        .expect("later");
    assert_eq!(r.applied, ["late"]);
}

#[test]
fn update_applies_the_highest_stream_level_and_never_goes_below_the_applied_one() {
    let mut fleet = Fleet::new();
    for level in [1, 2] {
        let id = format!("main-{level}");
        let pkg = fleet.fx.package(&id, |m| {
            m.stream = Some(Stream {
                name: "main".into(),
                level,
                replaces: vec![],
            })
        });
        fleet.repo.add(&pkg, &info(&id, Some(level)));
    }
    fleet.repo.publish();
    let r = fleet.report();
    // The stream first: its switch replaces every live patch, so it cannot
    // come after a stand-alone update (which then stacks on it).
    assert_eq!(r.applied, ["main-2", "fix-1"], "{r:#?}");
    // The repository stops listing level 2: level 1 is not a way forward.
    fleet.repo.remove("ksplice-main-2.tar.gz");
    fleet.repo.publish();
    let before = files_only(fleet.host_files());
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::UpToDate, "{r:#?}");
    let main1 = r
        .considered
        .iter()
        .find(|c| c.id == "main-1")
        .expect("main-1");
    assert_eq!(main1.decision, client::update::select::Decision::Superseded);
    let after = files_only(fleet.host_files());
    // Only the trusted metadata moved on.
    let changed: Vec<&PathBuf> = after
        .keys()
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(
        changed
            .iter()
            .all(|p| p.to_string_lossy().contains("/tuf/")),
        "{changed:?}"
    );
}

// ---- the TUF attack suite --------------------------------------------------------------------

#[test]
fn tuf_arbitrary_package_is_refused() {
    let fleet = Fleet::new();
    let file = fleet.repo.target_file("ksplice-fix-1.tar.gz");
    let mut bytes = fs::read(&file).expect("target");
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&file, bytes).expect("tamper");
    assert_refused(&fleet, |r| matches!(r, Refusal::TargetHash { .. }));
}

#[test]
fn tuf_rollback_of_timestamp_is_refused() {
    let mut fleet = Fleet::new();
    let v1 = fleet.repo.save();
    fleet.repo.publish();
    fleet.report();
    fleet.repo.replay(&v1, "timestamp.json");
    assert_refused(
        &fleet,
        |r| matches!(r, Refusal::Rollback { role, .. } if role.starts_with("timestamp")),
    );
}

#[test]
fn tuf_rollback_of_snapshot_is_refused() {
    let mut fleet = Fleet::new();
    fleet.repo.publish();
    fleet.report();
    // A fresh timestamp (version 3) pointing at snapshot version 1.
    fleet.repo.publish_with(|p| p.versions = Some((3, 1, 3)));
    assert_refused(
        &fleet,
        |r| matches!(r, Refusal::Rollback { role, .. } if role.starts_with("snapshot")),
    );
}

#[test]
fn tuf_rollback_of_targets_is_refused() {
    let mut fleet = Fleet::new();
    fleet.repo.publish();
    fleet.report();
    // Fresh timestamp and snapshot listing targets version 1.
    fleet.repo.publish_with(|p| p.versions = Some((3, 3, 1)));
    assert_refused(
        &fleet,
        |r| matches!(r, Refusal::Rollback { role, .. } if role.starts_with("targets")),
    );
}

#[test]
fn tuf_freeze_expired_timestamp_is_refused() {
    let mut fleet = Fleet::new();
    fleet
        .repo
        .publish_with(|p| p.timestamp_expires = in_hours(-1));
    let r = assert_refused(
        &fleet,
        |r| matches!(r, Refusal::Expired { role } if role == "timestamp metadata"),
    );
    assert!(
        r.errors[0].error.contains("timestamp metadata expired"),
        "{}",
        r.errors[0].error
    );
}

#[test]
fn tuf_mix_and_match_snapshot_is_refused() {
    let mut fleet = Fleet::new();
    let v1 = fleet.repo.save();
    let pkg = fleet.fx.package("fix-2", |_| {});
    fleet.repo.add(&pkg, &info("fix-2", None));
    fleet.repo.publish();
    // Snapshot 2 replaced by snapshot 1's bytes: what timestamp 2 signed
    // for is another file.
    fs::write(
        fleet.repo.metadata().join("2.snapshot.json"),
        &v1["1.snapshot.json"],
    )
    .expect("mix");
    assert_refused(&fleet, |r| matches!(r, Refusal::MixAndMatch { .. }));
}

#[test]
fn tuf_fast_forward_attack_recovers_after_timestamp_key_rotation() {
    let mut fleet = Fleet::new();
    // The attacker holds the timestamp key and fast-forwards the host to
    // timestamp version 1000.
    fleet.repo.publish_with(|p| p.versions = Some((1000, 1, 1)));
    assert_eq!(fleet.report().outcome, Outcome::Applied);
    assert_eq!(
        fleet.trusted("timestamp.json").expect("ts")["signed"]["version"],
        1000
    );
    // The honest repository's next timestamp is now a "rollback".
    fleet.repo.publish();
    assert_refused(&fleet, |r| matches!(r, Refusal::Rollback { .. }));
    // The repository rotates the timestamp key: the host drops the
    // fast-forwarded timestamp and follows the repository again.
    fleet
        .repo
        .rotate(|roles| roles.timestamp = (vec![TestKey(5)], 1));
    let pkg = fleet.fx.package("fix-2", |_| {});
    fleet.repo.add(&pkg, &info("fix-2", None));
    fleet.repo.publish();
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    assert_eq!(r.applied, ["fix-2"]);
    assert_eq!(
        fleet.trusted("timestamp.json").expect("ts")["signed"]["version"],
        3
    );
    assert_eq!(
        fleet.trusted("root.json").expect("root")["signed"]["version"],
        2
    );
}

#[test]
fn tuf_endless_data_target_longer_than_signed_is_refused() {
    let fleet = Fleet::new();
    let file = fleet.repo.target_file("ksplice-fix-1.tar.gz");
    let mut bytes = fs::read(&file).expect("target");
    bytes.extend(vec![0u8; 1 << 20]);
    fs::write(&file, bytes).expect("grow");
    assert_refused(&fleet, |r| matches!(r, Refusal::TooLarge { .. }));
}

#[test]
fn tuf_endless_data_metadata_over_limit_is_refused() {
    let fleet = Fleet::new();
    // Valid JSON, valid signature, 2 MiB: over the 1 MiB timestamp limit.
    let path = fleet.repo.metadata().join("timestamp.json");
    let mut bytes = fs::read(&path).expect("timestamp");
    bytes.extend(vec![b' '; 2 << 20]);
    fs::write(&path, bytes).expect("pad");
    assert_refused(
        &fleet,
        |r| matches!(r, Refusal::TooLarge { what, max } if what.contains("timestamp") && *max == 1 << 20),
    );
}

#[test]
fn tuf_threshold_not_met_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let roles = Roles {
        timestamp: (vec![TestKey(4), TestKey(5)], 2),
        ..Roles::default()
    };
    let repo = Repo::with_roles(&tmp.path().join("repo"), roles);
    let fleet = Fleet::with_repo(tmp, repo);
    fleet.repo.tamper_json("timestamp.json", |v| {
        v["signatures"]
            .as_array_mut()
            .expect("signatures")
            .truncate(1);
    });
    let r = assert_refused(
        &fleet,
        |r| matches!(r, Refusal::Signature { role, .. } if role == "timestamp metadata"),
    );
    assert!(
        r.errors[0].error.contains("threshold"),
        "{}",
        r.errors[0].error
    );
}

#[test]
fn tuf_root_rotation_chain_valid_is_followed() {
    let mut fleet = Fleet::new();
    fleet
        .repo
        .rotate(|roles| roles.root = (vec![TestKey(6)], 1));
    fleet
        .repo
        .rotate(|roles| roles.targets = (vec![TestKey(7)], 1));
    fleet.repo.publish();
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    assert_eq!(
        fleet.trusted("root.json").expect("root")["signed"]["version"],
        3
    );
    // The next run starts from the persisted root 3, not the installed 1:
    // a later 2.root.json forged with root 1's key is never read.
    fs::write(fleet.repo.metadata().join("2.root.json"), b"not json").expect("break 2");
    assert_eq!(fleet.report().outcome, Outcome::UpToDate);
}

#[test]
fn tuf_root_rotation_chain_broken_is_refused() {
    let mut fleet = Fleet::new();
    fleet
        .repo
        .rotate_unsigned_by_old(|roles| roles.root = (vec![TestKey(6)], 1));
    fleet.repo.publish();
    assert_refused(
        &fleet,
        |r| matches!(r, Refusal::Signature { role, .. } if role == "root metadata"),
    );
}

#[test]
fn tuf_bad_first_mirror_then_good_second_applies_from_the_second() {
    let fleet = Fleet::new();
    // Mirror 1: a copy of the repository with its package replaced.
    let bad = fleet._tmp.path().join("bad-mirror");
    copy_dir(&fleet.repo.dir, &bad);
    let name = fleet
        .repo
        .target_file("ksplice-fix-1.tar.gz")
        .file_name()
        .expect("name")
        .to_owned();
    let target = bad.join("targets").join(name);
    let mut bytes = fs::read(&target).expect("target");
    bytes[0] ^= 1;
    fs::write(&target, bytes).expect("tamper");
    let bad_url = format!("file://{}/", bad.display());
    let good_url = fleet.file_url();
    fleet.config(&[bad_url.clone(), good_url.clone()], "");
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    assert_eq!(r.mirror.as_deref(), Some(good_url.as_str()));
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].mirror, bad_url);
    assert!(matches!(
        r.errors[0].refusal,
        Some(Refusal::TargetHash { .. })
    ));
}

#[test]
fn tuf_valid_package_not_signed_by_trusted_keys_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut repo = Repo::new(&tmp.path().join("repo"));
    let fx = Fixture::new();
    let stranger = SigningKey::from_seed(&[9; 32]);
    let pkg = fx.package_signed("rogue", |_| {}, &stranger);
    repo.add(&pkg, &info("rogue", None));
    let fleet = Fleet::with_repo(tmp, repo);
    let before = files_only(fleet.host_files());
    let err = fleet.run(Run::Apply).expect_err("refused");
    assert!(matches!(err, Error::Package { .. }), "{err}");
    assert_eq!(err.exit_code(), 3);
    assert_eq!(files_only(fleet.host_files()), before);
    drop(fx);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).expect("copy");
        }
    }
}

// ---- HTTP on 127.0.0.1 ----------------------------------------------------------------------

/// What the test server does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// The file, honouring `Range: bytes=N-`.
    Serve,
    /// The file's headers, then only this many body bytes, then close.
    Cut(usize),
    /// Never answers (until the server stops).
    Stall,
    /// The file followed by this many more bytes (Content-Length says so).
    More(usize),
    /// The whole file with 200, whatever the Range header says.
    IgnoreRange,
    /// HTTP 500.
    Fail,
}

type Rule = dyn Fn(&str, usize) -> Act + Send + Sync;
/// `(path, Range header)` of each request the server read.
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A file server for one repository directory on 127.0.0.1, written for
/// these tests because they need what a well-behaved server never does:
/// cut a body short and close, stall, ignore Range. One request per
/// connection (`Connection: close`).
struct Server {
    addr: SocketAddr,
    /// `(path, range header)` of each request, in order.
    log: RequestLog,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(root: &Path, rule: Arc<Rule>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, log2, stop2) = (root.to_owned(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            let mut workers = Vec::new();
            // Bounded: the test ends the server; a forgotten one ends itself.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let Some((path, range)) = read_request(&stream) else {
                            continue;
                        };
                        let n = counts.entry(path.clone()).or_default();
                        let act = rule(&path, *n);
                        *n += 1;
                        log2.lock()
                            .expect("log")
                            .push((path.clone(), range.clone()));
                        let (root, stop3) = (root.clone(), stop2.clone());
                        workers.push(std::thread::spawn(move || {
                            respond(stream, &root, &path, range, act, &stop3)
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Server {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(mut stream: &TcpStream) -> Option<(String, Option<String>)> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && buf.len() < 16 * 1024 {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_owned());
    Some((path, range))
}

fn respond(
    mut stream: TcpStream,
    root: &Path,
    path: &str,
    range: Option<String>,
    act: Act,
    stop: &AtomicBool,
) {
    if act == Act::Stall {
        let until = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        return;
    }
    let head = |s: &mut TcpStream, status: &str, len: usize, extra: &str| {
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n"
        );
    };
    let file = root.join(path.trim_start_matches('/'));
    let body = match (act, fs::read(&file)) {
        (Act::Fail, _) => {
            head(&mut stream, "500 Internal Server Error", 0, "");
            return;
        }
        (_, Ok(b)) => b,
        (_, Err(_)) => {
            head(&mut stream, "404 Not Found", 0, "");
            return;
        }
    };
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match (act, from) {
        (Act::Serve, Some(from)) if from < body.len() => {
            let extra = format!(
                "Content-Range: bytes {from}-{}/{}\r\n",
                body.len() - 1,
                body.len()
            );
            head(
                &mut stream,
                "206 Partial Content",
                body.len() - from,
                &extra,
            );
            let _ = stream.write_all(&body[from..]);
        }
        (Act::Cut(n), _) => {
            head(&mut stream, "200 OK", body.len(), "");
            let _ = stream.write_all(&body[..n.min(body.len())]);
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        (Act::More(n), _) => {
            head(&mut stream, "200 OK", body.len() + n, "");
            let _ = stream.write_all(&body);
            let _ = stream.write_all(&vec![b'x'; n]);
        }
        _ => {
            head(&mut stream, "200 OK", body.len(), "");
            let _ = stream.write_all(&body);
        }
    }
}

fn is_target(path: &str) -> bool {
    path.starts_with("/targets/")
}

/// A fleet whose only mirror is the test server, with short timeouts.
fn http_fleet(rule: Arc<Rule>) -> (Fleet, Server) {
    let fleet = Fleet::new();
    let server = Server::start(&fleet.repo.dir, rule);
    fleet.config(
        &[server.url()],
        "[timeouts]\nconnect = \"3s\"\nread = \"3s\"\ntotal = \"60s\"",
    );
    (fleet, server)
}

#[test]
fn http_normal_fetch_applies() {
    let (fleet, server) = http_fleet(Arc::new(|_: &str, _: usize| Act::Serve));
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    let paths: Vec<String> = server.requests().into_iter().map(|(p, _)| p).collect();
    assert!(
        paths.contains(&"/metadata/timestamp.json".to_owned()),
        "{paths:?}"
    );
    assert!(paths.contains(&"/metadata/1.snapshot.json".to_owned()));
    assert!(paths.iter().any(|p| p.ends_with(".ksplice-fix-1.tar.gz")));
}

#[test]
fn http_truncated_body_is_a_network_error_and_changes_nothing_but_the_partial() {
    let (fleet, _server) = http_fleet(Arc::new(|p: &str, _: usize| {
        if is_target(p) {
            Act::Cut(100)
        } else {
            Act::Serve
        }
    }));
    let before = files_only(fleet.host_files());
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Unreachable, "{r:#?}");
    assert_eq!(r.outcome.exit_code(), 12);
    assert_eq!(r.errors[0].kind, "network");
    assert!(journal_ids(&fleet).is_empty());
    // Only the partial download is new.
    let after = files_only(fleet.host_files());
    let new: Vec<&PathBuf> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].to_string_lossy().ends_with(".part"));
    assert_eq!(after[new[0]].len(), 100);
}

#[test]
fn http_stalled_server_times_out() {
    let (fleet, _server) = http_fleet(Arc::new(|_: &str, _: usize| Act::Stall));
    let before = files_only(fleet.host_files());
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Unreachable, "{r:#?}");
    assert_eq!(r.errors[0].kind, "network");
    assert_eq!(files_only(fleet.host_files()), before);
}

#[test]
fn http_more_bytes_than_the_length_is_refused() {
    let (fleet, _server) = http_fleet(Arc::new(|p: &str, _: usize| {
        if is_target(p) {
            Act::More(300 * 1024)
        } else {
            Act::Serve
        }
    }));
    let before = files_only(fleet.host_files());
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Refused, "{r:#?}");
    assert!(matches!(
        r.errors[0].refusal,
        Some(Refusal::TooLarge { .. })
    ));
    assert_eq!(files_only(fleet.host_files()), before);
}

#[test]
fn http_interrupted_download_resumes_with_a_range_request() {
    let (fleet, server) = http_fleet(Arc::new(|p: &str, n: usize| {
        if is_target(p) && n == 0 {
            Act::Cut(300)
        } else {
            Act::Serve
        }
    }));
    assert_eq!(fleet.report().outcome, Outcome::Unreachable);
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    let ranges: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .filter(|(p, _)| is_target(p))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=300-".to_owned())]);
    assert_eq!(journal_ids(&fleet), ["fix-1"]);
}

#[test]
fn http_resume_ignored_by_the_server_restarts_from_zero() {
    let (fleet, server) = http_fleet(Arc::new(|p: &str, n: usize| match (is_target(p), n) {
        (true, 0) => Act::Cut(300),
        (true, _) => Act::IgnoreRange,
        _ => Act::Serve,
    }));
    assert_eq!(fleet.report().outcome, Outcome::Unreachable);
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    // The second request asked for the rest, got the whole file with 200,
    // and the download started over from byte 0.
    let ranges: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .filter(|(p, _)| is_target(p))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=300-".to_owned())]);
    assert_eq!(journal_ids(&fleet), ["fix-1"]);
}

#[test]
fn http_failing_mirror_falls_back_to_the_next() {
    let fleet = Fleet::new();
    let bad = Server::start(&fleet.repo.dir, Arc::new(|_: &str, _: usize| Act::Fail));
    let good = Server::start(&fleet.repo.dir, Arc::new(|_: &str, _: usize| Act::Serve));
    fleet.config(&[bad.url(), good.url()], "");
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    assert_eq!(r.mirror.as_deref(), Some(good.url().as_str()));
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].kind, "network");
    assert!(r.errors[0].error.contains("500"), "{}", r.errors[0].error);
    // Both unreachable: exit 12.
    drop(good);
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}/", dead.local_addr().expect("addr"));
    drop(dead);
    fleet.config(&[bad.url(), dead_url], "");
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Unreachable);
    assert_eq!(r.outcome.exit_code(), 12);
    assert_eq!(r.errors.len(), 2);
}

// ---- repositories written by python-tuf -----------------------------------------------------

/// The python of the venv `ci/setup-python` makes (python-tuf and
/// securesystemslib); a missing venv fails the test, never skips it.
fn python_tuf() -> PathBuf {
    let cache = std::env::var_os("KSPLICE_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ksplice-ci"));
    let python = cache.join("pyenv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run ci/setup-python (a venv with python-tuf)",
        python.display()
    );
    python
}

/// Repositories for `fix-1` written by tests/interop/python_tuf_repo.py, and
/// a host trusting the chosen variant's root.
fn python_fleet(variant: &str) -> (Fleet, PathBuf) {
    let fleet = Fleet::new();
    let out = fleet._tmp.path().join("python-tuf");
    let pkg = fleet.fx.package("py-fix", |_| {});
    let info_path = fleet._tmp.path().join("info.json");
    fs::write(
        &info_path,
        serde_json::to_vec(&info("py-fix", None)).expect("json"),
    )
    .expect("info");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python_tuf_repo.py");
    let status = std::process::Command::new(python_tuf())
        .arg(&script)
        .arg(&out)
        .arg(&pkg)
        .arg(&info_path)
        .status()
        .expect("run python_tuf_repo.py");
    assert!(status.success(), "python_tuf_repo.py failed: {status}");
    let repo = out.join(variant);
    fs::write(
        fleet.fx.root.join("etc/ksplice/root.json"),
        fs::read(repo.join("metadata/1.root.json")).expect("root"),
    )
    .expect("install root");
    fleet.config(&[format!("file://{}/", repo.display())], "");
    (fleet, repo)
}

#[test]
fn interop_python_tuf_valid_repository_is_applied_and_its_rollback_refused() {
    let (fleet, repo) = python_fleet("valid");
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    assert_eq!(r.applied, ["py-fix"]);
    // python-tuf's older, correctly signed timestamp: a rollback.
    fs::copy(
        repo.join("rollback-timestamp.json"),
        repo.join("metadata/timestamp.json"),
    )
    .expect("replay");
    assert_refused(
        &fleet,
        |r| matches!(r, Refusal::Rollback { role, .. } if role.starts_with("timestamp")),
    );
}

#[test]
fn interop_python_tuf_expired_timestamp_is_refused() {
    let (fleet, _) = python_fleet("expired-timestamp");
    assert_refused(&fleet, |r| matches!(r, Refusal::Expired { .. }));
}

#[test]
fn interop_python_tuf_bad_signature_is_refused() {
    let (fleet, _) = python_fleet("bad-signature");
    assert_refused(
        &fleet,
        |r| matches!(r, Refusal::Signature { role, .. } if role == "timestamp metadata"),
    );
}

/// Not a test: writes a repository for the client's benchmarks with
/// `KSPLICE_BENCH_TARGETS` targets (default 1000), all for another kernel,
/// into `KSPLICE_BENCH_REPO`. Run with `--ignored`.
#[test]
#[ignore]
fn bench_write_repository() {
    let Some(dir) = std::env::var_os("KSPLICE_BENCH_REPO") else {
        return;
    };
    let n: usize = std::env::var("KSPLICE_BENCH_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut repo = Repo::new(Path::new(&dir));
    let fx = Fixture::new();
    let pkg = fx.package("bench", |_| {});
    for i in 0..n {
        let mut i_info = info(&format!("bench-{i}"), Some(i as u32 + 1));
        i_info.kernel.build_id = "ab".repeat(20);
        let mut bytes = fs::read(&pkg).expect("pkg");
        bytes.extend(i.to_le_bytes());
        repo.add_bytes(&i_info.target_name(), bytes, Some(i_info));
    }
    repo.publish();
}

#[test]
fn http_configured_proxy_is_used() {
    let fleet = Fleet::new();
    // The "proxy" is the test server: it sees the tunnel request for the
    // mirror, refuses it, and the mirror counts as unreachable.
    let proxy = Server::start(&fleet.repo.dir, Arc::new(|_: &str, _: usize| Act::Fail));
    let mirror = "http://127.0.0.1:9/".to_owned();
    fleet.config(
        &[mirror],
        &format!(
            "proxy = \"http://{}\"\n[timeouts]\nconnect = \"3s\"\nread = \"3s\"",
            proxy.addr
        ),
    );
    let r = fleet.report();
    assert_eq!(r.outcome, Outcome::Unreachable, "{r:#?}");
    let seen: Vec<String> = proxy.requests().into_iter().map(|(p, _)| p).collect();
    assert!(
        seen.iter().any(|p| p.contains("127.0.0.1:9")),
        "the proxy saw {seen:?}"
    );
}

#[test]
fn http_ca_file_without_certificates_is_a_configuration_error() {
    let fleet = Fleet::new();
    let ca = fleet.fx.root.join("etc/ksplice/mirror-ca.pem");
    fs::write(&ca, "not a certificate\n").expect("ca");
    fleet.config(
        &["https://127.0.0.1:9/".to_owned()],
        "ca_file = \"/etc/ksplice/mirror-ca.pem\"",
    );
    let err = fleet.run(Run::Apply).expect_err("refused");
    assert!(
        matches!(
            err,
            Error::CaFile {
                source: client::update::transport::CaFileError::NoCertificate,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.exit_code(), 7);
}

// ---- HTTPS with a test CA (issue 10: custom CA, proxies) -------------------------------------

/// A certificate authority made at test time; it issues the test servers'
/// certificates.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ksplice test mirror CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A rustls server configuration with a certificate this CA issued for
    /// `names` (DNS names or IP addresses).
    fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ksplice test mirror");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &*self.issuer)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        Arc::new(cfg)
    }
}

/// TLS in front of a test [`Server`] on 127.0.0.1: rustls's server side
/// does each connection's handshake, then the one request is relayed to the
/// server in plain HTTP and its answer back (the server closes after every
/// answer), so each behaviour of the test server is there over https too.
struct TlsFront {
    addr: SocketAddr,
    /// Why each connection failed, e.g. the alert a client sent when it
    /// refused the certificate.
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TlsFront {
    fn start(backend: SocketAddr, tls: Arc<rustls::ServerConfig>) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (failures2, stop2) = (failures.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (tls, failures3) = (tls.clone(), failures2.clone());
                        // Not joined: each ends with its connection, and
                        // every read and write has a timeout.
                        std::thread::spawn(move || {
                            if let Err(e) = relay(stream, backend, tls) {
                                failures3.lock().expect("failures").push(e);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TlsFront {
            addr,
            failures,
            stop,
            thread: Some(thread),
        }
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures").clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(
    tcp: TcpStream,
    backend: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> Result<(), String> {
    let slow = Some(Duration::from_secs(150));
    tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(slow).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(slow).map_err(|e| e.to_string())?;
    let conn = rustls::ServerConnection::new(tls).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The handshake happens on the first read; a refused certificate
    // shows here as the client's alert.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(0) => return Err("closed before a whole request".to_owned()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
        if head.len() > 16 * 1024 {
            return Err("request head too long".to_owned());
        }
    }
    let mut back = TcpStream::connect(backend).map_err(|e| e.to_string())?;
    back.set_read_timeout(slow).map_err(|e| e.to_string())?;
    back.write_all(&head).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match back.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => tls.write_all(&buf[..n]).map_err(|e| e.to_string())?,
            // The server cut the body short: so does the front.
            Err(_) => break,
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

/// A fleet whose only mirror is `https://HOST:PORT/`, a TLS front with a
/// certificate `ca` issued for `names`; the CA's PEM is written to
/// `/etc/ksplice/mirror-ca.pem` and `extra` goes into client.toml.
fn https_fleet(ca: &TestCa, names: &[&str], host: &str, extra: &str) -> HttpsFleet {
    let fleet = Fleet::new();
    let server = Server::start(&fleet.repo.dir, Arc::new(|_: &str, _: usize| Act::Serve));
    let front = TlsFront::start(server.addr, ca.server(names));
    fs::write(fleet.fx.root.join(MIRROR_CA), ca.pem()).expect("CA file");
    let url = format!("https://{host}:{}/", front.addr.port());
    fleet.config(
        std::slice::from_ref(&url),
        &format!("{extra}\n[timeouts]\nconnect = \"10s\"\nread = \"10s\"\ntotal = \"60s\""),
    );
    HttpsFleet {
        fleet,
        server,
        front,
        url,
    }
}

struct HttpsFleet {
    fleet: Fleet,
    server: Server,
    front: TlsFront,
    url: String,
}

/// Where the tests put the test CA, relative to the fixture root.
const MIRROR_CA: &str = "etc/ksplice/mirror-ca.pem";
const WITH_CA: &str = "ca_file = \"/etc/ksplice/mirror-ca.pem\"";

/// Runs an update that must fail on the TLS handshake: exit 12, one
/// network error naming the `roots` used and containing `expect`, no request reached the
/// server, and nothing on the host changed.
fn assert_tls_refused(h: &HttpsFleet, roots: &str, expect: &str) {
    let before = files_only(h.fleet.host_files());
    let r = h.fleet.report();
    assert_eq!(r.outcome, Outcome::Unreachable, "{r:#?}");
    assert_eq!(r.outcome.exit_code(), client::error::exit::MIRRORS_FAILED);
    assert_eq!(r.errors.len(), 1, "{r:#?}");
    assert_eq!(r.errors[0].kind, "network");
    assert_eq!(r.errors[0].mirror, h.url);
    let msg = &r.errors[0].error;
    assert!(
        msg.contains(&format!("TLS certificate refused (roots: {roots}): ")),
        "not named a certificate error: {msg}"
    );
    assert!(msg.contains(expect), "expected {expect:?} in: {msg}");
    eprintln!("refused as expected: {msg}");
    assert!(r.applied.is_empty());
    assert_eq!(h.server.requests(), [], "a request passed the handshake");
    assert!(
        !h.front.failures().is_empty(),
        "the server saw no failed handshake"
    );
    assert_eq!(files_only(h.fleet.host_files()), before, "the host changed");
    assert!(h.fleet.trusted("timestamp.json").is_none());
}

#[test]
fn https_with_the_configured_ca_file_checks_then_applies() {
    let ca = TestCa::new();
    let h = https_fleet(&ca, &["127.0.0.1"], "127.0.0.1", WITH_CA);
    let before = files_only(h.fleet.host_files());
    let r = h.fleet.run(Run::Check).expect("check");
    assert_eq!(r.outcome, Outcome::WouldApply, "{r:#?}");
    assert_eq!(r.outcome.exit_code(), client::error::exit::UPDATE_AVAILABLE);
    assert_eq!(r.mirror.as_deref(), Some(h.url.as_str()));
    assert_eq!(r.chosen, ["fix-1"]);
    assert_eq!(
        files_only(h.fleet.host_files()),
        before,
        "--check changed the host"
    );
    let r = h.fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    assert_eq!(journal_ids(&h.fleet), ["fix-1"]);
    let paths: Vec<String> = h.server.requests().into_iter().map(|(p, _)| p).collect();
    assert!(
        paths.iter().any(|p| p.ends_with(".ksplice-fix-1.tar.gz")),
        "{paths:?}"
    );
    assert_eq!(h.front.failures(), Vec::<String>::new());
}

/// The same mirror with only the system's roots (Debian's bundle, copied
/// into the fixture root where the client looks for it): the test CA is not
/// among them, so the handshake is refused.
#[test]
fn https_without_the_ca_file_is_an_unknown_issuer_and_changes_nothing() {
    let ca = TestCa::new();
    let h = https_fleet(&ca, &["127.0.0.1"], "127.0.0.1", "");
    let bundle = Path::new(client::update::transport::SYSTEM_CA_BUNDLE);
    let copy = h
        .fleet
        .fx
        .root
        .join(bundle.strip_prefix("/").expect("absolute"));
    fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
    // Without Debian's bundle on the machine, an empty one: still no
    // root for the test CA.
    fs::write(&copy, fs::read(bundle).unwrap_or_default()).expect("bundle");
    let roots = format!("system bundle {}", copy.display());
    assert_tls_refused(&h, &roots, "UnknownIssuer");
}

#[test]
fn https_certificate_for_another_name_is_refused() {
    let ca = TestCa::new();
    // A name the URL does not use, reached by name.
    let h = https_fleet(&ca, &["other.example"], "localhost", WITH_CA);
    let roots = format!("ca_file {}", h.fleet.fx.root.join(MIRROR_CA).display());
    assert_tls_refused(&h, &roots, "not valid for name \"localhost\"");
    // A DNS name only, reached by address.
    let h = https_fleet(&ca, &["localhost"], "127.0.0.1", WITH_CA);
    let roots = format!("ca_file {}", h.fleet.fx.root.join(MIRROR_CA).display());
    assert_tls_refused(&h, &roots, "not valid for name \"127.0.0.1\"");
}

/// A CA file that cannot serve as roots is one configuration error naming
/// the file (exit 7), before any mirror is tried.
#[test]
fn https_unusable_ca_file_is_one_configuration_error_naming_it() {
    use client::update::transport::CaFileError;
    let ca = TestCa::new();
    let h = https_fleet(&ca, &["127.0.0.1"], "127.0.0.1", WITH_CA);
    let path = h.fleet.fx.root.join(MIRROR_CA);
    let garbage_cert = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let key_only = rcgen::KeyPair::generate().expect("key").serialize_pem();
    type Check = fn(&CaFileError) -> bool;
    let cases: [(&str, Option<&str>, Check); 5] = [
        ("not PEM", Some("not a certificate\n"), |e| {
            matches!(e, CaFileError::NoCertificate)
        }),
        ("empty", Some(""), |e| {
            matches!(e, CaFileError::NoCertificate)
        }),
        ("a private key only", Some(&key_only), |e| {
            matches!(e, CaFileError::NoCertificate)
        }),
        ("PEM that is no certificate", Some(garbage_cert), |e| {
            matches!(e, CaFileError::BadCertificate { index: 1, .. })
        }),
        ("missing", None, |e| matches!(e, CaFileError::Read { .. })),
    ];
    for (what, content, check) in cases {
        let _ = fs::remove_file(&path);
        if let Some(c) = content {
            fs::write(&path, c).expect("CA file");
        }
        let before = files_only(h.fleet.host_files());
        let err = h.fleet.run(Run::Check).expect_err(what);
        match &err {
            Error::CaFile { path: p, source } => {
                assert_eq!(p, &path, "{what}");
                assert!(check(source), "{what}: {source:?}");
            }
            other => panic!("{what}: not a CA file error: {other}"),
        }
        assert_eq!(err.exit_code(), client::error::exit::STATE, "{what}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{what}: {msg}");
        assert!(msg.contains("ca_file"), "{what}: {msg}");
        assert_eq!(files_only(h.fleet.host_files()), before, "{what}");
    }
    // A directory, and a symlink to the good file (the CA file is read
    // without following links, like every file the client trusts).
    assert!(!path.exists());
    fs::create_dir(&path).expect("mkdir");
    let err = h.fleet.run(Run::Check).expect_err("a directory");
    assert!(
        matches!(
            &err,
            Error::CaFile {
                source: CaFileError::Read { .. },
                ..
            }
        ),
        "{err}"
    );
    fs::remove_dir(&path).expect("rmdir");
    let real = h.fleet.fx.root.join("etc/ksplice/real-ca.pem");
    fs::write(&real, ca.pem()).expect("CA file");
    std::os::unix::fs::symlink(&real, &path).expect("symlink");
    let err = h.fleet.run(Run::Check).expect_err("a symlink");
    assert!(
        matches!(
            &err,
            Error::CaFile {
                source: CaFileError::Read { .. },
                ..
            }
        ),
        "{err}"
    );
    // The server never saw a request.
    assert_eq!(h.server.requests(), []);
}

/// A CONNECT proxy on 127.0.0.1 for the proxy tests: it records each
/// request line, then tunnels bytes both ways to the named address.
struct ConnectProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let seen3 = seen2.clone();
                        std::thread::spawn(move || tunnel(stream, &seen3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ConnectProxy {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tunnel(client: TcpStream, seen: &Mutex<Vec<String>>) {
    let slow = Some(Duration::from_secs(150));
    if client.set_nonblocking(false).is_err() || client.set_read_timeout(slow).is_err() {
        return;
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match (&client).read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or_default().to_owned();
    seen.lock().expect("seen").push(line.clone());
    let target = match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, _] => target.to_owned(),
        _ => {
            let _ = (&client)
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
            return;
        }
    };
    // Only the loopback: a test never reaches further.
    let upstream = match target.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => TcpStream::connect(a),
        _ => return,
    };
    let Ok(upstream) = upstream else { return };
    if (&client)
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let _ = u2.set_read_timeout(slow);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut &c2, &mut &u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut &upstream, &mut &client);
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

#[test]
fn https_through_the_configured_proxy_tunnels_with_connect() {
    let ca = TestCa::new();
    let proxy = ConnectProxy::start();
    let h = https_fleet(
        &ca,
        &["127.0.0.1"],
        "127.0.0.1",
        &format!("{WITH_CA}\nproxy = \"http://{}\"", proxy.addr),
    );
    let r = h.fleet.report();
    assert_eq!(r.outcome, Outcome::Applied, "{r:#?}");
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    let want = format!("CONNECT 127.0.0.1:{} HTTP/1.1", h.front.addr.port());
    assert!(seen.iter().all(|l| l == &want), "{seen:?}");
    assert!(!h.server.requests().is_empty());
}

/// The default `proxy` is the environment: the `ksplice` binary run with
/// `https_proxy` naming a CONNECT proxy fetches an https mirror through it.
/// (A subprocess, because the environment is shared by the tests of this
/// binary.) The host's kernel is not the fixture's, so `--check` finds
/// nothing for it: exit 0, from the mirror behind the proxy.
#[test]
fn https_proxy_from_the_environment_is_used_by_the_binary() {
    let ksplice = ksplice_tests::cargo_bin("client", "ksplice");
    let ca = TestCa::new();
    let proxy = ConnectProxy::start();
    let h = https_fleet(&ca, &["127.0.0.1"], "127.0.0.1", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_path, root, config) = (
        dir.path().join("ca.pem"),
        dir.path().join("root.json"),
        dir.path().join("client.toml"),
    );
    fs::write(&ca_path, ca.pem()).expect("CA file");
    fs::write(&root, h.fleet.repo.root_bytes(1)).expect("root");
    fs::write(
        &config,
        format!(
            "mirrors = [{:?}]\nroot = {:?}\nca_file = {:?}\n[timeouts]\nconnect = \"10s\"\nread = \"10s\"\n",
            h.url, root, ca_path
        ),
    )
    .expect("client.toml");
    let mut cmd = std::process::Command::new(&ksplice);
    cmd.args(["update", "--check", "--json", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    for v in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(v);
    }
    let out = cmd
        .env("https_proxy", format!("http://{}", proxy.addr))
        .output()
        .expect("run ksplice");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["outcome"], "up-to-date", "{v}");
    assert_eq!(v["mirror"], h.url.as_str());
    assert_eq!(v["considered"][0]["decision"], "other-kernel", "{v}");
    let want = format!("CONNECT 127.0.0.1:{} HTTP/1.1", h.front.addr.port());
    let seen = proxy.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|l| l == &want),
        "{seen:?}"
    );
    assert!(
        !dir.path().join("state").join("tuf").exists(),
        "--check wrote"
    );
}
