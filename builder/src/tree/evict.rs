//! Least-recently-used eviction of prepared tree pairs under `KSPLICE_CACHE_MAX`.
//!
//! The contract (docs/builder.md "Cache"):
//! - Last use of a pair is the mtime of its `pre-<key>.lock`. [`Trees::open`]
//!   sets it through the handle it holds locked, on reuse and on creation.
//!   The lock file is the one file every run opens and no build step writes,
//!   and it outlives an eviction (see below), so it needs no file of its own.
//! - Eviction runs once per `Trees::open`, after the pair in use is prepared,
//!   so the measurement holds that pair at its real size.
//! - Usage is disk usage (`st_blocks`) of the pairs, each inode counted once
//!   (the post tree is hard links to the pre tree), symlinks not followed,
//!   mount points not entered. Other entries under `trees/` (the differ tests'
//!   trees) are neither counted nor removed.
//! - Walking a pair costs 0.6-0.75 s warm (180k inodes), 2-3 s on a busy
//!   machine, so each pass walks only pairs without a record, and the pair in
//!   use when it was prepared by this run or its record is older than
//!   [`REMEASURE`]; the result is recorded in `pre-<key>.size`. Other pairs
//!   count at their recorded size (a run adds a few objects after that). A
//!   release job opens its pair once per fix: its levels after the first
//!   reuse the record instead of walking 180k inodes again.
//! - While usage exceeds the cap, the least recently used pair other than the
//!   one in use is removed, if its lock can be taken without waiting: a pair
//!   a concurrent run holds is never removed.
//! - A pair is renamed to `.evicting-<name>` before it is deleted, so a later
//!   run sees either the whole pair or none of it; `.evicting-*` entries found
//!   later are leftovers of an interrupted eviction and are deleted.
//! - One run evicts at a time (`trees/evict.lock`, taken without waiting: a
//!   run that finds it held leaves eviction to the holder).
//! - Lock files are kept: deleting one while another run waits on it would let
//!   two runs hold "the" lock of one key. They are empty.
//!
//! [`Trees::open`]: super::Trees::open

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs::{File, Metadata, TryLockError};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};

/// The environment variable holding the cap.
pub const MAX_VAR: &str = "KSPLICE_CACHE_MAX";
/// The cap when [`MAX_VAR`] is unset: 20 GiB, 7 to 13 pairs of 1.5-3 GiB.
pub const DEFAULT_MAX: u64 = 20 << 30;

const EVICT_LOCK: &str = "evict.lock";
const SIZE: &str = ".size";
const EVICTING: &str = ".evicting-";
/// How old the record of the pair in use may be before a pass walks it again.
pub const REMEASURE: Duration = Duration::from_secs(10 * 60);

/// Binary unit suffixes of [`parse_size`].
const UNITS: [(char, u32); 4] = [('K', 10), ('M', 20), ('G', 30), ('T', 40)];

/// `20G` → 20 GiB: a whole number of bytes, optionally with one of K, M, G, T
/// (binary units, either case). `None` when malformed or too large.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = UNITS
        .iter()
        .find_map(|&(u, shift)| {
            s.strip_suffix(|c: char| c.eq_ignore_ascii_case(&u))
                .map(|d| (d, shift))
        })
        .unwrap_or((s, 0));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The cap from the value of [`MAX_VAR`] (`None`: unset, [`DEFAULT_MAX`]).
/// Zero or a malformed value is a usage error naming the variable.
pub fn max_from_env(value: Option<&OsStr>) -> Result<u64> {
    let Some(raw) = value else {
        return Ok(DEFAULT_MAX);
    };
    let bad = |reason: String| Error::InvalidOption {
        option: MAX_VAR,
        reason,
    };
    let s = raw.to_str().unwrap_or("");
    match parse_size(s) {
        Some(0) => Err(bad(format!(
            "{raw:?}: the cap must be above 0 (default 20G)"
        ))),
        Some(n) => Ok(n),
        None => Err(bad(format!(
            "{raw:?} is not a size: bytes, or a whole number with K, M, G or T (binary units); default 20G"
        ))),
    }
}

