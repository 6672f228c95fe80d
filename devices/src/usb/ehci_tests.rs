//! EHCI tests that play the guest driver (EHCI 1.0): program the
//! capability and operational registers through BAR 0, build queue heads,
//! qTDs and a periodic frame list in guest memory, run frames, and check
//! what a driver checks: qTD tokens, bytes in its buffers, USBSTS, PORTSC
//! (the EHCI's and the companion UHCI's) and the interrupt line.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::ehci::Ehci;
use super::ehci_spec as spec;
use super::keyboard::{KeyboardHandle, UsbKeyboard};
use super::msd_spec as msd;
use super::uhci::{Uhci, UhciIdentity};
use super::uhci_spec;
use super::uhci_tests::disk;
use super::usb_spec as ch9;
use super::{Completer, Speed, Transfer, UsbDevice};
use crate::bus::BusDevice;
use crate::irq::RecordingIrq;
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_IO, COMMAND_MEMORY};
use crate::pci::PciFunction;
use crate::GuestMemory;

const MMIO: u64 = 0xfebf_0000;
const OP: u64 = MMIO + spec::CAP_LEN;
const UHCI_IO: u64 = 0xc080;
const FRAME_LIST: u64 = 0x10_000;
/// The async ring: a head QH and the QH transfers run on.
const HEAD_QH: u64 = 0x11_000;
const WORK_QH: u64 = 0x11_080;
/// The interrupt QH every frame points at, when used.
const INTR_QH: u64 = 0x11_100;
const QTDS: u64 = 0x12_000;
const BUF: u64 = 0x20_000;

struct Rig {
    ehci: Ehci,
    uhci: Uhci,
    mem: GuestMemory,
    irq: Arc<RecordingIrq>,
    next_qtd: u64,
}

const QH_LINK_TO: fn(u64) -> u32 = |a| a as u32 | spec::LINK_TYPE_QH << spec::LINK_TYPE_SHIFT;

impl Rig {
    fn new() -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let irq = RecordingIrq::new();
        let mut ehci = Ehci::new(mem.clone(), irq.clone());
        ehci.config_write(0x10, &(MMIO as u32).to_le_bytes());
        ehci.config_write(0x04, &(COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes());
        let id = UhciIdentity {
            device_id: spec::DEVICE_ICH9_UHCI[0],
            revision: spec::REVISION,
            interrupt_pin: spec::COMPANION_INTERRUPT_PINS[0],
            multifunction: true,
        };
        let mut uhci = Uhci::companion(mem.clone(), RecordingIrq::new(), id, ehci.root_ports(), 0);
        uhci.config_write(0x20, &(UHCI_IO as u32 | 1).to_le_bytes());
        uhci.config_write(0x04, &(COMMAND_IO | COMMAND_BUS_MASTER).to_le_bytes());
        let mut r = Self {
            ehci,
            uhci,
            mem,
            irq,
            next_qtd: QTDS,
        };
        r.w(spec::USBCMD, spec::CMD_HCRESET);
        // Frame list: every entry empty. Async ring: head -> work -> head.
        for i in 0..1024 {
            r.put(FRAME_LIST + 4 * i, spec::LINK_TERMINATE);
        }
        r.put(HEAD_QH, QH_LINK_TO(WORK_QH));
        r.put(HEAD_QH + spec::QH_EP_CHARS, spec::EPCHAR_HEAD);
        r.put(HEAD_QH + spec::QH_OVERLAY, spec::LINK_TERMINATE);
        r.put(HEAD_QH + spec::QH_OVERLAY + 4, spec::LINK_TERMINATE);
        r.put(WORK_QH, QH_LINK_TO(HEAD_QH));
        r.put(WORK_QH + spec::QH_OVERLAY, spec::LINK_TERMINATE);
        r.put(WORK_QH + spec::QH_OVERLAY + 4, spec::LINK_TERMINATE);
        r.w(spec::PERIODICLISTBASE, FRAME_LIST as u32);
        r.w(spec::ASYNCLISTADDR, HEAD_QH as u32);
        r
    }

