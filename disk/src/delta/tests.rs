use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::ops::{compare, Comparison};
use crate::{CreateOptions, ImageFormat, Subformat};

const DISK: u64 = 8 << 20;

fn tmp() -> tempfile::TempDir {
    crate::scratch::tmpfs_dir(256 << 20).unwrap_or_else(|| tempfile::tempdir().expect("tempdir"))
}

fn mk(dir: &Path, name: &str, format: ImageFormat, parent: Option<&Path>) -> PathBuf {
    let path = dir.join(name);
    crate::create(
        &path,
        &CreateOptions {
            format,
            subformat: if parent.is_some() {
                Subformat::Differencing
            } else {
                crate::ops::default_subformat(format)
            },
            size: DISK,
            block_size: None,
            parent: parent.map(Path::to_owned),
        },
    )
    .expect("create image");
    path
}

fn rw(path: &Path) -> Box<dyn DiskImage> {
    crate::open(
        path,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )
    .expect("open rw")
}

fn ro(path: &Path) -> Box<dyn DiskImage> {
    crate::open(
        path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("open ro")
}

/// Writes through the image's dirty tracker when it has bitmaps (as every
/// rehost writer does).
fn write(path: &Path, writes: &[(u64, Vec<u8>)]) {
    let image = rw(path);
    if dirty::sidecar_path(path).exists() {
        let t = DirtyTracker::open_image(Arc::from(image), &TrackerOptions::default())
            .expect("tracker");
        for (at, data) in writes {
            t.write_at(*at, data).expect("write");
        }
        t.close().expect("close tracker");
    } else {
        for (at, data) in writes {
            image.write_at(*at, data).expect("write");
        }
        image.flush().expect("flush");
    }
}

fn add_bitmap(path: &Path, name: &str, granularity: u64) {
    let t =
        DirtyTracker::open_image(Arc::from(ro(path)), &TrackerOptions::default()).expect("tracker");
    t.add_bitmap(name, granularity).expect("add bitmap");
    t.close().expect("close");
}

fn bitmap_generation(path: &Path, name: &str) -> u128 {
    let l = dirty::inspect(path, DISK)
        .expect("inspect")
        .expect("sidecar");
    l.bitmaps
        .iter()
        .find(|b| b.name == name)
        .expect("bitmap")
        .generation
}

/// Bytes from a seed, compressible or not.
fn pattern(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            if compressible {
                ((i / 64) as u64 ^ seed) as u8 | 1
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

fn same(a: &Path, b: &Path) -> bool {
    compare(ro(a).as_ref(), ro(b).as_ref(), true, &mut |_, _| {}).expect("compare")
        == Comparison::Identical
}

fn incremental(bitmap: &str, clear: bool) -> ExportOptions {
    ExportOptions {
        bitmap: Some(bitmap.into()),
        clear,
        full: false,
    }
}

fn full_with(bitmap: Option<&str>, clear: bool) -> ExportOptions {
    ExportOptions {
        bitmap: bitmap.map(str::to_owned),
        clear,
        full: true,
    }
}

/// Exports to `out` (which must not exist), with no progress.
fn export_to(src: &Path, out: &Path, options: &ExportOptions) -> ExportReport {
    export(src, out, options, &mut |_, _| {}).expect("export")
}

fn some_writes(round: u64) -> Vec<(u64, Vec<u8>)> {
    vec![
        (round * 65536, pattern(round, 65536, false)),
        (
            (1 << 20) + round * 65536,
            pattern(round + 100, 3 << 20, true),
        ),
        // Zeros over data written before: a zero record.
        ((1 << 20) + 65536, vec![0; 128 << 10]),
        (DISK - 512, pattern(round + 7, 512, false)),
    ]
}

fn round_trip(format: ImageFormat, differencing: bool) {
    let d = tmp();
    let (src, old) = if differencing {
        let base = mk(d.path(), "base", format, None);
        write(&base, &[(0, pattern(1, 1 << 20, false))]);
        let child = mk(d.path(), "child", format, Some(&base));
        (child, d.path().join("replica"))
    } else {
        (mk(d.path(), "src", format, None), d.path().join("replica"))
    };
    write(&src, &[(4 << 20, pattern(2, 1 << 20, false))]);
    std::fs::copy(&src, &old).expect("copy");
    add_bitmap(&src, "b", 64 << 10);
    write(&src, &some_writes(1));
    assert!(!same(&src, &old), "the writes changed the source");
    let out = d.path().join("delta");
    let r = export_to(&src, &out, &incremental("b", true));
    assert!(r.counts.zero_records >= 1, "{r:?}");
    assert!(r.counts.zstd_records >= 1, "{r:?}");
    assert!(r.counts.raw_records >= 1, "{r:?}");
    assert_eq!(
        r.header.target_generation,
        Some(bitmap_generation(&src, "b"))
    );
    let l = dirty::inspect(&src, DISK).unwrap().unwrap();
    assert_eq!(l.bitmaps[0].dirty_bytes, 0, "cleared");
    // The replica has no record yet: an incremental stream is refused.
    assert!(matches!(
        apply(&out, &old, &mut |_, _| {}),
        Err(DeltaError::GenerationMismatch { .. })
    ));
    // A full stream with the bitmap (clear) seeds the copy of the old
    // image (overwriting what differs, zeroing what the source does not
    // hold); then an incremental follows.
    let full = d.path().join("full");
    write(&src, &some_writes(2));
    let _ = std::fs::remove_file(&out);
    let seeded = old;
    let f = export_to(&src, &full, &full_with(Some("b"), true));
    assert_eq!(f.header.source_generation, None);
    apply(&full, &seeded, &mut |_, _| {}).expect("apply full");
    assert!(same(&src, &seeded));
    write(&src, &some_writes(3));
    export_to(&src, &out, &incremental("b", true));
    let applied = apply(&out, &seeded, &mut |_, _| {}).expect("apply incremental");
    assert_eq!(applied.generation, Some(bitmap_generation(&src, "b")));
    assert!(
        same(&src, &seeded),
        "{format:?} differencing={differencing}"
    );
    assert!(!journal_path(&seeded).exists());
}

#[test]
fn round_trip_raw() {
    round_trip(ImageFormat::Raw, false);
}

#[test]
fn round_trip_vhd() {
    round_trip(ImageFormat::Vhd, false);
}

#[test]
fn round_trip_vhdx() {
    round_trip(ImageFormat::Vhdx, false);
}

#[test]
fn round_trip_vhd_differencing() {
    round_trip(ImageFormat::Vhd, true);
}

#[test]
fn round_trip_vhdx_differencing() {
    round_trip(ImageFormat::Vhdx, true);
}

#[test]
fn apply_onto_a_differencing_replica_writes_the_child_only() {
    let d = tmp();
    let base = mk(d.path(), "base", ImageFormat::Vhdx, None);
    write(&base, &[(0, pattern(1, 2 << 20, false))]);
    let src = mk(d.path(), "src", ImageFormat::Raw, None);
    write(&src, &[(0, pattern(1, 2 << 20, false))]);
    add_bitmap(&src, "b", 4096);
    let child = mk(d.path(), "child", ImageFormat::Vhdx, Some(&base));
    // Seed the child with a full stream, then an incremental.
    let full = d.path().join("full");
    export_to(&src, &full, &full_with(Some("b"), false));
    let base_bytes = std::fs::read(&base).unwrap();
    apply(&full, &child, &mut |_, _| {}).unwrap();
    write(&src, &some_writes(4));
    let inc = d.path().join("inc");
    export_to(&src, &inc, &incremental("b", false));
    apply(&inc, &child, &mut |_, _| {}).unwrap();
    assert!(same(&src, &child));
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_bytes,
        "parent untouched"
    );
}

#[test]
fn chain_of_full_and_three_incrementals() {
    let d = tmp();
    let src = mk(d.path(), "src.vhdx", ImageFormat::Vhdx, None);
    write(&src, &[(2 << 20, pattern(9, 1 << 20, true))]);
    add_bitmap(&src, "repl", 64 << 10);
    let replica = mk(d.path(), "replica.raw", ImageFormat::Raw, None);
    // The replica has bitmaps of its own: the applies keep them.
    add_bitmap(&replica, "local", 4096);
    let full = d.path().join("s0");
    export_to(&src, &full, &full_with(Some("repl"), true));
    apply(&full, &replica, &mut |_, _| {}).unwrap();
    assert!(same(&src, &replica));
    let mut streams = Vec::new();
    for round in 1..=3u64 {
        write(&src, &some_writes(round));
        let s = d.path().join(format!("s{round}"));
        let r = export_to(&src, &s, &incremental("repl", true));
        // An incremental stream carries only what changed.
        assert!(r.extent_bytes < DISK / 2, "{r:?}");
        streams.push(s);
    }
    // Out of order: refused, replica unchanged.
    let before = std::fs::read(&replica).unwrap();
    for s in &streams[1..] {
        let e = apply(s, &replica, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, DeltaError::GenerationMismatch { .. }), "{e}");
    }
    assert_eq!(std::fs::read(&replica).unwrap(), before);
    for s in &streams {
        apply(s, &replica, &mut |_, _| {}).unwrap();
        // Applying the same stream again does nothing.
        assert!(apply(s, &replica, &mut |_, _| {}).unwrap().already_applied);
    }
    assert!(same(&src, &replica));
    // The replica's own bitmap saw every applied write.
    let l = dirty::inspect(&replica, DISK).unwrap().unwrap();
    assert_eq!(l.bitmaps[0].state, BitmapState::Tracking, "{:?}", l.problem);
    assert!(l.bitmaps[0].dirty_bytes >= 3 << 20);
    // Cumulative streams (no --clear) apply one after the other.
    write(&src, &some_writes(7));
    let c1 = d.path().join("c1");
    export_to(&src, &c1, &incremental("repl", false));
    apply(&c1, &replica, &mut |_, _| {}).unwrap();
    write(&src, &[(100 << 10, pattern(77, 8192, false))]);
    let c2 = d.path().join("c2");
    export_to(&src, &c2, &incremental("repl", false));
    apply(&c2, &replica, &mut |_, _| {}).unwrap();
    assert!(same(&src, &replica));
}

#[test]
fn a_target_written_since_the_last_apply_refuses_incrementals() {
    let d = tmp();
    let src = mk(d.path(), "src", ImageFormat::Raw, None);
    add_bitmap(&src, "b", 4096);
    let replica = mk(d.path(), "replica", ImageFormat::Raw, None);
    let full = d.path().join("full");
    export_to(&src, &full, &full_with(Some("b"), true));
    apply(&full, &replica, &mut |_, _| {}).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&replica, &[(0, vec![1; 512])]);
    write(&src, &[(4096, vec![2; 512])]);
    let inc = d.path().join("inc");
    export_to(&src, &inc, &incremental("b", true));
    let e = apply(&inc, &replica, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, DeltaError::TargetChanged { .. }), "{e}");
}

