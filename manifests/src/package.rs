//! The signed package `ksplice-<id>.tar.gz`: writing it, and reading it with signatures checked first.
//!
//! Layout: a gzip stream (fixed 10-byte header, no name or time) of a ustar archive whose
//! entries are `manifest.toml`, `manifest.sig`, then exactly the payload files the manifest
//! lists, all regular files. The reader enforces the caps below while streaming, so memory
//! stays bounded by the manifest and signature caps whatever the input.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::entry_name::{self, EntryName, NameProblem};
use crate::error::{Error, Result};
use crate::keys::{SigningKey, TrustPolicy};
use crate::manifest::{Manifest, PayloadFile};
use crate::signature::{sign_manifest, verify_manifest};
use crate::verified::Verified;

/// Largest package file accepted (compressed bytes).
pub const MAX_PACKAGE_BYTES: u64 = 64 << 20;
/// Largest decompressed archive accepted (tar headers, data and padding).
pub const MAX_UNPACKED_BYTES: u64 = 256 << 20;
/// Most archive entries accepted, `manifest.toml` and `manifest.sig` included.
pub const MAX_ENTRIES: usize = 1024;
/// Largest `manifest.toml` accepted.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest `manifest.sig` accepted.
pub const MAX_SIGNATURE_BYTES: u64 = 64 << 10;

/// Name of the first archive entry.
pub const MANIFEST_ENTRY: &str = "manifest.toml";
/// Name of the second archive entry.
pub const SIGNATURE_ENTRY: &str = "manifest.sig";

/// The only gzip header ksplice writes and reads: deflate, no flags, mtime 0, no extra
/// flags, OS "unknown". Fixing it means no byte of the package is outside the checks
/// (the gzip CRC covers the content, signatures and digests cover the meaning).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];

/// A verified package extracted into a fresh directory.
#[derive(Debug)]
pub struct OpenedPackage {
    pub manifest: Verified<Manifest>,
    /// The fresh directory holding exactly the payload files (`dir/<files[].path>`).
    pub dir: PathBuf,
    /// The exact signed `manifest.toml` bytes (to store and re-verify later).
    pub manifest_bytes: Vec<u8>,
    /// The exact `manifest.sig` bytes.
    pub signature_bytes: Vec<u8>,
}

