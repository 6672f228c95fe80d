//! The ICH9 AHCI controller under a random driver: each input is a program
//! of MMIO register reads and writes (any width), guest memory writes,
//! well-formed commands placed in a port's command list (so command
//! processing is reached often), and PCI configuration writes. No panic;
//! no request ever reaches a disk outside its range.
#![no_main]

mod common;

use std::sync::Arc;

use common::{ident, Input};
use libfuzzer_sys::fuzz_target;
use rehost_devices::bus::BusDevice;
use rehost_devices::irq::{MsiSender, RecordingIrq, RecordingMsi};
use rehost_devices::pci::PciFunction;
use rehost_devices::storage::ahci::Ahci;
use rehost_devices::storage::ata::{AtaDevice, Link};
use rehost_devices::storage::testing::MemDisk;
use rehost_devices::GuestMemory;
use rehost_disk::BlockDevice;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 1 << 20;
const ABAR: u64 = 0xfebf_0000;
const PORT_REGS: [u64; 14] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x18, 0x20, 0x24, 0x28, 0x2c, 0x30, 0x34, 0x38,
];
const HOST_REGS: [u64; 6] = [0x00, 0x04, 0x08, 0x0c, 0x10, 0x28];
const CONFIG: [usize; 6] = [0x04, 0x24, 0x82, 0x84, 0x8c, 0x92];

fn reg(input: &mut Input) -> Option<u64> {
    let r = input.byte()?;
    Some(if r & 0x80 == 0 {
        HOST_REGS[usize::from(r) % HOST_REGS.len()]
    } else {
        let port = u64::from(r >> 4 & 3);
        0x100 + port * 0x80 + PORT_REGS[usize::from(r & 0x0f) % PORT_REGS.len()]
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let hd = Arc::new(MemDisk::patterned(512 * 300, |i| i as u8));
    let ro = Arc::new(MemDisk::new(512 * 20));
    let cd = Arc::new(MemDisk::patterned(2048 * 20, |i| (i >> 11) as u8));
    let mut ahci = Ahci::new(
        mem.clone(),
        vec![
            Some(AtaDevice::disk(hd.clone(), false, Link::Serial, ident())),
            Some(AtaDevice::cdrom(
                Some(cd.clone() as Arc<dyn BlockDevice>),
                Link::Serial,
                ident(),
            )),
            Some(AtaDevice::disk(ro.clone(), true, Link::Serial, ident())),
        ],
        RecordingIrq::new(),
        Some(RecordingMsi::new() as Arc<dyn MsiSender>),
    );
    ahci.config_write(0x24, &(ABAR as u32).to_le_bytes());
    ahci.config_write(0x04, &[0x06, 0]);
    // A usable layout to start from: port n's command list at 64 KiB * n,
    // FIS area after it, FRE and ST on.
    for p in 0..3u64 {
        let base = ABAR + 0x100 + p * 0x80;
        ahci.write(base, &((0x1_0000 * (p + 1)) as u32).to_le_bytes());
        ahci.write(
            base + 8,
            &((0x1_0000 * (p + 1) + 0x8000) as u32).to_le_bytes(),
        );
        ahci.write(base + 0x18, &0x11u32.to_le_bytes());
    }
    let mut input = Input(data);
    while let Some(op) = input.byte() {
        let width = [4usize, 4, 2, 1][usize::from(op >> 6)];
        match op & 7 {
            0..=2 => {
                let Some(r) = reg(&mut input) else { break };
                let Some(v) = input.bytes(width) else { break };
                ahci.write(
                    ABAR + r + u64::from(op >> 3 & 3) % (4 / width as u64).max(1),
                    &v,
                );
            }
            3 => {
                let Some(r) = reg(&mut input) else { break };
                let mut b = vec![0u8; width];
                ahci.read(ABAR + r, &mut b);
            }
            4 => {
                let Some(a) = input.bytes(3) else { break };
                let Some(v) = input.bytes(8) else { break };
                let addr = (u64::from(a[0]) | u64::from(a[1]) << 8 | u64::from(a[2]) << 16)
                    % (RAM + 0x1_0000);
                let _ = mem.write_slice(&v, GuestAddress(addr & !7));
            }
            5 | 6 => {
                // A command in slot s of port p: header, FIS, PRDT, then CI.
                let Some(ps) = input.byte() else { break };
                let (p, slot) = (u64::from(ps >> 5) % 3, u64::from(ps & 31));
                let Some(fis) = input.bytes(16) else { break };
                let Some(acmd) = input.bytes(12) else { break };
                let Some(prd_count) = input.byte() else { break };
                let Some(prd_len) = input.u32() else { break };
                let clb = 0x1_0000 * (p + 1);
                let table = 0x8_0000 + (p * 32 + slot) * 0x200;
                let prdtl = u32::from(prd_count % 5);
                let flags = 5 | u32::from(fis[15] & 0x60) | prdtl << 16;
                let h = clb + slot * 32;
                let _ = mem.write_obj(flags, GuestAddress(h));
                let _ = mem.write_obj(table, GuestAddress(h + 8));
                let mut cfis = [0u8; 16];
                cfis.copy_from_slice(&fis);
                cfis[0] = 0x27;
                if op & 1 == 0 {
                    cfis[1] |= 0x80;
                }
                let _ = mem.write_slice(&cfis, GuestAddress(table));
                let _ = mem.write_slice(&acmd, GuestAddress(table + 0x40));
                for i in 0..u64::from(prdtl) {
                    let e = table + 0x80 + i * 16;
                    let _ = mem.write_obj(0xc_0000 + i * 0x8000, GuestAddress(e));
                    let _ = mem.write_obj(prd_len & 0x3f_ffff, GuestAddress(e + 12));
                }
                let port = ABAR + 0x100 + p * 0x80;
                if cfis[2] == 0x60 || cfis[2] == 0x61 {
                    ahci.write(port + 0x34, &(1u32 << slot).to_le_bytes());
                }
                ahci.write(port + 0x38, &(1u32 << slot).to_le_bytes());
            }
            _ => {
                let Some(o) = input.byte() else { break };
                let Some(v) = input.bytes(width.min(2)) else {
                    break;
                };
                ahci.config_write(CONFIG[usize::from(o) % CONFIG.len()], &v);
            }
        }
    }
    assert_eq!(hd.refused() + ro.refused() + cd.refused(), 0);
    assert!(
        ro.bytes(0..512 * 20).iter().all(|&b| b == 0),
        "read-only disk written"
    );
});
