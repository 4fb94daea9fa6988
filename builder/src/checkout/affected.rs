//! Which objects a change reaches, and which changes cannot become a live update at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use rayon::prelude::*;

use crate::checkout::Change;
use crate::error::{Error, Refusal, Result};

/// Beyond this many objects a header change is refused: rebuilding and
/// diffing that much is no longer a targeted live update.
pub const MAX_OBJECTS: usize = 400;

/// What must be compiled for the change, and what was refused outright.
#[derive(Debug, Default)]
pub struct Plan {
    /// Objects (relative `.o` paths) whose pre and post builds are compared,
    /// with the changed files that reach each.
    pub objects: BTreeMap<String, BTreeSet<String>>,
    /// Changed files that need no object rebuilt (documentation and the like).
    pub ignored: Vec<String>,
    pub refusals: Vec<Refusal>,
}

/// What kind of source a changed path is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    C,
    Header,
    Ignored,
    Refused(&'static str),
}

/// Why code of the decompressor or the EFI stub is refused.
pub const BOOT_CODE: &str =
    "boot code (decompressor, EFI stub) runs before the kernel; not live patchable";

/// A file of the decompressor (`arch/*/boot/`) or of the EFI stub: compiled into
/// the boot image, never the running kernel's code, even where it `#include`s a
/// kernel .c file (`arch/x86/boot/compressed/ident_map_64.c` includes
/// `arch/x86/mm/ident_map.c`).
pub fn is_boot_code(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    (parts.len() > 3 && parts[0] == "arch" && parts[2] == "boot")
        || path.starts_with("drivers/firmware/efi/libstub/")
}

fn classify(path: &str, exists_in_pre: bool, deleted: bool) -> Kind {
    let p = Path::new(path);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parts: Vec<&str> = path.split('/').collect();
    // Order matters: the most specific reason first.
    if name.starts_with("Kconfig") {
        return Kind::Refused("Kconfig changes alter the configuration; rebuild the kernel");
    }
    if name == "Makefile" || name == "Kbuild" || ext == "mk" {
        return Kind::Refused("build rule changes cannot be applied to a running kernel");
    }
    if matches!(ext.as_str(), "S" | "s") {
        return Kind::Refused("assembly cannot be live patched (only C functions can be replaced)");
    }
    if parts.first() == Some(&"lib") {
        return Kind::Refused(
            "lib/ code is linked into the decompressor and boot stubs as well; not live patchable",
        );
    }
    if is_boot_code(path) {
        return Kind::Refused(BOOT_CODE);
    }
    if parts.iter().any(|c| c.contains("vdso")) {
        return Kind::Refused("vDSO code runs in user space mappings; not live patchable");
    }
    if matches!(parts.first(), Some(&("Documentation" | "LICENSES")))
        || matches!(ext.as_str(), "rst" | "txt" | "md")
    {
        return Kind::Ignored;
    }
    if matches!(parts.first(), Some(&("scripts" | "tools" | "usr"))) {
        return Kind::Refused("build tools changed; not part of the running kernel");
    }
    if deleted {
        return Kind::Refused("deleting a source file cannot be live patched");
    }
    match ext.as_str() {
        "c" if !exists_in_pre => {
            Kind::Refused("a new .c file is not built by the unchanged Makefiles")
        }
        "c" => Kind::C,
        "h" => Kind::Header,
        _ => Kind::Refused("unsupported file type for a live update"),
    }
}

/// Includes of one source file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Include {
    quoted: bool,
    name: String,
}

/// The include graph of a prepared tree (built once, cached in the tree).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct IncludeIndex {
    files: BTreeMap<String, Vec<Include>>,
}

/// Include directories of an x86 kbuild compile, in search order.
const GLOBAL_DIRS: &[&str] = &[
    "arch/x86/include",
    "arch/x86/include/generated",
    "include",
    "arch/x86/include/uapi",
    "arch/x86/include/generated/uapi",
    "include/uapi",
    "include/generated/uapi",
];

/// Who includes what, reversed: see [`IncludeIndex::reverse`].
pub struct Dependents<'a> {
    reverse: HashMap<&'a str, Vec<&'a str>>,
}

impl Dependents<'_> {
    /// Every file that includes `header`, directly or through other headers.
    /// An include that resolves nowhere in the tree (a Makefile `-I` path)
    /// counts when its last components match: over-approximate, never miss.
    pub fn of(&self, header: &str) -> BTreeSet<String> {
        let reverse = &self.reverse;
        let mut seen = BTreeSet::new();
        let mut todo = vec![header.to_string()];
        while let Some(h) = todo.pop() {
            for &f in reverse.get(h.as_str()).into_iter().flatten() {
                if seen.insert(f.to_string()) {
                    todo.push(f.to_string());
                }
            }
        }
        seen
    }
}

