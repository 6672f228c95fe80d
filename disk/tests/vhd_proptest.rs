//! Random write/read/flush/reopen sequences on fixed, dynamic and
//! differencing VHDs match a plain in-memory model.

mod common;

use std::path::Path;

use proptest::prelude::*;
use rehost_disk::{CreateOptions, DiskImage, ImageFormat, OpenOptions, Subformat};

const SIZE: u64 = 2 << 20;
const SECTORS: u64 = SIZE / 512;

#[derive(Debug, Clone)]
enum Op {
    Write { sector: u64, count: u64, byte: u8 },
    Read { sector: u64, count: u64 },
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let span = (0..SECTORS).prop_flat_map(|s| (Just(s), 1..=(SECTORS - s).min(300)));
    prop_oneof![
        5 => (span.clone(), any::<u8>()).prop_map(|((sector, count), byte)| Op::Write { sector, count, byte }),
        3 => span.prop_map(|(sector, count)| Op::Read { sector, count }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn data(sector: u64, count: u64, byte: u8) -> Vec<u8> {
    (0..count * 512)
        .map(|i| byte.wrapping_add(((sector + i / 512) as u8).wrapping_mul(7)))
        .collect()
}

fn open(path: &Path) -> Box<dyn DiskImage> {
    rehost_disk::open(
        path,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn run(kind: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = common::tempdir();
    let path = dir.path().join("d.vhd");
    let mut model = vec![0u8; SIZE as usize];
    let make = |p: &Path, subformat, parent: Option<&Path>| {
        rehost_disk::create(
            p,
            &CreateOptions {
                format: ImageFormat::Vhd,
                subformat,
                size: SIZE,
                block_size: Some(64 << 10),
                parent: parent.map(Path::to_owned),
            },
        )
        .unwrap()
    };
    match kind {
        "fixed" => make(&path, Subformat::Fixed, None),
        "dynamic" => make(&path, Subformat::Dynamic, None),
        _ => {
            let parent = dir.path().join("p.vhd");
            make(&parent, Subformat::Dynamic, None);
            let p = open(&parent);
            for (i, chunk) in model.chunks_mut(96 << 10).enumerate().step_by(2) {
                chunk.fill(0x10 + i as u8);
                p.write_at(i as u64 * (96 << 10), chunk).unwrap();
            }
            drop(p);
            make(&path, Subformat::Differencing, Some(&parent));
        }
    }
    let mut disk = open(&path);
    for op in ops {
        match *op {
            Op::Write {
                sector,
                count,
                byte,
            } => {
                let d = data(sector, count, byte);
                disk.write_at(sector * 512, &d).unwrap();
                model[(sector * 512) as usize..((sector + count) * 512) as usize]
                    .copy_from_slice(&d);
            }
            Op::Read { sector, count } => {
                let mut buf = vec![0u8; (count * 512) as usize];
                disk.read_at(sector * 512, &mut buf).unwrap();
                prop_assert!(
                    buf[..] == model[(sector * 512) as usize..((sector + count) * 512) as usize],
                    "read at sector {} x{} differs",
                    sector,
                    count
                );
            }
            Op::Flush => disk.flush().unwrap(),
            Op::Reopen => {
                drop(disk);
                disk = open(&path);
            }
        }
    }
    drop(disk);
    let disk = rehost_disk::open(
        &path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    prop_assert_eq!(disk.check().unwrap(), vec![]);
    let mut all = vec![0u8; SIZE as usize];
    disk.read_at(0, &mut all).unwrap();
    prop_assert!(all == model, "final content differs");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fixed_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run("fixed", &ops)?;
    }

    #[test]
    fn dynamic_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run("dynamic", &ops)?;
    }

    #[test]
    fn differencing_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run("differencing", &ops)?;
    }
}
