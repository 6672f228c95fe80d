//! VHD images (fixed, dynamic, differencing): Microsoft's Virtual Hard Disk
//! Image Format Specification 1.0.
//!
//! # Crash safety of dynamic and differencing images
//!
//! Metadata is written back, never ahead of the data it describes:
//!
//! 1. Allocating a block first writes a copy of the footer just past the
//!    new block, so the file ends with a valid footer once a process is
//!    killed, and the block's initial sector bitmap; then the block's data
//!    goes where the old footer was. The BAT entry and later bitmap
//!    changes stay in memory.
//! 2. `flush` makes the data stable (`fdatasync`), then writes the dirty
//!    sector bitmaps and BAT sectors, then `fdatasync`s again.
//!
//! So at any instant (a SIGKILL, a power cut after a completed flush) the
//! on-disk BAT and bitmaps point only at data that reached the file, the
//! file ends with its footer, and every write acknowledged before the last
//! completed flush is reachable. Space allocated after the last flush and
//! lost in a crash is unreferenced; the next allocation truncates it away.
//!
//! A power cut can also keep a new length of the file without the footer
//! written at its end: the file then ends in unreferenced space that is no
//! footer. The footer copy at offset 0 stands in for it (`check` accepts
//! a damaged tail only past every referenced block), and the next
//! allocation puts the footer back behind the last block (synced before
//! the file shrinks onto it).
//!
//! # Size
//!
//! The guest sees [`spec::Footer::virtual_size`]: the footer's current size
//! as Hyper-V, Disk2vhd and today's tools use it, except for images whose
//! creator is Virtual PC or old QEMU, which size disks by CHS geometry.
//! Images rehost creates carry the creator application "win " so that every
//! reader (including QEMU 7.2) takes their current size.
//!
//! # Parents
//!
//! A differencing image's parent is found through its parent locators
//! (W2ru relative, W2ku absolute Windows path, MacX `file://` URL) and, last,
//! its parent name next to the child. The link is refused when the parent's
//! unique id differs from the one recorded (the parent was replaced) or when
//! the parent file was modified after the recorded parent time stamp (its
//! data may no longer be what the child was made over).

pub mod spec;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::hostfile::HostFile;
use spec::{DiskType, DynamicHeader, Footer, ParentLocator, PlatformCode, SpecError};

use crate::{
    check_request, BlockDevice, BlockError, BlockGeometry, CreateOptions, DiskImage, ImageFormat,
    ImageInfo, OpenOptions, ParentOpener, Problem, Result, Subformat,
};

const SECTOR: u64 = spec::SECTOR;
/// Data areas of blocks rehost allocates start on this boundary, so that
/// page-sized guest I/O maps to whole host pages.
const DATA_ALIGN: u64 = 4096;
/// Most BAT entries rehost loads (256 MiB of table; 128 TiB of 2 MiB
/// blocks, far past the 2040 GiB a VHD holds).
const MAX_TABLE_ENTRIES: u64 = 64 << 20;
/// Largest parent locator data rehost reads.
const MAX_LOCATOR_LEN: u32 = 64 * 1024;

/// An open VHD image.
#[derive(Debug)]
pub struct VhdImage {
    path: PathBuf,
    file: HostFile,
    read_only: bool,
    footer: Footer,
    geometry: BlockGeometry,
    layout: Layout,
    /// Cleared by tests that simulate a crash.
    flush_on_drop: bool,
}

#[derive(Debug)]
enum Layout {
    /// The data is the first `geometry.size` bytes of the file.
    Fixed,
    Sparse(Box<Sparse>),
}

struct Sparse {
    header: DynamicHeader,
    header_offset: u64,
    block_size: u64,
    bitmap_size: u64,
    /// End of the fixed metadata (footer copy, header, BAT, locators).
    metadata_end: u64,
    parent: Option<Parent>,
    meta: Mutex<Meta>,
    /// Serializes flushes, so that metadata reaches the file in order.
    flush_lock: Mutex<()>,
}

impl std::fmt::Debug for Sparse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sparse")
            .field("header_offset", &self.header_offset)
            .field("block_size", &self.block_size)
            .field("parent", &self.parent.as_ref().map(|p| &p.path))
            .finish_non_exhaustive()
    }
}

struct Parent {
    path: PathBuf,
    image: Box<dyn DiskImage>,
}

/// A block's sector bitmap as cached in memory.
#[derive(Debug, Clone)]
enum Bitmap {
    /// Every sector of the block is present.
    Full,
    Bits(Box<[u8]>),
}

#[derive(Debug)]
struct Meta {
    /// The BAT as the guest sees it (ahead of the file between flushes).
    bat: Vec<u32>,
    bitmaps: HashMap<u32, Bitmap>,
    dirty_bat_sectors: BTreeSet<u64>,
    dirty_bitmaps: BTreeSet<u32>,
    /// First byte past every block and the fixed metadata.
    next_free: u64,
    /// Length of the file.
    file_len: u64,
    /// The file does not end with a valid footer at `next_free` (damaged
    /// tail footer, or unreferenced space left by a crash).
    tail_needs_rewrite: bool,
}

fn io_err(path: &Path, offset: u64, source: std::io::Error) -> BlockError {
    BlockError::Io {
        path: path.to_owned(),
        offset,
        source,
    }
}

fn corrupt(path: &Path, structure: &'static str, offset: u64, reason: String) -> BlockError {
    BlockError::Corrupt {
        path: path.to_owned(),
        structure,
        offset,
        reason,
    }
}

fn spec_err(path: &Path, base: u64, e: SpecError) -> BlockError {
    corrupt(path, e.structure, base + e.field_offset, e.reason)
}

fn read_exact(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| io_err(path, offset, e))?;
    Ok(buf)
}

/// Seconds since 2000-01-01 UTC of a file's modification time.
fn vhd_mtime(path: &Path) -> Result<u32> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, 0, e))?;
    let modified = meta.modified().map_err(|e| io_err(path, 0, e))?;
    Ok(system_time_to_vhd(modified))
}

fn system_time_to_vhd(t: std::time::SystemTime) -> u32 {
    let unix = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    unix.saturating_sub(spec::VHD_EPOCH_UNIX)
        .min(u64::from(u32::MAX)) as u32
}

