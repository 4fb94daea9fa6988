//! `ksplice-create`: build a signed live update from a kernel source change.
//!
//! Exit codes (docs/builder.md): 0 built, 1 error, 2 refused, 3 no functional change.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;

use builder::checkout::{GitPost, Source};
use builder::create::{self, Options};
use builder::summary::Summary;
use builder::target::ProfileInputs;
use builder::tree::evict;

/// Build a signed live update package (ksplice-<id>.tar.gz) for a running kernel.
///
///   ksplice-create --diffext=new SRC            (FILE.new beside each changed FILE)
///   ksplice-create --patch=fix.patch SRC
///   ksplice-create --git REPO --pre REF --post REF
///   ksplice-create --git REPO --pre REF --patch fix.patch
///
/// Cumulative updates (a level of a stream, loaded with the livepatch replace flag):
///   ksplice-create --cumulative --stream main --level 2 --replaces main-1 --patch all-fixes.patch SRC
///   ksplice-create --cumulative --replaces main-1 ...   (stream "main", level 1 + number of --replaces)
#[derive(Debug, Parser)]
#[command(name = "ksplice-create", version, verbatim_doc_comment)]
struct Cli {
    /// Kernel source tree (pre version); SRC/.config and SRC/ksplice/ describe the target.
    src: Option<PathBuf>,
    /// The new version of each changed FILE is FILE.EXT beside it.
    #[arg(long, value_name = "EXT", conflicts_with_all = ["patch", "git"])]
    diffext: Option<String>,
    /// A unified diff (-p1) applied on top of SRC or of --pre.
    #[arg(long, value_name = "FILE")]
    patch: Option<PathBuf>,
    /// A git repository holding the kernel source.
    #[arg(long, value_name = "REPO", requires = "pre")]
    git: Option<PathBuf>,
    /// The running kernel's source version (a git ref).
    #[arg(long, value_name = "REF", requires = "git")]
    pre: Option<String>,
    /// The fixed source version (a git ref).
    #[arg(long, value_name = "REF", requires = "git", conflicts_with = "patch")]
    post: Option<String>,
    /// The target's .config (default SRC/.config, then SRC/ksplice/config).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The target's symbol table: a root copy of its /proc/kallsyms (default SRC/ksplice/System.map).
    #[arg(long, value_name = "FILE")]
    system_map: Option<PathBuf>,
    /// The target's kernel image (vmlinuz); default /boot/vmlinuz-<release> when present.
    #[arg(long, value_name = "FILE")]
    target_image: Option<PathBuf>,
    /// The target's `uname -r` (default SRC/ksplice/release).
    #[arg(long, value_name = "RELEASE")]
    release: Option<String>,
    /// The target's `uname -v` (default SRC/ksplice/version).
    #[arg(long, value_name = "VERSION")]
    kernel_version: Option<String>,
    /// The target's Module.symvers (default SRC, SRC/ksplice/, /usr/src/linux-headers-<release>/).
    #[arg(long, value_name = "FILE")]
    symvers: Option<PathBuf>,
    /// Update id (default: from the patch, file or branch name).
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// A CVE the update fixes (repeatable).
    #[arg(long = "cve", value_name = "CVE-YYYY-N")]
    cves: Vec<String>,
    /// Signing key file (repeatable); default the host-local /etc/ksplice/local-signing.key.
    #[arg(long = "sign-key", value_name = "FILE")]
    sign_keys: Vec<PathBuf>,
    /// Parallel compile jobs.
    #[arg(short = 'j', long = "jobs", default_value_t = 2)]
    jobs: usize,
    /// Where the package goes.
    #[arg(long, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    /// Scratch directory (kept); default a temporary directory under the cache.
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// Build a cumulative update: it contains every fix of the earlier levels of
    /// its stream and replaces them (and every other live patch) in one transition.
    #[arg(long)]
    cumulative: bool,
    /// The stream of a cumulative update [default: main].
    #[arg(long, value_name = "NAME", requires = "cumulative")]
    stream: Option<String>,
    /// Its level, 1 or more [default: 1 + the number of --replaces].
    #[arg(long, value_name = "N", requires = "cumulative")]
    level: Option<u32>,
    /// Id of an update this level supersedes (repeatable; normally the earlier levels).
    #[arg(long = "replaces", value_name = "ID", requires = "cumulative")]
    replaces: Vec<String>,
}

