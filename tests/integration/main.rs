//! Integration tests for ksplice (one test binary).
mod client;
mod create;
mod differ;
mod module;
mod package;
