//! Pass 5: refuse what cannot be patched safely, listing every problem at once.

use std::collections::{HashMap, HashSet};

use object::elf;

use super::compare::{is_special_static, Status, Statuses};
use super::correlate::{cold_parent, Pair};
use super::include::{anchor_entity, Selection};
use super::load::{EntId, EntKind, Kind, Object};
use super::report::Refusal;

/// Pre functions with an ftrace call site at their entry (from `__mcount_loc`).
pub(crate) fn ftrace_entries(obj: &Object<'_>) -> HashSet<EntId> {
    let mut out = HashSet::new();
    let Some(sid) = obj.section_by_name("__mcount_loc") else {
        return out;
    };
    for r in &obj.sec(sid).relas {
        if let Some((ent, off)) = anchor_entity(obj, r) {
            // With IBT an `endbr64` precedes the call; Debian 6.1 has IBT off but allow it.
            let bytes = obj.ent_bytes(ent);
            let endbr = bytes.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]);
            if off == 0 || (endbr && off == 4) {
                out.insert(ent);
            }
        }
    }
    out
}

/// Tracing metadata the running kernel keeps for the functions it has (see the removal rule
/// in `run`). Its entries are independent records the kernel walks as a whole, so an entry
/// that moved because another was left out (`compare`) is not a change either.
pub(crate) const METADATA: &[&str] = &[
    "_ftrace_events",
    "__syscalls_metadata",
    "_error_injection_whitelist",
];

pub(crate) fn run(
    pair: &Pair<'_>,
    status: &Statuses,
    changed_ro: &HashSet<EntId>,
    sel: &Selection,
) -> Vec<Refusal> {
    let (pre, post) = (&pair.pre, &pair.post);
    let mut out = sel.problems.clone();
    let traced = ftrace_entries(pre);
    let post_funcs: HashSet<&str> = post
        .entities
        .iter()
        .filter(|e| e.kind == EntKind::Func)
        .map(|e| e.name)
        .collect();
    for (i, e) in post.entities.iter().enumerate() {
        let id = EntId(i as u32);
        let st = status.of(id);
        if !matches!(st, Status::Changed | Status::New) {
            continue;
        }
        let sec = post.sec(e.sec);
        let refuse = |reason: &str| Refusal {
            symbol: e.name.to_string(),
            section: sec.name.to_string(),
            reason: reason.to_string(),
        };
        match (sec.kind, e.kind, st) {
            (Kind::Init, _, Status::Changed) => out.push(refuse(
                "changed __init/__exit code or data cannot be patched",
            )),
            (Kind::Init, _, _) => {
                out.push(refuse("new __init/__exit code or data would never run"))
            }
            (Kind::Unknown, _, _) => out.push(refuse(
                "change inside a section the differ does not understand",
            )),
            // A `.cold` part has no ftrace entry and is reached only by jumps from its parent:
            // without a parent in the object nothing could carry a new one (compare marks an
            // existing parent changed, and include copies the part with it).
            (Kind::Text, EntKind::Func, _)
                if cold_parent(e.name).is_some_and(|p| !post_funcs.contains(p)) =>
            {
                out.push(refuse(
                    "changed .cold part has no parent function in the object to be replaced with: cannot be patched",
                ))
            }
            (Kind::Text, EntKind::Func, Status::Changed)
                if cold_parent(e.name).is_none() && !status.via_callers.contains(&id) =>
            {
                let pre_id = pair.to_pre[&id];
                if !traced.contains(&pre_id) {
                    out.push(refuse("changed function has no ftrace entry (notrace or not traceable): cannot be patched"));
                }
            }
            (Kind::Data, EntKind::Object | EntKind::Section, Status::Changed)
                if !is_special_static(post, id) =>
            {
                let pre_id = pair.to_pre[&id];
                if sec.is_write() {
                    out.push(refuse("changed data exists in the running kernel"));
                } else if pre
                    .ent(pre_id)
                    .sym
                    .map_or(elf::STB_LOCAL, |s| pre.sym(s).bind)
                    != elf::STB_LOCAL
                    && changed_ro.contains(&pre_id)
                {
                    out.push(refuse(
                        "changed global read-only data may be used by code outside the patch",
                    ));
                }
            }
            _ => {}
        }
    }
    for &r in &status.removed {
        let e = pre.ent(r);
        // The running kernel keeps its tracing metadata for the functions it has; a post build
        // without it (KPATCH_SYSCALL_DEFINEx leaves SYSCALL_METADATA and ALLOW_ERROR_INJECTION
        // out on purpose) changes nothing there, and nothing in the patch refers to it.
        if pre.sec(e.sec).kind == Kind::Unknown && !METADATA.contains(&pre.sec(e.sec).name) {
            out.push(Refusal {
                symbol: e.name.to_string(),
                section: pre.sec(e.sec).name.to_string(),
                reason: "removed from a section the differ does not understand".to_string(),
            });
        }
    }
    // 4. A call or jump the assembler resolved inside a section several functions share
    //    (`.sched.text`, `.meminit.text`, a cold function beside its `.cold` part) has no
    //    relocation: copied into the patch object it would reach whatever lies at that
    //    distance from the copy.
    for &id in sel.included.keys() {
        for target in local_branch_targets(post, id) {
            let e = post.ent(id);
            out.push(Refusal {
                symbol: e.name.to_string(),
                section: post.sec(e.sec).name.to_string(),
                reason: format!(
                    "calls or jumps to {} in the same section without a relocation (resolved by the assembler): a copy of the function cannot carry that reference",
                    post.ent(target).name
                ),
            });
        }
    }
    // Bytes of a not-understood section that no named object covers (`BTF_ID_FLAGS` writes
    // its flags after the 4-byte ID symbol) are compared as a whole: a change there would
    // otherwise be dropped without a word.
    // Tracing metadata may lose entries (the removal rule above): its size may shrink.
    for s in post
        .sections
        .iter()
        .filter(|s| s.kind == Kind::Unknown && !METADATA.contains(&s.name))
    {
        let Some(p) = pre.section_by_name(s.name).map(|id| pre.sec(id)) else {
            continue;
        };
        if gaps(post, s) != gaps(pre, p) {
            out.push(Refusal {
                symbol: s.name.to_string(),
                section: s.name.to_string(),
                reason:
                    "change outside the named objects of a section the differ does not understand"
                        .to_string(),
            });
        }
    }
    // The module step reads a callback table as one 8-byte R_X86_64_64 pointer per slot
    // (docs/loader-module.md); anything else would be refused there, after the build.
    for s in post.sections.iter().filter(|s| s.kind == Kind::Callbacks) {
        let slots_ok = s.size == 8 * s.relas.len() as u64
            && s.relas
                .iter()
                .enumerate()
                .all(|(n, r)| r.offset == 8 * n as u64 && r.r_type == elf::R_X86_64_64);
        if !slots_ok {
            out.push(Refusal {
                symbol: s.name.to_string(),
                section: s.name.to_string(),
                reason: "a callback table must be an array of 8-byte function pointers, one R_X86_64_64 relocation per slot".to_string(),
            });
        }
    }
    // 3. A new EXPORT_SYMBOL would be silently missing from the update (its __ksymtab
    //    entry is not something a livepatch module can add to the kernel's table).
    // `___ksymtab+NAME` / `___ksymtab_gpl+NAME` (include/linux/export.h, 6.1).
    let exports = |o: &Object<'_>| -> HashMap<String, String> {
        o.sections
            .iter()
            .filter(|s| s.name.starts_with("___ksymtab"))
            .filter_map(|s| {
                s.name
                    .split_once('+')
                    .map(|(_, n)| (n.to_string(), s.name.to_string()))
            })
            .collect()
    };
    let before = exports(pre);
    let mut added: Vec<(String, String)> = exports(post)
        .into_iter()
        .filter(|(n, _)| !before.contains_key(n))
        .collect();
    added.sort();
    for (symbol, section) in added {
        out.push(Refusal {
            symbol,
            section,
            reason: "new EXPORT_SYMBOL cannot be added by a live update".to_string(),
        });
    }
    out.sort_by(|a, b| (&a.symbol, &a.section, &a.reason).cmp(&(&b.symbol, &b.section, &b.reason)));
    out.dedup();
    out
}

