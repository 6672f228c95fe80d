//! PCI configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF data)
//! over bus 0, and the PIIX3 reset control register that shares the port
//! range (0xCF9, byte access).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{AddressSpace, DevFn, PciFunction, PciRegion};
use crate::bus::{Bus, BusDevice, SharedDevice};
use crate::events::{MachineEvents, MachineRequest};

pub const PCI_CONFIG_PORT: u64 = 0xcf8;
pub const PCI_CONFIG_PORT_LEN: u64 = 8;
const RESET_CONTROL_PORT: u64 = 0xcf9;
const CONFIG_DATA_PORT: u64 = 0xcfc;

/// PIIX3 reset control register bits.
const RCR_SYSTEM_RESET: u8 = 0x02;
const RCR_RESET_CPU: u8 = 0x04;

struct Slot {
    function: Arc<Mutex<dyn PciFunction>>,
    on_bus: SharedDevice,
    mapped: Vec<PciRegion>,
}

pub struct PciRoot {
    address: u32,
    reset_control: u8,
    slots: BTreeMap<DevFn, Slot>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    events: Arc<MachineEvents>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI slot {0:02x}.{1} is already taken")]
    SlotTaken(u8, u8),
    #[error("PCI device number {0} or function {1} out of range")]
    BadDevFn(u8, u8),
}

impl PciRoot {
    pub fn new(io_bus: Arc<Bus>, mmio_bus: Arc<Bus>, events: Arc<MachineEvents>) -> Self {
        Self {
            address: 0,
            reset_control: 0,
            slots: BTreeMap::new(),
            io_bus,
            mmio_bus,
            events,
        }
    }

