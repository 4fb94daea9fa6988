//! `ksplice-build repo`: a TUF 1.0 repository of ksplice packages, written with tough.
//!
//! The repository is a directory (docs/fleet.md "Publishing"):
//!
//! ```text
//! DIR/repo.toml          expiry per role, key files, thresholds, the target list
//! DIR/keys/              development keys (0700, files 0600), never served
//! DIR/lock               taken by every command
//! DIR/public/metadata/   1.root.json ... N.root.json, timestamp.json,
//!                        N.snapshot.json, N.targets.json (consistent snapshots)
//! DIR/public/targets/    <sha256>.ksplice-<id>.tar.gz
//! ```
//!
//! `DIR/public/` is what mirrors serve. Each target's TUF `custom` object is
//! `{"ksplice": manifests::fleet::TargetInfo}`. The commands are `init`, `add`
//! (stage packages), `publish` (sign new targets when they changed, then a new
//! snapshot and timestamp) and `rotate_key` (a new root version).

pub mod config;
pub mod error;
mod fsio;
pub mod keys;
pub mod metadata;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use manifests::fleet::{self, TargetInfo};
use time::OffsetDateTime;
use tough::schema::{Hashes, RoleKeys, Root, Target, Targets};
use tough::TargetName;

use config::{Config, Expires, Role, RoleConfig, Roles, StagedTarget, CONFIG_FILE};
pub use error::{Error, Result};
use fsio::Lock;
use keys::KeyFile;
use metadata::{Current, Layout, SPEC_VERSION};

/// Mode of every file under `public/` (world-readable: mirrors serve it).
const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode of the directories under `public/`.
const PUBLIC_DIR_MODE: u32 = 0o755;

/// Options of [`init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Root key files (offline: given again to `rotate_key`); none → a new dev key.
    pub root_keys: Vec<PathBuf>,
    pub root_threshold: Option<u64>,
    /// Targets key files (offline: given again to `publish`); none → a new dev key.
    pub targets_keys: Vec<PathBuf>,
    pub targets_threshold: Option<u64>,
    /// Online keys; their paths are kept in repo.toml. None → a new dev key.
    pub snapshot_key: Option<PathBuf>,
    pub timestamp_key: Option<PathBuf>,
    /// `ROLE=DURATION` expiry overrides, kept in repo.toml.
    pub expires: Vec<String>,
}

/// What [`publish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The new targets version, or `None` when the target list was unchanged.
    pub targets_version: Option<u64>,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    pub targets: usize,
}

