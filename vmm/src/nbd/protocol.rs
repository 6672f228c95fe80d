//! NBD wire layouts: the constants and the fixed-size messages of the
//! newstyle protocol, as the NBD project's `doc/proto.md` defines them
//! (section names are cited per item), plus QEMU's metadata context names
//! from its `docs/interop/nbd.rst`. Behaviour lives in `session.rs`; this
//! module only encodes and decodes, and every decoder checks the length of
//! what it is given before reading a field.
//!
//! All integers on the wire are big-endian ("Protocol phases").

/// `NBDMAGIC`, the first 8 bytes the server sends ("Newstyle negotiation").
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: starts every option request and follows NBDMAGIC in the
/// server's greeting ("Newstyle negotiation").
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply ("Option haggling").
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request ("Request message").
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply ("Simple reply message").
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk ("Structured reply chunk message").
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags, sent by the server ("Handshake flags").
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
// Client flags ("Client flags").
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags ("Transmission flags").
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Option types ("Option types").
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types ("Option reply types").
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Information types of NBD_REP_INFO ("NBD_OPT_INFO and NBD_OPT_GO").
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Request types ("Request types").
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags ("Command flags").
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Structured reply types ("Structured reply types").
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// Error values ("Error values").
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The metadata context of block allocation ("`base:allocation`
/// metadata context"): a hole reads as zeros unless written.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;
/// QEMU's dirty bitmap contexts (QEMU `docs/interop/nbd.rst`, "Metadata
/// namespace"): `qemu:dirty-bitmap:NAME`, bit 0 set for dirty.
pub const QEMU_DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";
pub const STATE_DIRTY: u32 = 1 << 0;

/// The server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// The 16-byte header of an option request ("Option haggling"); `length`
/// bytes of option data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

/// Why a fixed-size message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what}: {got} bytes, {need} needed")]
    Short {
        what: &'static str,
        got: usize,
        need: usize,
    },
    #[error("{what}: magic {got:#x}, expected {expected:#x}")]
    BadMagic {
        what: &'static str,
        got: u64,
        expected: u64,
    },
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn need(what: &'static str, b: &[u8], n: usize) -> Result<(), WireError> {
    if b.len() < n {
        Err(WireError::Short {
            what,
            got: b.len(),
            need: n,
        })
    } else {
        Ok(())
    }
}

impl OptionHeader {
    pub const SIZE: usize = 16;

    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        need("option request header", b, Self::SIZE)?;
        let magic = be_u64(b, 0);
        if magic != IHAVEOPT {
            return Err(WireError::BadMagic {
                what: "option request",
                got: magic,
                expected: IHAVEOPT,
            });
        }
        Ok(OptionHeader {
            option: be_u32(b, 8),
            length: be_u32(b, 12),
        })
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// One option request: header and data (what a client sends).
pub fn option_request(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = OptionHeader {
        option,
        length: data.len() as u32,
    }
    .to_bytes()
    .to_vec();
    b.extend_from_slice(data);
    b
}

/// One option reply: magic, option, reply type, length, data ("Option
/// haggling").
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// A cursor over option data that refuses to read past its end.
pub struct OptionData<'a> {
    b: &'a [u8],
}

impl<'a> OptionData<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        OptionData { b }
    }
    pub fn u16(&mut self) -> Option<u16> {
        let v = self.b.get(..2)?;
        self.b = &self.b[2..];
        Some(be_u16(v, 0))
    }
    pub fn u32(&mut self) -> Option<u32> {
        let v = self.b.get(..4)?;
        self.b = &self.b[4..];
        Some(be_u32(v, 0))
    }
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let v = self.b.get(..n)?;
        self.b = &self.b[n..];
        Some(v)
    }
    /// A u32-length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.bytes(n)?).ok()
    }
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

/// The data of NBD_OPT_INFO and NBD_OPT_GO: export name and the
/// information types the client asks for ("NBD_OPT_INFO and NBD_OPT_GO").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

impl GoRequest {
    pub fn parse(data: &[u8]) -> Option<Self> {
        let mut d = OptionData::new(data);
        let name = d.string()?.to_owned();
        let n = d.u16()?;
        let mut infos = Vec::with_capacity(usize::from(n).min(data.len() / 2));
        for _ in 0..n {
            infos.push(d.u16()?);
        }
        d.is_empty().then_some(GoRequest { name, infos })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&(self.infos.len() as u16).to_be_bytes());
        for i in &self.infos {
            b.extend_from_slice(&i.to_be_bytes());
        }
        b
    }
}

/// The data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT:
/// export name and queries ("NBD_OPT_LIST_META_CONTEXT").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    pub fn parse(data: &[u8]) -> Option<Self> {
        let mut d = OptionData::new(data);
        let export = d.string()?.to_owned();
        let n = d.u32()?;
        let mut queries = Vec::new();
        for _ in 0..n {
            queries.push(d.string()?.to_owned());
        }
        d.is_empty()
            .then_some(MetaContextRequest { export, queries })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.export.len() as u32).to_be_bytes());
        b.extend_from_slice(self.export.as_bytes());
        b.extend_from_slice(&(self.queries.len() as u32).to_be_bytes());
        for q in &self.queries {
            b.extend_from_slice(&(q.len() as u32).to_be_bytes());
            b.extend_from_slice(q.as_bytes());
        }
        b
    }
}

/// NBD_INFO_EXPORT: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum block size.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// NBD_INFO_NAME or NBD_INFO_DESCRIPTION: a type and a string.
pub fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + s.len());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// The reply to NBD_OPT_EXPORT_NAME: size, transmission flags and, unless
/// the client set NBD_FLAG_C_NO_ZEROES, 124 zero bytes.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.extend_from_slice(&[0u8; 124]);
    }
    b
}

