//! The signed package `ksplice-<id>.tar.gz`: writing it, and reading it with signatures checked first.
//!
//! Layout: a gzip stream (fixed 10-byte header, no name or time) of a ustar archive whose
//! entries are `manifest.toml`, `manifest.sig`, then exactly the payload files the manifest
//! lists, all regular files with the exact headers of [`crate::ustar`]. A package is read
//! into memory once (at most [`MAX_PACKAGE_BYTES`]) from one descriptor; verifying,
//! hashing and copying then all use those same bytes. Decompressed data is streamed, so
//! memory stays bounded by the package and the manifest and signature caps.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::entry_name::{EntryName, NameProblem};
use crate::error::{Error, Result};
use crate::file;
use crate::keys::{KeyId, SigningKey, TrustPolicy};
use crate::manifest::{Manifest, PayloadFile};
use crate::signature::{parse_signature_file, sign_manifest, verify_manifest};
use crate::ustar;
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

/// A package verified without writing anything.
#[derive(Debug)]
pub struct VerifiedPackage {
    pub manifest: Verified<Manifest>,
    /// The exact signed `manifest.toml` bytes (to store and re-verify later).
    pub manifest_bytes: Vec<u8>,
    /// The exact `manifest.sig` bytes.
    pub signature_bytes: Vec<u8>,
}

/// A verified package extracted into a fresh directory.
#[derive(Debug)]
pub struct OpenedPackage {
    pub manifest: Verified<Manifest>,
    /// The fresh directory holding exactly the payload files (`dir/<files[].path>`):
    /// directories mode 0700, files mode 0600.
    pub dir: PathBuf,
    /// The directory as opened right after it was created; payload files are opened
    /// relative to it, never through `dir`.
    dir_fd: OwnedFd,
    /// The exact signed `manifest.toml` bytes (to store and re-verify later).
    pub manifest_bytes: Vec<u8>,
    /// The exact `manifest.sig` bytes.
    pub signature_bytes: Vec<u8>,
}

