//! `ksplice`: the host client.
fn main() {}
