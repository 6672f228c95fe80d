//! End to end: COM1-COM4 under SeaBIOS with a real-mode program
//! (resources/serial/serial-echo.asm) that programs every UART it finds,
//! says "ready" on each and echoes what each receives in upper case. The
//! far ends are what a user would attach: a file, a pty, Unix and TCP
//! sockets, a terminal behind `tty:`, an RFC 2217 server.

mod serial_common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rehost_tests::{kvm_available, run, run_rom, start_rom, Running};
use serial_common::*;

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
const BOOT: Duration = Duration::from_secs(90);

fn wait_stderr(vm: &Running, needle: &str, timeout: Duration) -> bool {
    wait_until(timeout, || vm.stderr().contains(needle))
}

/// Starts the echo program with COM1 on a Unix server socket in `dir` and
/// COM2 on `com2`; returns the machine and COM1's far end, once COM1 is
/// ready.
fn start_echo(dir: &std::path::Path, com2: &str) -> (Running, Peer) {
    start_echo_with(dir, &["--com2", com2])
}

/// As `start_echo`, with `more` arguments after COM1's.
fn start_echo_with(dir: &std::path::Path, more: &[&str]) -> (Running, Peer) {
    let com1_sock = dir.join("com1.sock");
    let com1 = format!("unix:{},server", com1_sock.display());
    let mut args = vec!["--com1", &com1];
    args.extend_from_slice(more);
    let vm = start_rom(REHOST, "serial-echo", &args);
    let com1 = Peer::unix(connect_unix(&com1_sock, Duration::from_secs(20)));
    assert!(
        com1.wait_for("rehost-echo: COM1 ready", BOOT),
        "{}",
        vm.stderr()
    );
    (vm, com1)
}

/// Held by the tests that use ptys for their whole run. Linux reuses a
/// freed pty number at once, so while one test unplugs its pty another
/// test's new pty could take the same /dev/pts path, and rehost (rightly)
/// reopening that path would look like a second unplug.
static PTYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pty_guard() -> std::sync::MutexGuard<'static, ()> {
    PTYS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The guest's power-off ends rehost with exit code 0 and no panic.
fn powers_off(vm: &mut Running) {
    let status = vm
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no power-off; stderr {}", vm.stderr()));
    assert_eq!(status.code(), Some(0), "stderr: {}", vm.stderr());
    no_panic(vm);
}

fn no_panic(vm: &Running) {
    assert!(!vm.stderr().contains("panicked"), "{}", vm.stderr());
}

