//! The VNC benchmark (not a test): framebuffer updates a VNC viewer gets
//! per second while the guest redraws the whole screen without pause,
//! from rehost's VNC server and from QEMU's, in one session, and the CPU
//! each VMM process burns meanwhile.
//!
//! ```text
//! cargo build --release -p rehost -p rehost-tests
//! target/release/bench-vnc [--runs 5] [--seconds 10] [--warmup 2] [--encodings raw,zlib]
//! ```
//!
//! The guest is resources/display/redraw.boot.asm: VGA mode 13h (320x200,
//! 256 colours), every frame repaints every pixel in a new colour, one "."
//! on COM1 per frame. rehost runs it with `run --vga std --vnc unix:PATH`,
//! QEMU with `-enable-kvm -nodefaults -name bench-vnc,debug-threads=on
//! -vga std -display none -vnc unix:PATH`; both load Debian's vgabios-stdvga.bin, 64 MiB of RAM.
//!
//! The viewer is the one here, the same for both: RFB 3.8, security None,
//! shared, 32 bpp true colour, one encoding (raw, then a second connection
//! with zlib) plus DesktopSize. It keeps exactly one incremental
//! FramebufferUpdateRequest outstanding: the next is sent as soon as an
//! update has been read in full, as real viewers do. It keeps its own copy
//! of the picture (zlib data is inflated) and an update counts only if at
//! least one of its rectangles is non-empty and changes a pixel of that
//! copy; empty or no-change updates are counted apart and printed.
//!
//! After `--warmup` seconds on a connection, the window of `--seconds`
//! starts: updates, pixels (in the counted updates) and the guest's frames
//! (dots on COM1) are counted, and the VMM's CPU time (utime + stime of
//! /proc/PID/stat, which sums every thread, live or ended) is read at both
//! ends; the CPU of its vCPU threads (rehost `vcpuN`, QEMU `CPU N/KVM`,
//! from /proc/PID/task) is also printed apart, so "VMM minus vCPU" is the
//! display and VNC work. The guest's vCPU spins (it never halts), so the
//! whole VMM's CPU follows how many frames the guest drew, which depends
//! on how much of a core the host scheduler gave it; the CPU per guest
//! frame row puts the two on the same footing. Each round boots both
//! VMMs once (which goes first alternates); figures are medians with
//! min-max, ratio rehost/QEMU.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::{Decompress, FlushDecompress};
use rehost_tests::bench::{release_rehost, round_order, Spread, DEFAULT_RUNS};
use rehost_tests::display::QEMU_STD_VGA;
use rehost_tests::roms_dir;

const READY: &str = "redraw: ready";
const ENCODING_RAW: i32 = 0;
const ENCODING_ZLIB: i32 = 6;
const ENCODING_DESKTOP_SIZE: i32 = -223;
/// The largest picture the viewer accepts (bounds its buffers).
const MAX_PIXELS: usize = 4096 * 4096;

struct Args {
    runs: usize,
    seconds: f64,
    warmup: f64,
    encodings: Vec<(String, i32)>,
    rehost: PathBuf,
    qemu: String,
}

fn args() -> Args {
    let mut a = Args {
        runs: DEFAULT_RUNS,
        seconds: 10.0,
        warmup: 2.0,
        encodings: vec![("raw".into(), ENCODING_RAW), ("zlib".into(), ENCODING_ZLIB)],
        rehost: PathBuf::new(),
        qemu: "qemu-system-x86_64".into(),
    };
    let mut rehost = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--warmup" => a.warmup = value().parse().expect("--warmup S"),
            "--encodings" => {
                a.encodings = value()
                    .split(',')
                    .map(|e| match e {
                        "raw" => (e.to_owned(), ENCODING_RAW),
                        "zlib" => (e.to_owned(), ENCODING_ZLIB),
                        _ => panic!("--encodings: {e}? (raw, zlib)"),
                    })
                    .collect()
            }
            "--rehost" => rehost = Some(value()),
            "--qemu" => a.qemu = value(),
            other => panic!("unknown option {other} (see the header of bench_vnc.rs)"),
        }
    }
    a.rehost = release_rehost(rehost);
    a
}

/// A VMM running the redraw program; killed when dropped.
struct Vmm {
    child: Child,
    socket: PathBuf,
    /// Frames the guest finished (dots on COM1 after the ready line).
    frames: Arc<AtomicU64>,
    ready: Arc<AtomicBool>,
}

