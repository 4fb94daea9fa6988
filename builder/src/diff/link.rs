//! After the per-object passes: references between the patch objects of one update.
//!
//! A patch can add a global function or variable in one object and use it from another
//! (kpatch's new-globals.patch, module.patch). Each object is diffed alone, so the user sees an
//! undefined, non-exported name and spells it `.klp.sym.<object>.<name>,0`; but the definition
//! is not in the running kernel — it is in the update module, renamed `<prefix><name>` for a
//! function. This pass points such references at that definition so the module link resolves
//! them, and drops them from the report's externals.

use std::collections::HashMap;

use object::build::elf::Builder;
use object::elf;

use super::error::Error;
use super::report::{FunctionStatus, Report};

/// One patch object of an update with its report (as returned by [`super::diff`]).
#[derive(Debug)]
pub struct PatchPart {
    pub object: Vec<u8>,
    pub report: Report,
}

/// The plain name a `.klp.sym.<object>.<name>,<sympos>` or plain undefined symbol stands for.
fn referenced_name(symbol: &str) -> &str {
    match symbol.strip_prefix(".klp.sym.") {
        Some(rest) => {
            let rest = rest.split_once('.').map_or(rest, |(_, r)| r);
            rest.rsplit_once(',').map_or(rest, |(n, _)| n)
        }
        None => symbol,
    }
}

/// Resolve references between the patch objects of one update (see the module docs).
/// Returns how many undefined symbols were renamed.
pub fn link_update(parts: &mut [PatchPart]) -> Result<usize, Error> {
    // 1. What each part defines that is new: name -> (part, symbol in the object).
    let mut defined: HashMap<String, (usize, String)> = HashMap::new();
    for (i, part) in parts.iter().enumerate() {
        let b = Builder::read(&*part.object).map_err(|source| Error::Relink { source })?;
        let globals: Vec<String> = b
            .symbols
            .iter()
            .filter(|s| s.section.is_some() && s.st_bind() != elf::STB_LOCAL)
            .map(|s| String::from_utf8_lossy(&s.name).into_owned())
            .collect();
        for f in &part.report.functions {
            if let (FunctionStatus::New, Some(sym)) = (f.status, &f.symbol) {
                if globals.contains(sym) {
                    defined.insert(f.name.clone(), (i, sym.clone()));
                }
            }
        }
        for inc in &part.report.included {
            if inc.reason == "new data" && globals.contains(&inc.symbol) {
                defined.insert(inc.symbol.clone(), (i, inc.symbol.clone()));
            }
        }
    }
    // 2. Rename matching undefined symbols in the other parts.
    let mut renamed = 0;
    for (i, part) in parts.iter_mut().enumerate() {
        let mut b = Builder::read(&*part.object).map_err(|source| Error::Relink { source })?;
        let mut changed = false;
        for sym in b.symbols.iter_mut() {
            if sym.section.is_some() || sym.st_shndx != elf::SHN_UNDEF || sym.name.is_empty() {
                continue;
            }
            let name = String::from_utf8_lossy(&sym.name).into_owned();
            let Some((owner, target)) = defined.get(referenced_name(&name)) else {
                continue;
            };
            if *owner == i || !name.starts_with(".klp.sym.") {
                continue;
            }
            sym.name = target.clone().into_bytes().into();
            part.report.externals.retain(|e| e.symbol != name);
            renamed += 1;
            changed = true;
        }
        if changed {
            let mut out = Vec::new();
            b.write(&mut out)
                .map_err(|source| Error::Relink { source })?;
            part.object = out;
        }
    }
    Ok(renamed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klp_names_map_back_to_plain_names() {
        assert_eq!(
            referenced_name(".klp.sym.vmlinux.kpatch_string,0"),
            "kpatch_string"
        );
        assert_eq!(referenced_name(".klp.sym.xfs.count.5,2"), "count.5");
        assert_eq!(referenced_name("seq_printf"), "seq_printf");
    }
}
