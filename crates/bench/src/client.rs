//! The benchmark's RFB clients: one that only frames updates (over a Unix socket or a
//! WebSocket, with large buffers so that it is not the bottleneck), and the existing
//! decoding [`RfbClient`] bridged to a WebSocket for "is the page drawn yet" checks.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use livesession_desktop::rfb::{RfbClient, VERSION_3_8};
use livesession_relay::{Inbound, Outbound, PumpConfig, pump};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::wire;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const READ_CHUNK: usize = 1 << 20;

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Opens a WebSocket with subprotocol `binary` (as noVNC does), optionally with a bearer
/// token, and buffers sized for full-screen updates.
pub async fn connect_ws(url: &str, bearer: Option<&str>) -> io::Result<Ws> {
    connect_ws_with(url, bearer, Some("binary")).await
}

pub async fn connect_ws_with(
    url: &str,
    bearer: Option<&str>,
    protocol: Option<&str>,
) -> io::Result<Ws> {
    let mut request = url.into_client_request().map_err(other)?;
    let headers = request.headers_mut();
    if let Some(protocol) = protocol {
        headers.insert("sec-websocket-protocol", protocol.parse().map_err(other)?);
    }
    if let Some(token) = bearer {
        headers.insert(
            "authorization",
            format!("Bearer {token}").parse().map_err(other)?,
        );
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(other)?;
    Ok(ws)
}

/// A byte stream to a VNC server: its Unix socket, or a WebSocket relaying it.
pub enum Transport {
    Unix(UnixStream, BytesMut),
    Ws(Box<Ws>),
}

impl Transport {
    pub async fn unix(path: &std::path::Path) -> io::Result<Self> {
        Ok(Transport::Unix(
            UnixStream::connect(path).await?,
            BytesMut::with_capacity(READ_CHUNK),
        ))
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Unix(s, _) => s.write_all(bytes).await,
            Transport::Ws(ws) => ws
                .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .map_err(other),
        }
    }

    /// The next bytes from the server (never empty); an error at the end of the stream.
    pub async fn recv(&mut self) -> io::Result<Bytes> {
        match self {
            Transport::Unix(s, buf) => {
                buf.reserve(READ_CHUNK);
                if s.read_buf(buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(buf.split().freeze())
            }
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => return Ok(b),
                    Some(Ok(Message::Close(frame))) => {
                        return Err(other(format!("WebSocket closed: {frame:?}")));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(other(e)),
                    None => return Err(io::ErrorKind::UnexpectedEof.into()),
                }
            },
        }
    }
}

/// A client that frames updates and nothing more.
pub struct FramingClient {
    pub transport: Transport,
    /// Bytes received but not yet given to the framing parser.
    pending: BytesMut,
    pub width: u16,
    pub height: u16,
    pub framing: wire::Framing,
    events: Vec<wire::Event>,
}

impl FramingClient {
    /// Version 3.8, security None, shared; 32 bpp true colour and these encodings.
    pub async fn handshake(transport: Transport, encodings: &[i32]) -> io::Result<Self> {
        let mut c = Self {
            transport,
            pending: BytesMut::new(),
            width: 0,
            height: 0,
            framing: wire::Framing::new(),
            events: Vec::new(),
        };
        let version = c.read_exact(12).await?;
        if !version.starts_with(b"RFB ") {
            return Err(other("not an RFB server"));
        }
        c.transport.send(VERSION_3_8).await?;
        let count = c.read_exact(1).await?[0] as usize;
        let types = c.read_exact(count).await?;
        if !types.contains(&1) {
            return Err(other(format!("no security type None in {types:?}")));
        }
        c.transport.send(&[1]).await?;
        if c.read_exact(4).await?[..] != [0, 0, 0, 0] {
            return Err(other("security handshake failed"));
        }
        c.transport.send(&[1]).await?;
        let init = c.read_exact(24).await?;
        c.width = u16::from_be_bytes([init[0], init[1]]);
        c.height = u16::from_be_bytes([init[2], init[3]]);
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
        c.read_exact(name_len).await?;
        let mut setup = wire::set_pixel_format().to_vec();
        setup.extend(wire::set_encodings(encodings));
        c.transport.send(&setup).await?;
        Ok(c)
    }

    async fn read_exact(&mut self, n: usize) -> io::Result<Bytes> {
        while self.pending.len() < n {
            let chunk = self.transport.recv().await?;
            self.pending.extend_from_slice(&chunk);
        }
        Ok(self.pending.split_to(n).freeze())
    }

    pub async fn request(&mut self, incremental: bool) -> io::Result<()> {
        let msg = wire::update_request(incremental, self.width, self.height);
        self.transport.send(&msg).await
    }

    /// Reads until at least one event completes; returns the bytes read and the events.
    pub async fn next_events(&mut self) -> io::Result<(usize, Vec<wire::Event>)> {
        let mut bytes = 0;
        self.events.clear();
        while self.events.is_empty() {
            let chunk = if self.pending.is_empty() {
                self.transport.recv().await?
            } else {
                self.pending.split().freeze()
            };
            bytes += chunk.len();
            self.framing.feed(&chunk, &mut self.events).map_err(other)?;
        }
        Ok((bytes, std::mem::take(&mut self.events)))
    }

    /// Reads until a framebuffer update ends; returns the bytes read.
    pub async fn read_update(&mut self) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let (bytes, events) = self.next_events().await?;
            total += bytes;
            if events
                .iter()
                .any(|e| matches!(e, wire::Event::Update { .. }))
            {
                return Ok(total);
            }
        }
    }
}

/// The decoding [`RfbClient`] speaking through a WebSocket: bridged to an in-memory pipe
/// by the same relay the server uses.
pub async fn rfb_over_ws(ws: Ws) -> io::Result<RfbClient<DuplexStream>> {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let (tx, rx) = ws.split();
        let mut tx = tx.with(|o: Outbound| {
            futures_util::future::ready(Ok::<_, tokio_tungstenite::tungstenite::Error>(match o {
                Outbound::Data(d) => Message::Binary(d),
                Outbound::Ping => Message::Ping(Default::default()),
            }))
        });
        let mut rx = rx.map(|m| {
            m.map(|m| match m {
                Message::Binary(b) => Inbound::Data(b),
                Message::Close(_) => Inbound::Close,
                _ => Inbound::Ignored,
            })
        });
        pump(
            theirs,
            &mut tx,
            &mut rx,
            &PumpConfig::default(),
            std::future::pending::<()>(),
        )
        .await;
    });
    tokio::time::timeout(Duration::from_secs(90), RfbClient::handshake(ours))
        .await
        .map_err(|_| other("no RFB handshake through the proxy within 90 s"))?
}

/// Requests full frames until at least `share` of the screen is `rgb`, or `limit` passes.
pub async fn wait_for_colour(
    rfb: &mut RfbClient<DuplexStream>,
    rgb: (u8, u8, u8),
    share: f64,
    limit: Duration,
) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        rfb.request_update(false).await?;
        tokio::time::timeout_at(deadline, rfb.read_update())
            .await
            .map_err(|_| {
                other(format!(
                    "the page was not drawn within {} s (no frame came)",
                    limit.as_secs()
                ))
            })??;
        if rfb.share_of_colour(rgb, 8) >= share {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(other(format!(
                "the page was not drawn within {} s",
                limit.as_secs()
            )));
        }
    }
}
