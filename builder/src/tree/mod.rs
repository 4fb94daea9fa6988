//! The prepared pre tree (cached per source and config) and the post tree beside it.
//!
//! Layout under `<cache>/trees/`:
//! - `pre-<key>/`: the pre source, configured and `modules_prepare`d for the
//!   target release. Pre objects are compiled in place, so they are cached too.
//! - `pre-<key>.post/`: the post tree, a hard-linked copy of the pre tree.
//!   It lives at a fixed path because kbuild builds objtool with absolute
//!   paths: a fresh copy elsewhere would rebuild objtool every time (~12 s).
//!   Each run first restores the files the previous run changed.
//! - `pre-<key>.lock`: held for a whole run; runs against one tree serialize.
//!   Its mtime is the pair's last use, the order of eviction ([`evict`]).
//! - `evict.lock`, `.evicting-*`: eviction's own lock and pairs being removed.
//!
//! Hard links are shared inodes, and some build steps rewrite files in place
//! (gcc's `-MD` output, objtool, `.cmd` files). So the post tree never shares
//! `tools/` (objtool's build outputs), `.missing-syscalls.d`, or the outputs of
//! the objects it builds: those are unlinked before anything writes them.

pub mod compiler;
pub mod evict;
pub(crate) mod kbuild;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::checkout::{self, Change, PreSource};
use crate::error::{Error, Result};
use kbuild::Make;

/// Bump when the layout or the prepare recipe changes: old trees are not reused.
const RECIPE: &str = "ksplice-tree-1";
const MARKER: &str = ".ksplice-prepared";
const DIRTY: &str = ".ksplice-dirty";

/// A prepared pre tree and its post tree, locked for this run.
#[derive(Debug)]
pub struct Trees {
    pub pre: PathBuf,
    pub post: PathBuf,
    /// Whether the prepared pre tree came from the cache.
    pub reused: bool,
    /// Time spent copying the pre source out (0 when reused): the summary
    /// counts it as checkout, not prepare.
    pub materialize_time: std::time::Duration,
    /// What keeping the cache under `KSPLICE_CACHE_MAX` did.
    pub eviction: evict::Report,
    _lock: File,
}

/// The cache key of a prepared tree: source identity, config, release, recipe.
pub fn key(pre_id: &str, config: &[u8], release: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        RECIPE.as_bytes(),
        pre_id.as_bytes(),
        config,
        release.as_bytes(),
        kbuild::KCFLAGS.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..12])
}

