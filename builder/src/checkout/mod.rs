//! Where the pre and post sources come from: SRC + FILE.EXT, SRC + patch, or two git refs (git2).

pub(crate) mod affected;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How the user described the change.
#[derive(Debug, Clone)]
pub enum Source {
    /// `--diffext=EXT SRC`: `FILE.EXT` beside each changed `FILE`.
    DiffExt { src: PathBuf, ext: String },
    /// `--patch=FILE SRC`. `fingerprint` is [`source_fingerprint`] of `src`
    /// when the caller has it already: a release job walks its pristine source
    /// once for all its levels, not once per level (about 2 s each).
    Patch {
        src: PathBuf,
        patch: PathBuf,
        fingerprint: Option<String>,
    },
    /// `--git REPO --pre REF (--post REF | --patch FILE)`.
    Git {
        repo: PathBuf,
        pre: String,
        post: GitPost,
    },
}

/// The post side of a git source.
#[derive(Debug, Clone)]
pub enum GitPost {
    Ref(String),
    Patch(PathBuf),
}

/// The pre source, resolved: what identifies it and how to copy it out.
#[derive(Debug)]
pub enum PreSource {
    /// A directory on disk (SRC), minus the files listed in `exclude`.
    Dir { path: PathBuf, exclude: Vec<String> },
    /// A git tree.
    GitTree { repo: PathBuf, commit: git2::Oid },
}

/// One changed file: path relative to the tree root, new content or `None` when deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub content: Option<Vec<u8>>,
}

/// The resolved source: pre tree identity and the change on top of it.
#[derive(Debug)]
pub struct Checkout {
    pub pre: PreSource,
    /// Identifies the pre source content: a commit id or a tree fingerprint.
    pub pre_id: String,
    /// Known now for --diffext and --git --post; a patch is applied once the
    /// pre tree is on disk (see [`apply_patch`]).
    pub changes: Option<Vec<Change>>,
    pub patch: Option<PathBuf>,
    /// A name for the default update id (patch file, branch or `FILE`).
    pub name_hint: String,
    /// The change as a unified diff (for the package), when known now.
    pub diff_text: Option<String>,
}

/// Resolve the source: read refs and changed files, fingerprint SRC.
pub fn resolve(source: &Source) -> Result<Checkout> {
    match source {
        Source::DiffExt { src, ext } => {
            let suffix = format!(".{ext}");
            let mut found = Vec::new();
            walk(src, src, &mut |rel, _| {
                if let Some(orig) = rel.strip_suffix(&suffix) {
                    found.push(orig.to_string());
                }
            })?;
            found.sort();
            if found.is_empty() {
                return Err(Error::Missing {
                    what: "changed files",
                    hint: format!("no FILE{suffix} found under {}", src.display()),
                });
            }
            let mut changes = Vec::new();
            let mut diff_text = String::new();
            for orig in &found {
                let new = src.join(format!("{orig}{suffix}"));
                let content = std::fs::read(&new).map_err(Error::io(&new))?;
                diff_text.push_str(&unified_diff(&src.join(orig), &new, orig)?);
                changes.push(Change {
                    path: orig.clone(),
                    content: Some(content),
                });
            }
            let exclude: Vec<String> = found.iter().map(|f| format!("{f}{suffix}")).collect();
            let pre_id = fingerprint(src, &suffix)?;
            let name_hint = found
                .first()
                .and_then(|f| Path::new(f).file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Checkout {
                pre: PreSource::Dir {
                    path: src.clone(),
                    exclude,
                },
                pre_id,
                changes: Some(changes),
                patch: None,
                name_hint,
                diff_text: Some(diff_text),
            })
        }
        Source::Patch {
            src,
            patch,
            fingerprint: known,
        } => Ok(Checkout {
            pre: PreSource::Dir {
                path: src.clone(),
                exclude: Vec::new(),
            },
            pre_id: match known {
                Some(f) => f.clone(),
                None => source_fingerprint(src)?,
            },
            changes: None,
            patch: Some(patch.clone()),
            name_hint: stem(patch),
            diff_text: None,
        }),
        Source::Git { repo, pre, post } => {
            let r = git2::Repository::open(repo)
                .map_err(Error::git(format!("open {}", repo.display())))?;
            let pre_commit = peel(&r, pre)?;
            let (changes, diff_text, name_hint, patch) = match post {
                GitPost::Ref(post_ref) => {
                    let post_commit = peel(&r, post_ref)?;
                    let (changes, text) = tree_diff(&r, &pre_commit, &post_commit)?;
                    let hint = post_ref.rsplit('/').next().unwrap_or(post_ref).to_string();
                    (Some(changes), Some(text), hint, None)
                }
                GitPost::Patch(p) => (None, None, stem(p), Some(p.clone())),
            };
            Ok(Checkout {
                pre: PreSource::GitTree {
                    repo: repo.clone(),
                    commit: pre_commit.id(),
                },
                pre_id: format!("git-{}", pre_commit.id()),
                changes,
                patch,
                name_hint,
                diff_text,
            })
        }
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn peel<'r>(r: &'r git2::Repository, spec: &str) -> Result<git2::Commit<'r>> {
    r.revparse_single(spec)
        .and_then(|o| o.peel_to_commit())
        .map_err(Error::git(format!("resolve {spec}")))
}

