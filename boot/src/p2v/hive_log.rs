//! In-memory replay of a dirty hive's transaction logs (.LOG1/.LOG2) in the
//! new ("HvLE", Windows 8.1 and later) format: each log entry carries dirty
//! pages of the hive bins data, applied in sequence-number order on a copy
//! of the hive. The primary file is never written.
//!
//! Entries are checked for signature, size, both Marvin32 hashes (hash 1
//! over the entry after its 40-byte header, hash 2 over its first 32
//! bytes), sequence continuity, and that every page lies inside the entry
//! and inside the hive bins data. The first entry that fails a check ends
//! the log, as Windows treats it.

use super::hive::{le_u32, le_u64, parse_base_block, Hive, HiveError};
use super::hive_spec::*;

/// Marvin32, the keyed hash the log entries carry (as published with the
/// .NET runtime), 64-bit result.
pub fn marvin32(data: &[u8], seed: u64) -> u64 {
    fn mix(p0: &mut u32, p1: &mut u32) {
        *p1 ^= *p0;
        *p0 = p0.rotate_left(20);
        *p0 = p0.wrapping_add(*p1);
        *p1 = p1.rotate_left(9);
        *p1 ^= *p0;
        *p0 = p0.rotate_left(27);
        *p0 = p0.wrapping_add(*p1);
        *p1 = p1.rotate_left(19);
    }
    let mut p0 = seed as u32;
    let mut p1 = (seed >> 32) as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        p0 = p0.wrapping_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        mix(&mut p0, &mut p1);
    }
    let tail = chunks.remainder();
    let last = match *tail {
        [] => 0x80,
        [a] => 0x8000 | u32::from(a),
        [a, b] => 0x80_0000 | u32::from(a) | u32::from(b) << 8,
        [a, b, c, ..] => 0x8000_0000 | u32::from(a) | u32::from(b) << 8 | u32::from(c) << 16,
    };
    p0 = p0.wrapping_add(last);
    mix(&mut p0, &mut p1);
    mix(&mut p0, &mut p1);
    u64::from(p1) << 32 | u64::from(p0)
}

fn err(log: &str, offset: usize, reason: String) -> HiveError {
    HiveError {
        hive: log.to_owned(),
        structure: "log entry",
        offset: offset as u64,
        reason,
    }
}

/// One parsed HvLE entry: sequence number, hive bins size, pages
/// (offset in the bins data, bytes).
struct LogEntry<'a> {
    sequence: u32,
    bins_size: u32,
    pages: Vec<(usize, &'a [u8])>,
}

fn parse_entries<'a>(log: &str, data: &'a [u8]) -> Result<Vec<LogEntry<'a>>, HiveError> {
    let mut out = Vec::new();
    let mut at = LOG_FIRST_ENTRY;
    while at + HVLE_HEADER_SIZE <= data.len() && &data[at..at + 4] == HVLE_SIGNATURE {
        let size = le_u32(data, at + HVLE_SIZE).unwrap_or(0) as usize;
        if size < HVLE_HEADER_SIZE || !size.is_multiple_of(512) || at + size > data.len() {
            break;
        }
        let entry = &data[at..at + size];
        let hash1 = le_u64(entry, HVLE_HASH1).unwrap_or(0);
        let hash2 = le_u64(entry, HVLE_HASH2).unwrap_or(0);
        if marvin32(&entry[..32], MARVIN_SEED) != hash2
            || marvin32(&entry[HVLE_HEADER_SIZE..], MARVIN_SEED) != hash1
        {
            break;
        }
        let sequence = le_u32(entry, HVLE_SEQUENCE).unwrap_or(0);
        let bins_size = le_u32(entry, HVLE_BINS_SIZE).unwrap_or(0);
        let count = le_u32(entry, HVLE_DIRTY_COUNT).unwrap_or(0) as usize;
        let refs_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(HVLE_HEADER_SIZE))
            .filter(|&n| n <= size)
            .ok_or_else(|| {
                err(
                    log,
                    at,
                    format!("{count} dirty page references do not fit in a {size}-byte entry"),
                )
            })?;
        let mut data_at = refs_end;
        let mut pages = Vec::with_capacity(count);
        for i in 0..count {
            let off = le_u32(entry, HVLE_HEADER_SIZE + i * 8).unwrap_or(0) as usize;
            let len = le_u32(entry, HVLE_HEADER_SIZE + i * 8 + 4).unwrap_or(0) as usize;
            let page = data_at
                .checked_add(len)
                .and_then(|end| entry.get(data_at..end))
                .ok_or_else(|| {
                    err(
                        log,
                        at,
                        format!("dirty page {i} ({len} bytes) reaches past the entry"),
                    )
                })?;
            pages.push((off, page));
            data_at += len;
        }
        out.push(LogEntry {
            sequence,
            bins_size,
            pages,
        });
        at += size;
    }
    Ok(out)
}

