//! The PIIX4 power-management function (82371AB function 3, 00:01.3): the
//! ACPI PM1 event/control registers, the PM timer and GPE0 block, decoded
//! at the base the firmware writes to PMBA (config 0x40) once PMIOSE
//! (config 0x80 bit 0) is set (82371AB datasheet, sections 3.3 and 7).
//!
//! Writing PM1a_CNT with SLP_EN and the S5 sleep type powers the machine
//! off, which is how SeaBIOS, GRUB's `halt` and every ACPI OS do it.

use std::sync::Arc;
use std::time::Instant;

use super::{AddressSpace, ConfigSpace, PciFunction, PciRegion};
use crate::bus::BusDevice;
use crate::events::{MachineEvents, MachineRequest};
use crate::irq::IrqLine;

pub const PMBA: usize = 0x40;
pub const DEVACTB: usize = 0x58;
pub const PMREGMISC: usize = 0x80;
pub const SMBBA: usize = 0x90;
pub const SMBHSTCFG: usize = 0xd2;

/// Size of the PM I/O block.
pub const PM_IO_LEN: u64 = 0x40;

// Register offsets within the block.
pub const PM1_STS: u64 = 0x00;
pub const PM1_EN: u64 = 0x02;
pub const PM1_CNT: u64 = 0x04;
pub const PM_TMR: u64 = 0x08;
pub const GPE0_STS: u64 = 0x0c;
pub const GPE0_EN: u64 = 0x0e;

pub const PM1_STS_TMR: u16 = 0x0001;
pub const PM1_STS_PWRBTN: u16 = 0x0100;
pub const PM1_CNT_SCI_EN: u16 = 0x0001;
pub const PM1_CNT_SLP_EN: u16 = 0x2000;
pub const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
/// The sleep type the PIIX4 decodes as soft-off, and the one the DSDT's
/// `\_S5` package names.
pub const SLP_TYP_S5: u16 = 0;

/// DEVACTB bit 25: the APM control port enables an SMI. Reported set so
/// that firmware finds SMM "already initialised"; rehost has no SMM.
const DEVACTB_APMC_EN: u32 = 1 << 25;

/// The ACPI PM timer runs at 3.579545 MHz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

pub struct Piix4Pm {
    cs: ConfigSpace,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u16,
    gpe0_en: u16,
    timer_start: Instant,
    /// Timer value's bit 23 when last looked at, to latch TMR_STS.
    timer_msb: bool,
    sci: Arc<dyn IrqLine>,
    events: Arc<MachineEvents>,
}

impl Piix4Pm {
    pub fn new(sci: Arc<dyn IrqLine>, events: Arc<MachineEvents>) -> Self {
        let mut cs = ConfigSpace::new(0x8086, 0x7113, 0x06_80_00, 0x03);
        cs.set_subsystem(0x1af4, 0x1100);
        cs.set_interrupt_pin(1);
        cs.set_u32(PMBA, 0x1);
        cs.set_wmask_u32(PMBA, 0xffc0);
        cs.set_wmask_u8(PMREGMISC, 0x01);
        cs.set_u32(DEVACTB, DEVACTB_APMC_EN);
        cs.set_u32(SMBBA, 0x1);
        cs.set_wmask_u32(SMBBA, 0xfff0);
        cs.set_wmask_u8(SMBHSTCFG, 0x0f);
        Self {
            cs,
            pm1_sts: 0,
            pm1_en: 0,
            // No SMI command port: the machine is in ACPI mode from reset.
            pm1_cnt: PM1_CNT_SCI_EN,
            gpe0_sts: 0,
            gpe0_en: 0,
            timer_start: Instant::now(),
            timer_msb: false,
            sci,
            events,
        }
    }

    /// The I/O base the firmware programmed, if decoding is on.
    pub fn pm_base(&self) -> Option<u64> {
        let base = u64::from(self.cs.read_u32(PMBA) & 0xffc0);
        (self.cs.read_u8(PMREGMISC) & 1 != 0 && base != 0).then_some(base)
    }

