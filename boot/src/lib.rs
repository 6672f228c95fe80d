//! What it takes to start a guest: firmware images, the guest memory
//! layout, the fw_cfg content the firmware reads, ACPI tables, option ROMs
//! and direct Linux boot.

pub mod acpi;
pub mod firmware;
pub mod fw_cfg;
pub mod layout;
pub mod linux;
pub mod option_rom;
pub mod p2v;
pub mod smbios;

use std::path::PathBuf;

/// Errors in boot inputs. Each names the file or value and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("guest memory: {0}")]
    Memory(String),
}

impl BootError {
    pub fn file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        BootError::File {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Reads a whole input file, naming it in the error.
pub fn read_input(path: &std::path::Path, what: &str) -> Result<Vec<u8>, BootError> {
    std::fs::read(path).map_err(|e| BootError::file(path, format!("cannot read {what}: {e}")))
}
