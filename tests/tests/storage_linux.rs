//! A Linux guest finds its disks through `ata_piix` and `ahci`. This needs
//! a 64-bit guest, so hardware virtualization: the test is ignored by
//! default (counted as skipped, never as passed), and run on purpose on the
//! PVM backend it fails with `skipped: no hardware virtualization`.
//!
//! With hardware virtualization, the test boots the host's kernel and
//! initrd (REHOST_TEST_KERNEL / REHOST_TEST_INITRD, default the newest
//! /boot/vmlinuz-* and its initrd.img) with one disk on each controller and
//! no root device: the initramfs loads the drivers, which must name both
//! disks on the console before it gives up waiting for root.

use std::path::PathBuf;
use std::time::Duration;

use rehost_tests::{hardware_virtualization, kvm_available, Running, NO_HW_VIRT};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn boot_file(var: &str, prefix: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v.pop()
}

#[test]
#[ignore = "needs hardware virtualization (a 64-bit guest); scripts/test runs it where the host has it"]
fn linux_finds_disks_through_ata_piix_and_ahci() {
    let name = "linux_ata_piix_and_ahci";
    assert!(hardware_virtualization(), "{name}: {NO_HW_VIRT}");
    if !kvm_available(name) {
        return;
    }
    let (Some(kernel), Some(initrd)) = (
        boot_file("REHOST_TEST_KERNEL", "vmlinuz-"),
        boot_file("REHOST_TEST_INITRD", "initrd.img-"),
    ) else {
        panic!("{name}: no kernel and initrd (set REHOST_TEST_KERNEL and REHOST_TEST_INITRD)");
    };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("ide.raw");
    let b = dir.path().join("ahci.raw");
    std::fs::File::create(&a)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    std::fs::File::create(&b)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let ahci = format!("{},controller=ahci", b.to_str().unwrap());
    let mut vm = Running::start(
        REHOST,
        &[
            "run",
            "--memory",
            "512M",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 root=/dev/disk/by-label/none rootdelay=1 panic=-1",
            "--disk",
            a.to_str().unwrap(),
            "--disk",
            &ahci,
            "--no-reboot",
        ],
    );
    let found = vm.wait_for("MiB)", 2, Duration::from_secs(300));
    let out = vm.stdout();
    assert!(found, "the kernel did not report both disks: {out}");
    assert!(out.contains("ata_piix"), "{out}");
    assert!(out.contains("ahci"), "{out}");
    assert!(out.contains("REHOST HARDDISK"), "{out}");
    assert!(out.contains("(67.1 MB/64.0 MiB)"), "{out}");
    assert!(out.contains("(134 MB/128 MiB)"), "{out}");
}
