//! The DevTools endpoint for agents, against the session's real Chromium: discovery, the
//! relay, refusals with their codes, and the hand-over between an agent and a person.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{PageServer, TestServer, Ws, close_of, rfb_over_ws, wait_for_colour, ws_connect};
use crate::vnc::forge_as;

/// A raw CDP client: numbered commands, replies by id, events kept in order.
pub(crate) struct Cdp {
    ws: Ws,
    next_id: i64,
    events: Vec<Value>,
    replies: std::collections::HashMap<i64, Value>,
}

impl Cdp {
    pub(crate) async fn connect(server: &TestServer, path: &str) -> Self {
        Self { ws: ws_connect(server, path, &[]).await, next_id: 0, events: Vec::new(), replies: Default::default() }
    }

    pub(crate) async fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> i64 {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(message.to_string())).await.unwrap();
        self.next_id
    }

    /// Reads until the reply to `id` (or `limit`); events and other replies met on the way
    /// are kept (replies from different targets can come in any order).
    async fn reply(&mut self, id: i64, limit: Duration) -> Option<Value> {
        if let Some(reply) = self.replies.remove(&id) {
            return Some(reply);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??.ok()?;
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                return Some(value);
            }
            if value.get("method").is_some() {
                self.events.push(value);
            } else if let Some(other) = value["id"].as_i64() {
                self.replies.insert(other, value);
            }
        }
    }

    pub(crate) async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        let id = self.send(method, params, session).await;
        let reply = self.reply(id, Duration::from_secs(30)).await.unwrap_or_else(|| panic!("no reply to {method}"));
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// The next `method` event (kept ones first).
    async fn event(&mut self, method: &str, limit: Duration) -> Option<Value> {
        if let Some(at) = self.events.iter().position(|e| e["method"] == method) {
            return Some(self.events.remove(at));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??.ok()?;
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["method"] == method {
                return Some(value);
            }
        }
    }

    /// Waits for `Livesession.controlChanged` naming `holder` (earlier ones are skipped).
    async fn holder_becomes(&mut self, holder: &str) {
        loop {
            let event = self.event("Livesession.controlChanged", Duration::from_secs(10)).await;
            let event = event.unwrap_or_else(|| panic!("no controlChanged to {holder}"));
            if event["params"]["holder"] == holder {
                return;
            }
        }
    }

    /// Reads until the gateway closes the connection; its close code and reason.
    pub(crate) async fn closed(&mut self, limit: Duration) -> (u16, String) {
        crate::support::close_of(&mut self.ws, limit).await
    }

    /// Attaches to the page target; returns its flat session id.
    pub(crate) async fn attach_page(&mut self) -> String {
        let targets = self.call("Target.getTargets", json!({}), None).await;
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target")["targetId"]
            .clone();
        let attached = self.call("Target.attachToTarget", json!({ "targetId": page, "flatten": true }), None).await;
        attached["sessionId"].as_str().unwrap().to_owned()
    }
}

