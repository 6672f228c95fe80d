//! Unit tests of the VHDX image: reads and writes, the header and log
//! protocol, crash safety (by stopping the file operations at every point
//! of a workload), differencing chains and parent locators, and every
//! refusal of a damaged file, which must name the file, the structure, the
//! offset and the reason, and leave the file untouched.

use std::path::{Path, PathBuf};

use super::create::{create_image, NewImage};
use super::spec::*;
use super::*;
use crate::crashtest::{blocks_workload, crash_everywhere, flat, pattern, tmp, Op};
use crate::hostfile::sim::{Crash, Sim};
use crate::{BlockDevice, BlockError, CreateOptions, DiskImage, OpenOptions};

fn make(dir: &Path, name: &str, size: u64, block_size: u32, lss: u32) -> PathBuf {
    let path = dir.join(name);
    create_image(
        &path,
        &NewImage {
            virtual_size: size,
            block_size,
            logical_sector_size: lss,
            physical_sector_size: 4096,
            log_size: 1 << 20,
            fixed: false,
            parent: None,
        },
    )
    .unwrap();
    path
}

/// A dynamic image whose first `len` bytes hold `pattern(seed, len)`.
fn written(
    dir: &Path,
    name: &str,
    size: u64,
    lss: u32,
    len: usize,
    seed: u64,
) -> (PathBuf, Vec<u8>) {
    let path = make(dir, name, size, 1 << 20, lss);
    let data = pattern(seed, len);
    let d = rw(&path);
    d.write_at(0, &data).unwrap();
    drop(d);
    (path, data)
}

fn make_child(parent: &Path, name: &str, block_size: Option<u64>) -> PathBuf {
    let path = parent.parent().unwrap().join(name);
    create(
        &path,
        &CreateOptions {
            format: ImageFormat::Vhdx,
            subformat: Subformat::Differencing,
            size: 0,
            block_size,
            parent: Some(parent.to_owned()),
        },
    )
    .unwrap();
    path
}

fn opener(p: &Path) -> Result<Box<dyn DiskImage>> {
    crate::open(
        p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
}

fn open(path: &Path, read_only: bool) -> Result<VhdxImage> {
    VhdxImage::open(
        path,
        &OpenOptions {
            read_only,
            ..Default::default()
        },
        &mut opener,
    )
}

fn rw(path: &Path) -> VhdxImage {
    open(path, false).unwrap()
}

fn ro(path: &Path) -> VhdxImage {
    open(path, true).unwrap()
}

fn read(d: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    d.read_at(offset, &mut b).unwrap();
    b
}

fn headers_on_disk(path: &Path) -> [SpecResult<Header>; 2] {
    let bytes = std::fs::read(path).unwrap();
    HEADER_OFFSETS.map(|o| Header::parse(&bytes[o as usize..o as usize + HEADER_SIZE], o))
}

fn current_on_disk(path: &Path) -> Header {
    let [a, b] = headers_on_disk(path);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number >= b.sequence_number {
                a
            } else {
                b
            }
        }
        (Ok(a), Err(_)) => a,
        (Err(_), Ok(b)) => b,
        (Err(a), Err(b)) => panic!("{a} {b}"),
    }
}

#[test]
fn dynamic_image_reads_back_writes_across_blocks_and_reopens() {
    let dir = tmp();
    let path = make(dir.path(), "d.vhdx", 10 << 20, 1 << 20, 512);
    let disk = rw(&path);
    assert_eq!(disk.geometry().size, 10 << 20);
    assert_eq!(disk.geometry().logical_sector_size, 512);
    assert_eq!(disk.geometry().physical_sector_size, 4096);
    assert!(read(&disk, 0, 1 << 20).iter().all(|&b| b == 0));
    let data = pattern(1, 3 << 20);
    disk.write_at((1 << 20) - 512, &data).unwrap();
    assert_eq!(read(&disk, (1 << 20) - 512, 3 << 20), data);
    // Overwrite inside an allocated block.
    disk.write_at(2 << 20, &[7u8; 512]).unwrap();
    drop(disk);
    let disk = ro(&path);
    let mut want = data.clone();
    let at = (2 << 20) - ((1 << 20) - 512);
    want[at..at + 512].fill(7);
    assert_eq!(read(&disk, (1 << 20) - 512, 3 << 20), want);
    assert!(read(&disk, 5 << 20, 4096).iter().all(|&b| b == 0));
    assert_eq!(disk.check().unwrap(), vec![]);
    assert_eq!(
        disk.allocated_extents().unwrap(),
        vec![0..(4 << 20)],
        "blocks 0..4 hold data"
    );
    let info = disk.info();
    assert_eq!(info.subformat, Subformat::Dynamic);
    assert_eq!(info.block_size, Some(1 << 20));
    assert!(info.parent.is_none());
    assert!(disk.creator().starts_with("rehost"));
}

#[test]
fn fixed_image_has_every_block_and_ignores_discard() {
    let dir = tmp();
    let path = dir.path().join("f.vhdx");
    create(
        &path,
        &CreateOptions {
            format: ImageFormat::Vhdx,
            subformat: Subformat::Fixed,
            size: 5 << 20,
            block_size: Some(2 << 20),
            parent: None,
        },
    )
    .unwrap();
    let disk = rw(&path);
    assert_eq!(disk.info().subformat, Subformat::Fixed);
    assert_eq!(disk.info().block_size, None);
    assert_eq!(disk.allocated_extents().unwrap(), vec![0..(5 << 20)]);
    let len_before = std::fs::metadata(&path).unwrap().len();
    disk.write_at(3 << 20, &[9u8; 4096]).unwrap();
    disk.discard(2 << 20, 2 << 20).unwrap();
    assert_eq!(read(&disk, 3 << 20, 4096), vec![9u8; 4096]);
    drop(disk);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len_before);
    assert_eq!(ro(&path).check().unwrap(), vec![]);
}

#[test]
fn default_block_sizes_follow_qemu_img() {
    // Measured with qemu-img 7.2: 512M and 1G -> 8 MiB, 1025M and 100G ->
    // 16 MiB, 101G -> 32 MiB.
    for (size, want) in [
        (512u64 << 20, 8u32 << 20),
        (1 << 30, 8 << 20),
        (1025 << 20, 16 << 20),
        (100 << 30, 16 << 20),
        (101 << 30, 32 << 20),
        (32 << 40, 32 << 20),
        ((32 << 40) + 512, 64 << 20),
    ] {
        assert_eq!(default_block_size(size), want, "{size}");
    }
    let dir = tmp();
    let p = dir.path().join("d.vhdx");
    create(
        &p,
        &CreateOptions {
            format: ImageFormat::Vhdx,
            subformat: Subformat::Dynamic,
            size: 2 << 30,
            block_size: None,
            parent: None,
        },
    )
    .unwrap();
    assert_eq!(ro(&p).info().block_size, Some(16 << 20));
}

#[test]
fn create_refuses_existing_files_and_bad_options() {
    let dir = tmp();
    let path = make(dir.path(), "x.vhdx", 1 << 20, 1 << 20, 512);
    let before = std::fs::read(&path).unwrap();
    let opts = |size, block_size, subformat| CreateOptions {
        format: ImageFormat::Vhdx,
        subformat,
        size,
        block_size,
        parent: None,
    };
    assert!(create(&path, &opts(1 << 20, None, Subformat::Dynamic)).is_err());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "existing file overwritten"
    );
    for (size, bs) in [
        (0, None),
        (1000, None),
        (1 << 20, Some(3 << 20)),
        (1 << 20, Some(512 << 20)),
    ] {
        let p = dir.path().join(format!("bad{size}-{bs:?}.vhdx"));
        assert!(create(&p, &opts(size, bs, Subformat::Dynamic)).is_err());
        assert!(!p.exists(), "a failed create left {}", p.display());
    }
    let p = dir.path().join("d.vhdx");
    assert!(create(&p, &opts(1 << 20, None, Subformat::Differencing)).is_err());
}

