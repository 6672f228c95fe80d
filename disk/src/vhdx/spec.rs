//! On-disk layouts of [MS-VHDX] (v8.0, 2024): every structure's fields,
//! signatures, GUIDs and checksums, with parsers that validate one structure
//! at a time and builders that produce its exact bytes.
//!
//! Nothing here touches a file: parsers take byte slices (plus the file
//! offset the bytes came from, so errors can name it) and return
//! [`SpecError`] naming the structure, the offset and the reason. Behaviour
//! (choosing the current header, replaying the log, reading blocks) lives in
//! the sibling modules. The parsers are `pub` so the fuzz targets in
//! `disk/fuzz/` can drive them with arbitrary bytes.

use std::fmt;

/// 1 MiB: the alignment of every object in a VHDX file (section 2.1).
pub const MIB: u64 = 1 << 20;
/// 64 KiB: the size of each item of the header section (section 2.2).
pub const KIB64: u64 = 64 << 10;

/// Section 2.2: the header section is the first megabyte of the file.
pub const HEADER_SECTION_SIZE: u64 = MIB;
/// Section 2.2.1: the file type identifier lives at offset 0.
pub const FILE_IDENTIFIER_OFFSET: u64 = 0;
/// Section 2.2.2: the two headers, at 64 KiB and 128 KiB.
pub const HEADER_OFFSETS: [u64; 2] = [KIB64, 2 * KIB64];
/// Section 2.2.2: each header is a 4 KiB structure.
pub const HEADER_SIZE: usize = 4096;
/// Section 2.2.3: the two copies of the region table, at 192 KiB and 256 KiB.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [3 * KIB64, 4 * KIB64];
/// Section 2.2.3: each region table copy is 64 KiB.
pub const REGION_TABLE_SIZE: usize = 64 << 10;
/// Section 2.2.3.1: at most 2047 region table entries.
pub const REGION_TABLE_MAX_ENTRIES: u32 = 2047;

/// Section 2.3.1: the log is made of 4 KiB sectors.
pub const LOG_SECTOR_SIZE: usize = 4096;
/// Section 2.3.1.1: the entry header is 64 bytes.
pub const LOG_ENTRY_HEADER_SIZE: usize = 64;
/// Section 2.3.1.2/2.3.1.3: descriptors are 32 bytes.
pub const LOG_DESCRIPTOR_SIZE: usize = 32;

/// Section 2.4: a sector bitmap block is 1 MiB and describes 2^23 sectors.
pub const SECTOR_BITMAP_BLOCK_SIZE: u64 = MIB;
/// Section 2.4: sectors described by one sector bitmap block.
pub const SECTORS_PER_BITMAP_BLOCK: u64 = 1 << 23;

/// Section 2.6: the metadata table occupies the first 64 KiB of the region.
pub const METADATA_TABLE_SIZE: usize = 64 << 10;
/// Section 2.6.1.1: at most 2047 metadata table entries.
pub const METADATA_MAX_ENTRIES: u16 = 2047;
/// Section 2.6.1.2: at most 1024 user metadata entries.
pub const METADATA_MAX_USER_ENTRIES: usize = 1024;
/// Section 2.6.1.2: a metadata item is at most 1 MiB.
pub const METADATA_ITEM_MAX_LENGTH: u32 = 1 << 20;

/// Section 2.6.2.1: block sizes range from 1 MiB to 256 MiB.
pub const BLOCK_SIZE_MIN: u32 = 1 << 20;
pub const BLOCK_SIZE_MAX: u32 = 256 << 20;
/// Section 2.6.2.2: the virtual disk is at most 64 TiB.
pub const VIRTUAL_DISK_SIZE_MAX: u64 = 64 << 40;

// Signatures, as the little-endian integers the spec gives.
/// Section 2.2.1: "vhdxfile".
pub const FILE_IDENTIFIER_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Section 2.2.2: "head".
pub const HEADER_SIGNATURE: &[u8; 4] = b"head";
/// Section 2.2.3.1: "regi".
pub const REGION_TABLE_SIGNATURE: &[u8; 4] = b"regi";
/// Section 2.3.1.1: "loge".
pub const LOG_ENTRY_SIGNATURE: &[u8; 4] = b"loge";
/// Section 2.3.1.2: "zero".
pub const ZERO_DESCRIPTOR_SIGNATURE: &[u8; 4] = b"zero";
/// Section 2.3.1.3: "desc".
pub const DATA_DESCRIPTOR_SIGNATURE: &[u8; 4] = b"desc";
/// Section 2.3.1.4: "data".
pub const DATA_SECTOR_SIGNATURE: &[u8; 4] = b"data";
/// Section 2.6.1.1: "metadata".
pub const METADATA_TABLE_SIGNATURE: &[u8; 8] = b"metadata";

