//! End-to-end: a real-mode program (resources/storage/int13-rw.asm) writes
//! and reads back tens of MiB through SeaBIOS's INT 13h extensions, so the
//! firmware's own ATA (PIIX IDE, PIO) and AHCI (DMA) drivers do the
//! controller work. The disk is a differencing VHDX child over a VHDX
//! parent whose sha256 must not change; afterwards the host reads exactly
//! the written bytes back from the child through `rehost disk convert`.

use std::path::Path;
use std::time::Duration;

use rehost_tests::storage::{rehost_disk, require_tools, scratch, sha256, Int13Program};
use rehost_tests::{kvm_available, run};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
const DISK_BYTES: u64 = 64 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Checks that `image` (read through its chain) holds the program at LBA 0,
/// the program's data in its range, and zeros everywhere else.
fn assert_content(image: &Path, prog: &Int13Program, dir: &Path) {
    let flat = dir.join("flat.raw");
    let _ = std::fs::remove_file(&flat);
    rehost_disk(REHOST, &["convert", "-O", "raw", s(image), s(&flat)]);
    let data = std::fs::read(&flat).unwrap();
    assert_eq!(data.len() as u64, DISK_BYTES);
    let code = prog.build();
    assert_eq!(&data[..code.len()], &code[..], "the program at LBA 0");
    let end = prog.start_lba + prog.sectors;
    for lba in prog.start_lba..end {
        let at = lba as usize * 512;
        assert!(
            data[at..at + 512] == prog.expected_sector(lba),
            "sector {lba} differs from what the guest wrote"
        );
    }
    assert!(
        data[code.len()..prog.start_lba as usize * 512]
            .iter()
            .chain(&data[end as usize * 512..])
            .all(|&b| b == 0),
        "bytes outside the written range changed"
    );
}

fn int13_on_differencing_vhdx(test: &str, controller: &str, mib: u64, driver_line: &str) {
    if !kvm_available(test) {
        return;
    }
    require_tools(&["nasm"]);
    let dir = scratch(test);
    let prog = Int13Program {
        sectors: mib * 2048,
        ..Default::default()
    };
    let raw = dir.join("base.raw");
    prog.raw_disk(&raw, DISK_BYTES);
    let parent = dir.join("parent.vhdx");
    rehost_disk(REHOST, &["convert", "-O", "vhdx", s(&raw), s(&parent)]);
    let parent_sha = sha256(&parent);
    let child = dir.join("child.vhdx");
    rehost_disk(REHOST, &["create", "--parent", s(&parent), s(&child)]);
    let fw_log = dir.join("firmware.log");
    let disk = format!("{},controller={controller}", s(&child));
    let (code, out, err) = run(
        REHOST,
        &[
            "run",
            "--memory",
            "64M",
            "--firmware-log",
            s(&fw_log),
            "--disk",
            &disk,
        ],
        Duration::from_secs(900),
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        out.contains(&format!("int13: ok sectors={:08x}", prog.sectors)),
        "{out}"
    );
    let fw = std::fs::read_to_string(&fw_log).unwrap();
    assert!(
        fw.contains(driver_line),
        "SeaBIOS did not use {driver_line:?}: {fw}"
    );
    assert_eq!(sha256(&parent), parent_sha, "the parent changed");
    let info = rehost_disk(REHOST, &["info", s(&child)]);
    assert!(info.contains("differencing"), "{info}");
    rehost_disk(REHOST, &["check", s(&child)]);
    assert_content(&child, &prog, &dir);
}

#[test]
fn int13_writes_and_reads_back_through_seabios_ide() {
    int13_on_differencing_vhdx(
        "int13_ide",
        "ide",
        10,
        "ata0-0: REHOST HARDDISK ATA-8 Hard-Disk (64 MiBytes)",
    );
}

#[test]
fn int13_writes_and_reads_back_through_seabios_ahci() {
    int13_on_differencing_vhdx(
        "int13_ahci",
        "ahci",
        32,
        "AHCI/0: REHOST HARDDISK ATA-8 Hard-Disk (64 MiBytes)",
    );
}

#[test]
fn read_only_disk_refuses_guest_writes_on_both_controllers() {
    if !kvm_available("int13_read_only") {
        return;
    }
    require_tools(&["nasm"]);
    let dir = scratch("int13_read_only");
    let prog = Int13Program {
        sectors: 128,
        ..Default::default()
    };
    for controller in ["ide", "ahci"] {
        let raw = dir.join(format!("{controller}.raw"));
        prog.raw_disk(&raw, DISK_BYTES);
        let before = sha256(&raw);
        let disk = format!("{},controller={controller},readonly=on", s(&raw));
        let (code, out, err) = run(
            REHOST,
            &["run", "--memory", "64M", "--disk", &disk],
            Duration::from_secs(300),
        );
        assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
        assert!(out.contains("int13: write start"), "{out}");
        assert!(
            out.contains("int13: FAIL write"),
            "{controller}: the write did not fail: {out}"
        );
        assert!(!out.contains("int13: ok"), "{out}");
        assert_eq!(sha256(&raw), before, "{controller}: the image changed");
    }
}
