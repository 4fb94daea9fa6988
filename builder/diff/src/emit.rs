//! Pass 6: write the patch object and the report's run-pre data and externals.
//!
//! Output layout (contract B, docs/differ.md): one section per included entity; changed and
//! new functions become STB_GLOBAL `<prefix><name>` in `.text.<prefix><name>`; everything that
//! stays in the running kernel is an undefined symbol — the plain name when vmlinux exports
//! it, else `.klp.sym.<object>.<name>,<sympos>` (Documentation/livepatch/module-elf-format.rst).

use std::collections::{BTreeMap, HashMap};

use object::build::elf::Relocation as OutRela;
use object::build::elf::{Builder, SectionData, SectionId, SymbolId};
use object::elf;
use object::Endianness;
use sha2::{Digest, Sha256};

use super::compare::{Status, Statuses};
use super::correlate::Pair;
use super::error::{Error, Side};
use super::include::{anchor_entity, Reason, Selection};
use super::load::{EntId, EntKind, Kind, Object, Target};
use super::report::{
    External, FunctionChange, FunctionStatus, Inclusion, RelocKind, RunPre, RunPreReloc,
};
use super::special::Site;
use super::Cx;

/// Name and sympos of a symbol in the running kernel (the pre build's name).
fn sympos(cx: &Cx, name: &str, bind: u8) -> u32 {
    if bind == elf::STB_LOCAL {
        cx.sympos.get(name).copied().unwrap_or(0)
    } else {
        0
    }
}

/// How an outward reference is spelled in the patch object.
pub(crate) fn external(cx: &Cx, name: &str, defined_here: bool, bind: u8) -> External {
    let exported = cx.vmlinux_exports.contains(name) && bind != elf::STB_LOCAL;
    // A symbol defined in a module object is that module's even if vmlinux exports a namesake.
    if exported && (!defined_here || cx.target_object == "vmlinux") {
        return External {
            symbol: name.to_string(),
            object: "vmlinux".to_string(),
            name: name.to_string(),
            sympos: 0,
        };
    }
    // Undefined and not exported by vmlinux: for a vmlinux object it is another vmlinux
    // symbol. For a module object it is another module's export when Module.symvers says so
    // (resolved in that module: livepatch looks `.klp.sym.<object>` up in that object only),
    // else a symbol of another object of the same module (the include pass refuses the ones
    // nothing proves are there).
    let object = if defined_here || cx.target_object == "vmlinux" {
        cx.target_object.clone()
    } else if let Some(m) = cx
        .module_exports
        .get(name)
        .filter(|_| bind != elf::STB_LOCAL)
    {
        m.clone()
    } else {
        cx.target_object.clone()
    };
    let pos = sympos(cx, name, bind);
    External {
        symbol: format!(".klp.sym.{object}.{name},{pos}"),
        object,
        name: name.to_string(),
        sympos: pos,
    }
}

pub(crate) struct Emitted {
    pub object: Vec<u8>,
    pub externals: Vec<External>,
}

struct Out<'b> {
    b: Builder<'b>,
    symtab: SectionId,
    /// Entity -> (section, symbol used for relocations to it).
    ents: HashMap<EntId, (SectionId, SymbolId)>,
    externs: BTreeMap<String, (SymbolId, External)>,
}

impl<'b> Out<'b> {
    fn add_section(
        &mut self,
        name: String,
        sh_type: u32,
        flags: u64,
        align: u64,
        entsize: u64,
        data: SectionData<'b>,
    ) -> SectionId {
        let s = self.b.sections.add();
        s.name = name.into_bytes().into();
        s.sh_type = sh_type;
        s.sh_flags = flags;
        s.sh_addralign = align.max(1);
        s.sh_entsize = entsize;
        s.data = data;
        s.id()
    }

    fn add_symbol(
        &mut self,
        name: String,
        section: Option<SectionId>,
        bind: u8,
        st_type: u8,
        size: u64,
    ) -> SymbolId {
        let sym = self.b.symbols.add();
        sym.name = name.into_bytes().into();
        sym.section = section;
        sym.set_st_info(bind, st_type);
        sym.st_size = size;
        sym.id()
    }

