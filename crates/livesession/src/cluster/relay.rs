//! The relay between nodes: a request for a session's desktop (its VNC, control and
//! DevTools WebSockets, its hand-over, its files and recording) that arrives at a node
//! other than the one running that desktop is sent on to that node, signed with the
//! cluster secret (`signature.rs`), and its answer comes back as it is. A WebSocket is
//! relayed as bytes once the owning node accepted it: neither the frames nor RFB or CDP
//! inside them are parsed again here; the relay only follows where the owner's frames
//! begin and end, so that when the owner is lost it can still end the viewer's WebSocket
//! with a close and a reason (4010) rather than a broken stream.
//!
//! The owning node authorizes the request itself (same store, same token keys): a relay
//! adds nothing to what the client may do.

use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::signature::{RELAY_HEADER, sign};
use super::{RelayedFrom, Route};
use crate::app::{App, AppState};
use crate::error::ApiError;
use crate::proxy::ClientInfo;
use crate::ws::CloseCode;

/// How long a node waits to reach another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the owner has to answer a relayed request's head.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Which session a path is for, and whether serving it needs the session's desktop
/// (then the session is placed first): `None` for paths that any node serves from the
/// store.
pub fn session_route(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/api/sessions/")?;
    let (id, what) = rest.split_once('/')?;
    if id.is_empty() {
        return None;
    }
    let first = what.split('/').next().unwrap_or("");
    match first {
        "vnc" | "control" | "cdp" if what == first || first == "cdp" => Some((id, true)),
        "files" => Some((id, false)),
        "recording" if what == first => Some((id, false)),
        _ => None,
    }
}

/// Middleware: serves a session's request here, or relays it to the node that runs the
/// session's desktop. A request another node relayed here is served here, never relayed
/// on (no loops).
pub async fn to_owner(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if !app.cluster.enabled() {
        return next.run(request).await;
    }
    let Some((id, place)) = session_route(request.uri().path()) else {
        return next.run(request).await;
    };
    let id = id.to_owned();
    let relayed = request.extensions().get::<RelayedFrom>().is_some();
    match super::route(&app, &id, place).await {
        Route::Local => next.run(request).await,
        // Relayed here, but the session is placed elsewhere now (this node was counted
        // dead, or it moved while the request travelled): not served here, so that no
        // session runs on two nodes; the client reconnects and is relayed anew.
        Route::Relay { node_id, .. } if relayed => {
            app.metrics.node_relay("moved");
            let reason = format!("desktop unavailable: the session's desktop moved to another node ({node_id}); reconnect");
            refuse(request, reason, StatusCode::SERVICE_UNAVAILABLE, "node_moved").await
        }
        Route::Relay { node_id, addr } => forward(&app, &id, &node_id, &addr, request).await,
    }
}

fn is_websocket(request: &Request) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn forward(app: &App, session_id: &str, node_id: &str, addr: &str, mut request: Request) -> Response {
    let websocket = is_websocket(&request);
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(session_id, node_id, error = %e, "the node running this session's desktop cannot be reached");
            app.metrics.node_relay("unreachable");
            return unreachable(request, node_id).await;
        }
        Err(_) => {
            tracing::warn!(session_id, node_id, "the node running this session's desktop did not answer in time");
            app.metrics.node_relay("unreachable");
            return unreachable(request, node_id).await;
        }
    };
    let _ = stream.set_nodelay(true);
    let client = request.extensions().get::<ClientInfo>().copied();
    let path = request.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let secret = app.cluster.secret().expect("relaying only with a cluster secret");
    let (client_ip, https) = client.map_or((std::net::IpAddr::from([0, 0, 0, 0]), false), |c| (c.ip, c.https));
    let signed = sign(secret, app.cluster.node_id(), client_ip, https, request.method().as_str(), &path);
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));

    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(session_id, node_id, error = %e, "could not speak HTTP to the node running this session's desktop");
            app.metrics.node_relay("failed");
            return node_failed(node_id);
        }
    };
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let (mut parts, body) = request.into_parts();
    parts.uri = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return node_failed(node_id),
    };
    // What the client sent, as it sent it (the owner checks its token, Origin and
    // Host), with this node's signature; a forwarded-for header is not needed: the
    // signature names the client.
    parts.headers.insert(RELAY_HEADER, HeaderValue::from_str(&signed).expect("ASCII"));
    let upstream = axum::http::Request::from_parts(parts, body);
    let mut answer = match tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(upstream)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::warn!(session_id, node_id, error = %e, "the node running this session's desktop failed the relayed request");
            app.metrics.node_relay("failed");
            return node_failed(node_id);
        }
        Err(_) => {
            tracing::warn!(session_id, node_id, "the node running this session's desktop did not answer the relayed request in time");
            app.metrics.node_relay("failed");
            return node_failed(node_id);
        }
    };
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut answer);
        let shutdown = app.shutdown.clone();
        let node_id = node_id.to_owned();
        app.metrics.node_relay("websocket");
        let open = app.metrics.node_relay_opened();
        app.tasks.spawn(async move {
            let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
                open.dec();
                return;
            };
            pipe(TokioIo::new(client), TokioIo::new(upstream), &node_id, shutdown).await;
            open.dec();
        });
    } else {
        app.metrics.node_relay("http");
    }
    let (parts, body) = answer.into_parts();
    Response::from_parts(parts, Body::new(body))
}

