//! xHCI tests that play the guest driver (xHCI 1.2 chapter 4): set up the
//! DCBAA, command ring and event ring in guest memory, reset ports, run
//! commands and transfers through rings, and check what a driver checks:
//! events with their completion codes, lengths and pointers, contexts,
//! PORTSC, USBSTS and the bytes in its buffers.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::msd_spec as msd;
use super::storage::UsbStorage;
use super::usb_spec as ch9;
use super::xhci::{Xhci, XhciError};
use super::xhci_spec as spec;
use super::{Completer, Speed, Transfer, TransferStatus, UsbDevice};
use crate::bus::BusDevice;
use crate::irq::RecordingIrq;
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_MEMORY};
use crate::pci::PciFunction;
use crate::storage::testing::MemDisk;
use crate::GuestMemory;

const BAR: u64 = 0xfeb0_0000;
const RAM: usize = 4 << 20;
const DCBAA: u64 = 0x1_0000;
const CMD_RING: u64 = 0x1_1000;
const ERST: u64 = 0x1_2000;
const EVENT_RING: u64 = 0x1_3000;
const EVENT_TRBS: u64 = 16;
const INPUT: u64 = 0x1_4000;
const OUTPUT: u64 = 0x1_6000;
const EP0_RING: u64 = 0x1_8000;
const OUT_RING: u64 = 0x1_9000;
const IN_RING: u64 = 0x1_a000;
const BUF: u64 = 0x2_0000;

/// A ring the test produces TRBs on, ending in a Link TRB back to its
/// start with Toggle Cycle.
struct ProducerRing {
    base: u64,
    trbs: u64,
    index: u64,
    cycle: bool,
    /// Times the producer followed its Link TRB.
    laps: u32,
}

impl ProducerRing {
    fn new(base: u64, trbs: u64) -> Self {
        Self {
            base,
            trbs,
            index: 0,
            cycle: true,
            laps: 0,
        }
    }

    fn write(mem: &GuestMemory, at: u64, param: u64, status: u32, control: u32) {
        mem.write_obj(param, GuestAddress(at)).unwrap();
        mem.write_obj(status, GuestAddress(at + 8)).unwrap();
        mem.write_obj(control, GuestAddress(at + 12)).unwrap();
    }

    /// Queues a TRB; returns its address.
    fn push(&mut self, mem: &GuestMemory, param: u64, status: u32, control: u32) -> u64 {
        if self.index == self.trbs - 1 {
            let link = spec::TRB_LINK << spec::TRB_TYPE_SHIFT | spec::TRB_LINK_TC;
            Self::write(
                mem,
                self.base + 16 * self.index,
                self.base,
                0,
                link | u32::from(self.cycle),
            );
            self.index = 0;
            self.cycle = !self.cycle;
            self.laps += 1;
        }
        let at = self.base + 16 * self.index;
        Self::write(mem, at, param, status, control | u32::from(self.cycle));
        self.index += 1;
        at
    }

    fn dequeue(&self) -> u64 {
        (self.base + 16 * self.index) | u64::from(self.cycle)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    param: u64,
    status: u32,
    control: u32,
}

impl Event {
    fn ty(&self) -> u32 {
        (self.control >> spec::TRB_TYPE_SHIFT) & spec::TRB_TYPE_MASK
    }
    fn cc(&self) -> u8 {
        (self.status >> 24) as u8
    }
    fn slot(&self) -> usize {
        (self.control >> 24) as usize
    }
    fn len(&self) -> u32 {
        self.status & 0xff_ffff
    }
}

struct Rig {
    x: Xhci,
    mem: GuestMemory,
    irq: Arc<RecordingIrq>,
    cmd: ProducerRing,
    ev_index: u64,
    ev_cycle: bool,
    /// Port Status Change events seen, by port.
    port_events: Vec<usize>,
}

impl Rig {
    fn new() -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        let irq = RecordingIrq::new();
        let mut x = Xhci::new(mem.clone(), irq.clone());
        x.config_write(0x10, &(BAR as u32 | 4).to_le_bytes());
        x.config_write(0x14, &0u32.to_le_bytes());
        x.config_write(0x04, &(COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes());
        Self {
            x,
            mem,
            irq,
            cmd: ProducerRing::new(CMD_RING, 16),
            ev_index: 0,
            ev_cycle: true,
            port_events: Vec::new(),
        }
    }

    fn op(reg: u64) -> u64 {
        spec::OP_BASE + reg
    }
    fn ir(reg: u64) -> u64 {
        spec::RUNTIME_BASE + spec::IR0_BASE + reg
    }
    fn portsc_reg(port: u64) -> u64 {
        spec::PORT_BASE + spec::PORT_STRIDE * (port - 1)
    }

    fn w32(&mut self, off: u64, v: u32) {
        self.x.write(BAR + off, &v.to_le_bytes());
    }
    fn w64(&mut self, off: u64, v: u64) {
        self.x.write(BAR + off, &v.to_le_bytes());
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.x.read(BAR + off, &mut b);
        u32::from_le_bytes(b)
    }

    /// What a driver does after HCRST: slots, DCBAA, command ring, one
    /// event ring segment, interrupts on, run.
    fn start(&mut self) {
        self.w32(Self::op(spec::USBCMD), spec::CMD_HCRST);
        assert_eq!(self.r32(Self::op(spec::USBSTS)) & spec::STS_CNR, 0);
        self.w32(Self::op(spec::CONFIG), spec::MAX_SLOTS as u32);
        self.w64(Self::op(spec::DCBAAP), DCBAA);
        self.w64(Self::op(spec::CRCR), CMD_RING | 1);
        self.mem.write_obj(EVENT_RING, GuestAddress(ERST)).unwrap();
        self.mem
            .write_obj(EVENT_TRBS as u32, GuestAddress(ERST + 8))
            .unwrap();
        self.w32(Self::ir(spec::ERSTSZ), 1);
        self.w64(Self::ir(spec::ERDP), EVENT_RING);
        self.w64(Self::ir(spec::ERSTBA), ERST);
        self.w32(Self::ir(spec::IMAN), spec::IMAN_IE);
        self.w32(Self::op(spec::USBCMD), spec::CMD_RS | spec::CMD_INTE);
        assert_eq!(self.r32(Self::op(spec::USBSTS)) & spec::STS_HCH, 0);
    }

