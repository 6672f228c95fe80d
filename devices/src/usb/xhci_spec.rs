//! xHCI register, context and TRB layouts (eXtensible Host Controller
//! Interface for USB, revision 1.2, chapters 5 and 6) and the PCI identity
//! of QEMU's `qemu-xhci` (1b36:000d), which Windows' `usbxhci` and Linux's
//! `xhci_hcd` bind to by class.

/// Red Hat's QEMU PCI vendor and the `qemu-xhci` device.
pub const VENDOR_REDHAT: u16 = 0x1b36;
pub const DEVICE_QEMU_XHCI: u16 = 0x000d;
/// Serial bus / USB / xHCI (prog-if 0x30).
pub const CLASS_XHCI: u32 = 0x0c_03_30;
pub const REVISION: u8 = 0x01;
/// BAR 0: 64-bit memory, the whole register file.
pub const BAR_MMIO: usize = 0;
pub const MMIO_LEN: u64 = 0x4000;
/// INTA.
pub const INTERRUPT_PIN: u8 = 1;
/// Serial Bus Release Number register (5.2.3): USB 3.0 = 0x30.
pub const REG_SBRN: usize = 0x60;
pub const SBRN_USB30: u8 = 0x30;
/// Frame Length Adjustment register (5.2.4), default 0x20.
pub const REG_FLADJ: usize = 0x61;
pub const FLADJ_DEFAULT: u8 = 0x20;

/// Where the PCI MSI capability is.
pub const CAP_MSI_OFFSET: usize = 0x80;

/// Root ports: 1-4 speak USB 2 (low/full/high speed), 5-8 USB 3.
pub const USB2_PORTS: usize = 4;
pub const USB3_PORTS: usize = 4;
pub const PORTS: usize = USB2_PORTS + USB3_PORTS;
pub const USB2_FIRST_PORT: usize = 1;
pub const USB3_FIRST_PORT: usize = USB2_PORTS + 1;
/// Device slots.
pub const MAX_SLOTS: usize = 32;
/// Event Ring Segment Table entries the interrupter takes: 2^ERST_MAX_EXP.
pub const ERST_MAX_EXP: u32 = 4;
pub const ERST_MAX: u32 = 1 << ERST_MAX_EXP;
/// Event ring segment sizes in TRBs (6.5: 16 to 4096).
pub const SEGMENT_MIN_TRBS: u32 = 16;
pub const SEGMENT_MAX_TRBS: u32 = 4096;

/// Register file layout (offsets in BAR 0).
pub const CAP_LENGTH: u64 = 0x40;
pub const OP_BASE: u64 = CAP_LENGTH;
pub const PORT_BASE: u64 = OP_BASE + 0x400;
pub const PORT_STRIDE: u64 = 0x10;
pub const RUNTIME_BASE: u64 = 0x1000;
pub const DOORBELL_BASE: u64 = 0x2000;
/// Extended capabilities: two Supported Protocol capabilities.
pub const XECP_BASE: u64 = 0x20;

/// Capability registers (5.3).
pub const CAPLENGTH: u64 = 0x00;
pub const HCIVERSION_VALUE: u16 = 0x0110;
pub const HCSPARAMS1: u64 = 0x04;
pub const HCSPARAMS2: u64 = 0x08;
pub const HCSPARAMS3: u64 = 0x0c;
pub const HCCPARAMS1: u64 = 0x10;
pub const DBOFF: u64 = 0x14;
pub const RTSOFF: u64 = 0x18;
pub const HCCPARAMS2: u64 = 0x1c;
/// HCCPARAMS1: 64-bit addressing capability.
pub const HCC_AC64: u32 = 1 << 0;
/// HCCPARAMS1: port power control.
pub const HCC_PPC: u32 = 1 << 3;
pub const HCC_XECP_SHIFT: u32 = 16;

/// Extended capability IDs (7.1) and the Supported Protocol fields (7.2).
pub const XCAP_SUPPORTED_PROTOCOL: u32 = 2;
pub const PROTOCOL_NAME_USB: u32 = 0x2042_5355;

/// Operational registers (5.4), offsets from OP_BASE.
pub const USBCMD: u64 = 0x00;
pub const USBSTS: u64 = 0x04;
pub const PAGESIZE: u64 = 0x08;
pub const DNCTRL: u64 = 0x14;
pub const CRCR: u64 = 0x18;
pub const DCBAAP: u64 = 0x30;
pub const CONFIG: u64 = 0x38;
/// PAGESIZE: 4 KiB pages only.
pub const PAGESIZE_4K: u32 = 1;

pub const CMD_RS: u32 = 1 << 0;
pub const CMD_HCRST: u32 = 1 << 1;
pub const CMD_INTE: u32 = 1 << 2;
pub const CMD_HSEE: u32 = 1 << 3;
pub const CMD_LHCRST: u32 = 1 << 7;
pub const CMD_CSS: u32 = 1 << 8;
pub const CMD_CRS: u32 = 1 << 9;
pub const CMD_EWE: u32 = 1 << 10;
pub const CMD_WRITABLE: u32 = CMD_RS | CMD_INTE | CMD_HSEE | CMD_EWE | (1 << 11);

