//! RFC 2217 "Telnet Com Port Control Option": the guest's line settings
//! and modem lines carried to a network COM port server (ser2net, a
//! terminal server), its notifications carried back. The wire layout is in
//! the first half of this file, the client state machine in the second. No
//! I/O: the port loop feeds bytes in and writes the bytes it gets back.
//!
//! Negotiation (RFC 2217 section 1): the client sends WILL COM-PORT-OPTION
//! and may use the commands once the server answers DO. rehost also asks
//! for BINARY both ways (RFC 856) and SGA, and refuses everything else.

use rehost_devices::serial::{LineParams, ModemControl, ModemStatus, Parity};

use super::telnet::{self, option, Item, Negotiator, OptionChange, Parser, Verb};

// Command codes, client to server (section 2); the server answers with
// the code plus `SERVER`.
pub const SIGNATURE: u8 = 0;
pub const SET_BAUDRATE: u8 = 1;
pub const SET_DATASIZE: u8 = 2;
pub const SET_PARITY: u8 = 3;
pub const SET_STOPSIZE: u8 = 4;
pub const SET_CONTROL: u8 = 5;
pub const NOTIFY_LINESTATE: u8 = 6;
pub const NOTIFY_MODEMSTATE: u8 = 7;
pub const FLOWCONTROL_SUSPEND: u8 = 8;
pub const FLOWCONTROL_RESUME: u8 = 9;
pub const SET_LINESTATE_MASK: u8 = 10;
pub const SET_MODEMSTATE_MASK: u8 = 11;
pub const PURGE_DATA: u8 = 12;
pub const SERVER: u8 = 100;

// SET-CONTROL values (section 3).
pub const CONTROL_NO_FLOW_CONTROL: u8 = 1;
pub const CONTROL_BREAK_ON: u8 = 5;
pub const CONTROL_BREAK_OFF: u8 = 6;
pub const CONTROL_DTR_ON: u8 = 8;
pub const CONTROL_DTR_OFF: u8 = 9;
pub const CONTROL_RTS_ON: u8 = 11;
pub const CONTROL_RTS_OFF: u8 = 12;
pub const CONTROL_NO_INBOUND_FLOW_CONTROL: u8 = 14;

// NOTIFY-LINESTATE bits (section 4): the 16550 LSR layout.
pub const LINESTATE_BREAK: u8 = 0x10;
pub const LINESTATE_ERRORS: u8 = 0x0e;

// NOTIFY-MODEMSTATE bits: the 16550 MSR layout.
pub const MODEMSTATE_CD: u8 = 0x80;
pub const MODEMSTATE_RI: u8 = 0x40;
pub const MODEMSTATE_DSR: u8 = 0x20;
pub const MODEMSTATE_CTS: u8 = 0x10;

/// SET-PARITY values.
pub fn parity_code(p: Parity) -> u8 {
    match p {
        Parity::None => 1,
        Parity::Odd => 2,
        Parity::Even => 3,
        Parity::Mark => 4,
        Parity::Space => 5,
    }
}

/// SET-STOPSIZE: 1, 2, or 3 for 1.5 (two stop bits with 5-bit characters
/// are 1.5 on a 16550).
pub fn stopsize_code(p: &LineParams) -> u8 {
    match (p.stop_bits, p.data_bits) {
        (1, _) => 1,
        (_, 5) => 3,
        _ => 2,
    }
}

/// A COM-PORT-OPTION subnegotiation from the server, its length checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCommand {
    /// The server's signature text, or (empty) a request for ours.
    Signature(Vec<u8>),
    BaudRate(u32),
    DataSize(u8),
    Parity(u8),
    StopSize(u8),
    Control(u8),
    LineState(u8),
    ModemState(u8),
    /// The server cannot take more data for now / can again.
    FlowSuspend,
    FlowResume,
    LineStateMask(u8),
    ModemStateMask(u8),
    Purge(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty COM-PORT-OPTION subnegotiation")]
    Empty,
    #[error("COM-PORT-OPTION command {0} is not a server command")]
    Unknown(u8),
    #[error("COM-PORT-OPTION command {code} with {len} value bytes (expected {expected})")]
    BadLength {
        code: u8,
        len: usize,
        expected: usize,
    },
}