impl OpenedPackage {
    /// Opens the extracted payload file `rel` (one of the manifest's `files`) relative to
    /// the extraction directory's descriptor, never following a link, re-hashes the bytes
    /// of that descriptor against the manifest and returns it rewound: the caller gets
    /// the verified bytes whatever happened to the paths since extraction.
    pub fn open_payload(&self, rel: &str) -> Result<fs::File> {
        let listed = self
            .manifest
            .files
            .iter()
            .find(|f| f.path == rel)
            .ok_or_else(|| Error::MissingFile {
                file: rel.to_owned(),
            })?;
        let name = EntryName::new(rel.as_bytes()).map_err(|problem| match problem {
            NameProblem::Absolute => Error::AbsolutePath {
                entry: rel.to_owned(),
            },
            NameProblem::ParentDirectory => Error::ParentDirectory {
                entry: rel.to_owned(),
            },
            NameProblem::Invalid(reason) => Error::InvalidEntryName {
                entry: rel.to_owned(),
                reason,
            },
        })?;
        let path = self.dir.join(rel);
        let io_err = |e: rustix::io::Errno| Error::io(&path, file::errno(e));
        let (parent, leaf) = walk(&self.dir, self.dir_fd.as_fd(), &name, false)?;
        let at = parent.as_ref().map_or(self.dir_fd.as_fd(), |fd| fd.as_fd());
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(at, leaf, flags, Mode::empty()).map_err(io_err)?;
        let mut opened = fs::File::from(fd);
        let meta = opened.metadata().map_err(|e| Error::io(&path, e))?;
        file::check_regular(&path, &meta)?;
        let mut hasher = Sha256::new();
        let read = io::copy(&mut (&mut opened).take(listed.len + 1), &mut hasher)
            .map_err(|e| Error::io(&path, e))?;
        if read != listed.len {
            return Err(Error::LengthMismatch {
                file: rel.to_owned(),
                expected: listed.len,
                actual: read,
            });
        }
        if hex::encode(hasher.finalize()) != listed.sha256 {
            return Err(Error::DigestMismatch {
                file: rel.to_owned(),
            });
        }
        opened.rewind().map_err(|e| Error::io(&path, e))?;
        Ok(opened)
    }
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

/// Reads a package file into memory: opened once with `O_NOFOLLOW | O_NONBLOCK`, a regular
/// file by `fstat`, at most [`MAX_PACKAGE_BYTES`] (checked on the size, and again while
/// reading in case it grows). Verify, hash and copy these bytes, never the path again.
pub fn read_package_file(path: &Path) -> Result<Vec<u8>> {
    let (opened, _) = file::open_regular(path)?;
    read_package_from(opened, path)
}

/// [`read_package_file`] for a file the caller opened; `path` names it in errors.
pub fn read_package_from(mut opened: fs::File, path: &Path) -> Result<Vec<u8>> {
    let meta = opened.metadata().map_err(|e| Error::io(path, e))?;
    file::check_regular(path, &meta)?;
    let too_large = |size| Error::PackageTooLarge {
        path: path.to_owned(),
        size,
        max: MAX_PACKAGE_BYTES,
    };
    if meta.len() > MAX_PACKAGE_BYTES {
        return Err(too_large(meta.len()));
    }
    file::read_bounded(&mut opened, path, MAX_PACKAGE_BYTES)?
        .ok_or_else(|| too_large(MAX_PACKAGE_BYTES + 1))
}

/// Verifies package bytes without writing anything: signatures, manifest, archive
/// structure, and the length and sha256 of every payload file (streamed).
pub fn verify_package_bytes(bytes: &[u8], policy: &TrustPolicy) -> Result<VerifiedPackage> {
    let read = read_package(bytes, verifier(policy), &mut Sink::Discard)?;
    Ok(VerifiedPackage {
        manifest: read.manifest,
        manifest_bytes: read.manifest_bytes,
        signature_bytes: read.signature_bytes,
    })
}

/// A package checked by everything but its signers' keys: what a repository that
/// publishes packages (docs/fleet.md) knows without the hosts' trust policies.
#[derive(Debug)]
pub struct InspectedPackage {
    /// The valid, but NOT signature-verified, manifest: never install from it.
    pub manifest: Manifest,
    /// The key ids `manifest.sig` names (their signatures are not checked).
    pub signer_ids: Vec<KeyId>,
}

/// Reads package bytes as [`verify_package_bytes`] does — caps, gzip and archive
/// structure, a well-formed `manifest.sig` with at least one signature, a valid
/// manifest, every payload file's length and sha256 — except that the signatures
/// are not checked against any trust policy: hosts do that.
pub fn inspect_package_bytes(bytes: &[u8]) -> Result<InspectedPackage> {
    let read = read_package(
        bytes,
        |manifest_bytes, signature_bytes| {
            // Parsing refuses a file without any signature line.
            let lines = parse_signature_file(signature_bytes)?;
            let manifest = Manifest::from_signed_bytes(manifest_bytes)?;
            Ok(InspectedPackage {
                manifest,
                signer_ids: lines.into_iter().map(|l| l.key_id).collect(),
            })
        },
        &mut Sink::Discard,
    )?;
    Ok(read.manifest)
}

/// The signature step of [`read_package`] for hosts: the trust policy decides.
fn verifier(policy: &TrustPolicy) -> impl FnOnce(&[u8], &[u8]) -> Result<Verified<Manifest>> + '_ {
    move |manifest_bytes, signature_bytes| verify_manifest(manifest_bytes, signature_bytes, policy)
}

