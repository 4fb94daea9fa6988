//! The coverage corpus (`ksplice-build coverage`, docs/coverage.md): the source change
//! between two kernel releases, one patch per changed `.c` file, each built against
//! the older release; the outcomes, the refusal reasons ranked, and a seeded sample of
//! the built updates for the VM.
//!
//! Splitting follows kbuild, not guesses: whether a `.c` file is built, and into
//! vmlinux or which module, comes from the prepared tree's `.cmd` files or `make -n`;
//! which changed headers go with a `.c` file comes from the dependency list gcc wrote
//! into its object's `.cmd` file when the pre object was compiled. A changed header no
//! changed `.c` file depends on is recorded in a class of its own (`header_only`);
//! other changed files (Makefiles, Kconfig, assembly, documentation) are counted,
//! not built.
//!
//! A prepared tree is locked for a whole build, so the patches of one tree build one
//! after the other; `--lanes N` gives the run N trees (lane 0 the cache's own, lane k
//! `<cache>/coverage-lane-k`) and builds N patches at a time, one a lane: one build
//! keeps about one core busy (a single object's compile, the differ, the link).
//! `--jobs` is make's `-j` inside each. Records are appended to `records.jsonl` as they
//! finish, so an interrupted run resumes where it stopped (a patch whose record exists
//! is not built again).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkout::{self, affected, Source};
use crate::create::{self, Options};
use crate::error::{Error, Result};
use crate::release::ReleaseEnv;
use crate::summary::Summary;
use crate::target::identity::TargetImage;
use crate::target::{ImageInputs, ProfileInputs};
use crate::tree::kbuild::{self, Make, ObjectBuild};
use crate::tree::Trees;

/// The default older release (its side runs as ABI 6.1.0-53).
pub const DEFAULT_FROM: &str = "6.1.187-1";
/// The default newer release.
pub const DEFAULT_TO: &str = "6.1.190-1";
/// The test command's sample: vmlinux files and module files.
pub const DEFAULT_SAMPLE_VMLINUX: usize = 5;
pub const DEFAULT_SAMPLE_MODULES: usize = 3;

/// Patches whose pre objects are compiled together before they build.
const CHUNK: usize = 16;

/// A `--limit K` run asks kbuild about K times this many changed `.c` files.
const LIMIT_CLASSIFY: usize = 4;

/// `OUT/records.jsonl`: one [`Record`] a line.
pub const RECORDS: &str = "records.jsonl";
/// `OUT/corpus.json`: the [`Corpus`].
pub const CORPUS: &str = "corpus.json";
/// `OUT/sample/sample.json`: the VM sample ([`Sample`]) beside its packages.
pub const SAMPLE_DIR: &str = "sample";
pub const SAMPLE_FILE: &str = "sample.json";
/// The e2e scenario that applies the sample (tests/src/e2e/scenario.rs).
pub const SCENARIO: &str = "coverage-sample";

// ---- the change between two trees -------------------------------------------------------------

/// How one file differs between the two source trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Modified,
    Added,
    Removed,
}

/// One changed file, relative to the tree root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Changed {
    pub path: String,
    pub status: Status,
}

/// Every regular file whose content differs between `old` and `new` (or exists in
/// only one), sorted by path. `.git` is skipped; symlinks are compared by target.
pub fn diff_trees(old: &Path, new: &Path) -> Result<Vec<Changed>> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    list_files(old, old, &mut a)?;
    list_files(new, new, &mut b)?;
    let mut out: Vec<Changed> = a
        .par_iter()
        .filter_map(|(path, size)| -> Option<Result<Changed>> {
            let Some(new_size) = b.get(path) else {
                return Some(Ok(Changed {
                    path: path.clone(),
                    status: Status::Removed,
                }));
            };
            if size != new_size {
                return Some(Ok(Changed {
                    path: path.clone(),
                    status: Status::Modified,
                }));
            }
            match same_content(&old.join(path), &new.join(path)) {
                Ok(true) => None,
                Ok(false) => Some(Ok(Changed {
                    path: path.clone(),
                    status: Status::Modified,
                })),
                Err(e) => Some(Err(e)),
            }
        })
        .collect::<Result<_>>()?;
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(Changed {
            path: path.clone(),
            status: Status::Added,
        });
    }
    out.sort();
    Ok(out)
}

fn list_files(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(Error::io(&path))?;
        if ft.is_dir() {
            if entry.file_name() != ".git" {
                list_files(root, &path, out)?;
            }
        } else if ft.is_file() || ft.is_symlink() {
            let rel = path
                .strip_prefix(root)
                .expect("invariant: walked under root")
                .to_string_lossy()
                .into_owned();
            let size = if ft.is_symlink() {
                0
            } else {
                entry.metadata().map_err(Error::io(&path))?.len()
            };
            out.insert(rel, size);
        }
    }
    Ok(())
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let la = std::fs::symlink_metadata(a).map_err(Error::io(a))?;
    let lb = std::fs::symlink_metadata(b).map_err(Error::io(b))?;
    if la.file_type().is_symlink() || lb.file_type().is_symlink() {
        return Ok(std::fs::read_link(a).ok() == std::fs::read_link(b).ok());
    }
    Ok(std::fs::read(a).map_err(Error::io(a))? == std::fs::read(b).map_err(Error::io(b))?)
}

// ---- grouping ------------------------------------------------------------------------------------

/// One patch of the corpus: a changed `.c` file with the changed headers it depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub file: String,
    pub status: Status,
    pub headers: Vec<String>,
}

/// The corpus split: patches, header-only changes, and the other changed files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub groups: Vec<Group>,
    /// Changed headers no changed `.c` file depends on.
    pub header_only: Vec<String>,
    /// Changed headers some changed `.c` file depends on whose change alone reaches
    /// more objects than the builder rebuilds for one update (`affected::MAX_OBJECTS`):
    /// a record class of their own (each refused once, as too wide), left out of the
    /// `.c` patches so those measure what each `.c` change can give.
    #[serde(default)]
    pub wide: Vec<String>,
    /// Every other changed file (no patch of its own).
    pub other: Vec<String>,
}

impl Split {
    /// The `.c` patches by their file.
    fn by_file(&self) -> BTreeMap<&str, &Group> {
        self.groups.iter().map(|g| (g.file.as_str(), g)).collect()
    }
}

/// Split `changed` into one group per changed `.c` file. `deps(c)` gives the headers
/// the `.c` file's object depends on (kbuild's `.cmd` list), `None` when it is not
/// known (the file is not built): such a file gets no headers. An added header goes
/// with each changed `.c` file whose new text includes it by name (`new_includes`).
/// A header `wide(h)` says is too wide for a live update goes to `Split::wide`
/// instead of into the patches.
pub fn split(
    changed: &[Changed],
    deps: &dyn Fn(&str) -> Option<BTreeSet<String>>,
    new_includes: &dyn Fn(&str) -> Vec<String>,
    wide: &dyn Fn(&str) -> bool,
) -> Split {
    let headers: BTreeMap<&str, Status> = changed
        .iter()
        .filter(|c| c.path.ends_with(".h"))
        .map(|c| (c.path.as_str(), c.status))
        .collect();
    let mut used = BTreeSet::new();
    let mut out = Split::default();
    for c in changed {
        if c.path.ends_with(".c") {
            let mut hs = BTreeSet::new();
            if let Some(d) = deps(&c.path) {
                for h in d {
                    if headers.contains_key(h.as_str()) {
                        hs.insert(h);
                    }
                }
            }
            for inc in new_includes(&c.path) {
                for (&h, &st) in &headers {
                    if st == Status::Added && (h == inc || h.ends_with(&format!("/{inc}"))) {
                        hs.insert(h.to_owned());
                    }
                }
            }
            used.extend(hs.iter().cloned());
            let (too_wide, hs): (BTreeSet<String>, BTreeSet<String>) =
                hs.into_iter().partition(|h| wide(h));
            for h in too_wide {
                if !out.wide.contains(&h) {
                    out.wide.push(h);
                }
            }
            out.groups.push(Group {
                file: c.path.clone(),
                status: c.status,
                headers: hs.into_iter().collect(),
            });
        } else if !c.path.ends_with(".h") {
            out.other.push(c.path.clone());
        }
    }
    out.header_only = headers
        .keys()
        .filter(|h| !used.contains(**h))
        .map(|h| (*h).to_owned())
        .collect();
    out.wide.sort();
    out
}

/// The files an object depends on, from its `.cmd` file's `deps_<obj> := \` list
/// (kbuild's fixdep output): tree-relative paths, normalized; `$(wildcard ...)`
/// config dependencies and absolute (system) paths are left out.
pub fn parse_cmd_deps(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in text.lines() {
        if !inside {
            inside = line.starts_with("deps_") && line.trim_end().ends_with(":= \\");
            continue;
        }
        let t = line.trim().trim_end_matches('\\').trim();
        if t.is_empty() {
            break;
        }
        if t.starts_with("$(") || t.starts_with('/') {
            continue;
        }
        out.insert(normalize(t));
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    out
}

/// `a/b/../c` → `a/c` (kbuild names some objects through `../`).
pub use crate::checkout::affected::normalize;

/// `#include` names in a source text (quoted or angle), for added headers.
fn include_names(text: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| {
            let l = l.trim_start().strip_prefix('#')?.trim_start();
            let l = l.strip_prefix("include")?.trim_start();
            let (open, close) = match l.chars().next()? {
                '"' => ('"', '"'),
                '<' => ('<', '>'),
                _ => return None,
            };
            let rest = l.strip_prefix(open)?;
            Some(rest[..rest.find(close)?].to_owned())
        })
        .collect()
}

// ---- outcomes and reasons -----------------------------------------------------------------------

/// What the builder made of one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A signed update package.
    Built,
    /// The objects compile to the same code.
    NoFunctionalChange,
    /// The builder refused it, with reasons.
    Refused,
    /// The patch does not compile (or the update module does not build).
    BuildError,
    /// The older release's config does not build the file.
    NotBuilt,
    /// The tool itself failed on this patch (I/O and the like); should not happen.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Built => "built",
            Outcome::NoFunctionalChange => "no_functional_change",
            Outcome::Refused => "refused",
            Outcome::BuildError => "build_error",
            Outcome::NotBuilt => "not_built",
            Outcome::Failed => "failed",
        }
    }
}

