//! What every emulated device shares: its descriptors (USB 2.0 9.6) and
//! the standard requests on the default pipe (USB 2.0 9.4), with the
//! configuration and the halt feature of each endpoint.

use super::usb_spec as ch9;
use super::{Completer, Setup, Speed, TransferStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// bEndpointAddress: number, with [`ch9::EP_DIR_IN`] for IN.
    pub address: u8,
    /// bmAttributes: transfer type.
    pub attributes: u8,
    pub max_packet: u16,
    pub interval: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    /// Class-specific descriptors between the interface and its endpoints
    /// (the HID descriptor).
    pub class_descriptors: Vec<u8>,
    pub endpoints: Vec<EndpointInfo>,
}

/// The descriptors of a device with one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// bcdUSB.
    pub usb_version: u16,
    pub vendor: u16,
    pub product: u16,
    pub release: u16,
    pub max_packet0: u8,
    pub manufacturer: String,
    pub product_name: String,
    pub serial: String,
    /// bMaxPower in 2 mA units.
    pub max_power: u8,
    pub remote_wakeup: bool,
    pub interfaces: Vec<InterfaceInfo>,
}

const STRING_MANUFACTURER: u8 = 1;
const STRING_PRODUCT: u8 = 2;
const STRING_SERIAL: u8 = 3;

impl DeviceInfo {
    /// The device descriptor (9.6.1, table 9-8).
    pub fn device_descriptor(&self) -> Vec<u8> {
        let mut d = vec![ch9::DEVICE_DESCRIPTOR_LEN as u8, ch9::DT_DEVICE];
        d.extend_from_slice(&self.usb_version.to_le_bytes());
        // Class, subclass, protocol: given per interface.
        d.extend_from_slice(&[0, 0, 0, self.max_packet0]);
        d.extend_from_slice(&self.vendor.to_le_bytes());
        d.extend_from_slice(&self.product.to_le_bytes());
        d.extend_from_slice(&self.release.to_le_bytes());
        d.extend_from_slice(&[STRING_MANUFACTURER, STRING_PRODUCT, STRING_SERIAL, 1]);
        d
    }

    /// The configuration descriptor with its interfaces and endpoints
    /// (9.6.3, 9.6.5, 9.6.6).
    pub fn config_descriptor(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (n, i) in self.interfaces.iter().enumerate() {
            body.extend_from_slice(&[
                ch9::INTERFACE_DESCRIPTOR_LEN as u8,
                ch9::DT_INTERFACE,
                n as u8,
                0,
                i.endpoints.len() as u8,
                i.class,
                i.subclass,
                i.protocol,
                0,
            ]);
            body.extend_from_slice(&i.class_descriptors);
            for e in &i.endpoints {
                body.extend_from_slice(&[
                    ch9::ENDPOINT_DESCRIPTOR_LEN as u8,
                    ch9::DT_ENDPOINT,
                    e.address,
                    e.attributes,
                ]);
                body.extend_from_slice(&e.max_packet.to_le_bytes());
                body.push(e.interval);
            }
        }
        let total = (ch9::CONFIG_DESCRIPTOR_LEN + body.len()) as u16;
        let mut d = vec![ch9::CONFIG_DESCRIPTOR_LEN as u8, ch9::DT_CONFIGURATION];
        d.extend_from_slice(&total.to_le_bytes());
        d.extend_from_slice(&[
            self.interfaces.len() as u8,
            1,
            0,
            ch9::CONFIG_ATTR_RESERVED
                | if self.remote_wakeup {
                    ch9::CONFIG_ATTR_REMOTE_WAKEUP
                } else {
                    0
                },
            self.max_power,
        ]);
        d.extend_from_slice(&body);
        d
    }

    /// String descriptor `index` (9.6.7): 0 lists the languages.
    pub fn string_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        let text = match index {
            0 => {
                let l = ch9::LANGID_EN_US.to_le_bytes();
                return Some(vec![4, ch9::DT_STRING, l[0], l[1]]);
            }
            STRING_MANUFACTURER => &self.manufacturer,
            STRING_PRODUCT => &self.product_name,
            STRING_SERIAL => &self.serial,
            _ => return None,
        };
        let units: Vec<u16> = text.encode_utf16().take(126).collect();
        let mut d = vec![(2 + 2 * units.len()) as u8, ch9::DT_STRING];
        for u in units {
            d.extend_from_slice(&u.to_le_bytes());
        }
        Some(d)
    }

    fn endpoint(&self, address: u8) -> Option<&EndpointInfo> {
        self.interfaces
            .iter()
            .flat_map(|i| i.endpoints.iter())
            .find(|e| e.address == address)
    }
}

