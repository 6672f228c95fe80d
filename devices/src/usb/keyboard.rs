//! A HID boot keyboard (HID 1.11, appendix B.1): one interface (class
//! 03/01/01) with an interrupt IN endpoint carrying 8-byte boot reports.
//! Key presses and releases come from the host ([`KeyboardHandle`], for
//! the control socket's `send-key`) and queue up as reports; an interrupt
//! IN with no new report is NAKed, as a keyboard does when nothing
//! changed (idle rate 0).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::display::{InputSink, Key};

use super::device::{self, DeviceInfo, DeviceState, EndpointInfo, InterfaceInfo};
use super::hid_spec as hid;
use super::usb_spec as ch9;
use super::{Completer, Direction, Speed, Transfer, TransferKind, TransferStatus, UsbDevice};

pub const EP_IN: u8 = ch9::EP_DIR_IN | 1;

/// Reports waiting beyond this many are dropped (a guest that does not
/// read its keyboard must not make the host queue grow).
const MAX_QUEUED: usize = 64;

#[derive(Debug, Default)]
struct Keys {
    modifiers: u8,
    down: Vec<u8>,
    reports: VecDeque<[u8; hid::BOOT_REPORT_LEN]>,
    dropped: u64,
    /// When the guest set a configuration (a [`CONFIGURATIONS`] count),
    /// 0 while it has not: reports are queued only when configured, and
    /// the latest configured keyboard takes the console's keys
    /// ([`InputSink::key_claim`]).
    configured: u64,
}

/// Counts configurations of every USB keyboard of the process, so the
/// console can tell which one the guest readied last.
static CONFIGURATIONS: AtomicU64 = AtomicU64::new(0);

impl Keys {
    fn report(&self) -> [u8; hid::BOOT_REPORT_LEN] {
        let mut r = [0u8; hid::BOOT_REPORT_LEN];
        r[0] = self.modifiers;
        if self.down.len() > hid::MAX_KEYS {
            r[2..].fill(hid::USAGE_ROLLOVER);
        } else {
            r[2..2 + self.down.len()].copy_from_slice(&self.down);
        }
        r
    }
}

/// HID usages (Keyboard/Keypad page, HID Usage Tables 1.12 section 10) of
/// the keys with one-byte scan code set 1 make codes, indexed by the code.
#[rustfmt::skip]
const USAGE_OF_SET1: [u8; 0x59] = [
    // 0x00: none, Esc, 1-0, -, =, Backspace, Tab
    0x00, 0x29, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2d, 0x2e, 0x2a, 0x2b,
    // 0x10: q w e r t y u i o p [ ] Enter LCtrl a s
    0x14, 0x1a, 0x08, 0x15, 0x17, 0x1c, 0x18, 0x0c, 0x12, 0x13, 0x2f, 0x30, 0x28, 0xe0, 0x04, 0x16,
    // 0x20: d f g h j k l ; ' ` LShift \ z x c v
    0x07, 0x09, 0x0a, 0x0b, 0x0d, 0x0e, 0x0f, 0x33, 0x34, 0x35, 0xe1, 0x31, 0x1d, 0x1b, 0x06, 0x19,
    // 0x30: b n m , . / RShift KP* LAlt Space Caps F1-F5
    0x05, 0x11, 0x10, 0x36, 0x37, 0x38, 0xe5, 0x55, 0xe2, 0x2c, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e,
    // 0x40: F6-F10 NumLock ScrollLock KP7 KP8 KP9 KP- KP4 KP5 KP6 KP+ KP1
    0x3f, 0x40, 0x41, 0x42, 0x43, 0x53, 0x47, 0x5f, 0x60, 0x61, 0x56, 0x5c, 0x5d, 0x5e, 0x57, 0x59,
    // 0x50: KP2 KP3 KP0 KP. (0x54, 0x55 none) 102nd key F11 F12
    0x5a, 0x5b, 0x62, 0x63, 0x00, 0x00, 0x64, 0x44, 0x45,
];

/// The same for the keys set 1 sends with an 0xE0 prefix.
const USAGE_OF_SET1_E0: [(u8, u8); 18] = [
    (0x1c, 0x58), // keypad Enter
    (0x1d, 0xe4), // right Ctrl
    (0x35, 0x54), // keypad /
    (0x37, 0x46), // Print Screen
    (0x38, 0xe6), // right Alt
    (0x47, 0x4a), // Home
    (0x48, 0x52), // Up
    (0x49, 0x4b), // Page Up
    (0x4b, 0x50), // Left
    (0x4d, 0x4f), // Right
    (0x4f, 0x4d), // End
    (0x50, 0x51), // Down
    (0x51, 0x4e), // Page Down
    (0x52, 0x49), // Insert
    (0x53, 0x4c), // Delete
    (0x5b, 0xe3), // left GUI
    (0x5c, 0xe7), // right GUI
    (0x5d, 0x65), // Application (menu)
];

