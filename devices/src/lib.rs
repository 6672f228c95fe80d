//! rehost device models: everything the guest can touch.
//!
//! Devices reach guest memory through `vm-memory` and raise interrupts
//! through [`irq::IrqLine`], so each can be unit-tested by a test that plays
//! the guest driver, without KVM.

pub mod bus;
pub mod display;
pub mod events;
pub mod irq;
pub mod legacy;
pub mod pci;
pub mod serial;
pub mod storage;
pub mod usb;

/// Guest memory as devices see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Reads a little-endian value of `data.len()` (1, 2, 4 or 8) bytes.
pub fn le_value(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    let n = data.len().min(8);
    v[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(v)
}

/// Fills `data` with the low `data.len()` bytes of `value`, little-endian.
pub fn put_le_value(data: &mut [u8], value: u64) {
    let bytes = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = if i < 8 { bytes[i] } else { 0 };
    }
}
