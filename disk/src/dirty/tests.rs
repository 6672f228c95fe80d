use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::hostfile::sim::Sim;
use crate::raw::RawFile;
use crate::{ImageFormat, Subformat};

const DISK: u64 = 4 << 20;
const BLOCK: u64 = 4096;

struct Scratch {
    _dir: tempfile::TempDir,
    image: PathBuf,
}

fn scratch() -> Scratch {
    let dir = crate::scratch::tmpfs_dir(64 << 20)
        .unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
    let image = dir.path().join("disk.raw");
    let f = File::create(&image).expect("create image");
    f.set_len(DISK).expect("size image");
    Scratch { _dir: dir, image }
}

fn small_al() -> TrackerOptions {
    TrackerOptions {
        al_capacity: 3,
        al_extent_size: 64 << 10,
    }
}

fn open(image: &Path, opts: &TrackerOptions) -> DirtyTracker {
    let raw: Arc<dyn DiskImage> = Arc::new(RawFile::open(image, false).expect("open raw"));
    DirtyTracker::open_image(raw, opts).expect("open tracker")
}

fn dirty_blocks(t: &DirtyTracker, name: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for r in t.dirty_extents(name).expect("extents") {
        let mut b = r.start / BLOCK;
        while b * BLOCK < r.end {
            out.insert(b);
            b += 1;
        }
    }
    out
}

fn state_of(t: &DirtyTracker, name: &str) -> BitmapState {
    t.bitmaps()
        .into_iter()
        .find(|b| b.name == name)
        .map(|b| b.state)
        .expect("bitmap exists")
}

#[test]
fn writes_are_recorded_and_survive_a_clean_close() {
    let s = scratch();
    let t = open(&s.image, &TrackerOptions::default());
    t.add_bitmap("fine", 4096).unwrap();
    t.add_bitmap("coarse", 1 << 20).unwrap();
    let gen0 = t.bitmaps()[0].generation;
    t.write_at(8192, &[1u8; 512]).unwrap();
    t.write_at(3 << 20, &[2u8; 8192]).unwrap();
    t.discard(1 << 20, 4096).unwrap();
    assert_eq!(
        t.dirty_extents("fine").unwrap(),
        vec![
            8192..12288,
            (1 << 20)..(1 << 20) + 4096,
            (3 << 20)..(3 << 20) + 8192
        ]
    );
    assert_eq!(
        t.dirty_extents("coarse").unwrap(),
        vec![0..(2 << 20), (3 << 20)..(4 << 20)]
    );
    t.close().unwrap();
    let t = open(&s.image, &TrackerOptions::default());
    assert_eq!(t.problem(), None);
    let fine = &t.bitmaps()[0];
    assert_eq!(fine.state, BitmapState::Tracking);
    assert_eq!(fine.generation, gen0);
    assert_eq!(fine.dirty_bytes, 4096 + 4096 + 8192);
    let cleared = t.clear_bitmap("fine").unwrap();
    assert_ne!(cleared.generation, gen0);
    assert_eq!(cleared.dirty_bytes, 0);
    assert!(t.add_bitmap("fine", 4096).is_err());
    assert!(t.add_bitmap("odd", 3 << 12).is_err());
    assert!(t.add_bitmap("huge", 32 << 20).is_err());
    assert!(t.add_bitmap("bad name", 4096).is_err());
    t.remove_bitmap("coarse").unwrap();
    assert!(t.remove_bitmap("coarse").is_err());
    assert_eq!(t.bitmaps().len(), 1);
    // Data reached the image.
    let mut buf = [0u8; 512];
    t.read_at(8192, &mut buf).unwrap();
    assert_eq!(buf, [1u8; 512]);
}

#[test]
fn requests_outside_the_disk_are_errors() {
    let s = scratch();
    let t = open(&s.image, &TrackerOptions::default());
    t.add_bitmap("b", 4096).unwrap();
    assert!(t.write_at(DISK, &[0u8; 512]).is_err());
    assert!(t.write_at(u64::MAX - 511, &[0u8; 512]).is_err());
    assert!(t.write_at(1, &[0u8; 512]).is_err());
    assert!(t.discard(DISK - 512, 1024).is_err());
    assert_eq!(t.bitmaps()[0].dirty_bytes, 0);
}

