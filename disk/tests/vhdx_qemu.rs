//! Interoperability with QEMU, both ways:
//! - images made by `qemu-img create -f vhdx` (dynamic and fixed, several
//!   block and log sizes) and filled by `qemu-io` read identically here,
//!   and stay valid for QEMU after rehost writes to them;
//! - images rehost creates and writes pass `qemu-img check` and
//!   `qemu-img compare` against the expected raw content.
//!
//! These tests need qemu-img and qemu-io (Debian package qemu-utils) and
//! fail, saying so, when they are missing.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rehost_disk::vhdx::{self, VhdxImage};
use rehost_disk::{
    BlockDevice, BlockError, CreateOptions, DiskImage, ImageFormat, OpenOptions, Subformat,
};

const MIB: u64 = 1 << 20;

fn tool(name: &str) -> &str {
    match Command::new(name).arg("--version").output() {
        Ok(o) if o.status.success() => name,
        _ => panic!(
            "{name} is required for this test but is not installed (Debian package qemu-utils)"
        ),
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn no_parent(p: &Path) -> rehost_disk::Result<Box<dyn DiskImage>> {
    Err(BlockError::Open {
        path: p.to_owned(),
        reason: "no parent expected".into(),
    })
}

fn open(path: &Path, read_only: bool) -> VhdxImage {
    VhdxImage::open(
        path,
        &OpenOptions {
            read_only,
            ..Default::default()
        },
        &mut no_parent,
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// A raw file holding what the disk should contain.
struct Expected {
    path: PathBuf,
    file: std::fs::File,
}

impl Expected {
    fn new(dir: &Path, size: u64) -> Expected {
        let path = dir.join("expected.raw");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(size).unwrap();
        Expected { path, file }
    }
    fn fill(&self, offset: u64, len: u64, byte: u8) {
        self.file
            .write_all_at(&vec![byte; len as usize], offset)
            .unwrap();
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.file.write_all_at(data, offset).unwrap();
    }
}

/// Reads the whole disk and compares it with the expected raw file.
fn assert_reads(disk: &dyn BlockDevice, expected: &Expected) {
    let size = disk.geometry().size;
    assert_eq!(size, expected.file.metadata().unwrap().len());
    let mut a = vec![0u8; 8 << 20];
    let mut b = vec![0u8; 8 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(a.len() as u64) as usize;
        disk.read_at(at, &mut a[..n]).unwrap();
        expected.file.read_exact_at(&mut b[..n], at).unwrap();
        if a[..n] != b[..n] {
            let i = a[..n]
                .iter()
                .zip(&b[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "byte {} reads {:#04x}, expected {:#04x}",
                at + i as u64,
                a[i],
                b[i]
            );
        }
        at += n as u64;
    }
}

fn qemu_check_and_compare(image: &Path, expected: &Expected) {
    let qemu_img = tool("qemu-img");
    run(Command::new(qemu_img)
        .args(["check", "-f", "vhdx"])
        .arg(image));
    run(Command::new(qemu_img)
        .args(["compare", "-f", "vhdx", "-F", "raw"])
        .arg(image)
        .arg(&expected.path));
}

/// (offset, length, byte) writes that cross block boundaries, hit the
/// first and last sectors, and leave holes.
fn pattern(size: u64, block: u64) -> Vec<(u64, u64, u8)> {
    let mut w = vec![
        (0, 512, 0x11),
        (4096, 64 << 10, 0x22),
        (block - 512, 1024, 0x33),
        (3 * block + 7 * 512, 3 * 512, 0x44),
        (size - 512, 512, 0x55),
        (size / 2 / 512 * 512, 1 << 20, 0x66),
    ];
    if size > 2 * block + 4096 {
        w.push((block + 4096, block, 0x77));
    }
    w.retain(|&(o, l, _)| o + l <= size);
    w
}

#[test]
fn qemu_made_images_read_identically_and_stay_valid_after_rehost_writes() {
    let qemu_img = tool("qemu-img");
    let qemu_io = tool("qemu-io");
    // (subformat, block size, log size, virtual size)
    let cases: &[(&str, u64, u64, u64)] = &[
        ("dynamic", MIB, MIB, 96 * MIB),
        ("dynamic", 8 * MIB, 4 * MIB, 200 * MIB + 4096),
        ("dynamic", 32 * MIB, MIB, 300 * MIB),
        ("dynamic", 256 * MIB, 8 * MIB, 600 * MIB),
        ("fixed", 16 * MIB, MIB, 100 * MIB),
        ("fixed", 2 * MIB, 2 * MIB, 20 * MIB + 512 * 3),
    ];
    for &(sub, block, log, size) in cases {
        let dir = tmpdir();
        let img = dir.path().join("q.vhdx");
        run(Command::new(qemu_img)
            .args(["create", "-q", "-f", "vhdx", "-o"])
            .arg(format!("subformat={sub},block_size={block},log_size={log}"))
            .arg(&img)
            .arg(size.to_string()));
        let expected = Expected::new(dir.path(), size);
        let writes = pattern(size, block);
        let mut args: Vec<String> = Vec::new();
        for &(o, l, b) in &writes {
            args.push("-c".into());
            args.push(format!("write -P {b:#x} {o} {l}"));
            expected.fill(o, l, b);
        }
        run(Command::new(qemu_io)
            .args(["-f", "vhdx"])
            .args(&args)
            .arg(&img));

        let ctx = format!("{sub} block {block} log {log} size {size}");
        let disk = open(&img, true);
        assert_eq!(disk.geometry().size, size, "{ctx}");
        let info = disk.info();
        assert_eq!(info.format, ImageFormat::Vhdx);
        if sub == "fixed" {
            assert_eq!(info.subformat, Subformat::Fixed, "{ctx}");
        } else {
            assert_eq!(info.subformat, Subformat::Dynamic, "{ctx}");
            assert_eq!(info.block_size, Some(block), "{ctx}");
        }
        assert_eq!(disk.check().unwrap(), vec![], "{ctx}");
        assert_reads(&disk, &expected);
        drop(disk);

        // rehost writes, QEMU reads.
        let disk = open(&img, false);
        assert_reads(&disk, &expected);
        for (i, &(o, l, _)) in writes.iter().enumerate() {
            let o = (o + 3 * block / 2) % (size - l) / 512 * 512;
            let b = 0xA0 + i as u8;
            disk.write_at(o, &vec![b; l as usize]).unwrap();
            expected.fill(o, l, b);
        }
        disk.flush().unwrap();
        assert_reads(&disk, &expected);
        drop(disk);
        let disk = open(&img, true);
        assert_reads(&disk, &expected);
        assert_eq!(disk.check().unwrap(), vec![], "{ctx}");
        drop(disk);
        qemu_check_and_compare(&img, &expected);
    }
}

#[test]
fn rehost_made_images_pass_qemu_check_and_compare() {
    tool("qemu-img");
    let cases: &[(Subformat, Option<u64>, u64)] = &[
        (Subformat::Dynamic, None, 512 * MIB),
        (Subformat::Dynamic, Some(MIB), 64 * MIB + 512),
        (Subformat::Dynamic, Some(4 * MIB), 100 * MIB),
        (Subformat::Dynamic, Some(256 * MIB), 300 * MIB),
        (Subformat::Fixed, Some(8 * MIB), 40 * MIB),
        (Subformat::Fixed, None, 33 * MIB),
    ];
    for &(subformat, block_size, size) in cases {
        let dir = tmpdir();
        let img = dir.path().join("r.vhdx");
        vhdx::create(
            &img,
            &CreateOptions {
                format: ImageFormat::Vhdx,
                subformat,
                size,
                block_size,
                parent: None,
            },
        )
        .unwrap();
        let expected = Expected::new(dir.path(), size);
        // A fresh image passes, and reads as zeros.
        qemu_check_and_compare(&img, &expected);

        let block = block_size.unwrap_or(u64::from(vhdx::default_block_size(size)));
        let disk = open(&img, false);
        let mut seed = 0x1234_5678u64;
        for (i, &(o, l, b)) in pattern(size, block).iter().enumerate() {
            // Distinct bytes per sector so misplaced data shows.
            let data: Vec<u8> = (0..l)
                .map(|j| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if j % 512 == 0 {
                        b
                    } else {
                        (seed >> 56) as u8 ^ i as u8
                    }
                })
                .collect();
            disk.write_at(o, &data).unwrap();
            expected.write(o, &data);
            if i == 2 {
                disk.flush().unwrap();
            }
        }
        // A discard of a whole block (the last whole one) reads as zeros.
        let blocks = size / block;
        if blocks >= 2 && subformat == Subformat::Dynamic {
            let o = (blocks - 1) * block;
            disk.write_at(o, &vec![0xEE; 4096]).unwrap();
            disk.discard(o, block).unwrap();
            expected.fill(o, block, 0);
        }
        assert_reads(&disk, &expected);
        drop(disk);
        qemu_check_and_compare(&img, &expected);
        let disk = open(&img, true);
        assert_eq!(disk.check().unwrap(), vec![]);
        assert_reads(&disk, &expected);
    }
}

#[test]
fn qemu_io_reads_what_rehost_wrote() {
    let qemu_io = tool("qemu-io");
    let dir = tmpdir();
    let img = dir.path().join("w.vhdx");
    vhdx::create(
        &img,
        &CreateOptions {
            format: ImageFormat::Vhdx,
            subformat: Subformat::Dynamic,
            size: 64 * MIB,
            block_size: Some(MIB),
            parent: None,
        },
    )
    .unwrap();
    let disk = open(&img, false);
    disk.write_at(3 * MIB - 512, &vec![0xC3; 1024]).unwrap();
    drop(disk);
    let out = run(Command::new(qemu_io)
        .args([
            "-r",
            "-f",
            "vhdx",
            "-c",
            &format!("read -P 0xc3 {} 1024", 3 * MIB - 512),
            "-c",
            &format!("read -P 0 0 {}", 3 * MIB - 512),
        ])
        .arg(&img));
    assert!(!out.contains("Pattern verification failed"), "{out}");
}
