//! The rehost block stack.
//!
//! Every layer (a raw file, an image format, a differencing chain, a dirty
//! tracker) implements [`BlockDevice`]. Offsets and lengths come from the
//! guest, so every implementation must accept any value without panicking and
//! reject out-of-range or misaligned requests with a [`BlockError`].

use std::path::{Path, PathBuf};

pub mod bench;
#[cfg(test)]
mod crashtest;
pub mod delta;
mod detect;
pub mod dirty;
pub(crate) mod hostfile;
pub mod ops;
pub mod raw;
#[cfg(test)]
mod scratch;
pub mod vhd;
pub mod vhdx;

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
    /// Format detection found the remains of an image format whose
    /// identifying signature is gone; the file is not opened as raw.
    #[error("{path}: looks like a damaged {} ({reason}); refusing to open it as raw (open it with format=raw to use its bytes as a raw disk)", format.name())]
    Damaged {
        path: PathBuf,
        format: ImageFormat,
        reason: String,
    },
    /// A `rehost disk delta apply` into this image was interrupted: its
    /// journal must be rolled forward before anything reads or writes the
    /// image, which is half-way between two states.
    #[error("{path}: an interrupted delta apply left its journal {journal}; run `rehost disk delta recover {path}` (or the same `rehost disk delta apply` again) to finish it before using the image")]
    DeltaApplyPending { path: PathBuf, journal: PathBuf },
}

pub use detect::detect_format;

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
    if !offset.is_multiple_of(SECTOR_SIZE) || !len.is_multiple_of(SECTOR_SIZE) {
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
    /// Open the image (and never its parents, which are always read-only)
    /// without write access. Nothing is written to a read-only image, not
    /// even a log replay: the replayed view is kept in memory.
    pub read_only: bool,
    /// Open the image as this format instead of detecting it (`--disk
    /// PATH,format=raw` opens a file as raw even when it looks like a
    /// damaged VHD or VHDX). Parents are always detected.
    pub format: Option<ImageFormat>,
}

/// The on-disk format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Vhd,
    Vhdx,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Vhdx => "vhdx",
        }
    }
}

/// How an image stores its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subformat {
    Fixed,
    Dynamic,
    Differencing,
}

impl Subformat {
    pub fn name(self) -> &'static str {
        match self {
            Subformat::Fixed => "fixed",
            Subformat::Dynamic => "dynamic",
            Subformat::Differencing => "differencing",
        }
    }
}

/// What `rehost disk info` reports about one image of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub subformat: Subformat,
    pub virtual_size: u64,
    /// Allocation unit of dynamic and differencing images; `None` for raw
    /// and fixed images.
    pub block_size: Option<u64>,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// Bytes the host file occupies on disk.
    pub allocated_bytes: u64,
    /// The next image down the chain, as opened.
    pub parent: Option<Box<ImageInfo>>,
}

/// One consistency problem found by [`DiskImage::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub structure: String,
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} at offset {}: {}",
            self.path.display(),
            self.structure,
            self.offset,
            self.reason
        )
    }
}

/// An opened image file: a block device that can also describe and check
/// itself.
pub trait DiskImage: BlockDevice {
    fn info(&self) -> ImageInfo;
    /// Every consistency rule of the format, checked against this image's
    /// own file (its link to its parent included: that is this file's
    /// metadata), never against its parents' files. Checking a chain is the
    /// caller's walk through [`DiskImage::parent`], one `check` per image,
    /// as `rehost disk check` does; so each problem is listed once.
    fn check(&self) -> Result<Vec<Problem>>;
    /// Byte ranges, sorted and disjoint, whose data this image itself holds
    /// (not its parents). Raw and fixed images hold everything.
    fn allocated_extents(&self) -> Result<Vec<std::ops::Range<u64>>>;
    /// The opened parent of a differencing image (the next image down the
    /// chain), for walking the chain; `None` for images without one. A
    /// format with differencing images implements it: without it, whole-
    /// chain operations count every range as allocated.
    fn parent(&self) -> Option<&dyn DiskImage> {
        None
    }
    /// After `rehost disk commit` merged this differencing image's own data
    /// into its parent: re-links the image to its changed parent and drops
    /// its own blocks, so it stays a valid (empty) child presenting the same
    /// content. Returns `Ok(false)` when the format does not do this; the
    /// image is then left as it was (Hyper-V's behaviour: no longer valid
    /// over the changed parent). The parent this image holds open was read
    /// before the merge: reopen the image before reading through it again.
    fn empty_after_commit(&self) -> Result<bool> {
        Ok(false)
    }
}

