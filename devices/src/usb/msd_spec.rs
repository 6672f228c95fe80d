//! USB mass storage, Bulk-Only Transport (USB Mass Storage Class Bulk-Only
//! Transport 1.0, "BOT"), carrying SCSI commands (SPC-4 and SBC-3
//! command and data layouts).

/// Interface class, subclass (SCSI transparent command set) and protocol
/// (bulk-only) (MSC Overview 1.4, tables 1 and 2).
pub const CLASS_MASS_STORAGE: u8 = 0x08;
pub const SUBCLASS_SCSI: u8 = 0x06;
pub const PROTOCOL_BOT: u8 = 0x50;

/// Class requests (BOT 3.1, 3.2).
pub const REQ_BULK_ONLY_RESET: u8 = 0xff;
pub const REQ_GET_MAX_LUN: u8 = 0xfe;

/// Command Block Wrapper (BOT 5.1): 31 bytes.
pub const CBW_LEN: usize = 31;
pub const CBW_SIGNATURE: u32 = 0x4342_5355;
pub const CBW_TAG: usize = 4;
pub const CBW_DATA_LEN: usize = 8;
pub const CBW_FLAGS: usize = 12;
pub const CBW_FLAG_IN: u8 = 0x80;
pub const CBW_LUN: usize = 13;
pub const CBW_CB_LEN: usize = 14;
pub const CBW_CB: usize = 15;
pub const CB_MAX: usize = 16;

/// Command Status Wrapper (BOT 5.2): 13 bytes.
pub const CSW_LEN: usize = 13;
pub const CSW_SIGNATURE: u32 = 0x5342_5355;
pub const CSW_PASSED: u8 = 0;
pub const CSW_FAILED: u8 = 1;
pub const CSW_PHASE_ERROR: u8 = 2;

/// The SCSI codes an ATAPI CD-ROM shares with a USB disk (SPC-4 and
/// SBC-3 keep SPC-3's values).
pub use crate::storage::atapi_spec::{
    Asc, ASC_INVALID_FIELD_IN_CDB, ASC_INVALID_OPCODE, ASC_LBA_OUT_OF_RANGE, ASC_NONE,
    ASC_UNRECOVERED_READ_ERROR, ASC_WRITE_PROTECTED, INQUIRY, INQUIRY_LEN, INQUIRY_RMB,
    MODE_SENSE_10, MODE_SENSE_6, PREVENT_ALLOW_MEDIUM_REMOVAL, READ_10, READ_12, READ_CAPACITY_10,
    REQUEST_SENSE, SENSE_DATA_LEN as SENSE_FIXED_LEN, SENSE_DATA_PROTECT,
    SENSE_FIXED_CURRENT as SENSE_RESPONSE_CURRENT, SENSE_ILLEGAL_REQUEST, SENSE_MEDIUM_ERROR,
    SENSE_NO_SENSE, START_STOP_UNIT, TEST_UNIT_READY,
};

/// Block-device operation codes (SBC-3).
pub const WRITE_10: u8 = 0x2a;
pub const VERIFY_10: u8 = 0x2f;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const READ_16: u8 = 0x88;
pub const WRITE_16: u8 = 0x8a;
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
/// SERVICE ACTION IN(16) service action READ CAPACITY(16) (SBC-3 5.16).
pub const SA_READ_CAPACITY_16: u8 = 0x10;
pub const WRITE_12: u8 = 0xaa;

/// Additional sense codes only a disk reports (SPC-4 annex D).
pub const ASC_LUN_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
pub const ASC_WRITE_ERROR: Asc = Asc(0x0c, 0x00);

/// Standard INQUIRY data (SPC-4 6.4.2): peripheral device type 0 (direct
/// access block device), version 6 = SPC-4, response data format 2.
pub const INQUIRY_VERSION_SPC4: u8 = 0x06;
pub const INQUIRY_RESPONSE_FORMAT: u8 = 0x02;

/// MODE SENSE: the device-specific parameter's write-protect bit (SBC-3
/// 6.4.1), the caching mode page (SBC-3 6.4.5, 20 bytes) and "all pages".
pub const MODE_WP: u8 = 0x80;
pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CACHING_LEN: usize = 20;
pub const PAGE_ALL: u8 = 0x3f;
