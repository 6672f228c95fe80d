//! The delta stream's byte layout (version 1): the header, record header
//! and trailer as plain values, serialised and parsed apart from behaviour.
//! The byte-by-byte description is in the module documentation of
//! [`crate::delta`].
//!
//! Parsers take exactly the bytes of one structure and check every field
//! before it is used; damage is a [`SpecError`] naming the structure, the
//! field and the reason.

use std::fmt;

pub use crate::dirty::sidecar_spec::checksum;
use crate::dirty::sidecar_spec::{le128, le32, le64};

pub const MAGIC: &[u8; 8] = b"RHDELTA\0";
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 136;
pub const HEADER_CRC_AT: usize = 132;
pub const RECORD_HEADER_SIZE: usize = 32;
pub const RECORD_CRC_AT: usize = 28;
pub const TRAILER_SIZE: usize = 48;
pub const TRAILER_CRC_AT: usize = 44;

/// Record kinds (the first 4 bytes of every record, and of the trailer).
pub const KIND_RAW: u32 = 1;
pub const KIND_ZSTD: u32 = 2;
pub const KIND_ZERO: u32 = 3;
pub const KIND_END: u32 = 0xffff_ffff;

/// Header flag: a full stream (no source generation; any target of the
/// right size takes it).
pub const FLAG_FULL: u32 = 1;
/// Header flag: the target generation field is valid.
pub const FLAG_TARGET_GENERATION: u32 = 2;
pub const KNOWN_FLAGS: u32 = FLAG_FULL | FLAG_TARGET_GENERATION;

/// Unit of every offset and length.
pub const SECTOR: u64 = 512;
/// The most bytes one data record carries (uncompressed).
pub const MAX_RECORD_DATA: u64 = 4 << 20;
/// Largest disk a stream describes (2^56 bytes, 64 PiB: beyond every
/// format rehost opens).
pub const MAX_DISK_SIZE: u64 = 1 << 56;
pub const GRANULARITY_MIN: u64 = 512;
pub const GRANULARITY_MAX: u64 = 1 << 30;

/// Identity codes of the exported image's format.
pub const FORMAT_RAW: u32 = 0;
pub const FORMAT_VHD: u32 = 1;
pub const FORMAT_VHDX: u32 = 2;

/// A damaged or unsupported structure of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub structure: &'static str,
    pub field: &'static str,
    pub reason: String,
}

impl SpecError {
    fn new(structure: &'static str, field: &'static str, reason: impl Into<String>) -> Self {
        SpecError {
            structure,
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} field {}: {}",
            self.structure, self.field, self.reason
        )
    }
}

/// What the stream says about the image it was exported from (for people
/// and tools; apply does not compare it with the target, a replica being a
/// different file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageIdentity {
    /// [`FORMAT_RAW`], [`FORMAT_VHD`] or [`FORMAT_VHDX`].
    pub format: u32,
    /// The image file's size in bytes when exported.
    pub file_size: u64,
    /// The VHDX DataWriteGuid when exported (zero for other formats).
    pub data_write_guid: [u8; 16],
}

