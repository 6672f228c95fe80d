//! The i8042 keyboard controller (ports 0x60/0x64, IRQ 1 and 12) with a
//! PS/2 keyboard and mouse behind it: enough for firmware to find and set
//! up both, and for the reset line (command 0xFE, or the output port's
//! bit 0) that many operating systems use to reboot.
//!
//! The keyboard speaks scan code set 2 (or set 1 when told); the
//! controller translates to set 1 while its command byte's translate bit
//! is set, as firmware and Windows leave it. The mouse sends 3-byte
//! packets, or IntelliMouse 4-byte packets with a wheel after the
//! 200/100/80 sample-rate knock, in stream mode once enabled.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::scancode;
use crate::bus::BusDevice;
use crate::display::{InputSink, Key};
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
    SampleRate,
    Resolution,
}

/// Bytes the controller itself answers (command byte, test results,
/// 0xD2/0xD3 echoes) waiting for the output buffer. A real 8042 has one
/// output buffer; a few commands in a row may queue this many.
const CONTROLLER_QUEUE: usize = 16;
/// Scan code bytes the keyboard holds while the guest has not read them
/// (a PS/2 keyboard buffers 16 keys; the host side may type faster than a
/// slow guest reads). A key event that does not fit is dropped whole.
const KEYBOARD_QUEUE: usize = 128;
/// Mouse packet bytes waiting (16 IntelliMouse packets). Moves beyond
/// that accumulate as a bounded delta instead of queueing.
const MOUSE_QUEUE: usize = 64;
/// Command replies a device may have outstanding (the longest is 4).
const REPLY_QUEUE: usize = 8;

/// Bounded byte queue: `push_all` adds a whole message or nothing.
#[derive(Debug, Default)]
struct ByteQueue {
    bytes: VecDeque<u8>,
}

impl ByteQueue {
    fn push_all(&mut self, data: &[u8], cap: usize) -> bool {
        if self.bytes.len() + data.len() > cap {
            return false;
        }
        self.bytes.extend(data);
        true
    }
    fn room(&self, cap: usize) -> usize {
        cap.saturating_sub(self.bytes.len())
    }
}

/// A device's next byte: command replies go before its data.
fn next_byte(replies: &mut ByteQueue, data: &mut ByteQueue) -> Option<u8> {
    replies.bytes.pop_front().or_else(|| data.bytes.pop_front())
}

/// The PS/2 keyboard: scan code set 2 by default, set 1 when asked.
#[derive(Debug)]
struct Ps2Keyboard {
    replies: ByteQueue,
    data: ByteQueue,
    pending: Pending,
    scan_code_set: u8,
    scanning: bool,
    dropped_logged: bool,
}

impl Default for Ps2Keyboard {
    fn default() -> Self {
        Self {
            replies: ByteQueue::default(),
            data: ByteQueue::default(),
            pending: Pending::None,
            scan_code_set: 2,
            scanning: true,
            dropped_logged: false,
        }
    }
}

/// The PS/2 mouse (standard, or IntelliMouse with a wheel once the guest
/// knocks with sample rates 200, 100, 80).
#[derive(Debug)]
struct Ps2Mouse {
    replies: ByteQueue,
    data: ByteQueue,
    pending: Pending,
    reporting: bool,
    remote: bool,
    scaling_2_1: bool,
    sample_rate: u8,
    resolution: u8,
    /// 0: standard mouse, 3: IntelliMouse (4-byte packets).
    id: u8,
    /// The last three sample rates set, newest last.
    rates: [u8; 3],
    /// Buttons as the PS/2 packet has them (bit 0 left, 1 right, 2 middle).
    buttons: u8,
    reported_buttons: u8,
    wheel_held: u8,
    dx: i32,
    dy: i32,
    dz: i32,
}

impl Default for Ps2Mouse {
    fn default() -> Self {
        Self {
            replies: ByteQueue::default(),
            data: ByteQueue::default(),
            pending: Pending::None,
            reporting: false,
            remote: false,
            scaling_2_1: false,
            sample_rate: 100,
            resolution: 2,
            id: 0,
            rates: [0; 3],
            buttons: 0,
            reported_buttons: 0,
            wheel_held: 0,
            dx: 0,
            dy: 0,
            dz: 0,
        }
    }
}

/// How far one accumulated move may go before the rest is forgotten (a
/// viewer that moves faster than the guest reads).
const MOUSE_DELTA_LIMIT: i32 = 4096;

