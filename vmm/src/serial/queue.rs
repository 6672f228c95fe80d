//! The hand-off between a UART (on a vCPU thread, its lock held) and the
//! event loop that does the host I/O: a bounded queue of guest output with
//! the guest's line-setting changes in order among the bytes, and an
//! eventfd to wake the loop. Nothing here blocks or does host I/O.
//!
//! Policy:
//! - While a peer is connected the queue holds at most `CONNECTED_LIMIT`
//!   bytes; when it is full the UART keeps THRE clear (back-pressure), so
//!   a slow peer paces the guest as a real line would. If the peer takes
//!   nothing for `STALL_LIMIT`, output is dropped (and counted) instead, so
//!   a peer that stopped reading cannot hang the guest.
//! - While nobody is connected the queue keeps the newest `buffer` bytes
//!   (the `buffer=` option; 0 keeps nothing) and the guest never waits;
//!   older bytes are dropped and counted. A peer that connects gets what
//!   was kept, then live output, in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rehost_devices::serial::uart16550::FIFO_SIZE;
use rehost_devices::serial::{LineParams, ModemControl, SerialBackend};
use vmm_sys_util::eventfd::EventFd;

/// Output in flight to a connected peer before the guest has to wait.
pub const CONNECTED_LIMIT: usize = 16 * 1024;
/// How long a connected peer may take nothing before output is dropped.
pub const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Line-setting changes kept while they wait for the loop; older ones are
/// dropped first (the current settings are applied again on every
/// connection anyway).
const CONTROLS_MAX: usize = 256;

/// A change the guest made to its side of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Line(LineParams),
    Modem(ModemControl),
    Break(bool),
}

/// What the loop takes from the queue next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing queued.
    Empty,
    /// Bytes were appended to the caller's buffer.
    Data,
    /// A line change, due after all bytes written before it.
    Control(Control),
}

#[derive(Debug)]
struct Queue {
    data: VecDeque<u8>,
    /// Stream position of `data[0]`.
    head: u64,
    /// Changes with the stream position they follow.
    controls: VecDeque<(u64, Control)>,
    connected: bool,
    buffer_limit: usize,
    /// The loop has been woken (or is busy) and will look at the queue:
    /// no need to write the eventfd again.
    loop_notified: bool,
    /// The UART found the queue full and waits for `tx_space_available`.
    tx_waiting: bool,
    /// The loop holds input the UART had no room for.
    input_waiting: bool,
    /// When the peer last took output, or output started waiting.
    last_progress: Instant,
    dropped_disconnected: u64,
    dropped_stalled: u64,
}

/// Shared by a port's `QueueBackend` (vCPU side) and its loop.
pub struct PortShared {
    queue: Mutex<Queue>,
    /// Written by the vCPU side when the loop has something to do.
    pub wake: EventFd,
    /// Told when a peer connects (`true`) or leaves (`false`): the control
    /// socket's port event.
    observer: Mutex<Option<ConnectionObserver>>,
}

/// Called with the new connection state of a port.
pub type ConnectionObserver = Box<dyn Fn(bool) + Send>;

impl std::fmt::Debug for PortShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortShared")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// What the loop learns from `take`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// The UART waits for room and there is room now: call
    /// `Uart16550::tx_space_available` (without holding the queue).
    pub wake_uart: bool,
}