    /// The next event software has not consumed, moving ERDP past it.
    fn event(&mut self) -> Option<Event> {
        let at = EVENT_RING + 16 * self.ev_index;
        let param: u64 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let status: u32 = self.mem.read_obj(GuestAddress(at + 8)).unwrap();
        let control: u32 = self.mem.read_obj(GuestAddress(at + 12)).unwrap();
        if (control & 1 != 0) != self.ev_cycle {
            return None;
        }
        self.ev_index += 1;
        if self.ev_index == EVENT_TRBS {
            self.ev_index = 0;
            self.ev_cycle = !self.ev_cycle;
        }
        self.w64(
            Self::ir(spec::ERDP),
            (EVENT_RING + 16 * self.ev_index) | spec::ERDP_EHB,
        );
        let e = Event {
            param,
            status,
            control,
        };
        if e.ty() == spec::EVENT_PORT_STATUS_CHANGE {
            self.port_events.push((param >> 24) as usize);
            return self.event();
        }
        Some(e)
    }

    fn command(&mut self, param: u64, control: u32) -> Event {
        let at = self.cmd.push(&self.mem, param, 0, control);
        self.w32(spec::DOORBELL_BASE, 0);
        let e = self.event().expect("a command completion event");
        assert_eq!(e.ty(), spec::EVENT_COMMAND_COMPLETION);
        assert_eq!(e.param, at);
        e
    }

    fn reset_port(&mut self, port: u64) -> u32 {
        let sc = self.r32(Self::portsc_reg(port));
        self.w32(
            Self::portsc_reg(port),
            (sc & !spec::PORT_PED) | spec::PORT_PR,
        );
        self.r32(Self::portsc_reg(port))
    }

    fn ctx_write(&self, at: u64, dwords: &[u32]) {
        for (i, d) in dwords.iter().enumerate() {
            self.mem
                .write_obj(*d, GuestAddress(at + 4 * i as u64))
                .unwrap();
        }
    }

    fn ctx_read(&self, at: u64, i: u64) -> u32 {
        self.mem.read_obj(GuestAddress(at + 4 * i)).unwrap()
    }

    /// Enable Slot and Address Device for the device on `port`, with EP0
    /// on a ring at EP0_RING; the slot ID.
    fn address(&mut self, port: u64, ep0: &ProducerRing) -> usize {
        let e = self.command(0, spec::CMD_ENABLE_SLOT << spec::TRB_TYPE_SHIFT);
        assert_eq!(e.cc(), spec::CC_SUCCESS);
        let slot = e.slot();
        self.mem
            .write_obj(OUTPUT, GuestAddress(DCBAA + 8 * slot as u64))
            .unwrap();
        self.mem
            .write_slice(&[0u8; 33 * 32], GuestAddress(INPUT))
            .unwrap();
        self.ctx_write(INPUT, &[0, 3]);
        self.ctx_write(
            INPUT + 32,
            &[1 << 27 | spec::SPEED_HIGH << 20, (port as u32) << 16],
        );
        let deq = ep0.dequeue();
        self.ctx_write(
            INPUT + 64,
            &[
                0,
                spec::EP_TYPE_CONTROL << 3 | 64 << 16 | 3 << 1,
                deq as u32,
                (deq >> 32) as u32,
                8,
            ],
        );
        let e = self.command(
            INPUT,
            spec::CMD_ADDRESS_DEVICE << spec::TRB_TYPE_SHIFT | (slot as u32) << 24,
        );
        assert_eq!(e.cc(), spec::CC_SUCCESS);
        slot
    }

    /// A control transfer on EP0: Setup, optional Data at BUF, Status
    /// with IOC. The events it produced.
    fn control(
        &mut self,
        ring: &mut ProducerRing,
        slot: usize,
        setup: [u8; 8],
        data_len: u32,
    ) -> Vec<Event> {
        let dir_in = setup[0] & 0x80 != 0;
        let trt = if data_len == 0 {
            0
        } else if dir_in {
            3
        } else {
            2
        };
        ring.push(
            &self.mem,
            u64::from_le_bytes(setup),
            8,
            spec::TRB_SETUP << spec::TRB_TYPE_SHIFT | spec::TRB_IDT | trt << 16,
        );
        if data_len > 0 {
            ring.push(
                &self.mem,
                BUF,
                data_len,
                spec::TRB_DATA << spec::TRB_TYPE_SHIFT | if dir_in { spec::TRB_DIR_IN } else { 0 },
            );
        }
        ring.push(
            &self.mem,
            0,
            0,
            spec::TRB_STATUS << spec::TRB_TYPE_SHIFT
                | spec::TRB_IOC
                | if dir_in && data_len > 0 {
                    0
                } else {
                    spec::TRB_DIR_IN
                },
        );
        self.w32(spec::DOORBELL_BASE + 4 * slot as u64, 1);
        std::iter::from_fn(|| self.event()).collect()
    }

