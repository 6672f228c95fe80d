//! VHD interoperability with QEMU (qemu-img / qemu-io 7.2): images QEMU
//! makes and fills read identically through rehost, and images rehost makes
//! and writes read identically through QEMU.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rehost_disk::{CreateOptions, ImageFormat, OpenOptions, Subformat};

/// (offset, length, fill byte): across block boundaries, the first and the
/// last sector.
fn writes(size: u64) -> Vec<(u64, u64, u8)> {
    vec![
        (0, 65536, 0x11),
        ((2 << 20) - 4096, 8192, 0x22),
        (5 << 20, 1 << 20, 0x33),
        (size / 1024 * 512 + 512, 1536, 0x44),
        (size - 512, 512, 0x55),
    ]
}

fn expected(size: u64, writes: &[(u64, u64, u8)]) -> Vec<u8> {
    let mut m = vec![0u8; size as usize];
    for &(off, len, b) in writes {
        m[off as usize..(off + len) as usize].fill(b);
    }
    m
}

fn read_all(path: &Path) -> Vec<u8> {
    let d = rehost_disk::open(
        path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut buf = vec![0u8; d.geometry().size as usize];
    d.read_at(0, &mut buf).unwrap();
    buf
}

fn qemu_size(path: &Path) -> u64 {
    let out = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path));
    let key = "\"virtual-size\":";
    let at = out.find(key).unwrap() + key.len();
    out[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn qemu_made_images_read_identically() {
    if !have_qemu("qemu_made_images_read_identically") {
        return;
    }
    let dir = tempdir();
    for sub in ["dynamic", "fixed"] {
        for size_arg in ["64M", "100M", "130M"] {
            let img = dir.path().join(format!("q-{sub}-{size_arg}.vhd"));
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "vpc", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(&img)
                .arg(size_arg));
            // QEMU 7.2 reports a fixed image's size as its file's, footer
            // included (and fails reads of that last sector): the disk is
            // the footer's current size, 512 bytes less.
            let size = qemu_size(&img) - if sub == "fixed" { 512 } else { 0 };
            let w = writes(size);
            let mut io = Command::new("qemu-io");
            io.args(["-f", "vpc"]);
            for &(off, len, b) in &w {
                io.arg("-c").arg(format!("write -P 0x{b:02x} {off} {len}"));
            }
            run(io.arg(&img));
            let d = rehost_disk::open(
                &img,
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(d.geometry().size, size, "{}", img.display());
            assert_eq!(d.check().unwrap(), vec![], "{}", img.display());
            drop(d);
            let want = expected(size, &w);
            assert!(
                read_all(&img) == want,
                "{} reads differently",
                img.display()
            );
            // qemu's own flat view agrees with the model.
            let raw = dir.path().join("flat.raw");
            let _ = std::fs::remove_file(&raw);
            run(Command::new("qemu-img")
                .args(["convert", "-f", "vpc", "-O", "raw"])
                .arg(&img)
                .arg(&raw));
            assert_eq!(sha256_file(&raw), sha256_bytes(dir.path(), &want));
            // rehost writes into QEMU's image; QEMU reads them back.
            {
                let d = rehost_disk::open(
                    &img,
                    &OpenOptions {
                        read_only: false,
                        ..Default::default()
                    },
                )
                .unwrap();
                d.write_at(9 << 20, &vec![0x66; 4096]).unwrap();
                d.write_at(size - 4096, &vec![0x77; 2048]).unwrap();
                d.flush().unwrap();
            }
            let mut want = want;
            want[(9 << 20)..(9 << 20) + 4096].fill(0x66);
            want[(size - 4096) as usize..(size - 2048) as usize].fill(0x77);
            std::fs::write(&raw, &want).unwrap();
            let (code, out) = run_status(
                Command::new("qemu-img")
                    .args(["compare", "-f", "vpc", "-F", "raw"])
                    .arg(&img)
                    .arg(&raw),
            );
            assert_eq!(code, 0, "{}: {out}", img.display());
        }
    }
}

#[test]
fn rehost_made_images_read_identically_in_qemu() {
    if !have_qemu("rehost_made_images_read_identically_in_qemu") {
        return;
    }
    let dir = tempdir();
    let cases = [
        (Subformat::Dynamic, 64u64 << 20, Some(2u64 << 20)),
        (Subformat::Dynamic, 100 << 20, Some(1 << 20)),
        (Subformat::Dynamic, (130 << 20) + 512 * 7, Some(4 << 20)),
        (Subformat::Dynamic, 48 << 20, Some(512 << 10)),
        (Subformat::Fixed, 64 << 20, None),
        (Subformat::Fixed, (100 << 20) + 512, None),
    ];
    for (i, &(sub, size, block_size)) in cases.iter().enumerate() {
        let img = dir.path().join(format!("r{i}.vhd"));
        rehost_disk::create(
            &img,
            &CreateOptions {
                format: ImageFormat::Vhd,
                subformat: sub,
                size,
                block_size,
                parent: None,
            },
        )
        .unwrap();
        let w = writes(size);
        {
            let d = rehost_disk::open(
                &img,
                &OpenOptions {
                    read_only: false,
                    ..Default::default()
                },
            )
            .unwrap();
            for &(off, len, b) in &w {
                d.write_at(off, &vec![b; len as usize]).unwrap();
            }
            d.flush().unwrap();
        }
        // QEMU 7.2 reports fixed images 512 bytes larger (their footer).
        let quirk = if sub == Subformat::Fixed { 512 } else { 0 };
        assert_eq!(qemu_size(&img), size + quirk, "{}", img.display());
        let raw = dir.path().join(format!("r{i}.raw"));
        std::fs::write(&raw, expected(size, &w)).unwrap();
        let (code, out) = run_status(
            Command::new("qemu-img")
                .args(["compare", "-f", "vpc", "-F", "raw"])
                .arg(&img)
                .arg(&raw),
        );
        assert_eq!(code, 0, "{}: {out}", img.display());
        let flat = dir.path().join(format!("r{i}.flat"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(&img)
            .arg(&flat));
        assert_eq!(sha256_file(&flat), sha256_file(&raw), "{}", img.display());
        std::fs::remove_file(&flat).unwrap();
        // QEMU 7.2 has no consistency check for VHD: record that verdict so
        // a QEMU that gains one is noticed.
        let (code, out) = run_status(
            Command::new("qemu-img")
                .args(["check", "-f", "vpc"])
                .arg(&img),
        );
        assert_eq!(code, 63, "{out}");
        assert!(out.contains("does not support checks"), "{out}");
        // QEMU allocates in rehost's image; rehost reads it and finds it
        // consistent.
        run(Command::new("qemu-io")
            .args(["-f", "vpc", "-c"])
            .arg(format!("write -P 0x99 {} 4096", 13 << 20))
            .arg(&img));
        let d = rehost_disk::open(
            &img,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(d.check().unwrap(), vec![], "{}", img.display());
        let mut buf = vec![0u8; 4096];
        d.read_at(13 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0x99));
    }
}

/// The CHS geometry qemu-img writes is the specification's "Appendix: CHS
/// Calculation" ([`Chs::for_size`]) rounded up: QEMU repeats it one sector
/// larger until the geometry covers the disk (and sizes its "qemu" images
/// by that geometry). Checked on images qemu-img makes, for sizes in each
/// branch of the algorithm.
#[test]
fn qemu_geometry_is_the_appendix_rounded_up() {
    use rehost_disk::vhd::spec::{Chs, Footer};
    if !have_qemu("qemu_geometry_is_the_appendix_rounded_up") {
        return;
    }
    let dir = tempdir();
    for size in [3u64 << 20, 10 << 20, 100 << 20, 1 << 30, 127 << 30] {
        let path = dir.path().join(format!("{size}.vhd"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "vpc"])
            .arg(&path)
            .arg(size.to_string()));
        let bytes = std::fs::read(&path).unwrap();
        let footer = Footer::parse(&bytes[bytes.len() - 512..]).unwrap();
        let sectors = size / 512;
        let rounded_up = (0..1_000_000u64)
            .map(|more| Chs::for_size((sectors + more) * 512))
            .find(|c| c.total_sectors() >= sectors)
            .unwrap();
        assert_eq!(footer.geometry, rounded_up, "{size} bytes");
        // Rounding up was needed for these sizes: the appendix alone
        // covers less than the disk.
        assert!(
            Chs::for_size(size).total_sectors() < sectors,
            "{size} bytes"
        );
        assert_eq!(footer.virtual_size(), rounded_up.total_sectors() * 512);
        assert_eq!(qemu_size(&path), footer.virtual_size(), "{size} bytes");
    }
}
