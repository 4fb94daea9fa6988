//! The target kernel, as the build server knows it without running it: the
//! profile (`SRC/ksplice/`, options), the image's identity, its symbol tables,
//! the offline run-pre check of the pre code against the image, and the
//! profile made from a release's packages (`from_image`, decoding `kallsyms`).

pub mod from_image;
pub(crate) mod identity;
pub mod kallsyms;
pub mod profile;
pub(crate) mod runpre;
pub mod symbols;

pub use from_image::{write_profile, ImageInputs, ImageProfile};
pub use profile::ProfileInputs;