    fn timer(&mut self) -> u32 {
        let ticks = self.timer_start.elapsed().as_nanos() * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        let value = (ticks & 0x00ff_ffff) as u32;
        let msb = value & 0x0080_0000 != 0;
        if msb != self.timer_msb {
            self.timer_msb = msb;
            self.pm1_sts |= PM1_STS_TMR;
            self.update_sci();
        }
        value
    }

    fn update_sci(&self) {
        let level = self.pm1_cnt & PM1_CNT_SCI_EN != 0
            && (self.pm1_sts & self.pm1_en != 0 || self.gpe0_sts & self.gpe0_en != 0);
        self.sci.set_level(level);
    }

    /// Presses the power button: the OS sees PWRBTN_STS (and an SCI if
    /// enabled) and decides how to shut down.
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PM1_STS_PWRBTN;
        self.update_sci();
    }

    fn read_reg(&mut self, off: u64) -> u32 {
        match off {
            PM1_STS => u32::from(self.pm1_sts),
            PM1_EN => u32::from(self.pm1_en),
            PM1_CNT => u32::from(self.pm1_cnt & !PM1_CNT_SLP_EN),
            PM_TMR => self.timer(),
            GPE0_STS => u32::from(self.gpe0_sts),
            GPE0_EN => u32::from(self.gpe0_en),
            _ => 0,
        }
    }

    fn write_reg(&mut self, off: u64, value: u32) {
        match off {
            // Status bits are cleared by writing ones.
            PM1_STS => self.pm1_sts &= !(value as u16),
            PM1_EN => self.pm1_en = value as u16,
            PM1_CNT => {
                let v = value as u16;
                if v & PM1_CNT_SLP_EN != 0 {
                    let slp_typ = (v >> PM1_CNT_SLP_TYP_SHIFT) & 0x7;
                    if slp_typ == SLP_TYP_S5 {
                        self.events.request(MachineRequest::PowerOff);
                    } else {
                        tracing::warn!(slp_typ, "ACPI: unsupported sleep state requested; ignored");
                    }
                }
                self.pm1_cnt = v & !PM1_CNT_SLP_EN;
            }
            GPE0_STS => self.gpe0_sts &= !(value as u16),
            GPE0_EN => self.gpe0_en = value as u16,
            _ => {}
        }
        self.update_sci();
    }
}

impl BusDevice for Piix4Pm {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(base) = self.pm_base() else {
            return;
        };
        let off = addr.wrapping_sub(base);
        // Registers are 16 or 32 bits wide; narrower or unaligned accesses
        // read the containing register's bytes.
        let reg = if (PM_TMR..PM_TMR + 4).contains(&off) {
            PM_TMR
        } else {
            off & !1
        };
        let v = u64::from(self.read_reg(reg)) >> (8 * (off - reg));
        crate::put_le_value(data, v);
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let Some(base) = self.pm_base() else {
            return;
        };
        let off = addr.wrapping_sub(base);
        let value = crate::le_value(data) as u32;
        if off & 1 == 1 {
            // The high byte of a 16-bit register.
            let reg = off & !1;
            let low = self.read_reg(reg) & 0xff;
            self.write_reg(reg, low | (value & 0xff) << 8);
        } else if data.len() == 1 {
            let high = self.read_reg(off) & 0xff00;
            // Status registers must not clear the other byte's bits.
            let keep = if matches!(off, PM1_STS | GPE0_STS) {
                0
            } else {
                high
            };
            self.write_reg(off, keep | (value & 0xff));
        } else {
            self.write_reg(off, value);
        }
    }
}

impl PciFunction for Piix4Pm {
    fn config(&self) -> &ConfigSpace {
        &self.cs
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }

