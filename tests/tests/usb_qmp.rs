//! The control socket on USB devices, end to end: QMP `send-key` types
//! into GRUB's command line through the USB keyboard (GRUB's own `uhci` +
//! `usb_keyboard` drivers, `terminal_input usb_keyboard`), a keyboard
//! hot-plugged with `device_add usb-kbd` is listed by GRUB's `usb` and then
//! takes the keys alone; and `query-block` lists USB disks, from `--usb`
//! and hot-plugged, with their images and dirty bitmaps.

use std::path::Path;
use std::time::Duration;

use rehost_tests::qmp::{send_text, start_with_qmp, Qmp};
use rehost_tests::storage::{grub_disk, rehost_disk, require_tools, scratch};
use rehost_tests::{kvm_available, roms_dir, Running};
use serde_json::{json, Value};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// rehost with `--qmp`, and a client on it.
fn start(args: &[&str]) -> (tempfile::TempDir, Running, Qmp) {
    let (dir, sock, run) = start_with_qmp(REHOST, args);
    let q = Qmp::connect(&sock, true);
    (dir, run, q)
}

/// GRUB takes the controller with its own drivers, lists the devices
/// (which attaches the keyboard to `usb_keyboard`) and then reads keys
/// only from USB keyboards; `v` lets a typed `echo X${v}Y` prove the
/// command ran (the answer is not in what was typed).
const KEYBOARD_CFG: &str = "serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
insmod echo
insmod halt
insmod usbtest
insmod usb_keyboard
insmod uhci
set v=42
usb
terminal_input usb_keyboard
echo \"usbkbd: ready\"
";

const KEYBOARD_PRODUCT: &str = "Product: `rehost USB keyboard'";
const HID_CLASS: &str = "Class: (0x03) HID, Subclass: 0x01";

/// What GRUB printed after the `count`th "grub> " prompt, up to the next.
fn after_prompt(out: &str, count: usize) -> String {
    out.split("grub> ")
        .nth(count)
        .unwrap_or_default()
        .to_owned()
}

/// `text` without its ANSI control sequences (ESC [ ... letter) and CRs.
fn without_cursor_moves(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn send_key_types_into_grub_through_the_usb_keyboard_and_a_hot_plugged_one_takes_over() {
    if !kvm_available("usb_qmp_keyboard") {
        return;
    }
    require_tools(&["grub-mkimage", "sfdisk", "mke2fs"]);
    let dir = scratch("usb_qmp_keyboard");
    let boot = dir.join("grub.raw");
    grub_disk(&boot, KEYBOARD_CFG, &[]);
    let (_sock_dir, mut run, mut q) = start(&[
        "run",
        "--memory",
        "128M",
        "--disk",
        s(&boot),
        "--usb",
        "keyboard,id=kbd1",
    ]);
    run.expect("usbkbd: ready", 1, Duration::from_secs(400));
    run.expect("grub> ", 1, Duration::from_secs(60));
    // GRUB reads only the USB keyboard now: the keys reach it through
    // the USB keyboard or not at all.
    send_text(&mut q, "echo X${v}Y\n");
    run.expect("X42Y", 1, Duration::from_secs(120));
    run.expect("grub> ", 2, Duration::from_secs(60));
    send_text(&mut q, "usb\n");
    run.expect("grub> ", 3, Duration::from_secs(120));
    let listing = after_prompt(&run.stdout(), 2);
    assert_eq!(
        listing.matches(KEYBOARD_PRODUCT).count(),
        1,
        "GRUB's usb lists not one keyboard: {listing}"
    );
    for line in [HID_CLASS, "transfer type: Interrupt"] {
        assert!(
            listing.contains(line),
            "GRUB's usb lacks {line:?}: {listing}"
        );
    }

    // A second keyboard, hot-plugged: GRUB's next listing enumerates it
    // (and attaches it to usb_keyboard); from then on it takes the keys
    // alone, so each key still arrives once.
    q.ok(
        "device_add",
        Some(json!({"driver": "usb-kbd", "id": "kbd2", "port": "2"})),
    );
    send_text(&mut q, "usb\n");
    run.expect("grub> ", 4, Duration::from_secs(120));
    let listing = after_prompt(&run.stdout(), 3);
    assert_eq!(
        listing.matches(KEYBOARD_PRODUCT).count(),
        2,
        "the hot-plugged keyboard is not listed: {listing}"
    );
    assert_eq!(listing.matches(HID_CLASS).count(), 2, "{listing}");
    send_text(&mut q, "echo Z${v}Z\n");
    run.expect("Z42Z", 1, Duration::from_secs(120));
    // GRUB echoes each key it got, between cursor moves.
    let typed = without_cursor_moves(&after_prompt(&run.stdout(), 4));
    assert!(
        typed.starts_with("echo Z${v}Z\n"),
        "keys arrived twice or not at all: {typed:?}"
    );

    // Unplugged, it gives the keys back to the first one.
    q.ok("device_del", Some(json!({"id": "kbd2"})));
    q.wait_event("DEVICE_DELETED", Duration::from_secs(10));
    send_text(&mut q, "halt\n");
    run.expect_exit(0, Duration::from_secs(120));
    assert!(run.stderr().is_empty(), "{}", run.stderr());
}

/// The `query-block` entry named `device`.
fn entry<'a>(block: &'a Value, device: &str) -> &'a Value {
    block
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["device"] == device)
        .unwrap_or_else(|| panic!("query-block lacks {device}: {block}"))
}

