//! Ed25519 signing keys, public keys, key ids and the trust policy, with their text file formats.
//!
//! File formats (all ASCII, one line, terminated by `\n`; see docs/package-format.md):
//! - private key: `ksplice-ed25519-secret <64 lowercase hex: the 32-byte seed>`
//! - public key:  `ksplice-ed25519-public <64 lowercase hex: the 32-byte key>`
//! - trust policy: TOML `threshold = N` and `keys = ["<64 hex public key>", ...]`.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::file;

const SECRET_TAG: &str = "ksplice-ed25519-secret";
const PUBLIC_TAG: &str = "ksplice-ed25519-public";
/// Key and policy files are tiny; anything larger is not one of ours.
const MAX_KEY_FILE_BYTES: u64 = 4096;
const MAX_POLICY_FILE_BYTES: u64 = 1 << 20;

/// Hex sha256 of a 32-byte ed25519 public key: how signatures and messages name a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// The 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses 64 lowercase hex digits (as written in `manifest.sig`).
    pub(crate) fn parse(text: &str) -> Option<KeyId> {
        is_lower_hex(text, 64).then(|| KeyId(text.to_owned()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ed25519 private key. Its `Debug` shows only the key id.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public().key_id())
            .finish()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SigningKey> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|e| Error::io("getrandom", std::io::Error::other(e.to_string())))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(SigningKey { key })
    }

    /// The key for a known 32-byte seed (tests and fixtures).
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// Reads a private key file (a regular file, not through a symlink); refuses one that
    /// group or others may access, or that another user owns (as ssh does).
    pub fn load(path: &Path) -> Result<SigningKey> {
        let (mut opened, meta) = file::open_regular(path)?;
        // Checked on the descriptor that is read, so a swap after the check changes nothing.
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let me = file::effective_uid();
        if meta.uid() != me {
            return Err(Error::KeyOwner {
                path: path.to_owned(),
                uid: meta.uid(),
                expected: me,
            });
        }
        let text = read_small(&mut opened, path, MAX_KEY_FILE_BYTES, malformed_key(path))?;
        let seed = parse_key_line(path, &text, SECRET_TAG)?;
        Ok(SigningKey::from_seed(&seed))
    }

    /// Writes the key to a new file with mode 0600; never replaces an existing file
    /// (or symlink): [`Error::KeyExists`].
    pub fn save_new(&self, path: &Path) -> Result<()> {
        let text = format!("{SECRET_TAG} {}\n", hex::encode(self.key.to_bytes()));
        write_new(path, text.as_bytes(), 0o600)
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// Signs `message` (already domain-separated by the caller).
    pub(crate) fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        self.key.sign(message)
    }
}

/// An ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// Hex sha256 of the 32 key bytes.
    pub fn key_id(&self) -> KeyId {
        KeyId(hex::encode(Sha256::digest(self.key.as_bytes())))
    }

    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// 64 lowercase hex digits of the key (the form used in trust policies).
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Parses 64 hex digits; rejects points that are not valid, not canonically encoded,
    /// or of small order.
    pub fn from_hex(text: &str) -> Result<PublicKey> {
        let invalid = || Error::InvalidPublicKey {
            key: text.to_owned(),
        };
        if !is_lower_hex(text, 64) {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| invalid())?;
        Self::from_bytes(&bytes).ok_or_else(invalid)
    }

    fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).ok()?;
        // 1. Canonical encoding only: `from_bytes` also accepts a y coordinate >= p and a
        //    set sign bit on x = 0. Such a key has a second spelling, so two "distinct"
        //    policy entries (and two key ids) could be one key; re-encoding the decoded
        //    point must give back the same bytes (RFC 8032 section 5.1.3 decoding, strict).
        if key.to_edwards().compress().to_bytes() != *bytes {
            return None;
        }
        // 2. A small-order key makes signatures meaningless; verify_strict would refuse
        //    every signature anyway, but a policy listing one is a mistake worth naming.
        (!key.is_weak()).then_some(PublicKey { key })
    }

    /// Reads a public key file (a regular file, not through a symlink).
    pub fn load(path: &Path) -> Result<PublicKey> {
        let (mut opened, _) = file::open_regular(path)?;
        let text = read_small(&mut opened, path, MAX_KEY_FILE_BYTES, malformed_key(path))?;
        let bytes = parse_key_line(path, &text, PUBLIC_TAG)?;
        Self::from_bytes(&bytes).ok_or(Error::MalformedKey {
            path: path.to_owned(),
            reason: "not a valid ed25519 public key",
        })
    }

    /// Writes the key to a new file (mode 0644); never replaces an existing file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = format!("{PUBLIC_TAG} {}\n", self.to_hex());
        write_new(path, text.as_bytes(), 0o644)
    }

    /// `verify_strict`: rejects non-canonical signatures and small-order components.
    pub(crate) fn verify_strict(
        &self,
        message: &[u8],
        signature: &ed25519_dalek::Signature,
    ) -> bool {
        self.key.verify_strict(message, signature).is_ok()
    }
}

