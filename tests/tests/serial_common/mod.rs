//! Helpers shared by the serial end-to-end tests: the far end of a COM
//! port (a socket, a pty) as a byte collector the test can wait on and
//! type into, and small RFC 2217 server pieces.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Polls `done` until it holds or `timeout` passes; its last answer.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// The far end of a COM port: everything it receives is collected by a
/// reader thread.
pub struct Peer {
    writer: std::fs::File,
    got: Arc<Mutex<Vec<u8>>>,
    open: Arc<Mutex<bool>>,
}

impl Peer {
    pub fn new(fd: OwnedFd) -> Self {
        let writer = std::fs::File::from(fd);
        let mut reader = writer.try_clone().expect("dup");
        let got = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(Mutex::new(true));
        let (g, o) = (got.clone(), open.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => g.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
            *o.lock().unwrap() = false;
        });
        Self { writer, got, open }
    }

    pub fn tcp(s: std::net::TcpStream) -> Self {
        Self::new(OwnedFd::from(s))
    }

    pub fn unix(s: std::os::unix::net::UnixStream) -> Self {
        Self::new(OwnedFd::from(s))
    }

    /// Opens a pty slave (or any terminal) read-write.
    pub fn terminal(path: &Path) -> Self {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self::new(OwnedFd::from(f))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.got.lock().unwrap().clone()
    }

    pub fn is_open(&self) -> bool {
        *self.open.lock().unwrap()
    }

    /// Waits until what arrived contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.text().contains(needle))
    }

    pub fn send(&mut self, data: &[u8]) {
        self.writer.write_all(data).expect("writing to the port");
    }

    /// Types `text` a key at a time, as a person (or a slow terminal)
    /// would: a guest polling its FIFO must not lose any of it.
    pub fn type_slowly(&mut self, text: &str) {
        for b in text.bytes() {
            self.send(&[b]);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends a socket connection (both ways), as a peer that goes away.
    pub fn shutdown(&self) {
        // SAFETY: shutdown on a socket we hold; harmless on other fds.
        unsafe { libc::shutdown(self.writer.as_raw_fd(), libc::SHUT_RDWR) };
    }

    pub fn raw_fd(&self) -> i32 {
        self.writer.as_raw_fd()
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a
/// test that binds it again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Accepts one client within `timeout`.
pub fn accept(l: &std::net::TcpListener, timeout: Duration) -> Option<std::net::TcpStream> {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return Some(s);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

/// Connects to a Unix socket once it exists.
pub fn connect_unix(path: &Path, timeout: Duration) -> std::os::unix::net::UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The pty path rehost printed for `port` ("rehost: COM2 is /dev/pts/N").
pub fn pty_path(stderr: &str, port: &str) -> Option<String> {
    let prefix = format!("rehost: {port} is ");
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|p| p.trim().to_owned()))
}

/// A new pty pair: the master (ours, not inherited by rehost) and the
/// slave's path (for `tty:`).
pub fn openpty() -> (OwnedFd, String) {
    // SAFETY: plain libc calls on a descriptor we own; results checked.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        (OwnedFd::from_raw_fd(m), path)
    }
}

/// The termios of a terminal (for a pty master: of its slave).
pub fn termios(fd: i32) -> libc::termios {
    // SAFETY: termios is plain data that tcgetattr fills.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut t), 0, "tcgetattr");
        t
    }
}

/// Makes a terminal raw (no echo, no line editing, no CR/LF mapping).
pub fn make_raw(fd: i32) {
    let mut t = termios(fd);
    // SAFETY: editing and applying a termios read from the same fd.
    unsafe {
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &t), 0);
    }
}

// ---- RFC 2217 server side, just enough for tests ----

pub const IAC: u8 = 255;
pub const SB: u8 = 250;
pub const SE: u8 = 240;
pub const DO: u8 = 253;
pub const WILL: u8 = 251;
pub const COM_PORT: u8 = 44;

/// COM-PORT-OPTION subnegotiations (unescaped payloads) found in `wire`,
/// and the data bytes between them.
pub fn parse_telnet(wire: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut subs = Vec::new();
    let mut data = Vec::new();
    let mut i = 0;
    while i < wire.len() {
        let b = wire[i];
        if b != IAC {
            data.push(b);
            i += 1;
            continue;
        }
        match wire.get(i + 1) {
            Some(&IAC) => {
                data.push(IAC);
                i += 2;
            }
            Some(&SB) => {
                let mut j = i + 2;
                let mut payload = Vec::new();
                while j + 1 < wire.len() && !(wire[j] == IAC && wire[j + 1] == SE) {
                    if wire[j] == IAC && wire[j + 1] == IAC {
                        j += 1;
                    }
                    payload.push(wire[j]);
                    j += 1;
                }
                if payload.first() == Some(&COM_PORT) {
                    subs.push(payload[1..].to_vec());
                }
                i = j + 2;
            }
            Some(251..=254) => i += 3,
            _ => i += 2,
        }
    }
    (subs, data)
}

/// The SET-BAUDRATE values a client sent, in order.
pub fn baud_rates(subs: &[Vec<u8>]) -> Vec<u32> {
    subs.iter()
        .filter(|s| s.len() == 5 && s[0] == 1)
        .map(|s| u32::from_be_bytes([s[1], s[2], s[3], s[4]]))
        .collect()
}
