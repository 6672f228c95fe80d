#![no_main]
use libfuzzer_sys::fuzz_target;
use rehost_boot::p2v::partition;

fuzz_target!(|data: &[u8]| {
    if let Some(mbr) = partition::parse_mbr(data) {
        let _ = mbr.active();
        let _ = mbr.is_protective();
        for p in &mbr.partitions {
            let _ = (p.start_bytes(), p.len_bytes());
        }
        let _ = mbr.boot_code.loads_active_partition();
    }
    let _ = partition::parse_gpt_header(data);
    let _ = partition::parse_boot_sector(data);
    let _ = rehost_boot::p2v::bcd::BcdDevice::parse(data).describe();
});
