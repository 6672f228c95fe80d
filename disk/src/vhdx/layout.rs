//! Loading and validating the structure of a VHDX file: the current header,
//! the log replay, the region table, the metadata items and the BAT. Also
//! every consistency rule `check` reports.

use std::path::Path;

use super::file::Backing;
use super::log::{find_active_sequence, ActiveSequence, Overlay};
use super::spec::*;
use crate::{BlockError, Problem, Result};

/// Everything the structure of a VHDX file says, once validated.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub creator: String,
    /// Index (0 or 1) of the current header.
    pub header_index: usize,
    pub header: Header,
    pub region_table: RegionTable,
    pub bat_region: RegionTableEntry,
    pub metadata_region: RegionTableEntry,
    pub metadata: MetadataTable,
    pub params: FileParameters,
    pub virtual_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub virtual_disk_id: Guid,
    pub parent_locator: Option<ParentLocator>,
    /// parent_linkage, then parent_linkage2 if present.
    pub parent_linkage: Vec<Guid>,
    pub chunk_ratio: u64,
    pub data_blocks: u64,
    pub bat_entries: u64,
    /// The active log sequence found at open, if any.
    pub replay: Option<ActiveSequence>,
    /// Rule violations that do not prevent using the file.
    pub soft_problems: Vec<Problem>,
}

impl Layout {
    pub fn block_size(&self) -> u64 {
        u64::from(self.params.block_size)
    }

    pub fn has_parent(&self) -> bool {
        self.params.has_parent
    }

    /// BAT index of payload block `block` (section 2.5: a sector bitmap
    /// entry follows every `chunk_ratio` payload entries).
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// BAT index of the sector bitmap entry of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// Whether BAT index `i` is a sector bitmap entry.
    pub fn is_bitmap_index(&self, i: u64) -> bool {
        (i + 1).is_multiple_of(self.chunk_ratio + 1)
    }

    /// Bytes of payload block `block` that lie inside the virtual disk.
    pub fn block_extent(&self, block: u64) -> u64 {
        let start = block.saturating_mul(self.block_size());
        self.block_size()
            .min(self.virtual_size.saturating_sub(start))
    }

    /// The file space payload block `block` occupies: its bytes inside the
    /// virtual disk, rounded up to 1 MiB (objects are 1 MiB aligned).
    pub fn block_slot(&self, block: u64) -> u64 {
        self.block_extent(block).div_ceil(MIB) * MIB
    }

    /// Every file range in use (sorted by start): the header section, the
    /// log, the regions and every block the BAT points to.
    pub fn used_ranges(&self, bat: &[u64]) -> Vec<(u64, u64)> {
        let mut used = vec![(0, HEADER_SECTION_SIZE)];
        let (lo, le) = self.log_range();
        if le > lo {
            used.push((lo, le));
        }
        for r in &self.region_table.entries {
            if r.length > 0 {
                used.push((r.file_offset, r.end()));
            }
        }
        let limit = (self.bat_entries as usize).min(bat.len());
        for (i, &raw) in bat.iter().enumerate().take(limit) {
            let (i, e) = (i as u64, BatEntry(raw));
            if self.is_bitmap_index(i) {
                if e.state() == SB_BLOCK_PRESENT {
                    used.push((e.file_offset(), e.file_offset() + SECTOR_BITMAP_BLOCK_SIZE));
                }
            } else if matches!(
                e.state(),
                PAYLOAD_BLOCK_FULLY_PRESENT | PAYLOAD_BLOCK_PARTIALLY_PRESENT
            ) {
                let block = i - i / (self.chunk_ratio + 1);
                used.push((e.file_offset(), e.file_offset() + self.block_slot(block)));
            }
        }
        used.sort_unstable();
        used
    }

    pub fn log_range(&self) -> (u64, u64) {
        (
            self.header.log_offset,
            self.header.log_offset + u64::from(self.header.log_length),
        )
    }
}

pub(crate) fn problem(
    path: &Path,
    structure: &str,
    offset: u64,
    reason: impl Into<String>,
) -> Problem {
    Problem {
        path: path.to_owned(),
        structure: structure.to_owned(),
        offset,
        reason: reason.into(),
    }
}

