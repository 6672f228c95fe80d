//! UHCI tests that play the guest driver (UHCI Design Guide 1.1): build
//! frame lists, queue heads and TDs in guest memory, run frames, and check
//! what a driver checks: TD status and actual lengths, bytes in its
//! buffers, USBSTS, PORTSC and the interrupt line.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::keyboard::{KeyboardHandle, UsbKeyboard};
use super::msd_spec as msd;
use super::storage::UsbStorage;
use super::uhci::Uhci;
use super::uhci_spec as spec;
use super::usb_spec as ch9;
use crate::bus::BusDevice;
use crate::irq::RecordingIrq;
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_IO};
use crate::pci::PciFunction;
use crate::storage::testing::MemDisk;
use crate::GuestMemory;

const IO: u64 = 0xc040;
const FRAME_LIST: u64 = 0x10_000;
/// The one queue head every frame points at.
const QH: u64 = 0x11_000;
const TDS: u64 = 0x12_000;
const BUF: u64 = 0x20_000;

struct Rig {
    uhci: Uhci,
    mem: GuestMemory,
    irq: Arc<RecordingIrq>,
    next_td: u64,
    toggle: [bool; 32],
}

fn td_token(pid: u8, addr: u8, ep: u8, toggle: bool, len: usize) -> u32 {
    let maxlen = if len == 0 {
        spec::MAXLEN_NULL
    } else {
        len as u32 - 1
    };
    u32::from(pid)
        | u32::from(addr) << spec::TOKEN_ADDR_SHIFT
        | u32::from(ep) << spec::TOKEN_ENDP_SHIFT
        | if toggle { spec::TOKEN_TOGGLE } else { 0 }
        | maxlen << spec::TOKEN_MAXLEN_SHIFT
}

