//! Register layout of the standard VGA as QEMU and Bochs define it: the
//! IBM VGA register set (IBM "VGA XGA Technical Reference Manual", chapter
//! "Video Graphics Array": sequencer, CRT controller, graphics controller,
//! attribute controller, DAC), the Bochs VBE "DISPI" extension (Bochs
//! `vbe.h`, ports 0x1CE/0x1CF) and the PCI function 1234:1111 (QEMU
//! `docs/specs/standard-vga.rst`).

/// PCI identity: vendor 1234h, device 1111h, class 0300h (VGA compatible
/// display controller), with QEMU's subsystem 1AF4:1100.
pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x1111;
pub const CLASS_VGA: u32 = 0x03_00_00;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
pub const SUBSYSTEM_ID: u16 = 0x1100;
pub const REVISION: u8 = 2;

/// BAR 0: the video memory as a prefetchable linear framebuffer.
pub const BAR_LFB: usize = 0;
pub const VRAM_SIZE: usize = 16 << 20;
/// Prefetchable memory BAR type bits (bit 3).
pub const BAR_PREFETCHABLE: u32 = 0x8;

/// Legacy I/O ports decoded by the adapter.
pub const PORTS_BASE: u64 = 0x3b0;
pub const PORTS_LEN: u64 = 0x30;
/// The legacy memory window (A0000h-BFFFFh).
pub const WINDOW_BASE: u64 = 0xa0000;
pub const WINDOW_LEN: u64 = 0x20000;

// Ports. The CRTC and input status #1 appear at 3Bxh or 3Dxh depending on
// misc output bit 0 (I/O address select).
pub const PORT_CRTC_INDEX_MONO: u64 = 0x3b4;
pub const PORT_CRTC_DATA_MONO: u64 = 0x3b5;
pub const PORT_STATUS1_MONO: u64 = 0x3ba;
pub const PORT_ATTR_INDEX: u64 = 0x3c0;
pub const PORT_ATTR_DATA_READ: u64 = 0x3c1;
/// Misc output write / input status #0 read.
pub const PORT_MISC_WRITE: u64 = 0x3c2;
pub const PORT_SEQ_INDEX: u64 = 0x3c4;
pub const PORT_SEQ_DATA: u64 = 0x3c5;
pub const PORT_DAC_MASK: u64 = 0x3c6;
/// DAC read index (write) / DAC state (read).
pub const PORT_DAC_READ_INDEX: u64 = 0x3c7;
pub const PORT_DAC_WRITE_INDEX: u64 = 0x3c8;
pub const PORT_DAC_DATA: u64 = 0x3c9;
pub const PORT_FEATURE_READ: u64 = 0x3ca;
pub const PORT_MISC_READ: u64 = 0x3cc;
pub const PORT_GFX_INDEX: u64 = 0x3ce;
pub const PORT_GFX_DATA: u64 = 0x3cf;
pub const PORT_CRTC_INDEX_COLOR: u64 = 0x3d4;
pub const PORT_CRTC_DATA_COLOR: u64 = 0x3d5;
/// Input status #1 read / feature control write (colour addressing).
pub const PORT_STATUS1_COLOR: u64 = 0x3da;

/// Misc output: bit 0 selects the 3Dxh (colour) CRTC ports.
pub const MISC_COLOR: u8 = 0x01;
/// Input status #1: display disabled (bit 0) and vertical retrace (bit 3).
pub const STATUS1_DISPLAY_DISABLED: u8 = 0x01;
pub const STATUS1_VRETRACE: u8 = 0x08;

// Sequencer registers.
pub const SEQ_CLOCKING_MODE: usize = 0x01;
pub const SEQ_MAP_MASK: usize = 0x02;
pub const SEQ_CHARACTER_MAP: usize = 0x03;
pub const SEQ_MEMORY_MODE: usize = 0x04;
pub const SEQ_COUNT: usize = 8;
/// Bits that exist in each sequencer register (others read as zero).
pub const SEQ_MASK: [u8; SEQ_COUNT] = [0x03, 0x3d, 0x0f, 0x3f, 0x0e, 0x00, 0x00, 0xff];
/// Clocking mode: 8-dot characters (bit 0), dot clock / 2 (bit 3).
pub const CLOCKING_8DOT: u8 = 0x01;
pub const CLOCKING_HALF_DOT: u8 = 0x08;
/// Memory mode: chain 4 (bit 3).
pub const MEMORY_CHAIN4: u8 = 0x08;