    fn add_relas(&mut self, target: SectionId, name: &str, relas: Vec<OutRela>) {
        if relas.is_empty() {
            return;
        }
        let id = self.add_section(
            format!(".rela{name}"),
            elf::SHT_RELA,
            u64::from(elf::SHF_INFO_LINK),
            8,
            24,
            SectionData::Relocation(relas),
        );
        let s = self.b.sections.get_mut(id);
        s.sh_link_section = Some(self.symtab);
        s.sh_info_section = Some(target);
    }

    fn extern_sym(&mut self, ext: External) -> SymbolId {
        if let Some((id, _)) = self.externs.get(&ext.symbol) {
            return *id;
        }
        let id = self.add_symbol(
            ext.symbol.clone(),
            None,
            elf::STB_GLOBAL,
            elf::STT_NOTYPE,
            0,
        );
        self.externs.insert(ext.symbol.clone(), (id, ext));
        id
    }
}

/// The name a post entity had in the running kernel (pre), or its post name when new.
fn kernel_name<'a>(pair: &Pair<'a>, id: EntId) -> &'a str {
    match pair.to_pre.get(&id) {
        Some(&p) => pair.pre.ent(p).name,
        None => pair.post.ent(id).name,
    }
}

pub(crate) fn run(pair: &Pair<'_>, sel: &Selection, cx: &Cx) -> Result<Emitted, Error> {
    let post = &pair.post;
    let mut b = Builder::new(Endianness::Little, true);
    b.header.e_type = elf::ET_REL;
    b.header.e_machine = elf::EM_X86_64;
    let meta = |b: &mut Builder<'_>,
                name: &str,
                sh_type: u32,
                align: u64,
                entsize: u64,
                data: SectionData<'static>| {
        let s = b.sections.add();
        s.name = name.as_bytes().to_vec().into();
        s.sh_type = sh_type;
        s.sh_addralign = align;
        s.sh_entsize = entsize;
        s.data = data;
        s.id()
    };
    meta(
        &mut b,
        ".shstrtab",
        elf::SHT_STRTAB,
        1,
        0,
        SectionData::SectionString,
    );
    let strtab = meta(
        &mut b,
        ".strtab",
        elf::SHT_STRTAB,
        1,
        0,
        SectionData::String,
    );
    let symtab = meta(
        &mut b,
        ".symtab",
        elf::SHT_SYMTAB,
        8,
        24,
        SectionData::Symbol,
    );
    b.sections.get_mut(symtab).sh_link_section = Some(strtab);
    let mut out = Out {
        b,
        symtab,
        ents: HashMap::new(),
        externs: BTreeMap::new(),
    };

    // 1. Sections and symbols for every included entity.
    for (&id, reason) in &sel.included {
        let e = post.ent(id);
        let s = post.sec(e.sec);
        let data = if s.is_nobits() {
            SectionData::UninitializedData(e.size)
        } else {
            SectionData::Data(post.ent_bytes(id).to_vec().into())
        };
        let renamed = matches!(
            reason,
            Reason::Changed | Reason::New | Reason::CallbackFn | Reason::ViaCallers
        );
        let sec_name = if renamed {
            format!(".text.{}{}", cx.prefix, kernel_name(pair, id))
        } else {
            s.name.to_string()
        };
        let sid = out.add_section(
            sec_name.clone(),
            s.sh_type,
            s.flags,
            s.align,
            s.entsize,
            data,
        );
        let section_sym = out.add_symbol(
            String::new(),
            Some(sid),
            elf::STB_LOCAL,
            elf::STT_SECTION,
            0,
        );
        let sym = match (e.kind, e.sym) {
            (EntKind::Section, _) | (_, None) => section_sym,
            (_, Some(orig)) => {
                let o = post.sym(orig);
                if renamed {
                    out.add_symbol(
                        format!("{}{}", cx.prefix, kernel_name(pair, id)),
                        Some(sid),
                        elf::STB_GLOBAL,
                        elf::STT_FUNC,
                        e.size,
                    )
                } else {
                    out.add_symbol(o.name.to_string(), Some(sid), o.bind, o.st_type, e.size)
                }
            }
        };
        out.ents.insert(id, (sid, sym));
    }

    // 2. Relocations of included entities.
    let map_target = |out: &mut Out<'_>, t: Target| -> Result<(Option<SymbolId>, i64), Error> {
        match t {
            Target::Ent { ent, off } => {
                if let Some(&(_, sym)) = out.ents.get(&ent) {
                    return Ok((Some(sym), off));
                }
                let Some(&pre_id) = pair.to_pre.get(&ent) else {
                    return Err(Error::Malformed {
                        side: Side::Post,
                        detail: format!(
                            "reference to {} which is neither included nor in the running kernel",
                            post.ent(ent).name
                        ),
                    });
                };
                let pe = pair.pre.ent(pre_id);
                let Some(psym) = pe.sym else {
                    return Err(Error::Malformed {
                        side: Side::Pre,
                        detail: format!(
                            "reference to unnamed {} which stays in the running kernel",
                            pe.name
                        ),
                    });
                };
                let ext = external(cx, pe.name, true, pair.pre.sym(psym).bind);
                Ok((Some(out.extern_sym(ext)), off))
            }
            Target::Undef { sym, addend } => {
                let s = post.sym(sym);
                let ext = external(cx, s.name, false, s.bind);
                Ok((Some(out.extern_sym(ext)), addend))
            }
            // Still against the null symbol: the value is the addend in every link.
            Target::Abs { addend } => Ok((None, addend)),
            Target::Other { sym, .. } => Err(Error::Malformed {
                side: Side::Post,
                detail: format!(
                    "relocation against unsupported symbol {:?}",
                    post.sym(sym).name
                ),
            }),
        }
    };
    let used = replacement_ranges(post, sel);
    for &id in sel.included.keys() {
        let e = post.ent(id);
        let s = post.sec(e.sec);
        // Code in `.altinstr_replacement` / `.altinstr_aux` is shared by the whole object; the
        // parts that belong to code left out of the patch are never reached, and their jumps
        // back into that code must not become references to the running kernel (they would
        // need sympos for every local function of the object).
        let shared_alt = s.kind == Kind::AltReplacement || s.name == ".altinstr_aux";
        let mut relas = Vec::new();
        for r in post.ent_relas(id) {
            let t = post.resolve_in(e.sec, r);
            if shared_alt
                && dead_code_ref(post, sel, t)
                && !(s.kind == Kind::AltReplacement && used.iter().any(|u| u.contains(&r.offset)))
            {
                continue;
            }
            let (sym, addend) = map_target(&mut out, t)?;
            relas.push(OutRela {
                r_offset: r.offset - e.start,
                symbol: sym,
                r_type: r.r_type,
                r_addend: addend,
            });
        }
        let (sid, _) = out.ents[&id];
        let name = out.b.sections.get(sid).name.to_string();
        out.add_relas(sid, &name, relas);
    }

    // 3. Special sections, filtered to the entries of included code.
    for (&sid, kept) in &sel.kept {
        if kept.is_empty() {
            continue;
        }
        let s = post.sec(sid);
        let super::load::Kind::Special(sp) = s.kind else {
            continue;
        };
        let size = sp.entry_size;
        let mut data = Vec::with_capacity(kept.len() * size as usize);
        let mut relas = Vec::new();
        for (n, &(index, owner)) in kept.iter().enumerate() {
            let from = (index * size) as usize;
            let chunk = s
                .data
                .get(from..from + size as usize)
                .ok_or_else(|| Error::EntrySize {
                    side: Side::Post,
                    section: s.name.to_string(),
                    size: s.size,
                    entry_size: size,
                })?;
            data.extend_from_slice(chunk);
            let lo = s.relas.partition_point(|x| x.offset < index * size);
            let hi = s.relas.partition_point(|x| x.offset < (index + 1) * size);
            for r in &s.relas[lo..hi] {
                let new_off = n as u64 * size + (r.offset - index * size);
                let is_anchor =
                    matches!(sp.anchor, super::special::Anchor::Reloc(at) if r.offset % size == at);
                let (sym, addend) = if is_anchor {
                    // The anchor belongs to `owner` even at its end address.
                    let o = post.sym(r.sym);
                    let pos = o.value as i64 + r.addend;
                    (Some(out.ents[&owner].1), pos - post.ent(owner).start as i64)
                } else {
                    map_target(&mut out, post.resolve(r, 0, false))?
                };
                relas.push(OutRela {
                    r_offset: new_off,
                    symbol: sym,
                    r_type: r.r_type,
                    r_addend: addend,
                });
            }
        }
        let out_sid = out.add_section(
            s.name.to_string(),
            s.sh_type,
            s.flags,
            s.align,
            s.entsize,
            SectionData::Data(data.into()),
        );
        out.add_relas(out_sid, s.name, relas);
    }

    out.add_section(
        ".note.GNU-stack".into(),
        elf::SHT_PROGBITS,
        0,
        1,
        0,
        SectionData::Data(Vec::new().into()),
    );

    let externals: Vec<External> = out.externs.values().map(|(_, e)| e.clone()).collect();
    let mut buf = Vec::new();
    out.b
        .write(&mut buf)
        .map_err(|source| Error::Write { source })?;
    Ok(Emitted {
        object: buf,
        externals,
    })
}

