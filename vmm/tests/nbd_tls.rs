//! `rehost disk serve --tls-creds`: NBD over TLS with client certificates,
//! against libnbd's nbdinfo/nbdcopy (GnuTLS) and qemu-img's
//! `tls-creds-x509` (a second TLS stack), with certificates made by the
//! openssl command, and hand-made peers that misbehave around STARTTLS.

mod disk_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use disk_common::*;

#[path = "../../tests/src/pki.rs"]
mod pki;
use pki::{make_pki, Pki};

const SIZE: usize = 4 << 20;

fn have_peers() -> bool {
    let openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !openssl {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("openssl not installed (scripts/setup installs it)");
        }
        skip("openssl not installed: the TLS tests did not run (apt-get install openssl)");
        return false;
    }
    have_tools(
        &["nbdinfo", "nbdcopy", "qemu-img"],
        "nbdinfo/nbdcopy/qemu-img not installed (apt-get install libnbd-bin qemu-utils)",
    )
}

/// A scratch directory with credentials and a disk of [`content`]; its
/// NBD socket path. `None` (reported skipped) without the peers.
fn setup() -> Option<(tempfile::TempDir, Pki, PathBuf, PathBuf)> {
    if !have_peers() {
        return None;
    }
    let dir = tempdir();
    let pki = make_pki(dir.path());
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, content()).unwrap();
    let sock = dir.path().join("nbd.sock");
    Some((dir, pki, image, sock))
}

