//! Boot benchmark: the option-ROM boot (SeaBIOS POST runs a ROM that
//! prints a marker and powers off through ACPI) under rehost and under
//! `qemu-system-x86_64 -enable-kvm -nodefaults -nographic`, several runs
//! each, in one session: every round runs each of the three configurations
//! once and which one goes first rotates round by round. Prints wall time
//! to power-off and peak RSS for each (median, min-max) and the ratios of
//! the medians. Not a test: it asserts only that every
//! run reached the marker and exited cleanly.
//!
//!     cargo build --release -p rehost
//!     cargo run --release -p rehost-tests --bin bench-boot -- [RUNS] [REHOST]
//!
//! RUNS defaults to 5 per configuration; REHOST defaults to target/release/rehost.

use std::process::{Command, Stdio};
use std::time::Instant;

use rehost_tests::bench::{release_rehost, round_order, Spread, DEFAULT_RUNS};
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
    let t = Spread::of(&s.iter().map(|x| x.secs).collect::<Vec<_>>());
    let r = Spread::of(
        &s.iter()
            .map(|x| x.rss_kib as f64 / 1024.0)
            .collect::<Vec<_>>(),
    );
    println!("{name:<37} {:>24} s   {:>20} MiB", t.show(3), r.show(1));
    (t.median, r.median)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    let rehost = release_rehost(args.next());
    let rom = rom("poweroff");
    let rom = rom.to_str().expect("utf-8 path");
    let mem = "64";
    let qemu_args = |same_firmware: bool| {
        let mut v = vec![
            "-enable-kvm",
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-m",
            mem,
        ];
        if same_firmware {
            v.extend(["-bios", "/usr/share/seabios/bios.bin"]);
        }
        v.extend(["-option-rom", rom]);
        v
    };
    let rehost_mem = format!("{mem}M");
    let commands: [(&str, Vec<&str>); 3] = [
        (
            rehost.to_str().expect("utf-8 path"),
            vec![
                "run",
                "--memory",
                &rehost_mem,
                "--com1",
                "stdio",
                "--option-rom",
                rom,
            ],
        ),
        ("qemu-system-x86_64", qemu_args(false)),
        ("qemu-system-x86_64", qemu_args(true)),
    ];
    let mut samples: [Vec<Sample>; 3] = Default::default();
    for round in 0..runs {
        eprintln!("round {}/{runs}", round + 1);
        for side in round_order(round, commands.len()) {
            let (program, args) = &commands[side];
            samples[side].push(measure(Command::new(program).args(args)));
        }
    }
    println!(
        "option-ROM boot to ACPI power-off, {runs} runs each (first configuration rotates), median (min-max):"
    );
    let (t, r) = summary("rehost", &samples[0]);
    let (qt, qr) = summary("qemu (its default firmware)", &samples[1]);
    let (st, sr) = summary("qemu -bios bios.bin (same as rehost)", &samples[2]);
    println!(
        "ratio of medians rehost/qemu: time {:.2} (target <= 0.50), peak RSS {:.2} (target <= 0.25)",
        t / qt,
        r / qr
    );
    println!(
        "ratio of medians rehost/qemu with the same firmware: time {:.2}, peak RSS {:.2}",
        t / st,
        r / sr
    );
}
