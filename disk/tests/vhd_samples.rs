//! The third-party VHD samples in ../shared/samples (Hyper-V, Virtual PC,
//! Disk2vhd) open with the sizes and content their README lists, read-only
//! and read-write. They are decompressed into a temporary directory; the
//! originals are only read.

mod common;

use std::path::Path;

use common::*;
use rehost_disk::{ops, DiskImage, ImageFormat, OpenOptions, Subformat};

fn open(path: &Path, read_only: bool) -> Box<dyn DiskImage> {
    rehost_disk::open(
        path,
        &OpenOptions {
            read_only,
            ..Default::default()
        },
    )
    .unwrap()
}

/// sha256 of the whole flat image as rehost reads it.
fn flat_sha256(dir: &Path, image: &dyn DiskImage) -> String {
    let flat = dir.join("flat.raw");
    let size = image.geometry().size;
    let mut out = Vec::with_capacity(size as usize);
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        image.read_at(pos, &mut buf[..n]).unwrap();
        out.extend_from_slice(&buf[..n]);
        pos += n as u64;
    }
    std::fs::write(&flat, &out).unwrap();
    let sha = sha256_file(&flat);
    std::fs::remove_file(&flat).unwrap();
    sha
}

fn assert_reads_zero(image: &dyn DiskImage) {
    let size = image.geometry().size;
    let mut buf = vec![0xeeu8; 1 << 20];
    for off in [0, size / 2 / 512 * 512, size - (1 << 20)] {
        image.read_at(off, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "non-zero at {off}");
    }
}

#[test]
fn hyperv_and_virtualpc_samples_have_their_sizes_and_read_as_zeros() {
    let dir = tempdir();
    for (name, size) in [
        ("hyperv2012r2-dynamic.vhd", 136_365_211_648u64),
        ("virtualpc-dynamic.vhd", 136_363_130_880),
    ] {
        let path = sample(dir.path(), name);
        let original = sha256_file(&samples_dir().join(format!("{name}.bz2")));
        for read_only in [true, false] {
            let before = std::fs::read(&path).unwrap();
            let image = open(&path, read_only);
            let info = image.info();
            assert_eq!(info.format, ImageFormat::Vhd, "{name}");
            assert_eq!(info.subformat, Subformat::Dynamic, "{name}");
            assert_eq!(info.virtual_size, size, "{name}");
            assert_eq!(info.block_size, Some(2 << 20), "{name}");
            assert_eq!(image.check().unwrap(), vec![], "{name}");
            assert_eq!(image.allocated_extents().unwrap(), vec![], "{name}");
            assert_eq!(
                ops::chain_allocated_extents(image.as_ref()).unwrap(),
                vec![]
            );
            assert_reads_zero(image.as_ref());
            drop(image);
            assert!(
                std::fs::read(&path).unwrap() == before,
                "{name} changed by reading"
            );
        }
        // Read-write: a write lands, and the image stays consistent.
        {
            let image = open(&path, false);
            image.write_at(size - 4096, &[0x5a; 4096]).unwrap();
            image.flush().unwrap();
        }
        let image = open(&path, true);
        assert_eq!(image.check().unwrap(), vec![], "{name}");
        let mut buf = vec![0u8; 8192];
        image.read_at(size - 8192, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 0x5a));
        assert_eq!(
            image.allocated_extents().unwrap(),
            vec![((size - 4096) / (2 << 20) * (2 << 20))..size],
            "{name}"
        );
        assert_eq!(
            sha256_file(&samples_dir().join(format!("{name}.bz2"))),
            original
        );
    }
}

#[test]
fn disk2vhd_sample_is_fully_allocated_zeros_with_its_sha256() {
    let dir = tempdir();
    let name = "d2v-zerofilled.vhd";
    let path = sample(dir.path(), name);
    const SHA: &str = "1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143";
    for read_only in [true, false] {
        let before = sha256_file(&path);
        let image = open(&path, read_only);
        let info = image.info();
        assert_eq!(info.virtual_size, 263_454_720);
        assert_eq!(info.subformat, Subformat::Dynamic);
        assert_eq!(image.check().unwrap(), vec![]);
        let extents = image.allocated_extents().unwrap();
        assert_eq!(extents, vec![0..263_454_720], "every block is allocated");
        assert_eq!(flat_sha256(dir.path(), image.as_ref()), SHA);
        drop(image);
        assert_eq!(sha256_file(&path), before, "opening changed the file");
    }
    {
        let image = open(&path, false);
        image.write_at(1 << 20, &[0x42; 512]).unwrap();
        image.flush().unwrap();
    }
    let image = open(&path, true);
    assert_eq!(image.check().unwrap(), vec![]);
    let mut buf = [0u8; 1024];
    image.read_at((1 << 20) - 512, &mut buf).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 0));
    assert!(buf[512..].iter().all(|&b| b == 0x42));
}
