//! The PIIX3 IDE function driven at register level, as SeaBIOS, GRUB and
//! Linux's ata_piix drive it: detection, resets, PIO and bus-master DMA,
//! ATAPI packets, and what a confused or hostile driver can do.

use std::sync::Arc;

use rehost_disk::BlockDevice;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::irq::RecordingIrq;
use crate::storage::ata::{DriveIdentity, Link};
use crate::storage::testing::MemDisk;

const BM: u64 = 0xc000;
const P: u64 = 0x1f0;
const P_CTL: u64 = 0x3f6;
const S: u64 = 0x170;

struct Rig {
    ide: PiixIde,
    irq: [Arc<RecordingIrq>; 2],
    mem: GuestMemory,
}

fn ident(model: &str) -> DriveIdentity {
    DriveIdentity {
        serial: "S1".into(),
        model: model.into(),
        firmware: "1".into(),
    }
}

fn hd(sectors: u64) -> (AtaDevice, Arc<MemDisk>) {
    let m = Arc::new(MemDisk::patterned(sectors * 512, |i| {
        (i / 512) as u8 ^ (i % 251) as u8
    }));
    (
        AtaDevice::disk(m.clone(), false, Link::Parallel, ident("HD")),
        m,
    )
}

fn cd(blocks: u64) -> (AtaDevice, Arc<MemDisk>) {
    let m = Arc::new(MemDisk::patterned(blocks * 2048, |i| (i / 2048) as u8));
    (
        AtaDevice::cdrom(
            Some(m.clone() as Arc<dyn BlockDevice>),
            Link::Parallel,
            ident("CD"),
        ),
        m,
    )
}

