//! The ICH9 AHCI controller: PCI class 01/06/01, HBA memory registers at
//! ABAR (BAR 5), six ports with command lists, received-FIS areas, PRDTs
//! and native command queuing over 32 slots, interrupts through INTx or
//! MSI. Commands are executed by the shared ATA layer; this module moves
//! command headers, FISes and PRDTs.
//!
//! Commands run synchronously when software writes PxCI: by the time the
//! write returns, every issued command has completed (a fast device, which
//! AHCI allows). Queued (FPDMA) commands issued together are accepted first
//! and then executed in the device's order, ascending LBA, so completions
//! arrive out of tag order as they do on a real drive.

use std::sync::Arc;

use super::ahci_spec as spec;
use super::ata::{AtaDevice, AtaStatus, DataPhase, Direction, DmaEnd, Next, Protocol, TaskFile};
use super::ata_spec as ata;
use super::dma::{self, DmaFault, DmaTarget, SgList};
use crate::bus::BusDevice;
use crate::guest_error;
use crate::irq::{IrqLine, MsiSender};
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, REG_STATUS, STATUS_INTERRUPT};
use crate::pci::{BarKind, ConfigSpace, PciFunction};
use crate::GuestMemory;

/// A queued command accepted by the device and waiting to run.
struct Queued {
    slot: usize,
    tag: u8,
    tf: TaskFile,
    phase: DataPhase,
    header_addr: u64,
    prdt: Vec<(u64, u64, bool)>,
}

/// One AHCI port and the device behind it.
struct Port {
    device: Option<AtaDevice>,
    /// The device's shadow registers.
    tf: TaskFile,
    clb: u64,
    fb: u64,
    is: u32,
    ie: u32,
    cmd: u32,
    tfd: u32,
    sig: u32,
    sctl: u32,
    serr: u32,
    sact: u32,
    ci: u32,
    /// A FIS the device sent while FIS receive was off (the signature
    /// after a reset), posted once software sets PxCMD.FRE.
    pending_d2h: Option<[u8; 20]>,
    /// A fatal error stopped command processing until PxCMD.ST is cleared.
    halted: bool,
    /// Device Control SRST received through a control FIS.
    in_soft_reset: bool,
}

impl Port {
    fn new(device: Option<AtaDevice>) -> Self {
        let mut p = Self {
            device,
            tf: TaskFile::default(),
            clb: 0,
            fb: 0,
            is: 0,
            ie: 0,
            cmd: 0,
            tfd: spec::TFD_RESET,
            sig: 0xffff_ffff,
            sctl: 0,
            serr: 0,
            sact: 0,
            ci: 0,
            pending_d2h: None,
            halted: false,
            in_soft_reset: false,
        };
        p.comreset();
        p
    }

    /// COMRESET (or power-on): the device resets and sends its signature
    /// in a Register D2H FIS (SATA 11.3, AHCI 10.4.2).
    fn comreset(&mut self) {
        self.in_soft_reset = false;
        let Some(dev) = self.device.as_mut() else {
            self.tfd = spec::TFD_RESET;
            self.sig = 0xffff_ffff;
            return;
        };
        let st = dev.reset(&mut self.tf);
        self.sig = if dev.is_atapi() {
            spec::SIG_ATAPI
        } else {
            spec::SIG_ATA
        };
        self.tfd = u32::from(st.status) | u32::from(st.error) << 8;
        self.pending_d2h = Some(d2h_fis(st, &self.tf, false));
    }

    fn ssts(&self) -> u32 {
        if self.device.is_none() {
            return 0;
        }
        match self.sctl & spec::SCTL_DET_MASK {
            spec::SCTL_DET_COMRESET => spec::SSTS_DET_PRESENCE_NO_PHY,
            spec::SCTL_DET_OFFLINE => 0,
            _ => spec::SSTS_DET_PRESENT | spec::SSTS_SPD_GEN2 | spec::SSTS_IPM_ACTIVE,
        }
    }

    fn read_cmd(&self) -> u32 {
        // Staggered spin-up and cold presence detection are not
        // supported: SUD and POD read as one.
        self.cmd | spec::CMD_SUD | spec::CMD_POD
    }

    fn stop(&mut self) {
        self.cmd &= !(spec::CMD_CR | spec::CMD_CCS_MASK);
        self.ci = 0;
        self.sact = 0;
        self.halted = false;
    }
}

