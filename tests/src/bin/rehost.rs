//! The rehost program, built inside the test package so that end-to-end
//! tests run the code under test (see `CARGO_BIN_EXE_rehost`).

fn main() -> std::process::ExitCode {
    rehost::cli::main()
}
