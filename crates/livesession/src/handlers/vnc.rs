//! The VNC proxy: `GET /api/sessions/{id}/vnc` upgrades to a WebSocket (subprotocol
//! `binary`) and relays RFB bytes to and from the session desktop's Unix socket.
//!
//! The client's bytes pass through an RFB filter first: it validates them for every
//! connection and, for a view-only token, drops every input message, so a viewer cannot
//! type, click, paste or resize even with a modified client. A view-only connection's
//! desktop stream is framed too, and the desktop's clipboard (ServerCutText) is withheld
//! from it (`livesession_relay::rfb_server_filter`).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt, future};
use livesession_relay::{
    Inbound, MessageKind, Outbound, Policy, PumpConfig, PumpEnd, RfbClientFilter, pump_filtered,
};

use crate::app::{App, AppState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use livesession_session::Holder;
use crate::error::ApiError;
use crate::handlers::TokenQuery;
use crate::metrics::ConnKind;
use crate::ws::{self, Authorized, Close, CloseCode};

/// RFB client messages are small; the largest legitimate one is a clipboard paste.
const MAX_CLIENT_MESSAGE: usize = 1 << 20;

pub async fn vnc_proxy(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade =
        upgrade.map_err(|e| ApiError::new(e.status(), "websocket_required", e.body_text()))?;
    let upgrade = upgrade
        .protocols(["binary"])
        .max_message_size(MAX_CLIENT_MESSAGE);
    // The access check runs before the upgrade and never touches the desktop.
    let decision = ws::authorize(&app, peer.ip(), &id, &headers, query.token.as_deref()).await;
    Ok(ws::accept(
        app.0.clone(),
        upgrade,
        ConnKind::Vnc,
        &id,
        decision,
        |app, auth, socket| async move { relay(&app, auth, socket).await },
    ))
}

async fn relay(app: &App, mut auth: Authorized, mut socket: WebSocket) {
    let id = auth.session.id.clone();
    tracing::info!(role = ?auth.claims.role, "vnc connection opened");

    // Wait for the desktop, unless the session ends or the server stops first.
    let handle = match ws::desktop_for(app, &mut auth).await {
        Ok(handle) => handle,
        Err(close) => return ws::close(app, ConnKind::Vnc, socket, close).await,
    };
    // The socket is in a directory the desktop owns: reached only if it is still the
    // desktop's own socket, never through a link it may have put there (`confined`).
    let upstream = match handle.vnc_socket.connect().await {
        Ok(s) => s,
        Err(e) if e.is_tampered() => {
            tracing::error!(error = %e, "desktop tampered with its VNC socket; stopping it");
            app.desktops.stop(&id).await;
            return ws::close(
                app,
                ConnKind::Vnc,
                socket,
                Close::new(
                    CloseCode::DesktopUnavailable,
                    "desktop unavailable: its VNC socket was tampered with, so it was stopped",
                ),
            )
            .await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "desktop VNC socket refused the connection");
            app.desktops.lost(&id, &handle).await;
            return ws::close(
                app,
                ConnKind::Vnc,
                socket,
                Close::new(
                    CloseCode::DesktopUnavailable,
                    "desktop unavailable: its VNC server is gone",
                ),
            )
            .await;
        }
    };

    let (tx, rx) = (&mut socket).split();
    // Counted as they pass (`/metrics`): one atomic add per chunk.
    let crate::metrics::RelayCounters { to_client: to_client_bytes, from_client: from_client_bytes } =
        app.metrics.relay_counters(ConnKind::Vnc);
    let mut to_client = tx.with(move |out: Outbound| {
        future::ready(Ok::<_, axum::Error>(match out {
            Outbound::Data(bytes) => {
                to_client_bytes.inc_by(bytes.len() as u64);
                Message::Binary(bytes)
            }
            Outbound::Ping => Message::Ping(Default::default()),
        }))
    });
    let mut from_client = rx.map(move |m| {
        m.map(|m| match m {
            Message::Binary(bytes) => {
                from_client_bytes.inc_by(bytes.len() as u64);
                Inbound::Data(bytes)
            }
            Message::Close(_) => Inbound::Close,
            _ => Inbound::Ignored,
        })
    });
    let stop = async {
        tokio::select! {
            end = auth.end.ended() => ws::ended_close(app, &id, end).await,
            () = auth.link.revoked() => Close::link_revoked(),
            _ = app.shutdown.cancelled() => Close::shutting_down(),
        }
    };
    // While an agent holds control, the person's input is dropped here (the viewer says
    // so and offers to take control); it flows again the moment they take it.
    let input_held = Arc::new(AtomicBool::new(app.control.current(&id).holder == Holder::Agent));
    let follow_control = {
        let held = input_held.clone();
        let mut control = app.control.subscribe(&id);
        tokio::spawn(async move {
            loop {
                let holder = control.borrow_and_update().holder;
                held.store(holder == Holder::Agent, Ordering::Relaxed);
                if control.changed().await.is_err() {
                    break;
                }
            }
        })
    };
    let policy = if auth.claims.role.may_send_vnc_input() { Policy::Interactive } else { Policy::ViewOnly };
    let mut filter = RfbClientFilter::new(policy).hold_input_while(input_held);
    let (end, moved) = pump_filtered(
        upstream,
        &mut to_client,
        &mut from_client,
        &PumpConfig::default(),
        Some(&mut filter),
        stop,
    )
    .await;
    drop((to_client, from_client));
    follow_control.abort();
    let close = match end {
        PumpEnd::Stopped(close) => Some(close),
        PumpEnd::ClientClosed => None,
        // A client bug (or a hand-made client); never logs the client's bytes.
        PumpEnd::ClientProtocol(e) => {
            tracing::warn!(reason = %e, "vnc client sent malformed RFB");
            Some(Close::new(
                CloseCode::MalformedRfb,
                format!("malformed RFB: {e}"),
            ))
        }
        // A view-only viewer's stream that could not be framed is cut rather than passed
        // on unframed (its clipboard could not be withheld).
        PumpEnd::UpstreamProtocol(e) => {
            tracing::warn!(reason = %e, "desktop stream could not be framed for a view-only viewer");
            Some(Close::new(
                CloseCode::DesktopUnavailable,
                "desktop unavailable: its screen could not be relayed to a view-only viewer",
            ))
        }
        // The session ended and its desktop went away (or a login capture is saving it,
        // and the end follows): say why the session ended.
        PumpEnd::UpstreamClosed | PumpEnd::UpstreamError(_) => match ws::capture_end(app, &mut auth).await {
            Some(close) => Some(close),
            None => {
                app.desktops.lost(&id, &handle).await;
                Some(Close::new(
                    CloseCode::DesktopUnavailable,
                    "desktop unavailable: its VNC server closed the connection",
                ))
            }
        },
    };
    let stats = filter.stats();
    tracing::info!(
        to_client_bytes = moved.to_client,
        to_upstream_bytes = moved.to_upstream,
        role = ?auth.claims.role,
        dropped_input = stats.dropped_total(),
        dropped_keys = stats.dropped_keys(),
        dropped_pointer = stats.dropped(MessageKind::PointerEvent),
        dropped_clipboard = stats.dropped(MessageKind::ClientCutText),
        close_code = close.as_ref().map(|c| c.code.code()),
        "vnc connection closed"
    );
    match close {
        Some(close) => ws::close(app, ConnKind::Vnc, socket, close).await,
        // The client began the closing: the answer to its close frame is queued; send it
        // rather than drop the connection under it.
        None => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.flush()).await;
        }
    }
}
