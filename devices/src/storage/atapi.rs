//! An ATAPI CD/DVD-ROM drive: the SCSI/MMC commands that PACKET carries,
//! over an ISO image as a read-only medium of 2048-byte blocks. The ATA
//! side (IDENTIFY PACKET DEVICE, PACKET, resets) lives in [`super::ata`].

use std::sync::Arc;

use rehost_disk::BlockDevice;

use super::ata::{DataOp, DriveIdentity, Link};
use super::ata_spec::identify as id;
use super::atapi_spec::{self as spec, Asc};
use crate::guest_error;

/// Current sense data (SPC-3 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: Asc,
}

impl Sense {
    const NONE: Sense = Sense {
        key: spec::SENSE_NO_SENSE,
        asc: spec::ASC_NONE,
    };
}

/// Told when the guest opens (`true`) or closes (`false`) the tray with
/// START STOP UNIT; the host's own medium changes are not reported here.
#[derive(Clone)]
pub struct TrayObserver(pub std::sync::Arc<dyn Fn(bool) + Send + Sync>);

impl std::fmt::Debug for TrayObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrayObserver")
    }
}

/// The drive and its (optional) medium.
#[derive(Debug)]
pub struct Cdrom {
    medium: Option<Arc<dyn BlockDevice>>,
    /// A medium the guest ejected, reinserted by a load (START STOP UNIT).
    ejected: Option<Arc<dyn BlockDevice>>,
    blocks: u64,
    sense: Sense,
    /// Reported by the next command that reports unit attentions.
    unit_attention: Option<Asc>,
    /// PREVENT ALLOW MEDIUM REMOVAL.
    locked: bool,
    /// Media event for GET EVENT STATUS NOTIFICATION, cleared when read.
    media_event: u8,
    tray_observer: Option<TrayObserver>,
}

/// The outcome of a command packet: a data-in phase (`Some((op, len))`),
/// no data (`None`), or CHECK CONDITION with this sense key.
pub(crate) type PacketOutcome = Result<Option<(DataOp, u64)>, u8>;

