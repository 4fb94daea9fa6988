//! The one tar dialect a package uses: the exact ustar header `write_package` emits, and
//! the reader's check that every header is byte for byte that header.
//!
//! Defined once here so that writer and reader cannot drift apart (docs/package-format.md,
//! "The archive"). Field layout: POSIX.1-1988 ustar, as in `pax(1)` "ustar Header Block".

use std::ops::Range;

use crate::entry_name::{self, EntryName, NameProblem};
use crate::error::{Error, Result};

/// Size of a tar block; headers are one block, data is padded to whole blocks.
pub(crate) const BLOCK: usize = 512;
/// A header block.
pub(crate) type Block = [u8; BLOCK];

const NAME: Range<usize> = 0..100;
const MODE: Range<usize> = 100..108;
const UID: Range<usize> = 108..116;
const GID: Range<usize> = 116..124;
const SIZE: Range<usize> = 124..136;
const MTIME: Range<usize> = 136..148;
const CHKSUM: Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: Range<usize> = 157..257;
const MAGIC: Range<usize> = 257..263;
const VERSION: Range<usize> = 263..265;
const UNAME: Range<usize> = 265..297;
const GNAME: Range<usize> = 297..329;
const DEVMAJOR: Range<usize> = 329..337;
const DEVMINOR: Range<usize> = 337..345;
const PREFIX: Range<usize> = 345..500;
const RESERVED: Range<usize> = 500..512;

/// Every header field the reader compares, with the name an error gives it, in the order
/// they are compared. `name`, `size`, `typeflag`, `magic` and `version` are checked first
/// on their own; the mode, owner and checksum have their own error variants.
const OTHER_FIELDS: [(Range<usize>, &str); 6] = [
    (MTIME, "mtime"),
    (LINKNAME, "linkname"),
    (DEVMAJOR, "devmajor"),
    (DEVMINOR, "devminor"),
    (PREFIX, "prefix"),
    (RESERVED, "reserved bytes"),
];

/// The only entry mode written and accepted.
pub(crate) const ENTRY_MODE: u32 = 0o644;

/// Writes `value` as `dst.len() - 1` zero-padded octal digits and a NUL (what GNU tar and
/// the tar crate write). Values that do not fit cannot occur: sizes are capped far below
/// the 8 GiB eleven digits hold.
fn octal(dst: &mut [u8], value: u64) {
    let (digits, nul) = dst.split_at_mut(dst.len() - 1);
    nul[0] = 0;
    let mut v = value;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    debug_assert_eq!(
        v, 0,
        "invariant: tar numbers are capped below their field width"
    );
}

/// Parses a field written by [`octal`]: exactly `len - 1` octal digits and a NUL.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let (digits, nul) = field.split_at(field.len() - 1);
    if nul != [0] || !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |acc, &d| (acc << 3) | u64::from(d - b'0')),
    )
}

fn checksum(block: &Block) -> u64 {
    // The checksum field itself counts as eight spaces.
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| u64::from(if CHKSUM.contains(&i) { b' ' } else { b }))
        .sum()
}

/// The header `write_package` writes for a regular file `name` (at most 100 bytes, a
/// checked name) of `size` bytes: ustar magic and version `00`, typeflag `0`, the name
/// NUL-padded in the name field, mode 0644, uid and gid 0, mtime 0, every other field zero.
pub(crate) fn header(name: &str, size: u64) -> Block {
    let mut block = [0u8; BLOCK];
    block[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut block[MODE], u64::from(ENTRY_MODE));
    octal(&mut block[UID], 0);
    octal(&mut block[GID], 0);
    octal(&mut block[SIZE], size);
    octal(&mut block[MTIME], 0);
    block[TYPEFLAG] = b'0';
    block[MAGIC].copy_from_slice(b"ustar\0");
    block[VERSION].copy_from_slice(b"00");
    let sum = checksum(&block);
    octal(&mut block[CHKSUM], sum);
    block
}

/// One checked header: a valid name and the data size.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) name: EntryName,
    pub(crate) size: u64,
}