/// The keys a host trusts to sign updates, and how many distinct ones must sign.
///
/// Only constructible valid: `1 <= threshold <= keys.len()`, keys distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    threshold: usize,
}

/// The on-disk TOML shape of a [`TrustPolicy`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    threshold: usize,
    keys: Vec<String>,
}

impl TrustPolicy {
    /// Checks and builds a policy.
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Result<TrustPolicy> {
        let mut seen = BTreeSet::new();
        for key in &keys {
            if !seen.insert(key.key_id()) {
                return Err(Error::InvalidPolicy {
                    reason: format!("key {} is listed twice", key.to_hex()),
                });
            }
        }
        if threshold == 0 {
            return Err(Error::InvalidPolicy {
                reason: "threshold must be at least 1".into(),
            });
        }
        if threshold > keys.len() {
            return Err(Error::InvalidPolicy {
                reason: format!(
                    "threshold {threshold} is above the number of keys ({})",
                    keys.len()
                ),
            });
        }
        Ok(TrustPolicy { keys, threshold })
    }

    /// Parses the TOML text of a policy file.
    pub fn from_toml(text: &str) -> Result<TrustPolicy> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| Error::PolicySyntax {
            reason: Error::toml_reason(text, &e),
        })?;
        let keys = file
            .keys
            .iter()
            .map(|k| PublicKey::from_hex(k))
            .collect::<Result<Vec<_>>>()?;
        TrustPolicy::new(keys, file.threshold)
    }

    /// Reads a policy file: a regular file (not through a symlink), not writable by group
    /// or others, owned by root or by the user running this (like sshd's `StrictModes`:
    /// whoever can change the policy decides what the kernel runs).
    pub fn load(path: &Path) -> Result<TrustPolicy> {
        let (mut opened, meta) = file::open_regular(path)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(Error::PolicyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let me = file::effective_uid();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(Error::PolicyOwner {
                path: path.to_owned(),
                uid: meta.uid(),
                current: me,
            });
        }
        let text = read_small(&mut opened, path, MAX_POLICY_FILE_BYTES, |reason| {
            Error::PolicySyntax {
                reason: format!("{}: {reason}", path.display()),
            }
        })?;
        TrustPolicy::from_toml(&text)
    }

    /// The policy as TOML text, readable by [`TrustPolicy::from_toml`].
    pub fn to_toml(&self) -> String {
        let file = PolicyFile {
            threshold: self.threshold,
            keys: self.keys.iter().map(PublicKey::to_hex).collect(),
        };
        toml::to_string(&file)
            .expect("invariant: a struct of an integer and strings serializes to TOML")
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// How many distinct trusted keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The trusted key with this id.
    pub(crate) fn key(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| &k.key_id() == id)
    }
}

/// `true` when `text` is exactly `len` lowercase hex digits.
pub(crate) fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads a small opened text file, never more than `max` bytes; `bad` builds the error
/// for an oversized or non-UTF-8 file.
fn read_small(
    opened: &mut fs::File,
    path: &Path,
    max: u64,
    bad: impl Fn(&'static str) -> Error,
) -> Result<String> {
    let bytes = file::read_bounded(opened, path, max)?.ok_or_else(|| bad("file too large"))?;
    String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))
}