/// A GUID in the on-disk (mixed-endian, Microsoft) byte order: the first
/// three fields little-endian, the last eight bytes as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);

    /// Builds a GUID from its textual fields, e.g.
    /// `2DC27766-F623-4200-9D64-115E9BFD4A08` is
    /// `from_fields(0x2DC27766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, ...])`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    pub fn from_slice(b: &[u8]) -> Guid {
        let mut g = [0u8; 16];
        let n = b.len().min(16);
        g[..n].copy_from_slice(&b[..n]);
        Guid(g)
    }

    /// Parses `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}` (braces optional,
    /// either case), the form parent locators store.
    pub fn parse_text(s: &str) -> Option<Guid> {
        let s = s.trim();
        let s = s
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(s);
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 5
            || parts[0].len() != 8
            || parts[1].len() != 4
            || parts[2].len() != 4
            || parts[3].len() != 4
            || parts[4].len() != 12
        {
            return None;
        }
        if !parts
            .iter()
            .all(|p| p.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return None;
        }
        let d1 = u32::from_str_radix(parts[0], 16).ok()?;
        let d2 = u16::from_str_radix(parts[1], 16).ok()?;
        let d3 = u16::from_str_radix(parts[2], 16).ok()?;
        let mut d4 = [0u8; 8];
        let tail = format!("{}{}", parts[3], parts[4]);
        for (i, byte) in d4.iter_mut().enumerate() {
            *byte = u8::from_str_radix(tail.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid::from_fields(d1, d2, d3, d4))
    }

    /// The lowercase braced text form parent locators store.
    pub fn to_braced(&self) -> String {
        format!("{{{self}}}")
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Section 2.2.3: the BAT region.
pub const BAT_REGION_GUID: Guid = Guid::from_fields(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// Section 2.2.3: the metadata region.
pub const METADATA_REGION_GUID: Guid = Guid::from_fields(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
/// Section 2.6.2.1.
pub const FILE_PARAMETERS_GUID: Guid = Guid::from_fields(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Section 2.6.2.2.
pub const VIRTUAL_DISK_SIZE_GUID: Guid = Guid::from_fields(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Section 2.6.2.3 (the "page 83 data" of SCSI).
pub const VIRTUAL_DISK_ID_GUID: Guid = Guid::from_fields(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Section 2.6.2.4.
pub const LOGICAL_SECTOR_SIZE_GUID: Guid = Guid::from_fields(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Section 2.6.2.5.
pub const PHYSICAL_SECTOR_SIZE_GUID: Guid = Guid::from_fields(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Section 2.6.2.6.
pub const PARENT_LOCATOR_GUID: Guid = Guid::from_fields(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// Section 2.6.2.6.3: the VHDX parent locator type.
pub const VHDX_PARENT_LOCATOR_TYPE: Guid = Guid::from_fields(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// A structure failed validation. `offset` is the file offset of the
/// structure (or of the field at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub structure: &'static str,
    pub offset: u64,
    pub reason: String,
}

impl SpecError {
    pub fn new(structure: &'static str, offset: u64, reason: impl Into<String>) -> SpecError {
        SpecError {
            structure,
            offset,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.structure, self.offset, self.reason
        )
    }
}

pub type SpecResult<T> = std::result::Result<T, SpecError>;

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    Guid::from_slice(b.get(at..at + 16).unwrap_or(&[]))
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Section 2: CRC-32C (Castagnoli) over `buf` with the 4-byte checksum
/// field at `crc_offset` taken as zero.
pub fn checksum(buf: &[u8], crc_offset: usize) -> u32 {
    if crc_offset + 4 > buf.len() {
        return crc32c::crc32c(buf);
    }
    let crc = crc32c::crc32c(&buf[..crc_offset]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &buf[crc_offset + 4..])
}

/// Stores the checksum of `buf` into its checksum field at `crc_offset`.
pub fn seal(buf: &mut [u8], crc_offset: usize) {
    let crc = checksum(buf, crc_offset);
    put_u32(buf, crc_offset, crc);
}

/// Section 2.2.1: the file type identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    /// The creator string (diagnostic only; never used for behaviour).
    pub creator: String,
}

/// Size of the creator field.
pub const CREATOR_SIZE: usize = 512;

impl FileIdentifier {
    /// Parses the first bytes of the file (at least 8; the creator is read
    /// from as much of the following 512 bytes as `buf` holds).
    pub fn parse(buf: &[u8]) -> SpecResult<FileIdentifier> {
        if buf.len() < 8 {
            return Err(SpecError::new(
                "file type identifier",
                FILE_IDENTIFIER_OFFSET,
                format!("only {} bytes; the signature needs 8", buf.len()),
            ));
        }
        if &buf[..8] != FILE_IDENTIFIER_SIGNATURE {
            return Err(SpecError::new(
                "file type identifier",
                FILE_IDENTIFIER_OFFSET,
                format!("signature is {:02x?}, not \"vhdxfile\"", &buf[..8]),
            ));
        }
        let end = buf.len().min(8 + CREATOR_SIZE);
        let units: Vec<u16> = buf[8..end]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Ok(FileIdentifier {
            creator: String::from_utf16_lossy(&units),
        })
    }

    /// The 64 KiB item as written at creation.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; KIB64 as usize];
        b[..8].copy_from_slice(FILE_IDENTIFIER_SIGNATURE);
        for (i, u) in self
            .creator
            .encode_utf16()
            .take(CREATOR_SIZE / 2 - 1)
            .enumerate()
        {
            put_u16(&mut b, 8 + 2 * i, u);
        }
        b
    }
}

/// Section 2.2.2: a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub sequence_number: u64,
    pub file_write_guid: Guid,
    pub data_write_guid: Guid,
    pub log_guid: Guid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// Section 2.2.2: the only VHDX version this specification describes.
pub const HEADER_VERSION: u16 = 1;
/// Section 2.2.2: the only log version.
pub const LOG_VERSION: u16 = 0;

impl Header {
    /// Parses and validates one 4 KiB header read at `offset`: signature,
    /// checksum and version (section 2.2.2). Field values that concern the
    /// rest of the file (log placement) are checked by the caller.
    pub fn parse(buf: &[u8], offset: u64) -> SpecResult<Header> {
        let name = header_name(offset);
        if buf.len() < HEADER_SIZE {
            return Err(SpecError::new(
                name,
                offset,
                format!(
                    "only {} bytes; a header is {HEADER_SIZE} (file truncated)",
                    buf.len()
                ),
            ));
        }
        let buf = &buf[..HEADER_SIZE];
        if &buf[..4] != HEADER_SIGNATURE {
            return Err(SpecError::new(
                name,
                offset,
                format!("signature is {:02x?}, not \"head\"", &buf[..4]),
            ));
        }
        let stored = u32_at(buf, 4);
        let computed = checksum(buf, 4);
        if stored != computed {
            return Err(SpecError::new(
                name,
                offset,
                format!("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let h = Header {
            sequence_number: u64_at(buf, 8),
            file_write_guid: guid_at(buf, 16),
            data_write_guid: guid_at(buf, 32),
            log_guid: guid_at(buf, 48),
            log_version: u16_at(buf, 64),
            version: u16_at(buf, 66),
            log_length: u32_at(buf, 68),
            log_offset: u64_at(buf, 72),
        };
        if h.version != HEADER_VERSION {
            return Err(SpecError::new(
                name,
                offset,
                format!(
                    "version {} is not supported (only version {HEADER_VERSION})",
                    h.version
                ),
            ));
        }
        Ok(h)
    }

    /// The 4 KiB structure with its checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[..4].copy_from_slice(HEADER_SIGNATURE);
        put_u64(&mut b, 8, self.sequence_number);
        b[16..32].copy_from_slice(&self.file_write_guid.0);
        b[32..48].copy_from_slice(&self.data_write_guid.0);
        b[48..64].copy_from_slice(&self.log_guid.0);
        put_u16(&mut b, 64, self.log_version);
        put_u16(&mut b, 66, self.version);
        put_u32(&mut b, 68, self.log_length);
        put_u64(&mut b, 72, self.log_offset);
        seal(&mut b, 4);
        b
    }
}

/// The structure name of the header at `offset`.
pub fn header_name(offset: u64) -> &'static str {
    if offset == HEADER_OFFSETS[1] {
        "header 2"
    } else {
        "header 1"
    }
}

/// The structure name of the region table copy at `offset`.
pub fn region_table_name(offset: u64) -> &'static str {
    if offset == REGION_TABLE_OFFSETS[1] {
        "region table 2"
    } else {
        "region table 1"
    }
}

/// Section 2.2.3.2: a region table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTableEntry {
    pub guid: Guid,
    pub file_offset: u64,
    pub length: u32,
    /// Bit 0 of the Required field.
    pub required: bool,
}

impl RegionTableEntry {
    pub fn end(&self) -> u64 {
        self.file_offset.saturating_add(u64::from(self.length))
    }
}

/// Section 2.2.3: a region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    pub entries: Vec<RegionTableEntry>,
}

impl RegionTable {
    /// Parses and validates one 64 KiB region table copy read at `offset`:
    /// signature, checksum, entry count, the 1 MiB alignment and minimum
    /// offset of each entry, GUID uniqueness and overlaps between regions
    /// (section 2.2.3).
    pub fn parse(buf: &[u8], offset: u64) -> SpecResult<RegionTable> {
        let name = region_table_name(offset);
        if buf.len() < REGION_TABLE_SIZE {
            return Err(SpecError::new(
                name,
                offset,
                format!(
                    "only {} bytes; a region table is {REGION_TABLE_SIZE} (file truncated)",
                    buf.len()
                ),
            ));
        }
        let buf = &buf[..REGION_TABLE_SIZE];
        if &buf[..4] != REGION_TABLE_SIGNATURE {
            return Err(SpecError::new(
                name,
                offset,
                format!("signature is {:02x?}, not \"regi\"", &buf[..4]),
            ));
        }
        let stored = u32_at(buf, 4);
        let computed = checksum(buf, 4);
        if stored != computed {
            return Err(SpecError::new(
                name,
                offset,
                format!("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let count = u32_at(buf, 8);
        if count > REGION_TABLE_MAX_ENTRIES {
            return Err(SpecError::new(
                name,
                offset + 8,
                format!("{count} entries; at most {REGION_TABLE_MAX_ENTRIES} are allowed"),
            ));
        }
        let mut entries: Vec<RegionTableEntry> = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let at = 16 + 32 * i;
            let e = RegionTableEntry {
                guid: guid_at(buf, at),
                file_offset: u64_at(buf, at + 16),
                length: u32_at(buf, at + 24),
                required: u32_at(buf, at + 28) & 1 != 0,
            };
            let entry_offset = offset + at as u64;
            if e.file_offset < MIB || !e.file_offset.is_multiple_of(MIB) {
                return Err(SpecError::new(
                    name,
                    entry_offset,
                    format!(
                        "region {} starts at {}, which is not a multiple of 1 MiB at or after 1 MiB",
                        e.guid, e.file_offset
                    ),
                ));
            }
            if !u64::from(e.length).is_multiple_of(MIB) {
                return Err(SpecError::new(
                    name,
                    entry_offset,
                    format!(
                        "region {} is {} bytes long, not a multiple of 1 MiB",
                        e.guid, e.length
                    ),
                ));
            }
            if e.file_offset.checked_add(u64::from(e.length)).is_none() {
                return Err(SpecError::new(
                    name,
                    entry_offset,
                    format!("region {} ends past the largest file offset", e.guid),
                ));
            }
            for other in &entries {
                if other.guid == e.guid {
                    return Err(SpecError::new(
                        name,
                        entry_offset,
                        format!("region {} is listed twice", e.guid),
                    ));
                }
                if e.length > 0
                    && other.length > 0
                    && e.file_offset < other.end()
                    && other.file_offset < e.end()
                {
                    return Err(SpecError::new(
                        name,
                        entry_offset,
                        format!(
                            "region {} at {}..{} overlaps region {} at {}..{}",
                            e.guid,
                            e.file_offset,
                            e.end(),
                            other.guid,
                            other.file_offset,
                            other.end()
                        ),
                    ));
                }
            }
            entries.push(e);
        }
        Ok(RegionTable { entries })
    }

    pub fn find(&self, guid: &Guid) -> Option<&RegionTableEntry> {
        self.entries.iter().find(|e| &e.guid == guid)
    }

    /// The 64 KiB structure with its checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        b[..4].copy_from_slice(REGION_TABLE_SIGNATURE);
        put_u32(&mut b, 8, self.entries.len() as u32);
        for (i, e) in self.entries.iter().enumerate() {
            let at = 16 + 32 * i;
            b[at..at + 16].copy_from_slice(&e.guid.0);
            put_u64(&mut b, at + 16, e.file_offset);
            put_u32(&mut b, at + 24, e.length);
            put_u32(&mut b, at + 28, u32::from(e.required));
        }
        seal(&mut b, 4);
        b
    }
}

/// Section 2.6.1.2: a metadata table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataEntry {
    pub item_id: Guid,
    /// Relative to the start of the metadata region.
    pub offset: u32,
    pub length: u32,
    pub is_user: bool,
    pub is_virtual_disk: bool,
    pub is_required: bool,
    /// The reserved bits of the flags word and the Reserved2 field were not
    /// zero (a spec violation that does not prevent reading).
    pub reserved_nonzero: bool,
}

/// Section 2.6.1.2 flag bits.
pub const METADATA_FLAG_IS_USER: u32 = 1;
pub const METADATA_FLAG_IS_VIRTUAL_DISK: u32 = 2;
pub const METADATA_FLAG_IS_REQUIRED: u32 = 4;

/// Section 2.6.1: the metadata table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTable {
    pub entries: Vec<MetadataEntry>,
}

impl MetadataTable {
    /// Parses and validates the 64 KiB metadata table at the start of a
    /// metadata region of `region_length` bytes at file offset
    /// `region_offset`: signature, entry count, the placement of each item
    /// inside the region without overlaps, uniqueness of (ItemId, IsUser)
    /// and the user-entry limit (section 2.6.1).
    pub fn parse(buf: &[u8], region_offset: u64, region_length: u64) -> SpecResult<MetadataTable> {
        const NAME: &str = "metadata table";
        if buf.len() < METADATA_TABLE_SIZE {
            return Err(SpecError::new(
                NAME,
                region_offset,
                format!(
                    "only {} bytes; the metadata table is {METADATA_TABLE_SIZE} (file truncated)",
                    buf.len()
                ),
            ));
        }
        if region_length < METADATA_TABLE_SIZE as u64 {
            return Err(SpecError::new(
                NAME,
                region_offset,
                format!("the metadata region is only {region_length} bytes long"),
            ));
        }
        if &buf[..8] != METADATA_TABLE_SIGNATURE {
            return Err(SpecError::new(
                NAME,
                region_offset,
                format!("signature is {:02x?}, not \"metadata\"", &buf[..8]),
            ));
        }
        let count = u16_at(buf, 10);
        if count > METADATA_MAX_ENTRIES {
            return Err(SpecError::new(
                NAME,
                region_offset + 10,
                format!("{count} entries; at most {METADATA_MAX_ENTRIES} are allowed"),
            ));
        }
        let mut entries: Vec<MetadataEntry> = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let at = 32 + 32 * i;
            let flags = u32_at(buf, at + 24);
            let e = MetadataEntry {
                item_id: guid_at(buf, at),
                offset: u32_at(buf, at + 16),
                length: u32_at(buf, at + 20),
                is_user: flags & METADATA_FLAG_IS_USER != 0,
                is_virtual_disk: flags & METADATA_FLAG_IS_VIRTUAL_DISK != 0,
                is_required: flags & METADATA_FLAG_IS_REQUIRED != 0,
                reserved_nonzero: flags & !7 != 0 || u32_at(buf, at + 28) != 0,
            };
            let entry_offset = region_offset + at as u64;
            if e.length > METADATA_ITEM_MAX_LENGTH {
                return Err(SpecError::new(
                    NAME,
                    entry_offset,
                    format!(
                        "item {} is {} bytes long; at most 1 MiB is allowed",
                        e.item_id, e.length
                    ),
                ));
            }
            if e.length == 0 {
                if e.offset != 0 {
                    return Err(SpecError::new(
                        NAME,
                        entry_offset,
                        format!(
                            "item {} is empty but has offset {} (must be 0)",
                            e.item_id, e.offset
                        ),
                    ));
                }
            } else {
                if u64::from(e.offset) < KIB64 {
                    return Err(SpecError::new(
                        NAME,
                        entry_offset,
                        format!(
                            "item {} starts at region offset {}, inside the 64 KiB table",
                            e.item_id, e.offset
                        ),
                    ));
                }
                if u64::from(e.offset) + u64::from(e.length) > region_length {
                    return Err(SpecError::new(
                        NAME,
                        entry_offset,
                        format!(
                            "item {} at region offset {} length {} ends past the {}-byte metadata region",
                            e.item_id, e.offset, e.length, region_length
                        ),
                    ));
                }
            }
            for other in &entries {
                if other.item_id == e.item_id && other.is_user == e.is_user {
                    return Err(SpecError::new(
                        NAME,
                        entry_offset,
                        format!("item {} is listed twice", e.item_id),
                    ));
                }
                let (a0, a1) = (
                    u64::from(e.offset),
                    u64::from(e.offset) + u64::from(e.length),
                );
                let (b0, b1) = (
                    u64::from(other.offset),
                    u64::from(other.offset) + u64::from(other.length),
                );
                if e.length > 0 && other.length > 0 && a0 < b1 && b0 < a1 {
                    return Err(SpecError::new(
                        NAME,
                        entry_offset,
                        format!(
                            "item {} at {a0}..{a1} overlaps item {} at {b0}..{b1}",
                            e.item_id, other.item_id
                        ),
                    ));
                }
            }
            entries.push(e);
        }
        let users = entries.iter().filter(|e| e.is_user).count();
        if users > METADATA_MAX_USER_ENTRIES {
            return Err(SpecError::new(
                NAME,
                region_offset,
                format!("{users} user items; at most {METADATA_MAX_USER_ENTRIES} are allowed"),
            ));
        }
        Ok(MetadataTable { entries })
    }

    /// The system (non-user) item with this id.
    pub fn find(&self, id: &Guid) -> Option<&MetadataEntry> {
        self.entries.iter().find(|e| &e.item_id == id && !e.is_user)
    }

    /// The 64 KiB table.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; METADATA_TABLE_SIZE];
        b[..8].copy_from_slice(METADATA_TABLE_SIGNATURE);
        put_u16(&mut b, 10, self.entries.len() as u16);
        for (i, e) in self.entries.iter().enumerate() {
            let at = 32 + 32 * i;
            b[at..at + 16].copy_from_slice(&e.item_id.0);
            put_u32(&mut b, at + 16, e.offset);
            put_u32(&mut b, at + 20, e.length);
            let flags = (u32::from(e.is_user) * METADATA_FLAG_IS_USER)
                | (u32::from(e.is_virtual_disk) * METADATA_FLAG_IS_VIRTUAL_DISK)
                | (u32::from(e.is_required) * METADATA_FLAG_IS_REQUIRED);
            put_u32(&mut b, at + 24, flags);
        }
        b
    }
}

/// Section 2.6.2.1: the file parameters item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileParameters {
    pub block_size: u32,
    pub leave_blocks_allocated: bool,
    pub has_parent: bool,
}

pub const FILE_PARAMETERS_SIZE: usize = 8;

impl FileParameters {
    pub fn parse(buf: &[u8], offset: u64) -> SpecResult<FileParameters> {
        const NAME: &str = "file parameters";
        if buf.len() < FILE_PARAMETERS_SIZE {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("item is {} bytes long; it needs 8", buf.len()),
            ));
        }
        let block_size = u32_at(buf, 0);
        let bits = u32_at(buf, 4);
        if !(BLOCK_SIZE_MIN..=BLOCK_SIZE_MAX).contains(&block_size) || !block_size.is_power_of_two()
        {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("block size {block_size} is not a power of two between 1 MiB and 256 MiB"),
            ));
        }
        Ok(FileParameters {
            block_size,
            leave_blocks_allocated: bits & 1 != 0,
            has_parent: bits & 2 != 0,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; FILE_PARAMETERS_SIZE];
        put_u32(&mut b, 0, self.block_size);
        put_u32(
            &mut b,
            4,
            u32::from(self.leave_blocks_allocated) | (u32::from(self.has_parent) << 1),
        );
        b
    }
}