    fn put(&self, addr: u64, v: u32) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }
    fn get(&self, addr: u64) -> u32 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }
    fn w(&mut self, reg: u64, v: u32) {
        self.ehci.write(OP + reg, &v.to_le_bytes());
    }
    fn r(&mut self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ehci.read(OP + reg, &mut b);
        u32::from_le_bytes(b)
    }
    fn portsc(&mut self, n: u64) -> u32 {
        self.r(spec::PORTSC0 + 4 * (n - 1))
    }
    fn set_portsc(&mut self, n: u64, v: u32) {
        self.w(spec::PORTSC0 + 4 * (n - 1), v);
    }
    fn uhci_portsc(&mut self, n: u64) -> u16 {
        let mut b = [0u8; 2];
        self.uhci
            .read(UHCI_IO + uhci_spec::PORTSC1 + 2 * (n - 1), &mut b);
        u16::from_le_bytes(b)
    }

    /// Takes the ports, starts both schedules.
    fn start(&mut self) {
        self.w(spec::CONFIGFLAG, spec::CONFIGFLAG_CF);
        self.w(
            spec::USBCMD,
            spec::CMD_DEFAULT | spec::CMD_RS | spec::CMD_ASE | spec::CMD_PSE,
        );
    }

    /// Resets root port `n` as a driver does; true when it came out
    /// enabled (a high-speed device).
    fn reset_port(&mut self, n: u64) -> bool {
        let sc = self.portsc(n) & !spec::PORT_W1C;
        self.set_portsc(n, (sc & !spec::PORT_PED) | spec::PORT_RESET);
        let sc = self.portsc(n) & !spec::PORT_W1C;
        self.set_portsc(n, sc & !spec::PORT_RESET);
        self.portsc(n) & spec::PORT_PED != 0
    }

    /// Writes an active qTD of `len` bytes at `buf`; returns its address.
    fn qtd(&mut self, pid: u32, len: usize, buf: u64, ioc: bool) -> u64 {
        let a = self.next_qtd;
        self.next_qtd += 0x40;
        self.put(a, spec::LINK_TERMINATE);
        self.put(a + 4, spec::LINK_TERMINATE);
        let token = spec::TOKEN_STATUS_ACTIVE
            | spec::TOKEN_CERR_MASK
            | pid << spec::TOKEN_PID_SHIFT
            | (len as u32) << spec::TOKEN_BYTES_SHIFT
            | if ioc { spec::TOKEN_IOC } else { 0 };
        self.put(a + spec::QTD_TOKEN, token);
        self.put(a + spec::QTD_BUFFER, buf as u32);
        for p in 1..5u64 {
            self.put(
                a + spec::QTD_BUFFER + 4 * p,
                ((buf & !0xfff) + 0x1000 * p) as u32,
            );
        }
        a
    }

    fn token(&self, qtd: u64) -> u32 {
        self.get(qtd + spec::QTD_TOKEN)
    }

    fn chain(&self, qtds: &[u64]) {
        for (a, b) in qtds.iter().zip(qtds.iter().skip(1)) {
            self.put(*a, *b as u32);
        }
    }

    /// Points queue head `qh` (device `addr`, endpoint `ep`) at `first`.
    fn arm(&self, qh: u64, addr: u8, ep: u8, maxp: u32, first: u64) {
        let chars = u32::from(addr)
            | u32::from(ep) << spec::EPCHAR_ENDPT_SHIFT
            | spec::EPCHAR_EPS_HIGH << spec::EPCHAR_EPS_SHIFT
            | spec::EPCHAR_DTC
            | maxp << spec::EPCHAR_MAXP_SHIFT;
        self.put(qh + spec::QH_EP_CHARS, chars);
        self.put(qh + spec::QH_CURRENT_QTD, 0);
        self.put(qh + spec::QH_OVERLAY, first as u32);
        self.put(qh + spec::QH_OVERLAY + 4, spec::LINK_TERMINATE);
        self.put(qh + spec::QH_OVERLAY + 8, 0);
    }

    /// Runs frames until `last` is no longer active (or 50 frames).
    fn run_until(&mut self, last: u64) {
        for _ in 0..50 {
            self.ehci.run_frame();
            if self.token(last) & spec::TOKEN_STATUS_ACTIVE == 0 {
                return;
            }
        }
    }

    /// A control transfer on the async ring: SETUP, one data qTD, status.
    /// The IN data, or the token of the qTD that halted.
    fn control(&mut self, addr: u8, setup: [u8; 8], out: &[u8]) -> Result<Vec<u8>, u32> {
        self.next_qtd = QTDS;
        let dir_in = setup[0] & 0x80 != 0;
        let len = usize::from(u16::from_le_bytes([setup[6], setup[7]]));
        self.mem.write_slice(&setup, GuestAddress(BUF)).unwrap();
        let mut qtds = vec![self.qtd(spec::PID_CODE_SETUP, 8, BUF, false)];
        let data = BUF + 0x100;
        if len > 0 {
            if !dir_in {
                self.mem.write_slice(out, GuestAddress(data)).unwrap();
            }
            let pid = if dir_in {
                spec::PID_CODE_IN
            } else {
                spec::PID_CODE_OUT
            };
            qtds.push(self.qtd(pid, len, data, false));
        }
        let status = if dir_in {
            spec::PID_CODE_OUT
        } else {
            spec::PID_CODE_IN
        };
        qtds.push(self.qtd(status, 0, 0, true));
        self.chain(&qtds);
        self.arm(WORK_QH, addr, 0, 64, qtds[0]);
        let last = *qtds.last().unwrap();
        self.run_until(last);
        for &q in &qtds {
            let t = self.token(q);
            if t & (spec::TOKEN_STATUS_HALTED | spec::TOKEN_STATUS_ACTIVE) != 0 {
                return Err(t);
            }
        }
        if !dir_in || len == 0 {
            return Ok(Vec::new());
        }
        let left =
            ((self.token(qtds[1]) & spec::TOKEN_BYTES_MASK) >> spec::TOKEN_BYTES_SHIFT) as usize;
        let mut got = vec![0u8; len - left];
        self.mem.read_slice(&mut got, GuestAddress(data)).unwrap();
        Ok(got)
    }

    /// One bulk qTD on the async ring; the bytes moved, or the token.
    fn bulk(&mut self, addr: u8, ep: u8, dir_in: bool, len: usize, buf: u64) -> Result<usize, u32> {
        self.next_qtd = QTDS;
        let pid = if dir_in {
            spec::PID_CODE_IN
        } else {
            spec::PID_CODE_OUT
        };
        let q = self.qtd(pid, len, buf, true);
        self.arm(WORK_QH, addr, ep, 512, q);
        self.run_until(q);
        let t = self.token(q);
        if t & (spec::TOKEN_STATUS_HALTED | spec::TOKEN_STATUS_ACTIVE) != 0 {
            return Err(t);
        }
        Ok(len - ((t & spec::TOKEN_BYTES_MASK) >> spec::TOKEN_BYTES_SHIFT) as usize)
    }

    /// A BOT command with `len` bytes of data at `buf`: (moved, status).
    fn scsi(&mut self, cb: &[u8], len: usize, dir_in: bool, buf: u64) -> (usize, u8) {
        let mut cbw = vec![0u8; msd::CBW_LEN];
        cbw[0..4].copy_from_slice(&msd::CBW_SIGNATURE.to_le_bytes());
        cbw[4..8].copy_from_slice(&0x4321u32.to_le_bytes());
        cbw[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        cbw[12] = if dir_in { msd::CBW_FLAG_IN } else { 0 };
        cbw[14] = cb.len() as u8;
        cbw[15..15 + cb.len()].copy_from_slice(cb);
        let cbw_at = BUF + 0x8000;
        self.mem.write_slice(&cbw, GuestAddress(cbw_at)).unwrap();
        assert_eq!(
            self.bulk(1, 2, false, msd::CBW_LEN, cbw_at),
            Ok(msd::CBW_LEN)
        );
        let moved = if len > 0 {
            self.bulk(1, if dir_in { 1 } else { 2 }, dir_in, len, buf)
                .unwrap()
        } else {
            0
        };
        let csw_at = BUF + 0x9000;
        assert_eq!(self.bulk(1, 1, true, 512, csw_at), Ok(msd::CSW_LEN));
        let mut csw = [0u8; msd::CSW_LEN];
        self.mem.read_slice(&mut csw, GuestAddress(csw_at)).unwrap();
        assert_eq!(&csw[0..4], &msd::CSW_SIGNATURE.to_le_bytes());
        assert_eq!(&csw[4..8], &0x4321u32.to_le_bytes());
        (moved, csw[12])
    }
}

