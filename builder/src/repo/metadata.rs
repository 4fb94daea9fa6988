//! The TUF metadata of the repository: what is published now, and new signed
//! roles built from tough's schema types and signed by tough.
//!
//! Each role is signed with `tough::editor::signed::SignedRole::new`, which
//! serializes canonical JSON, signs it with the keys the root lists for the
//! role and lays out the file bytes. `RepositoryEditor::sign` is not used for
//! publishing because it always re-signs the targets role: a daily timestamp
//! refresh would then need the (offline) targets key.

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::{Hashes, KeyHolder, Metafile, Root, Signed, Snapshot, Targets, Timestamp};

use super::config::{Lifetime, Role};
use super::error::{Error, Result};
use super::keys::KeyFile;

/// The TUF specification version every role declares.
pub const SPEC_VERSION: &str = "1.0.0";
/// Largest metadata file read back (1,000 targets make about 1 MB of targets).
const MAX_METADATA_BYTES: u64 = 256 << 20;

/// `DIR`'s layout (docs/fleet.md "Repository layout"): a contract with the client.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    /// What a mirror serves.
    pub public: PathBuf,
    /// `public/metadata/`: `N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`.
    pub metadata: PathBuf,
    /// `public/targets/`: `<sha256>.ksplice-<id>.tar.gz`.
    pub targets: PathBuf,
    /// Development keys, 0700, never under `public/`.
    pub keys: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        let public = dir.join("public");
        Layout {
            dir: dir.to_owned(),
            metadata: public.join("metadata"),
            targets: public.join("targets"),
            keys: dir.join("keys"),
            public,
        }
    }

    /// The consistent-snapshot file of a target: its sha256, a dot, its name —
    /// the name tough's `copy_target` and TUF clients use.
    pub fn target_file(&self, sha256_hex: &str, name: &str) -> PathBuf {
        self.targets.join(format!("{sha256_hex}.{name}"))
    }
}

/// The expiry `lifetime` from now, in whole seconds: TUF clients such as
/// python-tuf read `expires` as `%Y-%m-%dT%H:%M:%SZ`, without fractions.
pub fn expires_in(lifetime: Lifetime) -> Result<jiff::Timestamp> {
    let now = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(now.saturating_add(lifetime.seconds())).map_err(|_| {
        Error::InvalidOption {
            option: "duration",
            value: lifetime.seconds().to_string(),
            reason: "the expiry would be out of range",
        }
    })
}

/// Reads and parses one metadata file (bounded).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<(Vec<u8>, T)> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(Error::io(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io(path))?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(Error::Io {
            path: path.to_owned(),
            source: std::io::Error::other("metadata file larger than 256 MiB"),
        });
    }
    let value = serde_json::from_slice(&bytes).map_err(|source| Error::Metadata {
        path: path.to_owned(),
        source,
    })?;
    Ok((bytes, value))
}

/// Versions `N` of the `N.<role>.json` files in `metadata/`.
fn versions(metadata: &Path, role: &str) -> Result<Vec<u64>> {
    let suffix = format!(".{role}.json");
    let mut found = Vec::new();
    let entries = match fs::read_dir(metadata) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io(metadata)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(metadata))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(&suffix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// The newest root and its version; the chain must run 1, 2, ... N without gaps.
pub fn latest_root(layout: &Layout) -> Result<(NonZeroU64, Signed<Root>)> {
    let found = versions(&layout.metadata, "root")?;
    let not_repo = |reason: String| Error::NotARepository {
        path: layout.dir.clone(),
        reason,
    };
    if found.first() != Some(&1) || found.iter().zip(1..).any(|(v, want)| *v != want) {
        return Err(not_repo(format!(
            "root versions {found:?} in {} are not 1..N",
            layout.metadata.display()
        )));
    }
    let n = *found.last().unwrap_or(&1);
    let path = layout.metadata.join(format!("{n}.root.json"));
    let (_, root): (_, Signed<Root>) = read_json(&path)?;
    let version = NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN);
    if root.signed.version != version {
        return Err(not_repo(format!(
            "{} says version {}",
            path.display(),
            root.signed.version
        )));
    }
    Ok((version, root))
}

/// What is published now.
#[derive(Debug, Default)]
pub struct Current {
    pub timestamp_version: u64,
    /// The targets role the current snapshot names: its version, exact bytes, value.
    pub targets: Option<(NonZeroU64, Vec<u8>, Signed<Targets>)>,
    /// Highest version of any `N.snapshot.json` / `N.targets.json` on disk (a
    /// publish that stopped before its timestamp may have left a higher one: never
    /// reuse its number for other bytes).
    pub max_snapshot: u64,
    pub max_targets: u64,
}

