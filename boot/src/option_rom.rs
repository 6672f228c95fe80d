//! Option ROMs handed to the firmware as fw_cfg `genroms/` files, checked
//! the way the firmware will check them (PCI Firmware Specification 3.0,
//! "PC-compatible expansion ROM header").

use std::path::Path;

use crate::{read_input, BootError};

#[derive(Debug, Clone)]
pub struct OptionRom {
    /// The fw_cfg file name: `genroms/` and the file's own name.
    pub fw_cfg_name: String,
    pub image: Vec<u8>,
}

/// Loads and validates an option ROM: 0x55AA signature, a length byte (in
/// 512-byte units) that the file covers, and a zero byte-sum over that
/// length.
pub fn load(path: &Path) -> Result<OptionRom, BootError> {
    let image = read_input(path, "option ROM")?;
    validate(path, &image)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rom".into());
    let fw_cfg_name = format!("genroms/{name}");
    if fw_cfg_name.len() > 55 {
        return Err(BootError::file(
            path,
            "option ROM file name is too long for fw_cfg (at most 47 bytes)",
        ));
    }
    Ok(OptionRom { fw_cfg_name, image })
}

pub fn validate(path: &Path, image: &[u8]) -> Result<(), BootError> {
    if image.len() < 3 {
        return Err(BootError::file(
            path,
            format!(
                "option ROM is {} bytes, too short for a header",
                image.len()
            ),
        ));
    }
    if image[0] != 0x55 || image[1] != 0xaa {
        return Err(BootError::file(
            path,
            format!(
                "option ROM signature at offset 0 is {:02x} {:02x}, expected 55 aa",
                image[0], image[1]
            ),
        ));
    }
    let len = usize::from(image[2]) * 512;
    if len == 0 || len > image.len() {
        return Err(BootError::file(
            path,
            format!(
                "option ROM length byte at offset 2 says {len} bytes but the file has {}",
                image.len()
            ),
        ));
    }
    let sum = image[..len].iter().fold(0u8, |s, b| s.wrapping_add(*b));
    if sum != 0 {
        return Err(BootError::file(
            path,
            format!("option ROM checksum over its {len} bytes is {sum:#04x}, expected 0"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rom(len_units: u8) -> Vec<u8> {
        let mut r = vec![0u8; usize::from(len_units) * 512];
        r[0] = 0x55;
        r[1] = 0xaa;
        r[2] = len_units;
        r[3] = 0xcb; // retf
        let sum = r.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        let last = r.len() - 1;
        r[last] = 0u8.wrapping_sub(sum);
        r
    }

    #[test]
    fn accepts_valid_and_names_every_defect() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("marker.rom");
        std::fs::write(&p, rom(1)).unwrap();
        let r = load(&p).unwrap();
        assert_eq!(r.fw_cfg_name, "genroms/marker.rom");

        let mut bad = rom(1);
        bad[0] = 0;
        let e = validate(&p, &bad).unwrap_err().to_string();
        assert!(e.contains("marker.rom") && e.contains("signature"), "{e}");
        let mut bad = rom(1);
        bad[10] ^= 1;
        let e = validate(&p, &bad).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let mut bad = rom(1);
        bad[2] = 4;
        let e = validate(&p, &bad).unwrap_err().to_string();
        assert!(e.contains("length byte"), "{e}");
        assert!(validate(&p, &[0x55]).is_err());
    }
}
