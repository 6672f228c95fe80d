//! Turns the VGA's registers and video memory into a picture, making the
//! same choices as QEMU's `-vga std` so both show the same pixels: a 6-bit
//! DAC value `v` becomes `v << 2 | (v & 1) * 3`; text cells are 8, 9 or
//! 16 dots wide, and with line graphics enabled characters B0h-DFh repeat
//! their 8th column in the 9th; the cursor is drawn in the foreground
//! colour and blinks every 266 ms; graphics modes repeat scanlines as the
//! maximum scan line register says; a screen whose attribute controller
//! has its palette address source cleared is black.
//!
//! Only what changed is drawn again: text cells whose character or
//! attribute changed (and the cursor's), graphics lines whose video memory
//! was written since the last refresh; any change of the registers, the
//! DAC or the font redraws everything.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::vga_spec::*;
use super::{lock, Vga};
use crate::display::{Damage, Frame, Rect, Screen};

/// Half the text cursor's blink period (QEMU: 16 frames at 60 Hz per
/// state change pair).
pub const CURSOR_BLINK_HALF_PERIOD: Duration = Duration::from_millis(1000 * 2 * 16 / 60 / 2);
/// The most text cells a mode may have (160 x 100).
const MAX_TEXT_CELLS: usize = 160 * 100;
const VRAM_MASK: usize = VRAM_SIZE - 1;

/// A 6-bit DAC component as an 8-bit one.
pub fn dac6_to_8(v: u8) -> u8 {
    let v = v & 0x3f;
    (v << 2) | ((v & 1) * 3)
}

