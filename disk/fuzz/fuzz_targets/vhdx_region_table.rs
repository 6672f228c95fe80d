//! The region table parser ([MS-VHDX] 2.2.3) on arbitrary bytes. With the
//! first byte odd, the checksum is recomputed first so the fuzzer reaches
//! the entry checks (alignment, duplicates, overlaps) behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhdx::spec::{seal, RegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Short inputs are common: pad them to a whole table when asked to.
    let mut buf = rest.to_vec();
    if mode & 2 == 2 && buf.len() < REGION_TABLE_SIZE {
        buf.resize(REGION_TABLE_SIZE, 0);
    }
    if mode & 1 == 1 && buf.len() >= REGION_TABLE_SIZE {
        seal(&mut buf[..REGION_TABLE_SIZE], 4);
    }
    for offset in REGION_TABLE_OFFSETS {
        if let Ok(t) = RegionTable::parse(&buf, offset) {
            assert!(t.entries.len() <= 2047);
            for e in &t.entries {
                assert!(e.file_offset >= 1 << 20 && e.file_offset % (1 << 20) == 0);
            }
            let again = RegionTable::parse(&t.to_bytes(), offset).expect("re-parse");
            assert_eq!(again, t);
        }
    }
});
