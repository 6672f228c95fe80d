//! EHCI register and schedule layouts (Enhanced Host Controller Interface
//! Specification for USB, revision 1.0, chapters 2-3) and the PCI identity
//! of the ICH9 EHCI function with its UHCI companions (Intel I/O
//! Controller Hub 9 datasheet, chapters 16-17).

/// ICH9 USB EHCI controller #1: 8086:293a, class 0C/03/20 (EHCI).
pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_ICH9_EHCI1: u16 = 0x293a;
pub const CLASS_EHCI: u32 = 0x0c_03_20;
pub const REVISION: u8 = 0x03;
/// The ICH9 UHCI companions #1-#3 (8086:2934, 2935, 2936), functions 0-2
/// of the EHCI's slot, raising INTA, INTB and INTC.
pub const DEVICE_ICH9_UHCI: [u16; 3] = [0x2934, 0x2935, 0x2936];
pub const COMPANION_INTERRUPT_PINS: [u8; 3] = [1, 2, 3];
/// The EHCI function is function 7 and raises INTD.
pub const EHCI_FUNCTION: u8 = 7;
pub const INTERRUPT_PIN: u8 = 4;
/// MMIO BAR 0 (MEM_BASE, config 0x10), 1 KiB.
pub const BAR_MMIO: usize = 0;
pub const MMIO_LEN: u64 = 0x400;
/// Serial Bus Release Number (2.1.4): USB 2.0; frame length adjustment
/// default (2.1.5).
pub const REG_SBRN: usize = 0x60;
pub const SBRN_USB20: u8 = 0x20;
pub const REG_FLADJ: usize = 0x61;
pub const FLADJ_DEFAULT: u8 = 0x20;
/// The EHCI extended capability pointer (EECP) and the legacy support
/// capability it names in PCI configuration space (2.1.7, 2.1.8).
pub const EECP: usize = 0x68;
pub const USBLEGSUP_CAP_ID: u32 = 0x01;
pub const USBLEGSUP_BIOS_OWNED: u32 = 1 << 16;
pub const USBLEGSUP_OS_OWNED: u32 = 1 << 24;
pub const USBLEGCTLSTS: usize = EECP + 4;

/// Capability registers (2.2).
pub const CAPLENGTH: u64 = 0x00;
pub const HCIVERSION: u64 = 0x02;
pub const HCSPARAMS: u64 = 0x04;
pub const HCCPARAMS: u64 = 0x08;
/// The operational registers start right after the capability registers.
pub const CAP_LEN: u64 = 0x20;
pub const HCI_VERSION_1_0: u16 = 0x0100;
/// Six root ports; three companions of two ports each; no port power
/// control (ports are always powered); debug port 1 (ICH9's value).
pub const PORTS: usize = 6;
pub const PORTS_PER_COMPANION: usize = 2;
pub const COMPANIONS: usize = 3;
pub const HCSPARAMS_VALUE: u32 =
    PORTS as u32 | (PORTS_PER_COMPANION as u32) << 8 | (COMPANIONS as u32) << 12 | 1 << 20;
/// 32-bit addressing, a fixed 1024-entry frame list, isochronous
/// scheduling threshold 7 and the legacy capability at [`EECP`].
pub const HCCPARAMS_VALUE: u32 = 0x7 << 4 | (EECP as u32) << 8;

/// Operational registers, from the operational base (2.3).
pub const USBCMD: u64 = 0x00;
pub const USBSTS: u64 = 0x04;
pub const USBINTR: u64 = 0x08;
pub const FRINDEX: u64 = 0x0c;
pub const CTRLDSSEGMENT: u64 = 0x10;
pub const PERIODICLISTBASE: u64 = 0x14;
pub const ASYNCLISTADDR: u64 = 0x18;
pub const CONFIGFLAG: u64 = 0x40;
pub const PORTSC0: u64 = 0x44;

