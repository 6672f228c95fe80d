//! The SIGKILL campaign for dirty tracking: `rehost disk bench` and
//! `rehost run` (SeaBIOS's own AHCI driver writing through INT 13h) are
//! killed at random moments while they write an image with a bitmap: raw,
//! dynamic and fixed VHD, dynamic and fixed VHDX, and a differencing VHDX
//! child over a parent (which must stay byte-identical). After each kill, every 512-byte sector that differs from the
//! image as it was when the bitmap was added must lie in a dirty granule
//! (0 missed), the image must pass `rehost disk check`, and the
//! over-reported fraction is printed.
//!
//! `REHOST_CRASH_RUNS=N` sets the kills per format and writer (default 2,
//! to keep CI short; the figures quoted for issue 14 come from N=200).
//! `REHOST_CRASH_SEED` repeats a campaign's random moments;
//! `REHOST_CRASH_FORMATS=vhd,vhdx` limits the formats (raw, vhd, vhdx,
//! vhd-fixed, vhdx-fixed, vhdx-diff).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rehost_tests::storage::{rehost_disk, require_tools, scratch, sha256, Int13Program};
use rehost_tests::{kvm_available, Running};
use serde_json::Value;

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
const ALL_FORMATS: &str = "raw,vhd,vhdx,vhd-fixed,vhdx-fixed,vhdx-diff";

