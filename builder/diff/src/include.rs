//! Pass 4: select what the patch object holds — changed and new functions and everything they
//! need that must be fresh — and the special-section entries that belong to that code.
//!
//! References to anything else (unchanged functions, existing data) are left for `emit` to
//! turn into references to the running kernel: a call from new code to an unchanged function
//! must reach the running copy, never a duplicate.

use std::collections::{BTreeMap, HashMap};

use super::compare::{is_special_static, Status, Statuses};
use super::correlate::{cold_parent, Pair};
use super::load::{EntId, EntKind, Kind, Object, SecId, Target};
use super::report::Refusal;
use super::special::Anchor;
use super::Cx;

/// Why an entity is in the patch object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    Changed,
    New,
    ChildOf(String),
    NewData,
    SpecialStatic,
    Literal,
    ChangedConst,
    Unnamed,
    /// A `.ksplice.callbacks.*` table: new in every update that has one.
    Callback,
    /// A function a callback slot points to that the running kernel already has: the slot
    /// needs a copy defined in the patch object (the module step aliases it).
    CallbackFn,
    /// A changed notrace function whose callers are replaced instead (`notrace` pass).
    ViaCallers,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Changed => f.write_str("changed function"),
            Reason::New => f.write_str("new function"),
            Reason::ChildOf(p) => write!(f, "split-off part of {p}"),
            Reason::NewData => f.write_str("new data"),
            Reason::SpecialStatic => f.write_str("special static that must be fresh"),
            Reason::Literal => {
                f.write_str("string literals / merged constants used by included code")
            }
            Reason::ChangedConst => f.write_str("changed read-only data used by included code"),
            Reason::Unnamed => f.write_str("unnamed section used by included code"),
            Reason::Callback => f.write_str("patch-author callback table"),
            Reason::CallbackFn => f.write_str("function called through a callback table"),
            Reason::ViaCallers => {
                f.write_str("changed notrace function, reached through its replaced callers")
            }
        }
    }
}

/// The chosen contents of the patch object (post entity ids).
#[derive(Debug, Default)]
pub(crate) struct Selection {
    pub included: BTreeMap<EntId, Reason>,
    /// Kept entries of each special section: (entry index, entity it belongs to).
    pub kept: BTreeMap<SecId, Vec<(u64, EntId)>>,
    /// Problems found while walking references (become refusals in `verify`).
    pub problems: Vec<Refusal>,
}

struct Walk<'p, 'a> {
    pair: &'p Pair<'a>,
    cx: &'p Cx,
    status: &'p Statuses,
    changed_ro: &'p std::collections::HashSet<EntId>,
    sel: Selection,
    queue: Vec<EntId>,
    children: HashMap<String, Vec<EntId>>,
    /// Global symbols the pre (running) build of the object references but does not define.
    pre_undefined: std::collections::HashSet<&'p str>,
}

