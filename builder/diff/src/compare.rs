//! Pass 3: classify every entity as unchanged, changed, new or removed.
//!
//! Code is compared together with its relocations: a relocation target is compared by what it
//! means (the correlated symbol and the addend, or the string a literal reference points at),
//! never by raw offsets, so moving other code or strings around changes nothing. A function
//! whose only difference is a `__LINE__` immediate handed to WARN/might_sleep/printk helpers
//! (a line shift elsewhere in the file) is unchanged.

use std::collections::{HashMap, HashSet};

use object::elf;

use super::correlate::{base_name, cold_parent, Pair};
use super::load::{EntId, EntKind, Kind, Object, Rela, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Unchanged,
    /// Equal but for `__LINE__` immediates.
    LineOnly,
    Changed,
    New,
}

/// Per-entity classification; side tables indexed by entity id.
#[derive(Debug)]
pub(crate) struct Statuses {
    /// Status of each post entity.
    pub post: Vec<Status>,
    /// Pre entities with no counterpart in post.
    pub removed: Vec<EntId>,
    /// Changed notrace functions replaced through their callers (see `notrace`): included as
    /// new code, not replaced functions of their own.
    pub via_callers: std::collections::BTreeSet<EntId>,
}

impl Statuses {
    pub fn of(&self, post: EntId) -> Status {
        self.post[post.0 as usize]
    }
}

/// Statics that must be fresh in the patch (one-shot flags, lockdep keys, `__func__`, dynamic
/// debug descriptors): never "changed data", always copied when new code uses them.
pub(crate) fn is_special_static(obj: &Object<'_>, id: EntId) -> bool {
    let e = obj.ent(id);
    let sec = obj.sec(e.sec).name;
    if sec == "__dyndbg" || sec.starts_with(".data.once") || sec == "__verbose" {
        return true;
    }
    if e.kind != EntKind::Object {
        return false;
    }
    const NAMES: &[&str] = &[
        "__already_done",
        "__warned",
        "__key",
        "__func__",
        "__FUNCTION__",
        "__PRETTY_FUNCTION__",
        "__print_once",
        "__UNIQUE_ID_ddebug",
        "_entry",
        "_entry_ptr",
        "descriptor",
    ];
    let base = base_name(e.name);
    NAMES.contains(&base.as_str())
}

/// Helpers whose arguments carry `__LINE__` (see kernel.h might_sleep, bug.h __WARN_printf,
/// printk.h): an immediate loaded for them may change with a line shift.
const LINE_FUNCS: &[&str] = &[
    "__might_sleep",
    "__might_resched",
    "__might_fault",
    "__warn_printk",
    "_printk",
    "printk",
    "lockdep_rcu_suspicious",
    "__dynamic_pr_debug",
    "__dynamic_dev_dbg",
    "__cant_sleep",
    "__cant_migrate",
];

fn c_string(data: &[u8], off: i64) -> Option<&[u8]> {
    let off = usize::try_from(off).ok()?;
    let rest = data.get(off..)?;
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Do two strings differ only in `file.c:LINE` numbers (`__FILE__ ":" __stringify(__LINE__)`,
/// e.g. fortify's field-spanning-write warning)? A line shift then changes nothing functional.
fn same_but_line(a: &[u8], b: &[u8]) -> bool {
    fn tokens(s: &[u8]) -> Vec<(bool, &[u8])> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let digit = s[i].is_ascii_digit();
            let start = i;
            while i < s.len() && s[i].is_ascii_digit() == digit {
                i += 1;
            }
            out.push((digit, &s[start..i]));
        }
        out
    }
    let (ta, tb) = (tokens(a), tokens(b));
    if ta.len() != tb.len() {
        return false;
    }
    let mut prev: &[u8] = &[];
    let mut differed = false;
    for (x, y) in ta.iter().zip(&tb) {
        if x.0 != y.0 {
            return false;
        }
        if x.1 != y.1 {
            let after_file = prev.ends_with(b".c:") || prev.ends_with(b".h:");
            if !x.0 || !after_file {
                return false;
            }
            differed = true;
        }
        prev = x.1;
    }
    differed
}

pub(crate) struct Cmp<'p, 'a> {
    pub pair: &'p Pair<'a>,
    /// Pre entities of read-only data whose contents changed: references to them differ.
    pub changed_ro: HashSet<EntId>,
}

