//! The kernel's own symbol table, decoded from the kallsyms tables in the `.rodata` of a stripped vmlinux.
//!
//! A distribution's vmlinuz has no ELF symbol table, but with `CONFIG_KALLSYMS`
//! the kernel carries its own (what `/proc/kallsyms` prints). The tables have no
//! symbols pointing at them, so they are found by their structure. Layout, as
//! `scripts/kallsyms.c` (`write_src`, Linux 6.1) emits it into one `.rodata`,
//! every table starting on an 8-byte boundary (`ALGN`) right after the previous:
//!
//! | table | content |
//! |---|---|
//! | `kallsyms_offsets` | `N` × i32, address of each symbol relative to the base |
//! | `kallsyms_relative_base` | u64, the address of the first relative symbol |
//! | `kallsyms_num_syms` | u32 `N` |
//! | `kallsyms_names` | per symbol: ULEB128 length (1–2 bytes), that many token bytes |
//! | `kallsyms_markers` | ⌈N/256⌉ × u32, the names offset of every 256th symbol |
//! | `kallsyms_seqs_of_names` | `N` × 3-byte big-endian symbol index, in name order |
//! | `kallsyms_token_table` | 256 NUL-terminated tokens |
//! | `kallsyms_token_index` | 256 × u16, offset of each token in the token table |
//!
//! A symbol's tokens expand to its type letter followed by its name
//! (`kernel/kallsyms.c`, `kallsyms_expand_symbol`). Addresses follow
//! `kallsyms_sym_address`: with `CONFIG_KALLSYMS_ABSOLUTE_PERCPU` a
//! non-negative offset is an absolute value (the per-CPU symbols) and a
//! negative one means `relative_base - 1 - offset`; without it every offset is
//! an unsigned distance from the base.
//!
//! The search: the token index (256 strictly increasing u16 from 0) with the
//! NUL-terminated token table right before it; then, going back from the token
//! table, every 8-aligned u32 that could be `kallsyms_num_syms` (room for the
//! tables, a 0 where `kallsyms_markers[0]` would be) is tried, and exactly one
//! must give tables consistent in every respect: lengths that end exactly at
//! the markers, markers at every 256th name, `seqs_of_names` a permutation in
//! name order, sorted addresses, the first relative symbol at the base.
//! Every read is bounded by the section; nothing is guessed.

use std::fmt;

/// `KSYM_NAME_LEN` (include/linux/kallsyms.h): scripts/kallsyms.c drops longer
/// names, so a longer one means the tables are not what we think.
pub const KSYM_NAME_LEN: usize = 512;
/// A distribution kernel has ~100 000 symbols, an allyesconfig one under a
/// million; more is not a kallsyms table.
pub const MAX_SYMBOLS: u32 = 1 << 22;
/// Candidates for `kallsyms_num_syms` tried before giving up (a hostile
/// image could make every aligned word look like one).
const MAX_CANDIDATES: usize = 1 << 16;
/// Symbols decoded over all candidates before giving up: one real table
/// plus a few bogus ones that get past the cheap checks.
const MAX_WORK: u64 = 4 * MAX_SYMBOLS as u64;
/// Table alignment (`ALGN` is `.balign 8` on 64-bit).
const ALIGN: usize = 8;

/// How the offsets are to be read: the kernel's config decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `CONFIG_KALLSYMS_BASE_RELATIVE=y`, `CONFIG_KALLSYMS_ABSOLUTE_PERCPU=y` (x86-64 SMP).
    RelativeAbsolutePercpu,
    /// `CONFIG_KALLSYMS_BASE_RELATIVE=y` alone: unsigned offsets from the base.
    Relative,
}

/// The section the tables are searched in, with its link-time address.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    pub data: &'a [u8],
    pub addr: u64,
}

/// One symbol as `/proc/kallsyms` shows it for vmlinux.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Link-time address (no KASLR offset).
    pub addr: u64,
    /// nm-style type letter, as the table stores it (`A` for per-CPU symbols).
    pub kind: char,
    pub name: String,
    /// An absolute value (a per-CPU offset): KASLR does not move it.
    pub absolute: bool,
}

/// The decoded table and where it was found.
#[derive(Debug, Clone)]
pub struct Kallsyms {
    /// In table order (sorted by address), the order `/proc/kallsyms` lists them.
    pub symbols: Vec<Symbol>,
    pub relative_base: u64,
    /// Link-time addresses of `kallsyms_num_syms` and `kallsyms_token_table`.
    pub num_syms_at: u64,
    pub token_table_at: u64,
}

impl Kallsyms {
    /// The table in System.map form: `address type name`, 16 hex digits as
    /// `/proc/kallsyms` prints them (`%px`), one line per symbol, table order.
    pub fn to_system_map(&self) -> String {
        let mut out = String::with_capacity(self.symbols.len() * 48);
        for s in &self.symbols {
            use fmt::Write;
            let _ = writeln!(out, "{:016x} {} {}", s.addr, s.kind, s.name);
        }
        out
    }
}

