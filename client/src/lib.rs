//! The ksplice client library: verify, apply, undo and show live updates.
//!
//! Everything reads the host through [`host::Host`], whose root directory
//! stands for `/` (a fixture directory in tests) and whose [`sys::Sys`] is
//! the kernel (system calls) or a test double.

#![forbid(unsafe_code)]

pub mod boot;
pub mod error;
pub mod fsutil;
pub mod host;
pub mod identity;
pub mod kmsg;
pub mod livepatch;
pub mod ops;
pub mod output;
mod pkgfile;
pub mod profile;
pub mod report;
pub mod state;
pub mod sys;
pub mod update;

pub use error::{exit, Error, Result};
pub use host::{Host, Timeouts};
pub use sys::{RealSys, Step, Sys, Uname};