/// The HID usage of a key named by its set 1 scan code, if the boot
/// keyboard has it.
pub fn usage_of(key: Key) -> Option<u8> {
    let code = (key.0 & 0xff) as u8;
    let usage = match key.0 >> 8 {
        0 => USAGE_OF_SET1.get(usize::from(code)).copied(),
        0xe0 => USAGE_OF_SET1_E0
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, u)| *u),
        0xe1 if code == 0x1d => Some(0x48), // Pause
        _ => None,
    };
    usage.filter(|&u| u != 0)
}

impl InputSink for KeyboardHandle {
    fn key(&self, key: Key, down: bool) {
        match usage_of(key) {
            Some(usage) => KeyboardHandle::key(self, usage, down),
            None => tracing::debug!(?key, "USB keyboard: no HID usage for this key"),
        }
    }

    fn key_claim(&self) -> u64 {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .configured
    }

    /// A keyboard has no pointer.
    fn pointer(&self, _dx: i32, _dy: i32, _buttons: u8) {}
}

/// The host's side of a keyboard: presses and releases keys by HID usage.
#[derive(Debug, Clone, Default)]
pub struct KeyboardHandle {
    keys: Arc<Mutex<Keys>>,
}

impl KeyboardHandle {
    /// Presses (`down`) or releases the key with HID usage ID `usage`
    /// (Keyboard/Keypad page); E0-E7 are the modifiers.
    pub fn key(&self, usage: u8, down: bool) {
        let mut k = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if (hid::USAGE_LEFT_CONTROL..=hid::USAGE_RIGHT_GUI).contains(&usage) {
            let bit = 1 << (usage - hid::USAGE_LEFT_CONTROL);
            if down {
                k.modifiers |= bit;
            } else {
                k.modifiers &= !bit;
            }
        } else if down {
            if !k.down.contains(&usage) && k.down.len() < 32 {
                k.down.push(usage);
            }
        } else {
            k.down.retain(|&u| u != usage);
        }
        // An unconfigured keyboard reports nothing: keys typed before the
        // guest drives it are not replayed later.
        if k.configured == 0 {
            return;
        }
        let r = k.report();
        if k.reports.len() >= MAX_QUEUED {
            k.dropped += 1;
            return;
        }
        k.reports.push_back(r);
    }

    /// The guest set (or cleared, or reset) the configuration: reports
    /// from before are dropped.
    fn set_configured(&self, configured: bool) {
        let mut k = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if (k.configured != 0) != configured {
            k.configured = if configured {
                CONFIGURATIONS.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                0
            };
            k.reports.clear();
        }
    }

    /// Reports waiting for the guest.
    pub fn queued(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reports
            .len()
    }
}

pub struct UsbKeyboard {
    keys: KeyboardHandle,
    info: DeviceInfo,
    state: DeviceState,
    speed: Speed,
    boot_protocol: bool,
    idle: u8,
    leds: u8,
}

impl UsbKeyboard {
    pub fn new(keys: KeyboardHandle) -> Self {
        let mut hid_desc = vec![hid::HID_DESCRIPTOR_LEN as u8, ch9::DT_HID];
        hid_desc.extend_from_slice(&hid::HID_VERSION.to_le_bytes());
        hid_desc.extend_from_slice(&[0, 1, ch9::DT_HID_REPORT]);
        hid_desc.extend_from_slice(&(hid::REPORT_DESCRIPTOR.len() as u16).to_le_bytes());
        let info = DeviceInfo {
            usb_version: 0x0110,
            vendor: 0x46f4,
            product: 0x0002,
            release: 0x0100,
            max_packet0: 8,
            manufacturer: "rehost".into(),
            product_name: "rehost USB keyboard".into(),
            serial: "1".into(),
            max_power: 50,
            remote_wakeup: true,
            interfaces: vec![InterfaceInfo {
                class: hid::CLASS_HID,
                subclass: hid::SUBCLASS_BOOT,
                protocol: hid::PROTOCOL_KEYBOARD,
                class_descriptors: hid_desc,
                endpoints: vec![EndpointInfo {
                    address: EP_IN,
                    attributes: ch9::EP_INTERRUPT,
                    max_packet: hid::BOOT_REPORT_LEN as u16,
                    interval: 10,
                }],
            }],
        };
        Self {
            keys,
            info,
            state: DeviceState::default(),
            speed: Speed::Full,
            boot_protocol: false,
            idle: 0,
            leds: 0,
        }
    }

