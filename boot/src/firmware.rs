//! PC firmware images (SeaBIOS by default) and where they are mapped: the
//! whole image ends at 4 GiB, and its last 128 KiB also appear below 1 MiB
//! (0xE0000-0xFFFFF) until the firmware shadows itself into RAM.

use std::path::{Path, PathBuf};

use crate::{read_input, BootError};

/// Debian's SeaBIOS build (package `seabios`).
pub const DEFAULT_FIRMWARE: &str = "/usr/share/seabios/bios.bin";
pub const FIRMWARE_PACKAGE: &str = "seabios";

/// Firmware sizes the chipset can map: whole 64 KiB units, at most 16 MiB.
pub const FIRMWARE_UNIT: usize = 64 * 1024;
pub const FIRMWARE_MAX: usize = 16 * 1024 * 1024;
/// How much of the image the ISA BIOS window below 1 MiB shows.
pub const ISA_BIOS_WINDOW: usize = 128 * 1024;

#[derive(Debug, Clone)]
pub struct Firmware {
    pub path: PathBuf,
    pub image: Vec<u8>,
}

impl Firmware {
    /// Guest-physical address of the image's first byte.
    pub fn base(&self) -> u64 {
        (1u64 << 32) - self.image.len() as u64
    }

    /// Size of the alias below 1 MiB.
    pub fn isa_window(&self) -> usize {
        self.image.len().min(ISA_BIOS_WINDOW)
    }
}

/// Loads the firmware at `path`, or the default one.
pub fn load(path: Option<&Path>) -> Result<Firmware, BootError> {
    load_or(path, DEFAULT_FIRMWARE)
}

/// Loads the firmware at `path`, or `default` (a file of Debian's
/// `seabios` package) when none is given.
pub fn load_or(path: Option<&Path>, default: &str) -> Result<Firmware, BootError> {
    let (path, default) = match path {
        Some(p) => (p.to_owned(), false),
        None => (PathBuf::from(default), true),
    };
    if default && !path.exists() {
        return Err(BootError::file(
            &path,
            format!(
                "firmware not found: install Debian's `{FIRMWARE_PACKAGE}` package \
                 (apt-get install {FIRMWARE_PACKAGE}) or pass --firmware PATH"
            ),
        ));
    }
    let image = read_input(&path, "firmware")?;
    validate_size(&path, image.len())?;
    Ok(Firmware { path, image })
}

fn validate_size(path: &Path, len: usize) -> Result<(), BootError> {
    if len == 0 || !len.is_multiple_of(FIRMWARE_UNIT) || len > FIRMWARE_MAX {
        return Err(BootError::file(
            path,
            format!(
                "firmware image is {len} bytes; it must be a non-zero multiple of 64 KiB \
                 and at most 16 MiB (SeaBIOS's bios.bin is 128 KiB or 256 KiB)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bios.bin");
        std::fs::write(&p, vec![0u8; 100_000]).unwrap();
        let e = load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("bios.bin") && e.contains("100000 bytes"), "{e}");
        std::fs::write(&p, vec![0u8; 128 * 1024]).unwrap();
        let fw = load(Some(&p)).unwrap();
        assert_eq!(fw.base(), 0xfffe_0000);
        assert_eq!(fw.isa_window(), 128 * 1024);
        let e = load(Some(&dir.path().join("nope.bin")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.bin") && e.contains("cannot read firmware"),
            "{e}"
        );
    }
}
