//! The NBD server's option haggling and request parsing fed arbitrary
//! bytes: never a panic, every reply well framed, and the export's bytes
//! change only where a WRITE, WRITE_ZEROES or TRIM the server accepted
//! said so (checked coarsely: a read-only export never changes).
//!
//! The first input byte picks the starting point: the input as the whole
//! client stream (greeting answer and options), or a valid handshake
//! (structured replies, both metadata contexts, NBD_OPT_GO) followed by
//! the input as transmission requests.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rehost::nbd::protocol::{self as p, GoRequest, MetaContextRequest, OptionHeader, Request};
use rehost::nbd::{serve_bytes, Export, MemorySource, ServerOptions};

const SIZE: usize = 256 * 1024;

fn option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(&p::option_request(option, data));
}

fn handshake() -> Vec<u8> {
    let mut b = (p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    option(&mut b, p::OPT_STRUCTURED_REPLY, &[]);
    let meta = MetaContextRequest {
        export: "d".into(),
        queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:b".into()],
    };
    option(&mut b, p::OPT_SET_META_CONTEXT, &meta.to_bytes());
    let go = GoRequest {
        name: "d".into(),
        infos: vec![p::INFO_BLOCK_SIZE],
    };
    option(&mut b, p::OPT_GO, &go.to_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let _ = Request::parse(rest);
    let _ = OptionHeader::parse(rest);
    let _ = GoRequest::parse(rest);
    let _ = MetaContextRequest::parse(rest);
    let input = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut b = handshake();
        b.extend_from_slice(rest);
        b
    };
    let seed: Vec<u8> = (0..SIZE).map(|i| (i / 512) as u8).collect();
    let ro = mode & 2 != 0;
    let source = Arc::new(MemorySource::new(seed.clone()).with_read_only(ro));
    source.add_bitmap("b");
    let options = ServerOptions {
        max_clients: 1,
        max_payload: 64 * 1024,
        idle_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let out = serve_bytes(&input, vec![Export::new("d", source.clone())], options);
    assert_eq!(&out[..8], b"NBDMAGIC");
    if ro {
        assert!(source.contents() == seed, "a read-only export changed");
    }
});
