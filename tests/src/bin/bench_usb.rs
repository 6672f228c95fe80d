//! The USB disk benchmark: the same real-mode INT 13h program
//! (resources/storage/int13-rw.asm) writes and then reads a range of a raw
//! image through SeaBIOS's USB host controller and mass-storage drivers,
//! under rehost and under QEMU, on the same image, in one session. It
//! prints MiB/s for each and the ratio rehost / QEMU.
//!
//! Run it with a release build (see `tests/bench/usb.sh`):
//!
//! ```text
//! cargo build --release -p rehost -p rehost-tests
//! target/release/bench-usb [--controller uhci|ehci|xhci]... [--mib 16] [--chunk 16]
//!                          [--runs 5] [--dir DIR]
//! ```
//!
//! `--controller` may be given more than once (default: uhci). rehost
//! runs `--usb-controller C --usb disk:IMG --boot usb`; QEMU the matching
//! PCI function (`piix3-usb-uhci`, `usb-ehci`, `qemu-xhci`) with
//! `usb-storage` on it, booted first. A controller the rehost build does
//! not offer (its `run --help` lists the values of `--usb-controller`) is
//! reported as "rehost: controller not available"; QEMU still runs, so
//! its figures are there to compare with later. Both VMMs run the same
//! SeaBIOS: Debian's /usr/share/seabios/bios.bin, or bios-256k.bin for
//! xHCI (the 128 KiB build has no xHCI driver), 64 MiB of RAM, the host
//! page cache (QEMU's default cache=writeback; rehost's raw images are
//! plain files), and QEMU gets `-enable-kvm -nodefaults -nographic`.
//!
//! `--chunk` is the sectors per INT 13h call (default 16, 8 KiB), the same
//! on both sides. QEMU 7.2's UHCI fails runs here with `int13: FAIL read
//! ah=0c` (SeaBIOS's "bad track": its USB mass-storage request failed), at
//! a different LBA each time, in warm and cold reads (never in writes),
//! with 32 KiB and 8 KiB calls alike; the longer the read, the likelier.
//! SeaBIOS's debug port then says `Timeout on wait_pipe (... s=18400000)`:
//! QEMU completed a bulk TD with Stalled set, which halts the queue, and
//! SeaBIOS gave up waiting for it. A failed run is therefore run again (at
//! most [`ATTEMPTS`] times in all) and the failures are printed with the
//! figures, per side; a side that fails every attempt has no figures, and
//! a smaller `--mib` gives QEMU a better chance of a figure.
//!
//! Each round runs both VMMs (which one goes first swaps every round); the
//! figures are those of bench-storage: the write, a warm read (the data
//! just written is in the host page cache for both), and after the page
//! cache is dropped and the image checked (mincore) to be out of it, a
//! cold read by a read-only build of the program. Medians with min-max;
//! a cold read that could not be made cold is not printed. A side whose
//! run fails is reported with the reason instead of figures.

use std::path::{Path, PathBuf};
use std::process::Command;

use rehost_tests::bench::{release_rehost, round_order, Spread, DEFAULT_RUNS};
use rehost_tests::int13_bench::{qemu_command, round, Figures, PASSES};
use rehost_tests::storage::Int13Program;

struct Args {
    controllers: Vec<String>,
    mib: u64,
    chunk: u64,
    runs: usize,
    dir: PathBuf,
    rehost: PathBuf,
    qemu: String,
    bios_dir: PathBuf,
}

const CONTROLLERS: [&str; 3] = ["uhci", "ehci", "xhci"];

fn args() -> Args {
    let mut a = Args {
        controllers: Vec::new(),
        mib: 16,
        chunk: 16,
        runs: DEFAULT_RUNS,
        dir: std::env::temp_dir().join("rehost-bench-usb"),
        rehost: PathBuf::new(),
        qemu: "qemu-system-x86_64".into(),
        bios_dir: PathBuf::from("/usr/share/seabios"),
    };
    let mut rehost = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--controller" => {
                let c = value();
                assert!(
                    CONTROLLERS.contains(&c.as_str()),
                    "--controller {c}: expected uhci, ehci or xhci"
                );
                a.controllers.push(c);
            }
            "--mib" => a.mib = value().parse().expect("--mib N"),
            "--chunk" => {
                a.chunk = value().parse().expect("--chunk N");
                assert!((1..=127).contains(&a.chunk), "--chunk: 1 to 127 sectors");
            }
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--dir" => a.dir = value().into(),
            "--rehost" => rehost = Some(value()),
            "--qemu" => a.qemu = value(),
            "--bios-dir" => a.bios_dir = value().into(),
            other => panic!("unknown option {other} (see the header of bench_usb.rs)"),
        }
    }
    if a.controllers.is_empty() {
        a.controllers.push("uhci".into());
    }
    a.rehost = release_rehost(rehost);
    a
}

/// SeaBIOS with a driver for `controller`.
fn bios(a: &Args, controller: &str) -> PathBuf {
    a.bios_dir.join(if controller == "xhci" {
        "bios-256k.bin"
    } else {
        "bios.bin"
    })
}