#[test]
fn a_crash_recovers_every_written_block_through_the_activity_log() {
    let s = scratch();
    let t = open(&s.image, &small_al());
    t.add_bitmap("b", 4096).unwrap();
    t.write_at(0, &[1u8; 4096]).unwrap();
    t.flush().unwrap();
    t.write_at(512 << 10, &[1u8; 4096]).unwrap();
    t.write_at((2 << 20) + 8192, &[1u8; 4096]).unwrap();
    t.crash();
    let t = open(&s.image, &small_al());
    assert_eq!(t.recovered_extents(), 2);
    assert_eq!(state_of(&t, "b"), BitmapState::Tracking);
    let d = dirty_blocks(&t, "b");
    // Block 0 from the persisted bits; the two 64 KiB extents whole.
    let mut expect: BTreeSet<u64> = [0].into_iter().collect();
    expect.extend(128..144);
    expect.extend(512..528);
    assert_eq!(d, expect);
}

#[test]
fn an_image_changed_outside_the_tracker_needs_a_resync() {
    let s = scratch();
    let t = open(&s.image, &TrackerOptions::default());
    t.add_bitmap("b", 65536).unwrap();
    let gen0 = t.bitmaps()[0].generation;
    t.close().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap()
        .write_all_at(&[9u8; 512], 4096)
        .unwrap();
    let info = inspect(&s.image, DISK).unwrap().unwrap();
    assert_eq!(info.bitmaps[0].state, BitmapState::ResyncRequired);
    let t = open(&s.image, &TrackerOptions::default());
    let b = &t.bitmaps()[0];
    assert_eq!(b.state, BitmapState::ResyncRequired);
    assert_eq!(b.dirty_bytes, DISK);
    assert_ne!(b.generation, gen0);
    assert!(t.problem().is_some_and(|p| p.contains("changed")));
    // Still resync-required after another open, until cleared.
    drop(t);
    let t = open(&s.image, &TrackerOptions::default());
    assert_eq!(state_of(&t, "b"), BitmapState::ResyncRequired);
    t.clear_bitmap("b").unwrap();
    assert_eq!(state_of(&t, "b"), BitmapState::Tracking);
    assert_eq!(t.bitmaps()[0].dirty_bytes, 0);
}

#[test]
fn a_missing_sidecar_means_no_bitmaps_and_a_resized_image_a_resync() {
    let s = scratch();
    let t = open(&s.image, &TrackerOptions::default());
    assert!(t.bitmaps().is_empty());
    assert!(inspect(&s.image, DISK).unwrap().is_none());
    t.add_bitmap("b", 65536).unwrap();
    t.close().unwrap();
    File::options()
        .write(true)
        .open(&s.image)
        .unwrap()
        .set_len(DISK * 2)
        .unwrap();
    let t = open(&s.image, &TrackerOptions::default());
    assert_eq!(state_of(&t, "b"), BitmapState::ResyncRequired);
}

/// The state record in force in a sidecar's bytes, and its file offset.
fn current_record(bytes: &[u8]) -> (StateRecord, u64) {
    let slots = sidecar_spec::state_slots(bytes).unwrap();
    slots
        .slots
        .iter()
        .filter_map(|(at, b)| StateRecord::parse(b, *at, true).ok().map(|r| (r, *at)))
        .max_by_key(|(r, _)| r.sequence)
        .expect("a valid state record")
}

/// A sidecar as a clean close leaves it, with its stamp.
fn clean_sidecar(s: &Scratch) -> (Vec<u8>, ImageStamp) {
    let t = open(&s.image, &small_al());
    t.add_bitmap("one", 4096).unwrap();
    t.add_bitmap("two", 65536).unwrap();
    t.write_at(40960, &[3u8; 4096]).unwrap();
    t.close().unwrap();
    let bytes = std::fs::read(sidecar_path(&s.image)).unwrap();
    let stamp = current_record(&bytes).0.stamp.unwrap();
    (bytes, stamp)
}

#[test]
fn every_flipped_byte_of_a_sidecar_is_detected() {
    let s = scratch();
    let (bytes, stamp) = clean_sidecar(&s);
    let path = sidecar_path(&s.image);
    let ok = decode(&path, &bytes, DISK, Some(stamp), &small_al());
    assert!(ok.problem.is_none());
    assert!(ok.bitmaps.iter().all(|b| b.state == BitmapState::Tracking));
    let clean: Vec<Vec<Range<u64>>> = ok.bitmaps.iter().map(|b| b.extents(DISK)).collect();
    let (record, at) = current_record(&bytes);
    let in_force = at as usize..at as usize + record.encoded_len();
    let mut fell_back = 0;
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            let d = decode(&path, &b, DISK, Some(stamp), &small_al());
            if d.problem.is_some() {
                for bm in &d.bitmaps {
                    assert_eq!(bm.state, BitmapState::ResyncRequired, "flip at {i}");
                    assert_eq!(bm.info(DISK).dirty_bytes, DISK, "flip at {i}");
                }
                continue;
            }
            // Damage outside the record in force that leaves it standing
            // (the older state slot, a stale log slot) changes nothing;
            // damage to the record in force falls back to the older one
            // and its log, which covers every write since.
            assert!(
                !(AL_SLOT_SIZE..STATE_OFFSET).contains(&i),
                "flip {flip:#x} at {i}: the only log slot damaged, yet no resync"
            );
            if in_force.contains(&i) {
                fell_back += 1;
            }
            for (bm, want) in d.bitmaps.iter().zip(&clean) {
                assert_eq!(bm.state, BitmapState::Tracking, "flip at {i}");
                let got = bm.extents(DISK);
                for r in want {
                    assert!(
                        got.iter().any(|g| g.start <= r.start && r.end <= g.end),
                        "flip {flip:#x} at {i}: {r:?} of {} no longer dirty: {got:?}",
                        bm.name
                    );
                }
            }
        }
    }
    assert!(fell_back > 0, "no flip fell back to the older record");
}

