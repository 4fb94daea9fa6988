//! Errors of the client library; each maps to one documented exit code.

use std::io;
use std::path::PathBuf;

use crate::livepatch::BlockingTask;

/// Exit codes of the `ksplice` commands (docs/client.md lists them).
pub mod exit {
    /// The command did what was asked (for `status`: every installed update for
    /// the running kernel is applied).
    pub const OK: u8 = 0;
    /// `status` only: updates for the running kernel are installed but not applied.
    pub const PENDING: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// The package or the trust policy was refused (signature, digest, format, size).
    pub const VERIFICATION: u8 = 3;
    /// The package was built for another kernel (release, version, arch or build-id).
    pub const WRONG_KERNEL: u8 = 4;
    /// The kernel refused the update: run-pre mismatch, load or unload error.
    pub const KERNEL_REFUSED: u8 = 5;
    /// The livepatch transition did not finish in time; the change was reverted.
    pub const TRANSITION_TIMEOUT: u8 = 6;
    /// The state directory, the journal or a host file could not be read or written.
    pub const STATE: u8 = 7;
    /// The update id is not installed / not applied.
    pub const UNKNOWN_UPDATE: u8 = 8;
    /// Refused because of update dependencies (`builds_on`) or stream rules
    /// (another livepatch is live that a cumulative update would replace; a
    /// level not above the applied one).
    pub const DEPENDENCY: u8 = 9;
    /// `status` and `view`: live ksplice livepatches or installed packages
    /// that the journal does not know (it was lost or replaced).
    pub const NOT_IN_JOURNAL: u8 = 10;
    /// `apply --installed --boot`: automatic re-apply is held because an
    /// earlier boot that re-applied updates was never confirmed.
    pub const HELD: u8 = 13;
    /// `update --check`: something would be applied (same value as
    /// [`PENDING`]: "there is something to do").
    pub const UPDATE_AVAILABLE: u8 = 1;
    /// `update`: updates were applied.
    pub const UPDATED: u8 = 11;
    /// `update`: every mirror was unreachable or answered errors (network
    /// or HTTP only; a mirror refused by TUF gives [`VERIFICATION`]).
    pub const MIRRORS_FAILED: u8 = 12;
}