fn be16(b: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn reply(mut data: Vec<u8>, alloc: u64) -> PacketOutcome {
    data.truncate(alloc.min(data.len() as u64) as usize);
    let len = data.len() as u64;
    Ok(Some((DataOp::Buffer(data), len)))
}

impl Cdrom {
    pub fn new(medium: Option<Arc<dyn BlockDevice>>) -> Self {
        let blocks = medium
            .as_ref()
            .map(|m| m.geometry().size / spec::CD_BLOCK_SIZE)
            .unwrap_or(0);
        Self {
            medium,
            ejected: None,
            blocks,
            sense: Sense::NONE,
            unit_attention: None,
            locked: false,
            media_event: spec::MEDIA_EVENT_NONE,
            tray_observer: None,
        }
    }

    /// Sets who is told of tray moves the guest makes.
    pub fn set_tray_observer(&mut self, observer: TrayObserver) {
        self.tray_observer = Some(observer);
    }

    fn tray_moved(&self, open: bool) {
        if let Some(o) = &self.tray_observer {
            (o.0)(open);
        }
    }

    pub fn medium(&self) -> Option<&Arc<dyn BlockDevice>> {
        self.medium.as_ref()
    }

    pub fn sense(&self) -> Sense {
        self.sense
    }

    /// The guest forbade removal (PREVENT ALLOW MEDIUM REMOVAL).
    pub fn locked(&self) -> bool {
        self.locked
    }

    /// The guest opened the tray (START STOP UNIT with LoEj) and has not
    /// loaded the medium again.
    pub fn guest_opened_tray(&self) -> bool {
        self.medium.is_none() && self.ejected.is_some()
    }

    /// Someone pressed the drive's eject button while the guest holds the
    /// medium locked: the guest learns it from GET EVENT STATUS
    /// NOTIFICATION and may unlock and eject.
    pub fn request_eject(&mut self) {
        self.media_event = spec::MEDIA_EVENT_EJECT_REQUEST;
    }

    /// The host changes the medium (or removes it with `None`): the guest
    /// sees a unit attention and a media event, as after a real swap.
    pub fn change_medium(&mut self, medium: Option<Arc<dyn BlockDevice>>) {
        self.ejected = None;
        self.blocks = medium
            .as_ref()
            .map(|m| m.geometry().size / spec::CD_BLOCK_SIZE)
            .unwrap_or(0);
        self.media_event = if medium.is_some() {
            self.unit_attention = Some(spec::ASC_MEDIUM_MAY_HAVE_CHANGED);
            spec::MEDIA_EVENT_NEW_MEDIA
        } else {
            spec::MEDIA_EVENT_REMOVAL
        };
        self.medium = medium;
    }

    pub(crate) fn reset(&mut self) {
        self.sense = Sense::NONE;
        self.locked = false;
    }

    fn check(&mut self, key: u8, asc: Asc) -> PacketOutcome {
        self.sense = Sense { key, asc };
        Err(key)
    }

    /// A read of block `lba` failed.
    pub(crate) fn medium_error(&mut self, lba: u64) -> u8 {
        guest_error!("ATAPI: medium read error at block {lba}");
        self.sense = Sense {
            key: spec::SENSE_MEDIUM_ERROR,
            asc: spec::ASC_UNRECOVERED_READ_ERROR,
        };
        spec::SENSE_MEDIUM_ERROR
    }

    fn is_dvd(&self) -> bool {
        self.blocks * spec::CD_BLOCK_SIZE > spec::CD_MAX_BYTES
    }

    pub(crate) fn identify(&self, link: Link, ident: &DriveIdentity) -> Vec<u8> {
        let mut w = [0u16; 256];
        w[id::GENERAL_CONFIG] = id::CONFIG_ATAPI_CDROM;
        super::ata::put_identify_strings(&mut w, ident);
        w[id::CAPABILITIES] = id::CAP_LBA | id::CAP_DMA | id::CAP_IORDY | id::CAP_IORDY_DISABLE;
        w[id::CAPABILITIES_2] = id::CAP2_VALID;
        w[id::FIELD_VALIDITY] = id::VALID_54_58 | id::VALID_64_70 | id::VALID_88;
        w[id::MULTIWORD_DMA] = 0x0007;
        w[id::PIO_MODES] = 0x0003;
        w[id::MIN_MWDMA_CYCLE] = 120;
        w[id::REC_MWDMA_CYCLE] = 120;
        w[id::MIN_PIO_CYCLE] = 120;
        w[id::MIN_PIO_CYCLE_IORDY] = 120;
        w[id::MAJOR_VERSION] = id::MAJOR_ATAPI4_TO_7;
        let cs1 = id::CS1_NOP | id::CS1_PACKET | id::CS1_POWER_MANAGEMENT;
        w[id::COMMAND_SET_1] = cs1;
        w[id::COMMAND_SET_1_ENABLED] = cs1;
        w[id::COMMAND_SET_2] = id::CS2_ONE;
        w[id::COMMAND_SET_EXT] = id::CSX_ONE;
        w[id::COMMAND_SET_EXT_ENABLED] = id::CSX_ONE;
        w[id::ULTRA_DMA] = 0x003f | 0x100 << 5;
        match link {
            Link::Serial => {
                w[id::SATA_CAPABILITIES] = id::SATA_GEN1 | id::SATA_GEN2;
                w[id::TRANSPORT_MAJOR] = id::TRANSPORT_SERIAL;
            }
            Link::Parallel => w[id::HW_RESET_RESULT] = id::HW_RESET_DEVICE0,
        }
        super::ata::identify_bytes(&mut w)
    }

    /// Executes one command packet.
    pub(crate) fn command(&mut self, cdb: &[u8], ident: &DriveIdentity) -> PacketOutcome {
        let mut packet = [0u8; 16];
        let n = cdb.len().min(16);
        packet[..n].copy_from_slice(&cdb[..n]);
        let cdb = &packet;
        let op = cdb[0];
        let reports_attention = !matches!(
            op,
            spec::INQUIRY
                | spec::REQUEST_SENSE
                | spec::GET_CONFIGURATION
                | spec::GET_EVENT_STATUS_NOTIFICATION
        );
        if reports_attention {
            if let Some(asc) = self.unit_attention.take() {
                return self.check(spec::SENSE_UNIT_ATTENTION, asc);
            }
        }
        let result = match op {
            spec::TEST_UNIT_READY => self.need_medium().map(|_| None),
            spec::REQUEST_SENSE => {
                let sense = match self.unit_attention.take() {
                    Some(asc) => Sense {
                        key: spec::SENSE_UNIT_ATTENTION,
                        asc,
                    },
                    None => self.sense,
                };
                let mut d = vec![0u8; spec::SENSE_DATA_LEN];
                d[0] = spec::SENSE_FIXED_CURRENT;
                d[2] = sense.key;
                d[7] = (spec::SENSE_DATA_LEN - 8) as u8;
                d[12] = sense.asc.0;
                d[13] = sense.asc.1;
                self.sense = Sense::NONE;
                return reply(d, u64::from(cdb[4]));
            }
            spec::INQUIRY => self.inquiry(cdb, ident),
            spec::MODE_SENSE_6 | spec::MODE_SENSE_10 => self.mode_sense(cdb),
            spec::START_STOP_UNIT => self.start_stop(cdb),
            spec::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                self.locked = cdb[4] & 1 != 0;
                Ok(None)
            }
            spec::READ_CAPACITY_10 => self.need_medium().and_then(|_| {
                let last = self.blocks.saturating_sub(1).min(u64::from(u32::MAX)) as u32;
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&(spec::CD_BLOCK_SIZE as u32).to_be_bytes());
                reply(d, 8)
            }),
            spec::READ_10 => self.read(be32(&cdb[2..6]), be16(&cdb[7..9])),
            spec::READ_12 => self.read(be32(&cdb[2..6]), be32(&cdb[6..10])),
            spec::READ_CD => {
                // Only user data of data sectors (byte 9: user data bit 4
                // alone; expected sector type any or mode 1).
                let expected = (cdb[1] >> 2) & 7;
                let blocks = be32(&[0, cdb[6], cdb[7], cdb[8]]);
                if cdb[9] & 0xf8 != 0x10 || !(expected == 0 || expected == 2) {
                    if blocks == 0 {
                        Ok(None)
                    } else {
                        guest_error!("ATAPI: READ CD of non-user-data fields {:#04x}", cdb[9]);
                        self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_FIELD_IN_CDB)
                    }
                } else {
                    self.read(be32(&cdb[2..6]), blocks)
                }
            }
            spec::SEEK_10 | spec::SET_CD_SPEED => self.need_medium().map(|_| None),
            spec::READ_TOC_PMA_ATIP => self.read_toc(cdb),
            spec::GET_CONFIGURATION => self.get_configuration(cdb),
            spec::GET_EVENT_STATUS_NOTIFICATION => self.event_status(cdb),
            spec::READ_DISC_INFORMATION => self.need_medium().and_then(|_| {
                let mut d = vec![0u8; 34];
                d[1] = 32;
                d[2] = 0x0e; // last session complete, disc complete
                d[3] = 1; // first track
                d[4] = 1; // sessions
                d[5] = 1; // first track of last session
                d[6] = 1; // last track of last session
                reply(d, be16(&cdb[7..9]))
            }),
            spec::READ_TRACK_INFORMATION => self.track_information(cdb),
            spec::MECHANISM_STATUS => {
                let mut d = vec![0u8; 8];
                if self.medium.is_none() && self.ejected.is_some() {
                    d[1] = 0x10; // door open
                }
                reply(d, be16(&cdb[8..10]))
            }
            0x0a | 0x2a | 0x2e | 0xaa | 0x35 | 0x04 | 0xa1 => {
                guest_error!("ATAPI: write command {op:#04x} to a read-only medium");
                self.check(spec::SENSE_DATA_PROTECT, spec::ASC_WRITE_PROTECTED)
            }
            _ => {
                guest_error!("ATAPI: command {op:#04x} not supported");
                self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_OPCODE)
            }
        };
        if result.is_ok() {
            self.sense = Sense::NONE;
        }
        result
    }

    fn need_medium(&mut self) -> Result<(), u8> {
        if self.medium.is_some() {
            Ok(())
        } else {
            self.sense = Sense {
                key: spec::SENSE_NOT_READY,
                asc: spec::ASC_MEDIUM_NOT_PRESENT,
            };
            Err(spec::SENSE_NOT_READY)
        }
    }

    fn read(&mut self, lba: u64, blocks: u64) -> PacketOutcome {
        self.need_medium()?;
        if lba.saturating_add(blocks) > self.blocks {
            guest_error!(
                "ATAPI: READ of {blocks} blocks at {lba} beyond the {} blocks of the medium",
                self.blocks
            );
            return self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_LBA_OUT_OF_RANGE);
        }
        if blocks == 0 {
            return Ok(None);
        }
        Ok(Some((
            DataOp::ReadMedium {
                offset: lba * spec::CD_BLOCK_SIZE,
            },
            blocks * spec::CD_BLOCK_SIZE,
        )))
    }

    fn inquiry(&mut self, cdb: &[u8], ident: &DriveIdentity) -> PacketOutcome {
        if cdb[1] & 1 != 0 || cdb[2] != 0 {
            // No vital product data pages.
            return self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_FIELD_IN_CDB);
        }
        let mut d = vec![0u8; spec::INQUIRY_LEN];
        d[0] = spec::PERIPHERAL_CDROM;
        d[1] = spec::INQUIRY_RMB;
        d[2] = 0x00; // no SCSI version claimed, as ATAPI drives do
        d[3] = 0x21; // ATAPI version 2, response data format 1
        d[4] = (spec::INQUIRY_LEN - 5) as u8;
        let text = |dst: &mut [u8], s: &str| {
            dst.fill(b' ');
            for (d, b) in dst
                .iter_mut()
                .zip(s.bytes().filter(|b| b.is_ascii_graphic() || *b == b' '))
            {
                *d = b;
            }
        };
        let (vendor, product) = match ident.model.split_once(' ') {
            Some((v, p)) if v.len() <= 8 => (v, p),
            _ => ("", ident.model.as_str()),
        };
        text(&mut d[8..16], vendor);
        text(&mut d[16..32], product);
        text(&mut d[32..36], &ident.firmware);
        reply(d, be16(&cdb[3..5]))
    }

    fn mode_pages(&self, page: u8, changeable: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        if page == spec::MODE_PAGE_ERROR_RECOVERY || page == spec::MODE_PAGE_ALL {
            let mut p = vec![
                spec::MODE_PAGE_ERROR_RECOVERY,
                0x0a,
                0,
                5,
                0,
                0,
                0,
                0,
                5,
                0,
                0,
                0,
            ];
            if changeable {
                p[2..].fill(0);
            }
            out.extend(p);
        }
        if page == spec::MODE_PAGE_CAPABILITIES || page == spec::MODE_PAGE_ALL {
            let mut p = vec![0u8; 20];
            p[0] = spec::MODE_PAGE_CAPABILITIES;
            p[1] = 18;
            if !changeable {
                p[2] = 0x3b; // reads CD-R, CD-RW, method 2, DVD-ROM
                p[4] = 0x71; // multi-session, mode 2 forms 1 and 2
                p[5] = 0x01; // CD-DA commands
                             // Lock supported, lock state, eject, tray loading.
                p[6] = 0x29 | if self.locked { 0x02 } else { 0 };
                p[8..10].copy_from_slice(&(16 * 176u16).to_be_bytes());
                p[10..12].copy_from_slice(&256u16.to_be_bytes());
                p[12..14].copy_from_slice(&2048u16.to_be_bytes());
                p[14..16].copy_from_slice(&(16 * 176u16).to_be_bytes());
            }
            out.extend(p);
        }
        (!out.is_empty()).then_some(out)
    }

    fn mode_sense(&mut self, cdb: &[u8]) -> PacketOutcome {
        let ten = cdb[0] == spec::MODE_SENSE_10;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        if pc == spec::MODE_PC_SAVED {
            return self.check(
                spec::SENSE_ILLEGAL_REQUEST,
                spec::ASC_SAVING_PARAMETERS_NOT_SUPPORTED,
            );
        }
        let Some(pages) = self.mode_pages(page, pc == 1) else {
            guest_error!("ATAPI: MODE SENSE of page {page:#04x} not supported");
            return self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_FIELD_IN_CDB);
        };
        let mut d = Vec::new();
        if ten {
            let total = 8 + pages.len();
            d.extend_from_slice(&((total - 2) as u16).to_be_bytes());
            d.extend_from_slice(&[0; 6]);
            d.extend(pages);
            reply(d, be16(&cdb[7..9]))
        } else {
            let total = 4 + pages.len();
            d.extend_from_slice(&[(total - 1) as u8, 0, 0, 0]);
            d.extend(pages);
            reply(d, u64::from(cdb[4]))
        }
    }

    fn start_stop(&mut self, cdb: &[u8]) -> PacketOutcome {
        let loej = cdb[4] & 0x02 != 0;
        let start = cdb[4] & 0x01 != 0;
        if !loej {
            return Ok(None);
        }
        if start {
            if let Some(m) = self.ejected.take() {
                self.change_medium(Some(m));
                self.tray_moved(false);
            }
        } else if self.medium.is_some() {
            if self.locked {
                return self.check(
                    spec::SENSE_ILLEGAL_REQUEST,
                    spec::ASC_MEDIUM_REMOVAL_PREVENTED,
                );
            }
            let m = self.medium.take();
            self.change_medium(None);
            self.ejected = m;
            self.tray_moved(true);
        }
        Ok(None)
    }

    fn read_toc(&mut self, cdb: &[u8]) -> PacketOutcome {
        self.need_medium()?;
        let msf = cdb[1] & 0x02 != 0;
        let mut format = cdb[2] & 0x0f;
        if format == 0 && cdb[9] >> 6 != 0 {
            // The format in bits 7:6 of the control byte (SFF-8020).
            format = cdb[9] >> 6;
        }
        let start_track = cdb[6];
        let alloc = be16(&cdb[7..9]);
        let lead_out = self.blocks.min(u64::from(u32::MAX) - 150) as u32;
        let addr = |lba: u32| -> [u8; 4] {
            if msf {
                let [m, s, f] = spec::lba_to_msf(lba);
                [0, m, s, f]
            } else {
                lba.to_be_bytes()
            }
        };
        let mut d = vec![0, 0, 1, 1];
        match format {
            spec::TOC_FORMAT_TOC => {
                if start_track > 1 && start_track != spec::TOC_LEAD_OUT {
                    return self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_FIELD_IN_CDB);
                }
                if start_track <= 1 {
                    d.extend_from_slice(&[0, spec::TOC_ADR_CONTROL_DATA, 1, 0]);
                    d.extend_from_slice(&addr(0));
                }
                d.extend_from_slice(&[0, spec::TOC_ADR_CONTROL_DATA, spec::TOC_LEAD_OUT, 0]);
                d.extend_from_slice(&addr(lead_out));
            }
            spec::TOC_FORMAT_SESSION_INFO => {
                d.extend_from_slice(&[0, spec::TOC_ADR_CONTROL_DATA, 1, 0]);
                d.extend_from_slice(&addr(0));
            }
            spec::TOC_FORMAT_FULL_TOC => {
                let [lm, ls, lf] = spec::lba_to_msf(lead_out);
                let [tm, ts, tf] = spec::lba_to_msf(0);
                for (point, pm, ps, pf) in [
                    (0xa0u8, 1u8, 0u8, 0u8),
                    (0xa1, 1, 0, 0),
                    (0xa2, lm, ls, lf),
                    (1, tm, ts, tf),
                ] {
                    d.extend_from_slice(&[
                        1,
                        spec::TOC_ADR_CONTROL_DATA,
                        0,
                        point,
                        0,
                        0,
                        0,
                        0,
                        pm,
                        ps,
                        pf,
                    ]);
                }
            }
            _ => {
                guest_error!("ATAPI: READ TOC format {format} not supported");
                return self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_FIELD_IN_CDB);
            }
        }
        let len = (d.len() - 2) as u16;
        d[..2].copy_from_slice(&len.to_be_bytes());
        reply(d, alloc)
    }

    fn get_configuration(&mut self, cdb: &[u8]) -> PacketOutcome {
        let rt = cdb[1] & 0x03;
        let start = be16(&cdb[2..4]) as u16;
        let alloc = be16(&cdb[7..9]);
        let present = self.medium.is_some();
        let dvd = self.is_dvd();
        let current_profile = match (present, dvd) {
            (false, _) => 0,
            (true, true) => spec::PROFILE_DVD_ROM,
            (true, false) => spec::PROFILE_CD_ROM,
        };
        // (code, version, persistent, current, data)
        let mut features: Vec<(u16, u8, bool, bool, Vec<u8>)> = Vec::new();
        let mut profiles = Vec::new();
        for p in [spec::PROFILE_DVD_ROM, spec::PROFILE_CD_ROM] {
            profiles.extend_from_slice(&p.to_be_bytes());
            profiles.extend_from_slice(&[u8::from(p == current_profile), 0]);
        }
        features.push((spec::FEATURE_PROFILE_LIST, 0, true, true, profiles));
        let mut core = spec::INTERFACE_ATAPI.to_be_bytes().to_vec();
        core.extend_from_slice(&[0, 0, 0, 0]);
        features.push((spec::FEATURE_CORE, 1, true, true, core));
        features.push((spec::FEATURE_MORPHING, 1, true, true, vec![0, 0, 0, 0]));
        features.push((
            spec::FEATURE_REMOVABLE_MEDIUM,
            0,
            true,
            true,
            vec![0x29, 0, 0, 0],
        ));
        let mut random = (spec::CD_BLOCK_SIZE as u32).to_be_bytes().to_vec();
        random.extend_from_slice(&(if dvd { 16u16 } else { 1 }).to_be_bytes());
        random.extend_from_slice(&[0, 0]);
        features.push((spec::FEATURE_RANDOM_READABLE, 0, false, present, random));
        features.push((
            spec::FEATURE_CD_READ,
            0,
            false,
            present && !dvd,
            vec![0, 0, 0, 0],
        ));
        features.push((spec::FEATURE_DVD_READ, 0, false, present && dvd, Vec::new()));
        let mut d = vec![0u8; 8];
        d[6..8].copy_from_slice(&current_profile.to_be_bytes());
        for (code, version, persistent, current, data) in features {
            let wanted = match rt {
                0 => code >= start,
                1 => code >= start && current,
                2 => code == start,
                _ => {
                    return self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_FIELD_IN_CDB)
                }
            };
            if wanted {
                d.extend_from_slice(&code.to_be_bytes());
                d.push(version << 2 | u8::from(persistent) << 1 | u8::from(current));
                d.push(data.len() as u8);
                d.extend(data);
            }
        }
        let len = (d.len() - 4) as u32;
        d[..4].copy_from_slice(&len.to_be_bytes());
        reply(d, alloc)
    }

    /// READ TRACK INFORMATION (MMC-5 6.27): the one data track, addressed
    /// by track number (type 1) or by an LBA inside it (type 0).
    fn track_information(&mut self, cdb: &[u8]) -> PacketOutcome {
        self.need_medium()?;
        let number = be32(&cdb[2..6]);
        let ok = match cdb[1] & 0x03 {
            0 => number < self.blocks,
            1 => number == 1,
            _ => false,
        };
        if !ok {
            return self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_FIELD_IN_CDB);
        }
        let mut d = vec![0u8; 36];
        d[1] = 34;
        d[2] = 1; // track number
        d[3] = 1; // session number
        d[5] = 0x04; // data track, uninterrupted
        d[6] = 0x01; // data mode 1
        let size = self.blocks.min(u64::from(u32::MAX)) as u32;
        d[24..28].copy_from_slice(&size.to_be_bytes());
        reply(d, be16(&cdb[7..9]))
    }

    fn event_status(&mut self, cdb: &[u8]) -> PacketOutcome {
        if cdb[1] & spec::GESN_POLLED == 0 {
            return self.check(spec::SENSE_ILLEGAL_REQUEST, spec::ASC_INVALID_FIELD_IN_CDB);
        }
        let alloc = be16(&cdb[7..9]);
        let mut d = vec![0u8; 4];
        d[3] = spec::EVENT_CLASS_MEDIA_BIT;
        if cdb[4] & spec::EVENT_CLASS_MEDIA_BIT != 0 {
            d[2] = spec::EVENT_CLASS_MEDIA;
            let status = if self.medium.is_some() {
                spec::MEDIA_STATUS_PRESENT
            } else {
                u8::from(self.ejected.is_some())
            };
            d.extend_from_slice(&[self.media_event, status, 0, 0]);
            self.media_event = spec::MEDIA_EVENT_NONE;
        } else {
            // No event available (NEA) for the classes asked for.
            d[2] = 0x80;
        }
        let len = (d.len() - 2) as u16;
        d[..2].copy_from_slice(&len.to_be_bytes());
        reply(d, alloc)
    }
}