pub const STS_HCH: u32 = 1 << 0;
pub const STS_HSE: u32 = 1 << 2;
pub const STS_EINT: u32 = 1 << 3;
pub const STS_PCD: u32 = 1 << 4;
pub const STS_SRE: u32 = 1 << 10;
pub const STS_CNR: u32 = 1 << 11;
pub const STS_HCE: u32 = 1 << 12;
pub const STS_W1C: u32 = STS_HSE | STS_EINT | STS_PCD | STS_SRE;

/// CRCR bits (5.4.5).
pub const CRCR_RCS: u64 = 1 << 0;
pub const CRCR_CS: u64 = 1 << 1;
pub const CRCR_CA: u64 = 1 << 2;
pub const CRCR_CRR: u64 = 1 << 3;
pub const CRCR_PTR_MASK: u64 = !0x3f;

/// Port register set (5.4.8-5.4.11), offsets from the port's base.
pub const PORTSC: u64 = 0x0;
pub const PORTPMSC: u64 = 0x4;
pub const PORTLI: u64 = 0x8;

pub const PORT_CCS: u32 = 1 << 0;
pub const PORT_PED: u32 = 1 << 1;
pub const PORT_OCA: u32 = 1 << 3;
pub const PORT_PR: u32 = 1 << 4;
pub const PORT_PLS_SHIFT: u32 = 5;
pub const PORT_PLS_MASK: u32 = 0xf << PORT_PLS_SHIFT;
pub const PORT_PP: u32 = 1 << 9;
pub const PORT_SPEED_SHIFT: u32 = 10;
pub const PORT_PIC_MASK: u32 = 3 << 14;
pub const PORT_LWS: u32 = 1 << 16;
pub const PORT_CSC: u32 = 1 << 17;
pub const PORT_PEC: u32 = 1 << 18;
pub const PORT_WRC: u32 = 1 << 19;
pub const PORT_OCC: u32 = 1 << 20;
pub const PORT_PRC: u32 = 1 << 21;
pub const PORT_PLC: u32 = 1 << 22;
pub const PORT_CEC: u32 = 1 << 23;
pub const PORT_WCE: u32 = 1 << 25;
pub const PORT_WDE: u32 = 1 << 26;
pub const PORT_WOE: u32 = 1 << 27;
pub const PORT_DR: u32 = 1 << 30;
pub const PORT_WPR: u32 = 1 << 31;
/// The change bits, all write-1-to-clear.
pub const PORT_CHANGES: u32 =
    PORT_CSC | PORT_PEC | PORT_WRC | PORT_OCC | PORT_PRC | PORT_PLC | PORT_CEC;
/// Bits software sets and reads back as written.
pub const PORT_RW: u32 = PORT_PP | PORT_PIC_MASK | PORT_WCE | PORT_WDE | PORT_WOE;

/// Port link states (5.4.8, PLS).
pub const PLS_U0: u32 = 0;
pub const PLS_U3: u32 = 3;
pub const PLS_DISABLED: u32 = 4;
pub const PLS_RX_DETECT: u32 = 5;
pub const PLS_POLLING: u32 = 7;
pub const PLS_RESUME: u32 = 15;

/// Default Protocol Speed IDs (7.2.2.1.1).
pub const SPEED_FULL: u32 = 1;
pub const SPEED_LOW: u32 = 2;
pub const SPEED_HIGH: u32 = 3;
pub const SPEED_SUPER: u32 = 4;

/// Runtime registers (5.5): MFINDEX, then interrupter 0 at 0x20.
pub const MFINDEX: u64 = 0x00;
pub const IR0_BASE: u64 = 0x20;
pub const IMAN: u64 = 0x00;
pub const IMOD: u64 = 0x04;
pub const ERSTSZ: u64 = 0x08;
pub const ERSTBA: u64 = 0x10;
pub const ERDP: u64 = 0x18;
pub const IMAN_IP: u32 = 1 << 0;
pub const IMAN_IE: u32 = 1 << 1;
/// ERDP: Event Handler Busy (write 1 to clear), and the pointer bits.
pub const ERDP_EHB: u64 = 1 << 3;
pub const ERDP_PTR_MASK: u64 = !0xf;

/// TRBs (6.4): 16 bytes; dword 3 holds the cycle bit and the type.
pub const TRB_LEN: u64 = 16;
pub const TRB_C: u32 = 1 << 0;
pub const TRB_ENT: u32 = 1 << 1;
pub const TRB_LINK_TC: u32 = 1 << 1;
pub const TRB_ISP: u32 = 1 << 2;
pub const TRB_CH: u32 = 1 << 4;
pub const TRB_IOC: u32 = 1 << 5;
pub const TRB_IDT: u32 = 1 << 6;
pub const TRB_BSR: u32 = 1 << 9;
pub const TRB_DC: u32 = 1 << 9;
pub const TRB_DIR_IN: u32 = 1 << 16;
pub const TRB_TYPE_SHIFT: u32 = 10;
pub const TRB_TYPE_MASK: u32 = 0x3f;
pub const TRB_SLOT_SHIFT: u32 = 24;
pub const TRB_EP_SHIFT: u32 = 16;
pub const TRB_EP_MASK: u32 = 0x1f;
/// Transfer length field of a transfer TRB (17 bits).
pub const TRB_LEN_MASK: u32 = 0x1_ffff;
/// Event TRBs: Event Data flag.
pub const TRB_EVENT_ED: u32 = 1 << 2;

