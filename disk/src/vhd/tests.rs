//! Unit tests of the VHD driver: layouts, reads and writes, and every
//! refusal of a damaged file (which must name the file, the structure, the
//! offset and the reason, and leave the file byte for byte as it was).

use super::*;
use crate::{CreateOptions, DiskImage, ImageFormat, OpenOptions, Subformat};

fn create_opts(subformat: Subformat, size: u64) -> CreateOptions {
    CreateOptions {
        format: ImageFormat::Vhd,
        subformat,
        size,
        block_size: Some(1 << 20),
        parent: None,
    }
}

fn diff_opts(parent: &Path) -> CreateOptions {
    CreateOptions {
        format: ImageFormat::Vhd,
        subformat: Subformat::Differencing,
        size: 0,
        block_size: None,
        parent: Some(parent.to_owned()),
    }
}

fn rw() -> OpenOptions {
    OpenOptions {
        read_only: false,
        ..Default::default()
    }
}

fn ro() -> OpenOptions {
    OpenOptions {
        read_only: true,
        ..Default::default()
    }
}

fn open(path: &Path, o: &OpenOptions) -> crate::Result<Box<dyn DiskImage>> {
    crate::open(path, o)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

/// Opening `path` read-write and read-only fails with an error whose text
/// holds every one of `needles`, and the file is unchanged.
fn assert_refused(path: &Path, needles: &[&str]) -> BlockError {
    let before = std::fs::read(path).unwrap();
    let mut last = None;
    for o in [rw(), ro()] {
        let e = open(path, &o).expect_err("a damaged image opened");
        let text = e.to_string();
        assert!(
            text.contains(&path.display().to_string()),
            "error does not name the file: {text}"
        );
        for n in needles {
            assert!(text.contains(n), "error {text:?} lacks {n:?}");
        }
        last = Some(e);
    }
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file was modified"
    );
    last.unwrap()
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// Rewrites the dynamic header with `edit` applied and a valid checksum.
fn edit_header(path: &Path, edit: impl FnOnce(&mut DynamicHeader)) {
    let data = std::fs::read(path).unwrap();
    let mut h = DynamicHeader::parse(&data[512..1536]).unwrap();
    edit(&mut h);
    patch(path, 512, &h.to_bytes());
}

fn bat_entry(path: &Path, index: u64) -> u32 {
    let data = std::fs::read(path).unwrap();
    let h = DynamicHeader::parse(&data[512..1536]).unwrap();
    let at = (h.table_offset + 4 * index) as usize;
    u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
}

#[test]
fn fixed_and_dynamic_read_back_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [Subformat::Fixed, Subformat::Dynamic] {
        let path = dir.path().join(format!("{}.vhd", sub.name()));
        crate::create(&path, &create_opts(sub, 8 << 20)).unwrap();
        {
            let d = open(&path, &rw()).unwrap();
            assert_eq!(d.geometry().size, 8 << 20);
            d.write_at(0, &pattern(1, 4096)).unwrap();
            d.write_at((3 << 20) - 512, &pattern(2, 8192)).unwrap();
            d.write_at((8 << 20) - 512, &pattern(3, 512)).unwrap();
            d.flush().unwrap();
        }
        let d = open(&path, &ro()).unwrap();
        let info = d.info();
        assert_eq!(info.format, ImageFormat::Vhd);
        assert_eq!(info.subformat, sub);
        let mut buf = vec![0u8; 8192];
        d.read_at((3 << 20) - 512, &mut buf).unwrap();
        assert_eq!(buf, pattern(2, 8192));
        d.read_at(0, &mut buf[..4096]).unwrap();
        assert_eq!(&buf[..4096], &pattern(1, 4096)[..]);
        d.read_at(5 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        let mut last = vec![0u8; 512];
        d.read_at((8 << 20) - 512, &mut last).unwrap();
        assert_eq!(last, pattern(3, 512));
        assert_eq!(d.check().unwrap(), vec![]);
        assert!(matches!(
            d.write_at(0, &[0; 512]),
            Err(BlockError::ReadOnly { .. })
        ));
        assert!(matches!(
            d.read_at(8 << 20, &mut last),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.read_at(u64::MAX - 511, &mut last),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.read_at(100, &mut last),
            Err(BlockError::Misaligned { .. })
        ));
        if sub == Subformat::Dynamic {
            assert_eq!(
                d.allocated_extents().unwrap(),
                vec![0..(1 << 20), (2 << 20)..(4 << 20), (7 << 20)..(8 << 20)]
            );
        }
    }
}

#[test]
fn unflushed_allocations_vanish_cleanly_and_flushed_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhd");
    crate::create(&path, &create_opts(Subformat::Dynamic, 16 << 20)).unwrap();
    let d = VhdImage::open(&path, &rw(), &mut |_: &Path| unreachable!()).unwrap();
    d.write_at(1 << 20, &pattern(5, 4096)).unwrap();
    d.flush().unwrap();
    d.write_at(9 << 20, &pattern(6, 4096)).unwrap();
    d.write_at((1 << 20) + 4096, &pattern(7, 512)).unwrap();
    // A crash: the image is never flushed.
    d.close_as_if_killed();
    let d = open(&path, &rw()).unwrap();
    assert_eq!(d.check().unwrap(), vec![]);
    let mut buf = vec![0u8; 4096];
    d.read_at(1 << 20, &mut buf).unwrap();
    assert_eq!(buf, pattern(5, 4096));
    d.read_at(9 << 20, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "unflushed block became visible"
    );
    // The space the lost allocation took is reused, and reads as zeros.
    d.write_at((12 << 20) + 512, &pattern(8, 512)).unwrap();
    d.flush().unwrap();
    drop(d);
    let d = open(&path, &ro()).unwrap();
    let mut block = vec![0u8; 1 << 20];
    d.read_at(12 << 20, &mut block).unwrap();
    assert!(block[..512].iter().all(|&b| b == 0));
    assert_eq!(&block[512..1024], &pattern(8, 512)[..]);
    assert!(block[1024..].iter().all(|&b| b == 0));
    assert_eq!(d.check().unwrap(), vec![]);
}

