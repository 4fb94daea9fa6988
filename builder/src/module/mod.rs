//! The update module: turns patch objects and their run-pre data into the
//! livepatch `.ko` the client loads (issue 4 item 5, contracts.md B and C).
//!
//! The pipeline, one module per step:
//!
//! 1. [`template`]: write the hand-written C template (`loader-module/`,
//!    embedded at compile time) into the build directory;
//! 2. [`link`] + [`callbacks`]: point references to globals another patch
//!    object of the update adds at that object's symbol; find the patch-author callbacks each patch object
//!    declares (`KPATCH_*_CALLBACK`, sections `.ksplice.callbacks.<kind>`)
//!    and give each a global alias the generated C can name;
//! 3. [`generate`]: write `ksplice-update.c` (klp objects, functions, run-pre
//!    data, callback lists) and the `Kbuild` file;
//! 4. [`kbuild`]: `make -C <tree> M=<dir> KBUILD_MODPOST_WARN=1 modules`;
//! 5. [`klp`]: rewrite the linked `.ko` into the livepatch ELF format
//!    (Documentation/livepatch/module-elf-format.rst);
//! 6. [`inspect`]: check the result (livepatch modinfo, vermagic, every
//!    undefined symbol exported by the target or a livepatch symbol).

mod callbacks;
mod error;
mod generate;
pub mod inspect;
mod kbuild;
mod klp;
mod link;
mod template;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use template::write_author_headers;

use manifests::manifest::{MAX_MODULE_NAME_BYTES as MAX_MODULE_NAME, MODULE_PREFIX};

/// The kernel module name of an update, which is also its livepatch name and
/// its directory under /sys/kernel/livepatch (contracts.md C).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModuleName(String);

