//! Telnet framing (RFC 854) and option negotiation (RFC 1143's "Q
//! method"), as the transport of RFC 2217. No I/O here: the parser takes
//! bytes from the peer and returns what they mean; the encoders append wire
//! bytes to a buffer. Everything from the peer is untrusted: every length
//! is bounded and nothing panics on any input (see vmm/fuzz).

/// Interpret As Command, and the commands that follow it (RFC 854).
pub const IAC: u8 = 255;
pub const DONT: u8 = 254;
pub const DO: u8 = 253;
pub const WONT: u8 = 252;
pub const WILL: u8 = 251;
pub const SB: u8 = 250;
pub const BRK: u8 = 243;
pub const SE: u8 = 240;

/// Telnet options rehost speaks.
pub mod option {
    /// RFC 856: 8-bit data, no CR NUL stuffing.
    pub const BINARY: u8 = 0;
    /// RFC 857.
    pub const ECHO: u8 = 1;
    /// RFC 858: suppress go-ahead.
    pub const SGA: u8 = 3;
    /// RFC 2217: COM-PORT-OPTION.
    pub const COM_PORT: u8 = 44;
}

/// The longest subnegotiation payload kept. RFC 2217's longest is a
/// signature string; anything longer is skipped and reported.
pub const MAX_SUBNEGOTIATION: usize = 256;

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NUL: u8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Will,
    Wont,
    Do,
    Dont,
}

impl Verb {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            WILL => Some(Verb::Will),
            WONT => Some(Verb::Wont),
            DO => Some(Verb::Do),
            DONT => Some(Verb::Dont),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Verb::Will => WILL,
            Verb::Wont => WONT,
            Verb::Do => DO,
            Verb::Dont => DONT,
        }
    }
}

/// What a run of bytes from the peer means, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Data for the other end of the line (unescaped).
    Data(Vec<u8>),
    /// A two-byte command other than negotiation: NOP, BRK, AYT, ...
    Command(u8),
    Negotiation(Verb, u8),
    Subnegotiation {
        option: u8,
        payload: Vec<u8>,
    },
    /// A subnegotiation longer than `MAX_SUBNEGOTIATION`, skipped whole.
    Oversized {
        option: u8,
        len: usize,
    },
    /// `IAC x` inside a subnegotiation, x neither IAC nor SE: the
    /// subnegotiation is dropped and `IAC x` taken as a command.
    UnterminatedSubnegotiation {
        option: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    /// After a CR from a peer that is not in BINARY mode: a NUL next is
    /// stuffing (RFC 854) and dropped.
    DataAfterCr,
    Iac,
    Negotiation(Verb),
    SbOption,
    Sb,
    SbIac,
}

/// The receiving half: bytes from the peer to `Item`s.
#[derive(Debug, Clone)]
pub struct Parser {
    state: State,
    sb_option: u8,
    sb: Vec<u8>,
    sb_len: usize,
    /// The peer sends in BINARY mode (no CR NUL stuffing to undo).
    pub peer_binary: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub fn new() -> Self {
        Self {
            state: State::Data,
            sb_option: 0,
            sb: Vec::new(),
            sb_len: 0,
            peer_binary: false,
        }
    }

    fn data(out: &mut Vec<Item>, b: u8) {
        if let Some(Item::Data(d)) = out.last_mut() {
            d.push(b);
        } else {
            out.push(Item::Data(vec![b]));
        }
    }

