//! What a ksplice TUF repository says about each package (docs/fleet.md).
//!
//! Every target of a ksplice repository is a package `ksplice-<id>.tar.gz`
//! whose TUF `custom` object holds one key, [`CUSTOM_KEY`], with a
//! [`TargetInfo`]: the kernel it is for, its stream and level, its channel,
//! when it was published and its rollout waves. The targets role signs this,
//! so a mirror cannot change it; the package's own manifest signature (the
//! inner layer) is still checked on the host.
//!
//! Staged rollout follows Bottlerocket's waves: each host has a seed in
//! `0..SEED_RANGE` derived from `/etc/machine-id` ([`host_seed`]); a wave
//! says from when hosts with a seed below its bound may apply the target.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::manifest::{check_id, Manifest, Stream, TargetKernel};

/// The key of [`TargetInfo`] inside a TUF target's `custom` object.
pub const CUSTOM_KEY: &str = "ksplice";
/// The only [`TargetInfo::format`] this crate reads and writes.
pub const FORMAT: u32 = 1;
/// Host seeds are in `0..SEED_RANGE` (Bottlerocket uses the same range).
pub const SEED_RANGE: u32 = 2048;
/// The channel a target is in when none is named.
pub const DEFAULT_CHANNEL: &str = "stable";
/// Most waves a target may carry.
pub const MAX_WAVES: usize = 64;

/// The ksplice part of a TUF target's custom metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetInfo {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The update id; the target is named `ksplice-<id>.tar.gz`.
    pub id: String,
    /// The exact kernel the package was built for (as in its manifest).
    pub kernel: TargetKernel,
    /// The cumulative stream and level, as in the manifest; absent for a
    /// stand-alone update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    pub description: String,
    /// Release channel (`stable`, `testing`, ...): same rules as an id.
    pub channel: String,
    /// When the target was added to the repository, RFC 3339 UTC.
    pub published: String,
    /// Staged rollout; empty means every host at once (from `published`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
}

/// Hosts whose seed is below `seeds_below` (and not in an earlier wave) may
/// apply the target from `start` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Exclusive upper bound of the wave's seeds, `1..=SEED_RANGE`.
    pub seeds_below: u32,
    /// RFC 3339 UTC time the wave starts.
    pub start: String,
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> Error {
    Error::InvalidField {
        field,
        value: value.to_owned(),
        reason,
    }
}

/// Parses an RFC 3339 UTC time (`...Z`) as the fleet metadata writes them.
pub fn parse_utc(field: &'static str, text: &str) -> Result<OffsetDateTime> {
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) if text.ends_with('Z') => Ok(t),
        _ => Err(invalid(
            field,
            text,
            "must be an RFC 3339 UTC time like 2026-11-27T21:38:41Z",
        )),
    }
}

/// Formats `t` the way [`parse_utc`] reads it (whole seconds, `Z`).
pub fn format_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

impl TargetInfo {
    /// The info for a package with manifest `m`, published at `published`.
    pub fn from_manifest(
        m: &Manifest,
        channel: &str,
        published: OffsetDateTime,
        waves: Vec<Wave>,
    ) -> Result<TargetInfo> {
        let info = TargetInfo {
            format: FORMAT,
            id: m.id.clone(),
            kernel: m.target.clone(),
            stream: m.stream.clone(),
            cves: m.cves.clone(),
            description: m.description.clone(),
            channel: channel.to_owned(),
            published: format_utc(published),
            waves,
        };
        info.validate()?;
        Ok(info)
    }

    /// The TUF target name of this update's package.
    pub fn target_name(&self) -> String {
        format!("ksplice-{}.tar.gz", self.id)
    }

    /// Checks what serde cannot: the format, names, times, and waves strictly
    /// increasing in both bound and start.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::UnsupportedFormat {
                found: i64::from(self.format),
                expected: FORMAT,
            });
        }
        check_id(&self.id)?;
        check_id(&self.channel)
            .map_err(|_| invalid("channel", &self.channel, "must look like an update id"))?;
        if let Some(stream) = &self.stream {
            stream.validate(&self.id, &[])?;
        }
        let shown = [
            &self.description,
            &self.kernel.release,
            &self.kernel.version,
            &self.kernel.arch,
            &self.kernel.build_id,
        ];
        if let Some(bad) = shown
            .into_iter()
            .chain(&self.cves)
            .find(|v| v.chars().any(|c| c.is_control()))
        {
            return Err(Error::ControlCharacter {
                field: "target custom",
                value: bad.clone(),
            });
        }
        parse_utc("published", &self.published)?;
        if self.waves.len() > MAX_WAVES {
            return Err(invalid("waves", "", "more than 64 waves"));
        }
        let mut bounds = BTreeSet::new();
        let mut last: Option<(u32, OffsetDateTime)> = None;
        for w in &self.waves {
            let start = parse_utc("waves.start", &w.start)?;
            if w.seeds_below == 0 || w.seeds_below > SEED_RANGE {
                return Err(invalid(
                    "waves.seeds_below",
                    &w.seeds_below.to_string(),
                    "must be in 1..=2048",
                ));
            }
            if !bounds.insert(w.seeds_below)
                || last.is_some_and(|(b, s)| b >= w.seeds_below || s > start)
            {
                return Err(invalid(
                    "waves",
                    &w.start,
                    "waves must grow in seeds_below and not start earlier than the wave before",
                ));
            }
            last = Some((w.seeds_below, start));
        }
        Ok(())
    }

    /// From when a host with `seed` may apply this target: the start of the
    /// first wave whose bound is above the seed; hosts above every bound go
    /// with the last wave; no waves means from `published`.
    pub fn available_from(&self, seed: u32) -> Result<OffsetDateTime> {
        let Some(last) = self.waves.last() else {
            return parse_utc("published", &self.published);
        };
        let wave = self
            .waves
            .iter()
            .find(|w| seed < w.seeds_below)
            .unwrap_or(last);
        parse_utc("waves.start", &wave.start)
    }
}

