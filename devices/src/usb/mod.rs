//! USB: one device interface that every host controller carries, the
//! emulated devices behind it (mass storage on the block stack, a HID boot
//! keyboard) and the host controllers in front of it (UHCI, EHCI with UHCI
//! companions, xHCI).
//!
//! A device sees whole transfers on an endpoint ([`Transfer`]) and answers
//! each through a [`Completer`], now or later from any thread: the
//! controller never assumes a synchronous answer. A controller that
//! speaks in packets (UHCI, EHCI) goes through [`UsbPort`], which keeps
//! the device's address, splits control transfers into their SETUP, data
//! and status stages and keeps one transfer in flight per endpoint and
//! direction, answering NAK while it runs.

pub mod device;
pub mod ehci;
pub mod ehci_spec;
#[cfg(test)]
mod ehci_tests;
pub mod hid_spec;
pub mod keyboard;
pub mod msd_spec;
pub mod root_ports;
pub mod storage;
pub mod uhci;
pub mod uhci_spec;
#[cfg(test)]
mod uhci_tests;
pub mod usb_spec;
pub mod xhci;
pub mod xhci_spec;
#[cfg(test)]
mod xhci_tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use usb_spec as ch9;

/// Reads the registers behind an access of `data.len()` bytes at offset
/// `off`: `reg_at(o)` is the offset of the register holding byte `o`,
/// `value(reg)` its value (registers are little-endian).
pub(crate) fn read_registers(
    off: u64,
    data: &mut [u8],
    reg_at: impl Fn(u64) -> u64,
    mut value: impl FnMut(u64) -> u32,
) {
    for (i, b) in data.iter_mut().enumerate() {
        let o = off + i as u64;
        let reg = reg_at(o);
        *b = (value(reg) >> (8 * (o - reg))) as u8;
    }
}

/// Splits a write of `data` at offset `off` into one write per register
/// it touches: `reg_at(o)` gives the offset and width of the register
/// holding byte `o`; `write(reg, value, mask)` gets the bytes that fall in
/// it, with a mask of the bytes written.
pub(crate) fn write_registers(
    off: u64,
    data: &[u8],
    reg_at: impl Fn(u64) -> (u64, u64),
    mut write: impl FnMut(u64, u32, u32),
) {
    let mut i = 0usize;
    while i < data.len() {
        let (reg, width) = reg_at(off + i as u64);
        let mut value = 0u32;
        let mut mask = 0u32;
        while i < data.len() && off + (i as u64) < reg + width {
            let shift = 8 * (off + i as u64 - reg);
            value |= u32::from(data[i]) << shift;
            mask |= 0xff << shift;
            i += 1;
        }
        write(reg, value, mask);
    }
}

/// Bus speeds (USB 2.0 4.2.1, USB 3.2 for SuperSpeed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Speed {
    Low,
    Full,
    High,
    Super,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host to device.
    Out,
    /// Device to host.
    In,
}

/// The eight bytes of a control transfer's SETUP stage (USB 2.0 9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl Setup {
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != ch9::SETUP_LEN {
            return None;
        }
        Some(Self {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        })
    }

    pub fn to_bytes(&self) -> [u8; 8] {
        let v = self.value.to_le_bytes();
        let i = self.index.to_le_bytes();
        let l = self.length.to_le_bytes();
        [
            self.request_type,
            self.request,
            v[0],
            v[1],
            i[0],
            i[1],
            l[0],
            l[1],
        ]
    }

    pub fn direction(&self) -> Direction {
        if self.request_type & ch9::REQ_DIR_IN != 0 {
            Direction::In
        } else {
            Direction::Out
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// A whole control transfer on endpoint 0: the data (OUT) or the
    /// length wanted (IN) are the data stage; the answer covers the status
    /// stage.
    Control(Setup),
    Bulk,
    Interrupt,
}

/// A transfer the controller hands a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub kind: TransferKind,
    /// Endpoint number, 0-15.
    pub endpoint: u8,
    pub direction: Direction,
    /// OUT: the bytes to send.
    pub data: Vec<u8>,
    /// IN: the most bytes the host takes.
    pub length: usize,
}

