//! What the control channel and the VNC proxy share: the close codes (the contract in
//! `docs/protocol.md`), the access check that runs before a WebSocket touches anything,
//! and closing with a reason.
//!
//! A browser cannot read the HTTP status of a refused WebSocket handshake (it sees a bare
//! 1006), so a refused connection is upgraded and then closed at once with a code and a
//! reason. The decision is made before the upgrade; a refused connection never reaches
//! the session's desktop.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use livesession_session::{EndSignal, LinkSignal, Session, SessionEnd};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::app::App;
use crate::auth::{AccessClaims, TokenError, TokenKind, find_access_token};
use crate::desktops::{Desktops, Unavailable};
use crate::limits::ConnectionSlot;
use crate::metrics::ConnKind;
use livesession_desktop::DesktopHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// No token was presented. Get one, then connect.
    AuthRequired = 4001,
    /// The token is malformed, forged, or for another session. Do not retry with it.
    TokenInvalid = 4002,
    /// The token expired. Refresh it and retry once.
    TokenExpired = 4003,
    /// The page's origin may not connect. Do not retry.
    OriginForbidden = 4004,
    /// No session has this id. Do not retry.
    SessionNotFound = 4005,
    /// Nothing heard from the client for too long. Retry.
    HeartbeatTimeout = 4006,
    /// The session's time ran out. Do not retry.
    SessionExpired = 4007,
    /// The session was revoked. Do not retry.
    SessionRevoked = 4008,
    /// Too many attempts. Retry after the time in the reason.
    RateLimited = 4009,
    /// The desktop could not be started or was lost. Retry with backoff.
    DesktopUnavailable = 4010,
    /// The server is restarting or stopping. Retry with backoff.
    ShuttingDown = 4011,
    /// The VNC client sent bytes that are not valid RFB (an unknown message type, a
    /// security type other than None, a length over the proxy's bounds). A client bug:
    /// do not retry blindly, the same client will fail the same way.
    MalformedRfb = 4012,
    /// The token's role may not use the DevTools endpoint (a view-only token). Do not
    /// retry with it.
    CdpForbidden = 4013,
    /// The CDP client sent something that is not a CDP command (not JSON, no id or
    /// method, binary). A client bug: do not retry blindly.
    MalformedCdp = 4014,
    /// A message over the size limit (WebSocket's own code).
    MessageTooBig = 1009,
    /// The other end finished normally (a CDP page target whose tab closed).
    Normal = 1000,
}

impl CloseCode {
    /// Every code the server sends.
    pub const ALL: [CloseCode; 16] = [
        CloseCode::AuthRequired,
        CloseCode::TokenInvalid,
        CloseCode::TokenExpired,
        CloseCode::OriginForbidden,
        CloseCode::SessionNotFound,
        CloseCode::HeartbeatTimeout,
        CloseCode::SessionExpired,
        CloseCode::SessionRevoked,
        CloseCode::RateLimited,
        CloseCode::DesktopUnavailable,
        CloseCode::ShuttingDown,
        CloseCode::MalformedRfb,
        CloseCode::CdpForbidden,
        CloseCode::MalformedCdp,
        CloseCode::MessageTooBig,
        CloseCode::Normal,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }
}

/// A close the server makes: a code and a human-readable reason.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: CloseCode,
    pub reason: String,
}

impl Close {
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// The close for a session that ended, told apart by how: see [`Ended`].
    pub fn session_ended(ended: Ended) -> Self {
        match ended {
            Ended::Expired => Close::new(CloseCode::SessionExpired, "session expired"),
            Ended::Revoked => Close::new(CloseCode::SessionRevoked, "session revoked"),
            Ended::LoginCaptured => Close::new(CloseCode::SessionRevoked, "login captured"),
            Ended::LoginNotSaved => Close::new(CloseCode::SessionRevoked, "login not saved"),
        }
    }

    /// The viewer link the connection was opened through was revoked; the session goes on.
    pub fn link_revoked() -> Self {
        Close::new(CloseCode::SessionRevoked, "viewer link revoked")
    }

    pub fn shutting_down() -> Self {
        Close::new(CloseCode::ShuttingDown, "server shutting down")
    }

    pub fn frame(&self) -> Message {
        Message::Close(Some(CloseFrame {
            code: self.code.code(),
            reason: truncate_reason(&self.reason).into(),
        }))
    }
}

/// How a session ended, as its connections tell it: expired, revoked, or (a revocation
/// whose recorded reason says so) a login capture that saved the profile or failed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Expired,
    Revoked,
    LoginCaptured,
    LoginNotSaved,
}

