//! P2V check benchmark: `rehost p2v check` (release build) on a 20 GiB
//! sparse VHDX holding the real SYSTEM hive of ../shared/samples/hives
//! (built by resources/p2v/windows-disk.sh on a sparse raw file, then
//! `qemu-img convert -O vhdx`), against the third-party way of reading the
//! same facts: `qemu-img convert` of the VHDX's partition to a raw file
//! (part of the reference's cost: ntfscat reads only raw NTFS volumes),
//! `ntfscat` of Windows\System32\config\SYSTEM, and `hivexget` of
//! `Select\Current` and each storage driver's `Start`. Prints both times
//! (median, min-max, seconds), the ratio of medians and whether the check
//! is under 2 s. Not a test: it asserts only that both sides read the same
//! values. Page cache warm (the image is read once before timing).
//!
//!     cargo build --release -p rehost -p rehost-tests
//!     target/release/bench-p2v [RUNS] [REHOST]
//!
//! RUNS defaults to 5 per side; the sides alternate and which one goes
//! first rotates every round. REHOST defaults to target/release/rehost.
//! The work directory is target/bench-p2v (about 200 MB on disk).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rehost_tests::bench::{release_rehost, round_order, Spread, DEFAULT_RUNS};
use rehost_tests::workspace_root;

const DRIVERS: [&str; 6] = [
    "atapi", "intelide", "pciide", "msahci", "storahci", "iaStorV",
];
const PART_MIB: u64 = 20 * 1024;
/// windows-disk.sh puts partition 1 at sector 2048.
const PART_OFFSET: u64 = 2048 * 512;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn samples() -> PathBuf {
    std::env::var_os("REHOST_HIVES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/samples/hives"))
}

/// Builds the 20 GiB sparse VHDX once (kept between invocations).
fn image(dir: &Path) -> PathBuf {
    let vhdx = dir.join("win7-20g.vhdx");
    if vhdx.exists() {
        return vhdx;
    }
    let system = dir.join("SYSTEM");
    let hive = run(Command::new("xz")
        .arg("-dc")
        .arg(samples().join("SYSTEM.xz")));
    std::fs::write(&system, hive).expect("writing the hive");
    let raw = dir.join("win7-20g.raw");
    run(Command::new("sh")
        .arg(workspace_root().join("resources/p2v/windows-disk.sh"))
        .arg(&raw)
        .arg(&system)
        .arg(format!("size={PART_MIB}"))
        .env("REHOST_HIVES", samples()));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vhdx"])
        .arg(&raw)
        .arg(&vhdx));
    std::fs::remove_file(&raw).ok();
    vhdx
}

/// Driver -> Start, and Select\Current, from `rehost p2v check --json`.
fn rehost_side(rehost: &Path, vhdx: &Path) -> Vec<(String, String)> {
    let out = Command::new(rehost)
        .args(["p2v", "check", "--json"])
        .arg(vhdx)
        .output()
        .expect("running rehost");
    // Exit 1: the sample hive does not boot on AHCI (msahci Start = 3).
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("rehost JSON");
    let mut got = Vec::new();
    for f in j["findings"].as_array().expect("findings") {
        if f["check"] == "control_set" {
            let detail = f["detail"].as_str().unwrap_or_default();
            // "Select\Current = 001: ControlSet001"
            let current = detail.rsplit(": ").next().unwrap_or_default();
            got.push(("Select\\Current".into(), current.to_string()));
        }
        if f["check"] == "storage_driver" {
            for s in f["evidence"]["drivers"].as_array().into_iter().flatten() {
                got.push((
                    s["service"].as_str().unwrap_or_default().to_string(),
                    s["Start"].to_string(),
                ));
            }
        }
    }
    got
}

/// The same through qemu-img, ntfscat and hivexget.
fn reference_side(dir: &Path, vhdx: &Path) -> Vec<(String, String)> {
    let part = dir.join("part.raw");
    let hive = dir.join("SYSTEM.ntfscat");
    let opts = format!(
        "driver=raw,offset={PART_OFFSET},size={},file.driver=vhdx,file.file.driver=file,file.file.filename={}",
        PART_MIB << 20,
        vhdx.display()
    );
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw", "--image-opts", &opts])
        .arg(&part));
    let data = run(Command::new("ntfscat")
        .arg(&part)
        .arg("/Windows/System32/config/SYSTEM"));
    std::fs::write(&hive, data).expect("writing the extracted hive");
    std::fs::remove_file(&part).ok();
    // A key the hive lacks (storahci before Windows 8) reads as "absent".
    let get = |key: &str, value: &str| {
        let out = Command::new("hivexget")
            .arg(&hive)
            .arg(key)
            .arg(value)
            .output()
            .expect("running hivexget");
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            "absent".to_string()
        }
    };
    let current = get("\\Select", "Current");
    let set = format!("ControlSet{:0>3}", current);
    let mut got = vec![("Select\\Current".to_string(), set)];
    for d in DRIVERS {
        let start = get(&format!("\\ControlSet001\\Services\\{d}"), "Start");
        got.push((d.to_string(), start));
    }
    got
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs = args
        .next()
        .map(|r| r.parse().expect("RUNS is a number"))
        .unwrap_or(DEFAULT_RUNS);
    let rehost = release_rehost(args.next());
    let dir = workspace_root().join("target/bench-p2v");
    std::fs::create_dir_all(&dir).expect("creating target/bench-p2v");
    let vhdx = image(&dir);
    let on_disk = std::fs::metadata(&vhdx).expect("the image").len();
    println!(
        "image: {} ({} GiB partition, {} MiB VHDX file)",
        vhdx.display(),
        PART_MIB / 1024,
        on_disk >> 20
    );

    // Both sides must read the same values: every driver rehost judged has
    // the Start hivexget reads.
    let ours = rehost_side(&rehost, &vhdx);
    let theirs = reference_side(&dir, &vhdx);
    let mut compared = 0;
    for (name, value) in &ours {
        let other = theirs.iter().find(|(n, _)| n == name);
        if let Some((_, v)) = other {
            assert_eq!(value, v, "{name}: rehost says {value}, hivexget {v}");
            compared += 1;
        }
    }
    assert!(
        compared >= 3,
        "too few values compared: {ours:?} vs {theirs:?}"
    );
    println!("values agree ({compared}): {ours:?}");

    let mut times = [Vec::new(), Vec::new()];
    for round in 0..runs {
        for side in round_order(round, 2) {
            let t = Instant::now();
            if side == 0 {
                rehost_side(&rehost, &vhdx);
            } else {
                reference_side(&dir, &vhdx);
            }
            times[side].push(t.elapsed().as_secs_f64());
        }
    }
    let ours = Spread::of(&times[0]);
    let theirs = Spread::of(&times[1]);
    println!("runs per side: {runs}, alternating, first side rotating; seconds, median (min-max)");
    println!("rehost p2v check --json:                 {}", ours.show(3));
    println!(
        "qemu-img convert + ntfscat + hivexget x{}: {}",
        DRIVERS.len() + 1,
        theirs.show(3)
    );
    println!(
        "ratio of medians (reference / rehost):   {:.2}",
        theirs.median / ours.median
    );
    println!(
        "p2v check under 2 s: {} (median {:.3} s, max {:.3} s)",
        if ours.max < 2.0 {
            "yes"
        } else if ours.median < 2.0 {
            "median only"
        } else {
            "no"
        },
        ours.median,
        ours.max
    );
}