/// TRB types (6.4.6, table 6-91).
pub const TRB_NORMAL: u32 = 1;
pub const TRB_SETUP: u32 = 2;
pub const TRB_DATA: u32 = 3;
pub const TRB_STATUS: u32 = 4;
pub const TRB_ISOCH: u32 = 5;
pub const TRB_LINK: u32 = 6;
pub const TRB_EVENT_DATA: u32 = 7;
pub const TRB_NOOP: u32 = 8;
pub const CMD_ENABLE_SLOT: u32 = 9;
pub const CMD_DISABLE_SLOT: u32 = 10;
pub const CMD_ADDRESS_DEVICE: u32 = 11;
pub const CMD_CONFIGURE_ENDPOINT: u32 = 12;
pub const CMD_EVALUATE_CONTEXT: u32 = 13;
pub const CMD_RESET_ENDPOINT: u32 = 14;
pub const CMD_STOP_ENDPOINT: u32 = 15;
pub const CMD_SET_TR_DEQUEUE: u32 = 16;
pub const CMD_RESET_DEVICE: u32 = 17;
pub const CMD_NOOP: u32 = 23;
pub const EVENT_TRANSFER: u32 = 32;
pub const EVENT_COMMAND_COMPLETION: u32 = 33;
pub const EVENT_PORT_STATUS_CHANGE: u32 = 34;
pub const EVENT_HOST_CONTROLLER: u32 = 37;

/// Setup TRB transfer type (TRT, bits 17:16 of dword 3).
pub const TRT_NO_DATA: u32 = 0;

/// Completion codes (6.4.5, table 6-90).
pub const CC_SUCCESS: u8 = 1;
pub const CC_DATA_BUFFER_ERROR: u8 = 2;
pub const CC_BABBLE: u8 = 3;
pub const CC_USB_TRANSACTION_ERROR: u8 = 4;
pub const CC_TRB_ERROR: u8 = 5;
pub const CC_STALL: u8 = 6;
pub const CC_NO_SLOTS: u8 = 9;
pub const CC_SLOT_NOT_ENABLED: u8 = 11;
pub const CC_EP_NOT_ENABLED: u8 = 12;
pub const CC_SHORT_PACKET: u8 = 13;
pub const CC_PARAMETER_ERROR: u8 = 17;
pub const CC_CONTEXT_STATE_ERROR: u8 = 19;
pub const CC_COMMAND_RING_STOPPED: u8 = 24;
pub const CC_STOPPED: u8 = 26;

/// Contexts (6.2) with CSZ=0: 32 bytes each. A device context is the
/// slot context then 31 endpoint contexts; an input context has the input
/// control context first.
pub const CONTEXT_LEN: u64 = 32;
/// Input control context: drop flags (dword 0), add flags (dword 1).
pub const ICC_DROP: u64 = 0x00;
pub const ICC_ADD: u64 = 0x04;
/// Slot context dword 0: route string, speed, context entries.
pub const SLOT_ROUTE_MASK: u32 = 0xf_ffff;
pub const SLOT_ENTRIES_SHIFT: u32 = 27;
/// Slot context dword 1: root hub port number.
pub const SLOT_PORT_SHIFT: u32 = 16;
/// Slot context dword 3: USB device address and slot state.
pub const SLOT_STATE_SHIFT: u32 = 27;
pub const SLOT_STATE_DISABLED: u32 = 0;
pub const SLOT_STATE_DEFAULT: u32 = 1;
pub const SLOT_STATE_ADDRESSED: u32 = 2;
pub const SLOT_STATE_CONFIGURED: u32 = 3;
/// Endpoint context dword 0: state (bits 2:0).
pub const EP_STATE_MASK: u32 = 0x7;
pub const EP_STATE_DISABLED: u32 = 0;
pub const EP_STATE_RUNNING: u32 = 1;
pub const EP_STATE_HALTED: u32 = 2;
pub const EP_STATE_STOPPED: u32 = 3;
pub const EP_STATE_ERROR: u32 = 4;
/// Endpoint context dword 1: endpoint type (bits 5:3), max packet size.
pub const EP_TYPE_SHIFT: u32 = 3;
pub const EP_TYPE_MASK: u32 = 0x7;
pub const EP_TYPE_ISOCH_OUT: u32 = 1;
pub const EP_TYPE_INT_OUT: u32 = 3;
pub const EP_TYPE_CONTROL: u32 = 4;
pub const EP_TYPE_ISOCH_IN: u32 = 5;
pub const EP_TYPE_INT_IN: u32 = 7;
pub const EP_MPS_SHIFT: u32 = 16;
/// Endpoint context dwords 2-3: TR dequeue pointer, DCS in bit 0.
pub const EP_DCS: u64 = 1;
pub const EP_DEQ_MASK: u64 = !0xf;
