//! QMP `send-key`: keys pressed in order, held, released in reverse, as
//! QEMU does. Presses run on a typist thread so the control socket never
//! waits out a hold time; requests queue (bounded) and type one after
//! another, never interleaved.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rehost_devices::display::{Console, Key};
use serde_json::Value;

use super::protocol::{Args, QmpError};

/// `send-key` requests waiting to be typed; more are refused.
pub const MAX_PENDING: usize = 64;
/// Keys in one request (QEMU has no limit; a PC has about 105 keys).
pub const MAX_KEYS: usize = 16;
/// The longest hold time accepted, in milliseconds.
pub const MAX_HOLD_MS: u64 = 10_000;
/// QEMU's default hold time.
const DEFAULT_HOLD_MS: u64 = 100;

struct Chord {
    keys: Vec<Key>,
    hold: Duration,
}

/// The thread that types `send-key` requests into the console.
pub struct Typist {
    console: Arc<Console>,
    queue: Mutex<Option<SyncSender<Chord>>>,
}

impl Typist {
    pub fn new(console: Arc<Console>) -> Self {
        Self {
            console,
            queue: Mutex::new(None),
        }
    }

    fn submit(&self, chord: Chord) -> Result<(), QmpError> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_none() {
            let (tx, rx) = sync_channel::<Chord>(MAX_PENDING);
            let console = self.console.clone();
            std::thread::Builder::new()
                .name("send-key".into())
                .spawn(move || {
                    // Ends when the control state (the sender) goes.
                    for chord in rx {
                        for &k in &chord.keys {
                            console.key(k, true);
                        }
                        std::thread::sleep(chord.hold);
                        for &k in chord.keys.iter().rev() {
                            console.key(k, false);
                        }
                    }
                })
                .map_err(|e| QmpError::generic(format!("cannot start the send-key thread: {e}")))?;
            *q = Some(tx);
        }
        let Some(tx) = q.as_ref() else {
            return Err(QmpError::generic("send-key thread missing"));
        };
        match tx.try_send(chord) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(QmpError::generic(format!(
                "too many send-key requests waiting (at most {MAX_PENDING})"
            ))),
            Err(TrySendError::Disconnected(_)) => {
                *q = None;
                Err(QmpError::generic("the send-key thread ended"))
            }
        }
    }
}

/// One `KeyValue`: `{"type":"qcode","data":NAME}` or
/// `{"type":"number","data":N}`.
fn key_value(v: &Value, index: usize) -> Result<Key, QmpError> {
    let bad = |why: String| QmpError::generic(format!("keys[{index}]: {why}"));
    let obj = v
        .as_object()
        .ok_or_else(|| bad("expected an object with 'type' and 'data'".into()))?;
    let data = obj
        .get("data")
        .ok_or_else(|| bad("'data' is missing".into()))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("qcode") => {
            let name = data
                .as_str()
                .ok_or_else(|| bad("'data' of a qcode must be a string".into()))?;
            crate::keymap::qcode(name)
                .ok_or_else(|| bad(format!("'{name}' is not a key of the PC keyboard")))
        }
        Some("number") => {
            let n = data
                .as_u64()
                .ok_or_else(|| bad("'data' of a number must be a non-negative integer".into()))?;
            crate::keymap::qnum(n).ok_or_else(|| bad(format!("{n} is not a key number")))
        }
        Some(t) => Err(bad(format!("type '{t}' is not 'qcode' or 'number'"))),
        None => Err(bad("'type' is missing".into())),
    }
}

/// `send-key`: checks every argument, then queues the chord.
pub fn send_key(typist: &Typist, a: &Args) -> Result<Value, QmpError> {
    let keys = a
        .opt_array("keys")?
        .ok_or_else(|| QmpError::generic("Parameter 'keys' is missing"))?;
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(QmpError::generic(format!(
            "'keys' must name 1 to {MAX_KEYS} keys, not {}",
            keys.len()
        )));
    }
    let keys = keys
        .iter()
        .enumerate()
        .map(|(i, v)| key_value(v, i))
        .collect::<Result<Vec<_>, _>>()?;
    let hold = a.opt_u64("hold-time")?.unwrap_or(DEFAULT_HOLD_MS);
    if hold > MAX_HOLD_MS {
        return Err(QmpError::generic(format!(
            "'hold-time' {hold} ms is longer than {MAX_HOLD_MS} ms"
        )));
    }
    typist.submit(Chord {
        keys,
        hold: Duration::from_millis(hold),
    })?;
    Ok(Value::Object(Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rehost_devices::display::InputSink;
    use serde_json::json;

    struct Recorder(Mutex<Vec<(Key, bool)>>);
    impl InputSink for Recorder {
        fn key(&self, key: Key, down: bool) {
            self.0.lock().unwrap().push((key, down));
        }
        fn pointer(&self, _: i32, _: i32, _: u8) {}
    }

    fn run(typist: &Typist, args: Value) -> Result<Value, QmpError> {
        let map = args.as_object().unwrap().clone();
        send_key(typist, &Args::new(&map, &["keys", "hold-time"])?)
    }

    #[test]
    fn presses_in_order_and_releases_in_reverse() {
        let console = Console::new();
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        console.add_input(rec.clone());
        let typist = Typist::new(console);
        run(
            &typist,
            json!({"keys": [{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"alt"},
                            {"type":"number","data":0xd3}], "hold-time": 10}),
        )
        .unwrap();
        run(
            &typist,
            json!({"keys": [{"type":"qcode","data":"a"}], "hold-time": 1}),
        )
        .unwrap();
        let want = vec![
            (Key(0x1d), true),
            (Key(0x38), true),
            (Key(0xe053), true),
            (Key(0xe053), false),
            (Key(0x38), false),
            (Key(0x1d), false),
            (Key(0x1e), true),
            (Key(0x1e), false),
        ];
        for _ in 0..200 {
            if rec.0.lock().unwrap().len() == want.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*rec.0.lock().unwrap(), want);
    }

    #[test]
    fn bad_requests_are_refused_by_name() {
        let typist = Typist::new(Console::new());
        let err = |args| run(&typist, args).unwrap_err().to_string();
        assert!(err(json!({})).contains("'keys' is missing"));
        assert!(err(json!({"keys": []})).contains("1 to 16"));
        assert!(err(json!({"keys": [{"type":"qcode","data":"nokey"}]})).contains("'nokey'"));
        assert!(err(json!({"keys": [{"type":"number","data":-1}]})).contains("keys[0]"));
        assert!(err(json!({"keys": [{"type":"x","data":1}]})).contains("type 'x'"));
        assert!(err(json!({"keys": ["a"]})).contains("object"));
        assert!(
            err(json!({"keys": [{"type":"qcode","data":"a"}], "hold-time": 99999}))
                .contains("hold-time")
        );
    }
}
