//! Names of keys as clients send them, mapped to PC keys ([`Key`], the
//! set 1 scan code): QEMU's `QKeyCode` names and key numbers (QMP
//! `send-key`), and X11 keysyms (VNC key events) through the US layout.

use rehost_devices::display::Key;

/// QEMU's `QKeyCode` names (qapi/ui.json) of the keys a PC keyboard has,
/// with their set 1 codes. Sun-only keys (`stop`, `again`, `props`,
/// `undo`, `front`, `copy`, `open`, `paste`, `find`, `cut`, `lf`, `help`)
/// and the Korean `lang1`/`lang2` keys (no break code) are not here.
#[rustfmt::skip]
const QCODES: &[(&str, u16)] = &[
    ("shift", 0x2a), ("shift_r", 0x36), ("alt", 0x38), ("alt_r", 0xe038),
    ("ctrl", 0x1d), ("ctrl_r", 0xe01d), ("menu", 0xe05d), ("compose", 0xe05d),
    ("esc", 0x01),
    ("1", 0x02), ("2", 0x03), ("3", 0x04), ("4", 0x05), ("5", 0x06),
    ("6", 0x07), ("7", 0x08), ("8", 0x09), ("9", 0x0a), ("0", 0x0b),
    ("minus", 0x0c), ("equal", 0x0d), ("backspace", 0x0e), ("tab", 0x0f),
    ("q", 0x10), ("w", 0x11), ("e", 0x12), ("r", 0x13), ("t", 0x14),
    ("y", 0x15), ("u", 0x16), ("i", 0x17), ("o", 0x18), ("p", 0x19),
    ("bracket_left", 0x1a), ("bracket_right", 0x1b), ("ret", 0x1c),
    ("a", 0x1e), ("s", 0x1f), ("d", 0x20), ("f", 0x21), ("g", 0x22),
    ("h", 0x23), ("j", 0x24), ("k", 0x25), ("l", 0x26),
    ("semicolon", 0x27), ("apostrophe", 0x28), ("grave_accent", 0x29),
    ("backslash", 0x2b),
    ("z", 0x2c), ("x", 0x2d), ("c", 0x2e), ("v", 0x2f), ("b", 0x30),
    ("n", 0x31), ("m", 0x32), ("comma", 0x33), ("dot", 0x34), ("slash", 0x35),
    ("asterisk", 0x37), ("spc", 0x39), ("caps_lock", 0x3a),
    ("f1", 0x3b), ("f2", 0x3c), ("f3", 0x3d), ("f4", 0x3e), ("f5", 0x3f),
    ("f6", 0x40), ("f7", 0x41), ("f8", 0x42), ("f9", 0x43), ("f10", 0x44),
    ("num_lock", 0x45), ("scroll_lock", 0x46),
    ("kp_divide", 0xe035), ("kp_multiply", 0x37), ("kp_subtract", 0x4a),
    ("kp_add", 0x4e), ("kp_enter", 0xe01c), ("kp_decimal", 0x53),
    ("sysrq", 0x54),
    ("kp_0", 0x52), ("kp_1", 0x4f), ("kp_2", 0x50), ("kp_3", 0x51),
    ("kp_4", 0x4b), ("kp_5", 0x4c), ("kp_6", 0x4d), ("kp_7", 0x47),
    ("kp_8", 0x48), ("kp_9", 0x49),
    ("less", 0x56), ("f11", 0x57), ("f12", 0x58), ("print", 0xe037),
    ("home", 0xe047), ("pgup", 0xe049), ("pgdn", 0xe051), ("end", 0xe04f),
    ("left", 0xe04b), ("up", 0xe048), ("down", 0xe050), ("right", 0xe04d),
    ("insert", 0xe052), ("delete", 0xe053),
    ("meta_l", 0xe05b), ("meta_r", 0xe05c), ("pause", 0xe11d),
    ("ro", 0x73), ("katakanahiragana", 0x70), ("henkan", 0x79),
    ("muhenkan", 0x7b), ("yen", 0x7d), ("kp_comma", 0x7e), ("kp_equals", 0x59),
    ("power", 0xe05e), ("sleep", 0xe05f), ("wake", 0xe063),
    ("audionext", 0xe019), ("audioprev", 0xe010), ("audiostop", 0xe024),
    ("audioplay", 0xe022), ("audiomute", 0xe020), ("volumeup", 0xe030),
    ("volumedown", 0xe02e), ("mediaselect", 0xe06d), ("mail", 0xe06c),
    ("calculator", 0xe021), ("computer", 0xe06b), ("ac_home", 0xe032),
    ("ac_back", 0xe06a), ("ac_forward", 0xe069), ("ac_refresh", 0xe067),
    ("ac_bookmarks", 0xe066),
    ("f13", 0x64), ("f14", 0x65), ("f15", 0x66), ("f16", 0x67), ("f17", 0x68),
    ("f18", 0x69), ("f19", 0x6a), ("f20", 0x6b), ("f21", 0x6c), ("f22", 0x6d),
    ("f23", 0x6e), ("f24", 0x76),
];

