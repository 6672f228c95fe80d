//! A USB mass-storage device: Bulk-Only Transport (BOT 1.0) carrying SCSI
//! block commands, on the block stack of `rehost-disk` (so VHD, VHDX and
//! differencing children work as they do behind IDE and AHCI).
//!
//! Interface 0 (class 08/06/50) has bulk IN endpoint 1 and bulk OUT
//! endpoint 2. A command is a CBW on bulk OUT, an optional data stage on
//! the endpoint the CBW names, and a CSW on bulk IN. The data stage is
//! served in whatever pieces the controller asks for (a 64-byte UHCI
//! packet or a 20 KiB EHCI qTD), reading ahead and writing back in chunks.

use std::sync::Arc;

use rehost_disk::BlockDevice;

use super::device::{self, DeviceInfo, DeviceState, EndpointInfo, InterfaceInfo};
use super::msd_spec as msd;
use super::usb_spec as ch9;
use super::{Completer, Direction, Speed, Transfer, TransferKind, TransferStatus, UsbDevice};

pub const EP_IN: u8 = ch9::EP_DIR_IN | 1;
pub const EP_OUT: u8 = 2;

/// The most bytes read ahead or written back at once.
const CHUNK: usize = 64 * 1024;

/// Where a data-in stage's bytes come from.
#[derive(Debug)]
enum Source {
    Buffer(Vec<u8>, usize),
    Disk {
        offset: u64,
        remaining: u64,
        ahead: Vec<u8>,
        pos: usize,
    },
}

/// Where a data-out stage's bytes go.
#[derive(Debug)]
enum Sink {
    Discard,
    Disk { offset: u64, pending: Vec<u8> },
}

#[derive(Debug)]
enum Phase {
    /// Waiting for a CBW.
    Command,
    DataIn {
        tag: u32,
        /// Bytes of the host's dCBWDataTransferLength not yet moved.
        host_left: u64,
        /// Bytes the command has to send.
        left: u64,
        source: Source,
        status: u8,
    },
    DataOut {
        tag: u32,
        host_left: u64,
        /// Bytes the command takes; the rest of the host's are discarded.
        left: u64,
        sink: Sink,
        status: u8,
    },
    Status([u8; msd::CSW_LEN]),
    /// An invalid CBW: both bulk endpoints stall until a Reset Recovery
    /// (BOT 5.3.4, 6.6.1).
    NeedReset,
}

/// What a SCSI command wants to do.
enum Action {
    In(Source, u64),
    Out(Sink, u64),
    None,
}

pub struct UsbStorage {
    medium: Arc<dyn BlockDevice>,
    read_only: bool,
    serial: String,
    speed: Speed,
    info: DeviceInfo,
    state: DeviceState,
    phase: Phase,
    /// Sense key, ASC, ASCQ of the last failed command.
    sense: (u8, msd::Asc),
    block: u64,
}

impl std::fmt::Debug for UsbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbStorage")
            .field("serial", &self.serial)
            .field("phase", &self.phase)
            .finish()
    }
}

fn csw(tag: u32, residue: u64, status: u8) -> [u8; msd::CSW_LEN] {
    let mut c = [0u8; msd::CSW_LEN];
    c[0..4].copy_from_slice(&msd::CSW_SIGNATURE.to_le_bytes());
    c[4..8].copy_from_slice(&tag.to_le_bytes());
    c[8..12].copy_from_slice(&(residue.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    c[12] = status;
    c
}

fn be_u32(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .map(|s| u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]])))
        .unwrap_or(0)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_be_bytes(a)
        })
        .unwrap_or(0)
}

impl UsbStorage {
    /// A disk on `medium`; `serial` is the iSerialNumber string (BOT
    /// devices need one, 12 or more hex digits).
    pub fn new(medium: Arc<dyn BlockDevice>, read_only: bool, serial: &str) -> Self {
        let read_only = read_only || medium.geometry().read_only;
        let block = u64::from(medium.geometry().logical_sector_size.max(512));
        let mut s = Self {
            medium,
            read_only,
            serial: serial.to_owned(),
            speed: Speed::Full,
            info: DeviceInfo {
                usb_version: 0,
                vendor: 0,
                product: 0,
                release: 0,
                max_packet0: 0,
                manufacturer: String::new(),
                product_name: String::new(),
                serial: String::new(),
                max_power: 0,
                remote_wakeup: false,
                interfaces: Vec::new(),
            },
            state: DeviceState::default(),
            phase: Phase::Command,
            sense: (msd::SENSE_NO_SENSE, msd::ASC_NONE),
            block,
        };
        s.info = s.describe(Speed::Full);
        s
    }