/// The stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub disk_size: u64,
    pub granularity: u64,
    /// `None`: a full stream.
    pub source_generation: Option<u128>,
    /// `None`: the stream leaves the target without a generation.
    pub target_generation: Option<u128>,
    pub stream_id: u128,
    pub created_sec: i64,
    pub created_nsec: u32,
    pub identity: ImageIdentity,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.disk_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.granularity.to_le_bytes());
        let mut flags = 0;
        if self.source_generation.is_none() {
            flags |= FLAG_FULL;
        }
        if self.target_generation.is_some() {
            flags |= FLAG_TARGET_GENERATION;
        }
        b[32..36].copy_from_slice(&flags.to_le_bytes());
        b[36..40].copy_from_slice(&(MAX_RECORD_DATA as u32).to_le_bytes());
        b[40..56].copy_from_slice(&self.source_generation.unwrap_or(0).to_le_bytes());
        b[56..72].copy_from_slice(&self.target_generation.unwrap_or(0).to_le_bytes());
        b[72..88].copy_from_slice(&self.stream_id.to_le_bytes());
        b[88..96].copy_from_slice(&self.created_sec.to_le_bytes());
        b[96..100].copy_from_slice(&self.created_nsec.to_le_bytes());
        b[100..104].copy_from_slice(&self.identity.format.to_le_bytes());
        b[104..112].copy_from_slice(&self.identity.file_size.to_le_bytes());
        b[112..128].copy_from_slice(&self.identity.data_write_guid);
        let crc = checksum(&b, HEADER_CRC_AT);
        b[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Result<Header, SpecError> {
        let e = |field, reason: String| SpecError::new("header", field, reason);
        if b.len() != HEADER_SIZE {
            return Err(e("length", format!("{} bytes, not {HEADER_SIZE}", b.len())));
        }
        if &b[0..8] != MAGIC {
            return Err(e("magic", "not a rehost delta stream".into()));
        }
        let version = le32(b, 8);
        if version != VERSION {
            return Err(e(
                "version",
                format!("version {version}; this rehost reads version {VERSION}"),
            ));
        }
        let stored = le32(b, HEADER_CRC_AT);
        let crc = checksum(b, HEADER_CRC_AT);
        if stored != crc {
            return Err(e(
                "checksum",
                format!("stored CRC-32C {stored:#010x}, computed {crc:#010x}"),
            ));
        }
        let len = le32(b, 12);
        if len as usize != HEADER_SIZE {
            return Err(e("header length", format!("{len}, not {HEADER_SIZE}")));
        }
        let disk_size = le64(b, 16);
        if disk_size == 0 || !disk_size.is_multiple_of(SECTOR) || disk_size > MAX_DISK_SIZE {
            return Err(e(
                "disk size",
                format!("{disk_size}: not a non-zero multiple of {SECTOR} up to {MAX_DISK_SIZE}"),
            ));
        }
        let granularity = le64(b, 24);
        if !granularity.is_power_of_two()
            || !(GRANULARITY_MIN..=GRANULARITY_MAX).contains(&granularity)
        {
            return Err(e(
                "granularity",
                format!(
                    "{granularity}: not a power of two from {GRANULARITY_MIN} to {GRANULARITY_MAX}"
                ),
            ));
        }
        let flags = le32(b, 32);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(e(
                "flags",
                format!("unknown bits {:#x}", flags & !KNOWN_FLAGS),
            ));
        }
        let max_record = le32(b, 36);
        if max_record == 0 || u64::from(max_record) > MAX_RECORD_DATA {
            return Err(e(
                "record size limit",
                format!("{max_record}: not 1 to {MAX_RECORD_DATA}"),
            ));
        }
        let source = le128(b, 40);
        let source_generation = if flags & FLAG_FULL != 0 {
            if source != 0 {
                return Err(e("source generation", "non-zero in a full stream".into()));
            }
            None
        } else {
            Some(source)
        };
        let target = le128(b, 56);
        let target_generation = if flags & FLAG_TARGET_GENERATION != 0 {
            Some(target)
        } else {
            if target != 0 {
                return Err(e("target generation", "non-zero but flagged absent".into()));
            }
            None
        };
        let created_nsec = le32(b, 96);
        if created_nsec >= 1_000_000_000 {
            return Err(e("creation time", format!("{created_nsec} nanoseconds")));
        }
        let format = le32(b, 100);
        if format > FORMAT_VHDX {
            return Err(e("image format", format!("unknown code {format}")));
        }
        let mut data_write_guid = [0u8; 16];
        data_write_guid.copy_from_slice(&b[112..128]);
        if le32(b, 128) != 0 {
            return Err(e("reserved", "not zero".into()));
        }
        Ok(Header {
            disk_size,
            granularity,
            source_generation,
            target_generation,
            stream_id: le128(b, 72),
            created_sec: le64(b, 88) as i64,
            created_nsec,
            identity: ImageIdentity {
                format,
                file_size: le64(b, 104),
                data_write_guid,
            },
        })
    }
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The data, stored as it is.
    Raw,
    /// The data, as one zstd frame.
    Zstd,
    /// The range reads as zeros; no payload.
    Zero,
}

impl RecordKind {
    pub fn code(self) -> u32 {
        match self {
            RecordKind::Raw => KIND_RAW,
            RecordKind::Zstd => KIND_ZSTD,
            RecordKind::Zero => KIND_ZERO,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Raw => "raw data",
            RecordKind::Zstd => "zstd data",
            RecordKind::Zero => "zero",
        }
    }
}

/// A record's header (the payload follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub payload_len: u32,
    pub offset: u64,
    pub len: u64,
}