#[test]
fn export_refuses_an_existing_file_and_a_resync_required_bitmap() {
    let d = tmp();
    let src = mk(d.path(), "src", ImageFormat::Raw, None);
    add_bitmap(&src, "b", 4096);
    let out = d.path().join("out");
    std::fs::write(&out, b"keep").unwrap();
    let e = export(&src, &out, &incremental("b", false), &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, DeltaError::Exists { .. }), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    // A write behind the tracker's back: resync required.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let raw = crate::raw::RawFile::open(&src, false).unwrap();
    raw.write_at(0, &[5; 512]).unwrap();
    raw.flush().unwrap();
    drop(raw);
    let out2 = d.path().join("out2");
    let e = export(&src, &out2, &incremental("b", true), &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, DeltaError::ResyncRequired { .. }), "{e}");
    assert!(e.to_string().contains("--full"), "{e}");
    assert!(!out2.exists());
    // --full --clear recovers.
    export_to(&src, &out2, &full_with(Some("b"), true));
    let l = dirty::inspect(&src, DISK).unwrap().unwrap();
    assert_eq!(l.bitmaps[0].state, BitmapState::Tracking);
}

/// A small stream of every record kind, its source and old replica.
struct Small {
    _d: tempfile::TempDir,
    stream: Vec<u8>,
    target: PathBuf,
    delta: PathBuf,
}

