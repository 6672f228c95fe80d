//! The VHD footer parser on any 511 or 512 bytes: no panic, and whatever
//! parses serializes back to bytes that parse to the same footer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhd::spec::{self, Footer};

fuzz_target!(|data: &[u8]| {
    // Give the checksum a chance: the first byte says whether to fix it up.
    let mut bytes = data.to_vec();
    if let Some(&mode) = data.first() {
        bytes.remove(0);
        if mode & 1 == 1 && bytes.len() >= 68 {
            let sum = spec::checksum(&bytes, Footer::CHECKSUM_AT);
            bytes[64..68].copy_from_slice(&sum.to_be_bytes());
        }
    }
    if let Ok(f) = Footer::parse(&bytes) {
        let _ = f.virtual_size();
        let _ = spec::Chs::for_size(f.current_size).total_sectors();
        let again = Footer::parse(&f.to_bytes()).expect("a serialized footer parses");
        assert_eq!(
            Footer {
                checksum: 0,
                ..again
            },
            Footer { checksum: 0, ..f }
        );
    }
});
