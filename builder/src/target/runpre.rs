//! Offline run-pre: each replaced function's pre code must be the code in the target image.
//!
//! Bytes are compared outside the skip ranges; the value-checked relocation
//! fields (`RunPre::relocs`) must then refer to the symbol the pre build
//! refers to, at its address in the target's symbol table — what the update
//! module checks again in the running kernel (docs/loader-module.md).

use std::collections::HashMap;

use crate::diff::{self, RelocKind, RunPreReloc};
use crate::target::identity::TargetImage;
use crate::target::symbols::{MapSymbol, SystemMap};

/// Per-cpu symbols sit at small offsets, which KASLR does not move (kallsyms
/// lists them absolute): anything below the kernel's half of the address
/// space is taken as such.
const KERNEL_HALF: u64 = 1 << 63;

/// Where a symbol's addresses in the map sit in the image.
fn unshift(addr: u64, shift: u64) -> u64 {
    if addr < KERNEL_HALF {
        addr
    } else {
        addr.wrapping_sub(shift)
    }
}

/// The map entries a relocation's symbol may be, as the kernel resolves it: an
/// exported name by the module loader (the global one), a `.klp.sym` name by
/// the livepatch core (sympos 0: the only one; n: the n-th).  Several entries
/// only for a local name whose sympos the builder guessed; empty when the
/// kernel could not resolve it either.
fn candidates<'m>(map: &'m SystemMap, target: &'m diff::External) -> Vec<&'m MapSymbol> {
    let all: Vec<&MapSymbol> = map.lookup(&target.object, &target.name).collect();
    if target.symbol == target.name {
        let globals: Vec<_> = all
            .iter()
            .copied()
            .filter(|s| s.kind.is_ascii_uppercase())
            .collect();
        return if globals.len() == 1 { globals } else { all };
    }
    match target.sympos {
        0 if all.len() == 1 => all,
        0 => Vec::new(),
        n if (n as usize) <= all.len() => all,
        _ => Vec::new(),
    }
}

/// The symbol address the live field at `addr` implies (see
/// `ksplice_live_target()` in loader-module/ksplice.c).
fn live_target(image: &TargetImage, addr: u64, r: &RunPreReloc) -> Option<u64> {
    let field = image.bytes_at(addr, u64::from(r.kind.width()))?;
    let value = match r.kind {
        RelocKind::Pc32 => {
            let v = i32::from_le_bytes(field.try_into().ok()?);
            addr.wrapping_add_signed(i64::from(v))
        }
        RelocKind::Abs32s => i64::from(i32::from_le_bytes(field.try_into().ok()?)) as u64,
        RelocKind::Abs32 => u64::from(u32::from_le_bytes(field.try_into().ok()?)),
        RelocKind::Abs64 => u64::from_le_bytes(field.try_into().ok()?),
    };
    Some(value.wrapping_sub(r.addend as u64))
}

/// The map symbol at or before image address `addr`, as `name+0xoff`; of
/// several at one address, the first global one.
fn describe(map: &SystemMap, addr: u64, shift: u64) -> String {
    map.symbols
        .iter()
        .filter(|s| unshift(s.addr, shift) <= addr)
        .rev()
        .max_by_key(|s| (unshift(s.addr, shift), s.kind.is_ascii_uppercase()))
        .map_or_else(
            || format!("{addr:#x}"),
            |s| format!("{}+{:#x}", s.name, addr - unshift(s.addr, shift)),
        )
}

/// A relocation of a function at image address `func` that refers elsewhere
/// than the pre build: (offset, what the pre build refers to, what the image does).
type RelocMismatch = (u32, String, String);

