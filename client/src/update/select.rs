//! Which repository targets this host applies now: the running kernel, the
//! channel, the rollout wave, the delay and the pin (docs/fleet.md, "Hosts").
//! Pure: the clock and the host's seed come in as values.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use manifests::fleet::TargetInfo;
use manifests::manifest::TargetKernel;
use serde::Serialize;
use time::OffsetDateTime;

/// One ksplice target of the repository, as the TUF targets role signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The TUF target name (`ksplice-<id>.tar.gz`).
    pub name: String,
    pub length: u64,
    pub sha256: String,
    pub info: TargetInfo,
}

/// What the host's policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub channel: String,
    pub delay: Duration,
    pub pin: Option<u32>,
    /// The host's rollout seed (`manifests::fleet::host_seed`).
    pub seed: u32,
}

/// What the journal says about one update id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    Applied,
    /// In the journal, not applied (installed, or an interrupted step).
    NotApplied,
}

/// Why a target is or is not applied now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
pub enum Decision {
    /// Applied by this run.
    Apply,
    /// Its rollout wave (or the configured delay) has not started.
    Waiting {
        #[serde(with = "time::serde::rfc3339")]
        from: OffsetDateTime,
    },
    AlreadyApplied,
    /// A stand-alone update in the journal, not applied: `apply --installed`
    /// or an administrator deals with it.
    InstalledNotApplied,
    /// A lower level than the stream's applied or chosen level.
    Superseded,
    AbovePin {
        pin: u32,
    },
    OtherKernel,
    OtherChannel {
        channel: String,
    },
    /// Its ksplice metadata does not validate; never applied.
    Invalid {
        reason: String,
    },
}

/// The decision for one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Considered {
    pub target: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    #[serde(flatten)]
    pub decision: Decision,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// To apply now, in this order: each stream's chosen level, then
    /// stand-alone updates by publication. A stream switch is an atomic
    /// replace of every live patch, which the client refuses while a
    /// stand-alone update is live; stand-alone updates stack on a stream.
    pub apply: Vec<Candidate>,
    /// Every candidate with its decision, in repository name order.
    pub considered: Vec<Considered>,
}

impl Plan {
    /// The waiting targets and from when they may be applied.
    pub fn waiting(&self) -> impl Iterator<Item = (&Considered, OffsetDateTime)> {
        self.considered.iter().filter_map(|c| match c.decision {
            Decision::Waiting { from } => Some((c, from)),
            _ => None,
        })
    }
}

/// From when this host may apply `info`: its wave's start, and never before
/// `published + delay`. `None` when the metadata's times do not parse
/// (validated earlier, so only a bug gets there).
pub fn eligible_from(info: &TargetInfo, policy: &Policy) -> Option<OffsetDateTime> {
    let published = manifests::fleet::parse_utc("published", &info.published).ok()?;
    let wave = info.available_from(policy.seed).ok()?;
    let delayed = published.checked_add(time::Duration::try_from(policy.delay).ok()?)?;
    Some(wave.max(delayed))
}

/// What the host has: each journal id, and the stream levels applied as
/// the installed packages' own manifests say (for levels the repository
/// no longer lists: never go below them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    pub ids: BTreeMap<String, Installed>,
    pub applied_levels: BTreeMap<String, u32>,
}

