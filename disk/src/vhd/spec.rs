//! On-disk layouts of the VHD format, from Microsoft's "Virtual Hard Disk
//! Image Format Specification" version 1.0 (October 2006), and the pure
//! functions that parse and build them. Nothing here does I/O: the callers
//! read the bytes and turn a [`SpecError`] into an error naming the file.
//!
//! All multi-byte fields are big-endian.

/// Size of the hard disk footer ("Hard Disk Footer Format").
pub const FOOTER_SIZE: usize = 512;
/// Some old tools wrote 511-byte footers at the end of fixed disks
/// ("Hard Disk Footer Format": "...versions prior to Microsoft Virtual PC
/// 2004 create disk images that have a 511-byte disk footer").
pub const OLD_FOOTER_SIZE: usize = 511;
/// Size of the dynamic disk header ("Dynamic Disk Header Format").
pub const DYNAMIC_HEADER_SIZE: usize = 1024;
/// The sector size every VHD structure is counted in.
pub const SECTOR: u64 = 512;
/// "Hard Disk Footer Format", Cookie.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// "Dynamic Disk Header Format", Cookie.
pub const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
/// "Hard Disk Footer Format", File Format Version (major 1, minor 0).
pub const FILE_FORMAT_VERSION: u32 = 0x0001_0000;
/// "Dynamic Disk Header Format", Header Version.
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// "Hard Disk Footer Format", Features: the reserved bit that must be set.
pub const FEATURE_RESERVED: u32 = 0x0000_0002;
/// "Hard Disk Footer Format", Data Offset of a fixed disk.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// "Block Allocation Table": an entry for a block that is not allocated.
pub const BAT_UNUSED: u32 = 0xFFFF_FFFF;
/// Seconds between 1970-01-01 and 2000-01-01 00:00:00 UTC, the epoch of
/// every VHD time stamp ("Hard Disk Footer Format", Time Stamp).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;
/// The largest CHS geometry: 65535 cylinders, 16 heads, 255 sectors per
/// track ("Appendix: CHS Calculation").
pub const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
/// Microsoft's limit on a VHD's size: 2040 GiB.
pub const MAX_DISK_SIZE: u64 = 2040 * 1024 * 1024 * 1024;
/// The block size Microsoft's tools use by default (2 MiB).
pub const DEFAULT_BLOCK_SIZE: u32 = 2 * 1024 * 1024;
/// Number of parent locator entries in the dynamic header.
pub const PARENT_LOCATOR_COUNT: usize = 8;
/// Bytes of the Parent Unicode Name field.
pub const PARENT_NAME_SIZE: usize = 512;

/// Why a structure could not be parsed: the structure's name, the offset of
/// the offending field inside the structure, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub structure: &'static str,
    pub field_offset: u64,
    pub reason: String,
}

