//! The shared ATA/ATAPI command layer, driven directly: every command the
//! front ends pass through, including the error paths.

use std::sync::Arc;

use rehost_disk::{BlockDevice, BlockGeometry};

use super::*;
use crate::storage::atapi_spec as scsi;
use crate::storage::testing::{Access, MemDisk};

fn ident() -> DriveIdentity {
    DriveIdentity {
        serial: "SN-1234".into(),
        model: "REHOST HARDDISK".into(),
        firmware: "0.1.0".into(),
    }
}

fn disk(sectors: u64, link: Link) -> (AtaDevice, Arc<MemDisk>) {
    let m = Arc::new(MemDisk::patterned(sectors * 512, |i| {
        (i / 512) as u8 ^ (i as u8)
    }));
    (AtaDevice::disk(m.clone(), false, link, ident()), m)
}

fn cmd(command: u8) -> TaskFile {
    TaskFile {
        command,
        device: spec::DEVICE_LBA,
        ..Default::default()
    }
}

fn rw28(command: u8, lba: u64, count: u8) -> TaskFile {
    let mut tf = cmd(command);
    tf.set_lba(lba, false);
    tf.device |= spec::DEVICE_LBA;
    tf.count = count;
    tf
}

fn rw48(command: u8, lba: u64, count: u16) -> TaskFile {
    let mut tf = cmd(command);
    tf.set_lba(lba, true);
    tf.count = count as u8;
    tf.count_exp = (count >> 8) as u8;
    tf
}

/// Runs a PIO or DMA data-in phase through `data_in` and returns the bytes.
fn read_all(dev: &mut AtaDevice, tf: &mut TaskFile) -> Result<Vec<u8>, AtaStatus> {
    match dev.execute(tf) {
        Next::Data(mut phase) => {
            assert_eq!(phase.direction, Direction::In);
            let mut out = Vec::new();
            while !phase.is_complete() {
                let mut b = vec![0u8; phase.next_block()];
                dev.data_in(&mut phase, tf, &mut b)?;
                out.extend(b);
            }
            let st = dev.finish(&mut phase, tf);
            if st.is_error() {
                return Err(st);
            }
            Ok(out)
        }
        Next::Done(st) => Err(st),
        Next::Packet { .. } => panic!("unexpected packet phase"),
    }
}

fn write_all(dev: &mut AtaDevice, tf: &mut TaskFile, data: &[u8]) -> AtaStatus {
    match dev.execute(tf) {
        Next::Data(mut phase) => {
            assert_eq!(phase.direction, Direction::Out);
            let mut at = 0;
            while !phase.is_complete() {
                let n = phase.next_block();
                if let Err(st) = dev.data_out(&mut phase, tf, &data[at..at + n]) {
                    return st;
                }
                at += n;
            }
            dev.finish(&mut phase, tf)
        }
        Next::Done(st) => st,
        Next::Packet { .. } => panic!("unexpected packet phase"),
    }
}

