//! The update manifest: what an update changes and which kernel it was built for.
//!
//! The manifest is TOML with an explicit `format` number; unknown fields are
//! rejected so that a newer builder cannot smuggle in meaning an older client
//! would silently ignore.

use serde::{Deserialize, Serialize};

/// The only manifest format this crate reads and writes.
pub const FORMAT: u32 = 1;

/// One live update: identity, target kernel, what it patches, and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// Update id: `[a-z0-9][a-z0-9_-]*`, at most 48 bytes; the package is `ksplice-<id>.tar.gz`.
    pub id: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    /// Creation time, UTC, RFC 3339 (`2026-11-27T21:38:41Z`).
    pub created: String,
    /// Version of the builder that produced the update.
    pub builder_version: String,
    /// Ids of updates this one was built on top of; they must be applied first
    /// and may not be undone while this one is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds_on: Vec<String>,
    /// The exact kernel the update was built for.
    pub target: TargetKernel,
    /// The live-update kernel module carried in the package.
    pub module: ModuleInfo,
    /// Per patched object (`vmlinux` or a module name), what changes.
    #[serde(default)]
    pub objects: Vec<PatchedObject>,
    /// Every payload file in the package, with its length and digest.
    #[serde(default)]
    pub files: Vec<PayloadFile>,
}

/// The identity of the running kernel an update is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetKernel {
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `uname -v`, e.g. `#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)`.
    pub version: String,
    /// `uname -m`, e.g. `x86_64`.
    pub arch: String,
    /// Lowercase hex of the vmlinux GNU build-id note.
    pub build_id: String,
}

/// The update module: its file in the package and its livepatch name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleInfo {
    /// Kernel module name; also the directory under `/sys/kernel/livepatch/`.
    pub name: String,
    /// Path of the `.ko` inside the package (one of `files`).
    pub file: String,
}

/// What an update does to one object of the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchedObject {
    /// `vmlinux` or a module name (`xfs`).
    pub name: String,
    #[serde(default)]
    pub functions: Vec<FunctionChange>,
}

/// Whether a function replaces a running one or is new code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Replaced,
    Added,
}

/// One function the update replaces or adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionChange {
    pub name: String,
    /// 1-based position among same-named local symbols in the target's symbol
    /// table; 0 when the name is unique.
    #[serde(default)]
    pub sympos: u32,
    pub kind: ChangeKind,
    /// Hex sha256 of the pre build's code of the function (replaced only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_sha256: Option<String>,
    /// Size in bytes of the running (pre) function; 0 for added functions.
    #[serde(default)]
    pub old_size: u64,
    /// Size in bytes of the new function.
    pub new_size: u64,
}

/// A file carried in the package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadFile {
    /// Relative path inside the package: no leading `/`, no `..`, no empty parts.
    pub path: String,
    /// Length in bytes.
    pub len: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
}
