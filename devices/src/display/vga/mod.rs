//! The standard VGA (PCI 1234:1111, QEMU's `-vga std`): the IBM VGA
//! register set and its memory window at A0000h with four planes, the
//! Bochs VBE DISPI extension with a linear framebuffer, and a renderer
//! ([`VgaScreen`]) that turns what the guest programmed into a [`Frame`].
//!
//! Video memory is kept as QEMU keeps it, so both show the same picture
//! for the same guest: byte `4 * a + p` is byte `a` of plane `p`. Planar
//! accesses (and the latches) take the four bytes of dword `a` at once;
//! chain-4 maps a window address straight onto video memory; odd/even
//! sends even addresses to plane 0 (or 2) and odd ones to plane 1 (or 3).
//!
//! [`Frame`]: super::Frame

pub mod pci;
pub mod render;
pub mod vga_spec;

#[cfg(test)]
mod tests;

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::MmapRegion;

use vga_spec::*;

pub use pci::{LfbListener, VgaLegacyWindow, VgaPci, VgaPorts};
pub use render::VgaScreen;

/// Bytes of video memory a dirty bit covers.
pub const DIRTY_PAGE: usize = 4096;

/// Expands a 4-bit plane mask into a byte mask per plane (plane p = byte p).
fn plane_mask(m: u8) -> u32 {
    (0..4).fold(0, |acc, p| {
        if m & (1 << p) != 0 {
            acc | 0xff << (8 * p)
        } else {
            acc
        }
    })
}

/// Video memory: an anonymous host mapping, so the machine can also hand
/// it to KVM as the guest memory behind the linear framebuffer BAR.
pub struct Vram {
    region: MmapRegion<()>,
}

impl Vram {
    fn new() -> Result<Self, VgaError> {
        let region = MmapRegion::new(VRAM_SIZE).map_err(|e| VgaError::Vram(e.to_string()))?;
        Ok(Self { region })
    }

    /// The host address and length of video memory, for a KVM slot.
    pub fn host_range(&self) -> (u64, usize) {
        (self.region.as_ptr() as u64, self.region.size())
    }
}

impl Deref for Vram {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the region is VRAM_SIZE bytes, mapped for as long as
        // `self` lives. The guest may write it concurrently through a KVM
        // memory slot (the linear framebuffer); a byte read while the guest
        // writes it is either value, which at worst shows a picture one
        // refresh old, as a real adapter's scan-out would.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr(), self.region.size()) }
    }
}

