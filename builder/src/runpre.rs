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
