//! Rewrites the linked `.ko` into the livepatch module ELF format
//! (Documentation/livepatch/module-elf-format.rst).
//!
//! The patch objects name every non-exported kernel symbol
//! `.klp.sym.<object>.<name>,<sympos>` (contracts.md B); after kbuild those
//! are undefined symbols with ordinary relocations.  The module loader would
//! fail to resolve them, so:
//!
//! 1. each such symbol gets `st_shndx = SHN_LIVEPATCH`, which
//!    simplify_symbols() in kernel/module/main.c leaves to livepatch;
//! 2. relocations against them move out of `.rela<section>` into
//!    `.klp.rela.<object>.<section>` (one per target section and object),
//!    flagged `SHF_RELA_LIVEPATCH` so the loader hands them to
//!    klp_apply_section_relocs(), and `SHF_ALLOC` so they stay in memory for
//!    objects (modules) that livepatch relocates later, when they load.
//!
//! Relocations of non-allocated sections (debug information) stay where
//! they are: the loader never applies those.
//!
//! The `<object>` of a `.klp.rela.<object>.*` section is the *patched* object
//! whose loading makes livepatch write it (klp_apply_object_relocs() applies
//! only the sections named after a patched object), while the `<object>` of a
//! `.klp.sym` name is where the symbol lives. They differ for another module's
//! export called from a patched module (iwlmvm calling cfg80211's
//! `cfg80211_find_elem_match`): its relocations go to `.klp.rela.iwlmvm.*`,
//! written when iwlmvm loads (and so cfg80211, which it depends on, is loaded).
//! [`foreign_owners`] says which patched object each such symbol belongs to.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use object::build::elf::{Builder, Relocation, SectionData};
use object::build::{ByteString, Id};
use object::elf;

use super::{Error, Result};

/// Section index of livepatch symbols (include/uapi/linux/elf.h).
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// Section flag of livepatch relocation sections (include/uapi/linux/elf.h).
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
/// Name prefix of livepatch symbols.
pub const KLP_SYM_PREFIX: &str = ".klp.sym.";
/// Name prefix of livepatch relocation sections.
pub const KLP_RELA_PREFIX: &str = ".klp.rela.";

/// Sections the module loader interprets while the update loads
/// (module_finalize(), jump_label_add_module(), ...).  Relocations for a
/// module target are only written later, when that module loads, so such a
/// section must not refer to a module's symbols through livepatch
/// relocations (the reason kernel/livepatch/core.c keeps vmlinux and module
/// relocation sections apart).
const LOAD_TIME_SECTIONS: &[&str] = &[
    "__jump_table",
    ".static_call_sites",
    ".altinstructions",
    ".parainstructions",
    ".retpoline_sites",
    ".return_sites",
    ".smp_locks",
    "__mcount_loc",
    "__ex_table",
    "__bug_table",
    ".orc_unwind_ip",
];

/// `.klp.sym` symbols of another module than the patched object that refers to
/// them: symbol -> that patched object. One symbol used by patch objects of two
/// patched objects (or of the module it lives in) cannot be given one
/// relocation section, and is refused.
pub(crate) fn foreign_owners(objects: &[super::PatchObject]) -> Result<HashMap<String, String>> {
    use object::{Object as _, ObjectSymbol as _};
    let mut owners: HashMap<String, String> = HashMap::new();
    let mut own: HashMap<String, String> = HashMap::new();
    for obj in objects {
        let data = std::fs::read(&obj.path).map_err(Error::io(&obj.path))?;
        let file = object::File::parse(&*data).map_err(|source| Error::ElfRead {
            path: obj.path.clone(),
            source,
        })?;
        for sym in file.symbols().filter(|s| s.is_undefined()) {
            let Ok(name) = sym.name() else { continue };
            let Ok(home) = parse_klp_sym(name) else {
                continue;
            };
            if home == obj.target || home == "vmlinux" {
                own.insert(name.to_owned(), obj.target.clone());
                continue;
            }
            match owners.get(name) {
                Some(t) if *t != obj.target => {
                    return Err(Error::AmbiguousKlpSymbol {
                        symbol: name.to_owned(),
                        objects: format!("{t} and {}", obj.target),
                    })
                }
                _ => owners.insert(name.to_owned(), obj.target.clone()),
            };
        }
    }
    for (name, t) in &owners {
        if let Some(o) = own.get(name) {
            return Err(Error::AmbiguousKlpSymbol {
                symbol: name.clone(),
                objects: format!("{t} and {o}"),
            });
        }
    }
    Ok(owners)
}

