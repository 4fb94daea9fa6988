//! The target's symbol tables: System.map / kallsyms and Module.symvers.

use std::collections::{HashMap, HashSet};
use std::path::Path;

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
