//! `rehost disk` end to end, through the binary: a differencing chain
//! parent -> child -> grandchild written at every layer reads correctly,
//! `convert` flattens it, `commit` merges it, and the parent's bytes stay
//! the same until a commit into it is asked for. Run for every format whose
//! driver works.

mod disk_common;

use std::path::Path;
use std::process::Command;

use disk_common::*;
use rehost_disk::{ImageFormat, OpenOptions};

const SIZE: u64 = 24 << 20;

fn fill(len: usize, byte: u8) -> Vec<u8> {
    (0..len).map(|i| byte ^ ((i / 512) as u8 & 0x0f)).collect()
}

fn apply(model: &mut [u8], writes: &[(u64, Vec<u8>)]) {
    for (off, data) in writes {
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
}

/// The ranges an image holds data for itself (not through its parents).
fn own_extents(path: &Path) -> Vec<std::ops::Range<u64>> {
    rehost_disk::open(
        path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap()
    .allocated_extents()
    .unwrap()
}

fn chain_end_to_end(format: ImageFormat) {
    let dir = tempdir();
    if !format_works(format, dir.path()) {
        return;
    }
    let e = ext(format);
    let p = |name: &str| dir.path().join(format!("{name}.{e}"));
    let (base, child, grandchild, sibling) = (p("base"), p("child"), p("grandchild"), p("sibling"));
    let model_path = dir.path().join("model.raw");
    let fmt = format.name();

    rehost_ok(&[&"disk", &"create", &"-f", &fmt, &base, &"24M"]);
    let a = vec![
        (0, fill(1 << 20, 0x10)),
        (3 << 20, fill(3 << 20, 0x20)),
        (SIZE - 4096, fill(4096, 0x30)),
    ];
    write(&base, &a);
    let mut model = vec![0u8; SIZE as usize];
    apply(&mut model, &a);
    let base_sha = sha256_file(&base);

    let out = rehost_ok(&[&"disk", &"create", &"--parent", &base, &child]);
    assert!(out.contains("differencing"), "{out}");
    rehost_ok(&[&"disk", &"create", &"--parent", &base, &sibling]);
    let b = vec![
        (512, fill(1024, 0x40)),
        ((4 << 20) - 512, fill(8192, 0x50)),
        (10 << 20, fill(1 << 20, 0x60)),
    ];
    write(&child, &b);
    apply(&mut model, &b);
    rehost_ok(&[&"disk", &"create", &"--parent", &child, &grandchild]);
    let c = vec![
        (1024, fill(512, 0x70)),
        ((10 << 20) + 4096, fill(4096, 0x80)),
        (SIZE - 512, fill(512, 0x90)),
        (20 << 20, fill(2 << 20, 0xa0)),
    ];
    write(&grandchild, &c);
    apply(&mut model, &c);
    std::fs::write(&model_path, &model).unwrap();
    assert_eq!(
        sha256_file(&base),
        base_sha,
        "writing the children changed the parent"
    );

    // The whole chain reads as the model.
    assert!(
        read_all(&grandchild) == model,
        "{fmt}: the chain reads wrong"
    );
    let info = rehost_ok(&[&"disk", &"info", &"--json", &grandchild]);
    assert_eq!(
        info.matches("\"subformat\":\"differencing\"").count(),
        2,
        "{info}"
    );
    assert!(info.contains(&format!("\"virtual_size\":{SIZE}")), "{info}");
    let check = rehost_ok(&[&"disk", &"check", &grandchild]);
    assert_eq!(check.matches("no problems found").count(), 3, "{check}");
    let (code, out, _) = rehost(&[&"disk", &"compare", &grandchild, &model_path]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = rehost(&[&"disk", &"compare", &child, &model_path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Content mismatch at offset 1024!"), "{out}");

    // convert flattens the chain, to every output format.
    for (out_fmt, sub) in [
        ("raw", "fixed"),
        ("vhd", "dynamic"),
        ("vhd", "fixed"),
        ("vhdx", "dynamic"),
    ] {
        let flat = dir.path().join(format!("flat-{sub}.{out_fmt}"));
        let (code, out, err) = rehost(&[
            &"disk",
            &"convert",
            &"-O",
            &out_fmt,
            &"--subformat",
            &sub,
            &grandchild,
            &flat,
        ]);
        if code != 0 && out_fmt == "vhdx" && err.contains("not supported yet") {
            eprintln!("convert to vhdx skipped: {err}");
            continue;
        }
        assert_eq!(code, 0, "convert to {out_fmt}: {out}{err}");
        // Only what the chain holds is read (every layer reports its own
        // allocated ranges), not the whole disk.
        let read: u64 = err
            .split_once(" bytes of data written (")
            .and_then(|(_, rest)| rest.split_once(" read)"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("no read count in {err:?}"));
        assert!(
            read < SIZE,
            "{fmt} -> {out_fmt}: read {read} of {SIZE} bytes"
        );
        let (code, out, _) = rehost(&[&"disk", &"compare", &"--strict", &flat, &model_path]);
        assert_eq!(code, 0, "{out_fmt} {sub}: {out}");
        if out_fmt == "raw" {
            assert_eq!(sha256_file(&flat), sha256_file(&model_path));
        } else if have_qemu() {
            let f = if out_fmt == "vhd" {
                ImageFormat::Vhd
            } else {
                ImageFormat::Vhdx
            };
            assert_qemu_reads_as(f, &flat, &model_path, &format!("{out_fmt} {sub}"));
        }
        if sub == "dynamic" {
            // Sparse where the source is: far less than the disk.
            use std::os::unix::fs::MetadataExt;
            let used = std::fs::metadata(&flat).unwrap().blocks() * 512;
            assert!(used < SIZE, "{out_fmt} {sub}: {used} bytes");
        }
    }
    assert_eq!(sha256_file(&base), base_sha, "convert changed the parent");

    // commit the grandchild into the child: the parent is still untouched.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = rehost_ok(&[&"disk", &"commit", &grandchild]);
    assert!(out.contains("Image committed"), "{out}");
    assert_eq!(
        sha256_file(&base),
        base_sha,
        "committing into the child changed the parent"
    );
    assert!(
        read_all(&child) == model,
        "{fmt}: the child lacks the committed data"
    );
    assert!(out.contains("is now empty"), "{fmt}: {out}");
    assert_eq!(own_extents(&grandchild), vec![], "{fmt}: grandchild");
    assert!(read_all(&grandchild) == model, "{fmt}: grandchild");
    let check = rehost_ok(&[&"disk", &"check", &grandchild]);
    assert_eq!(check.matches("no problems found").count(), 3, "{check}");

    // commit the child into the parent: now the parent changes, and holds
    // the whole content on its own.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = rehost_ok(&[&"disk", &"commit", &child]);
    assert!(out.contains("is now empty"), "{fmt}: {out}");
    assert_ne!(sha256_file(&base), base_sha);
    let (code, out2, _) = rehost(&[&"disk", &"compare", &"--strict", &base, &model_path]);
    assert_eq!(code, 0, "{out2}");
    let flat_base = dir.path().join("base-after-commit.raw");
    rehost_ok(&[&"disk", &"convert", &"-O", &"raw", &base, &flat_base]);
    assert_eq!(sha256_file(&flat_base), sha256_file(&model_path), "{fmt}");
    if have_qemu() {
        assert_qemu_reads_as(format, &base, &model_path, "the merged parent");
    }
    let check = rehost_ok(&[&"disk", &"check", &base]);
    assert_eq!(check.matches("no problems found").count(), 1, "{check}");
    // The child is empty, still opens over the changed parent and presents
    // the same content; so does the grandchild over it.
    assert_eq!(own_extents(&child), vec![], "{fmt}: child");
    assert!(read_all(&child) == model, "{fmt}: child");
    assert!(read_all(&grandchild) == model, "{fmt}: grandchild");
    let check = rehost_ok(&[&"disk", &"check", &child]);
    assert_eq!(check.matches("no problems found").count(), 2, "{check}");
    let check = rehost_ok(&[&"disk", &"check", &grandchild]);
    assert_eq!(check.matches("no problems found").count(), 3, "{check}");
    // And it takes new writes over the merged parent.
    write(&child, &[((6 << 20) + 512, fill(4096, 0xb0))]);
    apply(&mut model, &[((6 << 20) + 512, fill(4096, 0xb0))]);
    assert!(read_all(&child) == model, "{fmt}: child after a new write");
    rehost_ok(&[&"disk", &"check", &child]);
    // The sibling was made over the parent as it was: refused now.
    let (code, _, err) = rehost(&[&"disk", &"info", &sibling]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("rehost: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(&sibling.display().to_string()), "{err}");
}

#[test]
fn vhd_chain_end_to_end() {
    chain_end_to_end(ImageFormat::Vhd);
}

#[test]
fn vhdx_chain_end_to_end() {
    chain_end_to_end(ImageFormat::Vhdx);
}

/// Each image's `check` covers its own file and the CLI walks the chain, so
/// a parent's problem is listed once, whichever image of the chain is
/// checked.
fn a_parent_problem_is_listed_once(format: ImageFormat) {
    use std::os::unix::fs::FileExt;
    let dir = tempdir();
    let e = ext(format);
    let base = dir.path().join(format!("base.{e}"));
    let child = dir.path().join(format!("child.{e}"));
    let grandchild = dir.path().join(format!("grandchild.{e}"));
    rehost_ok(&[&"disk", &"create", &"-f", &format.name(), &base, &"8M"]);
    write(&base, &[(0, fill(4096, 0x11))]);
    rehost_ok(&[&"disk", &"create", &"--parent", &base, &child]);
    rehost_ok(&[&"disk", &"create", &"--parent", &child, &grandchild]);
    // A problem that leaves the parent usable: a damaged spare copy of a
    // structure (VHD: the footer copy at offset 0; VHDX: region table 2).
    let at = match format {
        ImageFormat::Vhd => 64,
        _ => 4 * 65536 + 100,
    };
    let f = std::fs::OpenOptions::new().write(true).open(&base).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    let mut byte = [0u8; 1];
    std::fs::File::open(&base)
        .unwrap()
        .read_exact_at(&mut byte, at)
        .unwrap();
    f.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
    // (A VHD child checks its parent's modification time.)
    f.set_modified(mtime).unwrap();
    drop(f);
    let name = base.display().to_string();
    for top in [&base, &child, &grandchild] {
        let (code, out, err) = rehost(&[&"disk", &"check", top]);
        assert_eq!(code, 2, "{}: {out}{err}", top.display());
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&name)).collect();
        assert_eq!(lines.len(), 1, "{}: {out}", top.display());
        assert!(
            out.contains("1 problem(s) found"),
            "{}: {out}",
            top.display()
        );
        let (code, json, _) = rehost(&[&"disk", &"check", &"--json", top]);
        assert_eq!(code, 2);
        let problems = json.split_once("\"problems\":").unwrap().1;
        assert_eq!(
            problems.matches(&format!("{{\"path\":\"{name}\"")).count(),
            1,
            "{json}"
        );
    }
    rehost_ok(&[&"disk", &"info", &grandchild]);
}

#[test]
fn vhd_parent_problem_is_listed_once() {
    a_parent_problem_is_listed_once(ImageFormat::Vhd);
}

#[test]
fn vhdx_parent_problem_is_listed_once() {
    a_parent_problem_is_listed_once(ImageFormat::Vhdx);
}

/// Discarding whole blocks of a dynamic VHDX gives their space back to the
/// host file system (holes), the range reads as zeros, later writes take
/// the freed space before the file grows, and both rehost and QEMU find
/// the image clean and reading as expected all along.
#[test]
fn vhdx_discard_returns_space_and_reuses_it() {
    use std::os::unix::fs::MetadataExt;
    const MIB: usize = 1 << 20;
    let dir = tempdir();
    let img = dir.path().join("d.vhdx");
    let model_path = dir.path().join("model.raw");
    let usage = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let qemu = have_qemu();
    let verify = |model: &[u8], when: &str| {
        std::fs::write(&model_path, model).unwrap();
        assert!(read_all(&img) == model, "{when}: reads wrong");
        let out = rehost_ok(&[&"disk", &"check", &img]);
        assert!(out.contains("no problems found"), "{when}: {out}");
        if qemu {
            let o = Command::new("qemu-img")
                .args(["check", "-f", "vhdx"])
                .arg(&img)
                .output()
                .unwrap();
            assert!(o.status.success(), "{when}: qemu-img check: {o:?}");
            assert_qemu_reads_as(ImageFormat::Vhdx, &img, &model_path, when);
        }
    };
    rehost_ok(&[
        &"disk",
        &"create",
        &"-f",
        &"vhdx",
        &"--block-size",
        &"1M",
        &img,
        &"64M",
    ]);
    let mut model = vec![0u8; 64 * MIB];
    let first = [(0, fill(32 * MIB, 0x21))];
    write(&img, &first);
    apply(&mut model, &first);
    verify(&model, "written");
    let (used, size) = (usage(&img), len(&img));

    // Blocks 8..24 go whole; blocks 7 and 24, only partly covered, stay.
    let d = rehost_disk::open(
        &img,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )
    .unwrap();
    d.discard(8 * MIB as u64 - 4096, 16 * MIB as u64 + 8192)
        .unwrap();
    d.flush().unwrap();
    drop(d);
    model[8 * MIB..24 * MIB].fill(0);
    let freed = used.saturating_sub(usage(&img));
    assert!(
        freed >= 16 * MIB as u64,
        "{freed} bytes freed of the 16 MiB discarded ({used} -> {})",
        usage(&img)
    );
    assert_eq!(len(&img), size);
    verify(&model, "discarded");

    // New blocks take the freed space: the file does not grow.
    let second = [
        (40 * MIB as u64, fill(8 * MIB, 0x31)),
        (50 * MIB as u64 + 512, fill(4096, 0x41)),
    ];
    write(&img, &second);
    apply(&mut model, &second);
    assert_eq!(
        len(&img),
        size,
        "the file grew instead of reusing freed space"
    );
    assert!(usage(&img) <= used, "{} > {used}", usage(&img));
    verify(&model, "rewritten");
}

#[test]
fn errors_are_one_line_and_name_the_file() {
    let dir = tempdir();
    let missing = dir.path().join("missing.vhd");
    let (code, out, err) = rehost(&[&"disk", &"info", &missing]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    // A damaged image: check lists the problem (exit 2), info refuses.
    let bad = dir.path().join("bad.vhd");
    rehost_ok(&[&"disk", &"create", &"-f", &"vhd", &bad, &"4M"]);
    let before = sha256_file(&bad);
    let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
    // BAT entry 1 pointing at sector 1, inside the dynamic header.
    std::os::unix::fs::FileExt::write_all_at(&f, &1u32.to_be_bytes(), 1536 + 4).unwrap();
    let damaged = sha256_file(&bad);
    assert_ne!(before, damaged);
    let (code, out, _) = rehost(&[&"disk", &"check", &bad]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("VHD block allocation table at offset"),
        "{out}"
    );
    let (code, out, _) = rehost(&[&"disk", &"check", &"--json", &bad]);
    assert_eq!(code, 2);
    assert!(
        out.contains("\"structure\":\"VHD block allocation table\""),
        "{out}"
    );
    let (code, _, err) = rehost(&[&"disk", &"info", &bad]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(sha256_file(&bad), damaged, "a refused image was written");

    // compare's error exit code is 2, like qemu-img.
    let (code, _, err) = rehost(&[&"disk", &"compare", &missing, &bad]);
    assert_eq!(code, 2, "{err}");
    // Usage errors are clap's (2).
    let (code, _, _) = rehost(&[&"disk", &"create", &"-f", &"qcow2", &"x", &"1M"]);
    assert_eq!(code, 2);
    let (code, _, err) = rehost(&[&"disk", &"create", &"-f", &"vhd", &dir.path().join("y.vhd")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SIZE is required"), "{err}");
    let (code, _, err) = rehost(&[&"disk", &"commit", &bad]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn every_subcommand_documents_its_options() {
    for sub in [
        "disk create",
        "disk info",
        "disk check",
        "disk convert",
        "disk compare",
        "disk commit",
        "disk bench",
        "disk serve",
        "disk delta export",
        "disk delta apply",
        "disk delta recover",
        "disk delta info",
        "p2v check",
        "p2v fix",
    ] {
        let words: Vec<&str> = sub.split(' ').collect();
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
        for w in &words {
            args.push(w);
        }
        args.push(&"--help");
        let out = rehost_ok(&args);
        assert!(
            out.contains(&format!("Usage: rehost {}", words[0])),
            "{sub}: {out}"
        );
        // Every option line carries a description (option lines are
        // indented by at most 6 columns; wrapped text by more).
        for line in out.lines() {
            let indent = line.len() - line.trim_start().len();
            if !(2..=6).contains(&indent) || !line.trim_start().starts_with('-') {
                continue;
            }
            let desc = line
                .trim_start()
                .split_once("  ")
                .map(|x| x.1.trim())
                .unwrap_or("");
            assert!(!desc.is_empty(), "{sub}: undocumented option {line:?}");
        }
    }
}

#[test]
fn bench_prints_throughput_and_iops() {
    let dir = tempdir();
    let img = dir.path().join("b.vhd");
    rehost_ok(&[&"disk", &"create", &"-f", &"vhd", &img, &"16M"]);
    for pattern in ["seq-write", "seq-read", "rand-write-4k", "rand-read-4k"] {
        let out = bench_json(&img, pattern);
        assert!(out.contains(&format!("\"pattern\":\"{pattern}\"")), "{out}");
        assert!(
            out.contains("\"mib_per_sec\":") && out.contains("\"iops\":"),
            "{out}"
        );
        let expect = if pattern.starts_with("seq") { 4 } else { 1024 };
        assert!(out.contains(&format!("\"requests\":{expect},")), "{out}");
    }
    rehost_ok(&[&"disk", &"check", &img]);
    assert!(
        !out_has_tracking(&img, "seq-write"),
        "no bitmap, no tracker"
    );
    // With a bitmap the writes go through the tracker, which says what it
    // cost and keeps the bitmap up to date.
    rehost_ok(&[&"disk", &"bitmap", &"add", &img, &"b1"]);
    assert!(out_has_tracking(&img, "seq-write"));
    let list = rehost_ok(&[&"disk", &"bitmap", &"list", &"--json", &img]);
    assert!(list.contains("\"dirty_bytes\":4194304"), "{list}");
    let text = rehost_ok(&[
        &"disk",
        &"bench",
        &"--pattern",
        &"rand-write-4k",
        &"--bytes",
        &"64K",
        &img,
    ]);
    assert!(
        text.contains("dirty tracking: ") && text.contains(" s in the tracker"),
        "{text}"
    );
}

/// `rehost disk bench --json` of 4 MiB of `pattern` on `img`.
fn bench_json(img: &Path, pattern: &str) -> String {
    disk_bench(img, pattern, "4M", "1", true)
}

/// Whether `disk bench --json` of `pattern` (4 MiB) reports the tracker:
/// its log updates, persists and time.
fn out_has_tracking(img: &Path, pattern: &str) -> bool {
    let out = bench_json(img, pattern);
    let Some(at) = out.find("\"tracking\":{\"log_updates\":") else {
        return false;
    };
    let t = &out[at..];
    let n = |key: &str| -> f64 {
        let k = format!("\"{key}\":");
        let v = &t[t.find(&k).expect(key) + k.len()..];
        v.split([',', '}']).next().unwrap().parse().expect(key)
    };
    assert!(n("log_updates") >= 1.0, "{out}");
    assert!(n("persists") >= 1.0, "{out}");
    assert!(n("seconds") > 0.0, "{out}");
    true
}
