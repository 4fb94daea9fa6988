//! The release pipeline's builder end (docs/pipeline.md): every fix of a fixes
//! directory built for one kernel release, as the levels of that release's
//! cumulative stream (`ksplice-build release`), and the GitLab CI child pipeline
//! with one job per release (`ksplice-build plan`).
//!
//! Level N of a release's stream holds the first N fixes that apply to the release
//! and build for it, in the fixes' `order`: a fix that does not apply, changes no
//! code of this release, or is refused is reported with its reason and left out of
//! the levels after it, and the others still build. Every level is one
//! `ksplice-create --patch` run against the release's pristine source with the
//! concatenation of its fixes, so all levels share one prepared tree (and its pre
//! objects); the target profile comes from the release's packages
//! ([`crate::target::write_profile`]), no booted host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::create::{self, Cumulative, Options};
use crate::error::{Error, Result};
use crate::summary::Summary;
use crate::target::{ImageInputs, ProfileInputs};

/// The name of a release's environment file under `$KSPLICE_CACHE/<version>/`
/// (written by `ci/setup-kernel`; docs/pipeline.md "Kernel releases").
pub const ENV_FILE: &str = "kernel.env";

/// The `kernel` value that names apt's candidate (`$KSPLICE_CACHE/kernel.env`).
pub const CANDIDATE: &str = "candidate";

/// A metadata or env file larger than this is not one.
const MAX_INPUT: u64 = 1 << 20;

/// One kernel release as `ci/setup-kernel` prepared it: its packages, unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseEnv {
    /// Debian package version, e.g. `6.1.187-1`.
    pub version: String,
    /// `uname -r`, e.g. `6.1.0-53-amd64`.
    pub release: String,
    /// The pristine extracted source.
    pub source: PathBuf,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// The headers package's `Module.symvers`.
    pub symvers: PathBuf,
}

impl ReleaseEnv {
    /// The release named `kernel` (see [`env_file`]) in `cache`.
    pub fn find(cache: &Path, kernel: &str) -> Result<ReleaseEnv> {
        Self::load(&env_file(cache, kernel)?)
    }

    /// Reads one env file: `KEY=VALUE` lines, every key present, every path absolute
    /// and existing.
    pub fn load(file: &Path) -> Result<ReleaseEnv> {
        let text = read_bounded(file)?;
        let mut vars = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(Error::Parse {
                    path: file.to_path_buf(),
                    line: i + 1,
                    reason: "not KEY=VALUE".into(),
                });
            };
            vars.insert(k.trim(), v.trim());
        }
        let get = |key: &'static str| -> Result<String> {
            match vars.get(key) {
                Some(v) if !v.is_empty() => Ok((*v).to_owned()),
                _ => Err(Error::Parse {
                    path: file.to_path_buf(),
                    line: 0,
                    reason: format!("{key} is missing: run ci/setup-kernel again"),
                }),
            }
        };
        let path = |key: &'static str| -> Result<PathBuf> {
            let p = PathBuf::from(get(key)?);
            if !p.is_absolute() || !p.exists() {
                return Err(Error::Parse {
                    path: file.to_path_buf(),
                    line: 0,
                    reason: format!(
                        "{key}={} is not an existing absolute path: run ci/setup-kernel again",
                        p.display()
                    ),
                });
            }
            Ok(p)
        };
        let env = ReleaseEnv {
            version: get("KSPLICE_KVERSION")?,
            release: get("KSPLICE_KRELEASE")?,
            source: path("KSPLICE_KSOURCE")?,
            vmlinuz: path("KSPLICE_VMLINUZ")?,
            config: path("KSPLICE_KCONFIG")?,
            symvers: path("KSPLICE_KHEADERS")?.join("Module.symvers"),
        };
        check_kernel_name(&env.version)?;
        check_kernel_name(&env.release)?;
        Ok(env)
    }
}