    /// Parses `input`, appending what it means to `out`. Input may be cut
    /// anywhere: state carries over to the next call.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Item>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Item>) {
        match self.state {
            State::Data | State::DataAfterCr => {
                let after_cr = self.state == State::DataAfterCr;
                self.state = State::Data;
                match b {
                    IAC => self.state = State::Iac,
                    NUL if after_cr => {}
                    CR if !self.peer_binary => {
                        Self::data(out, b);
                        self.state = State::DataAfterCr;
                    }
                    _ => Self::data(out, b),
                }
            }
            State::Iac => self.command(b, out),
            State::Negotiation(verb) => {
                out.push(Item::Negotiation(verb, b));
                self.state = State::Data;
            }
            State::SbOption => {
                self.sb_option = b;
                self.sb.clear();
                self.sb_len = 0;
                self.state = State::Sb;
            }
            State::Sb => {
                if b == IAC {
                    self.state = State::SbIac;
                } else {
                    self.sb_byte(b);
                }
            }
            State::SbIac => match b {
                IAC => {
                    self.sb_byte(IAC);
                    self.state = State::Sb;
                }
                SE => {
                    self.end_subnegotiation(out);
                    self.state = State::Data;
                }
                _ => {
                    out.push(Item::UnterminatedSubnegotiation {
                        option: self.sb_option,
                    });
                    self.sb.clear();
                    self.command(b, out);
                }
            },
        }
    }

    /// The byte after an IAC outside a subnegotiation.
    fn command(&mut self, b: u8, out: &mut Vec<Item>) {
        self.state = State::Data;
        if b == IAC {
            Self::data(out, IAC);
        } else if let Some(verb) = Verb::from_byte(b) {
            self.state = State::Negotiation(verb);
        } else if b == SB {
            self.state = State::SbOption;
        } else {
            out.push(Item::Command(b));
        }
    }

    fn sb_byte(&mut self, b: u8) {
        self.sb_len = self.sb_len.saturating_add(1);
        if self.sb.len() < MAX_SUBNEGOTIATION {
            self.sb.push(b);
        }
    }

    fn end_subnegotiation(&mut self, out: &mut Vec<Item>) {
        if self.sb_len > MAX_SUBNEGOTIATION {
            out.push(Item::Oversized {
                option: self.sb_option,
                len: self.sb_len,
            });
        } else {
            out.push(Item::Subnegotiation {
                option: self.sb_option,
                payload: std::mem::take(&mut self.sb),
            });
        }
        self.sb.clear();
        self.sb_len = 0;
    }
}

/// Appends `data` for the wire: IAC doubled and, unless we send in BINARY
/// mode, a bare CR followed by NUL (RFC 854).
pub fn escape_data(data: &[u8], binary: bool, out: &mut Vec<u8>) {
    out.reserve(data.len() + data.len() / 8);
    for (i, &b) in data.iter().enumerate() {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        } else if b == CR && !binary && data.get(i + 1) != Some(&LF) {
            out.push(NUL);
        }
    }
}

/// Appends `IAC verb option`.
pub fn negotiation(verb: Verb, opt: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, verb.byte(), opt]);
}

/// Appends `IAC SB option payload IAC SE`, with IAC in the payload doubled.
pub fn subnegotiation(opt: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, SB, opt]);
    for &b in payload {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
    out.extend_from_slice(&[IAC, SE]);
}

/// One side's state of one option (RFC 1143). The queue bits of the full
/// method are not needed: rehost never changes its mind mid-negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Q {
    #[default]
    No,
    Yes,
    WantNo,
    WantYes,
}

/// An option that became enabled or disabled on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionChange {
    /// We now perform `option` (the peer agreed with DO).
    LocalOn(u8),
    /// We do not perform `option` (the peer refused or revoked it).
    LocalOff(u8),
    /// The peer now performs `option`.
    RemoteOn(u8),
    RemoteOff(u8),
}

/// Option negotiation without loops: a reply is sent only when a request
/// changes an option's state, so two parties can never ping-pong.
#[derive(Debug, Clone)]
pub struct Negotiator {
    us: [Q; 256],
    him: [Q; 256],
    /// Options we agree to perform when asked (DO).
    local_ok: &'static [u8],
    /// Options we agree to let the peer perform (WILL).
    remote_ok: &'static [u8],
}

impl Negotiator {
    pub fn new(local_ok: &'static [u8], remote_ok: &'static [u8]) -> Self {
        Self {
            us: [Q::No; 256],
            him: [Q::No; 256],
            local_ok,
            remote_ok,
        }
    }

    pub fn local(&self, opt: u8) -> bool {
        self.us[usize::from(opt)] == Q::Yes
    }

    pub fn remote(&self, opt: u8) -> bool {
        self.him[usize::from(opt)] == Q::Yes
    }

    /// Asks to perform `opt` ourselves (WILL).
    pub fn request_local(&mut self, opt: u8, out: &mut Vec<u8>) {
        let q = &mut self.us[usize::from(opt)];
        if *q == Q::No {
            *q = Q::WantYes;
            negotiation(Verb::Will, opt, out);
        }
    }

