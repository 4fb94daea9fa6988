//! `ksplice-create`'s pipeline: checkout → prepare → compile → diff → run-pre → module → package.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use object::{Object, ObjectSymbol};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::checkout::affected;
use crate::checkout::{self, Source};
use crate::diff;
use crate::error::{Error, Refusal, Result};
use crate::module;
use crate::summary::{ObjectSummary, Summary};
use crate::target::profile::{Profile, ProfileInputs};
use crate::target::symbols::{self, Symvers, SystemMap};
use crate::tree::compiler;
use crate::tree::kbuild::{self, Make, ObjectBuild};
use crate::tree::Trees;

/// Where the host-local signing key and trust policy live (contracts.md D).
pub const ETC_KSPLICE: &str = "/etc/ksplice";

/// Everything `ksplice-create` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    pub profile: ProfileInputs,
    pub id: Option<String>,
    pub description: Option<String>,
    pub cves: Vec<String>,
    /// Empty: the host-local key under `etc_dir` (created on first use).
    pub sign_keys: Vec<PathBuf>,
    pub jobs: usize,
    pub output: PathBuf,
    /// Scratch space; a temporary directory under the cache when `None`.
    pub work: Option<PathBuf>,
    /// `$KSPLICE_CACHE`: prepared trees live under `<cache>/trees`.
    pub cache: PathBuf,
    /// `$KSPLICE_CACHE_MAX` in bytes: prepared trees beyond it are evicted,
    /// least recently used first ([`crate::tree::evict`]).
    pub cache_max: u64,
    /// `/etc/ksplice` (tests point it elsewhere).
    pub etc_dir: PathBuf,
    /// `--cumulative`: a level of a stream, loaded with the livepatch
    /// `replace` flag; `None` builds a stand-alone (stacking) update.
    pub cumulative: Option<Cumulative>,
}

/// The stream an update joins when none is named (`--cumulative` alone).
pub const DEFAULT_STREAM: &str = "main";

/// `ksplice-create --cumulative [--stream NAME] [--level N] [--replaces ID]...`
/// (docs/builder.md "Cumulative updates").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cumulative {
    /// `--stream`; [`DEFAULT_STREAM`] when `None`.
    pub stream: Option<String>,
    /// `--level`; when `None`, one more than the number of `replaces` (level
    /// N of a stream normally replaces levels 1..N-1).
    pub level: Option<u32>,
    /// `--replaces`: ids of the updates this level supersedes.
    pub replaces: Vec<String>,
}

impl Cumulative {
    /// The manifest's `stream` for update `id`, checked by the manifest's
    /// own stream rules (the package writer checks them again).
    pub fn resolve(&self, id: &str) -> Result<manifests::Stream> {
        let level = match self.level {
            Some(l) => l,
            None => u32::try_from(self.replaces.len())
                .ok()
                .and_then(|n| n.checked_add(1))
                .ok_or_else(|| Error::InvalidOption {
                    option: "replaces",
                    reason: "too many ids".into(),
                })?,
        };
        let stream = manifests::Stream {
            name: self
                .stream
                .clone()
                .unwrap_or_else(|| DEFAULT_STREAM.to_owned()),
            level,
            replaces: self.replaces.clone(),
        };
        stream.validate(id, &[])?;
        Ok(stream)
    }
}

/// One object to compile and compare.
#[derive(Debug, Clone)]
struct Job {
    object: String,
    /// `vmlinux` or the module name.
    target: String,
}

/// The differ's answer for one object pair, after the run-pre check.
#[derive(Debug)]
struct Diffed {
    job: Job,
    index: usize,
    outcome: std::result::Result<diff::Outcome, diff::Error>,
}

