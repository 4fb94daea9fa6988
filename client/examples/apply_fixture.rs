//! Benchmark fixture: `make DIR [MIB]` writes a fake root with a signed package,
//! `apply DIR` applies it through the client library against a simulated
//! kernel, so `/usr/bin/time -v` can measure the apply path's peak memory
//! without loading anything into the real kernel.

#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use client::{Host, Sys, Uname};
use manifests::{
    ChangeKind, FunctionChange, Manifest, ModuleInfo, PatchedObject, SigningKey, TargetKernel,
    TrustPolicy,
};

const BUILD_ID: &str = "e4f18d9dc1d0e6fc2b17e93e885a647b3c0a6fc1";

struct SimKernel(PathBuf);

impl Sys for SimKernel {
    fn uname(&self) -> io::Result<Uname> {
        Ok(Uname {
            release: "6.1.0-56-amd64".into(),
            version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2".into(),
            machine: "x86_64".into(),
        })
    }
    fn finit_module(&self, _module: &fs::File) -> io::Result<()> {
        let dir = self.0.join("sys/kernel/livepatch/ksplice_bench");
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(self.0.join("sys/module/ksplice_bench"))?;
        fs::write(dir.join("enabled"), "1\n")?;
        fs::write(dir.join("transition"), "0\n")
    }
    fn delete_module(&self, _name: &str) -> io::Result<()> {
        Ok(())
    }
}

fn make(dir: &Path, mib: usize) -> anyhow::Result<()> {
    let root = dir.join("root");
    for d in [
        "sys/kernel/livepatch",
        "sys/module",
        "dev",
        "etc/ksplice",
        "proc",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    let mut notes = Vec::new();
    for v in [4u32, 20, 3] {
        notes.extend_from_slice(&v.to_ne_bytes());
    }
    notes.extend_from_slice(b"GNU\0");
    notes.extend_from_slice(&hex::decode(BUILD_ID)?);
    fs::write(root.join("sys/kernel/notes"), notes)?;
    fs::write(root.join("dev/kmsg"), "")?;
    fs::write(root.join("proc/cmdline"), "ro\n")?;
    let key = SigningKey::generate()?;
    fs::write(
        root.join("etc/ksplice/trust.toml"),
        TrustPolicy::new(vec![key.public()], 1)?.to_toml(),
    )?;
    // A livepatch module is a few hundred KB; default to 1 MiB of
    // incompressible bytes.
    let ko = dir.join("ksplice_bench.ko");
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(&ko, data)?;
    let m = Manifest {
        format: manifests::FORMAT,
        id: "bench".into(),
        description: "benchmark fixture".into(),
        cves: vec![],
        created: "2026-11-27T21:38:41Z".into(),
        builder_version: "0.1.0".into(),
        builds_on: vec![],
        stream: None,
        target: TargetKernel {
            release: "6.1.0-56-amd64".into(),
            version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2".into(),
            arch: "x86_64".into(),
            build_id: BUILD_ID.into(),
        },
        module: ModuleInfo {
            name: "ksplice_bench".into(),
            file: "ksplice_bench.ko".into(),
        },
        objects: vec![PatchedObject {
            name: "vmlinux".into(),
            functions: vec![FunctionChange {
                name: "cmdline_proc_show".into(),
                sympos: 0,
                kind: ChangeKind::Replaced,
                pre_sha256: Some("ab".repeat(32)),
                old_size: 48,
                new_size: 64,
            }],
        }],
        files: vec![],
    };
    let pkg = manifests::write_package(dir, &m, &[&key], &[("ksplice_bench.ko".into(), ko)])?;
    println!("{}", pkg.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cmd), Some(dir)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: apply_fixture make DIR [MIB] | apply DIR");
    };
    let dir = PathBuf::from(dir);
    match cmd.as_str() {
        "make" => make(&dir, args.get(3).map_or(Ok(1), |m| m.parse())?),
        "apply" => {
            let root = dir.join("root");
            let sys = SimKernel(root.clone());
            let host = Host::new(&root, &sys);
            client::ops::apply(&host, &[dir.join("ksplice-bench.tar.gz")], &mut |e| {
                println!("{e}")
            })?;
            Ok(())
        }
        _ => anyhow::bail!("unknown command {cmd}"),
    }
}
