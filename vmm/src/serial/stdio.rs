//! `stdio`: guest output to standard output, host input from standard
//! input. On a terminal, input is put in raw mode (restored on every exit
//! path) and Ctrl-A is an escape key:
//!   Ctrl-A x   stop rehost (orderly shutdown)
//!   Ctrl-A b   send a break to the guest
//!   Ctrl-A Ctrl-A  send Ctrl-A itself
//!   Ctrl-A h   show these keys

use std::os::fd::RawFd;
use std::sync::Arc;

use rehost_devices::events::{MachineEvents, MachineRequest};

use super::termios::RxByte;

pub const ESCAPE_HELP: &str = "Console keys (a COM port on stdio, on a terminal):
  Ctrl-A x       stop rehost (orderly shutdown, exit code 130)
  Ctrl-A b       send a break to the guest
  Ctrl-A Ctrl-A  send Ctrl-A to the guest
  Ctrl-A h       show these keys";

const CTRL_A: u8 = 0x01;

/// A descriptor for guest output to stdout that the event loop can write
/// without blocking, and whether it can be polled. A pipe or terminal is
/// opened again (a file description of its own, so O_NONBLOCK does not
/// reach whoever else shares stdout); a regular file, which never blocks
/// for long and cannot be polled, is written as it is.
pub fn stdout_writer() -> std::io::Result<(std::os::fd::OwnedFd, bool)> {
    use std::os::fd::{AsFd, FromRawFd};
    // SAFETY: stat is plain data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on fd 1 with a valid buffer.
    let regular =
        unsafe { libc::fstat(1, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG;
    if !regular {
        // SAFETY: a constant NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c"/proc/self/fd/1".as_ptr(),
                libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            return Ok((unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }, true));
        }
    }
    Ok((std::io::stdout().as_fd().try_clone_to_owned()?, false))
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

/// The console escape keys, applied to input from a terminal.
pub struct EscapeKeys {
    after_escape: bool,
    events: Arc<MachineEvents>,
}

impl EscapeKeys {
    pub fn new(events: Arc<MachineEvents>) -> Self {
        Self {
            after_escape: false,
            events,
        }
    }

    /// Passes keys to `out` as guest input, acting on escapes.
    pub fn filter(&mut self, data: &[u8], out: &mut impl FnMut(RxByte)) {
        for &b in data {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => self.events.request(MachineRequest::HostStop),
                    b'b' | b'B' => out(RxByte::Break),
                    CTRL_A => out(RxByte::Data(CTRL_A)),
                    _ => eprint!("\r\n{}\r\n", ESCAPE_HELP.replace('\n', "\r\n")),
                }
            } else if b == CTRL_A {
                self.after_escape = true;
            } else {
                out(RxByte::Data(b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keys() {
        let ev = Arc::new(MachineEvents::new().unwrap());
        let mut keys = EscapeKeys::new(ev.clone());
        let mut out = Vec::new();
        keys.filter(b"ab\x01\x01c\x01b", &mut |b| out.push(b));
        assert_eq!(
            out,
            vec![
                RxByte::Data(b'a'),
                RxByte::Data(b'b'),
                RxByte::Data(1),
                RxByte::Data(b'c'),
                RxByte::Break
            ]
        );
        assert_eq!(ev.pending(), None);
        keys.filter(b"\x01", &mut |b| out.push(b));
        keys.filter(b"x", &mut |b| out.push(b));
        assert_eq!(ev.pending(), Some(MachineRequest::HostStop));
    }
}
