//! Signed ksplice update manifests and packages.
