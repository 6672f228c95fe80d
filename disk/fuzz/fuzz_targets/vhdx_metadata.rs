//! The metadata table and items ([MS-VHDX] 2.6): table validation, the
//! known items and the parent locator, on arbitrary bytes. The first four
//! bytes give the metadata region length (whole megabytes, 1 to 16).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhdx::spec::{
    parse_sector_size, parse_virtual_disk_id, parse_virtual_disk_size, FileParameters,
    MetadataTable, ParentLocator,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let region_len = (u64::from(data[0] % 16) + 1) << 20;
    let selector = data[1];
    let rest = &data[4..];
    let mut table = rest.to_vec();
    if selector & 1 == 1 && table.len() < 65536 {
        table.resize(65536, 0);
    }
    if let Ok(t) = MetadataTable::parse(&table, 2 << 20, region_len) {
        for e in &t.entries {
            assert!(u64::from(e.offset) + u64::from(e.length) <= region_len);
            if e.length > 0 {
                assert!(e.offset >= 65536);
            }
        }
        let again = MetadataTable::parse(&t.to_bytes(), 2 << 20, region_len).expect("re-parse");
        assert_eq!(again.entries.len(), t.entries.len());
    }
    let _ = FileParameters::parse(rest, 0);
    let _ = parse_virtual_disk_size(rest, 0, if selector & 2 == 2 { 4096 } else { 512 });
    let _ = parse_sector_size(rest, 0, "logical sector size");
    let _ = parse_virtual_disk_id(rest, 0);
    if let Ok(pl) = ParentLocator::parse(rest, 0) {
        let again = ParentLocator::parse(&pl.to_bytes(), 0).expect("re-parse");
        assert_eq!(again, pl);
        let _ = pl.get("parent_linkage");
    }
});
