//! An EHCI 1.0 host controller as the ICH9 presents it (8086:293a at
//! function 7 of its slot), with six root ports shared with three UHCI
//! companions at functions 0-2 ([`super::uhci::Uhci::companion`]).
//!
//! Port routing (EHCI 1.0 section 4.2): while CONFIGFLAG is 0 every port
//! is the companions'. Once software sets it, ports are the EHCI's until
//! software sets a port's PORT_OWNER, which it does for a low-speed device
//! (line status K before reset) and for a full-speed one (the port is not
//! enabled after reset). High-speed devices stay on the EHCI. The devices
//! live in a [`RootPortSet`] both controllers see, so a device is on
//! exactly one of them.
//!
//! Schedules (chapter 4): each frame (1 ms, eight micro-frames) the
//! controller walks the periodic frame list entry of the current frame
//! (interrupt queue heads; iTDs, siTDs and FSTNs are not supported and are
//! skipped) and the asynchronous ring of queue heads from ASYNCLISTADDR
//! until it comes back to where it started. A queue head runs its current
//! qTD from the overlay, writes the result back and advances to the next
//! qTD (the alternate one after a short packet). A whole qTD (up to 20
//! KiB) is one request to the device ([`super::UsbPort::packet`]); a
//! transfer the device has not answered yet leaves the qTD active.
//!
//! Guest mistakes are bounded: a ring that never comes back to its start,
//! a qTD visited twice in one walk, more than [`MAX_ELEMENTS`] structures
//! in one walk, or any structure or buffer outside guest RAM stop the
//! controller with Host System Error.

use std::collections::HashSet;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::ehci_spec as spec;
use super::root_ports::{lock_ports, PortOwner, RootPortError, RootPortSet, SharedRootPorts};
use super::usb_spec as ch9;
use super::{
    read_registers, write_registers, PacketResult, Speed, TransferKind, TransferStatus, UsbDevice,
};
use crate::bus::BusDevice;
use crate::irq::IrqLine;
use crate::pci::config::COMMAND_BUS_MASTER;
use crate::pci::{BarKind, ConfigSpace, PciFunction};
use crate::{guest_error, GuestMemory};

/// The most schedule structures (QHs, qTDs, periodic elements) looked at
/// in one walk of one schedule.
pub const MAX_ELEMENTS: usize = 4096;

type Waker = Arc<dyn Fn() + Send + Sync>;

/// The EHCI's own status bits of one root port.
#[derive(Debug, Default, Clone, Copy)]
struct RootPort {
    /// PORTSC bits kept: CSC, PED, PEDC, OCC, FPR, SUSPEND, RESET and the
    /// indicator, test and wake fields.
    sc: u32,
    /// The port set's generation of this port when last looked at.
    seen: u64,
}

/// How one qTD went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QtdOutcome {
    /// The device has not answered (or NAKed): the qTD stays active.
    Pending,
    /// Retired; the queue goes on (after a short packet, to the alternate
    /// next qTD).
    Retired,
    /// Retired with an error: the queue head is halted.
    Halted,
}

/// A queue head's words as the controller works on them (3.6).
#[derive(Debug, Clone, Copy)]
struct QueueHead {
    addr: u32,
    chars: u32,
    current: u32,
    /// The transfer overlay: next, alternate next, token, five buffer
    /// pointers.
    overlay: [u32; spec::QTD_DWORDS],
}

/// The ICH9 EHCI controller.
pub struct Ehci {
    cs: ConfigSpace,
    mem: GuestMemory,
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    cmd: u32,
    sts: u32,
    intr: u32,
    frindex: u32,
    ctrldsseg: u32,
    periodic_base: u32,
    async_addr: u32,
    configflag: u32,
    ports: [RootPort; spec::PORTS],
    shared: SharedRootPorts,
    wake: Option<Waker>,
    warned_isochronous: bool,
}