impl SpecError {
    fn new(structure: &'static str, field_offset: u64, reason: impl Into<String>) -> Self {
        SpecError {
            structure,
            field_offset,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (field at +{}): {}",
            self.structure, self.field_offset, self.reason
        )
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// "Hard Disk Footer Format", Checksum: the one's complement of the sum of
/// all bytes of the structure, with the checksum field itself counted as
/// zero.
pub fn checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// The cookie and the checksum every VHD structure starts with and
/// carries; returns the stored checksum.
fn check_cookie_and_checksum(
    structure: &'static str,
    bytes: &[u8],
    cookie: &[u8; 8],
    checksum_at: usize,
) -> Result<u32, SpecError> {
    if &bytes[..8] != cookie {
        return Err(SpecError::new(
            structure,
            0,
            format!(
                "bad cookie {:?}, expected {:?}",
                String::from_utf8_lossy(&bytes[..8]),
                String::from_utf8_lossy(cookie)
            ),
        ));
    }
    let stored = be32(bytes, checksum_at);
    let computed = checksum(bytes, checksum_at);
    if stored != computed {
        return Err(SpecError::new(
            structure,
            checksum_at as u64,
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(stored)
}

/// "Hard Disk Footer Format", Disk Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
}

/// "Hard Disk Footer Format", Disk Geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chs {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Chs {
    pub fn total_sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// "Appendix: CHS Calculation": the geometry a disk of `size` bytes
    /// reports.
    pub fn for_size(size: u64) -> Chs {
        let total = (size / SECTOR).min(MAX_CHS_SECTORS);
        let (spt, heads, cyl_times_heads);
        if total >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cyl_times_heads = total / spt;
        } else {
            let mut s = 17;
            let mut cth = total / s;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                cth = total / s;
            }
            if cth >= h * 1024 {
                s = 63;
                h = 16;
                cth = total / s;
            }
            spt = s;
            heads = h;
            cyl_times_heads = cth;
        }
        Chs {
            cylinders: (cyl_times_heads / heads).min(65535) as u16,
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }
}

/// The hard disk footer ("Hard Disk Footer Format"): 512 bytes at the end
/// of every VHD, with a copy at offset 0 of dynamic and differencing disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    pub file_format_version: u32,
    /// Absolute offset of the dynamic header; [`NO_DATA_OFFSET`] for fixed
    /// disks.
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    pub creator_application: [u8; 4],
    pub creator_version: u32,
    pub creator_host_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Chs,
    pub disk_type: DiskType,
    pub checksum: u32,
    pub unique_id: [u8; 16],
    pub saved_state: u8,
}

impl Footer {
    /// Field offsets inside the footer.
    pub const COOKIE_AT: usize = 0;
    pub const DATA_OFFSET_AT: usize = 16;
    pub const CURRENT_SIZE_AT: usize = 48;
    pub const DISK_TYPE_AT: usize = 60;
    pub const CHECKSUM_AT: usize = 64;

    /// Parses a footer (512 bytes, or 511 for the footers of old fixed
    /// disks). The checksum is verified.
    pub fn parse(bytes: &[u8]) -> Result<Footer, SpecError> {
        const S: &str = "VHD footer";
        if bytes.len() != FOOTER_SIZE && bytes.len() != OLD_FOOTER_SIZE {
            return Err(SpecError::new(
                S,
                0,
                format!("is {} bytes, expected {FOOTER_SIZE}", bytes.len()),
            ));
        }
        let stored = check_cookie_and_checksum(S, bytes, FOOTER_COOKIE, Self::CHECKSUM_AT)?;
        let version = be32(bytes, 12);
        if version >> 16 != 1 {
            return Err(SpecError::new(
                S,
                12,
                format!("unsupported file format version {version:#010x}"),
            ));
        }
        let disk_type = match be32(bytes, Self::DISK_TYPE_AT) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            other => {
                return Err(SpecError::new(
                    S,
                    Self::DISK_TYPE_AT as u64,
                    format!("unknown disk type {other}"),
                ))
            }
        };
        let current_size = be64(bytes, Self::CURRENT_SIZE_AT);
        if !current_size.is_multiple_of(SECTOR) {
            return Err(SpecError::new(
                S,
                Self::CURRENT_SIZE_AT as u64,
                format!("current size {current_size} is not a multiple of 512"),
            ));
        }
        let data_offset = be64(bytes, Self::DATA_OFFSET_AT);
        if disk_type != DiskType::Fixed
            && (data_offset == NO_DATA_OFFSET || !data_offset.is_multiple_of(512))
        {
            return Err(SpecError::new(
                S,
                Self::DATA_OFFSET_AT as u64,
                format!("data offset {data_offset:#x} of a dynamic disk is not a sector offset"),
            ));
        }
        let mut creator_application = [0u8; 4];
        creator_application.copy_from_slice(&bytes[28..32]);
        let mut creator_host_os = [0u8; 4];
        creator_host_os.copy_from_slice(&bytes[36..40]);
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&bytes[68..84]);
        Ok(Footer {
            features: be32(bytes, 8),
            file_format_version: version,
            data_offset,
            timestamp: be32(bytes, 24),
            creator_application,
            creator_version: be32(bytes, 32),
            creator_host_os,
            original_size: be64(bytes, 40),
            current_size,
            geometry: Chs {
                cylinders: be16(bytes, 56),
                heads: bytes[58],
                sectors_per_track: bytes[59],
            },
            disk_type,
            checksum: stored,
            unique_id,
            saved_state: bytes[84],
        })
    }

    /// Serializes the footer with a freshly computed checksum.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(FOOTER_COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.file_format_version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_application);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_host_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[58] = self.geometry.heads;
        b[59] = self.geometry.sectors_per_track;
        b[60..64].copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[68..84].copy_from_slice(&self.unique_id);
        b[84] = self.saved_state;
        let sum = checksum(&b, Self::CHECKSUM_AT);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The size the guest sees. Hyper-V, Disk2vhd, XenServer and every
    /// tool since use the footer's current size; Virtual PC ("vpc ") and
    /// older QEMU ("qemu") size the disk by its CHS geometry, and their
    /// current size may be larger than what they expose. A CHS geometry at
    /// the maximum means the size did not fit CHS: then the current size
    /// holds for every creator.
    pub fn virtual_size(&self) -> u64 {
        let uses_chs = matches!(&self.creator_application, b"vpc " | b"qemu");
        let chs = self.geometry.total_sectors();
        if uses_chs && chs != MAX_CHS_SECTORS && chs != 0 {
            chs * SECTOR
        } else {
            self.current_size
        }
    }
}