/// How a transfer ended (USB 2.0 8.4.5 handshakes, as a controller
/// reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStatus {
    /// ACK: done (an IN transfer may be short).
    Success,
    /// The endpoint (or the control request) is halted.
    Stall,
    /// Nothing to send or no room now: the controller retries later.
    Nak,
    /// The device sent more than the host asked for.
    Babble,
    /// No answer: the device is gone or failed (a CRC/timeout error).
    Timeout,
}

/// The answer to one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: u64,
    pub status: TransferStatus,
    /// IN: the bytes received. OUT: empty.
    pub data: Vec<u8>,
    /// OUT: the bytes the device took.
    pub actual_out: usize,
}

type Waker = Arc<dyn Fn() + Send + Sync>;

/// Where a device's answers wait for the controller. A backend on another
/// thread completes into it and wakes the controller.
#[derive(Default)]
pub struct CompletionQueue {
    done: Mutex<VecDeque<Completion>>,
    waker: Mutex<Option<Waker>>,
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue").finish_non_exhaustive()
    }
}

impl CompletionQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Called after each completion (e.g. to wake a sleeping frame timer).
    pub fn set_waker(&self, w: Option<Waker>) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = w;
    }

    fn push(&self, c: Completion) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(c);
        let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = w {
            w();
        }
    }

    /// True while no answer waits.
    pub fn is_empty(&self) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    pub fn drain(&self) -> Vec<Completion> {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }
}

/// Completes one transfer exactly once. Dropped unanswered (a device that
/// goes away with the transfer in flight), it completes it as a timeout,
/// so the guest sees an error rather than a transfer that never ends.
pub struct Completer {
    id: u64,
    queue: Option<Arc<CompletionQueue>>,
}

impl std::fmt::Debug for Completer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Completer({})", self.id)
    }
}

impl Completer {
    pub fn new(id: u64, queue: Arc<CompletionQueue>) -> Self {
        Self {
            id,
            queue: Some(queue),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    fn finish(&mut self, status: TransferStatus, data: Vec<u8>, actual_out: usize) {
        if let Some(q) = self.queue.take() {
            q.push(Completion {
                id: self.id,
                status,
                data,
                actual_out,
            });
        }
    }

    /// An IN transfer's data.
    pub fn data_in(mut self, data: Vec<u8>) {
        self.finish(TransferStatus::Success, data, 0);
    }

    /// An OUT transfer (or a control transfer without data IN) that the
    /// device took `n` bytes of.
    pub fn done_out(mut self, n: usize) {
        self.finish(TransferStatus::Success, Vec::new(), n);
    }

    /// A handshake other than success.
    pub fn fail(mut self, status: TransferStatus) {
        self.finish(status, Vec::new(), 0);
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        self.finish(TransferStatus::Timeout, Vec::new(), 0);
    }
}

/// A USB device as every controller sees it.
pub trait UsbDevice: Send {
    /// A short name for logs and listings ("usb-storage", "usb-kbd").
    fn name(&self) -> &str;
    /// The speed the device signals on a port that offers `max`.
    fn speed(&self, max: Speed) -> Speed;
    /// Tells the device which speed it was enumerated at (its endpoint
    /// sizes depend on it). Called on every bus reset.
    fn reset(&mut self, speed: Speed);
    /// Starts a transfer. The device answers through `done`, now or later.
    /// Control transfers on endpoint 0 arrive whole, SET_ADDRESS excepted
    /// (the port handles it).
    fn submit(&mut self, transfer: Transfer, done: Completer);
}

/// What a packet-level controller gets back for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketResult {
    /// The handshake, with the IN data (empty for OUT/SETUP).
    Done(TransferStatus, Vec<u8>),
    /// The transfer is running: retry the same packet later (the guest
    /// sees a NAK or an active descriptor).
    Pending,
}

/// A control transfer between its stages.
#[derive(Debug)]
struct ControlState {
    setup: Setup,
    /// OUT data collected so far.
    out: Vec<u8>,
    /// The device's answer once it came: status and IN data.
    answer: Option<(TransferStatus, Vec<u8>)>,
    /// The transfer id while the device works on it.
    running: Option<u64>,
    /// IN bytes already handed to the host.
    sent: usize,
    /// SET_ADDRESS: the address to take after the status stage.
    new_address: Option<u8>,
}

/// One endpoint's transfer in flight, keyed by the controller's descriptor.
#[derive(Debug)]
struct InFlight {
    key: u64,
    id: u64,
    answer: Option<Completion>,
}

/// A device on a root port, as packet-level controllers drive it.
pub struct UsbPort {
    device: Box<dyn UsbDevice>,
    speed: Speed,
    address: u8,
    queue: Arc<CompletionQueue>,
    next_id: u64,
    control: Option<ControlState>,
    inflight: HashMap<(u8, Direction), InFlight>,
}

impl std::fmt::Debug for UsbPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbPort")
            .field("device", &self.device.name())
            .field("speed", &self.speed)
            .field("address", &self.address)
            .finish()
    }
}

