//! Integration tests for ksplice (one test binary).
#![forbid(unsafe_code)]

mod client;
mod create;
mod differ;
mod module;
mod package;
