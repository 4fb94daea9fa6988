//! The ksplice client library: verify, apply, undo and show live updates.
