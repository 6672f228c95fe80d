//! End-to-end: `rehost run` keeps a disk's dirty bitmaps up to date while
//! SeaBIOS's own AHCI driver writes it (resources/storage/int13-rw.asm
//! through INT 13h): after a clean power-off the bitmap holds exactly the
//! written range and is still `tracking`; after SIGKILL in the middle of
//! the writes it covers every sector that holds the guest's data.

use std::path::Path;
use std::time::Duration;

use rehost_tests::qmp::Qmp;
use rehost_tests::storage::{rehost_disk, require_tools, scratch, Int13Program};
use rehost_tests::{kvm_available, run, Running};
use serde_json::Value;

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
const DISK_BYTES: u64 = 64 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A dynamic VHDX holding the program at LBA 0, without bitmaps.
fn program_disk(dir: &Path, prog: &Int13Program) -> std::path::PathBuf {
    let raw = dir.join("base.raw");
    prog.raw_disk(&raw, DISK_BYTES);
    let vhdx = dir.join("disk.vhdx");
    rehost_disk(REHOST, &["convert", "-O", "vhdx", s(&raw), s(&vhdx)]);
    vhdx
}

/// [`program_disk`] with bitmap `b1`.
fn disk_with_bitmap(dir: &Path, prog: &Int13Program) -> std::path::PathBuf {
    let vhdx = program_disk(dir, prog);
    rehost_disk(REHOST, &["bitmap", "add", s(&vhdx), "b1"]);
    vhdx
}

/// `rehost run` of the given `--disk` values with a control socket at `qmp`.
fn run_with_qmp(disks: &[&str], qmp: &Path) -> Running {
    let mut args = vec!["run", "--memory", "64M"];
    for d in disks {
        args.push("--disk");
        args.push(d);
    }
    args.push("--qmp");
    args.push(s(qmp));
    Running::start(REHOST, &args)
}

/// A program that writes 24 MiB without reading back: long enough to be
/// interrupted.
fn long_writer() -> Int13Program {
    Int13Program {
        sectors: 48 * 2048,
        verify: false,
        ..Default::default()
    }
}

/// `rehost disk bitmap list --json --extents`'s entry for `b1`.
fn bitmap(image: &Path) -> Value {
    let out = rehost_disk(REHOST, &["bitmap", "list", "--json", "--extents", s(image)]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    v["bitmaps"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == "b1"))
        .cloned()
        .unwrap_or_else(|| panic!("no bitmap b1: {out}"))
}

