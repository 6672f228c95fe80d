//! Tests that play the guest: program the registers as a VGA BIOS or a
//! program would, go through the ports and the memory window, and check
//! video memory, what reads return, and the rendered picture.

use super::render::dac6_to_8;
use super::vga_spec::*;
use super::*;
use crate::bus::BusDevice;
use crate::display::{Damage, Frame, Rect, Screen};
use crate::pci::PciFunction;

fn out(v: &mut Vga, port: u64, val: u8) {
    v.port_write(port, val);
}

fn seq(v: &mut Vga, i: u8, val: u8) {
    out(v, PORT_SEQ_INDEX, i);
    out(v, PORT_SEQ_DATA, val);
}

fn gfx(v: &mut Vga, i: u8, val: u8) {
    out(v, PORT_GFX_INDEX, i);
    out(v, PORT_GFX_DATA, val);
}

fn crtc(v: &mut Vga, i: u8, val: u8) {
    out(v, PORT_CRTC_INDEX_COLOR, i);
    out(v, PORT_CRTC_DATA_COLOR, val);
}

fn attr(v: &mut Vga, i: u8, val: u8) {
    v.port_read(PORT_STATUS1_COLOR); // reset the flip-flop
    out(v, PORT_ATTR_INDEX, i);
    out(v, PORT_ATTR_INDEX, val);
}

fn dac(v: &mut Vga, index: u8, rgb: [u8; 3]) {
    out(v, PORT_DAC_WRITE_INDEX, index);
    for c in rgb {
        out(v, PORT_DAC_DATA, c);
    }
}

fn planes(v: &Vga, addr: usize) -> [u8; 4] {
    [
        v.vram[4 * addr],
        v.vram[4 * addr + 1],
        v.vram[4 * addr + 2],
        v.vram[4 * addr + 3],
    ]
}

/// Colour addressing, planar 16-colour memory at A0000h (mode 12h's
/// memory setup).
fn planar() -> Vga {
    let mut v = Vga::new().unwrap();
    out(&mut v, PORT_MISC_WRITE, 0xe3);
    seq(&mut v, 2, 0x0f);
    seq(&mut v, 4, 0x06);
    gfx(&mut v, 5, 0x00);
    gfx(&mut v, 6, 0x05);
    gfx(&mut v, 8, 0xff);
    v
}

#[test]
fn write_mode_0_rotates_applies_set_reset_bit_mask_and_map_mask() {
    let mut v = planar();
    // Plain write to all planes.
    v.window_write(0, 0xa5);
    assert_eq!(planes(&v, 0), [0xa5; 4]);
    // Map mask: planes 0 and 2 only.
    seq(&mut v, 2, 0x05);
    v.window_write(1, 0x3c);
    assert_eq!(planes(&v, 1), [0x3c, 0, 0x3c, 0]);
    seq(&mut v, 2, 0x0f);
    // Set/reset colour 0110b enabled on planes 1 and 2 only; rotate by 4.
    gfx(&mut v, 0, 0x06);
    gfx(&mut v, 1, 0x06);
    gfx(&mut v, 3, 0x04);
    v.window_write(2, 0x0f);
    assert_eq!(planes(&v, 2), [0xf0, 0xff, 0xff, 0xf0]);
    gfx(&mut v, 1, 0);
    gfx(&mut v, 3, 0);
    // Bit mask keeps the latched bits: latch address 0 (A5 everywhere),
    // write 00 with mask 0F at address 0.
    assert_eq!(v.window_read(0), 0xa5);
    gfx(&mut v, 8, 0x0f);
    v.window_write(0, 0x00);
    assert_eq!(planes(&v, 0), [0xa0; 4]);
    gfx(&mut v, 8, 0xff);
}

#[test]
fn logical_operations_combine_with_the_latches() {
    let mut v = planar();
    v.window_write(0, 0xf0);
    for (func, data, want) in [(1u8, 0x3c, 0x30u8), (2, 0x0f, 0xff), (3, 0xff, 0x0f)] {
        v.window_write(0, 0xf0);
        v.window_read(0);
        gfx(&mut v, 3, func << 3);
        v.window_write(0, data);
        assert_eq!(planes(&v, 0), [want; 4], "function {func}");
    }
}

