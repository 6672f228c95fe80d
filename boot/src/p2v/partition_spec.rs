//! On-disk layouts of the Master Boot Record, the GPT header (UEFI 2.x
//! section 5.3) and the NTFS boot sector (BIOS parameter block). Offsets in
//! bytes.

pub const SECTOR: usize = 512;

// MBR (one 512-byte sector).
pub const MBR_BOOT_CODE_END: usize = 440;
pub const MBR_DISK_SIGNATURE: usize = 440;
pub const MBR_PARTITION_TABLE: usize = 446;
pub const MBR_ENTRY_SIZE: usize = 16;
pub const MBR_ENTRIES: usize = 4;
pub const BOOT_SIGNATURE: usize = 510;
pub const BOOT_SIGNATURE_BYTES: [u8; 2] = [0x55, 0xAA];

// Partition entry fields.
pub const PE_STATUS: usize = 0;
pub const PE_TYPE: usize = 4;
pub const PE_LBA_START: usize = 8;
pub const PE_SECTORS: usize = 12;
pub const PE_STATUS_ACTIVE: u8 = 0x80;
pub const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
pub const TYPE_NTFS: u8 = 0x07;
pub const TYPE_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];

// GPT header at LBA 1.
pub const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
pub const GPT_ENTRY_COUNT: usize = 80;

// NTFS boot sector.
pub const VBR_OEM_ID: usize = 3;
pub const NTFS_OEM_ID: &[u8; 8] = b"NTFS    ";
pub const VBR_BYTES_PER_SECTOR: usize = 11;
pub const VBR_HIDDEN_SECTORS: usize = 28;
pub const VBR_TOTAL_SECTORS_NTFS: usize = 40;