fn small() -> Small {
    let d = tmp();
    let src = mk(d.path(), "src", ImageFormat::Raw, None);
    write(&src, &[(0, pattern(3, 8192, false))]);
    add_bitmap(&src, "b", 4096);
    let target = d.path().join("target");
    std::fs::copy(&src, &target).unwrap();
    // Seed the target's record from a full stream.
    let full = d.path().join("full");
    export_to(&src, &full, &full_with(Some("b"), true));
    apply(&full, &target, &mut |_, _| {}).unwrap();
    write(
        &src,
        &[
            (0, vec![0; 4096]),
            (65536, pattern(4, 4096, false)),
            (1 << 20, pattern(5, 4096, true)),
        ],
    );
    let delta = d.path().join("delta");
    let r = export_to(&src, &delta, &incremental("b", true));
    assert_eq!(r.counts.zero_records, 1, "{r:?}");
    assert!(
        r.counts.raw_records >= 1 && r.counts.zstd_records >= 1,
        "{r:?}"
    );
    let stream = std::fs::read(&delta).unwrap();
    Small {
        _d: d,
        stream,
        target,
        delta,
    }
}

fn record_boundaries(stream: &[u8]) -> Vec<usize> {
    let mut out = vec![HEADER_SIZE];
    let mut at = HEADER_SIZE;
    while u32::from_le_bytes(stream[at..at + 4].try_into().unwrap()) != KIND_END {
        let plen = u32::from_le_bytes(stream[at + 4..at + 8].try_into().unwrap()) as usize;
        at += RECORD_HEADER_SIZE + plen;
        out.push(at);
    }
    out
}

