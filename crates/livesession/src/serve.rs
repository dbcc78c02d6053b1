//! The serve loop: accepts TCP connections (and, with built-in TLS, completes their
//! handshakes) and runs each through hyper's HTTP/1 server with the router.
//!
//! Used instead of `axum::serve` for what that does not offer:
//! - a **header-read timeout** (`--header-read-timeout`): a client that does not send a
//!   whole request head within it — slowloris, a byte at a time, or a connection that
//!   sends nothing — is disconnected; so is a kept-alive connection idle that long;
//! - with TLS, handshakes that run **in their own tasks**, each with a time limit
//!   (`--tls-handshake-timeout`), at most `--tls-handshakes-per-ip` at once from one
//!   address and [`MAX_PENDING_HANDSHAKES`] in all: one slow or hostile client never
//!   holds up the next, nor fills the server's handshake budget by itself;
//! - an accept loop that **never stops accepting**: an accept error (out of file
//!   descriptors, say) is logged and retried after a short pause.
//!
//! As with `axum::serve`, every request carries `ConnectInfo<SocketAddr>` (the TCP
//! peer; [`crate::proxy`] then decides the client), WebSocket upgrades work, and on
//! shutdown the loop stops accepting, lets in-flight requests finish and closes idle
//! connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::client_key;

/// Handshakes in progress at once from all addresses; beyond it new connections are
/// closed at once (and accepting goes on).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// How long open connections may take to finish once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Built-in TLS and its bounds.
#[derive(Clone)]
pub struct TlsOptions {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
    pub handshakes_per_ip: usize,
}

pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub tls: Option<TlsOptions>,
}

/// Serves `router` on `listener` until `shutdown` is cancelled; returns once open
/// connections have finished (or [`DRAIN_TIMEOUT`] passed).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let http = Arc::new(http1_builder(options.header_read_timeout));
    let pending = PendingHandshakes::new(
        options.tls.as_ref().map_or(0, |t| t.handshakes_per_ip),
        MAX_PENDING_HANDSHAKES,
    );
    let mut last_warning: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin, log
                    // at most once a second, and go on accepting.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accepting a connection failed; retrying");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // No Nagle: a VNC update or a keystroke goes out at once.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let http = http.clone();
        let shutdown = shutdown.clone();
        match &options.tls {
            None => {
                connections.spawn(serve_connection(tcp, peer, router, http, shutdown));
            }
            Some(tls) => {
                let Some(slot) = pending.try_start(peer.ip()) else {
                    tracing::debug!(peer = %peer.ip(),
                        "too many TLS handshakes in progress from this address; connection closed");
                    continue;
                };
                let tls = tls.clone();
                connections.spawn(async move {
                    let handshake = tokio::time::timeout(
                        tls.handshake_timeout,
                        tls.acceptor.accept(tcp),
                    );
                    let stream = tokio::select! {
                        () = shutdown.cancelled() => return,
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer.ip(), error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(peer = %peer.ip(), "TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    drop(slot);
                    serve_connection(stream, peer, router, http, shutdown).await;
                });
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections did not finish within 10 s of shutdown");
    }
}

fn http1_builder(header_read_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
}

/// Runs one connection: requests through the router until the client leaves, a header
/// read times out, or shutdown (which lets an in-flight request finish first).
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        tower_service::Service::call(&mut router, request)
    });
    let mut conn = pin!(
        http.serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer.ip(), error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// TLS handshakes in progress, per client address (IPv6 by its /64) and in all.
#[derive(Clone)]
struct PendingHandshakes(Arc<PendingInner>);

struct PendingInner {
    per_ip: usize,
    total: usize,
    counts: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

/// One handshake's place; dropping it frees the place.
struct HandshakeSlot {
    pending: PendingHandshakes,
    key: IpAddr,
}

impl PendingHandshakes {
    fn new(per_ip: usize, total: usize) -> Self {
        Self(Arc::new(PendingInner {
            per_ip: per_ip.max(1),
            total,
            counts: Mutex::default(),
        }))
    }

    /// A place for a handshake from `ip`, unless it has its maximum in progress already
    /// or the server has its total.
    fn try_start(&self, ip: IpAddr) -> Option<HandshakeSlot> {
        let key = client_key(ip);
        let mut guard = self.0.counts.lock().unwrap();
        let (by_ip, total) = &mut *guard;
        if *total >= self.0.total {
            return None;
        }
        let count = by_ip.entry(key).or_insert(0);
        if *count >= self.0.per_ip {
            return None;
        }
        *count += 1;
        *total += 1;
        Some(HandshakeSlot {
            pending: self.clone(),
            key,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut guard = self.pending.0.counts.lock().unwrap();
        let (by_ip, total) = &mut *guard;
        *total -= 1;
        if let Some(count) = by_ip.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_places_are_bounded_per_address_and_in_all_and_given_back() {
        let pending = PendingHandshakes::new(2, 3);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let a1 = pending.try_start(a).unwrap();
        let _a2 = pending.try_start(a).unwrap();
        assert!(pending.try_start(a).is_none(), "a third from one address");
        let b1 = pending.try_start(b).unwrap();
        assert!(pending.try_start(b).is_none(), "the total is reached");
        drop(b1);
        drop(a1);
        assert!(pending.try_start(a).is_some());
        // One /64 is one address.
        let pending = PendingHandshakes::new(1, 10);
        let _v6 = pending.try_start("2001:db8::1".parse().unwrap()).unwrap();
        assert!(pending.try_start("2001:db8::2".parse().unwrap()).is_none());
        let other = pending.try_start("2001:db8:0:1::1".parse().unwrap());
        assert!(other.is_some(), "another /64 is another address");
        assert_eq!(pending.0.counts.lock().unwrap().0.len(), 2);
        drop((_v6, other));
        assert!(pending.0.counts.lock().unwrap().0.is_empty(), "nothing left behind");
    }
}
