//! ksplice-create end to end on Debian's linux-source-6.1: diffext, git, FAIL patches, header fan-out, the .ko.
//!
//! Needs `ci/setup-kernel`; the target profile comes from `ci/create-profile`
//! (one QEMU boot, cached) and the git repository from `ci/create-gitrepo`
//! (cached). The prepared pre trees are cached under `$KSPLICE_CACHE/trees`,
//! so only the first run pays for `modules_prepare`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use builder::checkout::{GitPost, Source};
use builder::create::{create, Options};
use builder::error::Error;
use builder::summary::Summary;
use builder::target::ProfileInputs;
use ksplice_tests::e2e::env::KernelEnv;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("invariant: tests/ sits in the workspace")
        .to_path_buf()
}

fn patches_dir() -> PathBuf {
    repo_root().join("tests/patches")
}

fn kenv() -> &'static KernelEnv {
    ksplice_tests::kernel_env()
}

/// Run one of our ci/ scripts that prints a cached path.
fn ci_path(script: &str, args: &[&Path]) -> Result<PathBuf> {
    let out = Command::new(repo_root().join("ci").join(script))
        .args(args)
        .output()
        .with_context(|| format!("run ci/{script}"))?;
    if !out.status.success() {
        bail!(
            "ci/{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(text.lines().last().unwrap_or("").trim()))
}

/// The target profile (SRC/ksplice/ layout), captured once in QEMU.
fn profile() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| ci_path("create-profile", &[]).expect("target profile"))
}

fn git_repo() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        ci_path("create-gitrepo", &[patches_dir().as_path()]).expect("kernel git repository")
    })
}

/// A SRC tree for one flow: the pristine source hard-linked (cheap; every
/// copy has the same fingerprint, so they share one prepared tree), plus
/// .config and the profile. Only new files are ever written into it.
fn src_tree(flow: &str) -> Result<PathBuf> {
    let env = kenv();
    let dir = env.cache.join("create-tests").join(flow);
    if !dir.join("Makefile").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.parent().expect("invariant: has parent"))?;
        let st = Command::new("cp")
            .arg("-al")
            .arg(&env.source)
            .arg(&dir)
            .status()?;
        if !st.success() {
            bail!("cp -al {} failed", env.source.display());
        }
    }
    // The set-up marker is no source; without it every copy shares the
    // prepared tree of a plain `cp -al` of the source.
    let _ = std::fs::remove_file(dir.join(".extracted"));
    let k = dir.join("ksplice");
    std::fs::create_dir_all(&k)?;
    for f in [
        "System.map",
        "release",
        "version",
        "build-id",
        "arch",
        "Module.symvers",
    ] {
        std::fs::copy(profile().join(f), k.join(f))?;
    }
    let _ = std::fs::remove_file(dir.join(".config"));
    std::fs::copy(&env.config, dir.join(".config"))?;
    Ok(dir)
}

fn options(source: Source, profile: ProfileInputs, out: &Path) -> (Options, tempfile::TempDir) {
    let env = kenv();
    let etc = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        source,
        profile: ProfileInputs {
            target_image: Some(env.vmlinuz.clone()),
            system_root: PathBuf::from("/nonexistent"),
            ..profile
        },
        id: None,
        description: None,
        cves: vec![],
        sign_keys: vec![],
        jobs: 2,
        output: out.to_path_buf(),
        work: None,
        cache: env.cache.clone(),
        cache_max: builder::tree::evict::DEFAULT_MAX,
        etc_dir: etc.path().to_path_buf(),
        cumulative: None,
    };
    (opts, etc)
}

fn src_profile(src: &Path) -> ProfileInputs {
    ProfileInputs {
        src: Some(src.to_path_buf()),
        ..Default::default()
    }
}

