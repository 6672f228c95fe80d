//! RFB (the VNC protocol) framing, as RFC 6143 (RFB 3.8) defines it: the
//! client-to-server messages (section 7.5), pixel formats (7.4), the
//! server's update encodings (7.6, 7.7) and VNC Authentication (7.2.2).

use thiserror::Error;

/// RFC 6143 7.1.1.
pub const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";

pub const SECURITY_NONE: u8 = 1;
pub const SECURITY_VNC_AUTH: u8 = 2;

pub const ENCODING_RAW: i32 = 0;
pub const ENCODING_ZLIB: i32 = 6;
/// The DesktopSize pseudo-encoding (RFC 6143 7.8.2).
pub const ENCODING_DESKTOP_SIZE: i32 = -223;

/// Encodings a client may list (a real viewer lists about twenty).
pub const MAX_ENCODINGS: usize = 1024;
/// ClientCutText longer than this closes the connection (the text is
/// ignored either way, never buffered).
pub const MAX_CUT_TEXT: u32 = 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RfbError {
    #[error("message type {0} is not an RFB client message")]
    UnknownMessage(u8),
    #[error("SetEncodings lists {0} encodings (at most {MAX_ENCODINGS})")]
    TooManyEncodings(usize),
    #[error("ClientCutText of {0} bytes (at most {MAX_CUT_TEXT})")]
    CutTextTooLong(u32),
    #[error("SetPixelFormat: {0}")]
    BadPixelFormat(&'static str),
    #[error("protocol version {0:?} is not RFB 3.x")]
    BadVersion(String),
}

/// The pixel format a client wants (RFC 6143 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// What rehost offers: 32 bits, depth 24, 0x00RRGGBB little endian.
    pub const SERVER: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Reads and checks the 16 bytes of a SetPixelFormat: 8, 16 or 32
    /// bits, true colour, every channel inside the pixel.
    pub fn parse(b: &[u8; 16]) -> Result<Self, RfbError> {
        let f = PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        if !matches!(f.bits_per_pixel, 8 | 16 | 32) {
            return Err(RfbError::BadPixelFormat(
                "bits-per-pixel is not 8, 16 or 32",
            ));
        }
        if !f.true_colour {
            return Err(RfbError::BadPixelFormat(
                "colour-map formats are not served (true colour only)",
            ));
        }
        let bits = u32::from(f.bits_per_pixel);
        for (max, shift) in [
            (f.red_max, f.red_shift),
            (f.green_max, f.green_shift),
            (f.blue_max, f.blue_shift),
        ] {
            let width = 16 - max.leading_zeros();
            if max == 0 || u32::from(shift) + width > bits {
                return Err(RfbError::BadPixelFormat(
                    "a colour channel does not fit in the pixel",
                ));
            }
        }
        Ok(f)
    }

    pub fn bytes_per_pixel(self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// Appends 0x00RRGGBB pixels in this format. The usual viewer format
    /// (32 bits, little-endian, 8 bits a channel) takes a fast path
    /// without scaling; any other goes pixel by pixel through [`Self::put`].
    pub fn put_row(self, pixels: &[u32], out: &mut Vec<u8>) {
        let eight_bits = (self.red_max, self.green_max, self.blue_max) == (255, 255, 255);
        if self.bits_per_pixel != 32 || self.big_endian || !eight_bits {
            for &p in pixels {
                self.put(p, out);
            }
            return;
        }
        let (r, g, b) = (
            u32::from(self.red_shift),
            u32::from(self.green_shift),
            u32::from(self.blue_shift),
        );
        out.reserve(pixels.len() * 4);
        if (r, g, b) == (16, 8, 0) {
            for &p in pixels {
                out.extend_from_slice(&(p & 0xff_ffff).to_le_bytes());
            }
        } else {
            for &p in pixels {
                let v = ((p >> 16) & 0xff) << r | ((p >> 8) & 0xff) << g | (p & 0xff) << b;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// Appends one 0x00RRGGBB pixel in this format.
    pub fn put(self, rgb: u32, out: &mut Vec<u8>) {
        let scale = |v: u32, max: u16| (v * u32::from(max) + 127) / 255;
        let v = scale((rgb >> 16) & 0xff, self.red_max) << self.red_shift
            | scale((rgb >> 8) & 0xff, self.green_max) << self.green_shift
            | scale(rgb & 0xff, self.blue_max) << self.blue_shift;
        match (self.bits_per_pixel, self.big_endian) {
            (8, _) => out.push(v as u8),
            (16, false) => out.extend_from_slice(&(v as u16).to_le_bytes()),
            (16, true) => out.extend_from_slice(&(v as u16).to_be_bytes()),
            (_, false) => out.extend_from_slice(&v.to_le_bytes()),
            (_, true) => out.extend_from_slice(&v.to_be_bytes()),
        }
    }
}

/// One client-to-server message (RFC 6143 7.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SetPixelFormat(PixelFormat),
    SetEncodings(Vec<i32>),
    FramebufferUpdateRequest {
        incremental: bool,
        x: u16,
        y: u16,
        w: u16,
        h: u16,
    },
    KeyEvent {
        down: bool,
        keysym: u32,
    },
    PointerEvent {
        buttons: u8,
        x: u16,
        y: u16,
    },
    /// The text itself is skipped as it arrives.
    ClientCutText {
        len: u32,
    },
}

/// Splits the client's byte stream into messages. Only an incomplete
/// message is kept (at most 4 + 4 * [`MAX_ENCODINGS`] bytes); cut text is
/// counted off, never stored.
#[derive(Debug, Default)]
pub struct ClientParser {
    buf: Vec<u8>,
    skip: u64,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ClientParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while a message has started and not ended.
    pub fn partial(&self) -> bool {
        !self.buf.is_empty() || self.skip > 0
    }

    /// Feeds bytes read from the client; appends the whole messages.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<ClientMessage>) -> Result<(), RfbError> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let need = match self.needed()? {
                Some(n) => n,
                None => return Ok(()),
            };
            let take = need.saturating_sub(self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < need {
                return Ok(());
            }
            // A complete header may tell that more follows (SetEncodings).
            if self.needed()?.is_some_and(|n| n > self.buf.len()) {
                continue;
            }
            let msg = self.parse_complete()?;
            self.buf.clear();
            if let ClientMessage::ClientCutText { len } = msg {
                self.skip = u64::from(len);
            }
            out.push(msg);
        }
        Ok(())
    }

    /// Bytes the message in `buf` needs in all, as far as known yet.
    fn needed(&self) -> Result<Option<usize>, RfbError> {
        let Some(&kind) = self.buf.first() else {
            return Ok(Some(1));
        };
        let n = match kind {
            0 => 20,
            2 => {
                if self.buf.len() < 4 {
                    4
                } else {
                    let count = usize::from(be16(&self.buf, 2));
                    if count > MAX_ENCODINGS {
                        return Err(RfbError::TooManyEncodings(count));
                    }
                    4 + 4 * count
                }
            }
            3 => 10,
            4 => 8,
            5 => 6,
            6 => {
                if self.buf.len() < 8 {
                    8
                } else {
                    let len = be32(&self.buf, 4);
                    if len > MAX_CUT_TEXT {
                        return Err(RfbError::CutTextTooLong(len));
                    }
                    8
                }
            }
            other => return Err(RfbError::UnknownMessage(other)),
        };
        Ok(Some(n))
    }

    fn parse_complete(&self) -> Result<ClientMessage, RfbError> {
        let b = &self.buf;
        Ok(match b[0] {
            0 => {
                let mut f = [0u8; 16];
                f.copy_from_slice(&b[4..20]);
                ClientMessage::SetPixelFormat(PixelFormat::parse(&f)?)
            }
            2 => ClientMessage::SetEncodings(
                b[4..]
                    .chunks_exact(4)
                    .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            3 => ClientMessage::FramebufferUpdateRequest {
                incremental: b[1] != 0,
                x: be16(b, 2),
                y: be16(b, 4),
                w: be16(b, 6),
                h: be16(b, 8),
            },
            4 => ClientMessage::KeyEvent {
                down: b[1] != 0,
                keysym: be32(b, 4),
            },
            5 => ClientMessage::PointerEvent {
                buttons: b[1],
                x: be16(b, 2),
                y: be16(b, 4),
            },
            6 => ClientMessage::ClientCutText { len: be32(b, 4) },
            other => return Err(RfbError::UnknownMessage(other)),
        })
    }
}

/// The minor version a client's ProtocolVersion message asks for, as the
/// server will speak it: 3 (3.3, and 3.4-3.6 as RFC 6143 says), 7 or 8
/// (3.8 and later, and Apple's 3.889).
pub fn client_minor(msg: &[u8; 12]) -> Result<u32, RfbError> {
    let text = String::from_utf8_lossy(msg).into_owned();
    let bad = || RfbError::BadVersion(text.clone());
    if &msg[..4] != b"RFB " || msg[7] != b'.' || msg[11] != b'\n' {
        return Err(bad());
    }
    let digits =
        |s: &[u8]| -> Option<u32> { std::str::from_utf8(s).ok().and_then(|t| t.parse().ok()) };
    let major = digits(&msg[4..7]).ok_or_else(bad)?;
    let minor = digits(&msg[8..11]).ok_or_else(bad)?;
    if major != 3 || minor < 3 {
        return Err(bad());
    }
    Ok(match minor {
        3..=6 => 3,
        7 => 7,
        _ => 8,
    })
}

/// The DES key VNC Authentication derives from a password: its first 8
/// bytes, zero padded, each byte's bits in reverse order.
fn vnc_des_key(password: &[u8]) -> [u8; 8] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    key
}

/// The response a client with `password` gives to `challenge`: each
/// 8-byte half encrypted with DES (ECB).
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    use des::cipher::{BlockEncrypt, KeyInit};
    let cipher = des::Des::new(&vnc_des_key(password).into());
    let mut out = *challenge;
    for half in out.chunks_exact_mut(8) {
        cipher.encrypt_block(half.into());
    }
    out
}