impl Current {
    pub fn read(layout: &Layout) -> Result<Current> {
        let mut current = Current {
            max_snapshot: versions(&layout.metadata, "snapshot")?
                .last()
                .copied()
                .unwrap_or(0),
            max_targets: versions(&layout.metadata, "targets")?
                .last()
                .copied()
                .unwrap_or(0),
            ..Current::default()
        };
        let ts_path = layout.metadata.join("timestamp.json");
        if !ts_path.exists() {
            return Ok(current);
        }
        let (_, timestamp): (_, Signed<Timestamp>) = read_json(&ts_path)?;
        current.timestamp_version = timestamp.signed.version.get();
        let Some(snap_meta) = timestamp.signed.meta.get("snapshot.json") else {
            return Ok(current);
        };
        let snap_path = layout
            .metadata
            .join(format!("{}.snapshot.json", snap_meta.version));
        let (_, snapshot): (_, Signed<Snapshot>) = read_json(&snap_path)?;
        if let Some(meta) = snapshot.signed.meta.get("targets.json") {
            let path = layout
                .metadata
                .join(format!("{}.targets.json", meta.version));
            let (bytes, targets): (_, Signed<Targets>) = read_json(&path)?;
            current.targets = Some((meta.version, bytes, targets));
        }
        current.max_snapshot = current.max_snapshot.max(snap_meta.version.get());
        Ok(current)
    }
}

/// Which of `keys` the root lists for `role`, and whether they meet its threshold.
pub fn check_keys(root: &Root, role: Role, keys: &[KeyFile], hint: &'static str) -> Result<()> {
    let listed = root
        .roles
        .get(&role.tuf())
        .map(|r| (r.keyids.clone(), r.threshold.get()))
        .unwrap_or_default();
    let mut have: Vec<_> = keys
        .iter()
        .filter(|k| listed.0.contains(k.key_id()))
        .map(|k| k.key_id().clone())
        .collect();
    have.sort();
    have.dedup();
    if (have.len() as u64) < listed.1 || listed.1 == 0 {
        return Err(Error::MissingKeys {
            role: role.name(),
            have: have.len(),
            threshold: listed.1,
            hint,
        });
    }
    Ok(())
}

/// Signs `role` with those of `keys` that `root` lists for it (tough does the
/// canonical JSON, the signatures and the file bytes).
pub async fn sign<T>(role: T, root: &Root, keys: Vec<KeyFile>) -> Result<SignedRole<T>>
where
    T: tough::schema::Role + Serialize,
{
    let what = format!("signing {}", T::TYPE);
    let sources: Vec<Box<dyn KeySource>> = keys.into_iter().map(KeyFile::source).collect();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    SignedRole::new(role, &KeyHolder::Root(root.clone()), &sources, &rng)
        .await
        .map_err(Error::tuf(what))
}

/// The snapshot's or timestamp's description of a metadata file: its version,
/// length and sha256 (TUF 1.0 §4.4, §4.6).
pub fn metafile(version: NonZeroU64, bytes: &[u8]) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Sha256::digest(bytes).to_vec().into(),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// A new, unsigned snapshot naming the targets file `targets`.
pub fn snapshot(version: NonZeroU64, expires: jiff::Timestamp, targets: Metafile) -> Snapshot {
    let mut snapshot = Snapshot::new(SPEC_VERSION.to_owned(), version, expires);
    snapshot.meta.insert("targets.json".to_owned(), targets);
    snapshot
}

/// A new, unsigned timestamp naming the snapshot file `snapshot`.
pub fn timestamp(version: NonZeroU64, expires: jiff::Timestamp, snapshot: Metafile) -> Timestamp {
    let mut timestamp = Timestamp::new(SPEC_VERSION.to_owned(), version, expires);
    timestamp.meta.insert("snapshot.json".to_owned(), snapshot);
    timestamp
}

/// `n + 1` as a version.
pub fn next(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n.saturating_add(1)).unwrap_or(NonZeroU64::MAX)
}

/// Runs `future` on a current-thread tokio runtime (tough's API is async; the
/// CLI is not, and needs no second thread for it).
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(Error::Runtime)?;
    Ok(runtime.block_on(future))
}
