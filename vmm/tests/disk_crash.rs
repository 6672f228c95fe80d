//! Crash safety: a writer process (`rehost disk bench --pattern
//! rand-write-4k` with a flush every few requests, logging each completed
//! flush to a side file) doing allocating writes to dynamic and
//! differencing images is SIGKILLed at random instants. Afterwards the image
//! opens, `rehost disk check` is clean, QEMU reads it where it can, every
//! write acknowledged before the last completed flush is present, and every
//! other touched block holds either its old content or one of the writes
//! aimed at it (never anything else). A round counts only when the writer
//! completed at least one flush before the kill (an early kill is tried
//! again, a writer that fails on its own fails the test): an untouched
//! image would pass every check. Only kills, never power loss, so the
//! files live on tmpfs when it has room (see `kill_only_scratch_dir`).

mod disk_common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use disk_common::*;
use rehost_disk::bench::{self, Pattern};
use rehost_disk::{ImageFormat, OpenOptions};

const SIZE: &str = "1G";
const BYTES: u64 = 16 << 20;
const ROUNDS: u64 = 10;

/// splitmix64 for kill delays and seeds, printed for reproduction.
fn next(state: &mut u64) -> u64 {
    let mut r = bench::Rng::new(*state);
    *state = r.next_u64();
    *state
}

