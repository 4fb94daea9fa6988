//! Pass 1: parse one relocatable x86-64 object into sections, symbols, relocations and entities.
//!
//! An *entity* is the unit the differ reasons about: a function or data object (a FUNC/OBJECT
//! symbol's byte range inside its section) or, for sections without such symbols (string
//! literals, switch tables, `.altinstr_replacement`), the whole section.

use std::collections::HashMap;

use object::elf;
use object::read::elf::{FileHeader, Rela as _, SectionHeader, Sym as _};
use object::Endianness;

use super::error::{Error, Side};
use super::special::{self, Special};

/// Index of a section in its object (the ELF section index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SecId(pub u32);
/// Index of a symbol in its object (the ELF symbol index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SymId(pub u32);
/// Index of an entity in its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EntId(pub u32);

/// What a section holds, decided by name and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Symbol/string/relocation tables and other ELF plumbing.
    Meta,
    /// Debug info, notes, comments, `.discard.*`, export tables: never compared or emitted.
    Ignored,
    /// Executable code that stays resident.
    Text,
    /// Data the differ understands (`.data*`, `.bss*`, `.rodata*`, `__dyndbg`, ...).
    Data,
    /// `__init` / `__exit` code and data: freed or unused after boot, cannot be patched.
    Init,
    /// A per-entry table from [`special::SPECIAL_SECTIONS`].
    Special(&'static Special),
    /// Code referenced by `.altinstructions` entries.
    AltReplacement,
    /// A patch-author callback table (`.ksplice.callbacks.<kind>`, kpatch-macros.h): a plain
    /// array of function pointers that exists only in the update, always kept whole.
    Callbacks,
    /// Allocated, but not a section the differ knows: any change there is refused.
    Unknown,
}

/// The callback tables kpatch-macros.h writes (`KSPLICE_CALLBACKS_*`); the module step
/// (builder/src/module/callbacks.rs) reads the same names. Any other `.ksplice.*` section
/// stays unknown and is refused.
pub(crate) const CALLBACK_SECTIONS: [&str; 4] = [
    ".ksplice.callbacks.pre_patch",
    ".ksplice.callbacks.post_patch",
    ".ksplice.callbacks.pre_unpatch",
    ".ksplice.callbacks.post_unpatch",
];

#[derive(Debug)]
pub(crate) struct Section<'a> {
    pub name: &'a str,
    pub kind: Kind,
    pub sh_type: u32,
    pub flags: u64,
    pub align: u64,
    pub entsize: u64,
    /// Contents (empty for NOBITS).
    pub data: &'a [u8],
    pub size: u64,
    /// Relocations applying to this section, sorted by offset.
    pub relas: Vec<Rela>,
    /// Entities inside this section, sorted by start.
    pub entities: Vec<EntId>,
}

