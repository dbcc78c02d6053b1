//! A small client of Chromium's DevTools protocol: one WebSocket to the browser, commands
//! matched to their replies by id, events broadcast to whoever listens, and [`Page`], a
//! flattened session on one tab with the few things the steps and the agent need.
//!
//! The browser is shared with the person watching: nothing here closes a tab or changes
//! the window; input goes through `Input.*`, so it is seen over VNC as it happens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a command may wait for its reply unless told otherwise.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest message accepted (a full-page screenshot is several MiB of base64).
const MAX_MESSAGE: usize = 64 << 20;
/// The WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// A screenshot, tries included, and one try (a capture takes well under a second).
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(20);
const CAPTURE_ATTEMPT: Duration = Duration::from_secs(5);
/// How soon a navigation must start after input for [`Page::settle`] to wait for it.
const NAVIGATION_START: Duration = Duration::from_millis(300);
/// Width of [`Page::thumbnail`], in pixels.
pub const THUMBNAIL_WIDTH: f64 = 320.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CdpError {
    #[error("could not connect to DevTools: {0}")]
    Connect(String),
    /// Chrome refused the command.
    #[error("{method}: {message}")]
    Protocol {
        method: String,
        code: i64,
        message: String,
    },
    #[error("the DevTools connection closed")]
    Closed,
    #[error("DevTools did not answer {method} within {}", crate::steps::human_duration(*.after))]
    Timeout { method: String, after: Duration },
    /// A script evaluated in the page threw.
    #[error("the page's script failed: {0}")]
    Exception(String),
    /// `Page.navigate` failed (`net::ERR_CONNECTION_REFUSED`).
    #[error("could not load {url}: {error}")]
    Navigation { url: String, error: String },
    /// Chrome answered something this client did not expect.
    #[error("unexpected DevTools answer: {0}")]
    Unexpected(String),
}

impl CdpError {
    /// The connection is gone: retrying cannot help.
    pub fn is_closed(&self) -> bool {
        matches!(self, CdpError::Closed)
    }
}

/// An event from the browser (`Page.loadEventFired`, …), with the session it came from
/// (`None` for the browser's own).
#[derive(Debug, Clone)]
pub struct CdpEvent {
    pub method: String,
    pub params: Value,
    pub session_id: Option<String>,
}

type Reply = Result<Value, CdpError>;

/// Commands waiting for their replies; once `closed`, no more are taken.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, (String, oneshot::Sender<Reply>)>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    events: broadcast::Sender<CdpEvent>,
}

impl Shared {
    /// Fails every waiting command and refuses new ones.
    fn close(&self) {
        let waiting = {
            let mut pending = self.pending.lock().expect("pending lock");
            pending.closed = true;
            std::mem::take(&mut pending.waiting)
        };
        for (_, (_, reply)) in waiting {
            let _ = reply.send(Err(CdpError::Closed));
        }
    }

    fn dispatch(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            tracing::debug!("DevTools sent a message that is not JSON");
            return;
        };
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let waiting = self
                .pending
                .lock()
                .expect("pending lock")
                .waiting
                .remove(&id);
            let Some((method, reply)) = waiting else {
                return;
            };
            let outcome = match message.get("error") {
                Some(error) => Err(CdpError::Protocol {
                    method,
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_owned(),
                }),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = reply.send(outcome);
        } else if let Some(method) = message.get("method").and_then(Value::as_str) {
            // No subscriber is fine: nobody listens.
            let _ = self.events.send(CdpEvent {
                method: method.to_owned(),
                params: message.get("params").cloned().unwrap_or(Value::Null),
                session_id: message
                    .get("sessionId")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        }
    }
}

/// Removes a command from the waiting ones when its caller stops waiting.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .waiting
            .remove(&self.id);
    }
}

struct Inner {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<Message>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer ends (closing the WebSocket) when `outgoing` is dropped.
        self.reader.abort();
        self.shared.close();
    }
}

/// One DevTools connection to a browser. Cheap to clone; the connection closes when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Cdp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cdp").finish_non_exhaustive()
    }
}