#[test]
fn every_truncation_of_a_sidecar_is_detected() {
    let s = scratch();
    let (bytes, stamp) = clean_sidecar(&s);
    let path = sidecar_path(&s.image);
    for len in 0..bytes.len() {
        let d = decode(&path, &bytes[..len], DISK, Some(stamp), &small_al());
        assert!(d.problem.is_some(), "truncation to {len} not detected");
        assert!(
            d.bitmaps
                .iter()
                .all(|b| b.state == BitmapState::ResyncRequired),
            "truncation to {len}"
        );
    }
    // And on open: a truncated sidecar turns the bitmaps it still names
    // (none, here) to resync-required and is rewritten.
    std::fs::write(&path, &bytes[..STATE_OFFSET + 50]).unwrap();
    let t = open(&s.image, &small_al());
    assert!(t.problem().is_some());
    assert!(t
        .bitmaps()
        .iter()
        .all(|b| b.state == BitmapState::ResyncRequired));
}

#[test]
fn a_damaged_state_record_keeps_the_bitmap_names_as_resync_required() {
    let s = scratch();
    let (mut bytes, _) = clean_sidecar(&s);
    // Damage a bit of the last bitmap word of both state records: the
    // checksums fail, the structure holds.
    let slots = sidecar_spec::state_slots(&bytes).unwrap();
    let ends: Vec<usize> = slots
        .slots
        .iter()
        .map(|(at, b)| *at as usize + sidecar_spec::le64(b, 80) as usize - 1)
        .collect();
    for end in ends {
        bytes[end] ^= 0x01;
    }
    std::fs::write(sidecar_path(&s.image), &bytes).unwrap();
    let t = open(&s.image, &small_al());
    let names: Vec<String> = t.bitmaps().into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["one", "two"]);
    assert!(t
        .bitmaps()
        .iter()
        .all(|b| b.state == BitmapState::ResyncRequired && b.dirty_bytes == DISK));
}

