//! Driving the kernel's own build system: prepare a tree, compile single objects, ask what a directory builds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Flags every object is compiled with, in the prepare step too: kbuild
/// records the command line of everything it builds, and a different KCFLAGS
/// later would make it rebuild prepare outputs (bounds.s, asm-offsets.s) in
/// the shared, hard-linked trees.  The include directory is relative (kbuild
/// compiles from the top of the tree), so the command line is the same in the
/// pre and post trees; see [`AUTHOR_INCLUDE`].
pub const KCFLAGS: &str = "-ffunction-sections -fdata-sections -Iksplice-include";

/// Directory, relative to a tree, that holds the patch-author headers
/// (`kpatch-macros.h`, `kpatch-syscall.h`), so patches written for kpatch
/// build unchanged.
pub const AUTHOR_INCLUDE: &str = "ksplice-include";

/// How to call make in a prepared tree.
#[derive(Debug, Clone)]
pub struct Make {
    pub jobs: usize,
    /// The target's `uname -r`: vermagic and include/generated/utsrelease.h.
    pub release: String,
}

impl Make {
    fn command(&self, tree: &Path) -> Command {
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(tree)
            .arg(format!("-j{}", self.jobs.max(1)))
            .arg(format!("KERNELRELEASE={}", self.release))
            .arg(format!("KCFLAGS={KCFLAGS}"))
            .env("LC_ALL", "C");
        c
    }

    /// `make olddefconfig` then `make modules_prepare`, after copying the config.
    pub fn prepare(&self, tree: &Path, config: &Path) -> Result<()> {
        let dot = tree.join(".config");
        std::fs::copy(config, &dot).map_err(Error::io(&dot))?;
        run(self.command(tree).arg("-s").arg("olddefconfig"), tree)?;
        run(self.command(tree).arg("-s").arg("modules_prepare"), tree)
    }

    /// Compile the given objects (paths relative to the tree).
    pub fn objects(&self, tree: &Path, objects: &[String]) -> Result<()> {
        if objects.is_empty() {
            return Ok(());
        }
        run(self.command(tree).arg("-s").args(objects), tree)
    }

    /// Compile the given objects, going on past the ones that fail (`make -k`): the
    /// coverage tool compiles every changed object once for its dependency list, and
    /// one object's compiler error must not hide the others'. Fails only when make
    /// itself cannot run.
    pub fn objects_keep_going(&self, tree: &Path, objects: &[String]) -> Result<bool> {
        if objects.is_empty() {
            return Ok(true);
        }
        let out = self
            .command(tree)
            .arg("-s")
            .arg("-k")
            .args(objects)
            .output()
            .map_err(Error::io("make"))?;
        Ok(out.status.success())
    }

    /// What `make -n -k DIR/...` would compile in several directories at once (one
    /// evaluation of the top Makefile instead of one per directory). A directory make
    /// cannot build only leaves its objects out.
    pub fn dry_run_dirs(
        &self,
        tree: &Path,
        dirs: &[String],
    ) -> Result<HashMap<String, ObjectBuild>> {
        if dirs.is_empty() {
            return Ok(HashMap::new());
        }
        let out = self
            .command(tree)
            .arg("-n")
            .arg("-k")
            .args(dirs.iter().map(|d| format!("{d}/")))
            .output()
            .map_err(Error::io("make"))?;
        Ok(parse_compile_lines(&String::from_utf8_lossy(&out.stdout)))
    }

