//! The log ([MS-VHDX] 2.3): entry validation, the active-sequence search
//! and the replay overlay, on an arbitrary log region. The first 16 bytes
//! are the header's LogGuid, the rest the log. With the first byte of the
//! GUID odd, every 4 KiB sector that starts an entry ("loge") gets its
//! checksum recomputed so the fuzzer reaches the descriptor checks. With
//! its bit 1 set, the log is instead built from the input as a valid
//! sequence of entries (see [`built_log`]) with any bytes left over
//! appended, so that every run replays overlapping writes and checks them.
//!
//! Invariants: every entry read back is where it was found and inside the
//! log; an active sequence is consecutive; reading through the replay
//! overlay gives what replaying every write of the sequence, in order, onto
//! the file would (a model, compared around each write's edges).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhdx::log::{find_active_sequence, read_entry, LogWrite, Overlay};
use rehost_disk::vhdx::spec::{build_log_entry, seal, Guid, LogEntryContents};

const SECTOR: usize = 4096;

/// A log of 1 to 4 consecutive valid entries described by `input`: a count
/// byte, a starting sequence number byte, then per entry a byte giving its
/// number of zero and data descriptors (0 to 2 each), and two bytes per
/// descriptor: the target (4 MiB plus a multiple of 4 KiB, or of 512 bytes
/// when `fine` is set) and the zero length or the page's fill byte.
/// Targets fall in a 1 MiB window so that writes overlap. Returns the log
/// and the bytes not consumed.
fn built_log<'a>(guid: Guid, input: &'a [u8], fine: bool) -> (Vec<u8>, &'a [u8]) {
    let mut r = input;
    let mut byte = || -> u8 {
        let (&b, rest) = r.split_first().unwrap_or((&0, &[]));
        r = rest;
        b
    };
    let entries = 1 + byte() % 4;
    let first = 1 + u64::from(byte());
    let unit: u64 = if fine { 512 } else { 4096 };
    let mut log = Vec::new();
    for i in 0..u64::from(entries) {
        let shape = byte();
        let zeros: Vec<(u64, u64)> = (0..shape % 3)
            .map(|_| {
                let at = (4 << 20) + u64::from(byte()) * unit;
                (at, (1 + u64::from(byte() % 8)) * 4096)
            })
            .collect();
        let pages: Vec<(u64, Vec<u8>)> = (0..(shape / 3) % 3)
            .map(|_| {
                let at = (4 << 20) + u64::from(byte()) * unit;
                let fill = byte();
                let mut page = vec![fill; SECTOR];
                page[..8].fill(fill ^ 0x5a);
                page[SECTOR - 4..].fill(fill ^ 0xa5);
                (at, page)
            })
            .collect();
        log.extend(build_log_entry(&LogEntryContents {
            sequence_number: first + i,
            tail: 0,
            log_guid: guid,
            flushed_file_offset: 64 << 20,
            last_file_offset: 64 << 20,
            pages: &pages,
            zeros: &zeros,
        }));
    }
    (log, r)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let guid = Guid::from_slice(&data[..16]);
    let mut log = if data[0] & 2 == 2 {
        let (mut log, rest) = built_log(guid, &data[16..], data[0] & 4 == 4);
        log.extend_from_slice(rest);
        log
    } else {
        data[16..].to_vec()
    };
    // Grow small inputs to whole sectors, as a log region always is.
    let len = log.len().div_ceil(SECTOR) * SECTOR;
    log.resize(len, 0);
    if data[0] & 1 == 1 {
        let mut at = 0;
        while at + SECTOR <= log.len() {
            if &log[at..at + 4] == b"loge" {
                let l = u32::from_le_bytes([log[at + 8], log[at + 9], log[at + 10], log[at + 11]])
                    as usize;
                if l >= SECTOR && l % SECTOR == 0 && at + l <= log.len() {
                    seal(&mut log[at..at + l], 4);
                }
            }
            at += SECTOR;
        }
    }
    let mut at = 0;
    while at < log.len() {
        if let Ok(e) = read_entry(&log, at, &guid, 1 << 20) {
            assert_eq!(e.log_offset as usize, at);
            assert!(e.header.entry_length as usize <= log.len());
        }
        at += SECTOR;
    }
    if let Some(seq) = find_active_sequence(&log, &guid, 1 << 20) {
        assert!(!seq.entries().is_empty());
        for w in seq.entries().windows(2) {
            assert_eq!(w[0].header.sequence_number + 1, w[1].header.sequence_number);
        }
        let overlay = Overlay::from_sequence(&seq);
        // Reading through the overlay matches a model: the writes of every
        // entry, tail first and in descriptor order, copied one after
        // another onto the bytes under them (the last write of each byte
        // wins). Compared around the start and end of every write.
        let writes: Vec<&LogWrite> = seq.entries().iter().flat_map(|e| &e.writes).collect();
        let span = |w: &LogWrite| match w {
            LogWrite::Data { file_offset, data } => (*file_offset, file_offset + data.len() as u64),
            LogWrite::Zero {
                file_offset,
                length,
            } => (*file_offset, file_offset + length),
        };
        let mut windows: Vec<u64> = Vec::new();
        for w in &writes {
            let (start, end) = span(w);
            windows.push(start.saturating_sub(50));
            windows.push(end.saturating_sub(SECTOR as u64 / 2));
        }
        windows.sort_unstable();
        windows.dedup();
        for &at in windows.iter().take(64) {
            let mut got = vec![0xEEu8; SECTOR + 100];
            overlay.patch(at, &mut got);
            let mut want = vec![0xEEu8; SECTOR + 100];
            let end = at + want.len() as u64;
            for w in &writes {
                let (s, e) = span(w);
                let (a, b) = (s.max(at), e.min(end));
                if a >= b {
                    continue;
                }
                let dst = &mut want[(a - at) as usize..(b - at) as usize];
                match w {
                    LogWrite::Data { data, .. } => {
                        dst.copy_from_slice(&data[(a - s) as usize..(b - s) as usize])
                    }
                    LogWrite::Zero { .. } => dst.fill(0),
                }
            }
            if got != want {
                let i = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(0);
                panic!(
                    "overlay read at {at} differs from the replayed writes at byte {}: {:#04x} instead of {:#04x}",
                    at + i as u64,
                    got[i],
                    want[i]
                );
            }
        }
    }
});
