//! The VNC proxy with a real desktop: frames, input, refusals with their codes.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    PageServer, TestServer, close_of, logs, rfb_over_ws, wait_for_colour, ws_connect,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_show_the_page_and_keys_reach_it_through_the_proxy() {
    let page = PageServer::start().await;
    // Sandboxed desktops reach the host's loopback only on the ports they are given.
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1]]).await;
    let created = server
        .create_session(json!({ "start_url": page.url }))
        .await;
    let id = created["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();

    // The token in the query string, as noVNC sends it.
    let ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc?token={token}"),
        &[("Sec-WebSocket-Protocol", "binary")],
    )
    .await;
    let mut rfb = rfb_over_ws(ws).await;
    assert_eq!((rfb.width, rfb.height), (1280, 720));
    let share = wait_for_colour(&mut rfb, (255, 0, 255), 0.5, Duration::from_secs(30)).await;
    assert!(
        share >= 0.5,
        "the test page is drawn: {share:.2} of the screen is magenta"
    );

    // Click into the page's input, then type.
    rfb.click(300, 140).await.unwrap();
    rfb.type_text("hello livesession").await.unwrap();
    let typed = page
        .wait_typed("hello livesession", Duration::from_secs(20))
        .await;
    assert_eq!(typed.as_deref(), Some("hello livesession"));

    let session = server.get_session(id).await;
    assert_eq!(session["desktop"], "ready");
    assert_eq!(server.readyz().await["connections"], 1);

    // Tokens never reach the log, though one travelled in a request line.
    let log = logs();
    assert!(
        log.contains(&format!("\"path\":\"/api/sessions/{id}/vnc\"")),
        "the request was logged"
    );
    assert!(!log.contains(token), "the access token appears in the log");
    assert!(
        log.contains(&format!("\"session_id\":\"{id}\"")),
        "log lines carry the session id"
    );
    drop(rfb);
    server.stop().await;
}

/// Signs a token with the server's own key, for claims the API would never issue.
fn forge(server: &TestServer, sid: &str, exp_offset: i64) -> String {
    forge_as(server, sid, "interactive", exp_offset)
}

/// [`forge`] with a role (`interactive` or `view`).
pub(crate) fn forge_as(server: &TestServer, sid: &str, role: &str, exp_offset: i64) -> String {
    use base64::Engine;
    let key = std::fs::read_to_string(server.data.path().join("secrets/signing.key")).unwrap();
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key.trim())
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({ "sid": sid, "role": role, "typ": "access", "iat": now, "exp": now + exp_offset, "aud": "livesession" });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&key),
    )
    .unwrap()
}