#[test]
fn pci_identity_and_capability_registers() {
    let mut r = Rig::new();
    assert_eq!(r.ehci.config_read(0), 0x293a_8086);
    assert_eq!(r.ehci.config_read(0x08) >> 8, 0x0c0320);
    assert_eq!(r.ehci.config_read(0x3c) >> 8 & 0xff, 4, "INTD");
    assert_eq!(r.ehci.config_read(0x60) & 0xff, 0x20, "SBRN USB 2.0");
    assert_eq!(r.uhci.config_read(0), 0x2934_8086);
    assert_eq!(r.uhci.config_read(0x0c) >> 16 & 0x80, 0x80, "multifunction");
    let mut b = [0u8; 4];
    r.ehci.read(MMIO, &mut b);
    assert_eq!(b, [0x20, 0, 0x00, 0x01], "CAPLENGTH, HCIVERSION 1.0");
    r.ehci.read(MMIO + spec::HCSPARAMS, &mut b);
    let hcs = u32::from_le_bytes(b);
    assert_eq!((hcs & 0xf, hcs >> 8 & 0xf, hcs >> 12 & 0xf), (6, 2, 3));
    r.ehci.read(MMIO + spec::HCCPARAMS, &mut b);
    let eecp = (u32::from_le_bytes(b) >> 8 & 0xff) as usize;
    // The legacy support capability the EECP names; the OS can claim it.
    assert_eq!(r.ehci.config_read(eecp) & 0xff, 1);
    r.ehci.config_write(eecp + 3, &[1]);
    assert_eq!(
        r.ehci.config_read(eecp) & spec::USBLEGSUP_OS_OWNED,
        spec::USBLEGSUP_OS_OWNED
    );
    assert_eq!(r.r(spec::USBSTS), spec::STS_HCHALTED);
    assert_eq!(r.r(spec::USBCMD), spec::CMD_DEFAULT);
    // ASYNCLISTADDR keeps 32-byte alignment.
    r.w(spec::ASYNCLISTADDR, 0x1234_567f);
    assert_eq!(r.r(spec::ASYNCLISTADDR), 0x1234_5660);
    // The doorbell is answered; IAA is write-one-to-clear.
    r.w(spec::USBINTR, spec::STS_IAA);
    r.w(spec::USBCMD, spec::CMD_DEFAULT | spec::CMD_IAAD);
    assert_ne!(r.r(spec::USBSTS) & spec::STS_IAA, 0);
    assert!(r.irq.level());
    r.w(spec::USBSTS, spec::STS_IAA);
    assert!(!r.irq.level());
    // Frames advance FRINDEX by eight micro-frames while running.
    r.w(spec::ASYNCLISTADDR, HEAD_QH as u32);
    r.start();
    assert_eq!(
        r.r(spec::USBSTS) & (spec::STS_HCHALTED | spec::STS_ASS | spec::STS_PSS),
        spec::STS_ASS | spec::STS_PSS
    );
    r.ehci.run_frame();
    r.ehci.run_frame();
    assert_eq!(r.r(spec::FRINDEX), 16);
}