#[test]
fn write_mode_1_copies_the_latches() {
    let mut v = planar();
    seq(&mut v, 2, 0x01);
    v.window_write(10, 0x11);
    seq(&mut v, 2, 0x08);
    v.window_write(10, 0x88);
    seq(&mut v, 2, 0x0f);
    gfx(&mut v, 5, 0x01);
    assert_eq!(v.window_read(10), 0x11, "read map 0");
    v.window_write(20, 0xff);
    assert_eq!(planes(&v, 20), [0x11, 0, 0, 0x88]);
}

#[test]
fn write_mode_2_spreads_a_colour_over_the_bit_mask() {
    let mut v = planar();
    gfx(&mut v, 5, 0x02);
    gfx(&mut v, 8, 0xc0);
    v.window_read(5);
    v.window_write(5, 0x09);
    assert_eq!(planes(&v, 5), [0xc0, 0, 0, 0xc0]);
}

#[test]
fn write_mode_3_masks_the_set_reset_colour_with_rotated_data() {
    let mut v = planar();
    gfx(&mut v, 5, 0x03);
    gfx(&mut v, 0, 0x0e);
    gfx(&mut v, 3, 0x03); // rotate right by 3
    gfx(&mut v, 8, 0xf0);
    v.window_read(7);
    v.window_write(7, 0x81); // rotated: 0x30; & bit mask: 0x30
    assert_eq!(planes(&v, 7), [0x00, 0x30, 0x30, 0x30]);
}

#[test]
fn read_modes_0_and_1() {
    let mut v = planar();
    v.vram[4 * 3..4 * 3 + 4].copy_from_slice(&[0x0f, 0xf0, 0xff, 0x00]);
    for (map, want) in [(0u8, 0x0f), (1, 0xf0), (2, 0xff), (3, 0x00)] {
        gfx(&mut v, 4, map);
        assert_eq!(v.window_read(3), want);
    }
    // Read mode 1: pixels whose colour is 0101b (planes 0 and 2 set).
    gfx(&mut v, 5, 0x08);
    gfx(&mut v, 2, 0x05);
    gfx(&mut v, 7, 0x0f);
    assert_eq!(v.window_read(3), 0x0f);
    // Don't care about planes 1 and 3: colour x1x1 -> planes 0 and 2 set.
    gfx(&mut v, 7, 0x05);
    assert_eq!(v.window_read(3), 0x0f);
}