impl Cdp {
    /// Does the WebSocket handshake on `stream` (a `UnixStream` to a desktop's
    /// `devtools.sock`, a `TcpStream`, …) for `ws_url`
    /// (`ws://localhost/devtools/browser/<id>`: over a Unix socket only the path matters).
    pub async fn connect<S>(stream: S, ws_url: &str) -> Result<Cdp, CdpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let handshake = tokio_tungstenite::client_async_with_config(ws_url, stream, Some(config));
        let (ws, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| CdpError::Connect(format!("no WebSocket handshake with {ws_url}")))?
            .map_err(|e| CdpError::Connect(format!("{ws_url}: {e}")))?;
        let (mut sink, mut stream) = ws.split();

        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            events,
        });
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();

        let writer_shared = shared.clone();
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if let Err(e) = sink.send(message).await {
                    tracing::debug!("DevTools write failed: {e}");
                    writer_shared.close();
                    return;
                }
            }
            let _ = sink.close().await;
        });

        let reader_shared = shared.clone();
        let reader = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                match message {
                    Ok(Message::Text(text)) => reader_shared.dispatch(&text),
                    Ok(Message::Binary(bytes)) => {
                        if let Ok(text) = std::str::from_utf8(&bytes) {
                            reader_shared.dispatch(text);
                        }
                    }
                    Ok(Message::Close(_)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("DevTools read failed: {e}");
                        break;
                    }
                }
            }
            reader_shared.close();
        });

        Ok(Cdp {
            inner: Arc::new(Inner {
                shared,
                outgoing,
                next_id: AtomicU64::new(1),
                reader,
            }),
        })
    }

    /// Connects over TCP to `ws://host:port/devtools/browser/<id>`.
    pub async fn connect_url(ws_url: &str) -> Result<Cdp, CdpError> {
        let rest = ws_url
            .strip_prefix("ws://")
            .ok_or_else(|| CdpError::Connect(format!("not a ws:// URL: {ws_url}")))?;
        let host = rest.split('/').next().unwrap_or_default();
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio::net::TcpStream::connect(host))
            .await
            .map_err(|_| CdpError::Connect(format!("no TCP connection to {host}")))?
            .map_err(|e| CdpError::Connect(format!("{host}: {e}")))?;
        Cdp::connect(stream, ws_url).await
    }

    /// Sends a command (to a page's session if `session_id` is given) and waits for its
    /// reply up to [`COMMAND_TIMEOUT`].
    pub async fn send(
        &self,
        method: &str,
        params: Value,
        session_id: Option<&str>,
    ) -> Result<Value, CdpError> {
        self.send_timeout(method, params, session_id, COMMAND_TIMEOUT)
            .await
    }

    /// [`Cdp::send`] with its own timeout.
    pub async fn send_timeout(
        &self,
        method: &str,
        params: Value,
        session_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, CdpError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session_id {
            request["sessionId"] = Value::String(session.to_owned());
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = inner.shared.pending.lock().expect("pending lock");
            if pending.closed {
                return Err(CdpError::Closed);
            }
            pending.waiting.insert(id, (method.to_owned(), tx));
        }
        // Whether answered, timed out or abandoned (a stopped run), the entry goes.
        let _forget = Forget {
            shared: &inner.shared,
            id,
        };
        let text = Message::text(request.to_string());
        if inner.outgoing.send(text).is_err() {
            return Err(CdpError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(CdpError::Closed),
            Err(_) => Err(CdpError::Timeout {
                method: method.to_owned(),
                after: timeout,
            }),
        }
    }

    /// Events from now on. A receiver that falls more than 1024 events behind misses
    /// some (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<CdpEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.inner
            .shared
            .pending
            .lock()
            .expect("pending lock")
            .closed
    }
}

/// A flattened DevTools session on one tab.
#[derive(Debug, Clone)]
pub struct Page {
    cdp: Cdp,
    target_id: String,
    session_id: String,
}

