//! The TUF repository `ksplice-build repo` writes: its layout and modes, what tough's
//! client and python-tuf's reference client read from it, refusals that change
//! nothing, key rotation, expiry, and (ignored) the publish cost of 1,000 targets.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use manifests::fleet::{self, TargetInfo};
use manifests::{Manifest, SigningKey};
use tough::{ExpirationEnforcement, FilesystemTransport, IntoVec, RepositoryLoader, TargetName};
use url::Url;

fn ksplice_build() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| ksplice_tests::cargo_bin("builder", "ksplice-build"))
}

fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(ksplice_build())
        .args(args)
        .output()
        .expect("run ksplice-build")
}

/// Runs and asserts success; returns stdout.
fn ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "ksplice-build {:?} failed ({:?}): {}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs, asserts exit code `code`; returns stderr.
fn fails<S: AsRef<OsStr>>(args: &[S], code: i32) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    stderr
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

struct Fx {
    tmp: tempfile::TempDir,
    key: SigningKey,
}

impl Fx {
    fn new() -> Fx {
        Fx {
            tmp: tempfile::tempdir().expect("tempdir"),
            key: SigningKey::from_seed(&[7; 32]),
        }
    }

    fn repo(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A signed package for the example kernel, its module file `payload`.
    fn package_with(&self, id: &str, payload: &str, edit: impl FnOnce(&mut Manifest)) -> PathBuf {
        let mut m = manifests::manifest::example(id);
        edit(&mut m);
        let ko = self.path(&format!("{id}.ko.src"));
        fs::write(&ko, payload).expect("ko");
        let dir = self
            .tmp
            .path()
            .join("pkgs")
            .join(format!("{id}-{}", payload.len()));
        fs::create_dir_all(&dir).expect("pkg dir");
        manifests::write_package(&dir, &m, &[&self.key], &[(m.module.file.clone(), ko)])
            .expect("package")
    }

    fn package(&self, id: &str) -> PathBuf {
        self.package_with(id, &format!("fake module {id}\n"), |_| {})
    }

    fn init(&self, extra: &[&str]) {
        let repo = self.repo();
        let mut args: Vec<&OsStr> = vec!["repo".as_ref(), "init".as_ref(), repo.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        ok(&args);
    }
}

/// Loads the repository with tough's client from `1.root.json` over file:// URLs.
fn load(
    repo: &Path,
    enforcement: ExpirationEnforcement,
) -> Result<tough::Repository, Box<tough::error::Error>> {
    let root = fs::read(repo.join("public/metadata/1.root.json")).expect("1.root.json");
    let url = |d: &str| Url::from_directory_path(repo.join("public").join(d)).expect("file url");
    runtime()
        .block_on(
            RepositoryLoader::new(&root, url("metadata"), url("targets"))
                .transport(FilesystemTransport)
                .expiration_enforcement(enforcement)
                .load(),
        )
        .map_err(Box::new)
}

fn load_ok(repo: &Path) -> tough::Repository {
    load(repo, ExpirationEnforcement::Safe).expect("tough loads the repository")
}

/// A target's bytes as tough downloads and checks them (length and sha256).
fn read_target(repo: &tough::Repository, name: &str) -> Vec<u8> {
    let name = TargetName::new(name).expect("target name");
    runtime().block_on(async {
        repo.read_target(&name)
            .await
            .expect("read target")
            .expect("target listed")
            .into_vec()
            .await
            .expect("target bytes")
    })
}

fn versions(repo: &tough::Repository) -> [u64; 4] {
    [
        repo.root().signed.version.get(),
        repo.targets().signed.version.get(),
        repo.snapshot().signed.version.get(),
        repo.timestamp().signed.version.get(),
    ]
}

/// Every path under `dir` with its mode and content (None for directories).
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                stack.push(path.clone());
                out.insert(path, (mode, None));
            } else {
                out.insert(path.clone(), (mode, Some(fs::read(&path).expect("read"))));
            }
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// A well-formed, signed package whose manifest breaks a rule (a malformed CVE).
fn invalid_manifest_package(key: &SigningKey) -> Vec<u8> {
    use crate::package::{file, gz, tar};
    let ko = b"module";
    let mut m = manifests::manifest::example("fix-3");
    m.cves = vec!["cve-1".into()];
    m.files = vec![manifests::PayloadFile {
        path: m.module.file.clone(),
        len: ko.len() as u64,
        sha256: manifests::sha256_hex(ko),
    }];
    let bytes = m.to_toml().expect("toml").into_bytes();
    let sig = manifests::sign_manifest(&bytes, &[key]).expect("sign");
    gz(&tar(&[
        file("manifest.toml", &bytes),
        file("manifest.sig", &sig),
        file(&m.module.file, ko),
    ]))
}

#[test]
fn repo_init_add_publish_writes_the_layout_tough_reads() {
    let fx = Fx::new();
    let repo = fx.repo();
    fx.init(&[]);
    let pkg = fx.package_with("fix-1", "module bytes\n", |m| {
        m.stream = Some(manifests::Stream {
            name: "main".into(),
            level: 1,
            replaces: vec![],
        });
    });
    let published = "2026-11-29T10:00:00Z";
    let stdout = ok(&[
        "repo".as_ref(),
        "add".as_ref(),
        repo.as_os_str(),
        pkg.as_os_str(),
        "--channel".as_ref(),
        "testing".as_ref(),
        "--waves".as_ref(),
        "100@+0h,2048@+24h".as_ref(),
        "--published".as_ref(),
        published.as_ref(),
    ]);
    assert_eq!(stdout, "staged ksplice-fix-1.tar.gz (channel testing)\n");
    ok(&["repo".as_ref(), "publish".as_ref(), repo.as_os_str()]);

    // The layout of docs/fleet.md: consistent snapshots, content-addressed targets.
    let bytes = fs::read(&pkg).expect("package bytes");
    let sha = manifests::sha256_hex(&bytes);
    let md = repo.join("public/metadata");
    for f in [
        "1.root.json",
        "timestamp.json",
        "2.snapshot.json",
        "2.targets.json",
    ] {
        assert!(md.join(f).is_file(), "{f} missing");
        assert_eq!(mode(&md.join(f)), 0o644, "{f}");
    }
    let targets_dir = repo.join("public/targets");
    let names: Vec<String> = fs::read_dir(&targets_dir)
        .expect("targets dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![format!("{sha}.ksplice-fix-1.tar.gz")]);
    assert!(repo.join("repo.toml").is_file());
    let public_names: Vec<_> = fs::read_dir(repo.join("public"))
        .expect("public")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        public_names.len(),
        2,
        "only metadata/ and targets/ are served"
    );

    // tough's client verifies the chain and the target; custom round-trips.
    let tuf = load_ok(&repo);
    assert_eq!(versions(&tuf), [1, 2, 2, 2]);
    assert!(tuf.root().signed.consistent_snapshot);
    let (name, target) = tuf.all_targets().next().expect("one target");
    assert_eq!(name.raw(), "ksplice-fix-1.tar.gz");
    assert_eq!(tuf.all_targets().count(), 1);
    assert_eq!(target.custom.len(), 1, "custom holds only the ksplice key");
    let info: TargetInfo =
        serde_json::from_value(target.custom[fleet::CUSTOM_KEY].clone()).expect("TargetInfo");
    let manifest = manifests::inspect_package_bytes(&bytes)
        .expect("inspect")
        .manifest;
    let at = fleet::parse_utc("t", published).expect("time");
    let expected = TargetInfo::from_manifest(
        &manifest,
        "testing",
        at,
        fleet::parse_waves("100@+0h,2048@+24h", at).expect("waves"),
    )
    .expect("info");
    assert_eq!(info, expected);
    assert_eq!(info.stream.as_ref().map(|s| s.level), Some(1));
    assert_eq!(read_target(&tuf, "ksplice-fix-1.tar.gz"), bytes);

    // The package's own signature is untouched: a host's trust policy still verifies it.
    let policy = manifests::TrustPolicy::new(vec![fx.key.public()], 1).expect("policy");
    manifests::verify_package_bytes(&read_target(&tuf, "ksplice-fix-1.tar.gz"), &policy)
        .expect("inner signature");

    // `repo show` lists it.
    let shown = ok(&[
        "repo".as_ref(),
        "show".as_ref(),
        repo.as_os_str(),
        "--json".as_ref(),
    ]);
    let listed: serde_json::Value = serde_json::from_str(&shown).expect("show json");
    assert_eq!(listed[0]["name"], "ksplice-fix-1.tar.gz");
    assert_eq!(listed[0]["sha256"], sha.as_str());
}

#[test]
fn repo_dev_keys_are_0600_in_a_0700_dir_outside_public() {
    let fx = Fx::new();
    fx.init(&[]);
    let keys = fx.repo().join("keys");
    assert_eq!(mode(&keys), 0o700);
    let mut names: Vec<String> = fs::read_dir(&keys)
        .expect("keys")
        .map(|e| {
            let e = e.expect("entry");
            assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
            e.file_name().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["root.pk8", "snapshot.pk8", "targets.pk8", "timestamp.pk8"]
    );
    // No private key is reachable from public/: each key's bytes appear nowhere there.
    let public = tree(&fx.repo().join("public"));
    for name in &names {
        let key = fs::read(keys.join(name)).expect("key");
        assert!(public
            .values()
            .filter_map(|(_, c)| c.as_ref())
            .all(|c| !c.windows(key.len()).any(|w| w == key.as_slice())));
    }
    // The client can refresh right after init: an empty, signed repository.
    let tuf = load_ok(&fx.repo());
    assert_eq!(versions(&tuf), [1, 1, 1, 1]);
    assert_eq!(tuf.all_targets().count(), 0);
    // A second init over it is refused.
    fails(&["repo", "init", fx.repo().to_str().expect("utf8")], 2);
}

#[test]
fn repo_second_publish_bumps_snapshot_and_timestamp_and_targets_only_on_change() {
    let fx = Fx::new();
    let repo = fx.repo();
    fx.init(&[]);
    let r = repo.as_os_str();
    ok(&[
        "repo".as_ref(),
        "add".as_ref(),
        r,
        fx.package("fix-1").as_os_str(),
    ]);
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    assert_eq!(versions(&load_ok(&repo)), [1, 2, 2, 2]);
    let out = ok(&["repo".as_ref(), "publish".as_ref(), r]);
    assert!(out.contains("targets unchanged"), "{out}");
    assert_eq!(versions(&load_ok(&repo)), [1, 2, 3, 3]);
    // Re-adding the same bytes changes nothing.
    let out = ok(&[
        "repo".as_ref(),
        "add".as_ref(),
        r,
        fx.package("fix-1").as_os_str(),
    ]);
    assert_eq!(out, "unchanged ksplice-fix-1.tar.gz (channel stable)\n");
    ok(&[
        "repo".as_ref(),
        "add".as_ref(),
        r,
        fx.package("fix-2").as_os_str(),
    ]);
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    let tuf = load_ok(&repo);
    assert_eq!(versions(&tuf), [1, 3, 4, 4]);
    assert_eq!(tuf.all_targets().count(), 2);
    // Old consistent snapshots stay for clients mid-refresh.
    assert!(repo.join("public/metadata/2.targets.json").is_file());
}

#[test]
fn repo_invalid_package_is_refused_and_changes_nothing() {
    let fx = Fx::new();
    let repo = fx.repo();
    fx.init(&[]);
    let r = repo.as_os_str();
    ok(&[
        "repo".as_ref(),
        "add".as_ref(),
        r,
        fx.package("fix-1").as_os_str(),
    ]);
    let before = tree(&repo);

    // A flipped byte in the compressed stream (the gzip CRC catches it).
    let good = fx.package("fix-2");
    let mut bytes = fs::read(&good).expect("package");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let corrupt = fx.path("ksplice-corrupt.tar.gz");
    fs::write(&corrupt, &bytes).expect("write");
    let err = fails(
        &["repo".as_ref(), "add".as_ref(), r, corrupt.as_os_str()],
        2,
    );
    assert!(err.contains("not a valid ksplice package"), "{err}");
    // Not a package at all; a good package given with it is not staged either.
    let junk = fx.path("junk.tar.gz");
    fs::write(&junk, b"not a package").expect("write");
    fails(
        &[
            "repo".as_ref(),
            "add".as_ref(),
            r,
            good.as_os_str(),
            junk.as_os_str(),
        ],
        2,
    );
    // A manifest that does not validate, signed anyway (write_package would refuse it).
    let bad_manifest = fx.path("ksplice-fix-3.tar.gz");
    fs::write(&bad_manifest, invalid_manifest_package(&fx.key)).expect("write");
    let err = fails(
        &["repo".as_ref(), "add".as_ref(), r, bad_manifest.as_os_str()],
        2,
    );
    assert!(err.contains("not a valid ksplice package"), "{err}");
    // Bad options.
    fails(
        &[
            "repo".as_ref(),
            "add".as_ref(),
            r,
            good.as_os_str(),
            "--channel".as_ref(),
            "Bad!".as_ref(),
        ],
        2,
    );
    fails(
        &[
            "repo".as_ref(),
            "add".as_ref(),
            r,
            good.as_os_str(),
            "--waves".as_ref(),
            "0@+0h".as_ref(),
        ],
        2,
    );
    // The same id twice in one call.
    let other = fx.package_with("fix-2", "other bytes\n", |_| {});
    fails(
        &[
            "repo".as_ref(),
            "add".as_ref(),
            r,
            good.as_os_str(),
            other.as_os_str(),
        ],
        2,
    );
    // Same id, other bytes, without --replace.
    let fix1_other = fx.package_with("fix-1", "rebuilt\n", |_| {});
    let err = fails(
        &["repo".as_ref(), "add".as_ref(), r, fix1_other.as_os_str()],
        2,
    );
    assert!(err.contains("--replace"), "{err}");

    assert_eq!(tree(&repo), before, "a refused add changed the repository");

    // With --replace it goes through, and publish serves the new bytes.
    let out = ok(&[
        "repo".as_ref(),
        "add".as_ref(),
        r,
        fix1_other.as_os_str(),
        "--replace".as_ref(),
    ]);
    assert_eq!(out, "replaced ksplice-fix-1.tar.gz (channel stable)\n");
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    let tuf = load_ok(&repo);
    assert_eq!(
        read_target(&tuf, "ksplice-fix-1.tar.gz"),
        fs::read(&fix1_other).expect("bytes")
    );
}

/// A package of `id` built from `source` (its patch.diff), the module bytes
/// and creation time `build` of one particular build.
fn level_package(fx: &Fx, id: &str, source: &str, build: &str) -> PathBuf {
    let mut m = manifests::manifest::example(id);
    m.created = format!("2026-11-29T0{}:00:00Z", build.len() % 10);
    let dir = fx.path(&format!("level-{id}-{build}"));
    fs::create_dir_all(&dir).expect("dir");
    let ko = dir.join("module.ko.src");
    fs::write(&ko, format!("module built by {build}\n")).expect("ko");
    let diff = dir.join("patch.diff.src");
    fs::write(&diff, source).expect("diff");
    let out = dir.join("out");
    fs::create_dir_all(&out).expect("out");
    let payload = [
        (m.module.file.clone(), ko),
        ("patch.diff".to_string(), diff),
    ];
    manifests::write_package(&out, &m, &[&fx.key], &payload).expect("package")
}

#[test]
fn repo_rebuild_of_a_published_level_keeps_the_published_bytes() {
    let fx = Fx::new();
    fx.init(&[]);
    let repo = fx.repo();
    let r = repo.as_os_str();
    let first = level_package(
        &fx,
        "main-6_1_0-57-amd64-1",
        "--- a/x.c\n+++ b/x.c\n",
        "run-1",
    );
    ok(&["repo".as_ref(), "add".as_ref(), r, first.as_os_str()]);
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    let before = tree(&repo);

    // The pipeline runs again with the same fixes: other bytes, same source.
    let again = level_package(
        &fx,
        "main-6_1_0-57-amd64-1",
        "--- a/x.c\n+++ b/x.c\n",
        "run-two",
    );
    assert_ne!(fs::read(&first).expect("a"), fs::read(&again).expect("b"));
    let out = ok(&["repo".as_ref(), "add".as_ref(), r, again.as_os_str()]);
    assert_eq!(
        out,
        "unchanged (a rebuild; the published bytes are kept) ksplice-main-6_1_0-57-amd64-1.tar.gz (channel stable)\n"
    );
    assert_eq!(tree(&repo), before, "a rebuild changed the repository");
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    let before = tree(&repo);
    let tuf = load_ok(&repo);
    assert_eq!(
        read_target(&tuf, "ksplice-main-6_1_0-57-amd64-1.tar.gz"),
        fs::read(&first).expect("bytes")
    );

    // Another source change under the same id is a conflict, as before.
    let changed = level_package(
        &fx,
        "main-6_1_0-57-amd64-1",
        "--- a/y.c\n+++ b/y.c\n",
        "run-3",
    );
    let err = fails(
        &["repo".as_ref(), "add".as_ref(), r, changed.as_os_str()],
        2,
    );
    assert!(err.contains("--replace"), "{err}");
    assert_eq!(tree(&repo), before, "a refused add changed the repository");
}

#[test]
fn repo_commands_outside_a_repository_are_refused_without_writing() {
    let fx = Fx::new();
    let empty = fx.path("empty");
    fs::create_dir(&empty).expect("dir");
    let e = empty.as_os_str();
    fails(&["repo".as_ref(), "publish".as_ref(), e], 2);
    fails(
        &[
            "repo".as_ref(),
            "add".as_ref(),
            e,
            fx.package("fix-1").as_os_str(),
        ],
        2,
    );
    assert_eq!(fs::read_dir(&empty).expect("dir").count(), 0);
}

#[test]
fn repo_offline_targets_key_is_needed_only_when_targets_change() {
    let fx = Fx::new();
    let repo = fx.repo();
    let (root_key, targets_key) = (fx.path("root.pk8"), fx.path("targets.pk8"));
    ok(&["repo".as_ref(), "keygen".as_ref(), root_key.as_os_str()]);
    ok(&["repo".as_ref(), "keygen".as_ref(), targets_key.as_os_str()]);
    assert_eq!(mode(&root_key), 0o600);
    // keygen never replaces a key.
    fails(
        &["repo".as_ref(), "keygen".as_ref(), root_key.as_os_str()],
        2,
    );
    let (rk, tk) = (
        root_key.to_str().expect("utf8"),
        targets_key.to_str().expect("utf8"),
    );
    fx.init(&["--root-key", rk, "--targets-key", tk]);
    let config = fs::read_to_string(repo.join("repo.toml")).expect("repo.toml");
    assert!(
        !config.contains("root.pk8") && !config.contains("targets.pk8"),
        "{config}"
    );
    assert!(!repo.join("keys/root.pk8").exists() && repo.join("keys/snapshot.pk8").exists());

    let r = repo.as_os_str();
    // Nothing staged: a timestamp refresh needs no offline key.
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    ok(&[
        "repo".as_ref(),
        "add".as_ref(),
        r,
        fx.package("fix-1").as_os_str(),
    ]);
    let before = tree(&repo.join("public"));
    let err = fails(&["repo".as_ref(), "publish".as_ref(), r], 2);
    assert!(err.contains("--targets-key"), "{err}");
    assert_eq!(tree(&repo.join("public")), before);
    // A key the root does not list for targets does not count.
    let snapshot_key = repo.join("keys/snapshot.pk8");
    fails(
        &[
            "repo".as_ref(),
            "publish".as_ref(),
            r,
            "--targets-key".as_ref(),
            snapshot_key.as_os_str(),
        ],
        2,
    );
    ok(&[
        "repo".as_ref(),
        "publish".as_ref(),
        r,
        "--targets-key".as_ref(),
        targets_key.as_os_str(),
    ]);
    let tuf = load_ok(&repo);
    assert_eq!(versions(&tuf), [1, 2, 3, 3]);
    // A key file others may read is refused.
    fs::set_permissions(&targets_key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = fails(
        &[
            "repo".as_ref(),
            "publish".as_ref(),
            r,
            "--targets-key".as_ref(),
            targets_key.as_os_str(),
        ],
        2,
    );
    assert!(err.contains("chmod 600"), "{err}");
    // Thresholds above the key count are refused at init.
    let other = fx.path("repo2");
    fails(
        &[
            "repo".as_ref(),
            "init".as_ref(),
            other.as_os_str(),
            "--root-key".as_ref(),
            root_key.as_os_str(),
            "--root-threshold".as_ref(),
            "2".as_ref(),
        ],
        2,
    );
}

#[test]
fn repo_rotate_key_gives_a_root_chain_tough_walks_from_version_1() {
    let fx = Fx::new();
    let repo = fx.repo();
    fx.init(&[]);
    let r = repo.as_os_str();
    ok(&[
        "repo".as_ref(),
        "add".as_ref(),
        r,
        fx.package("fix-1").as_os_str(),
    ]);
    ok(&["repo".as_ref(), "publish".as_ref(), r]);

    // 1. Root: version 2 signed by the old and the new root key.
    let new_root = fx.path("root2.pk8");
    ok(&["repo".as_ref(), "keygen".as_ref(), new_root.as_os_str()]);
    let out = ok(&[
        "repo".as_ref(),
        "rotate-key".as_ref(),
        r,
        "--role".as_ref(),
        "root".as_ref(),
        "--new-key".as_ref(),
        new_root.as_os_str(),
    ]);
    assert!(out.contains("2.root.json"), "{out}");
    let v2: serde_json::Value = serde_json::from_slice(
        &fs::read(repo.join("public/metadata/2.root.json")).expect("2.root.json"),
    )
    .expect("json");
    assert_eq!(v2["signatures"].as_array().expect("sigs").len(), 2);
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    let tuf = load_ok(&repo);
    assert_eq!(versions(&tuf), [2, 2, 3, 3]);
    let old_root_key: serde_json::Value = serde_json::from_slice(
        &fs::read(repo.join("public/metadata/1.root.json")).expect("1.root.json"),
    )
    .expect("json");
    let old_id = old_root_key["signed"]["roles"]["root"]["keyids"][0].clone();
    let new_ids = &v2["signed"]["roles"]["root"]["keyids"];
    assert_eq!(new_ids.as_array().expect("ids").len(), 1);
    assert_ne!(new_ids[0], old_id);
    // repo.toml now names the new root key: the next rotation is signed by it.
    let config = fs::read_to_string(repo.join("repo.toml")).expect("repo.toml");
    assert!(config.contains("root2.pk8"), "{config}");

    // 2. Targets: a new root (3) lists the new key; publish re-signs targets with it.
    let new_targets = fx.path("targets2.pk8");
    ok(&["repo".as_ref(), "keygen".as_ref(), new_targets.as_os_str()]);
    ok(&[
        "repo".as_ref(),
        "rotate-key".as_ref(),
        r,
        "--role".as_ref(),
        "targets".as_ref(),
        "--new-key".as_ref(),
        new_targets.as_os_str(),
    ]);
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    let tuf = load_ok(&repo);
    assert_eq!(versions(&tuf), [3, 3, 4, 4]);
    assert_eq!(tuf.all_targets().count(), 1);

    // 3. An old root key that is no longer the root key cannot sign a rotation.
    let stale = repo.join("keys/root.pk8");
    let err = fails(
        &[
            "repo".as_ref(),
            "rotate-key".as_ref(),
            r,
            "--role".as_ref(),
            "snapshot".as_ref(),
            "--new-key".as_ref(),
            new_targets.as_os_str(),
            "--old-key".as_ref(),
            stale.as_os_str(),
        ],
        2,
    );
    assert!(err.contains("--old-key"), "{err}");
    assert!(!repo.join("public/metadata/4.root.json").exists());
}

#[test]
fn repo_short_timestamp_expiry_gives_an_expired_repository() {
    let fx = Fx::new();
    let repo = fx.repo();
    fx.init(&[]);
    let r = repo.as_os_str();
    ok(&[
        "repo".as_ref(),
        "publish".as_ref(),
        r,
        "--expires".as_ref(),
        "timestamp=2s".as_ref(),
    ]);
    let ts: serde_json::Value = serde_json::from_slice(
        &fs::read(repo.join("public/metadata/timestamp.json")).expect("timestamp"),
    )
    .expect("json");
    let expires = fleet::parse_utc("expires", ts["signed"]["expires"].as_str().expect("str"))
        .expect("whole-second RFC 3339 UTC");
    // Wait until it has passed (however slow the machine), then tough must refuse.
    while time::OffsetDateTime::now_utc() <= expires {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    match load(&repo, ExpirationEnforcement::Safe).map_err(|e| *e) {
        Err(tough::error::Error::ExpiredMetadata { role, .. }) => {
            assert_eq!(role, tough::schema::RoleType::Timestamp)
        }
        other => panic!("expected an expired timestamp, got {:?}", other.map(|_| ())),
    }
    // The next publish (default 1 day) repairs it.
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    load_ok(&repo);
    // repo.toml keeps the defaults: the override was for one publish only.
    let config = fs::read_to_string(repo.join("repo.toml")).expect("repo.toml");
    assert!(config.contains("timestamp = \"1d\""), "{config}");
}

/// The venv `ci/setup-python` makes; the test fails (never skips) without it.
fn python_tuf() -> PathBuf {
    let cache = std::env::var_os("KSPLICE_CACHE").unwrap_or_else(|| "/var/cache/ksplice-ci".into());
    let python = Path::new(&cache).join("pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ci/setup-python to install python-tuf for the interop tests",
        python.display()
    );
    python
}

/// `python3 -m http.server` on 127.0.0.1 (a free port it picks), serving `dir`.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn start(python: &Path, dir: &Path) -> HttpServer {
        use std::io::BufRead;
        let mut child = Command::new(python)
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "0",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start http.server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("http.server banner");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn repo_python_tuf_client_downloads_a_target() {
    let python = python_tuf();
    let fx = Fx::new();
    let repo = fx.repo();
    fx.init(&[]);
    let r = repo.as_os_str();
    let pkg = fx.package("fix-1");
    ok(&["repo".as_ref(), "add".as_ref(), r, pkg.as_os_str()]);
    ok(&["repo".as_ref(), "publish".as_ref(), r]);
    // A root rotation too, so python-tuf walks the chain from 1.root.json.
    let new_root = fx.path("root2.pk8");
    ok(&["repo".as_ref(), "keygen".as_ref(), new_root.as_os_str()]);
    ok(&[
        "repo".as_ref(),
        "rotate-key".as_ref(),
        r,
        "--role".as_ref(),
        "root".as_ref(),
        "--new-key".as_ref(),
        new_root.as_os_str(),
    ]);
    ok(&["repo".as_ref(), "publish".as_ref(), r]);

    let server = HttpServer::start(&python, &repo.join("public"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python_tuf_client.py");
    let work = fx.path("py-client");
    let out = Command::new(&python)
        .arg(&script)
        .arg(repo.join("public/metadata/1.root.json"))
        .arg(format!("http://127.0.0.1:{}/", server.port))
        .arg("ksplice-fix-1.tar.gz")
        .arg(&pkg)
        .arg(&work)
        .output()
        .expect("run python-tuf client");
    drop(server);
    assert!(
        out.status.success(),
        "python-tuf refused the repository: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client json");
    assert_eq!(report["root_version"], 2);
    assert_eq!(report["targets_version"], 2);
    assert_eq!(report["timestamp_version"], 3);
    let info: TargetInfo =
        serde_json::from_value(report["custom"][fleet::CUSTOM_KEY].clone()).expect("TargetInfo");
    assert_eq!(info.id, "fix-1");
}

/// Publish cost with 1,000 (small, fake) packages: `cargo test -- --ignored
/// repo_bench --nocapture` prints the figures; nothing is asserted about time.
#[test]
#[ignore]
fn repo_bench_publish_1000_targets() {
    let fx = Fx::new();
    let repo = fx.repo();
    fx.init(&[]);
    let pkgs: Vec<PathBuf> = (0..1000).map(|n| fx.package(&format!("fix-{n}"))).collect();
    let mut args: Vec<&OsStr> = vec!["repo".as_ref(), "add".as_ref(), repo.as_os_str()];
    args.extend(pkgs.iter().map(|p| p.as_os_str()));
    let t = std::time::Instant::now();
    ok(&args);
    let add = t.elapsed();
    let t = std::time::Instant::now();
    ok(&["repo".as_ref(), "publish".as_ref(), repo.as_os_str()]);
    let publish = t.elapsed();
    let t = std::time::Instant::now();
    ok(&["repo".as_ref(), "publish".as_ref(), repo.as_os_str()]);
    let republish = t.elapsed();
    let t = std::time::Instant::now();
    let tuf = load_ok(&repo);
    let load = t.elapsed();
    assert_eq!(tuf.all_targets().count(), 1000);
    let size = |f: &str| {
        fs::metadata(repo.join("public/metadata").join(f))
            .expect(f)
            .len()
    };
    println!(
        "1000 targets: add {add:?}, publish {publish:?}, publish unchanged {republish:?}, \
         tough load {load:?}; 2.targets.json {} B, 3.snapshot.json {} B, timestamp.json {} B, \
         1.root.json {} B",
        size("2.targets.json"),
        size("3.snapshot.json"),
        size("timestamp.json"),
        size("1.root.json")
    );
}