impl Ended {
    /// From the end and the reason the store recorded with it.
    pub fn from_session(end: SessionEnd, end_reason: Option<&str>) -> Self {
        match (end, end_reason) {
            (SessionEnd::Expired, _) => Ended::Expired,
            (SessionEnd::Revoked, Some(crate::login_capture::LOGIN_CAPTURED_REASON)) => Ended::LoginCaptured,
            (SessionEnd::Revoked, Some(crate::login_capture::LOGIN_NOT_SAVED_REASON)) => Ended::LoginNotSaved,
            (SessionEnd::Revoked, _) => Ended::Revoked,
        }
    }

    /// From an end signal: a revocation's reason is read from the store (a plain
    /// revocation if it cannot be read).
    pub async fn of(app: &App, session_id: &str, end: SessionEnd) -> Self {
        if end == SessionEnd::Expired {
            return Ended::Expired;
        }
        match app.sessions.store().get_session(session_id).await {
            Ok(Some(session)) => Ended::from_session(end, session.end_reason.as_deref()),
            _ => Ended::Revoked,
        }
    }

    /// The `reason` of the control channel's `SESSION_ENDED` (docs/protocol.md).
    pub fn message_reason(self) -> &'static str {
        match self {
            Ended::Expired => "expired",
            Ended::Revoked => "revoked",
            Ended::LoginCaptured => "login_captured",
            Ended::LoginNotSaved => "login_not_saved",
        }
    }

    pub fn close(self) -> Close {
        Close::session_ended(self)
    }
}

/// The close for a connection whose session ended with `end` (see [`Ended::of`]).
pub async fn ended_close(app: &App, session_id: &str, end: SessionEnd) -> Close {
    Ended::of(app, session_id, end).await.close()
}

