//! End to end: the peer of a COM port goes away and comes back while the
//! guest keeps printing numbered lines (resources/serial/serial-counter.asm)
//! as fast as its UART takes them. The guest must never wait for the
//! missing peer, and what arrives after the reconnection must be in order:
//! the newest `buffer=` bytes kept while nobody listened, then live output.

mod serial_common;

use std::time::{Duration, Instant};

use rehost_tests::{kvm_available, start_rom};
use serial_common::*;

const REHOST: &str = env!("CARGO_BIN_EXE_rehost-under-test");

/// The numbers of the complete "line NNNNNNNN" lines in `text` (a first
/// line cut by dropped output and an unfinished last one are skipped).
fn numbers(text: &str) -> Vec<u64> {
    let mut v = Vec::new();
    let segments: Vec<&str> = text.split("\r\n").collect();
    for seg in &segments[..segments.len().saturating_sub(1)] {
        if let Some(d) = seg.strip_prefix("line ") {
            if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
                v.push(d.parse().unwrap());
            }
        }
    }
    v
}

fn wait_lines(peer: &Peer, count: usize, timeout: Duration) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = numbers(&peer.text());
        if n.len() >= count || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_consecutive(n: &[u64], what: &str) {
    for w in n.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what}: {} then {}", w[0], w[1]);
    }
}

/// Checks one outage: lines before it, lines after it, how long the
/// guest printed without anyone listening.
fn check_outage(before: &[u64], after: &[u64], rate: f64, outage: Duration, log: &str) {
    assert_consecutive(before, "before the outage");
    assert_consecutive(after, "after the reconnection");
    let (last, first) = (*before.last().unwrap(), after[0]);
    assert!(first > last, "out of order: {last} then {first}");
    // The guest went on printing while nobody listened. A guest that
    // waited for the peer would have printed at most what the 4 KiB
    // buffer holds (~270 lines) past the last line seen; one that ran
    // printed on at its own pace. That pace swings several-fold on these
    // shared 2-core machines, so the bound is the buffer, not the rate.
    let gap = first - last;
    assert!(
        gap >= 700,
        "the guest stalled: {last} -> {first} in {outage:?} (it printed {rate:.0} lines/s while connected); log: {log}"
    );
}

/// Lines per second the guest prints while connected.
fn rate(peer: &Peer) -> f64 {
    let a = numbers(&peer.text());
    std::thread::sleep(Duration::from_secs(1));
    let b = numbers(&peer.text());
    (b.last().unwrap() - a.last().unwrap()) as f64
}

#[test]
fn a_tcp_client_port_reconnects_and_the_guest_never_waits() {
    if !kvm_available("serial reconnect") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut vm = start_rom(
        REHOST,
        "serial-counter",
        &["--com1", &format!("tcp:127.0.0.1:{port},buffer=4K")],
    );
    let first = Peer::tcp(accept(&listener, Duration::from_secs(60)).expect("rehost connects"));
    assert!(
        wait_lines(&first, 500, Duration::from_secs(120)).len() >= 500,
        "{:?} {}",
        first.text(),
        vm.stderr()
    );
    let rate = rate(&first);
    // The server goes away: connection and listener.
    first.shutdown();
    drop(listener);
    let stopped = Instant::now();
    let before = numbers(&first.text());
    std::thread::sleep(Duration::from_secs(3));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let second = Peer::tcp(accept(&listener, Duration::from_secs(20)).expect("rehost reconnects"));
    let outage = stopped.elapsed();
    let after = wait_lines(&second, 2000, Duration::from_secs(60));
    assert!(after.len() >= 2000, "{:?}", second.text());
    check_outage(&before, &after, rate, outage, &vm.stderr());

    let err = vm.stderr();
    assert_eq!(err.matches("connection to 127.0.0.1").count(), 1, "{err}");
    assert!(err.contains("lost"), "{err}");
    assert!(
        err.contains("bytes of output dropped while disconnected"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    vm.signal(libc::SIGTERM);
    let status = vm.wait(Duration::from_secs(20)).expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(143), "{}", vm.stderr());
}

#[test]
fn a_server_port_takes_the_next_client_in_order() {
    if !kvm_available("serial server reconnect") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("com1.sock");
    let mut vm = start_rom(
        REHOST,
        "serial-counter",
        &[
            "--com1",
            &format!("unix:{},server,buffer=4K", sock.display()),
        ],
    );
    let first = Peer::unix(connect_unix(&sock, Duration::from_secs(30)));
    assert!(
        wait_lines(&first, 500, Duration::from_secs(120)).len() >= 500,
        "{:?} {}",
        first.text(),
        vm.stderr()
    );
    let rate = rate(&first);
    first.shutdown();
    let stopped = Instant::now();
    let before = numbers(&first.text());
    std::thread::sleep(Duration::from_secs(3));
    let second = Peer::unix(connect_unix(&sock, Duration::from_secs(10)));
    let outage = stopped.elapsed();
    let after = wait_lines(&second, 2000, Duration::from_secs(60));
    assert!(after.len() >= 2000, "{:?}", second.text());
    check_outage(&before, &after, rate, outage, &vm.stderr());
    assert!(!vm.stderr().contains("panicked"), "{}", vm.stderr());
    vm.signal(libc::SIGTERM);
    let status = vm.wait(Duration::from_secs(20)).expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(143), "{}", vm.stderr());
}
