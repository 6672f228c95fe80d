//! `rehost p2v check` end to end, through the binary, on Windows-like disks
//! built without Windows and without root by resources/p2v/windows-disk.sh
//! (sfdisk, mkntfs, wimcapture/wimapply, hivexregedit) around the real
//! registry hives of ../shared/samples/hives. Verdicts are those the hives'
//! README gives; values read are cross-checked with Debian's hivexget.

mod disk_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use disk_common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `REHOST_HIVES` when set, else `shared/samples/hives` beside the
/// checkout, else the machine-wide `/work/shared/samples/hives` (for a
/// clone made elsewhere, as CI's).
fn samples() -> PathBuf {
    if let Some(dir) = std::env::var_os("REHOST_HIVES") {
        return PathBuf::from(dir);
    }
    let beside = repo().join("../shared/samples/hives");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared/samples/hives")
}

/// The tools the disk builder needs; without them the test is skipped
/// (failed under CI=true, where scripts/setup installs them).
fn have_tools() -> bool {
    let missing: Vec<&str> = [
        "sfdisk",
        "mkntfs",
        "wimcapture",
        "hivexregedit",
        "hivexget",
        "xz",
    ]
    .into_iter()
    .filter(|t| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .collect();
    let hives = samples().join("SYSTEM.xz").exists();
    if missing.is_empty() && hives {
        return true;
    }
    let reason = format!(
        "p2v disk builder needs {missing:?} (scripts/setup) and the sample hives ({})",
        samples().display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}");
    }
    skip(&reason);
    false
}

/// Decompresses a sample hive into `dir`.
fn hive(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let data = Command::new("xz")
        .arg("-dc")
        .arg(samples().join(format!("{name}.xz")))
        .output()
        .unwrap();
    assert!(data.status.success());
    std::fs::write(&out, data.stdout).unwrap();
    out
}

/// Merges a .reg text into a copy of `hive` (hivexregedit) and returns it.
fn variant(dir: &Path, hive: &Path, name: &str, reg: &str) -> PathBuf {
    merge(dir, hive, name, "HKEY_LOCAL_MACHINE\\SYSTEM", reg)
}

/// Merges a .reg text, whose keys start with `prefix` for the hive's
/// root, into a copy of `hive` (hivexregedit) and returns the copy.
fn merge(dir: &Path, hive: &Path, name: &str, prefix: &str, reg: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::copy(hive, &out).unwrap();
    let reg_path = dir.join(format!("{name}.reg"));
    std::fs::write(
        &reg_path,
        format!("Windows Registry Editor Version 5.00\n\n{reg}\n"),
    )
    .unwrap();
    let st = Command::new("hivexregedit")
        .args(["--merge", "--prefix", prefix])
        .arg(&out)
        .arg(&reg_path)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

fn build(dir: &Path, name: &str, system: &Path, opts: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let st = Command::new("sh")
        .arg(repo().join("resources/p2v/windows-disk.sh"))
        .arg(&out)
        .arg(system)
        .args(opts)
        .env("REHOST_HIVES", samples())
        .status()
        .unwrap();
    assert!(st.success(), "windows-disk.sh {name} {opts:?}");
    out
}

/// `rehost p2v check`: (exit code, stdout).
fn check(image: &Path, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"p2v", &"check"];
    for e in extra {
        args.push(e);
    }
    args.push(&image);
    let (code, out, err) = rehost(&args);
    assert!(!err.contains("panicked"), "{err}");
    (code, out)
}

fn check_json(image: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut e = vec!["--json"];
    e.extend_from_slice(extra);
    let (code, out) = check(image, &e);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
    )
}

fn finding<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == name)
        .unwrap_or_else(|| panic!("no finding {name}: {report}"))
}