/// Section 2.6.2.2: the virtual disk size, validated against the logical
/// sector size.
pub fn parse_virtual_disk_size(
    buf: &[u8],
    offset: u64,
    logical_sector_size: u32,
) -> SpecResult<u64> {
    const NAME: &str = "virtual disk size";
    if buf.len() < 8 {
        return Err(SpecError::new(
            NAME,
            offset,
            format!("item is {} bytes long; it needs 8", buf.len()),
        ));
    }
    let size = u64_at(buf, 0);
    if size == 0 {
        return Err(SpecError::new(NAME, offset, "the virtual disk size is 0"));
    }
    if size > VIRTUAL_DISK_SIZE_MAX {
        return Err(SpecError::new(
            NAME,
            offset,
            format!("{size} bytes is more than the 64 TiB maximum"),
        ));
    }
    if logical_sector_size == 0 || !size.is_multiple_of(u64::from(logical_sector_size)) {
        return Err(SpecError::new(
            NAME,
            offset,
            format!("{size} bytes is not a multiple of the {logical_sector_size}-byte logical sector size"),
        ));
    }
    Ok(size)
}

/// Sections 2.6.2.4 and 2.6.2.5: a sector size, 512 or 4096.
pub fn parse_sector_size(buf: &[u8], offset: u64, structure: &'static str) -> SpecResult<u32> {
    if buf.len() < 4 {
        return Err(SpecError::new(
            structure,
            offset,
            format!("item is {} bytes long; it needs 4", buf.len()),
        ));
    }
    let v = u32_at(buf, 0);
    if v != 512 && v != 4096 {
        return Err(SpecError::new(
            structure,
            offset,
            format!("sector size {v} is not supported (only 512 and 4096 are valid)"),
        ));
    }
    Ok(v)
}