impl Rig {
    fn new() -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let irq = RecordingIrq::new();
        let mut uhci = Uhci::new(mem.clone(), irq.clone());
        uhci.config_write(0x20, &(IO as u32 | 1).to_le_bytes());
        uhci.config_write(0x04, &(COMMAND_IO | COMMAND_BUS_MASTER).to_le_bytes());
        let mut r = Self {
            uhci,
            mem,
            irq,
            next_td: TDS,
            toggle: [false; 32],
        };
        // Global setup as a driver does it: reset, frame list of one QH,
        // start.
        r.w16(spec::USBCMD, spec::CMD_HCRESET);
        for i in 0..1024 {
            r.mem
                .write_obj(
                    (QH as u32) | spec::LINK_QH,
                    GuestAddress(FRAME_LIST + 4 * i),
                )
                .unwrap();
        }
        r.set_qh(spec::LINK_TERMINATE, spec::LINK_TERMINATE);
        r.w32(spec::FLBASEADD, FRAME_LIST as u32);
        r.w16(spec::FRNUM, 0);
        r
    }

    fn w16(&mut self, reg: u64, v: u16) {
        self.uhci.write(IO + reg, &v.to_le_bytes());
    }
    fn w32(&mut self, reg: u64, v: u32) {
        self.uhci.write(IO + reg, &v.to_le_bytes());
    }
    fn r16(&mut self, reg: u64) -> u16 {
        let mut b = [0u8; 2];
        self.uhci.read(IO + reg, &mut b);
        u16::from_le_bytes(b)
    }

    fn set_qh(&self, head: u32, element: u32) {
        self.mem.write_obj(head, GuestAddress(QH)).unwrap();
        self.mem.write_obj(element, GuestAddress(QH + 4)).unwrap();
    }

    fn start(&mut self) {
        self.w16(spec::USBCMD, spec::CMD_RS | spec::CMD_MAXP);
    }

    /// Resets and enables root port `n` (1 or 2), as a driver does.
    fn enable_port(&mut self, n: u64) {
        let reg = spec::PORTSC1 + 2 * (n - 1);
        self.w16(reg, spec::PORT_PR);
        self.w16(reg, 0);
        self.w16(reg, spec::PORT_PE | spec::PORT_CSC | spec::PORT_PEC);
    }

    /// Writes a TD; returns its address.
    fn td(&mut self, ctrl: u32, token: u32, buffer: u64) -> u64 {
        let a = self.next_td;
        self.next_td += 16;
        self.mem
            .write_obj(spec::LINK_TERMINATE, GuestAddress(a))
            .unwrap();
        self.mem.write_obj(ctrl, GuestAddress(a + 4)).unwrap();
        self.mem.write_obj(token, GuestAddress(a + 8)).unwrap();
        self.mem
            .write_obj(buffer as u32, GuestAddress(a + 12))
            .unwrap();
        a
    }

    fn link(&self, from: u64, to: u64) {
        self.mem
            .write_obj(to as u32 | spec::LINK_DEPTH_FIRST, GuestAddress(from))
            .unwrap();
    }

    fn ctrl(&self, td: u64) -> u32 {
        self.mem.read_obj(GuestAddress(td + 4)).unwrap()
    }

    /// Runs frames until the queue is empty or a TD stopped it.
    fn run_queue(&mut self, tds: &[u64], frames: usize) {
        for (a, b) in tds.iter().zip(tds.iter().skip(1)) {
            self.link(*a, *b);
        }
        self.set_qh(spec::LINK_TERMINATE, tds[0] as u32);
        for _ in 0..frames {
            self.uhci.run_frame();
            let el: u32 = self.mem.read_obj(GuestAddress(QH + 4)).unwrap();
            if el & spec::LINK_TERMINATE != 0 {
                return;
            }
            let td = u64::from(el & spec::LINK_ADDR_MASK);
            if self.ctrl(td) & spec::TD_STATUS_ACTIVE == 0 {
                return;
            }
        }
    }

    const ACTIVE: u32 = spec::TD_STATUS_ACTIVE | 3 << spec::TD_CERR_SHIFT;

    /// A control transfer: SETUP, data in `max_packet` pieces, status.
    /// Returns the IN data, or the status bits of the TD that failed.
    fn control(
        &mut self,
        addr: u8,
        setup: [u8; 8],
        out: &[u8],
        max_packet: usize,
    ) -> Result<Vec<u8>, u32> {
        self.next_td = TDS;
        let dir_in = setup[0] & 0x80 != 0;
        let len = usize::from(u16::from_le_bytes([setup[6], setup[7]]));
        self.mem.write_slice(&setup, GuestAddress(BUF)).unwrap();
        let mut tds = vec![self.td(
            Self::ACTIVE,
            td_token(ch9::PID_SETUP, addr, 0, false, 8),
            BUF,
        )];
        let data = BUF + 0x100;
        if !dir_in {
            self.mem.write_slice(out, GuestAddress(data)).unwrap();
        }
        let mut toggle = true;
        let mut off = 0;
        while off < len {
            let n = max_packet.min(len - off);
            let pid = if dir_in { ch9::PID_IN } else { ch9::PID_OUT };
            tds.push(self.td(
                Self::ACTIVE | spec::TD_SPD,
                td_token(pid, addr, 0, toggle, n),
                data + off as u64,
            ));
            toggle = !toggle;
            off += n;
        }
        let status_pid = if dir_in { ch9::PID_OUT } else { ch9::PID_IN };
        tds.push(self.td(
            Self::ACTIVE | spec::TD_IOC,
            td_token(status_pid, addr, 0, true, 0),
            0,
        ));
        self.run_queue(&tds, 50);
        let mut got = Vec::new();
        for (i, &td) in tds.iter().enumerate() {
            let c = self.ctrl(td);
            if c & spec::TD_STATUS_ACTIVE != 0 || c & 0x007e_0000 != 0 {
                return Err(c);
            }
            let actual = ((c + 1) & spec::TD_ACTLEN_MASK) as usize;
            if dir_in && i > 0 && i < tds.len() - 1 {
                let mut b = vec![0u8; actual];
                let tok: u32 = self.mem.read_obj(GuestAddress(td + 12)).unwrap();
                self.mem
                    .read_slice(&mut b, GuestAddress(u64::from(tok)))
                    .unwrap();
                got.extend_from_slice(&b);
                if actual < max_packet {
                    // The short packet ended the data stage: run status.
                    let last = *tds.last().unwrap();
                    self.run_queue(&[last], 10);
                    let c = self.ctrl(last);
                    if c & spec::TD_STATUS_ACTIVE != 0 || c & 0x007e_0000 != 0 {
                        return Err(c);
                    }
                    break;
                }
            }
        }
        Ok(got)
    }

    /// One bulk packet sequence on `ep` (IN when `dir_in`) of `len` bytes
    /// at BUF+0x1000.
    fn bulk(&mut self, addr: u8, ep: u8, dir_in: bool, len: usize) -> Result<usize, u32> {
        self.next_td = TDS;
        let mut tds = Vec::new();
        let mut off = 0;
        loop {
            let n = 64.min(len - off);
            let slot = usize::from(ep) + if dir_in { 16 } else { 0 };
            let pid = if dir_in { ch9::PID_IN } else { ch9::PID_OUT };
            tds.push(self.td(
                Self::ACTIVE | spec::TD_SPD,
                td_token(pid, addr, ep, self.toggle[slot], n),
                BUF + 0x1000 + off as u64,
            ));
            self.toggle[slot] = !self.toggle[slot];
            off += n;
            if off >= len {
                break;
            }
        }
        self.run_queue(&tds, 100);
        let mut total = 0;
        for td in tds {
            let c = self.ctrl(td);
            if c & spec::TD_STATUS_ACTIVE != 0 {
                break;
            }
            if c & 0x007e_0000 != 0 {
                return Err(c);
            }
            let actual = ((c + 1) & spec::TD_ACTLEN_MASK) as usize;
            total += actual;
            if actual < 64 {
                break;
            }
        }
        Ok(total)
    }

    /// Enumerates the device on port 1 as address 1, configuration 1.
    fn enumerate(&mut self) -> Vec<u8> {
        self.enable_port(1);
        let d = self
            .control(0, [0x80, ch9::GET_DESCRIPTOR, 0, 1, 0, 0, 18, 0], &[], 8)
            .unwrap();
        self.control(0, [0, ch9::SET_ADDRESS, 1, 0, 0, 0, 0, 0], &[], 8)
            .unwrap();
        self.control(1, [0, ch9::SET_CONFIGURATION, 1, 0, 0, 0, 0, 0], &[], 8)
            .unwrap();
        d
    }

    /// A BOT command with data in or out of `len` bytes at BUF+0x1000.
    fn scsi(&mut self, cb: &[u8], len: usize, dir_in: bool) -> (usize, u8) {
        let mut cbw = vec![0u8; 31];
        cbw[0..4].copy_from_slice(&msd::CBW_SIGNATURE.to_le_bytes());
        cbw[4..8].copy_from_slice(&0x1234u32.to_le_bytes());
        cbw[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        cbw[12] = if dir_in { 0x80 } else { 0 };
        cbw[14] = cb.len() as u8;
        cbw[15..15 + cb.len()].copy_from_slice(cb);
        let saved = {
            let mut s = vec![0u8; 31];
            self.mem
                .read_slice(&mut s, GuestAddress(BUF + 0x1000))
                .unwrap();
            s
        };
        self.mem
            .write_slice(&cbw, GuestAddress(BUF + 0x1000))
            .unwrap();
        assert_eq!(self.bulk(1, 2, false, 31), Ok(31));
        self.mem
            .write_slice(&saved, GuestAddress(BUF + 0x1000))
            .unwrap();
        let moved = if len > 0 {
            self.bulk(1, if dir_in { 1 } else { 2 }, dir_in, len)
                .unwrap()
        } else {
            0
        };
        let data_copy = {
            let mut s = vec![0u8; 13];
            self.mem
                .read_slice(&mut s, GuestAddress(BUF + 0x1000))
                .unwrap();
            s
        };
        assert_eq!(self.bulk(1, 1, true, 13), Ok(13));
        let mut csw = [0u8; 13];
        self.mem
            .read_slice(&mut csw, GuestAddress(BUF + 0x1000))
            .unwrap();
        self.mem
            .write_slice(&data_copy, GuestAddress(BUF + 0x1000))
            .unwrap();
        assert_eq!(&csw[0..4], &msd::CSW_SIGNATURE.to_le_bytes());
        assert_eq!(&csw[4..8], &0x1234u32.to_le_bytes());
        (moved, csw[12])
    }
}

