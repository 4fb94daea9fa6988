//! `ksplice-build`: low-level builder commands (signing keys, packing; one subcommand per step).
//!
//! Exit codes: 0 success; 1 usage error or I/O failure; 2 refused: invalid input
//! (bad manifest, bad key file, a key file that already exists, ...).
//! Subcommands may define further codes in their own docs.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Exit code for success.
const EXIT_OK: u8 = 0;
/// Exit code for usage errors and I/O failures.
const EXIT_ERROR: u8 = 1;
/// Exit code for refused or invalid input.
const EXIT_REFUSED: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "ksplice-build",
    version,
    about = "Low-level ksplice builder commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an ed25519 signing key pair and a trust policy listing it.
    Keygen(KeygenArgs),
    /// Build a signed package from a manifest and its payload files.
    Pack(PackArgs),
    /// Diff two builds of one kernel object; write the patch object (exit 0 patch,
    /// 3 no functional change, 2 refused, 1 malformed input or I/O error).
    Diff(DiffArgs),
    /// A TUF repository of packages for mirrors (docs/fleet.md "Publishing"):
    /// exit 0 done, 2 refused (invalid package, id conflict, bad option, missing or
    /// unreadable key, threshold), 1 I/O or metadata error.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Write a kernel release's target profile (System.map decoded from the image's
    /// kallsyms, config, build-id, release, version, arch, Module.symvers) from its
    /// packages, without booting it (docs/builder.md "Profile from packages"): exit 0
    /// written, 2 refused (an input is not what it claims, disagrees with another, or
    /// Module.symvers is missing under CONFIG_MODVERSIONS=y), 1 usage or I/O error.
    Profile(ProfileArgs),
    /// Build every fix of a fixes directory for one kernel release, as the levels of
    /// its cumulative stream, with a JSON report (docs/pipeline.md): exit 0 ran (each
    /// fix built, not applicable or refused, as the report says), 2 refused input
    /// (malformed fixes or options), 1 the release is not set up, or I/O.
    Release(ReleaseArgs),
    /// Write the GitLab CI child pipeline (one job per kernel release of
    /// releases.toml) after checking releases.toml and the fixes (docs/pipeline.md):
    /// exit 0 written, 2 refused input, 1 I/O.
    Plan(PlanArgs),
    /// The coverage corpus (docs/coverage.md): every changed `.c` file between two
    /// kernel releases built as a live update for the older one, a JSON record each,
    /// and the table: exit 0 ran (whatever the outcomes), 2 refused options, 1 a
    /// release is not set up, or I/O.
    #[command(subcommand)]
    Coverage(CoverageCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout and succeed; usage errors exit 1 (not clap's 2,
            // which here means "refused").
            let code = if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Keygen(args) => finish(keygen(&args)),
        Command::Pack(args) => finish(pack(&args)),
        Command::Diff(args) => diff(&args),
        Command::Repo(command) => finish(repo(command)),
        Command::Profile(args) => finish(profile(&args)),
        Command::Release(args) => finish(release(&args)),
        Command::Coverage(command) => finish(coverage(command)),
        Command::Plan(args) => finish(plan(&args)),
    }
}