fn malformed_key(path: &Path) -> impl Fn(&'static str) -> Error + '_ {
    move |reason| Error::MalformedKey {
        path: path.to_owned(),
        reason,
    }
}

/// Parses `<tag> <64 hex>\n` into 32 bytes.
fn parse_key_line(path: &Path, text: &str, tag: &'static str) -> Result<[u8; 32]> {
    let bad = |reason| Error::MalformedKey {
        path: path.to_owned(),
        reason,
    };
    let line = text.strip_suffix('\n').unwrap_or(text);
    if line.contains('\n') {
        return Err(bad("expected exactly one line"));
    }
    let (found_tag, hex_part) = line.split_once(' ').ok_or(bad("expected '<tag> <hex>'"))?;
    if found_tag != tag {
        return Err(bad(if found_tag == SECRET_TAG || found_tag == PUBLIC_TAG {
            "wrong kind of key (private where public expected or the reverse)"
        } else {
            "unknown key file tag"
        }));
    }
    if !is_lower_hex(hex_part, 64) {
        return Err(bad("key must be 64 lowercase hex digits"));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut bytes)
        .map_err(|_| bad("key must be 64 lowercase hex digits"))?;
    Ok(bytes)
}

/// Creates `path` (never following or replacing an existing entry) with `mode` and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::KeyExists {
                path: path.to_owned(),
            },
            _ => Error::io(path, e),
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_id_is_sha256_of_public_key_bytes() {
        let key = SigningKey::from_seed(&[7; 32]);
        let public = key.public();
        assert_eq!(
            key.public().key_id().as_str(),
            hex::encode(Sha256::digest(public.to_bytes()))
        );
        assert_eq!(public.key_id().as_str().len(), 64);
    }

    #[test]
    fn private_key_is_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let key = SigningKey::generate().expect("generate");
        key.save_new(&path).expect("save");
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let before = fs::read(&path).expect("read");
        let other = SigningKey::generate().expect("generate");
        assert!(matches!(
            other.save_new(&path),
            Err(Error::KeyExists { .. })
        ));
        assert_eq!(fs::read(&path).expect("read"), before);
        assert_eq!(
            SigningKey::load(&path).expect("load").public(),
            key.public()
        );
    }

    #[test]
    fn private_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        SigningKey::generate()
            .expect("generate")
            .save_new(&path)
            .expect("save");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            SigningKey::load(&path),
            Err(Error::KeyPermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn public_key_round_trips_and_kinds_are_not_confused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_seed(&[9; 32]);
        let pub_path = dir.path().join("k.pub");
        key.public().save(&pub_path).expect("save");
        assert_eq!(PublicKey::load(&pub_path).expect("load"), key.public());
        let sec_path = dir.path().join("k.key");
        key.save_new(&sec_path).expect("save");
        assert!(matches!(
            PublicKey::load(&sec_path),
            Err(Error::MalformedKey { .. })
        ));
    }

    #[test]
    fn policy_round_trips_and_rejects_bad_thresholds() {
        let a = SigningKey::from_seed(&[1; 32]).public();
        let b = SigningKey::from_seed(&[2; 32]).public();
        let policy = TrustPolicy::new(vec![a, b], 2).expect("policy");
        assert_eq!(
            TrustPolicy::from_toml(&policy.to_toml()).expect("parse"),
            policy
        );
        assert!(matches!(
            TrustPolicy::new(vec![a], 0),
            Err(Error::InvalidPolicy { .. })
        ));
        assert!(matches!(
            TrustPolicy::new(vec![a], 2),
            Err(Error::InvalidPolicy { .. })
        ));
        assert!(matches!(
            TrustPolicy::new(vec![a, a], 1),
            Err(Error::InvalidPolicy { .. })
        ));
        assert!(matches!(
            TrustPolicy::from_toml("threshold = 1\nkeys = []\nextra = 1\n"),
            Err(Error::PolicySyntax { .. })
        ));
        assert!(matches!(
            TrustPolicy::from_toml("threshold = 1\nkeys = [\"zz\"]\n"),
            Err(Error::InvalidPublicKey { .. })
        ));
    }

    #[test]
    fn small_order_public_key_is_refused() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey::from_hex(&hex::encode(identity)),
            Err(Error::InvalidPublicKey { .. })
        ));
    }

    /// Issue 9 finding 4: `from_bytes` accepts y >= p (a second spelling of a key); only
    /// the canonical encoding is accepted now.
    #[test]
    fn non_canonical_public_key_encodings_are_refused() {
        // p = 2^255 - 19, little endian; p + k spells y = k.
        let mut found = 0;
        for k in 0u8..19 {
            let mut bytes = [0xffu8; 32];
            bytes[31] = 0x7f;
            bytes[0] = 0xed + k;
            let Ok(lax) = ed25519_dalek::VerifyingKey::from_bytes(&bytes) else {
                continue;
            };
            found += 1;
            assert_ne!(lax.to_edwards().compress().to_bytes(), bytes);
            assert!(
                PublicKey::from_bytes(&bytes).is_none(),
                "y = p + {k} accepted"
            );
            assert!(matches!(
                PublicKey::from_hex(&hex::encode(bytes)),
                Err(Error::InvalidPublicKey { .. })
            ));
        }
        assert!(found > 0, "no y >= p decodes: the test proves nothing");
        // x = 0 with the sign bit set: y = 1 (the identity) spelled with the sign bit.
        let mut neg_zero = [0u8; 32];
        neg_zero[0] = 1;
        neg_zero[31] = 0x80;
        assert!(PublicKey::from_bytes(&neg_zero).is_none());
        // A real key still loads.
        let key = SigningKey::from_seed(&[5; 32]).public();
        assert_eq!(PublicKey::from_hex(&key.to_hex()).expect("canonical"), key);
    }

    /// Issue 9 finding 4: key and policy files were opened through symlinks and fifos
    /// (a fifo hung the command forever).
    #[test]
    fn key_and_policy_files_must_be_regular_files_not_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_seed(&[4; 32]);
        let real = dir.path().join("k");
        key.save_new(&real).expect("save");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(matches!(
            SigningKey::load(&link),
            Err(Error::NotRegularFile {
                kind: "a symbolic link",
                ..
            })
        ));
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        assert!(matches!(
            TrustPolicy::load(&fifo),
            Err(Error::NotRegularFile { kind: "a fifo", .. })
        ));
        assert!(matches!(
            PublicKey::load(dir.path()),
            Err(Error::NotRegularFile {
                kind: "a directory",
                ..
            })
        ));
        let policy = dir.path().join("trust.toml");
        fs::write(
            &policy,
            TrustPolicy::new(vec![key.public()], 1)
                .expect("p")
                .to_toml(),
        )
        .expect("write");
        let policy_link = dir.path().join("trust-link.toml");
        std::os::unix::fs::symlink(&policy, &policy_link).expect("symlink");
        assert!(matches!(
            TrustPolicy::load(&policy_link),
            Err(Error::NotRegularFile { .. })
        ));
    }

    /// Issue 9 finding 4: a trust policy anyone in the group (or anyone) may rewrite
    /// decides what the kernel runs; refused like sshd's StrictModes.
    #[test]
    fn policy_writable_by_group_or_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trust.toml");
        let key = SigningKey::from_seed(&[4; 32]);
        fs::write(
            &path,
            TrustPolicy::new(vec![key.public()], 1)
                .expect("p")
                .to_toml(),
        )
        .expect("write");
        for (mode, ok) in [(0o644, true), (0o600, true), (0o664, false), (0o646, false)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            let r = TrustPolicy::load(&path);
            if ok {
                r.expect("owner-writable only");
            } else {
                assert!(
                    matches!(r, Err(Error::PolicyPermissions { mode: m, .. }) if m == mode),
                    "{mode:o}"
                );
            }
        }
    }

    /// Issue 9 finding 4: ownership rules, where the test can change owners (as root).
    #[test]
    fn key_and_policy_owned_by_another_user_are_refused() {
        if file::effective_uid() != 0 {
            // Only root can give a file away; the rule itself is the same code path.
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("k");
        let key = SigningKey::from_seed(&[4; 32]);
        key.save_new(&key_path).expect("save");
        let policy = dir.path().join("trust.toml");
        fs::write(
            &policy,
            TrustPolicy::new(vec![key.public()], 1)
                .expect("p")
                .to_toml(),
        )
        .expect("write");
        let other = rustix::process::Uid::from_raw(4242);
        for path in [&key_path, &policy] {
            rustix::fs::chown(path, Some(other), None).expect("chown");
        }
        assert!(matches!(
            SigningKey::load(&key_path),
            Err(Error::KeyOwner {
                uid: 4242,
                expected: 0,
                ..
            })
        ));
        assert!(matches!(
            TrustPolicy::load(&policy),
            Err(Error::PolicyOwner { uid: 4242, .. })
        ));
        // Owned by root (the current user here): accepted.
        rustix::fs::chown(&policy, Some(rustix::process::Uid::ROOT), None).expect("chown");
        TrustPolicy::load(&policy).expect("root-owned policy");
    }
}
