//! ICH9 AHCI register and memory layouts: generic host control and port
//! registers, command headers, command tables, received-FIS areas and the
//! FIS types the HBA exchanges with a device. Section numbers refer to
//! Serial ATA AHCI 1.3.1 ("AHCI") and Serial ATA Revision 2.6 ("SATA").

/// PCI IDs: Intel ICH9 AHCI controller (6 ports), class 01h/06h/01h.
pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_ICH9_AHCI: u16 = 0x2922;
pub const CLASS_SATA_AHCI: u32 = 0x01_06_01;
pub const REVISION: u8 = 0x02;

/// ABAR: the HBA memory registers, memory BAR 5 (AHCI 2.1.11).
pub const BAR_ABAR: usize = 5;
pub const ABAR_LEN: u64 = 0x1000;

/// PCI configuration: MSI capability (AHCI 2.3) and the ICH9 port control
/// and status register (ICH9 datasheet 14.1.32).
pub const CAP_MSI_OFFSET: usize = 0x80;
pub const CAP_ID_MSI: u8 = 0x05;
pub const MSI_CONTROL: usize = CAP_MSI_OFFSET + 2;
pub const MSI_ADDRESS: usize = CAP_MSI_OFFSET + 4;
pub const MSI_ADDRESS_HI: usize = CAP_MSI_OFFSET + 8;
pub const MSI_DATA: usize = CAP_MSI_OFFSET + 12;
/// MSI control: enable (bit 0), multiple message enable (6:4), 64-bit (7).
pub const MSI_ENABLE: u16 = 0x0001;
pub const MSI_64BIT: u16 = 0x0080;
pub const REG_PCS: usize = 0x92;

pub const PORTS: usize = 6;
pub const SLOTS: usize = 32;

// Generic host control (AHCI 3.1).
pub const HOST_CAP: u64 = 0x00;
pub const HOST_GHC: u64 = 0x04;
pub const HOST_IS: u64 = 0x08;
pub const HOST_PI: u64 = 0x0c;
pub const HOST_VS: u64 = 0x10;
pub const HOST_CCC_CTL: u64 = 0x14;
pub const HOST_CCC_PORTS: u64 = 0x18;
pub const HOST_EM_LOC: u64 = 0x1c;
pub const HOST_EM_CTL: u64 = 0x20;
pub const HOST_CAP2: u64 = 0x24;
pub const HOST_BOHC: u64 = 0x28;

// CAP bits (AHCI 3.1.1).
pub const CAP_S64A: u32 = 1 << 31;
pub const CAP_SNCQ: u32 = 1 << 30;
pub const CAP_SCLO: u32 = 1 << 24;
/// Interface speed support: Gen 2 (3 Gbps).
pub const CAP_ISS_GEN2: u32 = 2 << 20;
/// Supports AHCI mode only (GHC.AE reads one).
pub const CAP_SAM: u32 = 1 << 18;
pub const CAP_PMD: u32 = 1 << 15;
pub const CAP_NCS_SHIFT: u32 = 8;
pub const CAP_NP_MASK: u32 = 0x1f;

// GHC bits (AHCI 3.1.2).
pub const GHC_HR: u32 = 1 << 0;
pub const GHC_IE: u32 = 1 << 1;
pub const GHC_AE: u32 = 1 << 31;

/// AHCI version 1.3 (AHCI 3.1.5).
pub const VERSION_1_3: u32 = 0x0001_0300;

// Port registers (AHCI 3.3), 0x80 bytes each from 0x100.
pub const PORT_BASE: u64 = 0x100;
pub const PORT_STRIDE: u64 = 0x80;
pub const PX_CLB: u64 = 0x00;
pub const PX_CLBU: u64 = 0x04;
pub const PX_FB: u64 = 0x08;
pub const PX_FBU: u64 = 0x0c;
pub const PX_IS: u64 = 0x10;
pub const PX_IE: u64 = 0x14;
pub const PX_CMD: u64 = 0x18;
pub const PX_TFD: u64 = 0x20;
pub const PX_SIG: u64 = 0x24;
pub const PX_SSTS: u64 = 0x28;
pub const PX_SCTL: u64 = 0x2c;
pub const PX_SERR: u64 = 0x30;
pub const PX_SACT: u64 = 0x34;
pub const PX_CI: u64 = 0x38;
pub const PX_SNTF: u64 = 0x3c;
pub const PX_FBS: u64 = 0x40;
pub const PX_DEVSLP: u64 = 0x44;

