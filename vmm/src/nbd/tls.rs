//! TLS for the NBD server: `NBD_OPT_STARTTLS` with X.509 certificates, in
//! the directory layout of QEMU's `tls-creds-x509` object and `qemu-nbd
//! --tls-creds`, so the same directory serves both:
//!
//! | file | needed | what |
//! |---|---|---|
//! | `server-cert.pem` | always | the server's certificate (then any intermediates), PEM |
//! | `server-key.pem` | always | its private key (PKCS#8, PKCS#1 or SEC1), PEM |
//! | `ca-cert.pem` | with `verify_peer` | the CA(s) whose client certificates are accepted |
//!
//! With `verify_peer` (QEMU's default) a client must present a certificate
//! signed by a CA of `ca-cert.pem`: this is how an NBD client is
//! authenticated. Without it any client that completes TLS is served (the
//! link is encrypted, the peer unknown).
//!
//! A server with TLS is in the protocol's "forced TLS" mode: before
//! `NBD_OPT_STARTTLS` succeeds only `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT`
//! are answered; every other option gets `NBD_REP_ERR_TLS_REQD` and
//! `NBD_OPT_EXPORT_NAME` closes the connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Largest credential file read (a PEM chain is a few KiB).
const MAX_PEM: u64 = 1 << 20;

/// Why TLS credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS credentials in {dir}: {reason}")]
    Config { dir: PathBuf, reason: String },
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_PEM {
        return Err(err(format!(
            "{} bytes: too large for a PEM credential (at most {MAX_PEM})",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            reason: format!("not a PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Loads the credentials in `dir` (see the module documentation) into a
/// server configuration.
pub fn load(dir: &Path, verify_peer: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let config_err = |reason: String| TlsError::Config {
        dir: dir.to_owned(),
        reason,
    };
    let cert_path = dir.join("server-cert.pem");
    let key_path = dir.join("server-key.pem");
    let certs = certificates(&cert_path)?;
    let key_pem = read_pem(&key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
        path: key_path.clone(),
        reason: format!("no PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?;
    let builder = if verify_peer {
        let ca_path = dir.join("ca-cert.pem");
        let mut roots = RootCertStore::empty();
        for cert in certificates(&ca_path)? {
            roots.add(cert).map_err(|e| TlsError::File {
                path: ca_path.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| config_err(format!("client verification: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        config_err(format!(
            "{} and {} do not make a usable certificate and key: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    Ok(Arc::new(config))
}
