//! `ksplice-apply`: the seed's name for `ksplice apply`.

#[path = "../cli.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main(Some("apply"))
}
