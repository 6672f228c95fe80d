//! QMP framing and messages: splitting the byte stream a client sends into
//! JSON values, checking that each is a well-formed command, and building
//! replies and events. Everything here works on bytes a client controls,
//! so every size and nesting depth is bounded and nothing panics.
//!
//! Framing follows QEMU's streaming parser rather than lines: a message is
//! one top-level JSON value, and values may be split across reads or share
//! one read. Whitespace between values is ignored.

use serde_json::{json, Map, Value};

/// The largest message a client may send (QEMU's own limit is larger; a
/// control command never needs more than a few KiB).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// The deepest nesting of objects and arrays accepted in one message.
pub const MAX_NESTING: usize = 64;

/// QMP error classes (QEMU `qapi/error.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotFound,
}

impl ErrorClass {
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
        }
    }
}

/// A failed command: its class and the sentence the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn not_found(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    pub fn device_not_found(desc: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::DeviceNotFound,
            desc: desc.into(),
        }
    }
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class.name(), self.desc)
    }
}

/// What the splitter found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The bytes of one complete top-level value (not yet parsed).
    Message(Vec<u8>),
    /// The value grew past [`MAX_MESSAGE`] bytes or [`MAX_NESTING`] levels:
    /// the stream cannot be resynchronised, so the connection should end.
    TooLarge,
}

/// Splits a byte stream into top-level JSON values by tracking strings and
/// bracket depth, as QEMU's JSON streamer does.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The stream was given up on (too large); everything after is ignored.
    failed: bool,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Splitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while part of a message has arrived but not its end.
    pub fn partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Feeds bytes; complete frames are appended to `out`. After a
    /// [`Frame::TooLarge`] the splitter ignores all further input.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        for &b in data {
            if self.failed {
                return;
            }
            if self.buf.is_empty() && self.depth == 0 && is_space(b) {
                continue;
            }
            if self.in_string {
                self.buf.push(b);
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        // A bare top-level string is a whole value.
                        out.push(Frame::Message(std::mem::take(&mut self.buf)));
                    }
                }
            } else if self.depth == 0 && is_space(b) {
                // The end of a top-level scalar (a number, true, null...).
                out.push(Frame::Message(std::mem::take(&mut self.buf)));
            } else {
                self.buf.push(b);
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => {
                        self.depth += 1;
                        if self.depth > MAX_NESTING {
                            self.fail(out);
                            return;
                        }
                    }
                    b'}' | b']' => {
                        if self.depth <= 1 {
                            self.depth = 0;
                            out.push(Frame::Message(std::mem::take(&mut self.buf)));
                        } else {
                            self.depth -= 1;
                        }
                    }
                    _ => {}
                }
            }
            if self.buf.len() > MAX_MESSAGE {
                self.fail(out);
                return;
            }
        }
    }

    fn fail(&mut self, out: &mut Vec<Frame>) {
        self.failed = true;
        self.buf = Vec::new();
        out.push(Frame::TooLarge);
    }
}

/// One command from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Map<String, Value>,
    /// Echoed in the reply, whatever JSON value it is.
    pub id: Option<Value>,
}

/// A message that is not a valid command, with the `id` to echo if the
/// message had one.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub error: QmpError,
    pub id: Option<Value>,
}

/// Checks one framed message against the QMP command shape (QEMU
/// `qapi/qmp-dispatch.c`): an object with a string `execute`, optional
/// object `arguments` and any `id`, and no other member.
pub fn parse_request(bytes: &[u8]) -> Result<Request, BadRequest> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| BadRequest {
        error: QmpError::generic(format!("JSON parse error, {e}")),
        id: None,
    })?;
    let Value::Object(mut obj) = value else {
        return Err(BadRequest {
            error: QmpError::generic("QMP input must be a JSON object"),
            id: None,
        });
    };
    let id = obj.remove("id");
    let fail = |desc: String, id: Option<Value>| BadRequest {
        error: QmpError::generic(desc),
        id,
    };
    if obj.contains_key("exec-oob") {
        return Err(fail(
            "QMP input member 'exec-oob' is not supported by rehost (no out-of-band capability)"
                .into(),
            id,
        ));
    }
    let execute = match obj.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(fail(
                "QMP input member 'execute' must be a string".into(),
                id,
            ))
        }
        None => return Err(fail("QMP input lacks member 'execute'".into(), id)),
    };
    let arguments = match obj.remove("arguments") {
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(fail(
                "QMP input member 'arguments' must be an object".into(),
                id,
            ))
        }
        None => Map::new(),
    };
    if let Some(extra) = obj.keys().next() {
        return Err(fail(
            format!("QMP input member '{extra}' is unexpected"),
            id,
        ));
    }
    Ok(Request {
        execute,
        arguments,
        id,
    })
}

