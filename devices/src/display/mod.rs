//! Display adapters and the console that viewers read.
//!
//! A display adapter (the standard VGA) implements [`Screen`]: asked to,
//! it brings a [`Frame`] up to date with what it shows and says which
//! rectangles changed. The [`Console`] owns the one current frame and a
//! short history of damage, so several viewers (VNC clients, QMP
//! `screendump`) can each ask "what changed since the frame I last saw"
//! without rendering twice. Input goes the other way: viewers and QMP
//! `send-key` hand keys and pointer moves to the console, which passes
//! them to every [`InputSink`] attached (the i8042's PS/2 keyboard and
//! mouse; a USB keyboard later).

pub mod vga;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A rectangle of pixels, in frame coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }

    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }
}

/// A picture: `width * height` pixels, row by row, each `0x00RRGGBB`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u32>,
}

impl Frame {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width as usize * height as usize],
        }
    }

    /// Changes the size, clearing the picture when it changes.
    pub fn resize(&mut self, width: u32, height: u32) {
        if self.width != width || self.height != height {
            *self = Frame::new(width, height);
        }
    }

    /// The pixels of row `y`.
    pub fn row(&self, y: u32) -> &[u32] {
        let w = self.width as usize;
        let start = y as usize * w;
        self.pixels.get(start..start + w).unwrap_or(&[])
    }

    /// The picture as packed 8-bit R, G, B triples (what PNG and PPM want).
    pub fn to_rgb8(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pixels.len() * 3);
        for p in &self.pixels {
            out.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
        }
        out
    }
}

/// What a refresh changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The size changed (or the picture is new): everything is new.
    Resized,
    /// These rectangles changed (none: the picture is as it was).
    Rects(Vec<Rect>),
}

/// A display adapter's picture.
pub trait Screen: Send {
    /// Brings `frame` up to date with what the adapter shows now (resizing
    /// it when the mode's size changed) and says what changed since the
    /// previous call. `frame` is always the frame the previous call left.
    fn refresh(&mut self, frame: &mut Frame) -> Damage;
}

/// A key, named by its PC scan code set 1 make code; keys that set 1
/// sends with an 0xE0 prefix have `0xE000` added (right Ctrl is
/// `Key(0xE01D)`). Pause, the one key sent with an 0xE1 prefix (and no
/// break code), is `Key(0xE11D)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u16);

impl Key {
    pub fn is_extended(self) -> bool {
        self.0 & 0xff00 == 0xe000
    }
}

/// Pointer buttons, as a bit mask.
pub mod buttons {
    pub const LEFT: u8 = 0x01;
    pub const MIDDLE: u8 = 0x02;
    pub const RIGHT: u8 = 0x04;
    pub const WHEEL_UP: u8 = 0x08;
    pub const WHEEL_DOWN: u8 = 0x10;
}

/// Where keys and pointer events end up (a PS/2 keyboard and mouse, a USB
/// keyboard). Implementations queue and return at once: they are called
/// from viewer and control threads, never from a vCPU.
pub trait InputSink: Send + Sync {
    fn key(&self, key: Key, down: bool);
    /// Nonzero when this keyboard takes the keys away from the others: a
    /// USB keyboard the guest has configured says when (a count that grows
    /// with each configuration), so the latest one wins; see
    /// [`Console::key`].
    fn key_claim(&self) -> u64 {
        0
    }
    /// A relative pointer move (`dy` grows downwards, as on the screen)
    /// with the buttons now held ([`buttons`] bits).
    fn pointer(&self, dx: i32, dy: i32, buttons: u8);
}

/// How many refreshes of damage the console remembers; a viewer further
/// behind gets the whole frame.
const DAMAGE_HISTORY: usize = 64;

#[derive(Default)]
struct Picture {
    frame: Frame,
    /// Incremented by every refresh that changed something.
    serial: u64,
    /// (serial, damage) of the latest refreshes, oldest first.
    history: VecDeque<(u64, Damage)>,
}

