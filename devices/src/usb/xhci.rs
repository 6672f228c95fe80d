//! An xHCI host controller (eXtensible Host Controller Interface 1.2) with
//! QEMU's `qemu-xhci` PCI identity (1b36:000d, class 0c0330): root ports
//! 1-4 speak USB 2 and 5-8 USB 3, declared by two Supported Protocol
//! capabilities. 64-bit BAR 0 holds the capability, operational, port,
//! runtime (interrupter 0) and doorbell registers; INTA signals events.
//!
//! Software talks to the controller through rings of 16-byte TRBs in
//! guest memory: it rings doorbell 0 for the command ring and doorbell
//! *slot* with a Device Context Index for an endpoint's transfer ring; the
//! controller answers on the event ring of interrupter 0. Each transfer
//! descriptor (TD) becomes one whole [`Transfer`] to the device, answered
//! through a [`Completer`] now or later: [`Xhci::poll`] picks up late
//! answers and retries NAKed interrupt transfers.
//!
//! Guest mistakes are bounded: a ring that goes round Link TRBs without a
//! TRB to execute, a TD with too many TRBs or a malformed TD ends in a TRB
//! Error event and a halted endpoint (on the command ring: Host Controller
//! Error); a pointer outside guest RAM halts the controller with Host
//! System Error; a command in the wrong slot or endpoint state completes
//! with Context State Error; events that do not fit the event ring wait in
//! a bounded queue until software frees room.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};

use super::usb_spec as ch9;
use super::xhci_spec as spec;
use super::{
    Completer, Completion, CompletionQueue, Direction, Setup, Speed, Transfer, TransferKind,
    TransferStatus, UsbDevice,
};
use crate::bus::BusDevice;
use crate::irq::{IrqLine, MsiSender};
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, REG_STATUS, STATUS_INTERRUPT};
use crate::pci::{BarKind, ConfigSpace, PciFunction};
use crate::{guest_error, GuestMemory};

/// Consecutive Link TRBs followed before a ring counts as looping.
pub const MAX_LINKS: usize = 64;
/// TRBs in one TD.
pub const MAX_TD_TRBS: usize = 256;
/// Commands executed for one doorbell.
pub const MAX_COMMANDS: usize = 256;
/// TDs started on one endpoint for one doorbell or poll.
pub const MAX_TDS: usize = 256;
/// Events waiting for room on the event ring.
pub const MAX_PENDING_EVENTS: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XhciError {
    #[error("xHCI root port {0} does not exist (ports are 1 to {max})", max = spec::PORTS)]
    NoSuchPort(usize),
    #[error("xHCI root port {0} is already in use")]
    PortInUse(usize),
    #[error("xHCI root port {0} has no device")]
    PortEmpty(usize),
    #[error(
        "xHCI root port {0} is a USB 3 port and the device is not SuperSpeed: use ports 1 to {max}",
        max = spec::USB2_PORTS
    )]
    NotSuperSpeed(usize),
}

/// A TRB as read from guest memory, with where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trb {
    addr: u64,
    param: u64,
    status: u32,
    control: u32,
}

impl Trb {
    fn ty(&self) -> u32 {
        (self.control >> spec::TRB_TYPE_SHIFT) & spec::TRB_TYPE_MASK
    }
    fn len(&self) -> usize {
        (self.status & spec::TRB_LEN_MASK) as usize
    }
    fn flag(&self, f: u32) -> bool {
        self.control & f != 0
    }
    fn cycle(&self) -> bool {
        self.flag(spec::TRB_C)
    }
    fn slot(&self) -> usize {
        (self.control >> spec::TRB_SLOT_SHIFT) as usize
    }
    fn dci(&self) -> usize {
        ((self.control >> spec::TRB_EP_SHIFT) & spec::TRB_EP_MASK) as usize
    }
}

/// A producer/consumer position on a ring: the next TRB and the cycle
/// state that marks it valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ring {
    dequeue: u64,
    cycle: bool,
}

/// Why a ring could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RingFault {
    /// A read outside guest RAM (the controller is halted already).
    Memory,
    /// Only Link TRBs, or a TD without end: the TRB to blame.
    Trb(u64),
}

/// A transfer descriptor taken off a transfer ring.
#[derive(Debug, Clone)]
struct Td {
    trbs: Vec<Trb>,
    /// The ring position after the TD.
    next: Ring,
}

/// A TD handed to the device.
#[derive(Debug)]
struct Pending {
    id: u64,
    td: Td,
    transfer: Transfer,
    answer: Option<Completion>,
    /// The device NAKed: submit the transfer again on the next poll.
    retry: bool,
}

#[derive(Debug, Default)]
struct Endpoint {
    state: u32,
    ep_type: u32,
    ring: Ring,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Slot {
    enabled: bool,
    state: u32,
    port: usize,
    /// The output device context (from the DCBAA at Address Device).
    context: u64,
    /// Indexed by Device Context Index; 0 is unused.
    eps: Vec<Endpoint>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            enabled: false,
            state: spec::SLOT_STATE_DISABLED,
            port: 0,
            context: 0,
            eps: (0..32).map(|_| Endpoint::default()).collect(),
        }
    }
}

struct RootPort {
    device: Option<Box<dyn UsbDevice>>,
    speed: Speed,
    queue: Arc<CompletionQueue>,
    /// PORTSC bits kept: PED, PR, PLS and the change bits, PIC, wake
    /// enables.
    sc: u32,
}

impl Default for RootPort {
    fn default() -> Self {
        Self {
            device: None,
            speed: Speed::Full,
            queue: CompletionQueue::new(),
            sc: spec::PLS_RX_DETECT << spec::PORT_PLS_SHIFT,
        }
    }
}

fn speed_id(s: Speed) -> u32 {
    match s {
        Speed::Low => spec::SPEED_LOW,
        Speed::Full => spec::SPEED_FULL,
        Speed::High => spec::SPEED_HIGH,
        Speed::Super => spec::SPEED_SUPER,
    }
}

fn is_usb3(port: usize) -> bool {
    port >= spec::USB3_FIRST_PORT
}

/// Event ring state of interrupter 0.
#[derive(Debug, Default)]
struct EventRing {
    /// Segments (base, TRBs) read from the ERST.
    segments: Vec<(u64, u32)>,
    segment: usize,
    index: u32,
    cycle: bool,
}

/// The xHCI controller.
pub struct Xhci {
    cs: ConfigSpace,
    mem: GuestMemory,
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    msi: Option<Arc<dyn MsiSender>>,
    usbcmd: u32,
    usbsts: u32,
    dnctrl: u32,
    config: u32,
    dcbaap: u64,
    crcr_written: u64,
    command_ring: Ring,
    command_running: bool,
    iman: u32,
    imod: u32,
    erstsz: u32,
    erstba: u64,
    erdp: u64,
    events: EventRing,
    waiting_events: VecDeque<[u32; 4]>,
    started: Instant,
    ports: Vec<RootPort>,
    slots: Vec<Slot>,
    next_id: u64,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Set while a vCPU's register access runs: answers the devices give
    /// inside it are collected before it returns, so they wake nobody
    /// (a wake per transfer cost the vCPU's core a thread switch and a
    /// contended lock, about a tenth of USB disk throughput).
    inline: Arc<AtomicBool>,
    /// Set by every device answer: a register access that saw none needs
    /// no look at the queues or the endpoints when it ends.
    answered: Arc<AtomicBool>,
}

impl Xhci {
    pub fn new(mem: GuestMemory, irq: Arc<dyn IrqLine>) -> Self {
        let mut cs = ConfigSpace::new(
            spec::VENDOR_REDHAT,
            spec::DEVICE_QEMU_XHCI,
            spec::CLASS_XHCI,
            spec::REVISION,
        );
        cs.set_subsystem(0x1af4, 0x1100);
        cs.set_interrupt_pin(spec::INTERRUPT_PIN);
        cs.add_bar(spec::BAR_MMIO, BarKind::Memory64, spec::MMIO_LEN);
        cs.set_u8(spec::REG_SBRN, spec::SBRN_USB30);
        cs.set_u8(spec::REG_FLADJ, spec::FLADJ_DEFAULT);
        cs.add_msi_capability(spec::CAP_MSI_OFFSET);
        let mut x = Self {
            cs,
            mem,
            irq,
            irq_level: false,
            msi: None,
            usbcmd: 0,
            usbsts: spec::STS_HCH,
            dnctrl: 0,
            config: 0,
            dcbaap: 0,
            crcr_written: 0,
            command_ring: Ring::default(),
            command_running: false,
            iman: 0,
            imod: 0,
            erstsz: 0,
            erstba: 0,
            erdp: 0,
            events: EventRing::default(),
            waiting_events: VecDeque::new(),
            started: Instant::now(),
            ports: (0..spec::PORTS).map(|_| RootPort::default()).collect(),
            slots: (0..=spec::MAX_SLOTS).map(|_| Slot::default()).collect(),
            next_id: 1,
            wake: None,
            inline: Arc::new(AtomicBool::new(false)),
            answered: Arc::new(AtomicBool::new(false)),
        };
        x.reset_controller();
        x
    }