/// A command's arguments, read with the errors QEMU's generated visitors
/// give for missing, mistyped and unknown members.
pub struct Args<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    /// Refuses members outside `known`.
    pub fn new(map: &'a Map<String, Value>, known: &[&str]) -> Result<Self, QmpError> {
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
        }
        Ok(Self { map })
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, QmpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(QmpError::generic(format!(
                "Invalid parameter type for '{name}', expected: string"
            ))),
        }
    }

    pub fn str(&self, name: &str) -> Result<&'a str, QmpError> {
        self.opt_str(name)?
            .ok_or_else(|| QmpError::generic(format!("Parameter '{name}' is missing")))
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, QmpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(QmpError::generic(format!(
                "Invalid parameter type for '{name}', expected: boolean"
            ))),
        }
    }

    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, QmpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(_) => Err(QmpError::generic(format!(
                "Invalid parameter type for '{name}', expected: uint64"
            ))),
        }
    }

    pub fn opt_array(&self, name: &str) -> Result<Option<&'a Vec<Value>>, QmpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(QmpError::generic(format!(
                "Invalid parameter type for '{name}', expected: array"
            ))),
        }
    }
}

/// `{"return": ...}`, with the request's `id` if it had one.
pub fn reply_ok(value: Value, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), value);
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// `{"error": {"class": ..., "desc": ...}}`, with the `id` if any.
pub fn reply_err(error: &QmpError, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert(
        "error".into(),
        json!({ "class": error.class.name(), "desc": error.desc }),
    );
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// An event with the wall-clock timestamp QMP uses.
pub fn event(name: &str, data: Option<Value>) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut m = Map::new();
    m.insert("event".into(), Value::String(name.into()));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    m.insert(
        "timestamp".into(),
        json!({ "seconds": now.as_secs(), "microseconds": now.subsec_micros() }),
    );
    Value::Object(m)
}

/// The greeting sent when a client connects.
pub fn greeting() -> Value {
    json!({ "QMP": { "version": version(), "capabilities": [] } })
}

/// `query-version`'s reply: rehost's own version in QEMU's shape.
pub fn version() -> Value {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let micro = parts.next().unwrap_or(0);
    json!({
        "qemu": { "major": major, "minor": minor, "micro": micro },
        "package": concat!("rehost ", env!("CARGO_PKG_VERSION")),
    })
}