#[test]
fn truncated_streams_are_refused_before_anything_is_applied() {
    let s = small();
    assert!(verify_bytes(&s.stream).is_ok());
    for len in 0..s.stream.len() {
        let e = verify_bytes(&s.stream[..len]).unwrap_err();
        assert!(matches!(e, DeltaError::Truncated { .. }), "{len}: {e}");
    }
    // Through apply: at every record boundary and in the middle of each
    // record, and one byte short; the target's bytes stay the same.
    let before = std::fs::read(&s.target).unwrap();
    let bounds = record_boundaries(&s.stream);
    let mut cuts: Vec<usize> = bounds.clone();
    cuts.extend(bounds.windows(2).map(|w| (w[0] + w[1]) / 2));
    cuts.extend([0, 10, s.stream.len() - 1]);
    for cut in cuts {
        std::fs::remove_file(&s.delta).unwrap();
        std::fs::write(&s.delta, &s.stream[..cut]).unwrap();
        let e = apply(&s.delta, &s.target, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, DeltaError::Truncated { .. }), "{cut}: {e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        assert_eq!(std::fs::read(&s.target).unwrap(), before, "cut {cut}");
        assert!(!journal_path(&s.target).exists());
    }
}

#[test]
fn every_flipped_byte_is_refused_and_the_target_kept() {
    let s = small();
    let before = std::fs::read(&s.target).unwrap();
    let record_before = std::fs::read(replica_path(&s.target)).unwrap();
    for i in 0..s.stream.len() {
        let mut bad = s.stream.clone();
        bad[i] ^= 1 << (i % 8);
        assert!(verify_bytes(&bad).is_err(), "flip at {i} verified");
        // Through the whole apply path for every header byte and every
        // 5th byte after it (the parser above saw every byte).
        if i >= HEADER_SIZE && i % 5 != 0 {
            continue;
        }
        std::fs::remove_file(&s.delta).unwrap();
        std::fs::write(&s.delta, &bad).unwrap();
        match apply(&s.delta, &s.target, &mut |_, _| {}) {
            Err(DeltaError::Corrupt { .. })
            | Err(DeltaError::Truncated { .. })
            | Err(DeltaError::GenerationMismatch { .. })
            | Err(DeltaError::SizeMismatch { .. }) => {}
            other => panic!("flip at {i}: {other:?}"),
        }
        assert_eq!(std::fs::read(&s.target).unwrap(), before, "flip at {i}");
    }
    assert_eq!(
        std::fs::read(replica_path(&s.target)).unwrap(),
        record_before
    );
    // The good stream still applies.
    std::fs::remove_file(&s.delta).unwrap();
    std::fs::write(&s.delta, &s.stream).unwrap();
    apply(&s.delta, &s.target, &mut |_, _| {}).unwrap();
}

