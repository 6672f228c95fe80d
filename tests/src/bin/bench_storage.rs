//! The storage benchmark: the same real-mode INT 13h program
//! (resources/storage/int13-rw.asm) writes and then reads a range of a raw
//! image through SeaBIOS's disk driver, under rehost and under QEMU, on the
//! same image, in one session, for the PIIX IDE and the ICH9 AHCI
//! controller. It prints MiB/s for each and the ratio rehost / QEMU.
//!
//! Run it with a release build (see `tests/bench/storage.sh`):
//!
//! ```text
//! cargo build --release -p rehost -p rehost-tests
//! target/release/bench-storage [--ide-mib 4] [--ahci-mib 64] [--runs 3] [--dir DIR]
//! ```
//!
//! Both VMMs run the same SeaBIOS (Debian's /usr/share/seabios/bios.bin),
//! 64 MiB of RAM, and the host page cache (QEMU's default cache=writeback;
//! rehost's raw images are plain files). QEMU gets `-enable-kvm -nodefaults
//! -nographic`; its IDE is the PIIX3 IDE function its `pc` machine always
//! has at 00:01.1 (what `-device piix3-ide` creates), its AHCI
//! `-device ich9-ahci`. Times come from the host: the moments the program's
//! "write start", "write done", "read start" and "read done" lines arrive
//! on the serial console. Each figure is the median of the runs, which
//! alternate which VMM goes first.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rehost_tests::bench::median;
use rehost_tests::storage::Int13Program;

struct Args {
    ide_mib: u64,
    ahci_mib: u64,
    runs: usize,
    dir: PathBuf,
    rehost: PathBuf,
    qemu: String,
    bios: PathBuf,
}

fn args() -> Args {
    let exe = std::env::current_exe().expect("current_exe");
    let mut a = Args {
        ide_mib: 4,
        ahci_mib: 64,
        runs: 3,
        dir: std::env::temp_dir().join("rehost-bench-storage"),
        rehost: exe.with_file_name("rehost"),
        qemu: "qemu-system-x86_64".into(),
        bios: PathBuf::from("/usr/share/seabios/bios.bin"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--ide-mib" => a.ide_mib = value().parse().expect("--ide-mib N"),
            "--ahci-mib" => a.ahci_mib = value().parse().expect("--ahci-mib N"),
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--dir" => a.dir = value().into(),
            "--rehost" => a.rehost = value().into(),
            "--qemu" => a.qemu = value(),
            "--bios" => a.bios = value().into(),
            other => panic!("unknown option {other} (see the header of bench_storage.rs)"),
        }
    }
    a
}

/// Seconds of the write and the read pass of one run.
#[derive(Debug, Clone, Copy)]
struct Passes {
    write: f64,
    read: f64,
}

/// Runs a VMM to completion, timing the program's console lines.
fn timed_run(mut cmd: Command, label: &str) -> Passes {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {label}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).into_owned();
            let _ = tx.send((Instant::now(), text.clone()));
            all.push_str(&text);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut marks: Vec<(Instant, String)> = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => marks.push(m),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
            }
        }
    }
    let status = child.wait().expect("wait");
    let out = reader.join().unwrap_or_default();
    let at = |what: &str| {
        marks
            .iter()
            .find(|(_, l)| l.contains(what))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("{label}: no {what:?} line (exit {status}); console:\n{out}"))
    };
    assert!(
        out.contains("int13: ok") && !out.contains("FAIL"),
        "{label}: the program failed (exit {status}); console:\n{out}"
    );
    Passes {
        write: (at("int13: write done") - at("int13: write start")).as_secs_f64(),
        read: (at("int13: read done") - at("int13: read start")).as_secs_f64(),
    }
}

fn rehost_cmd(a: &Args, image: &Path, controller: &str) -> Command {
    let mut c = Command::new(&a.rehost);
    c.args(["run", "--memory", "64M", "--com1", "stdio", "--firmware"])
        .arg(&a.bios)
        .arg("--disk")
        .arg(format!("{},controller={controller}", image.display()));
    c
}

fn qemu_cmd(a: &Args, image: &Path, controller: &str) -> Command {
    let mut c = Command::new(&a.qemu);
    c.args([
        "-enable-kvm",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-m",
        "64",
        "-bios",
    ])
    .arg(&a.bios)
    .arg("-drive")
    .arg(format!("file={},format=raw,if=none,id=d0", image.display()));
    match controller {
        "ide" => c.args(["-device", "ide-hd,drive=d0,bus=ide.0"]),
        _ => c.args([
            "-device",
            "ich9-ahci,id=ahci",
            "-device",
            "ide-hd,drive=d0,bus=ahci.0",
        ]),
    };
    c
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).expect("creating the bench directory");
    println!(
        "storage benchmark: SeaBIOS INT 13h extended write then read, {} run(s) each, median MiB/s",
        a.runs
    );
    println!(
        "{:<6} {:<6} {:>8} {:>14} {:>12} {:>8}",
        "ctrl", "pass", "MiB", "rehost MiB/s", "QEMU MiB/s", "ratio"
    );
    for (controller, mib) in [("ide", a.ide_mib), ("ahci", a.ahci_mib)] {
        let prog = Int13Program {
            sectors: mib * 2048,
            verify: false,
            ..Default::default()
        };
        let image = a.dir.join(format!("{controller}.raw"));
        let size = ((prog.start_lba + prog.sectors) * 512).next_multiple_of(1 << 20) + (1 << 20);
        prog.raw_disk(&image, size);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for run in 0..a.runs {
            let order = if run % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for rehost in order {
                if rehost {
                    ours.push(timed_run(rehost_cmd(&a, &image, controller), "rehost"));
                } else {
                    theirs.push(timed_run(qemu_cmd(&a, &image, controller), "qemu"));
                }
            }
        }
        for (pass, pick) in [("write", 0), ("read", 1)] {
            let rate = |v: &[Passes]| {
                median(
                    v.iter()
                        .map(|p| mib as f64 / if pick == 0 { p.write } else { p.read })
                        .collect(),
                )
            };
            let (r, q) = (rate(&ours), rate(&theirs));
            println!(
                "{:<6} {:<6} {:>8} {:>14.2} {:>12.2} {:>8.2}",
                controller,
                pass,
                mib,
                r,
                q,
                r / q
            );
        }
    }
}
