//! The i440FX PCI and memory controller (host bridge, 00:00.0), with the
//! PAM registers that steer the 0xC0000-0xFFFFF segments between RAM and
//! ROM (Intel 82441FX datasheet, section 3.2.12).

use std::sync::Arc;

use super::{ConfigSpace, PciFunction};
use crate::bus::BusDevice;

pub const PAM0: usize = 0x59;
pub const SMRAM: usize = 0x72;

/// How a PAM segment decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PamMode {
    /// Reads come from DRAM (else from the PCI/ISA side: ROM or nothing).
    pub read_ram: bool,
    /// Writes go to DRAM (else to the PCI/ISA side, where they are lost).
    pub write_ram: bool,
}

/// The 13 PAM segments: 0 is 0xF0000-0xFFFFF (64 KiB), 1-12 are the 16 KiB
/// segments from 0xC0000 to 0xEFFFF.
pub const PAM_SEGMENTS: usize = 13;

/// Address and size of PAM segment `i`.
pub fn pam_segment_range(i: usize) -> (u64, u64) {
    if i == 0 {
        (0xf0000, 0x10000)
    } else {
        (0xc0000 + (i as u64 - 1) * 0x4000, 0x4000)
    }
}

/// Called with the new modes whenever a PAM register changes.
pub type PamListener = Arc<dyn Fn(&[PamMode; PAM_SEGMENTS]) + Send + Sync>;

pub struct I440fx {
    cs: ConfigSpace,
    listener: Option<PamListener>,
}

impl I440fx {
    pub fn new(listener: Option<PamListener>) -> Self {
        let mut cs = ConfigSpace::new(0x8086, 0x1237, 0x06_00_00, 0x02);
        // SeaBIOS recognises a QEMU-compatible machine by these IDs.
        cs.set_subsystem(0x1af4, 0x1100);
        for reg in PAM0..PAM0 + 7 {
            cs.set_wmask_u8(reg, if reg == PAM0 { 0x30 } else { 0x33 });
        }
        cs.set_wmask_u8(SMRAM, 0x78);
        cs.set_u8(SMRAM, 0x02);
        Self { cs, listener }
    }

    /// Sets the PAM registers' power-on values (without notifying the
    /// listener): for a platform that hands over with the BIOS already
    /// shadowed.
    pub fn set_initial_pam(&mut self, modes: &[PamMode; PAM_SEGMENTS]) {
        let bits = |m: &PamMode| u8::from(m.read_ram) | u8::from(m.write_ram) << 1;
        self.cs.set_u8(PAM0, bits(&modes[0]) << 4);
        for reg in 0..6 {
            let lo = bits(&modes[1 + 2 * reg]);
            let hi = bits(&modes[2 + 2 * reg]);
            self.cs.set_u8(PAM0 + 1 + reg, lo | hi << 4);
        }
    }

    /// The decode of every PAM segment.
    pub fn pam_modes(&self) -> [PamMode; PAM_SEGMENTS] {
        let mut modes = [PamMode {
            read_ram: false,
            write_ram: false,
        }; PAM_SEGMENTS];
        for (i, m) in modes.iter_mut().enumerate() {
            let bits = if i == 0 {
                self.cs.read_u8(PAM0) >> 4
            } else {
                let reg = PAM0 + 1 + (i - 1) / 2;
                let v = self.cs.read_u8(reg);
                if (i - 1) % 2 == 0 {
                    v & 0x0f
                } else {
                    v >> 4
                }
            };
            *m = PamMode {
                read_ram: bits & 1 != 0,
                write_ram: bits & 2 != 0,
            };
        }
        modes
    }
}

impl BusDevice for I440fx {
    fn read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _addr: u64, _data: &[u8]) {}
}

impl PciFunction for I440fx {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let before = self.pam_modes();
        self.cs.write(offset, data);
        let after = self.pam_modes();
        if before != after {
            if let Some(l) = &self.listener {
                l(&after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn ids_say_qemu_compatible_i440fx() {
        let mut hb = I440fx::new(None);
        assert_eq!(hb.config_read(0), 0x1237_8086);
        assert_eq!(hb.config_read(0x2c), 0x1100_1af4);
        assert_eq!(hb.config_read(0x08) >> 8, 0x06_00_00);
    }

    #[test]
    fn pam_writes_as_seabios_does_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut hb = I440fx::new(Some(Arc::new(move |m: &[PamMode; PAM_SEGMENTS]| {
            s.lock().unwrap().push(*m)
        })));
        // At reset nothing decodes to RAM.
        assert!(hb.pam_modes().iter().all(|m| !m.read_ram && !m.write_ram));
        // SeaBIOS: dword writes at 0x58 and 0x5C making everything RW RAM.
        hb.config_write(0x58, &[0, 0x30, 0x33, 0x33]);
        hb.config_write(0x5c, &[0x33, 0x33, 0x33, 0x33]);
        let m = hb.pam_modes();
        assert!(m.iter().all(|m| m.read_ram && m.write_ram), "{m:?}");
        // Then read-only for the F segment only.
        hb.config_write(0x59, &[0x10]);
        let m = hb.pam_modes();
        assert!(m[0].read_ram && !m[0].write_ram);
        assert!(m[12].write_ram);
        assert_eq!(seen.lock().unwrap().len(), 3);
        // Reserved bits do not stick.
        hb.config_write(0x59, &[0xff]);
        assert_eq!(hb.config_read(0x58) >> 8 & 0xff, 0x30);
        assert_eq!(pam_segment_range(1), (0xc0000, 0x4000));

        // Power-on values round-trip through the registers.
        let mut modes = [PamMode {
            read_ram: false,
            write_ram: false,
        }; PAM_SEGMENTS];
        modes[0].read_ram = true;
        modes[12].read_ram = true;
        modes[3].write_ram = true;
        let mut hb = I440fx::new(None);
        hb.set_initial_pam(&modes);
        assert_eq!(hb.pam_modes(), modes);
        assert_eq!(hb.config_read(0x58) >> 8 & 0xff, 0x10);
        assert_eq!(hb.config_read(0x5c) >> 24, 0x10);
        assert_eq!(pam_segment_range(12), (0xec000, 0x4000));
    }
}
