//! The event-loop side of one COM port: it owns the host connection
//! (stdout/stdin, a file, a pty, a tty, a socket), moves guest output from
//! the port's queue to it and host input into the UART's receive FIFO with
//! back-pressure, applies the guest's line settings where the connection
//! can carry them, and reconnects. Everything here runs on the event-loop
//! thread; the vCPU side only touches the queue (see `queue.rs`).
//!
//! Lock order: the UART, then the queue. The loop never holds the queue
//! while it takes the UART.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use rehost_devices::serial::{ModemStatus, Uart16550};
use vmm_sys_util::timerfd::TimerFd;

use super::queue::{Control, Next, PortShared};
use super::rfc2217::{self, LineState};
use super::sock::{self, Connecting, Listener, Target};
use super::stdio::EscapeKeys;
use super::termios::{self, ParmrkDecoder, RxByte};

/// Host input held for the guest before the loop stops reading.
const INPUT_MAX: usize = 4096;
/// Guest output taken from the queue per write.
const CHUNK: usize = 16 * 1024;
/// Guest output is written after this delay, or at once when this much is
/// queued: a guest prints a byte per port write, and one host write per
/// byte would cost more than the guest's own exits.
const FLUSH_DELAY: Duration = Duration::from_micros(500);
const FLUSH_NOW: usize = 4096;
/// Client reconnect back-off.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a pty is checked for a reader, a tty for its modem lines.
const PTY_POLL: Duration = Duration::from_millis(100);
const MODEM_POLL: Duration = Duration::from_millis(20);
/// How long a line-setting change waits for a tty to send what came
/// before it.
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// How long an RFC 2217 server may take to answer COM-PORT-OPTION before
/// data goes out anyway.
const NEGOTIATION_MAX: Duration = Duration::from_secs(3);
/// Peer protocol problems logged per connection (then only counted).
const PROBLEMS_LOGGED: u32 = 5;

// Event data tokens.
const WAKE: u32 = 1;
const CONN: u32 = 2;
const STDIN: u32 = 3;
const LISTEN: u32 = 4;
const T_FLUSH: u32 = 5;
const T_RX: u32 = 6;
const T_RETRY: u32 = 7;
const T_POLL: u32 = 8;

/// What the port is connected to on the host.
pub enum Link {
    /// Output to stdout (non-blocking if `pollable`), input from stdin
    /// with the escape keys when it is a terminal.
    Stdio {
        out: OwnedFd,
        pollable: bool,
        keys: Option<EscapeKeys>,
    },
    File {
        file: std::fs::File,
        path: PathBuf,
    },
    /// A pty master; connected while someone has the slave open.
    Pty {
        master: OwnedFd,
        path: String,
    },
    /// A host serial port, reopened if it disappears.
    Tty {
        device: PathBuf,
        fd: Option<OwnedFd>,
    },
    /// A client socket (tcp:, unix:, rfc2217:).
    Client {
        target: Target,
        rfc2217: bool,
    },
    Server {
        listener: Listener,
    },
}

/// The current connection.
struct Conn {
    /// Written (and read, except for stdio).
    fd: RawFd,
    /// Closed when the connection ends (sockets, a tty).
    _owned: Option<OwnedFd>,
    /// epoll can watch `fd` (not a regular file).
    pollable: bool,
    /// Input is read from `fd` (not for files, not for stdio).
    readable: bool,
    connecting: bool,
    /// What `fd` is registered for, if it is.
    registered: Option<EventSet>,
    /// Who is on the other end, for the log.
    peer: String,
}

impl Conn {
    /// A socket or tty of our own: read, written, watched, closed with
    /// the connection.
    fn owned(fd: OwnedFd, peer: String) -> Self {
        Self {
            fd: fd.as_raw_fd(),
            _owned: Some(fd),
            pollable: true,
            readable: true,
            connecting: false,
            registered: None,
            peer,
        }
    }

    /// A descriptor the link keeps (stdout, a file, a pty master).
    fn borrowed(fd: RawFd, pollable: bool, readable: bool, peer: String) -> Self {
        Self {
            fd,
            _owned: None,
            pollable,
            readable,
            connecting: false,
            registered: None,
            peer,
        }
    }
}

