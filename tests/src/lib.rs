//! Helpers for the ksplice integration tests and end-to-end harness.

pub mod e2e;
