//! `ksplice-apply`: the seed's name for `ksplice apply`.

#![forbid(unsafe_code)]

#[path = "../cli.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main(Some("apply"))
}
