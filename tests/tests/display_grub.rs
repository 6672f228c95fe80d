//! GRUB's menu on the standard VGA (`--vga std`) against QEMU's
//! (`-vga std`, the same VGA BIOS): in text mode (GRUB's `console`
//! terminal, through the VGA BIOS's INT 10h) and in `gfxterm` at
//! 1024x768x32 through VBE (the Bochs DISPI interface and the linear
//! framebuffer), rehost's `screendump` equals QEMU's pixel for pixel.
//!
//! rehost and QEMU boot the same disk at the same time (GRUB takes tens
//! of seconds to start here, every instruction emulated). GRUB writes the
//! menu on COM1 too (`terminal_output ... serial`); once COM1 shows the
//! last entry, both screens are dumped every second until three dumps in
//! a row agree (the menu then waits for a key with `timeout=-1`, so
//! nothing changes any more: a countdown would redraw its line every
//! second on each VMM at its own moment). No tolerance: GRUB hides the
//! cursor while the menu is shown, on both.
//!
//! `gfxterm` draws nothing without a font: `terminal_output gfxterm`
//! with no font loaded leaves the screen black on both VMMs (GRUB's
//! i386-pc core has no built-in font), which is why a font file goes on
//! the disk and the test checks `loadfont`'s answer on COM1 and that the
//! picture is not blank. The font is Debian's unicode.pf2 cut down to
//! the characters the menu uses ([`pf2_subset`]): GRUB reads a font's
//! whole index at `loadfont`, and the full one's 57,248 entries took it
//! about 400 s here (a loaded 2-core host; the whole boot was 500 s).

use std::path::Path;
use std::time::Duration;

use rehost_tests::display::{
    assert_same_screen, foreground_pixels, pf2_subset, qemu_installed, screens_dir,
    settled_screendump, start_rehost_vga, wait_com1, QemuVga,
};
use rehost_tests::storage::{grub_disk, require_tools, scratch};
use rehost_tests::{kvm_available, skip_unless_ci};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
/// Each of SeaBIOS plus GRUB to its first line, and GRUB to its drawn
/// menu. Measured on this 2-core host: the text menu 65-92 s; the gfxterm
/// one 937 s at load 10 (a run at load 16 had not reached `loadfont`
/// after 600 s), on rehost and on QEMU alike: GRUB's protected-mode code
/// is emulated instruction by instruction here (KVM on PVM), and drawing
/// 1024x768x32 costs millions of them.
const GRUB: Duration = Duration::from_secs(1200);
/// COM1 shows this once GRUB has drawn the last menu entry.
const MENU_DRAWN: &str = "Third entry (halt)";

/// The menu both tests show; `timeout=-1` waits for a key without a
/// countdown.
const MENU: &str = "set timeout=-1\n\
menuentry \"rehost display test: first entry\" {\n  echo one\n}\n\
menuentry \"Second entry\" {\n  echo two\n}\n\
menuentry \"Third entry (halt)\" {\n  halt\n}\n";

/// Boots a GRUB disk with `cfg` (and `files` at the partition's root) on
/// rehost and on QEMU at once, waits for `ready` and then the menu on both
/// COM1s, dumps both settled screens and compares them. Returns the
/// picture's size, how many pixels are not background and rehost's COM1.
fn grub_menu_equals_qemu(
    test: &str,
    cfg: &str,
    files: &[&Path],
    ready: &str,
) -> (u32, u32, usize, String) {
    let dir = scratch(test);
    let disk = dir.join("grub.raw");
    grub_disk(&disk, cfg, files);
    let ours = screens_dir().join(format!("{test}-rehost.png"));
    let theirs = screens_dir().join(format!("{test}-qemu.png"));
    let sock = dir.join("vm.sock");
    let (mut vm, mut q) = start_rehost_vga(REHOST, &disk, &sock, &[]);
    let qemu = QemuVga::start(&disk);
    let mut qq = qemu.qmp();
    for text in [ready, MENU_DRAWN] {
        wait_com1(&mut vm, text, GRUB);
    }
    for text in [ready, MENU_DRAWN] {
        qemu.wait_serial(text, GRUB);
    }
    let every = Duration::from_secs(1);
    let settle = Duration::from_secs(120);
    let pic = settled_screendump(&mut q, &ours, every, 3, settle);
    settled_screendump(&mut qq, &theirs, every, 3, settle);
    q.execute("quit", None);
    vm.wait(Duration::from_secs(20));
    drop(qq);
    qemu.quit();
    let com1 = vm.stdout();
    assert_same_screen(test, &ours, &theirs, None);
    (pic.width, pic.height, foreground_pixels(&pic), com1)
}