impl Vmm {
    fn start(mut cmd: Command, socket: PathBuf, label: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {label}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let frames = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let (f, r) = (frames.clone(), ready.clone());
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            let mut line = Vec::new();
            while !r.load(Ordering::Acquire) {
                line.clear();
                match out.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if String::from_utf8_lossy(&line).contains(READY) {
                            r.store(true, Ordering::Release);
                        }
                    }
                }
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let dots = buf[..n].iter().filter(|&&b| b == b'.').count();
                f.fetch_add(dots as u64, Ordering::AcqRel);
            }
        });
        let mut vmm = Vmm {
            child,
            socket,
            frames,
            ready,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !vmm.ready.load(Ordering::Acquire) || !vmm.socket.exists() {
            if let Ok(Some(status)) = vmm.child.try_wait() {
                panic!("{label} exited ({status}) before {READY:?}");
            }
            assert!(Instant::now() < deadline, "{label}: no {READY:?} in 120 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        vmm
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds of a process (every thread) and of its vCPU threads.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    total: f64,
    vcpu: f64,
}

/// utime + stime in seconds and the command name of a /proc stat file.
fn stat_times(path: &Path) -> Option<(String, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((comm, (utime + stime) / hz))
}

fn is_vcpu_thread(comm: &str) -> bool {
    comm.starts_with("vcpu") || (comm.starts_with("CPU ") && comm.ends_with("/KVM"))
}

fn cpu_of(pid: u32) -> Cpu {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let total = stat_times(&proc_dir.join("stat"))
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("cannot read /proc/{pid}/stat"));
    let mut vcpu = 0.0;
    if let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) {
        for t in tasks.flatten() {
            if let Some((comm, secs)) = stat_times(&t.path().join("stat")) {
                if is_vcpu_thread(&comm) {
                    vcpu += secs;
                }
            }
        }
    }
    Cpu { total, vcpu }
}

/// What one window measured.
#[derive(Debug, Clone, Copy)]
struct Window {
    updates_per_s: f64,
    mpixels_per_s: f64,
    cpu_percent: f64,
    non_vcpu_percent: f64,
    guest_fps: f64,
    /// Updates that changed nothing the viewer had (not counted above).
    unchanged: u64,
}

/// The benchmark's RFB 3.8 viewer.
struct Viewer {
    s: UnixStream,
    width: usize,
    height: usize,
    picture: Vec<u32>,
    inflate: Decompress,
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

impl Viewer {
    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s
            .read_exact(&mut b)
            .unwrap_or_else(|e| panic!("VNC server: reading {n} bytes: {e}"));
        b
    }