#[test]
fn wrong_size_and_wrong_generation_are_refused() {
    let s = small();
    let d = tmp();
    let other = d.path().join("other");
    std::fs::write(&other, vec![0u8; (DISK * 2) as usize]).unwrap();
    let full_stream = {
        let src = mk(d.path(), "src", ImageFormat::Raw, None);
        let out = d.path().join("full");
        export_to(&src, &out, &full_with(None, false));
        out
    };
    let before = std::fs::read(&other).unwrap();
    let e = apply(&full_stream, &other, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, DeltaError::SizeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("size mismatch"), "{e}");
    assert_eq!(std::fs::read(&other).unwrap(), before);
    // The incremental onto a target without a record, and onto one at
    // another generation.
    let e = apply(&s.delta, &other, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, DeltaError::GenerationMismatch { .. }), "{e}");
    let t_before = std::fs::read(&s.target).unwrap();
    let mut rec = read_replica(&s.target).unwrap().unwrap();
    rec.generation = Some(12345);
    std::fs::write(replica_path(&s.target), rec.to_bytes()).unwrap();
    let e = apply(&s.delta, &s.target, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("generation mismatch"), "{e}");
    assert_eq!(std::fs::read(&s.target).unwrap(), t_before);
    // A damaged record: named; a full stream reseeds.
    std::fs::write(replica_path(&s.target), b"garbage").unwrap();
    let e = apply(&s.delta, &s.target, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, DeltaError::ReplicaCorrupt { .. }), "{e}");
}

/// The whole virtual content of an image.
fn content(path: &Path) -> Vec<u8> {
    let image = ro(path);
    let mut b = vec![0u8; image.geometry().size as usize];
    image.read_at(0, &mut b).expect("read image");
    b
}

/// A replica at the source generation of `delta`, made by applying `full`
/// to a fresh image; a tracked one has the bitmap "local" (4 KiB) cleared
/// after that apply.
fn fresh_replica(
    dir: &Path,
    name: &str,
    format: ImageFormat,
    tracked: bool,
    full: &Path,
) -> PathBuf {
    let target = mk(dir, name, format, None);
    if tracked {
        add_bitmap(&target, "local", 4096);
    }
    apply(full, &target, &mut |_, _| {}).expect("seed the replica");
    if tracked {
        let t = DirtyTracker::open_image(Arc::from(ro(&target)), &TrackerOptions::default())
            .expect("tracker");
        t.clear_bitmap("local").expect("clear");
        t.close().expect("close");
    }
    target
}

