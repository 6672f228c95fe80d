//! UHCI register and schedule layouts (Universal Host Controller Interface
//! Design Guide, revision 1.1, chapters 2 and 3) and the PIIX3 USB
//! function's PCI identity (82371SB datasheet, section 2.5).

/// PIIX3 USB host controller: 8086:7020, class 0C/03/00 (UHCI).
pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_PIIX3_UHCI: u16 = 0x7020;
pub const CLASS_UHCI: u32 = 0x0c_03_00;
pub const REVISION: u8 = 0x01;
/// The I/O BAR is BAR 4 ("USBBA", config 0x20), 32 bytes.
pub const BAR_IO: usize = 4;
pub const IO_LEN: u64 = 0x20;
/// PIIX3 USB raises INTD (interrupt pin 4).
pub const INTERRUPT_PIN: u8 = 4;
/// Serial Bus Release Number (2.1.1): USB 1.0 = 0x10.
pub const REG_SBRN: usize = 0x60;
pub const SBRN_USB10: u8 = 0x10;
/// Legacy support register (2.1.2), reset value 0x2000 (PIRQ enable).
pub const REG_LEGSUP: usize = 0xc0;
pub const LEGSUP_DEFAULT: u16 = 0x2000;

/// I/O registers (2.1, table 1).
pub const USBCMD: u64 = 0x00;
pub const USBSTS: u64 = 0x02;
pub const USBINTR: u64 = 0x04;
pub const FRNUM: u64 = 0x06;
pub const FLBASEADD: u64 = 0x08;
pub const SOFMOD: u64 = 0x0c;
pub const PORTSC1: u64 = 0x10;
pub const PORTS: usize = 2;

/// USBCMD bits (2.1.1).
pub const CMD_RS: u16 = 1 << 0;
pub const CMD_HCRESET: u16 = 1 << 1;
pub const CMD_GRESET: u16 = 1 << 2;
pub const CMD_EGSM: u16 = 1 << 3;
pub const CMD_FGR: u16 = 1 << 4;
pub const CMD_SWDBG: u16 = 1 << 5;
pub const CMD_CF: u16 = 1 << 6;
pub const CMD_MAXP: u16 = 1 << 7;
pub const CMD_WRITABLE: u16 = 0x00ff;

/// USBSTS bits (2.1.2); bits 0-4 are write-one-to-clear, HCHalted reads only.
pub const STS_USBINT: u16 = 1 << 0;
pub const STS_ERROR: u16 = 1 << 1;
pub const STS_RESUME: u16 = 1 << 2;
pub const STS_HSE: u16 = 1 << 3;
pub const STS_HCPE: u16 = 1 << 4;
pub const STS_HCH: u16 = 1 << 5;
pub const STS_W1C: u16 = 0x001f;

/// USBINTR bits (2.1.3).
pub const INTR_TIMEOUT_CRC: u16 = 1 << 0;
pub const INTR_RESUME: u16 = 1 << 1;
pub const INTR_IOC: u16 = 1 << 2;
pub const INTR_SHORT_PACKET: u16 = 1 << 3;
pub const INTR_MASK: u16 = 0x000f;

/// FRNUM holds 11 bits; the low 10 index the 1024-entry frame list (2.1.4).
pub const FRNUM_MASK: u16 = 0x07ff;
pub const FRAME_LIST_ENTRIES: u16 = 1024;
/// FLBASEADD is 4 KiB aligned (2.1.5).
pub const FLBASE_MASK: u32 = 0xffff_f000;
pub const SOFMOD_DEFAULT: u8 = 0x40;

/// PORTSC bits (2.1.7).
pub const PORT_CCS: u16 = 1 << 0;
pub const PORT_CSC: u16 = 1 << 1;
pub const PORT_PE: u16 = 1 << 2;
pub const PORT_PEC: u16 = 1 << 3;
/// Line status: bit 4 D+, bit 5 D-.
pub const PORT_LS_DPLUS: u16 = 1 << 4;
pub const PORT_LS_DMINUS: u16 = 1 << 5;
pub const PORT_RD: u16 = 1 << 6;
/// Reserved, reads as one.
pub const PORT_ALWAYS_ONE: u16 = 1 << 7;
pub const PORT_LSDA: u16 = 1 << 8;
pub const PORT_PR: u16 = 1 << 9;
pub const PORT_SUSP: u16 = 1 << 12;
pub const PORT_W1C: u16 = PORT_CSC | PORT_PEC;
pub const PORT_WRITABLE: u16 = PORT_PE | PORT_RD | PORT_PR | PORT_SUSP;

/// Link pointers of frame list entries, TDs and QHs (3.1, 3.2.1, 3.3.1):
/// bit 0 terminate, bit 1 QH (not TD), bit 2 depth-first (TDs only).
pub const LINK_TERMINATE: u32 = 1 << 0;
pub const LINK_QH: u32 = 1 << 1;
pub const LINK_DEPTH_FIRST: u32 = 1 << 2;
pub const LINK_ADDR_MASK: u32 = 0xffff_fff0;

/// Transfer descriptor (3.2): link, control/status, token, buffer.
pub const TD_LEN: u64 = 16;
pub const TD_LINK: u64 = 0;
pub const TD_CTRL: u64 = 4;
pub const TD_TOKEN: u64 = 8;
pub const TD_BUFFER: u64 = 12;

/// TD control and status (3.2.2).
pub const TD_ACTLEN_MASK: u32 = 0x7ff;
pub const TD_STATUS_BITSTUFF: u32 = 1 << 17;
pub const TD_STATUS_CRC_TIMEOUT: u32 = 1 << 18;
pub const TD_STATUS_NAK: u32 = 1 << 19;
pub const TD_STATUS_BABBLE: u32 = 1 << 20;
pub const TD_STATUS_DATABUF: u32 = 1 << 21;
pub const TD_STATUS_STALLED: u32 = 1 << 22;
pub const TD_STATUS_ACTIVE: u32 = 1 << 23;
pub const TD_IOC: u32 = 1 << 24;
pub const TD_IOS: u32 = 1 << 25;
pub const TD_LS: u32 = 1 << 26;
pub const TD_CERR_SHIFT: u32 = 27;
pub const TD_CERR_MASK: u32 = 3 << 27;
pub const TD_SPD: u32 = 1 << 29;

/// TD token (3.2.3): PID, device address, endpoint, data toggle, MaxLen
/// (n - 1; 0x7FF is a zero-length packet, 0x500-0x7FE are illegal).
pub const TOKEN_PID_MASK: u32 = 0xff;
pub const TOKEN_ADDR_SHIFT: u32 = 8;
pub const TOKEN_ENDP_SHIFT: u32 = 15;
pub const TOKEN_TOGGLE: u32 = 1 << 19;
pub const TOKEN_MAXLEN_SHIFT: u32 = 21;
pub const MAXLEN_NULL: u32 = 0x7ff;
pub const MAXLEN_LIMIT: u32 = 0x4ff;

/// Queue head (3.3): horizontal link, element link.
pub const QH_LINK: u64 = 0;
pub const QH_ELEMENT: u64 = 4;