impl Cmp<'_, '_> {
    /// Whether a pre and a post relocation target mean the same thing.
    fn same_target(&self, t1: Target, t2: Target, bias: i64) -> bool {
        let (pre, post) = (&self.pair.pre, &self.pair.post);
        match (t1, t2) {
            (Target::Ent { ent: x, off: o1 }, Target::Ent { ent: y, off: o2 }) => {
                let (ex, ey) = (pre.ent(x), post.ent(y));
                let (sx, sy) = (pre.sec(ex.sec), post.sec(ey.sec));
                // String literals and merged constants: compare what is pointed at.
                if sx.flags & u64::from(elf::SHF_MERGE) != 0
                    && sy.flags & u64::from(elf::SHF_MERGE) != 0
                    && ex.kind == EntKind::Section
                    && ey.kind == EntKind::Section
                {
                    if base_name(sx.name) != base_name(sy.name) {
                        return false;
                    }
                    if sx.is_strings() {
                        return match (c_string(sx.data, o1 + bias), c_string(sy.data, o2 + bias)) {
                            (Some(a), Some(b)) => a == b || same_but_line(a, b),
                            _ => o1 == o2,
                        };
                    }
                    let n = sx.entsize.max(1) as i64;
                    let get = |d: &[u8], o: i64| {
                        usize::try_from(o + bias)
                            .ok()
                            .and_then(|o| d.get(o..o + n as usize))
                            .map(|s| s.to_vec())
                    };
                    return match (get(sx.data, o1), get(sy.data, o2)) {
                        (Some(a), Some(b)) => a == b && (o1 + bias) % n == (o2 + bias) % n,
                        _ => o1 == o2,
                    };
                }
                if o1 != o2 {
                    return false;
                }
                if is_special_static(pre, x) && is_special_static(post, y) {
                    return base_name(ex.name) == base_name(ey.name);
                }
                if self.pair.to_post.get(&x) == Some(&y) {
                    return !self.changed_ro.contains(&x);
                }
                false
            }
            (Target::Abs { addend: x }, Target::Abs { addend: y }) => x == y,
            (Target::Undef { sym: a, addend: x }, Target::Undef { sym: b, addend: y })
            | (Target::Other { sym: a, addend: x }, Target::Other { sym: b, addend: y }) => {
                x == y && pre.sym(a).name == post.sym(b).name
            }
            _ => false,
        }
    }

    fn same_relas(&self, a: EntId, b: EntId) -> bool {
        let (pre, post) = (&self.pair.pre, &self.pair.post);
        let (ea, eb) = (pre.ent(a), post.ent(b));
        let (ra, rb) = (pre.ent_relas(a), post.ent_relas(b));
        if ra.len() != rb.len() {
            return false;
        }
        ra.iter().zip(rb).all(|(x, y)| {
            x.offset - ea.start == y.offset - eb.start
                && x.r_type == y.r_type
                && self.same_target(
                    pre.resolve_in(ea.sec, x),
                    post.resolve_in(eb.sec, y),
                    bias_for(pre, ea.sec, x),
                )
        })
    }

    /// Compare one correlated pair.
    pub fn status(&self, a: EntId, b: EntId) -> Status {
        let (pre, post) = (&self.pair.pre, &self.pair.post);
        let (ea, eb) = (pre.ent(a), post.ent(b));
        if ea.kind != eb.kind || ea.size != eb.size {
            return Status::Changed;
        }
        // In a section the differ does not understand, where an entry sits may be what it
        // means (`.BTF_ids` lists are read by index): a moved entry is a changed one.
        // Tracing metadata is walked as a whole: an entry moves there when one before it is
        // left out (KPATCH_SYSCALL_DEFINEx has no SYSCALL_METADATA), which changes nothing.
        let sec = pre.sec(ea.sec);
        if sec.kind == Kind::Unknown
            && !super::verify::METADATA.contains(&sec.name)
            && ea.start != eb.start
        {
            return Status::Changed;
        }
        if !self.same_relas(a, b) {
            return Status::Changed;
        }
        let (ba, bb) = (pre.ent_bytes(a), post.ent_bytes(b));
        if ba == bb {
            return Status::Unchanged;
        }
        if ea.kind != EntKind::Func {
            return Status::Changed;
        }
        let (ba, bb) = self.blank_local_branches(a, b, ba, bb);
        if ba == bb {
            return Status::Unchanged;
        }
        if line_only(&ba, &bb, post, b) {
            return Status::LineOnly;
        }
        Status::Changed
    }

