//! Patch-author callbacks: find what `KPATCH_*_CALLBACK` recorded in a patch
//! object and give each callback a global alias the generated C can call.
//!
//! The macros (loader-module/include/kpatch-macros.h) put one function
//! pointer per callback into `.ksplice.callbacks.<kind>`.  The functions are
//! usually `static`, and the assembler turns references to local symbols into
//! section symbol + addend, so the only durable handle on a callback is the
//! relocation of its slot.  For slot `n` of kind `k` in patch object `i` this
//! step adds the global function symbol `__ksplice_cb_<i>_<k>_<n>` at the
//! relocation's target; the generated `ksplice-update.c` lists those aliases
//! in the callbacks of the `klp_object` the patch object belongs to.

use std::path::Path;

use object::build::elf::{Builder, SectionData};
use object::build::ByteString;
use object::elf;

use super::link::{self, Definitions};
use super::{Error, PatchObject, Result};

/// Callback kinds, in `struct ksplice_hooks` order.
pub(crate) const KINDS: [&str; 4] = ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"];

/// Prefix of the sections the macros write; the differ keeps these as new.
pub(crate) const SECTION_PREFIX: &str = ".ksplice.callbacks.";

/// The alias symbols of one patch object's callbacks, per kind (see [`KINDS`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Hooks {
    pub by_kind: [Vec<String>; 4],
}

/// Check `obj`, add callback aliases, link it to the update's other patch
/// objects ([`link`]), and write the object kbuild links to `out`.
pub(crate) fn run(
    obj: &PatchObject,
    index: usize,
    defs: &Definitions,
    out: &Path,
) -> Result<Hooks> {
    let path = obj.path.as_path();
    let data = std::fs::read(path).map_err(Error::io(path))?;
    let mut builder = Builder::read(&*data).map_err(Error::elf(path))?;

    for f in &obj.functions {
        if !defines_global_function(&builder, &f.symbol) {
            return Err(Error::MissingFunction {
                path: path.to_owned(),
                symbol: f.symbol.clone(),
            });
        }
    }

    let mut hooks = Hooks::default();
    for (k, kind) in KINDS.iter().enumerate() {
        let section = format!("{SECTION_PREFIX}{kind}");
        for (n, (target, value)) in slots(&builder, path, &section)?.into_iter().enumerate() {
            let alias = format!("__ksplice_cb_{index}_{kind}_{n}");
            let sym = builder.symbols.add();
            sym.name = ByteString::from(alias.clone().into_bytes());
            sym.section = Some(target);
            sym.set_st_info(elf::STB_GLOBAL, elf::STT_FUNC);
            sym.st_value = value;
            hooks.by_kind[k].push(alias);
        }
    }

    let renamed = link::apply(&mut builder, index, defs, path)?;
    if hooks == Hooks::default() && renamed == 0 {
        std::fs::write(out, &data).map_err(Error::io(out))?;
    } else {
        let mut buf = Vec::with_capacity(data.len() + 1024);
        builder.write(&mut buf).map_err(Error::elf(path))?;
        std::fs::write(out, buf).map_err(Error::io(out))?;
    }
    Ok(hooks)
}

fn defines_global_function(builder: &Builder<'_>, name: &str) -> bool {
    builder.symbols.iter().any(|s| {
        s.name.as_slice() == name.as_bytes()
            && s.section.is_some()
            && s.st_bind() == elf::STB_GLOBAL
            && s.st_type() == elf::STT_FUNC
    })
}

/// The callbacks in `section`, in slot order: (section of the function,
/// offset of the function in it).
fn slots(
    builder: &Builder<'_>,
    path: &Path,
    section: &str,
) -> Result<Vec<(object::build::elf::SectionId, u64)>> {
    let bad = |reason: String| Error::BadCallbackSection {
        path: path.to_owned(),
        section: section.to_owned(),
        reason,
    };
    let Some(sec) = builder
        .sections
        .iter()
        .find(|s| s.name.as_slice() == section.as_bytes())
    else {
        return Ok(Vec::new());
    };
    let size = match &sec.data {
        SectionData::Data(d) => d.len() as u64,
        _ => return Err(bad("not a data section".into())),
    };
    let mut relocs: Vec<_> = builder
        .sections
        .iter()
        .filter(|r| r.sh_info_section == Some(sec.id()))
        .filter_map(|r| match &r.data {
            SectionData::Relocation(v) => Some(v.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    relocs.sort_by_key(|r| r.r_offset);
    if size != 8 * relocs.len() as u64 {
        return Err(bad(format!(
            "{size} bytes but {} relocations: expected one 8-byte function pointer per callback",
            relocs.len()
        )));
    }
    let mut out = Vec::with_capacity(relocs.len());
    for (n, r) in relocs.iter().enumerate() {
        if r.r_offset != 8 * n as u64 || r.r_type != elf::R_X86_64_64 {
            return Err(bad(format!(
                "relocation at {:#x} is not an R_X86_64_64 function pointer",
                r.r_offset
            )));
        }
        let sym = r
            .symbol
            .map(|id| builder.symbols.get(id))
            .ok_or_else(|| bad(format!("relocation at {:#x} has no symbol", r.r_offset)))?;
        let target = sym
            .section
            .filter(|&s| builder.sections.get(s).sh_flags & u64::from(elf::SHF_EXECINSTR) != 0);
        let (Some(target), Some(value)) = (target, sym.st_value.checked_add_signed(r.r_addend))
        else {
            return Err(bad(format!(
                "callback {} is not a function defined in this object",
                String::from_utf8_lossy(sym.name.as_slice())
            )));
        };
        out.push((target, value));
    }
    Ok(out)
}