fn d2h_fis(st: AtaStatus, tf: &TaskFile, interrupt: bool) -> [u8; 20] {
    let mut f = [0u8; 20];
    f[0] = spec::FIS_REG_D2H;
    f[1] = if interrupt { spec::FIS_INTERRUPT } else { 0 };
    f[2] = st.status;
    f[3] = st.error;
    tf.store_regs(&mut f);
    f
}

/// The ICH9 AHCI controller.
pub struct Ahci {
    cs: ConfigSpace,
    mem: GuestMemory,
    intx: Arc<dyn IrqLine>,
    intx_level: bool,
    msi: Option<Arc<dyn MsiSender>>,
    ghc: u32,
    ports: Vec<Port>,
}

impl Ahci {
    /// `devices[n]` sits on port n (at most six).
    pub fn new(
        mem: GuestMemory,
        devices: Vec<Option<AtaDevice>>,
        intx: Arc<dyn IrqLine>,
        msi: Option<Arc<dyn MsiSender>>,
    ) -> Self {
        let mut cs = ConfigSpace::new(
            spec::VENDOR_INTEL,
            spec::DEVICE_ICH9_AHCI,
            spec::CLASS_SATA_AHCI,
            spec::REVISION,
        );
        cs.set_subsystem(0x1af4, 0x1100);
        cs.set_interrupt_pin(1);
        cs.add_bar(spec::BAR_ABAR, BarKind::Memory32, spec::ABAR_LEN);
        cs.add_msi_capability(spec::CAP_MSI_OFFSET);
        let mut devices = devices;
        devices.resize_with(spec::PORTS, || None);
        devices.truncate(spec::PORTS);
        let present = devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .fold(0u16, |m, (i, _)| m | 1 << (8 + i));
        cs.set_u16(spec::REG_PCS, present);
        cs.set_wmask_u16(spec::REG_PCS, 0x003f);
        Self {
            cs,
            mem,
            intx,
            intx_level: false,
            msi,
            ghc: 0,
            ports: devices.into_iter().map(Port::new).collect(),
        }
    }

    /// Flushes every disk (for an orderly shutdown).
    pub fn flush(&self) {
        for d in self.ports.iter().filter_map(|p| p.device.as_ref()) {
            if let Err(e) = d.flush() {
                tracing::error!("AHCI: flushing a disk failed: {e}");
            }
        }
    }

    /// Mutable access to the device on `port`, e.g. to change a medium.
    pub fn device_mut(&mut self, port: usize) -> Option<&mut AtaDevice> {
        self.ports.get_mut(port)?.device.as_mut()
    }

    fn cap(&self) -> u32 {
        spec::CAP_S64A
            | spec::CAP_SNCQ
            | spec::CAP_SCLO
            | spec::CAP_ISS_GEN2
            | spec::CAP_SAM
            | spec::CAP_PMD
            | (spec::SLOTS as u32 - 1) << spec::CAP_NCS_SHIFT
            | (spec::PORTS as u32 - 1)
    }

    fn interrupt_status(&self) -> u32 {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is & p.ie != 0)
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    fn msi_enabled(&self) -> bool {
        self.cs.msi_message().is_some()
    }

    /// Drives INTx from the interrupt status; with `new_event`, also
    /// sends an MSI when MSI is on.
    fn update_irq(&mut self, new_event: bool) {
        let pending = self.ghc & spec::GHC_IE != 0 && self.interrupt_status() != 0;
        let msi = self.msi_enabled() && self.msi.is_some();
        let level = pending && !msi && self.cs.command() & COMMAND_INTX_DISABLE == 0;
        let status = self.cs.read_u16(REG_STATUS) & !STATUS_INTERRUPT;
        self.cs.set_u16(
            REG_STATUS,
            status | if pending { STATUS_INTERRUPT } else { 0 },
        );
        if level != self.intx_level {
            self.intx_level = level;
            self.intx.set_level(level);
        }
        if let (true, true, Some(m), Some((addr, data))) =
            (pending, new_event, &self.msi, self.cs.msi_message())
        {
            m.send(addr, data);
        }
    }

    /// Sets PxIS bits and signals the interrupt if one of them is enabled.
    fn raise(&mut self, port: usize, bits: u32) {
        let p = &mut self.ports[port];
        p.is |= bits;
        let enabled = bits & p.ie != 0;
        self.update_irq(enabled);
    }