    fn bulk(
        &mut self,
        ring: &mut ProducerRing,
        slot: usize,
        dci: u32,
        buf: u64,
        len: u32,
    ) -> Vec<Event> {
        ring.push(
            &self.mem,
            buf,
            len,
            spec::TRB_NORMAL << spec::TRB_TYPE_SHIFT | spec::TRB_IOC,
        );
        self.w32(spec::DOORBELL_BASE + 4 * slot as u64, dci);
        std::iter::from_fn(|| self.event()).collect()
    }
}

fn disk() -> (Arc<MemDisk>, Box<UsbStorage>) {
    let d = Arc::new(MemDisk::patterned(4 << 20, |o| (o / 512) as u8 ^ (o as u8)));
    let s = Box::new(UsbStorage::new(d.clone(), false, "0123456789AB"));
    (d, s)
}

#[test]
fn capabilities_describe_usb2_and_usb3_ports() {
    let mut r = Rig::new();
    let (_, dev) = disk();
    r.x.attach(1, dev).unwrap();
    assert_eq!(r.x.config_read(0), 0x000d_1b36);
    assert_eq!(r.x.config_read(8) >> 8, 0x0c_03_30);
    assert_eq!(r.r32(0) & 0xff, spec::CAP_LENGTH as u32);
    assert_eq!(r.r32(0) >> 16, 0x0110);
    let hcs1 = r.r32(spec::HCSPARAMS1);
    assert_eq!((hcs1 & 0xff, hcs1 >> 24), (spec::MAX_SLOTS as u32, 8));
    // Extended capabilities: USB 2 on ports 1-4, USB 3 on 5-8.
    let mut at = u64::from(r.r32(spec::HCCPARAMS1) >> 16) * 4;
    let mut protocols = Vec::new();
    loop {
        let cap = r.r32(at);
        assert_eq!(cap & 0xff, spec::XCAP_SUPPORTED_PROTOCOL);
        assert_eq!(r.r32(at + 4), u32::from_le_bytes(*b"USB "));
        let ports = r.r32(at + 8);
        protocols.push((cap >> 24, ports & 0xff, (ports >> 8) & 0xff));
        if (cap >> 8) & 0xff == 0 {
            break;
        }
        at += u64::from((cap >> 8) & 0xff) * 4;
    }
    assert_eq!(protocols, vec![(2, 1, 4), (3, 5, 4)]);
    assert_eq!(r.r32(Rig::op(spec::PAGESIZE)), 1);
    // Port 1: a high-speed device waiting for reset in Polling.
    let sc = r.r32(Rig::portsc_reg(1));
    assert_eq!(
        sc & (spec::PORT_CCS | spec::PORT_PED | spec::PORT_PP),
        spec::PORT_CCS | spec::PORT_PP
    );
    assert_eq!((sc >> 5) & 0xf, spec::PLS_POLLING);
    assert_eq!((sc >> 10) & 0xf, spec::SPEED_HIGH);
    assert_ne!(sc & spec::PORT_CSC, 0);
    assert_eq!(r.r32(Rig::portsc_reg(5)) & spec::PORT_CCS, 0);
    // A USB 2 device does not show on a USB 3 port.
    let (_, dev) = disk();
    assert_eq!(r.x.attach(5, dev).unwrap_err(), XhciError::NotSuperSpeed(5));
    let (_, dev) = disk();
    assert_eq!(r.x.attach(9, dev).unwrap_err(), XhciError::NoSuchPort(9));
    // Byte reads of CAPLENGTH, as SeaBIOS does them.
    let mut b = [0u8; 1];
    r.x.read(BAR, &mut b);
    assert_eq!(b[0], 0x40);
}

#[test]
fn port_reset_enables_and_reports_a_status_change() {
    let mut r = Rig::new();
    let (_, dev) = disk();
    r.x.attach(2, dev).unwrap();
    r.start();
    let sc = r.reset_port(2);
    assert_ne!(sc & spec::PORT_PED, 0);
    assert_ne!(sc & spec::PORT_PRC, 0);
    assert_eq!((sc >> 5) & 0xf, spec::PLS_U0);
    assert_eq!(r.event(), None);
    assert_eq!(r.port_events, vec![2]);
    assert!(r.irq.level(), "the event raised INTA");
    assert_ne!(r.r32(Rig::op(spec::USBSTS)) & spec::STS_PCD, 0);
    // Change bits are write-1-to-clear; writing PED back as 0 keeps the
    // port enabled.
    r.w32(
        Rig::portsc_reg(2),
        spec::PORT_PRC | spec::PORT_CSC | spec::PORT_PP,
    );
    let sc = r.r32(Rig::portsc_reg(2));
    assert_eq!(sc & (spec::PORT_PRC | spec::PORT_CSC), 0);
    assert_ne!(sc & spec::PORT_PED, 0);
    // IMAN.IP is write-1-to-clear and drops the line.
    r.w32(Rig::ir(spec::IMAN), spec::IMAN_IP | spec::IMAN_IE);
    assert!(!r.irq.level());
    // Unplugging: connect change, port disabled, another event.
    r.x.detach(2).unwrap();
    let sc = r.r32(Rig::portsc_reg(2));
    assert_eq!(sc & (spec::PORT_CCS | spec::PORT_PED), 0);
    assert_ne!(sc & spec::PORT_CSC, 0);
    assert_eq!(r.event(), None);
    assert_eq!(r.port_events, vec![2, 2]);
}

fn scsi(
    r: &mut Rig,
    out: &mut ProducerRing,
    inr: &mut ProducerRing,
    slot: usize,
    cb: &[u8],
    len: u32,
    dir_in: bool,
) -> (Vec<Event>, u8) {
    let mut cbw = vec![0u8; msd::CBW_LEN];
    cbw[0..4].copy_from_slice(&msd::CBW_SIGNATURE.to_le_bytes());
    cbw[4..8].copy_from_slice(&0x5678u32.to_le_bytes());
    cbw[8..12].copy_from_slice(&len.to_le_bytes());
    cbw[12] = if dir_in { 0x80 } else { 0 };
    cbw[14] = cb.len() as u8;
    cbw[15..15 + cb.len()].copy_from_slice(cb);
    r.mem.write_slice(&cbw, GuestAddress(BUF + 0x8000)).unwrap();
    let e = r.bulk(out, slot, 4, BUF + 0x8000, msd::CBW_LEN as u32);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].cc(), spec::CC_SUCCESS);
    let data = if len == 0 {
        Vec::new()
    } else if dir_in {
        r.bulk(inr, slot, 3, BUF, len)
    } else {
        r.bulk(out, slot, 4, BUF, len)
    };
    let e = r.bulk(inr, slot, 3, BUF + 0x9000, msd::CSW_LEN as u32);
    assert_eq!(e[0].cc(), spec::CC_SUCCESS);
    let mut csw = [0u8; 13];
    r.mem
        .read_slice(&mut csw, GuestAddress(BUF + 0x9000))
        .unwrap();
    assert_eq!(&csw[0..4], &msd::CSW_SIGNATURE.to_le_bytes());
    assert_eq!(&csw[4..8], &0x5678u32.to_le_bytes());
    (data, csw[12])
}