fn hivexget(hive: &Path, key: &str, value: &str) -> String {
    let out = Command::new("hivexget")
        .arg(hive)
        .arg(key)
        .arg(value)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sample_hives_give_the_readme_verdicts() {
    if !have_tools() {
        return;
    }
    let dir = tempdir();
    let d = dir.path();

    // Windows 7 era: IDE boots, AHCI stops on msahci Start = 3.
    let system = hive(d, "SYSTEM");
    let img = build(d, "win7.raw", &system, &[]);
    let (code, out) = check(&img, &[]);
    assert_eq!(code, 1, "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("IDE: boots"));
    assert_eq!(
        lines.next(),
        Some("AHCI: will stop with 0x7B: msahci Start = 3 in ControlSet001")
    );
    assert_eq!(check(&img, &["--controller", "ide"]).0, 0);
    assert_eq!(check(&img, &["--controller", "ahci"]).0, 1);
    let (_, j) = check_json(&img, &[]);
    assert_eq!(j["image"], img.display().to_string());
    assert_eq!(j["controllers"]["ide"]["boots"], true);
    assert_eq!(
        j["controllers"]["ide"]["storage_driver"]["service"],
        "intelide+atapi"
    );
    assert_eq!(j["controllers"]["ahci"]["boots"], false);
    assert_eq!(j["controllers"]["ahci"]["storage_driver"]["ok"], false);
    assert_eq!(
        j["controllers"]["ahci"]["storage_driver"]["service"],
        "msahci"
    );
    assert_eq!(finding(&j, "bcd")["ok"], true);
    assert_eq!(
        finding(&j, "mbr_boot_code")["evidence"]["class"],
        "SYSLINUX"
    );
    assert_eq!(
        finding(&j, "system_hive")["evidence"]["sequence"],
        "13983 / 13983"
    );
    // Every Start we report is what hivexget reads from the same hive.
    for f in j["findings"].as_array().unwrap() {
        if f["check"] != "storage_driver" {
            continue;
        }
        for drv in f["evidence"]["drivers"].as_array().unwrap() {
            let key = format!("\\{}", drv["key"].as_str().unwrap());
            let start = hivexget(&system, &key, "Start");
            assert_eq!(start, drv["Start"].to_string(), "{key}");
        }
    }

    // Windows 10 1709: dirty without logs; both boot, with the caveat.
    let w10 = hive(d, "SYSTEM_WIN_10_1709");
    let img = build(d, "w10.raw", &w10, &[]);
    let (code, j) = check_json(&img, &[]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["controllers"]["ide"]["boots"], true);
    assert_eq!(j["controllers"]["ahci"]["boots"], true);
    assert_eq!(
        j["controllers"]["ahci"]["storage_driver"]["service"],
        "storahci"
    );
    let state = finding(&j, "system_hive");
    assert!(
        state["detail"].as_str().unwrap().contains("may be stale"),
        "{state}"
    );
    assert_eq!(state["evidence"]["sequence"], "4317 / 4316");
    assert_eq!(
        finding(&j, "storage_driver")["evidence"]["source"],
        "DriverDatabase"
    );

    // SYSTEM_B with its logs: 315 dirty pages replayed; both stop on
    // StartOverride.
    let b = hive(d, "SYSTEM_B");
    let log1 = hive(d, "SYSTEM_B.LOG1");
    let log2 = hive(d, "SYSTEM_B.LOG2");
    let l1 = format!("log1={}", log1.display());
    let l2 = format!("log2={}", log2.display());
    let img = build(d, "b.raw", &b, &[&l1, &l2]);
    let (code, out) = check(&img, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(
        "IDE: will stop with 0x7B: intelide StartOverride\\0 = 3 in ControlSet001; atapi StartOverride\\0 = 3 in ControlSet001\n\
         AHCI: will stop with 0x7B: storahci StartOverride\\0 = 3 in ControlSet001\n"
    ), "{out}");
    let (_, j) = check_json(&img, &[]);
    assert_eq!(
        finding(&j, "system_hive")["evidence"]["log_pages_applied"],
        315
    );
    // The same hive without its logs: same verdicts, flagged stale.
    let img = build(d, "b-nolog.raw", &b, &[]);
    let (code, j) = check_json(&img, &[]);
    assert_eq!(code, 1);
    assert!(finding(&j, "system_hive")["detail"]
        .as_str()
        .unwrap()
        .contains("missing"));
    assert_eq!(
        j["controllers"]["ahci"]["storage_driver"]["reason"],
        "storahci StartOverride\\0 = 3 in ControlSet001"
    );
}

#[test]
fn hive_variants_change_the_verdict() {
    if !have_tools() {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let system = hive(d, "SYSTEM");
    // msahci enabled: AHCI boots too.
    let on = variant(
        d,
        &system,
        "SYSTEM-msahci0",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\msahci]\n\"Start\"=dword:00000000\n",
    );
    assert_eq!(
        hivexget(&on, "\\ControlSet001\\Services\\msahci", "Start"),
        "0"
    );
    let img = build(d, "on.raw", &on, &[]);
    let (code, out) = check(&img, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("IDE: boots\nAHCI: boots\n"), "{out}");
    // intelide disabled (Start = 4): IDE stops.
    let off = variant(
        d,
        &system,
        "SYSTEM-intelide4",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\intelide]\n\"Start\"=dword:00000004\n",
    );
    let img = build(d, "off.raw", &off, &[]);
    let (code, out) = check(&img, &["--controller", "ide"]);
    assert_eq!(code, 1);
    assert_eq!(
        out.lines().next(),
        Some("IDE: will stop with 0x7B: intelide Start = 4 in ControlSet001")
    );
    // Windows 10: a StartOverride 0 = 3 added under storahci stops AHCI.
    let w10 = hive(d, "SYSTEM_WIN_10_1709");
    let ov = variant(
        d,
        &w10,
        "W10-override",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\storahci\\StartOverride]\n\"0\"=dword:00000003\n",
    );
    let img = build(d, "ov.raw", &ov, &[]);
    let (code, j) = check_json(&img, &["--controller", "ahci"]);
    assert_eq!(code, 1);
    assert_eq!(
        j["controllers"]["ahci"]["storage_driver"]["reason"],
        "storahci StartOverride\\0 = 3 in ControlSet001"
    );
    assert!(j["controllers"].get("ide").is_none());
}

