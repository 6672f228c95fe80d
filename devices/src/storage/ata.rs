//! The ATA command layer shared by the IDE and AHCI front ends.
//!
//! A front end hands a command's registers ([`TaskFile`]) to
//! [`AtaDevice::execute`] and gets back what happens next ([`Next`]):
//! the command is done, or a data phase follows, or (ATAPI) a command
//! packet is expected. Data phases move through [`AtaDevice::data_in`] and
//! [`AtaDevice::data_out`] a DRQ block at a time (PIO over IDE), or whole
//! through [`AtaDevice::run_dma`] against a scatter-gather list (bus-master
//! DMA, AHCI PRDTs), and end with [`AtaDevice::finish`]. Everything a guest
//! sends is validated here; the block stack is only reached with in-range,
//! sector-aligned requests.

use std::sync::Arc;

use rehost_disk::{BlockDevice, BlockError};

use super::ata_spec::{self as spec, identify as id};
use super::atapi::Cdrom;
use super::dma::{DmaFault, DmaTarget};
use crate::guest_error;

/// The physical link the device sits on: a few IDENTIFY words and the
/// queued commands depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Parallel ATA behind an IDE controller.
    Parallel,
    /// Serial ATA behind an AHCI port.
    Serial,
}

/// The command block registers, as written by the host (inputs) and, after
/// a command, as set by the device (outputs such as the LBA of an error or
/// the signature after a reset). The `_exp` fields are the "previous"
/// (HOB) halves used by 48-bit commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskFile {
    pub command: u8,
    pub features: u8,
    pub features_exp: u8,
    pub count: u8,
    pub count_exp: u8,
    pub lba_low: u8,
    pub lba_mid: u8,
    pub lba_high: u8,
    pub lba_low_exp: u8,
    pub lba_mid_exp: u8,
    pub lba_high_exp: u8,
    pub device: u8,
}

impl TaskFile {
    /// The registers a device reports, in the byte layout shared by the
    /// SATA Register D2H / PIO Setup FISes and the NCQ Command Error log
    /// (bytes 4-13: LBA low/mid/high, device, their exp bytes, count).
    pub fn store_regs(&self, out: &mut [u8]) {
        out[4] = self.lba_low;
        out[5] = self.lba_mid;
        out[6] = self.lba_high;
        out[7] = self.device;
        out[8] = self.lba_low_exp;
        out[9] = self.lba_mid_exp;
        out[10] = self.lba_high_exp;
        out[12] = self.count;
        out[13] = self.count_exp;
    }

    /// The 28-bit LBA: bits 27:24 come from the Device register.
    pub fn lba28(&self) -> u64 {
        u64::from(self.lba_low)
            | u64::from(self.lba_mid) << 8
            | u64::from(self.lba_high) << 16
            | u64::from(self.device & 0x0f) << 24
    }

    pub fn lba48(&self) -> u64 {
        u64::from(self.lba_low)
            | u64::from(self.lba_mid) << 8
            | u64::from(self.lba_high) << 16
            | u64::from(self.lba_low_exp) << 24
            | u64::from(self.lba_mid_exp) << 32
            | u64::from(self.lba_high_exp) << 40
    }

    /// Sector count of a 28-bit command: 0 means 256.
    pub fn count28(&self) -> u64 {
        match self.count {
            0 => 256,
            n => u64::from(n),
        }
    }

    /// Sector count of a 48-bit command: 0 means 65536.
    pub fn count48(&self) -> u64 {
        match u16::from(self.count) | u16::from(self.count_exp) << 8 {
            0 => 65536,
            n => u64::from(n),
        }
    }

    pub fn features16(&self) -> u16 {
        u16::from(self.features) | u16::from(self.features_exp) << 8
    }

    pub fn count16(&self) -> u16 {
        u16::from(self.count) | u16::from(self.count_exp) << 8
    }

    /// Loads an LBA into the address registers (28-bit layout when `lba48`
    /// is false: bits 27:24 go to the Device register).
    pub fn set_lba(&mut self, lba: u64, lba48: bool) {
        self.lba_low = lba as u8;
        self.lba_mid = (lba >> 8) as u8;
        self.lba_high = (lba >> 16) as u8;
        if lba48 {
            self.lba_low_exp = (lba >> 24) as u8;
            self.lba_mid_exp = (lba >> 32) as u8;
            self.lba_high_exp = (lba >> 40) as u8;
        } else {
            self.device = (self.device & 0xf0) | ((lba >> 24) as u8 & 0x0f);
        }
    }

    /// Loads the signature a device reports after a reset or diagnostic
    /// (ATA8-ACS 9.12).
    pub fn set_signature(&mut self, atapi: bool) {
        let (mid, high) = if atapi {
            spec::SIGNATURE_ATAPI
        } else {
            spec::SIGNATURE_ATA
        };
        self.count = 1;
        self.lba_low = 1;
        self.lba_mid = mid;
        self.lba_high = high;
        self.device &= spec::DEVICE_DEV1;
    }
}

/// The Status and Error registers at the end of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtaStatus {
    pub status: u8,
    pub error: u8,
}

impl AtaStatus {
    pub const OK: AtaStatus = AtaStatus {
        status: spec::STATUS_DRDY | spec::STATUS_DSC,
        error: 0,
    };

    pub const fn error(error: u8) -> AtaStatus {
        AtaStatus {
            status: spec::STATUS_DRDY | spec::STATUS_DSC | spec::STATUS_ERR,
            error,
        }
    }

    pub const ABORTED: AtaStatus = AtaStatus::error(spec::ERROR_ABRT);

    pub fn is_error(&self) -> bool {
        self.status & spec::STATUS_ERR != 0
    }
}

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device to host (reads).
    In,
    /// Host to device (writes).
    Out,
}

/// How the data of a command moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Pio,
    Dma,
    /// First-party DMA queued (NCQ) with its tag.
    Queued {
        tag: u8,
    },
}

/// What the data of a phase is.
#[derive(Debug)]
pub(crate) enum DataOp {
    /// Bytes the device prepared (IDENTIFY data, log pages, ATAPI replies).
    Buffer(Vec<u8>),
    /// A medium read starting at a byte offset.
    ReadMedium { offset: u64 },
    /// A medium write starting at a byte offset.
    WriteMedium { offset: u64, fua: bool },
    /// DATA SET MANAGEMENT range entries, collected and then trimmed.
    Trim { entries: Vec<u8> },
}

/// Bytes read ahead from the medium for PIO reads.
const STAGE_BYTES: usize = 64 * 1024;
/// Most bytes moved per block-stack request in a DMA transfer.
const DMA_CHUNK_BYTES: usize = 256 * 1024;

