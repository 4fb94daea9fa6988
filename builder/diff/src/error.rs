//! Errors of the object differ: malformed input (exit 1) and refusals (exit 2).

use super::report::Report;

/// Which input of the differ an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The object built from the old (running) source.
    Pre,
    /// The object built from the new source.
    Post,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Pre => "pre",
            Side::Post => "post",
        })
    }
}

/// Why the differ produced no patch object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is not an ELF file the `object` crate can parse.
    #[error("{side} object is not a readable ELF file")]
    Parse {
        side: Side,
        #[source]
        source: object::read::Error,
    },
    /// The input parses but is not what kbuild produces for x86-64, or is internally inconsistent.
    #[error("{side} object is malformed: {detail}")]
    Malformed { side: Side, detail: String },
    /// A special section's size is not a multiple of the entry size this kernel's headers define.
    #[error("{side} object: section {section} has size {size}, not a multiple of its entry size {entry_size}")]
    EntrySize {
        side: Side,
        section: String,
        size: u64,
        entry_size: u64,
    },
    /// The change cannot be patched safely; the report lists every refusal.
    #[error("refused: {}", summarize(report))]
    Refused { report: Box<Report> },
    /// Writing the patch object failed.
    #[error("cannot write the patch object")]
    Write {
        #[source]
        source: object::build::Error,
    },
}

fn summarize(report: &Report) -> String {
    let parts: Vec<String> = report
        .refusals
        .iter()
        .map(|r| format!("{} in {}: {}", r.symbol, r.section, r.reason))
        .collect();
    parts.join("; ")
}

impl Error {
    /// The documented exit code of `ksplice-build diff` for this error: 2 refused, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused { .. } => 2,
            _ => 1,
        }
    }
}