#[test]
fn high_speed_disk_stays_full_speed_keyboard_goes_to_the_companion() {
    let mut r = Rig::new();
    let (_, s) = disk();
    r.ehci.attach(1, s).unwrap();
    r.ehci
        .attach(2, Box::new(UsbKeyboard::new(KeyboardHandle::default())))
        .unwrap();
    // CONFIGFLAG 0: every port is the companion's.
    assert_eq!(
        r.portsc(1) & (spec::PORT_OWNER | spec::PORT_CCS),
        spec::PORT_OWNER
    );
    assert_ne!(r.uhci_portsc(1) & uhci_spec::PORT_CCS, 0);
    assert_ne!(r.uhci_portsc(2) & uhci_spec::PORT_CCS, 0);
    r.start();
    // Now the EHCI's: connected, J state (neither is low speed).
    for n in 1..=2 {
        let sc = r.portsc(n);
        assert_eq!(
            sc & (spec::PORT_OWNER | spec::PORT_CCS | spec::PORT_CSC),
            spec::PORT_CCS | spec::PORT_CSC,
            "port {n}"
        );
        assert_eq!(sc & (3 << 10), spec::PORT_LINE_J, "port {n}");
        assert_eq!(
            r.uhci_portsc(n) & uhci_spec::PORT_CCS,
            0,
            "companion port {n}"
        );
    }
    // Software cannot enable a port by writing PED.
    r.set_portsc(1, spec::PORT_PED);
    assert_eq!(r.portsc(1) & spec::PORT_PED, 0);
    // Reset: the high-speed disk comes out enabled, the keyboard not.
    assert!(r.reset_port(1));
    assert!(!r.reset_port(2));
    // The driver hands the keyboard's port to the companion: the EHCI sees
    // it go, the companion sees it come.
    let sc = r.portsc(2) & !spec::PORT_W1C;
    r.set_portsc(2, sc | spec::PORT_OWNER);
    assert_eq!(
        r.portsc(2) & (spec::PORT_OWNER | spec::PORT_CCS),
        spec::PORT_OWNER
    );
    let u = r.uhci_portsc(2);
    assert_eq!(
        u & (uhci_spec::PORT_CCS | uhci_spec::PORT_CSC),
        uhci_spec::PORT_CCS | uhci_spec::PORT_CSC
    );
    assert_eq!(
        r.uhci_portsc(1) & uhci_spec::PORT_CCS,
        0,
        "the disk stays on the EHCI"
    );
    // The companion enumerates it at full speed through its own schedule:
    // enable the port, and the device answers at address 0.
    let port2 = UHCI_IO + uhci_spec::PORTSC1 + 2;
    r.uhci.write(port2, &uhci_spec::PORT_PR.to_le_bytes());
    r.uhci.write(port2, &0u16.to_le_bytes());
    r.uhci.write(port2, &uhci_spec::PORT_PE.to_le_bytes());
    assert_ne!(r.uhci_portsc(2) & uhci_spec::PORT_PE, 0);
    // Unplugging it shows on the companion only.
    r.ehci.detach(2).unwrap();
    assert_eq!(
        r.uhci_portsc(2) & (uhci_spec::PORT_CCS | uhci_spec::PORT_PE),
        0
    );
    // CONFIGFLAG back to 0 takes the disk from the EHCI as well.
    r.w(spec::CONFIGFLAG, 0);
    assert_eq!(r.portsc(1) & (spec::PORT_CCS | spec::PORT_PED), 0);
    assert_ne!(r.uhci_portsc(1) & uhci_spec::PORT_CCS, 0);
    // A port change raised USBSTS.PCD.
    assert_ne!(r.r(spec::USBSTS) & spec::STS_PCD, 0);
}

