//! End-to-end USB on the xHCI controller, with drivers nobody here wrote:
//! SeaBIOS's xHCI and USB mass-storage drivers (only in Debian's
//! bios-256k.bin, which `--usb-controller xhci` loads by default) boot
//! GRUB from a USB disk (a differencing VHDX child) and GRUB hashes a file
//! through them (GRUB 2.06 has no xHCI driver of its own); SeaBIOS's USB
//! keyboard driver sets up a keyboard on the same controller. A real-mode
//! program writes and reads back through SeaBIOS's INT 13h on a USB disk
//! on xHCI, and the host finds exactly those bytes in the child, the
//! parent unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rehost_tests::storage::{
    grub_disk, int13_on_child, lcg_data, rehost_disk, require_tools, scratch, sha256,
};
use rehost_tests::{kvm_available, run};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A differencing VHDX child over a VHDX copy of `raw`; returns (parent,
/// child).
fn child_of(raw: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let parent = dir.join("parent.vhdx");
    rehost_disk(REHOST, &["convert", "-O", "vhdx", s(raw), s(&parent)]);
    let child = dir.join("child.vhdx");
    rehost_disk(REHOST, &["create", "--parent", s(&parent), s(&child)]);
    (parent, child)
}

#[test]
fn seabios_256k_boots_grub_from_usb_on_xhci_and_grub_hashes_through_it() {
    if !kvm_available("usb_xhci_grub") {
        return;
    }
    require_tools(&["grub-mkimage", "sfdisk", "mke2fs", "perl"]);
    let dir = scratch("usb_xhci_grub");
    let file = dir.join("data.bin");
    std::fs::write(&file, lcg_data(40_000, 0x0c03_3000)).unwrap();
    let expected = sha256(&file);
    let cfg = "serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
echo \"grub: started\"
insmod echo
insmod ls
insmod halt
insmod hashsum
insmod gcry_sha256
echo \"grub: firmware disks:\"
ls
hashsum --hash sha256 (hd0,msdos1)/data.bin
echo \"grub: done\"
halt
";
    let raw = dir.join("grub.raw");
    grub_disk(&raw, cfg, &[&file]);
    let (parent, child) = child_of(&raw, &dir);
    let parent_sha = sha256(&parent);
    let fw_log = dir.join("firmware.log");
    let usb_disk = format!("disk:{}", s(&child));
    // No --firmware: the xHCI controller picks bios-256k.bin itself.
    let (code, out, err) = run(
        REHOST,
        &[
            "run",
            "--memory",
            "128M",
            "--firmware-log",
            s(&fw_log),
            "--usb-controller",
            "xhci",
            "--usb",
            &usb_disk,
            "--usb",
            "keyboard",
            "--boot",
            "usb",
        ],
        Duration::from_secs(900),
    );
    assert_eq!(
        code,
        Some(0),
        "GRUB's halt did not power off\nstdout: {out}\nstderr: {err}"
    );
    let fw = std::fs::read_to_string(&fw_log).unwrap();
    for line in [
        "1: /pci@i0cf8/usb@5/storage@1/channel@0/disk@0,0",
        "PCI: XHCI at 00:05.0",
        "XHCI    protocol USB  2.00, 4 ports (offset 1)",
        "XHCI    protocol USB  3.00, 4 ports (offset 5)",
        "enabled, pls 0, speed 3 [High]",
        "USB MSC vendor='REHOST' product='USB DISK'",
        "USB MSC blksize=512 sectors=65536",
        // The keyboard on port 2 at full speed, its interrupt endpoint
        // polled through a transfer ring.
        "speed 1 [Full]",
        "USB keyboard initialized",
    ] {
        assert!(fw.contains(line), "firmware log lacks {line:?}: {fw}");
    }
    // No UHCI or EHCI here: the disk is read through the xHCI driver.
    assert!(!fw.contains("UHCI init"), "{fw}");
    let part =
        &out[out.find("grub: firmware disks:").expect(&out)..out.find("grub: done").expect(&out)];
    assert!(part.contains("(hd0) (hd0,msdos1)"), "{part}");
    assert!(
        part.contains(&expected),
        "the hash through SeaBIOS's xHCI driver differs from the host's {expected}: {part}"
    );
    assert!(err.is_empty(), "a clean run logs nothing: {err}");
    assert_eq!(sha256(&parent), parent_sha, "the parent changed");
}

#[test]
fn int13_writes_and_reads_back_through_seabios_usb_on_xhci() {
    int13_on_child(
        REHOST,
        "usb_xhci_int13",
        2 * 2048,
        16 << 20,
        "XHCI port #2: 0x00200e03, powered, enabled, pls 0, speed 3 [High]",
        |child| {
            vec![
                "--usb-controller".into(),
                "xhci".into(),
                "--usb".into(),
                format!("disk:{child},port=2"),
            ]
        },
    );
}
