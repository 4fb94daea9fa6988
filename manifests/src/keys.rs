//! Ed25519 signing keys, public keys, key ids and the trust policy, with their text file formats.
//!
//! File formats (all ASCII, one line, terminated by `\n`; see docs/package-format.md):
//! - private key: `ksplice-ed25519-secret <64 lowercase hex: the 32-byte seed>`
//! - public key:  `ksplice-ed25519-public <64 lowercase hex: the 32-byte key>`
//! - trust policy: TOML `threshold = N` and `keys = ["<64 hex public key>", ...]`.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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

    /// Reads a private key file; refuses one that group or others may access.
    pub fn load(path: &Path) -> Result<SigningKey> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = read_small(path, MAX_KEY_FILE_BYTES, malformed_key(path))?;
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

    /// Parses 64 hex digits; rejects points that are not valid or are of small order.
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
        // A small-order key makes signatures meaningless; verify_strict would refuse
        // every signature anyway, but a policy listing one is a mistake worth naming.
        (!key.is_weak()).then_some(PublicKey { key })
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<PublicKey> {
        let text = read_small(path, MAX_KEY_FILE_BYTES, malformed_key(path))?;
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

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<TrustPolicy> {
        let text = read_small(path, MAX_POLICY_FILE_BYTES, |reason| Error::PolicySyntax {
            reason: format!("{}: {reason}", path.display()),
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

/// Reads a small text file, refusing anything over `max` bytes before reading it all;
/// `bad` builds the error for an oversized or non-UTF-8 file.
fn read_small(path: &Path, max: u64, bad: impl Fn(&'static str) -> Error) -> Result<String> {
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(bad("file too large"));
    }
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
}