    /// Asks the peer to perform `opt` (DO).
    pub fn request_remote(&mut self, opt: u8, out: &mut Vec<u8>) {
        let q = &mut self.him[usize::from(opt)];
        if *q == Q::No {
            *q = Q::WantYes;
            negotiation(Verb::Do, opt, out);
        }
    }

    /// Handles a negotiation from the peer; returns what changed.
    pub fn receive(&mut self, verb: Verb, opt: u8, out: &mut Vec<u8>) -> Option<OptionChange> {
        let i = usize::from(opt);
        match verb {
            Verb::Will | Verb::Wont => {
                let agree = self.remote_ok.contains(&opt);
                Self::step(
                    &mut self.him[i],
                    verb == Verb::Will,
                    agree,
                    (Verb::Do, Verb::Dont),
                    opt,
                    out,
                )
                .map(|on| {
                    if on {
                        OptionChange::RemoteOn(opt)
                    } else {
                        OptionChange::RemoteOff(opt)
                    }
                })
            }
            Verb::Do | Verb::Dont => {
                let agree = self.local_ok.contains(&opt);
                Self::step(
                    &mut self.us[i],
                    verb == Verb::Do,
                    agree,
                    (Verb::Will, Verb::Wont),
                    opt,
                    out,
                )
                .map(|on| {
                    if on {
                        OptionChange::LocalOn(opt)
                    } else {
                        OptionChange::LocalOff(opt)
                    }
                })
            }
        }
    }

