//! The NBD server library as the control socket uses it: exports added and
//! removed at runtime (safe and hard), the server stopped with clients
//! connected, and dirty bitmaps of a source read by nbdinfo.

mod disk_common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use disk_common::*;
use rehost::nbd::{
    Export, ListenAddr, MemorySource, NbdError, NbdServer, RemoveMode, ServerOptions,
};

fn nbdinfo(args: &[&str]) -> (bool, String) {
    let out = Command::new("nbdinfo").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Connects and waits for the greeting: a client of the server.
fn connected_client(sock: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s
}

fn eof(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0)) || matches!(s.read(&mut b), Ok(0))
}

#[test]
fn exports_added_removed_and_server_stopped_at_runtime() {
    if !have_tools(
        &["nbdinfo"],
        "nbdinfo not installed (apt-get install libnbd-bin)",
    ) {
        return;
    }
    let dir = tempdir();
    let sock = dir.path().join("nbd.sock");
    let addr: ListenAddr = format!("unix:{}", sock.display()).parse().unwrap();
    let server = NbdServer::start(&addr, ServerOptions::default()).unwrap();
    let a = Arc::new(MemorySource::new(vec![0xaa; 1 << 20]));
    a.add_bitmap("b");
    let b = Arc::new(MemorySource::new(vec![0xbb; 2 << 20]));
    server
        .add_export(Export::new("a", a.clone()).description("first"))
        .unwrap();
    server
        .add_export(Export::new("b", b.clone()).read_only(true))
        .unwrap();
    assert!(matches!(
        server.add_export(Export::new("a", b.clone())),
        Err(NbdError::ExportExists(_))
    ));
    let (ok, out) = nbdinfo(&["--list", &server.uri("")]);
    assert!(ok, "{out}");
    assert!(
        out.contains("export=\"a\"") && out.contains("export=\"b\""),
        "{out}"
    );
    let (ok, out) = nbdinfo(&[&server.uri("b")]);
    assert!(
        ok && out.contains("export-size: 2097152") && out.contains("is_read_only: true"),
        "{out}"
    );

    // Writes through the source show in its bitmap.
    use rehost::nbd::ExportSource;
    a.write_at(128 << 10, &[1; 512]).unwrap();
    let (ok, out) = nbdinfo(&["--map=qemu:dirty-bitmap:b", &server.uri("a")]);
    assert!(ok, "{out}");
    assert!(out.contains("131072       65536    1  dirty"), "{out}");

    // Safe removal is refused while a client has the export open.
    let mut holder = UnixStream::connect(&sock).unwrap();
    holder
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut g = [0u8; 18];
    holder.read_exact(&mut g).unwrap();
    // NBD_OPT_EXPORT_NAME "a" puts the client on the export.
    use std::io::Write;
    holder.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.push(b'a');
    holder.write_all(&opt).unwrap();
    let mut reply = [0u8; 10];
    holder.read_exact(&mut reply).unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 1 << 20);
    assert!(matches!(
        server.remove_export("a", RemoveMode::Safe),
        Err(NbdError::ExportBusy { clients: 1, .. })
    ));
    // Hard removal disconnects it.
    server.remove_export("a", RemoveMode::Hard).unwrap();
    assert!(
        eof(&mut holder),
        "the client of a hard-removed export is closed"
    );
    let (ok, out) = nbdinfo(&[&server.uri("a")]);
    assert!(!ok, "a removed export is gone: {out}");
    assert_eq!(server.exports(), vec!["b".to_owned()]);
    assert!(matches!(
        server.remove_export("a", RemoveMode::Hard),
        Err(NbdError::NoSuchExport(_))
    ));
    // Safe removal of an export nobody uses.
    server.add_export(Export::new("c", a.clone())).unwrap();
    server.remove_export("c", RemoveMode::Safe).unwrap();

    // Stopping closes connected clients and removes the socket.
    let mut idle = connected_client(&sock);
    server.stop();
    assert!(eof(&mut idle), "clients are closed when the server stops");
    assert!(!sock.exists());
}

#[test]
fn tcp_listens_on_loopback_by_default() {
    let addr: ListenAddr = "tcp:0".parse().unwrap();
    assert_eq!(
        addr,
        ListenAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 0
        }
    );
    assert!("udp:1".parse::<ListenAddr>().is_err());
    assert!("tcp:host:99999".parse::<ListenAddr>().is_err());
    let server = NbdServer::start(&addr, ServerOptions::default()).unwrap();
    let uri = server.uri("x");
    assert!(
        uri.starts_with("nbd://127.0.0.1:") && !uri.contains(":0/"),
        "{uri}"
    );
    server.stop();
}