#[tokio::test]
async fn refused_connections_get_a_code_and_a_reason_and_never_start_a_desktop() {
    let server = TestServer::start(&[]).await;
    let a = server.create_session(json!({})).await;
    let b = server.create_session(json!({})).await;
    let (a_id, a_token) = (a["id"].as_str().unwrap(), a["token"].as_str().unwrap());
    let b_id = b["id"].as_str().unwrap();
    let unknown = "0123456789abcdef0123456789abcdef";
    let expired_token = forge(&server, a_id, -10);
    let unknown_token = forge(&server, unknown, 600);
    let bearer_a = format!("Bearer {a_token}");
    let cookie_a_for_b = format!("ls_{b_id}={a_token}");

    // Path, headers, expected code, a word of the expected reason.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            format!("/api/sessions/{b_id}/vnc"),
            vec![],
            4001,
            "token is required",
        ),
        (
            format!("/api/sessions/{b_id}/vnc?token=garbage"),
            vec![],
            4002,
            "invalid",
        ),
        (
            format!("/api/sessions/{b_id}/vnc?token={a_token}"),
            vec![],
            4002,
            "another session",
        ),
        (
            format!("/api/sessions/{b_id}/vnc"),
            vec![("Authorization", bearer_a.as_str())],
            4002,
            "another session",
        ),
        (
            format!("/api/sessions/{b_id}/vnc"),
            vec![("Cookie", cookie_a_for_b.as_str())],
            4002,
            "another session",
        ),
        (
            format!("/api/sessions/{b_id}/control?token={a_token}"),
            vec![],
            4002,
            "another session",
        ),
        (
            format!("/api/sessions/{a_id}/vnc?token={expired_token}"),
            vec![],
            4003,
            "expired",
        ),
        (
            format!("/api/sessions/{unknown}/vnc?token={unknown_token}"),
            vec![],
            4005,
            "not found",
        ),
        (
            format!("/api/sessions/{a_id}/vnc?token={a_token}"),
            vec![("Origin", "http://evil.example")],
            4004,
            "origin",
        ),
        // A DNS-rebinding page: its Origin matches the Host it sent, but names no host of ours.
        (
            format!("/api/sessions/{a_id}/vnc?token={a_token}"),
            vec![
                ("Origin", "http://rebind.example"),
                ("Host", "rebind.example"),
            ],
            4004,
            "origin",
        ),
    ];
    for (path, headers, code, reason) in cases {
        let mut ws = ws_connect(&server, &path, &headers).await;
        let (got_code, got_reason) = close_of(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(got_code, code, "{path} {headers:?}: {got_reason}");
        assert!(
            got_reason.contains(reason),
            "{path}: reason {got_reason:?} should mention {reason:?}"
        );
    }

    // Ended sessions say how they ended.
    server.revoke(b_id).await;
    let b_token = b["token"].as_str().unwrap();
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{b_id}/vnc?token={b_token}"),
        &[],
    )
    .await;
    assert_eq!(
        close_of(&mut ws, Duration::from_secs(5)).await,
        (4008, "session revoked".into())
    );
    let short = server.create_session(json!({ "ttl_seconds": 1 })).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let path = format!(
        "/api/sessions/{}/vnc?token={}",
        short["id"].as_str().unwrap(),
        short["token"].as_str().unwrap()
    );
    let mut ws = ws_connect(&server, &path, &[]).await;
    let (code, _) = close_of(&mut ws, Duration::from_secs(5)).await;
    // The token expires with the session: either answer tells the client to stop.
    assert!(code == 4007 || code == 4003, "code {code}");

    // None of this started a desktop.
    assert_eq!(server.readyz().await["desktops"], 0);
    assert_eq!(server.get_session(a_id).await["desktop"], "stopped");
    let desktops = server.desktops_root();
    assert_eq!(
        std::fs::read_dir(&desktops).unwrap().count(),
        0,
        "no desktop directory was created"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_closes_live_connections_with_the_reason() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({})).await;
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let cookie = format!("ls_{id}={token}");
    let origin = server.base.clone();
    // The viewer's way: cookie and same-origin Origin.
    let ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc"),
        &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
    )
    .await;
    let rfb = rfb_over_ws(ws).await;
    drop(rfb);
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    // Wait for the first RFB bytes, so the relay is running.
    use futures_util::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.is_binary());
    let started = std::time::Instant::now();
    server.revoke(id).await;
    let (code, reason) = close_of(&mut ws, Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (4008, "session revoked"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.get_session(id).await["desktop"], "stopped");
    server.stop().await;
}