/// Resets port 1 and enumerates its device as address 1, configuration 1;
/// returns the device and configuration descriptors.
fn enumerate(r: &mut Rig) -> (Vec<u8>, Vec<u8>) {
    r.start();
    assert!(r.reset_port(1));
    let d = r
        .control(
            0,
            [0x80, ch9::GET_DESCRIPTOR, 0, ch9::DT_DEVICE, 0, 0, 18, 0],
            &[],
        )
        .unwrap();
    r.control(0, [0, ch9::SET_ADDRESS, 1, 0, 0, 0, 0, 0], &[])
        .unwrap();
    // The whole configuration: a short data stage (asks 255, gets 32).
    let c = r
        .control(
            1,
            [
                0x80,
                ch9::GET_DESCRIPTOR,
                0,
                ch9::DT_CONFIGURATION,
                0,
                0,
                255,
                0,
            ],
            &[],
        )
        .unwrap();
    r.control(1, [0, ch9::SET_CONFIGURATION, 1, 0, 0, 0, 0, 0], &[])
        .unwrap();
    (d, c)
}

#[test]
fn control_transfers_enumerate_a_high_speed_disk() {
    let mut r = Rig::new();
    let (_, s) = disk();
    r.ehci.attach(1, s).unwrap();
    let (d, c) = enumerate(&mut r);
    assert_eq!(d.len(), 18);
    assert_eq!(d[1], ch9::DT_DEVICE);
    assert_eq!(u16::from_le_bytes([d[2], d[3]]), 0x0200, "bcdUSB 2.00");
    assert_eq!(d[7], 64);
    assert_eq!(c.len(), 32);
    // Both bulk endpoints take 512-byte packets at high speed.
    assert_eq!(u16::from_le_bytes([c[9 + 9 + 4], c[9 + 9 + 5]]), 512);
    assert_eq!(
        u16::from_le_bytes([c[9 + 9 + 7 + 4], c[9 + 9 + 7 + 5]]),
        512
    );
    // IOC on the status stages set USBINT; enabled, the line rises.
    assert_ne!(r.r(spec::USBSTS) & spec::STS_USBINT, 0);
    assert!(!r.irq.level());
    r.w(spec::USBINTR, spec::STS_USBINT);
    assert!(r.irq.level());
    r.w(spec::USBSTS, spec::STS_USBINT);
    assert!(!r.irq.level());
    // A request the device does not know stalls: the qTD halts, USBERRINT.
    let t = r
        .control(1, [0x80, ch9::GET_DESCRIPTOR, 0, 0x42, 0, 0, 8, 0], &[])
        .unwrap_err();
    assert_ne!(t & spec::TOKEN_STATUS_HALTED, 0);
    assert_eq!(t & spec::TOKEN_STATUS_BABBLE, 0);
    assert_ne!(r.r(spec::USBSTS) & spec::STS_USBERRINT, 0);
    // Nobody at address 9: a transaction error.
    let t = r
        .control(
            9,
            [0x80, ch9::GET_DESCRIPTOR, 0, ch9::DT_DEVICE, 0, 0, 18, 0],
            &[],
        )
        .unwrap_err();
    assert_ne!(t & spec::TOKEN_STATUS_XACTERR, 0);
}

