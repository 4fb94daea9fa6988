//! The command line of `ksplice` and its seed-named aliases (`ksplice-apply`,
//! `ksplice-undo`, `ksplice-view`): parse, call the library, print, exit.
//!
//! Shared by the binaries through `#[path]`; the library does the work.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Parser, Subcommand};
use client::ops::{self, Event, Targets};
use client::output::escape;
use client::{boot, exit, Host, RealSys};

/// Rebootless kernel updates: verify, apply, undo and show them on this host.
#[derive(Debug, Parser)]
#[command(name = "ksplice", version, about)]
struct Cli {
    /// Trust policy [env KSPLICE_TRUST; default /etc/ksplice/trust.toml].
    #[arg(long, global = true, value_name = "FILE")]
    trust: Option<PathBuf>,
    /// State directory [env KSPLICE_STATE_DIR; default /var/lib/ksplice].
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds a livepatch transition may take before it is reversed.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify packages against the trust policy and print what they contain.
    Verify {
        #[arg(required = true, value_name = "PKG")]
        packages: Vec<PathBuf>,
    },
    /// Verify, install and apply packages to the running kernel, in order.
    Apply {
        #[arg(
            value_name = "PKG",
            required_unless_present = "installed",
            conflicts_with = "installed"
        )]
        packages: Vec<PathBuf>,
        /// Re-apply the installed updates built for the running kernel (boot).
        #[arg(long)]
        installed: bool,
        /// With --installed: the boot unit's run, with crash-loop protection
        /// (mark this boot; hold if an earlier boot was never confirmed).
        #[arg(long, requires = "installed")]
        boot: bool,
    },
    /// The boot proved itself: clear the boot-attempt marker (run by a timer).
    ConfirmBoot,
    /// Reverse applied updates and remove them from the host.
    Undo {
        #[arg(
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<String>,
        /// Undo every update, newest first.
        #[arg(long)]
        all: bool,
    },
    /// Show installed and applied updates.
    View {
        #[arg(value_name = "ID")]
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One line: the effective kernel version; exit 0 up to date, 1 pending.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Fetch, verify and apply the updates due for this kernel from the
    /// configured TUF mirrors (exit 0 nothing to do, 1 --check: something
    /// would be applied, 11 applied, 3 refused, 12 mirrors unreachable).
    Update {
        /// Say what would be applied; change nothing.
        #[arg(long)]
        check: bool,
        /// One versioned JSON object on standard output.
        #[arg(long)]
        json: bool,
        /// Run by ksplice-update.timer: apply only when `auto = true`.
        #[arg(long, conflicts_with = "check")]
        timer: bool,
        /// Client configuration [env KSPLICE_CLIENT_CONFIG; default /etc/ksplice/client.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Write this host's kernel profile (System.map, config, build-id, ...) for ksplice-create.
    Profile {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// The effective kernel version, like uname (default -r): base release plus applied levels.
    Uname {
        /// The effective release: `uname -r` plus `+ksplice.<stream>.<level>` and stand-alone ids.
        #[arg(short = 'r', group = "field")]
        release: bool,
        /// `uname -v` plus ` ksplice:` and the applied levels.
        #[arg(short = 'v', group = "field")]
        version: bool,
        /// Like `uname -a`, with the effective release and version.
        #[arg(short = 'a', group = "field")]
        all: bool,
    },
}

/// The subcommand an alias name stands for.
fn preset_for(argv0: &Path) -> Option<&'static str> {
    match argv0.file_name()?.to_str()? {
        "ksplice-apply" => Some("apply"),
        "ksplice-undo" => Some("undo"),
        "ksplice-view" => Some("view"),
        _ => None,
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Run the client; `preset` is the subcommand of an alias binary, otherwise
/// it is taken from the program name (so a copy or symlink named
/// `ksplice-apply` works too).
pub fn main(preset: Option<&'static str>) -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = args.first().map(PathBuf::from).unwrap_or_default();
    if let Some(sub) = preset.or_else(|| preset_for(&argv0)) {
        args.insert(1, sub.into());
        args[0] = "ksplice".into();
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    // A fake root (fixture /sys, /proc) belongs with a simulated kernel,
    // i.e. the library's tests; with real system calls a fake `notes` file
    // would pass the identity check while finit_module loads for real.
    if let Some(root) = std::env::var_os("KSPLICE_ROOT").filter(|r| !r.is_empty() && r != "/") {
        say_err(&format!(
            "KSPLICE_ROOT={} is not supported: this binary uses the running kernel and /",
            Path::new(&root).display()
        ));
        return ExitCode::from(exit::USAGE);
    }
    let sys = RealSys;
    let root = PathBuf::from("/");
    let mut host = Host::new(root, &sys);
    if let Some(t) = cli.trust.clone().or_else(|| env_path("KSPLICE_TRUST")) {
        host.trust = t;
    }
    if let Some(s) = cli
        .state_dir
        .clone()
        .or_else(|| env_path("KSPLICE_STATE_DIR"))
    {
        host.state_dir = s;
    }
    host.timeouts.transition = Duration::from_secs(cli.timeout);
    let code = match run(&host, cli.command) {
        Ok(code) => code,
        Err(e) => {
            say_err(&format!("ksplice: {e}"));
            e.exit_code()
        }
    };
    // A reader that went away (`ksplice view | head -1`) is not an error;
    // any other failure to write what was asked for is.
    match STDOUT_ERROR.get() {
        Some(e) if code == exit::OK => {
            say_err(&format!("ksplice: standard output: {e}"));
            ExitCode::from(exit::STATE)
        }
        _ => ExitCode::from(code),
    }
}

/// Set once standard output failed for another reason than a closed pipe.
static STDOUT_ERROR: OnceLock<io::Error> = OnceLock::new();
/// Set once the reader of standard output went away: later output is dropped.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Write to standard output without ever panicking (println! does on EPIPE).
/// After a closed pipe the rest is dropped quietly; the command itself goes
/// on (an apply must not stop half-way because nobody reads its events).
fn say(text: &str) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) || STDOUT_ERROR.get().is_some() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        } else {
            let _ = STDOUT_ERROR.set(e);
        }
    }
}