/// Platform codes of parent locator entries ("Dynamic Disk Header Format",
/// Parent Locator Entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformCode {
    /// No locator.
    None,
    /// Deprecated Windows code (Wi2r).
    Wi2r,
    /// Deprecated Windows code (Wi2k).
    Wi2k,
    /// Windows relative path, UTF-16LE.
    W2ru,
    /// Windows absolute path, UTF-16LE.
    W2ku,
    /// Mac OS alias stored as a blob.
    Mac,
    /// Mac OS X file URL, UTF-8.
    MacX,
    Unknown(u32),
}

impl PlatformCode {
    pub fn from_u32(v: u32) -> Self {
        match &v.to_be_bytes() {
            [0, 0, 0, 0] => PlatformCode::None,
            b"Wi2r" => PlatformCode::Wi2r,
            b"Wi2k" => PlatformCode::Wi2k,
            b"W2ru" => PlatformCode::W2ru,
            b"W2ku" => PlatformCode::W2ku,
            b"Mac " => PlatformCode::Mac,
            b"MacX" => PlatformCode::MacX,
            _ => PlatformCode::Unknown(v),
        }
    }

    pub fn to_u32(self) -> u32 {
        let b: &[u8; 4] = match self {
            PlatformCode::None => return 0,
            PlatformCode::Unknown(v) => return v,
            PlatformCode::Wi2r => b"Wi2r",
            PlatformCode::Wi2k => b"Wi2k",
            PlatformCode::W2ru => b"W2ru",
            PlatformCode::W2ku => b"W2ku",
            PlatformCode::Mac => b"Mac ",
            PlatformCode::MacX => b"MacX",
        };
        u32::from_be_bytes(*b)
    }

    pub fn name(self) -> String {
        match self {
            PlatformCode::None => "none".into(),
            PlatformCode::Unknown(v) => format!("{v:#010x}"),
            other => String::from_utf8_lossy(&other.to_u32().to_be_bytes())
                .trim_end()
                .to_string(),
        }
    }
}

/// One parent locator entry (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLocator {
    pub platform: PlatformCode,
    /// Space reserved for the locator. The specification counts it in
    /// sectors; Windows writes bytes. Values below 512 are taken as
    /// sectors, others as bytes (see [`ParentLocator::space_bytes`]).
    pub data_space: u32,
    /// Bytes of locator data.
    pub data_length: u32,
    /// Absolute file offset of the locator data.
    pub data_offset: u64,
}

