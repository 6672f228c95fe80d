//! The ICH9 AHCI controller driven at register level with command lists,
//! FIS areas and PRDTs in guest memory, the way SeaBIOS, GRUB and Linux's
//! ahci driver use it: detection, PIO and DMA commands, NCQ with many
//! outstanding commands, interrupts, resets and error recovery.

use std::sync::Arc;

use rehost_disk::BlockDevice;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::irq::{RecordingIrq, RecordingMsi};
use crate::pci::config::COMMAND_MEMORY;
use crate::storage::ata::{DriveIdentity, Link};
use crate::storage::testing::{Access, MemDisk};

const ABAR: u64 = 0xfebf_0000;

fn ident() -> DriveIdentity {
    DriveIdentity {
        serial: "A1".into(),
        model: "REHOST HARDDISK".into(),
        firmware: "1".into(),
    }
}

fn hd(sectors: u64) -> (AtaDevice, Arc<MemDisk>) {
    let m = Arc::new(MemDisk::patterned(sectors * 512, |i| {
        (i / 512) as u8 ^ (i % 253) as u8
    }));
    (AtaDevice::disk(m.clone(), false, Link::Serial, ident()), m)
}

struct Rig {
    ahci: Ahci,
    intx: Arc<RecordingIrq>,
    msi: Arc<RecordingMsi>,
    mem: GuestMemory,
}

fn clb(port: usize) -> u64 {
    0x1_0000 + port as u64 * 0x1000
}
fn fb(port: usize) -> u64 {
    0x1_8000 + port as u64 * 0x100
}
fn ctba(port: usize, slot: usize) -> u64 {
    0x4_0000 + port as u64 * 0x2_0000 + slot as u64 * 0x1000
}
fn preg(port: usize, reg: u64) -> u64 {
    spec::PORT_BASE + port as u64 * spec::PORT_STRIDE + reg
}

/// A Register H2D command FIS.
fn h2d(command: u8, lba: u64, count: u16, features: u16) -> [u8; 20] {
    let mut f = [0u8; 20];
    f[0] = spec::FIS_REG_H2D;
    f[1] = spec::FIS_H2D_COMMAND;
    f[2] = command;
    f[3] = features as u8;
    f[4] = lba as u8;
    f[5] = (lba >> 8) as u8;
    f[6] = (lba >> 16) as u8;
    f[7] = ata::DEVICE_LBA;
    f[8] = (lba >> 24) as u8;
    f[9] = (lba >> 32) as u8;
    f[10] = (lba >> 40) as u8;
    f[11] = (features >> 8) as u8;
    f[12] = count as u8;
    f[13] = (count >> 8) as u8;
    f
}

