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

use std::path::{Path, PathBuf};
use std::process::Command;

use rehost_tests::bench::{round_order, Spread, DEFAULT_RUNS};
use rehost_tests::int13_bench::{qemu_command, round, Figures, PASSES};
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

fn rehost_cmd(a: &Args, image: &Path, controller: &str) -> Command {
    let mut c = Command::new(&a.rehost);
    c.args(["run", "--memory", "64M", "--com1", "stdio", "--firmware"])
        .arg(&a.bios)
        .arg("--disk")
        .arg(format!("{},controller={controller}", image.display()));
    c
}

fn qemu_cmd(a: &Args, image: &Path, controller: &str) -> Command {
    let mut c = qemu_command(&a.qemu, &a.bios, image);
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
        let image = a.dir.join(format!("{controller}.raw"));
        let size = ((prog.start_lba + prog.sectors) * 512).next_multiple_of(1 << 20) + (1 << 20);
        let mut sides: [Figures; 2] = Default::default();
        for r in 0..a.runs {
            for side in round_order(r, 2) {
                let (cmd, label): (VmmCommand, &str) = if side == 0 {
                    (rehost_cmd, "rehost")
                } else {
                    (qemu_cmd, "qemu")
                };
                eprintln!("{controller}: round {}/{}: {label}", r + 1, a.runs);
                let done = round(&prog, &image, size, || cmd(&a, &image, controller), label)
                    .unwrap_or_else(|e| panic!("{e}"));
                if let Err(e) = &done.cold_read {
                    eprintln!("{controller}: not cold: {e}");
                }
                sides[side].add(&done, mib as f64);
            }
        }
        for pass in PASSES {
            if pass == "read-cold" {
                if let Some(why) = sides.iter().find_map(|f| f.not_cold.as_ref()) {
                    println!("{controller:<5} {pass:<10} {mib:>5} no cold-read figure: {why}");
                    continue;
                }
            }
            let (r, q) = (
                Spread::of(sides[0].pass(pass)),
                Spread::of(sides[1].pass(pass)),
            );
            println!(
                "{controller:<5} {pass:<10} {mib:>5} {:>24} {:>24} {:>7.2}",
                r.show(2),
                q.show(2),
                r.median / q.median
            );
        }
    }
}