    fn hba_reset(&mut self) {
        self.ghc = 0;
        for p in &mut self.ports {
            p.cmd = 0;
            p.is = 0;
            p.ie = 0;
            p.sctl = 0;
            p.serr = 0;
            p.stop();
            p.comreset();
        }
        self.update_irq(false);
    }

    fn bus_master(&self) -> bool {
        self.cs.command() & COMMAND_BUS_MASTER != 0
    }

    /// Posts a FIS into the port's received-FIS area (if FIS receive is
    /// on) and updates PxTFD from it.
    fn post_fis(&mut self, port: usize, offset: u64, fis: &[u8]) {
        let p = &mut self.ports[port];
        match fis[0] {
            spec::FIS_REG_D2H => p.tfd = u32::from(fis[2]) | u32::from(fis[3]) << 8,
            spec::FIS_PIO_SETUP => p.tfd = u32::from(fis[15]) | u32::from(fis[3]) << 8,
            spec::FIS_SET_DEVICE_BITS => {
                // Only status bits 6:4 and 2:0 are carried.
                let sts = (p.tfd & 0x88) | u32::from(fis[2] & 0x77);
                p.tfd = sts | u32::from(fis[3]) << 8;
            }
            _ => {}
        }
        if p.cmd & spec::CMD_FR != 0 && self.cs.command() & COMMAND_BUS_MASTER != 0 {
            let addr = p.fb + offset;
            if !dma::write_bytes(&self.mem, addr, fis) {
                guest_error!(
                    "AHCI port {port}: received-FIS area at {:#x} is outside guest RAM",
                    p.fb
                );
                self.raise(port, spec::IS_HBFS);
                self.ports[port].halted = true;
            }
        }
    }

    // --- registers -----------------------------------------------------

    fn read_reg(&mut self, off: u64) -> u32 {
        if off >= spec::PORT_BASE {
            let n = ((off - spec::PORT_BASE) / spec::PORT_STRIDE) as usize;
            let reg = (off - spec::PORT_BASE) % spec::PORT_STRIDE;
            let Some(p) = self.ports.get(n) else {
                return 0;
            };
            return match reg {
                spec::PX_CLB => p.clb as u32,
                spec::PX_CLBU => (p.clb >> 32) as u32,
                spec::PX_FB => p.fb as u32,
                spec::PX_FBU => (p.fb >> 32) as u32,
                spec::PX_IS => p.is,
                spec::PX_IE => p.ie,
                spec::PX_CMD => p.read_cmd(),
                spec::PX_TFD => p.tfd,
                spec::PX_SIG => p.sig,
                spec::PX_SSTS => p.ssts(),
                spec::PX_SCTL => p.sctl,
                spec::PX_SERR => p.serr,
                spec::PX_SACT => p.sact,
                spec::PX_CI => p.ci,
                _ => 0,
            };
        }
        match off {
            spec::HOST_CAP => self.cap(),
            spec::HOST_GHC => self.ghc | spec::GHC_AE,
            spec::HOST_IS => self.interrupt_status(),
            spec::HOST_PI => (1 << spec::PORTS) - 1,
            spec::HOST_VS => spec::VERSION_1_3,
            _ => 0,
        }
    }

    /// Register kinds where a partial write must not merge other bytes.
    fn write_one_semantics(off: u64) -> bool {
        if off == spec::HOST_IS {
            return true;
        }
        if off >= spec::PORT_BASE {
            let reg = (off - spec::PORT_BASE) % spec::PORT_STRIDE;
            return matches!(
                reg,
                spec::PX_IS | spec::PX_SERR | spec::PX_SACT | spec::PX_CI
            );
        }
        false
    }

    fn write_reg(&mut self, off: u64, v: u32) {
        if off >= spec::PORT_BASE {
            let n = ((off - spec::PORT_BASE) / spec::PORT_STRIDE) as usize;
            let reg = (off - spec::PORT_BASE) % spec::PORT_STRIDE;
            if n < self.ports.len() {
                self.write_port(n, reg, v);
            }
            return;
        }
        match off {
            spec::HOST_GHC => {
                if v & spec::GHC_HR != 0 {
                    self.hba_reset();
                } else {
                    self.ghc = v & spec::GHC_IE;
                    self.update_irq(true);
                }
            }
            spec::HOST_IS => {
                // The bits follow the ports' PxIS; clearing them here only
                // re-arms the interrupt.
                self.update_irq(false);
            }
            _ => {}
        }
    }

