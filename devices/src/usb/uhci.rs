//! The PIIX3 USB function (8086:7020 at 00:01.2): a UHCI host controller
//! (UHCI Design Guide 1.1) with two root ports, full and low speed.
//!
//! Software builds a 1024-entry frame list in guest memory; each frame
//! (1 ms) the controller walks the entry for the current frame number:
//! transfer descriptors (TDs) and queue heads (QHs) linked horizontally,
//! a QH's TDs vertically. [`Uhci::run_frame`] does one frame's walk; a
//! host timer calls it once per millisecond while the controller runs.
//!
//! Each active TD becomes a packet to the device with its address
//! ([`super::UsbPort::packet`]). A transfer the device has not answered yet
//! leaves the TD active (the guest sees a NAK) and is picked up on a later
//! frame. Schedules that loop are legal (full-speed bandwidth
//! reclamation): a frame ends when it comes back to an element without
//! any TD having completed since, or after [`MAX_ELEMENTS`] elements.
//! A schedule that points outside guest RAM halts the controller with
//! Host System Error; an illegal MaxLen with Host Controller Process Error.
//!
//! The same model is the ICH9 EHCI's UHCI companions ([`Uhci::companion`]):
//! then its two ports are two of the EHCI's, in a [`RootPortSet`] both
//! controllers see, and a device is on the UHCI only while the EHCI has
//! handed its port over.

use std::collections::HashSet;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::root_ports::{lock_ports, PortOwner, RootPortError, RootPortSet, SharedRootPorts};
use super::uhci_spec as spec;
use super::usb_spec as ch9;
use super::{
    read_registers, write_registers, PacketResult, Speed, TransferKind, TransferStatus, UsbDevice,
};
use crate::bus::BusDevice;
use crate::irq::IrqLine;
use crate::pci::config::COMMAND_BUS_MASTER;
use crate::pci::{BarKind, ConfigSpace, PciFunction};
use crate::{guest_error, GuestMemory};

/// The most schedule elements (TDs and QHs) looked at in one frame.
pub const MAX_ELEMENTS: usize = 4096;

pub type UhciError = RootPortError;

/// What tells one UHCI function from another on the PCI bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UhciIdentity {
    pub device_id: u16,
    pub revision: u8,
    /// 1-4 = INTA-INTD.
    pub interrupt_pin: u8,
    /// Function 0 of a multi-function slot sets the header's bit 7.
    pub multifunction: bool,
}

impl UhciIdentity {
    /// PIIX3's USB function.
    pub const PIIX3: Self = Self {
        device_id: spec::DEVICE_PIIX3_UHCI,
        revision: spec::REVISION,
        interrupt_pin: spec::INTERRUPT_PIN,
        multifunction: false,
    };
}

/// The UHCI's own status bits of one root port.
#[derive(Debug, Default, Clone, Copy)]
struct RootPort {
    /// PORTSC bits kept: CSC, PE, PEC, RD, PR, SUSP.
    sc: u16,
    /// The port set's generation of this port when last looked at.
    seen: u64,
}

impl RootPort {
    /// PORTSC with a device of `speed` on the port, if any.
    fn portsc(&self, speed: Option<Speed>) -> u16 {
        let mut v = self.sc | spec::PORT_ALWAYS_ONE;
        if let Some(speed) = speed {
            v |= spec::PORT_CCS;
            if speed == Speed::Low {
                v |= spec::PORT_LSDA;
            }
            // Idle line state J: D+ high at full speed, D- at low speed;
            // SE0 while the port is in reset.
            if self.sc & spec::PORT_PR == 0 {
                v |= if speed == Speed::Low {
                    spec::PORT_LS_DMINUS
                } else {
                    spec::PORT_LS_DPLUS
                };
            }
        }
        v
    }
}

/// What became of one TD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TdOutcome {
    /// Done: the queue advances.
    Completed,
    /// Done but short with SPD set: the queue stops here.
    Short,
    /// Not active, or still running (NAK): try the next queue.
    Skipped,
    /// Ended with an error: the queue is halted.
    Failed,
    /// The controller halted (HSE/HCPE).
    Halted,
}

