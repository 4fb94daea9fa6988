//! `ksplice-build release` on Debian's candidate kernel: every fix of a fixes
//! directory becomes a level of the release's stream, or is reported with its reason
//! while the others still build (issue 11; docs/pipeline.md).
//!
//! Needs `ci/setup-kernel`. The prepared tree is the one the release pipeline's
//! candidate job uses (the pristine source, its config and release), so this test
//! warms it for `ci/pipeline`.

use std::path::Path;

use anyhow::{Context, Result};
use builder::release::{self, Outcome, ReleaseOptions};

struct Quiet;

impl release::Progress for Quiet {
    fn fix(&mut self, _: usize, _: usize, _: &release::Fix) {}
    fn stage_hook(&self) -> builder::summary::StageHook {
        builder::summary::StageHook::new(|_| {})
    }
    fn done(&mut self, _: &release::FixReport) {}
}

/// `<id>.toml` and, beside it, `<id>.patch`: a copy of tests/patches/`patch`.
fn fix(dir: &Path, id: &str, order: u32, patch: &str) -> Result<()> {
    let patches = Path::new(env!("CARGO_MANIFEST_DIR")).join("patches");
    std::fs::copy(patches.join(patch), dir.join(format!("{id}.patch"))).context("copy patch")?;
    std::fs::write(
        dir.join(format!("{id}.toml")),
        format!("order = {order}\ndescription = \"{id}\"\n"),
    )
    .context("write fix")
}

#[test]
fn every_fix_is_built_or_reported_and_the_stream_skips_the_ones_that_fail() -> Result<()> {
    let env = ksplice_tests::kernel_env();
    let dir = tempfile::tempdir()?;
    let fixes = dir.path().join("fixes");
    std::fs::create_dir_all(&fixes)?;
    fix(&fixes, "cmdline-string", 10, "cmdline-string.patch")?;
    // Refused by the builder: a changed exported symbol's version.
    fix(
        &fixes,
        "symvers-change",
        20,
        "symvers-disagreement-FAIL.patch",
    )?;
    // The same change again: on top of level 1 it no longer applies.
    fix(&fixes, "cmdline-again", 30, "cmdline-string.patch")?;
    fix(&fixes, "proc-version", 40, "proc-version.patch")?;
    let out = dir.path().join("out");
    // An earlier run's package in a reused output directory: removed, so the
    // directory holds what the report names. Other files stay.
    std::fs::create_dir_all(out.join("packages"))?;
    std::fs::write(out.join("packages/ksplice-main-old-1.tar.gz"), b"stale")?;
    std::fs::write(out.join("packages/NOTES"), b"mine")?;
    let opts = ReleaseOptions {
        kernel: env.version.clone(),
        fixes,
        out: out.clone(),
        stream: "main".into(),
        sign_keys: vec![],
        jobs: 2,
        cache: env.cache.clone(),
        cache_max: builder::tree::evict::DEFAULT_MAX,
        etc_dir: dir.path().join("etc"),
    };
    let report = release::release(&opts, &mut Quiet)?;

    let outcome = |id: &str| {
        report
            .fixes
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("{id} is in the report"))
    };
    let l1 = release::level_id("main", &env.release, 1);
    let l2 = release::level_id("main", &env.release, 2);
    assert_eq!(report.levels, [l1.clone(), l2.clone()]);
    assert_eq!(report.kernel.release, env.release);
    assert_eq!(outcome("cmdline-string").outcome, Outcome::Built);
    assert_eq!(outcome("cmdline-string").level, Some(1));
    let refused = outcome("symvers-change");
    assert_eq!(refused.outcome, Outcome::Refused);
    assert!(
        refused
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("symbol version"),
        "{refused:?}"
    );
    let again = outcome("cmdline-again");
    assert_eq!(again.outcome, Outcome::NotApplicable);
    assert!(
        again
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("does not apply"),
        "{again:?}"
    );
    let pv = outcome("proc-version");
    assert_eq!((pv.outcome, pv.level), (Outcome::Built, Some(2)));
    assert!(pv.stages.contains_key("compile"), "{pv:?}");

    // Level 2 holds both built fixes and replaces level 1; the report on disk is
    // the one returned.
    let pkg = out.join(pv.package.as_deref().expect("a package"));
    let policy = manifests::TrustPolicy::load(&dir.path().join("etc/trust.toml"))?;
    let manifest = manifests::verify_package(&pkg, &policy)?;
    let stream = manifest.stream.as_ref().expect("a cumulative level");
    assert_eq!((stream.level, stream.replaces.clone()), (2, vec![l1]));
    assert!(manifest.description.contains("cmdline-string"));
    assert!(manifest.description.contains("proc-version"));
    assert!(!manifest.description.contains("cmdline-again"));
    assert_eq!(manifest.id, l2);
    let on_disk: release::Report =
        serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;
    assert_eq!(on_disk.levels, report.levels);
    let mut listed: Vec<String> = std::fs::read_dir(out.join("packages"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    listed.sort();
    let mut named: Vec<String> = report
        .fixes
        .iter()
        .filter_map(|f| f.package.as_deref())
        .map(|p| p.trim_start_matches("packages/").to_owned())
        .chain(["NOTES".to_owned()])
        .collect();
    named.sort();
    assert_eq!(listed, named);
    Ok(())
}