#[test]
fn chain4_and_odd_even_address_the_planes_as_mode_13h_and_text_do() {
    let mut v = Vga::new().unwrap();
    seq(&mut v, 2, 0x0f);
    seq(&mut v, 4, 0x0e); // chain 4
    gfx(&mut v, 6, 0x05);
    for a in 0..8u64 {
        v.window_write(a, a as u8 + 1);
    }
    assert_eq!(&v.vram[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(v.window_read(5), 6);
    // Map mask stops chain-4 writes to a plane.
    seq(&mut v, 2, 0x0e);
    v.window_write(4, 0xee);
    assert_eq!(v.vram[4], 5);

    // Text: memory map B8000h, odd/even.
    let mut v = Vga::new().unwrap();
    seq(&mut v, 2, 0x03);
    seq(&mut v, 4, 0x02);
    gfx(&mut v, 5, 0x10);
    gfx(&mut v, 6, 0x0e);
    v.window_write(0x18000, b'A');
    v.window_write(0x18001, 0x1f);
    v.window_write(0x18002, b'B');
    assert_eq!(planes(&v, 0)[..2], [b'A', 0x1f]);
    assert_eq!(planes(&v, 1)[0], b'B');
    assert_eq!(v.window_read(0x18001), 0x1f);
    // Outside the mapped 32 KiB: nothing.
    assert_eq!(v.window_read(0x0), 0xff);
    v.window_write(0x10000, 0x55);
    assert!(v.vram.iter().all(|&b| b != 0x55));
}

#[test]
fn dac_auto_increments_and_the_attribute_flip_flop_follows_status_reads() {
    let mut v = Vga::new().unwrap();
    dac(&mut v, 7, [1, 2, 3]);
    dac(&mut v, 255, [4, 5, 6]);
    out(&mut v, PORT_DAC_READ_INDEX, 7);
    assert_eq!(v.port_read(PORT_DAC_READ_INDEX), 3, "DAC state: read");
    let read: Vec<u8> = (0..3).map(|_| v.port_read(PORT_DAC_DATA)).collect();
    assert_eq!(read, [1, 2, 3]);
    // The write index wrapped from 255 to 0.
    assert_eq!(v.port_read(PORT_DAC_WRITE_INDEX), 0);
    // Misc output bit 0 selects 3Dx; the 3Bx ports then read all ones.
    out(&mut v, PORT_MISC_WRITE, 0x01);
    assert_eq!(v.port_read(PORT_STATUS1_MONO), 0xff);
    let a = v.port_read(PORT_STATUS1_COLOR);
    let b = v.port_read(PORT_STATUS1_COLOR);
    assert_ne!(
        a & STATUS1_VRETRACE,
        b & STATUS1_VRETRACE,
        "retrace toggles"
    );
    out(&mut v, PORT_ATTR_INDEX, 0x32); // index 0x12 with PAS
    out(&mut v, PORT_ATTR_INDEX, 0x0f);
    assert_eq!(v.attr[ATTR_PLANE_ENABLE], 0x0f);
    assert_eq!(v.port_read(PORT_ATTR_INDEX), 0x32, "index phase again");
    v.port_read(PORT_STATUS1_COLOR);
    out(&mut v, PORT_ATTR_INDEX, 0x00);
    out(&mut v, PORT_ATTR_INDEX, 0xff);
    assert_eq!(v.attr[0], 0x3f, "palette entries are 6 bits");
}

#[test]
fn crtc_registers_0_to_7_are_write_protected_by_bit_7_of_register_11h() {
    let mut v = Vga::new().unwrap();
    out(&mut v, PORT_MISC_WRITE, 0x01);
    crtc(&mut v, 0x01, 0x4f);
    crtc(&mut v, 0x11, 0x80);
    crtc(&mut v, 0x01, 0x27);
    crtc(&mut v, 0x07, 0xff);
    assert_eq!(v.crtc[1], 0x4f);
    assert_eq!(v.crtc[7], 0x10, "only the line compare bit goes through");
}

#[test]
fn out_of_range_register_indexes_do_not_panic() {
    let mut v = Vga::new().unwrap();
    out(&mut v, PORT_MISC_WRITE, 0x01);
    for i in [0x07u8, 0x08, 0x3f, 0x80, 0xff] {
        seq(&mut v, i, 0xff);
        gfx(&mut v, i, 0xff);
        crtc(&mut v, i, 0xff);
        attr(&mut v, i, 0xff);
        v.port_read(PORT_SEQ_DATA);
        v.port_read(PORT_GFX_DATA);
        v.port_read(PORT_CRTC_DATA_COLOR);
        v.port_read(PORT_ATTR_DATA_READ);
    }
    for port in 0x3b0..0x3e0 {
        v.port_write(port, 0xff);
        v.port_read(port);
    }
    // Every window address in every memory map and access mode.
    for (sr4, gr5, gr6) in [(0x08, 0x00, 0x01), (0x02, 0x10, 0x0d), (0x06, 0x08, 0x05)] {
        seq(&mut v, 4, sr4);
        gfx(&mut v, 5, gr5);
        gfx(&mut v, 6, gr6);
        for a in (0..0x20000u64).step_by(0x3fff).chain([0x1ffff, u64::MAX]) {
            v.window_write(a, 0x5a);
            v.window_read(a);
        }
    }
    // The linear framebuffer past the end of video memory.
    let mut b = [0u8; 4];
    v.lfb_read(VRAM_SIZE as u64 - 2, &mut b);
    assert_eq!(b[2..], [0xff, 0xff]);
    v.lfb_write(VRAM_SIZE as u64 - 2, &[1, 2, 3, 4]);
    v.lfb_write(u64::MAX, &[1]);
    assert_eq!(v.vram[VRAM_SIZE - 2..], [1, 2]);
}

fn dispi(v: &mut Vga, index: usize, val: u16) {
    v.dispi_write_index(index as u16);
    v.dispi_write(val);
}

fn dispi_get(v: &mut Vga, index: usize) -> u16 {
    v.dispi_write_index(index as u16);
    v.dispi_read()
}

#[test]
fn dispi_identifies_reports_caps_and_clamps_odd_values() {
    let mut v = Vga::new().unwrap();
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_ID), DISPI_ID5);
    dispi(&mut v, DISPI_INDEX_ID, 0x1234);
    assert_eq!(
        dispi_get(&mut v, DISPI_INDEX_ID),
        DISPI_ID5,
        "unknown IDs ignored"
    );
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_VIDEO_MEMORY_64K), 256);
    dispi(&mut v, DISPI_INDEX_ENABLE, DISPI_GETCAPS);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_XRES), DISPI_MAX_XRES);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_BPP), DISPI_MAX_BPP);
    dispi(&mut v, DISPI_INDEX_ENABLE, 0);
    // XRES 0, YRES 65535, BPP 7: the nearest mode that fits.
    out(&mut v, PORT_ATTR_INDEX, 0x20); // screen on
    dispi(&mut v, DISPI_INDEX_XRES, 0);
    dispi(&mut v, DISPI_INDEX_YRES, 65535);
    dispi(&mut v, DISPI_INDEX_BPP, 7);
    dispi(&mut v, DISPI_INDEX_ENABLE, DISPI_ENABLED | DISPI_NOCLEARMEM);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_XRES), 8);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_BPP), 8);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_YRES), DISPI_MAX_YRES);
    dispi(&mut v, DISPI_INDEX_XRES, 65535);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_XRES), DISPI_MAX_XRES);
    dispi(&mut v, DISPI_INDEX_BPP, 32);
    // 16000 x 32 bpp = 64000 bytes a line: 262 lines fit in 16 MiB.
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_YRES), 262);
    // Offsets beyond video memory fall back to 0.
    dispi(&mut v, DISPI_INDEX_Y_OFFSET, 60000);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_Y_OFFSET), 0);
    dispi(&mut v, DISPI_INDEX_X_OFFSET, 65535);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_X_OFFSET), 0);
    // Banks beyond video memory wrap inside it.
    dispi(&mut v, DISPI_INDEX_BANK, 0xffff);
    assert_eq!(dispi_get(&mut v, DISPI_INDEX_BANK), 255);
    v.window_write(0xffff, 0x77);
    assert_eq!(v.vram[VRAM_SIZE - 1], 0x77);
    // Indexes past the last register read 0 and ignore writes.
    dispi(&mut v, 0x7fff, 5);
    assert_eq!(dispi_get(&mut v, 0xffff), 0);
    let mut frame = Frame::default();
    let mut screen = VgaScreen::new(Arc::new(Mutex::new(v)));
    screen.refresh(&mut frame);
    assert_eq!((frame.width, frame.height), (16000, 262));
}

