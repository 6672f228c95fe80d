//! The control socket: a Unix socket (mode 0600, peers of another user
//! refused) served by one thread that polls the listener, every client and
//! the event queue. Commands run on this thread; none of them blocks for
//! long (`stop` waits at most two seconds for the vCPUs to park).
//!
//! Every client is bounded: one message at most [`MAX_MESSAGE`] bytes,
//! at most [`MAX_OUTPUT`] bytes of replies and events waiting for it
//! (past that it is closed), input not read while it has more than
//! [`READ_PAUSE`] bytes unread of its own, and closed when it has not
//! negotiated capabilities, or has left a message half-sent, for
//! [`IDLE_LIMIT`]. At most [`MAX_CLIENTS`] are connected at once.
//!
//! [`MAX_MESSAGE`]: super::protocol::MAX_MESSAGE

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

use super::commands;
use super::protocol::{self, Frame, QmpError, Splitter};
use super::state::VmControl;

/// Most clients connected at once; later ones are closed at once.
pub const MAX_CLIENTS: usize = 128;
/// Replies and events waiting for one client; past this it is closed.
pub const MAX_OUTPUT: usize = 8 * 1024 * 1024;
/// A client's input is not read while this much output waits for it.
pub const READ_PAUSE: usize = 256 * 1024;
/// A client that has not negotiated, or stopped in the middle of a
/// message, for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How long the server tries to deliver what is left when rehost exits.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);

struct Client {
    stream: UnixStream,
    splitter: Splitter,
    out: Vec<u8>,
    out_pos: usize,
    negotiated: bool,
    /// The client shut its sending side: answer what it sent, then close.
    read_done: bool,
    /// Close once the output is written (after a fatal framing error).
    closing: bool,
    dead: bool,
    since: Instant,
    last_input: Instant,
}

/// What a non-blocking send(2) or recv(2) came to.
enum Io {
    Done(usize),
    Retry,
    WouldBlock,
    Gone,
}

fn outcome(n: isize) -> Io {
    if n >= 0 {
        return Io::Done(n as usize);
    }
    match io::Error::last_os_error().kind() {
        io::ErrorKind::WouldBlock => Io::WouldBlock,
        io::ErrorKind::Interrupted => Io::Retry,
        _ => Io::Gone,
    }
}

impl Client {
    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn queue(&mut self, msg: &Value) {
        if self.dead {
            return;
        }
        let line = protocol::to_line(msg);
        if self.pending() + line.len() > MAX_OUTPUT {
            tracing::warn!(
                "control socket: a client does not read its replies and events; closing it"
            );
            self.dead = true;
            return;
        }
        if self.out_pos > 0 && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.out.extend_from_slice(&line);
    }

    /// Writes what it can without blocking.
    fn write_out(&mut self) {
        while self.out_pos < self.out.len() && !self.dead {
            let rest = &self.out[self.out_pos..];
            // SAFETY: send(2) reads `rest.len()` bytes from a live slice;
            // MSG_NOSIGNAL turns a vanished peer into EPIPE, not SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            match outcome(n) {
                Io::Done(n) => self.out_pos += n,
                Io::Retry => continue,
                Io::WouldBlock => return,
                // The client left mid-reply: nothing else to do.
                Io::Gone => {
                    self.dead = true;
                    return;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.closing || self.read_done {
                self.dead = true;
            }
        }
    }

    fn read_in(&mut self, ctl: &VmControl) {
        let mut buf = [0u8; 16 * 1024];
        // A bounded number of reads per wakeup keeps one busy client from
        // starving the others.
        for _ in 0..4 {
            if self.pending() > READ_PAUSE || self.closing || self.dead {
                return;
            }
            // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::recv(
                    self.fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let n = match outcome(n) {
                Io::Done(0) => {
                    self.read_done = true;
                    return;
                }
                Io::Done(n) => n,
                Io::Retry => continue,
                Io::WouldBlock => return,
                Io::Gone => {
                    self.dead = true;
                    return;
                }
            };
            self.last_input = Instant::now();
            let mut frames = Vec::new();
            self.splitter.feed(&buf[..n], &mut frames);
            for f in frames {
                self.handle(f, ctl);
            }
            if n < buf.len() {
                // Everything the client sent so far has been read.
                return;
            }
        }
    }

    fn handle(&mut self, frame: Frame, ctl: &VmControl) {
        let bytes = match frame {
            Frame::TooLarge => {
                let e = QmpError::generic(format!(
                    "JSON message larger than {} bytes or nested deeper than {} levels; closing the connection",
                    protocol::MAX_MESSAGE,
                    protocol::MAX_NESTING
                ));
                self.queue(&protocol::reply_err(&e, None));
                self.closing = true;
                return;
            }
            Frame::Message(b) => b,
        };
        let req = match protocol::parse_request(&bytes) {
            Ok(r) => r,
            Err(bad) => {
                self.queue(&protocol::reply_err(&bad.error, bad.id.as_ref()));
                return;
            }
        };
        let result = if !self.negotiated {
            if req.execute == "qmp_capabilities" {
                negotiate(&req).inspect(|_| self.negotiated = true)
            } else {
                Err(QmpError::not_found(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                ))
            }
        } else {
            tracing::debug!(command = %req.execute, "control socket command");
            commands::execute(ctl, &req)
        };
        let reply = match result {
            Ok(v) => protocol::reply_ok(v, req.id.as_ref()),
            Err(e) => protocol::reply_err(&e, req.id.as_ref()),
        };
        self.queue(&reply);
    }
}

/// `qmp_capabilities`: rehost offers no optional capability, so `enable`
/// may only be empty.
fn negotiate(req: &protocol::Request) -> Result<Value, QmpError> {
    let a = protocol::Args::new(&req.arguments, &["enable"])?;
    if let Some(caps) = a.opt_array("enable")? {
        if let Some(c) = caps.first() {
            let name = c.as_str().map_or_else(|| c.to_string(), str::to_owned);
            return Err(QmpError::generic(format!(
                "Capability '{name}' not available"
            )));
        }
    }
    Ok(json!({}))
}

/// Creates the socket: refuses a path that exists and is not a socket, or
/// a socket another process still listens on; replaces a stale one.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("--qmp {shown}: the path exists and is not a socket; refusing to replace it");
        }
        match UnixStream::connect(path) {
            Ok(_) => bail!("--qmp {shown}: another process is listening on this socket"),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)
                    .with_context(|| format!("--qmp {shown}: cannot remove the stale socket"))?;
            }
            Err(e) => bail!("--qmp {shown}: cannot tell whether the socket is in use: {e}"),
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("--qmp {shown}: cannot create the control socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("--qmp {shown}: cannot set the socket's mode to 0600"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("--qmp {shown}: cannot make the socket non-blocking"))?;
    Ok(listener)
}

