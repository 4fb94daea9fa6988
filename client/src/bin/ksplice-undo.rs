//! `ksplice-undo`: the seed's name for `ksplice undo`.

#![forbid(unsafe_code)]

#[path = "../cli.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main(Some("undo"))
}
