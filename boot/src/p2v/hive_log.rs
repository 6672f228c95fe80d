//! In-memory replay of a dirty hive's transaction logs on a copy of the
//! hive; the primary file is never written. Both formats the public
//! "Windows registry file format specification" (Maxim Suhanov) describes:
//!
//! - new ("HvLE", Windows 8.1 and later, .LOG1/.LOG2): each log entry
//!   carries dirty pages of the hive bins data, applied in sequence-number
//!   order across both logs. Entries are checked for signature, size, both
//!   Marvin32 hashes (hash 1 over the entry after its 40-byte header, hash 2
//!   over its first 32 bytes), sequence continuity, and that every page lies
//!   inside the entry and inside the hive bins data. The first entry that
//!   fails a check ends the log, as Windows treats it.
//! - old (Windows XP to 8, .LOG or .LOG1/.LOG2): one log is chosen (see
//!   [`choose_old`]); after its base block (one logical sector) comes the
//!   "DIRT" dirty vector, a bitmap with one bit per 512-byte page of the
//!   hive bins data (its size taken from the log's base block), then, from
//!   the next sector, one 512-byte page per set bit. Pages are applied bin
//!   by bin; a bin whose header (from the log or the primary) is not a valid
//!   "hbin" at its own offset stops the recovery there, as Windows does.

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

/// The format of the transaction logs a replay used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// "HvLE" log entries (Windows 8.1 and later).
    New,
    /// A "DIRT" dirty vector and 512-byte dirty pages (Windows XP to 8).
    Old,
}

/// What a replay applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub format: LogFormat,
    /// New format: log entries applied; old format: 1 when the chosen log
    /// applied anything.
    pub entries: usize,
    /// Dirty pages written (old format: 512-byte pages).
    pub pages: usize,
    pub first_sequence: Option<u32>,
    pub last_sequence: Option<u32>,
    /// The logs whose data was applied.
    pub used: Vec<String>,
    /// Why the recovery stopped before the end of the log, if it did (the
    /// replayed hive then misses the rest of the log's changes).
    pub stopped: Option<String>,
}

