//! Offline run-pre: each replaced function's pre code must be the code in the target image.

use std::collections::HashMap;

use crate::diff;
use crate::identity::TargetImage;
use crate::symbols::SystemMap;

/// Compare every changed function's pre code with the image at its System.map
/// address (shifted by the KASLR offset of a kallsyms copy), outside the skip
/// ranges. Returns the sympos the match decided for duplicated local names,
/// and a refusal per function that matches nowhere or more than once.
pub fn check(
    report: &diff::Report,
    map: &SystemMap,
    image: &TargetImage,
) -> (HashMap<String, u32>, Vec<diff::Refusal>) {
    let mut fixed = HashMap::new();
    let mut refusals = Vec::new();
    let refuse = |name: &str, reason: String| diff::Refusal {
        symbol: name.to_string(),
        section: format!(".text.{name}"),
        reason,
    };
    // kallsyms of a KASLR boot is shifted from the link addresses.
    let Some(map_text) = map.unique_vmlinux("_text") else {
        refusals.push(refuse(
            "_text",
            "the target's System.map has no _text symbol".into(),
        ));
        return (fixed, refusals);
    };
    let shift = map_text.wrapping_sub(image.text_addr);
    for rp in &report.run_pre {
        let cands: Vec<_> = map
            .lookup("vmlinux", &rp.name)
            .filter(|s| s.is_text())
            .collect();
        if cands.is_empty() {
            refusals.push(refuse(
                &rp.name,
                "not in the target's System.map (not built into this kernel?)".into(),
            ));
            continue;
        }
        let mut matching = Vec::new();
        let mut first_diff = None;
        for (i, s) in cands.iter().enumerate() {
            let addr = s.addr.wrapping_sub(shift);
            match image.bytes_at(addr, rp.code.len() as u64) {
                Some(live) => match first_mismatch(&rp.code, live, &rp.skip) {
                    None => matching.push(i),
                    Some(off) => {
                        first_diff.get_or_insert((off, rp.code[off], live[off]));
                    }
                },
                None => {
                    first_diff.get_or_insert((0, 0, 0));
                }
            }
        }
        match matching.as_slice() {
            [i] => {
                let pos = if cands.len() > 1 { *i as u32 + 1 } else { 0 };
                fixed.insert(rp.name.clone(), pos);
            }
            [] => {
                let (off, want, got) = first_diff.unwrap_or_default();
                refusals.push(refuse(
                    &rp.name,
                    format!(
                        "pre build does not match the target image (first difference at +{off:#x}: expected {want:02x} found {got:02x}); the source or config is not the running kernel's"
                    ),
                ));
            }
            _ => refusals.push(refuse(
                &rp.name,
                format!("{} same-named functions in the target match its pre code; cannot tell which to replace", matching.len()),
            )),
        }
    }
    (fixed, refusals)
}

/// Offset of the first byte that differs outside the skip ranges.
fn first_mismatch(pre: &[u8], live: &[u8], skip: &[(u32, u32)]) -> Option<usize> {
    let skipped = |i: usize| {
        skip.iter()
            .any(|&(s, l)| i >= s as usize && i < s as usize + l as usize)
    };
    pre.iter()
        .zip(live)
        .enumerate()
        .find(|&(i, (a, b))| a != b && !skipped(i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A minimal ELF64 executable: one PT_LOAD of `code` at `vaddr`.
    fn elf_image(vaddr: u64, code: &[u8]) -> TargetImage {
        let mut e = Vec::new();
        e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&vaddr.to_le_bytes()); // entry
        e.extend_from_slice(&64u64.to_le_bytes()); // phoff
        e.extend_from_slice(&0u64.to_le_bytes()); // shoff
        e.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, 1, 64, 0, 0] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        let off = 64 + 56u64;
        e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        e.extend_from_slice(&5u32.to_le_bytes()); // R+X
        for v in [
            off,
            vaddr,
            vaddr,
            code.len() as u64,
            code.len() as u64,
            4096,
        ] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(code);
        TargetImage {
            path: PathBuf::from("vmlinux"),
            elf: e,
            build_id: String::new(),
            release: None,
            version: None,
            text_addr: vaddr,
        }
    }

    fn report(name: &str, code: &[u8], skip: Vec<(u32, u32)>) -> diff::Report {
        diff::Report {
            run_pre: vec![diff::RunPre {
                name: name.into(),
                sympos: 0,
                code: code.to_vec(),
                skip,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn code_match_picks_the_duplicate_and_follows_the_kaslr_shift() {
        const BASE: u64 = 0xffffffff81000000;
        // Two local show_val functions; the second one is ours.
        let mut text = vec![0x90u8; 0x40];
        text[0x10..0x14].copy_from_slice(&[0x31, 0xc0, 0xc3, 0xcc]);
        text[0x20..0x24].copy_from_slice(&[0x31, 0xd2, 0xc3, 0xcc]);
        let image = elf_image(BASE, &text);
        // kallsyms of a boot shifted by 0x2000000.
        let map = SystemMap::parse(
            "ffffffff83000000 T _text\nffffffff83000010 t show_val\nffffffff83000020 t show_val\n",
            Path::new("map"),
        )
        .expect("map");
        let (fixed, refusals) = check(
            &report("show_val", &[0x31, 0xd2, 0xc3], vec![]),
            &map,
            &image,
        );
        assert!(refusals.is_empty(), "{refusals:?}");
        assert_eq!(fixed, HashMap::from([("show_val".to_string(), 2)]));
        // A byte differing outside the skip ranges refuses; inside, it is fine.
        let (_, refusals) = check(
            &report("show_val", &[0x31, 0xff, 0xc3], vec![]),
            &map,
            &image,
        );
        assert_eq!(refusals.len(), 1);
        assert!(
            refusals[0].reason.starts_with("pre build does not match"),
            "{refusals:?}"
        );
        let (_, refusals) = check(
            &report("show_val", &[0x31, 0xff, 0xc3], vec![(1, 1)]),
            &map,
            &image,
        );
        assert_eq!(refusals.len(), 1, "both duplicates match: ambiguous");
        assert!(refusals[0].reason.contains("cannot tell"), "{refusals:?}");
        let (_, refusals) = check(&report("missing", &[0xc3], vec![]), &map, &image);
        assert!(
            refusals[0]
                .reason
                .starts_with("not in the target's System.map"),
            "{refusals:?}"
        );
    }

    #[test]
    fn skip_ranges_hide_only_their_bytes() {
        let pre = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0xe8, 0, 0, 0, 0, 0xc3];
        let live = [0xe8, 0x11, 0x22, 0x33, 0x44, 0xe8, 1, 2, 3, 4, 0xc3];
        assert_eq!(first_mismatch(&pre, &live, &[(0, 5), (6, 4)]), None);
        assert_eq!(first_mismatch(&pre, &live, &[(0, 5)]), Some(6));
        let mut bad = live;
        bad[10] = 0xcc;
        assert_eq!(first_mismatch(&pre, &bad, &[(0, 5), (6, 4)]), Some(10));
    }
}
