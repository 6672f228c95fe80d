//! SIGINT and SIGTERM: recorded by an async-signal-safe handler and turned
//! into an orderly shutdown by the main thread.

use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(num, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) on an eventfd with an 8-byte buffer is
        // async-signal-safe; the buffer lives for the call.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Becomes readable when SIGINT or SIGTERM arrives.
pub struct ShutdownSignals {
    evt: EventFd,
}

impl ShutdownSignals {
    pub fn install() -> std::io::Result<Self> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        SIGNAL_FD.store(std::os::fd::AsRawFd::as_raw_fd(&evt), Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            register_signal_handler(sig, on_signal)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(Self { evt })
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The signal that arrived, if any.
    pub fn received(&self) -> Option<i32> {
        match LAST_SIGNAL.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }
}

impl Drop for ShutdownSignals {
    fn drop(&mut self) {
        SIGNAL_FD.store(-1, Ordering::SeqCst);
    }
}
