//! PC keyboard scan codes: set 1 (what the XT sent, and what an 8042
//! hands the CPU when its translate bit is set) and set 2 (what an AT/PS/2
//! keyboard sends by default). The tables follow the IBM PC AT technical
//! reference's key numbering; [`Key`] names a key by its set 1 code.

use crate::display::Key;

/// Set 2 make codes of the keys whose set 1 code is the index (the low
/// byte for 0xE0-prefixed keys, which keep the prefix in both sets). 0:
/// no key.
#[rustfmt::skip]
const SET1_TO_SET2: [u8; 0x80] = [
    // 0x00
    0x00, 0x76, 0x16, 0x1e, 0x26, 0x25, 0x2e, 0x36,
    0x3d, 0x3e, 0x46, 0x45, 0x4e, 0x55, 0x66, 0x0d,
    // 0x10
    0x15, 0x1d, 0x24, 0x2d, 0x2c, 0x35, 0x3c, 0x43,
    0x44, 0x4d, 0x54, 0x5b, 0x5a, 0x14, 0x1c, 0x1b,
    // 0x20
    0x23, 0x2b, 0x34, 0x33, 0x3b, 0x42, 0x4b, 0x4c,
    0x52, 0x0e, 0x12, 0x5d, 0x1a, 0x22, 0x21, 0x2a,
    // 0x30
    0x32, 0x31, 0x3a, 0x41, 0x49, 0x4a, 0x59, 0x7c,
    0x11, 0x29, 0x58, 0x05, 0x06, 0x04, 0x0c, 0x03,
    // 0x40
    0x0b, 0x83, 0x0a, 0x01, 0x09, 0x77, 0x7e, 0x6c,
    0x75, 0x7d, 0x7b, 0x6b, 0x73, 0x74, 0x79, 0x69,
    // 0x50
    0x72, 0x7a, 0x70, 0x71, 0x84, 0x00, 0x61, 0x78,
    0x07, 0x0f, 0x00, 0x1f, 0x27, 0x2f, 0x37, 0x3f,
    // 0x60
    0x00, 0x00, 0x00, 0x5e, 0x08, 0x10, 0x18, 0x20,
    0x28, 0x30, 0x38, 0x40, 0x48, 0x50, 0x57, 0x00,
    // 0x70
    0x13, 0x00, 0x00, 0x51, 0x00, 0x00, 0x5f, 0x00,
    0x00, 0x64, 0x00, 0x67, 0x00, 0x6a, 0x6d, 0x00,
];

/// The set 2 bytes one key press (`down`) or release sends; empty for a
/// key set 2 does not have. Print Screen comes with its fake left shift
/// (E0 12 E0 7C); Pause sends its whole E1 sequence on press and nothing
/// on release.
pub fn set2_bytes(key: Key, down: bool) -> Vec<u8> {
    const PRINT_SCREEN: u16 = 0xe037;
    const PAUSE: u16 = 0xe11d;
    match key.0 {
        PAUSE if down => vec![0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77],
        PAUSE => Vec::new(),
        PRINT_SCREEN if down => vec![0xe0, 0x12, 0xe0, 0x7c],
        PRINT_SCREEN => vec![0xe0, 0xf0, 0x7c, 0xe0, 0xf0, 0x12],
        code => {
            let extended = match code & 0xff00 {
                0 => false,
                0xe000 => true,
                _ => return Vec::new(),
            };
            let low = (code & 0xff) as usize;
            let Some(&set2) = SET1_TO_SET2.get(low).filter(|&&c| c != 0) else {
                return Vec::new();
            };
            let mut out = Vec::with_capacity(3);
            if extended {
                out.push(0xe0);
            }
            if !down {
                out.push(0xf0);
            }
            out.push(set2);
            out
        }
    }
}

/// The set 1 bytes one key press or release sends (what a keyboard set
/// to scan code set 1 sends itself).
pub fn set1_bytes(key: Key, down: bool) -> Vec<u8> {
    match key.0 {
        0xe11d if down => vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5],
        0xe11d => Vec::new(),
        0xe037 if down => vec![0xe0, 0x2a, 0xe0, 0x37],
        0xe037 => vec![0xe0, 0xb7, 0xe0, 0xaa],
        code => {
            if set2_bytes(key, down).is_empty() {
                return Vec::new();
            }
            let low = (code & 0x7f) as u8 | if down { 0 } else { 0x80 };
            if key.is_extended() {
                vec![0xe0, low]
            } else {
                vec![low]
            }
        }
    }
}

/// What the 8042 hands the CPU for one set 2 byte when translating (the
/// inverse of [`SET1_TO_SET2`]); bytes no key of ours sends pass as they
/// are.
pub fn translate_byte(set2: u8) -> u8 {
    match set2 {
        0xe0 | 0xe1 => set2,
        _ => SET1_TO_SET2
            .iter()
            .position(|&c| c == set2 && c != 0)
            .map_or(set2, |i| i as u8),
    }
}

/// Translates a run of set 2 bytes to set 1 as the 8042 does: an F0
/// (break) prefix is swallowed and sets bit 7 of the byte after it.
pub fn translate(set2: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(set2.len());
    let mut release = false;
    for &b in set2 {
        if b == 0xf0 {
            release = true;
            continue;
        }
        let t = translate_byte(b);
        out.push(if release { t | 0x80 } else { t });
        release = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set2_codes_of_well_known_keys() {
        assert_eq!(set2_bytes(Key(0x1e), true), [0x1c]); // A
        assert_eq!(set2_bytes(Key(0x1e), false), [0xf0, 0x1c]);
        assert_eq!(set2_bytes(Key(0x1c), true), [0x5a]); // Enter
        assert_eq!(set2_bytes(Key(0x41), true), [0x83]); // F7
        assert_eq!(set2_bytes(Key(0xe048), true), [0xe0, 0x75]); // Up
        assert_eq!(set2_bytes(Key(0xe01d), false), [0xe0, 0xf0, 0x14]); // RCtrl
        assert_eq!(set2_bytes(Key(0xe05b), true), [0xe0, 0x1f]); // LWin
        assert!(set2_bytes(Key(0x55), true).is_empty());
        assert!(set2_bytes(Key(0x1234), true).is_empty());
        assert!(set2_bytes(Key(0xe11d), false).is_empty());
    }

    #[test]
    fn translation_gives_back_set_1() {
        // Every key with a set 2 code translates to its set 1 bytes.
        for code in (0u16..0x80).chain(0xe000..0xe080).chain([0xe11d]) {
            for down in [true, false] {
                let key = Key(code);
                assert_eq!(
                    translate(&set2_bytes(key, down)),
                    set1_bytes(key, down),
                    "key {code:#x} down {down}"
                );
            }
        }
        assert_eq!(
            translate(&set2_bytes(Key(0xe037), false)),
            [0xe0, 0xb7, 0xe0, 0xaa]
        );
        assert_eq!(
            translate(&set2_bytes(Key(0xe11d), true)),
            [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]
        );
    }
}