fn rgb(r: u8, g: u8, b: u8) -> u32 {
    u32::from(r) << 16 | u32::from(g) << 8 | u32::from(b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Graphics,
    Blank,
}

/// The register state a picture was drawn with; any difference means a
/// full redraw.
#[derive(Clone, PartialEq, Eq)]
struct Registers {
    kind: Kind,
    misc: u8,
    seq: [u8; SEQ_COUNT],
    gfx: [u8; GFX_COUNT],
    crtc: [u8; CRTC_COUNT],
    attr: [u8; ATTR_COUNT],
    palette: [u8; 768],
    dispi: [u16; DISPI_COUNT],
    dispi_start: usize,
    dispi_line_offset: usize,
}

impl Registers {
    fn of(vga: &Vga) -> Self {
        let kind = if vga.attr_index & ATTR_INDEX_PAS == 0 {
            Kind::Blank
        } else if vga.gfx[GFX_MISC] & MISC_GRAPHICS != 0 {
            Kind::Graphics
        } else {
            Kind::Text
        };
        Self {
            kind,
            misc: vga.misc,
            seq: vga.seq,
            gfx: vga.gfx,
            // The cursor location and shape are handled per cell.
            crtc: {
                let mut c = vga.crtc;
                for i in [
                    CRTC_CURSOR_START,
                    CRTC_CURSOR_END,
                    CRTC_CURSOR_HI,
                    CRTC_CURSOR_LO,
                ] {
                    c[i] = 0;
                }
                c
            },
            attr: vga.attr,
            palette: vga.palette,
            dispi: vga.dispi,
            dispi_start: vga.dispi_start,
            dispi_line_offset: vga.dispi_line_offset,
        }
    }
}

/// The VGA's picture, for the [`crate::display::Console`].
pub struct VgaScreen {
    vga: Arc<Mutex<Vga>>,
    last: Option<Box<Registers>>,
    /// Character and attribute of each text cell as last drawn.
    cells: Vec<u16>,
    /// Cursor cell address (in video memory bytes) and whether it showed.
    cursor: Option<(usize, bool)>,
    cursor_phase: bool,
    next_blink: Instant,
    /// The video memory bytes each graphics line was last drawn from,
    /// while the guest writes video memory directly (no dirty bits).
    shadow: Vec<u8>,
}

impl VgaScreen {
    pub fn new(vga: Arc<Mutex<Vga>>) -> Self {
        Self {
            vga,
            last: None,
            cells: Vec::new(),
            cursor: None,
            cursor_phase: false,
            next_blink: Instant::now(),
            shadow: Vec::new(),
        }
    }
}

impl Screen for VgaScreen {
    fn refresh(&mut self, frame: &mut Frame) -> Damage {
        let vga_arc = self.vga.clone();
        let mut vga = lock(&vga_arc);
        let regs = Registers::of(&vga);
        let full = vga.font_written || self.last.as_deref() != Some(&regs);
        let kind = regs.kind;
        if self.last.as_deref() != Some(&regs) {
            self.last = Some(Box::new(regs));
        }
        let damage = match kind {
            Kind::Text => self.draw_text(&vga, frame, full),
            Kind::Graphics => draw_graphics(&vga, frame, full, &mut self.shadow),
            Kind::Blank => {
                if full {
                    frame.pixels.fill(0);
                    Damage::Rects(vec![Rect::new(0, 0, frame.width, frame.height)])
                } else {
                    Damage::Rects(Vec::new())
                }
            }
        };
        vga.clear_dirty();
        match damage {
            Damage::Rects(r) => Damage::Rects(r.into_iter().filter(|r| !r.is_empty()).collect()),
            d => d,
        }
    }
}

/// The 16 attribute-controller colours as the DAC shows them.
fn palette16(vga: &Vga) -> [u32; 16] {
    let mut out = [0u32; 16];
    let select = vga.attr[ATTR_COLOR_SELECT];
    for (i, o) in out.iter_mut().enumerate() {
        let v = vga.attr[i];
        let index = if vga.attr[ATTR_MODE] & ATTR_MODE_P54 != 0 {
            ((select & 0x0f) << 4) | (v & 0x0f)
        } else {
            ((select & 0x0c) << 4) | (v & 0x3f)
        };
        let at = usize::from(index) * 3;
        *o = rgb(
            dac6_to_8(vga.palette[at]),
            dac6_to_8(vga.palette[at + 1]),
            dac6_to_8(vga.palette[at + 2]),
        );
    }
    out
}

fn palette256(vga: &Vga) -> Vec<u32> {
    let eight = vga.dac_8bit();
    vga.palette
        .chunks_exact(3)
        .map(|c| {
            if eight {
                rgb(c[0], c[1], c[2])
            } else {
                rgb(dac6_to_8(c[0]), dac6_to_8(c[1]), dac6_to_8(c[2]))
            }
        })
        .collect()
}

fn vertical_display_end(vga: &Vga) -> usize {
    let ovf = vga.crtc[CRTC_OVERFLOW];
    usize::from(vga.crtc[CRTC_V_DISPLAY_END])
        | usize::from(ovf & 0x02) << 7
        | usize::from(ovf & 0x40) << 3
}

/// (line offset in bytes, start address in dwords, line compare).
fn offsets(vga: &Vga) -> (usize, usize, usize) {
    if vga.dispi_enabled() {
        (vga.dispi_line_offset, vga.dispi_start, 65535)
    } else {
        let start =
            usize::from(vga.crtc[CRTC_START_HI]) << 8 | usize::from(vga.crtc[CRTC_START_LO]);
        let compare = usize::from(vga.crtc[CRTC_LINE_COMPARE])
            | usize::from(vga.crtc[CRTC_OVERFLOW] & 0x10) << 4
            | usize::from(vga.crtc[CRTC_MAX_SCAN] & 0x40) << 3;
        (usize::from(vga.crtc[CRTC_OFFSET]) << 3, start, compare)
    }
}

fn vram(vga: &Vga, addr: usize) -> u8 {
    vga.vram[addr & VRAM_MASK]
}

impl VgaScreen {
    fn draw_text(&mut self, vga: &Vga, frame: &mut Frame, full: bool) -> Damage {
        let cheight = usize::from(vga.crtc[CRTC_MAX_SCAN] & 0x1f) + 1;
        let clocking = vga.seq[SEQ_CLOCKING_MODE];
        let cw = if clocking & CLOCKING_HALF_DOT != 0 {
            16
        } else if clocking & CLOCKING_8DOT != 0 {
            8
        } else {
            9
        };
        let cols = usize::from(vga.crtc[CRTC_H_DISPLAY_END]) + 1;
        let rows = if vga.crtc[CRTC_V_TOTAL] == 100 {
            100
        } else {
            (vertical_display_end(vga) + 1) / cheight
        };
        if cols * rows <= 1 || cols * rows > MAX_TEXT_CELLS {
            // A mode being programmed: keep the old picture.
            return Damage::Rects(Vec::new());
        }
        let (w, h) = ((cols * cw) as u32, (rows * cheight) as u32);
        let resized = frame.width != w || frame.height != h;
        frame.resize(w, h);
        let full = full || resized || self.cells.len() != cols * rows;
        if full {
            self.cells = vec![u16::MAX; cols * rows];
        }
        let palette = palette16(vga);
        let map = vga.seq[SEQ_CHARACTER_MAP];
        let font_a = (usize::from((map >> 4) & 1) | usize::from((map << 1) & 6)) * 8192 * 4 + 2;
        let font_b = (usize::from((map >> 5) & 1) | usize::from((map >> 1) & 6)) * 8192 * 4 + 2;
        let (line_offset, start, line_compare) = offsets(vga);
        let cursor_addr = (usize::from(vga.crtc[CRTC_CURSOR_HI]) << 8
            | usize::from(vga.crtc[CRTC_CURSOR_LO]))
            * 4;
        let now = Instant::now();
        if now >= self.next_blink {
            self.next_blink = now + CURSOR_BLINK_HALF_PERIOD;
            self.cursor_phase = !self.cursor_phase;
        }
        let cursor_on = vga.crtc[CRTC_CURSOR_START] & CURSOR_DISABLE == 0 && self.cursor_phase;
        let cursor_start = usize::from(vga.crtc[CRTC_CURSOR_START] & 0x1f);
        let cursor_last = usize::from(vga.crtc[CRTC_CURSOR_END] & 0x1f).min(cheight - 1);
        let cursor_now = Some((cursor_addr, cursor_on));
        let cursor_moved = self.cursor != cursor_now;
        let old_cursor = self.cursor.map(|(a, _)| a);
        self.cursor = cursor_now;
        let line_graphics = vga.attr[ATTR_MODE] & ATTR_MODE_LINE_GRAPHICS != 0;

        let mut rects = Vec::new();
        let mut offset = start * 4;
        let mut line = 0;
        let width = frame.width as usize;
        for cy in 0..rows {
            let mut changed: Option<(usize, usize)> = None;
            for cx in 0..cols {
                let src = (offset + cx * 4) & VRAM_MASK;
                let ch = vram(vga, src);
                let attr = vram(vga, src + 1);
                let cell = &mut self.cells[cy * cols + cx];
                let value = u16::from(ch) | u16::from(attr) << 8;
                let at_cursor = src == cursor_addr;
                let redraw = full
                    || *cell != value
                    || (cursor_moved && (at_cursor || old_cursor == Some(src)));
                if !redraw {
                    continue;
                }
                *cell = value;
                changed = Some(changed.map_or((cx, cx), |(a, _)| (a, cx)));
                let font = if attr & 0x08 != 0 { font_b } else { font_a };
                let glyph = font + 32 * 4 * usize::from(ch);
                let fg = palette[usize::from(attr & 0x0f)];
                let bg = palette[usize::from(attr >> 4)];
                let dup9 = line_graphics && (0xb0..=0xdf).contains(&ch);
                for row in 0..cheight {
                    let mut bits = vram(vga, glyph + row * 4);
                    let in_cursor = at_cursor
                        && cursor_on
                        && row >= cursor_start
                        && row <= cursor_last
                        && cursor_start < cheight;
                    if in_cursor {
                        bits = 0xff;
                    }
                    let y = cy * cheight + row;
                    let px = &mut frame.pixels[y * width + cx * cw..y * width + (cx + 1) * cw];
                    draw_glyph_row(px, bits, fg, bg, cw, dup9 || in_cursor);
                }
            }
            if let Some((a, b)) = changed {
                rects.push(Rect::new(
                    (a * cw) as u32,
                    (cy * cheight) as u32,
                    ((b - a + 1) * cw) as u32,
                    cheight as u32,
                ));
            }
            let next = line + cheight;
            offset += line_offset;
            if line < line_compare && next >= line_compare {
                offset = 0;
            }
            line = next;
        }
        if resized {
            Damage::Resized
        } else {
            Damage::Rects(rects)
        }
    }
}

/// One scanline of a character cell: 8 font bits, a 9th column that
/// repeats the 8th (`dup9`) or shows the background, or every bit doubled
/// for 16-dot cells.
fn draw_glyph_row(px: &mut [u32], bits: u8, fg: u32, bg: u32, cw: usize, dup9: bool) {
    let bit = |i: usize| if bits & (0x80 >> i) != 0 { fg } else { bg };
    match cw {
        16 => {
            for i in 0..8 {
                px[2 * i] = bit(i);
                px[2 * i + 1] = bit(i);
            }
        }
        _ => {
            for (i, p) in px.iter_mut().enumerate().take(8) {
                *p = bit(i);
            }
            if cw == 9 {
                px[8] = if dup9 { bit(7) } else { bg };
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineFormat {
    /// 16-colour planar; `true`: every pixel doubled.
    Planar(bool),
    /// CGA 4-colour interleaved.
    Cga(bool),
    /// 256 colours, every pixel doubled (mode 13h).
    Indexed8Doubled,
    Indexed8,
    Rgb15,
    Rgb16,
    Rgb24,
    Rgb32,
}

impl LineFormat {
    /// Bits of video memory per source pixel.
    fn bits(self) -> usize {
        match self {
            LineFormat::Planar(_) | LineFormat::Cga(_) | LineFormat::Indexed8Doubled => 4,
            LineFormat::Indexed8 => 8,
            LineFormat::Rgb15 | LineFormat::Rgb16 => 16,
            LineFormat::Rgb24 => 24,
            LineFormat::Rgb32 => 32,
        }
    }
}

fn draw_graphics(vga: &Vga, frame: &mut Frame, full: bool, shadow: &mut Vec<u8>) -> Damage {
    let shift = (vga.gfx[GFX_MODE] >> 5) & 3;
    let double_scan = usize::from(vga.crtc[CRTC_MAX_SCAN] >> 7);
    let multi_scan = if shift != 1 {
        ((usize::from(vga.crtc[CRTC_MAX_SCAN] & 0x1f) + 1) << double_scan) - 1
    } else {
        double_scan
    };
    let (width, height) = if vga.dispi_enabled() {
        (
            usize::from(vga.dispi[DISPI_INDEX_XRES]),
            usize::from(vga.dispi[DISPI_INDEX_YRES]),
        )
    } else {
        (
            (usize::from(vga.crtc[CRTC_H_DISPLAY_END]) + 1) * 8,
            vertical_display_end(vga) + 1,
        )
    };
    let half_dot = vga.seq[SEQ_CLOCKING_MODE] & CLOCKING_HALF_DOT != 0;
    let format = match shift {
        0 => LineFormat::Planar(half_dot),
        1 => LineFormat::Cga(half_dot),
        _ => match if vga.dispi_enabled() {
            vga.dispi[DISPI_INDEX_BPP]
        } else {
            0
        } {
            8 => LineFormat::Indexed8,
            15 => LineFormat::Rgb15,
            16 => LineFormat::Rgb16,
            24 => LineFormat::Rgb24,
            32 => LineFormat::Rgb32,
            _ => LineFormat::Indexed8Doubled,
        },
    };
    let disp_width = if shift <= 1 && half_dot {
        width * 2
    } else {
        width
    };
    if disp_width == 0 || height == 0 || disp_width * height > 16384 * 16384 {
        return Damage::Rects(Vec::new());
    }
    let resized = frame.width as usize != disp_width || frame.height as usize != height;
    frame.resize(disp_width as u32, height as u32);
    let full = full || resized;
    // With the framebuffer or the window mapped as memory, compare each
    // line's bytes with those it was drawn from; otherwise the dirty bits
    // say what was written.
    let compare = vga.lfb_mapped || vga.window_mapped;
    if full || !compare {
        shadow.clear();
    }
    let pal16 = palette16(vga);
    let pal256 = palette256(vga);
    let (line_offset, start, line_compare) = offsets(vga);
    let bwidth = (width * format.bits()).div_ceil(8);
    let mode = vga.crtc[CRTC_MODE];
    let mut addr1 = start * 4;
    let mut y1 = 0usize;
    let mut multi_run = multi_scan;
    let mut rects: Vec<Rect> = Vec::new();
    let mut band: Option<usize> = None;
    for y in 0..height {
        let mut addr = addr1;
        if mode & 1 == 0 {
            let bit = 14 + usize::from((mode >> 6) & 1);
            addr = (addr & !(1 << bit)) | ((y1 & 1) << bit);
        }
        if mode & 2 == 0 {
            addr = (addr & !0x8000) | ((y1 & 2) << 14);
        }
        let changed = if compare {
            line_changed(vga, shadow, y, addr, bwidth)
        } else {
            vga.is_dirty(addr & VRAM_MASK, bwidth)
        };
        if full || changed || addr + bwidth > VRAM_SIZE {
            let row = &mut frame.pixels[y * disp_width..(y + 1) * disp_width];
            draw_line(vga, format, row, addr, width, &pal16, &pal256);
            band.get_or_insert(y);
        } else if let Some(b) = band.take() {
            rects.push(Rect::new(0, b as u32, disp_width as u32, (y - b) as u32));
        }
        if multi_run == 0 {
            let mask = usize::from((mode & 3) ^ 3);
            if y1 & mask == mask {
                addr1 += line_offset;
            }
            y1 += 1;
            multi_run = multi_scan;
        } else {
            multi_run -= 1;
        }
        if y == line_compare {
            addr1 = 0;
        }
    }
    if let Some(b) = band {
        rects.push(Rect::new(
            0,
            b as u32,
            disp_width as u32,
            (height - b) as u32,
        ));
    }
    if resized {
        Damage::Resized
    } else {
        Damage::Rects(rects)
    }
}

/// Whether the `bwidth` bytes line `y` shows differ from those it was
/// last drawn from (kept in `shadow`, `bwidth` bytes per line); updates
/// the shadow.
fn line_changed(vga: &Vga, shadow: &mut Vec<u8>, y: usize, addr: usize, bwidth: usize) -> bool {
    let start = addr & VRAM_MASK;
    let Some(now) = vga.vram.get(start..start + bwidth) else {
        return true;
    };
    let at = y * bwidth;
    if shadow.len() < at + bwidth {
        shadow.resize(at + bwidth, 0);
        shadow[at..at + bwidth].copy_from_slice(now);
        return true;
    }
    let old = &mut shadow[at..at + bwidth];
    if old == now {
        false
    } else {
        old.copy_from_slice(now);
        true
    }
}

fn draw_line(
    vga: &Vga,
    format: LineFormat,
    out: &mut [u32],
    addr: usize,
    width: usize,
    pal16: &[u32; 16],
    pal256: &[u32],
) {
    let dword = |a: usize| {
        u32::from_le_bytes([
            vram(vga, a),
            vram(vga, a + 1),
            vram(vga, a + 2),
            vram(vga, a + 3),
        ])
    };
    let plane_enable = super::plane_mask(vga.attr[ATTR_PLANE_ENABLE] & 0x0f);
    let mut put = |i: usize, c: u32| {
        if let Some(p) = out.get_mut(i) {
            *p = c;
        }
    };
    match format {
        LineFormat::Planar(doubled) => {
            for g in 0..width / 8 {
                let data = dword(addr + 4 * g) & plane_enable;
                for k in 0..8 {
                    let bit = 7 - k;
                    let v = (0..4).fold(0usize, |v, p| {
                        v | (((data >> (8 * p + bit)) & 1) as usize) << p
                    });
                    if doubled {
                        put(16 * g + 2 * k, pal16[v]);
                        put(16 * g + 2 * k + 1, pal16[v]);
                    } else {
                        put(8 * g + k, pal16[v]);
                    }
                }
            }
        }
        LineFormat::Cga(doubled) => {
            for g in 0..width / 8 {
                let data = dword(addr + 4 * g) & plane_enable;
                let plane = |p: u32| (data >> (8 * p)) as u8;
                // Pixels 0-3 from planes 0 and 2, 4-7 from planes 1 and 3,
                // two bits each, most significant first.
                for half in 0..2u32 {
                    let lo = plane(half);
                    let hi = plane(half + 2);
                    for k in 0..4 {
                        let s = 6 - 2 * k;
                        let v = usize::from((lo >> s) & 3) | usize::from((hi >> s) & 3) << 2;
                        let x = 4 * half as usize + k;
                        if doubled {
                            put(16 * g + 2 * x, pal16[v]);
                            put(16 * g + 2 * x + 1, pal16[v]);
                        } else {
                            put(8 * g + x, pal16[v]);
                        }
                    }
                }
            }
        }
        LineFormat::Indexed8Doubled => {
            for g in 0..width / 8 {
                for k in 0..4 {
                    let c = pal256[usize::from(vram(vga, addr + 4 * g + k))];
                    put(8 * g + 2 * k, c);
                    put(8 * g + 2 * k + 1, c);
                }
            }
        }
        LineFormat::Indexed8 => {
            for x in 0..width / 8 * 8 {
                put(x, pal256[usize::from(vram(vga, addr + x))]);
            }
        }
        LineFormat::Rgb15 | LineFormat::Rgb16 => {
            for x in 0..width {
                let v = u16::from_le_bytes([vram(vga, addr + 2 * x), vram(vga, addr + 2 * x + 1)]);
                let c = if format == LineFormat::Rgb15 {
                    rgb(
                        (v >> 7) as u8 & 0xf8,
                        (v >> 2) as u8 & 0xf8,
                        (v << 3) as u8 & 0xf8,
                    )
                } else {
                    rgb(
                        (v >> 8) as u8 & 0xf8,
                        (v >> 3) as u8 & 0xfc,
                        (v << 3) as u8 & 0xf8,
                    )
                };
                put(x, c);
            }
        }
        LineFormat::Rgb24 => {
            for x in 0..width {
                let a = addr + 3 * x;
                put(x, rgb(vram(vga, a + 2), vram(vga, a + 1), vram(vga, a)));
            }
        }
        LineFormat::Rgb32 => {
            let base = addr & VRAM_MASK;
            if let Some(src) = vga.vram.get(base..base + 4 * width) {
                for (p, s) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *p = rgb(s[2], s[1], s[0]);
                }
            } else {
                for x in 0..width {
                    let a = addr + 4 * x;
                    put(x, rgb(vram(vga, a + 2), vram(vga, a + 1), vram(vga, a)));
                }
            }
        }
    }
}
