//! VHDX images (fixed, dynamic, differencing): [MS-VHDX] v8.0
//! with its log, region table, metadata, BAT and sector bitmaps.
//!
//! # Crash safety
//!
//! Payload data is written in place (to blocks already allocated) or into
//! new blocks; new blocks are never placed over space any BAT entry (in
//! memory, on disk or in the log) may point to. Space a block gives up (a
//! discard, emptying after a commit) is released only once the metadata
//! flush that drops the BAT entry has completed; then it becomes a hole
//! (`fallocate` PUNCH_HOLE, so the host file system gets it back and it
//! reads as zeros) and new blocks take it before the file grows. A writable
//! open also finds the unreferenced ranges a crash or an earlier session
//! left, and punches each before reusing it. A new block must read as
//! zeros where it is not written, so on a file system that cannot punch
//! holes freed space is left unused. After punching, the next flush is a
//! full fsync, so the hole is stable before the BAT entry of any block
//! reusing it. Metadata changes (BAT entries, sector bitmap pages) are kept
//! in memory until the guest flushes, the log would overflow, or the image
//! is closed; then:
//!
//! 1. fdatasync: every data write (and the file size) is stable before any
//!    metadata that points to it;
//! 2. one log entry holding every dirty 4 KiB metadata page is written, then
//!    fdatasync (section 2.3). The log is used as two alternating halves so
//!    the newest complete entry is never overwritten by the next one: after
//!    a crash, the newest valid entry is always either the one being applied
//!    or the last one applied, and replaying it is harmless;
//! 3. the first time in a session, the header gets the session's LogGuid
//!    (written after the entry is stable, so a header never names a log
//!    with no valid entry), two header copies each followed by fdatasync;
//! 4. the pages are written to their places, then fdatasync.
//!
//! A crash at any instant therefore leaves either the old metadata (and
//! new data nobody points to) or a log whose replay gives the new metadata.
//! Header changes (FileWriteGuid/DataWriteGuid before the first change of a
//! session, LogGuid) use the two-header scheme of section 2.2.2.1. On a
//! clean close the LogGuid is reset to zero so other readers (QEMU refuses
//! read-only opens of a non-empty log) see an empty log.

pub mod log;
pub mod spec;

mod create;
mod file;
mod layout;
mod parent;

#[cfg(test)]
mod tests;

/// The DataWriteGuid of the current header of the VHDX file at `path`
/// ([MS-VHDX] 2.2.2: changed before the first write of every session that
/// changes the disk's content, by every conforming writer).
pub fn current_data_write_guid(path: &Path) -> Result<[u8; 16]> {
    Ok(layout::read_current_header(path)?.data_write_guid.0)
}

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub use create::create;
pub use create::{default_block_size, DEFAULT_DIFFERENCING_BLOCK_SIZE, DEFAULT_LOG_SIZE};

use self::create::random_guid;
use self::file::Backing;
use self::layout::{load, problem, read_current_header, Layout};
use self::spec::*;
use crate::{
    check_request, BlockDevice, BlockError, BlockGeometry, DiskImage, ImageFormat, ImageInfo,
    OpenOptions, ParentOpener, Problem, Result, Subformat,
};

/// Bitmap pages kept cached before clean ones are dropped.
const BITMAP_CACHE_PAGES: usize = 16384;
const PAGE: u64 = LOG_SECTOR_SIZE as u64;

/// An open VHDX image.
pub struct VhdxImage {
    path: PathBuf,
    geometry: BlockGeometry,
    subformat: Subformat,
    layout: Layout,
    parent: Option<Box<dyn DiskImage>>,
    /// Dirty metadata pages one log entry can carry (half the log).
    log_capacity: usize,
    /// Worst-case metadata pages one block-sized piece of a write dirties.
    pages_per_segment: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for VhdxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxImage")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .field("subformat", &self.subformat)
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    backing: Backing,
    /// The current header and where it is.
    header: Header,
    header_index: usize,
    /// The BAT as it will be after the next metadata flush.
    bat: Vec<u64>,
    /// BAT pages (index within the BAT) changed since the last flush.
    dirty_bat_pages: BTreeSet<u64>,
    /// Sector bitmap pages by file offset.
    bitmaps: HashMap<u64, Vec<u8>>,
    dirty_bitmaps: BTreeSet<u64>,
    /// Other metadata pages (the metadata region) to write through the log.
    dirty_other: BTreeMap<u64, Vec<u8>>,
    /// The metadata table and the parent locator as they will be after the
    /// next metadata flush.
    metadata: MetadataTable,
    parent_locator: Option<ParentLocator>,
    /// Where blocks are appended (1 MiB aligned, past everything).
    alloc_end: u64,
    /// File ranges (1 MiB aligned) that no BAT entry points to, neither in
    /// memory nor on disk nor in the log, which new blocks take before the
    /// file grows: start -> (end, known to read as zeros).
    free: BTreeMap<u64, (u64, bool)>,
    /// Ranges blocks gave up since the last metadata flush. The metadata on
    /// disk may still point to them, so they become free only once that
    /// flush has completed.
    pending_free: Vec<(u64, u64)>,
    file_write_guid_set: bool,
    data_write_guid_set: bool,
    /// The LogGuid this session writes entries with (zero until the first).
    log_guid: Guid,
    log_guid_in_header: bool,
    next_sequence: u64,
    next_slot: usize,
    /// Closed (or, in tests, abandoned as if the process died).
    closed: bool,
}

impl State {
    fn dirty_pages(&self) -> usize {
        self.dirty_bat_pages.len() + self.dirty_bitmaps.len() + self.dirty_other.len()
    }
}

