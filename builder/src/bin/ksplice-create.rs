//! `ksplice-create`: build a signed live update from a kernel source change.
fn main() {}