    /// Where MSI messages go once software enables MSI; without it the
    /// controller signals INTA only.
    pub fn set_msi(&mut self, msi: Option<Arc<dyn MsiSender>>) {
        self.msi = msi;
    }

    /// Called when a device answers a transfer from another thread, so
    /// that someone calls [`Xhci::poll`].
    pub fn set_wake(&mut self, wake: Option<Arc<dyn Fn() + Send + Sync>>) {
        self.wake = wake.clone();
        for p in &self.ports {
            Self::set_port_waker(&p.queue, &wake, [&self.inline, &self.answered]);
        }
    }

    fn set_port_waker(
        q: &CompletionQueue,
        wake: &Option<Arc<dyn Fn() + Send + Sync>>,
        [inline, answered]: [&Arc<AtomicBool>; 2],
    ) {
        match wake {
            Some(w) => {
                let (w, inline, answered) = (w.clone(), inline.clone(), answered.clone());
                q.set_waker(Some(Arc::new(move || {
                    // `answered` before `inline`: see end_inline.
                    answered.store(true, Ordering::SeqCst);
                    if !inline.load(Ordering::SeqCst) {
                        w()
                    }
                })));
            }
            None => q.set_waker(None),
        }
    }

    /// Ends a register access: wakes the poller if a device answered
    /// from another thread after the access last collected, or if a
    /// NAKed transfer waits to be tried again. (A device completing on
    /// another thread pushes, then reads `inline`; this clears `inline`,
    /// then looks at the queues: one of the two sees the other. A device
    /// sets `answered` before it reads `inline`, so an answer this access
    /// did not wake for is always seen here.)
    fn end_inline(&mut self) {
        self.inline.store(false, Ordering::SeqCst);
        if !self.answered.swap(false, Ordering::SeqCst) {
            return;
        }
        let Some(w) = &self.wake else {
            return;
        };
        if self.ports.iter().any(|p| !p.queue.is_empty()) || self.wants_poll() {
            w();
        }
    }

    fn port_index(port: usize) -> Result<usize, XhciError> {
        port.checked_sub(1)
            .filter(|i| *i < spec::PORTS)
            .ok_or(XhciError::NoSuchPort(port))
    }

    /// Plugs `device` into root port `port` (1-4 USB 2, 5-8 USB 3,
    /// SuperSpeed devices only): the guest sees a connect status change.
    pub fn attach(&mut self, port: usize, device: Box<dyn UsbDevice>) -> Result<(), XhciError> {
        let i = Self::port_index(port)?;
        if self.ports[i].device.is_some() {
            return Err(XhciError::PortInUse(port));
        }
        let max = if is_usb3(port) {
            Speed::Super
        } else {
            Speed::High
        };
        let speed = device.speed(max);
        if is_usb3(port) != (speed == Speed::Super) {
            return Err(XhciError::NotSuperSpeed(port));
        }
        let queue = CompletionQueue::new();
        Self::set_port_waker(&queue, &self.wake, [&self.inline, &self.answered]);
        let p = &mut self.ports[i];
        p.device = Some(device);
        p.speed = speed;
        p.queue = queue;
        self.connect_state(port);
        self.port_changed(port, 0);
        Ok(())
    }

    /// Unplugs the device on `port`: the port is disabled, a connect
    /// change is flagged, and transfers in flight on it end in USB
    /// Transaction Errors.
    pub fn detach(&mut self, port: usize) -> Result<(), XhciError> {
        let i = Self::port_index(port)?;
        if self.ports[i].device.take().is_none() {
            return Err(XhciError::PortEmpty(port));
        }
        self.ports[i].queue = CompletionQueue::new();
        let before = self.ports[i].sc;
        let p = &mut self.ports[i];
        p.sc &= !(spec::PORT_PED | spec::PORT_PR | spec::PORT_PLS_MASK);
        p.sc |= spec::PORT_CSC | spec::PLS_RX_DETECT << spec::PORT_PLS_SHIFT;
        self.port_changed(port, before);
        for s in 1..self.slots.len() {
            if self.slots[s].enabled && self.slots[s].port == port {
                for dci in 1..32 {
                    if let Some(p) = self.slots[s].eps[dci].pending.as_mut() {
                        p.retry = false;
                        p.answer = Some(Completion {
                            id: p.id,
                            status: TransferStatus::Timeout,
                            data: Vec::new(),
                            actual_out: 0,
                        });
                    }
                    self.run_endpoint(s, dci);
                }
            }
        }
        Ok(())
    }

    /// The first USB 2 root port without a device.
    pub fn free_port(&self) -> Option<usize> {
        self.ports[..spec::USB2_PORTS]
            .iter()
            .position(|p| p.device.is_none())
            .map(|i| i + 1)
    }

    /// True while the controller runs (R/S set, not halted).
    pub fn running(&self) -> bool {
        self.usbcmd & spec::CMD_RS != 0 && self.usbsts & spec::STS_HCH == 0
    }

    /// True while a NAKed transfer waits to be tried again: call
    /// [`Xhci::poll`] every millisecond or so.
    pub fn wants_poll(&self) -> bool {
        self.slots
            .iter()
            .flat_map(|s| s.eps.iter())
            .any(|e| e.pending.as_ref().is_some_and(|p| p.retry))
    }

    /// Completes transfers the devices answered since, tries NAKed ones
    /// again and goes on down their rings.
    pub fn poll(&mut self) {
        if !self.running() {
            return;
        }
        // Transfers NAKed before this poll go again; NAKs that come now
        // wait for the next one, so an idle interrupt endpoint costs one
        // try per poll.
        for s in 1..self.slots.len() {
            for dci in 1..32 {
                let Some(p) = self.slots[s].eps[dci].pending.as_mut() else {
                    continue;
                };
                if p.retry {
                    p.retry = false;
                    let t = p.transfer.clone();
                    self.resubmit(s, dci, t);
                }
            }
        }
        self.collect();
        for s in 1..self.slots.len() {
            if !self.slots[s].enabled {
                continue;
            }
            for dci in 1..32 {
                if self.slots[s].eps[dci].pending.is_some() {
                    self.run_endpoint(s, dci);
                }
            }
        }
    }

    fn port_connected(&self, port: usize) -> bool {
        self.ports[port - 1].device.is_some()
    }

    /// PORTSC after a connect or a controller reset: a USB 2 port waits in
    /// Polling for software to reset it; a USB 3 port trains by itself
    /// and is enabled in U0.
    fn connect_state(&mut self, port: usize) {
        let p = &mut self.ports[port - 1];
        p.sc &= !(spec::PORT_PED | spec::PORT_PR | spec::PORT_PLS_MASK);
        p.sc |= spec::PORT_CSC;
        if is_usb3(port) {
            p.sc |= spec::PORT_PED | spec::PLS_U0 << spec::PORT_PLS_SHIFT;
            let speed = p.speed;
            if let Some(d) = p.device.as_mut() {
                d.reset(speed);
            }
        } else {
            p.sc |= spec::PLS_POLLING << spec::PORT_PLS_SHIFT;
        }
    }

    fn portsc(&self, port: usize) -> u32 {
        let p = &self.ports[port - 1];
        let mut v = p.sc | spec::PORT_PP;
        if p.device.is_some() {
            v |= spec::PORT_CCS | speed_id(p.speed) << spec::PORT_SPEED_SHIFT;
        }
        v
    }

    /// Reports change bits that went from 0 to 1 with a Port Status
    /// Change event (4.19.2).
    fn port_changed(&mut self, port: usize, before: u32) {
        let after = self.ports[port - 1].sc;
        if after & spec::PORT_CHANGES & !before != 0 {
            self.usbsts |= spec::STS_PCD;
            if self.running() {
                self.push_event(
                    (port as u64) << 24,
                    u32::from(spec::CC_SUCCESS) << 24,
                    spec::EVENT_PORT_STATUS_CHANGE << spec::TRB_TYPE_SHIFT,
                    false,
                );
            }
        }
    }

