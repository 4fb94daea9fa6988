//! The scenario table: each scenario is data — what it needs, how its package is built, what the guest runs.
//!
//! The expected result lives with the guest script (ci/guest/scenarios/*.sh, whose
//! checks assert exact refusal texts and kernel state) and, for builds that must be
//! refused, in [`Build::Refused`].

use std::path::{Path, PathBuf};

/// A piece of the project a scenario depends on; a scenario whose piece has not landed is NOT RUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Piece {
    /// `ksplice apply|undo|view|status`.
    Client,
    /// `ksplice profile DIR`.
    Profile,
    /// `ksplice-build keygen` and `ksplice-build pack`.
    Pack,
    /// `ksplice-create`.
    Create,
    /// `ksplice-build repo` and `ksplice update`.
    Repo,
}

impl Piece {
    /// The binary and subcommand whose `--help` proves the piece exists.
    pub fn probe(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Piece::Client => ("ksplice", &["apply", "--help"]),
            Piece::Profile => ("ksplice", &["profile", "--help"]),
            Piece::Pack => ("ksplice-build", &["pack", "--help"]),
            Piece::Create => ("ksplice-create", &["--help"]),
            Piece::Repo => ("ksplice-build", &["repo", "publish", "--help"]),
        }
    }
}

/// How the host turns a scenario into something the guest can load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Build {
    /// Nothing to build.
    Nothing,
    /// The kernel's samples/livepatch/livepatch-sample.c as an external module.
    SampleModule,
    /// The sample module packed and signed by `ksplice-build pack`.
    SamplePackage(PackageVariant),
    /// `ksplice-create` from the kernel git repository: branch `pre` to the patch's branch.
    Create { patch: PathBuf },
    /// The seed's flow: `ksplice-create --diffext=new src/` with the target profile.
    CreateDiffext { patch: PathBuf },
    /// `ksplice-create` must refuse the patch, and say this.
    Refused { patch: PathBuf, reason: String },
    /// An update built from a pre tree with one function altered: run-pre must refuse it.
    RunPreMismatch {
        patch: PathBuf,
        alteration: Alteration,
    },
    /// Several `ksplice-create` updates (as [`Build::Create`]), for the guest as PKG, PKG2, ...
    CreateMany { patches: Vec<PathBuf> },
    /// The levels of one stream, built with `ksplice-create --cumulative --stream NAME
    /// --level N --replaces <lower levels>`: level N is `pre` plus the first N patches,
    /// id `<stream>-<N>`; for the guest as PKG (level 1), PKG2, ...
    Cumulative {
        stream: String,
        patches: Vec<PathBuf>,
    },
    /// The levels of [`Build::Cumulative`] published with `ksplice-build repo` as a
    /// TUF repository, in the successive states the guest's `fleet.sh` fetches
    /// (a/, wave/, b/, replay/, expired/), served to the guest over HTTP.
    Fleet {
        stream: String,
        patches: Vec<PathBuf>,
    },
    /// [`Build::Fleet`]'s repository states, for a Debian root booted from a disk
    /// under systemd with the client's `.deb` (tests/src/e2e/systemd.rs): its own
    /// boots, not the shared initramfs one.
    SystemdHost {
        stream: String,
        patches: Vec<PathBuf>,
    },
    /// What the release pipeline (`ci/pipeline`: .gitlab-ci.yml under gitlab-ci-local)
    /// published for the booted release: its TUF repository served to the guest, the
    /// package key's trust policy, and the release's report naming the levels built.
    Published(Published),
    /// The coverage tool's VM sample (`ci/coverage`, docs/coverage.md): the directory
    /// `ksplice-build coverage run` wrote (`sample.json`, the packages, `trust.toml`).
    CoverageSample(PathBuf),
}

