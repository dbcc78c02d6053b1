//! The CDP relay: one agent's WebSocket ⇄ the session's Chromium DevTools, through the
//! desktop's `devtools.sock`.
//!
//! What Chromium sends passes through untouched. What the agent sends is read only for its
//! envelope (`livesession_relay::cdp`): the gateway answers its own `Livesession.*`
//! commands, and while a person holds control it holds back the agent's page-changing
//! commands, delivering them in order once control is handed back. Every change of the
//! holder reaches the agent as a `Livesession.controlChanged` event. The connection ends
//! with a real close frame and reason: expiry (4007), revocation (4008), the desktop's
//! loss (4010), shutdown (4011).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use livesession_desktop::{BrowserState, DesktopHandle, devtools};
use livesession_relay::cdp::{self as protocol, HeldBack};
use livesession_session::{ControlState, Holder};
use serde_json::json;
use tokio_tungstenite::tungstenite;

use crate::app::App;
use crate::metrics::{ConnKind, RelayCounters};
use crate::ws::{self, Authorized, Close, CloseCode};

/// Proxies and load balancers drop WebSockets that are quiet for a minute or so; CDP
/// connections are often quiet while a person works.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// An agent that has not read what was sent for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands held for one connection while a person has control.
const MAX_HELD_COMMANDS: usize = 1000;
const MAX_HELD_BYTES: usize = 16 << 20;
/// A reason given with `Livesession.requestHuman` is shown to people; keep it short.
const MAX_REASON_CHARS: usize = 300;
/// Browser-target sessions followed per connection (each gets the control events).
const MAX_BROWSER_SESSIONS: usize = 32;

pub enum Target {
    Browser,
    Page(String),
}

/// Takes a place for a CDP connection under the DevTools endpoint's own caps (agents hold
/// connections for a long time and must not crowd out viewers), or refuses it (4009).
pub fn admit(app: &App, peer: IpAddr, auth: Authorized) -> Result<Authorized, Close> {
    let slot = app
        .cdp_connections
        .acquire(peer, &auth.session.id)
        .map_err(|refused| Close::new(CloseCode::RateLimited, format!("DevTools: {refused}")))?;
    Ok(Authorized { _cdp_slot: Some(slot), ..auth })
}

type Upstream = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

/// The path of `target`'s DevTools WebSocket inside the desktop, and a fresh stream to the
/// desktop's DevTools socket to open it on. A tampered socket stops the desktop.
pub(crate) async fn devtools_stream(
    app: &App,
    handle: &DesktopHandle,
    target: &Target,
) -> Result<(tokio::net::UnixStream, String), Close> {
    let lost = |what: String| Close::new(CloseCode::DesktopUnavailable, format!("desktop unavailable: {what}"));
    let path = match target {
        Target::Browser => {
            let version = devtools::get_json(&handle.devtools_socket, "/json/version")
                .await
                .map_err(|e| lost(format!("its DevTools did not answer ({e})")))?;
            version["webSocketDebuggerUrl"]
                .as_str()
                .and_then(devtools::websocket_path)
                .ok_or_else(|| lost("its DevTools named no browser target".into()))?
        }
        Target::Page(id) => format!("/devtools/page/{id}"),
    };
    let stream = match handle.devtools_socket.connect().await {
        Ok(stream) => stream,
        Err(e) if e.is_tampered() => {
            // As for VNC: the desktop is not trusted any further; the next start is fresh.
            tracing::error!(error = %e, "desktop tampered with its DevTools socket; stopping it");
            app.desktops.stop(&handle.id).await;
            return Err(lost("its DevTools socket was tampered with, so it was stopped".into()));
        }
        Err(e) => return Err(lost(format!("its DevTools socket: {e}"))),
    };
    Ok((stream, path))
}

/// The server's own client of the desktop's browser-level DevTools (task runners, login
/// capture), opened through `devtools.sock` as an agent's connection is.
pub(crate) async fn browser_client(app: &App, handle: &DesktopHandle) -> Result<livesession_tasks::cdp::Cdp, String> {
    let (stream, path) = devtools_stream(app, handle, &Target::Browser).await.map_err(|close| close.reason)?;
    livesession_tasks::cdp::Cdp::connect(stream, &format!("ws://localhost{path}"))
        .await
        .map_err(|e| format!("the browser's DevTools refused the connection: {e}"))
}