#[test]
fn echo_through_a_file_a_pty_a_unix_server_and_a_tcp_client() {
    if !kvm_available("serial echo") {
        return;
    }
    let _ptys = pty_guard();
    let dir = tempfile::tempdir().unwrap();
    let com1_log = dir.path().join("com1.log");
    let com3_sock = dir.path().join("com3.sock");
    let fw_log = dir.path().join("fw.log");
    let com4_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let com4_port = com4_listener.local_addr().unwrap().port();
    let mut vm = start_rom(
        REHOST,
        "serial-echo",
        &[
            "--com1",
            &format!("file:{}", com1_log.display()),
            "--com2",
            "pty",
            "--com3",
            &format!("unix:{},server", com3_sock.display()),
            "--com4",
            &format!("tcp:127.0.0.1:{com4_port}"),
            "--firmware-log",
            fw_log.to_str().unwrap(),
        ],
    );
    assert!(
        wait_stderr(&vm, "rehost: COM2 is ", Duration::from_secs(20)),
        "{}",
        vm.stderr()
    );
    let pty = pty_path(&vm.stderr(), "COM2").expect("the pty path");
    let mut com2 = Peer::terminal(std::path::Path::new(&pty));
    let mut com3 = Peer::unix(connect_unix(&com3_sock, Duration::from_secs(20)));
    let mut com4 =
        Peer::tcp(accept(&com4_listener, Duration::from_secs(20)).expect("COM4 connects"));
    for (peer, n) in [(&com2, 2), (&com3, 3), (&com4, 4)] {
        let ready = format!("rehost-echo: COM{n} ready");
        assert!(
            peer.wait_for(&ready, BOOT),
            "COM{n} got {:?}; stderr {}",
            peer.text(),
            vm.stderr()
        );
    }
    // The program set COM2 to 57600 baud, 2 stop bits: the pty has them.
    let t = termios(com2.raw_fd());
    // SAFETY: reading the speed field of a valid termios.
    assert_eq!(unsafe { libc::cfgetospeed(&t) }, libc::B57600);
    assert_ne!(t.c_cflag & libc::CSTOPB, 0);

    com2.type_slowly("abc");
    com3.type_slowly("xyz");
    com4.type_slowly("hi 4");
    assert!(com2.wait_for("ABC", BOOT), "{:?}", com2.text());
    assert!(com3.wait_for("XYZ", BOOT), "{:?}", com3.text());
    assert!(com4.wait_for("HI 4", BOOT), "{:?}", com4.text());
    // Echoes stay on their own port.
    assert!(!com2.text().contains("XYZ") && !com3.text().contains("ABC"));

    com4.send(b"!");
    assert!(com4.wait_for("rehost-echo: bye", BOOT), "{:?}", com4.text());
    powers_off(&mut vm);
    let log = std::fs::read_to_string(&com1_log).unwrap();
    assert!(log.contains("rehost-echo: COM1 ready"), "{log:?}");
    let fw = std::fs::read_to_string(&fw_log).unwrap();
    assert!(fw.contains("Found 4 serial ports"), "{fw}");
}