/// The env file of the release named `kernel` in `cache` — the one rule the
/// builder, the e2e harness and `ci/kernel-env` follow (docs/releases.md):
/// [`CANDIDATE`] is `cache/kernel.env`; a package version (`6.1.187-1`) is
/// `cache/<version>/kernel.env`; an ABI (`6.1.0-53-amd64` or `6.1.0-53`) is the one
/// `cache/*/kernel.env` whose `KSPLICE_KRELEASE` it names.
pub fn env_file(cache: &Path, kernel: &str) -> Result<PathBuf> {
    check_kernel_name(kernel)?;
    let missing = || Error::Missing {
        what: "kernel release",
        hint: format!(
            "{kernel} is not set up in {}: run ci/setup-kernel{}",
            cache.display(),
            if kernel == CANDIDATE {
                String::new()
            } else {
                format!(" {kernel}")
            }
        ),
    };
    if kernel == CANDIDATE {
        let file = cache.join(ENV_FILE);
        return if file.is_file() {
            Ok(file)
        } else {
            Err(missing())
        };
    }
    let direct = cache.join(kernel).join(ENV_FILE);
    if direct.is_file() {
        return Ok(direct);
    }
    let wanted = format!("KSPLICE_KRELEASE={}", abi_release(kernel));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(cache).map_err(Error::io(cache))? {
        let file = entry.map_err(Error::io(cache))?.path().join(ENV_FILE);
        if file.is_file() && read_bounded(&file)?.lines().any(|l| l.trim() == wanted) {
            found.push(file);
        }
    }
    found.sort();
    match found.len() {
        0 => Err(missing()),
        1 => Ok(found.remove(0)),
        n => Err(Error::InvalidOption {
            option: "kernel",
            reason: format!(
                "{kernel} names {n} set-up releases ({}): give the package version",
                found
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// `6.1.0-53` → `6.1.0-53-amd64`; a full ABI is returned as it is.
fn abi_release(kernel: &str) -> String {
    if kernel.ends_with("-amd64") {
        kernel.to_owned()
    } else {
        format!("{kernel}-amd64")
    }
}

/// A release name is a path component and a job name: plain characters only.
fn check_kernel_name(kernel: &str) -> Result<()> {
    let ok = !kernel.is_empty()
        && kernel.len() <= 64
        && kernel.starts_with(|c: char| c.is_ascii_alphanumeric())
        && kernel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '~' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            option: "kernel",
            reason: format!(
                "{kernel:?} is not a package version (6.1.187-1), an ABI (6.1.0-53-amd64) or {CANDIDATE:?}"
            ),
        })
    }
}

fn read_bounded(file: &Path) -> Result<String> {
    let data = crate::target::from_image::read_limited(file, MAX_INPUT)?;
    String::from_utf8(data).map_err(|_| Error::Parse {
        path: file.to_path_buf(),
        line: 0,
        reason: "not UTF-8 text".into(),
    })
}

// ---- fixes ---------------------------------------------------------------------------------

/// `FIXES/<id>.toml`: one fix's metadata; its patch is `FIXES/<id>.patch` unless
/// `patch` names another file (relative to the directory).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixFile {
    order: u32,
    description: String,
    #[serde(default)]
    cves: Vec<String>,
    patch: Option<String>,
}

/// One fix, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    /// The metadata file's stem, an update id by the package rules.
    pub id: String,
    /// Fixes become levels in ascending `order`; two fixes may not share one.
    pub order: u32,
    pub description: String,
    pub cves: Vec<String>,
    pub patch: PathBuf,
}