/// Creates the repository in `dir` (which may exist, but must not hold one):
/// keys, `1.root.json`, then an empty signed targets, snapshot and timestamp so
/// that clients can refresh at once.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<Published> {
    let layout = Layout::new(dir);
    // 1. Refuse before anything is written.
    for path in [
        dir.join(CONFIG_FILE),
        layout.public.clone(),
        layout.keys.clone(),
    ] {
        if path.symlink_metadata().is_ok() {
            return Err(Error::AlreadyInitialized { path });
        }
    }
    let mut expires = Expires::default();
    expires.apply(&opts.expires)?;
    let given = |paths: &[PathBuf]| -> Result<Vec<KeyFile>> {
        paths.iter().map(|p| KeyFile::load(p)).collect()
    };
    let mut root_keys = given(&opts.root_keys)?;
    let mut targets_keys = given(&opts.targets_keys)?;
    let mut snapshot_keys = given(opts.snapshot_key.as_slice())?;
    let mut timestamp_keys = given(opts.timestamp_key.as_slice())?;
    let threshold = |role: Role, wanted: Option<u64>, given: usize| -> Result<u64> {
        let keys = given.max(1);
        let t = wanted.unwrap_or(1);
        if t == 0 || t > keys as u64 {
            return Err(Error::Threshold {
                role: role.name(),
                threshold: t,
                keys,
            });
        }
        Ok(t)
    };
    let root_threshold = threshold(Role::Root, opts.root_threshold, root_keys.len())?;
    let targets_threshold = threshold(Role::Targets, opts.targets_threshold, targets_keys.len())?;

    // 2. Directories with their modes, then a new key for each role that has none.
    if dir.symlink_metadata().is_err() {
        fsio::ensure_dir(dir, 0o755)?;
    }
    fsio::ensure_dir(&layout.keys, 0o700)?;
    for d in [&layout.public, &layout.metadata, &layout.targets] {
        fsio::ensure_dir(d, PUBLIC_DIR_MODE)?;
    }
    let _lock = Lock::take(dir, true)?;
    let mut roles = Vec::new();
    for (role, keys, threshold) in [
        (Role::Root, &mut root_keys, root_threshold),
        (Role::Targets, &mut targets_keys, targets_threshold),
        (Role::Snapshot, &mut snapshot_keys, 1),
        (Role::Timestamp, &mut timestamp_keys, 1),
    ] {
        let key_files = if keys.is_empty() {
            let rel = PathBuf::from("keys").join(format!("{}.pk8", role.name()));
            keys.push(keys::generate(&dir.join(&rel))?);
            vec![rel]
        } else if matches!(role, Role::Snapshot | Role::Timestamp) {
            keys.iter()
                .map(|k| std::path::absolute(k.path()).map_err(Error::io(k.path())))
                .collect::<Result<_>>()?
        } else {
            // Offline keys: never recorded, given again when needed.
            Vec::new()
        };
        roles.push(RoleConfig {
            threshold,
            key_files,
        });
    }
    let [root_cfg, targets_cfg, snapshot_cfg, timestamp_cfg]: [RoleConfig; 4] =
        roles.try_into().expect("invariant: four roles were pushed");
    let config = Config {
        format: config::CONFIG_FORMAT,
        expires,
        roles: Roles {
            root: root_cfg,
            targets: targets_cfg,
            snapshot: snapshot_cfg,
            timestamp: timestamp_cfg,
        },
        targets: Vec::new(),
    };

    // 3. Root version 1, signed by the root keys.
    let mut root = Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: metadata::expires_in(config.expires.get(Role::Root)?)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for (role, keys) in [
        (Role::Root, &root_keys),
        (Role::Targets, &targets_keys),
        (Role::Snapshot, &snapshot_keys),
        (Role::Timestamp, &timestamp_keys),
    ] {
        set_role_keys(&mut root, role, keys, config.roles.get(role).threshold);
    }
    metadata::check_keys(&root, Role::Root, &root_keys, "--root-key")?;
    let signed = metadata::block_on(metadata::sign(root.clone(), &root, root_keys))??;
    write_public(&layout.metadata.join("1.root.json"), signed.buffer())?;
    config.save(dir)?;

    // 4. The first (empty) targets, snapshot and timestamp.
    publish_with(&layout, &config, &config.expires, &[], targets_keys)
}

/// Options of [`add`].
#[derive(Debug, Clone)]
pub struct AddOptions {
    pub channel: String,
    /// Waves as `manifests::fleet::parse_waves` reads them.
    pub waves: Option<String>,
    /// RFC 3339 UTC; now when `None`.
    pub published: Option<String>,
    /// Replace an update already in the repository with other bytes.
    pub replace: bool,
}

impl Default for AddOptions {
    fn default() -> Self {
        AddOptions {
            channel: fleet::DEFAULT_CHANNEL.to_owned(),
            waves: None,
            published: None,
            replace: false,
        }
    }
}

/// What [`add`] did with one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    New,
    Replaced,
    /// The same bytes were already in the repository: nothing changed.
    Unchanged,
    /// Other bytes, but a rebuild of the update already in the repository: the
    /// same id, target kernel, stream, module, text and source change
    /// (`patch.diff`). A build is not byte-reproducible (creation time, the
    /// signatures' inputs), so a re-run pipeline rebuilds every level; the
    /// published bytes, which hosts may already run, are kept.
    Rebuilt,
}