/// Replays the logs onto a copy of `hive`: every entry whose sequence
/// number is at least the hive's secondary sequence number, in order, for
/// as long as the numbers follow each other. Returns the replayed hive.
///
/// `logs` are (file name, bytes); the names' endings (".LOG1", ".LOG2",
/// ".LOG") tell the old format's logs apart. New-format logs are used when
/// there are any (a dual-logging hive may keep a dummy .LOG beside them);
/// else the old-format log [`choose_old`] picks is applied.
pub fn replay(hive: &Hive, logs: &[(String, Vec<u8>)]) -> Result<(Hive, Replayed), HiveError> {
    let mut new = Vec::new();
    let mut old = Vec::new();
    let mut refused = None;
    for (name, data) in logs {
        match parse_base_block(name, data) {
            Ok(b) if b.file_type == FILE_TYPE_LOG_NEW => new.push((name, data)),
            Ok(b) if matches!(b.file_type, FILE_TYPE_LOG_OLD_1 | FILE_TYPE_LOG_OLD_2) => {
                old.push((name.as_str(), data.as_slice()))
            }
            Ok(b) => {
                refused.get_or_insert(HiveError {
                    hive: name.clone(),
                    structure: "base block",
                    offset: BB_FILE_TYPE as u64,
                    reason: format!("file type {} is not a transaction log", b.file_type),
                });
            }
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    if new.is_empty() {
        if old.is_empty() {
            return Err(refused.unwrap_or_else(|| err(hive.name(), 0, "no transaction log".into())));
        }
        return replay_old(hive, &old);
    }
    let mut parsed = Vec::new();
    for (name, data) in new {
        let entries = parse_entries(name, data)?;
        if let Some(first) = entries.first() {
            parsed.push((first.sequence, name.clone(), entries));
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
    let mut used = Vec::new();
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
            if used.last() != Some(name) {
                used.push(name.clone());
            }
            first.get_or_insert(e.sequence);
            expected = Some(e.sequence.wrapping_add(1));
            applied += 1;
            pages += e.pages.len();
        }
    }
    // The recovered base block: both sequence numbers at the last applied
    // entry, the new bins size, a fresh checksum.
    if let Some(next) = expected {
        recovered_base_block(&mut data, next.wrapping_sub(1), bins_size);
    }
    let replayed = Hive::parse(hive.name(), data)?;
    Ok((
        replayed,
        Replayed {
            format: LogFormat::New,
            entries: applied,
            pages,
            first_sequence: first,
            last_sequence: expected.map(|n| n.wrapping_sub(1)),
            used,
            stopped: None,
        },
    ))
}

/// Sets both sequence numbers and the hive bins size of a recovered hive's
/// base block and recomputes its checksum.
fn recovered_base_block(data: &mut [u8], sequence: u32, bins_size: u32) {
    data[BB_PRIMARY_SEQUENCE..BB_PRIMARY_SEQUENCE + 4].copy_from_slice(&sequence.to_le_bytes());
    data[BB_SECONDARY_SEQUENCE..BB_SECONDARY_SEQUENCE + 4].copy_from_slice(&sequence.to_le_bytes());
    data[BB_HIVE_BINS_SIZE..BB_HIVE_BINS_SIZE + 4].copy_from_slice(&bins_size.to_le_bytes());
    if let Some(sum) = super::hive::base_block_checksum(data) {
        data[BB_CHECKSUM..BB_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
    }
}

/// An old-format log's base block, checked as Windows checks it: a "regf"
/// signature, file type 1 (XP and later) or 2 (Windows 2000), a correct
/// checksum and equal sequence numbers.
struct OldLog<'a> {
    name: &'a str,
    data: &'a [u8],
    sequence: u32,
    timestamp: u64,
}

fn old_log<'a>(name: &'a str, data: &'a [u8]) -> Result<OldLog<'a>, HiveError> {
    let base = parse_base_block(name, data)?;
    let bad = |offset: usize, reason: String| HiveError {
        hive: name.to_owned(),
        structure: "log base block",
        offset: offset as u64,
        reason,
    };
    if !matches!(base.file_type, FILE_TYPE_LOG_OLD_1 | FILE_TYPE_LOG_OLD_2) {
        return Err(bad(
            BB_FILE_TYPE,
            format!(
                "file type {} is not an old-format log (1 or 2)",
                base.file_type
            ),
        ));
    }
    if !base.checksum_ok {
        return Err(bad(
            BB_CHECKSUM,
            format!("checksum {:#010x} does not match the block", base.checksum),
        ));
    }
    if base.primary_sequence != base.secondary_sequence {
        return Err(bad(
            BB_PRIMARY_SEQUENCE,
            format!(
                "sequence numbers {} / {} differ: the log was not written completely",
                base.primary_sequence, base.secondary_sequence
            ),
        ));
    }
    Ok(OldLog {
        name,
        data,
        sequence: base.primary_sequence,
        timestamp: le_u64(data, BB_TIMESTAMP).unwrap_or(0),
    })
}

/// The timestamp a log must carry to apply to `hive`: the base block's when
/// its checksum is right, else the first hive bin's.
fn primary_timestamp(hive: &Hive) -> u64 {
    let at = if hive.base_block().checksum_ok {
        BB_TIMESTAMP
    } else {
        BASE_BLOCK_SIZE + HBIN_TIMESTAMP
    };
    le_u64(hive.bytes(), at).unwrap_or(0)
}

/// Picks the old-format log to apply, as Windows 8 (and Windows 7 since
/// KB3140410) does: .LOG2 when its base block is valid and either .LOG1's
/// is not or .LOG2's last written timestamp is more recent; else .LOG1 when
/// valid and its timestamp matches the primary's; else a single-log
/// scheme's .LOG on the same terms. Names without one of these endings
/// count as .LOG1, .LOG2, .LOG in the order given. Returns the chosen log,
/// or every log's reason for refusal.
fn choose_old<'a>(hive: &Hive, logs: &[(&'a str, &'a [u8])]) -> Result<OldLog<'a>, HiveError> {
    let role = |i: usize, name: &str| {
        let upper = name.to_ascii_uppercase();
        if upper.ends_with(".LOG1") {
            1
        } else if upper.ends_with(".LOG2") {
            2
        } else if upper.ends_with(".LOG") {
            0
        } else {
            [1, 2, 0].get(i).copied().unwrap_or(0)
        }
    };
    let mut slots: [Option<Result<OldLog<'a>, HiveError>>; 3] = [None, None, None];
    for (i, &(name, data)) in logs.iter().enumerate() {
        let r = role(i, name);
        if slots[r].is_none() {
            slots[r] = Some(old_log(name, data));
        }
    }
    let [single, log1, log2] = slots;
    let want = primary_timestamp(hive);
    let mut reasons = Vec::new();
    let log1_time = match &log1 {
        Some(Ok(l)) => Some(l.timestamp),
        _ => None,
    };
    match log2 {
        Some(Ok(l)) if log1_time.is_none_or(|t| l.timestamp > t) => return Ok(l),
        Some(Ok(l)) => reasons.push(format!("{}: not more recent than .LOG1", l.name)),
        Some(Err(e)) => reasons.push(e.to_string()),
        None => {}
    }
    for log in [log1, single].into_iter().flatten() {
        match log {
            Ok(l) if l.timestamp == want => return Ok(l),
            Ok(l) => reasons.push(format!(
                "{}: last written timestamp {:#x} is not the primary's {want:#x}",
                l.name, l.timestamp
            )),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    Err(HiveError {
        hive: hive.name().to_owned(),
        structure: "transaction logs",
        offset: 0,
        reason: format!("no old-format log applies: {}", reasons.join("; ")),
    })
}

/// Dirty pages of an old-format log: (offset in the hive bins data, its
/// 512 bytes), in order.
type DirtyPages<'a> = Vec<(usize, &'a [u8])>;

/// The dirty pages of an old-format log and the hive bins data size from
/// its base block.
fn dirty_pages<'a>(log: &OldLog<'a>) -> Result<(usize, DirtyPages<'a>), HiveError> {
    let data = log.data;
    let bad = |offset: usize, structure: &'static str, reason: String| HiveError {
        hive: log.name.to_owned(),
        structure,
        offset: offset as u64,
        reason,
    };
    let factor = le_u32(data, BB_CLUSTERING_FACTOR).unwrap_or(0);
    if factor == 0 || factor > MAX_CLUSTERING_FACTOR {
        return Err(bad(
            BB_CLUSTERING_FACTOR,
            "log base block",
            format!("clustering factor {factor} is not 1 to {MAX_CLUSTERING_FACTOR}"),
        ));
    }
    let sector = factor as usize * DIRTY_PAGE_SIZE;
    let bins = le_u32(data, BB_HIVE_BINS_SIZE).unwrap_or(0) as usize;
    if bins == 0 || !bins.is_multiple_of(HBIN_ALIGN) || bins > MAX_HIVE_BINS_SIZE {
        return Err(bad(
            BB_HIVE_BINS_SIZE,
            "log base block",
            format!(
                "hive bins data size {bins} is not a non-zero multiple of {HBIN_ALIGN} below 2 GiB"
            ),
        ));
    }
    // One bit per 512-byte page: bins / 512 bits, bins / 4096 bytes.
    let bitmap_len = bins / (DIRTY_PAGE_SIZE * 8);
    let vector_end = sector + DIRT_SIGNATURE.len() + bitmap_len;
    if vector_end > data.len() {
        return Err(bad(
            sector,
            "dirty vector",
            format!(
                "a dirty vector for {bins} bytes of hive bins ends at {vector_end}, past the end of the {}-byte log",
                data.len()
            ),
        ));
    }
    if &data[sector..sector + 4] != DIRT_SIGNATURE {
        return Err(bad(
            sector,
            "dirty vector",
            format!(
                "signature is {:02x?}, not \"DIRT\"",
                &data[sector..sector + 4]
            ),
        ));
    }
    let bitmap = &data[sector + 4..vector_end];
    let mut at = vector_end.div_ceil(sector) * sector;
    let mut pages = Vec::new();
    for (byte_index, &byte) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) == 0 {
                continue;
            }
            let index = byte_index * 8 + bit;
            let page = data.get(at..at + DIRTY_PAGE_SIZE).ok_or_else(|| {
                bad(
                    at,
                    "dirty page",
                    format!(
                        "dirty page {} (hive bins offset {:#x}) reaches past the end of the {}-byte log",
                        pages.len(),
                        index * DIRTY_PAGE_SIZE,
                        data.len()
                    ),
                )
            })?;
            pages.push((index * DIRTY_PAGE_SIZE, page));
            at += DIRTY_PAGE_SIZE;
        }
    }
    Ok((bins, pages))
}