#[test]
fn requests_outside_the_disk_or_misaligned_are_errors_not_panics() {
    let dir = tmp();
    let path = make(dir.path(), "r.vhdx", 4 << 20, 1 << 20, 512);
    let disk = rw(&path);
    let mut b = [0u8; 512];
    for (off, len) in [
        (4 << 20, 512usize),
        (u64::MAX - 511, 512),
        ((4 << 20) - 512, 1024),
    ] {
        assert!(matches!(
            disk.read_at(off, &mut vec![0; len]),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            disk.write_at(off, &vec![0; len]),
            Err(BlockError::OutOfRange { .. })
        ));
    }
    assert!(matches!(
        disk.read_at(1, &mut b),
        Err(BlockError::Misaligned { .. })
    ));
    assert!(matches!(
        disk.write_at(0, &b[..100]),
        Err(BlockError::Misaligned { .. })
    ));
    assert!(matches!(
        disk.discard(u64::MAX - 511, 512),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        disk.discard(512, 100),
        Err(BlockError::Misaligned { .. })
    ));
    disk.write_at(0, &[]).unwrap();
    disk.read_at(4 << 20, &mut []).unwrap();
    drop(disk);
    let r = ro(&path);
    assert!(matches!(
        r.write_at(0, &b),
        Err(BlockError::ReadOnly { .. })
    ));
    assert!(matches!(
        r.discard(0, 1 << 20),
        Err(BlockError::ReadOnly { .. })
    ));
    r.flush().unwrap();
}

#[test]
fn headers_follow_the_update_protocol() {
    let dir = tmp();
    let path = make(dir.path(), "h.vhdx", 4 << 20, 1 << 20, 512);
    let created = current_on_disk(&path);
    assert_eq!(created.sequence_number, 2);
    assert!(created.log_guid.is_zero());

    // Opening read-write and only reading changes nothing.
    let bytes = std::fs::read(&path).unwrap();
    let disk = rw(&path);
    read(&disk, 0, 4096);
    disk.flush().unwrap();
    drop(disk);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // The first write of a session changes FileWriteGuid and DataWriteGuid;
    // while metadata sits in the log the header names it.
    let disk = rw(&path);
    disk.write_at(0, &[1; 512]).unwrap();
    let during = current_on_disk(&path);
    assert_ne!(during.file_write_guid, created.file_write_guid);
    assert_ne!(during.data_write_guid, created.data_write_guid);
    assert_eq!(disk.data_write_guid(), during.data_write_guid);
    assert!(during.log_guid.is_zero(), "no log entry yet");
    disk.flush().unwrap();
    let flushed = current_on_disk(&path);
    assert!(!flushed.log_guid.is_zero(), "a log entry was written");
    let bytes = std::fs::read(&path).unwrap();
    let log = &bytes[(1 << 20)..(2 << 20)];
    let seq = log::find_active_sequence(log, &flushed.log_guid, 1 << 20).unwrap();
    assert_eq!(seq.entries().len(), 1);
    drop(disk);
    // A clean close empties the log; both headers are valid and equal but
    // for the sequence number.
    let [a, b] = headers_on_disk(&path);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.log_guid.is_zero() && b.log_guid.is_zero());
    assert_eq!(a.sequence_number.abs_diff(b.sequence_number), 1);
    assert_eq!(a.data_write_guid, b.data_write_guid);
    assert_eq!(a.file_write_guid, b.file_write_guid);
    assert_eq!(ro(&path).check().unwrap(), vec![]);
}

#[test]
fn log_entries_alternate_halves_and_never_overwrite_the_newest() {
    let dir = tmp();
    let path = make(dir.path(), "l.vhdx", 64 << 20, 1 << 20, 512);
    let disk = rw(&path);
    let mut offsets = Vec::new();
    for i in 0..5u64 {
        disk.write_at(i * (1 << 20), &[i as u8 + 1; 512]).unwrap();
        disk.flush().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let h = current_on_disk(&path);
        let seq =
            log::find_active_sequence(&bytes[(1 << 20)..(2 << 20)], &h.log_guid, 1 << 20).unwrap();
        offsets.push((seq.head().log_offset, seq.head().header.sequence_number));
    }
    assert_eq!(
        offsets.iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![0, 512 << 10, 0, 512 << 10, 0]
    );
    let seqs: Vec<u64> = offsets.iter().map(|o| o.1).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// Builds a dirty log by hand: one entry that maps block 1 of a dynamic
/// image to data already in the file, as a writer that crashed between the
/// log flush and the BAT update would leave it.
fn dirty_log_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = make(dir, "dirty.vhdx", 8 << 20, 1 << 20, 512);
    let data = pattern(9, 1 << 20);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let data_off = std::fs::metadata(&path).unwrap().len();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&data, data_off).unwrap();
    let layout_bat = 3u64 << 20;
    let mut page = vec![0u8; 4096];
    page[8..16].copy_from_slice(
        &BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, data_off)
            .0
            .to_le_bytes(),
    );
    let guid = Guid([0x5A; 16]);
    let pages = vec![(layout_bat, page)];
    let entry = build_log_entry(&LogEntryContents {
        sequence_number: 77,
        tail: 8192,
        log_guid: guid,
        flushed_file_offset: data_off + (1 << 20),
        last_file_offset: data_off + (1 << 20),
        pages: &pages,
        zeros: &[],
    });
    file.write_all_at(&entry, (1 << 20) + 8192).unwrap();
    let mut h = current_on_disk(&path);
    h.log_guid = guid;
    h.sequence_number += 1;
    file.write_all_at(&h.to_bytes(), HEADER_OFFSETS[0]).unwrap();
    (path, data)
}

#[test]
fn dirty_log_replays_in_memory_read_only_and_into_the_file_read_write() {
    let dir = tmp();
    let (path, data) = dirty_log_image(dir.path());
    let before = std::fs::read(&path).unwrap();
    let disk = ro(&path);
    assert_eq!(read(&disk, 1 << 20, 1 << 20), data);
    assert_eq!(disk.check().unwrap(), vec![]);
    drop(disk);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "read-only open wrote"
    );

    let disk = rw(&path);
    assert_eq!(read(&disk, 1 << 20, 1 << 20), data);
    drop(disk);
    let after = current_on_disk(&path);
    assert!(
        after.log_guid.is_zero(),
        "the log is empty after a read-write replay"
    );
    let bytes = std::fs::read(&path).unwrap();
    let bat1 = u64::from_le_bytes(bytes[(3 << 20) + 8..(3 << 20) + 16].try_into().unwrap());
    assert_eq!(
        BatEntry(bat1).state(),
        PAYLOAD_BLOCK_FULLY_PRESENT,
        "BAT updated in place"
    );
    assert_eq!(read(&ro(&path), 1 << 20, 1 << 20), data);
}

