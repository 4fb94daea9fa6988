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
    /// `names` and what they need: `depends` and the soft dependencies
    /// modprobe loads first or after (libcrc32c's `pre: crc32c`, without
    /// which xfs does not load). A soft dependency may name an alias
    /// (`crc32c`): it resolves to the modules named after it
    /// (`crc32c_generic`, `crc32c_intel`) whose aliases include it; one that
    /// resolves to nothing is left out, as modprobe leaves it.
    pub fn closure(&self, names: &[&str]) -> Result<BTreeSet<String>> {
        let mut done = BTreeSet::new();
        let mut todo: Vec<String> = names.iter().map(|n| canonical(n)).collect();
        while let Some(name) = todo.pop() {
            if !done.insert(name.clone()) {
                continue;
            }
            let info = modinfo(self.path(&name)?)?;
            let (depends, soft) = needs(&info);
            todo.extend(depends);
            for want in soft {
                if self.by_name.contains_key(&want) {
                    todo.push(want);
                    continue;
                }
                let prefix = format!("{want}_");
                for (other, path) in &self.by_name {
                    if other.starts_with(&prefix)
                        && modinfo(path)?
                            .lines()
                            .filter_map(|l| l.strip_prefix("alias:"))
                            .any(|a| canonical(a.trim()) == want)
                    {
                        todo.push(other.clone());
                    }
                }
            }
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

fn modinfo(path: &Path) -> Result<String> {
    let out = Command::new("modinfo")
        .arg(path)
        .output()
        .context("run modinfo (package kmod)")?;
    if !out.status.success() {
        bail!("modinfo {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `depends` modules and the soft dependencies (`softdep: pre: a b post: c`)
/// of `modinfo` output, canonical.
fn needs(info: &str) -> (Vec<String>, Vec<String>) {
    let field = |key: &str| -> Vec<String> {
        info.lines()
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(|v| v.split([',', ' ', '\t']))
            .filter(|w| !w.is_empty() && !w.ends_with(':'))
            .map(canonical)
            .collect()
    };
    (field("depends:"), field("softdep:"))
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_and_soft_dependencies_of_modinfo_output() {
        let info = "filename:       /x/libcrc32c.ko\nsoftdep:        pre: crc32c\n\
                    depends:        \nname:           libcrc32c\n";
        assert_eq!(needs(info), (vec![], vec!["crc32c".to_string()]));
        let info = "depends:        libcrc32c,xor-x\nsoftdep:        pre: a b post: c-d\n";
        assert_eq!(
            needs(info),
            (
                vec!["libcrc32c".to_string(), "xor_x".to_string()],
                vec!["a".into(), "b".into(), "c_d".into()]
            )
        );
    }
}
