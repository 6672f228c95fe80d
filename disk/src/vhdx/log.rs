//! The VHDX log ([MS-VHDX] section 2.3): validating entries, finding the
//! active sequence (section 2.3.3) and replaying it, either into the file or
//! into an in-memory [`Overlay`] when the image is opened read-only.
//!
//! Everything here works on the bytes of the log region, so it can be
//! fuzzed without a file.

use std::collections::BTreeMap;

use super::spec::{
    checksum, decode_data_sector, log_descriptor_sectors, Guid, LogDescriptor, LogEntryHeader,
    SpecError, SpecResult, LOG_DESCRIPTOR_SIZE, LOG_ENTRY_HEADER_SIZE, LOG_SECTOR_SIZE,
    REGION_TABLE_OFFSETS,
};

/// Log entries may not write below this offset: the file type identifier
/// and the two headers are never updated through the log (sections 2.2.1
/// and 2.2.2); region tables are (section 2.2.3).
pub const LOG_WRITABLE_START: u64 = REGION_TABLE_OFFSETS[0];

/// The largest file offset a log entry may name (1 PiB): far beyond any
/// valid VHDX (64 TiB of payload plus metadata), small enough that offset
/// arithmetic cannot overflow.
pub const MAX_FILE_OFFSET: u64 = 1 << 50;

/// One update a log entry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// Write these 4096 bytes at `file_offset`.
    Data { file_offset: u64, data: Vec<u8> },
    /// Write `length` zero bytes at `file_offset`.
    Zero { file_offset: u64, length: u64 },
}

/// A validated log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Byte offset of the entry in the log.
    pub log_offset: u32,
    pub header: LogEntryHeader,
    /// The updates, in descriptor order.
    pub writes: Vec<LogWrite>,
}

/// The active sequence: the entries to replay, tail first. Only
/// [`find_active_sequence`] makes one, and never an empty one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSequence {
    entries: Vec<LogEntry>,
    head: LogEntry,
}

impl ActiveSequence {
    /// The entries, tail first.
    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    /// The newest entry.
    pub fn head(&self) -> &LogEntry {
        &self.head
    }
}

/// Reads `len` bytes of the circular log starting at `at`, wrapping at the
/// end (section 2.3: the log is a ring buffer).
fn ring_read(log: &[u8], at: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut pos = at % log.len().max(1);
    while out.len() < len && !log.is_empty() {
        let n = (len - out.len()).min(log.len() - pos);
        out.extend_from_slice(&log[pos..pos + n]);
        pos = (pos + n) % log.len();
    }
    out
}