#[test]
fn a_log_claiming_a_longer_file_than_exists_is_refused() {
    let dir = tmp();
    let (path, _) = dirty_log_image(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - (1 << 20)).unwrap();
    drop(f);
    let before = std::fs::read(&path).unwrap();
    for read_only in [true, false] {
        match open(&path, read_only) {
            Err(BlockError::Corrupt {
                path: p,
                structure,
                offset,
                reason,
            }) => {
                assert_eq!(p, path);
                assert_eq!(structure, "log entry");
                assert_eq!(offset, (1 << 20) + 8192);
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}

#[test]
fn a_header_naming_a_log_without_entries_is_reported_but_opens() {
    let dir = tmp();
    let path = make(dir.path(), "e.vhdx", 4 << 20, 1 << 20, 512);
    let mut h = current_on_disk(&path);
    h.log_guid = Guid([3; 16]);
    h.sequence_number += 1;
    patch(&path, HEADER_OFFSETS[0], &h.to_bytes());
    let disk = ro(&path);
    let problems = disk.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].structure, "log");
    assert_eq!(problems[0].offset, 1 << 20);
    assert!(problems[0].reason.contains("no valid entry"));
    drop(disk);
    // A read-write open marks the log empty.
    drop(rw(&path));
    assert!(current_on_disk(&path).log_guid.is_zero());
    assert_eq!(ro(&path).check().unwrap(), vec![]);
}

// ---- damaged files -------------------------------------------------------

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn patch_region_tables(path: &Path, change: impl Fn(&mut RegionTable)) {
    let bytes = std::fs::read(path).unwrap();
    for off in REGION_TABLE_OFFSETS {
        let mut t = RegionTable::parse(&bytes[off as usize..off as usize + REGION_TABLE_SIZE], off)
            .unwrap();
        change(&mut t);
        patch(path, off, &t.to_bytes());
    }
}

fn metadata_table(path: &Path) -> MetadataTable {
    let bytes = std::fs::read(path).unwrap();
    MetadataTable::parse(
        &bytes[(2 << 20)..(2 << 20) + METADATA_TABLE_SIZE],
        2 << 20,
        1 << 20,
    )
    .unwrap()
}

fn item_offset(path: &Path, id: &Guid) -> u64 {
    (2 << 20) + u64::from(metadata_table(path).find(id).unwrap().offset)
}

fn set_bat(path: &Path, index: u64, e: BatEntry) -> u64 {
    let at = (3 << 20) + index * 8;
    patch(path, at, &e.0.to_le_bytes());
    at
}

/// Opens the damaged file read-only and read-write, expects a corruption
/// error naming the file, `structure` and `offset` with `reason` in it, and
/// checks that the file was not changed.
fn expect_corrupt(path: &Path, structure: &str, offset: u64, reason: &str) {
    let before = std::fs::read(path).unwrap();
    for read_only in [true, false] {
        match open(path, read_only) {
            Err(e @ BlockError::Corrupt { .. }) => {
                let BlockError::Corrupt {
                    path: p,
                    structure: s,
                    offset: o,
                    reason: r,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(p, path);
                assert_eq!(*s, structure, "{e}");
                assert_eq!(*o, offset, "{e}");
                assert!(r.contains(reason), "wanted {reason:?} in: {e}");
                let text = e.to_string();
                assert!(text.contains(&path.display().to_string()), "{text}");
            }
            Err(e) => panic!("wanted a corruption error, got {e}"),
            Ok(_) => panic!("opened a damaged file ({structure}: {reason})"),
        }
        assert!(
            std::fs::read(path).unwrap() == before,
            "the damaged file was modified"
        );
    }
}

fn expect_unsupported(path: &Path, reason: &str) {
    let before = std::fs::read(path).unwrap();
    for read_only in [true, false] {
        match open(path, read_only) {
            Err(e @ BlockError::Unsupported { .. }) => {
                let text = e.to_string();
                assert!(text.contains(reason), "wanted {reason:?} in: {text}");
                assert!(text.contains(&path.display().to_string()), "{text}");
            }
            Err(e) => panic!("wanted unsupported, got {e}"),
            Ok(_) => panic!("opened ({reason})"),
        }
        assert!(std::fs::read(path).unwrap() == before);
    }
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = make(dir, name, 64 << 20, 1 << 20, 512);
    // Allocate a couple of blocks so the BAT has entries to damage.
    let d = rw(&p);
    d.write_at(0, &[1; 4096]).unwrap();
    d.write_at(5 << 20, &[2; 4096]).unwrap();
    drop(d);
    p
}

#[test]
fn truncated_files_are_refused_naming_the_missing_structure() {
    let dir = tmp();
    let full = fresh(dir.path(), "full.vhdx");
    let bytes = std::fs::read(&full).unwrap();
    for (cut, structure, offset, reason) in [
        (0usize, "file type identifier", 0u64, "only 0 bytes"),
        (4, "file type identifier", 0, "only 4 bytes"),
        (66 << 10, "headers", 65536, "truncated"),
        (100 << 10, "log", 1 << 20, "end of the"),
        ((1 << 20) + 4096, "log", 1 << 20, "end of the"),
        ((3 << 20) + 100, "BAT", 3 << 20, "truncated"),
        ((3 << 20) + 4096, "BAT entry", 3 << 20, "past the end"),
        (
            bytes.len() - (1 << 20),
            "BAT entry",
            (3 << 20) + 5 * 8,
            "past the end",
        ),
    ] {
        let p = dir.path().join(format!("cut{cut}.vhdx"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        expect_corrupt(&p, structure, offset, reason);
    }
}

#[test]
fn bad_signatures_and_checksums_are_refused() {
    let dir = tmp();
    let p = fresh(dir.path(), "sig.vhdx");
    patch(&p, 0, b"vhdxfilf");
    expect_corrupt(&p, "file type identifier", 0, "signature");

    // One bad header: the other is used and check reports the damage.
    let p = fresh(dir.path(), "h1.vhdx");
    patch(&p, HEADER_OFFSETS[0] + 200, &[0xFF]);
    let disk = ro(&p);
    let problems = disk.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].structure, "header 1");
    assert_eq!(problems[0].offset, HEADER_OFFSETS[0]);
    assert!(problems[0].reason.contains("CRC-32C mismatch"));
    drop(disk);
    // Both bad: refused.
    patch(&p, HEADER_OFFSETS[1] + 200, &[0xFF]);
    expect_corrupt(&p, "headers", HEADER_OFFSETS[0], "no valid header");

    let p = fresh(dir.path(), "h2.vhdx");
    patch(&p, HEADER_OFFSETS[0], b"HEAD");
    patch(&p, HEADER_OFFSETS[1], b"HEAD");
    expect_corrupt(&p, "headers", HEADER_OFFSETS[0], "signature");

    // Two valid headers with equal sequence numbers that differ.
    let p = fresh(dir.path(), "h3.vhdx");
    let mut h = current_on_disk(&p);
    patch(&p, HEADER_OFFSETS[0], &h.to_bytes());
    h.data_write_guid = Guid([1; 16]);
    patch(&p, HEADER_OFFSETS[1], &h.to_bytes());
    expect_corrupt(&p, "headers", HEADER_OFFSETS[0], "neither is current");

    // Region tables: one bad copy is reported, both bad is refused.
    let p = fresh(dir.path(), "rt.vhdx");
    patch(&p, REGION_TABLE_OFFSETS[1] + 1000, &[1]);
    let problems = ro(&p).check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].structure, "region table 2");
    patch(&p, REGION_TABLE_OFFSETS[0] + 1000, &[1]);
    expect_corrupt(
        &p,
        "region table",
        REGION_TABLE_OFFSETS[0],
        "CRC-32C mismatch",
    );

    // Metadata table signature.
    let p = fresh(dir.path(), "md.vhdx");
    patch(&p, 2 << 20, b"METADATA");
    expect_corrupt(&p, "metadata table", 2 << 20, "signature");
}

#[test]
fn overlapping_and_misplaced_regions_are_refused() {
    let dir = tmp();
    let p = fresh(dir.path(), "ov.vhdx");
    patch_region_tables(&p, |t| {
        for e in &mut t.entries {
            if e.guid == METADATA_REGION_GUID {
                e.file_offset = 3 << 20; // onto the BAT
            }
        }
    });
    expect_corrupt(&p, "region table", REGION_TABLE_OFFSETS[0], "overlaps");

    let p = fresh(dir.path(), "ovlog.vhdx");
    patch_region_tables(&p, |t| {
        for e in &mut t.entries {
            if e.guid == METADATA_REGION_GUID {
                e.file_offset = 1 << 20; // onto the log
            }
        }
    });
    expect_corrupt(
        &p,
        "region table",
        REGION_TABLE_OFFSETS[0],
        "overlaps the log",
    );

    let p = fresh(dir.path(), "nobat.vhdx");
    patch_region_tables(&p, |t| t.entries.retain(|e| e.guid != BAT_REGION_GUID));
    expect_corrupt(
        &p,
        "region table",
        REGION_TABLE_OFFSETS[0],
        "BAT region is missing",
    );

    let p = fresh(dir.path(), "unknown.vhdx");
    patch_region_tables(&p, |t| {
        t.entries.push(RegionTableEntry {
            guid: Guid([0xAB; 16]),
            file_offset: 10 << 20,
            length: 1 << 20,
            required: true,
        })
    });
    expect_unsupported(&p, "marked required but is not known");
    // Not required: ignored (and kept).
    let p = fresh(dir.path(), "optional.vhdx");
    patch_region_tables(&p, |t| {
        t.entries.push(RegionTableEntry {
            guid: Guid([0xAB; 16]),
            file_offset: 100 << 20,
            length: 1 << 20,
            required: false,
        })
    });
    ro(&p);

    let p = fresh(dir.path(), "logoff.vhdx");
    let mut h = current_on_disk(&p);
    h.log_offset = 512 << 10;
    h.sequence_number += 5;
    patch(&p, HEADER_OFFSETS[0], &h.to_bytes());
    expect_corrupt(&p, "header 1", HEADER_OFFSETS[0], "log offset");
}

