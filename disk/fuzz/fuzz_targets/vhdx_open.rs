//! The whole open path on damaged files: header choice, log replay,
//! region table, metadata, BAT and parent checks, then reads, a write, a
//! discard, a flush and `check`.
//!
//! The first byte picks the file: 0 = an empty (all-zero) 4 MiB file;
//! 1 = a valid dynamic image, 2 = a valid differencing child (over a parent
//! that is never modified). The rest of the input patches it as records
//! [area, offset lo, offset hi, len, bytes...], where the area is one of
//! the places VHDX structures live (file identifier at 0, headers at 64
//! and 128 KiB, region tables at 192 and 256 KiB, and the log, metadata and
//! BAT of the templates at 1, 2 and 3 MiB) or the middle of the file, so a
//! short input reaches every structure (a plain input-is-the-file mode
//! could not get to 64 KiB within the usual -max_len). Bit 2 of the first
//! byte recomputes the header and region table checksums after patching so
//! damage behind them is reached.
//!
//! Invariant checked: when a read-write open, a write and a flush succeed,
//! the file reopens read-only and reads the written data back.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rehost_disk::vhdx::spec::{
    seal, HEADER_OFFSETS, HEADER_SIZE, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE,
};
use rehost_disk::vhdx::{self, VhdxImage};
use rehost_disk::{BlockDevice, CreateOptions, DiskImage, ImageFormat, OpenOptions, Subformat};

struct Templates {
    dir: PathBuf,
    dynamic: Vec<u8>,
    child: Vec<u8>,
}

fn no_parent(p: &Path) -> rehost_disk::Result<Box<dyn DiskImage>> {
    Err(rehost_disk::BlockError::Open {
        path: p.to_owned(),
        reason: "no parent".into(),
    })
}

fn parent_opener(p: &Path) -> rehost_disk::Result<Box<dyn DiskImage>> {
    Ok(Box::new(VhdxImage::open(
        p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
        &mut no_parent,
    )?))
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        // tmpfs when there is one: the target flushes a lot, and flushes
        // on tmpfs cost nothing.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        // Clear what earlier runs (whose process is gone) left behind.
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("rehost-fuzz-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("rehost-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let opts = |parent: Option<PathBuf>| CreateOptions {
            format: ImageFormat::Vhdx,
            subformat: if parent.is_some() {
                Subformat::Differencing
            } else {
                Subformat::Dynamic
            },
            size: 8 << 20,
            block_size: Some(1 << 20),
            parent,
        };
        let dynamic = dir.join("dynamic.vhdx");
        vhdx::create(&dynamic, &opts(None)).unwrap();
        let d = VhdxImage::open(
            &dynamic,
            &OpenOptions {
                read_only: false,
                ..Default::default()
            },
            &mut no_parent,
        )
        .unwrap();
        d.write_at(0, &[0x11; 4096]).unwrap();
        d.write_at(5 << 20, &[0x22; 8192]).unwrap();
        drop(d);
        let parent = dir.join("parent.vhdx");
        std::fs::copy(&dynamic, &parent).unwrap();
        let child = dir.join("child.vhdx");
        vhdx::create(&child, &opts(Some(parent.clone()))).unwrap();
        let c = VhdxImage::open(
            &child,
            &OpenOptions {
                read_only: false,
                ..Default::default()
            },
            &mut parent_opener,
        )
        .unwrap();
        c.write_at(512, &[0x33; 1024]).unwrap();
        c.write_at(3 << 20, &[0x44; 1 << 20]).unwrap();
        drop(c);
        Templates {
            dynamic: std::fs::read(&dynamic).unwrap(),
            child: std::fs::read(&child).unwrap(),
            dir,
        }
    })
}

/// Where patch records land: file identifier, headers, region tables,
/// log, metadata, BAT, the middle of the file.
fn area_start(area: u8, len: usize) -> usize {
    match area % 9 {
        0 => 0,
        1 => 64 << 10,
        2 => 128 << 10,
        3 => 192 << 10,
        4 => 256 << 10,
        5 => 1 << 20,
        6 => 2 << 20,
        7 => 3 << 20,
        _ => len / 2,
    }
}

fn write_sparse(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
    // Slice comparison is one memcmp, not 4096 instrumented byte compares.
    static ZERO: [u8; 4096] = [0; 4096];
    for (i, page) in bytes.chunks(4096).enumerate() {
        if page != &ZERO[..page.len()] {
            f.write_all_at(page, (i * 4096) as u64).unwrap();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let t = templates();
    let mut file = match mode % 3 {
        0 => vec![0u8; 4 << 20],
        1 => t.dynamic.clone(),
        _ => t.child.clone(),
    };
    {
        let mut r = rest;
        while r.len() >= 4 {
            let start =
                area_start(r[0], file.len()) + usize::from(u16::from_le_bytes([r[1], r[2]]));
            let n = usize::from(r[3]).min(r.len() - 4);
            for (i, &b) in r[4..4 + n].iter().enumerate() {
                if let Some(x) = file.get_mut(start + i) {
                    *x = b;
                }
            }
            r = &r[4 + n..];
        }
        if mode & 4 == 4 {
            for off in HEADER_OFFSETS {
                let o = off as usize;
                seal(&mut file[o..o + HEADER_SIZE], 4);
            }
            for off in REGION_TABLE_OFFSETS {
                let o = off as usize;
                seal(&mut file[o..o + REGION_TABLE_SIZE], 4);
            }
        }
    }
    let path = t.dir.join("fuzzed.vhdx");
    write_sparse(&path, &file);

    if let Ok(d) = VhdxImage::open(
        &path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
        &mut parent_opener,
    ) {
        let size = d.geometry().size;
        let mut buf = vec![0u8; 8192];
        for at in [0, size / 2, size.saturating_sub(8192)] {
            let at = at / 512 * 512;
            let n = (size - at).min(8192) as usize;
            let _ = d.read_at(at, &mut buf[..n]);
        }
        let _ = d.check();
        let _ = d.info();
        let _ = d.allocated_extents();
    }
    let written = match VhdxImage::open(
        &path,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
        &mut parent_opener,
    ) {
        Ok(d) => {
            let size = d.geometry().size;
            let at = (size / 3) / 512 * 512;
            let n = (size - at).min(4096) as usize;
            let mut ok = d.write_at(at, &vec![0x5A; n]).is_ok();
            // Discard whole blocks before the written sector, never over it.
            let _ = d.discard(0, at.min(2 << 20) / 512 * 512);
            ok &= d.flush().is_ok();
            ok &= d.close().is_ok();
            ok.then_some((at, n))
        }
        Err(_) => None,
    };
    if let Some((at, n)) = written {
        let d = VhdxImage::open(
            &path,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
            &mut parent_opener,
        )
        .expect("a file rehost wrote and flushed must reopen");
        let mut buf = vec![0u8; n];
        d.read_at(at, &mut buf).expect("read back");
        assert!(buf.iter().all(|&b| b == 0x5A), "flushed write lost");
    }
});
