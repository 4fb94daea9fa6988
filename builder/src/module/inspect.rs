//! Reads back what matters in a built update module, and checks it: the
//! builder's last step, and what tests assert on.

use std::collections::HashSet;
use std::path::Path;

use object::elf;
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::LittleEndian;

use super::klp::{KLP_RELA_PREFIX, KLP_SYM_PREFIX, SHF_RELA_LIVEPATCH, SHN_LIVEPATCH};
use super::{Error, ModuleName, Result};

/// A `.klp.rela.*` section of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KlpRelaSection {
    pub name: String,
    pub flags: u64,
    /// Name of the section the relocations apply to.
    pub target: String,
    /// Names of the symbols the relocations refer to.
    pub symbols: Vec<String>,
}

/// The livepatch-relevant contents of a `.ko`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleReport {
    /// `.modinfo` entries, in file order.
    pub modinfo: Vec<(String, String)>,
    pub klp_rela_sections: Vec<KlpRelaSection>,
    /// Symbols named `.klp.sym.*`, with their `st_shndx`.
    pub klp_symbols: Vec<(String, u16)>,
    /// Undefined symbols (`SHN_UNDEF`, named), sorted.
    pub undefined: Vec<String>,
    /// Symbols relocations outside `.klp.rela.*` sections of allocated
    /// sections refer to, sorted: such references are resolved by the module
    /// loader, not livepatch.
    pub loader_relocated: Vec<String>,
}

impl ModuleReport {
    /// The value of a `.modinfo` key, if present once or more (first wins).
    pub fn modinfo(&self, key: &str) -> Option<&str> {
        self.modinfo
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Read the report of the module at `path`.
///
/// This uses the plain ELF reader rather than `object::build`, which takes
/// allocated relocation sections such as `.klp.rela.*` for dynamic ones.
pub fn read(path: &Path) -> Result<ModuleReport> {
    let data = std::fs::read(path).map_err(Error::io(path))?;
    parse(&data).map_err(|source| Error::ElfRead {
        path: path.to_owned(),
        source,
    })
}

fn parse(data: &[u8]) -> std::result::Result<ModuleReport, object::read::Error> {
    let header = elf::FileHeader64::<LittleEndian>::parse(data)?;
    let endian = LittleEndian;
    let sections = header.sections(endian, data)?;
    let symbols = sections.symbols(endian, data, elf::SHT_SYMTAB)?;
    let name_of = |s: &[u8]| String::from_utf8_lossy(s).into_owned();
    let sym_name = |i: usize| -> String {
        symbols
            .symbol(object::SymbolIndex(i))
            .and_then(|s| s.name(endian, symbols.strings()))
            .map(name_of)
            .unwrap_or_default()
    };
    let mut report = ModuleReport::default();

    for sec in sections.iter() {
        let name = name_of(sections.section_name(endian, sec)?);
        if name == ".modinfo" {
            report.modinfo = sec
                .data(endian, data)?
                .split(|&b| b == 0)
                .filter(|e| !e.is_empty())
                .filter_map(|e| {
                    let e = name_of(e);
                    e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect();
        }
        let Some((relocs, _)) = sec.rela(endian, data)? else {
            continue;
        };
        let target = sections.section(object::SectionIndex(sec.sh_info(endian) as usize))?;
        let names = relocs
            .iter()
            .map(|r| sym_name(r.r_sym(endian, false) as usize));
        if name.starts_with(KLP_RELA_PREFIX) {
            report.klp_rela_sections.push(KlpRelaSection {
                name,
                flags: sec.sh_flags(endian),
                target: name_of(sections.section_name(endian, target)?),
                symbols: names.collect(),
            });
        } else if target.sh_flags(endian) & u64::from(elf::SHF_ALLOC) != 0 {
            report.loader_relocated.extend(names);
        }
    }
    for sym in symbols.iter() {
        let name = name_of(sym.name(endian, symbols.strings())?);
        let shndx = sym.st_shndx(endian);
        if name.starts_with(KLP_SYM_PREFIX) {
            report.klp_symbols.push((name.clone(), shndx));
        }
        if shndx == elf::SHN_UNDEF && !name.is_empty() {
            report.undefined.push(name);
        }
    }
    report.undefined.sort();
    report.loader_relocated.sort();
    report.loader_relocated.dedup();
    Ok(report)
}

/// Names exported by the kernel tree's `Module.symvers`
/// (`crc<TAB>name<TAB>module<TAB>export type[<TAB>namespace]`).
pub fn exported_symbols(tree: &Path) -> Result<HashSet<String>> {
    let path = tree.join("Module.symvers");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::SymversMissing { path })
        }
        Err(e) => return Err(Error::io(&path)(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split('\t').nth(1))
        .map(str::to_owned)
        .collect())
}

/// The builder's final check of the module at `ko`.
pub(crate) fn check(ko: &Path, name: &ModuleName, release: &str, tree: &Path) -> Result<()> {
    let report = read(ko)?;
    let expect = |field: &'static str, expected: String, found: Option<&str>| {
        let found = found.unwrap_or_default();
        let ok = match field {
            "vermagic" => found.split(' ').next() == Some(expected.as_str()),
            _ => found == expected,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Modinfo {
                path: ko.to_owned(),
                field,
                expected,
                found: found.to_owned(),
            })
        }
    };
    // 1. The kernel makes it a livepatch only with this flag (check_modinfo_livepatch()).
    expect("livepatch", "Y".into(), report.modinfo("livepatch"))?;
    // 2. Its name is the livepatch name the client looks for in sysfs.
    expect("name", name.to_string(), report.modinfo("name"))?;
    // 3. The kernel refuses a different release in vermagic.
    expect("vermagic", release.to_owned(), report.modinfo("vermagic"))?;
    // 4. Every other reference must resolve against the target's exports,
    //    or the load fails (kbuild only warned, KBUILD_MODPOST_WARN=1).
    let exports = exported_symbols(tree)?;
    let livepatch: HashSet<&str> = report
        .klp_symbols
        .iter()
        .filter(|(_, shndx)| *shndx == SHN_LIVEPATCH)
        .map(|(n, _)| n.as_str())
        .collect();
    let unresolved: Vec<String> = report
        .undefined
        .iter()
        .filter(|s| !exports.contains(*s) && !livepatch.contains(s.as_str()))
        .cloned()
        .collect();
    if !unresolved.is_empty() {
        return Err(Error::Unresolved {
            path: ko.to_owned(),
            symbols: unresolved,
        });
    }
    // 5. Livepatch relocations are where livepatch will find them.
    for sec in &report.klp_rela_sections {
        if sec.flags & SHF_RELA_LIVEPATCH == 0 || sec.flags & u64::from(elf::SHF_ALLOC) == 0 {
            return Err(Error::Modinfo {
                path: ko.to_owned(),
                field: "section flags",
                expected: "SHF_ALLOC | SHF_RELA_LIVEPATCH".into(),
                found: format!("{} has {:#x}", sec.name, sec.flags),
            });
        }
    }
    Ok(())
}
