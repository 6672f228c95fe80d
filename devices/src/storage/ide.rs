//! The PIIX3 IDE function (00:01.1): two channels in compatibility mode at
//! the legacy ports (0x1F0/0x3F6 on IRQ 14, 0x170/0x376 on IRQ 15), each
//! with a master and a slave, and bus-master DMA through PRD tables at
//! BAR 4. Commands are executed by the shared ATA layer; this module only
//! moves registers, PIO data blocks and PRD tables.

use std::sync::Arc;

use super::ata::{AtaDevice, AtaStatus, DataPhase, Direction, DmaEnd, Next, Protocol, TaskFile};
use super::ata_spec as ata;
use super::atapi_spec::CDB_LEN;
use super::dma::{self, DmaFault, DmaTarget, SgList};
use super::ide_spec as spec;
use crate::bus::BusDevice;
use crate::guest_error;
use crate::irq::IrqLine;
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_IO};
use crate::pci::{BarKind, ConfigSpace, PciFunction};
use crate::GuestMemory;

/// What a drive is doing.
#[derive(Debug)]
enum DriveState {
    Idle,
    /// PIO data-in: the current DRQ block and how much the host has read.
    PioIn {
        phase: DataPhase,
        block: Vec<u8>,
        pos: usize,
    },
    /// PIO data-out: the DRQ block being filled by the host.
    PioOut {
        phase: DataPhase,
        block: Vec<u8>,
        want: usize,
    },
    /// ATAPI: collecting the command packet.
    PacketCdb {
        cdb: Vec<u8>,
        dma: bool,
        limit: u16,
    },
    /// A DMA command waits for the bus master to start.
    DmaPending {
        phase: DataPhase,
    },
}

/// One device position on a channel and its copy of the shadow registers
/// (both devices latch every register write, ATA8-ACS 6).
#[derive(Debug)]
struct Drive {
    device: Option<AtaDevice>,
    tf: TaskFile,
    status: u8,
    error: u8,
    /// INTRQ pending (cleared by reading Status or writing Command).
    intrq: bool,
    state: DriveState,
}

impl Drive {
    fn new(device: Option<AtaDevice>) -> Self {
        let mut d = Self {
            device,
            tf: TaskFile::default(),
            status: 0,
            error: 0,
            intrq: false,
            state: DriveState::Idle,
        };
        d.power_on_reset();
        d
    }

    fn power_on_reset(&mut self) {
        self.state = DriveState::Idle;
        self.intrq = false;
        self.tf.device = 0;
        match &mut self.device {
            Some(dev) => {
                let st = dev.reset(&mut self.tf);
                self.status = st.status;
                self.error = st.error;
            }
            None => {
                self.status = 0;
                self.error = 0;
            }
        }
    }

    fn complete(&mut self, st: AtaStatus) {
        self.status = st.status;
        self.error = st.error;
        self.state = DriveState::Idle;
        self.intrq = true;
    }

