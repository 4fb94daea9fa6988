//! Integration tests for ksplice (one test binary).
mod client;
mod differ;
mod module;
mod package;