/// Build the update; fills `summary` as it goes (also when it fails).
pub fn create(opts: &Options, summary: &mut Summary) -> Result<PathBuf> {
    let work_guard;
    let work = match &opts.work {
        Some(w) => {
            std::fs::create_dir_all(w).map_err(Error::io(w))?;
            w.clone()
        }
        None => {
            std::fs::create_dir_all(&opts.cache).map_err(Error::io(&opts.cache))?;
            work_guard = tempfile::Builder::new()
                .prefix("work-")
                .tempdir_in(&opts.cache)
                .map_err(Error::io(&opts.cache))?;
            work_guard.path().to_path_buf()
        }
    };

    // 1. Checkout: resolve the source and the target's identity.
    let (co, profile) = summary.time("checkout", |_| -> Result<_> {
        let co = checkout::resolve(&opts.source)?;
        let profile = Profile::resolve(&opts.profile)?;
        Ok((co, profile))
    })?;
    if profile.image.is_none() {
        summary
            .notes
            .push("no --target-image: run-pre is checked at load time only".into());
    }
    // Objects from another compiler would not match the running code: refuse
    // before any build work, naming both compilers.
    let config_text =
        std::fs::read_to_string(&profile.config).map_err(Error::io(&profile.config))?;
    if compiler::check(&config_text, &profile.config, compiler::CC)?.is_none() {
        summary.notes.push(format!(
            "{}: no CONFIG_CC_VERSION_TEXT, the build compiler is not checked",
            profile.config.display()
        ));
    }
    let id = match &opts.id {
        Some(id) => id.clone(),
        None => default_id(&co.name_hint, co.diff_text.as_deref().unwrap_or("")),
    };
    manifests::manifest::check_id(&id)?;
    let module_name = module::ModuleName::for_update(&id).map_err(|e| Error::InvalidOption {
        option: "id",
        reason: e.to_string(),
    })?;
    // Refused before any build work: a bad stream option is a usage error.
    let stream = opts
        .cumulative
        .as_ref()
        .map(|c| c.resolve(&id))
        .transpose()?;
    let patching = match stream {
        Some(_) => module::Patching::Replace,
        None => module::Patching::Stack,
    };
    let make = Make {
        jobs: opts.jobs.max(1),
        release: profile.release.clone(),
    };

    // 2. Prepare: the cached pre tree (materialized on a miss) and the post tree.
    summary.enter("prepare");
    let start = Instant::now();
    let trees = Trees::open(
        &opts.cache,
        &co.pre,
        &co.pre_id,
        &profile.config,
        &profile.symvers,
        &make,
        opts.cache_max,
    )?;
    summary.cached_tree = trees.reused;
    summary.notes.extend(trees.eviction.notes());
    summary.add_time("checkout", trees.materialize_time);
    summary.add_time("prepare", start.elapsed() - trees.materialize_time);

    let (changes, diff_text) = match (&co.changes, &co.patch) {
        (Some(c), _) => (c.clone(), co.diff_text.clone().unwrap_or_default()),
        (None, Some(p)) => summary.time("checkout", |_| {
            checkout::apply_patch(p, &trees.pre, &work.join("patched"))
        })?,
        (None, None) => unreachable!("invariant: a source gives changes or a patch"),
    };

    // 3. Which objects the change reaches, and how kbuild builds each.
    let plan = summary.time("prepare", |_| affected::plan(&trees.pre, &changes))?;
    let mut refusals = plan.refusals.clone();
    for f in &plan.ignored {
        summary
            .notes
            .push(format!("{f}: not part of any object, ignored"));
    }
    let jobs = summary.time("prepare", |_| {
        classify_objects(&make, &trees.pre, &plan.objects, &changes, &mut refusals)
    })?;
    if jobs.is_empty() {
        summary.refusals = refusals.clone();
        if refusals.is_empty() {
            return Err(Error::NoChange {
                objects: Vec::new(),
            });
        }
        return Err(Error::Refused(refusals));
    }
    let objects: Vec<String> = jobs.iter().map(|j| j.object.clone()).collect();

    // 4. Compile pre and post at once; -j is shared between the two makes.
    summary.time("compile", |_| -> Result<()> {
        // Only changes that reach objects go into the post tree: a refused
        // Kconfig or Makefile change would make kbuild reconfigure the tree.
        let refused: HashSet<&str> = refusals.iter().map(|r| r.what.as_str()).collect();
        let buildable: Vec<checkout::Change> = changes
            .iter()
            .filter(|c| {
                (c.path.ends_with(".c") || c.path.ends_with(".h"))
                    && !refused.contains(c.path.as_str())
            })
            .cloned()
            .collect();
        trees.apply(&buildable, &objects)?;
        for tree in [&trees.pre, &trees.post] {
            module::write_author_headers(&tree.join(kbuild::AUTHOR_INCLUDE))
                .map_err(Error::Module)?;
        }
        // The pre tree is pristine: an object an earlier run built there is up
        // to date (a release job's later levels, any repeated build), and the
        // post compile gets every job.
        let stale: Vec<String> = objects
            .iter()
            .filter(|o| !kbuild::is_built(&trees.pre, o))
            .cloned()
            .collect();
        if stale.is_empty() {
            return make.objects(&trees.post, &objects);
        }
        let half = Make {
            jobs: (make.jobs / 2).max(1),
            ..make.clone()
        };
        let (pre, post) = rayon::join(
            || half.objects(&trees.pre, &stale),
            || half.objects(&trees.post, &objects),
        );
        pre?;
        post
    })?;
    refusals.extend(symver_changes(&trees.pre, &trees.post, &objects)?);
    let target_symvers = if profile.symvers.as_os_str().is_empty() {
        Symvers::default()
    } else {
        Symvers::load(&profile.symvers)?
    };
    refusals.extend(symver_target_mismatch(
        &trees.pre,
        &objects,
        &target_symvers,
    )?);

    // 5. Diff every pair in parallel; sympos of duplicate local names from
    //    the target's symbol table, confirmed by the offline run-pre check.
    let map = summary.time("diff", |_| SystemMap::load(&profile.system_map))?;
    let exports = Exports {
        vmlinux: target_symvers.vmlinux_exports(),
        modules: target_symvers.module_exports(),
        update: update_globals(&trees.post, &jobs)?,
    };
    let tables = summary.time("diff", |s| {
        module_tables(&profile, &map, &jobs, &mut s.notes)
    })?;
    let diffed: Vec<Diffed> = summary.time("diff", |_| {
        jobs.par_iter()
            .enumerate()
            .map(|(index, job)| {
                let table = tables.get(&job.target);
                diff_one(&trees, job, index, &map, table, &exports, &profile)
            })
            .collect::<Result<Vec<_>>>()
    })?;

    // 6. Collect: patch objects, no-change objects, every refusal.
    let pobj_dir = work.join("patch-objects");
    std::fs::create_dir_all(&pobj_dir).map_err(Error::io(&pobj_dir))?;
    let mut patch_objects = Vec::new();
    let mut reports = Vec::new();
    let mut manifest_objects: BTreeMap<String, Vec<manifests::FunctionChange>> = BTreeMap::new();
    for d in diffed {
        let mut line = ObjectSummary {
            object: d.job.object.clone(),
            target: d.job.target.clone(),
            ..Default::default()
        };
        match d.outcome {
            Ok(diff::Outcome::NoChange { report }) => {
                line.note = Some("no functional change".into());
                reports.push(report);
            }
            Ok(diff::Outcome::Patch { object, report }) => {
                line.changed = report.changed().iter().map(|s| s.to_string()).collect();
                line.new = report
                    .new_functions()
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                let path = pobj_dir.join(format!("{}.o", d.index));
                std::fs::write(&path, &object).map_err(Error::io(&path))?;
                // A changed function without run-pre data is an error, never a
                // silently smaller update.
                let mut patch =
                    module::PatchObject::from_report(path, &report).map_err(Error::Module)?;
                patch.target = d.job.target.clone();
                patch_objects.push(patch);
                manifest_objects
                    .entry(d.job.target.clone())
                    .or_default()
                    .extend(manifest_functions(&report));
                reports.push(report);
            }
            Err(diff::Error::Refused { report }) => {
                line.note = Some("refused".into());
                for r in &report.refusals {
                    refusals.push(Refusal {
                        what: format!("{}:{}", d.job.object, r.symbol),
                        reason: format!("{} ({})", r.reason, r.section),
                    });
                }
                reports.push(*report);
            }
            Err(e) => {
                return Err(Error::Differ {
                    object: d.job.object.clone(),
                    source: e,
                })
            }
        }
        summary.objects.push(line);
    }
    summary.refusals = refusals.clone();
    if !refusals.is_empty() {
        return Err(Error::Refused(refusals));
    }
    if patch_objects.is_empty() {
        return Err(Error::NoChange { objects });
    }

    // 7. The update module.
    let ko = summary.time("module", |_| {
        module::build(&module::Inputs {
            name: module_name.clone(),
            kernel_tree: trees.pre.clone(),
            release: profile.release.clone(),
            work_dir: work.join("module"),
            objects: patch_objects,
            patching,
            jobs: make.jobs,
        })
        .map_err(Error::Module)
    })?;

    // 8. Package: manifest, module, source diff, differ reports; signed.
    let pkg = summary.time("package", |summary| -> Result<PathBuf> {
        let diff_path = work.join("patch.diff");
        std::fs::write(&diff_path, &diff_text).map_err(Error::io(&diff_path))?;
        let report_path = work.join("report.json");
        let json = serde_json::to_vec_pretty(&reports).expect("invariant: reports serialize");
        std::fs::write(&report_path, json).map_err(Error::io(&report_path))?;
        let ko_name = format!("{module_name}.ko");
        let manifest = manifests::Manifest {
            format: manifests::FORMAT,
            id: id.clone(),
            description: opts
                .description
                .clone()
                .unwrap_or_else(|| format!("live update {id}")),
            cves: opts.cves.clone(),
            created: now_rfc3339(),
            builder_version: env!("CARGO_PKG_VERSION").to_string(),
            builds_on: Vec::new(),
            stream: stream.clone(),
            target: manifests::TargetKernel {
                release: profile.release.clone(),
                version: profile.version.clone(),
                arch: profile.arch.clone(),
                build_id: profile.build_id.clone(),
            },
            module: manifests::ModuleInfo {
                name: module_name.to_string(),
                file: ko_name.clone(),
            },
            objects: manifest_objects
                .into_iter()
                .map(|(name, functions)| manifests::PatchedObject { name, functions })
                .collect(),
            files: Vec::new(),
        };
        let (keys, warning) = signing_keys(&opts.sign_keys, &opts.etc_dir)?;
        summary.notes.extend(warning);
        let key_refs: Vec<&manifests::SigningKey> = keys.iter().collect();
        std::fs::create_dir_all(&opts.output).map_err(Error::io(&opts.output))?;
        let payload = vec![
            (ko_name, ko.clone()),
            ("patch.diff".to_string(), diff_path),
            ("report.json".to_string(), report_path),
        ];
        Ok(manifests::write_package(
            &opts.output,
            &manifest,
            &key_refs,
            &payload,
        )?)
    })?;
    summary.package = Some(pkg.clone());
    Ok(pkg)
}