/// The PIIX3 UHCI controller.
pub struct Uhci {
    cs: ConfigSpace,
    mem: GuestMemory,
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    cmd: u16,
    sts: u16,
    intr: u16,
    frnum: u16,
    flbase: u32,
    sofmod: u8,
    ports: [RootPort; spec::PORTS],
    /// Where the devices are: the port set, and the index in it of this
    /// controller's first port.
    shared: SharedRootPorts,
    first: usize,
    /// Whether the port set is this controller's alone (PIIX3).
    own_ports: bool,
    /// Why USBINT is set: an IOC TD, a short packet.
    int_ioc: bool,
    int_short: bool,
    /// Called when software sets Run/Stop, to wake a sleeping frame timer.
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Uhci {
    /// PIIX3's USB function with two root ports of its own.
    pub fn new(mem: GuestMemory, irq: Arc<dyn IrqLine>) -> Self {
        let ports = RootPortSet::new(spec::PORTS, false);
        let mut u = Self::companion(mem, irq, UhciIdentity::PIIX3, ports, 0);
        u.own_ports = true;
        u
    }

    /// A UHCI whose two root ports are ports `first` and `first + 1`
    /// (0-based) of `ports`, shared with an EHCI.
    pub fn companion(
        mem: GuestMemory,
        irq: Arc<dyn IrqLine>,
        id: UhciIdentity,
        ports: SharedRootPorts,
        first: usize,
    ) -> Self {
        let mut cs = ConfigSpace::new(
            spec::VENDOR_INTEL,
            id.device_id,
            spec::CLASS_UHCI,
            id.revision,
        );
        cs.set_subsystem(0x1af4, 0x1100);
        cs.set_interrupt_pin(id.interrupt_pin);
        if id.multifunction {
            cs.set_header_multifunction();
        }
        cs.add_bar(spec::BAR_IO, BarKind::Io, spec::IO_LEN);
        cs.set_u8(spec::REG_SBRN, spec::SBRN_USB10);
        cs.set_u16(spec::REG_LEGSUP, spec::LEGSUP_DEFAULT);
        cs.set_wmask_u16(spec::REG_LEGSUP, 0xffff);
        let mut u = Self {
            cs,
            mem,
            irq,
            irq_level: false,
            cmd: 0,
            sts: 0,
            intr: 0,
            frnum: 0,
            flbase: 0,
            sofmod: 0,
            ports: Default::default(),
            shared: ports,
            first,
            own_ports: false,
            int_ioc: false,
            int_short: false,
            wake: None,
        };
        u.reset_registers();
        u
    }

    /// Called whenever software starts the schedule, and (for a UHCI
    /// with ports of its own) when a device completes a transfer.
    pub fn set_wake(&mut self, wake: Option<Arc<dyn Fn() + Send + Sync>>) {
        if self.own_ports {
            lock_ports(&self.shared).set_waker(wake.clone());
        }
        self.wake = wake;
    }

    /// Plugs `device` into root port `port` (1 or 2): a connect status
    /// change the guest sees on its next look at PORTSC.
    pub fn attach(&mut self, port: usize, device: Box<dyn UsbDevice>) -> Result<(), UhciError> {
        let i = self.port_index(port)?;
        lock_ports(&self.shared).attach(self.first + i + 1, device)?;
        self.sync_ports();
        Ok(())
    }

    /// Unplugs the device on `port`: the port is disabled, connect and
    /// enable changes are flagged, transfers in flight end.
    pub fn detach(&mut self, port: usize) -> Result<(), UhciError> {
        let i = self.port_index(port)?;
        lock_ports(&self.shared)
            .detach(self.first + i + 1)
            .map_err(|_| UhciError::PortEmpty(port))?;
        self.sync_ports();
        Ok(())
    }

    /// The first root port without a device.
    pub fn free_port(&self) -> Option<usize> {
        lock_ports(&self.shared)
            .free_port(self.first..self.first + spec::PORTS)
            .map(|p| p - self.first)
    }

    fn port_index(&self, port: usize) -> Result<usize, UhciError> {
        port.checked_sub(1)
            .filter(|i| *i < spec::PORTS)
            .ok_or(UhciError::NoSuchPort {
                port,
                count: spec::PORTS,
            })
    }

    /// Brings the ports' status in line with the port set: a device that
    /// came, went or changed controller since the last look is a connect
    /// status change, and a port whose device is gone is disabled.
    fn sync_ports(&mut self) {
        let set = lock_ports(&self.shared);
        let mut changed = false;
        for (i, p) in self.ports.iter_mut().enumerate() {
            let gen = set.generation(self.first + i);
            if gen == p.seen {
                continue;
            }
            p.seen = gen;
            p.sc |= spec::PORT_CSC;
            changed = true;
            if set.owner(self.first + i) != Some(PortOwner::Companion)
                || !set.has_device(self.first + i)
            {
                if p.sc & spec::PORT_PE != 0 {
                    p.sc |= spec::PORT_PEC;
                }
                p.sc &= !spec::PORT_PE;
            }
        }
        drop(set);
        if changed {
            self.set_resume_detect();
        }
    }

    /// The speed of the device this controller sees on port `i`.
    fn device_speed(&self, i: usize) -> Option<Speed> {
        lock_ports(&self.shared)
            .device(self.first + i, PortOwner::Companion)
            .map(|d| d.speed())
    }

    /// A connect change while the bus is globally suspended resumes it
    /// (2.1.2 Resume Detect).
    fn set_resume_detect(&mut self) {
        if self.cmd & spec::CMD_EGSM != 0 {
            self.sts |= spec::STS_RESUME;
            self.update_irq();
        }
    }

    /// True while the schedule runs (Run/Stop set, not halted).
    pub fn running(&self) -> bool {
        self.cmd & spec::CMD_RS != 0 && self.sts & spec::STS_HCH == 0
    }

    fn reset_registers(&mut self) {
        self.cmd = 0;
        self.sts = spec::STS_HCH;
        self.intr = 0;
        self.frnum = 0;
        self.flbase = 0;
        self.sofmod = spec::SOFMOD_DEFAULT;
        self.int_ioc = false;
        self.int_short = false;
        for i in 0..spec::PORTS {
            let present = self.device_speed(i).is_some();
            self.ports[i].sc = if present { spec::PORT_CSC } else { 0 };
        }
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let s = self.sts;
        let level = (s & spec::STS_USBINT != 0
            && ((self.int_ioc && self.intr & spec::INTR_IOC != 0)
                || (self.int_short && self.intr & spec::INTR_SHORT_PACKET != 0)))
            || (s & spec::STS_ERROR != 0 && self.intr & spec::INTR_TIMEOUT_CRC != 0)
            || (s & spec::STS_RESUME != 0 && self.intr & spec::INTR_RESUME != 0)
            || s & (spec::STS_HSE | spec::STS_HCPE) != 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Stops the schedule on a fatal error (2.1.2 HSE, HCPE).
    fn halt(&mut self, why: u16) {
        self.sts |= why | spec::STS_HCH;
        self.cmd &= !spec::CMD_RS;
        self.update_irq();
    }

    fn read_u32(&mut self, addr: u64) -> Option<u32> {
        match self.mem.read_obj::<u32>(GuestAddress(addr)) {
            Ok(v) => Some(u32::from_le(v)),
            Err(_) => {
                guest_error!("UHCI: schedule read at {addr:#x} is outside guest RAM");
                self.halt(spec::STS_HSE);
                None
            }
        }
    }

    fn write_u32(&mut self, addr: u64, v: u32) -> bool {
        if self.mem.write_obj(v.to_le(), GuestAddress(addr)).is_err() {
            guest_error!("UHCI: schedule write at {addr:#x} is outside guest RAM");
            self.halt(spec::STS_HSE);
            return false;
        }
        true
    }

    /// Runs one frame: walks the frame list entry of the current frame
    /// number, then advances it. Does nothing while stopped.
    pub fn run_frame(&mut self) -> bool {
        self.sync_ports();
        let progress = self.walk_frame(self.frnum);
        if self.running() {
            self.advance_frame();
        }
        progress
    }

    /// Walks the frame that just ran once more, as a controller with
    /// full-speed bandwidth reclamation goes round its bulk queues again
    /// while frame time is left: TDs the guest queued since are done
    /// within the same frame. True when any TD completed.
    pub fn walk_again(&mut self) -> bool {
        self.walk_frame(self.frnum.wrapping_sub(1) & spec::FRNUM_MASK)
    }

    fn walk_frame(&mut self, frame: u16) -> bool {
        if !self.running() || self.cs.command() & COMMAND_BUS_MASTER == 0 {
            // Without bus mastering the controller cannot fetch anything.
            return false;
        }
        let entry = u64::from(self.flbase) + u64::from(frame % spec::FRAME_LIST_ENTRIES) * 4;
        let Some(link) = self.read_u32(entry) else {
            return false;
        };
        self.walk(link)
    }

    fn advance_frame(&mut self) {
        self.frnum = (self.frnum + 1) & spec::FRNUM_MASK;
        self.update_irq();
    }

    fn walk(&mut self, first: u32) -> bool {
        let mut link = first;
        // Elements seen since the last TD completed: coming back to one
        // means the rest of the frame would find nothing new.
        let mut seen: HashSet<u32> = HashSet::new();
        let mut budget = MAX_ELEMENTS;
        let mut progress = false;
        while link & spec::LINK_TERMINATE == 0 {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let addr = link & spec::LINK_ADDR_MASK;
            if !seen.insert(addr) {
                break;
            }
            if link & spec::LINK_QH != 0 {
                let Some(head) = self.read_u32(u64::from(addr) + spec::QH_LINK) else {
                    return progress;
                };
                match self.run_queue(addr, &mut budget) {
                    None => return progress,
                    Some(true) => {
                        progress = true;
                        seen.clear()
                    }
                    Some(false) => {}
                }
                link = head;
            } else {
                let Some(next) = self.read_u32(u64::from(addr) + spec::TD_LINK) else {
                    return progress;
                };
                match self.run_td(addr) {
                    TdOutcome::Halted => return progress,
                    TdOutcome::Completed | TdOutcome::Short => {
                        progress = true;
                        seen.clear()
                    }
                    _ => {}
                }
                link = next;
            }
        }
        progress
    }

    /// Runs the TDs of the queue head at `qh` (3.4.2): each completed TD
    /// advances the element pointer; depth-first links go on down the
    /// queue. `Some(progress)`, or `None` when the controller halted.
    fn run_queue(&mut self, qh: u32, budget: &mut usize) -> Option<bool> {
        let mut progress = false;
        loop {
            let element = self.read_u32(u64::from(qh) + spec::QH_ELEMENT)?;
            if element & spec::LINK_TERMINATE != 0 || element & spec::LINK_QH != 0 {
                // Empty, or a queue nested vertically (not used by the
                // drivers this models; treated as empty).
                return Some(progress);
            }
            if *budget == 0 {
                return Some(progress);
            }
            *budget -= 1;
            let td = element & spec::LINK_ADDR_MASK;
            match self.run_td(td) {
                TdOutcome::Halted => return None,
                TdOutcome::Completed => {
                    progress = true;
                    let next = self.read_u32(u64::from(td) + spec::TD_LINK)?;
                    if !self.write_u32(u64::from(qh) + spec::QH_ELEMENT, next) {
                        return None;
                    }
                    if next & spec::LINK_DEPTH_FIRST == 0 || next & spec::LINK_TERMINATE != 0 {
                        return Some(progress);
                    }
                }
                TdOutcome::Short => return Some(true),
                TdOutcome::Skipped | TdOutcome::Failed => return Some(progress),
            }
        }
    }

    /// Executes the TD at `td` (3.2).
    fn run_td(&mut self, td: u32) -> TdOutcome {
        let base = u64::from(td);
        let Some(ctrl) = self.read_u32(base + spec::TD_CTRL) else {
            return TdOutcome::Halted;
        };
        if ctrl & spec::TD_STATUS_ACTIVE == 0 {
            return TdOutcome::Skipped;
        }
        let Some(token) = self.read_u32(base + spec::TD_TOKEN) else {
            return TdOutcome::Halted;
        };
        let Some(buffer) = self.read_u32(base + spec::TD_BUFFER) else {
            return TdOutcome::Halted;
        };
        let maxlen_field = token >> spec::TOKEN_MAXLEN_SHIFT;
        if maxlen_field != spec::MAXLEN_NULL && maxlen_field > spec::MAXLEN_LIMIT {
            guest_error!("UHCI: TD at {td:#x} has illegal MaxLen {maxlen_field:#x}");
            self.halt(spec::STS_HCPE);
            return TdOutcome::Halted;
        }
        let max_len = ((maxlen_field + 1) & spec::TD_ACTLEN_MASK) as usize;
        let pid = (token & spec::TOKEN_PID_MASK) as u8;
        let address = ((token >> spec::TOKEN_ADDR_SHIFT) & 0x7f) as u8;
        let endpoint = ((token >> spec::TOKEN_ENDP_SHIFT) & 0x0f) as u8;
        if !matches!(pid, ch9::PID_IN | ch9::PID_OUT | ch9::PID_SETUP) {
            guest_error!("UHCI: TD at {td:#x} has an unknown PID {pid:#x}");
            self.halt(spec::STS_HCPE);
            return TdOutcome::Halted;
        }
        let mut out = Vec::new();
        if pid != ch9::PID_IN && max_len > 0 {
            out.resize(max_len, 0);
            if self
                .mem
                .read_slice(&mut out, GuestAddress(u64::from(buffer)))
                .is_err()
            {
                guest_error!(
                    "UHCI: TD at {td:#x}: buffer {buffer:#x}+{max_len} is outside guest RAM"
                );
                self.halt(spec::STS_HSE);
                return TdOutcome::Halted;
            }
        }
        let kind = TransferKind::Bulk;
        let key = u64::from(td) | u64::from(token) << 32;
        let enabled = (0..spec::PORTS)
            .filter(|i| {
                let sc = self.ports[*i].sc;
                sc & spec::PORT_PE != 0 && sc & spec::PORT_SUSP == 0
            })
            .map(|i| self.first + i);
        let result = match lock_ports(&self.shared).find(PortOwner::Companion, enabled, address) {
            Some(d) => d.packet(pid, endpoint, &out, max_len, key, kind),
            // Nobody answers: a timeout (3.2.2 CRC/Time Out).
            None => PacketResult::Done(TransferStatus::Timeout, Vec::new()),
        };
        let (status, data) = match result {
            PacketResult::Pending => return TdOutcome::Skipped,
            PacketResult::Done(TransferStatus::Nak, _) => {
                if ctrl & spec::TD_STATUS_NAK == 0
                    && !self.write_u32(base + spec::TD_CTRL, ctrl | spec::TD_STATUS_NAK)
                {
                    return TdOutcome::Halted;
                }
                return TdOutcome::Skipped;
            }
            PacketResult::Done(s, d) => (s, d),
        };
        let mut new_ctrl = ctrl
            & !(spec::TD_STATUS_ACTIVE | spec::TD_STATUS_NAK | spec::TD_ACTLEN_MASK | 0x00ff_0000);
        let outcome = match status {
            TransferStatus::Success => {
                let len = if pid == ch9::PID_IN {
                    data.len()
                } else {
                    max_len
                };
                if pid == ch9::PID_IN
                    && !data.is_empty()
                    && self
                        .mem
                        .write_slice(&data, GuestAddress(u64::from(buffer)))
                        .is_err()
                {
                    guest_error!(
                        "UHCI: TD at {td:#x}: buffer {buffer:#x}+{} is outside guest RAM",
                        data.len()
                    );
                    self.halt(spec::STS_HSE);
                    return TdOutcome::Halted;
                }
                new_ctrl |= (len as u32).wrapping_sub(1) & spec::TD_ACTLEN_MASK;
                if ctrl & spec::TD_IOC != 0 {
                    self.int_ioc = true;
                    self.sts |= spec::STS_USBINT;
                }
                if pid == ch9::PID_IN && len < max_len && ctrl & spec::TD_SPD != 0 {
                    self.int_short = true;
                    self.sts |= spec::STS_USBINT;
                    TdOutcome::Short
                } else {
                    TdOutcome::Completed
                }
            }
            other => {
                new_ctrl |= spec::TD_STATUS_STALLED;
                match other {
                    TransferStatus::Babble => new_ctrl |= spec::TD_STATUS_BABBLE,
                    TransferStatus::Timeout => new_ctrl |= spec::TD_STATUS_CRC_TIMEOUT,
                    _ => {}
                }
                // The error count ends at zero with the TD retired.
                new_ctrl &= !spec::TD_CERR_MASK;
                new_ctrl |= spec::TD_ACTLEN_MASK;
                self.sts |= spec::STS_ERROR;
                if ctrl & spec::TD_IOC != 0 {
                    self.int_ioc = true;
                    self.sts |= spec::STS_USBINT;
                }
                TdOutcome::Failed
            }
        };
        if !self.write_u32(base + spec::TD_CTRL, new_ctrl) {
            return TdOutcome::Halted;
        }
        outcome
    }

    fn reg_value(&self, reg: u64) -> u32 {
        match reg {
            spec::USBCMD => u32::from(self.cmd),
            spec::USBSTS => u32::from(self.sts),
            spec::USBINTR => u32::from(self.intr),
            spec::FRNUM => u32::from(self.frnum),
            spec::FLBASEADD => self.flbase,
            spec::SOFMOD => u32::from(self.sofmod),
            r if (spec::PORTSC1..spec::PORTSC1 + 2 * spec::PORTS as u64).contains(&r) => {
                let i = ((r - spec::PORTSC1) / 2) as usize;
                u32::from(self.ports[i].portsc(self.device_speed(i)))
            }
            _ => 0,
        }
    }

    /// The register holding byte `off`: its offset and width.
    fn reg_at(off: u64) -> (u64, u64) {
        match off {
            0x08..=0x0b => (spec::FLBASEADD, 4),
            0x0c => (spec::SOFMOD, 1),
            0x0d..=0x0f => (off, 1),
            _ => (off & !1, 2),
        }
    }

    fn write_reg(&mut self, reg: u64, value: u32, mask: u32) {
        let merge = |old: u32| (old & !mask) | (value & mask);
        match reg {
            spec::USBCMD => {
                let old = self.cmd;
                let new = merge(u32::from(old)) as u16 & spec::CMD_WRITABLE;
                if new & spec::CMD_HCRESET != 0 {
                    // Host controller reset (2.1.1): registers to their
                    // defaults, ports disabled; the bit clears when done.
                    self.reset_registers();
                    return;
                }
                if new & spec::CMD_GRESET != 0 {
                    self.reset_registers();
                    self.cmd = spec::CMD_GRESET;
                    return;
                }
                self.cmd = new;
                if new & spec::CMD_RS != 0 {
                    if self.sts & spec::STS_HCH != 0 {
                        self.sts &= !spec::STS_HCH;
                        if let Some(w) = &self.wake {
                            w();
                        }
                    }
                } else {
                    self.sts |= spec::STS_HCH;
                }
                if new & spec::CMD_FGR == 0 && old & spec::CMD_FGR != 0 {
                    self.sts &= !spec::STS_RESUME;
                }
                self.update_irq();
            }
            spec::USBSTS => {
                let clear = (value & mask) as u16 & spec::STS_W1C;
                self.sts &= !clear;
                if self.sts & spec::STS_USBINT == 0 {
                    self.int_ioc = false;
                    self.int_short = false;
                }
                self.update_irq();
            }
            spec::USBINTR => {
                self.intr = merge(u32::from(self.intr)) as u16 & spec::INTR_MASK;
                self.update_irq();
            }
            spec::FRNUM if self.sts & spec::STS_HCH != 0 => {
                self.frnum = merge(u32::from(self.frnum)) as u16 & spec::FRNUM_MASK;
            }
            spec::FLBASEADD => self.flbase = merge(self.flbase) & spec::FLBASE_MASK,
            spec::SOFMOD => self.sofmod = (value & 0x7f) as u8,
            r if (spec::PORTSC1..spec::PORTSC1 + 2 * spec::PORTS as u64).contains(&r) => {
                let i = ((r - spec::PORTSC1) / 2) as usize;
                let v = value as u16;
                let m = mask as u16;
                let present = self.device_speed(i).is_some();
                let p = &mut self.ports[i];
                p.sc &= !(v & m & spec::PORT_W1C);
                let was_reset = p.sc & spec::PORT_PR != 0;
                let writable = m & spec::PORT_WRITABLE;
                p.sc = (p.sc & !writable) | (v & writable);
                if !present {
                    // A port with nothing on it cannot be enabled.
                    p.sc &= !spec::PORT_PE;
                }
                let now_reset = p.sc & spec::PORT_PR != 0;
                if now_reset {
                    // Reset signalling disables the port (2.1.7).
                    p.sc &= !spec::PORT_PE;
                }
                if was_reset && !now_reset {
                    let at = self.first + i;
                    if let Some(d) = lock_ports(&self.shared).device(at, PortOwner::Companion) {
                        d.reset();
                    }
                }
                if p.sc & spec::PORT_RD != 0 && p.sc & spec::PORT_SUSP == 0 {
                    p.sc &= !spec::PORT_RD;
                }
            }
            _ => {}
        }
    }

    fn io_offset(&self, addr: u64) -> Option<u64> {
        let r = self.cs.bar_region(spec::BAR_IO)?;
        addr.checked_sub(r.base).filter(|o| *o < spec::IO_LEN)
    }
}

impl BusDevice for Uhci {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        let Some(off) = self.io_offset(addr) else {
            data.fill(0xff);
            return;
        };
        self.sync_ports();
        read_registers(off, data, |o| Self::reg_at(o).0, |r| self.reg_value(r));
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let Some(off) = self.io_offset(addr) else {
            return;
        };
        self.sync_ports();
        write_registers(off, data, Self::reg_at, |r, v, m| self.write_reg(r, v, m));
    }
}

impl PciFunction for Uhci {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }
}
