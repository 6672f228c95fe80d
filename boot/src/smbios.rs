//! SMBIOS tables (DMTF DSP0134 2.8 layouts) handed to SeaBIOS as the fw_cfg
//! files `etc/smbios/smbios-anchor` (a 2.1 entry point) and
//! `etc/smbios/smbios-tables`; the firmware adds its own type 0 (BIOS
//! information), places the tables and fixes the entry point's address and
//! checksums. Without them SeaBIOS builds legacy tables itself, which costs
//! hundreds of milliseconds of emulated code on some hosts.

use crate::layout::{MemoryLayout, FOUR_GIB, MIB};

pub const ANCHOR_FILE: &str = "etc/smbios/smbios-anchor";
pub const TABLES_FILE: &str = "etc/smbios/smbios-tables";

/// What the tables say about the machine.
#[derive(Debug, Clone)]
pub struct SmbiosConfig {
    pub layout: MemoryLayout,
    pub cpus: u8,
    pub manufacturer: String,
    pub product: String,
    pub version: String,
    pub serial: String,
    /// System UUID (type 1); all zeros means "not present".
    pub uuid: [u8; 16],
}

impl SmbiosConfig {
    pub fn rehost(layout: MemoryLayout, cpus: u8) -> Self {
        Self {
            layout,
            cpus,
            manufacturer: "rehost".into(),
            product: "rehost PC (i440FX + PIIX, 1996)".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            serial: "Not Specified".into(),
            uuid: [0; 16],
        }
    }
}

pub struct SmbiosFiles {
    pub anchor: Vec<u8>,
    pub tables: Vec<u8>,
}

/// One structure: formatted area, then its strings.
struct Structure {
    bytes: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, handle: u16) -> Self {
        let mut bytes = vec![kind, 0];
        bytes.extend_from_slice(&handle.to_le_bytes());
        Self {
            bytes,
            strings: Vec::new(),
        }
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(v);
        self
    }

    /// Adds a string and its 1-based index to the formatted area (0 for an
    /// empty string).
    fn string(&mut self, s: &str) -> &mut Self {
        if s.is_empty() {
            return self.u8(0);
        }
        // Strings may not contain NULs.
        self.strings.push(s.replace('\0', " "));
        let n = self.strings.len() as u8;
        self.u8(n)
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes[1] = self.bytes.len() as u8;
        let mut out = self.bytes;
        if self.strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            for s in self.strings {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            out.push(0);
        }
        out
    }
}

