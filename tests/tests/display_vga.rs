//! The standard VGA (`--vga std`) against QEMU's (`-vga std`, the same
//! VGA BIOS): the same guest, stopped at the same picture, gives the same
//! `screendump` pixel for pixel.
//!
//! The guests are boot sectors from resources/display/ that draw, say
//! "NAME: ready" on COM1 and halt with interrupts off, so the screen no
//! longer changes. The one tolerance: the text cursor blinks (every
//! 266 ms on both), so in text mode its cell may differ.

use std::time::Duration;

use rehost_tests::display::{
    assert_same_screen, qemu_screendump, screendump, screens_dir, Tolerance,
};
use rehost_tests::qmp::Qmp;
use rehost_tests::{kvm_available, roms_dir, skip_unless_ci, Running};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn qemu_installed() -> bool {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Boots `resources/display/NAME.boot.asm` on rehost and on QEMU, takes
/// both screendumps once COM1 says "NAME: ready", and compares them.
fn compare_with_qemu(name: &str, tolerance: Option<Tolerance>) {
    let test = format!("display_vga_{name}");
    if !kvm_available(&test) {
        return;
    }
    if !qemu_installed() {
        skip_unless_ci(&test, "qemu-system-x86_64 is not installed (scripts/setup)");
        return;
    }
    let disk = roms_dir().join(format!("{name}.img"));
    let disk_arg = format!("{},format=raw", disk.to_str().unwrap());
    let ready = format!("{name}: ready");
    let dir = tempfile::Builder::new()
        .prefix("rehost-vga")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("vm.sock");
    let ours = screens_dir().join(format!("{name}-rehost.png"));
    let theirs = screens_dir().join(format!("{name}-qemu.png"));
    {
        let mut vm = Running::start(
            REHOST,
            &[
                "run",
                "--vga",
                "std",
                "-m",
                "64M",
                "--disk",
                &disk_arg,
                "--qmp",
                sock.to_str().unwrap(),
            ],
        );
        let mut q = Qmp::connect(&sock, true);
        assert!(
            vm.wait_for(&ready, 1, Duration::from_secs(60)),
            "rehost: no {ready:?} on COM1\nstdout: {}\nstderr: {}",
            vm.stdout(),
            vm.stderr()
        );
        screendump(&mut q, &ours);
        q.execute("quit", None);
        vm.wait(Duration::from_secs(20));
    }
    qemu_screendump(&disk, &ready, &theirs);
    assert_same_screen(name, &ours, &theirs, tolerance);
}

#[test]
fn seabios_banner_in_text_mode_equals_qemu() {
    // The boot sector leaves the cursor at row 22, column 5 of the
    // 80x25 mode with 9x16 cells.
    compare_with_qemu(
        "text",
        Some(Tolerance {
            x: 5 * 9,
            y: 22 * 16,
            w: 9,
            h: 16,
            why: "the text cursor's cell: the cursor blinks",
        }),
    );
}

#[test]
fn mode_13h_picture_equals_qemu() {
    compare_with_qemu("mode13", None);
}

#[test]
fn mode_12h_picture_drawn_through_every_write_mode_equals_qemu() {
    compare_with_qemu("mode12", None);
}
