//! PCI: configuration spaces, configuration mechanism #1, the PC chipset
//! functions (i440FX host bridge, PIIX3 ISA bridge, PIIX4 power
//! management) and INTx routing through the PIIX3 PIRQ registers.

pub mod config;
pub mod i440fx;
pub mod irq_router;
pub mod piix3;
pub mod piix4_pm;
pub mod root;

pub use config::{BarKind, ConfigSpace};
pub use irq_router::{PciInterruptRouter, PciIntx};
pub use root::{PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN};

use crate::bus::BusDevice;

/// Which bus a region is decoded on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressSpace {
    Io,
    Mmio,
}

/// A range a PCI function currently decodes (a BAR, or a chipset register
/// block such as the PIIX4 PM base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciRegion {
    pub space: AddressSpace,
    pub base: u64,
    pub len: u64,
}

/// A device/function number on bus 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevFn {
    pub device: u8,
    pub function: u8,
}

impl DevFn {
    pub const fn new(device: u8, function: u8) -> Self {
        Self { device, function }
    }
}

/// A PCI function: a configuration space plus whatever it decodes on the
/// I/O and memory buses (delivered through [`BusDevice`]).
pub trait PciFunction: BusDevice {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// Reads the dword at `offset` (a multiple of 4).
    fn config_read(&mut self, offset: usize) -> u32 {
        self.config().read_u32(offset)
    }

    /// Writes `data` at byte `offset`, through the write masks.
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }

    /// The ranges decoded now. By default: the enabled BARs.
    fn regions(&self) -> Vec<PciRegion> {
        self.config().bar_regions()
    }
}