/// Standard-request state: the configuration and the halted endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub configuration: u8,
    /// Bit n: OUT endpoint n halted; bit 16 + n: IN endpoint n.
    pub halted: u32,
    pub remote_wakeup: bool,
}

fn halt_bit(address: u8) -> u32 {
    let n = u32::from(address & 0x0f);
    if address & ch9::EP_DIR_IN != 0 {
        1 << (16 + n)
    } else {
        1 << n
    }
}

impl DeviceState {
    pub fn is_halted(&self, address: u8) -> bool {
        self.halted & halt_bit(address) != 0
    }

    /// The device halts an endpoint (a failed command, BOT 6.6).
    pub fn halt(&mut self, address: u8) {
        self.halted |= halt_bit(address);
    }
}

/// The answer to a control request.
pub type ControlAnswer = Result<Vec<u8>, TransferStatus>;

/// Answers a standard request, or `None` when it is not one (class and
/// vendor requests, and GET_DESCRIPTOR of a class descriptor, are the
/// device's).
pub fn standard_request(
    info: &DeviceInfo,
    state: &mut DeviceState,
    setup: &Setup,
    speed: Speed,
) -> Option<ControlAnswer> {
    if setup.request_type & ch9::REQ_TYPE_MASK != ch9::REQ_TYPE_STANDARD {
        return None;
    }
    let recipient = setup.request_type & ch9::REQ_RECIPIENT_MASK;
    let stall = Some(Err(TransferStatus::Stall));
    let answer = |v: Vec<u8>| {
        let mut v = v;
        v.truncate(usize::from(setup.length));
        Some(Ok(v))
    };
    match (setup.request, recipient) {
        (ch9::GET_DESCRIPTOR, ch9::REQ_RECIPIENT_DEVICE) => {
            let [index, kind] = setup.value.to_le_bytes();
            match kind {
                ch9::DT_DEVICE => answer(info.device_descriptor()),
                ch9::DT_CONFIGURATION if index == 0 => answer(info.config_descriptor()),
                ch9::DT_STRING => match info.string_descriptor(index) {
                    Some(d) => answer(d),
                    None => stall,
                },
                // A full-speed-only device has no qualifier (9.6.2); a
                // high-speed one runs at one speed here.
                ch9::DT_DEVICE_QUALIFIER if speed == Speed::High => {
                    let mut q = vec![
                        ch9::QUALIFIER_DESCRIPTOR_LEN as u8,
                        ch9::DT_DEVICE_QUALIFIER,
                    ];
                    q.extend_from_slice(&info.usb_version.to_le_bytes());
                    q.extend_from_slice(&[0, 0, 0, info.max_packet0, 1, 0]);
                    answer(q)
                }
                _ => stall,
            }
        }
        (ch9::GET_DESCRIPTOR, _) => None,
        (ch9::GET_CONFIGURATION, ch9::REQ_RECIPIENT_DEVICE) => answer(vec![state.configuration]),
        (ch9::SET_CONFIGURATION, ch9::REQ_RECIPIENT_DEVICE) => match setup.value {
            0 | 1 => {
                state.configuration = setup.value as u8;
                state.halted = 0;
                Some(Ok(Vec::new()))
            }
            _ => stall,
        },
        (ch9::GET_STATUS, ch9::REQ_RECIPIENT_DEVICE) => {
            answer(vec![if state.remote_wakeup { 2 } else { 0 }, 0])
        }
        (ch9::GET_STATUS, ch9::REQ_RECIPIENT_INTERFACE) => answer(vec![0, 0]),
        (ch9::GET_STATUS, ch9::REQ_RECIPIENT_ENDPOINT) => {
            let ep = setup.index as u8;
            if ep & 0x0f != 0 && info.endpoint(ep).is_none() {
                return stall;
            }
            answer(vec![u8::from(state.is_halted(ep)), 0])
        }
        (ch9::CLEAR_FEATURE | ch9::SET_FEATURE, ch9::REQ_RECIPIENT_ENDPOINT)
            if setup.value == ch9::FEATURE_ENDPOINT_HALT =>
        {
            let ep = setup.index as u8;
            if ep & 0x0f == 0 {
                return Some(Ok(Vec::new()));
            }
            if info.endpoint(ep).is_none() {
                return stall;
            }
            if setup.request == ch9::SET_FEATURE {
                state.halt(ep);
            } else {
                state.halted &= !halt_bit(ep);
            }
            Some(Ok(Vec::new()))
        }
        (ch9::CLEAR_FEATURE | ch9::SET_FEATURE, ch9::REQ_RECIPIENT_DEVICE)
            if setup.value == ch9::FEATURE_DEVICE_REMOTE_WAKEUP =>
        {
            state.remote_wakeup = setup.request == ch9::SET_FEATURE;
            Some(Ok(Vec::new()))
        }
        (ch9::GET_INTERFACE, ch9::REQ_RECIPIENT_INTERFACE)
            if usize::from(setup.index) < info.interfaces.len() =>
        {
            answer(vec![0])
        }
        (ch9::SET_INTERFACE, ch9::REQ_RECIPIENT_INTERFACE)
            if usize::from(setup.index) < info.interfaces.len() && setup.value == 0 =>
        {
            Some(Ok(Vec::new()))
        }
        _ => stall,
    }
}