/// The image opens, passes check and holds exactly `old` or exactly
/// `new`; a tracked one's bitmap "local" marks every 4 KiB block that
/// differs from `old` (its content at the last clear). Returns whether
/// it holds `new`.
fn old_or_new(target: &Path, tracked: bool, old: &[u8], new: &[u8], ctx: &str) -> bool {
    assert_eq!(ro(target).check().expect("check"), vec![], "{ctx}: check");
    let now = content(target);
    let is_new = now == new;
    assert!(
        is_new || now == old,
        "{ctx}: neither the old nor the new content"
    );
    if tracked {
        let t = DirtyTracker::open_image(Arc::from(ro(target)), &TrackerOptions::default())
            .unwrap_or_else(|e| panic!("{ctx}: tracker: {e}"));
        let b = t.bitmaps().into_iter().find(|b| b.name == "local");
        let b = b.unwrap_or_else(|| panic!("{ctx}: the bitmap is gone"));
        if b.state != BitmapState::ResyncRequired {
            let dirty = t.dirty_extents("local").expect("extents");
            for (i, (o, n)) in old.chunks(4096).zip(now.chunks(4096)).enumerate() {
                let at = i as u64 * 4096;
                assert!(
                    o == n || dirty.iter().any(|r| r.start <= at && at < r.end),
                    "{ctx}: block {i} changed since the last clear but is not dirty"
                );
            }
        }
        t.close().expect("close tracker");
    }
    is_new
}

/// Stops an incremental apply at each of its file operations in turn, in
/// each of the ways of [`Crash`] (killed; power lost keeping nothing
/// unflushed; keeping a subset of it). After each crash the target is
/// refused to openers while the journal is pending; `recover` (or every
/// other crash point, the next `apply`) leaves it exactly old or exactly
/// new, checking clean, with a tracked target's bitmap missing no changed
/// block; applying the stream again then gives the new content (or is
/// reported as already applied).
fn crash_model(format: ImageFormat, tracked_target: bool) {
    use crate::hostfile::sim::{Crash, Sim};

    let d = tmp();
    let src = mk(d.path(), "src", format, None);
    write(&src, &[(0, pattern(1, 2 << 20, false))]);
    add_bitmap(&src, "b", 64 << 10);
    let full = d.path().join("full");
    export_to(&src, &full, &full_with(Some("b"), true));
    let old = content(&src);
    write(&src, &some_writes(1));
    let new = content(&src);
    assert_ne!(old, new);
    let delta = d.path().join("delta");
    export_to(&src, &delta, &incremental("b", true));
    let generation = Some(bitmap_generation(&src, "b"));
    let mut n = 0u64;
    let mut states = 0u64;
    let mut pending = 0u64;
    'points: loop {
        for (mode, seed) in Crash::at_point(n) {
            let target = fresh_replica(d.path(), "t", format, tracked_target, &full);
            assert_eq!(content(&target), old);
            let sim = Sim::start(Some(n));
            let r = apply(&delta, &target, &mut |_, _| {});
            let crashed = sim.crashed();
            let ctx = format!(
                "{format:?} tracked={tracked_target}: crash at file operation {n} ({mode:?})"
            );
            mode.end(sim, seed, ());
            states += 1;
            match (&r, crashed) {
                (Ok(_), false) | (Err(_), true) => {}
                _ => panic!("{ctx}: crashed {crashed} but the apply returned {r:?}"),
            }
            if journal_path(&target).exists() {
                pending += 1;
                let e = crate::open(
                    &target,
                    &OpenOptions {
                        read_only: true,
                        ..Default::default()
                    },
                )
                .unwrap_err();
                assert!(
                    matches!(e, BlockError::DeltaApplyPending { .. }),
                    "{ctx}: {e}"
                );
            } else {
                old_or_new(&target, tracked_target, &old, &new, &ctx);
            }
            let is_new = if n.is_multiple_of(2) {
                recover(&target, &mut |_, _| {}).unwrap_or_else(|e| panic!("{ctx}: recover: {e}"));
                old_or_new(
                    &target,
                    tracked_target,
                    &old,
                    &new,
                    &format!("{ctx}, recovered"),
                )
            } else {
                false
            };
            let again = apply(&delta, &target, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{ctx}: applying again: {e}"));
            assert!(!is_new || again.already_applied, "{ctx}: {again:?}");
            assert!(
                old_or_new(
                    &target,
                    tracked_target,
                    &old,
                    &new,
                    &format!("{ctx}, applied again")
                ),
                "{ctx}: not new after applying again"
            );
            assert!(!journal_path(&target).exists(), "{ctx}");
            let record = read_replica(&target).expect("record").expect("a record");
            assert_eq!(record.generation, generation, "{ctx}");
            if tracked_target {
                let l = dirty::inspect(&target, DISK).unwrap().unwrap();
                assert_eq!(
                    l.bitmaps[0].state,
                    BitmapState::Tracking,
                    "{ctx}: {:?}",
                    l.problem
                );
            }
            for f in [
                target.clone(),
                replica_path(&target),
                dirty::sidecar_path(&target),
            ] {
                let _ = std::fs::remove_file(f);
            }
            if !crashed {
                break 'points;
            }
        }
        n += 1;
    }
    assert!(n > 10, "only {n} file operations?");
    println!("{format:?} tracked={tracked_target}: {n} file operations, {states} crash states, {pending} with the journal pending");
}