/// USBCMD (2.3.1); the interrupt threshold defaults to 8 micro-frames.
pub const CMD_RS: u32 = 1 << 0;
pub const CMD_HCRESET: u32 = 1 << 1;
pub const CMD_FLS_MASK: u32 = 3 << 2;
pub const CMD_PSE: u32 = 1 << 4;
pub const CMD_ASE: u32 = 1 << 5;
pub const CMD_IAAD: u32 = 1 << 6;
pub const CMD_ITC_MASK: u32 = 0xff << 16;
pub const CMD_DEFAULT: u32 = 0x08 << 16;
pub const CMD_WRITABLE: u32 = CMD_RS | CMD_HCRESET | CMD_PSE | CMD_ASE | CMD_IAAD | CMD_ITC_MASK;

/// USBSTS (2.3.2): bits 0-5 are write-one-to-clear, 12-15 read only.
pub const STS_USBINT: u32 = 1 << 0;
pub const STS_USBERRINT: u32 = 1 << 1;
pub const STS_PCD: u32 = 1 << 2;
pub const STS_FLR: u32 = 1 << 3;
pub const STS_HSE: u32 = 1 << 4;
pub const STS_IAA: u32 = 1 << 5;
pub const STS_HCHALTED: u32 = 1 << 12;
pub const STS_RECLAMATION: u32 = 1 << 13;
pub const STS_PSS: u32 = 1 << 14;
pub const STS_ASS: u32 = 1 << 15;
pub const STS_W1C: u32 = 0x3f;

/// USBINTR (2.3.3): one enable per USBSTS bit 0-5.
pub const INTR_MASK: u32 = 0x3f;

/// FRINDEX counts micro-frames (14 bits); bits 12:3 index a 1024-entry
/// frame list (2.3.4).
pub const FRINDEX_MASK: u32 = 0x3fff;
pub const MICROFRAMES_PER_FRAME: u32 = 8;
pub const FRAME_LIST_ENTRIES: u32 = 1024;
/// PERIODICLISTBASE is 4 KiB aligned, ASYNCLISTADDR 32-byte aligned.
pub const PERIODIC_BASE_MASK: u32 = 0xffff_f000;
pub const ASYNC_ADDR_MASK: u32 = 0xffff_ffe0;
/// CONFIGFLAG (2.3.8): 1 routes the ports to the EHCI.
pub const CONFIGFLAG_CF: u32 = 1;

/// PORTSC (2.3.9).
pub const PORT_CCS: u32 = 1 << 0;
pub const PORT_CSC: u32 = 1 << 1;
pub const PORT_PED: u32 = 1 << 2;
pub const PORT_PEDC: u32 = 1 << 3;
pub const PORT_OCA: u32 = 1 << 4;
pub const PORT_OCC: u32 = 1 << 5;
pub const PORT_FPR: u32 = 1 << 6;
pub const PORT_SUSPEND: u32 = 1 << 7;
pub const PORT_RESET: u32 = 1 << 8;
/// Line status (bits 11:10), valid while the port is not enabled:
/// SE0 = 00, J = 10, K = 01 (a low-speed device's idle state).
pub const PORT_LINE_J: u32 = 0b10 << 10;
pub const PORT_LINE_K: u32 = 0b01 << 10;
pub const PORT_POWER: u32 = 1 << 12;
pub const PORT_OWNER: u32 = 1 << 13;
pub const PORT_INDICATOR_MASK: u32 = 3 << 14;
pub const PORT_TEST_MASK: u32 = 0xf << 16;
pub const PORT_WAKE_MASK: u32 = 7 << 20;
pub const PORT_W1C: u32 = PORT_CSC | PORT_PEDC | PORT_OCC;
/// Bits software writes as values (PORT_OWNER is handled apart).
pub const PORT_WRITABLE: u32 = PORT_PED
    | PORT_FPR
    | PORT_SUSPEND
    | PORT_RESET
    | PORT_INDICATOR_MASK
    | PORT_TEST_MASK
    | PORT_WAKE_MASK;

