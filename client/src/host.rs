//! Where the client looks: the root directory for /proc, /sys, /etc, /var, the
//! state directory, the trust policy, timeouts, and the kernel interface.

use std::path::PathBuf;
use std::time::Duration;

use crate::sys::Sys;

/// Default trust policy, relative to the root (contracts.md D).
pub const DEFAULT_TRUST: &str = "etc/ksplice/trust.toml";
/// Default state directory, relative to the root.
pub const DEFAULT_STATE_DIR: &str = "var/lib/ksplice";

/// How long to wait for the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Total time a livepatch transition may take before it is reversed.
    pub transition: Duration,
    /// After this long, stalled tasks are signalled (where the kernel offers
    /// the `signal` file; 6.1 signals them by itself after 15 s).
    pub signal_after: Duration,
    /// Interval between two reads of the `transition` file.
    pub poll: Duration,
    /// How long to retry delete_module while the kernel still holds the module.
    pub unload: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            transition: Duration::from_secs(60),
            signal_after: Duration::from_secs(10),
            poll: Duration::from_millis(100),
            unload: Duration::from_secs(10),
        }
    }
}

/// One host, real or a fixture directory.
pub struct Host<'s> {
    /// `/` on a real host; a fixture directory in tests.
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub trust: PathBuf,
    pub timeouts: Timeouts,
    /// Largest journal read or written ([`crate::state::MAX_JOURNAL`]; tests
    /// lower it).
    pub max_journal: u64,
    pub sys: &'s dyn Sys,
}

impl std::fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("root", &self.root)
            .field("state_dir", &self.state_dir)
            .field("trust", &self.trust)
            .field("timeouts", &self.timeouts)
            .field("max_journal", &self.max_journal)
            .finish_non_exhaustive()
    }
}

impl<'s> Host<'s> {
    /// A host rooted at `root` with the default state directory and trust
    /// policy under it.
    pub fn new(root: impl Into<PathBuf>, sys: &'s dyn Sys) -> Self {
        let root = root.into();
        Host {
            state_dir: root.join(DEFAULT_STATE_DIR),
            trust: root.join(DEFAULT_TRUST),
            root,
            timeouts: Timeouts::default(),
            max_journal: crate::state::MAX_JOURNAL,
            sys,
        }
    }

    /// An absolute host path (`/proc/cmdline`) under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// `/sys/kernel/livepatch/<name>`
    pub fn livepatch_dir(&self, module: &str) -> PathBuf {
        self.path("/sys/kernel/livepatch").join(module)
    }

    /// `/sys/module/<name>`: present while the module is loaded.
    pub fn module_dir(&self, module: &str) -> PathBuf {
        self.path("/sys/module").join(module)
    }

    /// Whether `ksplice=off` is on the kernel command line.
    pub fn disabled_on_cmdline(&self) -> bool {
        std::fs::read_to_string(self.path("/proc/cmdline"))
            .map(|c| c.split_whitespace().any(|w| w == "ksplice=off"))
            .unwrap_or(false)
    }

    pub(crate) fn state(&self, rel: &str) -> PathBuf {
        self.state_dir.join(rel)
    }

    pub(crate) fn package_path(&self, id: &str) -> PathBuf {
        self.state_dir
            .join("packages")
            .join(format!("ksplice-{id}.tar.gz"))
    }
}