impl UsbPort {
    /// Plugs `device` into a port that runs at most at `max` speed.
    pub fn new(device: Box<dyn UsbDevice>, max: Speed) -> Self {
        let speed = device.speed(max);
        Self {
            device,
            speed,
            address: 0,
            queue: CompletionQueue::new(),
            next_id: 1,
            control: None,
            inflight: HashMap::new(),
        }
    }

    pub fn speed(&self) -> Speed {
        self.speed
    }

    /// Offers the device a port of another speed (it moved between an
    /// EHCI and a companion controller); it runs at it from its next bus
    /// reset on.
    pub fn set_max_speed(&mut self, max: Speed) {
        self.speed = self.device.speed(max);
    }

    pub fn address(&self) -> u8 {
        self.address
    }

    pub fn name(&self) -> &str {
        self.device.name()
    }

    pub fn queue(&self) -> &Arc<CompletionQueue> {
        &self.queue
    }

    /// Bus reset (USB 2.0 7.1.7.5): address 0, unconfigured, every
    /// transfer in flight forgotten.
    pub fn reset(&mut self) {
        self.address = 0;
        self.control = None;
        self.inflight.clear();
        self.queue.drain();
        self.device.reset(self.speed);
    }

    fn submit(&mut self, t: Transfer) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.device
            .submit(t, Completer::new(id, self.queue.clone()));
        id
    }

    /// Hands completions to the transfers waiting for them; answers for
    /// transfers given up on are dropped.
    fn collect(&mut self) {
        for c in self.queue.drain() {
            if let Some(ctl) = self.control.as_mut() {
                if ctl.running == Some(c.id) {
                    ctl.running = None;
                    ctl.answer = Some((c.status, c.data));
                    continue;
                }
            }
            if let Some(f) = self.inflight.values_mut().find(|f| f.id == c.id) {
                f.answer = Some(c);
            }
        }
    }

    /// One packet for this device. `key` names the controller's descriptor
    /// (e.g. the TD address): a retried packet with the same key picks up
    /// its transfer's answer. `data` is the OUT/SETUP payload, `max_len`
    /// the IN packet size.
    pub fn packet(
        &mut self,
        pid: u8,
        endpoint: u8,
        data: &[u8],
        max_len: usize,
        key: u64,
        kind: TransferKind,
    ) -> PacketResult {
        self.collect();
        if endpoint == 0 {
            return self.control_packet(pid, data, max_len);
        }
        let direction = match pid {
            ch9::PID_IN => Direction::In,
            ch9::PID_OUT => Direction::Out,
            // SETUP to a non-control endpoint: no handshake.
            _ => return PacketResult::Done(TransferStatus::Timeout, Vec::new()),
        };
        let slot = (endpoint, direction);
        if let Some(f) = self.inflight.get(&slot) {
            if f.key == key {
                if f.answer.is_none() {
                    return PacketResult::Pending;
                }
                if let Some(c) = self.inflight.remove(&slot).and_then(|f| f.answer) {
                    return self.finish_packet(c, max_len);
                }
            }
            // The guest moved on from that descriptor: its answer, when it
            // comes, is dropped.
            self.inflight.remove(&slot);
        }
        let id = self.submit(Transfer {
            kind,
            endpoint,
            direction,
            data: data.to_vec(),
            length: if direction == Direction::In {
                max_len
            } else {
                0
            },
        });
        self.inflight.insert(
            slot,
            InFlight {
                key,
                id,
                answer: None,
            },
        );
        self.collect();
        match self.inflight.get(&slot) {
            Some(InFlight {
                answer: Some(_), ..
            }) => match self.inflight.remove(&slot).and_then(|f| f.answer) {
                Some(c) => self.finish_packet(c, max_len),
                None => PacketResult::Pending,
            },
            _ => PacketResult::Pending,
        }
    }

    fn finish_packet(&mut self, c: Completion, max_len: usize) -> PacketResult {
        if c.status == TransferStatus::Success && c.data.len() > max_len {
            return PacketResult::Done(TransferStatus::Babble, Vec::new());
        }
        PacketResult::Done(c.status, c.data)
    }

    fn control_packet(&mut self, pid: u8, data: &[u8], max_len: usize) -> PacketResult {
        if pid == ch9::PID_SETUP {
            let Some(setup) = Setup::parse(data) else {
                return PacketResult::Done(TransferStatus::Timeout, Vec::new());
            };
            // A new SETUP ends whatever control transfer was under way.
            let mut st = ControlState {
                setup,
                out: Vec::new(),
                answer: None,
                running: None,
                sent: 0,
                new_address: None,
            };
            let standard_device = setup.request_type
                & (ch9::REQ_TYPE_MASK | ch9::REQ_RECIPIENT_MASK)
                == ch9::REQ_TYPE_STANDARD | ch9::REQ_RECIPIENT_DEVICE;
            if standard_device
                && setup.request == ch9::SET_ADDRESS
                && setup.direction() == Direction::Out
            {
                if setup.value <= 127 && setup.length == 0 {
                    st.new_address = Some(setup.value as u8);
                    st.answer = Some((TransferStatus::Success, Vec::new()));
                } else {
                    st.answer = Some((TransferStatus::Stall, Vec::new()));
                }
            } else if setup.direction() == Direction::In || setup.length == 0 {
                st.running = Some(self.submit(Transfer {
                    kind: TransferKind::Control(setup),
                    endpoint: 0,
                    direction: setup.direction(),
                    data: Vec::new(),
                    length: usize::from(setup.length),
                }));
            }
            self.control = Some(st);
            self.collect();
            return PacketResult::Done(TransferStatus::Success, Vec::new());
        }
        let Some(st) = self.control.as_mut() else {
            // Data or status without a SETUP: the default pipe stalls.
            return PacketResult::Done(TransferStatus::Stall, Vec::new());
        };
        let dir = st.setup.direction();
        let is_in = pid == ch9::PID_IN;
        let status_stage = match dir {
            Direction::In => !is_in,
            Direction::Out => is_in,
        };
        if !status_stage && dir == Direction::Out {
            // OUT data stage: collect, bounded by wLength.
            if st.out.len() + data.len() > usize::from(st.setup.length) {
                return PacketResult::Done(TransferStatus::Stall, Vec::new());
            }
            st.out.extend_from_slice(data);
            return PacketResult::Done(TransferStatus::Success, Vec::new());
        }
        if status_stage && dir == Direction::Out && st.answer.is_none() && st.running.is_none() {
            let setup = st.setup;
            let out = std::mem::take(&mut st.out);
            let id = self.submit(Transfer {
                kind: TransferKind::Control(setup),
                endpoint: 0,
                direction: Direction::Out,
                data: out,
                length: 0,
            });
            if let Some(st) = self.control.as_mut() {
                st.running = Some(id);
            }
            self.collect();
        }
        let Some(st) = self.control.as_mut() else {
            return PacketResult::Done(TransferStatus::Stall, Vec::new());
        };
        let Some((status, answer)) = st.answer.as_ref() else {
            return PacketResult::Pending;
        };
        if *status != TransferStatus::Success {
            return PacketResult::Done(*status, Vec::new());
        }
        if status_stage {
            if !data.is_empty() && !is_in {
                // A status OUT carries no data.
                return PacketResult::Done(TransferStatus::Stall, Vec::new());
            }
            if let Some(a) = st.new_address.take() {
                self.address = a;
            }
            self.control = None;
            return PacketResult::Done(TransferStatus::Success, Vec::new());
        }
        // IN data stage.
        let start = st.sent.min(answer.len());
        let end = (start + max_len).min(answer.len());
        let chunk = answer[start..end].to_vec();
        st.sent = end;
        PacketResult::Done(TransferStatus::Success, chunk)
    }
}