/// Link pointers (3.1): bit 0 terminate, bits 2:1 the type of what it
/// points at, address 32-byte aligned.
pub const LINK_TERMINATE: u32 = 1 << 0;
pub const LINK_TYPE_SHIFT: u32 = 1;
pub const LINK_TYPE_MASK: u32 = 3 << 1;
pub const LINK_TYPE_ITD: u32 = 0;
pub const LINK_TYPE_QH: u32 = 1;
pub const LINK_TYPE_SITD: u32 = 2;
pub const LINK_TYPE_FSTN: u32 = 3;
pub const LINK_ADDR_MASK: u32 = 0xffff_ffe0;
/// qTD next pointers are 32-byte aligned, T in bit 0 (3.5.1, 3.5.2).
pub const QTD_PTR_MASK: u32 = 0xffff_ffe0;

/// Queue head (3.6): horizontal link, endpoint characteristics and
/// capabilities, current qTD pointer, then the transfer overlay (the
/// current qTD's eight dwords).
pub const QH_LINK: u64 = 0x00;
pub const QH_EP_CHARS: u64 = 0x04;
pub const QH_EP_CAPS: u64 = 0x08;
pub const QH_CURRENT_QTD: u64 = 0x0c;
pub const QH_OVERLAY: u64 = 0x10;
/// Endpoint characteristics (3.6.2).
pub const EPCHAR_ADDR_MASK: u32 = 0x7f;
pub const EPCHAR_ENDPT_SHIFT: u32 = 8;
pub const EPCHAR_EPS_SHIFT: u32 = 12;
pub const EPCHAR_EPS_HIGH: u32 = 2;
pub const EPCHAR_DTC: u32 = 1 << 14;
pub const EPCHAR_HEAD: u32 = 1 << 15;
pub const EPCHAR_MAXP_SHIFT: u32 = 16;
pub const EPCHAR_MAXP_MASK: u32 = 0x7ff;

/// qTD (3.5): next, alternate next, token, five buffer page pointers.
pub const QTD_NEXT: u64 = 0x00;
pub const QTD_ALT_NEXT: u64 = 0x04;
pub const QTD_TOKEN: u64 = 0x08;
pub const QTD_BUFFER: u64 = 0x0c;
pub const QTD_DWORDS: usize = 8;
pub const QTD_PAGES: usize = 5;
pub const PAGE_SIZE: u64 = 0x1000;
/// qTD token (3.5.3).
pub const TOKEN_STATUS_PING: u32 = 1 << 0;
pub const TOKEN_STATUS_SPLIT: u32 = 1 << 1;
pub const TOKEN_STATUS_MISSED: u32 = 1 << 2;
pub const TOKEN_STATUS_XACTERR: u32 = 1 << 3;
pub const TOKEN_STATUS_BABBLE: u32 = 1 << 4;
pub const TOKEN_STATUS_DBE: u32 = 1 << 5;
pub const TOKEN_STATUS_HALTED: u32 = 1 << 6;
pub const TOKEN_STATUS_ACTIVE: u32 = 1 << 7;
pub const TOKEN_PID_SHIFT: u32 = 8;
pub const TOKEN_PID_MASK: u32 = 3 << 8;
pub const PID_CODE_OUT: u32 = 0;
pub const PID_CODE_IN: u32 = 1;
pub const PID_CODE_SETUP: u32 = 2;
pub const TOKEN_CERR_MASK: u32 = 3 << 10;
pub const TOKEN_CPAGE_SHIFT: u32 = 12;
pub const TOKEN_CPAGE_MASK: u32 = 7 << 12;
pub const TOKEN_IOC: u32 = 1 << 15;
pub const TOKEN_BYTES_SHIFT: u32 = 16;
pub const TOKEN_BYTES_MASK: u32 = 0x7fff << 16;
pub const TOKEN_TOGGLE: u32 = 1 << 31;
/// The most a qTD moves: five 4 KiB pages (3.5.3).
pub const QTD_MAX_BYTES: usize = 0x5000;