/// Enumerates a disk on port 1 and configures its bulk endpoints (DCI 3
/// IN, DCI 4 OUT) on rings of 8 TRBs.
fn configured_disk(r: &mut Rig) -> (usize, ProducerRing, ProducerRing, ProducerRing) {
    r.start();
    r.reset_port(1);
    let mut ep0 = ProducerRing::new(EP0_RING, 8);
    let slot = r.address(1, &ep0);
    // The output context says Addressed, address = slot, EP0 running.
    assert_eq!(r.ctx_read(OUTPUT, 3) >> 27, spec::SLOT_STATE_ADDRESSED);
    assert_eq!(r.ctx_read(OUTPUT, 3) & 0xff, slot as u32);
    assert_eq!(r.ctx_read(OUTPUT + 32, 0) & 7, spec::EP_STATE_RUNNING);
    let e = r.control(
        &mut ep0,
        slot,
        [0, ch9::SET_CONFIGURATION, 1, 0, 0, 0, 0, 0],
        0,
    );
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].cc(), spec::CC_SUCCESS);
    let inr = ProducerRing::new(IN_RING, 8);
    let out = ProducerRing::new(OUT_RING, 8);
    r.mem
        .write_slice(&[0u8; 33 * 32], GuestAddress(INPUT))
        .unwrap();
    r.ctx_write(INPUT, &[0, 1 | 1 << 3 | 1 << 4]);
    r.ctx_write(INPUT + 32, &[4 << 27 | spec::SPEED_HIGH << 20, 1 << 16]);
    for (dci, ring, ty) in [(3u64, &inr, 6u32), (4, &out, 2)] {
        let deq = ring.dequeue();
        r.ctx_write(
            INPUT + 32 * (dci + 1),
            &[
                0,
                ty << 3 | 512 << 16 | 3 << 1,
                deq as u32,
                (deq >> 32) as u32,
                512,
            ],
        );
    }
    let e = r.command(
        INPUT,
        spec::CMD_CONFIGURE_ENDPOINT << spec::TRB_TYPE_SHIFT | (slot as u32) << 24,
    );
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    assert_eq!(r.ctx_read(OUTPUT, 3) >> 27, spec::SLOT_STATE_CONFIGURED);
    assert_eq!(r.ctx_read(OUTPUT + 32 * 3, 0) & 7, spec::EP_STATE_RUNNING);
    (slot, ep0, out, inr)
}

#[test]
fn enumerates_and_reads_a_disk_through_rings() {
    let mut r = Rig::new();
    let (d, dev) = disk();
    r.x.attach(1, dev).unwrap();
    r.start();
    r.reset_port(1);
    let mut ep0 = ProducerRing::new(EP0_RING, 8);
    let slot = r.address(1, &ep0);
    let e = r.control(
        &mut ep0,
        slot,
        [0x80, ch9::GET_DESCRIPTOR, 0, 1, 0, 0, 18, 0],
        18,
    );
    assert_eq!(e.len(), 1, "one event, for the Status TRB");
    assert_eq!((e[0].cc(), e[0].slot()), (spec::CC_SUCCESS, slot));
    let mut desc = [0u8; 18];
    r.mem.read_slice(&mut desc, GuestAddress(BUF)).unwrap();
    assert_eq!(desc[0..2], [18, ch9::DT_DEVICE]);
    assert_eq!(u16::from_le_bytes([desc[2], desc[3]]), 0x0200);
    // A short answer with ISP on the Data TRB: a Short Packet event with
    // the residue, then the Status TRB's success.
    ep0.push(
        &r.mem,
        u64::from_le_bytes([0x80, ch9::GET_DESCRIPTOR, 0, 1, 0, 0, 64, 0]),
        8,
        spec::TRB_SETUP << spec::TRB_TYPE_SHIFT | spec::TRB_IDT | 3 << 16,
    );
    let data_trb = ep0.push(
        &r.mem,
        BUF,
        64,
        spec::TRB_DATA << spec::TRB_TYPE_SHIFT | spec::TRB_DIR_IN | spec::TRB_ISP,
    );
    ep0.push(
        &r.mem,
        0,
        0,
        spec::TRB_STATUS << spec::TRB_TYPE_SHIFT | spec::TRB_IOC,
    );
    r.w32(spec::DOORBELL_BASE + 4 * slot as u64, 1);
    let e: Vec<Event> = std::iter::from_fn(|| r.event()).collect();
    assert_eq!(e.len(), 2);
    assert_eq!(
        (e[0].param, e[0].cc(), e[0].len()),
        (data_trb, spec::CC_SHORT_PACKET, 64 - 18)
    );
    assert_eq!(e[1].cc(), spec::CC_SUCCESS);

    let mut r = Rig::new();
    let d2 = d.clone();
    r.x.attach(1, Box::new(UsbStorage::new(d2, false, "0123456789AB")))
        .unwrap();
    let (slot, _ep0, mut out, mut inr) = configured_disk(&mut r);
    let (data, status) = scsi(
        &mut r,
        &mut out,
        &mut inr,
        slot,
        &[0x12, 0, 0, 0, 36, 0],
        36,
        true,
    );
    assert_eq!(status, msd::CSW_PASSED);
    assert_eq!(data[0].cc(), spec::CC_SUCCESS);
    let mut inq = [0u8; 36];
    r.mem.read_slice(&mut inq, GuestAddress(BUF)).unwrap();
    assert_eq!(inq[0], 0x00, "direct-access block device");
    // READ(10) of 8 sectors from LBA 3, many times over so the 8-TRB
    // rings wrap round their Link TRBs and toggle their cycle state.
    for round in 0..8u32 {
        let lba = 3 + round;
        let cb = [0x28, 0, 0, 0, 0, lba as u8, 0, 0, 8, 0];
        let (e, status) = scsi(&mut r, &mut out, &mut inr, slot, &cb, 4096, true);
        assert_eq!(status, msd::CSW_PASSED);
        assert_eq!((e[0].cc(), e[0].len()), (spec::CC_SUCCESS, 0));
        let mut got = vec![0u8; 4096];
        r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        let lo = u64::from(lba) * 512;
        assert_eq!(got, d.bytes(lo..lo + 4096), "round {round}");
    }
    assert!(inr.laps >= 1 && out.laps >= 1, "the rings wrapped round");
    // WRITE(10) of one sector lands on the disk.
    let pattern: Vec<u8> = (0..512).map(|i| (i * 7) as u8).collect();
    r.mem.write_slice(&pattern, GuestAddress(BUF)).unwrap();
    let (e, status) = scsi(
        &mut r,
        &mut out,
        &mut inr,
        slot,
        &[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0],
        512,
        false,
    );
    assert_eq!(status, msd::CSW_PASSED);
    assert_eq!(e[0].cc(), spec::CC_SUCCESS);
    assert_eq!(d.bytes(9 * 512..10 * 512), pattern);
}