/// One patch's line in `records.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The changed `.c` file.
    pub file: String,
    pub status: Status,
    /// Changed headers in the patch.
    pub headers: Vec<String>,
    /// sha256 of the patch text (a resumed run rebuilds a patch whose text changed).
    pub patch_sha256: String,
    pub outcome: Outcome,
    /// The file's object, when kbuild builds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// `vmlinux` or the module name, when kbuild builds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The update id (when the builder ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The package, relative to the output directory (when built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// The builder's words (refused: every refusal; build error: the first compiler
    /// error line), bounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Normalized reasons, each once (refusals and build errors), for ranking.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    pub seconds: f64,
}

/// Make one rule of a reason: parenthesized details, quoted names, numbers and what
/// follows the rule's first `: ` go, so the same rule hit by different functions
/// counts together.
pub fn normalize_reason(reason: &str) -> String {
    // Drop (...) groups, nested ones too.
    let mut text = String::new();
    let mut depth = 0usize;
    for ch in reason.chars() {
        match ch {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => text.push(ch),
            _ => {}
        }
    }
    // Quoted names.
    let mut unquoted = String::new();
    let mut quoted = false;
    for ch in text.chars() {
        if ch == '"' {
            if !quoted {
                unquoted.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            unquoted.push(ch);
        }
    }
    // The rule is what precedes its details; a short head is not a rule yet.
    let head = match unquoted.split_once(": ") {
        Some((h, _)) if h.split_whitespace().count() >= 3 => h.to_owned(),
        _ => unquoted,
    };
    // Numbers (hex and decimal words) become N.
    let words: Vec<String> = head
        .split_whitespace()
        .map(|w| {
            let core = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let numeric = !core.is_empty()
                && (core.chars().all(|c| c.is_ascii_digit())
                    || core.strip_prefix("0x").is_some_and(|h| {
                        !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit())
                    }));
            if numeric {
                w.replace(core, "N")
            } else {
                w.to_owned()
            }
        })
        .collect();
    words
        .join(" ")
        .replace(" ;", ";")
        .replace(" ,", ",")
        .trim_end_matches([';', ',', '.', ':', ' '])
        .to_owned()
}

/// The first compiler error line of a failed make (`file:line:col: error: ...`), else
/// the first line with `error`, else the last line.
pub fn first_error_line(output: &str) -> String {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    lines
        .iter()
        .find(|l| l.contains(": error:") || l.contains(": fatal error:"))
        .or_else(|| lines.iter().find(|l| l.to_lowercase().contains("error")))
        .or_else(|| lines.last())
        .map(|l| bounded(l, 400))
        .unwrap_or_default()
}

/// The rule of a compiler error line: the message after `error: `, names quoted by
/// gcc (‘x’) dropped.
fn error_rule(line: &str) -> String {
    let msg = line
        .split_once("error: ")
        .map(|(_, m)| m)
        .unwrap_or(line)
        .to_owned();
    let mut out = String::new();
    let mut quoted = false;
    for ch in msg.chars() {
        match ch {
            '‘' => {
                quoted = true;
                out.push_str("‘…");
            }
            '’' => {
                quoted = false;
                out.push('’');
            }
            _ if !quoted => out.push(ch),
            _ => {}
        }
    }
    format!("build error: {}", normalize_reason(&out))
}

fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Classify the builder's answer for one patch: outcome, reason, rules.
pub fn classify(e: &Error) -> (Outcome, String, Vec<String>) {
    let mut rules = BTreeSet::new();
    match e {
        Error::NoChange { .. } => (Outcome::NoFunctionalChange, e.to_string(), Vec::new()),
        Error::Refused(refusals) => {
            let not_built = !refusals.is_empty()
                && refusals
                    .iter()
                    .all(|r| r.reason.starts_with("not built by the target's config"));
            for r in refusals {
                rules.insert(normalize_reason(&r.reason));
            }
            let outcome = if not_built {
                Outcome::NotBuilt
            } else {
                Outcome::Refused
            };
            (
                outcome,
                bounded(&e.to_string(), 4000),
                rules.into_iter().collect(),
            )
        }
        Error::Differ { source, .. } => {
            let text = format!("differ: {source}");
            rules.insert(normalize_reason(&text));
            (
                Outcome::Refused,
                bounded(&e.to_string(), 4000),
                rules.into_iter().collect(),
            )
        }
        Error::Command { output, .. } => {
            let line = first_error_line(output);
            rules.insert(error_rule(&line));
            (Outcome::BuildError, line, rules.into_iter().collect())
        }
        Error::Module(m) => {
            let text = m.to_string();
            let line = first_error_line(&text);
            rules.insert(format!("update module: {}", error_rule(&line)));
            (Outcome::BuildError, line, rules.into_iter().collect())
        }
        Error::PatchDoesNotApply { output, .. } => {
            rules.insert("the patch does not apply to the older release".into());
            (
                Outcome::Failed,
                bounded(output, 400),
                rules.into_iter().collect(),
            )
        }
        other => (
            Outcome::Failed,
            bounded(&other.to_string(), 4000),
            Vec::new(),
        ),
    }
}

/// Rules by how many patches hit each, most first (ties by name).
pub fn rank(records: &[Record], outcome: Outcome) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.outcome == outcome && !is_header_record(r))
    {
        for rule in &r.rules {
            *counts.entry(rule.as_str()).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

// ---- the seeded sample ---------------------------------------------------------------------------

/// splitmix64: a small, fixed generator, so a seed picks the same sample on every
/// machine and in every version of the dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by rejection (no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The VM sample: `vmlinux` built updates and `modules` built module updates, chosen
/// by `seed` among the built records (sorted by file first, so the choice depends only
/// on the seed and the set of built files).
pub fn sample(records: &[Record], vmlinux: usize, modules: usize, seed: u64) -> Vec<Record> {
    let mut rng = Rng::new(seed);
    let mut pick = |want_vmlinux: bool, n: usize| {
        let mut c: Vec<&Record> = records
            .iter()
            .filter(|r| r.outcome == Outcome::Built && r.package.is_some())
            .filter(|r| (r.target.as_deref() == Some("vmlinux")) == want_vmlinux)
            .collect();
        c.sort_by(|a, b| a.file.cmp(&b.file));
        rng.shuffle(&mut c);
        c.into_iter().take(n).cloned().collect::<Vec<_>>()
    };
    let mut out = pick(true, vmlinux);
    out.extend(pick(false, modules));
    out
}

/// `OUT/sample/sample.json`: what the `coverage-sample` e2e scenario applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// `uname -r` of the older release (the VM boots it).
    pub release: String,
    pub seed: u64,
    /// The trust policy of the key that signed the packages, in the sample directory.
    pub trust: String,
    pub updates: Vec<SampleUpdate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleUpdate {
    pub id: String,
    pub file: String,
    /// `vmlinux` or the module name.
    pub target: String,
    /// The package file, in the sample directory.
    pub package: String,
}

// ---- the VM's answer --------------------------------------------------------------------------------

/// The VM results of one sample case (`coverage.sh` prints one metric per case:
/// `name=<id>.<case> value=ok|fail|noload`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResults {
    /// (update id, case) → value.
    pub cases: BTreeMap<(String, String), String>,
    /// Whether the scenario ran to its end marker.
    pub finished: bool,
}

impl VmResults {
    pub fn ok(&self) -> usize {
        self.cases.values().filter(|v| *v == "ok").count()
    }
    pub fn failed(&self) -> usize {
        self.cases.values().filter(|v| *v == "fail").count()
    }
    pub fn noload(&self) -> usize {
        self.cases.values().filter(|v| *v == "noload").count()
    }
}

/// Read the `coverage-sample` scenario's metrics from a serial log.
pub fn parse_vm_log(text: &str, scenario: &str) -> VmResults {
    let mut out = VmResults::default();
    for line in text.lines() {
        let Some(at) = line.find("@@KSPLICE ") else {
            continue;
        };
        let kv: BTreeMap<&str, &str> = line[at + 10..]
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        if kv.get("scenario") != Some(&scenario) {
            continue;
        }
        match kv.get("event") {
            Some(&"metric") => {
                if let (Some(name), Some(value)) = (kv.get("name"), kv.get("value")) {
                    if let Some((id, case)) = name.rsplit_once('.') {
                        out.cases
                            .insert((id.to_owned(), case.to_owned()), (*value).to_owned());
                    }
                }
            }
            Some(&"end") => out.finished = true,
            _ => {}
        }
    }
    out
}

// ---- the run ---------------------------------------------------------------------------------------

/// What `ksplice-build coverage run` was asked to do.
#[derive(Debug, Clone)]
pub struct CoverageOptions {
    pub from: String,
    pub to: String,
    pub out: PathBuf,
    pub sample_vmlinux: usize,
    pub sample_modules: usize,
    pub seed: u64,
    pub jobs: usize,
    /// Build at most this many patches (seeded order, header-free first) and stop as
    /// soon as the sample can be drawn; `None`: every patch.
    pub limit: Option<usize>,
    /// Patches built at a time, each in a prepared tree of its own ([`lane_cache`]).
    pub lanes: usize,
    pub cache: PathBuf,
    pub cache_max: u64,
    pub etc_dir: PathBuf,
}

/// The cache whose prepared trees lane `lane` builds in: the run's own for lane 0
/// (so a one-lane run shares its tree with every other build of that release).
pub fn lane_cache(cache: &Path, lane: usize) -> PathBuf {
    match lane {
        0 => cache.to_path_buf(),
        k => cache.join(format!("coverage-lane-{k}")),
    }
}

/// `OUT/corpus.json`: the change and how it was split and classified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Corpus {
    pub from: String,
    pub to: String,
    /// `uname -r` of the older release.
    pub release: String,
    pub changed: usize,
    pub split: Split,
    /// The changed `.c` files kbuild builds: file → `vmlinux` or module name.
    pub built: BTreeMap<String, String>,
    /// The changed `.c` files kbuild does not build, with why when known.
    pub not_built: BTreeMap<String, String>,
    /// The patches this run builds, in order (all of them, seeded order, unless `--limit`).
    pub planned: Vec<String>,
    pub limit: Option<usize>,
    /// Changed `.c` files that are no object of their own but `#include`d by built
    /// `.c` files: file → the first includer's object (its `.cmd` file gives the
    /// headers; the builder rebuilds every includer).
    #[serde(default)]
    pub via: BTreeMap<String, String>,
}

/// Where a long run reports progress.
pub trait Progress {
    fn note(&mut self, text: &str);
    fn record(&mut self, index: usize, total: usize, record: &Record);
}

