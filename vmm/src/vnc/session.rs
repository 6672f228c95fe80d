//! One viewer: the handshake, then its messages and its updates, on a
//! thread of its own.

use std::io::{ErrorKind, Read};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flate2::{Compress, Compression, FlushCompress};
use rehost_devices::display::{Damage, Key, Rect};

use super::protocol::{
    client_minor, rect_header, vnc_auth_response, ClientMessage, ClientParser, PixelFormat,
    ENCODING_DESKTOP_SIZE, ENCODING_RAW, ENCODING_ZLIB, SECURITY_NONE, SECURITY_VNC_AUTH,
    SERVER_VERSION,
};
use super::{
    Shared, Stream, BLANK_SIZE, HANDSHAKE_LIMIT, MAX_VIEWERS, REFRESH_PERIOD, STALL_LIMIT,
    WRITE_LIMIT,
};

/// Damage rectangles sent one by one; more are sent as their bounding box.
const MAX_RECTS: usize = 16;
/// How long a wrong password waits before it is answered (slows guessing).
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(500);
const LEFT_SHIFT: Key = Key(0x2a);

pub(crate) fn serve(mut stream: Box<dyn Stream>, id: u64, shared: &Shared, full: bool) {
    let size = match handshake(stream.as_mut(), id, shared, full) {
        Ok(Some(size)) => size,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("VNC viewer {id}: handshake: {e:#}");
            return;
        }
    };
    let mut viewer = Viewer::new(id, size);
    if let Err(e) = viewer.run(stream.as_mut(), shared) {
        tracing::debug!("VNC viewer {id}: closed: {e:#}");
    }
}

/// Reads exactly `buf.len()` bytes before `deadline`.
fn read_full(s: &mut dyn Stream, buf: &mut [u8], deadline: Instant) -> anyhow::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the viewer did not finish the handshake in {HANDSHAKE_LIMIT:?}");
        }
        s.set_timeouts(Some(left), Some(WRITE_LIMIT))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => bail!("the viewer closed the connection"),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn reason(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

fn random_challenge() -> anyhow::Result<[u8; 16]> {
    let mut c = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut c))
        .context("reading /dev/urandom for the VNC challenge")?;
    Ok(c)
}

/// RFC 6143 7.1 to 7.3: version, security, ClientInit, ServerInit.
/// Returns the picture size the viewer was told, or None when it was
/// refused.
fn handshake(
    s: &mut dyn Stream,
    id: u64,
    shared: &Shared,
    full: bool,
) -> anyhow::Result<Option<(u32, u32)>> {
    let deadline = Instant::now() + HANDSHAKE_LIMIT;
    s.set_timeouts(Some(HANDSHAKE_LIMIT), Some(WRITE_LIMIT))?;
    s.write_all(SERVER_VERSION)?;
    let mut version = [0u8; 12];
    read_full(s, &mut version, deadline)?;
    let minor = client_minor(&version)?;
    if full {
        let why = format!("too many VNC viewers (at most {MAX_VIEWERS})");
        let mut msg = if minor == 3 {
            vec![0, 0, 0, 0]
        } else {
            vec![0]
        };
        msg.extend(reason(&why));
        let _ = s.write_all(&msg);
        tracing::info!("VNC viewer {id} refused: {why}");
        return Ok(None);
    }
    let security = if shared.password.is_some() {
        SECURITY_VNC_AUTH
    } else {
        SECURITY_NONE
    };
    if minor == 3 {
        s.write_all(&u32::from(security).to_be_bytes())?;
    } else {
        s.write_all(&[1, security])?;
        let mut choice = [0u8];
        read_full(s, &mut choice, deadline)?;
        if choice[0] != security {
            if minor == 8 {
                let mut msg = 1u32.to_be_bytes().to_vec();
                msg.extend(reason("security type not offered"));
                let _ = s.write_all(&msg);
            }
            bail!(
                "the viewer chose security type {} (offered {security})",
                choice[0]
            );
        }
    }
    if let Some(password) = &shared.password {
        let challenge = random_challenge()?;
        s.write_all(&challenge)?;
        let mut response = [0u8; 16];
        read_full(s, &mut response, deadline)?;
        if response != vnc_auth_response(password, &challenge) {
            std::thread::sleep(AUTH_FAILURE_DELAY);
            let mut msg = 1u32.to_be_bytes().to_vec();
            if minor == 8 {
                msg.extend(reason("wrong password"));
            }
            let _ = s.write_all(&msg);
            tracing::warn!("VNC viewer {id}: wrong password");
            return Ok(None);
        }
        s.write_all(&0u32.to_be_bytes())?;
    } else if minor == 8 {
        s.write_all(&0u32.to_be_bytes())?;
    }
    let mut client_init = [0u8];
    read_full(s, &mut client_init, deadline)?;
    if client_init[0] == 0 {
        // Not shared: the viewers before this one close.
        shared.evict_below.fetch_max(id, Ordering::AcqRel);
    }
    let (w, h) = picture_size(shared);
    let mut init = Vec::with_capacity(32);
    init.extend_from_slice(&(w as u16).to_be_bytes());
    init.extend_from_slice(&(h as u16).to_be_bytes());
    init.extend_from_slice(&PixelFormat::SERVER.to_bytes());
    init.extend(reason("rehost"));
    s.write_all(&init)?;
    Ok(Some((w, h)))
}