fn extents(b: &Value) -> Vec<(u64, u64)> {
    b["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_u64().unwrap(), e[1].as_u64().unwrap()))
        .collect()
}

/// SeaBIOS writes the disk attached by `attach` (the image's path in, the
/// `rehost run` arguments out) through INT 13h and powers off cleanly:
/// the bitmap then holds exactly the written range.
fn clean_power_off_is_tracked_exactly(test: &str, attach: impl Fn(&str) -> Vec<String>) {
    if !kvm_available(test) {
        return;
    }
    require_tools(&["nasm"]);
    let dir = scratch(test);
    let prog = Int13Program {
        sectors: 4 * 2048,
        ..Default::default()
    };
    let vhdx = disk_with_bitmap(&dir, &prog);
    let before = bitmap(&vhdx);
    assert_eq!(before["dirty_bytes"], 0, "{before}");
    let mut args: Vec<String> = ["run", "--memory", "64M"].map(String::from).to_vec();
    args.extend(attach(s(&vhdx)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(REHOST, &args, Duration::from_secs(300));
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!("int13: ok sectors={:08x}", prog.sectors)),
        "{out}"
    );
    let after = bitmap(&vhdx);
    assert_eq!(after["state"], "tracking", "{after} {err}");
    assert_eq!(after["generation"], before["generation"]);
    let start = prog.start_lba * 512;
    let len = prog.sectors * 512;
    // The written range is 64 KiB-aligned, so the bitmap holds it exactly.
    assert_eq!(extents(&after), vec![(start, len)], "{after}");
    rehost_disk(REHOST, &["check", s(&vhdx)]);
}

#[test]
fn guest_writes_are_tracked_exactly_across_a_clean_power_off() {
    clean_power_off_is_tracked_exactly("dirty_run_clean", |disk| {
        vec!["--disk".into(), format!("{disk},controller=ahci")]
    });
}

/// The same through SeaBIOS's USB mass-storage driver on UHCI: a USB disk's
/// writes reach its bitmaps too.
#[test]
fn usb_disk_writes_are_tracked_exactly_across_a_clean_power_off() {
    clean_power_off_is_tracked_exactly("dirty_run_usb", |disk| {
        vec![
            "--usb".into(),
            format!("disk:{disk}"),
            "--boot".into(),
            "usb".into(),
        ]
    });
}

#[test]
fn sigkill_mid_write_misses_no_written_sector() {
    if !kvm_available("dirty_run_sigkill") {
        return;
    }
    require_tools(&["nasm"]);
    let dir = scratch("dirty_run_sigkill");
    let prog = long_writer();
    let vhdx = disk_with_bitmap(&dir, &prog);
    let sock = tempfile::tempdir().unwrap();
    let sock_path = sock.path().join("vm.sock");
    let disk = format!("{},controller=ahci", s(&vhdx));
    let mut vm = run_with_qmp(&[&disk], &sock_path);
    let mut q = Qmp::connect(&sock_path, true);
    assert!(
        vm.wait_for("int13: write start", 1, Duration::from_secs(60)),
        "{}",
        vm.stdout()
    );
    // The bitmap is live on the control socket, in QEMU's shape.
    let block = q.ok("query-block", None);
    let live = &block[0]["inserted"]["dirty-bitmaps"][0];
    assert_eq!(live["name"], "b1", "{block}");
    assert_eq!(live["granularity"], 65536);
    assert_eq!(live["recording"], true);
    std::thread::sleep(Duration::from_millis(1500));
    vm.signal(libc::SIGKILL);
    vm.wait(Duration::from_secs(10));
    assert!(
        !vm.stdout().contains("write done"),
        "the writer finished before the kill; the test proves nothing"
    );
    rehost_disk(REHOST, &["check", s(&vhdx)]);
    let b = bitmap(&vhdx);
    let dirty = extents(&b);
    let covered = |off: u64| dirty.iter().any(|&(s, l)| off >= s && off < s + l);
    let flat = dir.join("flat.raw");
    rehost_disk(REHOST, &["convert", "-O", "raw", s(&vhdx), s(&flat)]);
    let data = std::fs::read(&flat).unwrap();
    let mut written = 0u64;
    for lba in prog.start_lba..prog.start_lba + prog.sectors {
        let at = lba as usize * 512;
        if data[at..at + 512] == prog.expected_sector(lba) {
            written += 1;
            assert!(
                covered(lba * 512),
                "sector {lba} was written but is not dirty: {b}"
            );
        }
    }
    assert!(written > 0, "the guest wrote nothing before the kill");
    let dirty_bytes = b["dirty_bytes"].as_u64().unwrap();
    eprintln!(
        "dirty_run_sigkill: {written} sectors written, {} KiB dirty ({:.1}% over-reported), state {}",
        dirty_bytes / 1024,
        100.0 * (dirty_bytes as f64 - (written * 512) as f64) / (written * 512) as f64,
        b["state"]
    );
}

/// The `error.desc` of a command that must fail.
fn qmp_error(q: &mut Qmp, cmd: &str, args: Value) -> String {
    let r = q.execute(cmd, Some(args));
    r["error"]["desc"]
        .as_str()
        .unwrap_or_else(|| panic!("{cmd} should fail: {r}"))
        .to_owned()
}

#[test]
fn a_bitmap_added_live_through_qmp_tracks_the_guest_writes() {
    if !kvm_available("dirty_run_live_add") {
        return;
    }
    require_tools(&["nasm"]);
    let dir = scratch("dirty_run_live_add");
    let prog = Int13Program {
        sectors: 4 * 2048,
        ..Default::default()
    };
    // No bitmap, no sidecar: the image as a user brings it.
    let vhdx = program_disk(&dir, &prog);
    let sidecar = dir.join("disk.vhdx.rehost-bitmaps");
    // A second disk nobody adds a bitmap to: it must not get a sidecar.
    let other = dir.join("other.vhdx");
    rehost_disk(REHOST, &["create", s(&other), "16M"]);
    let other_sidecar = dir.join("other.vhdx.rehost-bitmaps");
    let sock = tempfile::tempdir().unwrap();
    let sock_path = sock.path().join("vm.sock");
    let disk = format!("{},controller=ahci,id=sys", s(&vhdx));
    let second = format!("{},controller=ahci", s(&other));
    let mut vm = run_with_qmp(&[&disk, &second], &sock_path);
    let mut q = Qmp::connect(&sock_path, true);
    // Bad requests first: each a named error, nothing created.
    let e = qmp_error(
        &mut q,
        "block-dirty-bitmap-add",
        serde_json::json!({"node": "nope", "name": "b"}),
    );
    assert!(e.contains("Cannot find device='nope'"), "{e}");
    let e = qmp_error(
        &mut q,
        "block-dirty-bitmap-add",
        serde_json::json!({"node": "sys", "name": "b", "granularity": 3000}),
    );
    assert!(e.contains("granularity 3000"), "{e}");
    let e = qmp_error(
        &mut q,
        "block-dirty-bitmap-add",
        serde_json::json!({"node": "sys", "name": "bad name!"}),
    );
    assert!(e.contains("bitmap name"), "{e}");
    let e = qmp_error(
        &mut q,
        "block-dirty-bitmap-clear",
        serde_json::json!({"node": "sys", "name": "b1"}),
    );
    assert!(
        e.contains("Dirty bitmap 'b1' not found in node 'sys'"),
        "{e}"
    );
    assert!(
        !sidecar.exists(),
        "a refused add created {}",
        sidecar.display()
    );

    q.ok(
        "block-dirty-bitmap-add",
        Some(serde_json::json!({"node": "sys", "name": "b1", "persistent": true})),
    );
    assert!(
        !vm.stdout().contains("int13: write start"),
        "the guest started writing before the bitmap was added; the test proves nothing"
    );
    assert!(sidecar.exists(), "no sidecar after block-dirty-bitmap-add");
    let e = qmp_error(
        &mut q,
        "block-dirty-bitmap-add",
        serde_json::json!({"node": "sys", "name": "b1"}),
    );
    assert!(e.contains("already exists"), "{e}");
    // A second bitmap, removed again while the guest runs.
    q.ok(
        "block-dirty-bitmap-add",
        Some(serde_json::json!({"node": "sys", "name": "gone", "granularity": 4096})),
    );
    let block = q.ok("query-block", None);
    let names: Vec<&str> = block[0]["inserted"]["dirty-bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b1", "gone"], "{block}");
    q.ok(
        "block-dirty-bitmap-remove",
        Some(serde_json::json!({"node": "sys", "name": "gone"})),
    );
    let status = vm.wait(Duration::from_secs(300));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", vm.stderr());
    assert!(
        vm.stdout()
            .contains(&format!("int13: ok sectors={:08x}", prog.sectors)),
        "{}",
        vm.stdout()
    );
    let b = bitmap(&vhdx);
    assert_eq!(b["state"], "tracking", "{b}");
    let start = prog.start_lba * 512;
    assert_eq!(extents(&b), vec![(start, prog.sectors * 512)], "{b}");
    let out = rehost_disk(REHOST, &["bitmap", "list", "--json", s(&vhdx)]);
    assert!(!out.contains("\"gone\""), "{out}");
    assert!(
        !other_sidecar.exists(),
        "a disk without bitmaps got a sidecar"
    );
    rehost_disk(REHOST, &["check", s(&vhdx)]);
}

