//! What the storage fuzz targets share: the drives' identity strings and a
//! reader of the fuzzer's input bytes.
#![allow(dead_code)]

use rehost_devices::storage::ata::DriveIdentity;

pub fn ident() -> DriveIdentity {
    DriveIdentity {
        serial: "F".into(),
        model: "FUZZ".into(),
        firmware: "0".into(),
    }
}

/// The fuzzer's input, consumed from the front; `None` once it runs out.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    pub fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        (0..n).map(|_| self.byte()).collect()
    }
    pub fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