fn format_vhd_time(t: u32) -> String {
    let unix = spec::VHD_EPOCH_UNIX + u64::from(t);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Formats a VHD unique id the way Windows shows GUIDs.
pub fn format_uuid(id: &[u8; 16]) -> String {
    let h: Vec<String> = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Reads and validates a VHD's footer: the one at the end of the file, or,
/// when that one is damaged, the copy at offset 0 of dynamic and
/// differencing disks. Returns the footer, where it was found, and the
/// error of the end-of-file footer when the copy had to be used.
pub fn read_footer(file: &File, path: &Path) -> Result<(Footer, u64, Option<BlockError>)> {
    let len = file.metadata().map_err(|e| io_err(path, 0, e))?.len();
    if len < spec::OLD_FOOTER_SIZE as u64 {
        return Err(corrupt(
            path,
            "VHD footer",
            0,
            format!("the file is {len} bytes, too short to hold a footer"),
        ));
    }
    // The footer normally fills the last 512 bytes; old fixed disks have a
    // 511-byte one.
    let tail_at = len.saturating_sub(spec::FOOTER_SIZE as u64);
    let tail = read_exact(file, path, tail_at, len - tail_at)?;
    let (tail_at, tail_result) = if &tail[..8.min(tail.len())] != spec::FOOTER_COOKIE
        && tail.len() == spec::FOOTER_SIZE
        && &tail[1..9] == spec::FOOTER_COOKIE
    {
        (tail_at + 1, Footer::parse(&tail[1..]))
    } else {
        (tail_at, Footer::parse(&tail))
    };
    let tail_err = match tail_result {
        Ok(f) => return Ok((f, tail_at, None)),
        Err(e) => spec_err(path, tail_at, e),
    };
    if len >= spec::FOOTER_SIZE as u64 {
        let head = read_exact(file, path, 0, spec::FOOTER_SIZE as u64)?;
        if let Ok(f) = Footer::parse(&head) {
            if f.disk_type != DiskType::Fixed {
                return Ok((f, 0, Some(tail_err)));
            }
        }
    }
    Err(tail_err)
}

impl VhdImage {
    pub fn open(
        path: &Path,
        options: &OpenOptions,
        open_parent: &mut ParentOpener,
    ) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(path)
            .map_err(|e| io_err(path, 0, e))?;
        let len = file.metadata().map_err(|e| io_err(path, 0, e))?.len();
        let (footer, footer_at, tail_err) = read_footer(&file, path)?;
        let size = footer.virtual_size();
        let read_only = options.read_only;
        let layout = match footer.disk_type {
            DiskType::Fixed => {
                if size > footer_at {
                    return Err(corrupt(
                        path,
                        "VHD footer",
                        footer_at + Footer::CURRENT_SIZE_AT as u64,
                        format!(
                            "the disk size {size} is larger than the {footer_at} data bytes in front of the footer"
                        ),
                    ));
                }
                Layout::Fixed
            }
            DiskType::Dynamic | DiskType::Differencing => Layout::Sparse(Box::new(open_sparse(
                &file,
                path,
                len,
                &footer,
                tail_err.is_some(),
                open_parent,
            )?)),
        };
        if !read_only {
            lock_for_writing(&file).map_err(|e| BlockError::Open {
                path: path.to_owned(),
                reason: format!("the image is in use by another writer ({e})"),
            })?;
        }
        Ok(VhdImage {
            path: path.to_owned(),
            file: HostFile::new(file),
            read_only,
            geometry: BlockGeometry {
                size,
                logical_sector_size: 512,
                physical_sector_size: 512,
                read_only,
            },
            footer,
            layout,
            flush_on_drop: true,
        })
    }

    /// Closes the image the way a killed process does: without flushing.
    #[cfg(test)]
    pub(crate) fn close_as_if_killed(mut self) {
        self.flush_on_drop = false;
    }

    /// The image's footer as read at open.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic header, for dynamic and differencing images.
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        match &self.layout {
            Layout::Fixed => None,
            Layout::Sparse(s) => Some(&s.header),
        }
    }

    fn io(&self, offset: u64, e: std::io::Error) -> BlockError {
        io_err(&self.path, offset, e)
    }

    fn lock_meta<'a>(&self, sparse: &'a Sparse) -> MutexGuard<'a, Meta> {
        // A panic while holding the lock leaves consistent-enough state:
        // every mutation is a single assignment or a set insertion.
        sparse.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads a block's sector bitmap into the cache.
    fn load_bitmap(&self, sparse: &Sparse, meta: &mut Meta, block: u32) -> Result<()> {
        if meta.bitmaps.contains_key(&block) {
            return Ok(());
        }
        let entry = meta.bat[block as usize];
        let at = u64::from(entry) * SECTOR;
        let bits = read_exact(self.file.file(), &self.path, at, sparse.bitmap_size)?;
        let used = (sparse.block_size / SECTOR).div_ceil(8) as usize;
        let full = bits[..used.min(bits.len())].iter().all(|&b| b == 0xff);
        meta.bitmaps.insert(
            block,
            if full {
                Bitmap::Full
            } else {
                Bitmap::Bits(bits.into_boxed_slice())
            },
        );
        Ok(())
    }

    /// Where the sectors `[first, first + count)` of `block` are: runs of
    /// `(sector offset in block, sectors, Some(file offset) or None when
    /// the block or the sectors are not present)`.
    fn map_block(
        &self,
        sparse: &Sparse,
        block: u32,
        first: u64,
        count: u64,
    ) -> Result<Vec<(u64, u64, Option<u64>)>> {
        let mut meta = self.lock_meta(sparse);
        let entry = match meta.bat.get(block as usize) {
            Some(&e) if e != spec::BAT_UNUSED => e,
            _ => return Ok(vec![(first, count, None)]),
        };
        self.load_bitmap(sparse, &mut meta, block)?;
        let data = u64::from(entry) * SECTOR + sparse.bitmap_size;
        let at = |s: u64| Some(data + s * SECTOR);
        match meta.bitmaps.get(&block) {
            Some(Bitmap::Bits(bits)) => {
                let mut runs: Vec<(u64, u64, Option<u64>)> = Vec::new();
                for s in first..first + count {
                    let present = spec::bitmap_bit(bits, s);
                    match runs.last_mut() {
                        Some(last) if last.2.is_some() == present => last.1 += 1,
                        _ => runs.push((s, 1, if present { at(s) } else { None })),
                    }
                }
                Ok(runs)
            }
            _ => Ok(vec![(first, count, at(first))]),
        }
    }

    /// Reads sectors the image does not hold: from the parent, or zeros.
    fn read_absent(&self, sparse: &Sparse, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &sparse.parent {
            None => {
                buf.fill(0);
                Ok(())
            }
            Some(parent) => {
                let psize = parent.image.geometry().size;
                let len = buf.len() as u64;
                let inside = psize.saturating_sub(offset).min(len) as usize;
                if inside > 0 {
                    parent.image.read_at(offset, &mut buf[..inside])?;
                }
                buf[inside..].fill(0);
                Ok(())
            }
        }
    }

    fn read_sparse(&self, sparse: &Sparse, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / sparse.block_size;
            let within = pos % sparse.block_size;
            let n = (sparse.block_size - within).min((buf.len() - done) as u64);
            let block32 = u32::try_from(block).unwrap_or(u32::MAX);
            for (s, count, at) in self.map_block(sparse, block32, within / SECTOR, n / SECTOR)? {
                let from = done + ((s * SECTOR - within) as usize);
                let part = &mut buf[from..from + (count * SECTOR) as usize];
                match at {
                    Some(file_off) => self
                        .file
                        .read_exact_at(part, file_off)
                        .map_err(|e| self.io(file_off, e))?,
                    None => {
                        self.read_absent(sparse, block * sparse.block_size + s * SECTOR, part)?
                    }
                }
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Allocates `block` at the end of the file. Called with the metadata
    /// lock held.
    fn allocate(&self, sparse: &Sparse, meta: &mut Meta, block: u32) -> Result<u32> {
        let footer = self.footer.to_bytes();
        if meta.tail_needs_rewrite || meta.file_len > meta.next_free + SECTOR {
            // Drop unreferenced space (a crash after an allocation, before
            // the flush that would have recorded it) so that the new
            // block's unwritten sectors read as zeros. The file ends with a
            // valid footer before and after the truncation.
            self.file
                .write_all_at(&footer, meta.next_free)
                .map_err(|e| self.io(meta.next_free, e))?;
            // Durable before the file shrinks onto it: a power loss must
            // not keep the new length with the old bytes at its end.
            self.file.sync_data().map_err(|e| self.io(0, e))?;
            self.file
                .set_len(meta.next_free + SECTOR)
                .map_err(|e| self.io(meta.next_free, e))?;
            meta.file_len = meta.next_free + SECTOR;
            meta.tail_needs_rewrite = false;
        }
        let pos =
            (meta.next_free + sparse.bitmap_size).next_multiple_of(DATA_ALIGN) - sparse.bitmap_size;
        let entry = u32::try_from(pos / SECTOR)
            .ok()
            .filter(|&e| e != spec::BAT_UNUSED)
            .ok_or_else(|| BlockError::Unsupported {
                path: self.path.clone(),
                reason: "the image file reached the 2 TiB a VHD block table can address".into(),
            })?;
        let new_end = pos + sparse.bitmap_size + sparse.block_size;
        // The footer moves first, past the new block: the file never ends
        // without one.
        self.file
            .write_all_at(&footer, new_end)
            .map_err(|e| self.io(new_end, e))?;
        meta.file_len = meta.file_len.max(new_end + SECTOR);
        meta.next_free = new_end;
        let bitmap = if sparse.parent.is_some() {
            Bitmap::Bits(vec![0u8; sparse.bitmap_size as usize].into_boxed_slice())
        } else {
            // A dynamic disk's new block reads as zeros wherever it was not
            // written, so every sector is present.
            Bitmap::Full
        };
        // The block's bitmap as it starts goes to the file with the data,
        // so the first sync of the next flush makes it durable before the
        // BAT entry is written. A power loss may keep that flush's BAT
        // sector without its bitmap sectors; the block then reads as it
        // did before the flush (through to the parent), never through
        // whatever bytes the bitmap's place held before (the old footer).
        let initial = match &bitmap {
            Bitmap::Bits(bits) => bits.to_vec(),
            Bitmap::Full => vec![0xff; sparse.bitmap_size as usize],
        };
        self.file
            .write_all_at(&initial, pos)
            .map_err(|e| self.io(pos, e))?;
        meta.bat[block as usize] = entry;
        meta.dirty_bat_sectors.insert(u64::from(block) * 4 / SECTOR);
        meta.bitmaps.insert(block, bitmap);
        meta.dirty_bitmaps.insert(block);
        Ok(entry)
    }

    fn write_sparse(&self, sparse: &Sparse, offset: u64, buf: &[u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / sparse.block_size;
            let within = pos % sparse.block_size;
            let n = (sparse.block_size - within).min((buf.len() - done) as u64);
            let block32 = u32::try_from(block).map_err(|_| BlockError::OutOfRange {
                offset: pos,
                len: n,
                size: self.geometry.size,
            })?;
            let (entry, needs_bits) = {
                let mut meta = self.lock_meta(sparse);
                let entry = match meta.bat.get(block as usize) {
                    Some(&e) if e != spec::BAT_UNUSED => e,
                    Some(_) => self.allocate(sparse, &mut meta, block32)?,
                    None => {
                        return Err(BlockError::OutOfRange {
                            offset: pos,
                            len: n,
                            size: self.geometry.size,
                        })
                    }
                };
                self.load_bitmap(sparse, &mut meta, block32)?;
                let needs_bits = match meta.bitmaps.get(&block32) {
                    Some(Bitmap::Bits(bits)) => {
                        (within / SECTOR..(within + n) / SECTOR).any(|s| !spec::bitmap_bit(bits, s))
                    }
                    _ => false,
                };
                (entry, needs_bits)
            };
            let at = u64::from(entry) * SECTOR + sparse.bitmap_size + within;
            self.file
                .write_all_at(&buf[done..done + n as usize], at)
                .map_err(|e| self.io(at, e))?;
            if needs_bits {
                // The bits are set only once the data is in the file.
                let mut meta = self.lock_meta(sparse);
                let used = (sparse.block_size / SECTOR).div_ceil(8) as usize;
                if let Some(Bitmap::Bits(bits)) = meta.bitmaps.get_mut(&block32) {
                    spec::bitmap_set(bits, within / SECTOR, n / SECTOR);
                    if bits[..used.min(bits.len())].iter().all(|&b| b == 0xff) {
                        meta.bitmaps.insert(block32, Bitmap::Full);
                    }
                }
                meta.dirty_bitmaps.insert(block32);
            }
            done += n as usize;
        }
        Ok(())
    }

    fn flush_sparse(&self, sparse: &Sparse) -> Result<()> {
        let _order = sparse.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (writes, bat_sectors, bitmaps) = {
            let mut meta = self.lock_meta(sparse);
            let bitmaps = std::mem::take(&mut meta.dirty_bitmaps);
            let bat_sectors = std::mem::take(&mut meta.dirty_bat_sectors);
            let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
            for &block in &bitmaps {
                let entry = meta.bat[block as usize];
                let bytes = match meta.bitmaps.get(&block) {
                    Some(Bitmap::Bits(bits)) => bits.to_vec(),
                    _ => vec![0xff; sparse.bitmap_size as usize],
                };
                writes.push((u64::from(entry) * SECTOR, bytes));
            }
            for &sector in &bat_sectors {
                let first = (sector * SECTOR / 4) as usize;
                let last = (first + (SECTOR / 4) as usize).min(meta.bat.len());
                let mut bytes: Vec<u8> = meta.bat[first..last]
                    .iter()
                    .flat_map(|e| e.to_be_bytes())
                    .collect();
                // The BAT's padding to a whole sector reads as unused.
                bytes.resize(SECTOR as usize, 0xff);
                let table_size = sparse.header.table_size();
                let len = (table_size - sector * SECTOR).min(SECTOR) as usize;
                bytes.truncate(len);
                writes.push((sparse.header.table_offset + sector * SECTOR, bytes));
            }
            (writes, bat_sectors, bitmaps)
        };
        let result = (|| {
            self.file.sync_data().map_err(|e| self.io(0, e))?;
            if writes.is_empty() {
                return Ok(());
            }
            for (at, bytes) in &writes {
                self.file
                    .write_all_at(bytes, *at)
                    .map_err(|e| self.io(*at, e))?;
            }
            self.file.sync_data().map_err(|e| self.io(0, e))
        })();
        if result.is_err() {
            // Try again at the next flush.
            let mut meta = self.lock_meta(sparse);
            meta.dirty_bat_sectors.extend(bat_sectors);
            meta.dirty_bitmaps.extend(bitmaps);
        }
        result
    }

    /// Every consistency rule of the format, checked against the file as
    /// it is on disk.
    fn check_file(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let path = &self.path;
        let mut problem = |structure: &str, offset: u64, reason: String| {
            problems.push(Problem {
                path: path.clone(),
                structure: structure.to_string(),
                offset,
                reason,
            })
        };
        let len = self.file.metadata().map_err(|e| self.io(0, e))?.len();
        let footer_at = len.saturating_sub(spec::FOOTER_SIZE as u64);
        let (footer, _, tail_err) = match read_footer(self.file.file(), path) {
            Ok(x) => x,
            Err(e) => {
                problem("VHD footer", footer_at, e.to_string());
                return Ok(problems);
            }
        };
        let tail_err = tail_err.map(|e| {
            (
                footer_at,
                format!("the footer at the end of the file is damaged ({e}); the copy at offset 0 is intact"),
            )
        });
        if footer.features & spec::FEATURE_RESERVED == 0 {
            problem(
                "VHD footer",
                footer_at + 8,
                format!(
                    "features {:#010x} lack the reserved bit 0x2 that must be set",
                    footer.features
                ),
            );
        }
        if footer.disk_type == DiskType::Fixed {
            if footer.virtual_size() > footer_at {
                problem(
                    "VHD footer",
                    footer_at + 48,
                    "the disk size exceeds the data in the file".into(),
                );
            }
            return Ok(problems);
        }
        let head = read_exact(self.file.file(), path, 0, spec::FOOTER_SIZE as u64)?;
        match Footer::parse(&head) {
            Ok(copy) if copy.to_bytes() != footer.to_bytes() => problem(
                "VHD footer copy",
                0,
                "the footer copy at offset 0 differs from the footer at the end of the file".into(),
            ),
            Ok(_) => {}
            Err(e) => problem("VHD footer copy", e.field_offset, e.reason),
        }
        let Layout::Sparse(sparse) = &self.layout else {
            return Ok(problems);
        };
        let hdr_bytes = read_exact(
            self.file.file(),
            path,
            sparse.header_offset,
            spec::DYNAMIC_HEADER_SIZE as u64,
        )?;
        let header = match DynamicHeader::parse(&hdr_bytes) {
            Ok(h) => h,
            Err(e) => {
                problem(e.structure, sparse.header_offset + e.field_offset, e.reason);
                if let Some((at, reason)) = tail_err {
                    problem("VHD footer", at, reason);
                }
                return Ok(problems);
            }
        };
        let entries = u64::from(header.max_table_entries);
        if entries * u64::from(header.block_size) < footer.virtual_size() {
            problem(
                "VHD dynamic header",
                sparse.header_offset + DynamicHeader::MAX_TABLE_ENTRIES_AT as u64,
                format!(
                    "{entries} blocks of {} bytes do not cover the disk size {}",
                    header.block_size,
                    footer.virtual_size()
                ),
            );
        }
        let table_end = header.table_offset + entries * 4;
        if table_end > len {
            problem(
                "VHD block allocation table",
                header.table_offset,
                format!("the table ends at {table_end}, past the end of the file ({len})"),
            );
            if let Some((at, reason)) = tail_err {
                problem("VHD footer", at, reason);
            }
            return Ok(problems);
        }
        let bat = spec::parse_bat(&read_exact(
            self.file.file(),
            path,
            header.table_offset,
            entries * 4,
        )?)
        .unwrap_or_default();
        let (bat_problems, next_free) =
            validate_bat(sparse.header_offset, &header, &bat, footer_at);
        // A tail past every block the table references is space allocated
        // after the last flush and lost in a crash: a power loss can keep
        // the file's new length without the footer written at its end. The
        // footer copy at offset 0 stands in, and the next read-write open
        // puts the footer back behind the last block. Any other damaged
        // tail is a problem.
        if let Some((at, reason)) = tail_err {
            if at <= next_free {
                problem("VHD footer", at, reason);
            }
        }
        for (entry_at, reason) in bat_problems {
            problem("VHD block allocation table", entry_at, reason);
        }
        for (i, loc) in header.parent_locators.iter().enumerate() {
            if !loc.is_used() {
                continue;
            }
            let entry_at = sparse.header_offset
                + DynamicHeader::LOCATORS_AT as u64
                + (i * ParentLocator::SIZE) as u64;
            if loc.data_offset + u64::from(loc.data_length) > len {
                problem(
                    "VHD parent locator",
                    entry_at,
                    "the locator data lies past the end of the file".into(),
                );
            }
            if u64::from(loc.data_length) > loc.space_bytes() {
                problem(
                    "VHD parent locator",
                    entry_at,
                    format!(
                        "{} bytes of data in a space of {} bytes",
                        loc.data_length,
                        loc.space_bytes()
                    ),
                );
            }
        }
        if footer.disk_type == DiskType::Differencing && header.parent_unique_id == [0; 16] {
            problem(
                "VHD dynamic header",
                sparse.header_offset + 40,
                "a differencing disk without a parent unique id".into(),
            );
        }
        Ok(problems)
    }

    fn sparse_extents(&self, sparse: &Sparse) -> Result<Vec<std::ops::Range<u64>>> {
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        let mut push = |r: std::ops::Range<u64>| {
            let r = r.start..r.end.min(self.geometry.size);
            if r.is_empty() {
                return;
            }
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        };
        let mut meta = self.lock_meta(sparse);
        let spb = sparse.block_size / SECTOR;
        for block in 0..meta.bat.len() {
            if meta.bat[block] == spec::BAT_UNUSED {
                continue;
            }
            let start = block as u64 * sparse.block_size;
            self.load_bitmap(sparse, &mut meta, block as u32)?;
            match meta.bitmaps.get(&(block as u32)) {
                Some(Bitmap::Bits(bits)) => {
                    for s in 0..spb {
                        if spec::bitmap_bit(bits, s) {
                            push(start + s * SECTOR..start + (s + 1) * SECTOR);
                        }
                    }
                }
                _ => push(start..start + sparse.block_size),
            }
        }
        Ok(out)
    }

    /// After `rehost disk commit` merged this differencing image's data
    /// into its parent: re-records the link to the (changed) parent and
    /// drops every block, so the image reads through to the parent again.
    /// The content the image presents is the same before and after, so its
    /// file modification time is kept (images layered on it stay valid).
    fn empty_sparse(&self, sparse: &Sparse) -> Result<bool> {
        let Some(parent) = &sparse.parent else {
            return Ok(false);
        };
        if self.read_only {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let own_mtime = self
            .file
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| self.io(0, e))?;
        let _order = sparse.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut meta = self.lock_meta(sparse);
        // 1. The link: after this the image opens over the merged parent
        //    with all its data still in place.
        let mut header = sparse.header.clone();
        header.parent_timestamp = vhd_mtime(&parent.path)?;
        self.file
            .write_all_at(&header.to_bytes(), sparse.header_offset)
            .map_err(|e| self.io(sparse.header_offset, e))?;
        self.file.sync_data().map_err(|e| self.io(0, e))?;
        // 2. The BAT: every block goes; a crash half way leaves blocks whose
        //    data equals the parent's.
        meta.bat.iter_mut().for_each(|e| *e = spec::BAT_UNUSED);
        let table = vec![0xffu8; sparse.header.table_size() as usize];
        self.file
            .write_all_at(&table, sparse.header.table_offset)
            .map_err(|e| self.io(sparse.header.table_offset, e))?;
        meta.bitmaps.clear();
        meta.dirty_bitmaps.clear();
        meta.dirty_bat_sectors.clear();
        self.file.sync_data().map_err(|e| self.io(0, e))?;
        // 3. The space: the footer moves back behind the metadata.
        let end = sparse.metadata_end;
        self.file
            .write_all_at(&self.footer.to_bytes(), end)
            .map_err(|e| self.io(end, e))?;
        self.file
            .set_len(end + SECTOR)
            .map_err(|e| self.io(end, e))?;
        self.file.sync_all().map_err(|e| self.io(0, e))?;
        meta.next_free = end;
        meta.file_len = end + SECTOR;
        meta.tail_needs_rewrite = false;
        self.file
            .set_modified(own_mtime)
            .map_err(|e| self.io(0, e))?;
        Ok(true)
    }
}

/// The fixed metadata of a dynamic disk: the footer copy, the header, the
/// BAT and each parent locator's data, as byte ranges with their names.
fn metadata_ranges(
    header_offset: u64,
    header: &DynamicHeader,
) -> Vec<(std::ops::Range<u64>, String)> {
    let mut out = vec![
        (0..spec::FOOTER_SIZE as u64, "the footer copy".to_string()),
        (
            header_offset..header_offset + spec::DYNAMIC_HEADER_SIZE as u64,
            "the dynamic header".to_string(),
        ),
        (
            header.table_offset..header.table_offset + header.table_size(),
            "the block allocation table".to_string(),
        ),
    ];
    for loc in header.parent_locators.iter().filter(|l| l.is_used()) {
        if loc.data_offset > 0 {
            let len = loc.space_bytes().max(u64::from(loc.data_length));
            out.push((
                loc.data_offset..loc.data_offset.saturating_add(len),
                format!("the {} parent locator data", loc.platform.name()),
            ));
        }
    }
    out
}

/// End of the fixed metadata of a dynamic disk.
fn metadata_end(header_offset: u64, header: &DynamicHeader) -> u64 {
    metadata_ranges(header_offset, header)
        .iter()
        .map(|(r, _)| r.end)
        .max()
        .unwrap_or(0)
        .next_multiple_of(SECTOR)
}

/// The metadata a block at `range` overlaps, if any.
fn overlapped_metadata(
    ranges: &[(std::ops::Range<u64>, String)],
    block: &std::ops::Range<u64>,
) -> Option<String> {
    ranges
        .iter()
        .find(|(r, _)| r.start < block.end && block.start < r.end)
        .map(|(r, name)| format!("{name} at {}..{}", r.start, r.end))
}

/// Every BAT entry must point at a whole block (bitmap and data) in front
/// of the footer at `footer_at`, clear of the fixed metadata and of every
/// other block. Returns the problems, as (file offset of the entry,
/// reason), and the end of the last block (or of the metadata).
fn validate_bat(
    header_offset: u64,
    header: &DynamicHeader,
    bat: &[u32],
    footer_at: u64,
) -> (Vec<(u64, String)>, u64) {
    let ranges = metadata_ranges(header_offset, header);
    let span = header.bitmap_size() + u64::from(header.block_size);
    let mut end = metadata_end(header_offset, header);
    let mut problems = Vec::new();
    let mut blocks: Vec<(u64, usize)> = Vec::new();
    for (i, &e) in bat.iter().enumerate() {
        if e == spec::BAT_UNUSED {
            continue;
        }
        let at = u64::from(e) * SECTOR;
        let entry_at = header.table_offset + 4 * i as u64;
        if let Some(what) = overlapped_metadata(&ranges, &(at..at + span)) {
            problems.push((
                entry_at,
                format!(
                    "entry {i} points at a block {at}..{} that overlaps {what}",
                    at + span
                ),
            ));
        } else if at + span > footer_at {
            problems.push((
                entry_at,
                format!(
                    "entry {i} points at a block {at}..{} past the end of the data (footer at {footer_at})",
                    at + span
                ),
            ));
        } else {
            end = end.max(at + span);
            blocks.push((at, i));
        }
    }
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        if w[0].0 + span > w[1].0 {
            problems.push((
                header.table_offset + 4 * w[1].1 as u64,
                format!(
                    "entry {} (block at {}) overlaps entry {} (block at {})",
                    w[1].1, w[1].0, w[0].1, w[0].0
                ),
            ));
        }
    }
    (problems, end)
}

