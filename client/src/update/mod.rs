//! `ksplice update`: refresh the TUF metadata from the first mirror that
//! passes, choose the targets for the running kernel, download them within
//! their signed lengths, and apply them through the ordinary apply path
//! (whose package signature check against trust.toml still decides).
//!
//! ```text
//! config ─► for each mirror: tuf::load ─► select::plan ─► tuf::read_target (each)
//!                                │ refused / unreachable: next mirror
//!                                ▼ all passed
//!                      datastore commit ─► ops::apply(downloaded files)
//! ```

pub mod config;
pub mod select;
pub mod transport;
pub mod tuf;

use std::path::{Path, PathBuf};

use manifests::fleet::{TargetInfo, CUSTOM_KEY, SEED_RANGE};
use serde::Serialize;
use time::OffsetDateTime;
use url::Url;

use crate::error::{exit, Error, Result};
use crate::fsutil;
use crate::host::Host;
use crate::identity::Running;
use crate::ops::{self, Event};
use crate::state::{Phase, State};
use config::Config;
use select::{Candidate, Considered, Decision, Installed, Journal, Plan, Policy};
use tuf::{Datastore, Failure, Refusal};

/// The version of the `--json` object.
pub const REPORT_FORMAT: u32 = 1;
/// The machine id the rollout seed is derived from.
pub const MACHINE_ID: &str = "/etc/machine-id";

/// How `ksplice update` was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Apply what is due.
    Apply,
    /// Say what would be applied; change nothing.
    Check,
    /// Run by the timer: apply only when `auto = true`.
    Timer,
}

/// One run's inputs besides the host and its configuration.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub mode: Mode,
    /// The time rollout waves and the delay are compared with (TUF expiry
    /// is tough's, against the system clock).
    pub now: OffsetDateTime,
}

/// What the run came to; each maps to one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Nothing to apply now (waiting targets included).
    UpToDate,
    /// `--check`: something would be applied.
    WouldApply,
    Applied,
    /// Every mirror failed and at least one was refused by TUF.
    Refused,
    /// Every mirror was unreachable or answered errors.
    Unreachable,
    /// `--timer` with `auto = false`.
    AutoOff,
    /// `--timer` while automatic apply is held (client/src/boot.rs): a
    /// boot that re-applied updates was never confirmed.
    Held,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::UpToDate | Outcome::AutoOff => exit::OK,
            Outcome::Held => exit::HELD,
            Outcome::WouldApply => exit::UPDATE_AVAILABLE,
            Outcome::Applied => exit::UPDATED,
            Outcome::Refused => exit::VERIFICATION,
            Outcome::Unreachable => exit::MIRRORS_FAILED,
        }
    }
}

/// One mirror's failure, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorError {
    pub mirror: String,
    /// `refused` (TUF) or `network`.
    pub kind: &'static str,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub refusal: Option<Refusal>,
}

/// A target this host will apply once its wave or delay allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
}

/// What `ksplice update` did, for the text output and `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub format: u32,
    pub outcome: Outcome,
    /// The mirror whose metadata was used.
    pub mirror: Option<String>,
    pub seed: u32,
    pub considered: Vec<Considered>,
    /// Chosen to apply (with `--check`: would be applied).
    pub chosen: Vec<String>,
    pub applied: Vec<String>,
    pub waiting: Vec<Waiting>,
    pub errors: Vec<MirrorError>,
}