impl Rig {
    fn new(devices: Vec<Option<AtaDevice>>) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let intx = RecordingIrq::new();
        let msi = RecordingMsi::new();
        let mut ahci = Ahci::new(
            mem.clone(),
            devices,
            intx.clone(),
            Some(msi.clone() as Arc<dyn MsiSender>),
        );
        ahci.config_write(0x24, &(ABAR as u32).to_le_bytes());
        ahci.config_write(0x04, &[(COMMAND_MEMORY | COMMAND_BUS_MASTER) as u8, 0]);
        Self {
            ahci,
            intx,
            msi,
            mem,
        }
    }

    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ahci.read(ABAR + off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.ahci.write(ABAR + off, &v.to_le_bytes());
    }
    fn pr(&mut self, port: usize, reg: u64) -> u32 {
        self.r32(preg(port, reg))
    }
    fn pw(&mut self, port: usize, reg: u64, v: u32) {
        self.w32(preg(port, reg), v)
    }

    /// What drivers do before issuing commands: CLB, FB, FRE, then ST.
    fn start_port(&mut self, port: usize) {
        self.pw(port, spec::PX_CLB, clb(port) as u32);
        self.pw(port, spec::PX_CLBU, 0);
        self.pw(port, spec::PX_FB, fb(port) as u32);
        self.pw(port, spec::PX_FBU, 0);
        self.pw(port, spec::PX_CMD, spec::CMD_FRE);
        self.pw(port, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
        let serr = self.pr(port, spec::PX_SERR);
        self.pw(port, spec::PX_SERR, serr);
        self.pw(port, spec::PX_IS, u32::MAX);
    }

    /// Builds the command in `slot`: header, command table, PRDT.
    fn prepare(
        &mut self,
        port: usize,
        slot: usize,
        cfis: &[u8; 20],
        acmd: Option<&[u8]>,
        prdt: &[(u64, u32)],
        write: bool,
    ) {
        let table = ctba(port, slot);
        let mut dw0 = 5 | (prdt.len() as u32) << spec::CH_PRDTL_SHIFT;
        if write {
            dw0 |= spec::CH_WRITE;
        }
        if acmd.is_some() {
            dw0 |= spec::CH_ATAPI;
        }
        let h = clb(port) + slot as u64 * spec::CMD_HEADER_SIZE;
        self.mem.write_obj(dw0, GuestAddress(h)).unwrap();
        self.mem
            .write_obj(0xdead_beefu32, GuestAddress(h + 4))
            .unwrap();
        self.mem.write_obj(table, GuestAddress(h + 8)).unwrap();
        self.mem.write_slice(cfis, GuestAddress(table)).unwrap();
        let mut a = [0u8; 16];
        if let Some(c) = acmd {
            a[..c.len()].copy_from_slice(c);
        }
        self.mem
            .write_slice(&a, GuestAddress(table + 0x40))
            .unwrap();
        for (i, &(addr, len)) in prdt.iter().enumerate() {
            let e = table + 0x80 + 16 * i as u64;
            self.mem.write_obj(addr, GuestAddress(e)).unwrap();
            self.mem.write_obj(0u32, GuestAddress(e + 8)).unwrap();
            self.mem.write_obj(len - 1, GuestAddress(e + 12)).unwrap();
        }
    }

    fn prdbc(&self, port: usize, slot: usize) -> u32 {
        self.mem
            .read_obj(GuestAddress(clb(port) + slot as u64 * 32 + 4))
            .unwrap()
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Runs one non-queued command in slot 0 and returns PxIS.
    fn run(&mut self, port: usize, cfis: &[u8; 20], prdt: &[(u64, u32)], write: bool) -> u32 {
        self.pw(port, spec::PX_IS, u32::MAX);
        self.prepare(port, 0, cfis, None, prdt, write);
        self.pw(port, spec::PX_CI, 1);
        self.pr(port, spec::PX_IS)
    }
}

#[test]
fn hba_and_port_registers_after_reset() {
    let (d, _) = hd(1000);
    let c = AtaDevice::cdrom(None, Link::Serial, ident());
    let mut r = Rig::new(vec![Some(d), None, Some(c)]);
    let cap = r.r32(spec::HOST_CAP);
    assert_eq!(cap & 0x1f, 5, "six ports");
    assert_eq!((cap >> 8) & 0x1f, 31, "32 slots");
    assert_ne!(cap & spec::CAP_SNCQ, 0);
    assert_ne!(cap & spec::CAP_S64A, 0);
    assert_eq!(r.r32(spec::HOST_PI), 0x3f);
    assert_eq!(r.r32(spec::HOST_VS), 0x0001_0300);
    assert_eq!(r.r32(spec::HOST_GHC), spec::GHC_AE);
    assert_eq!(r.pr(0, spec::PX_SSTS), 0x123);
    assert_eq!(r.pr(0, spec::PX_SIG), spec::SIG_ATA);
    assert_eq!(r.pr(0, spec::PX_TFD), 0x150);
    assert_eq!(r.pr(1, spec::PX_SSTS), 0, "no device");
    assert_eq!(r.pr(1, spec::PX_TFD), 0x7f);
    assert_eq!(r.pr(2, spec::PX_SIG), spec::SIG_ATAPI);
    assert_eq!(
        r.r32(preg(6, spec::PX_SSTS)),
        0,
        "port 6 is not implemented"
    );
    // FIS receive: FR follows FRE, and the signature FIS lands.
    r.pw(0, spec::PX_FB, fb(0) as u32);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    assert_ne!(r.pr(0, spec::PX_CMD) & spec::CMD_FR, 0);
    let d2h = r.bytes(fb(0) + 0x40, 20);
    assert_eq!(&d2h[..4], &[0x34, 0, 0x50, 1]);
    assert_eq!(&d2h[4..7], &[1, 0, 0], "signature in the LBA fields");
    assert_eq!(d2h[12], 1);
    // ST sets CR; SUD and POD read as one.
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    let cmd = r.pr(0, spec::PX_CMD);
    assert_eq!(
        cmd & (spec::CMD_CR | spec::CMD_SUD | spec::CMD_POD),
        spec::CMD_CR | spec::CMD_SUD | spec::CMD_POD
    );
    r.pw(0, spec::PX_CMD, 0);
    assert_eq!(r.pr(0, spec::PX_CMD) & (spec::CMD_CR | spec::CMD_FR), 0);
    // PCI: class, BAR size, MSI capability.
    assert_eq!(r.ahci.config_read(0), 0x2922_8086);
    assert_eq!(r.ahci.config_read(8) >> 8, 0x01_06_01);
    assert_eq!(r.ahci.config_read(0x34) & 0xff, 0x80);
    assert_eq!(r.ahci.config_read(0x80) & 0xff, 0x05);
    // Narrow accesses see the right bytes.
    let mut w = [0u8; 2];
    r.ahci.read(ABAR + spec::HOST_CAP + 2, &mut w);
    assert_eq!(u16::from_le_bytes(w), (cap >> 16) as u16);
}

#[test]
fn identify_through_a_pio_setup_fis() {
    let (d, _) = hd(1000);
    let mut r = Rig::new(vec![Some(d)]);
    r.start_port(0);
    let is = r.run(
        0,
        &h2d(ata::CMD_IDENTIFY_DEVICE, 0, 0, 0),
        &[(0x20_0000, 512)],
        false,
    );
    assert_eq!(is & spec::IS_PSS, spec::IS_PSS);
    assert_eq!(r.pr(0, spec::PX_CI), 0);
    assert_eq!(r.prdbc(0, 0), 512);
    let ps = r.bytes(fb(0) + 0x20, 20);
    assert_eq!(ps[0], spec::FIS_PIO_SETUP);
    assert_eq!(ps[1] & 0x60, 0x60, "interrupt, device to host");
    assert_eq!(ps[2], 0x58);
    assert_eq!(ps[15], 0x50, "ending status");
    assert_eq!(r.pr(0, spec::PX_TFD) & 0xff, 0x50);
    let id = r.bytes(0x20_0000, 512);
    assert_eq!(u16::from_le_bytes([id[150], id[151]]), 31, "NCQ depth");
    // IDENTIFY PACKET DEVICE aborts on a disk: a task file error, as
    // SeaBIOS's probe expects, and the port halts until ST is cycled.
    let is = r.run(
        0,
        &h2d(ata::CMD_IDENTIFY_PACKET_DEVICE, 0, 0, 0),
        &[(0x20_0000, 512)],
        false,
    );
    assert_eq!(
        is & (spec::IS_TFES | spec::IS_DHRS),
        spec::IS_TFES | spec::IS_DHRS
    );
    assert_eq!(r.pr(0, spec::PX_TFD), 0x0451);
    assert_eq!(r.pr(0, spec::PX_CI), 1, "the failed command stays issued");
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    assert_eq!(r.pr(0, spec::PX_CI), 0);
    assert_eq!(r.pr(0, spec::PX_CMD) & spec::CMD_CR, 0);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    let is = r.run(
        0,
        &h2d(ata::CMD_IDENTIFY_DEVICE, 0, 0, 0),
        &[(0x20_0000, 512)],
        false,
    );
    assert_eq!(is & spec::IS_TFES, 0);
}

#[test]
fn dma_read_and_write_with_intx() {
    let (d, m) = hd(10_000);
    let mut r = Rig::new(vec![None, Some(d)]);
    r.start_port(1);
    r.w32(spec::HOST_GHC, spec::GHC_IE);
    r.pw(1, spec::PX_IE, spec::IS_DHRS);
    // 20 sectors into three regions.
    let prdt = [(0x20_0000, 4096), (0x30_0000, 2048), (0x31_0000, 4096)];
    let is = r.run(1, &h2d(ata::CMD_READ_DMA_EXT, 5000, 20, 0), &prdt, false);
    assert_eq!(is & spec::IS_DHRS, spec::IS_DHRS);
    assert_eq!(r.r32(spec::HOST_IS), 1 << 1);
    assert!(r.intx.level());
    assert_eq!(r.prdbc(1, 0), 20 * 512);
    assert_eq!(r.bytes(0x20_0000, 4096), m.bytes(5000 * 512..5008 * 512));
    assert_eq!(r.bytes(0x30_0000, 2048), m.bytes(5008 * 512..5012 * 512));
    assert_eq!(r.bytes(0x31_0000, 4096), m.bytes(5012 * 512..5020 * 512));
    let rfis = r.bytes(fb(1) + 0x40, 4);
    assert_eq!(rfis, [0x34, 0x40, 0x50, 0]);
    // Clearing PxIS (then IS) drops the line.
    r.pw(1, spec::PX_IS, u32::MAX);
    r.w32(spec::HOST_IS, u32::MAX);
    assert!(!r.intx.level());
    assert_eq!(r.r32(spec::HOST_IS), 0);
    // A write from two regions.
    let payload: Vec<u8> = (0..3072u32).map(|i| (i * 7) as u8).collect();
    r.mem
        .write_slice(&payload[..1024], GuestAddress(0x40_0000))
        .unwrap();
    r.mem
        .write_slice(&payload[1024..], GuestAddress(0x50_0000))
        .unwrap();
    r.run(
        1,
        &h2d(ata::CMD_WRITE_DMA, 42, 6, 0),
        &[(0x40_0000, 1024), (0x50_0000, 2048)],
        true,
    );
    assert_eq!(m.bytes(42 * 512..48 * 512), payload);
    assert!(r.intx.level());
    // INTx disable in PCI COMMAND masks the line.
    r.ahci
        .config_write(0x05, &[(COMMAND_INTX_DISABLE >> 8) as u8]);
    assert!(!r.intx.level());
    // GHC.IE clear: no interrupt.
    r.ahci.config_write(0x05, &[0]);
    r.w32(spec::HOST_GHC, 0);
    assert!(!r.intx.level());
}

#[test]
fn errors_halt_the_port_until_software_recovers() {
    let (d, m) = hd(100);
    let mut r = Rig::new(vec![Some(d)]);
    r.start_port(0);
    let is = r.run(
        0,
        &h2d(ata::CMD_READ_DMA_EXT, 99, 2, 0),
        &[(0x20_0000, 1024)],
        false,
    );
    assert_eq!(is & spec::IS_TFES, spec::IS_TFES);
    assert_eq!(
        r.pr(0, spec::PX_TFD),
        u32::from(ata::ERROR_IDNF) << 8 | 0x51
    );
    assert_eq!(r.pr(0, spec::PX_CI), 1);
    // Another command is not processed while halted.
    r.prepare(
        0,
        1,
        &h2d(ata::CMD_READ_DMA_EXT, 1, 1, 0),
        None,
        &[(0x20_0000, 512)],
        false,
    );
    r.pw(0, spec::PX_CI, 2);
    assert_eq!(r.pr(0, spec::PX_CI), 3);
    // SeaBIOS's recovery: ST off (CI clears), clear SERR and IS, ST on.
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    assert_eq!(r.pr(0, spec::PX_CI), 0);
    r.pw(0, spec::PX_IS, u32::MAX);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    m.take_log();
    let is = r.run(
        0,
        &h2d(ata::CMD_READ_DMA_EXT, 1, 1, 0),
        &[(0x20_0000, 512)],
        false,
    );
    assert_eq!(is & spec::IS_TFES, 0);
    assert_eq!(
        m.take_log(),
        vec![Access::Read {
            offset: 512,
            len: 512
        }]
    );
    // A read-only disk: writes fail with ABRT through the task file.
    let ro = Arc::new(MemDisk::new(100 * 512));
    let mut r = Rig::new(vec![Some(AtaDevice::disk(
        ro.clone(),
        true,
        Link::Serial,
        ident(),
    ))]);
    r.start_port(0);
    let is = r.run(
        0,
        &h2d(ata::CMD_WRITE_DMA_EXT, 1, 1, 0),
        &[(0x20_0000, 512)],
        true,
    );
    assert_eq!(is & spec::IS_TFES, spec::IS_TFES);
    assert_eq!(
        r.pr(0, spec::PX_TFD),
        u32::from(ata::ERROR_ABRT) << 8 | 0x51
    );
    assert!(ro.take_log().is_empty());
}

#[test]
fn ncq_many_outstanding_commands_complete_out_of_order() {
    let (d, m) = hd(100_000);
    let mut r = Rig::new(vec![Some(d)]);
    r.start_port(0);
    r.w32(spec::HOST_GHC, spec::GHC_IE);
    r.pw(0, spec::PX_IE, spec::IS_SDBS);
    // Tag t reads 8 sectors at LBA 1000 * (31 - t) + t: LBAs descend with
    // the tags, so the device's LBA order reverses the issue order. Tags
    // 5, 10, 15 write instead.
    let mut all = 0u32;
    for t in 0..32usize {
        let lba = 1000 * (31 - t as u64) + t as u64;
        let write = t % 5 == 0 && t > 0;
        let command = if write {
            ata::CMD_WRITE_FPDMA_QUEUED
        } else {
            ata::CMD_READ_FPDMA_QUEUED
        };
        let mut f = h2d(command, lba, 0, 8);
        f[12] = (t as u8) << 3;
        let buf = 0x20_0000 + t as u64 * 0x1000;
        if write {
            r.mem
                .write_slice(&[t as u8; 4096], GuestAddress(buf))
                .unwrap();
        }
        r.prepare(0, t, &f, None, &[(buf, 4096)], write);
        all |= 1 << t;
    }
    m.take_log();
    r.pw(0, spec::PX_SACT, all);
    assert_eq!(r.pr(0, spec::PX_SACT), all);
    r.pw(0, spec::PX_CI, all);
    assert_eq!(r.pr(0, spec::PX_CI), 0);
    assert_eq!(r.pr(0, spec::PX_SACT), 0, "every tag completed");
    assert_ne!(r.pr(0, spec::PX_IS) & spec::IS_SDBS, 0);
    assert!(r.intx.level());
    // The medium saw the commands in LBA order: tag 31 first, tag 0 last.
    let offsets: Vec<u64> = m
        .take_log()
        .into_iter()
        .map(|a| match a {
            Access::Read { offset, .. } | Access::Write { offset, .. } => offset / 512,
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<u64> = (0..32u64).rev().map(|t| 1000 * (31 - t) + t).collect();
    assert_eq!(offsets, expected);
    // Each tag's data is its own; the last SDB FIS names tag 0.
    for t in 0..32usize {
        let lba = 1000 * (31 - t as u64) + t as u64;
        let buf = r.bytes(0x20_0000 + t as u64 * 0x1000, 4096);
        assert_eq!(buf, m.bytes(lba * 512..(lba + 8) * 512), "tag {t}");
        if t % 5 == 0 && t > 0 {
            assert!(buf.iter().all(|&b| b == t as u8));
        }
        assert_eq!(r.prdbc(0, t), 4096);
    }
    let sdb = r.bytes(fb(0) + 0x58, 8);
    assert_eq!(sdb[0], spec::FIS_SET_DEVICE_BITS);
    assert_eq!(u32::from_le_bytes([sdb[4], sdb[5], sdb[6], sdb[7]]), 1);
    let ds = r.bytes(fb(0), 8);
    assert_eq!(ds[0], spec::FIS_DMA_SETUP);
    assert_eq!(ds[4], 0, "the last DMA setup was for tag 0");
}

#[test]
fn ncq_error_keeps_tags_active_and_is_read_from_log_10h() {
    let (d, m) = hd(10_000);
    let mut r = Rig::new(vec![Some(d)]);
    r.start_port(0);
    // Four queued reads at LBAs 100, 200, 300, 400 (tags 0-3); 300 fails.
    m.fail(Some(300 * 512..301 * 512));
    for t in 0..4usize {
        let mut f = h2d(ata::CMD_READ_FPDMA_QUEUED, 100 * (t as u64 + 1), 0, 1);
        f[12] = (t as u8) << 3;
        r.prepare(0, t, &f, None, &[(0x20_0000 + t as u64 * 512, 512)], false);
    }
    r.pw(0, spec::PX_SACT, 0xf);
    r.pw(0, spec::PX_CI, 0xf);
    let is = r.pr(0, spec::PX_IS);
    assert_eq!(
        is & (spec::IS_TFES | spec::IS_SDBS),
        spec::IS_TFES | spec::IS_SDBS
    );
    assert_eq!(
        r.pr(0, spec::PX_SACT),
        0b1100,
        "failed tag 2 and tag 3 after it"
    );
    assert_eq!(r.pr(0, spec::PX_TFD) & 0xff, 0x51);
    m.fail(None);
    // Linux's recovery: stop the engine, read log 10h, restart.
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    assert_eq!(r.pr(0, spec::PX_SACT), 0);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    // While the log is unread, queued commands abort at acceptance.
    let mut f = h2d(ata::CMD_READ_FPDMA_QUEUED, 5, 0, 1);
    f[12] = 0;
    r.pw(0, spec::PX_SACT, 1);
    let is = r.run(0, &f, &[(0x20_0000, 512)], false);
    assert_eq!(is & spec::IS_TFES, spec::IS_TFES);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    let mut log = h2d(ata::CMD_READ_LOG_EXT, 0, 1, 0);
    log[4] = ata::LOG_NCQ_COMMAND_ERROR;
    let is = r.run(0, &log, &[(0x30_0000, 512)], false);
    assert_eq!(is & spec::IS_TFES, 0);
    let page = r.bytes(0x30_0000, 512);
    assert_eq!(page[0], 2, "tag 2 failed");
    assert_eq!(page[3], ata::ERROR_UNC);
    assert_eq!(u16::from_le_bytes([page[4], page[5]]), 300);
    // Queued commands work again.
    r.pw(0, spec::PX_SACT, 1);
    r.run(0, &f, &[(0x20_0000, 512)], false);
    assert_eq!(r.pr(0, spec::PX_SACT), 0);
    assert_eq!(r.bytes(0x20_0000, 512), m.bytes(5 * 512..6 * 512));
}

#[test]
fn bad_descriptors_end_in_fatal_errors() {
    let (d, m) = hd(1000);
    let mut r = Rig::new(vec![Some(d)]);
    r.start_port(0);
    m.take_log();
    // A PRD region outside RAM.
    let is = r.run(
        0,
        &h2d(ata::CMD_READ_DMA, 0, 1, 0),
        &[(0xf000_0000, 512)],
        false,
    );
    assert_eq!(is & spec::IS_HBFS, spec::IS_HBFS);
    assert_eq!(r.pr(0, spec::PX_CI), 1);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    // A PRDT describing less than the command moves: overflow.
    let is = r.run(
        0,
        &h2d(ata::CMD_READ_DMA, 0, 4, 0),
        &[(0x20_0000, 1024)],
        false,
    );
    assert_eq!(is & spec::IS_OFS, spec::IS_OFS);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    // No PRDT at all for a write: nothing is written.
    let is = r.run(0, &h2d(ata::CMD_WRITE_DMA, 0, 1, 0), &[], true);
    assert_eq!(is & spec::IS_OFS, spec::IS_OFS);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    // Odd and zero-ish PRD lengths are rounded to whole words.
    let is = r.run(
        0,
        &h2d(ata::CMD_READ_DMA, 0, 1, 0),
        &[(0x20_0001, 1), (0x20_0010, 510)],
        false,
    );
    assert_eq!(is & spec::IS_FATAL, 0);
    assert_eq!(r.bytes(0x20_0000, 2), m.bytes(0..2));
    assert_eq!(r.bytes(0x20_0010, 510), m.bytes(2..512));
    // A command list outside RAM.
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    r.pw(0, spec::PX_CLB, 0xf000_0000);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    r.pw(0, spec::PX_CI, 1);
    assert_eq!(r.pr(0, spec::PX_IS) & spec::IS_HBFS, spec::IS_HBFS);
    // A command table outside RAM, and a non-command FIS type.
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    r.pw(0, spec::PX_CLB, clb(0) as u32);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    r.pw(0, spec::PX_IS, u32::MAX);
    r.prepare(
        0,
        0,
        &h2d(ata::CMD_READ_DMA, 0, 1, 0),
        None,
        &[(0x20_0000, 512)],
        false,
    );
    r.mem
        .write_obj(0xf000_0000u64, GuestAddress(clb(0) + 8))
        .unwrap();
    r.pw(0, spec::PX_CI, 1);
    assert_eq!(r.pr(0, spec::PX_IS) & spec::IS_HBFS, spec::IS_HBFS);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    let mut bad = h2d(ata::CMD_READ_DMA, 0, 1, 0);
    bad[0] = 0x39;
    let is = r.run(0, &bad, &[(0x20_0000, 512)], false);
    assert_eq!(is & spec::IS_IFS, spec::IS_IFS);
    assert!(m
        .take_log()
        .iter()
        .all(|a| matches!(a, Access::Read { .. })));
}

#[test]
fn msi_replaces_intx() {
    let (d, _) = hd(1000);
    let mut r = Rig::new(vec![Some(d)]);
    r.ahci
        .config_write(spec::MSI_ADDRESS, &0xfee0_0000u32.to_le_bytes());
    r.ahci
        .config_write(spec::MSI_DATA, &0x4041u16.to_le_bytes());
    r.ahci
        .config_write(spec::MSI_CONTROL, &spec::MSI_ENABLE.to_le_bytes());
    r.start_port(0);
    r.w32(spec::HOST_GHC, spec::GHC_IE);
    r.pw(0, spec::PX_IE, spec::IS_DHRS | spec::IS_PSS);
    r.run(
        0,
        &h2d(ata::CMD_READ_DMA, 0, 1, 0),
        &[(0x20_0000, 512)],
        false,
    );
    r.pw(0, spec::PX_IS, u32::MAX);
    r.run(
        0,
        &h2d(ata::CMD_IDENTIFY_DEVICE, 0, 0, 0),
        &[(0x20_0000, 512)],
        false,
    );
    assert_eq!(r.msi.messages(), vec![(0xfee0_0000, 0x4041); 2]);
    assert!(!r.intx.level());
    // Disabled interrupt kinds send nothing.
    r.pw(0, spec::PX_IE, 0);
    r.run(
        0,
        &h2d(ata::CMD_READ_DMA, 0, 1, 0),
        &[(0x20_0000, 512)],
        false,
    );
    assert_eq!(r.msi.messages().len(), 2);
}

#[test]
fn hba_reset_comreset_soft_reset_and_clo() {
    let (d, _) = hd(1000);
    let mut r = Rig::new(vec![Some(d)]);
    r.start_port(0);
    r.w32(spec::HOST_GHC, spec::GHC_IE);
    r.pw(0, spec::PX_IE, 0xff);
    // COMRESET: DET=1 holds the device in reset, DET=0 releases it and the
    // signature FIS arrives.
    r.mem
        .write_slice(&[0u8; 20], GuestAddress(fb(0) + 0x40))
        .unwrap();
    r.pw(0, spec::PX_SCTL, 1);
    assert_eq!(r.pr(0, spec::PX_TFD) & 0x80, 0x80);
    assert_eq!(r.pr(0, spec::PX_SSTS) & 0xf, 1);
    r.pw(0, spec::PX_SCTL, 0);
    assert_eq!(r.pr(0, spec::PX_TFD), 0x150);
    assert_eq!(r.pr(0, spec::PX_SSTS), 0x123);
    assert_eq!(r.bytes(fb(0) + 0x40, 3), [0x34, 0, 0x50]);
    // Software reset through two control FISes (Linux ahci_softreset).
    let mut ctl = [0u8; 20];
    ctl[0] = spec::FIS_REG_H2D;
    ctl[15] = spec::CONTROL_SRST;
    r.prepare(0, 0, &ctl, None, &[], false);
    r.pw(0, spec::PX_CI, 1);
    assert_eq!(r.pr(0, spec::PX_CI), 0);
    assert_eq!(r.pr(0, spec::PX_TFD) & 0x80, 0x80);
    ctl[15] = 0;
    r.mem
        .write_slice(&[0u8; 20], GuestAddress(fb(0) + 0x40))
        .unwrap();
    r.prepare(0, 0, &ctl, None, &[], false);
    r.pw(0, spec::PX_CI, 1);
    assert_eq!(r.pr(0, spec::PX_TFD), 0x150);
    assert_eq!(r.bytes(fb(0) + 0x40, 8), [0x34, 0, 0x50, 1, 1, 0, 0, 0]);
    // CLO clears BSY and reads back zero.
    r.pw(0, spec::PX_SCTL, 1);
    r.pw(
        0,
        spec::PX_CMD,
        spec::CMD_FRE | spec::CMD_ST | spec::CMD_CLO,
    );
    assert_eq!(r.pr(0, spec::PX_TFD) & 0x88, 0);
    assert_eq!(r.pr(0, spec::PX_CMD) & spec::CMD_CLO, 0);
    r.pw(0, spec::PX_SCTL, 0);
    // HBA reset: interrupts off, ports stopped, signature again.
    r.w32(spec::HOST_GHC, spec::GHC_HR);
    assert_eq!(r.r32(spec::HOST_GHC), spec::GHC_AE);
    assert_eq!(
        r.pr(0, spec::PX_CMD) & (spec::CMD_ST | spec::CMD_FRE | spec::CMD_CR),
        0
    );
    assert_eq!(r.pr(0, spec::PX_IE), 0);
    assert_eq!(r.pr(0, spec::PX_SIG), spec::SIG_ATA);
    assert!(!r.intx.level());
}

#[test]
fn atapi_commands_through_the_command_table() {
    let m = Arc::new(MemDisk::patterned(2048 * 64, |i| (i / 2048) as u8));
    let c = AtaDevice::cdrom(Some(m as Arc<dyn BlockDevice>), Link::Serial, ident());
    let mut r = Rig::new(vec![None, None, None, Some(c)]);
    r.start_port(3);
    // SeaBIOS's PACKET: DMA bit set, byte count 2048, CDB in ACMD.
    let mut f = h2d(ata::CMD_PACKET, 0, 0, 1);
    f[5] = 0;
    f[6] = 8;
    r.prepare(
        3,
        0,
        &f,
        Some(&[0x12, 0, 0, 0, 36]),
        &[(0x20_0000, 36)],
        false,
    );
    r.pw(3, spec::PX_CI, 1);
    assert_eq!(r.pr(3, spec::PX_CI), 0);
    assert_eq!(r.pr(3, spec::PX_IS) & spec::IS_DHRS, spec::IS_DHRS);
    assert_eq!(r.bytes(0x20_0000, 2), [5, 0x80]);
    r.prepare(
        3,
        0,
        &f,
        Some(&[0x28, 0, 0, 0, 0, 10, 0, 0, 3]),
        &[(0x30_0000, 6144)],
        false,
    );
    r.pw(3, spec::PX_CI, 1);
    assert_eq!(r.prdbc(3, 0), 6144);
    let data = r.bytes(0x30_0000, 6144);
    assert!(data[..2048].iter().all(|&b| b == 10) && data[4096..].iter().all(|&b| b == 12));
    // A check condition: TFES with the sense key in the error field.
    r.pw(3, spec::PX_IS, u32::MAX);
    r.prepare(
        3,
        0,
        &f,
        Some(&[0x28, 0, 0, 0, 0, 100, 0, 0, 1]),
        &[(0x30_0000, 2048)],
        false,
    );
    r.pw(3, spec::PX_CI, 1);
    assert_eq!(r.pr(3, spec::PX_IS) & spec::IS_TFES, spec::IS_TFES);
    assert_eq!(r.pr(3, spec::PX_TFD) >> 8, 0x54);
    // PIO packets (GRUB) finish with a PIO Setup FIS.
    r.pw(3, spec::PX_CMD, spec::CMD_FRE);
    r.pw(3, spec::PX_CMD, spec::CMD_FRE | spec::CMD_ST);
    let mut pio = f;
    pio[3] = 0;
    r.pw(3, spec::PX_IS, u32::MAX);
    r.prepare(3, 0, &pio, Some(&[0x25]), &[(0x20_0000, 8)], false);
    r.pw(3, spec::PX_CI, 1);
    assert_eq!(r.pr(3, spec::PX_IS) & spec::IS_PSS, spec::IS_PSS);
    assert_eq!(r.bytes(0x20_0000, 8), [0, 0, 0, 63, 0, 0, 8, 0]);
}

#[test]
fn ports_without_devices_and_disabled_bus_mastering() {
    let (d, m) = hd(100);
    let mut r = Rig::new(vec![Some(d)]);
    r.start_port(1);
    r.prepare(
        1,
        0,
        &h2d(ata::CMD_READ_DMA, 0, 1, 0),
        None,
        &[(0x20_0000, 512)],
        false,
    );
    r.pw(1, spec::PX_CI, 1);
    assert_eq!(r.pr(1, spec::PX_CI), 1, "nobody answers");
    assert_eq!(r.pr(1, spec::PX_TFD), 0x7f);
    // Bus mastering off: nothing is fetched.
    r.ahci.config_write(0x04, &[COMMAND_MEMORY as u8, 0]);
    r.start_port(0);
    m.take_log();
    r.prepare(
        0,
        0,
        &h2d(ata::CMD_READ_DMA, 0, 1, 0),
        None,
        &[(0x20_0000, 512)],
        false,
    );
    r.pw(0, spec::PX_CI, 1);
    assert_eq!(r.pr(0, spec::PX_CI), 1);
    assert!(m.take_log().is_empty());
    // Memory decoding off: the registers are gone.
    r.ahci.config_write(0x04, &[0, 0]);
    assert_eq!(r.r32(spec::HOST_CAP), u32::MAX);
    // Writes to PxCI with ST clear are ignored.
    r.ahci
        .config_write(0x04, &[(COMMAND_MEMORY | COMMAND_BUS_MASTER) as u8, 0]);
    r.pw(0, spec::PX_CMD, spec::CMD_FRE);
    r.pw(0, spec::PX_CI, 1);
    assert_eq!(r.pr(0, spec::PX_CI), 0);
}