    /// The descriptors at the speed of the last reset.
    pub fn descriptors(&self) -> &DeviceInfo {
        &self.info
    }

    fn describe(&self, speed: Speed) -> DeviceInfo {
        let mps = if speed >= Speed::High { 512 } else { 64 };
        DeviceInfo {
            usb_version: 0x0200,
            vendor: 0x46f4,
            product: 0x0001,
            release: 0x0100,
            max_packet0: 64,
            manufacturer: "rehost".into(),
            product_name: "rehost USB disk".into(),
            serial: self.serial.clone(),
            max_power: 50,
            remote_wakeup: false,
            interfaces: vec![InterfaceInfo {
                class: msd::CLASS_MASS_STORAGE,
                subclass: msd::SUBCLASS_SCSI,
                protocol: msd::PROTOCOL_BOT,
                class_descriptors: Vec::new(),
                endpoints: vec![
                    EndpointInfo {
                        address: EP_IN,
                        attributes: ch9::EP_BULK,
                        max_packet: mps,
                        interval: 0,
                    },
                    EndpointInfo {
                        address: EP_OUT,
                        attributes: ch9::EP_BULK,
                        max_packet: mps,
                        interval: 0,
                    },
                ],
            }],
        }
    }

    /// Flushes the medium (an orderly shutdown).
    pub fn flush(&self) -> rehost_disk::Result<()> {
        self.medium.flush()
    }

    fn blocks(&self) -> u64 {
        self.medium.geometry().size / self.block
    }

    fn fail(&mut self, key: u8, asc: msd::Asc) -> (Action, u8) {
        self.sense = (key, asc);
        (Action::None, msd::CSW_FAILED)
    }

    fn ok(&mut self, a: Action) -> (Action, u8) {
        self.sense = (msd::SENSE_NO_SENSE, msd::ASC_NONE);
        (a, msd::CSW_PASSED)
    }

    fn data(&mut self, mut v: Vec<u8>, alloc: u64) -> (Action, u8) {
        v.truncate(alloc.min(v.len() as u64) as usize);
        let n = v.len() as u64;
        self.ok(Action::In(Source::Buffer(v, 0), n))
    }

    /// Checks an LBA range; the byte offset and length when valid.
    fn range(&mut self, lba: u64, count: u64) -> Result<(u64, u64), (Action, u8)> {
        match lba.checked_add(count) {
            Some(end) if end <= self.blocks() => Ok((lba * self.block, count * self.block)),
            _ => Err(self.fail(msd::SENSE_ILLEGAL_REQUEST, msd::ASC_LBA_OUT_OF_RANGE)),
        }
    }

    fn mode_pages(&self, page: u8) -> Option<Vec<u8>> {
        let mut caching = vec![0u8; msd::PAGE_CACHING_LEN];
        caching[0] = msd::PAGE_CACHING;
        caching[1] = (msd::PAGE_CACHING_LEN - 2) as u8;
        // WCE: writes are cached until SYNCHRONIZE CACHE.
        caching[2] = 0x04;
        match page {
            msd::PAGE_CACHING | msd::PAGE_ALL => Some(caching),
            _ => None,
        }
    }