    /// Functions that share one section (`__init` code in `.init.text`, `__sched`,
    /// `__meminit`, `noinstr`, ...) call each other through displacements gas resolves itself,
    /// without a relocation: when gcc emits them in another order, or one of them changes
    /// size, every such call changes bytes though it reaches the same function. Returns the
    /// two codes with the rel32 of each `call` / `jmp` / `jcc` blanked where, in both builds,
    /// it has no relocation and lands exactly on the start of another function, and the two
    /// functions are correlated. Anything else keeps its bytes and stays a difference.
    fn blank_local_branches(&self, a: EntId, b: EntId, ba: &[u8], bb: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (pre, post) = (&self.pair.pre, &self.pair.post);
        let (mut na, mut nb) = (ba.to_vec(), bb.to_vec());
        let relocated = |obj: &Object<'_>, id: EntId, f: usize| {
            let at = obj.ent(id).start + f as u64;
            obj.ent_relas(id)
                .iter()
                .any(|r| r.offset < at + 4 && at < r.offset + u64::from(r.width()))
        };
        // The function a rel32 field at `f` of `id` lands on, if it lands on a start.
        let callee = |obj: &Object<'_>, id: EntId, code: &[u8], f: usize| -> Option<EntId> {
            let rel = i32::from_le_bytes(code.get(f..f + 4)?.try_into().ok()?);
            let target = (obj.ent(id).start as i64) + f as i64 + 4 + i64::from(rel);
            let t = obj.entity_at(obj.ent(id).sec, target, false)?;
            let te = obj.ent(t);
            (t != id && te.kind == EntKind::Func && te.start as i64 == target).then_some(t)
        };
        let mut i = 0;
        while i < ba.len() {
            if ba[i] == bb[i] {
                i += 1;
                continue;
            }
            let field = (i.saturating_sub(3)..=i).find(|&f| {
                let opcode = |c: &[u8]| {
                    (f >= 1 && matches!(c[f - 1], 0xe8 | 0xe9))
                        || (f >= 2 && c[f - 2] == 0x0f && (0x80..=0x8f).contains(&c[f - 1]))
                };
                f + 4 <= ba.len()
                    && opcode(ba)
                    && ba[f.saturating_sub(2)..f] == bb[f.saturating_sub(2)..f]
                    && !relocated(pre, a, f)
                    && !relocated(post, b, f)
                    && matches!(
                        (callee(pre, a, ba, f), callee(post, b, bb, f)),
                        (Some(x), Some(y)) if self.pair.to_post.get(&x) == Some(&y)
                    )
            });
            match field {
                Some(f) => {
                    na[f..f + 4].fill(0);
                    nb[f..f + 4].fill(0);
                    i = f + 4;
                }
                None => i += 1,
            }
        }
        (na, nb)
    }
}

pub(crate) fn bias_for(obj: &Object<'_>, sec: super::load::SecId, r: &Rela) -> i64 {
    match obj.sec(sec).kind {
        Kind::Text | Kind::Init | Kind::AltReplacement => r.code_bias(),
        _ => 0,
    }
}

