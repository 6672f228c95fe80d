//! A PCI type-0 configuration space with per-byte write masks (PCI Local
//! Bus Specification 3.0, chapter 6).

use super::{AddressSpace, PciRegion};

pub const REG_VENDOR_ID: usize = 0x00;
pub const REG_DEVICE_ID: usize = 0x02;
pub const REG_COMMAND: usize = 0x04;
pub const REG_STATUS: usize = 0x06;
pub const REG_REVISION: usize = 0x08;
pub const REG_CLASS_PROG: usize = 0x09;
pub const REG_HEADER_TYPE: usize = 0x0e;
pub const REG_BAR0: usize = 0x10;
pub const REG_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const REG_SUBSYSTEM_ID: usize = 0x2e;
/// Expansion ROM base address: bit 0 enables decoding, bits 31-11 the
/// address (PCI 3.0 section 6.2.5.2).
pub const REG_ROM_ADDRESS: usize = 0x30;
pub const ROM_ENABLE: u32 = 0x1;
pub const REG_CAPABILITIES: usize = 0x34;
pub const REG_INTERRUPT_LINE: usize = 0x3c;
pub const REG_INTERRUPT_PIN: usize = 0x3d;

pub const COMMAND_IO: u16 = 0x0001;
pub const COMMAND_MEMORY: u16 = 0x0002;
pub const COMMAND_BUS_MASTER: u16 = 0x0004;
pub const COMMAND_INTX_DISABLE: u16 = 0x0400;
pub const STATUS_INTERRUPT: u16 = 0x0008;
pub const STATUS_CAPABILITIES: u16 = 0x0010;

/// MSI capability layout (PCI 3.0 section 6.8.1), offsets from its start.
pub const CAP_ID_MSI: u8 = 0x05;
pub const MSI_CONTROL: usize = 2;
pub const MSI_ADDRESS: usize = 4;
pub const MSI_ADDRESS_HI: usize = 8;
pub const MSI_DATA: usize = 12;
pub const MSI_CONTROL_ENABLE: u16 = 0x0001;
pub const MSI_CONTROL_64BIT: u16 = 0x0080;

/// What a base address register decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory32,
    /// A 64-bit memory BAR: this register and the next hold the address.
    Memory64,
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    kind: BarKind,
    size: u64,
}

#[derive(Clone)]
pub struct ConfigSpace {
    data: [u8; 256],
    wmask: [u8; 256],
    bars: [Option<Bar>; 6],
    rom_size: Option<u64>,
    /// Where the MSI capability is, if there is one.
    msi: Option<usize>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConfigSpace({:04x}:{:04x})",
            self.read_u16(REG_VENDOR_ID),
            self.read_u16(REG_DEVICE_ID)
        )
    }
}

