//! The shared ATA/ATAPI command layer under random task files, command
//! packets and data phases (PIO blocks, DMA through a bounded buffer). No
//! panic; no request outside a disk; nothing written to a read-only one.
#![no_main]

mod common;

use std::sync::Arc;

use common::ident;
use libfuzzer_sys::fuzz_target;
use rehost_devices::storage::ata::{AtaDevice, Direction, Link, Next, TaskFile};
use rehost_devices::storage::dma::{DmaFault, DmaTarget};
use rehost_devices::storage::testing::MemDisk;
use rehost_disk::BlockDevice;

struct Buf(Vec<u8>);

impl DmaTarget for Buf {
    fn capacity(&self) -> u64 {
        self.0.len() as u64
    }
    fn store(&mut self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        let o = offset as usize;
        self.0[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn load(&mut self, offset: u64, data: &mut [u8]) -> Result<(), DmaFault> {
        let o = offset as usize;
        data.copy_from_slice(&self.0[o..o + data.len()]);
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
            // DMA through a buffer of at most 64 KiB.
            let cap = (usize::from(cmd[13]) << 8).min(phase.len as usize);
            let mut buf = Buf(vec![cmd[13]; cap]);
            dev.run_dma(&mut phase, &mut tf, &mut buf);
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
