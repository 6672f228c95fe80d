//! End-to-end: SeaBIOS boots an El Torito ISO (grub-mkrescue, Debian
//! xorriso and mtools) from the ATAPI CD-ROM on the IDE and on the AHCI
//! controller. A hard disk that would announce itself is attached too:
//! `--boot cdrom` must put the CD first.

use std::path::Path;
use std::time::Duration;

use rehost_tests::storage::{grub_iso, require_tools, scratch, Int13Program};
use rehost_tests::{kvm_available, run};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn cd_boot(test: &str, controller: &str, fw_line: &str) {
    if !kvm_available(test) {
        return;
    }
    require_tools(&["grub-mkrescue", "xorriso", "mformat", "nasm"]);
    let dir = scratch(test);
    let iso = dir.join("boot.iso");
    grub_iso(
        &iso,
        "serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
echo \"grub-iso: booted from the CD-ROM\"
halt
",
    );
    // A bootable hard disk on the same controller: if it were booted, the
    // INT 13h program would print its start line.
    let hd = dir.join("hd.raw");
    Int13Program {
        sectors: 64,
        ..Default::default()
    }
    .raw_disk(&hd, 16 << 20);
    let fw_log = dir.join("firmware.log");
    let cd = format!("{},controller={controller}", s(&iso));
    let disk = format!("{},controller={controller}", s(&hd));
    let (code, out, err) = run(
        REHOST,
        &[
            "run",
            "--memory",
            "128M",
            "--firmware-log",
            s(&fw_log),
            "--disk",
            &disk,
            "--cdrom",
            &cd,
            "--boot",
            "cdrom",
        ],
        Duration::from_secs(900),
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("Booting from DVD/CD"), "{out}");
    assert!(out.contains("grub-iso: booted from the CD-ROM"), "{out}");
    assert!(
        !out.contains("int13: start"),
        "the hard disk was booted: {out}"
    );
    let fw = std::fs::read_to_string(&fw_log).unwrap();
    assert!(fw.contains(fw_line), "{fw}");
}

#[test]
fn el_torito_iso_boots_from_ide_atapi() {
    cd_boot(
        "cdrom_ide",
        "ide",
        "DVD/CD [ata1-0: REHOST DVD-ROM ATAPI-7 DVD/CD]",
    );
}

#[test]
fn el_torito_iso_boots_from_ahci_atapi() {
    cd_boot(
        "cdrom_ahci",
        "ahci",
        "DVD/CD [AHCI/1: REHOST DVD-ROM ATAPI-7 DVD/CD]",
    );
}