#[test]
fn bad_bat_entries_are_refused() {
    let dir = tmp();
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();

    let p = fresh(dir.path(), "eof.vhdx");
    let at = set_bat(&p, 7, BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, len(&p)));
    expect_corrupt(&p, "BAT entry", at, "past the end of the");

    let p = fresh(dir.path(), "hdr.vhdx");
    let at = set_bat(&p, 7, BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, 0));
    expect_corrupt(&p, "BAT entry", at, "inside the 1 MiB header section");

    let p = fresh(dir.path(), "meta.vhdx");
    let at = set_bat(&p, 7, BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, 2 << 20));
    expect_corrupt(&p, "BAT entry", at, "overlaps the metadata region");

    let p = fresh(dir.path(), "log.vhdx");
    let at = set_bat(&p, 7, BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, 1 << 20));
    expect_corrupt(&p, "BAT entry", at, "overlaps the log");

    let p = fresh(dir.path(), "dup.vhdx");
    let bytes = std::fs::read(&p).unwrap();
    let block0 = BatEntry(u64::from_le_bytes(
        bytes[3 << 20..(3 << 20) + 8].try_into().unwrap(),
    ));
    let at = set_bat(
        &p,
        7,
        BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, block0.file_offset()),
    );
    expect_corrupt(&p, "BAT entry", at, "overlaps BAT entry");

    let p = fresh(dir.path(), "state.vhdx");
    let at = set_bat(&p, 7, BatEntry(4));
    expect_corrupt(&p, "BAT entry", at, "reserved");

    let p = fresh(dir.path(), "partial.vhdx");
    let at = set_bat(
        &p,
        0,
        BatEntry::new(PAYLOAD_BLOCK_PARTIALLY_PRESENT, block0.file_offset()),
    );
    expect_corrupt(&p, "BAT entry", at, "only valid in a differencing image");

    // Reserved bits: reported by check, not fatal.
    let p = fresh(dir.path(), "bits.vhdx");
    let at = set_bat(&p, 9, BatEntry(1 << 5));
    let problems = ro(&p).check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].structure.as_str(), problems[0].offset),
        ("BAT entry", at)
    );
}

#[test]
fn allocated_entries_past_the_end_of_the_disk_are_reported() {
    let dir = tmp();
    let base = make(dir.path(), "base.vhdx", 4 << 20, 1 << 20, 512);
    let child = make_child(&base, "child.vhdx", Some(1 << 20));
    // 4 blocks, but a differencing BAT covers a whole chunk of 4096.
    let at = set_bat(
        &child,
        10,
        BatEntry::new(PAYLOAD_BLOCK_FULLY_PRESENT, 64 << 20),
    );
    let problems = ro(&child).check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].structure.as_str(), problems[0].offset),
        ("BAT entry", at)
    );
    assert!(problems[0]
        .reason
        .contains("past the end of the virtual disk"));
}

#[test]
fn bad_metadata_is_refused() {
    let dir = tmp();
    for (guid, value, structure, reason) in [
        (
            LOGICAL_SECTOR_SIZE_GUID,
            1024u32,
            "logical sector size",
            "sector size 1024 is not supported",
        ),
        (
            LOGICAL_SECTOR_SIZE_GUID,
            0,
            "logical sector size",
            "sector size 0 is not supported",
        ),
        (
            PHYSICAL_SECTOR_SIZE_GUID,
            520,
            "physical sector size",
            "sector size 520 is not supported",
        ),
        (
            FILE_PARAMETERS_GUID,
            3 << 20,
            "file parameters",
            "block size",
        ),
    ] {
        let p = fresh(dir.path(), &format!("m{value}.vhdx"));
        let at = item_offset(&p, &guid);
        patch(&p, at, &value.to_le_bytes());
        expect_corrupt(&p, structure, at, reason);
    }
    let p = fresh(dir.path(), "size.vhdx");
    let at = item_offset(&p, &VIRTUAL_DISK_SIZE_GUID);
    patch(&p, at, &1000u64.to_le_bytes());
    expect_corrupt(&p, "virtual disk size", at, "not a multiple");

    // The BAT region is too small for the disk.
    let p = fresh(dir.path(), "big.vhdx");
    let at = item_offset(&p, &VIRTUAL_DISK_SIZE_GUID);
    patch(&p, at, &(1u64 << 40).to_le_bytes());
    expect_corrupt(&p, "BAT", 3 << 20, "the disk needs");

    // An unknown required item; then the same item not required is fine.
    let p = fresh(dir.path(), "unknown.vhdx");
    let mut t = metadata_table(&p);
    t.entries.push(MetadataEntry {
        item_id: Guid([0xCD; 16]),
        offset: 0,
        length: 0,
        is_user: false,
        is_virtual_disk: false,
        is_required: true,
        reserved_nonzero: false,
    });
    patch(&p, 2 << 20, &t.to_bytes());
    expect_unsupported(&p, "marked required but is not known");
    t.entries.last_mut().unwrap().is_required = false;
    patch(&p, 2 << 20, &t.to_bytes());
    assert_eq!(ro(&p).check().unwrap(), vec![]);

    // A missing required item.
    let p = fresh(dir.path(), "missing.vhdx");
    let mut t = metadata_table(&p);
    t.entries.retain(|e| e.item_id != VIRTUAL_DISK_ID_GUID);
    patch(&p, 2 << 20, &t.to_bytes());
    expect_corrupt(&p, "metadata table", 2 << 20, "page 83 data");

    // HasParent without a parent locator.
    let p = fresh(dir.path(), "orphan.vhdx");
    let at = item_offset(&p, &FILE_PARAMETERS_GUID);
    patch(&p, at + 4, &2u32.to_le_bytes());
    expect_corrupt(&p, "file parameters", at, "no parent locator");
}

#[test]
fn a_file_without_a_log_opens_read_only_only() {
    let dir = tmp();
    let p = fresh(dir.path(), "nolog.vhdx");
    let mut h = current_on_disk(&p);
    h.log_length = 0;
    h.sequence_number += 1;
    patch(&p, HEADER_OFFSETS[0], &h.to_bytes());
    assert_eq!(read(&ro(&p), 0, 4096), vec![1; 4096]);
    let before = std::fs::read(&p).unwrap();
    assert!(matches!(
        open(&p, false),
        Err(BlockError::Unsupported { .. })
    ));
    assert!(std::fs::read(&p).unwrap() == before);
}

// ---- crash safety --------------------------------------------------------

#[test]
fn crash_at_every_file_operation_of_dynamic_writes() {
    let workload = blocks_workload(Op::Discard(3 << 20, 1 << 20));
    let states = crash_everywhere(|d| make(d, "c.vhdx", 8 << 20, 1 << 20, 512), &workload);
    println!("{states} crash states");
}

#[test]
fn crash_at_every_file_operation_of_differencing_writes() {
    let workload = vec![
        Op::Write(512, pattern(1, 1024)),
        Op::Write(2 << 20, pattern(2, 2 << 20)),
        Op::Flush,
        Op::Write((1 << 20) + 4096, pattern(3, 512)),
        Op::Write(1024, pattern(4, 512)),
        Op::Flush,
        Op::Discard(2 << 20, 1 << 20),
        Op::Write(5 << 20, pattern(5, 4096)),
        Op::Flush,
        Op::Write(7 << 20, pattern(6, 4096)),
    ];
    // Built once, copied for every crash (the child finds its parent by
    // relative path and identifies it by its DataWriteGuid).
    let template = tmp();
    let parent = make(template.path(), "p.vhdx", 8 << 20, 1 << 20, 512);
    let p = rw(&parent);
    p.write_at(0, &pattern(99, 8 << 20)).unwrap();
    drop(p);
    make_child(&parent, "c.vhdx", Some(1 << 20));
    let states = crash_everywhere(
        |d| {
            for name in ["p.vhdx", "c.vhdx"] {
                std::fs::copy(template.path().join(name), d.join(name)).unwrap();
            }
            d.join("c.vhdx")
        },
        &workload,
    );
    println!("{states} crash states");
}