#[test]
fn broken_disks_are_named() {
    if !have_tools() {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let system = hive(d, "SYSTEM");
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "gpt",
            &["label=gpt"],
            "partition_table",
            "GPT disk behind a protective MBR",
        ),
        (
            "noactive",
            &["active=none"],
            "active_partition",
            "no partition is marked active",
        ),
        (
            "twoactive",
            &["active=both"],
            "active_partition",
            "2 partitions are marked active",
        ),
        (
            "zerombr",
            &["mbr=zero"],
            "mbr_boot_code",
            "empty (all zeros) boot code",
        ),
        (
            "grubmbr",
            &["mbr=grub"],
            "mbr_boot_code",
            "GRUB boot code: does not load",
        ),
        (
            "hidden",
            &["hidden=63"],
            "boot_sector",
            "hidden sectors 63 != partition start 2048",
        ),
        (
            "othersig",
            &["bcd=othersig"],
            "bcd",
            "disk signature deadbeef != the MBR's 1a2b3c4d",
        ),
        (
            "fat",
            &["fs=fat"],
            "boot_sector",
            "active partition 1 is not NTFS",
        ),
    ];
    for (name, opts, check_name, text) in cases {
        let img = build(d, &format!("{name}.raw"), &system, opts);
        let (code, j) = check_json(&img, &["--controller", "ide"]);
        assert_eq!(code, 1, "{name}: {j}");
        let f = finding(&j, check_name);
        assert_eq!(f["ok"], false, "{name}: {f}");
        assert!(f["detail"].as_str().unwrap().contains(text), "{name}: {f}");
        assert_eq!(j["controllers"]["ide"]["boots"], false, "{name}");
        let (_, out) = check(&img, &["--controller", "ide"]);
        assert!(out.starts_with("IDE: will not boot: "), "{name}: {out}");
    }
    // NTLDR instead of BOOTMGR (no BCD) is fine.
    let img = build(d, "ntldr.raw", &system, &["bcd=none"]);
    let (code, j) = check_json(&img, &["--controller", "ide"]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(finding(&j, "boot_manager")["evidence"]["ntldr"], true);

    // A corrupted SYSTEM hive: a named error, no panic.
    let bad = hive(d, "corrupted_system_hive");
    let img = build(d, "corrupt.raw", &bad, &[]);
    let (code, j) = check_json(&img, &[]);
    assert_eq!(code, 1, "{j}");
    let f = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "system_hive" && f["ok"] == false)
        .unwrap_or_else(|| panic!("no failing system_hive finding: {j}"));
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .starts_with("damaged: SYSTEM: key node at file offset 0x26078"),
        "{f}"
    );
    let (_, out) = check(&img, &["--controller", "ide"]);
    assert!(
        out.starts_with("IDE: will not boot: system_hive: damaged: SYSTEM: "),
        "{out}"
    );

    // Not a disk image at all, or missing: exit 2.
    let junk = d.join("junk");
    std::fs::write(&junk, b"x").unwrap();
    assert_eq!(check(&junk, &[]).0, 2);
    assert_eq!(check(&d.join("missing.vhdx"), &[]).0, 2);
}