impl VhdxImage {
    /// Opens a VHDX file, replaying its log (into memory when read-only),
    /// validating its structure and opening its parent through
    /// `open_parent` when it is a differencing image.
    pub fn open(
        path: &Path,
        options: &OpenOptions,
        open_parent: &mut ParentOpener,
    ) -> Result<Self> {
        let writable = !options.read_only;
        let mut backing = Backing::open(path, writable)?;
        let (layout, bat) = load(&mut backing)?;
        let (parent, parent_path) = if layout.has_parent() {
            let (img, found) = find_parent(path, &layout, open_parent)?;
            (Some(img), Some(found))
        } else {
            (None, None)
        };
        if writable && layout.header.log_length == 0 {
            return Err(BlockError::Unsupported {
                path: path.to_owned(),
                reason: "the image has no log, so it cannot be updated safely; open it read-only"
                    .into(),
            });
        }
        let subformat = if layout.has_parent() {
            Subformat::Differencing
        } else if layout.params.leave_blocks_allocated {
            Subformat::Fixed
        } else {
            Subformat::Dynamic
        };
        let log_capacity = log_capacity(u64::from(layout.header.log_length) / 2);
        let block_sectors = layout.block_size() / u64::from(layout.logical_sector_size);
        let pages_per_segment = 3 + block_sectors.div_ceil(8 * PAGE) as usize;
        // New blocks go past the end of the file and of every structure
        // (a region may extend past the end of the file).
        let alloc_end = layout
            .region_table
            .entries
            .iter()
            .map(|r| r.end())
            .chain([backing.len, layout.log_range().1])
            .max()
            .unwrap_or(backing.len)
            .div_ceil(MIB)
            * MIB;
        let free = if writable && subformat != Subformat::Fixed {
            unused_ranges(&layout, &bat, alloc_end)
        } else {
            BTreeMap::new()
        };
        let next_sequence = layout
            .replay
            .as_ref()
            .map(|s| s.head().header.sequence_number.saturating_add(1))
            .unwrap_or(1)
            .max(1);
        let geometry = BlockGeometry {
            size: layout.virtual_size,
            logical_sector_size: layout.logical_sector_size,
            physical_sector_size: layout.physical_sector_size,
            read_only: !writable,
        };
        let image = VhdxImage {
            path: path.to_owned(),
            geometry,
            subformat,
            parent,
            log_capacity,
            pages_per_segment,
            state: Mutex::new(State {
                header: layout.header.clone(),
                header_index: layout.header_index,
                backing,
                bat,
                dirty_bat_pages: BTreeSet::new(),
                bitmaps: HashMap::new(),
                dirty_bitmaps: BTreeSet::new(),
                dirty_other: BTreeMap::new(),
                metadata: layout.metadata.clone(),
                parent_locator: layout.parent_locator.clone(),
                free,
                pending_free: Vec::new(),
                alloc_end,
                file_write_guid_set: false,
                data_write_guid_set: false,
                log_guid: Guid::ZERO,
                log_guid_in_header: false,
                next_sequence,
                next_slot: 0,
                closed: false,
            }),
            layout,
        };
        if let Some(seq) = &image.layout.replay {
            tracing::info!(
                path = %path.display(),
                entries = seq.entries().len(),
                head_sequence = seq.head().header.sequence_number,
                "replaying the VHDX log {}",
                if writable { "into the file" } else { "in memory (read-only)" }
            );
        }
        if writable {
            let mut st = image.lock();
            if !st.header.log_guid.is_zero() {
                image.replay_into_file(&mut st)?;
            }
            if let Some(found) = parent_path {
                image.refresh_parent_locator(&mut st, &found)?;
            }
        }
        Ok(image)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the file inconsistent
        // (metadata only reaches it through the log), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn corrupt(
        &self,
        structure: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> BlockError {
        file::corrupt(&self.path, structure, offset, reason)
    }

    /// Writes the replayed log of a read-write open into the file (section
    /// 2.3.3), then marks the log empty.
    fn replay_into_file(&self, st: &mut State) -> Result<()> {
        // The FileWriteGuid changes before the first modification, the log
        // playback included (section 2.2.2).
        self.update_header(st, |_| {})?;
        let overlay = std::mem::take(&mut st.backing.overlay);
        for (offset, page) in overlay.pages() {
            st.backing.write(offset, page)?;
        }
        let zeros = vec![0u8; MIB as usize];
        for (start, end) in overlay.zero_ranges() {
            let mut at = start;
            while at < end {
                let n = (end - at).min(MIB);
                st.backing.write(at, &zeros[..n as usize])?;
                at += n;
            }
        }
        let real_len = st
            .backing
            .file
            .metadata()
            .map_err(|e| st.backing.io_err(0, e))?
            .len();
        if real_len < overlay.min_len {
            st.backing.set_len(overlay.min_len)?;
        }
        st.backing.sync()?;
        self.update_header(st, |h| h.log_guid = Guid::ZERO)?;
        st.alloc_end = st.alloc_end.max(st.backing.len.div_ceil(MIB) * MIB);
        Ok(())
    }

    /// Writes a new current header (section 2.2.2.1), twice so both copies
    /// are up to date. The first copy is flushed before anything else is
    /// written, so one valid current header always exists; the second is
    /// left to the next flush (were it lost, the first copy, valid and
    /// newer than the old second one, stays current). The first update of a
    /// session also sets a new FileWriteGuid.
    fn update_header(&self, st: &mut State, change: impl FnOnce(&mut Header)) -> Result<()> {
        let mut next = st.header.clone();
        change(&mut next);
        if !st.file_write_guid_set {
            next.file_write_guid = random_guid();
        }
        for copy in 0..2 {
            let index = 1 - st.header_index;
            next.sequence_number = st.header.sequence_number.checked_add(1).ok_or_else(|| {
                self.corrupt(
                    header_name(HEADER_OFFSETS[st.header_index]),
                    HEADER_OFFSETS[st.header_index],
                    "the sequence number cannot be increased any further",
                )
            })?;
            st.backing.write(HEADER_OFFSETS[index], &next.to_bytes())?;
            if copy == 0 {
                st.backing.sync()?;
            }
            st.header = next.clone();
            st.header_index = index;
        }
        st.file_write_guid_set = true;
        Ok(())
    }

    /// Section 2.6.2.6.3: "upon successful open of a chain, an
    /// implementation has to update any existing stale path entries". A
    /// relative_path, and an absolute_win32_path written for a Linux host
    /// (no drive letter), that do not lead to the parent found are rewritten
    /// to lead to it. Windows drive-letter and volume paths are left alone:
    /// they may still be right on the host that made the image. The change
    /// goes through the log with the next metadata flush.
    fn refresh_parent_locator(&self, st: &mut State, found: &Path) -> Result<()> {
        let Some(locator) = st.parent_locator.clone() else {
            return Ok(());
        };
        let (Ok(parent_abs), Some(Ok(child_dir))) = (
            std::fs::canonicalize(found),
            self.path
                .parent()
                .map(|d| {
                    if d.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        d
                    }
                })
                .map(std::fs::canonicalize),
        ) else {
            return Ok(());
        };
        let leads_to_parent = |c: &parent::Candidate| {
            c.path
                .as_ref()
                .ok()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .is_some_and(|p| p == parent_abs)
        };
        let mut updated = locator.clone();
        let mut stale = false;
        for c in parent::candidates(&self.path, &locator) {
            let new_value = match c.source.as_str() {
                "relative_path" => parent::relative_path_value(&child_dir, &parent_abs),
                "absolute_win32_path" if c.path.is_ok() => parent::absolute_path_value(&parent_abs),
                _ => continue,
            };
            if leads_to_parent(&c) || c.value == new_value {
                continue;
            }
            for (k, v) in &mut updated.entries {
                if *k == c.source {
                    *v = new_value.clone();
                    stale = true;
                }
            }
        }
        if !stale {
            return Ok(());
        }
        if !self.stage_parent_locator(st, &updated)? {
            tracing::warn!(path = %self.path.display(), "no room to update the stale parent locator");
            return Ok(());
        }
        tracing::info!(path = %self.path.display(), parent = %found.display(), "updating stale parent locator paths");
        if !st.file_write_guid_set {
            self.update_header(st, |_| {})?;
        }
        Ok(())
    }