/// Decodes the payload of `IAC SB COM-PORT-OPTION ... IAC SE` sent by a
/// server (already unescaped).
pub fn decode_server(payload: &[u8]) -> Result<ServerCommand, DecodeError> {
    let (&code, value) = payload.split_first().ok_or(DecodeError::Empty)?;
    let exact = |n: usize| {
        if value.len() == n {
            Ok(())
        } else {
            Err(DecodeError::BadLength {
                code,
                len: value.len(),
                expected: n,
            })
        }
    };
    let byte = || exact(1).map(|_| value[0]);
    let cmd = code.checked_sub(SERVER).ok_or(DecodeError::Unknown(code))?;
    Ok(match cmd {
        SIGNATURE => ServerCommand::Signature(value.to_vec()),
        SET_BAUDRATE => {
            exact(4)?;
            ServerCommand::BaudRate(u32::from_be_bytes([value[0], value[1], value[2], value[3]]))
        }
        SET_DATASIZE => ServerCommand::DataSize(byte()?),
        SET_PARITY => ServerCommand::Parity(byte()?),
        SET_STOPSIZE => ServerCommand::StopSize(byte()?),
        SET_CONTROL => ServerCommand::Control(byte()?),
        NOTIFY_LINESTATE => ServerCommand::LineState(byte()?),
        NOTIFY_MODEMSTATE => ServerCommand::ModemState(byte()?),
        FLOWCONTROL_SUSPEND => {
            exact(0)?;
            ServerCommand::FlowSuspend
        }
        FLOWCONTROL_RESUME => {
            exact(0)?;
            ServerCommand::FlowResume
        }
        SET_LINESTATE_MASK => ServerCommand::LineStateMask(byte()?),
        SET_MODEMSTATE_MASK => ServerCommand::ModemStateMask(byte()?),
        PURGE_DATA => ServerCommand::Purge(byte()?),
        _ => return Err(DecodeError::Unknown(code)),
    })
}

/// Appends a client command `code value` as a subnegotiation.
pub fn encode_client(code: u8, value: &[u8], out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(1 + value.len());
    payload.push(code);
    payload.extend_from_slice(value);
    telnet::subnegotiation(option::COM_PORT, &payload, out);
}

/// Modem lines from a NOTIFY-MODEMSTATE byte.
pub fn modem_status(state: u8) -> ModemStatus {
    ModemStatus {
        cts: state & MODEMSTATE_CTS != 0,
        dsr: state & MODEMSTATE_DSR != 0,
        ri: state & MODEMSTATE_RI != 0,
        dcd: state & MODEMSTATE_CD != 0,
    }
}

/// Everything the guest has set on its side of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineState {
    pub params: LineParams,
    pub control: ModemControl,
    pub brk: bool,
}