/// Write FILE.new beside FILE in `src`: `patch` applied to a copy.
fn write_new_file(src: &Path, rel: &str, patch: &Path) -> Result<PathBuf> {
    let new = src.join(format!("{rel}.new"));
    let _ = std::fs::remove_file(&new);
    let st = Command::new("patch")
        .arg("-s")
        .arg("-o")
        .arg(&new)
        .arg(src.join(rel))
        .arg(patch)
        .status()?;
    if !st.success() {
        bail!("patch {} failed", patch.display());
    }
    Ok(new)
}

/// Verify the package with the trust policy create() wrote and return its manifest.
fn verified(pkg: &Path, etc: &Path) -> manifests::Manifest {
    let policy = manifests::TrustPolicy::load(&etc.join("trust.toml")).expect("trust policy");
    let m = manifests::verify_package(pkg, &policy).expect("package verifies");
    (*m).clone()
}

fn replaced(m: &manifests::Manifest) -> Vec<(String, String)> {
    m.objects
        .iter()
        .flat_map(|o| {
            o.functions
                .iter()
                .map(move |f| (o.name.clone(), f.name.clone()))
        })
        .collect()
}

fn check_identity(m: &manifests::Manifest) {
    let read = |f: &str| {
        std::fs::read_to_string(profile().join(f))
            .expect("profile file")
            .trim()
            .to_string()
    };
    assert_eq!(m.target.release, read("release"));
    assert_eq!(m.target.version, read("version"));
    assert_eq!(m.target.build_id, read("build-id"));
    assert_eq!(m.target.arch, "x86_64");
}

#[test]
fn diffext_flow_builds_a_verified_package_for_cmdline_string() -> Result<()> {
    let src = src_tree("diffext")?;
    let new = write_new_file(
        &src,
        "fs/proc/cmdline.c",
        &patches_dir().join("cmdline-string.patch"),
    )?;
    let out = tempfile::tempdir()?;
    let (opts, etc) = options(
        Source::DiffExt {
            src: src.clone(),
            ext: "new".into(),
        },
        src_profile(&src),
        out.path(),
    );
    let mut summary = Summary::default();
    let result = create(&opts, &mut summary);
    std::fs::remove_file(new)?;
    let pkg = result.map_err(|e| anyhow::anyhow!("{e}\n{summary}"))?;
    assert_eq!(pkg, out.path().join("ksplice-cmdline.tar.gz"));
    let m = verified(&pkg, etc.path());
    assert_eq!(
        replaced(&m),
        vec![("vmlinux".to_string(), "cmdline_proc_show".to_string())]
    );
    check_identity(&m);
    assert_eq!(m.module.name, "ksplice_cmdline");
    let files: BTreeSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        files,
        BTreeSet::from(["ksplice_cmdline.ko", "patch.diff", "report.json"])
    );
    Ok(())
}

#[test]
fn git_flow_builds_a_verified_package_for_cmdline_string() -> Result<()> {
    let p = profile();
    let out = tempfile::tempdir()?;
    let (mut opts, etc) = options(
        Source::Git {
            repo: git_repo().to_path_buf(),
            pre: "pre".into(),
            post: GitPost::Ref("cmdline-string".into()),
        },
        ProfileInputs {
            config: Some(p.join("config")),
            system_map: Some(p.join("System.map")),
            symvers: Some(p.join("Module.symvers")),
            release: Some(std::fs::read_to_string(p.join("release"))?.trim().into()),
            version: Some(std::fs::read_to_string(p.join("version"))?.trim().into()),
            ..Default::default()
        },
        out.path(),
    );
    opts.id = Some("cmdline-git".into());
    let mut summary = Summary::default();
    let pkg = create(&opts, &mut summary).map_err(|e| anyhow::anyhow!("{e}\n{summary}"))?;
    let m = verified(&pkg, etc.path());
    assert_eq!(
        replaced(&m),
        vec![("vmlinux".to_string(), "cmdline_proc_show".to_string())]
    );
    check_identity(&m);
    assert_eq!(summary.objects.len(), 1);
    assert_eq!(summary.objects[0].object, "fs/proc/cmdline.o");
    Ok(())
}