impl Rig {
    fn new(drives: [ChannelDrives; 2]) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = [RecordingIrq::new(), RecordingIrq::new()];
        let mut ide = PiixIde::new(
            mem.clone(),
            drives,
            [irq[0].clone() as Arc<dyn IrqLine>, irq[1].clone()],
        );
        // What SeaBIOS's PCI setup does.
        ide.config_write(spec::REG_IDETIM[0], &0x8000u16.to_le_bytes());
        ide.config_write(spec::REG_IDETIM[1], &0x8000u16.to_le_bytes());
        ide.config_write(0x20, &(BM as u32 | 1).to_le_bytes());
        ide.config_write(0x04, &[(COMMAND_IO | COMMAND_BUS_MASTER) as u8, 0]);
        Self { ide, irq, mem }
    }

    fn one_disk(sectors: u64) -> (Self, Arc<MemDisk>) {
        let (d, m) = hd(sectors);
        (Self::new([[Some(d), None], [None, None]]), m)
    }

    fn outb(&mut self, port: u64, v: u8) {
        self.ide.write(port, &[v]);
    }
    fn inb(&mut self, port: u64) -> u8 {
        let mut b = [0u8];
        self.ide.read(port, &mut b);
        b[0]
    }
    fn inw(&mut self, port: u64) -> u16 {
        let mut b = [0u8; 2];
        self.ide.read(port, &mut b);
        u16::from_le_bytes(b)
    }
    fn outw(&mut self, port: u64, v: u16) {
        self.ide.write(port, &v.to_le_bytes());
    }
    fn outl(&mut self, port: u64, v: u32) {
        self.ide.write(port, &v.to_le_bytes());
    }
    fn inl(&mut self, port: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ide.read(port, &mut b);
        u32::from_le_bytes(b)
    }

    /// Reads `n` bytes from the data port, a word at a time.
    fn read_data(&mut self, base: u64, n: usize) -> Vec<u8> {
        (0..n / 2)
            .flat_map(|_| self.inw(base).to_le_bytes())
            .collect()
    }
    fn write_data(&mut self, base: u64, data: &[u8]) {
        for c in data.chunks(2) {
            self.outw(base, u16::from_le_bytes([c[0], c[1]]));
        }
    }

    /// Issues an LBA28 command to device `dev` of the channel at `base`.
    fn command28(&mut self, base: u64, dev: u8, command: u8, lba: u32, count: u8) {
        self.outb(base + 6, 0xe0 | dev << 4 | (lba >> 24) as u8 & 0x0f);
        self.outb(base + 2, count);
        self.outb(base + 3, lba as u8);
        self.outb(base + 4, (lba >> 8) as u8);
        self.outb(base + 5, (lba >> 16) as u8);
        self.outb(base + 7, command);
    }

    /// Issues an LBA48 command: previous then current register contents.
    fn command48(&mut self, base: u64, command: u8, lba: u64, count: u16) {
        self.outb(base + 6, 0x40);
        for (reg, cur, prev) in [
            (2, count as u8, (count >> 8) as u8),
            (3, lba as u8, (lba >> 24) as u8),
            (4, (lba >> 8) as u8, (lba >> 32) as u8),
            (5, (lba >> 16) as u8, (lba >> 40) as u8),
        ] {
            self.outb(base + reg, prev);
            self.outb(base + reg, cur);
        }
        self.outb(base + 7, command);
    }

    /// Writes a PRD table at `table` from (address, count, eot) entries.
    fn prd(&mut self, table: u64, entries: &[(u32, u32, bool)]) {
        for (i, &(addr, count, eot)) in entries.iter().enumerate() {
            let at = GuestAddress(table + 8 * i as u64);
            self.mem.write_obj(addr, at).unwrap();
            let c = count | if eot { spec::PRD_EOT } else { 0 };
            self.mem.write_obj(c, GuestAddress(at.0 + 4)).unwrap();
        }
    }

    fn mem_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn seabios_style_detection_and_signatures() {
    let (d, _) = hd(100);
    let (c, _) = cd(10);
    let mut r = Rig::new([[Some(d), None], [Some(c), None]]);
    // Registers echo on a channel with a device, for both positions.
    for dh in [0xa0u8, 0xb0] {
        r.outb(P + 6, dh);
        r.outb(P + 2, 0x55);
        r.outb(P + 3, 0xaa);
        assert_eq!((r.inb(P + 2), r.inb(P + 3), r.inb(P + 6)), (0x55, 0xaa, dh));
    }
    // The absent slave reads status 00h (device 0 answers for it).
    assert_eq!(r.inb(P + 7), 0);
    // Master: an ATA device, ready.
    r.outb(P + 6, 0xa0);
    assert_eq!(r.inb(P + 7), 0x50);
    // SRST: BSY while asserted, then the signatures.
    r.outb(P_CTL, 0x0e);
    assert_eq!(r.inb(P + 7) & 0x80, 0x80);
    r.outb(P_CTL, 0x0a);
    assert_eq!(r.inb(P + 7), 0x50);
    assert_eq!(
        (
            r.inb(P + 1),
            r.inb(P + 2),
            r.inb(P + 3),
            r.inb(P + 4),
            r.inb(P + 5)
        ),
        (1, 1, 1, 0, 0)
    );
    assert_eq!(r.inb(P + 6) & 0x10, 0, "device 0 selected after reset");
    r.outb(0x376, 0x0e);
    r.outb(0x376, 0x0a);
    assert_eq!(
        (r.inb(S + 4), r.inb(S + 5)),
        (0x14, 0xeb),
        "ATAPI signature"
    );
    assert_eq!(r.inb(S + 7), 0, "ATAPI: DRDY clear after reset");
    // IDENTIFY DEVICE to the CD aborts with the signature; IDENTIFY PACKET
    // DEVICE works.
    r.command28(S, 0, ata::CMD_IDENTIFY_DEVICE, 0, 0);
    assert_eq!(r.inb(S + 7), 0x51);
    assert_eq!(r.inb(S + 1), ata::ERROR_ABRT);
    assert_eq!((r.inb(S + 4), r.inb(S + 5)), (0x14, 0xeb));
    r.command28(S, 0, ata::CMD_IDENTIFY_PACKET_DEVICE, 0, 0);
    assert_eq!(r.inb(S + 7), 0x58);
    let id = r.read_data(S, 512);
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x85c0);
    // A command to the absent slave does nothing.
    r.outb(P + 6, 0xb0);
    r.outb(P + 7, ata::CMD_IDENTIFY_DEVICE);
    assert_eq!(r.inb(P + 7), 0);
    assert_eq!(r.inw(P), 0xffff, "no data from an absent device");
}