/// Validates the log entry that starts `at` bytes into `log` (section
/// 2.3.1): header fields, LogGuid, the CRC-32C over the whole entry, every
/// descriptor's signature and sequence number, the data sectors, and the
/// file ranges the entry writes. `log_file_offset` is where the log sits in
/// the file, for error offsets.
pub fn read_entry(
    log: &[u8],
    at: usize,
    log_guid: &Guid,
    log_file_offset: u64,
) -> SpecResult<LogEntry> {
    const NAME: &str = "log entry";
    let sector = LOG_SECTOR_SIZE;
    let len = log.len() - log.len() % sector;
    let file_at = log_file_offset + at as u64;
    if len == 0 || !at.is_multiple_of(sector) || at >= len {
        return Err(SpecError::new(NAME, file_at, "position is outside the log"));
    }
    let log = &log[..len];
    let header = LogEntryHeader::parse(&log[at..at + sector], file_at)?;
    if &header.log_guid != log_guid {
        return Err(SpecError::new(
            NAME,
            file_at,
            format!(
                "LogGuid {} does not match the header's {}",
                header.log_guid, log_guid
            ),
        ));
    }
    let entry_len = header.entry_length as usize;
    if entry_len > len {
        return Err(SpecError::new(
            NAME,
            file_at,
            format!("entry length {entry_len} is larger than the {len}-byte log"),
        ));
    }
    if header.tail as usize >= len {
        return Err(SpecError::new(
            NAME,
            file_at,
            format!("tail {} lies outside the {len}-byte log", header.tail),
        ));
    }
    for (what, v) in [
        ("FlushedFileOffset", header.flushed_file_offset),
        ("LastFileOffset", header.last_file_offset),
    ] {
        if v > MAX_FILE_OFFSET {
            return Err(SpecError::new(
                NAME,
                file_at,
                format!("{what} {v} is beyond any plausible file size"),
            ));
        }
    }
    let bytes = ring_read(log, at, entry_len);
    let computed = checksum(&bytes, 4);
    if computed != header.checksum {
        return Err(SpecError::new(
            NAME,
            file_at,
            format!(
                "CRC-32C mismatch: stored {:#010x}, computed {computed:#010x}",
                header.checksum
            ),
        ));
    }
    let desc_sectors = log_descriptor_sectors(header.descriptor_count) as usize;
    let data_sectors = entry_len / sector - desc_sectors;
    let mut writes = Vec::with_capacity(header.descriptor_count as usize);
    let mut data_index = 0usize;
    for i in 0..header.descriptor_count as usize {
        let d_at = LOG_ENTRY_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * i;
        let d_file_at = file_at + d_at as u64;
        let d = LogDescriptor::parse(&bytes[d_at..d_at + LOG_DESCRIPTOR_SIZE], d_file_at)?;
        if d.sequence_number() != header.sequence_number {
            return Err(SpecError::new(
                "log descriptor",
                d_file_at,
                format!(
                    "sequence number {} does not match the entry's {}",
                    d.sequence_number(),
                    header.sequence_number
                ),
            ));
        }
        let length = match &d {
            LogDescriptor::Data { .. } => sector as u64,
            LogDescriptor::Zero { zero_length, .. } => *zero_length,
        };
        let start = d.file_offset();
        if !(LOG_WRITABLE_START..=MAX_FILE_OFFSET).contains(&start)
            || length > MAX_FILE_OFFSET - start
        {
            return Err(SpecError::new(
                "log descriptor",
                d_file_at,
                format!(
                    "writes {length} bytes at file offset {start}, outside the updatable part of the file"
                ),
            ));
        }
        match d {
            LogDescriptor::Data {
                trailing_bytes,
                leading_bytes,
                file_offset,
                sequence_number,
            } => {
                if data_index >= data_sectors {
                    return Err(SpecError::new(
                        NAME,
                        file_at,
                        format!("more data descriptors than the {data_sectors} data sectors"),
                    ));
                }
                let s_at = (desc_sectors + data_index) * sector;
                let data = decode_data_sector(
                    &bytes[s_at..s_at + sector],
                    log_file_offset + ((at + s_at) % len) as u64,
                    sequence_number,
                    &leading_bytes,
                    &trailing_bytes,
                )?;
                data_index += 1;
                writes.push(LogWrite::Data { file_offset, data });
            }
            LogDescriptor::Zero {
                zero_length,
                file_offset,
                ..
            } => writes.push(LogWrite::Zero {
                file_offset,
                length: zero_length,
            }),
        }
    }
    if data_index != data_sectors {
        return Err(SpecError::new(
            NAME,
            file_at,
            format!(
                "{data_index} data descriptors but {data_sectors} data sectors (they must be equal)"
            ),
        ));
    }
    Ok(LogEntry {
        log_offset: at as u32,
        header,
        writes,
    })
}

/// Finds the active sequence of the log (section 2.3.3): the newest
/// sequence of valid entries, each one's sequence number one more than the
/// previous, laid out contiguously (wrapping at the end of the log), whose
/// head entry's tail points at one of its entries. Returns the entries from
/// that tail to the head, or `None` when the log holds no valid sequence.
pub fn find_active_sequence(
    log: &[u8],
    log_guid: &Guid,
    log_file_offset: u64,
) -> Option<ActiveSequence> {
    let sector = LOG_SECTOR_SIZE;
    let len = log.len() - log.len() % sector;
    if len == 0 || log_guid.is_zero() {
        return None;
    }
    let mut candidate: Option<ActiveSequence> = None;
    let mut current_tail = 0usize;
    let mut scanned = 0usize;
    while scanned < len {
        // Grow a sequence from `current_tail`.
        let mut entries: Vec<LogEntry> = Vec::new();
        let mut pos = current_tail;
        let mut span = 0usize;
        while let Ok(e) = read_entry(log, pos, log_guid, log_file_offset) {
            if let Some(last) = entries.last() {
                if last.header.sequence_number.checked_add(1) != Some(e.header.sequence_number) {
                    break;
                }
            }
            let l = e.header.entry_length as usize;
            if span + l > len {
                break;
            }
            span += l;
            pos = (pos + l) % len;
            entries.push(e);
        }
        let valid_from = entries.last().and_then(|head| {
            entries
                .iter()
                .position(|e| e.log_offset == head.header.tail)
        });
        match valid_from {
            Some(from) => {
                let head_seq = entries[entries.len() - 1].header.sequence_number;
                if candidate
                    .as_ref()
                    .is_none_or(|c| head_seq > c.head().header.sequence_number)
                {
                    let entries = entries.split_off(from);
                    if let Some(head) = entries.last().cloned() {
                        candidate = Some(ActiveSequence { entries, head });
                    }
                }
                scanned += span;
                current_tail = (current_tail + span) % len;
            }
            None => {
                scanned += sector;
                current_tail = (current_tail + sector) % len;
            }
        }
    }
    candidate
}