fn formats() -> Vec<String> {
    std::env::var("REHOST_CRASH_FORMATS")
        .unwrap_or_else(|_| ALL_FORMATS.into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn runs() -> usize {
    std::env::var("REHOST_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// xorshift64*, seeded from the environment or the clock (printed).
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("REHOST_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{test}: REHOST_CRASH_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The image's whole content, through its chain.
fn flat(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("flat.raw");
    let _ = std::fs::remove_file(&out);
    rehost_disk(REHOST, &["convert", "-O", "raw", s(image), s(&out)]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// An image under test, and for a differencing child its parent with
/// the parent's sha256 when the child was made.
struct Image {
    path: PathBuf,
    parent: Option<(PathBuf, String)>,
}

impl Image {
    /// The parent, if any, is byte-identical to what it was.
    fn assert_parent_unchanged(&self) {
        if let Some((parent, sha)) = &self.parent {
            assert_eq!(
                &sha256(parent),
                sha,
                "{}: the parent changed",
                parent.display()
            );
        }
    }
}

/// Makes `base.raw`'s content into a fresh image of `format` (one of
/// [`ALL_FORMATS`]; a differencing child's content comes from its parent).
fn image_of(base: &Path, format: &str, dir: &Path) -> Image {
    let (ext, subformat) = match format {
        "raw" | "vhd" | "vhdx" => (format, None),
        "vhd-fixed" => ("vhd", Some("fixed")),
        "vhdx-fixed" => ("vhdx", Some("fixed")),
        "vhdx-diff" => ("vhdx", None),
        other => panic!("REHOST_CRASH_FORMATS: unknown format {other:?} (known: {ALL_FORMATS})"),
    };
    let img = dir.join(format!("disk-{format}.{ext}"));
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(dir.join(format!("disk-{format}.{ext}.rehost-bitmaps")));
    if format == "raw" {
        std::fs::copy(base, &img).unwrap();
        return Image {
            path: img,
            parent: None,
        };
    }
    let made = if format == "vhdx-diff" {
        dir.join("parent.vhdx")
    } else {
        img.clone()
    };
    let _ = std::fs::remove_file(&made);
    let mut args = vec!["convert", "-O", ext];
    if let Some(sub) = subformat {
        args.extend(["--subformat", sub]);
    }
    args.extend([s(base), s(&made)]);
    rehost_disk(REHOST, &args);
    if format != "vhdx-diff" {
        return Image {
            path: img,
            parent: None,
        };
    }
    rehost_disk(REHOST, &["create", "--parent", s(&made), s(&img)]);
    let info = rehost_disk(REHOST, &["info", s(&img)]);
    assert!(info.contains("differencing"), "{info}");
    let sha = sha256(&made);
    Image {
        path: img,
        parent: Some((made, sha)),
    }
}

/// A fresh image of `format` holding `base.raw`'s content, with bitmap
/// `b1`, and that content.
fn tracked_image(base: &Path, format: &str, dir: &Path) -> (Image, Vec<u8>) {
    let img = image_of(base, format, dir);
    if let Some(sub) = format.strip_suffix("-fixed") {
        let info = rehost_disk(REHOST, &["info", s(&img.path)]);
        assert!(info.contains("fixed"), "{sub}: {info}");
    }
    rehost_disk(REHOST, &["bitmap", "add", s(&img.path), "b1"]);
    let before = flat(&img.path, dir);
    (img, before)
}

/// Totals over one format's kills.
#[derive(Default)]
struct Tally {
    kills: usize,
    changed_sectors: u64,
    dirty_bytes: u64,
    resync: usize,
    worst_over: f64,
}

/// What [`verify`] found in one image.
struct Seen {
    changed_sectors: u64,
    dirty_bytes: u64,
    state: String,
}

/// Checks one killed image against its content when the bitmap was added:
/// no changed sector outside the dirty extents, a clean check, and an
/// unchanged parent.
fn verify(img: &Image, before: &[u8], dir: &Path, t: &mut Tally) -> Seen {
    img.assert_parent_unchanged();
    let image = &img.path;
    rehost_disk(REHOST, &["check", s(image)]);
    let out = rehost_disk(REHOST, &["bitmap", "list", "--json", "--extents", s(image)]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    let b = &v["bitmaps"][0];
    let dirty: Vec<(u64, u64)> = b["extents"]
        .as_array()
        .unwrap_or_else(|| panic!("no extents: {out}"))
        .iter()
        .map(|e| (e[0].as_u64().unwrap(), e[1].as_u64().unwrap()))
        .collect();
    let after = flat(image, dir);
    assert_eq!(after.len(), before.len());
    let mut changed = 0u64;
    for (i, (a, o)) in after.chunks(512).zip(before.chunks(512)).enumerate() {
        if a != o {
            changed += 1;
            let at = i as u64 * 512;
            assert!(
                dirty.iter().any(|&(s, l)| at >= s && at < s + l),
                "{}: sector {i} changed but is not dirty ({} dirty extents, state {})",
                image.display(),
                dirty.len(),
                b["state"]
            );
        }
    }
    let dirty_bytes = b["dirty_bytes"].as_u64().unwrap();
    if b["state"] == "resync-required" {
        t.resync += 1;
    }
    t.kills += 1;
    t.changed_sectors += changed;
    t.dirty_bytes += dirty_bytes;
    if changed > 0 {
        let over = (dirty_bytes as f64 - (changed * 512) as f64) / (changed * 512) as f64;
        t.worst_over = t.worst_over.max(over);
    }
    Seen {
        changed_sectors: changed,
        dirty_bytes,
        state: b["state"].as_str().unwrap_or_default().to_owned(),
    }
}

/// After a writer ran to its end on `img`: it changed sectors, the bitmap
/// is still tracking (a resync-required bitmap marks everything and would
/// hide a writer that bypasses the tracker), every changed sector is dirty
/// and the dirty bytes stay within `bound`.
fn assert_tracked(what: &str, img: &Image, before: &[u8], dir: &Path, bound: u64) {
    let seen = verify(img, before, dir, &mut Tally::default());
    assert!(
        seen.changed_sectors > 0,
        "{what}: the writer changed nothing"
    );
    assert_eq!(seen.state, "tracking", "{what}");
    assert!(
        seen.dirty_bytes >= seen.changed_sectors * 512 && seen.dirty_bytes <= bound,
        "{what}: {} dirty bytes for {} changed sectors",
        seen.dirty_bytes,
        seen.changed_sectors
    );
    eprintln!(
        "{what}: {} changed sectors, {} dirty bytes",
        seen.changed_sectors, seen.dirty_bytes
    );
}

fn report(test: &str, format: &str, t: &Tally) {
    let changed = t.changed_sectors * 512;
    eprintln!(
        "{test} {format}: {} kills, 0 missed sectors, {} KiB changed, {} KiB dirty ({:.1}% over-reported in all, worst kill {:.1}%), {} resync-required",
        t.kills,
        changed / 1024,
        t.dirty_bytes / 1024,
        if changed > 0 {
            100.0 * (t.dirty_bytes as f64 - changed as f64) / changed as f64
        } else {
            0.0
        },
        100.0 * t.worst_over,
        t.resync
    );
}

#[test]
fn sigkill_of_disk_bench_misses_no_changed_sector() {
    let dir = scratch("dirty_crash_bench");
    let mut rng = Rng::new("dirty_crash_bench");
    // Some data before the bitmap, so "changed" is not just "non-zero".
    let base = dir.join("base.raw");
    let size = 64u64 << 20;
    let f = std::fs::File::create(&base).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    rehost_disk(
        REHOST,
        &[
            "bench",
            "--pattern",
            "stride-write-4k",
            "--bytes",
            "4M",
            s(&base),
        ],
    );
    let bench = |img: &Path, seed: &str| {
        Running::start(
            REHOST,
            &[
                "disk",
                "bench",
                "--pattern",
                "rand-write-4k",
                "--bytes",
                "256M",
                "--seed",
                seed,
                "--flush-every",
                "512",
                s(img),
            ],
        )
    };
    let finished = |child: &Running| {
        child.stdout().contains("mib_per_sec") || child.stdout().contains("MiB/s")
    };
    for format in formats() {
        let format = format.as_str();
        let mut t = Tally::default();
        // How long the writer runs on this machine and format: the kills
        // fall inside it (a fixed window let a fast machine finish first).
        // The uninterrupted run is checked like a killed one.
        let (img, before) = tracked_image(&base, format, &dir);
        let started = std::time::Instant::now();
        let mut child = bench(&img.path, "1");
        child.wait(Duration::from_secs(300));
        let mut window = started.elapsed().as_millis() as u64 * 9 / 10;
        assert!(finished(&child), "{format}: {}", child.stdout());
        verify(&img, &before, &dir, &mut t);
        eprintln!("dirty_crash_bench: {format}: the writer runs for {window} ms (90 %)");
        // A run can be faster than the measured one (page cache, the other
        // core idle): one that finishes before its kill is checked like
        // the others, not counted as a kill, and the window halves.
        let mut finished_first = 0;
        let wanted = t.kills + runs();
        while t.kills < wanted {
            assert!(
                finished_first <= runs() + 3,
                "{format}: {finished_first} writers finished before their kill, \
                 the window is down to {window} ms"
            );
            let (img, before) = tracked_image(&base, format, &dir);
            let seed = rng.below(1 << 30).to_string();
            let mut child = bench(&img.path, &seed);
            std::thread::sleep(Duration::from_millis(rng.below(window.max(1))));
            child.signal(libc::SIGKILL);
            child.wait(Duration::from_secs(10));
            let kills = t.kills;
            verify(&img, &before, &dir, &mut t);
            if finished(&child) {
                finished_first += 1;
                t.kills = kills;
                window /= 2;
                eprintln!(
                    "dirty_crash_bench: {format}: the writer finished before its kill; \
                     checked, not counted, window now {window} ms"
                );
            }
        }
        report("dirty_crash_bench", format, &t);
    }
}

/// For a guest test (`None` without KVM): its scratch directory, an INT
/// 13h program writing `sectors` without reading them back, and
/// `base.raw`, a 64 MiB disk booting it.
fn guest_setup(test: &str, sectors: u64) -> Option<(PathBuf, Int13Program, PathBuf)> {
    if !kvm_available(test) {
        return None;
    }
    require_tools(&["nasm"]);
    let dir = scratch(test);
    let prog = Int13Program {
        sectors,
        verify: false,
        ..Default::default()
    };
    let base = dir.join("base.raw");
    prog.raw_disk(&base, 64 << 20);
    Some((dir, prog, base))
}

#[test]
fn sigkill_of_a_guest_writing_through_int13_misses_no_changed_sector() {
    let Some((dir, _, base)) = guest_setup("dirty_crash_guest", 48 * 2048) else {
        return;
    };
    let mut rng = Rng::new("dirty_crash_guest");
    for format in formats() {
        let format = format.as_str();
        let mut t = Tally::default();
        // How long the guest takes to write everything on this machine and
        // format: the kills fall inside it (a fixed window let a fast
        // machine finish before the kill). The uninterrupted run is checked
        // like a killed one.
        let (img, before) = tracked_image(&base, format, &dir);
        let disk = format!("{},controller=ahci", s(&img.path));
        let mut vm = Running::start(REHOST, &["run", "--memory", "64M", "--disk", &disk]);
        assert!(
            vm.wait_for("int13: write start", 1, Duration::from_secs(60)),
            "{format}: {}",
            vm.stdout()
        );
        let started = std::time::Instant::now();
        assert!(
            vm.wait_for("write done", 1, Duration::from_secs(120)),
            "{format}: {}",
            vm.stdout()
        );
        let window = started.elapsed().as_millis() as u64 * 9 / 10;
        vm.signal(libc::SIGKILL);
        vm.wait(Duration::from_secs(10));
        verify(&img, &before, &dir, &mut t);
        eprintln!("dirty_crash_guest: {format}: the guest writes for {window} ms (90 %)");
        for i in 0..runs() {
            let (img, before) = tracked_image(&base, format, &dir);
            let disk = format!("{},controller=ahci", s(&img.path));
            let mut vm = Running::start(REHOST, &["run", "--memory", "64M", "--disk", &disk]);
            assert!(
                vm.wait_for("int13: write start", 1, Duration::from_secs(60)),
                "kill {i}: {}",
                vm.stdout()
            );
            std::thread::sleep(Duration::from_millis(rng.below(window.max(1))));
            vm.signal(libc::SIGKILL);
            vm.wait(Duration::from_secs(10));
            assert!(
                !vm.stdout().contains("write done"),
                "kill {i}: the guest finished writing before the kill"
            );
            verify(&img, &before, &dir, &mut t);
        }
        report("dirty_crash_guest", format, &t);
    }
}

/// The tracker is in `rehost disk bench`'s write path for every format: a
/// bench run to its end leaves a tracking bitmap that marks every changed
/// sector and not much more.
#[test]
fn disk_bench_writes_through_the_tracker_on_every_format() {
    let dir = scratch("dirty_crash_bench_path");
    let base = dir.join("base.raw");
    let f = std::fs::File::create(&base).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    for format in formats() {
        let (img, before) = tracked_image(&base, &format, &dir);
        rehost_disk(
            REHOST,
            &[
                "bench",
                "--pattern",
                "rand-write-4k",
                "--bytes",
                "1M",
                "--seed",
                "7",
                s(&img.path),
            ],
        );
        // 256 writes of 4 KiB, each in at most one 64 KiB granule.
        assert_tracked(&format!("bench {format}"), &img, &before, &dir, 256 << 16);
    }
}

/// The tracker is in `rehost run`'s write path for every format: a guest
/// writing 2 MiB through INT 13h to its end leaves a tracking bitmap that
/// marks every changed sector and not much more.
#[test]
fn a_guest_writes_through_the_tracker_on_every_format() {
    let Some((dir, prog, base)) = guest_setup("dirty_crash_guest_path", 4096) else {
        return;
    };
    for format in formats() {
        let (img, before) = tracked_image(&base, &format, &dir);
        let disk = format!("{},controller=ahci", s(&img.path));
        let (code, out, err) = rehost_tests::run(
            REHOST,
            &["run", "--memory", "64M", "--disk", &disk],
            Duration::from_secs(300),
        );
        assert_eq!(code, Some(0), "{format}: stdout: {out}\nstderr: {err}");
        assert!(
            out.contains(&format!("int13: ok sectors={:08x}", prog.sectors)),
            "{format}: {out}"
        );
        // 2 MiB and the granules at its two ends.
        assert_tracked(
            &format!("guest {format}"),
            &img,
            &before,
            &dir,
            (2 << 20) + (2 << 16),
        );
    }
}
