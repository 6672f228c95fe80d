//! The MC146818-compatible CMOS RTC and NVRAM at ports 0x70/0x71 (IRQ 8),
//! as the PIIX3 integrates it.
//!
//! The clock follows the host clock (UTC) plus whatever offset the guest
//! sets by writing the time registers. The NVRAM carries the memory-size
//! and CPU-count bytes SeaBIOS reads at POST.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;
use crate::irq::IrqLine;

pub const CMOS_PORT: u64 = 0x70;

// Register numbers (MC146818 datasheet; PC/AT NVRAM map).
pub const REG_SECONDS: usize = 0x00;
pub const REG_MINUTES: usize = 0x02;
pub const REG_HOURS: usize = 0x04;
pub const REG_DAY_OF_WEEK: usize = 0x06;
pub const REG_DAY_OF_MONTH: usize = 0x07;
pub const REG_MONTH: usize = 0x08;
pub const REG_YEAR: usize = 0x09;
pub const REG_A: usize = 0x0a;
pub const REG_B: usize = 0x0b;
pub const REG_C: usize = 0x0c;
pub const REG_D: usize = 0x0d;
pub const REG_BASE_MEM_LO: usize = 0x15;
pub const REG_EXT_MEM_LO: usize = 0x17;
pub const REG_EXT_MEM2_LO: usize = 0x30;
pub const REG_CENTURY: usize = 0x32;
pub const REG_MEM_ABOVE_16M_LO: usize = 0x34;
pub const REG_MEM_ABOVE_4G: usize = 0x5b;
pub const REG_SMP_COUNT: usize = 0x5f;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const D_VRT: u8 = 0x80;

/// The update cycle takes this long before each second boundary, and UIP
/// reads as set during it (datasheet: 244 us).
const UIP_WINDOW_NS: u32 = 244_000;

/// A broken-down calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A civil date to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    pub fn to_unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    u32::from(v >> 4) * 10 + u32::from(v & 0x0f)
}

/// Where the clock's time comes from; replaceable in tests.
pub trait Clock: Send {
    /// Seconds and nanoseconds since the Unix epoch.
    fn now(&self) -> (i64, u32);
}

#[derive(Debug, Default)]
pub struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> (i64, u32) {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(_) => (0, 0),
        }
    }
}

/// Memory sizes and CPU count written into NVRAM for the firmware.
#[derive(Debug, Clone, Copy)]
pub struct NvramConfig {
    /// Guest RAM below 4 GiB, in bytes.
    pub ram_below_4g: u64,
    /// Guest RAM above 4 GiB, in bytes.
    pub ram_above_4g: u64,
    pub cpus: u8,
}

pub struct Cmos {
    index: usize,
    nmi_disabled: bool,
    ram: [u8; 128],
    /// Guest time minus host time, in seconds.
    offset_secs: i64,
    clock: Box<dyn Clock>,
    irq: Arc<dyn IrqLine>,
}

impl Cmos {
    pub fn new(config: NvramConfig, irq: Arc<dyn IrqLine>) -> Self {
        Self::with_clock(config, irq, Box::new(HostClock))
    }

    pub fn with_clock(config: NvramConfig, irq: Arc<dyn IrqLine>, clock: Box<dyn Clock>) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        ram[REG_B] = B_24H;
        ram[REG_D] = D_VRT;
        // Base memory: 640 KiB.
        ram[REG_BASE_MEM_LO] = (640u16 & 0xff) as u8;
        ram[REG_BASE_MEM_LO + 1] = (640u16 >> 8) as u8;
        // Extended memory between 1 MiB and 64 MiB, in KiB (saturating).
        let ext_kib = (config.ram_below_4g.saturating_sub(1 << 20) / 1024).min(0xfc00) as u16;
        for reg in [REG_EXT_MEM_LO, REG_EXT_MEM2_LO] {
            ram[reg] = ext_kib as u8;
            ram[reg + 1] = (ext_kib >> 8) as u8;
        }
        // Memory between 16 MiB and 4 GiB, in 64 KiB units.
        let above_16m = (config.ram_below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        ram[REG_MEM_ABOVE_16M_LO] = above_16m as u8;
        ram[REG_MEM_ABOVE_16M_LO + 1] = (above_16m >> 8) as u8;
        // Memory above 4 GiB, in 64 KiB units, three bytes.
        let above_4g = (config.ram_above_4g >> 16).min(0xff_ffff);
        ram[REG_MEM_ABOVE_4G] = above_4g as u8;
        ram[REG_MEM_ABOVE_4G + 1] = (above_4g >> 8) as u8;
        ram[REG_MEM_ABOVE_4G + 2] = (above_4g >> 16) as u8;
        ram[REG_SMP_COUNT] = config.cpus.saturating_sub(1);
        Self {
            index: 0,
            nmi_disabled: false,
            ram,
            offset_secs: 0,
            clock,
            irq,
        }
    }