/// The owner cannot be reached: a WebSocket is accepted here and closed with 4010 and the
/// reason (a browser shows a refused handshake only as 1006); anything else gets 503.
async fn unreachable(request: Request, node_id: &str) -> Response {
    let reason = format!(
        "desktop unavailable: the node running this session's desktop ({node_id}) cannot be reached; reconnect"
    );
    refuse(request, reason, StatusCode::SERVICE_UNAVAILABLE, "node_unreachable").await
}

/// Refuses a request: a WebSocket with 4010 and the reason, anything else with `status`,
/// `code` and `Retry-After: 2`.
async fn refuse(request: Request, reason: String, status: StatusCode, code: &'static str) -> Response {
    if is_websocket(&request) {
        let (mut parts, _) = request.into_parts();
        if let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            return upgrade.protocols(["binary"]).on_upgrade(move |mut socket| async move {
                let frame = CloseFrame { code: CloseCode::DesktopUnavailable.code(), reason: close_reason(&reason).into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
            });
        }
    }
    let mut response = ApiError::new(status, code, reason).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

fn node_failed(node_id: &str) -> Response {
    let mut response = ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_failed",
        format!("the node running this session's desktop ({node_id}) failed the request; retry"),
    )
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

/// A close reason fits a control frame (123 bytes), cut on a character boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Copies bytes both ways until either side ends. When the owner's side ends without a
/// close frame, the client gets one, if the owner's stream ended between two frames: the
/// echo of the client's own close when the client began the closing (the owner may drop
/// the connection without answering it), else 4010 with the reason (the node died, or its
/// connection broke).
async fn pipe<C, U>(client: C, upstream: U, node_id: &str, shutdown: tokio_util::sync::CancellationToken)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_owner, mut to_owner) = tokio::io::split(upstream);
    // The status code of the close the client sent, once it sent one.
    let client_closed: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let up = async {
        let mut frames = FrameBoundaries::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    frames.feed(&buf[..n]);
                    if let Some(code) = frames.close_code {
                        *client_closed.lock().unwrap() = Some(code);
                    }
                    if to_owner.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_owner.shutdown().await;
    };
    let down = async {
        let mut frames = FrameBoundaries::default();
        let mut buf = vec![0u8; 32 * 1024];
        let ending = loop {
            tokio::select! {
                read = from_owner.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break (CloseCode::DesktopUnavailable.code(), format!(
                        "desktop unavailable: the node running this session's desktop ({node_id}) was lost; reconnect"
                    )),
                    Ok(n) => {
                        frames.feed(&buf[..n]);
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                () = shutdown.cancelled() => break (CloseCode::ShuttingDown.code(), "server shutting down".to_owned()),
            }
        };
        if !frames.saw_close && frames.at_boundary() {
            let echo = *client_closed.lock().unwrap();
            let frame = match echo {
                // 1005 ("no status") is never sent: an empty close answers one without.
                Some(1005) => vec![0x88, 0x00],
                Some(code) => close_frame(code, ""),
                None => close_frame(ending.0, close_reason(&ending.1)),
            };
            let _ = to_client.write_all(&frame).await;
        }
        let _ = to_client.shutdown().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => { let _ = tokio::time::timeout(Duration::from_secs(5), &mut up).await; }
        () = &mut up => { let _ = tokio::time::timeout(Duration::from_secs(10), &mut down).await; }
    }
}

/// An unmasked close frame (server to client).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

/// Follows where WebSocket frames begin and end in a byte stream, reading only their
/// headers (RFC 6455 §5.2): the payloads are counted, not read, but for a close frame's
/// status code (unmasked when the frame is masked, as a client's are).
#[derive(Default)]
struct FrameBoundaries {
    header: Vec<u8>,
    payload_left: u64,
    saw_close: bool,
    /// The first close frame's status code once read (1005, "none", for a close without
    /// one).
    close_code: Option<u16>,
    /// Reading a close frame's payload: its mask, and the status code's bytes so far.
    close_payload: Option<([u8; 4], Vec<u8>)>,
}

