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

/// The kernel tree's `Module.symvers`, which the update module is checked against.
fn read_symvers(tree: &Path) -> Result<String> {
    let path = tree.join("Module.symvers");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::SymversMissing { path }),
        Err(e) => Err(Error::io(&path)(e)),
    }
}

/// Names exported by the kernel tree's `Module.symvers`
/// (`crc<TAB>name<TAB>module<TAB>export type[<TAB>namespace]`).
pub fn exported_symbols(tree: &Path) -> Result<HashSet<String>> {
    Ok(read_symvers(tree)?
        .lines()
        .filter_map(|l| l.split('\t').nth(1))
        .map(str::to_owned)
        .collect())
}

/// The symbol namespaces (`EXPORT_SYMBOL_NS`) of the target's exports that the
/// objects at `objects` use, from the tree's `Module.symvers`: the update module
/// imports each (`MODULE_IMPORT_NS`), as the module its code comes from did, or
/// modpost and the kernel's loader refuse it. Sorted; only names that are C
/// identifiers (the macro stringifies its argument).
pub fn imported_namespaces(tree: &Path, objects: &[std::path::PathBuf]) -> Result<Vec<String>> {
    let text = read_symvers(tree)?;
    let namespace_of: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let ns = f.get(4).map(|n| n.trim()).filter(|n| !n.is_empty())?;
            Some((f[1], ns))
        })
        .collect();
    let mut out = std::collections::BTreeSet::new();
    for obj in objects {
        for name in read(obj)?.undefined {
            if let Some(ns) = namespace_of.get(name.as_str()) {
                let ident = ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !ns.as_bytes()[0].is_ascii_digit();
                if ident {
                    out.insert((*ns).to_owned());
                }
            }
        }
    }
    Ok(out.into_iter().collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use object::write;

    /// A relocatable object that refers to each of `names` (undefined symbols).
    fn object_using(names: &[&str]) -> Vec<u8> {
        let mut o = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = o.add_section(Vec::new(), b".text.f".to_vec(), object::SectionKind::Text);
        o.append_section_data(text, &[0xc3], 16);
        for name in names {
            o.add_symbol(write::Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: object::SymbolKind::Unknown,
                scope: object::SymbolScope::Linkage,
                weak: false,
                section: write::SymbolSection::Undefined,
                flags: object::SymbolFlags::None,
            });
        }
        o.write().expect("write object")
    }

    #[test]
    fn namespaces_of_the_exports_an_update_uses_are_imported() {
        // Issue 12: fallback.c's update uses fw_fallback_config, exported in
        // FIRMWARE_LOADER_PRIVATE; modpost refused the module that did not import it.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("Module.symvers"),
            "0xd3ae7756\tfw_fallback_config\tvmlinux\tEXPORT_SYMBOL_GPL\tFIRMWARE_LOADER_PRIVATE\n\
             0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n\
             0x0000000a\tdma_buf_get\tvmlinux\tEXPORT_SYMBOL_GPL\tDMA_BUF\n\
             0x0000000b\tbad_ns\tvmlinux\tEXPORT_SYMBOL_GPL\tX); evil(\n\
             0x0000000c\tunused\tvmlinux\tEXPORT_SYMBOL_GPL\tUNUSED_NS\n",
        )
        .expect("symvers");
        let a = dir.path().join("a.o");
        let b = dir.path().join("b.o");
        std::fs::write(&a, object_using(&["fw_fallback_config", "printk"])).expect("a");
        std::fs::write(
            &b,
            object_using(&["dma_buf_get", "bad_ns", "fw_fallback_config"]),
        )
        .expect("b");
        assert_eq!(
            imported_namespaces(dir.path(), &[a.clone(), b]).expect("namespaces"),
            ["DMA_BUF", "FIRMWARE_LOADER_PRIVATE"]
        );
        std::fs::remove_file(dir.path().join("Module.symvers")).expect("rm");
        assert!(matches!(
            imported_namespaces(dir.path(), &[a]),
            Err(Error::SymversMissing { .. })
        ));
    }
}