/// The key QEMU calls `name`.
pub fn qcode(name: &str) -> Option<Key> {
    QCODES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, c)| Key(c))
}

/// The key of a QEMU key number: the set 1 make code, with 0x80 set for
/// the 0xE0-prefixed keys (Pause is 0xC6, Ctrl+Break's code).
pub fn qnum(n: u64) -> Option<Key> {
    let n = u16::try_from(n).ok().filter(|&n| n > 0 && n < 0x100)?;
    let key = match n {
        0xc6 => Key(0xe11d),
        n if n & 0x80 != 0 => Key(0xe000 | (n & 0x7f)),
        n => Key(n),
    };
    Some(key)
}

/// A key a keysym types, and whether the US layout needs Shift for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Typed {
    pub key: Key,
    pub shift: bool,
}

/// The US layout's printable characters: unshifted, shifted, key.
#[rustfmt::skip]
const US_PRINTABLE: &[(u8, u8, u16)] = &[
    (b'1', b'!', 0x02), (b'2', b'@', 0x03), (b'3', b'#', 0x04), (b'4', b'$', 0x05),
    (b'5', b'%', 0x06), (b'6', b'^', 0x07), (b'7', b'&', 0x08), (b'8', b'*', 0x09),
    (b'9', b'(', 0x0a), (b'0', b')', 0x0b), (b'-', b'_', 0x0c), (b'=', b'+', 0x0d),
    (b'q', b'Q', 0x10), (b'w', b'W', 0x11), (b'e', b'E', 0x12), (b'r', b'R', 0x13),
    (b't', b'T', 0x14), (b'y', b'Y', 0x15), (b'u', b'U', 0x16), (b'i', b'I', 0x17),
    (b'o', b'O', 0x18), (b'p', b'P', 0x19), (b'[', b'{', 0x1a), (b']', b'}', 0x1b),
    (b'a', b'A', 0x1e), (b's', b'S', 0x1f), (b'd', b'D', 0x20), (b'f', b'F', 0x21),
    (b'g', b'G', 0x22), (b'h', b'H', 0x23), (b'j', b'J', 0x24), (b'k', b'K', 0x25),
    (b'l', b'L', 0x26), (b';', b':', 0x27), (b'\'', b'"', 0x28), (b'`', b'~', 0x29),
    (b'\\', b'|', 0x2b), (b'z', b'Z', 0x2c), (b'x', b'X', 0x2d), (b'c', b'C', 0x2e),
    (b'v', b'V', 0x2f), (b'b', b'B', 0x30), (b'n', b'N', 0x31), (b'm', b'M', 0x32),
    (b',', b'<', 0x33), (b'.', b'>', 0x34), (b'/', b'?', 0x35), (b' ', b' ', 0x39),
];

