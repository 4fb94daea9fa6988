//! The ksplice builder: from two kernel versions to a signed live update.
#![forbid(unsafe_code)]

pub mod affected;
pub mod checkout;
pub mod create;
/// The object differ is a library of its own (`builder/diff`, like kpatch's
/// create-diff-object is a tool of its own); re-exported under its stage name.
pub use ksplice_diff as diff;
pub mod error;
pub mod identity;
pub mod kbuild;
pub mod module;
pub mod profile;
pub mod runpre;
pub mod summary;
pub mod symbols;
pub mod tree;