impl DerefMut for Vram {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` keeps other users of this
        // adapter out (the guest's concurrent KVM writes are to guest
        // memory, which the device accepts may change under it).
        unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr(), self.region.size()) }
    }
}

/// Where the memory window shows video memory byte for byte, so the
/// guest can reach it as plain memory: chain-4 with every plane enabled
/// in the map mask (mode 13h and the VBE banked modes), as QEMU maps its
/// "vga.chain4" alias. `base` is the guest address, `vram_offset` the
/// first video memory byte shown there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAlias {
    pub base: u64,
    pub len: usize,
    pub vram_offset: usize,
}

/// Told where the window should map video memory directly (or that it
/// should not), whenever that changes; returns whether it mapped it, so
/// that the guest's accesses there no longer reach the device.
pub type WindowListener = Arc<dyn Fn(Option<WindowAlias>) -> bool + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum VgaError {
    #[error("cannot map 16 MiB of video memory: {0}")]
    Vram(String),
}

/// The adapter's state: registers and video memory.
pub struct Vga {
    pub(crate) vram: Vram,
    /// The guest reaches video memory directly (the framebuffer BAR is a
    /// KVM memory slot), so writes there do not pass through the device
    /// and the renderer must look for changes itself.
    pub(crate) lfb_mapped: bool,
    /// Maps the window straight onto video memory in chain-4 modes.
    window_listener: Option<WindowListener>,
    /// The alias last asked of the listener, and whether it is mapped.
    window_alias: Option<WindowAlias>,
    pub(crate) window_mapped: bool,
    pub(crate) misc: u8,
    seq_index: u8,
    pub(crate) seq: [u8; SEQ_COUNT],
    gfx_index: u8,
    pub(crate) gfx: [u8; GFX_COUNT],
    crtc_index: u8,
    pub(crate) crtc: [u8; CRTC_COUNT],
    pub(crate) attr_index: u8,
    pub(crate) attr: [u8; ATTR_COUNT],
    attr_flip_flop: bool,
    feature: u8,
    status1: u8,
    dac_mask: u8,
    dac_state: u8,
    dac_read_index: u8,
    dac_write_index: u8,
    dac_sub_index: usize,
    dac_cache: [u8; 3],
    /// 256 DAC entries of R, G, B (6 bits each; 8 with DISPI's 8-bit DAC).
    pub(crate) palette: [u8; 768],
    latch: u32,
    dispi_index: u16,
    pub(crate) dispi: [u16; DISPI_COUNT],
    /// Where the banked window (memory map 1) starts in video memory.
    bank_offset: usize,
    /// Bytes per line and first byte shown in a DISPI mode.
    pub(crate) dispi_line_offset: usize,
    pub(crate) dispi_start: usize,
    /// One bit per [`DIRTY_PAGE`] of video memory written since the
    /// renderer last looked.
    dirty: Vec<u64>,
    /// Plane 2 (the font) was written since the renderer last looked.
    pub(crate) font_written: bool,
}

impl Vga {
    pub fn new() -> Result<Self, VgaError> {
        let pages = VRAM_SIZE / DIRTY_PAGE;
        let mut dispi = [0u16; DISPI_COUNT];
        dispi[DISPI_INDEX_ID] = DISPI_ID5;
        dispi[DISPI_INDEX_VIDEO_MEMORY_64K] = (VRAM_SIZE >> 16) as u16;
        Ok(Self {
            vram: Vram::new()?,
            lfb_mapped: false,
            window_listener: None,
            window_alias: None,
            window_mapped: false,
            misc: 0,
            seq_index: 0,
            seq: [0; SEQ_COUNT],
            gfx_index: 0,
            gfx: [0; GFX_COUNT],
            crtc_index: 0,
            crtc: [0; CRTC_COUNT],
            attr_index: 0,
            attr: [0; ATTR_COUNT],
            attr_flip_flop: false,
            feature: 0,
            status1: 0,
            dac_mask: 0xff,
            dac_state: 0,
            dac_read_index: 0,
            dac_write_index: 0,
            dac_sub_index: 0,
            dac_cache: [0; 3],
            palette: [0; 768],
            latch: 0,
            dispi_index: 0,
            dispi,
            bank_offset: 0,
            dispi_line_offset: 0,
            dispi_start: 0,
            dirty: vec![0; pages.div_ceil(64)],
            font_written: false,
        })
    }

    /// A shared adapter, as the buses and the renderer hold it.
    pub fn shared() -> Result<Arc<Mutex<Vga>>, VgaError> {
        Ok(Arc::new(Mutex::new(Vga::new()?)))
    }

    /// The host memory behind the linear framebuffer.
    pub fn vram_host_range(&self) -> (u64, usize) {
        self.vram.host_range()
    }

    /// Says whether the guest writes video memory directly (a KVM slot
    /// behind BAR 0) rather than through the device.
    pub fn set_lfb_mapped(&mut self, mapped: bool) {
        self.lfb_mapped = mapped;
    }

    /// Sets who maps the window onto video memory (see [`WindowAlias`]).
    pub fn set_window_listener(&mut self, listener: WindowListener) {
        self.window_listener = Some(listener);
        self.sync_window_alias();
    }

    /// The alias the registers call for now: chain-4, all four planes
    /// writable, and the memory map select's range of the window.
    pub fn wanted_window_alias(&self) -> Option<WindowAlias> {
        if self.seq[SEQ_MEMORY_MODE] & MEMORY_CHAIN4 == 0 || self.seq[SEQ_MAP_MASK] & 0x0f != 0x0f {
            return None;
        }
        let (base, len, vram_offset) = match (self.gfx[GFX_MISC] >> 2) & 3 {
            0 => (WINDOW_BASE, 0x20000, 0),
            1 => (WINDOW_BASE, 0x10000, self.bank_offset),
            2 => (WINDOW_BASE + 0x10000, 0x8000, 0),
            _ => (WINDOW_BASE + 0x18000, 0x8000, 0),
        };
        (vram_offset + len <= self.vram.len()).then_some(WindowAlias {
            base,
            len,
            vram_offset,
        })
    }

    /// After a register write: asks the listener to map or unmap the
    /// window when the alias the registers call for changed. Whatever the
    /// guest wrote through an alias being removed is marked dirty, since
    /// those writes never passed through the device.
    pub fn sync_window_alias(&mut self) {
        let Some(listener) = self.window_listener.clone() else {
            return;
        };
        let want = self.wanted_window_alias();
        if want == self.window_alias {
            return;
        }
        if let (Some(old), true) = (self.window_alias, self.window_mapped) {
            for a in (old.vram_offset..old.vram_offset + old.len).step_by(DIRTY_PAGE) {
                self.mark_dirty(a);
            }
        }
        self.window_alias = want;
        self.window_mapped = listener(want) && want.is_some();
    }

    fn mark_dirty(&mut self, offset: usize) {
        let page = offset / DIRTY_PAGE;
        if let Some(w) = self.dirty.get_mut(page / 64) {
            *w |= 1 << (page % 64);
        }
    }

    /// Whether any byte of `[start, start + len)` was written since the
    /// last [`Vga::clear_dirty`].
    pub(crate) fn is_dirty(&self, start: usize, len: usize) -> bool {
        if len == 0 {
            return false;
        }
        let first = start / DIRTY_PAGE;
        let last = (start + len - 1) / DIRTY_PAGE;
        (first..=last).any(|p| {
            self.dirty
                .get(p / 64)
                .is_some_and(|w| w & (1 << (p % 64)) != 0)
        })
    }

    pub(crate) fn clear_dirty(&mut self) {
        self.dirty.fill(0);
        self.font_written = false;
    }

    pub(crate) fn dispi_enabled(&self) -> bool {
        self.dispi[DISPI_INDEX_ENABLE] & DISPI_ENABLED != 0
    }

    // ---- I/O ports ----

    /// Whether `port` is decoded with the current misc output I/O address
    /// select (3Bxh ports in colour mode and 3Dxh in mono are not).
    fn port_decoded(&self, port: u64) -> bool {
        if self.misc & MISC_COLOR != 0 {
            !(0x3b0..=0x3bf).contains(&port)
        } else {
            !(0x3d0..=0x3df).contains(&port)
        }
    }

    /// A byte read from a VGA port (3B0h-3DFh).
    pub fn port_read(&mut self, port: u64) -> u8 {
        if !self.port_decoded(port) {
            return 0xff;
        }
        match port {
            PORT_ATTR_INDEX => {
                if self.attr_flip_flop {
                    0
                } else {
                    self.attr_index
                }
            }
            PORT_ATTR_DATA_READ => {
                let i = usize::from(self.attr_index & 0x1f);
                self.attr.get(i).copied().unwrap_or(0)
            }
            // Input status #0: no switch sense, no interrupt pending.
            PORT_MISC_WRITE => 0,
            PORT_SEQ_INDEX => self.seq_index,
            PORT_SEQ_DATA => self.seq[usize::from(self.seq_index) % SEQ_COUNT],
            PORT_DAC_MASK => self.dac_mask,
            PORT_DAC_READ_INDEX => self.dac_state,
            PORT_DAC_WRITE_INDEX => self.dac_write_index,
            PORT_DAC_DATA => {
                let v = self.palette[usize::from(self.dac_read_index) * 3 + self.dac_sub_index];
                self.dac_sub_index += 1;
                if self.dac_sub_index == 3 {
                    self.dac_sub_index = 0;
                    self.dac_read_index = self.dac_read_index.wrapping_add(1);
                }
                v
            }
            PORT_FEATURE_READ => self.feature,
            PORT_MISC_READ => self.misc,
            PORT_GFX_INDEX => self.gfx_index,
            PORT_GFX_DATA => self.gfx[usize::from(self.gfx_index) % GFX_COUNT],
            PORT_CRTC_INDEX_MONO | PORT_CRTC_INDEX_COLOR => self.crtc_index,
            PORT_CRTC_DATA_MONO | PORT_CRTC_DATA_COLOR => self.crtc[usize::from(self.crtc_index)],
            PORT_STATUS1_MONO | PORT_STATUS1_COLOR => {
                // Retrace and display-disabled toggle on every read, so a
                // guest polling for either edge always sees one.
                self.status1 ^= STATUS1_VRETRACE | STATUS1_DISPLAY_DISABLED;
                self.attr_flip_flop = false;
                self.status1
            }
            _ => 0,
        }
    }

    /// A byte written to a VGA port (3B0h-3DFh).
    pub fn port_write(&mut self, port: u64, v: u8) {
        if !self.port_decoded(port) {
            return;
        }
        match port {
            PORT_ATTR_INDEX => {
                if !self.attr_flip_flop {
                    self.attr_index = v & 0x3f;
                } else {
                    let i = usize::from(self.attr_index & 0x1f);
                    let stored = match i {
                        0..ATTR_PALETTE_COUNT => Some(v & 0x3f),
                        ATTR_MODE => Some(v & !0x10),
                        ATTR_OVERSCAN => Some(v),
                        ATTR_PLANE_ENABLE => Some(v & 0x3f),
                        ATTR_PEL_PANNING | ATTR_COLOR_SELECT => Some(v & 0x0f),
                        _ => None,
                    };
                    if let (Some(s), Some(r)) = (stored, self.attr.get_mut(i)) {
                        *r = s;
                    }
                }
                self.attr_flip_flop = !self.attr_flip_flop;
            }
            PORT_MISC_WRITE => self.misc = v & !0x10,
            PORT_SEQ_INDEX => self.seq_index = v & 7,
            PORT_SEQ_DATA => {
                let i = usize::from(self.seq_index) % SEQ_COUNT;
                self.seq[i] = v & SEQ_MASK[i];
            }
            PORT_DAC_MASK => self.dac_mask = v,
            PORT_DAC_READ_INDEX => {
                self.dac_read_index = v;
                self.dac_sub_index = 0;
                self.dac_state = 3;
            }
            PORT_DAC_WRITE_INDEX => {
                self.dac_write_index = v;
                self.dac_sub_index = 0;
                self.dac_state = 0;
            }
            PORT_DAC_DATA => {
                self.dac_cache[self.dac_sub_index] = v;
                self.dac_sub_index += 1;
                if self.dac_sub_index == 3 {
                    let at = usize::from(self.dac_write_index) * 3;
                    self.palette[at..at + 3].copy_from_slice(&self.dac_cache);
                    self.dac_sub_index = 0;
                    self.dac_write_index = self.dac_write_index.wrapping_add(1);
                }
            }
            PORT_GFX_INDEX => self.gfx_index = v & 0x0f,
            PORT_GFX_DATA => {
                let i = usize::from(self.gfx_index) % GFX_COUNT;
                self.gfx[i] = v & GFX_MASK[i];
            }
            PORT_CRTC_INDEX_MONO | PORT_CRTC_INDEX_COLOR => self.crtc_index = v,
            PORT_CRTC_DATA_MONO | PORT_CRTC_DATA_COLOR => {
                let i = usize::from(self.crtc_index);
                if self.crtc[CRTC_V_SYNC_END] & V_SYNC_END_PROTECT != 0 && i <= CRTC_OVERFLOW {
                    if i == CRTC_OVERFLOW {
                        self.crtc[i] = (self.crtc[i] & !0x10) | (v & 0x10);
                    }
                    return;
                }
                self.crtc[i] = v;
            }
            PORT_STATUS1_MONO | PORT_STATUS1_COLOR => self.feature = v & 0x10,
            _ => {}
        }
    }

    // ---- the memory window ----

    /// Maps a window offset (0-1FFFFh from A0000h) to a video memory
    /// address as the graphics controller's memory map select decodes it.
    fn window_address(&self, offset: u64) -> Option<usize> {
        let offset = (offset & 0x1ffff) as usize;
        match (self.gfx[GFX_MISC] >> 2) & 3 {
            0 => Some(offset),
            1 => (offset < 0x10000).then_some(offset + self.bank_offset),
            2 => offset.checked_sub(0x10000).filter(|a| *a < 0x8000),
            _ => offset.checked_sub(0x18000).filter(|a| *a < 0x8000),
        }
    }

    /// A byte read at window offset `offset`.
    pub fn window_read(&mut self, offset: u64) -> u8 {
        let Some(addr) = self.window_address(offset) else {
            return 0xff;
        };
        if self.seq[SEQ_MEMORY_MODE] & MEMORY_CHAIN4 != 0 {
            return self.vram.get(addr).copied().unwrap_or(0xff);
        }
        if self.gfx[GFX_MODE] & MODE_ODD_EVEN != 0 {
            let plane = (self.gfx[GFX_READ_MAP] & 2) as usize | (addr & 1);
            let a = ((addr & !1) << 1) | plane;
            return self.vram.get(a).copied().unwrap_or(0xff);
        }
        let Some(bytes) = self.vram.get(addr * 4..addr * 4 + 4) else {
            return 0xff;
        };
        self.latch = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if self.gfx[GFX_MODE] & MODE_READ_COMPARE == 0 {
            let plane = u32::from(self.gfx[GFX_READ_MAP] & 3);
            (self.latch >> (8 * plane)) as u8
        } else {
            // Read mode 1: a bit is set where every plane the colour
            // don't-care selects matches the colour compare.
            let differ = (self.latch ^ plane_mask(self.gfx[GFX_COLOR_COMPARE]))
                & plane_mask(self.gfx[GFX_COLOR_DONT_CARE]);
            let any = differ | differ >> 16;
            let any = any | any >> 8;
            !(any as u8)
        }
    }

    /// A byte written at window offset `offset`.
    pub fn window_write(&mut self, offset: u64, v: u8) {
        let Some(addr) = self.window_address(offset) else {
            return;
        };
        let map_mask = self.seq[SEQ_MAP_MASK];
        // Chain-4 and odd/even: one byte of one plane, if the map mask
        // lets that plane be written.
        let single = if self.seq[SEQ_MEMORY_MODE] & MEMORY_CHAIN4 != 0 {
            Some((addr, addr & 3))
        } else if self.gfx[GFX_MODE] & MODE_ODD_EVEN != 0 {
            let plane = (self.gfx[GFX_READ_MAP] & 2) as usize | (addr & 1);
            Some((((addr & !1) << 1) | plane, plane))
        } else {
            None
        };
        if let Some((at, plane)) = single {
            if map_mask & (1 << plane) != 0 && at < self.vram.len() {
                self.vram[at] = v;
                self.mark_dirty(at);
                self.font_written |= plane == 2;
            }
            return;
        }
        if addr * 4 + 4 > self.vram.len() {
            return;
        }
        let rotate = u32::from(self.gfx[GFX_DATA_ROTATE] & 7);
        let value = match self.gfx[GFX_MODE] & 3 {
            0 => {
                let b = u32::from(v.rotate_right(rotate)) * 0x0101_0101;
                let sr_enable = plane_mask(self.gfx[GFX_ENABLE_SET_RESET]);
                let b = (b & !sr_enable) | (plane_mask(self.gfx[GFX_SET_RESET]) & sr_enable);
                Some((b, self.gfx[GFX_BIT_MASK]))
            }
            // Write mode 1: the latches as they are.
            1 => None,
            2 => Some((plane_mask(v & 0x0f), self.gfx[GFX_BIT_MASK])),
            _ => {
                let r = v.rotate_right(rotate);
                Some((
                    plane_mask(self.gfx[GFX_SET_RESET]),
                    self.gfx[GFX_BIT_MASK] & r,
                ))
            }
        };
        let value = match value {
            None => self.latch,
            Some((b, bit_mask)) => {
                let b = match self.gfx[GFX_DATA_ROTATE] >> 3 {
                    1 => b & self.latch,
                    2 => b | self.latch,
                    3 => b ^ self.latch,
                    _ => b,
                };
                let m = u32::from(bit_mask) * 0x0101_0101;
                (b & m) | (self.latch & !m)
            }
        };
        let write_mask = plane_mask(map_mask);
        let at = addr * 4;
        let old = u32::from_le_bytes([
            self.vram[at],
            self.vram[at + 1],
            self.vram[at + 2],
            self.vram[at + 3],
        ]);
        let new = (old & !write_mask) | (value & write_mask);
        self.vram[at..at + 4].copy_from_slice(&new.to_le_bytes());
        self.mark_dirty(at);
        if map_mask & 4 != 0 {
            self.font_written = true;
        }
    }

    // ---- the linear framebuffer ----

    pub fn lfb_read(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = usize::try_from(offset)
                .ok()
                .and_then(|o| self.vram.get(o + i))
                .copied()
                .unwrap_or(0xff);
        }
    }

    pub fn lfb_write(&mut self, offset: u64, data: &[u8]) {
        let Ok(o) = usize::try_from(offset) else {
            return;
        };
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = self.vram.get_mut(o + i) {
                *slot = b;
                self.mark_dirty(o + i);
            }
        }
    }

    // ---- Bochs VBE DISPI ----

    pub fn dispi_read_index(&self) -> u16 {
        self.dispi_index
    }

    pub fn dispi_write_index(&mut self, v: u16) {
        self.dispi_index = v;
    }

    /// A read of the DISPI data port. With GETCAPS set in ENABLE the
    /// resolution and depth registers read as the limits.
    pub fn dispi_read(&self) -> u16 {
        let i = usize::from(self.dispi_index);
        let caps = self.dispi[DISPI_INDEX_ENABLE] & DISPI_GETCAPS != 0;
        match i {
            DISPI_INDEX_XRES if caps => DISPI_MAX_XRES,
            DISPI_INDEX_YRES if caps => DISPI_MAX_YRES,
            DISPI_INDEX_BPP if caps => DISPI_MAX_BPP,
            _ => self.dispi.get(i).copied().unwrap_or(0),
        }
    }

    /// A write of the DISPI data port.
    pub fn dispi_write(&mut self, v: u16) {
        let i = usize::from(self.dispi_index);
        tracing::trace!(index = i, value = v, "VBE DISPI write");
        match i {
            DISPI_INDEX_ID if (DISPI_ID0..=DISPI_ID5).contains(&v) => self.dispi[i] = v,
            DISPI_INDEX_XRES
            | DISPI_INDEX_YRES
            | DISPI_INDEX_BPP
            | DISPI_INDEX_VIRT_WIDTH
            | DISPI_INDEX_X_OFFSET
            | DISPI_INDEX_Y_OFFSET => {
                self.dispi[i] = v;
                self.dispi_fixup();
            }
            DISPI_INDEX_BANK => {
                let banks = (VRAM_SIZE >> 16) as u16 - 1;
                let v = if self.dispi[DISPI_INDEX_BPP] == 4 {
                    v & (banks >> 2)
                } else {
                    v & banks
                };
                self.dispi[i] = v;
                self.bank_offset = usize::from(v) << 16;
            }
            DISPI_INDEX_ENABLE => {
                if v & DISPI_ENABLED != 0 && !self.dispi_enabled() {
                    self.dispi[DISPI_INDEX_VIRT_WIDTH] = 0;
                    self.dispi[DISPI_INDEX_X_OFFSET] = 0;
                    self.dispi[DISPI_INDEX_Y_OFFSET] = 0;
                    self.dispi[DISPI_INDEX_ENABLE] |= DISPI_ENABLED;
                    self.dispi_fixup();
                    if v & DISPI_NOCLEARMEM == 0 {
                        let len =
                            usize::from(self.dispi[DISPI_INDEX_YRES]) * self.dispi_line_offset;
                        let len = len.min(self.vram.len());
                        self.vram[..len].fill(0);
                        for a in (0..len).step_by(DIRTY_PAGE) {
                            self.mark_dirty(a);
                        }
                    }
                    self.dispi_program_vga();
                } else if v & DISPI_ENABLED == 0 {
                    self.bank_offset = 0;
                }
                self.dispi[i] = v;
            }
            _ => {}
        }
    }

    /// Brings the DISPI registers to the nearest mode that fits in video
    /// memory (the interface has no way to report an error), as QEMU does.
    fn dispi_fixup(&mut self) {
        if !self.dispi_enabled() {
            return;
        }
        let r = &mut self.dispi;
        let bits: usize = match r[DISPI_INDEX_BPP] {
            4 | 8 | 16 | 24 | 32 => usize::from(r[DISPI_INDEX_BPP]),
            15 => 16,
            _ => {
                r[DISPI_INDEX_BPP] = 8;
                8
            }
        };
        r[DISPI_INDEX_XRES] = (r[DISPI_INDEX_XRES] & !7).clamp(8, DISPI_MAX_XRES);
        r[DISPI_INDEX_VIRT_WIDTH] = (r[DISPI_INDEX_VIRT_WIDTH] & !7)
            .min(DISPI_MAX_XRES)
            .max(r[DISPI_INDEX_XRES]);
        let line = usize::from(r[DISPI_INDEX_VIRT_WIDTH]) * bits / 8;
        let max_y = (VRAM_SIZE / line).min(usize::from(u16::MAX)) as u16;
        r[DISPI_INDEX_YRES] = r[DISPI_INDEX_YRES].clamp(1, DISPI_MAX_YRES).min(max_y);
        r[DISPI_INDEX_X_OFFSET] = r[DISPI_INDEX_X_OFFSET].min(DISPI_MAX_XRES);
        r[DISPI_INDEX_Y_OFFSET] = r[DISPI_INDEX_Y_OFFSET].min(DISPI_MAX_YRES);
        let shown = usize::from(r[DISPI_INDEX_YRES]) * line;
        let mut offset = usize::from(r[DISPI_INDEX_X_OFFSET]) * bits / 8
            + usize::from(r[DISPI_INDEX_Y_OFFSET]) * line;
        if offset + shown > VRAM_SIZE {
            r[DISPI_INDEX_Y_OFFSET] = 0;
            offset = usize::from(r[DISPI_INDEX_X_OFFSET]) * bits / 8;
            if offset + shown > VRAM_SIZE {
                r[DISPI_INDEX_X_OFFSET] = 0;
                offset = 0;
            }
        }
        r[DISPI_INDEX_VIRT_HEIGHT] = max_y;
        self.dispi_line_offset = line;
        // Kept in dwords, as the CRTC start address is.
        self.dispi_start = offset / 4;
    }

    /// Entering a DISPI mode programs the VGA registers for a linear
    /// graphics mode (memory map 1 for the banked window; chain-4 and
    /// 256-colour shifting for 8 bpp and above).
    fn dispi_program_vga(&mut self) {
        self.gfx[GFX_MISC] = (self.gfx[GFX_MISC] & !0x0c) | 0x04 | MISC_GRAPHICS;
        self.crtc[CRTC_MODE] |= 3;
        self.crtc[CRTC_OFFSET] = (self.dispi_line_offset >> 3) as u8;
        self.crtc[CRTC_H_DISPLAY_END] = ((self.dispi[DISPI_INDEX_XRES] >> 3).wrapping_sub(1)) as u8;
        let h = self.dispi[DISPI_INDEX_YRES].wrapping_sub(1);
        self.crtc[CRTC_V_DISPLAY_END] = h as u8;
        self.crtc[CRTC_OVERFLOW] =
            (self.crtc[CRTC_OVERFLOW] & !0x42) | ((h >> 7) & 0x02) as u8 | ((h >> 3) & 0x40) as u8;
        self.crtc[CRTC_LINE_COMPARE] = 0xff;
        self.crtc[CRTC_OVERFLOW] |= 0x10;
        self.crtc[CRTC_MAX_SCAN] |= 0x40;
        let shift = if self.dispi[DISPI_INDEX_BPP] == 4 {
            self.seq[SEQ_CLOCKING_MODE] &= !CLOCKING_HALF_DOT;
            0
        } else {
            self.seq[SEQ_MEMORY_MODE] |= MEMORY_CHAIN4;
            self.seq[SEQ_MAP_MASK] |= 0x0f;
            2
        };
        self.gfx[GFX_MODE] = (self.gfx[GFX_MODE] & !0x60) | (shift << 5);
        self.crtc[CRTC_MAX_SCAN] &= !0x9f;
    }

    pub(crate) fn dac_8bit(&self) -> bool {
        self.dispi[DISPI_INDEX_ENABLE] & DISPI_8BIT_DAC != 0
    }
}

/// Locks the adapter, carrying on after a panicked holder.
pub(crate) fn lock(vga: &Mutex<Vga>) -> MutexGuard<'_, Vga> {
    vga.lock().unwrap_or_else(|e| e.into_inner())
}
