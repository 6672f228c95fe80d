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
        // The same bytes as an old-format (DIRT) log: file type 1 and a
        // valid checksum, so the dirty vector and pages are reached.
        if log.len() >= 512 {
            let mut old = log.to_vec();
            old[..4].copy_from_slice(b"regf");
            old[28..32].copy_from_slice(&1u32.to_le_bytes());
            let seq = [old[4], old[5], old[6], old[7]];
            old[8..12].copy_from_slice(&seq);
            if let Some(sum) = rehost_boot::p2v::hive::base_block_checksum(&old) {
                old[508..512].copy_from_slice(&sum.to_le_bytes());
            }
            if let Ok((replayed, _)) = replay(&hive, &[("fuzz.LOG2".into(), old)]) {
                rehost_boot::p2v::hive::walk_for_fuzzing(&replayed, 10_000);
            }
        }
    }
});
