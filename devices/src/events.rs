//! Machine-level requests a device can make: power off, reset.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the machine stops running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineRequest {
    /// ACPI S5 (soft off) from the PM1a control register.
    PowerOff,
    /// A reset: PIIX3 reset control register, i8042 pulse, port 0x92.
    Reset,
    /// The user at the host asked to stop (the console escape key).
    HostStop,
}

/// Shared by the devices that can stop the machine and the VMM that waits
/// for them. The first request wins; later ones are ignored.
#[derive(Debug)]
pub struct MachineEvents {
    request: Mutex<Option<MachineRequest>>,
    wake: EventFd,
}

impl MachineEvents {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            request: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn request(&self, what: MachineRequest) {
        let mut req = self.request.lock().unwrap_or_else(|e| e.into_inner());
        if req.is_none() {
            *req = Some(what);
            // A full counter still wakes the reader, so the error is moot.
            let _ = self.wake.write(1);
        }
    }

    pub fn pending(&self) -> Option<MachineRequest> {
        *self.request.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Becomes readable when a request is made.
    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }
}
