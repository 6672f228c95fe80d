//! The disk benchmark: the same four patterns through `rehost disk bench`
//! and through `qemu-io`, on the same fresh image of each format, in one
//! session, with both throughputs and their ratio in a table.
//!
//! Run it with a release build (see `tests/bench/disk.sh`):
//!
//! ```text
//! cargo build --release -p rehost -p rehost-tests
//! target/release/bench-disk [--size 1G] [--rand-bytes 64M] [--seed 1] [--dir DIR]
//! ```
//!
//! Both tools get identical requests: 1 MiB sequential requests from 0, and
//! 4 KiB requests at the offsets `rehost_disk::bench::requests` draws from
//! the seed (fed to qemu-io as a command file on its standard input). Both
//! use the host page cache (`qemu-io -t writeback`) and end writing runs
//! with a flush. Throughput is bytes over the wall time of the whole
//! process, measured the same way for both; rehost's own in-process figure
//! is shown too. seq-write, seq-read and rand-read-4k run in that order on
//! one fresh image; rand-write-4k (allocating) on another fresh one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rehost_disk::bench::{self, Pattern};

struct Args {
    size: u64,
    rand_bytes: u64,
    seed: u64,
    dir: PathBuf,
    rehost: PathBuf,
}

fn parse_size(s: &str) -> u64 {
    let (num, shift) = match s.chars().last() {
        Some('K') | Some('k') => (&s[..s.len() - 1], 10),
        Some('M') | Some('m') => (&s[..s.len() - 1], 20),
        Some('G') | Some('g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("bad size {s}"))
        << shift
}

fn args() -> Args {
    let exe = std::env::current_exe().expect("current_exe");
    let mut a = Args {
        size: 1 << 30,
        rand_bytes: 64 << 20,
        seed: 1,
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-disk"),
        rehost: exe.with_file_name("rehost"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--size" => a.size = parse_size(&value()),
            "--rand-bytes" => a.rand_bytes = parse_size(&value()),
            "--seed" => a.seed = value().parse().expect("seed"),
            "--dir" => a.dir = PathBuf::from(value()),
            "--rehost" => a.rehost = PathBuf::from(value()),
            "-h" | "--help" => {
                println!("bench-disk [--size 1G] [--rand-bytes 64M] [--seed N] [--dir DIR] [--rehost PATH]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn check(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text
}

/// A fresh dynamic (or raw) image made by rehost, which both tools use.
fn fresh(a: &Args, format: &str, name: &str) -> PathBuf {
    let path = a.dir.join(format!("{name}.{format}"));
    let _ = std::fs::remove_file(&path);
    check(
        Command::new(&a.rehost)
            .args(["disk", "create", "-f", format])
            .args(if format == "raw" {
                vec![]
            } else {
                vec!["--subformat", "dynamic"]
            })
            .arg(&path)
            .arg(a.size.to_string()),
    );
    path
}

fn drop_caches(rehost: &Path) {
    // Best effort: reads then come from the image file, not memory.
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    // That also evicted both programs and qemu-io's libraries; load them
    // again so that neither run's time includes reading its own code.
    for (tool, arg) in [(rehost, "--version"), (Path::new("qemu-io"), "--version")] {
        let _ = Command::new(tool).arg(arg).stdout(Stdio::null()).status();
    }
}

struct Run {
    wall_mib_s: f64,
    iops: f64,
    inner_mib_s: Option<f64>,
}

fn rehost_run(a: &Args, img: &Path, p: Pattern, bytes: u64) -> Run {
    if !p.is_write() {
        drop_caches(&a.rehost);
    }
    let start = Instant::now();
    let out = check(
        Command::new(&a.rehost)
            .args(["disk", "bench", "--json", "--pattern", p.name(), "--bytes"])
            .arg(bytes.to_string())
            .arg("--seed")
            .arg(a.seed.to_string())
            .arg(img),
    );
    let secs = start.elapsed().as_secs_f64();
    let field = |k: &str| -> Option<f64> {
        let at = out.find(&format!("\"{k}\":"))? + k.len() + 3;
        out[at..].split([',', '}']).next()?.parse().ok()
    };
    let reqs = bytes.div_ceil(p.request_size()) as f64;
    Run {
        wall_mib_s: bytes as f64 / 1048576.0 / secs,
        iops: reqs / secs,
        inner_mib_s: field("mib_per_sec"),
    }
}

fn qemu_run(a: &Args, img: &Path, fmt: &str, p: Pattern, bytes: u64) -> Run {
    if !p.is_write() {
        drop_caches(&a.rehost);
    }
    let reqs = bench::requests(p, bytes, a.size, a.seed);
    let mut script = bench::qemu_io_commands(&reqs, p.is_write()).join("\n");
    if p.is_write() {
        script.push_str("\nflush");
    }
    script.push('\n');
    let qfmt = match fmt {
        "vhd" => "vpc",
        other => other,
    };
    let start = Instant::now();
    let mut child = Command::new("qemu-io")
        .args(["-f", qfmt, "-t", "writeback"])
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-io (apt-get install qemu-utils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "qemu-io failed: {out:?}");
    Run {
        wall_mib_s: bytes as f64 / 1048576.0 / secs,
        iops: reqs.len() as f64 / secs,
        inner_mib_s: None,
    }
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).unwrap();
    assert!(
        a.rehost.exists(),
        "{} not found: cargo build --release -p rehost",
        a.rehost.display()
    );
    println!(
        "disk {} bytes, random runs {} bytes of 4 KiB requests, seed {}; MiB/s over each process's wall time",
        a.size, a.rand_bytes, a.seed
    );
    println!(
        "{:<6} {:<14} {:>12} {:>12} {:>12} {:>11} {:>11} {:>8}",
        "format",
        "pattern",
        "rehost MiB/s",
        "(in-proc)",
        "qemu-io MiB/s",
        "rehost IOPS",
        "qemu IOPS",
        "ratio"
    );
    for fmt in ["raw", "vhd", "vhdx"] {
        let mut rows = Vec::new();
        let r_img = fresh(&a, fmt, "rehost-seq");
        let q_img = fresh(&a, fmt, "qemu-seq");
        for p in [Pattern::SeqWrite, Pattern::SeqRead, Pattern::RandRead4k] {
            let bytes = if p == Pattern::RandRead4k {
                a.rand_bytes
            } else {
                a.size
            };
            let r = rehost_run(&a, &r_img, p, bytes);
            let q = qemu_run(&a, &q_img, fmt, p, bytes);
            rows.push((p, r, q));
        }
        let r_img2 = fresh(&a, fmt, "rehost-rand");
        let q_img2 = fresh(&a, fmt, "qemu-rand");
        let r = rehost_run(&a, &r_img2, Pattern::RandWrite4k, a.rand_bytes);
        let q = qemu_run(&a, &q_img2, fmt, Pattern::RandWrite4k, a.rand_bytes);
        rows.push((Pattern::RandWrite4k, r, q));
        for (p, r, q) in rows {
            println!(
                "{:<6} {:<14} {:>12.1} {:>12} {:>12.1} {:>11.0} {:>11.0} {:>7.2}x",
                fmt,
                p.name(),
                r.wall_mib_s,
                r.inner_mib_s.map(|v| format!("{v:.1}")).unwrap_or_default(),
                q.wall_mib_s,
                r.iops,
                q.iops,
                r.wall_mib_s / q.wall_mib_s
            );
        }
        for img in [r_img, q_img, r_img2, q_img2] {
            let _ = std::fs::remove_file(img);
        }
    }
}