/// 80x25 text with 9x16 cells as the VGA BIOS sets mode 3, an EGA
/// palette in the DAC, and a font with glyphs for 'A' and C4h.
fn text_mode() -> Arc<Mutex<Vga>> {
    let mut v = Vga::new().unwrap();
    out(&mut v, PORT_MISC_WRITE, 0x67);
    seq(&mut v, 1, 0x00);
    seq(&mut v, 2, 0x03);
    seq(&mut v, 3, 0x00);
    seq(&mut v, 4, 0x02);
    crtc(&mut v, 0x01, 0x4f);
    crtc(&mut v, 0x07, 0x1f);
    crtc(&mut v, 0x09, 0x4f);
    crtc(&mut v, 0x0a, 0x0d);
    crtc(&mut v, 0x0b, 0x0e);
    crtc(&mut v, 0x12, 0x8f);
    crtc(&mut v, 0x13, 0x28);
    crtc(&mut v, 0x17, 0xa3);
    crtc(&mut v, 0x18, 0xff);
    gfx(&mut v, 5, 0x10);
    gfx(&mut v, 6, 0x0e);
    gfx(&mut v, 8, 0xff);
    for i in 0..16u8 {
        attr(&mut v, i, i);
    }
    attr(&mut v, 0x10, 0x0c); // line graphics on
    attr(&mut v, 0x12, 0x0f);
    out(&mut v, PORT_ATTR_INDEX, 0x20); // palette address source: screen on
    dac(&mut v, 1, [0, 0, 42]);
    dac(&mut v, 7, [42, 42, 42]);
    dac(&mut v, 15, [63, 63, 63]);
    // Font: write plane 2 linearly, as the BIOS does.
    seq(&mut v, 2, 0x04);
    seq(&mut v, 4, 0x06);
    gfx(&mut v, 4, 0x02);
    gfx(&mut v, 5, 0x00);
    gfx(&mut v, 6, 0x04);
    for row in 0..16u64 {
        v.window_write(u64::from(b'A') * 32 + row, 0x81);
        v.window_write(0xc4 * 32 + row, if row == 8 { 0xff } else { 0 });
    }
    seq(&mut v, 2, 0x03);
    seq(&mut v, 4, 0x02);
    gfx(&mut v, 4, 0x00);
    gfx(&mut v, 5, 0x10);
    gfx(&mut v, 6, 0x0e);
    Arc::new(Mutex::new(v))
}