/// A data phase in progress.
#[derive(Debug)]
pub struct DataPhase {
    pub direction: Direction,
    pub protocol: Protocol,
    /// Bytes the phase moves in total.
    pub len: u64,
    /// Bytes per DRQ block for PIO (the last block may be shorter).
    pub block: u32,
    /// Bytes moved so far.
    pub done: u64,
    pub(crate) op: DataOp,
    /// The unit LBAs are counted in, for error reporting.
    unit: u64,
    /// Whether the command was a 48-bit one (how to report an error LBA).
    lba48: bool,
    /// PIO read-ahead: bytes staged from offset `staged_at` of the phase.
    staged: Vec<u8>,
    staged_at: u64,
}

impl DataPhase {
    pub(crate) fn new(
        direction: Direction,
        protocol: Protocol,
        len: u64,
        block: u32,
        op: DataOp,
    ) -> Self {
        Self {
            direction,
            protocol,
            len,
            block: block.max(2),
            done: 0,
            op,
            unit: 512,
            lba48: true,
            staged: Vec::new(),
            staged_at: 0,
        }
    }

    fn with_unit(mut self, unit: u64, lba48: bool) -> Self {
        self.unit = unit;
        self.lba48 = lba48;
        self
    }

    pub fn remaining(&self) -> u64 {
        self.len - self.done
    }

    /// The size of the next PIO DRQ block.
    pub fn next_block(&self) -> usize {
        self.remaining().min(u64::from(self.block)) as usize
    }

    pub fn is_complete(&self) -> bool {
        self.done >= self.len
    }
}

/// What follows a command.
#[derive(Debug)]
pub enum Next {
    /// The command is done: these are its Status and Error registers; the
    /// task file holds its output registers.
    Done(AtaStatus),
    /// A data phase follows.
    Data(DataPhase),
    /// PACKET: the command packet comes next (`dma` from Features bit 0;
    /// `byte_count_limit` from the LBA Mid/High registers).
    Packet { dma: bool, byte_count_limit: u16 },
}

/// How a DMA data phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaEnd {
    /// Bytes moved between host memory and the device.
    pub moved: u64,
    /// The device's ending status.
    pub status: AtaStatus,
    /// Set when host memory, not the device, ended the transfer.
    pub fault: Option<DmaFault>,
}

/// Strings the device reports in IDENTIFY data and INQUIRY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveIdentity {
    pub serial: String,
    pub model: String,
    pub firmware: String,
}

/// Power modes (ATA8-ACS 4.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerMode {
    Active,
    Idle,
    Standby,
    Sleep,
}

/// The NCQ command error log (ATA8-ACS A.9): what failed and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NcqError {
    tag: u8,
    status: AtaStatus,
    tf: TaskFile,
}

/// A hard disk.
#[derive(Debug)]
pub struct Disk {
    medium: Arc<dyn BlockDevice>,
    sectors: u64,
    sector_size: u32,
    physical_sector_size: u32,
    read_only: bool,
    /// Sectors per DRQ block of READ/WRITE MULTIPLE; 0 = not set.
    multiple: u16,
    write_cache: bool,
    look_ahead: bool,
    /// CHS translation (INITIALIZE DEVICE PARAMETERS).
    heads: u16,
    sectors_per_track: u16,
    /// Transfer mode selected by SET FEATURES 03h (the Count value).
    xfer_mode: u8,
    /// Pending NCQ error: queued commands abort until log 10h is read.
    ncq_error: Option<NcqError>,
}

#[derive(Debug)]
enum Media {
    Disk(Disk),
    Cdrom(Cdrom),
}

/// One ATA or ATAPI device.
#[derive(Debug)]
pub struct AtaDevice {
    link: Link,
    identity: DriveIdentity,
    power: PowerMode,
    media: Media,
    /// `run_dma`'s bounce buffer, kept between requests (up to
    /// `DMA_CHUNK_BYTES`) so that each request does not allocate one.
    dma_buf: Vec<u8>,
}

fn put_string(words: &mut [u16], start: usize, len: usize, s: &str) {
    let mut bytes: Vec<u8> = s
        .bytes()
        .filter(|b| b.is_ascii_graphic() || *b == b' ')
        .collect();
    bytes.resize(len, b' ');
    for i in 0..len / 2 {
        words[start + i] = u16::from(bytes[2 * i]) << 8 | u16::from(bytes[2 * i + 1]);
    }
}

/// Puts serial number, firmware revision and model into IDENTIFY words.
pub(crate) fn put_identify_strings(words: &mut [u16; 256], ident: &DriveIdentity) {
    put_string(words, id::SERIAL, id::SERIAL_LEN, &ident.serial);
    put_string(words, id::FIRMWARE, id::FIRMWARE_LEN, &ident.firmware);
    put_string(words, id::MODEL, id::MODEL_LEN, &ident.model);
}

/// Serializes IDENTIFY words, setting the integrity word (word 255:
/// signature A5h and a checksum making all 512 bytes sum to zero).
pub(crate) fn identify_bytes(words: &mut [u16; 256]) -> Vec<u8> {
    words[id::INTEGRITY] = id::INTEGRITY_SIGNATURE;
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    set_checksum(&mut bytes);
    bytes
}

