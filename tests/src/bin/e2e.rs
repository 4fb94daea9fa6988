//! `e2e`: run the end-to-end scenarios against Debian's kernel in QEMU and print the results table.
//!
//! Usage: `e2e [--list] [--verbose] [--demo] [--set FILE] [--profile debug|release] [SCENARIO...]`,
//! or `e2e --print-profile` / `e2e --print-repo`: make sure the cached target profile (captured
//! by `ksplice profile` in the guest) or the kernel git repository (branch `pre`, one branch per
//! test patch) exists and print its path, for the builder's tests and benchmark.
//! `--set FILE` runs the scenarios FILE names (one a line, `#` comments) and prints
//! the names of the others as excluded, so nothing is dropped silently.
//! Exit status: 0 when every selected scenario passed, 1 when any failed or did
//! not run, 2 on a usage or set-up error.
#![forbid(unsafe_code)]

use anyhow::{bail, Result};
use ksplice_tests::e2e::kgit::KernelRepo;
use ksplice_tests::e2e::profile;
use ksplice_tests::e2e::report::{Outcome, Table};
use ksplice_tests::e2e::runner::{Harness, Show};
use ksplice_tests::e2e::scenario;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("e2e: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    let mut list = false;
    let mut verbose = false;
    let mut demo = false;
    let mut set: Option<String> = None;
    let mut profile = "debug".to_string();
    let mut print: Option<String> = None;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" => list = true,
            "--verbose" | "-v" => verbose = true,
            "--demo" => demo = true,
            "--print-profile" | "--print-repo" => print = Some(a.clone()),
            "--set" => match args.next() {
                Some(f) => set = Some(f),
                None => bail!("--set needs a file"),
            },
            "--profile" => match args.next() {
                Some(p) => profile = p,
                None => bail!("--profile needs a value"),
            },
            s if s.starts_with('-') => bail!("unknown option {s}"),
            _ => names.push(a),
        }
    }
    let mut h = Harness::discover(&profile)?;
    if verbose {
        h.show = Show::All;
    }
    match print.as_deref() {
        Some("--print-profile") => {
            let (p, _) = profile::capture(&h, true)?;
            println!("{}", p.dir.display());
            return Ok(true);
        }
        Some(_) => {
            let repo =
                KernelRepo::open_or_create(&h.env.e2e_cache().join("linux.git"), &h.env.source)?;
            for patch in scenario::patch_files(&h.patches) {
                let stem = patch.file_stem().map(|s| s.to_string_lossy().into_owned());
                repo.patch_branch(&stem.unwrap_or_default(), &patch)?;
            }
            println!("{}", repo.git_dir.display());
            return Ok(true);
        }
        None => {}
    }
    if demo {
        if !verbose {
            h.show = Show::Scripts;
        }
        let ok = h.demo()?;
        if ok {
            println!("demo: the running kernel changed and changed back, without a reboot");
        } else {
            println!(
                "demo: FAILED; the guest's serial log is {}",
                h.work.join("boot-demo/serial.log").display()
            );
        }
        return Ok(ok);
    }
    let all = h.scenarios();
    if list {
        for s in &all {
            let missing: Vec<_> = s.needs.iter().filter(|p| !h.pieces.contains(p)).collect();
            println!("{:<32} needs {:?} missing {:?}", s.name, s.needs, missing);
        }
        return Ok(true);
    }
    if let Some(f) = &set {
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{f}: {e}"))?;
        let listed: Vec<String> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let excluded: Vec<&str> = all
            .iter()
            .filter(|s| !listed.contains(&s.name))
            .map(|s| s.name.as_str())
            .collect();
        if !excluded.is_empty() {
            println!("e2e: excluded by {f}: {}", excluded.join(", "));
        }
        names.extend(listed);
    }
    for n in &names {
        if !all.iter().any(|s| &s.name == n) {
            bail!("no scenario named {n} (see --list)");
        }
    }
    let selected: Vec<_> = all
        .into_iter()
        .filter(|s| names.is_empty() || names.contains(&s.name))
        .collect();
    eprintln!("e2e: landed pieces: {:?}", h.pieces);
    let start = std::time::Instant::now();
    let rows = h.run(&selected)?;
    let table = Table(&rows);
    println!("{table}");
    println!("e2e: total {:.0} s", start.elapsed().as_secs_f64());
    let ok = table.failed() == 0;
    if !ok {
        println!("e2e: guest serial logs kept in {}", h.work.display());
        for r in &rows {
            if let Outcome::Fail(_) = r.outcome {
                eprintln!("e2e: failed: {}", r.scenario);
            }
        }
    }
    Ok(ok)
}
