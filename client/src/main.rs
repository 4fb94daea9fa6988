//! `ksplice`: the host client (also answers to `ksplice-apply`, `ksplice-undo`
//! and `ksplice-view` when copied or linked under those names).

#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main(None)
}
