//! rehost's VMM: command line, VM assembly, vCPUs, event loop.

pub mod cli;
pub mod config;
pub mod cpu_state;
pub mod disk_cmd;
pub mod host;
pub mod logging;
pub mod machine;
pub mod memory;
pub mod serial;
pub mod signals;
pub mod storage;
pub mod vcpu;

use anyhow::Context;

use crate::cli::exit;
use crate::config::MachineConfig;
use crate::machine::{Machine, Outcome};

/// Opens /dev/kvm with an error that says what to do.
fn open_kvm() -> anyhow::Result<kvm_ioctls::Kvm> {
    kvm_ioctls::Kvm::new().map_err(|e| {
        let hint = match e.errno() {
            libc::ENOENT => {
                "no such device: this host has no KVM (load kvm_intel, kvm_amd or kvm_pvm)"
            }
            libc::EACCES | libc::EPERM => {
                "permission denied: add your user to the `kvm` group or run as root"
            }
            _ => "cannot open it",
        };
        anyhow::anyhow!("/dev/kvm: {hint} ({e})")
    })
}

/// `rehost run`.
pub fn run(args: cli::RunArgs) -> anyhow::Result<u8> {
    let cfg = MachineConfig::from_args(&args)?;
    let kvm = open_kvm()?;
    vcpu::install_kick_handler().context("installing the vCPU kick signal handler")?;
    let signals = signals::ShutdownSignals::install().context("installing signal handlers")?;
    let host = host::HostSide::start(&cfg)?;
    loop {
        let machine = Machine::build(&kvm, &cfg, &host)?;
        match machine.run(&signals, &host) {
            Outcome::PowerOff => return Ok(exit::POWER_OFF),
            Outcome::Reset if cfg.no_reboot => return Ok(exit::RESET),
            Outcome::Reset => {
                tracing::info!("guest reset: restarting the machine");
                continue;
            }
            Outcome::HostStop => return Ok(exit::SIGINT),
            Outcome::Signal(sig) if sig == libc::SIGTERM => return Ok(exit::SIGTERM),
            Outcome::Signal(_) => return Ok(exit::SIGINT),
            Outcome::Crash(f) => {
                eprintln!("rehost: {f}");
                return Ok(exit::GUEST_CRASH);
            }
        }
    }
}
