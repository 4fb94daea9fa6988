//! Integration tests for ksplice (one test binary).