async fn page_session(page: &PageServer) -> (TestServer, String, String) {
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1]]).await;
    let created = server.create_session(json!({ "start_url": page.url })).await;
    assert!(created["cdp_url"].as_str().unwrap().ends_with(&format!("/api/sessions/{}/cdp", created["id"].as_str().unwrap())));
    (server, created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_drives_the_page_over_the_gateway_while_a_viewer_watches() {
    let page = PageServer::start().await;
    let (server, id, token) = page_session(&page).await;

    // Discovery, as Playwright asks for it (trailing slash), starts the desktop.
    let version: Value = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/cdp/json/version/?token={token}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws_url = version["webSocketDebuggerUrl"].as_str().unwrap();
    assert_eq!(ws_url, format!("ws://{}/api/sessions/{id}/cdp?token={token}", server.addr));
    assert!(version["Browser"].as_str().unwrap().contains("Chrome"), "{version}");
    let list: Value = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/cdp/json")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page_target = list.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page");
    let page_ws = page_target["webSocketDebuggerUrl"].as_str().unwrap();
    assert!(page_ws.starts_with(&format!("ws://{}/api/sessions/{id}/cdp/page/", server.addr)), "{page_ws}");
    assert!(!list.to_string().contains("127.0.0.1:") || !list.to_string().contains("/devtools/page/"), "no desktop-internal URL: {list}");

    // A viewer watches through the VNC proxy.
    let vnc = ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[("Sec-WebSocket-Protocol", "binary")]).await;
    let mut rfb = rfb_over_ws(vnc).await;
    assert!(wait_for_colour(&mut rfb, (255, 0, 255), 0.5, Duration::from_secs(90)).await >= 0.5);

    // Two agents at once: the browser target (from discovery) and the page target.
    let mut browser = Cdp::connect(&server, ws_url.split_once(&server.addr.to_string()).unwrap().1).await;
    let first = browser.event("Livesession.controlChanged", Duration::from_secs(90)).await.expect("control state on connect");
    assert_eq!(first["params"]["holder"], "agent", "{first}");
    let version = browser.call("Browser.getVersion", json!({}), None).await;
    assert!(version["product"].as_str().unwrap().contains("Chrome"));
    let session = browser.attach_page().await;
    browser.call("Runtime.evaluate", json!({ "expression": "document.getElementById('t').focus()" }), Some(&session)).await;
    browser.call("Input.insertText", json!({ "text": "typed by an agent" }), Some(&session)).await;
    assert_eq!(page.wait_typed("typed by an agent", Duration::from_secs(20)).await.as_deref(), Some("typed by an agent"));

    let mut on_page = Cdp::connect(&server, &format!("/api/sessions/{id}/cdp/page/{}?token={token}", page_target["id"].as_str().unwrap())).await;
    let value = on_page.call("Runtime.evaluate", json!({ "expression": "document.getElementById('t').value" }), None).await;
    assert_eq!(value["result"]["value"], "typed by an agent");
    let title = browser.call("Runtime.evaluate", json!({ "expression": "document.title" }), Some(&session)).await;
    assert_eq!(title["result"]["value"], "livesession test page");
    // The viewer still sees the page.
    assert!(wait_for_colour(&mut rfb, (255, 0, 255), 0.5, Duration::from_secs(10)).await >= 0.5);

    // Revocation closes every agent with 4008, at once.
    let revoked_at = tokio::time::Instant::now();
    server.revoke(&id).await;
    let (code_a, reason_a) = close_of(&mut browser.ws, Duration::from_secs(5)).await;
    let (code_b, _) = close_of(&mut on_page.ws, Duration::from_secs(5)).await;
    assert_eq!((code_a, code_b), (4008, 4008), "{reason_a}");
    assert!(revoked_at.elapsed() < Duration::from_secs(1), "closed within a second: {:?}", revoked_at.elapsed());
    assert!(!crate::support::logs().contains(&token), "the token reached the log");
    drop(rfb);
    server.stop().await;
}

