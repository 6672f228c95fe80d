//! The PIIX3 UHCI controller under a random driver: each input is a
//! program of I/O register reads and writes (any width), dword writes into
//! a frame list, queue heads and TDs in guest memory (so schedule walking
//! is reached often, with loops, bad pointers and illegal tokens), port
//! resets, frames run and devices unplugged. A mass-storage disk and a
//! keyboard sit on the ports. No panic, every frame ends, and no request
//! reaches the disk outside its range.
#![no_main]

mod common;

use std::sync::Arc;

use common::Input;
use libfuzzer_sys::fuzz_target;
use rehost_devices::bus::BusDevice;
use rehost_devices::irq::RecordingIrq;
use rehost_devices::pci::PciFunction;
use rehost_devices::storage::testing::MemDisk;
use rehost_devices::usb::keyboard::{KeyboardHandle, UsbKeyboard};
use rehost_devices::usb::storage::UsbStorage;
use rehost_devices::usb::uhci::Uhci;
use rehost_devices::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 1 << 20;
const IO: u64 = 0xc000;
/// Frame list at 64 KiB; schedule structures in the 4 KiB after it.
const FRAME_LIST: u64 = 0x1_0000;
const STRUCTS: u64 = 0x1_1000;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let disk = Arc::new(MemDisk::patterned(512 * 64, |i| i as u8));
    let keys = KeyboardHandle::default();
    let mut uhci = Uhci::new(mem.clone(), RecordingIrq::new());
    uhci.config_write(0x20, &(IO as u32 | 1).to_le_bytes());
    uhci.config_write(0x04, &[0x05, 0]);
    let _ = uhci.attach(1, Box::new(UsbStorage::new(disk.clone(), false, "F")));
    let _ = uhci.attach(2, Box::new(UsbKeyboard::new(keys.clone())));
    // A usable start: frame list in place, ports enabled, running.
    uhci.write(IO + 8, &(FRAME_LIST as u32).to_le_bytes());
    for port in [0x10u64, 0x12] {
        uhci.write(IO + port, &0x0200u16.to_le_bytes());
        uhci.write(IO + port, &0u16.to_le_bytes());
        uhci.write(IO + port, &0x000eu16.to_le_bytes());
    }
    uhci.write(IO, &1u16.to_le_bytes());
    let mut input = Input(data);
    while let Some(op) = input.byte() {
        let width = [4usize, 2, 2, 1][usize::from(op >> 6)];
        match op & 7 {
            0 | 1 => {
                let Some(r) = input.byte() else { break };
                let Some(v) = input.bytes(width) else { break };
                uhci.write(IO + u64::from(r & 0x1f), &v);
            }
            2 => {
                let Some(r) = input.byte() else { break };
                let mut b = vec![0u8; width];
                uhci.read(IO + u64::from(r & 0x1f), &mut b);
            }
            3 | 4 => {
                // A dword of the schedule: frame list entry or structure.
                let Some(at) = input.byte() else { break };
                let Some(v) = input.u32() else { break };
                let addr = if op & 7 == 3 {
                    FRAME_LIST + 4 * u64::from(at)
                } else {
                    STRUCTS + 4 * u64::from(at)
                };
                let _ = mem.write_obj(v, GuestAddress(addr));
            }
            5 => {
                for _ in 0..=(op >> 3 & 7) {
                    uhci.run_frame();
                }
            }
            6 => {
                let Some(k) = input.byte() else { break };
                keys.key(k, op & 0x08 != 0);
            }
            _ => {
                let Some(p) = input.byte() else { break };
                let _ = uhci.detach(usize::from(p & 3));
            }
        }
    }
    assert_eq!(disk.refused(), 0, "a request outside the disk");
});