fn spec_err(path: &Path, e: SpecError) -> BlockError {
    BlockError::Corrupt {
        path: path.to_owned(),
        structure: e.structure,
        offset: e.offset,
        reason: e.reason,
    }
}

/// Reads both headers and picks the current one (section 2.2.2): the valid
/// one, or of two valid ones the one with the larger sequence number. Two
/// valid headers with equal sequence numbers are accepted only when they are
/// identical (Disk2vhd writes them so).
pub(crate) fn read_headers(backing: &Backing) -> Result<(usize, Header, [SpecResult<Header>; 2])> {
    let path = &backing.path;
    let parse = |i: usize| -> Result<SpecResult<Header>> {
        let off = HEADER_OFFSETS[i];
        if off + HEADER_SIZE as u64 > backing.len {
            return Ok(Err(SpecError::new(
                header_name(off),
                off,
                format!(
                    "the file is only {} bytes long; the header needs bytes {}..{} (truncated?)",
                    backing.len,
                    off,
                    off + HEADER_SIZE as u64
                ),
            )));
        }
        let mut buf = vec![0u8; HEADER_SIZE];
        backing.read(off, &mut buf)?;
        Ok(Header::parse(&buf, off))
    };
    let h = [parse(0)?, parse(1)?];
    let current = match (&h[0], &h[1]) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number > b.sequence_number {
                0
            } else if b.sequence_number > a.sequence_number {
                1
            } else if a == b {
                0
            } else {
                return Err(BlockError::Corrupt {
                    path: path.clone(),
                    structure: "headers",
                    offset: HEADER_OFFSETS[0],
                    reason: format!(
                        "both headers are valid with sequence number {} but differ, so neither is current",
                        a.sequence_number
                    ),
                });
            }
        }
        (Ok(_), Err(_)) => 0,
        (Err(_), Ok(_)) => 1,
        (Err(a), Err(b)) => {
            return Err(BlockError::Corrupt {
                path: path.clone(),
                structure: "headers",
                offset: HEADER_OFFSETS[0],
                reason: format!("no valid header: {a}; {b}"),
            })
        }
    };
    let header = match &h[current] {
        Ok(x) => x.clone(),
        Err(e) => return Err(spec_err(path, e.clone())),
    };
    Ok((current, header, h))
}

/// Reads the current header of a VHDX file (for a parent's DataWriteGuid).
pub(crate) fn read_current_header(path: &Path) -> Result<Header> {
    let backing = Backing::open(path, false)?;
    let id = backing.read_structure("file type identifier", 0, 8)?;
    FileIdentifier::parse(&id).map_err(|e| spec_err(path, e))?;
    Ok(read_headers(&backing)?.1)
}