    /// What `make -n DIR/` would compile in `dir`: object → how kbuild builds it.
    pub fn dry_run_dir(&self, tree: &Path, dir: &str) -> Result<HashMap<String, ObjectBuild>> {
        let out = self
            .command(tree)
            .arg("-n")
            .arg(format!("{dir}/"))
            .output()
            .map_err(Error::io("make"))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("make -n {dir}/"),
                dir: tree.to_path_buf(),
                status: out.status.to_string(),
                output: tail(&out.stderr),
            });
        }
        Ok(parse_compile_lines(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Where and how kbuild builds `obj` (a path in the tree): the compile
    /// line of an earlier build's `.cmd` file, else what `make -n` of the
    /// nearest directory with a Makefile compiles, else what the Makefiles
    /// of nearby directories compile through `../` (amdgpu's Makefile builds
    /// `amdgpu/../display/dc/core/dc.o`; the display directories have no
    /// kbuild Makefile of their own). `listings` caches `make -n` per
    /// directory. `None`: kbuild does not build it under this config.
    pub fn locate(
        &self,
        tree: &Path,
        obj: &str,
        listings: &mut HashMap<String, HashMap<String, ObjectBuild>>,
    ) -> Result<Option<ObjectBuild>> {
        let cmd = object_outputs(tree, obj)[1].clone();
        if let Some(b) = std::fs::read_to_string(&cmd)
            .ok()
            .and_then(|text| parse_compile_lines(&text).remove(obj))
        {
            return Ok(Some(b));
        }
        let own = make_dir(tree, obj);
        if let Some(b) = self.listing(tree, &own, listings)?.get(obj) {
            return Ok(Some(b.clone()));
        }
        // A Makefile that names no objects (`obj-...`) is a fragment another
        // directory's Makefile includes: look for that one among the
        // siblings of the ancestors (not above two levels below the top)
        // whose Makefile reaches out of its directory. A real kbuild
        // Makefile decides alone: its object is not built.
        let names_objects = |dir: &str| {
            ["Makefile", "Kbuild"].iter().any(|m| {
                std::fs::read_to_string(tree.join(dir).join(m)).is_ok_and(|t| t.contains("obj-"))
            })
        };
        if names_objects(&own) {
            return Ok(None);
        }
        // The nearest ancestor whose Makefile names objects may compile it by
        // a path below itself (mlx5's `mlx5_core-y += esw/bridge.o`, where
        // `esw/Makefile` only sets flags).
        let owner = Path::new(&own)
            .ancestors()
            .skip(1)
            .take_while(|a| a.components().count() >= 2)
            .map(|a| a.to_string_lossy().into_owned())
            .find(|a| names_objects(a));
        if let Some(owner) = owner {
            if let Ok(listing) = self.listing(tree, &owner, listings) {
                if let Some(b) = listing.get(obj) {
                    return Ok(Some(b.clone()));
                }
            }
        }
        let mut dirs = Vec::new();
        let mut ancestor = Path::new(&own).parent();
        while let Some(a) = ancestor.filter(|a| a.components().count() >= 2) {
            let mut found: Vec<String> = std::fs::read_dir(tree.join(a))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| a.join(e.file_name()).to_string_lossy().into_owned())
                .filter(|d| {
                    ["Makefile", "Kbuild"].iter().any(|m| {
                        std::fs::read_to_string(tree.join(d).join(m))
                            .is_ok_and(|t| t.contains("../"))
                    })
                })
                .collect();
            found.sort();
            dirs.extend(found);
            ancestor = a.parent();
        }
        for dir in dirs {
            // A directory make cannot list is not where the object comes from.
            let Ok(listing) = self.listing(tree, &dir, listings) else {
                continue;
            };
            if let Some(b) = listing.get(obj) {
                return Ok(Some(b.clone()));
            }
        }
        Ok(None)
    }

    /// `dry_run_dir`, once per directory.
    fn listing<'l>(
        &self,
        tree: &Path,
        dir: &str,
        listings: &'l mut HashMap<String, HashMap<String, ObjectBuild>>,
    ) -> Result<&'l HashMap<String, ObjectBuild>> {
        if !listings.contains_key(dir) {
            let listing = self.dry_run_dir(tree, dir)?;
            listings.insert(dir.to_string(), listing);
        }
        Ok(&listings[dir])
    }
}

/// The directory kbuild descends into for `obj`: the nearest one with a
/// Makefile or Kbuild (objects of a composite may sit in subdirectories).
pub fn make_dir(tree: &Path, obj: &str) -> String {
    let mut dir = Path::new(obj).parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            break;
        }
        if tree.join(d).join("Makefile").is_file() || tree.join(d).join("Kbuild").is_file() {
            return d.to_string_lossy().into_owned();
        }
        dir = d.parent();
    }
    ".".into()
}

/// `a/b/../c/./d` -> `a/c/d`: the tree path of an object kbuild names
/// through `../`.
pub fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if out.last().is_some_and(|p| *p != "..") => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

/// How kbuild compiles one object: into vmlinux or as part of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectBuild {
    /// `None`: built into vmlinux; `Some(name)`: part of module `name`.
    pub module: Option<String>,
    /// The object as kbuild names it, which is what `make` must be asked
    /// for: its path in the tree, or a path through `../` when another
    /// directory's Makefile builds it.
    pub path: String,
}

impl ObjectBuild {
    /// The directory kbuild descends into to build it, when that is not the
    /// object's own (a path through `../`).
    pub fn foreign_dir(&self) -> Option<&str> {
        self.path.split_once("/../").map(|(dir, _)| dir)
    }
}

