//! The VGA on the buses: the PCI function (BAR 0 linear framebuffer and
//! the expansion ROM holding the VGA BIOS), the legacy ports and the
//! A0000h memory window. All three share one [`Vga`].

use std::sync::{Arc, Mutex};

use super::vga_spec::*;
use super::{lock, Vga};
use crate::bus::BusDevice;
use crate::pci::config::REG_BAR0;
use crate::pci::{BarKind, ConfigSpace, PciFunction, PciRegion};
use crate::{le_value, put_le_value};

/// Told where BAR 0 (the linear framebuffer) decodes now, or that it
/// does not decode, whenever that changes; returns whether it mapped video
/// memory there for the guest to reach directly.
pub type LfbListener = Arc<dyn Fn(Option<u64>) -> bool + Send + Sync>;

/// PCI function 1234:1111.
pub struct VgaPci {
    cs: ConfigSpace,
    lfb_listener: Option<LfbListener>,
    vga: Arc<Mutex<Vga>>,
    /// The VGA BIOS the expansion ROM BAR shows (empty: no ROM BAR).
    rom: Vec<u8>,
}

impl VgaPci {
    /// `rom` is the option ROM image (`vgabios-stdvga.bin`); firmware
    /// finds it through the expansion ROM BAR, as on QEMU and on real
    /// cards.
    pub fn new(vga: Arc<Mutex<Vga>>, rom: Vec<u8>) -> Self {
        let mut cs = ConfigSpace::new(VENDOR_ID, DEVICE_ID, CLASS_VGA, REVISION);
        cs.set_subsystem(SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID);
        cs.add_bar(BAR_LFB, BarKind::Memory32, VRAM_SIZE as u64);
        // Prefetchable (the type bits are read-only).
        cs.set_u32(REG_BAR0 + 4 * BAR_LFB, BAR_PREFETCHABLE);
        if !rom.is_empty() {
            cs.add_rom(rom.len() as u64);
        }
        Self {
            cs,
            lfb_listener: None,
            vga,
            rom,
        }
    }

    /// Sets who maps the framebuffer as memory when the guest places BAR 0
    /// (the accesses that still reach the device are handled either way).
    pub fn set_lfb_listener(&mut self, listener: LfbListener) {
        self.lfb_listener = Some(listener);
    }

    fn lfb(&self) -> Option<PciRegion> {
        self.cs.bar_region(BAR_LFB)
    }
}

fn within(r: Option<PciRegion>, addr: u64) -> Option<u64> {
    r.filter(|r| addr >= r.base && addr - r.base < r.len)
        .map(|r| addr - r.base)
}

impl BusDevice for VgaPci {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(off) = within(self.lfb(), addr) {
            lock(&self.vga).lfb_read(off, data);
        } else if let Some(off) = within(self.cs.rom_region(), addr) {
            for (i, d) in data.iter_mut().enumerate() {
                let at = usize::try_from(off).unwrap_or(usize::MAX).saturating_add(i);
                // Past the image the ROM BAR reads as zeros.
                *d = self.rom.get(at).copied().unwrap_or(0);
            }
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        if let Some(off) = within(self.lfb(), addr) {
            lock(&self.vga).lfb_write(off, data);
        }
    }
}

impl PciFunction for VgaPci {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let before = self.lfb().map(|r| r.base);
        self.cs.write(offset, data);
        let after = self.lfb().map(|r| r.base);
        if before != after {
            if let Some(l) = &self.lfb_listener {
                let mapped = l(after);
                lock(&self.vga).set_lfb_mapped(mapped);
            }
        }
    }

    fn regions(&self) -> Vec<PciRegion> {
        let mut r = self.cs.bar_regions();
        r.extend(self.cs.rom_region());
        r
    }
}

/// The legacy I/O ports: 3B0h-3DFh and the DISPI index/data pair.
pub struct VgaPorts(pub Arc<Mutex<Vga>>);

impl VgaPorts {
    /// The ranges to register on the I/O bus.
    pub const RANGES: [(u64, u64); 2] = [(PORTS_BASE, PORTS_LEN), (PORT_DISPI_INDEX, 3)];
}

impl BusDevice for VgaPorts {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        let mut vga = lock(&self.0);
        match addr {
            PORT_DISPI_INDEX => put_le_value(data, u64::from(vga.dispi_read_index())),
            PORT_DISPI_DATA | 0x1d0 => put_le_value(data, u64::from(vga.dispi_read())),
            _ => {
                // A word access reads two consecutive registers.
                for (i, d) in data.iter_mut().enumerate() {
                    *d = vga.port_read(addr + i as u64);
                }
            }
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let mut vga = lock(&self.0);
        match addr {
            PORT_DISPI_INDEX => vga.dispi_write_index(le_value(data) as u16),
            PORT_DISPI_DATA | 0x1d0 => vga.dispi_write(le_value(data) as u16),
            _ => {
                // `out dx, ax` to an index port writes index then data.
                for (i, &b) in data.iter().enumerate() {
                    vga.port_write(addr + i as u64, b);
                }
            }
        }
        // The write may have switched chain-4, the map mask, the memory
        // map or the bank.
        vga.sync_window_alias();
    }
}

/// The memory window at A0000h-BFFFFh.
pub struct VgaLegacyWindow(pub Arc<Mutex<Vga>>);

impl BusDevice for VgaLegacyWindow {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        let mut vga = lock(&self.0);
        let base = addr.wrapping_sub(WINDOW_BASE);
        for (i, d) in data.iter_mut().enumerate() {
            *d = vga.window_read(base + i as u64);
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let mut vga = lock(&self.0);
        let base = addr.wrapping_sub(WINDOW_BASE);
        for (i, &b) in data.iter().enumerate() {
            vga.window_write(base + i as u64, b);
        }
    }
}