/// The machine's console: the current picture and where input goes.
#[derive(Default)]
pub struct Console {
    screen: Mutex<Option<Box<dyn Screen>>>,
    picture: Mutex<Picture>,
    inputs: Mutex<Vec<Arc<dyn InputSink>>>,
    /// Keys held down, with the inputs that got the press: the release
    /// goes to them, even when another keyboard has claimed the keys since.
    held: Mutex<Vec<HeldKey>>,
}

/// A key held down and the inputs its press went to.
type HeldKey = (Key, Vec<Arc<dyn InputSink>>);

impl Console {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Attaches the display adapter whose picture the console shows.
    pub fn set_screen(&self, screen: Box<dyn Screen>) {
        *lock(&self.screen) = Some(screen);
    }

    pub fn has_screen(&self) -> bool {
        lock(&self.screen).is_some()
    }

    /// Adds a device that receives keys and pointer moves.
    pub fn add_input(&self, sink: Arc<dyn InputSink>) {
        lock(&self.inputs).push(sink);
    }

    /// Detaches one input device (a USB keyboard unplugged).
    pub fn remove_input(&self, sink: &Arc<dyn InputSink>) {
        lock(&self.inputs).retain(|s| !Arc::ptr_eq(s, sink));
        for (_, sinks) in lock(&self.held).iter_mut() {
            sinks.retain(|s| !Arc::ptr_eq(s, sink));
        }
    }

    /// Detaches every input device (a machine being torn down for a
    /// reset; the next one adds its own).
    pub fn clear_inputs(&self) {
        lock(&self.inputs).clear();
        lock(&self.held).clear();
    }

    /// Renders what the adapter shows now; returns the picture's serial
    /// (unchanged when nothing changed).
    pub fn refresh(&self) -> u64 {
        let mut screen = lock(&self.screen);
        let mut pic = lock(&self.picture);
        let Some(screen) = screen.as_mut() else {
            return pic.serial;
        };
        let damage = screen.refresh(&mut pic.frame);
        if damage != Damage::Rects(Vec::new()) {
            pic.serial += 1;
            let serial = pic.serial;
            pic.history.push_back((serial, damage));
            while pic.history.len() > DAMAGE_HISTORY {
                pic.history.pop_front();
            }
        }
        pic.serial
    }

    /// Runs `f` on the current frame and its serial.
    pub fn with_frame<R>(&self, f: impl FnOnce(&Frame, u64) -> R) -> R {
        let pic = lock(&self.picture);
        f(&pic.frame, pic.serial)
    }

    /// What changed after the picture with serial `since`: `Resized` when
    /// the size changed since then or it is too old to know.
    pub fn damage_since(&self, since: u64) -> Damage {
        let pic = lock(&self.picture);
        if since == pic.serial {
            return Damage::Rects(Vec::new());
        }
        let oldest_known = pic.history.front().map(|(s, _)| *s);
        match oldest_known {
            Some(oldest) if since < pic.serial && since + 1 >= oldest => {}
            _ => return Damage::Resized,
        }
        let mut rects = Vec::new();
        for (_, damage) in pic.history.iter().filter(|(s, _)| *s > since) {
            match damage {
                Damage::Resized => return Damage::Resized,
                Damage::Rects(r) => rects.extend_from_slice(r),
            }
        }
        Damage::Rects(rects)
    }