    /// Stages a new parent locator item for the next metadata flush (it
    /// goes through the log with it): in place when it fits, else after
    /// every other item of the metadata region, with the metadata table
    /// updated to match. Only the 4 KiB pages that change are staged.
    /// Returns `false`, staging nothing, when the region has no room.
    fn stage_parent_locator(&self, st: &mut State, updated: &ParentLocator) -> Result<bool> {
        let md = &self.layout.metadata_region;
        let region_len = u64::from(md.length);
        let mut table = st.metadata.clone();
        let Some(index) = table
            .entries
            .iter()
            .position(|e| e.item_id == PARENT_LOCATOR_GUID && !e.is_user)
        else {
            return Err(self.corrupt(
                "metadata table",
                md.file_offset,
                "there is no parent locator item to update",
            ));
        };
        let item = table.entries[index].clone();
        let bytes = updated.to_bytes();
        let in_place = bytes.len() as u64 <= u64::from(item.length);
        let offset = if in_place {
            u64::from(item.offset)
        } else {
            let end = table
                .entries
                .iter()
                .map(|e| u64::from(e.offset) + u64::from(e.length))
                .max()
                .unwrap_or(METADATA_TABLE_SIZE as u64)
                .max(METADATA_TABLE_SIZE as u64);
            if end + bytes.len() as u64 > region_len {
                return Ok(false);
            }
            end
        };
        let length = (bytes.len() as u32).max(if in_place { item.length } else { 0 });
        table.entries[index].offset = offset as u32;
        table.entries[index].length = length;
        let mut item_bytes = bytes;
        item_bytes.resize(length as usize, 0);
        let mut changes: Vec<(u64, Vec<u8>)> = vec![(offset, item_bytes)];
        if table != st.metadata {
            changes.push((0, table.to_bytes()));
        }
        for (rel, data) in changes {
            let start = md.file_offset + rel;
            let end = start + data.len() as u64;
            let mut page = start / PAGE * PAGE;
            while page < end {
                let mut buf = match st.dirty_other.get(&page) {
                    Some(b) => b.clone(),
                    None => {
                        let mut b = vec![0u8; PAGE as usize];
                        st.backing.read(page, &mut b)?;
                        b
                    }
                };
                let a = start.max(page);
                let b = end.min(page + PAGE);
                let new = &data[(a - start) as usize..(b - start) as usize];
                let old = &mut buf[(a - page) as usize..(b - page) as usize];
                if old != new {
                    old.copy_from_slice(new);
                    st.dirty_other.insert(page, buf);
                }
                page += PAGE;
            }
        }
        st.metadata = table;
        st.parent_locator = Some(updated.clone());
        Ok(true)
    }

    /// Before the first change of a session: new FileWriteGuid (and
    /// DataWriteGuid when the change is visible to the guest), and a file
    /// size that is a whole number of megabytes.
    fn begin_change(&self, st: &mut State) -> Result<()> {
        if st.closed {
            return Err(BlockError::Open {
                path: self.path.clone(),
                reason: "the image is closed".into(),
            });
        }
        if !st.data_write_guid_set {
            self.update_header(st, |h| h.data_write_guid = random_guid())?;
            st.data_write_guid_set = true;
            if !st.backing.len.is_multiple_of(MIB) {
                let len = st.backing.len.div_ceil(MIB) * MIB;
                st.backing.set_len(len)?;
            }
        }
        Ok(())
    }

    fn set_bat(&self, st: &mut State, index: u64, entry: BatEntry) {
        st.bat[index as usize] = entry.0;
        st.dirty_bat_pages.insert(index * 8 / PAGE);
    }

    fn bat(&self, st: &State, index: u64) -> Result<BatEntry> {
        st.bat
            .get(index as usize)
            .map(|&e| BatEntry(e))
            .ok_or_else(|| {
                self.corrupt(
                    "BAT",
                    self.layout.bat_region.file_offset,
                    format!("entry {index} is past the end of the BAT"),
                )
            })
    }

