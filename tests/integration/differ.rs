//! The object differ on real objects: kernel-style fixtures built by kbuild against the
//! installed Debian headers, and fs/proc objects built from Debian's linux-source-6.1.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use builder::diff::{self, Cx, Error, Outcome, Report};
use object::{Object, ObjectSection, ObjectSymbol};

const KCFLAGS: &str = "KCFLAGS=-ffunction-sections -fdata-sections";

fn fixtures_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/diff")
}

/// Build every fixture case (pre and post) with one kbuild run; returns the build root.
fn fixtures() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root =
            std::env::temp_dir().join(format!("ksplice-differ-fixtures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create fixture build dir");
        let mut top = String::new();
        let mut cases: Vec<_> = std::fs::read_dir(fixtures_src())
            .expect("fixtures/diff")
            .flatten()
            .map(|e| e.path())
            .collect();
        cases.sort();
        for case in &cases {
            let name = case
                .file_name()
                .and_then(|n| n.to_str())
                .expect("case name")
                .to_string();
            for side in ["pre", "post"] {
                let dir = root.join(&name).join(side);
                std::fs::create_dir_all(&dir).expect("mkdir");
                std::fs::copy(case.join(format!("{side}.c")), dir.join("fixture.c"))
                    .expect("copy source");
                std::fs::copy(case.join("Kbuild"), dir.join("Kbuild")).expect("copy Kbuild");
                top.push_str(&format!("obj-m += {name}/{side}/\n"));
            }
        }
        std::fs::write(root.join("Kbuild"), top).expect("write Kbuild");
        // The patch-author headers (kpatch-macros.h, kpatch-syscall.h), as the create step
        // provides them to real patches.
        let include = root.join("author-include");
        builder::module::write_author_headers(&include).expect("write author headers");
        let kcflags = format!("{KCFLAGS} -I{}", include.display());
        // Every case's module is called `fixture`, so kbuild's final duplicate-name check fails;
        // the objects are what we need, and each one is checked below.
        let out = Command::new("make")
            .arg("-C")
            .arg(&ksplice_tests::kernel_env().headers)
            .arg(format!("M={}", root.display()))
            .args(["-j2", &kcflags, "KBUILD_MODPOST_WARN=1", "modules"])
            .output()
            .expect("run make");
        for case in &cases {
            for side in ["pre", "post"] {
                let name = case
                    .file_name()
                    .and_then(|n| n.to_str())
                    .expect("case name");
                let obj = root.join(name).join(side).join("fixture.o");
                assert!(
                    obj.exists(),
                    "fixture {name}/{side} did not build:\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        root
    })
}

fn exports() -> &'static std::collections::HashSet<String> {
    static EXPORTS: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        let path = ksplice_tests::kernel_env()
            .headers
            .as_path()
            .join("Module.symvers");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        diff::vmlinux_exports_from_symvers(&text)
    })
}

fn module_exports() -> &'static std::collections::HashMap<String, String> {
    static EXPORTS: OnceLock<std::collections::HashMap<String, String>> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        let path = ksplice_tests::kernel_env()
            .headers
            .as_path()
            .join("Module.symvers");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        diff::module_exports_from_symvers(&text)
    })
}

fn cx(target: &str) -> Cx {
    let mut cx = Cx::new(target, "ksp0_");
    cx.vmlinux_exports = exports().clone();
    cx.module_exports = module_exports().clone();
    cx
}

fn objects(case: &str) -> (Vec<u8>, Vec<u8>) {
    let root = fixtures().join(case);
    let read =
        |side: &str| std::fs::read(root.join(side).join("fixture.o")).expect("read fixture object");
    (read("pre"), read("post"))
}

fn run(case: &str) -> Result<Outcome, Error> {
    run_for(case, "fixture")
}

/// Diff a fixture as if its object belonged to `target` ("vmlinux" or a module name).
fn run_for(case: &str, target: &str) -> Result<Outcome, Error> {
    let (pre, post) = objects(case);
    diff::diff(&pre, &post, &cx(target))
}

fn set(v: Vec<&str>) -> BTreeSet<String> {
    v.into_iter().map(str::to_string).collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A produced patch: (object bytes, report), asserting the exact changed and new sets.
fn patch(case: &str, changed: &[&str], new: &[&str]) -> (Vec<u8>, Report) {
    patch_for(case, "fixture", changed, new)
}

fn patch_for(case: &str, target: &str, changed: &[&str], new: &[&str]) -> (Vec<u8>, Report) {
    match run_for(case, target) {
        Ok(Outcome::Patch { object, report }) => {
            assert_eq!(
                set(report.changed()),
                names(changed),
                "{case}: changed\n{report}"
            );
            assert_eq!(
                set(report.new_functions()),
                names(new),
                "{case}: new\n{report}"
            );
            assert!(report.refusals.is_empty(), "{case}\n{report}");
            (object, report)
        }
        other => panic!("{case}: expected a patch, got {other:?}"),
    }
}

fn refused(case: &str, symbols: &[&str]) -> Report {
    match run_for(case, "fixture") {
        Err(Error::Refused { report }) => {
            assert_eq!(
                set(report.refused()),
                names(symbols),
                "{case}: refused\n{report}"
            );
            *report
        }
        other => panic!("{case}: expected a refusal, got {other:?}"),
    }
}

fn section_size(obj: &[u8], name: &str) -> u64 {
    let file = object::File::parse(obj).expect("parse object");
    file.sections()
        .filter(|s| s.name() == Ok(name))
        .map(|s| s.size())
        .sum()
}

fn defined(obj: &[u8]) -> BTreeSet<String> {
    let file = object::File::parse(obj).expect("parse object");
    file.symbols()
        .filter(|s| {
            !s.is_undefined()
                && s.kind() != object::SymbolKind::Section
                && s.kind() != object::SymbolKind::File
        })
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect()
}

fn undefined(obj: &[u8]) -> BTreeSet<String> {
    let file = object::File::parse(obj).expect("parse object");
    file.symbols()
        .filter(|s| s.is_undefined())
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect()
}

// ---- fixture cases ---------------------------------------------------------------------------

#[test]
fn unchanged_file_is_no_change() {
    assert!(matches!(run("unchanged"), Ok(Outcome::NoChange { .. })));
}

#[test]
fn one_function_body_changed() {
    let (obj, report) = patch("body-changed", &["fixture_add"], &[]);
    assert_eq!(defined(&obj), names(&["ksp0_fixture_add"]));
    // Run-pre data: the pre bytes, with the ftrace call and the return thunk skipped.
    let rp = &report.run_pre[0];
    assert_eq!(rp.name, "fixture_add");
    assert_eq!(rp.skip.first(), Some(&(0, 5)), "{:?}", rp.skip);
    let (pre, _) = objects("body-changed");
    let file = object::File::parse(&*pre).expect("parse");
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok("fixture_add"))
        .expect("fixture_add");
    let sec = file
        .section_by_index(sym.section_index().expect("section"))
        .expect("section");
    let data = sec.data().expect("data");
    assert_eq!(
        rp.code,
        data[sym.address() as usize..(sym.address() + sym.size()) as usize]
    );
}

