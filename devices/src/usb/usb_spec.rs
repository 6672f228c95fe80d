//! USB 2.0 framework constants (Universal Serial Bus Specification
//! Revision 2.0, chapter 9 "USB Device Framework").

/// Token packet identifiers (USB 2.0 8.3.1, table 8-1).
pub const PID_OUT: u8 = 0xe1;
pub const PID_IN: u8 = 0x69;
pub const PID_SETUP: u8 = 0x2d;

/// bmRequestType (9.3.1, table 9-2).
pub const REQ_DIR_IN: u8 = 0x80;
pub const REQ_TYPE_MASK: u8 = 0x60;
pub const REQ_TYPE_STANDARD: u8 = 0x00;
pub const REQ_TYPE_CLASS: u8 = 0x20;
pub const REQ_RECIPIENT_MASK: u8 = 0x1f;
pub const REQ_RECIPIENT_DEVICE: u8 = 0x00;
pub const REQ_RECIPIENT_INTERFACE: u8 = 0x01;
pub const REQ_RECIPIENT_ENDPOINT: u8 = 0x02;

/// Standard request codes (9.4, table 9-4).
pub const GET_STATUS: u8 = 0;
pub const CLEAR_FEATURE: u8 = 1;
pub const SET_FEATURE: u8 = 3;
pub const SET_ADDRESS: u8 = 5;
pub const GET_DESCRIPTOR: u8 = 6;
pub const SET_DESCRIPTOR: u8 = 7;
pub const GET_CONFIGURATION: u8 = 8;
pub const SET_CONFIGURATION: u8 = 9;
pub const GET_INTERFACE: u8 = 10;
pub const SET_INTERFACE: u8 = 11;

/// Feature selectors (9.4, table 9-6).
pub const FEATURE_ENDPOINT_HALT: u16 = 0;
pub const FEATURE_DEVICE_REMOTE_WAKEUP: u16 = 1;

/// Descriptor types (9.4, table 9-5).
pub const DT_DEVICE: u8 = 1;
pub const DT_CONFIGURATION: u8 = 2;
pub const DT_STRING: u8 = 3;
pub const DT_INTERFACE: u8 = 4;
pub const DT_ENDPOINT: u8 = 5;
pub const DT_DEVICE_QUALIFIER: u8 = 6;
/// HID class descriptors (HID 1.11, 7.1).
pub const DT_HID: u8 = 0x21;
pub const DT_HID_REPORT: u8 = 0x22;

/// Descriptor lengths (9.6.1, 9.6.3, 9.6.5, 9.6.6).
pub const DEVICE_DESCRIPTOR_LEN: usize = 18;
pub const CONFIG_DESCRIPTOR_LEN: usize = 9;
pub const INTERFACE_DESCRIPTOR_LEN: usize = 9;
pub const ENDPOINT_DESCRIPTOR_LEN: usize = 7;
pub const QUALIFIER_DESCRIPTOR_LEN: usize = 10;

/// bmAttributes of an endpoint (9.6.6, table 9-13).
pub const EP_CONTROL: u8 = 0;
pub const EP_BULK: u8 = 2;
pub const EP_INTERRUPT: u8 = 3;
/// bEndpointAddress direction bit.
pub const EP_DIR_IN: u8 = 0x80;

/// bmAttributes of a configuration: bit 7 reserved (set), self powered,
/// remote wakeup (9.6.3).
pub const CONFIG_ATTR_RESERVED: u8 = 0x80;
pub const CONFIG_ATTR_REMOTE_WAKEUP: u8 = 0x20;

/// The first string descriptor holds the supported LANGIDs (9.6.7);
/// 0x0409 is US English.
pub const LANGID_EN_US: u16 = 0x0409;

/// The length of a SETUP packet's data (9.3).
pub const SETUP_LEN: usize = 8;
