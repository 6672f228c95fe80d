//! `rehost disk serve --nbd` against third-party NBD peers: nbdinfo and
//! nbdcopy (Debian `libnbd-bin`), python3-libnbd, qemu-img and qemu-io over
//! `nbd+unix://` and `nbd://` URIs, and hand-made misbehaving peers.

mod disk_common;

use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use disk_common::*;
use rehost_disk::ImageFormat;

const SIZE: u64 = 32 << 20;
const GRANULE: u64 = 64 << 10;

/// Whether the NBD peers are installed (see [`have_tools`]).
fn have_peers() -> bool {
    have_tools(
        &["nbdinfo", "qemu-io", "qemu-img"],
        "nbdinfo/qemu-io/qemu-img not installed (apt-get install libnbd-bin qemu-utils)",
    )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nbdinfo --map[=CONTEXT] --json`: (offset, length, type) entries.
fn nbd_map(uri: &str, context: Option<&str>) -> Vec<(u64, u64, u64)> {
    let map = match context {
        Some(c) => format!("--map={c}"),
        None => "--map".into(),
    };
    let out = run("nbdinfo", &["--json", &map, uri]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The ranges of a map whose type has `bit` set (or clear with
/// `want == false`), merged.
fn ranges_with(map: &[(u64, u64, u64)], bit: u64, want: bool) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &(o, l, t) in map {
        if (t & bit != 0) == want {
            match out.last_mut() {
                Some(r) if r.end == o => r.end = o + l,
                _ => out.push(o..o + l),
            }
        }
    }
    out
}

/// Whole granules covering the writes, merged.
fn granules(writes: &[(u64, u64)]) -> Vec<Range<u64>> {
    let mut v: Vec<Range<u64>> = writes
        .iter()
        .map(|&(o, l)| o / GRANULE * GRANULE..((o + l).div_ceil(GRANULE) * GRANULE).min(SIZE))
        .collect();
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in v {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn qemu_io_writes(uri: &str, writes: &[(u64, u64)], pattern: u8) {
    let mut args = vec!["-f".to_owned(), "raw".to_owned()];
    for (o, l) in writes {
        args.push("-c".into());
        args.push(format!("write -P {pattern} {o} {l}"));
    }
    args.push(uri.to_owned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("qemu-io", &a);
    assert!(!out.contains("failed"), "{out}");
}

fn qemu_fmt(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Raw => "raw",
        ImageFormat::Vhd => "vpc",
        ImageFormat::Vhdx => "vhdx",
    }
}

/// An image with data in its first MiBs and a bitmap `b` added after.
fn image_with_bitmap(dir: &Path, format: ImageFormat) -> PathBuf {
    let img = dir.join(format!("disk.{}", ext(format)));
    rehost_ok(&[&"disk", &"create", &"-f", &format.name(), &img, &"32M"]);
    write(
        &img,
        &[(0, vec![0x11; 3 << 20]), (20 << 20, vec![0x22; 1 << 20])],
    );
    rehost_ok(&[&"disk", &"bitmap", &"add", &img, &"b"]);
    img
}

const WRITES: &[(u64, u64)] = &[
    ((1 << 20) + 4096, 4096),
    (8 << 20, 200 << 10),
    ((16 << 20) - 512, 1024),
    (SIZE - 4096, 4096),
];

fn bitmap_and_allocation(format: ImageFormat) {
    let dir = tempdir();
    if !have_peers() || !format_works(format, dir.path()) {
        return;
    }
    let img = image_with_bitmap(dir.path(), format);
    let sock = dir.path().join("nbd.sock");
    let s = Served::unix(dir.path(), &["--bitmap", "b"], &img, None);
    assert_eq!(
        ranges_with(&nbd_map(&s.uri, Some("qemu:dirty-bitmap:b")), 1, true),
        vec![],
        "a new bitmap is clean"
    );
    qemu_io_writes(&s.uri, WRITES, 0x5a);
    let dirty = ranges_with(&nbd_map(&s.uri, Some("qemu:dirty-bitmap:b")), 1, true);
    assert_eq!(dirty, granules(WRITES), "{}", format.name());
    let data = ranges_with(&nbd_map(&s.uri, None), 1, false);
    // The socket is 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    s.stop();
    assert!(!sock.exists(), "the socket file is removed on exit");

    // base:allocation is the image's own allocation.
    let image = rehost_disk::open(
        &img,
        &rehost_disk::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        data,
        image.allocated_extents().unwrap(),
        "{}",
        format.name()
    );
    drop(image);
    // The writes landed in the image, and the bitmap kept tracking them.
    let bytes = read_all(&img);
    for &(o, l) in WRITES {
        assert!(bytes[o as usize..(o + l) as usize]
            .iter()
            .all(|&b| b == 0x5a));
    }
    let out = rehost_ok(&[&"disk", &"bitmap", &"list", &"--json", &"--extents", &img]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let b = &v["bitmaps"][0];
    assert_eq!(b["state"], "tracking", "{out}");
    let listed: Vec<Range<u64>> = b["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let o = e[0].as_u64().unwrap();
            o..o + e[1].as_u64().unwrap()
        })
        .collect();
    assert_eq!(listed, granules(WRITES), "{out}");
    rehost_ok(&[&"disk", &"check", &img]);
    if format == ImageFormat::Vhdx {
        run("qemu-img", &["check", "-f", "vhdx", img.to_str().unwrap()]);
    }
}

#[test]
fn dirty_bitmap_and_allocation_vhdx() {
    bitmap_and_allocation(ImageFormat::Vhdx);
}

#[test]
fn dirty_bitmap_and_allocation_vhd() {
    bitmap_and_allocation(ImageFormat::Vhd);
}

#[test]
fn dirty_bitmap_and_allocation_raw() {
    bitmap_and_allocation(ImageFormat::Raw);
}

const COPY_DIRTY_PY: &str = r#"
import sys, nbd
uri, target = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.add_meta_context("qemu:dirty-bitmap:b")
h.connect_uri(uri)
size = h.get_size()
dirty = []
def cb(metacontext, offset, entries, err):
    if metacontext != "qemu:dirty-bitmap:b":
        return 0
    at = offset
    for i in range(0, len(entries), 2):
        length, flags = entries[i], entries[i + 1]
        if flags & 1:
            dirty.append((at, length))
        at += length
    return 0
at = 0
while at < size:
    n = min(size - at, 1 << 30)
    before = len(dirty)
    seen = []
    def count(metacontext, offset, entries, err):
        cb(metacontext, offset, entries, err)
        if metacontext == "qemu:dirty-bitmap:b":
            seen.append(sum(entries[0::2]))
        return 0
    h.block_status(n, at, count)
    at += seen[0]
copied = 0
with open(target, "r+b") as f:
    for off, length in dirty:
        done = 0
        while done < length:
            k = min(length - done, 4 << 20)
            f.seek(off + done)
            f.write(h.pread(k, off + done))
            done += k
            copied += k
print(copied)
"#;

#[test]
fn python_libnbd_copies_dirty_blocks_onto_old_copy() {
    let dir = tempdir();
    let have_py = Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_peers() || !have_py {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3-libnbd is not installed");
        }
        skip("python3-libnbd not installed (apt-get install python3-libnbd)");
        return;
    }
    let img = image_with_bitmap(dir.path(), ImageFormat::Vhdx);
    let old = dir.path().join("old.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            img.to_str().unwrap(),
            old.to_str().unwrap(),
        ],
    );
    let s = Served::unix(dir.path(), &["--bitmap", "b"], &img, None);
    qemu_io_writes(&s.uri, WRITES, 0x77);
    qemu_io_writes(&s.uri, &[(5 << 20, 3 << 20)], 0x78);
    let script = dir.path().join("copy_dirty.py");
    std::fs::write(&script, COPY_DIRTY_PY).unwrap();
    let out = run(
        "/usr/bin/python3",
        &[script.to_str().unwrap(), &s.uri, old.to_str().unwrap()],
    );
    let copied: u64 = out.trim().parse().unwrap();
    let mut all = WRITES.to_vec();
    all.push((5 << 20, 3 << 20));
    let expected: u64 = granules(&all).iter().map(|r| r.end - r.start).sum();
    assert_eq!(copied, expected, "only the dirty granules were copied");
    s.stop();
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "vhdx",
            old.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
}

fn convert_equals(format: ImageFormat, differencing: bool) {
    let dir = tempdir();
    if !have_peers() || !format_works(format, dir.path()) {
        return;
    }
    let mut img = image_with_bitmap(dir.path(), format);
    if differencing {
        let child = dir.path().join(format!("child.{}", ext(format)));
        rehost_ok(&[&"disk", &"create", &"--parent", &img, &child]);
        write(
            &child,
            &[(2 << 20, vec![0x33; 2 << 20]), (30 << 20, vec![0x44; 4096])],
        );
        img = child;
    }
    // Over TCP on a port the kernel picks.
    let s = Served::start(&[&"--nbd", &"tcp:127.0.0.1:0", &"--read-only", &img], None);
    assert!(s.uri.starts_with("nbd://127.0.0.1:"), "{}", s.uri);
    let out = dir.path().join("out.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &s.uri,
            out.to_str().unwrap(),
        ],
    );
    // nbdcopy as well, when installed.
    let out2 = dir.path().join("out2.raw");
    if Command::new("nbdcopy").arg("--version").output().is_ok() {
        std::fs::write(&out2, b"").unwrap();
        run("nbdcopy", &[&s.uri, out2.to_str().unwrap()]);
        assert_eq!(sha256_file(&out), sha256_file(&out2));
    }
    s.stop();
    assert_eq!(std::fs::read(&out).unwrap(), read_all(&img));
    let rout = rehost_ok(&[&"disk", &"compare", &out, &img]);
    assert!(rout.contains("identical"), "{rout}");
    if !differencing {
        run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                qemu_fmt(format),
                out.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
    }
}

#[test]
fn qemu_img_convert_from_export_raw() {
    convert_equals(ImageFormat::Raw, false);
}

#[test]
fn qemu_img_convert_from_export_vhd() {
    convert_equals(ImageFormat::Vhd, false);
}

#[test]
fn qemu_img_convert_from_export_vhdx() {
    convert_equals(ImageFormat::Vhdx, false);
}

#[test]
fn qemu_img_convert_from_export_differencing() {
    convert_equals(ImageFormat::Vhdx, true);
    convert_equals(ImageFormat::Vhd, true);
}

#[test]
fn read_only_export_refuses_writes() {
    let dir = tempdir();
    if !have_peers() {
        return;
    }
    let img = image_with_bitmap(dir.path(), ImageFormat::Vhdx);
    let before = sha256_file(&img);
    let sidecar = rehost_disk::dirty::sidecar_path(&img);
    let sidecar_before = sha256_file(&sidecar);
    let s = Served::unix(dir.path(), &["--read-only", "--bitmap", "b"], &img, None);
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4096", &s.uri])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || text.contains("failed") || text.contains("read-only"),
        "the write was not refused: {text}"
    );
    // Bypassing the client's own read-only check: NBD_EPERM.
    let mut c = RawClient::connect(&s.socket(), "disk");
    assert_eq!(c.write(0, &[1u8; 4096]), 1, "NBD_EPERM");
    assert_eq!(c.read(0, 4096).unwrap(), vec![0x11; 4096]);
    drop(c);
    let read = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x11 0 4096", &s.uri],
    );
    assert!(!read.contains("fail"), "{read}");
    s.stop();
    assert_eq!(sha256_file(&img), before, "the image is unchanged");
    assert_eq!(
        sha256_file(&sidecar),
        sidecar_before,
        "the sidecar is unchanged"
    );
}

/// A hand-made NBD client: fixed newstyle, structured replies, NBD_OPT_GO.
struct RawClient {
    s: UnixStream,
    cookie: u64,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

impl RawClient {
    fn open(sock: &Path) -> UnixStream {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn greeting(s: &mut UnixStream) {
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap();
    }

    fn option(s: &mut UnixStream, opt: u32, data: &[u8]) {
        let mut b = b"IHAVEOPT".to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        s.write_all(&b).unwrap();
    }

    /// Reads option replies up to and including the final one; returns
    /// the reply types.
    fn replies(s: &mut UnixStream) -> Vec<u32> {
        let mut types = Vec::new();
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            let kind = be32(&h[12..]);
            let len = be32(&h[16..]) as usize;
            let mut d = vec![0u8; len];
            s.read_exact(&mut d).unwrap();
            types.push(kind);
            if kind == 1 || kind & (1 << 31) != 0 {
                return types;
            }
        }
    }

    fn go(s: &mut UnixStream, name: &str) {
        Self::option(s, 8, &[]);
        assert_eq!(Self::replies(s), vec![1]);
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        Self::option(s, 7, &d);
        assert_eq!(*Self::replies(s).last().unwrap(), 1, "NBD_OPT_GO acked");
    }

    fn connect(sock: &Path, name: &str) -> RawClient {
        let mut s = Self::open(sock);
        Self::greeting(&mut s);
        Self::go(&mut s, name);
        RawClient { s, cookie: 0 }
    }

    fn request(&mut self, kind: u16, offset: u64, len: u32, flags: u16) {
        self.cookie += 1;
        let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&self.cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        self.s.write_all(&b).unwrap();
    }

    /// A simple reply's error.
    fn simple(&mut self) -> u32 {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r).unwrap();
        assert_eq!(be32(&r), 0x6744_6698);
        assert_eq!(u64::from_be_bytes(r[8..].try_into().unwrap()), self.cookie);
        be32(&r[4..])
    }

    /// READ with structured replies: the data, or the error.
    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(0, offset, len, 0);
        let mut data = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).unwrap();
            assert_eq!(be32(&h), 0x668e_33ef);
            let flags = u16::from_be_bytes([h[4], h[5]]);
            let kind = u16::from_be_bytes([h[6], h[7]]);
            let mut p = vec![0u8; be32(&h[16..]) as usize];
            self.s.read_exact(&mut p).unwrap();
            match kind {
                1 => data.extend_from_slice(&p[8..]),
                0 => {}
                k if k & 0x8000 != 0 => return Err(be32(&p)),
                k => panic!("chunk type {k}"),
            }
            if flags & 1 != 0 {
                return Ok(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.request(1, offset, data.len() as u32, 0);
        self.s.write_all(data).unwrap();
        self.simple()
    }
}

/// True when the server closed the connection (EOF or reset) within
/// `within`.
fn closed(s: &mut UnixStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn misbehaving_peers_get_errors_and_the_server_keeps_serving() {
    let dir = tempdir();
    if !have_peers() {
        return;
    }
    let img = image_with_bitmap(dir.path(), ImageFormat::Vhdx);
    let sock = dir.path().join("nbd.sock");
    let mut served = Served::unix(dir.path(), &["--bitmap", "b"], &img, Some(1500));
    let check_alive = |s: &mut Served| {
        assert!(s.alive(), "the server died");
        let mut c = RawClient::connect(&sock, "disk");
        assert_eq!(c.read(0, 4096).unwrap(), vec![0x11; 4096]);
    };

    // Garbage instead of the client flags and options.
    let mut s = RawClient::open(&sock);
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&[0xde; 300]).unwrap();
    assert!(closed(&mut s, Duration::from_secs(5)), "garbage flags");
    let mut s = RawClient::open(&sock);
    RawClient::greeting(&mut s);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed(&mut s, Duration::from_secs(5)), "garbage option");
    check_alive(&mut served);

    // Unknown options: NBD_REP_ERR_UNSUP, and the haggling goes on.
    let mut s = RawClient::open(&sock);
    RawClient::greeting(&mut s);
    RawClient::option(&mut s, 99, b"hello");
    assert_eq!(RawClient::replies(&mut s), vec![(1 << 31) + 1]);
    RawClient::option(&mut s, 5, &[]);
    assert_eq!(RawClient::replies(&mut s), vec![(1 << 31) + 1], "STARTTLS");
    // An unknown export: NBD_REP_ERR_UNKNOWN.
    RawClient::option(&mut s, 7, &[0, 0, 0, 3, b'x', b'y', b'z', 0, 0]);
    assert_eq!(RawClient::replies(&mut s), vec![(1 << 31) + 6]);
    // Malformed GO data: NBD_REP_ERR_INVALID.
    RawClient::option(&mut s, 7, &[0, 0, 0, 200, b'x']);
    assert_eq!(RawClient::replies(&mut s), vec![(1 << 31) + 3]);
    RawClient::go(&mut s, "disk");
    let mut c = RawClient { s, cookie: 0 };
    assert_eq!(c.read(0, 512).unwrap(), vec![0x11; 512]);

    // Bad requests on a good connection: errors, and it keeps working.
    assert_eq!(
        c.read(SIZE - 512, 1024),
        Err(22),
        "read beyond the end: EINVAL"
    );
    assert_eq!(
        c.read(u64::MAX - 10, 512),
        Err(22),
        "offset overflow: EINVAL"
    );
    assert_eq!(
        c.write(SIZE, &[0u8; 512]),
        28,
        "write beyond the end: ENOSPC"
    );
    assert_eq!(c.read(0, 64 << 20), Err(22), "over-long read: EINVAL");
    c.request(77, 0, 0, 0);
    assert_eq!(c.simple(), 22, "unknown command: EINVAL");
    c.request(7, 0, 4096, 0);
    let mut h = [0u8; 20];
    c.s.read_exact(&mut h).unwrap();
    let mut p = vec![0u8; be32(&h[16..]) as usize];
    c.s.read_exact(&mut p).unwrap();
    assert_eq!(be32(&p), 22, "BLOCK_STATUS without a context: EINVAL");
    assert_eq!(c.read(4096, 4096).unwrap(), vec![0x11; 4096]);
    // Unaligned I/O is served (read-modify-write).
    assert_eq!(c.write(10_001, &[0x99; 3]), 0);
    let back = c.read(9_999, 7).unwrap();
    assert_eq!(back, vec![0x11, 0x11, 0x99, 0x99, 0x99, 0x11, 0x11]);
    // An over-long write: EINVAL and the connection is closed.
    c.request(1, 0, 64 << 20, 0);
    assert_eq!(c.simple(), 22);
    assert!(closed(&mut c.s, Duration::from_secs(5)));

    // Over-long option data: NBD_REP_ERR_TOO_BIG, then closed.
    let mut s = RawClient::open(&sock);
    RawClient::greeting(&mut s);
    let mut b = b"IHAVEOPT".to_vec();
    b.extend_from_slice(&7u32.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&b).unwrap();
    assert_eq!(RawClient::replies(&mut s), vec![(1 << 31) + 9]);
    assert!(closed(&mut s, Duration::from_secs(5)));
    // A bad request magic closes the connection.
    let mut c = RawClient::connect(&sock, "disk");
    c.s.write_all(&[0x55; 28]).unwrap();
    assert!(closed(&mut c.s, Duration::from_secs(5)));
    check_alive(&mut served);

    // Vanishing mid-request and mid-reply.
    let mut c = RawClient::connect(&sock, "disk");
    c.request(1, 0, 1 << 20, 0);
    c.s.write_all(&[0xee; 1000]).unwrap();
    drop(c);
    for _ in 0..3 {
        let mut c = RawClient::connect(&sock, "disk");
        c.request(0, 0, 32 << 20, 0);
        let mut part = [0u8; 100];
        c.s.read_exact(&mut part).unwrap();
        drop(c);
    }
    let mut c = RawClient::connect(&sock, "disk");
    c.s.write_all(&[0x25, 0x60]).unwrap();
    drop(c);
    check_alive(&mut served);

    // Slow peers: silent in the handshake, or stalled mid-request, are
    // closed after the idle limit (1.5 s here); an idle connected client
    // between requests is kept.
    let t = Instant::now();
    let mut silent = RawClient::open(&sock);
    let mut g = [0u8; 18];
    silent.read_exact(&mut g).unwrap();
    let mut stalled = RawClient::connect(&sock, "disk");
    stalled.s.write_all(&[0x25, 0x60, 0x95]).unwrap();
    let mut idle = RawClient::connect(&sock, "disk");
    assert!(
        closed(&mut silent, Duration::from_secs(10)),
        "silent in handshake"
    );
    assert!(
        closed(&mut stalled.s, Duration::from_secs(10)),
        "stalled mid-request"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "closed too early: {waited:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        idle.read(0, 512).unwrap(),
        vec![0x11; 512],
        "idle client kept"
    );
    drop(idle);

    // 80 clients at once: 64 are served, the rest closed; afterwards a
    // normal client gets through.
    let mut many = Vec::new();
    for _ in 0..80 {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut g = [0u8; 18];
        let greeted = s.read_exact(&mut g).is_ok();
        many.push((s, greeted));
    }
    let greeted = many.iter().filter(|(_, g)| *g).count();
    assert_eq!(greeted, 64, "64 clients served, the others closed");
    drop(many);
    std::thread::sleep(Duration::from_millis(500));
    check_alive(&mut served);
    let out = run("nbdinfo", &[&served.uri]);
    assert!(out.contains("export-size: 33554432"), "{out}");
    served.stop();
    run("qemu-img", &["check", "-f", "vhdx", img.to_str().unwrap()]);
}
