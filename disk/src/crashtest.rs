//! Test-only: the crash-everywhere harness the image formats' tests share.
//!
//! A workload of writes, flushes and discards runs on a fresh image and is
//! stopped at its `n`-th file operation, for every `n` until it completes,
//! in each of the three ways of [`Crash`]. After each crash the image must
//! open, pass `check`, hold every write acknowledged before the last
//! completed flush, and hold for every other sector either its flushed
//! content or something written to it since; and it must stay writable.
//!
//! `REHOST_CRASH_SUBSETS=K` tries K different subsets of the undurable
//! changes at every crash point instead of one (a longer run).

use std::path::{Path, PathBuf};

use crate::hostfile::sim::{Crash, Sim};
use crate::{BlockDevice, DiskImage, OpenOptions};

/// One step of a workload.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Write(u64, Vec<u8>),
    Flush,
    /// Reads as zeros once flushed (the formats that implement discard).
    Discard(u64, u64),
}

/// A workload for an 8 MiB disk of 1 MiB blocks: writes inside and across
/// blocks, partial sectors of blocks written before, new blocks after a
/// flush, `middle` after the second flush (a discard for the formats that
/// implement it), and a write left unflushed at the end.
pub(crate) fn blocks_workload(middle: Op) -> Vec<Op> {
    vec![
        Op::Write(0, pattern(1, 4096)),
        Op::Write(3 << 20, pattern(2, 8192)),
        Op::Flush,
        Op::Write((1 << 20) - 512, pattern(3, 1024)),
        Op::Write(4096, pattern(4, 512)),
        Op::Flush,
        middle,
        Op::Write(6 << 20, pattern(5, 4096)),
        Op::Flush,
        Op::Write(7 << 20, pattern(6, 4096)),
    ]
}

/// Scratch space, on tmpfs when it has room: the crashes are simulated in
/// the process, so real stable storage is not needed, and the many fsyncs
/// cost nothing there.
pub(crate) fn tmp() -> tempfile::TempDir {
    crate::scratch::tmpfs_dir(1 << 30).unwrap_or_else(|| tempfile::tempdir().unwrap())
}

pub(crate) fn open(path: &Path, read_only: bool) -> Box<dyn DiskImage> {
    crate::open(
        path,
        &OpenOptions {
            read_only,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The whole content of a device.
pub(crate) fn flat(d: &dyn BlockDevice) -> Vec<u8> {
    let mut b = vec![0u8; d.geometry().size as usize];
    d.read_at(0, &mut b).unwrap();
    b
}

/// The same pseudo-random bytes for the same seed.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `workload` with a crash at every file operation in every mode (see
/// the module documentation). Returns the number of crash states checked.
pub(crate) fn crash_everywhere(make_image: impl Fn(&Path) -> PathBuf, workload: &[Op]) -> u64 {
    let mut n = 0u64;
    let mut states = 0u64;
    'points: loop {
        for (mode, seed) in Crash::at_point(n) {
            let dir = tmp();
            let path = make_image(dir.path());
            let base = flat(&*open(&path, true));
            let disk = open(&path, false);
            let sim = Sim::start(Some(n));
            let mut durable = base.clone();
            let mut since: Vec<(u64, Vec<u8>)> = Vec::new();
            for op in workload {
                let r = match op {
                    Op::Write(off, data) => {
                        since.push((*off, data.clone()));
                        disk.write_at(*off, data)
                    }
                    Op::Flush => disk.flush().map(|_| {
                        for (off, data) in since.drain(..) {
                            durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
                        }
                    }),
                    Op::Discard(off, len) => {
                        since.push((*off, vec![0; *len as usize]));
                        disk.discard(*off, *len)
                    }
                };
                if r.is_err() {
                    break;
                }
            }
            let crashed = sim.crashed();
            let ctx = format!("{}: crash at file operation {n} ({mode:?})", path.display());
            mode.end(sim, seed, disk);
            states += 1;
            let after = open(&path, true);
            assert_eq!(after.check().unwrap(), vec![], "{ctx}");
            let got = flat(&*after);
            drop(after);
            let sector = 512usize;
            for s in 0..got.len() / sector {
                let r = s * sector..(s + 1) * sector;
                if got[r.clone()] == durable[r.clone()] {
                    continue;
                }
                let ok = since.iter().any(|(off, data)| {
                    let (o, e) = (*off as usize, *off as usize + data.len());
                    o <= r.start && r.end <= e && data[r.start - o..r.end - o] == got[r.clone()]
                });
                assert!(
                    ok,
                    "{ctx}: sector {s} holds neither its flushed data nor data written since"
                );
            }
            // The file stays usable read-write.
            let again = open(&path, false);
            again.write_at(0, &[0xEE; 512]).unwrap();
            again.flush().unwrap();
            drop(again);
            assert_eq!(
                open(&path, true).check().unwrap(),
                vec![],
                "{ctx}, then reopened"
            );
            if !crashed {
                break 'points;
            }
        }
        n += 1;
    }
    assert!(
        n >= workload.len() as u64,
        "the workload of {} steps performed only {n} file operations",
        workload.len()
    );
    states
}