#[test]
fn a_crash_at_every_sidecar_operation_never_loses_a_write() {
    // Writes, flushes and bitmap changes with the process dying at the
    // n-th sidecar file operation, for every n until the run completes.
    for n in 0.. {
        let s = scratch();
        let t = open(&s.image, &small_al());
        t.add_bitmap("b", 4096).unwrap();
        let sim = Sim::start(Some(n));
        let mut written = BTreeSet::new();
        let mut crashed = false;
        for i in 0..12u64 {
            let off = (i * 7 % 16) * (64 << 10) + (i % 4) * 4096;
            if t.write_at(off, &[i as u8; 4096]).is_err() {
                crashed = true;
                break;
            }
            written.insert(off / BLOCK);
            if i % 5 == 4 && t.flush().is_err() {
                crashed = true;
                break;
            }
        }
        if crashed {
            sim.crash_now();
            drop(t);
        } else if t.close().is_err() {
            // Died while closing.
            crashed = true;
        }
        sim.kill();
        let t = open(&s.image, &small_al());
        let d = dirty_blocks(&t, "b");
        assert!(written.is_subset(&d), "crash after {n} ops lost writes");
        if !crashed {
            break;
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        block: u64,
        blocks: u64,
    },
    Discard {
        block: u64,
        blocks: u64,
    },
    Flush,
    /// The process dies or the power fails (the crash mode's index in
    /// [`Crash::at_point`], and the seed of the subset kept).
    Crash {
        mode: usize,
        seed: u64,
    },
    Reopen,
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    let blocks = DISK / BLOCK;
    prop_oneof![
        6 => (0..blocks, 1u64..40).prop_map(|(block, blocks)| Op::Write { block, blocks }),
        1 => (0..blocks, 1u64..40).prop_map(|(block, blocks)| Op::Discard { block, blocks }),
        1 => Just(Op::Flush),
        1 => (0usize..3, any::<u64>()).prop_map(|(mode, seed)| Op::Crash { mode, seed }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Clear),
    ]
}

/// The image kinds the model test tracks.
const KINDS: [(ImageFormat, Subformat); 6] = [
    (ImageFormat::Raw, Subformat::Fixed),
    (ImageFormat::Vhd, Subformat::Dynamic),
    (ImageFormat::Vhd, Subformat::Fixed),
    (ImageFormat::Vhdx, Subformat::Dynamic),
    (ImageFormat::Vhdx, Subformat::Fixed),
    (ImageFormat::Vhdx, Subformat::Differencing),
];

/// A fresh image of `DISK` bytes of the kind `KINDS[kind]` (a
/// differencing one over a parent holding data).
fn scratch_of(kind: usize) -> Scratch {
    let (format, subformat) = KINDS[kind];
    if format == ImageFormat::Raw {
        return scratch();
    }
    let dir = crate::scratch::tmpfs_dir(64 << 20)
        .unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
    let create = |name: &str, subformat, parent: Option<PathBuf>| {
        let path = dir.path().join(name);
        crate::create(
            &path,
            &crate::CreateOptions {
                format,
                subformat,
                size: DISK,
                block_size: Some(1 << 20),
                parent,
            },
        )
        .expect("create image");
        path
    };
    let image = if subformat == Subformat::Differencing {
        let parent = create("parent.vhdx", Subformat::Dynamic, None);
        let p = open_any(&parent);
        p.write_at(BLOCK * 3, &[0x33; 3 * BLOCK as usize])
            .expect("write parent");
        p.flush().expect("flush parent");
        drop(p);
        create("child.vhdx", subformat, Some(parent))
    } else {
        create(&format!("disk.{}", format.name()), subformat, None)
    };
    Scratch { _dir: dir, image }
}

/// Opens an image of any format read-write.
fn open_any(image: &Path) -> Box<dyn DiskImage> {
    crate::open(image, &crate::OpenOptions::default()).expect("open image")
}

fn track_any(image: &Path, opts: &TrackerOptions) -> DirtyTracker {
    DirtyTracker::open_image(Arc::from(open_any(image)), opts).expect("open tracker")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Against a model, on every image kind: after any sequence of writes,
    /// discards, flushes, clears, clean reopens and crashes (a killed
    /// process, or a power loss keeping none or some of what was not
    /// flushed, through the crash simulator), every block written since
    /// the last clear is dirty, and what is dirty beyond that was either
    /// dirty before or lies in an activity-log extent written since the
    /// last persist (bounded by the log's capacity); after a clean close
    /// the bitmap is exactly the model's.
    #[test]
    fn tracking_never_under_reports(
        kind in 0..KINDS.len(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        use crate::hostfile::sim::{Crash, Sim};

        let s = scratch_of(kind);
        let opts = small_al();
        let es = opts.al_extent_size;
        let cap = opts.al_capacity as u64;
        let mut t = track_any(&s.image, &opts);
        t.add_bitmap("b", 4096).unwrap();
        let mut written: BTreeSet<u64> = BTreeSet::new();
        let mut allowed: BTreeSet<u64> = BTreeSet::new();
        let mut sim = Sim::start(None);
        for op in ops {
            match op {
                Op::Write { block, blocks } | Op::Discard { block, blocks } => {
                    let blocks = blocks.min(DISK / BLOCK - block);
                    let (off, len) = (block * BLOCK, blocks * BLOCK);
                    if matches!(op, Op::Write { .. }) {
                        t.write_at(off, &vec![0x5a; len as usize]).unwrap();
                    } else {
                        t.discard(off, len).unwrap();
                    }
                    written.extend(block..block + blocks);
                    allowed.extend(block..block + blocks);
                }
                Op::Flush => t.flush().unwrap(),
                Op::Clear => {
                    t.clear_bitmap("b").unwrap();
                    written.clear();
                    allowed.clear();
                }
                Op::Reopen | Op::Crash { .. } => {
                    let before = dirty_blocks(&t, "b");
                    prop_assert_eq!(&before, &allowed);
                    if let Op::Crash { mode, seed } = op {
                        let (mode, _) = Crash::at_point(seed)[mode];
                        mode.end(sim, seed, t);
                        let check = crate::crashtest::open(&s.image, true).check().unwrap();
                        prop_assert_eq!(check, vec![]);
                    } else {
                        t.close().unwrap();
                        sim.kill();
                    }
                    // (A simulation keeps every file it saw written open,
                    // and so locked, until it ends: a new one for the
                    // reopened image.)
                    sim = Sim::start(None);
                    t = track_any(&s.image, &opts);
                    let after = dirty_blocks(&t, "b");
                    prop_assert_eq!(state_of(&t, "b"), BitmapState::Tracking, "{:?}", t.problem());
                    prop_assert!(written.is_subset(&after), "missed writes");
                    let extra: BTreeSet<u64> = after.difference(&allowed).copied().collect();
                    let extents: BTreeSet<u64> =
                        extra.iter().map(|b| b * BLOCK / es).collect();
                    prop_assert!(extents.len() as u64 <= cap,
                        "over-report of {} extents, log holds {}", extents.len(), cap);
                    if matches!(op, Op::Reopen) {
                        prop_assert!(extra.is_empty());
                    }
                    allowed = after;
                }
            }
        }
        t.close().unwrap();
        sim.kill();
    }
}

#[test]
fn a_torn_activity_log_update_falls_back_to_the_other_slot() {
    let s = scratch();
    let path = sidecar_path(&s.image);
    let t = open(&s.image, &small_al());
    t.add_bitmap("b", 4096).unwrap();
    t.write_at(0, &[1u8; 4096]).unwrap(); // log: [0] in slot 1
    t.write_at(5 * 65536, &[1u8; 4096]).unwrap(); // log: [0, 5] in slot 0
    t.crash();
    let bytes = std::fs::read(&path).unwrap();
    let owner = current_record(&bytes).0.al_owner();
    let newer = AlSlot {
        sequence: 3,
        owner,
        extent_size: 65536,
        extents: vec![0, 5, 9],
    }
    .to_bytes();
    // The third log update, into slot 1, torn half way: its data write
    // never started; slot 0 covers everything that did.
    let mut torn = bytes.clone();
    torn[AL_SLOT_SIZE..AL_SLOT_SIZE + 2048].copy_from_slice(&newer[..2048]);
    std::fs::write(&path, &torn).unwrap();
    let t = open(&s.image, &small_al());
    assert_eq!(state_of(&t, "b"), BitmapState::Tracking);
    let d = dirty_blocks(&t, "b");
    assert!(d.contains(&0) && d.contains(&(5 * 16)), "{d:?}");
    assert_eq!(d.len(), 32);
    drop(t);
    // Both slots damaged: nothing says what was written.
    let mut both = bytes.clone();
    both[100] ^= 1;
    both[AL_SLOT_SIZE + 100] ^= 1;
    std::fs::write(&path, &both).unwrap();
    let t = open(&s.image, &small_al());
    assert_eq!(state_of(&t, "b"), BitmapState::ResyncRequired);
    assert_eq!(t.bitmaps()[0].dirty_bytes, DISK);
}

#[test]
fn the_tracker_counts_its_own_log_updates_persists_and_time() {
    let s = scratch();
    let t = open(&s.image, &small_al());
    assert_eq!(t.cost(), TrackerCost::default());
    t.add_bitmap("b", 65536).unwrap();
    let added = t.cost();
    assert_eq!((added.log_updates, added.persists), (0, 1));
    // The first write to an extent updates the log; more writes to it do not.
    t.write_at(0, &[1u8; 512]).unwrap();
    t.write_at(4096, &[1u8; 512]).unwrap();
    assert_eq!(t.cost().log_updates, 1);
    t.write_at(5 * 65536, &[1u8; 512]).unwrap();
    let written = t.cost();
    assert_eq!((written.log_updates, written.persists), (2, 1));
    assert!(written.record_nanos > 0 && written.seconds() > added.seconds());
    t.flush().unwrap();
    assert_eq!(t.cost().persists, 2);
    // Nothing new to say: no persist counted.
    t.flush().unwrap();
    assert_eq!(t.cost().persists, 2);
}

#[test]
fn a_flush_without_writes_leaves_the_sidecar_alone() {
    let s = scratch();
    let path = sidecar_path(&s.image);
    let t = open(&s.image, &TrackerOptions::default());
    t.add_bitmap("b", 65536).unwrap();
    t.write_at(0, &[1u8; 512]).unwrap();
    t.flush().unwrap();
    let before = std::fs::read(&path).unwrap();
    t.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before);
    t.write_at(512, &[1u8; 512]).unwrap();
    t.flush().unwrap();
    let after = std::fs::read(&path).unwrap();
    assert_ne!(after, before);
    // The new state went into the other slot, in place.
    assert_eq!(after.len(), before.len());
    assert_eq!(
        current_record(&after).0.sequence,
        current_record(&before).0.sequence + 1
    );
}

#[test]
fn a_vhdx_written_elsewhere_needs_a_resync_even_with_its_mtime_put_back() {
    let s = scratch();
    let img = s.image.with_extension("vhdx");
    crate::create(
        &img,
        &crate::CreateOptions {
            format: crate::ImageFormat::Vhdx,
            subformat: crate::Subformat::Dynamic,
            size: DISK,
            block_size: None,
            parent: None,
        },
    )
    .unwrap();
    let rw = crate::OpenOptions {
        read_only: false,
        ..Default::default()
    };
    let t = DirtyTracker::open_image(
        Arc::from(crate::open(&img, &rw).unwrap()),
        &TrackerOptions::default(),
    )
    .unwrap();
    t.add_bitmap("b", 65536).unwrap();
    t.write_at(0, &[1u8; 4096]).unwrap();
    t.close().unwrap();
    let info = inspect(&img, DISK).unwrap().unwrap();
    assert_eq!(info.bitmaps[0].state, BitmapState::Tracking);
    assert_eq!(info.bitmaps[0].dirty_bytes, 65536);
    // Another writer, into the block already allocated, then the
    // modification time put back: only the DataWriteGuid tells.
    let before = std::fs::metadata(&img).unwrap();
    {
        let d = crate::open(&img, &rw).unwrap();
        d.write_at(8192, &[2u8; 4096]).unwrap();
        d.flush().unwrap();
    }
    File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = std::fs::metadata(&img).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    let info = inspect(&img, DISK).unwrap().unwrap();
    assert_eq!(info.bitmaps[0].state, BitmapState::ResyncRequired);
    assert_eq!(info.bitmaps[0].dirty_bytes, DISK);
}

/// The tracker over raw, VHD and VHDX images with a crash at every file
/// operation of the image and of the sidecar, in the three ways of
/// [`Crash`].
mod crash_everywhere {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::super::*;
    use crate::crashtest::{flat, open, pattern, tmp};
    use crate::hostfile::sim::{Crash, Sim};
    use crate::{CreateOptions, ImageFormat, Subformat};

    const SIZE: u64 = 8 << 20;
    const GRANULE: u64 = 4096;

    enum Op {
        Write(u64, usize),
        Flush,
        Clear,
    }

    /// Writes spread over more activity-log extents than the log holds (so
    /// it fills and persists), a clear, writes across an extent boundary,
    /// and writes left unflushed at the end.
    fn workload() -> Vec<Op> {
        vec![
            Op::Write(0, 4096),
            Op::Write((1 << 20) + 8192, 8192),
            Op::Flush,
            Op::Write(2 << 20, 4096),
            Op::Write(3 << 20, 4096),
            Op::Write(4 << 20, 4096),
            Op::Clear,
            Op::Write(5 << 20, 1024),
            Op::Flush,
            Op::Write((64 << 10) - 512, 1024),
            Op::Write(6 << 20, 4096),
        ]
    }

    fn opts() -> TrackerOptions {
        TrackerOptions {
            al_capacity: 3,
            al_extent_size: 64 << 10,
        }
    }

    fn tracker(image: &Path) -> DirtyTracker {
        let d: Arc<dyn DiskImage> = Arc::from(open(image, false));
        DirtyTracker::open_image(d, &opts()).unwrap()
    }

    fn image(dir: &Path, format: ImageFormat, subformat: Subformat) -> PathBuf {
        let path = dir.join(format!("d.{}", format.name()));
        crate::create(
            &path,
            &CreateOptions {
                format,
                subformat,
                size: SIZE,
                block_size: Some(1 << 20),
                parent: None,
            },
        )
        .unwrap();
        path
    }

    #[derive(Debug, Default)]
    struct Coverage {
        states: u64,
        resync: u64,
        /// Largest share of the disk marked dirty without differing from
        /// the content at the last clear.
        max_over: f64,
    }

    fn run(make: impl Fn(&Path) -> PathBuf) -> Coverage {
        let mut cov = Coverage::default();
        let mut n = 0u64;
        'points: loop {
            for (mode, seed) in Crash::at_point(n) {
                let dir = tmp();
                let path = make(dir.path());
                let t = tracker(&path);
                t.add_bitmap("b", GRANULE).unwrap();
                // The content at each generation's clear.
                let mut model = flat(&t);
                let mut bases: HashMap<u128, Vec<u8>> = HashMap::new();
                bases.insert(t.bitmaps()[0].generation, model.clone());
                let sim = Sim::start(Some(n));
                for (i, op) in workload().iter().enumerate() {
                    let r = match op {
                        Op::Write(off, len) => {
                            let data = pattern(i as u64 + 1, *len);
                            let r = t.write_at(*off, &data);
                            model[*off as usize..*off as usize + len].copy_from_slice(&data);
                            r
                        }
                        Op::Flush => t.flush(),
                        Op::Clear => {
                            let r = t.clear_bitmap("b").map(|_| ());
                            // The new generation is in memory even when
                            // persisting it failed.
                            bases.insert(t.bitmaps()[0].generation, model.clone());
                            r
                        }
                    };
                    if r.is_err() {
                        break;
                    }
                }
                let crashed = sim.crashed();
                let ctx = format!("{}: crash at file operation {n} ({mode:?})", path.display());
                mode.end(sim, seed, t);
                cov.states += 1;

                let img = open(&path, false);
                assert_eq!(img.check().unwrap(), vec![], "{ctx}");
                let d: Arc<dyn DiskImage> = Arc::from(img);
                let t = DirtyTracker::open_image(d, &opts())
                    .unwrap_or_else(|e| panic!("{ctx}: reopening the tracker: {e}"));
                let b = t.bitmaps().into_iter().find(|b| b.name == "b");
                let b = b.unwrap_or_else(|| panic!("{ctx}: the bitmap is gone"));
                if b.state == BitmapState::ResyncRequired {
                    assert_eq!(b.dirty_bytes, SIZE, "{ctx}");
                    cov.resync += 1;
                    if cov.resync == 1 {
                        println!("first resync-required: {ctx}: {:?}", t.problem());
                    }
                } else {
                    let base = bases.get(&b.generation).unwrap_or_else(|| {
                        panic!("{ctx}: tracking with a generation never created")
                    });
                    let now = flat(&t);
                    let dirty = super::dirty_blocks(&t, "b");
                    let mut over = 0u64;
                    for g in 0..SIZE / GRANULE {
                        let r = (g * GRANULE) as usize..((g + 1) * GRANULE) as usize;
                        let differs = now[r.clone()] != base[r];
                        assert!(
                            !differs || dirty.contains(&g),
                            "{ctx}: granule {g} changed since the last clear but is not dirty"
                        );
                        if !differs && dirty.contains(&g) {
                            over += 1;
                        }
                    }
                    let share = (over * GRANULE) as f64 / SIZE as f64;
                    cov.max_over = cov.max_over.max(share);
                }
                drop(t);
                if !crashed {
                    break 'points;
                }
            }
            n += 1;
        }
        assert!(n > 10, "the workload performed only {n} file operations");
        println!(
            "{} crash states, {} resync-required, largest over-report {:.2} % of the disk",
            cov.states,
            cov.resync,
            cov.max_over * 100.0
        );
        cov
    }

    #[test]
    fn raw() {
        run(|d| image(d, ImageFormat::Raw, Subformat::Fixed));
    }

    #[test]
    fn vhd_dynamic() {
        run(|d| image(d, ImageFormat::Vhd, Subformat::Dynamic));
    }

    #[test]
    fn vhdx_dynamic() {
        run(|d| image(d, ImageFormat::Vhdx, Subformat::Dynamic));
    }
}

