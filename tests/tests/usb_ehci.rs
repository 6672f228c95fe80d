//! End-to-end USB on the ICH9 EHCI with its UHCI companions, with drivers
//! nobody here wrote: SeaBIOS's EHCI and USB mass-storage drivers boot
//! GRUB from a high-speed USB disk (a differencing VHDX child) while its
//! UHCI driver takes the keyboard the EHCI handed to a companion; GRUB
//! hashes a file through the firmware, then its own `ehci` (+ `uhci` for
//! the companions) and `usbms` drivers take the controllers, list the
//! disk with 512-byte bulk packets and the keyboard, and hash the same
//! file. Every hash equals the host's; the parent is unchanged. A
//! real-mode program writes and reads back through SeaBIOS's INT 13h on a
//! USB disk on the EHCI, and the host finds exactly those bytes in the
//! child, the parent unchanged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
fn seabios_boots_grub_from_usb_on_ehci_and_grub_ehci_usbms_read_the_disk() {
    if !kvm_available("usb_ehci_grub") {
        return;
    }
    require_tools(&["grub-mkimage", "sfdisk", "mke2fs", "perl"]);
    let dir = scratch("usb_ehci_grub");
    let file = dir.join("data.bin");
    std::fs::write(&file, lcg_data(40_000, 0x5eed_e4c1)).unwrap();
    let expected = sha256(&file);
    // Every module is loaded before `ehci` takes the controller away from
    // the firmware's driver (and with it GRUB's (hd0)); `uhci`, for the
    // companions, comes from the USB disk through GRUB's own ehci+usbms.
    let cfg = "serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
echo \"grub: started\"
insmod echo
insmod ls
insmod halt
insmod hashsum
insmod gcry_sha256
insmod usbms
insmod usbtest
echo \"grub: firmware disks:\"
ls
hashsum --hash sha256 (hd0,msdos1)/data.bin
echo \"grub: firmware hash done\"
insmod ehci
echo \"grub: native disks:\"
ls
hashsum --hash sha256 (usb0,msdos1)/data.bin
echo \"grub: native hash done\"
set prefix=(usb0,msdos1)/boot/grub
insmod uhci
echo \"grub: usb devices:\"
usb
echo \"grub: done\"
halt
";
    let raw = dir.join("grub.raw");
    grub_disk(&raw, cfg, &[&file]);
    let (parent, child) = child_of(&raw, &dir);
    let parent_sha = sha256(&parent);
    let fw_log = dir.join("firmware.log");
    let usb_disk = format!("disk:{}", s(&child));
    let started = Instant::now();
    let (code, out, err) = run(
        REHOST,
        &[
            "run",
            "--memory",
            "128M",
            "--firmware-log",
            s(&fw_log),
            "--usb-controller",
            "ehci",
            "--usb",
            &usb_disk,
            "--usb",
            "keyboard",
            "--boot",
            "usb",
        ],
        Duration::from_secs(900),
    );
    eprintln!("usb_ehci_grub: the guest ran {:?}", started.elapsed());
    assert_eq!(
        code,
        Some(0),
        "GRUB's halt did not power off\nstdout: {out}\nstderr: {err}"
    );
    let fw = std::fs::read_to_string(&fw_log).unwrap();
    for line in [
        "1: /pci@i0cf8/usb@1d,7/storage@1/channel@0/disk@0,0",
        "EHCI init on dev 00:1d.7",
        "UHCI init on dev 00:1d.0",
        "USB MSC vendor='REHOST' product='USB DISK'",
        "USB MSC blksize=512 sectors=65536",
    ] {
        assert!(fw.contains(line), "firmware log lacks {line:?}: {fw}");
    }
    // SeaBIOS scans the companions' ports once, for 100 ms, as soon as the
    // EHCI has taken its ports; the full-speed keyboard is handed over only
    // after the disk's and its own port resets, so the firmware does not
    // see it (GRUB's drivers below do).
    // The firmware's driver: (hd0) and the hash through INT 13h.
    let fw_part = &out[out.find("grub: firmware disks:").expect(&out)
        ..out.find("grub: firmware hash done").expect(&out)];
    assert!(fw_part.contains("(hd0) (hd0,msdos1)"), "{fw_part}");
    assert!(
        fw_part.contains(&expected),
        "the hash through SeaBIOS differs from the host's {expected}: {fw_part}"
    );
    // GRUB's native drivers: the disk at high speed on the EHCI, the
    // keyboard on a companion.
    let native = &out[out.find("grub: native disks:").expect(&out)..];
    assert!(native.contains("(usb0) (usb0,msdos1)"), "{native}");
    let listing = &native[native.find("grub: usb devices:").expect(native)..];
    for line in [
        "Product: `rehost USB disk'",
        "Class: (0x08) Mass Storage, Subclass: 0x06",
        "Endpoint #1: IN, max packed size: 512, transfer type: Bulk",
        "Endpoint #2: OUT, max packed size: 512, transfer type: Bulk",
        "Product: `rehost USB keyboard'",
        "Class: (0x03) HID, Subclass: 0x01",
        "transfer type: Interrupt",
    ] {
        assert!(
            listing.contains(line),
            "GRUB's usb lacks {line:?}: {listing}"
        );
    }
    let native_hash = &native[..native.find("grub: native hash done").expect(native)];
    assert!(
        native_hash.contains(&expected),
        "the hash through GRUB's ehci+usbms differs from the host's {expected}: {out}"
    );
    assert!(out.contains("grub: done"), "{out}");
    assert!(err.is_empty(), "a clean run logs nothing: {err}");
    assert_eq!(sha256(&parent), parent_sha, "the parent changed");
}

#[test]
fn int13_writes_and_reads_back_through_seabios_usb_on_ehci() {
    int13_on_child(
        REHOST,
        "usb_ehci_int13",
        2 * 2048,
        16 << 20,
        "USB MSC vendor='REHOST' product='USB DISK'",
        |child| {
            vec![
                "--usb-controller".into(),
                "ehci".into(),
                "--usb".into(),
                format!("disk:{child},port=5"),
            ]
        },
    );
}
