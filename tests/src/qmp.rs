//! A minimal QMP client for the tests: raw JSON over the Unix socket, so a
//! test sees exactly what rehost sends, events included.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Starts `bin` with `args` and `--qmp SOCKET`, the socket in a short
/// directory of its own (Unix socket paths are limited to 107 bytes;
/// target/ may be deep), which lives as long as the returned `TempDir`.
pub fn start_with_qmp(
    bin: &str,
    args: &[&str],
) -> (tempfile::TempDir, std::path::PathBuf, crate::Running) {
    let dir = tempfile::Builder::new()
        .prefix("rehost-qmp")
        .tempdir()
        .expect("creating a socket directory");
    let sock = dir.path().join("vm.sock");
    let sock_arg = sock.to_str().expect("a UTF-8 temporary path").to_owned();
    let mut all = args.to_vec();
    all.extend(["--qmp", &sock_arg]);
    let run = crate::Running::start(bin, &all);
    (dir, sock, run)
}

/// Waits until `path` accepts connections (rehost creates it at start).
pub fn wait_for_socket(path: &Path, timeout: Duration) -> UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "{}: no control socket after {timeout:?}: {e}",
                    path.display()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received so far, in order.
    pub events: Vec<Value>,
    pub greeting: Value,
}

impl Qmp {
    /// Connects (waiting for the socket), reads the greeting and, if
    /// `negotiate`, sends `qmp_capabilities`.
    pub fn connect(path: &Path, negotiate: bool) -> Self {
        let s = wait_for_socket(path, Duration::from_secs(30));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut q = Self {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            events: Vec::new(),
            greeting: Value::Null,
        };
        q.greeting = q.read().expect("a greeting");
        assert!(q.greeting.get("QMP").is_some(), "{}", q.greeting);
        if negotiate {
            let r = q.execute("qmp_capabilities", None);
            assert_eq!(r, json!({"return": {}}), "negotiation");
        }
        q
    }

    /// The next message, or `None` at end of stream.
    pub fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("rehost sent non-JSON {line:?}: {e}")),
            ),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("writing to the socket");
    }

    /// Sends bytes the server may refuse part of (it may close first).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// The next reply (events before it are kept in `events`).
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.read().expect("a reply before the socket closed");
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    /// Sends a command and returns the whole reply object.
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Value {
        let mut req = json!({ "execute": cmd });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        let mut bytes = serde_json::to_vec(&req).unwrap();
        bytes.push(b'\n');
        self.send_raw(&bytes);
        self.reply()
    }

    /// Sends a command that must succeed and returns its `return` value.
    pub fn ok(&mut self, cmd: &str, args: Option<Value>) -> Value {
        let r = self.execute(cmd, args);
        r.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{cmd} failed: {r}"))
    }

    /// Waits for an event named `name` (already received or new).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.writer
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.read() {
                Some(v) => self.events.push(v),
                None => panic!(
                    "no {name} event within {timeout:?} (or the socket closed); got {:?}",
                    self.events
                ),
            }
        }
    }

    /// Reads until the peer closes; returns what arrived.
    pub fn drain_to_end(&mut self, timeout: Duration) -> Vec<u8> {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        rest
    }
}

/// The `class` of an error reply; panics on any other message.
pub fn error_class(r: &Value) -> &str {
    r["error"]["class"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {r}"))
}

/// Sends `quit` through `q`; `run` must then exit 0 within `timeout`.
pub fn quit(q: &mut Qmp, run: &mut crate::Running, timeout: Duration) {
    assert_eq!(q.ok("quit", None), json!({}));
    run.expect_exit(0, timeout);
}

/// QEMU qcodes (and whether Shift goes with it) that type `c` on a US
/// keyboard.
fn qcode_of(c: char) -> (bool, String) {
    match c {
        'a'..='z' | '0'..='9' => (false, c.to_string()),
        'A'..='Z' => (true, c.to_ascii_lowercase().to_string()),
        ' ' => (false, "spc".into()),
        '\n' => (false, "ret".into()),
        '-' => (false, "minus".into()),
        '$' => (true, "4".into()),
        '{' => (true, "bracket_left".into()),
        '}' => (true, "bracket_right".into()),
        _ => panic!("no qcode for {c:?}"),
    }
}

/// Types `text` through `send-key`, one request per character.
pub fn send_text(q: &mut Qmp, text: &str) {
    for c in text.chars() {
        let (shift, code) = qcode_of(c);
        let mut keys = Vec::new();
        if shift {
            keys.push(json!({"type": "qcode", "data": "shift"}));
        }
        keys.push(json!({"type": "qcode", "data": code}));
        q.ok("send-key", Some(json!({"keys": keys, "hold-time": 30})));
    }
}