    fn write_port(&mut self, n: usize, reg: u64, v: u32) {
        let p = &mut self.ports[n];
        match reg {
            spec::PX_CLB => p.clb = (p.clb & !0xffff_ffff) | u64::from(v & !0x3ff),
            spec::PX_CLBU => p.clb = (p.clb & 0xffff_ffff) | u64::from(v) << 32,
            spec::PX_FB => p.fb = (p.fb & !0xffff_ffff) | u64::from(v & !0xff),
            spec::PX_FBU => p.fb = (p.fb & 0xffff_ffff) | u64::from(v) << 32,
            spec::PX_IS => {
                p.is &= !(v & spec::IS_RWC);
                self.update_irq(false);
            }
            spec::PX_IE => {
                let newly = v & !p.ie;
                p.ie = v & spec::IE_MASK;
                let fire = p.is & newly != 0;
                self.update_irq(fire);
            }
            spec::PX_CMD => self.write_cmd(n, v),
            spec::PX_SCTL => {
                let old = p.sctl & spec::SCTL_DET_MASK;
                p.sctl = v & 0x0fff;
                let det = p.sctl & spec::SCTL_DET_MASK;
                if det == spec::SCTL_DET_COMRESET {
                    // COMRESET held: the device is in reset.
                    if p.device.is_some() {
                        p.tfd = u32::from(ata::STATUS_BSY);
                    }
                } else if old == spec::SCTL_DET_COMRESET && det == 0 {
                    p.comreset();
                    self.deliver_pending(n);
                }
            }
            spec::PX_SERR => p.serr &= !v,
            spec::PX_SACT if p.cmd & spec::CMD_ST != 0 => p.sact |= v,
            spec::PX_CI => {
                if p.cmd & spec::CMD_ST != 0 {
                    p.ci |= v;
                    self.process(n);
                } else if v != 0 {
                    guest_error!("AHCI port {n}: PxCI written while PxCMD.ST is clear; ignored");
                }
            }
            _ => {}
        }
    }

    fn write_cmd(&mut self, n: usize, v: u32) {
        let cap_clo = self.cap() & spec::CAP_SCLO != 0;
        let p = &mut self.ports[n];
        let old = p.cmd;
        p.cmd = (p.cmd & !spec::CMD_RW) | (v & spec::CMD_RW);
        if v & spec::CMD_CLO != 0 && cap_clo {
            // Command list override: clears BSY and DRQ (AHCI 3.3.7).
            p.tfd &= !u32::from(ata::STATUS_BSY | ata::STATUS_DRQ);
        }
        if p.cmd & spec::CMD_FRE != 0 {
            p.cmd |= spec::CMD_FR;
        } else {
            p.cmd &= !spec::CMD_FR;
        }
        if p.cmd & spec::CMD_ST != 0 && old & spec::CMD_ST == 0 {
            if p.cmd & spec::CMD_FRE == 0 {
                guest_error!("AHCI port {n}: PxCMD.ST set while FIS receive is off");
            }
            p.cmd |= spec::CMD_CR;
            p.cmd &= !spec::CMD_CCS_MASK;
            p.halted = false;
        } else if p.cmd & spec::CMD_ST == 0 && old & spec::CMD_ST != 0 {
            p.stop();
        }
        if p.cmd & spec::CMD_FR != 0 && old & spec::CMD_FR == 0 {
            self.deliver_pending(n);
        }
        if self.ports[n].cmd & spec::CMD_ST != 0 && self.ports[n].ci != 0 {
            self.process(n);
        }
    }

    /// Posts the FIS a reset left waiting, once FIS receive is on.
    fn deliver_pending(&mut self, n: usize) {
        if self.ports[n].cmd & spec::CMD_FR == 0 {
            return;
        }
        if let Some(fis) = self.ports[n].pending_d2h.take() {
            self.post_fis(n, spec::RFIS_RFIS, &fis);
        }
    }

    // --- command processing ----------------------------------------------

