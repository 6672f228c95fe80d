//! The i8042 keyboard controller (ports 0x60/0x64, IRQ 1 and 12) with a
//! PS/2 keyboard and mouse behind it: enough for firmware to find and set
//! up both, and for the reset line (command 0xFE, or the output port's
//! bit 0) that many operating systems use to reboot.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::events::{MachineEvents, MachineRequest};
use crate::irq::IrqLine;

pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;

// Status register bits.
const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_OBF: u8 = 0x20;

// Command byte bits.
const CB_KBD_INT: u8 = 0x01;
const CB_AUX_INT: u8 = 0x02;
const CB_SYS: u8 = 0x04;
const CB_KBD_DISABLED: u8 = 0x10;
const CB_AUX_DISABLED: u8 = 0x20;
const CB_TRANSLATE: u8 = 0x40;

const ACK: u8 = 0xfa;
const RESEND: u8 = 0xfe;
const SELF_TEST_OK: u8 = 0xaa;

/// What the next byte written to the data port means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    CommandByte,
    OutputPort,
    KbdOutputBuffer,
    AuxOutputBuffer,
    Aux,
}

/// A parameter byte a PS/2 device waits for after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    Leds,
    ScanCodeSet,
    Typematic,
    MouseParam,
}

pub struct I8042 {
    command_byte: u8,
    output_port: u8,
    last_was_command: bool,
    target: DataTarget,
    /// Bytes waiting for the guest, each marked with whether it came from
    /// the aux (mouse) port.
    queue: VecDeque<(u8, bool)>,
    kbd_pending: Pending,
    aux_pending: Pending,
    scan_code_set: u8,
    kbd_irq: Arc<dyn IrqLine>,
    aux_irq: Arc<dyn IrqLine>,
    events: Arc<MachineEvents>,
}

impl I8042 {
    pub fn new(
        kbd_irq: Arc<dyn IrqLine>,
        aux_irq: Arc<dyn IrqLine>,
        events: Arc<MachineEvents>,
    ) -> Self {
        Self {
            command_byte: CB_KBD_INT | CB_AUX_INT | CB_SYS | CB_TRANSLATE,
            output_port: 0x03,
            last_was_command: false,
            target: DataTarget::Keyboard,
            queue: VecDeque::new(),
            kbd_pending: Pending::None,
            aux_pending: Pending::None,
            scan_code_set: 2,
            kbd_irq,
            aux_irq,
            events,
        }
    }

    /// Queues a scan code from the keyboard (e.g. host input).
    pub fn push_keyboard_byte(&mut self, byte: u8) {
        if self.command_byte & CB_KBD_DISABLED == 0 {
            self.push(byte, false);
        }
    }

    fn push(&mut self, byte: u8, aux: bool) {
        // A real controller holds 16 bytes; drop beyond that as it would.
        if self.queue.len() < 16 {
            self.queue.push_back((byte, aux));
        }
        self.update_irqs();
    }

    fn update_irqs(&self) {
        let (kbd, aux) = match self.queue.front() {
            Some(&(_, false)) => (self.command_byte & CB_KBD_INT != 0, false),
            Some(&(_, true)) => (false, self.command_byte & CB_AUX_INT != 0),
            None => (false, false),
        };
        self.kbd_irq.set_level(kbd);
        self.aux_irq.set_level(aux);
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if self.command_byte & CB_SYS != 0 {
            s |= STATUS_SYS;
        }
        if self.last_was_command {
            s |= STATUS_CMD;
        }
        if let Some(&(_, aux)) = self.queue.front() {
            s |= STATUS_OBF;
            if aux {
                s |= STATUS_AUX_OBF;
            }
        }
        s
    }