/// Verifies package bytes and extracts the payload into a fresh directory under `parent`
/// (named `ksplice-<id>.<random>`, mode 0700, files 0600). Signatures are checked before
/// the directory is created; on any later failure (even a panic) the directory is
/// removed again.
pub fn open_package_bytes(
    bytes: &[u8],
    policy: &TrustPolicy,
    parent: &Path,
) -> Result<OpenedPackage> {
    let mut sink = Sink::Extract {
        parent: parent.to_owned(),
        dir: None,
    };
    // On any error (or unwinding) `sink` is dropped still holding the directory,
    // and its Drop removes it; only success takes the directory out.
    let read = read_package(bytes, verifier(policy), &mut sink)?;
    let dir = match &mut sink {
        Sink::Extract { dir, .. } => dir.take(),
        Sink::Discard => None,
    };
    let dir = dir.expect("invariant: a verified package has created its directory");
    Ok(OpenedPackage {
        manifest: read.manifest,
        dir: dir.path,
        dir_fd: dir.fd,
        manifest_bytes: read.manifest_bytes,
        signature_bytes: read.signature_bytes,
    })
}

/// [`read_package_file`] then [`verify_package_bytes`].
pub fn verify_package(pkg: &Path, policy: &TrustPolicy) -> Result<Verified<Manifest>> {
    let bytes = read_package_file(pkg)?;
    Ok(verify_package_bytes(&bytes, policy)?.manifest)
}

/// [`read_package_file`] then [`open_package_bytes`].
pub fn open_package(pkg: &Path, policy: &TrustPolicy, parent: &Path) -> Result<OpenedPackage> {
    let bytes = read_package_file(pkg)?;
    open_package_bytes(&bytes, policy, parent)
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
    let mut gz =
        flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
    let zeros = [0u8; 2 * ustar::BLOCK];
    let mut append = |name: &str, data: &[u8]| -> io::Result<()> {
        gz.write_all(&ustar::header(name, data.len() as u64))?;
        gz.write_all(data)?;
        let pad = (ustar::BLOCK - data.len() % ustar::BLOCK) % ustar::BLOCK;
        gz.write_all(&zeros[..pad])
    };
    append(MANIFEST_ENTRY, manifest_bytes).map_err(io_err)?;
    append(SIGNATURE_ENTRY, signature_bytes).map_err(io_err)?;
    for (file, data) in files.iter().zip(contents) {
        append(&file.path, data).map_err(io_err)?;
    }
    // The end-of-archive marker: two zero blocks.
    gz.write_all(&zeros).map_err(io_err)?;
    let writer = gz.finish().map_err(io_err)?;
    let file = writer.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(file.metadata().map_err(io_err)?.len())
}

fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let (mut opened, _) = file::open_regular(path)?;
    file::read_bounded(&mut opened, path, max)?.ok_or_else(|| Error::PayloadTooLarge {
        path: path.to_owned(),
        max,
    })
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
        dir: Option<ExtractDir>,
    },
}

/// The fresh extraction directory: its path (for messages and removal) and a descriptor
/// that every file in it is created and opened relative to.
struct ExtractDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::Extract { dir: Some(dir), .. } = self {
            let _ = fs::remove_dir_all(&dir.path);
        }
    }
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

/// Step 1 of reading: the compressed cap, the fixed gzip header, then one pass over the
/// whole gzip member without parsing it: the decompressed cap, the CRC32 and length in the
/// gzip trailer, and nothing after the member. Cheap, and done before any signature work,
/// so a damaged package is refused as damaged.
fn check_container(bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 > MAX_PACKAGE_BYTES {
        return Err(Error::PackageTooLarge {
            path: PathBuf::from(IN_MEMORY),
            size: bytes.len() as u64,
            max: MAX_PACKAGE_BYTES,
        });
    }
    if bytes.get(..GZIP_HEADER.len()) != Some(&GZIP_HEADER[..]) {
        return Err(Error::NotCanonicalGzip);
    }
    let exceeded = Rc::new(Cell::new(false));
    let mut decoder = Capped {
        inner: flate2::bufread::GzDecoder::new(bytes),
        left: MAX_UNPACKED_BYTES,
        exceeded: Rc::clone(&exceeded),
    };
    if let Err(e) = io::copy(&mut decoder, &mut io::sink()) {
        return Err(if exceeded.get() {
            Error::UnpackedTooLarge {
                max: MAX_UNPACKED_BYTES,
            }
        } else {
            Error::malformed(&e)
        });
    }
    if !decoder.inner.into_inner().is_empty() {
        return Err(Error::TrailingData {
            what: "bytes after the gzip stream",
        });
    }
    Ok(())
}

