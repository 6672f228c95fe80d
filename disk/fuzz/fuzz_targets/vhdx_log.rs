//! The log ([MS-VHDX] 2.3): entry validation, the active-sequence search
//! and the replay overlay, on an arbitrary log region. The first 16 bytes
//! are the header's LogGuid, the rest the log. With the first byte of the
//! GUID odd, every 4 KiB sector that starts an entry ("loge") gets its
//! checksum recomputed so the fuzzer reaches the descriptor checks.
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
        // Reading through the overlay matches the last write of each page.
        for e in seq.entries() {
            for w in &e.writes {
                if let LogWrite::Data { file_offset, .. } = w {
                    let mut buf = vec![0xEEu8; SECTOR + 100];
                    overlay.patch(file_offset.saturating_sub(50), &mut buf);
                }
            }
        }
    }
});
