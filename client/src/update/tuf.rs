//! The TUF client workflow, all of it tough's (root chain, timestamp,
//! snapshot, targets; rollback, freeze, mix-and-match, fast-forward recovery,
//! size limits), around a datastore that changes only when a mirror passed.
//!
//! tough writes its datastore during a load. Each attempt therefore loads
//! into a private copy of `<state>/tuf/`; only an attempt that succeeded
//! (metadata and downloads) is written back, file by file atomically, so a
//! refused mirror or `--check` leaves the trusted metadata as it was.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tough::schema::RoleType;
use tough::{ExpirationEnforcement, Limits, Repository, RepositoryLoader, TargetName};
use url::Url;

use super::transport::{MirrorTransport, NetError, Resume};
use crate::error::{Error, Result};
use crate::fsutil;

/// The datastore files tough reads and writes.
const DATASTORE_FILES: [&str; 5] = [
    "root.json",
    "timestamp.json",
    "snapshot.json",
    "targets.json",
    "latest_known_time.json",
];

/// Why a mirror's metadata or target was refused: each TUF attack by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "refusal")]
#[non_exhaustive]
pub enum Refusal {
    /// Freeze attack: metadata past its expiry.
    Expired { role: String },
    /// Older than what the host already trusts.
    Rollback { role: String, detail: String },
    /// Signatures below the role's threshold, or by unknown keys.
    Signature { role: String, detail: String },
    /// Metadata that does not match what the role above it signed for.
    MixAndMatch { role: String, detail: String },
    /// Target bytes other than the ones the targets role signed for.
    TargetHash { target: String },
    /// Endless data: more bytes than the metadata or the limits allow.
    TooLarge { what: String, max: u64 },
    /// More root versions in a row than the client walks.
    RootChainTooLong { max: u64 },
    /// Unparsable metadata or ksplice target information.
    Malformed { what: String, detail: String },
    /// The clock is earlier than in a past run.
    ClockBackward { detail: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Expired { role } => write!(f, "{role} expired (freeze attack?)"),
            Refusal::Rollback { role, detail } => write!(f, "rollback of {role}: {detail}"),
            Refusal::Signature { role, detail } => {
                write!(f, "{role} signature check failed: {detail}")
            }
            Refusal::MixAndMatch { role, detail } => {
                write!(
                    f,
                    "{role} does not match the signed metadata (mix-and-match): {detail}"
                )
            }
            Refusal::TargetHash { target } => {
                write!(f, "target {target}: hash mismatch (arbitrary package)")
            }
            Refusal::TooLarge { what, max } => {
                write!(f, "{what} larger than {max} bytes (endless data)")
            }
            Refusal::RootChainTooLong { max } => {
                write!(f, "more than {max} root updates")
            }
            Refusal::Malformed { what, detail } => write!(f, "malformed {what}: {detail}"),
            Refusal::ClockBackward { detail } => write!(f, "clock stepped backward: {detail}"),
        }
    }
}

/// How one mirror failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The mirror served data that TUF refuses.
    Refused(Refusal),
    /// Unreachable, HTTP errors, timeouts, missing files.
    Network(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(r) => write!(f, "refused: {r}"),
            Failure::Network(m) => write!(f, "unreachable or failing: {m}"),
        }
    }
}

fn role_name(role: RoleType) -> String {
    format!("{role} metadata")
}