/// Section 2.6.2.3: the virtual disk id (SCSI page 83 data).
pub fn parse_virtual_disk_id(buf: &[u8], offset: u64) -> SpecResult<Guid> {
    if buf.len() < 16 {
        return Err(SpecError::new(
            "page 83 data",
            offset,
            format!("item is {} bytes long; it needs 16", buf.len()),
        ));
    }
    Ok(guid_at(buf, 0))
}

/// Section 2.6.2.6: a parent locator with its key/value pairs, in file
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    pub locator_type: Guid,
    pub entries: Vec<(String, String)>,
}

/// Section 2.6.2.6.1/2.6.2.6.2 sizes.
pub const PARENT_LOCATOR_HEADER_SIZE: usize = 20;
pub const PARENT_LOCATOR_ENTRY_SIZE: usize = 12;

impl ParentLocator {
    /// Parses a parent locator item read at file offset `offset`: header,
    /// entries, UTF-16LE keys and values inside the item, unique keys.
    pub fn parse(buf: &[u8], offset: u64) -> SpecResult<ParentLocator> {
        const NAME: &str = "parent locator";
        if buf.len() < PARENT_LOCATOR_HEADER_SIZE {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("item is {} bytes long; the header needs 20", buf.len()),
            ));
        }
        let locator_type = guid_at(buf, 0);
        let count = u16_at(buf, 18) as usize;
        let table_end = PARENT_LOCATOR_HEADER_SIZE + PARENT_LOCATOR_ENTRY_SIZE * count;
        if table_end > buf.len() {
            return Err(SpecError::new(
                NAME,
                offset,
                format!(
                    "{count} key/value entries do not fit in the {}-byte item",
                    buf.len()
                ),
            ));
        }
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        for i in 0..count {
            let at = PARENT_LOCATOR_HEADER_SIZE + PARENT_LOCATOR_ENTRY_SIZE * i;
            let entry_offset = offset + at as u64;
            let key_offset = u32_at(buf, at) as usize;
            let value_offset = u32_at(buf, at + 4) as usize;
            let key_len = u16_at(buf, at + 8) as usize;
            let value_len = u16_at(buf, at + 10) as usize;
            let text = |o: usize, l: usize, what: &str| -> SpecResult<String> {
                if o == 0 || l == 0 {
                    return Err(SpecError::new(
                        NAME,
                        entry_offset,
                        format!("entry {i}: {what} offset {o} or length {l} is zero"),
                    ));
                }
                if !l.is_multiple_of(2) {
                    return Err(SpecError::new(
                        NAME,
                        entry_offset,
                        format!(
                            "entry {i}: {what} length {l} is odd (UTF-16 needs pairs of bytes)"
                        ),
                    ));
                }
                let bytes = o
                    .checked_add(l)
                    .and_then(|end| buf.get(o..end))
                    .ok_or_else(|| {
                        SpecError::new(
                            NAME,
                            entry_offset,
                            format!(
                                "entry {i}: {what} at {o} length {l} lies outside the {}-byte item",
                                buf.len()
                            ),
                        )
                    })?;
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                if units.contains(&0) {
                    return Err(SpecError::new(
                        NAME,
                        entry_offset,
                        format!("entry {i}: {what} contains a NUL character"),
                    ));
                }
                String::from_utf16(&units).map_err(|_| {
                    SpecError::new(
                        NAME,
                        entry_offset,
                        format!("entry {i}: {what} is not valid UTF-16"),
                    )
                })
            };
            let key = text(key_offset, key_len, "key")?;
            let value = text(value_offset, value_len, "value")?;
            if entries.iter().any(|(k, _)| k == &key) {
                return Err(SpecError::new(
                    NAME,
                    entry_offset,
                    format!("key \"{key}\" is listed twice"),
                ));
            }
            entries.push((key, value));
        }
        Ok(ParentLocator {
            locator_type,
            entries,
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let header_len =
            PARENT_LOCATOR_HEADER_SIZE + PARENT_LOCATOR_ENTRY_SIZE * self.entries.len();
        let mut b = vec![0u8; header_len];
        b[..16].copy_from_slice(&self.locator_type.0);
        put_u16(&mut b, 18, self.entries.len() as u16);
        let mut strings: Vec<u8> = Vec::new();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let at = PARENT_LOCATOR_HEADER_SIZE + PARENT_LOCATOR_ENTRY_SIZE * i;
            let ko = header_len + strings.len();
            strings.extend(k.encode_utf16().flat_map(u16::to_le_bytes));
            let kl = header_len + strings.len() - ko;
            let vo = header_len + strings.len();
            strings.extend(v.encode_utf16().flat_map(u16::to_le_bytes));
            let vl = header_len + strings.len() - vo;
            put_u32(&mut b, at, ko as u32);
            put_u32(&mut b, at + 4, vo as u32);
            put_u16(&mut b, at + 8, kl as u16);
            put_u16(&mut b, at + 10, vl as u16);
        }
        b.extend(strings);
        b
    }
}

/// Section 2.5.1.1: payload block states.
pub const PAYLOAD_BLOCK_NOT_PRESENT: u8 = 0;
pub const PAYLOAD_BLOCK_UNDEFINED: u8 = 1;
pub const PAYLOAD_BLOCK_ZERO: u8 = 2;
pub const PAYLOAD_BLOCK_UNMAPPED: u8 = 3;
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u8 = 6;
pub const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u8 = 7;
/// Section 2.5.1.2: sector bitmap block states.
pub const SB_BLOCK_NOT_PRESENT: u8 = 0;
pub const SB_BLOCK_PRESENT: u8 = 6;

/// Section 2.5.1: a BAT entry (state in bits 0-2, reserved bits 3-19,
/// FileOffsetMB in bits 20-63).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatEntry(pub u64);

