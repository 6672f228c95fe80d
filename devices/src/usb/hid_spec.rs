//! HID boot keyboard (Device Class Definition for HID 1.11): the class
//! requests (7.2), the boot interface subclass and protocol (4.2, 4.3)
//! and the keyboard boot report (appendix B.1).

pub const CLASS_HID: u8 = 0x03;
pub const SUBCLASS_BOOT: u8 = 0x01;
pub const PROTOCOL_KEYBOARD: u8 = 0x01;

/// Class requests (7.2, table 7.2).
pub const GET_REPORT: u8 = 0x01;
pub const GET_IDLE: u8 = 0x02;
pub const GET_PROTOCOL: u8 = 0x03;
pub const SET_REPORT: u8 = 0x09;
pub const SET_IDLE: u8 = 0x0a;
pub const SET_PROTOCOL: u8 = 0x0b;

/// The HID descriptor (6.2.1): 9 bytes, one report descriptor.
pub const HID_DESCRIPTOR_LEN: usize = 9;
pub const HID_VERSION: u16 = 0x0111;

/// The boot keyboard input report: modifiers, reserved, six key codes.
pub const BOOT_REPORT_LEN: usize = 8;
pub const MAX_KEYS: usize = 6;
/// Usage IDs E0-E7 are the modifier keys (HID Usage Tables 1.12, 10).
pub const USAGE_LEFT_CONTROL: u8 = 0xe0;
pub const USAGE_RIGHT_GUI: u8 = 0xe7;
/// "ErrorRollOver": more keys down than the report holds.
pub const USAGE_ROLLOVER: u8 = 0x01;

/// The report descriptor of a boot keyboard (the layout of appendix B.1:
/// 8 modifier bits, a reserved byte, 5 LED bits out and padding, 6 key
/// array bytes), written out item by item (6.2.2).
pub const REPORT_DESCRIPTOR: &[u8] = &[
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x06, // Usage (Keyboard)
    0xa1, 0x01, // Collection (Application)
    0x05, 0x07, //   Usage Page (Key Codes)
    0x19, 0xe0, //   Usage Minimum (224)
    0x29, 0xe7, //   Usage Maximum (231)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x01, //   Logical Maximum (1)
    0x75, 0x01, //   Report Size (1)
    0x95, 0x08, //   Report Count (8)
    0x81, 0x02, //   Input (Data, Variable, Absolute): modifiers
    0x95, 0x01, //   Report Count (1)
    0x75, 0x08, //   Report Size (8)
    0x81, 0x01, //   Input (Constant): reserved byte
    0x95, 0x05, //   Report Count (5)
    0x75, 0x01, //   Report Size (1)
    0x05, 0x08, //   Usage Page (LEDs)
    0x19, 0x01, //   Usage Minimum (1)
    0x29, 0x05, //   Usage Maximum (5)
    0x91, 0x02, //   Output (Data, Variable, Absolute): LEDs
    0x95, 0x01, //   Report Count (1)
    0x75, 0x03, //   Report Size (3)
    0x91, 0x01, //   Output (Constant): padding
    0x95, 0x06, //   Report Count (6)
    0x75, 0x08, //   Report Size (8)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x65, //   Logical Maximum (101)
    0x05, 0x07, //   Usage Page (Key Codes)
    0x19, 0x00, //   Usage Minimum (0)
    0x29, 0x65, //   Usage Maximum (101)
    0x81, 0x00, //   Input (Data, Array): keys
    0xc0, // End Collection
];