#[test]
fn differencing_reads_per_sector_from_child_or_parent() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent.vhd");
    let child = dir.path().join("child.vhd");
    crate::create(&parent, &create_opts(Subformat::Dynamic, 4 << 20)).unwrap();
    {
        let p = open(&parent, &rw()).unwrap();
        p.write_at(0, &vec![0xaa; 4 << 20]).unwrap();
        p.flush().unwrap();
    }
    let parent_bytes = std::fs::read(&parent).unwrap();
    crate::create(&child, &diff_opts(&parent)).unwrap();
    {
        let c = open(&child, &rw()).unwrap();
        assert_eq!(c.info().subformat, Subformat::Differencing);
        assert_eq!(c.info().parent.unwrap().path, parent);
        c.write_at(1024, &[0xcc; 512]).unwrap();
        c.write_at(3 << 20, &[0xdd; 1024]).unwrap();
        c.flush().unwrap();
        assert_eq!(
            c.allocated_extents().unwrap(),
            vec![1024..1536, (3 << 20)..(3 << 20) + 1024]
        );
    }
    let c = open(&child, &ro()).unwrap();
    let mut buf = vec![0u8; 2048];
    c.read_at(0, &mut buf).unwrap();
    assert!(buf[..1024].iter().all(|&b| b == 0xaa));
    assert!(buf[1024..1536].iter().all(|&b| b == 0xcc));
    assert!(buf[1536..].iter().all(|&b| b == 0xaa));
    c.read_at((3 << 20) + 512, &mut buf).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 0xdd));
    assert!(buf[512..].iter().all(|&b| b == 0xaa));
    assert_eq!(c.check().unwrap(), vec![]);
    assert_eq!(std::fs::read(&parent).unwrap(), parent_bytes);
}

