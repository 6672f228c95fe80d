//! Boot benchmark: the option-ROM boot (SeaBIOS POST runs a ROM that
//! prints a marker and powers off through ACPI) under rehost and under
//! `qemu-system-x86_64 -enable-kvm -nodefaults -nographic`, several runs
//! each, interleaved, in one session. Prints wall time to power-off and peak
//! RSS for both and their ratios. Not a test: it asserts only that every
//! run reached the marker and exited cleanly.
//!
//!     cargo build --release -p rehost
//!     cargo run --release -p rehost-tests --bin bench-boot -- [RUNS] [REHOST]
//!
//! RUNS defaults to 5; REHOST defaults to target/release/rehost.

use std::process::{Command, Stdio};
use std::time::Instant;

use rehost_tests::bench::{median, release_rehost};
use rehost_tests::rom;

const MARKER: &str = "rehost-test-rom: option ROM ran during POST";

struct Sample {
    secs: f64,
    rss_kib: i64,
}

/// Runs a command to completion, returning wall time and peak RSS (from
/// wait4's rusage), and checks it printed the marker and exited 0.
fn measure(cmd: &mut Command) -> Sample {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("reopen"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4 failed");
    std::mem::forget(child);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} did not exit 0 (status {status:#x})"
    );
    let printed = std::fs::read_to_string(out.path()).unwrap_or_default();
    assert!(printed.contains(MARKER), "{cmd:?} did not print the marker");
    Sample {
        secs,
        rss_kib: usage.ru_maxrss,
    }
}

fn summary(name: &str, s: &[Sample]) -> (f64, f64) {
    let t = median(s.iter().map(|x| x.secs).collect());
    let r = median(s.iter().map(|x| x.rss_kib as f64).collect());
    let tmin = s.iter().map(|x| x.secs).fold(f64::MAX, f64::min);
    let tmax = s.iter().map(|x| x.secs).fold(0.0, f64::max);
    println!(
        "{name:<34} {t:>7.3} s (min {tmin:.3}, max {tmax:.3})   {:>7.1} MiB",
        r / 1024.0
    );
    (t, r)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let rehost = release_rehost(args.next());
    let rom = rom("poweroff");
    let rom = rom.to_str().expect("utf-8 path");
    let mem = "64";

    let mut ours = Vec::new();
    let mut qemu = Vec::new();
    let mut qemu_same_fw = Vec::new();
    for i in 0..runs {
        eprintln!("run {}/{runs}", i + 1);
        ours.push(measure(Command::new(&rehost).args([
            "run",
            "--memory",
            &format!("{mem}M"),
            "--com1",
            "stdio",
            "--option-rom",
            rom,
        ])));
        qemu.push(measure(Command::new("qemu-system-x86_64").args([
            "-enable-kvm",
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-m",
            mem,
            "-option-rom",
            rom,
        ])));
        qemu_same_fw.push(measure(Command::new("qemu-system-x86_64").args([
            "-enable-kvm",
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-m",
            mem,
            "-bios",
            "/usr/share/seabios/bios.bin",
            "-option-rom",
            rom,
        ])));
    }
    println!("option-ROM boot to ACPI power-off, {runs} runs each, medians:");
    let (t, r) = summary("rehost", &ours);
    let (qt, qr) = summary("qemu (its default firmware)", &qemu);
    let (st, sr) = summary("qemu -bios bios.bin (same as rehost)", &qemu_same_fw);
    println!(
        "ratio rehost/qemu: time {:.2} (target <= 0.50), peak RSS {:.2} (target <= 0.25)",
        t / qt,
        r / qr
    );
    println!(
        "ratio rehost/qemu with the same firmware: time {:.2}, peak RSS {:.2}",
        t / st,
        r / sr
    );
}