    /// Runs every issued command of port `n`.
    fn process(&mut self, n: usize) {
        if !self.bus_master() {
            guest_error!(
                "AHCI port {n}: commands issued with bus mastering disabled in PCI COMMAND"
            );
            return;
        }
        let mut queued: Vec<Queued> = Vec::new();
        loop {
            let p = &self.ports[n];
            if p.cmd & spec::CMD_ST == 0 || p.halted || p.device.is_none() {
                if p.device.is_none() && p.ci != 0 {
                    guest_error!(
                        "AHCI port {n}: commands issued to a port without a device never complete"
                    );
                }
                break;
            }
            // Slots not yet taken up by the device, lowest first.
            let Some(slot) = (0..spec::SLOTS).find(|&s| p.ci & (1 << s) != 0) else {
                break;
            };
            self.ports[n].cmd =
                (self.ports[n].cmd & !spec::CMD_CCS_MASK) | (slot as u32) << spec::CMD_CCS_SHIFT;
            if let Some(q) = self.run_slot(n, slot) {
                queued.push(q);
            }
            let p = &mut self.ports[n];
            if p.ci & (1 << slot) != 0 && !p.halted {
                // Every path above completes or halts; never spin.
                guest_error!("AHCI port {n} slot {slot}: command neither completed nor failed");
                p.halted = true;
            }
        }
        if !queued.is_empty() {
            self.run_queued(n, queued);
        }
    }

    fn fatal(&mut self, n: usize, bits: u32, status: AtaStatus) {
        let p = &mut self.ports[n];
        p.halted = true;
        p.tfd = u32::from(status.status) | u32::from(status.error) << 8;
        self.raise(n, bits);
    }

    /// Fetches and executes the command in `slot`; a queued command that
    /// the device accepted is returned to run later.
    fn run_slot(&mut self, n: usize, slot: usize) -> Option<Queued> {
        let header_addr = self.ports[n].clb + slot as u64 * spec::CMD_HEADER_SIZE;
        let mut header = [0u8; spec::CMD_HEADER_SIZE as usize];
        if !dma::read_bytes(&self.mem, header_addr, &mut header) {
            guest_error!(
                "AHCI port {n}: command list at {:#x} is outside guest RAM",
                self.ports[n].clb
            );
            self.fatal(n, spec::IS_HBFS, AtaStatus::ABORTED);
            return None;
        }
        let dw = |i: usize| {
            u32::from_le_bytes([
                header[i * 4],
                header[i * 4 + 1],
                header[i * 4 + 2],
                header[i * 4 + 3],
            ])
        };
        let flags = dw(0);
        let prdtl = (flags >> spec::CH_PRDTL_SHIFT) as u64;
        let ctba = u64::from(dw(2)) | u64::from(dw(3)) << 32;
        if ctba & spec::CTBA_ALIGN_MASK != 0 {
            guest_error!(
                "AHCI port {n} slot {slot}: command table {ctba:#x} is not 128-byte aligned"
            );
        }
        let ctba = ctba & !spec::CTBA_ALIGN_MASK;
        let mut cfis = [0u8; spec::CT_CFIS_LEN];
        let mut acmd = [0u8; spec::CT_ACMD_LEN];
        if !dma::read_bytes(&self.mem, ctba + spec::CT_CFIS_OFFSET, &mut cfis)
            || !dma::read_bytes(&self.mem, ctba + spec::CT_ACMD_OFFSET, &mut acmd)
        {
            guest_error!(
                "AHCI port {n} slot {slot}: command table at {ctba:#x} is outside guest RAM"
            );
            self.fatal(n, spec::IS_HBFS, AtaStatus::ABORTED);
            return None;
        }
        let prdt = match self.read_prdt(ctba, prdtl) {
            Some(p) => p,
            None => {
                guest_error!("AHCI port {n} slot {slot}: PRDT of {prdtl} entries at {ctba:#x} is outside guest RAM");
                self.fatal(n, spec::IS_HBFS, AtaStatus::ABORTED);
                return None;
            }
        };
        let done = |s: &mut Self| {
            s.ports[n].ci &= !(1 << slot);
        };
        if cfis[0] != spec::FIS_REG_H2D {
            guest_error!(
                "AHCI port {n} slot {slot}: FIS type {:#04x} is not a Register H2D FIS",
                cfis[0]
            );
            self.fatal(n, spec::IS_IFS, AtaStatus::ABORTED);
            return None;
        }
        if cfis[spec::H2D_FLAGS] & spec::FIS_H2D_COMMAND == 0 {
            // A Device Control update: software reset through SRST.
            let srst = cfis[spec::H2D_CONTROL] & spec::CONTROL_SRST != 0;
            let p = &mut self.ports[n];
            if srst {
                p.in_soft_reset = true;
                p.tfd = u32::from(ata::STATUS_BSY);
            } else if p.in_soft_reset {
                p.comreset();
                let fis = p.pending_d2h.take();
                if let Some(fis) = fis {
                    self.post_fis(n, spec::RFIS_RFIS, &fis);
                }
            }
            done(self);
            return None;
        }
        let mut tf = TaskFile {
            command: cfis[spec::H2D_COMMAND],
            features: cfis[spec::H2D_FEATURES],
            features_exp: cfis[spec::H2D_FEATURES_EXP],
            count: cfis[spec::H2D_COUNT],
            count_exp: cfis[spec::H2D_COUNT_EXP],
            lba_low: cfis[spec::H2D_LBA_LOW],
            lba_mid: cfis[spec::H2D_LBA_MID],
            lba_high: cfis[spec::H2D_LBA_HIGH],
            lba_low_exp: cfis[spec::H2D_LBA_LOW_EXP],
            lba_mid_exp: cfis[spec::H2D_LBA_MID_EXP],
            lba_high_exp: cfis[spec::H2D_LBA_HIGH_EXP],
            device: cfis[spec::H2D_DEVICE],
        };
        let queued_cmd = matches!(
            tf.command,
            ata::CMD_READ_FPDMA_QUEUED | ata::CMD_WRITE_FPDMA_QUEUED
        );
        let dev = self.ports[n].device.as_mut()?;
        let mut next = dev.execute(&mut tf);
        if let Next::Packet {
            dma,
            byte_count_limit,
        } = next
        {
            next = dev.packet(&acmd, &mut tf, dma, byte_count_limit);
        }
        match next {
            Next::Done(st) => {
                self.ports[n].tf = tf;
                self.complete_register(n, slot, st, &tf, queued_cmd);
                None
            }
            Next::Packet { .. } => {
                self.complete_register(n, slot, AtaStatus::ABORTED, &tf, false);
                None
            }
            Next::Data(phase) => {
                if let Protocol::Queued { tag } = phase.protocol {
                    // The device accepts the command: BSY clears in a
                    // Register D2H FIS without interrupt, PxCI clears,
                    // the data phase comes later (SATA 13.6.4).
                    if usize::from(tag) != slot {
                        guest_error!("AHCI port {n}: NCQ tag {tag} issued in slot {slot}");
                    }
                    let fis = d2h_fis(AtaStatus::OK, &tf, false);
                    self.post_fis(n, spec::RFIS_RFIS, &fis);
                    done(self);
                    return Some(Queued {
                        slot,
                        tag,
                        tf,
                        phase,
                        header_addr,
                        prdt,
                    });
                }
                self.run_data(n, slot, header_addr, &prdt, phase, tf);
                None
            }
        }
    }