/// Read `gcc ... -c -o OBJ SRC` lines: `-DMODULE` marks module objects and
/// `-DKBUILD_MODNAME='"name"'` names the module (kbuild evaluated the
/// Makefiles and the config for us). Keys are tree paths (`../` resolved).
pub fn parse_compile_lines(text: &str) -> HashMap<String, ObjectBuild> {
    let mut out = HashMap::new();
    for line in text.lines() {
        // A recipe line holds the compile and, after ';', objtool and fixdep.
        for cmd in line.split("; ") {
            let Some(at) = cmd.find(" -c -o ") else {
                continue;
            };
            let Some(obj) = cmd[at + 7..].split_whitespace().next() else {
                continue;
            };
            if !obj.ends_with(".o") || !cmd.contains("-DKBUILD_BASENAME") {
                continue;
            }
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let module = words.contains(&"-DMODULE").then(|| {
                words
                    .iter()
                    .find_map(|w| w.strip_prefix("-DKBUILD_MODNAME="))
                    // `'"xfs"'` in the command itself, `'\''"xfs"'\''` where kbuild
                    // echoes the command into its .cmd file.
                    .map(|n| n.trim_matches(['\'', '"', '\\']).to_string())
                    .unwrap_or_default()
            });
            // The first compile line of an object is the command itself. Keyed
            // by its tree path: kbuild may name it through `../`.
            let path = obj.trim_start_matches("./").to_string();
            out.entry(normalize(&path))
                .or_insert(ObjectBuild { module, path });
        }
    }
    out
}

