//! The guest-physical memory layout of the PC: low RAM, the 640 KiB-1 MiB
//! hole (VGA window and the PAM-controlled BIOS area), RAM up to the PCI
//! hole, the PCI hole below 4 GiB, and RAM above 4 GiB.

use crate::BootError;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// End of conventional memory.
pub const LOW_RAM_END: u64 = 0xa_0000;
/// The legacy VGA window (no RAM, no device: reads all ones).
pub const VGA_WINDOW: (u64, u64) = (0xa_0000, 0x2_0000);
/// Expansion ROM and BIOS area, steered by the i440FX PAM registers.
pub const BIOS_AREA: (u64, u64) = (0xc_0000, 0x4_0000);
/// RAM below 4 GiB never extends past this; above it sit PCI MMIO, the
/// I/O APIC, the local APIC and the firmware.
pub const PCI_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 1 << 32;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const LAPIC_BASE: u64 = 0xfee0_0000;

/// Smallest guest rehost starts: SeaBIOS needs RAM above 1 MiB for itself.
pub const MIN_MEMORY: u64 = 4 * MIB;
/// Largest guest: what 40 address bits reach above 4 GiB.
pub const MAX_MEMORY: u64 = 1 << 40;

/// E820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM bytes below 4 GiB (including what the 640K-1M hole hides).
    pub below_4g: u64,
    /// RAM bytes from 4 GiB up.
    pub above_4g: u64,
}

impl MemoryLayout {
    /// Splits `total` bytes of RAM around the PCI hole.
    pub fn new(total: u64) -> Result<Self, BootError> {
        if total < MIN_MEMORY {
            return Err(BootError::Invalid(format!(
                "{total} bytes is too small: rehost needs at least {} MiB",
                MIN_MEMORY / MIB
            )));
        }
        if total > MAX_MEMORY {
            return Err(BootError::Invalid(format!(
                "{total} bytes is too large: at most {} GiB",
                MAX_MEMORY / GIB
            )));
        }
        if !total.is_multiple_of(4096) {
            return Err(BootError::Invalid(format!(
                "{total} bytes is not a whole number of 4 KiB pages"
            )));
        }
        let below_4g = total.min(PCI_HOLE_START);
        Ok(Self {
            below_4g,
            above_4g: total - below_4g,
        })
    }

    pub fn total(&self) -> u64 {
        self.below_4g + self.above_4g
    }

    /// RAM regions as (guest address, size): what is backed by host
    /// memory. The 640K-1M range is split out because its decode changes.
    pub fn ram_regions(&self) -> Vec<(u64, u64)> {
        let mut r = vec![(0, LOW_RAM_END), BIOS_AREA, (MIB, self.below_4g - MIB)];
        if self.above_4g > 0 {
            r.push((FOUR_GIB, self.above_4g));
        }
        r
    }

    /// The map handed to firmware through fw_cfg `etc/e820`: RAM as
    /// QEMU describes it (the firmware carves out its own areas).
    pub fn firmware_e820(&self) -> Vec<E820Entry> {
        let mut e = vec![E820Entry {
            addr: 0,
            size: self.below_4g,
            kind: E820_RAM,
        }];
        if self.above_4g > 0 {
            e.push(E820Entry {
                addr: FOUR_GIB,
                size: self.above_4g,
                kind: E820_RAM,
            });
        }
        e
    }

    /// The map a directly booted kernel sees, with the legacy hole and the
    /// BIOS area reserved as a PC BIOS would report them.
    pub fn kernel_e820(&self) -> Vec<E820Entry> {
        let mut e = vec![
            E820Entry {
                addr: 0,
                size: 0x9_fc00,
                kind: E820_RAM,
            },
            E820Entry {
                addr: 0x9_fc00,
                size: 0x400,
                kind: E820_RESERVED,
            },
            E820Entry {
                addr: 0xf_0000,
                size: 0x1_0000,
                kind: E820_RESERVED,
            },
            E820Entry {
                addr: MIB,
                size: self.below_4g - MIB,
                kind: E820_RAM,
            },
        ];
        if self.above_4g > 0 {
            e.push(E820Entry {
                addr: FOUR_GIB,
                size: self.above_4g,
                kind: E820_RAM,
            });
        }
        e
    }
}

/// Parses a size like `512M`, `4G`, `65536`, `1.5G` (suffixes K, M, G, T
/// in powers of 1024, with an optional trailing `B` or `iB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (num, mult) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 1u64 << 10),
        Some('M') => (&body[..body.len() - 1], 1 << 20),
        Some('G') => (&body[..body.len() - 1], 1 << 30),
        Some('T') => (&body[..body.len() - 1], 1 << 40),
        _ => (body, 1),
    };
    let bad = || format!("{s:?} is not a size (examples: 512M, 4G, 1048576)");
    if num.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("{s:?} is too large"));
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    if !f.is_finite() || f < 0.0 {
        return Err(bad());
    }
    let v = f * mult as f64;
    if v >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_qemu() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn layout_splits_around_the_pci_hole() {
        let l = MemoryLayout::new(512 * MIB).unwrap();
        assert_eq!((l.below_4g, l.above_4g), (512 * MIB, 0));
        assert_eq!(
            l.ram_regions(),
            vec![(0, 0xa0000), (0xc0000, 0x40000), (MIB, 511 * MIB)]
        );
        let l = MemoryLayout::new(4 * GIB).unwrap();
        assert_eq!((l.below_4g, l.above_4g), (3 * GIB, GIB));
        assert_eq!(l.ram_regions().last(), Some(&(FOUR_GIB, GIB)));
        assert_eq!(
            l.firmware_e820(),
            vec![
                E820Entry {
                    addr: 0,
                    size: 3 * GIB,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: FOUR_GIB,
                    size: GIB,
                    kind: E820_RAM
                }
            ]
        );
        let total: u64 = l
            .kernel_e820()
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(total, 4 * GIB - 0x60400);
        assert!(MemoryLayout::new(MIB)
            .unwrap_err()
            .to_string()
            .contains("too small"));
        assert!(MemoryLayout::new(2 << 40)
            .unwrap_err()
            .to_string()
            .contains("too large"));
        assert!(MemoryLayout::new(4 * MIB + 1).is_err());
    }
}
