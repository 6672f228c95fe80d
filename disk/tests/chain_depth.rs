//! Deep differencing chains through the library, for every format whose
//! driver works: each layer writes its own sectors (some over its
//! parents'), the top reads the union with the newest layer winning,
//! `chain_allocated_extents` is exactly the written ranges, and
//! `convert` flattens the chain to the same content.

mod common;

use std::path::{Path, PathBuf};

use rehost_disk::{ops, CreateOptions, DiskImage, ImageFormat, OpenOptions, Subformat};

const SIZE: u64 = 16 << 20;
const DEPTH: usize = 8;

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

fn chain(format: ImageFormat) {
    let dir = common::tempdir();
    let e = format.name();
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut model = vec![0u8; SIZE as usize];
    let mut written = Vec::new();
    for level in 0..DEPTH {
        let path = dir.path().join(format!("l{level}.{e}"));
        let r = rehost_disk::create(
            &path,
            &CreateOptions {
                format,
                subformat: if level == 0 {
                    Subformat::Dynamic
                } else {
                    Subformat::Differencing
                },
                size: SIZE,
                block_size: None,
                parent: paths.last().cloned(),
            },
        );
        if let Err(rehost_disk::BlockError::Unsupported { reason, .. }) = &r {
            if reason.contains("not supported yet") {
                common::skip(&format!("{e}: {reason}"));
                return;
            }
        }
        r.unwrap();
        let d = open(&path, false);
        // Layer n writes 4 KiB at n MiB and 512 bytes straddling the
        // previous layer's write.
        let a = (level as u64) << 20;
        let data = vec![0x10 + level as u8; 4096];
        d.write_at(a, &data).unwrap();
        model[a as usize..a as usize + 4096].copy_from_slice(&data);
        written.push(a..a + 4096);
        if level > 0 {
            let b = ((level as u64 - 1) << 20) + 2048;
            d.write_at(b, &[0x80 + level as u8; 512]).unwrap();
            model[b as usize..b as usize + 512].fill(0x80 + level as u8);
        }
        d.flush().unwrap();
        paths.push(path);
    }
    let top = open(paths.last().unwrap(), true);
    let info = top.info();
    let mut depth = 1;
    let mut p = &info;
    while let Some(parent) = &p.parent {
        depth += 1;
        p = parent;
    }
    assert_eq!(depth, DEPTH, "{e}: info lists the whole chain");
    let mut all = vec![0u8; SIZE as usize];
    top.read_at(0, &mut all).unwrap();
    assert!(all == model, "{e}: the chain reads wrong");
    let extents = ops::chain_allocated_extents(top.as_ref()).unwrap();
    let covered: u64 = extents.iter().map(|r| r.end - r.start).sum();
    for w in &written {
        assert!(
            extents.iter().any(|r| r.start <= w.start && w.end <= r.end),
            "{e}: {w:?} missing from {extents:?}"
        );
    }
    // Sector-granular formats report exactly the writes; block-granular
    // ones may report whole blocks, never less.
    assert!(covered >= DEPTH as u64 * 4096, "{e}: {extents:?}");
    for target in [ImageFormat::Raw, ImageFormat::Vhd] {
        let flat = dir.path().join(format!("flat.{}", target.name()));
        ops::convert(
            top.as_ref(),
            &flat,
            &CreateOptions {
                format: target,
                subformat: ops::default_subformat(target),
                size: 0,
                block_size: None,
                parent: None,
            },
            &mut |_, _| {},
        )
        .unwrap();
        let f = open(&flat, true);
        let mut back = vec![0u8; SIZE as usize];
        f.read_at(0, &mut back).unwrap();
        assert!(
            back == model,
            "{e} -> {}: flattened content differs",
            target.name()
        );
        assert_eq!(
            ops::compare(top.as_ref(), f.as_ref(), true, &mut |_, _| {}).unwrap(),
            ops::Comparison::Identical
        );
    }
}

#[test]
fn vhd_chain_of_eight() {
    chain(ImageFormat::Vhd);
}

#[test]
fn vhdx_chain_of_eight() {
    chain(ImageFormat::Vhdx);
}