/// Sets the last byte of a 512-byte data structure so that all its bytes
/// sum to zero (ATA8-ACS: IDENTIFY integrity word, log pages).
fn set_checksum(block: &mut [u8]) {
    let sum = block[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    block[511] = sum.wrapping_neg();
}

impl Disk {
    fn new(medium: Arc<dyn BlockDevice>, read_only: bool) -> Self {
        let g = medium.geometry();
        let sector_size = match g.logical_sector_size {
            4096 => 4096,
            _ => 512,
        };
        let physical = g.physical_sector_size.max(sector_size);
        Self {
            sectors: g.size / u64::from(sector_size),
            sector_size,
            physical_sector_size: physical,
            read_only: read_only || g.read_only,
            medium,
            multiple: spec::MAX_MULTIPLE_SECTORS,
            write_cache: true,
            look_ahead: true,
            heads: 16,
            sectors_per_track: 63,
            xfer_mode: spec::XFER_UDMA | spec::MAX_UDMA_MODE,
            ncq_error: None,
        }
    }

    /// Commits the medium's write cache; a read-only disk has nothing to
    /// commit.
    fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            Ok(())
        } else {
            self.medium.flush()
        }
    }

    /// Default CHS geometry (ATA8-ACS Annex B: 16 heads, 63 sectors).
    fn default_cylinders(&self) -> u16 {
        (self.sectors / (16 * 63)).clamp(1, 16383) as u16
    }

    fn current_cylinders(&self) -> u16 {
        let per_cyl = u64::from(self.heads) * u64::from(self.sectors_per_track);
        if per_cyl == 0 {
            return 0;
        }
        (self.sectors.min(16383 * 16 * 63) / per_cyl).min(65535) as u16
    }

    fn identify(&self, link: Link, ident: &DriveIdentity) -> Vec<u8> {
        let mut w = [0u16; 256];
        w[id::GENERAL_CONFIG] = id::CONFIG_ATA_FIXED;
        w[id::CYLINDERS] = self.default_cylinders();
        w[id::SPECIFIC_CONFIG] = 0xc837; // spin-up not required, IDENTIFY complete
        w[id::HEADS] = 16;
        w[id::SECTORS_PER_TRACK] = 63;
        put_identify_strings(&mut w, ident);
        w[id::MAX_MULTIPLE] = 0x8000 | spec::MAX_MULTIPLE_SECTORS;
        w[id::CAPABILITIES] = id::CAP_LBA | id::CAP_DMA | id::CAP_IORDY | id::CAP_IORDY_DISABLE;
        w[id::CAPABILITIES_2] = id::CAP2_VALID;
        w[id::PIO_TIMING] = 0x0200;
        w[id::DMA_TIMING] = 0x0200;
        w[id::FIELD_VALIDITY] = id::VALID_54_58 | id::VALID_64_70 | id::VALID_88;
        let cyl = self.current_cylinders();
        w[id::CURRENT_CYLINDERS] = cyl;
        w[id::CURRENT_HEADS] = self.heads;
        w[id::CURRENT_SECTORS] = self.sectors_per_track;
        let chs_capacity =
            u32::from(cyl) * u32::from(self.heads) * u32::from(self.sectors_per_track);
        w[id::CURRENT_CAPACITY] = chs_capacity as u16;
        w[id::CURRENT_CAPACITY + 1] = (chs_capacity >> 16) as u16;
        w[id::CURRENT_MULTIPLE] = if self.multiple > 0 {
            id::MULTIPLE_VALID | self.multiple
        } else {
            0
        };
        let lba28 = self.sectors.min(spec::LBA28_LIMIT - 1) as u32;
        w[id::LBA28_SECTORS] = lba28 as u16;
        w[id::LBA28_SECTORS + 1] = (lba28 >> 16) as u16;
        let mode = self.xfer_mode & spec::XFER_MODE_MASK;
        let mwdma_sel = if self.xfer_mode & 0xf8 == spec::XFER_MWDMA {
            0x100 << mode
        } else {
            0
        };
        let udma_sel = if self.xfer_mode & 0xf8 == spec::XFER_UDMA {
            0x100 << mode
        } else {
            0
        };
        w[id::MULTIWORD_DMA] = 0x0007 | mwdma_sel;
        w[id::PIO_MODES] = 0x0003;
        w[id::MIN_MWDMA_CYCLE] = 120;
        w[id::REC_MWDMA_CYCLE] = 120;
        w[id::MIN_PIO_CYCLE] = 120;
        w[id::MIN_PIO_CYCLE_IORDY] = 120;
        w[id::ULTRA_DMA] = 0x003f | udma_sel;
        if link == Link::Serial {
            w[id::QUEUE_DEPTH] = spec::NCQ_DEPTH - 1;
            w[id::SATA_CAPABILITIES] = id::SATA_GEN1 | id::SATA_GEN2 | id::SATA_NCQ;
            w[id::TRANSPORT_MAJOR] = id::TRANSPORT_SERIAL;
        } else {
            w[id::HW_RESET_RESULT] = id::HW_RESET_DEVICE0;
        }
        w[id::MAJOR_VERSION] = id::MAJOR_ATA4_TO_ATA8;
        let cs1 = id::CS1_NOP | id::CS1_LOOK_AHEAD | id::CS1_WRITE_CACHE | id::CS1_POWER_MANAGEMENT;
        w[id::COMMAND_SET_1] = cs1;
        let mut cs1_enabled = id::CS1_NOP | id::CS1_POWER_MANAGEMENT;
        if self.write_cache {
            cs1_enabled |= id::CS1_WRITE_CACHE;
        }
        if self.look_ahead {
            cs1_enabled |= id::CS1_LOOK_AHEAD;
        }
        w[id::COMMAND_SET_1_ENABLED] = cs1_enabled;
        let cs2 = id::CS2_FLUSH_CACHE_EXT | id::CS2_FLUSH_CACHE | id::CS2_LBA48;
        w[id::COMMAND_SET_2] = id::CS2_ONE | cs2;
        w[id::COMMAND_SET_2_ENABLED] = cs2;
        w[id::COMMAND_SET_EXT] = id::CSX_ONE | id::CSX_FUA | id::CSX_GPL;
        w[id::COMMAND_SET_EXT_ENABLED] = id::CSX_ONE | id::CSX_FUA | id::CSX_GPL;
        let lba48 = self.sectors.min(spec::LBA48_LIMIT - 1);
        for i in 0..4 {
            w[id::LBA48_SECTORS + i] = (lba48 >> (16 * i)) as u16;
        }
        w[id::DSM_MAX_BLOCKS] = spec::DSM_MAX_BLOCKS;
        let mut sizes = id::SECTOR_SIZE_VALID;
        let ratio = self.physical_sector_size / self.sector_size;
        if ratio > 1 {
            sizes |= id::SECTOR_SIZE_MULTIPLE_LOGICAL | ratio.trailing_zeros() as u16;
        }
        if self.sector_size > 512 {
            sizes |= id::SECTOR_SIZE_LARGE_LOGICAL;
            let words = self.sector_size / 2;
            w[id::LOGICAL_SECTOR_WORDS] = words as u16;
            w[id::LOGICAL_SECTOR_WORDS + 1] = (words >> 16) as u16;
        }
        w[id::SECTOR_SIZE] = sizes;
        w[id::DSM_SUPPORT] = id::DSM_TRIM_SUPPORTED;
        w[id::ROTATION_RATE] = id::NON_ROTATING;
        identify_bytes(&mut w)
    }

    /// The LBA of a read/write command given its addressing mode. CHS
    /// addresses are translated with the current geometry; `None` when
    /// the address does not exist (sector 0, or beyond the geometry).
    fn command_lba(&self, tf: &TaskFile, lba48: bool) -> Option<u64> {
        if lba48 {
            return Some(tf.lba48());
        }
        if tf.device & spec::DEVICE_LBA != 0 {
            return Some(tf.lba28());
        }
        let cylinder = u64::from(tf.lba_mid) | u64::from(tf.lba_high) << 8;
        let head = u64::from(tf.device & 0x0f);
        let sector = u64::from(tf.lba_low);
        let (heads, spt) = (u64::from(self.heads), u64::from(self.sectors_per_track));
        if sector == 0 || sector > spt || head >= heads {
            return None;
        }
        Some((cylinder * heads + head) * spt + sector - 1)
    }
}