/// Every fix in `dir`, in level order. Refused (nothing built) when any metadata
/// file is malformed, names a missing patch, or shares its `order` with another.
pub fn load_fixes(dir: &Path) -> Result<Vec<Fix>> {
    let entries = std::fs::read_dir(dir).map_err(Error::io(dir))?;
    let mut fixes = Vec::new();
    for entry in entries {
        let path = entry.map_err(Error::io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let bad = |line: usize, reason: String| Error::Parse {
            path: path.clone(),
            line,
            reason,
        };
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| bad(0, "the file name is not UTF-8".into()))?
            .to_owned();
        manifests::manifest::check_id(&id).map_err(|e| bad(0, e.to_string()))?;
        let text = read_bounded(&path)?;
        let meta: FixFile = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].lines().count().max(1))
                .unwrap_or(0);
            bad(line, e.message().to_owned())
        })?;
        for cve in &meta.cves {
            manifests::manifest::check_cve(cve).map_err(|e| bad(0, e.to_string()))?;
        }
        if meta.description.trim().is_empty() || meta.description.chars().any(char::is_control) {
            return Err(bad(
                0,
                "description must be one non-empty line without control characters".into(),
            ));
        }
        // The fixes directory comes from the build server's own git repository: a
        // patch may live elsewhere in it (`../tests/patches/x.patch`), not outside paths.
        let patch_name = meta.patch.unwrap_or_else(|| format!("{id}.patch"));
        if patch_name.is_empty() || Path::new(&patch_name).is_absolute() {
            return Err(bad(
                0,
                format!("patch {patch_name:?} must be a path relative to the fixes directory"),
            ));
        }
        let patch = dir.join(&patch_name);
        if !std::fs::metadata(&patch).is_ok_and(|m| m.is_file()) {
            return Err(bad(
                0,
                format!("patch {} is not a regular file", patch.display()),
            ));
        }
        fixes.push(Fix {
            id,
            order: meta.order,
            description: meta.description,
            cves: meta.cves,
            patch,
        });
    }
    fixes.sort_by(|a, b| (a.order, &a.id).cmp(&(b.order, &b.id)));
    for pair in fixes.windows(2) {
        if pair[0].order == pair[1].order {
            return Err(Error::InvalidOption {
                option: "fixes",
                reason: format!(
                    "{} and {} have the same order {}",
                    pair[0].id, pair[1].id, pair[0].order
                ),
            });
        }
    }
    if fixes.is_empty() {
        return Err(Error::Missing {
            what: "fixes",
            hint: format!("no <id>.toml in {}", dir.display()),
        });
    }
    Ok(fixes)
}

// ---- one release -----------------------------------------------------------------------------

/// What `ksplice-build release` was asked to do.
#[derive(Debug, Clone)]
pub struct ReleaseOptions {
    /// Version, ABI or [`CANDIDATE`].
    pub kernel: String,
    pub fixes: PathBuf,
    /// Receives `packages/`, `profile/`, `report.json` (and `work/`, scratch).
    pub out: PathBuf,
    /// The stream's name (every release has its own stream of this name).
    pub stream: String,
    pub sign_keys: Vec<PathBuf>,
    pub jobs: usize,
    /// `$KSPLICE_CACHE`: the release's set-up files and the prepared trees.
    pub cache: PathBuf,
    /// `$KSPLICE_CACHE_MAX` in bytes ([`crate::tree::evict`]).
    pub cache_max: u64,
    pub etc_dir: PathBuf,
}

/// What happened to one fix in one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// In the stream from level `level` on.
    Built,
    /// The patch does not apply to this release's source (with the fixes before it),
    /// or it changes no code this release's build runs.
    NotApplicable,
    /// It applies, but cannot be made into a safe live update for this release
    /// (differ or run-pre refusal, or it does not build).
    Refused,
}

/// One fix's line in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixReport {
    pub id: String,
    pub order: u32,
    pub outcome: Outcome,
    /// The stream level that first contains the fix (when built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// The package of that level, relative to the output directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Why it is not built, in the builder's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub seconds: f64,
    /// Seconds per stage (checkout, prepare, compile, diff, module, package).
    pub stages: BTreeMap<String, f64>,
}

/// `OUT/report.json` (format 1; docs/pipeline.md "Report").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub kernel: ReportKernel,
    pub stream: String,
    pub fixes: Vec<FixReport>,
    /// Ids of the stream's levels, level 1 first.
    pub levels: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportKernel {
    pub version: String,
    pub release: String,
    pub build_id: String,
    /// Seconds to write the profile from the packages (kallsyms decoded).
    pub profile_seconds: f64,
    /// Seconds to fingerprint the pristine source (once per job; every level
    /// reuses it to find the release's prepared tree).
    #[serde(default)]
    pub source_seconds: f64,
}

/// Where a long run says how far it is (a bar on a terminal, lines in a CI log).
pub trait Progress {
    /// Fix `index` (0-based) of `total` starts.
    fn fix(&mut self, index: usize, total: usize, fix: &Fix);
    /// What the pipeline calls when a stage of the current fix starts.
    fn stage_hook(&self) -> crate::summary::StageHook;
    /// The current fix is done.
    fn done(&mut self, report: &FixReport);
}

/// The id of level `level` of `stream` for `release`: `main-6_1_0-53-amd64-2`
/// (ids have no dots; every release's levels get ids of their own in one repository).
pub fn level_id(stream: &str, release: &str, level: u32) -> String {
    format!("{stream}-{}-{level}", release.replace('.', "_"))
}

