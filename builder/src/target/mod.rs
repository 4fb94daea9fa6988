//! The target kernel, as the build server knows it without running it: the
//! profile (`SRC/ksplice/`, options), the image's identity, its symbol tables,
//! and the offline run-pre check of the pre code against the image.

pub(crate) mod identity;
pub mod profile;
pub(crate) mod runpre;
pub(crate) mod symbols;

pub use profile::ProfileInputs;