/// Changed files between two commits, with post content, and the diff text.
fn tree_diff(
    r: &git2::Repository,
    pre: &git2::Commit<'_>,
    post: &git2::Commit<'_>,
) -> Result<(Vec<Change>, String)> {
    let pre_tree = pre.tree().map_err(Error::git("pre tree"))?;
    let post_tree = post.tree().map_err(Error::git("post tree"))?;
    let diff = r
        .diff_tree_to_tree(Some(&pre_tree), Some(&post_tree), None)
        .map_err(Error::git("diff pre..post"))?;
    let mut changes = Vec::new();
    for delta in diff.deltas() {
        let new = delta.new_file();
        let path = new
            .path()
            .or_else(|| delta.old_file().path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let content = if delta.status() == git2::Delta::Deleted {
            None
        } else {
            let blob = r
                .find_blob(new.id())
                .map_err(Error::git(format!("blob of {path}")))?;
            Some(blob.content().to_vec())
        };
        if let Some(old) = delta.old_file().path() {
            let old = old.to_string_lossy().into_owned();
            if delta.status() == git2::Delta::Renamed && old != path {
                changes.push(Change {
                    path: old,
                    content: None,
                });
            }
        }
        changes.push(Change { path, content });
    }
    let mut text = Vec::new();
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        if matches!(line.origin(), '+' | '-' | ' ') {
            text.push(line.origin() as u8);
        }
        text.extend_from_slice(line.content());
        true
    })
    .map_err(Error::git("print diff"))?;
    Ok((changes, String::from_utf8_lossy(&text).into_owned()))
}

/// Write the pre source into `dest` (which must not exist).
pub fn materialize(pre: &PreSource, dest: &Path) -> Result<()> {
    match pre {
        PreSource::Dir { path, exclude } => {
            // rsync keeps modes and times (make compares them) and lets us
            // leave out the post files, the profile and any VCS metadata.
            let mut cmd = Command::new("rsync");
            cmd.arg("-a")
                .arg("--exclude=/ksplice/")
                .arg("--exclude=/.git/");
            for e in exclude {
                cmd.arg(format!("--exclude=/{e}"));
            }
            cmd.arg(format!("{}/", path.display())).arg(dest);
            crate::tree::kbuild::run(&mut cmd, path)
        }
        PreSource::GitTree { repo, commit } => {
            let r = git2::Repository::open(repo)
                .map_err(Error::git(format!("open {}", repo.display())))?;
            let tree = r
                .find_commit(*commit)
                .and_then(|c| c.tree())
                .map_err(Error::git(format!("tree of {commit}")))?;
            // List the blobs, then write them on every core, one repository
            // handle per worker (git2 handles are not Sync): libgit2's own
            // checkout is single-threaded and the cold build waits for it.
            let mut blobs = Vec::new();
            tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
                if entry.kind() == Some(git2::ObjectType::Blob) {
                    let name = entry.name().unwrap_or_default();
                    blobs.push((format!("{dir}{name}"), entry.id(), entry.filemode()));
                }
                git2::TreeWalkResult::Ok
            })
            .map_err(Error::git(format!("walk tree of {commit}")))?;
            let mut dirs: Vec<&Path> = blobs
                .iter()
                .filter_map(|(p, _, _)| Path::new(p).parent())
                .collect();
            dirs.sort_unstable();
            dirs.dedup();
            for d in std::iter::once(Path::new("")).chain(dirs) {
                let p = dest.join(d);
                std::fs::create_dir_all(&p).map_err(Error::io(&p))?;
            }
            use rayon::prelude::*;
            blobs.par_iter().try_for_each_init(
                || git2::Repository::open(repo),
                |r, (path, oid, mode)| -> Result<()> {
                    let r = r.as_ref().map_err(|e| Error::Git {
                        what: format!("open {}", repo.display()),
                        source: git2::Error::from_str(e.message()),
                    })?;
                    let blob = r
                        .find_blob(*oid)
                        .map_err(Error::git(format!("blob {path}")))?;
                    write_blob(&dest.join(path), blob.content(), *mode)
                },
            )
        }
    }
}

