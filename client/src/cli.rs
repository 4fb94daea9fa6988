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
use client::{exit, Host, RealSys};

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
    },
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
        } => {
            if installed {
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
            if json {
                let text =
                    serde_json::to_string(&client::report::StatusJson::new(&s)).unwrap_or_default();
                say(&format!("{text}\n"));
            } else {
                say(&format!("{}\n", escape(&s.to_string())));
            }
            Ok(s.exit_code())
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
