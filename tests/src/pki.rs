//! Test X.509 credentials made with the openssl command, in the
//! directory layout of QEMU's `tls-creds-x509` (and libnbd's
//! `tls-certificates`): a CA, a server certificate for localhost, a
//! client certificate from the same CA and one from another CA. Also
//! compiled into `vmm/tests/nbd_tls.rs` (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A new P-256 private key in `dir/key`.
fn ec_key(dir: &Path, key: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            key,
        ],
    );
}

/// A CA (`NAME-ca-key.pem`, `NAME-ca-cert.pem`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let key = format!("{name}-ca-key.pem");
    let cert = format!("{name}-ca-cert.pem");
    ec_key(dir, &key);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &format!("/CN=rehost test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `OUT-cert.pem` + `OUT-key.pem` signed by CA `ca` with
/// the given extensions.
fn make_cert(dir: &Path, ca: &str, out: &str, cn: &str, ext: &str) {
    let key = format!("{out}-key.pem");
    ec_key(dir, &key);
    // PKCS#8, as certtool and QEMU's documentation make them.
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &key,
            "-out",
            &format!("{out}-key8.pem"),
        ],
    );
    std::fs::rename(dir.join(format!("{out}-key8.pem")), dir.join(&key)).unwrap();
    let csr = format!("{out}.csr");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    let extfile = format!("{out}.ext");
    std::fs::write(dir.join(&extfile), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}-ca-cert.pem"),
            "-CAkey",
            &format!("{ca}-ca-key.pem"),
            "-CAcreateserial",
            "-out",
            &format!("{out}-cert.pem"),
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    );
}

/// Credential directories in QEMU's layout.
pub struct Pki {
    pub server: PathBuf,
    pub client: PathBuf,
    /// Trusts the server, but its client certificate is from another CA.
    pub rogue: PathBuf,
    /// Trusts the server, has no client certificate.
    pub anonymous: PathBuf,
}

pub fn make_pki(dir: &Path) -> Pki {
    let work = dir.join("pki");
    std::fs::create_dir_all(&work).unwrap();
    make_ca(&work, "good");
    make_ca(&work, "evil");
    make_cert(
        &work,
        "good",
        "server",
        "localhost",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    let client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                      extendedKeyUsage=clientAuth\n";
    make_cert(&work, "good", "client", "backup-client", client_ext);
    make_cert(&work, "evil", "rogue", "backup-client", client_ext);
    let pki = Pki {
        server: dir.join("server"),
        client: dir.join("client"),
        rogue: dir.join("rogue"),
        anonymous: dir.join("anonymous"),
    };
    let copy = |from: &str, to: &Path, name: &str| {
        std::fs::create_dir_all(to).unwrap();
        std::fs::copy(work.join(from), to.join(name)).unwrap();
    };
    copy("good-ca-cert.pem", &pki.server, "ca-cert.pem");
    copy("server-cert.pem", &pki.server, "server-cert.pem");
    copy("server-key.pem", &pki.server, "server-key.pem");
    for d in [&pki.client, &pki.rogue, &pki.anonymous] {
        copy("good-ca-cert.pem", d, "ca-cert.pem");
    }
    copy("client-cert.pem", &pki.client, "client-cert.pem");
    copy("client-key.pem", &pki.client, "client-key.pem");
    copy("rogue-cert.pem", &pki.rogue, "client-cert.pem");
    copy("rogue-key.pem", &pki.rogue, "client-key.pem");
    pki
}
