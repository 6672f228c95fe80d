//! Reading a delta stream: arbitrary bytes never panic, never allocate
//! beyond the record cap, and a stream that verifies hands out only sorted,
//! disjoint extents inside the disk, each data record exactly as long as
//! it declares.
//!
//! The first input byte picks the starting point: the input as the whole
//! stream, or a valid stream (raw, zstd and zero records) with the rest of
//! the input applied as (offset, xor) patches or, for mode 2, cut short at
//! the offset the next two bytes give.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rehost_disk::delta::stream_spec::{Header, ImageIdentity, RecordKind};
use rehost_disk::delta::{verify_bytes, StreamReader, StreamWriter};

const DISK: u64 = 4 << 20;

fn base() -> Vec<u8> {
    let header = Header {
        disk_size: DISK,
        granularity: 4096,
        source_generation: Some(1),
        target_generation: Some(2),
        stream_id: 3,
        created_sec: 4,
        created_nsec: 5,
        identity: ImageIdentity::default(),
    };
    let mut w = StreamWriter::new(Vec::new(), &header).expect("writer");
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    w.data(0, &noise).expect("raw");
    w.data(8192, &[7u8; 8192]).expect("zstd");
    w.zero(65536, 1 << 20).expect("zero");
    w.finish().expect("finish").0
}

fn check(bytes: &[u8]) {
    if verify_bytes(bytes).is_err() {
        return;
    }
    let mut r = StreamReader::new(bytes, Path::new("fuzz")).expect("verified header");
    let disk = r.header().disk_size;
    let mut data = Vec::new();
    let mut end = 0;
    while let Some(rec) = r.next_record(&mut data).expect("verified stream") {
        assert!(rec.offset >= end && rec.offset + rec.len <= disk);
        if rec.kind == RecordKind::Zero {
            assert!(data.is_empty());
        } else {
            assert_eq!(data.len() as u64, rec.len);
        }
        end = rec.offset + rec.len;
    }
}

fuzz_target!(|input: &[u8]| {
    match input.split_first() {
        None => check(input),
        Some((0, rest)) => check(rest),
        Some((2, rest)) if rest.len() >= 2 => {
            let b = base();
            let cut = (usize::from(rest[0]) << 8 | usize::from(rest[1])) % (b.len() + 1);
            check(&b[..cut]);
        }
        Some((_, rest)) => {
            let mut b = base();
            for p in rest.chunks_exact(3) {
                let at = (usize::from(p[0]) << 8 | usize::from(p[1])) % b.len();
                b[at] ^= p[2];
            }
            check(&b);
        }
    }
});