#[test]
fn commands_in_the_wrong_state_fail_with_their_codes() {
    let mut r = Rig::new();
    let (_, dev) = disk();
    r.x.attach(1, dev).unwrap();
    let (slot, ep0, _out, _inr) = configured_disk(&mut r);
    let s = (slot as u32) << 24;
    let cmd = |ty: u32| ty << spec::TRB_TYPE_SHIFT;
    // Address Device on a configured slot.
    let e = r.command(INPUT, cmd(spec::CMD_ADDRESS_DEVICE) | s);
    assert_eq!(e.cc(), spec::CC_CONTEXT_STATE_ERROR);
    // Reset Endpoint on a running endpoint.
    let e = r.command(0, cmd(spec::CMD_RESET_ENDPOINT) | s | 3 << 16);
    assert_eq!(e.cc(), spec::CC_CONTEXT_STATE_ERROR);
    // Set TR Dequeue on a running endpoint.
    let e = r.command(IN_RING | 1, cmd(spec::CMD_SET_TR_DEQUEUE) | s | 3 << 16);
    assert_eq!(e.cc(), spec::CC_CONTEXT_STATE_ERROR);
    // An endpoint that was never added.
    let e = r.command(0, cmd(spec::CMD_STOP_ENDPOINT) | s | 9 << 16);
    assert_eq!(e.cc(), spec::CC_EP_NOT_ENABLED);
    // Stop, then Stop again; then Set TR Dequeue works.
    let e = r.command(0, cmd(spec::CMD_STOP_ENDPOINT) | s | 3 << 16);
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    assert_eq!(r.ctx_read(OUTPUT + 32 * 3, 0) & 7, spec::EP_STATE_STOPPED);
    let e = r.command(0, cmd(spec::CMD_STOP_ENDPOINT) | s | 3 << 16);
    assert_eq!(e.cc(), spec::CC_CONTEXT_STATE_ERROR);
    let e = r.command(IN_RING | 1, cmd(spec::CMD_SET_TR_DEQUEUE) | s | 3 << 16);
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    assert_eq!(r.ctx_read(OUTPUT + 32 * 3, 2), IN_RING as u32 | 1);
    // Slots that are not enabled, or do not exist.
    let e = r.command(0, cmd(spec::CMD_DISABLE_SLOT) | 7 << 24);
    assert_eq!(e.cc(), spec::CC_SLOT_NOT_ENABLED);
    let e = r.command(0, cmd(spec::CMD_DISABLE_SLOT) | 200 << 24);
    assert_eq!(e.cc(), spec::CC_TRB_ERROR);
    // A transfer TRB type on the command ring.
    let e = r.command(0, cmd(spec::TRB_NORMAL));
    assert_eq!(e.cc(), spec::CC_TRB_ERROR);
    let e = r.command(0, cmd(spec::CMD_NOOP));
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    // Reset Device: Default state, bulk endpoints disabled; Configure
    // Endpoint is then refused.
    let e = r.command(0, cmd(spec::CMD_RESET_DEVICE) | s);
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    assert_eq!(r.ctx_read(OUTPUT, 3) >> 27, spec::SLOT_STATE_DEFAULT);
    assert_eq!(r.ctx_read(OUTPUT + 32 * 3, 0) & 7, spec::EP_STATE_DISABLED);
    let e = r.command(INPUT, cmd(spec::CMD_CONFIGURE_ENDPOINT) | s);
    assert_eq!(e.cc(), spec::CC_CONTEXT_STATE_ERROR);
    // Address Device with BSR from Default is refused; without it works.
    let deq = ep0.dequeue();
    r.ctx_write(INPUT, &[0, 3]);
    r.ctx_write(INPUT + 32, &[1 << 27, 1 << 16]);
    r.ctx_write(
        INPUT + 64,
        &[0, spec::EP_TYPE_CONTROL << 3 | 64 << 16, deq as u32, 0],
    );
    let e = r.command(INPUT, cmd(spec::CMD_ADDRESS_DEVICE) | s | spec::TRB_BSR);
    assert_eq!(e.cc(), spec::CC_CONTEXT_STATE_ERROR);
    let e = r.command(INPUT, cmd(spec::CMD_ADDRESS_DEVICE) | s);
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    // Disable Slot, then a command for it.
    let e = r.command(0, cmd(spec::CMD_DISABLE_SLOT) | s);
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    let e = r.command(0, cmd(spec::CMD_RESET_DEVICE) | s);
    assert_eq!(e.cc(), spec::CC_SLOT_NOT_ENABLED);
    // Every slot taken: No Slots Available.
    for _ in 0..spec::MAX_SLOTS {
        let e = r.command(0, cmd(spec::CMD_ENABLE_SLOT));
        assert_eq!(e.cc(), spec::CC_SUCCESS);
    }
    let e = r.command(0, cmd(spec::CMD_ENABLE_SLOT));
    assert_eq!(e.cc(), spec::CC_NO_SLOTS);
    // Address Device for a port with nothing on it.
    r.ctx_write(INPUT + 32, &[1 << 27, 3 << 16]);
    let e = r.command(INPUT, cmd(spec::CMD_ADDRESS_DEVICE) | 1 << 24);
    assert_eq!(e.cc(), spec::CC_USB_TRANSACTION_ERROR);
}

