//! Pass 2: pair the entities of pre and post, tolerating the names compilers invent.
//!
//! GCC renames locals between builds: static locals and other local symbols get a numbered
//! suffix (`count.12`), clones get `.isra.N`, `.constprop.N`, `.part.N`, and split-off cold
//! code `.cold`; `__UNIQUE_ID_*` names end in a counter. Names are compared without those
//! numbers; when several candidates remain (two static locals called `count`), they are told
//! apart by which functions use them, never by their numbers.

use std::collections::{BTreeSet, HashMap};

use super::load::{EntId, EntKind, Object, Target};

/// `foo.isra.0` -> `foo.isra`, `count.12` -> `count`, `__UNIQUE_ID_ddebug412` -> `__UNIQUE_ID_ddebug`.
pub(crate) fn base_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, part) in name.split('.').enumerate() {
        if i > 0 && !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if i > 0 {
            out.push('.');
        }
        out.push_str(part);
    }
    // `__UNIQUE_ID_<name><counter>` (include/linux/compiler.h __UNIQUE_ID), possibly with a
    // GCC suffix as well (`__UNIQUE_ID_ddebug473.50`).
    if out.starts_with("__UNIQUE_ID_") {
        let trimmed = out.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        out.truncate(trimmed);
    }
    // `__BTF_ID__<kind>__<name>__<COUNTER><LINE>` (include/linux/btf_ids.h `__ID`): any edit
    // above it renames every BTF ID of the file. `compare` still requires the renamed entry to
    // sit where it sat (a list is read by index).
    if let Some(rest) = out.strip_prefix("__BTF_ID__") {
        if let Some((head, tail)) = rest.rsplit_once("__") {
            if !head.is_empty() && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
                out.truncate("__BTF_ID__".len() + head.len() + 2);
            }
        }
    }
    out
}

/// For a `.cold` part, the name of the function it was split from (`foo.cold` -> `foo`,
/// `foo.part.0.cold` -> `foo.part.0`; gcc 8 numbered them, `foo.cold.1` -> `foo`).
///
/// Only `.cold` parts are children: gcc moves unlikely blocks there and the parent reaches
/// them by jumps (and they jump back into the parent), so they have no ftrace entry and no
/// callers of their own; they can only be replaced together with their parent. `.part.N`,
/// `.isra.N` and `.constprop.N` clones are not children: they are called like any function,
/// from the parent and from every caller the parent's fast path was inlined into, and have
/// their own ftrace entry, so a changed one is replaced as a function of its own.
pub(crate) fn cold_parent(name: &str) -> Option<&str> {
    let name = match name.rsplit_once('.') {
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => name,
    };
    name.strip_suffix(".cold").filter(|p| !p.is_empty())
}

/// Pre and post objects with their entity correspondence.
#[derive(Debug)]
pub(crate) struct Pair<'a> {
    pub pre: Object<'a>,
    pub post: Object<'a>,
    pub to_post: HashMap<EntId, EntId>,
    pub to_pre: HashMap<EntId, EntId>,
}

fn kind_tag(k: EntKind) -> u8 {
    match k {
        EntKind::Func => 0,
        EntKind::Object => 1,
        EntKind::Section => 2,
    }
}

/// Base names of the entities whose relocations point at each entity.
fn users(obj: &Object<'_>) -> HashMap<EntId, BTreeSet<String>> {
    let mut out: HashMap<EntId, BTreeSet<String>> = HashMap::new();
    for (i, e) in obj.entities.iter().enumerate() {
        let id = EntId(i as u32);
        for r in obj.ent_relas(id) {
            if let Target::Ent { ent, .. } = obj.resolve_in(e.sec, r) {
                if ent != id {
                    out.entry(ent).or_default().insert(base_name(e.name));
                }
            }
        }
    }
    out
}