/// Build every fix for one release; see the module doc. Errors that are not a
/// fix's own (the release not set up, unreadable inputs, a malformed fixes
/// directory) stop the run; a fix's refusal does not.
pub fn release(opts: &ReleaseOptions, progress: &mut dyn Progress) -> Result<Report> {
    let started = Instant::now();
    let env = ReleaseEnv::find(&opts.cache, &opts.kernel)?;
    let fixes = load_fixes(&opts.fixes)?;
    manifests::manifest::check_id(&opts.stream).map_err(|e| Error::InvalidOption {
        option: "stream",
        reason: e.to_string(),
    })?;
    let last_id = level_id(&opts.stream, &env.release, fixes.len() as u32);
    manifests::manifest::check_id(&last_id).map_err(|e| Error::InvalidOption {
        option: "stream",
        reason: format!("the level ids would be invalid ({last_id}): {e}"),
    })?;

    // Absolute: the patch program and kbuild run in other directories.
    std::fs::create_dir_all(&opts.out).map_err(Error::io(&opts.out))?;
    let out = std::path::absolute(&opts.out).map_err(Error::io(&opts.out))?;
    let profile_dir = out.join("profile");
    let packages = out.join("packages");
    let work = out.join("work");
    for d in [&packages, &work] {
        std::fs::create_dir_all(d).map_err(Error::io(d))?;
    }
    remove_stale_packages(&packages)?;
    let profile = crate::target::write_profile(
        &ImageInputs {
            image: env.vmlinuz.clone(),
            config: env.config.clone(),
            symvers: Some(env.symvers.clone()),
        },
        &profile_dir,
    )?;
    if profile.release != env.release {
        return Err(Error::Disagree {
            field: "release",
            first_source: env.vmlinuz.display().to_string(),
            first: profile.release.clone(),
            second_source: "KSPLICE_KRELEASE".into(),
            second: env.release.clone(),
        });
    }
    let version_file = profile_dir.join(manifests::profile::VERSION);
    let kernel_version = std::fs::read_to_string(&version_file)
        .map_err(Error::io(&version_file))?
        .trim()
        .to_owned();
    // Read and decompressed once: every level's offline run-pre reads it.
    let image = std::sync::Arc::new(crate::target::identity::TargetImage::load(&env.vmlinuz)?);
    let profile_seconds = started.elapsed().as_secs_f64();
    let fingerprint_started = Instant::now();
    let fingerprint = crate::checkout::source_fingerprint(&env.source)?;
    let mut report = Report {
        format: 1,
        kernel: ReportKernel {
            version: env.version.clone(),
            release: env.release.clone(),
            build_id: profile.build_id.clone(),
            profile_seconds,
            source_seconds: fingerprint_started.elapsed().as_secs_f64(),
        },
        stream: opts.stream.clone(),
        fixes: Vec::new(),
        levels: Vec::new(),
        seconds: 0.0,
    };

    let mut accepted: Vec<&Fix> = Vec::new();
    for (index, fix) in fixes.iter().enumerate() {
        progress.fix(index, fixes.len(), fix);
        let fix_started = Instant::now();
        let level = accepted.len() as u32 + 1;
        let id = level_id(&opts.stream, &env.release, level);
        let mut level_fixes = accepted.clone();
        level_fixes.push(fix);
        let patch = work.join(format!("level-{level}-{}.patch", fix.id));
        let mut text = Vec::new();
        for f in &level_fixes {
            let mut p = std::fs::read(&f.patch).map_err(Error::io(&f.patch))?;
            if !p.ends_with(b"\n") {
                p.push(b'\n');
            }
            text.extend(p);
        }
        std::fs::write(&patch, text).map_err(Error::io(&patch))?;
        let level_work = work.join(format!("level-{level}-{}", fix.id));
        if level_work.exists() {
            std::fs::remove_dir_all(&level_work).map_err(Error::io(&level_work))?;
        }
        let options = Options {
            source: crate::checkout::Source::Patch {
                src: env.source.clone(),
                patch: patch.clone(),
                fingerprint: Some(fingerprint.clone()),
            },
            profile: ProfileInputs {
                src: None,
                config: Some(env.config.clone()),
                system_map: Some(profile_dir.join(manifests::profile::SYSTEM_MAP)),
                target_image: Some(env.vmlinuz.clone()),
                release: Some(profile.release.clone()),
                version: Some(kernel_version.clone()),
                symvers: Some(env.symvers.clone()),
                system_root: PathBuf::from("/"),
                loaded_image: Some(std::sync::Arc::clone(&image)),
            },
            id: Some(id.clone()),
            description: Some(level_description(&opts.stream, level, &level_fixes)),
            cves: level_cves(&level_fixes),
            sign_keys: opts.sign_keys.clone(),
            jobs: opts.jobs,
            output: packages.clone(),
            work: Some(level_work.clone()),
            cache: opts.cache.clone(),
            cache_max: opts.cache_max,
            etc_dir: opts.etc_dir.clone(),
            cumulative: Some(Cumulative {
                stream: Some(opts.stream.clone()),
                level: Some(level),
                replaces: report.levels.clone(),
            }),
        };
        let mut summary = Summary {
            on_stage: Some(progress.stage_hook()),
            ..Summary::default()
        };
        let result = create::create(&options, &mut summary);
        let stages = summary
            .times
            .iter()
            .map(|(s, d)| ((*s).to_owned(), d.as_secs_f64()))
            .collect();
        let (outcome, level_out, package, reason) = match result {
            Ok(pkg) => {
                accepted.push(fix);
                report.levels.push(id.clone());
                let name = pkg.strip_prefix(&out).unwrap_or(&pkg).display().to_string();
                // A built level's scratch is not needed again.
                let _ = std::fs::remove_dir_all(&level_work);
                (Outcome::Built, Some(level), Some(name), None)
            }
            Err(e) => match classify(&e) {
                Some(outcome) => (outcome, None, None, Some(reason_text(&e))),
                None => return Err(e),
            },
        };
        let fr = FixReport {
            id: fix.id.clone(),
            order: fix.order,
            outcome,
            level: level_out,
            package,
            reason,
            seconds: fix_started.elapsed().as_secs_f64(),
            stages,
        };
        progress.done(&fr);
        report.fixes.push(fr);
    }
    report.seconds = started.elapsed().as_secs_f64();
    let json = serde_json::to_vec_pretty(&report).expect("invariant: the report serializes");
    let path = out.join("report.json");
    crate::atomic::write_atomic(&path, &json, 0o644)
        .map_err(|(path, source)| Error::Io { path, source })?;
    Ok(report)
}