/// Names the security failure inside a tough error, looking through the
/// transport errors tough wraps its stream checks in; anything else is the
/// network's (or the mirror's file layout).
pub fn classify(err: &tough::error::Error) -> Failure {
    use tough::error::Error as T;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            let refusal = match t {
                T::ExpiredMetadata { role, .. } => Some(Refusal::Expired {
                    role: role_name(*role),
                }),
                T::OlderMetadata { role, .. } => Some(Refusal::Rollback {
                    role: role_name(*role),
                    detail: t.to_string(),
                }),
                T::OlderSnapshotInTimestamp { .. } => Some(Refusal::Rollback {
                    role: "snapshot metadata".into(),
                    detail: t.to_string(),
                }),
                T::SnapshotRoleRollback { role, .. } | T::SnapshotRoleMissing { role, .. } => {
                    Some(Refusal::Rollback {
                        role: format!("{role} metadata"),
                        detail: t.to_string(),
                    })
                }
                T::VerifyMetadata { role, source, .. } => Some(Refusal::Signature {
                    role: role_name(*role),
                    detail: source.to_string(),
                }),
                T::VerifyRoleMetadata { role, source, .. } => Some(Refusal::Signature {
                    role: format!("{role} metadata"),
                    detail: source.to_string(),
                }),
                T::VerifyTrustedMetadata { source, .. } => Some(Refusal::Signature {
                    role: "trusted root".into(),
                    detail: source.to_string(),
                }),
                T::VersionMismatch { role, .. } => Some(Refusal::MixAndMatch {
                    role: role_name(*role),
                    detail: t.to_string(),
                }),
                T::HashMismatch { context, .. } => {
                    // Metadata hashes come from the role above it; target
                    // hashes from the targets role (ksplice targets are
                    // never `.json`).
                    if context.ends_with(".json") {
                        Some(Refusal::MixAndMatch {
                            role: context.rsplit('/').next().unwrap_or(context).to_owned(),
                            detail: t.to_string(),
                        })
                    } else {
                        Some(Refusal::TargetHash {
                            target: context.rsplit('/').next().unwrap_or(context).to_owned(),
                        })
                    }
                }
                T::MaxSizeExceeded {
                    max_size,
                    specifier,
                    ..
                } => Some(Refusal::TooLarge {
                    what: (*specifier).to_owned(),
                    max: *max_size,
                }),
                T::MaxUpdatesExceeded {
                    max_root_updates, ..
                } => Some(Refusal::RootChainTooLong {
                    max: *max_root_updates,
                }),
                T::ParseMetadata { role, source, .. } => Some(Refusal::Malformed {
                    what: role_name(*role),
                    detail: source.to_string(),
                }),
                T::ParseTrustedMetadata { source, .. } => Some(Refusal::Malformed {
                    what: "trusted root".into(),
                    detail: source.to_string(),
                }),
                T::TimestampMetaLength { .. }
                | T::MissingSnapshotMeta { .. }
                | T::MetaMissing { .. }
                | T::SnapshotTargetsMetaMissing { .. } => Some(Refusal::Malformed {
                    what: "metadata".into(),
                    detail: t.to_string(),
                }),
                T::SpecVersion { .. } => Some(Refusal::Malformed {
                    what: "metadata".into(),
                    detail: t.to_string(),
                }),
                T::SystemTimeSteppedBackward { .. } => Some(Refusal::ClockBackward {
                    detail: t.to_string(),
                }),
                _ => None,
            };
            if let Some(r) = refusal {
                return Failure::Refused(r);
            }
        }
        cur = e.source();
    }
    Failure::Network(chain(err))
}

/// The error and its sources, `: `-joined (tough's messages repeat the
/// source in some variants; keep the outermost and the network's own).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        if e.downcast_ref::<NetError>().is_some() || e.downcast_ref::<ureq::Error>().is_some() {
            let s = e.to_string();
            if !parts.iter().any(|p| p.contains(&s)) {
                parts.push(s);
            }
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// A private copy of the trusted datastore for one attempt.
#[derive(Debug)]
pub struct Datastore {
    dir: tempfile::TempDir,
}