/// How long a connection whose desktop went away while a login capture saved it waits
/// for the session's end (which follows the save) before it reports the desktop lost.
pub const CAPTURE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A connection lost its desktop: if a login capture of its session is saving it (and so
/// stopped it), waits for the session's end and answers its close; `None` otherwise, or
/// if the end does not come within [`CAPTURE_WAIT`].
pub async fn capture_end(app: &App, auth: &mut Authorized) -> Option<Close> {
    if !app.logins.is_capturing(&auth.session.id) && !auth.end.is_ended() {
        return None;
    }
    let end = tokio::time::timeout(CAPTURE_WAIT, auth.end.ended()).await.ok()?;
    Some(ended_close(app, &auth.session.id, end).await)
}

/// Close reasons are limited to 123 bytes by the WebSocket protocol.
fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Sends the close frame and waits briefly for the client's answer. Bounded in time:
/// a client that stopped reading cannot hold the connection (or shutdown) open. Counted
/// by kind and code (`/metrics`).
///
/// Boxed: a connection's task reserves room for every future it may await, and this one
/// (which owns the socket), awaited once at the end, would otherwise make every idle
/// connection larger by its size.
pub fn close(app: &App, kind: ConnKind, mut socket: WebSocket, close: Close) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
    app.metrics.close_sent(kind, close.code.code());
    Box::pin(async move {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            if socket.send(close.frame()).await.is_ok() {
                use futures_util::StreamExt;
                while let Some(Ok(m)) = socket.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    })
}

/// Completes the upgrade and runs `serve` for an authorized connection, or closes a
/// refused one with its code and reason. Either way the connection is counted, logged
/// with its session and connection ids, and waited for at shutdown.
pub fn accept<F, Fut>(
    app: Arc<App>,
    upgrade: WebSocketUpgrade,
    kind: ConnKind,
    session_id: &str,
    decision: Result<Authorized, Close>,
    serve: F,
) -> Response
where
    F: FnOnce(Arc<App>, Authorized, WebSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let conn = app.connection(kind);
    let span = tracing::info_span!("ws", kind = kind.as_str(), session_id = %session_id, conn_id = conn.id);
    let tasks = app.tasks.clone();
    upgrade.on_upgrade(move |socket| {
        let task = async move {
            let _conn = conn;
            match decision {
                Err(refusal) => {
                    tracing::warn!(code = refusal.code.code(), reason = %refusal.reason, "connection refused");
                    close(&app, kind, socket, refusal).await;
                }
                Ok(auth) => serve(app, auth, socket).await,
            }
        };
        tasks.track_future(task.instrument(span))
    })
}

/// A connection that passed the access check.
pub struct Authorized {
    pub session: Session,
    pub claims: AccessClaims,
    /// Subscribed before the session's state was read, so no end can slip between.
    pub end: EndSignal,
    /// The revocation of the viewer link the token came from (never fires without one);
    /// subscribed before the link was read, like `end`.
    pub link: LinkSignal,
    /// This connection's place under the per-address and per-session caps.
    pub _slot: ConnectionSlot,
    /// A DevTools connection's place under the CDP caps (`cdp_relay::admit`).
    pub _cdp_slot: Option<ConnectionSlot>,
    /// Counts the connection as activity on the session's desktop: while any is held,
    /// the desktop does not hibernate (docs/profiles.md, "Idle hibernation").
    pub _activity: crate::desktops::ActivityGuard,
}

/// The session's desktop for an authorized connection, started (or resumed from its
/// hibernation) if it is not running, after a wait in line when every desktop is in use:
/// waits for it unless the session ends, the connection's viewer link is revoked or the
/// server stops first.
pub async fn desktop_for(app: &App, auth: &mut Authorized) -> Result<Arc<DesktopHandle>, Close> {
    let unavailable =
        |e: Unavailable| Close::new(CloseCode::DesktopUnavailable, format!("desktop unavailable: {e}"));
    app.desktops.forget_if_dead(&auth.session.id).await;
    let status = app.desktops.watch(&auth.session, &auth.end).map_err(unavailable)?;
    let id = auth.session.id.clone();
    tokio::select! {
        biased;
        end = auth.end.ended() => Err(ended_close(app, &id, end).await),
        () = auth.link.revoked() => Err(Close::link_revoked()),
        _ = app.shutdown.cancelled() => Err(Close::shutting_down()),
        ready = Desktops::ready(status) => ready.map_err(unavailable),
    }
}

/// Decides whether a WebSocket request for `session_id` may proceed. Touches the token,
/// the Origin and the store, never the desktop.
pub async fn authorize(
    app: &App,
    peer: IpAddr,
    session_id: &str,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Authorized, Close> {
    if app.shutdown.is_cancelled() {
        return Err(Close::shutting_down());
    }
    app.limits
        .attempt(peer)
        .map_err(|refused| Close::new(CloseCode::RateLimited, refused.to_string()))?;
    if let Some(origin) = headers.get(ORIGIN).and_then(|o| o.to_str().ok()) {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        if !app.origin_allowed(origin, host) {
            return Err(Close::new(
                CloseCode::OriginForbidden,
                "this page's origin may not connect",
            ));
        }
    }
    let Some((token, _source)) = find_access_token(headers, query_token, session_id) else {
        return Err(Close::new(
            CloseCode::AuthRequired,
            "an access token is required",
        ));
    };
    let claims = match app.tokens.verify(&token, TokenKind::Access) {
        Ok(c) => c,
        Err(TokenError::Expired) => {
            return Err(Close::new(CloseCode::TokenExpired, "access token expired"));
        }
        Err(TokenError::Invalid) => {
            return Err(Close::new(CloseCode::TokenInvalid, "access token invalid"));
        }
    };
    if claims.sid != session_id {
        return Err(Close::new(
            CloseCode::TokenInvalid,
            "access token is for another session",
        ));
    }
    let end = app.sessions.subscribe(session_id);
    let session = match app.sessions.get(session_id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Close::new(CloseCode::SessionNotFound, "session not found")),
        Err(e) => {
            tracing::error!(session_id, error = %e, "session store failed during a WebSocket access check");
            return Err(Close::new(
                CloseCode::DesktopUnavailable,
                "session store unavailable; retry later",
            ));
        }
    };
    if let Some(ended) = session.end_at(OffsetDateTime::now_utc()) {
        return Err(Ended::from_session(ended, session.end_reason.as_deref()).close());
    }
    if session.state == livesession_session::SessionState::Pending {
        return Err(Close::new(
            CloseCode::SessionNotFound,
            "session not found (payment not confirmed)",
        ));
    }
    let link = match &claims.lnk {
        None => LinkSignal::none(),
        Some(link_id) => {
            let signal = app.sessions.subscribe_link(link_id);
            crate::handlers::links::check_link(app, session_id, link_id)
                .await
                .map_err(|refused| refused.close())?;
            signal
        }
    };
    let slot = app
        .limits
        .acquire(peer, session_id)
        .map_err(|refused| Close::new(CloseCode::RateLimited, refused.to_string()))?;
    Ok(Authorized {
        _activity: app.desktops.hold(&session.id),
        session,
        claims,
        end,
        link,
        _slot: slot,
        _cdp_slot: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_to_the_protocol_limit_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(cut));
        assert_eq!(truncate_reason("short"), "short");
    }

    #[test]
    fn codes_are_distinct_and_in_the_4000_range() {
        let own: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).filter(|c| *c >= 4000).collect();
        let mut codes = own.clone();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), own.len());
        assert!(codes.iter().all(|c| (4000..5000).contains(c)));
        assert_eq!(own.len(), CloseCode::ALL.len() - 2, "all but 1000 and 1009 are our own");
    }
}