#[tokio::test]
async fn view_tokens_and_other_sessions_tokens_are_refused_before_any_desktop_starts() {
    let server = TestServer::start(&[]).await;
    let a = server.create_session(json!({})).await;
    let b = server.create_session(json!({})).await;
    let (a_id, a_token) = (a["id"].as_str().unwrap(), a["token"].as_str().unwrap());
    let b_id = b["id"].as_str().unwrap();
    let view = forge_as(&server, a_id, "view", 600);

    let mut ws = ws_connect(&server, &format!("/api/sessions/{a_id}/cdp?token={view}"), &[]).await;
    let (code, reason) = close_of(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(code, 4013, "{reason}");
    assert!(reason.contains("view-only"), "{reason}");
    let mut ws = ws_connect(&server, &format!("/api/sessions/{b_id}/cdp?token={a_token}"), &[]).await;
    assert_eq!(close_of(&mut ws, Duration::from_secs(5)).await.0, 4002);
    let mut ws = ws_connect(&server, &format!("/api/sessions/{b_id}/cdp"), &[]).await;
    assert_eq!(close_of(&mut ws, Duration::from_secs(5)).await.0, 4001);
    // The same refusals over HTTP discovery.
    let status = |url: String| {
        let http = server.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(server.url(&format!("/api/sessions/{a_id}/cdp/json/version?token={view}"))).await, 403);
    assert_eq!(status(server.url(&format!("/api/sessions/{b_id}/cdp/json/list?token={a_token}"))).await, 401);
    assert_eq!(status(server.url(&format!("/api/sessions/{a_id}/cdp/json/nothing?token={a_token}"))).await, 404);
    // Nothing started a desktop.
    for id in [a_id, b_id] {
        assert_ne!(server.get_session(id).await["desktop"], "ready");
        assert!(!server.desktop_dir(id).exists(), "a refused request started {id}'s desktop");
    }
    server.stop().await;
}

/// Reads control-channel messages until a CONTROL one matching `pred`.
async fn control_until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Value {
    let read = async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "CONTROL" && pred(&value) {
                    return value;
                }
            }
        }
        panic!("the control channel closed");
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("a CONTROL message in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_person_holds_control_the_agents_input_waits_and_then_arrives_once_in_order() {
    let page = PageServer::start().await;
    let (server, id, token) = page_session(&page).await;
    let mut control = ws_connect(&server, &format!("/api/sessions/{id}/control?token={token}"), &[]).await;
    control_until(&mut control, |c| c["holder"] == "none").await;

    let mut agent = Cdp::connect(&server, &format!("/api/sessions/{id}/cdp?token={token}")).await;
    assert_eq!(agent.event("Livesession.controlChanged", Duration::from_secs(90)).await.unwrap()["params"]["holder"], "agent");
    control_until(&mut control, |c| c["holder"] == "agent" && c["agents"] == 1).await;
    let session = agent.attach_page().await;
    agent.call("Runtime.evaluate", json!({ "expression": "document.getElementById('t').focus()" }), Some(&session)).await;
    // A session on the browser target (Playwright's newBrowserCDPSession) hears of changes too.
    let attached = agent.call("Target.attachToBrowserTarget", json!({}), None).await;
    let browser_session = attached["sessionId"].as_str().unwrap().to_owned();

    // The agent asks for a person; viewers see why.
    let asked = agent.call("Livesession.requestHuman", json!({ "reason": "Please solve the captcha" }), None).await;
    assert_eq!(asked, json!({}));
    let shown = control_until(&mut control, |c| c["reason"] == "Please solve the captcha").await;
    assert_eq!(shown["holder"], "agent");

    // The person takes control: the agent hears of it, its typing waits.
    control.send(Message::text(r#"{"type":"TAKE_CONTROL"}"#)).await.unwrap();
    control_until(&mut control, |c| c["holder"] == "person" && c.get("reason").is_none()).await;
    agent.holder_becomes("person").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = agent.events.iter().any(|e| {
            e["method"] == "Livesession.controlChanged" && e["sessionId"] == browser_session.as_str() && e["params"]["holder"] == "person"
        });
        if seen {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no controlChanged on the browser session: {:?}", agent.events);
        let ping = agent.send("Browser.getVersion", json!({}), None).await;
        agent.reply(ping, Duration::from_secs(5)).await;
    }
    let first = agent.send("Input.insertText", json!({ "text": "one " }), Some(&session)).await;
    let second = agent.send("Input.insertText", json!({ "text": "two" }), Some(&session)).await;
    // Reading passes while writing waits, also a command wrapped in another one.
    let read = agent.call("Runtime.getHeapUsage", json!({}), Some(&session)).await;
    assert!(read["usedSize"].is_number());
    let targets = agent.call("Target.getTargets", json!({}), None).await;
    let page_id = targets["targetInfos"].as_array().unwrap().iter().find(|t| t["type"] == "page").unwrap()["targetId"].clone();
    let unflat = agent.call("Target.attachToTarget", json!({ "targetId": page_id, "flatten": false }), None).await;
    let inner = json!({ "id": 1, "method": "Runtime.evaluate", "params": { "expression": "window.wrapped = 1" } }).to_string();
    let wrapped = agent
        .send("Target.sendMessageToTarget", json!({ "sessionId": unflat["sessionId"], "message": inner }), None)
        .await;
    assert!(agent.reply(first, Duration::from_secs(2)).await.is_none(), "held back while the person has control");
    assert!(agent.reply(wrapped, Duration::from_secs(1)).await.is_none(), "a wrapped command is held back too");
    assert!(page.reports().iter().all(|r| !r.contains("one")), "{:?}", page.reports());

    // Handed back: both arrive, once, in order.
    control.send(Message::text(r#"{"type":"RELEASE_CONTROL"}"#)).await.unwrap();
    agent.holder_becomes("agent").await;
    assert!(agent.reply(first, Duration::from_secs(10)).await.is_some());
    assert!(agent.reply(second, Duration::from_secs(10)).await.is_some());
    assert!(agent.reply(wrapped, Duration::from_secs(10)).await.is_some());
    assert_eq!(page.wait_typed("one two", Duration::from_secs(10)).await.as_deref(), Some("one two"));
    let value = agent.call("Runtime.evaluate", json!({ "expression": "document.getElementById('t').value" }), Some(&session)).await;
    assert_eq!(value["result"]["value"], "one two");

    // Over HTTP too; the agent leaving gives control back to nobody.
    let taken = server.admin_post(&format!("/api/sessions/{id}/control"), json!({ "holder": "person" })).await;
    assert_eq!(taken.status(), 200);
    agent.holder_becomes("person").await;
    let bad = server.admin_post(&format!("/api/sessions/{id}/control"), json!({ "holder": "robot" })).await;
    assert_eq!(bad.status(), 400);
    control.send(Message::text(r#"{"type":"RELEASE_CONTROL"}"#)).await.unwrap();
    control_until(&mut control, |c| c["holder"] == "agent").await;
    drop(agent);
    control_until(&mut control, |c| c["holder"] == "none" && c["agents"] == 0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cdp_input_is_answered_or_closed_with_a_reason() {
    let server = TestServer::start(&["--cdp-max-message-bytes", "4096"]).await;
    let created = server.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap();
    // The operator mints an agent token: CDP yes, taking control from a person no.
    let minted: Value = server.admin_post(&format!("/api/sessions/{id}/token"), json!({ "role": "agent" })).await
        .json()
        .await
        .unwrap();
    assert_eq!(minted["role"], "agent", "{minted}");
    let token = minted["token"].as_str().unwrap();
    let bad_role = server.admin_post(&format!("/api/sessions/{id}/token"), json!({ "role": "root" })).await;
    assert_eq!(bad_role.status(), 400);
    let mut control = ws_connect(&server, &format!("/api/sessions/{id}/control?token={token}"), &[]).await;
    control.send(Message::text(r#"{"type":"TAKE_CONTROL"}"#)).await.unwrap();
    let refused = async {
        while let Some(Ok(Message::Text(text))) = control.next().await {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "ERROR" {
                return value;
            }
        }
        panic!("control channel closed");
    };
    let refused = tokio::time::timeout(Duration::from_secs(30), refused).await.unwrap();
    assert!(refused["message"].as_str().unwrap().contains("interactive"), "{refused}");
    let path = format!("/api/sessions/{id}/cdp?token={token}");

    let mut agent = Cdp::connect(&server, &path).await;
    let id_unknown = agent.send("Livesession.fly", json!({}), None).await;
    let reply = agent.reply(id_unknown, Duration::from_secs(30)).await.unwrap();
    assert_eq!(reply["error"]["code"], -32601, "{reply}");
    let id_empty = agent.send("Livesession.requestHuman", json!({}), None).await;
    assert_eq!(agent.reply(id_empty, Duration::from_secs(5)).await.unwrap()["error"]["code"], -32602);
    // Still connected and working.
    agent.call("Browser.getVersion", json!({}), None).await;
    agent.ws.send(Message::text("this is not json")).await.unwrap();
    let (code, reason) = close_of(&mut agent.ws, Duration::from_secs(5)).await;
    assert_eq!(code, 4014, "{reason}");
    assert!(reason.contains("JSON"), "{reason}");

    let mut agent = Cdp::connect(&server, &path).await;
    agent.send("Runtime.evaluate", json!({ "expression": "x".repeat(5000) }), None).await;
    let (code, reason) = close_of(&mut agent.ws, Duration::from_secs(10)).await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("4096"), "{reason}");

    // A page target whose tab closes ends normally; the browser goes on.
    let mut browser = Cdp::connect(&server, &path).await;
    let created = browser.call("Target.createTarget", json!({ "url": "about:blank" }), None).await;
    let target = created["targetId"].as_str().unwrap().to_owned();
    let mut tab = Cdp::connect(&server, &format!("/api/sessions/{id}/cdp/page/{target}?token={token}")).await;
    tab.call("Runtime.evaluate", json!({ "expression": "1+1" }), None).await;
    browser.call("Target.closeTarget", json!({ "targetId": target }), None).await;
    let (code, reason) = close_of(&mut tab.ws, Duration::from_secs(10)).await;
    assert_eq!((code, reason.as_str()), (1000, "the DevTools target closed"));
    browser.call("Browser.getVersion", json!({}), None).await;
    let mut gone = ws_connect(&server, &format!("/api/sessions/{id}/cdp/page/{target}?token={token}"), &[]).await;
    assert_eq!(close_of(&mut gone, Duration::from_secs(10)).await.0, 4005, "no such target");
    drop(browser);

    let mut agent = Cdp::connect(&server, &path).await;
    agent.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(close_of(&mut agent.ws, Duration::from_secs(10)).await.0, 4014);
    server.stop().await;
}