/// A reference to a function of this object that stays out of the patch.
fn dead_code_ref(post: &Object<'_>, sel: &Selection, t: Target) -> bool {
    match t {
        Target::Ent { ent, .. } => {
            !sel.included.contains_key(&ent)
                && post.ent(ent).kind == EntKind::Func
                && matches!(post.ent_section(ent).kind, Kind::Text | Kind::Init)
        }
        _ => false,
    }
}

/// Byte ranges of `.altinstr_replacement` used by the kept `.altinstructions` entries
/// (`repl_offset` at +4, `replacementlen` at +11 of `struct alt_instr`).
fn replacement_ranges(post: &Object<'_>, sel: &Selection) -> Vec<std::ops::Range<u64>> {
    let mut out = Vec::new();
    let Some(alt) = post.section_by_name(".altinstructions") else {
        return out;
    };
    let s = post.sec(alt);
    let size = super::special::lookup(".altinstructions").map_or(12, |sp| sp.entry_size);
    for &(index, _) in sel.kept.get(&alt).map(Vec::as_slice).unwrap_or(&[]) {
        let entry = index * size;
        let Some(r) = s.relas.iter().find(|r| r.offset == entry + 4) else {
            continue;
        };
        let len = u64::from(s.data.get((entry + 11) as usize).copied().unwrap_or(0));
        let start = post.sym(r.sym).value as i64 + r.addend;
        if let Ok(start) = u64::try_from(start) {
            out.push(start..start + len);
        }
    }
    out
}