impl Page {
    /// Attaches to the browser's first tab (the desktop's Chromium opens one at the start
    /// URL), or opens a blank one if there is none, and enables `Page` and `Runtime`.
    pub async fn attach(cdp: &Cdp) -> Result<Page, CdpError> {
        let targets = cdp.send("Target.getTargets", json!({}), None).await?;
        let existing = targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_owned);
        let target_id = match existing {
            Some(id) => id,
            None => {
                let created = cdp
                    .send("Target.createTarget", json!({"url": "about:blank"}), None)
                    .await?;
                string_field(&created, "targetId")?
            }
        };
        Page::attach_to(cdp, &target_id).await
    }

    /// Attaches to the tab `target_id`.
    pub async fn attach_to(cdp: &Cdp, target_id: &str) -> Result<Page, CdpError> {
        let attached = cdp
            .send(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                None,
            )
            .await?;
        let page = Page {
            cdp: cdp.clone(),
            target_id: target_id.to_owned(),
            session_id: string_field(&attached, "sessionId")?,
        };
        page.send("Page.enable", json!({})).await?;
        page.send("Runtime.enable", json!({})).await?;
        Ok(page)
    }

    /// Ends this session; the tab stays open.
    pub async fn detach(self) -> Result<(), CdpError> {
        self.cdp
            .send(
                "Target.detachFromTarget",
                json!({"sessionId": self.session_id}),
                None,
            )
            .await
            .map(drop)
    }

    pub fn cdp(&self) -> &Cdp {
        &self.cdp
    }

    pub fn target_id(&self) -> &str {
        &self.target_id
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// A command in this page's session.
    pub async fn send(&self, method: &str, params: Value) -> Result<Value, CdpError> {
        self.cdp.send(method, params, Some(&self.session_id)).await
    }

    /// Evaluates `expression` in the page, awaiting a promise, and returns its value as
    /// JSON (`null` for `undefined`). A thrown exception is [`CdpError::Exception`].
    pub async fn evaluate(&self, expression: &str) -> Result<Value, CdpError> {
        let reply = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(details) = reply.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("exception");
            return Err(CdpError::Exception(
                text.lines().next().unwrap_or(text).to_owned(),
            ));
        }
        Ok(reply["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Opens `url` and waits until the page has loaded (`document.readyState` is
    /// `complete`), for at most `timeout`; a page still loading by then but already
    /// `interactive` counts as loaded.
    pub async fn navigate(&self, url: &str, timeout: Duration) -> Result<(), CdpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.cdp.subscribe();
        let reply = self
            .cdp
            .send_timeout(
                "Page.navigate",
                json!({"url": url}),
                Some(&self.session_id),
                timeout,
            )
            .await?;
        if let Some(error) = reply
            .get("errorText")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            return Err(CdpError::Navigation {
                url: url.to_owned(),
                error: error.to_owned(),
            });
        }
        if reply.get("loaderId").is_none() {
            return Ok(()); // the same document (a fragment): nothing loads
        }
        loop {
            match self.evaluate("document.readyState").await {
                Ok(state) if state == "complete" => return Ok(()),
                Err(CdpError::Closed) => return Err(CdpError::Closed),
                _ => {}
            }
            let wait = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                event = events.recv() => {
                    let loaded = event.is_ok_and(|e| {
                        e.method == "Page.loadEventFired"
                            && e.session_id.as_deref() == Some(self.session_id.as_str())
                    });
                    if loaded {
                        return Ok(());
                    }
                }
                _ = wait => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return match self.evaluate("document.readyState").await {
                    Ok(state) if state == "interactive" || state == "complete" => Ok(()),
                    _ => Err(CdpError::Navigation {
                        url: url.to_owned(),
                        error: format!(
                            "did not load within {}",
                            crate::steps::human_duration(timeout)
                        ),
                    }),
                };
            }
        }
    }

    /// After input that may navigate (a click, Enter): if the page starts loading a new
    /// document within a moment, waits until it has loaded or `until`. `events` must be
    /// subscribed before the input was sent. Never fails: what follows finds out.
    pub async fn settle(
        &self,
        mut events: broadcast::Receiver<CdpEvent>,
        until: tokio::time::Instant,
    ) {
        let started_by = tokio::time::Instant::now() + NAVIGATION_START;
        let mut loading = false;
        loop {
            let limit = if loading {
                until
            } else {
                started_by.min(until)
            };
            let Ok(Ok(event)) = tokio::time::timeout_at(limit, events.recv()).await else {
                return; // quiet, over time, or lagging behind
            };
            if event.session_id.as_deref() != Some(self.session_id.as_str()) {
                continue;
            }
            let main_frame = event.params["frameId"].as_str() == Some(self.target_id.as_str());
            match event.method.as_str() {
                "Page.frameStartedLoading" if main_frame => loading = true,
                "Page.frameStoppedLoading" if main_frame => return,
                "Page.loadEventFired" => return,
                _ => {}
            }
        }
    }

    /// `location.href`.
    pub async fn url(&self) -> Result<String, CdpError> {
        Ok(self
            .evaluate("location.href")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// `document.title`.
    pub async fn title(&self) -> Result<String, CdpError> {
        Ok(self
            .evaluate("document.title")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The visible part of the page, full size, as JPEG.
    pub async fn screenshot(&self) -> Result<Vec<u8>, CdpError> {
        self.capture(json!({"format": "jpeg", "quality": 80})).await
    }

    /// The visible part of the page as a JPEG about [`THUMBNAIL_WIDTH`] pixels wide.
    pub async fn thumbnail(&self) -> Result<Vec<u8>, CdpError> {
        let metrics = self.send("Page.getLayoutMetrics", json!({})).await?;
        let view = &metrics["cssVisualViewport"];
        let number = |key: &str| view[key].as_f64();
        let (Some(x), Some(y), Some(width), Some(height)) = (
            number("pageX"),
            number("pageY"),
            number("clientWidth"),
            number("clientHeight"),
        ) else {
            return Err(CdpError::Unexpected(
                "Page.getLayoutMetrics has no cssVisualViewport".into(),
            ));
        };
        if width < 1.0 || height < 1.0 {
            return self.screenshot().await;
        }
        let scale = (THUMBNAIL_WIDTH / width).min(1.0);
        self.capture(json!({
            "format": "jpeg",
            "quality": 70,
            "captureBeyondViewport": false,
            "clip": {"x": x, "y": y, "width": width, "height": height, "scale": scale},
        }))
        .await
    }

    async fn capture(&self, params: Value) -> Result<Vec<u8>, CdpError> {
        // While the page is between two documents Chrome refuses ("Not attached to an
        // active page") or, now and then, never answers: a moment later it works.
        let until = tokio::time::Instant::now() + CAPTURE_TIMEOUT;
        let reply = loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let attempt = self.cdp.send_timeout(
                "Page.captureScreenshot",
                params.clone(),
                Some(&self.session_id),
                left.min(CAPTURE_ATTEMPT),
            );
            match attempt.await {
                Err(CdpError::Protocol { .. } | CdpError::Timeout { .. })
                    if left > CAPTURE_ATTEMPT / 2 =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => break other?,
            }
        };
        let data = string_field(&reply, "data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| CdpError::Unexpected(format!("screenshot is not base64: {e}")))
    }

    /// The width and height of the viewport, in CSS pixels.
    pub async fn viewport(&self) -> Result<(f64, f64), CdpError> {
        let metrics = self.send("Page.getLayoutMetrics", json!({})).await?;
        let view = &metrics["cssLayoutViewport"];
        match (view["clientWidth"].as_f64(), view["clientHeight"].as_f64()) {
            (Some(w), Some(h)) => Ok((w, h)),
            _ => Err(CdpError::Unexpected(
                "Page.getLayoutMetrics has no cssLayoutViewport".into(),
            )),
        }
    }

    /// A left click at (`x`, `y`) of the viewport, in CSS pixels: the pointer moves there,
    /// presses and releases.
    pub async fn click(&self, x: f64, y: f64) -> Result<(), CdpError> {
        let mouse = |kind: &str, buttons: u8| json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1});
        self.send(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y, "button": "none", "buttons": 0}),
        )
        .await?;
        self.send("Input.dispatchMouseEvent", mouse("mousePressed", 1))
            .await?;
        self.send("Input.dispatchMouseEvent", mouse("mouseReleased", 0))
            .await?;
        Ok(())
    }

    /// Presses and releases `key` (`Enter`, `Tab`, `ArrowDown`, `a`, …) in the focused
    /// element.
    pub async fn press_key(&self, key: &str) -> Result<(), CdpError> {
        let key_info = KeyInfo::named(key).ok_or_else(|| CdpError::Unexpected(unknown_key(key)))?;
        let mut down = json!({
            "type": if key_info.text.is_some() { "keyDown" } else { "rawKeyDown" },
            "key": key_info.key,
            "code": key_info.code,
            "windowsVirtualKeyCode": key_info.key_code,
            "nativeVirtualKeyCode": key_info.key_code,
        });
        if let Some(text) = &key_info.text {
            down["text"] = json!(text);
            down["unmodifiedText"] = json!(text);
        }
        self.send("Input.dispatchKeyEvent", down).await?;
        self.send(
            "Input.dispatchKeyEvent",
            json!({
                "type": "keyUp",
                "key": key_info.key,
                "code": key_info.code,
                "windowsVirtualKeyCode": key_info.key_code,
                "nativeVirtualKeyCode": key_info.key_code,
            }),
        )
        .await?;
        Ok(())
    }

    /// Types `text` into the focused element, as an input method would.
    pub async fn insert_text(&self, text: &str) -> Result<(), CdpError> {
        self.send("Input.insertText", json!({"text": text}))
            .await
            .map(drop)
    }

    /// Turns the mouse wheel at (`x`, `y`) by `dy` pixels (positive scrolls down).
    pub async fn wheel(&self, x: f64, y: f64, dy: f64) -> Result<(), CdpError> {
        self.send(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseWheel", "x": x, "y": y, "deltaX": 0, "deltaY": dy}),
        )
        .await
        .map(drop)
    }
}