/// Maps a block-stack error of a read to ATA error bits.
fn read_error(e: &BlockError) -> u8 {
    match e {
        BlockError::OutOfRange { .. } | BlockError::Misaligned { .. } => spec::ERROR_IDNF,
        _ => spec::ERROR_UNC,
    }
}

/// Maps a block-stack error of a write to ATA error bits.
fn write_error(e: &BlockError) -> u8 {
    match e {
        BlockError::OutOfRange { .. } | BlockError::Misaligned { .. } => spec::ERROR_IDNF,
        _ => spec::ERROR_ABRT,
    }
}

impl AtaDevice {
    /// A hard disk over `medium`. `read_only` refuses writes even when
    /// the medium would take them.
    pub fn disk(
        medium: Arc<dyn BlockDevice>,
        read_only: bool,
        link: Link,
        identity: DriveIdentity,
    ) -> Self {
        Self {
            link,
            identity,
            power: PowerMode::Active,
            media: Media::Disk(Disk::new(medium, read_only)),
            dma_buf: Vec::new(),
        }
    }

    /// An ATAPI CD/DVD-ROM drive with `medium` inserted (or empty).
    pub fn cdrom(
        medium: Option<Arc<dyn BlockDevice>>,
        link: Link,
        identity: DriveIdentity,
    ) -> Self {
        Self {
            link,
            identity,
            power: PowerMode::Active,
            media: Media::Cdrom(Cdrom::new(medium)),
            dma_buf: Vec::new(),
        }
    }

    pub fn is_atapi(&self) -> bool {
        matches!(self.media, Media::Cdrom(_))
    }

    pub fn link(&self) -> Link {
        self.link
    }

    pub fn identity(&self) -> &DriveIdentity {
        &self.identity
    }

    /// The CD-ROM, for medium changes.
    pub fn cdrom_mut(&mut self) -> Option<&mut Cdrom> {
        match &mut self.media {
            Media::Cdrom(c) => Some(c),
            Media::Disk(_) => None,
        }
    }

    /// Sectors the disk holds (0 for ATAPI).
    pub fn sectors(&self) -> u64 {
        match &self.media {
            Media::Disk(d) => d.sectors,
            Media::Cdrom(_) => 0,
        }
    }

    /// Brings the device to its state after a reset (hardware reset,
    /// SRST, COMRESET, DEVICE RESET): loads the signature, returns the
    /// Status/Error pair the device then reports.
    pub fn reset(&mut self, tf: &mut TaskFile) -> AtaStatus {
        if self.power == PowerMode::Sleep {
            self.power = PowerMode::Active;
        }
        tf.set_signature(self.is_atapi());
        match &mut self.media {
            Media::Disk(_) => AtaStatus {
                status: spec::STATUS_DRDY | spec::STATUS_DSC,
                error: spec::DIAGNOSTIC_PASSED,
            },
            Media::Cdrom(c) => {
                c.reset();
                // ATAPI devices clear DRDY after a reset until IDENTIFY
                // PACKET DEVICE (ATA8-ACS 9.12, table 184).
                AtaStatus {
                    status: 0,
                    error: spec::DIAGNOSTIC_PASSED,
                }
            }
        }
    }

    /// Flushes the medium's write cache (for an orderly shutdown).
    pub fn flush(&self) -> Result<(), BlockError> {
        match &self.media {
            Media::Disk(d) => d.flush(),
            _ => Ok(()),
        }
    }

    /// Decodes and starts a command.
    pub fn execute(&mut self, tf: &mut TaskFile) -> Next {
        let command = tf.command;
        if self.power == PowerMode::Sleep
            && !matches!(
                command,
                spec::CMD_DEVICE_RESET | spec::CMD_EXECUTE_DEVICE_DIAGNOSTIC
            )
        {
            guest_error!("ATA: command {command:#04x} to a sleeping device aborted");
            return Next::Done(AtaStatus::ABORTED);
        }
        // Commands every device has.
        match command {
            spec::CMD_EXECUTE_DEVICE_DIAGNOSTIC => return Next::Done(self.reset(tf)),
            spec::CMD_CHECK_POWER_MODE | spec::CMD_CHECK_POWER_MODE_OLD => {
                tf.count = match self.power {
                    PowerMode::Standby => spec::POWER_MODE_STANDBY,
                    PowerMode::Idle => spec::POWER_MODE_IDLE,
                    _ => spec::POWER_MODE_ACTIVE_OR_IDLE,
                };
                return Next::Done(AtaStatus::OK);
            }
            spec::CMD_IDLE_IMMEDIATE
            | spec::CMD_IDLE
            | spec::CMD_IDLE_IMMEDIATE_OLD
            | spec::CMD_IDLE_OLD => {
                self.power = PowerMode::Idle;
                return Next::Done(AtaStatus::OK);
            }
            spec::CMD_STANDBY_IMMEDIATE
            | spec::CMD_STANDBY
            | spec::CMD_STANDBY_IMMEDIATE_OLD
            | spec::CMD_STANDBY_OLD => {
                // Standby stops the spindle: the write cache reaches the
                // medium first.
                if let Err(status) = self.flush_for_command(tf) {
                    return Next::Done(status);
                }
                self.power = PowerMode::Standby;
                return Next::Done(AtaStatus::OK);
            }
            spec::CMD_SLEEP | spec::CMD_SLEEP_OLD => {
                if let Err(status) = self.flush_for_command(tf) {
                    return Next::Done(status);
                }
                self.power = PowerMode::Sleep;
                return Next::Done(AtaStatus::OK);
            }
            spec::CMD_SET_FEATURES => return Next::Done(self.set_features(tf)),
            spec::CMD_NOP => {
                // NOP always aborts (ATA8-ACS 7.20).
                return Next::Done(AtaStatus::ABORTED);
            }
            _ => {}
        }
        if matches!(self.media, Media::Cdrom(_)) {
            return self.execute_atapi_device(tf);
        }
        // Anything that reaches the medium wakes the device.
        self.power = PowerMode::Active;
        self.execute_disk(tf)
    }