fn open_sparse(
    file: &File,
    path: &Path,
    len: u64,
    footer: &Footer,
    tail_damaged: bool,
    open_parent: &mut ParentOpener,
) -> Result<Sparse> {
    let header_offset = footer.data_offset;
    let header_end = header_offset.checked_add(spec::DYNAMIC_HEADER_SIZE as u64);
    if header_offset < spec::FOOTER_SIZE as u64 || header_end.is_none_or(|end| end > len) {
        return Err(corrupt(
            path,
            "VHD footer",
            len.saturating_sub(spec::FOOTER_SIZE as u64) + Footer::DATA_OFFSET_AT as u64,
            format!(
                "the dynamic header offset {header_offset:#x} is not inside the file of {len} bytes"
            ),
        ));
    }
    let header = DynamicHeader::parse(&read_exact(
        file,
        path,
        header_offset,
        spec::DYNAMIC_HEADER_SIZE as u64,
    )?)
    .map_err(|e| spec_err(path, header_offset, e))?;
    let size = footer.virtual_size();
    let block_size = u64::from(header.block_size);
    let entries = u64::from(header.max_table_entries);
    let entries_at = header_offset + DynamicHeader::MAX_TABLE_ENTRIES_AT as u64;
    if entries * block_size < size {
        return Err(corrupt(
            path,
            "VHD dynamic header",
            entries_at,
            format!("{entries} blocks of {block_size} bytes do not cover the disk size {size}"),
        ));
    }
    if entries > MAX_TABLE_ENTRIES {
        return Err(corrupt(
            path,
            "VHD dynamic header",
            entries_at,
            format!("{entries} table entries is more than the {MAX_TABLE_ENTRIES} rehost accepts"),
        ));
    }
    let footer_at = len - spec::FOOTER_SIZE as u64;
    let table_at = header_offset + DynamicHeader::TABLE_OFFSET_AT as u64;
    let table_end = header.table_offset.saturating_add(entries * 4);
    if table_end > len {
        return Err(corrupt(
            path,
            "VHD dynamic header",
            table_at,
            format!(
                "the block allocation table at {} with {entries} entries ends past the end of the file ({len} bytes)",
                header.table_offset
            ),
        ));
    }
    let header_range = header_offset..header_offset + spec::DYNAMIC_HEADER_SIZE as u64;
    if header.table_offset < spec::FOOTER_SIZE as u64
        || (header.table_offset < header_range.end && table_end > header_range.start)
    {
        return Err(corrupt(
            path,
            "VHD dynamic header",
            table_at,
            format!(
                "the block allocation table at {} overlaps the footer copy or the dynamic header",
                header.table_offset
            ),
        ));
    }
    let bat = spec::parse_bat(&read_exact(file, path, header.table_offset, entries * 4)?)
        .map_err(|e| spec_err(path, header.table_offset, e))?;
    let metadata_end = metadata_end(header_offset, &header);
    let bitmap_size = header.bitmap_size();
    let (problems, next_free) = validate_bat(header_offset, &header, &bat, footer_at);
    if let Some((entry_at, reason)) = problems.into_iter().next() {
        return Err(corrupt(
            path,
            "VHD block allocation table",
            entry_at,
            reason,
        ));
    }
    let parent = if footer.disk_type == DiskType::Differencing {
        Some(open_parent_link(
            file,
            path,
            len,
            header_offset,
            &header,
            open_parent,
        )?)
    } else {
        None
    };
    let tail_needs_rewrite = tail_damaged || footer_at != next_free;
    Ok(Sparse {
        header_offset,
        block_size,
        bitmap_size,
        metadata_end,
        parent,
        meta: Mutex::new(Meta {
            bat,
            bitmaps: HashMap::new(),
            dirty_bat_sectors: BTreeSet::new(),
            dirty_bitmaps: BTreeSet::new(),
            next_free,
            file_len: len,
            tail_needs_rewrite,
        }),
        flush_lock: Mutex::new(()),
        header,
    })
}