#[test]
fn every_fail_patch_is_refused_with_its_reason() -> Result<()> {
    let src = src_tree("patch")?;
    let mut fails: Vec<PathBuf> = std::fs::read_dir(patches_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-FAIL.patch"))
        .collect();
    fails.sort();
    assert!(
        !fails.is_empty(),
        "no *-FAIL.patch in {}",
        patches_dir().display()
    );
    let mut wrong = Vec::new();
    for patch in fails {
        let name = patch
            .file_name()
            .expect("file")
            .to_string_lossy()
            .into_owned();
        let out = tempfile::tempdir()?;
        let (opts, _etc) = options(
            Source::Patch {
                src: src.clone(),
                patch: patch.clone(),
                fingerprint: None,
            },
            src_profile(&src),
            out.path(),
        );
        let mut summary = Summary::default();
        let result = create(&opts, &mut summary);
        let ok = match (name.as_str(), &result) {
            // Only line numbers move: no functional change (exit 3).
            ("warn-detect-FAIL.patch", Err(Error::NoChange { objects })) => {
                objects == &vec!["arch/x86/kvm/x86.o".to_string()]
            }
            // Only core.o's exports change version (usb.o only calls them).
            ("symvers-disagreement-FAIL.patch", Err(Error::Refused(r))) => {
                r.len() == 1
                    && r[0].what == "drivers/base/core.o"
                    && r[0].reason.starts_with("exported symbol versions change (")
            }
            (_, Err(Error::Refused(r))) => !r.is_empty(),
            _ => false,
        };
        if !ok {
            wrong.push(format!(
                "{name}: {:?}\n{summary}",
                result.map_err(|e| e.to_string())
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as expected:\n{}",
        wrong.join("\n")
    );
    Ok(())
}

#[test]
fn header_change_rebuilds_every_object_that_includes_it() -> Result<()> {
    let src = src_tree("header")?;
    let header = "fs/sysfs/sysfs.h";
    // A comment at the end moves no line of code: every dependent object is
    // compiled and compared, and none changes.
    let mut text = std::fs::read_to_string(src.join(header))?;
    text.push_str("/* ksplice test: header fan-out */\n");
    let new = src.join(format!("{header}.new"));
    std::fs::write(&new, text)?;
    let out = tempfile::tempdir()?;
    let (opts, _etc) = options(
        Source::DiffExt {
            src: src.clone(),
            ext: "new".into(),
        },
        src_profile(&src),
        out.path(),
    );
    let mut summary = Summary::default();
    let result = create(&opts, &mut summary);
    std::fs::remove_file(new)?;
    let want: BTreeSet<String> = ["dir", "file", "group", "mount", "symlink"]
        .iter()
        .map(|o| format!("fs/sysfs/{o}.o"))
        .collect();
    match result {
        Err(Error::NoChange { objects }) => {
            assert_eq!(
                objects.into_iter().collect::<BTreeSet<_>>(),
                want,
                "{summary}"
            );
        }
        other => panic!(
            "expected no functional change, got {:?}\n{summary}",
            other.map_err(|e| e.to_string())
        ),
    }
    // kbuild's own dependency lists agree that each object includes the header.
    let trees = std::fs::read_dir(kenv().cache.join("trees"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.join("fs/sysfs/.dir.o.cmd").exists() && !p.to_string_lossy().ends_with(".post")
        })
        .collect::<Vec<_>>();
    assert!(!trees.is_empty());
    for obj in &want {
        let name = Path::new(obj)
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let cmd = trees
            .iter()
            .map(|t| t.join("fs/sysfs").join(format!(".{name}.cmd")))
            .find(|p| p.exists())
            .expect("pre .cmd");
        let deps = std::fs::read_to_string(cmd)?;
        assert!(deps.contains(header), "{obj} does not list {header}");
    }
    Ok(())
}

#[test]
fn produced_module_has_livepatch_metadata_and_the_target_vermagic() -> Result<()> {
    let src = src_tree("module")?;
    let new = write_new_file(
        &src,
        "fs/proc/cmdline.c",
        &patches_dir().join("cmdline-string.patch"),
    )?;
    let out = tempfile::tempdir()?;
    let (mut opts, _etc) = options(
        Source::DiffExt {
            src: src.clone(),
            ext: "new".into(),
        },
        src_profile(&src),
        out.path(),
    );
    let work = tempfile::tempdir()?;
    opts.work = Some(work.path().to_path_buf());
    opts.id = Some("cmdline-ko".into());
    let mut summary = Summary::default();
    let result = create(&opts, &mut summary);
    std::fs::remove_file(new)?;
    result.map_err(|e| anyhow::anyhow!("{e}\n{summary}"))?;
    let ko = work.path().join("module/ksplice_cmdline_ko.ko");
    let modinfo = |field: &str| -> Result<String> {
        let o = Command::new("modinfo")
            .arg("-F")
            .arg(field)
            .arg(&ko)
            .output()?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    assert_eq!(modinfo("livepatch")?, "Y");
    let release = std::fs::read_to_string(profile().join("release"))?;
    let vermagic = modinfo("vermagic")?;
    assert!(
        vermagic.starts_with(&format!(
            "{} SMP preempt mod_unload modversions",
            release.trim()
        )),
        "vermagic {vermagic:?}"
    );
    let bytes = std::fs::read(&ko)?;
    let file = object::File::parse(&*bytes)?;
    use object::{Object, ObjectSection, ObjectSymbol};
    let klp_rela: Vec<String> = file
        .sections()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|n| n.starts_with(".klp.rela.vmlinux."))
        .collect();
    assert!(!klp_rela.is_empty(), "no .klp.rela.vmlinux.* section");
    let klp_syms: Vec<String> = file
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|n| n.starts_with(".klp.sym.vmlinux."))
        .collect();
    assert!(
        klp_syms
            .iter()
            .any(|s| s == ".klp.sym.vmlinux.saved_command_line,0"),
        "{klp_syms:?}"
    );
    Ok(())
}

#[test]
fn every_unpatchable_change_is_refused_in_one_run() -> Result<()> {
    let src = src_tree("refusals")?;
    let files = [
        "lib/string.c",
        "arch/x86/entry/entry_64.S",
        "fs/proc/Makefile",
        // obj-$(CONFIG_X86_32): kbuild does not build it for this config.
        "arch/x86/kernel/doublefault_32.c",
    ];
    for f in files {
        let mut text = std::fs::read_to_string(src.join(f))?;
        text.push('\n');
        std::fs::write(src.join(format!("{f}.new")), text)?;
    }
    let out = tempfile::tempdir()?;
    let (opts, _etc) = options(
        Source::DiffExt {
            src: src.clone(),
            ext: "new".into(),
        },
        src_profile(&src),
        out.path(),
    );
    let mut summary = Summary::default();
    let result = create(&opts, &mut summary);
    for f in files {
        std::fs::remove_file(src.join(format!("{f}.new")))?;
    }
    let Err(Error::Refused(refusals)) = result else {
        panic!(
            "expected a refusal, got {:?}",
            result.map_err(|e| e.to_string())
        );
    };
    let got: BTreeSet<(String, String)> = refusals
        .iter()
        .map(|r| {
            (
                r.what.clone(),
                r.reason.split([' ', ';']).next().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("lib/string.c", "lib/"),
        ("arch/x86/entry/entry_64.S", "assembly"),
        ("fs/proc/Makefile", "build"),
        ("arch/x86/kernel/doublefault_32.c", "not"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want, "{summary}");
    Ok(())
}

/// Issue 12: a removed `EXPORT_SYMBOL` was refused ("exported symbol versions change
/// (proc_create_mount_point 0x... -> none)") although the running kernel simply keeps
/// exporting it: the update never edits the kernel's export table, and the function itself did
/// not change. An added or re-versioned export stays refused (differ, symver check).
#[test]
fn removed_export_is_kept_by_the_running_kernel() -> Result<()> {
    let src = src_tree("exports")?;
    let f = "fs/proc/generic.c";
    let text = std::fs::read_to_string(src.join(f))?;
    let line = "EXPORT_SYMBOL(proc_create_mount_point);\n";
    assert_eq!(
        text.matches(line).count(),
        1,
        "{f} no longer has the export"
    );
    std::fs::write(src.join(format!("{f}.new")), text.replacen(line, "", 1))?;
    let out = tempfile::tempdir()?;
    let (opts, _etc) = options(
        Source::DiffExt {
            src: src.clone(),
            ext: "new".into(),
        },
        src_profile(&src),
        out.path(),
    );
    let mut summary = Summary::default();
    let result = create(&opts, &mut summary);
    std::fs::remove_file(src.join(format!("{f}.new")))?;
    match result {
        Err(Error::NoChange { objects }) => {
            assert_eq!(objects, vec!["fs/proc/generic.o".to_string()], "{summary}")
        }
        other => panic!(
            "expected no functional change, got {:?}\n{summary}",
            other.map_err(|e| e.to_string())
        ),
    }
    Ok(())
}

/// Issue 12: amdgpu's display code is compiled by amdgpu's Makefile as
/// `drivers/gpu/drm/amd/amdgpu/../display/...` (its own directories hold Makefile
/// fragments only), and was refused as "not built by the target's config". It is found
/// under the name kbuild gives it, built as part of the amdgpu module, and diffed.
#[test]
fn amdgpu_display_code_built_through_dot_dot_is_found() -> Result<()> {
    let src = src_tree("dotdot")?;
    let f = "drivers/gpu/drm/amd/display/dc/basics/conversion.c";
    let text = std::fs::read_to_string(src.join(f))?;
    let from = "\tgcd = find_gcd(num, den);\n";
    assert_eq!(text.matches(from).count(), 1, "{f} changed upstream");
    let post = text.replacen(from, "\tgcd = den ? find_gcd(num, den) : 1;\n", 1);
    std::fs::write(src.join(format!("{f}.new")), post)?;
    let out = tempfile::tempdir()?;
    let (opts, _etc) = options(
        Source::DiffExt {
            src: src.clone(),
            ext: "new".into(),
        },
        src_profile(&src),
        out.path(),
    );
    let mut summary = Summary::default();
    let result = create(&opts, &mut summary);
    std::fs::remove_file(src.join(format!("{f}.new")))?;
    let objects: Vec<(String, String, Vec<String>)> = summary
        .objects
        .iter()
        .map(|o| (o.object.clone(), o.target.clone(), o.changed.clone()))
        .collect();
    assert_eq!(
        objects,
        vec![(
            "drivers/gpu/drm/amd/amdgpu/../display/dc/basics/conversion.o".to_string(),
            "amdgpu".to_string(),
            vec!["reduce_fraction".to_string()]
        )],
        "{summary}\n{:?}",
        result.map_err(|e| e.to_string())
    );
    Ok(())
}

/// Regression (issue 9 §5): a mistyped flag exited 2, which the exit-code
/// table reserves for "refused"; it is a usage error (1). `--help` is 0.
#[test]
fn mistyped_flag_is_a_usage_error_not_a_refusal() {
    let bin = ksplice_tests::cargo_bin("builder", "ksplice-create");
    let out = Command::new(&bin)
        .args(["--diffextt=new", "src/"])
        .output()
        .expect("run ksplice-create");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--diffextt"));
    let help = Command::new(&bin).arg("--help").output().expect("run");
    assert_eq!(help.status.code(), Some(0));
}