pub(crate) fn run<'a>(pre: Object<'a>, post: Object<'a>) -> Pair<'a> {
    let mut to_post = HashMap::new();
    let mut to_pre = HashMap::new();

    // Group by (kind, base name); whole sections keep their exact name first so that
    // `.rodata.str1.1` and `.rodata.str1.8` never meet.
    let key = |obj: &Object<'_>, id: EntId| {
        let e = obj.ent(id);
        let name = if e.kind == EntKind::Section {
            e.name.to_string()
        } else {
            base_name(e.name)
        };
        (kind_tag(e.kind), name)
    };
    let mut groups: HashMap<(u8, String), (Vec<EntId>, Vec<EntId>)> = HashMap::new();
    for i in 0..pre.entities.len() {
        let id = EntId(i as u32);
        groups.entry(key(&pre, id)).or_default().0.push(id);
    }
    for i in 0..post.entities.len() {
        let id = EntId(i as u32);
        groups.entry(key(&post, id)).or_default().1.push(id);
    }

    let mut pre_users = None;
    let mut post_users = None;
    let mut keys: Vec<_> = groups.keys().cloned().collect();
    keys.sort();
    for k in keys {
        let (a, b) = &groups[&k];
        if a.is_empty() || b.is_empty() {
            continue;
        }
        if a.len() == 1 && b.len() == 1 {
            to_post.insert(a[0], b[0]);
            continue;
        }
        // Ambiguous: match by the set of users, then by exact name, then by order.
        let pu = pre_users.get_or_insert_with(|| users(&pre));
        let qu = post_users.get_or_insert_with(|| users(&post));
        let empty = BTreeSet::new();
        let mut left: Vec<EntId> = a.clone();
        let mut right: Vec<EntId> = b.clone();
        let sig_count =
            |list: &[EntId], m: &HashMap<EntId, BTreeSet<String>>, s: &BTreeSet<String>| {
                list.iter()
                    .filter(|e| m.get(e).unwrap_or(&empty) == s)
                    .count()
            };
        let mut matched = Vec::new();
        for &x in &left {
            let s = pu.get(&x).unwrap_or(&empty);
            if s.is_empty() || sig_count(&left, pu, s) != 1 || sig_count(&right, qu, s) != 1 {
                continue;
            }
            if let Some(&y) = right.iter().find(|y| qu.get(y).unwrap_or(&empty) == s) {
                matched.push((x, y));
            }
        }
        for &(x, y) in &matched {
            to_post.insert(x, y);
        }
        left.retain(|x| !matched.iter().any(|m| m.0 == *x));
        right.retain(|y| !matched.iter().any(|m| m.1 == *y));
        let mut exact = Vec::new();
        for &x in &left {
            if let Some(&y) = right.iter().find(|y| post.ent(**y).name == pre.ent(x).name) {
                exact.push((x, y));
            }
        }
        for &(x, y) in &exact {
            to_post.insert(x, y);
        }
        left.retain(|x| !exact.iter().any(|m| m.0 == *x));
        right.retain(|y| !exact.iter().any(|m| m.1 == *y));
        if left.len() == right.len() {
            for (x, y) in left.into_iter().zip(right) {
                to_post.insert(x, y);
            }
        }
    }
    for (&a, &b) in &to_post {
        to_pre.insert(b, a);
    }
    Pair {
        pre,
        post,
        to_post,
        to_pre,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_drop_compiler_numbers() {
        assert_eq!(base_name("foo.isra.0"), "foo.isra");
        assert_eq!(base_name("foo.constprop.3.isra.1"), "foo.constprop.isra");
        assert_eq!(base_name("count.12"), "count");
        assert_eq!(base_name("foo.cold"), "foo.cold");
        assert_eq!(base_name("__UNIQUE_ID_ddebug412"), "__UNIQUE_ID_ddebug");
        assert_eq!(base_name("__UNIQUE_ID_ddebug473.50"), "__UNIQUE_ID_ddebug");
        assert_eq!(base_name(".data..percpu"), ".data..percpu");
        assert_eq!(base_name("plain"), "plain");
        assert_eq!(
            base_name("__BTF_ID__struct__task_struct__19411"),
            "__BTF_ID__struct__task_struct__"
        );
        assert_eq!(
            base_name("__BTF_ID__func__bpf_sk2__7120"),
            "__BTF_ID__func__bpf_sk2__"
        );
        // Sets have no counter: kept whole.
        assert_eq!(
            base_name("__BTF_ID__set8__fixture_kfuncs"),
            "__BTF_ID__set8__fixture_kfuncs"
        );
    }

    #[test]
    fn only_cold_parts_have_parents() {
        assert_eq!(cold_parent("foo.cold"), Some("foo"));
        assert_eq!(cold_parent("foo.cold.1"), Some("foo"));
        assert_eq!(cold_parent("foo.isra.0.cold"), Some("foo.isra.0"));
        assert_eq!(cold_parent("foo.part.0.cold"), Some("foo.part.0"));
        assert_eq!(cold_parent(".cold"), None);
        assert_eq!(cold_parent("foo.part.0"), None);
        assert_eq!(cold_parent("foo.isra.0"), None);
        assert_eq!(cold_parent("foo.constprop.0"), None);
    }

    /// A split-off part renumbered between the builds (`FN.part.0` -> `FN.part.1`) must still
    /// pair with its old self (issue 9 §3b).
    #[test]
    fn renumbered_parts_share_a_base_name() {
        assert_eq!(
            base_name("fixture_log.part.0"),
            base_name("fixture_log.part.1")
        );
        assert_eq!(base_name("f.constprop.0.part.3"), "f.constprop.part");
    }
}
