//! The ksplice builder: from two kernel versions to a signed live update.
//!
//! The modules follow the pipeline's stages (docs/builder.md "Pipeline"):
//! `checkout` (git2 / patch / diffext → changes and the objects they reach),
//! `tree` (prepared pre and post trees, kbuild compiling single objects),
//! `diff` (the object differ, a crate of its own), `module` (the update
//! module), and `create`, which runs them in order and packages the result;
//! `target` is what the build knows of the kernel it builds for; `coverage` builds
//! every changed file between two releases and counts what became an update. `release` builds
//! every fix for one kernel release and plans the CI jobs of all releases; `repo` is the
//! publishing end: a TUF repository of packages for mirrors (docs/fleet.md).
#![forbid(unsafe_code)]

mod atomic;
pub mod checkout;
pub mod coverage;
pub mod create;
/// The object differ is a library of its own (`builder/diff`, like kpatch's
/// create-diff-object is a tool of its own); re-exported under its stage name.
pub use ksplice_diff as diff;
pub mod error;
pub mod module;
pub mod release;
pub mod repo;
pub mod summary;
pub mod target;
pub mod tree;
