//! Optional built-in TLS (`--tls-cert`, `--tls-key`): rustls with the ring provider.
//!
//! [`load`] builds the acceptor; the serve loop ([`crate::serve`]) runs each accepted
//! connection's handshake in its own task with a time limit and a per-address bound, so
//! a slow or broken client never holds up the next connection, and a failed handshake
//! is logged (at debug level: scanners make many) and forgotten.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Reads the certificate chain and private key (PEM files) and checks that they belong
/// together. Errors name the file and what is wrong with it.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, String> {
    let read = |path: &Path, what: &str, flag: &str| {
        std::fs::read(path).map_err(|e| {
            format!(
                "cannot read the TLS {what} {} ({flag}): {e}",
                path.display()
            )
        })
    };
    let cert_pem = read(cert_path, "certificate", "--tls-cert")?;
    let key_pem = read(key_path, "private key", "--tls-key")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "the TLS certificate {} is not valid PEM: {e}",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "the TLS certificate file {} holds no certificate (expected a PEM block \
             \"-----BEGIN CERTIFICATE-----\")",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "the TLS key file {} holds no private key (expected a PEM block \"-----BEGIN \
             PRIVATE KEY-----\", RSA PRIVATE KEY or EC PRIVATE KEY)",
            key_path.display()
        ),
        e => format!(
            "the TLS key file {} is not valid PEM: {e}",
            key_path.display()
        ),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "the TLS private key {} does not go with the certificate {}: {e}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    // HTTP/1.1 only: WebSockets (the viewer's VNC and control channels) upgrade over it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let err = load(&missing, &missing).err().unwrap();
        assert!(
            err.contains("cannot read the TLS certificate") && err.contains("missing.pem"),
            "{err}"
        );
        let err = load(&empty, &empty).err().unwrap();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
