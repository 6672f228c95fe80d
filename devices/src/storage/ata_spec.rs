//! ATA register and data layouts shared by every ATA transport: status and
//! error bits, command opcodes, IDENTIFY DEVICE words, SET FEATURES
//! subcommands, and log pages. Section numbers refer to ATA/ATAPI Command
//! Set (ATA8-ACS, T13/1699-D revision 6a) unless stated otherwise.

// ATA8-ACS 6.2: Status field.
/// Busy: the device owns the command block registers.
pub const STATUS_BSY: u8 = 0x80;
/// Device ready.
pub const STATUS_DRDY: u8 = 0x40;
/// Device fault.
pub const STATUS_DF: u8 = 0x20;
/// Device seek complete (obsolete in ATA8, still set by every PC drive).
pub const STATUS_DSC: u8 = 0x10;
/// Data request: ready to move a DRQ data block.
pub const STATUS_DRQ: u8 = 0x08;
/// Error: the Error register says what.
pub const STATUS_ERR: u8 = 0x01;
/// A ready drive asking for (or offering) a data block or a command packet.
pub const STATUS_READY_DRQ: u8 = STATUS_DRDY | STATUS_DSC | STATUS_DRQ;

// ATA8-ACS 6.3: Error field.
/// Interface CRC error.
pub const ERROR_ICRC: u8 = 0x80;
/// Uncorrectable data error (read commands).
pub const ERROR_UNC: u8 = 0x40;
/// ID not found: the address is outside the user-accessible range.
pub const ERROR_IDNF: u8 = 0x10;
/// Command aborted: not supported, bad parameter, or not permitted.
pub const ERROR_ABRT: u8 = 0x04;
/// End of media (ATAPI), or no media.
pub const ERROR_EOM: u8 = 0x02;
/// ATA8-ACS 6.3.6 / MMC: the ATAPI sense key is carried in bits 7:4.
pub const ERROR_SENSE_KEY_SHIFT: u8 = 4;

/// Error register value after a reset or EXECUTE DEVICE DIAGNOSTIC:
/// "device 0 passed, device 1 passed or not present" (ATA8-ACS table 23).
pub const DIAGNOSTIC_PASSED: u8 = 0x01;

// ATA8-ACS 6.4: Device register.
/// LBA addressing (bit 6).
pub const DEVICE_LBA: u8 = 0x40;
/// Device 1 selected (bit 4).
pub const DEVICE_DEV1: u8 = 0x10;
/// Forced unit access for FPDMA QUEUED writes (bit 7 of the Device field).
pub const DEVICE_FUA: u8 = 0x80;
/// Bits 7 and 5, obsolete, always one on old hardware.
pub const DEVICE_OBSOLETE: u8 = 0xa0;

// ATA8-ACS 9.12 (signatures after reset, table 184): Count/LBA values.
pub const SIGNATURE_ATA: (u8, u8) = (0x00, 0x00);
pub const SIGNATURE_ATAPI: (u8, u8) = (0x14, 0xeb);

