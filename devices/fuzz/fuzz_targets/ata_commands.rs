//! The shared ATA/ATAPI command layer under random task files, command
//! packets and data phases (PIO blocks, DMA through a bounded buffer that
//! can fault part-way, as a descriptor pointing outside guest RAM or a
//! table shorter than the transfer does). No panic; no request outside a
//! disk; nothing written to a read-only one.
#![no_main]

mod common;

use std::sync::Arc;

use common::ident;
use libfuzzer_sys::fuzz_target;
use rehost_devices::storage::ata::{AtaDevice, Direction, Link, Next, TaskFile};
use rehost_devices::storage::dma::{DmaFault, DmaTarget};
use rehost_devices::storage::testing::MemDisk;
use rehost_disk::BlockDevice;

/// The DMA buffer; an access reaching byte `fault_at` or beyond fails
/// with `fault` instead.
struct Buf {
    bytes: Vec<u8>,
    fault_at: u64,
    fault: DmaFault,
}

impl Buf {
    fn check(&self, offset: u64, len: usize) -> Result<usize, DmaFault> {
        if offset + len as u64 > self.fault_at {
            return Err(self.fault);
        }
        Ok(offset as usize)
    }
}

impl DmaTarget for Buf {
    fn capacity(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn store(&mut self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        let o = self.check(offset, data.len())?;
        self.bytes[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn load(&mut self, offset: u64, data: &mut [u8]) -> Result<(), DmaFault> {
        let o = self.check(offset, data.len())?;
        data.copy_from_slice(&self.bytes[o..o + data.len()]);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let link = if first & 1 == 0 {
        Link::Parallel
    } else {
        Link::Serial
    };
    let hd = Arc::new(MemDisk::patterned(512 * 1000, |i| i as u8));
    let ro = Arc::new(MemDisk::new(512 * 8));
    let cd = Arc::new(MemDisk::patterned(2048 * 40, |i| (i >> 11) as u8));
    let mut devices = [
        AtaDevice::disk(hd.clone(), false, link, ident()),
        AtaDevice::disk(ro.clone(), true, link, ident()),
        AtaDevice::cdrom(Some(cd.clone() as Arc<dyn BlockDevice>), link, ident()),
    ];
    if first & 2 != 0 {
        hd.fail(Some(512 * 500..512 * 510));
    }
    while rest.len() >= 14 {
        let (cmd, tail) = rest.split_at(14);
        rest = tail;
        let dev = &mut devices[usize::from(cmd[0]) % 3];
        let mut tf = TaskFile {
            command: cmd[1],
            features: cmd[2],
            features_exp: cmd[3],
            count: cmd[4],
            count_exp: cmd[5],
            lba_low: cmd[6],
            lba_mid: cmd[7],
            lba_high: cmd[8],
            lba_low_exp: cmd[9],
            lba_mid_exp: cmd[10],
            lba_high_exp: cmd[11],
            device: cmd[12],
        };
        let mut next = dev.execute(&mut tf);
        if let Next::Packet {
            dma,
            byte_count_limit,
        } = next
        {
            let n = rest.len().min(12);
            let (cdb, tail) = rest.split_at(n);
            rest = tail;
            next = dev.packet(cdb, &mut tf, dma, byte_count_limit);
        }
        let Next::Data(mut phase) = next else {
            continue;
        };
        if cmd[13] & 1 == 0 {
            // DMA through a buffer of at most 64 KiB; with bit 1 set it
            // faults from a 512-byte multiple chosen by the next byte (bit
            // 2 picks which fault).
            let cap = (usize::from(cmd[13]) << 8).min(phase.len as usize);
            let (fault_at, fault) = if cmd[13] & 2 != 0 {
                let at = rest.first().map_or(0, |&b| u64::from(b) * 512);
                rest = rest.get(1..).unwrap_or_default();
                let fault = if cmd[13] & 4 != 0 {
                    DmaFault::TableTooShort { described: at }
                } else {
                    DmaFault::OutsideRam {
                        addr: 0xFFFF_F000 + at,
                        len: 512,
                    }
                };
                (at, fault)
            } else {
                (u64::MAX, DmaFault::TableTooShort { described: 0 })
            };
            let mut buf = Buf {
                bytes: vec![cmd[13]; cap],
                fault_at,
                fault,
            };
            let end = dev.run_dma(&mut phase, &mut tf, &mut buf);
            // Nothing counts as moved beyond the point the buffer faulted.
            assert!(
                end.moved <= fault_at,
                "moved {} bytes past a fault at {fault_at}",
                end.moved
            );
        } else {
            // PIO: up to 64 blocks, then stop mid-transfer.
            for _ in 0..64 {
                if phase.is_complete() {
                    dev.finish(&mut phase, &mut tf);
                    break;
                }
                let mut block = vec![cmd[13]; phase.next_block()];
                let r = match phase.direction {
                    Direction::In => dev.data_in(&mut phase, &mut tf, &mut block),
                    Direction::Out => dev.data_out(&mut phase, &mut tf, &block),
                };
                if r.is_err() {
                    break;
                }
            }
        }
    }
    assert_eq!(hd.refused() + ro.refused() + cd.refused(), 0);
    assert!(
        ro.bytes(0..512 * 8).iter().all(|&b| b == 0),
        "read-only disk written"
    );
});
