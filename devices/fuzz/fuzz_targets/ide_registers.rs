//! The PIIX3 IDE function under a random driver: each input is a program of
//! port reads and writes (command blocks, device control, bus master),
//! guest memory writes (for PRD tables), PCI configuration writes and
//! whole-sector data port transfers. No panic; no request ever reaches a
//! disk outside its range.
#![no_main]

mod common;

use std::sync::Arc;

use common::{ident, Input};
use libfuzzer_sys::fuzz_target;
use rehost_devices::bus::BusDevice;
use rehost_devices::irq::{IrqLine, RecordingIrq};
use rehost_devices::pci::PciFunction;
use rehost_devices::storage::ata::{AtaDevice, Link};
use rehost_devices::storage::ide::PiixIde;
use rehost_devices::storage::testing::MemDisk;
use rehost_devices::GuestMemory;
use rehost_disk::BlockDevice;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 1 << 20;
const BM: u64 = 0xc000;
const PORTS: [u64; 24] = [
    0x1f0,
    0x1f1,
    0x1f2,
    0x1f3,
    0x1f4,
    0x1f5,
    0x1f6,
    0x1f7,
    0x3f6,
    0x170,
    0x171,
    0x172,
    0x173,
    0x174,
    0x175,
    0x176,
    0x177,
    0x376,
    BM,
    BM + 2,
    BM + 4,
    BM + 8,
    BM + 10,
    BM + 12,
];
const CONFIG: [usize; 7] = [0x04, 0x20, 0x40, 0x41, 0x42, 0x43, 0x44];

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let hd = Arc::new(MemDisk::patterned(512 * 300, |i| i as u8));
    let ro = Arc::new(MemDisk::new(512 * 20));
    let cd = Arc::new(MemDisk::patterned(2048 * 20, |i| (i >> 11) as u8));
    let irqs = [RecordingIrq::new(), RecordingIrq::new()];
    let mut ide = PiixIde::new(
        mem.clone(),
        [
            [
                Some(AtaDevice::disk(hd.clone(), false, Link::Parallel, ident())),
                Some(AtaDevice::disk(ro.clone(), true, Link::Parallel, ident())),
            ],
            [
                Some(AtaDevice::cdrom(
                    Some(cd.clone() as Arc<dyn BlockDevice>),
                    Link::Parallel,
                    ident(),
                )),
                None,
            ],
        ],
        [irqs[0].clone() as Arc<dyn IrqLine>, irqs[1].clone()],
    );
    ide.config_write(0x40, &0x8000u16.to_le_bytes());
    ide.config_write(0x42, &0x8000u16.to_le_bytes());
    ide.config_write(0x20, &(BM as u32 | 1).to_le_bytes());
    ide.config_write(0x04, &[0x05, 0]);
    let mut input = Input(data);
    while let Some(op) = input.byte() {
        let width = [1usize, 2, 4, 2][usize::from(op >> 6)];
        match op & 7 {
            0..=2 => {
                let Some(p) = input.byte() else { break };
                let Some(v) = input.bytes(width) else { break };
                ide.write(PORTS[usize::from(p) % PORTS.len()], &v);
            }
            3 | 4 => {
                let Some(p) = input.byte() else { break };
                let mut b = vec![0u8; width];
                ide.read(PORTS[usize::from(p) % PORTS.len()], &mut b);
            }
            5 => {
                // Guest memory: 8 bytes at an address (sometimes past RAM).
                let Some(a) = input.bytes(3) else { break };
                let Some(v) = input.bytes(8) else { break };
                let addr = (u64::from(a[0]) | u64::from(a[1]) << 8 | u64::from(a[2]) << 16)
                    % (RAM + 0x1_0000);
                let _ = mem.write_slice(&v, GuestAddress(addr & !7));
            }
            6 => {
                let Some(o) = input.byte() else { break };
                let Some(v) = input.bytes(width) else { break };
                ide.config_write(CONFIG[usize::from(o) % CONFIG.len()], &v);
            }
            _ => {
                // A whole sector through a channel's data port.
                let Some(c) = input.byte() else { break };
                let port = if c & 1 == 0 { 0x1f0 } else { 0x170 };
                let mut w = [0u8; 2];
                for _ in 0..256 {
                    if c & 2 == 0 {
                        ide.read(port, &mut w);
                    } else {
                        ide.write(port, &[c, c]);
                    }
                }
            }
        }
    }
    assert_eq!(hd.refused() + ro.refused() + cd.refused(), 0);
    assert!(
        ro.bytes(0..512 * 20).iter().all(|&b| b == 0),
        "read-only disk written"
    );
});