/// Decide vmlinux vs module for every object, from kbuild itself: the
/// `.cmd` file of an earlier build in the cached pre tree, else what
/// `make -n DIR/` would compile. An object kbuild would not compile is not
/// built by this config.
fn classify_objects(
    make: &Make,
    pre: &Path,
    objects: &BTreeMap<String, std::collections::BTreeSet<String>>,
    changes: &[checkout::Change],
    refusals: &mut Vec<Refusal>,
) -> Result<Vec<Job>> {
    let changed: HashSet<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    let config_path = pre.join(".config");
    let config = std::fs::read_to_string(&config_path).map_err(Error::io(&config_path))?;
    let mut dirs: HashMap<String, HashMap<String, ObjectBuild>> = HashMap::new();
    let mut jobs = Vec::new();
    // Objects that became jobs, and changed .c files kbuild builds no object of.
    let mut built: HashSet<&str> = HashSet::new();
    let mut unbuilt = Vec::new();
    for (obj, reasons) in objects {
        // Reached through a header or an included .c file: boot code is never the
        // running kernel's (a changed boot .c file itself is refused by the plan).
        if affected::is_boot_code(obj) {
            continue;
        }
        let build = make.locate(pre, obj, &mut dirs)?;
        let c_file = format!("{}.c", obj.trim_end_matches(".o"));
        // kbuild compiles a listed object even when no parent descends into
        // its directory; the parents' Makefiles say whether one does.
        let off = build.as_ref().and_then(|b| {
            let dir = b
                .foreign_dir()
                .map_or_else(|| kbuild::make_dir(pre, obj), str::to_string);
            affected::dir_disabled(pre, &dir, &config)
        });
        if let Some(why) = off {
            if changed.contains(c_file.as_str()) {
                refusals.push(Refusal {
                    what: c_file,
                    reason: format!("not built by the target's config: {why}"),
                });
            }
            continue;
        }
        match build {
            // make is asked for the name kbuild gives it (`amdgpu/../display/..`).
            Some(b) => {
                built.insert(obj.as_str());
                jobs.push(Job {
                    object: b.path,
                    target: b.module.unwrap_or_else(|| "vmlinux".to_string()),
                });
            }
            // Reached only through a header: not in this kernel, nothing to patch.
            None if !changed.contains(c_file.as_str()) => {
                let _ = reasons;
            }
            // A changed .c file that is no object of its own may be `#include`d by
            // another .c file (sched/build_utility.c includes cpufreq_schedutil.c):
            // the includers' objects carry its change, if one of them is built.
            None => unbuilt.push(c_file),
        }
    }
    for c_file in unbuilt {
        let carried = objects
            .iter()
            .any(|(o, r)| built.contains(o.as_str()) && r.contains(c_file.as_str()));
        if !carried {
            refusals.push(Refusal {
                what: c_file,
                reason: "not built by the target's config".into(),
            });
        }
    }
    Ok(jobs)
}

