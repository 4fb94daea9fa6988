//! TUF repositories for the fleet tests, written with tough's editor: a
//! good one, and the means to make it hostile (expired, rolled back, under
//! threshold, mixed, oversized, rotated roots, a broken chain).

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::Ed25519KeyPair;
use jiff::{SignedDuration, Timestamp};
use manifests::fleet::{TargetInfo, CUSTOM_KEY};
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::sign::Sign;

/// An ed25519 key from a fixed seed, as a tough key source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestKey(pub u8);

impl TestKey {
    fn pair(self) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[self.0; 32]).expect("ed25519 seed")
    }

    pub fn tuf_key(self) -> Key {
        Sign::tuf_key(&self.pair())
    }

    pub fn id(self) -> Decoded<Hex> {
        self.tuf_key().key_id().expect("key id")
    }
}

#[tough::async_trait]
impl KeySource for TestKey {
    async fn as_sign(
        &self,
    ) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(self.pair()))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(())
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The keys and threshold of each top-level role.
#[derive(Debug, Clone)]
pub struct Roles {
    pub root: (Vec<TestKey>, u64),
    pub targets: (Vec<TestKey>, u64),
    pub snapshot: (Vec<TestKey>, u64),
    pub timestamp: (Vec<TestKey>, u64),
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            root: (vec![TestKey(1)], 1),
            targets: (vec![TestKey(2)], 1),
            snapshot: (vec![TestKey(3)], 1),
            timestamp: (vec![TestKey(4)], 1),
        }
    }
}

impl Roles {
    fn all(&self) -> Vec<TestKey> {
        let mut v: Vec<TestKey> = Vec::new();
        for (keys, _) in [&self.root, &self.targets, &self.snapshot, &self.timestamp] {
            for k in keys {
                if !v.contains(k) {
                    v.push(*k);
                }
            }
        }
        v
    }
}

/// Expiry and versions of one publication; [`Repo::publish`] fills sane ones.
#[derive(Debug, Clone)]
pub struct Publish {
    pub timestamp_expires: Timestamp,
    pub snapshot_expires: Timestamp,
    pub targets_expires: Timestamp,
    /// Versions of (timestamp, snapshot, targets) other than the next one
    /// (rollback and fast-forward attacks); the repository's own counter
    /// does not move then.
    pub versions: Option<(u64, u64, u64)>,
}

/// A repository directory `dir` with `metadata/` and `targets/`.
#[derive(Debug)]
pub struct Repo {
    pub dir: PathBuf,
    pub roles: Roles,
    pub root_version: u64,
    /// Version of targets, snapshot and timestamp of the last publication.
    pub version: u64,
    targets: Vec<(String, Vec<u8>, Option<TargetInfo>)>,
}

pub fn in_hours(h: i64) -> Timestamp {
    Timestamp::now()
        .checked_add(SignedDuration::from_hours(h))
        .expect("time")
}

impl Repo {
    /// A repository with root version 1 (one key per role, threshold 1).
    pub fn new(dir: &Path) -> Repo {
        Repo::with_roles(dir, Roles::default())
    }

    pub fn with_roles(dir: &Path, roles: Roles) -> Repo {
        fs::create_dir_all(dir.join("metadata")).expect("metadata dir");
        fs::create_dir_all(dir.join("targets")).expect("targets dir");
        let mut repo = Repo {
            dir: dir.to_owned(),
            roles,
            root_version: 0,
            version: 0,
            targets: Vec::new(),
        };
        repo.write_root(None, None);
        repo
    }