    fn execute_atapi_device(&mut self, tf: &mut TaskFile) -> Next {
        let Media::Cdrom(cd) = &mut self.media else {
            return Next::Done(AtaStatus::ABORTED);
        };
        match tf.command {
            spec::CMD_IDENTIFY_PACKET_DEVICE => {
                let data = cd.identify(self.link, &self.identity);
                Next::Data(DataPhase::new(
                    Direction::In,
                    Protocol::Pio,
                    data.len() as u64,
                    512,
                    DataOp::Buffer(data),
                ))
            }
            spec::CMD_PACKET => {
                // Features bit 0: DMA; bit 2 (DMADIR) is only for bridges.
                let limit = u16::from(tf.lba_mid) | u16::from(tf.lba_high) << 8;
                Next::Packet {
                    dma: tf.features & 1 != 0,
                    byte_count_limit: limit,
                }
            }
            spec::CMD_DEVICE_RESET => Next::Done(self.reset(tf)),
            spec::CMD_FLUSH_CACHE | spec::CMD_FLUSH_CACHE_EXT => Next::Done(AtaStatus::OK),
            _ => {
                // An ATAPI device aborts ATA commands and shows its
                // signature, which is how drivers tell it apart
                // (ATA8-ACS 7.16.5 for IDENTIFY DEVICE).
                tf.set_signature(true);
                Next::Done(AtaStatus::ABORTED)
            }
        }
    }

    fn flush_for_command(&mut self, tf: &mut TaskFile) -> Result<(), AtaStatus> {
        if let Media::Disk(d) = &self.media {
            if let Err(e) = d.flush() {
                guest_error!("ATA: flush failed: {e}");
                tf.set_lba(0, true);
                return Err(AtaStatus::error(spec::ERROR_ABRT));
            }
        }
        Ok(())
    }

    fn set_features(&mut self, tf: &mut TaskFile) -> AtaStatus {
        let link = self.link;
        let sub = tf.features;
        let disk = match &mut self.media {
            Media::Disk(d) => Some(d),
            Media::Cdrom(_) => None,
        };
        match sub {
            spec::FEATURE_SET_TRANSFER_MODE => {
                let mode = tf.count;
                let n = mode & spec::XFER_MODE_MASK;
                let valid = match mode & 0xf8 {
                    0x00 => n <= 1,
                    spec::XFER_PIO_FLOW_CONTROL => n <= 4,
                    spec::XFER_MWDMA => n <= spec::MAX_MWDMA_MODE,
                    spec::XFER_UDMA => n <= spec::MAX_UDMA_MODE,
                    _ => false,
                };
                if !valid {
                    guest_error!("ATA: SET FEATURES transfer mode {mode:#04x} not supported");
                    return AtaStatus::ABORTED;
                }
                if mode & 0xf8 == spec::XFER_MWDMA || mode & 0xf8 == spec::XFER_UDMA {
                    if let Some(d) = disk {
                        d.xfer_mode = mode;
                    }
                }
                AtaStatus::OK
            }
            spec::FEATURE_ENABLE_WRITE_CACHE | spec::FEATURE_DISABLE_WRITE_CACHE => {
                match disk {
                    Some(d) => {
                        if sub == spec::FEATURE_DISABLE_WRITE_CACHE && d.write_cache {
                            // Disabling the cache commits what it holds.
                            if let Err(e) = d.flush() {
                                guest_error!("ATA: flush failed: {e}");
                                return AtaStatus::ABORTED;
                            }
                        }
                        d.write_cache = sub == spec::FEATURE_ENABLE_WRITE_CACHE;
                        AtaStatus::OK
                    }
                    None => AtaStatus::ABORTED,
                }
            }
            spec::FEATURE_ENABLE_READ_LOOK_AHEAD | spec::FEATURE_DISABLE_READ_LOOK_AHEAD => {
                if let Some(d) = disk {
                    d.look_ahead = sub == spec::FEATURE_ENABLE_READ_LOOK_AHEAD;
                }
                AtaStatus::OK
            }
            spec::FEATURE_ENABLE_REVERTING_TO_DEFAULTS
            | spec::FEATURE_DISABLE_REVERTING_TO_DEFAULTS => AtaStatus::OK,
            spec::FEATURE_ENABLE_SATA_FEATURE | spec::FEATURE_DISABLE_SATA_FEATURE
                if link == Link::Serial =>
            {
                // No optional SATA feature is supported (IDENTIFY word 78
                // is zero); asking for one aborts.
                AtaStatus::ABORTED
            }
            _ => {
                guest_error!("ATA: SET FEATURES subcommand {sub:#04x} not supported");
                AtaStatus::ABORTED
            }
        }
    }