/// What did not match; every variant names the table and the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the section at {addr:#x} runs past the end of the address space")]
    SectionAddress { addr: u64 },
    #[error("no kallsyms_token_table/kallsyms_token_index pair (256 NUL-terminated tokens followed by their increasing u16 offsets) in the section")]
    NoTokenTable,
    #[error(
        "{count} places look like kallsyms_token_index (first at {first:#x}); refusing to pick one"
    )]
    AmbiguousTokenTable { count: usize, first: u64 },
    #[error("kallsyms_token_table: token {index} is the one character {token:?}, which must sit at its own byte value")]
    TokenMisplaced { index: usize, token: char },
    #[error("kallsyms_token_table: token {index} has a byte {byte:#04x} no symbol name contains")]
    TokenByte { index: usize, byte: u8 },
    #[error("no kallsyms_num_syms before the token table at {token_table:#x}: no aligned word fits the layout (room for the tables, kallsyms_markers[0] = 0)")]
    NoSymbolCount { token_table: u64 },
    #[error("too many places before the token table could be kallsyms_num_syms (more than {MAX_CANDIDATES}, or more than {MAX_WORK} symbols to decode in all); refusing to try them all")]
    TooManyCandidates,
    #[error("kallsyms tables are inconsistent (nearest kallsyms_num_syms candidate at {num_syms_at:#x}, {count} symbols): {reason}")]
    Inconsistent {
        num_syms_at: u64,
        count: u32,
        #[source]
        reason: Box<Error>,
    },
    #[error("{count} places before the token table give consistent kallsyms tables (at {first:#x} and {second:#x}); refusing to pick one")]
    AmbiguousTables {
        count: usize,
        first: u64,
        second: u64,
    },
    #[error("padding after {table} is not zero")]
    Padding { table: &'static str },
    #[error("kallsyms_markers[{index}] = {value} is not after kallsyms_markers[{}] = {previous}", index - 1)]
    MarkersOutOfOrder {
        index: usize,
        value: u32,
        previous: u32,
    },
    #[error("kallsyms_markers[{index}] = {marker}, but symbol {} starts at names offset {actual}", index * 256)]
    MarkerMismatch {
        index: usize,
        marker: u32,
        actual: usize,
    },
    #[error("kallsyms_names: symbol {symbol} at offset {offset} runs past the end of the table")]
    Truncated { symbol: u32, offset: usize },
    #[error("kallsyms_names: symbol {symbol} at offset {offset} has length {len}")]
    BadLength {
        symbol: u32,
        offset: usize,
        len: usize,
    },
    #[error("kallsyms_names: symbol {symbol} expands to {len} bytes, more than KSYM_NAME_LEN")]
    NameTooLong { symbol: u32, len: usize },
    #[error("kallsyms_names: symbol {symbol} has no name after its type {kind:?}")]
    EmptyName { symbol: u32, kind: char },
    #[error("kallsyms_names: symbol {symbol} has type byte {byte:#04x}, not a letter")]
    BadType { symbol: u32, byte: u8 },
    #[error("kallsyms_names: symbol {symbol} ({name:?}) has a byte that is not printable ASCII")]
    BadName { symbol: u32, name: String },
    #[error("kallsyms_names ends at offset {end}, which does not lead to kallsyms_markers")]
    NamesEnd { end: usize },
    #[error("kallsyms_seqs_of_names[{index}] = {seq} is out of range or repeated")]
    BadSeq { index: u32, seq: u32 },
    #[error(
        "kallsyms_seqs_of_names[{index}] names {name:?}, which does not sort after {previous:?}"
    )]
    NameOrder {
        index: u32,
        name: String,
        previous: String,
    },
    #[error("kallsyms_offsets[{symbol}] = {offset} gives an address outside 64 bits")]
    AddressOverflow { symbol: u32, offset: i32 },
    #[error("kallsyms_offsets: symbol {symbol} ({name}) at {addr:#x} comes before the previous one at {previous:#x}; the table is sorted by address")]
    Unsorted {
        symbol: u32,
        name: String,
        addr: u64,
        previous: u64,
    },
    #[error("kallsyms_relative_base is {base:#x}, but the first relative symbol ({name}) is at {first:#x}")]
    BaseMismatch { base: u64, first: u64, name: String },
    #[error("kallsyms_offsets: no relative symbol at all")]
    NoRelativeSymbol,
}

type Result<T, E = Error> = std::result::Result<T, E>;