#[test]
fn many_dirty_pages_are_split_over_log_entries_and_survive() {
    // 4 KiB logical sectors and 1 MiB blocks: each block's bitmap bits live
    // in their own... no: 2^23 sectors per bitmap block, 256 sectors per
    // block; write one sector per block across 300 MiB so that hundreds of
    // BAT and bitmap pages get dirty before the flush.
    let dir = tmp();
    let parent = make(dir.path(), "p.vhdx", 2 << 30, 1 << 20, 512);
    let child = make_child(&parent, "c.vhdx", Some(1 << 20));
    let disk = rw(&child);
    let stride = 7u64 << 20; // one write every 7 MiB: new block, new pages
    let mut at = 0;
    let mut n = 0u8;
    while at + 512 <= 2 << 30 {
        disk.write_at(at + 512 * u64::from(n % 7), &[n; 512])
            .unwrap();
        at += stride;
        n = n.wrapping_add(1);
    }
    disk.flush().unwrap();
    drop(disk);
    let disk = ro(&child);
    assert_eq!(disk.check().unwrap(), vec![]);
    let mut at = 0;
    let mut n = 0u8;
    while at + 512 <= 2 << 30 {
        assert_eq!(
            read(&disk, at + 512 * u64::from(n % 7), 512),
            vec![n; 512],
            "at {at}"
        );
        at += stride;
        n = n.wrapping_add(1);
    }
}

// ---- differencing --------------------------------------------------------

#[test]
fn differencing_chain_reads_through_and_never_touches_parents() {
    let dir = tmp();
    let base = make(dir.path(), "base.vhdx", 16 << 20, 2 << 20, 512);
    let b = rw(&base);
    let base_data = pattern(7, 16 << 20);
    b.write_at(0, &base_data).unwrap();
    drop(b);
    let base_bytes = std::fs::read(&base).unwrap();
    let child = make_child(&base, "child.vhdx", None);
    let c = rw(&child);
    assert_eq!(c.info().subformat, Subformat::Differencing);
    assert_eq!(c.info().block_size, Some(2 << 20));
    assert_eq!(c.geometry().size, 16 << 20);
    assert_eq!(flat(&c), base_data);
    let mut want = base_data.clone();
    let w1 = pattern(8, 1536);
    c.write_at(512, &w1).unwrap();
    want[512..2048].copy_from_slice(&w1);
    let w2 = pattern(9, 2 << 20);
    c.write_at(4 << 20, &w2).unwrap(); // a whole block
    want[4 << 20..6 << 20].copy_from_slice(&w2);
    c.discard(8 << 20, 2 << 20).unwrap(); // hides the parent: zeros
    want[8 << 20..10 << 20].fill(0);
    assert_eq!(flat(&c), want);
    drop(c);
    let grand = make_child(&child, "grand.vhdx", Some(1 << 20));
    let g = rw(&grand);
    let w3 = pattern(10, 4096);
    g.write_at((2 << 20) - 2048, &w3).unwrap();
    want[(2 << 20) - 2048..(2 << 20) + 2048].copy_from_slice(&w3);
    assert_eq!(flat(&g), want);
    let info = g.info();
    assert_eq!(info.parent.as_ref().unwrap().path, child);
    assert_eq!(
        info.parent.as_ref().unwrap().parent.as_ref().unwrap().path,
        base
    );
    assert_eq!(g.check().unwrap(), vec![]);
    assert_eq!(
        g.allocated_extents().unwrap(),
        vec![(2 << 20) - 2048..(2 << 20) + 2048]
    );
    drop(g);
    let c = ro(&child);
    assert_eq!(
        c.allocated_extents().unwrap(),
        vec![512..2048, (4 << 20)..(6 << 20), (8 << 20)..(10 << 20)]
    );
    drop(c);
    assert_eq!(flat(&ro(&grand)), want);
    assert!(
        std::fs::read(&base).unwrap() == base_bytes,
        "the base changed"
    );
}

#[test]
fn differencing_with_4k_logical_sectors_fills_partial_sectors_from_the_parent() {
    let dir = tmp();
    let (base, base_data) = written(dir.path(), "b4k.vhdx", 8 << 20, 4096, 8 << 20, 3);
    let child = make_child(&base, "c4k.vhdx", Some(1 << 20));
    let c = rw(&child);
    assert_eq!(c.geometry().logical_sector_size, 4096);
    let mut want = base_data.clone();
    c.write_at(4096 + 1024, &[0xAA; 512]).unwrap();
    want[4096 + 1024..4096 + 1536].fill(0xAA);
    c.write_at((1 << 20) - 512, &[0xBB; 1024]).unwrap();
    want[(1 << 20) - 512..(1 << 20) + 512].fill(0xBB);
    assert_eq!(flat(&c), want);
    drop(c);
    let c = ro(&child);
    assert_eq!(flat(&c), want);
    assert_eq!(
        c.allocated_extents().unwrap(),
        vec![4096..8192, (1 << 20) - 4096..(1 << 20) + 4096]
    );
}

#[test]
fn a_missing_parent_names_every_path_tried() {
    let dir = tmp();
    let sub = dir.path().join("vms");
    std::fs::create_dir(&sub).unwrap();
    let base = make(&sub, "base.vhdx", 4 << 20, 1 << 20, 512);
    let child = make_child(&base, "child.vhdx", None);
    // Move the child away from its parent: relative and absolute paths
    // still find it.
    let moved = dir.path().join("child.vhdx");
    std::fs::rename(&child, &moved).unwrap();
    drop(ro(&moved));
    // Remove the parent: the error lists the relative path, the absolute
    // path and the last-resort file name.
    std::fs::rename(&base, dir.path().join("elsewhere.vhdx")).unwrap();
    let before = std::fs::read(&moved).unwrap();
    let err = open(&moved, false).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("parent not found"), "{text}");
    assert!(text.contains("relative_path \".\\base.vhdx\""), "{text}");
    assert!(
        text.contains(&format!("{}", sub.join("base.vhdx").display())),
        "{text}"
    );
    assert!(text.contains("absolute_win32_path"), "{text}");
    assert!(
        text.contains(&dir.path().join("base.vhdx").display().to_string()),
        "{text}"
    );
    assert!(std::fs::read(&moved).unwrap() == before);
    // The last resort: a parent with the same name next to the child.
    std::fs::rename(
        dir.path().join("elsewhere.vhdx"),
        dir.path().join("base.vhdx"),
    )
    .unwrap();
    drop(ro(&moved));
}

fn locator_of(path: &Path) -> ParentLocator {
    let bytes = std::fs::read(path).unwrap();
    let e = metadata_table(path)
        .find(&PARENT_LOCATOR_GUID)
        .unwrap()
        .clone();
    let at = (2 << 20) + e.offset as usize;
    ParentLocator::parse(&bytes[at..at + e.length as usize], at as u64).unwrap()
}