/// Waits for the `vnc connection closed` log line of a session's connection with this role
/// (`View` or `Interactive`) and returns it.
async fn closed_line(id: &str, role: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| {
                l["message"] == "vnc connection closed"
                    && l["role"] == role
                    && l["span"]["session_id"] == id
            });
        if let Some(line) = found {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no 'vnc connection closed' line for a {role} connection to {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_token_cannot_type_or_click_but_an_interactive_token_can() {
    let page = PageServer::start().await;
    // Sandboxed desktops reach the host's loopback only on the ports they are given.
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1]]).await;
    let created = server
        .create_session(json!({ "start_url": page.url }))
        .await;
    let id = created["id"].as_str().unwrap();
    let interactive = created["token"].as_str().unwrap();
    // The admin API mints interactive tokens only; a view token signed with the server's
    // key is what a viewer link will hand out.
    let view = forge_as(&server, id, "view", 600);

    let ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc"),
        &[("Authorization", &format!("Bearer {view}"))],
    )
    .await;
    let mut viewer = rfb_over_ws(ws).await;
    // The screen still updates for a viewer.
    let share = wait_for_colour(&mut viewer, (255, 0, 255), 0.5, Duration::from_secs(30)).await;
    assert!(share >= 0.5, "the viewer sees the page: {share:.2}");
    viewer.click(300, 140).await.unwrap();
    viewer.type_text("viewer").await.unwrap();
    // Frames still flow after the dropped input: the connection is alive and in sync.
    let share = wait_for_colour(&mut viewer, (255, 0, 255), 0.5, Duration::from_secs(10)).await;
    assert!(share >= 0.5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        page.wait_typed("", Duration::from_millis(1)).await,
        None,
        "the page reported typing from a view-only connection"
    );
    drop(viewer);
    let line = closed_line(id, "View").await;
    assert_eq!(line["dropped_keys"], 12, "{line}");
    assert_eq!(line["dropped_pointer"], 2, "{line}");
    assert_eq!(line["dropped_input"], 14, "{line}");

    // The same typing with an interactive token arrives, and only it: nothing of the
    // viewer's typing was waiting in the page.
    let ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc?token={interactive}"),
        &[],
    )
    .await;
    let mut driver = rfb_over_ws(ws).await;
    driver.click(300, 140).await.unwrap();
    driver.type_text("driver").await.unwrap();
    let typed = page.wait_typed("driver", Duration::from_secs(20)).await;
    assert_eq!(typed.as_deref(), Some("driver"));
    drop(driver);
    let line = closed_line(id, "Interactive").await;
    assert_eq!(line["dropped_input"], 0, "{line}");
    server.stop().await;
}

/// A client that speaks RFB by hand over the WebSocket, to send what RfbClient never would.
struct RawRfb {
    ws: crate::support::Ws,
    pending: Vec<u8>,
}

impl RawRfb {
    async fn connect(server: &TestServer, id: &str, token: &str) -> Self {
        let ws = ws_connect(
            server,
            &format!("/api/sessions/{id}/vnc?token={token}"),
            &[],
        )
        .await;
        Self {
            ws,
            pending: Vec::new(),
        }
    }

    async fn read(&mut self, n: usize) -> Vec<u8> {
        use futures_util::StreamExt;
        while self.pending.len() < n {
            let message = tokio::time::timeout(Duration::from_secs(90), self.ws.next())
                .await
                .expect("RFB bytes in time")
                .expect("the connection is open")
                .expect("a WebSocket message");
            if let tokio_tungstenite::tungstenite::Message::Binary(b) = message {
                self.pending.extend_from_slice(&b);
            }
        }
        self.pending.drain(..n).collect()
    }

    async fn send(&mut self, bytes: &[u8]) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                bytes.to_vec().into(),
            ))
            .await
            .unwrap();
    }

    /// Version 3.8 up to the security-type choice (not sent).
    async fn until_security_choice(&mut self) {
        assert_eq!(self.read(12).await, b"RFB 003.008\n");
        self.send(b"RFB 003.008\n").await;
        let count = self.read(1).await[0] as usize;
        let types = self.read(count).await;
        assert!(types.contains(&1), "Xvnc offers None: {types:?}");
    }

    /// The whole handshake, with this ClientInit shared flag.
    async fn handshake(&mut self, shared: u8) {
        self.until_security_choice().await;
        self.send(&[1]).await;
        assert_eq!(self.read(4).await, [0, 0, 0, 0], "security result OK");
        self.send(&[shared]).await;
        let init = self.read(24).await;
        let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        self.read(name_len).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rfb_closes_with_4012_and_the_desktop_serves_the_next_connection() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();

    // An unknown message type after a good handshake.
    let mut raw = RawRfb::connect(&server, id, token).await;
    raw.handshake(1).await;
    raw.send(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await; // a valid update request first
    raw.send(&[7, 0xde, 0xad, 0xbe, 0xef]).await;
    let (code, reason) = close_of(&mut raw.ws, Duration::from_secs(10)).await;
    assert_eq!(
        (code, reason.as_str()),
        (4012, "malformed RFB: unknown message type 7")
    );

    // A security type Xvnc does not offer (VNC authentication), from a view token.
    let view = forge_as(&server, id, "view", 600);
    let mut raw = RawRfb::connect(&server, id, &view).await;
    raw.until_security_choice().await;
    raw.send(&[2]).await;
    let (code, reason) = close_of(&mut raw.ws, Duration::from_secs(10)).await;
    assert_eq!(code, 4012, "{reason}");
    assert!(reason.contains("security type 2"), "{reason}");

    let log = logs();
    let malformed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("vnc client sent malformed RFB") && l.contains(id))
        .collect();
    assert_eq!(malformed.len(), 2, "both are logged with the session id");
    assert!(malformed.iter().all(|l| l.contains("\"conn_id\"")));
    assert!(!log.contains("deadbeef") && !log.contains("222,173,190,239"));

    // The desktop was not harmed: a fresh connection gets frames.
    let ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc?token={token}"),
        &[],
    )
    .await;
    let mut rfb = rfb_over_ws(ws).await;
    rfb.request_update(false).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), rfb.read_update())
        .await
        .expect("a frame in time")
        .unwrap();
    assert_eq!(server.get_session(id).await["desktop"], "ready");
    drop(rfb);
    server.stop().await;
}

