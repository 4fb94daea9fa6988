//! Errors of the manifests crate: one precise variant per way a key, policy, manifest or package is refused.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or verifying keys, manifests and packages.
///
/// Messages are one line, lowercase, and name the file, key or archive entry at fault,
/// so that a command line can print them as the whole explanation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- plain I/O -------------------------------------------------------------------------
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An input file (package, key, trust policy) is not a regular file; symbolic links
    /// are not followed.
    #[error("{}: is {kind}, expected a regular file", path.display())]
    NotRegularFile { path: PathBuf, kind: &'static str },

    // ---- keys and trust policies -----------------------------------------------------------
    /// `save_new` refuses to replace an existing key file.
    #[error("{}: key file already exists, refusing to overwrite it", path.display())]
    KeyExists { path: PathBuf },
    /// A key file is not in the documented text format.
    #[error("{}: malformed key file: {reason}", path.display())]
    MalformedKey { path: PathBuf, reason: &'static str },
    /// A private key file is readable or writable by group or others.
    #[error("{}: private key file has mode {mode:04o}, must not be accessible by group or others (chmod 600)", path.display())]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// A private key file is owned by another user than the one reading it.
    #[error("{}: private key file is owned by uid {uid}, must be owned by uid {expected} (the user running this)", path.display())]
    KeyOwner {
        path: PathBuf,
        uid: u32,
        expected: u32,
    },
    /// A trust policy file is writable by group or others.
    #[error("{}: trust policy has mode {mode:04o}, must not be writable by group or others (chmod 644)", path.display())]
    PolicyPermissions { path: PathBuf, mode: u32 },
    /// A trust policy file is owned by a user other than root and the one reading it.
    #[error("{}: trust policy is owned by uid {uid}, must be owned by root or by uid {current} (the user running this)", path.display())]
    PolicyOwner {
        path: PathBuf,
        uid: u32,
        current: u32,
    },
    /// A public key is not a valid ed25519 point (or is a weak, small-order key).
    #[error("invalid ed25519 public key {key}")]
    InvalidPublicKey { key: String },
    /// A trust policy file is not valid TOML for the policy schema.
    #[error("malformed trust policy: {reason}")]
    PolicySyntax { reason: String },
    /// A trust policy is well-formed TOML but unusable (threshold 0, threshold above the key count, ...).
    #[error("invalid trust policy: {reason}")]
    InvalidPolicy { reason: String },
    /// Packing was asked to sign with no key.
    #[error("no signing key given")]
    NoSigningKey,

    // ---- signatures ------------------------------------------------------------------------
    /// The `manifest.sig` text is not in the documented format.
    #[error("manifest.sig: malformed signature file at line {line}: {reason}")]
    MalformedSignatureFile { line: usize, reason: &'static str },
    /// A signature made by a trusted key does not verify: the manifest was changed after signing.
    #[error("manifest.sig: signature by trusted key {key_id} does not match manifest.toml (tampered or corrupted package)")]
    BadSignature { key_id: String },
    /// Every signature is by a key the trust policy does not list.
    #[error("manifest.sig: signed only by untrusted key(s) {}", key_ids.join(", "))]
    UntrustedSigner { key_ids: Vec<String> },
    /// Too few distinct trusted keys signed (several signatures by one key count once).
    #[error("manifest.sig: {valid} distinct trusted signature(s), the trust policy requires {threshold}")]
    ThresholdNotMet { valid: usize, threshold: usize },

    // ---- manifest content ------------------------------------------------------------------
    /// `manifest.toml` is not UTF-8 TOML matching the schema.
    #[error("manifest.toml: {reason}")]
    ManifestSyntax { reason: String },
    /// A manifest value cannot be written as TOML (an integer above `i64::MAX`).
    #[error("manifest cannot be written as TOML: {reason}")]
    ManifestUnserializable { reason: String },
    /// `manifest.toml` is not UTF-8.
    #[error("manifest.toml: not valid UTF-8")]
    ManifestNotUtf8,
    /// The manifest declares a format this crate does not read.
    #[error(
        "manifest.toml: unsupported manifest format {found} (this ksplice reads format {expected})"
    )]
    UnsupportedFormat { found: i64, expected: u32 },
    /// The update id breaks `[a-z0-9][a-z0-9_-]*`, at most 48 bytes.
    #[error("manifest.toml: invalid update id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    /// Some other manifest field has an invalid value.
    #[error("manifest.toml: invalid {field} {value:?}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A text field shown to a terminal holds a control character.
    #[error("manifest.toml: {field} {value:?} contains a control character")]
    ControlCharacter { field: &'static str, value: String },
    /// Two `files` entries name the same path.
    #[error("manifest.toml: file {path:?} is listed twice")]
    DuplicateListedFile { path: String },
    /// One listed file's path is a directory of another (`a` and `a/b`).
    #[error("manifest.toml: file {path:?} conflicts with file {other:?} (one is a directory of the other)")]
    ConflictingListedFiles { path: String, other: String },
    /// Two listed paths differ only in letter case (one file on a case-insensitive file system).
    #[error("manifest.toml: files {path:?} and {other:?} differ only in letter case")]
    ListedFilesDifferInCase { path: String, other: String },
    /// `module.file` is not among `files`.
    #[error("manifest.toml: module file {path:?} is not listed in files")]
    ModuleFileNotListed { path: String },
    /// The listed files add up to more than the package caps allow.
    #[error("manifest.toml: lists {count} files of {bytes} bytes in total, above the caps of {max_count} files and {max_bytes} bytes")]
    ManifestOverCaps {
        count: usize,
        bytes: u64,
        max_count: usize,
        max_bytes: u64,
    },
    /// Packing: a payload file is larger than a package may carry.
    #[error("{}: payload file is larger than the cap of {max} bytes", path.display())]
    PayloadTooLarge { path: PathBuf, max: u64 },
    /// Packing: the manifest's non-empty `files` disagree with the payload given.
    #[error("manifest files do not match the payload: {path:?} {reason}")]
    FilesMismatch { path: String, reason: &'static str },

    // ---- package archive -------------------------------------------------------------------
    /// The package file is larger than [`crate::package::MAX_PACKAGE_BYTES`].
    #[error("{}: package is {size} bytes, above the cap of {max} bytes", path.display())]
    PackageTooLarge { path: PathBuf, size: u64, max: u64 },
    /// The decompressed archive exceeds [`crate::package::MAX_UNPACKED_BYTES`].
    #[error("package decompresses to more than the cap of {max} bytes")]
    UnpackedTooLarge { max: u64 },
    /// The archive has more entries than [`crate::package::MAX_ENTRIES`].
    #[error("package has more than the cap of {max} entries")]
    TooManyEntries { max: usize },
    /// The gzip header is not the fixed one ksplice writes (no name, no time, no extra fields).
    #[error("package is not a ksplice package: unexpected gzip header")]
    NotCanonicalGzip,
    /// The gzip or tar structure is broken (truncated, bad checksum, bad header field, ...).
    /// `reason` is the decoder's message made one line (it may quote archive bytes).
    #[error("malformed package archive: {reason}")]
    MalformedArchive { reason: String },
    /// Bytes follow the gzip stream, or non-zero data follows the tar end marker.
    #[error("malformed package archive: {what} after the end of the archive")]
    TrailingData { what: &'static str },
    /// The archive's first entry is not `manifest.toml`.
    #[error("package entry 1 is {entry:?}, expected manifest.toml")]
    ManifestNotFirst { entry: String },
    /// The archive's second entry is not `manifest.sig`.
    #[error("package entry 2 is {entry:?}, expected manifest.sig")]
    SignatureNotSecond { entry: String },
    /// The archive ends before `manifest.toml` and `manifest.sig`.
    #[error("package has no {entry}")]
    MissingMetadata { entry: &'static str },
    /// `manifest.toml` or `manifest.sig` is larger than its cap.
    #[error("package entry {entry} is {size} bytes, above the cap of {max} bytes")]
    MetadataTooLarge {
        entry: &'static str,
        size: u64,
        max: u64,
    },
    /// An entry name starts with `/`.
    #[error("package entry {entry:?} has an absolute path")]
    AbsolutePath { entry: String },
    /// An entry name has a `..` component.
    #[error("package entry {entry:?} has a '..' path component")]
    ParentDirectory { entry: String },
    /// An entry name is otherwise unacceptable (empty part, `.`, odd bytes, too long).
    #[error("package entry {entry:?} has an invalid name: {reason}")]
    InvalidEntryName { entry: String, reason: &'static str },
    /// A symbolic link entry.
    #[error("package entry {entry:?} is a symbolic link")]
    Symlink { entry: String },
    /// A hard link entry.
    #[error("package entry {entry:?} is a hard link")]
    Hardlink { entry: String },
    /// A character or block device entry.
    #[error("package entry {entry:?} is a device file")]
    DeviceFile { entry: String },
    /// A named pipe entry.
    #[error("package entry {entry:?} is a fifo")]
    Fifo { entry: String },
    /// Any other non-regular entry (directory, pax or GNU extension header, sparse file, ...).
    #[error("package entry {entry:?} has unsupported type {typeflag:?}")]
    UnsupportedEntryType { entry: String, typeflag: char },
    /// A header is not POSIX ustar (magic `ustar\0`, version `00`): a v7 or GNU header.
    #[error("package entry {entry:?} does not have a ustar header")]
    NotUstar { entry: String },
    /// The name field has bytes after the NUL that ends the name.
    #[error("package entry {entry:?} has bytes after the end of its name")]
    NameNotNulPadded { entry: String },
    /// The mode field is not the 0644 ksplice writes.
    #[error("package entry {entry:?} has mode field {mode:?}, expected 0000644")]
    EntryMode { entry: String, mode: String },
    /// uid, gid, user or group name is not the 0/0/empty ksplice writes.
    #[error(
        "package entry {entry:?} has an owner other than uid 0, gid 0 and no user or group name"
    )]
    EntryOwner { entry: String },
    /// Another header field differs from what ksplice writes (mtime, size encoding, link
    /// name, device numbers, prefix, reserved bytes).
    #[error("package entry {entry:?} has a non-canonical {field} field")]
    NonCanonicalHeader { entry: String, field: &'static str },
    /// The header checksum is wrong (or not written as ksplice writes it).
    #[error("package entry {entry:?} has a wrong header checksum")]
    HeaderChecksum { entry: String },
    /// The padding after an entry's data is not all zero.
    #[error("package entry {entry:?} has non-zero padding after its data")]
    NonZeroPadding { entry: String },
    /// The archive does not end with two zero blocks.
    #[error("malformed package archive: no end-of-archive marker (two zero blocks)")]
    MissingEndOfArchive,
    /// Two entry names differ only in letter case.
    #[error("package entry {entry:?} differs only in letter case from entry {other:?}")]
    DuplicateEntryIgnoringCase { entry: String, other: String },
    /// Two entries with one name.
    #[error("package entry {entry:?} appears twice")]
    DuplicateEntry { entry: String },
    /// An entry the manifest does not list.
    #[error("package entry {entry:?} is not listed in the manifest")]
    UnlistedEntry { entry: String },
    /// A listed file is absent from the archive.
    #[error("package lacks file {file:?} listed in the manifest")]
    MissingFile { file: String },
    /// A payload file's length differs from the manifest.
    #[error("package file {file:?} is {actual} bytes, the manifest says {expected}")]
    LengthMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },
    /// A payload file's sha256 differs from the manifest.
    #[error("package file {file:?} does not match its sha256 in the manifest")]
    DigestMismatch { file: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(source: &std::io::Error) -> Self {
        Error::MalformedArchive {
            reason: one_line(&source.to_string()),
        }
    }

    /// A TOML error as `line L column C: message`, without the multi-line snippet
    /// `toml` shows by default.
    pub(crate) fn toml_reason(text: &str, error: &toml::de::Error) -> String {
        let message = one_line(error.message());
        match error.span() {
            Some(span) => {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
                format!("line {line} column {column}: {message}")
            }
            None => message,
        }
    }
}

/// Longest text quoted from untrusted input in a message.
const MAX_QUOTED_CHARS: usize = 160;

/// Escapes control characters (so a message stays one line and cannot drive a terminal)
/// and cuts long text.
pub(crate) fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_QUOTED_CHARS).is_some() {
        out.push_str("...");
    }
    out
}
