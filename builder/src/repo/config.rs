//! `DIR/repo.toml`: expiry per role, key files and thresholds, the target list.
//!
//! The file is the publisher's own state: metadata says what was published,
//! repo.toml what the next `repo publish` will publish. Everything read back is
//! validated as if a stranger had written it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use manifests::fleet::TargetInfo;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::fsio;

/// The only `format` of repo.toml this version reads and writes.
pub const CONFIG_FORMAT: u32 = 1;
/// File name of the configuration in the repository directory.
pub const CONFIG_FILE: &str = "repo.toml";
/// Largest repo.toml read (a thousand targets take about 1 MB).
const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The four top-level TUF roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];

    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == text)
    }

    pub(crate) fn tuf(self) -> tough::schema::RoleType {
        use tough::schema::RoleType;
        match self {
            Role::Root => RoleType::Root,
            Role::Targets => RoleType::Targets,
            Role::Snapshot => RoleType::Snapshot,
            Role::Timestamp => RoleType::Timestamp,
        }
    }

    /// The default lifetime of the role's metadata (docs/fleet.md "Expiry").
    fn default_expiry(self) -> &'static str {
        match self {
            Role::Root => "365d",
            Role::Targets => "90d",
            Role::Snapshot => "7d",
            Role::Timestamp => "1d",
        }
    }
}

/// A metadata lifetime written `<n>s`, `<n>m`, `<n>h`, `<n>d` or `<n>w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    seconds: i64,
}

impl Lifetime {
    pub fn parse(text: &str) -> Result<Lifetime> {
        let bad = |reason| Error::InvalidOption {
            option: "duration",
            value: text.to_owned(),
            reason,
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| bad("needs a unit: s, m, h, d or w"))?;
        let (number, unit) = text.split_at(split);
        let n: i64 = number
            .parse()
            .map_err(|_| bad("must start with a whole number"))?;
        let unit_seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(bad("unit must be one of s, m, h, d, w")),
        };
        // Ten years is far beyond any sane TUF lifetime and keeps the sum in range.
        match n.checked_mul(unit_seconds) {
            Some(seconds) if seconds > 0 && seconds <= 10 * 366 * 86_400 => {
                Ok(Lifetime { seconds })
            }
            _ => Err(bad("must be above zero and at most ten years")),
        }
    }

    pub fn seconds(self) -> i64 {
        self.seconds
    }
}

/// Lifetimes per role, as `ROLE=DURATION` strings in repo.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expires {
    pub root: String,
    pub targets: String,
    pub snapshot: String,
    pub timestamp: String,
}

impl Default for Expires {
    fn default() -> Self {
        Expires {
            root: Role::Root.default_expiry().into(),
            targets: Role::Targets.default_expiry().into(),
            snapshot: Role::Snapshot.default_expiry().into(),
            timestamp: Role::Timestamp.default_expiry().into(),
        }
    }
}

impl Expires {
    pub fn get(&self, role: Role) -> Result<Lifetime> {
        Lifetime::parse(match role {
            Role::Root => &self.root,
            Role::Targets => &self.targets,
            Role::Snapshot => &self.snapshot,
            Role::Timestamp => &self.timestamp,
        })
    }

    fn slot(&mut self, role: Role) -> &mut String {
        match role {
            Role::Root => &mut self.root,
            Role::Targets => &mut self.targets,
            Role::Snapshot => &mut self.snapshot,
            Role::Timestamp => &mut self.timestamp,
        }
    }

    /// Applies `ROLE=DURATION` overrides, each checked.
    pub fn apply(&mut self, overrides: &[String]) -> Result<Vec<Role>> {
        let mut set = Vec::new();
        for item in overrides {
            let bad = |reason| Error::InvalidOption {
                option: "--expires",
                value: item.clone(),
                reason,
            };
            let (role, duration) = item
                .split_once('=')
                .ok_or_else(|| bad("want ROLE=DURATION"))?;
            let role = Role::parse(role)
                .ok_or_else(|| bad("ROLE is root, targets, snapshot or timestamp"))?;
            Lifetime::parse(duration)?;
            *self.slot(role) = duration.to_owned();
            set.push(role);
        }
        Ok(set)
    }
}

/// One role's signing set-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub threshold: u64,
    /// Key files `repo` may read on its own (relative paths are under DIR).
    /// Empty for a role whose keys are kept offline: they are passed on the
    /// command line each time they are needed.
    #[serde(default)]
    pub key_files: Vec<PathBuf>,
}

/// The signing set-up of the four roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub root: RoleConfig,
    pub targets: RoleConfig,
    pub snapshot: RoleConfig,
    pub timestamp: RoleConfig,
}