pub(super) fn disk() -> (Arc<MemDisk>, Box<UsbStorage>) {
    let d = Arc::new(MemDisk::patterned(4 << 20, |o| (o / 512) as u8 ^ (o as u8)));
    let s = Box::new(UsbStorage::new(d.clone(), false, "0123456789AB"));
    (d, s)
}

#[test]
fn registers_reset_values_and_port_connect() {
    let mut r = Rig::new();
    assert_eq!(r.uhci.config_read(0), 0x7020_8086);
    assert_eq!(r.uhci.config_read(0x08) >> 8, 0x0c0300);
    assert_eq!(r.uhci.config_read(0x3c) >> 8 & 0xff, 4, "INTD");
    assert_eq!(r.r16(spec::USBSTS), spec::STS_HCH);
    assert_eq!(r.r16(spec::PORTSC1), spec::PORT_ALWAYS_ONE);
    let (_, s) = disk();
    r.uhci.attach(1, s).unwrap();
    let sc = r.r16(spec::PORTSC1);
    assert_eq!(
        sc & (spec::PORT_CCS | spec::PORT_CSC | spec::PORT_LSDA | spec::PORT_LS_DPLUS),
        spec::PORT_CCS | spec::PORT_CSC | spec::PORT_LS_DPLUS
    );
    // CSC is write-one-to-clear; PE sticks once the port has a device.
    r.w16(spec::PORTSC1, spec::PORT_CSC | spec::PORT_PE);
    let sc = r.r16(spec::PORTSC1);
    assert_eq!(sc & (spec::PORT_CSC | spec::PORT_PE), spec::PORT_PE);
    // An empty port cannot be enabled.
    r.w16(spec::PORTSC1 + 2, spec::PORT_PE);
    assert_eq!(r.r16(spec::PORTSC1 + 2) & spec::PORT_PE, 0);
    // FLBASEADD keeps 4 KiB alignment; FRNUM is writable only when halted.
    r.w32(spec::FLBASEADD, 0x1234_5678);
    let mut b = [0u8; 4];
    r.uhci.read(IO + spec::FLBASEADD, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1234_5000);
    r.w32(spec::FLBASEADD, FRAME_LIST as u32);
    r.start();
    assert_eq!(r.r16(spec::USBSTS) & spec::STS_HCH, 0);
    r.uhci.run_frame();
    r.uhci.run_frame();
    assert_eq!(r.r16(spec::FRNUM), 2);
    r.w16(spec::FRNUM, 100);
    assert_eq!(r.r16(spec::FRNUM), 2);
    // Detach: disconnect seen, port disabled.
    r.uhci.detach(1).unwrap();
    let sc = r.r16(spec::PORTSC1);
    assert_eq!(sc & (spec::PORT_CCS | spec::PORT_PE), 0);
    assert_eq!(
        sc & (spec::PORT_CSC | spec::PORT_PEC),
        spec::PORT_CSC | spec::PORT_PEC
    );
}

