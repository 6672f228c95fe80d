#![no_main]
use libfuzzer_sys::fuzz_target;
use rehost_boot::p2v::hive::Hive;

fuzz_target!(|data: &[u8]| {
    if let Ok(hive) = Hive::parse("fuzz", data.to_vec()) {
        rehost_boot::p2v::hive::walk_for_fuzzing(&hive, 10_000);
    }
});
