//! vCPU threads: each runs KVM_RUN and dispatches port I/O and MMIO exits
//! to the buses until it is told to stop or the guest does something only
//! the VMM can act on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use rehost_devices::bus::Bus;
use rehost_devices::events::{MachineEvents, MachineRequest};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Where a vCPU stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub cs: u16,
    pub rip: u64,
    /// CS base + RIP.
    pub linear: u64,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CS {:#06x} RIP {:#x} (linear {:#x})",
            self.cs, self.rip, self.linear
        )
    }
}

/// Why a vCPU thread ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuFailure {
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault { cpu: u8, at: Location },
    /// An exit the VMM cannot handle, or KVM_RUN failing.
    Unhandled { cpu: u8, at: Location, what: String },
}

impl std::fmt::Display for VcpuFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VcpuFailure::TripleFault { cpu, at } => {
                write!(f, "guest triple fault on vCPU {cpu} at {at}")
            }
            VcpuFailure::Unhandled { cpu, at, what } => {
                write!(f, "vCPU {cpu} stopped at {at}: {what}")
            }
        }
    }
}

/// What a vCPU thread reports to the machine.
#[derive(Debug)]
pub enum VcpuReport {
    Failed(VcpuFailure),
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal; without a handler the
/// signal would kill the process.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

pub struct VcpuContext {
    pub id: u8,
    pub fd: VcpuFd,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub events: Arc<MachineEvents>,
    pub stop: Arc<AtomicBool>,
    /// Holds the vCPU out of the guest while the VM is paused (`stop`).
    pub gate: Arc<crate::control::state::PauseGate>,
    pub reports: Sender<VcpuReport>,
    pub report_wake: Arc<vmm_sys_util::eventfd::EventFd>,
}

impl VcpuContext {
    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Where the vCPU is: CS, RIP and the linear address (CS base + RIP),
    /// which is what a user can look up in a listing.
    fn location(&self) -> Location {
        let rip = self.rip();
        let (cs, base) = self
            .fd
            .get_sregs()
            .map(|s| (s.cs.selector, s.cs.base))
            .unwrap_or((0, 0));
        Location {
            cs,
            rip,
            linear: base.wrapping_add(rip),
        }
    }

    /// KVM's sub-reason of an internal error.
    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the
        // kvm_run union is the one KVM filled in.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    fn fail(&self, failure: VcpuFailure) {
        let _ = self.reports.send(VcpuReport::Failed(failure));
        let _ = self.report_wake.write(1);
    }

    pub fn run(mut self) {
        // String I/O (`rep ins`/`rep outs`) exits with `count` accesses of
        // `size` bytes in one data area; each is dispatched on its own.
        let run_ptr: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        let io_size = || -> usize {
            // SAFETY: `run_ptr` points at this vCPU's kvm_run mapping, which
            // lives as long as `self.fd`; it is read only after a
            // KVM_EXIT_IO, when `io` is the union member the kernel filled.
            // The data area the exit's slice covers lies past the struct
            // (at `io.data_offset`), so this read does not alias it.
            usize::from(unsafe { (*run_ptr).__bindgen_anon_1.io.size }).max(1)
        };
        while !self.stop.load(Ordering::Acquire) {
            self.gate.wait_while_paused(&self.stop);
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    for access in data.chunks_mut(io_size()) {
                        self.io_bus.read(u64::from(port), access);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    for access in data.chunks(io_size()) {
                        if !self.io_bus.write(u64::from(port), access) {
                            tracing::trace!(port, "write to an unclaimed I/O port ignored");
                        }
                    }
                    // A power-off or reset stops this CPU at once, as on a
                    // real machine; the machine stops the others.
                    if self.events.pending().is_some() {
                        return;
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio_bus.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !self.mmio_bus.write(addr, data) {
                        tracing::trace!(addr, "write to unclaimed memory ignored");
                    }
                    if self.events.pending().is_some() {
                        return;
                    }
                }
                Ok(VcpuExit::Shutdown) => {
                    let at = self.location();
                    self.fail(VcpuFailure::TripleFault { cpu: self.id, at });
                    return;
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => self.events.request(MachineRequest::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => self.events.request(MachineRequest::Reset),
                    other => {
                        let at = self.location();
                        self.fail(VcpuFailure::Unhandled {
                            cpu: self.id,
                            at,
                            what: format!("unhandled KVM system event {other}"),
                        });
                        return;
                    }
                },
                Ok(VcpuExit::Intr) | Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) => {}
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    let at = self.location();
                    self.fail(VcpuFailure::Unhandled {
                        cpu: self.id,
                        at,
                        what: format!(
                            "KVM could not enter the guest (hardware reason {reason:#x})"
                        ),
                    });
                    return;
                }
                Ok(VcpuExit::InternalError) => {
                    let at = self.location();
                    let what = match self.internal_suberror() {
                        1 => "KVM could not emulate an instruction".to_owned(),
                        2 => "KVM internal error: an exception while delivering an exception (a triple fault on this backend)".to_owned(),
                        3 => "KVM internal error: an event could not be delivered".to_owned(),
                        n => format!("KVM internal error (suberror {n})"),
                    };
                    self.fail(VcpuFailure::Unhandled {
                        cpu: self.id,
                        at,
                        what,
                    });
                    return;
                }
                Ok(other) => {
                    let what = format!("unhandled VM exit {other:?}");
                    let at = self.location();
                    self.fail(VcpuFailure::Unhandled {
                        cpu: self.id,
                        at,
                        what,
                    });
                    return;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    let at = self.location();
                    self.fail(VcpuFailure::Unhandled {
                        cpu: self.id,
                        at,
                        what: format!("KVM_RUN failed: {e}"),
                    });
                    return;
                }
            }
        }
    }
}

/// Stops vCPU threads: sets the stop flag and kicks each thread out of
/// KVM_RUN until it has returned.
pub fn stop_all(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for t in threads {
        // A kick can land just before the thread enters KVM_RUN; repeat
        // until the thread has seen the flag.
        while !t.is_finished() {
            let _ = t.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = t.join();
    }
}
