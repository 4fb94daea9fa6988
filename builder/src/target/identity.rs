//! The target kernel's identity from its image: vmlinux out of a bzImage, GNU build-id, banner.

use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSegment};

use crate::error::{Error, Result};

/// XZ stream header magic; Debian's bzImage carries its vmlinux as one XZ stream.
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ELF_MAGIC: &[u8] = b"\x7fELF";
/// An uncompressed x86-64 vmlinux is tens of MB; bound the decompression so
/// a hostile image cannot fill memory.
const MAX_VMLINUX: u64 = 512 << 20;

/// The decompressed target vmlinux and what the manifest needs from it.
#[derive(Debug)]
pub struct TargetImage {
    pub path: PathBuf,
    pub elf: Vec<u8>,
    /// Lowercase hex of the GNU build-id note.
    pub build_id: String,
    /// `uname -r` and `uname -v` as the banner (`linux_banner`) spells them.
    pub release: Option<String>,
    pub version: Option<String>,
    /// Link-time address of `_text` (start of `.text`); the image is stripped.
    pub text_addr: u64,
}

impl TargetImage {
    /// Read a vmlinuz (bzImage with an XZ payload) or a plain vmlinux ELF.
    pub fn load(path: &Path) -> Result<TargetImage> {
        let raw = std::fs::read(path).map_err(Error::io(path))?;
        let bad = |reason: String| Error::BadImage {
            path: path.to_path_buf(),
            reason,
        };
        let elf = if raw.starts_with(ELF_MAGIC) {
            raw
        } else {
            let payload = bzimage_payload(&raw)
                .or_else(|| find(&raw, XZ_MAGIC).map(|at| &raw[at..]))
                .filter(|p| p.starts_with(XZ_MAGIC))
                .ok_or_else(|| {
                    bad("neither an ELF vmlinux nor a bzImage with an XZ payload".into())
                })?;
            let at = payload.as_ptr() as usize - raw.as_ptr() as usize;
            let mut out = Vec::new();
            xz2::read::XzDecoder::new(payload)
                .take(MAX_VMLINUX)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("XZ payload at {at:#x}: {e}")))?;
            if !out.starts_with(ELF_MAGIC) {
                return Err(bad("the XZ payload is not an ELF vmlinux".into()));
            }
            out
        };
        let file = object::File::parse(&*elf).map_err(|e| bad(format!("vmlinux ELF: {e}")))?;
        let build_id = file
            .build_id()
            .map_err(|e| bad(format!("build-id note: {e}")))?
            .ok_or_else(|| bad("vmlinux has no GNU build-id note".into()))?;
        let build_id = hex::encode(build_id);
        let text_addr = file
            .section_by_name(".text")
            .map(|s| s.address())
            .ok_or_else(|| bad("vmlinux has no .text section".into()))?;
        let (release, version) = banner(&elf).unzip();
        Ok(TargetImage {
            path: path.to_path_buf(),
            elf,
            build_id,
            release,
            version,
            text_addr,
        })
    }

    /// A section's link-time address and bytes (the kallsyms tables are in `.rodata`).
    pub fn section(&self, name: &str) -> Option<(u64, &[u8])> {
        let file = object::File::parse(&*self.elf).ok()?;
        let section = file.section_by_name(name)?;
        Some((section.address(), section.data().ok()?))
    }

    /// `uname -m` of the kernel, from the ELF machine; `None` for the machines
    /// the builder does not build for (only x86-64 today).
    pub fn arch(&self) -> Option<&'static str> {
        let file = object::File::parse(&*self.elf).ok()?;
        match (file.architecture(), file.is_64()) {
            (object::Architecture::X86_64, true) => Some("x86_64"),
            _ => None,
        }
    }

    /// The NUL-terminated string at link-time address `addr` (at most `max`
    /// bytes), if a loaded segment holds it.
    pub fn c_string_at(&self, addr: u64, max: usize) -> Option<&[u8]> {
        let file = object::File::parse(&*self.elf).ok()?;
        let seg = file
            .segments()
            .find(|s| (s.address()..s.address().saturating_add(s.size())).contains(&addr))?;
        let data = seg.data().ok()?;
        let rest = data.get(usize::try_from(addr - seg.address()).ok()?..)?;
        let rest = &rest[..rest.len().min(max)];
        rest.iter().position(|&b| b == 0).map(|end| &rest[..end])
    }

    /// `len` bytes at link-time virtual address `addr`, if a loaded segment holds them.
    pub fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let file = object::File::parse(&*self.elf).ok()?;
        file.segments()
            .find_map(|seg| seg.data_range(addr, len).ok().flatten())
    }
}

/// The compressed kernel of a bzImage, from its boot protocol header
/// (Documentation/x86/boot.rst: `payload_offset`/`payload_length`), without
/// the 4-byte uncompressed size the build appends (liblzma rejects trailing
/// bytes after the stream).
fn bzimage_payload(raw: &[u8]) -> Option<&[u8]> {
    if raw.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match *raw.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let u32_at = |o: usize| -> Option<usize> {
        let b: [u8; 4] = raw.get(o..o + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?.checked_sub(4)?;
    raw.get(start..start.checked_add(len)?)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Release and version from "Linux version RELEASE (builder) (compiler) VERSION\n",
/// the first such text in `elf`. (Debian's image has two: an early copy in
/// .rodata without the build number, and `linux_banner` with it.)
pub(crate) fn banner(elf: &[u8]) -> Option<(String, String)> {
    let start = find(elf, b"Linux version ")? + b"Linux version ".len();
    let end = start
        + elf[start..]
            .iter()
            .take(1024)
            .position(|&b| b == b'\n' || b == 0)?;
    let line = std::str::from_utf8(&elf[start..end]).ok()?;
    let release = line.split(' ').next()?.to_string();
    // UTS_VERSION starts with '#' (the build number); the compiler text
    // before it has nested parentheses, so search for " #".
    let version = line[line.find(" #")? + 1..].trim_end().to_string();
    Some((release, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_gives_release_and_version() {
        let elf = b"\0\0Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)\n\0";
        let (r, v) = banner(elf).expect("banner found");
        assert_eq!(r, "6.1.0-56-amd64");
        assert_eq!(v, "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)");
    }

    #[test]
    fn non_images_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vmlinuz");
        std::fs::write(&p, b"MZ not a kernel").expect("write");
        let e = TargetImage::load(&p).expect_err("must be refused");
        assert!(matches!(e, Error::BadImage { .. }), "{e}");
        std::fs::write(&p, [b"junk".as_slice(), XZ_MAGIC, b"garbage"].concat()).expect("write");
        let e = TargetImage::load(&p).expect_err("must be refused");
        assert!(e.to_string().contains("XZ payload"), "{e}");
    }
}
