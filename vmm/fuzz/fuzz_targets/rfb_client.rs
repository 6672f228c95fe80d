//! The VNC server's client-message parser fed what a hostile viewer might
//! send: the stream cut at a fuzzer-chosen point. No panic; the same
//! messages (or the same error) come out however the stream is cut; every
//! message respects the bounds (encodings listed, cut text length), and
//! every accepted pixel format encodes a pixel in its own size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost::vnc::protocol::{ClientMessage, ClientParser, RfbError, MAX_CUT_TEXT, MAX_ENCODINGS};

fn parse(chunks: &[&[u8]]) -> (Vec<ClientMessage>, Option<RfbError>) {
    let mut p = ClientParser::new();
    let mut out = Vec::new();
    for c in chunks {
        if let Err(e) = p.feed(c, &mut out) {
            return (out, Some(e));
        }
    }
    (out, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(data.len());
    let whole = parse(&[data]);
    let parts = parse(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, parts, "parsing depends on where reads split");
    for m in &whole.0 {
        match m {
            ClientMessage::SetEncodings(list) => assert!(list.len() <= MAX_ENCODINGS),
            ClientMessage::ClientCutText { len } => assert!(*len <= MAX_CUT_TEXT),
            ClientMessage::SetPixelFormat(f) => {
                let mut out = Vec::new();
                f.put(0x00ff_8040, &mut out);
                assert_eq!(out.len(), f.bytes_per_pixel());
            }
            _ => {}
        }
    }
});
