//! The rehost block stack.
//!
//! Every layer (a raw file, an image format, a differencing chain, a dirty
//! tracker) implements [`BlockDevice`]. Offsets and lengths come from the
//! guest, so every implementation must accept any value without panicking and
//! reject out-of-range or misaligned requests with a [`BlockError`].

use std::path::{Path, PathBuf};

pub mod raw;

/// The unit every request offset and length must be a multiple of.
pub const SECTOR_SIZE: u64 = 512;

/// What a block device looks like from above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGeometry {
    /// Virtual size in bytes (a multiple of [`SECTOR_SIZE`]).
    pub size: u64,
    /// Logical sector size the guest should be told about (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size the guest should be told about (512 or 4096).
    pub physical_sector_size: u32,
    /// Writes are refused.
    pub read_only: bool,
}

/// Errors of the block stack. They name the file and, where it matters, the
/// offset and the on-disk structure concerned.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("request at byte offset {offset} length {len} is outside the disk of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("request at byte offset {offset} length {len} is not aligned to {align} bytes")]
    Misaligned { offset: u64, len: u64, align: u64 },
    #[error("{path}: the disk is read-only")]
    ReadOnly { path: PathBuf },
    #[error("{path}: I/O error at offset {offset}: {source}")]
    Io {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {structure} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        structure: &'static str,
        offset: u64,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Open { path: PathBuf, reason: String },
}

pub type Result<T, E = BlockError> = std::result::Result<T, E>;

/// The block interface every layer speaks.
///
/// `offset` and the buffer length must be multiples of [`SECTOR_SIZE`] and the
/// request must lie inside [`BlockGeometry::size`]; anything else is an error,
/// never a panic.
pub trait BlockDevice: Send + Sync + std::fmt::Debug {
    fn geometry(&self) -> BlockGeometry;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;
    /// Returns once every completed write is on stable storage.
    fn flush(&self) -> Result<()>;
    /// Tells the layer the range's content is no longer needed. Reads of a
    /// discarded range return either the old data or zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_request(&self.geometry(), offset, len)?;
        Ok(())
    }
}

/// Validates a guest request against the device geometry.
pub fn check_request(geometry: &BlockGeometry, offset: u64, len: u64) -> Result<()> {
    if offset % SECTOR_SIZE != 0 || len % SECTOR_SIZE != 0 {
        return Err(BlockError::Misaligned {
            offset,
            len,
            align: SECTOR_SIZE,
        });
    }
    match offset.checked_add(len) {
        Some(end) if end <= geometry.size => Ok(()),
        _ => Err(BlockError::OutOfRange {
            offset,
            len,
            size: geometry.size,
        }),
    }
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub read_only: bool,
}

/// Opens a disk image, detecting its format from the file's own bytes.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Box<dyn BlockDevice>> {
    Ok(Box::new(raw::RawFile::open(path, options.read_only)?))
}