impl Roles {
    pub fn get(&self, role: Role) -> &RoleConfig {
        match role {
            Role::Root => &self.root,
            Role::Targets => &self.targets,
            Role::Snapshot => &self.snapshot,
            Role::Timestamp => &self.timestamp,
        }
    }

    pub fn get_mut(&mut self, role: Role) -> &mut RoleConfig {
        match role {
            Role::Root => &mut self.root,
            Role::Targets => &mut self.targets,
            Role::Snapshot => &mut self.snapshot,
            Role::Timestamp => &mut self.timestamp,
        }
    }
}

/// A package in the repository: published, or staged for the next publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedTarget {
    /// The TUF target name, `ksplice-<id>.tar.gz`.
    pub name: String,
    /// Lowercase hex sha256 of the package bytes.
    pub sha256: String,
    pub length: u64,
    /// The target's `custom.ksplice`.
    pub ksplice: TargetInfo,
}

/// The whole of repo.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub format: u32,
    pub expires: Expires,
    pub roles: Roles,
    #[serde(default)]
    pub targets: Vec<StagedTarget>,
}

impl Config {
    /// Reads and validates `DIR/repo.toml`.
    pub fn load(dir: &Path) -> Result<Config> {
        let path = dir.join(CONFIG_FILE);
        let (mut file, _) = manifests::file::open_regular(&path).map_err(|e| match e {
            manifests::Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Error::NotARepository {
                    path: dir.to_owned(),
                    reason: format!("no {CONFIG_FILE}; run ksplice-build repo init"),
                }
            }
            other => Error::Config {
                path: path.clone(),
                reason: other.to_string(),
            },
        })?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(&mut file, MAX_CONFIG_BYTES + 1),
            &mut text,
        )
        .map_err(Error::io(&path))?;
        let bad = |reason: String| Error::Config {
            path: path.clone(),
            reason,
        };
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(bad("larger than 64 MiB".into()));
        }
        let config: Config = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Writes `DIR/repo.toml` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::Config {
            path: dir.join(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        let text = format!(
            "# ksplice TUF repository set-up and targets (docs/fleet.md \"Publishing\").\n\
             # Written by ksplice-build repo; edit expires and roles only.\n{text}"
        );
        fsio::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes(), 0o644)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.format != CONFIG_FORMAT {
            return Err(format!(
                "format {} is not supported (expected {CONFIG_FORMAT})",
                self.format
            ));
        }
        for role in Role::ALL {
            self.expires.get(role).map_err(|e| e.to_string())?;
            if self.roles.get(role).threshold == 0 {
                return Err(format!("{}: threshold 0", role.name()));
            }
        }
        let mut names = BTreeSet::new();
        for t in &self.targets {
            t.ksplice
                .validate()
                .map_err(|e| format!("{}: {e}", t.name))?;
            if t.name != t.ksplice.target_name() {
                return Err(format!(
                    "{}: name does not match id {}",
                    t.name, t.ksplice.id
                ));
            }
            if t.sha256.len() != 64
                || !t
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(format!("{}: sha256 is not 64 lowercase hex digits", t.name));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("{}: listed twice", t.name));
            }
        }
        Ok(())
    }

    /// A key file path as given in repo.toml, resolved against `dir`.
    pub fn key_path(dir: &Path, file: &Path) -> PathBuf {
        if file.is_absolute() {
            file.to_owned()
        } else {
            dir.join(file)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_units_and_refuse_the_rest() {
        assert_eq!(Lifetime::parse("30s").expect("s").seconds(), 30);
        assert_eq!(Lifetime::parse("12h").expect("h").seconds(), 12 * 3600);
        assert_eq!(Lifetime::parse("7d").expect("d").seconds(), 7 * 86_400);
        for bad in ["", "7", "d", "0s", "-1d", "1y", "99999999999999d", "1.5h"] {
            assert!(Lifetime::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn expires_overrides_name_a_role() {
        let mut e = Expires::default();
        let set = e
            .apply(&["timestamp=2s".into(), "targets=30d".into()])
            .expect("apply");
        assert_eq!(set, vec![Role::Timestamp, Role::Targets]);
        assert_eq!(e.get(Role::Timestamp).expect("ts").seconds(), 2);
        assert_eq!(e.get(Role::Snapshot).expect("snap").seconds(), 7 * 86_400);
        assert!(e.apply(&["mirror=1d".into()]).is_err());
        assert!(e.apply(&["timestamp".into()]).is_err());
        assert!(e.apply(&["timestamp=soon".into()]).is_err());
    }
}