    /// Decodes and starts one SCSI command.
    fn execute(&mut self, lun: u8, cb: &[u8]) -> (Action, u8) {
        let op = cb.first().copied().unwrap_or(0xff);
        if lun != 0 && op != msd::INQUIRY && op != msd::REQUEST_SENSE {
            return self.fail(msd::SENSE_ILLEGAL_REQUEST, msd::ASC_LUN_NOT_SUPPORTED);
        }
        let byte = |i: usize| u64::from(cb.get(i).copied().unwrap_or(0));
        match op {
            msd::TEST_UNIT_READY
            | msd::START_STOP_UNIT
            | msd::PREVENT_ALLOW_MEDIUM_REMOVAL
            | msd::VERIFY_10 => self.ok(Action::None),
            msd::REQUEST_SENSE => {
                let mut s = vec![0u8; msd::SENSE_FIXED_LEN];
                s[0] = msd::SENSE_RESPONSE_CURRENT;
                s[2] = self.sense.0;
                s[7] = (msd::SENSE_FIXED_LEN - 8) as u8;
                s[12] = self.sense.1 .0;
                s[13] = self.sense.1 .1;
                // Reporting the sense clears it (SPC-4 6.29).
                self.sense = (msd::SENSE_NO_SENSE, msd::ASC_NONE);
                let mut v = s;
                v.truncate(byte(4) as usize);
                let n = v.len() as u64;
                (Action::In(Source::Buffer(v, 0), n), msd::CSW_PASSED)
            }
            msd::INQUIRY => {
                if byte(1) & 1 != 0 {
                    // Vital product data pages are not provided.
                    return self.fail(msd::SENSE_ILLEGAL_REQUEST, msd::ASC_INVALID_FIELD_IN_CDB);
                }
                let mut d = vec![0u8; msd::INQUIRY_LEN];
                // A LUN that does not exist: peripheral qualifier 3.
                d[0] = if lun == 0 { 0x00 } else { 0x7f };
                d[1] = msd::INQUIRY_RMB;
                d[2] = msd::INQUIRY_VERSION_SPC4;
                d[3] = msd::INQUIRY_RESPONSE_FORMAT;
                d[4] = (msd::INQUIRY_LEN - 5) as u8;
                d[8..16].copy_from_slice(b"REHOST  ");
                d[16..32].copy_from_slice(b"USB DISK        ");
                let rev = env!("CARGO_PKG_VERSION").as_bytes();
                for (i, b) in d[32..36].iter_mut().enumerate() {
                    *b = rev.get(i).copied().unwrap_or(b' ');
                }
                let alloc = byte(3) << 8 | byte(4);
                self.data(d, alloc)
            }
            msd::READ_CAPACITY_10 => {
                let last = self.blocks().saturating_sub(1).min(u64::from(u32::MAX)) as u32;
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&(self.block as u32).to_be_bytes());
                self.data(d, 8)
            }
            msd::SERVICE_ACTION_IN_16 if byte(1) & 0x1f == u64::from(msd::SA_READ_CAPACITY_16) => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&(self.block as u32).to_be_bytes());
                let alloc = be_u32(cb, 10);
                self.data(d, alloc)
            }
            msd::MODE_SENSE_6 | msd::MODE_SENSE_10 => {
                let page = cb.get(2).copied().unwrap_or(0) & 0x3f;
                let Some(pages) = self.mode_pages(page) else {
                    return self.fail(msd::SENSE_ILLEGAL_REQUEST, msd::ASC_INVALID_FIELD_IN_CDB);
                };
                let wp = if self.read_only { msd::MODE_WP } else { 0 };
                let (mut d, alloc) = if op == msd::MODE_SENSE_6 {
                    let mut h = vec![0u8; 4];
                    h[0] = (3 + pages.len()) as u8;
                    h[2] = wp;
                    (h, byte(4))
                } else {
                    let mut h = vec![0u8; 8];
                    h[0..2].copy_from_slice(&((6 + pages.len()) as u16).to_be_bytes());
                    h[3] = wp;
                    (h, byte(7) << 8 | byte(8))
                };
                d.extend_from_slice(&pages);
                self.data(d, alloc)
            }
            msd::READ_10 | msd::READ_12 | msd::READ_16 => {
                let (lba, count) = match op {
                    msd::READ_10 => (be_u32(cb, 2), byte(7) << 8 | byte(8)),
                    msd::READ_12 => (be_u32(cb, 2), be_u32(cb, 6)),
                    _ => (be_u64(cb, 2), be_u32(cb, 10)),
                };
                match self.range(lba, count) {
                    Ok((offset, len)) => self.ok(Action::In(
                        Source::Disk {
                            offset,
                            remaining: len,
                            ahead: Vec::new(),
                            pos: 0,
                        },
                        len,
                    )),
                    Err(e) => e,
                }
            }
            msd::WRITE_10 | msd::WRITE_12 | msd::WRITE_16 => {
                let (lba, count) = match op {
                    msd::WRITE_10 => (be_u32(cb, 2), byte(7) << 8 | byte(8)),
                    msd::WRITE_12 => (be_u32(cb, 2), be_u32(cb, 6)),
                    _ => (be_u64(cb, 2), be_u32(cb, 10)),
                };
                if self.read_only {
                    return self.fail(msd::SENSE_DATA_PROTECT, msd::ASC_WRITE_PROTECTED);
                }
                match self.range(lba, count) {
                    Ok((offset, len)) => self.ok(Action::Out(
                        Sink::Disk {
                            offset,
                            pending: Vec::new(),
                        },
                        len,
                    )),
                    Err(e) => e,
                }
            }
            msd::SYNCHRONIZE_CACHE_10 | msd::SYNCHRONIZE_CACHE_16 => match self.medium.flush() {
                Ok(()) => self.ok(Action::None),
                Err(e) => {
                    tracing::error!("USB disk {}: flush failed: {e}", self.serial);
                    self.fail(msd::SENSE_MEDIUM_ERROR, msd::ASC_WRITE_ERROR)
                }
            },
            _ => self.fail(msd::SENSE_ILLEGAL_REQUEST, msd::ASC_INVALID_OPCODE),
        }
    }

    /// A CBW arrived on bulk OUT (BOT 6.2: valid and meaningful).
    fn command(&mut self, cbw: &[u8]) -> bool {
        if cbw.len() != msd::CBW_LEN || be_u32_le(cbw, 0) != msd::CBW_SIGNATURE {
            return false;
        }
        let cb_len = usize::from(cbw[msd::CBW_CB_LEN] & 0x1f);
        let lun = cbw[msd::CBW_LUN] & 0x0f;
        if cb_len == 0 || cb_len > msd::CB_MAX {
            return false;
        }
        let tag = be_u32_le(cbw, msd::CBW_TAG);
        let host = u64::from(be_u32_le(cbw, msd::CBW_DATA_LEN));
        let host_in = cbw[msd::CBW_FLAGS] & msd::CBW_FLAG_IN != 0;
        let cb = cbw[msd::CBW_CB..msd::CBW_CB + cb_len].to_vec();
        let (action, status) = self.execute(lun, &cb);
        // The thirteen cases of BOT 6.7: the host's expectation against
        // what the command does.
        self.phase = match action {
            Action::None => {
                if host > 0 {
                    // Hi > Dn / Ho > Dn: the data stage ends in a STALL.
                    self.state.halt(if host_in { EP_IN } else { EP_OUT });
                }
                Phase::Status(csw(tag, host, status))
            }
            Action::In(source, n) => {
                if host == 0 || !host_in {
                    if host > 0 {
                        self.state.halt(EP_OUT);
                    }
                    Phase::Status(csw(tag, host, msd::CSW_PHASE_ERROR))
                } else {
                    Phase::DataIn {
                        tag,
                        host_left: host,
                        left: n.min(host),
                        source,
                        status,
                    }
                }
            }
            Action::Out(sink, n) => {
                if host == 0 || host_in {
                    if host > 0 {
                        self.state.halt(EP_IN);
                    }
                    Phase::Status(csw(tag, host, msd::CSW_PHASE_ERROR))
                } else {
                    Phase::DataOut {
                        tag,
                        host_left: host,
                        left: n.min(host),
                        sink,
                        status,
                    }
                }
            }
        };
        true
    }

    /// Takes up to `max` bytes from a data-in source.
    fn pull(&mut self, max: usize) -> Vec<u8> {
        let Phase::DataIn {
            left,
            host_left,
            source,
            status,
            ..
        } = &mut self.phase
        else {
            return Vec::new();
        };
        let want = (max as u64).min(*left) as usize;
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            match source {
                Source::Buffer(v, pos) => {
                    let end = (*pos + want - out.len()).min(v.len());
                    out.extend_from_slice(&v[*pos..end]);
                    *pos = end;
                    if end == v.len() {
                        break;
                    }
                }
                Source::Disk {
                    offset,
                    remaining,
                    ahead,
                    pos,
                } => {
                    if *pos == ahead.len() {
                        if *remaining == 0 {
                            break;
                        }
                        let n = (*remaining).min(CHUNK as u64) as usize;
                        ahead.resize(n, 0);
                        if let Err(e) = self.medium.read_at(*offset, ahead) {
                            tracing::error!(
                                "USB disk {}: read at {offset:#x}+{n:#x} failed: {e}",
                                self.serial
                            );
                            ahead.fill(0);
                            *status = msd::CSW_FAILED;
                            self.sense = (msd::SENSE_MEDIUM_ERROR, msd::ASC_UNRECOVERED_READ_ERROR);
                        }
                        *offset += n as u64;
                        *remaining -= n as u64;
                        *pos = 0;
                    }
                    let take = (ahead.len() - *pos).min(want - out.len());
                    out.extend_from_slice(&ahead[*pos..*pos + take]);
                    *pos += take;
                }
            }
        }
        *left -= out.len() as u64;
        *host_left -= out.len() as u64;
        out
    }

    fn bulk_in(&mut self, length: usize) -> Result<Vec<u8>, TransferStatus> {
        if self.state.is_halted(EP_IN) {
            return Err(TransferStatus::Stall);
        }
        match &self.phase {
            Phase::DataIn {
                left,
                host_left,
                tag,
                status,
                ..
            } => {
                let (tag, status, host_left) = (*tag, *status, *host_left);
                if *left == 0 {
                    // The host wants more than the command has, and the
                    // last packet was full: end the stage with a STALL
                    // (BOT 6.7.2, case 5).
                    self.state.halt(EP_IN);
                    self.phase = Phase::Status(csw(tag, host_left, status));
                    return Err(TransferStatus::Stall);
                }
                let v = self.pull(length);
                if let Phase::DataIn {
                    left,
                    host_left,
                    tag,
                    status,
                    ..
                } = &self.phase
                {
                    if *host_left == 0 || (*left == 0 && v.len() < length) {
                        self.phase = Phase::Status(csw(*tag, *host_left, *status));
                    }
                }
                Ok(v)
            }
            Phase::Status(c) => {
                if length < msd::CSW_LEN {
                    return Err(TransferStatus::Babble);
                }
                let c = c.to_vec();
                self.phase = Phase::Command;
                Ok(c)
            }
            Phase::NeedReset => Err(TransferStatus::Stall),
            Phase::Command | Phase::DataOut { .. } => Err(TransferStatus::Nak),
        }
    }

    fn write_back(&mut self, offset: u64, data: &[u8]) -> bool {
        match self.medium.write_at(offset, data) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    "USB disk {}: write at {offset:#x}+{:#x} failed: {e}",
                    self.serial,
                    data.len()
                );
                self.sense = (msd::SENSE_MEDIUM_ERROR, msd::ASC_WRITE_ERROR);
                false
            }
        }
    }

    fn bulk_out(&mut self, data: &[u8]) -> Result<usize, TransferStatus> {
        if self.state.is_halted(EP_OUT) {
            return Err(TransferStatus::Stall);
        }
        match &mut self.phase {
            Phase::Command => {
                if self.command(data) {
                    Ok(data.len())
                } else {
                    self.state.halt(EP_IN);
                    self.state.halt(EP_OUT);
                    self.phase = Phase::NeedReset;
                    Err(TransferStatus::Stall)
                }
            }
            Phase::DataOut {
                host_left,
                left,
                sink,
                ..
            } => {
                let n = (data.len() as u64).min(*host_left) as usize;
                let take = (n as u64).min(*left) as usize;
                *host_left -= n as u64;
                *left -= take as u64;
                let mut flush: Option<(u64, Vec<u8>)> = None;
                if let Sink::Disk { offset, pending } = sink {
                    pending.extend_from_slice(&data[..take]);
                    let whole = pending.len() as u64 / self.block * self.block;
                    if pending.len() >= CHUNK || (*left == 0 && whole > 0) {
                        let chunk: Vec<u8> = pending.drain(..whole as usize).collect();
                        flush = Some((*offset, chunk));
                        *offset += whole;
                    }
                }
                let done = *host_left == 0;
                if let Some((at, chunk)) = flush {
                    if !self.write_back(at, &chunk) {
                        if let Phase::DataOut { status, sink, .. } = &mut self.phase {
                            *status = msd::CSW_FAILED;
                            *sink = Sink::Discard;
                        }
                    }
                }
                if done {
                    if let Phase::DataOut {
                        tag,
                        host_left,
                        left,
                        status,
                        ..
                    } = &self.phase
                    {
                        self.phase = Phase::Status(csw(*tag, *host_left + *left, *status));
                    }
                }
                Ok(n)
            }
            Phase::NeedReset => Err(TransferStatus::Stall),
            Phase::DataIn { .. } | Phase::Status(_) => Err(TransferStatus::Stall),
        }
    }

    fn control(&mut self, setup: &super::Setup, done: Completer) {
        if let Some(a) = device::standard_request(&self.info, &mut self.state, setup, self.speed) {
            return device::complete_control(done, a);
        }
        let class_iface = setup.request_type & (ch9::REQ_TYPE_MASK | ch9::REQ_RECIPIENT_MASK)
            == ch9::REQ_TYPE_CLASS | ch9::REQ_RECIPIENT_INTERFACE;
        match setup.request {
            msd::REQ_GET_MAX_LUN if class_iface && setup.direction() == Direction::In => {
                done.data_in(vec![0]);
            }
            msd::REQ_BULK_ONLY_RESET if class_iface && setup.direction() == Direction::Out => {
                // Reset recovery: ready for a CBW; the host clears the
                // halts itself (BOT 5.3.4).
                self.phase = Phase::Command;
                done.done_out(0);
            }
            _ => done.fail(TransferStatus::Stall),
        }
    }
}