/// Parses waves written as `BOUND@TIME,...` where `TIME` is RFC 3339 UTC or
/// `+<hours>h` after `published` (e.g. `205@+0h,1024@+24h,2048@+48h`).
pub fn parse_waves(spec: &str, published: OffsetDateTime) -> Result<Vec<Wave>> {
    let mut waves = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (bound, when) = part
            .split_once('@')
            .ok_or_else(|| invalid("waves", part, "each wave is BOUND@TIME"))?;
        let seeds_below = bound
            .parse::<u32>()
            .map_err(|_| invalid("waves", part, "BOUND must be a number in 1..=2048"))?;
        let start = match when.strip_prefix('+').and_then(|h| h.strip_suffix('h')) {
            Some(hours) => {
                let hours = hours
                    .parse::<u32>()
                    .map_err(|_| invalid("waves", part, "+<hours>h needs a whole number"))?;
                published + time::Duration::hours(i64::from(hours))
            }
            None => parse_utc("waves", when)?,
        };
        waves.push(Wave {
            seeds_below,
            start: format_utc(start),
        });
    }
    Ok(waves)
}

/// The host's rollout seed: a keyed SHA-256 of its machine id (as systemd
/// recommends for application-specific ids), reduced to `0..SEED_RANGE`.
pub fn host_seed(machine_id: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(b"ksplice rollout seed v1\0");
    h.update(machine_id.trim().as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % SEED_RANGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::example;

    fn t(s: &str) -> OffsetDateTime {
        parse_utc("t", s).expect("time")
    }

    fn info() -> TargetInfo {
        TargetInfo::from_manifest(
            &example("fix-1"),
            DEFAULT_CHANNEL,
            t("2026-11-29T10:00:00Z"),
            Vec::new(),
        )
        .expect("valid")
    }

    #[test]
    fn round_trip_and_unknown_fields() {
        let i = info();
        let json = serde_json::to_string(&i).expect("json");
        assert_eq!(serde_json::from_str::<TargetInfo>(&json).expect("back"), i);
        let extra = json.replacen('{', "{\"surprise\":1,", 1);
        assert!(serde_json::from_str::<TargetInfo>(&extra).is_err());
        assert_eq!(i.target_name(), "ksplice-fix-1.tar.gz");
    }

    #[test]
    fn waves_choose_the_start_by_seed() {
        let published = t("2026-11-29T10:00:00Z");
        let mut i = info();
        assert_eq!(i.available_from(5).expect("from"), published);
        i.waves =
            parse_waves("100@+0h,1024@+24h,2048@2026-12-03T00:00:00Z", published).expect("waves");
        i.validate().expect("valid waves");
        assert_eq!(i.available_from(0).expect("w1"), published);
        assert_eq!(i.available_from(99).expect("w1"), published);
        assert_eq!(
            i.available_from(100).expect("w2"),
            t("2026-11-30T10:00:00Z")
        );
        assert_eq!(
            i.available_from(2047).expect("w3"),
            t("2026-12-03T00:00:00Z")
        );
        i.waves.truncate(2);
        assert_eq!(
            i.available_from(2047).expect("after last"),
            t("2026-11-30T10:00:00Z")
        );
    }

    #[test]
    fn bad_waves_are_refused() {
        let published = t("2026-11-29T10:00:00Z");
        for spec in [
            "0@+0h",
            "2049@+0h",
            "100@+24h,50@+48h",
            "100@+24h,200@+0h",
            "x",
            "5@soon",
        ] {
            let waves = parse_waves(spec, published);
            let checked = waves.and_then(|w| {
                let mut i = info();
                i.waves = w;
                i.validate()
            });
            assert!(checked.is_err(), "{spec} accepted");
        }
    }

    #[test]
    fn seed_is_stable_and_in_range() {
        let a = host_seed("0123456789abcdef0123456789abcdef\n");
        assert_eq!(a, host_seed("0123456789abcdef0123456789abcdef"));
        assert!(a < SEED_RANGE);
        let spread: BTreeSet<u32> = (0..200).map(|n| host_seed(&format!("{n:032x}"))).collect();
        assert!(spread.len() > 150, "seeds cluster: {}", spread.len());
    }

    #[test]
    fn field_rules() {
        let mut i = info();
        i.channel = "Stable!".into();
        assert!(i.validate().is_err());
        let mut i = info();
        i.description = "a\x1b[2Jb".into();
        assert!(i.validate().is_err());
        let mut i = info();
        i.published = "yesterday".into();
        assert!(i.validate().is_err());
        let mut i = info();
        i.stream = Some(Stream {
            name: "main".into(),
            level: 0,
            replaces: vec![],
        });
        assert!(i.validate().is_err());
    }
}