    /// Finds `len` bytes (a multiple of 1 MiB) for a new block: the first
    /// free range that holds them, else the end of the file. A new block
    /// must read as zeros wherever it is not written, so a free range not
    /// known to be zeros is deallocated (a hole) before use; on a file
    /// system that cannot punch holes it is left unused instead.
    fn allocate(&self, st: &mut State, len: u64) -> Result<u64> {
        if let Some((start, end, zeroed)) = st
            .free
            .iter()
            .find(|(&s, &(e, _))| e - s >= len)
            .map(|(&s, &(e, z))| (s, e, z))
        {
            st.free.remove(&start);
            if start + len < end {
                st.free.insert(start + len, (end, zeroed));
            }
            if !zeroed {
                match st.backing.punch_hole(start, len) {
                    Ok(()) => {}
                    Err(BlockError::Io { source, .. })
                        if matches!(
                            source.raw_os_error(),
                            Some(libc::EOPNOTSUPP | libc::ENOSYS)
                        ) =>
                    {
                        tracing::debug!(path = %self.path.display(), "cannot punch holes: free space is not reused");
                        st.free.clear();
                        return self.append(st, len);
                    }
                    Err(e) => return Err(e),
                }
            }
            if start + len > st.backing.len {
                st.backing.set_len(start + len)?;
            }
            return Ok(start);
        }
        self.append(st, len)
    }

    /// Appends `len` bytes (a multiple of 1 MiB) at the end of the file.
    fn append(&self, st: &mut State, len: u64) -> Result<u64> {
        let offset = st.alloc_end;
        let end = offset + len;
        if end > st.backing.len {
            st.backing.set_len(end)?;
        }
        st.alloc_end = end;
        Ok(offset)
    }

    /// A block's file space is no longer pointed to by the BAT in memory;
    /// the metadata on disk may still point to it until the next flush.
    fn release(&self, st: &mut State, file_offset: u64, len: u64) {
        st.pending_free.push((file_offset, file_offset + len));
    }

    /// After a completed metadata flush, nothing on disk points to the
    /// ranges released before it: their space goes back to the file system
    /// (a hole, which reads as zeros) and new blocks may take them. A range
    /// whose hole cannot be punched is left unused (reusing it would take
    /// zeros written over the whole block); a later open finds it again.
    fn free_released(&self, st: &mut State) {
        for (start, end) in std::mem::take(&mut st.pending_free) {
            match st.backing.punch_hole(start, end - start) {
                Ok(()) => insert_free(&mut st.free, start, end, true),
                Err(e) => {
                    tracing::debug!(path = %self.path.display(), "freed space at {start}..{end} left unused: {e}")
                }
            }
        }
    }

    /// The bitmap page holding the bit of virtual `sector`, loaded on
    /// demand: (page file offset, byte within page, bit mask).
    fn bitmap_position(&self, st: &mut State, sector: u64) -> Result<Option<(u64, usize, u8)>> {
        let chunk = sector / SECTORS_PER_BITMAP_BLOCK;
        let sb = self.bat(st, self.layout.bitmap_index(chunk))?;
        if sb.state() != SB_BLOCK_PRESENT {
            return Ok(None);
        }
        let bit = sector % SECTORS_PER_BITMAP_BLOCK;
        let byte = bit / 8;
        let page = sb.file_offset() + byte / PAGE * PAGE;
        if !st.bitmaps.contains_key(&page) {
            if st.bitmaps.len() >= BITMAP_CACHE_PAGES {
                let dirty = std::mem::take(&mut st.dirty_bitmaps);
                st.bitmaps.retain(|k, _| dirty.contains(k));
                st.dirty_bitmaps = dirty;
            }
            let mut buf = vec![0u8; PAGE as usize];
            st.backing.read(page, &mut buf)?;
            st.bitmaps.insert(page, buf);
        }
        Ok(Some((page, (byte % PAGE) as usize, 1u8 << (bit % 8))))
    }

    fn sector_present(&self, st: &mut State, sector: u64) -> Result<bool> {
        Ok(match self.bitmap_position(st, sector)? {
            Some((page, byte, mask)) => st.bitmaps.get(&page).is_some_and(|p| p[byte] & mask != 0),
            None => false,
        })
    }

    fn set_sectors_present(&self, st: &mut State, first: u64, count: u64) -> Result<()> {
        for sector in first..first + count {
            if let Some((page, byte, mask)) = self.bitmap_position(st, sector)? {
                if let Some(p) = st.bitmaps.get_mut(&page) {
                    if p[byte] & mask == 0 {
                        p[byte] |= mask;
                        st.dirty_bitmaps.insert(page);
                    }
                }
            }
        }
        Ok(())
    }

    /// Clears every sector bitmap bit of payload `block`, before it becomes
    /// PARTIALLY_PRESENT: bits a block's earlier life left behind (the
    /// bitmap of a NOT_PRESENT block means nothing) must not count.
    fn clear_block_bits(&self, st: &mut State, block: u64) -> Result<()> {
        let lss = u64::from(self.layout.logical_sector_size);
        let sectors = self.layout.block_size() / lss;
        let end = (block + 1) * sectors;
        // A block's bits are whole bytes (at least 256 sectors per block).
        let mut sector = block * sectors;
        while sector < end {
            let Some((page, byte, _)) = self.bitmap_position(st, sector)? else {
                return Ok(());
            };
            let n = ((PAGE - byte as u64) * 8).min(end - sector);
            if let Some(p) = st.bitmaps.get_mut(&page) {
                let bytes = &mut p[byte..byte + (n / 8) as usize];
                if bytes.iter().any(|&b| b != 0) {
                    bytes.fill(0);
                    st.dirty_bitmaps.insert(page);
                }
            }
            sector += n;
        }
        Ok(())
    }

    fn read_parent(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(parent) = &self.parent else {
            buf.fill(0);
            return Ok(());
        };
        let psize = parent.geometry().size;
        if offset >= psize {
            buf.fill(0);
            return Ok(());
        }
        let n = ((psize - offset) as usize).min(buf.len());
        parent.read_at(offset, &mut buf[..n])?;
        buf[n..].fill(0);
        Ok(())
    }