/// X11 keysyms of the non-printing keys (X11 keysymdef.h).
#[rustfmt::skip]
const KEYSYMS: &[(u32, u16)] = &[
    (0xff08, 0x0e), (0xff09, 0x0f), (0xff0d, 0x1c), (0xff1b, 0x01),
    (0xff13, 0xe11d), (0xff14, 0x46), (0xff15, 0x54), (0xff61, 0xe037),
    (0xff50, 0xe047), (0xff51, 0xe04b), (0xff52, 0xe048), (0xff53, 0xe04d),
    (0xff54, 0xe050), (0xff55, 0xe049), (0xff56, 0xe051), (0xff57, 0xe04f),
    (0xff63, 0xe052), (0xffff, 0xe053), (0xff67, 0xe05d), (0xff7f, 0x45),
    (0xffe1, 0x2a), (0xffe2, 0x36), (0xffe3, 0x1d), (0xffe4, 0xe01d),
    (0xffe5, 0x3a), (0xffe7, 0xe05b), (0xffe8, 0xe05c), (0xffe9, 0x38),
    (0xffea, 0xe038), (0xfe03, 0xe038), (0xffeb, 0xe05b), (0xffec, 0xe05c),
    // Keypad.
    (0xff8d, 0xe01c), (0xffaa, 0x37), (0xffab, 0x4e), (0xffad, 0x4a),
    (0xffae, 0x53), (0xffaf, 0xe035), (0xffac, 0x7e), (0xffbd, 0x59),
    (0xffb0, 0x52), (0xffb1, 0x4f), (0xffb2, 0x50), (0xffb3, 0x51),
    (0xffb4, 0x4b), (0xffb5, 0x4c), (0xffb6, 0x4d), (0xffb7, 0x47),
    (0xffb8, 0x48), (0xffb9, 0x49),
    (0xff95, 0x47), (0xff96, 0x4b), (0xff97, 0x48), (0xff98, 0x4d),
    (0xff99, 0x50), (0xff9a, 0x49), (0xff9b, 0x51), (0xff9c, 0x4f),
    (0xff9d, 0x4c), (0xff9e, 0x52), (0xff9f, 0x53),
    // F1 to F12.
    (0xffbe, 0x3b), (0xffbf, 0x3c), (0xffc0, 0x3d), (0xffc1, 0x3e),
    (0xffc2, 0x3f), (0xffc3, 0x40), (0xffc4, 0x41), (0xffc5, 0x42),
    (0xffc6, 0x43), (0xffc7, 0x44), (0xffc8, 0x57), (0xffc9, 0x58),
];

/// What an X11 keysym types on a US keyboard.
pub fn keysym(sym: u32) -> Option<Typed> {
    if let Ok(c) = u8::try_from(sym) {
        if let Some(&(plain, shifted, code)) =
            US_PRINTABLE.iter().find(|&&(p, s, _)| p == c || s == c)
        {
            return Some(Typed {
                key: Key(code),
                shift: c == shifted && c != plain,
            });
        }
    }
    KEYSYMS
        .iter()
        .find(|&&(s, _)| s == sym)
        .map(|&(_, code)| Typed {
            key: Key(code),
            shift: false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rehost_devices::legacy::scancode::set2_bytes;

    #[test]
    fn every_qcode_and_keysym_is_a_key_the_keyboard_sends() {
        for (name, code) in QCODES {
            assert!(!set2_bytes(Key(*code), true).is_empty(), "{name}");
        }
        for (sym, code) in KEYSYMS {
            assert!(!set2_bytes(Key(*code), true).is_empty(), "{sym:#x}");
        }
        assert_eq!(qcode("ret"), Some(Key(0x1c)));
        assert_eq!(qcode("ctrl_r"), Some(Key(0xe01d)));
        assert_eq!(qcode("nope"), None);
        assert_eq!(qnum(0x1e), Some(Key(0x1e)));
        assert_eq!(qnum(0xc8), Some(Key(0xe048)));
        assert_eq!(qnum(0xc6), Some(Key(0xe11d)));
        assert_eq!(qnum(0), None);
        assert_eq!(qnum(0x1_0000_001e), None);
    }

    #[test]
    fn keysyms_through_the_us_layout() {
        let t = |k, s| {
            Some(Typed {
                key: Key(k),
                shift: s,
            })
        };
        assert_eq!(keysym(u32::from(b'a')), t(0x1e, false));
        assert_eq!(keysym(u32::from(b'A')), t(0x1e, true));
        assert_eq!(keysym(u32::from(b'!')), t(0x02, true));
        assert_eq!(keysym(u32::from(b'/')), t(0x35, false));
        assert_eq!(keysym(u32::from(b' ')), t(0x39, false));
        assert_eq!(keysym(0xff0d), t(0x1c, false));
        assert_eq!(keysym(0xff52), t(0xe048, false));
        assert_eq!(keysym(0x20ac), None); // the euro sign: no US key
    }
}
