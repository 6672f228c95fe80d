//! Opening a VHD file: a damaged file is refused with an error, never a
//! panic, and whatever opens can be read, checked, listed and written.
//!
//! The first input byte picks the starting point: the input as the whole
//! file, or a small valid dynamic or differencing image (made once per
//! process) with the rest of the input applied as patches, which reaches
//! far deeper than random bytes would.
#![no_main]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rehost_disk::{CreateOptions, ImageFormat, OpenOptions, Subformat};

struct Bases {
    dir: PathBuf,
    dynamic: Vec<u8>,
    child: Vec<u8>,
    parent_mtime: std::time::SystemTime,
}

/// Puts the parent back when something removed the scratch directory
/// (shared tmpfs), with its modification time, which the child's link
/// records.
fn ensure_parent(b: &Bases) {
    let parent = b.dir.join("parent.vhd");
    if !parent.exists() {
        std::fs::create_dir_all(&b.dir).unwrap();
        std::fs::write(&parent, &b.dynamic).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&parent)
            .unwrap()
            .set_modified(b.parent_mtime)
            .unwrap();
    }
}

fn bases() -> &'static Bases {
    static BASES: OnceLock<Bases> = OnceLock::new();
    BASES.get_or_init(|| {
        // tmpfs when there is one: the driver's fsyncs cost nothing there.
        let tmp = Some(PathBuf::from("/dev/shm"))
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = tmp.join(format!("rehost-vhd-open-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let opts = |parent: Option<PathBuf>| CreateOptions {
            format: ImageFormat::Vhd,
            subformat: Subformat::Dynamic,
            size: 256 << 10,
            block_size: Some(4096),
            parent,
        };
        let base = dir.join("parent.vhd");
        rehost_disk::create(&base, &opts(None)).unwrap();
        {
            let d = rehost_disk::open(
                &base,
                &OpenOptions {
                    read_only: false,
                    ..Default::default()
                },
            )
            .unwrap();
            d.write_at(0, &[0x11; 8192]).unwrap();
            d.write_at(64 << 10, &[0x22; 512]).unwrap();
        }
        let child = dir.join("child-template.vhd");
        rehost_disk::create(&child, &opts(Some(base.clone()))).unwrap();
        {
            let d = rehost_disk::open(
                &child,
                &OpenOptions {
                    read_only: false,
                    ..Default::default()
                },
            )
            .unwrap();
            d.write_at(4096, &[0x33; 1024]).unwrap();
        }
        Bases {
            parent_mtime: std::fs::metadata(&base).unwrap().modified().unwrap(),
            dynamic: std::fs::read(&base).unwrap(),
            child: std::fs::read(&child).unwrap(),
            dir,
        }
    })
}

fn patched(base: &[u8], patches: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let mut p = patches;
    while p.len() >= 3 && !out.is_empty() {
        let at = (usize::from(p[0]) << 8 | usize::from(p[1])) * 4 % out.len();
        let len = usize::from(p[2] % 16) + 1;
        let bytes = &p[3..p.len().min(3 + len)];
        for (i, &b) in bytes.iter().enumerate() {
            if at + i < out.len() {
                out[at + i] = b;
            }
        }
        p = &p[(3 + len).min(p.len())..];
    }
    // A patch list ending in 0xff also truncates.
    if patches.last() == Some(&0xff) && patches.len() >= 2 {
        let cut = usize::from(patches[patches.len() - 2]) * 64 % (out.len() + 1);
        out.truncate(cut);
    }
    out
}

fn exercise(path: &Path, seed: &[u8]) {
    let Ok(d) = rehost_disk::vhd::VhdImage::open(
        path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
        &mut |p: &Path| {
            rehost_disk::open(
                p,
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
        },
    ) else {
        return;
    };
    use rehost_disk::{BlockDevice, DiskImage};
    let size = d.geometry().size;
    let mut buf = vec![0u8; 16384];
    for (i, &b) in seed.iter().take(4).enumerate() {
        let off = (u64::from(b) << (i * 3 + 9)) % size.max(1) / 512 * 512;
        let len = (buf.len() as u64).min(size - off) as usize / 512 * 512;
        let _ = d.read_at(off, &mut buf[..len]);
    }
    let _ = d.read_at(size, &mut buf[..512]);
    let _ = d.check();
    let _ = d.allocated_extents();
    let _ = d.info();
    drop(d);
    if let Ok(d) = rehost_disk::vhd::VhdImage::open(
        path,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
        &mut |p: &Path| {
            rehost_disk::open(
                p,
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
        },
    ) {
        let off = u64::from(seed.first().copied().unwrap_or(0)) * 4096 % size.max(1) / 512 * 512;
        if off + 1024 <= size {
            let _ = d.write_at(off, &[0x5a; 1024]);
            let _ = d.flush();
            let mut back = [0u8; 1024];
            if d.read_at(off, &mut back).is_ok() {
                assert_eq!(back, [0x5a; 1024], "a write did not read back");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let b = bases();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (name, bytes) = match mode % 3 {
        0 => ("raw.vhd", rest.to_vec()),
        1 => ("dynamic.vhd", patched(&b.dynamic, rest)),
        _ => ("child.vhd", patched(&b.child, rest)),
    };
    ensure_parent(b);
    let path = b.dir.join(name);
    let _ = std::fs::remove_file(&path);
    let f = std::fs::File::create(&path).unwrap();
    f.write_all_at(&bytes, 0).unwrap();
    drop(f);
    exercise(&path, rest);
});