/// Record that the pair of `lock` (its `pre-<key>.lock`, held) is used now.
pub(crate) fn mark_used(lock: &File, lock_path: &Path) -> Result<()> {
    lock.set_modified(SystemTime::now())
        .map_err(Error::io(lock_path))
}

/// One pair removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// `pre-<key>`
    pub name: String,
    pub bytes: u64,
    pub last_used: SystemTime,
}

/// What one eviction pass found and did.
#[derive(Debug, Default)]
pub struct Report {
    pub max: u64,
    /// Another run held `evict.lock`: nothing was measured.
    pub busy: bool,
    /// `pre-<key>` of the pair in use and its bytes.
    pub in_use: (String, u64),
    /// Bytes of all pairs after eviction.
    pub total: u64,
    pub evicted: Vec<Evicted>,
    /// `pre-<key>` of the pairs skipped because a concurrent run holds them.
    pub kept_locked: Vec<String>,
    /// `.evicting-*` entries removed.
    pub leftovers: Vec<String>,
    /// Time to measure and evict.
    pub elapsed: Duration,
}

impl Report {
    /// One line per eviction or leftover, and why the cache stays over the cap.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for l in &self.leftovers {
            notes.push(format!("removed {l}, left by an interrupted eviction"));
        }
        let max = human(self.max);
        for e in &self.evicted {
            notes.push(format!(
                "evicted prepared tree {} ({}, last used {}): over {MAX_VAR} ({max})",
                e.name,
                human(e.bytes),
                timestamp(e.last_used)
            ));
        }
        if self.busy || self.total <= self.max {
            return notes;
        }
        let (name, bytes) = &self.in_use;
        if *bytes > self.max {
            notes.push(format!(
                "prepared tree {name} alone takes {}, over {MAX_VAR} ({max}): kept, this run uses it",
                human(*bytes)
            ));
        }
        if !self.kept_locked.is_empty() {
            notes.push(format!(
                "prepared trees take {}, over {MAX_VAR} ({max}): {} kept, in use by other runs",
                human(self.total),
                self.kept_locked.join(", ")
            ));
        }
        notes
    }
}

