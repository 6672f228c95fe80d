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
//! target/release/bench-storage [--ide-mib 4] [--ahci-mib 64] [--runs 5] [--dir DIR]
//! ```
//!
//! Both VMMs run the same SeaBIOS (Debian's /usr/share/seabios/bios.bin),
//! 64 MiB of RAM, and the host page cache (QEMU's default cache=writeback;
//! rehost's raw images are plain files). QEMU gets `-enable-kvm -nodefaults
//! -nographic`; its IDE is the PIIX3 IDE function its `pc` machine always
//! has at 00:01.1 (what `-device piix3-ide` creates), its AHCI
//! `-device ich9-ahci`. Times come from the host: the moments the program's
//! "write start", "write done", "read start" and "read done" lines arrive
//! on the serial console. Each round runs both VMMs (which one goes first
//! swaps every round): a write-then-read run gives the write figure and a
//! warm read (the data just written is in the host page cache for both);
//! then the page cache is dropped, the image checked (mincore) to be out
//! of it, and a read-only run of the same program gives the cold read.
//! Figures are medians with min-max; a cold read that could not be made
//! cold is not printed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rehost_tests::bench::{make_cold, round_order, Spread, DEFAULT_RUNS};
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
        runs: DEFAULT_RUNS,
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

/// Seconds of the write pass (if the program wrote) and the read pass of
/// one run.
#[derive(Debug, Clone, Copy)]
struct Passes {
    write: Option<f64>,
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
    let wrote = marks.iter().any(|(_, l)| l.contains("int13: write start"));
    Passes {
        write: wrote.then(|| (at("int13: write done") - at("int13: write start")).as_secs_f64()),
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

/// How one VMM is started on an image with a controller.
type VmmCommand = fn(&Args, &Path, &str) -> Command;

/// Every figure of one VMM on one controller, in MiB/s.
#[derive(Default)]
struct Figures {
    write: Vec<f64>,
    warm_read: Vec<f64>,
    cold_read: Vec<f64>,
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).expect("creating the bench directory");
    println!(
        "storage benchmark: SeaBIOS INT 13h extended write then read, {} run(s) per VMM (first VMM swaps each round), MiB/s median (min-max)",
        a.runs
    );
    println!(
        "{:<5} {:<10} {:>5} {:>24} {:>24} {:>7}",
        "ctrl", "pass", "MiB", "rehost MiB/s", "QEMU MiB/s", "ratio"
    );
    for (controller, mib) in [("ide", a.ide_mib), ("ahci", a.ahci_mib)] {
        let prog = Int13Program {
            sectors: mib * 2048,
            verify: false,
            ..Default::default()
        };
        let reader = Int13Program {
            read_only: true,
            ..prog
        };
        let image = a.dir.join(format!("{controller}.raw"));
        let size = ((prog.start_lba + prog.sectors) * 512).next_multiple_of(1 << 20) + (1 << 20);
        // Both programs fit before start_lba: the read-only one is put at
        // LBA 0 of the written image before each cold read.
        let reader_code = reader.build();
        let mut sides: [Figures; 2] = Default::default();
        let mut not_cold: Option<String> = None;
        for round in 0..a.runs {
            for side in round_order(round, 2) {
                let (cmd, label): (VmmCommand, &str) = if side == 0 {
                    (rehost_cmd, "rehost")
                } else {
                    (qemu_cmd, "qemu")
                };
                eprintln!("{controller}: round {}/{}: {label}", round + 1, a.runs);
                prog.raw_disk(&image, size);
                let rw = timed_run(cmd(&a, &image, controller), label);
                let f = &mut sides[side];
                f.write
                    .push(mib as f64 / rw.write.expect("the write pass ran"));
                f.warm_read.push(mib as f64 / rw.read);
                {
                    use std::os::unix::fs::FileExt;
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&image)
                        .expect("opening the bench image");
                    file.write_all_at(&reader_code, 0)
                        .expect("writing the read-only program");
                }
                match make_cold(&[&image]) {
                    Ok(()) => {
                        let ro = timed_run(cmd(&a, &image, controller), label);
                        assert!(ro.write.is_none(), "{label}: the read-only run wrote");
                        f.cold_read.push(mib as f64 / ro.read);
                    }
                    Err(e) => {
                        eprintln!("{controller}: not cold: {e}");
                        not_cold = Some(e);
                    }
                }
            }
        }
        for pass in ["write", "read-warm", "read-cold"] {
            let pick = |f: &'_ Figures| -> Vec<f64> {
                match pass {
                    "write" => f.write.clone(),
                    "read-warm" => f.warm_read.clone(),
                    _ => f.cold_read.clone(),
                }
            };
            if pass == "read-cold" {
                if let Some(why) = &not_cold {
                    println!("{controller:<5} {pass:<10} {mib:>5} no cold-read figure: {why}");
                    continue;
                }
            }
            let (r, q) = (Spread::of(&pick(&sides[0])), Spread::of(&pick(&sides[1])));
            println!(
                "{controller:<5} {pass:<10} {mib:>5} {:>24} {:>24} {:>7.2}",
                r.show(2),
                q.show(2),
                r.median / q.median
            );
        }
    }
}
