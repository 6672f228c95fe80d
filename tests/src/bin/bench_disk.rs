//! The disk benchmark: the same four patterns through `rehost disk bench`
//! and through a QEMU reference, on fresh images of each format, in one
//! session, with medians, min-max and their ratio in a table.
//!
//! Run it with a release build (see `tests/bench/disk.sh`):
//!
//! ```text
//! cargo build --release -p rehost -p rehost-tests
//! target/release/bench-disk [--size 1G] [--rand-bytes 64M] [--seed 1] [--runs 5]
//!                           [--formats raw,vhd,vhdx] [--dir DIR] [--tracking]
//! ```
//!
//! `--tracking` measures dirty tracking's cost instead: seq-write and
//! rand-write-4k through `rehost disk bench` on fresh images without a
//! bitmap and with one (`rehost disk bitmap add`, default granularity and
//! activity log), alternating as below; the ratio is tracked / untracked
//! medians, and `paired` the median of each round's two runs' ratio
//! (which cancels drift across rounds). Each side's time is its process's
//! wall time, so the tracked side's includes what tracking costs per
//! session (reading the sidecar, and the persist at close); adding the
//! bitmap is not timed. Every run starts after `sync`, so no run pays for
//! the writeback of the one before it (the page cache's dirty data is the
//! largest source of spread in write figures). `own` is the time rehost
//! counts in its tracker (recording each write: its bits, and activity log
//! updates with their syncs; persists, without the image's own flush), as
//! a share of the tracked run's wall time: the cost of tracking read directly, where the
//! throughput ratio carries the noise of the host's writeback. Without
//! `--runs`, `--tracking` runs 9 per side.
//!
//! The references, named in every row:
//! - sequential patterns: `qemu-img bench` (QEMU's in-process block
//!   benchmark, no command parser), queue depth 1 as rehost, 1 MiB requests
//!   from offset 0, writes filled with the same byte and flushed at the end
//!   (`--flush-interval` = the request count).
//! - random 4 KiB patterns: `qemu-io` reading one batched script on its
//!   standard input, every command quiet (`-q`, no per-request report), the
//!   same offsets `rehost_disk::bench::requests` draws from the seed, a
//!   flush at the end of writes. What its command loop costs (parsing,
//!   buffer allocation and fill, the generic block layer) is measured by
//!   running the identical script against QEMU's `null-co` driver in the
//!   same round, and subtracted: the reference figure is the block stack's
//!   time, which if anything favours QEMU.
//!
//! Both sides use the host page cache (`-t writeback`) and their times are
//! each process's wall time (open, requests, final flush, close), measured
//! the same way; rehost's own in-process figure is shown too. The sides
//! alternate and which one goes first rotates each round; each round makes
//! fresh images for each side (seq-write, seq-read and rand-read-4k run in
//! that order on one, rand-write-4k, allocating, on another). Every read
//! pass starts with the page cache dropped and the image checked (mincore)
//! to be out of it; if that cannot be done the row says so instead of
//! printing a figure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rehost_disk::bench::{self, Pattern};
use rehost_tests::bench::{make_cold, round_order, Spread, DEFAULT_RUNS};