#[test]
fn empty_channel_reads_zero_and_decode_follows_the_pci_registers() {
    let (mut r, _) = Rig::one_disk(10);
    r.outb(S + 2, 0x55);
    assert_eq!(r.inb(S + 2), 0, "nothing latches on an empty channel");
    assert_eq!(r.inb(S + 7), 0);
    // IDETIM decode enable off: the legacy ports float.
    r.ide.config_write(spec::REG_IDETIM[0], &[0, 0]);
    assert_eq!(r.inb(P + 7), 0xff);
    r.ide
        .config_write(spec::REG_IDETIM[0], &0x8000u16.to_le_bytes());
    assert_eq!(r.inb(P + 7), 0x50);
    // I/O space disabled: nothing decodes, not even the bus master.
    r.ide.config_write(0x04, &[0, 0]);
    assert_eq!(r.inb(P + 7), 0xff);
    assert_eq!(r.inb(BM + 2), 0xff);
    // Class and BAR sizing as firmware sees them.
    assert_eq!(r.ide.config_read(0), 0x7010_8086);
    assert_eq!(r.ide.config_read(8) >> 8, 0x01_01_80);
    r.ide.config_write(0x20, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(r.ide.config_read(0x20), 0xffff_fff1);
}

#[test]
fn pio_read_with_interrupts_per_block() {
    let (mut r, m) = Rig::one_disk(1000);
    r.outb(P_CTL, 0x08); // nIEN clear
    r.command28(P, 0, ata::CMD_READ_SECTORS, 77, 3);
    assert!(r.irq[0].level());
    assert_eq!(r.inb(P_CTL), 0x58, "alternate status leaves the interrupt");
    assert!(r.irq[0].level());
    for s in 0..3 {
        assert_eq!(r.inb(P + 7), 0x58);
        assert!(!r.irq[0].level(), "status read acknowledges");
        let data = r.read_data(P, 512);
        assert_eq!(data, m.bytes((77 + s) * 512..(78 + s) * 512));
        if s < 2 {
            assert!(r.irq[0].level(), "interrupt for the next block");
        }
    }
    assert!(
        !r.irq[0].level(),
        "no interrupt after the last data-in block"
    );
    assert_eq!(r.inb(P + 7), 0x50);
    assert_eq!(r.irq[0].rising_edges(), 3);
    // 32-bit data port accesses move two words.
    r.command28(P, 0, ata::CMD_READ_SECTORS, 5, 1);
    let words: Vec<u8> = (0..128).flat_map(|_| r.inl(P).to_le_bytes()).collect();
    assert_eq!(words, m.bytes(5 * 512..6 * 512));
}

#[test]
fn pio_write_and_multiple() {
    let (mut r, m) = Rig::one_disk(1000);
    r.outb(P_CTL, 0x08);
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
    r.command28(P, 0, ata::CMD_WRITE_SECTORS, 300, 2);
    assert_eq!(r.inb(P_CTL), 0x58);
    assert!(
        !r.irq[0].level(),
        "no interrupt before the first data-out block"
    );
    r.write_data(P, &payload[..512]);
    assert!(r.irq[0].level());
    assert_eq!(r.inb(P + 7), 0x58);
    r.write_data(P, &payload[512..]);
    assert!(r.irq[0].level(), "completion interrupt");
    assert_eq!(r.inb(P + 7), 0x50);
    assert_eq!(m.bytes(300 * 512..302 * 512), payload);
    // WRITE MULTIPLE with 4-sector blocks, then READ MULTIPLE EXT.
    r.command28(P, 0, ata::CMD_SET_MULTIPLE_MODE, 0, 4);
    assert_eq!(r.inb(P + 7), 0x50);
    let big: Vec<u8> = (0..6 * 512u32).map(|i| (i / 7) as u8).collect();
    r.command28(P, 0, ata::CMD_WRITE_MULTIPLE, 600, 6);
    r.write_data(P, &big[..2048]);
    assert_eq!(r.inb(P + 7), 0x58);
    r.write_data(P, &big[2048..]);
    assert_eq!(r.inb(P + 7), 0x50);
    assert_eq!(m.bytes(600 * 512..606 * 512), big);
    r.command48(P, ata::CMD_READ_MULTIPLE_EXT, 600, 6);
    let mut got = r.read_data(P, 2048);
    assert_eq!(r.inb(P + 7), 0x58);
    got.extend(r.read_data(P, 1024));
    assert_eq!(r.inb(P + 7), 0x50);
    assert_eq!(got, big);
}

#[test]
fn lba48_registers_and_hob_readback() {
    let (mut r, m) = Rig::one_disk(0x2_0000_0100);
    r.command48(P, ata::CMD_READ_SECTORS_EXT, 0x1_2345_6789, 1);
    assert_eq!(r.inb(P + 7), 0x58);
    assert_eq!(
        r.read_data(P, 512),
        m.bytes(0x1_2345_6789 * 512..0x1_2345_678a * 512)
    );
    // HOB set: the previous contents read back.
    assert_eq!(r.inb(P + 3), 0x89);
    r.outb(P_CTL, 0x80);
    assert_eq!(r.inb(P + 3), 0x23);
    assert_eq!(r.inb(P + 4), 0x01);
    // Any command block write clears HOB.
    r.outb(P + 1, 0);
    assert_eq!(r.inb(P + 3), 0x89);
    // Out of range: IDNF, with the error interrupt.
    r.outb(P_CTL, 0x08);
    let edges = r.irq[0].rising_edges();
    r.command48(P, ata::CMD_READ_SECTORS_EXT, 0x2_0000_0100, 1);
    assert_eq!(r.inb(P + 7), 0x51);
    assert_eq!(r.inb(P + 1), ata::ERROR_IDNF);
    assert_eq!(r.irq[0].rising_edges(), edges + 1);
}

#[test]
fn bus_master_dma_read_and_write() {
    let (mut r, m) = Rig::one_disk(1000);
    r.outb(P_CTL, 0x08);
    // Read 3 sectors into two regions.
    r.prd(0x8000, &[(0x1_0000, 1024, false), (0x2_0001, 513, true)]);
    r.outl(BM + 4, 0x8000);
    r.outb(BM + 2, 0x06); // clear interrupt and error
    r.command28(P, 0, ata::CMD_READ_DMA, 40, 3);
    assert_eq!(
        r.inb(P_CTL) & 0x80 | r.inb(P_CTL) & 0x08,
        0x08,
        "waiting for the engine"
    );
    r.outb(BM, spec::BM_CMD_START | spec::BM_CMD_WRITE_TO_MEMORY);
    assert_eq!(
        r.inb(BM + 2) & 7,
        spec::BM_STATUS_INTERRUPT,
        "done, PRDs exhausted"
    );
    assert!(r.irq[0].level());
    assert_eq!(r.inb(P + 7), 0x50);
    r.outb(BM, 0);
    assert_eq!(r.mem_bytes(0x1_0000, 1024), m.bytes(40 * 512..42 * 512));
    // The odd address and count are taken with bit 0 clear.
    assert_eq!(r.mem_bytes(0x2_0000, 512), m.bytes(42 * 512..43 * 512));
    // Write DMA EXT from memory, engine started before the command.
    let payload: Vec<u8> = (0..2048u32).map(|i| (i * 5) as u8).collect();
    r.mem.write_slice(&payload, GuestAddress(0x3_0000)).unwrap();
    r.prd(0x8100, &[(0x3_0000, 2048, true)]);
    r.outl(BM + 4, 0x8100);
    r.outb(BM + 2, 0x06);
    r.outb(BM, spec::BM_CMD_START);
    r.command48(P, ata::CMD_WRITE_DMA_EXT, 700, 4);
    assert_eq!(r.inb(BM + 2) & 7, spec::BM_STATUS_INTERRUPT);
    assert_eq!(r.inb(P + 7), 0x50);
    assert_eq!(m.bytes(700 * 512..704 * 512), payload);
    // A zero count means 64 KiB.
    r.prd(0x8200, &[(0x4_0000, 0, true)]);
    r.outl(BM + 4, 0x8200);
    r.outb(BM, spec::BM_CMD_WRITE_TO_MEMORY);
    r.outb(BM + 2, 0x06);
    r.command28(P, 0, ata::CMD_READ_DMA, 0, 128);
    r.outb(BM, spec::BM_CMD_START | spec::BM_CMD_WRITE_TO_MEMORY);
    assert_eq!(r.inb(BM + 2) & 7, spec::BM_STATUS_INTERRUPT);
    assert_eq!(r.mem_bytes(0x4_0000, 0x1_0000), m.bytes(0..0x1_0000));
}

#[test]
fn bus_master_table_size_mismatches_and_bad_addresses() {
    let (mut r, _) = Rig::one_disk(1000);
    r.outb(P_CTL, 0x08);
    // Table larger than the transfer: interrupt with the engine active.
    r.prd(0x8000, &[(0x1_0000, 4096, true)]);
    r.outl(BM + 4, 0x8000);
    r.command28(P, 0, ata::CMD_READ_DMA, 0, 1);
    r.outb(BM, spec::BM_CMD_START | spec::BM_CMD_WRITE_TO_MEMORY);
    assert_eq!(
        r.inb(BM + 2) & 7,
        spec::BM_STATUS_INTERRUPT | spec::BM_STATUS_ACTIVE
    );
    r.outb(BM, 0);
    assert_eq!(r.inb(BM + 2) & 7, spec::BM_STATUS_INTERRUPT);
    // Table smaller than the transfer: the engine stops without an
    // interrupt and the device keeps DRQ until a reset.
    r.outb(BM + 2, 0x06);
    r.prd(0x8000, &[(0x1_0000, 512, true)]);
    r.command28(P, 0, ata::CMD_READ_DMA, 0, 2);
    r.outb(BM, spec::BM_CMD_START | spec::BM_CMD_WRITE_TO_MEMORY);
    assert_eq!(r.inb(BM + 2) & 7, 0);
    assert_eq!(r.inb(P + 7) & 0x08, 0x08);
    r.outb(BM, 0);
    r.outb(P_CTL, 0x0c);
    r.outb(P_CTL, 0x08);
    assert_eq!(r.inb(P + 7), 0x50);
    // A region outside RAM: the engine reports an error, the command aborts.
    r.prd(0x8000, &[(0xfff0_0000, 512, true)]);
    r.command28(P, 0, ata::CMD_READ_DMA, 0, 1);
    r.outb(BM, spec::BM_CMD_START | spec::BM_CMD_WRITE_TO_MEMORY);
    assert_eq!(
        r.inb(BM + 2) & 7,
        spec::BM_STATUS_ERROR | spec::BM_STATUS_INTERRUPT
    );
    assert_eq!(r.inb(P + 7), 0x51);
    r.outb(BM, 0);
    // The table itself outside RAM.
    r.outb(BM + 2, 0x06);
    r.outl(BM + 4, 0xffff_0000);
    r.command28(P, 0, ata::CMD_WRITE_DMA, 0, 1);
    r.outb(BM, spec::BM_CMD_START);
    assert_eq!(r.inb(BM + 2) & spec::BM_STATUS_ERROR, spec::BM_STATUS_ERROR);
    r.outb(BM, 0);
    // Engine direction opposite to the command: error, nothing moved.
    r.outb(BM + 2, 0x06);
    r.outl(BM + 4, 0x8000);
    r.prd(0x8000, &[(0x1_0000, 512, true)]);
    r.command28(P, 0, ata::CMD_READ_DMA, 0, 1);
    r.outb(BM, spec::BM_CMD_START);
    assert_eq!(r.inb(BM + 2) & spec::BM_STATUS_ERROR, spec::BM_STATUS_ERROR);
    r.outb(BM, 0);
    // Bus mastering disabled in PCI: the engine never runs.
    r.ide.config_write(0x04, &[COMMAND_IO as u8, 0]);
    r.outb(BM + 2, 0x06);
    r.command28(P, 0, ata::CMD_READ_DMA, 0, 1);
    r.outb(BM, spec::BM_CMD_START | spec::BM_CMD_WRITE_TO_MEMORY);
    assert_eq!(r.inb(BM + 2) & 7, spec::BM_STATUS_ACTIVE);
    assert_eq!(r.inb(P + 7) & 0x08, 0x08);
}

#[test]
fn commands_while_busy_are_ignored_and_registers_hold() {
    let (mut r, m) = Rig::one_disk(1000);
    r.command28(P, 0, ata::CMD_READ_SECTORS, 10, 2);
    let first = r.read_data(P, 256);
    // A new command and register writes in the middle of the data phase.
    r.outb(P + 3, 99);
    r.outb(P + 7, ata::CMD_IDENTIFY_DEVICE);
    let rest = r.read_data(P, 1024 - 256);
    let mut all = first;
    all.extend(rest);
    assert_eq!(all, m.bytes(10 * 512..12 * 512));
    assert_eq!(r.inb(P + 7), 0x50);
    // Data port writes outside a data-out phase go nowhere.
    r.outw(P, 0x1234);
    assert_eq!(m.bytes(0..512), hd(1000).1.bytes(0..512));
}

#[test]
fn read_only_disk_aborts_writes() {
    let m = Arc::new(MemDisk::new(100 * 512));
    let d = AtaDevice::disk(m.clone(), true, Link::Parallel, ident("RO"));
    let mut r = Rig::new([[Some(d), None], [None, None]]);
    r.command28(P, 0, ata::CMD_WRITE_SECTORS, 1, 1);
    assert_eq!(r.inb(P + 7), 0x51);
    assert_eq!(r.inb(P + 1), ata::ERROR_ABRT);
    assert_eq!(r.inw(P), 0xffff, "no data phase");
    assert!(m.take_log().is_empty());
}

#[test]
fn atapi_packet_pio_in_byte_count_blocks() {
    let (d, _) = hd(10);
    let (c, _) = cd(100);
    let mut r = Rig::new([[Some(d), Some(c)], [None, None]]);
    r.outb(P_CTL, 0x08);
    r.outb(P + 6, 0xb0);
    // PACKET, byte count limit 2048.
    r.outb(P + 1, 0);
    r.outb(P + 4, 0x00);
    r.outb(P + 5, 0x08);
    r.outb(P + 7, ata::CMD_PACKET);
    assert_eq!(r.inb(P + 7), 0x58);
    assert_eq!(r.inb(P + 2) & 3, spec::IREASON_COD, "command packet wanted");
    // READ(10) of 2 blocks from block 7.
    r.write_data(P, &[0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0, 0, 0]);
    for block in [7u8, 8] {
        assert!(r.irq[0].level());
        assert_eq!(r.inb(P + 7), 0x58);
        assert_eq!(r.inb(P + 2) & 3, spec::IREASON_IO);
        let n = u16::from(r.inb(P + 4)) | u16::from(r.inb(P + 5)) << 8;
        assert_eq!(n, 2048);
        assert!(r.read_data(P, 2048).iter().all(|&b| b == block));
    }
    assert!(r.irq[0].level(), "completion interrupt");
    assert_eq!(r.inb(P + 7), 0x50);
    assert_eq!(r.inb(P + 2) & 3, spec::IREASON_IO | spec::IREASON_COD);
    // An error: READ past the end; the sense key is in the error register.
    r.outb(P + 4, 0x00);
    r.outb(P + 5, 0x08);
    r.outb(P + 7, ata::CMD_PACKET);
    r.write_data(P, &[0x28, 0, 0, 0, 0, 200, 0, 0, 1, 0, 0, 0]);
    assert_eq!(r.inb(P + 7), 0x41, "ATAPI error: DRDY and ERR");
    assert_eq!(r.inb(P + 1), 0x54, "ILLEGAL REQUEST, ABRT");
    // A small byte count limit splits a block.
    r.outb(P + 4, 0x00);
    r.outb(P + 5, 0x02);
    r.outb(P + 7, ata::CMD_PACKET);
    r.write_data(P, &[0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r.inb(P + 4) as u16 | (r.inb(P + 5) as u16) << 8, 36);
    let inq = r.read_data(P, 36);
    assert_eq!(inq[0], 5);
    assert_eq!(r.inb(P + 7), 0x50);
}

#[test]
fn atapi_packet_dma() {
    let (c, _) = cd(100);
    let mut r = Rig::new([[None, None], [Some(c), None]]);
    r.prd(0x8000, &[(0x1_0000, 4096, true)]);
    r.outl(BM + 8 + 4, 0x8000);
    r.outb(S + 6, 0xa0);
    r.outb(S + 1, 1); // DMA
    r.outb(S + 4, 0);
    r.outb(S + 5, 0x08);
    r.outb(S + 7, ata::CMD_PACKET);
    r.write_data(S, &[0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0, 0, 0]);
    assert_eq!(r.inb(S + 7) & 0x08, 0x08, "waiting for the engine");
    r.outb(BM + 8, spec::BM_CMD_START | spec::BM_CMD_WRITE_TO_MEMORY);
    assert_eq!(r.inb(BM + 8 + 2) & 7, spec::BM_STATUS_INTERRUPT);
    assert!(r.irq[1].level());
    assert_eq!(r.inb(S + 7), 0x50);
    assert_eq!(r.inb(S + 2) & 3, spec::IREASON_IO | spec::IREASON_COD);
    let got = r.mem_bytes(0x1_0000, 4096);
    assert!(got[..2048].iter().all(|&b| b == 3) && got[2048..].iter().all(|&b| b == 4));
}
