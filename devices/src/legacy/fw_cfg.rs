//! The QEMU firmware configuration interface (fw_cfg) as SeaBIOS reads it:
//! selector port 0x510, data port 0x511, DMA address ports 0x514/0x518.
//! Layout and semantics from QEMU's `docs/specs/fw_cfg.rst`.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress};

use crate::bus::BusDevice;
use crate::GuestMemory;

pub const FW_CFG_PORT_SEL: u64 = 0x510;
pub const FW_CFG_PORT_DATA: u64 = 0x511;
pub const FW_CFG_PORT_DMA: u64 = 0x514;
/// The ports the device decodes: selector/data (0x510-0x511), DMA
/// (0x514-0x51b).
pub const FW_CFG_PORT_LEN: u64 = 0x0c;

// Well-known selector keys.
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
pub const FW_CFG_ID: u16 = 0x0001;
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
pub const FW_CFG_NOGRAPHIC: u16 = 0x0004;
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
pub const FW_CFG_BOOT_MENU: u16 = 0x000e;
pub const FW_CFG_MAX_CPUS: u16 = 0x000f;
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
pub const FW_CFG_FILE_FIRST: u16 = 0x0020;
/// The write bit of a selector: only meaningful for writable items.
const FW_CFG_WRITE_BIT: u16 = 0x4000;

/// ID bits: the traditional interface and the DMA interface.
const ID_TRADITIONAL: u32 = 0x01;
const ID_DMA: u32 = 0x02;

/// "QEMU CFG", read from the DMA port.
const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

// FWCfgDmaAccess control bits.
const DMA_CTL_ERROR: u32 = 0x01;
const DMA_CTL_READ: u32 = 0x02;
const DMA_CTL_SKIP: u32 = 0x04;
const DMA_CTL_SELECT: u32 = 0x08;
const DMA_CTL_WRITE: u32 = 0x10;

/// A file name in the directory is at most this many bytes, NUL included.
pub const FW_CFG_MAX_FILE_NAME: usize = 56;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name {0:?} is empty or longer than 55 bytes")]
    BadName(String),
    #[error("fw_cfg file {0:?} is already present")]
    Duplicate(String),
    #[error("fw_cfg item {0:#x} is larger than 4 GiB")]
    TooLarge(u16),
}

pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<(String, u16)>,
    selector: u16,
    offset: usize,
    dma_addr_high: u32,
    mem: GuestMemory,
}