#[test]
fn bulk_reads_writes_and_short_packets() {
    let mut r = Rig::new();
    let (medium, s) = disk();
    r.ehci.attach(1, s).unwrap();
    enumerate(&mut r);
    // INQUIRY into a 512-byte qTD: a short packet of 36 bytes.
    let (n, status) = r.scsi(&[msd::INQUIRY, 0, 0, 0, 36, 0], 36, true, BUF + 0x1000);
    assert_eq!((n, status), (36, msd::CSW_PASSED));
    {
        r.next_qtd = QTDS;
        let cbw_at = BUF + 0x8000;
        let mut cbw = vec![0u8; msd::CBW_LEN];
        cbw[0..4].copy_from_slice(&msd::CBW_SIGNATURE.to_le_bytes());
        cbw[8..12].copy_from_slice(&36u32.to_le_bytes());
        cbw[12] = msd::CBW_FLAG_IN;
        cbw[14] = 6;
        cbw[15..21].copy_from_slice(&[msd::INQUIRY, 0, 0, 0, 36, 0]);
        r.mem.write_slice(&cbw, GuestAddress(cbw_at)).unwrap();
        assert_eq!(r.bulk(1, 2, false, msd::CBW_LEN, cbw_at), Ok(msd::CBW_LEN));
        r.next_qtd = QTDS;
        // Data qTD of 512 whose alternate next is the CSW qTD; its next
        // one (never reached) would read garbage.
        let data = r.qtd(spec::PID_CODE_IN, 512, BUF + 0x1000, false);
        let never = r.qtd(spec::PID_CODE_IN, 64, BUF + 0x3000, false);
        let csw = r.qtd(spec::PID_CODE_IN, 13, BUF + 0x9000, true);
        r.put(data, never as u32);
        r.put(data + 4, csw as u32);
        r.arm(WORK_QH, 1, 1, 512, data);
        r.w(spec::USBSTS, spec::STS_USBINT);
        r.run_until(csw);
        assert_eq!(
            r.token(data) & (spec::TOKEN_STATUS_ACTIVE | spec::TOKEN_STATUS_HALTED),
            0
        );
        assert_eq!(
            (r.token(data) & spec::TOKEN_BYTES_MASK) >> spec::TOKEN_BYTES_SHIFT,
            512 - 36
        );
        assert_ne!(
            r.token(never) & spec::TOKEN_STATUS_ACTIVE,
            0,
            "the short packet skipped it"
        );
        assert_eq!(r.token(csw) & spec::TOKEN_STATUS_ACTIVE, 0);
        assert_ne!(r.r(spec::USBSTS) & spec::STS_USBINT, 0);
    }
    // READ(10) of 24 sectors at LBA 7 into a buffer that starts 0x100
    // before a page end: the qTD spans four pages.
    let buf = BUF + 0x4f00;
    let (n, status) = r.scsi(
        &[msd::READ_10, 0, 0, 0, 0, 7, 0, 0, 24, 0],
        24 * 512,
        true,
        buf,
    );
    assert_eq!((n, status), (24 * 512, msd::CSW_PASSED));
    let mut got = vec![0u8; 24 * 512];
    r.mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(got, medium.bytes(7 * 512..31 * 512));
    // WRITE(10) of 3 sectors at LBA 200.
    let pattern: Vec<u8> = (0..1536u32).map(|i| (i * 7 + 3) as u8).collect();
    r.mem.write_slice(&pattern, GuestAddress(buf)).unwrap();
    let (n, status) = r.scsi(
        &[msd::WRITE_10, 0, 0, 0, 0, 200, 0, 0, 3, 0],
        1536,
        false,
        buf,
    );
    assert_eq!((n, status), (1536, msd::CSW_PASSED));
    assert_eq!(medium.bytes(200 * 512..203 * 512), pattern);
    // A qTD of more than five pages is a data buffer error.
    r.next_qtd = QTDS;
    let q = r.qtd(spec::PID_CODE_IN, 0x5000, BUF + 0x10, true);
    r.arm(WORK_QH, 1, 1, 512, q);
    r.run_until(q);
    assert_ne!(r.token(q) & spec::TOKEN_STATUS_DBE, 0);
    assert_ne!(r.token(q) & spec::TOKEN_STATUS_HALTED, 0);
    assert_eq!(
        r.r(spec::USBSTS) & spec::STS_HCHALTED,
        0,
        "not a host error"
    );
}

