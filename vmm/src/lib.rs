//! rehost's VMM: command line, VM assembly, vCPUs, event loop.

pub mod cli;
pub mod disk_cmd;
pub mod logging;

/// `rehost run`.
pub fn run(_args: cli::RunArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