#[test]
fn stale_parent_paths_are_updated_on_a_read_write_open() {
    let dir = tmp();
    let vms = dir.path().join("vms");
    std::fs::create_dir(&vms).unwrap();
    let base = make(&vms, "base.vhdx", 4 << 20, 1 << 20, 512);
    let child = make_child(&base, "child.vhdx", None);
    let original = locator_of(&child);
    assert_eq!(original.get("relative_path"), Some(".\\base.vhdx"));
    let linkage = original.get("parent_linkage").unwrap().to_string();
    // Move the child up: relative_path is now stale, absolute_win32_path
    // still leads to the parent.
    let moved = dir.path().join("child.vhdx");
    std::fs::rename(&child, &moved).unwrap();
    let before = std::fs::read(&moved).unwrap();
    drop(ro(&moved));
    assert!(
        std::fs::read(&moved).unwrap() == before,
        "a read-only open updated paths"
    );
    let d = rw(&moved);
    d.write_at(0, &[4; 512]).unwrap();
    drop(d);
    let updated = locator_of(&moved);
    assert_eq!(updated.get("relative_path"), Some(".\\vms\\base.vhdx"));
    assert_eq!(
        updated.get("absolute_win32_path"),
        original.get("absolute_win32_path")
    );
    assert_eq!(updated.get("parent_linkage"), Some(linkage.as_str()));
    assert_eq!(ro(&moved).check().unwrap(), vec![]);
    // Now move the pair together: the refreshed relative path finds it.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::create_dir(elsewhere.join("vms")).unwrap();
    std::fs::rename(&base, elsewhere.join("vms/base.vhdx")).unwrap();
    std::fs::rename(&moved, elsewhere.join("child.vhdx")).unwrap();
    let c = ro(&elsewhere.join("child.vhdx"));
    assert_eq!(read(&c, 0, 512), vec![4; 512]);
    // A longer value than fits in place moves the item within the region.
    drop(c);
    let deep = elsewhere.join("a/very/long/directory/name/for/the/child/to/live/in");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::rename(elsewhere.join("child.vhdx"), deep.join("child.vhdx")).unwrap();
    let grown_parent = elsewhere.join("vms/base.vhdx");
    let mut l = locator_of(&deep.join("child.vhdx"));
    // The relative path no longer leads anywhere; point the absolute one
    // at the parent so it is found.
    for (k, v) in &mut l.entries {
        if k == "absolute_win32_path" {
            *v = parent::absolute_path_value(&std::fs::canonicalize(&grown_parent).unwrap());
        }
    }
    let e = metadata_table(&deep.join("child.vhdx"))
        .find(&PARENT_LOCATOR_GUID)
        .unwrap()
        .clone();
    let mut bytes = l.to_bytes();
    assert!(bytes.len() <= e.length as usize + 200);
    bytes.resize(bytes.len().max(e.length as usize), 0);
    let mut t = metadata_table(&deep.join("child.vhdx"));
    for x in &mut t.entries {
        if x.item_id == PARENT_LOCATOR_GUID {
            x.length = bytes.len() as u32;
        }
    }
    patch(&deep.join("child.vhdx"), 2 << 20, &t.to_bytes());
    patch(
        &deep.join("child.vhdx"),
        (2 << 20) + u64::from(e.offset),
        &bytes,
    );
    drop(rw(&deep.join("child.vhdx")));
    let moved_item = metadata_table(&deep.join("child.vhdx"))
        .find(&PARENT_LOCATOR_GUID)
        .unwrap()
        .clone();
    assert!(
        moved_item.offset > e.offset,
        "the grown locator was moved past the others"
    );
    let l = locator_of(&deep.join("child.vhdx"));
    assert_eq!(
        l.get("relative_path"),
        Some(format!("{}vms\\base.vhdx", "..\\".repeat(11)).as_str())
    );
    let c = ro(&deep.join("child.vhdx"));
    assert_eq!(c.check().unwrap(), vec![]);
    assert_eq!(read(&c, 0, 512), vec![4; 512]);
}

/// Rewrites the child's parent locator item in place (it is the last item,
/// so it may grow).
fn rewrite_locator(child: &Path, change: impl Fn(&mut ParentLocator)) {
    let e = metadata_table(child)
        .find(&PARENT_LOCATOR_GUID)
        .unwrap()
        .clone();
    let mut l = locator_of(child);
    change(&mut l);
    let mut bytes = l.to_bytes();
    let len = bytes.len().max(e.length as usize);
    bytes.resize(len, 0);
    let mut t = metadata_table(child);
    for x in &mut t.entries {
        if x.item_id == PARENT_LOCATOR_GUID {
            x.length = len as u32;
        }
    }
    patch(child, 2 << 20, &t.to_bytes());
    patch(child, (2 << 20) + u64::from(e.offset), &bytes);
}

#[test]
fn parent_linkage2_is_accepted_and_unknown_locator_types_refused() {
    let dir = tmp();
    let base = make(dir.path(), "base.vhdx", 4 << 20, 1 << 20, 512);
    let child = make_child(&base, "child.vhdx", None);
    let real = locator_of(&child)
        .get("parent_linkage")
        .unwrap()
        .to_string();
    // parent_linkage names something else, parent_linkage2 the parent: ok
    // (section 2.6.2.6.3, note <12>: the state during a merge).
    rewrite_locator(&child, |l| {
        for (k, v) in &mut l.entries {
            if k == "parent_linkage" {
                *v = Guid([1; 16]).to_braced();
            }
        }
        l.entries.push(("parent_linkage2".into(), real.clone()));
    });
    drop(ro(&child));
    // Neither matches: refused as a changed parent.
    rewrite_locator(&child, |l| {
        for (k, v) in &mut l.entries {
            if k == "parent_linkage2" {
                *v = Guid([2; 16]).to_braced();
            }
        }
    });
    assert!(open(&child, true)
        .unwrap_err()
        .to_string()
        .contains("parent has changed"));
    // Not a GUID.
    rewrite_locator(&child, |l| {
        for (k, v) in &mut l.entries {
            if k == "parent_linkage" {
                *v = "{not-a-guid}".into();
            }
        }
    });
    let at = item_offset(&child, &PARENT_LOCATOR_GUID);
    expect_corrupt(&child, "parent locator", at, "is not a GUID");
    // Another locator type.
    rewrite_locator(&child, |l| {
        l.locator_type = Guid([9; 16]);
        for (k, v) in &mut l.entries {
            if k == "parent_linkage" {
                *v = real.clone();
            }
        }
    });
    expect_unsupported(&child, "is not the VHDX type");
    // No path at all.
    rewrite_locator(&child, |l| {
        l.locator_type = VHDX_PARENT_LOCATOR_TYPE;
        l.entries.retain(|(k, _)| k.starts_with("parent_linkage"));
    });
    expect_corrupt(&child, "parent locator", at, "none of relative_path");
}