/// What [`IN_MEMORY`] package errors name instead of a path.
const IN_MEMORY: &str = "(package bytes)";

/// The tar stream of a package whose gzip layer [`check_container`] accepted.
struct TarReader<R> {
    inner: R,
    entries: usize,
}

impl<R: Read> TarReader<R> {
    /// Fills `buf` as far as the stream goes; returns how much was read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::malformed(&e)),
            }
        }
        Ok(done)
    }

    /// The next entry's checked header, or `None` at the end-of-archive marker (which
    /// must then be exactly two zero blocks and the end of the stream).
    fn next_header(&mut self) -> Result<Option<ustar::Header>> {
        let mut block = [0u8; ustar::BLOCK];
        match self.fill(&mut block)? {
            0 => return Err(Error::MissingEndOfArchive),
            n if n < ustar::BLOCK => {
                return Err(Error::MalformedArchive {
                    reason: "the archive ends inside a header".into(),
                })
            }
            _ => {}
        }
        if block.iter().all(|&b| b == 0) {
            self.check_end()?;
            return Ok(None);
        }
        // Counted before the header is looked at, so the cap holds whatever it says.
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(Error::TooManyEntries { max: MAX_ENTRIES });
        }
        ustar::check_header(&block).map(Some)
    }

    /// After the first zero block: exactly one more, then nothing.
    fn check_end(&mut self) -> Result<()> {
        let mut rest: u64 = 0;
        let mut non_zero = false;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = self.fill(&mut buf)?;
            if n == 0 {
                break;
            }
            rest += n as u64;
            non_zero |= buf[..n].iter().any(|&b| b != 0);
        }
        if non_zero {
            return Err(Error::TrailingData {
                what: "non-zero data",
            });
        }
        match rest.cmp(&(ustar::BLOCK as u64)) {
            std::cmp::Ordering::Less => Err(Error::MissingEndOfArchive),
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => Err(Error::TrailingData {
                what: "zero blocks after the end-of-archive marker",
            }),
        }
    }

    /// Streams `size` data bytes of `entry` to `out` in chunks, then checks the padding
    /// up to the next block is zero.
    fn data(
        &mut self,
        entry: &str,
        size: u64,
        mut out: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut left = size;
        let mut buf = vec![0u8; usize::try_from(size.min(64 << 10)).unwrap_or(64 << 10)];
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = self.fill(&mut buf[..want])?;
            if n < want {
                return Err(truncated(entry));
            }
            out(&buf[..n])?;
            left -= n as u64;
        }
        let pad = (ustar::BLOCK - (size % ustar::BLOCK as u64) as usize) % ustar::BLOCK;
        let mut padding = [0u8; ustar::BLOCK];
        if self.fill(&mut padding[..pad])? < pad {
            return Err(truncated(entry));
        }
        if padding[..pad].iter().any(|&b| b != 0) {
            return Err(Error::NonZeroPadding {
                entry: entry.to_owned(),
            });
        }
        Ok(())
    }
}

/// Entry names seen so far, keyed by their ASCII lowercase form: two names that differ
/// only in case would be one file on a case-insensitive file system.
#[derive(Default)]
struct Seen(BTreeMap<String, String>);

