//! The listening side: sockets, the accept thread, one thread per client,
//! runtime export changes and stopping.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::session::{self, ClientSlot, End, ExportEntry, Peer, Shared};
use super::source::Export;

/// Where the server listens: `unix:PATH`, `tcp:HOST:PORT` or `tcp:PORT`
/// (127.0.0.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl FromStr for ListenAddr {
    type Err = NbdError;

    fn from_str(s: &str) -> Result<Self, NbdError> {
        let bad = |why: &str| NbdError::BadAddress {
            addr: s.to_owned(),
            reason: why.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(bad("expected unix:PATH, tcp:HOST:PORT or tcp:PORT"));
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
            None => ("127.0.0.1", rest),
        };
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
        Ok(ListenAddr::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            ListenAddr::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

/// Errors of the server's API.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("NBD address {addr}: {reason}: {source}")]
    Socket {
        addr: String,
        reason: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("NBD address {addr}: {reason}")]
    InUse { addr: String, reason: String },
    #[error("NBD export {0:?} already exists")]
    ExportExists(String),
    #[error("NBD export {0:?} does not exist")]
    NoSuchExport(String),
    #[error("NBD export {name:?} is open by {clients} client(s); remove it with mode hard to disconnect them")]
    ExportBusy { name: String, clients: usize },
    #[error("NBD export name {0:?}: 1 to 4096 bytes of UTF-8 without NUL")]
    BadName(String),
    #[error("the NBD server is stopping")]
    Stopping,
}

/// Limits of the server; see the module documentation.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_clients: usize,
    pub max_payload: u32,
    pub idle_timeout: Duration,
    /// Serve only over TLS with these credentials (see [`super::tls`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_clients: 64,
            max_payload: 32 << 20,
            idle_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// How [`NbdServer::remove_export`] treats connected clients (QEMU's
/// `nbd-server-remove` `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveMode {
    /// Refuse while clients use the export.
    Safe,
    /// Disconnect the export's clients.
    Hard,
}

/// A running NBD server. Dropping it stops it.
pub struct NbdServer {
    shared: Arc<Shared>,
    addr: ListenAddr,
    stop: Arc<EventFd>,
    accept: Option<JoinHandle<()>>,
    pool: Arc<Pool>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Tcp(s) => s.as_raw_fd(),
        }
    }
    fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        match self {
            Sock::Unix(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
            Sock::Tcp(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
        }
    }
}

/// A client socket under the session's framing: reads wake every
/// [`TICK`] to notice a stop or a stalled peer; writes time out when the
/// peer does not read.
struct RawPeer {
    sock: Sock,
    shared: Arc<Shared>,
    waiting: bool,
    last: Instant,
}

/// What the session reads and writes: the socket, or TLS over it after
/// NBD_OPT_STARTTLS; writes are buffered until the session flushes.
struct SocketPeer {
    raw: RawPeer,
    tls: Option<rustls::ServerConnection>,
    out: Vec<u8>,
}

const TICK: Duration = Duration::from_millis(200);
const OUT_BUFFER: usize = 256 * 1024;

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Read for RawPeer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match &mut self.sock {
                Sock::Unix(s) => s.read(buf),
                Sock::Tcp(s) => s.read(buf),
            };
            match r {
                Ok(n) => {
                    if n > 0 {
                        self.waiting = false;
                    }
                    self.last = Instant::now();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if timed_out(&e) => {
                    if self.shared.stopping.load(Ordering::SeqCst) {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the server is stopping",
                        ));
                    }
                    if !self.waiting && self.last.elapsed() > self.shared.options.idle_timeout {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer stalled in the middle of a message",
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for RawPeer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match &mut self.sock {
            Sock::Unix(s) => s.write_all(buf),
            Sock::Tcp(s) => s.write_all(buf),
        };
        r.map_err(|e| {
            if timed_out(&e) {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer does not read its replies",
                )
            } else {
                e
            }
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SocketPeer {
    fn write_out(&mut self, b: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(conn) => {
                let mut s = rustls::Stream::new(conn, &mut self.raw);
                s.write_all(b)?;
                s.flush()
            }
            None => self.raw.write_all(b),
        }
    }
}

impl Read for SocketPeer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(conn) => rustls::Stream::new(conn, &mut self.raw).read(buf),
            None => self.raw.read(buf),
        }
    }
}

