//! Signed packages: round trips (library and `ksplice-build`/`ksplice` binaries), one crafted
//! archive per rejection asserting the exact error, trust thresholds, byte flips and fuzzing.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;
use flate2::Compression;
use manifests::package::{
    MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_PACKAGE_BYTES, MAX_SIGNATURE_BYTES, MAX_UNPACKED_BYTES,
};
use manifests::{
    open_package, sign_manifest, verify_package, write_package, Error, Manifest, PayloadFile,
    SigningKey, TrustPolicy,
};
use proptest::prelude::*;

const KO: &[u8] = b"\x7fELF not really a module, but bytes with a digest";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

fn policy(keys: &[&SigningKey], threshold: usize) -> TrustPolicy {
    TrustPolicy::new(keys.iter().map(|k| k.public()).collect(), threshold).expect("policy")
}

/// A valid manifest listing `files` (the first one is the module).
fn manifest_listing(files: &[(&str, &[u8])]) -> Manifest {
    let mut m = manifests::manifest::example("t-1");
    m.module.file = files[0].0.to_owned();
    m.files = files
        .iter()
        .map(|(path, data)| PayloadFile {
            path: (*path).to_owned(),
            len: data.len() as u64,
            sha256: manifests::sha256_hex(data),
        })
        .collect();
    m
}

/// `(manifest.toml, manifest.sig)` bytes for a manifest listing `files`, signed by `keys`.
fn signed(files: &[(&str, &[u8])], keys: &[&SigningKey]) -> (Vec<u8>, Vec<u8>) {
    let bytes = manifest_listing(files)
        .to_toml()
        .expect("toml")
        .into_bytes();
    let sig = sign_manifest(&bytes, keys).expect("sign");
    (bytes, sig)
}

// ---- crafting archives byte by byte ----------------------------------------------------------

/// One raw ustar entry: header with `name` written verbatim (no sanitizing), then data;
/// every other field as `write_package` writes it.
pub(crate) fn entry_sized(name: &[u8], typeflag: u8, data: &[u8], size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::new(typeflag));
    if typeflag == b'1' || typeflag == b'2' {
        header.set_link_name("target").expect("link name");
    }
    let bytes = header.as_mut_bytes();
    bytes[..100].fill(0);
    bytes[..name.len()].copy_from_slice(name);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

pub(crate) fn entry(name: &str, typeflag: u8, data: &[u8]) -> Vec<u8> {
    entry_sized(name.as_bytes(), typeflag, data, data.len() as u64)
}

pub(crate) fn file(name: &str, data: &[u8]) -> Vec<u8> {
    entry(name, b'0', data)
}

/// Tar stream of `entries` plus the end marker.
pub(crate) fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0; 1024]);
    out
}

/// Gzip with ksplice's canonical header (what `write_package` produces).
pub(crate) fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// manifest.toml + manifest.sig entries for `files`, signed by key 1.
fn metadata(files: &[(&str, &[u8])]) -> Vec<Vec<u8>> {
    let (m, s) = signed(files, &[&key(1)]);
    vec![file("manifest.toml", &m), file("manifest.sig", &s)]
}

/// Every path under `root`, relative, sorted (files and directories).
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let path = e.expect("entry").path();
            out.push(
                path.strip_prefix(root)
                    .expect("prefix")
                    .display()
                    .to_string(),
            );
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A scratch area: `root/pkg.tar.gz` is the package, `root/a/b/out` the extraction parent,
/// so that an escape by `..` would land inside `root` where `tree` sees it.
struct Scratch {
    root: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("a/b/out")).expect("mkdir");
        Scratch { root }
    }

    fn pkg(&self) -> PathBuf {
        self.root.path().join("pkg.tar.gz")
    }

    fn parent(&self) -> PathBuf {
        self.root.path().join("a/b/out")
    }

    fn baseline() -> Vec<String> {
        ["a", "a/b", "a/b/out", "pkg.tar.gz"]
            .map(String::from)
            .to_vec()
    }

    /// Writes `bytes` as the package and returns verify's and open's errors, after
    /// checking both refuse identically and nothing was left behind anywhere in `root`.
    fn refuse(&self, bytes: &[u8], policy: &TrustPolicy) -> Error {
        fs::write(self.pkg(), bytes).expect("write package");
        let verified = verify_package(&self.pkg(), policy).expect_err("verify must refuse");
        let opened =
            open_package(&self.pkg(), policy, &self.parent()).expect_err("open must refuse");
        assert_eq!(verified.to_string(), opened.to_string());
        assert_eq!(
            tree(self.root.path()),
            Scratch::baseline(),
            "files left behind"
        );
        opened
    }
}

/// Refuses the gzip of `entries` (+ end marker) under key 1's policy.
fn refuse_entries(entries: &[Vec<u8>]) -> Error {
    Scratch::new().refuse(&gz(&tar(entries)), &policy(&[&key(1)], 1))
}

/// A valid small package written by `write_package`: (scratch, package bytes).
fn good_package(files: &[(&str, &[u8])]) -> (Scratch, Vec<u8>) {
    let s = Scratch::new();
    let src = s.root.path().join("src");
    let mut payload = Vec::new();
    for (name, data) in files {
        let path = src.join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, data).expect("write");
        payload.push(((*name).to_owned(), path));
    }
    let mut m = manifest_listing(files);
    m.files.clear();
    let written = write_package(&s.pkg(), &m, &[&key(1)], &payload).expect("write_package");
    assert_eq!(written, s.pkg());
    fs::remove_dir_all(&src).expect("cleanup");
    let bytes = fs::read(s.pkg()).expect("read");
    (s, bytes)
}

// ---- round trips -----------------------------------------------------------------------------

#[test]
fn round_trip_write_verify_open() {
    let files: &[(&str, &[u8])] = &[("ksplice_t_1.ko", KO), ("extra/notes.txt", b"hello\n")];
    let (s, _) = good_package(files);
    let policy = policy(&[&key(1)], 1);

    let verified = verify_package(&s.pkg(), &policy).expect("verify");
    assert_eq!(*verified, manifest_listing(files));
    // verify writes nothing.
    assert_eq!(tree(s.root.path()), Scratch::baseline());

    let opened = open_package(&s.pkg(), &policy, &s.parent()).expect("open");
    assert_eq!(*opened.manifest, manifest_listing(files));
    assert!(opened.dir.starts_with(s.parent()));
    let name = opened
        .dir
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("ksplice-t-1."), "{name}");
    assert_eq!(
        tree(&opened.dir),
        ["extra", "extra/notes.txt", "ksplice_t_1.ko"]
    );
    assert_eq!(
        fs::read(opened.dir.join("ksplice_t_1.ko")).expect("read"),
        KO
    );
    assert_eq!(
        fs::read(opened.dir.join("extra/notes.txt")).expect("read"),
        b"hello\n"
    );
    // The stored bytes re-verify on their own (what a client keeps in its state).
    let again =
        manifests::verify_manifest(&opened.manifest_bytes, &opened.signature_bytes, &policy)
            .expect("re-verify");
    assert_eq!(*again, *opened.manifest);
    // A second open gets its own fresh directory.
    let second = open_package(&s.pkg(), &policy, &s.parent()).expect("open again");
    assert_ne!(second.dir, opened.dir);
}

