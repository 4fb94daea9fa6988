//! What scanners and monitoring read: `ksplice uname` and the versioned JSON
//! of `status --json` and `view --json` (docs/client.md "JSON output" and
//! "Effective kernel version").

use serde::Serialize;

use crate::error::{Error, Result};
use crate::host::Host;
use crate::identity::Running;
use crate::ops::{AppliedUpdate, NotInJournal, Status, UpdateView, View};

/// Version of the JSON documents below. Adding a field keeps the number;
/// removing or changing the meaning of one bumps it.
pub const JSON_FORMAT: u32 = 1;

/// The running kernel's identity, as every document shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Kernel<'a> {
    pub release: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub build_id: &'a str,
}

impl<'a> From<&'a Running> for Kernel<'a> {
    fn from(r: &'a Running) -> Self {
        Kernel {
            release: &r.release,
            version: &r.version,
            arch: &r.arch,
            build_id: &r.build_id,
        }
    }
}

/// `ksplice uname -r` and `-v`.
#[derive(Debug, Clone, Serialize)]
pub struct Effective {
    pub release: String,
    pub version: String,
}

/// `ksplice status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusJson<'a> {
    pub format: u32,
    pub kernel: Kernel<'a>,
    pub effective: Effective,
    /// `up-to-date`, `pending` or `not-in-journal`, as the exit code says.
    pub status: &'static str,
    pub exit_code: u8,
    pub applied: &'a [AppliedUpdate],
    pub pending: &'a [String],
    pub superseded: &'a [String],
    pub not_in_journal: &'a NotInJournal,
    /// Every CVE an applied update fixes, sorted, once each.
    pub cves_fixed: Vec<String>,
    /// Automatic apply is held (client/src/boot.rs); `null` when not.
    pub held: Option<crate::boot::Hold>,
}

/// The status exit code with a hold taken into account: a held host is at
/// least a warning (1), never "up to date".
pub fn status_code(s: &Status, hold: Option<&crate::boot::Hold>) -> u8 {
    match (s.exit_code(), hold) {
        (crate::error::exit::OK, Some(_)) => crate::error::exit::PENDING,
        (code, _) => code,
    }
}

impl<'a> StatusJson<'a> {
    /// Adds the hold: `status` becomes `held` unless something worse is reported.
    pub fn with_hold(mut self, hold: Option<crate::boot::Hold>) -> Self {
        if hold.is_some() && self.exit_code <= crate::error::exit::PENDING {
            self.status = "held";
            self.exit_code = crate::error::exit::PENDING;
        }
        self.held = hold;
        self
    }

    pub fn new(s: &'a Status) -> Self {
        let exit_code = s.exit_code();
        StatusJson {
            format: JSON_FORMAT,
            kernel: Kernel::from(&s.running),
            effective: Effective {
                release: s.effective_version(),
                version: s.effective_uname_v(),
            },
            status: match exit_code {
                crate::error::exit::OK => "up-to-date",
                crate::error::exit::PENDING => "pending",
                _ => "not-in-journal",
            },
            exit_code,
            applied: &s.applied,
            pending: &s.pending,
            superseded: &s.superseded,
            not_in_journal: &s.not_in_journal,
            cves_fixed: s.cves_fixed(),
            held: None,
        }
    }
}

/// `ksplice view --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ViewJson<'a> {
    pub format: u32,
    pub kernel: Kernel<'a>,
    /// Everything installed, in install order (`state` is the journal phase:
    /// `installed`, `applied`, `superseded`, or an interrupted step).
    pub updates: &'a [UpdateView],
    pub not_in_journal: &'a NotInJournal,
    /// Every CVE an applied, enabled update fixes, sorted, once each.
    pub cves_fixed: Vec<String>,
}

impl<'a> ViewJson<'a> {
    pub fn new(v: &'a View) -> Self {
        let set: std::collections::BTreeSet<&String> = v
            .updates
            .iter()
            .filter(|u| u.state == "applied" && u.livepatch == "enabled")
            .flat_map(|u| &u.cves)
            .collect();
        ViewJson {
            format: JSON_FORMAT,
            kernel: Kernel::from(&v.running),
            updates: &v.updates,
            not_in_journal: &v.not_in_journal,
            cves_fixed: set.into_iter().cloned().collect(),
        }
    }
}

/// Which line `ksplice uname` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnameField {
    /// `-r` (the default): the effective release.
    Release,
    /// `-v`: `uname -v` and the applied levels.
    Version,
    /// `-a`: `uname -a` with those two in place.
    All,
}

/// The line `ksplice uname` prints for `status`.
pub fn uname(host: &Host<'_>, status: &Status, field: UnameField) -> Result<String> {
    Ok(match field {
        UnameField::Release => status.effective_version(),
        UnameField::Version => status.effective_uname_v(),
        UnameField::All => {
            // What uname(2) reports as sysname and nodename (the running
            // UTS namespace); GNU uname -a omits unknown -p and -i.
            let read = |p: &str| {
                let path = host.path(p);
                crate::fsutil::read_trimmed(&path).map_err(|e| Error::io(path, e))
            };
            format!(
                "{} {} {} {} {} GNU/Linux",
                read("/proc/sys/kernel/ostype")?,
                read("/proc/sys/kernel/hostname")?,
                status.effective_version(),
                status.effective_uname_v(),
                status.running.arch
            )
        }
    })
}
