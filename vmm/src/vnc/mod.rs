//! The VNC server (RFB 3.8, and the 3.3 and 3.7 handshakes older viewers
//! such as `vncsnapshot` speak): viewers see the console's picture and
//! type into the machine through its input devices.
//!
//! An accept thread takes connections (TCP or a Unix socket) and gives
//! each viewer a thread of its own. Every viewer is bounded: the
//! handshake must finish within [`HANDSHAKE_LIMIT`], a message left
//! half-sent for [`STALL_LIMIT`] closes the connection, writes that do not
//! progress for [`WRITE_LIMIT`] close it, at most one update is pending
//! per viewer (requests only mark it), and ClientCutText is skipped, never
//! stored. At most [`MAX_VIEWERS`] viewers are connected at once; more
//! are told why and closed. The console is rendered at most once every
//! [`REFRESH_PERIOD`], whatever the number of viewers; a viewer waiting
//! for an update sleeps until the next render is due, not a whole period
//! after its request, so a viewer that asks again as soon as it gets an
//! update is served at the full rate.

pub mod protocol;
mod session;

use std::io::{Read, Write};
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rehost_devices::display::Console;

/// Viewers connected at once.
pub const MAX_VIEWERS: usize = 16;
/// The whole handshake (version, security, ClientInit).
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// A message started and not finished for this long closes the viewer.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
/// A write that cannot progress for this long closes the viewer.
pub const WRITE_LIMIT: Duration = Duration::from_secs(10);
/// The shortest time between two renders of the console: QEMU's display
/// refresh interval (GUI_REFRESH_INTERVAL_DEFAULT, 30 ms), so a viewer
/// sees the guest at the rate QEMU's VNC server shows it.
pub const REFRESH_PERIOD: Duration = Duration::from_millis(30);
/// The picture a viewer sees while the machine has no display.
pub const BLANK_SIZE: (u32, u32) = (640, 480);

/// Where the server listens (the NBD server's address form).
pub use crate::nbd::ListenAddr as VncAddr;

/// `--vnc` and its companions, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncOptions {
    pub addr: VncAddr,
    /// The password file (its first line; VNC uses the first 8 bytes).
    pub password_file: Option<PathBuf>,
}

impl VncOptions {
    /// Parses `--vnc HOST:PORT[,password=FILE]`, `:PORT`, `PORT` or
    /// `unix:PATH[,password=FILE]`; HOST defaults to 127.0.0.1. A TCP
    /// address that is not loopback needs a password, or `insecure`.
    pub fn parse(spec: &str, password_file: Option<&Path>, insecure: bool) -> anyhow::Result<Self> {
        let mut parts = spec.split(',');
        let addr = parts.next().unwrap_or_default();
        let mut password = password_file.map(Path::to_path_buf);
        for opt in parts {
            match opt.split_once('=') {
                Some(("password", f)) if !f.is_empty() => {
                    if password.is_some() {
                        bail!("--vnc {spec}: password given twice (password= and --vnc-password-file)");
                    }
                    password = Some(PathBuf::from(f));
                }
                _ => bail!("--vnc {spec}: unknown option '{opt}' (only password=FILE)"),
            }
        }
        // HOST:PORT, :PORT and PORT are the NBD form's tcp: addresses.
        let listen = if addr.starts_with("unix:") {
            addr.to_owned()
        } else {
            format!("tcp:{addr}")
        };
        let addr: VncAddr = listen
            .parse()
            .with_context(|| format!("--vnc {spec}: bad address"))?;
        if let (VncAddr::Tcp { host, port }, None, false) = (&addr, &password, insecure) {
            let all_loopback = (host.as_str(), *port)
                .to_socket_addrs()
                .with_context(|| format!("--vnc {spec}: cannot resolve '{host}'"))?
                .all(|a| a.ip().is_loopback());
            if !all_loopback {
                bail!(
                    "--vnc {spec}: '{host}' is reachable from other machines and no password was \
                     given; add password=FILE (or --vnc-password-file), or --vnc-insecure to serve \
                     it without one"
                );
            }
        }
        Ok(Self {
            addr,
            password_file: password,
        })
    }

    /// Reads the password: the file's first line, at least one byte.
    pub fn read_password(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read(path)
            .with_context(|| format!("reading the VNC password file {}", path.display()))?;
        let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = first.strip_suffix(b"\r").unwrap_or(first).to_vec();
        if line.is_empty() {
            bail!(
                "the VNC password file {} has an empty first line",
                path.display()
            );
        }
        if line.len() > 8 {
            tracing::warn!(
                "VNC password in {}: only its first 8 bytes count (VNC Authentication)",
                path.display()
            );
        }
        Ok(Some(line))
    }
}

/// What every viewer thread shares.
pub(crate) struct Shared {
    pub console: Arc<Console>,
    pub password: Option<Vec<u8>>,
    pub stop: AtomicBool,
    pub viewers: AtomicUsize,
    /// Viewers with an id below this close (a non-shared ClientInit).
    pub evict_below: AtomicU64,
    next_id: AtomicU64,
    last_refresh: Mutex<Option<Instant>>,
}