#[test]
fn link_loops_bad_pointers_and_bad_event_rings_are_bounded() {
    // A transfer ring of nothing but Link TRBs pointing at each other:
    // TRB Error, the endpoint halts; Reset Endpoint and Set TR Dequeue
    // bring it back.
    let mut r = Rig::new();
    let (_, dev) = disk();
    r.x.attach(1, dev).unwrap();
    let (slot, _ep0, mut out, _inr) = configured_disk(&mut r);
    let link = spec::TRB_LINK << spec::TRB_TYPE_SHIFT | 1;
    ProducerRing::write(&r.mem, IN_RING, IN_RING + 16, 0, link);
    ProducerRing::write(&r.mem, IN_RING + 16, IN_RING, 0, link);
    r.w32(spec::DOORBELL_BASE + 4 * slot as u64, 3);
    let e = r.event().unwrap();
    assert_eq!((e.ty(), e.cc()), (spec::EVENT_TRANSFER, spec::CC_TRB_ERROR));
    assert_eq!(r.ctx_read(OUTPUT + 32 * 3, 0) & 7, spec::EP_STATE_HALTED);
    assert_eq!(r.event(), None);
    let s = (slot as u32) << 24 | 3 << 16;
    let e = r.command(0, spec::CMD_RESET_ENDPOINT << spec::TRB_TYPE_SHIFT | s);
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    assert_eq!(r.ctx_read(OUTPUT + 32 * 3, 0) & 7, spec::EP_STATE_STOPPED);
    // A TD pointing outside guest RAM: Host System Error, halted.
    out.push(
        &r.mem,
        0x1_0000_0000,
        64,
        spec::TRB_NORMAL << spec::TRB_TYPE_SHIFT | spec::TRB_IOC,
    );
    r.w32(spec::DOORBELL_BASE + 4 * slot as u64, 4);
    let sts = r.r32(Rig::op(spec::USBSTS));
    assert_ne!(sts & spec::STS_HSE, 0);
    assert_ne!(sts & spec::STS_HCH, 0);
    assert!(!r.x.running());
    // Halted with HSE, R/S does not restart it until a reset.
    r.w32(Rig::op(spec::USBCMD), spec::CMD_RS);
    assert!(!r.x.running());

    // A command ring of only Link TRBs: Host Controller Error.
    let mut r = Rig::new();
    r.start();
    ProducerRing::write(&r.mem, CMD_RING, CMD_RING, 0, link);
    r.w32(spec::DOORBELL_BASE, 0);
    assert_ne!(r.r32(Rig::op(spec::USBSTS)) & spec::STS_HCE, 0);
    assert!(!r.x.running());

    // A Link TRB to the very top of the address space: no wrap-around
    // arithmetic, a Host System Error.
    let mut r = Rig::new();
    r.start();
    ProducerRing::write(&r.mem, CMD_RING, !0xf, 0, link);
    r.w32(spec::DOORBELL_BASE, 0);
    assert_ne!(r.r32(Rig::op(spec::USBSTS)) & spec::STS_HSE, 0);

    // An absurd event ring segment table.
    let mut r = Rig::new();
    r.w32(Rig::ir(spec::ERSTSZ), 0xffff);
    r.w64(Rig::ir(spec::ERSTBA), ERST);
    assert_ne!(r.r32(Rig::op(spec::USBSTS)) & spec::STS_HCE, 0);
    let mut r = Rig::new();
    r.mem.write_obj(EVENT_RING, GuestAddress(ERST)).unwrap();
    r.mem.write_obj(100_000u32, GuestAddress(ERST + 8)).unwrap();
    r.w32(Rig::ir(spec::ERSTSZ), 1);
    r.w64(Rig::ir(spec::ERSTBA), ERST);
    assert_ne!(r.r32(Rig::op(spec::USBSTS)) & spec::STS_HCE, 0);

    // A DCBAA outside guest RAM: Address Device halts with HSE.
    let mut r = Rig::new();
    let (_, dev) = disk();
    r.x.attach(1, dev).unwrap();
    r.start();
    r.reset_port(1);
    r.w64(Rig::op(spec::DCBAAP), 0x8000_0000);
    let e = r.command(0, spec::CMD_ENABLE_SLOT << spec::TRB_TYPE_SHIFT);
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    r.ctx_write(INPUT, &[0, 3]);
    r.ctx_write(INPUT + 32, &[1 << 27, 1 << 16]);
    r.ctx_write(
        INPUT + 64,
        &[
            0,
            spec::EP_TYPE_CONTROL << 3 | 64 << 16,
            EP0_RING as u32 | 1,
            0,
        ],
    );
    r.cmd.push(
        &r.mem,
        INPUT,
        0,
        spec::CMD_ADDRESS_DEVICE << spec::TRB_TYPE_SHIFT | 1 << 24,
    );
    r.w32(spec::DOORBELL_BASE, 0);
    assert_ne!(r.r32(Rig::op(spec::USBSTS)) & spec::STS_HSE, 0);
}

