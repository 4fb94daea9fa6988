//! `ksplice-view`: the seed's name for `ksplice view`.

#[path = "../cli.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main(Some("view"))
}
