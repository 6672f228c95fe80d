//! A National Semiconductor PC16550D-compatible UART: divisor latch, 16-byte
//! FIFOs with trigger levels, line and modem control and status, the four
//! interrupt sources in their priority order, loopback and scratch
//! registers (PC16550D datasheet, "Register Description").
//!
//! Transmission is immediate: a byte written to THR goes to the backend at
//! once. THRE and TEMT read as set whenever the backend can take more
//! (`SerialBackend::tx_ready`); while it cannot, they stay clear and the
//! THRE interrupt waits for `tx_space_available`, so a host side slower
//! than the guest paces it as a real line would.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{LineParams, ModemControl, ModemStatus, Parity, SerialBackend};
use crate::bus::BusDevice;
use crate::irq::IrqLine;

// Register offsets.
pub const RBR_THR_DLL: u64 = 0;
pub const IER_DLM: u64 = 1;
pub const IIR_FCR: u64 = 2;
pub const LCR: u64 = 3;
pub const MCR: u64 = 4;
pub const LSR: u64 = 5;
pub const MSR: u64 = 6;
pub const SCR: u64 = 7;

pub const IER_RDA: u8 = 0x01;
pub const IER_THRE: u8 = 0x02;
pub const IER_RLS: u8 = 0x04;
pub const IER_MS: u8 = 0x08;

pub const IIR_NONE: u8 = 0x01;
pub const IIR_RLS: u8 = 0x06;
pub const IIR_RDA: u8 = 0x04;
pub const IIR_TIMEOUT: u8 = 0x0c;
pub const IIR_THRE: u8 = 0x02;
pub const IIR_MS: u8 = 0x00;
pub const IIR_FIFO_ENABLED: u8 = 0xc0;

pub const FCR_ENABLE: u8 = 0x01;
pub const FCR_CLEAR_RX: u8 = 0x02;
pub const FCR_CLEAR_TX: u8 = 0x04;

pub const LCR_DLAB: u8 = 0x80;
pub const LCR_BREAK: u8 = 0x40;

pub const MCR_DTR: u8 = 0x01;
pub const MCR_RTS: u8 = 0x02;
pub const MCR_OUT1: u8 = 0x04;
pub const MCR_OUT2: u8 = 0x08;
pub const MCR_LOOP: u8 = 0x10;

pub const LSR_DR: u8 = 0x01;
pub const LSR_OE: u8 = 0x02;
pub const LSR_BI: u8 = 0x10;
pub const LSR_THRE: u8 = 0x20;
pub const LSR_TEMT: u8 = 0x40;
pub const LSR_FIFO_ERR: u8 = 0x80;

pub const MSR_DCTS: u8 = 0x01;
pub const MSR_DDSR: u8 = 0x02;
pub const MSR_TERI: u8 = 0x04;
pub const MSR_DDCD: u8 = 0x08;
pub const MSR_CTS: u8 = 0x10;
pub const MSR_DSR: u8 = 0x20;
pub const MSR_RI: u8 = 0x40;
pub const MSR_DCD: u8 = 0x80;

pub const FIFO_SIZE: usize = 16;
/// The UART's input clock divided by 16: the baud rate at divisor 1.
pub const BAUD_BASE: u32 = 115_200;

pub struct Uart16550 {
    divisor: u16,
    ier: u8,
    lcr: u8,
    mcr: u8,
    lsr_errors: u8,
    msr_deltas: u8,
    scr: u8,
    fifo_enabled: bool,
    rx_trigger: usize,
    rx: VecDeque<u8>,
    /// The THRE interrupt is armed: THR emptied and IIR not yet read.
    thre_pending: bool,
    /// THR emptied while the backend could take no more: THRE is raised
    /// when `tx_space_available` finds it ready again.
    thre_deferred: bool,
    /// When the receive FIFO last changed (for the character timeout).
    last_rx_activity: Instant,
    modem_in: ModemStatus,
    /// Host modem status that arrived during loopback, applied after it.
    modem_in_saved: Option<ModemStatus>,
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    backend: Box<dyn SerialBackend>,
}