fn cumulative(cli: &Cli) -> Option<create::Cumulative> {
    cli.cumulative.then(|| create::Cumulative {
        stream: cli.stream.clone(),
        level: cli.level,
        replaces: cli.replaces.clone(),
    })
}

fn source(cli: &Cli) -> anyhow::Result<Source> {
    if let Some(repo) = &cli.git {
        let pre = cli
            .pre
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--git needs --pre"))?;
        let post = match (&cli.post, &cli.patch) {
            (Some(r), None) => GitPost::Ref(r.clone()),
            (None, Some(p)) => GitPost::Patch(p.clone()),
            _ => anyhow::bail!("--git needs --post REF or --patch FILE"),
        };
        return Ok(Source::Git {
            repo: repo.clone(),
            pre,
            post,
        });
    }
    let src = cli
        .src
        .clone()
        .ok_or_else(|| anyhow::anyhow!("give SRC (a kernel source tree) or --git REPO"))?;
    match (&cli.diffext, &cli.patch) {
        (Some(ext), None) if !ext.is_empty() && !ext.contains('/') => Ok(Source::DiffExt {
            src,
            ext: ext.trim_start_matches('.').to_string(),
        }),
        (None, Some(p)) => Ok(Source::Patch {
            src,
            patch: p.clone(),
            fingerprint: None,
        }),
        _ => anyhow::bail!("give exactly one of --diffext=EXT or --patch=FILE with SRC"),
    }
}

fn main() {
    // clap exits 2 on a usage error, which here means "refused": a mistyped
    // flag is a usage error (1), help and --version are success (0).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    // A bad cap is refused before any work, like a bad flag.
    let cache_max = match evict::max_from_env(std::env::var_os(evict::MAX_VAR).as_deref()) {
        Ok(max) => max,
        Err(e) => {
            eprintln!("ksplice-create: {e}");
            std::process::exit(e.exit_code());
        }
    };
    let opts = match source(&cli) {
        Ok(source) => {
            let cache = std::env::var_os("KSPLICE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/ksplice-ci"));
            let src = match &source {
                Source::DiffExt { src, .. } | Source::Patch { src, .. } => Some(src.clone()),
                Source::Git { .. } => cli.src.clone(),
            };
            Options {
                source,
                profile: ProfileInputs {
                    src,
                    config: cli.config.clone(),
                    system_map: cli.system_map.clone(),
                    target_image: cli.target_image.clone(),
                    release: cli.release.clone(),
                    version: cli.kernel_version.clone(),
                    symvers: cli.symvers.clone(),
                    system_root: PathBuf::from("/"),
                    loaded_image: None,
                },
                id: cli.id.clone(),
                description: cli.description.clone(),
                cves: cli.cves.clone(),
                sign_keys: cli.sign_keys.clone(),
                jobs: cli.jobs,
                output: cli.output.clone(),
                work: cli.work.clone(),
                cache,
                cache_max,
                etc_dir: std::env::var_os("KSPLICE_ETC")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(create::ETC_KSPLICE)),
                cumulative: cumulative(&cli),
            }
        }
        Err(e) => {
            eprintln!("ksplice-create: {e:#}");
            std::process::exit(1);
        }
    };
    let mut summary = Summary::default();
    let result = create::create(&opts, &mut summary);
    eprint!("{summary}");
    match result {
        Ok(pkg) => println!("{}", pkg.display()),
        Err(e) => {
            eprintln!("ksplice-create: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_need_cumulative_and_resolve_with_defaults() {
        let parse = |args: &[&str]| {
            let mut v = vec!["ksplice-create", "--patch", "p.patch", "src"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
        };
        assert!(
            parse(&["--level", "2"]).is_err(),
            "--level without --cumulative"
        );
        assert!(parse(&["--replaces", "a"]).is_err());
        assert_eq!(cumulative(&parse(&[]).expect("plain")), None);
        let c = cumulative(&parse(&["--cumulative", "--replaces", "main-1"]).expect("short form"))
            .expect("cumulative");
        let s = c.resolve("main-2").expect("resolves");
        assert_eq!((s.name.as_str(), s.level), ("main", 2));
        assert_eq!(s.replaces, vec!["main-1"]);
        let c = cumulative(
            &parse(&["--cumulative", "--stream", "s", "--level", "5"]).expect("long form"),
        )
        .expect("cumulative");
        assert_eq!(
            c,
            create::Cumulative {
                stream: Some("s".into()),
                level: Some(5),
                replaces: vec![],
            }
        );
    }
}