/// Whether this rehost build offers `--usb-controller controller`: its
/// `run --help` lists the possible values.
fn rehost_has(a: &Args, controller: &str) -> bool {
    let Ok(out) = Command::new(&a.rehost).args(["run", "--help"]).output() else {
        return false;
    };
    let help = String::from_utf8_lossy(&out.stdout);
    let Some(at) = help.find("--usb-controller") else {
        return false;
    };
    // The option's own text runs to the next option.
    let text = &help[at + 2..];
    let text = &text[..text.find("\n  -").unwrap_or(text.len())];
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == controller)
}

fn rehost_cmd(a: &Args, image: &Path, controller: &str) -> Command {
    let mut c = Command::new(&a.rehost);
    c.args(["run", "--memory", "64M", "--com1", "stdio", "--firmware"])
        .arg(bios(a, controller))
        .args(["--usb-controller", controller, "--boot", "usb", "--usb"])
        .arg(format!("disk:{}", image.display()));
    c
}

fn qemu_cmd(a: &Args, image: &Path, controller: &str) -> Command {
    let hc = match controller {
        "uhci" => "piix3-usb-uhci",
        "ehci" => "usb-ehci",
        _ => "qemu-xhci",
    };
    let mut c = qemu_command(&a.qemu, &bios(a, controller), image);
    c.args([
        "-device",
        &format!("{hc},id=usb"),
        "-device",
        "usb-storage,drive=d0,bus=usb.0,bootindex=0",
    ]);
    c
}

/// Runs of one side and round before the side counts as failed.
const ATTEMPTS: usize = 3;

/// How one VMM is started on an image with a controller.
type VmmCommand = fn(&Args, &Path, &str) -> Command;

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).expect("creating the bench directory");
    println!(
        "USB benchmark: SeaBIOS INT 13h extended write then read on a USB disk, {} sectors per call, {} run(s) per VMM (first VMM swaps each round), MiB/s median (min-max)",
        a.chunk, a.runs
    );
    println!(
        "{:<5} {:<10} {:>5} {:>24} {:>24} {:>7}",
        "ctrl", "pass", "MiB", "rehost MiB/s", "QEMU MiB/s", "ratio"
    );
    for controller in &a.controllers {
        let controller = controller.as_str();
        let mib = a.mib;
        let prog = Int13Program {
            sectors: mib * 2048,
            chunk: a.chunk,
            verify: false,
            ..Default::default()
        };
        let image = a.dir.join(format!("{controller}.raw"));
        let size = ((prog.start_lba + prog.sectors) * 512).next_multiple_of(1 << 20) + (1 << 20);
        let has_rehost = rehost_has(&a, controller);
        let mut sides: [Figures; 2] = Default::default();
        // Why a side has no figures: a run of it failed (it is not run
        // again) or rehost lacks the controller.
        let mut failed: [Option<String>; 2] = [None, None];
        // Every failed attempt, per side.
        let mut retried: [Vec<String>; 2] = Default::default();
        if !has_rehost {
            failed[0] = Some("controller not available".into());
        }
        for r in 0..a.runs {
            for side in round_order(r, 2) {
                if failed[side].is_some() {
                    continue;
                }
                let (cmd, label): (VmmCommand, &str) = if side == 0 {
                    (rehost_cmd, "rehost")
                } else {
                    (qemu_cmd, "qemu")
                };
                eprintln!("{controller}: round {}/{}: {label}", r + 1, a.runs);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match round(&prog, &image, size, || cmd(&a, &image, controller), label) {
                        Ok(done) => {
                            if let Err(e) = &done.cold_read {
                                eprintln!("{controller}: not cold: {e}");
                            }
                            sides[side].add(&done, mib as f64);
                            break;
                        }
                        Err(e) => {
                            eprintln!("{controller}: attempt {attempt}: {e}");
                            let first = e.lines().next().unwrap_or_default();
                            let fail = e.lines().find(|l| l.contains("FAIL")).unwrap_or_default();
                            let why = format!("{first} {fail}").trim().to_owned();
                            retried[side].push(why.clone());
                            if attempt == ATTEMPTS {
                                failed[side] = Some(format!("no figures: {why}"));
                                break;
                            }
                        }
                    }
                }
            }
        }
        for side in 0..2 {
            let name = ["rehost", "QEMU"][side];
            if let Some(why) = &failed[side] {
                println!("{controller:<5} {name}: {why}");
            } else if let Some(last) = retried[side].last() {
                println!(
                    "{controller:<5} {name}: {} failed run(s) run again; last: {last}",
                    retried[side].len()
                );
            }
        }
        for pass in PASSES {
            if pass == "read-cold" {
                if let Some(why) = sides.iter().find_map(|f| f.not_cold.as_ref()) {
                    println!("{controller:<5} {pass:<10} {mib:>5} no cold-read figure: {why}");
                    continue;
                }
            }
            let show = |side: usize| match &failed[side] {
                Some(_) => "-".to_owned(),
                None => Spread::of(sides[side].pass(pass)).show(2),
            };
            let ratio = match failed {
                [None, None] => format!(
                    "{:.2}",
                    Spread::of(sides[0].pass(pass)).median / Spread::of(sides[1].pass(pass)).median
                ),
                _ => "-".into(),
            };
            println!(
                "{controller:<5} {pass:<10} {mib:>5} {:>24} {:>24} {:>7}",
                show(0),
                show(1),
                ratio
            );
        }
    }
}
