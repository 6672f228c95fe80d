//! A HID boot keyboard (HID 1.11, appendix B.1): one interface (class
//! 03/01/01) with an interrupt IN endpoint carrying 8-byte boot reports.
//! Key presses and releases come from the host ([`KeyboardHandle`], for
//! the control socket's `send-key`) and queue up as reports; an interrupt
//! IN with no new report is NAKed, as a keyboard does when nothing
//! changed (idle rate 0).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

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
}

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
        let r = k.report();
        if k.reports.len() >= MAX_QUEUED {
            k.dropped += 1;
            return;
        }
        k.reports.push_back(r);
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
        // Not configured: the endpoint does not answer.
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