    fn in_flight(&self) -> bool {
        !matches!(self.state, DriveState::Idle)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct BusMaster {
    command: u8,
    status: u8,
    prd_table: u32,
}

/// One IDE channel.
struct Channel {
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    drives: [Drive; 2],
    selected: usize,
    control: u8,
    bm: BusMaster,
}

impl Channel {
    fn any_present(&self) -> bool {
        self.drives.iter().any(|d| d.device.is_some())
    }

    fn update_irq(&mut self) {
        let level = self.drives[self.selected].intrq && self.control & spec::CONTROL_NIEN == 0;
        if level && !self.irq_level {
            self.bm.status |= spec::BM_STATUS_INTERRUPT;
        }
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }
}

/// The PIIX3 IDE PCI function with its two channels.
pub struct PiixIde {
    cs: ConfigSpace,
    mem: GuestMemory,
    channels: [Channel; 2],
}

/// The drives of one channel: master and slave.
pub type ChannelDrives = [Option<AtaDevice>; 2];

impl PiixIde {
    /// `drives[channel][position]`; `irqs` are the ISA lines 14 and 15.
    pub fn new(mem: GuestMemory, drives: [ChannelDrives; 2], irqs: [Arc<dyn IrqLine>; 2]) -> Self {
        let mut cs = ConfigSpace::new(
            spec::VENDOR_INTEL,
            spec::DEVICE_PIIX3_IDE,
            spec::CLASS_IDE_BUS_MASTER,
            0,
        );
        cs.add_bar(spec::BAR_BUS_MASTER, BarKind::Io, spec::BUS_MASTER_LEN);
        for reg in spec::REG_IDETIM {
            cs.set_wmask_u16(reg, 0xf3ff);
        }
        cs.set_wmask_u8(spec::REG_SIDETIM, 0xff);
        let [d0, d1] = drives;
        let [i0, i1] = irqs;
        let mk = |d: ChannelDrives, irq: Arc<dyn IrqLine>| {
            let [m, s] = d;
            Channel {
                irq,
                irq_level: false,
                drives: [Drive::new(m), Drive::new(s)],
                selected: 0,
                control: 0,
                bm: BusMaster::default(),
            }
        };
        Self {
            cs,
            mem,
            channels: [mk(d0, i0), mk(d1, i1)],
        }
    }

    /// Flushes every disk (for an orderly shutdown).
    pub fn flush(&self) {
        for c in &self.channels {
            for d in c.drives.iter().filter_map(|d| d.device.as_ref()) {
                if let Err(e) = d.flush() {
                    tracing::error!("IDE: flushing a disk failed: {e}");
                }
            }
        }
    }

    /// Mutable access to a drive, e.g. to change a CD-ROM's medium.
    pub fn device_mut(&mut self, channel: usize, position: usize) -> Option<&mut AtaDevice> {
        self.channels
            .get_mut(channel)?
            .drives
            .get_mut(position)?
            .device
            .as_mut()
    }

    fn decodes(&self, channel: usize) -> bool {
        self.cs.command() & COMMAND_IO != 0
            && self.cs.read_u16(spec::REG_IDETIM[channel]) & spec::IDETIM_DECODE_ENABLE != 0
    }

    fn bus_master_base(&self) -> Option<u64> {
        self.cs.bar_region(spec::BAR_BUS_MASTER).map(|r| r.base)
    }

    /// Which register an absolute I/O address is.
    fn decode(&self, addr: u64) -> Option<Port> {
        for ch in 0..2 {
            let cmd = spec::COMMAND_BLOCK[ch];
            if (cmd..cmd + spec::COMMAND_BLOCK_LEN).contains(&addr) && self.decodes(ch) {
                return Some(Port::Command(ch, addr - cmd));
            }
            if addr == spec::CONTROL_BLOCK[ch] && self.decodes(ch) {
                return Some(Port::Control(ch));
            }
        }
        let base = self.bus_master_base()?;
        if (base..base + spec::BUS_MASTER_LEN).contains(&addr) {
            let off = addr - base;
            return Some(Port::BusMaster(
                (off / spec::BM_CHANNEL_STRIDE) as usize,
                off % spec::BM_CHANNEL_STRIDE,
            ));
        }
        None
    }

    // --- command block -------------------------------------------------

    fn read_command_block(&mut self, ch: usize, reg: u64, data: &mut [u8]) {
        let c = &mut self.channels[ch];
        if reg == spec::REG_DATA {
            Self::read_data(c, data);
            return;
        }
        let mut v = 0u8;
        if c.any_present() {
            let hob = c.control & spec::CONTROL_HOB != 0;
            let present = c.drives[c.selected].device.is_some();
            let d = &c.drives[c.selected];
            let tf = &d.tf;
            v = match reg {
                spec::REG_ERROR_FEATURES => {
                    if present {
                        d.error
                    } else {
                        0
                    }
                }
                spec::REG_COUNT => {
                    if hob {
                        tf.count_exp
                    } else {
                        tf.count
                    }
                }
                spec::REG_LBA_LOW => {
                    if hob {
                        tf.lba_low_exp
                    } else {
                        tf.lba_low
                    }
                }
                spec::REG_LBA_MID => {
                    if hob {
                        tf.lba_mid_exp
                    } else {
                        tf.lba_mid
                    }
                }
                spec::REG_LBA_HIGH => {
                    if hob {
                        tf.lba_high_exp
                    } else {
                        tf.lba_high
                    }
                }
                spec::REG_DEVICE => tf.device | spec_device_fixed(),
                _ => {
                    // Status: reading it acknowledges the interrupt.
                    // Device 0 answers 00h for an absent device 1.
                    let s = if present { d.status } else { 0 };
                    c.drives[c.selected].intrq = false;
                    c.update_irq();
                    s
                }
            };
        }
        data.fill(0);
        data[0] = v;
    }

    fn write_command_block(&mut self, ch: usize, reg: u64, v: u8) {
        let c = &mut self.channels[ch];
        if reg == spec::REG_DATA {
            return;
        }
        // Any command block write clears HOB (ATA8-ACS 6.1.5).
        c.control &= !spec::CONTROL_HOB;
        match reg {
            spec::REG_STATUS_COMMAND => {
                let sel = c.selected;
                self.command(ch, sel, v);
                return;
            }
            spec::REG_DEVICE => {
                for d in &mut c.drives {
                    d.tf.device = v;
                }
                let old = c.selected;
                c.selected = usize::from(v & ata::DEVICE_DEV1 != 0);
                if old != c.selected {
                    c.update_irq();
                }
                return;
            }
            _ => {}
        }
        for d in &mut c.drives {
            // Writes to a device with a command in progress are ignored
            // by it (ATA8-ACS 6: BSY or DRQ set).
            if d.in_flight() {
                continue;
            }
            let tf = &mut d.tf;
            let (cur, prev) = match reg {
                spec::REG_ERROR_FEATURES => (&mut tf.features, &mut tf.features_exp),
                spec::REG_COUNT => (&mut tf.count, &mut tf.count_exp),
                spec::REG_LBA_LOW => (&mut tf.lba_low, &mut tf.lba_low_exp),
                spec::REG_LBA_MID => (&mut tf.lba_mid, &mut tf.lba_mid_exp),
                _ => (&mut tf.lba_high, &mut tf.lba_high_exp),
            };
            *prev = *cur;
            *cur = v;
        }
    }

    fn write_control(&mut self, ch: usize, v: u8) {
        let c = &mut self.channels[ch];
        let old = c.control;
        c.control = v;
        if v & spec::CONTROL_SRST != 0 && old & spec::CONTROL_SRST == 0 {
            for d in &mut c.drives {
                d.state = DriveState::Idle;
                d.intrq = false;
                if d.device.is_some() {
                    d.status = ata::STATUS_BSY;
                }
            }
        } else if v & spec::CONTROL_SRST == 0 && old & spec::CONTROL_SRST != 0 {
            for d in &mut c.drives {
                d.power_on_reset();
            }
            c.selected = 0;
        }
        c.update_irq();
    }

    // --- commands ------------------------------------------------------

    fn command(&mut self, ch: usize, pos: usize, command: u8) {
        let c = &mut self.channels[ch];
        let d = &mut c.drives[pos];
        let in_flight = d.in_flight();
        let Some(dev) = d.device.as_mut() else {
            // Commands to an absent device are not executed.
            return;
        };
        if in_flight && !(command == ata::CMD_DEVICE_RESET && dev.is_atapi()) {
            guest_error!(
                "IDE{ch}.{pos}: command {command:#04x} written while a command is in progress; ignored"
            );
            return;
        }
        d.intrq = false;
        d.tf.command = command;
        let next = dev.execute(&mut d.tf);
        self.start(ch, pos, next);
    }

    /// Enters the phase that follows a command or a command packet.
    fn start(&mut self, ch: usize, pos: usize, next: Next) {
        let bm_running = {
            let c = &self.channels[ch];
            c.bm.command & spec::BM_CMD_START != 0
        };
        let c = &mut self.channels[ch];
        let d = &mut c.drives[pos];
        // PACKET phases report the ATAPI interrupt reason; ATA commands
        // to an ATAPI device follow the ATA protocols.
        let atapi = d.tf.command == ata::CMD_PACKET;
        match next {
            Next::Done(st) => {
                if atapi {
                    d.tf.count = spec::IREASON_IO | spec::IREASON_COD;
                }
                d.complete(st);
            }
            Next::Packet {
                dma,
                byte_count_limit,
            } => {
                d.tf.count = spec::IREASON_COD;
                d.status = ata::STATUS_READY_DRQ;
                d.error = 0;
                d.state = DriveState::PacketCdb {
                    cdb: Vec::with_capacity(CDB_LEN),
                    dma,
                    limit: byte_count_limit,
                };
            }
            Next::Data(phase) => match (phase.protocol, phase.direction) {
                (Protocol::Pio, Direction::In) => Self::next_pio_in_block(d, phase, atapi),
                (Protocol::Pio, Direction::Out) => {
                    let want = phase.next_block();
                    d.status = ata::STATUS_READY_DRQ;
                    d.error = 0;
                    d.state = DriveState::PioOut {
                        phase,
                        block: Vec::with_capacity(want),
                        want,
                    };
                }
                (Protocol::Dma, _) => {
                    d.status = ata::STATUS_READY_DRQ;
                    d.error = 0;
                    d.state = DriveState::DmaPending { phase };
                    if bm_running {
                        self.run_bus_master(ch);
                    }
                }
                (Protocol::Queued { .. }, _) => {
                    // The ATA layer refuses queued commands on a parallel
                    // link; nothing to do but abort.
                    d.complete(AtaStatus::ABORTED);
                }
            },
        }
        self.channels[ch].update_irq();
    }

    /// Loads the next DRQ block of a PIO data-in phase (or ends it).
    fn next_pio_in_block(d: &mut Drive, mut phase: DataPhase, atapi: bool) {
        let Some(dev) = d.device.as_mut() else {
            return;
        };
        if phase.is_complete() {
            let st = dev.finish(&mut phase, &mut d.tf);
            if atapi {
                d.complete(st);
            } else {
                // No interrupt after the last block of a PIO data-in
                // command (ATA8-ACS 9.x, PIO data-in protocol).
                d.status = st.status;
                d.error = st.error;
                d.state = DriveState::Idle;
                if st.is_error() {
                    d.intrq = true;
                }
            }
            return;
        }
        let n = phase.next_block();
        let mut block = vec![0u8; n];
        match dev.data_in(&mut phase, &mut d.tf, &mut block) {
            Ok(()) => {
                if atapi {
                    d.tf.count = spec::IREASON_IO;
                    d.tf.lba_mid = n as u8;
                    d.tf.lba_high = (n >> 8) as u8;
                }
                d.status = ata::STATUS_READY_DRQ;
                d.error = 0;
                d.intrq = true;
                d.state = DriveState::PioIn {
                    phase,
                    block,
                    pos: 0,
                };
            }
            Err(st) => {
                if atapi {
                    d.tf.count = spec::IREASON_IO | spec::IREASON_COD;
                }
                d.complete(st);
            }
        }
    }

    fn read_data(c: &mut Channel, data: &mut [u8]) {
        let sel = c.selected;
        let d = &mut c.drives[sel];
        let atapi = d.tf.command == ata::CMD_PACKET;
        let DriveState::PioIn { block, pos, .. } = &mut d.state else {
            data.fill(0xff);
            return;
        };
        let n = data.len().min(block.len() - *pos);
        data[..n].copy_from_slice(&block[*pos..*pos + n]);
        data[n..].fill(0xff);
        *pos += n;
        if *pos < block.len() {
            return;
        }
        let DriveState::PioIn { phase, .. } = std::mem::replace(&mut d.state, DriveState::Idle)
        else {
            return;
        };
        Self::next_pio_in_block(d, phase, atapi);
        c.update_irq();
    }

    fn write_data(&mut self, ch: usize, data: &[u8]) {
        let c = &mut self.channels[ch];
        let pos = c.selected;
        let d = &mut c.drives[pos];
        match &mut d.state {
            DriveState::PioOut { block, want, .. } => {
                let n = data.len().min(*want - block.len());
                block.extend_from_slice(&data[..n]);
                if block.len() < *want {
                    return;
                }
            }
            DriveState::PacketCdb { cdb, .. } => {
                let n = data.len().min(CDB_LEN - cdb.len());
                cdb.extend_from_slice(&data[..n]);
                if cdb.len() < CDB_LEN {
                    return;
                }
            }
            _ => {
                guest_error!("IDE{ch}.{pos}: data port written outside a data-out phase");
                return;
            }
        }
        match std::mem::replace(&mut d.state, DriveState::Idle) {
            DriveState::PioOut {
                mut phase, block, ..
            } => {
                let Some(dev) = d.device.as_mut() else {
                    return;
                };
                match dev.data_out(&mut phase, &mut d.tf, &block) {
                    Err(st) => d.complete(st),
                    Ok(()) if phase.is_complete() => {
                        let st = dev.finish(&mut phase, &mut d.tf);
                        d.complete(st);
                    }
                    Ok(()) => {
                        let want = phase.next_block();
                        d.status = ata::STATUS_READY_DRQ;
                        d.intrq = true;
                        d.state = DriveState::PioOut {
                            phase,
                            block: Vec::with_capacity(want),
                            want,
                        };
                    }
                }
                c.update_irq();
            }
            DriveState::PacketCdb { cdb, dma, limit } => {
                let Some(dev) = d.device.as_mut() else {
                    return;
                };
                let next = dev.packet(&cdb, &mut d.tf, dma, limit);
                self.start(ch, pos, next);
            }
            other => d.state = other,
        }
    }

    // --- bus master ----------------------------------------------------

    fn read_bus_master(&self, ch: usize, reg: u64, data: &mut [u8]) {
        let bm = &self.channels[ch].bm;
        let mut regs = [0u8; 8];
        regs[spec::BM_COMMAND as usize] = bm.command;
        regs[spec::BM_STATUS as usize] = bm.status;
        regs[4..8].copy_from_slice(&bm.prd_table.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.get(reg as usize + i).copied().unwrap_or(0);
        }
    }

    fn write_bus_master(&mut self, ch: usize, reg: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let r = reg + i as u64;
            let bm = &mut self.channels[ch].bm;
            match r {
                spec::BM_COMMAND => {
                    let old = bm.command;
                    bm.command = v & spec::BM_CMD_MASK;
                    if v & spec::BM_CMD_START != 0 && old & spec::BM_CMD_START == 0 {
                        bm.status |= spec::BM_STATUS_ACTIVE;
                        self.run_bus_master(ch);
                    } else if v & spec::BM_CMD_START == 0 {
                        // Stopping the engine ends any transfer.
                        bm.status &= !spec::BM_STATUS_ACTIVE;
                    }
                }
                spec::BM_STATUS => {
                    bm.status = (bm.status & !(spec::BM_STATUS_DRIVE_DMA))
                        | (v & spec::BM_STATUS_DRIVE_DMA);
                    bm.status &= !(v & (spec::BM_STATUS_ERROR | spec::BM_STATUS_INTERRUPT));
                }
                4..=7 => {
                    let shift = (r - 4) * 8;
                    let mut t = bm.prd_table & !(0xff << shift);
                    t |= u32::from(v) << shift;
                    bm.prd_table = t & !3;
                }
                _ => {}
            }
        }
    }

    /// Reads the PRD table into a scatter-gather list.
    fn prd_list(mem: &GuestMemory, table: u32) -> Result<SgList<'_>, DmaFault> {
        let mut sg = SgList::new(mem);
        let table = u64::from(table);
        for i in 0..spec::PRD_MAX_ENTRIES {
            let at = table + i * spec::PRD_SIZE;
            let (Some(addr), Some(count)) = (dma::read_u32(mem, at), dma::read_u32(mem, at + 4))
            else {
                return Err(DmaFault::OutsideRam {
                    addr: at,
                    len: spec::PRD_SIZE,
                });
            };
            let len = match count & spec::PRD_COUNT_MASK {
                0 => spec::PRD_MAX_BYTES,
                n => u64::from(n),
            };
            if count & 1 != 0 || addr & 1 != 0 {
                guest_error!("IDE: PRD entry {i} has an odd address {addr:#x} or count {count:#x}; bit 0 ignored");
            }
            sg.push(u64::from(addr & !1), len);
            if count & spec::PRD_EOT != 0 {
                return Ok(sg);
            }
        }
        guest_error!("IDE: PRD table at {table:#x} has no end-of-table entry within 64 KiB");
        Ok(sg)
    }