// PxIS / PxIE bits (AHCI 3.3.5).
pub const IS_DHRS: u32 = 1 << 0;
pub const IS_PSS: u32 = 1 << 1;
pub const IS_DSS: u32 = 1 << 2;
pub const IS_SDBS: u32 = 1 << 3;
pub const IS_UFS: u32 = 1 << 4;
pub const IS_DPS: u32 = 1 << 5;
pub const IS_PCS: u32 = 1 << 6;
pub const IS_DMPS: u32 = 1 << 7;
pub const IS_PRCS: u32 = 1 << 22;
pub const IS_IPMS: u32 = 1 << 23;
pub const IS_OFS: u32 = 1 << 24;
pub const IS_INFS: u32 = 1 << 26;
pub const IS_IFS: u32 = 1 << 27;
pub const IS_HBDS: u32 = 1 << 28;
pub const IS_HBFS: u32 = 1 << 29;
pub const IS_TFES: u32 = 1 << 30;
pub const IS_CPDS: u32 = 1 << 31;
/// PxIS bits software can clear (the others are read-only mirrors).
pub const IS_RWC: u32 = IS_DHRS
    | IS_PSS
    | IS_DSS
    | IS_SDBS
    | IS_DPS
    | IS_DMPS
    | IS_IPMS
    | IS_OFS
    | IS_INFS
    | IS_IFS
    | IS_HBDS
    | IS_HBFS
    | IS_TFES
    | IS_CPDS;
/// Errors after which the HBA stops processing the command list until
/// software clears PxCMD.ST (AHCI 6.1.2 and 6.2.2).
pub const IS_FATAL: u32 = IS_TFES | IS_HBFS | IS_HBDS | IS_IFS | IS_OFS;
/// PxIE bits that exist.
pub const IE_MASK: u32 = 0xfdc0_00ff;

// PxCMD bits (AHCI 3.3.7).
pub const CMD_ST: u32 = 1 << 0;
pub const CMD_SUD: u32 = 1 << 1;
pub const CMD_POD: u32 = 1 << 2;
pub const CMD_CLO: u32 = 1 << 3;
pub const CMD_FRE: u32 = 1 << 4;
pub const CMD_CCS_SHIFT: u32 = 8;
pub const CMD_CCS_MASK: u32 = 0x1f << CMD_CCS_SHIFT;
pub const CMD_FR: u32 = 1 << 14;
pub const CMD_CR: u32 = 1 << 15;
pub const CMD_ATAPI: u32 = 1 << 24;
pub const CMD_DLAE: u32 = 1 << 25;
pub const CMD_ALPE: u32 = 1 << 26;
pub const CMD_ASP: u32 = 1 << 27;
pub const CMD_ICC_MASK: u32 = 0xf << 28;
/// PxCMD bits software writes and reads back.
pub const CMD_RW: u32 = CMD_ST | CMD_FRE | CMD_ATAPI | CMD_DLAE | CMD_ALPE | CMD_ASP;

/// PxTFD after reset and with no device: BSY clear, DRQ set (AHCI 3.3.8
/// reset value 7Fh).
pub const TFD_RESET: u32 = 0x7f;

// PxSSTS (AHCI 3.3.10): DET 3 (device and PHY communication), SPD Gen 2,
// IPM active.
pub const SSTS_DET_PRESENT: u32 = 0x3;
pub const SSTS_DET_PRESENCE_NO_PHY: u32 = 0x1;
pub const SSTS_SPD_GEN2: u32 = 0x2 << 4;
pub const SSTS_IPM_ACTIVE: u32 = 0x1 << 8;
pub const SSTS_DET_MASK: u32 = 0xf;

// PxSCTL (AHCI 3.3.11): DET field.
pub const SCTL_DET_MASK: u32 = 0xf;
pub const SCTL_DET_COMRESET: u32 = 0x1;
pub const SCTL_DET_OFFLINE: u32 = 0x4;

/// PxSERR.DIAG.X: exchanged (a COMINIT was received, AHCI 3.3.12).
pub const SERR_DIAG_X: u32 = 1 << 26;

