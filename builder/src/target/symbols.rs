//! The target's symbol tables: System.map / kallsyms and Module.symvers.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One line of a System.map or `/proc/kallsyms` copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSymbol {
    pub addr: u64,
    /// nm-style type letter: `t`/`T` text, `d`/`D` data, ...; lowercase is local.
    pub kind: char,
    pub name: String,
    /// `None` for vmlinux, the module name for `[module]` lines.
    pub module: Option<String>,
}

impl MapSymbol {
    pub fn is_text(&self) -> bool {
        matches!(self.kind, 't' | 'T' | 'w' | 'W')
    }
}

/// The target's symbol table in file order (the order livepatch's sympos counts in).
#[derive(Debug, Default)]
pub struct SystemMap {
    pub symbols: Vec<MapSymbol>,
    by_name: HashMap<String, Vec<usize>>,
}

impl SystemMap {
    pub fn load(path: &Path) -> Result<SystemMap> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        SystemMap::parse(&text, path)
    }

    /// Parse "addr type name [module]" lines; a `/boot/System.map` placeholder
    /// (Debian ships one) has no symbol lines and is refused.
    pub fn parse(text: &str, path: &Path) -> Result<SystemMap> {
        let mut map = SystemMap::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: &str| Error::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                reason: reason.to_string(),
            };
            let mut fields = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected \"address type name [module]\""));
            };
            let addr = u64::from_str_radix(addr, 16).map_err(|_| bad("address is not hex"))?;
            let mut kinds = kind.chars();
            let (Some(kind), None) = (kinds.next(), kinds.next()) else {
                return Err(bad("symbol type is not one letter"));
            };
            let module = fields
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            map.by_name
                .entry(name.to_string())
                .or_default()
                .push(map.symbols.len());
            map.symbols.push(MapSymbol {
                addr,
                kind,
                name: name.to_string(),
                module,
            });
        }
        if map.symbols.is_empty() {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line: 1,
                reason: "no symbols (a placeholder System.map? copy /proc/kallsyms of the target as root)"
                    .into(),
            });
        }
        if map.symbols.iter().all(|s| s.addr == 0) {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line: 1,
                reason: "every address is zero (kallsyms read without root?)".into(),
            });
        }
        Ok(map)
    }

    /// Symbols named `name` in `object` ("vmlinux" or a module), in table order.
    pub fn lookup<'a>(
        &'a self,
        object: &'a str,
        name: &str,
    ) -> impl Iterator<Item = &'a MapSymbol> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.symbols[i])
            .filter(move |s| in_object(s, object))
    }

    /// Whether the table has symbols of `object` (a kallsyms copy lists the
    /// modules loaded when it was taken; a System.map none).
    pub fn covers(&self, object: &str) -> bool {
        object == "vmlinux" || self.symbols.iter().any(|s| in_object(s, object))
    }

    /// Address of a vmlinux symbol that must be unique (`_text`).
    pub fn unique_vmlinux(&self, name: &str) -> Option<u64> {
        let mut it = self.lookup("vmlinux", name);
        match (it.next(), it.next()) {
            (Some(s), None) => Some(s.addr),
            _ => None,
        }
    }

    /// Work out sympos for local names of one object that appear more than
    /// once in the target: the candidate lying among the object's uniquely
    /// named symbols wins (the linker keeps an object's symbols together).
    /// Names that cannot be told apart this way are left out; the offline
    /// run-pre check decides them for changed functions.
    pub fn sympos_by_neighbours(&self, object: &str, defined: &[String]) -> HashMap<String, u32> {
        let mut anchors: Vec<u64> = Vec::new();
        let mut duplicated = Vec::new();
        for name in defined {
            let found: Vec<&MapSymbol> = self.lookup(object, name).collect();
            match found.len() {
                0 => {}
                1 => anchors.push(found[0].addr),
                _ => duplicated.push((name, found)),
            }
        }
        let mut out = HashMap::new();
        if anchors.is_empty() {
            return out;
        }
        anchors.sort_unstable();
        // Cluster around the median anchor so one far-away unique name (an
        // object's data in another section) cannot stretch the window.
        let median = anchors[anchors.len() / 2];
        for (name, found) in duplicated {
            let best = found
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.addr.abs_diff(median))
                .map(|(i, _)| i);
            let distances: Vec<u64> = found.iter().map(|s| s.addr.abs_diff(median)).collect();
            if let Some(i) = best {
                let unique_best = distances.iter().filter(|&&d| d == distances[i]).count() == 1;
                if unique_best {
                    out.insert(name.clone(), i as u32 + 1);
                }
            }
        }
        out
    }
}