/// `nbdinfo --json --map=CONTEXT URI`: (offset, length, type) entries.
fn nbd_map(uri: &str, context: &str) -> Vec<(u64, u64, u64)> {
    let out = std::process::Command::new("nbdinfo")
        .args(["--json", &format!("--map={context}"), uri])
        .output()
        .expect("nbdinfo (apt-get install libnbd-bin)");
    assert!(out.status.success(), "nbdinfo: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
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

/// Sectors from the program's first LBA on that hold its data, counted
/// while they run unbroken.
fn written_prefix(data: &[u8], prog: &Int13Program) -> u64 {
    (prog.start_lba..prog.start_lba + prog.sectors)
        .take_while(|&lba| {
            let at = lba as usize * 512;
            data[at..at + 512] == prog.expected_sector(lba)
        })
        .count() as u64
}

#[test]
fn a_live_nbd_export_is_a_point_in_time_with_its_bitmap_frozen() {
    if !kvm_available("dirty_run_nbd_live") {
        return;
    }
    require_tools(&["nasm", "nbdinfo", "qemu-img"]);
    let dir = scratch("dirty_run_nbd_live");
    let prog = long_writer();
    let vhdx = program_disk(&dir, &prog);
    let sock = tempfile::tempdir().unwrap();
    let qmp_path = sock.path().join("vm.sock");
    let nbd_path = sock.path().join("nbd.sock");
    let disk = format!("{},controller=ahci,id=sys", s(&vhdx));
    let mut vm = run_with_qmp(&[&disk], &qmp_path);
    let mut q = Qmp::connect(&qmp_path, true);
    q.ok(
        "block-dirty-bitmap-add",
        Some(serde_json::json!({"node": "sys", "name": "b1"})),
    );
    let e = qmp_error(
        &mut q,
        "nbd-server-add",
        serde_json::json!({"device": "sys"}),
    );
    assert_eq!(e, "NBD server not running");
    let addr = serde_json::json!({"type": "unix", "data": {"path": s(&nbd_path)}});
    q.ok(
        "nbd-server-start",
        Some(serde_json::json!({ "addr": addr })),
    );
    let e = qmp_error(
        &mut q,
        "nbd-server-start",
        serde_json::json!({ "addr": addr }),
    );
    assert_eq!(e, "NBD server already running");
    let e = qmp_error(
        &mut q,
        "nbd-server-add",
        serde_json::json!({"device": "sys", "bitmap": "nope"}),
    );
    assert!(e.contains("'nope'"), "{e}");
    assert!(
        vm.wait_for("int13: write start", 1, Duration::from_secs(60)),
        "{}",
        vm.stdout()
    );
    std::thread::sleep(Duration::from_millis(700));
    q.ok(
        "nbd-server-add",
        Some(serde_json::json!({"device": "sys", "name": "backup", "bitmap": "b1"})),
    );
    let uri = format!("nbd+unix:///backup?socket={}", s(&nbd_path));
    // Copy the export while the guest goes on writing.
    let copy = dir.join("point-in-time.raw");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri, s(&copy)])
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img convert: {out:?}");
    let dirty = nbd_map(&uri, "qemu:dirty-bitmap:b1");
    let e = qmp_error(
        &mut q,
        "nbd-server-remove",
        serde_json::json!({"name": "nope"}),
    );
    assert!(e.contains("does not exist"), "{e}");
    q.ok(
        "nbd-server-remove",
        Some(serde_json::json!({"name": "backup"})),
    );
    q.ok("nbd-server-stop", None);
    assert!(!nbd_path.exists(), "nbd-server-stop left its socket");
    let status = vm.wait(Duration::from_secs(300));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", vm.stderr());

    // The copy is one moment of the guest's sequential writes: a prefix of
    // its sectors and nothing after it.
    let snap = std::fs::read(&copy).unwrap();
    let k = written_prefix(&snap, &prog);
    let tail = (prog.start_lba + k) as usize * 512;
    assert!(
        snap[tail..].iter().all(|&b| b == 0),
        "the export holds data past its moment's last sector ({k} sectors)"
    );
    let flat = dir.join("final.raw");
    rehost_disk(REHOST, &["convert", "-O", "raw", s(&vhdx), s(&flat)]);
    let last = written_prefix(&std::fs::read(&flat).unwrap(), &prog);
    assert!(k > 0, "the export was taken before the guest wrote");
    assert!(
        last > k,
        "the guest wrote nothing after the export was taken ({k} of {last}); the test proves nothing"
    );
    // The frozen bitmap is exactly the granules written up to that moment.
    let start = prog.start_lba * 512;
    let end = (start + k * 512).div_ceil(65536) * 65536;
    let dirty_ranges: Vec<(u64, u64)> = dirty
        .iter()
        .filter(|e| e.2 & 1 == 1)
        .map(|e| (e.0, e.1))
        .collect();
    assert_eq!(dirty_ranges, vec![(start, end - start)], "{dirty:?}");
    eprintln!("dirty_run_nbd_live: export at {k} sectors, guest went on to {last}");
    rehost_disk(REHOST, &["check", s(&vhdx)]);
}