    /// Types one key. The USB keyboard the guest configured last gets it
    /// alone; while the guest has configured none, every input gets it
    /// (the PS/2 keyboard, and USB keyboards that drop it until the guest
    /// configures them). So a guest that drives USB keyboards gets each
    /// key once, not also through PS/2 or a second keyboard, and one that
    /// does not still types. A release goes where its press went: a guest
    /// that configures a new keyboard between the two (GRUB's `usb` runs
    /// on the Enter press) would otherwise see the old one hold the key
    /// forever and repeat it.
    pub fn key(&self, key: Key, down: bool) {
        let inputs = lock(&self.inputs);
        let mut held = lock(&self.held);
        let pressed_on = held.iter().position(|(k, _)| *k == key);
        if !down {
            if let Some(i) = pressed_on {
                let (_, sinks) = held.swap_remove(i);
                for sink in sinks {
                    sink.key(key, false);
                }
                return;
            }
        }
        let claim = inputs.iter().map(|s| s.key_claim()).max().unwrap_or(0);
        let chosen: Vec<Arc<dyn InputSink>> = inputs
            .iter()
            .filter(|s| s.key_claim() == claim)
            .cloned()
            .collect();
        for sink in &chosen {
            sink.key(key, down);
        }
        if down {
            if let Some(i) = pressed_on {
                held.swap_remove(i);
            }
            // Bounded: one entry per distinct key held.
            held.push((key, chosen));
        }
    }

