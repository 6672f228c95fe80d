//! The replica record, `TARGET.rehost-replica`: which generation a target
//! image holds after the last delta stream applied to it, written
//! crash-safely (temporary file, fsync, rename, directory fsync).
//!
//! Layout, version 1 (all integers little-endian), 104 bytes:
//!
//! ```text
//!   0   8  magic "RHREPLIC"
//!   8   4  version (1)
//!  12   4  flags: bit 0 = the generation field is valid; bit 1 = the
//!          stamp includes a VHDX DataWriteGuid; other bits zero
//!  16  16  generation the target holds (the last stream's target
//!          generation; zero without flag bit 0)
//!  32  16  stream id of the last stream applied
//!  48   8  virtual size of the target in bytes
//!  56   8  target stamp after the apply: file size in bytes
//!  64   8  target stamp: modification time, seconds since the epoch
//!  72   4  target stamp: modification time, nanoseconds
//!  76   4  reserved, zero
//!  80  16  target stamp: VHDX DataWriteGuid (zero without flag bit 1)
//!  96   4  reserved, zero
//! 100   4  CRC-32C of bytes 0..104 with this field taken as zero
//! ```

use std::path::{Path, PathBuf};

use crate::dirty::sidecar_spec::ImageStamp;

use super::stream_spec::checksum;
use crate::dirty::sidecar_spec::{le128, le32, le64};

pub const MAGIC: &[u8; 8] = b"RHREPLIC";
pub const VERSION: u32 = 1;
pub const SIZE: usize = 104;
const CRC_AT: usize = 100;
const FLAG_GENERATION: u32 = 1;
const FLAG_DATA_WRITE_GUID: u32 = 2;

/// What a target holds after the last apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub generation: Option<u128>,
    pub stream_id: u128,
    pub disk_size: u64,
    pub stamp: ImageStamp,
}

/// Where the replica record of `target` lives.
pub fn replica_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".rehost-replica");
    PathBuf::from(s)
}

impl ReplicaRecord {
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let mut flags = 0;
        if self.generation.is_some() {
            flags |= FLAG_GENERATION;
        }
        if self.stamp.data_write_guid.is_some() {
            flags |= FLAG_DATA_WRITE_GUID;
        }
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..32].copy_from_slice(&self.generation.unwrap_or(0).to_le_bytes());
        b[32..48].copy_from_slice(&self.stream_id.to_le_bytes());
        b[48..56].copy_from_slice(&self.disk_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.stamp.file_size.to_le_bytes());
        b[64..72].copy_from_slice(&self.stamp.mtime_sec.to_le_bytes());
        b[72..76].copy_from_slice(&self.stamp.mtime_nsec.to_le_bytes());
        b[80..96].copy_from_slice(&self.stamp.data_write_guid.unwrap_or([0; 16]));
        let crc = checksum(&b, CRC_AT);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a record; the reason names the field when it is refused.
    pub fn parse(b: &[u8]) -> Result<ReplicaRecord, String> {
        if b.len() != SIZE {
            return Err(format!("{} bytes, not {SIZE}", b.len()));
        }
        if &b[0..8] != MAGIC {
            return Err("magic: not a rehost replica record".into());
        }
        if le32(b, 8) != VERSION {
            return Err(format!("version {} is not {VERSION}", le32(b, 8)));
        }
        let stored = le32(b, CRC_AT);
        let crc = checksum(b, CRC_AT);
        if stored != crc {
            return Err(format!(
                "checksum: stored CRC-32C {stored:#010x}, computed {crc:#010x}"
            ));
        }
        let flags = le32(b, 12);
        if flags & !(FLAG_GENERATION | FLAG_DATA_WRITE_GUID) != 0 {
            return Err(format!("flags: unknown bits {flags:#x}"));
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&b[80..96]);
        Ok(ReplicaRecord {
            generation: (flags & FLAG_GENERATION != 0).then(|| le128(b, 16)),
            stream_id: le128(b, 32),
            disk_size: le64(b, 48),
            stamp: ImageStamp {
                file_size: le64(b, 56),
                mtime_sec: le64(b, 64) as i64,
                mtime_nsec: le32(b, 72),
                data_write_guid: (flags & FLAG_DATA_WRITE_GUID != 0).then_some(guid),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_damage() {
        let r = ReplicaRecord {
            generation: Some(42),
            stream_id: 7,
            disk_size: 1 << 20,
            stamp: ImageStamp {
                file_size: 99,
                mtime_sec: -3,
                mtime_nsec: 12,
                data_write_guid: Some([1; 16]),
            },
        };
        assert_eq!(ReplicaRecord::parse(&r.to_bytes()), Ok(r));
        let b = r.to_bytes();
        for i in 0..SIZE {
            let mut d = b;
            d[i] ^= 4;
            assert!(ReplicaRecord::parse(&d).is_err(), "byte {i}");
        }
        assert!(ReplicaRecord::parse(&b[..SIZE - 1]).is_err());
    }
}