/// Serialises a message as QEMU does: one line per message.
pub fn to_line(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    s.extend_from_slice(b"\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut s = Splitter::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        out
    }

    fn msg(s: &str) -> Frame {
        Frame::Message(s.as_bytes().to_vec())
    }

    #[test]
    fn values_split_across_and_within_reads() {
        assert_eq!(
            split(&[b"{\"execute\":", b" \"a\"}{\"execute\":\"b\"}\n  \n"]),
            vec![msg("{\"execute\": \"a\"}"), msg("{\"execute\":\"b\"}")]
        );
        // Brackets inside strings and escaped quotes do not count.
        assert_eq!(
            split(&[br#"{"x": "}{\"]"} 12 "s" [1,[2]]"#, b" "]),
            vec![
                msg(r#"{"x": "}{\"]"}"#),
                msg("12"),
                msg("\"s\""),
                msg("[1,[2]]")
            ]
        );
        // A stray closer is a (bad) message of its own, not a hang.
        assert_eq!(split(&[b"}"]), vec![msg("}")]);
    }

    #[test]
    fn too_large_and_too_deep_end_the_stream() {
        let big = vec![b'['; 10];
        let deep = split(&[&[b'['; MAX_NESTING + 1][..]]);
        assert_eq!(deep, vec![Frame::TooLarge]);
        let mut s = Splitter::new();
        let mut out = Vec::new();
        s.feed(b"{\"a\":\"", &mut out);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..17 {
            s.feed(&chunk, &mut out);
        }
        assert_eq!(out, vec![Frame::TooLarge]);
        // Nothing after the failure is framed.
        s.feed(b"\"}{\"execute\":\"x\"}", &mut out);
        s.feed(&big, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn requests_are_checked_like_qemu() {
        let r = parse_request(br#"{"execute":"stop","id":{"n":[1]}}"#).unwrap();
        assert_eq!(r.execute, "stop");
        assert_eq!(r.id, Some(json!({"n": [1]})));
        assert!(r.arguments.is_empty());
        let cases: &[(&[u8], &str, bool)] = &[
            (b"{", "JSON parse error", false),
            (b"[1]", "must be a JSON object", false),
            (br#"{"id":7}"#, "lacks member 'execute'", true),
            (
                br#"{"execute":1,"id":7}"#,
                "'execute' must be a string",
                true,
            ),
            (
                br#"{"execute":"x","arguments":[],"id":7}"#,
                "'arguments' must be an object",
                true,
            ),
            (
                br#"{"execute":"x","foo":1,"id":7}"#,
                "'foo' is unexpected",
                true,
            ),
        ];
        for (input, want, has_id) in cases {
            let e = parse_request(input).unwrap_err();
            assert_eq!(e.error.class, ErrorClass::GenericError);
            assert!(e.error.desc.contains(want), "{}: {}", want, e.error.desc);
            assert_eq!(e.id.is_some(), *has_id, "{want}");
        }
    }

    #[test]
    fn argument_checks() {
        let m: Map<String, Value> = serde_json::from_str(r#"{"id":"cd0","force":"yes"}"#).unwrap();
        assert!(Args::new(&m, &["id"]).is_err());
        let a = Args::new(&m, &["id", "force"]).unwrap();
        assert_eq!(a.str("id").unwrap(), "cd0");
        assert!(a.opt_bool("force").unwrap_err().desc.contains("boolean"));
        assert!(a.str("device").unwrap_err().desc.contains("missing"));
    }

    #[test]
    fn replies_echo_the_id() {
        let ok = reply_ok(json!({}), Some(&json!("a")));
        assert_eq!(ok, json!({"return": {}, "id": "a"}));
        let err = reply_err(&QmpError::not_found("nope"), None);
        assert_eq!(
            err,
            json!({"error": {"class": "CommandNotFound", "desc": "nope"}})
        );
        let ev = event("STOP", None);
        assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
        assert!(to_line(&ev).ends_with(b"\r\n"));
    }

    proptest! {
        /// Any bytes, cut anywhere: no panic, every frame bounded, and a
        /// valid command after garbage that ended its value is still seen.
        #[test]
        fn arbitrary_input_is_bounded(data in proptest::collection::vec(any::<u8>(), 0..4096),
                                      cut in 0usize..4096) {
            let mut s = Splitter::new();
            let mut out = Vec::new();
            let cut = cut.min(data.len());
            s.feed(&data[..cut], &mut out);
            s.feed(&data[cut..], &mut out);
            for f in &out {
                if let Frame::Message(m) = f {
                    prop_assert!(m.len() <= MAX_MESSAGE + 1);
                    let _ = parse_request(m);
                }
            }
        }

        /// Framing does not depend on where reads split the stream.
        #[test]
        fn split_points_do_not_matter(n in 1usize..6, cut in 0usize..200) {
            let mut stream = Vec::new();
            for i in 0..n {
                stream.extend_from_slice(format!(
                    "{{\"execute\": \"c{i}\", \"arguments\": {{\"s\": \"}}{{[\\\"\"}}, \"id\": [{i}]}}\n"
                ).as_bytes());
            }
            let whole = split(&[&stream]);
            let cut = cut.min(stream.len());
            let parts = split(&[&stream[..cut], &stream[cut..]]);
            prop_assert_eq!(&whole, &parts);
            prop_assert_eq!(whole.len(), n);
            for (i, f) in whole.iter().enumerate() {
                let Frame::Message(m) = f else { panic!("frame {i}") };
                let r = parse_request(m).unwrap();
                prop_assert_eq!(r.execute, format!("c{i}"));
            }
        }
    }
}