/// Evict least-recently-used pairs under `base` (`<cache>/trees`) until they
/// take at most `max` bytes, never the pair `in_use` (its key, locked by the
/// caller). `prepared`: the caller has just (re)built that pair, so any record
/// of its size is stale.
pub(crate) fn run(base: &Path, in_use: &str, max: u64, prepared: bool) -> Result<Report> {
    let start = Instant::now();
    let mut report = Report {
        max,
        in_use: (format!("pre-{in_use}"), 0),
        ..Report::default()
    };

    // 1. One evictor at a time. A run that finds one at work leaves the pass
    //    to it; its own pair is counted by the next pass.
    let evict_lock = base.join(EVICT_LOCK);
    let lock = open_lock(&evict_lock)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            report.busy = true;
            return Ok(report);
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(&evict_lock)(e)),
    }

    // 2. Leftovers of an interrupted eviction: renamed away, so no run uses them.
    let listing = list(base)?;
    for name in &listing.leftovers {
        remove_any(&base.join(name))?;
        report.leftovers.push(name.clone());
    }

    // 3. Measure the pairs never measured and the pair in use when its record
    //    is stale, each inode once; the others count at their recorded size.
    let mut usage = Usage::new(base)?;
    let mut candidates = Vec::new();
    for key in &listing.keys {
        let recorded = if key == in_use {
            (!prepared)
                .then(|| read_size_within(base, key, REMEASURE))
                .flatten()
        } else {
            read_size(base, key)
        };
        let bytes = match recorded {
            Some(b) => b,
            None => {
                let b = usage.pair(base, key)?;
                write_size(base, key, b)?;
                b
            }
        };
        report.total += bytes;
        if key == in_use {
            report.in_use.1 = bytes;
        } else {
            candidates.push((last_used(base, key), key.clone(), bytes));
        }
    }
    candidates.sort();

    // 4. Least recently used first, skipping pairs a concurrent run holds.
    for (last_used, key, bytes) in candidates {
        if report.total <= max {
            break;
        }
        if evict_pair(base, &key)? {
            report.total -= bytes;
            report.evicted.push(Evicted {
                name: format!("pre-{key}"),
                bytes,
                last_used,
            });
        } else {
            report.kept_locked.push(format!("pre-{key}"));
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The pair keys and eviction leftovers under `base`.
#[derive(Debug, Default)]
struct Listing {
    /// Keys with a `pre-<key>/` or `pre-<key>.post/` directory.
    keys: BTreeSet<String>,
    leftovers: Vec<String>,
}

fn list(base: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    for entry in std::fs::read_dir(base).map_err(Error::io(base))? {
        let entry = entry.map_err(Error::io(base))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with(EVICTING) {
            listing.leftovers.push(name);
            continue;
        }
        let Some(rest) = name.strip_prefix("pre-") else {
            continue;
        };
        let key = rest.strip_suffix(".post").unwrap_or(rest);
        let is_dir = entry.file_type().map_err(Error::io(entry.path()))?.is_dir();
        if is_dir && !key.is_empty() && !key.contains('.') {
            listing.keys.insert(key.to_owned());
        }
    }
    listing.leftovers.sort();
    Ok(listing)
}

/// The mtime of `pre-<key>.lock`; a pair without one (never opened by this
/// version) is older than any that has one.
fn last_used(base: &Path, key: &str) -> SystemTime {
    std::fs::metadata(base.join(format!("pre-{key}.lock")))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The recorded size of the pair `key`, if any (written only under `evict.lock`).
fn read_size(base: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(base.join(format!("pre-{key}{SIZE}"))).ok()?;
    text.trim().parse().ok()
}

/// [`read_size`], if the record was written less than `age` ago.
fn read_size_within(base: &Path, key: &str, age: Duration) -> Option<u64> {
    let written = std::fs::metadata(base.join(format!("pre-{key}{SIZE}")))
        .and_then(|m| m.modified())
        .ok()?;
    let elapsed = SystemTime::now().duration_since(written).ok()?;
    (elapsed < age).then(|| read_size(base, key)).flatten()
}

fn write_size(base: &Path, key: &str, bytes: u64) -> Result<()> {
    let path = base.join(format!("pre-{key}{SIZE}"));
    let tmp = base.join(format!("pre-{key}{SIZE}.tmp"));
    std::fs::write(&tmp, format!("{bytes}\n")).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))
}

/// Remove the pair `key` if no other run holds it; `false` when one does.
fn evict_pair(base: &Path, key: &str) -> Result<bool> {
    let lock_path = base.join(format!("pre-{key}.lock"));
    let lock = open_lock(&lock_path)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(false),
        Err(TryLockError::Error(e)) => return Err(Error::io(&lock_path)(e)),
    }
    // Pre first: it holds the marker, and a post tree without its pre tree
    // is rebuilt by the next run that wants it.
    let names = [format!("pre-{key}"), format!("pre-{key}.post")];
    for name in &names {
        let from = base.join(name);
        match std::fs::rename(&from, base.join(format!("{EVICTING}{name}"))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(from)(e)),
        }
    }
    for name in &names {
        remove_any(&base.join(format!("{EVICTING}{name}")))?;
    }
    remove_any(&base.join(format!("pre-{key}{SIZE}")))?;
    Ok(true)
}

fn open_lock(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io(path))
}

/// Remove a file or a directory tree; gone already is fine.
fn remove_any(p: &Path) -> Result<()> {
    let res = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p)(e)),
    }
}

