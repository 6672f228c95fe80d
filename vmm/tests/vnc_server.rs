//! The VNC server against RFB clients: a small one written here (both
//! security types, a wrong password, pixel formats, zlib, 8 viewers at
//! once, viewers that send garbage, flood or vanish mid-update) and
//! Debian's `vncsnapshot`. The console shows a test pattern that changes
//! on every refresh, so updates keep coming.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rehost::vnc::protocol::vnc_auth_response;
use rehost::vnc::{VncOptions, VncServer};
use rehost_devices::display::{Console, Damage, Frame, InputSink, Key, Rect, Screen};

const W: u32 = 64;
const H: u32 = 48;

/// The colour of pixel (x, y) in picture number `n`.
fn pattern(x: u32, y: u32, n: u32) -> u32 {
    ((x * 4) << 16) | ((y * 5) << 8) | (n & 0xff)
}

/// A screen whose picture changes one row per refresh (the row moves).
struct Pattern {
    n: Arc<AtomicU32>,
}

impl Screen for Pattern {
    fn refresh(&mut self, frame: &mut Frame) -> Damage {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        if frame.width != W || frame.height != H {
            frame.resize(W, H);
            for y in 0..H {
                for x in 0..W {
                    frame.pixels[(y * W + x) as usize] = pattern(x, y, 0);
                }
            }
            return Damage::Resized;
        }
        let y = n % H;
        for x in 0..W {
            frame.pixels[(y * W + x) as usize] = pattern(x, y, n);
        }
        Damage::Rects(vec![Rect::new(0, y, W, 1)])
    }
}

struct Keys(Mutex<Vec<(Key, bool)>>);
impl InputSink for Keys {
    fn key(&self, key: Key, down: bool) {
        self.0.lock().unwrap().push((key, down));
    }
    fn pointer(&self, _: i32, _: i32, _: u8) {}
}

fn server(password: Option<&str>) -> (VncServer, Arc<Console>, Arc<Keys>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let console = Console::new();
    console.set_screen(Box::new(Pattern {
        n: Arc::new(AtomicU32::new(0)),
    }));
    console.refresh();
    let keys = Arc::new(Keys(Mutex::new(Vec::new())));
    console.add_input(keys.clone());
    let pw_file = password.map(|p| {
        let f = dir.path().join("pw");
        std::fs::write(&f, format!("{p}\n")).unwrap();
        f
    });
    let opts = VncOptions::parse("127.0.0.1:0", pw_file.as_deref(), false).unwrap();
    let server = VncServer::start(&opts, console.clone()).unwrap();
    (server, console, keys, dir)
}

struct Client {
    s: TcpStream,
}

impl Client {
    fn connect(server: &VncServer) -> Self {
        let s = TcpStream::connect(("127.0.0.1", server.port.unwrap())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s }
    }

    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_n(4).try_into().unwrap())
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_n(2).try_into().unwrap())
    }

    /// The 3.8 handshake up to the SecurityResult; `password` answers
    /// VNC Authentication. Returns the result (0: OK).
    fn security(&mut self, password: Option<&str>) -> u32 {
        assert_eq!(self.read_n(12), b"RFB 003.008\n");
        self.s.write_all(b"RFB 003.008\n").unwrap();
        let n = self.read_n(1)[0];
        let types = self.read_n(usize::from(n));
        match password {
            None => {
                assert_eq!(types, [1]);
                self.s.write_all(&[1]).unwrap();
            }
            Some(p) => {
                assert_eq!(types, [2]);
                self.s.write_all(&[2]).unwrap();
                let challenge: [u8; 16] = self.read_n(16).try_into().unwrap();
                self.s
                    .write_all(&vnc_auth_response(p.as_bytes(), &challenge))
                    .unwrap();
            }
        }
        self.u32()
    }

    /// ClientInit (shared) and ServerInit: the size.
    fn init(&mut self) -> (u16, u16) {
        self.s.write_all(&[1]).unwrap();
        let w = self.u16();
        let h = self.u16();
        let pf = self.read_n(16);
        assert_eq!(pf[0], 32, "32 bits per pixel");
        let name = self.u32() as usize;
        assert_eq!(self.read_n(name), b"rehost");
        (w, h)
    }

    fn login(server: &VncServer, password: Option<&str>) -> Self {
        let mut c = Self::connect(server);
        assert_eq!(c.security(password), 0);
        assert_eq!(c.init(), (W as u16, H as u16));
        c
    }

    fn set_encodings(&mut self, list: &[i32]) {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(list.len() as u16).to_be_bytes());
        for e in list {
            m.extend_from_slice(&e.to_be_bytes());
        }
        self.s.write_all(&m).unwrap();
    }

    fn request(&mut self, incremental: bool) {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&(W as u16).to_be_bytes());
        m.extend_from_slice(&(H as u16).to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    /// Reads one FramebufferUpdate of raw 32-bit little-endian rects into
    /// `picture`; returns the rects.
    fn update(&mut self, picture: &mut [u32]) -> Vec<(u16, u16, u16, u16)> {
        assert_eq!(self.read_n(1), [0], "FramebufferUpdate");
        self.read_n(1);
        let n = self.u16();
        let mut rects = Vec::new();
        for _ in 0..n {
            let (x, y, w, h) = (self.u16(), self.u16(), self.u16(), self.u16());
            let enc = self.u32() as i32;
            assert_eq!(enc, 0, "raw");
            let data = self.read_n(usize::from(w) * usize::from(h) * 4);
            for row in 0..h {
                for col in 0..w {
                    let i = (usize::from(row) * usize::from(w) + usize::from(col)) * 4;
                    let p = u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
                    picture[(u32::from(y + row) * W + u32::from(x + col)) as usize] = p;
                }
            }
            rects.push((x, y, w, h));
        }
        rects
    }

    fn key(&mut self, down: bool, keysym: u32) {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }
}