#[test]
fn write_package_names_the_file_after_the_id_in_a_directory() {
    let s = Scratch::new();
    let src = s.root.path().join("m.ko");
    fs::write(&src, KO).expect("write");
    let mut m = manifest_listing(&[("m.ko", KO)]);
    m.files.clear();
    let out = write_package(&s.parent(), &m, &[&key(1)], &[("m.ko".into(), src)]).expect("write");
    assert_eq!(out, s.parent().join("ksplice-t-1.tar.gz"));
    assert_eq!(tree(&s.parent()), ["ksplice-t-1.tar.gz"]);
}

#[test]
fn write_package_checks_prefilled_files_against_the_payload() {
    let s = Scratch::new();
    let src = s.root.path().join("m.ko");
    fs::write(&src, KO).expect("write");
    let payload = [("m.ko".to_owned(), src)];
    // Listed exactly as given: accepted.
    let m = manifest_listing(&[("m.ko", KO)]);
    write_package(&s.pkg(), &m, &[&key(1)], &payload).expect("matching files");
    // Listed with another digest: refused, nothing written.
    let m = manifest_listing(&[("m.ko", b"other bytes")]);
    let err = write_package(&s.parent(), &m, &[&key(1)], &payload).expect_err("mismatch");
    assert!(
        matches!(err, Error::FilesMismatch { ref path, .. } if path == "m.ko"),
        "{err}"
    );
    assert!(matches!(
        write_package(&s.parent(), &m, &[], &payload),
        Err(Error::NoSigningKey)
    ));
    assert_eq!(tree(&s.parent()), Vec::<String>::new());
}

// ---- signatures and trust --------------------------------------------------------------------

#[test]
fn signature_by_untrusted_key_is_refused() {
    let (s, bytes) = good_package(&[("m.ko", KO)]);
    let err = s.refuse(&bytes, &policy(&[&key(2)], 1));
    let expected = key(1).public().key_id().to_string();
    assert!(
        matches!(err, Error::UntrustedSigner { ref key_ids } if key_ids == &[expected]),
        "{err}"
    );
}