/// Check the value-checked relocations of a function whose bytes matched at
/// `func`.  Fills `pins` with the sympos of duplicated local names the live
/// values decide.
fn check_relocs(
    rp: &diff::RunPre,
    func: u64,
    map: &SystemMap,
    image: &TargetImage,
    shift: u64,
    pins: &mut HashMap<String, u32>,
) -> Result<(), RelocMismatch> {
    for r in &rp.relocs {
        let cands = candidates(map, &r.target);
        if cands.is_empty() {
            // The update leaves it out too (see `prune`).
            continue;
        }
        let at = func + u64::from(r.offset);
        let found = live_target(image, at, r);
        let hit = cands
            .iter()
            .position(|s| Some(unshift(s.addr, shift)) == found);
        match hit {
            Some(i) if cands.len() > 1 && r.target.symbol != r.target.name => {
                pins.insert(r.target.name.clone(), i as u32 + 1);
            }
            Some(_) => {}
            None => {
                let found = found.map_or_else(|| "nothing".into(), |a| describe(map, a, shift));
                return Err((r.offset, r.target.name.clone(), found));
            }
        }
    }
    Ok(())
}

/// Drop the value-checked relocations whose symbol the target's symbol table
/// does not resolve (absent, or a sympos 0 name that is not unique): the
/// kernel could not resolve their slots either, and would refuse to load the
/// update instead of checking them.  Their fields stay skipped.
pub fn prune(report: &mut diff::Report, map: &SystemMap) {
    for rp in &mut report.run_pre {
        rp.relocs.retain(|r| !candidates(map, &r.target).is_empty());
    }
}