/// Loads and validates the structure of the file. On success the backing's
/// overlay holds the replayed log (nothing is written here) and the BAT is
/// returned as read through it.
pub(crate) fn load(backing: &mut Backing) -> Result<(Layout, Vec<u64>)> {
    let path = backing.path.clone();
    let mut soft = Vec::new();

    // Section 2.2.1.
    let id_len = (backing.len.min(8 + CREATOR_SIZE as u64)) as usize;
    let mut id = vec![0u8; id_len];
    backing.read(0, &mut id)?;
    let creator = FileIdentifier::parse(&id)
        .map_err(|e| spec_err(&path, e))?
        .creator;

    // Section 2.2.2.
    let (header_index, header, both) = read_headers(backing)?;
    for (i, h) in both.iter().enumerate() {
        if let Err(e) = h {
            soft.push(problem(
                &path,
                e.structure,
                e.offset,
                format!(
                    "{} (header {} is current; the spec asks for both copies to be kept valid)",
                    e.reason,
                    header_index + 1
                ),
            ));
        }
        let _ = i;
    }
    let header_name = header_name(HEADER_OFFSETS[header_index]);
    let header_off = HEADER_OFFSETS[header_index];
    let corrupt = |structure: &'static str, offset: u64, reason: String| BlockError::Corrupt {
        path: path.clone(),
        structure,
        offset,
        reason,
    };
    if !header.log_guid.is_zero() && header.log_version != LOG_VERSION {
        return Err(BlockError::Unsupported {
            path: path.clone(),
            reason: format!(
                "{header_name} at offset {header_off}: log version {} is not supported and the log is not empty",
                header.log_version
            ),
        });
    }
    let log_len = u64::from(header.log_length);
    if !log_len.is_multiple_of(MIB) {
        return Err(corrupt(
            header_name,
            header_off,
            format!("log length {log_len} is not a multiple of 1 MiB"),
        ));
    }
    if log_len > 0 {
        if header.log_offset < HEADER_SECTION_SIZE || !header.log_offset.is_multiple_of(MIB) {
            return Err(corrupt(
                header_name,
                header_off,
                format!(
                    "log offset {} is not a multiple of 1 MiB after the header section",
                    header.log_offset
                ),
            ));
        }
        let end = header.log_offset.checked_add(log_len);
        if end.is_none_or(|end| end > backing.len) {
            return Err(corrupt(
                "log",
                header.log_offset,
                format!(
                    "the {log_len}-byte log at {} ends past the end of the {}-byte file",
                    header.log_offset, backing.len
                ),
            ));
        }
    }

    // Section 2.3.3: replay before reading anything else.
    let mut replay = None;
    if !header.log_guid.is_zero() && log_len > 0 {
        let log = backing.read_structure("log", header.log_offset, log_len as usize)?;
        match find_active_sequence(&log, &header.log_guid, header.log_offset) {
            Some(seq) => {
                let head = &seq.head().header;
                if backing.len < head.flushed_file_offset {
                    return Err(corrupt(
                        "log entry",
                        header.log_offset + u64::from(seq.head().log_offset),
                        format!(
                            "the file is {} bytes long but the log's FlushedFileOffset is {}: the file was truncated",
                            backing.len, head.flushed_file_offset
                        ),
                    ));
                }
                let overlay = Overlay::from_sequence(&seq);
                backing.len = backing.len.max(overlay.min_len);
                backing.overlay = overlay;
                replay = Some(seq);
            }
            None => soft.push(problem(
                &path,
                "log",
                header.log_offset,
                format!(
                    "LogGuid {} is set in the header but the log holds no valid entry sequence",
                    header.log_guid
                ),
            )),
        }
    }

    // Section 2.2.3: both region table copies.
    let mut tables: Vec<SpecResult<RegionTable>> = Vec::new();
    for off in REGION_TABLE_OFFSETS {
        let t = match backing.read_structure(region_table_name(off), off, REGION_TABLE_SIZE) {
            Ok(buf) => RegionTable::parse(&buf, off),
            Err(BlockError::Corrupt {
                structure,
                offset,
                reason,
                ..
            }) => Err(SpecError::new(structure, offset, reason)),
            Err(e) => return Err(e),
        };
        tables.push(t);
    }
    let region_table = match (&tables[0], &tables[1]) {
        (Ok(a), Ok(b)) => {
            if a != b {
                soft.push(problem(
                    &path,
                    "region table 2",
                    REGION_TABLE_OFFSETS[1],
                    "differs from region table 1",
                ));
            }
            a.clone()
        }
        (Ok(a), Err(e)) | (Err(e), Ok(a)) => {
            soft.push(problem(
                &path,
                e.structure,
                e.offset,
                format!("{} (the other copy is used)", e.reason),
            ));
            a.clone()
        }
        (Err(a), Err(b)) => {
            return Err(corrupt(
                "region table",
                REGION_TABLE_OFFSETS[0],
                format!("no valid copy: {a}; {b}"),
            ))
        }
    };
    let mut bat_region = None;
    let mut metadata_region = None;
    for e in &region_table.entries {
        if e.guid == BAT_REGION_GUID {
            bat_region = Some(e.clone());
        } else if e.guid == METADATA_REGION_GUID {
            metadata_region = Some(e.clone());
        } else if e.required {
            return Err(BlockError::Unsupported {
                path: path.clone(),
                reason: format!(
                    "region table at offset {}: region {} at file offset {} is marked required but is not known to this implementation",
                    REGION_TABLE_OFFSETS[0], e.guid, e.file_offset
                ),
            });
        }
        let (lo, le) = (header.log_offset, header.log_offset + log_len);
        if log_len > 0 && e.length > 0 && e.file_offset < le && lo < e.end() {
            return Err(corrupt(
                "region table",
                REGION_TABLE_OFFSETS[0],
                format!(
                    "region {} at {}..{} overlaps the log at {lo}..{le}",
                    e.guid,
                    e.file_offset,
                    e.end()
                ),
            ));
        }
    }
    let bat_region = bat_region.ok_or_else(|| {
        corrupt(
            "region table",
            REGION_TABLE_OFFSETS[0],
            "the required BAT region is missing".into(),
        )
    })?;
    let metadata_region = metadata_region.ok_or_else(|| {
        corrupt(
            "region table",
            REGION_TABLE_OFFSETS[0],
            "the required metadata region is missing".into(),
        )
    })?;

    // Section 2.6.
    let md_off = metadata_region.file_offset;
    let md_len = u64::from(metadata_region.length);
    let table_buf = backing.read_structure("metadata table", md_off, METADATA_TABLE_SIZE)?;
    let metadata =
        MetadataTable::parse(&table_buf, md_off, md_len).map_err(|e| spec_err(&path, e))?;
    let known = [
        FILE_PARAMETERS_GUID,
        VIRTUAL_DISK_SIZE_GUID,
        VIRTUAL_DISK_ID_GUID,
        LOGICAL_SECTOR_SIZE_GUID,
        PHYSICAL_SECTOR_SIZE_GUID,
        PARENT_LOCATOR_GUID,
    ];
    for (i, e) in metadata.entries.iter().enumerate() {
        let at = md_off + 32 + 32 * i as u64;
        if e.is_required && (e.is_user || !known.contains(&e.item_id)) {
            return Err(BlockError::Unsupported {
                path: path.clone(),
                reason: format!(
                    "metadata table entry at offset {at}: {} item {} is marked required but is not known to this implementation",
                    if e.is_user { "user" } else { "system" },
                    e.item_id
                ),
            });
        }
        if e.reserved_nonzero {
            soft.push(problem(
                &path,
                "metadata table",
                at,
                format!("item {}: reserved bits are not zero", e.item_id),
            ));
        }
        if !e.is_user && known.contains(&e.item_id) {
            let want_vd = matches!(
                e.item_id,
                VIRTUAL_DISK_SIZE_GUID
                    | VIRTUAL_DISK_ID_GUID
                    | LOGICAL_SECTOR_SIZE_GUID
                    | PHYSICAL_SECTOR_SIZE_GUID
            );
            if !e.is_required || e.is_virtual_disk != want_vd {
                soft.push(problem(
                    &path,
                    "metadata table",
                    at,
                    format!(
                        "item {}: flags IsRequired={} IsVirtualDisk={} differ from the spec's IsRequired=true IsVirtualDisk={want_vd}",
                        e.item_id, e.is_required, e.is_virtual_disk
                    ),
                ));
            }
        }
    }
    let item = |id: &Guid, name: &'static str, min_len: usize| -> Result<Option<(u64, Vec<u8>)>> {
        match metadata.find(id) {
            None => Ok(None),
            Some(e) => {
                let off = md_off + u64::from(e.offset);
                if (e.length as usize) < min_len {
                    return Err(BlockError::Corrupt {
                        path: path.clone(),
                        structure: name,
                        offset: off,
                        reason: format!("item is {} bytes long; it needs {min_len}", e.length),
                    });
                }
                Ok(Some((
                    off,
                    backing.read_structure(name, off, e.length as usize)?,
                )))
            }
        }
    };
    let required = |v: Option<(u64, Vec<u8>)>, name: &str| {
        v.ok_or_else(|| BlockError::Corrupt {
            path: path.clone(),
            structure: "metadata table",
            offset: md_off,
            reason: format!("the required {name} item is missing"),
        })
    };
    let (fp_off, fp) = required(
        item(
            &FILE_PARAMETERS_GUID,
            "file parameters",
            FILE_PARAMETERS_SIZE,
        )?,
        "file parameters",
    )?;
    let params = FileParameters::parse(&fp, fp_off).map_err(|e| spec_err(&path, e))?;
    let (ls_off, ls) = required(
        item(&LOGICAL_SECTOR_SIZE_GUID, "logical sector size", 4)?,
        "logical sector size",
    )?;
    let logical_sector_size =
        parse_sector_size(&ls, ls_off, "logical sector size").map_err(|e| spec_err(&path, e))?;
    let (ps_off, ps) = required(
        item(&PHYSICAL_SECTOR_SIZE_GUID, "physical sector size", 4)?,
        "physical sector size",
    )?;
    let physical_sector_size =
        parse_sector_size(&ps, ps_off, "physical sector size").map_err(|e| spec_err(&path, e))?;
    let (vs_off, vs) = required(
        item(&VIRTUAL_DISK_SIZE_GUID, "virtual disk size", 8)?,
        "virtual disk size",
    )?;
    let virtual_size = parse_virtual_disk_size(&vs, vs_off, logical_sector_size)
        .map_err(|e| spec_err(&path, e))?;
    let (id_off, idb) = required(
        item(&VIRTUAL_DISK_ID_GUID, "page 83 data", 16)?,
        "page 83 data (virtual disk id)",
    )?;
    let virtual_disk_id = parse_virtual_disk_id(&idb, id_off).map_err(|e| spec_err(&path, e))?;

    let locator = item(&PARENT_LOCATOR_GUID, "parent locator", 0)?;
    let mut parent_locator = None;
    let mut parent_linkage = Vec::new();
    if params.has_parent {
        let (pl_off, pl) = locator.ok_or_else(|| {
            corrupt(
                "file parameters",
                fp_off,
                "HasParent is set but there is no parent locator".into(),
            )
        })?;
        let loc = ParentLocator::parse(&pl, pl_off).map_err(|e| spec_err(&path, e))?;
        if loc.locator_type != VHDX_PARENT_LOCATOR_TYPE {
            return Err(BlockError::Unsupported {
                path: path.clone(),
                reason: format!(
                    "parent locator at offset {pl_off}: locator type {} is not the VHDX type {}",
                    loc.locator_type, VHDX_PARENT_LOCATOR_TYPE
                ),
            });
        }
        for key in ["parent_linkage", "parent_linkage2"] {
            match loc.get(key) {
                Some(v) => parent_linkage.push(Guid::parse_text(v).ok_or_else(|| {
                    corrupt(
                        "parent locator",
                        pl_off,
                        format!("{key} \"{v}\" is not a GUID"),
                    )
                })?),
                None if key == "parent_linkage" => {
                    return Err(corrupt(
                        "parent locator",
                        pl_off,
                        "the required parent_linkage entry is missing".into(),
                    ))
                }
                None => {}
            }
        }
        if ["relative_path", "volume_path", "absolute_win32_path"]
            .iter()
            .all(|k| loc.get(k).is_none())
        {
            return Err(corrupt(
                "parent locator",
                pl_off,
                "none of relative_path, volume_path, absolute_win32_path is present".into(),
            ));
        }
        parent_locator = Some(loc);
    }

    let chunk_ratio = chunk_ratio(logical_sector_size, params.block_size);
    let data_blocks = data_block_count(virtual_size, params.block_size);
    let bat_entries = bat_entry_count(
        virtual_size,
        params.block_size,
        logical_sector_size,
        params.has_parent,
    );
    let bat_bytes = bat_entries * 8;
    if bat_bytes > u64::from(bat_region.length) {
        return Err(corrupt(
            "BAT",
            bat_region.file_offset,
            format!(
                "the {}-byte BAT region holds {} entries but the disk needs {bat_entries}",
                bat_region.length,
                bat_region.length / 8
            ),
        ));
    }
    // Read whole 4 KiB pages: the log and our updates work in pages.
    let read_len = bat_bytes
        .div_ceil(LOG_SECTOR_SIZE as u64)
        .saturating_mul(LOG_SECTOR_SIZE as u64)
        .min(u64::from(bat_region.length));
    let raw = backing.read_structure("BAT", bat_region.file_offset, read_len as usize)?;
    let bat: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();

    let layout = Layout {
        creator,
        header_index,
        header,
        region_table,
        bat_region,
        metadata_region,
        metadata,
        params,
        virtual_size,
        logical_sector_size,
        physical_sector_size,
        virtual_disk_id,
        parent_locator,
        parent_linkage,
        chunk_ratio,
        data_blocks,
        bat_entries,
        replay,
        soft_problems: soft,
    };
    let problems = check_bat(&layout, &bat, backing.len, &path);
    if let Some(first) = problems.iter().find(|p| p.1) {
        let more = problems.iter().filter(|p| p.1).count() - 1;
        let structure = if first.0.structure.starts_with("BAT") {
            "BAT entry"
        } else {
            "BAT"
        };
        return Err(BlockError::Corrupt {
            path: path.clone(),
            structure,
            offset: first.0.offset,
            reason: if more > 0 {
                format!("{} (and {more} more BAT problems)", first.0.reason)
            } else {
                first.0.reason.clone()
            },
        });
    }
    let mut layout = layout;
    layout
        .soft_problems
        .extend(problems.into_iter().map(|(p, _)| p));
    Ok((layout, bat))
}