#[test]
fn new_function_called_from_changed_one() {
    let (obj, _) = patch("new-function", &["fixture_caller"], &["fixture_helper"]);
    assert_eq!(
        defined(&obj),
        names(&["ksp0_fixture_caller", "ksp0_fixture_helper"])
    );
    // The unchanged callee is the running kernel's copy, never a duplicate.
    assert!(
        undefined(&obj).contains(".klp.sym.fixture.fixture_unchanged,0"),
        "{:?}",
        undefined(&obj)
    );
}

#[test]
fn new_global_is_included() {
    let (obj, _) = patch("new-global", &["fixture_bump"], &[]);
    assert_eq!(
        defined(&obj),
        names(&["fixture_counter", "ksp0_fixture_bump"])
    );
}

#[test]
fn string_literal_changed() {
    patch("string-changed", &["fixture_greet"], &[]);
}

#[test]
fn static_local_kept_across_the_change() {
    let (obj, report) = patch("static-local-kept", &["fixture_count"], &[]);
    let (pre, _) = objects("static-local-kept");
    let pre_name = symbol_names(&pre)
        .into_iter()
        .find(|n| n.starts_with("calls."))
        .expect("calls.N in pre");
    assert!(
        report
            .externals
            .iter()
            .any(|e| e.symbol == format!(".klp.sym.fixture.{pre_name},0")),
        "{report}"
    );
    assert!(!defined(&obj).iter().any(|n| n.starts_with("calls")));
    // sympos comes from the caller's view of the target's symbol table.
    let (pre, post) = objects("static-local-kept");
    let mut with_pos = cx("fixture");
    with_pos.sympos.insert(pre_name.clone(), 2);
    let Ok(Outcome::Patch { object, report }) = diff::diff(&pre, &post, &with_pos) else {
        panic!("expected a patch")
    };
    assert!(
        undefined(&object).contains(&format!(".klp.sym.fixture.{pre_name},2")),
        "{report}"
    );
}

fn symbol_names(obj: &[u8]) -> Vec<String> {
    let file = object::File::parse(obj).expect("parse object");
    file.symbols()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect()
}

#[test]
fn static_local_renumbered_is_matched_by_its_users() {
    let (obj, report) = patch("static-local-renamed", &["fixture_a"], &["fixture_new"]);
    // fixture_a's `count` is the 4-byte one in pre, whatever its number.
    let (pre, _) = objects("static-local-renamed");
    let file = object::File::parse(&*pre).expect("parse");
    let a_count = file
        .symbols()
        .find(|s| s.name().is_ok_and(|n| n.starts_with("count.")) && s.size() == 4)
        .expect("int count");
    let a_count = a_count.name().expect("name").to_string();
    let wanted = format!(".klp.sym.fixture.{a_count},0");
    assert!(
        report.externals.iter().any(|e| e.symbol == wanted),
        "want {wanted}\n{report}"
    );
    // The new function's static local is new data in the patch (2 bytes, `short`).
    let file = object::File::parse(&*obj).expect("parse");
    let fresh: Vec<_> = file
        .symbols()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with("count.")) && !s.is_undefined())
        .map(|s| s.size())
        .collect();
    assert_eq!(fresh, vec![2]);
}

#[test]
fn line_shift_only_is_no_change() {
    match run("line-shift") {
        Ok(Outcome::NoChange { report }) => {
            assert_eq!(
                report.line_only,
                vec!["fixture_where".to_string()],
                "{report}"
            );
        }
        other => panic!("expected no change, got {other:?}"),
    }
}

#[test]
fn syscall_redefined_without_its_metadata_moves_the_others_and_is_a_patch() {
    // KPATCH_SYSCALL_DEFINEx leaves the changed call's SYSCALL_METADATA out (the running
    // kernel keeps its own): the other calls' entries in __syscalls_metadata move up.
    // Moved tracing metadata is no change; the changed call is the patch.
    match run("syscall-metadata-left-out") {
        Ok(Outcome::Patch { report, .. }) => {
            let changed = set(report.changed());
            assert!(
                changed.iter().any(|f| f.contains("ksplice_fx_c")),
                "{changed:?}"
            );
            assert!(
                !changed
                    .iter()
                    .any(|f| f.contains("ksplice_fx_a") || f.contains("ksplice_fx_b")),
                "{changed:?}"
            );
        }
        other => panic!("expected a patch, got {other:?}"),
    }
}

#[test]
fn changed_data_is_refused() {
    refused("data-changed", &["fixture_limit"]);
}

#[test]
fn changed_init_code_is_refused() {
    refused("init-changed", &["fixture_setup_table"]);
}

#[test]
fn change_in_an_unknown_section_is_refused() {
    let report = refused("unknown-section-changed", &["fixture_table"]);
    assert_eq!(
        report.refusals[0].section, ".ksplice_fixture_table",
        "{report}"
    );
}

#[test]
fn new_export_is_refused() {
    refused("new-export", &["fixture_new_export"]);
}

/// Issue 12: `__BTF_ID__<kind>__<name>__<COUNTER><LINE>` (include/linux/btf_ids.h) is renamed
/// by any edit above it; the renamed IDs were refused as a change in an unknown section
/// (`.BTF_ids`). They pair by name without the counter, so only the real change remains.
#[test]
fn btf_ids_renamed_by_their_counter_are_unchanged() {
    let (pre, post) = objects("btf-ids-renumbered");
    let btf = |obj: &[u8]| -> BTreeSet<String> {
        symbol_names(obj)
            .into_iter()
            .filter(|n| n.starts_with("__BTF_ID__"))
            .collect()
    };
    assert!(
        btf(&pre).len() == 2 && btf(&pre).is_disjoint(&btf(&post)),
        "the fixture no longer renames its BTF IDs: {:?} {:?}",
        btf(&pre),
        btf(&post)
    );
    let (obj, _) = patch("btf-ids-renumbered", &["fixture_other"], &[]);
    assert_eq!(defined(&obj), names(&["ksp0_fixture_other"]));
}

