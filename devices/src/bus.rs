//! Address-range dispatch for port I/O and MMIO exits.
//!
//! A device is registered for one or more ranges; accesses are delivered
//! with the absolute address so a device can tell its registers apart
//! wherever it was placed. Ranges can move at run time (PCI BARs, the ACPI
//! PM base), so the map is behind a lock that is held only to look a device
//! up, never while the device runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// Something the guest can read and write at an address.
pub trait BusDevice: Send {
    /// Fills `data` with the value at `addr` (absolute bus address).
    fn read(&mut self, addr: u64, data: &mut [u8]);
    /// Accepts a write of `data` at `addr` (absolute bus address).
    fn write(&mut self, addr: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} is empty or wraps")]
    BadRange { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} overlaps one already registered")]
    Overlap { base: u64, len: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A bus: port I/O or MMIO.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.ranges.read().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::BadRange { base, len }),
        };
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&b, e)) = ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the range that starts at `base`, if any.
    pub fn remove(&self, base: u64) -> bool {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&base).is_some()
    }

    /// Removes every device. The PCI root holds the buses its BARs are
    /// mapped on while the buses hold it, so a machine that ends empties
    /// its buses to let its devices (and the disk images they hold, which
    /// close cleanly only when dropped) go.
    pub fn clear(&self) {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.clear();
    }

    fn find(&self, addr: u64, len: usize) -> Option<SharedDevice> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        let end = addr.checked_add(len as u64)?;
        if end <= base + entry.len {
            Some(entry.device.clone())
        } else {
            None
        }
    }

    /// Dispatches a read; returns false (and leaves `data` all-ones) when
    /// nothing is there, as an open PC bus reads.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some(dev) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(addr, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some(dev) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(addr, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Reg {
        fn read(&mut self, addr: u64, data: &mut [u8]) {
            data.fill(addr as u8);
        }
        fn write(&mut self, addr: u64, data: &[u8]) {
            self.last.push((addr, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_reads_ones_where_empty() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Reg { last: vec![] }));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [0xfd]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        // An access that straddles the end of a range is not delivered.
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w));
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().last, vec![(0x3f8, vec![0x41])]);
    }

    #[test]
    fn refuses_overlaps_and_moves_ranges() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Reg { last: vec![] }));
        bus.insert(0x600, 0x40, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0x63f, 1, dev.clone()),
            Err(BusError::Overlap {
                base: 0x63f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(0x5ff, 2, dev.clone()),
            Err(BusError::Overlap {
                base: 0x5ff,
                len: 2
            })
        );
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        assert!(bus.insert(0x10, 0, dev.clone()).is_err());
        bus.insert(0x640, 1, dev.clone()).unwrap();
        assert!(bus.remove(0x600));
        let mut b = [0u8; 1];
        assert!(!bus.read(0x604, &mut b));
        bus.insert(0xb000, 0x40, dev).unwrap();
        assert!(bus.read(0xb004, &mut b));
    }
}
