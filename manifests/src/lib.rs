//! Signed ksplice update manifests and packages.
//!
//! - [`manifest`]: the manifest schema and its validation;
//! - [`keys`]: ed25519 keys, key ids and the [`TrustPolicy`];
//! - [`signature`]: `manifest.sig` and signature checking;
//! - [`package`]: the `ksplice-<id>.tar.gz` archive, written signed and read verified;
//! - [`fleet`]: what a TUF repository target says about its package (waves, streams);
//! - [`Verified`]: the proof type only verification produces.
//!
//! File formats, caps and errors are described in docs/package-format.md.

#![forbid(unsafe_code)]

mod entry_name;
pub mod error;
pub mod file;
pub mod fleet;
pub mod keys;
pub mod manifest;
pub mod package;
pub mod profile;
pub mod signature;
mod ustar;
mod verified;

pub use entry_name::MAX_PATH_BYTES;
pub use error::{Error, Result};
pub use keys::{KeyId, PublicKey, SigningKey, TrustPolicy};
pub use manifest::{
    ChangeKind, FunctionChange, Manifest, ModuleInfo, PatchedObject, PayloadFile, Stream,
    TargetKernel, FORMAT,
};
pub use package::{
    inspect_package_bytes, open_package, open_package_bytes, read_package_file, verify_package,
    verify_package_bytes, write_package, InspectedPackage, OpenedPackage, VerifiedPackage,
};
pub use signature::{sign_manifest, verify_manifest, MANIFEST_DOMAIN};
pub use verified::Verified;

/// Lowercase hex sha256 of `data`, the digest form used throughout manifests.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