    fn execute_disk(&mut self, tf: &mut TaskFile) -> Next {
        let link = self.link;
        let Media::Disk(d) = &mut self.media else {
            return Next::Done(AtaStatus::ABORTED);
        };
        let command = tf.command;
        let unit = u64::from(d.sector_size);
        // (lba48, protocol, write, block sectors, fua)
        let rw = match command {
            spec::CMD_READ_SECTORS | spec::CMD_READ_SECTORS_NORETRY => {
                Some((false, Protocol::Pio, false, 1, false))
            }
            spec::CMD_READ_SECTORS_EXT => Some((true, Protocol::Pio, false, 1, false)),
            spec::CMD_WRITE_SECTORS | spec::CMD_WRITE_SECTORS_NORETRY => {
                Some((false, Protocol::Pio, true, 1, false))
            }
            spec::CMD_WRITE_SECTORS_EXT => Some((true, Protocol::Pio, true, 1, false)),
            spec::CMD_READ_MULTIPLE
            | spec::CMD_READ_MULTIPLE_EXT
            | spec::CMD_WRITE_MULTIPLE
            | spec::CMD_WRITE_MULTIPLE_EXT
            | spec::CMD_WRITE_MULTIPLE_FUA_EXT => {
                if d.multiple == 0 {
                    guest_error!(
                        "ATA: READ/WRITE MULTIPLE {command:#04x} without SET MULTIPLE MODE"
                    );
                    return Next::Done(AtaStatus::ABORTED);
                }
                let lba48 =
                    command != spec::CMD_READ_MULTIPLE && command != spec::CMD_WRITE_MULTIPLE;
                let write = matches!(
                    command,
                    spec::CMD_WRITE_MULTIPLE
                        | spec::CMD_WRITE_MULTIPLE_EXT
                        | spec::CMD_WRITE_MULTIPLE_FUA_EXT
                );
                Some((
                    lba48,
                    Protocol::Pio,
                    write,
                    d.multiple,
                    command == spec::CMD_WRITE_MULTIPLE_FUA_EXT,
                ))
            }
            spec::CMD_READ_DMA | spec::CMD_READ_DMA_NORETRY => {
                Some((false, Protocol::Dma, false, 1, false))
            }
            spec::CMD_READ_DMA_EXT => Some((true, Protocol::Dma, false, 1, false)),
            spec::CMD_WRITE_DMA | spec::CMD_WRITE_DMA_NORETRY => {
                Some((false, Protocol::Dma, true, 1, false))
            }
            spec::CMD_WRITE_DMA_EXT => Some((true, Protocol::Dma, true, 1, false)),
            spec::CMD_WRITE_DMA_FUA_EXT => Some((true, Protocol::Dma, true, 1, true)),
            spec::CMD_READ_FPDMA_QUEUED | spec::CMD_WRITE_FPDMA_QUEUED => {
                if link != Link::Serial {
                    guest_error!("ATA: FPDMA QUEUED command on a parallel link");
                    return Next::Done(AtaStatus::ABORTED);
                }
                let tag = tf.count >> 3;
                if let Some(e) = d.ncq_error {
                    guest_error!(
                        "ATA: queued command (tag {tag}) aborted: NCQ error on tag {} not yet read from log 10h",
                        e.tag
                    );
                    return Next::Done(AtaStatus::ABORTED);
                }
                let write = command == spec::CMD_WRITE_FPDMA_QUEUED;
                let fua = tf.device & spec::DEVICE_FUA != 0;
                Some((true, Protocol::Queued { tag }, write, 1, fua))
            }
            _ => None,
        };
        if let Some((lba48, protocol, write, block_sectors, fua)) = rw {
            let count = match protocol {
                Protocol::Queued { .. } => match tf.features16() {
                    0 => 65536,
                    n => u64::from(n),
                },
                _ if lba48 => tf.count48(),
                _ => tf.count28(),
            };
            let Some(lba) = d.command_lba(tf, lba48) else {
                guest_error!("ATA: command {command:#04x} to a CHS address outside the geometry");
                return Next::Done(AtaStatus::error(spec::ERROR_IDNF));
            };
            let limit = if lba48 {
                d.sectors
            } else {
                d.sectors.min(spec::LBA28_LIMIT)
            };
            if lba.checked_add(count).is_none_or(|end| end > limit) {
                guest_error!(
                    "ATA: command {command:#04x} LBA {lba} count {count} beyond the {} sectors of the disk",
                    d.sectors
                );
                tf.set_lba(lba.min(limit), lba48);
                return Next::Done(AtaStatus::error(spec::ERROR_IDNF));
            }
            if write && d.read_only {
                guest_error!("ATA: write command {command:#04x} to a read-only disk aborted");
                return Next::Done(AtaStatus::ABORTED);
            }
            let offset = lba * unit;
            let len = count * unit;
            let op = if write {
                DataOp::WriteMedium { offset, fua }
            } else {
                DataOp::ReadMedium { offset }
            };
            let dir = if write { Direction::Out } else { Direction::In };
            let block = (u64::from(block_sectors) * unit).min(u64::from(u32::MAX)) as u32;
            return Next::Data(
                DataPhase::new(dir, protocol, len, block, op).with_unit(unit, lba48),
            );
        }
        match command {
            spec::CMD_IDENTIFY_DEVICE => {
                let data = d.identify(link, &self.identity);
                Next::Data(DataPhase::new(
                    Direction::In,
                    Protocol::Pio,
                    512,
                    512,
                    DataOp::Buffer(data),
                ))
            }
            spec::CMD_IDENTIFY_PACKET_DEVICE | spec::CMD_PACKET | spec::CMD_DEVICE_RESET => {
                // Packet commands abort on an ATA device, which keeps its
                // ATA signature.
                tf.set_signature(false);
                Next::Done(AtaStatus::ABORTED)
            }
            spec::CMD_READ_VERIFY_SECTORS
            | spec::CMD_READ_VERIFY_SECTORS_NORETRY
            | spec::CMD_READ_VERIFY_SECTORS_EXT => {
                let lba48 = command == spec::CMD_READ_VERIFY_SECTORS_EXT;
                let count = if lba48 { tf.count48() } else { tf.count28() };
                match d.command_lba(tf, lba48) {
                    Some(lba) if lba.checked_add(count).is_some_and(|e| e <= d.sectors) => {
                        Next::Done(AtaStatus::OK)
                    }
                    _ => Next::Done(AtaStatus::error(spec::ERROR_IDNF)),
                }
            }
            spec::CMD_FLUSH_CACHE | spec::CMD_FLUSH_CACHE_EXT => {
                if let Err(e) = d.flush() {
                    guest_error!("ATA: FLUSH CACHE failed: {e}");
                    return Next::Done(AtaStatus::ABORTED);
                }
                Next::Done(AtaStatus::OK)
            }
            spec::CMD_SET_MULTIPLE_MODE => {
                let n = u16::from(tf.count);
                if n > spec::MAX_MULTIPLE_SECTORS || (n != 0 && !n.is_power_of_two()) {
                    guest_error!("ATA: SET MULTIPLE MODE {n} not supported");
                    return Next::Done(AtaStatus::ABORTED);
                }
                d.multiple = n;
                Next::Done(AtaStatus::OK)
            }
            spec::CMD_INITIALIZE_DEVICE_PARAMETERS => {
                let heads = u16::from(tf.device & 0x0f) + 1;
                let spt = u16::from(tf.count);
                if spt == 0 {
                    return Next::Done(AtaStatus::ABORTED);
                }
                d.heads = heads;
                d.sectors_per_track = spt;
                Next::Done(AtaStatus::OK)
            }
            c if c & 0xf0 == spec::CMD_RECALIBRATE => Next::Done(AtaStatus::OK),
            c if c & 0xf0 == spec::CMD_SEEK => Next::Done(AtaStatus::OK),
            spec::CMD_DATA_SET_MANAGEMENT => {
                let blocks = tf.count16();
                if tf.features16() & spec::DSM_TRIM == 0
                    || blocks == 0
                    || blocks > spec::DSM_MAX_BLOCKS
                {
                    guest_error!(
                        "ATA: DATA SET MANAGEMENT features {:#06x} blocks {blocks} not supported",
                        tf.features16()
                    );
                    return Next::Done(AtaStatus::ABORTED);
                }
                if d.read_only {
                    guest_error!("ATA: TRIM on a read-only disk aborted");
                    return Next::Done(AtaStatus::ABORTED);
                }
                let len = u64::from(blocks) * 512;
                Next::Data(DataPhase::new(
                    Direction::Out,
                    Protocol::Dma,
                    len,
                    512,
                    DataOp::Trim {
                        entries: Vec::with_capacity(len as usize),
                    },
                ))
            }
            spec::CMD_READ_LOG_EXT | spec::CMD_READ_LOG_DMA_EXT => {
                let pages = tf.count16();
                let page = u16::from(tf.lba_mid) | u16::from(tf.lba_mid_exp) << 8;
                let data = match (tf.lba_low, page, pages) {
                    (spec::LOG_DIRECTORY, 0, 1) => {
                        let mut v = vec![0u8; 512];
                        v[0] = 1; // General Purpose Logging version
                        if link == Link::Serial {
                            v[2 * spec::LOG_NCQ_COMMAND_ERROR as usize] = 1;
                        }
                        v
                    }
                    (spec::LOG_NCQ_COMMAND_ERROR, 0, 1) if link == Link::Serial => {
                        let mut v = vec![0u8; 512];
                        match d.ncq_error.take() {
                            Some(e) => {
                                v[0] = e.tag & 0x1f;
                                v[2] = e.status.status;
                                v[3] = e.status.error;
                                e.tf.store_regs(&mut v);
                            }
                            None => v[0] = spec::NCQ_LOG_NQ,
                        }
                        set_checksum(&mut v);
                        v
                    }
                    (log, page, pages) => {
                        guest_error!(
                            "ATA: READ LOG EXT of log {log:#04x} page {page} x{pages} not supported"
                        );
                        return Next::Done(AtaStatus::ABORTED);
                    }
                };
                let protocol = if command == spec::CMD_READ_LOG_DMA_EXT {
                    Protocol::Dma
                } else {
                    Protocol::Pio
                };
                Next::Data(DataPhase::new(
                    Direction::In,
                    protocol,
                    512,
                    512,
                    DataOp::Buffer(data),
                ))
            }
            _ => {
                guest_error!("ATA: command {command:#04x} not supported, aborted");
                Next::Done(AtaStatus::ABORTED)
            }
        }
    }