impl RecordHeader {
    /// The header bytes with the CRC field zero; [`record_crc`] fills it.
    pub fn to_bytes(&self) -> [u8; RECORD_HEADER_SIZE] {
        let mut b = [0u8; RECORD_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.kind.code().to_le_bytes());
        b[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses a record header (the CRC is checked with the payload, by
    /// [`record_crc`]) against the disk size and the end of the previous
    /// record. The payload length is bounded here, before anything is
    /// allocated for it.
    pub fn parse(b: &[u8], disk_size: u64, previous_end: u64) -> Result<RecordHeader, SpecError> {
        let e = |field, reason: String| SpecError::new("record header", field, reason);
        if b.len() != RECORD_HEADER_SIZE {
            return Err(e("length", format!("{} bytes", b.len())));
        }
        let kind = match le32(b, 0) {
            KIND_RAW => RecordKind::Raw,
            KIND_ZSTD => RecordKind::Zstd,
            KIND_ZERO => RecordKind::Zero,
            k => return Err(e("kind", format!("unknown kind {k:#x}"))),
        };
        let payload_len = le32(b, 4);
        let offset = le64(b, 8);
        let len = le64(b, 16);
        if le32(b, 24) != 0 {
            return Err(e("reserved", "not zero".into()));
        }
        if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) || len == 0 {
            return Err(e(
                "extent",
                format!("offset {offset} length {len}: not a non-empty multiple of {SECTOR}"),
            ));
        }
        match offset.checked_add(len) {
            Some(end) if end <= disk_size => {}
            _ => {
                return Err(e(
                    "extent",
                    format!(
                        "offset {offset} length {len} reaches past the disk's {disk_size} bytes"
                    ),
                ))
            }
        }
        if offset < previous_end {
            return Err(e(
                "extent",
                format!("offset {offset} is before the previous record's end {previous_end} (records must be sorted and disjoint)"),
            ));
        }
        match kind {
            RecordKind::Zero => {
                if payload_len != 0 {
                    return Err(e(
                        "payload length",
                        format!("{payload_len} for a zero record"),
                    ));
                }
            }
            RecordKind::Raw | RecordKind::Zstd => {
                if len > MAX_RECORD_DATA {
                    return Err(e(
                        "extent",
                        format!("data record of {len} bytes, more than {MAX_RECORD_DATA}"),
                    ));
                }
                let ok = if kind == RecordKind::Raw {
                    u64::from(payload_len) == len
                } else {
                    payload_len > 0 && u64::from(payload_len) < len
                };
                if !ok {
                    return Err(e(
                        "payload length",
                        format!("{payload_len} for a {} record of {len} bytes", kind.name()),
                    ));
                }
            }
        }
        Ok(RecordHeader {
            kind,
            payload_len,
            offset,
            len,
        })
    }
}

/// CRC-32C of a record: its header (CRC field as zero) then its payload.
pub fn record_crc(header: &[u8; RECORD_HEADER_SIZE], payload: &[u8]) -> u32 {
    let crc = checksum(header, RECORD_CRC_AT);
    crc32c::crc32c_append(crc, payload)
}

/// The stream's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trailer {
    pub records: u64,
    /// Sum of the lengths of the data records (uncompressed).
    pub data_bytes: u64,
    /// Sum of the lengths of the zero records.
    pub zero_bytes: u64,
    /// Bytes of the stream before the trailer.
    pub stream_len: u64,
    /// CRC-32C of every byte of the stream before the trailer.
    pub stream_crc: u32,
}

impl Trailer {
    pub fn to_bytes(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..4].copy_from_slice(&KIND_END.to_le_bytes());
        b[4..8].copy_from_slice(&(TRAILER_SIZE as u32).to_le_bytes());
        b[8..16].copy_from_slice(&self.records.to_le_bytes());
        b[16..24].copy_from_slice(&self.data_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.zero_bytes.to_le_bytes());
        b[32..40].copy_from_slice(&self.stream_len.to_le_bytes());
        b[40..44].copy_from_slice(&self.stream_crc.to_le_bytes());
        let crc = checksum(&b, TRAILER_CRC_AT);
        b[TRAILER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Result<Trailer, SpecError> {
        let e = |field, reason: String| SpecError::new("trailer", field, reason);
        if b.len() != TRAILER_SIZE {
            return Err(e("length", format!("{} bytes", b.len())));
        }
        if le32(b, 0) != KIND_END {
            return Err(e("kind", "not the end marker".into()));
        }
        let stored = le32(b, TRAILER_CRC_AT);
        let crc = checksum(b, TRAILER_CRC_AT);
        if stored != crc {
            return Err(e(
                "checksum",
                format!("stored CRC-32C {stored:#010x}, computed {crc:#010x}"),
            ));
        }
        if le32(b, 4) as usize != TRAILER_SIZE {
            return Err(e("trailer length", format!("{}", le32(b, 4))));
        }
        Ok(Trailer {
            records: le64(b, 8),
            data_bytes: le64(b, 16),
            zero_bytes: le64(b, 24),
            stream_len: le64(b, 32),
            stream_crc: le32(b, 40),
        })
    }
}

/// The kind code at the start of a record or trailer.
pub fn kind_of(first4: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*first4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            disk_size: 1 << 30,
            granularity: 64 << 10,
            source_generation: Some(0x1234),
            target_generation: Some(0x5678),
            stream_id: 99,
            created_sec: 1_700_000_000,
            created_nsec: 5,
            identity: ImageIdentity {
                format: FORMAT_VHDX,
                file_size: 4 << 20,
                data_write_guid: [7; 16],
            },
        }
    }