#[test]
fn parent_found_through_each_locator_and_missing_parent_names_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let parent = sub.join("base.vhd");
    let child = dir.path().join("child.vhd");
    crate::create(&parent, &create_opts(Subformat::Dynamic, 2 << 20)).unwrap();
    crate::create(&child, &diff_opts(&parent)).unwrap();
    let h = DynamicHeader::parse(&std::fs::read(&child).unwrap()[512..1536]).unwrap();
    let platforms: Vec<_> = h
        .parent_locators
        .iter()
        .filter(|l| l.is_used())
        .map(|l| l.platform)
        .collect();
    assert_eq!(
        platforms,
        vec![PlatformCode::W2ru, PlatformCode::W2ku, PlatformCode::MacX]
    );
    let w2ru = &h.parent_locators[0];
    let data = std::fs::read(&child).unwrap();
    let at = w2ru.data_offset as usize;
    let rel = spec::decode_locator(
        PlatformCode::W2ru,
        &data[at..at + w2ru.data_length as usize],
    )
    .unwrap()
    .unwrap();
    assert_eq!(rel, ".\\sub\\base.vhd");
    // Moving the pair keeps the relative locator working.
    let moved = tempfile::tempdir().unwrap();
    std::fs::create_dir(moved.path().join("sub")).unwrap();
    let mparent = moved.path().join("sub/base.vhd");
    let mchild = moved.path().join("child.vhd");
    std::fs::copy(&parent, &mparent).unwrap();
    std::fs::copy(&child, &mchild).unwrap();
    // Copies get a new mtime: give the parent the original's.
    let mtime = std::fs::metadata(&parent).unwrap().modified().unwrap();
    File::options()
        .write(true)
        .open(&mparent)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    drop(dir);
    let c = open(&mchild, &ro()).unwrap();
    assert_eq!(
        c.info().parent.unwrap().path,
        moved.path().join("sub/base.vhd")
    );
    drop(c);
    // Without the parent every candidate is named.
    std::fs::remove_file(&mparent).unwrap();
    let e = assert_refused(
        &mchild,
        &[
            "parent image was not found",
            "(W2ru)",
            "(W2ku)",
            "(parent name)",
        ],
    );
    let text = e.to_string();
    assert!(
        text.contains(&moved.path().join("sub/base.vhd").display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&moved.path().join("base.vhd").display().to_string()),
        "{text}"
    );
}

#[test]
fn windows_paths_and_relative_paths() {
    assert_eq!(
        windows_path_to_local("C:\\a\\b.vhd"),
        PathBuf::from("/a/b.vhd")
    );
    assert_eq!(windows_path_to_local(".\\b.vhd"), PathBuf::from("b.vhd"));
    assert_eq!(
        windows_path_to_local("..\\x\\b.vhd"),
        PathBuf::from("../x/b.vhd")
    );
    assert_eq!(
        relative_path(Path::new("/a/b/c"), Path::new("/a/x/p.vhd")),
        PathBuf::from("../../x/p.vhd")
    );
    assert_eq!(to_windows(Path::new("../x/p.vhd"), true), "..\\x\\p.vhd");
    assert_eq!(to_windows(Path::new("p.vhd"), true), ".\\p.vhd");
    assert_eq!(format_vhd_time(0), "2000-01-01 00:00:00 UTC");
    assert_eq!(
        format_vhd_time(86400 * 366 + 3661),
        "2001-01-01 01:01:01 UTC"
    );
}

#[test]
fn a_changed_or_replaced_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("p.vhd");
    let child = dir.path().join("c.vhd");
    crate::create(&parent, &create_opts(Subformat::Dynamic, 2 << 20)).unwrap();
    crate::create(&child, &diff_opts(&parent)).unwrap();
    open(&child, &ro()).unwrap();
    // Written after the child was linked.
    let later =
        std::fs::metadata(&parent).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
    File::options()
        .write(true)
        .open(&parent)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_refused(
        &child,
        &["was modified", "after this differencing image was linked"],
    );
    // Replaced by another image.
    std::fs::remove_file(&parent).unwrap();
    crate::create(&parent, &create_opts(Subformat::Dynamic, 2 << 20)).unwrap();
    assert_refused(&child, &["unique id", "the parent was replaced"]);
    // Not a VHD at all.
    std::fs::remove_file(&parent).unwrap();
    std::fs::write(&parent, vec![0u8; 2 << 20]).unwrap();
    assert_refused(&child, &["is not a VHD image"]);
}