/// One rectangle header of a FramebufferUpdate.
pub fn rect_header(out: &mut Vec<u8>, x: u32, y: u32, w: u32, h: u32, encoding: i32) {
    for v in [x, y, w, h] {
        out.extend_from_slice(&(v.min(0xffff) as u16).to_be_bytes());
    }
    out.extend_from_slice(&encoding.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<ClientMessage>, RfbError> {
        let mut p = ClientParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn messages_split_anywhere_parse_the_same() {
        let mut stream = vec![3, 1, 0, 1, 0, 2, 0, 3, 0, 4];
        stream.extend([2, 0, 0, 2, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0x21]);
        stream.extend([6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
        stream.extend([4, 1, 0, 0, 0, 0, 0xff, 0x0d]);
        stream.extend([5, 9, 1, 0, 0, 2]);
        let want = vec![
            ClientMessage::FramebufferUpdateRequest {
                incremental: true,
                x: 1,
                y: 2,
                w: 3,
                h: 4,
            },
            ClientMessage::SetEncodings(vec![6, ENCODING_DESKTOP_SIZE]),
            ClientMessage::ClientCutText { len: 3 },
            ClientMessage::KeyEvent {
                down: true,
                keysym: 0xff0d,
            },
            ClientMessage::PointerEvent {
                buttons: 9,
                x: 256,
                y: 2,
            },
        ];
        assert_eq!(parse_all(&[&stream]).unwrap(), want);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytes).unwrap(), want);
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(parse_all(&[a, b]).unwrap(), want, "split at {split}");
        }
    }

    #[test]
    fn bad_messages_are_refused_by_name() {
        assert_eq!(parse_all(&[&[9]]), Err(RfbError::UnknownMessage(9)));
        assert_eq!(
            parse_all(&[&[2, 0, 0xff, 0xff]]),
            Err(RfbError::TooManyEncodings(65535))
        );
        assert_eq!(
            parse_all(&[&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]]),
            Err(RfbError::CutTextTooLong(u32::MAX))
        );
        let mut pf = vec![0, 0, 0, 0];
        pf.extend(PixelFormat::SERVER.to_bytes());
        pf[4] = 24;
        assert!(matches!(
            parse_all(&[&pf]),
            Err(RfbError::BadPixelFormat(_))
        ));
        pf[4] = 8;
        assert!(matches!(
            parse_all(&[&pf]),
            Err(RfbError::BadPixelFormat(_))
        ));
    }

    /// 16-bit 5-6-5, big-endian.
    fn rgb565_be() -> PixelFormat {
        PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
            ..PixelFormat::SERVER
        }
    }

    #[test]
    fn pixels_in_the_formats_viewers_ask_for() {
        let mut out = Vec::new();
        PixelFormat::SERVER.put(0x123456, &mut out);
        assert_eq!(out, [0x56, 0x34, 0x12, 0]);
        let rgb565_be = rgb565_be();
        out.clear();
        rgb565_be.put(0xff0000, &mut out);
        rgb565_be.put(0x0000ff, &mut out);
        assert_eq!(out, [0xf8, 0x00, 0x00, 0x1f]);
        let bgr233 = PixelFormat {
            bits_per_pixel: 8,
            depth: 8,
            red_max: 7,
            green_max: 7,
            blue_max: 3,
            red_shift: 0,
            green_shift: 3,
            blue_shift: 6,
            ..PixelFormat::SERVER
        };
        out.clear();
        bgr233.put(0xffffff, &mut out);
        bgr233.put(0x00ff00, &mut out);
        assert_eq!(out, [0xff, 0x38]);
    }

    #[test]
    fn rows_take_the_fast_path_with_the_same_bytes() {
        // Bits above the 24 colour bits must not leak into the pixel.
        let row = [0x0012_3456, 0xff00_00ff, 0x00ab_cdef];
        let bgr32 = PixelFormat {
            red_shift: 0,
            blue_shift: 16,
            ..PixelFormat::SERVER
        };
        let rgb565_be = rgb565_be();
        for format in [PixelFormat::SERVER, bgr32, rgb565_be] {
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            format.put_row(&row, &mut fast);
            for p in row {
                format.put(p, &mut slow);
            }
            assert_eq!(fast, slow, "{format:?}");
        }
        let mut out = Vec::new();
        bgr32.put_row(&[0x123456], &mut out);
        assert_eq!(out, [0x12, 0x34, 0x56, 0]);
    }

    #[test]
    fn versions_and_vnc_auth() {
        assert_eq!(client_minor(b"RFB 003.008\n"), Ok(8));
        assert_eq!(client_minor(b"RFB 003.003\n"), Ok(3));
        assert_eq!(client_minor(b"RFB 003.005\n"), Ok(3));
        assert_eq!(client_minor(b"RFB 003.889\n"), Ok(8));
        assert!(client_minor(b"RFB 004.000\n").is_err());
        assert!(client_minor(b"GET / HTTP/1").is_err());
        // DES with the bit-reversed key, checked against the FIPS 81
        // example (key 0123456789ABCDEF, "Now is t" ->
        // 3FA40E8A984D4815): the password whose reversed bytes are that
        // key.
        let password: Vec<u8> = [0x01u8, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
            .iter()
            .map(|b| b.reverse_bits())
            .collect();
        let mut challenge = [0u8; 16];
        challenge[..8].copy_from_slice(b"Now is t");
        challenge[8..].copy_from_slice(b"Now is t");
        let r = vnc_auth_response(&password, &challenge);
        assert_eq!(r[..8], [0x3f, 0xa4, 0x0e, 0x8a, 0x98, 0x4d, 0x48, 0x15]);
        assert_eq!(r[..8], r[8..]);
    }
}
