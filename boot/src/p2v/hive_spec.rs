//! On-disk layout of a Windows registry hive ("regf" format), as described in
//! the public "Windows registry file format specification" (Maxim Suhanov)
//! and libyal's REGF notes. Offsets are in bytes.

/// Size of the base block that starts the primary file and each log file.
pub const BASE_BLOCK_SIZE: usize = 4096;
/// Bytes of the base block covered by its checksum (the 127 dwords before
/// the checksum field).
pub const CHECKSUM_COVERED: usize = 508;

// Base block fields (section "Base block").
pub const REGF_SIGNATURE: &[u8; 4] = b"regf";
pub const BB_PRIMARY_SEQUENCE: usize = 4;
pub const BB_SECONDARY_SEQUENCE: usize = 8;
pub const BB_MAJOR_VERSION: usize = 20;
pub const BB_MINOR_VERSION: usize = 24;
pub const BB_FILE_TYPE: usize = 28;
pub const BB_ROOT_CELL: usize = 36;
pub const BB_HIVE_BINS_SIZE: usize = 40;
pub const BB_CHECKSUM: usize = 508;

/// File type of a primary hive file; 1 and 2 are the old log formats, 6 the
/// new ("HvLE") one.
pub const FILE_TYPE_PRIMARY: u32 = 0;
pub const FILE_TYPE_LOG_OLD_1: u32 = 1;
pub const FILE_TYPE_LOG_OLD_2: u32 = 2;
pub const FILE_TYPE_LOG_NEW: u32 = 6;

// Hive bin header (section "Hive bin").
pub const HBIN_SIGNATURE: &[u8; 4] = b"hbin";
pub const HBIN_HEADER_SIZE: usize = 32;
pub const HBIN_OFFSET: usize = 4;
pub const HBIN_SIZE: usize = 8;
/// Hive bins are multiples of this size.
pub const HBIN_ALIGN: usize = 4096;

// Key node ("nk"), offsets inside the cell data (after the 4-byte size).
pub const NK_SIGNATURE: &[u8; 2] = b"nk";
pub const NK_FLAGS: usize = 2;
pub const NK_SUBKEY_COUNT: usize = 20;
pub const NK_SUBKEY_LIST: usize = 28;
pub const NK_VALUE_COUNT: usize = 36;
pub const NK_VALUE_LIST: usize = 40;
pub const NK_NAME_LENGTH: usize = 72;
pub const NK_NAME: usize = 76;
/// The key name is stored as Latin-1 (one byte a character), not UTF-16LE.
pub const NK_FLAG_COMP_NAME: u16 = 0x0020;

// Key value ("vk").
pub const VK_SIGNATURE: &[u8; 2] = b"vk";
pub const VK_NAME_LENGTH: usize = 2;
pub const VK_DATA_SIZE: usize = 4;
pub const VK_DATA_OFFSET: usize = 8;
pub const VK_TYPE: usize = 12;
pub const VK_FLAGS: usize = 16;
pub const VK_NAME: usize = 20;
pub const VK_FLAG_COMP_NAME: u16 = 0x0001;
/// Set in the data size when the data (at most 4 bytes) sits in the data
/// offset field itself.
pub const VK_DATA_INLINE: u32 = 0x8000_0000;

// Subkey lists.
pub const LIST_COUNT: usize = 2;
pub const LIST_ITEMS: usize = 4;

// Big data ("db"): values larger than this are split in segments (hive
// version 1.4 and later).
pub const DB_SIGNATURE: &[u8; 2] = b"db";
pub const DB_SEGMENT_COUNT: usize = 2;
pub const DB_SEGMENT_LIST: usize = 4;
pub const BIG_DATA_THRESHOLD: usize = 16344;

// Value types.
pub const REG_SZ: u32 = 1;
pub const REG_EXPAND_SZ: u32 = 2;
pub const REG_BINARY: u32 = 3;
pub const REG_DWORD: u32 = 4;
pub const REG_MULTI_SZ: u32 = 7;

// New-format transaction log entry ("HvLE", section "New format").
pub const HVLE_SIGNATURE: &[u8; 4] = b"HvLE";
pub const HVLE_SIZE: usize = 4;
pub const HVLE_SEQUENCE: usize = 12;
pub const HVLE_BINS_SIZE: usize = 16;
pub const HVLE_DIRTY_COUNT: usize = 20;
pub const HVLE_HASH1: usize = 24;
pub const HVLE_HASH2: usize = 32;
pub const HVLE_HEADER_SIZE: usize = 40;
/// Log entries start after the log file's base block, which there is 512
/// bytes long.
pub const LOG_FIRST_ENTRY: usize = 512;
/// Marvin32 seed used for both log entry hashes.
pub const MARVIN_SEED: u64 = 0x82EF_4D88_7A4E_55C5;

// Old-format log: after the base block, a dirty vector "DIRT" and the dirty
// pages, in order.
pub const DIRT_SIGNATURE: &[u8; 4] = b"DIRT";
/// The dirty vector has one bit per 512-byte page of the hive bins data.
pub const DIRTY_PAGE_SIZE: usize = 512;

// Base block fields the old-format log checks use.
pub const BB_TIMESTAMP: usize = 12;
pub const BB_CLUSTERING_FACTOR: usize = 44;
/// Largest clustering factor (logical sector size / 512) Windows uses:
/// 4096-byte sectors.
pub const MAX_CLUSTERING_FACTOR: u32 = 8;
/// A hive bin header's timestamp (only the first bin's is meaningful).
pub const HBIN_TIMESTAMP: usize = 20;
/// Hive bins data sizes above this are refused (the offsets are 31-bit).
pub const MAX_HIVE_BINS_SIZE: usize = 1 << 31;
