//! Display tests' helpers: taking a `screendump` from rehost and from
//! QEMU (`-vga std`, the same VGA BIOS) of the same guest at the same
//! moment, and comparing the two PNGs pixel for pixel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::qmp::Qmp;
use crate::{artifacts_dir, Running};

/// A decoded 8-bit RGB picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    /// R, G, B per pixel, row by row.
    pub rgb: Vec<u8>,
}

impl Picture {
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// Decodes a PNG (any colour type the `png` crate expands to 8-bit RGB or
/// RGBA) into RGB.
pub fn decode_png(path: &Path) -> Picture {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{}: not a PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .unwrap_or_else(|e| panic!("{}: bad PNG data: {e}", path.display()));
    let channels = info.color_type.samples();
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .flat_map(|p| match channels {
            1 | 2 => [p[0], p[0], p[0]],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    Picture {
        width: info.width,
        height: info.height,
        rgb,
    }
}

/// Where a display test keeps its screendumps (under target/).
pub fn screens_dir() -> PathBuf {
    let d = artifacts_dir().join("display");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A pixel area where the two pictures may differ, and why.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub why: &'static str,
}

impl Tolerance {
    fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && x < self.x + self.w && y >= self.y && y < self.y + self.h
    }
}

/// Asserts that rehost's and QEMU's screendumps are equal pixel for
/// pixel, except inside `tolerance`. On a mismatch both PNGs stay under
/// target/guest-artifacts/display/ with a `NAME.diff.txt` that counts
/// the differing pixels and lists the first ones.
pub fn assert_same_screen(name: &str, ours: &Path, qemu: &Path, tolerance: Option<Tolerance>) {
    let a = decode_png(ours);
    let b = decode_png(qemu);
    let report = screens_dir().join(format!("{name}.diff.txt"));
    if (a.width, a.height) != (b.width, b.height) {
        let text = format!(
            "{name}: rehost shows {}x{}, QEMU {}x{}\n",
            a.width, a.height, b.width, b.height
        );
        std::fs::write(&report, &text).unwrap();
        panic!(
            "{text}(rehost: {}, QEMU: {})",
            ours.display(),
            qemu.display()
        );
    }
    let mut differ = 0usize;
    let mut tolerated = 0usize;
    let mut first = Vec::new();
    for y in 0..a.height {
        for x in 0..a.width {
            let (pa, pb) = (a.pixel(x, y), b.pixel(x, y));
            if pa == pb {
                continue;
            }
            if tolerance.is_some_and(|t| t.contains(x, y)) {
                tolerated += 1;
                continue;
            }
            differ += 1;
            if first.len() < 20 {
                first.push(format!("({x},{y}): rehost {pa:02x?} QEMU {pb:02x?}"));
            }
        }
    }
    if differ > 0 {
        let text = format!(
            "{name}: {differ} of {} pixels differ ({tolerated} more inside the tolerated area)\n{}\n",
            a.width * a.height,
            first.join("\n")
        );
        std::fs::write(&report, &text).unwrap();
        panic!(
            "{text}rehost: {}\nQEMU: {}\nreport: {}",
            ours.display(),
            qemu.display(),
            report.display()
        );
    }
    let _ = std::fs::remove_file(&report);
    if let Some(t) = tolerance {
        eprintln!(
            "{name}: equal; {tolerated} pixels differ inside {}x{}+{}+{} ({})",
            t.w, t.h, t.x, t.y, t.why
        );
    }
}

/// `screendump` to `file` as PNG through a negotiated QMP connection.
pub fn screendump(q: &mut Qmp, file: &Path) {
    let _ = std::fs::remove_file(file);
    let r = q.execute(
        "screendump",
        Some(json!({"filename": file.to_str().unwrap(), "format": "png"})),
    );
    assert_eq!(r, json!({"return": {}}), "screendump {}", file.display());
    assert!(file.exists(), "screendump wrote no {}", file.display());
}

/// QEMU's side of a display comparison: KVM, no default devices, the
/// standard VGA (`-vga std`, which loads the same vgabios-stdvga.bin as
/// rehost), no window, 64 MiB of RAM.
pub const QEMU_STD_VGA: [&str; 8] = [
    "-enable-kvm",
    "-nodefaults",
    "-vga",
    "std",
    "-display",
    "none",
    "-m",
    "64",
];

/// Boots `disk` (a raw image) under QEMU with `-vga std` and KVM, waits
/// for `ready` on COM1 and takes a PNG `screendump` into `out`.
pub fn qemu_screendump(disk: &Path, ready: &str, out: &Path) {
    let dir = tempfile::Builder::new()
        .prefix("rehost-vga")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("qemu.sock");
    let serial = dir.path().join("com1.txt");
    let drive = format!(
        "file={},format=raw,if=ide,snapshot=on",
        disk.to_str().unwrap()
    );
    let qmp = format!("unix:{},server=on,wait=off", sock.to_str().unwrap());
    let serial_arg = format!("file:{}", serial.to_str().unwrap());
    let mut args = QEMU_STD_VGA.to_vec();
    args.extend_from_slice(&["-drive", &drive, "-serial", &serial_arg, "-qmp", &qmp]);
    let _qemu = Running::start("qemu-system-x86_64", &args);
    let mut q = Qmp::connect(&sock, true);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains(ready)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU: no {ready:?} on COM1 within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    screendump(&mut q, out);
    q.execute("quit", None);
}
