//! The byte relay: pumps a byte stream (a desktop's VNC socket, later DevTools) to and from
//! a WebSocket, with backpressure in both directions.
//!
//! It knows nothing of HTTP or of a particular WebSocket library: the caller adapts its
//! socket to a `Stream` of [`Inbound`] and a `Sink` of [`Outbound`]. Backpressure comes
//! from never reading the next chunk before the previous one was handed on, so a slow
//! viewer slows the upstream read instead of growing a buffer.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the relay needs to know about a message from the WebSocket client.
#[derive(Debug)]
pub enum Inbound {
    /// Binary payload for the upstream.
    Data(Bytes),
    /// The client sent a close frame.
    Close,
    /// Pings, pongs and anything else that carries no upstream bytes.
    Ignored,
}

/// What the relay asks the WebSocket to send.
#[derive(Debug, PartialEq)]
pub enum Outbound {
    Data(Bytes),
    Ping,
}

#[derive(Debug, Clone)]
pub struct PumpConfig {
    /// Largest chunk read from the upstream into one WebSocket message.
    pub read_chunk: usize,
    /// Interval of WebSocket pings, which keep idle intermediaries from dropping the line.
    pub ping_interval: Duration,
}

impl Default for PumpConfig {
    fn default() -> Self {
        Self {
            read_chunk: 64 * 1024,
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// Why a pump ended.
#[derive(Debug)]
pub enum PumpEnd<S> {
    /// The client closed the WebSocket (or it went away).
    ClientClosed,
    /// The upstream closed its end.
    UpstreamClosed,
    /// The upstream failed.
    UpstreamError(std::io::Error),
    /// The `stop` future resolved with this value.
    Stopped(S),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub to_client: u64,
    pub to_upstream: u64,
}

/// Relays bytes until one side ends or `stop` resolves. The caller keeps the socket
/// halves, so it can send the close frame that fits the end.
pub async fn pump<U, Tx, Rx, E, S>(
    upstream: U,
    ws_tx: &mut Tx,
    ws_rx: &mut Rx,
    config: &PumpConfig,
    stop: impl Future<Output = S>,
) -> (PumpEnd<S>, Transferred)
where
    U: AsyncRead + AsyncWrite,
    Tx: Sink<Outbound> + Unpin,
    Rx: Stream<Item = Result<Inbound, E>> + Unpin,
{
    let (mut up_rx, mut up_tx) = tokio::io::split(upstream);
    let mut to_client_bytes = 0u64;
    let mut to_upstream_bytes = 0u64;

    let to_client = async {
        let start = tokio::time::Instant::now() + config.ping_interval;
        let mut ping = tokio::time::interval_at(start, config.ping_interval);
        let mut buf = BytesMut::with_capacity(config.read_chunk);
        loop {
            buf.reserve(config.read_chunk);
            tokio::select! {
                read = up_rx.read_buf(&mut buf) => match read {
                    Ok(0) => return PumpEnd::UpstreamClosed,
                    Ok(n) => {
                        to_client_bytes += n as u64;
                        // Not reading again until this is sent is the backpressure.
                        if ws_tx.send(Outbound::Data(buf.split().freeze())).await.is_err() {
                            return PumpEnd::ClientClosed;
                        }
                    }
                    Err(e) => return PumpEnd::UpstreamError(e),
                },
                _ = ping.tick() => {
                    if ws_tx.send(Outbound::Ping).await.is_err() {
                        return PumpEnd::ClientClosed;
                    }
                }
            }
        }
    };

    let to_upstream = async {
        while let Some(message) = ws_rx.next().await {
            match message {
                Ok(Inbound::Data(data)) => {
                    to_upstream_bytes += data.len() as u64;
                    if let Err(e) = up_tx.write_all(&data).await {
                        return PumpEnd::UpstreamError(e);
                    }
                }
                Ok(Inbound::Ignored) => {}
                Ok(Inbound::Close) | Err(_) => break,
            }
        }
        PumpEnd::ClientClosed
    };

    // `stop` first: when a stop and the upstream's end come together (a session ends and
    // its desktop is stopped), the stop is the reason the client should hear.
    let end = tokio::select! {
        biased;
        value = stop => PumpEnd::Stopped(value),
        end = to_client => end,
        end = to_upstream => end,
    };
    (
        end,
        Transferred {
            to_client: to_client_bytes,
            to_upstream: to_upstream_bytes,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_channel::mpsc;
    use std::convert::Infallible;
    use tokio::io::duplex;

    type WsRx = mpsc::Receiver<Result<Inbound, Infallible>>;

    fn ws(
        capacity: usize,
    ) -> (
        mpsc::Sender<Outbound>,
        mpsc::Receiver<Outbound>,
        mpsc::Sender<Result<Inbound, Infallible>>,
        WsRx,
    ) {
        let (out_tx, out_rx) = mpsc::channel(capacity);
        let (in_tx, in_rx) = mpsc::channel(capacity);
        (out_tx, out_rx, in_tx, in_rx)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_until_the_upstream_closes() {
        let (ours, mut theirs) = duplex(1024);
        let (mut out_tx, mut out_rx, mut in_tx, mut in_rx) = ws(8);
        let peer = tokio::spawn(async move {
            theirs.write_all(b"hello client").await.unwrap();
            let mut got = [0u8; 13];
            theirs.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello desktop");
            // dropping `theirs` closes the upstream
        });
        in_tx.send(Ok(Inbound::Ignored)).await.unwrap();
        in_tx
            .send(Ok(Inbound::Data(Bytes::from_static(b"hello desktop"))))
            .await
            .unwrap();
        let (end, moved) = pump(
            ours,
            &mut out_tx,
            &mut in_rx,
            &PumpConfig::default(),
            std::future::pending::<()>(),
        )
        .await;
        peer.await.unwrap();
        assert!(matches!(end, PumpEnd::UpstreamClosed), "{end:?}");
        assert_eq!(
            moved,
            Transferred {
                to_client: 12,
                to_upstream: 13
            }
        );
        drop(out_tx);
        let mut received = Vec::new();
        while let Some(Outbound::Data(d)) = out_rx.next().await {
            received.extend_from_slice(&d);
        }
        assert_eq!(received, b"hello client");
    }

    #[tokio::test]
    async fn stop_ends_the_pump_with_its_value() {
        let (ours, _theirs) = duplex(1024);
        let (mut out_tx, _out_rx, _in_tx, mut in_rx) = ws(8);
        let stop = async { (4008u16, "session revoked") };
        let (end, _) = pump(ours, &mut out_tx, &mut in_rx, &PumpConfig::default(), stop).await;
        assert!(
            matches!(end, PumpEnd::Stopped((4008, "session revoked"))),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_client_close_ends_the_pump() {
        let (ours, _theirs) = duplex(1024);
        let (mut out_tx, _out_rx, mut in_tx, mut in_rx) = ws(8);
        in_tx.send(Ok(Inbound::Close)).await.unwrap();
        let (end, _) = pump(
            ours,
            &mut out_tx,
            &mut in_rx,
            &PumpConfig::default(),
            std::future::pending::<()>(),
        )
        .await;
        assert!(matches!(end, PumpEnd::ClientClosed), "{end:?}");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_stalls_the_upstream_instead_of_buffering() {
        let (ours, mut theirs) = duplex(64 * 1024);
        // A WebSocket that accepts one message and is never read again.
        let (mut out_tx, _out_rx, _in_tx, mut in_rx) = ws(0);
        let config = PumpConfig {
            read_chunk: 16 * 1024,
            ping_interval: Duration::from_secs(3600),
        };
        let relay = tokio::spawn(async move {
            pump(
                ours,
                &mut out_tx,
                &mut in_rx,
                &config,
                std::future::pending::<()>(),
            )
            .await
        });
        let chunk = vec![7u8; 16 * 1024];
        let mut written = 0usize;
        let writer = async {
            loop {
                theirs.write_all(&chunk).await.unwrap();
                written += chunk.len();
            }
        };
        // The upstream writer blocks once the relay and the pipe hold what they can.
        let _ = tokio::time::timeout(Duration::from_millis(500), writer).await;
        assert!(
            written <= 64 * 1024 + 4 * 16 * 1024,
            "buffered {written} bytes for a stalled client"
        );
        relay.abort();
    }
}