impl FrameBoundaries {
    fn at_boundary(&self) -> bool {
        self.payload_left == 0 && self.header.is_empty()
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len() as u64) as usize;
                if let Some((mask, code)) = self.close_payload.as_mut() {
                    for &b in bytes[..take].iter().take(2 - code.len()) {
                        let i = code.len();
                        code.push(b ^ mask[i]);
                    }
                    if code.len() == 2 {
                        self.close_code.get_or_insert(u16::from_be_bytes([code[0], code[1]]));
                        self.close_payload = None;
                    }
                }
                self.payload_left -= take as u64;
                bytes = &bytes[take..];
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            if let Some((opcode, payload, mask)) = self.header_done() {
                if opcode == 0x8 && !self.saw_close {
                    self.saw_close = true;
                    if payload >= 2 {
                        self.close_payload = Some((mask, Vec::with_capacity(2)));
                    } else {
                        self.close_code = Some(1005);
                    }
                }
                self.payload_left = payload;
                self.header.clear();
            }
        }
    }

    /// The opcode, the payload length and the mask (zeros when unmasked) once the header
    /// is whole.
    fn header_done(&self) -> Option<(u8, u64, [u8; 4])> {
        let h = &self.header;
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let short = h[1] & 0x7f;
        let extended = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let len = 2 + extended + if masked { 4 } else { 0 };
        if h.len() < len {
            return None;
        }
        let payload = match extended {
            0 => u64::from(short),
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            _ => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
        };
        let mask = if masked { h[len - 4..len].try_into().expect("4 bytes") } else { [0; 4] };
        Some((h[0] & 0x0f, payload, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload_len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload_len {
            n if n < 126 => f.push(n as u8),
            n if n < 65_536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(0xAB, payload_len));
        f
    }

    #[test]
    fn frame_boundaries_are_followed_in_any_chunking() {
        let stream: Vec<u8> = [frame(2, 5), frame(1, 300), frame(2, 70_000), frame(2, 0)].concat();
        for chunk in [1, 2, 3, 7, 125, 4096, stream.len()] {
            let mut f = FrameBoundaries::default();
            let mut boundaries = 0;
            for piece in stream.chunks(chunk) {
                for b in piece {
                    f.feed(std::slice::from_ref(b));
                    boundaries += usize::from(f.at_boundary());
                }
            }
            assert!(f.at_boundary(), "chunk {chunk}");
            // Four frames end at four places (a zero-length frame ends with its header).
            assert_eq!(boundaries, 4, "chunk {chunk}");
            assert!(!f.saw_close);
        }
        let mut f = FrameBoundaries::default();
        f.feed(&frame(2, 10)[..6]);
        assert!(!f.at_boundary(), "inside a payload");
        let mut f = FrameBoundaries::default();
        f.feed(&[frame(2, 3), close_frame(1000, "bye")].concat());
        assert!(f.saw_close && f.at_boundary());
    }

    #[test]
    fn a_clients_masked_close_code_is_read_in_any_chunking() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let payload = [0x0f, 0xa0, b'b', b'y', b'e']; // 4000, "bye"
        let mut close = vec![0x88, 0x80 | payload.len() as u8];
        close.extend_from_slice(&mask);
        close.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut data = vec![0x82, 0x80 | 3];
        data.extend_from_slice(&mask);
        data.extend_from_slice(&[1, 2, 3]);
        let stream = [data, close].concat();
        for chunk in 1..=stream.len() {
            let mut f = FrameBoundaries::default();
            for piece in stream.chunks(chunk) {
                f.feed(piece);
            }
            assert_eq!((f.saw_close, f.close_code, f.at_boundary()), (true, Some(4000), true), "chunk {chunk}");
        }
        // A close without a status code.
        let mut f = FrameBoundaries::default();
        f.feed(&[0x88, 0x80, 1, 2, 3, 4]);
        assert_eq!(f.close_code, Some(1005));
    }

    #[test]
    fn only_desktop_paths_of_a_session_are_relayed() {
        assert_eq!(session_route("/api/sessions/s1/vnc"), Some(("s1", true)));
        assert_eq!(session_route("/api/sessions/s1/control"), Some(("s1", true)));
        assert_eq!(session_route("/api/sessions/s1/cdp"), Some(("s1", true)));
        assert_eq!(session_route("/api/sessions/s1/cdp/json/version"), Some(("s1", true)));
        assert_eq!(session_route("/api/sessions/s1/files/a.pdf"), Some(("s1", false)));
        assert_eq!(session_route("/api/sessions/s1/recording"), Some(("s1", false)));
        for other in ["/api/sessions/s1", "/api/sessions/s1/token", "/api/sessions/s1/tasks", "/api/sessions//vnc", "/api/sessions/s1/vnc/x", "/s/s1"] {
            assert_eq!(session_route(other), None, "{other}");
        }
    }
}