impl Ps2Mouse {
    fn set_defaults(&mut self) {
        let replies = std::mem::take(&mut self.replies);
        *self = Self {
            replies,
            ..Self::default()
        };
    }

    /// One movement packet from the accumulated deltas (PS/2 Y grows
    /// upwards), taking what fits in 9-bit two's complement.
    fn packet(&mut self) -> Vec<u8> {
        let dx = self.dx.clamp(-256, 255);
        let dy = (-self.dy).clamp(-256, 255);
        let dz = self.dz.clamp(-8, 7);
        self.dx -= dx;
        self.dy += dy;
        self.dz -= dz;
        let mut b0 = 0x08 | (self.buttons & 0x07);
        if dx < 0 {
            b0 |= 0x10;
        }
        if dy < 0 {
            b0 |= 0x20;
        }
        let mut p = vec![b0, dx as u8, dy as u8];
        if self.id == 3 {
            p.push(dz as u8 & 0x0f);
        } else {
            self.dz = 0;
        }
        self.reported_buttons = self.buttons;
        p
    }

    fn has_news(&self) -> bool {
        self.dx != 0 || self.dy != 0 || self.dz != 0 || self.buttons != self.reported_buttons
    }

    /// Queues packets while there is news, room, and stream reporting.
    fn flush(&mut self) {
        if !self.reporting || self.remote {
            return;
        }
        let size = if self.id == 3 { 4 } else { 3 };
        while self.has_news() && self.data.room(MOUSE_QUEUE) >= size {
            let p = self.packet();
            self.data.push_all(&p, MOUSE_QUEUE);
        }
    }

    fn moved(&mut self, dx: i32, dy: i32, buttons: u8) {
        use crate::display::buttons as b;
        let limit = |v: i32| v.clamp(-MOUSE_DELTA_LIMIT, MOUSE_DELTA_LIMIT);
        self.dx = limit(self.dx.saturating_add(dx));
        self.dy = limit(self.dy.saturating_add(dy));
        // A wheel "button" going down is one notch (up is negative Z).
        let wheel = buttons & (b::WHEEL_UP | b::WHEEL_DOWN);
        let pressed = wheel & !self.wheel_held;
        self.wheel_held = wheel;
        if pressed & b::WHEEL_UP != 0 {
            self.dz = limit(self.dz - 1);
        }
        if pressed & b::WHEEL_DOWN != 0 {
            self.dz = limit(self.dz + 1);
        }
        self.buttons = u8::from(buttons & b::LEFT != 0)
            | u8::from(buttons & b::RIGHT != 0) << 1
            | u8::from(buttons & b::MIDDLE != 0) << 2;
        if !self.reporting && !self.remote {
            // Nothing streams and nothing is kept for later.
            (self.dx, self.dy, self.dz) = (0, 0, 0);
            self.reported_buttons = self.buttons;
        }
        self.flush();
    }
}

pub struct I8042 {
    command_byte: u8,
    output_port: u8,
    last_was_command: bool,
    target: DataTarget,
    /// The output buffer: the byte the guest reads next from port 0x60,
    /// and whether it came from the aux (mouse) port.
    output: Option<(u8, bool)>,
    controller_queue: VecDeque<(u8, bool)>,
    keyboard: Ps2Keyboard,
    mouse: Ps2Mouse,
    kbd_irq: Arc<dyn IrqLine>,
    aux_irq: Arc<dyn IrqLine>,
    events: Arc<MachineEvents>,
}

