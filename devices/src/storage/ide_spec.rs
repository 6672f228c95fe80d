//! PIIX3 IDE function register layout: the legacy ATA command and control
//! blocks (ATA8-ACS 6, ATA/ATAPI-6 clause 7), the bus-master IDE registers
//! and PRD format (SFF-8038i "Programming Interface for Bus Master IDE
//! Controller" rev 1.0), and the function's PCI configuration (82371SB
//! PIIX3 datasheet, section 2.6 "PCI Configuration Registers - IDE").

/// PCI IDs (82371SB PIIX3 IDE, function 1 of the south bridge).
pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_PIIX3_IDE: u16 = 0x7010;
/// Class 01h (mass storage), subclass 01h (IDE), programming interface
/// 80h: bus master capable, both channels fixed in compatibility mode.
pub const CLASS_IDE_BUS_MASTER: u32 = 0x01_01_80;

/// BMIBA: the bus-master registers, I/O BAR 4, 16 bytes.
pub const BAR_BUS_MASTER: usize = 4;
pub const BUS_MASTER_LEN: u64 = 16;

/// IDETIM for the primary (40h) and secondary (42h) channel; bit 15 (IDE)
/// enables decoding of that channel's legacy ports.
pub const REG_IDETIM: [usize; 2] = [0x40, 0x42];
pub const IDETIM_DECODE_ENABLE: u16 = 0x8000;
/// Slave IDE timing (44h).
pub const REG_SIDETIM: usize = 0x44;

/// Legacy command and control block ports and ISA IRQs per channel.
pub const COMMAND_BLOCK: [u64; 2] = [0x1f0, 0x170];
pub const COMMAND_BLOCK_LEN: u64 = 8;
pub const CONTROL_BLOCK: [u64; 2] = [0x3f6, 0x376];
pub const CONTROL_BLOCK_LEN: u64 = 1;
pub const IRQ: [usize; 2] = [14, 15];

// Command block register offsets.
pub const REG_DATA: u64 = 0;
/// Error (read), Features (write).
pub const REG_ERROR_FEATURES: u64 = 1;
/// Count; for ATAPI: interrupt reason (read).
pub const REG_COUNT: u64 = 2;
pub const REG_LBA_LOW: u64 = 3;
/// LBA Mid; for ATAPI: byte count low.
pub const REG_LBA_MID: u64 = 4;
/// LBA High; for ATAPI: byte count high.
pub const REG_LBA_HIGH: u64 = 5;
pub const REG_DEVICE: u64 = 6;
/// Status (read), Command (write).
pub const REG_STATUS_COMMAND: u64 = 7;

// Device Control register (ATA8-ACS 6.1): written at the control block.
/// Interrupts disabled.
pub const CONTROL_NIEN: u8 = 0x02;
/// Software reset of both devices.
pub const CONTROL_SRST: u8 = 0x04;
/// High order byte: reads return the previous register contents.
pub const CONTROL_HOB: u8 = 0x80;

// ATAPI interrupt reason (ATA8-ACS 7.18.4, Count register).
/// Command/data: 1 = command packet or status.
pub const IREASON_COD: u8 = 0x01;
/// Direction: 1 = to the host.
pub const IREASON_IO: u8 = 0x02;

// Bus-master IDE registers (SFF-8038i 2), per channel at +0 and +8.
pub const BM_COMMAND: u64 = 0;
pub const BM_STATUS: u64 = 2;
/// PRD table pointer, 4 bytes, dword aligned.
pub const BM_PRD_TABLE: u64 = 4;
pub const BM_CHANNEL_STRIDE: u64 = 8;

/// Command: start/stop bus master.
pub const BM_CMD_START: u8 = 0x01;
/// Command: read/write control, 1 = bus master writes to memory (a
/// device-to-host transfer).
pub const BM_CMD_WRITE_TO_MEMORY: u8 = 0x08;
pub const BM_CMD_MASK: u8 = BM_CMD_START | BM_CMD_WRITE_TO_MEMORY;

/// Status: bus master active.
pub const BM_STATUS_ACTIVE: u8 = 0x01;
/// Status: error (write 1 to clear).
pub const BM_STATUS_ERROR: u8 = 0x02;
/// Status: the IDE interrupt line rose (write 1 to clear).
pub const BM_STATUS_INTERRUPT: u8 = 0x04;
/// Status: drive 0 / drive 1 is DMA capable (software-set bits).
pub const BM_STATUS_DRIVE_DMA: u8 = 0x60;
/// Status: simplex only (read-only, zero on the PIIX3).
pub const BM_STATUS_SIMPLEX: u8 = 0x80;

/// A physical region descriptor: address (bit 0 zero), byte count in bits
/// 15:1 of the second dword (0 = 64 KiB), end of table in bit 31.
pub const PRD_SIZE: u64 = 8;
pub const PRD_EOT: u32 = 0x8000_0000;
pub const PRD_COUNT_MASK: u32 = 0xfffe;
pub const PRD_MAX_BYTES: u64 = 0x1_0000;
/// A PRD table may not cross a 64 KiB boundary: at most this many entries.
pub const PRD_MAX_ENTRIES: u64 = 0x1_0000 / PRD_SIZE;