impl Walk<'_, '_> {
    fn post(&self) -> &Object<'_> {
        &self.pair.post
    }

    fn add(&mut self, id: EntId, reason: Reason) {
        if self.sel.included.contains_key(&id) {
            return;
        }
        self.sel.included.insert(id, reason);
        self.queue.push(id);
        let e = self.pair.post.ent(id);
        if e.kind == EntKind::Func {
            if let Some(kids) = self.children.get(e.name).cloned() {
                let parent = e.name.to_string();
                for kid in kids {
                    self.add(kid, Reason::ChildOf(parent.clone()));
                }
            }
        }
    }

    /// Decide what a reference from included code to `t` needs.
    fn need(&mut self, from: EntId, t: EntId) {
        if self.sel.included.contains_key(&t) {
            return;
        }
        let post = &self.pair.post;
        let e = post.ent(t);
        let sec = post.sec(e.sec);
        let problem = |reason: &str| Refusal {
            symbol: post.ent(from).name.to_string(),
            section: post.ent_section(from).name.to_string(),
            reason: format!("{reason}: {} in {}", e.name, sec.name),
        };
        match sec.kind {
            Kind::Init => {
                let p = problem("included code references __init/__exit code or data");
                self.sel.problems.push(p);
                return;
            }
            Kind::Unknown if e.kind == EntKind::Section => {
                let p = problem("included code references an unnamed part of a section the differ does not understand");
                self.sel.problems.push(p);
                return;
            }
            _ => {}
        }
        let status = self.status.of(t);
        let pre = self.pair.to_pre.get(&t).copied();
        let changed_const = pre.is_some_and(|p| self.changed_ro.contains(&p));
        let from_callbacks = post.ent_section(from).kind == Kind::Callbacks;
        if from_callbacks && (e.kind != EntKind::Func || sec.kind != Kind::Text) {
            let p = problem("a callback slot must point to a function of this object");
            self.sel.problems.push(p);
            return;
        }
        match e.kind {
            EntKind::Func => {
                if status == Status::New {
                    self.add(t, Reason::New);
                } else if from_callbacks && status != Status::Changed {
                    self.add(t, Reason::CallbackFn);
                }
                // Changed functions are roots; unchanged ones stay in the running kernel.
            }
            EntKind::Object | EntKind::Section => {
                if sec.kind == Kind::AltReplacement {
                    // Replacement code for the entries kept with included code.
                    self.add(t, Reason::Unnamed);
                } else if is_special_static(post, t) {
                    self.add(t, Reason::SpecialStatic);
                } else if status == Status::New {
                    self.add(
                        t,
                        if e.kind == EntKind::Section {
                            Reason::Unnamed
                        } else {
                            Reason::NewData
                        },
                    );
                } else if sec.flags & u64::from(object::elf::SHF_MERGE) != 0 {
                    self.add(t, Reason::Literal);
                } else if changed_const {
                    self.add(t, Reason::ChangedConst);
                } else if e.kind == EntKind::Section {
                    if sec.is_write() && sec.kind != Kind::AltReplacement {
                        let p = problem("included code references unnamed writable data that lives in the running kernel");
                        self.sel.problems.push(p);
                    } else {
                        self.add(t, Reason::Unnamed);
                    }
                }
            }
        }
    }

    fn drain(&mut self) {
        while let Some(id) = self.queue.pop() {
            let (sec, relas) = {
                let post = self.post();
                (post.ent(id).sec, post.ent_relas(id).to_vec())
            };
            for r in relas {
                match self.pair.post.resolve_in(sec, &r) {
                    Target::Ent { ent, .. } if ent != id => self.need(id, ent),
                    Target::Other { sym, .. } if self.post().sec(sec).kind != Kind::Callbacks => {
                        // Nothing a patch object could point at: a file symbol, or a section
                        // the differ keeps no entities for (ignored or special sections).
                        let post = self.post();
                        let s = post.sym(sym);
                        let target = match s.section {
                            Some(t) if s.name.is_empty() => post.sec(t).name,
                            _ => s.name,
                        };
                        let p = Refusal {
                            symbol: post.ent(id).name.to_string(),
                            section: post.sec(sec).name.to_string(),
                            reason: format!(
                                "included code refers into {target}, which a patch object cannot carry"
                            ),
                        };
                        self.sel.problems.push(p);
                    }
                    Target::Undef { sym, .. } | Target::Other { sym, .. }
                        if self.post().sec(sec).kind == Kind::Callbacks =>
                    {
                        // The module step can only alias a function defined in the object.
                        let post = self.post();
                        let p = Refusal {
                            symbol: post.ent(id).name.to_string(),
                            section: post.sec(sec).name.to_string(),
                            reason: format!(
                                "a callback slot must point to a function of this object, not to {}",
                                post.sym(sym).name
                            ),
                        };
                        self.sel.problems.push(p);
                    }
                    Target::Undef { sym, .. } => {
                        let post = self.post();
                        let s = post.sym(sym);
                        if let Some(reason) = self.unproven_external(s.name, s.bind) {
                            let p = Refusal {
                                symbol: post.ent(id).name.to_string(),
                                section: post.sec(sec).name.to_string(),
                                reason,
                            };
                            if !self.sel.problems.contains(&p) {
                                self.sel.problems.push(p);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Why an undefined symbol that included code of a *module* object references cannot be
    /// resolved by a live update, if it cannot. A module object's undefined symbol is, by how
    /// the module was linked, either an export (Module.symvers names vmlinux or the module)
    /// or a symbol of another object of the same module. Its home is known when it is an
    /// export, when the running build referenced it too (the running module resolved it),
    /// or when the update itself defines it (the module step links it); anything else would
    /// be a guess. A *new* reference to another module's export is refused too: livepatch
    /// resolves it when the target module loads, and only a module the target already
    /// depended on is sure to be loaded then. Without Module.symvers (no exports at all)
    /// every undefined symbol is taken to be the module's own, as documented.
    fn unproven_external(&self, name: &str, bind: u8) -> Option<String> {
        let cx = self.cx;
        if cx.target_object == "vmlinux"
            || bind == object::elf::STB_LOCAL
            || cx.vmlinux_exports.contains(name)
            || (cx.vmlinux_exports.is_empty() && cx.module_exports.is_empty())
        {
            return None;
        }
        let known_before = self.pre_undefined.contains(name);
        match cx.module_exports.get(name) {
            Some(m) if *m == cx.target_object => None,
            Some(_) if known_before => None,
            Some(m) => Some(format!(
                "new reference to {name}, exported by module {m}, which the running {} did not use: module {m} may not be loaded when {} is, so livepatch could not resolve it",
                cx.target_object, cx.target_object
            )),
            None if known_before || cx.update_globals.contains(name) => None,
            None => Some(format!(
                "{name} is exported by neither vmlinux nor any module (Module.symvers), the running {} object did not reference it and the update does not define it: where it lives is unknown",
                cx.target_object
            )),
        }
    }

    /// The key's name when the key referenced by `key` would live in a module other than the
    /// patch module itself (None: in vmlinux or fresh in the patch).
    fn module_key(&self, key: &super::load::Rela) -> Option<String> {
        let post = &self.pair.post;
        match post.resolve(key, 0, false) {
            Target::Ent { ent, .. } => {
                let fresh = self.sel.included.contains_key(&ent)
                    || is_special_static(post, ent)
                    || self.status.of(ent) == Status::New;
                (!fresh && self.cx.target_object != "vmlinux")
                    .then(|| post.ent(ent).name.to_string())
            }
            Target::Undef { sym, .. } => {
                let s = post.sym(sym);
                let ext = super::emit::external(self.cx, s.name, false, s.bind);
                (ext.object != "vmlinux").then(|| s.name.to_string())
            }
            Target::Other { .. } | Target::Abs { .. } => None,
        }
    }

    /// Keep the special-section entries anchored in included code; their other references
    /// (keys, strings, replacement code) are needed too. Returns whether anything was added.
    fn specials(&mut self) -> bool {
        let before = self.sel.included.len();
        let post = &self.pair.post;
        let specials: Vec<_> = post.special_sections().collect();
        for &(sid, sp) in &specials {
            let Anchor::Reloc(at) = sp.anchor else {
                continue;
            };
            let s = post.sec(sid);
            let mut kept = Vec::new();
            let mut extra = Vec::new();
            for r in &s.relas {
                if r.offset % sp.entry_size != at {
                    continue;
                }
                let index = r.offset / sp.entry_size;
                let Some(owner) = anchor_owner(post, r, &self.sel.included) else {
                    continue;
                };
                let lo = s
                    .relas
                    .partition_point(|x| x.offset < index * sp.entry_size);
                let hi = s
                    .relas
                    .partition_point(|x| x.offset < (index + 1) * sp.entry_size);
                if let Some(key_at) = sp.key_at {
                    let key = s.relas[lo..hi]
                        .iter()
                        .find(|x| x.offset == index * sp.entry_size + key_at);
                    if let Some(key) = key {
                        if let Some(home) = self.module_key(key) {
                            // 5.8+ kernels apply vmlinux klp relocations before the patch
                            // module's jump label / static call init, module ones only later:
                            // an entry keyed in a module would be initialised with a bogus key.
                            if !(home.starts_with("__tracepoint_")
                                || home.starts_with("__SCK__tp_func_"))
                            {
                                let owner_e = post.ent(owner);
                                let problem = Refusal {
                                    symbol: owner_e.name.to_string(),
                                    section: sp.name.to_string(),
                                    reason: format!(
                                        "static key / static call key {home} lives in module {}: use static_key_enabled() or a plain call instead",
                                        self.cx.target_object
                                    ),
                                };
                                self.sel.problems.push(problem);
                            }
                            // Inert tracepoints are dropped, like the refused entries.
                            continue;
                        }
                    }
                }
                kept.push((index, owner));
                for other in &s.relas[lo..hi] {
                    if other.offset == r.offset {
                        continue;
                    }
                    if let Target::Ent { ent, .. } = post.resolve(other, 0, false) {
                        extra.push((owner, ent));
                    }
                }
            }
            self.sel.kept.insert(sid, kept);
            for (owner, ent) in extra {
                self.need(owner, ent);
            }
        }
        // Parallel tables follow their partner's choice.
        for &(sid, sp) in &specials {
            if let Anchor::ParallelTo(partner) = sp.anchor {
                if let Some(p) = post.section_by_name(partner) {
                    let kept = self.sel.kept.get(&p).cloned().unwrap_or_default();
                    self.sel.kept.insert(sid, kept);
                }
            }
        }
        self.sel.included.len() != before
    }
}

/// The included function an anchor relocation belongs to: the entity containing the address,
/// or the one ending exactly there (ORC describes a function's end address).
pub(crate) fn anchor_owner(
    obj: &Object<'_>,
    r: &super::load::Rela,
    included: &BTreeMap<EntId, Reason>,
) -> Option<EntId> {
    let sym = obj.sym(r.sym);
    let sec = sym.section?;
    let pos = sym.value as i64 + r.addend;
    let direct = match obj.resolve(r, 0, false) {
        Target::Ent { ent, off } if off >= 0 && (off as u64) < obj.ent(ent).size.max(1) => {
            Some(ent)
        }
        _ => None,
    };
    if let Some(e) = direct {
        if included.contains_key(&e) {
            return Some(e);
        }
    }
    if pos > 0 {
        if let Some(e) = obj.entity_at(sec, pos - 1, false) {
            let ent = obj.ent(e);
            if ent.start + ent.size == pos as u64 && included.contains_key(&e) {
                return Some(e);
            }
        }
    }
    None
}

/// Owner of an anchor regardless of inclusion (for run-pre sites in the pre object).
pub(crate) fn anchor_entity(obj: &Object<'_>, r: &super::load::Rela) -> Option<(EntId, i64)> {
    match obj.resolve(r, 0, false) {
        Target::Ent { ent, off } if off >= 0 && (off as u64) < obj.ent(ent).size.max(1) => {
            Some((ent, off))
        }
        _ => None,
    }
}

pub(crate) fn run(
    cx: &Cx,
    pair: &Pair<'_>,
    status: &Statuses,
    changed_ro: &std::collections::HashSet<EntId>,
) -> Selection {
    let post = &pair.post;
    let mut children: HashMap<String, Vec<EntId>> = HashMap::new();
    for (i, e) in post.entities.iter().enumerate() {
        if e.kind == EntKind::Func {
            if let Some(p) = cold_parent(e.name) {
                children
                    .entry(p.to_string())
                    .or_default()
                    .push(EntId(i as u32));
            }
        }
    }
    let mut walk = Walk {
        pair,
        cx,
        status,
        changed_ro,
        sel: Selection::default(),
        queue: Vec::new(),
        children,
        pre_undefined: pair
            .pre
            .symbols
            .iter()
            .filter(|s| {
                s.section.is_none() && !s.name.is_empty() && s.bind != object::elf::STB_LOCAL
            })
            .map(|s| s.name)
            .collect(),
    };
    for (i, e) in post.entities.iter().enumerate() {
        let id = EntId(i as u32);
        // Callback tables never exist in the running kernel: kept whenever the post build has
        // them, whatever the pre build had.
        if post.sec(e.sec).kind == Kind::Callbacks {
            walk.add(id, Reason::Callback);
            continue;
        }
        if e.kind != EntKind::Func
            || post.sec(e.sec).kind != Kind::Text
            || cold_parent(e.name).is_some()
        {
            continue;
        }
        match status.of(id) {
            Status::Changed if status.via_callers.contains(&id) => walk.add(id, Reason::ViaCallers),
            Status::Changed => walk.add(id, Reason::Changed),
            Status::New => walk.add(id, Reason::New),
            _ => {}
        }
    }
    loop {
        walk.drain();
        if !walk.specials() {
            break;
        }
    }
    walk.sel
}