/// Split the change, classify it with kbuild, build every planned patch; returns the
/// corpus and every record (earlier runs' records of the same patches included).
pub fn run(opts: &CoverageOptions, progress: &mut dyn Progress) -> Result<(Corpus, Vec<Record>)> {
    let old = ReleaseEnv::find(&opts.cache, &opts.from)?;
    let new = ReleaseEnv::find(&opts.cache, &opts.to)?;
    std::fs::create_dir_all(&opts.out).map_err(Error::io(&opts.out))?;
    let out = std::path::absolute(&opts.out).map_err(Error::io(&opts.out))?;
    for d in ["patches", "packages", "work", "profile"] {
        let p = out.join(d);
        std::fs::create_dir_all(&p).map_err(Error::io(&p))?;
    }

    let t = Instant::now();
    let changed = diff_trees(&old.source, &new.source)?;
    progress.note(&format!(
        "{} files differ between {} and {} ({:.0} s)",
        changed.len(),
        old.version,
        new.version,
        t.elapsed().as_secs_f64()
    ));

    // The profile from the older release's packages, once for every patch.
    let profile_dir = out.join("profile");
    let profile = crate::target::write_profile(
        &ImageInputs {
            image: old.vmlinuz.clone(),
            config: old.config.clone(),
            symvers: Some(old.symvers.clone()),
        },
        &profile_dir,
    )?;
    let image = std::sync::Arc::new(TargetImage::load(&old.vmlinuz)?);
    let version_file = profile_dir.join(manifests::profile::VERSION);
    let kernel_version = std::fs::read_to_string(&version_file)
        .map_err(Error::io(&version_file))?
        .trim()
        .to_owned();

    // kbuild's answers need the prepared pre tree: held only for this step (each
    // patch's build opens it again).
    let make = Make {
        jobs: opts.jobs.max(1),
        release: profile.release.clone(),
    };
    let dummy = out.join("patches").join("none.patch");
    let co = checkout::resolve(&Source::Patch {
        src: old.source.clone(),
        patch: dummy,
        fingerprint: None,
    })?;
    let mut rng = Rng::new(opts.seed);
    let open_trees = || {
        Trees::open(
            &opts.cache,
            &co.pre,
            &co.pre_id,
            &old.config,
            &old.symvers,
            &make,
            opts.cache_max,
        )
    };
    let mut via = BTreeMap::new();
    let (pre, builds, changed, order) = {
        let t = Instant::now();
        let trees = open_trees()?;
        progress.note(&format!(
            "prepared tree {} ({:.0} s)",
            trees.pre.display(),
            t.elapsed().as_secs_f64()
        ));
        let mut c_files: Vec<&Changed> = changed
            .iter()
            .filter(|c| c.path.ends_with(".c") && c.status == Status::Modified)
            .collect();
        if let Some(limit) = opts.limit {
            // A limited run asks kbuild about a seeded share of the files only (each
            // `make -n` costs seconds): enough for the limit, about half are built.
            rng.shuffle(&mut c_files);
            c_files.truncate(limit.saturating_mul(LIMIT_CLASSIFY));
            c_files.sort();
        }
        let t = Instant::now();
        let builds = kbuild_builds(&make, &trees.pre, &c_files, &mut via)?;
        progress.note(&format!(
            "kbuild builds {} of {} changed .c files ({:.0} s)",
            builds.iter().filter(|(_, b)| b.is_ok()).count(),
            c_files.len(),
            t.elapsed().as_secs_f64()
        ));
        let mut order: Vec<String> = c_files.iter().map(|c| c.path.clone()).collect();
        // In a limited run, the split keeps only the files kbuild was asked about.
        let changed: Vec<Changed> = match opts.limit {
            Some(_) => changed
                .iter()
                .filter(|c| !c.path.ends_with(".c") || order.contains(&c.path))
                .cloned()
                .collect(),
            None => changed,
        };
        if opts.limit.is_some() {
            rng.shuffle(&mut order);
            // Built files only, so the limit goes to patches that can give an update.
            order.retain(|f| builds.get(f).is_some_and(|b| b.is_ok()));
        }
        (trees.pre.clone(), builds, changed, order)
    };
    let is_built = |f: &str| builds.get(f).is_some_and(|b| b.is_ok());
    let obj_of = |f: &str| via.get(f).cloned().unwrap_or_else(|| object_of(f));
    // A changed .c file's headers come from its pre object's `.cmd` file, so the pre
    // objects are compiled before their patches (they are the pre side of the build
    // after, too), a chunk at a time under the tree's lock, so records come early.
    let compile = |files: &[String], progress: &mut dyn Progress| -> Result<()> {
        let objects: Vec<String> = files
            .iter()
            .filter(|f| is_built(f))
            .map(|f| obj_of(f))
            .filter(|o| !kbuild::object_outputs(&pre, o)[1].is_file())
            .collect();
        if objects.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let trees = open_trees()?;
        make.objects_keep_going(&trees.pre, &objects)?;
        progress.note(&format!(
            "compiled {} pre objects for their dependency lists ({:.0} s)",
            objects.len(),
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    };
    let deps = |c: &str| -> Option<BTreeSet<String>> {
        let cmd = kbuild::object_outputs(&pre, &obj_of(c))[1].clone();
        std::fs::read_to_string(cmd)
            .ok()
            .map(|t| parse_cmd_deps(&t))
    };
    let new_src = new.source.clone();
    let includes = |c: &str| -> Vec<String> {
        std::fs::read(new_src.join(c))
            .map(|b| include_names(&b))
            .unwrap_or_default()
    };
    // Each changed header's own reach, by the builder's rule (`affected::plan` of the
    // header alone): the builder's refusals when it reaches more than
    // `affected::MAX_OBJECTS` objects, else `None`. Such a header is a class of its own.
    let changed_headers: BTreeMap<String, Status> = changed
        .iter()
        .filter(|c| c.path.ends_with(".h"))
        .map(|c| (c.path.clone(), c.status))
        .collect();
    let reach: ReachCache = Default::default();
    // The include index and its reverse graph, read and built once for every header.
    let index: std::cell::OnceCell<affected::IncludeIndex> = std::cell::OnceCell::new();
    let graph: std::cell::OnceCell<affected::Dependents<'_>> = std::cell::OnceCell::new();
    let measure = |files: &[String]| -> Result<()> {
        for f in files {
            let Some(d) = deps(f) else {
                continue;
            };
            for h in d.iter().filter(|h| changed_headers.contains_key(*h)) {
                if reach.borrow().contains_key(h) {
                    continue;
                }
                let change = checkout::Change {
                    path: h.clone(),
                    content: std::fs::read(new_src.join(h)).ok(),
                };
                if graph.get().is_none() {
                    if index.get().is_none() {
                        let _ = index.set(affected::IncludeIndex::load_or_build(&pre)?);
                    }
                    if let Some(i) = index.get() {
                        let _ = graph.set(i.reverse());
                    }
                }
                let plan = affected::plan_with(&pre, &[change], graph.get())?;
                let r = (plan.objects.len() > affected::MAX_OBJECTS).then_some(plan.refusals);
                reach.borrow_mut().insert(h.clone(), r);
            }
        }
        Ok(())
    };
    let too_wide = |h: &str| reach.borrow().get(h).is_some_and(Option::is_some);
    let planned: Vec<String> = match opts.limit {
        Some(limit) => {
            // vmlinux and module files in the sample's proportion: a seeded share of
            // the corpus has about four module files to one vmlinux file, and the
            // sample asks for more vmlinux updates than that share gives.
            let is_vmlinux = |f: &String| {
                builds
                    .get(f)
                    .is_some_and(|b| b.as_ref().is_ok_and(|t| t == "vmlinux"))
            };
            let (svm, smod) = (opts.sample_vmlinux, opts.sample_modules);
            let first = balanced(&order, limit.saturating_mul(2), svm, smod, is_vmlinux);
            compile(&first, progress)?;
            measure(&first)?;
            // Header-free patches first: they touch one object, build fastest and are
            // the likeliest to give the sample its updates.
            let s = split(&changed, &deps, &includes, &too_wide);
            let has_headers: BTreeSet<&str> = s
                .groups
                .iter()
                .filter(|g| !g.headers.is_empty())
                .map(|g| g.file.as_str())
                .collect();
            let mut o = first;
            o.sort_by_key(|f| has_headers.contains(f.as_str()));
            balanced(&o, limit, svm, smod, is_vmlinux)
        }
        None => {
            // Seeded order: a run stopped early is a random sample of the corpus, not
            // its first directories.
            let mut all: Vec<String> = changed
                .iter()
                .filter(|c| c.path.ends_with(".c"))
                .map(|c| c.path.clone())
                .collect();
            rng.shuffle(&mut all);
            all
        }
    };
    let mut corpus = Corpus {
        from: old.version.clone(),
        to: new.version.clone(),
        release: profile.release.clone(),
        changed: changed.len(),
        split: split(&changed, &deps, &includes, &too_wide),
        built: BTreeMap::new(),
        not_built: BTreeMap::new(),
        planned,
        limit: opts.limit,
        via: via.clone(),
    };
    for (f, b) in &builds {
        match b {
            Ok(target) => corpus.built.insert(f.clone(), target.clone()),
            Err(why) => corpus.not_built.insert(f.clone(), why.clone()),
        };
    }
    write_json(&out.join(CORPUS), &corpus)?;

    // Signing key of this output directory (the VM trusts it for the sample).
    let key_path = out.join("sign.key");
    if !key_path.exists() {
        manifests::SigningKey::generate()?.save_new(&key_path)?;
    }

    let mut records = load_records(&out.join(RECORDS))?;
    let wide = WideCache::default();
    let total = corpus.planned.len();
    let planned = corpus.planned.clone();
    let trees = (old.source.as_path(), new.source.as_path());
    let mut deferred: Vec<(usize, String)> = Vec::new();
    let mut sample_ready = false;
    // What every build reads (a macro: `corpus` changes between chunks).
    macro_rules! shared {
        () => {
            Shared {
                opts,
                out: &out,
                old: &old,
                profile: &profile,
                kernel_version: &kernel_version,
                key: &key_path,
                corpus: &corpus,
                pre: &pre,
                new_source: &new.source,
                wide: &wide,
                image: &image,
                fingerprint: &co.pre_id,
            }
        };
    }
    'chunks: for (c, chunk) in planned.chunks(CHUNK).enumerate() {
        if opts.limit.is_some() && enough_for_sample(&records, opts) {
            progress.note("the sample has its updates: stopping (--limit)");
            break;
        }
        compile(chunk, progress)?;
        measure(chunk)?;
        // The split as far as the dependency lists go now (the header-only class
        // shrinks as more objects are compiled).
        corpus.split = split(&changed, &deps, &includes, &too_wide);
        write_json(&out.join(CORPUS), &corpus)?;
        // Each too-wide header once, as a record of its own.
        for h in &corpus.split.wide {
            let group = Group {
                file: h.clone(),
                status: changed_headers.get(h).copied().unwrap_or(Status::Modified),
                headers: Vec::new(),
            };
            let sha = hex::encode(Sha256::digest(
                patch_text(&old.source, &new.source, &group)?.as_bytes(),
            ));
            if records
                .iter()
                .any(|r| r.file == group.file && r.patch_sha256 == sha)
            {
                continue;
            }
            let refusals = reach.borrow().get(h).cloned().flatten().unwrap_or_default();
            let record = wide_record(group, sha, refusals);
            progress.note(&format!(
                "{h}: {} (a class of its own)",
                record.reason.as_deref().unwrap_or_default()
            ));
            append_record(&out.join(RECORDS), &record)?;
            records.push(record);
        }
        let groups = corpus.split.by_file();
        // This chunk's patches that have no record yet, in order; in a full run the
        // ones carrying headers wait for the end (each rebuilds every object its
        // headers reach, minutes for one patch), so a run stopped early has the most
        // records and the header-free share of the table complete.
        let mut jobs = Vec::new();
        for (i, file) in chunk.iter().enumerate() {
            let Some(group) = groups.get(file.as_str()) else {
                continue;
            };
            if opts.limit.is_none() && !group.headers.is_empty() {
                deferred.push((c * CHUNK + i, file.clone()));
                continue;
            }
            if let Some(job) = job_of(trees, &records, c * CHUNK + i, group)? {
                jobs.push(job);
            }
        }
        if build_in_lanes(&shared!(), &jobs, &mut records, total, progress)? {
            progress.note("the sample has its updates: stopping (--limit)");
            sample_ready = true;
            break 'chunks;
        }
    }
    if !sample_ready && !deferred.is_empty() {
        // The split is final now: the groups of the patches that waited.
        let groups = corpus.split.by_file();
        let mut jobs = Vec::new();
        for (index, file) in &deferred {
            if let Some(group) = groups.get(file.as_str()) {
                if let Some(job) = job_of(trees, &records, *index, group)? {
                    jobs.push(job);
                }
            }
        }
        // The largest batches first (one set of headers, one lane), so the lanes end
        // together.
        let mut size: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for (_, group, _, _) in &jobs {
            *size.entry(group.headers.clone()).or_default() += 1;
        }
        jobs.sort_by(|a, b| {
            let (ha, hb) = (&a.1.headers, &b.1.headers);
            size[hb].cmp(&size[ha]).then(ha.cmp(hb)).then(a.0.cmp(&b.0))
        });
        progress.note(&format!(
            "{} patches carrying headers, last ({} sets of headers)",
            jobs.len(),
            size.len()
        ));
        build_in_lanes(&shared!(), &jobs, &mut records, total, progress)?;
    }

    write_sample(
        &out,
        &corpus,
        &records,
        opts.sample_vmlinux,
        opts.sample_modules,
        opts.seed,
    )?;
    records.retain(|r| corpus.has_record_of(&r.file));
    Ok((corpus, records))
}

/// A patch to build: its index in the plan, group, text and the text's digest.
type Job<'a> = (usize, &'a Group, String, String);

