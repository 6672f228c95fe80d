//! End-to-end USB on the PIIX3 UHCI controller, with drivers nobody here
//! wrote: SeaBIOS's UHCI and USB mass-storage drivers boot GRUB from a USB
//! disk (a differencing VHDX child) and GRUB hashes a file through them;
//! then GRUB's own `uhci` + `usbms` drivers take the controller, list the
//! disk, hash the same file, and its `usb` command (module `usbtest`)
//! prints the disk's and the keyboard's descriptors. A real-mode program
//! writes and reads back through SeaBIOS's INT 13h on a USB disk, and the
//! host finds exactly those bytes in the child, the parent unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rehost_tests::storage::{
    grub_disk, int13_on_child, lcg_data, rehost_disk, require_tools, scratch, sha256, Int13Program,
};
use rehost_tests::{kvm_available, roms_dir, run, Running};

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
fn seabios_boots_grub_from_usb_on_uhci_and_grub_uhci_usbms_read_the_disk() {
    if !kvm_available("usb_uhci_grub") {
        return;
    }
    require_tools(&["grub-mkimage", "sfdisk", "mke2fs", "perl"]);
    let dir = scratch("usb_uhci_grub");
    let file = dir.join("data.bin");
    std::fs::write(&file, lcg_data(40_000, 0x0bad_5eed)).unwrap();
    let expected = sha256(&file);
    // Every module is loaded before `uhci` takes the controller away from
    // the firmware's driver (and with it GRUB's (hd0)).
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
insmod uhci
echo \"grub: native disks:\"
ls
echo \"grub: usb devices:\"
usb
hashsum --hash sha256 (usb0,msdos1)/data.bin
echo \"grub: done\"
halt
";
    let raw = dir.join("grub.raw");
    grub_disk(&raw, cfg, &[&file]);
    let (parent, child) = child_of(&raw, &dir);
    let parent_sha = sha256(&parent);
    let fw_log = dir.join("firmware.log");
    let usb_disk = format!("disk:{}", s(&child));
    let (code, out, err) = run(
        REHOST,
        &[
            "run",
            "--memory",
            "128M",
            "--firmware-log",
            s(&fw_log),
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
        "1: /pci@i0cf8/usb@1,2/storage@1/channel@0/disk@0,0",
        "UHCI init on dev 00:01.2",
        "USB MSC vendor='REHOST' product='USB DISK'",
        "USB MSC blksize=512 sectors=65536",
        "USB keyboard initialized",
    ] {
        assert!(fw.contains(line), "firmware log lacks {line:?}: {fw}");
    }
    // The firmware's driver: (hd0) and the hash through INT 13h.
    let fw_part = &out[out.find("grub: firmware disks:").expect(&out)
        ..out.find("grub: firmware hash done").expect(&out)];
    assert!(fw_part.contains("(hd0) (hd0,msdos1)"), "{fw_part}");
    assert!(
        fw_part.contains(&expected),
        "the hash through SeaBIOS differs from the host's {expected}: {fw_part}"
    );
    // GRUB's native drivers.
    let native = &out[out.find("grub: native disks:").expect(&out)..];
    assert!(native.contains("(usb0) (usb0,msdos1)"), "{native}");
    let listing = &native[native.find("grub: usb devices:").expect(native)..];
    for line in [
        "Product: `rehost USB disk'",
        "VendorID: 0x46f4, ProductID: 0x01",
        "Class: (0x08) Mass Storage, Subclass: 0x06",
        "Endpoint #1: IN, max packed size: 64, transfer type: Bulk",
        "Endpoint #2: OUT, max packed size: 64, transfer type: Bulk",
        "Product: `rehost USB keyboard'",
        "Class: (0x03) HID, Subclass: 0x01",
        "transfer type: Interrupt",
    ] {
        assert!(
            listing.contains(line),
            "GRUB's usb lacks {line:?}: {listing}"
        );
    }
    let after = &listing[listing.find("transfer type: Interrupt").unwrap()..];
    assert!(
        after.contains(&expected),
        "the hash through GRUB's uhci+usbms differs from the host's {expected}: {out}"
    );
    assert!(out.contains("grub: done"), "{out}");
    assert!(err.is_empty(), "a clean run logs nothing: {err}");
    assert_eq!(sha256(&parent), parent_sha, "the parent changed");
}

#[test]
fn int13_writes_and_reads_back_through_seabios_usb_on_uhci() {
    int13_on_child(
        REHOST,
        "usb_uhci_int13",
        2 * 2048,
        16 << 20,
        "USB MSC vendor='REHOST' product='USB DISK'",
        |child| vec!["--usb".into(), format!("disk:{child},port=2")],
    );
}

/// GRUB lists the USB devices again and again (`usb` from `usbtest` on its
/// native `uhci` driver, which looks for port changes on each listing),
/// each listing between "grub: listing N" and "grub: end N".
const LISTING_CFG: &str = "serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
insmod echo
insmod sleep
insmod halt
insmod usbms
insmod usbtest
insmod uhci
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80; do
  echo \"grub: listing $i\"
  usb
  echo \"grub: end $i\"
  sleep 1
done
echo \"grub: out of listings\"
halt
";

const DISK_PRODUCT: &str = "Product: `rehost USB disk'";
const KEYBOARD_PRODUCT: &str = "Product: `rehost USB keyboard'";

/// rehost with a control socket in a short directory of its own (Unix
/// socket paths are limited to 107 bytes; target/ may be deep).
struct Vm {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    run: Running,
}

impl Vm {
    fn start(args: &[&str]) -> Self {
        let (dir, sock, run) = rehost_tests::qmp::start_with_qmp(REHOST, args);
        Self {
            _dir: dir,
            sock,
            run,
        }
    }

    /// GRUB's listing number `n`, once it is complete.
    fn listing(&mut self, n: usize) -> String {
        // The line ends (not "grub: end 1" of "grub: end 12").
        let end = format!("grub: end {n}\n");
        self.run.expect(&end, 1, Duration::from_secs(400));
        let out = self.run.stdout();
        let start = format!("grub: listing {n}\n");
        let from = out.find(&start).unwrap_or_else(|| panic!("{out}"));
        let to = out.find(&end).unwrap_or_else(|| panic!("{out}"));
        out[from..to].to_owned()
    }

    /// The number of the first listing GRUB starts after now.
    fn next_listing(&mut self) -> usize {
        // What GRUB printed before this moment has reached our reader.
        std::thread::sleep(Duration::from_millis(500));
        self.run.stdout().matches("grub: listing ").count() + 1
    }
}

#[test]
fn qmp_device_add_and_del_hot_plug_a_usb_disk_under_grub() {
    use rehost_tests::qmp::error_class;
    use serde_json::json;
    if !kvm_available("usb_uhci_hotplug") {
        return;
    }
    require_tools(&["grub-mkimage", "sfdisk", "mke2fs", "perl"]);
    let dir = scratch("usb_uhci_hotplug");
    let boot = dir.join("grub.raw");
    grub_disk(&boot, LISTING_CFG, &[]);
    // The stick: a VHDX with a dirty bitmap, so closing it at unplug shows
    // (its log empty, the bitmap saved) while rehost still runs.
    let stick = dir.join("stick.vhdx");
    rehost_disk(REHOST, &["create", "-f", "vhdx", s(&stick), "8M"]);
    rehost_disk(REHOST, &["bitmap", "add", s(&stick), "b1"]);
    let other = dir.join("other.raw");
    std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();

    let mut vm = Vm::start(&[
        "run",
        "--memory",
        "128M",
        "--disk",
        s(&boot),
        "--usb",
        "keyboard,id=kbd",
    ]);
    let mut q = rehost_tests::qmp::Qmp::connect(&vm.sock, true);
    let first = vm.listing(1);
    assert!(first.contains(KEYBOARD_PRODUCT), "{first}");
    assert!(!first.contains(DISK_PRODUCT), "{first}");

    // A client that gets things wrong changes nothing.
    let r = q.execute("device_del", Some(json!({"id": "stick"})));
    assert_eq!(error_class(&r), "DeviceNotFound", "{r}");
    let r = q.execute(
        "device_add",
        Some(json!({"driver": "usb-storage", "id": "stick", "file": s(&dir.join("nope.vhdx"))})),
    );
    assert_eq!(error_class(&r), "GenericError", "{r}");
    let r = q.execute(
        "device_add",
        Some(json!({"driver": "usb-storage", "id": "stick", "file": s(&stick), "port": "1"})),
    );
    assert_eq!(
        error_class(&r),
        "GenericError",
        "port 1 has the keyboard: {r}"
    );

    // Plugged: GRUB's next listing has the disk.
    q.ok(
        "device_add",
        Some(json!({"driver": "usb-storage", "id": "stick", "file": s(&stick)})),
    );
    // The same id again (with another image): refused, one disk only.
    let r = q.execute(
        "device_add",
        Some(json!({"driver": "usb-storage", "id": "stick", "file": s(&other)})),
    );
    assert_eq!(error_class(&r), "GenericError", "{r}");
    assert!(
        r["error"]["desc"].as_str().unwrap().contains("Duplicate"),
        "{r}"
    );
    let n = vm.next_listing();
    let plugged = vm.listing(n);
    assert!(plugged.contains(KEYBOARD_PRODUCT), "{plugged}");
    assert_eq!(
        plugged.matches(DISK_PRODUCT).count(),
        1,
        "the hot-plugged disk is not listed once: {plugged}"
    );
    assert!(
        plugged.contains("Class: (0x08) Mass Storage, Subclass: 0x06"),
        "{plugged}"
    );

    // Unplugged: the image is closed before the reply, the next listing
    // lacks the disk, and rehost runs on.
    q.ok("device_del", Some(json!({"id": "stick"})));
    let ev = q.wait_event("DEVICE_DELETED", Duration::from_secs(10));
    assert_eq!(ev["data"]["device"], "stick", "{ev}");
    assert_eq!(ev["data"]["path"], "/machine/peripheral/stick", "{ev}");
    let check = rehost_disk(REHOST, &["check", s(&stick)]);
    assert!(check.contains("no problems found"), "{check}");
    let bitmaps = rehost_disk(REHOST, &["bitmap", "list", s(&stick)]);
    assert!(
        bitmaps.starts_with("b1:") && bitmaps.trim_end().ends_with(", tracking"),
        "the unplugged image's bitmap was not saved cleanly: {bitmaps}"
    );
    let n = vm.next_listing();
    let unplugged = vm.listing(n);
    assert!(unplugged.contains(KEYBOARD_PRODUCT), "{unplugged}");
    assert!(
        !unplugged.contains(DISK_PRODUCT),
        "the unplugged disk is still listed: {unplugged}"
    );
    let r = q.execute("device_del", Some(json!({"id": "stick"})));
    assert_eq!(error_class(&r), "DeviceNotFound", "deleted twice: {r}");
    assert_eq!(
        q.ok("query-status", None)["status"],
        "running",
        "rehost is not running on"
    );
    rehost_tests::qmp::quit(&mut q, &mut vm.run, Duration::from_secs(30));
    assert!(vm.run.stderr().is_empty(), "{}", vm.run.stderr());
}

/// An IDE disk whose boot sector prints "powerbutton: boot sector
/// running" and waits (resources/qmp/powerbutton.boot.asm), and a USB
/// disk with the INT 13h exerciser, which writes, reads back and powers
/// off: (IDE image, USB image, the exerciser).
fn two_boot_disks(test: &str) -> Option<(PathBuf, PathBuf, Int13Program)> {
    if !kvm_available(test) {
        return None;
    }
    require_tools(&["nasm"]);
    let dir = scratch(test);
    let ide = dir.join("ide.img");
    std::fs::copy(roms_dir().join("powerbutton.img"), &ide).unwrap();
    let prog = Int13Program {
        sectors: 64,
        chunk: 16,
        ..Default::default()
    };
    let usb = dir.join("usb.raw");
    prog.raw_disk(&usb, 4 << 20);
    Some((ide, usb, prog))
}

fn int13_done(prog: &Int13Program) -> String {
    format!("int13: ok sectors={:08x}", prog.sectors)
}

#[test]
fn boot_usb_boots_the_usb_disk_before_an_ide_disk() {
    let Some((ide, usb, prog)) = two_boot_disks("usb_uhci_boot_order") else {
        return;
    };
    let usb_arg = format!("disk:{}", s(&usb));
    let args = [
        "run",
        "--memory",
        "64M",
        "--disk",
        s(&ide),
        "--usb",
        &usb_arg,
    ];
    // The default order boots the IDE disk: the two are told apart.
    let mut r = Running::start(REHOST, &args);
    r.expect(
        "powerbutton: boot sector running",
        1,
        Duration::from_secs(120),
    );
    assert!(!r.stdout().contains("int13: start"), "{}", r.stdout());
    drop(r);
    let mut with_usb = args.to_vec();
    with_usb.extend(["--boot", "usb"]);
    let (code, out, err) = run(REHOST, &with_usb, Duration::from_secs(300));
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&int13_done(&prog)), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        !out.contains("powerbutton"),
        "the IDE disk booted despite --boot usb: {out}"
    );
}