    /// Starts the command packet of a PACKET command (ATAPI devices only).
    pub fn packet(
        &mut self,
        cdb: &[u8],
        tf: &mut TaskFile,
        dma: bool,
        byte_count_limit: u16,
    ) -> Next {
        let Media::Cdrom(cd) = &mut self.media else {
            return Next::Done(AtaStatus::ABORTED);
        };
        let protocol = if dma { Protocol::Dma } else { Protocol::Pio };
        // The byte count limit is even; zero is invalid and taken as the
        // largest (ATA8-ACS 7.18.3.2).
        let limit = match byte_count_limit & !1 {
            0 => 0xfffe,
            n => n,
        };
        let status = cd.command(cdb, &self.identity);
        match status {
            Ok(Some((op, len))) if len > 0 => {
                tf.count = 0;
                Next::Data(
                    DataPhase::new(Direction::In, protocol, len, u32::from(limit), op)
                        .with_unit(super::atapi_spec::CD_BLOCK_SIZE, true),
                )
            }
            Ok(_) => Next::Done(AtaStatus::OK),
            Err(sense_key) => Next::Done(AtaStatus {
                status: spec::STATUS_DRDY | spec::STATUS_ERR,
                error: sense_key << spec::ERROR_SENSE_KEY_SHIFT | spec::ERROR_ABRT,
            }),
        }
    }

    fn medium(&self) -> Option<&Arc<dyn BlockDevice>> {
        match &self.media {
            Media::Disk(d) => Some(&d.medium),
            Media::Cdrom(c) => c.medium(),
        }
    }

    /// A medium error during a data phase: the status, and the LBA of the
    /// first failed unit in the task file (or the ATAPI sense).
    fn medium_error(
        &mut self,
        phase: &DataPhase,
        tf: &mut TaskFile,
        offset: u64,
        error: u8,
    ) -> AtaStatus {
        match &mut self.media {
            Media::Cdrom(c) => {
                let key = c.medium_error(offset / phase.unit);
                AtaStatus {
                    status: spec::STATUS_DRDY | spec::STATUS_ERR,
                    error: key << spec::ERROR_SENSE_KEY_SHIFT | spec::ERROR_ABRT,
                }
            }
            Media::Disk(_) => {
                tf.set_lba(offset / phase.unit, phase.lba48);
                AtaStatus::error(error)
            }
        }
    }

    /// Moves the next `out.len()` bytes of a data-in phase into `out`.
    pub fn data_in(
        &mut self,
        phase: &mut DataPhase,
        tf: &mut TaskFile,
        out: &mut [u8],
    ) -> Result<(), AtaStatus> {
        let n = out.len() as u64;
        if phase.direction != Direction::In || n > phase.remaining() {
            return Err(AtaStatus::ABORTED);
        }
        match &phase.op {
            DataOp::Buffer(data) => {
                let start = phase.done as usize;
                match data.get(start..start + out.len()) {
                    Some(src) => out.copy_from_slice(src),
                    None => {
                        // Replies shorter than the phase pad with zeros.
                        out.fill(0);
                        if let Some(src) = data.get(start..) {
                            out[..src.len()].copy_from_slice(src);
                        }
                    }
                }
            }
            DataOp::ReadMedium { offset } => {
                let base = *offset;
                let Some(medium) = self.medium().cloned() else {
                    return Err(AtaStatus::ABORTED);
                };
                let within_stage = phase.done >= phase.staged_at
                    && phase.done + n <= phase.staged_at + phase.staged.len() as u64;
                if within_stage {
                    let at = (phase.done - phase.staged_at) as usize;
                    out.copy_from_slice(&phase.staged[at..at + out.len()]);
                } else if out.len() >= STAGE_BYTES {
                    if let Err(e) = medium.read_at(base + phase.done, out) {
                        guest_error!("ATA: read at byte {} failed: {e}", base + phase.done);
                        return Err(self.medium_error(
                            phase,
                            tf,
                            base + phase.done,
                            read_error(&e),
                        ));
                    }
                } else {
                    // Read ahead a stage (never past the phase's end).
                    let ahead = phase.remaining().min(STAGE_BYTES as u64).max(n) as usize;
                    let mut stage = std::mem::take(&mut phase.staged);
                    stage.resize(ahead, 0);
                    if let Err(e) = medium.read_at(base + phase.done, &mut stage) {
                        guest_error!("ATA: read at byte {} failed: {e}", base + phase.done);
                        phase.staged = Vec::new();
                        return Err(self.medium_error(
                            phase,
                            tf,
                            base + phase.done,
                            read_error(&e),
                        ));
                    }
                    out.copy_from_slice(&stage[..out.len()]);
                    phase.staged = stage;
                    phase.staged_at = phase.done;
                }
            }
            DataOp::WriteMedium { .. } | DataOp::Trim { .. } => return Err(AtaStatus::ABORTED),
        }
        phase.done += n;
        Ok(())
    }

