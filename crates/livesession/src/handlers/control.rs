//! The control channel: `GET /api/sessions/{id}/control`, a JSON text WebSocket that tells
//! the viewer about its session and desktop (the messages are in `docs/protocol.md`).
//! Opening it starts the session's desktop if it is not running (resumes a hibernated
//! one, waits in line when every desktop is in use), and reports progress.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::app::{App, AppState};
use crate::auth::{TokenError, TokenKind};
use crate::desktops::DesktopStatus;
use crate::error::ApiError;
use crate::metrics::ConnKind;
use crate::ws::{self, Authorized, Close, CloseCode};

/// A client that has not read what was sent for this long is dropped: the server never
/// queues without bound for a reader that stopped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const SERVER_PING_INTERVAL: Duration = Duration::from_secs(30);
const MAX_CLIENT_MESSAGE: usize = 4096;
/// Viewers are warned this long before their session expires.
const EXPIRY_WARNING: time::Duration = time::Duration::minutes(5);

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerMessage {
    Connected {
        session_id: String,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        server_time: OffsetDateTime,
        /// What the connection's token allows: `interactive` or `view`.
        role: crate::auth::Role,
    },
    Pong,
    AuthOk {
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    DesktopStatus {
        status: &'static str,
        step: Option<&'static str>,
        error: Option<String>,
        /// While `queued`: the session's place in line (1: next).
        #[serde(skip_serializing_if = "Option::is_none")]
        position: Option<usize>,
    },
    SessionExpiring {
        seconds_left: i64,
    },
    SessionEnded {
        reason: &'static str,
    },
    /// Who holds control of the browser: `agent`, `person` or `none`; `reason` while an
    /// agent asks for a person.
    Control {
        #[serde(flatten)]
        state: livesession_session::ControlState,
    },
    Error {
        message: String,
    },
    /// One change of one of the session's tasks (`docs/protocol.md`).
    TaskUpdate {
        task_id: String,
        seq: u64,
        /// Resume after this on reconnect: `?tasks_after=CURSOR`.
        cursor: u64,
        state: livesession_tasks::TaskState,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        #[serde(skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        screenshot_url: Option<String>,
    },
    /// A file was added to the session's files: uploaded, or downloaded by the desktop's
    /// browser (`docs/protocol.md`).
    FileAdded {
        #[serde(flatten)]
        entry: crate::session_files::FileEntry,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum ClientMessage {
    Ping,
    /// A fresh access token for this session, so the connection outlives the one it
    /// was opened with.
    Auth {
        token: String,
    },
    /// The person takes control from the agent (interactive role only).
    TakeControl,
    /// The person hands control back to the agent (interactive role only).
    ReleaseControl,
}

impl ServerMessage {
    fn task_update(event: livesession_tasks::TaskEvent) -> Self {
        ServerMessage::TaskUpdate {
            screenshot_url: crate::handlers::tasks::screenshot_url(&event),
            task_id: event.task_id,
            seq: event.seq,
            cursor: event.cursor,
            state: event.state,
            at: event.at,
            step: event.step,
            message: event.message,
        }
    }

    fn desktop(status: &DesktopStatus) -> Self {
        let (step, error) = match status {
            DesktopStatus::Starting(piece) | DesktopStatus::Resuming(piece) => (Some(piece.step()), None),
            DesktopStatus::Restarting(_) => (Some(livesession_desktop::Piece::Chromium.step()), None),
            DesktopStatus::Failed(e) => (e.piece().map(|p| p.step()), Some(e.to_string())),
            DesktopStatus::Queued(_)
            | DesktopStatus::Ready(_)
            | DesktopStatus::Hibernating
            | DesktopStatus::Hibernated
            | DesktopStatus::Stopped => (None, None),
        };
        let position = match status {
            DesktopStatus::Queued(n) => Some(*n),
            _ => None,
        };
        ServerMessage::DesktopStatus {
            status: status.name(),
            step,
            error,
            position,
        }
    }

    fn text(&self) -> Message {
        Message::Text(serde_json::to_string(self).expect("serializable").into())
    }
}

/// The control channel's query: the token (as for VNC) and where task updates resume.
#[derive(Debug, Default, Deserialize)]
pub struct ControlQuery {
    pub token: Option<String>,
    /// The `cursor` of the last TASK_UPDATE this viewer saw; later ones are sent first.
    /// Without it, every update of the session's tasks is sent.
    pub tasks_after: Option<u64>,
}

pub async fn control_channel(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ControlQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade =
        upgrade.map_err(|e| ApiError::new(e.status(), "websocket_required", e.body_text()))?;
    // Control messages are small (an AUTH, the largest a client sends, is under 1 KiB):
    // small buffers keep an idle connection cheap (the default 128 KiB each way dominated
    // memory per connection; the buffer grows for a larger message), and a write buffer cap
    // bounds what a client that does not read can make the server hold.
    let upgrade = upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let decision = ws::authorize(&app, peer.ip(), &id, &headers, query.token.as_deref()).await;
    Ok(ws::accept(
        app.0.clone(),
        upgrade,
        ConnKind::Control,
        &id,
        decision,
        move |app, auth, mut socket| async move {
            match converse(&app, auth, &mut socket, query.tasks_after.unwrap_or(0)).await {
                Some(close) => {
                    tracing::info!(code = close.code.code(), reason = %close.reason, "control connection closed by the server");
                    ws::close(&app, ConnKind::Control, socket, close).await;
                }
                None => tracing::info!("control connection closed by the client"),
            }
        },
    ))
}

/// Sends one message; `None` if the client is gone or has stopped reading.
async fn send(socket: &mut WebSocket, message: Message) -> Option<()> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Some(()),
        Ok(Err(_)) => None,
        Err(_) => {
            tracing::warn!("client stopped reading; connection dropped");
            None
        }
    }
}

/// When to warn about an expiry at `expires_at`: five minutes before (now, if that is past).
fn warning_instant(expires_at: OffsetDateTime) -> Instant {
    instant_of(expires_at - EXPIRY_WARNING)
}

/// The monotonic instant of a wall-clock time (now, if it is past).
fn instant_of(at: OffsetDateTime) -> Instant {
    Instant::now()
        + (at - OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO)
}

fn claims_expiry(claims: &crate::auth::AccessClaims) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(claims.exp).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Runs the conversation; returns the close to send, or `None` if the client went away.
async fn converse(app: &App, mut auth: Authorized, socket: &mut WebSocket, tasks_after: u64) -> Option<Close> {
    tracing::info!(role = ?auth.claims.role, "control connection opened");
    let session = &auth.session;
    let hello = ServerMessage::Connected {
        session_id: session.id.clone(),
        expires_at: session.expires_at,
        server_time: OffsetDateTime::now_utc(),
        role: auth.claims.role,
    };
    // Files added from now on (before CONNECTED: a client lists the files once it has that,
    // so no file falls between its list and these events).
    let mut files = app.desktops.files().subscribe(&session.id);
    let mut files_open = true;
    send(socket, hello.text()).await?;
    app.desktops.forget_if_dead(&session.id).await;
    let mut desktop = match app.desktops.watch(session, &auth.end) {
        Ok(rx) => rx,
        Err(e) => {
            let failed = ServerMessage::DesktopStatus {
                status: "failed",
                step: None,
                error: Some(e.to_string()),
                position: None,
            };
            let _ = send(socket, failed.text()).await;
            return Some(Close::new(
                CloseCode::DesktopUnavailable,
                format!("desktop unavailable: {e}"),
            ));
        }
    };
    desktop.mark_changed(); // so the current status is sent first
    // Who holds control comes second, before the desktop's status (docs/protocol.md).
    let mut control = app.control.subscribe(&session.id);
    let state = control.borrow_and_update().clone();
    send(socket, ServerMessage::Control { state }.text()).await?;
    let may_take_control = auth.claims.role == crate::auth::Role::Interactive;
    // Task updates come after the desktop's first status; the feed reads from the store.
    let mut tasks = crate::task_feed::TaskFeed::new(app.queue.clone(), &session.id, tasks_after);
    let mut last_sent = None;
    // Set while a login capture saves the desktop (see the branch below).
    let mut capture_deadline: Option<Instant> = None;
    let mut expires_at = session.expires_at;
    let mut warned = false;
    // The connection lives as long as its access token; AUTH messages renew it.
    let mut token_expires_at = claims_expiry(&auth.claims);
    // Clients send PING every 30 s; by default three missed ones end the connection.
    let heartbeat_timeout = Duration::from_secs(app.config.heartbeat_timeout);
    let mut last_heard = Instant::now();
    let mut ping =
        tokio::time::interval_at(Instant::now() + SERVER_PING_INTERVAL, SERVER_PING_INTERVAL);
    loop {
        tokio::select! {
            // Session end first: a revocation also stops the desktop, and the viewer must
            // learn that the session ended, not that its desktop went away.
            biased;
            end = auth.end.ended() => {
                // A revocation may be a login capture's end: its recorded reason says.
                let ended = ws::Ended::of(app, &auth.session.id, end).await;
                let reason = ended.message_reason();
                let _ = send(socket, ServerMessage::SessionEnded { reason }.text()).await;
                return Some(ended.close());
            }
            () = auth.link.revoked() => return Some(Close::link_revoked()),
            _ = app.shutdown.cancelled() => return Some(Close::shutting_down()),
            // A login capture saving the browser stopped the desktop: the session's end
            // follows, and is the news (not a lost desktop). Bounded, in case it does not.
            _ = tokio::time::sleep_until(capture_deadline.unwrap_or_else(Instant::now)), if capture_deadline.is_some() => {
                return Some(Close::new(CloseCode::DesktopUnavailable, "desktop stopped"));
            }
            changed = desktop.changed(), if capture_deadline.is_none() => {
                let status = if changed.is_ok() { desktop.borrow_and_update().clone() } else { DesktopStatus::Stopped };
                if matches!(status, DesktopStatus::Stopped | DesktopStatus::Failed(_)) && app.logins.is_capturing(&auth.session.id) {
                    capture_deadline = Some(Instant::now() + ws::CAPTURE_WAIT);
                    continue;
                }
                let message = ServerMessage::desktop(&status);
                let text = serde_json::to_string(&message).expect("serializable");
                // The desktop's watch may repeat a status (a start re-announces its first step).
                if last_sent.as_ref() != Some(&text) {
                    send(socket, Message::Text(text.clone().into())).await?;
                    last_sent = Some(text);
                }
                match status {
                    // Closing lets the client retry with backoff, which starts a new desktop.
                    DesktopStatus::Failed(e) => return Some(Close::new(CloseCode::DesktopUnavailable, format!("desktop unavailable: {e}"))),
                    DesktopStatus::Stopped => return Some(Close::new(CloseCode::DesktopUnavailable, "desktop stopped")),
                    // This connection keeps the desktop up, so it sees this only in a race
                    // (or a hibernation for shutdown, which closes it next): resume.
                    DesktopStatus::Hibernated => match app.desktops.watch(&auth.session, &auth.end) {
                        Ok(rx) => {
                            desktop = rx;
                            desktop.mark_changed();
                        }
                        Err(e) => return Some(Close::new(CloseCode::DesktopUnavailable, format!("desktop unavailable: {e}"))),
                    },
                    DesktopStatus::Queued(_)
                    | DesktopStatus::Starting(_)
                    | DesktopStatus::Resuming(_)
                    | DesktopStatus::Ready(_)
                    | DesktopStatus::Restarting(_)
                    | DesktopStatus::Hibernating => {}
                }
            }
            changed = control.changed() => {
                if changed.is_ok() {
                    let state = control.borrow_and_update().clone();
                    send(socket, ServerMessage::Control { state }.text()).await?;
                }
            }
            // After the first desktop status (sent by the branch above, which is ready first).
            event = tasks.next(), if last_sent.is_some() => {
                send(socket, ServerMessage::task_update(event).text()).await?;
            }
            added = files.recv(), if files_open => match added {
                Ok(entry) => send(socket, ServerMessage::FileAdded { entry }.text()).await?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "control connection fell behind the session's file events");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => files_open = false,
            },
            message = socket.recv() => {
                let Some(Ok(message)) = message else { return None };
                last_heard = Instant::now();
                let reply = match message {
                    Message::Text(text) => match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::Ping) => ServerMessage::Pong,
                        Ok(ClientMessage::Auth { token }) => match app.tokens.verify(&token, TokenKind::Access) {
                            // A token of another viewer link (or none) would escape this
                            // link's revocation, which this connection listens to.
                            Ok(claims) if claims.sid == auth.session.id
                                && (claims.lnk != auth.claims.lnk || claims.role != auth.claims.role) => {
                                ServerMessage::Error { message: "AUTH: the token is for another viewer link or role".into() }
                            }
                            Ok(claims) if claims.sid == auth.session.id => {
                                token_expires_at = claims_expiry(&claims);
                                ServerMessage::AuthOk { expires_at: token_expires_at }
                            }
                            Ok(_) => ServerMessage::Error { message: "AUTH: the token is for another session".into() },
                            Err(TokenError::Expired) => ServerMessage::Error { message: "AUTH: the token has expired".into() },
                            Err(TokenError::Invalid) => ServerMessage::Error { message: "AUTH: the token is invalid".into() },
                        },
                        Ok(ClientMessage::TakeControl | ClientMessage::ReleaseControl) if !may_take_control => {
                            ServerMessage::Error { message: "only an interactive connection can take or release control".into() }
                        }
                        Ok(ClientMessage::TakeControl) => {
                            tracing::info!("the person takes control");
                            app.control.take(&auth.session.id);
                            continue;
                        }
                        Ok(ClientMessage::ReleaseControl) => {
                            tracing::info!("the person releases control");
                            app.control.release(&auth.session.id);
                            continue;
                        }
                        Err(_) => ServerMessage::Error { message: "unknown or malformed message; see docs/protocol.md".into() },
                    },
                    Message::Binary(_) => ServerMessage::Error { message: "binary messages are not part of this protocol".into() },
                    Message::Close(_) => return None,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                send(socket, reply.text()).await?;
            }
            // A token that ends with the session (token times are whole seconds) leaves
            // the close to the session's end, which says "expired" rather than "token expired".
            _ = tokio::time::sleep_until(instant_of(token_expires_at)),
                if token_expires_at + time::Duration::seconds(1) < expires_at => {
                return Some(Close::new(CloseCode::TokenExpired, "access token expired"));
            }
            _ = tokio::time::sleep_until(last_heard + heartbeat_timeout) => {
                let reason = format!("nothing heard from the client for {} s", heartbeat_timeout.as_secs());
                return Some(Close::new(CloseCode::HeartbeatTimeout, reason));
            }
            _ = ping.tick() => {
                send(socket, Message::Ping(Default::default())).await?;
            }
            _ = tokio::time::sleep_until(warning_instant(expires_at)), if !warned => {
                // The session may have been extended since this connection read it.
                if let Ok(Some(current)) = app.sessions.store().get_session(&auth.session.id).await {
                    expires_at = current.expires_at;
                }
                let left = expires_at - OffsetDateTime::now_utc();
                if left <= EXPIRY_WARNING {
                    send(socket, ServerMessage::SessionExpiring { seconds_left: left.whole_seconds().max(0) }.text()).await?;
                    warned = true;
                }
            }
        }
    }
}