pub fn build(cfg: &SmbiosConfig) -> SmbiosFiles {
    let mut structures: Vec<Vec<u8>> = Vec::new();
    let mut handle = 0x100u16;
    let mut next = || {
        handle += 1;
        handle
    };

    // Type 1: system information.
    let mut t = Structure::new(1, next());
    t.string(&cfg.manufacturer)
        .string(&cfg.product)
        .string(&cfg.version)
        .string(&cfg.serial)
        .raw(&cfg.uuid)
        .u8(0x06) // woken by power switch
        .string("")
        .string("rehost");
    structures.push(t.finish());

    // Type 3: chassis.
    let mut t = Structure::new(3, next());
    t.string(&cfg.manufacturer)
        .u8(0x01) // other
        .string("")
        .string("")
        .string("")
        .u8(0x03) // boot-up state: safe
        .u8(0x03) // power supply: safe
        .u8(0x03) // thermal: safe
        .u8(0x02) // security: unknown
        .u32(0) // OEM defined
        .u8(0) // height
        .u8(0) // power cords
        .u8(0) // contained elements
        .u8(0); // element record length
    structures.push(t.finish());

    // Type 4: one per CPU socket.
    for cpu in 0..cfg.cpus {
        let mut t = Structure::new(4, next());
        t.string(&format!("CPU {cpu}"))
            .u8(0x03) // central processor
            .u8(0x01) // family: other
            .string(&cfg.manufacturer)
            .u64(0) // processor ID
            .string("")
            .u8(0) // voltage
            .u16(0) // external clock: unknown
            .u16(2000) // max speed, MHz
            .u16(2000) // current speed, MHz
            .u8(0x41) // socket populated, CPU enabled
            .u8(0x01) // upgrade: other
            .u16(0xffff)
            .u16(0xffff)
            .u16(0xffff);
        structures.push(t.finish());
    }

    // Type 16: the physical memory array.
    let total_kib = cfg.layout.total() / 1024;
    let array = next();
    let mut t = Structure::new(16, array);
    t.u8(0x03) // system board
        .u8(0x03) // system memory
        .u8(0x06) // multi-bit ECC
        .u32(total_kib.min(0x7fff_ffff) as u32)
        .u16(0xfffe) // no error information
        .u16(1);
    structures.push(t.finish());

    // Type 17: one memory device holding all of it.
    let total_mib = cfg.layout.total() / MIB;
    let mut t = Structure::new(17, next());
    t.u16(array)
        .u16(0xfffe)
        .u16(64) // total width
        .u16(64) // data width
        .u16(if total_mib < 0x7fff {
            total_mib as u16
        } else {
            0x7fff
        })
        .u8(0x09) // DIMM
        .u8(0)
        .string("DIMM 0")
        .string("")
        .u8(0x07) // RAM
        .u16(0x0002); // other
    structures.push(t.finish());

    // Type 19: where the array is mapped (below and above 4 GiB).
    for (start, size) in [(0u64, cfg.layout.below_4g), (FOUR_GIB, cfg.layout.above_4g)] {
        if size == 0 {
            continue;
        }
        let mut t = Structure::new(19, next());
        t.u32((start / 1024) as u32)
            .u32(((start + size) / 1024 - 1) as u32)
            .u16(array)
            .u8(1);
        structures.push(t.finish());
    }

    // Type 32: boot status, no errors.
    let mut t = Structure::new(32, next());
    t.raw(&[0; 6]).u8(0);
    structures.push(t.finish());

    // Type 127: end of table.
    structures.push(Structure::new(127, next()).finish());

    let max_structure = structures.iter().map(Vec::len).max().unwrap_or(0) as u16;
    let count = structures.len() as u16;
    let tables: Vec<u8> = structures.concat();

    let mut ep = Vec::with_capacity(31);
    ep.extend_from_slice(b"_SM_");
    ep.push(0); // checksum, fixed by the firmware
    ep.push(31);
    ep.push(2);
    ep.push(8);
    ep.extend_from_slice(&max_structure.to_le_bytes());
    ep.push(0);
    ep.extend_from_slice(&[0; 5]);
    ep.extend_from_slice(b"_DMI_");
    ep.push(0); // intermediate checksum, fixed by the firmware
    ep.extend_from_slice(&(tables.len() as u16).to_le_bytes());
    ep.extend_from_slice(&0u32.to_le_bytes()); // address, set by the firmware
    ep.extend_from_slice(&count.to_le_bytes());
    ep.push(0x28);
    SmbiosFiles { anchor: ep, tables }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks structures the way an SMBIOS reader does.
    fn walk(tables: &[u8]) -> Vec<(u8, Vec<String>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < tables.len() {
            let kind = tables[i];
            let len = usize::from(tables[i + 1]);
            let mut j = i + len;
            let mut strings = Vec::new();
            if tables[j] == 0 {
                // No strings: the formatted area ends with two NULs.
                j += 2;
            } else {
                loop {
                    let end = j + tables[j..].iter().position(|&b| b == 0).unwrap();
                    strings.push(String::from_utf8_lossy(&tables[j..end]).into_owned());
                    j = end + 1;
                    if tables[j] == 0 {
                        j += 1;
                        break;
                    }
                }
            }
            out.push((kind, strings));
            i = j;
        }
        out
    }

    #[test]
    fn tables_walk_cleanly_and_match_the_entry_point() {
        let cfg = SmbiosConfig::rehost(MemoryLayout::new(4 * crate::layout::GIB).unwrap(), 2);
        let f = build(&cfg);
        assert_eq!(f.anchor.len(), 31);
        assert_eq!(&f.anchor[..4], b"_SM_");
        assert_eq!(&f.anchor[16..21], b"_DMI_");
        let len = u16::from_le_bytes([f.anchor[22], f.anchor[23]]) as usize;
        assert_eq!(len, f.tables.len());
        let s = walk(&f.tables);
        let kinds: Vec<u8> = s.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![1, 3, 4, 4, 16, 17, 19, 19, 32, 127]);
        let count = u16::from_le_bytes([f.anchor[28], f.anchor[29]]) as usize;
        assert_eq!(count, kinds.len());
        assert_eq!(s[0].1[0], "rehost");
        assert!(s[0].1[1].starts_with("rehost PC"));
        assert_eq!(s[2].1[0], "CPU 0");
        assert_eq!(s[5].1, vec!["DIMM 0".to_string()]);
    }
}