/// Rewrite the module at `ko` in place; `owners` from [`foreign_owners`].
pub(crate) fn run(ko: &Path, owners: &HashMap<String, String>) -> Result<()> {
    let data = std::fs::read(ko).map_err(Error::io(ko))?;
    let mut builder = Builder::read(&*data).map_err(Error::elf(ko))?;
    if !rewrite(&mut builder, ko, owners)? {
        return Ok(());
    }
    let mut out = Vec::with_capacity(data.len() + 4096);
    builder.write(&mut out).map_err(Error::elf(ko))?;
    write_atomically(ko, &out)
}

/// Returns whether anything changed.
fn rewrite(builder: &mut Builder<'_>, ko: &Path, owners: &HashMap<String, String>) -> Result<bool> {
    // 1. Livepatch symbols, with the patched object their relocations belong to.
    let mut objects: HashMap<usize, String> = HashMap::new();
    for sym in builder.symbols.iter_mut() {
        let name = String::from_utf8_lossy(sym.name.as_slice()).into_owned();
        if !name.starts_with(KLP_SYM_PREFIX) {
            continue;
        }
        let object = parse_klp_sym(&name).map_err(|reason| Error::BadKlpSymbol {
            path: ko.to_owned(),
            symbol: name.clone(),
            reason,
        })?;
        if sym.section.is_some() {
            return Err(Error::BadKlpSymbol {
                path: ko.to_owned(),
                symbol: name,
                reason: "defined in the module instead of referring to the running kernel",
            });
        }
        sym.st_shndx = SHN_LIVEPATCH;
        let object = owners.get(&name).map_or(object, String::as_str);
        objects.insert(sym.id().index(), object.to_owned());
    }
    if objects.is_empty() {
        return Ok(false);
    }

    // 2. Move their relocations, section by section.
    let targets: HashMap<usize, (bool, Vec<u8>)> = builder
        .sections
        .iter()
        .map(|s| (s.id().index(), (s.is_alloc(), s.name.as_slice().to_vec())))
        .collect();
    let mut added = Vec::new();
    for sec in builder.sections.iter_mut() {
        if sec.sh_type != elf::SHT_RELA || sec.sh_flags & SHF_RELA_LIVEPATCH != 0 {
            continue;
        }
        let Some((true, target_name)) = sec.sh_info_section.and_then(|t| targets.get(&t.index()))
        else {
            continue;
        };
        let SectionData::Relocation(relocs) = &mut sec.data else {
            continue;
        };
        let mut moved: BTreeMap<&str, Vec<Relocation>> = BTreeMap::new();
        relocs.retain(|r| match r.symbol.and_then(|s| objects.get(&s.index())) {
            Some(object) => {
                moved.entry(object.as_str()).or_default().push(*r);
                false
            }
            None => true,
        });
        if relocs.is_empty() {
            sec.delete = true;
        }
        for (object, relocs) in moved {
            if object != "vmlinux" {
                if let Ok(section) = std::str::from_utf8(target_name) {
                    if LOAD_TIME_SECTIONS.contains(&section) {
                        return Err(Error::LateSpecialRelocation {
                            path: ko.to_owned(),
                            section: section.to_owned(),
                            object: object.to_owned(),
                        });
                    }
                }
            }
            let mut name = format!("{KLP_RELA_PREFIX}{object}.").into_bytes();
            name.extend_from_slice(target_name);
            added.push((name, sec.sh_info_section, sec.sh_link_section, relocs));
        }
    }
    for (name, target, symtab, relocs) in added {
        let sec = builder.sections.add();
        sec.name = ByteString::from(name);
        sec.sh_type = elf::SHT_RELA;
        sec.sh_flags = u64::from(elf::SHF_ALLOC | elf::SHF_INFO_LINK) | SHF_RELA_LIVEPATCH;
        sec.sh_link_section = symtab;
        sec.sh_info_section = target;
        sec.sh_addralign = 8;
        sec.sh_entsize = std::mem::size_of::<elf::Rela64<object::LittleEndian>>() as u64;
        sec.data = SectionData::Relocation(relocs);
    }
    Ok(true)
}