/// Why the hive bin at `pos` (offset in the bins data) of `image` is not a
/// valid bin that ends inside `bins`, if it is not.
fn bad_bin(image: &[u8], pos: usize, bins: usize) -> Option<String> {
    let at = BASE_BLOCK_SIZE + pos;
    if image.get(at..at + 4) != Some(HBIN_SIGNATURE.as_slice()) {
        return Some("no \"hbin\" signature".into());
    }
    let offset = le_u32(image, at + HBIN_OFFSET).unwrap_or(u32::MAX) as usize;
    let size = le_u32(image, at + HBIN_SIZE).unwrap_or(0) as usize;
    if offset != pos {
        return Some(format!("its offset field says {offset:#x}"));
    }
    if size < HBIN_ALIGN || !size.is_multiple_of(HBIN_ALIGN) || pos + size > bins {
        return Some(format!(
            "its size {size:#x} is not a multiple of 4096 inside the hive bins data"
        ));
    }
    None
}

/// Applies the old-format log [`choose_old`] picks, bin by bin.
fn replay_old(hive: &Hive, logs: &[(&str, &[u8])]) -> Result<(Hive, Replayed), HiveError> {
    let log = choose_old(hive, logs)?;
    let (bins, pages) = dirty_pages(&log)?;
    let mut image = hive.bytes().to_vec();
    image.resize(BASE_BLOCK_SIZE + bins, 0);
    let mut next = 0; // first dirty page not yet applied
    let mut pos = 0; // offset of the current bin in the bins data
    let mut applied = 0;
    let mut stopped = None;
    while next < pages.len() && pos < bins {
        // The bin's header page may itself be in the log.
        if let Some((off, page)) = pages.get(next).filter(|(off, _)| *off == pos) {
            let at = BASE_BLOCK_SIZE + off;
            image[at..at + DIRTY_PAGE_SIZE].copy_from_slice(page);
        }
        if let Some(why) = bad_bin(&image, pos, bins) {
            if pages[next].0 < pos + HBIN_ALIGN {
                stopped = Some(format!(
                    "the dirty hive bin at bins offset {pos:#x} is invalid ({why}); {} of {} dirty pages applied",
                    applied,
                    pages.len()
                ));
                // Undo the header page written above: an invalid bin is ignored.
                if pages[next].0 == pos {
                    let at = BASE_BLOCK_SIZE + pos;
                    let old = hive.bytes().get(at..at + DIRTY_PAGE_SIZE);
                    let dst = &mut image[at..at + DIRTY_PAGE_SIZE];
                    match old {
                        Some(o) => dst.copy_from_slice(o),
                        None => dst.fill(0),
                    }
                }
            } else {
                stopped = Some(format!(
                    "the hive bin at bins offset {pos:#x} is invalid ({why}), so the dirty pages from bins offset {:#x} on cannot be placed; {} of {} applied",
                    pages[next].0,
                    applied,
                    pages.len()
                ));
            }
            break;
        }
        let size = le_u32(&image, BASE_BLOCK_SIZE + pos + HBIN_SIZE).unwrap_or(0) as usize;
        while let Some((off, page)) = pages.get(next).filter(|(off, _)| *off < pos + size) {
            let at = BASE_BLOCK_SIZE + off;
            image[at..at + DIRTY_PAGE_SIZE].copy_from_slice(page);
            next += 1;
            applied += 1;
        }
        pos += size;
    }
    let sequence = hive.base_block().primary_sequence;
    recovered_base_block(&mut image, sequence, bins as u32);
    let replayed = Hive::parse(hive.name(), image)?;
    Ok((
        replayed,
        Replayed {
            format: LogFormat::Old,
            entries: usize::from(applied > 0),
            pages: applied,
            first_sequence: Some(log.sequence),
            last_sequence: Some(log.sequence),
            used: vec![log.name.to_owned()],
            stopped,
        },
    ))
}