#[test]
fn enumerates_and_reads_a_disk_through_tds() {
    let mut r = Rig::new();
    let (medium, s) = disk();
    r.uhci.attach(1, s).unwrap();
    r.start();
    let d = r.enumerate();
    assert_eq!(d.len(), 18);
    assert_eq!(d[1], ch9::DT_DEVICE);
    assert_eq!(u16::from_le_bytes([d[8], d[9]]), 0x46f4);
    // Configuration descriptor, all of it, in 8-byte packets: a short
    // last packet ends the data stage.
    let c = r
        .control(1, [0x80, ch9::GET_DESCRIPTOR, 0, 2, 0, 0, 255, 0], &[], 8)
        .unwrap();
    assert_eq!(c.len(), 32);
    assert_eq!((c[9 + 5], c[9 + 6], c[9 + 7]), (8, 6, 0x50));
    // INQUIRY and READ(10) of 8 sectors at LBA 3 through bulk TDs.
    let (n, status) = r.scsi(&[msd::INQUIRY, 0, 0, 0, 36, 0], 36, true);
    assert_eq!((n, status), (36, 0));
    let (n, status) = r.scsi(&[msd::READ_10, 0, 0, 0, 0, 3, 0, 0, 8, 0], 4096, true);
    assert_eq!((n, status), (4096, 0));
    let mut got = vec![0u8; 4096];
    r.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(got, medium.bytes(3 * 512..11 * 512));
    // WRITE(10) of 2 sectors at LBA 100.
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
    r.mem
        .write_slice(&pattern, GuestAddress(BUF + 0x1000))
        .unwrap();
    let (n, status) = r.scsi(&[msd::WRITE_10, 0, 0, 0, 0, 100, 0, 0, 2, 0], 1024, false);
    assert_eq!((n, status), (1024, 0));
    assert_eq!(medium.bytes(100 * 512..102 * 512), pattern);
    // IOC on the status TDs raised USBINT; with IOC enabled the line rises.
    assert_ne!(r.r16(spec::USBSTS) & spec::STS_USBINT, 0);
    assert!(!r.irq.level());
    r.w16(spec::USBINTR, spec::INTR_IOC);
    assert!(r.irq.level());
    r.w16(spec::USBSTS, spec::STS_USBINT);
    assert!(!r.irq.level());
}