    fn write_portsc(&mut self, port: usize, v: u32) {
        let before = self.ports[port - 1].sc;
        let connected = self.port_connected(port);
        let p = &mut self.ports[port - 1];
        p.sc &= !(v & spec::PORT_CHANGES);
        if v & spec::PORT_PED != 0 && p.sc & spec::PORT_PED != 0 {
            // Writing 1 to PED disables the port.
            p.sc &= !spec::PORT_PED;
            if !is_usb3(port) {
                p.sc = (p.sc & !spec::PORT_PLS_MASK) | spec::PLS_POLLING << spec::PORT_PLS_SHIFT;
            }
        }
        p.sc = (p.sc & !(spec::PORT_RW & !spec::PORT_PP)) | (v & spec::PORT_RW & !spec::PORT_PP);
        let warm = v & spec::PORT_WPR != 0 && is_usb3(port);
        if connected && (v & spec::PORT_PR != 0 || warm) {
            // Reset signalling is over at once: the port is enabled in
            // U0 at the device's speed (4.19.1.1, 4.19.5.1).
            let speed = p.speed;
            if let Some(d) = p.device.as_mut() {
                d.reset(speed);
            }
            p.sc &= !(spec::PORT_PR | spec::PORT_PLS_MASK);
            p.sc |= spec::PORT_PED | spec::PORT_PRC | spec::PLS_U0 << spec::PORT_PLS_SHIFT;
            if warm {
                p.sc |= spec::PORT_WRC;
            }
        }
        if v & spec::PORT_LWS != 0 && p.sc & spec::PORT_PED != 0 {
            let pls = (v & spec::PORT_PLS_MASK) >> spec::PORT_PLS_SHIFT;
            let cur = (p.sc & spec::PORT_PLS_MASK) >> spec::PORT_PLS_SHIFT;
            let new = match (cur, pls) {
                (_, spec::PLS_U3) => Some(spec::PLS_U3),
                (spec::PLS_U3 | spec::PLS_RESUME, spec::PLS_U0) => {
                    p.sc |= spec::PORT_PLC;
                    Some(spec::PLS_U0)
                }
                (_, spec::PLS_U0) => Some(spec::PLS_U0),
                _ => None,
            };
            if let Some(n) = new {
                p.sc = (p.sc & !spec::PORT_PLS_MASK) | n << spec::PORT_PLS_SHIFT;
            }
        }
        self.port_changed(port, before);
    }

    /// HCRST (4.2): registers to their defaults, every slot disabled,
    /// transfers in flight forgotten, connected devices seen anew.
    fn reset_controller(&mut self) {
        self.usbcmd = 0;
        self.usbsts = spec::STS_HCH;
        self.dnctrl = 0;
        self.config = 0;
        self.dcbaap = 0;
        self.crcr_written = 0;
        self.command_ring = Ring::default();
        self.command_running = false;
        self.iman = 0;
        self.imod = 4000;
        self.erstsz = 0;
        self.erstba = 0;
        self.erdp = 0;
        self.events = EventRing::default();
        self.waiting_events.clear();
        for s in &mut self.slots {
            *s = Slot::default();
        }
        for port in 1..=spec::PORTS {
            let p = &mut self.ports[port - 1];
            p.sc = spec::PLS_RX_DETECT << spec::PORT_PLS_SHIFT;
            p.queue.drain();
            if self.port_connected(port) {
                self.connect_state(port);
            }
        }
        self.update_irq();
    }

    /// Drives INTA from interrupter 0 (4.17.2); with MSI enabled, sends a
    /// message instead when `new_event` made it pending.
    fn signal(&mut self, new_event: bool) {
        let pending = self.usbcmd & spec::CMD_INTE != 0
            && self.iman & spec::IMAN_IE != 0
            && self.iman & spec::IMAN_IP != 0;
        let message = self.cs.msi_message().filter(|_| self.msi.is_some());
        let msi = message.is_some();
        let level = pending && !msi && self.cs.command() & COMMAND_INTX_DISABLE == 0;
        let status = self.cs.read_u16(REG_STATUS) & !STATUS_INTERRUPT;
        self.cs.set_u16(
            REG_STATUS,
            status | if pending { STATUS_INTERRUPT } else { 0 },
        );
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
        if let (true, true, Some(m), Some((addr, data))) = (pending, new_event, &self.msi, message)
        {
            m.send(addr, data);
        }
    }

    fn update_irq(&mut self) {
        self.signal(false);
    }

    /// A fatal error: Host System Error (a bad bus access) or Host
    /// Controller Error; the controller halts.
    fn halt(&mut self, why: u32) {
        self.usbsts |= why | spec::STS_HCH;
        self.usbcmd &= !spec::CMD_RS;
        self.command_running = false;
        self.update_irq();
    }

    fn read_bytes(&mut self, addr: u64, buf: &mut [u8]) -> Option<()> {
        let ok = self.mem.read_slice(buf, GuestAddress(addr)).is_ok();
        self.bus_access(ok, "read", addr, buf.len())
    }

    fn write_bytes(&mut self, addr: u64, buf: &[u8]) -> Option<()> {
        let ok = self.mem.write_slice(buf, GuestAddress(addr)).is_ok();
        self.bus_access(ok, "write", addr, buf.len())
    }

