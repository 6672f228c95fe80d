//! The NBD benchmark (not a test): rehost's NBD export against `qemu-nbd`
//! on the same data, read by the same third-party client, in one session.
//!
//! ```text
//! cargo build --release -p rehost -p rehost-tests
//! target/release/bench-nbd [--runs 5] [--copy-size 1G] [--map-size 10G] [--dir DIR]
//! ```
//!
//! Two rows:
//! - `nbdcopy URI null:`: a sequential read of a fully written raw image
//!   of `--copy-size` (every byte non-zero, so neither server can report
//!   holes), served read-only by `rehost disk serve` and by
//!   `qemu-nbd -r -f raw -e 8 -t`. nbdcopy picks its own connection count
//!   and request size for each (both servers advertise multi-conn). The
//!   image is read once through each server before timing, so both read
//!   from the host page cache.
//! - `nbdinfo --map=qemu:dirty-bitmap:b URI`: a `--map-size` disk with 1%
//!   of it dirty in 64 KiB granules at seeded random places. rehost: a
//!   sparse raw image whose bitmap `b` (64 KiB) recorded the writes through
//!   rehost's dirty tracker. QEMU: a qcow2 image of the same size with a
//!   persistent bitmap `b` (`qemu-img bitmap --add`, 64 KiB) that recorded
//!   the same writes made by `qemu-io`, served by `qemu-nbd -r -B b`. The
//!   two maps are checked to list the same dirty extents first.
//!
//! Each server is started once per row; each timed run is one client
//! process's wall time. The sides alternate and which goes first rotates
//! each round (tests/src/lib.rs `bench`); medians with min-max and the
//! ratio (qemu time / rehost time: above 1 means rehost is faster).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehost_disk::dirty::{DirtyTracker, TrackerOptions};
use rehost_disk::{BlockDevice, OpenOptions};
use rehost_tests::bench::{release_rehost, round_order, Spread, DEFAULT_RUNS};

const GRANULE: u64 = 64 << 10;

struct Args {
    runs: usize,
    copy_size: u64,
    map_size: u64,
    dir: PathBuf,
    rehost: PathBuf,
}

fn parse_size(s: &str) -> u64 {
    rehost::disk_cmd::parse_size(s).unwrap_or_else(|e| panic!("{e}"))
}

fn args() -> Args {
    let mut a = Args {
        runs: DEFAULT_RUNS,
        copy_size: 1 << 30,
        map_size: 10 << 30,
        dir: rehost_tests::workspace_root().join("target/bench-nbd"),
        rehost: PathBuf::new(),
    };
    let mut rehost = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--copy-size" => a.copy_size = parse_size(&value()),
            "--map-size" => a.map_size = parse_size(&value()),
            "--dir" => a.dir = PathBuf::from(value()),
            "--rehost" => rehost = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    a.rehost = release_rehost(rehost);
    a
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rehost_serve(rehost: &Path, sock: &Path, extra: &[&str], img: &Path) -> (Server, String) {
    let mut child = Command::new(rehost)
        .args(["disk", "serve", "--read-only", "--nbd"])
        .arg(format!("unix:{}", sock.display()))
        .args(extra)
        .arg(img)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rehost disk serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the URI");
    (Server(child), line.trim().to_owned())
}

fn qemu_nbd(sock: &Path, extra: &[&str], img: &Path) -> (Server, String) {
    let _ = std::fs::remove_file(sock);
    let child = Command::new("qemu-nbd")
        .args(["-r", "-t", "-e", "8", "-x", "disk", "-k"])
        .arg(sock)
        .args(extra)
        .arg(img)
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd (apt-get install qemu-utils)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "qemu-nbd did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (
        Server(child),
        format!("nbd+unix:///disk?socket={}", sock.display()),
    )
}