    fn guest_now(&self) -> (DateTime, u32) {
        let (secs, nanos) = self.clock.now();
        (
            DateTime::from_unix(secs.saturating_add(self.offset_secs)),
            nanos,
        )
    }

    fn encode(&self, v: u32) -> u8 {
        if self.ram[REG_B] & B_DM_BINARY != 0 {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.ram[REG_B] & B_DM_BINARY != 0 {
            u32::from(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.ram[REG_B] & B_24H != 0 {
            self.encode(hour)
        } else {
            let pm = hour >= 12;
            let h12 = match hour % 12 {
                0 => 12,
                h => h,
            };
            self.encode(h12) | if pm { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, v: u8) -> u32 {
        if self.ram[REG_B] & B_24H != 0 {
            self.decode(v)
        } else {
            let h12 = self.decode(v & 0x7f) % 12;
            h12 + if v & 0x80 != 0 { 12 } else { 0 }
        }
    }

    fn read_register(&mut self, reg: usize) -> u8 {
        let (now, nanos) = self.guest_now();
        match reg {
            REG_SECONDS => self.encode(now.second),
            REG_MINUTES => self.encode(now.minute),
            REG_HOURS => self.encode_hour(now.hour),
            REG_DAY_OF_WEEK => self.encode(now.weekday + 1),
            REG_DAY_OF_MONTH => self.encode(now.day),
            REG_MONTH => self.encode(now.month),
            REG_YEAR => self.encode(now.year.rem_euclid(100) as u32),
            REG_CENTURY => self.encode(now.year.div_euclid(100).rem_euclid(100) as u32),
            REG_A => {
                let uip = self.ram[REG_B] & B_SET == 0 && nanos >= 1_000_000_000 - UIP_WINDOW_NS;
                (self.ram[REG_A] & !A_UIP) | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                // Reading C acknowledges every flag and drops IRQ 8.
                let v = self.ram[REG_C];
                self.ram[REG_C] = 0;
                if v & C_IRQF != 0 {
                    self.irq.set_level(false);
                }
                v
            }
            REG_D => D_VRT,
            _ => self.ram[reg],
        }
    }

    fn write_register(&mut self, reg: usize, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_MONTH | REG_MONTH | REG_YEAR
            | REG_CENTURY => {
                let (mut t, _) = self.guest_now();
                match reg {
                    REG_SECONDS => t.second = self.decode(value).min(59),
                    REG_MINUTES => t.minute = self.decode(value).min(59),
                    REG_HOURS => t.hour = self.decode_hour(value).min(23),
                    REG_DAY_OF_MONTH => t.day = self.decode(value).clamp(1, 31),
                    REG_MONTH => t.month = self.decode(value).clamp(1, 12),
                    REG_YEAR => {
                        t.year = t.year.div_euclid(100) * 100 + i64::from(self.decode(value) % 100)
                    }
                    _ => {
                        t.year = i64::from(self.decode(value) % 100) * 100 + t.year.rem_euclid(100)
                    }
                }
                let (host, _) = self.clock.now();
                self.offset_secs = t.to_unix() - host;
            }
            REG_DAY_OF_WEEK => {}
            REG_A => self.ram[REG_A] = value & !A_UIP,
            REG_B => {
                if value & (B_PIE | B_AIE | B_UIE) != 0 {
                    tracing::debug!(value, "CMOS: periodic/alarm/update interrupts requested");
                }
                self.ram[REG_B] = value;
            }
            REG_C | REG_D => {}
            _ => self.ram[reg] = value,
        }
    }

    /// The raw NVRAM byte (time registers excluded), for tests and tools.
    pub fn nvram(&self, reg: usize) -> u8 {
        self.ram[reg & 0x7f]
    }

    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0xff);
        if addr == CMOS_PORT + 1 {
            data[0] = self.read_register(self.index);
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        if addr == CMOS_PORT {
            self.index = usize::from(data[0] & 0x7f);
            self.nmi_disabled = data[0] & 0x80 != 0;
        } else if addr == CMOS_PORT + 1 {
            self.write_register(self.index, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingIrq;
    use std::sync::atomic::{AtomicI64, Ordering};

    struct FixedClock(Arc<AtomicI64>, u32);
    impl Clock for FixedClock {
        fn now(&self) -> (i64, u32) {
            (self.0.load(Ordering::SeqCst), self.1)
        }
    }

    fn cmos_at(unix: i64, nanos: u32, config: NvramConfig) -> (Cmos, Arc<AtomicI64>) {
        let t = Arc::new(AtomicI64::new(unix));
        let c = Cmos::with_clock(
            config,
            RecordingIrq::new(),
            Box::new(FixedClock(t.clone(), nanos)),
        );
        (c, t)
    }

    fn rd(c: &mut Cmos, reg: u8) -> u8 {
        c.write(CMOS_PORT, &[reg]);
        let mut b = [0u8];
        c.read(CMOS_PORT + 1, &mut b);
        b[0]
    }

    fn wr(c: &mut Cmos, reg: u8, v: u8) {
        c.write(CMOS_PORT, &[reg]);
        c.write(CMOS_PORT + 1, &[v]);
    }

    const CFG: NvramConfig = NvramConfig {
        ram_below_4g: 512 << 20,
        ram_above_4g: 0,
        cpus: 2,
    };

    #[test]
    fn calendar_round_trips() {
        for secs in [0i64, 951_782_400, 1_790_000_000, 4_102_444_800, -86_400] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
        // 2026-11-26 00:19:50 UTC was a Thursday.
        let t = DateTime::from_unix(1_795_652_390);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2026, 11, 26, 0, 19, 50, 4)
        );
    }

    #[test]
    fn reads_time_in_bcd_and_binary() {
        let (mut c, _) = cmos_at(1_795_652_390, 0, CFG);
        assert_eq!(rd(&mut c, 0x00), 0x50);
        assert_eq!(rd(&mut c, 0x02), 0x19);
        assert_eq!(rd(&mut c, 0x04), 0x00);
        assert_eq!(rd(&mut c, 0x07), 0x26);
        assert_eq!(rd(&mut c, 0x08), 0x11);
        assert_eq!(rd(&mut c, 0x09), 0x26);
        assert_eq!(rd(&mut c, 0x32), 0x20);
        assert_eq!(rd(&mut c, 0x06), 5); // Thursday = 5 (Sunday = 1)
        wr(&mut c, 0x0b, B_24H | B_DM_BINARY);
        assert_eq!(rd(&mut c, 0x00), 50);
        assert_eq!(rd(&mut c, 0x02), 19);
        // 12-hour mode: 00:19 is 12 AM.
        wr(&mut c, 0x0b, 0);
        assert_eq!(rd(&mut c, 0x04), 0x12);
    }

    #[test]
    fn guest_set_time_sticks_as_an_offset() {
        let (mut c, host) = cmos_at(1_795_652_390, 0, CFG);
        wr(&mut c, 0x0b, B_24H | B_SET);
        wr(&mut c, 0x04, 0x13); // 13 h
        wr(&mut c, 0x09, 0x99); // year 2099
        wr(&mut c, 0x0b, B_24H);
        host.fetch_add(3600, Ordering::SeqCst);
        assert_eq!(rd(&mut c, 0x04), 0x14);
        assert_eq!(rd(&mut c, 0x09), 0x99);
    }

    #[test]
    fn uip_is_set_only_just_before_the_second_changes() {
        let (mut c, _) = cmos_at(0, 999_900_000, CFG);
        assert_ne!(rd(&mut c, 0x0a) & A_UIP, 0);
        let (mut c, _) = cmos_at(0, 500_000_000, CFG);
        assert_eq!(rd(&mut c, 0x0a) & A_UIP, 0);
        assert_eq!(rd(&mut c, 0x0d), D_VRT);
    }

    #[test]
    fn nvram_carries_memory_sizes_and_cpu_count() {
        let (mut c, _) = cmos_at(
            0,
            0,
            NvramConfig {
                ram_below_4g: 3 << 30,
                ram_above_4g: 1 << 30,
                cpus: 4,
            },
        );
        let w = |c: &mut Cmos, r: u8| u32::from(rd(c, r)) | u32::from(rd(c, r + 1)) << 8;
        assert_eq!(w(&mut c, 0x15), 640);
        assert_eq!(w(&mut c, 0x17), 0xfc00);
        assert_eq!(w(&mut c, 0x30), 0xfc00);
        assert_eq!(w(&mut c, 0x34), ((3u32 << 30) - (16 << 20)) >> 16);
        let above = u32::from(rd(&mut c, 0x5b))
            | u32::from(rd(&mut c, 0x5c)) << 8
            | u32::from(rd(&mut c, 0x5d)) << 16;
        assert_eq!(above, (1 << 30) >> 16);
        assert_eq!(rd(&mut c, 0x5f), 3);
        // Ordinary NVRAM bytes are plain storage; the index's bit 7 masks NMI.
        c.write(CMOS_PORT, &[0x80 | 0x40]);
        c.write(CMOS_PORT + 1, &[0x5a]);
        assert!(c.nmi_disabled());
        assert_eq!(rd(&mut c, 0x40), 0x5a);
    }
}
