//! The update manifest: what an update changes and which kernel it was built for.
//!
//! The manifest is TOML with an explicit `format` number; unknown fields are
//! rejected so that a newer builder cannot smuggle in meaning an older client
//! would silently ignore.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::entry_name::{self, NameProblem};
use crate::error::{Error, Result};

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
    /// Present on a cumulative update: its place in the stream of updates for
    /// its kernel build. The module is loaded with the livepatch `replace` flag
    /// and supersedes every earlier level in one transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
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

/// A cumulative update's place in its stream (docs/fleet.md, "Streams").
///
/// A stream is the series of cumulative updates for one kernel build
/// (`target.build_id`); level N contains every fix of levels 1..N, so it
/// replaces any lower level of the same stream atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// Stream name: same rules as an update id (e.g. `main`).
    pub name: String,
    /// 1-based level; higher levels contain the fixes of all lower ones.
    pub level: u32,
    /// Ids of the updates this level supersedes (normally the earlier levels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
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

// ---- parsing and validation ------------------------------------------------------------------

impl Stream {
    /// The stream rules: a valid name, level ≥ 1, `replaces` valid distinct ids
    /// other than the update itself; a cumulative update builds on nothing (it
    /// carries its earlier levels' fixes itself).
    pub fn validate(&self, id: &str, builds_on: &[String]) -> Result<()> {
        check_id(&self.name).map_err(|_| {
            invalid(
                "stream.name",
                &self.name,
                "must be 1-47 bytes of [a-z0-9_-], starting with a letter or digit",
            )
        })?;
        if self.level == 0 {
            return Err(invalid("stream.level", "0", "levels start at 1"));
        }
        let mut seen = BTreeSet::new();
        for r in &self.replaces {
            check_id(r)?;
            if r == id {
                return Err(invalid(
                    "stream.replaces",
                    r,
                    "an update cannot replace itself",
                ));
            }
            if !seen.insert(r.as_str()) {
                return Err(invalid("stream.replaces", r, "listed twice"));
            }
        }
        if let Some(base) = builds_on.first() {
            return Err(invalid(
                "builds_on",
                base,
                "a cumulative (stream) update cannot build on another update",
            ));
        }
        Ok(())
    }
}

/// Longest kernel module name: `MODULE_NAME_LEN` is 64 - sizeof(unsigned long)
/// = 56 including the NUL, and livepatch parses object names with `%55[^.]`.
pub const MAX_MODULE_NAME_BYTES: usize = 55;
/// Every update module is named `ksplice_<id with '-' as '_'>` (contracts.md C).
pub const MODULE_PREFIX: &str = "ksplice_";
/// Longest update id: the package name `ksplice-<id>.tar.gz` and the module
/// name derive from it, and the module name must fit [`MAX_MODULE_NAME_BYTES`].
pub const MAX_ID_BYTES: usize = MAX_MODULE_NAME_BYTES - MODULE_PREFIX.len();
/// Payload names the package format reserves for itself.
const RESERVED_NAMES: [&str; 2] = ["manifest.toml", "manifest.sig"];

