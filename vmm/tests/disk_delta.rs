//! `rehost disk delta` end to end, through the binary: a replica seeded by
//! a full stream and kept up to date by incremental streams equals the
//! source (by `qemu-img compare` for the formats QEMU reads, by `rehost
//! disk compare` for differencing children); damaged, truncated,
//! wrong-generation and wrong-size streams are refused with a named error
//! and the target's bytes unchanged.

mod disk_common;

use std::path::{Path, PathBuf};

use disk_common::*;
use rehost_disk::ImageFormat;

const SIZE: &str = "32M";

fn qemu_fmt(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Vhd => "vpc",
        f => f.name(),
    }
}

/// `qemu-img compare` (when installed) and `rehost disk compare` both find
/// the images equal.
fn assert_equal(format: Option<ImageFormat>, a: &Path, b: &Path, what: &str) {
    let out = rehost_ok(&[&"disk", &"compare", &a, &b]);
    assert!(out.contains("Images are identical."), "{what}: {out}");
    if let Some(f) = format {
        if have_qemu() {
            let o = std::process::Command::new("qemu-img")
                .args(["compare", "-f", qemu_fmt(f), "-F", qemu_fmt(f)])
                .arg(a)
                .arg(b)
                .output()
                .unwrap();
            assert!(o.status.success(), "{what}: qemu-img compare: {o:?}");
        }
    }
}

/// Writes through rehost (so bitmaps are kept): `disk bench` patterns.
fn bench_write(img: &Path, pattern: &str, bytes: &str, seed: &str) {
    disk_bench(img, pattern, bytes, seed, false);
}

fn export(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"disk", &"delta", &"export"];
    a.extend_from_slice(args);
    rehost_ok(&a)
}

fn apply(delta: &Path, target: &Path) -> String {
    rehost_ok(&[&"disk", &"delta", &"apply", &delta, &target])
}