/// A high-speed device with an interrupt IN endpoint 1 that answers
/// whenever the test says (or at once when `instant`), with the reports
/// queued (repeating them).
#[derive(Default, Clone)]
struct Reporter {
    reports: Arc<Mutex<VecDeque<Vec<u8>>>>,
    waiting: Arc<Mutex<Option<Completer>>>,
    instant: bool,
}

impl Reporter {
    /// Answers the transfer in flight with the next report.
    fn answer(&self) -> bool {
        let Some(c) = self.waiting.lock().unwrap().take() else {
            return false;
        };
        let mut q = self.reports.lock().unwrap();
        let r = q.pop_front().unwrap_or_default();
        q.push_back(r.clone());
        c.data_in(r);
        true
    }
}

impl UsbDevice for Reporter {
    fn name(&self) -> &str {
        "reporter"
    }
    fn speed(&self, max: Speed) -> Speed {
        max.min(Speed::High)
    }
    fn reset(&mut self, _: Speed) {}
    fn submit(&mut self, _: Transfer, done: Completer) {
        *self.waiting.lock().unwrap() = Some(done);
        if self.instant {
            self.answer();
        }
    }
}

#[test]
fn interrupt_transfer_through_the_periodic_schedule_completes_later() {
    let mut r = Rig::new();
    let dev = Reporter::default();
    dev.reports.lock().unwrap().push_back(vec![0xa5, 1, 2, 3]);
    r.ehci.attach(3, Box::new(dev.clone())).unwrap();
    r.start();
    assert!(r.reset_port(3));
    // Every frame points at one interrupt QH for address 0, endpoint 1.
    for i in 0..1024 {
        r.put(FRAME_LIST + 4 * i, QH_LINK_TO(INTR_QH));
    }
    r.put(INTR_QH, spec::LINK_TERMINATE);
    r.next_qtd = QTDS + 0x1000;
    let q = r.qtd(spec::PID_CODE_IN, 8, BUF + 0x2000, true);
    r.arm(INTR_QH, 0, 1, 8, q);
    r.w(spec::USBINTR, spec::STS_USBINT);
    // The device has not answered: the qTD stays active, frame after frame.
    for _ in 0..5 {
        r.ehci.run_frame();
    }
    assert_ne!(r.token(q) & spec::TOKEN_STATUS_ACTIVE, 0);
    assert!(!r.irq.level());
    assert!(dev.answer());
    r.ehci.run_frame();
    let t = r.token(q);
    assert_eq!(t & spec::TOKEN_STATUS_ACTIVE, 0);
    assert_eq!((t & spec::TOKEN_BYTES_MASK) >> spec::TOKEN_BYTES_SHIFT, 4);
    let mut got = [0u8; 4];
    r.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x2000))
        .unwrap();
    assert_eq!(got, [0xa5, 1, 2, 3]);
    assert!(r.irq.level(), "IOC with USBINT enabled");
    // The overlay carries the result too.
    assert_eq!(r.get(INTR_QH + spec::QH_OVERLAY + 8), t);
    assert_eq!(r.get(INTR_QH + spec::QH_CURRENT_QTD), q as u32);
}

