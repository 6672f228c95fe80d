//! The xHCI controller under a random driver: each input is a program of
//! MMIO reads and writes (any width) to the capability, operational,
//! port, runtime and doorbell registers, dwords written into the command
//! ring, transfer rings, contexts and the event ring segment table in
//! guest memory (so ring walking is reached often, with Link loops, bad
//! pointers, malformed TDs and commands in every slot state), polls, key
//! presses and devices unplugged and plugged again. A mass-storage disk
//! and a keyboard sit on USB 2 ports. No panic, every doorbell and poll
//! returns, and no request reaches the disk outside its range.
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
use rehost_devices::usb::xhci::Xhci;
use rehost_devices::usb::xhci_spec as spec;
use rehost_devices::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 1 << 20;
const BAR: u64 = 0xfeb0_0000;
/// DCBAA, rings, contexts and the ERST live in the 64 KiB from here.
const STRUCTS: u64 = 0x1_0000;
const CMD_RING: u64 = STRUCTS + 0x1000;
const ERST: u64 = STRUCTS + 0x2000;
const EVENT_RING: u64 = STRUCTS + 0x3000;

fn w(x: &mut Xhci, off: u64, v: &[u8]) {
    x.write(BAR + off, v);
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let disk = Arc::new(MemDisk::patterned(512 * 64, |i| i as u8));
    let keys = KeyboardHandle::default();
    let mut x = Xhci::new(mem.clone(), RecordingIrq::new());
    x.config_write(0x10, &(BAR as u32 | 4).to_le_bytes());
    x.config_write(0x04, &[0x06, 0]);
    let storage = || Box::new(UsbStorage::new(disk.clone(), false, "F"));
    let _ = x.attach(1, storage());
    let _ = x.attach(2, Box::new(UsbKeyboard::new(keys.clone())));
    // A usable start: DCBAA, command ring, one event ring segment, ports
    // reset, running.
    let op = spec::OP_BASE;
    let ir = spec::RUNTIME_BASE + spec::IR0_BASE;
    w(&mut x, op + spec::DCBAAP, &STRUCTS.to_le_bytes());
    w(&mut x, op + spec::CRCR, &(CMD_RING | 1).to_le_bytes());
    let _ = mem.write_obj(EVENT_RING, GuestAddress(ERST));
    let _ = mem.write_obj(16u32, GuestAddress(ERST + 8));
    w(&mut x, ir + spec::ERSTSZ, &1u32.to_le_bytes());
    w(&mut x, ir + spec::ERDP, &EVENT_RING.to_le_bytes());
    w(&mut x, ir + spec::ERSTBA, &ERST.to_le_bytes());
    for port in 0..2u64 {
        w(
            &mut x,
            spec::PORT_BASE + spec::PORT_STRIDE * port,
            &spec::PORT_PR.to_le_bytes(),
        );
    }
    w(&mut x, op + spec::USBCMD, &spec::CMD_RS.to_le_bytes());
    let mut input = Input(data);
    while let Some(opcode) = input.byte() {
        let width = [4usize, 8, 2, 1][usize::from(opcode >> 6)];
        match opcode & 7 {
            0 => {
                // A register write, offsets spread over the register file.
                let Some(r) = input.bytes(2) else { break };
                let off = u64::from(u16::from_le_bytes([r[0], r[1]])) % spec::MMIO_LEN;
                let Some(v) = input.bytes(width) else { break };
                w(&mut x, off & !(width as u64 - 1), &v);
            }
            1 => {
                let Some(r) = input.bytes(2) else { break };
                let off = u64::from(u16::from_le_bytes([r[0], r[1]])) % spec::MMIO_LEN;
                let mut b = vec![0u8; width];
                x.read(BAR + off, &mut b);
            }
            2 | 3 => {
                // A dword of the structures: rings, contexts, ERST.
                let Some(at) = input.bytes(2) else { break };
                let Some(v) = input.u32() else { break };
                let off = u64::from(u16::from_le_bytes([at[0], at[1]])) & 0x3fff;
                let _ = mem.write_obj(v, GuestAddress(STRUCTS + 4 * off));
            }
            4 => {
                // A doorbell: the command ring or an endpoint.
                let Some(slot) = input.byte() else { break };
                let Some(target) = input.byte() else { break };
                let off = spec::DOORBELL_BASE + 4 * u64::from(slot % (spec::MAX_SLOTS as u8 + 1));
                w(&mut x, off, &u32::from(target & 0x1f).to_le_bytes());
            }
            5 => {
                for _ in 0..=(opcode >> 3 & 7) {
                    x.poll();
                }
            }
            6 => {
                let Some(k) = input.byte() else { break };
                keys.key(k, opcode & 0x08 != 0);
            }
            _ => {
                let Some(p) = input.byte() else { break };
                let port = usize::from(p % 9);
                if x.detach(port).is_err() && port == 1 {
                    let _ = x.attach(port, storage());
                }
            }
        }
    }
    assert_eq!(disk.refused(), 0, "a request outside the disk");
});