fn put_char(vga: &Arc<Mutex<Vga>>, cell: u64, ch: u8, attr: u8) {
    let mut v = vga.lock().unwrap();
    v.window_write(0x18000 + 2 * cell, ch);
    v.window_write(0x18000 + 2 * cell + 1, attr);
}

#[test]
fn text_mode_draws_9_dot_cells_from_the_font_in_plane_2() {
    let vga = text_mode();
    put_char(&vga, 0, b'A', 0x1f);
    put_char(&vga, 1, 0xc4, 0x07);
    // Hide the cursor, so the picture does not blink.
    crtc(&mut vga.lock().unwrap(), 0x0a, 0x20);
    let mut screen = VgaScreen::new(vga.clone());
    let mut frame = Frame::default();
    assert_eq!(screen.refresh(&mut frame), Damage::Resized);
    assert_eq!((frame.width, frame.height), (720, 400));
    let white = 0xffffff;
    let blue = rgb8(0, 0, dac6_to_8(42));
    let grey = rgb8(dac6_to_8(42), dac6_to_8(42), dac6_to_8(42));
    assert_eq!(dac6_to_8(42), 0xa8);
    assert_eq!(dac6_to_8(63), 0xff);
    assert_eq!(dac6_to_8(21), 0x57);
    // 'A' = 0x81 on every row: dots 0 and 7 in white, the 9th column is
    // background (not a line-graphics character).
    let row: Vec<u32> = frame.row(3)[..9].to_vec();
    assert_eq!(
        row,
        [white, blue, blue, blue, blue, blue, blue, white, blue]
    );
    // C4h: the 9th column repeats the 8th.
    assert_eq!(frame.row(8)[9..18], [grey; 9]);
    assert_eq!(frame.row(7)[9..18], [0; 9]);
    // Nothing changed: no damage. One cell changed: that cell only.
    assert_eq!(screen.refresh(&mut frame), Damage::Rects(vec![]));
    put_char(&vga, 81, b'A', 0x07);
    assert_eq!(
        screen.refresh(&mut frame),
        Damage::Rects(vec![Rect::new(9, 16, 9, 16)])
    );
    assert_eq!(frame.row(16)[9], grey);
    // Without line graphics, C4h's 9th column is background.
    attr(&mut vga.lock().unwrap(), 0x10, 0x08);
    out(&mut vga.lock().unwrap(), PORT_ATTR_INDEX, 0x20);
    screen.refresh(&mut frame);
    assert_eq!(frame.row(8)[17], 0);
    // Palette address source cleared: the screen goes black.
    vga.lock().unwrap().port_read(PORT_STATUS1_COLOR);
    out(&mut vga.lock().unwrap(), PORT_ATTR_INDEX, 0x00);
    screen.refresh(&mut frame);
    assert!(frame.pixels.iter().all(|&p| p == 0));
}