fn be_u32_le(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

impl UsbDevice for UsbStorage {
    fn name(&self) -> &str {
        "usb-storage"
    }

    fn speed(&self, max: Speed) -> Speed {
        max.min(Speed::High)
    }

    fn reset(&mut self, speed: Speed) {
        self.speed = speed;
        self.info = self.describe(speed);
        self.state = DeviceState::default();
        self.phase = Phase::Command;
    }

    fn submit(&mut self, t: Transfer, done: Completer) {
        match t.kind {
            TransferKind::Control(setup) => self.control(&setup, done),
            _ if self.state.configuration == 0 => done.fail(TransferStatus::Stall),
            TransferKind::Bulk if t.direction == Direction::In && t.endpoint == EP_IN & 0x0f => {
                match self.bulk_in(t.length) {
                    Ok(v) => done.data_in(v),
                    Err(s) => done.fail(s),
                }
            }
            TransferKind::Bulk if t.direction == Direction::Out && t.endpoint == EP_OUT => {
                match self.bulk_out(&t.data) {
                    Ok(n) => done.done_out(n),
                    Err(s) => done.fail(s),
                }
            }
            _ => done.fail(TransferStatus::Stall),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::MemDisk;
    use crate::usb::{CompletionQueue, Setup};

    struct Host {
        dev: UsbStorage,
        q: Arc<CompletionQueue>,
        disk: Arc<MemDisk>,
        tag: u32,
    }

    impl Host {
        fn new(size: u64, ro: bool) -> Self {
            let disk = Arc::new(MemDisk::new(size));
            let mut dev = UsbStorage::new(disk.clone(), ro, "0123456789AB");
            dev.reset(Speed::Full);
            let mut h = Self {
                dev,
                q: CompletionQueue::new(),
                disk,
                tag: 0,
            };
            h.control(0x00, ch9::SET_CONFIGURATION, 1, 0, 0).unwrap();
            h
        }

        fn go(&mut self, t: Transfer) -> (TransferStatus, Vec<u8>, usize) {
            self.dev.submit(t, Completer::new(1, self.q.clone()));
            let c = self.q.drain().pop().unwrap();
            (c.status, c.data, c.actual_out)
        }

        fn control(
            &mut self,
            rt: u8,
            req: u8,
            value: u16,
            index: u16,
            len: u16,
        ) -> Result<Vec<u8>, TransferStatus> {
            let setup = Setup {
                request_type: rt,
                request: req,
                value,
                index,
                length: len,
            };
            let (s, d, _) = self.go(Transfer {
                kind: TransferKind::Control(setup),
                endpoint: 0,
                direction: setup.direction(),
                data: vec![],
                length: usize::from(len),
            });
            if s == TransferStatus::Success {
                Ok(d)
            } else {
                Err(s)
            }
        }

        fn out(&mut self, data: &[u8]) -> TransferStatus {
            self.go(Transfer {
                kind: TransferKind::Bulk,
                endpoint: 2,
                direction: Direction::Out,
                data: data.to_vec(),
                length: 0,
            })
            .0
        }

        fn inp(&mut self, len: usize) -> (TransferStatus, Vec<u8>) {
            let (s, d, _) = self.go(Transfer {
                kind: TransferKind::Bulk,
                endpoint: 1,
                direction: Direction::In,
                data: vec![],
                length: len,
            });
            (s, d)
        }

        fn cbw(&mut self, host_len: u32, dir_in: bool, cb: &[u8]) -> TransferStatus {
            self.tag += 1;
            let mut c = vec![0u8; 31];
            c[0..4].copy_from_slice(&msd::CBW_SIGNATURE.to_le_bytes());
            c[4..8].copy_from_slice(&self.tag.to_le_bytes());
            c[8..12].copy_from_slice(&host_len.to_le_bytes());
            c[12] = if dir_in { 0x80 } else { 0 };
            c[14] = cb.len() as u8;
            c[15..15 + cb.len()].copy_from_slice(cb);
            self.out(&c)
        }

        /// Reads the CSW: (tag, residue, status).
        fn csw(&mut self) -> (u32, u32, u8) {
            let (s, d) = self.inp(13);
            assert_eq!(s, TransferStatus::Success);
            assert_eq!(&d[0..4], &msd::CSW_SIGNATURE.to_le_bytes());
            (
                u32::from_le_bytes(d[4..8].try_into().unwrap()),
                u32::from_le_bytes(d[8..12].try_into().unwrap()),
                d[12],
            )
        }

        /// A data-in command read in 64-byte packets.
        fn read_cmd(&mut self, host_len: u32, cb: &[u8]) -> (Vec<u8>, u32, u8) {
            assert_eq!(self.cbw(host_len, true, cb), TransferStatus::Success);
            let mut v = Vec::new();
            loop {
                let (s, d) = self.inp(64);
                if s == TransferStatus::Stall {
                    self.control(0x02, ch9::CLEAR_FEATURE, 0, 0x81, 0).unwrap();
                    break;
                }
                assert_eq!(s, TransferStatus::Success);
                let short = d.len() < 64;
                v.extend_from_slice(&d);
                if short || v.len() == host_len as usize {
                    break;
                }
            }
            let (tag, residue, status) = self.csw();
            assert_eq!(tag, self.tag);
            (v, residue, status)
        }
    }

    #[test]
    fn inquiry_capacity_and_sense() {
        let mut h = Host::new(8 << 20, false);
        assert_eq!(h.control(0xa1, msd::REQ_GET_MAX_LUN, 0, 0, 1), Ok(vec![0]));
        let (d, residue, status) = h.read_cmd(36, &[msd::INQUIRY, 0, 0, 0, 36, 0]);
        assert_eq!((residue, status), (0, 0));
        assert_eq!(d[0], 0);
        assert_eq!(&d[8..14], b"REHOST");
        let (d, _, status) = h.read_cmd(8, &[msd::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(status, 0);
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 16383);
        assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 512);
        let mut rc16 = [0u8; 16];
        rc16[0] = msd::SERVICE_ACTION_IN_16;
        rc16[1] = msd::SA_READ_CAPACITY_16;
        rc16[13] = 32;
        let (d, _, status) = h.read_cmd(32, &rc16);
        assert_eq!(status, 0);
        assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), 16383);
        // An unknown opcode fails; REQUEST SENSE says why.
        assert_eq!(
            h.cbw(0, false, &[0xc7, 0, 0, 0, 0, 0]),
            TransferStatus::Success
        );
        assert_eq!(h.csw().2, msd::CSW_FAILED);
        let (d, _, _) = h.read_cmd(18, &[msd::REQUEST_SENSE, 0, 0, 0, 18, 0]);
        assert_eq!((d[2], d[12]), (msd::SENSE_ILLEGAL_REQUEST, 0x20));
        // Host asks for more than INQUIRY has: short packet, residue.
        let (d, residue, status) = h.read_cmd(96, &[msd::INQUIRY, 0, 0, 0, 96, 0]);
        assert_eq!((d.len(), residue, status), (36, 60, 0));
        // MODE SENSE(6), all pages: header and caching page, 24 bytes,
        // ended by a short packet.
        let (d, residue, _) = h.read_cmd(192, &[msd::MODE_SENSE_6, 0, 0x3f, 0, 192, 0]);
        assert_eq!(d.len(), 24);
        assert_eq!(d[0] as usize, 23);
        assert_eq!(residue, 168);
    }

    #[test]
    fn reads_and_writes_reach_the_medium() {
        let mut h = Host::new(8 << 20, false);
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        // WRITE(10) 8 blocks at LBA 100, in 64-byte packets.
        assert_eq!(
            h.cbw(4096, false, &[msd::WRITE_10, 0, 0, 0, 0, 100, 0, 0, 8, 0]),
            TransferStatus::Success
        );
        for p in data.chunks(64) {
            assert_eq!(h.out(p), TransferStatus::Success);
        }
        assert_eq!(h.csw().2, 0);
        let mut back = vec![0u8; 4096];
        h.disk.read_at(100 * 512, &mut back).unwrap();
        assert_eq!(back, data);
        // READ(16) of the same.
        let mut r16 = [0u8; 16];
        r16[0] = msd::READ_16;
        r16[9] = 100;
        r16[13] = 8;
        let (d, residue, status) = h.read_cmd(4096, &r16);
        assert_eq!((residue, status), (0, 0));
        assert_eq!(d, data);
        // Past the end: CHECK CONDITION, no data, residue all.
        let (d, residue, status) = h.read_cmd(512, &[msd::READ_10, 0, 0, 0, 0x40, 0, 0, 0, 1, 0]);
        assert!(d.is_empty());
        assert_eq!((residue, status), (512, msd::CSW_FAILED));
        // SYNCHRONIZE CACHE flushes.
        assert_eq!(
            h.cbw(
                0,
                false,
                &[msd::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            ),
            TransferStatus::Success
        );
        assert_eq!(h.csw().2, 0);
        assert_eq!(h.disk.flushes(), 1);
    }

    #[test]
    fn read_only_disk_refuses_writes_and_bad_cbw_needs_reset() {
        let mut h = Host::new(1 << 20, true);
        assert_eq!(
            h.cbw(512, false, &[msd::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            TransferStatus::Success
        );
        // Ho > Dn: the data stage stalls.
        assert_eq!(h.out(&[0u8; 64]), TransferStatus::Stall);
        h.control(0x02, ch9::CLEAR_FEATURE, 0, 0x02, 0).unwrap();
        let (_, residue, status) = h.csw();
        assert_eq!((residue, status), (512, msd::CSW_FAILED));
        let (d, _, _) = h.read_cmd(18, &[msd::REQUEST_SENSE, 0, 0, 0, 18, 0]);
        assert_eq!(d[2], msd::SENSE_DATA_PROTECT);
        let (d, _, _) = h.read_cmd(4, &[msd::MODE_SENSE_6, 0, 0x3f, 0, 4, 0]);
        assert_eq!(d[2] & msd::MODE_WP, msd::MODE_WP);
        // Garbage instead of a CBW: both endpoints stall until reset.
        assert_eq!(h.out(b"not a cbw"), TransferStatus::Stall);
        assert_eq!(h.inp(13).0, TransferStatus::Stall);
        h.control(0x21, msd::REQ_BULK_ONLY_RESET, 0, 0, 0).unwrap();
        h.control(0x02, ch9::CLEAR_FEATURE, 0, 0x81, 0).unwrap();
        h.control(0x02, ch9::CLEAR_FEATURE, 0, 0x02, 0).unwrap();
        let (d, _, status) = h.read_cmd(36, &[msd::INQUIRY, 0, 0, 0, 36, 0]);
        assert_eq!((d.len(), status), (36, 0));
        assert!(h
            .disk
            .take_log()
            .iter()
            .all(|a| !matches!(a, crate::storage::testing::Access::Write { .. })));
    }
}