/// Turns a Windows path (`C:\dir\p.vhd`, `.\p.vhd`, `..\x\p.vhd`) into a
/// path here: separators become `/`, a drive letter is dropped.
fn windows_path_to_local(p: &str) -> PathBuf {
    let mut s = p.replace('\\', "/");
    let b = s.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        s = s[2..].to_string();
    }
    Path::new(&s)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// The places a differencing image's parent may be, in the order they are
/// tried, each with the locator it came from.
fn parent_candidates(
    file: &File,
    path: &Path,
    len: u64,
    header_offset: u64,
    header: &DynamicHeader,
) -> Result<Vec<(PathBuf, String)>> {
    // Relative to the child's directory (the current one for a bare name).
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    for (i, loc) in header.parent_locators.iter().enumerate() {
        if !loc.is_used() {
            continue;
        }
        let entry_at =
            header_offset + DynamicHeader::LOCATORS_AT as u64 + (i * ParentLocator::SIZE) as u64;
        if matches!(loc.platform, PlatformCode::Mac | PlatformCode::Unknown(_)) {
            continue;
        }
        if loc.data_length > MAX_LOCATOR_LEN
            || loc.data_offset.saturating_add(u64::from(loc.data_length)) > len
        {
            return Err(corrupt(
                path,
                "VHD parent locator",
                entry_at,
                format!(
                    "{} locator data of {} bytes at {} lies outside the file of {len} bytes",
                    loc.platform.name(),
                    loc.data_length,
                    loc.data_offset
                ),
            ));
        }
        let data = read_exact(file, path, loc.data_offset, u64::from(loc.data_length))?;
        let text = spec::decode_locator(loc.platform, &data)
            .map_err(|e| corrupt(path, e.structure, loc.data_offset, e.reason))?;
        let Some(text) = text else { continue };
        let candidate = match loc.platform {
            PlatformCode::W2ru | PlatformCode::Wi2r => dir.join(windows_path_to_local(&text)),
            PlatformCode::W2ku | PlatformCode::Wi2k => {
                let local = windows_path_to_local(&text);
                if local.is_absolute() {
                    local
                } else {
                    dir.join(local)
                }
            }
            _ => PathBuf::from(text),
        };
        out.push((candidate, loc.platform.name()));
    }
    let name = String::from_utf16_lossy(&header.parent_unicode_name);
    if let Some(base) = name.rsplit(['\\', '/']).next().filter(|b| !b.is_empty()) {
        out.push((dir.join(base), "parent name".to_string()));
    }
    let mut seen = Vec::new();
    out.retain(|(p, _)| {
        if seen.contains(p) {
            false
        } else {
            seen.push(p.clone());
            true
        }
    });
    Ok(out)
}

