//! Helpers for the ksplice integration tests and end-to-end harness.