/// The job of `group`, or `None` when `records` has its record already (a resumed run).
fn job_of<'a>(
    (old, new): (&Path, &Path),
    records: &[Record],
    index: usize,
    group: &'a Group,
) -> Result<Option<Job<'a>>> {
    let text = patch_text(old, new, group)?;
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    let done = records
        .iter()
        .any(|r| r.file == group.file && r.patch_sha256 == sha);
    Ok((!done).then_some((index, group, text, sha)))
}

/// Build `jobs` in the run's lanes, appending each record as it comes; returns whether
/// a limited run's sample has its updates (the lanes then take no more jobs).
fn build_in_lanes(
    shared: &Shared<'_>,
    jobs: &[Job<'_>],
    records: &mut Vec<Record>,
    total: usize,
    progress: &mut dyn Progress,
) -> Result<bool> {
    let opts = shared.opts;
    // Lanes take the next batch as they finish one; this thread writes the records in
    // the order they finish. A batch is the patches carrying one set of headers: built
    // one after the other in one lane's tree, each but the first finds the objects its
    // headers reach compiled already by the compiler cache (ci/coverage's ccache).
    let batches = &batches(jobs);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut first_error = None;
    let mut sample_ready = false;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        for lane in 0..opts.lanes.max(1).min(jobs.len().max(1)) {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || {
                let cache = lane_cache(&shared.opts.cache, lane);
                'batches: while let Some(batch) = batches.get(next.fetch_add(1, Ordering::SeqCst)) {
                    for &(index, group, ref text, ref sha) in batch.iter().map(|&j| &jobs[j]) {
                        if stop.load(Ordering::SeqCst) {
                            break 'batches;
                        }
                        let r = build_one(shared, &cache, index, group, text, sha.clone());
                        if tx.send((index, r)).is_err() {
                            break 'batches;
                        }
                    }
                }
            });
        }
        drop(tx);
        for (index, result) in rx {
            let record = match result {
                Ok(record) => record,
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            append_record(&shared.out.join(RECORDS), &record)?;
            progress.record(index, total, &record);
            records.push(record);
            if opts.limit.is_some() && enough_for_sample(records, opts) {
                stop.store(true, Ordering::SeqCst);
                sample_ready = true;
            }
        }
        Ok(())
    })?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(sample_ready),
    }
}

