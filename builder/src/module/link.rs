//! Links patch objects of one update to each other.
//!
//! The differ sees one object at a time, so when a patch adds a global
//! function in one file and calls it from another (kpatch's `module.patch`:
//! `kpatch_string()` new in net/netlink/af_netlink.c, called from
//! fs/xfs/xfs_stats.c), the caller's patch object refers to it as a symbol of
//! the running kernel — `.klp.sym.<object>.kpatch_string,0`, or the plain name
//! — which the kernel does not have.  The definition is in the update itself,
//! renamed `<prefix>kpatch_string` by the differ of the defining object.  This
//! step renames such undefined references to the defining symbol, so that
//! kbuild's link resolves them inside the module.

use std::collections::HashMap;
use std::path::Path;

use object::build::elf::Builder;
use object::build::ByteString;
use object::elf;

use super::klp::{parse_klp_sym, KLP_SYM_PREFIX};
use super::{Error, PatchObject, Result};

/// A global the update defines: its name in the patched source, and which
/// patch object defines it under which symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Definition {
    pub object: usize,
    pub symbol: String,
}

/// See [`definitions`].
pub(crate) type Definitions = HashMap<String, Option<Definition>>;

/// Globals the patch objects define besides their replacement functions,
/// by source name; `None` when several objects define the name.
///
/// The differ makes new `static` functions global too, so the same name in
/// two objects is normal (three files of macro-callbacks.patch each add a
/// static `pre_patch_callback`); such names are never linked.
pub(crate) fn definitions(objects: &[PatchObject]) -> Result<Definitions> {
    let mut out = Definitions::new();
    for (i, obj) in objects.iter().enumerate() {
        let data = std::fs::read(&obj.path).map_err(Error::io(&obj.path))?;
        let builder = Builder::read(&*data).map_err(Error::elf(&obj.path))?;
        let prefix = prefix_of(obj);
        for sym in builder.symbols.iter() {
            let is_global_def = sym.section.is_some()
                && sym.st_bind() == elf::STB_GLOBAL
                && matches!(sym.st_type(), elf::STT_FUNC | elf::STT_OBJECT);
            let Ok(symbol) = std::str::from_utf8(sym.name.as_slice()) else {
                continue;
            };
            if !is_global_def || obj.functions.iter().any(|f| f.symbol == symbol) {
                continue;
            }
            let name = source_name(symbol, prefix.as_deref());
            let def = Definition {
                object: i,
                symbol: symbol.to_owned(),
            };
            out.entry(name.to_owned())
                .and_modify(|d| *d = None)
                .or_insert(Some(def));
        }
    }
    Ok(out)
}

/// The differ's renaming prefix of `obj`, seen on its replacement functions.
fn prefix_of(obj: &PatchObject) -> Option<String> {
    obj.functions
        .iter()
        .find_map(|f| f.symbol.strip_suffix(f.name.as_str()).map(str::to_owned))
}

/// `ksp0_foo` → `foo`.  Without a replaced function to show the prefix, the
/// builder's own convention (`ksp<index>_`, builder/src/create.rs) is assumed.
fn source_name<'a>(symbol: &'a str, prefix: Option<&str>) -> &'a str {
    if let Some(p) = prefix {
        return symbol.strip_prefix(p).unwrap_or(symbol);
    }
    let Some(rest) = symbol.strip_prefix("ksp") else {
        return symbol;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    match rest[digits..].strip_prefix('_') {
        Some(name) if digits > 0 && !name.is_empty() => name,
        _ => symbol,
    }
}

/// Rename the undefined references of patch object `index` that another
/// patch object defines; returns how many were renamed.
pub(crate) fn apply(
    builder: &mut Builder<'_>,
    index: usize,
    defs: &Definitions,
    path: &Path,
) -> Result<usize> {
    let mut renamed = 0;
    for sym in builder.symbols.iter_mut() {
        if sym.section.is_some() || sym.st_shndx != elf::SHN_UNDEF {
            continue;
        }
        let Ok(name) = std::str::from_utf8(sym.name.as_slice()) else {
            continue;
        };
        let source = if let Some(rest) = name.strip_prefix(KLP_SYM_PREFIX) {
            parse_klp_sym(name).map_err(|reason| Error::BadKlpSymbol {
                path: path.to_owned(),
                symbol: name.to_owned(),
                reason,
            })?;
            // `.klp.sym.<object>.<name>,<pos>`: the name sits between the
            // object's dot and the last comma.  A non-zero sympos names one
            // of several locals of the running kernel, never a new global.
            let start = rest.find('.').map_or(0, |i| i + 1);
            let end = rest.rfind(',').unwrap_or(rest.len());
            if &rest[end..] != ",0" {
                continue;
            }
            &rest[start..end]
        } else {
            name
        };
        if let Some(def) = defs
            .get(source)
            .and_then(Option::as_ref)
            .filter(|d| d.object != index)
        {
            sym.name = ByteString::from(def.symbol.clone().into_bytes());
            sym.set_st_info(elf::STB_GLOBAL, sym.st_type());
            renamed += 1;
        }
    }
    Ok(renamed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_drop_the_differ_prefix() {
        assert_eq!(source_name("ksp1_kpatch_string", None), "kpatch_string");
        assert_eq!(source_name("ksp12_a_b", None), "a_b");
        assert_eq!(source_name("kspx_a", None), "kspx_a");
        assert_eq!(source_name("ksp_a", None), "ksp_a");
        assert_eq!(source_name("new_global", None), "new_global");
        assert_eq!(source_name("p9_foo", Some("p9_")), "foo");
        assert_eq!(source_name("bar", Some("p9_")), "bar");
    }
}