impl Section<'_> {
    pub fn is_strings(&self) -> bool {
        let f = u64::from(elf::SHF_MERGE | elf::SHF_STRINGS);
        self.flags & f == f
    }
    pub fn is_write(&self) -> bool {
        self.flags & u64::from(elf::SHF_WRITE) != 0
    }
    pub fn is_nobits(&self) -> bool {
        self.sh_type == elf::SHT_NOBITS
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Rela {
    pub offset: u64,
    pub r_type: u32,
    pub sym: SymId,
    pub addend: i64,
    /// For a PC-relative field in code: bytes from the field to the end of
    /// its instruction, decoded (`None`: not decoded, 4 is assumed).
    pub insn_tail: Option<u8>,
}

impl Rela {
    /// Bytes of the relocated field.
    pub fn width(&self) -> u32 {
        match self.r_type {
            elf::R_X86_64_64
            | elf::R_X86_64_PC64
            | elf::R_X86_64_GOTOFF64
            | elf::R_X86_64_GOTPC64 => 8,
            elf::R_X86_64_16 | elf::R_X86_64_PC16 => 2,
            elf::R_X86_64_8 | elf::R_X86_64_PC8 => 1,
            _ => 4,
        }
    }
    /// The CPU adds a PC-relative field to the end of its instruction, so the
    /// addressed byte is `addend + (end - field)`: 4 for a plain displacement,
    /// more when an immediate follows it (`cmpb $0, flag(%rip)`: 5). Decoded
    /// where the instruction could be, else 4. Used only to pick the symbol a
    /// section-relative reference means, never to change the arithmetic.
    pub fn code_bias(&self) -> i64 {
        match self.r_type {
            elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 => i64::from(self.insn_tail.unwrap_or(4)),
            _ => 0,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Symbol<'a> {
    pub name: &'a str,
    pub bind: u8,
    pub st_type: u8,
    pub section: Option<SecId>,
    pub value: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntKind {
    Func,
    Object,
    /// A whole section without FUNC/OBJECT symbols.
    Section,
}

#[derive(Debug)]
pub(crate) struct Entity<'a> {
    pub kind: EntKind,
    pub name: &'a str,
    /// The defining symbol (None for whole-section entities).
    pub sym: Option<SymId>,
    pub sec: SecId,
    pub start: u64,
    pub size: u64,
    /// Range of `sections[sec].relas` inside this entity.
    pub relas: std::ops::Range<usize>,
}

/// Where a relocation points, in terms of entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Inside an entity of this object, `off` bytes from its start (`S + A` preserved).
    Ent { ent: EntId, off: i64 },
    /// An undefined (external) symbol plus addend.
    Undef { sym: SymId, addend: i64 },
    /// The null symbol (index 0, S = 0): the field's value is the addend alone (gas writes
    /// this for an absolute `.reloc`), the same in every link.
    Abs { addend: i64 },
    /// Something the differ cannot map (a file symbol, a section without entities such as
    /// an ignored or special section): refused when included code refers to it.
    Other { sym: SymId, addend: i64 },
}

#[derive(Debug)]
pub(crate) struct Object<'a> {
    pub side: Side,
    pub sections: Vec<Section<'a>>,
    pub symbols: Vec<Symbol<'a>>,
    pub entities: Vec<Entity<'a>>,
    /// Entity defined by each FUNC/OBJECT symbol (aliases share one).
    pub sym_entity: HashMap<SymId, EntId>,
}

fn malformed(side: Side, detail: impl Into<String>) -> Error {
    Error::Malformed {
        side,
        detail: detail.into(),
    }
}

/// Fill `insn_tail` of the PC-relative relocations of one code section by
/// decoding it from its start, instruction after instruction. A relocation
/// keeps `None` unless an instruction's RIP-relative displacement or 32-bit
/// immediate (a relative branch's target) is exactly its field: data in
/// code, or a decode that lost step, never yields a wrong length.
fn decode_tails(code: &[u8], relas: &mut [Rela]) {
    use iced_x86::{Decoder, DecoderOptions};
    let pc = |r: &Rela| matches!(r.r_type, elf::R_X86_64_PC32 | elf::R_X86_64_PLT32);
    if code.is_empty() || !relas.iter().any(pc) {
        return;
    }
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut next = 0;
    while decoder.can_decode() && next < relas.len() {
        let insn = decoder.decode();
        let (start, end) = (insn.ip(), insn.next_ip());
        if insn.is_invalid() {
            continue;
        }
        while next < relas.len() && relas[next].offset < start {
            next += 1;
        }
        let offsets = decoder.get_constant_offsets(&insn);
        // A RIP-relative displacement (an immediate may follow it), or a
        // relative branch's 32-bit target (always the instruction's end).
        let fields = [
            (offsets.has_displacement()
                && insn.is_ip_rel_memory_operand()
                && offsets.displacement_size() == 4)
                .then(|| start + offsets.displacement_offset() as u64),
            (offsets.has_immediate() && offsets.immediate_size() == 4)
                .then(|| start + offsets.immediate_offset() as u64),
        ];
        let mut k = next;
        while k < relas.len() && relas[k].offset < end {
            let r = &mut relas[k];
            if pc(r) && fields.contains(&Some(r.offset)) {
                r.insn_tail = u8::try_from(end - r.offset).ok();
            }
            k += 1;
        }
    }
}

fn classify(name: &str, sh_type: u32, flags: u64) -> Kind {
    if matches!(
        sh_type,
        elf::SHT_NULL
            | elf::SHT_SYMTAB
            | elf::SHT_STRTAB
            | elf::SHT_RELA
            | elf::SHT_REL
            | elf::SHT_GROUP
            | elf::SHT_SYMTAB_SHNDX
    ) {
        return Kind::Meta;
    }
    if let Some(s) = special::lookup(name) {
        return Kind::Special(s);
    }
    if name == ".altinstr_replacement" {
        return Kind::AltReplacement;
    }
    let alloc = flags & u64::from(elf::SHF_ALLOC) != 0;
    if !alloc
        || name.starts_with(".discard")
        || name.starts_with(".note")
        || name.starts_with("__ksymtab")
        || name.starts_with("___ksymtab")
        || name.starts_with("__kcrctab")
        || name == ".modinfo"
        || name == "__versions"
    {
        return Kind::Ignored;
    }
    if CALLBACK_SECTIONS.contains(&name) {
        return Kind::Callbacks;
    }
    if name.starts_with(".init.")
        || name.starts_with(".exit.")
        || name.starts_with(".initcall")
        || name.ends_with(".init")
        || name == ".init.text"
        || name == ".exit.text"
    {
        return Kind::Init;
    }
    if flags & u64::from(elf::SHF_EXECINSTR) != 0 {
        return Kind::Text;
    }
    const DATA: &[&str] = &[
        ".data",
        ".bss",
        ".rodata",
        ".tdata",
        ".tbss",
        "__dyndbg",
        ".ref.data",
    ];
    if DATA.iter().any(|p| name.starts_with(p)) {
        return Kind::Data;
    }
    Kind::Unknown
}

/// Parse `data` (one side of the diff).
pub(crate) fn run(data: &[u8], side: Side) -> Result<Object<'_>, Error> {
    let header = elf::FileHeader64::<Endianness>::parse(data)
        .map_err(|source| Error::Parse { side, source })?;
    let endian = header
        .endian()
        .map_err(|source| Error::Parse { side, source })?;
    if header.e_type(endian) != elf::ET_REL {
        return Err(malformed(side, "not a relocatable object (ET_REL)"));
    }
    if header.e_machine(endian) != elf::EM_X86_64 {
        return Err(malformed(side, "not an x86-64 object"));
    }
    let table = header
        .sections(endian, data)
        .map_err(|source| Error::Parse { side, source })?;
    let symtab = table
        .symbols(endian, data, elf::SHT_SYMTAB)
        .map_err(|source| Error::Parse { side, source })?;

    let mut sections = Vec::with_capacity(table.len());
    for (index, sh) in table.iter().enumerate() {
        let raw = table
            .section_name(endian, sh)
            .map_err(|source| Error::Parse { side, source })?;
        let name = std::str::from_utf8(raw)
            .map_err(|_| malformed(side, format!("section {index} has a non-UTF-8 name")))?;
        let sh_type = sh.sh_type(endian);
        let flags = sh.sh_flags(endian);
        let size = sh.sh_size(endian);
        let contents: &[u8] = if sh_type == elf::SHT_NOBITS || sh_type == elf::SHT_NULL {
            &[]
        } else {
            sh.data(endian, data)
                .map_err(|source| Error::Parse { side, source })?
        };
        sections.push(Section {
            name,
            kind: classify(name, sh_type, flags),
            sh_type,
            flags,
            align: sh.sh_addralign(endian),
            entsize: sh.sh_entsize(endian),
            data: contents,
            size,
            relas: Vec::new(),
            entities: Vec::new(),
        });
    }

    let mut symbols = Vec::with_capacity(symtab.len());
    for (index, sym) in symtab.symbols().iter().enumerate() {
        let raw = symtab
            .symbol_name(endian, sym)
            .map_err(|source| Error::Parse { side, source })?;
        let name = std::str::from_utf8(raw)
            .map_err(|_| malformed(side, format!("symbol {index} has a non-UTF-8 name")))?;
        let section = symtab
            .symbol_section(endian, sym, object::SymbolIndex(index))
            .map_err(|source| Error::Parse { side, source })?
            .map(|s| SecId(s.0 as u32));
        if let Some(s) = section {
            if s.0 as usize >= sections.len() {
                return Err(malformed(
                    side,
                    format!("symbol {name} points at missing section {}", s.0),
                ));
            }
        }
        symbols.push(Symbol {
            name,
            bind: sym.st_bind(),
            st_type: sym.st_type(),
            section,
            value: sym.st_value(endian),
            size: sym.st_size(endian),
        });
    }

    // Relocations: only for sections we may compare or emit (debug info is most of an object's
    // relocations and is never needed).
    for sh in table.iter() {
        if sh.sh_type(endian) != elf::SHT_RELA {
            continue;
        }
        let target = sh.sh_info(endian) as usize;
        let Some(sec) = sections.get(target) else {
            return Err(malformed(
                side,
                format!("relocation section points at missing section {target}"),
            ));
        };
        if matches!(sec.kind, Kind::Meta | Kind::Ignored) {
            continue;
        }
        let Some((relas, _)) = sh
            .rela(endian, data)
            .map_err(|source| Error::Parse { side, source })?
        else {
            continue;
        };
        let mut out = Vec::with_capacity(relas.len());
        for r in relas {
            // R_X86_64_NONE changes nothing when linked (objtool turns the relocations of the
            // calls and jumps it NOPs into these; gas writes them for `.reloc` directives).
            if r.r_type(endian, false) == elf::R_X86_64_NONE {
                continue;
            }
            let sym = r.r_sym(endian, false);
            if sym as usize >= symbols.len() {
                return Err(malformed(
                    side,
                    format!("relocation in {} uses missing symbol {sym}", sec.name),
                ));
            }
            out.push(Rela {
                offset: r.r_offset(endian),
                r_type: r.r_type(endian, false),
                sym: SymId(sym),
                addend: r.r_addend(endian),
                insn_tail: None,
            });
        }
        out.sort_by_key(|r| r.offset);
        if matches!(sec.kind, Kind::Text | Kind::Init | Kind::AltReplacement) {
            decode_tails(sec.data, &mut out);
        }
        sections[target].relas = out;
    }

    // Entities: FUNC/OBJECT symbols by range; aliases (same section, start and size) share one.
    let mut entities: Vec<Entity<'_>> = Vec::new();
    let mut sym_entity = HashMap::new();
    let mut seen: HashMap<(u32, u64, u64), EntId> = HashMap::new();
    for (index, sym) in symbols.iter().enumerate() {
        let kind = match sym.st_type {
            elf::STT_FUNC => EntKind::Func,
            elf::STT_OBJECT | elf::STT_TLS => EntKind::Object,
            _ => continue,
        };
        let Some(sec) = sym.section else { continue };
        let section = &sections[sec.0 as usize];
        // A callback table is one entity: the module step reads it as a single array, so its
        // slots (`__ksplice_pre_patch_<fn>` pointers) must not become separate sections.
        if matches!(section.kind, Kind::Meta | Kind::Ignored | Kind::Callbacks) {
            continue;
        }
        if !matches!(sym.value.checked_add(sym.size), Some(end) if end <= section.size) {
            return Err(malformed(
                side,
                format!(
                    "symbol {} extends past its section {}",
                    sym.name, section.name
                ),
            ));
        }
        let key = (sec.0, sym.value, sym.size);
        if let Some(&id) = seen.get(&key) {
            // Prefer the global name for an alias pair: that is the one callers use.
            if sym.bind != elf::STB_LOCAL {
                let e: &mut Entity<'_> = &mut entities[id.0 as usize];
                e.name = sym.name;
                e.sym = Some(SymId(index as u32));
            }
            sym_entity.insert(SymId(index as u32), id);
            continue;
        }
        let id = EntId(entities.len() as u32);
        seen.insert(key, id);
        sym_entity.insert(SymId(index as u32), id);
        entities.push(Entity {
            kind,
            name: sym.name,
            sym: Some(SymId(index as u32)),
            sec,
            start: sym.value,
            size: sym.size,
            relas: 0..0,
        });
    }
    for (id, e) in entities.iter().enumerate() {
        sections[e.sec.0 as usize].entities.push(EntId(id as u32));
    }
    for (index, section) in sections.iter_mut().enumerate() {
        let wants_whole = matches!(
            section.kind,
            Kind::Text
                | Kind::Data
                | Kind::Init
                | Kind::AltReplacement
                | Kind::Callbacks
                | Kind::Unknown
        );
        if wants_whole
            && section.entities.is_empty()
            && (section.size > 0 || !section.relas.is_empty())
        {
            let id = EntId(entities.len() as u32);
            entities.push(Entity {
                kind: EntKind::Section,
                name: section.name,
                sym: None,
                sec: SecId(index as u32),
                start: 0,
                size: section.size,
                relas: 0..0,
            });
            section.entities.push(id);
        }
        section.entities.sort_by_key(|e| {
            (
                entities[e.0 as usize].start,
                std::cmp::Reverse(entities[e.0 as usize].size),
            )
        });
        for &e in &section.entities {
            let ent = &mut entities[e.0 as usize];
            let lo = section.relas.partition_point(|r| r.offset < ent.start);
            let hi = section
                .relas
                .partition_point(|r| r.offset < ent.start + ent.size);
            ent.relas = lo..hi.max(lo);
        }
    }

    let obj = Object {
        side,
        sections,
        symbols,
        entities,
        sym_entity,
    };
    obj.check_specials()?;
    Ok(obj)
}

