//! The object differ: from a pre and a post build of one kernel object to a patch object.
//!
//! A pipeline of passes, each in its own module (see docs/differ.md for the contract with the
//! module step): load → correlate → compare → notrace → include → verify → emit, plus the report.
#![forbid(unsafe_code)]

mod compare;
mod correlate;
mod emit;
mod error;
mod include;
mod load;
mod notrace;
mod report;
mod special;
mod verify;

use std::collections::{HashMap, HashSet};

pub use error::{Error, Side};
pub use report::{
    External, FunctionChange, FunctionStatus, Inclusion, Refusal, RelocKind, Report, RunPre,
    RunPreReloc,
};
pub use special::entry_sizes;

/// What the differ needs to know about the target (contract B).
#[derive(Debug, Clone, Default)]
pub struct Cx {
    /// "vmlinux" or a module name ("xfs").
    pub target_object: String,
    /// Prefix of changed/new function symbols, unique per patch object within one update.
    pub prefix: String,
    /// Symbols exported by vmlinux (from Module.symvers).
    pub vmlinux_exports: HashSet<String>,
    /// Symbols exported by modules (from Module.symvers): name -> module name as the kernel
    /// knows it (`KBUILD_MODNAME`: the file name, `-` made `_`; `cfg80211`).
    pub module_exports: HashMap<String, String>,
    /// Globals that the update's other patched objects define (the module step links a
    /// reference to them inside the update module; see docs/differ.md).
    pub update_globals: HashSet<String>,
    /// sympos of local names in the target's symbol table (missing => 0).
    pub sympos: HashMap<String, u32>,
}

impl Cx {
    /// A context with no exports and no sympos information.
    pub fn new(target_object: &str, prefix: &str) -> Self {
        Cx {
            target_object: target_object.to_string(),
            prefix: prefix.to_string(),
            ..Cx::default()
        }
    }
}

/// The result of a successful diff.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing functional changed (exit 3).
    NoChange { report: Report },
    /// A patch object was produced (exit 0).
    Patch { object: Vec<u8>, report: Report },
}

impl Outcome {
    pub fn report(&self) -> &Report {
        match self {
            Outcome::NoChange { report } | Outcome::Patch { report, .. } => report,
        }
    }
    /// The documented exit code: 0 patch produced, 3 no functional change.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::NoChange { .. } => 3,
            Outcome::Patch { .. } => 0,
        }
    }
}

/// Diff two builds of one object. See the module docs and docs/differ.md.
pub fn diff(pre: &[u8], post: &[u8], cx: &Cx) -> Result<Outcome, Error> {
    let pre = load::run(pre, Side::Pre)?;
    let post = load::run(post, Side::Post)?;
    let pair = correlate::run(pre, post);
    let (mut status, changed_ro) = compare::run(&pair);
    notrace::run(&pair, &mut status);
    let selection = include::run(cx, &pair, &status, &changed_ro);
    let refusals = verify::run(&pair, &status, &changed_ro, &selection);
    let (functions, line_only, included, run_pre) = emit::describe(&pair, &status, &selection, cx);
    let mut report = Report {
        target_object: cx.target_object.clone(),
        functions,
        line_only,
        included,
        refusals,
        externals: Vec::new(),
        run_pre,
    };
    if !report.refusals.is_empty() {
        return Err(Error::Refused {
            report: Box::new(report),
        });
    }
    if report
        .functions
        .iter()
        .all(|f| f.status == FunctionStatus::Removed)
    {
        // Removed functions alone need no patch: nothing calls them any more.
        return Ok(Outcome::NoChange { report });
    }
    let emitted = emit::run(&pair, &selection, cx)?;
    report.externals = emitted.externals;
    Ok(Outcome::Patch {
        object: emitted.object,
        report,
    })
}

/// Names exported by vmlinux, from a Module.symvers text (`crc name module type [ns]`).
pub fn vmlinux_exports_from_symvers(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_crc, name, module) = (f.next()?, f.next()?, f.next()?);
            (module == "vmlinux").then(|| name.to_string())
        })
        .collect()
}

/// Names exported by modules, from a Module.symvers text: name -> module name
/// (`drivers/net/wireless/foo-bar` -> `foo_bar`, what the kernel calls the module).
pub fn module_exports_from_symvers(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_crc, name, module) = (f.next()?, f.next()?, f.next()?);
            (module != "vmlinux" && !module.is_empty())
                .then(|| (name.to_string(), module_name(module)))
        })
        .collect()
}

/// The kernel's name of a module from its Module.symvers path: the file name with `-` as `_`
/// (kbuild's `KBUILD_MODNAME`; livepatch matches `.klp.sym.<name>` against `mod->name`).
pub fn module_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symvers_keeps_only_vmlinux() {
        let text = "0x1\tseq_puts\tvmlinux\tEXPORT_SYMBOL\t\n0x2\txfs_foo\tfs/xfs/xfs\tEXPORT_SYMBOL_GPL\t\n";
        let s = vmlinux_exports_from_symvers(text);
        assert!(s.contains("seq_puts"));
        assert!(!s.contains("xfs_foo"));
        let m = module_exports_from_symvers(&format!(
            "{text}0x3\tsnd_x\tsound/pci/hda/snd-hda-codec\tEXPORT_SYMBOL\t\n"
        ));
        assert_eq!(m.get("xfs_foo").map(String::as_str), Some("xfs"));
        assert_eq!(m.get("snd_x").map(String::as_str), Some("snd_hda_codec"));
        assert!(!m.contains_key("seq_puts"));
    }

    #[test]
    fn malformed_input_is_error_not_panic() {
        let cx = Cx::new("vmlinux", "ksp0_");
        let err = diff(b"not an elf", b"not an elf", &cx).expect_err("must fail");
        assert!(
            matches!(
                err,
                Error::Parse {
                    side: Side::Pre,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 1);
    }
}