/// Functions, inclusions and run-pre data for the report.
pub(crate) fn describe(
    pair: &Pair<'_>,
    status: &Statuses,
    sel: &Selection,
    cx: &Cx,
) -> (
    Vec<FunctionChange>,
    Vec<String>,
    Vec<Inclusion>,
    Vec<RunPre>,
) {
    let (pre, post) = (&pair.pre, &pair.post);
    let mut functions = Vec::new();
    let mut line_only = Vec::new();
    let sites = rewritten_sites(pre);
    let mut run_pre = Vec::new();
    for (i, e) in post.entities.iter().enumerate() {
        let id = EntId(i as u32);
        if e.kind != EntKind::Func || super::correlate::cold_parent(e.name).is_some() {
            continue;
        }
        match status.of(id) {
            // Not a replaced function: its callers are (the inclusion list says so).
            Status::Changed if status.via_callers.contains(&id) => {}
            Status::Changed => {
                let pid = pair.to_pre[&id];
                let pe = pre.ent(pid);
                let bind = pe.sym.map_or(elf::STB_LOCAL, |s| pre.sym(s).bind);
                let pos = sympos(cx, pe.name, bind);
                let code = pre.ent_bytes(pid).to_vec();
                functions.push(FunctionChange {
                    name: pe.name.to_string(),
                    status: FunctionStatus::Changed,
                    symbol: Some(format!("{}{}", cx.prefix, pe.name)),
                    sympos: pos,
                    old_size: Some(pe.size),
                    new_size: Some(e.size),
                    pre_sha256: Some(hex::encode(Sha256::digest(&code))),
                });
                let mut skip: Vec<(u32, u32)> = pre
                    .ent_relas(pid)
                    .iter()
                    .map(|r| ((r.offset - pe.start) as u32, r.width()))
                    .collect();
                let site_ranges = sites.get(&pid).map(Vec::as_slice).unwrap_or_default();
                skip.extend(site_ranges.iter().copied());
                run_pre.push(RunPre {
                    name: pe.name.to_string(),
                    sympos: pos,
                    skip: merge(skip, code.len() as u32),
                    relocs: checked_relocs(pre, pid, site_ranges, cx),
                    code,
                });
            }
            Status::New if post.sec(e.sec).kind == super::load::Kind::Text => {
                functions.push(FunctionChange {
                    name: e.name.to_string(),
                    status: FunctionStatus::New,
                    symbol: Some(format!("{}{}", cx.prefix, e.name)),
                    sympos: 0,
                    old_size: None,
                    new_size: Some(e.size),
                    pre_sha256: None,
                })
            }
            Status::LineOnly => line_only.push(e.name.to_string()),
            _ => {}
        }
    }
    for &r in &status.removed {
        let e = pre.ent(r);
        if e.kind == EntKind::Func && super::correlate::cold_parent(e.name).is_none() {
            functions.push(FunctionChange {
                name: e.name.to_string(),
                status: FunctionStatus::Removed,
                symbol: None,
                sympos: 0,
                old_size: Some(e.size),
                new_size: None,
                pre_sha256: None,
            });
        }
    }
    functions.sort_by(|a, b| (a.status as u8, &a.name).cmp(&(b.status as u8, &b.name)));
    line_only.sort();
    let included = sel
        .included
        .iter()
        .map(|(&id, reason)| Inclusion {
            symbol: post.ent(id).name.to_string(),
            section: post.ent_section(id).name.to_string(),
            reason: reason.to_string(),
        })
        .collect();
    (functions, line_only, included, run_pre)
}