impl Seen {
    fn insert(&mut self, name: &str) -> Result<()> {
        match self.0.get(&name.to_ascii_lowercase()) {
            Some(other) if other == name => Err(Error::DuplicateEntry {
                entry: name.to_owned(),
            }),
            Some(other) => Err(Error::DuplicateEntryIgnoringCase {
                entry: name.to_owned(),
                other: other.clone(),
            }),
            None => {
                self.0.insert(name.to_ascii_lowercase(), name.to_owned());
                Ok(())
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str) == Some(name)
    }
}

/// Reads `manifest.toml` or `manifest.sig`: name, order and cap are checked on the header
/// before any data is read.
fn read_metadata<R: Read>(
    tar: &mut TarReader<R>,
    seen: &mut Seen,
    name: &'static str,
    max: u64,
) -> Result<Vec<u8>> {
    let header = tar
        .next_header()?
        .ok_or(Error::MissingMetadata { entry: name })?;
    let found = header.name.as_str();
    if found != name {
        let entry = found.to_owned();
        return Err(if name == MANIFEST_ENTRY {
            Error::ManifestNotFirst { entry }
        } else if entry == MANIFEST_ENTRY {
            Error::DuplicateEntry { entry }
        } else {
            Error::SignatureNotSecond { entry }
        });
    }
    seen.insert(found)?;
    if header.size > max {
        return Err(Error::MetadataTooLarge {
            entry: name,
            size: header.size,
            max,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(header.size).unwrap_or(0));
    tar.data(name, header.size, |chunk| {
        bytes.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(bytes)
}

/// What [`read_package`] read: the manifest as the signature step returned it.
struct ReadPackage<M> {
    manifest: M,
    manifest_bytes: Vec<u8>,
    signature_bytes: Vec<u8>,
}

/// `check` is the signature step (3.): it gets the exact manifest and signature
/// bytes and returns the manifest, verified ([`verifier`]) or only inspected.
fn read_package<M: AsManifest>(
    bytes: &[u8],
    check: impl FnOnce(&[u8], &[u8]) -> Result<M>,
    sink: &mut Sink,
) -> Result<ReadPackage<M>> {
    // 1. Caps, the fixed gzip header, the gzip CRC, nothing after the gzip member.
    check_container(bytes)?;
    let mut tar = TarReader {
        inner: flate2::bufread::GzDecoder::new(bytes),
        entries: 0,
    };
    let mut seen = Seen::default();

    // 2. manifest.toml, then manifest.sig, bounded reads.
    let manifest_bytes = read_metadata(&mut tar, &mut seen, MANIFEST_ENTRY, MAX_MANIFEST_BYTES)?;
    let signature_bytes = read_metadata(&mut tar, &mut seen, SIGNATURE_ENTRY, MAX_SIGNATURE_BYTES)?;

    // 3. Signatures over the exact bytes, then the manifest's own rules — before any
    //    payload byte is read or anything is created on disk.
    let checked = check(&manifest_bytes, &signature_bytes)?;
    let manifest = checked.manifest();
    let listed: BTreeMap<&str, &PayloadFile> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    if let Sink::Extract { parent, dir } = sink {
        *dir = Some(create_fresh_dir(parent, &manifest.id)?);
    }

    // 4. Payload: only listed, unique entries whose length and digest match, each header
    //    exactly as `write_package` writes it.
    while let Some(header) = tar.next_header()? {
        let name = header.name.as_str().to_owned();
        seen.insert(&name)?;
        let Some(file) = listed.get(name.as_str()).copied() else {
            return Err(Error::UnlistedEntry { entry: name });
        };
        if header.size != file.len {
            return Err(Error::LengthMismatch {
                file: name,
                expected: file.len,
                actual: header.size,
            });
        }
        let mut out = match sink {
            Sink::Discard => None,
            Sink::Extract { dir: Some(dir), .. } => {
                let path = dir.path.join(&name);
                let file = create_payload_file(dir, &header.name)?;
                Some((path, BufWriter::new(file)))
            }
            Sink::Extract { dir: None, .. } => {
                unreachable!("invariant: directory created after verification")
            }
        };
        let mut hasher = Sha256::new();
        tar.data(&name, header.size, |chunk| {
            hasher.update(chunk);
            if let Some((path, out)) = out.as_mut() {
                out.write_all(chunk).map_err(|e| Error::io(&*path, e))?;
            }
            Ok(())
        })?;
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

    // 5. Every listed file must have been present. (The end marker and what follows it
    //    were checked by `next_header`.)
    if let Some(missing) = manifest.files.iter().find(|f| !seen.contains(&f.path)) {
        return Err(Error::MissingFile {
            file: missing.path.clone(),
        });
    }

    Ok(ReadPackage {
        manifest: checked,
        manifest_bytes,
        signature_bytes,
    })
}

/// What the signature step of [`read_package`] returns: something holding the manifest.
trait AsManifest {
    fn manifest(&self) -> &Manifest;
}

impl AsManifest for Verified<Manifest> {
    fn manifest(&self) -> &Manifest {
        self
    }
}

impl AsManifest for InspectedPackage {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// The tar stream ended inside an entry's data (the gzip layer itself was complete).
fn truncated(entry: &str) -> Error {
    Error::MalformedArchive {
        reason: format!("entry {entry:?} is truncated"),
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Creates `parent/ksplice-<id>.<random>` with mode exactly 0700 (set by `fchmod`, so the
/// umask cannot widen or narrow it) and opens it; never reuses an existing entry, and
/// refuses a directory that is not ours by the time it is opened.
fn create_fresh_dir(parent: &Path, id: &str) -> Result<ExtractDir> {
    let path = parent.join(format!("ksplice-{id}.{}", random_hex()?));
    let io_err = |e: rustix::io::Errno| Error::io(&path, file::errno(e));
    rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700)).map_err(io_err)?;
    let fd = rustix::fs::open(&path, DIR_FLAGS, Mode::empty()).map_err(io_err)?;
    let stat = rustix::fs::fstat(&fd).map_err(io_err)?;
    if stat.st_uid != file::effective_uid() {
        return Err(Error::io(
            &path,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the new extraction directory was replaced by another user's",
            ),
        ));
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(io_err)?;
    Ok(ExtractDir { path, fd })
}

/// Opens (or, with `create`, makes with mode 0700) the directories of `rel` below `dir`,
/// one `openat(O_NOFOLLOW | O_DIRECTORY)` per component; returns the innermost one
/// (`None` for `dir` itself) and the file name.
fn walk<'n>(
    dir_path: &Path,
    dir_fd: BorrowedFd<'_>,
    rel: &'n EntryName,
    create: bool,
) -> Result<(Option<OwnedFd>, &'n str)> {
    let (dirs, leaf) = match rel.as_str().rsplit_once('/') {
        Some((dirs, leaf)) => (Some(dirs), leaf),
        None => (None, rel.as_str()),
    };
    let mut current: Option<OwnedFd> = None;
    let mut at = dir_path.to_owned();
    for part in dirs.into_iter().flat_map(|d| d.split('/')) {
        at.push(part);
        let io_err = |e: rustix::io::Errno| Error::io(&at, file::errno(e));
        let parent = current.as_ref().map_or(dir_fd, |fd| fd.as_fd());
        let made = create
            && match rustix::fs::mkdirat(parent, part, Mode::from_raw_mode(0o700)) {
                Ok(()) => true,
                Err(rustix::io::Errno::EXIST) => false,
                Err(e) => return Err(io_err(e)),
            };
        let next = rustix::fs::openat(parent, part, DIR_FLAGS, Mode::empty()).map_err(io_err)?;
        if made {
            rustix::fs::fchmod(&next, Mode::from_raw_mode(0o700)).map_err(io_err)?;
        }
        current = Some(next);
    }
    Ok((current, leaf))
}

/// Creates `dir/<rel>` (and its directories) for writing, mode exactly 0600, relative to
/// the directory's descriptor: `rel` is a checked relative name and no link is followed.
fn create_payload_file(dir: &ExtractDir, rel: &EntryName) -> Result<fs::File> {
    let path = dir.path.join(rel.as_str());
    let io_err = |e: rustix::io::Errno| Error::io(&path, file::errno(e));
    let (parent, leaf) = walk(&dir.path, dir.fd.as_fd(), rel, true)?;
    let at = parent.as_ref().map_or(dir.fd.as_fd(), |fd| fd.as_fd());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(at, leaf, flags, Mode::from_raw_mode(0o600)).map_err(io_err)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(io_err)?;
    Ok(fs::File::from(fd))
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