    fn regions(&self) -> Vec<PciRegion> {
        self.pm_base()
            .map(|base| PciRegion {
                space: AddressSpace::Io,
                base,
                len: PM_IO_LEN,
            })
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingIrq;

    fn pm() -> (Piix4Pm, Arc<RecordingIrq>, Arc<MachineEvents>) {
        let sci = RecordingIrq::new();
        let ev = Arc::new(MachineEvents::new().unwrap());
        let mut pm = Piix4Pm::new(sci.clone(), ev.clone());
        // What SeaBIOS's piix4_pm_setup does with the table loader present.
        pm.config_write(PMBA, &0x601u32.to_le_bytes());
        pm.config_write(PMREGMISC, &[0x01]);
        (pm, sci, ev)
    }

    #[test]
    fn decodes_only_once_enabled() {
        let sci = RecordingIrq::new();
        let ev = Arc::new(MachineEvents::new().unwrap());
        let mut pm = Piix4Pm::new(sci, ev);
        assert_eq!(pm.config_read(0), 0x7113_8086);
        assert!(pm.regions().is_empty());
        pm.config_write(PMBA, &0xb001u32.to_le_bytes());
        assert!(pm.regions().is_empty());
        pm.config_write(PMREGMISC, &[0x01]);
        assert_eq!(
            pm.regions(),
            vec![PciRegion {
                space: AddressSpace::Io,
                base: 0xb000,
                len: 0x40
            }]
        );
        assert_ne!(pm.config_read(DEVACTB) & DEVACTB_APMC_EN, 0);
    }

    #[test]
    fn s5_through_pm1a_cnt_powers_off() {
        let (mut pm, _, ev) = pm();
        // Another sleep type is not a power-off.
        pm.write(0x604, &(PM1_CNT_SLP_EN | 1 << 10).to_le_bytes());
        assert_eq!(ev.pending(), None);
        // GRUB/SeaBIOS: SLP_TYP=0 | SLP_EN as a 16-bit write.
        pm.write(0x604, &(PM1_CNT_SLP_EN | PM1_CNT_SCI_EN).to_le_bytes());
        assert_eq!(ev.pending(), Some(MachineRequest::PowerOff));
        // SLP_EN reads back as zero.
        let mut d = [0u8; 2];
        pm.read(0x604, &mut d);
        assert_eq!(u16::from_le_bytes(d) & PM1_CNT_SLP_EN, 0);
    }

    #[test]
    fn s5_by_byte_write_to_the_high_half() {
        let (mut pm, _, ev) = pm();
        pm.write(0x605, &[(PM1_CNT_SLP_EN >> 8) as u8]);
        assert_eq!(ev.pending(), Some(MachineRequest::PowerOff));
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let (mut pm, _, _) = pm();
        let mut d = [0u8; 4];
        pm.read(0x608, &mut d);
        let a = u32::from_le_bytes(d);
        std::thread::sleep(std::time::Duration::from_millis(20));
        pm.read(0x608, &mut d);
        let b = u32::from_le_bytes(d);
        let delta = b.wrapping_sub(a) & 0xff_ffff;
        // 20 ms is 71,591 ticks; allow for scheduling.
        assert!((71_000..400_000).contains(&delta), "delta {delta}");
    }

    #[test]
    fn power_button_raises_sci_when_enabled_and_clears_on_write_one() {
        let (mut pm, sci, _) = pm();
        pm.press_power_button();
        assert!(!sci.level(), "PWRBTN_EN is off");
        pm.write(0x602, &PM1_STS_PWRBTN.to_le_bytes());
        assert!(sci.level());
        let mut d = [0u8; 2];
        pm.read(0x600, &mut d);
        assert_eq!(u16::from_le_bytes(d) & PM1_STS_PWRBTN, PM1_STS_PWRBTN);
        pm.write(0x600, &PM1_STS_PWRBTN.to_le_bytes());
        assert!(!sci.level());
    }
}