fn open_parent_link(
    file: &File,
    path: &Path,
    len: u64,
    header_offset: u64,
    header: &DynamicHeader,
    open_parent: &mut ParentOpener,
) -> Result<Parent> {
    let candidates = parent_candidates(file, path, len, header_offset, header)?;
    let Some((found, _)) = candidates.iter().find(|(p, _)| p.is_file()) else {
        let tried = if candidates.is_empty() {
            "the image has no parent locator and no parent name".to_string()
        } else {
            candidates
                .iter()
                .map(|(p, how)| format!("{} ({how})", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(BlockError::Open {
            path: path.to_owned(),
            reason: format!("the parent image was not found; tried: {tried}"),
        });
    };
    let found = found.clone();
    // The link is checked against the parent file before the parent is
    // opened, so a wrong parent is named as such.
    if crate::detect_format(&found)? != ImageFormat::Vhd {
        return Err(BlockError::Open {
            path: path.to_owned(),
            reason: format!(
                "the parent {} is not a VHD image; a VHD differencing image needs a VHD parent",
                found.display()
            ),
        });
    }
    let pfile = File::open(&found).map_err(|e| io_err(&found, 0, e))?;
    let (pfooter, _, _) = read_footer(&pfile, &found)?;
    drop(pfile);
    if pfooter.unique_id != header.parent_unique_id {
        return Err(BlockError::Open {
            path: path.to_owned(),
            reason: format!(
                "the parent {} has unique id {}, but this image was made over {}: the parent was replaced",
                found.display(),
                format_uuid(&pfooter.unique_id),
                format_uuid(&header.parent_unique_id)
            ),
        });
    }
    let mtime = vhd_mtime(&found)?;
    if header.parent_timestamp != 0 && mtime > header.parent_timestamp {
        return Err(BlockError::Open {
            path: path.to_owned(),
            reason: format!(
                "the parent {} was modified ({}) after this differencing image was linked to it ({}): its data may no longer be what this image was made over",
                found.display(),
                format_vhd_time(mtime),
                format_vhd_time(header.parent_timestamp)
            ),
        });
    }
    let image = open_parent(&found)?;
    Ok(Parent { path: found, image })
}

impl BlockDevice for VhdImage {
    fn geometry(&self) -> BlockGeometry {
        self.geometry
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(&self.geometry, offset, buf.len() as u64)?;
        match &self.layout {
            Layout::Fixed => self
                .file
                .read_exact_at(buf, offset)
                .map_err(|e| self.io(offset, e)),
            Layout::Sparse(sparse) => self.read_sparse(sparse, offset, buf),
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_request(&self.geometry, offset, buf.len() as u64)?;
        if self.read_only {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        match &self.layout {
            Layout::Fixed => self
                .file
                .write_all_at(buf, offset)
                .map_err(|e| self.io(offset, e)),
            Layout::Sparse(sparse) => self.write_sparse(sparse, offset, buf),
        }
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        match &self.layout {
            Layout::Fixed => self.file.sync_data().map_err(|e| self.io(0, e)),
            Layout::Sparse(sparse) => self.flush_sparse(sparse),
        }
    }
}

impl Drop for VhdImage {
    fn drop(&mut self) {
        if !self.read_only && self.flush_on_drop {
            if let Err(e) = self.flush() {
                tracing::error!("{}: flush on close failed: {e}", self.path.display());
            }
        }
    }
}

impl DiskImage for VhdImage {
    fn info(&self) -> ImageInfo {
        use std::os::unix::fs::MetadataExt;
        let allocated_bytes = self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        let (subformat, block_size, parent) = match &self.layout {
            Layout::Fixed => (Subformat::Fixed, None, None),
            Layout::Sparse(s) => (
                if s.parent.is_some() {
                    Subformat::Differencing
                } else {
                    Subformat::Dynamic
                },
                Some(s.block_size),
                s.parent.as_ref().map(|p| Box::new(p.image.info())),
            ),
        };
        ImageInfo {
            path: self.path.clone(),
            format: ImageFormat::Vhd,
            subformat,
            virtual_size: self.geometry.size,
            block_size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            allocated_bytes,
            parent,
        }
    }

    fn check(&self) -> Result<Vec<Problem>> {
        self.check_file()
    }

    fn allocated_extents(&self) -> Result<Vec<std::ops::Range<u64>>> {
        match &self.layout {
            Layout::Fixed => Ok(if self.geometry.size == 0 {
                Vec::new()
            } else {
                std::iter::once(0..self.geometry.size).collect()
            }),
            Layout::Sparse(sparse) => self.sparse_extents(sparse),
        }
    }

    fn parent(&self) -> Option<&dyn DiskImage> {
        match &self.layout {
            Layout::Sparse(s) => s.parent.as_ref().map(|p| p.image.as_ref()),
            Layout::Fixed => None,
        }
    }

    fn empty_after_commit(&self) -> Result<bool> {
        match &self.layout {
            Layout::Sparse(s) => self.empty_sparse(s),
            Layout::Fixed => Ok(false),
        }
    }
}

/// A fresh random (version 4) unique id.
fn random_uuid(path: &Path) -> Result<[u8; 16]> {
    use std::io::Read;
    let mut id = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(|e| io_err(path, 0, e))?;
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id)
}

/// `to` relative to the directory `from`, both absolute and canonical.
fn relative_path(from_dir: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from_dir.components().collect();
    let to_c: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to_c).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to_c[common..] {
        rel.push(c.as_os_str());
    }
    rel
}

fn to_windows(p: &Path, relative: bool) -> String {
    let s = p.to_string_lossy().replace('/', "\\");
    if relative && !s.starts_with("..") {
        format!(".\\{s}")
    } else {
        s
    }
}

/// What a new differencing image records about its parent.
struct ParentLinkInfo {
    unique_id: [u8; 16],
    timestamp: u32,
    name: String,
    /// Locators (platform, data).
    locators: Vec<(PlatformCode, Vec<u8>)>,
}

fn link_to_parent(child: &Path, parent: &Path) -> Result<ParentLinkInfo> {
    let pcanon = std::fs::canonicalize(parent).map_err(|e| io_err(parent, 0, e))?;
    let child_dir = child
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_canon = std::fs::canonicalize(child_dir).map_err(|e| io_err(child_dir, 0, e))?;
    let pfile = File::open(&pcanon).map_err(|e| io_err(parent, 0, e))?;
    let (pfooter, _, _) = read_footer(&pfile, parent)?;
    let rel = relative_path(&dir_canon, &pcanon);
    let abs = pcanon.to_string_lossy().to_string();
    Ok(ParentLinkInfo {
        unique_id: pfooter.unique_id,
        timestamp: vhd_mtime(&pcanon)?,
        name: pcanon
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        locators: vec![
            (
                PlatformCode::W2ru,
                spec::encode_utf16le(&to_windows(&rel, true)),
            ),
            (
                PlatformCode::W2ku,
                spec::encode_utf16le(&to_windows(&pcanon, false)),
            ),
            (
                PlatformCode::MacX,
                spec::path_to_file_url(&abs).into_bytes(),
            ),
        ],
    })
}

/// Creates a fixed, dynamic or differencing VHD (differencing when
/// `options.parent` is set; its size is then the parent's).
pub fn create(path: &Path, options: &CreateOptions) -> Result<()> {
    let bad = |reason: String| BlockError::Open {
        path: path.to_owned(),
        reason,
    };
    let mut block_size = options.block_size;
    let (size, link) = match &options.parent {
        Some(parent) => {
            let pimage = crate::open(
                parent,
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )?;
            let pinfo = pimage.info();
            if pinfo.format != ImageFormat::Vhd {
                return Err(bad(format!(
                    "the parent {} is a {} image; a VHD differencing image needs a VHD parent",
                    parent.display(),
                    pinfo.format.name()
                )));
            }
            block_size = block_size.or(pinfo.block_size);
            (pinfo.virtual_size, Some(link_to_parent(path, parent)?))
        }
        None => {
            if options.subformat == Subformat::Differencing {
                return Err(bad("a differencing image needs a parent".into()));
            }
            (options.size, None)
        }
    };
    if size == 0 || size % SECTOR != 0 {
        return Err(bad(format!(
            "size {size} is not a positive multiple of 512 bytes"
        )));
    }
    if size > spec::MAX_DISK_SIZE {
        return Err(bad(format!(
            "size {size} is larger than the 2040 GiB a VHD can hold"
        )));
    }
    let block_size = block_size.unwrap_or(u64::from(spec::DEFAULT_BLOCK_SIZE));
    let disk_type = if link.is_some() {
        DiskType::Differencing
    } else if options.subformat == Subformat::Fixed {
        DiskType::Fixed
    } else {
        DiskType::Dynamic
    };
    if disk_type != DiskType::Fixed
        && (!block_size.is_power_of_two() || !(4096..=256 << 20).contains(&block_size))
    {
        return Err(bad(format!(
            "block size {block_size} is not a power of two from 4 KiB to 256 MiB"
        )));
    }
    let footer = Footer {
        features: spec::FEATURE_RESERVED,
        file_format_version: spec::FILE_FORMAT_VERSION,
        data_offset: if disk_type == DiskType::Fixed {
            spec::NO_DATA_OFFSET
        } else {
            spec::FOOTER_SIZE as u64
        },
        timestamp: system_time_to_vhd(std::time::SystemTime::now()),
        // "win ": readers take the current size (see the module docs).
        creator_application: *b"win ",
        creator_version: 0x000a_0000,
        creator_host_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        geometry: spec::Chs::for_size(size),
        disk_type,
        checksum: 0,
        unique_id: random_uuid(path)?,
        saved_state: 0,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_err(path, 0, e))?;
    let result = write_new_image(&file, path, &footer, size, block_size, link.as_ref());
    if result.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    result
}

fn write_new_image(
    file: &File,
    path: &Path,
    footer: &Footer,
    size: u64,
    block_size: u64,
    link: Option<&ParentLinkInfo>,
) -> Result<()> {
    let write = |bytes: &[u8], at: u64| {
        file.write_all_at(bytes, at)
            .map_err(|e| io_err(path, at, e))
    };
    let footer_bytes = footer.to_bytes();
    if footer.disk_type == DiskType::Fixed {
        file.set_len(size).map_err(|e| io_err(path, size, e))?;
        write(&footer_bytes, size)?;
        return file.sync_all().map_err(|e| io_err(path, 0, e));
    }
    let entries = size.div_ceil(block_size);
    let table_offset = 3 * SECTOR;
    let table_size = (entries * 4).div_ceil(SECTOR) * SECTOR;
    let mut next = table_offset + table_size;
    let mut locators = [ParentLocator {
        platform: PlatformCode::None,
        data_space: 0,
        data_length: 0,
        data_offset: 0,
    }; spec::PARENT_LOCATOR_COUNT];
    let mut locator_data = Vec::new();
    if let Some(link) = link {
        for (slot, (platform, data)) in locators.iter_mut().zip(&link.locators) {
            let space = (data.len() as u64).div_ceil(SECTOR).max(1) * SECTOR;
            *slot = ParentLocator {
                platform: *platform,
                // In bytes, as Windows writes it.
                data_space: space as u32,
                data_length: data.len() as u32,
                data_offset: next,
            };
            locator_data.push((next, data.clone()));
            next += space;
        }
    }
    let header = DynamicHeader {
        data_offset: spec::NO_DATA_OFFSET,
        table_offset,
        header_version: spec::HEADER_VERSION,
        max_table_entries: entries as u32,
        block_size: block_size as u32,
        checksum: 0,
        parent_unique_id: link.map(|l| l.unique_id).unwrap_or([0; 16]),
        parent_timestamp: link.map(|l| l.timestamp).unwrap_or(0),
        parent_unicode_name: link
            .map(|l| l.name.encode_utf16().collect())
            .unwrap_or_default(),
        parent_locators: locators,
    };
    write(&footer_bytes, 0)?;
    write(&header.to_bytes(), spec::FOOTER_SIZE as u64)?;
    write(&vec![0xff; table_size as usize], table_offset)?;
    for (at, data) in &locator_data {
        write(data, *at)?;
    }
    write(&footer_bytes, next)?;
    file.sync_all().map_err(|e| io_err(path, 0, e))
}

/// Takes the exclusive writer's lock. A lock that was just released can
/// still be held for a moment by a child process another thread is
/// starting (the child shares the open file until it execs), so a busy
/// lock is retried for a short while before the image counts as in use.
fn lock_for_writing(file: &std::fs::File) -> std::result::Result<(), std::fs::TryLockError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(250);
    loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