impl Manifest {
    /// Parses manifest TOML: checks `format` first (so a newer format gets a clear
    /// message rather than an unknown-field error), then the schema. Does not
    /// [`validate`](Manifest::validate), so that `pack` can read a manifest whose
    /// `files` are still to be filled.
    pub fn from_toml(text: &str) -> Result<Manifest> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: toml::Value,
        }
        if let Ok(FormatOnly { format }) = toml::from_str::<FormatOnly>(text) {
            match format.as_integer() {
                Some(found) if found == i64::from(FORMAT) => {}
                Some(found) => {
                    return Err(Error::UnsupportedFormat {
                        found,
                        expected: FORMAT,
                    })
                }
                None => {
                    return Err(Error::InvalidField {
                        field: "format",
                        value: format.to_string(),
                        reason: "must be an integer",
                    })
                }
            }
        }
        toml::from_str(text).map_err(|e| Error::ManifestSyntax {
            reason: Error::toml_reason(text, &e),
        })
    }

    /// Parses and validates signed manifest bytes.
    pub(crate) fn from_signed_bytes(bytes: &[u8]) -> Result<Manifest> {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::ManifestNotUtf8)?;
        let manifest = Manifest::from_toml(text)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The TOML text; [`Manifest::from_toml`] reads it back to an equal value.
    /// Fails only for values TOML cannot hold (integers above `i64::MAX`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::ManifestUnserializable {
            reason: crate::error::one_line(&e.to_string()),
        })
    }

    /// `ksplice-<id>.tar.gz`.
    pub fn package_file_name(&self) -> String {
        format!("ksplice-{}.tar.gz", self.id)
    }

    /// Checks every rule the schema's types cannot express. Both the writer (before
    /// signing) and the reader (after verifying) run it.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::UnsupportedFormat {
                found: i64::from(self.format),
                expected: FORMAT,
            });
        }
        self.check_terminal_safe()?;
        check_id(&self.id)?;
        for id in &self.builds_on {
            check_id(id)?;
        }
        if let Some(stream) = &self.stream {
            stream.validate(&self.id, &self.builds_on)?;
        }
        let utc = time::format_description::well_known::Rfc3339;
        if !self.created.ends_with('Z') || time::OffsetDateTime::parse(&self.created, &utc).is_err()
        {
            return Err(invalid(
                "created",
                &self.created,
                "must be an RFC 3339 UTC time like 2026-11-27T21:38:41Z",
            ));
        }
        for cve in &self.cves {
            check_cve(cve)?;
        }
        for (field, value) in [
            ("target.release", &self.target.release),
            ("target.version", &self.target.version),
            ("target.arch", &self.target.arch),
            ("builder_version", &self.builder_version),
        ] {
            if value.is_empty() {
                return Err(invalid(field, value, "must be non-empty"));
            }
        }
        let build_id = &self.target.build_id;
        if build_id.is_empty()
            || build_id.len() & 1 != 0
            || !build_id.bytes().all(is_lower_hex_digit)
        {
            return Err(invalid(
                "target.build_id",
                build_id,
                "must be lowercase hex bytes",
            ));
        }
        check_module_name("module.name", &self.module.name)?;
        for object in &self.objects {
            if object.name != "vmlinux" {
                check_module_name("objects.name", &object.name)?;
            }
            for function in &object.functions {
                check_symbol(&function.name)?;
                match (&function.kind, &function.pre_sha256) {
                    (ChangeKind::Replaced, Some(digest)) if is_sha256_hex(digest) => {}
                    (ChangeKind::Replaced, Some(digest)) => {
                        return Err(invalid(
                            "functions.pre_sha256",
                            digest,
                            "must be 64 lowercase hex digits",
                        ))
                    }
                    (ChangeKind::Replaced, None) => {
                        return Err(invalid(
                            "functions.pre_sha256",
                            &function.name,
                            "missing for a replaced function",
                        ))
                    }
                    (ChangeKind::Added, None) => {}
                    (ChangeKind::Added, Some(_)) => {
                        return Err(invalid(
                            "functions.pre_sha256",
                            &function.name,
                            "present for an added function",
                        ))
                    }
                }
            }
        }
        self.validate_files()
    }

    /// Every string of the manifest is printed by `ksplice verify` and `view`: none may
    /// hold a control character (C0, DEL, C1: a terminal escape sequence or a line break
    /// could forge output) or a bidirectional override (which reorders what is shown).
    /// Checked before the field rules, so the error names exactly this problem.
    fn check_terminal_safe(&self) -> Result<()> {
        let mut fields: Vec<(&'static str, &str)> = vec![
            ("id", &self.id),
            ("description", &self.description),
            ("created", &self.created),
            ("builder_version", &self.builder_version),
            ("target.release", &self.target.release),
            ("target.version", &self.target.version),
            ("target.arch", &self.target.arch),
            ("target.build_id", &self.target.build_id),
            ("module.name", &self.module.name),
            ("module.file", &self.module.file),
        ];
        fields.extend(self.cves.iter().map(|c| ("cves", c.as_str())));
        fields.extend(self.builds_on.iter().map(|b| ("builds_on", b.as_str())));
        if let Some(stream) = &self.stream {
            fields.push(("stream.name", &stream.name));
            fields.extend(
                stream
                    .replaces
                    .iter()
                    .map(|r| ("stream.replaces", r.as_str())),
            );
        }
        for object in &self.objects {
            fields.push(("objects.name", &object.name));
            for function in &object.functions {
                fields.push(("functions.name", &function.name));
                if let Some(digest) = &function.pre_sha256 {
                    fields.push(("functions.pre_sha256", digest));
                }
            }
        }
        for file in &self.files {
            fields.push(("files.path", &file.path));
            fields.push(("files.sha256", &file.sha256));
        }
        match fields
            .into_iter()
            .find(|(_, v)| v.chars().any(is_terminal_control))
        {
            Some((field, value)) => Err(Error::ControlCharacter {
                field,
                value: value.to_owned(),
            }),
            None => Ok(()),
        }
    }

    fn validate_files(&self) -> Result<()> {
        use crate::package::{MAX_ENTRIES, MAX_UNPACKED_BYTES};
        let mut seen = BTreeSet::new();
        let mut total: u64 = 0;
        for file in &self.files {
            match entry_name::check(file.path.as_bytes()) {
                Ok(()) => {}
                Err(NameProblem::Absolute) => {
                    return Err(invalid("files.path", &file.path, "absolute path"))
                }
                Err(NameProblem::ParentDirectory) => {
                    return Err(invalid("files.path", &file.path, "'..' path component"))
                }
                Err(NameProblem::Invalid(reason)) => {
                    return Err(invalid("files.path", &file.path, reason))
                }
            }
            if RESERVED_NAMES
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&file.path))
            {
                return Err(invalid(
                    "files.path",
                    &file.path,
                    "reserved for the package metadata",
                ));
            }
            if !is_sha256_hex(&file.sha256) {
                return Err(invalid(
                    "files.sha256",
                    &file.sha256,
                    "must be 64 lowercase hex digits",
                ));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(Error::DuplicateListedFile {
                    path: file.path.clone(),
                });
            }
            total = total.saturating_add(file.len);
        }
        // Names equal but for case would be one file on a case-insensitive file system,
        // and the archive reader refuses them (docs/package-format.md).
        let mut folded: BTreeMap<String, &str> = BTreeMap::new();
        for path in self.files.iter().map(|f| f.path.as_str()) {
            if let Some(other) = folded.insert(path.to_ascii_lowercase(), path) {
                return Err(Error::ListedFilesDifferInCase {
                    path: path.to_owned(),
                    other: other.to_owned(),
                });
            }
        }
        // `a` and `a/b` cannot both be files. In sorted order a directory prefix
        // `a/` sorts right before its children, but other names (`a.ko`) may sit
        // between, so check every ancestor explicitly.
        for path in &seen {
            let mut ancestor = *path;
            while let Some((parent, _)) = ancestor.rsplit_once('/') {
                if seen.contains(parent) {
                    return Err(Error::ConflictingListedFiles {
                        path: parent.to_owned(),
                        other: (*path).to_owned(),
                    });
                }
                ancestor = parent;
            }
        }
        // Two entries (manifest.toml, manifest.sig) come before the payload.
        if self.files.len() > MAX_ENTRIES - 2 || total > MAX_UNPACKED_BYTES / 2 {
            return Err(Error::ManifestOverCaps {
                count: self.files.len(),
                bytes: total,
                max_count: MAX_ENTRIES - 2,
                max_bytes: MAX_UNPACKED_BYTES / 2,
            });
        }
        if !seen.contains(self.module.file.as_str()) {
            return Err(Error::ModuleFileNotListed {
                path: self.module.file.clone(),
            });
        }
        Ok(())
    }
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> Error {
    Error::InvalidField {
        field,
        value: value.to_owned(),
        reason,
    }
}