#[test]
fn stall_nak_and_missing_devices() {
    let mut r = Rig::new();
    let kbd = KeyboardHandle::default();
    r.uhci
        .attach(1, Box::new(UsbKeyboard::new(kbd.clone())))
        .unwrap();
    r.start();
    r.enumerate();
    // A request the device refuses stalls its data stage.
    let e = r
        .control(1, [0x80, ch9::GET_DESCRIPTOR, 0, 0x42, 0, 0, 8, 0], &[], 8)
        .unwrap_err();
    assert_ne!(e & spec::TD_STATUS_STALLED, 0);
    assert_ne!(r.r16(spec::USBSTS) & spec::STS_ERROR, 0);
    // An interrupt IN with no key: NAKed, the TD stays active.
    r.next_td = TDS;
    let td = r.td(
        Rig::ACTIVE,
        td_token(ch9::PID_IN, 1, 1, false, 8),
        BUF + 0x1000,
    );
    r.run_queue(&[td], 3);
    let c = r.ctrl(td);
    assert_ne!(c & spec::TD_STATUS_ACTIVE, 0);
    assert_ne!(c & spec::TD_STATUS_NAK, 0);
    // A key press completes it with the boot report.
    kbd.key(0x04, true);
    r.uhci.run_frame();
    let c = r.ctrl(td);
    assert_eq!(c & spec::TD_STATUS_ACTIVE, 0);
    assert_eq!((c + 1) & spec::TD_ACTLEN_MASK, 8);
    let mut rep = [0u8; 8];
    r.mem
        .read_slice(&mut rep, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(rep, [0, 0, 4, 0, 0, 0, 0, 0]);
    // A TD to an address nobody has times out.
    r.next_td = TDS;
    let td = r.td(Rig::ACTIVE, td_token(ch9::PID_IN, 9, 1, false, 8), BUF);
    r.run_queue(&[td], 2);
    let c = r.ctrl(td);
    assert_eq!(c & spec::TD_STATUS_ACTIVE, 0);
    assert_ne!(c & spec::TD_STATUS_CRC_TIMEOUT, 0);
}

#[test]
fn looping_schedules_end_the_frame_and_bad_pointers_halt() {
    let mut r = Rig::new();
    let (_, s) = disk();
    r.uhci.attach(1, s).unwrap();
    r.start();
    // A QH whose horizontal link points at itself, and a TD ring of
    // inactive TDs: each frame ends, the frame number moves on.
    r.next_td = TDS;
    let a = r.td(0, td_token(ch9::PID_IN, 1, 1, false, 8), BUF);
    let b = r.td(0, td_token(ch9::PID_IN, 1, 1, false, 8), BUF);
    r.link(a, b);
    r.link(b, a);
    r.set_qh(QH as u32 | spec::LINK_QH, a as u32);
    for _ in 0..5 {
        r.uhci.run_frame();
    }
    assert_eq!(r.r16(spec::FRNUM), 5);
    assert_eq!(r.r16(spec::USBSTS) & spec::STS_HCH, 0);
    // A TD ring linked horizontally (no QH), all active to a device that
    // is not there: each TD times out once; then the ring is inactive.
    r.mem
        .write_obj(a as u32, GuestAddress(FRAME_LIST + 4 * 5))
        .unwrap();
    r.mem.write_obj(b as u32, GuestAddress(a)).unwrap();
    r.mem.write_obj(a as u32, GuestAddress(b)).unwrap();
    r.mem.write_obj(Rig::ACTIVE, GuestAddress(a + 4)).unwrap();
    r.uhci.run_frame();
    assert_eq!(r.r16(spec::FRNUM), 6);
    // A frame list entry that points outside guest RAM: Host System
    // Error, halted, the interrupt line up.
    r.mem
        .write_obj(0xfff0_0000u32, GuestAddress(FRAME_LIST + 4 * 6))
        .unwrap();
    r.uhci.run_frame();
    let sts = r.r16(spec::USBSTS);
    assert_eq!(
        sts & (spec::STS_HSE | spec::STS_HCH),
        spec::STS_HSE | spec::STS_HCH
    );
    assert!(r.irq.level());
    assert!(!r.uhci.running());
    // An illegal MaxLen halts with a process error.
    let mut r = Rig::new();
    r.start();
    r.next_td = TDS;
    let td = r.td(
        Rig::ACTIVE,
        0x600 << spec::TOKEN_MAXLEN_SHIFT | u32::from(ch9::PID_IN),
        BUF,
    );
    r.run_queue(&[td], 1);
    assert_ne!(r.r16(spec::USBSTS) & spec::STS_HCPE, 0);
    assert!(!r.uhci.running());
}

/// A device that answers later, from the test: a backend across a
/// network would.
struct Slow {
    waiting: Arc<std::sync::Mutex<Vec<(super::Transfer, super::Completer)>>>,
}

impl super::UsbDevice for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn speed(&self, max: super::Speed) -> super::Speed {
        max
    }
    fn reset(&mut self, _speed: super::Speed) {}
    fn submit(&mut self, t: super::Transfer, done: super::Completer) {
        self.waiting.lock().unwrap().push((t, done));
    }
}