    /// RFC 1143 section 7 for one side: `yes` is WILL/DO, else WONT/DONT;
    /// `reply` is what we answer with (yes, no). Returns the new state
    /// when it changed to or from Yes (or a request was refused).
    fn step(
        q: &mut Q,
        yes: bool,
        agree: bool,
        reply: (Verb, Verb),
        opt: u8,
        out: &mut Vec<u8>,
    ) -> Option<bool> {
        match (*q, yes) {
            (Q::No, true) if agree => {
                *q = Q::Yes;
                negotiation(reply.0, opt, out);
                Some(true)
            }
            (Q::No, true) => {
                negotiation(reply.1, opt, out);
                None
            }
            (Q::No, false) | (Q::Yes, true) => None,
            (Q::Yes, false) => {
                *q = Q::No;
                negotiation(reply.1, opt, out);
                Some(false)
            }
            // An answer to our own request.
            (Q::WantYes, true) => {
                *q = Q::Yes;
                Some(true)
            }
            (Q::WantYes, false) => {
                *q = Q::No;
                Some(false)
            }
            (Q::WantNo, _) => {
                *q = Q::No;
                Some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &mut Parser, bytes: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        p.feed(bytes, &mut out);
        out
    }

    #[test]
    fn data_commands_and_negotiation_in_order() {
        let mut p = Parser::new();
        p.peer_binary = true;
        let items = parse(
            &mut p,
            &[b'a', IAC, IAC, b'b', IAC, 241, IAC, WILL, 3, b'c', IAC, BRK],
        );
        assert_eq!(
            items,
            vec![
                Item::Data(vec![b'a', 0xff, b'b']),
                Item::Command(241),
                Item::Negotiation(Verb::Will, 3),
                Item::Data(vec![b'c']),
                Item::Command(BRK),
            ]
        );
    }

    #[test]
    fn input_cut_anywhere_parses_the_same() {
        let wire = [
            b'x', IAC, SB, 44, 101, 0, 1, IAC, IAC, 0, IAC, SE, IAC, DO, 0, b'\r', 0, b'y',
        ];
        let mut whole = Parser::new();
        let expected = parse(&mut whole, &wire);
        for cut in 0..wire.len() {
            let mut p = Parser::new();
            let mut items = parse(&mut p, &wire[..cut]);
            p.feed(&wire[cut..], &mut items);
            // Data items may be split at the cut; compare them joined.
            let join = |v: &[Item]| {
                let mut r: Vec<Item> = Vec::new();
                for i in v {
                    match (r.last_mut(), i) {
                        (Some(Item::Data(a)), Item::Data(b)) => a.extend_from_slice(b),
                        _ => r.push(i.clone()),
                    }
                }
                r
            };
            assert_eq!(join(&items), join(&expected), "cut at {cut}");
        }
        assert_eq!(
            expected,
            vec![
                Item::Data(vec![b'x']),
                Item::Subnegotiation {
                    option: 44,
                    payload: vec![101, 0, 1, 0xff, 0]
                },
                Item::Negotiation(Verb::Do, 0),
                Item::Data(vec![b'\r', b'y']),
            ]
        );
    }

    #[test]
    fn cr_nul_is_unstuffed_only_outside_binary_mode() {
        let mut p = Parser::new();
        assert_eq!(
            parse(&mut p, b"a\r\0b\r\nc"),
            vec![Item::Data(b"a\rb\r\nc".to_vec())]
        );
        p.peer_binary = true;
        assert_eq!(parse(&mut p, b"\r\0"), vec![Item::Data(b"\r\0".to_vec())]);
    }

    #[test]
    fn oversized_and_unterminated_subnegotiations_are_reported() {
        let mut p = Parser::new();
        let mut wire = vec![IAC, SB, 44];
        wire.extend(std::iter::repeat_n(7u8, 100_000));
        wire.extend_from_slice(&[IAC, SE, b'k']);
        let items = parse(&mut p, &wire);
        assert_eq!(
            items,
            vec![
                Item::Oversized {
                    option: 44,
                    len: 100_000
                },
                Item::Data(vec![b'k'])
            ]
        );
        assert!(p.sb.capacity() <= 2 * MAX_SUBNEGOTIATION);
        // IAC WILL inside a subnegotiation ends it.
        let items = parse(&mut p, &[IAC, SB, 44, 1, 2, IAC, WILL, 0, b'z']);
        assert_eq!(
            items,
            vec![
                Item::UnterminatedSubnegotiation { option: 44 },
                Item::Negotiation(Verb::Will, 0),
                Item::Data(vec![b'z'])
            ]
        );
    }

    #[test]
    fn escaping_round_trips() {
        let data: Vec<u8> = (0..=255u8).chain([b'\r', b'\n', b'\r', 0xff]).collect();
        for binary in [true, false] {
            let mut wire = Vec::new();
            escape_data(&data, binary, &mut wire);
            let mut p = Parser::new();
            p.peer_binary = binary;
            assert_eq!(parse(&mut p, &wire), vec![Item::Data(data.clone())]);
        }
        let mut wire = Vec::new();
        subnegotiation(44, &[1, 0xff, 0, 0xff], &mut wire);
        assert_eq!(wire, vec![IAC, SB, 44, 1, IAC, IAC, 0, IAC, IAC, IAC, SE]);
    }

    #[test]
    fn negotiation_answers_only_changes() {
        let mut n = Negotiator::new(&[option::BINARY, option::COM_PORT], &[option::BINARY]);
        let mut out = Vec::new();
        // Our own request, then the peer's agreement: no reply to that.
        n.request_local(option::COM_PORT, &mut out);
        assert_eq!(out, [IAC, WILL, 44]);
        out.clear();
        assert_eq!(
            n.receive(Verb::Do, 44, &mut out),
            Some(OptionChange::LocalOn(44))
        );
        assert!(out.is_empty());
        assert!(n.local(44));
        // Repeating DO changes nothing and is not answered.
        assert_eq!(n.receive(Verb::Do, 44, &mut out), None);
        assert!(out.is_empty());
        // Unsupported options are refused once each time asked.
        assert_eq!(n.receive(Verb::Will, option::ECHO, &mut out), None);
        assert_eq!(out, [IAC, DONT, 1]);
        out.clear();
        assert_eq!(n.receive(Verb::Do, option::ECHO, &mut out), None);
        assert_eq!(out, [IAC, WONT, 1]);
        out.clear();
        // The peer offers BINARY: agreed and answered.
        assert_eq!(
            n.receive(Verb::Will, 0, &mut out),
            Some(OptionChange::RemoteOn(0))
        );
        assert_eq!(out, [IAC, DO, 0]);
        out.clear();
        // And revokes it.
        assert_eq!(
            n.receive(Verb::Wont, 0, &mut out),
            Some(OptionChange::RemoteOff(0))
        );
        assert_eq!(out, [IAC, DONT, 0]);
        // A refusal of our request.
        out.clear();
        n.request_remote(option::SGA, &mut out);
        assert_eq!(
            n.receive(Verb::Wont, option::SGA, &mut out),
            Some(OptionChange::RemoteOff(option::SGA))
        );
        assert_eq!(out, [IAC, DO, 3]);
    }
}