/// Chooses what to apply now among `candidates` (already validated), for
/// the `running` kernel, given what the journal holds and the time `now`.
pub fn plan(
    candidates: &[Candidate],
    running: &TargetKernel,
    journal: &Journal,
    policy: &Policy,
    now: OffsetDateTime,
) -> Plan {
    let applied_levels = &journal.applied_levels;
    let journal = &journal.ids;
    let mut decisions: BTreeMap<&str, Decision> = BTreeMap::new();
    // 1. Only the running kernel's targets in our channel are ours at all.
    let mut ours = Vec::new();
    for c in candidates {
        let i = &c.info;
        if &i.kernel != running {
            decisions.insert(&c.name, Decision::OtherKernel);
        } else if i.channel != policy.channel {
            decisions.insert(
                &c.name,
                Decision::OtherChannel {
                    channel: i.channel.clone(),
                },
            );
        } else {
            ours.push(c);
        }
    }
    // 2. The level each stream has applied, read from the journal through
    //    the repository's signed stream metadata.
    let mut applied_level: BTreeMap<&str, u32> = applied_levels
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    for c in &ours {
        if let Some(s) = &c.info.stream {
            if journal.get(&c.info.id) == Some(&Installed::Applied) {
                let l = applied_level.entry(&s.name).or_default();
                *l = (*l).max(s.level);
            }
        }
    }
    let ready = |c: &Candidate| -> Result<(), OffsetDateTime> {
        match eligible_from(&c.info, policy) {
            Some(t) if t <= now => Ok(()),
            Some(t) => Err(t),
            // Times are validated before; a delay too large to add means never.
            None => Err(time::PrimitiveDateTime::MAX.assume_utc()),
        }
    };
    // 3. Stand-alone updates: each one not yet in the journal, once ready.
    let mut apply_alone: Vec<&Candidate> = Vec::new();
    let mut streams: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in ours {
        match &c.info.stream {
            Some(s) => streams.entry(&s.name).or_default().push(c),
            None => {
                let d = match journal.get(&c.info.id) {
                    Some(Installed::Applied) => Decision::AlreadyApplied,
                    Some(Installed::NotApplied) => Decision::InstalledNotApplied,
                    None => match ready(c) {
                        Ok(()) => {
                            apply_alone.push(c);
                            Decision::Apply
                        }
                        Err(from) => Decision::Waiting { from },
                    },
                };
                decisions.insert(&c.name, d);
            }
        }
    }
    apply_alone
        .sort_by(|a, b| (&a.info.published, &a.info.id).cmp(&(&b.info.published, &b.info.id)));
    // 4. Streams: the highest ready level above the applied one and within
    //    the pin; a higher level still waiting says from when.
    let mut apply_streams: Vec<&Candidate> = Vec::new();
    for (name, mut members) in streams {
        members.sort_by_key(|c| std::cmp::Reverse(c.info.stream.as_ref().map_or(0, |s| s.level)));
        let applied = applied_level.get(name).copied().unwrap_or(0);
        let mut chosen: Option<u32> = None;
        for c in members {
            let level = c.info.stream.as_ref().map_or(0, |s| s.level);
            let d = if level <= applied {
                if journal.get(&c.info.id) == Some(&Installed::Applied) {
                    Decision::AlreadyApplied
                } else {
                    Decision::Superseded
                }
            } else if let Some(pin) = policy.pin.filter(|&p| level > p) {
                Decision::AbovePin { pin }
            } else if chosen.is_some() {
                Decision::Superseded
            } else {
                match ready(c) {
                    Ok(()) => {
                        chosen = Some(level);
                        apply_streams.push(c);
                        Decision::Apply
                    }
                    Err(from) => Decision::Waiting { from },
                }
            };
            decisions.insert(&c.name, d);
        }
    }
    let mut apply: Vec<Candidate> = apply_streams.into_iter().cloned().collect();
    apply.extend(apply_alone.into_iter().cloned());
    let mut seen = BTreeSet::new();
    let considered = candidates
        .iter()
        .filter(|c| seen.insert(c.name.clone()))
        .map(|c| Considered {
            target: c.name.clone(),
            id: c.info.id.clone(),
            stream: c.info.stream.as_ref().map(|s| s.name.clone()),
            level: c.info.stream.as_ref().map(|s| s.level),
            decision: decisions
                .get(c.name.as_str())
                .cloned()
                .unwrap_or(Decision::OtherKernel),
        })
        .collect();
    Plan { apply, considered }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifests::fleet::{format_utc, parse_utc, parse_waves, Wave};
    use manifests::manifest::Stream;

    fn t(s: &str) -> OffsetDateTime {
        parse_utc("t", s).expect("time")
    }

    fn kernel() -> TargetKernel {
        TargetKernel {
            release: "6.1.0-56-amd64".into(),
            version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)".into(),
            arch: "x86_64".into(),
            build_id: "e4".repeat(20),
        }
    }

    fn cand(id: &str, level: Option<u32>, published: &str, waves: Vec<Wave>) -> Candidate {
        Candidate {
            name: format!("ksplice-{id}.tar.gz"),
            length: 100,
            sha256: "00".repeat(32),
            info: TargetInfo {
                format: 1,
                id: id.into(),
                kernel: kernel(),
                stream: level.map(|level| Stream {
                    name: "main".into(),
                    level,
                    replaces: vec![],
                }),
                cves: vec![],
                description: "d".into(),
                channel: "stable".into(),
                published: published.into(),
                waves,
            },
        }
    }

    fn policy() -> Policy {
        Policy {
            channel: "stable".into(),
            delay: Duration::ZERO,
            pin: None,
            seed: 500,
        }
    }

    fn ids(p: &Plan) -> Vec<&str> {
        p.apply.iter().map(|c| c.info.id.as_str()).collect()
    }

    fn decision<'a>(p: &'a Plan, id: &str) -> &'a Decision {
        &p.considered
            .iter()
            .find(|c| c.id == id)
            .expect("considered")
            .decision
    }

    const NOW: &str = "2026-11-29T12:00:00Z";

    #[test]
    fn highest_ready_level_of_a_stream_is_chosen() {
        let cs = [
            cand("l1", Some(1), "2026-11-01T00:00:00Z", vec![]),
            cand("l2", Some(2), "2026-11-10T00:00:00Z", vec![]),
            cand("l3", Some(3), "2026-11-29T11:00:00Z", vec![]),
        ];
        let p = plan(&cs, &kernel(), &Journal::default(), &policy(), t(NOW));
        assert_eq!(ids(&p), ["l3"]);
        assert_eq!(decision(&p, "l1"), &Decision::Superseded);
        // With l2 applied, l1 is below it and l3 above.
        let journal = Journal {
            ids: BTreeMap::from([("l2".to_owned(), Installed::Applied)]),
            ..Journal::default()
        };
        let p = plan(&cs, &kernel(), &journal, &policy(), t(NOW));
        assert_eq!(ids(&p), ["l3"]);
        assert_eq!(decision(&p, "l2"), &Decision::AlreadyApplied);
        let journal = Journal {
            ids: BTreeMap::from([("l3".to_owned(), Installed::Applied)]),
            ..Journal::default()
        };
        let p = plan(&cs, &kernel(), &journal, &policy(), t(NOW));
        assert!(p.apply.is_empty());
    }

    #[test]
    fn delay_holds_recent_targets_and_falls_back_to_a_lower_level() {
        let cs = [
            cand("l1", Some(1), "2026-11-01T00:00:00Z", vec![]),
            cand("l2", Some(2), "2026-11-29T00:00:00Z", vec![]),
        ];
        let mut pol = policy();
        pol.delay = Duration::from_secs(24 * 3600);
        let p = plan(&cs, &kernel(), &Journal::default(), &pol, t(NOW));
        assert_eq!(ids(&p), ["l1"]);
        assert_eq!(
            decision(&p, "l2"),
            &Decision::Waiting {
                from: t("2026-11-30T00:00:00Z")
            }
        );
        // One second after the delay, level 2 goes.
        let p = plan(
            &cs,
            &kernel(),
            &Journal::default(),
            &pol,
            t("2026-11-30T00:00:00Z"),
        );
        assert_eq!(ids(&p), ["l2"]);
    }

    #[test]
    fn pin_caps_the_level() {
        let cs = [
            cand("l1", Some(1), "2026-11-01T00:00:00Z", vec![]),
            cand("l2", Some(2), "2026-11-02T00:00:00Z", vec![]),
            cand("l3", Some(3), "2026-11-03T00:00:00Z", vec![]),
        ];
        let mut pol = policy();
        pol.pin = Some(2);
        let p = plan(&cs, &kernel(), &Journal::default(), &pol, t(NOW));
        assert_eq!(ids(&p), ["l2"]);
        assert_eq!(decision(&p, "l3"), &Decision::AbovePin { pin: 2 });
    }

    /// A level applied from a repository that no longer lists it still
    /// bounds the stream from below: no downgrade to what is listed.
    #[test]
    fn applied_level_known_only_from_the_host_is_never_undercut() {
        let cs = [
            cand("l1", Some(1), "2026-11-01T00:00:00Z", vec![]),
            cand("l2", Some(2), "2026-11-02T00:00:00Z", vec![]),
        ];
        let journal = Journal {
            ids: BTreeMap::from([("l3".to_owned(), Installed::Applied)]),
            applied_levels: BTreeMap::from([("main".to_owned(), 3)]),
        };
        let p = plan(&cs, &kernel(), &journal, &policy(), t(NOW));
        assert!(p.apply.is_empty());
        assert_eq!(decision(&p, "l2"), &Decision::Superseded);
    }

    #[test]
    fn waves_decide_by_seed() {
        let published = t("2026-11-29T00:00:00Z");
        let waves = parse_waves("100@+0h,1024@+24h,2048@+48h", published).expect("waves");
        let cs = [cand("fix", None, &format_utc(published), waves)];
        let mut pol = policy();
        pol.seed = 50;
        let p = plan(&cs, &kernel(), &Journal::default(), &pol, t(NOW));
        assert_eq!(ids(&p), ["fix"]);
        pol.seed = 500;
        let p = plan(&cs, &kernel(), &Journal::default(), &pol, t(NOW));
        assert!(p.apply.is_empty());
        assert_eq!(
            p.waiting()
                .map(|(c, f)| (c.id.as_str(), f))
                .collect::<Vec<_>>(),
            [("fix", t("2026-11-30T00:00:00Z"))]
        );
        pol.seed = 2000;
        let p = plan(
            &cs,
            &kernel(),
            &Journal::default(),
            &pol,
            t("2026-11-30T23:59:59Z"),
        );
        assert!(p.apply.is_empty());
        let p = plan(
            &cs,
            &kernel(),
            &Journal::default(),
            &pol,
            t("2026-12-01T00:00:00Z"),
        );
        assert_eq!(ids(&p), ["fix"]);
    }

    #[test]
    fn other_kernels_channels_and_installed_standalone_updates_are_left() {
        let mut other = cand("other", None, "2026-11-01T00:00:00Z", vec![]);
        other.info.kernel.build_id = "aa".repeat(20);
        let mut testing = cand("testing", None, "2026-11-01T00:00:00Z", vec![]);
        testing.info.channel = "testing".into();
        let cs = [
            other,
            testing,
            cand("done", None, "2026-11-01T00:00:00Z", vec![]),
            cand("held", None, "2026-11-01T00:00:00Z", vec![]),
            cand("new-b", None, "2026-11-02T00:00:00Z", vec![]),
            cand("new-a", None, "2026-11-03T00:00:00Z", vec![]),
        ];
        let journal = Journal {
            ids: BTreeMap::from([
                ("done".to_owned(), Installed::Applied),
                ("held".to_owned(), Installed::NotApplied),
            ]),
            ..Journal::default()
        };
        let p = plan(&cs, &kernel(), &journal, &policy(), t(NOW));
        // Oldest publication first.
        assert_eq!(ids(&p), ["new-b", "new-a"]);
        assert_eq!(decision(&p, "other"), &Decision::OtherKernel);
        assert_eq!(
            decision(&p, "testing"),
            &Decision::OtherChannel {
                channel: "testing".into()
            }
        );
        assert_eq!(decision(&p, "done"), &Decision::AlreadyApplied);
        assert_eq!(decision(&p, "held"), &Decision::InstalledNotApplied);
    }
}