/// The packages an earlier run left in `OUT/packages/`: after this run the
/// directory holds exactly the packages `report.json` names. Only package
/// files go (`ksplice-*.tar.gz`, unlinked, links not followed).
fn remove_stale_packages(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ksplice-") && name.ends_with(".tar.gz") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(Error::io(&path))?;
        }
    }
    Ok(())
}

/// A fix's own failure, reported and skipped; `None` for errors that would stop
/// every fix of the release alike (inputs, I/O, the prepared tree).
fn classify(e: &Error) -> Option<Outcome> {
    match e {
        Error::PatchDoesNotApply { .. } | Error::NoChange { .. } => Some(Outcome::NotApplicable),
        Error::Refused(_) | Error::Command { .. } | Error::Module(_) | Error::Differ { .. } => {
            Some(Outcome::Refused)
        }
        _ => None,
    }
}

/// The reason in the report: the builder's message, bounded.
fn reason_text(e: &Error) -> String {
    const MAX: usize = 4000;
    let text = e.to_string();
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One line (manifest descriptions have no control characters).
fn level_description(stream: &str, level: u32, fixes: &[&Fix]) -> String {
    let list: Vec<String> = fixes
        .iter()
        .map(|f| format!("{} ({})", f.id, f.description))
        .collect();
    format!("{stream} level {level}: {}", list.join("; "))
}

/// Every CVE of the level's fixes, once, in fix order.
fn level_cves(fixes: &[&Fix]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for cve in fixes.iter().flat_map(|f| &f.cves) {
        if !out.contains(cve) {
            out.push(cve.clone());
        }
    }
    out
}

// ---- the plan ------------------------------------------------------------------------------

/// `releases.toml`: the kernel releases the pipeline builds for.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Releases {
    /// The stream every release's levels belong to.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Runner tags every release job carries (runners holding the kernel caches).
    #[serde(default)]
    pub runner_tags: Vec<String>,
    #[serde(rename = "release")]
    pub releases: Vec<ReleaseEntry>,
}