/// Opens the parent of a differencing image: always read-only, through
/// format detection, with loops and over-deep chains refused.
pub type ParentOpener<'a> = dyn FnMut(&Path) -> Result<Box<dyn DiskImage>> + 'a;

/// The deepest differencing chain rehost opens.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// What `rehost disk create` asks for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub format: ImageFormat,
    /// Fixed or dynamic; differencing when `parent` is set.
    pub subformat: Subformat,
    /// Virtual size in bytes; ignored (taken from the parent) with `parent`.
    pub size: u64,
    /// Block size of dynamic and differencing images; `None` for the
    /// format's default.
    pub block_size: Option<u64>,
    /// Makes a differencing image over this parent.
    pub parent: Option<PathBuf>,
}

/// Opens a disk image, detecting its format from the file's own bytes, and
/// the whole chain of parents below it (read-only).
///
/// An image with a pending delta-apply journal (an interrupted `rehost disk
/// delta apply`) is refused with [`BlockError::DeltaApplyPending`], and so
/// is a chain with such an image in it.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Box<dyn DiskImage>> {
    let mut visited = Vec::new();
    open_in_chain(path, options, &mut visited, true)
}

/// [`open`] without the pending-journal check for `path` itself (its
/// parents are still checked): for the delta applier that finishes the
/// journal.
pub(crate) fn open_for_delta_apply(
    path: &Path,
    options: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    let mut visited = Vec::new();
    open_in_chain(path, options, &mut visited, false)
}

fn open_in_chain(
    path: &Path,
    options: &OpenOptions,
    visited: &mut Vec<PathBuf>,
    check_journal: bool,
) -> Result<Box<dyn DiskImage>> {
    if check_journal {
        let journal = delta::journal_path(path);
        if journal.exists() {
            return Err(BlockError::DeltaApplyPending {
                path: path.to_owned(),
                journal,
            });
        }
    }
    let canonical = std::fs::canonicalize(path).map_err(|source| BlockError::Io {
        path: path.to_owned(),
        offset: 0,
        source,
    })?;
    if visited.contains(&canonical) {
        return Err(BlockError::Open {
            path: path.to_owned(),
            reason: format!(
                "the parent chain loops back to this file (chain: {})",
                visited
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        });
    }
    if visited.len() >= MAX_CHAIN_DEPTH {
        return Err(BlockError::Open {
            path: path.to_owned(),
            reason: format!("the parent chain is deeper than {MAX_CHAIN_DEPTH} images"),
        });
    }
    visited.push(canonical);
    let mut open_parent = |parent: &Path| {
        open_in_chain(
            parent,
            &OpenOptions {
                read_only: true,
                format: None,
            },
            &mut visited.clone(),
            true,
        )
    };
    let format = match options.format {
        Some(f) => f,
        None => detect_format(path)?,
    };
    match format {
        ImageFormat::Raw => Ok(Box::new(raw::RawFile::open(path, options.read_only)?)),
        ImageFormat::Vhd => Ok(Box::new(vhd::VhdImage::open(
            path,
            options,
            &mut open_parent,
        )?)),
        ImageFormat::Vhdx => Ok(Box::new(vhdx::VhdxImage::open(
            path,
            options,
            &mut open_parent,
        )?)),
    }
}

/// Creates a new image file. Refuses to overwrite an existing file.
pub fn create(path: &Path, options: &CreateOptions) -> Result<()> {
    match options.format {
        ImageFormat::Raw => raw::create(path, options),
        ImageFormat::Vhd => vhd::create(path, options),
        ImageFormat::Vhdx => vhdx::create(path, options),
    }
}