impl Ehci {
    pub fn new(mem: GuestMemory, irq: Arc<dyn IrqLine>) -> Self {
        let mut cs = ConfigSpace::new(
            spec::VENDOR_INTEL,
            spec::DEVICE_ICH9_EHCI1,
            spec::CLASS_EHCI,
            spec::REVISION,
        );
        cs.set_subsystem(0x1af4, 0x1100);
        cs.set_interrupt_pin(spec::INTERRUPT_PIN);
        cs.add_bar(spec::BAR_MMIO, BarKind::Memory32, spec::MMIO_LEN);
        cs.set_u8(spec::REG_SBRN, spec::SBRN_USB20);
        cs.set_u8(spec::REG_FLADJ, spec::FLADJ_DEFAULT);
        cs.set_wmask_u8(spec::REG_FLADJ, 0x3f);
        // Legacy support capability: neither BIOS nor OS owns the
        // controller until one of them says so (2.1.7).
        cs.set_u32(spec::EECP, spec::USBLEGSUP_CAP_ID);
        cs.set_wmask_u32(
            spec::EECP,
            spec::USBLEGSUP_BIOS_OWNED | spec::USBLEGSUP_OS_OWNED,
        );
        cs.set_wmask_u32(spec::USBLEGCTLSTS, 0x0000_ffff);
        let mut e = Self {
            cs,
            mem,
            irq,
            irq_level: false,
            cmd: 0,
            sts: 0,
            intr: 0,
            frindex: 0,
            ctrldsseg: 0,
            periodic_base: 0,
            async_addr: 0,
            configflag: 0,
            ports: Default::default(),
            shared: RootPortSet::new(spec::PORTS, true),
            wake: None,
            warned_isochronous: false,
        };
        e.reset_registers();
        e
    }

    /// The root ports, for the companion UHCIs (ports 2n and 2n+1 are
    /// companion n's).
    pub fn root_ports(&self) -> SharedRootPorts {
        self.shared.clone()
    }

    /// Called when software starts the schedule or a device completes a
    /// transfer, to wake a sleeping frame timer.
    pub fn set_wake(&mut self, wake: Option<Waker>) {
        lock_ports(&self.shared).set_waker(wake.clone());
        self.wake = wake;
    }

    /// Plugs `device` into root port `port` (1-6). It shows up on the
    /// EHCI or the companion, whichever owns the port.
    pub fn attach(&mut self, port: usize, device: Box<dyn UsbDevice>) -> Result<(), RootPortError> {
        lock_ports(&self.shared).attach(port, device)?;
        self.sync_ports();
        Ok(())
    }

    /// Unplugs the device on root port `port` (1-6).
    pub fn detach(&mut self, port: usize) -> Result<(), RootPortError> {
        lock_ports(&self.shared).detach(port)?;
        self.sync_ports();
        Ok(())
    }

    /// The first root port without a device.
    pub fn free_port(&self) -> Option<usize> {
        lock_ports(&self.shared).free_port(0..spec::PORTS)
    }

    /// True while the schedules run (Run/Stop set, not halted).
    pub fn running(&self) -> bool {
        self.cmd & spec::CMD_RS != 0 && self.sts & spec::STS_HCHALTED == 0
    }

    fn reset_registers(&mut self) {
        self.cmd = spec::CMD_DEFAULT;
        self.sts = spec::STS_HCHALTED;
        self.intr = 0;
        self.frindex = 0;
        self.ctrldsseg = 0;
        self.periodic_base = 0;
        self.async_addr = 0;
        self.set_configflag(0);
        for p in &mut self.ports {
            p.sc = 0;
        }
        self.update_irq();
    }

    /// CONFIGFLAG routes every port: 1 to the EHCI, 0 to the companions
    /// (2.3.8, 4.2.1).
    fn set_configflag(&mut self, v: u32) {
        let v = v & spec::CONFIGFLAG_CF;
        if v == self.configflag && v != 0 {
            return;
        }
        self.configflag = v;
        let owner = if v != 0 {
            PortOwner::Ehci
        } else {
            PortOwner::Companion
        };
        let mut set = lock_ports(&self.shared);
        for i in 0..spec::PORTS {
            set.set_owner(i, owner);
        }
        drop(set);
        self.sync_ports();
    }