/// Issue 12: "post object is malformed: relocation against unsupported symbol \"\"": a
/// relocation against the null symbol (S = 0) in changed code. An absolute one is a value (its
/// addend) and is copied as such; an `R_X86_64_NONE` does nothing and is dropped.
#[test]
fn relocations_against_the_null_symbol_are_carried() {
    let (obj, report) = patch("null-symbol-reloc", &["fixture_abs"], &[]);
    let file = object::File::parse(&*obj).expect("parse patch object");
    let text = file
        .section_by_name(".text.ksp0_fixture_abs")
        .expect("the patched function's section");
    let relocs: Vec<(u64, object::RelocationFlags, object::RelocationTarget, i64)> = text
        .relocations()
        .map(|(at, r)| (at, r.flags(), r.target(), r.addend()))
        .filter(|(_, _, t, _)| *t == object::RelocationTarget::Absolute)
        .collect();
    assert_eq!(
        relocs,
        vec![(
            7,
            object::RelocationFlags::Elf {
                r_type: object::elf::R_X86_64_64
            },
            object::RelocationTarget::Absolute,
            0x1234
        )],
        "{report}"
    );
    // The absolute field is skipped by run-pre (its value is in the code), never value-checked.
    let rp = &report.run_pre[0];
    assert!(
        rp.skip.iter().any(|&(s, l)| s <= 7 && 7 + 8 <= s + l),
        "{:?}",
        rp.skip
    );
    assert!(rp.relocs.iter().all(|r| r.offset != 7), "{:?}", rp.relocs);
}

/// Issue 12, the other side: a reference into a section the differ keeps nothing of (here
/// `.discard.*`) cannot be carried; it is refused by name with that reason (it was the same
/// "malformed" error, exit 1).
#[test]
fn reference_into_a_dropped_section_is_refused_by_name() {
    let report = refused("refers-into-discard", &["fixture_marker"]);
    assert!(
        report.refusals[0]
            .reason
            .starts_with("included code refers into .discard.fixture"),
        "{report}"
    );
}

/// Issue 12: a vmlinux-resident file whose lines shift renames its initcall
/// (`__initcall__kmod_<mod>__<COUNTER>_<LINE>_<fn><level>`) and moves `__LINE__` immediates in
/// `__init` code: no functional change, not a changed `__init` function.
#[test]
fn initcall_and_init_code_moved_by_a_line_shift_are_no_change() {
    let (pre, post) = objects("initcall-line-shift");
    let initcall = |obj: &[u8]| {
        symbol_names(obj)
            .into_iter()
            .find(|n| n.starts_with("__initcall__kmod_fixture__"))
            .expect("the fixture has an initcall")
    };
    assert_ne!(
        initcall(&pre),
        initcall(&post),
        "the initcall is no longer renamed"
    );
    match run("initcall-line-shift") {
        Ok(Outcome::NoChange { report }) => {
            assert_eq!(
                report.line_only,
                vec!["fixture_setup".to_string()],
                "{report}"
            )
        }
        other => panic!("expected no functional change, got {other:?}"),
    }
}

/// Issue 12: `__init` code refused as changed though only the displacement of a call to
/// another `__init` function differed (one `.init.text` section: gas resolves those calls, so
/// another order or size of the callees moves them). Calls that reach the same function are
/// the same code.
#[test]
fn init_calls_that_reach_the_same_functions_are_unchanged() {
    let (pre, post) = objects("init-reordered");
    let code = |obj: &[u8]| {
        let file = object::File::parse(obj).expect("parse");
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok("fixture_init"))
            .expect("fixture_init");
        let sec = file
            .section_by_index(sym.section_index().expect("section"))
            .expect("section");
        let data = sec.data().expect("data");
        data[sym.address() as usize..(sym.address() + sym.size()) as usize].to_vec()
    };
    assert_ne!(
        code(&pre),
        code(&post),
        "the fixture no longer moves fixture_init's calls"
    );
    assert!(
        matches!(run("init-reordered"), Ok(Outcome::NoChange { .. })),
        "{:?}",
        run("init-reordered")
    );
}

/// The other side of the rule above: a call without a relocation that now reaches another
/// function is a changed `__init` function, still refused by name.
#[test]
fn init_call_to_another_function_is_still_refused() {
    // `module_init` makes fixture_init the alias `init_module`: the global name is reported.
    // Only the two call displacements differ (the helpers are called in the other order).
    let report = refused("init-call-retargeted", &["init_module"]);
    assert_eq!(
        report.refusals[0].reason,
        "changed __init/__exit code or data cannot be patched"
    );
}

/// A changed function that calls another function of its shared section (`.sched.text`)
/// through a displacement the assembler resolved: its copy in the patch object would call a
/// wrong address (the differ used to emit exactly that). Refused by name until such calls are
/// turned into relocations.
#[test]
fn call_without_relocation_inside_a_shared_section_is_refused() {
    let report = refused("shared-section-call", &["fixture_caller"]);
    assert!(
        report.refusals[0].reason.starts_with(
            "calls or jumps to fixture_helper in the same section without a relocation"
        ),
        "{report}"
    );
}

/// Safety (issue 12: never relaxed to raise the numbers): a structure that gains a field
/// changes the running kernel's object of that type; refused by the object's name.
#[test]
fn changed_structure_layout_of_existing_data_is_refused() {
    let report = refused("struct-layout-changed", &["fixture_conf"]);
    assert_eq!(
        report.refusals[0].reason,
        "changed data exists in the running kernel"
    );
}

/// Safety: a changed `noinstr` function (no ftrace entry, its own `.noinstr.text`) is refused
/// by name, also now that calls inside shared sections are compared by their target.
#[test]
fn changed_noinstr_function_is_refused() {
    let report = refused("noinstr-changed", &["fixture_entry_work"]);
    assert!(
        report.refusals[0]
            .reason
            .starts_with("changed function has no ftrace entry"),
        "{report}"
    );
}