fn in_object(s: &MapSymbol, object: &str) -> bool {
    match &s.module {
        None => object == "vmlinux",
        Some(m) => m == object,
    }
}

/// One module's symbols as livepatch counts them: a `.klp.sym.<module>.<name>,<pos>`
/// lookup walks the module's kallsyms table in `.ko` symbol table order
/// (kernel/module/kallsyms.c). While the module loads (a patch applied to a
/// module that comes later) that table is every defined symbol; once its init
/// is done it keeps only the "core" ones: named, in an allocated section
/// (or the per-cpu one) that is not `.init*` (`is_core_symbol`, with
/// CONFIG_KALLSYMS_ALL as Debian builds).
///
/// A System.map covers vmlinux only; a `/proc/kallsyms` copy covers the
/// modules loaded when it was taken. This table is read from the target's
/// own `.ko` (the image package ships it), so module-local names that occur
/// more than once get their positions without the module being loaded.
#[derive(Debug, Default)]
pub struct ModuleTable {
    /// Defined, named symbols in table order, and whether each is core.
    symbols: Vec<(String, bool)>,
    by_name: HashMap<String, Vec<usize>>,
}

impl ModuleTable {
    /// Read `path` (an uncompressed `.ko`), which must be built for `release`
    /// (its `.modinfo` vermagic).
    pub fn load(path: &Path, release: &str) -> Result<ModuleTable> {
        let data = std::fs::read(path).map_err(Error::io(path))?;
        ModuleTable::parse(&data, path, release)
    }

    pub fn parse(data: &[u8], path: &Path, release: &str) -> Result<ModuleTable> {
        use object::{Object, ObjectSection, ObjectSymbol, SectionFlags, SymbolSection};
        let bad = |reason: String| Error::BadImage {
            path: path.to_path_buf(),
            reason,
        };
        let file = object::File::parse(data).map_err(|e| bad(format!("not an ELF module: {e}")))?;
        let modinfo = file
            .section_by_name(".modinfo")
            .and_then(|s| s.data().ok())
            .ok_or_else(|| bad("no .modinfo section".into()))?;
        let vermagic = modinfo
            .split(|&b| b == 0)
            .find_map(|f| f.strip_prefix(b"vermagic="))
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| bad("no vermagic in .modinfo".into()))?;
        let built_for = vermagic.split(' ').next().unwrap_or_default();
        if built_for != release {
            return Err(bad(format!(
                "built for release {built_for:?}, the target is {release:?}"
            )));
        }
        let mut table = ModuleTable::default();
        for sym in file.symbols() {
            let core = match sym.section() {
                SymbolSection::Undefined => continue,
                SymbolSection::Section(i) => file.section_by_index(i).is_ok_and(|sec| {
                    let name = sec.name().unwrap_or_default();
                    let alloc = matches!(sec.flags(), SectionFlags::Elf { sh_flags }
                        if sh_flags & u64::from(object::elf::SHF_ALLOC) != 0);
                    (alloc || name == ".data..percpu") && !name.starts_with(".init")
                }),
                // Absolute and other special indexes are never core.
                _ => false,
            };
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() {
                continue;
            }
            table
                .by_name
                .entry(name.to_string())
                .or_default()
                .push(table.symbols.len());
            table.symbols.push((name.to_string(), core));
        }
        Ok(table)
    }

    /// How many symbols named `name` a lookup with sympos 0 meets, in the
    /// larger of the two tables (more than one: livepatch refuses it).
    pub fn count(&self, name: &str) -> usize {
        self.by_name.get(name).map_or(0, Vec::len)
    }

    /// Positions of the names of one object that occur more than once in the
    /// module. `locals`: the local symbols its pre build defines, in its
    /// symbol table's order. `ld -r` copies each input object's local
    /// symbols into the module in that order, together, dropping some but
    /// adding none: the object's copy of a name `d` places after one of its
    /// uniquely named locals lies at most `d` places after that one's, and
    /// likewise before the next. A name is left out (and a reference to it
    /// refused) unless exactly one copy fits, and it has the same position in
    /// both tables.
    pub fn sympos_by_order(&self, locals: &[String]) -> HashMap<String, u32> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for n in locals {
            *seen.entry(n.as_str()).or_default() += 1;
        }
        // The module index of each local that is unique in both.
        let anchor: Vec<Option<usize>> = locals
            .iter()
            .map(|n| match self.by_name.get(n).map(Vec::as_slice) {
                Some([i]) if seen[n.as_str()] == 1 => Some(*i),
                _ => None,
            })
            .collect();
        let mut out = HashMap::new();
        for (p, name) in locals.iter().enumerate() {
            let Some(copies) = self.by_name.get(name).filter(|v| v.len() > 1) else {
                continue;
            };
            if seen[name.as_str()] > 1 {
                continue;
            }
            let before = (0..p).rev().find_map(|q| anchor[q].map(|i| (p - q, i)));
            let after = (p + 1..locals.len()).find_map(|q| anchor[q].map(|i| (q - p, i)));
            if before.is_none() && after.is_none() {
                continue;
            }
            let fits = |i: usize| {
                before.is_none_or(|(d, a)| i > a && i - a <= d)
                    && after.is_none_or(|(d, b)| i < b && b - i <= d)
            };
            let inside: Vec<usize> = (0..copies.len()).filter(|&k| fits(copies[k])).collect();
            let [k] = inside[..] else { continue };
            if !self.symbols[copies[k]].1 {
                continue;
            }
            let core_rank = copies[..=k].iter().filter(|&&i| self.symbols[i].1).count();
            if core_rank == k + 1 {
                out.insert(name.clone(), k as u32 + 1);
            }
        }
        out
    }
}

