//! The `rehost` command.

fn main() -> std::process::ExitCode {
    rehost::cli::main()
}
