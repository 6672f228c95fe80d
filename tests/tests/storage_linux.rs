//! A Linux guest finds its disks through `ata_piix` and `ahci`. This needs
//! a 64-bit guest, so hardware virtualization: the test is ignored by
//! default (counted as skipped, never as passed), `scripts/test` runs it
//! where the host has it, and run on purpose on the PVM backend it fails
//! with `skipped: no hardware virtualization (KVM backend is PVM)`.
//!
//! The guest is Debian's kernel (booted directly) with a small initramfs
//! built from the same package: it loads ata_piix, ahci and sd_mod, prints
//! /proc/partitions on COM1 and powers off. One disk sits on each
//! controller.

use std::time::Duration;

use rehost_tests::storage::linux_storage_guest;
use rehost_tests::{hardware_virtualization, kvm_available, run, NO_HW_VIRT};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

#[test]
#[ignore = "needs hardware virtualization (a 64-bit guest); scripts/test runs it where the host has it"]
fn linux_finds_disks_through_ata_piix_and_ahci() {
    let name = "linux_ata_piix_and_ahci";
    assert!(hardware_virtualization(), "{name}: {NO_HW_VIRT}");
    if !kvm_available(name) {
        return;
    }
    let (kernel, initramfs) = linux_storage_guest();
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
    let (code, out, err) = run(
        REHOST,
        &[
            "run",
            "--memory",
            "512M",
            "--no-reboot",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initramfs.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 panic=-1",
            "--disk",
            a.to_str().unwrap(),
            "--disk",
            &ahci,
        ],
        Duration::from_secs(600),
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("insmod"), "a module did not load: {out}");
    assert!(out.contains("ata_piix"), "{out}");
    assert!(out.contains("ahci 0000:00:04.0"), "{out}");
    assert!(out.contains("REHOST HARDDISK"), "{out}");
    let parts = &out[out.find("rehost-initramfs: partitions").expect(&out)..];
    // /proc/partitions counts 1 KiB blocks.
    assert!(
        parts.contains("65536 sd"),
        "the IDE disk is missing: {parts}"
    );
    assert!(
        parts.contains("131072 sd"),
        "the AHCI disk is missing: {parts}"
    );
}
