//! End-to-end: the control socket (`rehost run --qmp`) driven by QEMU's own
//! client library (PyPI `qemu.qmp`), by `rehost qmp`, and by a raw client
//! that misbehaves; with real guests on the other side: SeaBIOS, a boot
//! sector that waits for the ACPI power button (resources/qmp/
//! powerbutton.boot.asm), an option ROM that reads a CD through ATAPI
//! packets on IDE and AHCI and waits for a medium change (resources/qmp/
//! atapi-change.asm), and SeaBIOS's INT 13h writing a VHDX when `quit`
//! arrives.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rehost_tests::qmp::{error_class, wait_for_socket, Qmp};
use rehost_tests::storage::{rehost_disk, require_tools, scratch, sha256, Int13Program};
use rehost_tests::{kvm_available, rom, roms_dir, run, start_rom, Running};
use serde_json::{json, Value};

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A short directory for sockets (Unix socket paths are limited to 107
/// bytes; target/ may be deep).
fn sock_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rehost-qmp")
        .tempdir()
        .unwrap()
}

/// rehost with a control socket in a short directory of its own.
struct Vm {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    run: Running,
}

impl Vm {
    /// `rehost` with `args` (starting with `run`) and `--qmp`.
    fn start(args: &[&str]) -> Self {
        let dir = sock_dir();
        let sock = dir.path().join("vm.sock");
        let mut all = args.to_vec();
        all.extend(["--qmp", s(&sock)]);
        let run = Running::start(REHOST, &all);
        Self {
            _dir: dir,
            sock,
            run,
        }
    }

    /// The test option ROM `rom_name` with 64 MiB, `more` options and
    /// `--qmp`.
    fn rom(rom_name: &str, more: &[&str]) -> Self {
        let dir = sock_dir();
        let sock = dir.path().join("vm.sock");
        let mut all = more.to_vec();
        all.extend(["--qmp", s(&sock)]);
        let run = start_rom(REHOST, rom_name, &all);
        Self {
            _dir: dir,
            sock,
            run,
        }
    }

    /// A negotiated client (waits for the socket).
    fn client(&self) -> Qmp {
        Qmp::connect(&self.sock, true)
    }

    /// `quit` through `q`: rehost must exit 0.
    fn quit(mut self, q: &mut Qmp) {
        rehost_tests::qmp::quit(q, &mut self.run, Duration::from_secs(20));
    }
}

fn wait_file_contains(path: &Path, text: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).contains(text))
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn read_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).replace('\r', "")
}