/// `jobs` (by position) in batches a lane builds one after the other: the patches
/// carrying the same changed headers together, in the order of their first job; a
/// header-free patch is a batch of its own.
fn batches(jobs: &[Job<'_>]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut by_headers: BTreeMap<&[String], usize> = BTreeMap::new();
    for (j, (_, group, _, _)) in jobs.iter().enumerate() {
        if group.headers.is_empty() {
            out.push(vec![j]);
            continue;
        }
        match by_headers.get(group.headers.as_slice()) {
            Some(&b) => out[b].push(j),
            None => {
                by_headers.insert(&group.headers, out.len());
                out.push(vec![j]);
            }
        }
    }
    out
}

/// A changed header too wide for a live update, as a record of its own: refused with
/// the builder's reason (`reaches N objects ...`).
fn wide_record(group: Group, sha: String, refusals: Vec<crate::error::Refusal>) -> Record {
    let (outcome, reason, rules) = classify(&Error::Refused(refusals));
    Record {
        file: group.file,
        status: group.status,
        headers: group.headers,
        patch_sha256: sha,
        outcome,
        object: None,
        target: None,
        id: None,
        package: None,
        reason: Some(reason),
        rules,
        seconds: 0.0,
    }
}

/// Whether a record is of a too-wide header (its own class), not of a `.c` patch.
pub fn is_header_record(r: &Record) -> bool {
    !r.file.ends_with(".c")
}

impl Corpus {
    /// The object whose build compiles `file`: its own, or its includer's.
    pub fn object_of(&self, file: &str) -> String {
        self.via
            .get(file)
            .cloned()
            .unwrap_or_else(|| object_of(file))
    }

    /// Whether `file` is a planned `.c` patch or a too-wide header of this corpus.
    pub fn has_record_of(&self, file: &str) -> bool {
        self.planned.iter().any(|p| p == file) || self.split.wide.iter().any(|h| h == file)
    }
}

/// Draw the seeded sample from `records` and write `OUT/sample/`: `sample.json`, the
/// sampled packages, and the trust policy of the run's signing key (`OUT/sign.key`).
/// `run` does it at its end; `ksplice-build coverage sample` does it for a run that
/// was stopped early.
pub fn write_sample(
    out: &Path,
    corpus: &Corpus,
    records: &[Record],
    vmlinux: usize,
    modules: usize,
    seed: u64,
) -> Result<Sample> {
    let key = manifests::SigningKey::load(&out.join("sign.key"))?;
    let trust = manifests::TrustPolicy::new(vec![key.public()], 1)?;
    let picked = sample(records, vmlinux, modules, seed);
    let sdir = out.join(SAMPLE_DIR);
    if sdir.exists() {
        std::fs::remove_dir_all(&sdir).map_err(Error::io(&sdir))?;
    }
    std::fs::create_dir_all(&sdir).map_err(Error::io(&sdir))?;
    let trust_path = sdir.join("trust.toml");
    std::fs::write(&trust_path, trust.to_toml()).map_err(Error::io(&trust_path))?;
    let mut updates = Vec::new();
    for r in &picked {
        let (Some(id), Some(pkg), Some(target)) = (&r.id, &r.package, &r.target) else {
            continue;
        };
        let src = out.join(pkg);
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::fs::copy(&src, sdir.join(&name)).map_err(Error::io(&src))?;
        updates.push(SampleUpdate {
            id: id.clone(),
            file: r.file.clone(),
            target: target.clone(),
            package: name,
        });
    }
    let sample = Sample {
        release: corpus.release.clone(),
        seed,
        trust: "trust.toml".into(),
        updates,
    };
    write_json(&sdir.join(SAMPLE_FILE), &sample)?;
    Ok(sample)
}

/// The first `n` files of `order` with vmlinux and module files in the proportion
/// `vmlinux : modules` (rounded up for vmlinux), the other kind filling in where one
/// runs short; `order`'s order is kept.
fn balanced(
    order: &[String],
    n: usize,
    vmlinux: usize,
    modules: usize,
    is_vmlinux: impl Fn(&String) -> bool,
) -> Vec<String> {
    let want_vmlinux = match vmlinux + modules {
        0 => 0,
        total => (n * vmlinux).div_ceil(total),
    };
    let vm: Vec<&String> = order.iter().filter(|f| is_vmlinux(f)).collect();
    let md: Vec<&String> = order.iter().filter(|f| !is_vmlinux(f)).collect();
    let take_vm = want_vmlinux.min(vm.len()).max(n.saturating_sub(md.len()));
    let take_md = n.saturating_sub(take_vm).min(md.len());
    let keep: BTreeSet<&String> = vm
        .into_iter()
        .take(take_vm)
        .chain(md.into_iter().take(take_md))
        .collect();
    order.iter().filter(|f| keep.contains(f)).cloned().collect()
}

fn enough_for_sample(records: &[Record], opts: &CoverageOptions) -> bool {
    let built = |vmlinux: bool| {
        records
            .iter()
            .filter(|r| r.outcome == Outcome::Built)
            .filter(|r| (r.target.as_deref() == Some("vmlinux")) == vmlinux)
            .count()
    };
    built(true) >= opts.sample_vmlinux && built(false) >= opts.sample_modules
}

/// `fs/proc/x.c` → `fs/proc/x.o`.
fn object_of(c: &str) -> String {
    format!("{}.o", c.trim_end_matches(".c"))
}

/// For each changed `.c` file: `Ok(vmlinux or module)` when kbuild builds it under
/// the tree's config, else `Err(why)`; a file built only as `#include`d by other
/// `.c` files goes into `via` with the first includer's object. kbuild answers: the `.cmd` file of an earlier
/// build, else `make -n -k` of the directories (objects kbuild names through `../`
/// are matched by their normalized path), then the parents' descent rules.
fn kbuild_builds(
    make: &Make,
    tree: &Path,
    files: &[&Changed],
    via: &mut BTreeMap<String, String>,
) -> Result<BTreeMap<String, std::result::Result<String, String>>> {
    let config_path = tree.join(".config");
    let config = std::fs::read_to_string(&config_path).map_err(Error::io(&config_path))?;
    let mut known: BTreeMap<String, ObjectBuild> = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for f in files {
        let obj = object_of(&f.path);
        let cmd = kbuild::object_outputs(tree, &obj)[1].clone();
        match std::fs::read_to_string(&cmd).ok().and_then(|t| {
            // kbuild names some objects through `../` in their own `.cmd` file too.
            kbuild::parse_compile_lines(&t)
                .into_iter()
                .find(|(o, _)| normalize(o) == obj)
                .map(|(_, b)| b)
        }) {
            Some(b) => {
                known.insert(obj, b);
            }
            None => {
                dirs.insert(crate::tree::kbuild::make_dir(tree, &obj));
            }
        }
    }
    // Objects kbuild names through `../` live in other directories than their source:
    // ask for the Makefile directories of every parent too, one make for all.
    let dirs: Vec<String> = dirs.into_iter().collect();
    for chunk in dirs.chunks(64) {
        for (obj, b) in make.dry_run_dirs(tree, chunk)? {
            known.entry(normalize(&obj)).or_insert(b);
        }
    }
    // Still unknown: kbuild may build it from another directory's Makefile (amdgpu's
    // `../display`): ask the two-level directory above, once per such directory.
    let wider: BTreeSet<String> = files
        .iter()
        .map(|f| object_of(&f.path))
        .filter(|o| !known.contains_key(o))
        .filter_map(|o| {
            let parts: Vec<&str> = o.split('/').collect();
            (parts.len() > 3).then(|| parts[..2].join("/"))
        })
        // Other architectures' and user-space directories are no kbuild object
        // directories of this build.
        .filter(|d| {
            let top = d.split('/').next().unwrap_or_default();
            !matches!(
                top,
                "tools" | "scripts" | "samples" | "usr" | "Documentation"
            ) && (top != "arch" || d == "arch/x86")
        })
        .filter(|d| tree.join(d).join("Makefile").is_file())
        .collect();
    let wider: Vec<String> = wider.into_iter().collect();
    for chunk in wider.chunks(16) {
        for (obj, b) in make.dry_run_dirs(tree, chunk)? {
            known.entry(normalize(&obj)).or_insert(b);
        }
    }
    // A file that is no object of its own may be `#include`d by .c files that are
    // (kernel/sched/build_utility.c includes cpufreq_schedutil.c): it is built where
    // they are. Their objects were asked about with the file's own directory.
    let mut includers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let unknown: Vec<&&Changed> = files
        .iter()
        .filter(|f| !known.contains_key(&object_of(&f.path)))
        .collect();
    if !unknown.is_empty() {
        let index = affected::IncludeIndex::load_or_build(tree)?;
        let graph = index.reverse();
        for f in unknown {
            let objs: Vec<String> = graph
                .of(&f.path)
                .iter()
                .filter(|d| d.ends_with(".c") && !affected::is_boot_code(d))
                .map(|d| object_of(d))
                .filter(|o| known.contains_key(o))
                .collect();
            if !objs.is_empty() {
                includers.insert(f.path.clone(), objs);
            }
        }
    }
    let mut out = BTreeMap::new();
    for f in files {
        let own = object_of(&f.path);
        let obj = match includers.get(&f.path) {
            Some(objs) => {
                via.insert(f.path.clone(), objs[0].clone());
                objs[0].clone()
            }
            None => own,
        };
        let answer = match known.get(&obj) {
            None => Err("kbuild does not compile it under this config".to_owned()),
            Some(b) => match affected::dir_disabled(
                tree,
                &crate::tree::kbuild::make_dir(tree, &obj),
                &config,
            ) {
                Some(why) => Err(why),
                None => Ok(b.module.clone().unwrap_or_else(|| "vmlinux".into())),
            },
        };
        out.insert(f.path.clone(), answer);
    }
    Ok(out)
}

/// The patch of one group: `diff -u` of the `.c` file and its headers, `a/` `b/` labels.
pub fn patch_text(old: &Path, new: &Path, group: &Group) -> Result<String> {
    let mut text = String::new();
    for rel in std::iter::once(&group.file).chain(&group.headers) {
        let side = |root: &Path| {
            let p = root.join(rel);
            if p.is_file() {
                p
            } else {
                PathBuf::from("/dev/null")
            }
        };
        let out = Command::new("diff")
            .arg("-u")
            .arg(format!("--label=a/{rel}"))
            .arg(format!("--label=b/{rel}"))
            .arg(side(old))
            .arg(side(new))
            .env("LC_ALL", "C")
            .output()
            .map_err(Error::io("diff"))?;
        match out.status.code() {
            Some(0 | 1) => text.push_str(&String::from_utf8_lossy(&out.stdout)),
            _ => {
                return Err(Error::Command {
                    command: format!("diff -u {rel}"),
                    dir: old.to_path_buf(),
                    status: out.status.to_string(),
                    output: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        }
    }
    Ok(text)
}

/// Each changed header alone: the builder's refusals when too wide (`Some`), or not.
type ReachCache = std::cell::RefCell<BTreeMap<String, Option<Vec<crate::error::Refusal>>>>;

/// Header sets known too wide for any one `.c` file (`Some(refusals)`) or not.
type WideCache = std::sync::Mutex<BTreeMap<Vec<String>, Option<Vec<crate::error::Refusal>>>>;

/// What every patch's build reads: the run's inputs, shared by the lanes.
struct Shared<'a> {
    opts: &'a CoverageOptions,
    out: &'a Path,
    old: &'a ReleaseEnv,
    profile: &'a crate::target::ImageProfile,
    kernel_version: &'a str,
    key: &'a Path,
    corpus: &'a Corpus,
    /// Lane 0's prepared pre tree (its include index answers the reach of headers).
    pre: &'a Path,
    new_source: &'a Path,
    wide: &'a WideCache,
    /// The older release's image, decompressed and parsed once for every patch.
    image: &'a std::sync::Arc<TargetImage>,
    /// The older release's source fingerprint, taken once (a walk of 75k files).
    fingerprint: &'a str,
}

/// Build one patch in the prepared trees of `cache` (its lane's).
fn build_one(
    cx: &Shared<'_>,
    cache: &Path,
    index: usize,
    group: &Group,
    text: &str,
    sha: String,
) -> Result<Record> {
    let Shared {
        opts,
        out,
        old,
        profile,
        kernel_version,
        key,
        corpus,
        pre,
        new_source: corpus_new,
        wide,
        ..
    } = *cx;
    let started = Instant::now();
    let stem = Path::new(&group.file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = create::default_id(&format!("cov-{index:04}-{stem}"), text);
    let mut record = Record {
        file: group.file.clone(),
        status: group.status,
        headers: group.headers.clone(),
        patch_sha256: sha,
        outcome: Outcome::Failed,
        object: None,
        target: None,
        id: None,
        package: None,
        reason: None,
        rules: Vec::new(),
        seconds: 0.0,
    };
    match corpus.built.get(&group.file) {
        Some(target) => {
            record.object = Some(corpus.object_of(&group.file));
            record.target = Some(target.clone());
        }
        // An added or removed file goes to the builder, which says why it refuses.
        None if group.status != Status::Modified => {}
        None => {
            record.outcome = Outcome::NotBuilt;
            record.reason = corpus.not_built.get(&group.file).cloned();
            record.seconds = started.elapsed().as_secs_f64();
            return Ok(record);
        }
    }
    record.id = Some(id.clone());
    // The builder's own first rule, asked before its build: a header change that
    // reaches more objects than a live update may rebuild is refused whatever the
    // objects (the builder would classify every one of them with kbuild first: hours
    // for the core headers a stable update touches).
    let changes: Vec<checkout::Change> = std::iter::once(&group.file)
        .chain(&group.headers)
        .map(|rel| checkout::Change {
            path: rel.clone(),
            content: std::fs::read(corpus_new.join(rel)).ok(),
        })
        .collect();
    if !group.headers.is_empty() {
        // Many patches carry the same core headers: their reach is asked once (a
        // different .c file adds at most its own object to it).
        let cached = wide
            .lock()
            .expect("invariant: no lane panics holding the cache")
            .get(&group.headers)
            .cloned();
        let refusals = match cached {
            Some(r) => r,
            None => {
                let plan = affected::plan(pre, &changes)?;
                let r =
                    (plan.objects.len() > affected::MAX_OBJECTS + 1).then(|| plan.refusals.clone());
                wide.lock()
                    .expect("invariant: no lane panics holding the cache")
                    .insert(group.headers.clone(), r.clone());
                if plan.objects.len() > affected::MAX_OBJECTS {
                    Some(plan.refusals)
                } else {
                    None
                }
            }
        };
        if let Some(refusals) = refusals {
            let e = Error::Refused(refusals);
            let (outcome, reason, rules) = classify(&e);
            record.outcome = outcome;
            record.reason = Some(reason);
            record.rules = rules;
            record.seconds = started.elapsed().as_secs_f64();
            return Ok(record);
        }
    }
    let patch = out.join("patches").join(format!("{id}.patch"));
    std::fs::write(&patch, text).map_err(Error::io(&patch))?;
    let work = out.join("work").join(&id);
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(Error::io(&work))?;
    }
    let packages = out.join("packages");
    let options = Options {
        source: Source::Patch {
            src: old.source.clone(),
            patch,
            fingerprint: Some(cx.fingerprint.to_owned()),
        },
        profile: ProfileInputs {
            src: None,
            config: Some(old.config.clone()),
            system_map: Some(out.join("profile").join(manifests::profile::SYSTEM_MAP)),
            target_image: Some(old.vmlinuz.clone()),
            release: Some(profile.release.clone()),
            version: Some(kernel_version.to_owned()),
            symvers: Some(old.symvers.clone()),
            system_root: PathBuf::from("/"),
            loaded_image: Some(std::sync::Arc::clone(cx.image)),
        },
        id: Some(id.clone()),
        description: Some(format!(
            "coverage: {} from {} to {}",
            group.file, corpus.from, corpus.to
        )),
        cves: Vec::new(),
        sign_keys: vec![key.to_path_buf()],
        jobs: opts.jobs,
        output: packages,
        work: Some(work.clone()),
        cache: cache.to_path_buf(),
        cache_max: opts.cache_max,
        etc_dir: opts.etc_dir.clone(),
        cumulative: None,
    };
    let mut summary = Summary::default();
    match create::create(&options, &mut summary) {
        Ok(pkg) => {
            record.outcome = Outcome::Built;
            record.package = Some(pkg.strip_prefix(out).unwrap_or(&pkg).display().to_string());
        }
        Err(e) => {
            let (outcome, reason, rules) = classify(&e);
            record.outcome = outcome;
            record.reason = Some(reason);
            record.rules = rules;
            // The pre object compiled, so a compile error after the change comes from
            // the change; when headers it depends on were left out as too wide, that
            // is the change needing them, which no live update can carry.
            let left_out =
                wide_dependencies(pre, &corpus.object_of(&group.file), &corpus.split.wide);
            if matches!(e, Error::Command { .. }) && !left_out.is_empty() {
                needs_wide_headers(&mut record, &left_out);
            }
        }
    }
    // Scratch is large (patched sources, objects): only the record stays.
    let _ = std::fs::remove_dir_all(&work);
    record.seconds = started.elapsed().as_secs_f64();
    Ok(record)
}

/// The rule of a `.c` change that does not compile without a changed header left out
/// of its patch as too wide ([`Split::wide`]).
pub const NEEDS_WIDE_HEADER: &str = "needs a header change too wide for a live update";

/// The too-wide changed headers (`wide`) that the pre object `object` depends on, by
/// its `.cmd` file in the prepared tree `pre`.
fn wide_dependencies(pre: &Path, object: &str, wide: &[String]) -> Vec<String> {
    let cmd = kbuild::object_outputs(pre, object)[1].clone();
    let Ok(text) = std::fs::read_to_string(cmd) else {
        return Vec::new();
    };
    let deps = parse_cmd_deps(&text);
    wide.iter().filter(|h| deps.contains(*h)).cloned().collect()
}

/// A build error of a patch whose too-wide headers were left out becomes a refusal
/// that names them (and keeps the compiler's first error as the evidence).
fn needs_wide_headers(record: &mut Record, left_out: &[String]) {
    let error = record.reason.take().unwrap_or_default();
    record.outcome = Outcome::Refused;
    record.reason = Some(bounded(
        &format!(
            "refused:\n  {}: {NEEDS_WIDE_HEADER}: it does not compile without the change of {} \
             (left out of its patch as too wide); the first error without it: {error}",
            record.file,
            left_out.join(", ")
        ),
        4000,
    ));
    record.rules = vec![NEEDS_WIDE_HEADER.to_owned()];
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).expect("invariant: plain data serializes");
    crate::atomic::write_atomic(path, &json, 0o644)
        .map_err(|(path, source)| Error::Io { path, source })
}

/// The records of earlier runs (a line that does not parse is an error: the file is
/// this tool's own).
pub fn load_records(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

fn append_record(path: &Path, record: &Record) -> Result<()> {
    let mut line = serde_json::to_string(record).expect("invariant: a record serializes");
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io(path))?;
    f.write_all(line.as_bytes()).map_err(Error::io(path))
}

pub fn load_corpus(out: &Path) -> Result<Corpus> {
    let path = out.join(CORPUS);
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse {
        path,
        line: e.line(),
        reason: e.to_string(),
    })
}

// ---- the table ------------------------------------------------------------------------------------

/// The counts of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub changed: usize,
    pub c_files: usize,
    pub c_added_removed: usize,
    pub header_only: usize,
    /// Changed headers too wide for a live update (their own class).
    pub wide_headers: usize,
    /// Of those, refused with the builder's reason (have a record).
    pub wide_refused: usize,
    pub other: usize,
    pub not_built: usize,
    pub vmlinux: usize,
    pub module: usize,
    pub planned: usize,
    pub recorded: usize,
    pub by_outcome: BTreeMap<String, usize>,
    pub built_vmlinux: usize,
    pub built_module: usize,
    pub vm_cases: usize,
    pub vm_ok: usize,
    pub vm_noload: usize,
    pub wrong: usize,
}