#[test]
fn a_parent_loop_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vhd");
    let b = dir.path().join("b.vhd");
    crate::create(&a, &create_opts(Subformat::Dynamic, 2 << 20)).unwrap();
    crate::create(&b, &diff_opts(&a)).unwrap();
    // Turn a into a child of b: copy b's differencing header into a, with
    // a's locators pointing at b and b's unique id.
    let bfooter = Footer::parse(&std::fs::read(&b).unwrap()[..512]).unwrap();
    let afile = File::options().read(true).write(true).open(&a).unwrap();
    let (mut afooter, _, _) = read_footer(&afile, &a).unwrap();
    drop(afile);
    afooter.disk_type = DiskType::Differencing;
    let alen = std::fs::metadata(&a).unwrap().len();
    patch(&a, 0, &afooter.to_bytes());
    patch(&a, alen - 512, &afooter.to_bytes());
    edit_header(&a, |h| {
        h.parent_unique_id = bfooter.unique_id;
        h.parent_timestamp = 0;
        h.parent_unicode_name = "b.vhd".encode_utf16().collect();
    });
    let e = assert_refused(&b, &["loops back"]);
    assert!(matches!(e, BlockError::Open { .. }));
}

#[test]
fn damaged_footers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("f.vhd");
    crate::create(&fixed, &create_opts(Subformat::Fixed, 1 << 20)).unwrap();
    let len = std::fs::metadata(&fixed).unwrap().len();
    let footer_at = len - 512;
    // Checksum mismatch.
    patch(&fixed, footer_at + 100, &[1]);
    let e = assert_refused(&fixed, &["VHD footer", "checksum mismatch"]);
    assert!(
        matches!(e, BlockError::Corrupt { offset, .. } if offset == footer_at + 64),
        "{e}"
    );
    patch(&fixed, footer_at + 100, &[0]);
    open(&fixed, &ro()).unwrap();
    // A disk type the specification does not know, with a good checksum.
    let mut bytes = std::fs::read(&fixed).unwrap()[footer_at as usize..].to_vec();
    bytes[63] = 7;
    let sum = spec::checksum(&bytes, 64);
    bytes[64..68].copy_from_slice(&sum.to_be_bytes());
    let good = std::fs::read(&fixed).unwrap();
    patch(&fixed, footer_at, &bytes);
    let e = assert_refused(&fixed, &["unknown disk type 7"]);
    assert!(
        matches!(e, BlockError::Corrupt { offset, .. } if offset == footer_at + 60),
        "{e}"
    );
    std::fs::write(&fixed, &good).unwrap();
    // A size larger than the data in front of the footer.
    let mut f = Footer::parse(&good[footer_at as usize..]).unwrap();
    f.current_size = 2 << 20;
    patch(&fixed, footer_at, &f.to_bytes());
    assert_refused(&fixed, &["VHD footer", "larger than the"]);
    // Truncated to less than a footer.
    std::fs::write(&fixed, &good[..300]).unwrap();
    let e = VhdImage::open(&fixed, &ro(), &mut |_: &Path| unreachable!()).unwrap_err();
    assert!(e.to_string().contains("too short"), "{e}");
    // The cookie gone: the rest of the footer still says VHD, so detection
    // refuses it rather than opening it as raw (issue 14).
    std::fs::write(&fixed, &good).unwrap();
    patch(&fixed, footer_at, b"XXXXXXXX");
    assert!(matches!(
        crate::detect_format(&fixed),
        Err(BlockError::Damaged {
            format: ImageFormat::Vhd,
            ..
        })
    ));
    let e = VhdImage::open(&fixed, &ro(), &mut |_: &Path| unreachable!()).unwrap_err();
    assert!(e.to_string().contains("bad cookie"), "{e}");
    assert!(
        matches!(e, BlockError::Corrupt { offset, .. } if offset == footer_at),
        "{e}"
    );
}