// Command opcodes (ATA8-ACS clause 7 and Annex B, table B.2).
pub const CMD_NOP: u8 = 0x00;
pub const CMD_DATA_SET_MANAGEMENT: u8 = 0x06;
pub const CMD_DEVICE_RESET: u8 = 0x08;
/// RECALIBRATE and its obsolete variants 0x10-0x1f.
pub const CMD_RECALIBRATE: u8 = 0x10;
pub const CMD_READ_SECTORS: u8 = 0x20;
pub const CMD_READ_SECTORS_NORETRY: u8 = 0x21;
pub const CMD_READ_SECTORS_EXT: u8 = 0x24;
pub const CMD_READ_DMA_EXT: u8 = 0x25;
pub const CMD_READ_NATIVE_MAX_ADDRESS_EXT: u8 = 0x27;
pub const CMD_READ_MULTIPLE_EXT: u8 = 0x29;
pub const CMD_READ_LOG_EXT: u8 = 0x2f;
pub const CMD_WRITE_SECTORS: u8 = 0x30;
pub const CMD_WRITE_SECTORS_NORETRY: u8 = 0x31;
pub const CMD_WRITE_SECTORS_EXT: u8 = 0x34;
pub const CMD_WRITE_DMA_EXT: u8 = 0x35;
pub const CMD_WRITE_MULTIPLE_EXT: u8 = 0x39;
pub const CMD_WRITE_DMA_FUA_EXT: u8 = 0x3d;
pub const CMD_READ_VERIFY_SECTORS: u8 = 0x40;
pub const CMD_READ_VERIFY_SECTORS_NORETRY: u8 = 0x41;
pub const CMD_READ_VERIFY_SECTORS_EXT: u8 = 0x42;
pub const CMD_READ_LOG_DMA_EXT: u8 = 0x47;
pub const CMD_READ_FPDMA_QUEUED: u8 = 0x60;
pub const CMD_WRITE_FPDMA_QUEUED: u8 = 0x61;
/// SEEK and its obsolete variants 0x70-0x7f.
pub const CMD_SEEK: u8 = 0x70;
pub const CMD_EXECUTE_DEVICE_DIAGNOSTIC: u8 = 0x90;
pub const CMD_INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
pub const CMD_PACKET: u8 = 0xa0;
pub const CMD_IDENTIFY_PACKET_DEVICE: u8 = 0xa1;
pub const CMD_READ_MULTIPLE: u8 = 0xc4;
pub const CMD_WRITE_MULTIPLE: u8 = 0xc5;
pub const CMD_SET_MULTIPLE_MODE: u8 = 0xc6;
pub const CMD_READ_DMA: u8 = 0xc8;
pub const CMD_READ_DMA_NORETRY: u8 = 0xc9;
pub const CMD_WRITE_DMA: u8 = 0xca;
pub const CMD_WRITE_DMA_NORETRY: u8 = 0xcb;
pub const CMD_WRITE_MULTIPLE_FUA_EXT: u8 = 0xce;
pub const CMD_STANDBY_IMMEDIATE: u8 = 0xe0;
pub const CMD_IDLE_IMMEDIATE: u8 = 0xe1;
pub const CMD_STANDBY: u8 = 0xe2;
pub const CMD_IDLE: u8 = 0xe3;
pub const CMD_CHECK_POWER_MODE: u8 = 0xe5;
pub const CMD_SLEEP: u8 = 0xe6;
pub const CMD_FLUSH_CACHE: u8 = 0xe7;
pub const CMD_FLUSH_CACHE_EXT: u8 = 0xea;
pub const CMD_IDENTIFY_DEVICE: u8 = 0xec;
pub const CMD_SET_FEATURES: u8 = 0xef;
pub const CMD_READ_NATIVE_MAX_ADDRESS: u8 = 0xf8;
// Pre-ATA-4 power management opcodes (ATA-3 8.x), still sent by old drivers.
pub const CMD_STANDBY_IMMEDIATE_OLD: u8 = 0x94;
pub const CMD_IDLE_IMMEDIATE_OLD: u8 = 0x95;
pub const CMD_STANDBY_OLD: u8 = 0x96;
pub const CMD_IDLE_OLD: u8 = 0x97;
pub const CMD_CHECK_POWER_MODE_OLD: u8 = 0x98;
pub const CMD_SLEEP_OLD: u8 = 0x99;

// ATA8-ACS 7.48 SET FEATURES subcommands (Features field).
pub const FEATURE_ENABLE_WRITE_CACHE: u8 = 0x02;
pub const FEATURE_SET_TRANSFER_MODE: u8 = 0x03;
pub const FEATURE_DISABLE_READ_LOOK_AHEAD: u8 = 0x55;
pub const FEATURE_DISABLE_REVERTING_TO_DEFAULTS: u8 = 0x66;
pub const FEATURE_DISABLE_WRITE_CACHE: u8 = 0x82;
pub const FEATURE_ENABLE_READ_LOOK_AHEAD: u8 = 0xaa;
pub const FEATURE_ENABLE_REVERTING_TO_DEFAULTS: u8 = 0xcc;
/// Enable/disable SATA features (SATA 2.6 13.3.1); accepted and ignored.
pub const FEATURE_ENABLE_SATA_FEATURE: u8 = 0x10;
pub const FEATURE_DISABLE_SATA_FEATURE: u8 = 0x90;

// ATA8-ACS 7.48.7 table 52: transfer mode values (Count field).
pub const XFER_PIO_DEFAULT: u8 = 0x00;
pub const XFER_PIO_DEFAULT_NO_IORDY: u8 = 0x01;
pub const XFER_PIO_FLOW_CONTROL: u8 = 0x08;
pub const XFER_MWDMA: u8 = 0x20;
pub const XFER_UDMA: u8 = 0x40;
pub const XFER_MODE_MASK: u8 = 0x07;

/// Highest multiword DMA mode and Ultra DMA mode offered.
pub const MAX_MWDMA_MODE: u8 = 2;
pub const MAX_UDMA_MODE: u8 = 5;
/// Most sectors per DRQ block in READ/WRITE MULTIPLE (IDENTIFY word 47).
pub const MAX_MULTIPLE_SECTORS: u16 = 16;
/// NCQ queue depth (IDENTIFY word 75 holds depth - 1).
pub const NCQ_DEPTH: u16 = 32;