#[test]
fn vhdx_and_differencing_chain_read_the_same() {
    if !have_tools() || !have_qemu() {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let system = hive(d, "SYSTEM");
    let raw = build(d, "win7.raw", &system, &[]);
    let vhdx = d.join("win7.vhdx");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx"])
        .arg(&raw)
        .arg(&vhdx)
        .status()
        .unwrap();
    assert!(st.success());
    let child = d.join("child.vhdx");
    rehost_ok(&[&"disk", &"create", &"--parent", &vhdx, &child]);
    let before = sha256_file(&vhdx);
    let (_, from_raw) = check(&raw, &[]);
    for img in [&vhdx, &child] {
        let (code, out) = check(img, &[]);
        assert_eq!(code, 1, "{out}");
        assert_eq!(out, from_raw, "{}", img.display());
    }
    assert_eq!(sha256_file(&vhdx), before);
}

#[test]
fn p2v_check_documents_its_options() {
    let out = rehost_ok(&[&"p2v", &"check", &"--help"]);
    for needed in [
        "--controller",
        "--json",
        "Exit codes:",
        "storage_driver",
        "\"findings\"",
    ] {
        assert!(out.contains(needed), "{needed}: {out}");
    }
    // Every option being described is checked with the disk commands in
    // disk_cli.rs (every_subcommand_documents_its_options).
}

fn to_vhdx(raw: &Path) -> PathBuf {
    let vhdx = raw.with_extension("vhdx");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx"])
        .arg(raw)
        .arg(&vhdx)
        .status()
        .unwrap();
    assert!(st.success());
    vhdx
}

/// The SYSTEM hive as third-party tools see it inside `image`: flattened
/// with `rehost disk convert`, the partition cut out, the file read with
/// ntfs-3g's ntfscat.
fn export_system(image: &Path, dir: &Path, name: &str) -> PathBuf {
    let flat = dir.join(format!("{name}.flat"));
    rehost_ok(&[&"disk", &"convert", &"-O", &"raw", &image, &flat]);
    let part = dir.join(format!("{name}.part"));
    let st = Command::new("dd")
        .arg(format!("if={}", flat.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=512", "skip=2048", "count=131072", "status=none"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("ntfscat")
        .arg(&part)
        .arg("/Windows/System32/config/SYSTEM")
        .output()
        .unwrap();
    assert!(out.status.success());
    let hive = dir.join(format!("{name}.SYSTEM"));
    std::fs::write(&hive, out.stdout).unwrap();
    hive
}

/// `rehost p2v fix --controller C [EXTRA...] IMAGE --out CHILD`.
fn fix(image: &Path, controller: &str, child: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"p2v", &"fix", &"--controller", &controller];
    for e in extra {
        args.push(e);
    }
    args.push(&image);
    args.push(&"--out");
    args.push(&child);
    rehost(&args)
}

fn reglookup(hive: &Path, path: &str) -> String {
    let out = Command::new("reglookup")
        .args(["-H", "-p", path])
        .arg(hive)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn fix_writes_only_into_the_child_and_changes_the_verdict() {
    if !have_tools() || !have_qemu() {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let system = hive(d, "SYSTEM");
    let vhdx = to_vhdx(&build(d, "win7.raw", &system, &[]));
    let before = sha256_file(&vhdx);
    let child = d.join("ahci.vhdx");
    let (code, out, err) = fix(&vhdx, "ahci", &child, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("wrote ControlSet001\\Services\\msahci\\Start: 3 -> 0\n"),
        "{out}"
    );
    assert!(out.contains("AHCI: boots\n"), "{out}");
    assert_eq!(sha256_file(&vhdx), before, "the parent changed");
    assert_eq!(check(&vhdx, &["--controller", "ahci"]).0, 1);
    assert_eq!(check(&child, &[]).0, 0);
    // Independent readers see the new value in the child's hive, the old
    // ones elsewhere, and a clean, checksummed base block.
    let fixed = export_system(&child, d, "ahci");
    assert_eq!(
        hivexget(&fixed, "\\ControlSet001\\Services\\msahci", "Start"),
        "0"
    );
    assert_eq!(
        hivexget(&fixed, "\\ControlSet001\\Services\\iaStorV", "Start"),
        "3"
    );
    assert_eq!(
        reglookup(&fixed, "/ControlSet001/Services/msahci/Start"),
        "/ControlSet001/services/msahci/Start,DWORD,0x00000000,"
    );
    let (a, b) = (
        std::fs::read(&system).unwrap(),
        std::fs::read(&fixed).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let changed: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    // Both sequence numbers, the checksum, and the value's data.
    assert!(
        changed
            .iter()
            .all(|&i| i < 512 || (i >= 4096 && i < a.len())),
        "{changed:?}"
    );
    assert!(changed.len() <= 16, "{changed:?}");
    let word = |d: &[u8], at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
    assert_eq!(word(&b, 4), word(&a, 4) + 1);
    assert_eq!(word(&b, 8), word(&b, 4));
    let sum = (0..127).fold(0u32, |x, i| x ^ word(&b, i * 4));
    assert_eq!(word(&b, 508), sum);

    // A StartOverride (added to the clean Windows 7 hive) is set to 0 too.
    let ov = variant(
        d,
        &system,
        "SYSTEM-atapi-override",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\atapi\\StartOverride]\n\"0\"=dword:00000003\n",
    );
    let vhdx = to_vhdx(&build(d, "ov.raw", &ov, &[]));
    let (code, out) = check(&vhdx, &["--controller", "ide"]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("IDE: will stop with 0x7B: atapi StartOverride\\0 = 3 in ControlSet001\n"),
        "{out}"
    );
    let child = d.join("ide.vhdx");
    let (code, out, err) = fix(&vhdx, "ide", &child, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("IDE: boots\n"), "{out}");
    let fixed = export_system(&child, d, "ide");
    assert_eq!(
        hivexget(
            &fixed,
            "\\ControlSet001\\Services\\atapi\\StartOverride",
            "0"
        ),
        "0"
    );

    // --active on a disk without an active partition.
    let vhdx = to_vhdx(&build(d, "noactive.raw", &system, &["active=none"]));
    let child = d.join("active.vhdx");
    let (code, out, err) = fix(&vhdx, "ide", &child, &["--active", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("wrote MBR: partition 1 marked active"),
        "{out}"
    );
    let (_, j) = check_json(&child, &["--controller", "ide"]);
    assert_eq!(finding(&j, "active_partition")["ok"], true);

    // --mbr on a disk whose boot code is all zeros: rehost's MBR goes into
    // the child, the disk signature and table stay, the parent is untouched.
    let vhdx = to_vhdx(&build(d, "zerombr.raw", &system, &["mbr=zero"]));
    let before = sha256_file(&vhdx);
    let (_, j) = check_json(&vhdx, &["--controller", "ahci"]);
    assert_eq!(finding(&j, "mbr_boot_code")["ok"], false, "{j}");
    let child = d.join("mbr.vhdx");
    let (code, out, err) = fix(&vhdx, "ahci", &child, &["--mbr"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("wrote MBR: boot code replaced by rehost's (was empty (all zeros))\n"),
        "{out}"
    );
    assert!(out.contains("AHCI: boots\n"), "{out}");
    assert_eq!(sha256_file(&vhdx), before, "the parent changed");
    let (code, j) = check_json(&child, &["--controller", "ahci"]);
    assert_eq!(code, 0, "{j}");
    let mbr = finding(&j, "mbr_boot_code");
    assert_eq!(mbr["ok"], true, "{j}");
    assert_eq!(mbr["evidence"]["class"], "rehost", "{j}");
    let (_, parent) = check_json(&vhdx, &[]);
    for key in ["partition_table", "active_partition", "bcd"] {
        assert_eq!(finding(&j, key), finding(&parent, key), "{key}");
    }

    // Refusals write nothing: a dirty hive, a raw image.
    let b = hive(d, "SYSTEM_B");
    let raw = build(d, "b.raw", &b, &[]);
    let vhdx = to_vhdx(&raw);
    let child = d.join("dirty.vhdx");
    let (code, _, err) = fix(&vhdx, "ahci", &child, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("the SYSTEM hive is dirty"), "{err}");
    assert!(!child.exists());
    let (code, _, err) = fix(&raw, "ahci", &child, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("a raw image cannot have a differencing child"),
        "{err}"
    );
    assert!(!child.exists());
}

/// A dirty SYSTEM whose last change (msahci Start 3 -> 0) is only in an
/// old-format (Windows XP-8, "DIRT") SYSTEM.LOG1: the check replays it and
/// AHCI then boots; a damaged log gives the stale-verdict finding instead.
#[test]
fn old_format_hive_log_is_replayed() {
    use rehost_boot::p2v::hive::base_block_checksum;
    use rehost_boot::p2v::hive_log::old_format_log;
    if !have_tools() {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let original = hive(d, "SYSTEM");
    let before = std::fs::read(&original).unwrap();
    // The change, made by an independent writer (hivexregedit) in a copy:
    // it rewrites a few cells and grows the hive by a bin.
    let changed = variant(
        d,
        &original,
        "SYSTEM-changed",
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\msahci]\n\"Start\"=dword:00000000\n",
    );
    let after = std::fs::read(&changed).unwrap();
    let seq = u32::from_le_bytes(before[4..8].try_into().unwrap()) + 1;
    let log = old_format_log(&before, &after, seq).unwrap();
    let dirty_pages = (4096..after.len())
        .step_by(512)
        .filter(|&at| before.get(at..at + 512) != Some(&after[at..at + 512]))
        .count();
    assert!(
        dirty_pages > 2 && after.len() > before.len(),
        "{dirty_pages}"
    );
    // The primary as a crash leaves it: the old data, the primary
    // sequence number bumped at the start of the write.
    let mut primary = before.clone();
    primary[4..8].copy_from_slice(&seq.to_le_bytes());
    let sum = base_block_checksum(&primary).unwrap();
    primary[508..512].copy_from_slice(&sum.to_le_bytes());
    let system = d.join("SYSTEM-dirty");
    std::fs::write(&system, &primary).unwrap();
    let log1 = d.join("SYSTEM-dirty.LOG1");
    std::fs::write(&log1, &log).unwrap();
    // An independent reader sees the old value in the primary file.
    assert_eq!(
        hivexget(&system, "\\ControlSet001\\Services\\msahci", "Start"),
        "3"
    );

    let img = build(
        d,
        "oldlog.raw",
        &system,
        &[&format!("log1={}", log1.display())],
    );
    let (code, j) = check_json(&img, &[]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["controllers"]["ahci"]["boots"], true, "{j}");
    let f = finding(&j, "system_hive");
    let seqs = format!("{seq} / {}", seq - 1);
    assert_eq!(f["evidence"]["sequence_before"], seqs);
    assert_eq!(f["evidence"]["log_format"], "old");
    assert_eq!(
        f["evidence"]["logs_applied"],
        serde_json::json!(["SYSTEM.LOG1"])
    );
    assert_eq!(f["evidence"]["log_pages_applied"], dirty_pages);
    assert_eq!(f["evidence"]["stale"], false);
    assert_eq!(
        f["detail"],
        format!("dirty (sequence numbers {seqs}); replayed the old-format log SYSTEM.LOG1 ({dirty_pages} dirty 512-byte pages) in memory: now {seq} / {seq}")
    );

    // The same log cut short, and a log of garbage: no replay, the verdict
    // of the primary as it is, flagged as possibly stale.
    let cut = d.join("cut.LOG1");
    std::fs::write(&cut, &log[..log.len() - 100]).unwrap();
    let garbage = d.join("garbage.LOG1");
    let mut junk = log[..512].to_vec();
    junk.extend((0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&garbage, &junk).unwrap();
    for (name, bad, why) in [
        ("cut", &cut, "past the end"),
        ("garbage", &garbage, "not \"DIRT\""),
    ] {
        let img = build(
            d,
            &format!("{name}.raw"),
            &system,
            &[&format!("log1={}", bad.display())],
        );
        let (code, j) = check_json(&img, &[]);
        assert_eq!(code, 1, "{name}: {j}");
        assert_eq!(
            j["controllers"]["ahci"]["storage_driver"]["reason"],
            "msahci Start = 3 in ControlSet001",
            "{name}"
        );
        let f = finding(&j, "system_hive");
        assert_eq!(f["evidence"]["stale"], true, "{name}: {f}");
        let detail = f["detail"].as_str().unwrap();
        assert!(
            detail.ends_with("the verdict may be stale"),
            "{name}: {detail}"
        );
        assert!(detail.contains(why), "{name}: {detail}");
    }
}

/// A SOFTWARE hive built with hivex tools (the small BCD sample as a base,
/// a CurrentVersion key merged in): the check reports the version written;
/// a missing or unreadable SOFTWARE is named.
#[test]
fn software_hive_gives_the_windows_version() {
    if !have_tools() {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let system = hive(d, "SYSTEM");
    let base = hive(d, "BCD");
    let software = merge(
        d,
        &base,
        "SOFTWARE",
        "HKEY_LOCAL_MACHINE\\SOFTWARE",
        "[HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft]\n\n\
         [HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT]\n\n\
         [HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion]\n\
         \"ProductName\"=\"Windows Server 2008 R2 Standard\"\n\
         \"CurrentVersion\"=\"6.1\"\n\
         \"CurrentBuildNumber\"=\"7601\"\n\
         \"CurrentBuild\"=\"7601\"\n\
         \"CSDVersion\"=\"Service Pack 1\"\n",
    );
    let key = "\\Microsoft\\Windows NT\\CurrentVersion";
    assert_eq!(hivexget(&software, key, "CurrentBuildNumber"), "7601");

    let img = build(
        d,
        "sw.raw",
        &system,
        &[&format!("software={}", software.display())],
    );
    let (_, j) = check_json(&img, &[]);
    let f = finding(&j, "windows_version");
    assert_eq!(f["ok"], true);
    assert_eq!(
        f["detail"],
        "Windows Server 2008 R2 Standard (version 6.1, build 7601)"
    );
    for v in [
        "ProductName",
        "CurrentVersion",
        "CurrentBuildNumber",
        "CSDVersion",
    ] {
        assert_eq!(f["evidence"][v], hivexget(&software, key, v), "{v}");
    }
    let (_, text) = check(&img, &[]);
    assert!(
        text.contains("Windows Server 2008 R2 Standard (version 6.1, build 7601)"),
        "{text}"
    );

    // No SOFTWARE: named, version unknown, the verdict as before.
    let img = build(d, "nosw.raw", &system, &[]);
    let (code, j) = check_json(&img, &["--controller", "ide"]);
    assert_eq!(code, 0);
    let f = finding(&j, "windows_version");
    assert_eq!(
        f["detail"],
        "Windows\\System32\\config\\SOFTWARE is missing: version unknown"
    );
    // A SOFTWARE that is not a hive, and one without the key.
    let junk = d.join("junk");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let img = build(
        d,
        "badsw.raw",
        &system,
        &[&format!("software={}", junk.display())],
    );
    let (code, j) = check_json(&img, &["--controller", "ide"]);
    assert_eq!(code, 0);
    let detail = finding(&j, "windows_version")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.starts_with("SOFTWARE hive unreadable (SOFTWARE: base block"),
        "{detail}"
    );
    assert!(detail.ends_with("version unknown"), "{detail}");
    let img = build(
        d,
        "keyless.raw",
        &system,
        &[&format!("software={}", base.display())],
    );
    let (_, j) = check_json(&img, &["--controller", "ide"]);
    assert_eq!(
        finding(&j, "windows_version")["detail"],
        "SOFTWARE has no Microsoft\\Windows NT\\CurrentVersion key; version unknown"
    );
}

/// `rehost run --disk IMAGE,controller=C EXTRA...` until SeaBIOS says on
/// COM1 that it boots the disk (the check, if any, is over by then), or
/// 60 s: (stdout, stderr).
fn run_until_booting(image: &Path, controller: &str, extra: &[&str]) -> (String, String) {
    use std::io::Read;
    use std::process::Stdio;
    let disk = format!("{},controller={controller}", image.display());
    let mut child = Command::new(REHOST)
        .args(["run", "--memory", "32M", "--disk", &disk])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            if text.contains("Booting from Hard Disk") {
                let _ = tx.send(text);
                return;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    (out, err.join().unwrap())
}

#[test]
fn run_warns_before_booting_windows_on_a_controller_it_has_no_driver_for() {
    if !have_tools() {
        return;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        let reason = format!("rehost run needs /dev/kvm: {e}");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{reason}");
        }
        skip(&reason);
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let system = hive(d, "SYSTEM");
    let img = build(d, "win7.raw", &system, &[]);
    let warning = "AHCI: will stop with 0x7B: msahci Start = 3 in ControlSet001";
    for (controller, extra, warns) in [
        ("ahci", &[][..], true),
        ("ide", &[][..], false),
        ("ahci", &["--no-p2v-check"][..], false),
    ] {
        let (out, err) = run_until_booting(&img, controller, extra);
        assert!(
            out.contains("Booting from Hard Disk"),
            "{controller} {extra:?}: the machine did not start booting\nstdout: {out}\nstderr: {err}"
        );
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("--disk ")).collect();
        if warns {
            assert_eq!(lines.len(), 1, "{err}");
            assert!(lines[0].contains(warning), "{err}");
            assert!(lines[0].contains(&img.display().to_string()), "{err}");
            assert!(lines[0].contains("--no-p2v-check"), "{err}");
        } else {
            assert!(lines.is_empty(), "{controller} {extra:?}: {err}");
        }
    }
    // A disk without Windows gets no warning on either controller.
    let plain = d.join("plain.raw");
    std::fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
    for controller in ["ide", "ahci"] {
        let (out, err) = run_until_booting(&plain, controller, &[]);
        assert!(out.contains("Booting from Hard Disk"), "{out}\n{err}");
        assert!(!err.contains("--disk "), "{err}");
    }
}