#[test]
fn a_dynamic_disk_survives_a_damaged_tail_footer_through_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhd");
    crate::create(&path, &create_opts(Subformat::Dynamic, 4 << 20)).unwrap();
    {
        let d = open(&path, &rw()).unwrap();
        d.write_at(0, &pattern(9, 4096)).unwrap();
    }
    let len = std::fs::metadata(&path).unwrap().len();
    patch(&path, len - 400, &[0x55; 8]);
    let d = open(&path, &ro()).unwrap();
    let problems = d.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].reason.contains("damaged"), "{problems:?}");
    drop(d);
    // A write repairs the tail when it allocates.
    {
        let d = open(&path, &rw()).unwrap();
        d.write_at(2 << 20, &pattern(10, 512)).unwrap();
    }
    let d = open(&path, &ro()).unwrap();
    assert_eq!(d.check().unwrap(), vec![]);
    let mut buf = vec![0u8; 4096];
    d.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(9, 4096));
    // Both copies damaged: refused, naming the end-of-file footer.
    drop(d);
    let len = std::fs::metadata(&path).unwrap().len();
    patch(&path, len - 400, &[0x55; 8]);
    patch(&path, 100, &[0x55; 8]);
    assert_refused(&path, &["VHD footer", "checksum mismatch"]);
}

#[test]
fn damaged_dynamic_headers_and_tables_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good_path = dir.path().join("good.vhd");
    crate::create(&good_path, &create_opts(Subformat::Dynamic, 4 << 20)).unwrap();
    {
        let d = open(&good_path, &rw()).unwrap();
        d.write_at(0, &pattern(1, 512)).unwrap();
        d.write_at(1 << 20, &pattern(2, 512)).unwrap();
    }
    let good = std::fs::read(&good_path).unwrap();
    let path = dir.path().join("bad.vhd");
    let reset = || std::fs::write(&path, &good).unwrap();
    let corrupt_at = |e: &BlockError| match e {
        BlockError::Corrupt {
            structure, offset, ..
        } => (*structure, *offset),
        other => panic!("not a Corrupt error: {other}"),
    };

    reset();
    patch(&path, 512, b"cxspArse");
    let e = assert_refused(&path, &["VHD dynamic header", "bad cookie"]);
    assert_eq!(corrupt_at(&e), ("VHD dynamic header", 512));

    reset();
    patch(&path, 512 + 700, &[1]);
    let e = assert_refused(&path, &["checksum mismatch"]);
    assert_eq!(corrupt_at(&e), ("VHD dynamic header", 512 + 36));

    reset();
    edit_header(&path, |h| h.max_table_entries = 2);
    let e = assert_refused(&path, &["do not cover the disk size"]);
    assert_eq!(corrupt_at(&e), ("VHD dynamic header", 512 + 28));

    reset();
    edit_header(&path, |h| h.max_table_entries = 100 << 20);
    let e = assert_refused(&path, &["table entries is more than"]);
    assert_eq!(corrupt_at(&e), ("VHD dynamic header", 512 + 28));

    reset();
    edit_header(&path, |h| h.table_offset = 1 << 30);
    let e = assert_refused(&path, &["ends past the end of the file"]);
    assert_eq!(corrupt_at(&e), ("VHD dynamic header", 512 + 16));

    reset();
    edit_header(&path, |h| h.table_offset = 1024);
    assert_refused(&path, &["overlaps the footer copy or the dynamic header"]);

    // A BAT entry past the end of the file.
    reset();
    let table = 1536u64;
    patch(&path, table + 4, &0x0010_0000u32.to_be_bytes());
    let e = assert_refused(&path, &["entry 1", "past the end of the data"]);
    assert_eq!(corrupt_at(&e), ("VHD block allocation table", table + 4));

    // A BAT entry on top of the header.
    reset();
    patch(&path, table + 4, &1u32.to_be_bytes());
    let e = assert_refused(&path, &["entry 1", "overlaps the dynamic header"]);
    assert_eq!(corrupt_at(&e), ("VHD block allocation table", table + 4));

    // Two entries for the same block.
    reset();
    let first = bat_entry(&path, 0);
    patch(&path, table + 4, &first.to_be_bytes());
    let e = assert_refused(&path, &["overlaps entry"]);
    assert_eq!(corrupt_at(&e).0, "VHD block allocation table");

    // The header offset outside the file.
    reset();
    let mut f = Footer::parse(&good[..512]).unwrap();
    f.data_offset = 1 << 40;
    patch(&path, 0, &f.to_bytes());
    patch(&path, good.len() as u64 - 512, &f.to_bytes());
    let e = assert_refused(&path, &["dynamic header offset"]);
    assert_eq!(corrupt_at(&e).0, "VHD footer");

    // Truncated in the middle of a block.
    reset();
    std::fs::write(&path, &good[..good.len() - 600_000]).unwrap();
    assert_refused(&path, &[]);
}