impl PortShared {
    pub fn new(buffer_limit: usize) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            queue: Mutex::new(Queue {
                data: VecDeque::new(),
                head: 0,
                controls: VecDeque::new(),
                connected: false,
                buffer_limit,
                loop_notified: true,
                tx_waiting: false,
                input_waiting: false,
                last_progress: Instant::now(),
                dropped_disconnected: 0,
                dropped_stalled: 0,
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            observer: Mutex::new(None),
        }))
    }

    /// Sets who is told of connection changes.
    pub fn set_observer(&self, observer: ConnectionObserver) {
        *self.observer.lock().unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    /// True while a peer is connected.
    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, q: &mut Queue) {
        if !q.loop_notified {
            q.loop_notified = true;
            // A full counter still wakes the loop, so the error is moot.
            let _ = self.wake.write(1);
        }
    }

    /// A peer connected or left. Returns true if the UART must be told
    /// there is room (it waited on a queue that now never pushes back).
    pub fn set_connected(&self, connected: bool) -> bool {
        let mut q = self.lock();
        let changed = q.connected != connected;
        q.connected = connected;
        q.last_progress = Instant::now();
        // Connected: the loop drains now. Disconnected: nothing to do
        // until the next connection.
        q.loop_notified = true;
        if !connected {
            q.trim_to_buffer();
        }
        let wake = !connected && q.tx_waiting;
        if wake {
            q.tx_waiting = false;
        }
        drop(q);
        if changed {
            if let Some(o) = self
                .observer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                o(connected);
            }
        }
        wake
    }

    /// Takes output for a connected peer: appends up to `max` bytes to
    /// `out` (stopping at the next line change), or returns that change.
    pub fn take(&self, max: usize, out: &mut Vec<u8>) -> (Next, Taken) {
        let mut q = self.lock();
        let mut taken = Taken::default();
        let next = if let Some(&(pos, c)) = q.controls.front().filter(|(p, _)| *p <= q.head) {
            let _ = pos;
            q.controls.pop_front();
            Next::Control(c)
        } else {
            let until_control = q
                .controls
                .front()
                .map(|&(pos, _)| usize::try_from(pos - q.head).unwrap_or(usize::MAX))
                .unwrap_or(usize::MAX);
            let n = q.data.len().min(max).min(until_control);
            if n == 0 {
                Next::Empty
            } else {
                out.extend(q.data.drain(..n));
                q.head += n as u64;
                q.last_progress = Instant::now();
                Next::Data
            }
        };
        if q.tx_waiting && q.has_room() {
            q.tx_waiting = false;
            taken.wake_uart = true;
        }
        if next == Next::Empty {
            // Drained: the next output must wake the loop again.
            q.loop_notified = false;
        }
        (next, taken)
    }

    /// The peer took some output (a write succeeded): not stalled.
    pub fn progress(&self) {
        self.lock().last_progress = Instant::now();
    }

    /// Bytes queued (for the loop's batching decision).
    pub fn queued(&self) -> usize {
        self.lock().data.len()
    }

    /// Whether a line change waits in the queue.
    pub fn control_queued(&self) -> bool {
        !self.lock().controls.is_empty()
    }

    /// The loop could not hand all input to the UART: wake it when the
    /// receive FIFO has room.
    pub fn set_input_waiting(&self, waiting: bool) {
        self.lock().input_waiting = waiting;
    }

    /// Output dropped since the last call: (while nobody was connected,
    /// while the peer was not reading).
    pub fn take_dropped(&self) -> (u64, u64) {
        let mut q = self.lock();
        (
            std::mem::take(&mut q.dropped_disconnected),
            std::mem::take(&mut q.dropped_stalled),
        )
    }

    /// Whether the connected peer has taken nothing for `STALL_LIMIT`
    /// while output waits.
    pub fn stalled(&self) -> bool {
        let q = self.lock();
        q.connected && !q.data.is_empty() && q.last_progress.elapsed() >= STALL_LIMIT
    }
}

impl Queue {
    fn has_room(&self) -> bool {
        self.data.len() + FIFO_SIZE <= CONNECTED_LIMIT
    }

    fn trim_to_buffer(&mut self) {
        if self.data.len() > self.buffer_limit {
            let n = self.data.len() - self.buffer_limit;
            self.data.drain(..n);
            self.head += n as u64;
            self.dropped_disconnected += n as u64;
        }
    }

    fn push_control(&mut self, c: Control) {
        if self.controls.len() >= CONTROLS_MAX {
            self.controls.pop_front();
        }
        let pos = self.head + self.data.len() as u64;
        self.controls.push_back((pos, c));
    }
}

/// The UART's backend for every port whose I/O runs on the event loop.
pub struct QueueBackend {
    shared: Arc<PortShared>,
}

impl QueueBackend {
    pub fn new(shared: Arc<PortShared>) -> Self {
        Self { shared }
    }

    /// Queues a line, modem-control or break change for the far end.
    fn control(&mut self, c: Control) {
        let mut q = self.shared.lock();
        q.push_control(c);
        if q.connected {
            self.shared.notify(&mut q);
        }
    }
}

impl SerialBackend for QueueBackend {
    fn write(&mut self, data: &[u8]) {
        let mut q = self.shared.lock();
        if q.connected {
            // The UART asked `tx_ready` first; the slack absorbs a FIFO's
            // worth, and only a stalled peer gets past it.
            if q.data.is_empty() {
                // The stall clock runs from when output starts waiting.
                q.last_progress = Instant::now();
            }
            let room = (CONNECTED_LIMIT + FIFO_SIZE).saturating_sub(q.data.len());
            let n = data.len().min(room);
            q.data.extend(&data[..n]);
            q.dropped_stalled += (data.len() - n) as u64;
            self.shared.notify(&mut q);
        } else {
            q.data.extend(data);
            q.trim_to_buffer();
        }
    }

    fn tx_ready(&mut self) -> bool {
        let mut q = self.shared.lock();
        if !q.connected || q.has_room() || q.last_progress.elapsed() >= STALL_LIMIT {
            return true;
        }
        q.tx_waiting = true;
        false
    }

    fn line_params_changed(&mut self, params: LineParams) {
        self.control(Control::Line(params));
    }

    fn modem_control_changed(&mut self, control: ModemControl) {
        self.control(Control::Modem(control));
    }

    fn break_changed(&mut self, on: bool) {
        self.control(Control::Break(on));
    }

