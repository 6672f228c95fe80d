//! The PIIX3 PCI-to-ISA bridge (function 0 of the south bridge): its PIRQ
//! route control registers steer PCI interrupts to ISA IRQs (82371SB
//! datasheet, section 2.2.9).

use std::sync::Arc;

use super::{ConfigSpace, PciFunction, PciInterruptRouter};
use crate::bus::BusDevice;

pub const PIRQRC: usize = 0x60;

pub struct Piix3Isa {
    cs: ConfigSpace,
    router: Arc<PciInterruptRouter>,
}

impl Piix3Isa {
    pub fn new(router: Arc<PciInterruptRouter>) -> Self {
        let mut cs = ConfigSpace::new(0x8086, 0x7000, 0x06_01_00, 0x00);
        cs.set_header_multifunction();
        cs.set_subsystem(0x1af4, 0x1100);
        for i in 0..4 {
            cs.set_u8(PIRQRC + i, 0x80);
            cs.set_wmask_u8(PIRQRC + i, 0x8f);
        }
        // ISA I/O recovery timer, top of memory, misc status.
        cs.set_u8(0x4c, 0x4d);
        cs.set_wmask_u8(0x4c, 0xff);
        cs.set_wmask_u8(0x69, 0xfe);
        cs.set_wmask_u16(0x6a, 0x00ff);
        Self { cs, router }
    }
}

impl BusDevice for Piix3Isa {
    fn read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _addr: u64, _data: &[u8]) {}
}

impl PciFunction for Piix3Isa {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.cs.write(offset, data);
        for i in 0..4 {
            self.router.set_route(i, self.cs.read_u8(PIRQRC + i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::{IrqLine, RecordingIrq};

    #[test]
    fn pirq_registers_drive_the_router() {
        let lines: Vec<_> = (0..16).map(|_| RecordingIrq::new()).collect();
        let router = PciInterruptRouter::new(
            lines
                .iter()
                .map(|l| l.clone() as Arc<dyn IrqLine>)
                .collect(),
        );
        let mut isa = Piix3Isa::new(router.clone());
        assert_eq!(isa.config_read(0), 0x7000_8086);
        assert_eq!(isa.config_read(0x0c) >> 16 & 0x80, 0x80, "multi-function");
        assert_eq!(isa.config_read(0x60), 0x8080_8080);
        // SeaBIOS routes PIRQA-D to 10, 10, 11, 11.
        isa.config_write(0x60, &[10, 10, 11, 11]);
        assert_eq!(router.route(3), 11);
        let intx = router.intx(4, 0, 32); // slot 4 INTA -> PIRQD
        intx.set_level(true);
        assert!(lines[11].level());
        // Bits 4-6 are reserved.
        isa.config_write(0x61, &[0x7a]);
        assert_eq!(router.route(1), 0x0a);
    }
}