#[test]
fn events_wait_for_room_on_a_full_event_ring() {
    let mut r = Rig::new();
    r.start();
    // 20 No Op commands without consuming events: 15 fit (one slot stays
    // free), the rest wait until ERDP moves.
    for _ in 0..2 {
        for _ in 0..10 {
            r.cmd
                .push(&r.mem, 0, 0, spec::CMD_NOOP << spec::TRB_TYPE_SHIFT);
        }
        r.w32(spec::DOORBELL_BASE, 0);
    }
    // The ring is full: the last event written is the 15th.
    let at = EVENT_RING + 16 * 15;
    let control: u32 = r.mem.read_obj(GuestAddress(at + 12)).unwrap();
    assert_eq!(control & 1, 0, "the 16th slot stays free");
    let mut seen = 0;
    while let Some(e) = r.event() {
        assert_eq!(e.cc(), spec::CC_SUCCESS);
        seen += 1;
    }
    assert_eq!(seen, 20);
}

/// A device that answers later, from the test.
struct Slow {
    waiting: Arc<Mutex<Vec<(Transfer, Completer)>>>,
}

impl UsbDevice for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn speed(&self, max: Speed) -> Speed {
        max.min(Speed::High)
    }
    fn reset(&mut self, _speed: Speed) {}
    fn submit(&mut self, t: Transfer, done: Completer) {
        self.waiting.lock().unwrap().push((t, done));
    }
}

#[test]
fn late_answers_naks_and_unplug_complete_tds() {
    let mut r = Rig::new();
    let waiting = Arc::new(Mutex::new(Vec::new()));
    r.x.attach(
        3,
        Box::new(Slow {
            waiting: waiting.clone(),
        }),
    )
    .unwrap();
    r.start();
    r.reset_port(3);
    let mut ep0 = ProducerRing::new(EP0_RING, 8);
    let slot = r.address(3, &ep0);
    let e = r.control(
        &mut ep0,
        slot,
        [0x80, ch9::GET_DESCRIPTOR, 0, 1, 0, 0, 18, 0],
        18,
    );
    assert!(e.is_empty(), "no event before the device answers");
    let (t, done) = waiting.lock().unwrap().pop().unwrap();
    assert_eq!(t.length, 18);
    std::thread::spawn(move || done.data_in(b"late".to_vec()))
        .join()
        .unwrap();
    r.x.poll();
    let e = r.event().unwrap();
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    let mut got = [0u8; 4];
    r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(&got, b"late");
    // A NAK: the TD waits and is tried again on a poll.
    r.control(&mut ep0, slot, [0x80, ch9::GET_STATUS, 0, 0, 0, 0, 2, 0], 2);
    let (_, done) = waiting.lock().unwrap().pop().unwrap();
    done.fail(TransferStatus::Nak);
    r.x.poll();
    assert!(r.x.wants_poll());
    r.x.poll();
    assert_eq!(r.event(), None);
    assert_eq!(waiting.lock().unwrap().len(), 1, "submitted again");
    // Unplugged with the transfer in flight: USB Transaction Error.
    r.x.detach(3).unwrap();
    let e = r.event().unwrap();
    assert_eq!(
        (e.ty(), e.cc()),
        (spec::EVENT_TRANSFER, spec::CC_USB_TRANSACTION_ERROR)
    );
    drop(waiting.lock().unwrap().pop());
    r.x.poll();
    assert_eq!(r.event(), None);
}

#[test]
fn msi_replaces_inta_once_enabled() {
    let mut r = Rig::new();
    let msi = crate::irq::RecordingMsi::new();
    r.x.set_msi(Some(msi.clone()));
    // The capability list leads to a 64-bit MSI capability.
    assert_ne!(r.x.config_read(0x04) >> 16 & 0x10, 0);
    let cap = (r.x.config_read(0x34) & 0xff) as usize;
    assert_eq!(r.x.config_read(cap) & 0xff, 0x05);
    r.x.config_write(cap + 4, &0xfee0_0000u32.to_le_bytes());
    r.x.config_write(cap + 12, &0x4041u16.to_le_bytes());
    r.x.config_write(cap + 2, &1u16.to_le_bytes());
    r.start();
    let e = r.command(0, spec::CMD_NOOP << spec::TRB_TYPE_SHIFT);
    assert_eq!(e.cc(), spec::CC_SUCCESS);
    assert_eq!(msi.messages(), vec![(0xfee0_0000, 0x4041)]);
    assert!(!r.irq.level(), "no INTA with MSI on");
    // Another event while IP is still set sends nothing new.
    r.command(0, spec::CMD_NOOP << spec::TRB_TYPE_SHIFT);
    assert_eq!(msi.messages().len(), 1);
    r.w32(Rig::ir(spec::IMAN), spec::IMAN_IP | spec::IMAN_IE);
    r.command(0, spec::CMD_NOOP << spec::TRB_TYPE_SHIFT);
    assert_eq!(msi.messages().len(), 2);
}