/// Everything the client can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("refused: {path}: {source}")]
    Package {
        path: PathBuf,
        #[source]
        source: Box<manifests::Error>,
    },
    #[error("trust policy {path}: {source}")]
    TrustPolicy {
        path: PathBuf,
        #[source]
        source: Box<manifests::Error>,
    },
    #[error("refused: {id} was built for another kernel: {field} is {expected:?}, running kernel has {running:?}")]
    KernelMismatch {
        id: String,
        field: &'static str,
        expected: String,
        running: String,
    },
    #[error("{path}: no GNU build-id note")]
    NoBuildId { path: PathBuf },
    #[error("{path}: malformed ELF note at offset {offset}")]
    BadNotes { path: PathBuf, offset: usize },
    #[error("refused: {module}: run-pre check failed: {}", .messages.join("; "))]
    RunPre {
        module: String,
        messages: Vec<String>,
    },
    #[error("kernel refused to load {module} ({path}): {source}")]
    Load {
        module: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel refused to unload {module}: {source}")]
    Unload {
        module: String,
        #[source]
        source: io::Error,
    },
    #[error("kernel refused to {action} {module}: {source}")]
    Sysfs {
        module: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{module}: the livepatch was disabled and freed during its enabling transition; nothing is applied")]
    PatchVanished { module: String },
    #[error("{module}: transition did not finish within {secs} s; {outcome}; blocked by: {}", fmt_tasks(.blocking))]
    TransitionTimeout {
        module: String,
        secs: u64,
        outcome: &'static str,
        blocking: Vec<BlockingTask>,
    },
    #[error("update {id} is not installed")]
    UnknownUpdate { id: String },
    #[error("refused: cannot undo {id}: {by} builds on it and is applied; undo {by} first")]
    UndoBlocked { id: String, by: String },
    #[error("refused: {id} builds on {missing}, which is not applied; apply {missing} first")]
    MissingBase { id: String, missing: String },
    /// Atomic replace frees every other enabled livepatch, not only the
    /// lower levels of the stream: loading would silently drop these.
    #[error("refused: {id} is level {level} of stream {stream}; loading it would replace every other live patch, and these are live: {}; undo them first", .live.join(", "))]
    StreamBlocked {
        id: String,
        stream: String,
        level: u32,
        live: Vec<String>,
    },
    #[error("refused: stream {stream} is already at level {applied} ({applied_id}); {id} is level {level}")]
    StreamLevel {
        id: String,
        stream: String,
        level: u32,
        applied: u32,
        applied_id: String,
    },
    /// Undo back to a lower level loads it with replace: the same rule.
    #[error("refused: undoing {id} loads {to}, which would replace every other live patch, and these are live: {}; undo them first", .live.join(", "))]
    StepBackBlocked {
        id: String,
        to: String,
        live: Vec<String>,
    },
    #[error(
        "refused: {id} uses livepatch name {module}, already used by installed update {other}"
    )]
    ModuleClash {
        id: String,
        module: String,
        other: String,
    },
    #[error("refused: {path} is not the package of {id} that was verified and installed")]
    InstalledMismatch { id: String, path: PathBuf },
    #[error("refused: invalid {what} {name:?} in the manifest")]
    InvalidName { what: &'static str, name: String },
    #[error("{path}: symbol addresses are hidden (run as root)")]
    KallsymsHidden { path: PathBuf },
    #[error("no kernel config found (tried {})", .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoKernelConfig { tried: Vec<PathBuf> },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refused: {path} is {reason} (owner uid {uid}, mode {mode:o}); it must belong to uid {euid} or root and not be group or world writable")]
    UnsafePermissions {
        path: PathBuf,
        reason: &'static str,
        uid: u32,
        mode: u32,
        euid: u32,
    },
    #[error("refused: installing {id} would grow the journal {path} to {needed} bytes, over its {max}-byte limit; undo updates no longer needed first")]
    JournalFull {
        id: String,
        path: PathBuf,
        needed: u64,
        max: u64,
    },
    #[error("journal {path} is unreadable: {reason}")]
    Journal { path: PathBuf, reason: String },
    #[error("boot marker {path}: {reason}")]
    BootMarker { path: PathBuf, reason: String },
    #[error("interrupted at {step}")]
    Interrupted { step: String },
    #[error("client configuration {path}: {source}")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("client configuration {path}: {field}: {reason}")]
    ConfigInvalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    /// The file is named, not the configuration that points at it.
    #[error("client configuration: ca_file {path} {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: crate::update::transport::CaFileError,
    },
}

fn fmt_tasks(tasks: &[BlockingTask]) -> String {
    if tasks.is_empty() {
        return "no task reported".to_owned();
    }
    tasks
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Package { .. }
            | Error::TrustPolicy { .. }
            | Error::InvalidName { .. }
            | Error::InstalledMismatch { .. } => exit::VERIFICATION,
            Error::KernelMismatch { .. } => exit::WRONG_KERNEL,
            Error::RunPre { .. }
            | Error::Load { .. }
            | Error::Unload { .. }
            | Error::Sysfs { .. }
            | Error::PatchVanished { .. } => exit::KERNEL_REFUSED,
            Error::TransitionTimeout { .. } => exit::TRANSITION_TIMEOUT,
            Error::UnknownUpdate { .. } => exit::UNKNOWN_UPDATE,
            Error::UndoBlocked { .. }
            | Error::MissingBase { .. }
            | Error::ModuleClash { .. }
            | Error::StreamBlocked { .. }
            | Error::StreamLevel { .. }
            | Error::StepBackBlocked { .. } => exit::DEPENDENCY,
            Error::NoBuildId { .. }
            | Error::KallsymsHidden { .. }
            | Error::NoKernelConfig { .. }
            | Error::BadNotes { .. }
            | Error::Io { .. }
            | Error::Journal { .. }
            | Error::BootMarker { .. }
            | Error::UnsafePermissions { .. }
            | Error::JournalFull { .. }
            | Error::Interrupted { .. }
            | Error::ConfigParse { .. }
            | Error::ConfigInvalid { .. }
            | Error::CaFile { .. } => exit::STATE,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
