//! Serial throughput benchmark: a real-mode program
//! (resources/serial/serial-flood.asm) writes 512 KiB to COM1 as fast as
//! the UART takes them (16 bytes per THR-empty, as a FIFO driver does),
//! under rehost and under `qemu-system-x86_64 -enable-kvm -nodefaults
//! -nographic`, with COM1 on a Unix socket and on a TCP connection to this
//! program. Prints guest-to-host bytes/s (first to last byte of the
//! flood, as received here) and the ratio. Not a test: it asserts only
//! that every byte arrived in order and each VM powered off cleanly.
//!
//!     cargo build --release -p rehost
//!     cargo run --release -p rehost-tests --bin bench-serial -- [RUNS] [REHOST]
//!
//! RUNS defaults to 5 per VMM and transport; the VMMs alternate and which
//! one goes first swaps every round.
//! REHOST defaults to target/release/rehost.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rehost_tests::bench::{release_rehost, round_order, Spread, DEFAULT_RUNS};
use rehost_tests::rom;

/// Must match FLOOD_BYTES in serial-flood.asm.
const FLOOD_BYTES: usize = 512 * 1024;
const START: &[u8] = b"rehost-flood: start\r\n";
const END: &[u8] = b"rehost-flood: end";

#[derive(Clone, Copy)]
enum Transport {
    Unix,
    Tcp,
}

/// Receives one flood from `stream`; returns bytes/s over the flood.
fn receive(mut stream: impl Read) -> f64 {
    let mut got: Vec<u8> = Vec::with_capacity(FLOOD_BYTES + 4096);
    let mut buf = vec![0u8; 65536];
    let mut start: Option<(Instant, usize)> = None;
    let mut end: Option<Instant> = None;
    loop {
        let n = stream.read(&mut buf).expect("reading the serial stream");
        if n == 0 {
            break;
        }
        let now = Instant::now();
        got.extend_from_slice(&buf[..n]);
        if start.is_none() {
            if let Some(i) = got.windows(START.len()).position(|w| w == START) {
                start = Some((now, i + START.len()));
            }
        }
        if let Some((_, at)) = start {
            if end.is_none() && got.len() >= at + FLOOD_BYTES {
                end = Some(now);
            }
            if got.len() >= at + FLOOD_BYTES + 2 + END.len() {
                break;
            }
        }
    }
    let (t0, at) = start.expect("no start marker");
    let t1 = end.expect("the flood did not arrive whole");
    let flood = &got[at..at + FLOOD_BYTES];
    for (i, &b) in flood.iter().enumerate() {
        assert_eq!(b, i as u8, "byte {i} of the flood is wrong");
    }
    assert!(
        got[at + FLOOD_BYTES..].windows(END.len()).any(|w| w == END),
        "no end marker"
    );
    FLOOD_BYTES as f64 / (t1 - t0).as_secs_f64()
}

/// One run: listens, starts the VM (`args` with `{}` for the socket
/// address), receives the flood, waits for a clean power-off.
fn run_once(program: &Path, args: &[String], transport: Transport, dir: &Path) -> f64 {
    let (addr, listener): (String, Box<dyn Fn() -> Box<dyn Read>>) = match transport {
        Transport::Unix => {
            let path = dir.join("com1.sock");
            let _ = std::fs::remove_file(&path);
            let l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
            (
                path.display().to_string(),
                Box::new(move || Box::new(l.accept().expect("accept").0)),
            )
        }
        Transport::Tcp => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = l.local_addr().expect("addr").port();
            (
                format!("127.0.0.1:{port}"),
                Box::new(move || Box::new(l.accept().expect("accept").0)),
            )
        }
    };
    let args: Vec<String> = args.iter().map(|a| a.replace("{}", &addr)).collect();
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let rate = receive(listener());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{} {args:?}: {status}", program.display());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not power off",
            program.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rate
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    let rehost = release_rehost(args.next());
    let flood = rom("serial-flood");
    let flood = flood.to_str().expect("utf-8 path").to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let qemu = PathBuf::from("qemu-system-x86_64");
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    println!(
        "guest-to-host serial throughput, {} KiB from a real-mode program, {runs} runs each (median, min-max):",
        FLOOD_BYTES / 1024
    );
    for (name, transport, ours_spec, qemu_spec) in [
        ("unix", Transport::Unix, "unix:{}", "unix:{}"),
        ("tcp", Transport::Tcp, "tcp:{}", "tcp:{}"),
    ] {
        let ours_args = s(&[
            "run",
            "--memory",
            "64M",
            "--com1",
            ours_spec,
            "--option-rom",
            &flood,
        ]);
        let qemu_args = s(&[
            "-enable-kvm",
            "-nodefaults",
            "-nographic",
            "-m",
            "64",
            "-serial",
            qemu_spec,
            "-option-rom",
            &flood,
        ]);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..runs {
            eprintln!("{name}: round {}/{runs}", round + 1);
            for side in round_order(round, 2) {
                if side == 0 {
                    ours.push(run_once(&rehost, &ours_args, transport, dir.path()));
                } else {
                    theirs.push(run_once(&qemu, &qemu_args, transport, dir.path()));
                }
            }
        }
        let (o, q) = (Spread::of(&ours), Spread::of(&theirs));
        println!(
            "{name:<5} rehost {:>26} B/s   qemu {:>26} B/s   ratio of medians rehost/qemu {:.2} (target >= 1.00)",
            o.show(0),
            q.show(0),
            o.median / q.median
        );
    }
}