/// The replayed view of a file opened read-only: 4 KiB pages and zeroed
/// ranges that take precedence over the file's bytes (section 2.3.3 with
/// note <5>: a read-only open replays in memory).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overlay {
    pages: BTreeMap<u64, Vec<u8>>,
    /// Disjoint zeroed ranges, start -> end.
    zeros: BTreeMap<u64, u64>,
    /// The file length the replay asks for (LastFileOffset and the end of
    /// every write).
    pub min_len: u64,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty() && self.zeros.is_empty()
    }

    /// Applies one write on top of what the overlay holds.
    pub fn apply(&mut self, w: &LogWrite) {
        match w {
            LogWrite::Data { file_offset, data } => {
                self.remove_zeros(*file_offset, file_offset + LOG_SECTOR_SIZE as u64);
                self.pages.insert(*file_offset, data.clone());
                self.min_len = self.min_len.max(file_offset + LOG_SECTOR_SIZE as u64);
            }
            LogWrite::Zero {
                file_offset,
                length,
            } => {
                if *length == 0 {
                    return;
                }
                let end = file_offset + length;
                let inside: Vec<u64> = self
                    .pages
                    .range(*file_offset..end)
                    .map(|(&k, _)| k)
                    .collect();
                for k in inside {
                    self.pages.remove(&k);
                }
                self.remove_zeros(*file_offset, end);
                // Merge with neighbours that touch.
                let mut start = *file_offset;
                let mut stop = end;
                if let Some((&s, &e)) = self.zeros.range(..=start).next_back() {
                    if e >= start {
                        start = s;
                        stop = stop.max(e);
                        self.zeros.remove(&s);
                    }
                }
                if let Some((&s, &e)) = self.zeros.range(start..).next() {
                    if s <= stop {
                        stop = stop.max(e);
                        self.zeros.remove(&s);
                    }
                }
                self.zeros.insert(start, stop);
                self.min_len = self.min_len.max(end);
            }
        }
    }

    fn remove_zeros(&mut self, start: u64, end: u64) {
        let hit: Vec<(u64, u64)> = self
            .zeros
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.zeros.remove(&s);
            if s < start {
                self.zeros.insert(s, start);
            }
            if e > end {
                self.zeros.insert(end, e);
            }
        }
    }

    /// Lays the overlay over `buf`, which holds the file's bytes from
    /// `offset`.
    pub fn patch(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (&s, &e) in self.zeros.range(..end) {
            if e <= offset {
                continue;
            }
            let a = s.max(offset);
            let b = e.min(end);
            buf[(a - offset) as usize..(b - offset) as usize].fill(0);
        }
        let first = offset.saturating_sub(LOG_SECTOR_SIZE as u64 - 1);
        for (&p, data) in self.pages.range(first..end) {
            let pe = p + data.len() as u64;
            if pe <= offset {
                continue;
            }
            let a = p.max(offset);
            let b = pe.min(end);
            buf[(a - offset) as usize..(b - offset) as usize]
                .copy_from_slice(&data[(a - p) as usize..(b - p) as usize]);
        }
    }

    /// The pages, in file order (for writing a replay out).
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.pages.iter().map(|(&k, v)| (k, v.as_slice()))
    }

    /// The zeroed ranges, in file order.
    pub fn zero_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.zeros.iter().map(|(&s, &e)| (s, e))
    }

    /// Replays a whole active sequence, tail first (section 2.3.3).
    pub fn from_sequence(seq: &ActiveSequence) -> Overlay {
        let mut o = Overlay::default();
        for e in &seq.entries {
            for w in &e.writes {
                o.apply(w);
            }
        }
        o.min_len = o.min_len.max(seq.head().header.last_file_offset);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{build_log_entry, LogEntryContents, MIB};
    use super::*;

    const GUID: Guid = Guid([0x42; 16]);

    fn page(fill: u8) -> Vec<u8> {
        let mut p = vec![fill; 4096];
        // Distinct leading and trailing bytes exercise the descriptor's copies.
        p[0] = 0xA0;
        p[7] = 0xA7;
        p[4092] = 0xB0;
        p[4095] = 0xB3;
        p
    }

    fn entry(seq: u64, tail: u32, pages: &[(u64, Vec<u8>)], zeros: &[(u64, u64)]) -> Vec<u8> {
        build_log_entry(&LogEntryContents {
            sequence_number: seq,
            tail,
            log_guid: GUID,
            flushed_file_offset: 4 * MIB,
            last_file_offset: 5 * MIB,
            pages,
            zeros,
        })
    }

    fn place(log: &mut [u8], at: usize, e: &[u8]) {
        for (i, b) in e.iter().enumerate() {
            let n = log.len();
            log[(at + i) % n] = *b;
        }
    }

    #[test]
    fn empty_log_and_zero_guid_have_no_sequence() {
        let log = vec![0u8; 1 << 20];
        assert!(find_active_sequence(&log, &GUID, MIB).is_none());
        let mut log2 = log.clone();
        place(&mut log2, 0, &entry(1, 0, &[(3 * MIB, page(1))], &[]));
        assert!(find_active_sequence(&log2, &Guid::ZERO, MIB).is_none());
        assert!(find_active_sequence(&[], &GUID, MIB).is_none());
        assert!(find_active_sequence(&[0; 100], &GUID, MIB).is_none());
    }

    #[test]
    fn single_self_tail_entry_is_active() {
        let mut log = vec![0u8; 1 << 20];
        place(
            &mut log,
            8192,
            &entry(9, 8192, &[(3 * MIB, page(1))], &[(4 * MIB, 4096)]),
        );
        let seq = find_active_sequence(&log, &GUID, MIB).unwrap();
        assert_eq!(seq.entries.len(), 1);
        assert_eq!(seq.head().log_offset, 8192);
        assert_eq!(seq.head().header.sequence_number, 9);
        assert_eq!(
            seq.head().writes,
            vec![
                LogWrite::Zero {
                    file_offset: 4 * MIB,
                    length: 4096
                },
                LogWrite::Data {
                    file_offset: 3 * MIB,
                    data: page(1)
                }
            ]
        );
    }

    #[test]
    fn newest_sequence_wins_and_replays_from_its_tail() {
        let mut log = vec![0u8; 1 << 20];
        // An older, complete sequence: seq 3 alone.
        place(&mut log, 0, &entry(3, 0, &[(3 * MIB, page(3))], &[]));
        // A newer sequence of three entries: 10 (tail 64K), 11, 12 whose tail
        // points at 11, so only 11 and 12 are replayed.
        let e10 = entry(10, 65536, &[(3 * MIB, page(10))], &[]);
        let e11_at = 65536 + e10.len();
        let e11 = entry(11, 65536, &[(3 * MIB, page(11))], &[]);
        let e12_at = e11_at + e11.len();
        let e12 = entry(12, e11_at as u32, &[(3 * MIB + 4096, page(12))], &[]);
        place(&mut log, 65536, &e10);
        place(&mut log, e11_at, &e11);
        place(&mut log, e12_at, &e12);
        let seq = find_active_sequence(&log, &GUID, MIB).unwrap();
        let seqs: Vec<u64> = seq
            .entries
            .iter()
            .map(|e| e.header.sequence_number)
            .collect();
        assert_eq!(seqs, vec![11, 12]);
        let o = Overlay::from_sequence(&seq);
        let mut buf = vec![0xEE; 8192];
        o.patch(3 * MIB, &mut buf);
        assert_eq!(&buf[..4096], &page(11)[..]);
        assert_eq!(&buf[4096..], &page(12)[..]);
        assert_eq!(o.min_len, 5 * MIB);
    }

    #[test]
    fn a_gap_in_sequence_numbers_breaks_the_sequence() {
        let mut log = vec![0u8; 1 << 20];
        let e1 = entry(5, 0, &[(3 * MIB, page(5))], &[]);
        // seq 7 follows 5 directly: not a continuation, and its tail points
        // at offset 0 which is not part of its own sequence -> invalid.
        let e2 = entry(7, 0, &[(3 * MIB, page(7))], &[]);
        place(&mut log, 0, &e1);
        place(&mut log, e1.len(), &e2);
        let seq = find_active_sequence(&log, &GUID, MIB).unwrap();
        assert_eq!(seq.head().header.sequence_number, 5);
    }

    #[test]
    fn entries_wrapping_the_end_of_the_log_are_read() {
        let mut log = vec![0u8; 1 << 20];
        let at = (1 << 20) - 4096;
        let e = entry(
            2,
            at as u32,
            &[(3 * MIB, page(2)), (3 * MIB + 4096, page(4))],
            &[],
        );
        assert_eq!(e.len(), 3 * 4096);
        place(&mut log, at, &e);
        let seq = find_active_sequence(&log, &GUID, MIB).unwrap();
        assert_eq!(seq.head().log_offset as usize, at);
        assert_eq!(seq.head().writes.len(), 2);
    }

    #[test]
    fn every_kind_of_damage_invalidates_an_entry() {
        let good = entry(4, 0, &[(3 * MIB, page(4))], &[]);
        let mut log = vec![0u8; 1 << 20];
        place(&mut log, 0, &good);
        assert!(read_entry(&log, 0, &GUID, MIB).is_ok());
        // Wrong log GUID.
        let e = read_entry(&log, 0, &Guid([1; 16]), MIB).unwrap_err();
        assert!(e.reason.contains("LogGuid"), "{e}");
        // Any flipped byte breaks the CRC.
        for at in [60usize, 200, 4096 + 100, 2 * 4096 - 1] {
            let mut bad = log.clone();
            bad[at] ^= 0x10;
            let e = read_entry(&bad, 0, &GUID, MIB).unwrap_err();
            assert!(e.reason.contains("CRC-32C"), "{at}: {e}");
            assert_eq!(e.offset, MIB);
            assert!(find_active_sequence(&bad, &GUID, MIB).is_none());
        }
        // Torn write: the data sector belongs to another sequence number.
        let mut torn = log.clone();
        let other = entry(5, 0, &[(3 * MIB, page(4))], &[]);
        torn[4096..8192].copy_from_slice(&other[4096..8192]);
        assert!(read_entry(&torn, 0, &GUID, MIB).is_err());
        // An entry that writes into the headers.
        let mut hdr = vec![0u8; 1 << 20];
        place(&mut hdr, 0, &entry(4, 0, &[(65536, page(1))], &[]));
        let e = read_entry(&hdr, 0, &GUID, MIB).unwrap_err();
        assert!(e.reason.contains("outside the updatable part"), "{e}");
        // A zero descriptor with an absurd length.
        let mut z = vec![0u8; 1 << 20];
        place(&mut z, 0, &entry(4, 0, &[], &[(MIB, u64::MAX - 4095)]));
        assert!(read_entry(&z, 0, &GUID, MIB).is_err());
        // Entry longer than the log.
        let small = &log[..4096];
        assert!(read_entry(small, 0, &GUID, MIB)
            .unwrap_err()
            .reason
            .contains("larger"));
        // Positions outside the log.
        assert!(read_entry(&log, 1 << 20, &GUID, MIB).is_err());
        assert!(read_entry(&log, 100, &GUID, MIB).is_err());
    }

    #[test]
    fn overlay_orders_zeros_and_pages() {
        let mut o = Overlay::default();
        o.apply(&LogWrite::Data {
            file_offset: 8192,
            data: vec![1; 4096],
        });
        o.apply(&LogWrite::Zero {
            file_offset: 4096,
            length: 3 * 4096,
        });
        o.apply(&LogWrite::Data {
            file_offset: 12288,
            data: vec![2; 4096],
        });
        o.apply(&LogWrite::Zero {
            file_offset: 16384,
            length: 4096,
        });
        o.apply(&LogWrite::Zero {
            file_offset: 0,
            length: 0,
        });
        let mut buf = vec![9u8; 6 * 4096];
        o.patch(0, &mut buf);
        assert!(buf[..4096].iter().all(|&b| b == 9));
        assert!(
            buf[4096..12288].iter().all(|&b| b == 0),
            "page under a later zero"
        );
        assert!(
            buf[12288..16384].iter().all(|&b| b == 2),
            "page over an earlier zero"
        );
        assert!(buf[16384..20480].iter().all(|&b| b == 0));
        assert!(buf[20480..].iter().all(|&b| b == 9));
        // Unaligned window.
        let mut w = vec![9u8; 100];
        o.patch(12288 - 50, &mut w);
        assert!(w[..50].iter().all(|&b| b == 0));
        assert!(w[50..].iter().all(|&b| b == 2));
        assert_eq!(o.min_len, 20480);
        let zs: Vec<_> = o.zero_ranges().collect();
        assert_eq!(zs, vec![(4096, 12288), (16384, 20480)]);
        assert_eq!(o.pages().count(), 1);
    }
}