impl Uart16550 {
    pub fn new(irq: Arc<dyn IrqLine>, backend: Box<dyn SerialBackend>) -> Self {
        Self {
            divisor: 12, // 9600 baud
            ier: 0,
            lcr: 0x03, // 8N1
            mcr: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            scr: 0,
            fifo_enabled: false,
            rx_trigger: 1,
            rx: VecDeque::with_capacity(FIFO_SIZE),
            thre_pending: false,
            thre_deferred: false,
            last_rx_activity: Instant::now(),
            // Nothing connected yet reads like a null-modem cable with the
            // far end ready, as most guests expect on a console.
            modem_in: ModemStatus {
                cts: true,
                dsr: true,
                ri: false,
                dcd: true,
            },
            modem_in_saved: None,
            irq,
            irq_level: false,
            backend,
        }
    }

    /// Back to the power-on state (a machine reset), keeping the backend.
    pub fn reset(&mut self) {
        self.divisor = 12;
        self.ier = 0;
        self.lcr = 0x03;
        self.mcr = 0;
        self.lsr_errors = 0;
        self.msr_deltas = 0;
        self.scr = 0;
        self.fifo_enabled = false;
        self.rx_trigger = 1;
        self.rx.clear();
        self.thre_pending = false;
        self.thre_deferred = false;
        if let Some(saved) = self.modem_in_saved.take() {
            self.modem_in = saved;
        }
        self.irq_level = false;
        self.irq.set_level(false);
        self.backend.rx_space_available();
    }

    /// Connects the interrupt output to a new line (after a machine reset
    /// rebuilt the interrupt controllers).
    pub fn set_irq(&mut self, irq: Arc<dyn IrqLine>) {
        self.irq = irq;
        self.irq_level = false;
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Four character times at the current line settings: the receive
    /// timeout of the FIFO mode.
    pub fn char_timeout(&self) -> Duration {
        let params = self.line_params();
        let bits = 1
            + u64::from(params.data_bits)
            + u64::from(params.parity != Parity::None)
            + u64::from(params.stop_bits);
        Duration::from_nanos(4 * bits * 1_000_000_000 / u64::from(params.baud.max(1)))
    }

    fn timeout_pending(&self, now: Instant) -> bool {
        self.fifo_enabled
            && !self.rx.is_empty()
            && self.rx.len() < self.rx_trigger
            && now.duration_since(self.last_rx_activity) >= self.char_timeout()
    }

    /// The highest-priority pending interrupt, as IIR bits 3:0.
    fn pending_interrupt(&self, now: Instant) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr_errors != 0 {
            IIR_RLS
        } else if self.ier & IER_RDA != 0
            && !self.rx.is_empty()
            && (!self.fifo_enabled || self.rx.len() >= self.rx_trigger)
        {
            IIR_RDA
        } else if self.ier & IER_RDA != 0 && self.timeout_pending(now) {
            IIR_TIMEOUT
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_MS != 0 && self.msr_deltas != 0 {
            IIR_MS
        } else {
            IIR_NONE
        }
    }

    fn update_irq(&mut self) {
        // On a PC the UART's interrupt reaches the PIC only through OUT2.
        let level = self.pending_interrupt(Instant::now()) != IIR_NONE
            && self.mcr & MCR_OUT2 != 0
            && self.mcr & MCR_LOOP == 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Re-evaluates time-dependent interrupts (the FIFO character timeout);
    /// returns when it should be called again, if ever.
    pub fn tick(&mut self) -> Option<Instant> {
        self.update_irq();
        (self.fifo_enabled && !self.rx.is_empty() && self.rx.len() < self.rx_trigger)
            .then(|| self.last_rx_activity + self.char_timeout())
    }

    /// Host input for the guest. Returns how many bytes were accepted; the
    /// rest must be offered again after `rx_space_available`. Nothing is
    /// accepted while the port is in loopback.
    pub fn receive(&mut self, data: &[u8]) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            return 0;
        }
        let n = data
            .len()
            .min(self.rx_capacity() - self.rx.len().min(self.rx_capacity()));
        self.rx.extend(&data[..n]);
        if n > 0 {
            self.last_rx_activity = Instant::now();
            self.update_irq();
        }
        n
    }