impl<'a> Object<'a> {
    pub fn sec(&self, id: SecId) -> &Section<'a> {
        &self.sections[id.0 as usize]
    }
    pub fn sym(&self, id: SymId) -> &Symbol<'a> {
        &self.symbols[id.0 as usize]
    }
    pub fn ent(&self, id: EntId) -> &Entity<'a> {
        &self.entities[id.0 as usize]
    }
    pub fn ent_relas(&self, id: EntId) -> &[Rela] {
        let e = self.ent(id);
        &self.sec(e.sec).relas[e.relas.clone()]
    }
    /// The bytes of an entity (empty for NOBITS).
    pub fn ent_bytes(&self, id: EntId) -> &'a [u8] {
        let e = self.ent(id);
        let s = self.sec(e.sec);
        s.data
            .get(e.start as usize..(e.start + e.size) as usize)
            .unwrap_or(&[])
    }
    pub fn ent_section(&self, id: EntId) -> &Section<'a> {
        self.sec(self.ent(id).sec)
    }

    /// The entity of `sec` that contains byte `pos`; at a boundary prefer the entity starting
    /// there. With `allow_end`, an entity ending exactly at `pos` also matches (ORC entries
    /// describe a function's end address).
    pub fn entity_at(&self, sec: SecId, pos: i64, allow_end: bool) -> Option<EntId> {
        let s = self.sec(sec);
        if s.entities.is_empty() {
            return None;
        }
        if s.entities.len() == 1 {
            return Some(s.entities[0]);
        }
        let pos = u64::try_from(pos).ok()?;
        let idx = s.entities.partition_point(|e| self.ent(*e).start <= pos);
        if idx > 0 {
            let e = s.entities[idx - 1];
            let ent = self.ent(e);
            if pos < ent.start + ent.size || (ent.size == 0 && pos == ent.start) {
                return Some(e);
            }
            if allow_end && pos == ent.start + ent.size {
                return Some(e);
            }
            // A gap (padding): fall back to the entity before it, keeping `S + A` exact.
            return Some(e);
        }
        Some(s.entities[0])
    }

    /// Map a relocation to an entity-relative target. `bias` is the relocation's code bias when
    /// it sits in code, 0 in data and tables.
    pub fn resolve(&self, r: &Rela, bias: i64, allow_end: bool) -> Target {
        if r.sym.0 == 0 {
            return Target::Abs { addend: r.addend };
        }
        let sym = self.sym(r.sym);
        let Some(sec) = sym.section else {
            return if sym.st_type == elf::STT_FILE {
                Target::Other {
                    sym: r.sym,
                    addend: r.addend,
                }
            } else {
                Target::Undef {
                    sym: r.sym,
                    addend: r.addend,
                }
            };
        };
        if let Some(&ent) = self.sym_entity.get(&r.sym) {
            let start = self.ent(ent).start as i64;
            return Target::Ent {
                ent,
                off: sym.value as i64 + r.addend - start,
            };
        }
        let pos = sym.value as i64 + r.addend;
        match self.entity_at(sec, pos + bias, allow_end) {
            Some(ent) => Target::Ent {
                ent,
                off: pos - self.ent(ent).start as i64,
            },
            None => Target::Other {
                sym: r.sym,
                addend: r.addend,
            },
        }
    }

    /// Resolve a relocation found inside entity or section `sec`.
    pub fn resolve_in(&self, sec: SecId, r: &Rela) -> Target {
        let bias = match self.sec(sec).kind {
            Kind::Text | Kind::Init | Kind::AltReplacement => r.code_bias(),
            _ => 0,
        };
        self.resolve(r, bias, false)
    }

    /// Special sections present in this object, by table entry.
    pub fn special_sections(&self) -> impl Iterator<Item = (SecId, &'static Special)> + '_ {
        self.sections
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.kind {
                Kind::Special(sp) => Some((SecId(i as u32), sp)),
                _ => None,
            })
    }

    pub fn section_by_name(&self, name: &str) -> Option<SecId> {
        self.sections
            .iter()
            .position(|s| s.name == name)
            .map(|i| SecId(i as u32))
    }

    /// Every special section must be a whole number of entries, with the anchor relocation
    /// in each entry: that is how a wrong entry size (another kernel version) is caught.
    fn check_specials(&self) -> Result<(), Error> {
        for (id, sp) in self.special_sections() {
            let s = self.sec(id);
            if s.size.checked_rem(sp.entry_size) != Some(0) {
                return Err(Error::EntrySize {
                    side: self.side,
                    section: s.name.to_string(),
                    size: s.size,
                    entry_size: sp.entry_size,
                });
            }
            if let special::Anchor::Reloc(at) = sp.anchor {
                let entries = s.size / sp.entry_size;
                let anchored = s
                    .relas
                    .iter()
                    .filter(|r| r.offset % sp.entry_size == at)
                    .count() as u64;
                if anchored != entries {
                    return Err(Error::EntrySize {
                        side: self.side,
                        section: s.name.to_string(),
                        size: s.size,
                        entry_size: sp.entry_size,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc32(offset: u64) -> Rela {
        Rela {
            offset,
            r_type: elf::R_X86_64_PC32,
            sym: SymId(1),
            addend: -4,
            insn_tail: None,
        }
    }

    /// The bytes from each PC-relative field to its instruction's end, as the
    /// CPU adds them: more than 4 when an immediate follows the displacement.
    #[test]
    fn pc_relative_fields_get_their_instructions_tail() {
        let code = [
            0x80, 0x3d, 0, 0, 0, 0, 0x00, // cmpb $0, x(%rip): field at 2, tail 5
            0xc6, 0x05, 0, 0, 0, 0, 0x01, // movb $1, x(%rip): field at 9, tail 5
            0xc7, 0x05, 0, 0, 0, 0, 1, 0, 0, 0, // movl $1, x(%rip): field at 16, tail 8
            0x48, 0x8b, 0x05, 0, 0, 0, 0, // mov x(%rip), %rax: field at 27, tail 4
            0xe8, 0, 0, 0, 0,    // call f: field at 32, tail 4
            0x90, // nop, no field at 37
        ];
        let mut relas: Vec<Rela> = [2, 9, 16, 27, 32, 37].map(pc32).to_vec();
        decode_tails(&code, &mut relas);
        let tails: Vec<Option<u8>> = relas.iter().map(|r| r.insn_tail).collect();
        assert_eq!(tails, [Some(5), Some(5), Some(8), Some(4), Some(4), None]);
        assert_eq!(relas[0].code_bias(), 5);
        assert_eq!(relas[5].code_bias(), 4, "not decoded: the usual 4");
        // A field that is no instruction's (data in code) keeps the default.
        let mut off = vec![pc32(3)];
        decode_tails(&code, &mut off);
        assert_eq!(off[0].insn_tail, None);
    }
}
