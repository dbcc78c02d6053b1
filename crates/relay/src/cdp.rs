//! The CDP relay's view of what an agent sends: which commands change the page (and so
//! wait while a person holds control), the gateway's own `Livesession.*` domain, and the
//! replies and events the gateway writes into an agent's stream.
//!
//! Only the client's side is parsed, and only its envelope (`id`, `method`, `sessionId`);
//! what Chromium sends passes through as it came.

use std::collections::VecDeque;

use serde_json::{Value, json};

/// What passes while a person holds control: an allowlist, because a denylist of
/// page-changing commands is never complete (a command can travel inside another one,
/// `Target.sendMessageToTarget`; the debugger runs script; `Fetch` stalls the person's
/// requests). Everything else waits until control is handed back. The exact rule is part
/// of the contract (`docs/agents.md`).
///
/// Passes: the methods in [`PASSING_METHODS`], and in any domain but the
/// [`HELD_DOMAINS`], `enable`, `disable` and methods whose name starts with `get`,
/// `query`, `describe`, `resolve` or `request` (reading the DOM, the accessibility tree,
/// resources, properties).
pub const HELD_DOMAINS: &[&str] = &[
    "Input", "Fetch", "Debugger", "Emulation", "Storage", "Overlay", "Browser", "SystemInfo",
    "Tethering", "BackgroundService", "Cast", "WebAuthn", "DeviceAccess", "Extensions", "PWA",
];
pub const PASSING_METHODS: &[&str] = &[
    "Browser.getVersion",
    "Target.getTargets",
    "Target.getTargetInfo",
    "Target.attachToTarget",
    "Target.attachToBrowserTarget",
    "Target.detachFromTarget",
    "Target.setAutoAttach",
    "Target.setDiscoverTargets",
    "Page.captureScreenshot",
    "Page.captureSnapshot",
    "Page.createIsolatedWorld",
    "Page.setLifecycleEventsEnabled",
    "DOMSnapshot.captureSnapshot",
    "Runtime.releaseObject",
    "Runtime.releaseObjectGroup",
    "Runtime.runIfWaitingForDebugger",
];

/// Whether `method` waits while a person holds control.
pub fn is_held_back(method: &str) -> bool {
    if PASSING_METHODS.contains(&method) {
        return false;
    }
    let Some((domain, name)) = method.split_once('.') else {
        return true;
    };
    if HELD_DOMAINS.contains(&domain) {
        return true;
    }
    let reads = name == "enable"
        || name == "disable"
        || ["get", "query", "describe", "resolve", "request"].iter().any(|p| name.starts_with(p));
    !reads
}

/// The gateway's own domain.
pub const DOMAIN: &str = "Livesession.";

/// The envelope of one client command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: Value,
    pub method: String,
    /// A flattened target session (Playwright and Puppeteer use these).
    pub session_id: Option<String>,
    pub params: Value,
}

/// Why a client message is not a CDP command. Short and never quoting the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotCdp(pub &'static str);

/// Reads the envelope of a client message.
pub fn parse_command(text: &str) -> Result<Command, NotCdp> {
    let value: Value = serde_json::from_str(text).map_err(|_| NotCdp("a CDP message must be a JSON object"))?;
    let Value::Object(mut object) = value else {
        return Err(NotCdp("a CDP message must be a JSON object"));
    };
    let id = object.remove("id").ok_or(NotCdp("a CDP command needs an integer id"))?;
    if !id.is_i64() && !id.is_u64() {
        return Err(NotCdp("a CDP command needs an integer id"));
    }
    let method = match object.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return Err(NotCdp("a CDP command needs a method name")),
    };
    let session_id = match object.remove("sessionId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(NotCdp("sessionId must be a string")),
    };
    let params = object.remove("params").unwrap_or(Value::Null);
    Ok(Command { id, method, session_id, params })
}

fn with_session(mut message: Value, session_id: &Option<String>) -> String {
    if let Some(s) = session_id {
        message["sessionId"] = Value::String(s.clone());
    }
    message.to_string()
}

/// A successful reply to `command`, written by the gateway.
pub fn reply(command: &Command, result: Value) -> String {
    with_session(json!({ "id": command.id, "result": result }), &command.session_id)
}

/// An error reply to `command`, in CDP's own shape (JSON-RPC codes).
pub fn error_reply(command: &Command, code: i64, message: &str) -> String {
    with_session(
        json!({ "id": command.id, "error": { "code": code, "message": message } }),
        &command.session_id,
    )
}

/// An event of the gateway's domain, on the browser-level session.
pub fn event(method: &str, params: Value) -> String {
    json!({ "method": method, "params": params }).to_string()
}