/// True when the connecting process runs as our user or as root.
pub(crate) fn peer_allowed(stream: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a `ucred` of `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    rc == 0 && (cred.uid == me || cred.uid == 0)
}

/// The running server; [`ControlServer::close`] ends it.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    pub fn start(
        listener: UnixListener,
        path: PathBuf,
        ctl: Arc<VmControl>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
        ctl.enable_events();
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rehost-qmp".into())
            .spawn(move || serve(listener, &ctl, &s))
            .context("spawning the control socket thread")?;
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// Delivers the events and replies still waiting (at most a second),
    /// closes every client and removes the socket.
    pub fn close(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shut();
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], timeout: Duration) {
    // SAFETY: poll reads and writes only the array it is given.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
}

fn broadcast(clients: &mut [Client], ctl: &VmControl) {
    for ev in ctl.take_events() {
        for c in clients.iter_mut().filter(|c| c.negotiated) {
            c.queue(&ev);
        }
    }
}

fn accept(listener: &UnixListener, clients: &mut Vec<Client>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if !peer_allowed(&stream) {
                    tracing::warn!("control socket: refused a client of another user");
                    continue;
                }
                if clients.len() >= MAX_CLIENTS {
                    tracing::warn!(
                        "control socket: {MAX_CLIENTS} clients are connected; refused another"
                    );
                    continue;
                }
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let now = Instant::now();
                let mut c = Client {
                    stream,
                    splitter: Splitter::new(),
                    out: Vec::new(),
                    out_pos: 0,
                    negotiated: false,
                    read_done: false,
                    closing: false,
                    dead: false,
                    since: now,
                    last_input: now,
                };
                c.queue(&protocol::greeting());
                c.write_out();
                clients.push(c);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // Out of file descriptors and the like: try again later.
                tracing::warn!("control socket: accept failed: {e}");
                return;
            }
        }
    }
}

fn serve(listener: UnixListener, ctl: &VmControl, stop: &EventFd) {
    let mut clients: Vec<Client> = Vec::new();
    loop {
        let mut fds = vec![
            pollfd(stop.as_raw_fd(), libc::POLLIN),
            pollfd(ctl.events_eventfd().as_raw_fd(), libc::POLLIN),
            pollfd(listener.as_raw_fd(), libc::POLLIN),
        ];
        for c in &clients {
            let mut ev = 0;
            if !c.read_done && !c.closing && c.pending() <= READ_PAUSE {
                ev |= libc::POLLIN;
            }
            if c.pending() > 0 {
                ev |= libc::POLLOUT;
            }
            fds.push(pollfd(c.fd(), ev));
        }
        poll(&mut fds, Duration::from_secs(1));
        if fds[0].revents != 0 {
            finish(clients, ctl);
            return;
        }
        if fds[1].revents != 0 {
            broadcast(&mut clients, ctl);
        }
        for (c, f) in clients.iter_mut().zip(&fds[3..]) {
            if f.revents & libc::POLLIN != 0 {
                c.read_in(ctl);
            }
            if f.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                c.dead = true;
            } else if f.revents & libc::POLLHUP != 0 && f.revents & libc::POLLIN == 0 {
                c.read_done = true;
            }
            c.write_out();
        }
        // Commands may have queued events (STOP, DEVICE_TRAY_MOVED...).
        broadcast(&mut clients, ctl);
        let now = Instant::now();
        for c in &mut clients {
            let idle = now.duration_since(c.last_input) > IDLE_LIMIT;
            let unnegotiated = !c.negotiated && now.duration_since(c.since) > IDLE_LIMIT;
            if unnegotiated || (c.splitter.partial() && idle) {
                tracing::info!("control socket: closing an idle client");
                c.dead = true;
            }
            c.write_out();
        }
        clients.retain(|c| !c.dead);
        if fds[2].revents != 0 {
            accept(&listener, &mut clients);
        }
    }
}

/// Last events out, then every client closed.
fn finish(mut clients: Vec<Client>, ctl: &VmControl) {
    broadcast(&mut clients, ctl);
    let deadline = Instant::now() + FLUSH_LIMIT;
    loop {
        for c in &mut clients {
            c.closing = true;
            c.write_out();
        }
        clients.retain(|c| !c.dead && c.pending() > 0);
        if clients.is_empty() || Instant::now() > deadline {
            return;
        }
        let mut fds: Vec<_> = clients
            .iter()
            .map(|c| pollfd(c.fd(), libc::POLLOUT))
            .collect();
        poll(&mut fds, Duration::from_millis(50));
    }
}