/// Stages `packages` for the next publish: each must be a well-formed signed
/// ksplice package (its signatures are for hosts to check, against their own
/// trust policy). All are checked before anything is written; a refusal
/// leaves `dir` as it was.
pub fn add(
    dir: &Path,
    packages: &[PathBuf],
    opts: &AddOptions,
) -> Result<Vec<(TargetInfo, Staged)>> {
    let layout = Layout::new(dir);
    let _lock = Lock::take(dir, false)?;
    let mut config = Config::load(dir)?;
    let published = match &opts.published {
        Some(text) => fleet::parse_utc("published", text).map_err(Error::Published)?,
        None => OffsetDateTime::now_utc(),
    };

    // 1. Read and check every package; nothing is written yet.
    let mut offered: BTreeMap<String, (StagedTarget, Vec<u8>, manifests::Manifest)> =
        BTreeMap::new();
    for path in packages {
        let package = |source| Error::Package {
            path: path.clone(),
            source,
        };
        let bytes = manifests::read_package_file(path).map_err(package)?;
        let inspected = manifests::inspect_package_bytes(&bytes).map_err(package)?;
        let m = &inspected.manifest;
        let info_err = |source| Error::TargetInfo {
            id: m.id.clone(),
            source,
        };
        let waves = match &opts.waves {
            Some(spec) => fleet::parse_waves(spec, published).map_err(info_err)?,
            None => Vec::new(),
        };
        let info =
            TargetInfo::from_manifest(m, &opts.channel, published, waves).map_err(info_err)?;
        let name = info.target_name();
        TargetName::new(name.as_str()).map_err(Error::tuf(format!("target name {name}")))?;
        let staged = StagedTarget {
            name,
            sha256: manifests::sha256_hex(&bytes),
            length: bytes.len() as u64,
            ksplice: info,
        };
        if offered
            .insert(m.id.clone(), (staged, bytes, inspected.manifest.clone()))
            .is_some()
        {
            return Err(Error::DuplicateId { id: m.id.clone() });
        }
    }

    // 2. Against the repository: same bytes are a no-op, other bytes need --replace.
    let mut outcome = Vec::new();
    let mut changed = Vec::new();
    for (id, (staged, bytes, manifest)) in offered {
        let existing = config.targets.iter().position(|t| t.ksplice.id == id);
        let status = match existing.map(|i| &config.targets[i]) {
            None => Staged::New,
            Some(old) if opts.replace => {
                if *old == staged {
                    Staged::Unchanged
                } else {
                    Staged::Replaced
                }
            }
            Some(old) if old.sha256 == staged.sha256 => Staged::Unchanged,
            Some(old) if same_build(&layout, old, &manifest)? => Staged::Rebuilt,
            Some(old) => {
                return Err(Error::Conflict {
                    id,
                    existing: old.sha256.clone(),
                    offered: staged.sha256,
                })
            }
        };
        let kept = matches!(status, Staged::Unchanged | Staged::Rebuilt);
        let info = match existing {
            Some(i) if kept => config.targets[i].ksplice.clone(),
            _ => staged.ksplice.clone(),
        };
        if !kept {
            changed.push((existing, staged, bytes));
        }
        outcome.push((info, status));
    }

    // 3. Package bytes under their content-addressed names (a mirror may copy them
    //    now: no metadata names them until publish), then repo.toml.
    for (existing, staged, bytes) in changed {
        write_public(&layout.target_file(&staged.sha256, &staged.name), &bytes)?;
        match existing {
            Some(i) => config.targets[i] = staged,
            None => config.targets.push(staged),
        }
    }
    config.targets.sort_by(|a, b| a.name.cmp(&b.name));
    config.save(dir)?;
    Ok(outcome)
}

/// Whether `offered` is a rebuild of the published target `old` (see
/// [`Staged::Rebuilt`]): everything a host sees of the update but the bytes
/// of its build is the same. The published package is read back from the
/// repository, bounded and checked like any package.
fn same_build(layout: &Layout, old: &StagedTarget, offered: &manifests::Manifest) -> Result<bool> {
    let path = layout.target_file(&old.sha256, &old.name);
    let package = |source| Error::Package {
        path: path.clone(),
        source,
    };
    let bytes = manifests::read_package_file(&path).map_err(package)?;
    let published = manifests::inspect_package_bytes(&bytes)
        .map_err(package)?
        .manifest;
    let source = |m: &manifests::Manifest| {
        m.files
            .iter()
            .find(|f| f.path == "patch.diff")
            .map(|f| f.sha256.clone())
    };
    Ok(source(&published).is_some()
        && source(&published) == source(offered)
        && published.id == offered.id
        && published.target == offered.target
        && published.stream == offered.stream
        && published.builds_on == offered.builds_on
        && published.module.name == offered.module.name
        && published.description == offered.description
        && published.cves == offered.cves
        && published.objects == offered.objects)
}

