//! The running kernel's identity (release, version, arch, GNU build-id) and
//! the check that a package was built for exactly this kernel.

use std::path::Path;

use manifests::manifest::TargetKernel;

use crate::error::{Error, Result};
use crate::host::Host;

/// ELF note type of the GNU build-id (`NT_GNU_BUILD_ID`).
const NT_GNU_BUILD_ID: u32 = 3;
/// /sys/kernel/notes is a few hundred bytes; refuse anything absurd.
const MAX_NOTES: u64 = 64 * 1024;

/// What the running kernel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub release: String,
    pub version: String,
    pub arch: String,
    pub build_id: String,
}

impl Running {
    /// Read uname(2) and the build-id from `/sys/kernel/notes`.
    pub fn read(host: &Host<'_>) -> Result<Self> {
        let uts = host.sys.uname().map_err(|e| Error::io("uname(2)", e))?;
        let notes_path = host.path("/sys/kernel/notes");
        let notes = read_bounded(&notes_path, MAX_NOTES)?;
        let build_id = gnu_build_id(&notes, &notes_path)?;
        Ok(Running {
            release: uts.release,
            version: uts.version,
            arch: uts.machine,
            build_id,
        })
    }

    /// Refuse a package built for another kernel, naming the first field that
    /// differs and both values. The build-id is checked last because it is the
    /// least readable: release/version/arch mismatches say more to an admin.
    pub fn check(&self, id: &str, target: &TargetKernel) -> Result<()> {
        let fields: [(&'static str, &str, &str); 4] = [
            ("arch", &target.arch, &self.arch),
            ("release", &target.release, &self.release),
            ("version", &target.version, &self.version),
            ("build-id", &target.build_id, &self.build_id),
        ];
        for (field, expected, running) in fields {
            let same = if field == "build-id" {
                expected.eq_ignore_ascii_case(running)
            } else {
                expected == running
            };
            if !same {
                return Err(Error::KernelMismatch {
                    id: id.to_owned(),
                    field,
                    expected: expected.to_owned(),
                    running: running.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Whether a package's target is this kernel (for `apply --installed`).
    pub fn matches(&self, target: &TargetKernel) -> bool {
        self.check("", target).is_ok()
    }
}

pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::new();
    f.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// Find the GNU build-id in a sequence of ELF notes (native byte order, each
/// field 4-byte aligned, as the kernel exports them in /sys/kernel/notes).
pub fn gnu_build_id(notes: &[u8], path: &Path) -> Result<String> {
    let bad = |offset| Error::BadNotes {
        path: path.to_owned(),
        offset,
    };
    let word = |at: usize| -> Option<u32> {
        let b = notes.get(at..at.checked_add(4)?)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    let mut off = 0usize;
    while off < notes.len() {
        // Trailing padding shorter than a header is not a note.
        if notes.len() - off < 12 {
            if notes[off..].iter().all(|&b| b == 0) {
                break;
            }
            return Err(bad(off));
        }
        let (namesz, descsz, kind) = match (word(off), word(off + 4), word(off + 8)) {
            (Some(a), Some(b), Some(c)) => (a as usize, b as usize, c),
            _ => return Err(bad(off)),
        };
        let name_at = off + 12;
        let desc_at = align4(namesz)
            .and_then(|n| name_at.checked_add(n))
            .ok_or_else(|| bad(off))?;
        let next = align4(descsz)
            .and_then(|n| desc_at.checked_add(n))
            .ok_or_else(|| bad(off))?;
        if next > notes.len() || desc_at + descsz > notes.len() {
            return Err(bad(off));
        }
        let name = &notes[name_at..name_at + namesz];
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && descsz > 0 {
            return Ok(hex::encode(&notes[desc_at..desc_at + descsz]));
        }
        off = next;
    }
    Err(Error::NoBuildId {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(name);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn finds_build_id_after_other_notes() {
        let mut notes = note(b"Linux\0", 6, b"6.1.0\0");
        notes.extend(note(b"Xen\0", 0x13, &[0; 8]));
        notes.extend(note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 0x01]));
        let id = gnu_build_id(&notes, Path::new("notes")).expect("valid notes");
        assert_eq!(id, "deadbeef01");
    }

    #[test]
    fn other_owner_with_type_3_is_not_a_build_id() {
        let notes = note(b"Xen\0", 3, &[1, 2, 3, 4]);
        assert!(matches!(
            gnu_build_id(&notes, Path::new("n")),
            Err(Error::NoBuildId { .. })
        ));
    }

    #[test]
    fn truncated_note_is_refused_not_panicking() {
        let notes = note(b"GNU\0", 3, &[0xaa; 20]);
        for cut in 1..notes.len() {
            let r = gnu_build_id(&notes[..cut], Path::new("n"));
            assert!(
                matches!(r, Err(Error::BadNotes { offset: 0, .. })),
                "cut {cut}: {r:?}"
            );
        }
        let mut huge = note(b"GNU\0", 3, &[0xaa; 4]);
        huge[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            gnu_build_id(&huge, Path::new("n")),
            Err(Error::BadNotes { .. })
        ));
    }

    #[test]
    fn mismatch_names_field_and_both_values() {
        let running = Running {
            release: "6.1.0-56-amd64".into(),
            version: "#1 SMP".into(),
            arch: "x86_64".into(),
            build_id: "abcd".into(),
        };
        let mut t = TargetKernel {
            release: "6.1.0-56-amd64".into(),
            version: "#1 SMP".into(),
            arch: "x86_64".into(),
            build_id: "ABCD".into(),
        };
        running.check("u", &t).expect("same kernel");
        t.build_id = "abce".into();
        match running.check("u", &t) {
            Err(Error::KernelMismatch {
                field,
                expected,
                running,
                ..
            }) => {
                assert_eq!(
                    (field, expected.as_str(), running.as_str()),
                    ("build-id", "abce", "abcd")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        t.arch = "aarch64".into();
        assert!(matches!(
            running.check("u", &t),
            Err(Error::KernelMismatch { field: "arch", .. })
        ));
    }
}