#[test]
fn transfers_that_complete_later_keep_their_td_active_until_then() {
    let mut r = Rig::new();
    let waiting = Arc::new(std::sync::Mutex::new(Vec::new()));
    r.uhci
        .attach(
            2,
            Box::new(Slow {
                waiting: waiting.clone(),
            }),
        )
        .unwrap();
    r.start();
    r.enable_port(2);
    r.next_td = TDS;
    let td = r.td(
        Rig::ACTIVE | spec::TD_IOC,
        td_token(ch9::PID_IN, 0, 3, false, 16),
        BUF,
    );
    r.run_queue(&[td], 5);
    // Submitted once, not answered: the TD stays active, no NAK storm of
    // resubmissions.
    assert_eq!(waiting.lock().unwrap().len(), 1);
    assert_ne!(r.ctrl(td) & spec::TD_STATUS_ACTIVE, 0);
    let (t, done) = waiting.lock().unwrap().pop().unwrap();
    assert_eq!((t.endpoint, t.length), (3, 16));
    // The answer comes from another thread.
    std::thread::spawn(move || done.data_in(b"late answer".to_vec()))
        .join()
        .unwrap();
    r.uhci.run_frame();
    let c = r.ctrl(td);
    assert_eq!(c & spec::TD_STATUS_ACTIVE, 0);
    assert_eq!(((c + 1) & spec::TD_ACTLEN_MASK) as usize, 11);
    let mut got = [0u8; 11];
    r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(&got, b"late answer");
    assert_ne!(r.r16(spec::USBSTS) & spec::STS_USBINT, 0);
    // A transfer in flight when the device is unplugged ends in an error
    // on the guest's next frame.
    r.next_td = TDS;
    let td = r.td(Rig::ACTIVE, td_token(ch9::PID_IN, 0, 3, false, 16), BUF);
    r.run_queue(&[td], 2);
    assert_ne!(r.ctrl(td) & spec::TD_STATUS_ACTIVE, 0);
    r.uhci.detach(2).unwrap();
    drop(waiting.lock().unwrap().pop());
    r.uhci.run_frame();
    let c = r.ctrl(td);
    assert_eq!(c & spec::TD_STATUS_ACTIVE, 0);
    assert_ne!(c & spec::TD_STATUS_CRC_TIMEOUT, 0);
}