    /// A DMA access that missed guest RAM halts the controller with Host
    /// System Error.
    fn bus_access(&mut self, ok: bool, what: &str, addr: u64, len: usize) -> Option<()> {
        if !ok {
            guest_error!("xHCI: {what} of {len} bytes at {addr:#x} is outside guest RAM");
            self.halt(spec::STS_HSE);
            return None;
        }
        Some(())
    }

    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b)?;
        Some(u64::from_le_bytes(b))
    }

    fn read_dwords<const N: usize>(&mut self, addr: u64) -> Option<[u32; N]> {
        let mut b = vec![0u8; 4 * N];
        self.read_bytes(addr, &mut b)?;
        let mut out = [0u32; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        Some(out)
    }

    fn write_dwords(&mut self, addr: u64, v: &[u32]) -> Option<()> {
        let b: Vec<u8> = v.iter().flat_map(|d| d.to_le_bytes()).collect();
        self.write_bytes(addr, &b)
    }

    fn read_trb(&mut self, addr: u64) -> Option<Trb> {
        let d = self.read_dwords::<4>(addr)?;
        Some(Trb {
            addr,
            param: u64::from(d[0]) | u64::from(d[1]) << 32,
            status: d[2],
            control: d[3],
        })
    }

    /// The next TRB on `ring` that is not a Link, following Links (and
    /// toggling the cycle state where they say so); `None` when software
    /// has not written it yet. The ring position is left on that TRB.
    fn ring_peek(&mut self, ring: &mut Ring) -> Result<Option<Trb>, RingFault> {
        let mut links = 0;
        loop {
            let trb = self.read_trb(ring.dequeue).ok_or(RingFault::Memory)?;
            if trb.cycle() != ring.cycle {
                return Ok(None);
            }
            if trb.ty() != spec::TRB_LINK {
                return Ok(Some(trb));
            }
            links += 1;
            if links > MAX_LINKS {
                guest_error!(
                    "xHCI: ring at {:#x} goes round {MAX_LINKS} Link TRBs without a TRB to run",
                    trb.addr
                );
                return Err(RingFault::Trb(trb.addr));
            }
            if trb.flag(spec::TRB_LINK_TC) {
                ring.cycle = !ring.cycle;
            }
            ring.dequeue = trb.param & spec::EP_DEQ_MASK;
        }
    }

    // ---- events ----

    fn push_event(&mut self, param: u64, status: u32, control: u32, no_interrupt: bool) {
        if self.waiting_events.len() >= MAX_PENDING_EVENTS {
            guest_error!("xHCI: event ring full for too long: an event is lost");
            return;
        }
        let bei = if no_interrupt { 1 } else { 0 };
        self.waiting_events
            .push_back([param as u32, (param >> 32) as u32, status, control | bei]);
        self.flush_events();
    }

    /// Writes waiting events while the event ring has room: it is full
    /// when the next enqueue position is software's dequeue pointer.
    fn flush_events(&mut self) {
        let mut raised = false;
        while let Some(&ev) = self.waiting_events.front() {
            if !self.running() || self.events.segments.is_empty() {
                break;
            }
            let (base, size) = self.events.segments[self.events.segment];
            let at = base.wrapping_add(u64::from(self.events.index) * spec::TRB_LEN);
            let (mut seg, mut idx) = (self.events.segment, self.events.index + 1);
            if idx >= size {
                idx = 0;
                seg = (seg + 1) % self.events.segments.len();
            }
            let next = self.events.segments[seg]
                .0
                .wrapping_add(u64::from(idx) * spec::TRB_LEN);
            if next == self.erdp & spec::ERDP_PTR_MASK {
                break;
            }
            self.waiting_events.pop_front();
            // Bit 0 of dword 3 carried "no interrupt" (BEI) until here.
            let no_interrupt = ev[3] & 1 != 0;
            let control = (ev[3] & !spec::TRB_C) | u32::from(self.events.cycle);
            if self
                .write_dwords(at, &[ev[0], ev[1], ev[2], control])
                .is_none()
            {
                break;
            }
            self.events.index = idx;
            if seg != self.events.segment || idx == 0 {
                if seg == 0 || self.events.segments.len() == 1 {
                    self.events.cycle = !self.events.cycle;
                }
                self.events.segment = seg;
            }
            if !no_interrupt {
                raised |= self.iman & spec::IMAN_IP == 0;
                self.iman |= spec::IMAN_IP;
                self.erdp |= spec::ERDP_EHB;
                self.usbsts |= spec::STS_EINT;
            }
        }
        self.signal(raised);
    }

    /// Reads the Event Ring Segment Table (5.5.2.3, 6.5): on a bad size
    /// the controller stops with Host Controller Error.
    fn load_erst(&mut self) {
        self.events = EventRing {
            cycle: true,
            ..Default::default()
        };
        let n = self.erstsz & 0xffff;
        if n == 0 {
            return;
        }
        if n > spec::ERST_MAX {
            guest_error!(
                "xHCI: ERSTSZ {n} is above ERST Max {}: Host Controller Error",
                spec::ERST_MAX
            );
            self.halt(spec::STS_HCE);
            return;
        }
        let mut segs = Vec::new();
        for i in 0..u64::from(n) {
            let Some(e) = self.read_dwords::<4>(self.erstba.wrapping_add(16 * i)) else {
                return;
            };
            let base = (u64::from(e[0]) | u64::from(e[1]) << 32) & !0x3f;
            let size = e[2] & 0xffff;
            if !(spec::SEGMENT_MIN_TRBS..=spec::SEGMENT_MAX_TRBS).contains(&size) {
                guest_error!(
                    "xHCI: event ring segment {i} at ERST {:#x} has {size} TRBs (16 to 4096 allowed): Host Controller Error",
                    self.erstba
                );
                self.halt(spec::STS_HCE);
                return;
            }
            segs.push((base, size));
        }
        self.events.segments = segs;
    }

    fn command_completion(&mut self, trb: u64, cc: u8, slot: usize) {
        self.push_event(
            trb,
            u32::from(cc) << 24,
            spec::EVENT_COMMAND_COMPLETION << spec::TRB_TYPE_SHIFT | (slot as u32) << 24,
            false,
        );
    }

    fn transfer_event(
        &mut self,
        slot: usize,
        dci: usize,
        param: u64,
        cc: u8,
        len: usize,
        ed: bool,
    ) {
        let mut control =
            spec::EVENT_TRANSFER << spec::TRB_TYPE_SHIFT | (slot as u32) << 24 | (dci as u32) << 16;
        if ed {
            control |= spec::TRB_EVENT_ED;
        }
        self.push_event(
            param,
            u32::from(cc) << 24 | (len as u32 & 0xff_ffff),
            control,
            false,
        );
    }

    // ---- commands ----

    fn run_commands(&mut self) {
        if !self.running() {
            return;
        }
        self.command_running = true;
        for _ in 0..MAX_COMMANDS {
            let mut ring = self.command_ring;
            let trb = match self.ring_peek(&mut ring) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    self.command_ring = ring;
                    return;
                }
                Err(RingFault::Memory) => return,
                Err(RingFault::Trb(_)) => {
                    self.halt(spec::STS_HCE);
                    return;
                }
            };
            ring.dequeue = trb.addr.wrapping_add(spec::TRB_LEN);
            self.command_ring = ring;
            let (cc, slot) = self.command(&trb);
            if !self.running() {
                return;
            }
            self.command_completion(trb.addr, cc, slot);
        }
    }

    fn slot_ctx(&self, slot: usize) -> u64 {
        self.slots[slot].context
    }

    fn ep_ctx(&self, slot: usize, dci: usize) -> u64 {
        self.slots[slot]
            .context
            .wrapping_add(spec::CONTEXT_LEN * dci as u64)
    }

    /// Writes the slot state and USB address into the output slot context.
    fn write_slot_state(&mut self, slot: usize, address: u32) -> Option<()> {
        let at = self.slot_ctx(slot);
        let mut d = self.read_dwords::<8>(at)?;
        d[3] = (d[3] & !(0x1f << spec::SLOT_STATE_SHIFT) & !0xff)
            | self.slots[slot].state << spec::SLOT_STATE_SHIFT
            | (address & 0xff);
        self.write_dwords(at, &d)
    }

    /// Writes an endpoint's state and dequeue pointer into its context.
    fn write_ep_state(&mut self, slot: usize, dci: usize) -> Option<()> {
        let at = self.ep_ctx(slot, dci);
        let mut d = self.read_dwords::<8>(at)?;
        let ep = &self.slots[slot].eps[dci];
        d[0] = (d[0] & !spec::EP_STATE_MASK) | ep.state;
        let deq = ep.ring.dequeue | u64::from(ep.ring.cycle);
        d[2] = deq as u32;
        d[3] = (deq >> 32) as u32;
        self.write_dwords(at, &d)
    }

    fn disable_endpoint(&mut self, slot: usize, dci: usize) {
        let ep = &mut self.slots[slot].eps[dci];
        ep.state = spec::EP_STATE_DISABLED;
        ep.pending = None;
    }

    /// Executes one command (4.6); its completion code and slot ID.
    fn command(&mut self, trb: &Trb) -> (u8, usize) {
        let ty = trb.ty();
        let slot = trb.slot();
        if ty == spec::CMD_ENABLE_SLOT {
            return match (1..=spec::MAX_SLOTS).find(|s| !self.slots[*s].enabled) {
                Some(s) => {
                    self.slots[s] = Slot {
                        enabled: true,
                        ..Default::default()
                    };
                    (spec::CC_SUCCESS, s)
                }
                None => (spec::CC_NO_SLOTS, 0),
            };
        }
        if ty == spec::CMD_NOOP {
            return (spec::CC_SUCCESS, 0);
        }
        if !matches!(
            ty,
            spec::CMD_DISABLE_SLOT
                | spec::CMD_ADDRESS_DEVICE
                | spec::CMD_CONFIGURE_ENDPOINT
                | spec::CMD_EVALUATE_CONTEXT
                | spec::CMD_RESET_ENDPOINT
                | spec::CMD_STOP_ENDPOINT
                | spec::CMD_SET_TR_DEQUEUE
                | spec::CMD_RESET_DEVICE
        ) {
            guest_error!(
                "xHCI: command TRB at {:#x} has type {ty}, not a command",
                trb.addr
            );
            return (spec::CC_TRB_ERROR, slot);
        }
        if slot == 0 || slot > spec::MAX_SLOTS {
            return (spec::CC_TRB_ERROR, slot);
        }
        if !self.slots[slot].enabled {
            return (spec::CC_SLOT_NOT_ENABLED, slot);
        }
        let cc = match ty {
            spec::CMD_DISABLE_SLOT => {
                self.slots[slot] = Slot::default();
                Some(spec::CC_SUCCESS)
            }
            spec::CMD_ADDRESS_DEVICE => self.address_device(slot, trb),
            spec::CMD_CONFIGURE_ENDPOINT => self.configure_endpoint(slot, trb),
            spec::CMD_EVALUATE_CONTEXT => self.evaluate_context(slot, trb),
            spec::CMD_RESET_DEVICE => self.reset_device(slot),
            _ => self.endpoint_command(slot, trb),
        };
        (cc.unwrap_or(spec::CC_TRB_ERROR), slot)
    }

    /// Address Device (4.6.5): the slot takes its root port and default
    /// control endpoint from the input context.
    fn address_device(&mut self, slot: usize, trb: &Trb) -> Option<u8> {
        let bsr = trb.flag(spec::TRB_BSR);
        let state = self.slots[slot].state;
        let allowed =
            state == spec::SLOT_STATE_DISABLED || (!bsr && state == spec::SLOT_STATE_DEFAULT);
        if !allowed {
            return Some(spec::CC_CONTEXT_STATE_ERROR);
        }
        let input = trb.param & !0xf;
        let icc = self.read_dwords::<8>(input)?;
        if icc[0] != 0 || icc[1] & 3 != 3 {
            return Some(spec::CC_TRB_ERROR);
        }
        let slot_in = self.read_dwords::<8>(input.wrapping_add(spec::CONTEXT_LEN))?;
        let ep0_in = self.read_dwords::<8>(input.wrapping_add(2 * spec::CONTEXT_LEN))?;
        let out = self.read_u64(self.dcbaap.wrapping_add(8 * slot as u64))? & !0x3f;
        if out == 0 {
            return Some(spec::CC_PARAMETER_ERROR);
        }
        let port = ((slot_in[1] >> spec::SLOT_PORT_SHIFT) & 0xff) as usize;
        let reachable = (1..=spec::PORTS).contains(&port)
            && slot_in[0] & spec::SLOT_ROUTE_MASK == 0
            && self.portsc(port) & (spec::PORT_CCS | spec::PORT_PED)
                == spec::PORT_CCS | spec::PORT_PED;
        if !reachable {
            // Nothing answers SET_ADDRESS there (no hubs here).
            return Some(spec::CC_USB_TRANSACTION_ERROR);
        }
        let ep_type = (ep0_in[1] >> spec::EP_TYPE_SHIFT) & spec::EP_TYPE_MASK;
        if ep_type != spec::EP_TYPE_CONTROL {
            return Some(spec::CC_PARAMETER_ERROR);
        }
        let deq = u64::from(ep0_in[2]) | u64::from(ep0_in[3]) << 32;
        let new_state = if bsr {
            spec::SLOT_STATE_DEFAULT
        } else {
            spec::SLOT_STATE_ADDRESSED
        };
        let address = if bsr { 0 } else { slot as u32 };
        let mut slot_out = slot_in;
        slot_out[3] = new_state << spec::SLOT_STATE_SHIFT | address;
        let mut ep0_out = ep0_in;
        ep0_out[0] = (ep0_out[0] & !spec::EP_STATE_MASK) | spec::EP_STATE_RUNNING;
        // The whole device context starts out clean.
        self.write_bytes(out, &[0u8; 32 * spec::CONTEXT_LEN as usize])?;
        self.write_dwords(out, &slot_out)?;
        self.write_dwords(out.wrapping_add(spec::CONTEXT_LEN), &ep0_out)?;
        let s = &mut self.slots[slot];
        s.state = new_state;
        s.port = port;
        s.context = out;
        for ep in s.eps.iter_mut() {
            *ep = Endpoint::default();
        }
        s.eps[1] = Endpoint {
            state: spec::EP_STATE_RUNNING,
            ep_type,
            ring: Ring {
                dequeue: deq & spec::EP_DEQ_MASK,
                cycle: deq & spec::EP_DCS != 0,
            },
            pending: None,
        };
        Some(spec::CC_SUCCESS)
    }

    /// Configure Endpoint (4.6.6): drops and adds endpoints, or with DC
    /// set deconfigures the device.
    fn configure_endpoint(&mut self, slot: usize, trb: &Trb) -> Option<u8> {
        let state = self.slots[slot].state;
        if state != spec::SLOT_STATE_ADDRESSED && state != spec::SLOT_STATE_CONFIGURED {
            return Some(spec::CC_CONTEXT_STATE_ERROR);
        }
        if trb.flag(spec::TRB_DC) {
            for dci in 2..32 {
                self.disable_endpoint(slot, dci);
                self.write_ep_state(slot, dci)?;
            }
            self.slots[slot].state = spec::SLOT_STATE_ADDRESSED;
            self.write_slot_state(slot, slot as u32)?;
            return Some(spec::CC_SUCCESS);
        }
        let input = trb.param & !0xf;
        let icc = self.read_dwords::<8>(input)?;
        let (drop, add) = (icc[0], icc[1]);
        if drop & 3 != 0 || add & 2 != 0 {
            return Some(spec::CC_TRB_ERROR);
        }
        // Check every added context before changing anything.
        let mut added = Vec::new();
        for dci in 2..32 {
            if add & (1 << dci) != 0 {
                let ep = self
                    .read_dwords::<8>(input.wrapping_add(spec::CONTEXT_LEN * (dci as u64 + 1)))?;
                let ep_type = (ep[1] >> spec::EP_TYPE_SHIFT) & spec::EP_TYPE_MASK;
                let want_in = dci % 2 == 1;
                let is_in = ep_type >= spec::EP_TYPE_CONTROL;
                if ep_type == 0 || ep_type == spec::EP_TYPE_CONTROL || is_in != want_in {
                    return Some(spec::CC_PARAMETER_ERROR);
                }
                added.push((dci, ep, ep_type));
            }
        }
        for dci in 2..32 {
            if drop & (1 << dci) != 0 {
                self.disable_endpoint(slot, dci);
                self.write_ep_state(slot, dci)?;
            }
        }
        for (dci, mut ep, ep_type) in added {
            ep[0] = (ep[0] & !spec::EP_STATE_MASK) | spec::EP_STATE_RUNNING;
            self.write_dwords(self.ep_ctx(slot, dci), &ep)?;
            let deq = u64::from(ep[2]) | u64::from(ep[3]) << 32;
            self.slots[slot].eps[dci] = Endpoint {
                state: spec::EP_STATE_RUNNING,
                ep_type,
                ring: Ring {
                    dequeue: deq & spec::EP_DEQ_MASK,
                    cycle: deq & spec::EP_DCS != 0,
                },
                pending: None,
            };
        }
        if add & 1 != 0 {
            let slot_in = self.read_dwords::<8>(input.wrapping_add(spec::CONTEXT_LEN))?;
            let at = self.slot_ctx(slot);
            let mut out = self.read_dwords::<8>(at)?;
            let entries = 0x1f << spec::SLOT_ENTRIES_SHIFT;
            out[0] = (out[0] & !entries) | (slot_in[0] & entries);
            self.write_dwords(at, &out)?;
        }
        let any = self.slots[slot].eps[2..]
            .iter()
            .any(|e| e.state != spec::EP_STATE_DISABLED);
        self.slots[slot].state = if any {
            spec::SLOT_STATE_CONFIGURED
        } else {
            spec::SLOT_STATE_ADDRESSED
        };
        self.write_slot_state(slot, slot as u32)?;
        Some(spec::CC_SUCCESS)
    }

    /// Evaluate Context (4.6.7): the slot's exit latency and interrupter
    /// target, the default control endpoint's max packet size.
    fn evaluate_context(&mut self, slot: usize, trb: &Trb) -> Option<u8> {
        if self.slots[slot].state == spec::SLOT_STATE_DISABLED {
            return Some(spec::CC_CONTEXT_STATE_ERROR);
        }
        let input = trb.param & !0xf;
        let icc = self.read_dwords::<8>(input)?;
        if icc[1] & 1 != 0 {
            let slot_in = self.read_dwords::<8>(input.wrapping_add(spec::CONTEXT_LEN))?;
            let at = self.slot_ctx(slot);
            let mut out = self.read_dwords::<8>(at)?;
            out[1] = (out[1] & !0xffff) | (slot_in[1] & 0xffff);
            out[2] = (out[2] & !(0x3ff << 22)) | (slot_in[2] & (0x3ff << 22));
            self.write_dwords(at, &out)?;
        }
        if icc[1] & 2 != 0 {
            let ep_in = self.read_dwords::<8>(input.wrapping_add(2 * spec::CONTEXT_LEN))?;
            let at = self.ep_ctx(slot, 1);
            let mut out = self.read_dwords::<8>(at)?;
            out[1] = (out[1] & 0xffff) | (ep_in[1] & 0xffff_0000);
            self.write_dwords(at, &out)?;
        }
        Some(spec::CC_SUCCESS)
    }

    /// Reset Device (4.6.11): back to the Default state, endpoints other
    /// than the default control endpoint disabled.
    fn reset_device(&mut self, slot: usize) -> Option<u8> {
        let state = self.slots[slot].state;
        if state != spec::SLOT_STATE_ADDRESSED && state != spec::SLOT_STATE_CONFIGURED {
            return Some(spec::CC_CONTEXT_STATE_ERROR);
        }
        for dci in 2..32 {
            self.disable_endpoint(slot, dci);
            self.write_ep_state(slot, dci)?;
        }
        self.slots[slot].eps[1].pending = None;
        self.slots[slot].state = spec::SLOT_STATE_DEFAULT;
        self.write_slot_state(slot, 0)?;
        Some(spec::CC_SUCCESS)
    }

    /// Reset Endpoint, Stop Endpoint and Set TR Dequeue Pointer (4.6.8-10).
    fn endpoint_command(&mut self, slot: usize, trb: &Trb) -> Option<u8> {
        let dci = trb.dci();
        if dci == 0 {
            return Some(spec::CC_TRB_ERROR);
        }
        if self.slots[slot].state == spec::SLOT_STATE_DISABLED {
            return Some(spec::CC_CONTEXT_STATE_ERROR);
        }
        let state = self.slots[slot].eps[dci].state;
        if state == spec::EP_STATE_DISABLED {
            return Some(spec::CC_EP_NOT_ENABLED);
        }
        match trb.ty() {
            spec::CMD_RESET_ENDPOINT => {
                if state != spec::EP_STATE_HALTED {
                    return Some(spec::CC_CONTEXT_STATE_ERROR);
                }
                self.slots[slot].eps[dci].state = spec::EP_STATE_STOPPED;
            }
            spec::CMD_STOP_ENDPOINT => {
                if state != spec::EP_STATE_RUNNING {
                    return Some(spec::CC_CONTEXT_STATE_ERROR);
                }
                let ep = &mut self.slots[slot].eps[dci];
                ep.state = spec::EP_STATE_STOPPED;
                if let Some(p) = ep.pending.take() {
                    // The TD in flight is given up; the ring stays on it.
                    if let Some(first) = p.td.trbs.first().copied() {
                        self.transfer_event(
                            slot,
                            dci,
                            first.addr,
                            spec::CC_STOPPED,
                            first.len(),
                            false,
                        );
                    }
                }
            }
            _ => {
                if state != spec::EP_STATE_STOPPED && state != spec::EP_STATE_ERROR {
                    return Some(spec::CC_CONTEXT_STATE_ERROR);
                }
                let deq = trb.param & spec::EP_DEQ_MASK;
                if deq == 0 {
                    return Some(spec::CC_TRB_ERROR);
                }
                self.slots[slot].eps[dci].ring = Ring {
                    dequeue: deq,
                    cycle: trb.param & spec::EP_DCS != 0,
                };
                self.slots[slot].eps[dci].state = spec::EP_STATE_STOPPED;
            }
        }
        self.write_ep_state(slot, dci)?;
        Some(spec::CC_SUCCESS)
    }

    // ---- transfers ----

    fn doorbell(&mut self, slot: usize, target: u32) {
        if !self.running() || self.cs.command() & COMMAND_BUS_MASTER == 0 {
            return;
        }
        if slot == 0 {
            if target == 0 {
                self.run_commands();
            }
            return;
        }
        let dci = (target & 0xff) as usize;
        if slot > spec::MAX_SLOTS || !(1..32).contains(&dci) {
            return;
        }
        let s = &mut self.slots[slot];
        if !s.enabled || s.state == spec::SLOT_STATE_DISABLED {
            return;
        }
        let ep = &mut s.eps[dci];
        if ep.state == spec::EP_STATE_STOPPED {
            ep.state = spec::EP_STATE_RUNNING;
        }
        self.collect();
        self.run_endpoint(slot, dci);
    }

    /// Takes the next TD off an endpoint's ring, without moving the ring:
    /// `None` while software has not written all of it.
    fn fetch_td(&mut self, slot: usize, dci: usize) -> Result<Option<Td>, RingFault> {
        let ep = &self.slots[slot].eps[dci];
        let control = ep.ep_type == spec::EP_TYPE_CONTROL;
        let mut ring = ep.ring;
        let mut trbs: Vec<Trb> = Vec::new();
        loop {
            let Some(trb) = self.ring_peek(&mut ring)? else {
                return Ok(None);
            };
            if trbs.len() >= MAX_TD_TRBS {
                guest_error!(
                    "xHCI: TD at {:#x} has more than {MAX_TD_TRBS} TRBs",
                    trbs[0].addr
                );
                return Err(RingFault::Trb(trb.addr));
            }
            let ty = trb.ty();
            let valid = if control {
                match ty {
                    spec::TRB_SETUP => trbs.is_empty(),
                    spec::TRB_DATA => trbs.len() == 1,
                    spec::TRB_NORMAL => trbs.iter().any(|t| t.ty() == spec::TRB_DATA),
                    spec::TRB_STATUS | spec::TRB_EVENT_DATA => !trbs.is_empty(),
                    spec::TRB_NOOP => trbs.is_empty(),
                    _ => false,
                }
            } else {
                matches!(ty, spec::TRB_NORMAL | spec::TRB_EVENT_DATA | spec::TRB_NOOP)
            };
            if !valid {
                guest_error!(
                    "xHCI: TRB at {:#x} of type {ty} does not belong there in a TD",
                    trb.addr
                );
                return Err(RingFault::Trb(trb.addr));
            }
            let immediate_ok = !trb.flag(spec::TRB_IDT)
                || (ty == spec::TRB_SETUP && trb.len() == ch9::SETUP_LEN)
                || (matches!(ty, spec::TRB_NORMAL | spec::TRB_DATA)
                    && trb.len() <= 8
                    && !(ty == spec::TRB_DATA && trb.flag(spec::TRB_DIR_IN)));
            if !immediate_ok || (ty == spec::TRB_SETUP && !trb.flag(spec::TRB_IDT)) {
                guest_error!("xHCI: TRB at {:#x} misuses immediate data", trb.addr);
                return Err(RingFault::Trb(trb.addr));
            }
            ring.dequeue = trb.addr.wrapping_add(spec::TRB_LEN);
            trbs.push(trb);
            let end = if control {
                match ty {
                    spec::TRB_STATUS | spec::TRB_EVENT_DATA => !trb.flag(spec::TRB_CH),
                    spec::TRB_NOOP => true,
                    _ => false,
                }
            } else {
                !trb.flag(spec::TRB_CH)
            };
            if end {
                return Ok(Some(Td { trbs, next: ring }));
            }
        }
    }

    /// Runs an endpoint's ring: finishes the TD in flight when its answer
    /// is in, then starts TDs until one is left waiting for the device.
    fn run_endpoint(&mut self, slot: usize, dci: usize) {
        for _ in 0..MAX_TDS {
            if !self.running() {
                return;
            }
            let ep = &mut self.slots[slot].eps[dci];
            if let Some(p) = ep.pending.as_mut() {
                match p.answer.take() {
                    Some(c) => {
                        let Some(p) = ep.pending.take() else { return };
                        self.finish_td(slot, dci, p.td, c);
                        continue;
                    }
                    None => return,
                }
            }
            if ep.state != spec::EP_STATE_RUNNING {
                return;
            }
            match self.fetch_td(slot, dci) {
                Ok(None) | Err(RingFault::Memory) => return,
                Err(RingFault::Trb(at)) => {
                    self.halt_endpoint(slot, dci, at, spec::CC_TRB_ERROR);
                    return;
                }
                Ok(Some(td)) => {
                    if !self.start_td(slot, dci, td) {
                        return;
                    }
                }
            }
        }
    }

    fn halt_endpoint(&mut self, slot: usize, dci: usize, trb: u64, cc: u8) {
        let ep = &mut self.slots[slot].eps[dci];
        ep.state = spec::EP_STATE_HALTED;
        ep.pending = None;
        ep.ring.dequeue = trb;
        self.transfer_event(slot, dci, trb, cc, 0, false);
        let _ = self.write_ep_state(slot, dci);
    }

    /// Builds the device transfer of a TD and hands it over. False when
    /// the controller halted.
    fn start_td(&mut self, slot: usize, dci: usize, td: Td) -> bool {
        let ep_type = self.slots[slot].eps[dci].ep_type;
        let mut out = Vec::new();
        let mut in_len = 0usize;
        let mut setup = None;
        let mut data_in = dci % 2 == 1 && ep_type != spec::EP_TYPE_CONTROL;
        for t in &td.trbs {
            match t.ty() {
                spec::TRB_SETUP => {
                    setup = Setup::parse(&t.param.to_le_bytes());
                }
                spec::TRB_DATA | spec::TRB_NORMAL => {
                    if t.ty() == spec::TRB_DATA {
                        data_in = t.flag(spec::TRB_DIR_IN);
                    }
                    if data_in {
                        in_len += t.len();
                    } else if t.flag(spec::TRB_IDT) {
                        out.extend_from_slice(&t.param.to_le_bytes()[..t.len()]);
                    } else {
                        let mut b = vec![0u8; t.len()];
                        if self.read_bytes(t.param, &mut b).is_none() {
                            return false;
                        }
                        out.extend_from_slice(&b);
                    }
                }
                _ => {}
            }
        }
        let endpoint = (dci / 2) as u8;
        let transfer = match setup {
            Some(s) => Transfer {
                kind: TransferKind::Control(s),
                endpoint: 0,
                direction: s.direction(),
                data: out,
                length: in_len,
            },
            None => Transfer {
                kind: if matches!(ep_type, spec::EP_TYPE_INT_IN | spec::EP_TYPE_INT_OUT) {
                    TransferKind::Interrupt
                } else {
                    TransferKind::Bulk
                },
                endpoint,
                direction: if data_in {
                    Direction::In
                } else {
                    Direction::Out
                },
                data: out,
                length: in_len,
            },
        };
        let only_noop = td.trbs.iter().all(|t| t.ty() == spec::TRB_NOOP);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.slots[slot].eps[dci].pending = Some(Pending {
            id,
            td,
            transfer: transfer.clone(),
            answer: None,
            retry: false,
        });
        let set_address = setup.is_some_and(|s| {
            s.request == ch9::SET_ADDRESS
                && s.request_type & (ch9::REQ_TYPE_MASK | ch9::REQ_RECIPIENT_MASK)
                    == ch9::REQ_TYPE_STANDARD | ch9::REQ_RECIPIENT_DEVICE
        });
        if only_noop || set_address {
            // The controller addressed the device already (Address
            // Device); a No Op TD moves no data.
            if let Some(p) = self.slots[slot].eps[dci].pending.as_mut() {
                p.answer = Some(Completion {
                    id,
                    status: TransferStatus::Success,
                    data: Vec::new(),
                    actual_out: 0,
                });
            }
            return true;
        }
        self.resubmit(slot, dci, transfer);
        self.collect();
        true
    }

    /// Hands `t` to the device behind the slot, as the pending TD's
    /// transfer.
    fn resubmit(&mut self, slot: usize, dci: usize, t: Transfer) {
        let Some(id) = self.slots[slot].eps[dci].pending.as_ref().map(|p| p.id) else {
            return;
        };
        let port = self.slots[slot].port;
        let enabled = (1..=spec::PORTS).contains(&port)
            && self.portsc(port) & spec::PORT_PED != 0
            && self.slots[slot].state != spec::SLOT_STATE_DISABLED;
        let p = match port.checked_sub(1).and_then(|i| self.ports.get_mut(i)) {
            Some(p) if enabled => p,
            _ => {
                // Nobody on the port: no handshake.
                if let Some(p) = self.slots[slot].eps[dci].pending.as_mut() {
                    p.answer = Some(Completion {
                        id,
                        status: TransferStatus::Timeout,
                        data: Vec::new(),
                        actual_out: 0,
                    });
                }
                return;
            }
        };
        let done = Completer::new(id, p.queue.clone());
        match p.device.as_mut() {
            Some(d) => d.submit(t, done),
            None => done.fail(TransferStatus::Timeout),
        }
    }

    /// Hands the devices' answers to the TDs waiting for them.
    fn collect(&mut self) {
        for i in 0..self.ports.len() {
            let done = self.ports[i].queue.drain();
            for c in done {
                let port = i + 1;
                'find: for s in self
                    .slots
                    .iter_mut()
                    .filter(|s| s.enabled && s.port == port)
                {
                    for ep in s.eps.iter_mut() {
                        if let Some(p) = ep.pending.as_mut() {
                            if p.id == c.id {
                                if c.status == TransferStatus::Nak {
                                    p.retry = true;
                                } else {
                                    p.answer = Some(c);
                                }
                                break 'find;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes a TD's answer to guest memory and reports it (4.10.1): a
    /// Transfer Event for each TRB with IOC, for the TRB where a short
    /// packet ended the data with ISP, and for Event Data TRBs.
    fn finish_td(&mut self, slot: usize, dci: usize, td: Td, c: Completion) {
        let requested_in: usize = td
            .trbs
            .iter()
            .filter(|t| matches!(t.ty(), spec::TRB_DATA | spec::TRB_NORMAL))
            .map(|t| t.len())
            .sum();
        let is_in = matches!(c.status, TransferStatus::Success)
            && match td.trbs.iter().find(|t| t.ty() == spec::TRB_DATA) {
                Some(d) => d.flag(spec::TRB_DIR_IN),
                None => dci % 2 == 1 && self.slots[slot].eps[dci].ep_type != spec::EP_TYPE_CONTROL,
            };
        let mut status = c.status;
        if status == TransferStatus::Success && is_in && c.data.len() > requested_in {
            status = TransferStatus::Babble;
        }
        if status != TransferStatus::Success {
            let cc = match status {
                TransferStatus::Stall => spec::CC_STALL,
                TransferStatus::Babble => spec::CC_BABBLE,
                _ => spec::CC_USB_TRANSACTION_ERROR,
            };
            // The TRB the error shows on: the first data TRB, else the
            // last of the TD (the status stage).
            let at = td
                .trbs
                .iter()
                .find(|t| matches!(t.ty(), spec::TRB_DATA | spec::TRB_NORMAL))
                .or(td.trbs.last())
                .map(|t| t.addr)
                .unwrap_or(self.slots[slot].eps[dci].ring.dequeue);
            self.halt_endpoint(slot, dci, at, cc);
            return;
        }
        let mut moved = if is_in {
            c.data.len()
        } else {
            c.actual_out.min(requested_in)
        };
        let mut offset = 0usize;
        let mut short = false;
        let mut reported_short = false;
        let mut edtla = 0usize;
        for t in &td.trbs {
            match t.ty() {
                spec::TRB_DATA | spec::TRB_NORMAL => {
                    if short {
                        // After a short packet the rest of the data stage
                        // is skipped; an IOC there still reports.
                        if t.flag(spec::TRB_IOC) && !reported_short {
                            self.transfer_event(
                                slot,
                                dci,
                                t.addr,
                                spec::CC_SHORT_PACKET,
                                t.len(),
                                false,
                            );
                            reported_short = true;
                        }
                        continue;
                    }
                    let n = t.len().min(moved);
                    if is_in && n > 0 {
                        let chunk = &c.data[offset..offset + n];
                        if self.write_bytes(t.param, chunk).is_none() {
                            return;
                        }
                    }
                    offset += n;
                    moved -= n;
                    edtla += n;
                    if n < t.len() {
                        short = true;
                        if t.flag(spec::TRB_ISP) || t.flag(spec::TRB_IOC) {
                            self.transfer_event(
                                slot,
                                dci,
                                t.addr,
                                spec::CC_SHORT_PACKET,
                                t.len() - n,
                                false,
                            );
                            reported_short = true;
                        }
                    } else if t.flag(spec::TRB_IOC) {
                        self.transfer_event(slot, dci, t.addr, spec::CC_SUCCESS, 0, false);
                    }
                }
                spec::TRB_EVENT_DATA => {
                    if t.flag(spec::TRB_IOC) {
                        let cc = if short {
                            spec::CC_SHORT_PACKET
                        } else {
                            spec::CC_SUCCESS
                        };
                        self.transfer_event(slot, dci, t.param, cc, edtla, true);
                    }
                    edtla = 0;
                }
                _ => {
                    // Setup, Status, No Op.
                    if t.flag(spec::TRB_IOC) {
                        self.transfer_event(slot, dci, t.addr, spec::CC_SUCCESS, 0, false);
                    }
                }
            }
            if !self.running() {
                return;
            }
        }
        let ep = &mut self.slots[slot].eps[dci];
        ep.ring = td.next;
    }

    // ---- registers ----

    fn read_reg(&self, off: u64) -> u32 {
        match off {
            0x00 => spec::CAP_LENGTH as u32 | u32::from(spec::HCIVERSION_VALUE) << 16,
            spec::HCSPARAMS1 => spec::MAX_SLOTS as u32 | 1 << 8 | (spec::PORTS as u32) << 24,
            spec::HCSPARAMS2 => spec::ERST_MAX_EXP << 4,
            spec::HCSPARAMS3 => 0,
            spec::HCCPARAMS1 => {
                spec::HCC_AC64 | ((spec::XECP_BASE / 4) as u32) << spec::HCC_XECP_SHIFT
            }
            spec::DBOFF => spec::DOORBELL_BASE as u32,
            spec::RTSOFF => spec::RUNTIME_BASE as u32,
            spec::HCCPARAMS2 => 0,
            o if (spec::XECP_BASE..spec::XECP_BASE + 32).contains(&o) => {
                let usb3 = o >= spec::XECP_BASE + 16;
                match o % 16 {
                    0 => {
                        let (next, major) = if usb3 { (0, 3) } else { (4, 2) };
                        spec::XCAP_SUPPORTED_PROTOCOL | next << 8 | major << 24
                    }
                    4 => spec::PROTOCOL_NAME_USB,
                    8 => {
                        let (first, count) = if usb3 {
                            (spec::USB3_FIRST_PORT, spec::USB3_PORTS)
                        } else {
                            (spec::USB2_FIRST_PORT, spec::USB2_PORTS)
                        };
                        first as u32 | (count as u32) << 8
                    }
                    _ => 0,
                }
            }
            o if (spec::OP_BASE..spec::PORT_BASE).contains(&o) => match o - spec::OP_BASE {
                spec::USBCMD => self.usbcmd,
                spec::USBSTS => self.usbsts,
                spec::PAGESIZE => spec::PAGESIZE_4K,
                spec::DNCTRL => self.dnctrl,
                // The command ring pointer reads as zero (5.4.5).
                spec::CRCR if self.command_running => spec::CRCR_CRR as u32,
                r if r == spec::DCBAAP => self.dcbaap as u32,
                r if r == spec::DCBAAP + 4 => (self.dcbaap >> 32) as u32,
                spec::CONFIG => self.config,
                _ => 0,
            },
            o if (spec::PORT_BASE..spec::PORT_BASE + spec::PORT_STRIDE * spec::PORTS as u64)
                .contains(&o) =>
            {
                let port = ((o - spec::PORT_BASE) / spec::PORT_STRIDE) as usize + 1;
                match (o - spec::PORT_BASE) % spec::PORT_STRIDE {
                    spec::PORTSC => self.portsc(port),
                    _ => 0,
                }
            }
            o if (spec::RUNTIME_BASE..spec::RUNTIME_BASE + 0x40).contains(&o) => {
                match o - spec::RUNTIME_BASE {
                    spec::MFINDEX => {
                        if self.running() {
                            ((self.started.elapsed().as_micros() / 125) & 0x3fff) as u32
                        } else {
                            0
                        }
                    }
                    r => match r.wrapping_sub(spec::IR0_BASE) {
                        spec::IMAN => self.iman,
                        spec::IMOD => self.imod,
                        spec::ERSTSZ => self.erstsz,
                        r if r == spec::ERSTBA => self.erstba as u32,
                        r if r == spec::ERSTBA + 4 => (self.erstba >> 32) as u32,
                        r if r == spec::ERDP => self.erdp as u32,
                        r if r == spec::ERDP + 4 => (self.erdp >> 32) as u32,
                        _ => 0,
                    },
                }
            }
            _ => 0,
        }
    }

    /// Bits of the dword at `off` that a write of 1 clears or acts on:
    /// a partial write must not repeat them from the current value.
    fn action_bits(off: u64) -> u32 {
        if off == spec::OP_BASE + spec::USBSTS {
            spec::STS_W1C
        } else if off == spec::OP_BASE + spec::USBCMD {
            spec::CMD_HCRST | spec::CMD_LHCRST | spec::CMD_CSS | spec::CMD_CRS
        } else if (spec::PORT_BASE..spec::PORT_BASE + spec::PORT_STRIDE * spec::PORTS as u64)
            .contains(&off)
        {
            spec::PORT_CHANGES | spec::PORT_PED | spec::PORT_PR | spec::PORT_WPR | spec::PORT_LWS
        } else if off == spec::RUNTIME_BASE + spec::IR0_BASE + spec::IMAN {
            spec::IMAN_IP
        } else if off == spec::RUNTIME_BASE + spec::IR0_BASE + spec::ERDP {
            spec::ERDP_EHB as u32
        } else {
            0
        }
    }

    fn write_reg(&mut self, off: u64, v: u32) {
        if off >= spec::DOORBELL_BASE {
            let slot = ((off - spec::DOORBELL_BASE) / 4) as usize;
            if slot <= spec::MAX_SLOTS {
                self.doorbell(slot, v);
            }
            return;
        }
        let hi = |old: u64| (old & 0xffff_ffff) | u64::from(v) << 32;
        let lo = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        if (spec::PORT_BASE..spec::PORT_BASE + spec::PORT_STRIDE * spec::PORTS as u64)
            .contains(&off)
        {
            let port = ((off - spec::PORT_BASE) / spec::PORT_STRIDE) as usize + 1;
            if (off - spec::PORT_BASE) % spec::PORT_STRIDE == spec::PORTSC {
                self.write_portsc(port, v);
            }
            return;
        }
        if (spec::OP_BASE..spec::PORT_BASE).contains(&off) {
            match off - spec::OP_BASE {
                spec::USBCMD => self.write_usbcmd(v),
                spec::USBSTS => {
                    self.usbsts &= !(v & spec::STS_W1C);
                    self.update_irq();
                }
                spec::DNCTRL => self.dnctrl = v & 0xffff,
                spec::CRCR => self.write_crcr(lo(self.crcr_written)),
                r if r == spec::CRCR + 4 => self.write_crcr(hi(self.crcr_written)),
                r if r == spec::DCBAAP => self.dcbaap = lo(self.dcbaap) & !0x3f,
                r if r == spec::DCBAAP + 4 => self.dcbaap = hi(self.dcbaap),
                spec::CONFIG => self.config = v & 0x3ff,
                _ => {}
            }
            return;
        }
        if !(spec::RUNTIME_BASE + spec::IR0_BASE..spec::RUNTIME_BASE + 0x40).contains(&off) {
            return;
        }
        match off - spec::RUNTIME_BASE - spec::IR0_BASE {
            spec::IMAN => {
                if v & spec::IMAN_IP != 0 {
                    self.iman &= !spec::IMAN_IP;
                }
                self.iman = (self.iman & !spec::IMAN_IE) | (v & spec::IMAN_IE);
                self.update_irq();
            }
            spec::IMOD => self.imod = v,
            spec::ERSTSZ => self.erstsz = v & 0xffff,
            r if r == spec::ERSTBA => {
                self.erstba = lo(self.erstba) & !0x3f;
                self.load_erst();
            }
            r if r == spec::ERSTBA + 4 => {
                self.erstba = hi(self.erstba);
                self.load_erst();
            }
            r if r == spec::ERDP => {
                let ehb = self.erdp & spec::ERDP_EHB;
                let clear = u64::from(v) & spec::ERDP_EHB;
                self.erdp = (lo(self.erdp) & !spec::ERDP_EHB) | (ehb & !clear);
                self.flush_events();
            }
            r if r == spec::ERDP + 4 => {
                let ehb = self.erdp & spec::ERDP_EHB;
                self.erdp = (hi(self.erdp) & !spec::ERDP_EHB) | ehb;
                self.flush_events();
            }
            _ => {}
        }
    }

    fn write_usbcmd(&mut self, v: u32) {
        if v & spec::CMD_HCRST != 0 {
            self.reset_controller();
            return;
        }
        let was_running = self.usbcmd & spec::CMD_RS != 0;
        self.usbcmd = v & spec::CMD_WRITABLE;
        let run = v & spec::CMD_RS != 0;
        if run && !was_running {
            if self.usbsts & (spec::STS_HCE | spec::STS_HSE) != 0 {
                // A controller in error stays halted until reset.
                self.usbcmd &= !spec::CMD_RS;
            } else {
                self.usbsts &= !spec::STS_HCH;
                self.started = Instant::now();
                self.flush_events();
            }
        } else if !run {
            self.usbsts |= spec::STS_HCH;
            self.command_running = false;
        }
        self.update_irq();
    }

    /// CRCR (5.4.5): the pointer and cycle state take effect while the
    /// ring is stopped; CS and CA stop it with a Command Ring Stopped
    /// completion.
    fn write_crcr(&mut self, v: u64) {
        self.crcr_written = v;
        if self.command_running {
            if v & (spec::CRCR_CS | spec::CRCR_CA) != 0 {
                self.command_running = false;
                let at = self.command_ring.dequeue;
                self.command_completion(at, spec::CC_COMMAND_RING_STOPPED, 0);
            }
            return;
        }
        self.command_ring = Ring {
            dequeue: v & spec::CRCR_PTR_MASK,
            cycle: v & spec::CRCR_RCS != 0,
        };
    }

    fn mmio_offset(&self, addr: u64) -> Option<u64> {
        let r = self.cs.bar_region(spec::BAR_MMIO)?;
        addr.checked_sub(r.base).filter(|o| *o < spec::MMIO_LEN)
    }
}

impl BusDevice for Xhci {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        let Some(off) = self.mmio_offset(addr) else {
            data.fill(0xff);
            return;
        };
        for (i, b) in data.iter_mut().enumerate() {
            let o = off + i as u64;
            *b = (self.read_reg(o & !3) >> (8 * (o & 3))) as u8;
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let Some(off) = self.mmio_offset(addr) else {
            return;
        };
        self.inline.store(true, Ordering::SeqCst);
        // Dword by dword, low first (a 64-bit write is two).
        let mut i = 0usize;
        while i < data.len() {
            let dword = (off + i as u64) & !3;
            let mut value = 0u32;
            let mut mask = 0u32;
            while i < data.len() && (off + i as u64) & !3 == dword {
                let shift = 8 * ((off + i as u64) & 3);
                value |= u32::from(data[i]) << shift;
                mask |= 0xff << shift;
                i += 1;
            }
            if mask != u32::MAX {
                let keep = self.read_reg(dword) & !Self::action_bits(dword);
                value = (keep & !mask) | (value & mask);
            }
            self.write_reg(dword, value);
        }
        self.end_inline();
    }
}

impl PciFunction for Xhci {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.cs.write(offset, data);
        // INTx disable or MSI enable may have changed.
        self.update_irq();
    }
}