#[test]
fn children_need_a_vhdx_parent() {
    let dir = tmp();
    let raw = dir.path().join("base.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let child = dir.path().join("child.vhdx");
    let err = create(
        &child,
        &CreateOptions {
            format: ImageFormat::Vhdx,
            subformat: Subformat::Differencing,
            size: 0,
            block_size: None,
            parent: Some(raw),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("needs a VHDX parent"), "{err}");
    assert!(!child.exists());
}

#[test]
fn a_changed_parent_is_refused() {
    let dir = tmp();
    let base = make(dir.path(), "base.vhdx", 4 << 20, 1 << 20, 512);
    let child = make_child(&base, "child.vhdx", None);
    drop(ro(&child));
    // Writing to the parent changes its DataWriteGuid.
    let b = rw(&base);
    b.write_at(0, &[1; 512]).unwrap();
    drop(b);
    let before = std::fs::read(&child).unwrap();
    let text = open(&child, true).unwrap_err().to_string();
    assert!(text.contains("parent has changed"), "{text}");
    assert!(text.contains("DataWriteGuid"), "{text}");
    assert!(std::fs::read(&child).unwrap() == before);
}

#[test]
fn parent_loops_are_refused() {
    // b is a child of a; then a is turned into a child of b (its file
    // parameters, parent locator and linkage say so), closing the loop
    // a -> b -> a with every linkage matching.
    let dir = tmp();
    let a = make(dir.path(), "a.vhdx", 4 << 20, 1 << 20, 512);
    let b = make_child(&a, "b.vhdx", Some(1 << 20));
    let b_guid = current_on_disk(&b).data_write_guid;
    let locator = ParentLocator {
        locator_type: VHDX_PARENT_LOCATOR_TYPE,
        entries: vec![
            ("parent_linkage".into(), b_guid.to_braced()),
            ("relative_path".into(), ".\\b.vhdx".into()),
        ],
    }
    .to_bytes();
    let mut t = metadata_table(&a);
    let end = t.entries.iter().map(|e| e.offset + e.length).max().unwrap();
    t.entries.push(MetadataEntry {
        item_id: PARENT_LOCATOR_GUID,
        offset: end,
        length: locator.len() as u32,
        is_user: false,
        is_virtual_disk: false,
        is_required: true,
        reserved_nonzero: false,
    });
    patch(&a, 2 << 20, &t.to_bytes());
    patch(&a, (2 << 20) + u64::from(end), &locator);
    let fp = item_offset(&a, &FILE_PARAMETERS_GUID);
    patch(&a, fp + 4, &2u32.to_le_bytes());
    let err = crate::open(
        &b,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("loops back"), "{text}");
    let err = crate::open(
        &a,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("loops back"), "{err}");
}

// ---- freed space, commit ---------------------------------------------------

fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn discarded_blocks_become_holes_and_new_blocks_reuse_them() {
    const MIB: usize = 1 << 20;
    let dir = tmp();
    let path = make(dir.path(), "h.vhdx", 16 << 20, 1 << 20, 512);
    let mut want = vec![0u8; 16 * MIB];
    let data = pattern(1, 8 * MIB);
    let d = rw(&path);
    d.write_at(0, &data).unwrap();
    want[..8 * MIB].copy_from_slice(&data);
    drop(d);
    let (len, used) = (file_len(&path), disk_usage(&path));

    // Whole blocks 2..6 go; the partly covered blocks 1 and 6 stay.
    let d = rw(&path);
    d.discard((1 << 20) + 4096, (5 << 20) + 4096).unwrap();
    d.flush().unwrap();
    want[2 * MIB..6 * MIB].fill(0);
    let freed = used - disk_usage(&path);
    assert!(freed >= 4 << 20, "only {freed} bytes were freed");
    assert_eq!(flat(&d), want);
    // A new block in the same session takes a freed slot; where it is not
    // written it reads as zeros.
    let w = pattern(2, 4096);
    d.write_at((10 << 20) + 8192, &w).unwrap();
    want[10 * MIB + 8192..10 * MIB + 12288].copy_from_slice(&w);
    d.flush().unwrap();
    assert_eq!(flat(&d), want);
    drop(d);
    assert_eq!(file_len(&path), len, "the file grew instead of reusing");
    assert_eq!(ro(&path).check().unwrap(), vec![]);
    assert_eq!(flat(&ro(&path)), want);

    // The next session finds the three other freed slots on its own.
    let d = rw(&path);
    let w = pattern(3, 3 * MIB - 1024);
    d.write_at((12 << 20) + 512, &w).unwrap();
    want[12 * MIB + 512..15 * MIB - 512].copy_from_slice(&w);
    drop(d);
    assert_eq!(file_len(&path), len, "the file grew instead of reusing");
    let d = ro(&path);
    assert_eq!(d.check().unwrap(), vec![]);
    assert_eq!(flat(&d), want);
    drop(d);
    // Now every slot is taken: the next block goes at the end.
    let d = rw(&path);
    d.write_at(15 << 20, &[5u8; 512]).unwrap();
    want[15 * MIB..15 * MIB + 512].fill(5);
    drop(d);
    assert_eq!(file_len(&path), len + (1 << 20));
    assert_eq!(flat(&ro(&path)), want);
}

#[test]
fn space_a_crash_left_unreferenced_is_reused_and_reads_as_zeros() {
    let dir = tmp();
    let path = make(dir.path(), "u.vhdx", 8 << 20, 1 << 20, 512);
    let d = rw(&path);
    d.write_at(0, &[1u8; 4096]).unwrap();
    d.flush().unwrap();
    // Two new blocks whose BAT entries never reach the file.
    d.write_at(2 << 20, &pattern(1, 2 << 20)).unwrap();
    d.abandon();
    let len = file_len(&path);
    let d = rw(&path);
    assert!(read(&d, 2 << 20, 2 << 20).iter().all(|&b| b == 0));
    d.write_at((6 << 20) + 4096, &[2u8; 512]).unwrap();
    d.write_at(7 << 20, &[3u8; 512]).unwrap();
    let mut want = vec![0u8; 8 << 20];
    want[..4096].fill(1);
    want[(6 << 20) + 4096..(6 << 20) + 4608].fill(2);
    want[7 << 20..(7 << 20) + 512].fill(3);
    assert!(flat(&d) == want, "a reused slot shows its old data");
    drop(d);
    assert_eq!(file_len(&path), len, "the file grew instead of reusing");
    let d = ro(&path);
    assert_eq!(d.check().unwrap(), vec![]);
    assert!(flat(&d) == want, "a reused slot shows its old data");
}

#[test]
fn a_new_partial_block_ignores_bitmap_bits_left_by_its_earlier_life() {
    let dir = tmp();
    let (parent, base) = written(dir.path(), "p.vhdx", 4 << 20, 512, 4 << 20, 4);
    let child = make_child(&parent, "c.vhdx", Some(1 << 20));
    let c = rw(&child);
    c.write_at(1 << 20, &[1u8; 4096]).unwrap();
    c.flush().unwrap();
    // As another tool may leave it: block 1 NOT_PRESENT, its bits still
    // set in the sector bitmap.
    {
        let mut st = c.lock();
        let index = c.layout.payload_index(1);
        c.set_bat(&mut st, index, BatEntry::new(PAYLOAD_BLOCK_NOT_PRESENT, 0));
        c.flush_metadata(&mut st).unwrap();
    }
    assert_eq!(read(&c, 1 << 20, 4096), base[1 << 20..(1 << 20) + 4096]);
    c.write_at((1 << 20) + 8192, &[2u8; 512]).unwrap();
    let mut want = base.clone();
    want[(1 << 20) + 8192..(1 << 20) + 8704].fill(2);
    assert_eq!(flat(&c), want);
    drop(c);
    assert_eq!(flat(&ro(&child)), want);
}

/// Copies a child's own data into its parent, as `ops::commit` does.
fn merge_into_parent(child: &VhdxImage, parent: &Path) {
    let p = rw(parent);
    for r in child.allocated_extents().unwrap() {
        let data = read(child, r.start, (r.end - r.start) as usize);
        p.write_at(r.start, &data).unwrap();
    }
    p.close().unwrap();
}

fn child_with_data(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let (parent, _) = written(dir, "p.vhdx", 8 << 20, 512, 6 << 20, 5);
    let child = make_child(&parent, "c.vhdx", Some(1 << 20));
    let c = rw(&child);
    c.write_at(512, &pattern(6, 1024)).unwrap(); // partial block
    c.write_at(2 << 20, &pattern(7, 1 << 20)).unwrap(); // whole block
    c.write_at((5 << 20) + 4096, &pattern(8, 8192)).unwrap();
    c.discard(3 << 20, 1 << 20).unwrap(); // zeros over the parent
    drop(c);
    let want = flat(&ro(&child));
    (parent, child, want)
}

#[test]
fn commit_empties_and_relinks_a_differencing_child() {
    let dir = tmp();
    let (parent, child, want) = child_with_data(dir.path());
    let grand = make_child(&child, "g.vhdx", None);
    let child_guid = ro(&child).data_write_guid();
    let report = crate::ops::commit(&child, &mut |_, _| {}).unwrap();
    assert!(report.child_emptied);
    assert_eq!(flat(&ro(&parent)), want);
    let c = ro(&child);
    assert_eq!(c.allocated_extents().unwrap(), vec![]);
    assert_eq!(flat(&c), want);
    assert_eq!(c.check().unwrap(), vec![]);
    // The content did not change: the DataWriteGuid stays, and so does the
    // grandchild's link.
    assert_eq!(c.data_write_guid(), child_guid);
    let loc = locator_of(&child);
    assert_eq!(
        loc.get("parent_linkage"),
        Some(ro(&parent).data_write_guid().to_braced().as_str())
    );
    assert_eq!(loc.get("parent_linkage2"), None);
    drop(c);
    assert_eq!(flat(&ro(&grand)), want);
    assert_eq!(ro(&grand).check().unwrap(), vec![]);
    // The blocks' space went back and is reused.
    let len = file_len(&child);
    let c = rw(&child);
    c.write_at(7 << 20, &[9u8; 4096]).unwrap();
    drop(c);
    assert_eq!(file_len(&child), len);
    let mut want = want;
    want[7 << 20..(7 << 20) + 4096].fill(9);
    assert_eq!(flat(&ro(&child)), want);
    assert_eq!(ro(&child).check().unwrap(), vec![]);
}

#[test]
fn crash_at_every_file_operation_of_emptying_after_commit() {
    let mut n = 0u64;
    let mut relinked = 0;
    'points: loop {
        for (mode, seed) in Crash::at_point(n) {
            let dir = tmp();
            let (parent, child, want) = child_with_data(dir.path());
            let c = rw(&child);
            merge_into_parent(&c, &parent);
            let sim = Sim::start(Some(n));
            let done = c.empty_after_commit().is_ok();
            mode.end(sim, seed, c);
            let ctx = format!("crash at file operation {n} ({mode:?})");
            match open(&child, true) {
                // Before the new link is stable the child still names the
                // parent as it was, and says so.
                Err(e) => {
                    assert!(!done, "{ctx}: {e}");
                    assert!(e.to_string().contains("has changed"), "{ctx}: {e}");
                }
                Ok(after) => {
                    relinked += 1;
                    assert_eq!(after.check().unwrap(), vec![], "{ctx}");
                    assert!(flat(&after) == want, "{ctx}: the content changed");
                    if done {
                        assert_eq!(after.allocated_extents().unwrap(), vec![], "{ctx}");
                    }
                    drop(after);
                    // Usable read-write.
                    let again = rw(&child);
                    again.write_at(7 << 20, &[0xEE; 512]).unwrap();
                    drop(again);
                    assert_eq!(ro(&child).check().unwrap(), vec![], "{ctx}, then written");
                }
            }
            if done {
                break 'points;
            }
        }
        n += 1;
    }
    assert!(n > 10, "emptying performed only {n} file operations");
    assert!(relinked > 0);
}

#[test]
fn check_covers_only_the_image_itself() {
    let dir = tmp();
    let parent = make(dir.path(), "p.vhdx", 4 << 20, 1 << 20, 512);
    let child = make_child(&parent, "c.vhdx", None);
    // Damage the second region table copy of the parent: a problem of the
    // parent alone (the first copy is used).
    patch(&parent, REGION_TABLE_OFFSETS[1] + 100, &[0x5a]);
    let problems = ro(&parent).check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, parent);
    let c = ro(&child);
    assert_eq!(c.check().unwrap(), vec![]);
    assert_eq!(c.parent().unwrap().check().unwrap(), problems);
}