// ATA8-ACS 7.14 CHECK POWER MODE: Count field results.
pub const POWER_MODE_STANDBY: u8 = 0x00;
pub const POWER_MODE_IDLE: u8 = 0x80;
pub const POWER_MODE_ACTIVE_OR_IDLE: u8 = 0xff;

// ATA8-ACS 7.10 DATA SET MANAGEMENT: the TRIM bit (Features bit 0) and the
// LBA range entry (7.10.3.2): bits 47:0 LBA, bits 63:48 length in sectors.
pub const DSM_TRIM: u16 = 0x0001;
pub const DSM_RANGE_LBA_MASK: u64 = 0x0000_ffff_ffff_ffff;
pub const DSM_RANGE_LENGTH_SHIFT: u32 = 48;
/// 512-byte blocks of range entries accepted per command (IDENTIFY word 105).
pub const DSM_MAX_BLOCKS: u16 = 8;

// ATA8-ACS A.1: General Purpose Log addresses.
pub const LOG_DIRECTORY: u8 = 0x00;
pub const LOG_NCQ_COMMAND_ERROR: u8 = 0x10;
/// NCQ command error log (ATA8-ACS A.9 / SATA 2.6 13.7.4), byte 0: the NQ
/// bit (7) and the tag (4:0).
pub const NCQ_LOG_NQ: u8 = 0x80;

/// Largest LBA reachable through 28-bit commands plus one.
pub const LBA28_LIMIT: u64 = 1 << 28;
/// Largest LBA reachable through 48-bit commands plus one.
pub const LBA48_LIMIT: u64 = 1 << 48;

/// Words of IDENTIFY (PACKET) DEVICE data (ATA8-ACS 7.16.7, table 22; and
/// 7.17.7 for the packet variant).
pub mod identify {
    pub const GENERAL_CONFIG: usize = 0;
    pub const CYLINDERS: usize = 1;
    pub const SPECIFIC_CONFIG: usize = 2;
    pub const HEADS: usize = 3;
    pub const SECTORS_PER_TRACK: usize = 6;
    /// Words 10-19: serial number, 20 ASCII characters.
    pub const SERIAL: usize = 10;
    pub const SERIAL_LEN: usize = 20;
    /// Words 23-26: firmware revision, 8 characters.
    pub const FIRMWARE: usize = 23;
    pub const FIRMWARE_LEN: usize = 8;
    /// Words 27-46: model number, 40 characters.
    pub const MODEL: usize = 27;
    pub const MODEL_LEN: usize = 40;
    pub const MAX_MULTIPLE: usize = 47;
    pub const CAPABILITIES: usize = 49;
    pub const CAPABILITIES_2: usize = 50;
    pub const PIO_TIMING: usize = 51;
    pub const DMA_TIMING: usize = 52;
    pub const FIELD_VALIDITY: usize = 53;
    pub const CURRENT_CYLINDERS: usize = 54;
    pub const CURRENT_HEADS: usize = 55;
    pub const CURRENT_SECTORS: usize = 56;
    /// Words 57-58: current CHS capacity in sectors.
    pub const CURRENT_CAPACITY: usize = 57;
    pub const CURRENT_MULTIPLE: usize = 59;
    /// Words 60-61: sectors addressable through 28-bit commands.
    pub const LBA28_SECTORS: usize = 60;
    pub const SINGLEWORD_DMA: usize = 62;
    pub const MULTIWORD_DMA: usize = 63;
    pub const PIO_MODES: usize = 64;
    pub const MIN_MWDMA_CYCLE: usize = 65;
    pub const REC_MWDMA_CYCLE: usize = 66;
    pub const MIN_PIO_CYCLE: usize = 67;
    pub const MIN_PIO_CYCLE_IORDY: usize = 68;
    pub const ADDITIONAL_SUPPORTED: usize = 69;
    pub const QUEUE_DEPTH: usize = 75;
    pub const SATA_CAPABILITIES: usize = 76;
    pub const SATA_FEATURES_SUPPORTED: usize = 78;
    pub const SATA_FEATURES_ENABLED: usize = 79;
    pub const MAJOR_VERSION: usize = 80;
    pub const MINOR_VERSION: usize = 81;
    pub const COMMAND_SET_1: usize = 82;
    pub const COMMAND_SET_2: usize = 83;
    pub const COMMAND_SET_EXT: usize = 84;
    pub const COMMAND_SET_1_ENABLED: usize = 85;
    pub const COMMAND_SET_2_ENABLED: usize = 86;
    pub const COMMAND_SET_EXT_ENABLED: usize = 87;
    pub const ULTRA_DMA: usize = 88;
    pub const HW_RESET_RESULT: usize = 93;
    /// Words 100-103: sectors addressable through 48-bit commands.
    pub const LBA48_SECTORS: usize = 100;
    pub const DSM_MAX_BLOCKS: usize = 105;
    pub const SECTOR_SIZE: usize = 106;
    /// Words 117-118: logical sector size in words, when word 106 bit 12.
    pub const LOGICAL_SECTOR_WORDS: usize = 117;
    pub const DSM_SUPPORT: usize = 169;
    pub const ROTATION_RATE: usize = 217;
    pub const TRANSPORT_MAJOR: usize = 222;
    pub const INTEGRITY: usize = 255;