/// Exported symbol versions must not change: modules built against the old
/// CRCs would no longer match (kpatch's "symvers disagreement"). New exports
/// are refused too (the differ says why); removed ones are not changes.
fn symver_changes(pre: &Path, post: &Path, objects: &[String]) -> Result<Vec<Refusal>> {
    let mut out = Vec::new();
    for obj in objects {
        let read = |tree: &Path| {
            let p = kbuild::object_outputs(tree, obj)[1].clone();
            std::fs::read_to_string(&p)
                .map(|t| symbols::cmd_symvers(&t))
                .map_err(Error::io(p))
        };
        let (a, b) = (read(pre)?, read(post)?);
        let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
        names.sort();
        names.dedup();
        let show = |v: Option<&u32>| v.map_or("none".to_string(), |c| format!("{c:#010x}"));
        // A removed export is no change for the running kernel: the update
        // never edits its export table, so the old export simply stays (and
        // the differ replaces the function if its code changed).
        let changed: Vec<String> = names
            .into_iter()
            .filter(|n| b.contains_key(*n) && a.get(*n) != b.get(*n))
            .map(|n| format!("{n} {} -> {}", show(a.get(n)), show(b.get(n))))
            .collect();
        // One refusal per object keeps the summary on one screen.
        if !changed.is_empty() {
            let more = match changed.len() {
                0..=3 => String::new(),
                n => format!(" and {} more", n - 3),
            };
            out.push(Refusal {
                what: obj.clone(),
                reason: format!(
                    "exported symbol versions change ({}{more}); modules built against them would break",
                    changed[..changed.len().min(3)].join(", ")
                ),
            });
        }
    }
    Ok(out)
}