/// What the keyboard answers for scan code set `n` when the controller
/// translates (the set number through the translation table).
fn translated_set_number(n: u8) -> u8 {
    match n {
        1 => 0x43,
        2 => 0x41,
        _ => 0x3f,
    }
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
            output: None,
            controller_queue: VecDeque::new(),
            keyboard: Ps2Keyboard::default(),
            mouse: Ps2Mouse::default(),
            kbd_irq,
            aux_irq,
            events,
        }
    }

    fn translating(&self) -> bool {
        self.command_byte & CB_TRANSLATE != 0
    }

    /// A key pressed or released on the keyboard: its scan codes in the
    /// keyboard's set, translated to set 1 when the controller translates.
    /// Dropped while the keyboard does not scan, or when its buffer is
    /// full.
    pub fn key_event(&mut self, key: Key, down: bool) {
        tracing::trace!(
            key = key.0,
            down,
            scanning = self.keyboard.scanning,
            command_byte = self.command_byte,
            "i8042: key"
        );
        if !self.keyboard.scanning {
            return;
        }
        let bytes = match self.keyboard.scan_code_set {
            1 => scancode::set1_bytes(key, down),
            _ => scancode::set2_bytes(key, down),
        };
        if bytes.is_empty() {
            tracing::debug!(key = key.0, "i8042: key without a scan code ignored");
            return;
        }
        let bytes = if self.translating() {
            scancode::translate(&bytes)
        } else {
            bytes
        };
        if !self.keyboard.data.push_all(&bytes, KEYBOARD_QUEUE) && !self.keyboard.dropped_logged {
            self.keyboard.dropped_logged = true;
            tracing::warn!("i8042: keyboard buffer full (the guest is not reading); keys dropped");
        }
        self.refill();
    }

    /// A relative mouse move (`dy` grows downwards, as on the screen) with
    /// the buttons now held ([`crate::display::buttons`] bits).
    pub fn mouse_event(&mut self, dx: i32, dy: i32, buttons: u8) {
        self.mouse.moved(dx, dy, buttons);
        self.refill();
    }

    /// Queues a scan code from the keyboard as is.
    pub fn push_keyboard_byte(&mut self, byte: u8) {
        if self.keyboard.data.push_all(&[byte], KEYBOARD_QUEUE) {
            self.refill();
        }
    }

    fn controller_reply(&mut self, byte: u8, aux: bool) {
        if self.controller_queue.len() < CONTROLLER_QUEUE {
            self.controller_queue.push_back((byte, aux));
        }
        self.refill();
    }

    fn kbd_reply(&mut self, bytes: &[u8]) {
        self.keyboard.replies.push_all(bytes, REPLY_QUEUE);
        self.refill();
    }

    fn aux_reply(&mut self, bytes: &[u8]) {
        self.mouse.replies.push_all(bytes, REPLY_QUEUE);
        self.refill();
    }

    /// Moves the next waiting byte into an empty output buffer: the
    /// controller's own first, then the keyboard's, then the mouse's;
    /// a device whose interface is disabled holds its bytes.
    fn refill(&mut self) {
        if self.output.is_none() {
            let kbd_on = self.command_byte & CB_KBD_DISABLED == 0;
            let aux_on = self.command_byte & CB_AUX_DISABLED == 0;
            if aux_on {
                self.mouse.flush();
            }
            self.output = if let Some(b) = self.controller_queue.pop_front() {
                Some(b)
            } else if let Some(b) = kbd_on
                .then(|| next_byte(&mut self.keyboard.replies, &mut self.keyboard.data))
                .flatten()
            {
                Some((b, false))
            } else if aux_on {
                next_byte(&mut self.mouse.replies, &mut self.mouse.data).map(|b| (b, true))
            } else {
                None
            };
        }
        self.update_irqs();
    }

    fn update_irqs(&self) {
        let (kbd, aux) = match self.output {
            Some((_, false)) => (self.command_byte & CB_KBD_INT != 0, false),
            Some((_, true)) => (false, self.command_byte & CB_AUX_INT != 0),
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
        if let Some((_, aux)) = self.output {
            s |= STATUS_OBF;
            if aux {
                s |= STATUS_AUX_OBF;
            }
        }
        s
    }

    fn controller_command(&mut self, cmd: u8) {
        tracing::trace!(cmd, "i8042: controller command");
        match cmd {
            0x20 => self.controller_reply(self.command_byte, false),
            0x60 => self.target = DataTarget::CommandByte,
            0xa7 => self.command_byte |= CB_AUX_DISABLED,
            0xa8 => {
                self.command_byte &= !CB_AUX_DISABLED;
                self.refill();
            }
            0xa9 | 0xab => self.controller_reply(0x00, false), // interface tests pass
            0xaa => {
                self.command_byte |= CB_SYS;
                self.controller_reply(0x55, false);
            }
            0xad => self.command_byte |= CB_KBD_DISABLED,
            0xae => {
                self.command_byte &= !CB_KBD_DISABLED;
                self.refill();
            }
            0xc0 => self.controller_reply(0x00, false), // input port
            0xd0 => self.controller_reply(self.output_port, false),
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
        tracing::trace!(byte, "i8042: keyboard command");
        // Writing to the keyboard re-enables its interface.
        self.command_byte &= !CB_KBD_DISABLED;
        let pending = std::mem::replace(&mut self.keyboard.pending, Pending::None);
        match pending {
            Pending::ScanCodeSet => {
                if byte == 0 {
                    let set = self.keyboard.scan_code_set;
                    let answer = if self.translating() {
                        translated_set_number(set)
                    } else {
                        set
                    };
                    self.kbd_reply(&[ACK, answer]);
                } else if (1..=3).contains(&byte) {
                    self.keyboard.scan_code_set = byte;
                    self.keyboard.data.bytes.clear();
                    self.kbd_reply(&[ACK]);
                } else {
                    self.kbd_reply(&[RESEND]);
                }
                return;
            }
            Pending::Leds | Pending::Typematic => {
                self.kbd_reply(&[ACK]);
                return;
            }
            _ => {}
        }
        // A command clears what the keyboard had not sent yet.
        self.keyboard.replies.bytes.clear();
        match byte {
            0xff => {
                self.keyboard = Ps2Keyboard::default();
                self.kbd_reply(&[ACK, SELF_TEST_OK]);
            }
            0xf2 => {
                let second = if self.translating() { 0x41 } else { 0x83 };
                self.kbd_reply(&[ACK, 0xab, second]);
            }
            0xed => {
                self.keyboard.pending = Pending::Leds;
                self.kbd_reply(&[ACK]);
            }
            0xf0 => {
                self.keyboard.pending = Pending::ScanCodeSet;
                self.kbd_reply(&[ACK]);
            }
            0xf3 => {
                self.keyboard.pending = Pending::Typematic;
                self.kbd_reply(&[ACK]);
            }
            0xf4 => {
                self.keyboard.scanning = true;
                self.kbd_reply(&[ACK]);
            }
            0xf5 => {
                // Disable: defaults, and no scanning until enabled.
                self.keyboard.data.bytes.clear();
                self.keyboard.scanning = false;
                self.kbd_reply(&[ACK]);
            }
            0xf6 => {
                self.keyboard.data.bytes.clear();
                self.keyboard.scanning = true;
                self.kbd_reply(&[ACK]);
            }
            0xee => self.kbd_reply(&[0xee]),
            0xf7..=0xfe => self.kbd_reply(&[ACK]),
            _ => self.kbd_reply(&[RESEND]),
        }
    }

    fn aux_byte(&mut self, byte: u8) {
        self.command_byte &= !CB_AUX_DISABLED;
        let m = &mut self.mouse;
        match std::mem::replace(&mut m.pending, Pending::None) {
            Pending::SampleRate => {
                m.sample_rate = byte;
                m.rates = [m.rates[1], m.rates[2], byte];
                if m.rates == [200, 100, 80] {
                    m.id = 3;
                }
                self.aux_reply(&[ACK]);
                return;
            }
            Pending::Resolution => {
                m.resolution = byte.min(3);
                self.aux_reply(&[ACK]);
                return;
            }
            _ => {}
        }
        m.replies.bytes.clear();
        match byte {
            0xff => {
                m.set_defaults();
                self.aux_reply(&[ACK, SELF_TEST_OK, 0x00]);
            }
            0xf6 => {
                let id = m.id;
                m.set_defaults();
                m.id = id;
                self.aux_reply(&[ACK]);
            }
            0xf5 => {
                m.reporting = false;
                m.data.bytes.clear();
                self.aux_reply(&[ACK]);
            }
            0xf4 => {
                m.reporting = true;
                self.aux_reply(&[ACK]);
            }
            0xf3 => {
                m.pending = Pending::SampleRate;
                self.aux_reply(&[ACK]);
            }
            0xe8 => {
                m.pending = Pending::Resolution;
                self.aux_reply(&[ACK]);
            }
            0xf2 => {
                let id = m.id;
                self.aux_reply(&[ACK, id]);
            }
            0xf0 => {
                m.remote = true;
                self.aux_reply(&[ACK]);
            }
            0xea => {
                m.remote = false;
                self.aux_reply(&[ACK]);
            }
            0xeb => {
                // Read data: one packet on request (remote mode).
                let mut reply = vec![ACK];
                reply.extend(m.packet());
                self.aux_reply(&reply);
            }
            0xe9 => {
                let status = u8::from(m.remote) << 6
                    | u8::from(m.reporting) << 5
                    | u8::from(m.scaling_2_1) << 4
                    | (m.buttons & 0x01) << 2
                    | (m.buttons & 0x04) >> 1
                    | (m.buttons & 0x02) >> 1;
                let (res, rate) = (m.resolution, m.sample_rate);
                self.aux_reply(&[ACK, status, res, rate]);
            }
            0xe6 | 0xe7 => {
                m.scaling_2_1 = byte == 0xe7;
                self.aux_reply(&[ACK]);
            }
            _ => self.aux_reply(&[ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        if addr == COMMAND_PORT {
            *first = self.status();
        } else if addr == DATA_PORT {
            if let Some((b, _)) = self.output.take() {
                *first = b;
            }

            // Reading lowers the interrupt; the next byte, if any, raises
            // it again: a new edge for the edge-triggered PIC.
            self.kbd_irq.set_level(false);
            self.aux_irq.set_level(false);
            self.refill();
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
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
                self.refill();
            }
            DataTarget::OutputPort => {
                if byte & 0x01 == 0 {
                    self.events.request(MachineRequest::Reset);
                }
                self.output_port = byte;
            }
            DataTarget::KbdOutputBuffer => self.controller_reply(byte, false),
            DataTarget::AuxOutputBuffer => self.controller_reply(byte, true),
            DataTarget::Aux => self.aux_byte(byte),
            DataTarget::Keyboard => self.keyboard_byte(byte),
        }
    }
}

/// The i8042's keyboard and mouse as a console input: keys and pointer
/// moves from viewers and QMP `send-key` reach the guest through here.
pub struct Ps2Input(pub Arc<Mutex<I8042>>);

impl InputSink for Ps2Input {
    fn key(&self, key: Key, down: bool) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .key_event(key, down);
    }

    fn pointer(&self, dx: i32, dy: i32, buttons: u8) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mouse_event(dx, dy, buttons);
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

    /// Every byte waiting in the output buffer, read as the guest would.
    fn drain(c: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while status(c) & STATUS_OBF != 0 {
            out.push(data(c));
            assert!(out.len() < 4096, "the controller never runs dry");
        }
        out
    }

    fn aux_command(c: &mut I8042, byte: u8) -> Vec<u8> {
        c.write(COMMAND_PORT, &[0xd4]);
        c.write(DATA_PORT, &[byte]);
        drain(c)
    }

    #[test]
    fn keys_arrive_translated_to_set_1_or_raw_in_set_2() {
        let (mut c, kbd, _) = setup();
        c.key_event(Key(0x1e), true); // A
        c.key_event(Key(0x1e), false);
        c.key_event(Key(0xe048), true); // Up
        c.key_event(Key(0xe048), false);
        // One byte per interrupt: every byte is a new rising edge.
        let before = kbd.rising_edges();
        assert_eq!(drain(&mut c), [0x1e, 0x9e, 0xe0, 0x48, 0xe0, 0xc8]);
        assert_eq!(kbd.rising_edges() - before, 5);
        c.key_event(Key(0xe11d), true); // Pause
        c.key_event(Key(0xe11d), false);
        assert_eq!(drain(&mut c), [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]);
        // The ID and the scan code set answer through the translation.
        c.write(DATA_PORT, &[0xf2]);
        assert_eq!(drain(&mut c), [ACK, 0xab, 0x41]);
        c.write(DATA_PORT, &[0xf0]);
        c.write(DATA_PORT, &[0x00]);
        assert_eq!(drain(&mut c), [ACK, ACK, 0x41]);

        // Translation off: the keyboard's own set 2 bytes.
        c.write(COMMAND_PORT, &[0x60]);
        c.write(DATA_PORT, &[CB_KBD_INT | CB_SYS]);
        c.key_event(Key(0x1e), true);
        c.key_event(Key(0x1e), false);
        c.key_event(Key(0xe037), true); // Print Screen
        assert_eq!(drain(&mut c), [0x1c, 0xf0, 0x1c, 0xe0, 0x12, 0xe0, 0x7c]);
        c.write(DATA_PORT, &[0xf2]);
        assert_eq!(drain(&mut c), [ACK, 0xab, 0x83]);
        // Set 1 chosen: set 1 bytes, untranslated.
        c.write(DATA_PORT, &[0xf0]);
        c.write(DATA_PORT, &[0x01]);
        c.write(DATA_PORT, &[0xf0]);
        c.write(DATA_PORT, &[0x00]);
        assert_eq!(drain(&mut c), [ACK, ACK, ACK, 0x01]);
        c.key_event(Key(0x1c), false);
        assert_eq!(drain(&mut c), [0x9c]);
    }

    #[test]
    fn keyboard_disabled_holds_keys_and_a_full_buffer_drops_whole_keys() {
        let (mut c, _, _) = setup();
        c.write(COMMAND_PORT, &[0xad]);
        c.key_event(Key(0x1e), true);
        assert_eq!(status(&mut c) & STATUS_OBF, 0, "interface disabled");
        c.write(COMMAND_PORT, &[0xae]);
        assert_eq!(drain(&mut c), [0x1e]);
        // Nobody reads: the buffer stops at its bound, keys whole.
        c.write(COMMAND_PORT, &[0xad]);
        for _ in 0..1000 {
            c.key_event(Key(0xe048), true);
        }
        c.write(COMMAND_PORT, &[0xae]);
        let got = drain(&mut c);
        assert_eq!(got.len(), KEYBOARD_QUEUE);
        assert!(got.chunks(2).all(|k| k == [0xe0, 0x48]));
        // Scanning disabled (F5): keys are dropped.
        c.write(DATA_PORT, &[0xf5]);
        assert_eq!(drain(&mut c), [ACK]);
        c.key_event(Key(0x1e), true);
        assert_eq!(drain(&mut c), Vec::<u8>::new());
    }

    #[test]
    fn mouse_streams_packets_once_enabled() {
        let (mut c, _, _) = setup();
        assert_eq!(aux_command(&mut c, 0xff), [ACK, SELF_TEST_OK, 0x00]);
        c.mouse_event(5, 5, 0);
        assert_eq!(drain(&mut c), Vec::<u8>::new(), "reporting is off");
        assert_eq!(aux_command(&mut c, 0xf4), [ACK]);
        // Right 10, down 3 (PS/2 Y is up), left button.
        c.mouse_event(10, 3, crate::display::buttons::LEFT);
        assert_eq!(drain(&mut c), [0x08 | 0x01 | 0x20, 10, (-3i8) as u8]);
        // A long move comes as several packets of at most 255.
        c.mouse_event(-600, 0, 0);
        let got = drain(&mut c);
        assert_eq!(got.len(), 9);
        let total: i32 = got
            .chunks(3)
            .map(|p| {
                assert_eq!(p[0] & 0x10, 0x10, "X sign");
                i32::from(p[1]) - 256
            })
            .sum();
        assert_eq!(total, -600);
        // Remote mode: nothing streams; Read Data gives one packet.
        assert_eq!(aux_command(&mut c, 0xf0), [ACK]);
        c.mouse_event(1, 0, 0);
        assert_eq!(drain(&mut c), Vec::<u8>::new());
        assert_eq!(aux_command(&mut c, 0xeb), [ACK, 0x08, 1, 0]);
        // Status reports remote mode, reporting on, resolution, rate.
        assert_eq!(aux_command(&mut c, 0xe9), [ACK, 0x60, 2, 100]);
    }

    #[test]
    fn intellimouse_knock_gives_wheel_packets() {
        let (mut c, _, _) = setup();
        for rate in [200, 100, 80] {
            assert_eq!(aux_command(&mut c, 0xf3), [ACK]);
            assert_eq!(aux_command(&mut c, rate), [ACK]);
        }
        assert_eq!(aux_command(&mut c, 0xf2), [ACK, 3]);
        assert_eq!(aux_command(&mut c, 0xf4), [ACK]);
        c.mouse_event(0, 0, crate::display::buttons::WHEEL_DOWN);
        c.mouse_event(0, 0, 0);
        c.mouse_event(0, 0, crate::display::buttons::WHEEL_UP);
        assert_eq!(drain(&mut c), [0x08, 0, 0, 1, 0x08, 0, 0, 0x0f]);
        // A flood of moves is bounded: the queue holds what fits and the
        // rest arrives (summed) as the guest reads.
        for _ in 0..10_000 {
            c.mouse_event(1, 0, 0);
        }
        let got = drain(&mut c);
        let total: i32 = got.chunks(4).map(|p| i32::from(p[1])).sum();
        // 16 one-step packets fit the queue at once; the rest was held
        // as one delta, cut at its bound.
        assert_eq!(total, (MOUSE_QUEUE / 4) as i32 + MOUSE_DELTA_LIMIT);
    }
}