    /// Brings the ports' status in line with the port set: a device that
    /// came, went or changed controller is a connect status change, and
    /// a port whose device is gone is disabled.
    fn sync_ports(&mut self) {
        let set = lock_ports(&self.shared);
        let mut changed = false;
        for (i, p) in self.ports.iter_mut().enumerate() {
            let gen = set.generation(i);
            if gen == p.seen {
                continue;
            }
            p.seen = gen;
            p.sc |= spec::PORT_CSC;
            changed = true;
            if set.owner(i) != Some(PortOwner::Ehci) || !set.has_device(i) {
                if p.sc & spec::PORT_PED != 0 {
                    p.sc |= spec::PORT_PEDC;
                }
                p.sc &= !spec::PORT_PED;
            }
        }
        drop(set);
        if changed {
            self.sts |= spec::STS_PCD;
            self.update_irq();
        }
    }

    fn update_irq(&mut self) {
        let level = self.sts & self.intr & spec::INTR_MASK != 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Stops the schedules on a fatal error (2.3.2 Host System Error).
    fn host_system_error(&mut self) {
        self.sts |= spec::STS_HSE | spec::STS_HCHALTED;
        self.cmd &= !spec::CMD_RS;
        self.update_irq();
    }

    fn read_u32(&mut self, addr: u64) -> Option<u32> {
        match self.mem.read_obj::<u32>(GuestAddress(addr)) {
            Ok(v) => Some(u32::from_le(v)),
            Err(_) => {
                guest_error!("EHCI: schedule read at {addr:#x} is outside guest RAM");
                self.host_system_error();
                None
            }
        }
    }

    fn write_u32(&mut self, addr: u64, v: u32) -> bool {
        if self.mem.write_obj(v.to_le(), GuestAddress(addr)).is_err() {
            guest_error!("EHCI: schedule write at {addr:#x} is outside guest RAM");
            self.host_system_error();
            return false;
        }
        true
    }

    fn read_dwords<const N: usize>(&mut self, addr: u64) -> Option<[u32; N]> {
        let mut out = [0u32; N];
        for (i, w) in out.iter_mut().enumerate() {
            *w = self.read_u32(addr + 4 * i as u64)?;
        }
        Some(out)
    }

    /// Runs one frame: the periodic schedule's entry for the current
    /// frame, then the asynchronous ring, then advances FRINDEX by eight
    /// micro-frames. True when any qTD retired.
    pub fn run_frame(&mut self) -> bool {
        self.sync_ports();
        if !self.running() {
            return false;
        }
        let mut progress = false;
        if self.can_fetch() && self.cmd & spec::CMD_PSE != 0 {
            progress |= self.walk_periodic();
        }
        if self.can_fetch() && self.cmd & spec::CMD_ASE != 0 {
            progress |= self.walk_async();
        }
        if self.running() {
            let old = self.frindex;
            self.frindex = (old + spec::MICROFRAMES_PER_FRAME) & spec::FRINDEX_MASK;
            // The frame list index rolls over every 1024 frames (2.3.2).
            if (old ^ self.frindex) & (spec::FRAME_LIST_ENTRIES * spec::MICROFRAMES_PER_FRAME) != 0
            {
                self.sts |= spec::STS_FLR;
            }
            self.update_irq();
        }
        progress
    }

    /// Goes round the asynchronous ring once more, as the controller does
    /// while frame time is left: qTDs the guest queued since are done
    /// within the same frame. True when any qTD retired.
    pub fn walk_again(&mut self) -> bool {
        if !self.can_fetch() || self.cmd & spec::CMD_ASE == 0 {
            return false;
        }
        self.walk_async()
    }

    fn can_fetch(&self) -> bool {
        // Without bus mastering the controller cannot fetch anything.
        self.running() && self.cs.command() & COMMAND_BUS_MASTER != 0
    }

    /// The periodic frame list entry of this frame and what it links to
    /// (4.6, 4.7).
    fn walk_periodic(&mut self) -> bool {
        let frame = (self.frindex / spec::MICROFRAMES_PER_FRAME) % spec::FRAME_LIST_ENTRIES;
        let entry = u64::from(self.periodic_base) + 4 * u64::from(frame);
        let Some(mut link) = self.read_u32(entry) else {
            return false;
        };
        let mut seen = HashSet::new();
        let mut budget = MAX_ELEMENTS;
        let mut progress = false;
        while link & spec::LINK_TERMINATE == 0 {
            let addr = link & spec::LINK_ADDR_MASK;
            if !seen.insert(addr) || budget == 0 {
                guest_error!("EHCI: the periodic schedule of frame {frame} loops at {addr:#x}");
                self.host_system_error();
                return progress;
            }
            budget -= 1;
            let Some(next) = self.read_u32(u64::from(addr)) else {
                return progress;
            };
            match (link & spec::LINK_TYPE_MASK) >> spec::LINK_TYPE_SHIFT {
                spec::LINK_TYPE_QH => {
                    match self.run_queue(addr, TransferKind::Interrupt, &mut budget) {
                        Some(p) => progress |= p,
                        None => return progress,
                    }
                }
                _ => {
                    if !self.warned_isochronous {
                        self.warned_isochronous = true;
                        guest_error!(
                            "EHCI: iTD, siTD and FSTN periodic elements are not supported; skipping the one at {addr:#x}"
                        );
                    }
                }
            }
            link = next;
        }
        progress
    }

    /// The asynchronous ring from ASYNCLISTADDR round to itself (4.8).
    fn walk_async(&mut self) -> bool {
        let head = self.async_addr & spec::ASYNC_ADDR_MASK;
        let mut qh = head;
        let mut seen = HashSet::new();
        let mut budget = MAX_ELEMENTS;
        let mut progress = false;
        loop {
            if !seen.insert(qh) || budget == 0 {
                guest_error!(
                    "EHCI: the asynchronous ring from {head:#x} loops at {qh:#x} without coming back"
                );
                self.host_system_error();
                return progress;
            }
            budget -= 1;
            match self.run_queue(qh, TransferKind::Bulk, &mut budget) {
                Some(p) => progress |= p,
                None => return progress,
            }
            let Some(link) = self.read_u32(u64::from(qh) + spec::QH_LINK) else {
                return progress;
            };
            if link & spec::LINK_TERMINATE != 0 {
                return progress;
            }
            if (link & spec::LINK_TYPE_MASK) >> spec::LINK_TYPE_SHIFT != spec::LINK_TYPE_QH {
                guest_error!("EHCI: the asynchronous ring links to a non-QH at {link:#x}");
                self.host_system_error();
                return progress;
            }
            qh = link & spec::LINK_ADDR_MASK;
            if qh == head {
                return progress;
            }
        }
    }

    fn load_qh(&mut self, addr: u32) -> Option<QueueHead> {
        let base = u64::from(addr);
        let chars = self.read_u32(base + spec::QH_EP_CHARS)?;
        let current = self.read_u32(base + spec::QH_CURRENT_QTD)?;
        let overlay = self.read_dwords::<{ spec::QTD_DWORDS }>(base + spec::QH_OVERLAY)?;
        Some(QueueHead {
            addr,
            chars,
            current,
            overlay,
        })
    }

    /// Runs the queue head at `qh` (4.10): the active qTD in its overlay,
    /// then the ones after it, until one is pending, the queue halts or
    /// ends. `Some(progress)`, or `None` when the controller halted.
    fn run_queue(&mut self, qh: u32, kind: TransferKind, budget: &mut usize) -> Option<bool> {
        let mut progress = false;
        let mut seen = HashSet::new();
        loop {
            let mut q = self.load_qh(qh)?;
            let token = q.overlay[2];
            if token & spec::TOKEN_STATUS_HALTED != 0 {
                return Some(progress);
            }
            if token & spec::TOKEN_STATUS_ACTIVE == 0 {
                // Advance the queue (4.10.2): after a short packet to the
                // alternate next qTD if there is one.
                let bytes_left = token & spec::TOKEN_BYTES_MASK != 0;
                let alt = q.overlay[1];
                let next = if bytes_left && alt & spec::LINK_TERMINATE == 0 {
                    alt
                } else {
                    q.overlay[0]
                };
                if next & spec::LINK_TERMINATE != 0 {
                    return Some(progress);
                }
                let at = next & spec::QTD_PTR_MASK;
                let qtd = self.read_dwords::<{ spec::QTD_DWORDS }>(u64::from(at))?;
                if qtd[2] & spec::TOKEN_STATUS_ACTIVE == 0 {
                    return Some(progress);
                }
                if !seen.insert(at) || *budget == 0 {
                    guest_error!("EHCI: the qTDs of the queue head at {qh:#x} loop at {at:#x}");
                    self.host_system_error();
                    return None;
                }
                *budget -= 1;
                // Load the qTD into the overlay (4.10.2); the queue head
                // keeps the data toggle unless the qTD carries it.
                let mut overlay = qtd;
                if q.chars & spec::EPCHAR_DTC == 0 {
                    overlay[2] = (overlay[2] & !spec::TOKEN_TOGGLE) | (token & spec::TOKEN_TOGGLE);
                }
                q.current = at;
                q.overlay = overlay;
                let base = u64::from(qh);
                if !self.write_u32(base + spec::QH_CURRENT_QTD, at) {
                    return None;
                }
                for (i, w) in overlay.iter().enumerate() {
                    if !self.write_u32(base + spec::QH_OVERLAY + 4 * i as u64, *w) {
                        return None;
                    }
                }
            }
            match self.run_qtd(&q, kind)? {
                QtdOutcome::Pending => return Some(progress),
                QtdOutcome::Halted => return Some(true),
                QtdOutcome::Retired => progress = true,
            }
        }
    }

    /// The guest addresses of `len` bytes of the buffer the overlay of `q`
    /// describes, as (address, length) runs; `None` when they run past the
    /// fifth page.
    fn buffer_runs(q: &QueueHead, len: usize) -> Option<Vec<(u64, usize)>> {
        let page = ((q.overlay[2] & spec::TOKEN_CPAGE_MASK) >> spec::TOKEN_CPAGE_SHIFT) as usize;
        let mut offset = (q.overlay[3] & 0xfff) as usize;
        let mut runs = Vec::new();
        let mut left = len;
        let mut p = page;
        while left > 0 {
            let base = *q.overlay.get(3 + p).filter(|_| p < spec::QTD_PAGES)? & !0xfff;
            let n = left.min(spec::PAGE_SIZE as usize - offset);
            runs.push((u64::from(base) + offset as u64, n));
            left -= n;
            offset = 0;
            p += 1;
        }
        Some(runs)
    }

    fn gather(&mut self, runs: &[(u64, usize)]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for (addr, n) in runs {
            let start = out.len();
            out.resize(start + n, 0);
            if self
                .mem
                .read_slice(&mut out[start..], GuestAddress(*addr))
                .is_err()
            {
                guest_error!("EHCI: qTD buffer {addr:#x}+{n} is outside guest RAM");
                self.host_system_error();
                return None;
            }
        }
        Some(out)
    }

    fn scatter(&mut self, runs: &[(u64, usize)], data: &[u8]) -> bool {
        let mut done = 0;
        for (addr, n) in runs {
            if done >= data.len() {
                break;
            }
            let n = (*n).min(data.len() - done);
            if self
                .mem
                .write_slice(&data[done..done + n], GuestAddress(*addr))
                .is_err()
            {
                guest_error!("EHCI: qTD buffer {addr:#x}+{n} is outside guest RAM");
                self.host_system_error();
                return false;
            }
            done += n;
        }
        true
    }

    /// Executes the qTD in the overlay of `q` as one transfer to the
    /// device (4.10.3) and writes its token back to the qTD and the
    /// overlay (4.10.4). `None` when the controller halted.
    fn run_qtd(&mut self, q: &QueueHead, kind: TransferKind) -> Option<QtdOutcome> {
        let token = q.overlay[2];
        let total = ((token & spec::TOKEN_BYTES_MASK) >> spec::TOKEN_BYTES_SHIFT) as usize;
        let pid = match (token & spec::TOKEN_PID_MASK) >> spec::TOKEN_PID_SHIFT {
            spec::PID_CODE_OUT => ch9::PID_OUT,
            spec::PID_CODE_IN => ch9::PID_IN,
            spec::PID_CODE_SETUP => ch9::PID_SETUP,
            _ => {
                guest_error!("EHCI: qTD at {:#x} has the reserved PID code 3", q.current);
                return self.retire(q, token | spec::TOKEN_STATUS_XACTERR, false);
            }
        };
        let Some(runs) = Self::buffer_runs(q, total.min(spec::QTD_MAX_BYTES))
            .filter(|_| total <= spec::QTD_MAX_BYTES)
        else {
            guest_error!(
                "EHCI: qTD at {:#x} moves {total} bytes, more than its buffer pages hold",
                q.current
            );
            return self.retire(q, token | spec::TOKEN_STATUS_DBE, false);
        };
        let out = if pid == ch9::PID_IN {
            Vec::new()
        } else {
            self.gather(&runs)?
        };
        let address = (q.chars & spec::EPCHAR_ADDR_MASK) as u8;
        let endpoint = ((q.chars >> spec::EPCHAR_ENDPT_SHIFT) & 0xf) as u8;
        let enabled: Vec<usize> = (0..spec::PORTS)
            .filter(|i| {
                let sc = self.ports[*i].sc;
                sc & spec::PORT_PED != 0 && sc & spec::PORT_SUSPEND == 0
            })
            .collect();
        let key = u64::from(q.current) | u64::from(token) << 32;
        let result =
            match lock_ports(&self.shared).find(PortOwner::Ehci, enabled.into_iter(), address) {
                Some(d) => d.packet(pid, endpoint, &out, total, key, kind),
                // Nobody answers: a transaction error (3.5.3).
                None => PacketResult::Done(TransferStatus::Timeout, Vec::new()),
            };
        let (status, data) = match result {
            PacketResult::Pending | PacketResult::Done(TransferStatus::Nak, _) => {
                return Some(QtdOutcome::Pending)
            }
            PacketResult::Done(s, d) => (s, d),
        };
        let mut new = token;
        match status {
            TransferStatus::Success => {
                let moved = if pid == ch9::PID_IN {
                    data.len()
                } else {
                    total
                };
                if pid == ch9::PID_IN && !self.scatter(&runs, &data) {
                    return None;
                }
                let left = total - moved.min(total);
                new = (new & !spec::TOKEN_BYTES_MASK) | (left as u32) << spec::TOKEN_BYTES_SHIFT;
                // One data toggle per packet (a zero-length one counts).
                let maxp = ((q.chars >> spec::EPCHAR_MAXP_SHIFT) & spec::EPCHAR_MAXP_MASK) as usize;
                let packets = if maxp == 0 {
                    1
                } else {
                    moved.div_ceil(maxp).max(1)
                };
                if packets % 2 == 1 {
                    new ^= spec::TOKEN_TOGGLE;
                }
                if left > 0 {
                    // A short packet (2.3.2 USBINT).
                    self.sts |= spec::STS_USBINT;
                }
                self.retire(q, new, true)
            }
            TransferStatus::Stall => self.retire(q, new, false),
            TransferStatus::Babble => self.retire(q, new | spec::TOKEN_STATUS_BABBLE, false),
            TransferStatus::Timeout | TransferStatus::Nak => self.retire(
                q,
                (new & !spec::TOKEN_CERR_MASK) | spec::TOKEN_STATUS_XACTERR,
                false,
            ),
        }
    }

    /// Ends the current qTD of `q` with `token` (its active bit cleared;
    /// halted unless `ok`) and raises the interrupts it asks for.
    fn retire(&mut self, q: &QueueHead, token: u32, ok: bool) -> Option<QtdOutcome> {
        let mut token = token & !spec::TOKEN_STATUS_ACTIVE;
        if ok {
            if token & spec::TOKEN_IOC != 0 {
                self.sts |= spec::STS_USBINT;
            }
        } else {
            token |= spec::TOKEN_STATUS_HALTED;
            self.sts |= spec::STS_USBERRINT;
        }
        self.update_irq();
        if !self.write_u32(u64::from(q.current) + spec::QTD_TOKEN, token)
            || !self.write_u32(
                u64::from(q.addr) + spec::QH_OVERLAY + spec::QTD_TOKEN,
                token,
            )
        {
            return None;
        }
        Some(if ok {
            QtdOutcome::Retired
        } else {
            QtdOutcome::Halted
        })
    }

    fn portsc(&self, i: usize) -> u32 {
        let mut set = lock_ports(&self.shared);
        let owner = set.owner(i);
        let speed = set.device(i, PortOwner::Ehci).map(|d| d.speed());
        drop(set);
        let p = self.ports[i];
        let mut v = p.sc | spec::PORT_POWER;
        if owner != Some(PortOwner::Ehci) {
            v |= spec::PORT_OWNER;
        }
        if let Some(speed) = speed {
            v |= spec::PORT_CCS;
            // Line status tells low speed (K) from the rest (J) while the
            // port is neither enabled nor in reset (2.3.9).
            if p.sc & (spec::PORT_PED | spec::PORT_RESET) == 0 {
                v |= if speed == Speed::Low {
                    spec::PORT_LINE_K
                } else {
                    spec::PORT_LINE_J
                };
            }
        }
        v
    }

    fn write_portsc(&mut self, i: usize, value: u32) {
        let owner = if value & spec::PORT_OWNER != 0 {
            PortOwner::Companion
        } else {
            PortOwner::Ehci
        };
        if self.configflag != 0 && lock_ports(&self.shared).owner(i) != Some(owner) {
            lock_ports(&self.shared).set_owner(i, owner);
            self.sync_ports();
        }
        let speed = lock_ports(&self.shared)
            .device(i, PortOwner::Ehci)
            .map(|d| d.speed());
        let p = &mut self.ports[i];
        p.sc &= !(value & spec::PORT_W1C);
        let was_reset = p.sc & spec::PORT_RESET != 0;
        let enabled = p.sc & spec::PORT_PED;
        let writable = spec::PORT_WRITABLE;
        p.sc = (p.sc & !writable) | (value & writable);
        // Software can disable a port but only a reset enables it.
        p.sc = (p.sc & !spec::PORT_PED) | (enabled & value);
        if speed.is_none() {
            p.sc &= !(spec::PORT_PED | spec::PORT_RESET);
        }
        let now_reset = p.sc & spec::PORT_RESET != 0;
        if now_reset {
            p.sc &= !spec::PORT_PED;
        }
        if was_reset && !now_reset {
            // The end of reset enables the port for a high-speed device
            // only; a full-speed one waits to be handed to a companion.
            if speed == Some(Speed::High) {
                p.sc |= spec::PORT_PED;
            }
            if let Some(d) = lock_ports(&self.shared).device(i, PortOwner::Ehci) {
                d.reset();
            }
        }
    }

    fn reg_value(&mut self, off: u64) -> u32 {
        match off {
            spec::CAPLENGTH => spec::CAP_LEN as u32 | u32::from(spec::HCI_VERSION_1_0) << 16,
            spec::HCSPARAMS => spec::HCSPARAMS_VALUE,
            spec::HCCPARAMS => spec::HCCPARAMS_VALUE,
            o if o < spec::CAP_LEN => 0,
            o => match o - spec::CAP_LEN {
                spec::USBCMD => self.cmd,
                spec::USBSTS => {
                    let mut s = self.sts;
                    if self.running() {
                        if self.cmd & spec::CMD_PSE != 0 {
                            s |= spec::STS_PSS;
                        }
                        if self.cmd & spec::CMD_ASE != 0 {
                            s |= spec::STS_ASS;
                        }
                    }
                    s
                }
                spec::USBINTR => self.intr,
                spec::FRINDEX => self.frindex,
                spec::CTRLDSSEGMENT => self.ctrldsseg,
                spec::PERIODICLISTBASE => self.periodic_base,
                spec::ASYNCLISTADDR => self.async_addr,
                spec::CONFIGFLAG => self.configflag,
                r if (spec::PORTSC0..spec::PORTSC0 + 4 * spec::PORTS as u64).contains(&r) => {
                    self.portsc(((r - spec::PORTSC0) / 4) as usize)
                }
                _ => 0,
            },
        }
    }

    fn write_reg(&mut self, off: u64, value: u32, mask: u32) {
        let Some(reg) = off.checked_sub(spec::CAP_LEN) else {
            return;
        };
        let merge = |old: u32| (old & !mask) | (value & mask);
        match reg {
            spec::USBCMD => {
                let new = merge(self.cmd) & spec::CMD_WRITABLE;
                if new & spec::CMD_HCRESET != 0 {
                    // Host controller reset (2.3.1): registers to their
                    // defaults, ports to the companions; the bit clears
                    // when done.
                    self.reset_registers();
                    return;
                }
                self.cmd = new & !spec::CMD_IAAD;
                if new & spec::CMD_IAAD != 0 {
                    // The controller caches nothing of the ring between
                    // walks, so the doorbell is answered at once (4.8.2).
                    self.sts |= spec::STS_IAA;
                }
                if new & spec::CMD_RS != 0 {
                    if self.sts & spec::STS_HCHALTED != 0 {
                        self.sts &= !spec::STS_HCHALTED;
                        if let Some(w) = &self.wake {
                            w();
                        }
                    }
                } else {
                    self.sts |= spec::STS_HCHALTED;
                }
                self.update_irq();
            }
            spec::USBSTS => {
                self.sts &= !(value & mask & spec::STS_W1C);
                self.update_irq();
            }
            spec::USBINTR => {
                self.intr = merge(self.intr) & spec::INTR_MASK;
                self.update_irq();
            }
            spec::FRINDEX if self.sts & spec::STS_HCHALTED != 0 => {
                self.frindex = merge(self.frindex) & spec::FRINDEX_MASK;
            }
            spec::CTRLDSSEGMENT => self.ctrldsseg = merge(self.ctrldsseg),
            spec::PERIODICLISTBASE => {
                self.periodic_base = merge(self.periodic_base) & spec::PERIODIC_BASE_MASK
            }
            spec::ASYNCLISTADDR => self.async_addr = merge(self.async_addr) & spec::ASYNC_ADDR_MASK,
            spec::CONFIGFLAG => {
                let v = merge(self.configflag);
                self.set_configflag(v);
            }
            r if (spec::PORTSC0..spec::PORTSC0 + 4 * spec::PORTS as u64).contains(&r) => {
                let i = ((r - spec::PORTSC0) / 4) as usize;
                let v = merge(self.portsc(i) & !spec::PORT_W1C) | (value & mask & spec::PORT_W1C);
                self.write_portsc(i, v);
            }
            _ => {}
        }
    }

    fn mmio_offset(&self, addr: u64) -> Option<u64> {
        let r = self.cs.bar_region(spec::BAR_MMIO)?;
        addr.checked_sub(r.base).filter(|o| *o < spec::MMIO_LEN)
    }
}

impl BusDevice for Ehci {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        let Some(off) = self.mmio_offset(addr) else {
            data.fill(0xff);
            return;
        };
        self.sync_ports();
        read_registers(off, data, |o| o & !3, |r| self.reg_value(r));
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let Some(off) = self.mmio_offset(addr) else {
            return;
        };
        self.sync_ports();
        write_registers(
            off,
            data,
            |o| (o & !3, 4),
            |r, v, m| self.write_reg(r, v, m),
        );
    }
}

impl PciFunction for Ehci {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }
}