/// What the server told us, in the order it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes from the device, for the guest.
    Data(Vec<u8>),
    /// A break arrived from the device (NOTIFY-LINESTATE or IAC BRK).
    Break,
    ModemStatus(ModemStatus),
    /// The server stopped / resumed taking data from us.
    Suspend,
    Resume,
    /// The server agreed to COM-PORT-OPTION: settings now reach the device.
    ComPortActive,
    /// The server refused COM-PORT-OPTION: only data gets through.
    ComPortRefused,
    /// The server confirmed a setting (for the log).
    Confirmed(ServerCommand),
    /// Something the server sent that makes no sense; ignored.
    Problem(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ComPort {
    Pending,
    Active,
    Refused,
}

/// Options we perform: BINARY, SGA and COM-PORT-OPTION (we are the
/// client). The server may perform BINARY and SGA; not ECHO.
const LOCAL_OK: &[u8] = &[option::BINARY, option::SGA, option::COM_PORT];
const REMOTE_OK: &[u8] = &[option::BINARY, option::SGA];

/// The RFC 2217 client side of one connection.
#[derive(Debug, Clone)]
pub struct Client {
    parser: Parser,
    negotiator: Negotiator,
    com_port: ComPort,
    state: LineState,
    suspended: bool,
    items: Vec<Item>,
}

impl Client {
    pub fn new(state: LineState) -> Self {
        Self {
            parser: Parser::new(),
            negotiator: Negotiator::new(LOCAL_OK, REMOTE_OK),
            com_port: ComPort::Pending,
            state,
            suspended: false,
            items: Vec::new(),
        }
    }

    /// A new connection: forget the last one, send our requests.
    pub fn connected(&mut self, state: LineState, wire: &mut Vec<u8>) {
        *self = Self::new(state);
        self.negotiator.request_local(option::COM_PORT, wire);
        self.negotiator.request_local(option::BINARY, wire);
        self.negotiator.request_remote(option::BINARY, wire);
        self.negotiator.request_local(option::SGA, wire);
        self.negotiator.request_remote(option::SGA, wire);
    }

    /// Whether guest data may be sent: the server has answered our
    /// COM-PORT-OPTION request, so the line settings precede the data.
    pub fn negotiated(&self) -> bool {
        self.com_port != ComPort::Pending
    }

    /// The server asked us to hold data (FLOWCONTROL-SUSPEND).
    pub fn suspended(&self) -> bool {
        self.suspended
    }

    /// Appends guest data for the wire.
    pub fn send_data(&self, data: &[u8], wire: &mut Vec<u8>) {
        telnet::escape_data(data, self.negotiator.local(option::BINARY), wire);
    }

    fn active(&self) -> bool {
        self.com_port == ComPort::Active
    }

    fn send_line_params(&self, p: &LineParams, wire: &mut Vec<u8>) {
        encode_client(SET_BAUDRATE, &p.baud.to_be_bytes(), wire);
        encode_client(SET_DATASIZE, &[p.data_bits], wire);
        encode_client(SET_PARITY, &[parity_code(p.parity)], wire);
        encode_client(SET_STOPSIZE, &[stopsize_code(p)], wire);
    }

    fn send_control(&self, c: ModemControl, wire: &mut Vec<u8>) {
        let dtr = if c.dtr {
            CONTROL_DTR_ON
        } else {
            CONTROL_DTR_OFF
        };
        let rts = if c.rts {
            CONTROL_RTS_ON
        } else {
            CONTROL_RTS_OFF
        };
        encode_client(SET_CONTROL, &[dtr], wire);
        encode_client(SET_CONTROL, &[rts], wire);
    }

    fn send_break(&self, on: bool, wire: &mut Vec<u8>) {
        let v = if on {
            CONTROL_BREAK_ON
        } else {
            CONTROL_BREAK_OFF
        };
        encode_client(SET_CONTROL, &[v], wire);
    }

    /// Everything the guest set, for a server that just agreed: the line
    /// settings, no flow control of the server's own (the guest does its
    /// own with the modem lines), DTR/RTS, break, and which notifications
    /// we want.
    fn send_all(&self, wire: &mut Vec<u8>) {
        let s = self.state;
        self.send_line_params(&s.params, wire);
        encode_client(SET_CONTROL, &[CONTROL_NO_FLOW_CONTROL], wire);
        encode_client(SET_CONTROL, &[CONTROL_NO_INBOUND_FLOW_CONTROL], wire);
        self.send_control(s.control, wire);
        if s.brk {
            self.send_break(true, wire);
        }
        encode_client(SET_LINESTATE_MASK, &[LINESTATE_BREAK], wire);
        encode_client(SET_MODEMSTATE_MASK, &[0xff], wire);
    }

    pub fn set_line_params(&mut self, p: LineParams, wire: &mut Vec<u8>) {
        if self.state.params != p && self.active() {
            self.send_line_params(&p, wire);
        }
        self.state.params = p;
    }

    pub fn set_modem_control(&mut self, c: ModemControl, wire: &mut Vec<u8>) {
        if self.state.control != c && self.active() {
            self.send_control(c, wire);
        }
        self.state.control = c;
    }

    pub fn set_break(&mut self, on: bool, wire: &mut Vec<u8>) {
        if self.state.brk != on && self.active() {
            self.send_break(on, wire);
        }
        self.state.brk = on;
    }

    /// Takes bytes from the server: appends what they mean to `events`
    /// and our answers to `wire`.
    pub fn receive(&mut self, input: &[u8], events: &mut Vec<Event>, wire: &mut Vec<u8>) {
        let mut items = std::mem::take(&mut self.items);
        items.clear();
        self.parser.feed(input, &mut items);
        for item in items.drain(..) {
            self.item(item, events, wire);
        }
        self.items = items;
    }

    fn item(&mut self, item: Item, events: &mut Vec<Event>, wire: &mut Vec<u8>) {
        match item {
            Item::Data(d) => match events.last_mut() {
                Some(Event::Data(prev)) => prev.extend_from_slice(&d),
                _ => events.push(Event::Data(d)),
            },
            Item::Command(telnet::BRK) => events.push(Event::Break),
            Item::Command(_) => {}
            Item::Negotiation(verb, opt) => self.negotiation(verb, opt, events, wire),
            Item::Subnegotiation {
                option: option::COM_PORT,
                payload,
            } => self.com_port_command(&payload, events, wire),
            Item::Subnegotiation { option, .. } => events.push(Event::Problem(format!(
                "subnegotiation of option {option}, which was not agreed"
            ))),
            Item::Oversized { option, len } => events.push(Event::Problem(format!(
                "a {len}-byte subnegotiation of option {option} (more than {} bytes) skipped",
                telnet::MAX_SUBNEGOTIATION
            ))),
            Item::UnterminatedSubnegotiation { option } => events.push(Event::Problem(format!(
                "an unterminated subnegotiation of option {option} skipped"
            ))),
        }
    }

    fn negotiation(&mut self, verb: Verb, opt: u8, events: &mut Vec<Event>, wire: &mut Vec<u8>) {
        match self.negotiator.receive(verb, opt, wire) {
            Some(OptionChange::LocalOn(option::COM_PORT)) if self.com_port != ComPort::Active => {
                self.com_port = ComPort::Active;
                self.send_all(wire);
                events.push(Event::ComPortActive);
            }
            Some(OptionChange::LocalOff(option::COM_PORT)) if self.com_port != ComPort::Refused => {
                self.com_port = ComPort::Refused;
                events.push(Event::ComPortRefused);
            }
            Some(OptionChange::RemoteOn(option::BINARY)) => self.parser.peer_binary = true,
            Some(OptionChange::RemoteOff(option::BINARY)) => self.parser.peer_binary = false,
            _ => {}
        }
    }

    fn com_port_command(&mut self, payload: &[u8], events: &mut Vec<Event>, wire: &mut Vec<u8>) {
        let cmd = match decode_server(payload) {
            Ok(cmd) => cmd,
            Err(e) => {
                events.push(Event::Problem(e.to_string()));
                return;
            }
        };
        match cmd {
            ServerCommand::Signature(ref text) if text.is_empty() => {
                let ours = concat!("rehost ", env!("CARGO_PKG_VERSION"));
                encode_client(SIGNATURE, ours.as_bytes(), wire);
            }
            ServerCommand::LineState(s) => {
                if s & LINESTATE_BREAK != 0 {
                    events.push(Event::Break);
                }
            }
            ServerCommand::ModemState(s) => events.push(Event::ModemStatus(modem_status(s))),
            ServerCommand::FlowSuspend => {
                self.suspended = true;
                events.push(Event::Suspend);
            }
            ServerCommand::FlowResume => {
                self.suspended = false;
                events.push(Event::Resume);
            }
            other => events.push(Event::Confirmed(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::telnet::{DO, DONT, IAC, SB, SE, WILL, WONT};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn state(baud: u32) -> LineState {
        LineState {
            params: LineParams {
                baud,
                data_bits: 8,
                parity: Parity::None,
                stop_bits: 1,
            },
            control: ModemControl {
                dtr: true,
                rts: true,
            },
            brk: false,
        }
    }

    /// Splits a client's wire output into its subnegotiation payloads.
    fn com_port_commands(wire: &[u8]) -> Vec<Vec<u8>> {
        let mut p = Parser::new();
        let mut items = Vec::new();
        p.feed(wire, &mut items);
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Subnegotiation {
                    option: option::COM_PORT,
                    payload,
                } => Some(payload),
                _ => None,
            })
            .collect()
    }

    /// Bytes ser2net 4.3.11 sent, recorded on this machine (a socat pty
    /// behind `accepter: telnet(rfc2217),tcp,...`), and our answers.
    #[test]
    fn recorded_ser2net_session() {
        let mut c = Client::new(state(9600));
        let mut wire = Vec::new();
        c.connected(state(9600), &mut wire);
        assert_eq!(
            wire,
            hex("ff fb 2c ff fb 00 ff fd 00 ff fb 03 ff fd 03"),
            "WILL COM-PORT, WILL/DO BINARY, WILL/DO SGA"
        );
        // ser2net's greeting: WILL SGA, DO SGA, WILL ECHO, DONT ECHO,
        // DO BINARY, WILL BINARY, DO COM-PORT-OPTION.
        let mut events = Vec::new();
        wire.clear();
        c.receive(
            &hex("ff fb 03 ff fd 03 ff fb 01 ff fe 01 ff fd 00 ff fb 00 ff fd 2c"),
            &mut events,
            &mut wire,
        );
        assert_eq!(events, vec![Event::ComPortActive]);
        assert!(c.negotiated());
        // We refuse its ECHO (a device server echoing our data would be
        // wrong) and, with the option agreed, send every setting.
        let mut expect = hex("ff fe 01");
        for cmd in [
            "01 00 00 25 80", // SET-BAUDRATE 9600
            "02 08",          // SET-DATASIZE 8
            "03 01",          // SET-PARITY NONE
            "04 01",          // SET-STOPSIZE 1
            "05 01",          // SET-CONTROL no flow control
            "05 0e",          // no inbound flow control
            "05 08",          // DTR on
            "05 0b",          // RTS on
            "0a 10",          // SET-LINESTATE-MASK break
            "0b ff",          // SET-MODEMSTATE-MASK all
        ] {
            telnet::subnegotiation(44, &hex(cmd), &mut expect);
        }
        assert_eq!(wire, expect);
        // Its answers: NOTIFY-MODEMSTATE 0 (a pty has no modem lines), the
        // baud rate, its signature, data size, parity, stop size.
        events.clear();
        wire.clear();
        c.receive(
            &hex(
                "ff fa 2c 6b 00 ff f0 ff fd 03 ff fa 2c 65 00 01 c2 00 ff f0 \
                 ff fa 2c 64 73 65 72 32 6e 65 74 ff f0 ff fa 2c 66 07 ff f0 \
                 ff fa 2c 67 03 ff f0 ff fa 2c 68 02 ff f0 ff fa 2c 69 05 ff f0",
            ),
            &mut events,
            &mut wire,
        );
        assert!(wire.is_empty(), "nothing to answer: {wire:02x?}");
        assert_eq!(
            events,
            vec![
                Event::ModemStatus(ModemStatus::default()),
                Event::Confirmed(ServerCommand::BaudRate(115_200)),
                Event::Confirmed(ServerCommand::Signature(b"ser2net".to_vec())),
                Event::Confirmed(ServerCommand::DataSize(7)),
                Event::Confirmed(ServerCommand::Parity(3)),
                Event::Confirmed(ServerCommand::StopSize(2)),
                Event::Confirmed(ServerCommand::Control(5)),
            ]
        );
        // Data both ways with 0xff escaped; binary, so CR goes bare.
        wire.clear();
        c.send_data(b"hello\xffworld\r\n\r", &mut wire);
        assert_eq!(wire, b"hello\xff\xffworld\r\n\r");
        events.clear();
        c.receive(b"ok\xff\xff\r\0", &mut events, &mut wire);
        assert_eq!(events, vec![Event::Data(b"ok\xff\r\0".to_vec())]);
    }

    #[test]
    fn settings_wait_for_the_server_and_follow_the_guest() {
        let mut c = Client::new(state(9600));
        let mut wire = Vec::new();
        c.connected(state(9600), &mut wire);
        wire.clear();
        // Before DO COM-PORT-OPTION nothing is sent, but it is remembered.
        c.set_line_params(state(115_200).params, &mut wire);
        c.set_break(true, &mut wire);
        assert!(wire.is_empty());
        assert!(!c.negotiated());
        let mut events = Vec::new();
        c.receive(&[IAC, DO, 44], &mut events, &mut wire);
        let cmds = com_port_commands(&wire);
        assert_eq!(cmds[0], hex("01 00 01 c2 00"), "115200 goes first");
        assert!(cmds.contains(&hex("05 05")), "break on: {cmds:02x?}");
        // Changes after that are sent as they happen, once.
        wire.clear();
        let mut p = state(0).params;
        p.baud = 2400;
        p.data_bits = 5;
        p.stop_bits = 2;
        p.parity = Parity::Mark;
        c.set_line_params(p, &mut wire);
        c.set_line_params(p, &mut wire);
        c.set_modem_control(
            ModemControl {
                dtr: false,
                rts: true,
            },
            &mut wire,
        );
        c.set_break(false, &mut wire);
        assert_eq!(
            com_port_commands(&wire),
            vec![
                hex("01 00 00 09 60"),
                hex("02 05"),
                hex("03 04"),
                hex("04 03"),
                hex("05 09"),
                hex("05 0b"),
                hex("05 06"),
            ]
        );
        // A baud rate with an 0xff byte is escaped on the wire.
        wire.clear();
        p.baud = 0xff;
        c.set_line_params(p, &mut wire);
        assert!(wire.starts_with(&[IAC, SB, 44, 1, 0, 0, 0, IAC, IAC, IAC, SE]));
    }

    #[test]
    fn notifications_flow_control_and_refusal() {
        let mut c = Client::new(state(9600));
        let mut wire = Vec::new();
        c.connected(state(9600), &mut wire);
        let mut events = Vec::new();
        c.receive(
            &hex("ff fd 2c ff fa 2c 6b b0 ff f0 ff fa 2c 6a 10 ff f0 ff fa 2c 6c ff f0"),
            &mut events,
            &mut wire,
        );
        assert_eq!(
            events,
            vec![
                Event::ComPortActive,
                Event::ModemStatus(ModemStatus {
                    cts: true,
                    dsr: true,
                    ri: false,
                    dcd: true
                }),
                Event::Break,
                Event::Suspend,
            ]
        );
        assert!(c.suspended());
        events.clear();
        c.receive(&hex("ff fa 2c 6d ff f0"), &mut events, &mut wire);
        assert!(!c.suspended());
        // The server asks for our signature.
        wire.clear();
        c.receive(&hex("ff fa 2c 64 ff f0"), &mut events, &mut wire);
        assert!(com_port_commands(&wire)[0].starts_with(b"\0rehost "));
        // A server that refuses COM-PORT-OPTION: data only.
        let mut c = Client::new(state(9600));
        c.connected(state(9600), &mut wire);
        events.clear();
        wire.clear();
        c.receive(&[IAC, DONT, 44, IAC, WONT, 0], &mut events, &mut wire);
        assert_eq!(events, vec![Event::ComPortRefused]);
        assert!(c.negotiated());
        c.set_line_params(state(300).params, &mut wire);
        assert!(com_port_commands(&wire).is_empty());
        // Not binary: a bare CR is stuffed with NUL.
        c.send_data(b"a\rb", &mut wire);
        assert_eq!(wire, b"a\r\0b");
    }

    #[test]
    fn garbage_is_reported_and_ignored() {
        let mut c = Client::new(state(9600));
        let mut wire = Vec::new();
        c.connected(state(9600), &mut wire);
        let mut events = Vec::new();
        wire.clear();
        c.receive(
            &hex("ff fa 2c ff f0 \
                 ff fa 2c 65 01 02 ff f0 \
                 ff fa 2c 01 00 00 00 01 ff f0 \
                 ff fa 2c c8 ff f0 \
                 ff fa 18 01 ff f0 \
                 ff fb 18"),
            &mut events,
            &mut wire,
        );
        let problems: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Problem(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(problems.len(), 5, "{events:?}");
        assert!(problems[1].contains("2 value bytes (expected 4)"));
        assert!(problems[2].contains("not a server command"));
        // WILL TERMINAL-TYPE is refused.
        assert_eq!(wire, [IAC, DONT, 0x18]);
        let _ = WILL;
    }
}
