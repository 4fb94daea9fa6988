//! `ksplice-build profile` on Debian's candidate kernel: the profile from its packages equals what `ksplice profile` captured in the booted guest.
//!
//! Needs `ci/setup-kernel` (the image, config and headers) and `ci/create-profile`
//! (one QEMU boot, cached: the guest's `ksplice profile`, KASLR on).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use builder::target::{write_profile, ImageInputs};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("invariant: tests/ sits in the workspace")
        .to_path_buf()
}

/// The profile `ksplice profile` wrote in the booted guest (ci/create-profile prints its path).
fn guest_profile() -> Result<PathBuf> {
    let out = Command::new(repo_root().join("ci/create-profile"))
        .output()
        .context("run ci/create-profile")?;
    if !out.status.success() {
        bail!(
            "ci/create-profile failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(text.lines().last().unwrap_or("").trim()))
}

fn inputs() -> ImageInputs {
    let k = ksplice_tests::kernel_env();
    ImageInputs {
        image: k.vmlinuz.clone(),
        config: k.config.clone(),
        symvers: Some(k.headers.join("Module.symvers")),
    }
}

/// `(address, type, name)` of each line of a System.map / kallsyms copy.
fn parse_map(path: &Path) -> Result<Vec<(u64, char, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(' ').collect();
            ensure!(
                f.len() == 3 && f[1].len() == 1,
                "{}:{}: {l:?}",
                path.display(),
                i + 1
            );
            let addr = u64::from_str_radix(f[0], 16)?;
            Ok((addr, f[1].chars().next().unwrap_or(' '), f[2].to_string()))
        })
        .collect()
}

/// The acceptance of "profile from packages": every symbol, address and type
/// decoded from the image equals the booted guest's /proc/kallsyms, once the
/// guest's KASLR offset is taken off the relative (non-per-CPU) addresses;
/// the identity files are byte for byte the guest's.
#[test]
fn profile_from_packages_equals_the_booted_guests() -> Result<()> {
    let guest = guest_profile()?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("ksplice");
    let p = write_profile(&inputs(), &out)?;
    eprintln!(
        "profile: {} symbols decoded in {:.3} s (image read and decompressed in {:.3} s); tables at num_syms {:#x}, token_table {:#x}",
        p.table.symbols.len(),
        p.decode_time.as_secs_f64(),
        p.load_time.as_secs_f64(),
        p.table.num_syms_at,
        p.table.token_table_at
    );

    // The guest's map is /proc/kallsyms: vmlinux only (no modules were loaded,
    // so no "[module]" lines), in table order, relative addresses moved by KASLR.
    let theirs = parse_map(&guest.join("System.map"))?;
    let ours = parse_map(&out.join("System.map"))?;
    let text = |m: &[(u64, char, String)]| {
        m.iter()
            .find(|s| s.2 == "_text")
            .map(|s| s.0)
            .context("no _text")
    };
    let kaslr = text(&theirs)?.wrapping_sub(text(&ours)?);
    eprintln!("profile: the guest's KASLR offset {kaslr:#x}");
    assert_eq!(ours.len(), p.table.symbols.len());
    let mut differences = Vec::new();
    for (i, (t, s)) in theirs.iter().zip(&p.table.symbols).enumerate() {
        let expected = if s.absolute {
            s.addr
        } else {
            s.addr.wrapping_add(kaslr)
        };
        if (t.0, t.1, t.2.as_str()) != (expected, s.kind, s.name.as_str()) {
            differences.push(format!(
                "line {}: guest {:016x} {} {}, decoded {:016x}(+kaslr) {} {}",
                i + 1,
                t.0,
                t.1,
                t.2,
                expected,
                s.kind,
                s.name
            ));
        }
    }
    assert!(
        differences.is_empty() && theirs.len() == ours.len(),
        "{} of {} symbols differ (guest has {} lines, decoded {}):\n{}",
        differences.len(),
        theirs.len(),
        theirs.len(),
        ours.len(),
        differences[..differences.len().min(20)].join("\n")
    );
    // Per-CPU symbols are the absolute ones, and all of them are `A`.
    let absolute = p.table.symbols.iter().filter(|s| s.absolute).count();
    assert!(absolute > 0);
    assert!(p
        .table
        .symbols
        .iter()
        .filter(|s| s.absolute)
        .all(|s| s.kind == 'A'));

    // The other files: exactly what the guest wrote.
    for name in [
        "build-id",
        "release",
        "version",
        "arch",
        "config",
        "Module.symvers",
    ] {
        let a = std::fs::read(guest.join(name))?;
        let b = std::fs::read(out.join(name))?;
        assert!(a == b, "{name} differs from the guest's");
    }
    for (name, mode) in manifests::profile::FILES {
        let m = std::fs::metadata(out.join(name))?.permissions().mode() & 0o777;
        assert_eq!(m, mode, "{name}");
    }
    assert_eq!(
        std::fs::read_dir(&out)?.count(),
        manifests::profile::FILES.len(),
        "no stray (temporary) files"
    );

    // ksplice-create takes it as SRC/ksplice/, with the image to cross-check.
    let resolved = builder::target::profile::Profile::resolve(&builder::target::ProfileInputs {
        src: Some(dir.path().to_path_buf()),
        target_image: Some(ksplice_tests::kernel_env().vmlinuz.clone()),
        system_root: dir.path().join("no-such-root"),
        ..Default::default()
    })?;
    assert_eq!(resolved.build_id, p.build_id);
    assert_eq!(resolved.release, p.release);
    Ok(())
}

/// The command: a config that is not one is refused (2), a missing option is a
/// usage error (1), an unreadable image an I/O failure (1); nothing is written.
#[test]
fn profile_command_refuses_bad_inputs() -> Result<()> {
    let bin = ksplice_tests::cargo_bin("builder", "ksplice-build");
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("ksplice");
    let bogus = dir.path().join("config");
    std::fs::write(&bogus, "hello, world\n")?;
    let k = ksplice_tests::kernel_env();
    let run = |args: &[&std::ffi::OsStr]| -> Result<(i32, String)> {
        let o = Command::new(&bin).arg("profile").args(args).output()?;
        Ok((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    };
    let (code, err) = run(&[
        "--image".as_ref(),
        k.vmlinuz.as_os_str(),
        "--config".as_ref(),
        bogus.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a kernel config line"), "{err}");
    let (code, err) = run(&["--config".as_ref(), bogus.as_os_str()])?;
    assert_eq!(code, 1, "{err}");
    let (code, err) = run(&[
        "--image".as_ref(),
        dir.path().join("no-such-vmlinuz").as_os_str(),
        "--config".as_ref(),
        k.config.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])?;
    assert_eq!(code, 1, "{err}");
    assert!(!out.exists(), "nothing written on refusal");
    Ok(())
}