impl IncludeIndex {
    /// Load the cached index of `tree`, or scan the tree's .c and .h files.
    pub fn load_or_build(tree: &Path) -> Result<IncludeIndex> {
        let cache = tree.join(".ksplice-includes.json");
        if let Ok(bytes) = std::fs::read(&cache) {
            if let Ok(index) = serde_json::from_slice(&bytes) {
                return Ok(index);
            }
        }
        let mut paths = Vec::new();
        collect_sources(tree, tree, &mut paths)?;
        let files: BTreeMap<String, Vec<Include>> = paths
            .par_iter()
            .map(|rel| {
                let path = tree.join(rel);
                let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
                Ok((rel.clone(), scan_includes(&bytes)))
            })
            .collect::<Result<_>>()?;
        let index = IncludeIndex { files };
        let tmp = tree.join(".ksplice-includes.json.tmp");
        let json = serde_json::to_vec(&index).expect("invariant: the index serializes");
        std::fs::write(&tmp, json).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &cache).map_err(Error::io(&cache))?;
        Ok(index)
    }

    /// The reverse include graph, built once for many [`Dependents::of`] questions.
    pub fn reverse(&self) -> Dependents<'_> {
        let mut by_base: HashMap<&str, Vec<&str>> = HashMap::new();
        for k in self.files.keys() {
            by_base.entry(base(k)).or_default().push(k);
        }
        let mut reverse: HashMap<&str, Vec<&str>> = HashMap::new();
        for (file, incs) in &self.files {
            for inc in incs {
                for target in self.resolve(file, inc, &by_base) {
                    reverse.entry(target).or_default().push(file);
                }
            }
        }
        Dependents { reverse }
    }

    fn resolve<'a>(
        &'a self,
        file: &str,
        inc: &Include,
        by_base: &HashMap<&str, Vec<&'a str>>,
    ) -> Vec<&'a str> {
        let dir = Path::new(file).parent().unwrap_or(Path::new(""));
        let mut cands = Vec::new();
        if inc.quoted {
            cands.push(normalize(&dir.join(&inc.name).to_string_lossy()));
        }
        for g in GLOBAL_DIRS {
            cands.push(normalize(&format!("{g}/{}", inc.name)));
        }
        for c in &cands {
            if let Some((k, _)) = self.files.get_key_value(c.as_str()) {
                return vec![k.as_str()];
            }
        }
        // Unresolved: any file whose path ends with the include name.
        let suffix = format!("/{}", normalize(&inc.name));
        by_base
            .get(base(&inc.name))
            .into_iter()
            .flatten()
            .filter(|k| k.ends_with(&suffix))
            .copied()
            .collect()
    }
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// `a/b/../c` → `a/c` (paths inside the tree only).
pub fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

