//! The ksplice builder: from two kernel versions to a signed live update.
#![forbid(unsafe_code)]

pub mod affected;
pub mod checkout;
pub mod create;
pub mod diff;
pub mod error;
pub mod identity;
pub mod kbuild;
pub mod module;
pub mod profile;
pub mod runpre;
pub mod summary;
pub mod symbols;
pub mod tree;