pub fn counts(corpus: &Corpus, records: &[Record], vm: Option<&VmResults>) -> Counts {
    let groups = &corpus.split.groups;
    let mut c = Counts {
        changed: corpus.changed,
        c_files: groups.len(),
        c_added_removed: groups
            .iter()
            .filter(|g| g.status != Status::Modified)
            .count(),
        header_only: corpus.split.header_only.len(),
        wide_headers: corpus.split.wide.len(),
        other: corpus.split.other.len(),
        not_built: corpus.not_built.len(),
        vmlinux: corpus.built.values().filter(|t| *t == "vmlinux").count(),
        module: corpus.built.values().filter(|t| *t != "vmlinux").count(),
        planned: corpus.planned.len(),
        recorded: records.iter().filter(|r| !is_header_record(r)).count(),
        ..Counts::default()
    };
    for r in records {
        if is_header_record(r) {
            c.wide_refused += usize::from(r.outcome == Outcome::Refused);
            continue;
        }
        *c.by_outcome
            .entry(r.outcome.as_str().to_owned())
            .or_default() += 1;
        if r.outcome == Outcome::Built {
            if r.target.as_deref() == Some("vmlinux") {
                c.built_vmlinux += 1;
            } else {
                c.built_module += 1;
            }
        }
    }
    if let Some(vm) = vm {
        c.vm_cases = vm.cases.len();
        c.vm_ok = vm.ok();
        c.vm_noload = vm.noload();
        c.wrong = vm.failed();
    }
    c
}

/// The markdown table and the ranked reasons.
pub fn table(corpus: &Corpus, records: &[Record], vm: Option<&VmResults>) -> String {
    let c = counts(corpus, records, vm);
    let n = |o: Outcome| c.by_outcome.get(o.as_str()).copied().unwrap_or(0);
    let pct = |a: usize, b: usize| {
        if b == 0 {
            "–".to_owned()
        } else {
            format!("{:.0} %", 100.0 * a as f64 / b as f64)
        }
    };
    let rec_v = records
        .iter()
        .filter(|r| r.target.as_deref() == Some("vmlinux"))
        .count();
    let rec_m = records
        .iter()
        .filter(|r| r.target.is_some() && r.target.as_deref() != Some("vmlinux"))
        .count();
    let mut s = String::new();
    let partial = c.recorded < c.planned;
    if partial {
        s.push_str(&format!(
            "**Partial:** {} of the {} planned patches have a result.\n\n",
            c.recorded, c.planned
        ));
    }
    s.push_str("| | files |\n|---|---:|\n");
    let mut row = |k: &str, v: String| s.push_str(&format!("| {k} | {v} |\n"));
    row("changed files", c.changed.to_string());
    row(
        "changed `.c` files (one patch each)",
        format!("{} ({} added or removed)", c.c_files, c.c_added_removed),
    );
    row(
        "changed headers no changed `.c` file depends on (header-only class)",
        c.header_only.to_string(),
    );
    row(
        "changed headers too wide for a live update (a class each; not in the `.c` patches)",
        format!(
            "{} ({} refused as too wide)",
            c.wide_headers, c.wide_refused
        ),
    );
    row(
        "other changed files (Makefiles, Kconfig, assembly, docs, …)",
        c.other.to_string(),
    );
    row(
        "`.c` files not built by the config (kbuild)",
        c.not_built.to_string(),
    );
    row(
        "built into vmlinux / into a module",
        format!("{} / {}", c.vmlinux, c.module),
    );
    row(
        "patches built through the builder",
        format!("{} of {}", c.recorded, c.planned),
    );
    row(
        "update built: vmlinux / module",
        format!(
            "{} of {} ({}) / {} of {} ({})",
            c.built_vmlinux,
            rec_v,
            pct(c.built_vmlinux, rec_v),
            c.built_module,
            rec_m,
            pct(c.built_module, rec_m)
        ),
    );
    row(
        "no functional change",
        n(Outcome::NoFunctionalChange).to_string(),
    );
    row("refused", n(Outcome::Refused).to_string());
    row("build error", n(Outcome::BuildError).to_string());
    row(
        "records of files not built (kbuild, or the builder's own check)",
        n(Outcome::NotBuilt).to_string(),
    );
    if n(Outcome::Failed) > 0 {
        row("tool failures", n(Outcome::Failed).to_string());
    }
    match vm {
        Some(_) => {
            row(
                "applied and undone in the VM (cases)",
                format!(
                    "{} of {}{}",
                    c.vm_ok,
                    c.vm_cases - c.vm_noload,
                    if c.vm_noload > 0 {
                        format!(" ({} module(s) would not load in the VM)", c.vm_noload)
                    } else {
                        String::new()
                    }
                ),
            );
            row("wrong results (must be 0)", c.wrong.to_string());
        }
        None => {
            row("applied and undone in the VM", "not run".into());
            row("wrong results (must be 0)", "not measured".into());
        }
    }
    for (title, outcome) in [
        ("Refusals by reason", Outcome::Refused),
        ("Build errors by message", Outcome::BuildError),
    ] {
        let ranked = rank(records, outcome);
        if ranked.is_empty() {
            continue;
        }
        s.push_str(&format!("\n{title} (patches; a patch counts once per reason):\n\n| patches | reason |\n|---:|---|\n"));
        for (reason, count) in ranked {
            s.push_str(&format!("| {count} | {} |\n", reason.replace('|', "\\|")));
        }
    }
    let secs: Vec<f64> = records
        .iter()
        .filter(|r| r.id.is_some())
        .map(|r| r.seconds)
        .collect();
    if !secs.is_empty() {
        s.push_str(&format!(
            "\nBuilder seconds per patch: mean {:.0}, total {:.0} over {} patches.\n",
            secs.iter().sum::<f64>() / secs.len() as f64,
            secs.iter().sum::<f64>(),
            secs.len()
        ));
    }
    s
}