impl Write for SocketPeer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len() + buf.len() > OUT_BUFFER {
            self.flush()?;
            if buf.len() > OUT_BUFFER {
                self.write_out(buf)?;
                return Ok(buf.len());
            }
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let r = self.write_out(&out);
        self.out = out;
        self.out.clear();
        r
    }
}

impl Peer for SocketPeer {
    fn set_waiting(&mut self, waiting: bool) {
        if waiting {
            self.raw.last = Instant::now();
        }
        self.raw.waiting = waiting;
    }

    fn tls_offered(&self) -> bool {
        self.raw.shared.options.tls.is_some()
    }

    fn tls_active(&self) -> bool {
        self.tls.is_some()
    }

    fn start_tls(&mut self) -> io::Result<()> {
        let Some(config) = self.raw.shared.options.tls.clone() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no TLS credentials",
            ));
        };
        if self.tls.is_some() || !self.out.is_empty() {
            return Err(io::Error::other(
                "TLS must start on an idle, plain connection",
            ));
        }
        let mut conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut self.raw)?;
        }
        self.tls = Some(conn);
        Ok(())
    }
}

/// Creates the unix socket (mode 0600): refuses a path that exists and is
/// not a socket, or a socket another process listens on; replaces a stale
/// one.
fn bind_unix(path: &std::path::Path, addr: &str) -> Result<UnixListener, NbdError> {
    let sock_err = |reason, source| NbdError::Socket {
        addr: addr.to_owned(),
        reason,
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let in_use = |reason: &str| NbdError::InUse {
            addr: addr.to_owned(),
            reason: reason.to_owned(),
        };
        if !meta.file_type().is_socket() {
            return Err(in_use("the path exists and is not a socket"));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(in_use("another process listens on this socket")),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
                .map_err(|e| sock_err("cannot remove the stale socket", e))?,
            Err(e) => return Err(sock_err("cannot tell whether the socket is in use", e)),
        }
    }
    let l = UnixListener::bind(path).map_err(|e| sock_err("cannot create the socket", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| sock_err("cannot set the socket's mode to 0600", e))?;
    Ok(l)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 4096 && !name.contains('\0')
}

impl NbdServer {
    /// Binds the address and starts the accept thread. With `tcp:...:0`
    /// the kernel picks the port; [`NbdServer::addr`] tells which.
    pub fn start(addr: &ListenAddr, options: ServerOptions) -> Result<NbdServer, NbdError> {
        let shown = addr.to_string();
        let sock_err = |reason, source| NbdError::Socket {
            addr: shown.clone(),
            reason,
            source,
        };
        let (listener, addr) = match addr {
            ListenAddr::Unix(p) => (Listener::Unix(bind_unix(p, &shown)?), addr.clone()),
            ListenAddr::Tcp { host, port } => {
                let sa = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| sock_err("cannot resolve the host", e))?
                    .next()
                    .ok_or_else(|| NbdError::BadAddress {
                        addr: shown.clone(),
                        reason: "the host has no address".into(),
                    })?;
                let l = TcpListener::bind(sa).map_err(|e| sock_err("cannot listen", e))?;
                let local = l
                    .local_addr()
                    .map_err(|e| sock_err("cannot read the bound address", e))?;
                (
                    Listener::Tcp(l),
                    ListenAddr::Tcp {
                        host: host.clone(),
                        port: local.port(),
                    },
                )
            }
        };
        let nonblocking = match &listener {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        };
        nonblocking.map_err(|e| sock_err("cannot make the socket non-blocking", e))?;
        let stop = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(|e| sock_err("cannot create an eventfd", e))?,
        );
        let shared = Arc::new(Shared::new(options));
        let workers = Arc::new(Mutex::new(Vec::new()));
        let pool = Arc::new(Pool::new());
        let (sh, pl, st, wk) = (shared.clone(), pool.clone(), stop.clone(), workers.clone());
        let accept = std::thread::Builder::new()
            .name("rehost-nbd".into())
            .spawn(move || accept_loop(listener, &sh, &pl, &st, &wk))
            .map_err(|e| sock_err("cannot spawn the accept thread", e))?;
        Ok(NbdServer {
            shared,
            addr,
            stop,
            accept: Some(accept),
            pool,
            workers,
        })
    }

    /// The address listened on (with the port the kernel chose).
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The NBD URI of an export (`nbd+unix:///NAME?socket=PATH` or
    /// `nbd://HOST:PORT/NAME`), as qemu-img, nbdinfo and libnbd take it.
    pub fn uri(&self, export: &str) -> String {
        let s = if self.shared.options.tls.is_some() {
            "s"
        } else {
            ""
        };
        match &self.addr {
            ListenAddr::Unix(p) => format!("nbd{s}+unix:///{export}?socket={}", p.display()),
            ListenAddr::Tcp { host, port } if host.contains(':') => {
                format!("nbd{s}://[{host}]:{port}/{export}")
            }
            ListenAddr::Tcp { host, port } => format!("nbd{s}://{host}:{port}/{export}"),
        }
    }

    /// Adds an export; clients can open it at once.
    pub fn add_export(&self, export: Export) -> Result<(), NbdError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(NbdError::Stopping);
        }
        if !valid_name(&export.name) {
            return Err(NbdError::BadName(export.name));
        }
        let mut map = self
            .shared
            .exports
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&export.name) {
            return Err(NbdError::ExportExists(export.name));
        }
        map.insert(
            export.name.clone(),
            Arc::new(ExportEntry {
                export,
                rmw: Mutex::new(()),
            }),
        );
        Ok(())
    }

    /// Removes an export: new clients can no longer open it. With
    /// [`RemoveMode::Hard`] its clients are disconnected; with
    /// [`RemoveMode::Safe`] removal is refused while it has clients.
    pub fn remove_export(&self, name: &str, mode: RemoveMode) -> Result<(), NbdError> {
        let mut map = self
            .shared
            .exports
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(name) {
            return Err(NbdError::NoSuchExport(name.to_owned()));
        }
        let clients = self
            .shared
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let users: Vec<&ClientSlot> = clients
            .values()
            .filter(|c| c.export.as_deref() == Some(name))
            .collect();
        if mode == RemoveMode::Safe && !users.is_empty() {
            return Err(NbdError::ExportBusy {
                name: name.to_owned(),
                clients: users.len(),
            });
        }
        for c in users {
            if let Some(close) = &c.closer {
                close();
            }
        }
        map.remove(name);
        Ok(())
    }

    /// Names of the exports.
    pub fn exports(&self) -> Vec<String> {
        self.shared
            .exports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Clients connected now.
    pub fn client_count(&self) -> usize {
        self.shared
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Closes every client, waits for their threads, removes the unix
    /// socket. The exports' sources are released (not flushed: flush them
    /// yourself if you want their data on stable storage).
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.write(1);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self
            .shared
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if let Some(close) = &c.closer {
                close();
            }
        }
        self.pool.wake_all();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
        self.shared
            .exports
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if let ListenAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.shut();
        }
    }
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("addr", &self.addr)
            .field("exports", &self.exports())
            .finish()
    }
}