#[test]
fn the_text_cursor_blinks_in_the_foreground_colour() {
    let vga = text_mode();
    put_char(&vga, 0, b' ', 0x0f);
    let mut screen = VgaScreen::new(vga);
    let mut frame = Frame::default();
    let mut seen = [false; 2];
    let start = std::time::Instant::now();
    while start.elapsed() < render::CURSOR_BLINK_HALF_PERIOD * 3 && !(seen[0] && seen[1]) {
        screen.refresh(&mut frame);
        // Cursor lines 13-14 of the cell at (0,0).
        let on = frame.row(13)[..9] == [0xffffff; 9] && frame.row(14)[..9] == [0xffffff; 9];
        let off = frame.row(13)[..9] == [0; 9];
        assert!(on || off);
        assert_eq!(frame.row(12)[0], 0, "above the cursor lines");
        seen[usize::from(on)] = true;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(seen, [true, true], "the cursor shows and hides");
}

fn rgb8(r: u8, g: u8, b: u8) -> u32 {
    u32::from(r) << 16 | u32::from(g) << 8 | u32::from(b)
}

/// The screen on, DISPI at 1024x768x32 with the linear framebuffer.
fn vbe_1024x768x32() -> Arc<Mutex<Vga>> {
    let vga = Vga::shared().unwrap();
    {
        let mut v = vga.lock().unwrap();
        out(&mut v, PORT_ATTR_INDEX, 0x20);
        dispi(&mut v, DISPI_INDEX_XRES, 1024);
        dispi(&mut v, DISPI_INDEX_YRES, 768);
        dispi(&mut v, DISPI_INDEX_BPP, 32);
        dispi(
            &mut v,
            DISPI_INDEX_ENABLE,
            DISPI_ENABLED | DISPI_LFB_ENABLED,
        );
    }
    vga
}

#[test]
fn vbe_32bpp_through_the_lfb_redraws_only_written_lines() {
    let vga = vbe_1024x768x32();
    let mut pci = VgaPci::new(vga.clone(), vec![0x55, 0xaa, 1, 0xcb]);
    pci.config_write(0x10, &0xfd00_0000u32.to_le_bytes());
    pci.config_write(0x30, &0xfebe_0001u32.to_le_bytes());
    pci.config_write(0x04, &[0x02, 0x00]);
    // The BAR is prefetchable memory; the ROM BAR shows the VGA BIOS.
    assert_eq!(pci.config_read(0x10), 0xfd00_0008);
    let mut rom = [0u8; 4];
    pci.read(0xfebe_0000, &mut rom);
    assert_eq!(rom, [0x55, 0xaa, 1, 0xcb]);
    let mut screen = VgaScreen::new(vga.clone());
    let mut frame = Frame::default();
    assert_eq!(screen.refresh(&mut frame), Damage::Resized);
    assert_eq!((frame.width, frame.height), (1024, 768));
    // Pixel (3, 700) through BAR 0: B, G, R, X.
    let at = 0xfd00_0000u64 + (700 * 1024 + 3) * 4;
    pci.write(at, &[0x30, 0x20, 0x10, 0]);
    let damage = screen.refresh(&mut frame);
    assert_eq!(frame.row(700)[3], 0x102030);
    // One 4 KiB page is exactly one line at 1024x32 bpp.
    assert_eq!(damage, Damage::Rects(vec![Rect::new(0, 700, 1024, 1)]));
    assert_eq!(screen.refresh(&mut frame), Damage::Rects(vec![]));
    // With BAR 0 mapped as guest memory, writes bypass the device (no
    // dirty bits): the renderer finds the changed line by comparison.
    vga.lock().unwrap().set_lfb_mapped(true);
    screen.refresh(&mut frame);
    let at = (5 * 1024 + 9) * 4;
    vga.lock().unwrap().vram[at..at + 4].copy_from_slice(&[0xff, 0, 0, 0]);
    assert_eq!(
        screen.refresh(&mut frame),
        Damage::Rects(vec![Rect::new(0, 5, 1024, 1)])
    );
    assert_eq!(frame.row(5)[9], 0x0000ff);
    assert_eq!(screen.refresh(&mut frame), Damage::Rects(vec![]));
}

/// Mode 13h as the VGA BIOS programs it (chain-4, 320x200 doubled to
/// 640x400), with DAC entry 9 set to a colour of its own.
fn mode_13h(v: &mut Vga) {
    out(v, PORT_MISC_WRITE, 0x63);
    seq(v, 1, 0x01);
    seq(v, 2, 0x0f);
    seq(v, 4, 0x0e);
    crtc(v, 0x01, 0x4f);
    crtc(v, 0x07, 0x1f);
    crtc(v, 0x09, 0x41);
    crtc(v, 0x12, 0x8f);
    crtc(v, 0x13, 0x28);
    crtc(v, 0x17, 0xa3);
    crtc(v, 0x18, 0xff);
    gfx(v, 5, 0x40);
    gfx(v, 6, 0x05);
    attr(v, 0x10, 0x41);
    out(v, PORT_ATTR_INDEX, 0x20);
    dac(v, 9, [63, 0, 21]);
}

#[test]
fn mode_13h_doubles_pixels_to_640x400() {
    let vga = Vga::shared().unwrap();
    {
        let mut v = vga.lock().unwrap();
        mode_13h(&mut v);
        // Pixel (1, 1).
        v.window_write(321, 9);
    }
    let mut screen = VgaScreen::new(vga);
    let mut frame = Frame::default();
    screen.refresh(&mut frame);
    assert_eq!((frame.width, frame.height), (640, 400));
    let c = rgb8(0xff, 0, 0x57);
    for (x, y) in [(2, 2), (3, 2), (2, 3), (3, 3)] {
        assert_eq!(frame.row(y)[x], c, "({x},{y})");
    }
    assert_eq!(frame.row(1)[2], 0);
    assert_eq!(frame.row(2)[4], 0);
}

/// A port write through the I/O bus device, as a vCPU exit delivers it.
fn port(ports: &mut VgaPorts, port: u64, val: u8) {
    ports.write(port, &[val]);
}

#[test]
fn chain4_with_all_planes_maps_the_window_onto_video_memory() {
    let vga = Vga::shared().unwrap();
    let asked: Arc<Mutex<Vec<Option<WindowAlias>>>> = Arc::default();
    let log = asked.clone();
    vga.lock().unwrap().set_window_listener(Arc::new(move |a| {
        log.lock().unwrap().push(a);
        true
    }));
    let mut ports = VgaPorts(vga.clone());
    // Mode 13h as the VGA BIOS sets it: memory map A0000h 64 KiB,
    // chain-4, all planes.
    port(&mut ports, PORT_GFX_INDEX, 6);
    port(&mut ports, PORT_GFX_DATA, 0x05);
    port(&mut ports, PORT_SEQ_INDEX, 2);
    port(&mut ports, PORT_SEQ_DATA, 0x0f);
    assert!(asked.lock().unwrap().is_empty(), "no chain-4 yet: no alias");
    port(&mut ports, PORT_SEQ_INDEX, 4);
    port(&mut ports, PORT_SEQ_DATA, 0x0e);
    let mode13 = WindowAlias {
        base: 0xa0000,
        len: 0x10000,
        vram_offset: 0,
    };
    assert_eq!(*asked.lock().unwrap(), vec![Some(mode13)]);
    assert!(vga.lock().unwrap().window_mapped);
    // Rewriting the same values asks nothing more.
    port(&mut ports, PORT_SEQ_DATA, 0x0e);
    assert_eq!(asked.lock().unwrap().len(), 1);

    // The guest writes through the mapping (not through the device): the
    // renderer finds the change by comparison.
    // The rest of the mode (the same values again for those above).
    mode_13h(&mut vga.lock().unwrap());
    let mut screen = VgaScreen::new(vga.clone());
    let mut frame = Frame::default();
    screen.refresh(&mut frame);
    assert_eq!(screen.refresh(&mut frame), Damage::Rects(vec![]));
    vga.lock().unwrap().vram[10 * 320 + 7] = 9;
    assert_eq!(
        screen.refresh(&mut frame),
        Damage::Rects(vec![Rect::new(0, 20, 640, 2)])
    );
    assert_eq!(frame.row(20)[14], rgb8(0xff, 0, 0x57));

    // One plane masked off: the window goes back to the device, and what
    // was written through the mapping is marked written.
    vga.lock().unwrap().clear_dirty();
    port(&mut ports, PORT_SEQ_INDEX, 2);
    port(&mut ports, PORT_SEQ_DATA, 0x0e);
    assert_eq!(asked.lock().unwrap().last(), Some(&None));
    let v = vga.lock().unwrap();
    assert!(!v.window_mapped);
    assert!(v.is_dirty(0, 1) && v.is_dirty(0xffff, 1) && !v.is_dirty(0x10000, 1));
    drop(v);

    // VBE banked memory (map select 1): the bank moves the alias.
    port(&mut ports, PORT_SEQ_DATA, 0x0f);
    ports.write(PORT_DISPI_INDEX, &(DISPI_INDEX_BANK as u16).to_le_bytes());
    ports.write(PORT_DISPI_DATA, &3u16.to_le_bytes());
    assert_eq!(
        asked.lock().unwrap().last(),
        Some(&Some(WindowAlias {
            vram_offset: 3 << 16,
            ..mode13
        }))
    );
}

#[test]
fn a_refused_window_mapping_keeps_the_device_watching_writes() {
    let vga = Vga::shared().unwrap();
    vga.lock().unwrap().set_window_listener(Arc::new(|_| false));
    let mut ports = VgaPorts(vga.clone());
    port(&mut ports, PORT_SEQ_INDEX, 2);
    port(&mut ports, PORT_SEQ_DATA, 0x0f);
    port(&mut ports, PORT_SEQ_INDEX, 4);
    port(&mut ports, PORT_SEQ_DATA, 0x0e);
    let mut v = vga.lock().unwrap();
    assert!(v.wanted_window_alias().is_some());
    assert!(!v.window_mapped, "KVM refused: writes still exit");
    v.clear_dirty();
    v.window_write(5, 1);
    assert!(v.is_dirty(5, 1));
}

/// Not a check but a measurement (run with `--ignored --nocapture`): the
/// time a refresh takes for an 80x25 text screen (720x400) and a
/// 1024x768x32 VBE screen, all redrawn and with nothing changed.
#[test]
#[ignore]
fn refresh_cost() {
    fn time(screen: &mut VgaScreen, frame: &mut Frame, before: impl Fn()) -> f64 {
        let n = 50;
        let start = std::time::Instant::now();
        for _ in 0..n {
            before();
            screen.refresh(frame);
        }
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    }
    let text = text_mode();
    for cell in 0..2000 {
        put_char(&text, cell, b'A' + (cell % 26) as u8, 0x1f);
    }
    let mut screen = VgaScreen::new(text.clone());
    let mut frame = Frame::default();
    screen.refresh(&mut frame);
    // A change of any DAC entry forces a full redraw.
    let toggle = |vga: &Arc<Mutex<Vga>>| {
        let mut v = vga.lock().unwrap();
        let now = v.palette[600];
        dac(&mut v, 200, [now ^ 1, 0, 0]);
    };
    let full = time(&mut screen, &mut frame, || toggle(&text));
    let idle = time(&mut screen, &mut frame, || {});
    eprintln!("720x400 text: full redraw {full:.3} ms, nothing changed {idle:.3} ms");

    let vga = vbe_1024x768x32();
    {
        let mut v = vga.lock().unwrap();
        for (i, b) in v.vram[..1024 * 768 * 4].iter_mut().enumerate() {
            *b = i as u8;
        }
    }
    let mut screen = VgaScreen::new(vga.clone());
    let mut frame = Frame::default();
    screen.refresh(&mut frame);
    let full = time(&mut screen, &mut frame, || toggle(&vga));
    let idle = time(&mut screen, &mut frame, || {});
    vga.lock().unwrap().set_lfb_mapped(true);
    screen.refresh(&mut frame);
    let idle_mapped = time(&mut screen, &mut frame, || {});
    eprintln!(
        "1024x768x32: full redraw {full:.3} ms, nothing changed {idle:.3} ms \
         (framebuffer mapped, compared line by line: {idle_mapped:.3} ms)"
    );
}