#[test]
fn seabios_boot_menu_lists_the_usb_disk_and_boots_it() {
    use serde_json::json;
    let Some((ide, usb, prog)) = two_boot_disks("usb_uhci_boot_menu") else {
        return;
    };
    let usb_arg = format!("disk:{}", s(&usb));
    // The IDE disk comes first in the boot order; the menu picks the USB
    // one.
    let mut vm = Vm::start(&[
        "run",
        "--memory",
        "64M",
        "--disk",
        s(&ide),
        "--usb",
        &usb_arg,
        "--boot-menu",
        "--boot-menu-wait",
        "60000",
    ]);
    let mut q = rehost_tests::qmp::Qmp::connect(&vm.sock, true);
    vm.run
        .expect(" for boot menu.", 1, Duration::from_secs(120));
    // Debian's SeaBIOS 1.16 offers ESC; later releases F12.
    let menu_key = if vm.run.stdout().contains("Press F12") {
        "f12"
    } else {
        "esc"
    };
    let key = |q: &mut rehost_tests::qmp::Qmp, code: &str| {
        q.ok(
            "send-key",
            Some(json!({"keys": [{"type": "qcode", "data": code}]})),
        );
    };
    let mut shown = false;
    for _ in 0..20 {
        key(&mut q, menu_key);
        if vm
            .run
            .wait_for("Select boot device:", 1, Duration::from_secs(3))
        {
            shown = true;
            break;
        }
    }
    assert!(shown, "no boot menu: {}", vm.run.stdout());
    // The entries follow the title; the last one is printed when the
    // firmware waits for a choice.
    vm.run.expect("2. ", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let out = vm.run.stdout();
    let menu = &out[out.find("Select boot device:").unwrap()..];
    let usb_line = menu
        .lines()
        .find(|l| l.contains("USB MSC Drive REHOST USB DISK"))
        .unwrap_or_else(|| panic!("the menu lacks the USB disk: {menu}"));
    assert!(
        menu.lines().any(|l| l.contains("ata0-0")),
        "the menu lacks the IDE disk: {menu}"
    );
    let number = usb_line.split('.').next().unwrap().trim();
    assert!(
        matches!(number, "1" | "2"),
        "unexpected entry {usb_line:?} in {menu}"
    );
    key(&mut q, number);
    vm.run
        .expect(&int13_done(&prog), 1, Duration::from_secs(120));
    vm.run.expect_exit(0, Duration::from_secs(30));
    let out = vm.run.stdout();
    assert!(!out.contains("powerbutton"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_hot_plugged_usb_disk_stays_plugged_across_a_reset() {
    use serde_json::json;
    let Some((ide, usb, _)) = two_boot_disks("usb_uhci_reset") else {
        return;
    };
    let fw_log = ide.with_file_name("firmware.log");
    let mut vm = Vm::start(&[
        "run",
        "--memory",
        "64M",
        "--firmware-log",
        s(&fw_log),
        "--disk",
        s(&ide),
        "--usb-controller",
        "uhci",
    ]);
    let mut q = rehost_tests::qmp::Qmp::connect(&vm.sock, true);
    let armed = "powerbutton: armed";
    vm.run.expect(armed, 1, Duration::from_secs(120));
    q.ok(
        "device_add",
        Some(json!({"driver": "usb-storage", "id": "stick", "file": s(&usb)})),
    );
    q.ok("system_reset", None);
    vm.run.expect(armed, 2, Duration::from_secs(120));
    rehost_tests::qmp::quit(&mut q, &mut vm.run, Duration::from_secs(30));
    // The firmware found no USB disk on the first boot and found the
    // hot-plugged one on the second.
    let log = std::fs::read_to_string(&fw_log).unwrap();
    // Each POST ends with its boot.
    let boots: Vec<&str> = log.split("Booting from Hard Disk...").collect();
    assert_eq!(boots.len(), 3, "{log}");
    let msc = "USB MSC vendor='REHOST' product='USB DISK'";
    assert!(!boots[0].contains(msc), "{}", boots[0]);
    assert!(boots[1].contains(msc), "after the reset: {}", boots[1]);
}