/// The console's picture right now.
fn console_picture(console: &Console) -> Vec<u32> {
    console.with_frame(|f, _| f.pixels.clone())
}

/// True once `f` holds, polling for up to 10 s.
fn eventually(f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn a_viewer_sees_the_console_and_follows_its_changes() {
    let (server, console, _, _dir) = server(None);
    let mut c = Client::login(&server, None);
    let mut picture = vec![0u32; (W * H) as usize];
    c.request(false);
    let rects = c.update(&mut picture);
    assert_eq!(rects, [(0, 0, W as u16, H as u16)]);
    // The pattern changes a row per refresh: incremental updates carry
    // only changed rows, and the picture built from them is the console's.
    for _ in 0..5 {
        c.request(true);
        let rects = c.update(&mut picture);
        assert!(!rects.is_empty() && rects.iter().all(|r| r.2 == W as u16 && r.3 < H as u16));
    }
    // Stop the console moving, then one full picture must equal it.
    console.set_screen(Box::new(Still));
    console.refresh();
    c.request(false);
    c.update(&mut picture);
    assert_eq!(picture, console_picture(&console));
}

/// A screen that no longer changes.
struct Still;
impl Screen for Still {
    fn refresh(&mut self, _: &mut Frame) -> Damage {
        Damage::Rects(Vec::new())
    }
}

#[test]
fn zlib_and_other_pixel_formats_decode_to_the_console_picture() {
    let (server, console, _, _dir) = server(None);
    console.set_screen(Box::new(Still));
    let mut c = Client::login(&server, None);
    // 16-bit big-endian RGB565, zlib.
    let m = vec![
        0, 0, 0, 0, 16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0,
    ];
    c.s.write_all(&m).unwrap();
    c.set_encodings(&[6, 0]);
    c.request(false);
    assert_eq!(c.read_n(2), [0, 0]);
    assert_eq!(c.u16(), 1);
    assert_eq!(
        (c.u16(), c.u16(), c.u16(), c.u16()),
        (0, 0, W as u16, H as u16)
    );
    assert_eq!(c.u32(), 6, "zlib");
    let len = c.u32() as usize;
    let packed = c.read_n(len);
    let mut d = flate2::Decompress::new(true);
    // One sync-flushed zlib stream per connection (RFC 6143 7.7.3).
    let mut raw = Vec::with_capacity(W as usize * H as usize * 2 + 16);
    d.decompress_vec(&packed, &mut raw, flate2::FlushDecompress::Sync)
        .unwrap();
    assert_eq!(raw.len(), (W * H * 2) as usize);
    let want: Vec<u8> = console_picture(&console)
        .iter()
        .flat_map(|p| {
            let (r, g, b) = ((p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff);
            let v = (((r * 31 + 127) / 255) << 11)
                | (((g * 63 + 127) / 255) << 5)
                | ((b * 31 + 127) / 255);
            (v as u16).to_be_bytes()
        })
        .collect();
    assert_eq!(raw, want);
}

#[test]
fn vnc_authentication_accepts_the_password_and_refuses_others() {
    let (server, _, keys, _dir) = server(Some("s3cret"));
    let mut ok = Client::login(&server, Some("s3cret"));
    let mut bad = Client::connect(&server);
    assert_eq!(bad.security(Some("guess")), 1, "wrong password refused");
    let why = bad.u32() as usize;
    assert_eq!(bad.read_n(why), b"wrong password");
    // The refused viewer typed nothing; the good one types.
    ok.key(true, u32::from(b'A'));
    ok.key(false, u32::from(b'A'));
    assert!(eventually(|| keys.0.lock().unwrap().len() == 4));
    assert_eq!(
        *keys.0.lock().unwrap(),
        [
            (Key(0x2a), true),
            (Key(0x1e), true),
            (Key(0x2a), false),
            (Key(0x1e), false)
        ],
        "a capital letter typed with Shift around it"
    );
}

#[test]
fn eight_viewers_and_bad_neighbours() {
    let (server, console, _, _dir) = server(None);
    let mut viewers: Vec<Client> = (0..8).map(|_| Client::login(&server, None)).collect();
    // Neighbours: garbage, a half message left hanging, a flood of
    // update requests never read, one that vanishes mid-update, and a
    // huge ClientCutText.
    let mut garbage = Client::login(&server, None);
    garbage.s.write_all(&[0xee; 64]).unwrap();
    let mut half = Client::login(&server, None);
    half.s.write_all(&[2, 0, 0]).unwrap();
    let mut flood = Client::login(&server, None);
    flood.s.set_nonblocking(true).unwrap();
    let mut req = vec![3, 0, 0, 0, 0, 0];
    req.extend_from_slice(&(W as u16).to_be_bytes());
    req.extend_from_slice(&(H as u16).to_be_bytes());
    for _ in 0..20_000 {
        if flood.s.write_all(&req).is_err() {
            break;
        }
    }
    let mut vanish = Client::login(&server, None);
    vanish.request(false);
    vanish.read_n(8);
    drop(vanish);
    let mut cut = Client::login(&server, None);
    cut.s
        .write_all(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    // Garbage and the oversized cut text are closed by the server.
    let mut b = [0u8; 1];
    garbage
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(garbage.s.read(&mut b).unwrap_or(0), 0, "garbage closed");
    let mut rest = Vec::new();
    let _ = cut.s.read_to_end(&mut rest);
    // Every good viewer is still served, with the console's picture.
    console.set_screen(Box::new(Still));
    console.refresh();
    let want = console_picture(&console);
    for v in &mut viewers {
        let mut picture = vec![0u32; (W * H) as usize];
        v.request(false);
        v.update(&mut picture);
        assert_eq!(picture, want);
    }
    // A 17th connection is refused by name while 16 are connected.
    let mut extra: Vec<Client> = Vec::new();
    while server.viewers() < rehost::vnc::MAX_VIEWERS {
        extra.push(Client::login(&server, None));
    }
    let mut refused = Client::connect(&server);
    assert_eq!(refused.read_n(12), b"RFB 003.008\n");
    refused.s.write_all(b"RFB 003.008\n").unwrap();
    assert_eq!(refused.read_n(1), [0], "no security types: refused");
    let n = refused.u32() as usize;
    let why = String::from_utf8(refused.read_n(n)).unwrap();
    assert!(why.contains("too many"), "{why}");
}

#[test]
fn a_silent_handshake_is_closed() {
    let (server, _, _, _dir) = server(None);
    let mut c = Client::connect(&server);
    c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    let mut all = Vec::new();
    let _ = c.s.read_to_end(&mut all);
    assert_eq!(all, b"RFB 003.008\n");
    let took = start.elapsed();
    assert!(
        took >= rehost::vnc::HANDSHAKE_LIMIT && took < rehost::vnc::HANDSHAKE_LIMIT * 2,
        "{took:?}"
    );
}

/// A smooth picture (JPEG keeps it close) of the server's size.
struct Gradient;
impl Screen for Gradient {
    fn refresh(&mut self, frame: &mut Frame) -> Damage {
        if frame.width == W && frame.height == H {
            return Damage::Rects(Vec::new());
        }
        frame.resize(W, H);
        for y in 0..H {
            for x in 0..W {
                frame.pixels[(y * W + x) as usize] = pattern(x, y, 0x80);
            }
        }
        Damage::Resized
    }
}

#[test]
fn vncsnapshot_captures_the_console() {
    if std::process::Command::new("vncsnapshot")
        .arg("-h")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "vncsnapshot not installed: run scripts/setup"
        );
        eprintln!("skipped: vncsnapshot not installed (scripts/setup)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let console = Console::new();
    console.set_screen(Box::new(Gradient));
    console.refresh();
    let opts = VncOptions::parse("127.0.0.1:0", None, false).unwrap();
    let server = VncServer::start(&opts, console.clone()).unwrap();
    let want = console_picture(&console);
    // Raw and zlib, as vncsnapshot (TightVNC 1.2's RFB 3.3 client)
    // decodes them; the capture is a JPEG at quality 100.
    for enc in ["raw", "zlib"] {
        let out = dir.path().join(format!("{enc}.jpg"));
        let run = std::process::Command::new("vncsnapshot")
            .args(["-quiet", "-encodings", enc, "-quality", "100"])
            .arg(format!("127.0.0.1::{}", server.port.unwrap()))
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "vncsnapshot {enc}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let mut d = jpeg_decoder::Decoder::new(std::fs::File::open(&out).unwrap());
        let rgb = d.decode().unwrap();
        let info = d.info().unwrap();
        assert_eq!((u32::from(info.width), u32::from(info.height)), (W, H));
        assert_eq!(rgb.len(), (W * H * 3) as usize);
        let mut worst = 0i32;
        let mut total = 0i64;
        for (i, p) in want.iter().enumerate() {
            for (c, shift) in [16, 8, 0].iter().enumerate() {
                let d = (i32::from(rgb[i * 3 + c]) - ((p >> shift) & 0xff) as i32).abs();
                worst = worst.max(d);
                total += i64::from(d);
            }
        }
        let mean = total as f64 / (want.len() * 3) as f64;
        // JPEG at quality 100 (4:2:0 chroma) stays within a few levels.
        assert!(
            mean < 3.0 && worst < 48,
            "{enc}: mean {mean:.2}, worst {worst}"
        );
    }
}

/// A screen whose size is set from outside.
struct Sized(Arc<Mutex<(u32, u32)>>);
impl Screen for Sized {
    fn refresh(&mut self, frame: &mut Frame) -> Damage {
        let (w, h) = *self.0.lock().unwrap();
        if (frame.width, frame.height) == (w, h) {
            return Damage::Rects(Vec::new());
        }
        frame.resize(w, h);
        frame.pixels.fill(0x00ff00);
        Damage::Resized
    }
}

struct Moves(Mutex<Vec<(i32, i32, u8)>>);
impl InputSink for Moves {
    fn key(&self, _: Key, _: bool) {}
    fn pointer(&self, dx: i32, dy: i32, buttons: u8) {
        self.0.lock().unwrap().push((dx, dy, buttons));
    }
}

#[test]
fn desktop_size_on_resize_and_pointer_moves_as_deltas() {
    let size = Arc::new(Mutex::new((W, H)));
    let console = Console::new();
    console.set_screen(Box::new(Sized(size.clone())));
    console.refresh();
    let moves = Arc::new(Moves(Mutex::new(Vec::new())));
    console.add_input(moves.clone());
    let opts = VncOptions::parse("127.0.0.1:0", None, false).unwrap();
    let server = VncServer::start(&opts, console.clone()).unwrap();
    let mut c = Client::login(&server, None);
    c.set_encodings(&[0, -223]);
    let mut picture = vec![0u32; (W * H) as usize];
    c.request(false);
    c.update(&mut picture);
    *size.lock().unwrap() = (32, 16);
    c.request(true);
    assert_eq!(c.read_n(2), [0, 0]);
    assert_eq!(c.u16(), 2, "DesktopSize and the new picture");
    assert_eq!((c.u16(), c.u16(), c.u16(), c.u16()), (0, 0, 32, 16));
    assert_eq!(c.u32() as i32, -223);
    assert_eq!((c.u16(), c.u16(), c.u16(), c.u16()), (0, 0, 32, 16));
    assert_eq!(c.u32(), 0);
    let data = c.read_n(32 * 16 * 4);
    assert!(data.chunks(4).all(|p| p == [0, 0xff, 0, 0]));
    // Absolute positions become relative moves; buttons pass through.
    for (x, y, b) in [(10u16, 10u16, 0u8), (15, 7, 1), (15, 7, 0)] {
        let mut m = vec![5, b];
        m.extend_from_slice(&x.to_be_bytes());
        m.extend_from_slice(&y.to_be_bytes());
        c.s.write_all(&m).unwrap();
    }
    assert!(eventually(|| moves.0.lock().unwrap().len() == 3));
    assert_eq!(*moves.0.lock().unwrap(), [(0, 0, 0), (5, -3, 1), (0, 0, 0)]);
}