/// Options of [`publish`].
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Targets key files (when repo.toml lists none: offline keys).
    pub targets_keys: Vec<PathBuf>,
    /// `ROLE=DURATION` for this publish only.
    pub expires: Vec<String>,
}

/// Publishes: a new targets version when the staged targets differ from the
/// published ones (or the root's targets keys changed, or `--expires targets=`
/// was given, or the targets metadata would expire before the next snapshot),
/// then always a new snapshot and timestamp. `timestamp.json` is written last.
pub fn publish(dir: &Path, opts: &PublishOptions) -> Result<Published> {
    let layout = Layout::new(dir);
    let _lock = Lock::take(dir, false)?;
    let config = Config::load(dir)?;
    let mut overrides = config.expires.clone();
    let set = overrides.apply(&opts.expires)?;
    if set.contains(&Role::Root) {
        return Err(Error::InvalidOption {
            option: "--expires",
            value: "root".into(),
            reason: "the root's expiry is set by init and rotate-key, not publish",
        });
    }
    let targets_keys = opts
        .targets_keys
        .iter()
        .map(|p| KeyFile::load(p))
        .collect::<Result<Vec<_>>>()?;
    publish_with(&layout, &config, &overrides, &set, targets_keys)
}

fn publish_with(
    layout: &Layout,
    config: &Config,
    expires: &Expires,
    forced: &[Role],
    mut targets_keys: Vec<KeyFile>,
) -> Result<Published> {
    let (_, root) = metadata::latest_root(layout)?;
    let root = root.signed;
    let current = Current::read(layout)?;
    let desired = desired_targets(&config.targets)?;

    // 1. Does the targets role need signing again?
    let targets_expires = metadata::expires_in(expires.get(Role::Targets)?)?;
    let snapshot_expires = metadata::expires_in(expires.get(Role::Snapshot)?)?;
    let timestamp_expires = metadata::expires_in(expires.get(Role::Timestamp)?)?;
    let resign = match &current.targets {
        None => true,
        Some((_, _, published)) => {
            published.signed.targets != desired
                || root.verify_role(published).is_err()
                || forced.contains(&Role::Targets)
                || published.signed.expires < snapshot_expires
        }
    };
    if resign && targets_keys.is_empty() {
        targets_keys = role_keys(layout, config, Role::Targets)?;
    }
    if resign {
        metadata::check_keys(&root, Role::Targets, &targets_keys, "--targets-key")?;
    }
    let snapshot_keys = role_keys(layout, config, Role::Snapshot)?;
    metadata::check_keys(
        &root,
        Role::Snapshot,
        &snapshot_keys,
        "--snapshot-key at init or rotate-key",
    )?;
    let timestamp_keys = role_keys(layout, config, Role::Timestamp)?;
    metadata::check_keys(
        &root,
        Role::Timestamp,
        &timestamp_keys,
        "--timestamp-key at init or rotate-key",
    )?;

    // 2. Sign: targets (if needed), the snapshot naming it, the timestamp naming that.
    let snapshot_version = metadata::next(current.max_snapshot);
    let timestamp_version = metadata::next(current.timestamp_version);
    let new_targets = if resign {
        let mut targets = Targets::new(
            SPEC_VERSION.to_owned(),
            metadata::next(current.max_targets),
            targets_expires,
        );
        targets.delegations = None;
        targets.targets = desired;
        Some(targets)
    } else {
        None
    };
    let reused = current.targets;
    let signed = metadata::block_on(async {
        let targets = match new_targets {
            Some(t) => Some(metadata::sign(t, &root, targets_keys).await?),
            None => None,
        };
        let targets_meta = match (&targets, &reused) {
            (Some(t), _) => metadata::metafile(t.signed().signed.version, t.buffer()),
            (None, Some((version, bytes, _))) => metadata::metafile(*version, bytes),
            (None, None) => unreachable!("invariant: no published targets means resign"),
        };
        let snapshot = metadata::snapshot(snapshot_version, snapshot_expires, targets_meta);
        let snapshot = metadata::sign(snapshot, &root, snapshot_keys).await?;
        let snapshot_meta = metadata::metafile(snapshot_version, snapshot.buffer());
        let timestamp = metadata::timestamp(timestamp_version, timestamp_expires, snapshot_meta);
        let timestamp = metadata::sign(timestamp, &root, timestamp_keys).await?;
        Ok::<_, Error>((targets, snapshot, timestamp))
    })??;
    let (targets, snapshot, timestamp) = signed;

    // 3. Write in the order a client reads backwards: targets, snapshot, then
    //    timestamp last, each atomically.
    let mut targets_version = None;
    if let Some(t) = &targets {
        let v = t.signed().signed.version;
        write_public(
            &layout.metadata.join(format!("{v}.targets.json")),
            t.buffer(),
        )?;
        targets_version = Some(v.get());
    }
    write_public(
        &layout
            .metadata
            .join(format!("{snapshot_version}.snapshot.json")),
        snapshot.buffer(),
    )?;
    write_public(&layout.metadata.join("timestamp.json"), timestamp.buffer())?;
    Ok(Published {
        targets_version,
        snapshot_version: snapshot_version.get(),
        timestamp_version: timestamp_version.get(),
        targets: config.targets.len(),
    })
}

