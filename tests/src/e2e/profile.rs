//! The target profile: boot the unmodified kernel once, run `ksplice profile` in the guest, bring it back.
//!
//! The profile travels as tar+gzip+base64 between blob markers on the serial
//! console and is cached per kernel version under `$KSPLICE_CACHE/<version>/e2e/profile`.
//! Until `ksplice profile` lands, the guest records only the kernel identity
//! (release, version, arch, and the raw /sys/kernel/notes for the build-id).

use super::runner::Harness;
use super::scenario::{self, Scenario};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A captured target profile (the layout of contract D).
#[derive(Debug, Clone)]
pub struct Profile {
    pub dir: PathBuf,
    /// Written by `ksplice profile` (System.map and config present), not just the identity.
    pub complete: bool,
    pub release: String,
    pub version: String,
    pub arch: String,
    pub build_id: String,
}

impl Profile {
    fn load(dir: &Path) -> Result<Self> {
        let read = |f: &str| -> Result<String> {
            Ok(std::fs::read_to_string(dir.join(f))
                .with_context(|| format!("profile file {f}"))?
                .trim_end_matches('\n')
                .to_string())
        };
        let build_id = match read("build-id") {
            Ok(b) => b,
            Err(_) => {
                let notes = dir.join(".notes");
                client::identity::gnu_build_id(&std::fs::read(&notes)?, &notes)?
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            complete: dir.join("System.map").exists() && dir.join("config").exists(),
            release: read("release")?,
            version: read("version")?,
            arch: read("arch")?,
            build_id,
        })
    }
}

/// Returns the cached profile, or boots the guest to capture it; the bool says whether it booted.
pub fn capture(h: &Harness, want_full: bool) -> Result<(Profile, bool)> {
    let cache = h.env.e2e_cache().join("profile");
    if let Ok(p) = Profile::load(&cache) {
        if p.complete || !want_full {
            eprintln!("e2e: target profile from cache {}", cache.display());
            return Ok((p, false));
        }
    }
    let s = scenario::all(&h.patches)
        .into_iter()
        .find(|s| s.name == scenario::PROFILE)
        .expect("invariant: the profile scenario is in the table");
    let mut s: Scenario = s;
    if let Some(g) = s.guest.as_mut() {
        g.env.push((
            "HAVE_PROFILE".into(),
            if want_full { "1" } else { "0" }.into(),
        ));
    }
    let (log, ended) = h.boot("profile", &[(s, Default::default())], None)?;
    let Some(b64) = log.blobs.get("profile") else {
        bail!("the guest sent no profile ({ended:?}); see the serial log");
    };
    if log.scenarios.get(scenario::PROFILE).and_then(|g| g.passed) != Some(true) {
        bail!("the profile scenario failed in the guest; see the serial log");
    }
    let tmp = cache.with_extension("new");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    unpack(b64, &tmp)?;
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::rename(&tmp, &cache)?;
    Ok((Profile::load(&cache)?, true))
}

fn unpack(b64: &str, dir: &Path) -> Result<()> {
    let tgz = dir.with_extension("tgz");
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&tgz)?)
        .spawn()
        .context("run base64")?;
    child
        .stdin
        .take()
        .expect("invariant: stdin is piped")
        .write_all(b64.as_bytes())?;
    if !child.wait()?.success() {
        bail!("the profile blob is not valid base64");
    }
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-xzf")
        .arg(&tgz)
        .status()?;
    let _ = std::fs::remove_file(&tgz);
    if !st.success() {
        bail!("the profile blob is not a tar.gz");
    }
    Ok(())
}