/// A version-1 sidecar as the first rehost wrote it: the version-2 record
/// without its sequence number and slot size, to the end of the file.
fn version_1(record: &StateRecord, log: Option<&AlSlot>) -> Vec<u8> {
    let v2 = record.to_bytes();
    let mut r = v2[..sidecar_spec::STATE_HEADER_SIZE_V1].to_vec();
    r.extend_from_slice(&v2[sidecar_spec::STATE_HEADER_SIZE..]);
    r[8..12].copy_from_slice(&1u32.to_le_bytes());
    r[12..16].copy_from_slice(&112u32.to_le_bytes());
    let len = r.len() as u64;
    r[80..88].copy_from_slice(&len.to_le_bytes());
    let crc = sidecar_spec::checksum(&r, sidecar_spec::STATE_CRC_AT);
    r[92..96].copy_from_slice(&crc.to_le_bytes());
    let mut out = vec![0u8; STATE_OFFSET];
    if let Some(l) = log {
        out[AL_SLOT_SIZE..STATE_OFFSET].copy_from_slice(&l.to_bytes());
    }
    out.extend_from_slice(&r);
    out
}

#[test]
fn a_version_1_sidecar_is_read_and_rewritten_as_version_2() {
    let s = scratch();
    let (bytes, _) = clean_sidecar(&s);
    let path = sidecar_path(&s.image);
    let (record, _) = current_record(&bytes);
    let want = {
        let t = open(&s.image, &small_al());
        let w = dirty_blocks(&t, "one");
        drop(t);
        w
    };
    // Clean: the bits as they were, and the file is version 2 now.
    std::fs::write(&path, version_1(&record, None)).unwrap();
    let t = open(&s.image, &small_al());
    assert_eq!(t.problem(), None);
    assert_eq!(state_of(&t, "one"), BitmapState::Tracking);
    assert_eq!(dirty_blocks(&t, "one"), want);
    drop(t);
    let now = std::fs::read(&path).unwrap();
    assert_eq!(sidecar_spec::state_slots(&now).unwrap().version, 2);
    // With a log left by a crash: the logged extent (64 KiB at 1 MiB) is
    // recovered.
    let log = AlSlot {
        sequence: 1,
        owner: record.state_id,
        extent_size: 64 << 10,
        extents: vec![16],
    };
    std::fs::write(&path, version_1(&record, Some(&log))).unwrap();
    let t = open(&s.image, &small_al());
    assert_eq!(t.recovered_extents(), 1);
    assert_eq!(state_of(&t, "one"), BitmapState::Tracking);
    let mut with_log = want.clone();
    with_log.extend(256..272);
    assert_eq!(dirty_blocks(&t, "one"), with_log);
    drop(t);
    // A version-1 log of another state: nothing says what was written.
    let stranger = AlSlot {
        owner: record.state_id ^ 1,
        ..log
    };
    std::fs::write(&path, version_1(&record, Some(&stranger))).unwrap();
    let t = open(&s.image, &small_al());
    assert_eq!(state_of(&t, "one"), BitmapState::ResyncRequired);
}