#[test]
fn crash_at_every_apply_step_raw() {
    crash_model(ImageFormat::Raw, false);
}

#[test]
fn crash_at_every_apply_step_tracked_raw() {
    crash_model(ImageFormat::Raw, true);
}

#[test]
fn crash_at_every_apply_step_vhdx() {
    crash_model(ImageFormat::Vhdx, false);
}

#[test]
fn crash_at_every_apply_step_tracked_vhdx() {
    crash_model(ImageFormat::Vhdx, true);
}

#[test]
fn crash_at_every_apply_step_vhd() {
    crash_model(ImageFormat::Vhd, false);
}

#[test]
fn crash_at_every_apply_step_tracked_vhd() {
    crash_model(ImageFormat::Vhd, true);
}

#[derive(Debug, Clone)]
enum Piece {
    Data {
        gap: u64,
        sectors: u64,
        seed: u64,
        compressible: bool,
    },
    Zero {
        gap: u64,
        sectors: u64,
    },
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        (0u64..8, 1u64..2100, any::<u64>(), any::<bool>()).prop_map(
            |(gap, sectors, seed, compressible)| Piece::Data {
                gap,
                sectors,
                seed,
                compressible
            }
        ),
        (0u64..8, 1u64..5000).prop_map(|(gap, sectors)| Piece::Zero { gap, sectors }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encode_decode_round_trip(pieces in proptest::collection::vec(piece(), 0..12)) {
        let disk = 64u64 << 20;
        let header = Header {
            disk_size: disk,
            granularity: 4096,
            source_generation: Some(1),
            target_generation: Some(2),
            stream_id: 3,
            created_sec: 4,
            created_nsec: 5,
            identity: ImageIdentity::default(),
        };
        let mut w = StreamWriter::new(Vec::new(), &header).unwrap();
        let mut model = vec![None::<u8>; (disk / 512) as usize];
        let mut at = 0u64;
        for p in &pieces {
            match p {
                Piece::Data { gap, sectors, seed, compressible } => {
                    at += gap * 512;
                    let data = pattern(*seed, (*sectors * 512) as usize, *compressible);
                    w.data(at, &data).unwrap();
                    for (i, s) in data.chunks(512).enumerate() {
                        model[(at / 512) as usize + i] = Some(s[0]);
                    }
                    at += sectors * 512;
                }
                Piece::Zero { gap, sectors } => {
                    at += gap * 512;
                    w.zero(at, sectors * 512).unwrap();
                    for i in 0..*sectors {
                        model[(at / 512 + i) as usize] = Some(0);
                    }
                    at += sectors * 512;
                }
            }
        }
        // Out of order is refused by the writer.
        if at > 0 {
            prop_assert!(w.data(0, &[1; 512]).is_err());
        }
        let (bytes, counts) = w.finish().unwrap();
        prop_assert_eq!(counts.stream_bytes, bytes.len() as u64);
        let (h, c) = verify_bytes(&bytes).unwrap();
        prop_assert_eq!(h, header);
        prop_assert_eq!(c, counts);
        let mut r = StreamReader::new(&bytes[..], Path::new("s")).unwrap();
        let mut data = Vec::new();
        let mut seen = vec![None::<u8>; (disk / 512) as usize];
        while let Some(rec) = r.next_record(&mut data).unwrap() {
            prop_assert!(rec.kind == RecordKind::Zero || rec.len <= RECORD_CHUNK);
            for i in 0..rec.len / 512 {
                let v = if rec.kind == RecordKind::Zero { 0 } else { data[(i * 512) as usize] };
                seen[(rec.offset / 512 + i) as usize] = Some(v);
            }
        }
        // Sectors written as all-zero data come back as zero records;
        // everything else byte for byte (first byte per sector here, the
        // CRCs guard the rest).
        for (i, (m, s)) in model.iter().zip(&seen).enumerate() {
            prop_assert_eq!(m, s, "sector {}", i);
        }
    }
}

/// Not a timed test: export/apply throughput on a 1 GiB raw image with 10 %
/// of its 64 KiB granules dirty (half of them random bytes, half
/// compressible), and a full export/apply of the same image. Run it with
/// `cargo test --release -p rehost-disk --lib delta_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn delta_throughput() {
    let size: u64 = 1 << 30;
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/delta-bench");
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::tempdir_in(&base).unwrap();
    let create = |name: &str| {
        let p = d.path().join(name);
        crate::create(
            &p,
            &CreateOptions {
                format: ImageFormat::Raw,
                subformat: Subformat::Fixed,
                size,
                block_size: None,
                parent: None,
            },
        )
        .unwrap();
        p
    };
    let src = create("src.raw");
    let replica = create("replica.raw");
    add_bitmap(&src, "b", 64 << 10);
    let timed = |what: &str, bytes: u64, f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        let s = t.elapsed().as_secs_f64();
        println!(
            "{what}: {bytes} bytes in {s:.3} s = {:.1} MiB/s",
            bytes as f64 / (1 << 20) as f64 / s
        );
    };
    let full = d.path().join("full.rhd");
    timed("full export (1 GiB, empty)", size, &mut || {
        export_to(&src, &full, &full_with(Some("b"), true));
    });
    timed("full apply (1 GiB, empty)", size, &mut || {
        apply(&full, &replica, &mut |_, _| {}).unwrap();
    });
    // 10 % of the granules, spread by a fixed pseudo-random walk.
    let granule = 64u64 << 10;
    let count = size / granule / 10;
    let mut picked = std::collections::BTreeSet::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while (picked.len() as u64) < count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        picked.insert(x % (size / granule));
    }
    let writes: Vec<(u64, Vec<u8>)> = picked
        .iter()
        .map(|&g| (g * granule, pattern(g, granule as usize, g % 2 == 0)))
        .collect();
    write(&src, &writes);
    let dirty = count * granule;
    let inc = d.path().join("inc.rhd");
    let mut report = None;
    timed("incremental export (10 % dirty)", dirty, &mut || {
        report = Some(export_to(&src, &inc, &incremental("b", true)));
    });
    let r = report.unwrap();
    println!(
        "stream {} bytes for {} dirty bytes ({:.3} of them); data compression ratio {:.2}; {} records ({} zstd, {} raw, {} zero)",
        r.counts.stream_bytes,
        r.extent_bytes,
        r.counts.stream_bytes as f64 / r.extent_bytes as f64,
        r.counts.data_bytes as f64 / r.counts.stored_bytes as f64,
        r.counts.records(),
        r.counts.zstd_records,
        r.counts.raw_records,
        r.counts.zero_records
    );
    timed("incremental apply (10 % dirty)", dirty, &mut || {
        apply(&inc, &replica, &mut |_, _| {}).unwrap();
    });
    assert!(same(&src, &replica));
}