/// Commands held back for one connection, in the order they came; bounded.
#[derive(Debug)]
pub struct HeldBack {
    queue: VecDeque<String>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

/// The queue is full: the client sent more than the gateway holds for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {max_count} commands or {max_bytes} bytes held back while a person has control")]
pub struct HeldBackFull {
    pub max_count: usize,
    pub max_bytes: usize,
}

impl HeldBack {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self { queue: VecDeque::new(), bytes: 0, max_count, max_bytes }
    }

    pub fn push(&mut self, message: String) -> Result<(), HeldBackFull> {
        if self.queue.len() >= self.max_count || self.bytes + message.len() > self.max_bytes {
            return Err(HeldBackFull { max_count: self.max_count, max_bytes: self.max_bytes });
        }
        self.bytes += message.len();
        self.queue.push_back(message);
        Ok(())
    }

    /// Everything held, oldest first; the queue is empty afterwards.
    pub fn drain(&mut self) -> impl Iterator<Item = String> + '_ {
        self.bytes = 0;
        self.queue.drain(..)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_changing_commands_are_held_and_reading_ones_pass() {
        for m in [
            "Input.insertText", "Input.dispatchMouseEvent", "Page.navigate", "Page.reload", "Runtime.evaluate",
            "Runtime.callFunctionOn", "Target.createTarget", "Target.closeTarget", "Browser.close",
            // Commands inside commands, script through the debugger, stalled requests.
            "Target.sendMessageToTarget", "Debugger.enable", "Debugger.evaluateOnCallFrame", "Fetch.enable",
            "Page.addScriptToEvaluateOnNewDocument", "Page.bringToFront", "DOM.setOuterHTML", "Network.setCookie",
            "Emulation.setScriptExecutionDisabled", "Storage.clearDataForOrigin", "NoDomain", "Page.navigateX",
        ] {
            assert!(is_held_back(m), "{m}");
        }
        for m in [
            "Page.captureScreenshot", "DOM.getDocument", "DOM.querySelectorAll", "DOM.describeNode", "Runtime.enable",
            "Runtime.getProperties", "Target.setAutoAttach", "Target.attachToTarget", "Browser.getVersion",
            "Accessibility.getFullAXTree", "Network.getResponseBody", "Page.getFrameTree",
        ] {
            assert!(!is_held_back(m), "{m}");
        }
    }

    #[test]
    fn envelopes_are_read_and_garbage_is_named() {
        let c = parse_command(r#"{"id":7,"method":"Page.navigate","params":{"url":"x"},"sessionId":"S"}"#).unwrap();
        assert_eq!((c.id.as_i64(), c.method.as_str(), c.session_id.as_deref()), (Some(7), "Page.navigate", Some("S")));
        assert_eq!(c.params["url"], "x");
        for (bad, why) in [
            ("not json", "a CDP message must be a JSON object"),
            ("[1,2]", "a CDP message must be a JSON object"),
            (r#"{"method":"A.b"}"#, "a CDP command needs an integer id"),
            (r#"{"id":"1","method":"A.b"}"#, "a CDP command needs an integer id"),
            (r#"{"id":1}"#, "a CDP command needs a method name"),
            (r#"{"id":1,"method":"A.b","sessionId":3}"#, "sessionId must be a string"),
        ] {
            assert_eq!(parse_command(bad).unwrap_err().0, why, "{bad}");
        }
    }

    #[test]
    fn replies_keep_the_id_and_session() {
        let c = parse_command(r#"{"id":3,"method":"Livesession.nope","sessionId":"S"}"#).unwrap();
        let e: Value = serde_json::from_str(&error_reply(&c, -32601, "no such method")).unwrap();
        assert_eq!(e, json!({"id": 3, "sessionId": "S", "error": {"code": -32601, "message": "no such method"}}));
        let c = parse_command(r#"{"id":4,"method":"Livesession.requestHuman"}"#).unwrap();
        let r: Value = serde_json::from_str(&reply(&c, json!({}))).unwrap();
        assert_eq!(r, json!({"id": 4, "result": {}}));
    }

    #[test]
    fn the_held_queue_keeps_order_and_its_bounds() {
        let mut held = HeldBack::new(3, 100);
        for m in ["a", "b", "c"] {
            held.push(m.into()).unwrap();
        }
        assert!(held.push("d".into()).is_err());
        assert_eq!(held.drain().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(held.is_empty());
        assert!(held.push("x".repeat(101)).is_err());
        held.push("x".repeat(100)).unwrap();
    }
}