/// What a replay applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub entries: usize,
    pub pages: usize,
    pub first_sequence: Option<u32>,
    pub last_sequence: Option<u32>,
}

/// Replays the logs onto a copy of `hive`: every entry whose sequence
/// number is at least the hive's secondary sequence number, in order, for
/// as long as the numbers follow each other. Returns the replayed hive.
pub fn replay(hive: &Hive, logs: &[(String, Vec<u8>)]) -> Result<(Hive, Replayed), HiveError> {
    let mut parsed = Vec::new();
    for (name, data) in logs {
        let base = parse_base_block(name, data)?;
        match base.file_type {
            FILE_TYPE_LOG_NEW => {
                let entries = parse_entries(name, data)?;
                if let Some(first) = entries.first() {
                    parsed.push((first.sequence, name.clone(), entries));
                }
            }
            FILE_TYPE_LOG_OLD_1 | FILE_TYPE_LOG_OLD_2 => {
                return Err(HiveError {
                    hive: name.clone(),
                    structure: "base block",
                    offset: BB_FILE_TYPE as u64,
                    reason: "old-format (DIRT) transaction logs are not replayed".into(),
                })
            }
            other => {
                return Err(HiveError {
                    hive: name.clone(),
                    structure: "base block",
                    offset: BB_FILE_TYPE as u64,
                    reason: format!("file type {other} is not a transaction log"),
                })
            }
        }
    }
    parsed.sort_by_key(|(seq, _, _)| *seq);
    let base = hive.base_block();
    let mut data = hive.bytes().to_vec();
    let mut expected: Option<u32> = None;
    let mut applied = 0usize;
    let mut pages = 0usize;
    let mut first = None;
    let mut bins_size = base.hive_bins_size;
    for (_, name, entries) in &parsed {
        for e in entries {
            if e.sequence < base.secondary_sequence {
                continue;
            }
            if expected.is_some_and(|x| x != e.sequence) {
                break;
            }
            let end = BASE_BLOCK_SIZE + e.bins_size as usize;
            if !(e.bins_size as usize).is_multiple_of(HBIN_ALIGN) || end > 1 << 31 {
                return Err(err(
                    name,
                    0,
                    format!("entry {} has hive bins size {}", e.sequence, e.bins_size),
                ));
            }
            if data.len() < end {
                data.resize(end, 0);
            }
            for (off, page) in &e.pages {
                let start = BASE_BLOCK_SIZE + off;
                let stop = start + page.len();
                if stop > end {
                    return Err(err(
                        name,
                        0,
                        format!("entry {} writes past its hive bins size", e.sequence),
                    ));
                }
                data[start..stop].copy_from_slice(page);
            }
            bins_size = e.bins_size;
            first.get_or_insert(e.sequence);
            expected = Some(e.sequence.wrapping_add(1));
            applied += 1;
            pages += e.pages.len();
        }
    }
    // The recovered base block: both sequence numbers at the last applied
    // entry, the new bins size, a fresh checksum.
    if let Some(next) = expected {
        let last = next.wrapping_sub(1);
        data[BB_PRIMARY_SEQUENCE..BB_PRIMARY_SEQUENCE + 4].copy_from_slice(&last.to_le_bytes());
        data[BB_SECONDARY_SEQUENCE..BB_SECONDARY_SEQUENCE + 4].copy_from_slice(&last.to_le_bytes());
        data[BB_HIVE_BINS_SIZE..BB_HIVE_BINS_SIZE + 4].copy_from_slice(&bins_size.to_le_bytes());
        if let Some(sum) = super::hive::base_block_checksum(&data) {
            data[BB_CHECKSUM..BB_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
        }
    }
    let replayed = Hive::parse(hive.name(), data)?;
    Ok((
        replayed,
        Replayed {
            entries: applied,
            pages,
            first_sequence: first,
            last_sequence: expected.map(|n| n.wrapping_sub(1)),
        },
    ))
}