/// Control characters and the Unicode bidirectional embedding, override and isolate
/// controls (U+202A..U+202E, U+2066..U+2069).
fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn is_lower_hex_digit(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(is_lower_hex_digit)
}

/// Update ids: `[a-z0-9][a-z0-9_-]*`, at most [`MAX_ID_BYTES`].
pub fn check_id(id: &str) -> Result<()> {
    // The message spells out MAX_ID_BYTES; the assertion keeps them together.
    const _: () = assert!(MAX_ID_BYTES == 47);
    const ID_TOO_LONG: &str =
        "longer than 47 bytes (ksplice_ + the id must fit a 55-byte module name)";
    let bad = |reason| {
        Err(Error::InvalidId {
            id: id.to_owned(),
            reason,
        })
    };
    let Some(first) = id.bytes().next() else {
        return bad("empty");
    };
    if id.len() > MAX_ID_BYTES {
        return bad(ID_TOO_LONG);
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("must start with a lowercase letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return bad("only lowercase letters, digits, '_' and '-' are allowed");
    }
    Ok(())
}

/// The update module's own name, as the client checks it before it becomes a
/// sysfs path or a `delete_module` argument: `[a-z0-9_]`, 1 to 55 bytes (what
/// `MODULE_PREFIX` + a valid id makes).
pub fn check_update_module_name(name: &str) -> Result<()> {
    check_module_name("module.name", name)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "module.name",
            name,
            "only lowercase letters, digits and '_' are allowed",
        ));
    }
    Ok(())
}