// ---- model-based property tests ------------------------------------------

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum MOp {
        Write {
            sector: u64,
            sectors: u64,
            seed: u64,
        },
        Read {
            sector: u64,
            sectors: u64,
        },
        Discard {
            sector: u64,
            sectors: u64,
        },
        Flush,
        Reopen,
        Crash,
    }

    fn op(total: u64) -> impl Strategy<Value = MOp> {
        let span =
            |total: u64| (0..total).prop_flat_map(move |s| (Just(s), 1..=(total - s).min(5000)));
        prop_oneof![
            6 => (span(total), any::<u64>()).prop_map(|((sector, sectors), seed)| MOp::Write { sector, sectors, seed }),
            3 => span(total).prop_map(|(sector, sectors)| MOp::Read { sector, sectors }),
            1 => span(total).prop_map(|(sector, sectors)| MOp::Discard { sector, sectors }),
            2 => Just(MOp::Flush),
            1 => Just(MOp::Reopen),
            1 => Just(MOp::Crash),
        ]
    }

    /// Per sector, the contents a read may return: after a discard, the old
    /// data or zeros; after a crash, any contents the sector held since the
    /// last flush (each unflushed write or discard may or may not have
    /// reached the disk, so a read's observation does not narrow that).
    struct Model {
        current: Vec<Vec<Vec<u8>>>,
        since_flush: Vec<Vec<Vec<u8>>>,
    }

    fn add(slot: &mut Vec<Vec<u8>>, x: &[u8]) {
        if !slot.iter().any(|y| y == x) {
            slot.push(x.to_vec());
        }
    }

    impl Model {
        fn new(base: &[u8]) -> Model {
            let v: Vec<Vec<Vec<u8>>> = base.chunks(512).map(|c| vec![c.to_vec()]).collect();
            Model {
                since_flush: v.clone(),
                current: v,
            }
        }
        fn write(&mut self, sector: u64, data: &[u8]) {
            for (i, c) in data.chunks(512).enumerate() {
                let s = sector as usize + i;
                self.current[s] = vec![c.to_vec()];
                add(&mut self.since_flush[s], c);
            }
        }
        fn discard(&mut self, sector: u64, sectors: u64) {
            let zeros = [0u8; 512];
            for s in sector..sector + sectors {
                add(&mut self.current[s as usize], &zeros);
                add(&mut self.since_flush[s as usize], &zeros);
            }
        }
        fn flush(&mut self) {
            self.since_flush = self.current.clone();
        }
        fn crash(&mut self) {
            self.current = self.since_flush.clone();
        }
        /// Checks a read and narrows each sector to what was observed (a
        /// disk must keep returning what it returned).
        fn check(&mut self, sector: u64, data: &[u8]) -> std::result::Result<(), String> {
            for (i, c) in data.chunks(512).enumerate() {
                let s = sector as usize + i;
                let slot = &mut self.current[s];
                if !slot.iter().any(|x| x == c) {
                    let what = if c.iter().all(|&b| b == 0) {
                        "zeros".to_string()
                    } else {
                        format!("{:02x?}", &c[..8])
                    };
                    let allowed: Vec<String> =
                        slot.iter().map(|x| format!("{:02x?}", &x[..8])).collect();
                    return Err(format!(
                        "sector {s} holds unexpected data {what}; allowed {allowed:?}"
                    ));
                }
                *slot = vec![c.to_vec()];
            }
            Ok(())
        }
    }

    fn run(path: &Path, base: &[u8], ops: &[MOp]) -> std::result::Result<(), TestCaseError> {
        let mut model = Model::new(base);
        let mut disk = Some(rw(path));
        for op in ops {
            let d = disk.as_ref().unwrap();
            match op {
                MOp::Write {
                    sector,
                    sectors,
                    seed,
                } => {
                    let data = pattern(*seed, (*sectors * 512) as usize);
                    d.write_at(sector * 512, &data).unwrap();
                    model.write(*sector, &data);
                }
                MOp::Read { sector, sectors } => {
                    let got = read(d, sector * 512, (*sectors * 512) as usize);
                    model.check(*sector, &got).map_err(TestCaseError::fail)?;
                }
                MOp::Discard { sector, sectors } => {
                    d.discard(sector * 512, sectors * 512).unwrap();
                    model.discard(*sector, *sectors);
                }
                MOp::Flush => {
                    d.flush().unwrap();
                    model.flush();
                }
                MOp::Reopen => {
                    drop(disk.take());
                    model.flush();
                    disk = Some(rw(path));
                }
                MOp::Crash => {
                    disk.take().unwrap().abandon();
                    model.crash();
                    let r = ro(path);
                    prop_assert_eq!(r.check().unwrap(), vec![]);
                    drop(r);
                    disk = Some(rw(path));
                }
            }
        }
        let d = disk.take().unwrap();
        let all = flat(&d);
        model.check(0, &all).map_err(TestCaseError::fail)?;
        drop(d);
        let r = ro(path);
        prop_assert_eq!(r.check().unwrap(), vec![]);
        model.check(0, &flat(&r)).map_err(TestCaseError::fail)?;
        Ok(())
    }

    const SIZE: u64 = 12 << 20;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn dynamic_matches_the_model(ops in proptest::collection::vec(op(SIZE / 512), 1..40)) {
            let dir = tmp();
            let path = make(dir.path(), "m.vhdx", SIZE, 1 << 20, 512);
            run(&path, &vec![0u8; SIZE as usize], &ops)?;
        }

        #[test]
        fn differencing_matches_the_model(
            ops in proptest::collection::vec(op(SIZE / 512), 1..40),
            lss in prop_oneof![Just(512u32), Just(4096u32)],
        ) {
            let dir = tmp();
            let parent = make(dir.path(), "p.vhdx", SIZE, 2 << 20, lss);
            let base = pattern(lss.into(), SIZE as usize);
            let p = rw(&parent);
            p.write_at(0, &base[..(6 << 20)]).unwrap();
            drop(p);
            let mut want = vec![0u8; SIZE as usize];
            want[..(6 << 20)].copy_from_slice(&base[..(6 << 20)]);
            let child = make_child(&parent, "c.vhdx", Some(1 << 20));
            let parent_bytes = std::fs::read(&parent).unwrap();
            run(&child, &want, &ops)?;
            prop_assert!(std::fs::read(&parent).unwrap() == parent_bytes);
        }
    }
}
