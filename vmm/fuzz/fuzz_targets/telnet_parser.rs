//! Telnet framing on arbitrary bytes: no panic, the same items however
//! the input is cut into reads, and escaped data parses back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehost::serial::telnet::{escape_data, Item, Parser, MAX_SUBNEGOTIATION};

/// Items with adjacent data runs joined (a cut may split one).
fn joined(items: Vec<Item>) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    for item in items {
        match (out.last_mut(), item) {
            (Some(Item::Data(a)), Item::Data(b)) => a.extend_from_slice(&b),
            (_, item) => out.push(item),
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    let binary = ctl & 1 != 0;
    let mut whole = Parser::new();
    whole.peer_binary = binary;
    let mut expected = Vec::new();
    whole.feed(data, &mut expected);
    for item in &expected {
        if let Item::Subnegotiation { payload, .. } = item {
            assert!(payload.len() <= MAX_SUBNEGOTIATION);
        }
    }
    let data_in: usize = expected
        .iter()
        .map(|i| match i {
            Item::Data(d) => d.len(),
            _ => 0,
        })
        .sum();
    assert!(data_in <= data.len());

    // Cut into reads of varying size (from the control byte).
    let mut cut = Parser::new();
    cut.peer_binary = binary;
    let mut items = Vec::new();
    let step = usize::from(ctl >> 1).max(1);
    for chunk in data.chunks(step) {
        cut.feed(chunk, &mut items);
    }
    assert_eq!(joined(items), joined(expected));

    // Any data escaped for the wire parses back to itself.
    let mut wire = Vec::new();
    escape_data(data, binary, &mut wire);
    let mut p = Parser::new();
    p.peer_binary = binary;
    let mut back = Vec::new();
    p.feed(&wire, &mut back);
    let back = joined(back);
    if data.is_empty() {
        assert!(back.is_empty());
    } else {
        assert_eq!(back, vec![Item::Data(data.to_vec())]);
    }
});