    fn controller_command(&mut self, cmd: u8) {
        match cmd {
            0x20 => self.push(self.command_byte, false),
            0x60 => self.target = DataTarget::CommandByte,
            0xa7 => self.command_byte |= CB_AUX_DISABLED,
            0xa8 => self.command_byte &= !CB_AUX_DISABLED,
            0xa9 | 0xab => self.push(0x00, false), // interface tests pass
            0xaa => {
                self.command_byte |= CB_SYS;
                self.push(0x55, false);
            }
            0xad => self.command_byte |= CB_KBD_DISABLED,
            0xae => self.command_byte &= !CB_KBD_DISABLED,
            0xc0 => self.push(0x00, false), // input port
            0xd0 => self.push(self.output_port, false),
            0xd1 => self.target = DataTarget::OutputPort,
            0xd2 => self.target = DataTarget::KbdOutputBuffer,
            0xd3 => self.target = DataTarget::AuxOutputBuffer,
            0xd4 => self.target = DataTarget::Aux,
            0xf0..=0xff => {
                // Pulse output port lines; bit 0 low is the CPU reset.
                if cmd & 0x01 == 0 {
                    self.events.request(MachineRequest::Reset);
                }
            }
            _ => tracing::debug!(cmd, "i8042: unhandled controller command ignored"),
        }
    }

    fn keyboard_byte(&mut self, byte: u8) {
        // Writing to the keyboard re-enables its interface.
        self.command_byte &= !CB_KBD_DISABLED;
        let pending = std::mem::replace(&mut self.kbd_pending, Pending::None);
        match pending {
            Pending::ScanCodeSet => {
                self.push(ACK, false);
                if byte == 0 {
                    self.push(self.scan_code_set, false);
                } else if (1..=3).contains(&byte) {
                    self.scan_code_set = byte;
                }
                return;
            }
            Pending::Leds | Pending::Typematic => {
                self.push(ACK, false);
                return;
            }
            Pending::None | Pending::MouseParam => {}
        }
        match byte {
            0xff => {
                self.scan_code_set = 2;
                self.push(ACK, false);
                self.push(SELF_TEST_OK, false);
            }
            0xf2 => {
                self.push(ACK, false);
                self.push(0xab, false);
                self.push(0x83, false);
            }
            0xed => {
                self.kbd_pending = Pending::Leds;
                self.push(ACK, false);
            }
            0xf0 => {
                self.kbd_pending = Pending::ScanCodeSet;
                self.push(ACK, false);
            }
            0xf3 => {
                self.kbd_pending = Pending::Typematic;
                self.push(ACK, false);
            }
            0xee => self.push(0xee, false),
            0xf4..=0xfd => self.push(ACK, false),
            _ => self.push(RESEND, false),
        }
    }