/// The size viewers see: the console's, or a blank picture when the
/// machine has no display.
fn picture_size(shared: &Shared) -> (u32, u32) {
    let (w, h) = shared.console.with_frame(|f, _| (f.width, f.height));
    if w == 0 || h == 0 {
        BLANK_SIZE
    } else {
        (w.min(0xffff), h.min(0xffff))
    }
}

struct Viewer {
    id: u64,
    format: PixelFormat,
    zlib: bool,
    desktop_size: bool,
    /// An update was asked for; `Some(false)`: a whole picture.
    pending: Option<bool>,
    /// The console serial of the last update sent.
    sent: Option<u64>,
    size: Option<(u32, u32)>,
    deflate: Option<Compress>,
    pointer: Option<(u16, u16)>,
    shift_held: u8,
}

impl Viewer {
    fn new(id: u64, size: (u32, u32)) -> Self {
        Self {
            id,
            format: PixelFormat::SERVER,
            zlib: false,
            desktop_size: false,
            pending: None,
            sent: None,
            size: Some(size),
            deflate: None,
            pointer: None,
            shift_held: 0,
        }
    }

    fn run(&mut self, s: &mut dyn Stream, shared: &Shared) -> anyhow::Result<()> {
        let tick = REFRESH_PERIOD;
        s.set_timeouts(Some(tick), Some(WRITE_LIMIT))?;
        let mut parser = ClientParser::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut msgs = Vec::new();
        let mut stalled_since: Option<Instant> = None;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.id < shared.evict_below.load(Ordering::Acquire) {
                bail!("a viewer asked for the console alone (not shared)");
            }
            let mut pfd = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Waiting for an update: wake when the next render is due
            // (rounded up to a whole millisecond, so never a busy loop).
            let wait = if self.pending.is_some() {
                shared.next_refresh_in().min(tick)
            } else {
                tick
            };
            let wait_ms = wait.as_micros().div_ceil(1000) as i32;
            // SAFETY: poll reads and writes only the one pollfd given.
            let ready = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
            if ready > 0 {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        parser.feed(&buf[..n], &mut msgs)?;
                        for m in msgs.drain(..) {
                            self.handle(m, shared);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if parser.partial() {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > STALL_LIMIT {
                    bail!("a message was left half-sent for {STALL_LIMIT:?}");
                }
            } else {
                stalled_since = None;
            }
            if self.pending.is_some() {
                shared.refresh();
                if let Some(update) = self.update(shared)? {
                    s.write_all(&update).context("sending an update")?;
                }
            }
        }
    }

    fn handle(&mut self, m: ClientMessage, shared: &Shared) {
        match m {
            ClientMessage::SetPixelFormat(f) => self.format = f,
            ClientMessage::SetEncodings(list) => {
                let ours = list
                    .iter()
                    .find(|&&e| e == ENCODING_RAW || e == ENCODING_ZLIB);
                self.zlib = ours == Some(&ENCODING_ZLIB);
                self.desktop_size = list.contains(&ENCODING_DESKTOP_SIZE);
            }
            ClientMessage::FramebufferUpdateRequest { incremental, .. } => {
                self.pending = Some(self.pending.unwrap_or(true) && incremental);
            }
            ClientMessage::KeyEvent { down, keysym } => self.key(shared, down, keysym),
            ClientMessage::PointerEvent { buttons, x, y } => {
                let (dx, dy) = match self.pointer {
                    Some((px, py)) => (i32::from(x) - i32::from(px), i32::from(y) - i32::from(py)),
                    None => (0, 0),
                };
                self.pointer = Some((x, y));
                shared.console.pointer(dx, dy, buttons);
            }
            ClientMessage::ClientCutText { .. } => {}
        }
    }

    /// A keysym pressed or released. A character the US layout types
    /// with Shift, sent while no Shift is held (viewers that type text),
    /// gets a Shift around its press.
    fn key(&mut self, shared: &Shared, down: bool, keysym: u32) {
        let shift_bit = match keysym {
            0xffe1 => 1,
            0xffe2 => 2,
            _ => 0,
        };
        if down {
            self.shift_held |= shift_bit;
        } else {
            self.shift_held &= !shift_bit;
        }
        let Some(typed) = crate::keymap::keysym(keysym) else {
            tracing::debug!("VNC viewer {}: keysym {keysym:#x} has no PC key", self.id);
            return;
        };
        let console = &shared.console;
        if down && typed.shift && self.shift_held == 0 {
            console.key(LEFT_SHIFT, true);
            console.key(typed.key, true);
            console.key(LEFT_SHIFT, false);
        } else {
            console.key(typed.key, down);
        }
    }

    /// The FramebufferUpdate to send now, if there is news.
    fn update(&mut self, shared: &Shared) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(incremental) = self.pending else {
            return Ok(None);
        };
        let serial = shared.console.with_frame(|_, s| s);
        let (w, h) = picture_size(shared);
        let resized = self.size != Some((w, h));
        let mut rects: Vec<Rect> = Vec::new();
        let mut desktop_size = false;
        if resized {
            desktop_size = self.desktop_size && self.size.is_some();
            if desktop_size || self.size.is_none() {
                self.size = Some((w, h));
            }
        }
        let (cw, ch) = self.size.unwrap_or((w, h));
        let whole = Rect::new(0, 0, cw.min(w), ch.min(h));
        let damage = match self.sent {
            Some(sent) if incremental && !resized => shared.console.damage_since(sent),
            _ => Damage::Resized,
        };
        match damage {
            Damage::Resized => rects.push(whole),
            Damage::Rects(list) => {
                rects = list.iter().filter_map(|r| clip(r, &whole)).collect();
                if rects.len() > MAX_RECTS {
                    rects = vec![bounding_box(&rects)];
                }
            }
        }
        self.sent = Some(serial);
        if rects.is_empty() && !desktop_size {
            return Ok(None);
        }
        self.pending = None;
        let count = rects.len() + usize::from(desktop_size);
        let mut out = vec![0u8, 0];
        out.extend_from_slice(&(count as u16).to_be_bytes());
        if desktop_size {
            rect_header(&mut out, 0, 0, w, h, ENCODING_DESKTOP_SIZE);
        }
        for r in rects {
            self.encode(&mut out, &r, shared)?;
        }
        Ok(Some(out))
    }