impl Report {
    fn new(seed: u32) -> Report {
        Report {
            format: REPORT_FORMAT,
            outcome: Outcome::UpToDate,
            mirror: None,
            seed,
            considered: Vec::new(),
            chosen: Vec::new(),
            applied: Vec::new(),
            waiting: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, mirror: &Url, f: Failure) {
        let (kind, refusal) = match &f {
            Failure::Refused(r) => ("refused", Some(r.clone())),
            Failure::Network(_) => ("network", None),
        };
        self.errors.push(MirrorError {
            mirror: mirror.to_string(),
            kind,
            error: f.to_string(),
            refusal,
        });
        self.mirror = None;
        self.considered.clear();
        self.chosen.clear();
        self.waiting.clear();
    }

    fn record(&mut self, mirror: &Url, plan: &Plan) {
        self.mirror = Some(mirror.to_string());
        self.considered = plan.considered.clone();
        self.chosen = plan.apply.iter().map(|c| c.info.id.clone()).collect();
        self.waiting = plan
            .waiting()
            .map(|(c, from)| Waiting {
                id: c.id.clone(),
                from,
            })
            .collect();
    }
}

/// The host's rollout seed; with no machine id, the last wave (the most
/// careful choice).
pub fn seed(host: &Host<'_>) -> u32 {
    match std::fs::read_to_string(host.path(MACHINE_ID)) {
        Ok(id) if !id.trim().is_empty() => manifests::fleet::host_seed(&id),
        _ => SEED_RANGE - 1,
    }
}

/// `ksplice update`. Mirror failures are in the report (outcome refused or
/// unreachable); local failures (configuration, state, apply) are errors.
pub fn update(
    host: &Host<'_>,
    cfg: &Config,
    opts: Options,
    on: &mut dyn FnMut(Event),
) -> Result<Report> {
    let mut report = Report::new(seed(host));
    if opts.mode == Mode::Timer && !cfg.auto {
        report.outcome = Outcome::AutoOff;
        return Ok(report);
    }
    if opts.mode == Mode::Timer && crate::boot::held(host)?.is_some() {
        report.outcome = Outcome::Held;
        return Ok(report);
    }
    let running = Running::read(host)?;
    let journal = read_journal(host)?;
    let root = cfg.read_root()?;
    let transport = transport::MirrorTransport::new(cfg, &host.path(transport::SYSTEM_CA_BUNDLE))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let trusted = host.state("tuf");
    // --check loads into a copy in the system temp directory and never
    // writes back: it changes nothing, not even the trusted metadata.
    // Otherwise the copies live in the private downloads directory (not
    // the state directory itself, whose temporary files other commands
    // clean up as files).
    let check_scratch;
    let downloads = host.state("downloads");
    let scratch: &Path = if opts.mode == Mode::Check {
        check_scratch = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        check_scratch.path()
    } else {
        fsutil::create_private_dir(&host.state_dir)?;
        fsutil::create_private_dir(&downloads)?;
        &downloads
    };
    let policy = Policy {
        channel: cfg.channel.clone(),
        delay: cfg.delay,
        pin: cfg.pin,
        seed: report.seed,
    };
    let kernel = manifests::manifest::TargetKernel {
        release: running.release.clone(),
        version: running.version.clone(),
        arch: running.arch.clone(),
        build_id: running.build_id.clone(),
    };
    for mirror in &cfg.mirrors {
        let store = Datastore::copy_of(&trusted, scratch)?;
        let root = store.newest_root(root.clone());
        let repo = match rt.block_on(tuf::load(&root, mirror, &store, transport.clone())) {
            Ok(r) => r,
            Err(f) => {
                report.fail(mirror, f);
                continue;
            }
        };
        let (candidates, invalid) = candidates(&repo);
        let mut plan = select::plan(&candidates, &kernel, &journal, &policy, opts.now);
        plan.considered.extend(invalid);
        report.record(mirror, &plan);
        if opts.mode == Mode::Check {
            report.outcome = if plan.apply.is_empty() {
                Outcome::UpToDate
            } else {
                Outcome::WouldApply
            };
            return Ok(report);
        }
        let mut files = Vec::new();
        let mut failed = None;
        for c in &plan.apply {
            match download(host, &rt, &repo, mirror, &transport, c)? {
                Ok(path) => files.push(path),
                Err(f) => {
                    failed = Some(f);
                    break;
                }
            }
        }
        if let Some(f) = failed {
            remove_all(&files);
            report.fail(mirror, f);
            continue;
        }
        // The inner layer: a package valid in TUF but not signed by the
        // keys of trust.toml is refused before anything is kept.
        if !files.is_empty() {
            let checked = ops::load_policy(host).and_then(|policy| {
                files
                    .iter()
                    .try_for_each(|f| ops::verify(f, &policy).map(drop))
            });
            if let Err(e) = checked {
                remove_all(&files);
                return Err(e);
            }
        }
        // This mirror passed: its metadata becomes the trusted metadata.
        store.commit(&trusted)?;
        drop(store);
        if plan.apply.is_empty() {
            report.outcome = Outcome::UpToDate;
            return Ok(report);
        }
        let applied = ops::apply(host, &files, on);
        remove_all(&files);
        applied?;
        report.applied = report.chosen.clone();
        report.outcome = Outcome::Applied;
        return Ok(report);
    }
    report.outcome = if report.errors.iter().any(|e| e.refusal.is_some()) {
        Outcome::Refused
    } else {
        Outcome::Unreachable
    };
    Ok(report)
}

/// Every id in the journal and whether it is applied, and the stream
/// levels the applied packages' verified manifests name (read only; a
/// package that no longer verifies adds no level).
fn read_journal(host: &Host<'_>) -> Result<Journal> {
    let state = State::peek(host)?;
    let mut journal = Journal::default();
    let mut policy = None;
    for e in state.entries() {
        let applied = e.phase == Phase::Applied;
        let i = if applied {
            Installed::Applied
        } else {
            Installed::NotApplied
        };
        journal.ids.insert(e.id.clone(), i);
        if !applied {
            continue;
        }
        if policy.is_none() {
            policy = Some(ops::load_policy(host)?);
        }
        let Some(policy) = &policy else { continue };
        if let Ok(m) = ops::verify(&host.package_path(&e.id), policy) {
            if let Some(s) = &m.stream {
                let l = journal.applied_levels.entry(s.name.clone()).or_default();
                *l = (*l).max(s.level);
            }
        }
    }
    Ok(journal)
}

/// The repository's ksplice targets (custom key `ksplice`), validated; the
/// ones that fail validation come back as considered-and-invalid.
fn candidates(repo: &tough::Repository) -> (Vec<Candidate>, Vec<Considered>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (name, t) in repo.all_targets() {
        let name = name.raw().to_owned();
        let Some(v) = t.custom.get(CUSTOM_KEY) else {
            continue;
        };
        let info = serde_json::from_value::<TargetInfo>(v.clone())
            .map_err(|e| e.to_string())
            .and_then(|i| i.validate().map(|()| i).map_err(|e| e.to_string()))
            .and_then(|i| {
                if i.target_name() == name {
                    Ok(i)
                } else {
                    Err(format!(
                        "the target of {} must be named {}",
                        i.id,
                        i.target_name()
                    ))
                }
            });
        match info {
            Ok(info) => good.push(Candidate {
                name,
                length: t.length,
                sha256: hex::encode(&*t.hashes.sha256),
                info,
            }),
            Err(reason) => bad.push(Considered {
                target: name,
                id: String::new(),
                stream: None,
                level: None,
                decision: Decision::Invalid { reason },
            }),
        }
    }
    good.sort_by(|a, b| a.name.cmp(&b.name));
    bad.sort_by(|a, b| a.target.cmp(&b.target));
    (good, bad)
}

fn remove_all(files: &[PathBuf]) {
    for f in files {
        let _ = fsutil::remove_durable(f);
    }
}

/// Downloads one chosen target into `<state>/downloads/` (0700): through a
/// resumable partial file over http(s), checked by tough as it streams.
/// The outer error is the host's, the inner one the mirror's.
fn download(
    host: &Host<'_>,
    rt: &tokio::runtime::Runtime,
    repo: &tough::Repository,
    mirror: &Url,
    transport: &transport::MirrorTransport,
    c: &Candidate,
) -> Result<Result<PathBuf, Failure>> {
    let dir = host.state("downloads");
    fsutil::create_private_dir(&dir)?;
    let url = tuf::target_url(repo, mirror, &c.name, &c.sha256)
        .filter(|_| matches!(mirror.scheme(), "http" | "https"));
    let mut retried = false;
    let bytes = loop {
        let resume = match &url {
            Some(url) => {
                let (partial, existed) = tuf::partial_file(&dir, &c.sha256)?;
                let had = existed && std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0);
                Some((
                    transport::Resume {
                        url: url.clone(),
                        partial,
                        length: c.length,
                    },
                    had,
                ))
            }
            None => None,
        };
        let plan = resume.as_ref().map(|(r, _)| r.clone());
        match rt.block_on(tuf::read_target(repo, transport, &c.name, plan)) {
            Ok(bytes) => {
                if let Some((r, _)) = &resume {
                    fsutil::remove_durable(&r.partial)?;
                }
                break bytes;
            }
            Err(f @ Failure::Refused(_)) => {
                // Bad bytes are not kept. A partial file from an earlier
                // run (a crash may have left garbage in it) gets one fresh
                // try before the mirror is blamed.
                let mut had = false;
                if let Some((r, h)) = &resume {
                    fsutil::remove_durable(&r.partial)?;
                    had = *h;
                }
                if had && !retried {
                    retried = true;
                    continue;
                }
                return Ok(Err(f));
            }
            // An interrupted transfer keeps its partial file for next time.
            Err(f) => return Ok(Err(f)),
        }
    };
    let dest = dir.join(&c.name);
    fsutil::write_atomic(&dest, &bytes, fsutil::PRIVATE_FILE)?;
    Ok(Ok(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_the_documented_exit_codes() {
        let codes: Vec<u8> = [
            Outcome::UpToDate,
            Outcome::AutoOff,
            Outcome::WouldApply,
            Outcome::Applied,
            Outcome::Refused,
            Outcome::Unreachable,
            Outcome::Held,
        ]
        .iter()
        .map(|o| o.exit_code())
        .collect();
        assert_eq!(codes, [0, 0, 1, 11, 3, 12, 13]);
    }

    #[test]
    fn json_report_is_versioned_and_names_refusals() {
        let mut r = Report::new(7);
        let mirror = Url::parse("https://m.example/k/").expect("url");
        r.fail(
            &mirror,
            Failure::Refused(Refusal::Expired {
                role: "timestamp metadata".into(),
            }),
        );
        r.waiting.push(Waiting {
            id: "l3".into(),
            from: manifests::fleet::parse_utc("t", "2026-12-01T00:00:00Z").expect("t"),
        });
        r.outcome = Outcome::Refused;
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["format"], 1);
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["errors"][0]["kind"], "refused");
        assert_eq!(v["errors"][0]["refusal"], "expired");
        assert_eq!(v["errors"][0]["role"], "timestamp metadata");
        assert_eq!(
            v["errors"][0]["error"],
            "refused: timestamp metadata expired (freeze attack?)"
        );
        assert_eq!(v["waiting"][0]["from"], "2026-12-01T00:00:00Z");
    }
}