impl ParentLocator {
    pub const SIZE: usize = 24;

    pub fn space_bytes(&self) -> u64 {
        if self.data_space < 512 {
            u64::from(self.data_space) * SECTOR
        } else {
            u64::from(self.data_space)
        }
    }

    pub fn is_used(&self) -> bool {
        self.platform != PlatformCode::None
    }
}

/// The dynamic disk header ("Dynamic Disk Header Format"), 1024 bytes at
/// the footer's data offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    pub data_offset: u64,
    /// Absolute offset of the block allocation table.
    pub table_offset: u64,
    pub header_version: u32,
    pub max_table_entries: u32,
    pub block_size: u32,
    pub checksum: u32,
    pub parent_unique_id: [u8; 16],
    /// Modification time of the parent, seconds since 2000-01-01 UTC.
    pub parent_timestamp: u32,
    /// Parent file name, UTF-16 big-endian, up to 256 code units.
    pub parent_unicode_name: Vec<u16>,
    pub parent_locators: [ParentLocator; PARENT_LOCATOR_COUNT],
}

impl DynamicHeader {
    pub const TABLE_OFFSET_AT: usize = 16;
    pub const MAX_TABLE_ENTRIES_AT: usize = 28;
    pub const BLOCK_SIZE_AT: usize = 32;
    pub const CHECKSUM_AT: usize = 36;
    pub const PARENT_TIMESTAMP_AT: usize = 56;
    pub const PARENT_NAME_AT: usize = 64;
    pub const LOCATORS_AT: usize = 576;

    /// Parses and validates a dynamic header on its own (the BAT's place in
    /// the file is checked by the caller, who knows the file's length).
    pub fn parse(bytes: &[u8]) -> Result<DynamicHeader, SpecError> {
        const S: &str = "VHD dynamic header";
        if bytes.len() != DYNAMIC_HEADER_SIZE {
            return Err(SpecError::new(
                S,
                0,
                format!("is {} bytes, expected {DYNAMIC_HEADER_SIZE}", bytes.len()),
            ));
        }
        let stored = check_cookie_and_checksum(S, bytes, DYNAMIC_COOKIE, Self::CHECKSUM_AT)?;
        let header_version = be32(bytes, 24);
        if header_version >> 16 != 1 {
            return Err(SpecError::new(
                S,
                24,
                format!("unsupported header version {header_version:#010x}"),
            ));
        }
        let table_offset = be64(bytes, Self::TABLE_OFFSET_AT);
        if !table_offset.is_multiple_of(SECTOR) {
            return Err(SpecError::new(
                S,
                Self::TABLE_OFFSET_AT as u64,
                format!("table offset {table_offset:#x} is not sector aligned"),
            ));
        }
        let block_size = be32(bytes, Self::BLOCK_SIZE_AT);
        if !block_size.is_power_of_two() || u64::from(block_size) < SECTOR {
            return Err(SpecError::new(
                S,
                Self::BLOCK_SIZE_AT as u64,
                format!("block size {block_size} is not a power of two of at least 512"),
            ));
        }
        let mut parent_unique_id = [0u8; 16];
        parent_unique_id.copy_from_slice(&bytes[40..56]);
        let name_bytes = &bytes[Self::PARENT_NAME_AT..Self::PARENT_NAME_AT + PARENT_NAME_SIZE];
        let parent_unicode_name: Vec<u16> = name_bytes
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let mut parent_locators = [ParentLocator {
            platform: PlatformCode::None,
            data_space: 0,
            data_length: 0,
            data_offset: 0,
        }; PARENT_LOCATOR_COUNT];
        for (i, loc) in parent_locators.iter_mut().enumerate() {
            let at = Self::LOCATORS_AT + i * ParentLocator::SIZE;
            *loc = ParentLocator {
                platform: PlatformCode::from_u32(be32(bytes, at)),
                data_space: be32(bytes, at + 4),
                data_length: be32(bytes, at + 8),
                data_offset: be64(bytes, at + 16),
            };
        }
        Ok(DynamicHeader {
            data_offset: be64(bytes, 8),
            table_offset,
            header_version,
            max_table_entries: be32(bytes, Self::MAX_TABLE_ENTRIES_AT),
            block_size,
            checksum: stored,
            parent_unique_id,
            parent_timestamp: be32(bytes, Self::PARENT_TIMESTAMP_AT),
            parent_unicode_name,
            parent_locators,
        })
    }

