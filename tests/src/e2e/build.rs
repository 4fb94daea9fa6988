//! Host-side builds: the livepatch sample module, signed packages, and `ksplice-create` updates.

use super::profile::Profile;
use super::runner::Harness;
use super::scenario::{Build, PackageVariant};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// State shared by the builds of one run (keys, trust policy, the sample module).
#[derive(Debug)]
pub struct Context<'a> {
    h: &'a Harness,
    profile: Option<&'a Profile>,
    dir: PathBuf,
    sample: Option<PathBuf>,
    trust: Option<PathBuf>,
}

impl<'a> Context<'a> {
    pub fn new(h: &'a Harness, profile: Option<&'a Profile>, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            h,
            profile,
            dir: dir.to_path_buf(),
            sample: None,
            trust: None,
        })
    }

    /// The guest's trust policy, once a build has made one.
    pub fn trust(&self) -> Option<&Path> {
        self.trust.as_deref()
    }

    /// Builds `what` into `out` and returns the file the guest gets as `$PKG` (empty: none).
    pub fn build(&mut self, what: &Build, out: &Path) -> Result<PathBuf> {
        match what {
            Build::Nothing => Ok(PathBuf::new()),
            Build::SampleModule => self.sample_module(),
            Build::SamplePackage(v) => self.sample_package(*v, out),
            Build::Create { .. }
            | Build::CreateDiffext { .. }
            | Build::Refused { .. }
            | Build::RunPreMismatch { .. } => {
                bail!("ksplice-create builds are not wired into the harness yet")
            }
        }
    }

    /// samples/livepatch/livepatch-sample.c from the kernel source, built against the installed headers.
    fn sample_module(&mut self) -> Result<PathBuf> {
        if let Some(p) = &self.sample {
            return Ok(p.clone());
        }
        let dir = self.dir.join("livepatch-sample");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(
            self.h
                .env
                .source
                .join("samples/livepatch/livepatch-sample.c"),
            dir.join("livepatch-sample.c"),
        )
        .context("copy samples/livepatch/livepatch-sample.c")?;
        std::fs::write(dir.join("Kbuild"), "obj-m := livepatch-sample.o\n")?;
        let out = Command::new("make")
            .arg("-C")
            .arg(&self.h.env.headers)
            .arg(format!("M={}", dir.display()))
            .args(["-j2", "modules"])
            .output()
            .context("run make")?;
        if !out.status.success() {
            bail!(
                "building livepatch-sample.ko failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ko = dir.join("livepatch-sample.ko");
        self.sample = Some(ko.clone());
        Ok(ko)
    }

    fn sample_package(&mut self, _v: PackageVariant, _out: &Path) -> Result<PathBuf> {
        let _ = self.profile;
        bail!("ksplice-build pack is not wired into the harness yet")
    }
}
