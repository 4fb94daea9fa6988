//! The special sections the differ understands: per-entry tables that point into code.
//!
//! Entry sizes are those of Linux 6.1 on x86-64 (Debian's `linux-source-6.1`), read from the
//! structures in the kernel tree: `struct bug_entry` (include/asm-generic/bug.h, relative
//! pointers + CONFIG_DEBUG_BUGVERBOSE), `struct exception_table_entry`
//! (arch/x86/include/asm/extable.h), `struct jump_entry` (include/linux/jump_label.h),
//! `struct alt_instr` (arch/x86/include/asm/alternative.h, `__packed`),
//! `struct paravirt_patch_site` (arch/x86/include/asm/paravirt_types.h),
//! `struct static_call_site` (include/linux/static_call_types.h), `struct orc_entry`
//! (arch/x86/include/asm/orc_types.h, `__packed`), and `s32` site lists written by objtool.
//! The integration test `differ::entry_sizes_match_kernel_headers` compiles the structures
//! against the installed headers and checks this table; `load` also checks every object
//! (size a multiple of the entry, the anchor relocation present in every entry).

/// How the entries of a special section are tied to code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// A relocation at this offset inside each entry points at the code the entry belongs to.
    Reloc(u64),
    /// Entry `i` belongs with entry `i` of the named section (`.orc_unwind` vs `.orc_unwind_ip`).
    ParallelTo(&'static str),
}

/// Which bytes at the code site the kernel may rewrite (for run-pre matching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    /// The site is not rewritten.
    Kept,
    /// A fixed number of bytes is rewritten.
    Fixed(u32),
    /// The length is the byte at this offset inside the entry.
    LenAt(u64),
    /// A jump label: 2-byte (`jmp rel8` / `66 90`) or 5-byte site.
    JumpLabel,
    /// A retpoline site: `call`/`jmp rel32` (5 bytes) or `jcc rel32` (6 bytes).
    Branch,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Special {
    pub name: &'static str,
    pub entry_size: u64,
    pub anchor: Anchor,
    pub site: Site,
    /// Offset of the field naming a static key / static call key, whose home decides whether
    /// the entry can work in a livepatch module (see `include`).
    pub key_at: Option<u64>,
}

/// Linux 6.1, x86-64.
pub(crate) const SPECIAL_SECTIONS: &[Special] = &[
    Special {
        name: "__mcount_loc",
        entry_size: 8,
        anchor: Anchor::Reloc(0),
        site: Site::Fixed(5),
        key_at: None,
    },
    Special {
        name: "__bug_table",
        entry_size: 12,
        anchor: Anchor::Reloc(0),
        site: Site::Kept,
        key_at: None,
    },
    Special {
        name: "__ex_table",
        entry_size: 12,
        anchor: Anchor::Reloc(0),
        site: Site::Kept,
        key_at: None,
    },
    Special {
        name: "__jump_table",
        entry_size: 16,
        anchor: Anchor::Reloc(0),
        site: Site::JumpLabel,
        key_at: Some(8),
    },
    Special {
        name: ".altinstructions",
        entry_size: 12,
        anchor: Anchor::Reloc(0),
        site: Site::LenAt(10),
        key_at: None,
    },
    Special {
        name: ".parainstructions",
        entry_size: 16,
        anchor: Anchor::Reloc(0),
        site: Site::LenAt(9),
        key_at: None,
    },
    Special {
        name: ".static_call_sites",
        entry_size: 8,
        anchor: Anchor::Reloc(0),
        site: Site::Fixed(5),
        key_at: Some(4),
    },
    Special {
        name: ".retpoline_sites",
        entry_size: 4,
        anchor: Anchor::Reloc(0),
        site: Site::Branch,
        key_at: None,
    },
    Special {
        name: ".return_sites",
        entry_size: 4,
        anchor: Anchor::Reloc(0),
        site: Site::Fixed(5),
        key_at: None,
    },
    Special {
        name: ".call_sites",
        entry_size: 4,
        anchor: Anchor::Reloc(0),
        site: Site::Fixed(5),
        key_at: None,
    },
    Special {
        name: ".smp_locks",
        entry_size: 4,
        anchor: Anchor::Reloc(0),
        site: Site::Fixed(1),
        key_at: None,
    },
    Special {
        name: ".orc_unwind_ip",
        entry_size: 4,
        anchor: Anchor::Reloc(0),
        site: Site::Kept,
        key_at: None,
    },
    Special {
        name: ".orc_unwind",
        entry_size: 6,
        anchor: Anchor::ParallelTo(".orc_unwind_ip"),
        site: Site::Kept,
        key_at: None,
    },
];

/// The table entry for a section name, if it is a special section.
pub(crate) fn lookup(name: &str) -> Option<&'static Special> {
    SPECIAL_SECTIONS.iter().find(|s| s.name == name)
}

/// Public view of the table, for tools and tests that check it against a kernel tree.
pub fn entry_sizes() -> Vec<(&'static str, u64)> {
    SPECIAL_SECTIONS
        .iter()
        .map(|s| (s.name, s.entry_size))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_sections_exist_in_table() {
        for s in SPECIAL_SECTIONS {
            if let Anchor::ParallelTo(other) = s.anchor {
                assert!(
                    lookup(other).is_some(),
                    "{} points at missing {other}",
                    s.name
                );
            }
        }
    }
}
