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

/// How long SeaBIOS may take to reach a boot sector's "ready" line on
/// COM1: seconds on an idle host, but a 2-core host running several
/// guests (load 16) took over 60 s, on rehost and on QEMU alike.
pub const BOOT_SECTOR_READY: Duration = Duration::from_secs(240);

/// True when QEMU (`qemu-system-x86_64`) runs here.
pub fn qemu_installed() -> bool {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts rehost (`bin`) with `--vga std`, 64 MiB, the raw `disk` and a
/// QMP socket at `sock`, then `more` options; returns it with a
/// negotiated QMP connection.
pub fn start_rehost_vga(bin: &str, disk: &Path, sock: &Path, more: &[&str]) -> (Running, Qmp) {
    let disk_arg = format!("{},format=raw", disk.to_str().unwrap());
    let mut args = vec![
        "run",
        "--vga",
        "std",
        "-m",
        "64M",
        "--disk",
        &disk_arg,
        "--qmp",
        sock.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let vm = Running::start(bin, &args);
    let q = Qmp::connect(sock, true);
    (vm, q)
}

/// Waits until rehost's COM1 (its stdout) shows `text`; panics after
/// `timeout` with what COM1 and stderr hold.
pub fn wait_com1(vm: &mut Running, text: &str, timeout: Duration) {
    assert!(
        vm.wait_for(text, 1, timeout),
        "rehost: no {text:?} on COM1 within {timeout:?}\nstdout: {}\nstderr: {}",
        vm.stdout(),
        vm.stderr()
    );
}

/// QEMU (`-vga std`, KVM, 64 MiB, the same VGA BIOS as rehost's) on a
/// raw disk, with COM1 in a file and a QMP socket: the reference picture.
pub struct QemuVga {
    _dir: tempfile::TempDir,
    serial: PathBuf,
    sock: PathBuf,
    run: Running,
}

impl QemuVga {
    /// Starts QEMU on `disk` (opened with `snapshot=on`, so it is never
    /// written).
    pub fn start(disk: &Path) -> Self {
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
        let run = Running::start("qemu-system-x86_64", &args);
        Self {
            _dir: dir,
            serial,
            sock,
            run,
        }
    }

    /// What the guest wrote on COM1 so far.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until COM1 shows `text`; panics after `timeout`.
    pub fn wait_serial(&self, text: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.serial().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "QEMU: no {text:?} on COM1 within {timeout:?}; COM1: {:?}\nstderr: {}",
                self.serial(),
                self.run.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A negotiated QMP connection.
    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.sock, true)
    }

    /// `quit` through QMP, then waits for QEMU to exit.
    pub fn quit(mut self) {
        let mut q = self.qmp();
        q.execute("quit", None);
        self.run.wait(Duration::from_secs(20));
    }
}

/// Boots `disk` (a raw image) under QEMU with `-vga std` and KVM, waits
/// for `ready` on COM1 and takes a PNG `screendump` into `out`.
pub fn qemu_screendump(disk: &Path, ready: &str, out: &Path) {
    let qemu = QemuVga::start(disk);
    let mut q = qemu.qmp();
    qemu.wait_serial(ready, BOOT_SECTOR_READY);
    screendump(&mut q, out);
    drop(q);
    qemu.quit();
}

/// Takes a `screendump` into `out` every `every` until `settled` of them
/// in a row show the same picture, and returns that picture: for guests
/// that never stop redrawing on their own (GRUB's menu waits for a key
/// after drawing, but COM1 says so a little before the screen is done).
/// Panics if the picture still changes after `timeout`.
pub fn settled_screendump(
    q: &mut Qmp,
    out: &Path,
    every: Duration,
    settled: usize,
    timeout: Duration,
) -> Picture {
    let deadline = std::time::Instant::now() + timeout;
    let mut last: Option<Picture> = None;
    let mut same = 0;
    loop {
        screendump(q, out);
        let pic = decode_png(out);
        if last.as_ref() == Some(&pic) {
            same += 1;
            if same + 1 >= settled {
                return pic;
            }
        } else {
            same = 0;
        }
        last = Some(pic);
        assert!(
            std::time::Instant::now() < deadline,
            "{}: the picture still changed after {timeout:?}",
            out.display()
        );
        std::thread::sleep(every);
    }
}

/// How many pixels differ from the picture's most common colour (its
/// background): a screen that shows something has many.
pub fn foreground_pixels(pic: &Picture) -> usize {
    let mut counts = std::collections::HashMap::new();
    for p in pic.rgb.chunks_exact(3) {
        *counts.entry([p[0], p[1], p[2]]).or_insert(0usize) += 1;
    }
    let background = counts.values().copied().max().unwrap_or(0);
    (pic.width * pic.height) as usize - background
}

/// A GRUB PF2 font (`grub-mkfont`'s format, as GRUB's `font` module reads
/// it) cut down to the characters `keep` accepts: the header sections are
/// copied, the character index (`CHIX`: per character its code point, a
/// storage-flags byte and the file offset of its glyph, 9 bytes, sorted by
/// code point) keeps the wanted entries, and `DATA` holds their glyphs
/// (width, height, x and y offset, advance as 16-bit big-endian numbers,
/// then the bitmap, one bit per pixel, rows packed without padding).
///
/// Why: GRUB's `loadfont` reads the whole index entry by entry; Debian's
/// unicode.pf2 has 57,248 characters, which took GRUB minutes here (every
/// instruction emulated), while its menu needs a few hundred.
pub fn pf2_subset(font: &[u8], keep: impl Fn(u32) -> bool) -> Result<Vec<u8>, String> {
    let be16 = |at: usize| -> Result<usize, String> {
        font.get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| format!("offset {at}: past the end of the font"))
    };
    let be32 = |at: usize| -> Result<u32, String> {
        font.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("offset {at}: past the end of the font"))
    };
    let mut header = Vec::new();
    let mut index = None;
    let mut at = 0;
    while at < font.len() {
        let name = font
            .get(at..at + 4)
            .ok_or_else(|| format!("offset {at}: a truncated section name"))?;
        let len = be32(at + 4)?;
        if name == b"DATA" {
            break;
        }
        let body = at + 8;
        let end = body
            .checked_add(len as usize)
            .filter(|&e| e <= font.len())
            .ok_or_else(|| {
                format!("offset {at}: section {name:?} of {len} bytes runs past the end")
            })?;
        if name == b"CHIX" {
            index = Some((body, end));
        } else {
            header.extend_from_slice(&font[at..end]);
        }
        at = end;
    }
    let (start, end) = index.ok_or("no CHIX section")?;
    if (end - start) % 9 != 0 {
        return Err(format!(
            "CHIX at {start}: {} bytes is not whole entries",
            end - start
        ));
    }
    let mut chars = Vec::new();
    for e in (start..end).step_by(9) {
        let code = be32(e)?;
        if !keep(code) {
            continue;
        }
        let flags = font[e + 4];
        if flags & 0x07 != 0 {
            return Err(format!(
                "CHIX entry at {e}: compressed glyph (flags {flags:#x})"
            ));
        }
        let glyph = be32(e + 5)? as usize;
        let (w, h) = be16(glyph)
            .and_then(|w| Ok((w, be16(glyph + 2)?)))
            .map_err(|e| format!("glyph of U+{code:04X}: {e}"))?;
        let len = 10 + (w * h).div_ceil(8);
        let data = font
            .get(glyph..glyph + len)
            .ok_or_else(|| format!("glyph of U+{code:04X} at {glyph}: past the end"))?;
        chars.push((code, flags, data));
    }
    let chix_len = 9 * chars.len();
    // The glyphs follow the index and the DATA section's own header.
    let mut glyph_at = header.len() + 8 + chix_len + 8;
    let mut out = header;
    out.extend_from_slice(b"CHIX");
    out.extend_from_slice(&(chix_len as u32).to_be_bytes());
    for (code, flags, data) in &chars {
        out.extend_from_slice(&code.to_be_bytes());
        out.push(*flags);
        out.extend_from_slice(&(glyph_at as u32).to_be_bytes());
        glyph_at += data.len();
    }
    // GRUB reads DATA to the end of the file; its length is all ones.
    out.extend_from_slice(b"DATA");
    out.extend_from_slice(&u32::MAX.to_be_bytes());
    for (_, _, data) in &chars {
        out.extend_from_slice(data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(name: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut s = name.to_vec();
        s.extend_from_slice(&(body.len() as u32).to_be_bytes());
        s.extend_from_slice(body);
        s
    }

    /// A glyph: width, height, offsets, advance, then the bitmap.
    fn glyph(w: u16, h: u16, fill: u8) -> Vec<u8> {
        let mut g = Vec::new();
        for v in [w, h, 0, 0, w] {
            g.extend_from_slice(&v.to_be_bytes());
        }
        g.extend(std::iter::repeat_n(fill, usize::from(w * h).div_ceil(8)));
        g
    }

    /// A font of characters 'A', 'B', 'C' with different glyphs.
    fn font() -> Vec<u8> {
        let mut head = section(b"FILE", b"PFF2");
        head.extend(section(b"NAME", b"Test 8\0"));
        let glyphs = [glyph(8, 2, 0xaa), glyph(3, 5, 0x55), glyph(8, 1, 0xff)];
        let chix_len = 9 * glyphs.len();
        let mut at = head.len() + 8 + chix_len + 8;
        let mut chix = Vec::new();
        for (i, g) in glyphs.iter().enumerate() {
            chix.extend_from_slice(&(0x41 + i as u32).to_be_bytes());
            chix.push(0);
            chix.extend_from_slice(&(at as u32).to_be_bytes());
            at += g.len();
        }
        let mut f = head;
        f.extend(section(b"CHIX", &chix));
        f.extend_from_slice(b"DATA\xff\xff\xff\xff");
        f.extend(glyphs.concat());
        f
    }

    /// The glyph bytes the index entry for `code` points at.
    fn glyph_of(font: &[u8], code: u32) -> Option<Vec<u8>> {
        let chix = font.windows(4).position(|w| w == b"CHIX")?;
        let len = u32::from_be_bytes(font[chix + 4..chix + 8].try_into().unwrap()) as usize;
        font[chix + 8..chix + 8 + len].chunks(9).find_map(|e| {
            (u32::from_be_bytes(e[..4].try_into().unwrap()) == code).then(|| {
                let at = u32::from_be_bytes(e[5..9].try_into().unwrap()) as usize;
                let (w, h) = (font[at + 1] as usize, font[at + 3] as usize);
                font[at..at + 10 + (w * h).div_ceil(8)].to_vec()
            })
        })
    }

    #[test]
    fn a_pf2_subset_keeps_the_header_and_the_chosen_glyphs() {
        let f = font();
        let sub = pf2_subset(&f, |c| c != 0x42).unwrap();
        assert!(sub.starts_with(&section(b"FILE", b"PFF2")));
        assert!(sub.windows(11).any(|w| w == b"NAME\0\0\0\x07Tes"));
        assert_eq!(glyph_of(&sub, 0x41), Some(glyph(8, 2, 0xaa)));
        assert_eq!(glyph_of(&sub, 0x42), None);
        assert_eq!(glyph_of(&sub, 0x43), Some(glyph(8, 1, 0xff)));
        // The whole font kept is the font.
        assert_eq!(pf2_subset(&f, |_| true).unwrap(), f);
    }

    #[test]
    fn a_damaged_pf2_is_an_error_that_says_where() {
        let f = font();
        for cut in [3, 10, 30, f.len() - 1] {
            let e = pf2_subset(&f[..cut], |_| true).unwrap_err();
            assert!(
                e.contains(" at ") || e.contains("offset"),
                "cut at {cut}: {e}"
            );
        }
        let mut bad = f.clone();
        // The first index entry points far past the end.
        let chix = bad.windows(4).position(|w| w == b"CHIX").unwrap();
        bad[chix + 8 + 5..chix + 8 + 9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(pf2_subset(&bad, |_| true).unwrap_err().contains("U+0041"));
    }
}
