//! End-to-end: direct Linux boot of Debian's `linux-image-amd64` kernel to
//! a marker on COM1. A stock 64-bit kernel needs hardware virtualization:
//! the test is `#[ignore]`d (reported as ignored, with the reason) and
//! `scripts/test` runs it only where the host has it; run by hand on a PVM
//! host it fails with `skipped: no hardware virtualization (KVM backend is
//! PVM)` rather than pretend to pass.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rehost_tests::{artifacts_dir, hardware_virtualization, kvm_available, run, NO_HW_VIRT};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

/// A Debian kernel: $REHOST_TEST_KERNEL, the host's /boot/vmlinuz-*, or
/// one extracted from the `linux-image-amd64` package into target/.
fn debian_kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("REHOST_TEST_KERNEL") {
        return k.into();
    }
    if let Some(k) = std::fs::read_dir("/boot").ok().and_then(|d| {
        d.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
    }) {
        return k;
    }
    let dir = artifacts_dir().join("kernel");
    std::fs::create_dir_all(&dir).unwrap();
    let script = "set -e; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); \
                  apt-get download \"$pkg\" >/dev/null 2>&1; \
                  dpkg-deb --fsys-tarfile \"$pkg\"_*.deb | tar -x ./boot/; \
                  ls ./boot/vmlinuz-*";
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(&dir)
        .output()
        .expect("running apt-get download");
    assert!(
        out.status.success(),
        "fetching linux-image-amd64 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
#[ignore = "needs hardware virtualization (a 64-bit guest); scripts/test runs it where the host has it"]
fn debian_kernel_boots_directly_to_a_console_marker() {
    assert!(
        hardware_virtualization(),
        "debian_kernel_boots_directly_to_a_console_marker: {NO_HW_VIRT}"
    );
    if !kvm_available("debian_kernel_direct_boot") {
        return;
    }
    let kernel = debian_kernel();
    // No root file system: the kernel panics after its banner, panic=-1
    // reboots at once, and --no-reboot turns that into exit code 3.
    let (code, out, err) = run(
        REHOST,
        &[
            "run",
            "--memory",
            "512M",
            "--no-reboot",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 panic=-1",
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.contains("Linux version"),
        "no kernel banner on COM1: {out:?} {err}"
    );
    assert!(out.contains("Kernel panic"), "{out}");
    assert_eq!(code, Some(3), "{err}");
}
