//! `stdio`: guest output to standard output, host input from standard
//! input. On a terminal, input is put in raw mode (restored on every exit
//! path) and Ctrl-A is an escape key:
//!   Ctrl-A x   stop rehost (orderly shutdown)
//!   Ctrl-A b   send a break to the guest
//!   Ctrl-A Ctrl-A  send Ctrl-A itself
//!   Ctrl-A h   show these keys

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::Arc;

use rehost_devices::events::{MachineEvents, MachineRequest};
use rehost_devices::serial::SerialBackend;
use vmm_sys_util::eventfd::EventFd;

use super::pump::InputSource;

pub const ESCAPE_HELP: &str = "Console keys (when COM1 is on a terminal):
  Ctrl-A x       stop rehost (orderly shutdown, exit code 130)
  Ctrl-A b       send a break to the guest
  Ctrl-A Ctrl-A  send Ctrl-A to the guest
  Ctrl-A h       show these keys";

const CTRL_A: u8 = 0x01;

/// Guest output to stdout.
pub struct StdoutBackend {
    space: Arc<EventFd>,
    failed: bool,
}

impl StdoutBackend {
    pub fn new(space: Arc<EventFd>) -> Self {
        Self {
            space,
            failed: false,
        }
    }
}

impl SerialBackend for StdoutBackend {
    fn write(&mut self, data: &[u8]) {
        if self.failed {
            return;
        }
        let mut out = std::io::stdout().lock();
        if out.write_all(data).and_then(|_| out.flush()).is_err() {
            tracing::warn!("COM output to stdout failed; further output dropped");
            self.failed = true;
        }
    }

    fn rx_space_available(&mut self) {
        let _ = self.space.write(1);
    }
}

/// Saved terminal settings, restored when dropped.
pub struct RawModeGuard {
    fd: RawFd,
    saved: libc::termios,
}

impl RawModeGuard {
    /// Puts `fd` in raw mode if it is a terminal.
    pub fn enable(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output processing so the host's own messages stay readable.
        raw.c_oflag = saved.c_oflag;
        // SAFETY: applying a termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { fd, saved })
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the settings read in `enable`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Host input from stdin, with the escape key on a terminal.
pub struct StdinSource {
    escapes: bool,
    after_escape: bool,
    break_requested: bool,
    events: Arc<MachineEvents>,
}

impl StdinSource {
    pub fn new(escapes: bool, events: Arc<MachineEvents>) -> Self {
        Self {
            escapes,
            after_escape: false,
            break_requested: false,
            events,
        }
    }
}

impl InputSource for StdinSource {
    fn fd(&self) -> RawFd {
        0
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: reading into a valid, writable buffer of its own length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn filter(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if !self.escapes {
            out.extend_from_slice(data);
            return;
        }
        for &b in data {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => self.events.request(MachineRequest::HostStop),
                    b'b' | b'B' => self.break_requested = true,
                    CTRL_A => out.push(CTRL_A),
                    _ => eprint!("\r\n{}\r\n", ESCAPE_HELP.replace('\n', "\r\n")),
                }
            } else if b == CTRL_A {
                self.after_escape = true;
            } else {
                out.push(b);
            }
        }
    }

    fn take_break(&mut self) -> bool {
        std::mem::take(&mut self.break_requested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keys() {
        let ev = Arc::new(MachineEvents::new().unwrap());
        let mut s = StdinSource {
            escapes: true,
            after_escape: false,
            break_requested: false,
            events: ev.clone(),
        };
        let mut out = Vec::new();
        s.filter(b"ab\x01\x01c\x01b", &mut out);
        assert_eq!(out, b"ab\x01c");
        assert!(s.take_break());
        assert!(!s.take_break());
        assert_eq!(ev.pending(), None);
        s.filter(b"\x01", &mut out);
        s.filter(b"x", &mut out);
        assert_eq!(ev.pending(), Some(MachineRequest::HostStop));
    }
}
