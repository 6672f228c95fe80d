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
    assert_same_screen, decode_png, qemu_installed, qemu_screendump, screendump, screens_dir,
    start_rehost_vga, wait_com1, Picture, Tolerance, BOOT_SECTOR_READY,
};
use rehost_tests::{kvm_available, roms_dir, skip_unless_ci};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

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
    let ready = format!("{name}: ready");
    let dir = tempfile::Builder::new()
        .prefix("rehost-vga")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("vm.sock");
    let ours = screens_dir().join(format!("{name}-rehost.png"));
    let theirs = screens_dir().join(format!("{name}-qemu.png"));
    {
        let (mut vm, mut q) = start_rehost_vga(REHOST, &disk, &sock, &[]);
        wait_com1(&mut vm, &ready, BOOT_SECTOR_READY);
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

fn vncsnapshot_installed() -> bool {
    std::process::Command::new("vncsnapshot")
        .arg("-h")
        .output()
        .is_ok()
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The largest mean difference of one colour channel over one 8x8 block
/// (JPEG's own block) between a JPEG capture and a picture of the same
/// size. JPEG's loss (vncsnapshot always writes JPEG, at best quality
/// 100 with 4:2:0 chroma) spreads a few levels over a block; a wrong
/// block, row or colour moves a block's mean by tens of levels.
fn worst_block_error(jpeg: &[u8], want: &Picture) -> f64 {
    let mut worst = 0.0f64;
    for by in (0..want.height).step_by(8) {
        for bx in (0..want.width).step_by(8) {
            let mut sum = [0u64; 3];
            let mut n = 0u64;
            for y in by..(by + 8).min(want.height) {
                for x in bx..(bx + 8).min(want.width) {
                    let i = 3 * (y as usize * want.width as usize + x as usize);
                    let p = want.pixel(x, y);
                    for c in 0..3 {
                        sum[c] += u64::from(jpeg[i + c].abs_diff(p[c]));
                    }
                    n += 1;
                }
            }
            for s in sum {
                worst = worst.max(s as f64 / n as f64);
            }
        }
    }
    worst
}

/// Debian's vncsnapshot (TightVNC's RFB client) captures rehost's console
/// over `--vnc` while the mode 13h picture is shown, with raw and with
/// zlib encoding, and the capture equals rehost's own `screendump` of the
/// same (halted, so unchanging) screen within JPEG's loss. The allowance
/// is shown to be tight: the same comparison fails for the screendump
/// with one 8x8 block recoloured, and for the picture moved one guest
/// pixel to the right (every green level flips on this palette).
#[test]
fn vncsnapshot_capture_of_mode_13h_equals_screendump() {
    let test = "display_vga_vncsnapshot";
    if !kvm_available(test) {
        return;
    }
    if !vncsnapshot_installed() {
        skip_unless_ci(test, "vncsnapshot is not installed (scripts/setup)");
        return;
    }
    // Mean JPEG error allowed per 8x8 block and channel, in levels of 255.
    // Measured: 0.08 with raw and with zlib (the picture is flat 2x2
    // cells, which 4:2:0 chroma keeps); a recoloured block or a picture
    // one pixel off is far above.
    const ALLOWED: f64 = 2.0;
    let disk = roms_dir().join("mode13.img");
    let dir = tempfile::Builder::new()
        .prefix("rehost-vncsnap")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("vm.sock");
    let port = free_port();
    let vnc = format!("127.0.0.1:{port}");
    let (mut vm, mut q) = start_rehost_vga(REHOST, &disk, &sock, &["--vnc", &vnc]);
    wait_com1(&mut vm, "mode13: ready", BOOT_SECTOR_READY);
    let png = screens_dir().join("vncsnapshot-screendump.png");
    screendump(&mut q, &png);
    let want = decode_png(&png);
    for enc in ["raw", "zlib"] {
        let jpg = screens_dir().join(format!("vncsnapshot-{enc}.jpg"));
        let _ = std::fs::remove_file(&jpg);
        let out = std::process::Command::new("vncsnapshot")
            .args(["-quiet", "-encodings", enc, "-quality", "100"])
            .arg(format!("127.0.0.1::{port}"))
            .arg(&jpg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vncsnapshot -encodings {enc}: {}\nrehost stderr: {}",
            String::from_utf8_lossy(&out.stderr),
            vm.stderr()
        );
        let file = std::fs::File::open(&jpg).unwrap();
        let mut d = jpeg_decoder::Decoder::new(std::io::BufReader::new(file));
        let rgb = d.decode().unwrap();
        let info = d.info().unwrap();
        assert_eq!(
            (u32::from(info.width), u32::from(info.height)),
            (want.width, want.height),
            "{enc}: vncsnapshot's picture has another size than screendump's"
        );
        assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24);
        let err = worst_block_error(&rgb, &want);
        eprintln!("vncsnapshot {enc}: worst 8x8 block mean error {err:.2} (allowed {ALLOWED})");
        assert!(
            err <= ALLOWED,
            "{enc}: {} differs from {}: an 8x8 block's mean error is {err:.2} levels",
            jpg.display(),
            png.display()
        );

        // A wrong picture fails the same comparison: one recoloured
        // block ...
        let mut block = want.clone();
        for y in 96..104 {
            for x in 320..328 {
                let i = 3 * (y * want.width as usize + x);
                block.rgb[i..i + 3].copy_from_slice(&[0xff, 0xff, 0xff]);
            }
        }
        let e = worst_block_error(&rgb, &block);
        eprintln!("vncsnapshot {enc}: against a recoloured block: {e:.2}");
        assert!(e > ALLOWED, "{enc}: a recoloured block passes ({e:.2})");
        // ... and the picture one guest pixel (two screen pixels) off.
        let mut moved = want.clone();
        let row = 3 * want.width as usize;
        for line in moved.rgb.chunks_exact_mut(row) {
            line.rotate_right(6);
        }
        let e = worst_block_error(&rgb, &moved);
        eprintln!("vncsnapshot {enc}: against the picture one pixel off: {e:.2}");
        assert!(
            e > ALLOWED,
            "{enc}: a picture moved by a pixel passes ({e:.2})"
        );
    }
    q.execute("quit", None);
    vm.wait(Duration::from_secs(20));
}