/// The bytes of `s` outside its named entities, with their offsets (a whole-section entity
/// covers everything: nothing is left).
fn gaps(obj: &Object<'_>, s: &super::load::Section<'_>) -> Vec<(u64, u8)> {
    let mut covered = vec![false; s.data.len()];
    for &e in &s.entities {
        let e = obj.ent(e);
        let lo = (e.start as usize).min(covered.len());
        let hi = (e.start.saturating_add(e.size) as usize).min(covered.len());
        covered[lo..hi].iter_mut().for_each(|c| *c = true);
    }
    s.data
        .iter()
        .enumerate()
        .filter(|&(i, _)| !covered[i])
        .map(|(i, &b)| (i as u64, b))
        .chain(std::iter::once((s.size, 0)))
        .collect()
}

/// Functions of its own section that function `id` reaches by a `call`, `jmp` or `jcc` rel32
/// without a relocation (the assembler resolved it): rel32 fields, not covered by any
/// relocation, that land exactly on the start of another function of the section. Only
/// sections with more than one function can have them.
pub(crate) fn local_branch_targets(obj: &Object<'_>, id: EntId) -> Vec<EntId> {
    let e = obj.ent(id);
    let sec = obj.sec(e.sec);
    let funcs = sec
        .entities
        .iter()
        .filter(|&&x| obj.ent(x).kind == EntKind::Func)
        .count();
    if e.kind != EntKind::Func || funcs < 2 {
        return Vec::new();
    }
    let code = obj.ent_bytes(id);
    let relas = obj.ent_relas(id);
    let mut out = Vec::new();
    for f in 1..code.len().saturating_sub(3) {
        let near = matches!(code[f - 1], 0xe8 | 0xe9)
            || (f >= 2 && code[f - 2] == 0x0f && (0x80..=0x8f).contains(&code[f - 1]));
        if !near {
            continue;
        }
        let at = e.start + f as u64;
        if relas
            .iter()
            .any(|r| r.offset < at + 4 && at < r.offset + u64::from(r.width()))
        {
            continue;
        }
        let Ok(field) = <[u8; 4]>::try_from(&code[f..f + 4]) else {
            continue;
        };
        let target = at as i64 + 4 + i64::from(i32::from_le_bytes(field));
        let Some(t) = obj.entity_at(e.sec, target, false) else {
            continue;
        };
        let te = obj.ent(t);
        if t != id && te.kind == EntKind::Func && te.start as i64 == target && !out.contains(&t) {
            out.push(t);
        }
    }
    out
}