    /// The LED state the guest last set (bit 0 Num Lock, 1 Caps Lock,
    /// 2 Scroll Lock).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    fn control(&mut self, t: &Transfer, setup: &super::Setup, done: Completer) {
        // GET_DESCRIPTOR of the report or HID descriptor: interface
        // recipient, standard type (HID 7.1.1).
        let [_, dtype] = setup.value.to_le_bytes();
        if setup.request == ch9::GET_DESCRIPTOR
            && setup.request_type == ch9::REQ_DIR_IN | ch9::REQ_RECIPIENT_INTERFACE
        {
            let mut d = match dtype {
                ch9::DT_HID_REPORT => hid::REPORT_DESCRIPTOR.to_vec(),
                ch9::DT_HID => self.info.interfaces[0].class_descriptors.clone(),
                _ => return done.fail(TransferStatus::Stall),
            };
            d.truncate(usize::from(setup.length));
            return done.data_in(d);
        }
        if let Some(a) = device::standard_request(&self.info, &mut self.state, setup, self.speed) {
            self.keys.set_configured(self.state.configuration != 0);
            return device::complete_control(done, a);
        }
        if setup.request_type & ch9::REQ_TYPE_MASK != ch9::REQ_TYPE_CLASS {
            return done.fail(TransferStatus::Stall);
        }
        match (setup.request, setup.direction()) {
            (hid::GET_REPORT, Direction::In) => {
                let r = self
                    .keys
                    .keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .report();
                let mut v = r.to_vec();
                v.truncate(usize::from(setup.length));
                done.data_in(v);
            }
            (hid::SET_REPORT, Direction::Out) => {
                if let Some(&l) = t.data.first() {
                    self.leds = l;
                }
                done.done_out(t.data.len());
            }
            (hid::GET_IDLE, Direction::In) => done.data_in(vec![self.idle]),
            (hid::SET_IDLE, Direction::Out) => {
                self.idle = (setup.value >> 8) as u8;
                done.done_out(0);
            }
            (hid::GET_PROTOCOL, Direction::In) => done.data_in(vec![u8::from(!self.boot_protocol)]),
            (hid::SET_PROTOCOL, Direction::Out) => {
                self.boot_protocol = setup.value == 0;
                done.done_out(0);
            }
            _ => done.fail(TransferStatus::Stall),
        }
    }
}

impl UsbDevice for UsbKeyboard {
    fn name(&self) -> &str {
        "usb-kbd"
    }

    fn speed(&self, max: Speed) -> Speed {
        max.min(Speed::Full)
    }

    fn reset(&mut self, speed: Speed) {
        self.speed = speed;
        self.state = DeviceState::default();
        self.keys.set_configured(false);
        self.boot_protocol = false;
        self.idle = 0;
    }