fn string_field(value: &Value, key: &str) -> Result<String, CdpError> {
    value[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| CdpError::Unexpected(format!("no {key} in {}", short(&value.to_string()))))
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Named keys: (key, code, Windows virtual key code, text typed).
const NAMED_KEYS: &[(&str, &str, u32, Option<&str>)] = &[
    ("Enter", "Enter", 13, Some("\r")),
    ("Tab", "Tab", 9, None),
    ("Escape", "Escape", 27, None),
    ("Backspace", "Backspace", 8, None),
    ("Delete", "Delete", 46, None),
    ("ArrowUp", "ArrowUp", 38, None),
    ("ArrowDown", "ArrowDown", 40, None),
    ("ArrowLeft", "ArrowLeft", 37, None),
    ("ArrowRight", "ArrowRight", 39, None),
    ("Home", "Home", 36, None),
    ("End", "End", 35, None),
    ("PageUp", "PageUp", 33, None),
    ("PageDown", "PageDown", 34, None),
    ("Space", "Space", 32, Some(" ")),
];

struct KeyInfo {
    key: String,
    code: String,
    key_code: u32,
    text: Option<String>,
}

impl KeyInfo {
    fn named(name: &str) -> Option<KeyInfo> {
        if let Some(&(key, code, key_code, text)) = NAMED_KEYS.iter().find(|k| k.0 == name) {
            let key = if key == "Space" { " " } else { key };
            return Some(KeyInfo {
                key: key.into(),
                code: code.into(),
                key_code,
                text: text.map(str::to_owned),
            });
        }
        let mut chars = name.chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return None;
        };
        let upper = c.to_ascii_uppercase();
        let (code, key_code) = match c {
            'a'..='z' | 'A'..='Z' => (format!("Key{upper}"), upper as u32),
            '0'..='9' => (format!("Digit{c}"), c as u32),
            ' ' => ("Space".into(), 32),
            _ => (String::new(), 0),
        };
        Some(KeyInfo {
            key: c.to_string(),
            code,
            key_code,
            text: Some(c.to_string()),
        })
    }
}

/// Whether [`Page::press_key`] knows `key`: a single character or one of the named keys.
pub fn is_known_key(key: &str) -> bool {
    KeyInfo::named(key).is_some()
}

/// Why `key` cannot be pressed, naming the keys that can.
pub fn unknown_key(key: &str) -> String {
    let named: Vec<&str> = NAMED_KEYS.iter().map(|k| k.0).collect();
    format!("unknown key {key:?}: expected a single character or one of {}", named.join(", "))
}
