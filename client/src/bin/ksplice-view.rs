//! `ksplice-view`: the seed's name for `ksplice view`.

#![forbid(unsafe_code)]

#[path = "../cli.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main(Some("view"))
}