/// The `.ko` files under a target's `lib/modules/<release>`, by module name
/// (`snd-hda-intel.ko` is module `snd_hda_intel`). A name found twice (an
/// `updates/` override) is left out: which one runs is depmod's choice.
pub fn module_files(dir: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut found: HashMap<String, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(Error::io(&d))? {
            let entry = entry.map_err(Error::io(&d))?;
            let kind = entry.file_type().map_err(Error::io(entry.path()))?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let Some(stem) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                else {
                    continue;
                };
                found.entry(stem.replace('-', "_")).or_default().push(path);
            }
        }
    }
    Ok(found
        .into_iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(k, mut v)| (k, v.remove(0)))
        .collect())
}

/// Exported symbols of the target from Module.symvers ("crc name module export ns").
#[derive(Debug, Default)]
pub struct Symvers {
    /// name → (crc, module path: `vmlinux` or e.g. `fs/xfs/xfs`)
    pub symbols: HashMap<String, (u32, String)>,
}

impl Symvers {
    pub fn load(path: &Path) -> Result<Symvers> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let mut out = Symvers::default();
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 3 {
                return Err(Error::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: "expected \"crc<TAB>symbol<TAB>module<TAB>export\"".into(),
                });
            }
            let crc = u32::from_str_radix(f[0].trim_start_matches("0x"), 16).map_err(|_| {
                Error::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: "crc is not hex".into(),
                }
            })?;
            out.symbols
                .insert(f[1].to_string(), (crc, f[2].to_string()));
        }
        Ok(out)
    }

    /// Symbols exported by vmlinux itself (what the differ may reference by name).
    pub fn vmlinux_exports(&self) -> HashSet<String> {
        self.symbols
            .iter()
            .filter(|(_, (_, m))| m == "vmlinux")
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Symvers {
    /// Symbols exported by modules: name -> the kernel's name of the module
    /// (what `.klp.sym.<module>` must say).
    pub fn module_exports(&self) -> HashMap<String, String> {
        self.symbols
            .iter()
            .filter(|(_, (_, m))| m != "vmlinux")
            .map(|(n, (_, m))| (n.clone(), crate::diff::module_name(m)))
            .collect()
    }
}

/// `#SYMVER name 0xcrc` lines kbuild (6.1) appends to an object's `.cmd`
/// file: the versions of the symbols the object exports.
pub fn cmd_symvers(cmd_text: &str) -> HashMap<String, u32> {
    cmd_text
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("#SYMVER ")?.split_whitespace();
            let name = f.next()?;
            let crc = u32::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            Some((name.to_string(), crc))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100000 t show_val
ffffffff81100100 t cmdline_proc_show
ffffffff81100200 t proc_open
ffffffff81200000 t show_val
ffffffff81200100 t other_fn
ffffffffc0000000 t show_val\t[xfs]
";

    fn map() -> SystemMap {
        SystemMap::parse(MAP, Path::new("map")).expect("test map parses")
    }

    #[test]
    fn lookup_separates_vmlinux_from_modules() {
        let m = map();
        assert_eq!(m.lookup("vmlinux", "show_val").count(), 2);
        assert_eq!(m.lookup("xfs", "show_val").count(), 1);
        assert_eq!(m.unique_vmlinux("_text"), Some(0xffffffff81000000));
        assert_eq!(m.unique_vmlinux("show_val"), None);
    }

    #[test]
    fn neighbours_pick_the_duplicate_inside_the_object() {
        let m = map();
        let defined = ["show_val", "cmdline_proc_show", "proc_open"].map(String::from);
        let pos = m.sympos_by_neighbours("vmlinux", &defined);
        assert_eq!(pos, HashMap::from([("show_val".to_string(), 1)]));
        let defined = ["show_val", "other_fn"].map(String::from);
        let pos = m.sympos_by_neighbours("vmlinux", &defined);
        assert_eq!(pos, HashMap::from([("show_val".to_string(), 2)]));
    }

    /// A module: `.modinfo` with `vermagic`, then each `(name, section)` as a
    /// local symbol in that order (sections `.text`, `.data`, `.init.text`).
    fn module(vermagic: &str, symbols: &[(&str, &str)]) -> Vec<u8> {
        use object::write;
        let mut o = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let info = o.add_section(
            Vec::new(),
            b".modinfo".to_vec(),
            object::SectionKind::ReadOnlyData,
        );
        o.append_section_data(
            info,
            format!("license=GPL\0vermagic={vermagic}\0").as_bytes(),
            1,
        );
        let mut sections = HashMap::new();
        for (name, kind) in [
            (".text", object::SectionKind::Text),
            (".data", object::SectionKind::Data),
            (".init.text", object::SectionKind::Text),
        ] {
            let id = o.add_section(Vec::new(), name.as_bytes().to_vec(), kind);
            o.append_section_data(id, &[0; 4096], 16);
            sections.insert(name, id);
        }
        for (i, (name, section)) in symbols.iter().enumerate() {
            o.add_symbol(write::Symbol {
                name: name.as_bytes().to_vec(),
                value: i as u64 * 8,
                size: 8,
                kind: object::SymbolKind::Data,
                scope: object::SymbolScope::Compilation,
                weak: false,
                section: write::SymbolSection::Section(sections[section]),
                flags: object::SymbolFlags::None,
            });
        }
        o.write().expect("write module")
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_module_local_duplicate_is_placed_by_its_objects_neighbours() {
        // Issue 12: smu7_hwmgr.c's update referred to `_rs.17`, which amdgpu
        // has 10 of, as `,0`: the kernel refused it ("unresolvable ambiguity").
        // Objects a, b, c linked in that order; `.LC0` labels count as places.
        let ko = module(
            "6.1.0-test SMP mod_unload",
            &[
                ("a_fn", ".text"),
                ("_rs.1", ".data"),
                ("a_tail", ".text"),
                ("b_fn", ".text"),
                (".LC0", ".text"),
                ("_rs.1", ".data"),
                ("__func__.2", ".data"),
                ("c_fn", ".text"),
                ("_rs.1", ".data"),
                ("__func__.2", ".data"),
            ],
        );
        let t = ModuleTable::parse(&ko, Path::new("m.ko"), "6.1.0-test").expect("parses");
        assert_eq!(t.count("_rs.1"), 3);
        assert_eq!(t.count("b_fn"), 1);
        assert_eq!(t.count("absent"), 0);
        // b's pre object: a unique name before, none after.
        let pos = t.sympos_by_order(&names(&["b.c", "b_fn", ".LC0", "_rs.1", "__func__.2"]));
        assert_eq!(pos.get("_rs.1"), Some(&2));
        assert_eq!(pos.get("__func__.2"), Some(&1));
        // a's: between two unique names.
        let pos = t.sympos_by_order(&names(&["a_fn", "_rs.1", "a_tail"]));
        assert_eq!(pos, HashMap::from([("_rs.1".to_string(), 1)]));
        // c's: the last in the module.
        let pos = t.sympos_by_order(&names(&["c_fn", "_rs.1", "__func__.2"]));
        assert_eq!(pos.get("_rs.1"), Some(&3));
        assert_eq!(pos.get("__func__.2"), Some(&2));
        // Nothing unique to stand on: left out, never guessed.
        let pos = t.sympos_by_order(&names(&["_rs.1", "__func__.2"]));
        assert!(pos.is_empty(), "{pos:?}");
        // A window that holds two copies decides nothing.
        let pos = t.sympos_by_order(&names(&["a_tail", "p", "q", "r", "s", "t", "_rs.1"]));
        assert!(pos.is_empty(), "{pos:?}");
    }

    #[test]
    fn a_copy_in_init_code_that_shifts_the_position_leaves_it_undecided() {
        // While the module loads, `.init*` symbols are in its table; after its
        // init they are not. A copy there before ours makes the two differ.
        let ko = module(
            "6.1.0-test SMP",
            &[
                ("setup", ".init.text"),
                ("_rs.1", ".init.text"),
                ("b_fn", ".text"),
                ("_rs.1", ".data"),
                ("c_fn", ".text"),
                ("__func__.3", ".data"),
                ("__func__.3", ".init.text"),
            ],
        );
        let t = ModuleTable::parse(&ko, Path::new("m.ko"), "6.1.0-test").expect("parses");
        let pos = t.sympos_by_order(&names(&["b_fn", "_rs.1"]));
        assert!(pos.is_empty(), "{pos:?}");
        // An init copy after ours changes nothing.
        let pos = t.sympos_by_order(&names(&["c_fn", "__func__.3"]));
        assert_eq!(pos, HashMap::from([("__func__.3".to_string(), 1)]));
        // Our own copy in init code is never core: left out.
        let pos = t.sympos_by_order(&names(&["setup", "_rs.1"]));
        assert!(pos.is_empty(), "{pos:?}");
    }

    #[test]
    fn a_module_of_another_release_or_no_module_is_refused() {
        let ko = module("6.1.0-other SMP", &[("f", ".text")]);
        let e = ModuleTable::parse(&ko, Path::new("m.ko"), "6.1.0-test").expect_err("refused");
        assert!(
            e.to_string().contains("built for release \"6.1.0-other\""),
            "{e}"
        );
        let e =
            ModuleTable::parse(b"not elf", Path::new("m.ko"), "6.1.0-test").expect_err("refused");
        assert!(e.to_string().starts_with("m.ko: not an ELF module"), "{e}");
    }

    #[test]
    fn module_files_are_found_by_module_name_and_a_doubled_name_is_left_out() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        for f in [
            "kernel/sound/snd-hda-intel.ko",
            "kernel/fs/xfs/xfs.ko",
            "kernel/net/dup.ko",
            "updates/dup.ko",
            "kernel/fs/xfs/notes.txt",
        ] {
            std::fs::create_dir_all(dir.join(f).parent().expect("parent")).expect("mkdir");
            std::fs::write(dir.join(f), "x").expect("write");
        }
        let found = module_files(dir).expect("walk");
        let mut keys: Vec<&str> = found.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["snd_hda_intel", "xfs"]);
        assert_eq!(found["xfs"], dir.join("kernel/fs/xfs/xfs.ko"));
    }

    #[test]
    fn placeholder_and_unprivileged_maps_are_refused() {
        let e = SystemMap::parse("", Path::new("m")).expect_err("must be refused");
        assert!(matches!(e, Error::Parse { line: 1, .. }), "{e}");
        let e = SystemMap::parse("0000000000000000 T _text\n", Path::new("m"))
            .expect_err("must be refused");
        assert!(e.to_string().contains("without root"), "{e}");
        let e = SystemMap::parse("zz T x\n", Path::new("m")).expect_err("must be refused");
        assert!(e.to_string().contains("not hex"), "{e}");
    }

    #[test]
    fn symver_lines_of_a_cmd_file() {
        let cmd = "cmd_x := gcc\n#SYMVER get_device 0x1a2b3c4d\n#SYMVER put_device 0x00000010\n";
        let v = cmd_symvers(cmd);
        assert_eq!(
            v,
            HashMap::from([
                ("get_device".to_string(), 0x1a2b3c4d),
                ("put_device".to_string(), 0x10)
            ])
        );
    }
}