/// Connection-state messages: only the first failure of a series is a
/// warning.
#[derive(Default)]
struct Reports {
    failing: bool,
    problems: u32,
}

pub struct PortLoop {
    name: String,
    uart: Arc<Mutex<Uart16550>>,
    shared: Arc<PortShared>,
    link: Link,
    conn: Option<Conn>,
    rfc2217: Option<rfc2217::Client>,
    parmrk: Option<ParmrkDecoder>,
    input: VecDeque<RxByte>,
    stdin: StdinState,
    outbuf: Vec<u8>,
    out_pos: usize,
    chunk: Vec<u8>,
    flush_timer: TimerFd,
    flush_armed: bool,
    rx_timer: TimerFd,
    retry_timer: TimerFd,
    poll_timer: TimerFd,
    backoff: Duration,
    /// A line change waiting for the tty to send earlier output.
    draining: Option<(Control, Instant)>,
    negotiation_deadline: Option<Instant>,
    modem_poll: bool,
    reports: Reports,
    /// The link is gone for good (stdout closed, file write failed).
    dead: bool,
}

#[derive(PartialEq, Eq)]
enum StdinState {
    /// Not stdio, or stdin cannot be watched.
    None,
    Registered(EventSet),
    Unregistered,
    Ended,
}

fn lock(uart: &Mutex<Uart16550>) -> MutexGuard<'_, Uart16550> {
    uart.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a valid, writable buffer of its own length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: writing from a valid buffer of its own length.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking timerfd: a timer re-armed by an earlier event of the
/// same epoll batch must not block the read that acknowledges it.
fn timer() -> io::Result<TimerFd> {
    let t = TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    termios::set_nonblocking(t.as_raw_fd())?;
    Ok(t)
}

fn arm(t: &mut TimerFd, after: Duration) {
    let _ = t.reset(after.max(Duration::from_micros(10)), None);
}

fn disarm(t: &mut TimerFd) {
    let _ = t.clear();
}

impl PortLoop {
    pub fn new(
        name: String,
        uart: Arc<Mutex<Uart16550>>,
        shared: Arc<PortShared>,
        link: Link,
    ) -> io::Result<Self> {
        let rfc2217 = match &link {
            Link::Client { rfc2217: true, .. } => {
                Some(rfc2217::Client::new(Self::snapshot_of(&uart)))
            }
            _ => None,
        };
        let parmrk = matches!(link, Link::Tty { .. }).then(ParmrkDecoder::default);
        Ok(Self {
            name,
            uart,
            shared,
            link,
            conn: None,
            rfc2217,
            parmrk,
            input: VecDeque::new(),
            stdin: StdinState::None,
            outbuf: Vec::new(),
            out_pos: 0,
            chunk: Vec::with_capacity(CHUNK),
            flush_timer: timer()?,
            flush_armed: false,
            rx_timer: timer()?,
            retry_timer: timer()?,
            poll_timer: timer()?,
            backoff: BACKOFF_MIN,
            draining: None,
            negotiation_deadline: None,
            modem_poll: false,
            reports: Reports::default(),
            dead: false,
        })
    }

    fn snapshot_of(uart: &Mutex<Uart16550>) -> LineState {
        let u = lock(uart);
        LineState {
            params: u.line_params(),
            control: u.modem_control(),
            brk: u.break_on(),
        }
    }

