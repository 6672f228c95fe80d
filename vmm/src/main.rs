//! The `rehost` command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rehost::cli::Cli::parse();
    rehost::logging::init();
    let code = rehost::cli::execute(cli);
    ExitCode::from(code)
}