/// Do all differing bytes sit in `mov $imm32, %reg` immediates that feed a call to a
/// `__LINE__`-taking helper?
fn line_only(a: &[u8], b: &[u8], post: &Object<'_>, id: EntId) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let e = post.ent(id);
    let calls: Vec<(usize, bool)> = post
        .ent_relas(id)
        .iter()
        .filter(|r| matches!(r.r_type, elf::R_X86_64_PLT32 | elf::R_X86_64_PC32))
        .filter_map(|r| {
            let at = (r.offset - e.start) as usize;
            (at >= 1 && matches!(b.get(at - 1), Some(&(0xe8 | 0xe9)))).then(|| {
                let name = match post.resolve(r, 4, false) {
                    Target::Undef { sym, .. } | Target::Other { sym, .. } => {
                        post.sym(sym).name.to_string()
                    }
                    Target::Ent { ent, .. } => base_name(post.ent(ent).name),
                    Target::Abs { .. } => String::new(),
                };
                (at, LINE_FUNCS.contains(&name.as_str()))
            })
        })
        .collect();
    let mut i = 0;
    while i < a.len() {
        if a[i] == b[i] {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < a.len() && a[end] != b[end] {
            end += 1;
        }
        // Find the imm32 field [f, f+4) covering [i, end) behind a mov opcode.
        let ok = (i.saturating_sub(3)..=i).any(|f| {
            if f == 0 || end > f + 4 {
                return false;
            }
            let op = |x: &[u8]| {
                (0xb8..=0xbf).contains(&x[f - 1])
                    || (f >= 2 && x[f - 2] == 0xc7 && (0xc0..=0xc7).contains(&x[f - 1]))
            };
            if !(op(a) && op(b) && a[f - 1] == b[f - 1]) {
                return false;
            }
            // The next call after the immediate must be a line-taking helper.
            calls
                .iter()
                .find(|(at, _)| *at > f + 4)
                .is_some_and(|(at, line)| *line && *at <= f + 4 + 96)
        });
        if !ok {
            return false;
        }
        i = end;
    }
    true
}

pub(crate) fn run(pair: &Pair<'_>) -> (Statuses, HashSet<EntId>) {
    let (pre, post) = (&pair.pre, &pair.post);
    let mut cmp = Cmp {
        pair,
        changed_ro: HashSet::new(),
    };

    // Read-only data first (to a fixpoint: a table may point at another changed table), so
    // code that references changed constants is itself changed.
    loop {
        let mut grew = false;
        for (&a, &b) in &pair.to_post {
            if cmp.changed_ro.contains(&a) {
                continue;
            }
            let s = pre.ent_section(a);
            if pre.ent(a).kind == EntKind::Func
                || s.is_write()
                || matches!(s.kind, Kind::Text | Kind::Init)
                || is_special_static(pre, a)
            {
                continue;
            }
            if cmp.status(a, b) == Status::Changed {
                cmp.changed_ro.insert(a);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }

    let mut status = vec![Status::New; post.entities.len()];
    for (&a, &b) in &pair.to_post {
        status[b.0 as usize] = if is_special_static(pre, a) {
            Status::Unchanged
        } else {
            cmp.status(a, b)
        };
    }
    // A `.cold` part that changed changes its parent: it has no ftrace entry, and the parent
    // jumps into it (and it back into the parent), so only a new parent can reach a new one.
    // `.part.N` / `.isra.N` / `.constprop.N` clones are functions of their own and leave
    // their parent alone (a parent inlined everywhere may not even exist).
    let by_name: HashMap<&str, EntId> = post
        .entities
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EntKind::Func)
        .map(|(i, e)| (e.name, EntId(i as u32)))
        .collect();
    for (i, e) in post.entities.iter().enumerate() {
        if e.kind != EntKind::Func || !matches!(status[i], Status::Changed | Status::New) {
            continue;
        }
        let mut name = cold_parent(e.name);
        while let Some(p) = name {
            let Some(&parent) = by_name.get(p) else {
                // No parent to carry it: `verify` refuses the part by name.
                break;
            };
            if matches!(
                status[parent.0 as usize],
                Status::Unchanged | Status::LineOnly
            ) {
                status[parent.0 as usize] = Status::Changed;
            }
            name = cold_parent(post.ent(parent).name);
        }
    }
    let mut removed: Vec<EntId> = (0..pre.entities.len() as u32)
        .map(EntId)
        .filter(|e| !pair.to_post.contains_key(e))
        .collect();
    removed.sort();
    let changed_ro = std::mem::take(&mut cmp.changed_ro);
    (
        Statuses {
            post: status,
            removed,
            via_callers: Default::default(),
        },
        changed_ro,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_line_strings_differ_only_by_line() {
        assert!(same_but_line(
            b"p at arch/x86/kvm/x86.c:8493",
            b"p at arch/x86/kvm/x86.c:8494"
        ));
        assert!(!same_but_line(
            b"p at arch/x86/kvm/x86.c:8493",
            b"p at arch/x86/kvm/x86.c:8493"
        ));
        assert!(!same_but_line(b"limit 10", b"limit 20"));
        assert!(!same_but_line(b"x.c:1 a", b"x.c:1 b"));
    }
}