/// PxSIG values (SATA 11.3): ATA and ATAPI device signatures.
pub const SIG_ATA: u32 = 0x0000_0101;
pub const SIG_ATAPI: u32 = 0xeb14_0101;

// Command header (AHCI 4.2.2), 32 bytes per slot.
pub const CMD_HEADER_SIZE: u64 = 32;
/// DW0: command FIS length in dwords (4:0).
pub const CH_CFL_MASK: u32 = 0x1f;
pub const CH_ATAPI: u32 = 1 << 5;
pub const CH_WRITE: u32 = 1 << 6;
pub const CH_PREFETCH: u32 = 1 << 7;
pub const CH_RESET: u32 = 1 << 8;
pub const CH_BIST: u32 = 1 << 9;
pub const CH_CLEAR_BUSY: u32 = 1 << 10;
pub const CH_PRDTL_SHIFT: u32 = 16;
/// DW1: PRD byte count, written by the HBA.
pub const CH_PRDBC_OFFSET: u64 = 4;
/// DW2-3: command table base (128-byte aligned).
pub const CH_CTBA_OFFSET: u64 = 8;
pub const CTBA_ALIGN_MASK: u64 = 0x7f;

// Command table (AHCI 4.2.3).
pub const CT_CFIS_OFFSET: u64 = 0x00;
pub const CT_CFIS_LEN: usize = 64;
pub const CT_ACMD_OFFSET: u64 = 0x40;
pub const CT_ACMD_LEN: usize = 16;
pub const CT_PRDT_OFFSET: u64 = 0x80;
/// PRDT entry: DBA, DBAU, reserved, DW3 = DBC (21:0, byte count minus
/// one, bit 0 always one) and I (31).
pub const PRD_ENTRY_SIZE: u64 = 16;
pub const PRD_DBC_MASK: u32 = 0x003f_ffff;
pub const PRD_INTERRUPT: u32 = 1 << 31;

// Received FIS area (AHCI 4.2.1), 256 bytes.
pub const RFIS_DSFIS: u64 = 0x00;
pub const RFIS_PSFIS: u64 = 0x20;
pub const RFIS_RFIS: u64 = 0x40;
pub const RFIS_SDBFIS: u64 = 0x58;
pub const RFIS_UFIS: u64 = 0x60;
pub const RFIS_LEN: u64 = 0x100;

// FIS types (SATA 10.3).
pub const FIS_REG_H2D: u8 = 0x27;
pub const FIS_REG_D2H: u8 = 0x34;
pub const FIS_DMA_SETUP: u8 = 0x41;
pub const FIS_PIO_SETUP: u8 = 0x5f;
pub const FIS_SET_DEVICE_BITS: u8 = 0xa1;
/// Register H2D byte 1 bit 7: the FIS updates the Command register (vs.
/// the Device Control register).
pub const FIS_H2D_COMMAND: u8 = 0x80;
/// Byte 1 bit 6 of device-to-host FISes: raise an interrupt.
pub const FIS_INTERRUPT: u8 = 0x40;
/// PIO Setup byte 1 bit 5: data moves device to host.
pub const FIS_PIO_TO_HOST: u8 = 0x20;
/// DMA Setup byte 1 bit 6 interrupt, bit 5 direction, bit 7 auto-activate.
pub const FIS_DMA_TO_HOST: u8 = 0x20;
pub const FIS_DMA_AUTO_ACTIVATE: u8 = 0x80;

// Register H2D FIS byte offsets (SATA 10.3.4).
pub const H2D_FLAGS: usize = 1;
pub const H2D_COMMAND: usize = 2;
pub const H2D_FEATURES: usize = 3;
pub const H2D_LBA_LOW: usize = 4;
pub const H2D_LBA_MID: usize = 5;
pub const H2D_LBA_HIGH: usize = 6;
pub const H2D_DEVICE: usize = 7;
pub const H2D_LBA_LOW_EXP: usize = 8;
pub const H2D_LBA_MID_EXP: usize = 9;
pub const H2D_LBA_HIGH_EXP: usize = 10;
pub const H2D_FEATURES_EXP: usize = 11;
pub const H2D_COUNT: usize = 12;
pub const H2D_COUNT_EXP: usize = 13;
pub const H2D_CONTROL: usize = 15;
/// Device Control SRST bit, carried in byte 15 of a control FIS.
pub const CONTROL_SRST: u8 = 0x04;
