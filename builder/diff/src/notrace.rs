//! Pass 3b: a changed function without an ftrace entry cannot be replaced by livepatch, but
//! when it is local and only ever called from traceable functions of the same object, those
//! callers can be replaced instead, calling a fresh copy of it.
//!
//! The common case is `SYSCALL_DEFINEx` (and `KPATCH_SYSCALL_DEFINEx`): the body is the
//! `static inline` (hence `notrace`) `__do_sys_<name>`, which gcc may keep out of line; its
//! only callers are the traced `__x64_sys_<name>` / `__ia32_sys_<name>` stubs. The callers may
//! themselves be local and untraced (a `.part.N` split off such a body is called from the
//! body): they are then replaced through *their* callers in turn, up to traced ones.

use std::collections::{BTreeSet, HashSet};

use object::elf;

use super::compare::{Status, Statuses};
use super::correlate::{cold_parent, Pair};
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

/// The functions of `obj` that refer to `f`, a `.cold` part standing for its parent; `None` if
/// something other than a function refers to it.
fn callers(obj: &Object<'_>, f: EntId) -> Option<BTreeSet<EntId>> {
    let by_name = |name: &str| {
        obj.entities
            .iter()
            .position(|x| x.kind == EntKind::Func && x.name == name)
            .map(|i| EntId(i as u32))
    };
    Some(
        referrers(obj, f)?
            .into_iter()
            .map(|c| cold_parent(obj.ent(c).name).and_then(by_name).unwrap_or(c))
            .filter(|&c| c != f)
            .collect(),
    )
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
    // A function of this object that can only be reached through its callers: code, not a
    // `.cold` part, local in the running kernel (nothing outside the object calls it).
    let local_code = |id: EntId| -> bool {
        let e = post.ent(id);
        e.kind == EntKind::Func
            && post.sec(e.sec).kind == Kind::Text
            && cold_parent(e.name).is_none()
            && pair
                .to_pre
                .get(&id)
                .and_then(|&p| pre.ent(p).sym)
                .is_some_and(|s| pre.sym(s).bind == elf::STB_LOCAL)
    };
    // Callers in both builds, as post ids: the running kernel's copy must be reachable only
    // from callers that the update replaces, and so must the new one. A pre caller gone from
    // post would keep calling the old copy: give up.
    let both_callers = |id: EntId| -> Option<BTreeSet<EntId>> {
        let mut out = callers(post, id)?;
        let pid = *pair.to_pre.get(&id)?;
        for f in callers(pre, pid)? {
            out.insert(*pair.to_post.get(&f)?);
        }
        Some(out)
    };
    let mut done: HashSet<EntId> = HashSet::new();
    loop {
        let mut promoted = false;
        for id in (0..post.entities.len() as u32).map(EntId) {
            if done.contains(&id)
                || status.via_callers.contains(&id)
                || status.of(id) != Status::Changed
                || !local_code(id)
                || is_traced(status, id)
            {
                continue;
            }
            // Walk up through untraced local callers (relays) to traced ones (roots): all or
            // nothing, so a function that cannot be reached this way is refused by name.
            let mut relays = BTreeSet::new();
            let mut roots = BTreeSet::new();
            let mut stack = vec![id];
            let mut ok = true;
            while let Some(f) = stack.pop() {
                if !relays.insert(f) {
                    continue;
                }
                match both_callers(f) {
                    Some(cs) if !cs.is_empty() => {
                        for c in cs {
                            if is_traced(status, c) {
                                roots.insert(c);
                            } else if status.via_callers.contains(&c) {
                                // Already replaced through its own callers.
                            } else if local_code(c) {
                                stack.push(c);
                            } else {
                                ok = false;
                            }
                        }
                    }
                    _ => ok = false,
                }
            }
            if !ok || roots.is_empty() {
                done.insert(id);
                continue;
            }
            for &f in &relays {
                done.insert(f);
                status.via_callers.insert(f);
            }
            for f in relays.into_iter().chain(roots) {
                if matches!(status.of(f), Status::Unchanged | Status::LineOnly) {
                    status.post[f.0 as usize] = Status::Changed;
                }
            }
            promoted = true;
        }
        if !promoted {
            break;
        }
    }
}