/// Compare every changed function's pre code with the image at its System.map
/// address (shifted by the KASLR offset of a kallsyms copy), outside the skip
/// ranges, then the value of each checked relocation field. Returns the
/// sympos the match decided for duplicated local names (of replaced functions
/// and of relocation targets), and a refusal per function that matches
/// nowhere or more than once.
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
        let mut reloc_diff = None;
        let mut pins = Vec::new();
        for (i, s) in cands.iter().enumerate() {
            let addr = s.addr.wrapping_sub(shift);
            match image.bytes_at(addr, rp.code.len() as u64) {
                Some(live) => match first_mismatch(&rp.code, live, &rp.skip) {
                    None => {
                        let mut p = HashMap::new();
                        match check_relocs(rp, addr, map, image, shift, &mut p) {
                            Ok(()) => {
                                matching.push(i);
                                pins.push(p);
                            }
                            Err(m) => {
                                reloc_diff.get_or_insert(m);
                            }
                        }
                    }
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
                fixed.extend(pins.pop().unwrap_or_default());
            }
            [] if reloc_diff.is_some() => {
                let (off, want, got) = reloc_diff.unwrap_or_default();
                refusals.push(refuse(
                    &rp.name,
                    format!(
                        "pre build does not match the target image (relocation at +{off:#x}: the pre build refers to {want}, the image to {got}); the source or config is not the running kernel's"
                    ),
                ));
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

/// The image's encoding of a function that differs from the pre build's only
/// in jumps the assembler relaxed: the image was built without
/// `-ffunction-sections`, so a tail `jmp` (or `jcc`) to a static function of
/// the same file is resolved by gas and may be the short form (`eb rel8`,
/// `7x rel8`) where the relocatable pre object has `e9 rel32` / `0f 8x rel32`
/// with a relocation. Each such jump must reach, in the image, exactly where
/// the pre build's relocation points (`S + A + 4`, S from the target's
/// symbol table); every other byte must match outside the skip ranges, which
/// move with the code. Returns the rewritten run-pre data (code, skip ranges
/// and checked relocations at their image offsets; the short jumps are then
/// compared byte for byte, which pins their targets, as the kernel's check
/// does) or `None` when the function is not such a case.
fn realigned(
    rp: &diff::RunPre,
    func: u64,
    map: &SystemMap,
    image: &TargetImage,
    shift: u64,
) -> Option<diff::RunPre> {
    // Up to the pre length of image bytes: the image code is never longer.
    let live = image.bytes_at(func, rp.code.len() as u64)?;
    let code = &rp.code;
    let skipped = |i: usize| {
        rp.skip
            .iter()
            .find(|&&(s, l)| i >= s as usize && i < s as usize + l as usize)
            .map(|&(s, l)| s as usize + l as usize)
    };
    let (mut i, mut j) = (0usize, 0usize);
    let mut out = Vec::with_capacity(code.len());
    let mut skip = Vec::new();
    // Pre offset -> image offset, for the relocations that stay checked.
    let mut moved: HashMap<u32, u32> = HashMap::new();
    let mut relaxed = Vec::new();
    while i < code.len() {
        // A near jump (e9 / 0f 8x) whose rel32 is a checked PC32 relocation,
        // where the image has the short form of the same jump.
        let (near, short) = match (code[i], code.get(i + 1), live.get(j)) {
            (0xe9, _, Some(0xeb)) => (5, 0xeb),
            (0x0f, Some(&cc), Some(&b)) if (0x80..=0x8f).contains(&cc) && b == cc - 0x10 => (6, b),
            _ => (0, 0),
        };
        if near > 0 && skipped(i).is_none() {
            let field = (i + near - 4) as u32;
            let target = rp
                .relocs
                .iter()
                .find(|r| r.offset == field && r.kind == RelocKind::Pc32)?;
            let rel8 = i8::from_le_bytes([*live.get(j + 1)?]);
            let lands = (func + j as u64 + 2).wrapping_add_signed(i64::from(rel8));
            let reaches = candidates(map, &target.target)
                .iter()
                .any(|s| unshift(s.addr, shift).wrapping_add_signed(target.addend + 4) == lands);
            if !reaches {
                return None;
            }
            out.extend_from_slice(&[short, live[j + 1]]);
            relaxed.push(field);
            i += near;
            j += 2;
            continue;
        }
        if let Some(end) = skipped(i) {
            let n = end - i;
            let bytes = live.get(j..j + n)?;
            for k in 0..n {
                moved.insert((i + k) as u32, (j + k) as u32);
            }
            skip.push((j as u32, n as u32));
            out.extend_from_slice(bytes);
            i = end;
            j += n;
            continue;
        }
        if live.get(j) != Some(&code[i]) {
            return None;
        }
        out.push(code[i]);
        i += 1;
        j += 1;
    }
    if relaxed.is_empty() {
        return None;
    }
    let relocs = rp
        .relocs
        .iter()
        .filter(|r| !relaxed.contains(&r.offset))
        .map(|r| {
            Some(RunPreReloc {
                offset: *moved.get(&r.offset)?,
                ..r.clone()
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(diff::RunPre {
        code: out,
        skip,
        relocs,
        ..rp.clone()
    })
}

/// Rewrite the run-pre data of every replaced function whose pre code
/// matches the image only through relaxed jumps (see `realigned`) at exactly
/// one of its System.map candidates, so that `check` here and the update
/// module's own check in the kernel compare the image's encoding. Functions
/// that match as they are, or not even so, are left alone (and `check`
/// decides). Returns the names rewritten.
pub fn realign(report: &mut diff::Report, map: &SystemMap, image: &TargetImage) -> Vec<String> {
    let mut done = Vec::new();
    let Some(map_text) = map.unique_vmlinux("_text") else {
        return done;
    };
    let shift = map_text.wrapping_sub(image.text_addr);
    for rp in &mut report.run_pre {
        let addrs: Vec<u64> = map
            .lookup("vmlinux", &rp.name)
            .filter(|s| s.is_text())
            .map(|s| s.addr.wrapping_sub(shift))
            .collect();
        let as_is = addrs.iter().any(|&a| {
            image
                .bytes_at(a, rp.code.len() as u64)
                .is_some_and(|live| first_mismatch(&rp.code, live, &rp.skip).is_none())
        });
        if as_is {
            continue;
        }
        let found: Vec<diff::RunPre> = addrs
            .iter()
            .filter_map(|&a| realigned(rp, a, map, image, shift))
            .collect();
        if let [one] = found.as_slice() {
            *rp = one.clone();
            done.push(rp.name.clone());
        }
    }
    done
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
                relocs: Vec::new(),
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

    fn call_reloc(target: diff::External) -> RunPreReloc {
        RunPreReloc {
            offset: 1,
            kind: RelocKind::Pc32,
            target,
            addend: -4,
        }
    }

    fn exported(name: &str) -> diff::External {
        diff::External {
            symbol: name.into(),
            object: "vmlinux".into(),
            name: name.into(),
            sympos: 0,
        }
    }

    fn local(name: &str, sympos: u32) -> diff::External {
        diff::External {
            symbol: format!(".klp.sym.vmlinux.{name},{sympos}"),
            object: "vmlinux".into(),
            name: name.into(),
            sympos,
        }
    }

    /// `show` at +0x10 calls the function at +0x30 (`seq_putc`); `seq_pad` at
    /// +0x38 has the same size; `helper` twice, at +0x30 and +0x38.
    fn call_image() -> (TargetImage, SystemMap) {
        const BASE: u64 = 0xffffffff81000000;
        let mut text = vec![0xccu8; 0x40];
        let rel = 0x30i32 - (0x10 + 5);
        text[0x10] = 0xe8;
        text[0x11..0x15].copy_from_slice(&rel.to_le_bytes());
        text[0x15] = 0xc3;
        let map = SystemMap::parse(
            "ffffffff83000000 T _text\nffffffff83000010 t show\n\
             ffffffff83000030 T seq_putc\nffffffff83000038 T seq_pad\n\
             ffffffff83000030 t helper\nffffffff83000038 t helper\n",
            Path::new("map"),
        )
        .expect("map");
        (elf_image(BASE, &text), map)
    }

    fn call_report(target: diff::External) -> diff::Report {
        let mut r = report("show", &[0xe8, 0, 0, 0, 0, 0xc3], vec![(1, 4)]);
        r.run_pre[0].relocs = vec![call_reloc(target)];
        r
    }

    /// Issue 9 §3: a pre build that calls another same-size function than the
    /// image matched before (the call's field was only a skipped range); the
    /// offline run-pre must refuse it and name both symbols.
    #[test]
    fn a_call_to_another_function_is_refused_naming_both() {
        let (image, map) = call_image();
        let (_, refusals) = check(&call_report(exported("seq_putc")), &map, &image);
        assert!(refusals.is_empty(), "{refusals:?}");
        let (_, refusals) = check(&call_report(exported("seq_pad")), &map, &image);
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        assert!(
            refusals[0].reason.contains(
                "relocation at +0x1: the pre build refers to seq_pad, the image to seq_putc+0x0"
            ),
            "{refusals:?}"
        );
    }

    /// A duplicated local target's sympos is decided by the live value, like a
    /// replaced function's own; a name the table lacks is left unchecked and
    /// pruned from what the update module checks.
    #[test]
    fn reloc_targets_pin_sympos_and_unknown_ones_are_pruned() {
        let (image, map) = call_image();
        let (fixed, refusals) = check(&call_report(local("helper", 2)), &map, &image);
        assert!(refusals.is_empty(), "{refusals:?}");
        assert_eq!(fixed.get("helper"), Some(&1));
        let mut r = call_report(local("missing", 0));
        let (_, refusals) = check(&r, &map, &image);
        assert!(refusals.is_empty(), "{refusals:?}");
        prune(&mut r, &map);
        assert!(r.run_pre[0].relocs.is_empty());
        // sympos 0 of a duplicated name is ambiguous for the livepatch core.
        let mut r = call_report(local("helper", 0));
        prune(&mut r, &map);
        assert!(r.run_pre[0].relocs.is_empty());
        let mut r = call_report(exported("seq_pad"));
        prune(&mut r, &map);
        assert_eq!(r.run_pre[0].relocs.len(), 1);
    }

    #[test]
    fn live_targets_invert_each_relocation_kind() {
        let (image, _) = call_image();
        const BASE: u64 = 0xffffffff81000000;
        let r = |kind, addend| RunPreReloc {
            offset: 0,
            kind,
            target: exported("x"),
            addend,
        };
        // PC32 at +0x11: P + v - A with A = -4 is the call's destination.
        assert_eq!(
            live_target(&image, BASE + 0x11, &r(RelocKind::Pc32, -4)),
            Some(BASE + 0x30)
        );
        // 0xcccccccc: 32S sign-extends, 32 zero-extends.
        assert_eq!(
            live_target(&image, BASE, &r(RelocKind::Abs32s, 0)),
            Some(0xffff_ffff_cccc_cccc)
        );
        assert_eq!(
            live_target(&image, BASE, &r(RelocKind::Abs32, 4)),
            Some(0xcccc_cccc - 4)
        );
    }

    /// `fix` at +0x10 ends in a tail jump to `helper` at +0x20 that the image
    /// encodes short (`eb 07`); `other` sits at +0x28.
    fn short_jump_image() -> (TargetImage, SystemMap) {
        const BASE: u64 = 0xffffffff81000000;
        let mut text = vec![0xccu8; 0x40];
        text[0x10..0x15].copy_from_slice(&[0xe8, 0x11, 0x22, 0x33, 0x44]);
        text[0x15..0x17].copy_from_slice(&[0x31, 0xc0]);
        text[0x17..0x19].copy_from_slice(&[0xeb, 0x07]);
        let map = SystemMap::parse(
            "ffffffff83000000 T _text\nffffffff83000010 t fix\n\
             ffffffff83000020 t helper\nffffffff83000028 t other\n",
            Path::new("map"),
        )
        .expect("map");
        (elf_image(BASE, &text), map)
    }

    /// The pre build: ftrace call, `xor %eax,%eax`, `jmp <target>` (rel32 relocated).
    fn tail_jump_report(target: &str) -> diff::Report {
        let mut r = report(
            "fix",
            &[0xe8, 0, 0, 0, 0, 0x31, 0xc0, 0xe9, 0, 0, 0, 0],
            vec![(0, 5), (8, 4)],
        );
        r.run_pre[0].relocs = vec![RunPreReloc {
            offset: 8,
            kind: RelocKind::Pc32,
            target: local(target, 0),
            addend: -4,
        }];
        r
    }

    /// Issue 12: "expected e9 found eb": the image's tail jump to the same
    /// function is the short form. Realigned, the run-pre data is the image's
    /// encoding (what the kernel will compare too) and the check passes.
    #[test]
    fn a_relaxed_tail_jump_to_the_same_function_is_accepted() {
        let (image, map) = short_jump_image();
        let mut r = tail_jump_report("helper");
        let (_, refusals) = check(&r, &map, &image);
        assert!(
            refusals.len() == 1 && refusals[0].reason.contains("expected e9 found eb"),
            "{refusals:?}"
        );
        assert_eq!(realign(&mut r, &map, &image), vec!["fix".to_string()]);
        let rp = &r.run_pre[0];
        assert_eq!(
            rp.code,
            [0xe8, 0x11, 0x22, 0x33, 0x44, 0x31, 0xc0, 0xeb, 0x07]
        );
        assert_eq!(rp.skip, vec![(0, 5)]);
        assert!(rp.relocs.is_empty(), "{:?}", rp.relocs);
        let (_, refusals) = check(&r, &map, &image);
        assert!(refusals.is_empty(), "{refusals:?}");
    }

    /// The short jump reaches another function than the pre build's, or
    /// another byte differs: nothing is rewritten and the check refuses.
    #[test]
    fn a_relaxed_jump_elsewhere_or_another_difference_stays_refused() {
        let (image, map) = short_jump_image();
        let mut r = tail_jump_report("other");
        assert!(realign(&mut r, &map, &image).is_empty());
        assert_eq!(check(&r, &map, &image).1.len(), 1);
        let mut r = tail_jump_report("helper");
        r.run_pre[0].code[6] = 0xc9;
        assert!(realign(&mut r, &map, &image).is_empty());
        assert_eq!(check(&r, &map, &image).1.len(), 1);
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