/// Reads from a non-blocking pty master until `needle` arrives.
fn read_until(fd: i32, got: &mut Vec<u8>, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut f = std::mem::ManuallyDrop::new(unsafe {
        // SAFETY: borrowing `fd` as a File that is never closed here.
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    while Instant::now() < deadline {
        if String::from_utf8_lossy(got).contains(needle) {
            return true;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 50) };
        let mut buf = [0u8; 1024];
        if let Ok(n) = f.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(got).contains(needle)
}

#[test]
fn a_tty_takes_the_guests_settings_and_unplugging_it_is_one_message() {
    if !kvm_available("serial tty") {
        return;
    }
    let _ptys = pty_guard();
    let dir = tempfile::tempdir().unwrap();
    // A pty pair stands in for a USB serial adapter: rehost opens the
    // slave as its tty, the test is the device on the master side.
    let (master, slave) = openpty();
    let m = master.as_raw_fd();
    let (mut vm, mut com1) = start_echo(dir.path(), &format!("tty:{slave}"));
    let mut got = Vec::new();
    assert!(
        read_until(m, &mut got, "rehost-echo: COM2 ready", BOOT),
        "{:?} {}",
        String::from_utf8_lossy(&got),
        vm.stderr()
    );
    let t = termios(m);
    // SAFETY: reading the speed field of a valid termios.
    assert_eq!(unsafe { libc::cfgetospeed(&t) }, libc::B57600);
    assert_ne!(t.c_cflag & libc::CSTOPB, 0, "8N2");
    // Input from the device, including a byte 0xff (PARMRK escapes it on
    // the way in; the guest must see it once).
    // SAFETY: writing a valid buffer to our master.
    unsafe { libc::write(m, b"tty\xff".as_ptr().cast(), 4) };
    assert!(
        read_until(m, &mut got, "TTY\u{fffd}", BOOT),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        got.windows(4).filter(|w| w == b"TTY\xff").count(),
        1,
        "{got:02x?}"
    );

    // Unplug: the device side goes away.
    drop(master);
    assert!(
        wait_stderr(&vm, "is gone", Duration::from_secs(10)),
        "{}",
        vm.stderr()
    );
    // The machine runs on: COM1 still echoes.
    com1.type_slowly("still here");
    assert!(com1.wait_for("STILL HERE", BOOT), "{:?}", com1.text());
    std::thread::sleep(Duration::from_secs(3));
    let err = vm.stderr();
    assert_eq!(err.matches("is gone").count(), 1, "one message: {err}");
    assert!(err.contains(&slave), "{err}");
    com1.send(b"!");
    powers_off(&mut vm);
}

#[test]
fn a_tty_plugged_in_after_start_is_opened_and_gets_what_was_kept() {
    if !kvm_available("serial late tty") {
        return;
    }
    let _ptys = pty_guard();
    let dir = tempfile::tempdir().unwrap();
    // The adapter's device node does not exist when rehost starts.
    let adapter = dir.path().join("ttyUSB0");
    let (mut vm, mut com1) = start_echo(dir.path(), &format!("tty:{}", adapter.display()));
    assert!(
        vm.stderr().contains("opens it when it appears"),
        "{}",
        vm.stderr()
    );
    // Plug it in: a pty's slave appears under that name.
    let (master, slave) = openpty();
    std::os::unix::fs::symlink(&slave, &adapter).unwrap();
    let m = master.as_raw_fd();
    let mut got = Vec::new();
    // What the guest said while nothing was there was kept and arrives.
    assert!(
        read_until(m, &mut got, "rehost-echo: COM2 ready", BOOT),
        "{:?} {}",
        String::from_utf8_lossy(&got),
        vm.stderr()
    );
    // SAFETY: writing a valid buffer to our master.
    unsafe { libc::write(m, b"late".as_ptr().cast(), 4) };
    assert!(
        read_until(m, &mut got, "LATE", BOOT),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    com1.send(b"!");
    powers_off(&mut vm);
}

#[test]
fn an_rfc2217_server_gets_the_settings_and_its_garbage_is_survived() {
    if !kvm_available("serial rfc2217") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (mut vm, mut com1) = start_echo(dir.path(), &format!("rfc2217:127.0.0.1:{port}"));
    let mut srv = Peer::tcp(accept(&server, Duration::from_secs(20)).expect("rehost connects"));
    // The client offers COM-PORT-OPTION; agree.
    srv.send(&[IAC, DO, COM_PORT, IAC, WILL, 0, IAC, DO, 0]);
    let deadline = Instant::now() + BOOT;
    loop {
        let (subs, data) = parse_telnet(&srv.bytes());
        let bauds = baud_rates(&subs);
        if bauds.last() == Some(&57600)
            && String::from_utf8_lossy(&data).contains("rehost-echo: COM2 ready")
        {
            // 8 data bits, no parity, 2 stop bits.
            assert!(subs.contains(&vec![2, 8]), "{subs:?}");
            assert!(subs.contains(&vec![3, 1]), "{subs:?}");
            assert!(subs.contains(&vec![4, 2]), "{subs:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bauds {bauds:?}, data {:?}",
            String::from_utf8_lossy(&data)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Garbage a broken or hostile server might send.
    let mut g = Vec::new();
    g.extend_from_slice(&[IAC, SB, COM_PORT]);
    g.extend(std::iter::repeat_n(0x41u8, 100_000));
    g.extend_from_slice(&[IAC, SE]);
    g.extend_from_slice(&[IAC, SB, COM_PORT, 101, 1, 2, IAC, SE]); // short baud
    g.extend_from_slice(&[IAC, SB, COM_PORT, 200, IAC, SE]); // unknown
    g.extend_from_slice(&[IAC, SB, 24, 1, IAC, SE]); // option not agreed
    g.extend_from_slice(&[IAC, 241, IAC, 246, IAC, WILL, 1, IAC, DO, 99]);
    g.extend_from_slice(&[IAC, SB, COM_PORT, 1, 2, IAC, WILL, 3]); // unterminated
    g.extend_from_slice(&[IAC, SB, COM_PORT, 107, 0xb0, IAC, SE]); // modem state
    g.extend_from_slice(b"ok");
    g.extend_from_slice(&[IAC, IAC]); // a data byte 0xff
    srv.send(&g);
    let deadline = Instant::now() + BOOT;
    loop {
        let (_, data) = parse_telnet(&srv.bytes());
        if data.windows(3).any(|w| w == b"OK\xff") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no echo of ok+0xff: {:?}\n{}",
            String::from_utf8_lossy(&data),
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    com1.send(b"!");
    powers_off(&mut vm);
    let err = vm.stderr();
    let problems = err.matches("ignored from the RFC 2217 server").count();
    assert!(
        (1..=5).contains(&problems),
        "{problems} problem lines: {err}"
    );
    assert!(err.contains("100000-byte subnegotiation"), "{err}");
}

#[test]
fn an_unreachable_rfc2217_server_is_one_message_and_the_guest_runs() {
    if !kvm_available("serial unreachable") {
        return;
    }
    let port = free_port();
    let (code, _, err) = run_rom(
        REHOST,
        "poweroff",
        &[
            "--com1",
            "null",
            "--com2",
            &format!("rfc2217:127.0.0.1:{port}"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "one message: {err}");
    assert!(
        err.contains(&format!("COM2: cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
}

/// Boots the echo program with COM1 on a Unix socket and COM2-COM4 on
/// `bad` SPECs: each bad port (a non-empty list of `needles`) is one warning naming its option and the
/// reason, the firmware still finds all four UARTs, COM1 echoes, and the
/// machine powers off normally.
fn runs_on_with(bad: [&str; 3], needles: [&[&str]; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let fw_log = dir.path().join("fw.log");
    let (mut vm, mut com1) = start_echo_with(
        dir.path(),
        &[
            "--com2",
            bad[0],
            "--com3",
            bad[1],
            "--com4",
            bad[2],
            "--firmware-log",
            fw_log.to_str().unwrap(),
        ],
    );
    com1.type_slowly("ok");
    assert!(com1.wait_for("OK", BOOT), "{:?}", com1.text());
    com1.send(b"!");
    powers_off(&mut vm);
    let err = vm.stderr();
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    let expected = needles.iter().filter(|n| !n.is_empty()).count();
    assert_eq!(warnings.len(), expected, "one line per bad port: {err}");
    for (i, n) in needles.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
        let com = format!("COM{} is disconnected", i + 2);
        let line = warnings
            .iter()
            .find(|l| l.contains(&com))
            .unwrap_or_else(|| panic!("no line says {com}: {err}"));
        for n in *n {
            assert!(line.contains(n), "{line:?} lacks {n:?}");
        }
    }
    let fw = std::fs::read_to_string(&fw_log).unwrap();
    assert!(fw.contains("Found 4 serial ports"), "{fw}");
}

#[test]
fn bad_specs_and_devices_are_one_line_each() {
    if !kvm_available("serial bad specs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir");
    runs_on_with(
        [
            "tty:/dev/null",
            "tcp:127.0.0.1",
            &format!("unix:{}/x.sock,server", missing.display()),
        ],
        [
            &["--com2 tty:/dev/null", "not a terminal"],
            &["--com3", "HOST:PORT"],
            &["--com4", "cannot listen"],
        ],
    );
    runs_on_with(
        [
            "stdio",
            "stdio",
            &format!("file:{}/x.log", missing.display()),
        ],
        [
            // COM2 takes the terminal (here a pipe); COM3 is refused it.
            &[],
            &["--com2 and --com3 are both stdio"],
            &["--com4", "cannot open"],
        ],
    );
    runs_on_with(
        [
            "rfc2217:127.0.0.1:2000,buffer=huge",
            "tty:/dev/ttyS0,server",
            "bogus:thing",
        ],
        [
            &["--com2", "buffer=huge", "not a size"],
            &["--com3", "server applies only"],
            &["--com4 bogus:thing"],
        ],
    );
    let (code, out, _) = run(REHOST, &["run", "--help"], Duration::from_secs(10));
    assert_eq!(code, Some(0));
    for s in [
        "--com2",
        "--com3",
        "--com4",
        "rfc2217:HOST:PORT",
        "tty:DEVICE",
        "buffer=SIZE",
        "Ctrl-A x",
    ] {
        assert!(out.contains(s), "--help lacks {s}: {out}");
    }
}