    /// Runs the DMA transfer of the drive that waits for one, if the
    /// engine is started and bus mastering is enabled.
    fn run_bus_master(&mut self, ch: usize) {
        if self.cs.command() & COMMAND_BUS_MASTER == 0 {
            guest_error!("IDE: bus master started with bus mastering disabled in PCI COMMAND");
            return;
        }
        let c = &mut self.channels[ch];
        if c.bm.command & spec::BM_CMD_START == 0 {
            return;
        }
        let Some(pos) =
            (0..2).find(|&p| matches!(c.drives[p].state, DriveState::DmaPending { .. }))
        else {
            return;
        };
        let d = &mut c.drives[pos];
        let DriveState::DmaPending { mut phase } =
            std::mem::replace(&mut d.state, DriveState::Idle)
        else {
            return;
        };
        let Some(dev) = d.device.as_mut() else {
            return;
        };
        let to_memory = c.bm.command & spec::BM_CMD_WRITE_TO_MEMORY != 0;
        let end = if to_memory != (phase.direction == Direction::In) {
            guest_error!("IDE{ch}.{pos}: bus master direction does not match the command");
            DmaEnd {
                moved: 0,
                status: AtaStatus::ABORTED,
                fault: Some(DmaFault::OutsideRam { addr: 0, len: 0 }),
            }
        } else {
            match Self::prd_list(&self.mem, c.bm.prd_table) {
                Ok(mut sg) => {
                    let end = dev.run_dma(&mut phase, &mut d.tf, &mut sg);
                    if end.fault.is_none() && end.moved < sg.capacity() {
                        // The table describes more than the transfer:
                        // the engine stays active (SFF-8038i 3.1).
                        c.bm.status |= spec::BM_STATUS_ACTIVE;
                    } else {
                        c.bm.status &= !spec::BM_STATUS_ACTIVE;
                    }
                    end
                }
                Err(fault) => DmaEnd {
                    moved: 0,
                    status: AtaStatus::ABORTED,
                    fault: Some(fault),
                },
            }
        };
        let atapi = d.tf.command == ata::CMD_PACKET;
        match end.fault {
            None => {
                if atapi {
                    d.tf.count = spec::IREASON_IO | spec::IREASON_COD;
                }
                d.complete(end.status);
            }
            Some(DmaFault::TableTooShort { described }) => {
                // The device still has data to move; the engine stops
                // without an interrupt and the host has to reset.
                guest_error!(
                    "IDE{ch}.{pos}: PRD table describes {described} bytes, the command moves {}",
                    phase.len
                );
                c.bm.status &= !spec::BM_STATUS_ACTIVE;
                d.status = ata::STATUS_READY_DRQ;
            }
            Some(DmaFault::OutsideRam { addr, len }) => {
                if len > 0 {
                    guest_error!(
                        "IDE{ch}.{pos}: DMA to {len} bytes at {addr:#x} outside guest RAM"
                    );
                }
                c.bm.status &= !spec::BM_STATUS_ACTIVE;
                c.bm.status |= spec::BM_STATUS_ERROR;
                if atapi {
                    d.tf.count = spec::IREASON_IO | spec::IREASON_COD;
                }
                d.complete(AtaStatus::ABORTED);
            }
        }
        c.update_irq();
    }
}