impl FwCfg {
    pub fn new(mem: GuestMemory) -> Self {
        let mut cfg = Self {
            items: BTreeMap::new(),
            files: Vec::new(),
            selector: 0,
            offset: 0,
            dma_addr_high: 0,
            mem,
        };
        cfg.items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        cfg.items
            .insert(FW_CFG_ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        cfg.rebuild_directory();
        cfg
    }

    /// Sets a numbered item.
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(key));
        }
        self.items.insert(key, data);
        Ok(())
    }

    /// Adds a named file to the directory.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        if name.is_empty() || name.len() >= FW_CFG_MAX_FILE_NAME {
            return Err(FwCfgError::BadName(name.to_owned()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.to_owned()));
        }
        let key = FW_CFG_FILE_FIRST + self.files.len() as u16;
        self.add_item(key, data)?;
        self.files.push((name.to_owned(), key));
        self.rebuild_directory();
        Ok(())
    }

    /// The content of a named file, if present.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        let key = self.files.iter().find(|(n, _)| n == name)?.1;
        self.items.get(&key).map(|v| v.as_slice())
    }

    fn rebuild_directory(&mut self) {
        let mut dir = Vec::with_capacity(4 + 64 * self.files.len());
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        let mut sorted: Vec<_> = self.files.iter().collect();
        sorted.sort();
        for (name, key) in sorted {
            let size = self.items.get(key).map_or(0, |v| v.len()) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FW_CFG_MAX_FILE_NAME];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selector = key & !FW_CFG_WRITE_BIT;
        self.offset = 0;
    }

    fn current(&self) -> &[u8] {
        self.items.get(&self.selector).map_or(&[], |v| v.as_slice())
    }

    fn read_data_byte(&mut self) -> u8 {
        let b = self.current().get(self.offset).copied().unwrap_or(0);
        if self.offset < self.current().len() {
            self.offset += 1;
        }
        b
    }

    /// Runs the DMA request whose FWCfgDmaAccess sits at `addr`. Returns
    /// false when the descriptor itself is outside guest memory.
    fn dma(&mut self, addr: u64) -> bool {
        let mut desc = [0u8; 16];
        if self.mem.read_slice(&mut desc, GuestAddress(addr)).is_err() {
            tracing::warn!(addr, "fw_cfg: DMA descriptor outside guest RAM");
            return false;
        }
        let control = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let length = u32::from_be_bytes([desc[4], desc[5], desc[6], desc[7]]) as usize;
        let mut a = [0u8; 8];
        a.copy_from_slice(&desc[8..16]);
        let target = u64::from_be_bytes(a);

        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let mut status = 0u32;
        if control & DMA_CTL_WRITE != 0 {
            // No item is writable.
            status = DMA_CTL_ERROR;
        } else if control & DMA_CTL_READ != 0 {
            let data = self.current();
            let start = self.offset.min(data.len());
            let avail = (data.len() - start).min(length);
            let mut buf = Vec::with_capacity(length);
            buf.extend_from_slice(&data[start..start + avail]);
            // Past the end of the item, the transfer reads zeros.
            buf.resize(length, 0);
            if self.mem.write_slice(&buf, GuestAddress(target)).is_err() {
                status = DMA_CTL_ERROR;
            }
            self.offset = start + avail;
        } else if control & DMA_CTL_SKIP != 0 {
            self.offset = (self.offset + length).min(self.current().len());
        }
        // The guest polls the control word until it reads 0 (or sees the
        // error bit).
        self.mem
            .write_slice(&status.to_be_bytes(), GuestAddress(addr))
            .is_ok()
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        match addr {
            FW_CFG_PORT_DATA => {
                for b in data.iter_mut() {
                    *b = self.read_data_byte();
                }
            }
            FW_CFG_PORT_SEL => {}
            a if (FW_CFG_PORT_DMA..FW_CFG_PORT_DMA + 8).contains(&a) => {
                // The signature reads big-endian across the 8 ports.
                let sig = DMA_SIGNATURE.to_be_bytes();
                let start = (a - FW_CFG_PORT_DMA) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get(start + i).copied().unwrap_or(0);
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        match (addr, data.len()) {
            (FW_CFG_PORT_SEL, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (FW_CFG_PORT_SEL, 1) => self.select(u16::from(data[0])),
            (FW_CFG_PORT_DMA, 4) => {
                self.dma_addr_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            }
            (a, 4) if a == FW_CFG_PORT_DMA + 4 => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = u64::from(self.dma_addr_high) << 32 | u64::from(low);
                self.dma_addr_high = 0;
                self.dma(addr);
            }
            (FW_CFG_PORT_DMA, 8) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(data);
                self.dma(u64::from_be_bytes(a));
            }
            _ => tracing::debug!(addr, len = data.len(), "fw_cfg: ignored write"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn select(c: &mut FwCfg, key: u16) {
        c.write(FW_CFG_PORT_SEL, &key.to_le_bytes());
    }

    fn read_bytes(c: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0];
                c.read(FW_CFG_PORT_DATA, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn signature_id_and_dma_signature() {
        let mut c = FwCfg::new(mem());
        select(&mut c, FW_CFG_SIGNATURE);
        assert_eq!(read_bytes(&mut c, 4), b"QEMU");
        select(&mut c, FW_CFG_ID);
        assert_eq!(read_bytes(&mut c, 4), vec![3, 0, 0, 0]);
        let mut hi = [0u8; 4];
        let mut lo = [0u8; 4];
        c.read(FW_CFG_PORT_DMA, &mut hi);
        c.read(FW_CFG_PORT_DMA + 4, &mut lo);
        assert_eq!(&hi, b"QEMU");
        assert_eq!(&lo, b" CFG");
        // Reading past an item's end gives zeros.
        select(&mut c, FW_CFG_SIGNATURE);
        assert_eq!(read_bytes(&mut c, 6), b"QEMU\0\0");
    }

    #[test]
    fn directory_lists_files_big_endian() {
        let mut c = FwCfg::new(mem());
        c.add_file("etc/sercon-port", 0x3f8u16.to_le_bytes().to_vec())
            .unwrap();
        c.add_file("bootorder", b"/pci@i0cf8/ide@1,1/drive@0/disk@0\n".to_vec())
            .unwrap();
        assert_eq!(
            c.add_file("bootorder", vec![]),
            Err(FwCfgError::Duplicate("bootorder".into()))
        );
        assert!(c.add_file(&"x".repeat(56), vec![]).is_err());
        select(&mut c, FW_CFG_FILE_DIR);
        let dir = read_bytes(&mut c, 4 + 2 * 64);
        assert_eq!(&dir[..4], &[0, 0, 0, 2]);
        // Sorted by name: "bootorder" first.
        assert_eq!(&dir[4..8], &34u32.to_be_bytes());
        assert_eq!(&dir[8..10], &0x21u16.to_be_bytes());
        assert_eq!(&dir[12..21], b"bootorder");
        assert_eq!(dir[21], 0);
        let e = &dir[68..];
        assert_eq!(&e[..4], &2u32.to_be_bytes());
        assert_eq!(&e[4..6], &0x20u16.to_be_bytes());
        assert_eq!(&e[8..23], b"etc/sercon-port");
        select(&mut c, 0x20);
        assert_eq!(read_bytes(&mut c, 2), vec![0xf8, 0x03]);
    }

    fn put_desc(m: &GuestMemory, at: u64, control: u32, len: u32, addr: u64) {
        let mut d = Vec::new();
        d.extend_from_slice(&control.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&addr.to_be_bytes());
        m.write_slice(&d, GuestAddress(at)).unwrap();
    }

    fn kick(c: &mut FwCfg, at: u64) {
        c.write(FW_CFG_PORT_DMA, &((at >> 32) as u32).to_be_bytes());
        c.write(FW_CFG_PORT_DMA + 4, &(at as u32).to_be_bytes());
    }

    #[test]
    fn dma_select_skip_read_and_errors() {
        let m = mem();
        let mut c = FwCfg::new(m.clone());
        c.add_file("etc/e820", (0u8..40).collect()).unwrap();
        // Select file 0x20 and read 8 bytes.
        put_desc(
            &m,
            0x1000,
            (0x20 << 16) | DMA_CTL_SELECT | DMA_CTL_READ,
            8,
            0x2000,
        );
        kick(&mut c, 0x1000);
        let mut ctl = [0u8; 4];
        m.read_slice(&mut ctl, GuestAddress(0x1000)).unwrap();
        assert_eq!(ctl, [0; 4]);
        let mut got = [0u8; 8];
        m.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 7]);
        // Skip 30, then read 8: two real bytes then zeros.
        put_desc(&m, 0x1000, DMA_CTL_SKIP, 30, 0);
        kick(&mut c, 0x1000);
        m.write_slice(&[0xff; 8], GuestAddress(0x2000)).unwrap();
        put_desc(&m, 0x1000, DMA_CTL_READ, 8, 0x2000);
        kick(&mut c, 0x1000);
        m.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(got, [38, 39, 0, 0, 0, 0, 0, 0]);
        // A write request is refused with the error bit.
        put_desc(&m, 0x1000, DMA_CTL_WRITE, 4, 0x2000);
        kick(&mut c, 0x1000);
        m.read_slice(&mut ctl, GuestAddress(0x1000)).unwrap();
        assert_eq!(u32::from_be_bytes(ctl), DMA_CTL_ERROR);
        // A read into memory that does not exist sets the error bit and
        // does not panic.
        put_desc(&m, 0x1000, DMA_CTL_READ, 16, 0xfff8);
        kick(&mut c, 0x1000);
        m.read_slice(&mut ctl, GuestAddress(0x1000)).unwrap();
        assert_eq!(u32::from_be_bytes(ctl), DMA_CTL_ERROR);
        // A descriptor outside RAM is ignored.
        kick(&mut c, 0x1_0000_0000);
    }
}