/// True when the test can run here (KVM, QEMU, GRUB's tools).
fn can_run(test: &str) -> bool {
    if !kvm_available(test) {
        return false;
    }
    if !qemu_installed() {
        skip_unless_ci(test, "qemu-system-x86_64 is not installed (scripts/setup)");
        return false;
    }
    require_tools(&["grub-mkimage", "sfdisk", "mke2fs", "perl"]);
    true
}

#[test]
fn grub_menu_in_text_mode_equals_qemu() {
    let test = "grub_text_menu";
    if !can_run(test) {
        return;
    }
    let cfg = format!(
        "serial --unit=0 --speed=115200\n\
         terminal_output console serial\n\
         echo \"grub-text: ready\"\n{MENU}"
    );
    let (w, h, drawn, _) = grub_menu_equals_qemu(test, &cfg, &[], "grub-text: ready");
    // 80x25 text with 9x16 cells.
    assert_eq!((w, h), (720, 400));
    // The frame, the title, three entries (one highlighted) and the help
    // lines: thousands of pixels, not an empty screen.
    assert!(drawn > 5000, "only {drawn} pixels drawn");
}

#[test]
fn grub_menu_in_gfxterm_at_1024x768_equals_qemu() {
    let test = "grub_gfxterm_menu";
    if !can_run(test) {
        return;
    }
    let unicode = Path::new("/usr/share/grub/unicode.pf2");
    let all = std::fs::read(unicode)
        .unwrap_or_else(|e| panic!("{}: {e}: scripts/setup (grub-common)", unicode.display()));
    // What the menu shows: ASCII, Latin-1, the arrows of its help text and
    // the box drawing and triangles of its frame.
    let menu_font = pf2_subset(
        &all,
        |c| matches!(c, 0x20..=0xff | 0x2190..=0x21ff | 0x2500..=0x25ff),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", unicode.display()));
    let font = scratch("grub_gfxterm_font").join("menu.pf2");
    std::fs::write(&font, menu_font).unwrap();
    // COM1 first, so a failing step is reported there; then VBE, the
    // font from the disk's root, 1024x768x32 and gfxterm.
    let cfg = format!(
        "serial --unit=0 --speed=115200\n\
         terminal_output serial\n\
         insmod vbe\n\
         insmod gfxterm\n\
         insmod font\n\
         if loadfont /menu.pf2 ; then echo \"font: loaded\" ; else echo \"font: FAILED\" ; fi\n\
         set gfxmode=1024x768x32\n\
         set gfxpayload=keep\n\
         terminal_output gfxterm serial\n\
         echo \"grub-gfxterm: ready\"\n{MENU}"
    );
    let (w, h, drawn, com1) = grub_menu_equals_qemu(test, &cfg, &[&font], "grub-gfxterm: ready");
    assert!(
        com1.contains("font: loaded"),
        "GRUB's loadfont failed: {com1}"
    );
    assert_eq!((w, h), (1024, 768), "gfxterm did not switch to 1024x768");
    assert!(
        drawn > 5000,
        "only {drawn} pixels drawn: gfxterm showed no menu"
    );
}
