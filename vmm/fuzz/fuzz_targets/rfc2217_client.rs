//! The RFC 2217 client fed what a hostile server might send, interleaved
//! with the guest changing its line settings: no panic, answers bounded
//! by what came in, never more data for the guest than bytes received.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost::serial::rfc2217::{Client, Event, LineState};
use rehost_devices::serial::{LineParams, ModemControl, Parity};

fn state(b: u8) -> LineState {
    LineState {
        params: LineParams {
            baud: 115_200 / u32::from(b.max(1)),
            data_bits: 5 + (b & 3),
            parity: match (b >> 2) & 7 {
                0 => Parity::None,
                1 => Parity::Odd,
                2 => Parity::Even,
                3 => Parity::Mark,
                _ => Parity::Space,
            },
            stop_bits: 1 + ((b >> 5) & 1),
        },
        control: ModemControl {
            dtr: b & 0x40 != 0,
            rts: b & 0x80 != 0,
        },
        brk: b & 0x20 != 0,
    }
}

fuzz_target!(|input: &[u8]| {
    let mut client = Client::new(state(12));
    let mut wire = Vec::new();
    client.connected(state(12), &mut wire);
    // The input is a list of records: a length byte L, then either
    // L bytes from the server (L < 0xf0) or one guest setting change.
    let mut rest = input;
    while let Some((&len, tail)) = rest.split_first() {
        if len >= 0xf0 {
            let Some((&b, tail)) = tail.split_first() else {
                break;
            };
            let before = wire.len();
            let s = state(b);
            match len & 3 {
                0 => client.set_line_params(s.params, &mut wire),
                1 => client.set_modem_control(s.control, &mut wire),
                2 => client.set_break(s.brk, &mut wire),
                _ => client.send_data(&[b, 0xff, b'\r'], &mut wire),
            }
            // At most the four line commands (escaped).
            assert!(wire.len() - before <= 64);
            rest = tail;
            continue;
        }
        let n = usize::from(len).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        let before = wire.len();
        let mut events = Vec::new();
        client.receive(chunk, &mut events, &mut wire);
        let data: usize = events
            .iter()
            .map(|e| match e {
                Event::Data(d) => d.len(),
                _ => 0,
            })
            .sum();
        assert!(data <= chunk.len());
        // Each 3-byte negotiation may make the full settings go out
        // (about 80 bytes); each 6-byte signature request a 20-byte answer.
        assert!(
            wire.len() - before <= 128 + 40 * chunk.len(),
            "{} wire bytes for {} in",
            wire.len() - before,
            chunk.len()
        );
        rest = tail;
    }
});