/// Write one git blob as a file (0644 / 0755) or a symlink (mode 120000).
fn write_blob(path: &Path, content: &[u8], mode: i32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if mode == 0o120000 {
        let target = std::ffi::OsStr::from_bytes(content);
        return std::os::unix::fs::symlink(target, path).map_err(Error::io(path));
    }
    std::fs::write(path, content).map_err(Error::io(path))?;
    if mode == 0o100755 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io(path))?;
    }
    Ok(())
}

/// Apply a unified diff to copies of the files it touches in `pre_tree`; the
/// pre tree itself is left untouched.
pub fn apply_patch(patch: &Path, pre_tree: &Path, scratch: &Path) -> Result<(Vec<Change>, String)> {
    // `patch` runs in `scratch` (-d): a relative path must not be resolved there.
    let patch = &std::path::absolute(patch).map_err(Error::io(patch))?;
    let text = std::fs::read_to_string(patch).map_err(Error::io(patch))?;
    let files = patch_files(&text);
    if files.is_empty() {
        return Err(Error::PatchDoesNotApply {
            patch: patch.to_path_buf(),
            output: "no file headers (+++ / ---) found".into(),
        });
    }
    std::fs::create_dir_all(scratch).map_err(Error::io(scratch))?;
    for f in &files {
        let from = pre_tree.join(f);
        if from.is_file() {
            let to = scratch.join(f);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
            }
            std::fs::copy(&from, &to).map_err(Error::io(&from))?;
        }
    }
    let out = Command::new("patch")
        .args([
            "-p1",
            "--batch",
            "--forward",
            "--no-backup-if-mismatch",
            "-s",
            "-d",
        ])
        .arg(scratch)
        .arg("-i")
        .arg(patch)
        .output()
        .map_err(Error::io("patch"))?;
    if !out.status.success() {
        return Err(Error::PatchDoesNotApply {
            patch: patch.to_path_buf(),
            output: String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned(),
        });
    }
    let mut changes = Vec::new();
    for f in files {
        let p = scratch.join(&f);
        let content = match std::fs::read(&p) {
            Ok(c) => Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Io { path: p, source: e }),
        };
        changes.push(Change { path: f, content });
    }
    Ok((changes, text))
}

/// Paths a unified diff touches, with the first component stripped (`-p1`).
pub fn patch_files(text: &str) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut old: Option<String> = None;
    for line in text.lines() {
        let strip = |l: &str| -> Option<String> {
            let p = l.split('\t').next()?.trim_end();
            if p == "/dev/null" {
                return None;
            }
            p.split_once('/').map(|(_, rest)| rest.to_string())
        };
        if let Some(l) = line.strip_prefix("--- ") {
            old = strip(l);
        } else if let Some(l) = line.strip_prefix("+++ ") {
            match strip(l).or(old.take()) {
                Some(p) => {
                    out.insert(p);
                }
                None => continue,
            }
        }
    }
    out.into_iter().collect()
}

