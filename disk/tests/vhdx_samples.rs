//! The third-party VHDX samples in ../shared/samples (made by Microsoft
//! tools and Disk2vhd; one left with a dirty log) open, replay and read with
//! exactly the sizes and content listed in their README, read-only and
//! read-write. The originals are never touched: each test decompresses its
//! sample into a temporary directory under target/.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rehost_disk::vhdx::VhdxImage;
use rehost_disk::{BlockDevice, BlockError, DiskImage, ImageFormat, OpenOptions, Subformat};

/// Decompresses a sample into a fresh directory under target/.
fn unpack(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = common::samples_dir().join(format!("{name}.bz2"));
    let dst = dir.path().join(name);
    let out = std::fs::File::create(&dst).unwrap();
    let status = Command::new("bunzip2")
        .arg("-c")
        .arg(&src)
        .stdout(out)
        .status()
        .expect("bunzip2 must be installed to unpack the samples");
    assert!(status.success(), "bunzip2 -c {} failed", src.display());
    (dir, dst)
}

fn open(path: &Path, read_only: bool) -> rehost_disk::Result<VhdxImage> {
    VhdxImage::open(
        path,
        &OpenOptions {
            read_only,
            ..Default::default()
        },
        &mut |p: &Path| {
            Err(BlockError::Open {
                path: p.to_owned(),
                reason: "samples have no parent".into(),
            })
        },
    )
}

/// A sha256 hasher process: `openssl dgst` (fast, SHA-NI) or `sha256sum`.
fn hasher(file: Option<&Path>) -> std::process::Child {
    let spawn = |prog: &str, args: &[&str]| {
        let mut c = Command::new(prog);
        c.args(args);
        match file {
            Some(f) => c.arg(f).stdin(Stdio::null()),
            None => c.stdin(Stdio::piped()),
        };
        c.stdout(Stdio::piped()).spawn()
    };
    spawn("openssl", &["dgst", "-sha256", "-r"])
        .or_else(|_| spawn("sha256sum", &[]))
        .expect("openssl or sha256sum must be installed")
}

fn digest(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// sha256 of the whole virtual disk, read through `disk` in 4 MiB pieces.
fn flat_sha256(disk: &dyn BlockDevice) -> String {
    let mut child = hasher(None);
    let mut stdin = child.stdin.take().unwrap();
    let size = disk.geometry().size;
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        disk.read_at(at, &mut buf[..n]).unwrap();
        stdin.write_all(&buf[..n]).unwrap();
        at += n as u64;
    }
    drop(stdin);
    digest(child)
}

fn assert_same_content(a: &dyn BlockDevice, b: &dyn BlockDevice) {
    let size = a.geometry().size;
    assert_eq!(size, b.geometry().size);
    let mut x = vec![0u8; 4 << 20];
    let mut y = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(x.len() as u64) as usize;
        a.read_at(at, &mut x[..n]).unwrap();
        b.read_at(at, &mut y[..n]).unwrap();
        assert!(
            x[..n] == y[..n],
            "content differs in bytes {at}..{}",
            at + n as u64
        );
        at += n as u64;
    }
}

fn file_sha256(path: &Path) -> String {
    digest(hasher(Some(path)))
}

#[test]
fn disk2vhd_sample_reads_its_listed_content() {
    let (_dir, path) = unpack("test-disk2vhd.vhdx");
    let before = file_sha256(&path);
    let disk = open(&path, true).unwrap();
    assert_eq!(disk.geometry().size, 268_435_456);
    let info = disk.info();
    assert_eq!(info.format, ImageFormat::Vhdx);
    assert_eq!(info.block_size, Some(2 << 20));
    assert_eq!(info.subformat, Subformat::Dynamic);
    assert_eq!(disk.check().unwrap(), vec![]);
    let want = "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a";
    assert_eq!(flat_sha256(&disk), want);
    drop(disk);
    assert_eq!(
        file_sha256(&path),
        before,
        "a read-only open changed the file"
    );

    // Read-write: same content, and a write lands.
    let disk = open(&path, false).unwrap();
    assert_eq!(flat_sha256(&disk), want);
    disk.write_at(4096, &[0x5A; 512]).unwrap();
    disk.flush().unwrap();
    drop(disk);
    let disk = open(&path, true).unwrap();
    let mut b = [0u8; 512];
    disk.read_at(4096, &mut b).unwrap();
    assert_eq!(b, [0x5A; 512]);
    assert_eq!(disk.check().unwrap(), vec![]);
}

#[test]
fn microsoft_dynamic_sample_reads_its_listed_content() {
    let (_dir, path) = unpack("iotest-dynamic-1G.vhdx");
    let before = file_sha256(&path);
    let want = "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478";
    let disk = open(&path, true).unwrap();
    assert_eq!(disk.geometry().size, 1 << 30);
    assert_eq!(disk.check().unwrap(), vec![]);
    assert_eq!(flat_sha256(&disk), want);
    drop(disk);
    assert_eq!(file_sha256(&path), before);
    let disk = open(&path, false).unwrap();
    assert_eq!(flat_sha256(&disk), want);
    drop(disk);
    // Opening read-write and closing changes headers only, never content.
    let disk = open(&path, true).unwrap();
    assert_eq!(flat_sha256(&disk), want);
}

#[test]
fn dirty_log_sample_is_replayed_in_memory_read_only_and_into_the_file_read_write() {
    let (_dir, path) = unpack("iotest-dirtylog-10G-4M.vhdx");
    let before = file_sha256(&path);
    let want = "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f";

    let disk = open(&path, true).unwrap();
    assert_eq!(disk.geometry().size, 10 << 30);
    assert_eq!(disk.info().block_size, Some(1 << 20));
    let mut head = vec![0u8; 18 << 20];
    disk.read_at(0, &mut head).unwrap();
    assert!(
        head.iter().all(|&b| b == 0xA5),
        "bytes 0..18 MiB are 0xA5 after replay"
    );
    assert_eq!(disk.check().unwrap(), vec![]);
    assert_eq!(flat_sha256(&disk), want);
    drop(disk);
    assert_eq!(
        file_sha256(&path),
        before,
        "a read-only open must not replay into the file"
    );

    // Read-write: the replay goes into the file and the log is emptied.
    // Compare against an untouched copy, replayed in memory, byte for byte.
    let pristine = path.with_extension("orig.vhdx");
    std::fs::copy(&path, &pristine).unwrap();
    let disk = open(&path, false).unwrap();
    let reference = open(&pristine, true).unwrap();
    assert_same_content(&disk, &reference);
    drop(disk);
    assert_ne!(file_sha256(&path), before);
    let disk = open(&path, true).unwrap();
    assert_same_content(&disk, &reference);
    assert_eq!(disk.check().unwrap(), vec![]);
    drop(disk);
    assert_eq!(file_sha256(&pristine), before);
    // QEMU refuses a read-only open of a dirty log; after our replay it
    // opens the file read-only and finds it clean.
    let out = Command::new("qemu-img")
        .args(["check", "-f", "vhdx"])
        .arg(&path)
        .output()
        .expect("qemu-img is required for this test (Debian package qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img check after replay: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