impl Trees {
    /// Reuse or create the prepared pre tree for (`pre_id`, `config`), then
    /// evict least-recently-used pairs until the cache is under `cache_max` bytes.
    pub fn open(
        cache: &Path,
        pre: &PreSource,
        pre_id: &str,
        config: &Path,
        symvers: &Path,
        make: &Make,
        cache_max: u64,
    ) -> Result<Trees> {
        let config_bytes = std::fs::read(config).map_err(Error::io(config))?;
        let key = key(pre_id, &config_bytes, &make.release);
        let base = cache.join("trees");
        std::fs::create_dir_all(&base).map_err(Error::io(&base))?;
        let lock_path = base.join(format!("pre-{key}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io(&lock_path))?;
        lock.lock().map_err(Error::io(&lock_path))?;
        evict::mark_used(&lock, &lock_path)?;

        let pre_dir = base.join(format!("pre-{key}"));
        let post_dir = base.join(format!("pre-{key}.post"));
        let reused = pre_dir.join(MARKER).is_file();
        let mut materialize_time = std::time::Duration::ZERO;
        if !reused {
            // An unfinished tree (crash, failed prepare) is rebuilt from scratch
            // at its final path: kbuild records absolute paths for tools.
            remove_dir(&pre_dir)?;
            remove_dir(&post_dir)?;
            let start = std::time::Instant::now();
            checkout::materialize(pre, &pre_dir)?;
            materialize_time = start.elapsed();
            make.prepare(&pre_dir, config)?;
            install_symvers(&pre_dir, symvers)?;
            let m = pre_dir.join(MARKER);
            std::fs::write(&m, format!("{pre_id}\n{}\n", make.release)).map_err(Error::io(&m))?;
        } else {
            // The target's symbol versions may come from another file now.
            install_symvers(&pre_dir, symvers)?;
        }
        if !post_dir.join(MARKER).is_file() {
            remove_dir(&post_dir)?;
            link_copy(&pre_dir, &post_dir)?;
        }
        // Measured now that this run's pair exists at its real size.
        let eviction = evict::run(&base, &key, cache_max, !reused)?;
        Ok(Trees {
            pre: pre_dir,
            post: post_dir,
            reused,
            materialize_time,
            eviction,
            _lock: lock,
        })
    }

    /// Put the previous run's changed files back to the pre content, then
    /// write this run's changes as new inodes, and unlink the outputs of the
    /// objects about to be built in the post tree.
    pub fn apply(&self, changes: &[Change], objects: &[String]) -> Result<()> {
        let dirty = self.post.join(DIRTY);
        let previous = std::fs::read_to_string(&dirty).unwrap_or_default();
        for rel in previous.lines().filter(|l| !l.is_empty()) {
            let post = self.post.join(rel);
            unlink(&post)?;
            let pre = self.pre.join(rel);
            if pre.exists() {
                std::fs::hard_link(&pre, &post).map_err(Error::io(&post))?;
            }
        }
        // Record first: a crash half-way still restores next time.
        let list: String = changes.iter().map(|c| format!("{}\n", c.path)).collect();
        std::fs::write(&dirty, list).map_err(Error::io(&dirty))?;
        for c in changes {
            let path = self.post.join(&c.path);
            unlink(&path)?;
            if let Some(content) = &c.content {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
                }
                std::fs::write(&path, content).map_err(Error::io(&path))?;
            }
        }
        for obj in objects {
            for out in kbuild::object_outputs(&self.post, obj) {
                unlink(&out)?;
            }
        }
        Ok(())
    }
}

/// The target's Module.symvers in the tree root: modpost reads it when the
/// update module is linked with `make -C <tree> M=<dir>`.
fn install_symvers(tree: &Path, symvers: &Path) -> Result<()> {
    if symvers.as_os_str().is_empty() {
        return Ok(());
    }
    let dest = tree.join("Module.symvers");
    let tmp = tree.join(".Module.symvers.tmp");
    std::fs::copy(symvers, &tmp).map_err(Error::io(symvers))?;
    std::fs::rename(&tmp, &dest).map_err(Error::io(&dest))
}

/// `cp -al`, then give the post tree its own copies of what builds rewrite in place.
fn link_copy(pre: &Path, post: &Path) -> Result<()> {
    kbuild::run(Command::new("cp").arg("-al").arg(pre).arg(post), pre)?;
    let tools = post.join("tools");
    remove_dir(&tools)?;
    kbuild::run(
        Command::new("cp")
            .arg("-a")
            .arg(pre.join("tools"))
            .arg(&tools),
        pre,
    )?;
    for f in [".missing-syscalls.d", "Module.symvers"] {
        let p = post.join(f);
        if p.exists() {
            let tmp = post.join(format!("{f}.tmp"));
            std::fs::copy(&p, &tmp).map_err(Error::io(&p))?;
            std::fs::rename(&tmp, &p).map_err(Error::io(&p))?;
        }
    }
    let m = post.join(MARKER);
    unlink(&m)?;
    std::fs::write(&m, "post\n").map_err(Error::io(&m))
}

fn unlink(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            path: p.to_path_buf(),
            source: e,
        }),
    }
}

