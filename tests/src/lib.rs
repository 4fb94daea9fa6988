//! Helpers for the ksplice integration tests and end-to-end harness.
#![forbid(unsafe_code)]

pub mod e2e;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The kernel environment of `ci/setup-kernel` (`$KSPLICE_CACHE/kernel.env`, or the
/// release `$KSPLICE_KERNEL` names: `$KSPLICE_CACHE/<version>/kernel.env`),
/// read once; a test without it fails telling to run the set-up.
pub fn kernel_env() -> &'static e2e::env::KernelEnv {
    static ENV: OnceLock<e2e::env::KernelEnv> = OnceLock::new();
    ENV.get_or_init(|| e2e::env::KernelEnv::load().unwrap_or_else(|e| panic!("{e:#}")))
}

/// Builds (if needed) and locates a workspace binary in the target directory of
/// the running test: `cargo test` builds only the binaries of the package under
/// test, and the integration tests drive the builder's and client's commands.
pub fn cargo_bin(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("invariant: a test knows its executable");
    // target/<profile>/deps/integration-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("invariant: tests run from target/<profile>/deps");
    let target = profile_dir
        .parent()
        .expect("invariant: target/<profile> has a parent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", name])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {name} failed"
    );
    profile_dir.join(name)
}

/// One ELF note as the kernel lays them out in `/sys/kernel/notes` (header,
/// name and descriptor, each padded to 4 bytes), for fixture hosts.
pub fn elf_note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for field in [name.len() as u32, desc.len() as u32, kind] {
        v.extend_from_slice(&field.to_ne_bytes());
    }
    v.extend_from_slice(name);
    v.resize(v.len().div_ceil(4) * 4, 0);
    v.extend_from_slice(desc);
    v.resize(v.len().div_ceil(4) * 4, 0);
    v
}
