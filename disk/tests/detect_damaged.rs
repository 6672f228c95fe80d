//! Format detection never opens a damaged VHD or VHDX as raw: images made
//! by rehost and by `qemu-img create`, with their identifying bytes
//! damaged, are refused with `BlockError::Damaged` naming the format, and
//! open as raw only when asked for explicitly.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use rehost_disk::{BlockError, CreateOptions, ImageFormat, OpenOptions, Subformat};

const MIB: u64 = 1 << 20;

fn damage(path: &Path, offset: u64, len: usize) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0xa5; len], offset).unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Opening refuses the file as a damaged `format`, with a message naming
/// the file and the format; an explicit raw open works and covers the
/// whole file.
fn assert_refused(path: &Path, format: ImageFormat) {
    for read_only in [true, false] {
        let err = rehost_disk::open(
            path,
            &OpenOptions {
                read_only,
                ..Default::default()
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{} opened", path.display()));
        let text = err.to_string();
        match &err {
            BlockError::Damaged { format: f, .. } => assert_eq!(*f, format, "{text}"),
            other => panic!("expected a damaged-image error, got {other}"),
        }
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(format.name()), "{text}");
        assert!(text.contains("refusing to open it as raw"), "{text}");
    }
    assert!(matches!(
        rehost_disk::detect_format(path),
        Err(BlockError::Damaged { .. })
    ));
    let raw = rehost_disk::open(
        path,
        &OpenOptions {
            read_only: true,
            format: Some(ImageFormat::Raw),
        },
    )
    .unwrap();
    let len = file_len(path);
    assert_eq!(raw.geometry().size, len - len % 512);
    let mut first = [0u8; 512];
    raw.read_at(0, &mut first).unwrap();
    let mut expect = [0u8; 512];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut expect, 0)
        .unwrap();
    assert_eq!(first, expect);
}

fn create(path: &Path, format: ImageFormat, subformat: Subformat) {
    rehost_disk::create(
        path,
        &CreateOptions {
            format,
            subformat,
            size: 8 * MIB,
            block_size: None,
            parent: None,
        },
    )
    .unwrap();
    assert_eq!(rehost_disk::detect_format(path).unwrap(), format);
}

#[test]
fn damaged_vhdx_made_by_rehost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [Subformat::Dynamic, Subformat::Fixed] {
        let p = dir.path().join(format!("{}.vhdx", sub.name()));
        create(&p, ImageFormat::Vhdx, sub);
        // The file identifier's signature.
        damage(&p, 0, 8);
        assert_refused(&p, ImageFormat::Vhdx);
        // Header 1 too: header 2 still says what the file is.
        damage(&p, 64 << 10, 4096);
        assert_refused(&p, ImageFormat::Vhdx);
        // Both headers: the region tables do.
        damage(&p, 128 << 10, 4096);
        assert_refused(&p, ImageFormat::Vhdx);
        // Region table 1: region table 2 does.
        damage(&p, 192 << 10, 64);
        assert_refused(&p, ImageFormat::Vhdx);
        // Nothing is left: the file is raw.
        damage(&p, 256 << 10, 64);
        assert_eq!(rehost_disk::detect_format(&p).unwrap(), ImageFormat::Raw);
    }
}

#[test]
fn damaged_vhd_made_by_rehost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Dynamic: footer copy at 0 and footer at the end, dynamic header at
    // 512.
    let p = dir.path().join("dynamic.vhd");
    create(&p, ImageFormat::Vhd, Subformat::Dynamic);
    let len = file_len(&p);
    damage(&p, 0, 8);
    damage(&p, len - 512, 8);
    assert_refused(&p, ImageFormat::Vhd);
    // Both footers gone entirely: the dynamic disk header remains.
    damage(&p, 0, 512);
    damage(&p, len - 512, 512);
    assert_refused(&p, ImageFormat::Vhd);
    damage(&p, 512, 8);
    assert_refused(&p, ImageFormat::Vhd);
    damage(&p, 512, 1024);
    assert_eq!(rehost_disk::detect_format(&p).unwrap(), ImageFormat::Raw);

    // Fixed: only the footer at the end; its cookie damaged.
    let p = dir.path().join("fixed.vhd");
    create(&p, ImageFormat::Vhd, Subformat::Fixed);
    let len = file_len(&p);
    damage(&p, len - 512, 8);
    assert_refused(&p, ImageFormat::Vhd);
}

#[test]
fn raw_disks_with_stray_signatures_stay_raw() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.raw");
    let mut bytes = vec![0u8; (1 << 20) as usize];
    // A lone "head" at 64 KiB and "regi" without its other copy: no
    // checksum holds, one signature is not enough.
    bytes[64 << 10..(64 << 10) + 4].copy_from_slice(b"head");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(rehost_disk::detect_format(&p).unwrap(), ImageFormat::Raw);
    // Two signatures in place (headers whose checksums are damaged) are.
    bytes[128 << 10..(128 << 10) + 4].copy_from_slice(b"head");
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(
        rehost_disk::detect_format(&p),
        Err(BlockError::Damaged {
            format: ImageFormat::Vhdx,
            ..
        })
    ));
    // Short files and empty files are raw.
    for n in [0usize, 7, 511, 4096] {
        std::fs::write(&p, vec![0u8; n]).unwrap();
        assert_eq!(rehost_disk::detect_format(&p).unwrap(), ImageFormat::Raw);
    }
}

#[test]
fn damaged_images_made_by_qemu_img_are_refused() {
    if !common::have_qemu("damaged_images_made_by_qemu_img_are_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for sub in ["dynamic", "fixed"] {
        let p = dir.path().join(format!("q-{sub}.vhdx"));
        common::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "vhdx", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(&p)
                .arg("8M"),
        );
        assert_eq!(rehost_disk::detect_format(&p).unwrap(), ImageFormat::Vhdx);
        damage(&p, 0, 8);
        assert_refused(&p, ImageFormat::Vhdx);
        damage(&p, 64 << 10, 8);
        assert_refused(&p, ImageFormat::Vhdx);

        let p = dir.path().join(format!("q-{sub}.vhd"));
        common::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "vpc", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(&p)
                .arg("8M"),
        );
        assert_eq!(rehost_disk::detect_format(&p).unwrap(), ImageFormat::Vhd);
        let len = file_len(&p);
        if sub == "dynamic" {
            damage(&p, 0, 8);
        }
        damage(&p, len - 512, 8);
        assert_refused(&p, ImageFormat::Vhd);
    }
}
