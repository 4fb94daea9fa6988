//! The kernel git repository: the extracted source as commit `pre`, one branch per test patch.
//!
//! Bare repository under `$KSPLICE_CACHE/<version>/e2e/linux.git`, built by the git CLI
//! with the pristine source as work tree (nothing is written there). Patch branches are
//! made without a checkout: a temporary index read from `pre`, `git apply --cached`,
//! `write-tree`, `commit-tree`. A branch is rebuilt only when its patch changed (the
//! commit message records the patch's blob id).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository and how to name things in it.
#[derive(Debug, Clone)]
pub struct KernelRepo {
    pub git_dir: PathBuf,
}

/// The tag of the unmodified source.
pub const PRE: &str = "pre";

impl KernelRepo {
    /// Opens the repository, creating it from `source` on first use (a few minutes: 75k files).
    pub fn open_or_create(git_dir: &Path, source: &Path) -> Result<Self> {
        let repo = Self {
            git_dir: git_dir.to_path_buf(),
        };
        if repo
            .git(&["rev-parse", "--verify", "-q", "refs/tags/pre"])
            .is_ok()
        {
            return Ok(repo);
        }
        eprintln!(
            "e2e: creating the kernel git repository {} (once per kernel version)",
            git_dir.display()
        );
        let _ = std::fs::remove_dir_all(git_dir);
        std::fs::create_dir_all(git_dir)?;
        repo.git(&["init", "-q", "--bare"])?;
        repo.git(&["config", "core.bigFileThreshold", "1m"])?;
        let work = source.to_string_lossy().into_owned();
        // -f: the tarball is exactly the tracked files, some of which match .gitignore patterns.
        repo.git(&[
            "--work-tree",
            &work,
            "add",
            "-A",
            "-f",
            "--",
            ".",
            ":(exclude).extracted",
        ])?;
        let tree = repo.git(&["write-tree"])?;
        let commit = repo.git(&["commit-tree", "-m", "pre: Debian's linux-source", &tree])?;
        repo.git(&["tag", PRE, &commit])?;
        repo.git(&["update-ref", "refs/heads/pre", &commit])?;
        Ok(repo)
    }

    /// Branch `name` = `pre` + `patch` as one commit; reused when the patch is unchanged.
    pub fn patch_branch(&self, name: &str, patch: &Path) -> Result<String> {
        self.branch_on(name, PRE, patch)
    }

    /// Branch `name` = `base` + `patch` as one commit; reused when the patch is unchanged.
    pub fn branch_on(&self, name: &str, base: &str, patch: &Path) -> Result<String> {
        let patch_s = patch.to_string_lossy().into_owned();
        let blob = self.git(&["hash-object", &patch_s])?;
        let branch = format!("refs/heads/{name}");
        if let Ok(msg) = self.git(&["log", "-1", "--format=%B", &branch]) {
            if msg.contains(&blob) {
                return Ok(name.to_string());
            }
        }
        let index = self.git_dir.join(format!("index-{name}"));
        let idx = index.to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&index);
        self.git_env(&idx, &["read-tree", base])?;
        if self
            .git_env(&idx, &["apply", "--cached", "-p1", &patch_s])
            .is_err()
        {
            // Some test patches need patch(1)'s fuzz (they say "applies with patch -p1").
            self.apply_with_fuzz(&idx, name, base, patch)
                .with_context(|| format!("apply {} to {base}", patch.display()))?;
        }
        let tree = self.git_env(&idx, &["write-tree"])?;
        let _ = std::fs::remove_file(&index);
        let msg = format!("{name}\n\npatch blob {blob} on {base}");
        let commit = self.git(&["commit-tree", "-p", base, "-m", &msg, &tree])?;
        self.git(&["update-ref", &branch, &commit])?;
        Ok(name.to_string())
    }

    fn apply_with_fuzz(&self, idx: &str, name: &str, base: &str, patch: &Path) -> Result<()> {
        let scratch = self.git_dir.join(format!("scratch-{name}"));
        let _ = std::fs::remove_dir_all(&scratch);
        let files = patched_files(patch)?;
        for f in &files {
            let to = scratch.join(f);
            std::fs::create_dir_all(to.parent().context("no parent")?)?;
            if let Ok(text) = self.git_raw(&["show", &format!("{base}:{f}")]) {
                std::fs::write(&to, text)?;
            }
        }
        let st = Command::new("patch")
            .args(["-s", "-p1", "--no-backup-if-mismatch", "-d"])
            .arg(&scratch)
            .arg("-i")
            .arg(patch)
            .status()
            .context("run patch")?;
        if !st.success() {
            bail!("patch -p1 {} failed", patch.display());
        }
        for f in &files {
            let p = scratch.join(f).to_string_lossy().into_owned();
            let blob = self.git(&["hash-object", "-w", &p])?;
            self.git_env(
                idx,
                &[
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    &format!("100644,{blob},{f}"),
                ],
            )?;
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(())
    }

    fn git_raw(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .args(args)
            .output()
            .context("run git")?;
        if !out.status.success() {
            bail!("git {} failed", args.join(" "));
        }
        Ok(out.stdout)
    }

    fn git(&self, args: &[&str]) -> Result<String> {
        self.git_env("", args)
    }

    fn git_env(&self, index: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir")
            .arg(&self.git_dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "ksplice e2e")
            .env("GIT_AUTHOR_EMAIL", "e2e@ksplice.invalid")
            .env("GIT_COMMITTER_NAME", "ksplice e2e")
            .env("GIT_COMMITTER_EMAIL", "e2e@ksplice.invalid")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z");
        if !index.is_empty() {
            cmd.env("GIT_INDEX_FILE", index);
        }
        let out = cmd.output().context("run git")?;
        if !out.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// Files a -p1 unified diff changes (from its `+++` lines).
pub fn patched_files(patch: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(patch)?;
    let mut files = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("+++ ") {
            let path = rest.split('\t').next().unwrap_or("").trim();
            if let Some((_, rel)) = path.split_once('/') {
                if !files.iter().any(|f| f == rel) {
                    files.push(rel.to_string());
                }
            }
        }
    }
    if files.is_empty() {
        bail!("{} changes no files", patch.display());
    }
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn patched_files_strip_one_component() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.patch");
        std::fs::write(
            &p,
            "--- src.orig/fs/a.c\t2022\n+++ src/fs/a.c\t2022\n@@\n--- a/b.c\n+++ b/b.c\n",
        )
        .unwrap();
        assert_eq!(patched_files(&p).unwrap(), ["fs/a.c", "b.c"]);
    }
}
