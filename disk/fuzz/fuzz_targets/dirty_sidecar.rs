//! Parsing a dirty-bitmap sidecar: arbitrary bytes never panic, and a file
//! that is not a well-formed sidecar never yields a bitmap in the tracking
//! state ("clean"): every bitmap it still names is resync-required.
//!
//! The first input byte picks the starting point: the input as the whole
//! file, or a valid sidecar (two state records, the newer with two bitmaps,
//! and a non-empty activity log of the newer) with the rest of the input
//! applied as patches, which reaches past the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::dirty::sidecar_spec::{
    state_slots, AlSlot, ImageStamp, StateRecord, StoredBitmap, STATE_OFFSET, VERSION,
};
use rehost_disk::dirty::{decode_sidecar_bytes, BitmapState};

const SIZE: u64 = 1 << 20;

fn base() -> Vec<u8> {
    let bitmap = |name: &str, granularity: u64| {
        let bits = SIZE.div_ceil(granularity);
        StoredBitmap {
            name: name.into(),
            granularity,
            generation: 0x1234_5678_9abc_def0_u128 * granularity as u128,
            state: 0,
            words: vec![0x0101; bits.div_ceil(64) as usize],
            bits,
        }
    };
    let mut b1 = bitmap("a", 4096);
    if let Some(w) = b1.words.last_mut() {
        *w = 1;
    }
    let mut record = StateRecord {
        version: VERSION,
        sequence: 2,
        slot_size: 4096,
        state_id: 77,
        virtual_size: SIZE,
        stamp: Some(ImageStamp {
            file_size: SIZE,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            data_write_guid: Some([7; 16]),
        }),
        al_capacity: 8,
        al_extent_size: 64 << 10,
        bitmaps: vec![b1, bitmap("b", 65536)],
    };
    let mut out = vec![0u8; STATE_OFFSET];
    let slot = AlSlot {
        sequence: 1,
        owner: record.al_owner(),
        extent_size: 64 << 10,
        extents: vec![3, 9],
    };
    out[4096..8192].copy_from_slice(&slot.to_bytes());
    let newer = record.to_slot_bytes();
    record.sequence = 1;
    record.state_id = 76;
    record.bitmaps.truncate(1);
    out.extend_from_slice(&record.to_slot_bytes());
    out.extend_from_slice(&newer);
    out
}

/// The state records of a file that parse (with or without their
/// checksums), each with its slot's bytes.
fn records(bytes: &[u8], verify: bool) -> Vec<(StateRecord, &[u8])> {
    state_slots(bytes)
        .map(|s| {
            s.slots
                .into_iter()
                .filter_map(|(at, b)| StateRecord::parse(b, at, verify).ok().map(|r| (r, b)))
                .collect()
        })
        .unwrap_or_default()
}

fn patched(base: &[u8], patches: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let mut p = patches;
    while p.len() >= 3 && !out.is_empty() {
        let at = (usize::from(p[0]) << 8 | usize::from(p[1])) % out.len();
        let len = usize::from(p[2] % 8) + 1;
        for (i, &b) in p[3..p.len().min(3 + len)].iter().enumerate() {
            if at + i < out.len() {
                out[at + i] = b;
            }
        }
        p = &p[(3 + len).min(p.len())..];
    }
    if patches.last() == Some(&0xff) && patches.len() >= 2 {
        let cut = usize::from(patches[patches.len() - 2]) * 64 % (out.len() + 1);
        out.truncate(cut);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        patched(&base(), rest)
    };
    // The image stamp as the file claims it (the kindest case for the
    // parser: an unchanged image), and the size it was written for.
    let claimed = records(&bytes, false)
        .into_iter()
        .max_by_key(|(r, _)| r.sequence)
        .map(|(r, _)| r);
    let size = claimed.as_ref().map_or(SIZE, |r| r.virtual_size);
    let stamp = claimed.as_ref().and_then(|r| r.stamp);
    let (bitmaps, problem) = decode_sidecar_bytes(&bytes, size, stamp);
    let well_formed = records(&bytes, true);
    if problem.is_some() {
        for b in &bitmaps {
            assert_eq!(b.state, BitmapState::ResyncRequired, "{problem:?}");
            assert_eq!(b.dirty_bytes, size);
        }
    }
    if bitmaps.iter().any(|b| b.state == BitmapState::Tracking) {
        assert!(
            !well_formed.is_empty(),
            "a tracking bitmap without a valid state record"
        );
        // Canonical: what was parsed serialises back to the same bytes.
        for (record, slot) in &well_formed {
            if record.version == VERSION {
                assert_eq!(record.to_slot_bytes(), *slot);
            }
        }
    }
});
