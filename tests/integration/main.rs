//! Integration tests for ksplice (one test binary).
mod module;
mod client;
mod differ;