    /// Takes the next `data.len()` bytes of a data-out phase.
    pub fn data_out(
        &mut self,
        phase: &mut DataPhase,
        tf: &mut TaskFile,
        data: &[u8],
    ) -> Result<(), AtaStatus> {
        let n = data.len() as u64;
        if phase.direction != Direction::Out || n > phase.remaining() {
            return Err(AtaStatus::ABORTED);
        }
        let result = match &mut phase.op {
            DataOp::WriteMedium { offset, .. } => {
                let at = *offset + phase.done;
                match &self.media {
                    Media::Disk(d) => d.medium.write_at(at, data).map_err(|e| {
                        guest_error!("ATA: write at byte {at} failed: {e}");
                        (at, write_error(&e))
                    }),
                    Media::Cdrom(_) => return Err(AtaStatus::ABORTED),
                }
            }
            DataOp::Trim { entries } => {
                entries.extend_from_slice(data);
                Ok(())
            }
            DataOp::Buffer(_) | DataOp::ReadMedium { .. } => return Err(AtaStatus::ABORTED),
        };
        if let Err((at, error)) = result {
            return Err(self.medium_error(phase, tf, at, error));
        }
        phase.done += n;
        Ok(())
    }

    /// Ends a data phase whose bytes have all moved.
    pub fn finish(&mut self, phase: &mut DataPhase, tf: &mut TaskFile) -> AtaStatus {
        let mut status = AtaStatus::OK;
        if let Media::Disk(d) = &mut self.media {
            match &phase.op {
                DataOp::WriteMedium { offset, fua } if *fua || !d.write_cache => {
                    if let Err(e) = d.flush() {
                        guest_error!("ATA: flush after write failed: {e}");
                        tf.set_lba(*offset / phase.unit, phase.lba48);
                        status = AtaStatus::ABORTED;
                    }
                }
                DataOp::Trim { entries } => status = trim(d, entries),
                _ => {}
            }
        }
        if tf.command == spec::CMD_PACKET {
            // ATAPI completion: I/O and C/D set in the interrupt reason.
            tf.count = 0x03;
        }
        phase.staged = Vec::new();
        status
    }

    /// Runs a whole data phase through host memory described by `target`.
    /// Moves at most what the target describes; if that is less than the
    /// phase needs, stops with [`DmaFault::TableTooShort`].
    pub fn run_dma(
        &mut self,
        phase: &mut DataPhase,
        tf: &mut TaskFile,
        target: &mut dyn DmaTarget,
    ) -> DmaEnd {
        let mut buf = std::mem::take(&mut self.dma_buf);
        let len = phase.remaining().min(DMA_CHUNK_BYTES as u64) as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let end = self.run_dma_through(phase, tf, target, &mut buf);
        self.dma_buf = buf;
        end
    }

    /// `run_dma` with its bounce buffer (every chunk is filled before use).
    fn run_dma_through(
        &mut self,
        phase: &mut DataPhase,
        tf: &mut TaskFile,
        target: &mut dyn DmaTarget,
        buf: &mut [u8],
    ) -> DmaEnd {
        let start = phase.done;
        while !phase.is_complete() {
            let pos = phase.done - start;
            let room = target.capacity().saturating_sub(pos);
            let n = phase.remaining().min(DMA_CHUNK_BYTES as u64).min(room) as usize;
            if n == 0 {
                return DmaEnd {
                    moved: pos,
                    status: AtaStatus::ABORTED,
                    fault: Some(DmaFault::TableTooShort {
                        described: target.capacity(),
                    }),
                };
            }
            let chunk = &mut buf[..n];
            let result = match phase.direction {
                Direction::In => match self.data_in(phase, tf, chunk) {
                    Ok(()) => target.store(pos, chunk).map_err(Some),
                    Err(status) => {
                        return DmaEnd {
                            moved: pos,
                            status,
                            fault: None,
                        }
                    }
                },
                Direction::Out => match target.load(pos, chunk) {
                    Ok(()) => match self.data_out(phase, tf, chunk) {
                        Ok(()) => Ok(()),
                        Err(status) => {
                            return DmaEnd {
                                moved: pos + n as u64,
                                status,
                                fault: None,
                            }
                        }
                    },
                    Err(f) => Err(Some(f)),
                },
            };
            if let Err(fault) = result {
                return DmaEnd {
                    moved: pos,
                    status: AtaStatus::ABORTED,
                    fault,
                };
            }
        }
        let status = self.finish(phase, tf);
        DmaEnd {
            moved: phase.done - start,
            status,
            fault: None,
        }
    }

    /// Records an NCQ failure for READ LOG EXT page 10h; queued commands
    /// abort until the log is read (ATA8-ACS 4.20.5).
    pub fn record_ncq_error(&mut self, tag: u8, status: AtaStatus, tf: &TaskFile) {
        if let Media::Disk(d) = &mut self.media {
            d.ncq_error.get_or_insert(NcqError {
                tag,
                status,
                tf: *tf,
            });
        }
    }
}

/// DATA SET MANAGEMENT with TRIM: each 8-byte entry is a 48-bit LBA and a
/// 16-bit length (ATA8-ACS 7.10.3.2); zero-length entries are padding.
fn trim(d: &Disk, entries: &[u8]) -> AtaStatus {
    let mut ranges = Vec::new();
    for e in entries.chunks_exact(8) {
        let v = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        let lba = v & spec::DSM_RANGE_LBA_MASK;
        let len = v >> spec::DSM_RANGE_LENGTH_SHIFT;
        if len == 0 {
            continue;
        }
        if lba + len > d.sectors {
            guest_error!("ATA: TRIM range LBA {lba} length {len} beyond the disk");
            return AtaStatus::ABORTED;
        }
        ranges.push((lba, len));
    }
    let unit = u64::from(d.sector_size);
    for (lba, len) in ranges {
        if let Err(e) = d.medium.discard(lba * unit, len * unit) {
            guest_error!("ATA: discard of LBA {lba} length {len} failed: {e}");
            return AtaStatus::ABORTED;
        }
    }
    AtaStatus::OK
}

#[cfg(test)]
#[path = "ata_tests.rs"]
mod tests;