/// Writes the old-format (Windows XP to 8) transaction log that takes the
/// hive `before` to `after`: a 512-byte base block copied from `after`
/// (file type 1, both sequence numbers `sequence`, clustering factor 1,
/// fresh checksum), the "DIRT" vector marking every 512-byte page of the
/// hive bins data that differs, and those pages. For tests and fuzzing
/// seeds: rehost itself never writes logs. `None` when `after` has no base
/// block or its bins data is not a multiple of 4096 bytes.
pub fn old_format_log(before: &[u8], after: &[u8], sequence: u32) -> Option<Vec<u8>> {
    let bins = after.len().checked_sub(BASE_BLOCK_SIZE)?;
    if !bins.is_multiple_of(HBIN_ALIGN) {
        return None;
    }
    let mut log = after[..DIRTY_PAGE_SIZE].to_vec();
    log[BB_PRIMARY_SEQUENCE..BB_PRIMARY_SEQUENCE + 4].copy_from_slice(&sequence.to_le_bytes());
    log[BB_SECONDARY_SEQUENCE..BB_SECONDARY_SEQUENCE + 4].copy_from_slice(&sequence.to_le_bytes());
    log[BB_FILE_TYPE..BB_FILE_TYPE + 4].copy_from_slice(&FILE_TYPE_LOG_OLD_1.to_le_bytes());
    log[BB_CLUSTERING_FACTOR..BB_CLUSTERING_FACTOR + 4].copy_from_slice(&1u32.to_le_bytes());
    log[BB_HIVE_BINS_SIZE..BB_HIVE_BINS_SIZE + 4].copy_from_slice(&(bins as u32).to_le_bytes());
    let sum = super::hive::base_block_checksum(&log)?;
    log[BB_CHECKSUM..BB_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
    let mut bitmap = vec![0u8; bins / (DIRTY_PAGE_SIZE * 8)];
    let mut pages = Vec::new();
    for (i, page) in after[BASE_BLOCK_SIZE..].chunks(DIRTY_PAGE_SIZE).enumerate() {
        let at = BASE_BLOCK_SIZE + i * DIRTY_PAGE_SIZE;
        if before.get(at..at + DIRTY_PAGE_SIZE) != Some(page) {
            bitmap[i / 8] |= 1 << (i % 8);
            pages.extend_from_slice(page);
        }
    }
    log.extend_from_slice(DIRT_SIGNATURE);
    log.extend_from_slice(&bitmap);
    log.resize(log.len().div_ceil(DIRTY_PAGE_SIZE) * DIRTY_PAGE_SIZE, 0);
    log.extend_from_slice(&pages);
    Some(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2v::hive::base_block_checksum;
    use proptest::prelude::*;

    fn sample(name: &str) -> Vec<u8> {
        let dir = std::env::var_os("REHOST_HIVES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/work/shared/samples/hives".into());
        let out = std::process::Command::new("xz")
            .arg("-dc")
            .arg(dir.join(format!("{name}.xz")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sample hive {name} (set REHOST_HIVES)"
        );
        out.stdout
    }

    fn set_u32(data: &mut [u8], at: usize, v: u32) {
        data[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A primary file left dirty by a write that stopped after the log:
    /// the primary sequence number one ahead.
    fn dirty(before: &[u8], sequence: u32) -> Hive {
        let mut d = before.to_vec();
        set_u32(&mut d, BB_PRIMARY_SEQUENCE, sequence);
        let sum = base_block_checksum(&d).unwrap();
        set_u32(&mut d, BB_CHECKSUM, sum);
        Hive::parse("SYSTEM", d).unwrap()
    }

    /// SYSTEM with msahci's Start changed from 3 to 0 in place: (before,
    /// after, the hive's next sequence number).
    fn system_change() -> (Vec<u8>, Vec<u8>, u32) {
        let before = sample("SYSTEM");
        let mut h = Hive::parse("SYSTEM", before.clone()).unwrap();
        let cell = h
            .open("ControlSet001\\Services\\msahci")
            .unwrap()
            .unwrap()
            .value("Start")
            .unwrap()
            .unwrap()
            .cell_offset();
        h.set_dword_in_place(cell, 0).unwrap();
        let seq = h.base_block().primary_sequence + 1;
        (before, h.bytes().to_vec(), seq)
    }

    fn msahci_start(h: &Hive) -> Option<u32> {
        h.open("ControlSet001\\Services\\msahci")
            .unwrap()
            .unwrap()
            .dword("Start")
            .unwrap()
    }

    #[test]
    fn old_format_log_replays_a_changed_value() {
        let (before, after, seq) = system_change();
        let log = old_format_log(&before, &after, seq).unwrap();
        let primary = dirty(&before, seq);
        assert!(primary.base_block().is_dirty());
        assert_eq!(msahci_start(&primary), Some(3));
        let logs = [("SYSTEM.LOG1".to_string(), log.clone())];
        let (h, r) = replay(&primary, &logs).unwrap();
        assert_eq!(r.format, LogFormat::Old);
        assert_eq!((r.entries, r.pages, r.stopped.clone()), (1, 1, None));
        assert_eq!(r.used, ["SYSTEM.LOG1"]);
        assert_eq!(msahci_start(&h), Some(0));
        assert_eq!(&h.bytes()[BASE_BLOCK_SIZE..], &after[BASE_BLOCK_SIZE..]);
        let b = h.base_block();
        assert_eq!((b.primary_sequence, b.secondary_sequence), (seq, seq));
        assert!(b.checksum_ok);

        // The log: a 512-byte base block, DIRT and the bitmap (one byte per
        // 4096 bytes of bins) padded to a sector, one 512-byte page.
        let bitmap = (after.len() - BASE_BLOCK_SIZE) / 4096;
        assert_eq!(log.len(), (512 + 4 + bitmap).div_ceil(512) * 512 + 512);

        // Cut inside the dirty page: a named error, no replay.
        let cut = [("SYSTEM.LOG1".to_string(), log[..log.len() - 1].to_vec())];
        let e = replay(&primary, &cut).unwrap_err();
        assert_eq!(e.structure, "dirty page", "{e}");
        assert!(e.reason.contains("past the end"), "{e}");
        // Cut inside the dirty vector.
        let cut = [("SYSTEM.LOG1".to_string(), log[..1024].to_vec())];
        assert_eq!(
            replay(&primary, &cut).unwrap_err().structure,
            "dirty vector"
        );
        // A damaged DIRT signature.
        let mut bad = log.clone();
        bad[512] = b'X';
        let e = replay(&primary, &[("SYSTEM.LOG1".into(), bad)]).unwrap_err();
        assert!(e.reason.contains("not \"DIRT\""), "{e}");
        // A log written completely has equal sequence numbers.
        let mut bad = log.clone();
        set_u32(&mut bad, BB_SECONDARY_SEQUENCE, seq - 1);
        let sum = base_block_checksum(&bad).unwrap();
        set_u32(&mut bad, BB_CHECKSUM, sum);
        let e = replay(&primary, &[("SYSTEM.LOG1".into(), bad)]).unwrap_err();
        assert!(e.reason.contains("differ"), "{e}");
        // A wrong checksum.
        let mut bad = log.clone();
        bad[BB_CHECKSUM] ^= 1;
        let e = replay(&primary, &[("SYSTEM.LOG1".into(), bad)]).unwrap_err();
        assert!(e.reason.contains("checksum"), "{e}");
        // A hive bins size that is not a multiple of 4096.
        let mut bad = log.clone();
        set_u32(&mut bad, BB_HIVE_BINS_SIZE, 4097);
        let sum = base_block_checksum(&bad).unwrap();
        set_u32(&mut bad, BB_CHECKSUM, sum);
        let e = replay(&primary, &[("SYSTEM.LOG1".into(), bad)]).unwrap_err();
        assert!(e.reason.contains("hive bins data size 4097"), "{e}");
    }

    /// A log written for a disk with 4096-byte sectors (clustering factor
    /// 8): a 4096-byte base block, the dirty vector and the pages each from
    /// a 4096-byte boundary. The same change replays.
    #[test]
    fn old_format_log_with_4096_byte_sectors() {
        let (before, after, seq) = system_change();
        let small = old_format_log(&before, &after, seq).unwrap();
        let bitmap = (after.len() - BASE_BLOCK_SIZE) / 4096;
        let vector = &small[512..512 + 4 + bitmap];
        let pages = &small[(512 + 4 + bitmap).div_ceil(512) * 512..];
        let mut log = small[..512].to_vec();
        log.resize(4096, 0);
        set_u32(&mut log, BB_CLUSTERING_FACTOR, 8);
        let sum = base_block_checksum(&log).unwrap();
        set_u32(&mut log, BB_CHECKSUM, sum);
        log.extend_from_slice(vector);
        log.resize(log.len().div_ceil(4096) * 4096, 0);
        log.extend_from_slice(pages);
        let primary = dirty(&before, seq);
        let (h, r) = replay(&primary, &[("SYSTEM.LOG1".into(), log.clone())]).unwrap();
        assert_eq!((r.pages, msahci_start(&h)), (1, Some(0)));
        // Read as 512-byte sectors, the dirty vector is looked for at 512,
        // inside the padded base block: no "DIRT" there.
        set_u32(&mut log, BB_CLUSTERING_FACTOR, 1);
        let sum = base_block_checksum(&log).unwrap();
        set_u32(&mut log, BB_CHECKSUM, sum);
        let e = replay(&primary, &[("SYSTEM.LOG1".into(), log)]).unwrap_err();
        assert_eq!(e.structure, "dirty vector", "{e}");
    }

    #[test]
    fn old_format_log_choice_follows_windows_8() {
        let (before, after, seq) = system_change();
        let primary = dirty(&before, seq);
        let good = old_format_log(&before, &after, seq).unwrap();
        // A log from another write: a different last written timestamp
        // (and nothing changed).
        let mut other = old_format_log(&before, &before, seq).unwrap();
        let ts = le_u64(&other, BB_TIMESTAMP).unwrap();
        other[BB_TIMESTAMP..BB_TIMESTAMP + 8].copy_from_slice(&(ts - 10).to_le_bytes());
        let sum = base_block_checksum(&other).unwrap();
        set_u32(&mut other, BB_CHECKSUM, sum);
        let name = |n: &str| n.to_string();

        // .LOG1 with a foreign timestamp does not apply, and nothing else does.
        let e = replay(&primary, &[(name("SYSTEM.LOG1"), other.clone())]).unwrap_err();
        assert!(e.reason.contains("is not the primary's"), "{e}");
        // .LOG2 more recent than .LOG1 wins even though .LOG1 is valid.
        let (h, r) = replay(
            &primary,
            &[
                (name("SYSTEM.LOG1"), other.clone()),
                (name("SYSTEM.LOG2"), good.clone()),
            ],
        )
        .unwrap();
        assert_eq!(
            (r.used.as_slice(), msahci_start(&h)),
            (["SYSTEM.LOG2".to_string()].as_slice(), Some(0))
        );
        // .LOG2 older than .LOG1: .LOG1 is used.
        let (h, r) = replay(
            &primary,
            &[
                (name("SYSTEM.LOG2"), other.clone()),
                (name("SYSTEM.LOG1"), good.clone()),
            ],
        )
        .unwrap();
        assert_eq!(r.used, ["SYSTEM.LOG1"]);
        assert_eq!(msahci_start(&h), Some(0));
        // .LOG1 unreadable: .LOG2 is used whatever its timestamp.
        let (_, r) = replay(
            &primary,
            &[
                (name("SYSTEM.LOG1"), vec![0; 100]),
                (name("SYSTEM.LOG2"), other.clone()),
            ],
        )
        .unwrap();
        assert_eq!(
            (r.used.as_slice(), r.pages),
            (["SYSTEM.LOG2".to_string()].as_slice(), 0)
        );
        // The single-log scheme's .LOG when the dual logs are empty.
        let (h, r) = replay(
            &primary,
            &[
                (name("SYSTEM.LOG1"), Vec::new()),
                (name("SYSTEM.LOG2"), Vec::new()),
                (name("SYSTEM.LOG"), good),
            ],
        )
        .unwrap();
        assert_eq!(r.used, ["SYSTEM.LOG"]);
        assert_eq!(msahci_start(&h), Some(0));
    }

    #[test]
    fn an_invalid_dirty_bin_stops_the_recovery() {
        let (before, mut after, seq) = system_change();
        // Also dirty the first page of the first bin, with a broken header:
        // the recovery stops there, before msahci's page.
        after[BASE_BLOCK_SIZE + HBIN_OFFSET] ^= 0x10;
        let log = old_format_log(&before, &after, seq).unwrap();
        let primary = dirty(&before, seq);
        let (h, r) = replay(&primary, &[("SYSTEM.LOG1".into(), log)]).unwrap();
        let why = r.stopped.expect("stopped");
        assert!(why.contains("bins offset 0x0 is invalid"), "{why}");
        assert_eq!(r.pages, 0);
        assert_eq!(msahci_start(&h), Some(3));
        assert_eq!(&h.bytes()[BASE_BLOCK_SIZE..], &before[BASE_BLOCK_SIZE..]);
    }

    /// regipy (PyPI, scripts/setup) replays the same old-format log onto a
    /// small hive (its dirty pages start at log offset 1024, which holds
    /// for hives up to 2 MiB of bins): the hive bins data it writes equals
    /// ours.
    #[test]
    fn old_format_replay_matches_regipy() {
        let have = std::process::Command::new("python3")
            .args(["-c", "import regipy.recovery"])
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "regipy missing (scripts/setup)"
            );
            eprintln!("skipped: PyPI regipy is not installed (scripts/setup)");
            return;
        }
        let before = sample("BCD");
        let mut after = before.clone();
        // The first REG_DWORD found gets new data, by our in-place editor.
        let mut h = Hive::parse("BCD", before.clone()).unwrap();
        let mut cell = None;
        let root = h.root().unwrap();
        let mut stack = vec![root];
        while let Some(k) = stack.pop() {
            for v in k.values().unwrap() {
                if v.data().ok().and_then(|d| d.as_dword()).is_some() && cell.is_none() {
                    cell = Some(v.cell_offset());
                }
            }
            stack.extend(k.subkeys().unwrap());
        }
        let cell = cell.expect("a DWORD in BCD");
        h.set_dword_in_place(cell, 0x1234_5678).unwrap();
        after.copy_from_slice(h.bytes());
        let seq = h.base_block().primary_sequence + 1;
        let log = old_format_log(&before, &after, seq).unwrap();
        let primary = dirty(&before, seq);
        let (ours, r) = replay(&primary, &[("BCD.LOG1".into(), log.clone())]).unwrap();
        assert_eq!(r.pages, 1);

        let dir = tempfile::tempdir().unwrap();
        let hive_path = dir.path().join("BCD");
        let log_path = dir.path().join("BCD.LOG1");
        let out_path = dir.path().join("BCD.restored");
        std::fs::write(&hive_path, primary.bytes()).unwrap();
        std::fs::write(&log_path, &log).unwrap();
        let st = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sys; from regipy.recovery import apply_transaction_logs as a; a(sys.argv[1], sys.argv[2], restored_hive_path=sys.argv[3])")
            .arg(&hive_path)
            .arg(&log_path)
            .arg(&out_path)
            .status()
            .unwrap();
        assert!(st.success());
        let theirs = std::fs::read(&out_path).unwrap();
        assert_eq!(&theirs[BASE_BLOCK_SIZE..], &ours.bytes()[BASE_BLOCK_SIZE..]);
        assert_ne!(&theirs[BASE_BLOCK_SIZE..], &before[BASE_BLOCK_SIZE..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any bytes after a valid old-format log base block, and any
        /// clustering factor and bins size in it: an error or a replay,
        /// never a panic, and a replayed hive walks.
        #[test]
        fn old_format_logs_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..8192),
            factor in 0u32..10,
            bins in prop_oneof![Just(28672u32), 0u32..40000],
            dirt in any::<bool>(),
        ) {
            let before = sample_bcd();
            let seq = 40;
            let primary = dirty(&before, seq);
            let mut log = old_format_log(&before, &before, seq).unwrap()[..512].to_vec();
            set_u32(&mut log, BB_CLUSTERING_FACTOR, factor);
            set_u32(&mut log, BB_HIVE_BINS_SIZE, bins);
            let sum = base_block_checksum(&log).unwrap();
            set_u32(&mut log, BB_CHECKSUM, sum);
            if dirt {
                log.extend_from_slice(DIRT_SIGNATURE);
            }
            log.extend_from_slice(&tail);
            if let Ok((h, _)) = replay(&primary, &[("l.LOG1".into(), log)]) {
                crate::p2v::hive::walk_for_fuzzing(&h, 1000);
            }
        }
    }

    fn sample_bcd() -> Vec<u8> {
        static BCD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        BCD.get_or_init(|| sample("BCD")).clone()
    }
}