fn remove_dir(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            path: p.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_input() {
        let k = key("git-abc", b"CONFIG_X=y\n", "6.1.0-56-amd64");
        assert_eq!(k, key("git-abc", b"CONFIG_X=y\n", "6.1.0-56-amd64"));
        assert_ne!(k, key("git-abd", b"CONFIG_X=y\n", "6.1.0-56-amd64"));
        assert_ne!(k, key("git-abc", b"CONFIG_X=m\n", "6.1.0-56-amd64"));
        assert_ne!(k, key("git-abc", b"CONFIG_X=y\n", "6.1.0-57-amd64"));
    }

    /// A reused pair (markers present, so no kbuild runs) is marked used and
    /// evicts an older pair over the cap, never itself.
    #[test]
    fn open_marks_its_pair_used_and_evicts_older_pairs() {
        use std::time::{Duration, SystemTime};
        let d = tempfile::tempdir().expect("tempdir");
        let cache = d.path();
        let base = cache.join("trees");
        let config = cache.join("config");
        std::fs::write(&config, "CONFIG_X=y\n").expect("write");
        let make = Make {
            jobs: 1,
            release: "6.1.0-test".into(),
        };
        let mine = key("git-abc", b"CONFIG_X=y\n", &make.release);
        let epoch = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        for (k, used) in [(mine.as_str(), 100), ("0ld", 200)] {
            for dir in [format!("pre-{k}"), format!("pre-{k}.post")] {
                std::fs::create_dir_all(base.join(&dir)).expect("mkdir");
                std::fs::write(base.join(&dir).join(MARKER), "x\n").expect("write");
                std::fs::write(base.join(&dir).join("a.o"), vec![1; 8192]).expect("write");
            }
            File::create(base.join(format!("pre-{k}.lock")))
                .and_then(|f| f.set_modified(epoch(used)))
                .expect("lock file");
        }
        let pre = PreSource::Dir {
            path: d.path().join("unused"),
            exclude: vec![],
        };
        let before = SystemTime::now() - Duration::from_secs(1);
        let trees =
            Trees::open(cache, &pre, "git-abc", &config, Path::new(""), &make, 1).expect("open");
        assert!(trees.reused);
        let used = std::fs::metadata(base.join(format!("pre-{mine}.lock")))
            .and_then(|m| m.modified())
            .expect("mtime");
        assert!(used >= before, "{used:?}");
        let gone: Vec<&str> = trees
            .eviction
            .evicted
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(gone, ["pre-0ld"]);
        assert!(trees.pre.join(MARKER).is_file() && trees.post.join(MARKER).is_file());
        assert!(!base.join("pre-0ld").exists() && !base.join("pre-0ld.post").exists());
    }

    #[test]
    fn apply_restores_the_previous_change_and_never_writes_shared_inodes() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().expect("tempdir");
        let pre = d.path().join("pre");
        let post = d.path().join("post");
        std::fs::create_dir_all(pre.join("fs")).expect("mkdir");
        std::fs::write(pre.join("fs/a.c"), "pre a\n").expect("write");
        std::fs::write(pre.join("fs/b.c"), "pre b\n").expect("write");
        std::fs::write(pre.join("fs/a.o"), "obj").expect("write");
        kbuild::run(Command::new("cp").arg("-al").arg(&pre).arg(&post), d.path()).expect("cp");
        let trees = Trees {
            pre: pre.clone(),
            post: post.clone(),
            reused: true,
            materialize_time: std::time::Duration::ZERO,
            eviction: evict::Report::default(),
            _lock: File::open(d.path()).expect("dir handle"),
        };
        let change = |p: &str, c: &str| Change {
            path: p.into(),
            content: Some(c.as_bytes().to_vec()),
        };
        trees
            .apply(&[change("fs/a.c", "post a\n")], &["fs/a.o".into()])
            .expect("apply");
        assert_eq!(
            std::fs::read_to_string(pre.join("fs/a.c")).expect("read"),
            "pre a\n"
        );
        assert_eq!(
            std::fs::read_to_string(post.join("fs/a.c")).expect("read"),
            "post a\n"
        );
        assert!(pre.join("fs/a.o").exists() && !post.join("fs/a.o").exists());
        trees
            .apply(&[change("fs/b.c", "post b\n")], &[])
            .expect("apply");
        assert_eq!(
            std::fs::read_to_string(post.join("fs/a.c")).expect("read"),
            "pre a\n"
        );
        let ino = |p: PathBuf| std::fs::metadata(p).expect("stat").ino();
        assert_eq!(ino(pre.join("fs/a.c")), ino(post.join("fs/a.c")));
        assert_eq!(
            std::fs::read_to_string(pre.join("fs/b.c")).expect("read"),
            "pre b\n"
        );
    }
}