fn accept_one(listener: &Listener) -> io::Result<Sock> {
    Ok(match listener {
        Listener::Unix(l) => {
            let (s, _) = l.accept()?;
            if !crate::control::server::peer_allowed(&s) {
                tracing::warn!("nbd: refused a client of another user");
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "other user",
                ));
            }
            Sock::Unix(s)
        }
        Listener::Tcp(l) => Sock::Tcp(l.accept()?.0),
    })
}

fn accept_loop(
    listener: Listener,
    shared: &Arc<Shared>,
    pool: &Arc<Pool>,
    stop: &EventFd,
    workers: &Mutex<Vec<JoinHandle<()>>>,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let lfd = match &listener {
        Listener::Unix(l) => l.as_raw_fd(),
        Listener::Tcp(l) => l.as_raw_fd(),
    };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: lfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes only the array it is given.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if fds[0].revents != 0 || shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|w| !w.is_finished());
        if fds[1].revents == 0 {
            continue;
        }
        loop {
            let sock = match accept_one(&listener) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => continue,
                Err(e) => {
                    // Out of file descriptors and the like: try later.
                    tracing::warn!("nbd: accept failed: {e}");
                    break;
                }
            };
            let mut clients = shared.clients.lock().unwrap_or_else(|e| e.into_inner());
            if clients.len() >= shared.options.max_clients {
                tracing::warn!(
                    "nbd: {} clients are connected; closed another",
                    shared.options.max_clients
                );
                continue;
            }
            let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
            let idle = shared.options.idle_timeout;
            let Ok(closer) = sock.try_clone() else {
                continue;
            };
            if sock.set_timeouts(TICK.min(idle), idle).is_err() {
                continue;
            }
            tracing::debug!(fd = sock.fd(), id, "nbd: client connected");
            clients.insert(
                id,
                ClientSlot {
                    export: None,
                    closer: Some(Box::new(move || closer.shutdown())),
                },
            );
            drop(clients);
            // An idle worker takes the client; otherwise a new one. A
            // woken thread is scheduled sooner than a new one, which
            // matters for short clients (nbdinfo) on a busy host.
            let mut q = pool.state.lock().unwrap_or_else(|e| e.into_inner());
            if q.idle > 0 {
                q.idle -= 1;
                q.jobs.push_back((sock, id));
                drop(q);
                pool.ready.notify_one();
                continue;
            }
            drop(q);
            let (sh, pl) = (shared.clone(), pool.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("rehost-nbd-{id}"))
                .spawn(move || worker(sock, id, &sh, &pl));
            match spawned {
                Ok(h) => workers.lock().unwrap_or_else(|e| e.into_inner()).push(h),
                Err(e) => {
                    tracing::warn!("nbd: cannot spawn a client thread: {e}");
                    shared
                        .clients
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                }
            }
        }
    }
}