/// A failed command: the error chain to print and the exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<manifests::Error> for Failure {
    fn from(error: manifests::Error) -> Self {
        let code = match error {
            manifests::Error::Io { .. } => EXIT_ERROR,
            _ => EXIT_REFUSED,
        };
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl From<builder::repo::Error> for Failure {
    fn from(error: builder::repo::Error) -> Self {
        Failure {
            code: error.exit_code(),
            error: error.into(),
        }
    }
}

impl From<builder::error::Error> for Failure {
    fn from(error: builder::error::Error) -> Self {
        // Bad input is refused; only failing to read or write is an I/O failure.
        let code = match error {
            builder::error::Error::Io { .. } => EXIT_ERROR,
            _ => EXIT_REFUSED,
        };
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            code: EXIT_ERROR,
            error,
        }
    }
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(Failure { code, error }) => {
            eprintln!("ksplice-build: {}", one_line_chain(&error));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes on one line; a cause whose text its parent's message
/// already quotes (manifests errors include their source) is not repeated.
fn one_line_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text.replace('\n', " ")
}

// ---- keygen ----------------------------------------------------------------------------------

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Directory to write signing.key (0600), signing.pub and trust.toml into; created if
    /// missing. Refuses (exit 2) if any of the three files exists.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn keygen(args: &KeygenArgs) -> Result<(), Failure> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let secret = args.out.join("signing.key");
    let public = args.out.join("signing.pub");
    let trust = args.out.join("trust.toml");
    // Check all three first so a refusal leaves the directory as it was.
    for path in [&secret, &public, &trust] {
        if path.symlink_metadata().is_ok() {
            return Err(manifests::Error::KeyExists { path: path.clone() }.into());
        }
    }
    let key = manifests::SigningKey::generate()?;
    key.save_new(&secret)?;
    key.public().save(&public)?;
    let policy = manifests::TrustPolicy::new(vec![key.public()], 1)?;
    write_new(&trust, policy.to_toml().as_bytes())?;
    println!("key id {}", key.public().key_id());
    println!("private key {}", secret.display());
    println!("public key  {}", public.display());
    println!("trust policy {}", trust.display());
    Ok(())
}

/// Creates `path` with mode 0644 set on the descriptor: the umask must not make the
/// trust policy group-writable, which `TrustPolicy::load` refuses.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|source| manifests::Error::Io {
            path: path.to_owned(),
            source,
        })?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| file.write_all(bytes))
        .map_err(|source| manifests::Error::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(())
}

// ---- pack ------------------------------------------------------------------------------------

#[derive(Debug, Args)]
struct PackArgs {
    /// Manifest TOML; its `files` may be empty (they are filled from FILE...), otherwise
    /// they must match FILE... exactly.
    #[arg(long, value_name = "M")]
    manifest: PathBuf,
    /// Private key file to sign with; repeat for several signatures.
    #[arg(long = "key", value_name = "K", required = true)]
    keys: Vec<PathBuf>,
    /// Output package path, or an existing directory to write ksplice-<id>.tar.gz in.
    #[arg(short = 'o', long = "output", value_name = "PKG")]
    output: PathBuf,
    /// Payload files as `PATH` (stored under its file name) or `NAME=PATH`.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<String>,
}

