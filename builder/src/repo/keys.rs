//! TUF signing keys: files in the formats tough's key source reads, read once
//! with the checks ssh applies, and handed to tough's signing as a `KeySource`.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::sign::Sign;

use super::error::{Error, KeyError, Result};
use super::fsio;

/// Largest key file read (an RSA PEM key is a few KiB).
const MAX_KEY_BYTES: u64 = 64 << 10;

/// A private key file loaded into memory: PKCS#8 DER ed25519 or ECDSA P-256,
/// or a PEM RSA key — what `tough::sign::parse_keypair` reads. Its `Debug`
/// shows only the path and key id.
pub struct KeyFile {
    path: PathBuf,
    bytes: Vec<u8>,
    public: Key,
    key_id: Decoded<Hex>,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("path", &self.path)
            .field("key_id", &hex::encode(&*self.key_id))
            .finish()
    }
}

impl KeyFile {
    /// Reads a key file: not through a symlink, a regular file, neither group nor
    /// others may access it, and tough must recognise it.
    pub fn load(path: &Path) -> Result<KeyFile> {
        let bad = |reason: String| Error::Key {
            path: path.to_owned(),
            reason,
        };
        let (file, meta) = manifests::file::open_regular(path).map_err(|e| match e {
            manifests::Error::Io { path, source } => Error::Io { path, source },
            other => bad(other.to_string()),
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::io(path))?;
        if bytes.len() as u64 > MAX_KEY_BYTES {
            return Err(bad("larger than 64 KiB: not a key file".into()));
        }
        let pair = tough::sign::parse_keypair(&bytes).map_err(|e| {
            bad(format!(
                "not a private key tough reads (PKCS#8 DER ed25519 or ECDSA, PEM RSA): {e}"
            ))
        })?;
        let public = pair.tuf_key();
        let key_id = public
            .key_id()
            .map_err(|e| bad(format!("computing the key id: {e}")))?;
        Ok(KeyFile {
            path: path.to_owned(),
            bytes,
            public,
            key_id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key as TUF metadata lists it.
    pub fn public(&self) -> &Key {
        &self.public
    }

    /// The TUF key id (sha256 of the canonical public key).
    pub fn key_id(&self) -> &Decoded<Hex> {
        &self.key_id
    }

    /// Boxed as tough's signing functions take it.
    pub fn source(self) -> Box<dyn KeySource> {
        Box::new(self)
    }
}

#[async_trait]
impl KeySource for KeyFile {
    async fn as_sign(&self) -> std::result::Result<Box<dyn Sign>, KeyError> {
        Ok(Box::new(tough::sign::parse_keypair(&self.bytes)?))
    }

    async fn write(&self, _value: &str, _key_id_hex: &str) -> std::result::Result<(), KeyError> {
        Err(format!(
            "{}: ksplice-build never rewrites key files",
            self.path.display()
        )
        .into())
    }
}

/// Writes a new ed25519 key (PKCS#8 v2 DER, made by aws-lc-rs, the library
/// tough signs with) to `path`, mode 0600; never replaces an existing file.
pub fn generate(path: &Path) -> Result<KeyFile> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let der =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| Error::Key {
            path: path.to_owned(),
            reason: "generating an ed25519 key failed".into(),
        })?;
    if path.symlink_metadata().is_ok() {
        return Err(Error::Key {
            path: path.to_owned(),
            reason: "exists: a key file is never replaced".into(),
        });
    }
    fsio::write_new(path, der.as_ref(), 0o600)?;
    KeyFile::load(path)
}
