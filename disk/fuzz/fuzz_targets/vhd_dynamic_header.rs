//! The VHD dynamic header parser and the parent locator decoders: no
//! panic, and a parsed header round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhd::spec::{self, DynamicHeader};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if let Some(&mode) = data.first() {
        bytes.remove(0);
        if mode & 1 == 1 && bytes.len() >= 40 {
            let sum = spec::checksum(&bytes, DynamicHeader::CHECKSUM_AT);
            bytes[36..40].copy_from_slice(&sum.to_be_bytes());
        }
    }
    if let Ok(h) = DynamicHeader::parse(&bytes) {
        let _ = h.bitmap_size();
        let _ = h.table_size();
        let again = DynamicHeader::parse(&h.to_bytes()).expect("a serialized header parses");
        assert_eq!(again.parent_locators, h.parent_locators);
        assert_eq!(again.table_offset, h.table_offset);
        for loc in &h.parent_locators {
            let _ = loc.space_bytes();
            let _ = loc.platform.name();
        }
    }
    // The locator payload decoders, on the raw input.
    for platform in [
        spec::PlatformCode::W2ru,
        spec::PlatformCode::W2ku,
        spec::PlatformCode::MacX,
        spec::PlatformCode::Mac,
    ] {
        let _ = spec::decode_locator(platform, data);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = spec::file_url_to_path(s);
    }
});
