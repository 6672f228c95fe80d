//! The file type identifier and header parsers ([MS-VHDX] 2.2.1, 2.2.2)
//! on arbitrary bytes. With the first byte odd, the header's checksum is
//! recomputed first so the fuzzer reaches the field checks behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhdx::spec::{seal, FileIdentifier, Header, HEADER_OFFSETS, HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let _ = FileIdentifier::parse(rest);
    let mut buf = rest.to_vec();
    if mode & 1 == 1 && buf.len() >= HEADER_SIZE {
        seal(&mut buf[..HEADER_SIZE], 4);
    }
    for offset in HEADER_OFFSETS {
        if let Ok(h) = Header::parse(&buf, offset) {
            // What parses must write back to the same fields.
            let again = Header::parse(&h.to_bytes(), offset).expect("re-parse");
            assert_eq!(again, h);
        }
    }
});