// Graphics controller registers.
pub const GFX_SET_RESET: usize = 0x00;
pub const GFX_ENABLE_SET_RESET: usize = 0x01;
pub const GFX_COLOR_COMPARE: usize = 0x02;
pub const GFX_DATA_ROTATE: usize = 0x03;
pub const GFX_READ_MAP: usize = 0x04;
pub const GFX_MODE: usize = 0x05;
pub const GFX_MISC: usize = 0x06;
pub const GFX_COLOR_DONT_CARE: usize = 0x07;
pub const GFX_BIT_MASK: usize = 0x08;
pub const GFX_COUNT: usize = 16;
pub const GFX_MASK: [u8; GFX_COUNT] = [
    0x0f, 0x0f, 0x0f, 0x1f, 0x03, 0x7b, 0x0f, 0x0f, 0xff, 0, 0, 0, 0, 0, 0, 0,
];
/// Mode: write mode (bits 0-1), read mode (bit 3), odd/even (bit 4),
/// shift register mode (bits 5-6: 0 planar, 1 CGA, 2+ 256 colours).
pub const MODE_READ_COMPARE: u8 = 0x08;
pub const MODE_ODD_EVEN: u8 = 0x10;
/// Misc: graphics mode (bit 0), memory map select (bits 2-3).
pub const MISC_GRAPHICS: u8 = 0x01;

// CRT controller registers.
pub const CRTC_H_DISPLAY_END: usize = 0x01;
pub const CRTC_V_TOTAL: usize = 0x06;
pub const CRTC_OVERFLOW: usize = 0x07;
pub const CRTC_MAX_SCAN: usize = 0x09;
pub const CRTC_CURSOR_START: usize = 0x0a;
pub const CRTC_CURSOR_END: usize = 0x0b;
pub const CRTC_START_HI: usize = 0x0c;
pub const CRTC_START_LO: usize = 0x0d;
pub const CRTC_CURSOR_HI: usize = 0x0e;
pub const CRTC_CURSOR_LO: usize = 0x0f;
pub const CRTC_V_SYNC_END: usize = 0x11;
pub const CRTC_V_DISPLAY_END: usize = 0x12;
pub const CRTC_OFFSET: usize = 0x13;
pub const CRTC_MODE: usize = 0x17;
pub const CRTC_LINE_COMPARE: usize = 0x18;
pub const CRTC_COUNT: usize = 256;
/// Vertical sync end bit 7 write-protects CRTC 0-7 (except overflow bit 4).
pub const V_SYNC_END_PROTECT: u8 = 0x80;
/// Cursor start bit 5: cursor off.
pub const CURSOR_DISABLE: u8 = 0x20;

// Attribute controller registers.
pub const ATTR_PALETTE_COUNT: usize = 16;
pub const ATTR_MODE: usize = 0x10;
pub const ATTR_OVERSCAN: usize = 0x11;
pub const ATTR_PLANE_ENABLE: usize = 0x12;
pub const ATTR_PEL_PANNING: usize = 0x13;
pub const ATTR_COLOR_SELECT: usize = 0x14;
pub const ATTR_COUNT: usize = 0x15;
/// Index bit 5: palette address source; when clear the screen is blank.
pub const ATTR_INDEX_PAS: u8 = 0x20;
/// Mode control: line graphics enable (bit 2), blink (bit 3), palette bits
/// 5-4 select (bit 7).
pub const ATTR_MODE_LINE_GRAPHICS: u8 = 0x04;
pub const ATTR_MODE_P54: u8 = 0x80;

// Bochs VBE DISPI interface.
pub const PORT_DISPI_INDEX: u64 = 0x1ce;
pub const PORT_DISPI_DATA: u64 = 0x1cf;
pub const DISPI_INDEX_ID: usize = 0;
pub const DISPI_INDEX_XRES: usize = 1;
pub const DISPI_INDEX_YRES: usize = 2;
pub const DISPI_INDEX_BPP: usize = 3;
pub const DISPI_INDEX_ENABLE: usize = 4;
pub const DISPI_INDEX_BANK: usize = 5;
pub const DISPI_INDEX_VIRT_WIDTH: usize = 6;
pub const DISPI_INDEX_VIRT_HEIGHT: usize = 7;
pub const DISPI_INDEX_X_OFFSET: usize = 8;
pub const DISPI_INDEX_Y_OFFSET: usize = 9;
pub const DISPI_INDEX_VIDEO_MEMORY_64K: usize = 10;
pub const DISPI_COUNT: usize = 11;
pub const DISPI_ID0: u16 = 0xb0c0;
pub const DISPI_ID5: u16 = 0xb0c5;
pub const DISPI_MAX_XRES: u16 = 16000;
pub const DISPI_MAX_YRES: u16 = 12000;
pub const DISPI_MAX_BPP: u16 = 32;
pub const DISPI_ENABLED: u16 = 0x01;
pub const DISPI_GETCAPS: u16 = 0x02;
pub const DISPI_8BIT_DAC: u16 = 0x20;
pub const DISPI_LFB_ENABLED: u16 = 0x40;
pub const DISPI_NOCLEARMEM: u16 = 0x80;
