#![no_main]
use libfuzzer_sys::fuzz_target;
use rehost_boot::p2v::hive::Hive;
use rehost_boot::p2v::hive_log::replay;

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(32 * 1024);
    let (primary, log) = data.split_at(split);
    if let Ok(hive) = Hive::parse("fuzz", primary.to_vec()) {
        if let Ok((replayed, _)) = replay(&hive, &[("fuzz.LOG1".into(), log.to_vec())]) {
            rehost_boot::p2v::hive::walk_for_fuzzing(&replayed, 10_000);
        }
    }
});
