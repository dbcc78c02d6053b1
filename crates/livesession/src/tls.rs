//! Optional built-in TLS (`--tls-cert`, `--tls-key`): rustls with the ring provider.
//!
//! The TCP listener is wrapped in a [`TlsListener`] that `axum::serve` accepts from like
//! any other. Each accepted connection's handshake runs in its own task with a time limit,
//! so a slow or broken client never holds up the next connection, and a failed handshake
//! is logged (at debug level: scanners make many) and forgotten.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_PENDING_HANDSHAKES: usize = 256;

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

/// Accepts TCP connections and hands `axum::serve` the ones whose handshake completed.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, local_addr: SocketAddr) -> Self {
        let (tx, ready) = mpsc::channel(64);
        let accept_loop = tokio::spawn(accept_loop(listener, acceptor, tx));
        Self {
            ready,
            local_addr,
            accept_loop,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The server stopped accepting: stop taking connections for it.
        self.accept_loop.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(permit) = pending.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // No Nagle: a VNC update or a keystroke goes out at once.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer.ip(), error = %e, "TLS handshake failed");
                }
                Err(_) => tracing::debug!(peer = %peer.ip(), "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // Only if the accept loop ended, which it does not while we exist.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
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
