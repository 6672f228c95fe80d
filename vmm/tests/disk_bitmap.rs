//! `rehost disk bitmap` end to end, through the binary: a bitmap added to
//! an image records what `rehost disk bench` writes, `list --json` reports
//! it, `clear` starts a new generation, and a write done outside rehost
//! (qemu-io, on a raw image) turns the bitmap to resync-required.

mod disk_common;

use std::path::Path;
use std::process::Command;

use disk_common::*;
use rehost_disk::ImageFormat;

const SIZE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq)]
struct Listed {
    name: String,
    granularity: u64,
    dirty_bytes: u64,
    generation: String,
    state: String,
}

fn list(img: &Path) -> Vec<Listed> {
    let out = rehost_ok(&[&"disk", &"bitmap", &"list", &"--json", &img]);
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["bitmaps"]
        .as_array()
        .unwrap_or_else(|| panic!("no bitmaps array: {out}"))
        .iter()
        .map(|b| Listed {
            name: b["name"].as_str().unwrap().to_owned(),
            granularity: b["granularity"].as_u64().unwrap(),
            dirty_bytes: b["dirty_bytes"].as_u64().unwrap(),
            generation: b["generation"].as_str().unwrap().to_owned(),
            state: b["state"].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn find(img: &Path, name: &str) -> Listed {
    list(img)
        .into_iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no bitmap {name} on {}", img.display()))
}

fn bitmaps_track_bench_writes(format: ImageFormat) {
    let dir = tempdir();
    if !format_works(format, dir.path()) {
        return;
    }
    let img = dir.path().join(format!("d.{}", ext(format)));
    rehost_ok(&[&"disk", &"create", &"-f", &format.name(), &img, &"16M"]);
    assert!(list(&img).is_empty());
    rehost_ok(&[&"disk", &"bitmap", &"add", &img, &"fine"]);
    rehost_ok(&[
        &"disk",
        &"bitmap",
        &"add",
        &"--granularity",
        &"1M",
        &img,
        &"coarse",
    ]);
    let fine = find(&img, "fine");
    assert_eq!(fine.granularity, 64 << 10);
    assert_eq!(fine.dirty_bytes, 0);
    assert_eq!(fine.state, "tracking");
    assert_eq!(fine.generation.len(), 32);
    let (code, _, err) = rehost(&[&"disk", &"bitmap", &"add", &img, &"fine"]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = rehost(&[
        &"disk",
        &"bitmap",
        &"add",
        &"--granularity",
        &"3K",
        &img,
        &"odd",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("granularity"), "{err}");

    // 3 MiB of sequential writes (1 MiB requests) from offset 0.
    rehost_ok(&[
        &"disk",
        &"bench",
        &"--pattern",
        &"seq-write",
        &"--bytes",
        &"3M",
        &img,
    ]);
    let fine = find(&img, "fine");
    assert_eq!(
        (fine.dirty_bytes, fine.state.as_str()),
        (3 << 20, "tracking"),
        "{format:?}"
    );
    assert_eq!(find(&img, "coarse").dirty_bytes, 3 << 20);
    // A random 4 KiB write pattern dirties granules of its own.
    rehost_ok(&[
        &"disk",
        &"bench",
        &"--pattern",
        &"rand-write-4k",
        &"--bytes",
        &"8K",
        &img,
    ]);
    let fine = find(&img, "fine");
    assert!(
        fine.dirty_bytes > 3 << 20 && fine.dirty_bytes <= (3 << 20) + (128 << 10),
        "{fine:?}"
    );
    assert_eq!(fine.state, "tracking");
    // Reading changes nothing.
    rehost_ok(&[&"disk", &"bench", &"--pattern", &"seq-read", &img]);
    assert_eq!(find(&img, "fine"), fine);

    let old_generation = fine.generation.clone();
    rehost_ok(&[&"disk", &"bitmap", &"clear", &img, &"fine"]);
    let fine = find(&img, "fine");
    assert_eq!(fine.dirty_bytes, 0);
    assert_ne!(fine.generation, old_generation);
    assert!(find(&img, "coarse").dirty_bytes >= 3 << 20);

    rehost_ok(&[&"disk", &"bitmap", &"remove", &img, &"coarse"]);
    assert_eq!(list(&img).len(), 1);
    let (code, _, err) = rehost(&[&"disk", &"bitmap", &"remove", &img, &"coarse"]);
    assert_ne!(code, 0);
    assert!(err.contains("no bitmap"), "{err}");
}

#[test]
fn bitmaps_track_bench_writes_raw() {
    bitmaps_track_bench_writes(ImageFormat::Raw);
}

#[test]
fn bitmaps_track_bench_writes_vhd() {
    bitmaps_track_bench_writes(ImageFormat::Vhd);
}

#[test]
fn bitmaps_track_bench_writes_vhdx() {
    bitmaps_track_bench_writes(ImageFormat::Vhdx);
}

#[test]
fn a_write_outside_rehost_requires_a_resync() {
    if !have_qemu() {
        eprintln!("skipped: qemu-io is not installed");
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("d.raw");
    rehost_ok(&[&"disk", &"create", &"-f", &"raw", &img, &"16M"]);
    rehost_ok(&[&"disk", &"bitmap", &"add", &img, &"b"]);
    let before = find(&img, "b");
    assert_eq!(before.state, "tracking");
    // Let the modification time move on past the stamp's.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 8M 4k"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let after = find(&img, "b");
    assert_eq!(after.state, "resync-required");
    assert_eq!(after.dirty_bytes, SIZE);
    let text = rehost_ok(&[&"disk", &"bitmap", &"list", &img]);
    assert!(text.contains("resync-required"), "{text}");
    assert!(text.contains("changed"), "{text}");
    // A rehost writer keeps it resync-required; clearing ends it.
    rehost_ok(&[
        &"disk",
        &"bench",
        &"--pattern",
        &"seq-write",
        &"--bytes",
        &"64K",
        &img,
    ]);
    assert_eq!(find(&img, "b").state, "resync-required");
    rehost_ok(&[&"disk", &"bitmap", &"clear", &img, &"b"]);
    let cleared = find(&img, "b");
    assert_eq!(
        (cleared.state.as_str(), cleared.dirty_bytes),
        ("tracking", 0)
    );
}

#[test]
fn bitmap_help_describes_the_commands() {
    let out = rehost_ok(&[&"disk", &"bitmap", &"--help"]);
    for word in ["add", "remove", "clear", "list", "resync-required"] {
        assert!(out.contains(word), "{word}: {out}");
    }
    let out = rehost_ok(&[&"disk", &"bitmap", &"add", &"--help"]);
    assert!(out.contains("--granularity"), "{out}");
}

/// `disk commit` writes into the parent through its tracker: the parent's
/// bitmap shows what the child held and stays in the tracking state.
fn commit_keeps_the_parents_bitmaps(format: ImageFormat) {
    let dir = tempdir();
    if !format_works(format, dir.path()) {
        return;
    }
    let e = ext(format);
    let base = dir.path().join(format!("base.{e}"));
    let child = dir.path().join(format!("child.{e}"));
    rehost_ok(&[&"disk", &"create", &"-f", &format.name(), &base, &"16M"]);
    rehost_ok(&[&"disk", &"bitmap", &"add", &base, &"b"]);
    rehost_ok(&[&"disk", &"create", &"--parent", &base, &child]);
    rehost_ok(&[
        &"disk",
        &"bench",
        &"--pattern",
        &"seq-write",
        &"--bytes",
        &"2M",
        &child,
    ]);
    // Writing the child leaves the parent's bitmap alone.
    assert_eq!(find(&base, "b").dirty_bytes, 0);
    assert_eq!(find(&base, "b").state, "tracking");
    rehost_ok(&[&"disk", &"commit", &child]);
    let b = find(&base, "b");
    assert_eq!((b.state.as_str(), b.dirty_bytes), ("tracking", 2 << 20));
}

#[test]
fn commit_keeps_the_parents_bitmaps_vhd() {
    commit_keeps_the_parents_bitmaps(ImageFormat::Vhd);
}

#[test]
fn commit_keeps_the_parents_bitmaps_vhdx() {
    commit_keeps_the_parents_bitmaps(ImageFormat::Vhdx);
}

/// A VHDX whose file identifier is damaged is refused by every disk
/// command (never read or written as raw); `check` lists it as a problem.
#[test]
fn a_damaged_vhdx_is_refused_by_the_disk_commands() {
    let dir = tempdir();
    let img = dir.path().join("d.vhdx");
    rehost_ok(&[&"disk", &"create", &"-f", &"vhdx", &img, &"16M"]);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"XXXXXXXX", 0).unwrap();
    drop(f);
    let before = sha256_file(&img);
    let (code, out, err) = rehost(&[&"disk", &"info", &img]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("looks like a damaged vhdx"), "{err}");
    assert!(err.contains(&img.display().to_string()), "{err}");
    let (code, out, _) = rehost(&[&"disk", &"check", &img]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("damaged vhdx"), "{out}");
    let (code, _, err) = rehost(&[
        &"disk",
        &"bench",
        &"--pattern",
        &"seq-write",
        &"--bytes",
        &"1M",
        &img,
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(sha256_file(&img), before, "a refused image was written");
}