impl BatEntry {
    pub fn new(state: u8, file_offset: u64) -> BatEntry {
        BatEntry(u64::from(state & 7) | ((file_offset >> 20) << 20))
    }
    pub fn state(self) -> u8 {
        (self.0 & 7) as u8
    }
    /// The byte offset in the file (FileOffsetMB × 1 MiB).
    pub fn file_offset(self) -> u64 {
        (self.0 >> 20) << 20
    }
    pub fn reserved_bits(self) -> u64 {
        (self.0 >> 3) & ((1 << 17) - 1)
    }
}

/// The name of a payload block state.
pub fn payload_state_name(state: u8) -> &'static str {
    match state {
        PAYLOAD_BLOCK_NOT_PRESENT => "NOT_PRESENT",
        PAYLOAD_BLOCK_UNDEFINED => "UNDEFINED",
        PAYLOAD_BLOCK_ZERO => "ZERO",
        PAYLOAD_BLOCK_UNMAPPED => "UNMAPPED",
        PAYLOAD_BLOCK_FULLY_PRESENT => "FULLY_PRESENT",
        PAYLOAD_BLOCK_PARTIALLY_PRESENT => "PARTIALLY_PRESENT",
        _ => "reserved",
    }
}

/// Section 2.4: the chunk ratio, payload blocks per sector bitmap block:
/// (2^23 × logical sector size) / block size.
pub fn chunk_ratio(logical_sector_size: u32, block_size: u32) -> u64 {
    (SECTORS_PER_BITMAP_BLOCK * u64::from(logical_sector_size)) / u64::from(block_size.max(1))
}

/// Section 2.5: payload blocks of a virtual disk.
pub fn data_block_count(virtual_size: u64, block_size: u32) -> u64 {
    virtual_size.div_ceil(u64::from(block_size.max(1)))
}

/// Section 2.5: total BAT entries. Fixed and dynamic images end with the
/// last payload block; differencing images with the sector bitmap block
/// of the last chunk.
pub fn bat_entry_count(
    virtual_size: u64,
    block_size: u32,
    logical_sector_size: u32,
    has_parent: bool,
) -> u64 {
    let ratio = chunk_ratio(logical_sector_size, block_size).max(1);
    let data_blocks = data_block_count(virtual_size, block_size);
    if has_parent {
        data_blocks.div_ceil(ratio) * (ratio + 1)
    } else {
        data_blocks + data_blocks.saturating_sub(1) / ratio
    }
}

/// Section 2.3.1.1: the log entry header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntryHeader {
    pub checksum: u32,
    pub entry_length: u32,
    pub tail: u32,
    pub sequence_number: u64,
    pub descriptor_count: u32,
    pub reserved: u32,
    pub log_guid: Guid,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

impl LogEntryHeader {
    /// Parses the 64-byte header at `offset` (its checksum covers the whole
    /// entry and is verified by the caller).
    pub fn parse(buf: &[u8], offset: u64) -> SpecResult<LogEntryHeader> {
        const NAME: &str = "log entry";
        if buf.len() < LOG_ENTRY_HEADER_SIZE {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("only {} bytes; the header needs 64", buf.len()),
            ));
        }
        if &buf[..4] != LOG_ENTRY_SIGNATURE {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("signature is {:02x?}, not \"loge\"", &buf[..4]),
            ));
        }
        let h = LogEntryHeader {
            checksum: u32_at(buf, 4),
            entry_length: u32_at(buf, 8),
            tail: u32_at(buf, 12),
            sequence_number: u64_at(buf, 16),
            descriptor_count: u32_at(buf, 24),
            reserved: u32_at(buf, 28),
            log_guid: guid_at(buf, 32),
            flushed_file_offset: u64_at(buf, 48),
            last_file_offset: u64_at(buf, 56),
        };
        let sector = LOG_SECTOR_SIZE as u32;
        if h.entry_length == 0 || !h.entry_length.is_multiple_of(sector) {
            return Err(SpecError::new(
                NAME,
                offset,
                format!(
                    "entry length {} is not a nonzero multiple of 4 KiB",
                    h.entry_length
                ),
            ));
        }
        if !h.tail.is_multiple_of(sector) {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("tail {} is not a multiple of 4 KiB", h.tail),
            ));
        }
        if h.sequence_number == 0 {
            return Err(SpecError::new(NAME, offset, "sequence number is 0"));
        }
        if h.reserved != 0 {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("reserved field is {:#x}, not 0", h.reserved),
            ));
        }
        let sectors = h.entry_length / sector;
        let desc_sectors = log_descriptor_sectors(h.descriptor_count);
        if u64::from(desc_sectors) > u64::from(sectors) {
            return Err(SpecError::new(
                NAME,
                offset,
                format!(
                    "{} descriptors need {desc_sectors} sectors but the entry has only {sectors}",
                    h.descriptor_count
                ),
            ));
        }
        Ok(h)
    }

    fn write_to(&self, b: &mut [u8]) {
        b[..4].copy_from_slice(LOG_ENTRY_SIGNATURE);
        put_u32(b, 4, self.checksum);
        put_u32(b, 8, self.entry_length);
        put_u32(b, 12, self.tail);
        put_u64(b, 16, self.sequence_number);
        put_u32(b, 24, self.descriptor_count);
        put_u32(b, 28, self.reserved);
        b[32..48].copy_from_slice(&self.log_guid.0);
        put_u64(b, 48, self.flushed_file_offset);
        put_u64(b, 56, self.last_file_offset);
    }
}

/// Section 2.3.1: descriptor sectors needed for `count` descriptors (the
/// first sector holds the 64-byte header and 126 descriptors, the others
/// 128 each).
pub fn log_descriptor_sectors(count: u32) -> u32 {
    let bytes = LOG_ENTRY_HEADER_SIZE as u64 + LOG_DESCRIPTOR_SIZE as u64 * u64::from(count);
    bytes.div_ceil(LOG_SECTOR_SIZE as u64) as u32
}

/// Sections 2.3.1.2 and 2.3.1.3: a log descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDescriptor {
    Data {
        trailing_bytes: [u8; 4],
        leading_bytes: [u8; 8],
        file_offset: u64,
        sequence_number: u64,
    },
    Zero {
        zero_length: u64,
        file_offset: u64,
        sequence_number: u64,
    },
}

impl LogDescriptor {
    /// Parses one 32-byte descriptor found at file offset `offset`.
    pub fn parse(buf: &[u8], offset: u64) -> SpecResult<LogDescriptor> {
        const NAME: &str = "log descriptor";
        if buf.len() < LOG_DESCRIPTOR_SIZE {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("only {} bytes; a descriptor is 32", buf.len()),
            ));
        }
        let sector = LOG_SECTOR_SIZE as u64;
        let sig = &buf[..4];
        let d = if sig == DATA_DESCRIPTOR_SIGNATURE {
            let mut trailing_bytes = [0u8; 4];
            trailing_bytes.copy_from_slice(&buf[4..8]);
            let mut leading_bytes = [0u8; 8];
            leading_bytes.copy_from_slice(&buf[8..16]);
            LogDescriptor::Data {
                trailing_bytes,
                leading_bytes,
                file_offset: u64_at(buf, 16),
                sequence_number: u64_at(buf, 24),
            }
        } else if sig == ZERO_DESCRIPTOR_SIGNATURE {
            if u32_at(buf, 4) != 0 {
                return Err(SpecError::new(
                    NAME,
                    offset,
                    "zero descriptor's reserved field is not 0",
                ));
            }
            let zero_length = u64_at(buf, 8);
            if !zero_length.is_multiple_of(sector) {
                return Err(SpecError::new(
                    NAME,
                    offset,
                    format!("zero length {zero_length} is not a multiple of 4 KiB"),
                ));
            }
            LogDescriptor::Zero {
                zero_length,
                file_offset: u64_at(buf, 16),
                sequence_number: u64_at(buf, 24),
            }
        } else {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("signature is {sig:02x?}, neither \"desc\" nor \"zero\""),
            ));
        };
        if !d.file_offset().is_multiple_of(sector) {
            return Err(SpecError::new(
                NAME,
                offset,
                format!("file offset {} is not a multiple of 4 KiB", d.file_offset()),
            ));
        }
        Ok(d)
    }

    pub fn file_offset(&self) -> u64 {
        match self {
            LogDescriptor::Data { file_offset, .. } | LogDescriptor::Zero { file_offset, .. } => {
                *file_offset
            }
        }
    }

    pub fn sequence_number(&self) -> u64 {
        match self {
            LogDescriptor::Data {
                sequence_number, ..
            }
            | LogDescriptor::Zero {
                sequence_number, ..
            } => *sequence_number,
        }
    }
}