/// Opens the DevTools WebSocket of `target` inside the desktop, as a local client (Chrome
/// refuses other Host headers).
async fn connect_upstream(app: &App, handle: &DesktopHandle, target: &Target) -> Result<Upstream, Close> {
    let lost = |what: String| Close::new(CloseCode::DesktopUnavailable, format!("desktop unavailable: {what}"));
    let (stream, path) = devtools_stream(app, handle, target).await?;
    let max = app.config.cdp_max_message_bytes;
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let (upstream, _) = tokio_tungstenite::client_async_with_config(format!("ws://localhost{path}"), stream, Some(config))
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(r) if r.status() == 404 || r.status() == 500 => {
                Close::new(CloseCode::SessionNotFound, "no such DevTools target in this session's browser")
            }
            e => lost(format!("its DevTools refused the connection ({e})")),
        })?;
    Ok(upstream)
}

/// `Livesession.controlChanged` for the connection's root session and for every session
/// it opened on the browser target (`Target.attachToBrowserTarget`: Playwright's
/// `newBrowserCDPSession`, Puppeteer's `browser.target().createCDPSession()`), where
/// clients listen for events of the browser.
fn control_events(state: &ControlState, browser_sessions: &[String]) -> Vec<Message> {
    let params = serde_json::to_value(state).expect("serializable");
    let root = protocol::event("Livesession.controlChanged", params.clone());
    std::iter::once(root)
        .chain(browser_sessions.iter().map(|s| {
            json!({ "method": "Livesession.controlChanged", "params": params, "sessionId": s }).to_string()
        }))
        .map(|text| Message::Text(text.into()))
        .collect()
}

/// A `Livesession.*` event coming from Chromium's side (it can only be forged there).
fn forged_livesession(message: &Message) -> bool {
    matches!(message, Message::Text(t) if t.as_str().starts_with("{\"method\":\"Livesession."))
}

/// The id of a reply from Chromium, read from its first bytes only (replies start with
/// `{"id":N,`), so large messages are not parsed.
fn reply_id(text: &str) -> Option<i64> {
    let rest = text.strip_prefix("{\"id\":")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// Chromium's frames, as the client's (no copy; text is checked as UTF-8 once more).
fn to_client(message: tungstenite::Message) -> Option<Message> {
    match message {
        tungstenite::Message::Text(t) => Utf8Bytes::try_from(bytes::Bytes::from(t)).ok().map(Message::Text),
        tungstenite::Message::Binary(b) => Some(Message::Binary(b)),
        _ => None,
    }
}

fn to_upstream(text: Utf8Bytes) -> tungstenite::Message {
    let bytes = Message::Text(text).into_data();
    tungstenite::Message::Text(tungstenite::Utf8Bytes::try_from(bytes).expect("it was text"))
}

pub async fn relay(app: &Arc<App>, mut auth: Authorized, socket: WebSocket, target: Target) {
    let id = auth.session.id.clone();
    let role = auth.claims.role;
    tracing::info!(?role, target = match &target { Target::Browser => "browser", Target::Page(_) => "page" }, "cdp connection opened");
    let handle = match ws::desktop_for(app, &mut auth).await {
        Ok(h) => h,
        Err(close) => return ws::close(app, ConnKind::Cdp, socket, close).await,
    };
    let upstream = match connect_upstream(app, &handle, &target).await {
        Ok(u) => u,
        Err(close) => {
            if close.code == CloseCode::DesktopUnavailable {
                app.desktops.lost(&id, &handle).await;
            }
            return ws::close(app, ConnKind::Cdp, socket, close).await;
        }
    };
    let _presence = app.control.agent_joined(&id);
    let mut control = app.control.subscribe(&id);
    let (to_agent, from_agent) = socket.split();
    let (to_chrome, from_chrome) = upstream.split();
    let mut conversation = Conversation {
        app,
        id: &id,
        held: HeldBack::new(MAX_HELD_COMMANDS, MAX_HELD_BYTES),
        to_agent,
        to_chrome,
        forwarded: 0,
        held_total: 0,
        page_target: matches!(target, Target::Page(_)),
        attaching: Default::default(),
        browser_sessions: Vec::new(),
        relayed: app.metrics.relay_counters(ConnKind::Cdp),
    };
    let end = conversation.run(&mut auth, &mut control, from_agent, from_chrome).await;
    let Conversation { to_agent, forwarded, held_total, held, .. } = conversation;
    tracing::info!(forwarded, held_total, dropped_held = held.len(), close_code = end.as_ref().map(|c| c.code.code()), "cdp connection closed");
    if let Some(close) = end {
        app.metrics.close_sent(ConnKind::Cdp, close.code.code());
        let mut to_agent = to_agent;
        let _ = tokio::time::timeout(Duration::from_secs(3), to_agent.send(close.frame())).await;
    }
}

struct Conversation<'a> {
    app: &'a App,
    id: &'a str,
    held: HeldBack,
    to_agent: futures_util::stream::SplitSink<WebSocket, Message>,
    to_chrome: futures_util::stream::SplitSink<Upstream, tungstenite::Message>,
    forwarded: u64,
    held_total: u64,
    /// A page's own endpoint (not the browser's).
    page_target: bool,
    /// Ids of `Target.attachToBrowserTarget` commands not answered yet.
    attaching: std::collections::HashSet<i64>,
    /// Sessions the agent opened on the browser target: control events go there too.
    browser_sessions: Vec<String>,
    /// Bytes from Chromium to the agent and from the agent (`/metrics`).
    relayed: RelayCounters,
}