#[test]
fn threshold_two_is_not_met_by_one_key_signing_twice() {
    let (m, one) = signed(&[("m.ko", KO)], &[&key(1)]);
    let line = String::from_utf8(one)
        .expect("utf8")
        .lines()
        .nth(1)
        .expect("line")
        .to_owned();
    let twice = format!("ksplice-signatures-v1\n{line}\n{line}\n");
    let entries = [
        file("manifest.toml", &m),
        file("manifest.sig", twice.as_bytes()),
        file("m.ko", KO),
    ];
    let err = Scratch::new().refuse(&gz(&tar(&entries)), &policy(&[&key(1), &key(2)], 2));
    assert!(
        matches!(
            err,
            Error::ThresholdNotMet {
                valid: 1,
                threshold: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn threshold_two_is_met_by_two_distinct_keys() {
    let (m, sig) = signed(&[("m.ko", KO)], &[&key(1), &key(2)]);
    let entries = [
        file("manifest.toml", &m),
        file("manifest.sig", &sig),
        file("m.ko", KO),
    ];
    let s = Scratch::new();
    fs::write(s.pkg(), gz(&tar(&entries))).expect("write");
    // Key 3 is trusted but did not sign: two of three suffice.
    let verified =
        verify_package(&s.pkg(), &policy(&[&key(1), &key(2), &key(3)], 2)).expect("accepted");
    assert_eq!(verified.id, "t-1");
    let err = s.refuse(
        &fs::read(s.pkg()).expect("read"),
        &policy(&[&key(1), &key(2), &key(3)], 3),
    );
    assert!(
        matches!(
            err,
            Error::ThresholdNotMet {
                valid: 2,
                threshold: 3
            }
        ),
        "{err}"
    );
}

#[test]
fn tampered_manifest_is_refused_by_signature() {
    let (m, sig) = signed(&[("m.ko", KO)], &[&key(1)]);
    let tampered = String::from_utf8(m)
        .expect("utf8")
        .replace("example update", "example updatE");
    let entries = [
        file("manifest.toml", tampered.as_bytes()),
        file("manifest.sig", &sig),
        file("m.ko", KO),
    ];
    let err = refuse_entries(&entries);
    let expected = key(1).public().key_id().to_string();
    assert!(
        matches!(err, Error::BadSignature { ref key_id } if *key_id == expected),
        "{err}"
    );
}

#[test]
fn signed_but_invalid_manifest_is_refused_after_the_signature() {
    let mut m = manifest_listing(&[("m.ko", KO)]);
    m.id = "Not/An/Id".into();
    let bytes = m.to_toml().expect("toml").into_bytes();
    let sig = sign_manifest(&bytes, &[&key(1)]).expect("sign");
    let err = refuse_entries(&[
        file("manifest.toml", &bytes),
        file("manifest.sig", &sig),
        file("m.ko", KO),
    ]);
    assert!(
        matches!(err, Error::InvalidId { ref id, .. } if id == "Not/An/Id"),
        "{err}"
    );
}

#[test]
fn inspect_reads_without_trust_and_refuses_all_but_unknown_signers() {
    // A package by a key nobody trusts: inspect names the signer, verify refuses it.
    let (m, s) = signed(&[("m.ko", KO)], &[&key(9)]);
    let pkg = gz(&tar(&[
        file("manifest.toml", &m),
        file("manifest.sig", &s),
        file("m.ko", KO),
    ]));
    let inspected = manifests::inspect_package_bytes(&pkg).expect("inspect");
    assert_eq!(inspected.manifest.id, "t-1");
    assert_eq!(inspected.signer_ids, vec![key(9).public().key_id()]);
    assert!(manifests::verify_package_bytes(&pkg, &policy(&[&key(1)], 1)).is_err());
    // No signature at all.
    let pkg = gz(&tar(&[
        file("manifest.toml", &m),
        file("manifest.sig", b"ksplice-signatures-v1\n"),
        file("m.ko", KO),
    ]));
    assert!(matches!(
        manifests::inspect_package_bytes(&pkg),
        Err(Error::MalformedSignatureFile { .. })
    ));
    // A payload that does not match its digest.
    let pkg = gz(&tar(&[
        file("manifest.toml", &m),
        file("manifest.sig", &s),
        file("m.ko", &KO.iter().map(|b| b ^ 1).collect::<Vec<_>>()),
    ]));
    assert!(matches!(
        manifests::inspect_package_bytes(&pkg),
        Err(Error::DigestMismatch { .. })
    ));
}

#[test]
fn malformed_signature_file_is_refused() {
    let (m, _) = signed(&[("m.ko", KO)], &[&key(1)]);
    let err = refuse_entries(&[
        file("manifest.toml", &m),
        file("manifest.sig", b"garbage\n"),
        file("m.ko", KO),
    ]);
    assert!(
        matches!(err, Error::MalformedSignatureFile { line: 1, .. }),
        "{err}"
    );
}

// ---- one crafted archive per rejection -------------------------------------------------------

/// The metadata for `m.ko` followed by `extra`.
fn with_payload(extra: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut entries = metadata(&[("m.ko", KO)]);
    entries.extend(extra);
    entries
}

#[test]
fn absolute_path_is_refused() {
    let err = refuse_entries(&with_payload(vec![file("/tmp/m.ko", KO)]));
    assert!(
        matches!(err, Error::AbsolutePath { ref entry } if entry == "/tmp/m.ko"),
        "{err}"
    );
}

#[test]
fn parent_directory_entry_is_refused_and_nothing_escapes() {
    // `refuse` checks the whole scratch tree, which contains the extraction parent's parents.
    let err = refuse_entries(&with_payload(vec![file("../m.ko", KO), file("m.ko", KO)]));
    assert!(
        matches!(err, Error::ParentDirectory { ref entry } if entry == "../m.ko"),
        "{err}"
    );
    let err = refuse_entries(&with_payload(vec![
        file("m.ko", KO),
        file("x/../../../m.ko", KO),
    ]));
    assert!(
        matches!(err, Error::ParentDirectory { ref entry } if entry == "x/../../../m.ko"),
        "{err}"
    );
}

#[test]
fn invalid_entry_name_is_refused() {
    let err = refuse_entries(&with_payload(vec![file("a//m.ko", KO)]));
    assert!(
        matches!(err, Error::InvalidEntryName { ref entry, .. } if entry == "a//m.ko"),
        "{err}"
    );
}

#[test]
fn symlink_is_refused() {
    let err = refuse_entries(&with_payload(vec![entry("m.ko", b'2', b"")]));
    assert!(
        matches!(err, Error::Symlink { ref entry } if entry == "m.ko"),
        "{err}"
    );
}

#[test]
fn hardlink_is_refused() {
    let err = refuse_entries(&with_payload(vec![entry("m.ko", b'1', b"")]));
    assert!(
        matches!(err, Error::Hardlink { ref entry } if entry == "m.ko"),
        "{err}"
    );
}

#[test]
fn device_files_are_refused() {
    for flag in [b'3', b'4'] {
        let err = refuse_entries(&with_payload(vec![entry("m.ko", flag, b"")]));
        assert!(
            matches!(err, Error::DeviceFile { ref entry } if entry == "m.ko"),
            "{err}"
        );
    }
}

#[test]
fn fifo_is_refused() {
    let err = refuse_entries(&with_payload(vec![entry("m.ko", b'6', b"")]));
    assert!(
        matches!(err, Error::Fifo { ref entry } if entry == "m.ko"),
        "{err}"
    );
}

#[test]
fn directories_and_extension_headers_are_refused() {
    for flag in [b'5', b'x', b'g', b'L', b'K', b'S', b'7'] {
        let err = refuse_entries(&with_payload(vec![entry("m.ko", flag, b"")]));
        assert!(
            matches!(err, Error::UnsupportedEntryType { ref entry, typeflag } if entry == "m.ko" && typeflag == char::from(flag)),
            "{err}"
        );
    }
}

#[test]
fn duplicate_entry_is_refused() {
    let err = refuse_entries(&with_payload(vec![file("m.ko", KO), file("m.ko", KO)]));
    assert!(
        matches!(err, Error::DuplicateEntry { ref entry } if entry == "m.ko"),
        "{err}"
    );
    let again = metadata(&[("m.ko", KO)])[0].clone();
    let err = refuse_entries(&with_payload(vec![file("m.ko", KO), again]));
    assert!(
        matches!(err, Error::DuplicateEntry { ref entry } if entry == "manifest.toml"),
        "{err}"
    );
}

#[test]
fn unlisted_entry_is_refused() {
    let err = refuse_entries(&with_payload(vec![file("m.ko", KO), file("evil.ko", b"x")]));
    assert!(
        matches!(err, Error::UnlistedEntry { ref entry } if entry == "evil.ko"),
        "{err}"
    );
}

#[test]
fn missing_listed_file_is_refused() {
    let files: &[(&str, &[u8])] = &[("m.ko", KO), ("b.txt", b"b")];
    let mut entries = metadata(files);
    entries.push(file("m.ko", KO));
    let err = refuse_entries(&entries);
    assert!(
        matches!(err, Error::MissingFile { ref file } if file == "b.txt"),
        "{err}"
    );
}

#[test]
fn length_mismatch_is_refused() {
    let mut longer = KO.to_vec();
    longer.push(b'!');
    let err = refuse_entries(&with_payload(vec![file("m.ko", &longer)]));
    assert!(
        matches!(err, Error::LengthMismatch { ref file, expected, actual } if file == "m.ko" && expected == KO.len() as u64 && actual == longer.len() as u64),
        "{err}"
    );
}

#[test]
fn digest_mismatch_is_refused() {
    let mut other = KO.to_vec();
    other[0] ^= 1;
    let err = refuse_entries(&with_payload(vec![file("m.ko", &other)]));
    assert!(
        matches!(err, Error::DigestMismatch { ref file } if file == "m.ko"),
        "{err}"
    );
}

#[test]
fn metadata_order_is_enforced() {
    let [m, s] = <[Vec<u8>; 2]>::try_from(metadata(&[("m.ko", KO)])).expect("two");
    let err = refuse_entries(&[s.clone(), m.clone(), file("m.ko", KO)]);
    assert!(
        matches!(err, Error::ManifestNotFirst { ref entry } if entry == "manifest.sig"),
        "{err}"
    );
    let err = refuse_entries(&[m.clone(), file("m.ko", KO), s]);
    assert!(
        matches!(err, Error::SignatureNotSecond { ref entry } if entry == "m.ko"),
        "{err}"
    );
    let err = refuse_entries(&[m]);
    assert!(
        matches!(
            err,
            Error::MissingMetadata {
                entry: "manifest.sig"
            }
        ),
        "{err}"
    );
    let err = refuse_entries(&[]);
    assert!(
        matches!(
            err,
            Error::MissingMetadata {
                entry: "manifest.toml"
            }
        ),
        "{err}"
    );
}

#[test]
fn oversized_metadata_is_refused_before_reading_it() {
    // The headers claim more than the caps; the data is not even there.
    let err = refuse_entries(&[entry_sized(
        b"manifest.toml",
        b'0',
        b"",
        MAX_MANIFEST_BYTES + 1,
    )]);
    assert!(
        matches!(err, Error::MetadataTooLarge { entry: "manifest.toml", size, .. } if size == MAX_MANIFEST_BYTES + 1),
        "{err}"
    );
    let m = metadata(&[("m.ko", KO)])[0].clone();
    let err = refuse_entries(&[
        m,
        entry_sized(b"manifest.sig", b'0', b"", MAX_SIGNATURE_BYTES + 1),
    ]);
    assert!(
        matches!(
            err,
            Error::MetadataTooLarge {
                entry: "manifest.sig",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn oversized_package_file_is_refused_before_reading_it() {
    let s = Scratch::new();
    let (_, bytes) = good_package(&[("m.ko", KO)]);
    fs::write(s.pkg(), &bytes).expect("write");
    // Sparse: the cap is checked on the size, nothing is read.
    fs::OpenOptions::new()
        .write(true)
        .open(s.pkg())
        .expect("open")
        .set_len(MAX_PACKAGE_BYTES + 1)
        .expect("grow");
    let err = verify_package(&s.pkg(), &policy(&[&key(1)], 1)).expect_err("refused");
    assert!(
        matches!(err, Error::PackageTooLarge { size, max, .. } if size == MAX_PACKAGE_BYTES + 1 && max == MAX_PACKAGE_BYTES),
        "{err}"
    );
    let err = open_package(&s.pkg(), &policy(&[&key(1)], 1), &s.parent()).expect_err("refused");
    assert!(matches!(err, Error::PackageTooLarge { .. }), "{err}");
    assert_eq!(tree(&s.parent()), Vec::<String>::new());
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..MAX_ENTRIES - 2).map(|i| format!("f{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let mut entries = metadata(&files);
    entries.extend(names.iter().map(|n| file(n, b"")));
    // Exactly at the cap: accepted.
    let s = Scratch::new();
    fs::write(s.pkg(), gz(&tar(&entries))).expect("write");
    verify_package(&s.pkg(), &policy(&[&key(1)], 1)).expect("at the cap");
    // One more: refused on the count, before its name is looked at.
    entries.push(file("one-too-many", b""));
    let err = refuse_entries(&entries);
    assert!(
        matches!(err, Error::TooManyEntries { max } if max == MAX_ENTRIES),
        "{err}"
    );
}

/// Minimal deflate writer for the decompression-bomb test: one stored block with `prefix`,
/// then a fixed-Huffman block of a zero literal and `runs` matches of 258 bytes at distance 1.
fn deflate_zero_bomb(prefix: &[u8], runs: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, count: u32) {
            for i in 0..count {
                self.acc |= ((value >> i) & 1) << self.n;
                self.n += 1;
                if self.n == 8 {
                    self.out.push(self.acc as u8);
                    self.acc = 0;
                    self.n = 0;
                }
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            for i in (0..len).rev() {
                self.put((code >> i) & 1, 1);
            }
        }
        fn align(&mut self) {
            if self.n > 0 {
                self.put(0, 8 - self.n);
            }
        }
    }
    let mut b = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    for chunk in prefix.chunks(65535) {
        b.put(0, 1); // not final
        b.put(0, 2); // stored
        b.align();
        let len = chunk.len() as u16;
        b.out.extend_from_slice(&len.to_le_bytes());
        b.out.extend_from_slice(&(!len).to_le_bytes());
        b.out.extend_from_slice(chunk);
    }
    b.put(1, 1); // final
    b.put(1, 2); // fixed Huffman
    b.code(0x30, 8); // literal 0
    for _ in 0..runs {
        b.code(0xc5, 8); // length 258 (code 285)
        b.code(0, 5); // distance 1
    }
    b.code(0, 7); // end of block
    b.align();
    b.out
}

#[test]
fn decompression_bomb_is_refused_at_the_unpacked_cap() {
    // A valid package followed, inside the gzip stream, by endless tar padding.
    let entries = with_payload(vec![file("m.ko", KO)]);
    let runs = usize::try_from(MAX_UNPACKED_BYTES / 258 + 2).expect("fits");
    let mut bomb = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
    bomb.extend(deflate_zero_bomb(&tar(&entries), runs));
    bomb.extend_from_slice(&[0; 8]); // CRC and size: never reached
    assert!(
        (bomb.len() as u64) < MAX_PACKAGE_BYTES / 16,
        "the bomb itself is small"
    );
    let err = Scratch::new().refuse(&bomb, &policy(&[&key(1)], 1));
    assert!(
        matches!(err, Error::UnpackedTooLarge { max } if max == MAX_UNPACKED_BYTES),
        "{err}"
    );
}

#[test]
fn non_canonical_gzip_header_is_refused() {
    let data = tar(&with_payload(vec![file("m.ko", KO)]));
    let mut enc = flate2::GzBuilder::new()
        .mtime(1)
        .write(Vec::new(), Compression::default());
    enc.write_all(&data).expect("gzip");
    let with_mtime = enc.finish().expect("gzip");
    let err = refuse_entries_bytes(&with_mtime);
    assert!(matches!(err, Error::NotCanonicalGzip), "{err}");
    let err = refuse_entries_bytes(&data); // an uncompressed tar
    assert!(matches!(err, Error::NotCanonicalGzip), "{err}");
    let err = refuse_entries_bytes(b"\x1f\x8b");
    assert!(matches!(err, Error::NotCanonicalGzip), "{err}");
}

fn refuse_entries_bytes(bytes: &[u8]) -> Error {
    Scratch::new().refuse(bytes, &policy(&[&key(1)], 1))
}

#[test]
fn trailing_data_is_refused() {
    let (_, mut bytes) = good_package(&[("m.ko", KO)]);
    bytes.push(0);
    let err = refuse_entries_bytes(&bytes);
    assert!(
        matches!(
            err,
            Error::TrailingData {
                what: "bytes after the gzip stream"
            }
        ),
        "{err}"
    );

    let mut data = tar(&with_payload(vec![file("m.ko", KO)]));
    data.extend_from_slice(b"hidden after the end marker");
    let err = refuse_entries_bytes(&gz(&data));
    assert!(
        matches!(
            err,
            Error::TrailingData {
                what: "non-zero data"
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_package_is_refused() {
    let (_, bytes) = good_package(&[("m.ko", KO)]);
    for cut in [bytes.len() - 1, bytes.len() - 8, bytes.len() / 2, 11] {
        let err = refuse_entries_bytes(&bytes[..cut]);
        assert!(
            matches!(err, Error::MalformedArchive { .. }),
            "cut {cut}: {err}"
        );
    }
    // A complete gzip stream whose tar data stops inside an entry.
    let mut entries = metadata(&[("m.ko", KO)]);
    let mut short = file("m.ko", KO);
    short.truncate(512 + 10);
    entries.push(short);
    let err = refuse_entries_bytes(&gz(&entries.concat()));
    assert!(
        matches!(err, Error::MalformedArchive { ref reason } if reason == "entry \"m.ko\" is truncated"),
        "{err}"
    );
    let mut sig_short = metadata(&[("m.ko", KO)]);
    sig_short[1].truncate(512 + 10);
    let err = refuse_entries_bytes(&gz(&sig_short.concat()));
    assert!(
        matches!(err, Error::MalformedArchive { ref reason } if reason == "entry \"manifest.sig\" is truncated"),
        "{err}"
    );
}

// ---- every byte matters ----------------------------------------------------------------------

/// Index of the last byte of the deflate data (before the 8-byte CRC32 and ISIZE trailer).
///
/// Its bits above the end-of-block code are padding that every inflater ignores; changing
/// only those re-encodes the same content, which is accepted (docs/package-format.md).
/// Bit 0 of that byte is always used, so inverting the whole byte, or its low bit, is not
/// such a change.
fn final_deflate_byte(package: &[u8]) -> usize {
    package.len() - 9
}

#[test]
fn flipping_any_byte_makes_verification_fail() {
    let (s, bytes) = good_package(&[("m.ko", b"tiny")]);
    let policy = policy(&[&key(1)], 1);
    verify_package(&s.pkg(), &policy).expect("the original verifies");
    let mut accepted = Vec::new();
    let mut padding_only = Vec::new();
    for i in 0..bytes.len() {
        for mask in [0xff, 0x01, 0x80] {
            let mut flipped = bytes.clone();
            flipped[i] ^= mask;
            // In memory: the very reader `verify_package` runs after its one read of the
            // file (tested on files above); no file system round trip per flip.
            if let Ok(v) = manifests::verify_package_bytes(&flipped, &policy) {
                assert_eq!(*v.manifest, manifest_listing(&[("m.ko", b"tiny")]));
                if i == final_deflate_byte(&bytes) && mask != 0xff && mask != 0x01 {
                    padding_only.push(mask);
                } else {
                    accepted.push((i, mask));
                }
            }
        }
    }
    assert_eq!(
        accepted,
        Vec::<(usize, u8)>::new(),
        "of {} bytes",
        bytes.len()
    );
    // Only the high bit of the final byte, and only if the end-of-block code stops short of it.
    assert!(padding_only.iter().all(|&m| m == 0x80), "{padding_only:?}");
}

// ---- fuzzing ---------------------------------------------------------------------------------

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        match edit {
            Mutation::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            Mutation::Remove(i) => {
                bytes.remove(i.index(bytes.len()));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }
    bytes
}

/// What a fuzzed package may do: be refused leaving nothing behind, or be accepted as
/// exactly the original (a mutation of unused tar padding, say) — never panic, never
/// yield anything the key did not sign. Returns whether it was accepted.
fn check_fuzzed(bytes: &[u8], original: &Manifest, files: &BTreeMap<String, Vec<u8>>) -> bool {
    let s = Scratch::new();
    let policy = policy(&[&key(1)], 1);
    fs::write(s.pkg(), bytes).expect("write");
    let verified = match verify_package(&s.pkg(), &policy) {
        Ok(m) => {
            assert_eq!(*m, *original);
            true
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                !text.contains('\n') && text.len() < 400,
                "one short line: {text}"
            );
            false
        }
    };
    match open_package(&s.pkg(), &policy, &s.parent()) {
        Ok(opened) => {
            assert!(verified, "open accepted what verify refused");
            assert_eq!(*opened.manifest, *original);
            let mut expected = Vec::new();
            for (name, data) in files {
                assert_eq!(&fs::read(opened.dir.join(name)).expect("read"), data);
                expected.push(name.clone());
            }
            let mut found: Vec<String> = tree(&opened.dir)
                .into_iter()
                .filter(|p| opened.dir.join(p).is_file())
                .collect();
            found.sort();
            expected.sort();
            assert_eq!(found, expected);
        }
        Err(_) => {
            assert!(!verified, "verify accepted what open refused");
            assert_eq!(tree(s.root.path()), Scratch::baseline());
        }
    }
    verified
}

struct FuzzFixture {
    manifest: Manifest,
    files: BTreeMap<String, Vec<u8>>,
    package: Vec<u8>,
    tar: Vec<u8>,
}

fn fuzz_fixture() -> &'static FuzzFixture {
    static FIXTURE: std::sync::OnceLock<FuzzFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let files: &[(&str, &[u8])] = &[("m.ko", KO), ("d/x", b"payload two")];
        let (_, package) = good_package(files);
        let mut entries = metadata(files);
        entries.extend(files.iter().map(|(n, d)| file(n, d)));
        FuzzFixture {
            manifest: manifest_listing(files),
            files: files
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.to_vec()))
                .collect(),
            package,
            tar: tar(&entries),
        }
    })
}

/// `true` when `mutated` differs from `original` at most in padding bits of the final
/// deflate byte (see [`final_deflate_byte`]).
fn differs_only_in_final_byte(original: &[u8], mutated: &[u8]) -> bool {
    original.len() == mutated.len()
        && (0..original.len())
            .all(|i| i == final_deflate_byte(original) || original[i] == mutated[i])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutations of the compressed package: refused, unless only deflate padding changed.
    #[test]
    fn fuzz_mutated_packages(edits in prop::collection::vec(mutation(), 1..6)) {
        let f = fuzz_fixture();
        let mutated = mutate(f.package.clone(), &edits);
        let accepted = check_fuzzed(&mutated, &f.manifest, &f.files);
        prop_assert!(!accepted || differs_only_in_final_byte(&f.package, &mutated));
    }

    /// Mutations of the tar stream, recompressed so the gzip layer is valid and the tar
    /// parser and entry rules see the damage.
    #[test]
    fn fuzz_mutated_archives(edits in prop::collection::vec(mutation(), 1..6)) {
        let f = fuzz_fixture();
        check_fuzzed(&gz(&mutate(f.tar.clone(), &edits)), &f.manifest, &f.files);
    }

    /// Random bytes behind a valid gzip header, raw and compressed: always refused.
    #[test]
    fn fuzz_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let f = fuzz_fixture();
        let mut raw = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
        raw.extend_from_slice(&bytes);
        prop_assert!(!check_fuzzed(&raw, &f.manifest, &f.files));
        prop_assert!(!check_fuzzed(&gz(&bytes), &f.manifest, &f.files));
    }
}

// ---- the command lines -----------------------------------------------------------------------

/// Runs a binary in `cwd` with HOME pointing there too; returns (exit code, stdout, stderr).
fn run(bin: &Path, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .env("HOME", cwd)
        .env("KSPLICE_STATE_DIR", cwd.join("state"))
        .output()
        .expect("run binary");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binaries_keygen_pack_verify_round_trip_and_refusals() {
    let build = ksplice_tests::cargo_bin("builder", "ksplice-build");
    let ksplice = ksplice_tests::cargo_bin("client", "ksplice");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    // keygen: three files, private key 0600, refuses to run twice.
    let (code, out, err) = run(&build, d, &["keygen", "--out", "keys"]);
    assert_eq!(code, 0, "{out}{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(d.join("keys/signing.key"))
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let secret_before = fs::read(d.join("keys/signing.key")).expect("read");
    let (code, _, err) = run(&build, d, &["keygen", "--out", "keys"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("signing.key") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(
        fs::read(d.join("keys/signing.key")).expect("read"),
        secret_before
    );

    // pack: a manifest with empty `files`, filled from FILE....
    let mut m = manifest_listing(&[("ksplice_t_1.ko", KO)]);
    m.files.clear();
    fs::write(d.join("manifest.toml"), m.to_toml().expect("toml")).expect("manifest");
    fs::write(d.join("ksplice_t_1.ko"), KO).expect("ko");
    let (code, out, err) = run(
        &build,
        d,
        &[
            "pack",
            "--manifest",
            "manifest.toml",
            "--key",
            "keys/signing.key",
            "ksplice_t_1.ko",
            "-o",
            "pkg.tar.gz",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let trust = TrustPolicy::load(&d.join("keys/trust.toml")).expect("trust.toml");
    let verified = verify_package(&d.join("pkg.tar.gz"), &trust).expect("library verifies");
    assert_eq!(*verified, manifest_listing(&[("ksplice_t_1.ko", KO)]));

    // verify: accepted.
    let (code, out, err) = run(
        &ksplice,
        d,
        &["verify", "pkg.tar.gz", "--trust", "keys/trust.toml"],
    );
    assert_eq!(code, 0, "{out}{err}");

    // pack refusals: a manifest that fails validation, and a public key given as --key.
    fs::write(
        d.join("bad.toml"),
        m.to_toml()
            .expect("toml")
            .replace("id = \"t-1\"", "id = \"BAD\""),
    )
    .expect("bad");
    let (code, _, err) = run(
        &build,
        d,
        &[
            "pack",
            "--manifest",
            "bad.toml",
            "--key",
            "keys/signing.key",
            "ksplice_t_1.ko",
            "-o",
            "x.tar.gz",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid update id"), "{err}");
    let (code, _, err) = run(
        &build,
        d,
        &[
            "pack",
            "--manifest",
            "manifest.toml",
            "--key",
            "keys/signing.pub",
            "ksplice_t_1.ko",
            "-o",
            "x.tar.gz",
        ],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run(
        &build,
        d,
        &[
            "pack",
            "--manifest",
            "missing.toml",
            "--key",
            "keys/signing.key",
            "ksplice_t_1.ko",
            "-o",
            "x.tar.gz",
        ],
    );
    assert_eq!(code, 1);
    let (code, _, _) = run(&build, d, &["pack", "--bogus"]);
    assert_eq!(code, 1);
    assert!(!d.join("x.tar.gz").exists());

    // verify refusals, each with one line naming the cause.
    let good = fs::read(d.join("pkg.tar.gz")).expect("read");
    let mut tampered = good.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    fs::write(d.join("tampered.tar.gz"), tampered).expect("write");
    let (code, _, err) = run(
        &ksplice,
        d,
        &["verify", "tampered.tar.gz", "--trust", "keys/trust.toml"],
    );
    assert_ne!(code, 0, "tampered accepted");
    assert!(!err.trim().is_empty());

    let (code, _, _) = run(&build, d, &["keygen", "--out", "other"]);
    assert_eq!(code, 0);
    let (code, _, err) = run(
        &ksplice,
        d,
        &["verify", "pkg.tar.gz", "--trust", "other/trust.toml"],
    );
    assert_ne!(code, 0, "unknown key accepted");
    assert!(err.contains("untrusted"), "{err}");

    let (mf, sig) = signed(&[("m.ko", KO)], &[&key(1)]);
    let dotdot = gz(&tar(&[
        file("manifest.toml", &mf),
        file("manifest.sig", &sig),
        file("../m.ko", KO),
    ]));
    fs::write(d.join("dotdot.tar.gz"), dotdot).expect("write");
    fs::write(d.join("trust1.toml"), policy(&[&key(1)], 1).to_toml()).expect("write");
    let (code, _, err) = run(
        &ksplice,
        d,
        &["verify", "dotdot.tar.gz", "--trust", "trust1.toml"],
    );
    assert_ne!(code, 0, "../ accepted");
    assert!(err.contains("'..'") && err.contains("../m.ko"), "{err}");

    // Nothing but what the commands were asked to write, all inside the temp dir.
    let mut expected: Vec<String> = [
        "bad.toml",
        "dotdot.tar.gz",
        "keys",
        "keys/signing.key",
        "keys/signing.pub",
        "keys/trust.toml",
        "ksplice_t_1.ko",
        "manifest.toml",
        "other",
        "other/signing.key",
        "other/signing.pub",
        "other/trust.toml",
        "pkg.tar.gz",
        "tampered.tar.gz",
        "trust1.toml",
    ]
    .map(String::from)
    .to_vec();
    expected.sort();
    let found: Vec<String> = tree(d)
        .into_iter()
        .filter(|p| !p.starts_with("state"))
        .collect();
    assert_eq!(found, expected);
}

// ---- canonical archives only (issue 9 finding 6) ---------------------------------------------

/// `m.ko`'s canonical entry with its header edited by `edit` (checksum recomputed after,
/// unless `keep_cksum`).
fn edited(edit: impl FnOnce(&mut tar::Header), recompute_cksum: bool) -> Vec<u8> {
    let mut e = file("m.ko", KO);
    let mut header = tar::Header::new_old();
    header.as_mut_bytes().copy_from_slice(&e[..512]);
    edit(&mut header);
    if recompute_cksum {
        header.set_cksum();
    }
    e[..512].copy_from_slice(header.as_bytes());
    e
}

/// The canonical entry for `m.ko` with header bytes `range` replaced by `bytes`.
fn patched(range: std::ops::Range<usize>, bytes: &[u8]) -> Vec<u8> {
    edited(|h| h.as_mut_bytes()[range].copy_from_slice(bytes), true)
}

/// Issue 9 finding 6: v7 and GNU headers were accepted.
#[test]
fn non_ustar_headers_are_refused() {
    for (magic, version) in [(*b"\0\0\0\0\0\0", *b"\0\0"), (*b"ustar ", *b" \0")] {
        let e = edited(
            |h| {
                h.as_mut_bytes()[257..263].copy_from_slice(&magic);
                h.as_mut_bytes()[263..265].copy_from_slice(&version);
            },
            true,
        );
        let err = refuse_entries(&with_payload(vec![e]));
        assert!(
            matches!(err, Error::NotUstar { ref entry } if entry == "m.ko"),
            "{magic:?}: {err}"
        );
    }
}

/// Issue 9 finding 6: typeflag `\0` (the pre-POSIX regular file) was accepted.
#[test]
fn old_style_regular_typeflag_is_refused() {
    let err = refuse_entries(&with_payload(vec![patched(156..157, b"\0")]));
    assert!(
        matches!(err, Error::UnsupportedEntryType { ref entry, typeflag: '\0' } if entry == "m.ko"),
        "{err}"
    );
}

/// Issue 9 finding 6: any mode was accepted.
#[test]
fn entry_mode_other_than_0644_is_refused() {
    for mode in [&b"0000755\0"[..], b"0100644\0", b"000644 \0"] {
        let err = refuse_entries(&with_payload(vec![patched(100..108, mode)]));
        assert!(
            matches!(err, Error::EntryMode { ref entry, .. } if entry == "m.ko"),
            "{mode:?}: {err}"
        );
    }
}

/// Issue 9 finding 6: any owner was accepted.
#[test]
fn entry_owner_other_than_root_is_refused() {
    for (range, value) in [
        (108..116, &b"0001750\0"[..]),
        (116..124, b"0001750\0"),
        (108..116, b"\0\0\0\0\0\0\0\0"),
        (265..269, b"root"),
        (297..301, b"root"),
    ] {
        let err = refuse_entries(&with_payload(vec![patched(range.clone(), value)]));
        assert!(
            matches!(err, Error::EntryOwner { ref entry } if entry == "m.ko"),
            "{range:?}: {err}"
        );
    }
}

/// Issue 9 finding 6: bytes after the NUL ending a name were ignored.
#[test]
fn name_field_with_bytes_after_its_nul_is_refused() {
    let err = refuse_entries(&with_payload(vec![patched(0..10, b"m.ko\0junk!")]));
    assert!(
        matches!(err, Error::NameNotNulPadded { ref entry } if entry == "m.ko"),
        "{err}"
    );
}

/// Issue 9 finding 6: other header fields (time, size spelling, link name, device
/// numbers, prefix, reserved bytes) were not compared.
#[test]
fn other_non_canonical_header_fields_are_refused() {
    let size = format!("{:011o} ", KO.len());
    for (range, value, field) in [
        (136..148, &b"00000000001\0"[..], "mtime"),
        (124..136, size.as_bytes(), "size"),
        (157..163, b"target", "linkname"),
        (329..337, b"0000001\0", "devmajor"),
        (337..345, b"0000001\0", "devminor"),
        (345..348, b"dir", "prefix"),
        (500..501, b"x", "reserved bytes"),
    ] {
        let err = refuse_entries(&with_payload(vec![patched(range, value)]));
        assert!(
            matches!(err, Error::NonCanonicalHeader { ref entry, field: f } if entry == "m.ko" && f == field),
            "{field}: {err}"
        );
    }
}

/// Issue 9 finding 6: a checksum in another spelling (GNU tar's six digits, NUL, space)
/// or simply wrong.
#[test]
fn header_checksum_not_as_written_is_refused() {
    let gnu_spelling = edited(
        |h| {
            h.set_cksum();
            let field = &mut h.as_mut_bytes()[148..156];
            let digits: Vec<u8> = field[1..7].to_vec();
            field[..6].copy_from_slice(&digits);
            field[6] = 0;
            field[7] = b' ';
        },
        false,
    );
    let wrong = edited(
        |h| h.as_mut_bytes()[148..156].copy_from_slice(b"0000001\0"),
        false,
    );
    for e in [gnu_spelling, wrong] {
        let err = refuse_entries(&with_payload(vec![e]));
        assert!(
            matches!(err, Error::HeaderChecksum { ref entry } if entry == "m.ko"),
            "{err}"
        );
    }
}

/// Issue 9 finding 6: non-zero bytes in the padding after an entry's data were ignored.
#[test]
fn non_zero_padding_is_refused() {
    let mut e = file("m.ko", KO);
    let last = e.len() - 1;
    e[last] = b'!';
    let err = refuse_entries(&with_payload(vec![e]));
    assert!(
        matches!(err, Error::NonZeroPadding { ref entry } if entry == "m.ko"),
        "{err}"
    );
}

/// Issue 9 finding 6: an archive without its two zero blocks (or with one) was accepted;
/// extra zero blocks are refused too (pack writes exactly two).
#[test]
fn end_of_archive_must_be_exactly_two_zero_blocks() {
    let entries = with_payload(vec![file("m.ko", KO)]);
    for (zeros, expect_missing) in [(0, true), (512, true), (1536, false), (10240, false)] {
        let mut data = entries.concat();
        data.resize(data.len() + zeros, 0);
        let err = refuse_entries_bytes(&gz(&data));
        if expect_missing {
            assert!(matches!(err, Error::MissingEndOfArchive), "{zeros}: {err}");
        } else {
            assert!(
                matches!(
                    err,
                    Error::TrailingData {
                        what: "zero blocks after the end-of-archive marker"
                    }
                ),
                "{zeros}: {err}"
            );
        }
    }
}

/// Issue 9 finding 6: `m.ko` and `M.KO` (or `MANIFEST.TOML`) are one file on a
/// case-insensitive file system.
#[test]
fn names_differing_only_in_case_are_refused() {
    let err = refuse_entries(&with_payload(vec![file("m.ko", KO), file("M.KO", KO)]));
    assert!(
        matches!(err, Error::DuplicateEntryIgnoringCase { ref entry, ref other } if entry == "M.KO" && other == "m.ko"),
        "{err}"
    );
    let err = refuse_entries(&with_payload(vec![file("Manifest.Toml", b"x")]));
    assert!(
        matches!(err, Error::DuplicateEntryIgnoringCase { ref entry, ref other } if entry == "Manifest.Toml" && other == "manifest.toml"),
        "{err}"
    );
}

/// What `ksplice-build pack` writes passes the canonical checks (and the crafted
/// archives of this file are canonical unless a test edits them).
#[test]
fn crafted_and_written_archives_are_identical() {
    let files: &[(&str, &[u8])] = &[("m.ko", KO)];
    let (_, written) = good_package(files);
    let mut out = flate2::read::GzDecoder::new(&written[..]);
    let mut tar_bytes = Vec::new();
    std::io::Read::read_to_end(&mut out, &mut tar_bytes).expect("gunzip");
    let mut crafted = metadata(files);
    crafted.push(file("m.ko", KO));
    assert_eq!(tar_bytes, tar(&crafted));
}

// ---- reading from one descriptor (issue 9 findings 1 and 2) ----------------------------------

/// Issue 9 finding 1: the package path was followed through symlinks and a fifo hung the
/// reader; now it must be a regular file reached without a final symlink.
#[test]
fn package_that_is_a_symlink_fifo_device_or_directory_is_refused() {
    let (s, _) = good_package(&[("m.ko", KO)]);
    let policy = policy(&[&key(1)], 1);
    let link = s.root.path().join("link.tar.gz");
    std::os::unix::fs::symlink(s.pkg(), &link).expect("symlink");
    let zero = s.root.path().join("zero.tar.gz");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    let fifo = s.root.path().join("fifo.tar.gz");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    for (path, kind) in [
        (link, "a symbolic link"),
        (zero, "a symbolic link"),
        (fifo, "a fifo"),
        (PathBuf::from("/dev/zero"), "a device"),
        (s.parent(), "a directory"),
    ] {
        let err = verify_package(&path, &policy).expect_err("refused");
        assert!(
            matches!(err, Error::NotRegularFile { kind: k, .. } if k == kind),
            "{}: {err}",
            path.display()
        );
        let err = open_package(&path, &policy, &s.parent()).expect_err("refused");
        assert!(matches!(err, Error::NotRegularFile { .. }), "{err}");
    }
    assert_eq!(tree(&s.parent()), Vec::<String>::new());
}

/// Issue 9 finding 2: after extraction the module was re-opened by path, so a racer who
/// swapped the extraction directory (or a file in it) had an unsigned module loaded.
/// `open_payload` opens relative to the directory descriptor taken at creation and
/// re-hashes what it opened.
#[test]
fn open_payload_gives_the_verified_bytes_whatever_happens_to_the_paths() {
    use std::os::unix::fs::PermissionsExt;
    let files: &[(&str, &[u8])] = &[("m.ko", KO), ("d/e/x", b"nested")];
    let (s, bytes) = good_package(files);
    let policy = policy(&[&key(1)], 1);
    let opened = manifests::open_package_bytes(&bytes, &policy, &s.parent()).expect("open");
    // Modes are exact: directories 0700, files 0600.
    for rel in tree(&opened.dir) {
        let path = opened.dir.join(&rel);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{rel}");
    }
    // The racer moves the directory away and puts its own at the same path.
    let moved = s.root.path().join("moved");
    fs::rename(&opened.dir, &moved).expect("rename");
    fs::create_dir(&opened.dir).expect("mkdir");
    fs::write(opened.dir.join("m.ko"), b"unsigned module").expect("plant");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut opened.open_payload("m.ko").expect("open"), &mut got)
        .expect("read");
    assert_eq!(got, KO);
    let mut nested = Vec::new();
    std::io::Read::read_to_end(
        &mut opened.open_payload("d/e/x").expect("open"),
        &mut nested,
    )
    .expect("read");
    assert_eq!(nested, b"nested");
    // A file changed inside the real directory is refused, not loaded.
    fs::write(
        moved.join("m.ko"),
        b"unsigned module with the right length!!!!!!!!!!",
    )
    .expect("rewrite");
    let err = opened.open_payload("m.ko").expect_err("changed");
    assert!(
        matches!(err, Error::DigestMismatch { ref file } | Error::LengthMismatch { ref file, .. } if file == "m.ko"),
        "{err}"
    );
    // A symlink in place of the file is not followed.
    fs::remove_file(moved.join("m.ko")).expect("rm");
    std::os::unix::fs::symlink(opened.dir.join("m.ko"), moved.join("m.ko")).expect("symlink");
    assert!(opened.open_payload("m.ko").is_err());
    // Not listed: refused.
    assert!(matches!(
        opened.open_payload("other"),
        Err(Error::MissingFile { .. })
    ));
}

/// Issue 9 finding 3: verification works from bytes, without any directory.
#[test]
fn verify_package_bytes_needs_no_file_system() {
    let (_, bytes) = good_package(&[("m.ko", KO)]);
    let v = manifests::verify_package_bytes(&bytes, &policy(&[&key(1)], 1)).expect("verify");
    assert_eq!(*v.manifest, manifest_listing(&[("m.ko", KO)]));
    let again = manifests::verify_manifest(
        &v.manifest_bytes,
        &v.signature_bytes,
        &policy(&[&key(1)], 1),
    )
    .expect("re-verify");
    assert_eq!(*again, *v.manifest);
}