/// Section 2.3.1.4: checks a data sector against its entry's sequence
/// number and rebuilds the 4 KiB update from it and its descriptor's
/// leading and trailing bytes.
pub fn decode_data_sector(
    sector: &[u8],
    offset: u64,
    sequence_number: u64,
    leading_bytes: &[u8; 8],
    trailing_bytes: &[u8; 4],
) -> SpecResult<Vec<u8>> {
    const NAME: &str = "log data sector";
    if sector.len() < LOG_SECTOR_SIZE {
        return Err(SpecError::new(
            NAME,
            offset,
            format!("only {} bytes; a data sector is 4096", sector.len()),
        ));
    }
    if &sector[..4] != DATA_SECTOR_SIGNATURE {
        return Err(SpecError::new(
            NAME,
            offset,
            format!("signature is {:02x?}, not \"data\"", &sector[..4]),
        ));
    }
    let high = u32_at(sector, 4);
    let low = u32_at(sector, 4092);
    let seq = (u64::from(high) << 32) | u64::from(low);
    if seq != sequence_number {
        return Err(SpecError::new(
            NAME,
            offset,
            format!("sequence number {seq} does not match the entry's {sequence_number}"),
        ));
    }
    let mut out = vec![0u8; LOG_SECTOR_SIZE];
    out[..8].copy_from_slice(leading_bytes);
    out[8..4092].copy_from_slice(&sector[8..4092]);
    out[4092..].copy_from_slice(trailing_bytes);
    Ok(out)
}

/// What one log entry asks to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntryContents<'a> {
    pub sequence_number: u64,
    /// Byte offset in the log of the first entry of the sequence this one
    /// ends.
    pub tail: u32,
    pub log_guid: Guid,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
    /// 4 KiB sector updates: (file offset, 4096 bytes).
    pub pages: &'a [(u64, Vec<u8>)],
    /// Zeroed ranges: (file offset, length), both multiples of 4 KiB.
    pub zeros: &'a [(u64, u64)],
}