/// The pre build must export what the target exports with the same CRCs,
/// or the source/config is not the target's.
fn symver_target_mismatch(
    pre: &Path,
    objects: &[String],
    target: &Symvers,
) -> Result<Vec<Refusal>> {
    let mut out = Vec::new();
    if target.symbols.is_empty() {
        return Ok(out);
    }
    for obj in objects {
        let p = kbuild::object_outputs(pre, obj)[1].clone();
        let text = std::fs::read_to_string(&p).map_err(Error::io(&p))?;
        for (name, crc) in symbols::cmd_symvers(&text) {
            if let Some((want, _)) = target.symbols.get(&name) {
                if *want != crc {
                    out.push(Refusal {
                        what: format!("{obj}:{name}"),
                        reason: format!(
                            "pre build's symbol version {crc:#010x} differs from the target's {want:#010x}: the source or config is not the target's"
                        ),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Names the pre object defines (for sympos of duplicates).
fn defined_names(pre: &[u8]) -> Vec<String> {
    names_where(pre, |s| s.is_definition())
}

/// The named symbols of an object that `keep` takes, in table order.
fn names_where(pre: &[u8], keep: impl Fn(&object::Symbol<'_, '_>) -> bool) -> Vec<String> {
    let Ok(file) = object::File::parse(pre) else {
        return Vec::new();
    };
    file.symbols()
        .filter(|s| keep(s))
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect()
}

/// What an object's undefined symbols may resolve to: the target's exports
/// (Module.symvers) and the globals the update's own post objects define.
struct Exports {
    vmlinux: HashSet<String>,
    modules: HashMap<String, String>,
    update: HashSet<String>,
}

/// Globals defined by the post build of the update's objects: a reference to
/// one from another object is linked inside the update module (module step).
fn update_globals(post: &Path, jobs: &[Job]) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for job in jobs {
        let p = post.join(&job.object);
        let data = std::fs::read(&p).map_err(Error::io(&p))?;
        let Ok(file) = object::File::parse(&*data) else {
            continue; // the differ reports a malformed object itself
        };
        out.extend(
            file.symbols()
                .filter(|s| s.is_definition() && s.is_global())
                .filter_map(|s| s.name().ok().map(str::to_string)),
        );
    }
    Ok(out)
}

/// The symbol tables of the modules the jobs patch that the target's map does
/// not cover (a System.map has vmlinux only), read from the target's `.ko`
/// files. A module without one is noted: the kernel alone then tells whether
/// its local names are unique, when the update loads.
fn module_tables(
    profile: &Profile,
    map: &SystemMap,
    jobs: &[Job],
    notes: &mut Vec<String>,
) -> Result<HashMap<String, symbols::ModuleTable>> {
    let wanted: std::collections::BTreeSet<&str> = jobs
        .iter()
        .map(|j| j.target.as_str())
        .filter(|t| *t != "vmlinux" && !map.covers(t))
        .collect();
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let files = match &profile.modules {
        Some(dir) => symbols::module_files(dir)?,
        None => HashMap::new(),
    };
    for module in wanted {
        match files.get(module) {
            Some(ko) => {
                out.insert(
                    module.to_string(),
                    symbols::ModuleTable::load(ko, &profile.release)?,
                );
            }
            None => notes.push(format!(
                "no {module}.ko of the target (its lib/modules/{}): the kernel checks \
                 that its local names are unique when the update loads",
                profile.release
            )),
        }
    }
    Ok(out)
}

/// The named local symbols of an object that are not undefined, labels
/// (`.LC0`) too, in table order: what places it among a module's symbols.
fn local_names(pre: &[u8]) -> Vec<String> {
    names_where(pre, |s| s.is_local() && !s.is_undefined())
}

/// A reference by `.klp.sym.<object>.<name>,0` or a replaced function with
/// sympos 0 that meets more than one `name` in the target object's table:
/// livepatch refuses such an update when it loads ("unresolvable
/// ambiguity"). Refused here instead, naming the symbol and its count.
fn ambiguous(
    report: &diff::Report,
    object: &str,
    count: impl Fn(&str) -> usize,
) -> Vec<diff::Refusal> {
    let rule = |n: usize| {
        format!(
            "occurs {n} times in {object}'s symbol table and nothing tells which \
             one this object's is (livepatch would refuse the ambiguity)"
        )
    };
    let mut out = Vec::new();
    for f in &report.functions {
        if f.status == diff::FunctionStatus::Changed && f.sympos == 0 {
            let n = count(&f.name);
            if n > 1 {
                out.push(diff::Refusal {
                    symbol: f.name.clone(),
                    section: format!(".text.{}", f.name),
                    reason: rule(n),
                });
            }
        }
    }
    for e in &report.externals {
        if e.object == object && e.sympos == 0 && e.symbol.starts_with(".klp.sym.") {
            let n = count(&e.name);
            if n > 1 && !out.iter().any(|r| r.symbol == e.name) {
                out.push(diff::Refusal {
                    symbol: e.name.clone(),
                    section: e.symbol.clone(),
                    reason: rule(n),
                });
            }
        }
    }
    out
}

fn diff_one(
    trees: &Trees,
    job: &Job,
    index: usize,
    map: &SystemMap,
    table: Option<&symbols::ModuleTable>,
    exports: &Exports,
    profile: &Profile,
) -> Result<Diffed> {
    let read = |tree: &Path| {
        let p = tree.join(&job.object);
        std::fs::read(&p).map_err(Error::io(p))
    };
    let (pre, post) = (read(&trees.pre)?, read(&trees.post)?);
    let mut cx = diff::Cx {
        target_object: job.target.clone(),
        prefix: format!("ksp{index}_"),
        vmlinux_exports: exports.vmlinux.clone(),
        module_exports: exports.modules.clone(),
        update_globals: exports.update.clone(),
        sympos: match table {
            Some(t) => t.sympos_by_order(&local_names(&pre)),
            None => map.sympos_by_neighbours(&job.target, &defined_names(&pre)),
        },
    };
    let mut outcome = diff::diff(&pre, &post, &cx);
    // Offline run-pre: each replaced function's pre code must be in the image.
    // Jumps the image's assembler relaxed are compared as the image has them.
    if let (Ok(diff::Outcome::Patch { report, .. }), Some(image)) = (&mut outcome, &profile.image) {
        if job.target == "vmlinux" {
            crate::target::runpre::realign(report, map, image);
            let (fixed, refusals) = crate::target::runpre::check(report, map, image);
            if !refusals.is_empty() {
                let mut report = report.clone();
                report.refusals.extend(refusals);
                outcome = Err(diff::Error::Refused {
                    report: Box::new(report),
                });
            } else if fixed.iter().any(|(n, p)| cx.sympos.get(n) != Some(p)) {
                // The code match decided a duplicate differently: redo the
                // diff so `.klp.sym` names and run-pre data carry it.
                cx.sympos.extend(fixed);
                outcome = diff::diff(&pre, &post, &cx);
                if let Ok(diff::Outcome::Patch { report, .. }) = &mut outcome {
                    crate::target::runpre::realign(report, map, image);
                }
            }
        }
    }
    // Value-check only the relocations whose symbols the kernel can resolve.
    if let Ok(diff::Outcome::Patch { report, .. }) = &mut outcome {
        crate::target::runpre::prune(report, map);
    }
    if let Ok(diff::Outcome::Patch { report, .. }) = &outcome {
        let refusals = ambiguous(report, &job.target, |name| match table {
            Some(t) => t.count(name),
            None => map.lookup(&job.target, name).count(),
        });
        if !refusals.is_empty() {
            let mut report = report.clone();
            report.refusals.extend(refusals);
            outcome = Err(diff::Error::Refused {
                report: Box::new(report),
            });
        }
    }
    Ok(Diffed {
        job: job.clone(),
        index,
        outcome,
    })
}

fn manifest_functions(report: &diff::Report) -> Vec<manifests::FunctionChange> {
    report
        .functions
        .iter()
        .filter_map(|f| {
            let kind = match f.status {
                diff::FunctionStatus::Changed => manifests::ChangeKind::Replaced,
                diff::FunctionStatus::New => manifests::ChangeKind::Added,
                diff::FunctionStatus::Removed => return None,
            };
            Some(manifests::FunctionChange {
                name: f.name.clone(),
                sympos: f.sympos,
                kind,
                pre_sha256: f
                    .pre_sha256
                    .clone()
                    .filter(|_| kind == manifests::ChangeKind::Replaced),
                old_size: f.old_size.unwrap_or(0),
                new_size: f.new_size.unwrap_or(0),
            })
        })
        .collect()
}

/// The id from the patch, file or branch name; a short hash of the change
/// when the name gives nothing usable.
pub fn default_id(hint: &str, diff_text: &str) -> String {
    let mut id: String = hint
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id = id.trim_start_matches(['-', '_']).to_string();
    id.truncate(40);
    if id.is_empty() {
        let h = Sha256::digest(diff_text.as_bytes());
        id = format!("update-{}", &hex::encode(h)[..12]);
    }
    id
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .expect("invariant: a UTC time formats as RFC 3339")
}

/// Load `--sign-key`s, or the host-local key (contracts.md D): created 0600
/// on first use, and trusted by a new trust.toml when none exists yet. Returns a
/// warning when an existing trust.toml would make `ksplice apply` refuse what the
/// host-local key signs.
fn signing_keys(
    paths: &[PathBuf],
    etc: &Path,
) -> Result<(Vec<manifests::SigningKey>, Option<String>)> {
    if !paths.is_empty() {
        let keys = paths
            .iter()
            .map(|p| manifests::SigningKey::load(p).map_err(Error::from))
            .collect::<Result<_>>()?;
        return Ok((keys, None));
    }
    let key_path = etc.join("local-signing.key");
    let key = if key_path.exists() {
        manifests::SigningKey::load(&key_path)?
    } else {
        create_etc_dir(etc)?;
        let k = manifests::SigningKey::generate()?;
        k.save_new(&key_path)?;
        k
    };
    let trust = etc.join("trust.toml");
    if std::fs::symlink_metadata(&trust).is_err() {
        let policy = manifests::TrustPolicy::new(vec![key.public()], 1)?;
        write_trust(etc, &trust, &policy)?;
        return Ok((vec![key], None));
    }
    let warning = match manifests::TrustPolicy::load(&trust) {
        Ok(policy) if !policy.keys().contains(&key.public()) => Some(format!(
            "warning: {} does not trust the host-local key {} that signed this package; \
             ksplice apply on this host will refuse it",
            trust.display(),
            key.public().key_id()
        )),
        Ok(policy) if policy.threshold() > 1 => Some(format!(
            "warning: {} requires {} signatures, this package has one; \
             ksplice apply on this host will refuse it",
            trust.display(),
            policy.threshold()
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "warning: {e}; ksplice apply on this host will refuse every package"
        )),
    };
    Ok((vec![key], warning))
}

/// Mode of `/etc/ksplice`: readable by all (trust.toml is public), writable by root.
const ETC_DIR_MODE: u32 = 0o755;
/// Mode of `trust.toml`: public keys, readable by all, writable only by its owner
/// (the client refuses a policy writable by group or others).
const TRUST_MODE: u32 = 0o644;

/// Creates `/etc/ksplice` (and missing parents) with mode 0755 set explicitly, so the
/// umask of whoever ran the first build does not decide it.
fn create_etc_dir(etc: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if etc.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(ETC_DIR_MODE)
        .create(etc)
        .map_err(Error::io(etc))?;
    std::fs::set_permissions(etc, std::fs::Permissions::from_mode(ETC_DIR_MODE))
        .map_err(Error::io(etc))
}

/// Writes a new trust.toml: a fresh randomly named temporary file in `etc` (created
/// `O_EXCL`, so no planted name or symlink is followed), mode 0644 set on its
/// descriptor, synced, then linked into place only if no trust.toml appeared meanwhile.
fn write_trust(etc: &Path, trust: &Path, policy: &manifests::TrustPolicy) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::NamedTempFile::new_in(etc).map_err(Error::io(etc))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(TRUST_MODE))
        .and_then(|()| tmp.write_all(policy.to_toml().as_bytes()))
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(Error::io(tmp.path()))?;
    tmp.persist_noclobber(trust)
        .map_err(|e| Error::io(trust)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: `.klp.sym.amdgpu._rs.17,0` met 10 `_rs.17` in amdgpu and the
    /// kernel refused the update as it loaded; the builder refuses it, naming
    /// the symbol and the count, and lets a decided or unique name through.
    #[test]
    fn a_reference_or_function_livepatch_cannot_resolve_is_refused() {
        let ext = |name: &str, object: &str, sympos: u32| diff::External {
            symbol: format!(".klp.sym.{object}.{name},{sympos}"),
            object: object.into(),
            name: name.into(),
            sympos,
        };
        let func = |name: &str, sympos: u32| diff::FunctionChange {
            name: name.into(),
            status: diff::FunctionStatus::Changed,
            symbol: Some(format!("ksp0_{name}")),
            sympos,
            old_size: Some(8),
            new_size: Some(8),
            pre_sha256: None,
        };
        let report = diff::Report {
            target_object: "amdgpu".into(),
            functions: vec![func("show", 0), func("store", 2), func("unique_fn", 0)],
            externals: vec![
                ext("_rs.17", "amdgpu", 0),
                ext("_rs.17", "amdgpu", 0),
                ext("__func__.3", "amdgpu", 4),
                ext("cfg80211_find_elem_match", "cfg80211", 0),
                ext("only_once", "amdgpu", 0),
            ],
            ..Default::default()
        };
        let counts = HashMap::from([
            ("_rs.17", 10),
            ("show", 2),
            ("store", 3),
            ("__func__.3", 9),
            ("only_once", 1),
        ]);
        let got = ambiguous(&report, "amdgpu", |n| counts.get(n).copied().unwrap_or(0));
        let named: Vec<(&str, &str)> = got
            .iter()
            .map(|r| (r.symbol.as_str(), r.section.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("show", ".text.show"),
                ("_rs.17", ".klp.sym.amdgpu._rs.17,0")
            ]
        );
        assert!(
            got[1]
                .reason
                .starts_with("occurs 10 times in amdgpu's symbol table"),
            "{got:?}"
        );
    }

    /// `--cumulative` defaults: stream "main", level = 1 + replaced ids;
    /// explicit options win; the manifest's stream rules refuse bad values.
    #[test]
    fn cumulative_options_resolve_to_a_stream() {
        let c = |stream: Option<&str>, level: Option<u32>, replaces: &[&str]| Cumulative {
            stream: stream.map(str::to_owned),
            level,
            replaces: replaces.iter().map(|s| s.to_string()).collect(),
        };
        let s = c(None, None, &[]).resolve("main-1").expect("level 1");
        assert_eq!((s.name.as_str(), s.level), ("main", 1));
        assert!(s.replaces.is_empty());
        let s = c(None, None, &["main-1", "main-2"])
            .resolve("main-3")
            .expect("level 3");
        assert_eq!((s.name.as_str(), s.level), ("main", 3));
        assert_eq!(s.replaces, vec!["main-1", "main-2"]);
        let s = c(Some("cve"), Some(7), &["cve-6"])
            .resolve("cve-7")
            .expect("explicit");
        assert_eq!((s.name.as_str(), s.level), ("cve", 7));
        for (bad, id, field) in [
            (c(None, Some(0), &[]), "x", "stream.level"),
            (c(Some("Main"), None, &[]), "x", "stream.name"),
            (c(None, None, &["x"]), "x", "stream.replaces"),
            (c(None, None, &["a", "a"]), "x", "stream.replaces"),
        ] {
            let e = bad.resolve(id).expect_err(field);
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn default_ids_come_from_names_or_the_change() {
        assert_eq!(default_id("cmdline-string", ""), "cmdline-string");
        assert_eq!(default_id("Fix CVE.2024 x", ""), "fix-cve-2024-x");
        let a = default_id("", "diff a");
        assert!(a.starts_with("update-") && a.len() == 19, "{a}");
        assert_ne!(a, default_id("", "diff b"));
    }

    #[test]
    fn host_local_key_is_created_once_and_trusted() {
        let d = tempfile::tempdir().expect("tempdir");
        let etc = d.path().join("etc");
        let (k1, w1) = signing_keys(&[], &etc).expect("creates");
        let (k2, w2) = signing_keys(&[], &etc).expect("reuses");
        assert_eq!((w1, w2), (None, None));
        assert_eq!(k1[0].public().key_id(), k2[0].public().key_id());
        let policy = manifests::TrustPolicy::load(&etc.join("trust.toml")).expect("policy");
        assert_eq!(policy.keys().len(), 1);
        assert_eq!(policy.keys()[0].key_id(), k1[0].public().key_id());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(etc.join("local-signing.key"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Issue 9 finding 4: trust.toml went through a fixed `.trust.toml.tmp` that a
    /// planted symlink redirected, and /etc/ksplice took its mode from the umask.
    #[test]
    fn trust_file_is_written_through_a_fresh_temp_file_with_explicit_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let etc = d.path().join("etc");
        std::fs::create_dir(&etc).expect("mkdir");
        // The fixed name the old code wrote through, pointing outside.
        let victim = d.path().join("victim");
        std::fs::write(&victim, "untouched").expect("victim");
        std::os::unix::fs::symlink(&victim, etc.join(".trust.toml.tmp")).expect("plant");
        signing_keys(&[], &etc).expect("creates");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        let meta = std::fs::symlink_metadata(etc.join("trust.toml")).expect("trust");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, TRUST_MODE);
        // Only the key, the policy and the planted link: no temporary file left.
        let mut names: Vec<String> = std::fs::read_dir(&etc)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".trust.toml.tmp", "local-signing.key", "trust.toml"]
        );

        let fresh = d.path().join("new/etc/ksplice");
        signing_keys(&[], &fresh).expect("creates the directory");
        let mode = std::fs::metadata(&fresh)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, ETC_DIR_MODE);
    }

    /// Issue 9 finding 4: an existing trust.toml that does not trust the host-local key
    /// made the build succeed and apply refuse; now the build says so.
    #[test]
    fn existing_trust_file_without_the_local_key_gives_a_warning() {
        let d = tempfile::tempdir().expect("tempdir");
        let etc = d.path().join("etc");
        std::fs::create_dir(&etc).expect("mkdir");
        let other = manifests::SigningKey::from_seed(&[9; 32]).public();
        let policy = manifests::TrustPolicy::new(vec![other], 1).expect("policy");
        std::fs::write(etc.join("trust.toml"), policy.to_toml()).expect("trust");
        let (keys, warning) = signing_keys(&[], &etc).expect("signs anyway");
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("does not trust")
                && warning.contains(keys[0].public().key_id().as_str()),
            "{warning}"
        );
        // Trusted: no warning.
        let trusting = manifests::TrustPolicy::new(vec![keys[0].public()], 1).expect("policy");
        std::fs::write(etc.join("trust.toml"), trusting.to_toml()).expect("trust");
        assert_eq!(signing_keys(&[], &etc).expect("signs").1, None);
    }
}
