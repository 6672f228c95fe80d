//! End to end with a bootloader nobody here wrote: GRUB 2 (Debian
//! grub-pc-bin) boots from an IDE disk and drives COM ports with its own
//! ns8250 driver. Its `serial` command programs each port at 9600 8N1,
//! then 115200; the test, on the far end of each port, reads GRUB's output
//! and types commands into its shell. Each boot costs a minute or two here
//! (GRUB runs emulated), so one boot covers four backends at once.

mod serial_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rehost_tests::{artifacts_dir, kvm_available, workspace_root, Running};
use serial_common::*;

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");
/// GRUB loads, reads its config and prints its prompt in this time.
const GRUB: Duration = Duration::from_secs(400);
const PROMPT: &str = "grub>";

/// True if `tool` runs; otherwise says why the test is skipped (a failure
/// under CI=true, where the tools are installed).
fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        rehost_tests::skip_unless_ci(test, &format!("{tool} not installed"));
    }
    ok
}

/// A GRUB disk whose grub.cfg is `cfg`, built once per config with
/// resources/storage/make-grub-disk.sh.
fn grub_disk(name: &str, cfg: &str) -> PathBuf {
    let dir = artifacts_dir().join("serial");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg_path = dir.join(format!("{name}.cfg"));
    let disk = dir.join(format!("{name}.raw"));
    let fresh = std::fs::read_to_string(&cfg_path).ok().as_deref() == Some(cfg) && disk.exists();
    if !fresh {
        std::fs::write(&cfg_path, cfg).unwrap();
        let script = workspace_root().join("resources/storage/make-grub-disk.sh");
        let status = Command::new("sh")
            .arg(&script)
            .arg(&disk)
            .arg(&cfg_path)
            .status()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(status.success(), "{} failed", script.display());
    }
    disk
}

/// `serial` for the given units at one speed, 8N1.
fn serial_cmds(units: &[u8], speed: u32) -> String {
    units
        .iter()
        .map(|u| format!("serial --unit={u} --speed={speed} --word=8 --parity=no --stop=1\n"))
        .collect()
}

fn grub_cfg(units: &[u8]) -> String {
    let terms: Vec<String> = units.iter().map(|u| format!("serial_com{u}")).collect();
    let terms = terms.join(" ");
    format!(
        "{}terminal_output {terms}\necho \"rehost-grub: at 9600\"\n{}\
         terminal_input {terms}\nterminal_output {terms}\n\
         echo \"rehost-grub: at 115200\"\nset v=7\n",
        serial_cmds(units, 9600),
        serial_cmds(units, 115200),
    )
}

/// Text from an RFC 2217 peer, telnet removed.
fn telnet_text(p: &Peer) -> String {
    String::from_utf8_lossy(&parse_telnet(&p.bytes()).1).into_owned()
}

fn wait_text(what: &str, text: impl Fn() -> String, needle: &str, timeout: Duration, vm: &Running) {
    if !wait_until(timeout, || text().contains(needle)) {
        panic!(
            "{what}: no {needle:?} in {:?}\nrehost stderr: {}",
            text(),
            vm.stderr()
        );
    }
}

/// What a port's far end received (telnet removed for RFC 2217).
fn received(peer: &Peer, telnet: bool) -> String {
    if telnet {
        telnet_text(peer)
    } else {
        peer.text()
    }
}

