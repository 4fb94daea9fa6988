//! Errors of `ksplice-build repo`: each refusal a variant naming what it refused.

use std::path::PathBuf;

/// Result alias of the repository commands.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from tough's key-source interface.
pub type KeyError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a `ksplice-build repo` command failed; [`Error::exit_code`] maps it to the
/// documented exit codes (docs/fleet.md "Publishing").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The tokio runtime tough runs on could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),

    /// A package is not a well-formed ksplice package (or unreadable as one).
    #[error("{path}: not a valid ksplice package: {source}")]
    Package {
        path: PathBuf,
        #[source]
        source: manifests::Error,
    },

    /// The target metadata derived from a package and the options is invalid
    /// (channel, waves, published time).
    #[error("target metadata for {id}: {source}")]
    TargetInfo {
        id: String,
        #[source]
        source: manifests::Error,
    },

    /// A time option is not RFC 3339 UTC.
    #[error("--published: {0}")]
    Published(#[source] manifests::Error),

    /// The same update id is already in the repository with other bytes.
    #[error(
        "update {id} is already in the repository with other bytes (sha256 {existing}, \
         offered {offered}); pass --replace to replace it"
    )]
    Conflict {
        id: String,
        existing: String,
        offered: String,
    },

    /// Two packages given at once have the same update id.
    #[error("update {id} is given twice")]
    DuplicateId { id: String },

    /// `DIR` already holds a repository (or part of one).
    #[error("{path} exists: refusing to initialize over an existing repository")]
    AlreadyInitialized { path: PathBuf },

    /// `DIR` is not a repository `repo init` made.
    #[error("{path}: not a ksplice repository ({reason})")]
    NotARepository { path: PathBuf, reason: String },

    /// `repo.toml` does not parse or breaks a rule.
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },

    /// An option value is unusable.
    #[error("invalid {option} {value:?}: {reason}")]
    InvalidOption {
        option: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A key file is unreadable as a signing key.
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },

    /// A key file group or others may read.
    #[error("{path}: key file mode {mode:04o} lets others read it; chmod 600 it")]
    KeyPermissions { path: PathBuf, mode: u32 },

    /// Not enough of a role's keys were given to sign it.
    #[error(
        "{role}: {have} of the role's keys given, {threshold} needed to sign \
         (pass them with {hint})"
    )]
    MissingKeys {
        role: &'static str,
        have: usize,
        threshold: u64,
        hint: &'static str,
    },

    /// A threshold above the number of keys, or zero.
    #[error("{role}: threshold {threshold} with {keys} key(s)")]
    Threshold {
        role: &'static str,
        threshold: u64,
        keys: usize,
    },

    /// Metadata already in the repository does not parse.
    #[error("{path}: {source}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// tough failed to build or sign a role.
    #[error("{what}: {source}")]
    Tuf {
        what: String,
        /// Boxed: tough's errors carry backtraces and are large.
        #[source]
        source: Box<tough::error::Error>,
    },

    /// tough's verifier refused metadata this command just signed.
    #[error("{what}: {source}")]
    Verify {
        what: String,
        #[source]
        source: Box<tough::schema::Error>,
    },
}

impl Error {
    /// Attach a path to an I/O error.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Attach a description to a tough error.
    pub(crate) fn tuf(what: impl Into<String>) -> impl FnOnce(tough::error::Error) -> Error {
        let what = what.into();
        move |source| Error::Tuf {
            what,
            source: Box::new(source),
        }
    }

    /// 1: I/O, runtime, unreadable metadata or tough failures; 2: refused input
    /// (invalid package, conflicting id, bad option, key or threshold problems).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Io { .. }
            | Error::Runtime(_)
            | Error::Metadata { .. }
            | Error::Tuf { .. }
            | Error::Verify { .. }
            | Error::Config { .. } => 1,
            _ => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_exit_2_and_failures_exit_1() {
        let conflict = Error::Conflict {
            id: "fix-1".into(),
            existing: "a".into(),
            offered: "b".into(),
        };
        assert_eq!(conflict.exit_code(), 2);
        let missing = Error::MissingKeys {
            role: "targets",
            have: 0,
            threshold: 1,
            hint: "--targets-key",
        };
        assert_eq!(missing.exit_code(), 2);
        let io = Error::io("/x")(std::io::Error::other("disk"));
        assert_eq!(io.exit_code(), 1);
    }
}