fn output(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn content() -> Vec<u8> {
    (0..SIZE)
        .map(|i| ((i / 512) as u8) ^ ((i % 251) as u8))
        .collect()
}

/// nbdcopy of `uri` into a file; its bytes, or the failure's stderr.
fn nbdcopy(uri: &str, out: &Path) -> Result<Vec<u8>, String> {
    let _ = std::fs::remove_file(out);
    let o = output("nbdcopy", &[uri, out.to_str().unwrap()]);
    if o.status.success() {
        Ok(std::fs::read(out).unwrap())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn a_tls_export_serves_only_clients_with_a_certificate_from_its_ca() {
    let Some((dir, pki, image, sock)) = setup() else {
        return;
    };
    let mut served = Served::unix(
        dir.path(),
        &["--tls-creds", pki.server.to_str().unwrap()],
        &image,
        None,
    );
    let plain = format!("nbd+unix:///disk?socket={}", sock.display());
    assert_eq!(
        served.uri,
        format!("nbds+unix:///disk?socket={}", sock.display())
    );
    let uri = served.uri.clone();
    let with = |d: &Path| format!("{uri}&tls-certificates={}", d.display());
    let copy = dir.path().join("copy.raw");

    // libnbd (GnuTLS) with the CA's client certificate: every byte.
    let got = nbdcopy(&with(&pki.client), &copy).expect("nbdcopy with the client certificate");
    assert!(got == content(), "nbdcopy over TLS read other bytes");
    // qemu-img (QEMU's own TLS code) too.
    let qemu = dir.path().join("qemu.raw");
    let o = output(
        "qemu-img",
        &[
            "convert",
            "--object",
            &format!(
                "tls-creds-x509,id=t0,dir={},endpoint=client",
                pki.client.display()
            ),
            "--image-opts",
            &format!(
                "driver=nbd,path={},export=disk,tls-creds=t0,tls-hostname=localhost",
                sock.display()
            ),
            "-O",
            "raw",
            qemu.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "qemu-img convert over TLS: {o:?}");
    assert!(
        std::fs::read(&qemu).unwrap() == content(),
        "qemu-img read other bytes"
    );

    // Refused: no TLS at all, a certificate from another CA, no
    // certificate. None of them gets a byte of the disk.
    let e = nbdcopy(&plain, &copy).expect_err("a plain-text client was served");
    assert!(
        e.to_lowercase().contains("tls"),
        "plain client's error: {e}"
    );
    nbdcopy(&with(&pki.rogue), &copy)
        .expect_err("a client certificate from another CA was accepted");
    nbdcopy(&with(&pki.anonymous), &copy).expect_err("a client without a certificate was served");
    assert!(!copy.exists() || std::fs::read(&copy).unwrap().iter().all(|&b| b == 0));

    // The server is still up and serves the good client again; a write
    // over TLS lands in the image.
    assert!(served.alive());
    let o = output("nbdinfo", &["--size", &with(&pki.client)]);
    assert!(o.status.success(), "nbdinfo: {o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), SIZE.to_string());
    let patch = dir.path().join("patch.raw");
    let mut want = content();
    want[..1 << 20].fill(0xa5);
    std::fs::write(&patch, &want).unwrap();
    let o = output("nbdcopy", &[patch.to_str().unwrap(), &with(&pki.client)]);
    assert!(o.status.success(), "nbdcopy write over TLS: {o:?}");
    served.stop();
    assert!(
        std::fs::read(&image).unwrap() == want,
        "the write over TLS is not in the image"
    );
}

#[test]
fn without_peer_verification_any_tls_client_is_served_but_never_plain_text() {
    if !have_peers() {
        return;
    }
    let dir = tempdir();
    let pki = make_pki(dir.path());
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, content()).unwrap();
    // No ca-cert.pem needed on the server side.
    std::fs::remove_file(pki.server.join("ca-cert.pem")).unwrap();
    let sock = dir.path().join("nbd.sock");
    let served = Served::unix(
        dir.path(),
        &[
            "--read-only",
            "--tls-creds",
            pki.server.to_str().unwrap(),
            "--tls-verify-peer",
            "off",
        ],
        &image,
        None,
    );
    let copy = dir.path().join("copy.raw");
    let uri = format!(
        "{}&tls-certificates={}",
        served.uri,
        pki.anonymous.display()
    );
    assert!(nbdcopy(&uri, &copy).expect("an anonymous TLS client") == content());
    let plain = format!("nbd+unix:///disk?socket={}", sock.display());
    nbdcopy(&plain, &copy).expect_err("a plain-text client was served");
    served.stop();
}

/// Reads one option reply: (option, reply type, data).
fn read_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(&h[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
    let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    (opt, kind, d)
}

fn send_option(s: &mut UnixStream, opt: u32, data: &[u8]) {
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Connects and completes the greeting (fixed newstyle, no zeroes).
fn hello(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

/// Whether the server closes `s` within `limit` (reads return 0 or an
/// error other than a timeout).
fn closed_within(s: &mut UnixStream, limit: Duration) -> bool {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_STARTTLS: u32 = 5;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const REP_ACK: u32 = 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;

#[test]
fn peers_that_skip_or_break_tls_are_refused_and_the_server_stays_up() {
    let Some((dir, pki, image, sock)) = setup() else {
        return;
    };
    let mut served = Served::unix(
        dir.path(),
        &["--tls-creds", pki.server.to_str().unwrap()],
        &image,
        Some(1_000),
    );

    // Options before STARTTLS get NBD_REP_ERR_TLS_REQD, whatever they are.
    let mut s = hello(&sock);
    let mut go = 4u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"disk");
    go.extend_from_slice(&0u16.to_be_bytes());
    send_option(&mut s, OPT_GO, &go);
    assert_eq!(read_reply(&mut s).1, REP_ERR_TLS_REQD);
    send_option(&mut s, OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(read_reply(&mut s).1, REP_ERR_TLS_REQD);
    send_option(&mut s, 0x4242, b"junk");
    assert_eq!(read_reply(&mut s).1, REP_ERR_TLS_REQD);
    // STARTTLS with data is invalid; ABORT is still answered.
    send_option(&mut s, OPT_STARTTLS, b"x");
    assert_eq!(read_reply(&mut s).1, REP_ERR_INVALID);
    send_option(&mut s, OPT_ABORT, &[]);
    assert_eq!(read_reply(&mut s).1, REP_ACK);
    assert!(closed_within(&mut s, Duration::from_secs(5)));

    // EXPORT_NAME in plain text has no error reply: closed, no export data.
    let mut s = hello(&sock);
    send_option(&mut s, OPT_EXPORT_NAME, b"disk");
    assert!(closed_within(&mut s, Duration::from_secs(5)));

    // STARTTLS accepted, then garbage instead of a TLS ClientHello.
    let mut s = hello(&sock);
    send_option(&mut s, OPT_STARTTLS, &[]);
    assert_eq!(read_reply(&mut s), (OPT_STARTTLS, REP_ACK, Vec::new()));
    s.write_all(&[0x55; 300]).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "garbage handshake kept open"
    );

    // STARTTLS accepted, then silence: closed at the idle limit (1 s here).
    let mut s = hello(&sock);
    send_option(&mut s, OPT_STARTTLS, &[]);
    assert_eq!(read_reply(&mut s).1, REP_ACK);
    assert!(
        closed_within(&mut s, Duration::from_secs(10)),
        "a silent TLS peer kept open"
    );

    // A peer that vanishes in the middle of the TLS handshake.
    let mut s = hello(&sock);
    send_option(&mut s, OPT_STARTTLS, &[]);
    assert_eq!(read_reply(&mut s).1, REP_ACK);
    // The first bytes of a TLS 1.2 ClientHello record header, then gone.
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    drop(s);

    assert!(served.alive());
    let uri = format!("{}&tls-certificates={}", served.uri, pki.client.display());
    let o = output("nbdinfo", &["--size", &uri]);
    assert!(o.status.success(), "nbdinfo after the bad peers: {o:?}");
    served.stop();
}

#[test]
fn bad_tls_credentials_are_named_and_nothing_listens() {
    let Some((dir, pki, image, sock)) = setup() else {
        return;
    };
    let addr = format!("unix:{}", sock.display());
    let serve = |creds: &Path, extra: &[&str]| {
        let mut args = vec![
            "disk",
            "serve",
            "--nbd",
            &addr,
            "--tls-creds",
            creds.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(image.to_str().unwrap());
        let o = output(REHOST, &args);
        assert!(!o.status.success(), "served with bad credentials: {o:?}");
        assert!(!sock.exists(), "a socket was created");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = serve(&dir.path().join("nowhere"), &[]);
    assert!(e.contains("nowhere/server-cert.pem"), "{e}");
    // The client's directory has no server key.
    let e = serve(&pki.client, &[]);
    assert!(e.contains("server-cert.pem"), "{e}");
    // A certificate that is not PEM.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["ca-cert.pem", "server-key.pem"] {
        std::fs::copy(pki.server.join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("server-cert.pem"), "not a certificate\n").unwrap();
    let e = serve(&broken, &[]);
    assert!(
        e.contains("broken/server-cert.pem") && e.contains("CERTIFICATE"),
        "{e}"
    );
    // A key that does not belong to the certificate.
    std::fs::copy(
        pki.server.join("server-cert.pem"),
        broken.join("server-cert.pem"),
    )
    .unwrap();
    std::fs::copy(
        pki.client.join("client-key.pem"),
        broken.join("server-key.pem"),
    )
    .unwrap();
    let e = serve(&broken, &[]);
    assert!(e.contains("server-key.pem"), "{e}");
    // Peer verification without a CA file.
    std::fs::copy(
        pki.server.join("server-key.pem"),
        broken.join("server-key.pem"),
    )
    .unwrap();
    std::fs::remove_file(broken.join("ca-cert.pem")).unwrap();
    let e = serve(&broken, &[]);
    assert!(e.contains("broken/ca-cert.pem"), "{e}");
    let e = serve(&broken, &["--tls-verify-peer", "maybe"]);
    assert!(e.contains("maybe"), "{e}");
}