#[test]
fn looping_schedules_and_bad_pointers_are_host_system_errors() {
    // An async ring that never comes back to its head.
    let mut r = Rig::new();
    r.put(WORK_QH, QH_LINK_TO(WORK_QH + 0x40));
    r.put(WORK_QH + 0x40, QH_LINK_TO(WORK_QH));
    r.put(WORK_QH + 0x40 + spec::QH_OVERLAY, spec::LINK_TERMINATE);
    r.start();
    r.w(spec::USBINTR, spec::STS_HSE);
    r.ehci.run_frame();
    let sts = r.r(spec::USBSTS);
    assert_eq!(
        sts & (spec::STS_HSE | spec::STS_HCHALTED),
        spec::STS_HSE | spec::STS_HCHALTED
    );
    assert_eq!(r.r(spec::USBCMD) & spec::CMD_RS, 0);
    assert!(r.irq.level());
    assert!(!r.ehci.running());

    // A periodic QH that links to itself.
    let mut r = Rig::new();
    r.put(FRAME_LIST, QH_LINK_TO(INTR_QH));
    r.put(INTR_QH, QH_LINK_TO(INTR_QH));
    r.put(INTR_QH + spec::QH_OVERLAY, spec::LINK_TERMINATE);
    r.start();
    r.ehci.run_frame();
    assert_ne!(r.r(spec::USBSTS) & spec::STS_HSE, 0);

    // An async list outside guest RAM.
    let mut r = Rig::new();
    r.w(spec::ASYNCLISTADDR, 0x8000_0000);
    r.start();
    r.ehci.run_frame();
    assert_ne!(r.r(spec::USBSTS) & spec::STS_HSE, 0);

    // A qTD whose buffer is outside guest RAM.
    let mut r = Rig::new();
    let (_, s) = disk();
    r.ehci.attach(1, s).unwrap();
    enumerate(&mut r);
    r.next_qtd = QTDS;
    let q = r.qtd(spec::PID_CODE_OUT, 31, 0x7fff_0000, true);
    r.arm(WORK_QH, 1, 2, 512, q);
    r.ehci.run_frame();
    assert_ne!(r.r(spec::USBSTS) & spec::STS_HSE, 0);

    // qTDs that re-arm each other through their own IN buffers: a cycle
    // that would never end.
    let mut r = Rig::new();
    let dev = Reporter {
        instant: true,
        ..Default::default()
    };
    r.ehci.attach(1, Box::new(dev.clone())).unwrap();
    r.start();
    assert!(r.reset_port(1));
    r.next_qtd = QTDS;
    let a = r.qtd(spec::PID_CODE_IN, 16, 0, false);
    let b = r.qtd(spec::PID_CODE_IN, 16, 0, false);
    let image = |next: u64, buf: u64| {
        let token = spec::TOKEN_STATUS_ACTIVE
            | spec::PID_CODE_IN << spec::TOKEN_PID_SHIFT
            | 16 << spec::TOKEN_BYTES_SHIFT;
        [next as u32, spec::LINK_TERMINATE, token, buf as u32]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    // a's data re-arms b (pointing back at a), b's re-arms a.
    r.put(a, b as u32);
    r.put(a + spec::QTD_BUFFER, b as u32);
    r.put(b + spec::QTD_TOKEN, 0);
    dev.reports
        .lock()
        .unwrap()
        .extend([image(a, a), image(b, b)]);
    r.arm(WORK_QH, 0, 1, 512, a);
    r.ehci.run_frame();
    // Both ran once each (a re-armed b, b re-armed a), then the walk came
    // back to a: Host System Error, not an endless frame.
    assert_eq!(r.get(a), b as u32);
    assert_eq!(r.get(b), a as u32);
    assert_ne!(r.r(spec::USBSTS) & spec::STS_HSE, 0);
    assert!(!r.ehci.running());
}