const fn align_up(x: usize) -> usize {
    (x + ALIGN - 1) & !(ALIGN - 1)
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn zeros(d: &[u8], from: usize, to: usize) -> bool {
    d.get(from..to).is_some_and(|b| b.iter().all(|&x| x == 0))
}

/// A byte that may appear in a symbol name or its type (scripts/kallsyms.c
/// keeps nm's names; the kernel's are printable ASCII without spaces).
fn symbol_byte(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// Decode the kallsyms tables found in `section`.
pub fn decode(section: Section<'_>, addressing: Addressing) -> Result<Kallsyms> {
    // Addresses of positions in the section are reported; they must exist.
    if section
        .addr
        .checked_add(section.data.len() as u64)
        .is_none()
    {
        return Err(Error::SectionAddress { addr: section.addr });
    }
    let (table_at, tokens) = find_token_table(section)?;
    check_tokens(&tokens)?;
    let candidates = num_syms_candidates(section.data, table_at)?;
    if candidates.is_empty() {
        return Err(Error::NoSymbolCount {
            token_table: section.addr + table_at as u64,
        });
    }
    let mut found = Vec::new();
    let mut nearest_error = None;
    let mut work = 0u64;
    for &(at, count) in &candidates {
        work += u64::from(count);
        if work > MAX_WORK {
            return Err(Error::TooManyCandidates);
        }
        match tables_at(section.data, at, count, table_at, &tokens, addressing) {
            Ok(t) => found.push((at, t)),
            Err(e) => {
                nearest_error.get_or_insert((at, count, e));
            }
        }
    }
    match found.len() {
        0 => {
            let (at, count, reason) =
                nearest_error.expect("invariant: every candidate failed with an error");
            Err(Error::Inconsistent {
                num_syms_at: section.addr + at as u64,
                count,
                reason: Box::new(reason),
            })
        }
        1 => {
            let (at, (symbols, relative_base)) = found.pop().expect("invariant: one found");
            Ok(Kallsyms {
                symbols,
                relative_base,
                num_syms_at: section.addr + at as u64,
                token_table_at: section.addr + table_at as u64,
            })
        }
        n => Err(Error::AmbiguousTables {
            count: n,
            first: section.addr + found[0].0 as u64,
            second: section.addr + found[1].0 as u64,
        }),
    }
}

/// The token table: the one place where 256 strictly increasing u16 from 0
/// follow (at the next 8-byte boundary) 256 NUL-terminated strings they index.
fn find_token_table(section: Section<'_>) -> Result<(usize, Vec<Vec<u8>>)> {
    let d = section.data;
    let mut hits: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
    let mut p = 0;
    while p + 512 <= d.len() {
        if let Some(hit) = token_table_before(d, p) {
            hits.push(hit);
        }
        p += ALIGN;
    }
    match hits.len() {
        0 => Err(Error::NoTokenTable),
        1 => Ok(hits.pop().expect("invariant: one hit")),
        n => Err(Error::AmbiguousTokenTable {
            count: n,
            first: section.addr + hits[0].0 as u64,
        }),
    }
}

/// If `p` is a token index, the start of its token table and the tokens.
fn token_table_before(d: &[u8], p: usize) -> Option<(usize, Vec<Vec<u8>>)> {
    // Quick rejection first: most aligned words are not 0 followed by a short token.
    if u16_at(d, p)? != 0 || !(1..=KSYM_NAME_LEN as u16).contains(&u16_at(d, p + 2)?) {
        return None;
    }
    let mut index = [0usize; 256];
    for i in 0..256 {
        index[i] = usize::from(u16_at(d, p + 2 * i)?);
        // Strictly increasing (every token has at least its NUL) and no token
        // longer than a symbol.
        if i > 0 && !index_gap_ok(index[i - 1], index[i]) {
            return None;
        }
    }
    let last = index[255];
    // The table starts 8-aligned, ends with the last token's NUL, and the index
    // starts at the next 8-byte boundary: the start is one of a few positions.
    let latest = p.checked_sub(last + 1)? & !(ALIGN - 1);
    let earliest = p.saturating_sub(last + 1 + KSYM_NAME_LEN + ALIGN);
    let mut start = latest;
    let mut hit = None;
    loop {
        if let Some(tokens) = tokens_at(d, start, &index, p) {
            if hit.is_some() {
                return None; // two readings of one index: not a table we understand
            }
            hit = Some((start, tokens));
        }
        if start < earliest + ALIGN {
            break;
        }
        start -= ALIGN;
    }
    hit
}

fn index_gap_ok(prev: usize, next: usize) -> bool {
    next > prev && next - prev <= KSYM_NAME_LEN
}

/// The 256 tokens if the table at `start` matches `index` and ends (padded) at `end`.
fn tokens_at(d: &[u8], start: usize, index: &[usize; 256], end: usize) -> Option<Vec<Vec<u8>>> {
    let mut tokens = Vec::with_capacity(256);
    for i in 0..256 {
        let from = start + index[i];
        let to = match index.get(i + 1) {
            Some(&next) => start + next - 1,
            None => {
                let rest = d.get(from..end)?;
                from + rest.iter().position(|&b| b == 0)?
            }
        };
        let token = d.get(from..to)?;
        if d.get(to) != Some(&0) || token.contains(&0) {
            return None;
        }
        tokens.push(token.to_vec());
    }
    let after = start + index[255] + tokens[255].len() + 1;
    // All tokens empty is a run of zeros before a table of 0..=255 (Debian's
    // .rodata has one), not tokens: no symbol could be spelt with them.
    let spells = tokens.iter().any(|t| !t.is_empty());
    (spells && align_up(after) == end && zeros(d, after, end)).then_some(tokens)
}

/// What scripts/kallsyms.c guarantees of the tokens: a one-character token
/// is a character of some name and sits at its own byte value
/// (`insert_real_symbols_in_table`); every byte is a symbol byte.
fn check_tokens(tokens: &[Vec<u8>]) -> Result<()> {
    for (index, t) in tokens.iter().enumerate() {
        if let Some(&byte) = t.iter().find(|&&b| !symbol_byte(b)) {
            return Err(Error::TokenByte { index, byte });
        }
        if let [c] = t[..] {
            if usize::from(c) != index {
                return Err(Error::TokenMisplaced {
                    index,
                    token: char::from(c),
                });
            }
        }
    }
    Ok(())
}

/// Byte sizes of the tables between `kallsyms_names` and the token table.
fn tail_size(count: u32) -> usize {
    let n = count as usize;
    align_up(4 * n.div_ceil(256)) + align_up(3 * n)
}

/// Aligned words before the token table that could be `kallsyms_num_syms`,
/// nearest first: a count in range, the zero padding after it, room for the
/// offsets before and two bytes per name after, and a 0 where that count puts
/// `kallsyms_markers[0]`.
fn num_syms_candidates(d: &[u8], table_at: usize) -> Result<Vec<(usize, u32)>> {
    let mut out = Vec::new();
    let mut at = table_at;
    while at >= ALIGN {
        at -= ALIGN;
        let Some(count) = u32_at(d, at) else { continue };
        if count == 0 || count > MAX_SYMBOLS || u32_at(d, at + 4) != Some(0) {
            continue;
        }
        let n = count as usize;
        let Some(markers) = table_at.checked_sub(tail_size(count)) else {
            continue;
        };
        let fits_names = markers >= at + ALIGN + 2 * n;
        let fits_offsets = at >= ALIGN + align_up(4 * n);
        // The first marker is always 0; on Debian's image this alone leaves
        // one candidate of ~13 000 that fit the layout.
        if fits_names && fits_offsets && u32_at(d, markers) == Some(0) {
            out.push((at, count));
            if out.len() > MAX_CANDIDATES {
                return Err(Error::TooManyCandidates);
            }
        }
    }
    Ok(out)
}

/// Decode and cross-check every table around a `kallsyms_num_syms` at `at`.
fn tables_at(
    d: &[u8],
    at: usize,
    count: u32,
    table_at: usize,
    tokens: &[Vec<u8>],
    addressing: Addressing,
) -> Result<(Vec<Symbol>, u64)> {
    let n = count as usize;
    let oob = |symbol: u32, offset: usize| Error::Truncated { symbol, offset };
    let names_at = at + ALIGN;
    let markers_at = table_at - tail_size(count);
    let seqs_at = markers_at + align_up(4 * n.div_ceil(256));
    let base_at = at - ALIGN;
    let offsets_at = base_at - align_up(4 * n);

    // 1. Markers (the first, 0, was checked in choosing the candidate)
    //    strictly increase: every name has bytes.
    let markers: Vec<u32> = (0..n.div_ceil(256))
        .map(|k| u32_at(d, markers_at + 4 * k).unwrap_or(u32::MAX))
        .collect();
    for k in 1..markers.len() {
        if markers[k] <= markers[k - 1] {
            return Err(Error::MarkersOutOfOrder {
                index: k,
                value: markers[k],
                previous: markers[k - 1],
            });
        }
    }

    // 2. Names: lengths and markers agree, and the last name ends where the
    //    markers begin (after alignment padding).
    let names = d.get(names_at..markers_at).ok_or(Error::Truncated {
        symbol: 0,
        offset: 0,
    })?;
    let mut off = 0usize;
    let mut decoded: Vec<(char, String)> = Vec::with_capacity(n);
    for i in 0..count {
        if i % 256 == 0 {
            let k = (i / 256) as usize;
            if markers[k] as usize != off {
                return Err(Error::MarkerMismatch {
                    index: k,
                    marker: markers[k],
                    actual: off,
                });
            }
        }
        let start = off;
        let first = *names.get(off).ok_or_else(|| oob(i, start))?;
        off += 1;
        let mut len = usize::from(first);
        if first & 0x80 != 0 {
            // ULEB128 of at most two bytes (scripts/kallsyms.c refuses longer names).
            let second = *names.get(off).ok_or_else(|| oob(i, start))?;
            off += 1;
            if second & 0x80 != 0 || second == 0 {
                return Err(Error::BadLength {
                    symbol: i,
                    offset: start,
                    len: usize::from(first & 0x7f) | usize::from(second) << 7,
                });
            }
            len = usize::from(first & 0x7f) | usize::from(second) << 7;
        }
        if len == 0 {
            return Err(Error::BadLength {
                symbol: i,
                offset: start,
                len,
            });
        }
        let bytes = names.get(off..off + len).ok_or_else(|| oob(i, start))?;
        off += len;
        decoded.push(expand(i, bytes, tokens)?);
    }
    let end = names_at + off;
    if align_up(end) != markers_at {
        return Err(Error::NamesEnd { end: off });
    }
    if !zeros(d, end, markers_at) {
        return Err(Error::Padding {
            table: "kallsyms_names",
        });
    }
    if !zeros(d, markers_at + 4 * markers.len(), seqs_at) {
        return Err(Error::Padding {
            table: "kallsyms_markers",
        });
    }

    // 3. seqs_of_names: a permutation of the symbol indices.
    let mut seen = vec![false; n];
    let mut by_name = Vec::with_capacity(n);
    for i in 0..count {
        let b = d
            .get(seqs_at + 3 * i as usize..seqs_at + 3 * i as usize + 3)
            .ok_or(Error::BadSeq { index: i, seq: 0 })?;
        let seq = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        match seen.get_mut(seq as usize) {
            Some(s) if !*s => *s = true,
            _ => return Err(Error::BadSeq { index: i, seq }),
        }
        by_name.push(seq as usize);
    }
    if !zeros(d, seqs_at + 3 * n, table_at) {
        return Err(Error::Padding {
            table: "kallsyms_seqs_of_names",
        });
    }

    // 4. Addresses: kallsyms_sym_address's rule, sorted, the first relative
    //    symbol exactly at the base (record_relative_base).
    let base = u64_at(d, base_at).ok_or(Error::Truncated {
        symbol: 0,
        offset: 0,
    })?;
    if !zeros(d, offsets_at + 4 * n, base_at) {
        return Err(Error::Padding {
            table: "kallsyms_offsets",
        });
    }
    let mut symbols = Vec::with_capacity(n);
    let mut first_relative: Option<usize> = None;
    for (i, (kind, name)) in decoded.into_iter().enumerate() {
        let symbol = i as u32;
        let offset =
            u32_at(d, offsets_at + 4 * i).ok_or(Error::Truncated { symbol, offset: 0 })? as i32;
        let (addr, absolute) = match addressing {
            Addressing::RelativeAbsolutePercpu if offset >= 0 => (offset as u64, true),
            Addressing::RelativeAbsolutePercpu => {
                // relative_base - 1 - offset, with -1 - offset in 0..=i32::MAX.
                let distance = (-1 - i64::from(offset)) as u64;
                let addr = base
                    .checked_add(distance)
                    .ok_or(Error::AddressOverflow { symbol, offset })?;
                (addr, false)
            }
            Addressing::Relative => {
                let addr = base
                    .checked_add(u64::from(offset as u32))
                    .ok_or(Error::AddressOverflow { symbol, offset })?;
                (addr, false)
            }
        };
        if !absolute && first_relative.is_none() {
            first_relative = Some(i);
        }
        if let Some(prev) = symbols.last().map(|s: &Symbol| s.addr) {
            if addr < prev {
                return Err(Error::Unsorted {
                    symbol,
                    name,
                    addr,
                    previous: prev,
                });
            }
        }
        symbols.push(Symbol {
            addr,
            kind,
            name,
            absolute,
        });
    }
    let first = first_relative.ok_or(Error::NoRelativeSymbol)?;
    if symbols[first].addr != base {
        return Err(Error::BaseMismatch {
            base,
            first: symbols[first].addr,
            name: symbols[first].name.clone(),
        });
    }

    // 5. seqs_of_names lists the symbols in scripts/kallsyms.c's name order
    //    (compare_names: strcmp of the name cut at ".llvm.", then address,
    //    then table index). The lengths and markers cannot see a corrupted
    //    token byte inside a name; this order usually can.
    let key = |seq: usize| {
        let s = &symbols[seq];
        let name = s
            .name
            .find(".llvm.")
            .map_or(&s.name[..], |cut| &s.name[..cut]);
        (name.as_bytes(), s.addr, seq)
    };
    for (i, pair) in by_name.windows(2).enumerate() {
        if key(pair[0]) >= key(pair[1]) {
            return Err(Error::NameOrder {
                index: i as u32 + 1,
                name: symbols[pair[1]].name.clone(),
                previous: symbols[pair[0]].name.clone(),
            });
        }
    }
    Ok((symbols, base))
}

/// One symbol's tokens → its type letter and name.
fn expand(symbol: u32, bytes: &[u8], tokens: &[Vec<u8>]) -> Result<(char, String)> {
    let mut out = Vec::with_capacity(32);
    for &b in bytes {
        out.extend_from_slice(&tokens[usize::from(b)]);
        // The type letter is not part of the name's KSYM_NAME_LEN - 1 bytes.
        if out.len() > KSYM_NAME_LEN {
            return Err(Error::NameTooLong {
                symbol,
                len: out.len(),
            });
        }
    }
    let Some((&kind, name)) = out.split_first() else {
        return Err(Error::EmptyName { symbol, kind: ' ' });
    };
    if !kind.is_ascii_alphabetic() {
        return Err(Error::BadType { symbol, byte: kind });
    }
    let kind = char::from(kind);
    if name.is_empty() {
        return Err(Error::EmptyName { symbol, kind });
    }
    if !name.iter().copied().all(symbol_byte) {
        return Err(Error::BadName {
            symbol,
            name: String::from_utf8_lossy(name).into_owned(),
        });
    }
    let name = String::from_utf8(name.to_vec()).expect("invariant: checked ASCII");
    Ok((kind, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section holding kallsyms tables laid out as scripts/kallsyms.c
    /// writes them, with the offsets of each table for corrupting them.
    struct Fixture {
        data: Vec<u8>,
        num_syms: usize,
        /// Where each symbol's length byte is.
        name_offsets: Vec<usize>,
        markers: usize,
        seqs: usize,
        token_table: usize,
        token_index: usize,
        base: usize,
    }

    const ADDR: u64 = 0xffff_ffff_8200_0000;
    /// A two-character token in slot 1 (a byte no name contains), as
    /// optimize_result fills unused slots with frequent pairs.
    const PAIR: &[u8] = b"sy";

    fn pad(d: &mut Vec<u8>) {
        while !d.len().is_multiple_of(ALIGN) {
            d.push(0);
        }
    }

    /// `symbols`: (address, type, name, absolute), sorted by address.
    fn fixture(symbols: &[(u64, char, &str, bool)]) -> Fixture {
        let mut tokens: Vec<Vec<u8>> = vec![Vec::new(); 256];
        for (_, kind, name, _) in symbols {
            for b in std::iter::once(*kind as u8).chain(name.bytes()) {
                tokens[usize::from(b)] = vec![b];
            }
        }
        tokens[1] = PAIR.to_vec();
        let compress = |s: &[u8]| -> Vec<u8> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < s.len() {
                if s[i..].starts_with(PAIR) {
                    out.push(1);
                    i += 2;
                } else {
                    out.push(s[i]);
                    i += 1;
                }
            }
            out
        };
        let base_addr = symbols
            .iter()
            .find(|s| !s.3)
            .map(|s| s.0)
            .expect("a relative symbol");
        // Something before the tables, as in a real .rodata.
        let mut d: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) | 1).collect();
        for s in symbols {
            let off = if s.3 {
                s.0 as i32
            } else {
                (base_addr as i64 - s.0 as i64 - 1) as i32
            };
            d.extend_from_slice(&off.to_le_bytes());
        }
        pad(&mut d);
        let base = d.len();
        d.extend_from_slice(&base_addr.to_le_bytes());
        let num_syms = d.len();
        d.extend_from_slice(&(symbols.len() as u32).to_le_bytes());
        pad(&mut d);
        let names = d.len();
        let mut markers = Vec::new();
        let mut name_offsets = Vec::new();
        for (i, (_, kind, name, _)) in symbols.iter().enumerate() {
            name_offsets.push(d.len());
            if i % 256 == 0 {
                markers.push((d.len() - names) as u32);
            }
            let mut full = vec![*kind as u8];
            full.extend_from_slice(name.as_bytes());
            let c = compress(&full);
            if c.len() > 0x7f {
                d.push((c.len() & 0x7f) as u8 | 0x80);
                d.push((c.len() >> 7) as u8);
            } else {
                d.push(c.len() as u8);
            }
            d.extend_from_slice(&c);
        }
        pad(&mut d);
        let markers_at = d.len();
        for m in markers {
            d.extend_from_slice(&m.to_le_bytes());
        }
        pad(&mut d);
        let seqs = d.len();
        let mut order: Vec<usize> = (0..symbols.len()).collect();
        order.sort_by_key(|&i| (symbols[i].2, symbols[i].0, i));
        for i in order {
            d.extend_from_slice(&(i as u32).to_be_bytes()[1..]);
        }
        pad(&mut d);
        let token_table = d.len();
        let mut index = Vec::new();
        for t in &tokens {
            index.push((d.len() - token_table) as u16);
            d.extend_from_slice(t);
            d.push(0);
        }
        pad(&mut d);
        let token_index = d.len();
        for i in index {
            d.extend_from_slice(&i.to_le_bytes());
        }
        d.extend_from_slice(&[0x5a; 40]);
        Fixture {
            data: d,
            num_syms,
            name_offsets,
            markers: markers_at,
            seqs,
            token_table,
            token_index,
            base,
        }
    }

    fn decode_fixture(f: &Fixture) -> Result<Kallsyms> {
        decode(
            Section {
                data: &f.data,
                addr: ADDR,
            },
            Addressing::RelativeAbsolutePercpu,
        )
    }

    fn small() -> Vec<(u64, char, String, bool)> {
        vec![
            (0, 'A', "fixed_percpu_data".into(), true),
            (0x6000, 'A', "cpu_tss_rw".into(), true),
            (0xffff_ffff_8100_0000, 'T', "startup_64".into(), false),
            (0xffff_ffff_8100_0000, 'T', "_text".into(), false),
            (0xffff_ffff_8100_0040, 't', "sys_sync".into(), false),
            (0xffff_ffff_8200_1000, 'D', "linux_banner".into(), false),
            (0xffff_ffff_8300_0000, 'b', "a".repeat(200), false),
        ]
    }

    /// `count` symbols, so that there are several markers.
    fn many(count: usize) -> Vec<(u64, char, String, bool)> {
        (0..count)
            .map(|i| {
                let kind = if i % 3 == 0 { 'T' } else { 't' };
                (
                    0xffff_ffff_8100_0000 + 16 * i as u64,
                    kind,
                    format!("sym_{i}"),
                    false,
                )
            })
            .collect()
    }

    fn build(symbols: &[(u64, char, String, bool)]) -> Fixture {
        let v: Vec<(u64, char, &str, bool)> = symbols
            .iter()
            .map(|(a, k, n, abs)| (*a, *k, n.as_str(), *abs))
            .collect();
        fixture(&v)
    }

    fn inconsistent(e: Error) -> Error {
        match e {
            Error::Inconsistent { reason, .. } => *reason,
            other => panic!("expected Inconsistent, got {other}"),
        }
    }

    #[test]
    fn decodes_the_kernel_layout() {
        for symbols in [small(), many(700)] {
            let f = build(&symbols);
            let k = decode_fixture(&f).expect("decodes");
            let got: Vec<(u64, char, String, bool)> = k
                .symbols
                .iter()
                .map(|s| (s.addr, s.kind, s.name.clone(), s.absolute))
                .collect();
            assert_eq!(got, symbols);
            assert_eq!(k.num_syms_at, ADDR + f.num_syms as u64);
            assert_eq!(k.token_table_at, ADDR + f.token_table as u64);
        }
        let k = decode_fixture(&build(&small())).expect("decodes");
        assert_eq!(k.relative_base, 0xffff_ffff_8100_0000);
        let map = k.to_system_map();
        let mut lines = map.lines();
        assert_eq!(lines.next(), Some("0000000000000000 A fixed_percpu_data"));
        assert_eq!(lines.nth(2), Some("ffffffff81000000 T _text"));
    }

    #[test]
    fn unsigned_offsets_without_absolute_percpu() {
        let symbols = [
            (0xffff_ffff_8100_0000u64, 'T', "_text"),
            (0xffff_ffff_8100_0010, 't', "b"),
        ];
        let mut f = fixture(&[
            (symbols[0].0, 'T', "_text", false),
            (symbols[1].0, 't', "b", false),
        ]);
        // Relative mode stores addr - base, unsigned.
        let offsets = f.base - 8;
        f.data[offsets..offsets + 4].copy_from_slice(&0u32.to_le_bytes());
        f.data[offsets + 4..offsets + 8].copy_from_slice(&0x10u32.to_le_bytes());
        let k = decode(
            Section {
                data: &f.data,
                addr: ADDR,
            },
            Addressing::Relative,
        )
        .expect("decodes");
        assert_eq!(k.symbols[1].addr, symbols[1].0);
        assert!(!k.symbols[1].absolute);
    }

    #[test]
    fn truncated_names_are_an_error() {
        let mut f = build(&small());
        // The last symbol's length claims more bytes than the table has.
        let last = *f.name_offsets.last().expect("names");
        f.data[last..last + 2].copy_from_slice(&[0xff, 0x7f]);
        let e = inconsistent(decode_fixture(&f).expect_err("refused"));
        assert!(matches!(e, Error::Truncated { symbol: 6, .. }), "{e}");
    }

    #[test]
    fn markers_out_of_order_are_an_error() {
        let mut f = build(&many(700));
        let (m1, m2) = (f.markers + 4, f.markers + 8);
        let a: [u8; 4] = f.data[m1..m1 + 4].try_into().expect("4 bytes");
        let b: [u8; 4] = f.data[m2..m2 + 4].try_into().expect("4 bytes");
        f.data[m1..m1 + 4].copy_from_slice(&b);
        f.data[m2..m2 + 4].copy_from_slice(&a);
        let e = inconsistent(decode_fixture(&f).expect_err("refused"));
        assert!(
            matches!(e, Error::MarkersOutOfOrder { index: 2, .. }),
            "{e}"
        );
        // A marker that is in order but points into the middle of a name.
        let mut f = build(&many(700));
        let m = u32_at(&f.data, f.markers + 4).expect("marker");
        f.data[f.markers + 4..f.markers + 8].copy_from_slice(&(m + 1).to_le_bytes());
        let e = inconsistent(decode_fixture(&f).expect_err("refused"));
        assert!(matches!(e, Error::MarkerMismatch { index: 1, .. }), "{e}");
    }

    #[test]
    fn token_index_out_of_range_is_an_error() {
        let mut f = build(&small());
        let at = f.token_index + 2 * 200;
        f.data[at..at + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        let e = decode_fixture(&f).expect_err("refused");
        assert_eq!(e, Error::NoTokenTable);
    }

    #[test]
    fn misplaced_single_character_token_is_an_error() {
        // Swap the bytes of the one-character tokens "a" and "b".
        let mut f = build(&small());
        let slot = |f: &Fixture, c: u8| {
            f.token_table
                + usize::from(u16_at(&f.data, f.token_index + 2 * usize::from(c)).expect("index"))
        };
        let (a, b) = (slot(&f, b'a'), slot(&f, b'b'));
        f.data.swap(a, b);
        let e = decode_fixture(&f).expect_err("refused");
        assert_eq!(
            e,
            Error::TokenMisplaced {
                index: usize::from(b'a'),
                token: 'b'
            }
        );
    }

    #[test]
    fn other_inconsistencies_are_named() {
        // A repeated name index.
        let mut f = build(&small());
        f.data.copy_within(f.seqs + 3..f.seqs + 6, f.seqs);
        let e = inconsistent(decode_fixture(&f).expect_err("refused"));
        assert!(matches!(e, Error::BadSeq { index: 1, .. }), "{e}");
        // A token byte of a name changed: lengths and markers still agree,
        // the name order does not ("sys_sync" becomes "as_sync", no longer
        // the last name).
        let mut f = build(&small());
        let sync = f.name_offsets[4];
        let name = &f.data[sync + 1..sync + 1 + 7];
        assert_eq!(name, &[b't', 1, b's', b'_', 1, b'n', b'c'][..], "fixture");
        f.data[sync + 2] = b'a';
        let e = inconsistent(decode_fixture(&f).expect_err("refused"));
        assert!(matches!(e, Error::NameOrder { .. }), "{e}");
        // An address out of order.
        let mut f = build(&small());
        let sym5 = f.base - align_up(4 * 7) + 4 * 5;
        f.data[sym5..sym5 + 4].copy_from_slice(&(-2i32).to_le_bytes());
        let e = inconsistent(decode_fixture(&f).expect_err("refused"));
        assert!(matches!(e, Error::Unsorted { symbol: 5, .. }), "{e}");
        // A base that is not the first relative symbol: symbols 2 and 3 one
        // byte after it. (A different base moves every relative symbol with
        // it; from_image catches that by _text against the .text section.)
        let mut f = build(&small());
        let sym2 = f.base - align_up(4 * 7) + 4 * 2;
        f.data[sym2..sym2 + 4].copy_from_slice(&(-2i32).to_le_bytes());
        f.data[sym2 + 4..sym2 + 8].copy_from_slice(&(-2i32).to_le_bytes());
        let e = inconsistent(decode_fixture(&f).expect_err("refused"));
        assert!(matches!(e, Error::BaseMismatch { .. }), "{e}");
        // Names that end before the markers: the last name one byte shorter.
        let mut f = build(&small());
        let last = *f.name_offsets.last().expect("names");
        assert_eq!(f.data[last..last + 2], [0xc9, 0x01], "fixture: 201 bytes");
        f.data[last] = 0xc8;
        let e = inconsistent(decode_fixture(&f).expect_err("refused"));
        assert!(
            matches!(
                e,
                Error::NamesEnd { .. }
                    | Error::Padding {
                        table: "kallsyms_names"
                    }
            ),
            "{e}"
        );
    }

    #[test]
    fn garbage_and_cut_tables_are_errors_not_panics() {
        let f = build(&many(300));
        // Every cut that loses part of a table (the fixture ends with 40 other bytes).
        for cut in (0..f.data.len() - 40).step_by(24) {
            let r = decode(
                Section {
                    data: &f.data[..cut],
                    addr: ADDR,
                },
                Addressing::RelativeAbsolutePercpu,
            );
            assert!(r.is_err(), "cut at {cut}");
        }
        let noise: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(
            decode(
                Section {
                    data: &noise,
                    addr: ADDR
                },
                Addressing::RelativeAbsolutePercpu
            )
            .expect_err("no tables"),
            Error::NoTokenTable
        );
        assert_eq!(
            decode(
                Section {
                    data: &f.data,
                    addr: u64::MAX - 16
                },
                Addressing::RelativeAbsolutePercpu
            )
            .expect_err("no such addresses"),
            Error::SectionAddress {
                addr: u64::MAX - 16
            }
        );
        let zeros = vec![0u8; 4096];
        assert!(decode(
            Section {
                data: &zeros,
                addr: ADDR
            },
            Addressing::RelativeAbsolutePercpu
        )
        .is_err());
    }
}