#[test]
fn a_lost_newer_record_whose_log_was_used_needs_a_resync() {
    let s = scratch();
    let path = sidecar_path(&s.image);
    let t = open(&s.image, &small_al());
    t.add_bitmap("b", 4096).unwrap();
    t.write_at(0, &[1u8; 4096]).unwrap();
    t.flush().unwrap();
    // A write announced under the record just written, then a crash.
    t.write_at(1 << 20, &[1u8; 4096]).unwrap();
    t.crash();
    let mut bytes = std::fs::read(&path).unwrap();
    let (record, at) = current_record(&bytes);
    // The record in force is lost (damaged): the older one stands, but the
    // log belongs to the lost one, so what it covered is not known.
    bytes[at as usize + record.encoded_len() - 1] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let t = open(&s.image, &small_al());
    assert_eq!(state_of(&t, "b"), BitmapState::ResyncRequired);
    assert!(
        t.problem()
            .is_some_and(|p| p.contains("belongs to state record")),
        "{:?}",
        t.problem()
    );
}

#[test]
fn opening_a_clean_sidecar_writes_nothing() {
    let s = scratch();
    let path = sidecar_path(&s.image);
    let t = open(&s.image, &TrackerOptions::default());
    t.add_bitmap("b", 65536).unwrap();
    t.write_at(0, &[1u8; 512]).unwrap();
    t.close().unwrap();
    let before = std::fs::read(&path).unwrap();
    let t = open(&s.image, &TrackerOptions::default());
    t.close().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A write then goes under the record in force, and closing writes the
    // next one into the other slot.
    let t = open(&s.image, &TrackerOptions::default());
    t.write_at(1 << 20, &[1u8; 512]).unwrap();
    t.close().unwrap();
    let after = std::fs::read(&path).unwrap();
    assert_eq!(
        current_record(&after).0.sequence,
        current_record(&before).0.sequence + 1
    );
    let t = open(&s.image, &TrackerOptions::default());
    assert_eq!(t.problem(), None);
    assert_eq!(
        t.dirty_extents("b").unwrap(),
        vec![0..65536, (1 << 20)..(1 << 20) + 65536]
    );
}

#[test]
fn closing_a_flushed_vhdx_needs_no_second_persist() {
    let s = scratch_of(3);
    let path = sidecar_path(&s.image);
    let t = track_any(&s.image, &TrackerOptions::default());
    t.add_bitmap("b", 65536).unwrap();
    t.write_at(0, &[1u8; 4096]).unwrap();
    t.flush().unwrap();
    let flushed = std::fs::read(&path).unwrap();
    // Closing rewrites the VHDX headers (its modification time), not its
    // data or DataWriteGuid: the record written at the flush still holds.
    t.close().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), flushed);
    let t = track_any(&s.image, &TrackerOptions::default());
    assert_eq!(t.problem(), None);
    assert_eq!(state_of(&t, "b"), BitmapState::Tracking);
    assert_eq!(t.dirty_extents("b").unwrap(), vec![0..65536]);
}