/// Writes a signed package and returns its path.
///
/// `out` is the package path, or an existing directory to write `ksplice-<id>.tar.gz` in.
/// `payload` pairs a relative path inside the package with the file to read it from.
/// The manifest's `files` are filled from the payload; if the given manifest already lists
/// files they must match the payload exactly ([`Error::FilesMismatch`]). The manifest is
/// serialized once and those exact bytes are signed by every key. The package is written
/// to a temporary file next to the target and renamed into place.
pub fn write_package(
    out: &Path,
    manifest: &Manifest,
    keys: &[&SigningKey],
    payload: &[(String, PathBuf)],
) -> Result<PathBuf> {
    if keys.is_empty() {
        return Err(Error::NoSigningKey);
    }
    // 1. Read and hash the payload, each file once, so what is listed is what is packed.
    let mut contents = Vec::with_capacity(payload.len());
    let mut files = Vec::with_capacity(payload.len());
    for (rel, source) in payload {
        // Half the unpacked cap: the manifest's own rule for the sum of all files.
        let bytes = read_capped(source, MAX_UNPACKED_BYTES / 2)?;
        files.push(PayloadFile {
            path: rel.clone(),
            len: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
        contents.push(bytes);
    }
    let mut manifest = manifest.clone();
    if !manifest.files.is_empty() {
        check_same_files(&manifest.files, &files)?;
    }
    manifest.files = files;
    // 2. Validate, serialize once, sign those bytes.
    manifest.validate()?;
    let manifest_bytes = manifest.to_toml()?.into_bytes();
    let signature_bytes = sign_manifest(&manifest_bytes, keys)?;

    // 3. Write next to the target and rename, so readers never see half a package.
    let target = if out.is_dir() {
        out.join(manifest.package_file_name())
    } else {
        out.to_owned()
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.{}.tmp", random_hex()?));
    let result = write_archive(
        &temp,
        &manifest_bytes,
        &signature_bytes,
        &manifest.files,
        &contents,
    )
    .and_then(|size| {
        if size > MAX_PACKAGE_BYTES {
            return Err(Error::PackageTooLarge {
                path: target.clone(),
                size,
                max: MAX_PACKAGE_BYTES,
            });
        }
        fs::rename(&temp, &target).map_err(|e| Error::io(&target, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| target)
}

/// Verifies a package without writing anything: signatures, manifest, archive structure,
/// and the length and sha256 of every payload file (streamed, never held in memory).
pub fn verify_package(pkg: &Path, policy: &TrustPolicy) -> Result<Verified<Manifest>> {
    let read = read_package(pkg, policy, &mut Sink::Discard)?;
    Ok(read.manifest)
}

/// Verifies a package and extracts its payload into a fresh directory under `parent`
/// (named `ksplice-<id>.<random>`, mode 0700). Signatures are checked before the directory
/// is created; on any later failure (even a panic) the directory is removed again.
pub fn open_package(pkg: &Path, policy: &TrustPolicy, parent: &Path) -> Result<OpenedPackage> {
    let mut sink = Sink::Extract {
        parent: parent.to_owned(),
        dir: None,
    };
    // On any error (or unwinding) `sink` is dropped still holding the directory,
    // and its Drop removes it; only success takes the directory out.
    let read = read_package(pkg, policy, &mut sink)?;
    let dir = match &mut sink {
        Sink::Extract { dir, .. } => dir.take(),
        Sink::Discard => None,
    };
    let dir = dir.expect("invariant: a verified package has created its directory");
    Ok(OpenedPackage {
        manifest: read.manifest,
        dir,
        manifest_bytes: read.manifest_bytes,
        signature_bytes: read.signature_bytes,
    })
}

// ---- writing ---------------------------------------------------------------------------------

fn check_same_files(listed: &[PayloadFile], actual: &[PayloadFile]) -> Result<()> {
    let listed_map: BTreeMap<&str, &PayloadFile> =
        listed.iter().map(|f| (f.path.as_str(), f)).collect();
    let actual_map: BTreeMap<&str, &PayloadFile> =
        actual.iter().map(|f| (f.path.as_str(), f)).collect();
    for (path, file) in &listed_map {
        match actual_map.get(path) {
            None => {
                return Err(Error::FilesMismatch {
                    path: (*path).to_owned(),
                    reason: "is listed but not given",
                })
            }
            Some(a) if a.len != file.len => {
                return Err(Error::FilesMismatch {
                    path: (*path).to_owned(),
                    reason: "has a different length",
                })
            }
            Some(a) if a.sha256 != file.sha256 => {
                return Err(Error::FilesMismatch {
                    path: (*path).to_owned(),
                    reason: "has a different sha256",
                })
            }
            Some(_) => {}
        }
    }
    if let Some(path) = actual_map.keys().find(|p| !listed_map.contains_key(*p)) {
        return Err(Error::FilesMismatch {
            path: (*path).to_owned(),
            reason: "is given but not listed",
        });
    }
    Ok(())
}

/// Writes the archive to a new file and returns its size.
fn write_archive(
    path: &Path,
    manifest_bytes: &[u8],
    signature_bytes: &[u8],
    files: &[PayloadFile],
    contents: &[Vec<u8>],
) -> Result<u64> {
    let io_err = |e| Error::io(path, e);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(io_err)?;
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut append = |name: &str, data: &[u8]| -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, name, data)
    };
    append(MANIFEST_ENTRY, manifest_bytes).map_err(io_err)?;
    append(SIGNATURE_ENTRY, signature_bytes).map_err(io_err)?;
    for (file, data) in files.iter().zip(contents) {
        append(&file.path, data).map_err(io_err)?;
    }
    let gz = tar.into_inner().map_err(io_err)?;
    let writer = gz.finish().map_err(io_err)?;
    let file = writer.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(file.metadata().map_err(io_err)?.len())
}

fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(Error::PayloadTooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(bytes)
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Error::io("getrandom", io::Error::other(e.to_string())))?;
    Ok(hex::encode(bytes))
}

// ---- reading ---------------------------------------------------------------------------------

/// Where verified payload bytes go.
enum Sink {
    Discard,
    /// Extract under `parent`; `dir` is set once the fresh directory exists.
    Extract {
        parent: PathBuf,
        dir: Option<PathBuf>,
    },
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::Extract { dir: Some(dir), .. } = self {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

struct ReadPackage {
    manifest: Verified<Manifest>,
    manifest_bytes: Vec<u8>,
    signature_bytes: Vec<u8>,
}

/// Counts decompressed bytes and fails once more than the cap has been produced.
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Probe one byte: reaching exactly the cap is fine, going past is not.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.set(true);
                    Err(io::Error::other("decompressed size cap exceeded"))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

type Decoder = Capped<flate2::bufread::GzDecoder<BufReader<io::Take<fs::File>>>>;

fn read_package(pkg: &Path, policy: &TrustPolicy, sink: &mut Sink) -> Result<ReadPackage> {
    // 1. Compressed cap, and the fixed gzip header.
    let mut file = fs::File::open(pkg).map_err(|e| Error::io(pkg, e))?;
    let size = file.metadata().map_err(|e| Error::io(pkg, e))?.len();
    if size > MAX_PACKAGE_BYTES {
        return Err(Error::PackageTooLarge {
            path: pkg.to_owned(),
            size,
            max: MAX_PACKAGE_BYTES,
        });
    }
    let mut header = [0u8; GZIP_HEADER.len()];
    match file.read_exact(&mut header) {
        Ok(()) if header == GZIP_HEADER => {}
        Ok(()) => return Err(Error::NotCanonicalGzip),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(Error::NotCanonicalGzip),
        Err(e) => return Err(Error::io(pkg, e)),
    }
    file.rewind().map_err(|e| Error::io(pkg, e))?;
    // The file may grow after the size check; `take` keeps the cap anyway.
    let exceeded = Rc::new(Cell::new(false));
    let decoder: Decoder = Capped {
        inner: flate2::bufread::GzDecoder::new(BufReader::new(file.take(MAX_PACKAGE_BYTES))),
        left: MAX_UNPACKED_BYTES,
        exceeded: Rc::clone(&exceeded),
    };
    let archive_err = |source: io::Error| {
        if exceeded.get() {
            Error::UnpackedTooLarge {
                max: MAX_UNPACKED_BYTES,
            }
        } else {
            Error::malformed(&source)
        }
    };

    let mut archive = tar::Archive::new(decoder);
    // Raw mode: GNU long names and pax headers come out as entries (and are refused)
    // instead of being buffered whole by the tar crate.
    let mut entries = archive.entries().map_err(archive_err)?.raw(true);
    let mut next_entry = |count: &mut usize| -> Result<Option<tar::Entry<'_, Decoder>>> {
        match entries.next() {
            None => Ok(None),
            Some(Err(e)) => Err(archive_err(e)),
            Some(Ok(entry)) => {
                *count += 1;
                if *count > MAX_ENTRIES {
                    return Err(Error::TooManyEntries { max: MAX_ENTRIES });
                }
                Ok(Some(entry))
            }
        }
    };
    let mut count = 0;
    let mut seen: BTreeSet<String> = BTreeSet::new();

    // 2. manifest.toml, then manifest.sig, bounded reads.
    let mut metadata = |count: &mut usize, name: &'static str, max: u64| -> Result<Vec<u8>> {
        let mut entry = next_entry(count)?.ok_or(Error::MissingMetadata { entry: name })?;
        let found = check_entry(&entry)?;
        if found.as_str() != name {
            let entry = found.as_str().to_owned();
            return Err(if name == MANIFEST_ENTRY {
                Error::ManifestNotFirst { entry }
            } else if entry == MANIFEST_ENTRY {
                Error::DuplicateEntry { entry }
            } else {
                Error::SignatureNotSecond { entry }
            });
        }
        seen.insert(found.as_str().to_owned());
        let size = entry.header().size().map_err(archive_err)?;
        if size > max {
            return Err(Error::MetadataTooLarge {
                entry: name,
                size,
                max,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(archive_err)?;
        if bytes.len() as u64 != size {
            return Err(truncated(name));
        }
        Ok(bytes)
    };
    let manifest_bytes = metadata(&mut count, MANIFEST_ENTRY, MAX_MANIFEST_BYTES)?;
    let signature_bytes = metadata(&mut count, SIGNATURE_ENTRY, MAX_SIGNATURE_BYTES)?;

    // 3. Signatures over the exact bytes, then the manifest's own rules — before any
    //    payload byte is read or anything is created on disk.
    let manifest = verify_manifest(&manifest_bytes, &signature_bytes, policy)?;
    let listed: BTreeMap<&str, &PayloadFile> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    if let Sink::Extract { parent, dir } = sink {
        *dir = Some(create_fresh_dir(parent, &manifest.id)?);
    }

    // 4. Payload: only listed, regular, unique entries whose length and digest match.
    while let Some(mut entry) = next_entry(&mut count)? {
        let entry_name = check_entry(&entry)?;
        let name = entry_name.as_str().to_owned();
        if seen.contains(&name) {
            return Err(Error::DuplicateEntry { entry: name });
        }
        let Some(file) = listed.get(name.as_str()).copied() else {
            return Err(Error::UnlistedEntry { entry: name });
        };
        seen.insert(name.clone());
        let size = entry.header().size().map_err(archive_err)?;
        if size != file.len {
            return Err(Error::LengthMismatch {
                file: name,
                expected: file.len,
                actual: size,
            });
        }
        let mut out = match sink {
            Sink::Discard => None,
            Sink::Extract { dir: Some(dir), .. } => Some(create_payload_file(dir, &entry_name)?),
            Sink::Extract { dir: None, .. } => {
                unreachable!("invariant: directory created after verification")
            }
        };
        let mut hasher = Sha256::new();
        let mut copied: u64 = 0;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = entry.read(&mut buf).map_err(archive_err)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            hasher.update(&buf[..n]);
            if let Some((path, out)) = out.as_mut() {
                out.write_all(&buf[..n]).map_err(|e| Error::io(&*path, e))?;
            }
        }
        if copied != size {
            return Err(truncated(&name));
        }
        if copied != file.len {
            return Err(Error::LengthMismatch {
                file: name,
                expected: file.len,
                actual: copied,
            });
        }
        if hex::encode(hasher.finalize()) != file.sha256 {
            return Err(Error::DigestMismatch { file: name });
        }
        if let Some((path, out)) = out {
            let file = out
                .into_inner()
                .map_err(|e| Error::io(&path, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
    }

    // 5. Every listed file must have been present.
    if let Some(missing) = manifest.files.iter().find(|f| !seen.contains(&f.path)) {
        return Err(Error::MissingFile {
            file: missing.path.clone(),
        });
    }

    // 6. The rest of the tar stream is zero padding; reading it to the end makes the
    //    gzip decoder check its CRC and length, and nothing may follow the gzip member.
    let mut rest = archive.into_inner();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rest.read(&mut buf).map_err(archive_err)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(Error::TrailingData {
                what: "non-zero data",
            });
        }
    }
    let compressed = rest.inner.get_mut();
    if !compressed
        .fill_buf()
        .map_err(|e| Error::io(pkg, e))?
        .is_empty()
    {
        return Err(Error::TrailingData {
            what: "bytes after the gzip stream",
        });
    }

    Ok(ReadPackage {
        manifest,
        manifest_bytes,
        signature_bytes,
    })
}

/// The tar stream ended inside an entry's data (the gzip layer itself was complete).
fn truncated(entry: &str) -> Error {
    Error::MalformedArchive {
        reason: format!("entry {entry:?} is truncated"),
    }
}

/// Name and type rules every entry must pass before anything else is looked at.
fn check_entry<R: Read>(entry: &tar::Entry<'_, R>) -> Result<EntryName> {
    let raw = entry.header().path_bytes();
    let name = || entry_name::display(&raw);
    let valid = match EntryName::new(&raw) {
        Ok(valid) => valid,
        Err(NameProblem::Absolute) => return Err(Error::AbsolutePath { entry: name() }),
        Err(NameProblem::ParentDirectory) => return Err(Error::ParentDirectory { entry: name() }),
        Err(NameProblem::Invalid(reason)) => {
            return Err(Error::InvalidEntryName {
                entry: name(),
                reason,
            })
        }
    };
    match entry.header().entry_type() {
        tar::EntryType::Regular => Ok(valid),
        tar::EntryType::Symlink => Err(Error::Symlink { entry: name() }),
        tar::EntryType::Link => Err(Error::Hardlink { entry: name() }),
        tar::EntryType::Char | tar::EntryType::Block => Err(Error::DeviceFile { entry: name() }),
        tar::EntryType::Fifo => Err(Error::Fifo { entry: name() }),
        other => Err(Error::UnsupportedEntryType {
            entry: name(),
            typeflag: char::from(other.as_byte()),
        }),
    }
}

/// Creates `parent/ksplice-<id>.<random>` (mode 0700); never reuses an existing entry.
fn create_fresh_dir(parent: &Path, id: &str) -> Result<PathBuf> {
    let dir = parent.join(format!("ksplice-{id}.{}", random_hex()?));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// Creates `dir/<rel>` (and its parent directories) for writing. `rel` is a checked
/// relative name and `dir` is fresh, so no link or existing file can be followed.
fn create_payload_file(dir: &Path, rel: &EntryName) -> Result<(PathBuf, BufWriter<fs::File>)> {
    let path = dir.join(rel.as_str());
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| Error::io(parent, e))?;
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    Ok((path, BufWriter::new(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_reader_allows_exactly_the_cap() {
        let exceeded = Rc::new(Cell::new(false));
        let mut at_cap = Capped {
            inner: &[7u8; 10][..],
            left: 10,
            exceeded: Rc::clone(&exceeded),
        };
        let mut out = Vec::new();
        at_cap.read_to_end(&mut out).expect("exactly at the cap");
        assert_eq!(out.len(), 10);
        assert!(!exceeded.get());

        let mut over = Capped {
            inner: &[7u8; 11][..],
            left: 10,
            exceeded: Rc::clone(&exceeded),
        };
        assert!(over.read_to_end(&mut Vec::new()).is_err());
        assert!(exceeded.get());
    }

    #[test]
    fn written_package_has_the_canonical_header_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ko = dir.path().join("m.ko");
        fs::write(&ko, b"module").expect("write");
        let mut manifest = crate::manifest::example("u");
        manifest.module.file = "m.ko".into();
        let key = SigningKey::from_seed(&[3; 32]);
        let pkg =
            write_package(dir.path(), &manifest, &[&key], &[("m.ko".into(), ko)]).expect("write");
        assert_eq!(pkg, dir.path().join("ksplice-u.tar.gz"));
        let bytes = fs::read(&pkg).expect("read");
        assert_eq!(bytes[..10], GZIP_HEADER);
        let policy = TrustPolicy::new(vec![key.public()], 1).expect("policy");
        let verified = verify_package(&pkg, &policy).expect("verify");
        assert_eq!(verified.files.len(), 1);
        assert_eq!(verified.files[0].sha256, crate::sha256_hex(b"module"));
        // No temporary file is left next to the package.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 2);
    }

    #[test]
    fn prefilled_files_must_match_the_payload() {
        let file = |path: &str, len, digest: &str| PayloadFile {
            path: path.into(),
            len,
            sha256: digest.into(),
        };
        let actual = [file("a", 1, "x")];
        check_same_files(&[file("a", 1, "x")], &actual).expect("same");
        for (listed, reason) in [
            (vec![file("a", 2, "x")], "has a different length"),
            (vec![file("a", 1, "y")], "has a different sha256"),
            (
                vec![file("a", 1, "x"), file("b", 1, "x")],
                "is listed but not given",
            ),
            (vec![], "is given but not listed"),
        ] {
            let err = check_same_files(&listed, &actual).expect_err("mismatch");
            assert!(
                matches!(err, Error::FilesMismatch { reason: r, .. } if r == reason),
                "{err}"
            );
        }
    }
}