/// Disk usage of trees on the device of the cache, each inode counted once.
#[derive(Debug)]
pub struct Usage {
    dev: u64,
    /// Inodes with more than one link already counted.
    seen: HashSet<(u64, u64)>,
}

impl Usage {
    /// Measure on the device of `base`.
    pub fn new(base: &Path) -> Result<Usage> {
        let dev = std::fs::metadata(base).map_err(Error::io(base))?.dev();
        Ok(Usage {
            dev,
            seen: HashSet::new(),
        })
    }

    /// Bytes of the pair `key` not counted before (its post tree shares the
    /// pre tree's inodes, so it adds only what it owns).
    pub fn pair(&mut self, base: &Path, key: &str) -> Result<u64> {
        Ok(self.tree(&base.join(format!("pre-{key}")))?
            + self.tree(&base.join(format!("pre-{key}.post")))?)
    }

    /// Bytes under `root` not counted before. Files that vanish while it
    /// walks (a concurrent run's build) are skipped.
    pub fn tree(&mut self, root: &Path) -> Result<u64> {
        let meta = match std::fs::symlink_metadata(root) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(root)(e)),
        };
        let mut total = self.count(&meta);
        if !self.descend(&meta) {
            return Ok(total);
        }
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(dir)(e)),
            };
            for entry in entries {
                // DirEntry::metadata is lstat: symlinks are not followed.
                let meta = match entry.and_then(|e| e.metadata().map(|m| (e, m))) {
                    Ok((e, m)) => {
                        if self.descend(&m) {
                            stack.push(e.path());
                        }
                        m
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(&dir)(e)),
                };
                total += self.count(&meta);
            }
        }
        Ok(total)
    }

    fn descend(&self, m: &Metadata) -> bool {
        m.is_dir() && m.dev() == self.dev
    }

    fn count(&mut self, m: &Metadata) -> u64 {
        if !m.is_dir() && m.nlink() > 1 && !self.seen.insert((m.dev(), m.ino())) {
            return 0;
        }
        m.blocks() * 512
    }
}

/// `2.3 GiB`
fn human(bytes: u64) -> String {
    const NAMES: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < NAMES.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", NAMES[unit])
    }
}