impl Datastore {
    /// Copies `<state>/tuf/` (if any) into a new 0700 directory inside
    /// `scratch`.
    pub fn copy_of(trusted: &Path, scratch: &Path) -> Result<Datastore> {
        let dir = tempfile::Builder::new()
            .prefix(".tuf.")
            .suffix(".scratch")
            .tempdir_in(scratch)
            .map_err(|e| Error::io(scratch, e))?;
        for name in DATASTORE_FILES {
            let src = trusted.join(name);
            match super::config::read_capped(&src, super::config::MAX_ROOT_BYTES * 16) {
                Ok(bytes) => {
                    let dst = dir.path().join(name);
                    std::fs::write(&dst, bytes).map_err(|e| Error::io(&dst, e))?;
                }
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Datastore { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The root tough last trusted, when it is newer than `configured`:
    /// the chain continues from there (a root rotated away is not walked
    /// again, TUF 5.2.1 "load the trusted root from persistent storage").
    pub fn newest_root(&self, configured: Vec<u8>) -> Vec<u8> {
        let version = |b: &[u8]| {
            serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(b)
                .ok()
                .map(|r| r.signed.version.get())
        };
        let stored = std::fs::read(self.dir.path().join("root.json")).ok();
        match (version(&configured), stored) {
            (Some(c), Some(s)) if version(&s).is_some_and(|v| v > c) => s,
            _ => configured,
        }
    }

    /// Writes this copy back over `trusted` (0700), each file atomically;
    /// files tough deleted (fast-forward recovery) are deleted there too.
    pub fn commit(&self, trusted: &Path) -> Result<()> {
        fsutil::create_private_dir(trusted)?;
        for name in DATASTORE_FILES {
            let src = self.dir.path().join(name);
            let dst = trusted.join(name);
            match std::fs::read(&src) {
                // Unchanged files are not rewritten (a refresh with nothing
                // new would otherwise fsync the whole targets metadata).
                Ok(bytes) if std::fs::read(&dst).is_ok_and(|old| old == bytes) => {}
                Ok(bytes) => fsutil::write_atomic(&dst, &bytes, fsutil::PRIVATE_FILE)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => fsutil::remove_durable(&dst)?,
                Err(e) => return Err(Error::io(&src, e)),
            }
        }
        Ok(())
    }
}

/// tough's limits: its defaults (1 MiB root, timestamp and snapshot, 10 MiB
/// targets when the snapshot gives no length, 1024 root updates).
pub fn limits() -> Limits {
    Limits::default()
}

/// Runs the TUF client workflow against `mirror`.
pub async fn load(
    root: &[u8],
    mirror: &Url,
    store: &Datastore,
    transport: MirrorTransport,
) -> Result<Repository, Failure> {
    let join = |p: &str| {
        mirror
            .join(p)
            .map_err(|e| Failure::Network(format!("{mirror}{p}: {e}")))
    };
    let metadata = join("metadata/")?;
    let targets = join("targets/")?;
    RepositoryLoader::new(&root, metadata, targets)
        .transport(transport)
        .limits(limits())
        .datastore(store.path())
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
        .map_err(|e| classify(&e))
}

/// The URL tough fetches `name` from (consistent snapshots prefix the
/// sha256), so that the transport can resume exactly that download.
pub fn target_url(repo: &Repository, mirror: &Url, name: &str, sha256: &str) -> Option<Url> {
    let file = if repo.root().signed.consistent_snapshot {
        format!("{sha256}.{name}")
    } else {
        name.to_owned()
    };
    mirror.join("targets/").ok()?.join(&file).ok()
}

/// Downloads a target through tough (length and sha256 checked as the
/// bytes stream in), resuming from `partial`.
pub async fn read_target(
    repo: &Repository,
    transport: &MirrorTransport,
    name: &str,
    resume: Option<Resume>,
) -> Result<Vec<u8>, Failure> {
    use tough::IntoVec;
    let target = TargetName::new(name).map_err(|e| {
        Failure::Refused(Refusal::Malformed {
            what: "target name".into(),
            detail: e.to_string(),
        })
    })?;
    if let Some(r) = resume {
        transport.set_resume(r);
    }
    let result = async {
        let stream = repo
            .read_target(&target)
            .await
            .map_err(|e| classify(&e))?
            .ok_or_else(|| {
                Failure::Network(format!("target {name} vanished from the repository"))
            })?;
        stream.into_vec().await.map_err(|e| classify(&e))
    }
    .await;
    transport.clear_resume();
    result
}

/// The partial downloads directory and one target's partial file: a name
/// with a random part (found again by its sha256 prefix), 0600.
pub fn partial_file(dir: &Path, sha256: &str) -> Result<(PathBuf, bool)> {
    fsutil::create_private_dir(dir)?;
    let prefix = format!("{sha256}.");
    let existing = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .find(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix)
                && n.ends_with(".part")
                && e.file_type().is_ok_and(|t| t.is_file())
        });
    if let Some(e) = existing {
        return Ok((e.path(), true));
    }
    let f = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".part")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(
            fsutil::PRIVATE_FILE,
        ))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let (_, path) = f.keep().map_err(|e| Error::io(dir, e.error))?;
    Ok((path, false))
}