/// Builds a complete log entry (sections 2.3.1.1 to 2.3.1.4): header,
/// descriptors (zero descriptors first, then data descriptors), data
/// sectors, and the CRC-32C over the whole entry.
pub fn build_log_entry(c: &LogEntryContents<'_>) -> Vec<u8> {
    let count = (c.pages.len() + c.zeros.len()) as u32;
    let desc_sectors = log_descriptor_sectors(count) as usize;
    let total = (desc_sectors + c.pages.len()) * LOG_SECTOR_SIZE;
    let mut b = vec![0u8; total];
    let header = LogEntryHeader {
        checksum: 0,
        entry_length: total as u32,
        tail: c.tail,
        sequence_number: c.sequence_number,
        descriptor_count: count,
        reserved: 0,
        log_guid: c.log_guid,
        flushed_file_offset: c.flushed_file_offset,
        last_file_offset: c.last_file_offset,
    };
    header.write_to(&mut b);
    let mut at = LOG_ENTRY_HEADER_SIZE;
    for &(file_offset, zero_length) in c.zeros {
        b[at..at + 4].copy_from_slice(ZERO_DESCRIPTOR_SIGNATURE);
        put_u64(&mut b, at + 8, zero_length);
        put_u64(&mut b, at + 16, file_offset);
        put_u64(&mut b, at + 24, c.sequence_number);
        at += LOG_DESCRIPTOR_SIZE;
    }
    for (i, (file_offset, page)) in c.pages.iter().enumerate() {
        let mut page4k = [0u8; LOG_SECTOR_SIZE];
        let n = page.len().min(LOG_SECTOR_SIZE);
        page4k[..n].copy_from_slice(&page[..n]);
        b[at..at + 4].copy_from_slice(DATA_DESCRIPTOR_SIGNATURE);
        b[at + 4..at + 8].copy_from_slice(&page4k[4092..]);
        b[at + 8..at + 16].copy_from_slice(&page4k[..8]);
        put_u64(&mut b, at + 16, *file_offset);
        put_u64(&mut b, at + 24, c.sequence_number);
        at += LOG_DESCRIPTOR_SIZE;
        let s = (desc_sectors + i) * LOG_SECTOR_SIZE;
        b[s..s + 4].copy_from_slice(DATA_SECTOR_SIGNATURE);
        put_u32(&mut b, s + 4, (c.sequence_number >> 32) as u32);
        b[s + 8..s + 4092].copy_from_slice(&page4k[8..4092]);
        put_u32(&mut b, s + 4092, c.sequence_number as u32);
    }
    seal(&mut b, 4);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trip_and_byte_order() {
        // Section 2.2.3: the BAT GUID in its binary (mixed-endian) form.
        assert_eq!(
            BAT_REGION_GUID.0,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
        assert_eq!(
            BAT_REGION_GUID.to_string(),
            "2dc27766-f623-4200-9d64-115e9bfd4a08"
        );
        let g = Guid::parse_text("{83ED0EC3-24C8-49A6-A959-5E4BF1288BFB}").unwrap();
        assert_eq!(g.to_braced(), "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}");
        assert_eq!(Guid::parse_text(&g.to_string()), Some(g));
        for bad in [
            "",
            "{}",
            "83ED0EC3-24C8-49A6-A959-5E4BF1288BF",
            "83ED0EC3-24C8-49A6-A959-5E4BF1288BFBX",
            "83ED0EC3+24C8-49A6-A959-5E4BF1288BFB",
            "G3ED0EC3-24C8-49A6-A959-5E4BF1288BFB",
            "83ED0EC3-24C8-49A6-A959-5E4BF1288BF\u{e9}",
        ] {
            assert_eq!(Guid::parse_text(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn crc32c_matches_the_castagnoli_check_value() {
        // The standard CRC-32C check value of "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let mut b = b"ab\xff\xff\xff\xffcd".to_vec();
        seal(&mut b, 2);
        let mut z = b"ab\0\0\0\0cd".to_vec();
        let crc = crc32c::crc32c(&z);
        assert_eq!(u32_at(&b, 2), crc);
        z[2..6].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(b, z);
    }

    fn header() -> Header {
        Header {
            sequence_number: 7,
            file_write_guid: Guid([1; 16]),
            data_write_guid: Guid([2; 16]),
            log_guid: Guid::ZERO,
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        }
    }

    #[test]
    fn header_round_trip_and_every_rejection() {
        let h = header();
        let b = h.to_bytes();
        assert_eq!(&b[..4], b"head");
        assert_eq!(Header::parse(&b, HEADER_OFFSETS[0]).unwrap(), h);

        let e = Header::parse(&b[..4095], HEADER_OFFSETS[1]).unwrap_err();
        assert_eq!(e.structure, "header 2");
        assert_eq!(e.offset, HEADER_OFFSETS[1]);
        assert!(e.reason.contains("truncated"), "{e}");

        let mut bad = b.clone();
        bad[0] = b'H';
        let e = Header::parse(&bad, HEADER_OFFSETS[0]).unwrap_err();
        assert_eq!(e.structure, "header 1");
        assert!(e.reason.contains("signature"), "{e}");

        let mut bad = b.clone();
        bad[100] ^= 1; // a reserved byte: covered by the checksum
        let e = Header::parse(&bad, HEADER_OFFSETS[0]).unwrap_err();
        assert!(e.reason.contains("CRC-32C mismatch"), "{e}");

        let mut v2 = h.clone();
        v2.version = 2;
        let e = Header::parse(&v2.to_bytes(), HEADER_OFFSETS[0]).unwrap_err();
        assert!(e.reason.contains("version 2"), "{e}");
    }

    fn region_table(entries: &[(Guid, u64, u32, bool)]) -> Vec<u8> {
        RegionTable {
            entries: entries
                .iter()
                .map(|&(guid, file_offset, length, required)| RegionTableEntry {
                    guid,
                    file_offset,
                    length,
                    required,
                })
                .collect(),
        }
        .to_bytes()
    }

    #[test]
    fn region_table_round_trip_and_every_rejection() {
        let ok = region_table(&[
            (BAT_REGION_GUID, 3 * MIB, MIB as u32, true),
            (METADATA_REGION_GUID, 2 * MIB, MIB as u32, true),
        ]);
        let t = RegionTable::parse(&ok, REGION_TABLE_OFFSETS[0]).unwrap();
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.find(&BAT_REGION_GUID).unwrap().file_offset, 3 * MIB);
        assert!(t.find(&Guid([9; 16])).is_none());

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (ok[..1000].to_vec(), "truncated"),
            (
                {
                    let mut b = ok.clone();
                    b[0] = 0;
                    b
                },
                "signature",
            ),
            (
                {
                    let mut b = ok.clone();
                    b[40000] = 1;
                    b
                },
                "CRC-32C",
            ),
            (
                {
                    let mut b = ok.clone();
                    put_u32(&mut b, 8, 2048);
                    seal(&mut b, 4);
                    b
                },
                "at most 2047",
            ),
            (
                region_table(&[(BAT_REGION_GUID, MIB / 2, MIB as u32, true)]),
                "not a multiple of 1 MiB",
            ),
            (
                region_table(&[(BAT_REGION_GUID, 0, MIB as u32, true)]),
                "at or after 1 MiB",
            ),
            (
                region_table(&[(BAT_REGION_GUID, MIB, 4096, true)]),
                "not a multiple of 1 MiB",
            ),
            (
                region_table(&[
                    (BAT_REGION_GUID, MIB, MIB as u32, true),
                    (BAT_REGION_GUID, 2 * MIB, MIB as u32, true),
                ]),
                "listed twice",
            ),
            (
                region_table(&[
                    (BAT_REGION_GUID, MIB, 2 * MIB as u32, true),
                    (METADATA_REGION_GUID, 2 * MIB, MIB as u32, true),
                ]),
                "overlaps",
            ),
            (
                region_table(&[(BAT_REGION_GUID, u64::MAX - (MIB - 1), MIB as u32, true)]),
                "largest file offset",
            ),
        ];
        for (bytes, want) in cases {
            let e = RegionTable::parse(&bytes, REGION_TABLE_OFFSETS[1]).unwrap_err();
            assert_eq!(e.structure, "region table 2");
            assert!(e.offset >= REGION_TABLE_OFFSETS[1], "{e}");
            assert!(e.reason.contains(want), "wanted {want:?} in {e}");
        }
    }

    fn metadata_entry(id: Guid, offset: u32, length: u32, user: bool) -> MetadataEntry {
        MetadataEntry {
            item_id: id,
            offset,
            length,
            is_user: user,
            is_virtual_disk: false,
            is_required: true,
            reserved_nonzero: false,
        }
    }

    #[test]
    fn metadata_table_round_trip_and_every_rejection() {
        let table = MetadataTable {
            entries: vec![
                metadata_entry(FILE_PARAMETERS_GUID, 65536, 8, false),
                metadata_entry(VIRTUAL_DISK_SIZE_GUID, 65544, 8, false),
                metadata_entry(Guid([5; 16]), 0, 0, true),
            ],
        };
        let b = table.to_bytes();
        assert_eq!(MetadataTable::parse(&b, 2 * MIB, MIB).unwrap(), table);
        assert!(table.find(&FILE_PARAMETERS_GUID).is_some());
        assert!(
            table.find(&Guid([5; 16])).is_none(),
            "user items are not system items"
        );

        let parse = |entries: Vec<MetadataEntry>| {
            MetadataTable::parse(&MetadataTable { entries }.to_bytes(), 2 * MIB, MIB).unwrap_err()
        };
        let e = parse(vec![metadata_entry(FILE_PARAMETERS_GUID, 100, 8, false)]);
        assert!(e.reason.contains("inside the 64 KiB table"), "{e}");
        let e = parse(vec![metadata_entry(
            FILE_PARAMETERS_GUID,
            0x10_0000 - 4,
            8,
            false,
        )]);
        assert!(e.reason.contains("ends past"), "{e}");
        let e = parse(vec![metadata_entry(
            FILE_PARAMETERS_GUID,
            65536,
            (1 << 20) + 1,
            false,
        )]);
        assert!(e.reason.contains("at most 1 MiB"), "{e}");
        let e = parse(vec![metadata_entry(FILE_PARAMETERS_GUID, 65536, 0, false)]);
        assert!(e.reason.contains("must be 0"), "{e}");
        let e = parse(vec![
            metadata_entry(FILE_PARAMETERS_GUID, 65536, 8, false),
            metadata_entry(FILE_PARAMETERS_GUID, 65544, 8, false),
        ]);
        assert!(e.reason.contains("listed twice"), "{e}");
        let e = parse(vec![
            metadata_entry(FILE_PARAMETERS_GUID, 65536, 8, false),
            metadata_entry(VIRTUAL_DISK_SIZE_GUID, 65540, 8, false),
        ]);
        assert!(e.reason.contains("overlaps"), "{e}");
        let e = parse(
            (0..1025u32)
                .map(|i| metadata_entry(Guid::from_fields(i, 0, 0, [0; 8]), 0, 0, true))
                .collect(),
        );
        assert!(e.reason.contains("user items"), "{e}");

        let mut bad = b.clone();
        bad[0] = b'M';
        let e = MetadataTable::parse(&bad, 2 * MIB, MIB).unwrap_err();
        assert!(e.reason.contains("signature"), "{e}");
        let mut bad = b.clone();
        put_u16(&mut bad, 10, 2048);
        let e = MetadataTable::parse(&bad, 2 * MIB, MIB).unwrap_err();
        assert!(e.reason.contains("at most 2047"), "{e}");
        let e = MetadataTable::parse(&b[..100], 2 * MIB, MIB).unwrap_err();
        assert!(e.reason.contains("truncated"), "{e}");
    }

    #[test]
    fn metadata_items_parse_and_reject() {
        let p = FileParameters {
            block_size: 32 << 20,
            leave_blocks_allocated: false,
            has_parent: true,
        };
        assert_eq!(FileParameters::parse(&p.to_bytes(), 0).unwrap(), p);
        for bs in [0u32, (1 << 20) - 1, 3 << 20, 512 << 20] {
            let b = FileParameters {
                block_size: bs,
                ..p
            }
            .to_bytes();
            let e = FileParameters::parse(&b, 77).unwrap_err();
            assert_eq!((e.structure, e.offset), ("file parameters", 77));
            assert!(e.reason.contains("block size"), "{e}");
        }
        assert!(FileParameters::parse(&[0; 7], 0).is_err());

        assert_eq!(
            parse_virtual_disk_size(&(1u64 << 30).to_le_bytes(), 0, 512),
            Ok(1 << 30)
        );
        assert!(parse_virtual_disk_size(&0u64.to_le_bytes(), 0, 512).is_err());
        assert!(parse_virtual_disk_size(&513u64.to_le_bytes(), 0, 512).is_err());
        assert!(parse_virtual_disk_size(&(512u64 * 3).to_le_bytes(), 0, 4096).is_err());
        assert!(parse_virtual_disk_size(&((64u64 << 40) + 4096).to_le_bytes(), 0, 4096).is_err());
        assert!(parse_virtual_disk_size(&[0; 4], 0, 512).is_err());

        for ok in [512u32, 4096] {
            assert_eq!(
                parse_sector_size(&ok.to_le_bytes(), 0, "logical sector size"),
                Ok(ok)
            );
        }
        for bad in [0u32, 520, 1024, 2048, 8192] {
            let e = parse_sector_size(&bad.to_le_bytes(), 5, "logical sector size").unwrap_err();
            assert_eq!((e.structure, e.offset), ("logical sector size", 5));
            assert!(
                e.reason
                    .contains(&format!("sector size {bad} is not supported")),
                "{e}"
            );
        }
        assert!(parse_virtual_disk_id(&[1; 15], 0).is_err());
        assert_eq!(parse_virtual_disk_id(&[1; 16], 0), Ok(Guid([1; 16])));
    }

    #[test]
    fn parent_locator_round_trip_and_rejections() {
        let pl = ParentLocator {
            locator_type: VHDX_PARENT_LOCATOR_TYPE,
            entries: vec![
                (
                    "parent_linkage".into(),
                    "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}".into(),
                ),
                ("relative_path".into(), "..\\base.vhdx".into()),
            ],
        };
        let b = pl.to_bytes();
        let parsed = ParentLocator::parse(&b, 0).unwrap();
        assert_eq!(parsed, pl);
        assert_eq!(parsed.get("relative_path"), Some("..\\base.vhdx"));

        assert!(ParentLocator::parse(&b[..19], 0).is_err());
        // Entry count larger than the item.
        let mut bad = b.clone();
        put_u16(&mut bad, 18, 1000);
        assert!(ParentLocator::parse(&bad, 0)
            .unwrap_err()
            .reason
            .contains("do not fit"));
        // Key pointing outside the item.
        let mut bad = b.clone();
        put_u32(&mut bad, 20, 60000);
        assert!(ParentLocator::parse(&bad, 0)
            .unwrap_err()
            .reason
            .contains("outside"));
        // Zero length.
        let mut bad = b.clone();
        put_u16(&mut bad, 28, 0);
        assert!(ParentLocator::parse(&bad, 0)
            .unwrap_err()
            .reason
            .contains("zero"));
        // Odd length.
        let mut bad = b.clone();
        put_u16(&mut bad, 28, 3);
        assert!(ParentLocator::parse(&bad, 0)
            .unwrap_err()
            .reason
            .contains("odd"));
        // Duplicate key.
        let dup = ParentLocator {
            locator_type: VHDX_PARENT_LOCATOR_TYPE,
            entries: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        };
        assert!(ParentLocator::parse(&dup.to_bytes(), 0)
            .unwrap_err()
            .reason
            .contains("twice"));
        // NUL inside a value.
        let nul = ParentLocator {
            locator_type: VHDX_PARENT_LOCATOR_TYPE,
            entries: vec![("a".into(), "x\0y".into())],
        };
        assert!(ParentLocator::parse(&nul.to_bytes(), 0)
            .unwrap_err()
            .reason
            .contains("NUL"));
    }

    #[test]
    fn bat_entry_fields_and_counts() {
        let e = BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, 5 * MIB);
        assert_eq!(e.state(), 6);
        assert_eq!(e.file_offset(), 5 * MIB);
        assert_eq!(e.0, (5 << 20) | 6);
        assert_eq!(BatEntry(0x8).reserved_bits(), 1);
        // Section 2.4: 512-byte sectors and 32 MiB blocks give 128 blocks per chunk.
        assert_eq!(chunk_ratio(512, 32 << 20), 128);
        assert_eq!(chunk_ratio(4096, 1 << 20), 32768);
        assert_eq!(chunk_ratio(512, 256 << 20), 16);
        // 1 GiB at 32 MiB blocks: 32 payload entries, no bitmap entry needed.
        assert_eq!(bat_entry_count(1 << 30, 32 << 20, 512, false), 32);
        // 129 blocks: one interleaved sector bitmap entry after the first 128.
        assert_eq!(bat_entry_count(129 * (32 << 20), 32 << 20, 512, false), 130);
        assert_eq!(bat_entry_count(128 * (32 << 20), 32 << 20, 512, false), 128);
        // Differencing: whole chunks, each with its bitmap entry.
        assert_eq!(bat_entry_count(1 << 30, 32 << 20, 512, true), 129);
        assert_eq!(bat_entry_count(1, 1 << 20, 512, true), 4097);
    }

    #[test]
    fn log_entry_build_parse_round_trip() {
        let page: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let pages = vec![(3 * MIB, page.clone())];
        let zeros = vec![(4 * MIB, 8192)];
        let entry = build_log_entry(&LogEntryContents {
            sequence_number: 0x1_0000_0005,
            tail: 4096,
            log_guid: Guid([7; 16]),
            flushed_file_offset: 8 * MIB,
            last_file_offset: 9 * MIB,
            pages: &pages,
            zeros: &zeros,
        });
        assert_eq!(entry.len(), 2 * 4096);
        let h = LogEntryHeader::parse(&entry, 0).unwrap();
        assert_eq!(h.entry_length, 8192);
        assert_eq!(h.descriptor_count, 2);
        assert_eq!(h.tail, 4096);
        assert_eq!(h.checksum, checksum(&entry, 4));
        match LogDescriptor::parse(&entry[64..96], 64).unwrap() {
            LogDescriptor::Zero {
                zero_length,
                file_offset,
                sequence_number,
            } => assert_eq!(
                (zero_length, file_offset, sequence_number),
                (8192, 4 * MIB, 0x1_0000_0005)
            ),
            d => panic!("{d:?}"),
        }
        match LogDescriptor::parse(&entry[96..128], 96).unwrap() {
            LogDescriptor::Data {
                trailing_bytes,
                leading_bytes,
                file_offset,
                sequence_number,
            } => {
                assert_eq!(file_offset, 3 * MIB);
                let data = decode_data_sector(
                    &entry[4096..],
                    4096,
                    sequence_number,
                    &leading_bytes,
                    &trailing_bytes,
                )
                .unwrap();
                assert_eq!(data, page);
                let e = decode_data_sector(
                    &entry[4096..],
                    4096,
                    sequence_number + 1,
                    &leading_bytes,
                    &trailing_bytes,
                )
                .unwrap_err();
                assert!(e.reason.contains("does not match"), "{e}");
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(log_descriptor_sectors(0), 1);
        assert_eq!(log_descriptor_sectors(126), 1);
        assert_eq!(log_descriptor_sectors(127), 2);
        assert_eq!(log_descriptor_sectors(254), 2);
        assert_eq!(log_descriptor_sectors(255), 3);
    }

    #[test]
    fn log_structures_reject_bad_fields() {
        let entry = build_log_entry(&LogEntryContents {
            sequence_number: 1,
            tail: 0,
            log_guid: Guid([7; 16]),
            flushed_file_offset: MIB,
            last_file_offset: MIB,
            pages: &[],
            zeros: &[],
        });
        let with = |at: usize, v: u32| {
            let mut b = entry.clone();
            put_u32(&mut b, at, v);
            b
        };
        for (b, want) in [
            (with(0, 0), "signature"),
            (with(8, 100), "entry length"),
            (with(8, 0), "entry length"),
            (with(12, 5), "tail"),
            (with(16, 0), "sequence number is 0"),
            (with(28, 1), "reserved"),
            (with(24, 127), "descriptors need 2 sectors"),
        ] {
            let e = LogEntryHeader::parse(&b, 1 << 20).unwrap_err();
            assert_eq!(e.offset, 1 << 20);
            assert!(e.reason.contains(want), "wanted {want:?} in {e}");
        }
        assert!(LogEntryHeader::parse(&entry[..63], 0).is_err());
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(b"zero");
        put_u64(&mut d, 8, 100);
        assert!(LogDescriptor::parse(&d, 0)
            .unwrap_err()
            .reason
            .contains("zero length"));
        put_u64(&mut d, 8, 4096);
        put_u64(&mut d, 16, 5);
        assert!(LogDescriptor::parse(&d, 0)
            .unwrap_err()
            .reason
            .contains("file offset"));
        put_u32(&mut d, 4, 1);
        assert!(LogDescriptor::parse(&d, 0)
            .unwrap_err()
            .reason
            .contains("reserved"));
        d[..4].copy_from_slice(b"what");
        assert!(LogDescriptor::parse(&d, 0)
            .unwrap_err()
            .reason
            .contains("signature"));
        assert!(LogDescriptor::parse(&d[..31], 0).is_err());
        let mut s = vec![0u8; 4096];
        assert!(decode_data_sector(&s, 0, 1, &[0; 8], &[0; 4])
            .unwrap_err()
            .reason
            .contains("signature"));
        s[..4].copy_from_slice(b"data");
        assert!(decode_data_sector(&s[..4000], 0, 1, &[0; 8], &[0; 4]).is_err());
    }

    #[test]
    fn file_identifier_parse_and_build() {
        let b = FileIdentifier {
            creator: "rehost test".into(),
        }
        .to_bytes();
        assert_eq!(b.len(), 65536);
        assert_eq!(FileIdentifier::parse(&b).unwrap().creator, "rehost test");
        assert_eq!(FileIdentifier::parse(&b[..8]).unwrap().creator, "");
        let e = FileIdentifier::parse(b"vhdxfil").unwrap_err();
        assert!(e.reason.contains("only 7 bytes"), "{e}");
        let e = FileIdentifier::parse(b"conectix........").unwrap_err();
        assert!(e.reason.contains("signature"), "{e}");
    }
}