/// Symbols whose references the kernel rewrites at boot or run time even outside the sites
/// the special sections list: the ftrace entry, retpoline and return thunks (alternatives
/// turn them into indirect calls or `ret`), static call trampolines.  Their fields stay
/// skipped, as before run-pre checked relocations.
const REWRITTEN_TARGETS: &[&str] = &[
    "__fentry__",
    "__x86_indirect_",
    "__x86_return_thunk",
    "__x86_return_skl",
    "__SCT__",
    "srso_",
    "retbleed_",
    "zen_untrain_ret",
    "entry_untrain_ret",
];

/// The relocations of pre function `pid` whose live value run-pre can check: a PC-relative
/// or absolute reference to a named symbol the running kernel has under a name the update
/// module can resolve, outside the sites the kernel rewrites.  References to unnamed data
/// (string literals) and, in a module, to symbols of unknown origin stay skipped only.
fn checked_relocs(pre: &Object<'_>, pid: EntId, sites: &[(u32, u32)], cx: &Cx) -> Vec<RunPreReloc> {
    let pe = pre.ent(pid);
    let mut out = Vec::new();
    for r in pre.ent_relas(pid) {
        let Some(kind) = RelocKind::from_elf(r.r_type) else {
            continue;
        };
        let offset = (r.offset - pe.start) as u32;
        let end = offset + kind.width();
        if sites.iter().any(|&(s, l)| offset < s + l && s < end) {
            continue;
        }
        let (target, addend) = match pre.resolve_in(pe.sec, r) {
            Target::Ent { ent, off } => {
                let Some(sym) = pre.ent(ent).sym else {
                    continue;
                };
                let s = pre.sym(sym);
                if s.st_type == elf::STT_SECTION {
                    continue;
                }
                (external(cx, pre.ent(ent).name, true, s.bind), off)
            }
            Target::Undef { sym, addend } => {
                let s = pre.sym(sym);
                let ext = external(cx, s.name, false, s.bind);
                // A module's undefined non-vmlinux symbol may live in another module.
                if cx.target_object != "vmlinux" && ext.object != "vmlinux" {
                    continue;
                }
                (ext, addend)
            }
            // An absolute value is in the compared bytes' place: nothing to resolve.
            Target::Other { .. } | Target::Abs { .. } => continue,
        };
        if REWRITTEN_TARGETS.iter().any(|p| target.name.starts_with(p)) {
            continue;
        }
        out.push(RunPreReloc {
            offset,
            kind,
            target,
            addend,
        });
    }
    out
}