    /// Plugs a function into bus 0 and maps whatever it decodes already.
    pub fn add<T: PciFunction + 'static>(
        &mut self,
        at: DevFn,
        function: Arc<Mutex<T>>,
    ) -> Result<(), PciError> {
        if at.device >= 32 || at.function >= 8 {
            return Err(PciError::BadDevFn(at.device, at.function));
        }
        if self.slots.contains_key(&at) {
            return Err(PciError::SlotTaken(at.device, at.function));
        }
        let on_bus: SharedDevice = function.clone();
        self.slots.insert(
            at,
            Slot {
                function,
                on_bus,
                mapped: Vec::new(),
            },
        );
        self.remap(at);
        Ok(())
    }

    fn bus(&self, space: AddressSpace) -> &Bus {
        match space {
            AddressSpace::Io => &self.io_bus,
            AddressSpace::Mmio => &self.mmio_bus,
        }
    }

    /// Brings the buses in line with what the function decodes now.
    fn remap(&mut self, at: DevFn) {
        let Some(slot) = self.slots.get(&at) else {
            return;
        };
        let wanted = slot
            .function
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .regions();
        if wanted == slot.mapped {
            return;
        }
        let old = slot.mapped.clone();
        let dev = slot.on_bus.clone();
        for r in &old {
            self.bus(r.space).remove(r.base);
        }
        let mut mapped = Vec::new();
        for r in wanted {
            match self.bus(r.space).insert(r.base, r.len, dev.clone()) {
                Ok(()) => mapped.push(r),
                Err(e) => tracing::warn!(
                    device = at.device,
                    function = at.function,
                    "PCI: cannot map {:?} region at {:#x}: {e}",
                    r.space,
                    r.base
                ),
            }
        }
        if let Some(slot) = self.slots.get_mut(&at) {
            slot.mapped = mapped;
        }
    }

    /// Decodes the latched address: enabled, bus 0, an existing function.
    fn target(&self) -> Option<(DevFn, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let at = DevFn::new(((a >> 11) & 0x1f) as u8, ((a >> 8) & 0x7) as u8);
        self.slots
            .contains_key(&at)
            .then_some((at, (a & 0xfc) as usize))
    }

    /// Reads a configuration dword, as if through mechanism #1.
    pub fn config_read(&self, at: DevFn, offset: usize) -> u32 {
        match self.slots.get(&at) {
            Some(slot) => slot
                .function
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(offset & 0xfc),
            None => 0xffff_ffff,
        }
    }

    /// Writes configuration bytes and remaps the function if it moved.
    pub fn config_write(&mut self, at: DevFn, offset: usize, data: &[u8]) {
        let Some(slot) = self.slots.get(&at) else {
            return;
        };
        slot.function
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(offset, data);
        self.remap(at);
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0xff);
        match addr {
            PCI_CONFIG_PORT if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            RESET_CONTROL_PORT if data.len() == 1 => data[0] = self.reset_control,
            a if (CONFIG_DATA_PORT..CONFIG_DATA_PORT + 4).contains(&a) => {
                let byte = (a - CONFIG_DATA_PORT) as usize;
                if let Some((at, reg)) = self.target() {
                    let v = self.config_read(at, reg).to_le_bytes();
                    for (i, d) in data.iter_mut().enumerate() {
                        *d = v.get(byte + i).copied().unwrap_or(0xff);
                    }
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        match addr {
            PCI_CONFIG_PORT if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            RESET_CONTROL_PORT if data.len() == 1 => {
                let v = data[0];
                if v & RCR_RESET_CPU != 0 && self.reset_control & RCR_RESET_CPU == 0 {
                    tracing::debug!(hard = v & RCR_SYSTEM_RESET != 0, "PIIX3 reset control");
                    self.events.request(MachineRequest::Reset);
                }
                self.reset_control = v & RCR_SYSTEM_RESET;
            }
            a if (CONFIG_DATA_PORT..CONFIG_DATA_PORT + 4).contains(&a) => {
                if let Some((at, reg)) = self.target() {
                    let byte = (a - CONFIG_DATA_PORT) as usize;
                    let len = data.len().min(4 - byte);
                    self.config_write(at, reg + byte, &data[..len]);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{BarKind, ConfigSpace};

    struct Dev {
        cs: ConfigSpace,
        hits: Vec<u64>,
    }
    impl BusDevice for Dev {
        fn read(&mut self, addr: u64, data: &mut [u8]) {
            self.hits.push(addr);
            data.fill(0x5a);
        }
        fn write(&mut self, addr: u64, _data: &[u8]) {
            self.hits.push(addr);
        }
    }
    impl PciFunction for Dev {
        fn config(&self) -> &ConfigSpace {
            &self.cs
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.cs
        }
    }

    fn cfg_addr(dev: u8, func: u8, reg: u8) -> [u8; 4] {
        (0x8000_0000u32 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg))
            .to_le_bytes()
    }

    fn setup() -> (PciRoot, Arc<Bus>, Arc<Mutex<Dev>>, Arc<MachineEvents>) {
        let io = Arc::new(Bus::new());
        let ev = Arc::new(MachineEvents::new().unwrap());
        let mut root = PciRoot::new(io.clone(), Arc::new(Bus::new()), ev.clone());
        let mut cs = ConfigSpace::new(0x1234, 0x5678, 0x01_01_00, 1);
        cs.add_bar(0, BarKind::Io, 8);
        let dev = Arc::new(Mutex::new(Dev { cs, hits: vec![] }));
        root.add(DevFn::new(3, 0), dev.clone()).unwrap();
        (root, io, dev, ev)
    }

    #[test]
    fn mechanism1_reads_ids_and_absent_functions_read_ones() {
        let (mut root, _, _, _) = setup();
        root.write(0xcf8, &cfg_addr(3, 0, 0));
        let mut d = [0u8; 4];
        root.read(0xcfc, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x5678_1234);
        // Word read of the device ID through 0xCFE.
        let mut w = [0u8; 2];
        root.read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x5678);
        root.write(0xcf8, &cfg_addr(4, 0, 0));
        root.read(0xcfc, &mut d);
        assert_eq!(d, [0xff; 4]);
        // The enable bit is required.
        root.write(0xcf8, &(3u32 << 11).to_le_bytes());
        root.read(0xcfc, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert!(root
            .add(
                DevFn::new(3, 0),
                Arc::new(Mutex::new(Dev {
                    cs: ConfigSpace::new(1, 2, 0, 0),
                    hits: vec![]
                }))
            )
            .is_err());
    }

    #[test]
    fn bar_programming_maps_and_moves_the_device() {
        let (mut root, io, dev, _) = setup();
        root.write(0xcf8, &cfg_addr(3, 0, 0x10));
        root.write(0xcfc, &0xc000u32.to_le_bytes());
        let mut b = [0u8];
        assert!(!io.read(0xc000, &mut b), "not mapped before I/O enable");
        root.write(0xcf8, &cfg_addr(3, 0, 0x04));
        root.write(0xcfc, &[0x01, 0x00]);
        assert!(io.read(0xc004, &mut b));
        assert_eq!(b[0], 0x5a);
        root.write(0xcf8, &cfg_addr(3, 0, 0x10));
        root.write(0xcfc, &0xd000u32.to_le_bytes());
        assert!(!io.read(0xc004, &mut b));
        assert!(io.read(0xd007, &mut b));
        assert_eq!(dev.lock().unwrap().hits, vec![0xc004, 0xd007]);
    }

    #[test]
    fn reset_control_register_resets_on_rising_rcpu() {
        let (mut root, _, _, ev) = setup();
        root.write(0xcf9, &[0x02]);
        assert_eq!(ev.pending(), None);
        root.write(0xcf9, &[0x06]);
        assert_eq!(ev.pending(), Some(MachineRequest::Reset));
    }
}