    fn connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.connecting)
    }

    // ---- connection lifecycle ----

    /// Starts whatever the link does first.
    fn start(&mut self, ops: &mut EventOps) {
        match &mut self.link {
            Link::Stdio { out, pollable, .. } => {
                let conn = Conn::borrowed(out.as_raw_fd(), *pollable, false, "stdout".into());
                self.stdin = StdinState::Unregistered;
                self.established(conn, ops);
            }
            Link::File { file, path } => {
                let conn =
                    Conn::borrowed(file.as_raw_fd(), false, false, path.display().to_string());
                self.established(conn, ops);
            }
            Link::Pty { .. } => self.check_pty(ops),
            Link::Tty { fd, device } => match fd.take() {
                Some(fd) => {
                    let conn = Conn::owned(fd, device.display().to_string());
                    self.established(conn, ops);
                }
                None => arm(&mut self.retry_timer, Duration::from_secs(1)),
            },
            Link::Client { .. } => self.connect(ops),
            Link::Server { listener } => {
                let _ = ops.add(Events::with_data_raw(listener.fd(), LISTEN, EventSet::IN));
            }
        }
    }

    /// A connection is up: the guest's settings go to it first, then what
    /// output was kept, then live output.
    fn established(&mut self, conn: Conn, ops: &mut EventOps) {
        let peer = conn.peer.clone();
        self.conn = Some(conn);
        self.outbuf.clear();
        self.out_pos = 0;
        self.draining = None;
        self.shared.set_connected(true);
        let state = Self::snapshot_of(&self.uart);
        match &self.link {
            Link::Tty { .. } | Link::Pty { .. } => {
                if let Some(fd) = self.conn.as_ref().map(|c| c.fd) {
                    self.apply_terminal(fd, Control::Line(state.params));
                    if matches!(self.link, Link::Tty { .. }) {
                        self.apply_terminal(fd, Control::Modem(state.control));
                        self.apply_terminal(fd, Control::Break(state.brk));
                        self.modem_poll = true;
                        self.poll_modem_lines();
                        arm(&mut self.poll_timer, MODEM_POLL);
                    }
                }
            }
            _ => {}
        }
        if let Some(client) = self.rfc2217.as_mut() {
            client.connected(state, &mut self.outbuf);
            self.negotiation_deadline = Some(Instant::now() + NEGOTIATION_MAX);
            arm(&mut self.poll_timer, NEGOTIATION_MAX);
        }
        self.reports.problems = 0;
        let (lost, _) = self.shared.take_dropped();
        let again = std::mem::take(&mut self.reports.failing);
        let dropped = if lost > 0 {
            format!(" ({lost} bytes of output dropped while disconnected)")
        } else {
            String::new()
        };
        match (&self.link, again || lost > 0) {
            (Link::Stdio { .. } | Link::File { .. }, _) => {}
            (_, true) => tracing::warn!("{}: connected to {peer}{dropped}", self.name),
            (_, false) => tracing::info!("{}: connected to {peer}", self.name),
        }
        self.backoff = BACKOFF_MIN;
        self.update_interest(ops);
        self.deliver_input(ops);
        self.pump_out(ops);
    }

    /// Stops reading the terminal for good.
    fn end_stdin(&mut self, ops: &mut EventOps) {
        if let StdinState::Registered(ev) = self.stdin {
            let _ = ops.remove(Events::with_data_raw(0, STDIN, ev));
        }
        self.stdin = StdinState::Ended;
    }

    /// The connection ended: `why` is said once; clients retry, servers
    /// listen again, a pty waits for a new reader, a tty is reopened.
    fn lost(&mut self, why: String, ops: &mut EventOps) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if let Some(ev) = conn.registered.take() {
            let _ = ops.remove(Events::with_data_raw(conn.fd, CONN, ev));
        }
        if matches!(self.stdin, StdinState::Registered(_)) {
            self.end_stdin(ops);
        }
        let unsent = self.outbuf.len() - self.out_pos;
        self.outbuf.clear();
        self.out_pos = 0;
        self.draining = None;
        self.negotiation_deadline = None;
        self.modem_poll = false;
        disarm(&mut self.flush_timer);
        self.flush_armed = false;
        if self.shared.set_connected(false) {
            lock(&self.uart).tx_space_available();
        }
        let unsent = if unsent > 0 {
            format!("; {unsent} bytes of output in flight were lost")
        } else {
            String::new()
        };
        let name = self.name.clone();
        match &mut self.link {
            Link::Stdio { .. } | Link::File { .. } => {
                self.dead = true;
                tracing::warn!(
                    "{name}: output to {} failed: {why}; further output is dropped{unsent}",
                    conn.peer
                );
            }
            Link::Server { listener } => {
                tracing::info!(
                    "{name}: {} left ({why}); waiting for the next client{unsent}",
                    conn.peer
                );
                let _ = ops.add(Events::with_data_raw(listener.fd(), LISTEN, EventSet::IN));
            }
            Link::Pty { path, .. } => {
                tracing::info!("{name}: {path} closed by its reader ({why}){unsent}");
                arm(&mut self.poll_timer, PTY_POLL);
            }
            Link::Tty { device, .. } => {
                tracing::warn!(
                    "{name}: {} is gone ({why}); the port is disconnected and rehost tries to reopen it every second{unsent}",
                    device.display()
                );
                self.reports.failing = true;
                self.backoff = Duration::from_secs(1);
                arm(&mut self.retry_timer, self.backoff);
                self.reset_modem_status();
            }
            Link::Client { target, .. } => {
                tracing::warn!(
                    "{name}: connection to {target} lost ({why}); reconnecting in the background{unsent}"
                );
                self.reports.failing = true;
                self.backoff = BACKOFF_MIN;
                arm(&mut self.retry_timer, self.backoff);
                self.reset_modem_status();
            }
        }
        drop(conn);
    }

    /// Without a far end the guest sees the lines of a ready null modem,
    /// as before anything was connected.
    fn reset_modem_status(&mut self) {
        lock(&self.uart).set_modem_status(ModemStatus {
            cts: true,
            dsr: true,
            ri: false,
            dcd: true,
        });
    }

    fn connect(&mut self, ops: &mut EventOps) {
        let Link::Client { target, .. } = &self.link else {
            return;
        };
        let peer = target.to_string();
        match sock::connect(target) {
            Ok(Connecting::Done(fd)) => {
                sock::set_nodelay(fd.as_raw_fd());
                self.established(Conn::owned(fd, peer), ops);
            }
            Ok(Connecting::InProgress(fd)) => {
                self.conn = Some(Conn {
                    connecting: true,
                    ..Conn::owned(fd, peer)
                });
                self.update_interest(ops);
            }
            Err(e) => self.connect_failed(e, ops),
        }
    }

    fn connect_failed(&mut self, e: io::Error, ops: &mut EventOps) {
        if let Some(mut c) = self.conn.take() {
            if let Some(ev) = c.registered.take() {
                let _ = ops.remove(Events::with_data_raw(c.fd, CONN, ev));
            }
        }
        let target = match &self.link {
            Link::Client { target, .. } => target.to_string(),
            _ => return,
        };
        if self.reports.failing {
            tracing::debug!("{}: cannot connect to {target}: {e}", self.name);
        } else {
            tracing::warn!(
                "{}: cannot connect to {target} ({e}); the port stays disconnected and rehost keeps trying in the background",
                self.name
            );
            self.reports.failing = true;
        }
        arm(&mut self.retry_timer, self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let Link::Server { listener } = &self.link else {
            return;
        };
        match listener.accept() {
            Ok(Some((fd, who))) => {
                let _ = ops.remove(Events::with_data_raw(listener.fd(), LISTEN, EventSet::IN));
                self.established(Conn::owned(fd, who), ops);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("{}: accept failed: {e}", self.name),
        }
    }

    /// A pty counts as connected while its slave is open (no POLLHUP).
    fn check_pty(&mut self, ops: &mut EventOps) {
        let Link::Pty { master, path } = &self.link else {
            return;
        };
        let mut p = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid pollfd without waiting.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        if r >= 0 && p.revents & libc::POLLHUP == 0 {
            let conn = Conn::borrowed(master.as_raw_fd(), true, true, path.clone());
            self.established(conn, ops);
        } else {
            arm(&mut self.poll_timer, PTY_POLL);
        }
    }

    fn reopen_tty(&mut self, ops: &mut EventOps) {
        let Link::Tty { device, .. } = &self.link else {
            return;
        };
        let device = device.clone();
        match termios::open_serial_port(&device) {
            Ok(fd) => {
                let conn = Conn::owned(fd, device.display().to_string());
                self.established(conn, ops);
            }
            Err(e) => {
                tracing::debug!("{}: {}: {e}", self.name, device.display());
                arm(&mut self.retry_timer, Duration::from_secs(1));
            }
        }
    }

    // ---- interest ----

    fn update_interest(&mut self, ops: &mut EventOps) {
        let want_input = self.input.len() < INPUT_MAX;
        let want_output = self.out_pos < self.outbuf.len();
        if let Some(conn) = self.conn.as_mut() {
            if conn.pollable {
                let mut ev = EventSet::empty();
                if conn.connecting || want_output {
                    ev |= EventSet::OUT;
                }
                if conn.readable && want_input && !conn.connecting {
                    ev |= EventSet::IN;
                }
                match conn.registered {
                    None => {
                        if ops.add(Events::with_data_raw(conn.fd, CONN, ev)).is_ok() {
                            conn.registered = Some(ev);
                        }
                    }
                    Some(old) if old != ev => {
                        if ops.modify(Events::with_data_raw(conn.fd, CONN, ev)).is_ok() {
                            conn.registered = Some(ev);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        // Stdin, for stdio.
        let want = if want_input {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        match self.stdin {
            StdinState::Unregistered => {
                match ops.add(Events::with_data_raw(0, STDIN, want)) {
                    Ok(()) => self.stdin = StdinState::Registered(want),
                    Err(e) => {
                        // /dev/null or a regular file: no input.
                        tracing::debug!("{}: stdin cannot be watched: {e}", self.name);
                        self.stdin = StdinState::None;
                    }
                }
            }
            StdinState::Registered(old)
                if old != want && ops.modify(Events::with_data_raw(0, STDIN, want)).is_ok() =>
            {
                self.stdin = StdinState::Registered(want);
            }
            _ => {}
        }
    }

    // ---- input ----

    fn read_input(&mut self, fd: RawFd, from_stdin: bool, hangup: bool, ops: &mut EventOps) {
        let mut buf = [0u8; 4096];
        loop {
            // After a hang-up, read all that is left whatever the limit:
            // input is never dropped.
            let room = if hangup {
                buf.len()
            } else {
                INPUT_MAX.saturating_sub(self.input.len()).min(buf.len())
            };
            if room == 0 {
                break;
            }
            match read_fd(fd, &mut buf[..room]) {
                Ok(0) => {
                    if from_stdin {
                        self.end_stdin(ops);
                    } else {
                        self.deliver_input(ops);
                        self.lost("closed by the peer".into(), ops);
                    }
                    return;
                }
                Ok(n) => {
                    self.decode(&buf[..n], from_stdin);
                    if !hangup {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if from_stdin {
                        // Unregistered too, or the loop would read it again
                        // on every wakeup.
                        self.end_stdin(ops);
                        return;
                    }
                    self.deliver_input(ops);
                    // A pty master reads EIO once the reader closed it.
                    let why = if matches!(self.link, Link::Pty { .. })
                        && e.raw_os_error() == Some(libc::EIO)
                    {
                        "hung up".to_owned()
                    } else {
                        e.to_string()
                    };
                    self.lost(why, ops);
                    return;
                }
            }
        }
        if hangup && !from_stdin {
            self.deliver_input(ops);
            self.lost("hung up".into(), ops);
            return;
        }
        self.deliver_input(ops);
        self.update_interest(ops);
        self.pump_out(ops);
    }

    fn decode(&mut self, data: &[u8], from_stdin: bool) {
        let input = &mut self.input;
        if from_stdin {
            if let Link::Stdio {
                keys: Some(keys), ..
            } = &mut self.link
            {
                keys.filter(data, &mut |b| input.push_back(b));
                return;
            }
            input.extend(data.iter().map(|&b| RxByte::Data(b)));
            return;
        }
        if let Some(d) = self.parmrk.as_mut() {
            d.feed(data, &mut |b| input.push_back(b));
            return;
        }
        let Some(client) = self.rfc2217.as_mut() else {
            input.extend(data.iter().map(|&b| RxByte::Data(b)));
            return;
        };
        let mut events = Vec::new();
        client.receive(data, &mut events, &mut self.outbuf);
        for ev in events {
            self.rfc2217_event(ev);
        }
    }

    /// One RFC 2217 event; output it makes possible (a resume) is written
    /// by the caller's `pump_out`.
    fn rfc2217_event(&mut self, ev: rfc2217::Event) {
        use rfc2217::Event;
        match ev {
            Event::Data(d) => self.input.extend(d.into_iter().map(RxByte::Data)),
            Event::Break => self.input.push_back(RxByte::Break),
            Event::ModemStatus(s) => lock(&self.uart).set_modem_status(s),
            Event::Suspend => tracing::debug!("{}: server asked to hold data", self.name),
            Event::Resume => tracing::debug!("{}: server takes data again", self.name),
            Event::ComPortActive => {
                tracing::debug!("{}: server accepted COM-PORT-OPTION", self.name);
                self.negotiation_deadline = None;
            }
            Event::ComPortRefused => {
                self.negotiation_deadline = None;
                tracing::warn!(
                    "{}: the server refused RFC 2217 COM-PORT-OPTION: data passes, but the guest's line settings and modem lines do not reach the device",
                    self.name
                );
            }
            Event::Confirmed(c) => tracing::debug!("{}: server set {c:?}", self.name),
            Event::Problem(p) => {
                self.reports.problems += 1;
                if self.reports.problems <= PROBLEMS_LOGGED {
                    tracing::warn!("{}: ignored from the RFC 2217 server: {p}", self.name);
                } else {
                    tracing::debug!("{}: ignored from the RFC 2217 server: {p}", self.name);
                }
            }
        }
    }

    /// Moves held input into the receive FIFO as far as it has room, in
    /// order (a break waits its turn like a byte).
    fn deliver_input(&mut self, ops: &mut EventOps) {
        let had_max = self.input.len() >= INPUT_MAX;
        let mut uart = lock(&self.uart);
        while let Some(&first) = self.input.front() {
            match first {
                RxByte::Break => {
                    if uart.rx_space() == 0 {
                        break;
                    }
                    uart.receive_break();
                    self.input.pop_front();
                }
                RxByte::Data(_) | RxByte::Error(_) => {
                    let mut run = [0u8; 16];
                    let mut n = 0;
                    for b in self.input.iter().take(run.len()) {
                        match b {
                            RxByte::Data(v) | RxByte::Error(v) => {
                                run[n] = *v;
                                n += 1;
                            }
                            RxByte::Break => break,
                        }
                    }
                    let taken = uart.receive(&run[..n]);
                    self.input.drain(..taken);
                    if taken < n {
                        break;
                    }
                }
            }
        }
        let due = uart.tick();
        // Under the UART lock, so that a read that frees room after this
        // cannot miss the flag.
        self.shared.set_input_waiting(!self.input.is_empty());
        drop(uart);
        if let Some(due) = due {
            arm(
                &mut self.rx_timer,
                due.saturating_duration_since(Instant::now()),
            );
        }
        if had_max && self.input.len() < INPUT_MAX {
            self.update_interest(ops);
        }
    }

    // ---- output ----

    fn data_allowed(&self) -> bool {
        match &self.rfc2217 {
            Some(c) => {
                !c.suspended()
                    && (c.negotiated()
                        || self
                            .negotiation_deadline
                            .is_none_or(|d| Instant::now() >= d))
            }
            None => true,
        }
    }

    /// Writes encoded output, then takes more from the queue, until the
    /// queue is empty or the connection would block.
    fn pump_out(&mut self, ops: &mut EventOps) {
        loop {
            let Some(conn) = self.conn.as_ref() else {
                return;
            };
            if conn.connecting {
                return;
            }
            let fd = conn.fd;
            while self.out_pos < self.outbuf.len() {
                match write_fd(fd, &self.outbuf[self.out_pos..]) {
                    Ok(n) => {
                        self.out_pos += n;
                        self.shared.progress();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.update_interest(ops);
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.lost(e.to_string(), ops);
                        return;
                    }
                }
            }
            self.outbuf.clear();
            self.out_pos = 0;
            if let Some((c, deadline)) = self.draining {
                match self.drained(fd) {
                    true => {
                        self.draining = None;
                        self.apply_terminal(fd, c);
                    }
                    false if Instant::now() >= deadline => {
                        self.draining = None;
                        self.apply_terminal(fd, c);
                    }
                    false => {
                        arm(&mut self.poll_timer, Duration::from_millis(5));
                        break;
                    }
                }
            }
            if !self.data_allowed() {
                break;
            }
            let mut chunk = std::mem::take(&mut self.chunk);
            chunk.clear();
            let (next, taken) = self.shared.take(CHUNK, &mut chunk);
            if taken.wake_uart {
                lock(&self.uart).tx_space_available();
            }
            match next {
                Next::Empty => {
                    self.chunk = chunk;
                    break;
                }
                Next::Data => match self.rfc2217.as_ref() {
                    Some(client) => {
                        client.send_data(&chunk, &mut self.outbuf);
                        self.chunk = chunk;
                    }
                    None => {
                        self.chunk = std::mem::replace(&mut self.outbuf, chunk);
                    }
                },
                Next::Control(c) => {
                    self.chunk = chunk;
                    self.control(c, fd);
                }
            }
        }
        self.update_interest(ops);
    }

    /// The guest changed a line setting: carried where the link can.
    fn control(&mut self, c: Control, fd: RawFd) {
        if let Some(client) = self.rfc2217.as_mut() {
            match c {
                Control::Line(p) => client.set_line_params(p, &mut self.outbuf),
                Control::Modem(m) => client.set_modem_control(m, &mut self.outbuf),
                Control::Break(b) => client.set_break(b, &mut self.outbuf),
            }
            return;
        }
        match self.link {
            Link::Tty { .. } | Link::Pty { .. } => {
                // Earlier bytes leave at the earlier settings.
                if self.drained(fd) {
                    self.apply_terminal(fd, c);
                } else {
                    self.draining = Some((c, Instant::now() + DRAIN_MAX));
                }
            }
            _ => {}
        }
    }

    /// Whether a terminal has sent everything written to it.
    fn drained(&self, fd: RawFd) -> bool {
        match self.link {
            Link::Tty { .. } => !matches!(termios::output_pending(fd), Ok(n) if n > 0),
            _ => true,
        }
    }

    fn apply_terminal(&mut self, fd: RawFd, c: Control) {
        let r = match c {
            Control::Line(p) => termios::apply_line_params(fd, &p),
            // A pty has no modem lines and no break.
            _ if matches!(self.link, Link::Pty { .. }) => Ok(()),
            Control::Modem(m) => termios::set_modem_control(fd, m),
            Control::Break(b) => termios::set_break(fd, b),
        };
        if let Err(e) = r {
            tracing::debug!("{}: cannot apply {c:?}: {e}", self.name);
        }
    }

    fn poll_modem_lines(&mut self) {
        let Some(fd) = self.conn.as_ref().map(|c| c.fd) else {
            return;
        };
        match termios::modem_status(fd) {
            Ok(s) => lock(&self.uart).set_modem_status(s),
            Err(e) => {
                // Some terminals (a pty behind tty:) have no modem lines.
                tracing::debug!("{}: no modem status lines: {e}", self.name);
                self.modem_poll = false;
            }
        }
    }

    /// After the event loop stops: writes what output is left, waiting at
    /// most `limit`, and reports what was dropped.
    pub fn finish(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        if let Some(fd) = self.conn.as_ref().filter(|c| !c.connecting).map(|c| c.fd) {
            while self.data_allowed() || self.out_pos < self.outbuf.len() {
                while self.out_pos < self.outbuf.len() {
                    match write_fd(fd, &self.outbuf[self.out_pos..]) {
                        Ok(n) => self.out_pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            let mut p = libc::pollfd {
                                fd,
                                events: libc::POLLOUT,
                                revents: 0,
                            };
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            // SAFETY: polling one valid pollfd.
                            unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.outbuf.clear();
                            self.out_pos = 0;
                            break;
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                if self.out_pos < self.outbuf.len() {
                    break;
                }
                self.outbuf.clear();
                self.out_pos = 0;
                let mut chunk = Vec::new();
                match self.shared.take(CHUNK, &mut chunk).0 {
                    Next::Empty => break,
                    Next::Data => match self.rfc2217.as_ref() {
                        Some(c) => c.send_data(&chunk, &mut self.outbuf),
                        None => self.outbuf = chunk,
                    },
                    Next::Control(c) => self.control(c, fd),
                }
            }
        }
        let (disconnected, stalled) = self.shared.take_dropped();
        if disconnected + stalled > 0 {
            tracing::warn!(
                "{}: {} bytes of guest output were dropped while nobody was connected, {} while the peer was not reading",
                self.name, disconnected, stalled
            );
        }
    }
}

impl MutEventSubscriber for PortLoop {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data(&self.shared.wake, WAKE, EventSet::IN));
        for (t, token) in [
            (&self.flush_timer, T_FLUSH),
            (&self.rx_timer, T_RX),
            (&self.retry_timer, T_RETRY),
            (&self.poll_timer, T_POLL),
        ] {
            let _ = ops.add(Events::with_data(t, token, EventSet::IN));
        }
        self.start(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            WAKE => {
                let _ = self.shared.wake.read();
                self.deliver_input(ops);
                if self.connected() && self.out_pos == self.outbuf.len() {
                    if self.shared.queued() >= FLUSH_NOW || self.shared.control_queued() {
                        self.pump_out(ops);
                    } else if !self.flush_armed {
                        self.flush_armed = true;
                        arm(&mut self.flush_timer, FLUSH_DELAY);
                    }
                }
            }
            T_FLUSH => {
                let _ = self.flush_timer.wait();
                self.flush_armed = false;
                self.pump_out(ops);
            }
            T_RX => {
                let _ = self.rx_timer.wait();
                self.deliver_input(ops);
            }
            T_RETRY => {
                let _ = self.retry_timer.wait();
                match self.link {
                    Link::Client { .. } if self.conn.is_none() => self.connect(ops),
                    Link::Tty { .. } if self.conn.is_none() => self.reopen_tty(ops),
                    _ => {}
                }
            }
            T_POLL => {
                let _ = self.poll_timer.wait();
                match self.link {
                    Link::Pty { .. } if self.conn.is_none() => self.check_pty(ops),
                    Link::Tty { .. } if self.conn.is_some() => {
                        if self.modem_poll {
                            self.poll_modem_lines();
                        }
                        if self.draining.is_some() {
                            self.pump_out(ops);
                        }
                        if self.modem_poll {
                            arm(&mut self.poll_timer, MODEM_POLL);
                        }
                    }
                    Link::Client { rfc2217: true, .. } => self.pump_out(ops),
                    _ => {}
                }
            }
            LISTEN => self.accept(ops),
            STDIN if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) => {
                self.read_input(0, true, false, ops);
            }
            CONN => {
                let Some(conn) = self.conn.as_ref() else {
                    return;
                };
                let fd = conn.fd;
                if conn.connecting {
                    match sock::finish_connect(fd) {
                        Ok(()) => {
                            if let Some(mut c) = self.conn.take() {
                                c.connecting = false;
                                sock::set_nodelay(fd);
                                self.established(c, ops);
                            }
                        }
                        Err(e) => self.connect_failed(e, ops),
                    }
                    return;
                }
                let hangup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
                if set.contains(EventSet::OUT) && !hangup {
                    self.pump_out(ops);
                }
                let readable = self.conn.as_ref().is_some_and(|c| c.readable);
                if readable && (set.contains(EventSet::IN) || hangup) {
                    self.read_input(fd, false, hangup, ops);
                } else if hangup {
                    self.lost("hung up".into(), ops);
                }
            }
            _ => {}
        }
    }
}