impl ConfigSpace {
    /// A type-0 header. `class` is base class, subclass and programming
    /// interface as 0xBBSSPP.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut cs = Self {
            data: [0; 256],
            wmask: [0; 256],
            bars: [None; 6],
            rom_size: None,
            msi: None,
        };
        cs.set_u16(REG_VENDOR_ID, vendor);
        cs.set_u16(REG_DEVICE_ID, device);
        cs.set_u8(REG_REVISION, revision);
        cs.set_u8(REG_CLASS_PROG, class as u8);
        cs.set_u8(REG_CLASS_PROG + 1, (class >> 8) as u8);
        cs.set_u8(REG_CLASS_PROG + 2, (class >> 16) as u8);
        // I/O, memory and bus-master enables, SERR, INTx disable.
        cs.set_wmask_u16(REG_COMMAND, 0x0547);
        cs.set_wmask_u8(REG_INTERRUPT_LINE, 0xff);
        cs
    }

    pub fn set_u8(&mut self, off: usize, v: u8) {
        if let Some(b) = self.data.get_mut(off) {
            *b = v;
        }
    }

    pub fn set_u16(&mut self, off: usize, v: u16) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set_u8(off + i, b);
        }
    }

    pub fn set_u32(&mut self, off: usize, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set_u8(off + i, b);
        }
    }

    pub fn set_wmask_u8(&mut self, off: usize, m: u8) {
        if let Some(b) = self.wmask.get_mut(off) {
            *b = m;
        }
    }

    pub fn set_wmask_u16(&mut self, off: usize, m: u16) {
        for (i, b) in m.to_le_bytes().into_iter().enumerate() {
            self.set_wmask_u8(off + i, b);
        }
    }

    pub fn set_wmask_u32(&mut self, off: usize, m: u32) {
        for (i, b) in m.to_le_bytes().into_iter().enumerate() {
            self.set_wmask_u8(off + i, b);
        }
    }

    pub fn read_u8(&self, off: usize) -> u8 {
        self.data.get(off).copied().unwrap_or(0xff)
    }

    pub fn read_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.read_u8(off), self.read_u8(off + 1)])
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.read_u8(off),
            self.read_u8(off + 1),
            self.read_u8(off + 2),
            self.read_u8(off + 3),
        ])
    }

    /// A guest write: only bits set in the write mask change.
    pub fn write(&mut self, off: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let o = off + i;
            if o < 256 {
                let m = self.wmask[o];
                self.data[o] = (self.data[o] & !m) | (v & m);
            }
        }
    }

    pub fn set_header_multifunction(&mut self) {
        self.data[REG_HEADER_TYPE] |= 0x80;
    }

    pub fn set_subsystem(&mut self, vendor: u16, id: u16) {
        self.set_u16(REG_SUBSYSTEM_VENDOR_ID, vendor);
        self.set_u16(REG_SUBSYSTEM_ID, id);
    }

    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.set_u8(REG_INTERRUPT_PIN, pin);
    }

    /// Declares BAR `index` of `size` bytes (a power of two; at least 4 for
    /// I/O and 16 for memory).
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) {
        let Some(slot) = self.bars.get_mut(index) else {
            return;
        };
        let size = size
            .max(if kind == BarKind::Io { 4 } else { 16 })
            .next_power_of_two();
        *slot = Some(Bar { kind, size });
        let off = REG_BAR0 + 4 * index;
        let type_bits = match kind {
            BarKind::Io => 0x1u32,
            BarKind::Memory32 => 0x0u32,
            BarKind::Memory64 => 0x4u32,
        };
        // Address bits below the size are hard-wired to zero, as are the
        // type bits, which is how firmware sizes a BAR.
        let mask = !(size as u32).wrapping_sub(1) & if kind == BarKind::Io { !0x3 } else { !0xf };
        self.set_u32(off, type_bits);
        self.set_wmask_u32(off, mask);
        if kind == BarKind::Memory64 {
            self.set_u32(off + 4, 0);
            self.set_wmask_u32(off + 4, 0xffff_ffff);
        }
    }

    /// Declares an MSI capability (PCI 3.0 section 6.8.1) at `offset` as
    /// the only capability: 64-bit address, one message.
    pub fn add_msi_capability(&mut self, offset: usize) {
        self.msi = Some(offset);
        self.set_u16(REG_STATUS, self.read_u16(REG_STATUS) | STATUS_CAPABILITIES);
        self.set_u8(REG_CAPABILITIES, offset as u8);
        self.set_u8(offset, CAP_ID_MSI);
        self.set_u8(offset + 1, 0);
        self.set_u16(offset + MSI_CONTROL, MSI_CONTROL_64BIT);
        // Enable and the multiple message enable field.
        self.set_wmask_u16(offset + MSI_CONTROL, 0x0071);
        self.set_wmask_u32(offset + MSI_ADDRESS, 0xffff_fffc);
        self.set_wmask_u32(offset + MSI_ADDRESS_HI, 0xffff_ffff);
        self.set_wmask_u16(offset + MSI_DATA, 0xffff);
    }

    /// The message (address, data) to send while software has MSI enabled.
    pub fn msi_message(&self) -> Option<(u64, u32)> {
        let at = self.msi?;
        if self.read_u16(at + MSI_CONTROL) & MSI_CONTROL_ENABLE == 0 {
            return None;
        }
        let addr = u64::from(self.read_u32(at + MSI_ADDRESS))
            | u64::from(self.read_u32(at + MSI_ADDRESS_HI)) << 32;
        Some((addr, u32::from(self.read_u16(at + MSI_DATA))))
    }

    pub fn command(&self) -> u16 {
        self.read_u16(REG_COMMAND)
    }

    /// Where BAR `index` decodes now, if it is declared, its space is
    /// enabled in the command register and it is not at address 0.
    pub fn bar_region(&self, index: usize) -> Option<PciRegion> {
        let bar = (*self.bars.get(index)?)?;
        let raw = self.read_u32(REG_BAR0 + 4 * index);
        let (space, base, enabled) = match bar.kind {
            BarKind::Io => (
                AddressSpace::Io,
                u64::from(raw & 0xffff_fffc),
                self.command() & COMMAND_IO != 0,
            ),
            BarKind::Memory32 => (
                AddressSpace::Mmio,
                u64::from(raw & 0xffff_fff0),
                self.command() & COMMAND_MEMORY != 0,
            ),
            BarKind::Memory64 => (
                AddressSpace::Mmio,
                u64::from(raw & 0xffff_fff0)
                    | u64::from(self.read_u32(REG_BAR0 + 4 * index + 4)) << 32,
                self.command() & COMMAND_MEMORY != 0,
            ),
        };
        // I/O BARs above 64 KiB cannot be reached.
        let in_range = space == AddressSpace::Mmio || base + bar.size <= 0x1_0000;
        (enabled && base != 0 && in_range).then_some(PciRegion {
            space,
            base,
            len: bar.size,
        })
    }

    /// Declares an expansion ROM of `size` bytes (rounded up to a power of
    /// two, at least 2 KiB).
    pub fn add_rom(&mut self, size: u64) {
        let size = size.max(0x800).next_power_of_two();
        self.rom_size = Some(size);
        let mask = !(size as u32).wrapping_sub(1) | ROM_ENABLE;
        self.set_u32(REG_ROM_ADDRESS, 0);
        self.set_wmask_u32(REG_ROM_ADDRESS, mask);
    }

    /// Where the expansion ROM decodes now: declared, enabled both in its
    /// own register and in the command register's memory space bit, and
    /// not at address 0.
    pub fn rom_region(&self) -> Option<PciRegion> {
        let size = self.rom_size?;
        let raw = self.read_u32(REG_ROM_ADDRESS);
        let base = u64::from(raw & !0x7ff);
        let enabled = raw & ROM_ENABLE != 0 && self.command() & COMMAND_MEMORY != 0;
        (enabled && base != 0).then_some(PciRegion {
            space: AddressSpace::Mmio,
            base,
            len: size,
        })
    }

    pub fn bar_regions(&self) -> Vec<PciRegion> {
        (0..6).filter_map(|i| self.bar_region(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_sizing_and_decoding() {
        let mut cs = ConfigSpace::new(0x8086, 0x7010, 0x01_01_80, 0);
        cs.add_bar(4, BarKind::Io, 16);
        cs.add_bar(5, BarKind::Memory32, 0x1000);
        // Sizing: write all ones, read back the size mask.
        cs.write(0x20, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(cs.read_u32(0x20), 0xffff_fff1);
        cs.write(0x24, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(cs.read_u32(0x24), 0xffff_f000);
        cs.write(0x20, &0xc041u32.to_le_bytes());
        cs.write(0x24, &0xfebf_1000u32.to_le_bytes());
        assert_eq!(cs.bar_regions(), vec![]);
        cs.write(REG_COMMAND, &(COMMAND_IO | COMMAND_MEMORY).to_le_bytes());
        assert_eq!(
            cs.bar_regions(),
            vec![
                PciRegion {
                    space: AddressSpace::Io,
                    base: 0xc040,
                    len: 16
                },
                PciRegion {
                    space: AddressSpace::Mmio,
                    base: 0xfebf_1000,
                    len: 0x1000
                }
            ]
        );
        // IDs and class are read-only.
        cs.write(0, &[0, 0, 0, 0]);
        assert_eq!(cs.read_u32(0), 0x7010_8086);
        assert_eq!(cs.read_u32(0x08) >> 8, 0x01_01_80);
        // Undeclared BARs read as zero whatever is written.
        cs.write(0x10, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(cs.read_u32(0x10), 0);
        assert_eq!(cs.read_u8(300), 0xff);
    }

    #[test]
    fn memory64_bars_size_and_decode_across_both_registers() {
        let mut cs = ConfigSpace::new(0x1b36, 0x000d, 0x0c_03_30, 1);
        cs.add_bar(0, BarKind::Memory64, 0x4000);
        cs.write(0x10, &0xffff_ffffu32.to_le_bytes());
        cs.write(0x14, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(cs.read_u32(0x10), 0xffff_c004, "size mask, 64-bit type");
        assert_eq!(cs.read_u32(0x14), 0xffff_ffff);
        cs.write(0x10, &0xfebf_c000u32.to_le_bytes());
        cs.write(0x14, &1u32.to_le_bytes());
        cs.write(REG_COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(
            cs.bar_regions(),
            vec![PciRegion {
                space: AddressSpace::Mmio,
                base: 0x1_febf_c000,
                len: 0x4000
            }]
        );
    }

    #[test]
    fn msi_capability_gives_its_message_only_when_enabled() {
        let mut cs = ConfigSpace::new(0x1b36, 0x000d, 0x0c_03_30, 1);
        cs.add_msi_capability(0x80);
        assert_ne!(cs.read_u16(REG_STATUS) & STATUS_CAPABILITIES, 0);
        assert_eq!(cs.read_u8(REG_CAPABILITIES), 0x80);
        assert_eq!(cs.read_u8(0x80), CAP_ID_MSI);
        cs.write(0x84, &0xfee0_1000u32.to_le_bytes());
        cs.write(0x8c, &0x41u16.to_le_bytes());
        assert_eq!(cs.msi_message(), None);
        cs.write(0x82, &MSI_CONTROL_ENABLE.to_le_bytes());
        assert_eq!(cs.msi_message(), Some((0xfee0_1000, 0x41)));
        // 64-bit capable, read-only.
        assert_ne!(cs.read_u16(0x82) & MSI_CONTROL_64BIT, 0);
    }

    #[test]
    fn expansion_rom_sizes_and_decodes_only_when_enabled() {
        let mut cs = ConfigSpace::new(0x1234, 0x1111, 0x03_00_00, 2);
        cs.add_rom(40 * 1024);
        cs.write(REG_ROM_ADDRESS, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(cs.read_u32(REG_ROM_ADDRESS), 0xffff_0000, "64 KiB");
        cs.write(REG_ROM_ADDRESS, &0xfebe_0000u32.to_le_bytes());
        cs.write(REG_COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(cs.rom_region(), None, "enable bit clear");
        cs.write(REG_ROM_ADDRESS, &0xfebe_0001u32.to_le_bytes());
        assert_eq!(
            cs.rom_region(),
            Some(PciRegion {
                space: AddressSpace::Mmio,
                base: 0xfebe_0000,
                len: 0x1_0000
            })
        );
        cs.write(REG_COMMAND, &[0, 0]);
        assert_eq!(cs.rom_region(), None, "memory space disabled");
    }
}