fn info_json(delta: &Path) -> serde_json::Value {
    let out = rehost_ok(&[&"disk", &"delta", &"info", &"--json", &delta]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Source and replica after a seeding full stream: equal.
struct Pair {
    dir: tempfile::TempDir,
    src: PathBuf,
    replica: PathBuf,
    format: Option<ImageFormat>,
}

fn seeded(format: ImageFormat, differencing: bool) -> Option<Pair> {
    let dir = kill_only_scratch_dir();
    if !format_works(format, dir.path()) {
        return None;
    }
    let e = ext(format);
    let base = dir.path().join(format!("base.{e}"));
    rehost_ok(&[&"disk", &"create", &"-f", &format.name(), &base, &SIZE]);
    // Data before the bitmap exists, written by a third-party tool where
    // it reads the format.
    if have_qemu() {
        let o = std::process::Command::new("qemu-io")
            .args(["-f", qemu_fmt(format), "-c", "write -P 0x5a 1M 3M"])
            .arg(&base)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    let src = if differencing {
        let child = dir.path().join(format!("child.{e}"));
        rehost_ok(&[&"disk", &"create", &"--parent", &base, &child]);
        bench_write(&child, "seq-write", "1M", "1");
        child
    } else {
        base
    };
    // The replica starts as a copy of the old image.
    let replica = dir.path().join(format!("replica.{e}"));
    if differencing {
        rehost_ok(&[&"disk", &"create", &"-f", &format.name(), &replica, &SIZE]);
    } else {
        std::fs::copy(&src, &replica).unwrap();
    }
    rehost_ok(&[&"disk", &"bitmap", &"add", &src, &"repl"]);
    let seed = dir.path().join("seed.rhd");
    let out = export(&[&"--full", &"--bitmap", &"repl", &"--clear", &src, &seed]);
    assert!(out.contains("source generation none"), "{out}");
    let i = info_json(&seed);
    assert_eq!(i["full"], true);
    assert_eq!(i["verified"], true);
    apply(&seed, &replica);
    let format = (!differencing).then_some(format);
    assert_equal(format, &src, &replica, "after seeding");
    Some(Pair {
        dir,
        src,
        replica,
        format,
    })
}

fn round_trip(format: ImageFormat, differencing: bool) {
    let Some(p) = seeded(format, differencing) else {
        return;
    };
    let rounds = [
        ("rand-write-4k", "1M", "7"),
        ("stride-write-4k", "512K", "8"),
        ("seq-write", "2M", "9"),
    ];
    for (n, (pattern, bytes, seed)) in rounds.iter().enumerate() {
        bench_write(&p.src, pattern, bytes, seed);
        let d = p.dir.path().join(format!("d{n}.rhd"));
        export(&[&"--bitmap", &"repl", &"--clear", &p.src, &d]);
        let i = info_json(&d);
        assert_eq!(i["full"], false);
        assert_eq!(i["verified"], true, "{i}");
        // The stream carries what was written, not the whole disk.
        assert!(i["data_bytes"].as_u64().unwrap() < 16 << 20, "{i}");
        assert!(i["records"].as_u64().unwrap() >= 1, "{i}");
        let out = apply(&d, &p.replica);
        assert!(
            out.contains(i["target_generation"].as_str().unwrap()),
            "{out}"
        );
        assert_equal(p.format, &p.src, &p.replica, &format!("round {n}"));
    }
    let check = rehost_ok(&[&"disk", &"check", &p.replica]);
    assert!(check.contains("no problems found"), "{check}");
}

#[test]
fn raw_round_trip() {
    round_trip(ImageFormat::Raw, false);
}

#[test]
fn vhd_round_trip() {
    round_trip(ImageFormat::Vhd, false);
}

#[test]
fn vhdx_round_trip() {
    round_trip(ImageFormat::Vhdx, false);
}

#[test]
fn vhdx_differencing_round_trip() {
    round_trip(ImageFormat::Vhdx, true);
}

#[test]
fn vhd_differencing_round_trip() {
    round_trip(ImageFormat::Vhd, true);
}

/// Apply must fail with `named` in its message and leave the target's
/// bytes as they were.
fn refused(delta: &Path, target: &Path, named: &str) {
    let before = sha256_file(target);
    let (code, out, err) = rehost(&[&"disk", &"delta", &"apply", &delta, &target]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(named), "wanted {named:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(sha256_file(target), before, "{named}: target changed");
}

#[test]
fn bad_streams_are_refused_and_the_target_kept() {
    let Some(p) = seeded(ImageFormat::Vhdx, false) else {
        return;
    };
    bench_write(&p.src, "rand-write-4k", "256K", "3");
    let d1 = p.dir.path().join("d1.rhd");
    export(&[&"--bitmap", &"repl", &"--clear", &p.src, &d1]);
    bench_write(&p.src, "rand-write-4k", "256K", "4");
    let d2 = p.dir.path().join("d2.rhd");
    export(&[&"--bitmap", &"repl", &"--clear", &p.src, &d2]);
    let good = std::fs::read(&d1).unwrap();
    let bad = p.dir.path().join("bad.rhd");
    // Truncated: in the header, at the first record, mid-record, just
    // before the trailer's end.
    for cut in [0, 100, 136, 136 + 40, good.len() / 2, good.len() - 1] {
        std::fs::write(&bad, &good[..cut]).unwrap();
        refused(&bad, &p.replica, "truncated");
        let (code, out, _) = rehost(&[&"disk", &"delta", &"info", &bad]);
        assert_ne!(code, 0, "{out}");
    }
    // Bit flips in the header, a record header, a payload, the trailer.
    for at in [20, 136 + 9, 136 + 40, good.len() - 10] {
        let mut b = good.clone();
        b[at] ^= 0x04;
        std::fs::write(&bad, &b).unwrap();
        refused(&bad, &p.replica, "corrupt");
    }
    // Out of order.
    refused(&d2, &p.replica, "generation mismatch");
    // Another disk size.
    let other = p.dir.path().join("other.vhdx");
    rehost_ok(&[&"disk", &"create", &"-f", &"vhdx", &other, &"48M"]);
    refused(&p.dir.path().join("seed.rhd"), &other, "size mismatch");
    // The good ones, in order, still apply.
    apply(&d1, &p.replica);
    apply(&d2, &p.replica);
    assert_equal(p.format, &p.src, &p.replica, "after the refusals");
}

#[test]
fn export_refuses_overwrites_and_resync_required_bitmaps() {
    let dir = tempdir();
    let img = dir.path().join("d.raw");
    rehost_ok(&[&"disk", &"create", &"-f", &"raw", &img, &"8M"]);
    rehost_ok(&[&"disk", &"bitmap", &"add", &img, &"b"]);
    let out = dir.path().join("out.rhd");
    std::fs::write(&out, b"precious").unwrap();
    let (code, _, err) = rehost(&[&"disk", &"delta", &"export", &"--bitmap", &"b", &img, &out]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    // A write behind rehost's back: the bitmap needs a resync.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 512], 4096).unwrap();
    drop(f);
    let out2 = dir.path().join("out2.rhd");
    let (code, _, err) = rehost(&[&"disk", &"delta", &"export", &"--bitmap", &"b", &img, &out2]);
    assert_eq!(code, 1);
    assert!(
        err.contains("full resync") && err.contains("--full"),
        "{err}"
    );
    assert!(!out2.exists());
    export(&[&"--full", &"--bitmap", &"b", &"--clear", &img, &out2]);
    let list = rehost_ok(&[&"disk", &"bitmap", &"list", &img]);
    assert!(list.contains("tracking"), "{list}");
}

#[test]
fn a_pending_journal_blocks_other_openers_until_recovered() {
    let Some(p) = seeded(ImageFormat::Raw, false) else {
        return;
    };
    bench_write(&p.src, "rand-write-4k", "256K", "5");
    let d = p.dir.path().join("d.rhd");
    export(&[&"--bitmap", &"repl", &"--clear", &p.src, &d]);
    // What an apply killed after making its journal durable leaves.
    let journal = {
        let mut s = p.replica.as_os_str().to_owned();
        s.push(".rehost-delta-journal");
        PathBuf::from(s)
    };
    std::fs::copy(&d, &journal).unwrap();
    let (code, _, err) = rehost(&[&"disk", &"info", &p.replica]);
    assert_eq!(code, 1);
    assert!(err.contains("rehost disk delta recover"), "{err}");
    let out = rehost_ok(&[&"disk", &"delta", &"recover", &p.replica]);
    assert!(out.contains("interrupted apply finished"), "{out}");
    assert!(!journal.exists());
    assert_equal(p.format, &p.src, &p.replica, "after recover");
    // The same stream again: nothing to do.
    let out = apply(&d, &p.replica);
    assert!(out.contains("already applied"), "{out}");
}

/// `cp -p`: the copy keeps the modification time a replica record names.
fn copy_keeping_mtime(from: &Path, to: &Path) {
    let s = std::process::Command::new("cp")
        .arg("-p")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(s.success(), "cp -p {} {}", from.display(), to.display());
}

/// `rehost disk delta apply` killed (SIGKILL) at moments spread over its
/// run: the target is then the old image, the new one, or refused until the
/// journal is rolled forward; running the same apply again always ends with
/// the new image.
#[test]
fn apply_killed_at_any_moment_finishes_on_rerun() {
    let Some(p) = seeded(ImageFormat::Raw, false) else {
        return;
    };
    let old = p.dir.path().join("old.raw");
    let old_record = p.dir.path().join("old.raw.rehost-replica");
    for (from, to) in [
        (p.replica.clone(), old.clone()),
        (
            PathBuf::from(format!("{}.rehost-replica", p.replica.display())),
            old_record.clone(),
        ),
    ] {
        copy_keeping_mtime(&from, &to);
    }
    bench_write(&p.src, "seq-write", "16M", "11");
    bench_write(&p.src, "rand-write-4k", "2M", "12");
    let d = p.dir.path().join("d.rhd");
    export(&[&"--bitmap", &"repl", &"--clear", &p.src, &d]);
    let mut outcomes = [0u32; 3];
    for i in 0..24u64 {
        let target = p.dir.path().join(format!("t{i}.raw"));
        for (from, to) in [
            (old.clone(), target.clone()),
            (
                old_record.clone(),
                PathBuf::from(format!("{}.rehost-replica", target.display())),
            ),
        ] {
            copy_keeping_mtime(&from, &to);
        }
        let mut child = std::process::Command::new(REHOST)
            .args(["disk", "delta", "apply"])
            .arg(&d)
            .arg(&target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(i * 8));
        let _ = child.kill();
        let _ = child.wait();
        let journal = PathBuf::from(format!("{}.rehost-delta-journal", target.display()));
        if journal.exists() {
            let (code, _, err) = rehost(&[&"disk", &"compare", &p.src, &target]);
            assert_eq!(code, 2, "{err}");
            assert!(err.contains("delta recover"), "{err}");
            outcomes[1] += 1;
        } else {
            let new = rehost(&[&"disk", &"compare", &p.src, &target]).0 == 0;
            let was = rehost(&[&"disk", &"compare", &old, &target]).0 == 0;
            assert!(new || was, "kill {i}: neither old nor new");
            outcomes[if new { 2 } else { 0 }] += 1;
        }
        apply(&d, &target);
        assert_equal(
            Some(ImageFormat::Raw),
            &p.src,
            &target,
            &format!("kill {i}"),
        );
        let _ = std::fs::remove_file(&target);
    }
    eprintln!(
        "killed apply: {} old, {} journal pending, {} new",
        outcomes[0], outcomes[1], outcomes[2]
    );
}