    fn read_u32(&mut self) -> u32 {
        let b = self.read_n(4);
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Connects, logs in (None), asks for 32 bpp and `encoding`.
    fn connect(socket: &Path, encoding: i32) -> Self {
        let s = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut v = Viewer {
            s,
            width: 0,
            height: 0,
            picture: Vec::new(),
            inflate: Decompress::new(true),
        };
        let version = v.read_n(12);
        assert!(
            version.starts_with(b"RFB 003.00"),
            "not an RFB server: {version:?}"
        );
        v.s.write_all(b"RFB 003.008\n").expect("version");
        let n = v.read_n(1)[0];
        assert!(n > 0, "the server refused the connection");
        let types = v.read_n(usize::from(n));
        assert!(types.contains(&1), "security None not offered: {types:?}");
        v.s.write_all(&[1]).expect("security");
        assert_eq!(v.read_u32(), 0, "SecurityResult");
        v.s.write_all(&[1]).expect("ClientInit (shared)");
        let init = v.read_n(20);
        let name_len = v.read_u32() as usize;
        assert!(name_len < 4096, "server name of {name_len} bytes");
        v.read_n(name_len);
        v.resize(be16(&init[0..2]), be16(&init[2..4]));
        // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour,
        // 255 per channel, red at bit 16, green 8, blue 0.
        let mut msg = vec![0u8, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0];
        msg.extend_from_slice(&[0, 0, 0]);
        // SetEncodings: the one encoding and DesktopSize.
        msg.extend_from_slice(&[2, 0, 0, 2]);
        msg.extend_from_slice(&encoding.to_be_bytes());
        msg.extend_from_slice(&ENCODING_DESKTOP_SIZE.to_be_bytes());
        v.s.write_all(&msg).expect("SetPixelFormat, SetEncodings");
        v.request(false);
        v
    }

    fn resize(&mut self, w: usize, h: usize) {
        assert!(w * h <= MAX_PIXELS, "a {w}x{h} picture");
        self.width = w;
        self.height = h;
        self.picture = vec![0; w * h];
    }

    fn request(&mut self, incremental: bool) {
        let mut msg = vec![3u8, u8::from(incremental), 0, 0, 0, 0];
        msg.extend_from_slice(&(self.width as u16).to_be_bytes());
        msg.extend_from_slice(&(self.height as u16).to_be_bytes());
        self.s.write_all(&msg).expect("FramebufferUpdateRequest");
    }

    /// Reads server messages up to and including the next
    /// FramebufferUpdate; returns the pixels it changed in the viewer's
    /// picture (0: an update that carried no change) and the pixels of its
    /// non-empty rectangles.
    fn next_update(&mut self) -> (u64, u64) {
        loop {
            match self.read_n(1)[0] {
                0 => break,
                1 => {
                    let h = self.read_n(5);
                    self.read_n(6 * be16(&h[3..5]));
                }
                2 => {}
                3 => {
                    self.read_n(3);
                    let n = self.read_u32() as usize;
                    assert!(n < 1 << 20, "ServerCutText of {n} bytes");
                    self.read_n(n);
                }
                t => panic!("unknown server message type {t}"),
            }
        }
        let h = self.read_n(3);
        let rects = be16(&h[1..3]);
        let (mut changed, mut pixels) = (0u64, 0u64);
        for _ in 0..rects {
            let r = self.read_n(12);
            let (x, y, w, hh) = (
                be16(&r[0..2]),
                be16(&r[2..4]),
                be16(&r[4..6]),
                be16(&r[6..8]),
            );
            let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
            let data = match enc {
                ENCODING_DESKTOP_SIZE => {
                    self.resize(w, hh);
                    continue;
                }
                ENCODING_RAW => self.read_n(w * hh * 4),
                ENCODING_ZLIB => {
                    let n = self.read_u32() as usize;
                    assert!(n <= 64 << 20, "a zlib rectangle of {n} bytes");
                    let packed = self.read_n(n);
                    let mut out = Vec::with_capacity(w * hh * 4);
                    let start = self.inflate.total_in();
                    while ((self.inflate.total_in() - start) as usize) < n && out.len() < w * hh * 4
                    {
                        let done = (self.inflate.total_in() - start) as usize;
                        let before = (self.inflate.total_in(), self.inflate.total_out());
                        self.inflate
                            .decompress_vec(&packed[done..], &mut out, FlushDecompress::Sync)
                            .expect("zlib data");
                        if (self.inflate.total_in(), self.inflate.total_out()) == before {
                            break;
                        }
                    }
                    assert_eq!(out.len(), w * hh * 4, "zlib rectangle {w}x{hh}");
                    out
                }
                _ => panic!("encoding {enc} was not asked for"),
            };
            assert!(
                x + w <= self.width && y + hh <= self.height,
                "rectangle {w}x{hh}+{x}+{y} outside {}x{}",
                self.width,
                self.height
            );
            pixels += (w * hh) as u64;
            for row in 0..hh {
                for col in 0..w {
                    let i = 4 * (row * w + col);
                    let p = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]])
                        & 0xff_ffff;
                    let at = &mut self.picture[(y + row) * self.width + x + col];
                    if *at != p {
                        *at = p;
                        changed += 1;
                    }
                }
            }
        }
        (changed, pixels)
    }

    /// Warms up, then measures one window of `vmm`.
    fn measure(&mut self, vmm: &Vmm, warmup: f64, seconds: f64) -> Window {
        let warm_end = Instant::now() + Duration::from_secs_f64(warmup);
        self.next_update();
        self.request(true);
        while Instant::now() < warm_end {
            self.next_update();
            self.request(true);
        }
        let (cpu0, frames0, t0) = (
            cpu_of(vmm.pid()),
            vmm.frames.load(Ordering::Acquire),
            Instant::now(),
        );
        let end = t0 + Duration::from_secs_f64(seconds);
        let (mut updates, mut unchanged, mut pixels) = (0u64, 0u64, 0u64);
        while Instant::now() < end {
            let (changed, px) = self.next_update();
            self.request(true);
            if changed > 0 && px > 0 {
                updates += 1;
                pixels += px;
            } else {
                unchanged += 1;
            }
        }
        let (cpu1, frames1) = (cpu_of(vmm.pid()), vmm.frames.load(Ordering::Acquire));
        let elapsed = t0.elapsed().as_secs_f64();
        Window {
            updates_per_s: updates as f64 / elapsed,
            mpixels_per_s: pixels as f64 / elapsed / 1e6,
            cpu_percent: 100.0 * (cpu1.total - cpu0.total) / elapsed,
            non_vcpu_percent: 100.0 * ((cpu1.total - cpu1.vcpu) - (cpu0.total - cpu0.vcpu))
                / elapsed,
            guest_fps: (frames1 - frames0) as f64 / elapsed,
            unchanged,
        }
    }
}

