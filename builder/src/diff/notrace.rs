//! Pass 3b: a changed function without an ftrace entry cannot be replaced by livepatch, but
//! when it is local and only ever called from traceable functions of the same object, those
//! callers can be replaced instead, calling a fresh copy of it.
//!
//! The common case is `SYSCALL_DEFINEx` (and `KPATCH_SYSCALL_DEFINEx`): the body is the
//! `static inline` (hence `notrace`) `__do_sys_<name>`, which gcc may keep out of line; its
//! only callers are the traced `__x64_sys_<name>` / `__ia32_sys_<name>` stubs.

use std::collections::{BTreeSet, HashSet};

use object::elf;

use super::compare::{Status, Statuses};
use super::correlate::{parent_name, Pair};
use super::load::{EntId, EntKind, Kind, Object, Target};
use super::verify::ftrace_entries;

/// Entities whose code refers to `target` (relocations in debug info, tables and other
/// metadata are skipped); `None` if something other than a function refers to it.
fn referrers(obj: &Object<'_>, target: EntId) -> Option<BTreeSet<EntId>> {
    let mut out = BTreeSet::new();
    for (i, s) in obj.sections.iter().enumerate() {
        let sid = super::load::SecId(i as u32);
        let code = matches!(s.kind, Kind::Text | Kind::Init | Kind::AltReplacement);
        if matches!(s.kind, Kind::Meta | Kind::Ignored | Kind::Special(_)) {
            continue;
        }
        for r in &s.relas {
            let Target::Ent { ent, .. } = obj.resolve_in(sid, r) else {
                continue;
            };
            if ent != target {
                continue;
            }
            // A reference from data (a function pointer) could call the old copy: give up.
            let from = obj.entity_at(sid, r.offset as i64, false)?;
            if !code || obj.ent(from).kind != EntKind::Func {
                return None;
            }
            if from != target {
                out.insert(from);
            }
        }
    }
    Some(out)
}

/// Mark the callers of changed, local, untraced functions as changed when that makes every
/// such function reachable only through replaced callers; returns nothing, updates `status`.
pub(crate) fn run(pair: &Pair<'_>, status: &mut Statuses) {
    let (pre, post) = (&pair.pre, &pair.post);
    let traced = ftrace_entries(pre);
    let is_traced = |status: &Statuses, id: EntId| -> bool {
        match pair.to_pre.get(&id) {
            Some(p) => traced.contains(p),
            // New code is never a klp_func target: it only needs its callers patched.
            None => status.of(id) == Status::New,
        }
    };
    let mut done: HashSet<EntId> = HashSet::new();
    loop {
        let mut promoted = false;
        for (i, e) in post.entities.iter().enumerate() {
            let id = EntId(i as u32);
            if done.contains(&id)
                || e.kind != EntKind::Func
                || post.sec(e.sec).kind != Kind::Text
                || parent_name(e.name).is_some()
                || status.of(id) != Status::Changed
            {
                continue;
            }
            let Some(&pid) = pair.to_pre.get(&id) else {
                continue;
            };
            let pe = pre.ent(pid);
            let local = pe.sym.is_some_and(|s| pre.sym(s).bind == elf::STB_LOCAL);
            if traced.contains(&pid) || !local {
                continue;
            }
            // Both builds: the running kernel's copy must be reachable only from callers
            // that the update replaces, and so must the new one.
            let (Some(post_refs), Some(pre_refs)) = (referrers(post, id), referrers(pre, pid))
            else {
                continue;
            };
            let parent_of = |obj: &Object<'_>, f: EntId| -> Option<EntId> {
                // A `.cold` part's caller is its parent.
                let name = parent_name(obj.ent(f).name)?;
                obj.entities
                    .iter()
                    .position(|x| x.kind == EntKind::Func && x.name == name)
                    .map(|i| EntId(i as u32))
            };
            let mut callers = BTreeSet::new();
            let mut ok = !post_refs.is_empty();
            for f in post_refs {
                let f = parent_of(post, f).unwrap_or(f);
                if f == id {
                    continue;
                }
                ok &= is_traced(status, f);
                callers.insert(f);
            }
            for f in pre_refs {
                let f = parent_of(pre, f).unwrap_or(f);
                if f == pid {
                    continue;
                }
                // A pre caller that is gone from post no longer runs once replaced... but
                // only if it is replaced: require it to have a post counterpart we patch.
                match pair.to_post.get(&f) {
                    Some(&q) => {
                        ok &= traced.contains(&f);
                        callers.insert(q);
                    }
                    None => ok = false,
                }
            }
            if !ok || callers.is_empty() {
                continue;
            }
            done.insert(id);
            status.via_callers.insert(id);
            for c in callers {
                if matches!(status.of(c), Status::Unchanged | Status::LineOnly) {
                    status.post[c.0 as usize] = Status::Changed;
                }
            }
            promoted = true;
        }
        if !promoted {
            break;
        }
    }
}