/// docs/coverage.md: the table, dated, with the command that made it.
pub fn document(corpus: &Corpus, table: &str, command: &str) -> String {
    let date = time::OffsetDateTime::now_utc().date();
    let scope = match corpus.limit {
        Some(l) => format!(
            "a limited run (at most {l} patches, stopping once the VM sample had its updates)"
        ),
        None => "every changed `.c` file".to_owned(),
    };
    format!(
        "# Coverage of real kernel changes\n\n\
         How much of a real stable update ksplice turns into live updates: the source change \
         between Debian's `{from}` and `{to}` split into one patch per changed `.c` file (with \
         the changed headers kbuild says it depends on), each built against `{from}` \
         (`{release}`) by the builder, and a seeded sample of the built updates applied and \
         undone in QEMU on that release's kernel. How the tool works: README \
         \"Coverage\" and `builder/src/coverage.rs`.\n\n\
         Measured {date} over {scope} with:\n\n```\n{command}\n```\n\n{table}",
        from = corpus.from,
        to = corpus.to,
        release = corpus.release,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// nfnetlink_queue.c of 6.1.190-1 calls `ip_check_csum_start`, which the same
    /// update adds to `include/net/ip.h`, a header too wide for a live update: its
    /// patch cannot compile, and that is a refusal naming the header, not a builder bug.
    #[test]
    fn a_build_error_with_a_too_wide_header_left_out_is_a_refusal_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let pre = dir.path();
        std::fs::create_dir_all(pre.join("net/netfilter")).unwrap();
        std::fs::write(
            pre.join("net/netfilter/.nfnetlink_queue.o.cmd"),
            "cmd_net/netfilter/nfnetlink_queue.o := gcc ...\n\n\
             deps_net/netfilter/nfnetlink_queue.o := \\\n  \
             net/netfilter/nfnetlink_queue.c \\\n  \
             include/net/ip.h \\\n  \
             include/linux/skbuff.h \\\n\n\
             net/netfilter/nfnetlink_queue.o: $(deps_net/netfilter/nfnetlink_queue.o)\n",
        )
        .unwrap();
        let wide = [
            "include/linux/list.h".to_owned(),
            "include/net/ip.h".to_owned(),
        ];
        let left_out = wide_dependencies(pre, "net/netfilter/nfnetlink_queue.o", &wide);
        assert_eq!(left_out, ["include/net/ip.h"]);
        // A file whose object was never compiled depends on nothing we know of.
        assert!(wide_dependencies(pre, "net/core/dev.o", &wide).is_empty());

        let mut r = Record {
            file: "net/netfilter/nfnetlink_queue.c".into(),
            status: Status::Modified,
            headers: Vec::new(),
            patch_sha256: String::new(),
            outcome: Outcome::BuildError,
            object: None,
            target: None,
            id: None,
            package: None,
            reason: Some("nfnetlink_queue.c:378:21: error: implicit declaration".into()),
            rules: vec!["build error: implicit declaration".into()],
            seconds: 0.0,
        };
        needs_wide_headers(&mut r, &left_out);
        assert_eq!(r.outcome, Outcome::Refused);
        assert_eq!(r.rules, [NEEDS_WIDE_HEADER]);
        let reason = r.reason.unwrap();
        assert!(
            reason.contains("the change of include/net/ip.h"),
            "{reason}"
        );
        assert!(
            reason.ends_with("378:21: error: implicit declaration"),
            "{reason}"
        );
    }

    #[test]
    fn a_limited_run_takes_vmlinux_and_module_files_in_the_samples_proportion() {
        let order: Vec<String> = ["m1", "m2", "v1", "m3", "m4", "v2", "m5", "v3", "m6"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let is_vm = |f: &String| f.starts_with('v');
        // 5 : 3 of 4 is 3 vmlinux (rounded up) and 1 module, in the order given.
        assert_eq!(balanced(&order, 4, 5, 3, is_vm), ["m1", "v1", "v2", "v3"]);
        // Only 3 vmlinux files: modules fill the rest.
        assert_eq!(
            balanced(&order, 6, 5, 3, is_vm),
            ["m1", "m2", "v1", "m3", "v2", "v3"]
        );
        // More asked than there are: all of them.
        assert_eq!(balanced(&order, 20, 5, 3, is_vm), order);
        assert_eq!(balanced(&order, 2, 0, 3, is_vm), ["m1", "m2"]);
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn trees_differ_by_content_additions_and_removals() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        write(&a, "fs/x.c", "int x;\n");
        write(&b, "fs/x.c", "int y;\n"); // same size, other content
        write(&a, "fs/same.c", "same\n");
        write(&b, "fs/same.c", "same\n");
        write(&a, "gone.c", "g\n");
        write(&b, "include/new.h", "n\n");
        write(&a, ".git/HEAD", "x\n");
        let got = diff_trees(&a, &b).unwrap();
        assert_eq!(
            got,
            vec![
                Changed {
                    path: "fs/x.c".into(),
                    status: Status::Modified
                },
                Changed {
                    path: "gone.c".into(),
                    status: Status::Removed
                },
                Changed {
                    path: "include/new.h".into(),
                    status: Status::Added
                },
            ]
        );
    }

    #[test]
    fn headers_go_with_the_c_files_that_depend_on_them() {
        let ch = |p: &str, s: Status| Changed {
            path: p.into(),
            status: s,
        };
        let changed = vec![
            ch("fs/a.c", Status::Modified),
            ch("fs/b.c", Status::Modified),
            ch("drivers/off.c", Status::Modified),
            ch("fs/internal.h", Status::Modified),
            ch("include/linux/shared.h", Status::Modified),
            ch("include/linux/lonely.h", Status::Modified),
            ch("fs/fresh.h", Status::Added),
            ch("fs/Makefile", Status::Modified),
        ];
        let deps = |c: &str| -> Option<BTreeSet<String>> {
            let list: &[&str] = match c {
                "fs/a.c" => &[
                    "fs/internal.h",
                    "include/linux/shared.h",
                    "include/linux/kernel.h",
                ],
                "fs/b.c" => &["include/linux/shared.h"],
                _ => return None, // not built: no dependency list
            };
            Some(list.iter().map(|s| s.to_string()).collect())
        };
        let includes = |c: &str| -> Vec<String> {
            if c == "fs/b.c" {
                vec!["fresh.h".into()]
            } else {
                vec![]
            }
        };
        let s = split(&changed, &deps, &includes, &|_| false);
        let get = |f: &str| {
            s.groups
                .iter()
                .find(|g| g.file == f)
                .unwrap()
                .headers
                .clone()
        };
        assert_eq!(get("fs/a.c"), ["fs/internal.h", "include/linux/shared.h"]);
        assert_eq!(get("fs/b.c"), ["fs/fresh.h", "include/linux/shared.h"]);
        assert!(get("drivers/off.c").is_empty());
        assert_eq!(s.header_only, ["include/linux/lonely.h"]);
        assert_eq!(s.other, ["fs/Makefile"]);
        assert_eq!(s.groups.len(), 3);
    }

    #[test]
    fn cmd_files_give_tree_relative_dependencies() {
        let text = "savedcmd_fs/proc/cmdline.o := gcc -c -o fs/proc/cmdline.o fs/proc/cmdline.c\n\
source_fs/proc/cmdline.o := fs/proc/cmdline.c\n\
\n\
deps_fs/proc/cmdline.o := \\\n\
  include/linux/compiler-version.h \\\n\
    $(wildcard include/config/CC_VERSION_TEXT) \\\n\
  /usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h \\\n\
  drivers/gpu/drm/amd/amdgpu/../display/dc/dc.h \\\n\
  fs/proc/internal.h \\\n\
\n\
fs/proc/cmdline.o: $(deps_fs/proc/cmdline.o)\n\
\n\
$(deps_fs/proc/cmdline.o):\n";
        let deps: Vec<String> = parse_cmd_deps(text).into_iter().collect();
        assert_eq!(
            deps,
            [
                "drivers/gpu/drm/amd/display/dc/dc.h",
                "fs/proc/internal.h",
                "include/linux/compiler-version.h"
            ]
        );
        assert!(parse_cmd_deps("savedcmd_x.o := gcc\n").is_empty());
    }

    #[test]
    fn reasons_of_one_rule_normalize_to_one_text() {
        let a = normalize_reason(
            "changed __init/__exit code or data cannot be patched (.init.text.foo_init)",
        );
        let b = normalize_reason(
            "changed __init/__exit code or data cannot be patched (.init.text.bar_probe)",
        );
        assert_eq!(a, b);
        assert_eq!(a, "changed __init/__exit code or data cannot be patched");
        let r1 = normalize_reason("pre build does not match the target image (first difference at +0x1f: expected e9 found eb); the source or config is not the running kernel's (.text.x)");
        let r2 = normalize_reason("pre build does not match the target image (first difference at +0x3: expected 0f found 90); the source or config is not the running kernel's (.text.y)");
        assert_eq!(r1, r2);
        assert_eq!(
            normalize_reason(
                "included code references __init/__exit code or data: foo in .text.bar"
            ),
            "included code references __init/__exit code or data"
        );
        assert_eq!(
            normalize_reason("3 same-named functions in the target match its pre code; cannot tell which to replace"),
            normalize_reason("2 same-named functions in the target match its pre code; cannot tell which to replace (.text.f)")
        );
        assert_eq!(
            normalize_reason(
                "differ: post object is malformed: relocation against unsupported symbol \"\""
            ),
            normalize_reason(
                "differ: post object is malformed: relocation against unsupported symbol \"x\""
            )
        );
        // Different rules stay apart.
        assert_ne!(
            normalize_reason("changed data exists in the running kernel (.data.x)"),
            normalize_reason(
                "changed global read-only data may be used by code outside the patch (.rodata.x)"
            )
        );
    }

    #[test]
    fn builder_errors_become_outcomes_with_rules() {
        use crate::error::Refusal;
        let refused = Error::Refused(vec![
            Refusal {
                what: "fs/x.o:f".into(),
                reason: "changed __init/__exit code or data cannot be patched (.init.text)".into(),
            },
            Refusal {
                what: "fs/x.o:g".into(),
                reason: "changed __init/__exit code or data cannot be patched (.init.text.g)"
                    .into(),
            },
        ]);
        let (o, _, rules) = classify(&refused);
        assert_eq!(o, Outcome::Refused);
        assert_eq!(
            rules,
            ["changed __init/__exit code or data cannot be patched"]
        );
        let not_built = Error::Refused(vec![Refusal {
            what: "drivers/x.c".into(),
            reason: "not built by the target's config: CONFIG_X is not set (drivers/ does not descend into x/)".into(),
        }]);
        assert_eq!(classify(&not_built).0, Outcome::NotBuilt);
        let build = Error::Command {
            command: "make".into(),
            dir: "/t".into(),
            status: "exit 2".into(),
            output: "  CC  fs/x.o\nfs/x.c:10:5: error: implicit declaration of function ‘foo’\nmake: *** [x] Error 1\n".into(),
        };
        let (o, line, rules) = classify(&build);
        assert_eq!(o, Outcome::BuildError);
        assert_eq!(
            line,
            "fs/x.c:10:5: error: implicit declaration of function ‘foo’"
        );
        assert_eq!(rules, ["build error: implicit declaration of function ‘…’"]);
        assert_eq!(
            classify(&Error::NoChange { objects: vec![] }).0,
            Outcome::NoFunctionalChange
        );
        let io = Error::Io {
            path: "/x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(classify(&io).0, Outcome::Failed);
    }

    fn rec(file: &str, target: &str, outcome: Outcome) -> Record {
        Record {
            file: file.into(),
            status: Status::Modified,
            headers: vec![],
            patch_sha256: String::new(),
            outcome,
            object: None,
            target: Some(target.into()),
            id: Some(format!("id-{file}")),
            package: (outcome == Outcome::Built).then(|| format!("packages/{file}.tar.gz")),
            reason: None,
            rules: vec![],
            seconds: 1.0,
        }
    }

    #[test]
    fn the_sample_is_seeded_and_deterministic() {
        let mut records = Vec::new();
        for i in 0..20 {
            records.push(rec(&format!("v{i:02}.c"), "vmlinux", Outcome::Built));
            records.push(rec(&format!("m{i:02}.c"), "xfs", Outcome::Built));
            records.push(rec(&format!("r{i:02}.c"), "vmlinux", Outcome::Refused));
        }
        let a = sample(&records, 5, 3, 7);
        assert_eq!(a.len(), 8);
        assert!(a[..5]
            .iter()
            .all(|r| r.target.as_deref() == Some("vmlinux")));
        assert!(a[5..].iter().all(|r| r.target.as_deref() == Some("xfs")));
        assert!(a.iter().all(|r| r.outcome == Outcome::Built));
        // The same seed picks the same files whatever the records' order.
        let mut shuffled = records.clone();
        shuffled.reverse();
        let files = |v: &[Record]| v.iter().map(|r| r.file.clone()).collect::<Vec<_>>();
        assert_eq!(files(&a), files(&sample(&shuffled, 5, 3, 7)));
        assert_ne!(files(&a), files(&sample(&records, 5, 3, 8)));
        // Fewer candidates than asked: all of them.
        assert_eq!(sample(&records[..3], 5, 3, 1).len(), 2);
        // The generator is fixed: a known first value for seed 0 (splitmix64).
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn refusals_rank_by_patch_count() {
        let mut a = rec("a.c", "vmlinux", Outcome::Refused);
        a.rules = vec!["x".into(), "y".into()];
        let mut b = rec("b.c", "vmlinux", Outcome::Refused);
        b.rules = vec!["y".into()];
        let mut c = rec("c.c", "vmlinux", Outcome::BuildError);
        c.rules = vec!["y".into()];
        assert_eq!(
            rank(&[a, b, c], Outcome::Refused),
            [("y".to_string(), 2), ("x".to_string(), 1)]
        );
    }

    #[test]
    fn vm_metrics_are_read_per_update_and_case() {
        let log = "noise\n@@KSPLICE scenario=coverage-sample event=start t=1\n\
[  3.1] x @@KSPLICE scenario=coverage-sample event=metric name=cov-0001-a.vmlinux value=ok\n\
@@KSPLICE scenario=coverage-sample event=metric name=cov-0002-b.unloaded value=ok\n\
@@KSPLICE scenario=coverage-sample event=metric name=cov-0002-b.loaded value=fail\n\
@@KSPLICE scenario=other event=metric name=z.vmlinux value=fail\n\
@@KSPLICE scenario=coverage-sample event=end result=fail rc=1 t=9\n";
        let vm = parse_vm_log(log, "coverage-sample");
        assert!(vm.finished);
        assert_eq!((vm.ok(), vm.failed(), vm.noload()), (2, 1, 0));
        assert_eq!(
            vm.cases[&("cov-0002-b".to_string(), "loaded".to_string())],
            "fail"
        );
    }

    /// The tool's host side on a tiny two-tree fixture: the change split per `.c`
    /// file with its headers, each patch applying to the old tree with `patch -p1`
    /// to give the new files, and the table counting what it was given.
    #[test]
    fn a_two_tree_fixture_splits_into_patches_that_apply() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        write(
            &a,
            "fs/x.c",
            "#include \"x.h\"\nint f(void) { return 1; }\n",
        );
        write(
            &b,
            "fs/x.c",
            "#include \"x.h\"\nint f(void) { return 2; }\n",
        );
        write(&a, "fs/x.h", "#define X 1\n");
        write(&b, "fs/x.h", "#define X 2\n");
        write(&a, "fs/y.c", "int g;\n");
        write(&b, "fs/y.c", "int g = 1;\n");
        write(&a, "include/z.h", "z\n");
        write(&b, "include/z.h", "zz\n");
        let changed = diff_trees(&a, &b).unwrap();
        let deps = |c: &str| -> Option<BTreeSet<String>> {
            (c == "fs/x.c").then(|| BTreeSet::from(["fs/x.h".to_string()]))
        };
        let s = split(&changed, &deps, &|_| vec![], &|_| false);
        assert_eq!(s.header_only, ["include/z.h"]);
        for g in &s.groups {
            let text = patch_text(&a, &b, g).unwrap();
            let work = d.path().join(format!("apply-{}", g.file.replace('/', "_")));
            let status = Command::new("cp")
                .arg("-a")
                .arg(&a)
                .arg(&work)
                .status()
                .unwrap();
            assert!(status.success());
            let pf = d.path().join("p.patch");
            std::fs::write(&pf, &text).unwrap();
            let st = Command::new("patch")
                .args(["-p1", "-s", "-d"])
                .arg(&work)
                .arg("-i")
                .arg(&pf)
                .status()
                .unwrap();
            assert!(st.success(), "{text}");
            for f in std::iter::once(&g.file).chain(&g.headers) {
                assert_eq!(
                    std::fs::read(work.join(f)).unwrap(),
                    std::fs::read(b.join(f)).unwrap(),
                    "{f}"
                );
            }
        }
        let corpus = Corpus {
            from: "1".into(),
            to: "2".into(),
            release: "r".into(),
            changed: changed.len(),
            split: s.clone(),
            built: BTreeMap::from([("fs/x.c".to_string(), "vmlinux".to_string())]),
            not_built: BTreeMap::from([("fs/y.c".to_string(), "off".to_string())]),
            planned: vec!["fs/x.c".into(), "fs/y.c".into()],
            limit: None,
            via: BTreeMap::new(),
        };
        let records = vec![rec("fs/x.c", "vmlinux", Outcome::Built)];
        let t = table(&corpus, &records, None);
        assert!(t.contains("**Partial:** 1 of the 2"), "{t}");
        assert!(t.contains("| changed files | 4 |"), "{t}");
        assert!(t.contains("1 of 1 (100 %)"), "{t}");
        let c = counts(&corpus, &records, None);
        assert_eq!((c.vmlinux, c.not_built, c.header_only), (1, 1, 1));
    }

    #[test]
    fn too_wide_headers_are_a_class_of_their_own() {
        // Issue 12: every .c file depends on a few changed core headers; carried in
        // every patch, they made each one "too wide". A header too wide alone is left
        // out of the patches and counted once; narrower headers stay with their .c.
        let ch = |p: &str| Changed {
            path: p.into(),
            status: Status::Modified,
        };
        let changed = vec![
            ch("fs/a.c"),
            ch("fs/b.c"),
            ch("fs/internal.h"),
            ch("include/linux/list.h"),
            ch("include/linux/lockdep.h"),
            ch("include/linux/lonely.h"),
        ];
        let deps = |c: &str| -> Option<BTreeSet<String>> {
            let list: &[&str] = match c {
                "fs/a.c" => &[
                    "fs/internal.h",
                    "include/linux/list.h",
                    "include/linux/lockdep.h",
                ],
                "fs/b.c" => &["include/linux/list.h"],
                _ => return None,
            };
            Some(list.iter().map(|s| s.to_string()).collect())
        };
        let wide = |h: &str| h == "include/linux/list.h" || h == "include/linux/lockdep.h";
        let s = split(&changed, &deps, &|_| vec![], &wide);
        let get = |f: &str| {
            s.groups
                .iter()
                .find(|g| g.file == f)
                .unwrap()
                .headers
                .clone()
        };
        assert_eq!(get("fs/a.c"), ["fs/internal.h"]);
        assert!(get("fs/b.c").is_empty());
        assert_eq!(s.wide, ["include/linux/list.h", "include/linux/lockdep.h"]);
        // Wide headers are not header-only (a .c depends on them), counted once.
        assert_eq!(s.header_only, ["include/linux/lonely.h"]);

        // Their records: refused with the builder's reason, in their own row, not
        // among the patches or the ranked reasons of the patches.
        let refusal = crate::error::Refusal {
            what: "include/linux/list.h".into(),
            reason: "reaches 9000 objects (more than 400); too wide for a live update".into(),
        };
        let header = wide_record(
            Group {
                file: "include/linux/list.h".into(),
                status: Status::Modified,
                headers: vec![],
            },
            "sha".into(),
            vec![refusal],
        );
        assert_eq!(header.outcome, Outcome::Refused);
        assert!(
            header.reason.as_deref().unwrap().contains("too wide"),
            "{header:?}"
        );
        assert!(is_header_record(&header));
        let corpus = Corpus {
            from: "1".into(),
            to: "2".into(),
            release: "r".into(),
            changed: changed.len(),
            split: s.clone(),
            built: BTreeMap::from([
                ("fs/a.c".to_string(), "vmlinux".to_string()),
                ("fs/b.c".to_string(), "xfs".to_string()),
            ]),
            not_built: BTreeMap::new(),
            planned: vec!["fs/a.c".into(), "fs/b.c".into()],
            limit: None,
            via: BTreeMap::new(),
        };
        assert!(corpus.has_record_of("include/linux/list.h"));
        assert!(!corpus.has_record_of("include/linux/lonely.h"));
        let records = vec![
            rec("fs/a.c", "vmlinux", Outcome::Built),
            rec("fs/b.c", "xfs", Outcome::Built),
            header,
        ];
        let c = counts(&corpus, &records, None);
        assert_eq!((c.recorded, c.wide_headers, c.wide_refused), (2, 2, 1));
        assert_eq!(c.by_outcome.get("refused"), None);
        assert!(rank(&records, Outcome::Refused).is_empty());
        let t = table(&corpus, &records, None);
        assert!(
            t.contains("| changed headers too wide for a live update (a class each; not in the `.c` patches) | 2 (1 refused as too wide) |"),
            "{t}"
        );
        assert!(!t.contains("**Partial:**"), "{t}");
    }
}