/// Run a command; on failure keep the tail of its output for the error.
pub fn run(cmd: &mut Command, dir: &Path) -> Result<()> {
    let out = cmd
        .output()
        .map_err(Error::io(format!("{:?}", cmd.get_program())))?;
    if out.status.success() {
        return Ok(());
    }
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Err(Error::Command {
        command: format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" ")),
        dir: dir.to_path_buf(),
        status: out.status.to_string(),
        output: tail(&[out.stdout, out.stderr].concat()),
    })
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Output files kbuild writes for `obj` (removed in a hard-linked tree before
/// building, so the build writes new inodes instead of the shared ones).
pub fn object_outputs(tree: &Path, obj: &str) -> Vec<PathBuf> {
    let p = Path::new(obj);
    let dir = p.parent().unwrap_or(Path::new(""));
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    vec![
        tree.join(obj),
        tree.join(dir).join(format!(".{name}.cmd")),
        tree.join(dir).join(format!(".{name}.d")),
    ]
}

/// Whether kbuild finished building `obj` in `tree`: the object and its
/// `.cmd` file both exist. kbuild writes `.cmd` (fixdep) only after the
/// compile and objtool succeeded, and deletes the object of a failed or
/// interrupted command, so both present means a complete build. In a pristine
/// pre tree (sources never change, the tree's key covers config, release and
/// flags) such an object is up to date, and `make` on it would only spend
/// kbuild's start-up (about 2 s of compiler probes) finding that out.
pub fn is_built(tree: &Path, obj: &str) -> bool {
    let outputs = object_outputs(tree, obj);
    outputs[0].is_file() && outputs[1].is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree whose top Makefile answers `make -n DIR/` with the compile
    /// line given for DIR in `lines` (the recipe make prints), else nothing.
    fn fake_tree(files: &[(&str, &str)], lines: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let mut top = String::from(".PHONY: FORCE\nFORCE:\n");
        for (dir, line) in lines {
            top.push_str(&format!("{dir}/: FORCE\n\t{line}\n"));
        }
        top.push_str("%/: FORCE\n\t@true\n");
        std::fs::write(d.path().join("Makefile"), top).expect("write");
        for (path, text) in files {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        d
    }

    /// Issue 12: mlx5's esw/bridge.c is compiled by `mlx5/core/Makefile`
    /// (`mlx5_core-y += esw/bridge.o`); `esw/Makefile` only sets flags. In a
    /// tree where it had not been built yet (no `.cmd` file), it was refused
    /// as "not built by the target's config".
    #[test]
    fn an_object_the_parent_makefile_names_by_a_subpath_is_located() {
        let compile = "gcc -DMODULE -DKBUILD_BASENAME=bridge -DKBUILD_MODNAME=mlx5_core -c -o d/m/core/esw/bridge.o d/m/core/esw/bridge.c";
        let t = fake_tree(
            &[
                (
                    "d/m/core/Makefile",
                    "obj-m += mlx5_core.o\nmlx5_core-y += esw/bridge.o\n",
                ),
                ("d/m/core/esw/Makefile", "subdir-ccflags-y += -I$(src)/..\n"),
                ("d/m/core/esw/bridge.c", ""),
                ("d/m/core/esw/off.c", ""),
            ],
            &[("d/m/core", compile)],
        );
        let make = Make {
            jobs: 1,
            release: "6.1.0-test".into(),
        };
        let mut listings = HashMap::new();
        let b = make
            .locate(t.path(), "d/m/core/esw/bridge.o", &mut listings)
            .expect("make runs")
            .expect("located");
        assert_eq!(b.module.as_deref(), Some("mlx5_core"));
        assert_eq!(b.path, "d/m/core/esw/bridge.o");
        // One the owner does not compile stays unbuilt.
        let off = make.locate(t.path(), "d/m/core/esw/off.o", &mut listings);
        assert_eq!(off.expect("make runs"), None);
    }

    #[test]
    fn an_object_is_built_when_it_and_its_cmd_file_exist() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = d.path();
        std::fs::create_dir_all(t.join("fs/proc")).expect("mkdir");
        assert!(!is_built(t, "fs/proc/cmdline.o"));
        std::fs::write(t.join("fs/proc/cmdline.o"), b"obj").expect("write");
        assert!(!is_built(t, "fs/proc/cmdline.o"), "no .cmd: unfinished");
        std::fs::write(t.join("fs/proc/.cmdline.o.cmd"), b"cmd").expect("write");
        assert!(is_built(t, "fs/proc/cmdline.o"));
        std::fs::remove_file(t.join("fs/proc/cmdline.o")).expect("rm");
        assert!(!is_built(t, "fs/proc/cmdline.o"), ".cmd alone: object gone");
    }

    #[test]
    fn compile_lines_tell_vmlinux_from_modules() {
        let text = "set -e;  echo '  CC      fs/proc/cmdline.o'; trap 'rm -f fs/proc/cmdline.o' HUP; gcc -Wp,-MMD,fs/proc/.cmdline.o.d -O2    -DKBUILD_MODFILE='\"fs/proc/proc\"' -DKBUILD_BASENAME='\"cmdline\"' -DKBUILD_MODNAME='\"proc\"' -D__KBUILD_MODNAME=kmod_proc -c -o fs/proc/cmdline.o fs/proc/cmdline.c   ; ./tools/objtool/objtool --orc fs/proc/cmdline.o\n\
gcc -O2 -DMODULE  -DKBUILD_MODFILE='\"fs/xfs/xfs\"' -DKBUILD_BASENAME='\"xfs_stats\"' -DKBUILD_MODNAME='\"xfs\"' -c -o fs/xfs/xfs_stats.o fs/xfs/xfs_stats.c\n\
printf '%s\\n' 'savedcmd_fs/xfs/xfs_stats.o := gcc -O2 -DMODULE -DKBUILD_BASENAME='\\''\"xfs_stats\"'\\'' -DKBUILD_MODNAME='\\''\"xfs\"'\\'' -c -o fs/xfs/xfs_stats.o fs/xfs/xfs_stats.c'\n\
gcc -o scripts/foo scripts/foo.c\n";
        let m = parse_compile_lines(text);
        assert_eq!(
            m,
            HashMap::from([
                (
                    "fs/proc/cmdline.o".to_string(),
                    ObjectBuild {
                        module: None,
                        path: "fs/proc/cmdline.o".into()
                    }
                ),
                (
                    "fs/xfs/xfs_stats.o".to_string(),
                    ObjectBuild {
                        module: Some("xfs".into()),
                        path: "fs/xfs/xfs_stats.o".into()
                    }
                ),
            ])
        );
    }

    /// Issue 12: amdgpu's Makefile compiles its display code as
    /// `amdgpu/../display/...`; the object is found under its tree path and
    /// keeps the name make must be given.
    #[test]
    fn objects_named_through_dot_dot_are_keyed_by_their_tree_path() {
        let text = "gcc -DMODULE -DKBUILD_BASENAME='\"dc\"' -DKBUILD_MODNAME='\"amdgpu\"' -c -o drivers/gpu/drm/amd/amdgpu/../display/dc/core/dc.o drivers/gpu/drm/amd/amdgpu/../display/dc/core/dc.c\n";
        let m = parse_compile_lines(text);
        let b = &m["drivers/gpu/drm/amd/display/dc/core/dc.o"];
        assert_eq!(b.module.as_deref(), Some("amdgpu"));
        assert_eq!(b.path, "drivers/gpu/drm/amd/amdgpu/../display/dc/core/dc.o");
        assert_eq!(b.foreign_dir(), Some("drivers/gpu/drm/amd/amdgpu"));
        assert_eq!(normalize("a/b/../c/./d"), "a/c/d");
        assert_eq!(normalize("../x"), "../x");
    }
}