impl Conversation<'_> {
    /// Relays until one side ends; returns the close to send the agent (`None` when it
    /// closed first).
    async fn run(
        &mut self,
        auth: &mut Authorized,
        control: &mut tokio::sync::watch::Receiver<ControlState>,
        mut from_agent: futures_util::stream::SplitStream<WebSocket>,
        mut from_chrome: futures_util::stream::SplitStream<Upstream>,
    ) -> Option<Close> {
        // The agent learns who holds control as soon as it is connected.
        let first = control.borrow_and_update().clone();
        if !self.tell_control(&first).await {
            return None;
        }
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        loop {
            tokio::select! {
                biased;
                end = auth.end.ended() => return Some(crate::ws::ended_close(&self.app, self.id, end).await),
                () = auth.link.revoked() => return Some(Close::link_revoked()),
                _ = self.app.shutdown.cancelled() => return Some(Close::shutting_down()),
                changed = control.changed() => {
                    if changed.is_err() { continue; }
                    let state = control.borrow_and_update().clone();
                    if !self.tell_control(&state).await { return None; }
                    if state.holder != Holder::Person && !self.flush_held().await {
                        return Some(self.chrome_gone(auth).await);
                    }
                }
                message = from_chrome.next() => match message {
                    Some(Ok(m)) => {
                        self.relayed.to_client.inc_by(m.len() as u64);
                        self.note_browser_session(&m);
                        // Only the gateway speaks for the `Livesession` domain: the desktop's
                        // browser cannot forge its events.
                        if let Some(m) = to_client(m).filter(|m| !forged_livesession(m))
                            && !self.send_to_agent(m).await {
                            return None;
                        }
                    }
                    Some(Err(_)) | None => return Some(self.chrome_gone(auth).await),
                },
                message = from_agent.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        self.relayed.from_client.inc_by(text.len() as u64);
                        let holder = control.borrow().holder;
                        match self.command_from_agent(text, holder).await {
                            Ok(()) => {}
                            Err(Some(close)) => return Some(close),
                            Err(None) => return Some(self.chrome_gone(auth).await),
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return Some(Close::new(CloseCode::MalformedCdp, "malformed CDP: messages are JSON text"));
                    }
                    Some(Ok(Message::Close(_))) | None => return None,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => {
                        // Over the size limit (or broken framing): say so, if it can still hear.
                        let max = self.app.config.cdp_max_message_bytes;
                        let reason = if e.to_string().contains("too long") || e.to_string().contains("Space limit") {
                            format!("message too big: the limit is {max} bytes")
                        } else {
                            "malformed WebSocket frame".to_owned()
                        };
                        tracing::warn!(reason = %reason, "cdp client message refused");
                        return Some(Close::new(CloseCode::MessageTooBig, reason));
                    }
                },
                _ = ping.tick() => {
                    if !self.send_to_agent(Message::Ping(Default::default())).await { return None; }
                }
            }
        }
    }

    async fn tell_control(&mut self, state: &ControlState) -> bool {
        for event in control_events(state, &self.browser_sessions) {
            if !self.send_to_agent(event).await {
                return false;
            }
        }
        true
    }

    /// Sends to the agent; `false` if it is gone or has stopped reading: the relay never
    /// waits on it for long, so expiry, revocation and shutdown are always heard.
    async fn send_to_agent(&mut self, message: Message) -> bool {
        match tokio::time::timeout(SEND_TIMEOUT, self.to_agent.send(message)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!("cdp client stopped reading; connection dropped");
                false
            }
        }
    }

    /// Remembers the session of an answered `Target.attachToBrowserTarget`.
    fn note_browser_session(&mut self, message: &tungstenite::Message) {
        if self.attaching.is_empty() {
            return;
        }
        let tungstenite::Message::Text(text) = message else { return };
        let Some(id) = reply_id(text.as_str()) else { return };
        if !self.attaching.remove(&id) {
            return;
        }
        if let Ok(reply) = serde_json::from_str::<serde_json::Value>(text.as_str())
            && let Some(session) = reply["result"]["sessionId"].as_str()
            && self.browser_sessions.len() < MAX_BROWSER_SESSIONS
        {
            self.browser_sessions.push(session.to_owned());
        }
    }

    /// Why Chromium's side ended: the session's end if that is the cause, else the
    /// desktop was lost.
    async fn chrome_gone(&self, auth: &mut Authorized) -> Close {
        // (A login capture that is saving the browser ends the session next.)
        if let Some(close) = crate::ws::capture_end(&self.app, auth).await {
            return close;
        }
        // The browser may have exited and be starting again inside the desktop; its
        // supervisor notes that right after the exit, so look twice.
        let runtime = self.app.desktops.runtime();
        let mut browser = runtime.browser_state(self.id).await;
        if matches!(browser, BrowserState::Running { .. }) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            browser = runtime.browser_state(self.id).await;
        }
        match browser {
            BrowserState::Restarting { .. } => Close::new(
                CloseCode::DesktopUnavailable,
                "desktop unavailable: the browser exited and is starting again; reconnect",
            ),
            // A page target ends with its tab; the browser (and the desktop) go on.
            BrowserState::Running { .. } if self.page_target => Close::new(CloseCode::Normal, "the DevTools target closed"),
            BrowserState::Saving => Close::new(CloseCode::DesktopUnavailable, "desktop unavailable: the browser's state is being saved"),
            _ => Close::new(CloseCode::DesktopUnavailable, "desktop unavailable: the browser closed the DevTools connection"),
        }
    }

    /// One command from the agent. `Err(Some)` closes with that; `Err(None)`: Chromium is gone.
    async fn command_from_agent(&mut self, text: Utf8Bytes, holder: Holder) -> Result<(), Option<Close>> {
        let command = protocol::parse_command(text.as_str())
            .map_err(|e| Some(Close::new(CloseCode::MalformedCdp, format!("malformed CDP: {e}"))))?;
        if command.method == "Target.attachToBrowserTarget"
            && command.session_id.is_none()
            && let Some(id) = command.id.as_i64()
            && self.attaching.len() < MAX_BROWSER_SESSIONS
        {
            self.attaching.insert(id);
        }
        if let Some(name) = command.method.strip_prefix(protocol::DOMAIN) {
            let reply = self.livesession_command(name, &command);
            return if self.send_to_agent(Message::Text(reply.into())).await { Ok(()) } else { Err(None) };
        }
        // Released control with commands still held (the change not seen yet): they go first.
        if holder != Holder::Person && !self.held.is_empty() && !self.flush_held().await {
            return Err(None);
        }
        if holder == Holder::Person && protocol::is_held_back(&command.method) {
            self.held_total += 1;
            return self.held.push(text.as_str().to_owned()).map_err(|full| {
                Some(Close::new(CloseCode::RateLimited, full.to_string()))
            });
        }
        self.forwarded += 1;
        self.to_chrome.send(to_upstream(text)).await.map_err(|_| None)
    }

    /// Sends every held command, in order. `false`: Chromium is gone.
    async fn flush_held(&mut self) -> bool {
        let held: Vec<String> = self.held.drain().collect();
        for text in held {
            self.forwarded += 1;
            if self.to_chrome.send(tungstenite::Message::Text(text.into())).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The gateway's own commands.
    fn livesession_command(&self, name: &str, command: &protocol::Command) -> String {
        match name {
            "requestHuman" => {
                let reason = command.params.get("reason").and_then(|r| r.as_str()).unwrap_or("").trim();
                if reason.is_empty() {
                    return protocol::error_reply(command, -32602, "Livesession.requestHuman needs a non-empty params.reason");
                }
                let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
                tracing::info!(session_id = %self.id, "an agent asks for a person");
                self.app.control.request_human(self.id, &reason);
                protocol::reply(command, json!({}))
            }
            "getControl" => protocol::reply(command, serde_json::to_value(self.app.control.current(self.id)).expect("serializable")),
            _ => protocol::error_reply(command, -32601, &format!("'{}' wasn't found", command.method)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_ids_are_read_from_the_first_bytes() {
        assert_eq!(reply_id(r#"{"id":42,"result":{"sessionId":"S"}}"#), Some(42));
        assert_eq!(reply_id(r#"{"method":"Target.attachedToTarget","params":{}}"#), None);
        assert_eq!(reply_id(r#"{"id":"x"}"#), None);
    }

    #[test]
    fn control_events_reach_the_root_and_every_browser_session() {
        let state = ControlState { holder: Holder::Person, since: time::OffsetDateTime::UNIX_EPOCH, reason: None, agents: 1 };
        let events = control_events(&state, &["B1".into()]);
        let texts: Vec<serde_json::Value> = events
            .iter()
            .map(|m| match m {
                Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
                _ => panic!("text"),
            })
            .collect();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0]["params"]["holder"], "person");
        assert!(texts[0].get("sessionId").is_none());
        assert_eq!(texts[1]["sessionId"], "B1");
    }
}
