//! Writes a directory tree as an uncompressed `newc` cpio archive, the format the kernel unpacks as initramfs.
//!
//! Uncompressed on purpose: the kernel unpacks it faster than it would inflate
//! gzip under TCG, and the archive only lives for one run.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Writes every entry under `root` (sorted, parents first) to `out`.
pub fn write_tree(root: &Path, out: &Path) -> Result<()> {
    let mut entries = Vec::new();
    collect(root, root, &mut entries)?;
    entries.sort();
    let file = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for (ino, rel) in entries.iter().enumerate() {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = meta.mode();
        let data = if meta.file_type().is_symlink() {
            std::fs::read_link(&path)?
                .to_string_lossy()
                .into_owned()
                .into_bytes()
        } else if meta.is_file() {
            std::fs::read(&path).with_context(|| format!("read {}", path.display()))?
        } else {
            Vec::new()
        };
        let perm_mode = if meta.is_dir() {
            0o040000 | (meta.permissions().mode() & 0o7777)
        } else {
            mode
        };
        entry(&mut w, ino as u32 + 1, perm_mode, rel, &data)?;
    }
    entry(&mut w, 0, 0, "TRAILER!!!", &[])?;
    w.flush()?;
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .expect("invariant: read_dir yields children of root")
            .to_string_lossy()
            .into_owned();
        out.push(rel);
        if e.file_type()?.is_dir() {
            collect(root, &path, out)?;
        }
    }
    Ok(())
}

fn entry(w: &mut impl Write, ino: u32, mode: u32, name: &str, data: &[u8]) -> Result<()> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let namesize = name.len() + 1;
    write!(
        w,
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        namesize,
        0
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    // The header is 110 bytes; name and data are each padded to 4 bytes.
    pad(w, 110 + namesize)?;
    w.write_all(data)?;
    pad(w, data.len())?;
    Ok(())
}

fn pad(w: &mut impl Write, len: usize) -> Result<()> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..n])?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn archive_lists_back_with_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/hello"), b"hi\n").unwrap();
        std::os::unix::fs::symlink("hello", root.join("bin/hi")).unwrap();
        let out = dir.path().join("a.cpio");
        write_tree(&root, &out).unwrap();
        let listed = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::fs::File::open(&out).unwrap())
            .output()
            .unwrap();
        assert!(listed.status.success());
        assert_eq!(
            String::from_utf8(listed.stdout).unwrap(),
            "bin\nbin/hello\nbin/hi\n"
        );
    }
}