#[test]
fn query_block_lists_usb_disks_from_the_command_line_and_hot_plugged() {
    if !kvm_available("usb_qmp_query_block") {
        return;
    }
    let dir = scratch("usb_qmp_query_block");
    // The guest: a boot sector on IDE that waits (the USB disks are only
    // seen by the firmware).
    let ide = dir.join("ide.img");
    std::fs::copy(roms_dir().join("powerbutton.img"), &ide).unwrap();
    let stick = dir.join("stick.vhdx");
    rehost_disk(REHOST, &["create", "-f", "vhdx", s(&stick), "8M"]);
    rehost_disk(REHOST, &["bitmap", "add", s(&stick), "b1"]);
    let plain = dir.join("plain.raw");
    std::fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
    let hot = dir.join("hot.raw");
    std::fs::write(&hot, vec![0u8; 2 << 20]).unwrap();
    let stick_arg = format!("disk:{},id=stick", s(&stick));
    let plain_arg = format!("disk:{},readonly=on", s(&plain));
    let (_sock_dir, mut run, mut q) = start(&[
        "run",
        "--memory",
        "64M",
        "--disk",
        &format!("{},id=boot", s(&ide)),
        "--usb",
        &stick_arg,
        "--usb",
        &plain_arg,
    ]);
    run.expect("powerbutton: armed", 1, Duration::from_secs(120));

    let block = q.ok("query-block", None);
    assert_eq!(entry(&block, "boot")["controller"], "ide", "{block}");
    let st = entry(&block, "stick");
    assert_eq!(st["qdev"], "stick", "{st}");
    assert_eq!(st["controller"], "usb", "{st}");
    assert_eq!(st["slot"], 1, "{st}");
    assert_eq!(st["removable"], false, "{st}");
    let ins = &st["inserted"];
    assert_eq!(ins["file"], s(&stick), "{st}");
    assert_eq!(ins["drv"], "vhdx", "{st}");
    assert_eq!(ins["ro"], false, "{st}");
    assert_eq!(ins["image"]["virtual-size"], 8 << 20, "{st}");
    let bitmaps = ins["dirty-bitmaps"].as_array().expect("dirty-bitmaps");
    assert_eq!(bitmaps.len(), 1, "{st}");
    assert_eq!(bitmaps[0]["name"], "b1", "{st}");
    assert_eq!(bitmaps[0]["state"], "tracking", "{st}");
    // No id: named after its root port; read-only, so no bitmaps.
    let pl = entry(&block, "usb0-hd2");
    assert_eq!(pl["inserted"]["file"], s(&plain), "{pl}");
    assert_eq!(pl["inserted"]["drv"], "raw", "{pl}");
    assert_eq!(pl["inserted"]["ro"], true, "{pl}");
    assert!(pl["inserted"].get("dirty-bitmaps").is_none(), "{pl}");

    // Deleted: gone. Hot-plugged into the freed port: listed, in port
    // order, then gone again once deleted.
    q.ok("device_del", Some(json!({"id": "stick"})));
    q.wait_event("DEVICE_DELETED", Duration::from_secs(10));
    q.ok(
        "device_add",
        Some(json!({"driver": "usb-storage", "id": "hot", "file": s(&hot), "readonly": "on"})),
    );
    let block = q.ok("query-block", None);
    let h = entry(&block, "hot");
    assert_eq!(h["slot"], 1, "{h}");
    assert_eq!(h["inserted"]["file"], s(&hot), "{h}");
    assert_eq!(h["inserted"]["ro"], true, "{h}");
    assert_eq!(h["inserted"]["image"]["virtual-size"], 2 << 20, "{h}");
    let names: Vec<&str> = block
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["device"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["boot", "hot", "usb0-hd2"], "{block}");
    q.ok("device_del", Some(json!({"id": "hot"})));
    q.wait_event("DEVICE_DELETED", Duration::from_secs(10));
    let block = q.ok("query-block", None);
    assert!(
        block
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["device"] != "hot"),
        "{block}"
    );
    rehost_tests::qmp::quit(&mut q, &mut run, Duration::from_secs(30));
    assert!(run.stderr().is_empty(), "{}", run.stderr());
}