/// Completes a control transfer with `answer`.
pub fn complete_control(done: Completer, answer: ControlAnswer) {
    match answer {
        Ok(data) => done.data_in(data),
        Err(status) => done.fail(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeviceInfo {
        let disk = std::sync::Arc::new(crate::storage::testing::MemDisk::new(1 << 20));
        let d = crate::usb::storage::UsbStorage::new(disk, false, "1");
        d.descriptors().clone()
    }

    fn setup(rt: u8, req: u8, value: u16, index: u16, length: u16) -> Setup {
        Setup {
            request_type: rt,
            request: req,
            value,
            index,
            length,
        }
    }

    #[test]
    fn descriptors_follow_chapter_9() {
        let i = info();
        let d = i.device_descriptor();
        assert_eq!(d.len(), 18);
        assert_eq!(&d[8..10], &0x46f4u16.to_le_bytes());
        let c = i.config_descriptor();
        assert_eq!(usize::from(u16::from_le_bytes([c[2], c[3]])), c.len());
        assert_eq!(c.len(), 9 + 9 + 7 + 7);
        assert_eq!(c[9 + 9 + 2], 0x81);
        let s = i.string_descriptor(3).unwrap();
        assert_eq!(s, vec![4, 3, b'1', 0]);
        assert_eq!(i.string_descriptor(9), None);
    }

    #[test]
    fn standard_requests_truncate_stall_and_halt() {
        let i = info();
        let mut st = DeviceState::default();
        let r = standard_request(&i, &mut st, &setup(0x80, 6, 0x0100, 0, 8), Speed::Full);
        assert_eq!(r.unwrap().unwrap().len(), 8);
        let r = standard_request(&i, &mut st, &setup(0x80, 6, 0x0600, 0, 10), Speed::Full);
        assert_eq!(r, Some(Err(TransferStatus::Stall)));
        standard_request(&i, &mut st, &setup(0, 9, 1, 0, 0), Speed::Full);
        assert_eq!(st.configuration, 1);
        assert_eq!(
            standard_request(&i, &mut st, &setup(0, 9, 7, 0, 0), Speed::Full),
            Some(Err(TransferStatus::Stall))
        );
        st.halt(0x81);
        let r = standard_request(&i, &mut st, &setup(0x82, 0, 0, 0x81, 2), Speed::Full);
        assert_eq!(r, Some(Ok(vec![1, 0])));
        standard_request(&i, &mut st, &setup(0x02, 1, 0, 0x81, 0), Speed::Full);
        assert!(!st.is_halted(0x81));
        // An endpoint the device does not have.
        assert_eq!(
            standard_request(&i, &mut st, &setup(0x02, 1, 0, 0x05, 0), Speed::Full),
            Some(Err(TransferStatus::Stall))
        );
        // Class requests are not standard.
        assert_eq!(
            standard_request(&i, &mut st, &setup(0xa1, 0xfe, 0, 0, 1), Speed::Full),
            None
        );
    }
}
