//! The log ([MS-VHDX] 2.3): entry validation, the active-sequence search
//! and the replay overlay, on an arbitrary log region. The first 16 bytes
//! are the header's LogGuid, the rest the log. With the first byte of the
//! GUID odd, every 4 KiB sector that starts an entry ("loge") gets its
//! checksum recomputed so the fuzzer reaches the descriptor checks.
//!
//! Invariants: every entry read back is where it was found and inside the
//! log; an active sequence is consecutive; reading through the replay
//! overlay gives what replaying every write of the sequence, in order, onto
//! the file would (a model, compared around each write's edges).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhdx::log::{find_active_sequence, read_entry, LogWrite, Overlay};
use rehost_disk::vhdx::spec::{seal, Guid};

const SECTOR: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let guid = Guid::from_slice(&data[..16]);
    let mut log = data[16..].to_vec();
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