fn last_flushed(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("flushed ")?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn read_block(img: &Path, off: u64) -> Vec<u8> {
    let d = rehost_disk::open(
        img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    d.read_at(off, &mut buf).unwrap();
    buf
}

fn crash_rounds(format: ImageFormat, differencing: bool) {
    let dir = kill_only_scratch_dir();
    if !format_works(format, dir.path()) {
        return;
    }
    let fmt = format.name();
    let e = ext(format);
    let base = dir.path().join(format!("base.{e}"));
    let pristine = dir.path().join(format!("pristine.{e}"));
    rehost_ok(&[
        &"disk",
        &"create",
        &"-f",
        &fmt,
        &"--block-size",
        &"1M",
        &base,
        &SIZE,
    ]);
    if differencing {
        // The parent holds data where the child will and will not write.
        write(
            &base,
            &[(0, vec![0x3c; 8 << 20]), (200 << 20, vec![0x3d; 16 << 20])],
        );
        rehost_ok(&[&"disk", &"create", &"--parent", &base, &pristine]);
    } else {
        std::fs::copy(&base, &pristine).unwrap();
    }
    let size = 1u64 << 30;
    let base_sha = sha256_file(&base);
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("{fmt} differencing={differencing}: random state {state}");
    let img = dir.path().join(format!("work.{e}"));
    let log = dir.path().join("flushes.log");
    let writer = |seed: u64| {
        let _ = std::fs::remove_file(&img);
        let _ = std::fs::remove_file(&log);
        std::fs::copy(&pristine, &img).unwrap();
        Command::new(REHOST)
            .args(["disk", "bench", "--pattern", "rand-write-4k", "--bytes"])
            .arg(BYTES.to_string())
            .arg("--seed")
            .arg(seed.to_string())
            .args(["--flush-every", "8", "--flush-log"])
            .arg(&log)
            .arg(&img)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // How long an uninterrupted run takes here, so that kills land all
    // along it.
    let start = std::time::Instant::now();
    assert!(writer(1).wait().unwrap().success());
    let run_ms = start.elapsed().as_millis() as u64;
    for round in 0..ROUNDS {
        // A round counts only if the writer really wrote: it completed at
        // least one flush before the kill (or finished). A writer that
        // failed on its own fails the test; one killed before its first
        // flush is started again with another delay, a few times at most.
        let mut attempt = 0;
        let (seed, delay_ms, status, flushed) = loop {
            attempt += 1;
            let seed = next(&mut state) % 1_000_000;
            let delay_ms = 5 + next(&mut state) % (run_ms * 9 / 10).max(1);
            let mut child = writer(seed);
            std::thread::sleep(Duration::from_millis(delay_ms));
            let _ = child.kill(); // SIGKILL
            let out = child.wait_with_output().unwrap();
            let flushed = last_flushed(&log);
            let killed = out.status.signal() == Some(libc::SIGKILL);
            assert!(
                killed || out.status.success(),
                "{fmt} differencing={differencing} round {round} seed {seed}: the writer failed before it was killed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            if !killed {
                let total = BYTES.div_ceil(bench::RAND_REQUEST);
                assert_eq!(
                    flushed, total,
                    "{fmt} differencing={differencing} round {round} seed {seed}: the writer finished but logged {flushed} of {total} requests flushed"
                );
            }
            if flushed > 0 {
                break (seed, delay_ms, out.status, flushed);
            }
            assert!(
                attempt < 5,
                "{fmt} differencing={differencing} round {round}: in {attempt} attempts the writer never completed a flush before it was killed (last: seed {seed}, {delay_ms} ms)"
            );
            eprintln!(
                "{fmt} differencing={differencing} round {round} seed {seed}: killed after {delay_ms} ms before its first flush; again"
            );
        };
        let what = format!(
            "{fmt} differencing={differencing} round {round} seed {seed} killed after {delay_ms} ms ({status}), {flushed} requests flushed"
        );
        eprintln!("{what}");

        // Opens and checks clean, without being written first.
        let (code, out, err) = rehost(&[&"disk", &"check", &img]);
        assert_eq!(code, 0, "{what}: check: {out}{err}");

        // Every acknowledged write present; every touched block holds its
        // old content or one of the writes aimed at it.
        let reqs = bench::requests(Pattern::RandWrite4k, BYTES, size, seed);
        let mut by_offset: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, &(off, _)) in reqs.iter().enumerate() {
            by_offset.entry(off).or_default().push(i);
        }
        let d = rehost_disk::open(
            &img,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let old = rehost_disk::open(
            &pristine,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut old_buf = vec![0u8; 4096];
        let mut want = vec![0u8; 4096];
        for (&off, writers) in &by_offset {
            d.read_at(off, &mut buf).unwrap();
            // Acknowledged: the last write before the last flush, or later.
            let last_acked = writers
                .iter()
                .copied()
                .filter(|&i| (i as u64) < flushed)
                .max();
            let mut ok = false;
            for &i in writers
                .iter()
                .filter(|&&i| last_acked.is_none_or(|a| i >= a))
            {
                bench::request_data(i as u64, seed, &mut want);
                ok |= buf == want;
            }
            if last_acked.is_none() {
                old.read_at(off, &mut old_buf).unwrap();
                ok |= buf == old_buf;
            }
            assert!(
                ok,
                "{what}: block at {off} holds neither its acknowledged write {last_acked:?} nor a later one (first bytes {:02x?})",
                &buf[..16]
            );
        }
        drop(d);
        drop(old);

        // Writable again: a crashed image takes new allocations cleanly.
        write(&img, &[((100 << 20) + 8192, vec![0xee; 4096])]);
        assert_eq!(read_block(&img, (100 << 20) + 8192), vec![0xee; 4096]);
        let (code, out, err) = rehost(&[&"disk", &"check", &img]);
        assert_eq!(code, 0, "{what}: check after a new write: {out}{err}");
        if !differencing && have_qemu() {
            if format == ImageFormat::Vhdx {
                let o = Command::new("qemu-img")
                    .args(["check", "-f", "vhdx"])
                    .arg(&img)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{what}: qemu-img check: {o:?}");
            }
            // QEMU reads the same bytes rehost does.
            let flat = dir.path().join("flat.raw");
            let _ = std::fs::remove_file(&flat);
            rehost_ok(&[&"disk", &"convert", &"-O", &"raw", &img, &flat]);
            assert_qemu_reads_as(format, &img, &flat, &what);
        }
    }
    assert_eq!(sha256_file(&base), base_sha, "the parent changed");
}

#[test]
fn vhd_dynamic_survives_sigkill() {
    crash_rounds(ImageFormat::Vhd, false);
}

#[test]
fn vhd_differencing_survives_sigkill() {
    crash_rounds(ImageFormat::Vhd, true);
}

#[test]
fn vhdx_dynamic_survives_sigkill() {
    crash_rounds(ImageFormat::Vhdx, false);
}

#[test]
fn vhdx_differencing_survives_sigkill() {
    crash_rounds(ImageFormat::Vhdx, true);
}