    /// Room left in the receive FIFO.
    pub fn rx_space(&self) -> usize {
        self.rx_capacity().saturating_sub(self.rx.len())
    }

    /// A break condition arrived from the host side.
    pub fn receive_break(&mut self) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(0);
        }
        self.lsr_errors |= LSR_BI;
        self.update_irq();
    }

    /// The modem status lines changed on the host side.
    pub fn set_modem_status(&mut self, status: ModemStatus) {
        if self.mcr & MCR_LOOP == 0 {
            self.apply_modem_inputs(status);
        } else {
            self.modem_in_saved = Some(status);
        }
    }

    fn apply_modem_inputs(&mut self, new: ModemStatus) {
        let old = self.modem_in;
        if old.cts != new.cts {
            self.msr_deltas |= MSR_DCTS;
        }
        if old.dsr != new.dsr {
            self.msr_deltas |= MSR_DDSR;
        }
        if old.dcd != new.dcd {
            self.msr_deltas |= MSR_DDCD;
        }
        // TERI: the trailing edge of ring indicate.
        if old.ri && !new.ri {
            self.msr_deltas |= MSR_TERI;
        }
        self.modem_in = new;
        self.update_irq();
    }

    /// The line settings in effect.
    pub fn line_params(&self) -> LineParams {
        let data_bits = 5 + (self.lcr & 0x03);
        let parity = match (self.lcr >> 3) & 0x07 {
            0b001 => Parity::Odd,
            0b011 => Parity::Even,
            0b101 => Parity::Mark,
            0b111 => Parity::Space,
            _ => Parity::None,
        };
        LineParams {
            baud: BAUD_BASE / u32::from(self.divisor.max(1)),
            data_bits,
            parity,
            stop_bits: if self.lcr & 0x04 != 0 { 2 } else { 1 },
        }
    }

    /// Whether the guest is sending a break (LCR bit 6).
    pub fn break_on(&self) -> bool {
        self.lcr & LCR_BREAK != 0
    }

    pub fn modem_control(&self) -> ModemControl {
        ModemControl {
            dtr: self.mcr & MCR_DTR != 0,
            rts: self.mcr & MCR_RTS != 0,
        }
    }

    fn msr(&self) -> u8 {
        let s = self.modem_in;
        let mut v = self.msr_deltas;
        if s.cts {
            v |= MSR_CTS;
        }
        if s.dsr {
            v |= MSR_DSR;
        }
        if s.ri {
            v |= MSR_RI;
        }
        if s.dcd {
            v |= MSR_DCD;
        }
        v
    }

    /// Whether THR counts as empty: in loopback always, otherwise when
    /// the backend can take more output.
    fn tx_ready(&mut self) -> bool {
        self.mcr & MCR_LOOP != 0 || self.backend.tx_ready()
    }

    /// THR emptied: raise THRE now, or once the backend has room.
    fn thr_emptied(&mut self) {
        if self.tx_ready() {
            self.thre_pending = true;
        } else {
            self.thre_deferred = true;
        }
    }

    /// The backend has room for output again (called by the host side
    /// after `SerialBackend::tx_ready` said no): a deferred THRE interrupt
    /// is raised now.
    pub fn tx_space_available(&mut self) {
        if self.thre_deferred && self.tx_ready() {
            self.thre_deferred = false;
            self.thre_pending = true;
        }
        self.update_irq();
    }

    fn lsr(&mut self) -> u8 {
        let mut v = self.lsr_errors;
        if self.tx_ready() {
            v |= LSR_THRE | LSR_TEMT;
        }
        if !self.rx.is_empty() {
            v |= LSR_DR;
        }
        if self.fifo_enabled && self.lsr_errors & LSR_BI != 0 {
            v |= LSR_FIFO_ERR;
        }
        v
    }

    fn transmit(&mut self, byte: u8) {
        if self.mcr & MCR_LOOP != 0 {
            if self.rx.len() < self.rx_capacity() {
                self.rx.push_back(byte);
                self.last_rx_activity = Instant::now();
            } else {
                self.lsr_errors |= LSR_OE;
            }
        } else {
            self.backend.write(&[byte]);
        }
        self.thr_emptied();
    }

    fn read_reg(&mut self, off: u64) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match off {
            RBR_THR_DLL if dlab => self.divisor as u8,
            RBR_THR_DLL => {
                let had_room = self.rx_space() > 0;
                let b = self.rx.pop_front().unwrap_or(0);
                self.last_rx_activity = Instant::now();
                if !had_room || self.rx.is_empty() {
                    self.backend.rx_space_available();
                }
                b
            }
            IER_DLM if dlab => (self.divisor >> 8) as u8,
            IER_DLM => self.ier,
            IIR_FCR => {
                let id = self.pending_interrupt(Instant::now());
                // Reading IIR while THRE is the reported source clears it.
                if id == IIR_THRE {
                    self.thre_pending = false;
                }
                id | if self.fifo_enabled {
                    IIR_FIFO_ENABLED
                } else {
                    0
                }
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let v = self.lsr();
                self.lsr_errors = 0;
                v
            }
            MSR => {
                let v = if self.mcr & MCR_LOOP != 0 {
                    let mut v = self.msr_deltas;
                    if self.mcr & MCR_RTS != 0 {
                        v |= MSR_CTS;
                    }
                    if self.mcr & MCR_DTR != 0 {
                        v |= MSR_DSR;
                    }
                    if self.mcr & MCR_OUT1 != 0 {
                        v |= MSR_RI;
                    }
                    if self.mcr & MCR_OUT2 != 0 {
                        v |= MSR_DCD;
                    }
                    v
                } else {
                    self.msr()
                };
                self.msr_deltas = 0;
                v
            }
            _ => self.scr,
        }
    }

    fn write_reg(&mut self, off: u64, v: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match off {
            RBR_THR_DLL if dlab => {
                self.divisor = (self.divisor & 0xff00) | u16::from(v);
                self.backend.line_params_changed(self.line_params());
            }
            RBR_THR_DLL => self.transmit(v),
            IER_DLM if dlab => {
                self.divisor = (self.divisor & 0x00ff) | u16::from(v) << 8;
                self.backend.line_params_changed(self.line_params());
            }
            IER_DLM => {
                let newly_thre = v & IER_THRE != 0 && self.ier & IER_THRE == 0;
                self.ier = v & 0x0f;
                // Enabling ETBEI with THR empty raises THRE at once.
                if newly_thre {
                    self.thr_emptied();
                }
            }
            IIR_FCR => {
                let enable = v & FCR_ENABLE != 0;
                if enable != self.fifo_enabled {
                    // Changing FIFO mode empties both FIFOs.
                    self.rx.clear();
                    self.fifo_enabled = enable;
                }
                if v & FCR_CLEAR_RX != 0 {
                    self.rx.clear();
                }
                if v & FCR_CLEAR_TX != 0 {
                    self.thr_emptied();
                }
                self.rx_trigger = match v >> 6 {
                    0 => 1,
                    1 => 4,
                    2 => 8,
                    _ => 14,
                };
                self.backend.rx_space_available();
            }
            LCR => {
                let old = self.lcr;
                self.lcr = v;
                if (old ^ v) & 0x3f != 0 {
                    self.backend.line_params_changed(self.line_params());
                }
                if (old ^ v) & LCR_BREAK != 0 {
                    self.backend.break_changed(v & LCR_BREAK != 0);
                }
            }
            MCR => {
                let old = self.mcr;
                self.mcr = v & 0x1f;
                if (old ^ self.mcr) & (MCR_DTR | MCR_RTS) != 0 {
                    self.backend.modem_control_changed(self.modem_control());
                }
                if (old ^ self.mcr) & MCR_LOOP != 0 {
                    self.loop_changed();
                } else if self.mcr & MCR_LOOP != 0 {
                    self.loop_outputs_changed(old);
                }
            }
            LSR | MSR => {}
            _ => self.scr = v,
        }
        self.update_irq();
    }

    fn loop_changed(&mut self) {
        if self.mcr & MCR_LOOP == 0 {
            if let Some(saved) = self.modem_in_saved.take() {
                self.apply_modem_inputs(saved);
            }
            // Host input held off during loopback can come in now.
            self.backend.rx_space_available();
        }
    }

    /// In loopback the modem outputs feed the inputs: RTS->CTS, DTR->DSR,
    /// OUT1->RI, OUT2->DCD; their changes set the delta bits.
    fn loop_outputs_changed(&mut self, old_mcr: u8) {
        let changed = old_mcr ^ self.mcr;
        if changed & MCR_RTS != 0 {
            self.msr_deltas |= MSR_DCTS;
        }
        if changed & MCR_DTR != 0 {
            self.msr_deltas |= MSR_DDSR;
        }
        if changed & MCR_OUT2 != 0 {
            self.msr_deltas |= MSR_DDCD;
        }
        if old_mcr & MCR_OUT1 != 0 && self.mcr & MCR_OUT1 == 0 {
            self.msr_deltas |= MSR_TERI;
        }
    }

    /// Mutable access to the backend, e.g. to hand it a new connection.
    pub fn backend_mut(&mut self) -> &mut dyn SerialBackend {
        self.backend.as_mut()
    }
}

