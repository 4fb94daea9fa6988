//! Integration tests for ksplice (one test binary).
#![forbid(unsafe_code)]

mod apply_path;
mod client;
mod create;
mod cumulative;
mod differ;
mod module;
mod package;
mod profile;
mod release;
mod repo;
mod tuf_repo;