/// One line on standard error, escaped (errors quote manifest text); a
/// closed standard error is ignored.
fn say_err(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{}", escape(line));
}

fn print_event(e: Event) {
    say(&format!("{}\n", escape(&e.to_string())));
}

/// Crash-loop protection around `apply --installed` (client/src/boot.rs).
/// `Some(code)` ends the command without re-applying.
fn boot_gate(host: &Host<'_>, boot_unit: bool) -> client::Result<Option<u8>> {
    // The kill switch comes first: apply_installed reports it, nothing is marked.
    if host.disabled_on_cmdline() {
        return Ok(None);
    }
    if !boot_unit {
        // By hand: the administrator decides; a hold is released, and this
        // boot is marked like any other that re-applies.
        if let Some(h) = boot::release(host)? {
            say(&format!("released: {h}\n"));
        }
        return Ok(None);
    }
    // Nothing installed, nothing to protect against (and no marker that an
    // idle host would have to confirm).
    if client::state::State::peek(host)?.entries().is_empty() {
        return Ok(None);
    }
    match boot::gate(host)? {
        boot::Gate::Proceed => Ok(None),
        boot::Gate::Held(h) => {
            say_err(&format!("ksplice: {h}"));
            Ok(Some(exit::HELD))
        }
    }
}

fn run(host: &Host<'_>, command: Command) -> client::Result<u8> {
    match command {
        Command::Verify { packages } => {
            let policy = ops::load_policy(host)?;
            for pkg in packages {
                let summary = ops::summarize(&pkg, &policy)?;
                // Line by line, so a control character in the manifest is
                // escaped without escaping the summary's own line breaks.
                for line in summary.to_string().lines() {
                    say(&format!("{}\n", escape(line)));
                }
            }
            Ok(exit::OK)
        }
        Command::Apply {
            packages,
            installed,
            boot,
        } => {
            if installed {
                if let Some(code) = boot_gate(host, boot)? {
                    return Ok(code);
                }
                ops::apply_installed(host, &mut print_event)?;
            } else {
                ops::apply(host, &packages, &mut print_event)?;
            }
            Ok(exit::OK)
        }
        Command::Undo { ids, all } => {
            let targets = if all { Targets::All } else { Targets::Ids(ids) };
            ops::undo(host, &targets, &mut print_event)?;
            Ok(exit::OK)
        }
        Command::View { id, json } => {
            let mut view = ops::view(host)?;
            if let Some(id) = &id {
                view.updates.retain(|u| &u.id == id);
                if view.updates.is_empty() {
                    return Err(client::Error::UnknownUpdate { id: id.clone() });
                }
                view.not_in_journal = Default::default();
            }
            if json {
                let value = client::report::ViewJson::new(&view);
                let text = serde_json::to_string_pretty(&value).unwrap_or_default();
                say(&format!("{text}\n"));
            } else {
                if id.is_none() {
                    let r = &view.running;
                    say(&format!(
                        "running kernel {} {} build-id {}\n",
                        escape(&r.release),
                        escape(&r.arch),
                        r.build_id
                    ));
                    if view.updates.is_empty() && view.not_in_journal.is_empty() {
                        say("no updates installed\n");
                    }
                }
                for u in &view.updates {
                    say(&ops::ViewText(u).to_string());
                }
                say(&view.not_in_journal.to_string());
            }
            Ok(view.exit_code())
        }
        Command::Status { json } => {
            let s = ops::status(host)?;
            let hold = boot::held(host)?;
            let code = client::report::status_code(&s, hold.as_ref());
            if json {
                let j = client::report::StatusJson::new(&s).with_hold(hold);
                let text = serde_json::to_string(&j).unwrap_or_default();
                say(&format!("{text}\n"));
            } else {
                say(&format!("{}\n", escape(&s.to_string())));
                if let Some(h) = &hold {
                    say(&format!("held: {}\n", escape(&h.to_string())));
                }
            }
            Ok(code)
        }
        Command::Update {
            check,
            json,
            timer,
            config,
        } => update(host, check, json, timer, config),
        Command::ConfirmBoot => {
            match client::boot::confirm(host)? {
                boot::Confirmed::Confirmed(a) => say(&format!(
                    "boot {} confirmed (updates re-applied at {})\n",
                    a.boot_id, a.since
                )),
                boot::Confirmed::Nothing => say("nothing to confirm\n"),
                boot::Confirmed::OtherBoot(a) => say(&format!(
                    "the marker is boot {}'s, not this boot's: left for the next boot to hold\n",
                    a.boot_id
                )),
            }
            Ok(exit::OK)
        }
        Command::Uname {
            release: _,
            version,
            all,
        } => {
            use client::report::UnameField;
            let field = match (version, all) {
                (true, _) => UnameField::Version,
                (_, true) => UnameField::All,
                _ => UnameField::Release,
            };
            let s = ops::status(host)?;
            say(&format!(
                "{}\n",
                escape(&client::report::uname(host, &s, field)?)
            ));
            Ok(exit::OK)
        }
        Command::Profile { dir } => {
            let files = client::profile::profile(host, &dir)?;
            say(&format!(
                "profile written to {}: {}\n",
                escape(&dir.display().to_string()),
                files.join(", ")
            ));
            Ok(exit::OK)
        }
    }
}