#[test]
fn locator_data_outside_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("p.vhd");
    let child = dir.path().join("c.vhd");
    crate::create(&parent, &create_opts(Subformat::Dynamic, 2 << 20)).unwrap();
    crate::create(&child, &diff_opts(&parent)).unwrap();
    edit_header(&child, |h| h.parent_locators[0].data_offset = 1 << 40);
    let e = assert_refused(&child, &["VHD parent locator", "W2ru", "outside the file"]);
    assert!(
        matches!(e, BlockError::Corrupt { offset, .. } if offset == 512 + 576),
        "{e}"
    );
}

#[test]
fn commit_helpers_empty_the_child_and_keep_it_valid() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("p.vhd");
    let child = dir.path().join("c.vhd");
    crate::create(&parent, &create_opts(Subformat::Dynamic, 2 << 20)).unwrap();
    crate::create(&child, &diff_opts(&parent)).unwrap();
    {
        let c = open(&child, &rw()).unwrap();
        c.write_at(4096, &[0x11; 4096]).unwrap();
    }
    let child_len = std::fs::metadata(&child).unwrap().len();
    {
        let c = open(&child, &rw()).unwrap();
        {
            let p = open(&parent, &rw()).unwrap();
            p.write_at(4096, &[0x11; 4096]).unwrap();
            p.flush().unwrap();
        }
        // Make the parent's change visible to the second-granular link.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        File::options()
            .write(true)
            .open(&parent)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(c.empty_after_commit().unwrap());
    }
    assert!(std::fs::metadata(&child).unwrap().len() < child_len);
    let c = open(&child, &ro()).unwrap();
    assert_eq!(c.allocated_extents().unwrap(), vec![]);
    let mut buf = vec![0u8; 8192];
    c.read_at(0, &mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert!(buf[4096..].iter().all(|&b| b == 0x11));
    assert_eq!(c.check().unwrap(), vec![]);
}

#[test]
fn create_refuses_bad_requests_and_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.vhd");
    for (opts, needle) in [
        (create_opts(Subformat::Dynamic, 1000), "multiple of 512"),
        (create_opts(Subformat::Dynamic, 0), "multiple of 512"),
        (create_opts(Subformat::Dynamic, 3 << 40), "2040 GiB"),
        (
            CreateOptions {
                block_size: Some(3 << 20),
                ..create_opts(Subformat::Dynamic, 1 << 20)
            },
            "power of two",
        ),
    ] {
        let e = crate::create(&path, &opts).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
        assert!(!path.exists());
    }
    std::fs::write(&path, b"keep").unwrap();
    assert!(crate::create(&path, &create_opts(Subformat::Dynamic, 1 << 20)).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.vhd");
    crate::create(&path, &create_opts(Subformat::Dynamic, 1 << 20)).unwrap();
    let _a = open(&path, &rw()).unwrap();
    let e = open(&path, &rw()).unwrap_err();
    assert!(e.to_string().contains("in use by another writer"), "{e}");
    open(&path, &ro()).unwrap();
}

/// Reads the first 4 MiB of `d`'s disk (and its last sector) and asserts
/// every sector read is zeros or a 512-byte-aligned sector of `file`,
/// the image's own bytes (the last one zero-padded): a corrupt image may
/// make rehost read the wrong part of its file, never anything else.
fn assert_reads_inside(d: &dyn DiskImage, file: &[u8], what: &str) {
    let mut own: std::collections::HashSet<[u8; 512]> = std::collections::HashSet::new();
    for chunk in file.chunks(512) {
        let mut s = [0u8; 512];
        s[..chunk.len()].copy_from_slice(chunk);
        own.insert(s);
    }
    let size = d.geometry().size;
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at < size.min(4 << 20) {
        let n = (size - at).min(65536);
        spans.push((at, n));
        at += n;
    }
    if size >= 512 {
        spans.push((size / 512 * 512 - 512, 512));
    }
    for (at, n) in spans {
        // A sentinel no sector of these images holds: a read that returns
        // Ok must have filled the whole buffer.
        let mut buf = vec![0xE7u8; n as usize];
        if d.read_at(at, &mut buf).is_err() {
            continue;
        }
        for (i, sector) in buf.chunks(512).enumerate() {
            let mut s = [0u8; 512];
            s[..sector.len()].copy_from_slice(sector);
            assert!(
                s == [0u8; 512] || own.contains(&s),
                "{what}: sector {} read as bytes that are not in the file (first bytes {:02x?})",
                at / 512 + i as u64,
                &s[..16]
            );
        }
    }
}