/// One `[[release]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseEntry {
    /// A package version, an ABI, or [`CANDIDATE`].
    pub kernel: String,
}

fn default_stream() -> String {
    create::DEFAULT_STREAM.to_owned()
}

impl Releases {
    /// Reads and checks `releases.toml`: at least one release, names that are
    /// releases, none twice.
    pub fn load(path: &Path) -> Result<Releases> {
        let text = read_bounded(path)?;
        let r: Releases = toml::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            line: e
                .span()
                .map(|s| text[..s.start].lines().count().max(1))
                .unwrap_or(0),
            reason: e.message().to_owned(),
        })?;
        manifests::manifest::check_id(&r.stream).map_err(|e| Error::InvalidOption {
            option: "stream",
            reason: e.to_string(),
        })?;
        if r.releases.is_empty() {
            return Err(Error::Missing {
                what: "releases",
                hint: format!("no [[release]] in {}", path.display()),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for rel in &r.releases {
            check_kernel_name(&rel.kernel)?;
            if !seen.insert(rel.kernel.as_str()) {
                return Err(Error::InvalidOption {
                    option: "release",
                    reason: format!("{} is listed twice in {}", rel.kernel, path.display()),
                });
            }
        }
        for tag in &r.runner_tags {
            if tag.is_empty() || tag.chars().any(char::is_control) {
                return Err(Error::InvalidOption {
                    option: "runner_tags",
                    reason: format!("{tag:?} is not a runner tag"),
                });
            }
        }
        Ok(r)
    }
}

/// The job name of a release in the child pipeline.
pub fn job_name(kernel: &str) -> String {
    format!("release-{kernel}")
}

/// The GitLab CI child pipeline for `releases` (JSON, which is YAML): one job per
/// release running `ci/release-job` with `KSPLICE_KERNEL` set, in a resource group
/// per release (two jobs never share a release's prepared tree at once) and with
/// the runner tags that keep a release on runners with its cache. `fixes` is only
/// checked here, so a malformed fix fails the plan instead of every job.
pub fn plan(releases: &Releases, fixes: &[Fix]) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut doc = Map::new();
    doc.insert("stages".into(), json!(["release"]));
    doc.insert(
        "variables".into(),
        json!({
            "KSPLICE_STREAM": releases.stream,
            "KSPLICE_FIXES_PLANNED": fixes.iter().map(|f| f.id.as_str()).collect::<Vec<_>>().join(" "),
        }),
    );
    for rel in &releases.releases {
        let mut job = Map::new();
        job.insert("stage".into(), json!("release"));
        job.insert(
            "resource_group".into(),
            json!(format!("ksplice-kernel-{}", rel.kernel)),
        );
        if !releases.runner_tags.is_empty() {
            job.insert("tags".into(), json!(releases.runner_tags));
        }
        job.insert("variables".into(), json!({ "KSPLICE_KERNEL": rel.kernel }));
        job.insert("script".into(), json!(["ci/release-job"]));
        job.insert(
            "artifacts".into(),
            json!({
                "when": "always",
                "paths": [format!("out/release/{}/report.json", rel.kernel),
                          format!("out/release/{}/packages/", rel.kernel)],
            }),
        );
        doc.insert(job_name(&rel.kernel), Value::Object(job));
    }
    Value::Object(doc)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn fix_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "b-fix.patch", "--- a/x\n+++ b/x\n");
        write(d.path(), "a-fix.patch", "--- a/y\n+++ b/y\n");
        write(
            d.path(),
            "b-fix.toml",
            "order = 10\ndescription = \"first\"\ncves = [\"CVE-2026-1234\"]\n",
        );
        write(
            d.path(),
            "a-fix.toml",
            "order = 20\ndescription = \"second\"\n",
        );
        d
    }

    #[test]
    fn fixes_come_in_order_with_their_patches() {
        let d = fix_dir();
        let fixes = load_fixes(d.path()).unwrap();
        let ids: Vec<&str> = fixes.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["b-fix", "a-fix"], "by order, not by name");
        assert_eq!(fixes[0].cves, ["CVE-2026-1234"]);
        assert_eq!(fixes[1].patch, d.path().join("a-fix.patch"));
    }

    #[test]
    fn a_patch_elsewhere_in_the_repository_is_found_relative_to_the_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("fixes")).unwrap();
        std::fs::create_dir_all(root.path().join("patches")).unwrap();
        write(&root.path().join("patches"), "p.patch", "--- a/x\n");
        write(
            &root.path().join("fixes"),
            "f.toml",
            "order = 1\ndescription = \"d\"\npatch = \"../patches/p.patch\"\n",
        );
        let fixes = load_fixes(&root.path().join("fixes")).unwrap();
        assert!(fixes[0].patch.ends_with("fixes/../patches/p.patch"));
    }

    #[test]
    fn malformed_fixes_are_refused_naming_the_file() {
        let cases: [(&str, &str, &str); 6] = [
            ("x.toml", "order = 1\ndescription = \"d\"\n", "x.patch"),
            ("x.toml", "order = 1\n", "description"),
            (
                "x.toml",
                "order = 1\ndescription = \"d\"\nseverity = 3\n",
                "severity",
            ),
            (
                "x.toml",
                "order = 1\ndescription = \"two\\nlines\"\n",
                "control",
            ),
            (
                "x.toml",
                "order = 1\ndescription = \"d\"\ncves = [\"CVE-1\"]\n",
                "CVE",
            ),
            ("Bad_Id.toml", "order = 1\ndescription = \"d\"\n", "Bad_Id"),
        ];
        for (name, text, needle) in cases {
            let d = tempfile::tempdir().unwrap();
            write(d.path(), name, text);
            if name == "Bad_Id.toml" {
                write(d.path(), "Bad_Id.patch", "");
            }
            let e = load_fixes(d.path()).unwrap_err().to_string();
            assert!(e.contains(needle), "{name} {text:?}: {e}");
            assert!(e.contains(name), "names the file: {e}");
        }
        let d = fix_dir();
        write(
            d.path(),
            "c-fix.toml",
            "order = 10\ndescription = \"dup\"\n",
        );
        write(d.path(), "c-fix.patch", "");
        let e = load_fixes(d.path()).unwrap_err().to_string();
        assert!(e.contains("same order 10"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_fixes(empty.path()).unwrap_err(),
            Error::Missing { what: "fixes", .. }
        ));
    }

    #[test]
    fn level_ids_are_valid_update_ids_per_release() {
        let id = level_id("main", "6.1.0-53-amd64", 2);
        assert_eq!(id, "main-6_1_0-53-amd64-2");
        manifests::manifest::check_id(&id).unwrap();
        assert_ne!(id, level_id("main", "6.1.0-56-amd64", 2));
    }

    #[test]
    fn a_fixs_own_failures_are_outcomes_the_rest_stop_the_release() {
        let refusal = Error::Refused(vec![]);
        assert_eq!(classify(&refusal), Some(Outcome::Refused));
        let no_apply = Error::PatchDoesNotApply {
            patch: "p".into(),
            output: "1 out of 1 hunk FAILED".into(),
        };
        assert_eq!(classify(&no_apply), Some(Outcome::NotApplicable));
        assert!(reason_text(&no_apply).contains("hunk FAILED"));
        let no_change = Error::NoChange {
            objects: vec!["fs/x.o".into()],
        };
        assert_eq!(classify(&no_change), Some(Outcome::NotApplicable));
        let build = Error::Command {
            command: "make".into(),
            dir: "/t".into(),
            status: "exit 2".into(),
            output: "error: x".into(),
        };
        assert_eq!(classify(&build), Some(Outcome::Refused));
        let io = Error::Io {
            path: "/cache".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(classify(&io), None, "an I/O error would fail every fix");
        let long = Error::Command {
            command: "make".into(),
            dir: "/t".into(),
            status: "exit 2".into(),
            output: "é".repeat(5000),
        };
        assert!(reason_text(&long).len() <= 4000 + "…".len());
    }

    #[test]
    fn level_text_lists_every_fix_and_each_cve_once() {
        let d = fix_dir();
        let mut fixes = load_fixes(d.path()).unwrap();
        fixes[1].cves = vec!["CVE-2026-1234".into(), "CVE-2026-9".into()];
        let refs: Vec<&Fix> = fixes.iter().collect();
        assert_eq!(
            level_description("main", 2, &refs),
            "main level 2: b-fix (first); a-fix (second)"
        );
        assert_eq!(level_cves(&refs), ["CVE-2026-1234", "CVE-2026-9"]);
    }

    fn env_file(cache: &Path, version: &str, release: &str) {
        let dir = cache.join(version);
        for sub in ["source", "image"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::create_dir_all(dir.join("headers")).unwrap();
        write(&dir, "vmlinuz", "");
        write(&dir, "config", "");
        let d = dir.display();
        write(
            &dir,
            ENV_FILE,
            &format!(
                "KSPLICE_KVERSION={version}\nKSPLICE_KRELEASE={release}\nKSPLICE_KDIR={d}\n\
                 KSPLICE_KSOURCE={d}/source\nKSPLICE_VMLINUZ={d}/vmlinuz\n\
                 KSPLICE_KCONFIG={d}/config\nKSPLICE_KMODULES={d}/image\n\
                 KSPLICE_KHEADERS={d}/headers\n"
            ),
        );
    }

    #[test]
    fn a_release_is_found_by_version_abi_short_abi_or_as_the_candidate() {
        let cache = tempfile::tempdir().unwrap();
        env_file(cache.path(), "6.1.187-1", "6.1.0-53-amd64");
        env_file(cache.path(), "6.1.192-3", "6.1.0-57-amd64");
        std::fs::copy(
            cache.path().join("6.1.192-3").join(ENV_FILE),
            cache.path().join(ENV_FILE),
        )
        .unwrap();
        let find = |k: &str| ReleaseEnv::find(cache.path(), k);
        assert_eq!(find("6.1.187-1").unwrap().release, "6.1.0-53-amd64");
        assert_eq!(find("6.1.0-53-amd64").unwrap().version, "6.1.187-1");
        assert_eq!(find("6.1.0-53").unwrap().version, "6.1.187-1");
        assert_eq!(find(CANDIDATE).unwrap().version, "6.1.192-3");
        let e = find("6.1.0-50").unwrap_err().to_string();
        assert!(e.contains("run ci/setup-kernel 6.1.0-50"), "{e}");
        for bad in ["../etc", "", "6.1 0", "-x"] {
            assert!(
                matches!(
                    find(bad),
                    Err(Error::InvalidOption {
                        option: "kernel",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_env_file_naming_missing_paths_is_refused() {
        let cache = tempfile::tempdir().unwrap();
        env_file(cache.path(), "6.1.187-1", "6.1.0-53-amd64");
        std::fs::remove_file(cache.path().join("6.1.187-1/vmlinuz")).unwrap();
        let e = ReleaseEnv::find(cache.path(), "6.1.187-1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("KSPLICE_VMLINUZ"), "{e}");
    }

    #[test]
    fn the_plan_has_one_job_per_release_in_its_own_resource_group() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "releases.toml",
            "runner_tags = [\"ksplice\"]\n[[release]]\nkernel = \"candidate\"\n\
             [[release]]\nkernel = \"6.1.0-53\"\n",
        );
        let releases = Releases::load(&dir.path().join("releases.toml")).unwrap();
        assert_eq!(releases.stream, "main");
        let fixes = load_fixes(fix_dir().path()).unwrap();
        let plan = plan(&releases, &fixes);
        let job = &plan["release-6.1.0-53"];
        assert_eq!(job["variables"]["KSPLICE_KERNEL"], "6.1.0-53");
        assert_eq!(job["resource_group"], "ksplice-kernel-6.1.0-53");
        assert_eq!(job["tags"][0], "ksplice");
        assert_eq!(job["script"][0], "ci/release-job");
        assert_eq!(plan["release-candidate"]["stage"], "release");
        assert_eq!(plan["variables"]["KSPLICE_FIXES_PLANNED"], "b-fix a-fix");
    }

    #[test]
    fn bad_release_lists_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("releases.toml");
        for (text, needle) in [
            (
                "[[release]]\nkernel = \"6.1.0-53\"\n[[release]]\nkernel = \"6.1.0-53\"\n",
                "twice",
            ),
            ("[[release]]\nkernel = \"../x\"\n", "not a package version"),
            ("release = []\n", "no [[release]]"),
            (
                "[[release]]\nkernel = \"6.1.0-53\"\narch = \"arm64\"\n",
                "arch",
            ),
            (
                "stream = \"Main\"\n[[release]]\nkernel = \"6.1.0-53\"\n",
                "lowercase",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Releases::load(&path).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
