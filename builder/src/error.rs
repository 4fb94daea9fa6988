//! Errors of the `ksplice-create` pipeline (checkout, kbuild, identity, packaging).

use std::fmt;
use std::path::PathBuf;

/// Result alias of the builder pipeline.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One reason the builder will not produce an update; several are collected
/// before the pipeline fails, so one run reports all of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// What is refused: a source file, an object, or `object:function`.
    pub what: String,
    /// Why, in words a patch author can act on.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

/// Why `ksplice-create` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The change cannot be made into a safe live update (exit code 2).
    #[error("refused:\n{}", list(.0))]
    Refused(Vec<Refusal>),

    /// The change alters no code the running kernel executes (exit code 3).
    #[error("no functional change in {}", .objects.join(", "))]
    NoChange { objects: Vec<String> },

    /// A required input is missing; `hint` says where it may come from.
    #[error("missing {what}: {hint}")]
    Missing { what: &'static str, hint: String },

    /// Two sources of the target's identity disagree.
    #[error(
        "target {field} disagrees: {first_source} says {first:?}, {second_source} says {second:?}"
    )]
    Disagree {
        field: &'static str,
        first_source: String,
        first: String,
        second_source: String,
        second: String,
    },

    /// An option value is unusable.
    #[error("invalid {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A git operation failed.
    #[error("git: {what}: {source}")]
    Git {
        what: String,
        #[source]
        source: git2::Error,
    },

    /// An external command failed; `output` is the tail of what it printed.
    #[error("{command} failed ({status}) in {dir}:\n{output}")]
    Command {
        command: String,
        dir: PathBuf,
        status: String,
        output: String,
    },

    /// The patch does not apply to the pre tree.
    #[error("{patch}: does not apply:\n{output}")]
    PatchDoesNotApply { patch: PathBuf, output: String },

    /// The target kernel image cannot be read.
    #[error("{path}: {reason}")]
    BadImage { path: PathBuf, reason: String },

    /// The image's kallsyms tables cannot be found or do not hold together.
    #[error("{path}: kallsyms: {source}")]
    Kallsyms {
        path: PathBuf,
        #[source]
        source: crate::target::kallsyms::Error,
    },

    /// A file the builder parses is malformed.
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// The object differ found malformed input.
    #[error("differ: {object}: {source}")]
    Differ {
        object: String,
        #[source]
        source: crate::diff::Error,
    },

    /// The update module could not be generated, built or checked.
    #[error("update module: {0}")]
    Module(#[from] crate::module::Error),

    /// Writing or signing the package failed.
    #[error("package: {0}")]
    Package(#[from] manifests::Error),
}

impl Error {
    /// Attach a path to an I/O error.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Attach a description to a git error.
    pub(crate) fn git(what: impl Into<String>) -> impl FnOnce(git2::Error) -> Error {
        let what = what.into();
        move |source| Error::Git { what, source }
    }

    /// The process exit code documented in docs/builder.md.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused(_) => 2,
            Error::NoChange { .. } => 3,
            _ => 1,
        }
    }
}

fn list(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(|r| format!("  {r}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(Error::Refused(vec![]).exit_code(), 2);
        assert_eq!(Error::NoChange { objects: vec![] }.exit_code(), 3);
        let missing = Error::Missing {
            what: "release",
            hint: String::new(),
        };
        assert_eq!(missing.exit_code(), 1);
    }

    #[test]
    fn refusals_are_listed_one_per_line() {
        let e = Error::Refused(vec![
            Refusal {
                what: "lib/string.c".into(),
                reason: "lib/ is not patchable".into(),
            },
            Refusal {
                what: "Makefile".into(),
                reason: "build rules changed".into(),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "refused:\n  lib/string.c: lib/ is not patchable\n  Makefile: build rules changed"
        );
    }
}