/// Check `.klp.sym.<object>.<name>,<sympos>` the way klp_resolve_symbols()
/// parses it (`%55[^.].%511[^,],%lu`); returns the object.
pub(crate) fn parse_klp_sym(symbol: &str) -> Result<&str, &'static str> {
    let rest = symbol
        .strip_prefix(KLP_SYM_PREFIX)
        .ok_or("missing the .klp.sym. prefix")?;
    let (object, rest) = rest.split_once('.').ok_or("missing the object name")?;
    if object.is_empty() || object.len() > 55 {
        return Err("object name must be 1 to 55 characters");
    }
    let (name, sympos) = rest.split_once(',').ok_or("missing ,<sympos>")?;
    if name.is_empty() || name.len() > 511 {
        return Err("symbol name must be 1 to 511 characters");
    }
    if sympos.is_empty() || !sympos.bytes().all(|b| b.is_ascii_digit()) || sympos.len() > 9 {
        return Err("sympos must be a decimal number");
    }
    Ok(object)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".klp-tmp");
    std::fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write;

    /// A relocatable object whose `.text.<func>` calls each of `calls`.
    fn object_calling(func: &str, calls: &[&str]) -> Vec<u8> {
        let mut o = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = o.add_section(
            Vec::new(),
            format!(".text.{func}").into_bytes(),
            object::SectionKind::Text,
        );
        let code: Vec<u8> = calls.iter().flat_map(|_| [0xe8, 0, 0, 0, 0]).collect();
        o.append_section_data(text, &code, 16);
        for (i, name) in calls.iter().enumerate() {
            let sym = o.add_symbol(write::Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: object::SymbolKind::Unknown,
                scope: object::SymbolScope::Linkage,
                weak: false,
                section: write::SymbolSection::Undefined,
                flags: object::SymbolFlags::None,
            });
            o.add_relocation(
                text,
                write::Relocation {
                    offset: 5 * i as u64 + 1,
                    symbol: sym,
                    addend: -4,
                    flags: object::RelocationFlags::Elf {
                        r_type: elf::R_X86_64_PLT32,
                    },
                },
            )
            .expect("relocation");
        }
        o.write().expect("write object")
    }

    fn klp_rela_sections(bytes: &[u8], owners: &HashMap<String, String>) -> Vec<String> {
        let mut b = Builder::read(bytes).expect("read");
        assert!(rewrite(&mut b, Path::new("t.ko"), owners).expect("rewrite"));
        b.sections
            .iter()
            .filter(|s| !s.delete)
            .map(|s| String::from_utf8_lossy(s.name.as_slice()).into_owned())
            .filter(|n| n.starts_with(KLP_RELA_PREFIX))
            .collect()
    }

    #[test]
    fn another_modules_symbol_is_relocated_when_the_patched_module_loads() {
        // Issue 12: iwlmvm's patch calls cfg80211's export. livepatch writes
        // `.klp.rela.<object>` sections only for patched objects, when they load.
        let d = tempfile::tempdir().expect("tempdir");
        let cfg = ".klp.sym.cfg80211.cfg80211_find_elem_match,0";
        let own = ".klp.sym.iwlmvm.iwl_mvm_helper,0";
        let path = d.path().join("0.o");
        std::fs::write(&path, object_calling("ksp0_f", &[cfg, own])).expect("write");
        let pobj = |target: &str, path: &Path| super::super::PatchObject {
            target: target.into(),
            path: path.to_owned(),
            functions: Vec::new(),
        };
        let owners = foreign_owners(&[pobj("iwlmvm", &path)]).expect("owners");
        assert_eq!(owners.get(cfg).map(String::as_str), Some("iwlmvm"));
        assert!(!owners.contains_key(own));
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(
            klp_rela_sections(&bytes, &owners),
            [".klp.rela.iwlmvm..text.ksp0_f"]
        );
        // Used by the patches of two patched modules: refused, never guessed.
        let other = d.path().join("1.o");
        std::fs::write(&other, object_calling("ksp1_g", &[cfg])).expect("write");
        let e = foreign_owners(&[pobj("iwlmvm", &path), pobj("ath11k", &other)])
            .expect_err("ambiguous");
        assert!(matches!(e, Error::AmbiguousKlpSymbol { .. }), "{e}");
        // cfg80211 itself patched in the same update, using its own symbol.
        let e = foreign_owners(&[pobj("iwlmvm", &path), pobj("cfg80211", &other)])
            .expect_err("ambiguous");
        assert!(matches!(e, Error::AmbiguousKlpSymbol { .. }), "{e}");
    }

    #[test]
    fn klp_sym_names_parse_like_the_kernel() {
        assert_eq!(
            parse_klp_sym(".klp.sym.vmlinux.saved_command_line,0"),
            Ok("vmlinux")
        );
        assert_eq!(parse_klp_sym(".klp.sym.xfs.xfs_foo.isra.0,2"), Ok("xfs"));
        assert!(parse_klp_sym(".klp.sym.vmlinux.saved_command_line").is_err());
        assert!(parse_klp_sym(".klp.sym..x,0").is_err());
        assert!(parse_klp_sym(".klp.sym.vmlinux.,0").is_err());
        assert!(parse_klp_sym(".klp.sym.vmlinux.x,-1").is_err());
        assert!(parse_klp_sym(".klp.sym.vmlinux.x,").is_err());
        assert!(parse_klp_sym(&format!(".klp.sym.{}.x,0", "m".repeat(56))).is_err());
    }
}