    fn submit(&mut self, t: Transfer, done: Completer) {
        match t.kind {
            TransferKind::Control(setup) => self.control(&t, &setup, done),
            TransferKind::Interrupt | TransferKind::Bulk
                if t.endpoint == EP_IN & 0x0f && t.direction == Direction::In =>
            {
                if self.state.configuration == 0 || self.state.is_halted(EP_IN) {
                    return done.fail(TransferStatus::Stall);
                }
                let next = self
                    .keys
                    .keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .reports
                    .pop_front();
                match next {
                    Some(r) => {
                        let mut v = r.to_vec();
                        v.truncate(t.length);
                        done.data_in(v)
                    }
                    None => done.fail(TransferStatus::Nak),
                }
            }
            _ => done.fail(TransferStatus::Stall),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usb::{CompletionQueue, Setup};

    #[test]
    fn set1_keys_map_to_their_hid_usages() {
        // Letters, digits, Enter, modifiers, an extended key and Pause.
        for (code, usage) in [
            (0x1e, 0x04),   // a
            (0x2c, 0x1d),   // z
            (0x10, 0x14),   // q
            (0x0b, 0x27),   // 0
            (0x1c, 0x28),   // Enter
            (0x39, 0x2c),   // Space
            (0x2a, 0xe1),   // left Shift
            (0x58, 0x45),   // F12
            (0xe01d, 0xe4), // right Ctrl
            (0xe048, 0x52), // Up
            (0xe11d, 0x48), // Pause
        ] {
            assert_eq!(usage_of(Key(code)), Some(usage), "{code:#x}");
        }
        for code in [0x00, 0x54, 0x59, 0xff, 0xe001, 0xe11e, 0x1234] {
            assert_eq!(usage_of(Key(code)), None, "{code:#x}");
        }
        // No two keys share a usage.
        let mut seen = std::collections::HashSet::new();
        for code in (0..0x100u16).chain(0xe000..0xe100).chain([0xe11d]) {
            if let Some(u) = usage_of(Key(code)) {
                assert!(seen.insert(u), "usage {u:#x} twice ({code:#x})");
            }
        }
        assert_eq!(seen.len(), 0x57 - 1 + 18 + 1);
    }

    #[test]
    fn console_keys_become_boot_reports() {
        let k = KeyboardHandle::default();
        k.set_configured(true);
        let sink: &dyn InputSink = &k;
        sink.key(Key(0x2a), true); // left Shift
        sink.key(Key(0x1e), true); // a
        sink.key(Key(0x1e), false);
        sink.key(Key(0x2a), false);
        sink.key(Key(0x54), true); // no such key: nothing queued
        let keys = k.keys.lock().unwrap();
        let r: Vec<_> = keys.reports.iter().map(|r| (r[0], r[2])).collect();
        assert_eq!(r, vec![(0x02, 0), (0x02, 0x04), (0x02, 0), (0, 0)]);
    }

    fn go(k: &mut UsbKeyboard, t: Transfer) -> (TransferStatus, Vec<u8>) {
        let q = CompletionQueue::new();
        k.submit(t, Completer::new(7, q.clone()));
        let c = q.drain().pop().unwrap();
        (c.status, c.data)
    }

    fn control(
        k: &mut UsbKeyboard,
        rt: u8,
        req: u8,
        value: u16,
        len: u16,
    ) -> (TransferStatus, Vec<u8>) {
        let setup = Setup {
            request_type: rt,
            request: req,
            value,
            index: 0,
            length: len,
        };
        go(
            k,
            Transfer {
                kind: TransferKind::Control(setup),
                endpoint: 0,
                direction: setup.direction(),
                data: vec![],
                length: usize::from(len),
            },
        )
    }

    fn interrupt(k: &mut UsbKeyboard) -> (TransferStatus, Vec<u8>) {
        go(
            k,
            Transfer {
                kind: TransferKind::Interrupt,
                endpoint: 1,
                direction: Direction::In,
                data: vec![],
                length: 8,
            },
        )
    }

    #[test]
    fn keys_become_boot_reports_and_idle_is_nak() {
        let h = KeyboardHandle::default();
        let mut k = UsbKeyboard::new(h.clone());
        k.reset(Speed::Full);
        // Not configured: the endpoint does not answer, keys are dropped.
        h.key(0x04, true);
        h.key(0x04, false);
        assert_eq!(h.queued(), 0);
        assert_eq!(InputSink::key_claim(&h), 0);
        assert_eq!(interrupt(&mut k).0, TransferStatus::Stall);
        assert_eq!(
            control(&mut k, 0, ch9::SET_CONFIGURATION, 1, 0).0,
            TransferStatus::Success
        );
        assert_eq!(
            control(&mut k, 0x21, hid::SET_PROTOCOL, 0, 0).0,
            TransferStatus::Success
        );
        assert_eq!(interrupt(&mut k).0, TransferStatus::Nak);
        h.key(0xe1, true); // left shift
        h.key(0x04, true); // a
        h.key(0x04, false);
        h.key(0xe1, false);
        assert_eq!(
            interrupt(&mut k),
            (TransferStatus::Success, vec![2, 0, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(
            interrupt(&mut k),
            (TransferStatus::Success, vec![2, 0, 4, 0, 0, 0, 0, 0])
        );
        assert_eq!(
            interrupt(&mut k),
            (TransferStatus::Success, vec![2, 0, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(interrupt(&mut k), (TransferStatus::Success, vec![0; 8]));
        assert_eq!(interrupt(&mut k).0, TransferStatus::Nak);
        // Configured, the keyboard claims the console's keys; reset by the
        // guest, it lets them go and drops what it had queued.
        assert_ne!(InputSink::key_claim(&h), 0);
        h.key(0x05, true);
        k.reset(Speed::Full);
        assert_eq!(InputSink::key_claim(&h), 0);
        assert_eq!(h.queued(), 0);
        h.key(0x05, false);
        h.key(0x06, true);
        assert_eq!(h.queued(), 0, "an unconfigured keyboard queued reports");
        assert_eq!(
            control(&mut k, 0, ch9::SET_CONFIGURATION, 1, 0).0,
            TransferStatus::Success
        );
        assert_eq!(interrupt(&mut k).0, TransferStatus::Nak);
        h.key(0x06, false);
        assert_eq!(interrupt(&mut k), (TransferStatus::Success, vec![0; 8]));
        // The report descriptor is an interface GET_DESCRIPTOR.
        let (s, d) = control(&mut k, 0x81, ch9::GET_DESCRIPTOR, 0x2200, 255);
        assert_eq!(s, TransferStatus::Success);
        assert_eq!(d, hid::REPORT_DESCRIPTOR);
        // The queue is bounded.
        for _ in 0..200 {
            h.key(0x05, true);
            h.key(0x05, false);
        }
        assert_eq!(h.queued(), MAX_QUEUED);
        // Seven keys at once: rollover.
        let h2 = KeyboardHandle::default();
        for u in 4..11 {
            h2.key(u, true);
        }
        let last = h2.keys.lock().unwrap().report();
        assert_eq!(&last[2..], &[1; 6]);
    }
}