/// A unified diff of one file for the package (diff(1) exits 1 on differences).
fn unified_diff(old: &Path, new: &Path, rel: &str) -> Result<String> {
    let old_arg = if old.exists() {
        old.to_path_buf()
    } else {
        PathBuf::from("/dev/null")
    };
    let out = Command::new("diff")
        .arg("-u")
        .arg(format!("--label=a/{rel}"))
        .arg(format!("--label=b/{rel}"))
        .arg(&old_arg)
        .arg(new)
        .output()
        .map_err(Error::io("diff"))?;
    match out.status.code() {
        Some(0 | 1) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => Err(Error::Command {
            command: format!("diff -u {} {}", old.display(), new.display()),
            dir: PathBuf::from("."),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}

/// Visit every regular file under `root` (relative path, metadata), skipping
/// `.git` and the `ksplice/` profile directory.
fn walk(root: &Path, dir: &Path, f: &mut dyn FnMut(&str, &std::fs::Metadata)) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .collect::<std::io::Result<_>>()
        .map_err(Error::io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .expect("invariant: walked paths are under the root")
            .to_string_lossy()
            .into_owned();
        if rel == ".git" || rel == "ksplice" {
            continue;
        }
        let md = std::fs::symlink_metadata(&path).map_err(Error::io(&path))?;
        if md.is_dir() {
            walk(root, &path, f)?;
        } else if md.is_file() {
            f(&rel, &md);
        }
    }
    Ok(())
}

/// Identify SRC's content cheaply: path, size and mtime of every file except
/// the post files (`*SUFFIX`); a real content change moves the mtime.
/// The fingerprint a `--patch` source tree's prepared trees are keyed by
/// (every file's path, size and mtime; `.config` aside).
pub fn source_fingerprint(src: &Path) -> Result<String> {
    fingerprint(src, "\0")
}

fn fingerprint(src: &Path, skip_suffix: &str) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    let mut files = BTreeMap::new();
    walk(src, src, &mut |rel, md| {
        if !rel.ends_with(skip_suffix) && rel != ".config" {
            files.insert(rel.to_string(), (md.size(), md.mtime(), md.mtime_nsec()));
        }
    })?;
    for (rel, (size, s, ns)) in files {
        h.update(format!("{rel}\0{size}\0{s}.{ns}\n"));
    }
    Ok(format!("src-{}", hex::encode(&h.finalize()[..16])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_headers_give_stripped_paths() {
        let p = "diff -Nupr src.orig/fs/proc/cmdline.c src/fs/proc/cmdline.c\n--- src.orig/fs/proc/cmdline.c\t2022\n+++ src/fs/proc/cmdline.c\t2022\n@@ -1 +1 @@\n-a\n+b\n--- a/gone.c\n+++ /dev/null\n--- /dev/null\n+++ b/new.c\n";
        assert_eq!(patch_files(p), vec!["fs/proc/cmdline.c", "gone.c", "new.c"]);
    }

    #[test]
    fn patches_apply_to_copies_and_bad_patches_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let pre = d.path().join("pre");
        std::fs::create_dir_all(pre.join("fs/proc")).expect("mkdir");
        std::fs::write(pre.join("fs/proc/cmdline.c"), "a\nb\nc\n").expect("write");
        let patch = d.path().join("fix.patch");
        std::fs::write(
            &patch,
            "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n",
        )
        .expect("write");
        let (changes, text) =
            apply_patch(&patch, &pre, &d.path().join("scratch")).expect("applies");
        assert_eq!(
            changes,
            vec![Change {
                path: "fs/proc/cmdline.c".into(),
                content: Some(b"a\nB\nc\n".to_vec())
            }]
        );
        assert!(text.contains("+B"));
        assert_eq!(
            std::fs::read_to_string(pre.join("fs/proc/cmdline.c")).expect("read"),
            "a\nb\nc\n"
        );
        std::fs::write(
            &patch,
            "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1,3 +1,3 @@\n x\n-y\n+Y\n z\n",
        )
        .expect("write");
        let e = apply_patch(&patch, &pre, &d.path().join("scratch2")).expect_err("must not apply");
        assert!(matches!(e, Error::PatchDoesNotApply { .. }), "{e}");
    }

    /// Commit `files` (path, content, mode) on top of `parent` with git2.
    fn commit(
        r: &git2::Repository,
        parent: Option<git2::Oid>,
        files: &[(&str, &str, i32)],
    ) -> git2::Oid {
        let mut index = git2::Index::new().expect("index");
        for (path, content, mode) in files {
            let oid = r.blob(content.as_bytes()).expect("blob");
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: *mode as u32,
                uid: 0,
                gid: 0,
                file_size: content.len() as u32,
                id: oid,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).expect("add");
        }
        let tree = r
            .find_tree(index.write_tree_to(r).expect("tree"))
            .expect("tree");
        let sig = git2::Signature::now("t", "t@localhost").expect("sig");
        let parents: Vec<git2::Commit<'_>> = parent
            .map(|p| r.find_commit(p).expect("parent"))
            .into_iter()
            .collect();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        r.commit(None, &sig, &sig, "c", &tree, &refs)
            .expect("commit")
    }

    #[test]
    fn git_source_lists_changes_and_materializes_the_pre_tree() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let r = git2::Repository::init_bare(d.path().join("repo.git")).expect("init");
        let pre = commit(
            &r,
            None,
            &[
                ("fs/proc/cmdline.c", "pre\n", 0o100644),
                ("scripts/run.sh", "#!/bin/sh\n", 0o100755),
                ("link", "fs/proc/cmdline.c", 0o120000),
            ],
        );
        let post = commit(
            &r,
            Some(pre),
            &[
                ("fs/proc/cmdline.c", "post\n", 0o100644),
                ("scripts/run.sh", "#!/bin/sh\n", 0o100755),
                ("link", "fs/proc/cmdline.c", 0o120000),
            ],
        );
        r.branch("pre", &r.find_commit(pre).expect("c"), false)
            .expect("branch");
        r.branch("fix", &r.find_commit(post).expect("c"), false)
            .expect("branch");
        let src = Source::Git {
            repo: d.path().join("repo.git"),
            pre: "pre".into(),
            post: GitPost::Ref("fix".into()),
        };
        let c = resolve(&src).expect("resolves");
        assert_eq!(c.pre_id, format!("git-{pre}"));
        assert_eq!(c.name_hint, "fix");
        assert_eq!(
            c.changes,
            Some(vec![Change {
                path: "fs/proc/cmdline.c".into(),
                content: Some(b"post\n".to_vec())
            }])
        );
        assert!(c.diff_text.as_deref().unwrap_or("").contains("+post"));
        let dest = d.path().join("tree");
        materialize(&c.pre, &dest).expect("materialize");
        assert_eq!(
            std::fs::read_to_string(dest.join("fs/proc/cmdline.c")).expect("read"),
            "pre\n"
        );
        let mode = std::fs::metadata(dest.join("scripts/run.sh"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(
            std::fs::read_link(dest.join("link")).expect("symlink"),
            PathBuf::from("fs/proc/cmdline.c")
        );
    }

    #[test]
    fn diffext_lists_changes_and_fingerprints_without_post_files() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("fs/proc")).expect("mkdir");
        std::fs::write(d.path().join("fs/proc/cmdline.c"), "a\n").expect("write");
        std::fs::write(d.path().join("fs/proc/cmdline.c.new"), "b\n").expect("write");
        let src = Source::DiffExt {
            src: d.path().to_path_buf(),
            ext: "new".into(),
        };
        let c = resolve(&src).expect("resolves");
        assert_eq!(
            c.changes,
            Some(vec![Change {
                path: "fs/proc/cmdline.c".into(),
                content: Some(b"b\n".to_vec())
            }])
        );
        assert!(c.diff_text.as_deref().unwrap_or("").contains("+b"));
        // A different post file does not change the pre tree's identity.
        std::fs::write(d.path().join("fs/proc/cmdline.c.new"), "cc\n").expect("write");
        assert_eq!(resolve(&src).expect("resolves").pre_id, c.pre_id);
        std::fs::write(d.path().join("fs/proc/other.c"), "x\n").expect("write");
        assert_ne!(resolve(&src).expect("resolves").pre_id, c.pre_id);
    }
}
