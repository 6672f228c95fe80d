//! rehost's VMM: command line, VM assembly, vCPUs, event loop.

pub mod cli;
pub mod config;
pub mod control;
pub mod cpu_state;
pub mod disk_cmd;
pub mod disk_serve;
pub mod display;
pub mod host;
pub mod keymap;
pub mod logging;
pub mod machine;
pub mod memory;
pub mod nbd;
pub mod p2v_cmd;
pub mod serial;
pub mod signals;
pub mod storage;
pub mod usb;
pub mod vcpu;
pub mod vnc;

use anyhow::Context;

use crate::cli::exit;
use crate::config::MachineConfig;
use crate::control::{ControlServer, RunState, VmControl};
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

/// Removes the control socket's file however `run` ends.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `rehost run`.
pub fn run(args: cli::RunArgs) -> anyhow::Result<u8> {
    let mut cfg = MachineConfig::from_args(&args)?;
    // The control socket is created before anything starts, so a bad
    // --qmp PATH stops rehost before a VM exists.
    let listener = match &cfg.qmp {
        Some(p) => Some(control::server::bind(p)?),
        None => None,
    };
    let _socket_file = RemoveOnDrop(cfg.qmp.clone());
    let vnc = args
        .vnc
        .as_deref()
        .map(|v| vnc::VncOptions::parse(v, args.vnc_password_file.as_deref(), args.vnc_insecure))
        .transpose()?;
    let kvm = open_kvm()?;
    vcpu::install_kick_handler().context("installing the vCPU kick signal handler")?;
    let signals = signals::ShutdownSignals::install().context("installing signal handlers")?;
    let ctl = VmControl::new(&cfg.drives).context("creating the control state")?;
    // The control state holds the USB devices from now on: `device_del`
    // closes an unplugged disk's image, which no other copy may hold.
    ctl.set_usb(cfg.usb.take());
    let host = host::HostSide::start(&cfg)?;
    ctl.set_chardevs(
        host.com_ports
            .iter()
            .map(|p| control::state::ChardevState {
                index: p.index,
                spec: p.spec.clone(),
                shared: p.shared.clone(),
            })
            .collect(),
    );
    for p in &host.com_ports {
        if let Some(shared) = &p.shared {
            // Weak: the control state holds the port's queue, and the
            // queue must not keep the control state (and with it every
            // disk image, which closes cleanly only when dropped) alive.
            let c = std::sync::Arc::downgrade(&ctl);
            let index = p.index;
            shared.set_observer(Box::new(move |open| {
                if let Some(c) = c.upgrade() {
                    c.emit(
                        control::commands::SERIAL_EVENT,
                        Some(control::commands::serial_event_data(index, open)),
                    )
                }
            }));
        }
    }
    // Viewers connect before the first machine is built; the console
    // outlives resets.
    let _vnc = vnc
        .map(|o| vnc::VncServer::start(&o, ctl.console.clone()))
        .transpose()?;
    let server = match (listener, &cfg.qmp) {
        (Some(l), Some(p)) => Some(ControlServer::start(l, p.clone(), ctl.clone())?),
        _ => None,
    };
    let shutdown = |guest: bool, reason: &str| {
        ctl.set_run_state(RunState::Shutdown);
        ctl.emit(
            "SHUTDOWN",
            Some(serde_json::json!({ "guest": guest, "reason": reason })),
        );
    };
    let code = loop {
        let machine = Machine::build(&kvm, &cfg, &host, &ctl)?;
        match machine.run(&signals, &host, &ctl) {
            Outcome::PowerOff => {
                shutdown(true, "guest-shutdown");
                break exit::POWER_OFF;
            }
            Outcome::Reset if cfg.no_reboot => {
                shutdown(true, "guest-reset");
                break exit::RESET;
            }
            Outcome::Reset => {
                tracing::info!("guest reset: restarting the machine");
                ctl.emit(
                    "RESET",
                    Some(serde_json::json!({ "guest": true, "reason": "guest-reset" })),
                );
                continue;
            }
            Outcome::HostReset => {
                tracing::info!("reset from the control socket: restarting the machine");
                ctl.emit(
                    "RESET",
                    Some(serde_json::json!({ "guest": false, "reason": "host-qmp-system-reset" })),
                );
                continue;
            }
            Outcome::Quit => {
                shutdown(false, "host-qmp-quit");
                break exit::POWER_OFF;
            }
            Outcome::HostStop => {
                shutdown(false, "host-ui");
                break exit::SIGINT;
            }
            Outcome::Signal(sig) => {
                shutdown(false, "host-signal");
                break if sig == libc::SIGTERM {
                    exit::SIGTERM
                } else {
                    exit::SIGINT
                };
            }
            Outcome::Crash(f) => {
                eprintln!("rehost: {f}");
                shutdown(true, "guest-panic");
                break exit::GUEST_CRASH;
            }
        }
    };
    // Last events out to the clients, then the COM backends are closed
    // (HostSide's drop) after the disks were flushed by the machine.
    if let Some(s) = server {
        s.close();
    }
    drop(host);
    // The last references to the images: a VHDX marks its log empty when
    // it is closed, so other tools open it without a replay.
    ctl.close_drives();
    let mut trackers = storage::trackers_of(cfg.drives);
    trackers.extend(usb::trackers_of(ctl.take_usb_devices()));
    storage::close_trackers(trackers);
    Ok(code)
}