/// Checks every BAT entry (section 2.5): valid states for the image type,
/// blocks inside the file, after the header section, overlapping neither
/// each other, the log nor the regions; sector bitmap blocks present for
/// chunks with partially present blocks; reserved bits zero. Returns each
/// problem with whether it makes the image unusable.
pub(crate) fn check_bat(
    layout: &Layout,
    bat: &[u64],
    file_len: u64,
    path: &Path,
) -> Vec<(Problem, bool)> {
    let mut out: Vec<(Problem, bool)> = Vec::new();
    let bat_off = layout.bat_region.file_offset;
    let entry_off = |i: u64| bat_off + i * 8;
    // (start, end, what): fixed structures first.
    let mut spans: Vec<(u64, u64, Span)> = vec![(0, HEADER_SECTION_SIZE, Span::HeaderSection)];
    let (lo, le) = layout.log_range();
    if le > lo {
        spans.push((lo, le, Span::Log));
    }
    for (i, r) in layout.region_table.entries.iter().enumerate() {
        if r.length > 0 {
            spans.push((r.file_offset, r.end(), Span::Region(i)));
        }
    }
    let mut partial_chunks: Vec<u64> = Vec::new();
    let limit = (layout.bat_entries as usize).min(bat.len());
    for (i, &raw) in bat.iter().enumerate().take(limit) {
        let i = i as u64;
        let e = BatEntry(raw);
        let at = entry_off(i);
        if e.reserved_bits() != 0 {
            out.push((
                problem(
                    path,
                    "BAT entry",
                    at,
                    format!(
                        "entry {i}: reserved bits are {:#x}, not 0",
                        e.reserved_bits()
                    ),
                ),
                false,
            ));
        }
        if layout.is_bitmap_index(i) {
            let chunk = i / (layout.chunk_ratio + 1);
            match e.state() {
                SB_BLOCK_NOT_PRESENT => {}
                SB_BLOCK_PRESENT if layout.has_parent() => {
                    if let Some(p) = check_allocation(
                        e.file_offset(),
                        SECTOR_BITMAP_BLOCK_SIZE,
                        file_len,
                        &format!("entry {i} (sector bitmap block of chunk {chunk})"),
                    ) {
                        out.push((problem(path, "BAT entry", at, p), true));
                    } else {
                        spans.push((
                            e.file_offset(),
                            e.file_offset() + SECTOR_BITMAP_BLOCK_SIZE,
                            Span::Bitmap(i),
                        ));
                    }
                }
                s => out.push((
                    problem(
                        path,
                        "BAT entry",
                        at,
                        format!(
                            "entry {i} (sector bitmap block of chunk {chunk}): state {s} is not valid in a {} image",
                            if layout.has_parent() { "differencing" } else { "non-differencing" }
                        ),
                    ),
                    true,
                )),
            }
            continue;
        }
        let block = i - i / (layout.chunk_ratio + 1);
        match e.state() {
            PAYLOAD_BLOCK_NOT_PRESENT
            | PAYLOAD_BLOCK_UNDEFINED
            | PAYLOAD_BLOCK_ZERO
            | PAYLOAD_BLOCK_UNMAPPED => {}
            s @ (PAYLOAD_BLOCK_FULLY_PRESENT | PAYLOAD_BLOCK_PARTIALLY_PRESENT) => {
                if s == PAYLOAD_BLOCK_PARTIALLY_PRESENT {
                    if !layout.has_parent() {
                        out.push((
                            problem(
                                path,
                                "BAT entry",
                                at,
                                format!(
                                    "entry {i} (block {block}): PARTIALLY_PRESENT is only valid in a differencing image"
                                ),
                            ),
                            true,
                        ));
                        continue;
                    }
                    let chunk = block / layout.chunk_ratio;
                    if partial_chunks.last() != Some(&chunk) {
                        partial_chunks.push(chunk);
                    }
                }
                let extent = layout.block_extent(block);
                if extent == 0 {
                    out.push((
                        problem(
                            path,
                            "BAT entry",
                            at,
                            format!(
                                "entry {i}: block {block} lies past the end of the virtual disk but is {}",
                                payload_state_name(s)
                            ),
                        ),
                        false,
                    ));
                    continue;
                }
                if let Some(p) = check_allocation(
                    e.file_offset(),
                    extent,
                    file_len,
                    &format!("entry {i} (block {block}, {})", payload_state_name(s)),
                ) {
                    out.push((problem(path, "BAT entry", at, p), true));
                } else {
                    spans.push((e.file_offset(), e.file_offset() + extent, Span::Block(i)));
                }
            }
            s => out.push((
                problem(
                    path,
                    "BAT entry",
                    at,
                    format!("entry {i} (block {block}): state {s} is reserved"),
                ),
                true,
            )),
        }
    }
    for chunk in partial_chunks {
        let i = layout.bitmap_index(chunk);
        let state = bat.get(i as usize).map(|&r| BatEntry(r).state());
        if state != Some(SB_BLOCK_PRESENT) {
            out.push((
                problem(
                    path,
                    "BAT entry",
                    entry_off(i),
                    format!(
                        "entry {i}: chunk {chunk} has PARTIALLY_PRESENT blocks but its sector bitmap block is not present"
                    ),
                ),
                true,
            ));
        }
    }
    // Overlaps: sweep the spans in file order.
    spans.sort_by_key(|s| (s.0, s.1));
    let mut reach: Option<(u64, Span)> = None;
    for &(start, end, what) in &spans {
        if let Some((r_end, r_what)) = reach {
            if start < r_end {
                let (victim, other) = match (what, r_what) {
                    (Span::Block(_) | Span::Bitmap(_), _) => (what, r_what),
                    _ => (r_what, what),
                };
                let at = match victim {
                    Span::Block(i) | Span::Bitmap(i) => entry_off(i),
                    _ => start,
                };
                out.push((
                    problem(
                        path,
                        if matches!(victim, Span::Block(_) | Span::Bitmap(_)) {
                            "BAT entry"
                        } else {
                            "region table"
                        },
                        at,
                        format!(
                            "{} overlaps {}",
                            victim.describe(layout, bat),
                            other.describe(layout, bat)
                        ),
                    ),
                    true,
                ));
            }
        }
        if reach.is_none_or(|(r_end, _)| end > r_end) {
            reach = Some((end, what));
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Span {
    HeaderSection,
    Log,
    Region(usize),
    Block(u64),
    Bitmap(u64),
}

impl Span {
    fn describe(self, layout: &Layout, bat: &[u64]) -> String {
        let off = |i: u64| {
            bat.get(i as usize)
                .map(|&r| BatEntry(r).file_offset())
                .unwrap_or(0)
        };
        match self {
            Span::HeaderSection => "the header section (0..1 MiB)".into(),
            Span::Log => {
                let (a, b) = layout.log_range();
                format!("the log at {a}..{b}")
            }
            Span::Region(i) => {
                let r = &layout.region_table.entries[i];
                let name = if r.guid == BAT_REGION_GUID {
                    "the BAT region".to_string()
                } else if r.guid == METADATA_REGION_GUID {
                    "the metadata region".to_string()
                } else {
                    format!("region {}", r.guid)
                };
                format!("{name} at {}..{}", r.file_offset, r.end())
            }
            Span::Block(i) => {
                let block = i - i / (layout.chunk_ratio + 1);
                format!(
                    "BAT entry {i} (payload block {block} at file offset {})",
                    off(i)
                )
            }
            Span::Bitmap(i) => format!(
                "BAT entry {i} (sector bitmap block at file offset {})",
                off(i)
            ),
        }
    }
}

fn check_allocation(offset: u64, len: u64, file_len: u64, what: &str) -> Option<String> {
    if offset < HEADER_SECTION_SIZE {
        return Some(format!(
            "{what}: file offset {offset} lies inside the 1 MiB header section"
        ));
    }
    if offset.saturating_add(len) > file_len {
        return Some(format!(
            "{what}: bytes {offset}..{} lie past the end of the {file_len}-byte file",
            offset.saturating_add(len)
        ));
    }
    None
}