fn rehost_cmd(a: &Args, disk: &Path, socket: &Path) -> Command {
    let mut c = Command::new(&a.rehost);
    c.args([
        "run", "--memory", "64M", "--vga", "std", "--com1", "stdio", "--disk",
    ])
    .arg(format!("{},format=raw", disk.display()))
    .arg("--vnc")
    .arg(format!("unix:{}", socket.display()));
    c
}

fn qemu_cmd(a: &Args, disk: &Path, socket: &Path) -> Command {
    let mut c = Command::new(&a.qemu);
    // -name ...debug-threads=on names the vCPU threads (`CPU 0/KVM`) for
    // the CPU split.
    c.args(QEMU_STD_VGA)
        .args(["-name", "bench-vnc,debug-threads=on", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=ide,snapshot=on",
            disk.display()
        ))
        .arg("-vnc")
        .arg(format!("unix:{}", socket.display()));
    c
}

type VmmCommand = fn(&Args, &Path, &Path) -> Command;

fn main() {
    let a = args();
    let disk = roms_dir().join("redraw.img");
    let dir = tempfile::Builder::new()
        .prefix("rehost-bench-vnc")
        .tempdir()
        .expect("temp dir");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "VNC benchmark: mode 13h redrawn without pause, one viewer (1 outstanding incremental request), \
         {} run(s) per VMM, {} s window after {} s warm-up; median (min-max); load before: {}",
        a.runs,
        a.seconds,
        a.warmup,
        load.trim()
    );
    // [encoding][side] -> windows
    let mut results: Vec<[Vec<Window>; 2]> =
        a.encodings.iter().map(|_| Default::default()).collect();
    for round in 0..a.runs {
        for side in round_order(round, 2) {
            let (cmd, label): (VmmCommand, &str) = if side == 0 {
                (rehost_cmd, "rehost")
            } else {
                (qemu_cmd, "qemu")
            };
            let socket = dir.path().join(format!("{label}.vnc"));
            let _ = std::fs::remove_file(&socket);
            let vmm = Vmm::start(cmd(&a, &disk, &socket), socket.clone(), label);
            for (i, (name, enc)) in a.encodings.iter().enumerate() {
                let mut viewer = Viewer::connect(&socket, *enc);
                let w = viewer.measure(&vmm, a.warmup, a.seconds);
                eprintln!(
                    "round {}/{} {label} {name}: {:.1} updates/s, {:.2} Mpixel/s, CPU {:.0}% \
                     ({:.0}% outside vCPUs), guest {:.1} frames/s, {} unchanged updates",
                    round + 1,
                    a.runs,
                    w.updates_per_s,
                    w.mpixels_per_s,
                    w.cpu_percent,
                    w.non_vcpu_percent,
                    w.guest_fps,
                    w.unchanged
                );
                results[i][side].push(w);
            }
            drop(vmm);
        }
    }
    println!(
        "{:<5} {:<26} {:>22} {:>22} {:>7}",
        "enc", "figure", "rehost", "QEMU", "ratio"
    );
    type Pick = fn(&Window) -> f64;
    let rows: [(&str, Pick, usize); 6] = [
        ("updates/s", |w| w.updates_per_s, 1),
        ("Mpixel/s", |w| w.mpixels_per_s, 2),
        ("CPU % (whole VMM)", |w| w.cpu_percent, 0),
        ("CPU % outside vCPU threads", |w| w.non_vcpu_percent, 1),
        ("guest frames/s", |w| w.guest_fps, 1),
        (
            "VMM CPU ms per guest frame",
            |w| 10.0 * w.cpu_percent / w.guest_fps,
            1,
        ),
    ];
    for (i, (name, _)) in a.encodings.iter().enumerate() {
        for (row, pick, decimals) in rows {
            let r = Spread::of(&results[i][0].iter().map(pick).collect::<Vec<_>>());
            let q = Spread::of(&results[i][1].iter().map(pick).collect::<Vec<_>>());
            println!(
                "{name:<5} {row:<26} {:>22} {:>22} {:>7.2}",
                r.show(decimals),
                q.show(decimals),
                r.median / q.median
            );
        }
        let unchanged: Vec<u64> = results[i]
            .iter()
            .map(|side| side.iter().map(|w| w.unchanged).sum())
            .collect();
        println!(
            "{name:<5} updates that changed no pixel (not counted): rehost {}, QEMU {}",
            unchanged[0], unchanged[1]
        );
    }
}