#[test]
fn event_data_trbs_and_short_bulk_reads_report_lengths() {
    let mut r = Rig::new();
    let (_, dev) = disk();
    r.x.attach(1, dev).unwrap();
    let (slot, _ep0, mut out, mut inr) = configured_disk(&mut r);
    // A CBW (TEST UNIT READY) in two chained Normal TRBs, then an Event
    // Data TRB: one event, with the Event Data parameter and the length
    // of the whole TD.
    let mut cbw = vec![0u8; msd::CBW_LEN];
    cbw[0..4].copy_from_slice(&msd::CBW_SIGNATURE.to_le_bytes());
    cbw[4..8].copy_from_slice(&7u32.to_le_bytes());
    cbw[14] = 6;
    r.mem.write_slice(&cbw, GuestAddress(BUF)).unwrap();
    let normal = spec::TRB_NORMAL << spec::TRB_TYPE_SHIFT | spec::TRB_CH;
    out.push(&r.mem, BUF, 16, normal);
    out.push(&r.mem, BUF + 16, 15, normal);
    out.push(
        &r.mem,
        0xabcd_0000,
        0,
        spec::TRB_EVENT_DATA << spec::TRB_TYPE_SHIFT | spec::TRB_IOC,
    );
    r.w32(spec::DOORBELL_BASE + 4 * slot as u64, 4);
    let e = r.event().unwrap();
    assert_eq!(e.param, 0xabcd_0000);
    assert_ne!(e.control & spec::TRB_EVENT_ED, 0);
    assert_eq!((e.cc(), e.len()), (spec::CC_SUCCESS, 31));
    assert_eq!(r.event(), None);
    // The CSW into a 64-byte buffer with ISP: Short Packet, 51 left over.
    let at = inr.push(
        &r.mem,
        BUF + 0x100,
        64,
        spec::TRB_NORMAL << spec::TRB_TYPE_SHIFT | spec::TRB_ISP | spec::TRB_IOC,
    );
    r.w32(spec::DOORBELL_BASE + 4 * slot as u64, 3);
    let e = r.event().unwrap();
    assert_eq!((e.param, e.cc(), e.len()), (at, spec::CC_SHORT_PACKET, 51));
    let mut csw = [0u8; 13];
    r.mem
        .read_slice(&mut csw, GuestAddress(BUF + 0x100))
        .unwrap();
    assert_eq!(&csw[0..4], &msd::CSW_SIGNATURE.to_le_bytes());
    assert_eq!(csw[12], msd::CSW_PASSED);
    // A bulk IN with no command pending NAKs; Stop Endpoint gives the TD
    // up with a Stopped event.
    let at = inr.push(
        &r.mem,
        BUF,
        512,
        spec::TRB_NORMAL << spec::TRB_TYPE_SHIFT | spec::TRB_IOC,
    );
    r.w32(spec::DOORBELL_BASE + 4 * slot as u64, 3);
    assert_eq!(r.event(), None);
    r.cmd.push(
        &r.mem,
        0,
        0,
        spec::CMD_STOP_ENDPOINT << spec::TRB_TYPE_SHIFT | (slot as u32) << 24 | 3 << 16,
    );
    r.w32(spec::DOORBELL_BASE, 0);
    let stopped = r.event().unwrap();
    assert_eq!(stopped.ty(), spec::EVENT_TRANSFER);
    assert_eq!((stopped.param, stopped.cc()), (at, spec::CC_STOPPED));
    let done = r.event().unwrap();
    assert_eq!(
        (done.ty(), done.cc()),
        (spec::EVENT_COMMAND_COMPLETION, spec::CC_SUCCESS)
    );
    assert_eq!(r.ctx_read(OUTPUT + 32 * 3, 0) & 7, spec::EP_STATE_STOPPED);
}

#[test]
fn only_answers_from_other_threads_and_naks_wake_the_poller() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut r = Rig::new();
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = wakes.clone();
    r.x.set_wake(Some(Arc::new(move || {
        w.fetch_add(1, Ordering::SeqCst);
    })));
    // A disk answers inside the doorbell write: its reads complete
    // before the write returns and wake nobody.
    let (_d, dev) = disk();
    r.x.attach(1, dev).unwrap();
    let (slot, _ep0, mut out, mut inr) = configured_disk(&mut r);
    let read10 = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    let (data, status) = scsi(&mut r, &mut out, &mut inr, slot, &read10, 512, true);
    assert_eq!((data.len(), status), (1, 0));
    assert_eq!(
        wakes.load(Ordering::SeqCst),
        0,
        "inline answers woke the poller"
    );
    // A device that answers later, from another thread: that wakes it.
    let waiting = Arc::new(Mutex::new(Vec::new()));
    r.x.attach(
        3,
        Box::new(Slow {
            waiting: waiting.clone(),
        }),
    )
    .unwrap();
    r.reset_port(3);
    let mut ep0 = ProducerRing::new(EP0_RING + 0x800, 8);
    let slot3 = r.address(3, &ep0);
    let before = wakes.load(Ordering::SeqCst);
    r.control(
        &mut ep0,
        slot3,
        [0x80, ch9::GET_STATUS, 0, 0, 0, 0, 2, 0],
        2,
    );
    assert_eq!(wakes.load(Ordering::SeqCst), before, "nothing answered yet");
    let (_, done) = waiting.lock().unwrap().pop().unwrap();
    std::thread::spawn(move || done.data_in(vec![1, 0]))
        .join()
        .unwrap();
    assert_eq!(wakes.load(Ordering::SeqCst), before + 1);
    r.x.poll();
    assert_eq!(r.event().map(|e| e.cc()), Some(spec::CC_SUCCESS));
    // A NAK given inside the doorbell write: the TD must be tried again,
    // so the write's end wakes the poller.
    struct Naks;
    impl UsbDevice for Naks {
        fn name(&self) -> &str {
            "naks"
        }
        fn speed(&self, max: Speed) -> Speed {
            max.min(Speed::High)
        }
        fn reset(&mut self, _speed: Speed) {}
        fn submit(&mut self, _t: Transfer, done: Completer) {
            done.fail(TransferStatus::Nak);
        }
    }
    r.x.detach(3).unwrap();
    while r.event().is_some() {}
    r.x.attach(2, Box::new(Naks)).unwrap();
    r.reset_port(2);
    let ep0 = ProducerRing::new(EP0_RING + 0xc00, 8);
    let before = wakes.load(Ordering::SeqCst);
    // Address Device sends nothing to the device; the first control
    // transfer does, and is NAKed.
    let slot2 = r.address(2, &ep0);
    let mut ep0 = ep0;
    r.control(
        &mut ep0,
        slot2,
        [0x80, ch9::GET_STATUS, 0, 0, 0, 0, 2, 0],
        2,
    );
    assert!(r.x.wants_poll());
    assert!(
        wakes.load(Ordering::SeqCst) > before,
        "a NAK left the poller asleep"
    );
}