#[test]
fn garbage_never_panics() {
    // Random bytes in a valid image, and every truncation of it: open
    // either fails cleanly or yields a device whose reads stay inside the
    // file's own bytes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.vhd");
    let good_path = dir.path().join("good.vhd");
    crate::create(&good_path, &create_opts(Subformat::Dynamic, 2 << 20)).unwrap();
    {
        let d = open(&good_path, &rw()).unwrap();
        d.write_at(0, &pattern(1, 4096)).unwrap();
    }
    let good = std::fs::read(&good_path).unwrap();
    let mut opened = 0;
    for cut in (0..good.len()).step_by(997) {
        std::fs::write(&path, &good[..cut]).unwrap();
        if let Ok(d) = open(&path, &ro()) {
            opened += 1;
            assert_reads_inside(d.as_ref(), &good[..cut], &format!("cut at {cut}"));
        }
    }
    let mut seed = 0x1234_5678_9abc_def0u64;
    for round in 0..200 {
        let mut data = good.clone();
        for _ in 0..8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % data.len() as u64) as usize;
            data[at] = (seed >> 32) as u8;
        }
        std::fs::write(&path, &data).unwrap();
        if let Ok(d) = open(&path, &ro()) {
            opened += 1;
            assert_reads_inside(d.as_ref(), &data, &format!("corruption round {round}"));
            let _ = d.check();
            let _ = d.allocated_extents();
        }
    }
    // The check above must have had devices to look at.
    assert!(opened > 20, "only {opened} damaged images opened");
}

// ---- crash safety --------------------------------------------------------

mod crash {
    use std::path::{Path, PathBuf};

    use crate::crashtest::{blocks_workload, crash_everywhere, open, pattern, Op};
    use crate::{CreateOptions, ImageFormat, Subformat};

    fn make(dir: &Path, name: &str, subformat: Subformat) -> PathBuf {
        let path = dir.join(name);
        crate::create(
            &path,
            &CreateOptions {
                format: ImageFormat::Vhd,
                subformat,
                size: 8 << 20,
                block_size: Some(1 << 20),
                parent: None,
            },
        )
        .unwrap();
        path
    }

    fn workload() -> Vec<Op> {
        blocks_workload(Op::Write((3 << 20) + 4096, pattern(7, 512)))
    }

    #[test]
    fn crash_at_every_file_operation_of_fixed_writes() {
        let states = crash_everywhere(|d| make(d, "f.vhd", Subformat::Fixed), &workload());
        println!("{states} crash states");
    }

    #[test]
    fn crash_at_every_file_operation_of_dynamic_writes() {
        let states = crash_everywhere(|d| make(d, "d.vhd", Subformat::Dynamic), &workload());
        println!("{states} crash states");
    }

    #[test]
    fn crash_at_every_file_operation_of_differencing_writes() {
        let states = crash_everywhere(
            |d| {
                let parent = make(d, "p.vhd", Subformat::Dynamic);
                let p = open(&parent, false);
                p.write_at(0, &pattern(99, 8 << 20)).unwrap();
                p.flush().unwrap();
                drop(p);
                let child = d.join("c.vhd");
                crate::create(
                    &child,
                    &CreateOptions {
                        format: ImageFormat::Vhd,
                        subformat: Subformat::Differencing,
                        size: 0,
                        block_size: Some(1 << 20),
                        parent: Some(parent),
                    },
                )
                .unwrap();
                child
            },
            &workload(),
        );
        println!("{states} crash states");
    }
}