    /// Appends rectangle `r` of the console's picture, in the viewer's
    /// pixel format and encoding, converted straight from the frame.
    fn encode(&mut self, out: &mut Vec<u8>, r: &Rect, shared: &Shared) -> anyhow::Result<()> {
        let format = self.format;
        if !self.zlib {
            rect_header(out, r.x, r.y, r.w, r.h, ENCODING_RAW);
            shared
                .console
                .with_frame(|f, _| put_rect(f, r, format, out));
            return Ok(());
        }
        let mut raw = Vec::new();
        shared
            .console
            .with_frame(|f, _| put_rect(f, r, format, &mut raw));
        rect_header(out, r.x, r.y, r.w, r.h, ENCODING_ZLIB);
        let z = self
            .deflate
            .get_or_insert_with(|| Compress::new(Compression::new(1), true));
        let mut packed = Vec::with_capacity(raw.len() / 4 + 1024);
        let start_in = z.total_in();
        loop {
            let done = (z.total_in() - start_in) as usize;
            z.compress_vec(&raw[done..], &mut packed, FlushCompress::Sync)
                .context("zlib compression")?;
            let consumed = (z.total_in() - start_in) as usize == raw.len();
            if consumed && packed.len() < packed.capacity() {
                break;
            }
            packed.reserve(64 * 1024);
        }
        out.extend_from_slice(&(packed.len() as u32).to_be_bytes());
        out.extend_from_slice(&packed);
        Ok(())
    }
}

fn clip(r: &Rect, to: &Rect) -> Option<Rect> {
    let x0 = r.x.max(to.x);
    let y0 = r.y.max(to.y);
    let x1 = r.x.saturating_add(r.w).min(to.x + to.w);
    let y1 = r.y.saturating_add(r.h).min(to.y + to.h);
    (x1 > x0 && y1 > y0).then(|| Rect::new(x0, y0, x1 - x0, y1 - y0))
}

fn bounding_box(rects: &[Rect]) -> Rect {
    let x0 = rects.iter().map(|r| r.x).min().unwrap_or(0);
    let y0 = rects.iter().map(|r| r.y).min().unwrap_or(0);
    let x1 = rects.iter().map(|r| r.x + r.w).max().unwrap_or(0);
    let y1 = rects.iter().map(|r| r.y + r.h).max().unwrap_or(0);
    Rect::new(x0, y0, x1 - x0, y1 - y0)
}

/// Appends the rectangle's pixels in `format` (black where the frame has
/// none: no display).
fn put_rect(f: &rehost_devices::display::Frame, r: &Rect, format: PixelFormat, out: &mut Vec<u8>) {
    out.reserve(r.w as usize * r.h as usize * format.bytes_per_pixel());
    let (x0, x1) = (r.x as usize, r.x as usize + r.w as usize);
    for y in r.y..r.y + r.h {
        let row = if y < f.height { f.row(y) } else { &[] };
        let shown = row.get(x0.min(row.len())..x1.min(row.len())).unwrap_or(&[]);
        format.put_row(shown, out);
        for _ in shown.len()..r.w as usize {
            format.put(0, out);
        }
    }
}