    /// Reads the PRDT: (address, length, interrupt-on-completion) per entry.
    fn read_prdt(&self, ctba: u64, entries: u64) -> Option<Vec<(u64, u64, bool)>> {
        let mut v = Vec::with_capacity(entries as usize);
        let mut logged = false;
        for i in 0..entries {
            let mut e = [0u8; spec::PRD_ENTRY_SIZE as usize];
            if !dma::read_bytes(
                &self.mem,
                ctba + spec::CT_PRDT_OFFSET + i * spec::PRD_ENTRY_SIZE,
                &mut e,
            ) {
                return None;
            }
            let dba = u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]))
                | u64::from(u32::from_le_bytes([e[4], e[5], e[6], e[7]])) << 32;
            let dw3 = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
            if (dba & 1 != 0 || dw3 & 1 == 0) && !logged {
                guest_error!(
                    "AHCI: PRD entry {i} with odd address {dba:#x} or length; rounded to words"
                );
                logged = true;
            }
            // Bit 0 of DBC is always one: lengths are whole words.
            let len = u64::from((dw3 & spec::PRD_DBC_MASK) | 1) + 1;
            v.push((dba & !1, len, dw3 & spec::PRD_INTERRUPT != 0));
        }
        Some(v)
    }

    /// Ends a command that moved no data (or failed before moving any)
    /// with a Register D2H FIS.
    fn complete_register(
        &mut self,
        n: usize,
        slot: usize,
        st: AtaStatus,
        tf: &TaskFile,
        queued: bool,
    ) {
        let fis = d2h_fis(st, tf, true);
        self.post_fis(n, spec::RFIS_RFIS, &fis);
        if st.is_error() {
            if queued {
                guest_error!("AHCI port {n}: queued command in slot {slot} refused by the device");
            }
            // The command stays in PxCI; the HBA stops (AHCI 6.2.2.1).
            self.ports[n].halted = true;
            self.raise(n, spec::IS_DHRS | spec::IS_TFES);
        } else {
            self.ports[n].ci &= !(1 << slot);
            self.raise(n, spec::IS_DHRS);
        }
    }

    fn write_prdbc(&mut self, header_addr: u64, moved: u64) {
        let v = (moved.min(u64::from(u32::MAX)) as u32).to_le_bytes();
        // The header was readable a moment ago; a guest racing it away
        // only loses the count.
        let _ = dma::write_bytes(&self.mem, header_addr + spec::CH_PRDBC_OFFSET, &v);
    }

    /// Whether a PRD entry with the interrupt bit was completed.
    fn descriptor_done(prdt: &[(u64, u64, bool)], moved: u64) -> bool {
        let mut end = 0;
        for &(_, len, irq) in prdt {
            end += len;
            if end > moved {
                return false;
            }
            if irq {
                return true;
            }
        }
        false
    }

    fn run_transfer(
        &mut self,
        n: usize,
        prdt: &[(u64, u64, bool)],
        phase: &mut DataPhase,
        tf: &mut TaskFile,
    ) -> DmaEnd {
        let mut sg = SgList::new(&self.mem);
        for &(addr, len, _) in prdt {
            sg.push(addr, len);
        }
        let Some(dev) = self.ports[n].device.as_mut() else {
            return DmaEnd {
                moved: 0,
                status: AtaStatus::ABORTED,
                fault: None,
            };
        };
        if sg.capacity() < phase.remaining() {
            guest_error!(
                "AHCI port {n}: PRDT describes {} bytes, the command moves {}",
                sg.capacity(),
                phase.remaining()
            );
        }
        dev.run_dma(phase, tf, &mut sg)
    }

    /// Runs the data phase of a non-queued command and completes it.
    fn run_data(
        &mut self,
        n: usize,
        slot: usize,
        header_addr: u64,
        prdt: &[(u64, u64, bool)],
        mut phase: DataPhase,
        mut tf: TaskFile,
    ) {
        let end = self.run_transfer(n, prdt, &mut phase, &mut tf);
        self.write_prdbc(header_addr, end.moved);
        self.ports[n].tf = tf;
        if let Some(fault) = end.fault {
            self.transfer_fault(n, fault);
            return;
        }
        let mut bits = 0;
        if Self::descriptor_done(prdt, end.moved) {
            bits |= spec::IS_DPS;
        }
        let st = end.status;
        match phase.protocol {
            Protocol::Pio => {
                // PIO Setup FIS: initial status with DRQ, ending status in
                // E_Status, transfer count (SATA 10.3.11).
                let mut f = [0u8; 20];
                f[0] = spec::FIS_PIO_SETUP;
                let to_host = phase.direction == Direction::In;
                f[1] = if to_host {
                    spec::FIS_PIO_TO_HOST | spec::FIS_INTERRUPT
                } else {
                    0
                };
                f[2] = ata::STATUS_READY_DRQ;
                f[3] = st.error;
                tf.store_regs(&mut f);
                f[15] = st.status;
                let xfer = phase.block.min(0xffff) as u16;
                f[16..18].copy_from_slice(&xfer.to_le_bytes());
                self.post_fis(n, spec::RFIS_PSFIS, &f);
                if to_host && !st.is_error() {
                    self.ports[n].ci &= !(1 << slot);
                    self.raise(n, spec::IS_PSS | bits);
                    return;
                }
                if bits != 0 {
                    self.raise(n, bits);
                }
                self.complete_register(n, slot, st, &tf, false);
            }
            _ => {
                if bits != 0 {
                    self.raise(n, bits);
                }
                self.complete_register(n, slot, st, &tf, false);
            }
        }
    }

    fn transfer_fault(&mut self, n: usize, fault: DmaFault) {
        match fault {
            DmaFault::OutsideRam { addr, len } => {
                guest_error!("AHCI port {n}: DMA of {len} bytes at {addr:#x} outside guest RAM");
                self.fatal(n, spec::IS_HBFS, AtaStatus::ABORTED);
            }
            DmaFault::TableTooShort { .. } => {
                self.fatal(n, spec::IS_OFS, AtaStatus::ABORTED);
            }
        }
    }

    /// Executes accepted queued commands in ascending LBA order, each
    /// completing with a DMA Setup FIS, its data, and a Set Device Bits
    /// FIS naming its tag.
    fn run_queued(&mut self, n: usize, mut queued: Vec<Queued>) {
        queued.sort_by_key(|q| q.tf.lba48());
        for mut q in queued {
            if self.ports[n].halted || self.ports[n].cmd & spec::CMD_ST == 0 {
                // Aborted by an earlier error: the tag stays active for
                // software's error recovery.
                continue;
            }
            let mut dsfis = [0u8; 28];
            dsfis[0] = spec::FIS_DMA_SETUP;
            dsfis[1] = spec::FIS_DMA_AUTO_ACTIVATE
                | if q.phase.direction == Direction::In {
                    spec::FIS_DMA_TO_HOST
                } else {
                    0
                };
            dsfis[4] = q.tag;
            dsfis[20..24]
                .copy_from_slice(&(q.phase.len.min(u64::from(u32::MAX)) as u32).to_le_bytes());
            self.post_fis(n, spec::RFIS_DSFIS, &dsfis);
            let end = self.run_transfer(n, &q.prdt, &mut q.phase, &mut q.tf);
            self.write_prdbc(q.header_addr, end.moved);
            if let Some(fault) = end.fault {
                self.transfer_fault(n, fault);
                continue;
            }
            let mut sdb = [0u8; 8];
            sdb[0] = spec::FIS_SET_DEVICE_BITS;
            sdb[1] = spec::FIS_INTERRUPT;
            sdb[2] = end.status.status & 0x77;
            sdb[3] = end.status.error;
            let mut bits = spec::IS_SDBS;
            if Self::descriptor_done(&q.prdt, end.moved) {
                bits |= spec::IS_DPS;
            }
            if end.status.is_error() {
                // NCQ error: the failed tag stays set and the device
                // aborts the rest until log 10h is read (SATA 13.6.4).
                if let Some(dev) = self.ports[n].device.as_mut() {
                    dev.record_ncq_error(q.tag, end.status, &q.tf);
                }
                self.post_fis(n, spec::RFIS_SDBFIS, &sdb);
                self.ports[n].halted = true;
                self.raise(n, bits | spec::IS_TFES);
                continue;
            }
            sdb[4..8].copy_from_slice(&(1u32 << (q.tag & 31)).to_le_bytes());
            self.post_fis(n, spec::RFIS_SDBFIS, &sdb);
            let p = &mut self.ports[n];
            p.sact &= !(1 << (q.tag & 31));
            p.ci &= !(1 << q.slot);
            self.raise(n, bits);
        }
    }
}

