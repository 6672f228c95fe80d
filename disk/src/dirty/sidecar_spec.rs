//! The bitmap sidecar file's layout (version 2, and version 1 read):
//! parsing and serialising, apart from behaviour. The byte-by-byte description is in the module
//! documentation of [`crate::dirty`].
//!
//! Every field is validated against the file's length before use; any
//! damage is a [`SidecarError`] naming the structure, offset and reason.

use std::fmt;

/// Size of one activity-log slot; two slots start the file.
pub const AL_SLOT_SIZE: usize = 4096;
/// Offset of the first state slot (after the two activity-log slots).
pub const STATE_OFFSET: usize = 2 * AL_SLOT_SIZE;
/// State slots are a multiple of this size (so that each starts on a
/// page of the file).
pub const STATE_SLOT_ALIGN: u64 = 4096;
pub const AL_SLOT_MAGIC: &[u8; 8] = b"RHDIRTAL";
pub const STATE_MAGIC: &[u8; 8] = b"RHDIRTY\0";
/// The version written: two state slots updated in place.
pub const VERSION: u32 = 2;
/// The first version (one state record to the end of the file, replaced
/// by renaming a new file over it): still read.
pub const VERSION_1: u32 = 1;
/// Fixed part of an activity-log slot before its extent list.
pub const AL_HEADER_SIZE: usize = 48;
/// Where an activity-log slot keeps its CRC-32C (its last 4 bytes).
pub const AL_CRC_AT: usize = AL_SLOT_SIZE - 4;
/// The most extents one activity-log slot holds.
pub const AL_MAX_EXTENTS: usize = (AL_CRC_AT - AL_HEADER_SIZE) / 8;
/// Size of the state record's header.
pub const STATE_HEADER_SIZE: usize = 128;
/// Size of a version-1 state record's header.
pub const STATE_HEADER_SIZE_V1: usize = 112;
/// Where the state record header keeps the CRC-32C of the whole record.
pub const STATE_CRC_AT: usize = 92;
/// Size of a bitmap entry's fixed part (the name follows, padded to 8).
pub const BITMAP_ENTRY_SIZE: usize = 40;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_BITMAPS: u32 = 64;
pub const GRANULARITY_MIN: u64 = 4 << 10;
pub const GRANULARITY_MAX: u64 = 16 << 20;
pub const AL_EXTENT_MIN: u64 = 64 << 10;
pub const AL_EXTENT_MAX: u64 = 1 << 30;
/// State flag: the image stamp fields hold a stamp.
pub const FLAG_STAMP_VALID: u32 = 1;
/// State flag: the stamp includes a VHDX DataWriteGuid.
pub const FLAG_DATA_WRITE_GUID: u32 = 2;
/// Bitmap state codes.
pub const STATE_TRACKING: u32 = 0;
pub const STATE_RESYNC_REQUIRED: u32 = 1;

/// A damaged or unsupported sidecar structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarError {
    pub structure: &'static str,
    pub offset: u64,
    pub reason: String,
}

impl SidecarError {
    fn new(structure: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        SidecarError {
            structure,
            offset,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SidecarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.structure, self.offset, self.reason
        )
    }
}

/// What the image file looked like when the state was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageStamp {
    pub file_size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// A VHDX image's DataWriteGuid (changed by every conforming writer
    /// before its first write of a session).
    pub data_write_guid: Option<[u8; 16]>,
}

/// One bitmap as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBitmap {
    pub name: String,
    pub granularity: u64,
    pub generation: u128,
    pub state: u32,
    /// Bit i covers bytes i*granularity..(i+1)*granularity, in 64-bit
    /// little-endian words.
    pub words: Vec<u64>,
    pub bits: u64,
}

/// The state record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    /// [`VERSION`] or [`VERSION_1`] when parsed; always written as
    /// [`VERSION`].
    pub version: u32,
    /// Version 2: grows by one at every persist; the valid slot with the
    /// highest one is current. Zero in version 1.
    pub sequence: u64,
    /// Version 2: the size of each state slot (the file is
    /// [`STATE_OFFSET`] + 2 x this). Zero in version 1.
    pub slot_size: u64,
    pub state_id: u128,
    pub virtual_size: u64,
    pub stamp: Option<ImageStamp>,
    pub al_capacity: u32,
    pub al_extent_size: u64,
    pub bitmaps: Vec<StoredBitmap>,
}