    fn read_locked(&self, st: &mut State, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.layout.block_size();
        let mut done = 0usize;
        while done < buf.len() {
            let voff = offset + done as u64;
            let block = voff / bs;
            let in_block = voff % bs;
            let n = ((bs - in_block) as usize).min(buf.len() - done);
            let seg = &mut buf[done..done + n];
            let entry = self.bat(st, self.layout.payload_index(block))?;
            match entry.state() {
                PAYLOAD_BLOCK_FULLY_PRESENT => {
                    st.backing.read(entry.file_offset() + in_block, seg)?
                }
                PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                    self.read_partial(st, entry.file_offset() + in_block, voff, seg)?
                }
                PAYLOAD_BLOCK_ZERO | PAYLOAD_BLOCK_UNMAPPED => seg.fill(0),
                PAYLOAD_BLOCK_NOT_PRESENT | PAYLOAD_BLOCK_UNDEFINED => {
                    self.read_parent(voff, seg)?
                }
                s => {
                    return Err(self.corrupt(
                        "BAT entry",
                        self.layout.bat_region.file_offset + self.layout.payload_index(block) * 8,
                        format!("block {block} has reserved state {s}"),
                    ))
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Reads from a PARTIALLY_PRESENT block, sector by sector as its bitmap
    /// says: present sectors from this file, the rest from the parent.
    fn read_partial(
        &self,
        st: &mut State,
        file_offset: u64,
        voff: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let lss = u64::from(self.layout.logical_sector_size);
        let end = voff + buf.len() as u64;
        let mut run_start = voff;
        while run_start < end {
            let present = self.sector_present(st, run_start / lss)?;
            let mut run_end = ((run_start / lss + 1) * lss).min(end);
            while run_end < end && self.sector_present(st, run_end / lss)? == present {
                run_end = ((run_end / lss + 1) * lss).min(end);
            }
            let a = (run_start - voff) as usize;
            let b = (run_end - voff) as usize;
            if present {
                st.backing
                    .read(file_offset + (run_start - voff), &mut buf[a..b])?;
            } else {
                self.read_parent(run_start, &mut buf[a..b])?;
            }
            run_start = run_end;
        }
        Ok(())
    }

    /// Flushes metadata first if the next piece of a write could overflow
    /// one log entry.
    fn make_room(&self, st: &mut State) -> Result<()> {
        if st.dirty_pages() + self.pages_per_segment > self.log_capacity {
            self.flush_metadata(st)?;
        }
        Ok(())
    }

    fn write_locked(&self, st: &mut State, offset: u64, data: &[u8]) -> Result<()> {
        let lss = u64::from(self.layout.logical_sector_size);
        if self.parent.is_some()
            && lss > crate::SECTOR_SIZE
            && (!offset.is_multiple_of(lss) || !(data.len() as u64).is_multiple_of(lss))
        {
            // The bitmap has one bit per logical sector: widen the write to
            // whole logical sectors, filling in what the guest did not send.
            let start = offset / lss * lss;
            let end = (offset + data.len() as u64).div_ceil(lss) * lss;
            let mut whole = vec![0u8; (end - start) as usize];
            self.read_locked(st, start, &mut whole[..lss as usize])?;
            let tail = whole.len() - lss as usize;
            self.read_locked(st, end - lss, &mut whole[tail..])?;
            let at = (offset - start) as usize;
            whole[at..at + data.len()].copy_from_slice(data);
            return self.write_locked(st, start, &whole);
        }
        let bs = self.layout.block_size();
        let mut done = 0usize;
        while done < data.len() {
            let voff = offset + done as u64;
            let block = voff / bs;
            let in_block = voff % bs;
            let n = ((bs - in_block) as usize).min(data.len() - done);
            let seg = &data[done..done + n];
            self.make_room(st)?;
            let index = self.layout.payload_index(block);
            let entry = self.bat(st, index)?;
            match entry.state() {
                PAYLOAD_BLOCK_FULLY_PRESENT => {
                    st.backing.write(entry.file_offset() + in_block, seg)?
                }
                PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                    st.backing.write(entry.file_offset() + in_block, seg)?;
                    self.set_sectors_present(st, voff / lss, n as u64 / lss)?;
                }
                state => {
                    let at = self.allocate(st, bs)?;
                    st.backing.write(at + in_block, seg)?;
                    let whole = in_block == 0 && n as u64 >= self.layout.block_extent(block);
                    let from_parent =
                        matches!(state, PAYLOAD_BLOCK_NOT_PRESENT | PAYLOAD_BLOCK_UNDEFINED);
                    if self.parent.is_some() && from_parent && !whole {
                        let chunk = block / self.layout.chunk_ratio;
                        let sb_index = self.layout.bitmap_index(chunk);
                        if self.bat(st, sb_index)?.state() != SB_BLOCK_PRESENT {
                            let sb = self.allocate(st, SECTOR_BITMAP_BLOCK_SIZE)?;
                            self.set_bat(st, sb_index, BatEntry::new(SB_BLOCK_PRESENT, sb));
                        }
                        self.clear_block_bits(st, block)?;
                        self.set_sectors_present(st, voff / lss, n as u64 / lss)?;
                        self.set_bat(
                            st,
                            index,
                            BatEntry::new(PAYLOAD_BLOCK_PARTIALLY_PRESENT, at),
                        );
                    } else {
                        // Dynamic images, whole-block writes, and ZERO or
                        // UNMAPPED blocks of differencing images (which read
                        // as zeros, as the new block's other bytes do).
                        self.set_bat(st, index, BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, at));
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Writes every dirty metadata page through the log (see the module
    /// documentation for the order and why it is crash safe).
    fn flush_metadata(&self, st: &mut State) -> Result<()> {
        if st.dirty_pages() == 0 {
            return Ok(());
        }
        let bat_off = self.layout.bat_region.file_offset;
        let mut pages: Vec<(u64, Vec<u8>)> = Vec::with_capacity(st.dirty_pages());
        for &p in &st.dirty_bat_pages {
            let first = (p * PAGE / 8) as usize;
            let mut page = vec![0u8; PAGE as usize];
            for (i, e) in st.bat[first..].iter().take((PAGE / 8) as usize).enumerate() {
                page[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
            }
            pages.push((bat_off + p * PAGE, page));
        }
        for &p in &st.dirty_bitmaps {
            let page =
                st.bitmaps.get(&p).cloned().ok_or_else(|| {
                    self.corrupt("sector bitmap", p, "a dirty page left the cache")
                })?;
            pages.push((p, page));
        }
        pages.extend(st.dirty_other.iter().map(|(&o, p)| (o, p.clone())));
        // 1: data (and the file size) before the metadata pointing to it.
        st.backing.sync()?;
        if st.log_guid.is_zero() {
            st.log_guid = random_guid();
        }
        let half = u64::from(st.header.log_length) / 2;
        let log_offset = st.header.log_offset;
        let mut first = 0usize;
        while first < pages.len() {
            // One entry normally; `make_room` keeps it so. Should a single
            // operation ever dirty more, later entries still only carry
            // complete pages and each is applied before the next is written.
            let last = (first + self.log_capacity).min(pages.len());
            let batch = &pages[first..last];
            let slot = st.next_slot as u64 * half;
            let entry = build_log_entry(&LogEntryContents {
                sequence_number: st.next_sequence,
                tail: slot as u32,
                log_guid: st.log_guid,
                flushed_file_offset: st.backing.len,
                last_file_offset: st.backing.len,
                pages: batch,
                zeros: &[],
            });
            // 2: the log entry.
            st.backing.write(log_offset + slot, &entry)?;
            st.backing.sync()?;
            // 3: the header names the log.
            if !st.log_guid_in_header {
                let guid = st.log_guid;
                self.update_header(st, |h| h.log_guid = guid)?;
                st.log_guid_in_header = true;
            }
            // 4: apply.
            for (offset, page) in batch {
                st.backing.write(*offset, page)?;
            }
            st.backing.sync()?;
            st.next_sequence += 1;
            st.next_slot ^= 1;
            first = last;
        }
        st.dirty_bat_pages.clear();
        st.dirty_bitmaps.clear();
        st.dirty_other.clear();
        self.free_released(st);
        Ok(())
    }

    fn close_locked(&self, st: &mut State) -> Result<()> {
        if st.closed || !st.backing.writable {
            st.closed = true;
            return Ok(());
        }
        // Data and metadata on stable storage (flush_metadata ends with a
        // flush), then the log is marked empty.
        if st.dirty_pages() > 0 {
            self.flush_metadata(st)?;
        } else if st.file_write_guid_set {
            st.backing.sync()?;
        }
        if st.log_guid_in_header {
            self.update_header(st, |h| h.log_guid = Guid::ZERO)?;
            st.log_guid_in_header = false;
            st.backing.sync()?;
        }
        st.closed = true;
        Ok(())
    }

    /// Flushes everything and marks the log empty. Dropping the image does
    /// this too, but cannot report errors.
    pub fn close(&self) -> Result<()> {
        let mut st = self.lock();
        self.close_locked(&mut st)
    }

    /// Test hook: forget every unflushed change, as if the process had been
    /// killed.
    #[cfg(test)]
    pub(crate) fn abandon(self) {
        self.lock().closed = true;
    }

    /// The creator string of the file type identifier (diagnostic only).
    pub fn creator(&self) -> &str {
        &self.layout.creator
    }

    /// The virtual disk id (SCSI page 83 data).
    pub fn virtual_disk_id(&self) -> Guid {
        self.layout.virtual_disk_id
    }

    /// The image's current DataWriteGuid (what a child's parent_linkage
    /// must name).
    pub fn data_write_guid(&self) -> Guid {
        self.lock().header.data_write_guid
    }

    fn discard_locked(&self, st: &mut State, offset: u64, len: u64) -> Result<()> {
        if self.subformat == Subformat::Fixed {
            // Blocks of a fixed image stay allocated (section 2.5.1.1 <6>).
            return Ok(());
        }
        let bs = self.layout.block_size();
        let end = offset + len;
        let mut block = offset.div_ceil(bs);
        // The new state reads as zeros. Differencing images use ZERO, which
        // also hides the parent; dynamic images record the guest's unmap.
        let new_state = if self.parent.is_some() {
            PAYLOAD_BLOCK_ZERO
        } else {
            PAYLOAD_BLOCK_UNMAPPED
        };
        while block < self.layout.data_blocks && block * bs < end {
            let start = block * bs;
            if start + self.layout.block_extent(block) > end {
                break;
            }
            let index = self.layout.payload_index(block);
            let state = self.bat(st, index)?.state();
            let reads_zero = matches!(state, PAYLOAD_BLOCK_ZERO | PAYLOAD_BLOCK_UNMAPPED)
                || (self.parent.is_none()
                    && matches!(state, PAYLOAD_BLOCK_NOT_PRESENT | PAYLOAD_BLOCK_UNDEFINED));
            if !reads_zero {
                self.begin_change(st)?;
                self.make_room(st)?;
                if matches!(
                    state,
                    PAYLOAD_BLOCK_FULLY_PRESENT | PAYLOAD_BLOCK_PARTIALLY_PRESENT
                ) {
                    let old = self.bat(st, index)?.file_offset();
                    self.release(st, old, self.layout.block_slot(block));
                }
                self.set_bat(st, index, BatEntry::new(new_state, 0));
            }
            block += 1;
        }
        Ok(())
    }

    /// After `commit` merged this image's data into its parent: re-links
    /// the image to the parent's new DataWriteGuid and drops every block,
    /// so it reads through to the parent again. Three metadata flushes,
    /// each through the log:
    ///
    /// 1. whatever was pending;
    /// 2. the parent locator's parent_linkage (parent_linkage2, naming an
    ///    older parent, goes): from here the image opens over the merged
    ///    parent, its own blocks holding what the parent now holds too;
    /// 3. the BAT: every payload block NOT_PRESENT and every sector bitmap
    ///    block released (NOT_PRESENT: no sector is present). Should the
    ///    pages need more than one log entry, they go in file order, so a
    ///    chunk's payload entries are always applied before its sector
    ///    bitmap entry, and any mix of old and new entries reads the same.
    ///
    /// The content the image presents does not change, so its
    /// DataWriteGuid stays and images made over it stay valid. The space of
    /// the dropped blocks becomes holes and is reused by later writes.
    fn empty_locked(&self, st: &mut State) -> Result<()> {
        let Some(parent) = &self.parent else {
            return Ok(());
        };
        if st.closed {
            return Err(BlockError::Open {
                path: self.path.clone(),
                reason: "the image is closed".into(),
            });
        }
        let parent_path = parent.info().path;
        let parent_guid = read_current_header(&parent_path)?.data_write_guid;
        self.flush_metadata(st)?;
        let Some(mut locator) = st.parent_locator.clone() else {
            return Err(self.corrupt(
                "parent locator",
                self.layout.metadata_region.file_offset,
                "a differencing image without a parent locator",
            ));
        };
        locator.entries.retain(|(k, _)| k != "parent_linkage2");
        for (k, v) in &mut locator.entries {
            if k == "parent_linkage" {
                *v = parent_guid.to_braced();
            }
        }
        if !self.stage_parent_locator(st, &locator)? {
            return Err(BlockError::Unsupported {
                path: self.path.clone(),
                reason: "no room in the metadata region for the updated parent locator".into(),
            });
        }
        if !st.file_write_guid_set {
            self.update_header(st, |_| {})?;
        }
        self.flush_metadata(st)?;
        tracing::info!(path = %self.path.display(), parent = %parent_path.display(), "re-linked to the parent's DataWriteGuid {parent_guid}");
        for index in 0..self.layout.bat_entries {
            let entry = self.bat(st, index)?;
            if self.layout.is_bitmap_index(index) {
                if entry.state() == SB_BLOCK_PRESENT {
                    self.release(st, entry.file_offset(), SECTOR_BITMAP_BLOCK_SIZE);
                }
                if entry.0 != 0 {
                    self.set_bat(st, index, BatEntry::new(SB_BLOCK_NOT_PRESENT, 0));
                }
                continue;
            }
            if matches!(
                entry.state(),
                PAYLOAD_BLOCK_FULLY_PRESENT | PAYLOAD_BLOCK_PARTIALLY_PRESENT
            ) {
                let block = index - index / (self.layout.chunk_ratio + 1);
                self.release(st, entry.file_offset(), self.layout.block_slot(block));
            }
            if entry.0 != 0 {
                self.set_bat(st, index, BatEntry::new(PAYLOAD_BLOCK_NOT_PRESENT, 0));
            }
        }
        // No bitmap page is dirty (everything was flushed above); the
        // cached ones belong to blocks being released.
        st.bitmaps.clear();
        self.flush_metadata(st)
    }

    fn extents_locked(&self, st: &mut State) -> Result<Vec<std::ops::Range<u64>>> {
        let bs = self.layout.block_size();
        let lss = u64::from(self.layout.logical_sector_size);
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        let mut push = |r: std::ops::Range<u64>| {
            if r.is_empty() {
                return;
            }
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        };
        for block in 0..self.layout.data_blocks {
            let start = block * bs;
            let end = start + self.layout.block_extent(block);
            let state = self.bat(st, self.layout.payload_index(block))?.state();
            match state {
                PAYLOAD_BLOCK_FULLY_PRESENT => push(start..end),
                PAYLOAD_BLOCK_ZERO | PAYLOAD_BLOCK_UNMAPPED if self.parent.is_some() => {
                    push(start..end)
                }
                PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                    let mut s = start;
                    while s < end {
                        if self.sector_present(st, s / lss)? {
                            push(s..s + lss);
                        }
                        s += lss;
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// The 1 MiB-aligned ranges below `end` that nothing in the file uses
/// (space a crash left unreferenced, blocks freed in an earlier session):
/// new blocks may take them. Their content is unknown, so they are not
/// marked as reading zeros.
/// Adds `start..end` to the free ranges, merged with free neighbours of
/// the same kind.
fn insert_free(free: &mut BTreeMap<u64, (u64, bool)>, start: u64, end: u64, zeroed: bool) {
    let (mut start, mut end) = (start, end);
    if let Some((&s, &(e, z))) = free.range(..start).next_back() {
        if e == start && z == zeroed {
            free.remove(&s);
            start = s;
        }
    }
    if let Some(&(e, z)) = free.get(&end) {
        if z == zeroed {
            free.remove(&end);
            end = e;
        }
    }
    free.insert(start, (end, zeroed));
}

fn unused_ranges(layout: &Layout, bat: &[u64], end: u64) -> BTreeMap<u64, (u64, bool)> {
    let mut free = BTreeMap::new();
    let mut at = 0u64;
    for (start, stop) in layout.used_ranges(bat).into_iter().chain([(end, end)]) {
        let gap_start = at.div_ceil(MIB) * MIB;
        let gap_end = start.min(end) / MIB * MIB;
        if gap_end > gap_start {
            free.insert(gap_start, (gap_end, false));
        }
        at = at.max(stop);
    }
    free
}

/// Pages one log entry of `slot` bytes can carry: (descriptor sectors +
/// data sectors) × 4 KiB must fit.
fn log_capacity(slot: u64) -> usize {
    let sectors = slot / PAGE;
    let mut k = sectors.saturating_sub(1);
    while k > 0 && u64::from(log_descriptor_sectors(k as u32)) + k > sectors {
        k -= 1;
    }
    k as usize
}

/// Opens the parent named by the parent locator: each candidate path in the
/// spec's order; the first that exists, is a VHDX file and carries the
/// DataWriteGuid the child was made against wins.
fn find_parent(
    child: &Path,
    layout: &Layout,
    open_parent: &mut ParentOpener,
) -> Result<(Box<dyn DiskImage>, PathBuf)> {
    let Some(locator) = &layout.parent_locator else {
        return Err(BlockError::Open {
            path: child.to_owned(),
            reason: "differencing image without a parent locator".into(),
        });
    };
    let linkage = layout
        .parent_linkage
        .iter()
        .map(|g| g.to_braced())
        .collect::<Vec<_>>()
        .join(" or ");
    let mut tried: Vec<String> = Vec::new();
    let mut changed: Vec<String> = Vec::new();
    for c in parent::candidates(child, locator) {
        let path = match &c.path {
            Err(why) => {
                tried.push(format!("{} \"{}\" ({why})", c.source, c.value));
                continue;
            }
            Ok(p) => p,
        };
        if !path.is_file() {
            tried.push(format!(
                "{} \"{}\" -> {} (not found)",
                c.source,
                c.value,
                path.display()
            ));
            continue;
        }
        let img = open_parent(path)?;
        let info = img.info();
        if info.format != ImageFormat::Vhdx {
            changed.push(format!(
                "{} is a {} image, not VHDX",
                path.display(),
                info.format.name()
            ));
            continue;
        }
        let header = read_current_header(path)?;
        if !layout.parent_linkage.contains(&header.data_write_guid) {
            changed.push(format!(
                "{} has DataWriteGuid {} but this image was made against {linkage}",
                path.display(),
                header.data_write_guid.to_braced()
            ));
            continue;
        }
        if info.logical_sector_size != layout.logical_sector_size {
            return Err(BlockError::Open {
                path: child.to_owned(),
                reason: format!(
                    "parent {} has {}-byte logical sectors but this image has {}-byte ones",
                    path.display(),
                    info.logical_sector_size,
                    layout.logical_sector_size
                ),
            });
        }
        return Ok((img, path.clone()));
    }
    if !changed.is_empty() {
        return Err(BlockError::Open {
            path: child.to_owned(),
            reason: format!(
                "the parent has changed since this differencing image was made: {}{}",
                changed.join("; "),
                if tried.is_empty() {
                    String::new()
                } else {
                    format!("; also tried {}", tried.join(", "))
                }
            ),
        });
    }
    Err(BlockError::Open {
        path: child.to_owned(),
        reason: format!("parent not found; tried {}", tried.join(", ")),
    })
}

impl BlockDevice for VhdxImage {
    fn geometry(&self) -> BlockGeometry {
        self.geometry
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(&self.geometry, offset, buf.len() as u64)?;
        let mut st = self.lock();
        self.read_locked(&mut st, offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_request(&self.geometry, offset, buf.len() as u64)?;
        if self.geometry.read_only {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut st = self.lock();
        self.begin_change(&mut st)?;
        self.write_locked(&mut st, offset, buf)
    }

    fn flush(&self) -> Result<()> {
        if self.geometry.read_only {
            return Ok(());
        }
        let mut st = self.lock();
        if st.closed {
            return Ok(());
        }
        if st.dirty_pages() > 0 {
            self.flush_metadata(&mut st)
        } else {
            st.backing.sync()
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_request(&self.geometry, offset, len)?;
        if self.geometry.read_only {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut st = self.lock();
        self.discard_locked(&mut st, offset, len)
    }
}

impl DiskImage for VhdxImage {
    fn info(&self) -> ImageInfo {
        use std::os::unix::fs::MetadataExt;
        let allocated_bytes = {
            let st = self.lock();
            st.backing
                .file
                .metadata()
                .map(|m| m.blocks() * 512)
                .unwrap_or(0)
        };
        ImageInfo {
            path: self.path.clone(),
            format: ImageFormat::Vhdx,
            subformat: self.subformat,
            virtual_size: self.layout.virtual_size,
            block_size: (self.subformat != Subformat::Fixed).then(|| self.layout.block_size()),
            logical_sector_size: self.layout.logical_sector_size,
            physical_sector_size: self.layout.physical_sector_size,
            allocated_bytes,
            parent: self.parent.as_ref().map(|p| Box::new(p.info())),
        }
    }

    fn check(&self) -> Result<Vec<Problem>> {
        let _st = self.lock();
        let mut problems = Vec::new();
        let loaded = Backing::open(&self.path, false).and_then(|mut b| load(&mut b));
        let mut linkage = None;
        match loaded {
            Ok((layout, _)) => {
                problems.extend(layout.soft_problems);
                linkage = Some(layout.parent_linkage);
            }
            Err(BlockError::Corrupt {
                path,
                structure,
                offset,
                reason,
            }) => problems.push(Problem {
                path,
                structure: structure.into(),
                offset,
                reason,
            }),
            Err(BlockError::Unsupported { path, reason }) => {
                problems.push(problem(&path, "image", 0, reason))
            }
            Err(e) => return Err(e),
        }
        // The link to the parent is this file's own metadata (the parent's
        // own rules are its own check's business).
        if let (Some(parent), Some(linkage)) = (&self.parent, linkage) {
            let ppath = parent.info().path;
            match read_current_header(&ppath) {
                Ok(h) if linkage.contains(&h.data_write_guid) => {}
                Ok(h) => problems.push(problem(
                    &self.path,
                    "parent locator",
                    self.layout.metadata_region.file_offset,
                    format!(
                        "parent {} now has DataWriteGuid {}, not the parent_linkage {}",
                        ppath.display(),
                        h.data_write_guid.to_braced(),
                        linkage
                            .iter()
                            .map(|g| g.to_braced())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                )),
                Err(e) => problems.push(problem(
                    &self.path,
                    "parent locator",
                    self.layout.metadata_region.file_offset,
                    format!("parent {} cannot be read: {e}", ppath.display()),
                )),
            }
        }
        Ok(problems)
    }

    fn allocated_extents(&self) -> Result<Vec<std::ops::Range<u64>>> {
        let mut st = self.lock();
        self.extents_locked(&mut st)
    }

    fn parent(&self) -> Option<&dyn DiskImage> {
        self.parent.as_deref()
    }

    fn empty_after_commit(&self) -> Result<bool> {
        if self.parent.is_none() {
            return Ok(false);
        }
        if self.geometry.read_only {
            return Err(BlockError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut st = self.lock();
        self.empty_locked(&mut st)?;
        Ok(true)
    }
}

impl Drop for VhdxImage {
    fn drop(&mut self) {
        let mut st = self.lock();
        if let Err(e) = self.close_locked(&mut st) {
            tracing::error!(path = %self.path.display(), "closing VHDX image failed: {e}");
        }
    }
}