/// Checks that a non-zero header block is exactly [`header`]`(name, size)` for its own name
/// and size, and returns those. Each difference has its own error:
///
/// 1. magic and version must be `ustar\0` `00` (refuses v7 and GNU headers);
/// 2. the name field holds a valid relative name, NUL-padded (no bytes after the NUL);
/// 3. the typeflag is `0` (not `\0`, the pre-POSIX regular file, nor links or specials);
/// 4. the size is eleven octal digits and a NUL;
/// 5. mode 0644, uid/gid 0 with empty user and group names, then every other field;
/// 6. the checksum.
pub(crate) fn check_header(block: &Block) -> Result<Header> {
    let field = &block[NAME];
    let raw = match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    };
    let entry = || entry_name::display(raw);
    // 1.
    if block[MAGIC] != *b"ustar\0" || block[VERSION] != *b"00" {
        return Err(Error::NotUstar { entry: entry() });
    }
    // 2.
    if field[raw.len()..].iter().any(|&b| b != 0) {
        return Err(Error::NameNotNulPadded { entry: entry() });
    }
    let name = match EntryName::new(raw) {
        Ok(name) => name,
        Err(NameProblem::Absolute) => return Err(Error::AbsolutePath { entry: entry() }),
        Err(NameProblem::ParentDirectory) => return Err(Error::ParentDirectory { entry: entry() }),
        Err(NameProblem::Invalid(reason)) => {
            return Err(Error::InvalidEntryName {
                entry: entry(),
                reason,
            })
        }
    };
    // 3.
    match block[TYPEFLAG] {
        b'0' => {}
        b'1' => return Err(Error::Hardlink { entry: entry() }),
        b'2' => return Err(Error::Symlink { entry: entry() }),
        b'3' | b'4' => return Err(Error::DeviceFile { entry: entry() }),
        b'6' => return Err(Error::Fifo { entry: entry() }),
        other => {
            return Err(Error::UnsupportedEntryType {
                entry: entry(),
                typeflag: char::from(other),
            })
        }
    }
    // 4.
    let Some(size) = parse_octal(&block[SIZE]) else {
        return Err(Error::NonCanonicalHeader {
            entry: entry(),
            field: "size",
        });
    };
    // 5.
    let expected = header(name.as_str(), size);
    if block[MODE] != expected[MODE] {
        return Err(Error::EntryMode {
            entry: entry(),
            mode: entry_name::display(&block[MODE]),
        });
    }
    for owner in [UID, GID, UNAME, GNAME] {
        if block[owner.clone()] != expected[owner] {
            return Err(Error::EntryOwner { entry: entry() });
        }
    }
    for (range, what) in OTHER_FIELDS {
        if block[range.clone()] != expected[range] {
            return Err(Error::NonCanonicalHeader {
                entry: entry(),
                field: what,
            });
        }
    }
    // 6. Every other byte now equals the canonical header, so this compares the stored
    //    checksum with the right one, and its encoding too.
    if block[CHKSUM] != expected[CHKSUM] {
        return Err(Error::HeaderChecksum { entry: entry() });
    }
    debug_assert_eq!(block, &expected);
    Ok(Header { name, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_what_the_tar_crate_writes_for_pack() {
        // The headers packages were written with before this module existed.
        for (name, size) in [("manifest.toml", 0u64), ("a/b.ko", 123_456_789), ("x", 7)] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_path(name).expect("path");
            h.set_cksum();
            assert_eq!(h.as_bytes(), &header(name, size), "{name}");
            let parsed = check_header(&header(name, size)).expect("canonical");
            assert_eq!((parsed.name.as_str(), parsed.size), (name, size));
        }
    }

    #[test]
    fn a_hundred_byte_name_fills_the_field_without_nul() {
        let name = "a".repeat(100);
        let parsed = check_header(&header(&name, 1)).expect("canonical");
        assert_eq!(parsed.name.as_str(), name);
    }

    #[test]
    fn octal_fields_round_trip_and_refuse_other_encodings() {
        let mut f = [0u8; 12];
        octal(&mut f, 0o1234);
        assert_eq!(&f, b"00000001234\0");
        assert_eq!(parse_octal(&f), Some(0o1234));
        for bad in [
            &b"1234       \0"[..],
            b"00000001234 ",
            b"0000000123 \0",
            b"00000001238\0",
        ] {
            assert_eq!(parse_octal(bad), None, "{bad:?}");
        }
    }
}
