//! `ksplice-build`: low-level builder commands.
fn main() {}