/// `2026-11-20T14:03:05Z`, or the raw value if out of range.
fn timestamp(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .and_then(|ts| jiff::Timestamp::from_second(ts.as_second()))
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const MARKER: &str = super::super::MARKER;

    /// A complete pair `pre-<key>` with `kib` KiB of data in the pre tree,
    /// hard-linked into the post tree, last used at `used` seconds.
    fn pair(base: &Path, key: &str, kib: usize, used: u64) {
        let pre = base.join(format!("pre-{key}"));
        let post = base.join(format!("pre-{key}.post"));
        std::fs::create_dir_all(pre.join("fs")).unwrap();
        std::fs::create_dir_all(post.join("fs")).unwrap();
        std::fs::write(pre.join("fs/a.o"), vec![0x5a; kib * 1024]).unwrap();
        std::fs::hard_link(pre.join("fs/a.o"), post.join("fs/a.o")).unwrap();
        std::fs::write(pre.join(MARKER), "pre\n").unwrap();
        std::fs::write(post.join(MARKER), "post\n").unwrap();
        set_used(base, key, used);
    }

    /// [`run`], again while a lock no test holds is still held. A process
    /// that another test of this binary spawns holds a copy of every
    /// descriptor open at its fork until it execs, and with them their
    /// flocks: the previous pass's `evict.lock` (this pass is skipped as
    /// `busy`) or a pair's lock the test released (kept as locked). Only
    /// locks a test took can be held so, and a pass that meets one changes
    /// nothing but what the test expects it to keep: running it again is
    /// the same pass. `held`: the pairs the test itself holds.
    fn settled(base: &Path, in_use: &str, max: u64, prepared: bool, held: &[&str]) -> Report {
        for _ in 0..1000 {
            let r = run(base, in_use, max, prepared).unwrap();
            let stray = r.kept_locked.iter().any(|k| !held.contains(&k.as_str()));
            if !r.busy && !stray {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "a lock under {} stayed held for 1000 passes",
            base.display()
        );
    }

    fn set_used(base: &Path, key: &str, secs: u64) {
        let lock = open_lock(&base.join(format!("pre-{key}.lock"))).unwrap();
        lock.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    fn bytes(base: &Path, key: &str) -> u64 {
        Usage::new(base).unwrap().pair(base, key).unwrap()
    }

    /// Every entry under `base` but the lock files and size records.
    fn entries(base: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock") && !n.ends_with(SIZE))
            .collect();
        v.sort();
        v
    }

    fn evicted(r: &Report) -> Vec<&str> {
        r.evicted.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn least_recently_used_pairs_go_first_and_only_until_under_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "aaa", 64, 300);
        pair(base, "bbb", 64, 100);
        pair(base, "ccc", 64, 200);
        pair(base, "ddd", 64, 400);
        let max = bytes(base, "aaa") + bytes(base, "ddd");
        let lru_bytes = bytes(base, "bbb");
        let r = settled(base, "aaa", max, false, &[]);
        assert_eq!(evicted(&r), ["pre-bbb", "pre-ccc"]);
        assert_eq!(
            r.evicted[0].last_used,
            SystemTime::UNIX_EPOCH + Duration::from_secs(100)
        );
        assert_eq!(r.evicted[0].bytes, lru_bytes);
        assert_eq!(
            entries(base),
            ["pre-aaa", "pre-aaa.post", "pre-ddd", "pre-ddd.post"]
        );
        assert_eq!(r.total, max);
        let notes = r.notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with("evicted prepared tree pre-bbb (")
                && notes[0].contains("last used 1970-01-01T00:01:40Z"),
            "{notes:?}"
        );

        // Under the cap: nothing more goes.
        let r = settled(base, "ddd", max, false, &[]);
        assert!(r.evicted.is_empty() && r.notes().is_empty());
    }

    #[test]
    fn the_pair_in_use_is_kept_even_alone_over_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "old", 256, 100);
        pair(base, "new", 16, 200);
        let r = settled(base, "old", 1, false, &[]);
        assert_eq!(evicted(&r), ["pre-new"]);
        assert_eq!(entries(base), ["pre-old", "pre-old.post"]);
        assert_eq!(r.in_use, ("pre-old".to_owned(), bytes(base, "old")));
        let notes = r.notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[1].starts_with("prepared tree pre-old alone takes ")
                && notes[1].ends_with("over KSPLICE_CACHE_MAX (1 B): kept, this run uses it"),
            "{notes:?}"
        );
    }

    #[test]
    fn the_pair_in_use_is_walked_again_only_when_prepared_or_its_record_is_stale() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "mine", 64, 100);
        // First pass: no record, walked and recorded.
        let real = settled(base, "mine", u64::MAX, false, &[]).in_use.1;
        assert_eq!(read_size(base, "mine"), Some(real));

        // The pair grows; a fresh record stands for it (a release job's next level).
        std::fs::write(base.join("pre-mine/fs/b.o"), vec![1u8; 256 * 1024]).unwrap();
        let grown = bytes(base, "mine");
        assert!(grown > real);
        assert_eq!(settled(base, "mine", u64::MAX, false, &[]).in_use.1, real);

        // Prepared by this run: the record is stale whatever its age.
        assert_eq!(settled(base, "mine", u64::MAX, true, &[]).in_use.1, grown);

        // A record older than REMEASURE is walked again.
        std::fs::write(base.join("pre-mine/fs/c.o"), vec![2u8; 256 * 1024]).unwrap();
        let record = File::options()
            .write(true)
            .open(base.join(format!("pre-mine{SIZE}")))
            .unwrap();
        record
            .set_modified(SystemTime::now() - REMEASURE - Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            settled(base, "mine", u64::MAX, false, &[]).in_use.1,
            bytes(base, "mine")
        );
    }

    #[test]
    fn a_pair_locked_by_another_run_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "mine", 16, 300);
        pair(base, "busy", 16, 100);
        pair(base, "idle", 16, 200);
        let held = File::open(base.join("pre-busy.lock")).unwrap();
        held.lock().unwrap();
        let r = settled(base, "mine", bytes(base, "mine"), false, &["pre-busy"]);
        assert_eq!(evicted(&r), ["pre-idle"]);
        assert_eq!(r.kept_locked, ["pre-busy"]);
        assert_eq!(
            entries(base),
            ["pre-busy", "pre-busy.post", "pre-mine", "pre-mine.post"]
        );
        let notes = r.notes();
        assert!(
            notes[1].ends_with(": pre-busy kept, in use by other runs"),
            "{notes:?}"
        );

        // Released, it is the next to go. The pair in use is measured again
        // (`prepared`), as the cap is: a record from the first pass may differ
        // from the disk usage now by what the file system allocated since.
        drop(held);
        let r = settled(base, "mine", bytes(base, "mine"), true, &[]);
        assert_eq!(evicted(&r), ["pre-busy"]);
    }

    #[test]
    fn a_concurrent_eviction_is_left_to_finish_alone() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "mine", 16, 300);
        pair(base, "other", 16, 100);
        let held = open_lock(&base.join(EVICT_LOCK)).unwrap();
        held.lock().unwrap();
        let r = run(base, "mine", 1, false).unwrap();
        assert!(r.busy && r.evicted.is_empty() && r.notes().is_empty());
        assert_eq!(
            entries(base),
            ["pre-mine", "pre-mine.post", "pre-other", "pre-other.post"]
        );
    }

    #[test]
    fn usage_counts_hard_links_once_and_follows_no_symlink() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "k", 512, 100);
        let outside = d.path().join("outside.bin");
        std::fs::write(&outside, vec![1u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("pre-k/link")).unwrap();
        std::os::unix::fs::symlink(d.path(), base.join("pre-k/up")).unwrap();

        let pre = base.join("pre-k");
        let post = base.join("pre-k.post");
        let lstat = |p: PathBuf| std::fs::symlink_metadata(p).unwrap().blocks() * 512;
        let data = lstat(pre.join("fs/a.o"));
        assert!(data >= 512 * 1024, "{data}");

        let mut u = Usage::new(base).unwrap();
        let pre_bytes = u.tree(&pre).unwrap();
        let expect_pre: u64 = [
            pre.clone(),
            pre.join("fs"),
            pre.join("fs/a.o"),
            pre.join(MARKER),
            pre.join("link"),
            pre.join("up"),
        ]
        .into_iter()
        .map(lstat)
        .sum();
        assert_eq!(pre_bytes, expect_pre);
        // The post tree adds only what it does not share.
        let post_bytes = u.tree(&post).unwrap();
        let own: u64 = [post.clone(), post.join("fs"), post.join(MARKER)]
            .into_iter()
            .map(lstat)
            .sum();
        assert_eq!(post_bytes, own);
        assert_eq!(bytes(base, "k"), pre_bytes + post_bytes);
        // Measured alone, the post tree does own the data.
        assert_eq!(Usage::new(base).unwrap().tree(&post).unwrap(), own + data);
    }

    #[test]
    fn leftovers_of_an_interrupted_eviction_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "live", 16, 300);
        pair(base, "gone", 16, 100);
        // Interrupted after the pre tree was renamed and half deleted: the
        // post tree alone is still a pair to evict, not a tree to reuse.
        std::fs::rename(base.join("pre-gone"), base.join(".evicting-pre-gone")).unwrap();
        std::fs::remove_file(base.join(".evicting-pre-gone/fs/a.o")).unwrap();
        std::fs::write(base.join(".evicting-stray"), "x").unwrap();
        let r = settled(base, "live", u64::MAX, false, &[]);
        assert_eq!(r.leftovers, [".evicting-pre-gone", ".evicting-stray"]);
        assert_eq!(
            entries(base),
            ["pre-gone.post", "pre-live", "pre-live.post"]
        );
        let r = settled(base, "live", bytes(base, "live"), true, &[]);
        assert_eq!(evicted(&r), ["pre-gone"]);
        assert!(r.leftovers.is_empty());
        assert_eq!(entries(base), ["pre-live", "pre-live.post"]);
    }

    #[test]
    fn other_entries_under_trees_are_neither_counted_nor_removed() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "mine", 16, 300);
        std::fs::create_dir(base.join("differ-fsproc-pre-6.1")).unwrap();
        std::fs::write(base.join("differ-fsproc-pre-6.1/x.o"), vec![0; 65536]).unwrap();
        let r = settled(base, "mine", 1, false, &[]);
        assert_eq!(r.total, bytes(base, "mine"));
        assert_eq!(
            entries(base),
            ["differ-fsproc-pre-6.1", "pre-mine", "pre-mine.post"]
        );
    }

    #[test]
    fn pairs_not_in_use_count_at_their_recorded_size() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        pair(base, "mine", 16, 300);
        pair(base, "small", 16, 200);
        pair(base, "new", 16, 400);
        let small = bytes(base, "small");
        let max = bytes(base, "mine") + small + bytes(base, "new");
        // Recorded as huge: evicted though it is small on disk.
        write_size(base, "small", 1 << 40).unwrap();
        // The record of a pair in use that this run prepared again is stale.
        write_size(base, "mine", 1 << 40).unwrap();
        let r = settled(base, "mine", max, true, &[]);
        assert_eq!(evicted(&r), ["pre-small"]);
        assert_eq!(r.evicted[0].bytes, 1 << 40);
        assert_eq!(read_size(base, "small"), None, "removed with its pair");
        assert_eq!(read_size(base, "mine"), Some(bytes(base, "mine")));
        // Never measured before: measured and recorded.
        assert_eq!(read_size(base, "new"), Some(bytes(base, "new")));
        assert_eq!(r.total, max - small);
    }

    #[test]
    fn last_use_is_the_lock_files_mtime() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        assert_eq!(last_used(base, "none"), SystemTime::UNIX_EPOCH);
        let path = base.join("pre-k.lock");
        let lock = open_lock(&path).unwrap();
        lock.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        let before = SystemTime::now();
        mark_used(&lock, &path).unwrap();
        assert!(last_used(base, "k") >= before - Duration::from_secs(1));
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1K"), Some(1024));
        assert_eq!(parse_size("3m"), Some(3 << 20));
        assert_eq!(parse_size("20G"), Some(DEFAULT_MAX));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("0"), Some(0));
        for bad in [
            "",
            "G",
            "1.5G",
            "-1",
            "+1",
            " 1G",
            "1G ",
            "1GB",
            "1KG",
            "1P",
            "20GiB",
            "99999999999T",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn zero_or_a_malformed_cap_is_a_usage_error_naming_the_variable() {
        assert_eq!(max_from_env(None).unwrap(), 20 << 30);
        assert_eq!(max_from_env(Some(OsStr::new("512M"))).unwrap(), 512 << 20);
        for bad in ["0", "0G", "lots", ""] {
            let e = max_from_env(Some(OsStr::new(bad))).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidOption {
                        option: "KSPLICE_CACHE_MAX",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert_eq!(e.exit_code(), 1);
            assert!(
                e.to_string().starts_with("invalid KSPLICE_CACHE_MAX: "),
                "{e}"
            );
        }
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(20 << 30), "20.0 GiB");
    }
}