    fn aux_byte(&mut self, byte: u8) {
        self.command_byte &= !CB_AUX_DISABLED;
        if std::mem::replace(&mut self.aux_pending, Pending::None) == Pending::MouseParam {
            self.push(ACK, true);
            return;
        }
        match byte {
            0xff => {
                self.push(ACK, true);
                self.push(SELF_TEST_OK, true);
                self.push(0x00, true); // device ID: standard mouse
            }
            0xf2 => {
                self.push(ACK, true);
                self.push(0x00, true);
            }
            0xe9 => {
                // Status request: three status bytes.
                self.push(ACK, true);
                for b in [0x00, 0x02, 0x64] {
                    self.push(b, true);
                }
            }
            0xe8 | 0xf3 => {
                self.aux_pending = Pending::MouseParam;
                self.push(ACK, true);
            }
            _ => self.push(ACK, true),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        if addr == COMMAND_PORT {
            data[0] = self.status();
        } else if addr == DATA_PORT {
            match self.queue.pop_front() {
                Some((b, _)) => data[0] = b,
                None => data[0] = 0,
            }
            self.update_irqs();
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let byte = data[0];
        if addr == COMMAND_PORT {
            self.last_was_command = true;
            self.target = DataTarget::Keyboard;
            self.controller_command(byte);
            return;
        }
        if addr != DATA_PORT {
            return;
        }
        self.last_was_command = false;
        let target = std::mem::replace(&mut self.target, DataTarget::Keyboard);
        match target {
            DataTarget::CommandByte => {
                self.command_byte = byte;
                self.update_irqs();
            }
            DataTarget::OutputPort => {
                if byte & 0x01 == 0 {
                    self.events.request(MachineRequest::Reset);
                }
                self.output_port = byte;
            }
            DataTarget::KbdOutputBuffer => self.push(byte, false),
            DataTarget::AuxOutputBuffer => self.push(byte, true),
            DataTarget::Aux => self.aux_byte(byte),
            DataTarget::Keyboard => self.keyboard_byte(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingIrq;

    fn setup() -> (I8042, Arc<RecordingIrq>, Arc<MachineEvents>) {
        let kbd = RecordingIrq::new();
        let ev = Arc::new(MachineEvents::new().unwrap());
        (
            I8042::new(kbd.clone(), RecordingIrq::new(), ev.clone()),
            kbd,
            ev,
        )
    }

    fn status(c: &mut I8042) -> u8 {
        let mut b = [0];
        c.read(COMMAND_PORT, &mut b);
        b[0]
    }

    fn data(c: &mut I8042) -> u8 {
        assert_ne!(status(c) & STATUS_OBF, 0, "output buffer empty");
        let mut b = [0];
        c.read(DATA_PORT, &mut b);
        b[0]
    }

    #[test]
    fn firmware_probe_sequence() {
        let (mut c, kbd, _) = setup();
        // Self test, interface test, command byte round trip.
        c.write(COMMAND_PORT, &[0xaa]);
        assert_eq!(data(&mut c), 0x55);
        assert_ne!(status(&mut c) & STATUS_SYS, 0);
        c.write(COMMAND_PORT, &[0xab]);
        assert_eq!(data(&mut c), 0x00);
        c.write(COMMAND_PORT, &[0x60]);
        c.write(DATA_PORT, &[0x30]); // interrupts off, both ports disabled
        c.write(COMMAND_PORT, &[0x20]);
        assert_eq!(data(&mut c), 0x30);
        let edges = kbd.rising_edges();
        // Keyboard reset answers ACK then BAT OK.
        c.write(DATA_PORT, &[0xff]);
        assert_eq!(data(&mut c), ACK);
        assert_eq!(data(&mut c), SELF_TEST_OK);
        assert_eq!(status(&mut c) & STATUS_OBF, 0);
        assert_eq!(kbd.rising_edges(), edges, "interrupts were disabled");
        // With keyboard interrupts on, a reply raises IRQ 1 until read.
        c.write(COMMAND_PORT, &[0x60]);
        c.write(DATA_PORT, &[0x01]);
        c.write(DATA_PORT, &[0xf2]);
        assert!(kbd.level());
        assert_eq!(data(&mut c), ACK);
        assert_eq!(data(&mut c), 0xab);
        assert_eq!(data(&mut c), 0x83);
        assert!(!kbd.level());
        // LED command takes a parameter, ACKed separately.
        c.write(DATA_PORT, &[0xed]);
        assert_eq!(data(&mut c), ACK);
        c.write(DATA_PORT, &[0x07]);
        assert_eq!(data(&mut c), ACK);
        // Scan code set query.
        c.write(DATA_PORT, &[0xf0]);
        assert_eq!(data(&mut c), ACK);
        c.write(DATA_PORT, &[0x00]);
        assert_eq!(data(&mut c), ACK);
        assert_eq!(data(&mut c), 2);
    }

    #[test]
    fn mouse_answers_through_the_aux_port() {
        let (mut c, _, _) = setup();
        c.write(COMMAND_PORT, &[0xd4]);
        c.write(DATA_PORT, &[0xff]);
        assert_ne!(status(&mut c) & STATUS_AUX_OBF, 0);
        assert_eq!(data(&mut c), ACK);
        assert_eq!(data(&mut c), SELF_TEST_OK);
        assert_eq!(data(&mut c), 0x00);
    }

    #[test]
    fn reset_through_pulse_command_and_output_port() {
        let (mut c, _, ev) = setup();
        c.write(COMMAND_PORT, &[0xff]); // pulses nothing
        assert_eq!(ev.pending(), None);
        c.write(COMMAND_PORT, &[0xfe]);
        assert_eq!(ev.pending(), Some(MachineRequest::Reset));

        let (mut c, _, ev) = setup();
        c.write(COMMAND_PORT, &[0xd1]);
        c.write(DATA_PORT, &[0x02]);
        assert_eq!(ev.pending(), Some(MachineRequest::Reset));
    }
}
