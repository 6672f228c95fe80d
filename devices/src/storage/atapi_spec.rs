//! The SCSI/MMC layouts an ATAPI CD-ROM speaks inside PACKET commands:
//! operation codes, sense keys and additional sense codes, and the fixed
//! parts of the responses. References: SCSI Primary Commands (SPC-3),
//! Multi-Media Commands (MMC-5, T10/1675-D), and ATA8-ACS 7.18 (PACKET).

/// Bytes of a command packet (IDENTIFY PACKET DEVICE word 0 bits 1:0 = 0).
pub const CDB_LEN: usize = 12;
/// The logical block size of CD and DVD data media (MMC-5 4.2).
pub const CD_BLOCK_SIZE: u64 = 2048;

// Operation codes (SPC-3 table D.2, MMC-5 table 238).
pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const INQUIRY: u8 = 0x12;
pub const MODE_SELECT_6: u8 = 0x15;
pub const MODE_SENSE_6: u8 = 0x1a;
pub const START_STOP_UNIT: u8 = 0x1b;
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
pub const READ_FORMAT_CAPACITIES: u8 = 0x23;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const SEEK_10: u8 = 0x2b;
pub const READ_SUBCHANNEL: u8 = 0x42;
pub const READ_TOC_PMA_ATIP: u8 = 0x43;
pub const GET_CONFIGURATION: u8 = 0x46;
pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
pub const READ_DISC_INFORMATION: u8 = 0x51;
pub const READ_TRACK_INFORMATION: u8 = 0x52;
pub const MODE_SELECT_10: u8 = 0x55;
pub const MODE_SENSE_10: u8 = 0x5a;
pub const READ_12: u8 = 0xa8;
pub const GET_PERFORMANCE: u8 = 0xac;
pub const READ_DVD_STRUCTURE: u8 = 0xad;
pub const SET_CD_SPEED: u8 = 0xbb;
pub const MECHANISM_STATUS: u8 = 0xbd;
pub const READ_CD: u8 = 0xbe;

// Sense keys (SPC-3 table 27).
pub const SENSE_NO_SENSE: u8 = 0x0;
pub const SENSE_NOT_READY: u8 = 0x2;
pub const SENSE_MEDIUM_ERROR: u8 = 0x3;
pub const SENSE_ILLEGAL_REQUEST: u8 = 0x5;
pub const SENSE_UNIT_ATTENTION: u8 = 0x6;
pub const SENSE_DATA_PROTECT: u8 = 0x7;

/// Additional sense code and qualifier (SPC-3 table 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

pub const ASC_NONE: Asc = Asc(0x00, 0x00);
pub const ASC_UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
pub const ASC_INVALID_OPCODE: Asc = Asc(0x20, 0x00);
pub const ASC_LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
pub const ASC_INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
pub const ASC_WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
pub const ASC_MEDIUM_MAY_HAVE_CHANGED: Asc = Asc(0x28, 0x00);
pub const ASC_POWER_ON_RESET: Asc = Asc(0x29, 0x00);
pub const ASC_SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
pub const ASC_MEDIUM_NOT_PRESENT: Asc = Asc(0x3a, 0x00);
pub const ASC_MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x53, 0x02);

/// Fixed-format sense data (SPC-3 4.5.3): response code 70h, 18 bytes.
pub const SENSE_FIXED_CURRENT: u8 = 0x70;
pub const SENSE_DATA_LEN: usize = 18;

/// INQUIRY (SPC-3 6.4.2): peripheral device type 05h (CD/DVD), RMB.
pub const PERIPHERAL_CDROM: u8 = 0x05;
pub const INQUIRY_RMB: u8 = 0x80;
pub const INQUIRY_LEN: usize = 36;

// Mode pages (MMC-5 7).
pub const MODE_PAGE_ERROR_RECOVERY: u8 = 0x01;
pub const MODE_PAGE_CAPABILITIES: u8 = 0x2a;
pub const MODE_PAGE_ALL: u8 = 0x3f;
/// Page control "saved values" (bits 7:6 = 11b) is not supported.
pub const MODE_PC_SAVED: u8 = 0x03;

// Profiles (MMC-5 table 89).
pub const PROFILE_CD_ROM: u16 = 0x0008;
pub const PROFILE_DVD_ROM: u16 = 0x0010;
/// Media larger than a CD (about 700 MiB) is presented as a DVD-ROM.
pub const CD_MAX_BYTES: u64 = 800 * 1024 * 1024;

// Features (MMC-5 5.3).
pub const FEATURE_PROFILE_LIST: u16 = 0x0000;
pub const FEATURE_CORE: u16 = 0x0001;
pub const FEATURE_MORPHING: u16 = 0x0002;
pub const FEATURE_REMOVABLE_MEDIUM: u16 = 0x0003;
pub const FEATURE_RANDOM_READABLE: u16 = 0x0010;
pub const FEATURE_CD_READ: u16 = 0x001e;
pub const FEATURE_DVD_READ: u16 = 0x001f;
/// Physical interface standard ATAPI in the Core feature (MMC-5 5.3.2).
pub const INTERFACE_ATAPI: u32 = 0x0000_0002;

/// READ TOC/PMA/ATIP formats (MMC-5 6.40).
pub const TOC_FORMAT_TOC: u8 = 0x0;
pub const TOC_FORMAT_SESSION_INFO: u8 = 0x1;
pub const TOC_FORMAT_FULL_TOC: u8 = 0x2;
/// The lead-out track number.
pub const TOC_LEAD_OUT: u8 = 0xaa;
/// ADR 1 (Q sub-channel position), control 4 (data track, copy prohibited
/// clear): byte 1 of a track descriptor.
pub const TOC_ADR_CONTROL_DATA: u8 = 0x14;

/// GET EVENT STATUS NOTIFICATION (MMC-5 6.5): the media class.
pub const EVENT_CLASS_MEDIA: u8 = 0x04;
pub const EVENT_CLASS_MEDIA_BIT: u8 = 1 << EVENT_CLASS_MEDIA;
pub const MEDIA_EVENT_NONE: u8 = 0x0;
/// The user pressed the eject button (MMC-6 table 150: EjectRequest).
pub const MEDIA_EVENT_EJECT_REQUEST: u8 = 0x1;
pub const MEDIA_EVENT_NEW_MEDIA: u8 = 0x2;
pub const MEDIA_EVENT_REMOVAL: u8 = 0x3;
/// Media status byte: door or tray open (bit 0), media present (bit 1).
pub const MEDIA_STATUS_PRESENT: u8 = 0x02;
/// Polled operation (byte 1 bit 0); asynchronous is not supported.
pub const GESN_POLLED: u8 = 0x01;

/// Converts a logical block address to minute/second/frame (MMC-5 table
/// 620: LBA 0 is 00:02:00).
pub fn lba_to_msf(lba: u32) -> [u8; 3] {
    let frames = lba + 150;
    [
        (frames / (60 * 75)) as u8,
        ((frames / 75) % 60) as u8,
        (frames % 75) as u8,
    ]
}