/// The scenario that applies the coverage tool's sample ([`Build::CoverageSample`]);
/// listed when `KSPLICE_COVERAGE_SAMPLE` names the sample directory.
pub const COVERAGE: &str = "coverage-sample";
/// What the coverage sample's kernel-log checks allow (a plan value is one word: `.`
/// stands for the spaces, and it holds no glob characters): a driver's missing firmware.
pub const COVERAGE_DMESG_ALLOW: &str =
    "firmware:.failed.to.load.|firmware_class:.See.https://wiki.debian.org/Firmware.for.information";

/// `sample.json` as the coverage tool writes it (builder/src/coverage.rs `Sample`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CoverageSample {
    pub release: String,
    pub trust: String,
    pub updates: Vec<CoverageUpdate>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CoverageUpdate {
    pub id: String,
    pub file: String,
    /// `vmlinux` or the module name.
    pub target: String,
    pub package: String,
}

impl CoverageSample {
    /// Reads `DIR/sample.json`.
    pub fn load(dir: &Path) -> anyhow::Result<CoverageSample> {
        use anyhow::Context as _;
        let path = dir.join("sample.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: run ci/coverage first", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a coverage sample", path.display()))
    }

    /// Guest seconds: a TCG apply, view and undo take well under 60 s; a module file
    /// is applied twice.
    pub fn timeout(&self) -> u64 {
        let cases: u64 = self
            .updates
            .iter()
            .map(|u| if u.target == "vmlinux" { 1 } else { 2 })
            .sum();
        120 + 60 * cases
    }
}

/// The release pipeline's output for one release ([`Build::Published`]); the
/// `pipeline-update` scenario exists when `KSPLICE_PIPELINE_REPO` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The repository's `public/` tree (`$KSPLICE_PIPELINE_REPO`).
    pub public: PathBuf,
    /// `trust.toml` of the pipeline's package key (`$KSPLICE_PIPELINE_TRUST`).
    pub trust: PathBuf,
    /// The release job's `report.json` (`$KSPLICE_PIPELINE_REPORT`).
    pub report: PathBuf,
}

impl Published {
    /// From the environment `ci/pipeline` sets; `None` when `KSPLICE_PIPELINE_REPO`
    /// is unset (then no pipeline scenario is listed).
    pub fn from_env() -> Option<Published> {
        let var = |k: &str| std::env::var_os(k).map(PathBuf::from).unwrap_or_default();
        std::env::var_os("KSPLICE_PIPELINE_REPO")?;
        Some(Published {
            public: var("KSPLICE_PIPELINE_REPO"),
            trust: var("KSPLICE_PIPELINE_TRUST"),
            report: var("KSPLICE_PIPELINE_REPORT"),
        })
    }
}

/// How the pre tree of a [`Build::RunPreMismatch`] differs from the running kernel's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alteration {
    /// One immediate operand: the byte comparison refuses.
    Immediate,
    /// A call to another function of the same signature (same code size, only the
    /// relocation's symbol differs): the relocation value check refuses.
    CallTarget,
}

/// Variants of a sample package for the positive and negative client scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageVariant {
    /// Signed by the trusted test key, for the running kernel.
    Good,
    /// Signed by a key the guest's trust policy does not list.
    UnknownKey,
    /// For another kernel (different build-id and version).
    OtherKernel,
    /// A correctly signed package with one byte of its payload flipped.
    Corrupted,
}

/// What the guest runs for a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// Script in ci/guest/scenarios/.
    pub script: &'static str,
    /// Extra variables for the script (the runner adds PKG for the built file).
    pub env: Vec<(String, String)>,
    /// Kernel modules (with dependencies) the initramfs must carry.
    pub modules: Vec<String>,
}

/// One end-to-end scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    pub needs: Vec<Piece>,
    pub build: Build,
    /// `None` for build-only scenarios.
    pub guest: Option<Guest>,
}

fn guest(script: &'static str, env: &[(&str, &str)]) -> Option<Guest> {
    Some(Guest {
        script,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        modules: Vec::new(),
    })
}

/// The name of the special scenario that captures the target profile in its own boot.
pub const PROFILE: &str = "profile";