/// `KPATCH_*_CALLBACK` tables are kept whole as new sections, with the functions their slots
/// point to (new code, plus a copy of an unchanged function used as a callback) and what those
/// need; `KPATCH_PRINTK` calls `_printk` behind `jiffies`.
#[test]
fn callback_tables_and_their_functions_are_included() {
    let (obj, report) = patch(
        "callbacks",
        &["fixture_value"],
        &["fixture_check", "fixture_pre"],
    );
    let included: BTreeSet<(String, String)> = report
        .included
        .iter()
        .map(|i| (i.symbol.clone(), i.reason.clone()))
        .collect();
    let expect = |v: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        included,
        expect(&[
            ("fixture_value", "changed function"),
            ("fixture_value.cold", "split-off part of fixture_value"),
            ("fixture_pre", "new function"),
            ("fixture_check", "new function"),
            (
                "fixture_cleanup",
                "function called through a callback table"
            ),
            (
                ".ksplice.callbacks.pre_patch",
                "patch-author callback table"
            ),
            (
                ".ksplice.callbacks.post_unpatch",
                "patch-author callback table"
            ),
            (
                ".rodata.fixture_value.str1.1",
                "unnamed section used by included code"
            ),
        ]),
        "{report}"
    );
    assert_eq!(
        defined(&obj),
        names(&[
            "ksp0_fixture_value",
            "fixture_value.cold",
            "ksp0_fixture_pre",
            "ksp0_fixture_check",
            "ksp0_fixture_cleanup",
        ])
    );
    assert_eq!(
        undefined(&obj),
        names(&[
            "__fentry__",
            "__x86_return_thunk",
            "_printk",
            "jiffies",
            ".klp.sym.fixture.fixture_existing,0",
            ".klp.sym.fixture.fixture_counter,0",
        ])
    );
    // One 8-byte R_X86_64_64 slot per callback, pointing at the included copy: what
    // builder::module::callbacks reads.
    let file = object::File::parse(&*obj).expect("parse");
    for (section, target) in [
        (".ksplice.callbacks.pre_patch", "ksp0_fixture_pre"),
        (".ksplice.callbacks.post_unpatch", "ksp0_fixture_cleanup"),
    ] {
        let sec = file.section_by_name(section).expect(section);
        assert_eq!(sec.size(), 8, "{section}");
        let relocs: Vec<_> = sec.relocations().collect();
        assert_eq!(relocs.len(), 1, "{section}");
        let (off, r) = &relocs[0];
        assert_eq!(*off, 0);
        assert_eq!(
            r.flags(),
            object::RelocationFlags::Elf {
                r_type: object::elf::R_X86_64_64
            }
        );
        let object::RelocationTarget::Symbol(sym) = r.target() else {
            panic!("{section}: relocation without a symbol");
        };
        assert_eq!(
            file.symbol_by_index(sym).expect("symbol").name(),
            Ok(target)
        );
    }
    assert_eq!(section_size(&obj, ".ksplice.callbacks.post_patch"), 0);
}

