//! The running kernel's identity (release, version, arch, GNU build-id) and
//! the check that a package was built for exactly this kernel.

use std::path::Path;

use manifests::manifest::TargetKernel;

use crate::error::{Error, Result};
use crate::host::Host;

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
/// field 4-byte aligned, as the kernel exports them in /sys/kernel/notes),
/// read with the `object` crate's note iterator.
pub fn gnu_build_id(notes: &[u8], path: &Path) -> Result<String> {
    use object::elf::{FileHeader64, ELF_NOTE_GNU, NT_GNU_BUILD_ID};
    use object::read::elf::NoteIterator;
    use object::NativeEndian;

    let bad = |offset| Error::BadNotes {
        path: path.to_owned(),
        offset,
    };
    let endian = NativeEndian;
    // Notes in /sys/kernel/notes are 4-byte aligned (Elf64_Nhdr is the same
    // 12-byte header as Elf32_Nhdr).
    let mut iter =
        NoteIterator::<FileHeader64<NativeEndian>>::new(endian, 4, notes).map_err(|_| bad(0))?;
    // Where the next note starts, to name the offset of a malformed one.
    let mut offset = 0usize;
    let align4 = |n: usize| n.saturating_add(3) & !3;
    loop {
        match iter.next() {
            Ok(None) => break,
            Ok(Some(note)) => {
                if note.n_type(endian) == NT_GNU_BUILD_ID
                    && note.name() == ELF_NOTE_GNU
                    && !note.desc().is_empty()
                {
                    return Ok(hex::encode(note.desc()));
                }
                offset = offset
                    .saturating_add(12)
                    .saturating_add(align4(note.name_bytes().len()))
                    .saturating_add(align4(note.desc().len()));
            }
            // Trailing padding shorter than a header is not a note.
            Err(_) => {
                let rest = notes.get(offset..).unwrap_or_default();
                if rest.len() < 12 && rest.iter().all(|&b| b == 0) {
                    break;
                }
                return Err(bad(offset));
            }
        }
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
    fn trailing_zero_padding_is_not_a_note() {
        let mut notes = note(b"Linux\0", 6, b"6.1.0\0");
        notes.extend_from_slice(&[0; 8]);
        assert!(matches!(
            gnu_build_id(&notes, Path::new("n")),
            Err(Error::NoBuildId { .. })
        ));
        notes.extend(note(b"GNU\0", 3, &[0xab; 20]));
        let mut bad = note(b"Linux\0", 6, b"6.1.0\0");
        let second = bad.len();
        bad.extend_from_slice(&[1; 8]);
        assert!(matches!(
            gnu_build_id(&bad, Path::new("n")),
            Err(Error::BadNotes { offset, .. }) if offset == second
        ));
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