/// Sort and merge `(start, len)` ranges, clamped to `limit`.
fn merge(mut v: Vec<(u32, u32)>, limit: u32) -> Vec<(u32, u32)> {
    v.retain(|&(s, l)| l > 0 && s < limit);
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
    for (s, l) in v {
        let end = (s + l).min(limit);
        if let Some(last) = out.last_mut() {
            if s <= last.0 + last.1 {
                last.1 = last.1.max(end - last.0);
                continue;
            }
        }
        out.push((s, end - s));
    }
    out
}

/// Byte ranges of each pre function that the kernel rewrites at boot or run time.
fn rewritten_sites(obj: &Object<'_>) -> HashMap<EntId, Vec<(u32, u32)>> {
    let mut out: HashMap<EntId, Vec<(u32, u32)>> = HashMap::new();
    for (sid, sp) in obj.special_sections() {
        let super::special::Anchor::Reloc(at) = sp.anchor else {
            continue;
        };
        if sp.site == Site::Kept {
            continue;
        }
        let s = obj.sec(sid);
        for r in &s.relas {
            if r.offset % sp.entry_size != at {
                continue;
            }
            let Some((ent, off)) = anchor_entity(obj, r) else {
                continue;
            };
            let code = obj.ent_bytes(ent);
            let off = off as usize;
            let len = match sp.site {
                Site::Kept => 0,
                Site::Fixed(n) => n,
                Site::LenAt(o) => {
                    let entry = (r.offset - at + o) as usize;
                    u32::from(s.data.get(entry).copied().unwrap_or(0))
                }
                Site::JumpLabel => match (code.get(off), code.get(off + 1)) {
                    (Some(0xeb), _) | (Some(0x66), Some(0x90)) => 2,
                    _ => 5,
                },
                Site::Branch => match code.get(off) {
                    Some(0x0f) => 6,
                    _ => 5,
                },
            };
            out.entry(ent).or_default().push((off as u32, len));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sorts_and_joins() {
        assert_eq!(
            merge(vec![(10, 4), (0, 5), (3, 4), (20, 8)], 24),
            vec![(0, 7), (10, 4), (20, 4)]
        );
    }

    #[test]
    fn externals_follow_the_contract() {
        let mut cx = Cx::new("vmlinux", "ksp0_");
        cx.vmlinux_exports.insert("seq_puts".into());
        cx.sympos.insert("show".into(), 2);
        assert_eq!(
            external(&cx, "seq_puts", false, elf::STB_GLOBAL).symbol,
            "seq_puts"
        );
        assert_eq!(
            external(&cx, "saved_command_line", false, elf::STB_GLOBAL).symbol,
            ".klp.sym.vmlinux.saved_command_line,0"
        );
        assert_eq!(
            external(&cx, "show", true, elf::STB_LOCAL).symbol,
            ".klp.sym.vmlinux.show,2"
        );
        let mut m = Cx::new("xfs", "ksp1_");
        m.vmlinux_exports.insert("kmalloc".into());
        assert_eq!(
            external(&m, "xfs_thing", true, elf::STB_LOCAL).symbol,
            ".klp.sym.xfs.xfs_thing,0"
        );
        assert_eq!(
            external(&m, "kmalloc", false, elf::STB_GLOBAL).symbol,
            "kmalloc"
        );
        // Another module's export is that module's symbol (issue 12: iwlmvm calling
        // cfg80211's export was spelled `.klp.sym.iwlmvm.*`, refused by the kernel).
        let mut w = Cx::new("iwlmvm", "ksp2_");
        w.module_exports
            .insert("cfg80211_find_elem_match".into(), "cfg80211".into());
        w.module_exports
            .insert("iwl_mvm_own_export".into(), "iwlmvm".into());
        assert_eq!(
            external(&w, "cfg80211_find_elem_match", false, elf::STB_GLOBAL).symbol,
            ".klp.sym.cfg80211.cfg80211_find_elem_match,0"
        );
        assert_eq!(
            external(&w, "iwl_mvm_own_export", false, elf::STB_GLOBAL).symbol,
            ".klp.sym.iwlmvm.iwl_mvm_own_export,0"
        );
        assert_eq!(
            external(&w, "iwl_other_file", false, elf::STB_GLOBAL).symbol,
            ".klp.sym.iwlmvm.iwl_other_file,0"
        );
    }
}
