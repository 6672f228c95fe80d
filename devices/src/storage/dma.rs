//! Scatter-gather access to guest memory for the storage controllers: a
//! list of (address, length) regions read from a bus-master PRD table or an
//! AHCI PRDT, addressed as one contiguous buffer.

use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;

/// Why a transfer between a device and host memory stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaFault {
    /// A descriptor points (partly) outside guest RAM.
    OutsideRam { addr: u64, len: u64 },
    /// The descriptors describe fewer bytes than the device moves.
    TableTooShort { described: u64 },
}

/// Host memory a transfer moves data through, addressed from byte 0 of
/// the described buffer.
pub trait DmaTarget {
    /// Bytes the descriptors cover in total.
    fn capacity(&self) -> u64;
    /// Copies device data into host memory at `offset` of the buffer.
    fn store(&mut self, offset: u64, data: &[u8]) -> Result<(), DmaFault>;
    /// Copies host memory at `offset` of the buffer into `data`.
    fn load(&mut self, offset: u64, data: &mut [u8]) -> Result<(), DmaFault>;
}

/// A scatter-gather list over guest memory.
pub struct SgList<'a> {
    mem: &'a GuestMemory,
    regions: Vec<(u64, u64)>,
    capacity: u64,
    /// Sequential-access cursor: region index and the buffer offset at
    /// which that region starts.
    cursor: (usize, u64),
}

impl<'a> SgList<'a> {
    pub fn new(mem: &'a GuestMemory) -> Self {
        Self {
            mem,
            regions: Vec::new(),
            capacity: 0,
            cursor: (0, 0),
        }
    }

    /// Appends a region; zero-length regions are dropped.
    pub fn push(&mut self, addr: u64, len: u64) {
        if len > 0 {
            self.regions.push((addr, len));
            self.capacity += len;
        }
    }

    pub fn regions(&self) -> &[(u64, u64)] {
        &self.regions
    }

    /// Walks `len` bytes from buffer offset `offset`, calling `f` with the
    /// guest address, the offset into the caller's data, and the length of
    /// each piece.
    fn walk(
        &mut self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&GuestMemory, u64, usize, usize) -> Result<(), DmaFault>,
    ) -> Result<(), DmaFault> {
        let end = offset.saturating_add(len as u64);
        if end > self.capacity {
            return Err(DmaFault::TableTooShort {
                described: self.capacity,
            });
        }
        if offset < self.cursor.1 {
            self.cursor = (0, 0);
        }
        let (mut idx, mut start) = self.cursor;
        let mut pos = offset;
        while pos < end {
            let Some(&(addr, rlen)) = self.regions.get(idx) else {
                return Err(DmaFault::TableTooShort {
                    described: self.capacity,
                });
            };
            if pos >= start + rlen {
                start += rlen;
                idx += 1;
                continue;
            }
            let within = pos - start;
            let n = (rlen - within).min(end - pos) as usize;
            let gpa = addr.wrapping_add(within);
            f(self.mem, gpa, (pos - offset) as usize, n)?;
            pos += n as u64;
            self.cursor = (idx, start);
        }
        Ok(())
    }
}

fn outside(addr: u64, len: usize) -> DmaFault {
    DmaFault::OutsideRam {
        addr,
        len: len as u64,
    }
}

impl DmaTarget for SgList<'_> {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn store(&mut self, offset: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.walk(offset, data.len(), |mem, gpa, at, n| {
            if gpa.checked_add(n as u64).is_none() {
                return Err(outside(gpa, n));
            }
            mem.write_slice(&data[at..at + n], GuestAddress(gpa))
                .map_err(|_| outside(gpa, n))
        })
    }

    fn load(&mut self, offset: u64, data: &mut [u8]) -> Result<(), DmaFault> {
        let len = data.len();
        self.walk(offset, len, |mem, gpa, at, n| {
            if gpa.checked_add(n as u64).is_none() {
                return Err(outside(gpa, n));
            }
            mem.read_slice(&mut data[at..at + n], GuestAddress(gpa))
                .map_err(|_| outside(gpa, n))
        })
    }
}

/// Reads a little-endian u32 from guest memory; `None` outside RAM.
pub fn read_u32(mem: &GuestMemory, addr: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    mem.read_slice(&mut b, GuestAddress(addr)).ok()?;
    Some(u32::from_le_bytes(b))
}

/// Reads `buf.len()` bytes from guest memory; false outside RAM.
pub fn read_bytes(mem: &GuestMemory, addr: u64, buf: &mut [u8]) -> bool {
    addr.checked_add(buf.len() as u64).is_some() && mem.read_slice(buf, GuestAddress(addr)).is_ok()
}

/// Writes `buf` to guest memory; false outside RAM.
pub fn write_bytes(mem: &GuestMemory, addr: u64, buf: &[u8]) -> bool {
    addr.checked_add(buf.len() as u64).is_some() && mem.write_slice(buf, GuestAddress(addr)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn scatters_and_gathers_across_regions() {
        let m = mem();
        let mut sg = SgList::new(&m);
        sg.push(0x1000, 3);
        sg.push(0x2000, 0);
        sg.push(0x3000, 5);
        assert_eq!(sg.capacity(), 8);
        sg.store(0, &[1, 2, 3, 4]).unwrap();
        sg.store(4, &[5, 6, 7, 8]).unwrap();
        let mut b = [0u8; 3];
        m.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(b, [1, 2, 3]);
        let mut b = [0u8; 5];
        m.read_slice(&mut b, GuestAddress(0x3000)).unwrap();
        assert_eq!(b, [4, 5, 6, 7, 8]);
        let mut all = [0u8; 8];
        sg.load(0, &mut all).unwrap();
        assert_eq!(all, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut tail = [0u8; 2];
        sg.load(2, &mut tail).unwrap();
        assert_eq!(tail, [3, 4]);
        assert_eq!(
            sg.store(6, &[0; 3]),
            Err(DmaFault::TableTooShort { described: 8 })
        );
    }

    #[test]
    fn regions_outside_ram_fault_without_panicking() {
        let m = mem();
        let mut sg = SgList::new(&m);
        sg.push(0xfff0, 0x20);
        sg.push(u64::MAX - 1, 4);
        assert!(matches!(
            sg.store(0, &[0; 0x20]),
            Err(DmaFault::OutsideRam { .. })
        ));
        let mut b = [0u8; 4];
        assert!(matches!(
            sg.load(0x20, &mut b),
            Err(DmaFault::OutsideRam { .. })
        ));
        assert!(!write_bytes(&m, u64::MAX, &[1, 2]));
        assert_eq!(read_u32(&m, 0x20000), None);
    }
}
