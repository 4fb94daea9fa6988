//! The end-to-end harness: Debian's real kernel in QEMU, driven by data-defined scenarios.

pub mod build;
pub mod cpio;
pub mod env;
mod guestlib;
pub mod kgit;
pub mod kmod;
pub mod markers;
pub mod profile;
pub mod qemu;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod serve;
pub mod systemd;