    pub fn pointer(&self, dx: i32, dy: i32, buttons: u8) {
        for sink in lock(&self.inputs).iter() {
            sink.pointer(dx, dy, buttons);
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One refresh: the frame's size and the rectangles filled with a colour.
    type Step = (u32, u32, Vec<(Rect, u32)>);

    /// A screen whose picture is a list of scripted changes.
    struct Scripted {
        steps: VecDeque<Step>,
    }

    impl Screen for Scripted {
        fn refresh(&mut self, frame: &mut Frame) -> Damage {
            let Some((w, h, fills)) = self.steps.pop_front() else {
                return Damage::Rects(Vec::new());
            };
            let resized = frame.width != w || frame.height != h;
            frame.resize(w, h);
            let mut rects = Vec::new();
            for (r, colour) in fills {
                for y in r.y..r.y + r.h {
                    for x in r.x..r.x + r.w {
                        frame.pixels[(y * w + x) as usize] = colour;
                    }
                }
                rects.push(r);
            }
            if resized {
                Damage::Resized
            } else {
                Damage::Rects(rects)
            }
        }
    }

    #[test]
    fn viewers_get_the_damage_since_the_frame_they_saw() {
        let console = Console::new();
        assert_eq!(console.refresh(), 0, "no screen: nothing happens");
        let a = Rect::new(0, 0, 2, 2);
        let b = Rect::new(4, 4, 1, 1);
        console.set_screen(Box::new(Scripted {
            steps: VecDeque::from([
                (8, 8, vec![]),
                (8, 8, vec![(a, 0xff0000)]),
                (8, 8, vec![(b, 0x00ff00)]),
                (8, 8, vec![]),
            ]),
        }));
        let s1 = console.refresh();
        assert_eq!(console.damage_since(0), Damage::Resized);
        let s2 = console.refresh();
        let s3 = console.refresh();
        assert_eq!(
            console.refresh(),
            s3,
            "an unchanged picture keeps its serial"
        );
        assert_eq!(console.damage_since(s1), Damage::Rects(vec![a, b]));
        assert_eq!(console.damage_since(s2), Damage::Rects(vec![b]));
        assert_eq!(console.damage_since(s3), Damage::Rects(vec![]));
        console.with_frame(|f, serial| {
            assert_eq!(serial, s3);
            assert_eq!(f.row(0)[..3], [0xff0000, 0xff0000, 0]);
            assert_eq!(f.row(4)[4], 0x00ff00);
            assert_eq!(&f.to_rgb8()[..3], &[0xff, 0, 0]);
        });
    }

    #[test]
    fn a_viewer_too_far_behind_gets_everything() {
        let console = Console::new();
        let mut steps = VecDeque::from([(4, 4, vec![])]);
        for i in 0..(DAMAGE_HISTORY as u32 + 4) {
            steps.push_back((4, 4, vec![(Rect::new(i % 4, 0, 1, 1), i)]));
        }
        console.set_screen(Box::new(Scripted { steps }));
        let first = console.refresh();
        for _ in 0..DAMAGE_HISTORY + 4 {
            console.refresh();
        }
        assert_eq!(console.damage_since(first), Damage::Resized);
        assert_eq!(console.damage_since(u64::MAX), Damage::Resized);
    }

    struct Recorder(Mutex<Vec<(Key, bool)>>);
    impl InputSink for Recorder {
        fn key(&self, key: Key, down: bool) {
            self.0.lock().unwrap().push((key, down));
        }
        fn pointer(&self, _: i32, _: i32, _: u8) {}
    }

    struct Claimer(Recorder, std::sync::atomic::AtomicU64);
    impl InputSink for Claimer {
        fn key(&self, key: Key, down: bool) {
            self.0.key(key, down);
        }
        fn key_claim(&self) -> u64 {
            self.1.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn pointer(&self, _: i32, _: i32, _: u8) {}
    }

    #[test]
    fn the_latest_claiming_keyboard_takes_the_keys_from_the_others() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let console = Console::new();
        let claimer = || Arc::new(Claimer(Recorder(Mutex::new(Vec::new())), AtomicU64::new(0)));
        let ps2 = Arc::new(Recorder(Mutex::new(Vec::new())));
        let (usb1, usb2) = (claimer(), claimer());
        console.add_input(ps2.clone());
        console.add_input(usb1.clone());
        console.add_input(usb2.clone());
        console.key(Key(0x1e), true); // nobody claims: all
        usb1.1.store(5, Ordering::Relaxed);
        console.key(Key(0x1e), false); // where the press went: all
        console.key(Key(0x21), true); // usb1 alone
        console.key(Key(0x21), false);
        usb2.1.store(7, Ordering::Relaxed);
        console.key(Key(0x20), true); // usb2, the later one
        usb2.1.store(0, Ordering::Relaxed);
        console.key(Key(0x20), false); // still usb2, which holds it
        usb1.1.store(0, Ordering::Relaxed);
        console.key(Key(0x30), true); // all
        let got = |r: &Recorder| r.0.lock().unwrap().clone();
        assert_eq!(
            got(&ps2),
            vec![(Key(0x1e), true), (Key(0x1e), false), (Key(0x30), true)]
        );
        assert_eq!(
            got(&usb1.0),
            vec![
                (Key(0x1e), true),
                (Key(0x1e), false),
                (Key(0x21), true),
                (Key(0x21), false),
                (Key(0x30), true)
            ]
        );
        assert_eq!(
            got(&usb2.0),
            vec![
                (Key(0x1e), true),
                (Key(0x1e), false),
                (Key(0x20), true),
                (Key(0x20), false),
                (Key(0x30), true)
            ]
        );
        // A release nobody pressed (a viewer's stray key-up) goes by the
        // claim, as a press would.
        console.key(Key(0x40), false);
        assert_eq!(got(&ps2).last(), Some(&(Key(0x40), false)));
    }

    #[test]
    fn keys_reach_every_sink() {
        let console = Console::new();
        let a = Arc::new(Recorder(Mutex::new(Vec::new())));
        let b = Arc::new(Recorder(Mutex::new(Vec::new())));
        console.add_input(a.clone());
        console.add_input(b.clone());
        console.key(Key(0x1e), true);
        console.key(Key(0xe01d), false);
        assert!(Key(0xe01d).is_extended());
        // An unplugged device gets nothing more; the others carry on.
        let b_sink: Arc<dyn InputSink> = b.clone();
        console.add_input(b_sink.clone());
        console.remove_input(&b_sink);
        console.key(Key(0x30), true);
        assert_eq!(
            *a.0.lock().unwrap(),
            vec![(Key(0x1e), true), (Key(0xe01d), false), (Key(0x30), true)]
        );
        assert_eq!(
            *b.0.lock().unwrap(),
            vec![(Key(0x1e), true), (Key(0xe01d), false)]
        );
    }
}