/// Bits 7 and 5 of the Device register read as one on PATA devices of
/// the PIIX era (obsolete, ATA-3).
fn spec_device_fixed() -> u8 {
    ata::DEVICE_OBSOLETE
}

enum Port {
    Command(usize, u64),
    Control(usize),
    BusMaster(usize, u64),
}

impl BusDevice for PiixIde {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        match self.decode(addr) {
            Some(Port::Command(ch, reg)) => self.read_command_block(ch, reg, data),
            Some(Port::Control(ch)) => {
                // Alternate Status: no interrupt acknowledge.
                let c = &self.channels[ch];
                let d = &c.drives[c.selected];
                let v = if d.device.is_some() { d.status } else { 0 };
                data.fill(0);
                data[0] = v;
            }
            Some(Port::BusMaster(ch, reg)) => self.read_bus_master(ch, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        match self.decode(addr) {
            Some(Port::Command(ch, spec::REG_DATA)) => self.write_data(ch, data),
            Some(Port::Command(ch, reg)) => {
                if let Some(&v) = data.first() {
                    self.write_command_block(ch, reg, v);
                }
            }
            Some(Port::Control(ch)) => {
                if let Some(&v) = data.first() {
                    self.write_control(ch, v);
                }
            }
            Some(Port::BusMaster(ch, reg)) => self.write_bus_master(ch, reg, data),
            None => {}
        }
    }
}

impl PciFunction for PiixIde {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }
}

#[cfg(test)]
#[path = "ide_tests.rs"]
mod tests;