    pub fn metadata(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// The bytes of `N.root.json`.
    pub fn root_bytes(&self, version: u64) -> Vec<u8> {
        fs::read(self.metadata().join(format!("{version}.root.json"))).expect("root")
    }

    fn root_schema(&self, expires: Timestamp) -> Root {
        let mut keys = HashMap::new();
        for k in self.roles.all() {
            keys.insert(k.id(), k.tuf_key());
        }
        let role = |(ks, t): &(Vec<TestKey>, u64)| RoleKeys {
            keyids: ks.iter().map(|k| k.id()).collect(),
            threshold: NonZeroU64::new(*t).expect("threshold"),
            _extra: HashMap::new(),
        };
        let roles = HashMap::from([
            (RoleType::Root, role(&self.roles.root)),
            (RoleType::Targets, role(&self.roles.targets)),
            (RoleType::Snapshot, role(&self.roles.snapshot)),
            (RoleType::Timestamp, role(&self.roles.timestamp)),
        ]);
        Root {
            spec_version: "1.0.0".into(),
            consistent_snapshot: true,
            version: NonZeroU64::new(self.root_version).expect("version"),
            expires,
            keys,
            roles,
            _extra: HashMap::new(),
        }
    }

    /// Writes root `root_version + 1` with the current roles, signed by
    /// them and by `old` (the previous root's keys, for a rotation). With
    /// `signers`, only those keys sign (a broken chain).
    fn write_root(&mut self, old: Option<(Root, Vec<TestKey>)>, signers: Option<Vec<TestKey>>) {
        self.root_version += 1;
        let root = self.root_schema(in_hours(24 * 365));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let new_keys: Vec<Box<dyn KeySource>> = signers
            .clone()
            .unwrap_or_else(|| self.roles.root.0.clone())
            .into_iter()
            .map(|k| Box::new(k) as Box<dyn KeySource>)
            .collect();
        let holder = KeyHolder::Root(root.clone());
        let mut signed =
            block_on(SignedRole::new(root.clone(), &holder, &new_keys, &rng)).expect("sign root");
        if let (Some((old_root, old_keys)), None) = (old, signers) {
            let old_keys: Vec<Box<dyn KeySource>> = old_keys
                .into_iter()
                .map(|k| Box::new(k) as Box<dyn KeySource>)
                .collect();
            let by_old = block_on(SignedRole::new(
                root.clone(),
                &KeyHolder::Root(old_root),
                &old_keys,
                &rng,
            ))
            .expect("sign root with the old keys");
            signed = signed
                .add_old_signatures(by_old.signed().signatures.clone())
                .expect("cross-sign");
        }
        fs::write(
            self.metadata()
                .join(format!("{}.root.json", self.root_version)),
            signed.buffer(),
        )
        .expect("write root");
    }

    /// A new root version with `change` applied to the roles, signed by the
    /// old and the new root keys.
    pub fn rotate(&mut self, change: impl FnOnce(&mut Roles)) {
        let old_root = self.root_schema(in_hours(24 * 365));
        let old_keys = self.roles.root.0.clone();
        change(&mut self.roles);
        self.write_root(Some((old_root, old_keys)), None);
    }

    /// A new root version signed only by the new root keys (the chain from
    /// the old root is broken).
    pub fn rotate_unsigned_by_old(&mut self, change: impl FnOnce(&mut Roles)) {
        change(&mut self.roles);
        let signers = self.roles.root.0.clone();
        self.write_root(None, Some(signers));
    }

    /// Adds the package at `pkg` as a target with its ksplice information.
    pub fn add(&mut self, pkg: &Path, info: &TargetInfo) {
        let bytes = fs::read(pkg).expect("package");
        self.add_bytes(&info.target_name(), bytes, Some(info.clone()));
    }

    pub fn add_bytes(&mut self, name: &str, bytes: Vec<u8>, info: Option<TargetInfo>) {
        self.targets.retain(|(n, _, _)| n != name);
        self.targets.push((name.to_owned(), bytes, info));
    }

    /// Drops target `name` from the next publication.
    pub fn remove(&mut self, name: &str) {
        self.targets.retain(|(n, _, _)| n != name);
    }

    /// Publishes a new version of targets, snapshot and timestamp, valid
    /// for a day (timestamp) or more.
    pub fn publish(&mut self) {
        self.publish_with(|_| {});
    }

    pub fn publish_with(&mut self, edit: impl FnOnce(&mut Publish)) {
        let mut p = Publish {
            timestamp_expires: in_hours(24),
            snapshot_expires: in_hours(24 * 7),
            targets_expires: in_hours(24 * 30),
            versions: None,
        };
        edit(&mut p);
        let (ts, snap, tgt) = match p.versions {
            Some(v) => v,
            None => {
                self.version += 1;
                (self.version, self.version, self.version)
            }
        };
        let nz = |v: u64| NonZeroU64::new(v).expect("version");
        let root_path = self
            .metadata()
            .join(format!("{}.root.json", self.root_version));
        let keys: Vec<Box<dyn KeySource>> = self
            .roles
            .all()
            .into_iter()
            .map(|k| Box::new(k) as Box<dyn KeySource>)
            .collect();
        let targets_dir = self.dir.join("targets");
        let signed = block_on(async {
            let mut editor = RepositoryEditor::new(&root_path).await.expect("editor");
            for (name, bytes, info) in &self.targets {
                let tmp = tempfile::NamedTempFile::new().expect("tmp");
                fs::write(tmp.path(), bytes).expect("write target");
                let mut t = Target::from_path(tmp.path()).await.expect("target");
                if let Some(info) = info {
                    t.custom.insert(
                        CUSTOM_KEY.to_owned(),
                        serde_json::to_value(info).expect("custom"),
                    );
                }
                let sha = hex::encode(&*t.hashes.sha256);
                fs::write(targets_dir.join(format!("{sha}.{name}")), bytes)
                    .expect("write target file");
                editor.add_target(name.as_str(), t).expect("add target");
            }
            editor
                .targets_version(nz(tgt))
                .expect("targets version")
                .targets_expires(p.targets_expires)
                .expect("targets expires")
                .snapshot_version(nz(snap))
                .snapshot_expires(p.snapshot_expires)
                .timestamp_version(nz(ts))
                .timestamp_expires(p.timestamp_expires);
            editor.sign(&keys).await.expect("sign")
        });
        block_on(signed.write(self.metadata())).expect("write metadata");
    }

    /// A copy of the whole metadata directory (to replay later).
    pub fn save(&self) -> HashMap<String, Vec<u8>> {
        fs::read_dir(self.metadata())
            .expect("metadata")
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).expect("read"),
                )
            })
            .collect()
    }

    /// Serves `file` of an earlier [`Repo::save`] in place of the current one.
    pub fn replay(&self, saved: &HashMap<String, Vec<u8>>, file: &str) {
        fs::write(self.metadata().join(file), &saved[file]).expect("replay");
    }

    /// The path of target `name` as served (consistent snapshot name).
    pub fn target_file(&self, name: &str) -> PathBuf {
        let suffix = format!(".{name}");
        fs::read_dir(self.dir.join("targets"))
            .expect("targets")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(&suffix))
            .expect("target file")
    }

    /// Edits `metadata/<file>` as JSON without re-signing.
    pub fn tamper_json(&self, file: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.metadata().join(file);
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        edit(&mut v);
        fs::write(&path, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
    }
}