fn collect_sources(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let e = e.map_err(Error::io(dir))?;
        let ft = e.file_type().map_err(Error::io(e.path()))?;
        let path = e.path();
        let name = e.file_name();
        if ft.is_dir() {
            // User-space code never reaches a kernel object.
            let skip = [
                ".git",
                "Documentation",
                "tools",
                "scripts",
                "samples",
                "usr",
            ];
            if dir != root || !skip.iter().any(|s| name == *s) {
                collect_sources(root, &path, out)?;
            }
        } else if ft.is_file() {
            let n = name.to_string_lossy();
            if n.ends_with(".c") || n.ends_with(".h") {
                let rel = path.strip_prefix(root).expect("invariant: under root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// `#include "x"` / `#include <x>` lines (with spaces after `#` allowed).
fn scan_includes(bytes: &[u8]) -> Vec<Include> {
    let mut out = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let t = trim_start(line);
        let Some(rest) = t.strip_prefix(b"#") else {
            continue;
        };
        let Some(rest) = trim_start(rest).strip_prefix(b"include") else {
            continue;
        };
        let rest = trim_start(rest);
        let (quoted, close) = match rest.first() {
            Some(b'"') => (true, b'"'),
            Some(b'<') => (false, b'>'),
            _ => continue, // computed include (macro): handled by its direct includers
        };
        if let Some(end) = rest[1..].iter().position(|&b| b == close) {
            out.push(Include {
                quoted,
                name: String::from_utf8_lossy(&rest[1..1 + end]).into_owned(),
            });
        }
    }
    out
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// Work out the objects the change reaches. `index` is only built when a
/// header (or an included .c file) changed.
pub fn plan(pre_tree: &Path, changes: &[Change]) -> Result<Plan> {
    plan_with(pre_tree, changes, None)
}

/// [`plan`] with the tree's reverse include graph already built (a caller asking
/// about many changes of one tree reads the index and builds the graph once).
pub fn plan_with(
    pre_tree: &Path,
    changes: &[Change],
    loaded: Option<&Dependents<'_>>,
) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut headers = Vec::new();
    for ch in changes {
        let exists = pre_tree.join(&ch.path).is_file();
        match classify(&ch.path, exists, ch.content.is_none()) {
            Kind::Refused(reason) => plan.refusals.push(Refusal {
                what: ch.path.clone(),
                reason: reason.to_string(),
            }),
            Kind::Ignored => plan.ignored.push(ch.path.clone()),
            Kind::C => {
                let obj = format!("{}.o", ch.path.trim_end_matches(".c"));
                plan.objects.entry(obj).or_default().insert(ch.path.clone());
                headers.push(ch.path.clone()); // a .c may be #included elsewhere
            }
            Kind::Header => headers.push(ch.path.clone()),
        }
    }
    let needs_index = headers.iter().any(|h| h.ends_with(".h"))
        || headers.iter().any(|c| is_included_c(pre_tree, c));
    if needs_index {
        let (index, owned);
        let graph = match loaded {
            Some(g) => g,
            None => {
                index = IncludeIndex::load_or_build(pre_tree)?;
                owned = index.reverse();
                &owned
            }
        };
        for h in &headers {
            for dep in graph.of(h) {
                if let Some(stem) = dep.strip_suffix(".c") {
                    plan.objects
                        .entry(format!("{stem}.o"))
                        .or_default()
                        .insert(h.clone());
                }
            }
        }
    }
    if plan.objects.len() > MAX_OBJECTS {
        plan.refusals.push(Refusal {
            what: headers.join(", "),
            reason: format!(
                "reaches {} objects (more than {MAX_OBJECTS}); too wide for a live update",
                plan.objects.len()
            ),
        });
    }
    Ok(plan)
}

/// Whether kbuild descends into `dir` under `config`: every parent Makefile
/// that names the child (`obj-$(CONFIG_X) += child/`) must enable it. A child
/// no parent line names is assumed reached (arch and top-level descents use
/// other variables); `Some(reason)` only when a parent names it and every
/// such line is switched off.
pub fn dir_disabled(tree: &Path, dir: &str, config: &str) -> Option<String> {
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for i in 1..parts.len() {
        let parent = parts[..i].join("/");
        let child = format!("{}/", parts[i]);
        let text = ["Makefile", "Kbuild"]
            .iter()
            .filter_map(|m| std::fs::read_to_string(tree.join(&parent).join(m)).ok())
            .collect::<Vec<_>>()
            .join("\n")
            .replace("\\\n", " ");
        let mut named = false;
        let mut enabled = false;
        let mut off = String::new();
        for line in text.lines() {
            let Some((lhs, rhs)) = line.split_once('=') else {
                continue;
            };
            if !rhs.split_whitespace().any(|w| w == child) {
                continue;
            }
            let lhs = lhs.trim_end_matches([':', '+', '?']).trim();
            let Some(sel) = lhs.strip_prefix("obj-") else {
                continue;
            };
            named = true;
            match sel {
                "y" | "m" => enabled = true,
                s => match s.strip_prefix("$(").and_then(|s| s.strip_suffix(')')) {
                    Some(var) if var.starts_with("CONFIG_") && !var.contains(['(', ' ', ',']) => {
                        match crate::target::profile::config_value(config, var).as_deref() {
                            Some("y" | "m") => enabled = true,
                            _ => {
                                off = format!(
                                    "{var} is not set ({parent}/ does not descend into {child})"
                                )
                            }
                        }
                    }
                    // An expression we do not evaluate: assume it may build.
                    _ => enabled = true,
                },
            }
        }
        if named && !enabled {
            return Some(off);
        }
    }
    None
}

/// Cheap pre-check: is a .c file's name mentioned in an include line of its
/// own directory? (Kernel .c files included elsewhere sit beside their includer.)
fn is_included_c(tree: &Path, c: &str) -> bool {
    if !c.ends_with(".c") {
        return false;
    }
    let p = Path::new(c);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return false;
    };
    let name = name.to_string_lossy();
    let Ok(rd) = std::fs::read_dir(tree.join(dir)) else {
        return false;
    };
    rd.flatten().any(|e| {
        std::fs::read(e.path())
            .map(|b| scan_includes(&b).iter().any(|i| i.name.ends_with(&*name)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_refuses_what_cannot_be_patched() {
        let r = |p: &str| classify(p, true, false);
        assert_eq!(r("fs/proc/cmdline.c"), Kind::C);
        assert_eq!(
            r("arch/x86/boot/compressed/ident_map_64.c"),
            Kind::Refused(BOOT_CODE)
        );
        assert_eq!(
            r("drivers/firmware/efi/libstub/x86-stub.c"),
            Kind::Refused(BOOT_CODE)
        );
        assert_eq!(r("arch/x86/mm/ident_map.c"), Kind::C);
        assert_eq!(r("arch/x86/kernel/boot.c"), Kind::C);
        assert_eq!(r("include/linux/seq_file.h"), Kind::Header);
        assert!(
            matches!(r("arch/x86/entry/entry_64.S"), Kind::Refused(s) if s.starts_with("assembly"))
        );
        assert!(matches!(r("lib/string.c"), Kind::Refused(s) if s.starts_with("lib/")));
        assert!(
            matches!(r("arch/x86/entry/vdso/vclock_gettime.c"), Kind::Refused(s) if s.starts_with("vDSO"))
        );
        assert!(matches!(r("fs/proc/Kconfig"), Kind::Refused(s) if s.starts_with("Kconfig")));
        assert!(matches!(r("fs/proc/Makefile"), Kind::Refused(s) if s.starts_with("build rule")));
        assert_eq!(r("Documentation/filesystems/proc.rst"), Kind::Ignored);
        assert!(matches!(
            classify("fs/proc/new.c", false, false),
            Kind::Refused(_)
        ));
        assert!(matches!(
            classify("fs/proc/cmdline.c", true, true),
            Kind::Refused(_)
        ));
    }

    #[test]
    fn includes_are_scanned_and_resolved_transitively() {
        assert_eq!(
            scan_includes(b"#include <linux/a.h>\n  #  include \"local.h\"\n#include MACRO(x)\n")
                .iter()
                .map(|i| (i.quoted, i.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(false, "linux/a.h"), (true, "local.h")]
        );
        let inc = |q: bool, n: &str| Include {
            quoted: q,
            name: n.into(),
        };
        let index = IncludeIndex {
            files: BTreeMap::from([
                ("include/linux/a.h".into(), vec![]),
                ("include/linux/b.h".into(), vec![inc(false, "linux/a.h")]),
                ("fs/proc/internal.h".into(), vec![inc(false, "linux/b.h")]),
                ("fs/proc/x.c".into(), vec![inc(true, "internal.h")]),
                ("fs/proc/y.c".into(), vec![inc(false, "linux/a.h")]),
                ("fs/other/z.c".into(), vec![inc(true, "../proc/internal.h")]),
                ("drivers/w.c".into(), vec![inc(false, "internal.h")]),
                ("fs/proc/unrelated.c".into(), vec![inc(false, "linux/c.h")]),
            ]),
        };
        let deps = index.reverse().of("include/linux/a.h");
        let want: BTreeSet<String> = [
            "include/linux/b.h",
            "fs/proc/internal.h",
            "fs/proc/x.c",
            "fs/proc/y.c",
            "fs/other/z.c",
            // <internal.h> resolves nowhere: counted by its name.
            "drivers/w.c",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(deps, want);
    }

    #[test]
    fn disabled_directories_are_found_through_parent_makefiles() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = d.path();
        std::fs::create_dir_all(t.join("drivers/xen/events")).expect("mkdir");
        std::fs::create_dir_all(t.join("drivers/base")).expect("mkdir");
        std::fs::write(
            t.join("drivers/Makefile"),
            "obj-y += base/\nobj-$(CONFIG_XEN) += xen/ \\\n\tother/\nobj-$(subst m,y,$(CONFIG_FOO)) += foo/\n",
        )
        .expect("write");
        std::fs::write(t.join("drivers/xen/Makefile"), "obj-y += events/\n").expect("write");
        let config = "CONFIG_FOO=m\n# CONFIG_XEN is not set\n";
        assert_eq!(dir_disabled(t, "drivers/base", config), None);
        let off = dir_disabled(t, "drivers/xen/events", config).expect("disabled");
        assert!(off.starts_with("CONFIG_XEN is not set"), "{off}");
        assert_eq!(
            dir_disabled(t, "drivers/xen/events", "CONFIG_XEN=y\n"),
            None
        );
        assert_eq!(dir_disabled(t, "drivers/foo", config), None);
        // Not named by its parent: assumed reached.
        assert_eq!(dir_disabled(t, "drivers/unnamed", config), None);
    }

    #[test]
    fn normalize_handles_dot_dot() {
        assert_eq!(
            normalize("fs/other/../proc/internal.h"),
            "fs/proc/internal.h"
        );
        assert_eq!(normalize("./a//b"), "a/b");
    }
}