impl Shared {
    /// Renders the console unless someone did within the last
    /// [`REFRESH_PERIOD`].
    pub fn refresh(&self) {
        let mut last = self.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFRESH_PERIOD) {
            return;
        }
        // Renders stay on a grid of whole periods while viewers keep up:
        // a viewer's wake-up latency (poll rounds up to a millisecond)
        // must not stretch every period (30 ms became 30.6).
        *last = Some(match *last {
            Some(t) if now.duration_since(t) < 2 * REFRESH_PERIOD => t + REFRESH_PERIOD,
            _ => now,
        });
        drop(last);
        self.console.refresh();
    }

    /// How long until [`Shared::refresh`] renders again (zero: now).
    pub fn next_refresh_in(&self) -> Duration {
        let last = self.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
        last.map_or(Duration::ZERO, |t| {
            REFRESH_PERIOD.saturating_sub(t.elapsed())
        })
    }
}

/// A viewer's connection.
pub(crate) trait Stream: Read + Write + AsRawFd + Send {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for std::net::TcpStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        self.set_nodelay(true)?;
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Tcp(l) => Box::new(l.accept()?.0),
            Listener::Unix(l, _) => Box::new(l.accept()?.0),
        })
    }
}

/// The running server; stops (and closes every viewer) when dropped.
pub struct VncServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    socket_file: Option<PathBuf>,
    /// The TCP port listened on (useful with port 0).
    pub port: Option<u16>,
}

impl VncServer {
    /// Binds the address and starts serving `console`.
    pub fn start(opts: &VncOptions, console: Arc<Console>) -> anyhow::Result<Self> {
        let password = opts.read_password()?;
        let (listener, port, socket_file) = match &opts.addr {
            VncAddr::Tcp { host, port } => {
                let l = TcpListener::bind((host.as_str(), *port))
                    .with_context(|| format!("VNC: listening on {host}:{port}"))?;
                let port = l.local_addr()?.port();
                if let Ok(a) = l.local_addr() {
                    if !a.ip().is_loopback() && password.is_none() {
                        tracing::warn!("VNC on {a} without a password (--vnc-insecure)");
                    }
                }
                (Listener::Tcp(l), Some(port), None)
            }
            VncAddr::Unix(path) => {
                let l = UnixListener::bind(path)
                    .with_context(|| format!("VNC: listening on {}", path.display()))?;
                (Listener::Unix(l, path.clone()), None, Some(path.clone()))
            }
        };
        let shared = Arc::new(Shared {
            console,
            password,
            stop: AtomicBool::new(false),
            viewers: AtomicUsize::new(0),
            evict_below: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            last_refresh: Mutex::new(None),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vnc-accept".into())
            .spawn(move || accept_loop(&listener, &s))
            .context("spawning the VNC accept thread")?;
        Ok(Self {
            shared,
            thread: Some(thread),
            socket_file,
            port,
        })
    }

    /// Viewers connected now.
    pub fn viewers(&self) -> usize {
        self.shared.viewers.load(Ordering::Acquire)
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.socket_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn accept_loop(listener: &Listener, shared: &Arc<Shared>) {
    let mut viewers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        viewers.retain(|t| !t.is_finished());
        let mut pfd = libc::pollfd {
            fd: listener.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes only the one pollfd given.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("VNC accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::AcqRel);
        let full = shared.viewers.fetch_add(1, Ordering::AcqRel) >= MAX_VIEWERS;
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vnc-viewer{id}"))
            .spawn(move || {
                session::serve(stream, id, &s, full);
                s.viewers.fetch_sub(1, Ordering::AcqRel);
            });
        match spawned {
            Ok(t) => viewers.push(t),
            Err(e) => {
                shared.viewers.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("VNC: cannot start a viewer thread: {e}");
            }
        }
    }
    for t in viewers {
        let _ = t.join();
    }
    if let Listener::Unix(_, path) = listener {
        tracing::debug!("VNC socket {} closed", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_the_password_rule() {
        let o = VncOptions::parse(":5901", None, false).unwrap();
        assert_eq!(
            o.addr,
            VncAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 5901
            }
        );
        assert!(VncOptions::parse("5900", None, false).is_ok());
        let o = VncOptions::parse("unix:/tmp/v.sock,password=/tmp/pw", None, false).unwrap();
        assert_eq!(o.addr, VncAddr::Unix("/tmp/v.sock".into()));
        assert_eq!(o.password_file, Some(PathBuf::from("/tmp/pw")));
        let e = VncOptions::parse("0.0.0.0:5900", None, false).unwrap_err();
        assert!(e.to_string().contains("--vnc-insecure"), "{e}");
        assert!(VncOptions::parse("0.0.0.0:5900", None, true).is_ok());
        assert!(VncOptions::parse("0.0.0.0:5900", Some(Path::new("/pw")), false).is_ok());
        assert!(VncOptions::parse("1.2.3.4:99999", None, true).is_err());
        assert!(VncOptions::parse(":5900,share=x", None, false).is_err());
        assert!(VncOptions::parse(":5900,password=a", Some(Path::new("/b")), false).is_err());
    }
}