/// The `*.patch` files of the test patches directory, sorted.
pub fn patch_files(patches: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(patches)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "patch"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The scenario that applies the release pipeline's published update ([`Build::Published`]).
pub const PIPELINE: &str = "pipeline-update";

/// Every scenario, in run order, given the test patches directory.
pub fn all(patches: &Path) -> Vec<Scenario> {
    use Piece::*;
    let mut v = vec![
        Scenario {
            name: PROFILE.into(),
            needs: vec![Client, Profile],
            build: Build::Nothing,
            guest: guest("profile.sh", &[]),
        },
        Scenario {
            name: "livepatch-sample".into(),
            needs: vec![],
            build: Build::SampleModule,
            guest: guest("livepatch-sample.sh", &[]),
        },
        Scenario {
            name: "sample-apply-undo".into(),
            needs: vec![Client, Pack],
            build: Build::SamplePackage(PackageVariant::Good),
            guest: guest("sample-apply-undo.sh", &[]),
        },
        Scenario {
            name: "refuse-unknown-key".into(),
            needs: vec![Client, Pack],
            build: Build::SamplePackage(PackageVariant::UnknownKey),
            guest: guest("refuse.sh", &[("WHY", "unknown-key")]),
        },
        Scenario {
            name: "refuse-other-kernel".into(),
            needs: vec![Client, Pack],
            build: Build::SamplePackage(PackageVariant::OtherKernel),
            guest: guest("refuse.sh", &[("WHY", "other-kernel")]),
        },
        Scenario {
            name: "refuse-corrupted".into(),
            needs: vec![Client, Pack],
            build: Build::SamplePackage(PackageVariant::Corrupted),
            guest: guest("refuse.sh", &[("WHY", "corrupted")]),
        },
    ];
    for patch in patch_files(patches) {
        let stem = patch
            .file_stem()
            .expect("invariant: has an extension")
            .to_string_lossy()
            .into_owned();
        if let Some(base) = stem.strip_suffix("-FAIL") {
            v.push(Scenario {
                name: format!("build-refused-{base}"),
                needs: vec![Create],
                build: Build::Refused {
                    reason: refusal_reason(base).into(),
                    patch,
                },
                guest: None,
            });
            continue;
        }
        let test = patches.join(format!("{stem}-LOADED.test"));
        let mut g = guest("patch.sh", &[]).expect("invariant: built above");
        if test.exists() {
            g.env
                .push(("TEST".into(), format!("/ksplice/tests/{stem}-LOADED.test")));
        }
        if stem == "module" {
            // module.patch changes xfs; libcrc32c's soft dependency is crc32c.
            g.modules = vec!["xfs".into(), "crc32c_generic".into()];
        }
        v.push(Scenario {
            name: format!("patch-{stem}"),
            needs: vec![Client, Profile, Create],
            build: Build::Create {
                patch: patch.clone(),
            },
            guest: Some(g),
        });
        if stem == "cmdline-string" {
            v.push(Scenario {
                name: "seed-flow-cmdline-string".into(),
                needs: vec![Client, Profile, Create],
                build: Build::CreateDiffext {
                    patch: patch.clone(),
                },
                guest: guest(
                    "seed-flow.sh",
                    &[("TEST", "/ksplice/tests/cmdline-string-LOADED.test")],
                ),
            });
            v.push(Scenario {
                name: "refuse-run-pre-mismatch".into(),
                needs: vec![Client, Profile, Create],
                build: Build::RunPreMismatch {
                    patch: patch.clone(),
                    alteration: Alteration::Immediate,
                },
                guest: guest("refuse.sh", &[("WHY", "run-pre")]),
            });
            v.push(Scenario {
                name: "refuse-run-pre-call-target".into(),
                needs: vec![Client, Profile, Create],
                build: Build::RunPreMismatch {
                    patch,
                    alteration: Alteration::CallTarget,
                },
                guest: guest("refuse.sh", &[("WHY", "run-pre-reloc")]),
            });
        }
    }
    v.extend(behaviour_scenarios(patches));
    v
}

/// How many apply/undo cycles the soak runs (issue 9: 50). `KSPLICE_SOAK_CYCLES`
/// overrides it for measuring one cycle; the scenario's name then says so.
pub const SOAK_CYCLES: u32 = 50;

/// Guest seconds allowed per soak cycle: one measured TCG cycle of the two stacked
/// updates under load takes far less; the limit only stops a hung guest.
const SOAK_SECONDS_PER_CYCLE: u32 = 60;

/// Scenarios that check behaviour across updates (stacking, callbacks, a module loaded
/// after its update, the soak); each is added when the patches it needs exist.
fn behaviour_scenarios(patches: &Path) -> Vec<Scenario> {
    use Piece::*;
    let have = |names: &[&str]| names.iter().all(|n| patches.join(n).is_file());
    let create_many = |names: &[&str]| Build::CreateMany {
        patches: names.iter().map(|n| patches.join(n)).collect(),
    };
    let mut v = Vec::new();
    if have(&["cmdline-string.patch", "stack/cmdline-stack.patch"]) {
        v.push(Scenario {
            name: "stack-same-function".into(),
            needs: vec![Client, Profile, Create],
            build: create_many(&["cmdline-string.patch", "stack/cmdline-stack.patch"]),
            guest: guest("stack.sh", &[]),
        });
    }
    if have(&["cmdline-string.patch", "proc-version.patch"]) {
        v.push(Scenario {
            name: "cumulative-replace".into(),
            needs: vec![Client, Profile, Create],
            build: Build::Cumulative {
                stream: "main".into(),
                patches: vec![
                    patches.join("cmdline-string.patch"),
                    patches.join("proc-version.patch"),
                ],
            },
            guest: guest("cumulative.sh", &[("STREAM", "main")]),
        });
    }
    if have(&["cmdline-string.patch", "proc-version.patch"]) {
        v.push(Scenario {
            name: "fleet-update".into(),
            needs: vec![Client, Profile, Create, Repo],
            build: Build::Fleet {
                stream: "main".into(),
                patches: vec![
                    patches.join("cmdline-string.patch"),
                    patches.join("proc-version.patch"),
                ],
            },
            guest: guest("fleet.sh", &[("STREAM", "main")]),
        });
    }
    if have(&["cmdline-string.patch", "proc-version.patch"]) {
        v.push(Scenario {
            name: super::systemd::NAME.into(),
            needs: vec![Client, Profile, Create, Repo],
            build: Build::SystemdHost {
                stream: "main".into(),
                patches: vec![
                    patches.join("cmdline-string.patch"),
                    patches.join("proc-version.patch"),
                ],
            },
            // The driver is ci/guest/systemd/ksplice-e2e, run by systemd in the root.
            guest: guest("../systemd/ksplice-e2e", &[]),
        });
    }
    if let Some(published) = Published::from_env() {
        v.push(Scenario {
            name: PIPELINE.into(),
            needs: vec![Client, Repo],
            build: Build::Published(published),
            guest: guest("pipeline.sh", &[]),
        });
    }
    if let Some(dir) = std::env::var_os("KSPLICE_COVERAGE_SAMPLE").map(PathBuf::from) {
        let mut g = guest("coverage.sh", &[]).expect("invariant: built here");
        // An unreadable sample fails the scenario's build, which says why.
        if let Ok(sample) = CoverageSample::load(&dir) {
            g.modules = sample
                .updates
                .iter()
                .filter(|u| u.target != "vmlinux")
                .map(|u| u.target.clone())
                .collect();
            g.env
                .push(("SCENARIO_TIMEOUT".into(), sample.timeout().to_string()));
        }
        // A sampled driver loaded for its "loaded" case asks for firmware this guest
        // does not ship (iwlwifi pulls in cfg80211, which asks for regulatory.db): the
        // firmware loader logs that at KERN_ERR, with its pointer to the wiki. That is
        // the guest, not the update; every other message still fails the case.
        g.env
            .push(("DMESG_ALLOW".into(), COVERAGE_DMESG_ALLOW.into()));
        v.push(Scenario {
            name: COVERAGE.into(),
            needs: vec![Client],
            build: Build::CoverageSample(dir),
            guest: Some(g),
        });
    }
    if have(&["macro-callbacks.patch"]) {
        let mut g = guest("callbacks.sh", &[]).expect("invariant: built here");
        g.modules = vec!["joydev".into()];
        v.push(Scenario {
            name: "callbacks-order".into(),
            needs: vec![Client, Profile, Create],
            build: create_many(&["macro-callbacks.patch"]),
            guest: Some(g),
        });
    }
    if have(&["module.patch"]) {
        let mut g = guest("module-after.sh", &[]).expect("invariant: built here");
        // module.patch changes xfs; libcrc32c's soft dependency is crc32c.
        g.modules = vec!["xfs".into(), "crc32c_generic".into()];
        v.push(Scenario {
            name: "module-loaded-after-update".into(),
            needs: vec![Client, Profile, Create],
            build: create_many(&["module.patch"]),
            guest: Some(g),
        });
    }
    if have(&["cmdline-string.patch", "syscall.patch"]) {
        let cycles = std::env::var("KSPLICE_SOAK_CYCLES")
            .ok()
            .and_then(|c| c.parse::<u32>().ok())
            .filter(|&c| c > 0)
            .unwrap_or(SOAK_CYCLES);
        let name = if cycles == SOAK_CYCLES {
            "soak".to_string()
        } else {
            format!("soak-{cycles}-cycles")
        };
        let mut g = guest("soak.sh", &[]).expect("invariant: built here");
        g.env.push(("SOAK_CYCLES".into(), cycles.to_string()));
        g.env.push((
            "SCENARIO_TIMEOUT".into(),
            (120 + cycles * SOAK_SECONDS_PER_CYCLE).to_string(),
        ));
        v.push(Scenario {
            name,
            needs: vec![Client, Profile, Create],
            build: create_many(&["cmdline-string.patch", "syscall.patch"]),
            guest: Some(g),
        });
    }
    v
}

/// The guest time limit of a scenario in seconds (init's default, or its SCENARIO_TIMEOUT).
pub fn guest_timeout(g: &Guest) -> u64 {
    g.env
        .iter()
        .find(|(k, _)| k == "SCENARIO_TIMEOUT")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(180)
}

/// What `ksplice-create` must say when it refuses a `*-FAIL.patch` (see the patches' README).
fn refusal_reason(base: &str) -> &'static str {
    match base {
        "warn-detect" => "no functional change",
        "symvers-disagreement" => "symbol version",
        _ => "refused",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    /// Regression (coverage sample, iwlwifi's "loaded" case): cfg80211's missing
    /// regulatory.db failed the scenario. The allow list takes exactly the firmware
    /// loader's lines, as grep -vE in ci/guest/lib.sh reads it, and no livepatch error.
    #[test]
    fn the_coverage_sample_allows_a_drivers_missing_firmware_and_nothing_else() {
        assert!(!COVERAGE_DMESG_ALLOW.contains(char::is_whitespace));
        assert!(!COVERAGE_DMESG_ALLOW.contains(['*', '?', '[']));
        let lines = [
            "<3>[   63.287162] platform regulatory.0: firmware: failed to load regulatory.db (-2)",
            "<3>[   63.287452] firmware_class: See https://wiki.debian.org/Firmware for information about missing firmware",
            "<3>[    9.1] livepatch: failed to enable patch 'ksplice_cov_0004_iwl_drv'",
            "<4>[    9.2] ksplice_cov_0004_iwl_drv: run-pre: mismatch in iwl_drv_start+0x10",
            "<1>[    9.3] BUG: kernel NULL pointer dereference, address: 0000000000000000",
        ];
        let out = std::process::Command::new("grep")
            .args(["-vE", COVERAGE_DMESG_ALLOW])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(lines.join("\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let kept = String::from_utf8(out.stdout).unwrap();
        assert_eq!(kept.lines().collect::<Vec<_>>(), lines[2..]);
    }

    /// The harness reads the sample the coverage tool writes: same file, same fields,
    /// same scenario name; a module file gets two cases' time.
    #[test]
    fn the_coverage_sample_is_read_as_the_builder_writes_it() {
        use builder::coverage::{Sample, SampleUpdate, SAMPLE_FILE, SCENARIO};
        assert_eq!(SCENARIO, COVERAGE);
        assert_eq!(SAMPLE_FILE, "sample.json");
        let d = tempfile::tempdir().unwrap();
        let update = |id: &str, target: &str| SampleUpdate {
            id: id.into(),
            file: format!("{id}.c"),
            target: target.into(),
            package: format!("ksplice-{id}.tar.gz"),
        };
        let written = Sample {
            release: "6.1.0-53-amd64".into(),
            seed: 1,
            trust: "trust.toml".into(),
            updates: vec![update("a", "vmlinux"), update("b", "xfs")],
        };
        std::fs::write(
            d.path().join(SAMPLE_FILE),
            serde_json::to_vec(&written).unwrap(),
        )
        .unwrap();
        let read = CoverageSample::load(d.path()).unwrap();
        assert_eq!(read.release, "6.1.0-53-amd64");
        assert_eq!(read.updates[1].target, "xfs");
        assert_eq!(read.updates[1].package, "ksplice-b.tar.gz");
        assert_eq!(read.timeout(), 120 + 60 * 3);
        let missing = CoverageSample::load(&d.path().join("nowhere")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("run ci/coverage"),
            "{missing:#}"
        );
    }

    #[test]
    fn every_patch_gets_a_scenario() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "a.patch",
            "a-LOADED.test",
            "b.patch",
            "warn-detect-FAIL.patch",
            "README.md",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let names: Vec<String> = all(dir.path()).into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "profile",
                "livepatch-sample",
                "sample-apply-undo",
                "refuse-unknown-key",
                "refuse-other-kernel",
                "refuse-corrupted",
                "patch-a",
                "patch-b",
                "build-refused-warn-detect",
            ]
        );
        let a = all(dir.path())
            .into_iter()
            .find(|s| s.name == "patch-a")
            .unwrap();
        assert_eq!(
            a.guest.unwrap().env,
            [(
                "TEST".to_string(),
                "/ksplice/tests/a-LOADED.test".to_string()
            )]
        );
    }

    /// Issue 9: the behaviour scenarios (stacking, callbacks, module loaded after its
    /// update, soak) come with the patches they need, and the soak gets its own limit.
    #[test]
    fn behaviour_scenarios_follow_their_patches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("stack")).unwrap();
        for f in [
            "cmdline-string.patch",
            "stack/cmdline-stack.patch",
            "macro-callbacks.patch",
            "module.patch",
            "syscall.patch",
            "proc-version.patch",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let all = all(dir.path());
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        for want in [
            "stack-same-function",
            "cumulative-replace",
            "callbacks-order",
            "module-loaded-after-update",
            "systemd-host",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let cumulative = all.iter().find(|s| s.name == "cumulative-replace").unwrap();
        assert_eq!(
            cumulative.build,
            Build::Cumulative {
                stream: "main".into(),
                patches: vec![
                    dir.path().join("cmdline-string.patch"),
                    dir.path().join("proc-version.patch")
                ]
            }
        );
        let soak = all.iter().find(|s| s.name.starts_with("soak")).unwrap();
        assert_eq!(
            soak.build,
            Build::CreateMany {
                patches: vec![
                    dir.path().join("cmdline-string.patch"),
                    dir.path().join("syscall.patch")
                ]
            }
        );
        let g = soak.guest.as_ref().unwrap();
        assert!(guest_timeout(g) > 180);
        let stack = all
            .iter()
            .find(|s| s.name == "stack-same-function")
            .unwrap();
        assert_eq!(guest_timeout(stack.guest.as_ref().unwrap()), 180);
    }
}
