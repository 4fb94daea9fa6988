//! Copies the kernel modules a scenario needs (with their dependencies) into the initramfs, with `modules.dep`.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Module file index of an unpacked `lib/modules/<release>` tree, by module name (`-` folded to `_`).
#[derive(Debug)]
pub struct ModuleTree {
    dir: PathBuf,
    by_name: HashMap<String, PathBuf>,
}

impl ModuleTree {
    pub fn scan(dir: &Path) -> Result<Self> {
        let mut by_name = HashMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(stem) = p.file_name().and_then(|n| n.to_str()) {
                    if let Some(name) = stem.strip_suffix(".ko") {
                        by_name.insert(canonical(name), p.clone());
                    }
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            by_name,
        })
    }

    /// `names` and everything they depend on (the `depends` field of modinfo).
    pub fn closure(&self, names: &[&str]) -> Result<BTreeSet<String>> {
        let mut done = BTreeSet::new();
        let mut todo: Vec<String> = names.iter().map(|n| canonical(n)).collect();
        while let Some(name) = todo.pop() {
            if !done.insert(name.clone()) {
                continue;
            }
            let path = self.path(&name)?;
            let out = Command::new("modinfo")
                .args(["-F", "depends"])
                .arg(path)
                .output()
                .context("run modinfo (package kmod)")?;
            if !out.status.success() {
                bail!("modinfo {} failed", path.display());
            }
            let deps = String::from_utf8_lossy(&out.stdout);
            todo.extend(
                deps.trim()
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(canonical),
            );
        }
        Ok(done)
    }

    fn path(&self, name: &str) -> Result<&PathBuf> {
        self.by_name
            .get(name)
            .with_context(|| format!("module {name} not found in {}", self.dir.display()))
    }

    /// Copies `names` and their dependencies under `root/lib/modules/<release>` and runs depmod there.
    pub fn install(&self, names: &[&str], root: &Path, release: &str) -> Result<()> {
        let dst = root.join("lib/modules").join(release);
        std::fs::create_dir_all(&dst)?;
        for name in self.closure(names)? {
            let src = self.path(&name)?;
            let rel = src
                .strip_prefix(&self.dir)
                .expect("invariant: indexed under dir");
            let to = dst.join(rel);
            std::fs::create_dir_all(to.parent().expect("invariant: file has a parent"))?;
            std::fs::copy(src, &to).with_context(|| format!("copy {}", src.display()))?;
        }
        for f in [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            let src = self.dir.join(f);
            if src.exists() {
                std::fs::copy(&src, dst.join(f))?;
            }
        }
        let st = Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(release)
            .status()
            .context("run depmod (package kmod)")?;
        if !st.success() {
            bail!("depmod -b {} {release} failed", root.display());
        }
        Ok(())
    }
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}