struct Args {
    size: u64,
    rand_bytes: u64,
    seed: u64,
    runs: usize,
    formats: Vec<String>,
    dir: PathBuf,
    rehost: PathBuf,
    tracking: bool,
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
        runs: DEFAULT_RUNS,
        formats: vec!["raw".into(), "vhd".into(), "vhdx".into()],
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-disk"),
        rehost: exe.with_file_name("rehost"),
        tracking: false,
    };
    let mut runs_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--size" => a.size = parse_size(&value()),
            "--rand-bytes" => a.rand_bytes = parse_size(&value()),
            "--seed" => a.seed = value().parse().expect("seed"),
            "--runs" => {
                a.runs = value().parse().expect("--runs N");
                runs_given = true;
            }
            "--formats" => a.formats = value().split(',').map(str::to_owned).collect(),
            "--dir" => a.dir = PathBuf::from(value()),
            "--rehost" => a.rehost = PathBuf::from(value()),
            "--tracking" => a.tracking = true,
            "-h" | "--help" => {
                println!("bench-disk [--size 1G] [--rand-bytes 64M] [--seed N] [--runs N] [--formats raw,vhd,vhdx] [--dir DIR] [--rehost PATH] [--tracking]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if a.tracking && !runs_given {
        a.runs = 9;
    }
    assert!(a.runs > 0, "--runs must be at least 1");
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

/// Drops the page cache and checks `img` left it; then loads both
/// programs again so that no run's time includes reading its own code.
fn cold(a: &Args, img: &Path) -> Result<(), String> {
    make_cold(&[img])?;
    for (tool, arg) in [
        (a.rehost.as_path(), "--version"),
        (Path::new("qemu-io"), "--version"),
        (Path::new("qemu-img"), "--version"),
    ] {
        let _ = Command::new(tool).arg(arg).stdout(Stdio::null()).status();
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Rehost,
    Qemu,
}

/// The reference a pattern is measured against.
fn reference(p: Pattern) -> &'static str {
    match p {
        Pattern::SeqRead | Pattern::SeqWrite => "qemu-img bench -d 1",
        Pattern::StrideRead4k | Pattern::StrideWrite4k => "qemu-img bench -d 1 -S 64K",
        Pattern::RandRead4k | Pattern::RandWrite4k => "qemu-io script - null-co",
    }
}

fn qemu_format(fmt: &str) -> &str {
    match fmt {
        "vhd" => "vpc",
        other => other,
    }
}

/// The number after `"key":` in rehost's one-line JSON, NaN if absent.
fn json_number(out: &str, key: &str) -> f64 {
    let tag = format!("\"{key}\":");
    out.find(&tag)
        .and_then(|at| {
            out[at + tag.len()..]
                .split([',', '}'])
                .next()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// One pass of rehost: MiB/s over the process's wall time, and its own
/// in-process figure.
fn rehost_run(a: &Args, img: &Path, p: Pattern, bytes: u64) -> (f64, f64) {
    let (wall, out) = rehost_pass(a, img, p, bytes);
    (wall, json_number(&out, "mib_per_sec"))
}

/// One pass of `rehost disk bench --json`: MiB/s over the process's wall
/// time and what it printed.
fn rehost_pass(a: &Args, img: &Path, p: Pattern, bytes: u64) -> (f64, String) {
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
    (bytes as f64 / 1048576.0 / secs, out)
}

/// Seconds `qemu-io` takes to run `script` on the image `target` (given
/// as `-f FMT PATH`, or `--image-opts` for the null driver).
fn qemu_io_secs(target: &[String], script: &str) -> f64 {
    let start = Instant::now();
    let mut child = Command::new("qemu-io")
        .args(target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-io (apt-get install qemu-utils)");
    // Written from another thread: qemu-io prints a prompt per command,
    // which this one reads meanwhile.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let script = script.to_owned();
    let feeder = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let out = child.wait_with_output().expect("waiting for qemu-io");
    feeder
        .join()
        .expect("the script writer thread")
        .expect("writing qemu-io's script");
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "qemu-io {target:?} failed: {out:?}");
    // Quiet commands print nothing but the prompt unless they fail.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !said.contains("failed") && !said.contains("rror"),
        "qemu-io {target:?} reported: {said}"
    );
    secs
}

/// One pass of the reference: MiB/s.
fn qemu_run(a: &Args, img: &Path, fmt: &str, p: Pattern, bytes: u64) -> f64 {
    let qfmt = qemu_format(fmt);
    match p {
        Pattern::SeqRead | Pattern::SeqWrite | Pattern::StrideRead4k | Pattern::StrideWrite4k => {
            let req = p.request_size();
            let count = bytes.div_ceil(req);
            // Sequential: each request where the last ended; strided: one
            // every STRIDE bytes. Either way the same offsets as rehost's
            // (bench::requests), with no wrap at these sizes.
            let step = if req == bench::SEQ_REQUEST {
                req
            } else {
                bench::STRIDE
            };
            let mut cmd = Command::new("qemu-img");
            cmd.args(["bench", "-f", qfmt, "-t", "writeback", "-d", "1"])
                .arg("-c")
                .arg(count.to_string())
                .arg("-s")
                .arg(req.to_string())
                .arg("-S")
                .arg(step.to_string())
                .args(["-o", "0"]);
            if p.is_write() {
                cmd.arg("-w")
                    .arg(format!("--pattern={}", bench::FILL))
                    .arg(format!("--flush-interval={count}"));
            }
            cmd.arg(img);
            let start = Instant::now();
            let out = check(&mut cmd);
            let secs = start.elapsed().as_secs_f64();
            assert!(
                out.contains("Run completed"),
                "qemu-img bench printed: {out}"
            );
            bytes as f64 / 1048576.0 / secs
        }
        Pattern::RandRead4k | Pattern::RandWrite4k => {
            let reqs = bench::requests(p, bytes, a.size, a.seed);
            let mut script = bench::qemu_io_commands(&reqs, p.is_write()).join("\n");
            if p.is_write() {
                script.push_str("\nflush");
            }
            script.push('\n');
            let on_image = [
                "-f".to_string(),
                qfmt.to_string(),
                "-t".to_string(),
                "writeback".to_string(),
                img.display().to_string(),
            ];
            let secs = qemu_io_secs(&on_image, &script);
            let null = [
                "--image-opts".to_string(),
                format!("driver=null-co,size={}", a.size),
            ];
            let front_end = qemu_io_secs(&null, &script);
            bytes as f64 / 1048576.0 / (secs - front_end).max(1e-6)
        }
    }
}

/// Every run of one format and pattern.
#[derive(Default)]
struct Row {
    rehost: Vec<f64>,
    rehost_inner: Vec<f64>,
    qemu: Vec<f64>,
    /// Why a read pass could not be made cold (then no figure is shown).
    not_cold: Option<String>,
}

/// `--tracking`: the same writes without and with a dirty bitmap.
fn tracking(a: &Args) {
    println!(
        "dirty tracking cost: disk {} bytes, rand-write-4k {} bytes, seed {}, {} runs per side (sides alternate, first side rotates; `sync` before every run)",
        a.size, a.rand_bytes, a.seed, a.runs
    );
    println!("MiB/s over each process's wall time: median (min-max); ratio = tracked / untracked medians; paired = median of each round's tracked / untracked;");
    println!("own = the time rehost counts in its tracker (recording writes: bits and activity log updates with their syncs; persists without the image's flush) as a share of the tracked run's wall time, median; log = activity log updates per run, median");
    println!(
        "{:<5} {:<13} {:>26} {:>26} {:>7} {:>7} {:>7} {:>5}",
        "fmt", "pattern", "untracked MiB/s", "tracked MiB/s", "ratio", "paired", "own", "log"
    );
    for fmt in &a.formats {
        for p in [Pattern::SeqWrite, Pattern::RandWrite4k] {
            let bytes = if p == Pattern::SeqWrite {
                a.size
            } else {
                a.rand_bytes
            };
            let mut runs = [Vec::new(), Vec::new()];
            let mut paired = Vec::new();
            let mut own = Vec::new();
            let mut log = Vec::new();
            for round in 0..a.runs {
                let mut this = [f64::NAN; 2];
                for side in round_order(round, 2) {
                    let img = fresh(a, fmt, "tracking");
                    let sidecar = rehost_disk::dirty::sidecar_path(&img);
                    let _ = std::fs::remove_file(&sidecar);
                    if side == 1 {
                        check(
                            Command::new(&a.rehost)
                                .args(["disk", "bitmap", "add"])
                                .arg(&img)
                                .arg("b1"),
                        );
                    }
                    // The last run's writeback (and the new image's) is
                    // on disk before this run starts, for both sides.
                    check(&mut Command::new("sync"));
                    eprintln!(
                        "{fmt} {}: round {}/{}: {}",
                        p.name(),
                        round + 1,
                        a.runs,
                        ["untracked", "tracked"][side]
                    );
                    let start = Instant::now();
                    let (wall, out) = rehost_pass(a, &img, p, bytes);
                    let secs = start.elapsed().as_secs_f64();
                    if side == 1 {
                        let t = out.find("\"tracking\":").map_or("", |at| &out[at..]);
                        own.push(json_number(t, "seconds") / secs * 100.0);
                        log.push(json_number(t, "log_updates"));
                    }
                    runs[side].push(wall);
                    this[side] = wall;
                    let _ = std::fs::remove_file(&img);
                    let _ = std::fs::remove_file(&sidecar);
                }
                paired.push(this[1] / this[0]);
            }
            let (off, on) = (Spread::of(&runs[0]), Spread::of(&runs[1]));
            println!(
                "{fmt:<5} {:<13} {:>26} {:>26} {:>6.3}x {:>6.3}x {:>6.2}% {:>5.0}",
                p.name(),
                off.show(1),
                on.show(1),
                on.median / off.median,
                Spread::of(&paired).median,
                Spread::of(&own).median,
                Spread::of(&log).median,
            );
        }
    }
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).expect("creating the bench directory");
    assert!(
        a.rehost.exists(),
        "{} not found: cargo build --release -p rehost",
        a.rehost.display()
    );
    if a.tracking {
        tracking(&a);
        return;
    }
    println!(
        "disk {} bytes, random runs {} bytes of 4 KiB requests, seed {}, {} runs per side (sides alternate, first side rotates);",
        a.size, a.rand_bytes, a.seed, a.runs
    );
    println!("MiB/s over each process's wall time: median (min-max); reads start with the page cache dropped");
    println!(
        "{:<5} {:<13} {:<25} {:>26} {:>9} {:>26} {:>7}",
        "fmt", "pattern", "reference", "rehost MiB/s", "(in-proc)", "reference MiB/s", "ratio"
    );
    let patterns = [
        Pattern::SeqWrite,
        Pattern::SeqRead,
        Pattern::StrideRead4k,
        Pattern::StrideWrite4k,
        Pattern::RandRead4k,
        Pattern::RandWrite4k,
    ];
    for fmt in &a.formats {
        let mut rows: Vec<Row> = patterns.iter().map(|_| Row::default()).collect();
        for round in 0..a.runs {
            for side in round_order(round, 2) {
                let side = [Side::Rehost, Side::Qemu][side];
                let tag = if side == Side::Rehost {
                    "rehost"
                } else {
                    "qemu"
                };
                eprintln!("{fmt}: round {}/{}: {tag}", round + 1, a.runs);
                let seq = fresh(&a, fmt, &format!("{tag}-seq"));
                let rand = fresh(&a, fmt, &format!("{tag}-rand"));
                for (i, &p) in patterns.iter().enumerate() {
                    let img = if p == Pattern::RandWrite4k {
                        &rand
                    } else {
                        &seq
                    };
                    let bytes = match p {
                        Pattern::RandRead4k
                        | Pattern::RandWrite4k
                        | Pattern::StrideRead4k
                        | Pattern::StrideWrite4k => a.rand_bytes,
                        _ => a.size,
                    };
                    if !p.is_write() {
                        if let Err(e) = cold(&a, img) {
                            eprintln!("{fmt} {}: not cold: {e}", p.name());
                            rows[i].not_cold = Some(e);
                            continue;
                        }
                    }
                    match side {
                        Side::Rehost => {
                            let (wall, inner) = rehost_run(&a, img, p, bytes);
                            rows[i].rehost.push(wall);
                            rows[i].rehost_inner.push(inner);
                        }
                        Side::Qemu => rows[i].qemu.push(qemu_run(&a, img, fmt, p, bytes)),
                    }
                }
                for img in [seq, rand] {
                    let _ = std::fs::remove_file(img);
                }
            }
        }
        for (p, row) in patterns.iter().zip(&rows) {
            if let Some(why) = &row.not_cold {
                println!(
                    "{fmt:<5} {:<13} {:<25} no cold-read figure: {why}",
                    p.name(),
                    reference(*p)
                );
                continue;
            }
            let (r, q) = (Spread::of(&row.rehost), Spread::of(&row.qemu));
            println!(
                "{fmt:<5} {:<13} {:<25} {:>26} {:>9.1} {:>26} {:>6.2}x",
                p.name(),
                reference(*p),
                r.show(1),
                Spread::of(&row.rehost_inner).median,
                q.show(1),
                r.median / q.median
            );
        }
    }
}