/// Module names end up in sysfs paths and `finit_module`: `[A-Za-z0-9_-]`, at most 55 bytes.
fn check_module_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_MODULE_NAME_BYTES {
        return Err(invalid(field, name, "must be 1 to 55 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            field,
            name,
            "only letters, digits, '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// Kernel symbol names: C identifiers plus the `.` of compiler suffixes (`foo.isra.0`).
fn check_symbol(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'$');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "functions.name",
            name,
            "must be a symbol name of [A-Za-z0-9_.$]",
        ))
    }
}

/// `CVE-<year>-<number>`.
/// A CVE id as the manifest accepts it (`CVE-2024-12345`).
pub fn check_cve(cve: &str) -> Result<()> {
    let parts: Vec<&str> = cve.split('-').collect();
    let digits = |s: &str, min: usize| {
        s.len() >= min && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit())
    };
    if parts.len() == 3
        && parts[0] == "CVE"
        && parts[1].len() == 4
        && digits(parts[1], 4)
        && digits(parts[2], 4)
    {
        Ok(())
    } else {
        Err(invalid("cves", cve, "must look like CVE-2024-12345"))
    }
}

/// A valid manifest for tests in this crate and for other crates' fixtures.
#[doc(hidden)]
pub fn example(id: &str) -> Manifest {
    Manifest {
        format: FORMAT,
        id: id.to_owned(),
        description: "example update".to_owned(),
        cves: vec!["CVE-2024-12345".to_owned()],
        created: "2026-11-27T21:38:41Z".to_owned(),
        builder_version: "0.1.0".to_owned(),
        builds_on: Vec::new(),
        stream: None,
        target: TargetKernel {
            release: "6.1.0-56-amd64".to_owned(),
            version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)".to_owned(),
            arch: "x86_64".to_owned(),
            build_id: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        },
        module: ModuleInfo {
            name: format!("ksplice_{}", id.replace('-', "_")),
            file: format!("ksplice_{}.ko", id.replace('-', "_")),
        },
        objects: vec![PatchedObject {
            name: "vmlinux".to_owned(),
            functions: vec![FunctionChange {
                name: "cmdline_proc_show".to_owned(),
                sympos: 0,
                kind: ChangeKind::Replaced,
                pre_sha256: Some("ab".repeat(32)),
                old_size: 64,
                new_size: 80,
            }],
        }],
        files: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_files(mut m: Manifest) -> Manifest {
        m.files = vec![PayloadFile {
            path: m.module.file.clone(),
            len: 3,
            sha256: "00".repeat(32),
        }];
        m
    }

    #[test]
    fn toml_round_trip_and_validation() {
        let m = with_files(example("cve-2024-1"));
        m.validate().expect("valid");
        let back = Manifest::from_toml(&m.to_toml().expect("toml")).expect("parse");
        assert_eq!(back, m);
    }

    #[test]
    fn unknown_fields_and_formats_are_refused() {
        let text = with_files(example("a")).to_toml().expect("toml");
        assert!(matches!(
            Manifest::from_toml(&format!("surprise = 1\n{text}")),
            Err(Error::ManifestSyntax { .. })
        ));
        assert!(matches!(
            Manifest::from_toml(&text.replace("format = 1", "format = 2")),
            Err(Error::UnsupportedFormat {
                found: 2,
                expected: 1
            })
        ));
    }

    #[test]
    fn values_toml_cannot_hold_are_an_error_not_a_panic() {
        let mut m = with_files(example("a"));
        m.files[0].len = u64::MAX;
        assert!(matches!(
            m.to_toml(),
            Err(Error::ManifestUnserializable { .. })
        ));
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "0", "cve-2024_1", &"a".repeat(MAX_ID_BYTES)] {
            check_id(ok).expect(ok);
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a/b",
            "a.b",
            "a b",
            &"a".repeat(MAX_ID_BYTES + 1),
        ] {
            assert!(
                matches!(check_id(bad), Err(Error::InvalidId { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn file_list_rules() {
        let base = with_files(example("a"));
        let mut dup = base.clone();
        dup.files.push(dup.files[0].clone());
        assert!(matches!(
            dup.validate(),
            Err(Error::DuplicateListedFile { .. })
        ));

        let mut conflict = base.clone();
        conflict.files.push(PayloadFile {
            path: "d/e".into(),
            len: 0,
            sha256: "00".repeat(32),
        });
        conflict.files.push(PayloadFile {
            path: "d.x".into(),
            len: 0,
            sha256: "00".repeat(32),
        });
        conflict.files.push(PayloadFile {
            path: "d".into(),
            len: 0,
            sha256: "00".repeat(32),
        });
        assert!(matches!(
            conflict.validate(),
            Err(Error::ConflictingListedFiles { .. })
        ));

        let mut unlisted = base.clone();
        unlisted.module.file = "other.ko".into();
        assert!(matches!(
            unlisted.validate(),
            Err(Error::ModuleFileNotListed { .. })
        ));

        for path in ["../x", "/x", "manifest.sig", "a//b"] {
            let mut bad = base.clone();
            bad.files.push(PayloadFile {
                path: path.into(),
                len: 0,
                sha256: "00".repeat(32),
            });
            assert!(
                matches!(
                    bad.validate(),
                    Err(Error::InvalidField {
                        field: "files.path",
                        ..
                    })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn field_rules() {
        let base = with_files(example("a"));
        let mut m = base.clone();
        m.created = "2026-11-27T21:38:41+01:00".into();
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField {
                field: "created",
                ..
            })
        ));
        let mut m = base.clone();
        m.target.build_id = "ABC".into();
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField {
                field: "target.build_id",
                ..
            })
        ));
        let mut m = base.clone();
        m.module.name = "../evil".into();
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField {
                field: "module.name",
                ..
            })
        ));
        let mut m = base.clone();
        m.cves = vec!["CVE-24-1".into()];
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField { field: "cves", .. })
        ));
        let mut m = base;
        m.objects[0].functions[0].pre_sha256 = None;
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField {
                field: "functions.pre_sha256",
                ..
            })
        ));
    }

    /// Issue 9 finding 5: a description (or any other shown string) with a control
    /// character passed validation and reached the terminal through `ksplice verify`/`view`.
    #[test]
    fn control_characters_are_refused_in_every_shown_field() {
        let base = with_files(example("a"));
        type Edit = fn(&mut Manifest, String);
        let edits: [(&str, Edit); 8] = [
            ("description", |m, v| m.description = v),
            ("cves", |m, v| m.cves = vec![v]),
            ("id", |m, v| m.id = v),
            ("target.version", |m, v| m.target.version = v),
            ("builder_version", |m, v| m.builder_version = v),
            ("module.name", |m, v| m.module.name = v),
            ("objects.name", |m, v| m.objects[0].name = v),
            ("functions.name", |m, v| m.objects[0].functions[0].name = v),
        ];
        for (field, edit) in edits {
            for bad in [
                "fix\x1b[2J",
                "two\nlines",
                "a\u{9b}b",
                "a\x7f",
                "rtl\u{202e}x",
            ] {
                let mut m = base.clone();
                edit(&mut m, bad.to_owned());
                let err = m.validate().expect_err(bad);
                assert!(
                    matches!(err, Error::ControlCharacter { field: f, ref value } if f == field && value == bad),
                    "{field} {bad:?}: {err}"
                );
                assert!(!err.to_string().contains('\x1b') && !err.to_string().contains('\n'));
            }
        }
        let mut m = base;
        m.description = "Unicode is fine: é, ü, ✓".into();
        m.validate().expect("printable text");
    }

    /// Issue 9 finding 6: `a.ko` and `A.KO` are one file on a case-insensitive file system.
    #[test]
    fn listed_files_differing_only_in_case_are_refused() {
        let mut m = with_files(example("a"));
        let upper = m.files[0].path.to_ascii_uppercase();
        m.files.push(PayloadFile {
            path: upper.clone(),
            len: 0,
            sha256: "00".repeat(32),
        });
        assert!(matches!(
            m.validate(),
            Err(Error::ListedFilesDifferInCase { ref path, .. }) if *path == upper
        ));
        let mut m = with_files(example("a"));
        m.files.push(PayloadFile {
            path: "Manifest.TOML".into(),
            len: 0,
            sha256: "00".repeat(32),
        });
        assert!(matches!(
            m.validate(),
            Err(Error::InvalidField {
                field: "files.path",
                ..
            })
        ));
    }
}