/// A transmission request ("Request message"), 28 bytes; a WRITE's data
/// follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub const SIZE: usize = 28;

    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        need("request", b, Self::SIZE)?;
        let magic = be_u32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(WireError::BadMagic {
                what: "request",
                got: u64::from(magic),
                expected: u64::from(REQUEST_MAGIC),
            });
        }
        Ok(Request {
            flags: be_u16(b, 4),
            kind: be_u16(b, 6),
            cookie: be_u64(b, 8),
            offset: be_u64(b, 16),
            length: be_u32(b, 24),
        })
    }

    pub fn to_bytes(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply ("Simple reply message"): magic, error, cookie.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// The 20-byte header of a structured reply chunk ("Structured reply chunk
/// message"); `length` bytes of payload follow.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// A decoded structured reply chunk header (for tests and tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub length: u32,
}

impl ChunkHeader {
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        need("structured reply chunk", b, 20)?;
        let magic = be_u32(b, 0);
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(WireError::BadMagic {
                what: "structured reply chunk",
                got: u64::from(magic),
                expected: u64::from(STRUCTURED_REPLY_MAGIC),
            });
        }
        Ok(ChunkHeader {
            flags: be_u16(b, 4),
            kind: be_u16(b, 6),
            cookie: be_u64(b, 8),
            length: be_u32(b, 16),
        })
    }
}

/// NBD_REPLY_TYPE_ERROR payload: error, message length, message.
pub fn error_chunk_payload(error: u32, message: &str) -> Vec<u8> {
    // The message length is a u16; clip on a character boundary.
    let mut end = message.len().min(4096);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    let mut b = Vec::with_capacity(6 + msg.len());
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// One block status descriptor: a length and the context's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub length: u32,
    pub flags: u32,
}

/// NBD_REPLY_TYPE_BLOCK_STATUS payload: context id and descriptors.
pub fn block_status_payload(context: u32, descriptors: &[Descriptor]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + 8 * descriptors.len());
    b.extend_from_slice(&context.to_be_bytes());
    for d in descriptors {
        b.extend_from_slice(&d.length.to_be_bytes());
        b.extend_from_slice(&d.flags.to_be_bytes());
    }
    b
}

/// Decodes a block status payload (for tests and tools); `None` when its
/// length is not 4 + 8n.
pub fn parse_block_status_payload(b: &[u8]) -> Option<(u32, Vec<Descriptor>)> {
    if b.len() < 4 || !(b.len() - 4).is_multiple_of(8) {
        return None;
    }
    let ctx = be_u32(b, 0);
    let d = b[4..]
        .chunks_exact(8)
        .map(|c| Descriptor {
            length: be_u32(c, 0),
            flags: be_u32(c, 4),
        })
        .collect();
    Some((ctx, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn request_round_trips(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) {
            let r = Request { flags, kind, cookie, offset, length };
            prop_assert_eq!(Request::parse(&r.to_bytes()), Ok(r));
        }

        #[test]
        fn request_parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let r = Request::parse(&b);
            if b.len() < 28 {
                prop_assert!(r.is_err());
            }
        }

        #[test]
        fn option_header_round_trips(option: u32, length: u32) {
            let h = OptionHeader { option, length };
            prop_assert_eq!(OptionHeader::parse(&h.to_bytes()), Ok(h));
        }

        #[test]
        fn go_request_round_trips(name in "[a-z0-9/]{0,40}", infos in proptest::collection::vec(any::<u16>(), 0..8)) {
            let g = GoRequest { name, infos };
            prop_assert_eq!(GoRequest::parse(&g.to_bytes()), Some(g));
        }

        #[test]
        fn meta_request_round_trips(export in "[a-z]{0,10}", queries in proptest::collection::vec("[a-z:-]{0,20}", 0..5)) {
            let m = MetaContextRequest { export, queries };
            prop_assert_eq!(MetaContextRequest::parse(&m.to_bytes()), Some(m));
        }

        #[test]
        fn option_data_parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = GoRequest::parse(&b);
            let _ = MetaContextRequest::parse(&b);
        }

        #[test]
        fn block_status_round_trips(ctx: u32, d in proptest::collection::vec((1u32.., any::<u32>()), 0..20)) {
            let d: Vec<Descriptor> = d.into_iter().map(|(length, flags)| Descriptor { length, flags }).collect();
            prop_assert_eq!(parse_block_status_payload(&block_status_payload(ctx, &d)), Some((ctx, d)));
        }

        #[test]
        fn chunk_header_round_trips(flags: u16, kind: u16, cookie: u64, length: u32) {
            let b = chunk_header(flags, kind, cookie, length);
            prop_assert_eq!(ChunkHeader::parse(&b), Ok(ChunkHeader { flags, kind, cookie, length }));
        }

        #[test]
        fn error_payload_is_bounded(error: u32, msg in ".{0,5000}") {
            let p = error_chunk_payload(error, &msg);
            let n = u16::from_be_bytes([p[4], p[5]]) as usize;
            prop_assert_eq!(p.len(), 6 + n);
            prop_assert!(n <= 4096);
            prop_assert!(std::str::from_utf8(&p[6..]).is_ok());
        }
    }

    #[test]
    fn greeting_layout() {
        let g = greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(g[16..18], [0, 3]);
    }

    #[test]
    fn simple_reply_layout() {
        let r = simple_reply(EINVAL, 0x0102030405060708);
        assert_eq!(r[0..4], [0x67, 0x44, 0x66, 0x98]);
        assert_eq!(r[4..8], [0, 0, 0, 22]);
        assert_eq!(r[8..16], [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