fn pack(args: &PackArgs) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&args.manifest).map_err(|source| manifests::Error::Io {
        path: args.manifest.clone(),
        source,
    })?;
    let manifest = manifests::Manifest::from_toml(&text)
        .with_context(|| format!("{}", args.manifest.display()))
        .map_err(|error| Failure {
            code: EXIT_REFUSED,
            error,
        })?;
    let keys = args
        .keys
        .iter()
        .map(|k| manifests::SigningKey::load(k))
        .collect::<Result<Vec<_>, _>>()?;
    let key_refs: Vec<&manifests::SigningKey> = keys.iter().collect();
    let payload = args
        .files
        .iter()
        .map(|f| payload_arg(f))
        .collect::<Result<Vec<_>, _>>()?;
    let written = manifests::write_package(&args.output, &manifest, &key_refs, &payload)?;
    println!(
        "wrote {} (update {}, {} file(s), signed by {})",
        written.display(),
        manifest.id,
        payload.len(),
        keys.iter()
            .map(|k| k.public().key_id().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `NAME=PATH` or `PATH` (named after its file name).
fn payload_arg(arg: &str) -> Result<(String, PathBuf), Failure> {
    if let Some((name, path)) = arg.split_once('=') {
        return Ok((name.to_owned(), PathBuf::from(path)));
    }
    let path = PathBuf::from(arg);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Failure {
            code: EXIT_ERROR,
            error: anyhow::anyhow!("{arg}: not a file path"),
        })?
        .to_owned();
    Ok((name, path))
}

// ---- diff ------------------------------------------------------------------------------------

#[derive(Debug, Args)]
struct DiffArgs {
    /// Object built from the running (old) source.
    pre: PathBuf,
    /// Object built from the patched source.
    post: PathBuf,
    /// Where to write the patch object (only written when a patch is produced).
    #[arg(short = 'o', long = "output", value_name = "OUT.o")]
    output: Option<PathBuf>,
    /// Where to write the JSON report (written in every outcome but malformed input).
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Object the code belongs to in the running kernel: `vmlinux` or a module name.
    #[arg(long, default_value = "vmlinux")]
    target: String,
    /// Prefix of the changed/new function symbols in the patch object.
    #[arg(long, default_value = "ksp0_")]
    prefix: String,
    /// Module.symvers of the target kernel (symbols vmlinux exports are referenced by name).
    #[arg(long, value_name = "FILE")]
    symvers: Option<PathBuf>,
    /// sympos of a local symbol in the target, as NAME=N (repeatable).
    #[arg(long = "sympos", value_name = "NAME=N")]
    sympos: Vec<String>,
}

/// Exit code of `diff` when nothing functional changed.
const EXIT_NO_CHANGE: u8 = 3;

fn diff(args: &DiffArgs) -> ExitCode {
    match diff_inner(args) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("ksplice-build: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn diff_inner(args: &DiffArgs) -> anyhow::Result<u8> {
    use builder::diff;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (pre, post) = (read(&args.pre)?, read(&args.post)?);
    let mut cx = diff::Cx::new(&args.target, &args.prefix);
    if let Some(path) = &args.symvers {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        cx.vmlinux_exports = diff::vmlinux_exports_from_symvers(&text);
        cx.module_exports = diff::module_exports_from_symvers(&text);
    }
    for item in &args.sympos {
        let (name, pos) = item.split_once('=').context("--sympos wants NAME=N")?;
        cx.sympos.insert(
            name.to_owned(),
            pos.parse().with_context(|| format!("--sympos {item}"))?,
        );
    }
    let write_report = |report: &diff::Report| -> anyhow::Result<()> {
        if let Some(path) = &args.report {
            let json = serde_json::to_vec_pretty(report)?;
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    };
    match diff::diff(&pre, &post, &cx) {
        Ok(outcome) => {
            print!("{}", outcome.report());
            write_report(outcome.report())?;
            if let diff::Outcome::Patch { object, .. } = &outcome {
                if let Some(out) = &args.output {
                    std::fs::write(out, object)
                        .with_context(|| format!("writing {}", out.display()))?;
                }
                Ok(EXIT_OK)
            } else {
                Ok(EXIT_NO_CHANGE)
            }
        }
        Err(diff::Error::Refused { report }) => {
            print!("{report}");
            write_report(&report)?;
            eprintln!(
                "ksplice-build: refused: {} problem(s)",
                report.refusals.len()
            );
            Ok(EXIT_REFUSED)
        }
        Err(e) => Err(e.into()),
    }
}

// ---- profile ---------------------------------------------------------------------------------

#[derive(Debug, Args)]
struct ProfileArgs {
    /// The release's vmlinuz (bzImage, XZ payload) or a vmlinux ELF.
    #[arg(long, value_name = "VMLINUZ")]
    image: PathBuf,
    /// The release's kernel config (`/boot/config-<release>` of the image package).
    #[arg(long, value_name = "CONFIG")]
    config: PathBuf,
    /// The headers package's Module.symvers (required when CONFIG_MODVERSIONS=y).
    #[arg(long, value_name = "MODULE.SYMVERS")]
    symvers: Option<PathBuf>,
    /// The profile directory to write the files into (`SRC/ksplice`, as for
    /// `ksplice profile DIR`); created if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn profile(args: &ProfileArgs) -> Result<(), Failure> {
    let inputs = builder::target::ImageInputs {
        image: args.image.clone(),
        config: args.config.clone(),
        symvers: args.symvers.clone(),
    };
    let p = builder::target::write_profile(&inputs, &args.out)?;
    println!(
        "wrote {} ({}) for {} build-id {}: {} symbols decoded in {:.2} s (image read in {:.2} s)",
        args.out.display(),
        p.files.join(", "),
        p.release,
        p.build_id,
        p.table.symbols.len(),
        p.decode_time.as_secs_f64(),
        p.load_time.as_secs_f64()
    );
    Ok(())
}

// ---- release and plan ------------------------------------------------------------------------

#[derive(Debug, Args)]
struct ReleaseArgs {
    /// The kernel release: package version (6.1.187-1), ABI (6.1.0-53-amd64 or
    /// 6.1.0-53), or "candidate", as set up by ci/setup-kernel in $KSPLICE_CACHE.
    #[arg(long, value_name = "RELEASE")]
    kernel: String,
    /// The fixes directory: <id>.toml (order, description, cves, patch) per fix.
    #[arg(long, value_name = "DIR")]
    fixes: PathBuf,
    /// Output: packages/, profile/, report.json (work/ holds refused levels' scratch).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The stream name.
    #[arg(long, default_value = builder::create::DEFAULT_STREAM)]
    stream: String,
    /// Package signing key (repeatable); default the host-local key.
    #[arg(long = "sign-key", value_name = "FILE")]
    sign_keys: Vec<PathBuf>,
    /// Parallel compile jobs.
    #[arg(short = 'j', long = "jobs", default_value_t = 2)]
    jobs: usize,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("KSPLICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ksplice-ci"))
}

fn release(args: &ReleaseArgs) -> Result<(), Failure> {
    let cache_max = builder::tree::evict::max_from_env(
        std::env::var_os(builder::tree::evict::MAX_VAR).as_deref(),
    )
    .map_err(|e| Failure {
        code: EXIT_ERROR,
        error: e.into(),
    })?;
    let opts = builder::release::ReleaseOptions {
        cache_max,
        kernel: args.kernel.clone(),
        fixes: args.fixes.clone(),
        out: args.out.clone(),
        stream: args.stream.clone(),
        sign_keys: args.sign_keys.clone(),
        jobs: args.jobs,
        cache: cache_dir(),
        etc_dir: std::env::var_os("KSPLICE_ETC")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(builder::create::ETC_KSPLICE)),
    };
    let mut progress = progress::for_stderr(&args.kernel);
    let report = builder::release::release(&opts, progress.as_mut())?;
    let built = report
        .fixes
        .iter()
        .filter(|f| f.outcome == builder::release::Outcome::Built)
        .count();
    println!(
        "{} ({}): {} of {} fixes built as {} levels of stream {} in {:.0} s; report {}",
        report.kernel.release,
        report.kernel.version,
        built,
        report.fixes.len(),
        report.levels.len(),
        report.stream,
        report.seconds,
        args.out.join("report.json").display()
    );
    Ok(())
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// releases.toml: the kernel releases to build for.
    #[arg(long, value_name = "FILE")]
    releases: PathBuf,
    /// The fixes directory (checked, so a malformed fix fails the plan).
    #[arg(long, value_name = "DIR")]
    fixes: PathBuf,
    /// Where to write the child pipeline (YAML; written as JSON, which YAML includes).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn plan(args: &PlanArgs) -> Result<(), Failure> {
    let releases = builder::release::Releases::load(&args.releases)?;
    let fixes = builder::release::load_fixes(&args.fixes)?;
    let doc = builder::release::plan(&releases, &fixes);
    let mut text = serde_json::to_string_pretty(&doc).context("serialize the plan")?;
    text.push('\n');
    std::fs::write(&args.out, text).with_context(|| format!("write {}", args.out.display()))?;
    println!(
        "{}: {} release jobs ({}), {} fixes ({})",
        args.out.display(),
        releases.releases.len(),
        releases
            .releases
            .iter()
            .map(|r| r.kernel.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        fixes.len(),
        fixes
            .iter()
            .map(|f| f.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Progress of a release run: a bar on a terminal, one plain line per fix and
/// stage otherwise (CI logs keep every line).
mod progress {
    use builder::release::{Fix, FixReport, Outcome, Progress};
    use builder::summary::StageHook;
    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::IsTerminal;
    use std::time::Instant;

    pub fn for_stderr(kernel: &str) -> Box<dyn Progress> {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} fixes {msg}")
                    .expect("invariant: a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(kernel.to_owned());
            Box::new(Bar {
                bar,
                fix: String::new(),
            })
        } else {
            Box::new(Lines {
                kernel: kernel.to_owned(),
                started: Instant::now(),
            })
        }
    }

    fn done_text(r: &FixReport) -> String {
        let what = match r.outcome {
            Outcome::Built => format!("built, level {}", r.level.unwrap_or(0)),
            Outcome::NotApplicable => "not applicable".to_owned(),
            Outcome::Refused => "refused".to_owned(),
        };
        let reason = r
            .reason
            .as_deref()
            .and_then(|t| t.lines().next())
            .map(|t| format!(": {t}"))
            .unwrap_or_default();
        format!("{}: {what} in {:.0} s{reason}", r.id, r.seconds)
    }

    struct Bar {
        bar: ProgressBar,
        fix: String,
    }

    impl Progress for Bar {
        fn fix(&mut self, index: usize, total: usize, fix: &Fix) {
            self.bar.set_length(total as u64);
            self.bar.set_position(index as u64);
            self.fix = fix.id.clone();
            self.bar.set_message(fix.id.clone());
        }
        fn stage_hook(&self) -> StageHook {
            let bar = self.bar.clone();
            let fix = self.fix.clone();
            StageHook::new(move |stage| bar.set_message(format!("{fix}: {stage}")))
        }
        fn done(&mut self, r: &FixReport) {
            self.bar.println(done_text(r));
            self.bar.inc(1);
            if self.bar.position() == self.bar.length().unwrap_or(0) {
                self.bar.finish_and_clear();
            }
        }
    }

    struct Lines {
        kernel: String,
        started: Instant,
    }

    impl Progress for Lines {
        fn fix(&mut self, index: usize, total: usize, fix: &Fix) {
            eprintln!(
                "[{:>5.0} s] {}: fix {}/{total} {}",
                self.started.elapsed().as_secs_f64(),
                self.kernel,
                index + 1,
                fix.id
            );
        }
        fn stage_hook(&self) -> StageHook {
            let kernel = self.kernel.clone();
            let started = self.started;
            let mut last = "";
            StageHook::new(move |stage| {
                // One line per stage, not per timed step within it.
                if stage != last {
                    eprintln!(
                        "[{:>5.0} s] {kernel}:   {stage}",
                        started.elapsed().as_secs_f64()
                    );
                    last = stage;
                }
            })
        }
        fn done(&mut self, r: &FixReport) {
            eprintln!(
                "[{:>5.0} s] {}: {}",
                self.started.elapsed().as_secs_f64(),
                self.kernel,
                done_text(r)
            );
        }
    }
}

// ---- coverage --------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
enum CoverageCommand {
    /// Split the change between --from and --to into one patch per changed .c file
    /// and build each against --from; writes OUT/corpus.json, OUT/records.jsonl (one
    /// record per patch, appended as they finish: a second run resumes), OUT/sample/
    /// (the seeded VM sample: sample.json, its packages, trust.toml); prints the table.
    Run(CoverageRunArgs),
    /// The table from OUT (and the VM sample's serial log), printed and, with --doc,
    /// written as docs/coverage.md.
    Report(CoverageReportArgs),
    /// Draw the seeded VM sample again from OUT's records (a run stopped early
    /// writes none): OUT/sample/.
    Sample(CoverageSampleArgs),
}

#[derive(Debug, Args)]
struct CoverageSampleArgs {
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long, default_value_t = builder::coverage::DEFAULT_SAMPLE_VMLINUX)]
    sample_vmlinux: usize,
    #[arg(long, default_value_t = builder::coverage::DEFAULT_SAMPLE_MODULES)]
    sample_modules: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
struct CoverageRunArgs {
    /// The older release (package version or ABI, set up by ci/setup-kernel).
    #[arg(long, default_value = builder::coverage::DEFAULT_FROM)]
    from: String,
    /// The newer release.
    #[arg(long, default_value = builder::coverage::DEFAULT_TO)]
    to: String,
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Built vmlinux updates in the VM sample.
    #[arg(long, default_value_t = builder::coverage::DEFAULT_SAMPLE_VMLINUX)]
    sample_vmlinux: usize,
    /// Built module updates in the VM sample.
    #[arg(long, default_value_t = builder::coverage::DEFAULT_SAMPLE_MODULES)]
    sample_modules: usize,
    /// Seed of the sample (and of the --limit order).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Parallel compile jobs inside each build.
    #[arg(short = 'j', long = "jobs", default_value_t = 2)]
    jobs: usize,
    /// Patches built at a time, each lane in a prepared tree of its own (lane 0 the
    /// cache's, lane K `$KSPLICE_CACHE/coverage-lane-K`: about 3 GB each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    lanes: u16,
    /// Build at most K patches, in seeded order, stopping once the sample has its
    /// updates (the test command's small run); default every patch.
    #[arg(long, value_name = "K")]
    limit: Option<usize>,
}

#[derive(Debug, Args)]
struct CoverageReportArgs {
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The serial log of the boot that ran the coverage-sample scenario.
    #[arg(long, value_name = "FILE")]
    vm_log: Option<PathBuf>,
    /// Write the table as this markdown file (docs/coverage.md).
    #[arg(long, value_name = "FILE")]
    doc: Option<PathBuf>,
    /// The command line that produced OUT, quoted in the document.
    #[arg(long, value_name = "TEXT", default_value = "ci/coverage --full")]
    command: String,
}

struct CoverageLines {
    started: std::time::Instant,
}

impl builder::coverage::Progress for CoverageLines {
    fn note(&mut self, text: &str) {
        eprintln!(
            "coverage: [{:>5.0} s] {text}",
            self.started.elapsed().as_secs_f64()
        );
    }
    fn record(&mut self, index: usize, total: usize, r: &builder::coverage::Record) {
        let why = r
            .rules
            .first()
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        eprintln!(
            "coverage: [{:>5.0} s] {}/{} {} ({}): {}{why} ({:.0} s)",
            self.started.elapsed().as_secs_f64(),
            index + 1,
            total,
            r.file,
            r.target.as_deref().unwrap_or("-"),
            r.outcome.as_str(),
            r.seconds
        );
    }
}

fn coverage(command: CoverageCommand) -> Result<(), Failure> {
    match command {
        CoverageCommand::Run(args) => {
            let cache_max = builder::tree::evict::max_from_env(
                std::env::var_os(builder::tree::evict::MAX_VAR).as_deref(),
            )
            .map_err(|e| Failure {
                code: EXIT_ERROR,
                error: e.into(),
            })?;
            let opts = builder::coverage::CoverageOptions {
                from: args.from,
                to: args.to,
                out: args.out.clone(),
                sample_vmlinux: args.sample_vmlinux,
                sample_modules: args.sample_modules,
                seed: args.seed,
                jobs: args.jobs,
                limit: args.limit,
                lanes: usize::from(args.lanes),
                cache: cache_dir(),
                cache_max,
                etc_dir: args.out.join("etc"),
            };
            let mut progress = CoverageLines {
                started: std::time::Instant::now(),
            };
            let (corpus, records) = builder::coverage::run(&opts, &mut progress)?;
            println!("{}", builder::coverage::table(&corpus, &records, None));
            Ok(())
        }
        CoverageCommand::Sample(args) => {
            let corpus = builder::coverage::load_corpus(&args.out)?;
            let records =
                builder::coverage::load_records(&args.out.join(builder::coverage::RECORDS))?;
            let sample = builder::coverage::write_sample(
                &args.out,
                &corpus,
                &records,
                args.sample_vmlinux,
                args.sample_modules,
                args.seed,
            )?;
            for u in &sample.updates {
                println!("{} {} ({})", u.id, u.file, u.target);
            }
            Ok(())
        }
        CoverageCommand::Report(args) => {
            let corpus = builder::coverage::load_corpus(&args.out)?;
            let mut records =
                builder::coverage::load_records(&args.out.join(builder::coverage::RECORDS))?;
            records.retain(|r| corpus.has_record_of(&r.file));
            let vm = match &args.vm_log {
                Some(log) => {
                    let text =
                        std::fs::read(log).with_context(|| format!("read {}", log.display()))?;
                    Some(builder::coverage::parse_vm_log(
                        &String::from_utf8_lossy(&text),
                        builder::coverage::SCENARIO,
                    ))
                }
                None => None,
            };
            let table = builder::coverage::table(&corpus, &records, vm.as_ref());
            println!("{table}");
            if let Some(doc) = &args.doc {
                let text = builder::coverage::document(&corpus, &table, &args.command);
                std::fs::write(doc, text).with_context(|| format!("write {}", doc.display()))?;
            }
            Ok(())
        }
    }
}

// ---- repo ------------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// Create a repository in DIR: keys (new development keys for roles given none),
    /// 1.root.json and an empty signed targets, snapshot and timestamp.
    Init(RepoInitArgs),
    /// Stage packages as targets (`ksplice-<id>.tar.gz`) for the next publish.
    Add(RepoAddArgs),
    /// Sign and write new metadata: targets if the staged set changed, then snapshot
    /// and timestamp (run at least daily: the timestamp expires after 1 day).
    Publish(RepoPublishArgs),
    /// Write a new root version giving ROLE new keys, signed by the old and new root keys.
    RotateKey(RepoRotateArgs),
    /// List the targets and their custom metadata.
    Show(RepoShowArgs),
    /// Create a new ed25519 TUF key (PKCS#8 DER, mode 0600) for a role.
    Keygen(RepoKeygenArgs),
}

#[derive(Debug, Args)]
struct RepoInitArgs {
    dir: PathBuf,
    /// Root key file, kept offline (repeat for several); given again to rotate-key.
    #[arg(long = "root-key", value_name = "FILE")]
    root_keys: Vec<PathBuf>,
    #[arg(long, value_name = "N")]
    root_threshold: Option<u64>,
    /// Targets key file, kept offline (repeat for several); given again to publish.
    #[arg(long = "targets-key", value_name = "FILE")]
    targets_keys: Vec<PathBuf>,
    #[arg(long, value_name = "N")]
    targets_threshold: Option<u64>,
    /// Snapshot key file, online: its path is kept in repo.toml.
    #[arg(long, value_name = "FILE")]
    snapshot_key: Option<PathBuf>,
    /// Timestamp key file, online: its path is kept in repo.toml.
    #[arg(long, value_name = "FILE")]
    timestamp_key: Option<PathBuf>,
    /// Metadata lifetime per role, kept in repo.toml (defaults root=365d, targets=90d,
    /// snapshot=7d, timestamp=1d; units s, m, h, d, w).
    #[arg(long = "expires", value_name = "ROLE=DURATION")]
    expires: Vec<String>,
}

#[derive(Debug, Args)]
struct RepoAddArgs {
    dir: PathBuf,
    #[arg(value_name = "PKG", required = true)]
    packages: Vec<PathBuf>,
    /// Release channel of the targets.
    #[arg(long, default_value = manifests::fleet::DEFAULT_CHANNEL)]
    channel: String,
    /// Staged rollout, e.g. `205@+0h,1024@+24h,2048@+48h` (BOUND@TIME, TIME RFC 3339
    /// UTC or +<hours>h after publication).
    #[arg(long, value_name = "SPEC")]
    waves: Option<String>,
    /// Publication time, RFC 3339 UTC (default: now).
    #[arg(long, value_name = "TIME")]
    published: Option<String>,
    /// Replace an update already in the repository with other bytes.
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
struct RepoPublishArgs {
    dir: PathBuf,
    /// Targets key file (repeat for several), when the targets keys are offline.
    #[arg(long = "targets-key", value_name = "FILE")]
    targets_keys: Vec<PathBuf>,
    /// Metadata lifetime for this publish only (targets, snapshot or timestamp).
    #[arg(long = "expires", value_name = "ROLE=DURATION")]
    expires: Vec<String>,
}

#[derive(Debug, Args)]
struct RepoRotateArgs {
    dir: PathBuf,
    /// root, targets, snapshot or timestamp.
    #[arg(long)]
    role: String,
    /// The role's new key file (repeat for several): its whole new key set.
    #[arg(long = "new-key", value_name = "FILE", required = true)]
    new_keys: Vec<PathBuf>,
    /// Current root key file (repeat), when the root keys are offline.
    #[arg(long = "old-key", value_name = "FILE")]
    old_keys: Vec<PathBuf>,
    /// The role's new threshold (default: the old one, at most the number of new keys).
    #[arg(long, value_name = "N")]
    threshold: Option<u64>,
}

#[derive(Debug, Args)]
struct RepoShowArgs {
    dir: PathBuf,
    /// Print the targets as JSON (a list of `{"name", "sha256", "length", "ksplice"}`).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RepoKeygenArgs {
    /// The new key file; refused if it exists.
    file: PathBuf,
}

fn repo(command: RepoCommand) -> Result<(), Failure> {
    use builder::repo;
    match command {
        RepoCommand::Init(a) => {
            let opts = repo::InitOptions {
                root_keys: a.root_keys,
                root_threshold: a.root_threshold,
                targets_keys: a.targets_keys,
                targets_threshold: a.targets_threshold,
                snapshot_key: a.snapshot_key,
                timestamp_key: a.timestamp_key,
                expires: a.expires,
            };
            let published = repo::init(&a.dir, &opts)?;
            println!(
                "initialized {} (root 1, targets {}, snapshot {}, timestamp {})",
                a.dir.display(),
                published.targets_version.unwrap_or(1),
                published.snapshot_version,
                published.timestamp_version
            );
            println!("serve {}", a.dir.join("public").display());
        }
        RepoCommand::Add(a) => {
            let opts = repo::AddOptions {
                channel: a.channel,
                waves: a.waves,
                published: a.published,
                replace: a.replace,
            };
            for (info, staged) in repo::add(&a.dir, &a.packages, &opts)? {
                let what = match staged {
                    repo::Staged::New => "staged",
                    repo::Staged::Replaced => "replaced",
                    repo::Staged::Unchanged => "unchanged",
                    repo::Staged::Rebuilt => "unchanged (a rebuild; the published bytes are kept)",
                };
                println!("{what} {} (channel {})", info.target_name(), info.channel);
            }
        }
        RepoCommand::Publish(a) => {
            let opts = repo::PublishOptions {
                targets_keys: a.targets_keys,
                expires: a.expires,
            };
            let p = repo::publish(&a.dir, &opts)?;
            let targets = match p.targets_version {
                Some(v) => format!("targets {v} ({} target(s))", p.targets),
                None => format!("targets unchanged ({} target(s))", p.targets),
            };
            println!(
                "published {targets}, snapshot {}, timestamp {}",
                p.snapshot_version, p.timestamp_version
            );
        }
        RepoCommand::RotateKey(a) => {
            let role =
                repo::config::Role::parse(&a.role).ok_or_else(|| repo::Error::InvalidOption {
                    option: "--role",
                    value: a.role.clone(),
                    reason: "must be root, targets, snapshot or timestamp",
                })?;
            let opts = repo::RotateOptions {
                role,
                new_keys: a.new_keys,
                old_keys: a.old_keys,
                threshold: a.threshold,
            };
            let version = repo::rotate_key(&a.dir, &opts)?;
            println!("wrote {version}.root.json; run ksplice-build repo publish next");
        }
        RepoCommand::Show(a) => {
            let config = repo::show(&a.dir)?;
            if a.json {
                let json = serde_json::to_string_pretty(&config.targets)
                    .context("serializing the targets")?;
                println!("{json}");
            } else {
                for t in &config.targets {
                    let k = &t.ksplice;
                    let stream = k
                        .stream
                        .as_ref()
                        .map(|s| format!(" stream {} level {}", s.name, s.level))
                        .unwrap_or_default();
                    println!(
                        "{} channel {} published {} kernel {} {} build-id {}{stream}",
                        t.name,
                        k.channel,
                        k.published,
                        k.kernel.release,
                        k.kernel.arch,
                        k.kernel.build_id
                    );
                    if !k.cves.is_empty() {
                        println!("  cves {}", k.cves.join(" "));
                    }
                    for w in &k.waves {
                        println!("  wave seeds < {} from {}", w.seeds_below, w.start);
                    }
                }
            }
        }
        RepoCommand::Keygen(a) => {
            let key = repo::keys::generate(&a.file)?;
            println!(
                "key id {} in {}",
                hex::encode(&**key.key_id()),
                a.file.display()
            );
        }
    }
    Ok(())
}