impl ModuleName {
    /// Validate a module name: `ksplice_` and at least one more character
    /// from `[A-Za-z0-9_]`, at most 55 characters.
    pub fn new(raw: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidModuleName {
            name: raw.to_owned(),
            reason,
        };
        if !raw.starts_with(MODULE_PREFIX) || raw.len() == MODULE_PREFIX.len() {
            return Err(bad("must be ksplice_ followed by the update id"));
        }
        if raw.len() > MAX_MODULE_NAME {
            return Err(bad("longer than 55 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad("only letters, digits and _ are allowed"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The module name of update `id`: `ksplice_<id with '-' replaced by '_'>`.
    pub fn for_update(id: &str) -> Result<Self> {
        Self::new(&format!("{MODULE_PREFIX}{}", id.replace('-', "_")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The bytes of a function the pre build produced, and the ranges of them the
/// running kernel may legitimately hold differently (contracts.md B).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunPre {
    pub code: Vec<u8>,
    /// `(start, len)` byte ranges left out of the comparison.
    pub skip: Vec<(u32, u32)>,
    /// Relocation fields (inside `skip`) whose live value must refer to the
    /// same symbol as the pre build's (docs/loader-module.md).
    pub relocs: Vec<crate::diff::RunPreReloc>,
}

/// One function of the running kernel that the update replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplacedFunction {
    /// Its name in the running kernel (`klp_func.old_name`).
    pub name: String,
    /// Which of several local symbols of that name (0: the name is unique).
    pub sympos: u32,
    /// The replacement's symbol in the patch object, e.g. `ksp0_cmdline_proc_show`.
    pub symbol: String,
    pub run_pre: RunPre,
}

/// One patch object (the differ's output for one pre/post object pair).
#[derive(Clone, Debug)]
pub struct PatchObject {
    /// `vmlinux` or the name of the module the object belongs to.
    pub target: String,
    /// The relocatable object, per contracts.md B.
    pub path: PathBuf,
    /// Functions it replaces; may be empty (an object adding only callbacks).
    pub functions: Vec<ReplacedFunction>,
}

impl PatchObject {
    /// The patch object the differ wrote to `path`, with its report: every
    /// changed function becomes a [`ReplacedFunction`] with the report's
    /// run-pre data.  A changed function without a new symbol or without
    /// run-pre data is an error, never a silently smaller update.
    pub fn from_report(path: PathBuf, report: &crate::diff::Report) -> Result<Self> {
        let functions = report
            .functions
            .iter()
            .filter(|f| f.status == crate::diff::FunctionStatus::Changed)
            .map(|f| {
                let missing = |what| Error::IncompleteReport {
                    function: f.name.clone(),
                    what,
                };
                let symbol = f
                    .symbol
                    .clone()
                    .ok_or_else(|| missing("replacement symbol"))?;
                let rp = report
                    .run_pre
                    .iter()
                    .find(|r| r.name == f.name && r.sympos == f.sympos)
                    .ok_or_else(|| missing("run-pre data"))?;
                Ok(ReplacedFunction {
                    name: f.name.clone(),
                    sympos: f.sympos,
                    symbol,
                    run_pre: RunPre {
                        code: rp.code.clone(),
                        skip: rp.skip.clone(),
                        relocs: rp.relocs.clone(),
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            target: report.target_object.clone(),
            path,
            functions,
        })
    }
}

/// Everything [`build`] needs.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub name: ModuleName,
    /// Prepared kernel tree to build against (`make -C`): it carries the
    /// target's configuration, `KERNELRELEASE` and `Module.symvers`.
    pub kernel_tree: PathBuf,
    /// The target's `uname -r`; the module's vermagic must start with it.
    pub release: String,
    /// Directory to generate and build the module in; created if missing.
    /// Whatever a previous build left there is overwritten.
    pub work_dir: PathBuf,
    pub objects: Vec<PatchObject>,
    /// How the livepatch combines with the ones already enabled.
    pub patching: Patching,
    /// `make -j`: the generated sources compile in parallel.
    pub jobs: usize,
}

/// How an update's livepatch combines with the livepatches already enabled
/// (the `replace` flag of `struct klp_patch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Patching {
    /// A stand-alone update (`replace = false`): it adds its functions on top
    /// of whatever is enabled.
    #[default]
    Stack,
    /// A cumulative update (`replace = true`): once its transition completes
    /// the kernel disables and frees every other livepatch
    /// (Documentation/livepatch/cumulative-patches.rst).
    Replace,
}

/// The patched objects of one update, grouped by target: one `klp_object`
/// each, in the order targets first appear (vmlinux first).
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub name: &'a str,
    /// Indexes into `Inputs::objects`.
    pub objects: Vec<usize>,
}

/// Build the update module; returns the path of the finished `.ko`.
pub fn build(inputs: &Inputs) -> Result<PathBuf> {
    let targets = validate(inputs)?;
    let dir = &inputs.work_dir;
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;

    template::run(dir)?;
    let defs = link::definitions(&inputs.objects)?;
    let hooks = inputs
        .objects
        .iter()
        .enumerate()
        .map(|(i, obj)| callbacks::run(obj, i, &defs, &dir.join(generate::shipped_name(i))))
        .collect::<Result<Vec<_>>>()?;
    let shipped: Vec<PathBuf> = (0..inputs.objects.len())
        .map(|i| dir.join(generate::shipped_name(i)))
        .collect();
    let imports = inspect::imported_namespaces(&inputs.kernel_tree, &shipped)?;
    generate::run(inputs, &targets, &hooks, &imports, dir)?;
    let owners = klp::foreign_owners(&inputs.objects)?;
    let ko = kbuild::run(&inputs.kernel_tree, dir, &inputs.name, inputs.jobs)?;
    klp::run(&ko, &owners)?;
    inspect::check(&ko, &inputs.name, &inputs.release, &inputs.kernel_tree)?;
    Ok(ko)
}

fn validate(inputs: &Inputs) -> Result<Vec<Target<'_>>> {
    if inputs.objects.is_empty() {
        return Err(Error::NoObjects);
    }
    let mut targets: Vec<Target<'_>> = Vec::new();
    let mut seen = HashSet::new();
    for (i, obj) in inputs.objects.iter().enumerate() {
        check_target(&obj.target)?;
        for f in &obj.functions {
            let context = format!("{} ({})", obj.path.display(), obj.target);
            check_symbol(&context, &f.name)?;
            check_symbol(&context, &f.symbol)?;
            if !seen.insert((obj.target.as_str(), f.name.as_str(), f.sympos)) {
                return Err(Error::DuplicateFunction {
                    target: obj.target.clone(),
                    name: f.name.clone(),
                    sympos: f.sympos,
                });
            }
            check_run_pre(f)?;
        }
        match targets.iter_mut().find(|t| t.name == obj.target) {
            Some(t) => t.objects.push(i),
            None => targets.push(Target {
                name: &obj.target,
                objects: vec![i],
            }),
        }
    }
    // vmlinux first: its relocations are written when the update loads, and
    // it is the object most updates patch; the order is otherwise the input's.
    targets.sort_by_key(|t| t.name != "vmlinux");
    Ok(targets)
}

fn check_target(target: &str) -> Result<()> {
    let bad = |reason| Error::InvalidTarget {
        target: target.to_owned(),
        reason,
    };
    if target.is_empty() || target.len() > MAX_MODULE_NAME {
        return Err(bad("must be 1 to 55 characters"));
    }
    if !target
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad("only letters, digits, _ and - are allowed"));
    }
    Ok(())
}

/// Symbol names go into C string literals and `__asm__` labels: allow what
/// compilers emit for C symbols (`.` from clones such as `foo.isra.0`).
fn check_symbol(context: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < 512
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSymbolName {
            name: name.to_owned(),
            context: context.to_owned(),
        })
    }
}

fn check_run_pre(f: &ReplacedFunction) -> Result<()> {
    let size = f.run_pre.code.len();
    if size == 0 {
        return Err(Error::EmptyRunPre {
            function: f.name.clone(),
        });
    }
    for &(offset, len) in &f.run_pre.skip {
        let end = u64::from(offset) + u64::from(len);
        if len == 0 || end > size as u64 {
            return Err(Error::SkipOutOfRange {
                function: f.name.clone(),
                offset,
                len,
                size,
            });
        }
    }
    for r in &f.run_pre.relocs {
        let bad = |reason| Error::BadRunPreReloc {
            function: f.name.clone(),
            offset: r.offset,
            reason,
        };
        let (start, end) = (r.offset, u64::from(r.offset) + u64::from(r.kind.width()));
        if end > size as u64 {
            return Err(bad("the field is outside the function's code"));
        }
        // The kernel compares the field by value only; its bytes must be skipped.
        let skipped = f
            .run_pre
            .skip
            .iter()
            .any(|&(o, l)| o <= start && end <= u64::from(o) + u64::from(l));
        if !skipped {
            return Err(bad("the field is not inside a skip range"));
        }
        slot_symbol(&r.target)
            .ok_or_else(|| bad("the symbol is neither exported nor a .klp.sym name"))?;
        check_target(&r.target.object)?;
        check_symbol(&f.name, &r.target.name)?;
    }
    Ok(())
}

/// The symbol a run-pre slot is relocated against: the plain name of a
/// symbol vmlinux exports (the module loader resolves it), otherwise
/// `.klp.sym.<object>.<name>,<sympos>` (the livepatch core resolves it), the
/// same spelling the patch object uses for references to it.
pub(crate) fn slot_symbol(t: &crate::diff::External) -> Option<String> {
    let klp = format!(
        "{}{}.{},{}",
        klp::KLP_SYM_PREFIX,
        t.object,
        t.name,
        t.sympos
    );
    if t.symbol == klp {
        Some(klp)
    } else if t.symbol == t.name && t.object == "vmlinux" && t.sympos == 0 {
        Some(t.name.clone())
    } else {
        None
    }
}

/// Where [`build`] leaves the module for `name` inside `work_dir`.
pub fn module_path(work_dir: &Path, name: &ModuleName) -> PathBuf {
    work_dir.join(format!("{name}.ko"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn func(name: &str, code: Vec<u8>, skip: Vec<(u32, u32)>) -> ReplacedFunction {
        ReplacedFunction {
            name: name.into(),
            sympos: 0,
            symbol: format!("ksp0_{name}"),
            run_pre: RunPre {
                code,
                skip,
                relocs: Vec::new(),
            },
        }
    }

    fn inputs(objects: Vec<PatchObject>) -> Inputs {
        Inputs {
            name: ModuleName::new("ksplice_t").expect("valid"),
            kernel_tree: "/nonexistent".into(),
            release: "6.1.0-56-amd64".into(),
            work_dir: "/nonexistent".into(),
            objects,
            patching: Patching::Stack,
            jobs: 1,
        }
    }

    fn obj(target: &str, functions: Vec<ReplacedFunction>) -> PatchObject {
        PatchObject {
            target: target.into(),
            path: "p.o".into(),
            functions,
        }
    }

    #[test]
    fn module_names_follow_the_contract() {
        assert_eq!(
            ModuleName::for_update("cve-2024-1")
                .expect("valid")
                .as_str(),
            "ksplice_cve_2024_1"
        );
        for bad in ["ksplice_", "kpatch_x", "ksplice_a.b", "ksplice_ä"] {
            assert!(
                matches!(ModuleName::new(bad), Err(Error::InvalidModuleName { .. })),
                "{bad}"
            );
        }
        let longest = format!("ksplice_{}", "x".repeat(47));
        assert!(ModuleName::new(&longest).is_ok());
        assert!(ModuleName::new(&format!("{longest}x")).is_err());
    }

    /// Regression: ids of 48 bytes were valid while `ksplice_` + 48 bytes
    /// overflowed the 55-byte module name; every valid id now makes a valid name.
    #[test]
    fn the_longest_valid_id_makes_a_valid_module_name() {
        let id = "a".repeat(manifests::manifest::MAX_ID_BYTES);
        manifests::manifest::check_id(&id).expect("longest id is valid");
        assert!(manifests::manifest::check_id(&format!("{id}a")).is_err());
        let name = ModuleName::for_update(&id).expect("its module name is valid");
        assert_eq!(name.as_str().len(), MAX_MODULE_NAME);
    }

    #[test]
    fn targets_group_objects_with_vmlinux_first() {
        let i = inputs(vec![
            obj("xfs", vec![func("a", vec![0x90], vec![])]),
            obj("vmlinux", vec![func("b", vec![0x90], vec![])]),
            obj("xfs", vec![func("c", vec![0x90], vec![])]),
        ]);
        let t = validate(&i).expect("valid");
        let got: Vec<_> = t.iter().map(|t| (t.name, t.objects.clone())).collect();
        assert_eq!(got, vec![("vmlinux", vec![1]), ("xfs", vec![0, 2])]);
    }

    #[test]
    fn bad_inputs_are_refused_precisely() {
        assert!(matches!(validate(&inputs(vec![])), Err(Error::NoObjects)));
        let dup = inputs(vec![
            obj("vmlinux", vec![func("a", vec![0x90], vec![])]),
            obj("vmlinux", vec![func("a", vec![0x90], vec![])]),
        ]);
        assert!(matches!(
            validate(&dup),
            Err(Error::DuplicateFunction { name, sympos: 0, .. }) if name == "a"
        ));
        let skip = inputs(vec![obj(
            "vmlinux",
            vec![func("a", vec![0; 4], vec![(2, 3)])],
        )]);
        assert!(matches!(
            validate(&skip),
            Err(Error::SkipOutOfRange {
                offset: 2,
                len: 3,
                size: 4,
                ..
            })
        ));
        let empty = inputs(vec![obj("vmlinux", vec![func("a", vec![], vec![])])]);
        assert!(matches!(validate(&empty), Err(Error::EmptyRunPre { .. })));
        let quote = inputs(vec![obj("vmlinux", vec![func("a\"b", vec![0x90], vec![])])]);
        assert!(matches!(
            validate(&quote),
            Err(Error::InvalidSymbolName { .. })
        ));
        let target = inputs(vec![obj("../x", vec![])]);
        assert!(matches!(
            validate(&target),
            Err(Error::InvalidTarget { .. })
        ));
    }
}