fn qemu_qmp_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn qemu_qmp_library_stops_continues_queries_and_quits() {
    if !kvm_available("qemu_qmp_library") {
        return;
    }
    assert!(
        qemu_qmp_installed(),
        "python3 cannot import qemu.qmp: run scripts/setup"
    );
    let dir = scratch("qmp_library");
    let com1 = dir.join("com1.out");
    // A differencing child over a dynamic parent, so query-block shows a
    // backing chain; a CD-ROM by its id.
    let parent = dir.join("parent.vhdx");
    let child = dir.join("child.vhdx");
    rehost_disk(REHOST, &["create", "-f", "vhdx", s(&parent), "64M"]);
    rehost_disk(REHOST, &["create", "--parent", s(&parent), s(&child)]);
    let parent_sha = sha256(&parent);
    let iso = roms_dir().join("atapi-change-one.iso");
    let mut vm = Vm::rom(
        "serial-counter",
        &[
            "--com1",
            &format!("file:{}", s(&com1)),
            "--disk",
            &format!("{},controller=ahci", s(&child)),
            "--cdrom",
            &format!("{},id=cd0", s(&iso)),
        ],
    );
    wait_for_socket(&vm.sock, Duration::from_secs(30));
    let mode = std::fs::metadata(&vm.sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    assert!(
        wait_file_contains(&com1, "line 0000", Duration::from_secs(60)),
        "the guest printed nothing on COM1"
    );
    let out = Command::new("python3")
        .arg(rehost_tests::workspace_root().join("tests/qmp/qemu_qmp_session.py"))
        .arg(&vm.sock)
        .arg(&com1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu.qmp session failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let step = |name: &str| -> &Value {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {stdout}"))
    };
    assert_eq!(
        step("status")["reply"],
        json!({"status": "running", "running": true})
    );
    let stopped = step("stopped");
    assert_eq!(stopped["event"], "STOP");
    assert_eq!(stopped["grew"], 0, "COM1 output went on while stopped");
    assert_eq!(stopped["reply"]["status"], "paused");
    let resumed = step("resumed");
    assert_eq!(resumed["event"], "RESUME");
    assert!(
        resumed["grew"].as_u64().unwrap() > 100,
        "COM1 output did not resume: {resumed}"
    );
    assert_eq!(resumed["reply"]["status"], "running");
    let block = step("block")["reply"].as_array().unwrap().clone();
    assert_eq!(block.len(), 2, "{block:?}");
    let disk = &block[0];
    assert_eq!(disk["device"], "ahci0-hd0");
    assert_eq!(disk["removable"], false);
    assert_eq!(disk["inserted"]["drv"], "vhdx");
    assert_eq!(disk["inserted"]["file"], s(&child));
    assert_eq!(disk["inserted"]["backing_file"], s(&parent));
    assert_eq!(disk["inserted"]["backing_file_depth"], 1);
    assert_eq!(
        disk["inserted"]["image"]["backing-image"]["filename"],
        s(&parent)
    );
    assert_eq!(disk["inserted"]["image"]["virtual-size"], 64 << 20);
    let cd = &block[1];
    assert_eq!(cd["device"], "cd0");
    assert_eq!(cd["removable"], true);
    assert_eq!(cd["tray_open"], false);
    assert_eq!(cd["inserted"]["ro"], true);
    assert_eq!(cd["controller"], "ide");
    let chardev = &step("chardev")["reply"];
    assert_eq!(chardev[0]["label"], "com1");
    assert_eq!(chardev[0]["filename"], format!("file:{}", s(&com1)));
    assert_eq!(chardev[0]["connected"], true);
    assert_eq!(step("unknown")["error"], "CommandNotFound");
    let status = vm.run.wait(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "quit did not end rehost with 0: {}",
        vm.run.stderr()
    );
    if let Some(data) = step("shutdown")["data"].as_object() {
        assert_eq!(data["reason"], "host-qmp-quit");
        assert_eq!(data["guest"], false);
    }
    assert!(!vm.sock.exists(), "the socket file was left behind");
    assert_eq!(sha256(&parent), parent_sha, "the parent changed");
    rehost_disk(REHOST, &["check", s(&child)]);
}

/// `quit` while SeaBIOS's INT 13h writes a dynamic VHDX: rehost exits 0,
/// the image is consistent for both checkers, and what the guest wrote is
/// a prefix of its pattern followed by untouched zeros.
#[test]
fn quit_mid_write_flushes_a_consistent_vhdx() {
    if !kvm_available("qmp_quit_flush") {
        return;
    }
    require_tools(&["nasm", "qemu-img"]);
    let dir = scratch("qmp_quit_flush");
    let prog = Int13Program {
        sectors: 48 * 2048,
        verify: false,
        ..Default::default()
    };
    let raw = dir.join("base.raw");
    prog.raw_disk(&raw, 64 << 20);
    let vhdx = dir.join("disk.vhdx");
    rehost_disk(REHOST, &["convert", "-O", "vhdx", s(&raw), s(&vhdx)]);
    let com1 = dir.join("com1.out");
    let mut vm = Vm::start(&[
        "run",
        "--memory",
        "64M",
        "--com1",
        &format!("file:{}", s(&com1)),
        "--disk",
        &format!("{},controller=ahci", s(&vhdx)),
    ]);
    assert!(
        wait_file_contains(&com1, "int13: write start", Duration::from_secs(60)),
        "{}",
        read_text(&com1)
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (code, out, err) = run(
        REHOST,
        &["qmp", s(&vm.sock), "quit"],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "rehost qmp quit: {out} {err}");
    let status = vm.run.wait(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        vm.run.stderr()
    );
    let text = read_text(&com1);
    assert!(
        !text.contains("write done"),
        "the writer finished before quit; the test proves nothing: {text}"
    );
    rehost_disk(REHOST, &["check", s(&vhdx)]);
    let check = Command::new("qemu-img")
        .args(["check", "-f", "vhdx", s(&vhdx)])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let flat = dir.join("flat.raw");
    rehost_disk(REHOST, &["convert", "-O", "raw", s(&vhdx), s(&flat)]);
    let data = std::fs::read(&flat).unwrap();
    let end = prog.start_lba + prog.sectors;
    let written = (prog.start_lba..end)
        .take_while(|&lba| {
            let at = lba as usize * 512;
            data[at..at + 512] == prog.expected_sector(lba)
        })
        .count() as u64;
    assert!(written > 0, "nothing the guest wrote is in the image");
    let rest = (prog.start_lba + written) as usize * 512;
    assert!(
        data[rest..].iter().all(|&b| b == 0),
        "after the written prefix ({written} sectors) the image holds neither the guest's data nor zeros"
    );
}

#[test]
fn system_powerdown_reaches_an_acpi_guest_that_powers_off() {
    if !kvm_available("qmp_powerdown") {
        return;
    }
    let dir = scratch("qmp_powerdown");
    let disk = dir.join("powerbutton.img");
    std::fs::copy(roms_dir().join("powerbutton.img"), &disk).unwrap();
    let mut vm = Vm::start(&["run", "--memory", "64M", "--disk", s(&disk)]);
    let mut events = vm.client();
    assert!(
        vm.run.wait_for(
            "powerbutton: armed, polling PM1_STS",
            1,
            Duration::from_secs(60)
        ),
        "{}",
        vm.run.stdout()
    );
    // Nothing happens until the button is pressed.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!vm.run.stdout().contains("PWRBTN_STS seen"));
    let (code, out, err) = run(
        REHOST,
        &["qmp", s(&vm.sock), "system_powerdown"],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out.trim(), "{}");
    let status = vm.run.wait(Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        vm.run.stderr()
    );
    assert!(
        vm.run.stdout().contains("powerbutton: PWRBTN_STS seen"),
        "{}",
        vm.run.stdout()
    );
    let p = events.wait_event("POWERDOWN", Duration::from_secs(10));
    assert!(p["timestamp"]["seconds"].as_u64().unwrap() > 0);
    let sd = events.wait_event("SHUTDOWN", Duration::from_secs(10));
    assert_eq!(
        sd["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
}

/// The medium change seen by a real ATAPI driver: UNIT ATTENTION, then
/// the new medium's bytes. `eject_first` opens the tray on its own first
/// (the guest sees NOT READY, query-block an open tray).
fn medium_change(test: &str, controller: &str, eject_first: bool) {
    if !kvm_available(test) {
        return;
    }
    let one = roms_dir().join("atapi-change-one.iso");
    let two = roms_dir().join("atapi-change-two.iso");
    let mut vm = Vm::rom(
        "atapi-change",
        &[
            "--cdrom",
            &format!("{},controller={controller},id=cd0", s(&one)),
        ],
    );
    let mut q = vm.client();
    assert!(
        vm.run.wait_for(
            "atapi-change: waiting for medium change",
            1,
            Duration::from_secs(60)
        ),
        "{}",
        vm.run.stdout()
    );
    assert!(
        vm.run.stdout().contains(&format!(
            "atapi-change: {controller} block16 49534F2D4F4E4520626C6F636B203136"
        )),
        "{}",
        vm.run.stdout()
    );
    if eject_first {
        assert_eq!(
            q.execute("eject", Some(json!({"id": "cd0"}))),
            json!({"return": {}})
        );
        let ev = q.wait_event("DEVICE_TRAY_MOVED", Duration::from_secs(5));
        assert_eq!(ev["data"]["tray-open"], true);
        assert!(
            vm.run.wait_for(
                "atapi-change: not ready sense 02 asc 3A",
                1,
                Duration::from_secs(20)
            ),
            "{}",
            vm.run.stdout()
        );
        let block = q.ok("query-block", None);
        assert_eq!(block[0]["tray_open"], true, "{block}");
        assert!(block[0].get("inserted").is_none(), "{block}");
    }
    let r = q.execute(
        "blockdev-change-medium",
        Some(json!({"id": "cd0", "filename": s(&two), "format": "raw"})),
    );
    assert_eq!(r, json!({"return": {}}));
    if !eject_first {
        let open = q.wait_event("DEVICE_TRAY_MOVED", Duration::from_secs(5));
        assert_eq!(
            open["data"],
            json!({"device": "cd0", "id": "cd0", "tray-open": true})
        );
    }
    let closed = q.wait_event("DEVICE_TRAY_MOVED", Duration::from_secs(5));
    assert_eq!(closed["data"]["tray-open"], false);
    let status = vm.run.wait(Duration::from_secs(60));
    let out = vm.run.stdout().replace('\r', "");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}");
    assert!(
        out.contains("atapi-change: unit attention sense 06 asc 28"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "atapi-change: {controller} after-change block16 49534F2D54574F20626C6F636B203136"
        )),
        "{out}"
    );
    assert!(out.contains("atapi-change: done"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn cdrom_change_medium_on_ide() {
    medium_change("qmp_cd_ide", "ide", false);
}

#[test]
fn cdrom_change_medium_on_ahci() {
    medium_change("qmp_cd_ahci", "ahci", false);
}

#[test]
fn cdrom_eject_then_change_on_ide() {
    medium_change("qmp_cd_eject_ide", "ide", true);
}

#[test]
fn cdrom_eject_then_change_on_ahci() {
    medium_change("qmp_cd_eject_ahci", "ahci", true);
}

#[test]
fn misbehaving_clients_get_errors_and_the_vm_runs_on() {
    if !kvm_available("qmp_bad_clients") {
        return;
    }
    let dir = scratch("qmp_bad_clients");
    let com1 = dir.join("com1.out");
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vm = Vm::rom(
        "serial-counter",
        &["--com1", &format!("file:{}", s(&com1)), "--disk", s(&disk)],
    );

    // The guest prints once SeaBIOS has run the ROM (a few seconds here).
    assert!(
        wait_file_contains(&com1, "line 0000", Duration::from_secs(60)),
        "the guest printed nothing on COM1"
    );
    // Commands before negotiation, and an unknown capability.
    let mut q = Qmp::connect(&vm.sock, false);
    assert_eq!(q.greeting["QMP"]["capabilities"], json!([]));
    let r = q.execute("query-status", None);
    assert_eq!(error_class(&r), "CommandNotFound");
    assert!(r["error"]["desc"]
        .as_str()
        .unwrap()
        .contains("qmp_capabilities"));
    let r = q.execute("qmp_capabilities", Some(json!({"enable": ["oob"]})));
    assert_eq!(error_class(&r), "GenericError");
    assert_eq!(q.ok("qmp_capabilities", None), json!({}));
    let r = q.execute("qmp_capabilities", None);
    assert_eq!(error_class(&r), "CommandNotFound");

    // Malformed JSON and wrong shapes, each answered, the connection kept.
    for (bytes, want) in [
        (&b"{\"execute\": }\n"[..], "JSON parse error"),
        (b"[1, 2]\n", "must be a JSON object"),
        (
            b"{\"arguments\": {}, \"id\": 9}\n",
            "lacks member 'execute'",
        ),
        (
            b"{\"execute\": \"stop\", \"bogus\": 1}\n",
            "'bogus' is unexpected",
        ),
        (
            b"{\"execute\": \"eject\", \"arguments\": 3}\n",
            "'arguments' must be an object",
        ),
    ] {
        q.send_raw(bytes);
        let r = q.reply();
        assert_eq!(error_class(&r), "GenericError", "{r}");
        assert!(
            r["error"]["desc"].as_str().unwrap().contains(want),
            "{want}: {r}"
        );
    }
    let r = q.execute("no-such-command", None);
    assert_eq!(error_class(&r), "CommandNotFound");
    // The id is echoed whatever its type.
    q.send_raw(b"{\"execute\": \"query-status\", \"id\": {\"n\": [1, \"x\"]}}");
    let r = q.reply();
    assert_eq!(r["id"], json!({"n": [1, "x"]}));
    assert_eq!(r["return"]["status"], "running");
    // Missing, mistyped and unexpected arguments; devices that are not there.
    for (cmd, args, class, want) in [
        ("eject", json!({}), "GenericError", "exactly one of"),
        (
            "eject",
            json!({"id": 5}),
            "GenericError",
            "expected: string",
        ),
        ("eject", json!({"id": "cd9"}), "DeviceNotFound", "not found"),
        (
            "eject",
            json!({"id": "ide0-hd0"}),
            "GenericError",
            "not removable",
        ),
        (
            "eject",
            json!({"id": "ide0-hd0", "force": "yes"}),
            "GenericError",
            "boolean",
        ),
        (
            "query-status",
            json!({"verbose": true}),
            "GenericError",
            "unexpected",
        ),
        (
            "blockdev-change-medium",
            json!({"id": "ide0-hd0"}),
            "GenericError",
            "'filename' is missing",
        ),
    ] {
        let r = q.execute(cmd, Some(args.clone()));
        assert_eq!(error_class(&r), class, "{cmd} {args}: {r}");
        assert!(
            r["error"]["desc"].as_str().unwrap().contains(want),
            "{cmd} {args}: {r}"
        );
    }

    // A message over 1 MiB: one error, then the connection is closed.
    let mut big = vm.client();
    let mut msg = b"{\"execute\": \"query-status\", \"arguments\": {\"x\": \"".to_vec();
    msg.extend(std::iter::repeat_n(b'a', (1 << 20) + 100));
    msg.extend_from_slice(b"\"}}\n");
    // The server may close before taking every byte.
    let _ = big.try_send_raw(&msg);
    let r = big.reply();
    assert_eq!(error_class(&r), "GenericError");
    assert!(
        big.read().is_none(),
        "connection left open after a huge message"
    );

    // Clients that leave mid-reply or mid-message.
    for _ in 0..5 {
        let mut c = UnixStream::connect(&vm.sock).unwrap();
        let mut reqs = b"{\"execute\": \"qmp_capabilities\"}".to_vec();
        for _ in 0..200 {
            reqs.extend_from_slice(b"{\"execute\": \"query-block\"}");
        }
        c.write_all(&reqs).unwrap();
        drop(c);
        let mut c = UnixStream::connect(&vm.sock).unwrap();
        c.write_all(b"{\"execute\": \"qmp_capa").unwrap();
        drop(c);
    }

    // 64 clients at once: every one is greeted and served.
    let mut many: Vec<Qmp> = (0..64).map(|_| vm.client()).collect();
    for c in &mut many {
        assert_eq!(c.ok("query-status", None)["status"], "running");
    }
    // Each of them gets every event.
    assert_eq!(q.ok("stop", None), json!({}));
    for c in &mut many {
        c.wait_event("STOP", Duration::from_secs(10));
    }
    assert_eq!(q.ok("cont", None), json!({}));
    drop(many);

    // The VM ran on through all of it.
    let before = std::fs::metadata(&com1).unwrap().len();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        std::fs::metadata(&com1).unwrap().len() > before,
        "COM1 stopped"
    );
    assert_eq!(q.ok("query-status", None)["status"], "running");
    assert!(!vm.run.stderr().contains("panicked"), "{}", vm.run.stderr());
    vm.quit(&mut q);
}

#[test]
fn bad_qmp_paths_stop_rehost_before_a_vm_starts() {
    let dir = sock_dir();
    let poweroff = rom("poweroff");
    let base = [
        "run",
        "--memory",
        "64M",
        "--option-rom",
        s(&poweroff),
        "--qmp",
    ];
    let go = |path: &Path| {
        let mut args: Vec<&str> = base.to_vec();
        args.push(s(path));
        run(REHOST, &args, Duration::from_secs(30))
    };
    // A directory that does not exist.
    let missing: PathBuf = dir.path().join("no-such-dir/vm.sock");
    let (code, out, err) = go(&missing);
    assert_eq!(code, Some(1), "{err}");
    assert!(!out.contains("option ROM ran"), "a VM started: {out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(s(&missing)) && err.contains("No such file"),
        "{err}"
    );
    // An existing regular file is never replaced.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let (code, out, err) = go(&file);
    assert_eq!(code, Some(1), "{err}");
    assert!(!out.contains("option ROM ran"), "a VM started: {out}");
    assert!(
        err.contains(s(&file)) && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // A socket another process listens on.
    let busy = dir.path().join("busy.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&busy).unwrap();
    let (code, _, err) = go(&busy);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(s(&busy)) && err.contains("another process"),
        "{err}"
    );
    // A stale socket (its owner is gone) is replaced and the VM runs.
    if kvm_available("qmp_stale_socket") {
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let (code, out, err) = go(&stale);
        assert_eq!(code, Some(0), "{out} {err}");
        assert!(out.contains("option ROM ran during POST"), "{out}");
        assert!(!stale.exists(), "the socket was not removed at exit");
    }
}

#[test]
fn rehost_qmp_client_reports_errors_with_its_exit_status() {
    let dir = sock_dir();
    let (code, _, err) = run(
        REHOST,
        &["qmp", s(&dir.path().join("none.sock")), "query-status"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot connect"), "{err}");
    let (code, _, err) = run(
        REHOST,
        &["qmp", "x.sock", "eject", "not json"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("not JSON"), "{err}");
    if !kvm_available("qmp_client_errors") {
        return;
    }
    let mut vm = Vm::rom("serial-counter", &["--com1", "null"]);
    wait_for_socket(&vm.sock, Duration::from_secs(30));
    let (code, out, _) = run(
        REHOST,
        &["qmp", s(&vm.sock), "eject", "{\"id\": \"nope\"}"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["class"], "DeviceNotFound");
    // Events are followed until the VM exits.
    let mut follower = Command::new(REHOST)
        .args(["qmp", s(&vm.sock), "--events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, _) = run(
        REHOST,
        &["qmp", s(&vm.sock), "stop"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0));
    let (code, _, _) = run(
        REHOST,
        &["qmp", s(&vm.sock), "quit"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        vm.run.wait(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
    let mut events = String::new();
    follower
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut events)
        .unwrap();
    assert!(follower.wait().unwrap().success());
    let names: Vec<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["STOP", "SHUTDOWN"], "{events}");
}

/// `system_reset` restarts the guest (it prints its first line again),
/// sends RESET, and a medium changed before it stays in the drive.
#[test]
fn system_reset_restarts_the_guest_and_keeps_a_changed_medium() {
    if !kvm_available("qmp_system_reset") {
        return;
    }
    let dir = scratch("qmp_system_reset");
    let com1 = dir.join("com1.out");
    let one = roms_dir().join("atapi-change-one.iso");
    let two = roms_dir().join("atapi-change-two.iso");
    let vm = Vm::rom(
        "serial-counter",
        &[
            "--com1",
            &format!("file:{}", s(&com1)),
            "--cdrom",
            &format!("{},controller=ahci", s(&one)),
        ],
    );
    let mut q = vm.client();
    assert!(
        wait_file_contains(&com1, "line 00000000", Duration::from_secs(60)),
        "{}",
        read_text(&com1)
    );
    q.ok(
        "blockdev-change-medium",
        Some(json!({"device": "ahci0-cd0", "filename": s(&two)})),
    );
    assert_eq!(q.ok("system_reset", None), json!({}));
    let ev = q.wait_event("RESET", Duration::from_secs(10));
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    // The first line again: the guest started over.
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_text(&com1).matches("line 00000000").count() < 2 {
        assert!(Instant::now() < deadline, "the guest did not start over");
        std::thread::sleep(Duration::from_millis(50));
    }
    let block = q.ok("query-block", None);
    assert_eq!(block[0]["inserted"]["file"], s(&two), "{block}");
    assert_eq!(q.ok("query-status", None)["status"], "running");
    vm.quit(&mut q);
}

/// A COM port's peer coming and going is an event, and query-chardev
/// tells whether one is connected.
#[test]
fn com_port_peers_connecting_and_leaving_are_events() {
    if !kvm_available("qmp_serial_events") {
        return;
    }
    let peers = sock_dir();
    let com2 = peers.path().join("com2.sock");
    let vm = Vm::rom(
        "serial-counter",
        &[
            "--com1",
            "null",
            "--com2",
            &format!("unix:{},server", s(&com2)),
        ],
    );
    let mut q = vm.client();
    let chardev = q.ok("query-chardev", None);
    assert_eq!(chardev[1]["label"], "com2");
    assert_eq!(
        chardev[1]["filename"],
        format!("unix:{},server=on", s(&com2))
    );
    assert_eq!(chardev[1]["connected"], false, "{chardev}");
    let peer = UnixStream::connect(&com2).unwrap();
    let ev = q.wait_event("SERIAL_PORT_CHANGE", Duration::from_secs(10));
    assert_eq!(ev["data"], json!({"id": "com2", "open": true}));
    assert_eq!(q.ok("query-chardev", None)[1]["connected"], true);
    drop(peer);
    let ev = q.wait_event("SERIAL_PORT_CHANGE", Duration::from_secs(10));
    assert_eq!(ev["data"], json!({"id": "com2", "open": false}));
    assert_eq!(q.ok("query-chardev", None)[1]["connected"], false);
    vm.quit(&mut q);
}