    /// Serializes the header with a freshly computed checksum.
    pub fn to_bytes(&self) -> [u8; DYNAMIC_HEADER_SIZE] {
        let mut b = [0u8; DYNAMIC_HEADER_SIZE];
        b[..8].copy_from_slice(DYNAMIC_COOKIE);
        b[8..16].copy_from_slice(&self.data_offset.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.header_version.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_unique_id);
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, c) in self
            .parent_unicode_name
            .iter()
            .take(PARENT_NAME_SIZE / 2)
            .enumerate()
        {
            b[Self::PARENT_NAME_AT + 2 * i..Self::PARENT_NAME_AT + 2 * i + 2]
                .copy_from_slice(&c.to_be_bytes());
        }
        for (i, loc) in self.parent_locators.iter().enumerate() {
            let at = Self::LOCATORS_AT + i * ParentLocator::SIZE;
            b[at..at + 4].copy_from_slice(&loc.platform.to_u32().to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&loc.data_space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&loc.data_length.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&loc.data_offset.to_be_bytes());
        }
        let sum = checksum(&b, Self::CHECKSUM_AT);
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Bytes of the sector bitmap in front of each block, padded to a
    /// sector ("Block Allocation Table and Data Blocks").
    pub fn bitmap_size(&self) -> u64 {
        bitmap_size(self.block_size)
    }

    /// Bytes the BAT occupies in the file, padded to a sector.
    pub fn table_size(&self) -> u64 {
        (u64::from(self.max_table_entries) * 4).div_ceil(SECTOR) * SECTOR
    }
}

/// Bytes of a block's sector bitmap: one bit per sector, padded to 512.
pub fn bitmap_size(block_size: u32) -> u64 {
    (u64::from(block_size) / SECTOR)
        .div_ceil(8)
        .div_ceil(SECTOR)
        .max(1)
        * SECTOR
}