/// A changed local notrace function called only by traced ones (SYSCALL_DEFINEx's
/// `__do_sys_<name>`) is replaced through its callers, which call a fresh copy of it.
#[test]
fn notrace_static_function_is_replaced_through_its_callers() {
    let (obj, report) = patch("notrace-static-changed", &["fixture_entry"], &[]);
    let included: BTreeSet<(String, String)> = report
        .included
        .iter()
        .map(|i| (i.symbol.clone(), i.reason.clone()))
        .collect();
    assert_eq!(
        included,
        [
            ("fixture_entry", "changed function"),
            (
                "fixture_body",
                "changed notrace function, reached through its replaced callers",
            ),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect::<BTreeSet<_>>(),
        "{report}"
    );
    assert_eq!(
        defined(&obj),
        names(&["ksp0_fixture_entry", "ksp0_fixture_body"])
    );
    assert_eq!(
        report
            .run_pre
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["fixture_entry"]
    );
}

#[test]
fn notrace_function_changed_is_refused() {
    refused("notrace-changed", &["fixture_quiet"]);
}

#[test]
fn cold_part_follows_its_parent() {
    let (pre, _) = objects("cold-split");
    assert!(
        symbol_names(&pre).iter().any(|n| n == "fixture_check.cold"),
        "gcc made no .cold part"
    );
    // Only the .cold part's string changed: the parent is replaced for it (a .cold part has no
    // ftrace entry), and the new parent jumps to the new part, never to the running one.
    let (obj, report) = patch("cold-split", &["fixture_check"], &[]);
    assert!(defined(&obj).contains("fixture_check.cold"), "{report}");
    assert!(
        !undefined(&obj).iter().any(|n| n.contains(".cold")),
        "{:?}",
        undefined(&obj)
    );
}

// ---- split-off parts: `.part.N` clones and `.cold` parts (issue 9 §3b) -----------------------

/// The pre object's symbol matching `FN.part.<digits>`, failing loudly when gcc no longer
/// splits the fixture (the tests below would then prove nothing).
fn part_of(case: &str, function: &str) -> String {
    let (pre, _) = objects(case);
    let prefix = format!("{function}.part.");
    symbol_names(&pre)
        .into_iter()
        .find(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or_else(|| {
            panic!("{case}: gcc made no {prefix}N part: the fixture no longer produces a split")
        })
}

/// The inclusion list of a report as (symbol, reason) pairs.
fn inclusions(report: &Report) -> BTreeSet<(String, String)> {
    report
        .included
        .iter()
        .map(|i| (i.symbol.clone(), i.reason.clone()))
        .collect()
}

/// A changed part is a function of its own: replaced by name, with its own run-pre data that
/// starts with the ftrace call it has.
fn assert_replaced_alone(case: &str, part: &str, obj: &[u8], report: &Report) {
    assert!(
        defined(obj).contains(&format!("ksp0_{part}")),
        "{case}: {:?}\n{report}",
        defined(obj)
    );
    let rp = report
        .run_pre
        .iter()
        .find(|r| r.name == part)
        .unwrap_or_else(|| panic!("{case}: no run-pre data for {part}\n{report}"));
    assert_eq!(rp.skip.first(), Some(&(0, 5)), "{case}: {:?}", rp.skip);
    // Nothing in the patch calls the running kernel's old copy.
    let old = format!(".klp.sym.fixture.{part},0");
    assert!(!undefined(obj).contains(&old), "{case}: {report}");
}

/// Pins issue 9 §3b: a change inside `FN.part.N` whose parent gcc inlined everywhere (no `FN`
/// symbol is left) was dropped, "no functional change". The part is replaced on its own.
#[test]
fn changed_part_whose_parent_was_inlined_everywhere_is_replaced() {
    let part = part_of("part-parent-inlined", "fixture_report");
    let (pre, _) = objects("part-parent-inlined");
    assert!(
        !symbol_names(&pre).iter().any(|n| n == "fixture_report"),
        "the fixture's parent is no longer inlined everywhere"
    );
    let (obj, report) = patch("part-parent-inlined", &[&part], &[]);
    assert_replaced_alone("part-parent-inlined", &part, &obj, &report);
    assert_eq!(defined(&obj), names(&[&format!("ksp0_{part}")]), "{report}");
}

/// Pins issue 9 §3b: a changed part whose parent is unchanged made the parent "changed" and
/// copied the part beside it, so the callers the parent's fast path was inlined into kept
/// calling the old part (an applied but incomplete update). Only the part is replaced.
#[test]
fn changed_part_whose_parent_is_unchanged_is_replaced_alone() {
    let part = part_of("part-parent-unchanged", "fixture_report");
    let (obj, report) = patch("part-parent-unchanged", &[&part], &[]);
    assert_replaced_alone("part-parent-unchanged", &part, &obj, &report);
}

/// Pins issue 9 §3b: part and parent both changed — each is replaced as a function of its own,
/// and the new parent (through its `.cold` part) calls the new part.
#[test]
fn changed_part_and_changed_parent_are_both_replaced() {
    let case = "part-and-parent-changed";
    let part = part_of(case, "fixture_report");
    // The fast path is inlined into both callers, so they change with it.
    let (obj, report) = patch(
        case,
        &[&part, "fixture_report", "fixture_first", "fixture_second"],
        &[],
    );
    assert_replaced_alone(case, &part, &obj, &report);
    assert!(
        inclusions(&report).contains(&(
            "fixture_report.cold".to_string(),
            "split-off part of fixture_report".to_string()
        )),
        "{report}"
    );
}

/// The mirror case: the parent changed, its part did not. The new parent keeps calling the
/// running kernel's part, which is fine because it is unchanged; it is not copied.
#[test]
fn unchanged_part_of_a_changed_parent_stays_in_the_running_kernel() {
    let case = "part-unchanged-parent-changed";
    let part = part_of(case, "fixture_report");
    let (obj, report) = patch(
        case,
        &["fixture_report", "fixture_first", "fixture_second"],
        &[],
    );
    assert!(
        undefined(&obj).contains(&format!(".klp.sym.fixture.{part},0")),
        "{report}"
    );
    assert!(
        !defined(&obj).iter().any(|n| n.contains(".part.")),
        "{report}"
    );
}

/// A part renumbered between the builds (`fixture_log.part.0` -> `.part.1`) pairs with its old
/// self: it is replaced under its running-kernel name, not dropped as removed + new.
#[test]
fn renumbered_part_is_correlated_with_its_old_name() {
    let (pre, post) = objects("part-renumbered");
    assert!(symbol_names(&pre).iter().any(|n| n == "fixture_log.part.0"));
    assert!(symbol_names(&post)
        .iter()
        .any(|n| n == "fixture_log.part.1"));
    let (obj, report) = patch("part-renumbered", &["fixture_log.part.0"], &[]);
    assert!(report.removed().is_empty(), "{report}");
    assert_replaced_alone("part-renumbered", "fixture_log.part.0", &obj, &report);
}

/// Pins issue 9 §3b for untraced parts: the part of a notrace function has no ftrace entry; its
/// callers (the functions the fast path was inlined into) are replaced and call a fresh copy.
#[test]
fn changed_notrace_part_is_replaced_through_its_callers() {
    let case = "notrace-part-changed";
    let part = part_of(case, "fixture_report");
    let (obj, report) = patch(case, &["fixture_first", "fixture_second"], &[]);
    assert!(
        inclusions(&report).contains(&(
            part.clone(),
            "changed notrace function, reached through its replaced callers".to_string()
        )),
        "{report}"
    );
    assert!(defined(&obj).contains(&format!("ksp0_{part}")), "{report}");
}

/// An untraced part that something other than code refers to (here its parent, whose address
/// is taken) cannot be reached through replaced callers: refused, naming the part.
#[test]
fn changed_notrace_part_with_an_unreplaceable_caller_is_refused_by_name() {
    let case = "notrace-part-hooked";
    let part = part_of(case, "fixture_report");
    let report = refused(case, &[&part]);
    assert_eq!(
        report.refusals[0].reason,
        "changed function has no ftrace entry (notrace or not traceable): cannot be patched",
        "{report}"
    );
}

/// A changed `.cold` part has no ftrace entry and goes with its parent; with no parent in the
/// object (objtool rejects that, so the fixture skips objtool) it is refused by name.
#[test]
fn changed_cold_part_without_a_parent_is_refused_by_name() {
    let report = refused("cold-orphan-changed", &["fixture_gone.cold"]);
    assert_eq!(
        report.refusals[0].reason,
        "changed .cold part has no parent function in the object to be replaced with: cannot be patched",
        "{report}"
    );
}

#[test]
fn static_inline_changed_changes_every_caller() {
    patch("static-inline-changed", &["fixture_a", "fixture_b"], &[]);
}

#[test]
fn exception_table_entries_follow_included_code() {
    let (_, post) = objects("exception-table");
    assert_eq!(section_size(&post, "__ex_table"), 24);
    let (obj, _) = patch("exception-table", &["fixture_get"], &[]);
    assert_eq!(section_size(&obj, "__ex_table"), 12);
}

#[test]
fn jump_label_entries_follow_included_code() {
    let (_, post) = objects("jump-label");
    assert_eq!(section_size(&post, "__jump_table"), 32);
    // In vmlinux the key is resolved before jump label init: the entry is kept.
    let (obj, _) = patch_for("jump-label", "vmlinux", &["fixture_fast"], &[]);
    assert_eq!(section_size(&obj, "__jump_table"), 16);
    assert!(undefined(&obj).contains(".klp.sym.vmlinux.fixture_key,0"));
}

#[test]
fn jump_label_keyed_in_a_module_is_refused() {
    let report = refused("jump-label", &["fixture_fast"]);
    assert_eq!(report.refusals[0].section, "__jump_table", "{report}");
}

#[test]
fn alternative_entries_follow_included_code() {
    let (_, post) = objects("alternative");
    assert_eq!(section_size(&post, ".altinstructions"), 24);
    let (obj, _) = patch("alternative", &["fixture_alt"], &[]);
    assert_eq!(section_size(&obj, ".altinstructions"), 12);
    assert!(section_size(&obj, ".altinstr_replacement") > 0);
}

#[test]
fn static_call_sites_follow_included_code() {
    let (_, post) = objects("static-call");
    assert_eq!(section_size(&post, ".static_call_sites"), 16);
    let (obj, _) = patch_for("static-call", "vmlinux", &["fixture_user"], &[]);
    assert_eq!(section_size(&obj, ".static_call_sites"), 8);
}

#[test]
fn static_call_keyed_in_a_module_is_refused() {
    let report = refused("static-call", &["fixture_user"]);
    assert_eq!(report.refusals[0].section, ".static_call_sites", "{report}");
}

#[test]
fn warn_bug_table_entries_follow_included_code() {
    let (_, post) = objects("warn");
    assert_eq!(section_size(&post, "__bug_table"), 24);
    let (obj, _) = patch("warn", &["fixture_warn"], &[]);
    assert_eq!(section_size(&obj, "__bug_table"), 12);
}

/// Issue 12: `pr_warn_once` flags live in `.data.once`; a changed function
/// using them was refused ("refers into .data.once"), 18 real patches, because
/// `.data.once - 5` (a `cmpb $0` of the flag at 0) resolved before the
/// section. With decoded instruction lengths each reference finds its own
/// flag, copied fresh into the patch, and addresses that copy's byte.
#[test]
fn once_flags_are_copied_fresh_and_each_reference_reaches_its_own() {
    let (_, post) = objects("warn-once");
    assert_eq!(section_size(&post, ".data.once"), 2);
    let (obj, report) = patch("warn-once", &["fixture_once"], &[]);
    let flags: BTreeSet<&str> = report
        .included
        .iter()
        .filter(|i| i.section == ".data.once")
        .map(|i| i.symbol.as_str())
        .collect();
    assert_eq!(flags.len(), 2, "{report}");
    // Every reference to a copied flag addresses byte 0 of its 1-byte copy:
    // the addend is minus the bytes from the field to its instruction's end,
    // which objdump shows as the operand's address.
    let file = object::File::parse(&*obj).expect("parse patch");
    let text = file
        .sections()
        .find(|s| s.name().is_ok_and(|n| n.ends_with("fixture_once")))
        .expect("patched function");
    let code = text.data().expect("code");
    let mut seen = 0;
    for (at, r) in text.relocations() {
        let object::RelocationTarget::Symbol(i) = r.target() else {
            continue;
        };
        let sym = file.symbol_by_index(i).expect("symbol");
        if !sym.name().is_ok_and(|n| n.starts_with("__already_done")) {
            continue;
        }
        let at = at as usize;
        // `cmpb $imm8, disp(%rip)` (80 3d) and `movb $imm8, disp(%rip)` (c6 05)
        // end one byte after the field; a load (0f b6 05 / 8a 05) right after it.
        let tail = match (code[at - 2], code[at - 1]) {
            (0x80, 0x3d) | (0xc6, 0x05) => 5,
            _ => 4,
        };
        assert_eq!(r.addend() + tail, 0, "{:?} at {at:#x}", sym.name());
        seen += 1;
    }
    assert!(seen >= 2, "references to both flags, got {seen}");
}

#[test]
fn entry_sizes_match_kernel_headers() {
    let (pre, _) = objects("entry-sizes");
    let file = object::File::parse(&*pre).expect("parse");
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok("ksplice_entry_sizes"))
        .expect("ksplice_entry_sizes");
    let sec = file
        .section_by_index(sym.section_index().expect("section"))
        .expect("section");
    let data = sec.data().expect("data");
    let at = sym.address() as usize;
    let sizes: Vec<u64> = (0..7)
        .map(|i| {
            u64::from_le_bytes(
                data[at + 8 * i..at + 8 * i + 8]
                    .try_into()
                    .expect("8 bytes"),
            )
        })
        .collect();
    let table: HashMap<&str, u64> = diff::entry_sizes().into_iter().collect();
    let order = [
        "__bug_table",
        "__ex_table",
        "__jump_table",
        ".altinstructions",
        ".parainstructions",
        ".static_call_sites",
        ".orc_unwind",
    ];
    let expected: Vec<u64> = order.iter().map(|n| table[n]).collect();
    assert_eq!(
        sizes, expected,
        "entry sizes in builder/diff/src/special.rs vs the kernel headers"
    );
}

#[test]
fn malformed_input_exits_1() {
    let (pre, _) = objects("unchanged");
    let err = diff::diff(&pre, &pre[..64], &cx("fixture")).expect_err("truncated object");
    assert!(
        matches!(
            err,
            Error::Parse {
                side: diff::Side::Post,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 1);
}

// ---- real kernel objects ---------------------------------------------------------------------

/// Private copies of Debian's source with fs/proc built (pre) and with cmdline-string.patch and
/// proc-version.patch applied (post); cached under $KSPLICE_CACHE/trees.
fn fsproc_trees() -> &'static (PathBuf, PathBuf) {
    static TREES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    TREES.get_or_init(|| {
        let trees = ksplice_tests::kernel_env().cache.join("trees");
        let version = &ksplice_tests::kernel_env().version;
        let patches = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/patches");
        let patches = if patches.exists() { patches } else { PathBuf::from("/work/shared/patches") };
        let mut out = Vec::new();
        for side in ["pre", "post"] {
            let dir = trees.join(format!("differ-fsproc-{side}-{version}"));
            if !dir.join(".ksplice-differ-ready").exists() {
                let apply = if side == "post" {
                    format!(
                        "patch -p1 < {p}/cmdline-string.patch && patch -p1 < {p}/proc-version.patch && ",
                        p = patches.display()
                    )
                } else {
                    String::new()
                };
                let script = format!(
                    "set -e; rm -rf {d}.tmp; mkdir -p {t}; cp -a {src} {d}.tmp; cd {d}.tmp; {apply} \
                     cp {cfg} .config; make olddefconfig >/dev/null; make -j2 modules_prepare >/dev/null; \
                     make -j2 '{KCFLAGS}' fs/proc/ >/dev/null; touch .ksplice-differ-ready; cd /; rm -rf {d}; mv {d}.tmp {d}",
                    d = dir.display(),
                    t = trees.display(),
                    src = ksplice_tests::kernel_env().source.display(),
                    cfg = ksplice_tests::kernel_env().config.display(),
                );
                let st = Command::new("sh").arg("-c").arg(&script).status().expect("run sh");
                assert!(st.success(), "building {} failed", dir.display());
            }
            out.push(dir);
        }
        (out[0].clone(), out[1].clone())
    })
}

fn fsproc_objects(tree: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(tree.join("fs/proc"))
        .expect("fs/proc")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "o"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_fs_proc_object_against_itself_is_no_change() {
    let (pre, _) = fsproc_trees();
    let objs = fsproc_objects(pre);
    assert!(objs.len() >= 25, "only {} objects in fs/proc", objs.len());
    for path in objs {
        let data = std::fs::read(&path).expect("read object");
        match diff::diff(&data, &data, &cx("vmlinux")) {
            Ok(Outcome::NoChange { .. }) => {}
            other => panic!("{}: expected no change, got {other:?}", path.display()),
        }
    }
}

#[test]
fn fs_proc_rebuilt_unpatched_objects_are_no_change() {
    let (pre, post) = fsproc_trees();
    for path in fsproc_objects(pre) {
        let name = path.file_name().expect("file name");
        if name == "cmdline.o" || name == "version.o" {
            continue;
        }
        let a = std::fs::read(&path).expect("read pre");
        let b = std::fs::read(post.join("fs/proc").join(name)).expect("read post");
        assert!(
            matches!(
                diff::diff(&a, &b, &cx("vmlinux")),
                Ok(Outcome::NoChange { .. })
            ),
            "{}",
            path.display()
        );
    }
}

fn fsproc_patch(object: &str, function: &str) -> (Vec<u8>, Report) {
    let (pre, post) = fsproc_trees();
    let a = std::fs::read(pre.join("fs/proc").join(object)).expect("read pre");
    let b = std::fs::read(post.join("fs/proc").join(object)).expect("read post");
    match diff::diff(&a, &b, &cx("vmlinux")) {
        Ok(Outcome::Patch { object, report }) => {
            assert_eq!(set(report.changed()), names(&[function]), "{report}");
            assert!(
                report.new_functions().is_empty() && report.removed().is_empty(),
                "{report}"
            );
            (object, report)
        }
        other => panic!("{object}: expected a patch, got {other:?}"),
    }
}

#[test]
fn cmdline_string_patch_changes_only_cmdline_proc_show() {
    let (obj, report) = fsproc_patch("cmdline.o", "cmdline_proc_show");
    assert_eq!(defined(&obj), names(&["ksp0_cmdline_proc_show"]));
    assert_eq!(
        undefined(&obj),
        names(&[
            "seq_printf",
            "__fentry__",
            "__x86_return_thunk",
            ".klp.sym.vmlinux.saved_command_line,0"
        ]),
        "{report}"
    );
}

#[test]
fn proc_version_patch_changes_only_version_proc_show() {
    fsproc_patch("version.o", "version_proc_show");
}

/// Compile `<unit>.c` of a prepared tree twice, as it is and with `from` replaced by `to`, with
/// kbuild's own command line for it (`.<name>.o.cmd`: same flags, same objtool pass), into a
/// temporary directory; the tree is only read.
fn compile_edited(tree: &Path, unit: &str, from: &str, to: &str) -> (Vec<u8>, Vec<u8>) {
    let (dir, base) = unit.rsplit_once('/').expect("unit is dir/name");
    let cmd_file = tree.join(dir).join(format!(".{base}.o.cmd"));
    let text = std::fs::read_to_string(&cmd_file)
        .unwrap_or_else(|e| panic!("{}: {e}", cmd_file.display()));
    let (_, cmd) = text
        .lines()
        .next()
        .and_then(|l| l.split_once(" := "))
        .unwrap_or_else(|| panic!("{}: no command line", cmd_file.display()));
    let source = std::fs::read_to_string(tree.join(format!("{unit}.c"))).expect("read source");
    assert_eq!(
        source.matches(from).count(),
        1,
        "{unit}.c: the edit site {from:?} is not there exactly once any more"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join(format!("{base}.c"));
    let obj = tmp.path().join(format!("{base}.o"));
    // The copy lives outside the tree: its quoted includes come from the unit's directory.
    let cmd = cmd
        .split(' ')
        .filter(|w| !w.starts_with("-Wp,-MMD,"))
        .collect::<Vec<_>>()
        .join(" ")
        .replace(
            &format!("{unit}.c"),
            &format!("{} -iquote {dir}", src.display()),
        )
        .replace(&format!("{unit}.o"), &obj.display().to_string());
    let mut out = Vec::new();
    for text in [source.clone(), source.replacen(from, to, 1)] {
        std::fs::write(&src, text).expect("write source copy");
        let st = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(tree)
            .status()
            .expect("run the compiler");
        assert!(st.success(), "compiling {unit}.c failed: {cmd}");
        out.push(std::fs::read(&obj).expect("read object"));
    }
    let post = out.pop().expect("two objects");
    (out.pop().expect("two objects"), post)
}

/// Pins issue 9 §3b on real kernel code: gcc inlines `smap_gather_stats` (fs/proc/task_mmu.c)
/// everywhere but for its `.part.0`, so a change in its body was "no functional change".
#[test]
fn real_kernel_part_whose_parent_was_inlined_everywhere_is_replaced() {
    let (tree, _) = fsproc_trees();
    let (pre, post) = compile_edited(
        tree,
        "fs/proc/task_mmu",
        "\tif (!start)\n\t\twalk_page_vma(vma, ops, mss);",
        "\tif (!start && vma->vm_start)\n\t\twalk_page_vma(vma, ops, mss);",
    );
    let symbols = symbol_names(&pre);
    let part = symbols
        .iter()
        .find(|n| {
            n.strip_prefix("smap_gather_stats.part.")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or_else(|| panic!("task_mmu.o: gcc no longer splits smap_gather_stats"));
    assert!(
        !symbols.iter().any(|n| n == "smap_gather_stats"),
        "task_mmu.o: smap_gather_stats is no longer inlined everywhere"
    );
    match diff::diff(&pre, &post, &cx("vmlinux")) {
        Ok(Outcome::Patch { object, report }) => {
            assert_eq!(set(report.changed()), names(&[part]), "{report}");
            assert!(report.new_functions().is_empty(), "{report}");
            assert_eq!(defined(&object), names(&[&format!("ksp0_{part}")]));
            let rp = &report.run_pre[0];
            assert_eq!(
                (rp.name.as_str(), rp.skip.first()),
                (part.as_str(), Some(&(0, 5)))
            );
        }
        other => panic!("task_mmu.o: expected a patch, got {other:?}"),
    }
}

#[test]
fn ksplice_build_diff_cli_prints_the_changed_function() {
    let (pre, post) = fsproc_trees();
    let bin = ksplice_tests::cargo_bin("builder", "ksplice-build");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(&bin)
        .arg("diff")
        .arg(pre.join("fs/proc/cmdline.o"))
        .arg(post.join("fs/proc/cmdline.o"))
        .arg("-o")
        .arg(tmp.path().join("out.o"))
        .arg("--report")
        .arg(tmp.path().join("r.json"))
        .output()
        .expect("run ksplice-build");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let changed: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("changed"))
        .collect();
    assert_eq!(changed.len(), 1, "{text}");
    assert!(changed[0].contains("cmdline_proc_show"), "{text}");
    let json: Report =
        serde_json::from_slice(&std::fs::read(tmp.path().join("r.json")).expect("report"))
            .expect("json");
    assert_eq!(json.changed(), vec!["cmdline_proc_show"]);
    assert!(tmp.path().join("out.o").exists());
    // No change and refusal exit codes.
    let same = Command::new(&bin)
        .arg("diff")
        .arg(pre.join("fs/proc/cmdline.o"))
        .arg(pre.join("fs/proc/cmdline.o"))
        .output()
        .expect("run");
    assert_eq!(same.status.code(), Some(3));
}

// ---- benchmark (run by ci/bench-diff; ignored in the normal suite, asserts no timing) ------

/// Diff every object under `$KSPLICE_BENCH_DIR` (default: the cached fs/proc tree) against
/// itself `$KSPLICE_BENCH_ROUNDS` times in this process; print objects/s and peak RSS.
#[test]
#[ignore = "benchmark: run through ci/bench-diff"]
fn bench_diff_subtree() {
    let dir = std::env::var("KSPLICE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| fsproc_trees().0.join("fs/proc"));
    let rounds: usize = std::env::var("KSPLICE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let mut paths = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "o")
                && !p.to_string_lossy().ends_with(".mod.o")
            {
                paths.push(p);
            }
        }
    }
    paths.sort();
    let data: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read object"))
        .collect();
    let bytes: usize = data.iter().map(Vec::len).sum();
    let cx = cx("vmlinux");
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for (p, d) in paths.iter().zip(&data) {
            let r = diff::diff(d, d, &cx);
            assert!(
                matches!(r, Ok(Outcome::NoChange { .. })),
                "{}: {r:?}",
                p.display()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let total = paths.len() * rounds;
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "bench-diff: {} objects ({:.1} MiB) under {} x {rounds} rounds = {total} diffs in {secs:.2} s: {:.0} objects/s, {:.0} MiB/s; peak RSS {hwm}",
        paths.len(),
        bytes as f64 / 1048576.0,
        dir.display(),
        total as f64 / secs,
        (bytes * rounds) as f64 / 1048576.0 / secs
    );
}

/// The differ sees one object at a time: a global another object of the same update
/// adds is, to it, a symbol of the running kernel. The module step
/// (builder::module, `link`) points such references at the update's own definition.
#[test]
fn new_globals_of_another_object_stay_outward_for_the_module_step() {
    let (provider, _) = patch_for("new-global-function", "vmlinux", &[], &["fixture_provide"]);
    let (user, _) = patch_for("uses-new-global", "vmlinux", &["fixture_use"], &[]);
    let undefined = undefined(&user);
    assert!(
        undefined.contains(".klp.sym.vmlinux.fixture_provide,0"),
        "{undefined:?}"
    );
    assert!(
        undefined.contains(".klp.sym.vmlinux.fixture_shared,0"),
        "{undefined:?}"
    );
    assert!(defined(&provider).contains("ksp0_fixture_provide"));
}

#[test]
fn paravirt_and_lock_sites_follow_included_code() {
    let (_, post) = objects("paravirt-and-locks");
    let (pv, locks) = (
        section_size(&post, ".parainstructions"),
        section_size(&post, ".smp_locks"),
    );
    assert!(
        pv > 0 && locks > 0,
        "fixture has no paravirt ({pv}) or lock ({locks}) sites"
    );
    let (obj, report) = patch("paravirt-and-locks", &["fixture_irq"], &[]);
    assert_eq!(section_size(&obj, ".parainstructions"), pv / 2);
    assert_eq!(section_size(&obj, ".smp_locks"), locks / 2);
    // Run-pre skips every paravirt site and lock prefix of the pre function.
    let skip = &report.run_pre[0].skip;
    let skipped: u32 = skip.iter().map(|r| r.1).sum();
    // At least the ftrace call (5 bytes) and one lock prefix (1 byte) beyond it.
    assert!(skip.len() >= 3 && skipped > 5, "{skip:?}");
}

#[test]
fn run_pre_skips_the_jump_label_site() {
    let (pre, _) = objects("jump-label");
    let file = object::File::parse(&*pre).expect("parse");
    let text = file
        .section_by_name(".text.fixture_fast")
        .expect("text section")
        .index();
    let table = file.section_by_name("__jump_table").expect("__jump_table");
    let site = table
        .relocations()
        .filter(|(off, _)| off % 16 == 0)
        .find_map(|(_, r)| match r.target() {
            object::RelocationTarget::Symbol(s) => {
                let sym = file.symbol_by_index(s).expect("symbol");
                (sym.section_index() == Some(text))
                    .then(|| (sym.address() as i64 + r.addend()) as u32)
            }
            _ => None,
        })
        .expect("a jump label in fixture_fast");
    let (_, report) = patch_for("jump-label", "vmlinux", &["fixture_fast"], &[]);
    let skip = &report.run_pre[0].skip;
    assert!(
        skip.iter().any(|&(s, l)| s <= site && site + 2 <= s + l),
        "site {site:#x} not in {skip:?}"
    );
}

// ---- symbols of other modules (issue 12: the coverage VM sample's wrong result) --------------

#[test]
fn another_modules_export_is_resolved_in_that_module() {
    // iwlmvm's mac80211.c calls cfg80211's export: the update said
    // `.klp.sym.iwlmvm.cfg80211_find_elem_match,0` and the kernel refused it when iwlmvm
    // was loaded ("symbol not found in symbol table"). It is cfg80211's symbol.
    let (obj, report) = patch("module-export-other", &["fixture_find"], &[]);
    let undefined = undefined(&obj);
    assert!(
        undefined.contains(".klp.sym.cfg80211.cfg80211_find_elem_match,0"),
        "{undefined:?}\n{report}"
    );
    assert!(
        !undefined
            .iter()
            .any(|n| n.contains(".klp.sym.fixture.cfg80211")),
        "{undefined:?}"
    );
    let ext = report
        .externals
        .iter()
        .find(|e| e.name == "cfg80211_find_elem_match")
        .expect("external reported");
    assert_eq!(ext.object, "cfg80211");
}

#[test]
fn new_reference_to_another_modules_export_is_refused() {
    // The running module did not depend on cfg80211: it may be loaded without it, and
    // livepatch resolves the reference when it loads.
    let report = refused("module-export-new-dependency", &["fixture_find"]);
    assert!(
        report
            .refusals
            .iter()
            .any(|r| r.reason.contains("exported by module cfg80211")),
        "{report}"
    );
}

#[test]
fn symbol_of_unknown_home_is_refused_not_guessed() {
    let report = refused("module-unknown-symbol", &["fixture_use"]);
    assert!(
        report
            .refusals
            .iter()
            .any(|r| r.reason.contains("fixture_elsewhere") && r.reason.contains("unknown")),
        "{report}"
    );
    // Defined by another object of the same update: the module step links it.
    let (pre, post) = objects("module-unknown-symbol");
    let mut with_update = cx("fixture");
    with_update
        .update_globals
        .insert("fixture_elsewhere".into());
    let Ok(Outcome::Patch { object, .. }) = diff::diff(&pre, &post, &with_update) else {
        panic!("expected a patch when the update defines the symbol")
    };
    assert!(undefined(&object).contains(".klp.sym.fixture.fixture_elsewhere,0"));
}