/// Options of [`rotate_key`].
#[derive(Debug, Clone)]
pub struct RotateOptions {
    pub role: Role,
    /// The role's new key set.
    pub new_keys: Vec<PathBuf>,
    /// The current root keys (when repo.toml lists none: offline keys).
    pub old_keys: Vec<PathBuf>,
    /// The role's new threshold; default: the old one, at most the new key count.
    pub threshold: Option<u64>,
}

/// Writes root version N+1 in which `role` has the new keys, signed by a
/// threshold of the current root keys and (for the root role) of the new ones,
/// as TUF 1.0 §5.3.4 requires of a client walking the chain. The next
/// `publish` signs with the new keys.
pub fn rotate_key(dir: &Path, opts: &RotateOptions) -> Result<u64> {
    let layout = Layout::new(dir);
    let _lock = Lock::take(dir, false)?;
    let mut config = Config::load(dir)?;
    let (version, old_root) = metadata::latest_root(&layout)?;
    let old_root = old_root.signed;
    let new_keys = opts
        .new_keys
        .iter()
        .map(|p| KeyFile::load(p))
        .collect::<Result<Vec<_>>>()?;
    let old_keys = if opts.old_keys.is_empty() {
        role_keys(&layout, &config, Role::Root)?
    } else {
        opts.old_keys
            .iter()
            .map(|p| KeyFile::load(p))
            .collect::<Result<Vec<_>>>()?
    };
    // 1. The current root keys must meet the current root threshold.
    metadata::check_keys(&old_root, Role::Root, &old_keys, "--old-key")?;
    let old_threshold = config.roles.get(opts.role).threshold;
    let threshold = opts
        .threshold
        .unwrap_or(old_threshold.min(new_keys.len() as u64));
    if new_keys.is_empty() || threshold == 0 || threshold > new_keys.len() as u64 {
        return Err(Error::Threshold {
            role: opts.role.name(),
            threshold,
            keys: new_keys.len(),
        });
    }

    // 2. The new root: the role's keys replaced, keys no role uses dropped.
    let mut root = old_root.clone();
    root.version = metadata::next(version.get());
    root.expires = metadata::expires_in(config.expires.get(Role::Root)?)?;
    set_role_keys(&mut root, opts.role, &new_keys, threshold);
    let used: Vec<_> = root.roles.values().flat_map(|r| r.keyids.clone()).collect();
    root.keys.retain(|id, _| used.contains(id));

    // 3. Signed by the new root's root keys and, for a root rotation, the old
    //    ones too; both thresholds are checked by tough's verifier before writing.
    let new_version = root.version;
    let signed = metadata::block_on(async {
        if opts.role == Role::Root {
            let new_paths: Vec<PathBuf> = new_keys.iter().map(|k| k.path().to_owned()).collect();
            let by_new = metadata::sign(root.clone(), &root, new_keys).await?;
            let by_old = metadata::sign(root.clone(), &old_root, old_keys).await?;
            let both = by_new
                .add_old_signatures(by_old.signed().signatures.clone())
                .map_err(Error::tuf("adding the old root signatures"))?;
            Ok::<_, Error>((both, new_paths))
        } else {
            let new_paths: Vec<PathBuf> = new_keys.iter().map(|k| k.path().to_owned()).collect();
            Ok((
                metadata::sign(root.clone(), &root, old_keys).await?,
                new_paths,
            ))
        }
    })??;
    let (signed, new_paths) = signed;
    old_root
        .verify_role(signed.signed())
        .map_err(|source| Error::Verify {
            what: "the new root under the old root's keys".into(),
            source: Box::new(source),
        })?;
    root.verify_role(signed.signed())
        .map_err(|source| Error::Verify {
            what: "the new root under its own keys".into(),
            source: Box::new(source),
        })?;
    write_public(
        &layout.metadata.join(format!("{new_version}.root.json")),
        signed.buffer(),
    )?;

    // 4. Keys repo.toml lists (development or online keys) follow the rotation;
    //    offline roles stay unlisted.
    let cfg = config.roles.get_mut(opts.role);
    cfg.threshold = threshold;
    if !cfg.key_files.is_empty() {
        cfg.key_files = new_paths
            .iter()
            .map(|p| std::path::absolute(p).map_err(Error::io(p)))
            .collect::<Result<_>>()?;
    }
    config.save(dir)?;
    Ok(new_version.get())
}

