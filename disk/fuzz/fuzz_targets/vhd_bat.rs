//! The block allocation table decoder and the sector bitmap helpers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhd::spec;

fuzz_target!(|data: &[u8]| {
    if let Ok(bat) = spec::parse_bat(data) {
        assert_eq!(bat.len() * 4, data.len());
        for (i, e) in bat.iter().enumerate() {
            assert_eq!(&e.to_be_bytes()[..], &data[i * 4..i * 4 + 4]);
        }
    }
    if data.len() >= 4 {
        let block_size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let _ = spec::bitmap_size(block_size);
        let mut bitmap = data[4..].to_vec();
        let first = u64::from(data[1]) * 7;
        let count = u64::from(data[2]);
        spec::bitmap_set(&mut bitmap, first, count);
        for s in first..first + count {
            if (s / 8) < bitmap.len() as u64 {
                assert!(spec::bitmap_bit(&bitmap, s));
            }
        }
    }
});