/// Runs a client and returns its wall time in seconds and its stdout.
fn timed(cmd: &str, args: &[&str]) -> (f64, String) {
    let t = Instant::now();
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (apt-get install libnbd-bin)"));
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Interleaved runs of two sides; returns each side's times.
fn ab(runs: usize, mut side: impl FnMut(usize) -> f64) -> [Vec<f64>; 2] {
    let mut t = [Vec::new(), Vec::new()];
    for round in 0..runs {
        for s in round_order(round, 2) {
            t[s].push(side(s));
        }
    }
    t
}

fn row(name: &str, unit: &str, rehost: &[f64], qemu: &[f64], per: impl Fn(f64) -> f64) {
    let r: Vec<f64> = rehost.iter().map(|&x| per(x)).collect();
    let q: Vec<f64> = qemu.iter().map(|&x| per(x)).collect();
    let (rs, qs) = (Spread::of(&r), Spread::of(&q));
    let ratio = Spread::of(qemu).median / Spread::of(rehost).median;
    println!(
        "{name:<44} {unit:<6} rehost {:<26} qemu-nbd {:<26} ratio {ratio:.2}x",
        rs.show(1),
        qs.show(1)
    );
}

fn copy_row(a: &Args) {
    let img = a.dir.join("copy.raw");
    if std::fs::metadata(&img).map(|m| m.len()).ok() != Some(a.copy_size) {
        let mut f = std::fs::File::create(&img).expect("creating the image");
        let chunk: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
            .collect();
        for _ in 0..a.copy_size / chunk.len() as u64 {
            f.write_all(&chunk).expect("writing the image");
        }
    }
    let (_r, ruri) = rehost_serve(&a.rehost, &a.dir.join("r.sock"), &[], &img);
    let (_q, quri) = qemu_nbd(&a.dir.join("q.sock"), &["-f", "raw"], &img);
    let uris = [ruri, quri];
    for u in &uris {
        timed("nbdcopy", &[u, "null:"]);
    }
    let [r, q] = ab(a.runs, |s| timed("nbdcopy", &[&uris[s], "null:"]).0);
    let mib = a.copy_size as f64 / (1 << 20) as f64;
    row(
        &format!("nbdcopy sequential read, {} MiB raw", mib as u64),
        "MiB/s",
        &r,
        &q,
        |t| mib / t,
    );
    row("  (same runs, wall time)", "s", &r, &q, |t| t);
}

/// 1% of the disk in granules at seeded random places, sorted.
fn dirty_granules(size: u64) -> Vec<u64> {
    let n = size / GRANULE / 100;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut set = std::collections::BTreeSet::new();
    while (set.len() as u64) < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        set.insert(x % (size / GRANULE));
    }
    set.into_iter().map(|g| g * GRANULE).collect()
}

fn dirty_map(uri: &str) -> Vec<(u64, u64)> {
    let (_, out) = timed("nbdinfo", &["--json", "--map=qemu:dirty-bitmap:b", uri]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json");
    v.as_array()
        .expect("an array")
        .iter()
        .filter(|e| e["type"].as_u64() == Some(1))
        .map(|e| {
            (
                e["offset"].as_u64().unwrap_or(0),
                e["length"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn map_row(a: &Args) {
    let raw = a.dir.join("map.raw");
    let qcow = a.dir.join("map.qcow2");
    let offsets = dirty_granules(a.map_size);
    for f in [&raw, &qcow] {
        let _ = std::fs::remove_file(f);
        let _ = std::fs::remove_file(rehost_disk::dirty::sidecar_path(f));
    }
    // rehost: a sparse raw image, a bitmap, the writes through the tracker.
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(a.map_size))
        .expect("creating the raw image");
    let status = Command::new(&a.rehost)
        .args(["disk", "bitmap", "add"])
        .arg(&raw)
        .arg("b")
        .status()
        .expect("rehost disk bitmap add");
    assert!(status.success());
    {
        let image = rehost_disk::open(&raw, &OpenOptions::default()).expect("opening the image");
        let t = DirtyTracker::open_image(Arc::from(image), &TrackerOptions::default())
            .expect("opening the tracker");
        let data = vec![0x5au8; GRANULE as usize];
        for &o in &offsets {
            t.write_at(o, &data).expect("writing");
        }
        t.close().expect("closing the tracker");
    }
    // QEMU: a qcow2 image, a persistent bitmap, the same writes by qemu-io.
    let q = qcow.to_str().expect("utf-8 path");
    let size = a.map_size.to_string();
    timed("qemu-img", &["create", "-q", "-f", "qcow2", q, &size]);
    timed("qemu-img", &["bitmap", "--add", "-g", "64K", q, "b"]);
    let mut io = Command::new("qemu-io")
        .args(["-f", "qcow2", q])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-io");
    {
        let mut stdin = io.stdin.take().expect("stdin");
        for &o in &offsets {
            writeln!(stdin, "write -q -P 0x5a {o} {GRANULE}").expect("qemu-io script");
        }
        writeln!(stdin, "quit").expect("qemu-io script");
    }
    assert!(io.wait().expect("qemu-io").success());

    let (_r, ruri) = rehost_serve(&a.rehost, &a.dir.join("r.sock"), &["--bitmap", "b"], &raw);
    let (_q, quri) = qemu_nbd(&a.dir.join("q.sock"), &["-f", "qcow2", "-B", "b"], &qcow);
    let (rm, qm) = (dirty_map(&ruri), dirty_map(&quri));
    let dirty: u64 = rm.iter().map(|e| e.1).sum();
    assert_eq!(rm, qm, "the two servers list different dirty extents");
    assert_eq!(dirty, offsets.len() as u64 * GRANULE);
    let uris = [ruri, quri];
    let map = "--map=qemu:dirty-bitmap:b";
    let [r, q] = ab(a.runs, |s| timed("nbdinfo", &[map, &uris[s]]).0 * 1000.0);
    row(
        &format!(
            "nbdinfo --map dirty bitmap, {} GiB, {} extents",
            a.map_size >> 30,
            rm.len()
        ),
        "ms",
        &r,
        &q,
        |t| t,
    );
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).expect("creating the bench directory");
    println!(
        "bench-nbd: {} runs per side, interleaved; medians (min-max)",
        a.runs
    );
    copy_row(&a);
    map_row(&a);
}
