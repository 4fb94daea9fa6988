//! The host profile layout (docs/contracts.md D): the files `ksplice profile DIR`
//! writes on a host and `ksplice-create` reads from `SRC/ksplice/`. Both sides
//! name the files through these constants only.

/// The profile directory inside a kernel source tree (`SRC/ksplice/`).
pub const DIR: &str = "ksplice";
/// The running kernel's symbol table (a root copy of `/proc/kallsyms`; it
/// reveals the KASLR offset, so it is written 0600).
pub const SYSTEM_MAP: &str = "System.map";
/// The kernel configuration (`/boot/config-<release>` or `/proc/config.gz`).
pub const CONFIG: &str = "config";
/// Lowercase hex GNU build-id of the running vmlinux (`/sys/kernel/notes`).
pub const BUILD_ID: &str = "build-id";
/// `uname -r`
pub const RELEASE: &str = "release";
/// `uname -v`
pub const VERSION: &str = "version";
/// `uname -m`
pub const ARCH: &str = "arch";
/// The headers package's `Module.symvers`, when installed.
pub const MODULE_SYMVERS: &str = "Module.symvers";

/// Every profile file with the mode `ksplice profile` writes it with, in the
/// order it writes them; `Module.symvers` is optional.
pub const FILES: [(&str, u32); 7] = [
    (SYSTEM_MAP, 0o600),
    (CONFIG, 0o644),
    (BUILD_ID, 0o644),
    (RELEASE, 0o644),
    (VERSION, 0o644),
    (ARCH, 0o644),
    (MODULE_SYMVERS, 0o644),
];

/// The mode `ksplice profile` writes `name` with (0600 for anything not in
/// [`FILES`], so an unknown file is never more readable than it should be).
pub fn mode(name: &str) -> u32 {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0o600, |&(_, mode)| mode)
}