fn update(
    host: &Host<'_>,
    check: bool,
    json: bool,
    timer: bool,
    config: Option<PathBuf>,
) -> client::Result<u8> {
    use client::update::{self, config::Config, Mode, Options, Outcome};
    let path = config
        .or_else(|| env_path("KSPLICE_CLIENT_CONFIG"))
        .unwrap_or_else(|| host.root.join(update::config::DEFAULT_CONFIG));
    let mode = match (check, timer) {
        (true, _) => Mode::Check,
        (false, true) => Mode::Timer,
        (false, false) => Mode::Apply,
    };
    let now = time::OffsetDateTime::now_utc();
    let result = Config::load(host, &path).and_then(|cfg| {
        update::update(host, &cfg, Options { mode, now }, &mut |e| {
            if !json {
                print_event(e);
            }
        })
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if json {
                let value = serde_json::json!({
                    "format": update::REPORT_FORMAT,
                    "outcome": "error",
                    "error": e.to_string(),
                    "exit": e.exit_code(),
                });
                say(&format!("{value}\n"));
            }
            return Err(e);
        }
    };
    if json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        say(&format!("{text}\n"));
        return Ok(report.outcome.exit_code());
    }
    for e in &report.errors {
        say_err(&format!("ksplice: mirror {}: {}", e.mirror, e.error));
    }
    if let Some(m) = &report.mirror {
        say(&format!("mirror {}\n", escape(m)));
    }
    for w in &report.waiting {
        say(&format!(
            "{}: waits for its rollout wave or the delay until {}\n",
            escape(&w.id),
            manifests::fleet::format_utc(w.from)
        ));
    }
    let line = match report.outcome {
        Outcome::AutoOff => "automatic updates are off (auto = false): nothing done".to_owned(),
        Outcome::Held => "automatic apply is held (see `ksplice status`): nothing done".to_owned(),
        Outcome::UpToDate => "up to date: nothing to apply now".to_owned(),
        Outcome::WouldApply => format!("would apply: {}", escape(&report.chosen.join(", "))),
        Outcome::Applied => format!("applied: {}", escape(&report.applied.join(", "))),
        Outcome::Refused => "refused: no mirror passed verification".to_owned(),
        Outcome::Unreachable => "no mirror could be reached".to_owned(),
    };
    say(&format!("{line}\n"));
    Ok(report.outcome.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_names_preset_their_subcommand() {
        assert_eq!(
            preset_for(Path::new("/usr/sbin/ksplice-apply")),
            Some("apply")
        );
        assert_eq!(preset_for(Path::new("ksplice-undo")), Some("undo"));
        assert_eq!(preset_for(Path::new("./ksplice-view")), Some("view"));
        assert_eq!(preset_for(Path::new("/usr/sbin/ksplice")), None);
    }

    #[test]
    fn apply_needs_packages_or_installed_not_both() {
        assert!(Cli::try_parse_from(["ksplice", "apply"]).is_err());
        assert!(Cli::try_parse_from(["ksplice", "apply", "--installed", "x.tar.gz"]).is_err());
        assert!(Cli::try_parse_from(["ksplice", "apply", "--installed"]).is_ok());
        assert!(Cli::try_parse_from(["ksplice", "undo", "--all", "a"]).is_err());
    }

    #[test]
    fn update_check_and_timer_exclude_each_other() {
        assert!(Cli::try_parse_from(["ksplice", "update", "--check", "--timer"]).is_err());
        assert!(Cli::try_parse_from(["ksplice", "update", "--check", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["ksplice", "update", "--config", "/x", "--timer"]).is_ok());
    }

    #[test]
    fn uname_takes_one_of_r_v_a() {
        for ok in [
            &["ksplice", "uname"][..],
            &["ksplice", "uname", "-r"],
            &["ksplice", "uname", "-a"],
        ] {
            assert!(Cli::try_parse_from(ok).is_ok(), "{ok:?}");
        }
        assert!(Cli::try_parse_from(["ksplice", "uname", "-r", "-v"]).is_err());
        assert!(Cli::try_parse_from(["ksplice", "uname", "-x"]).is_err());
    }
}