    // Word 0 (ATA device): bit 15 clear = ATA; bit 7 = removable media.
    pub const CONFIG_ATA_FIXED: u16 = 0x0040;
    // Word 0 (ATAPI, 7.17.7.1): 10b in 15:14, CD-ROM (05h) in 12:8,
    // removable (7), DRQ within 50 us (6:5 = 10b), 12-byte packets (1:0 = 0).
    pub const CONFIG_ATAPI_CDROM: u16 = 0x85c0;
    // Word 49.
    pub const CAP_DMA: u16 = 1 << 8;
    pub const CAP_LBA: u16 = 1 << 9;
    pub const CAP_IORDY_DISABLE: u16 = 1 << 10;
    pub const CAP_IORDY: u16 = 1 << 11;
    // Word 50: bit 14 shall be one.
    pub const CAP2_VALID: u16 = 0x4000;
    // Word 53: words 54-58, 64-70 and 88 are valid.
    pub const VALID_54_58: u16 = 1 << 0;
    pub const VALID_64_70: u16 = 1 << 1;
    pub const VALID_88: u16 = 1 << 2;
    // Word 59: bit 8 = the multiple setting in bits 7:0 is valid.
    pub const MULTIPLE_VALID: u16 = 1 << 8;
    // Word 76 (SATA 2.6 13.3.1.1): Gen1 and Gen2 speeds, NCQ.
    pub const SATA_GEN1: u16 = 1 << 1;
    pub const SATA_GEN2: u16 = 1 << 2;
    pub const SATA_NCQ: u16 = 1 << 8;
    // Words 82/85.
    pub const CS1_WRITE_CACHE: u16 = 1 << 5;
    pub const CS1_LOOK_AHEAD: u16 = 1 << 6;
    pub const CS1_POWER_MANAGEMENT: u16 = 1 << 3;
    pub const CS1_PACKET: u16 = 1 << 4;
    pub const CS1_NOP: u16 = 1 << 14;
    // Words 83/86.
    pub const CS2_ONE: u16 = 1 << 14;
    pub const CS2_FLUSH_CACHE_EXT: u16 = 1 << 13;
    pub const CS2_FLUSH_CACHE: u16 = 1 << 12;
    pub const CS2_LBA48: u16 = 1 << 10;
    // Words 84/87.
    pub const CSX_ONE: u16 = 1 << 14;
    pub const CSX_FUA: u16 = 1 << 6;
    pub const CSX_GPL: u16 = 1 << 5;
    // Word 106.
    pub const SECTOR_SIZE_VALID: u16 = 0x4000;
    pub const SECTOR_SIZE_MULTIPLE_LOGICAL: u16 = 1 << 13;
    pub const SECTOR_SIZE_LARGE_LOGICAL: u16 = 1 << 12;
    // Word 169 bit 0: TRIM supported.
    pub const DSM_TRIM_SUPPORTED: u16 = 1 << 0;
    /// Word 217: non-rotating medium.
    pub const NON_ROTATING: u16 = 0x0001;
    /// Word 255 bits 7:0: the integrity word signature.
    pub const INTEGRITY_SIGNATURE: u16 = 0x00a5;
    /// Word 80: ATA/ATAPI-4 through ATA8-ACS (bits 4-8).
    pub const MAJOR_ATA4_TO_ATA8: u16 = 0x01f0;
    /// Word 80 for the packet device: ATAPI-4 through ATA/ATAPI-7.
    pub const MAJOR_ATAPI4_TO_7: u16 = 0x00f0;
    /// Word 93 of a parallel device 0: bit 14 one, bit 13 CBLID above
    /// V_IH (80-conductor cable), bit 0 one, device 1 not detected.
    pub const HW_RESET_DEVICE0: u16 = 0x6001;
    /// Word 222: serial transport (bits 15:12 = 1), SATA 1.0a, II and 2.5.
    pub const TRANSPORT_SERIAL: u16 = 0x1000 | 0x000f;
}