/// `nbdcopy URI OUT`: the bytes read, or why it failed.
fn nbdcopy(uri: &str, out: &Path) -> Result<Vec<u8>, String> {
    let _ = std::fs::remove_file(out);
    let o = std::process::Command::new("nbdcopy")
        .args([uri, s(out)])
        .output()
        .unwrap();
    if o.status.success() {
        Ok(std::fs::read(out).unwrap())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn a_live_nbd_export_over_tls_serves_only_clients_the_ca_certified() {
    if !kvm_available("dirty_run_nbd_tls") {
        return;
    }
    require_tools(&["openssl", "nbdcopy"]);
    let dir = scratch("dirty_run_nbd_tls");
    let pki = rehost_tests::pki::make_pki(&dir);
    // A disk SeaBIOS cannot boot (no 55 AA): the VM stays up, retrying.
    let content: Vec<u8> = (0..8usize << 20)
        .map(|i| ((i / 4096) as u8).wrapping_mul(31) ^ (i % 253) as u8)
        .map(|b| if b == 0x55 || b == 0xaa { 0 } else { b })
        .collect();
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, &content).unwrap();
    let sock = tempfile::tempdir().unwrap();
    let qmp_path = sock.path().join("vm.sock");
    let nbd_path = sock.path().join("nbd.sock");
    let disk = format!("{},controller=ahci,id=sys", s(&raw));
    let mut vm = run_with_qmp(&[&disk], &qmp_path);
    let mut q = Qmp::connect(&qmp_path, true);

    let creds = |id: &str, dir: &Path, extra: Value| {
        let mut a = serde_json::json!({"qom-type": "tls-creds-x509", "id": id, "dir": s(dir)});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let nowhere = dir.join("nowhere");
    let e = qmp_error(
        &mut q,
        "object-add",
        creds("t", &nowhere, serde_json::json!({})),
    );
    assert!(e.contains("nowhere/server-cert.pem"), "{e}");
    let e = qmp_error(
        &mut q,
        "object-add",
        creds("t", &pki.server, serde_json::json!({"endpoint": "client"})),
    );
    assert!(e.contains("server endpoint"), "{e}");
    let e = qmp_error(
        &mut q,
        "object-add",
        serde_json::json!({"qom-type": "secret", "id": "s", "data": "x"}),
    );
    assert!(e.contains("tls-creds-x509"), "{e}");
    let addr = serde_json::json!({"type": "unix", "data": {"path": s(&nbd_path)}});
    let e = qmp_error(
        &mut q,
        "nbd-server-start",
        serde_json::json!({"addr": addr, "tls-creds": "tls0"}),
    );
    assert_eq!(e, "No TLS credentials with id 'tls0'");
    assert!(!nbd_path.exists());
    q.ok(
        "object-add",
        Some(creds("tls0", &pki.server, serde_json::json!({}))),
    );
    let e = qmp_error(
        &mut q,
        "object-add",
        creds("tls0", &pki.server, serde_json::json!({})),
    );
    assert!(e.contains("duplicate"), "{e}");
    q.ok(
        "nbd-server-start",
        Some(serde_json::json!({"addr": addr, "tls-creds": "tls0"})),
    );
    q.ok(
        "nbd-server-add",
        Some(serde_json::json!({"device": "sys", "name": "backup"})),
    );

    let uri = format!("nbds+unix:///backup?socket={}", s(&nbd_path));
    let with = |d: &Path| format!("{uri}&tls-certificates={}", s(d));
    let copy = dir.join("copy.raw");
    let got = nbdcopy(&with(&pki.client), &copy).expect("the CA's client");
    assert!(got == content, "the TLS export read other bytes");
    let plain = format!("nbd+unix:///backup?socket={}", s(&nbd_path));
    nbdcopy(&plain, &copy).expect_err("a plain-text client was served");
    nbdcopy(&with(&pki.rogue), &copy).expect_err("another CA's client was served");
    // Deleting the object leaves the running server as it started.
    q.ok("object-del", Some(serde_json::json!({"id": "tls0"})));
    let e = qmp_error(&mut q, "object-del", serde_json::json!({"id": "tls0"}));
    assert!(e.contains("not found"), "{e}");
    let got = nbdcopy(&with(&pki.client), &copy).expect("the CA's client after object-del");
    assert!(got == content);
    q.ok("nbd-server-stop", None);
    q.ok("quit", None);
    let status = vm.wait(Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", vm.stderr());
}
