//! End-to-end with GRUB 2 (Debian grub-pc-bin): SeaBIOS boots a GRUB disk
//! (a dynamic VHDX) from the IDE and from the AHCI controller; GRUB then
//! loads its own native driver (`pata`, `ahci`), lists the disk and its
//! partition, hashes a file with sha256 (the host's sha256 must match) and
//! powers off with `halt`.

use std::path::Path;
use std::time::Duration;

use rehost_tests::storage::{grub_disk, lcg_data, rehost_disk, require_tools, scratch, sha256};
use rehost_tests::{kvm_available, run};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn grub_native_driver(test: &str, controller: &str, module: &str, device: &str, fw_line: &str) {
    if !kvm_available(test) {
        return;
    }
    require_tools(&["grub-mkimage", "sfdisk", "mke2fs", "perl"]);
    let dir = scratch(test);
    let file = dir.join("data.bin");
    std::fs::write(&file, lcg_data(40_000, 0x1234_5678)).unwrap();
    let expected = sha256(&file);
    let cfg = format!(
        "serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
echo \"grub: started\"
insmod echo
insmod ls
insmod halt
insmod hashsum
insmod gcry_sha256
insmod {module}
echo \"grub: native disks:\"
ls
echo \"grub: files:\"
ls ({device},msdos1)/
hashsum --hash sha256 ({device},msdos1)/data.bin
echo \"grub: done\"
halt
"
    );
    let raw = dir.join("grub.raw");
    grub_disk(&raw, &cfg, &[&file]);
    let vhdx = dir.join("grub.vhdx");
    rehost_disk(REHOST, &["convert", "-O", "vhdx", s(&raw), s(&vhdx)]);
    let fw_log = dir.join("firmware.log");
    let disk = format!("{},controller={controller}", s(&vhdx));
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
        ],
        Duration::from_secs(900),
    );
    assert_eq!(
        code,
        Some(0),
        "GRUB's halt did not power off\nstdout: {out}\nstderr: {err}"
    );
    let fw = std::fs::read_to_string(&fw_log).unwrap();
    assert!(fw.contains(fw_line), "{fw}");
    assert!(out.contains("grub: started"), "{out}");
    let after_ls = &out[out.find("grub: native disks:").expect(&out)..];
    assert!(
        after_ls.contains(&format!("({device}) ({device},msdos1)")),
        "GRUB's {module} driver did not list the disk: {out}"
    );
    assert!(after_ls.contains("data.bin"), "{out}");
    assert!(
        out.contains(&expected),
        "GRUB's sha256 differs from the host's {expected}: {out}"
    );
    assert!(out.contains("grub: done"), "{out}");
    assert!(err.is_empty(), "a clean run logs nothing: {err}");
}

#[test]
fn seabios_boots_grub_from_ide_and_grub_pata_reads_the_disk() {
    grub_native_driver("grub_ide", "ide", "pata", "ata0", "ata0-0: REHOST HARDDISK");
}

#[test]
fn seabios_boots_grub_from_ahci_and_grub_ahci_reads_the_disk() {
    grub_native_driver(
        "grub_ahci",
        "ahci",
        "ahci",
        "ahci0",
        "AHCI/0: REHOST HARDDISK",
    );
}