/// One activity-log slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlSlot {
    pub sequence: u64,
    /// The state record the log belongs to: version 1, its state id;
    /// version 2, [`StateRecord::al_owner`] (its sequence number and the
    /// low half of its state id).
    pub owner: u128,
    pub extent_size: u64,
    pub extents: Vec<u64>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
pub(crate) fn le128(b: &[u8], at: usize) -> u128 {
    let mut x = [0u8; 16];
    x.copy_from_slice(&b[at..at + 16]);
    u128::from_le_bytes(x)
}

/// CRC-32C of `buf` with its 4-byte checksum field at `at` taken as zero.
pub fn checksum(buf: &[u8], at: usize) -> u32 {
    let crc = crc32c::crc32c(&buf[..at]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &buf[at + 4..])
}

/// Bits a bitmap of `granularity` needs for a disk of `virtual_size`.
pub fn bit_count(virtual_size: u64, granularity: u64) -> u64 {
    virtual_size.div_ceil(granularity.max(1))
}

pub fn valid_granularity(g: u64) -> bool {
    g.is_power_of_two() && (GRANULARITY_MIN..=GRANULARITY_MAX).contains(&g)
}

pub fn valid_al_extent_size(e: u64) -> bool {
    e.is_power_of_two() && (AL_EXTENT_MIN..=AL_EXTENT_MAX).contains(&e)
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn padded(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl AlSlot {
    pub fn to_bytes(&self) -> [u8; AL_SLOT_SIZE] {
        let mut b = [0u8; AL_SLOT_SIZE];
        b[..8].copy_from_slice(AL_SLOT_MAGIC);
        b[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        b[16..32].copy_from_slice(&self.owner.to_le_bytes());
        b[32..40].copy_from_slice(&self.extent_size.to_le_bytes());
        let n = self.extents.len().min(AL_MAX_EXTENTS);
        b[40..44].copy_from_slice(&(n as u32).to_le_bytes());
        for (i, e) in self.extents.iter().take(n).enumerate() {
            let at = AL_HEADER_SIZE + i * 8;
            b[at..at + 8].copy_from_slice(&e.to_le_bytes());
        }
        let crc = checksum(&b, AL_CRC_AT);
        b[AL_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses the slot at file offset `offset`. `Ok(None)`: the slot was
    /// never written (all zeros).
    pub fn parse(b: &[u8], offset: u64) -> Result<Option<AlSlot>, SidecarError> {
        const S: &str = "activity log slot";
        if b.len() != AL_SLOT_SIZE {
            return Err(SidecarError::new(
                S,
                offset,
                format!("is {} bytes, expected {AL_SLOT_SIZE}", b.len()),
            ));
        }
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if &b[..8] != AL_SLOT_MAGIC {
            return Err(SidecarError::new(S, offset, "bad magic"));
        }
        let stored = le32(b, AL_CRC_AT);
        let computed = checksum(b, AL_CRC_AT);
        if stored != computed {
            return Err(SidecarError::new(
                S,
                offset + AL_CRC_AT as u64,
                format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let extent_size = le64(b, 32);
        if !valid_al_extent_size(extent_size) {
            return Err(SidecarError::new(
                S,
                offset + 32,
                format!("extent size {extent_size} is not a power of two from 64 KiB to 1 GiB"),
            ));
        }
        let n = le32(b, 40) as usize;
        if n > AL_MAX_EXTENTS {
            return Err(SidecarError::new(
                S,
                offset + 40,
                format!("{n} extents, at most {AL_MAX_EXTENTS} fit"),
            ));
        }
        let extents = (0..n).map(|i| le64(b, AL_HEADER_SIZE + i * 8)).collect();
        Ok(Some(AlSlot {
            sequence: le64(b, 8),
            owner: le128(b, 16),
            extent_size,
            extents,
        }))
    }
}

impl StateRecord {
    /// Bytes the record takes (without a slot's zero padding).
    pub fn encoded_len(&self) -> usize {
        STATE_HEADER_SIZE
            + self
                .bitmaps
                .iter()
                .map(|b| BITMAP_ENTRY_SIZE + padded(b.name.len()) + 8 * b.words.len())
                .sum::<usize>()
    }

    /// What an activity-log slot holds to say it belongs to this record
    /// (version 2): the record's sequence number in the low 8 bytes, the
    /// low 8 bytes of its state id in the high ones.
    pub fn al_owner(&self) -> u128 {
        if self.version == VERSION_1 {
            return self.state_id;
        }
        u128::from(self.sequence) | u128::from(self.state_id as u64) << 64
    }

    /// The record as version 2, unpadded.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; STATE_HEADER_SIZE];
        out[..8].copy_from_slice(STATE_MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(STATE_HEADER_SIZE as u32).to_le_bytes());
        out[16..32].copy_from_slice(&self.state_id.to_le_bytes());
        out[32..40].copy_from_slice(&self.virtual_size.to_le_bytes());
        let stamp = self.stamp.unwrap_or_default();
        out[40..48].copy_from_slice(&stamp.file_size.to_le_bytes());
        out[48..56].copy_from_slice(&stamp.mtime_sec.to_le_bytes());
        out[56..60].copy_from_slice(&stamp.mtime_nsec.to_le_bytes());
        out[60..64].copy_from_slice(&self.al_capacity.to_le_bytes());
        out[64..72].copy_from_slice(&self.al_extent_size.to_le_bytes());
        out[72..76].copy_from_slice(&(self.bitmaps.len() as u32).to_le_bytes());
        let mut flags = 0;
        if let Some(s) = &self.stamp {
            flags |= FLAG_STAMP_VALID;
            if let Some(g) = s.data_write_guid {
                flags |= FLAG_DATA_WRITE_GUID;
                out[96..112].copy_from_slice(&g);
            }
        }
        out[76..80].copy_from_slice(&flags.to_le_bytes());
        out[112..120].copy_from_slice(&self.sequence.to_le_bytes());
        out[120..128].copy_from_slice(&self.slot_size.to_le_bytes());
        for bm in &self.bitmaps {
            let name = bm.name.as_bytes();
            let mut e = vec![0u8; BITMAP_ENTRY_SIZE + padded(name.len())];
            e[0..2].copy_from_slice(&(name.len() as u16).to_le_bytes());
            e[4..8].copy_from_slice(&bm.state.to_le_bytes());
            e[8..16].copy_from_slice(&bm.granularity.to_le_bytes());
            e[16..32].copy_from_slice(&bm.generation.to_le_bytes());
            e[32..40].copy_from_slice(&bm.bits.to_le_bytes());
            e[BITMAP_ENTRY_SIZE..BITMAP_ENTRY_SIZE + name.len()].copy_from_slice(name);
            out.extend_from_slice(&e);
            for w in &bm.words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        let len = out.len() as u64;
        out[80..88].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&out, STATE_CRC_AT);
        out[STATE_CRC_AT..STATE_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The whole state slot: the record, then zeros to `slot_size` bytes.
    pub fn to_slot_bytes(&self) -> Vec<u8> {
        let mut out = self.to_bytes();
        out.resize(out.len().max(self.slot_size as usize), 0);
        out
    }

    /// Parses a state record: a version-2 state slot `b` (its whole
    /// `slot_size` bytes, read at file offset `base`), or a version-1
    /// record (the file from [`STATE_OFFSET`] to its end). With
    /// `verify_checksum` false the structure is still checked field by
    /// field (used to salvage bitmap names from a damaged file, whose bits
    /// are then never trusted).
    pub fn parse(b: &[u8], base: u64, verify_checksum: bool) -> Result<StateRecord, SidecarError> {
        const S: &str = "bitmap state record";
        let err = |at: usize, reason: String| SidecarError::new(S, base + at as u64, reason);
        if b.len() < STATE_HEADER_SIZE_V1 {
            return Err(err(
                0,
                format!(
                    "only {} bytes; the header is {STATE_HEADER_SIZE_V1} or more (truncated?)",
                    b.len()
                ),
            ));
        }
        if &b[..8] != STATE_MAGIC {
            return Err(err(0, "bad magic".into()));
        }
        let version = le32(b, 8);
        let expected_header = match version {
            VERSION => STATE_HEADER_SIZE,
            VERSION_1 => STATE_HEADER_SIZE_V1,
            _ => return Err(err(8, format!("unsupported version {version}"))),
        };
        let header_len = le32(b, 12) as usize;
        if header_len != expected_header {
            return Err(err(
                12,
                format!(
                    "header length {header_len}, expected {expected_header} for version {version}"
                ),
            ));
        }
        if b.len() < header_len {
            return Err(err(
                0,
                format!(
                    "only {} bytes; the header is {header_len} (truncated?)",
                    b.len()
                ),
            ));
        }
        let total = le64(b, 80);
        let (sequence, slot_size) = if version == VERSION {
            (le64(b, 112), le64(b, 120))
        } else {
            (0, 0)
        };
        if version == VERSION && slot_size != b.len() as u64 {
            return Err(err(
                120,
                format!("slot size {slot_size} but the slot is {} bytes", b.len()),
            ));
        }
        let fits = if version == VERSION {
            total >= header_len as u64 && total <= b.len() as u64
        } else {
            total == b.len() as u64
        };
        if !fits {
            return Err(err(
                80,
                format!(
                    "record length {total} but {} bytes follow in the file",
                    b.len()
                ),
            ));
        }
        let total = total as usize;
        if let Some(at) = b[total..].iter().position(|&x| x != 0) {
            return Err(err(
                total + at,
                "the state slot is not zero after its record".into(),
            ));
        }
        let b = &b[..total];
        if verify_checksum {
            let stored = le32(b, STATE_CRC_AT);
            let computed = checksum(b, STATE_CRC_AT);
            if stored != computed {
                return Err(err(
                    STATE_CRC_AT,
                    format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
                ));
            }
        }
        let virtual_size = le64(b, 32);
        let flags = le32(b, 76);
        if flags & !(FLAG_STAMP_VALID | FLAG_DATA_WRITE_GUID) != 0 || flags == FLAG_DATA_WRITE_GUID
        {
            return Err(err(76, format!("unknown flags {flags:#x}")));
        }
        if le32(b, 88) != 0 {
            return Err(err(88, "reserved field is not zero".into()));
        }
        let guid = (flags & FLAG_DATA_WRITE_GUID != 0).then(|| {
            let mut g = [0u8; 16];
            g.copy_from_slice(&b[96..112]);
            g
        });
        if guid.is_none() && b[96..112].iter().any(|&x| x != 0) {
            return Err(err(96, "DataWriteGuid set without its flag".into()));
        }
        let stamp = (flags & FLAG_STAMP_VALID != 0).then(|| ImageStamp {
            file_size: le64(b, 40),
            mtime_sec: le64(b, 48) as i64,
            mtime_nsec: le32(b, 56),
            data_write_guid: guid,
        });
        let al_capacity = le32(b, 60);
        if al_capacity == 0 || al_capacity as usize > AL_MAX_EXTENTS {
            return Err(err(
                60,
                format!("activity log capacity {al_capacity}, expected 1 to {AL_MAX_EXTENTS}"),
            ));
        }
        let al_extent_size = le64(b, 64);
        if !valid_al_extent_size(al_extent_size) {
            return Err(err(
                64,
                format!("activity log extent size {al_extent_size} is not a power of two from 64 KiB to 1 GiB"),
            ));
        }
        let count = le32(b, 72);
        if count > MAX_BITMAPS {
            return Err(err(72, format!("{count} bitmaps, at most {MAX_BITMAPS}")));
        }
        let mut at = header_len;
        let mut bitmaps: Vec<StoredBitmap> = Vec::new();
        for _ in 0..count {
            if b.len() - at < BITMAP_ENTRY_SIZE {
                return Err(err(at, "bitmap entry passes the end of the file".into()));
            }
            let name_len = le16(b, at) as usize;
            if name_len == 0 || name_len > MAX_NAME_LEN {
                return Err(err(
                    at,
                    format!("name length {name_len}, expected 1 to {MAX_NAME_LEN}"),
                ));
            }
            let state = le32(b, at + 4);
            if state != STATE_TRACKING && state != STATE_RESYNC_REQUIRED {
                return Err(err(at + 4, format!("unknown bitmap state {state}")));
            }
            let granularity = le64(b, at + 8);
            if !valid_granularity(granularity) {
                return Err(err(
                    at + 8,
                    format!("granularity {granularity} is not a power of two from 4 KiB to 16 MiB"),
                ));
            }
            let generation = le128(b, at + 16);
            let bits = le64(b, at + 32);
            if bits != bit_count(virtual_size, granularity) {
                return Err(err(
                    at + 32,
                    format!(
                        "{bits} bits, but a {virtual_size}-byte disk at granularity {granularity} needs {}",
                        bit_count(virtual_size, granularity)
                    ),
                ));
            }
            let name_at = at + BITMAP_ENTRY_SIZE;
            let name_span = padded(name_len);
            if b.len() - name_at < name_span {
                return Err(err(
                    name_at,
                    "bitmap name passes the end of the file".into(),
                ));
            }
            let name = std::str::from_utf8(&b[name_at..name_at + name_len])
                .ok()
                .filter(|n| valid_name(n))
                .ok_or_else(|| {
                    err(
                        name_at,
                        "bitmap name is not 1 to 64 letters, digits, '-', '_' or '.'".into(),
                    )
                })?
                .to_owned();
            if bitmaps.iter().any(|o| o.name == name) {
                return Err(err(name_at, format!("bitmap {name:?} is stored twice")));
            }
            let words_at = name_at + name_span;
            let nwords = bits.div_ceil(64);
            let avail = ((b.len() - words_at) / 8) as u64;
            if nwords > avail {
                return Err(err(
                    words_at,
                    format!("{nwords} bitmap words pass the end of the file"),
                ));
            }
            let nwords = nwords as usize;
            let words: Vec<u64> = (0..nwords).map(|i| le64(b, words_at + i * 8)).collect();
            let spare = bits % 64;
            if spare != 0 {
                if let Some(last) = words.last() {
                    if last >> spare != 0 {
                        return Err(err(
                            words_at + (nwords - 1) * 8,
                            "bits past the end of the disk are set".into(),
                        ));
                    }
                }
            }
            bitmaps.push(StoredBitmap {
                name,
                granularity,
                generation,
                state,
                words,
                bits,
            });
            at = words_at + nwords * 8;
        }
        if at != b.len() {
            return Err(err(
                at,
                format!("{} bytes after the last bitmap", b.len() - at),
            ));
        }
        Ok(StateRecord {
            version,
            sequence,
            slot_size,
            state_id: le128(b, 16),
            virtual_size,
            stamp,
            al_capacity,
            al_extent_size,
            bitmaps,
        })
    }
}

/// The state slots of a sidecar file, each with its file offset.
#[derive(Debug)]
pub struct StateSlots<'a> {
    /// [`VERSION_1`]: one record, to the end of the file; [`VERSION`]: two
    /// slots of equal size.
    pub version: u32,
    pub slots: Vec<(u64, &'a [u8])>,
}

/// Splits a sidecar file (at least [`STATE_OFFSET`] bytes) into its state
/// slots. A file whose first state bytes are a version-1 record is version
/// 1; any other is version 2, whose length must be [`STATE_OFFSET`] plus
/// two equal slots of a multiple of [`STATE_SLOT_ALIGN`] bytes.
pub fn state_slots(file: &[u8]) -> Result<StateSlots<'_>, SidecarError> {
    const S: &str = "bitmap sidecar";
    let Some(rest) = file.get(STATE_OFFSET..) else {
        return Err(SidecarError::new(
            S,
            0,
            format!(
                "only {} bytes, shorter than its two activity log slots (truncated?)",
                file.len()
            ),
        ));
    };
    if rest.len() >= 12 && &rest[..8] == STATE_MAGIC && le32(rest, 8) == VERSION_1 {
        return Ok(StateSlots {
            version: VERSION_1,
            slots: vec![(STATE_OFFSET as u64, rest)],
        });
    }
    let slot = rest.len() / 2;
    if rest.is_empty() || rest.len() % 2 != 0 || !(slot as u64).is_multiple_of(STATE_SLOT_ALIGN) {
        return Err(SidecarError::new(
            S,
            file.len() as u64,
            format!(
                "file length {} is not {STATE_OFFSET} bytes and two state slots of a multiple of {STATE_SLOT_ALIGN} bytes (truncated?)",
                file.len()
            ),
        ));
    }
    Ok(StateSlots {
        version: VERSION,
        slots: vec![
            (STATE_OFFSET as u64, &rest[..slot]),
            ((STATE_OFFSET + slot) as u64, &rest[slot..]),
        ],
    })
}
