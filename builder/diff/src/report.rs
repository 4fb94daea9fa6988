//! The differ's report: JSON for tools (serde), text for people (Display).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What happened to one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionStatus {
    Changed,
    New,
    Removed,
}

impl fmt::Display for FunctionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FunctionStatus::Changed => "changed",
            FunctionStatus::New => "new",
            FunctionStatus::Removed => "removed",
        })
    }
}

/// One changed, new or removed function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionChange {
    /// The name in the running kernel (pre build) for changed/removed, post name for new.
    pub name: String,
    pub status: FunctionStatus,
    /// The (renamed, global) symbol in the patch object: `<prefix><name>`; None when removed.
    pub symbol: Option<String>,
    /// Position among same-named local symbols of the target (0 when unique or global).
    pub sympos: u32,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
    /// Hex SHA-256 of the pre build's bytes of the function (relocation fields are zero).
    pub pre_sha256: Option<String>,
}

/// Something pulled into the patch object, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inclusion {
    pub symbol: String,
    pub section: String,
    pub reason: String,
}

/// One reason the differ will not produce a patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub symbol: String,
    pub section: String,
    pub reason: String,
}

/// A reference from the patch object to something that stays in the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct External {
    /// The undefined symbol's name in the patch object: a plain exported name, or
    /// `.klp.sym.<object>.<name>,<sympos>`.
    pub symbol: String,
    /// `vmlinux` or the module name.
    pub object: String,
    pub name: String,
    pub sympos: u32,
}

/// Run-pre data: what the running kernel's copy of a changed function must look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPre {
    pub name: String,
    pub sympos: u32,
    /// The pre build's bytes of the function (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub code: Vec<u8>,
    /// Sorted, non-overlapping `(start, len)` byte ranges that legitimately differ in the
    /// running kernel: relocation fields, the ftrace call, and every site the kernel rewrites
    /// (alternatives, paravirt, jump labels, static calls, retpolines, return thunks, locks).
    pub skip: Vec<(u32, u32)>,
    /// Relocation fields (all inside `skip`) whose live value run-pre checks: the field must
    /// refer to the same symbol in the running kernel as in the pre build.
    #[serde(default)]
    pub relocs: Vec<RunPreReloc>,
}

/// How a relocated field's value derives from its symbol `S`, addend `A` and address `P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelocKind {
    /// `R_X86_64_PC32`, `R_X86_64_PLT32`: int32 `S + A - P`.
    Pc32,
    /// `R_X86_64_32S`: int32 `S + A`, sign-extended.
    Abs32s,
    /// `R_X86_64_32`: uint32 `S + A`, zero-extended.
    Abs32,
    /// `R_X86_64_64`: `S + A`.
    Abs64,
}

impl RelocKind {
    /// The kind run-pre checks for an ELF relocation type, if any.
    pub fn from_elf(r_type: u32) -> Option<RelocKind> {
        use object::elf;
        match r_type {
            elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 => Some(RelocKind::Pc32),
            elf::R_X86_64_32S => Some(RelocKind::Abs32s),
            elf::R_X86_64_32 => Some(RelocKind::Abs32),
            elf::R_X86_64_64 => Some(RelocKind::Abs64),
            _ => None,
        }
    }

    /// Bytes of the field.
    pub fn width(self) -> u32 {
        match self {
            RelocKind::Abs64 => 8,
            _ => 4,
        }
    }
}

/// One value-checked relocation of a replaced function's pre code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPreReloc {
    /// Offset of the field from the function's start.
    pub offset: u32,
    pub kind: RelocKind,
    /// `S`: the symbol, spelled as the patch object would spell a reference to it.
    pub target: External,
    /// `A`.
    pub addend: i64,
}

/// The whole report for one object pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub target_object: String,
    pub functions: Vec<FunctionChange>,
    /// Functions whose only difference is a `__LINE__` immediate (not changes).
    pub line_only: Vec<String>,
    pub included: Vec<Inclusion>,
    pub refusals: Vec<Refusal>,
    pub externals: Vec<External>,
    pub run_pre: Vec<RunPre>,
}

impl Report {
    fn names(&self, status: FunctionStatus) -> Vec<&str> {
        self.functions
            .iter()
            .filter(|f| f.status == status)
            .map(|f| f.name.as_str())
            .collect()
    }
    /// Names of changed functions (sorted).
    pub fn changed(&self) -> Vec<&str> {
        self.names(FunctionStatus::Changed)
    }
    /// Names of new functions (sorted).
    pub fn new_functions(&self) -> Vec<&str> {
        self.names(FunctionStatus::New)
    }
    /// Names of removed functions (sorted).
    pub fn removed(&self) -> Vec<&str> {
        self.names(FunctionStatus::Removed)
    }
    /// Symbols named by refusals (sorted, deduplicated).
    pub fn refused(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.refusals.iter().map(|r| r.symbol.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "object: {}", self.target_object)?;
        for st in [
            FunctionStatus::Changed,
            FunctionStatus::New,
            FunctionStatus::Removed,
        ] {
            for func in self.functions.iter().filter(|x| x.status == st) {
                write!(f, "  {st:<8} {}", func.name)?;
                if let Some(sym) = &func.symbol {
                    write!(f, " -> {sym}")?;
                }
                match (func.old_size, func.new_size) {
                    (Some(a), Some(b)) => write!(f, " ({a} -> {b} bytes)")?,
                    (None, Some(b)) => write!(f, " ({b} bytes)")?,
                    (Some(a), None) => write!(f, " ({a} bytes)")?,
                    (None, None) => {}
                }
                writeln!(f)?;
            }
        }
        for name in &self.line_only {
            writeln!(
                f,
                "  line-only {name} (only __LINE__ immediates differ; not a change)"
            )?;
        }
        for inc in &self.included {
            writeln!(
                f,
                "  include  {} [{}]: {}",
                inc.symbol, inc.section, inc.reason
            )?;
        }
        for ext in &self.externals {
            writeln!(
                f,
                "  extern   {} ({} {} sympos {})",
                ext.symbol, ext.object, ext.name, ext.sympos
            )?;
        }
        for r in &self.refusals {
            writeln!(f, "  REFUSED  {} [{}]: {}", r.symbol, r.section, r.reason)?;
        }
        if self.functions.is_empty() && self.refusals.is_empty() {
            writeln!(f, "  no functional change")?;
        }
        Ok(())
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_pre_round_trips_as_hex() {
        let r = RunPre {
            name: "f".into(),
            sympos: 0,
            code: vec![0xe8, 0, 1],
            skip: vec![(1, 4)],
            relocs: Vec::new(),
        };
        let json = serde_json::to_string(&r).expect("serialize");
        assert!(json.contains("\"e80001\""), "{json}");
        let back: RunPre = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);
    }
}