impl BusDevice for Ahci {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        let Some(base) = self.cs.bar_region(spec::BAR_ABAR).map(|r| r.base) else {
            data.fill(0xff);
            return;
        };
        let off = addr.wrapping_sub(base);
        let mut bytes = [0u8; 8];
        let first = off & !3;
        let lo = self.read_reg(first);
        bytes[..4].copy_from_slice(&lo.to_le_bytes());
        let shift = (off & 3) as usize;
        if shift + data.len() > 4 {
            let hi = self.read_reg(first + 4);
            bytes[4..].copy_from_slice(&hi.to_le_bytes());
        }
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(shift + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let Some(base) = self.cs.bar_region(spec::BAR_ABAR).map(|r| r.base) else {
            return;
        };
        let off = addr.wrapping_sub(base);
        // Split into dword registers.
        let mut i = 0;
        while i < data.len() {
            let at = off + i as u64;
            let reg = at & !3;
            let shift = (at & 3) as usize;
            let n = (4 - shift).min(data.len() - i);
            let mut v = 0u32;
            let mut mask = 0u32;
            for k in 0..n {
                v |= u32::from(data[i + k]) << (8 * (shift + k));
                mask |= 0xff << (8 * (shift + k));
            }
            if mask != u32::MAX && !Self::write_one_semantics(reg) {
                v |= self.read_reg(reg) & !mask;
            }
            self.write_reg(reg, v);
            i += n;
        }
    }
}

impl PciFunction for Ahci {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.cs.write(offset, data);
        // INTx disable or MSI enable may have changed.
        self.update_irq(false);
    }
}

#[cfg(test)]
#[path = "ahci_tests.rs"]
mod tests;