    fn rx_space_available(&mut self) {
        let mut q = self.shared.lock();
        if q.input_waiting {
            q.input_waiting = false;
            let _ = self.shared.wake.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rehost_devices::serial::Parity;

    fn wakes(s: &PortShared) -> u64 {
        s.wake.read().unwrap_or(0)
    }

    fn drain(s: &PortShared) -> (Vec<u8>, Vec<Control>) {
        let mut out = Vec::new();
        let mut controls = Vec::new();
        loop {
            match s.take(usize::MAX, &mut out).0 {
                Next::Empty => return (out, controls),
                Next::Data => {}
                Next::Control(c) => {
                    // Position check: a control follows exactly the bytes
                    // written before it.
                    controls.push(c);
                    out.push(b'|');
                }
            }
        }
    }

    #[test]
    fn disconnected_keeps_the_newest_bytes_and_counts_the_rest() {
        let s = PortShared::new(8).unwrap();
        let mut b = QueueBackend::new(s.clone());
        for chunk in [&b"0123"[..], b"456789", b"abc"] {
            assert!(b.tx_ready(), "the guest never waits while disconnected");
            b.write(chunk);
        }
        assert_eq!(wakes(&s), 0, "no wake-ups while nobody listens");
        assert!(!s.set_connected(true));
        assert_eq!(s.take_dropped(), (5, 0));
        let (out, _) = drain(&s);
        assert_eq!(out, b"56789abc");
        // buffer=0: everything is dropped while disconnected.
        let s = PortShared::new(0).unwrap();
        let mut b = QueueBackend::new(s.clone());
        b.write(b"lost");
        s.set_connected(true);
        assert_eq!(drain(&s).0, b"");
        assert_eq!(s.take_dropped(), (4, 0));
    }

    #[test]
    fn connected_pushes_back_then_wakes_the_uart() {
        let s = PortShared::new(64).unwrap();
        let mut b = QueueBackend::new(s.clone());
        s.set_connected(true);
        // The loop drained once, so the first byte wakes it.
        assert_eq!(s.take(10, &mut Vec::new()).0, Next::Empty);
        b.write(b"x");
        assert_eq!(wakes(&s), 1);
        b.write(b"y");
        assert_eq!(wakes(&s), 0, "one wake-up until the loop drains");
        let big = vec![7u8; CONNECTED_LIMIT];
        b.write(&big);
        assert!(!b.tx_ready(), "full: the UART holds THRE");
        // The loop takes some: room again, and it is told to wake the UART.
        let mut out = Vec::new();
        let (next, taken) = s.take(4096, &mut out);
        assert_eq!(next, Next::Data);
        assert!(taken.wake_uart);
        assert!(b.tx_ready());
        assert_eq!(&out[..2], b"xy");
        assert_eq!(s.take_dropped(), (0, 0));
    }

    #[test]
    fn a_stalled_peer_does_not_hang_the_guest() {
        let s = PortShared::new(64).unwrap();
        let mut b = QueueBackend::new(s.clone());
        s.set_connected(true);
        b.write(&vec![1u8; CONNECTED_LIMIT + FIFO_SIZE]);
        assert!(!b.tx_ready());
        s.lock().last_progress -= STALL_LIMIT;
        assert!(s.stalled());
        assert!(b.tx_ready(), "after the stall limit the guest goes on");
        b.write(b"dropped");
        assert_eq!(s.take_dropped(), (0, 7));
        // Leaving with a full queue releases a waiting UART.
        let s = PortShared::new(4).unwrap();
        let mut b = QueueBackend::new(s.clone());
        s.set_connected(true);
        b.write(&vec![1u8; CONNECTED_LIMIT]);
        assert!(!b.tx_ready());
        assert!(s.set_connected(false));
        assert!(b.tx_ready());
        assert_eq!(s.take_dropped(), (CONNECTED_LIMIT as u64 - 4, 0));
    }

    #[test]
    fn line_changes_stay_in_order_with_the_bytes() {
        let s = PortShared::new(1024).unwrap();
        let mut b = QueueBackend::new(s.clone());
        let p = LineParams {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        };
        b.write(b"slow");
        b.line_params_changed(p);
        b.write(b"fast");
        b.break_changed(true);
        b.break_changed(false);
        s.set_connected(true);
        let (out, controls) = drain(&s);
        assert_eq!(out, b"slow|fast||");
        assert_eq!(
            controls,
            vec![
                Control::Line(p),
                Control::Break(true),
                Control::Break(false)
            ]
        );
        // While disconnected, trimming old bytes keeps changes due.
        s.set_connected(false);
        b.write(b"old");
        b.break_changed(true);
        b.write(&[b'n'; 1024]);
        s.set_connected(true);
        let (out, controls) = drain(&s);
        assert_eq!(out[0], b'|');
        assert_eq!(out.len(), 1025);
        assert_eq!(controls, vec![Control::Break(true)]);
    }

    #[test]
    fn input_waiting_wakes_the_loop_once() {
        let s = PortShared::new(0).unwrap();
        let mut b = QueueBackend::new(s.clone());
        b.rx_space_available();
        assert_eq!(wakes(&s), 0);
        s.set_input_waiting(true);
        b.rx_space_available();
        b.rx_space_available();
        assert_eq!(wakes(&s), 1);
    }
}
