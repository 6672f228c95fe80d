//! The control socket's input side fed what a hostile client might send:
//! the stream cut at fuzzer-chosen points, framed, parsed as requests and
//! their arguments read. No panic; frames never exceed the message bound;
//! the same frames come out however the stream is cut; a valid command
//! appended after input that ended its values is still recognised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost::control::protocol::{self, Args, Frame, Splitter};

fn frames(chunks: &[&[u8]]) -> Vec<Frame> {
    let mut s = Splitter::new();
    let mut out = Vec::new();
    for c in chunks {
        s.feed(c, &mut out);
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(data.len());
    let whole = frames(&[data]);
    let parts = frames(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, parts, "framing depends on where reads split");
    for f in &whole {
        let Frame::Message(m) = f else { continue };
        assert!(m.len() <= protocol::MAX_MESSAGE + 1);
        if let Ok(req) = protocol::parse_request(m) {
            // Argument readers never panic on any value shape.
            if let Ok(a) = Args::new(
                &req.arguments,
                &["id", "device", "force", "filename", "enable"],
            ) {
                let _ = a.opt_str("id");
                let _ = a.str("device");
                let _ = a.opt_bool("force");
                let _ = a.opt_array("enable");
            }
            let _ = protocol::reply_ok(serde_json::Value::Null, req.id.as_ref());
        }
    }
    // Once the fuzz input's values are closed (not inside a string, an
    // object or an array, and not past the bounds), a command after a
    // newline is framed and parsed on its own.
    let ends_clean = whole.iter().all(|f| matches!(f, Frame::Message(_)));
    let mut probe = Splitter::new();
    let mut out = Vec::new();
    probe.feed(data, &mut out);
    if ends_clean && !probe.partial() {
        probe.feed(b"\n{\"execute\": \"query-status\", \"id\": 1}", &mut out);
        let last = out.last().expect("the appended command is framed");
        let Frame::Message(m) = last else {
            panic!("appended command not framed")
        };
        assert_eq!(
            protocol::parse_request(m)
                .expect("appended command parses")
                .execute,
            "query-status"
        );
    }
});
