//! End-to-end: a real-mode program (resources/storage/int13-rw.asm) writes
//! and reads back tens of MiB through SeaBIOS's INT 13h extensions, so the
//! firmware's own ATA (PIIX IDE, PIO) and AHCI (DMA) drivers do the
//! controller work. The disk is a differencing VHDX child over a VHDX
//! parent whose sha256 must not change; afterwards the host reads exactly
//! the written bytes back from the child through `rehost disk convert`.

use std::path::Path;
use std::time::Duration;

use rehost_tests::storage::{int13_on_child, require_tools, scratch, sha256, Int13Program};
use rehost_tests::{kvm_available, run};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
const DISK_BYTES: u64 = 64 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn int13_on_differencing_vhdx(test: &str, controller: &str, mib: u64, driver_line: &str) {
    int13_on_child(REHOST, test, mib * 2048, DISK_BYTES, driver_line, |child| {
        vec!["--disk".into(), format!("{child},controller={controller}")]
    });
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