    #[test]
    fn header_round_trips_and_checks_fields() {
        let h = header();
        assert_eq!(Header::parse(&h.to_bytes()), Ok(h));
        let full = Header {
            source_generation: None,
            target_generation: None,
            ..h
        };
        assert_eq!(Header::parse(&full.to_bytes()), Ok(full));
        // Each byte flipped is refused (CRC or field).
        let b = h.to_bytes();
        for i in 0..HEADER_SIZE {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(Header::parse(&d).is_err(), "byte {i}");
        }
        // A field out of range with a matching CRC names the field.
        let mut d = b;
        d[24..32].copy_from_slice(&3000u64.to_le_bytes());
        let crc = checksum(&d, HEADER_CRC_AT);
        d[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Header::parse(&d).unwrap_err().field, "granularity");
    }

    #[test]
    fn record_headers_are_bounded() {
        let ok = |kind, payload_len, offset, len| {
            RecordHeader::parse(
                &RecordHeader {
                    kind,
                    payload_len,
                    offset,
                    len,
                }
                .to_bytes(),
                1 << 30,
                4096,
            )
        };
        assert!(ok(RecordKind::Raw, 4096, 4096, 4096).is_ok());
        assert!(ok(RecordKind::Zstd, 100, 4096, 4096).is_ok());
        assert!(ok(RecordKind::Zero, 0, 8192, 1 << 29).is_ok());
        // Before the previous end, misaligned, empty, past the end.
        assert_eq!(
            ok(RecordKind::Raw, 512, 0, 512).unwrap_err().field,
            "extent"
        );
        assert!(ok(RecordKind::Raw, 512, 4097, 512).is_err());
        assert!(ok(RecordKind::Zero, 0, 4096, 0).is_err());
        assert!(ok(RecordKind::Zero, 0, (1 << 30) - 512, 1024).is_err());
        assert!(ok(RecordKind::Zero, 0, u64::MAX - 511, 1024).is_err());
        // Payload lengths that do not fit the kind.
        assert!(ok(RecordKind::Raw, 512, 4096, 1024).is_err());
        assert!(ok(RecordKind::Zstd, 1024, 4096, 1024).is_err());
        assert!(ok(RecordKind::Zstd, 0, 4096, 1024).is_err());
        assert!(ok(RecordKind::Zero, 1, 4096, 1024).is_err());
        // Data records are capped.
        let big = MAX_RECORD_DATA + 512;
        assert!(ok(RecordKind::Zstd, 100, 4096, big).is_err());
    }

    #[test]
    fn trailer_round_trips() {
        let t = Trailer {
            records: 3,
            data_bytes: 1 << 20,
            zero_bytes: 512,
            stream_len: 12345,
            stream_crc: 0xdead_beef,
        };
        assert_eq!(Trailer::parse(&t.to_bytes()), Ok(t));
        let mut b = t.to_bytes();
        b[9] ^= 1;
        assert_eq!(Trailer::parse(&b).unwrap_err().field, "checksum");
    }
}