/// Decodes a block allocation table: big-endian sector offsets, one per
/// block, [`BAT_UNUSED`] for blocks that are not allocated. A trailing
/// partial entry is an error.
pub fn parse_bat(bytes: &[u8]) -> Result<Vec<u32>, SpecError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(SpecError::new(
            "VHD block allocation table",
            (bytes.len() - bytes.len() % 4) as u64,
            format!("{} bytes is not a whole number of entries", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Whether sector `index` of a block is marked present in its sector
/// bitmap. Bit 7 of byte 0 is the block's first sector.
pub fn bitmap_bit(bitmap: &[u8], index: u64) -> bool {
    let byte = (index / 8) as usize;
    byte < bitmap.len() && bitmap[byte] & (0x80 >> (index % 8)) != 0
}

/// Marks sectors `first..first + count` present in a sector bitmap.
pub fn bitmap_set(bitmap: &mut [u8], first: u64, count: u64) {
    for i in first..first + count {
        let byte = (i / 8) as usize;
        if byte < bitmap.len() {
            bitmap[byte] |= 0x80 >> (i % 8);
        }
    }
}

/// Decodes locator data according to its platform code into a path
/// string: UTF-16LE for the Windows codes, a `file://` URL for MacX.
/// Returns `None` for codes that hold no path (Mac aliases, unknown codes).
pub fn decode_locator(platform: PlatformCode, data: &[u8]) -> Result<Option<String>, SpecError> {
    const S: &str = "VHD parent locator";
    match platform {
        PlatformCode::W2ru | PlatformCode::W2ku | PlatformCode::Wi2r | PlatformCode::Wi2k => {
            if !data.len().is_multiple_of(2) {
                return Err(SpecError::new(
                    S,
                    0,
                    format!("UTF-16 data of odd length {}", data.len()),
                ));
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            String::from_utf16(&units)
                .map(Some)
                .map_err(|_| SpecError::new(S, 0, "locator is not valid UTF-16"))
        }
        PlatformCode::MacX => {
            let text = std::str::from_utf8(data)
                .map_err(|_| SpecError::new(S, 0, "MacX locator is not valid UTF-8"))?
                .trim_end_matches('\0');
            Ok(Some(file_url_to_path(text).ok_or_else(|| {
                SpecError::new(S, 0, format!("MacX locator {text:?} is not a file:// URL"))
            })?))
        }
        _ => Ok(None),
    }
}

/// `file://localhost/dir/a%20b.vhd` -> `/dir/a b.vhd`.
pub fn file_url_to_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("file://")?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return None;
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `/dir/a b.vhd` -> `file://localhost/dir/a%20b.vhd`.
pub fn path_to_file_url(path: &str) -> String {
    let mut url = String::from("file://localhost");
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// Encodes a string as UTF-16LE, as the Windows locators hold it.
pub fn encode_utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|c| c.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_footer(disk_type: DiskType) -> Footer {
        Footer {
            features: FEATURE_RESERVED,
            file_format_version: FILE_FORMAT_VERSION,
            data_offset: if disk_type == DiskType::Fixed {
                NO_DATA_OFFSET
            } else {
                512
            },
            timestamp: 0x1234_5678,
            creator_application: *b"win ",
            creator_version: 0x000a_0000,
            creator_host_os: *b"Wi2k",
            original_size: 64 << 20,
            current_size: 64 << 20,
            geometry: Chs::for_size(64 << 20),
            disk_type,
            checksum: 0,
            unique_id: [7; 16],
            saved_state: 0,
        }
    }

    #[test]
    fn footer_round_trips_with_checksum() {
        let f = sample_footer(DiskType::Dynamic);
        let bytes = f.to_bytes();
        let parsed = Footer::parse(&bytes).unwrap();
        assert_eq!(parsed.checksum, checksum(&bytes, Footer::CHECKSUM_AT));
        assert_eq!(
            Footer {
                checksum: 0,
                ..parsed
            },
            f
        );
        // 511-byte footers of old fixed disks parse too.
        let f = sample_footer(DiskType::Fixed);
        let bytes = f.to_bytes();
        assert!(Footer::parse(&bytes[..511]).is_ok());
    }

    #[test]
    fn footer_errors_name_the_field() {
        let mut bytes = sample_footer(DiskType::Dynamic).to_bytes();
        bytes[100] ^= 1;
        let e = Footer::parse(&bytes).unwrap_err();
        assert_eq!(e.field_offset, 64);
        assert!(e.reason.contains("checksum mismatch"), "{e}");
        bytes[0] = b'x';
        let e = Footer::parse(&bytes).unwrap_err();
        assert_eq!(e.field_offset, 0);
        assert!(e.reason.contains("bad cookie"), "{e}");
        let e = Footer::parse(&bytes[..100]).unwrap_err();
        assert!(e.reason.contains("is 100 bytes"), "{e}");
        // Unknown disk type with a valid checksum.
        let mut bytes = sample_footer(DiskType::Dynamic).to_bytes();
        bytes[63] = 9;
        let sum = checksum(&bytes, 64);
        bytes[64..68].copy_from_slice(&sum.to_be_bytes());
        let e = Footer::parse(&bytes).unwrap_err();
        assert_eq!(e.field_offset, 60);
    }

    #[test]
    fn checksum_matches_a_qemu_made_footer() {
        // First 96 bytes of `qemu-img create -f vpc q.vhd 1G` (QEMU 7.2),
        // the rest zero: the stored checksum 0xffffeee0 is the one's
        // complement of the byte sum.
        let mut b = [0u8; 512];
        let head: [u8; 86] = [
            0x63, 0x6f, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x78, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0,
            0, 2, 0, 0x32, 0x9a, 0x3a, 0x0b, 0x71, 0x65, 0x6d, 0x75, 0, 5, 0, 3, 0x57, 0x69, 0x32,
            0x6b, 0, 0, 0, 0, 0x40, 0x03, 0xe0, 0, 0, 0, 0, 0, 0x40, 0x03, 0xe0, 0, 0x08, 0x21,
            0x10, 0x3f, 0, 0, 0, 3, 0xff, 0xff, 0xee, 0xe0, 0xa1, 0x02, 0xc6, 0x8f, 0x8b, 0x24,
            0x40, 0x17, 0xb9, 0x40, 0xcd, 0xa8, 0x8e, 0x0a, 0xa8, 0x22, 0, 0,
        ];
        b[..86].copy_from_slice(&head);
        let f = Footer::parse(&b).unwrap();
        assert_eq!(f.checksum, 0xffff_eee0);
        assert_eq!(f.creator_application, *b"qemu");
        // "qemu" sizes by CHS: 2081 * 16 * 63 sectors.
        assert_eq!(f.virtual_size(), 1_073_995_776);
        assert_eq!(
            f.geometry,
            Chs {
                cylinders: 2081,
                heads: 16,
                sectors_per_track: 63
            }
        );
    }

    #[test]
    fn chs_follows_the_appendix() {
        // The specification's algorithm for these sizes: the geometry is
        // rounded down and may cover a little less than the disk. qemu-img
        // 7.2 does not write these: it repeats the calculation one sector
        // larger until the geometry covers the whole disk, so for 1 GiB it
        // writes 2081 cylinders (the QEMU-made footer above) and for
        // 100 MiB 1004/12/17. tests/vhd_interop.rs checks that rounding
        // against images qemu-img makes.
        assert_eq!(
            Chs::for_size(1 << 30),
            Chs {
                cylinders: 2080,
                heads: 16,
                sectors_per_track: 63
            }
        );
        assert_eq!(
            Chs::for_size(100 << 20),
            Chs {
                cylinders: 1003,
                heads: 12,
                sectors_per_track: 17
            }
        );
        let big = Chs::for_size(136_365_211_648);
        assert_eq!((big.heads, big.sectors_per_track), (16, 255));
        assert_eq!(
            Chs::for_size(u64::MAX),
            Chs {
                cylinders: 65535,
                heads: 16,
                sectors_per_track: 255
            }
        );
        assert_eq!(Chs::for_size(0).total_sectors(), 0);
    }

    #[test]
    fn virtual_size_follows_the_creator() {
        let mut f = sample_footer(DiskType::Dynamic);
        f.current_size = 136_365_211_648;
        f.geometry = Chs {
            cylinders: 0xfefe,
            heads: 16,
            sectors_per_track: 255,
        };
        f.creator_application = *b"win ";
        assert_eq!(f.virtual_size(), 136_365_211_648);
        f.creator_application = *b"vpc ";
        assert_eq!(f.virtual_size(), 136_363_130_880);
        f.geometry = Chs {
            cylinders: 65535,
            heads: 16,
            sectors_per_track: 255,
        };
        assert_eq!(f.virtual_size(), 136_365_211_648);
        f.creator_application = *b"d2v ";
        assert_eq!(f.virtual_size(), 136_365_211_648);
    }

    fn sample_header() -> DynamicHeader {
        let mut locators = [ParentLocator {
            platform: PlatformCode::None,
            data_space: 0,
            data_length: 0,
            data_offset: 0,
        }; PARENT_LOCATOR_COUNT];
        locators[0] = ParentLocator {
            platform: PlatformCode::W2ru,
            data_space: 512,
            data_length: 20,
            data_offset: 4096,
        };
        DynamicHeader {
            data_offset: NO_DATA_OFFSET,
            table_offset: 1536,
            header_version: HEADER_VERSION,
            max_table_entries: 32,
            block_size: DEFAULT_BLOCK_SIZE,
            checksum: 0,
            parent_unique_id: [3; 16],
            parent_timestamp: 99,
            parent_unicode_name: "parent.vhd".encode_utf16().collect(),
            parent_locators: locators,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = sample_header();
        let bytes = h.to_bytes();
        let parsed = DynamicHeader::parse(&bytes).unwrap();
        assert_eq!(
            DynamicHeader {
                checksum: 0,
                ..parsed.clone()
            },
            h
        );
        assert_eq!(parsed.bitmap_size(), 512);
        assert_eq!(parsed.table_size(), 512);
        let mut bad = bytes;
        bad[700] ^= 0x10;
        let e = DynamicHeader::parse(&bad).unwrap_err();
        assert_eq!(e.field_offset, 36);
        let mut bad = bytes;
        bad[1] = b'X';
        assert!(DynamicHeader::parse(&bad)
            .unwrap_err()
            .reason
            .contains("bad cookie"));
        let mut h2 = h.clone();
        h2.block_size = 3000;
        let e = DynamicHeader::parse(&h2.to_bytes()).unwrap_err();
        assert_eq!(e.field_offset, 32);
        let mut h3 = h;
        h3.table_offset = 1537;
        let e = DynamicHeader::parse(&h3.to_bytes()).unwrap_err();
        assert_eq!(e.field_offset, 16);
        assert!(DynamicHeader::parse(&bytes[..1000]).is_err());
    }

    #[test]
    fn bat_and_bitmaps() {
        let bat = parse_bat(&[0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(bat, vec![3, BAT_UNUSED]);
        assert!(parse_bat(&[0, 0, 0]).is_err());
        let mut bm = vec![0u8; 512];
        bitmap_set(&mut bm, 0, 1);
        bitmap_set(&mut bm, 9, 3);
        assert_eq!(bm[0], 0x80);
        assert_eq!(bm[1], 0b0111_0000);
        assert!(bitmap_bit(&bm, 0) && !bitmap_bit(&bm, 1) && bitmap_bit(&bm, 11));
        assert!(!bitmap_bit(&bm, 1 << 20));
        assert_eq!(bitmap_size(512), 512);
        assert_eq!(bitmap_size(2 << 20), 512);
        assert_eq!(bitmap_size(4 << 20), 1024);
        assert_eq!(bitmap_size(256 << 20), 64 * 1024);
    }

    #[test]
    fn locators_decode() {
        let data = encode_utf16le(".\\dir\\parent.vhd");
        assert_eq!(
            decode_locator(PlatformCode::W2ru, &data).unwrap().unwrap(),
            ".\\dir\\parent.vhd"
        );
        assert!(decode_locator(PlatformCode::W2ku, &[0x41]).is_err());
        let url = path_to_file_url("/tmp/a b/p.vhd");
        assert_eq!(url, "file://localhost/tmp/a%20b/p.vhd");
        assert_eq!(
            decode_locator(PlatformCode::MacX, url.as_bytes())
                .unwrap()
                .unwrap(),
            "/tmp/a b/p.vhd"
        );
        assert_eq!(file_url_to_path("file:///x/y.vhd").unwrap(), "/x/y.vhd");
        assert!(file_url_to_path("http://x/y").is_none());
        assert!(file_url_to_path("file:///x%zz").is_none());
        assert!(file_url_to_path("file:///x%4").is_some());
        assert_eq!(decode_locator(PlatformCode::Mac, b"alias").unwrap(), None);
        assert_eq!(
            PlatformCode::from_u32(PlatformCode::MacX.to_u32()),
            PlatformCode::MacX
        );
        assert_eq!(PlatformCode::W2ku.name(), "W2ku");
        assert_eq!(PlatformCode::Mac.name(), "Mac");
    }
}