/// Client threads waiting for their next client.
pub(crate) struct Pool {
    state: Mutex<PoolState>,
    ready: Condvar,
}

struct PoolState {
    /// Clients handed to an idle worker and not yet taken.
    jobs: VecDeque<(Sock, u64)>,
    /// Workers waiting, less the jobs already promised to them.
    idle: usize,
}

impl Pool {
    fn new() -> Self {
        Pool {
            state: Mutex::new(PoolState {
                jobs: VecDeque::new(),
                idle: 0,
            }),
            ready: Condvar::new(),
        }
    }

    /// Wakes every waiting worker (to notice a stop).
    fn wake_all(&self) {
        let _g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.ready.notify_all();
    }
}

/// How long a worker without a client waits before it ends.
const WORKER_LINGER: Duration = Duration::from_secs(30);

/// Serves a client, then waits for the next one until none comes for
/// [`WORKER_LINGER`] or the server stops.
fn worker(first: Sock, first_id: u64, shared: &Arc<Shared>, pool: &Pool) {
    let mut job = Some((first, first_id));
    while let Some((sock, id)) = job.take() {
        client(sock, shared.clone(), id);
        let mut st = pool.state.lock().unwrap_or_else(|e| e.into_inner());
        st.idle += 1;
        job = loop {
            if let Some(j) = st.jobs.pop_front() {
                // The accept thread took this worker off `idle`.
                break Some(j);
            }
            if shared.stopping.load(Ordering::SeqCst) {
                st.idle -= 1;
                break None;
            }
            let (g, t) = pool
                .ready
                .wait_timeout(st, WORKER_LINGER)
                .unwrap_or_else(|e| e.into_inner());
            st = g;
            if t.timed_out() && st.jobs.is_empty() {
                st.idle -= 1;
                break None;
            }
        };
    }
}

fn client(sock: Sock, shared: Arc<Shared>, id: u64) {
    let mut peer = SocketPeer {
        raw: RawPeer {
            sock,
            shared: shared.clone(),
            waiting: false,
            last: Instant::now(),
        },
        tls: None,
        out: Vec::new(),
    };
    match session::run(&mut peer, &shared, id) {
        End::Done => tracing::debug!(id, "nbd: client left"),
        End::Protocol(why) => tracing::info!(id, "nbd: closed a client: {why}"),
        End::Io(e) => tracing::info!(id, "nbd: client connection ended: {e}"),
    }
    let _ = peer.flush();
    if let Some(conn) = peer.tls.as_mut() {
        conn.send_close_notify();
        let _ = conn.write_tls(&mut peer.raw);
    }
    peer.raw.sock.shutdown();
    shared
        .clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}