fn words(data: &[u8]) -> Vec<u16> {
    data.chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn ata_string(w: &[u16]) -> String {
    w.iter()
        .flat_map(|x| [(x >> 8) as u8, *x as u8])
        .map(char::from)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

#[test]
fn identify_device_describes_the_disk() {
    let (mut dev, _) = disk(0x1000_0100, Link::Serial); // beyond LBA28
    let mut tf = cmd(spec::CMD_IDENTIFY_DEVICE);
    let data = read_all(&mut dev, &mut tf).unwrap();
    assert_eq!(data.len(), 512);
    let w = words(&data);
    assert_eq!(w[0], 0x0040);
    assert_eq!(ata_string(&w[10..20]), "SN-1234");
    assert_eq!(ata_string(&w[23..27]), "0.1.0");
    assert_eq!(ata_string(&w[27..47]), "REHOST HARDDISK");
    // LBA28 capacity saturates, LBA48 holds all.
    assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, 0x0fff_ffff);
    let lba48 = w[100..104]
        .iter()
        .enumerate()
        .fold(0u64, |a, (i, x)| a | u64::from(*x) << (16 * i));
    assert_eq!(lba48, 0x1000_0100);
    assert_ne!(w[49] & (1 << 9), 0, "LBA");
    assert_ne!(w[83] & (1 << 10), 0, "48-bit");
    assert_eq!(w[75], 31, "queue depth 32");
    assert_ne!(w[76] & (1 << 8), 0, "NCQ");
    assert_eq!(w[88] & 0x3f, 0x3f, "UDMA 0-5");
    assert_ne!(w[88] & (1 << 13), 0, "UDMA 5 selected");
    assert_eq!(w[63] & 7, 7, "MWDMA 0-2");
    assert_eq!(w[106], 0x4000, "512/512 sectors");
    assert_eq!(w[169] & 1, 1, "TRIM");
    assert_eq!(w[47], 0x8010);
    // Integrity word: A5h and a checksum.
    assert_eq!(data[510], 0xa5);
    assert_eq!(data.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    // A parallel device has no NCQ and reports its cable in word 93.
    let (mut pdev, _) = disk(1000, Link::Parallel);
    let w = words(&read_all(&mut pdev, &mut cmd(spec::CMD_IDENTIFY_DEVICE)).unwrap());
    assert_eq!(w[75], 0);
    assert_eq!(w[76], 0);
    assert_eq!(w[93], 0x6001);
}

#[test]
fn identify_reports_4k_sectors() {
    let m = Arc::new(MemDisk::with_geometry(BlockGeometry {
        size: 1 << 20,
        logical_sector_size: 512,
        physical_sector_size: 4096,
        read_only: false,
    }));
    let mut dev = AtaDevice::disk(m, false, Link::Serial, ident());
    let w = words(&read_all(&mut dev, &mut cmd(spec::CMD_IDENTIFY_DEVICE)).unwrap());
    assert_eq!(w[106], 0x6003, "8 logical per physical");
    let m = Arc::new(MemDisk::with_geometry(BlockGeometry {
        size: 1 << 20,
        logical_sector_size: 4096,
        physical_sector_size: 4096,
        read_only: false,
    }));
    let mut dev = AtaDevice::disk(m.clone(), false, Link::Serial, ident());
    let w = words(&read_all(&mut dev, &mut cmd(spec::CMD_IDENTIFY_DEVICE)).unwrap());
    assert_eq!(w[106], 0x5000, "large logical sectors");
    assert_eq!(u32::from(w[117]) | u32::from(w[118]) << 16, 2048);
    assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, 256);
    // A read of one sector moves 4096 bytes from byte 4096 * LBA.
    m.set_bytes(4096 * 3, &[0xab; 4096]);
    let data = read_all(&mut dev, &mut rw28(spec::CMD_READ_SECTORS, 3, 1)).unwrap();
    assert_eq!(data, vec![0xab; 4096]);
}

#[test]
fn pio_reads_and_writes_reach_the_medium() {
    let (mut dev, m) = disk(1000, Link::Parallel);
    let data = read_all(&mut dev, &mut rw28(spec::CMD_READ_SECTORS, 10, 3)).unwrap();
    assert_eq!(data, m.bytes(10 * 512..13 * 512));
    // Count 0 means 256 sectors.
    let data = read_all(&mut dev, &mut rw28(spec::CMD_READ_SECTORS, 0, 0)).unwrap();
    assert_eq!(data.len(), 256 * 512);
    let payload: Vec<u8> = (0..2 * 512).map(|i| (i * 3) as u8).collect();
    let st = write_all(
        &mut dev,
        &mut rw48(spec::CMD_WRITE_SECTORS_EXT, 500, 2),
        &payload,
    );
    assert_eq!(st, AtaStatus::OK);
    assert_eq!(m.bytes(500 * 512..502 * 512), payload);
    // 48-bit count 0 means 65536 sectors: beyond this disk.
    let mut tf = rw48(spec::CMD_READ_SECTORS_EXT, 0, 0);
    assert_eq!(
        read_all(&mut dev, &mut tf).unwrap_err(),
        AtaStatus::error(spec::ERROR_IDNF)
    );
}

#[test]
fn read_multiple_uses_the_multiple_setting() {
    let (mut dev, m) = disk(1000, Link::Parallel);
    let mut tf = cmd(spec::CMD_SET_MULTIPLE_MODE);
    tf.count = 3;
    assert!(matches!(dev.execute(&mut tf), Next::Done(s) if s == AtaStatus::ABORTED));
    tf.count = 4;
    assert!(matches!(dev.execute(&mut tf), Next::Done(AtaStatus::OK)));
    let mut tf = rw28(spec::CMD_READ_MULTIPLE, 7, 10);
    let Next::Data(mut phase) = dev.execute(&mut tf) else {
        panic!("no data phase")
    };
    assert_eq!(phase.block, 4 * 512);
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    while !phase.is_complete() {
        let mut b = vec![0; phase.next_block()];
        dev.data_in(&mut phase, &mut tf, &mut b).unwrap();
        sizes.push(b.len());
        all.extend(b);
    }
    assert_eq!(sizes, vec![2048, 2048, 1024]);
    assert_eq!(all, m.bytes(7 * 512..17 * 512));
    // Multiple mode off: READ MULTIPLE aborts.
    let mut tf = cmd(spec::CMD_SET_MULTIPLE_MODE);
    tf.count = 0;
    dev.execute(&mut tf);
    assert!(matches!(
        dev.execute(&mut rw28(spec::CMD_READ_MULTIPLE, 0, 1)),
        Next::Done(s) if s == AtaStatus::ABORTED
    ));
}

#[test]
fn lba_past_the_end_is_idnf_with_the_lba_reported() {
    let (mut dev, m) = disk(100, Link::Serial);
    for tf in [
        rw28(spec::CMD_READ_DMA, 99, 2),
        rw48(spec::CMD_WRITE_DMA_EXT, 100, 1),
        rw48(spec::CMD_READ_SECTORS_EXT, u64::MAX >> 16, 1),
        rw28(spec::CMD_READ_VERIFY_SECTORS, 99, 2),
    ] {
        let mut tf = tf;
        match dev.execute(&mut tf) {
            Next::Done(st) => assert_eq!(st, AtaStatus::error(spec::ERROR_IDNF), "{tf:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(m.take_log().is_empty(), "nothing reached the medium");
    // An LBA28 command cannot reach past 2^28 even on a big disk.
    let (mut big, _) = disk(0x1000_0010, Link::Serial);
    let mut tf = rw28(spec::CMD_READ_DMA, 0x0fff_ffff, 2);
    assert!(matches!(big.execute(&mut tf), Next::Done(s) if s.error == spec::ERROR_IDNF));
}

#[test]
fn chs_addressing_uses_the_current_geometry() {
    let (mut dev, m) = disk(16 * 63 * 4, Link::Parallel);
    // Cylinder 1, head 2, sector 5 with 16/63: LBA (1*16+2)*63+4.
    let mut tf = TaskFile {
        command: spec::CMD_READ_SECTORS,
        count: 1,
        lba_low: 5,
        lba_mid: 1,
        lba_high: 0,
        device: 2,
        ..Default::default()
    };
    let lba = (16 + 2) * 63 + 4;
    assert_eq!(
        read_all(&mut dev, &mut tf).unwrap(),
        m.bytes(lba * 512..(lba + 1) * 512)
    );
    tf.lba_low = 0; // sector 0 does not exist
    assert_eq!(
        read_all(&mut dev, &mut tf).unwrap_err(),
        AtaStatus::error(spec::ERROR_IDNF)
    );
    // INITIALIZE DEVICE PARAMETERS: 4 heads, 32 sectors per track.
    let mut init = cmd(spec::CMD_INITIALIZE_DEVICE_PARAMETERS);
    init.device = 3;
    init.count = 32;
    assert!(matches!(dev.execute(&mut init), Next::Done(AtaStatus::OK)));
    tf.lba_low = 1;
    tf.device = 1;
    tf.lba_mid = 2;
    let lba = (2 * 4 + 1) * 32;
    assert_eq!(
        read_all(&mut dev, &mut tf).unwrap(),
        m.bytes(lba * 512..(lba + 1) * 512)
    );
}

#[test]
fn read_only_disk_aborts_every_write() {
    let m = Arc::new(MemDisk::new(100 * 512));
    let mut dev = AtaDevice::disk(m.clone(), true, Link::Serial, ident());
    let mut fpdma = rw48(spec::CMD_WRITE_FPDMA_QUEUED, 1, 0);
    fpdma.features = 1;
    let mut dsm = cmd(spec::CMD_DATA_SET_MANAGEMENT);
    dsm.features = 1;
    dsm.count = 1;
    for mut tf in [
        rw28(spec::CMD_WRITE_SECTORS, 1, 1),
        rw48(spec::CMD_WRITE_SECTORS_EXT, 1, 1),
        rw28(spec::CMD_WRITE_DMA, 1, 1),
        rw48(spec::CMD_WRITE_DMA_EXT, 1, 1),
        rw48(spec::CMD_WRITE_DMA_FUA_EXT, 1, 1),
        rw48(spec::CMD_WRITE_MULTIPLE_EXT, 1, 1),
        fpdma,
        dsm,
    ] {
        match dev.execute(&mut tf) {
            Next::Done(st) => assert_eq!(st, AtaStatus::ABORTED, "{tf:?}"),
            other => panic!("{:#04x}: {other:?}", tf.command),
        }
    }
    assert!(m.take_log().is_empty());
    // Reads still work, and FLUSH CACHE succeeds without touching it.
    assert!(read_all(&mut dev, &mut rw28(spec::CMD_READ_SECTORS, 1, 1)).is_ok());
    assert!(matches!(
        dev.execute(&mut cmd(spec::CMD_FLUSH_CACHE_EXT)),
        Next::Done(AtaStatus::OK)
    ));
    assert_eq!(m.flushes(), 0);
}

#[test]
fn medium_errors_report_unc_and_the_failing_lba() {
    let (mut dev, m) = disk(1000, Link::Parallel);
    m.fail(Some(200 * 512..201 * 512));
    let mut tf = rw48(spec::CMD_READ_SECTORS_EXT, 200, 4);
    let st = read_all(&mut dev, &mut tf).unwrap_err();
    assert_eq!(st, AtaStatus::error(spec::ERROR_UNC));
    assert_eq!(tf.lba48(), 200);
    // A write failure aborts, naming the sector.
    let mut tf = rw28(spec::CMD_WRITE_SECTORS, 199, 3);
    let st = write_all(&mut dev, &mut tf, &[0u8; 3 * 512]);
    assert_eq!(st, AtaStatus::ABORTED);
    assert_eq!(tf.lba28(), 200);
    m.fail(None);
}

#[test]
fn flush_fua_and_write_cache_setting_reach_flush() {
    let (mut dev, m) = disk(100, Link::Serial);
    assert!(matches!(
        dev.execute(&mut cmd(spec::CMD_FLUSH_CACHE)),
        Next::Done(AtaStatus::OK)
    ));
    assert!(matches!(
        dev.execute(&mut cmd(spec::CMD_FLUSH_CACHE_EXT)),
        Next::Done(AtaStatus::OK)
    ));
    assert_eq!(m.flushes(), 2);
    write_all(
        &mut dev,
        &mut rw48(spec::CMD_WRITE_DMA_EXT, 1, 1),
        &[1; 512],
    );
    assert_eq!(m.flushes(), 2, "write-back cache: no flush");
    write_all(
        &mut dev,
        &mut rw48(spec::CMD_WRITE_DMA_FUA_EXT, 1, 1),
        &[1; 512],
    );
    assert_eq!(m.flushes(), 3, "FUA flushes");
    let mut tf = cmd(spec::CMD_SET_FEATURES);
    tf.features = spec::FEATURE_DISABLE_WRITE_CACHE;
    assert!(matches!(dev.execute(&mut tf), Next::Done(AtaStatus::OK)));
    assert_eq!(m.flushes(), 4, "disabling the cache commits it");
    write_all(
        &mut dev,
        &mut rw28(spec::CMD_WRITE_SECTORS, 1, 1),
        &[1; 512],
    );
    assert_eq!(m.flushes(), 5, "write-through");
    let w = words(&read_all(&mut dev, &mut cmd(spec::CMD_IDENTIFY_DEVICE)).unwrap());
    assert_eq!(w[85] & (1 << 5), 0, "write cache shown disabled");
}

#[test]
fn set_features_transfer_modes() {
    let (mut dev, _) = disk(100, Link::Parallel);
    let mut tf = cmd(spec::CMD_SET_FEATURES);
    tf.features = spec::FEATURE_SET_TRANSFER_MODE;
    for (mode, ok) in [
        (0x00, true),
        (0x01, true),
        (0x0c, true),
        (0x0d, false),
        (0x22, true),
        (0x23, false),
        (0x45, true),
        (0x46, false),
        (0x10, false),
    ] {
        tf.count = mode;
        let expected = if ok {
            AtaStatus::OK
        } else {
            AtaStatus::ABORTED
        };
        assert!(
            matches!(dev.execute(&mut tf), Next::Done(s) if s == expected),
            "{mode:#x}"
        );
    }
    tf.count = 0x21; // MWDMA 1
    dev.execute(&mut tf);
    let w = words(&read_all(&mut dev, &mut cmd(spec::CMD_IDENTIFY_DEVICE)).unwrap());
    assert_eq!(w[63], 0x0207);
    assert_eq!(w[88], 0x003f);
    tf.features = 0x42; // not a subcommand we have
    assert!(matches!(dev.execute(&mut tf), Next::Done(s) if s == AtaStatus::ABORTED));
    // SATA feature enables exist only on the serial link.
    tf.features = spec::FEATURE_ENABLE_SATA_FEATURE;
    assert!(matches!(dev.execute(&mut tf), Next::Done(s) if s == AtaStatus::ABORTED));
}

#[test]
fn data_set_management_trims_ranges() {
    let (mut dev, m) = disk(1000, Link::Serial);
    let mut tf = cmd(spec::CMD_DATA_SET_MANAGEMENT);
    tf.features = 1;
    tf.count = 1;
    let mut entries = vec![0u8; 512];
    entries[..8].copy_from_slice(&(10u64 | 5 << 48).to_le_bytes());
    entries[8..16].copy_from_slice(&(900u64 | 100 << 48).to_le_bytes());
    m.take_log();
    assert_eq!(write_all(&mut dev, &mut tf, &entries), AtaStatus::OK);
    assert_eq!(
        m.take_log(),
        vec![
            Access::Discard {
                offset: 10 * 512,
                len: 5 * 512
            },
            Access::Discard {
                offset: 900 * 512,
                len: 100 * 512
            }
        ]
    );
    // A range past the end aborts the command, nothing is discarded.
    entries[8..16].copy_from_slice(&(900u64 | 101 << 48).to_le_bytes());
    assert_eq!(write_all(&mut dev, &mut tf, &entries), AtaStatus::ABORTED);
    assert!(m.take_log().is_empty());
    // No TRIM bit, zero or too many blocks: aborted at once.
    for (features, count) in [(0u8, 1u8), (1, 0), (1, 9)] {
        tf.features = features;
        tf.count = count;
        assert!(matches!(dev.execute(&mut tf), Next::Done(s) if s == AtaStatus::ABORTED));
    }
}

#[test]
fn power_modes() {
    let (mut dev, m) = disk(100, Link::Parallel);
    let check = |dev: &mut AtaDevice| {
        let mut tf = cmd(spec::CMD_CHECK_POWER_MODE);
        assert!(matches!(dev.execute(&mut tf), Next::Done(AtaStatus::OK)));
        tf.count
    };
    assert_eq!(check(&mut dev), 0xff);
    dev.execute(&mut cmd(spec::CMD_STANDBY_IMMEDIATE));
    assert_eq!(check(&mut dev), 0x00);
    assert_eq!(m.flushes(), 1, "standby commits the cache");
    assert!(read_all(&mut dev, &mut rw28(spec::CMD_READ_SECTORS, 0, 1)).is_ok());
    assert_eq!(check(&mut dev), 0xff, "media access spins up");
    dev.execute(&mut cmd(spec::CMD_IDLE_IMMEDIATE));
    assert_eq!(check(&mut dev), 0x80);
    dev.execute(&mut cmd(spec::CMD_SLEEP));
    assert!(matches!(
        dev.execute(&mut rw28(spec::CMD_READ_SECTORS, 0, 1)),
        Next::Done(s) if s == AtaStatus::ABORTED
    ));
    let mut tf = TaskFile::default();
    dev.reset(&mut tf);
    assert!(read_all(&mut dev, &mut rw28(spec::CMD_READ_SECTORS, 0, 1)).is_ok());
}

#[test]
fn unsupported_commands_abort() {
    let (mut dev, _) = disk(100, Link::Parallel);
    for c in [spec::CMD_NOP, 0xb0, 0xff, spec::CMD_READ_FPDMA_QUEUED, 0x2f] {
        assert!(
            matches!(dev.execute(&mut cmd(c)), Next::Done(s) if s == AtaStatus::ABORTED),
            "{c:#x}"
        );
    }
    // Packet commands on a disk keep the ATA signature.
    let mut tf = cmd(spec::CMD_IDENTIFY_PACKET_DEVICE);
    assert!(matches!(dev.execute(&mut tf), Next::Done(s) if s == AtaStatus::ABORTED));
    assert_eq!((tf.lba_mid, tf.lba_high), (0, 0));
}

#[test]
fn reset_and_diagnostic_load_the_signature() {
    let (mut dev, _) = disk(100, Link::Parallel);
    let mut tf = cmd(spec::CMD_EXECUTE_DEVICE_DIAGNOSTIC);
    tf.lba_mid = 0x55;
    match dev.execute(&mut tf) {
        Next::Done(st) => assert_eq!(st.error, spec::DIAGNOSTIC_PASSED),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (tf.count, tf.lba_low, tf.lba_mid, tf.lba_high),
        (1, 1, 0, 0)
    );
}

#[test]
fn read_log_ext_directory_and_ncq_error_log() {
    let (mut dev, _) = disk(100, Link::Serial);
    let mut tf = rw48(spec::CMD_READ_LOG_EXT, 0, 1);
    tf.lba_low = spec::LOG_DIRECTORY;
    let dir = read_all(&mut dev, &mut tf).unwrap();
    assert_eq!(dir[0], 1);
    assert_eq!(dir[0x20], 1, "log 10h has one page");
    let mut failing = rw48(spec::CMD_READ_FPDMA_QUEUED, 42, 0);
    failing.count = 7 << 3;
    dev.record_ncq_error(7, AtaStatus::error(spec::ERROR_UNC), &failing);
    // Queued commands abort until the log is read.
    let mut q = rw48(spec::CMD_READ_FPDMA_QUEUED, 1, 0);
    q.features = 1;
    assert!(matches!(dev.execute(&mut q), Next::Done(s) if s == AtaStatus::ABORTED));
    let mut tf = rw48(spec::CMD_READ_LOG_EXT, 0, 1);
    tf.lba_low = spec::LOG_NCQ_COMMAND_ERROR;
    let log = read_all(&mut dev, &mut tf).unwrap();
    assert_eq!(log[0], 7);
    assert_eq!(log[2], AtaStatus::error(spec::ERROR_UNC).status);
    assert_eq!(log[3], spec::ERROR_UNC);
    assert_eq!(log[4], 42);
    assert_eq!(log.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    assert!(matches!(dev.execute(&mut q), Next::Data(_)));
    let log = read_all(&mut dev, &mut tf).unwrap();
    assert_eq!(log[0], spec::NCQ_LOG_NQ, "no error pending");
    // Unknown logs abort.
    tf.lba_low = 0x30;
    assert!(read_all(&mut dev, &mut tf).is_err());
}

#[test]
fn queued_commands_carry_tag_count_and_fua() {
    let (mut dev, _) = disk(1000, Link::Serial);
    let mut tf = rw48(spec::CMD_WRITE_FPDMA_QUEUED, 100, 0);
    tf.count = 9 << 3;
    tf.features = 16;
    tf.device |= spec::DEVICE_FUA;
    let Next::Data(phase) = dev.execute(&mut tf) else {
        panic!()
    };
    assert_eq!(phase.protocol, Protocol::Queued { tag: 9 });
    assert_eq!(phase.len, 16 * 512);
    assert!(matches!(
        phase.op,
        DataOp::WriteMedium {
            offset: 51200,
            fua: true
        }
    ));
    // On a parallel link, queued commands do not exist.
    let (mut pdev, _) = disk(1000, Link::Parallel);
    assert!(matches!(pdev.execute(&mut tf), Next::Done(s) if s == AtaStatus::ABORTED));
}

struct Sg(Vec<u8>);
impl DmaTarget for Sg {
    fn capacity(&self) -> u64 {
        self.0.len() as u64
    }
    fn store(&mut self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn load(&mut self, offset: u64, data: &mut [u8]) -> Result<(), DmaFault> {
        data.copy_from_slice(&self.0[offset as usize..offset as usize + data.len()]);
        Ok(())
    }
}

#[test]
fn run_dma_moves_whole_transfers_and_stops_at_short_tables() {
    let (mut dev, m) = disk(4096, Link::Serial);
    let mut tf = rw48(spec::CMD_READ_DMA_EXT, 0, 2048);
    let Next::Data(mut phase) = dev.execute(&mut tf) else {
        panic!()
    };
    let mut sg = Sg(vec![0; 2048 * 512]);
    let end = dev.run_dma(&mut phase, &mut tf, &mut sg);
    assert_eq!(end.status, AtaStatus::OK);
    assert_eq!(end.moved, 2048 * 512);
    assert_eq!(sg.0, m.bytes(0..2048 * 512));
    let mut tf = rw48(spec::CMD_WRITE_DMA_EXT, 10, 4);
    let Next::Data(mut phase) = dev.execute(&mut tf) else {
        panic!()
    };
    let mut sg = Sg(vec![0x77; 3 * 512]);
    let end = dev.run_dma(&mut phase, &mut tf, &mut sg);
    assert_eq!(end.fault, Some(DmaFault::TableTooShort { described: 1536 }));
    assert_eq!(end.moved, 1536);
    assert_eq!(m.bytes(10 * 512..13 * 512), vec![0x77; 1536]);
}

// --- ATAPI ----------------------------------------------------------------

fn cdrom(blocks: u64) -> (AtaDevice, Arc<MemDisk>) {
    let m = Arc::new(MemDisk::patterned(blocks * 2048, |i| (i / 2048) as u8));
    let dev = AtaDevice::cdrom(
        Some(m.clone() as Arc<dyn BlockDevice>),
        Link::Parallel,
        DriveIdentity {
            serial: "CD1".into(),
            model: "REHOST DVD-ROM".into(),
            firmware: "0.1.0".into(),
        },
    );
    (dev, m)
}

/// Sends a command packet; returns the reply or the sense key.
fn packet(dev: &mut AtaDevice, cdb: &[u8]) -> Result<Vec<u8>, u8> {
    let mut tf = cmd(spec::CMD_PACKET);
    tf.lba_mid = 0x00;
    tf.lba_high = 0x08; // 2048-byte DRQ blocks
    let Next::Packet {
        dma,
        byte_count_limit,
    } = dev.execute(&mut tf)
    else {
        panic!("PACKET did not ask for the packet")
    };
    assert!(!dma);
    assert_eq!(byte_count_limit, 2048);
    let mut c = [0u8; 12];
    c[..cdb.len()].copy_from_slice(cdb);
    match dev.packet(&c, &mut tf, false, byte_count_limit) {
        Next::Done(st) if !st.is_error() => Ok(Vec::new()),
        Next::Done(st) => {
            assert_eq!(st.error & 0x0f, spec::ERROR_ABRT);
            Err(st.error >> 4)
        }
        Next::Data(mut phase) => {
            let mut out = Vec::new();
            while !phase.is_complete() {
                let mut b = vec![0u8; phase.next_block()];
                assert!(b.len() <= 2048);
                if let Err(st) = dev.data_in(&mut phase, &mut tf, &mut b) {
                    return Err(st.error >> 4);
                }
                out.extend(b);
            }
            let st = dev.finish(&mut phase, &mut tf);
            assert_eq!(tf.count, 3, "I/O and C/D at completion");
            assert!(!st.is_error());
            Ok(out)
        }
        Next::Packet { .. } => panic!(),
    }
}

fn sense(dev: &mut AtaDevice) -> (u8, u8, u8) {
    let s = packet(dev, &[scsi::REQUEST_SENSE, 0, 0, 0, 18]).unwrap();
    assert_eq!(s[0], 0x70);
    (s[2], s[12], s[13])
}

#[test]
fn atapi_identify_and_signature() {
    let (mut dev, _) = cdrom(10);
    let mut tf = cmd(spec::CMD_IDENTIFY_DEVICE);
    assert!(matches!(dev.execute(&mut tf), Next::Done(s) if s == AtaStatus::ABORTED));
    assert_eq!((tf.lba_mid, tf.lba_high), (0x14, 0xeb));
    let mut tf = cmd(spec::CMD_IDENTIFY_PACKET_DEVICE);
    let w = words(&read_all(&mut dev, &mut tf).unwrap());
    assert_eq!(w[0], 0x85c0);
    assert_eq!((w[0] >> 8) & 0x1f, 5, "CD-ROM");
    assert_eq!(ata_string(&w[27..47]), "REHOST DVD-ROM");
    let mut r = TaskFile::default();
    assert_eq!(dev.reset(&mut r).status, 0, "DRDY clear after reset");
    assert_eq!((r.lba_mid, r.lba_high), (0x14, 0xeb));
}

#[test]
fn atapi_inquiry_capacity_and_reads() {
    let (mut dev, _) = cdrom(300);
    let inq = packet(&mut dev, &[scsi::INQUIRY, 0, 0, 0, 96]).unwrap();
    assert_eq!(inq.len(), 36);
    assert_eq!(inq[0], 5);
    assert_eq!(inq[1], 0x80);
    assert_eq!(&inq[8..16], b"REHOST  ");
    assert_eq!(&inq[16..32], b"DVD-ROM         ");
    assert_eq!(
        packet(&mut dev, &[scsi::INQUIRY, 0, 0, 0, 5])
            .unwrap()
            .len(),
        5
    );
    assert_eq!(packet(&mut dev, &[scsi::TEST_UNIT_READY]), Ok(vec![]));
    let cap = packet(&mut dev, &[scsi::READ_CAPACITY_10]).unwrap();
    assert_eq!(cap, [0, 0, 1, 43, 0, 0, 8, 0]);
    let data = packet(&mut dev, &[scsi::READ_10, 0, 0, 0, 0, 5, 0, 0, 3]).unwrap();
    assert_eq!(data.len(), 3 * 2048);
    assert!(data[..2048].iter().all(|&b| b == 5));
    assert!(data[4096..].iter().all(|&b| b == 7));
    let data = packet(&mut dev, &[scsi::READ_12, 0, 0, 0, 1, 0x2a, 0, 0, 0, 2]).unwrap();
    assert_eq!(data.len(), 4096);
    assert!(data[..2048].iter().all(|&b| b == 42));
    assert!(data[2048..].iter().all(|&b| b == 43));
    // READ CD of user data only is a plain read.
    let data = packet(&mut dev, &[scsi::READ_CD, 0, 0, 0, 0, 9, 0, 0, 1, 0x10]).unwrap();
    assert!(data.iter().all(|&b| b == 9) && data.len() == 2048);
    // Zero-length read: no data.
    assert_eq!(
        packet(&mut dev, &[scsi::READ_10, 0, 0, 0, 0, 5, 0, 0, 0]),
        Ok(vec![])
    );
}

#[test]
fn atapi_errors_set_sense() {
    let (mut dev, m) = cdrom(300);
    assert_eq!(
        packet(&mut dev, &[scsi::READ_10, 0, 0, 0, 1, 0x2b, 0, 0, 2]),
        Err(scsi::SENSE_ILLEGAL_REQUEST)
    );
    assert_eq!(sense(&mut dev), (5, 0x21, 0));
    assert_eq!(sense(&mut dev), (0, 0, 0), "sense is cleared once read");
    assert_eq!(packet(&mut dev, &[0xff]), Err(scsi::SENSE_ILLEGAL_REQUEST));
    assert_eq!(sense(&mut dev), (5, 0x20, 0));
    assert_eq!(
        packet(&mut dev, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1]),
        Err(scsi::SENSE_DATA_PROTECT)
    );
    assert_eq!(sense(&mut dev), (7, 0x27, 0));
    assert_eq!(
        packet(&mut dev, &[scsi::INQUIRY, 1, 0x80, 0, 96]),
        Err(scsi::SENSE_ILLEGAL_REQUEST)
    );
    m.fail(Some(2048 * 10..2048 * 11));
    assert_eq!(
        packet(&mut dev, &[scsi::READ_10, 0, 0, 0, 0, 9, 0, 0, 2]),
        Err(scsi::SENSE_MEDIUM_ERROR)
    );
    assert_eq!(sense(&mut dev), (3, 0x11, 0));
}

#[test]
fn atapi_media_change_eject_and_lock() {
    let (mut dev, _) = cdrom(300);
    let gesn = |dev: &mut AtaDevice| {
        packet(
            dev,
            &[
                scsi::GET_EVENT_STATUS_NOTIFICATION,
                1,
                0,
                0,
                0x10,
                0,
                0,
                0,
                8,
            ],
        )
        .unwrap()
    };
    assert_eq!(gesn(&mut dev), [0, 6, 4, 0x10, 0, 2, 0, 0]);
    // Lock, then eject refused.
    packet(&mut dev, &[scsi::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1]).unwrap();
    assert_eq!(
        packet(&mut dev, &[scsi::START_STOP_UNIT, 0, 0, 0, 2]),
        Err(scsi::SENSE_ILLEGAL_REQUEST)
    );
    assert_eq!(sense(&mut dev), (5, 0x53, 2));
    let moves = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = moves.clone();
    dev.cdrom_mut()
        .unwrap()
        .set_tray_observer(crate::storage::atapi::TrayObserver(Arc::new(move |open| {
            seen.lock().unwrap().push(open)
        })));
    packet(&mut dev, &[scsi::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0]).unwrap();
    packet(&mut dev, &[scsi::START_STOP_UNIT, 0, 0, 0, 2]).unwrap();
    assert_eq!(gesn(&mut dev)[4..6], [3, 1], "removal event, tray open");
    assert_eq!(*moves.lock().unwrap(), [true], "the guest opened the tray");
    assert_eq!(
        packet(&mut dev, &[scsi::TEST_UNIT_READY]),
        Err(scsi::SENSE_NOT_READY)
    );
    assert_eq!(sense(&mut dev), (2, 0x3a, 0));
    assert_eq!(
        packet(&mut dev, &[scsi::READ_CAPACITY_10]),
        Err(scsi::SENSE_NOT_READY)
    );
    // Load: the medium is back, with a unit attention.
    packet(&mut dev, &[scsi::START_STOP_UNIT, 0, 0, 0, 3]).unwrap();
    assert_eq!(*moves.lock().unwrap(), [true, false], "and closed it");
    assert_eq!(
        packet(&mut dev, &[scsi::TEST_UNIT_READY]),
        Err(scsi::SENSE_UNIT_ATTENTION)
    );
    assert_eq!(sense(&mut dev), (6, 0x28, 0), "sense of the attention");
    assert_eq!(packet(&mut dev, &[scsi::TEST_UNIT_READY]), Ok(vec![]));
    // The host swaps the medium: INQUIRY passes, REQUEST SENSE reports it.
    let other = Arc::new(MemDisk::new(2048 * 50));
    dev.cdrom_mut().unwrap().change_medium(Some(other));
    assert_eq!(gesn(&mut dev)[4], 2, "new media event");
    assert!(packet(&mut dev, &[scsi::INQUIRY, 0, 0, 0, 36]).is_ok());
    assert_eq!(sense(&mut dev), (6, 0x28, 0));
    let cap = packet(&mut dev, &[scsi::READ_CAPACITY_10]).unwrap();
    assert_eq!(cap[..4], [0, 0, 0, 49]);
    dev.cdrom_mut().unwrap().change_medium(None);
    assert_eq!(
        packet(&mut dev, &[scsi::TEST_UNIT_READY]),
        Err(scsi::SENSE_NOT_READY)
    );
}

#[test]
fn atapi_toc_configuration_and_mode_pages() {
    let (mut dev, _) = cdrom(300);
    let toc = packet(
        &mut dev,
        &[scsi::READ_TOC_PMA_ATIP, 0, 0, 0, 0, 0, 0, 0x03, 0x24],
    )
    .unwrap();
    assert_eq!(
        toc,
        [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xaa, 0, 0, 0, 1, 44]
    );
    let msf = packet(
        &mut dev,
        &[scsi::READ_TOC_PMA_ATIP, 2, 0, 0, 0, 0, 0, 0x03, 0x24],
    )
    .unwrap();
    assert_eq!(&msf[8..12], &[0, 0, 2, 0], "track 1 at 00:02:00");
    assert_eq!(&msf[16..20], &[0, 0, 6, 0], "lead-out at 300+150 frames");
    let session = packet(
        &mut dev,
        &[scsi::READ_TOC_PMA_ATIP, 0, 1, 0, 0, 0, 0, 0, 12],
    )
    .unwrap();
    assert_eq!(session[..4], [0, 10, 1, 1]);
    let full = packet(&mut dev, &[scsi::READ_TOC_PMA_ATIP, 0, 2, 0, 0, 0, 0, 1, 0]).unwrap();
    assert_eq!(full.len(), 4 + 4 * 11);
    assert_eq!(
        packet(&mut dev, &[scsi::READ_TOC_PMA_ATIP, 0, 5, 0, 0, 0, 0, 1, 0]),
        Err(scsi::SENSE_ILLEGAL_REQUEST)
    );
    let conf = packet(&mut dev, &[scsi::GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap();
    assert_eq!(
        u16::from_be_bytes([conf[6], conf[7]]),
        0x0008,
        "CD-ROM profile"
    );
    let len = u32::from_be_bytes([conf[0], conf[1], conf[2], conf[3]]) as usize;
    assert_eq!(len + 4, conf.len());
    assert_eq!(&conf[8..10], &[0, 0], "profile list first");
    let one = packet(&mut dev, &[scsi::GET_CONFIGURATION, 2, 0, 1, 0, 0, 0, 1, 0]).unwrap();
    assert_eq!(one.len(), 8 + 4 + 8, "just the core feature");
    assert_eq!(&one[8..10], &[0, 1]);
    let caps = packet(&mut dev, &[scsi::MODE_SENSE_10, 0, 0x2a, 0, 0, 0, 0, 0, 64]).unwrap();
    assert_eq!(
        u16::from_be_bytes([caps[0], caps[1]]) as usize + 2,
        caps.len()
    );
    assert_eq!(caps[8], 0x2a);
    let all = packet(&mut dev, &[scsi::MODE_SENSE_6, 0, 0x3f, 0, 255]).unwrap();
    assert_eq!(all[0] as usize + 1, all.len());
    assert_eq!(
        packet(
            &mut dev,
            &[scsi::MODE_SENSE_10, 0, 0xc0 | 0x2a, 0, 0, 0, 0, 0, 64]
        ),
        Err(scsi::SENSE_ILLEGAL_REQUEST)
    );
    assert_eq!(
        packet(&mut dev, &[scsi::MODE_SENSE_10, 0, 0x05, 0, 0, 0, 0, 0, 64]),
        Err(scsi::SENSE_ILLEGAL_REQUEST)
    );
    let disc = packet(
        &mut dev,
        &[scsi::READ_DISC_INFORMATION, 0, 0, 0, 0, 0, 0, 0, 34],
    )
    .unwrap();
    assert_eq!(disc[2], 0x0e);
    let track = packet(
        &mut dev,
        &[scsi::READ_TRACK_INFORMATION, 1, 0, 0, 0, 1, 0, 0, 36],
    )
    .unwrap();
    assert_eq!((track[2], track[6]), (1, 1));
    assert_eq!(track[24..28], 300u32.to_be_bytes());
    assert_eq!(
        packet(
            &mut dev,
            &[scsi::READ_TRACK_INFORMATION, 1, 0, 0, 0, 2, 0, 0, 36]
        ),
        Err(scsi::SENSE_ILLEGAL_REQUEST)
    );
    // A big medium is a DVD.
    let (mut dvd, _) = cdrom(500_000);
    let conf = packet(&mut dvd, &[scsi::GET_CONFIGURATION, 1, 0, 0, 0, 0, 0, 1, 0]).unwrap();
    assert_eq!(u16::from_be_bytes([conf[6], conf[7]]), 0x0010);
}