impl RawRfb {
    /// Everything the connection receives within `window`.
    async fn collect_for(&mut self, window: Duration) -> Vec<u8> {
        use futures_util::StreamExt;
        let mut got = std::mem::take(&mut self.pending);
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let tokio_tungstenite::tungstenite::Message::Binary(b) = message {
                got.extend_from_slice(&b);
            }
        }
        got
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktops_clipboard_reaches_interactive_viewers_and_never_view_only_ones() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    let view = forge_as(&server, id, "view", 600);
    const TEXT: &[u8] = b"livesession-clipboard-31415";

    let mut interactive = RawRfb::connect(&server, id, token).await;
    interactive.handshake(1).await;
    let mut viewer = RawRfb::connect(&server, id, &view).await;
    viewer.handshake(1).await;
    for c in [&mut interactive, &mut viewer] {
        c.send(&[2, 0, 0, 1, 0, 0, 0, 0]).await; // SetEncodings: Raw
    }

    // The remote page copies text (as a person's Ctrl+C would), driven by an agent.
    let list: serde_json::Value = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/cdp/json")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let target = list.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page");
    let mut page = crate::cdp::Cdp::connect(&server, &format!("/api/sessions/{id}/cdp/page/{}?token={token}", target["id"].as_str().unwrap())).await;
    let copied = page
        .call(
            "Runtime.evaluate",
            json!({
                "expression": format!("(() => {{ const t = document.createElement('textarea'); t.value = '{}'; document.body.appendChild(t); t.focus(); t.select(); return document.activeElement === t; }})()", std::str::from_utf8(TEXT).unwrap()),
                "userGesture": true,
            }),
            None,
        )
        .await;
    assert_eq!(copied["result"]["value"], true, "the text is selected: {copied}");
    for kind in ["keyDown", "keyUp"] {
        page.call(
            "Input.dispatchKeyEvent",
            json!({ "type": kind, "key": "c", "code": "KeyC", "modifiers": 2, "windowsVirtualKeyCode": 67, "commands": ["copy"] }),
            None,
        )
        .await;
    }

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !contains(&seen, TEXT) && tokio::time::Instant::now() < deadline {
        seen.extend(interactive.collect_for(Duration::from_millis(500)).await);
    }
    assert!(contains(&seen, TEXT), "an interactive viewer receives the desktop's clipboard");

    let withheld = viewer.collect_for(Duration::from_secs(3)).await;
    assert!(!contains(&withheld, TEXT), "a view-only viewer never receives the clipboard");

    // The view-only connection is still framed and served: a whole-screen update arrives.
    viewer.send(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await;
    let update = viewer.collect_for(Duration::from_secs(5)).await;
    let mut framing = livesession_relay::rfb_wire::Framing::new();
    let mut events = Vec::new();
    framing.feed(&update, &mut events).expect("the view-only stream frames");
    assert!(
        events.iter().any(|e| matches!(e, livesession_relay::rfb_wire::Event::Update { pixels, .. } if *pixels > 0)),
        "the view-only viewer still gets the screen: {events:?}"
    );
    server.stop().await;
}