impl BusDevice for Uart16550 {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.read_reg(addr & 7);
        self.update_irq();
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        self.write_reg(addr & 7, data[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingIrq;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Record {
        out: Vec<u8>,
        params: Vec<LineParams>,
        control: Vec<ModemControl>,
        breaks: Vec<bool>,
        space_signals: usize,
        /// What `tx_ready` answers (true unless a test pushes back).
        busy: bool,
    }

    #[derive(Clone, Default)]
    struct Probe(Arc<Mutex<Record>>);

    impl SerialBackend for Probe {
        fn write(&mut self, data: &[u8]) {
            self.0.lock().unwrap().out.extend_from_slice(data);
        }
        fn line_params_changed(&mut self, p: LineParams) {
            self.0.lock().unwrap().params.push(p);
        }
        fn modem_control_changed(&mut self, c: ModemControl) {
            self.0.lock().unwrap().control.push(c);
        }
        fn break_changed(&mut self, on: bool) {
            self.0.lock().unwrap().breaks.push(on);
        }
        fn rx_space_available(&mut self) {
            self.0.lock().unwrap().space_signals += 1;
        }
        fn tx_ready(&mut self) -> bool {
            !self.0.lock().unwrap().busy
        }
    }

    const BASE: u64 = 0x3f8;

    fn uart() -> (Uart16550, Arc<RecordingIrq>, Probe) {
        let irq = RecordingIrq::new();
        let probe = Probe::default();
        (
            Uart16550::new(irq.clone(), Box::new(probe.clone())),
            irq,
            probe,
        )
    }

    fn rd(u: &mut Uart16550, off: u64) -> u8 {
        let mut b = [0];
        u.read(BASE + off, &mut b);
        b[0]
    }

    fn wr(u: &mut Uart16550, off: u64, v: u8) {
        u.write(BASE + off, &[v]);
    }

    #[test]
    fn divisor_latch_sets_baud_and_reports_line_params() {
        let (mut u, _, probe) = uart();
        wr(&mut u, LCR, LCR_DLAB | 0x03);
        wr(&mut u, RBR_THR_DLL, 1);
        wr(&mut u, IER_DLM, 0);
        assert_eq!(rd(&mut u, RBR_THR_DLL), 1);
        wr(&mut u, LCR, 0x03);
        assert_eq!(u.line_params().baud, 115_200);
        // 9600 7E2.
        wr(&mut u, LCR, LCR_DLAB | 0x1e);
        wr(&mut u, RBR_THR_DLL, 12);
        wr(&mut u, LCR, 0x1e);
        assert_eq!(
            u.line_params(),
            LineParams {
                baud: 9600,
                data_bits: 7,
                parity: Parity::Even,
                stop_bits: 2
            }
        );
        assert_eq!(
            probe.0.lock().unwrap().params.last(),
            Some(&u.line_params())
        );
        // With DLAB clear, offset 0 is THR again.
        wr(&mut u, RBR_THR_DLL, b'A');
        assert_eq!(probe.0.lock().unwrap().out, b"A");
    }

    #[test]
    fn thre_interrupt_follows_the_datasheet() {
        let (mut u, irq, probe) = uart();
        wr(&mut u, MCR, MCR_OUT2);
        assert_eq!(rd(&mut u, IIR_FCR), IIR_NONE);
        assert_eq!(rd(&mut u, LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        // Enabling ETBEI with THR empty raises THRE at once.
        wr(&mut u, IER_DLM, IER_THRE);
        assert!(irq.level());
        // Reading IIR with THRE as source clears it.
        assert_eq!(rd(&mut u, IIR_FCR), IIR_THRE);
        assert!(!irq.level());
        assert_eq!(rd(&mut u, IIR_FCR), IIR_NONE);
        // Each transmitted byte empties THR again.
        wr(&mut u, RBR_THR_DLL, b'x');
        assert!(irq.level());
        assert_eq!(probe.0.lock().unwrap().out, b"x");
        // Without OUT2 the PIC line stays low, though IIR shows the source.
        wr(&mut u, MCR, 0);
        assert!(!irq.level());
        assert_eq!(rd(&mut u, IIR_FCR), IIR_THRE);
    }

    #[test]
    fn receive_fifo_trigger_levels_and_back_pressure() {
        let (mut u, irq, probe) = uart();
        wr(&mut u, MCR, MCR_OUT2);
        wr(&mut u, IER_DLM, IER_RDA);
        // Without FIFOs the receiver holds one byte.
        assert_eq!(u.receive(b"ab"), 1);
        assert!(irq.level());
        assert_eq!(rd(&mut u, IIR_FCR), IIR_RDA);
        assert_eq!(rd(&mut u, RBR_THR_DLL), b'a');
        assert!(!irq.level());
        // FIFO on, trigger level 8.
        wr(&mut u, IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX | 0x80);
        assert_eq!(rd(&mut u, IIR_FCR) & IIR_FIFO_ENABLED, IIR_FIFO_ENABLED);
        assert_eq!(u.receive(b"1234567"), 7);
        assert!(!irq.level(), "below the trigger level, before the timeout");
        assert_eq!(u.receive(b"8"), 1);
        assert!(irq.level());
        assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_RDA);
        // Sixteen bytes fit; the rest is refused, not lost.
        assert_eq!(u.receive(b"abcdefghijklmnop"), 8);
        assert_eq!(u.rx_space(), 0);
        let signals = probe.0.lock().unwrap().space_signals;
        let got: Vec<u8> = (0..16).map(|_| rd(&mut u, RBR_THR_DLL)).collect();
        assert_eq!(&got, b"12345678abcdefgh");
        assert!(probe.0.lock().unwrap().space_signals > signals);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
        assert!(!irq.level());
        // Trigger levels 1, 4 and 14.
        for (fcr, level) in [(0x00u8, 1usize), (0x40, 4), (0xc0, 14)] {
            wr(&mut u, IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX | fcr);
            u.receive(&vec![b'z'; level - 1]);
            assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_NONE);
            u.receive(b"z");
            assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_RDA, "trigger {level}");
        }
    }

    #[test]
    fn character_timeout_reports_data_below_the_trigger() {
        let (mut u, irq, _) = uart();
        // 115200 baud, 8N1: four characters take about 350 us.
        wr(&mut u, LCR, LCR_DLAB | 0x03);
        wr(&mut u, RBR_THR_DLL, 1);
        wr(&mut u, LCR, 0x03);
        wr(&mut u, MCR, MCR_OUT2);
        wr(&mut u, IER_DLM, IER_RDA);
        wr(&mut u, IIR_FCR, FCR_ENABLE | 0xc0);
        u.receive(b"hi");
        let due = u.tick().expect("a timeout is due");
        assert!(!irq.level());
        std::thread::sleep(
            due.saturating_duration_since(Instant::now()) + Duration::from_millis(1),
        );
        u.tick();
        assert!(irq.level());
        assert_eq!(rd(&mut u, IIR_FCR) & 0x0f, IIR_TIMEOUT);
        rd(&mut u, RBR_THR_DLL);
        rd(&mut u, RBR_THR_DLL);
        assert!(!irq.level());
    }

    #[test]
    fn loopback_echoes_data_and_modem_lines() {
        let (mut u, irq, probe) = uart();
        wr(&mut u, MCR, MCR_LOOP | MCR_OUT2);
        wr(&mut u, RBR_THR_DLL, 0x55);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, RBR_THR_DLL), 0x55);
        assert!(
            probe.0.lock().unwrap().out.is_empty(),
            "nothing leaves in loopback"
        );
        // Host input is held off while looping, and invited back after.
        assert_eq!(u.receive(b"x"), 0);
        let signals = probe.0.lock().unwrap().space_signals;
        wr(&mut u, MCR, MCR_OUT2);
        assert!(probe.0.lock().unwrap().space_signals > signals);
        wr(&mut u, MCR, MCR_LOOP | MCR_OUT2);
        rd(&mut u, MSR);
        wr(&mut u, MCR, MCR_LOOP | MCR_RTS | MCR_DTR | MCR_OUT1);
        let msr = rd(&mut u, MSR);
        assert_eq!(
            msr,
            MSR_CTS | MSR_DSR | MSR_RI | MSR_DCTS | MSR_DDSR | MSR_DDCD
        );
        wr(&mut u, MCR, MCR_LOOP | MCR_RTS | MCR_DTR);
        assert_eq!(rd(&mut u, MSR) & MSR_TERI, MSR_TERI);
        assert!(!irq.level(), "no interrupts reach the PIC in loopback");
        // The scratch register holds a byte.
        wr(&mut u, SCR, 0xa5);
        assert_eq!(rd(&mut u, SCR), 0xa5);
    }

    #[test]
    fn modem_status_changes_interrupt_and_control_reaches_backend() {
        let (mut u, irq, probe) = uart();
        wr(&mut u, MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
        assert_eq!(
            probe.0.lock().unwrap().control.last(),
            Some(&ModemControl {
                dtr: true,
                rts: true
            })
        );
        wr(&mut u, IER_DLM, IER_MS);
        assert!(!irq.level());
        u.set_modem_status(ModemStatus {
            cts: false,
            dsr: true,
            ri: true,
            dcd: true,
        });
        assert!(irq.level());
        assert_eq!(rd(&mut u, IIR_FCR), IIR_MS);
        let msr = rd(&mut u, MSR);
        assert_eq!(msr, MSR_DCTS | MSR_DSR | MSR_RI | MSR_DCD);
        assert!(!irq.level());
        u.set_modem_status(ModemStatus {
            cts: false,
            dsr: true,
            ri: false,
            dcd: false,
        });
        assert_eq!(rd(&mut u, MSR), MSR_TERI | MSR_DDCD | MSR_DSR);
        // Break: LCR bit 6 goes to the backend; a received break sets BI.
        wr(&mut u, LCR, 0x43);
        wr(&mut u, LCR, 0x03);
        assert_eq!(probe.0.lock().unwrap().breaks, vec![true, false]);
        wr(&mut u, IER_DLM, IER_RLS);
        u.receive_break();
        assert_eq!(rd(&mut u, IIR_FCR), IIR_RLS);
        assert_eq!(rd(&mut u, LSR) & LSR_BI, LSR_BI);
        assert_eq!(rd(&mut u, LSR) & LSR_BI, 0, "LSR errors clear on read");
    }

    #[test]
    fn a_busy_backend_holds_thre_until_it_has_room() {
        let (mut u, irq, probe) = uart();
        wr(&mut u, MCR, MCR_OUT2);
        wr(&mut u, IER_DLM, IER_THRE);
        assert_eq!(rd(&mut u, IIR_FCR), IIR_THRE);
        probe.0.lock().unwrap().busy = true;
        wr(&mut u, RBR_THR_DLL, b'a');
        // The byte went out, but THR does not read empty and no THRE
        // interrupt is raised while the backend is busy.
        assert_eq!(probe.0.lock().unwrap().out, b"a");
        assert_eq!(rd(&mut u, LSR) & (LSR_THRE | LSR_TEMT), 0);
        assert!(!irq.level());
        assert_eq!(rd(&mut u, IIR_FCR), IIR_NONE);
        // Room again: THRE reads set and interrupts.
        probe.0.lock().unwrap().busy = false;
        u.tx_space_available();
        assert!(irq.level());
        assert_eq!(rd(&mut u, LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert_eq!(rd(&mut u, IIR_FCR), IIR_THRE);
        assert!(!irq.level());
        // A spurious call raises nothing.
        u.tx_space_available();
        assert!(!irq.level());
        // Loopback never waits for the backend.
        probe.0.lock().unwrap().busy = true;
        wr(&mut u, MCR, MCR_LOOP);
        assert_eq!(rd(&mut u, LSR) & LSR_THRE, LSR_THRE);
    }

    #[test]
    fn two_uarts_on_one_shared_isa_line() {
        use crate::irq::SharedIrqLine;
        // COM1 and COM3 share IRQ 4: the line is high while either wants
        // service, and one UART going quiet does not hide the other.
        let line = RecordingIrq::new();
        let shared = SharedIrqLine::new(line.clone());
        let p1 = Probe::default();
        let p3 = Probe::default();
        let mut com1 = Uart16550::new(shared.input(), Box::new(p1));
        let mut com3 = Uart16550::new(shared.input(), Box::new(p3));
        for u in [&mut com1, &mut com3] {
            wr(u, MCR, MCR_OUT2);
            wr(u, IER_DLM, IER_RDA);
        }
        com1.receive(b"1");
        assert!(line.level());
        com3.receive(b"3");
        assert!(line.level());
        assert_eq!(line.rising_edges(), 1, "the OR rose once");
        // The guest's handler services COM1; COM3 still holds the line.
        assert_eq!(rd(&mut com1, RBR_THR_DLL), b'1');
        assert!(line.level(), "COM3's request is not lost");
        assert_eq!(rd(&mut com3, IIR_FCR), IIR_RDA);
        assert_eq!(rd(&mut com3, RBR_THR_DLL), b'3');
        assert!(!line.level());
        // A new request after both were served is a new edge.
        com3.receive(b"x");
        assert_eq!(line.rising_edges(), 2);
    }
}
