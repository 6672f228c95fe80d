//! The ICH9 EHCI and its first UHCI companion under a random driver: each
//! input is a program of MMIO register reads and writes (any width, port
//! routing included), dword writes into a frame list, queue heads and
//! qTDs in guest memory (so both schedules are walked often, with loops,
//! bad pointers and odd tokens), frames run on both controllers, and
//! devices unplugged. A high-speed disk and a full-speed keyboard sit on
//! the shared ports. No panic, every frame ends, and no request reaches
//! the disk outside its range.
#![no_main]

mod common;

use std::sync::Arc;

use common::Input;
use libfuzzer_sys::fuzz_target;
use rehost_devices::bus::BusDevice;
use rehost_devices::irq::RecordingIrq;
use rehost_devices::pci::PciFunction;
use rehost_devices::storage::testing::MemDisk;
use rehost_devices::usb::ehci::Ehci;
use rehost_devices::usb::ehci_spec as spec;
use rehost_devices::usb::keyboard::{KeyboardHandle, UsbKeyboard};
use rehost_devices::usb::storage::UsbStorage;
use rehost_devices::usb::uhci::{Uhci, UhciIdentity};
use rehost_devices::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 1 << 20;
const MMIO: u64 = 0xfebf_0000;
const OP: u64 = MMIO + spec::CAP_LEN;
const UHCI_IO: u64 = 0xc000;
/// Frame list at 64 KiB; queue heads and qTDs in the 4 KiB after it.
const FRAME_LIST: u64 = 0x1_0000;
const STRUCTS: u64 = 0x1_1000;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let disk = Arc::new(MemDisk::patterned(512 * 64, |i| i as u8));
    let keys = KeyboardHandle::default();
    let mut ehci = Ehci::new(mem.clone(), RecordingIrq::new());
    ehci.config_write(0x10, &(MMIO as u32).to_le_bytes());
    ehci.config_write(0x04, &[0x06, 0]);
    let id = UhciIdentity {
        device_id: spec::DEVICE_ICH9_UHCI[0],
        revision: spec::REVISION,
        interrupt_pin: 1,
        multifunction: true,
    };
    let mut uhci = Uhci::companion(mem.clone(), RecordingIrq::new(), id, ehci.root_ports(), 0);
    uhci.config_write(0x20, &(UHCI_IO as u32 | 1).to_le_bytes());
    uhci.config_write(0x04, &[0x05, 0]);
    let _ = ehci.attach(1, Box::new(UsbStorage::new(disk.clone(), false, "F")));
    let _ = ehci.attach(2, Box::new(UsbKeyboard::new(keys.clone())));
    // A usable start: ports routed to the EHCI, schedules in place, the
    // disk's port reset, running.
    ehci.write(OP + spec::CONFIGFLAG, &1u32.to_le_bytes());
    ehci.write(OP + spec::PERIODICLISTBASE, &(FRAME_LIST as u32).to_le_bytes());
    ehci.write(OP + spec::ASYNCLISTADDR, &(STRUCTS as u32).to_le_bytes());
    ehci.write(OP + spec::PORTSC0, &spec::PORT_RESET.to_le_bytes());
    ehci.write(OP + spec::PORTSC0, &0u32.to_le_bytes());
    let cmd = spec::CMD_DEFAULT | spec::CMD_RS | spec::CMD_ASE | spec::CMD_PSE;
    ehci.write(OP + spec::USBCMD, &cmd.to_le_bytes());
    uhci.write(UHCI_IO + 8, &(FRAME_LIST as u32).to_le_bytes());
    uhci.write(UHCI_IO, &1u16.to_le_bytes());
    let mut input = Input(data);
    while let Some(op) = input.byte() {
        let width = [4usize, 2, 2, 1][usize::from(op >> 6)];
        match op & 7 {
            0 | 1 => {
                let Some(r) = input.byte() else { break };
                let Some(v) = input.bytes(width) else { break };
                ehci.write(MMIO + u64::from(r & 0x7f), &v);
            }
            2 => {
                let Some(r) = input.byte() else { break };
                let mut b = vec![0u8; width];
                ehci.read(MMIO + u64::from(r & 0x7f), &mut b);
                uhci.read(UHCI_IO + u64::from(r & 0x1f), &mut b);
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
                    ehci.run_frame();
                    ehci.walk_again();
                    uhci.run_frame();
                }
            }
            6 => {
                let Some(k) = input.byte() else { break };
                keys.key(k, op & 0x08 != 0);
            }
            _ => {
                let Some(p) = input.byte() else { break };
                let _ = ehci.detach(usize::from(p & 7));
            }
        }
    }
    assert_eq!(disk.refused(), 0, "a request outside the disk");
});