/// The repository's configuration and current target list (for `repo show`).
pub fn show(dir: &Path) -> Result<Config> {
    Config::load(dir)
}

/// Sets `role`'s key ids and threshold in `root` and lists the keys.
fn set_role_keys(root: &mut Root, role: Role, keys: &[KeyFile], threshold: u64) {
    let mut keyids = Vec::new();
    for key in keys {
        root.keys.insert(key.key_id().clone(), key.public().clone());
        if !keyids.contains(key.key_id()) {
            keyids.push(key.key_id().clone());
        }
    }
    root.roles.insert(
        role.tuf(),
        RoleKeys {
            keyids,
            threshold: NonZeroU64::new(threshold).unwrap_or(NonZeroU64::MIN),
            _extra: HashMap::new(),
        },
    );
}

/// The key files repo.toml lists for `role`, loaded.
fn role_keys(layout: &Layout, config: &Config, role: Role) -> Result<Vec<KeyFile>> {
    config
        .roles
        .get(role)
        .key_files
        .iter()
        .map(|p| KeyFile::load(&Config::key_path(&layout.dir, p)))
        .collect()
}

/// The TUF targets the staged list describes.
fn desired_targets(staged: &[StagedTarget]) -> Result<HashMap<TargetName, Target>> {
    let mut out = HashMap::new();
    for t in staged {
        let name = TargetName::new(t.name.as_str())
            .map_err(Error::tuf(format!("target name {}", t.name)))?;
        let sha256 = hex::decode(&t.sha256).map_err(|_| Error::Config {
            path: PathBuf::from(CONFIG_FILE),
            reason: format!("{}: sha256 is not hex", t.name),
        })?;
        let custom = serde_json::to_value(&t.ksplice).map_err(|e| Error::Config {
            path: PathBuf::from(CONFIG_FILE),
            reason: format!("{}: {e}", t.name),
        })?;
        out.insert(
            name,
            Target {
                length: t.length,
                hashes: Hashes {
                    sha256: sha256.into(),
                    _extra: HashMap::new(),
                },
                custom: HashMap::from([(fleet::CUSTOM_KEY.to_owned(), custom)]),
                _extra: HashMap::new(),
            },
        );
    }
    Ok(out)
}

/// A file under `public/`, replaced atomically, world-readable.
fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    fsio::write_atomic(path, bytes, PUBLIC_FILE_MODE)
}