#[test]
fn grub_drives_a_tcp_a_unix_a_pty_and_an_rfc2217_port() {
    if !kvm_available("serial grub") || !have("grub-mkimage", "serial grub") {
        return;
    }
    let disk = grub_disk("grub-four-ports", &grub_cfg(&[0, 1, 2, 3]));
    let dir = tempfile::tempdir().unwrap();
    let com1_port = free_port();
    let com2_sock = dir.path().join("com2.sock");
    let com2_listener = std::os::unix::net::UnixListener::bind(&com2_sock).unwrap();
    let rfc2217 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rfc2217_port = rfc2217.local_addr().unwrap().port();
    let mut vm = Running::start(
        REHOST,
        &[
            "run",
            "--memory",
            "64M",
            "--disk",
            disk.to_str().unwrap(),
            "--com1",
            &format!("tcp:127.0.0.1:{com1_port},server"),
            "--com2",
            &format!("unix:{}", com2_sock.display()),
            "--com3",
            "pty",
            "--com4",
            &format!("rfc2217:127.0.0.1:{rfc2217_port}"),
        ],
    );
    // COM1: rehost listens.
    let deadline = Instant::now() + Duration::from_secs(30);
    let com1 = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", com1_port)) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "COM1 never listened: {}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let com1 = Peer::tcp(com1);
    // COM2: rehost connects to us.
    com2_listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let com2 = loop {
        if let Ok((s, _)) = com2_listener.accept() {
            s.set_nonblocking(false).unwrap();
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "COM2 never connected: {}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let com2 = Peer::unix(com2);
    // COM3: a pty.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pty = loop {
        if let Some(p) = pty_path(&vm.stderr(), "COM3") {
            break p;
        }
        assert!(Instant::now() < deadline, "no pty path: {}", vm.stderr());
        std::thread::sleep(Duration::from_millis(20));
    };
    let com3 = Peer::terminal(Path::new(&pty));
    // COM4: an RFC 2217 server that agrees to COM-PORT-OPTION.
    let mut com4 = Peer::tcp(accept(&rfc2217, Duration::from_secs(30)).expect("COM4 connects"));
    com4.send(&[IAC, DO, COM_PORT, IAC, WILL, 0, IAC, DO, 0]);

    let mut ports = [
        (1, com1, false),
        (2, com2, false),
        (3, com3, false),
        (4, com4, true),
    ];
    for (n, peer, telnet) in &ports {
        wait_text(
            &format!("COM{n}"),
            || received(peer, *telnet),
            PROMPT,
            GRUB,
            &vm,
        );
    }
    for text in ports.iter().map(|(_, p, t)| received(p, *t)) {
        assert!(text.contains("rehost-grub: at 9600"), "{text:?}");
        assert!(text.contains("rehost-grub: at 115200"), "{text:?}");
    }

    // What GRUB's `serial` programmed reached the pty and the RFC 2217
    // server: 9600 first, then 115200, 8N1.
    let t = termios(ports[2].1.raw_fd());
    // SAFETY: reading the speed field of a valid termios.
    assert_eq!(unsafe { libc::cfgetospeed(&t) }, libc::B115200);
    let (subs, _) = parse_telnet(&ports[3].1.bytes());
    let bauds = baud_rates(&subs);
    let at_9600 = bauds.iter().position(|&b| b == 9600);
    let at_115200 = bauds.iter().rposition(|&b| b == 115200);
    assert!(
        matches!((at_9600, at_115200), (Some(a), Some(b)) if a < b),
        "SET-BAUDRATE sequence {bauds:?}"
    );
    assert_eq!(bauds.last(), Some(&115200), "{bauds:?}");
    for (cmd, want) in [(2u8, 8u8), (3, 1), (4, 1)] {
        assert!(
            subs.iter().any(|s| s == &vec![cmd, want]),
            "no {cmd} {want} in {subs:?}"
        );
    }

    // Type into GRUB's shell from each port in turn; the answer is
    // computed by GRUB, so it is not the typed echo.
    for (n, peer, telnet) in &mut ports {
        peer.type_slowly(&format!("echo com{n}-$v\r"));
        let answer = format!("com{n}-7");
        wait_text(
            &format!("COM{n}"),
            || received(peer, *telnet),
            &answer,
            Duration::from_secs(60),
            &vm,
        );
    }
    assert!(!vm.stderr().contains("panicked"), "{}", vm.stderr());
    ports[0].1.type_slowly("halt\r");
    let status = vm
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("GRUB's halt did not power off: {}", vm.stderr()));
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
}

/// Kills a helper process (ser2net, socat) when the test ends.
struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn grub_through_ser2net_sets_the_baud_rate_of_the_device() {
    if !kvm_available("serial grub ser2net")
        || !have("grub-mkimage", "serial grub ser2net")
        || !have("ser2net", "serial grub ser2net")
        || !have("socat", "serial grub ser2net")
    {
        return;
    }
    let disk = grub_disk("grub-com1", &grub_cfg(&[0]));
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let peer = dir.path().join("peer");
    // A pty pair stands in for the device wire: ser2net drives one end
    // (the "device"), the test is what is plugged into the other.
    let _socat = Helper(
        Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", peer.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(dev.exists() && peer.exists()) {
        assert!(Instant::now() < deadline, "socat made no pty pair");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dev = std::fs::canonicalize(&dev).unwrap();
    let port = free_port();
    let conf = dir.path().join("ser2net.yaml");
    std::fs::write(
        &conf,
        format!(
            "connection: &com1\n  accepter: telnet(rfc2217),tcp,127.0.0.1,{port}\n  \
             connector: serialdev,{},9600n81,local\n  options:\n    kickolduser: true\n",
            dev.display()
        ),
    )
    .unwrap();
    let _ser2net = Helper(
        Command::new("ser2net")
            .args(["-n", "-d", "-c"])
            .arg(&conf)
            .arg("-P")
            .arg(dir.path().join("ser2net.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ser2net"),
    );
    let mut wire = Peer::terminal(&peer);
    make_raw(wire.raw_fd());
    // rehost connects (and retries until ser2net listens).
    let mut vm = Running::start(
        REHOST,
        &[
            "run",
            "--memory",
            "64M",
            "--disk",
            disk.to_str().unwrap(),
            "--com1",
            &format!("rfc2217:127.0.0.1:{port}"),
        ],
    );
    wait_text("device", || wire.text(), PROMPT, GRUB, &vm);
    assert!(
        wire.text().contains("rehost-grub: at 115200"),
        "{:?}",
        wire.text()
    );
    // The device's port is at the speed GRUB set (ser2net opened it at
    // 9600; a pty starts at 38400).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("stty").arg("-F").arg(&dev).output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        if s.contains("speed 115200 baud") {
            break;
        }
        assert!(Instant::now() < deadline, "stty -F {}: {s}", dev.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    wire.type_slowly("echo ser2net-$v\r");
    wait_text(
        "device",
        || wire.text(),
        "ser2net-7",
        Duration::from_secs(60),
        &vm,
    );
    let err = vm.stderr();
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("refused RFC 2217"), "{err}");
    wire.type_slowly("halt\r");
    let status = vm
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("GRUB's halt did not power off: {}", vm.stderr()));
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
}
