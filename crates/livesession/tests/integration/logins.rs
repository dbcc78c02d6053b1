//! Login capture (`POST /api/logins`) against a test login page in a real desktop: the
//! done condition (a URL prefix, a cookie) ends the session with "login captured", the
//! control channel says so, and a local receiver standing in for the operator's events
//! endpoint gets `login.captured`, signed as docs/profiles.md ("Events") documents, and
//! checked here the way a receiver would check it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{LOGIN_COOKIE, PageServer, TestServer, Ws, close_of, logs, ws_connect};

const EVENTS_SECRET: &str = "evsec-3b9d1e7a5c2f4086a1d3e5f7092b4c6d";

// ---------------------------------------------------------------- the events receiver

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    path_and_query: String,
    signature: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
    /// What the receiver answered.
    answered: u16,
}

/// A local HTTP server playing the operator's events endpoint: it answers 500 to the
/// first `fail_first` deliveries, then 200, and keeps every request.
struct EventReceiver {
    port: u16,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl EventReceiver {
    async fn start(fail_first: usize) -> Self {
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let kept = deliveries.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let kept = kept.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let mut kept = kept.lock().unwrap();
                let answered = if kept.len() < fail_first { 500 } else { 200 };
                kept.push(Delivery {
                    path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                    signature: header("livesession-signature"),
                    authorization: header("authorization"),
                    content_type: header("content-type"),
                    body: String::from_utf8(body.to_vec()).unwrap(),
                    answered,
                });
                axum::http::StatusCode::from_u16(answered).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, deliveries }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Waits until `n` deliveries arrived.
    async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.deliveries();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks `Livesession-Signature` as docs/profiles.md tells a receiver to: take `t` and
/// every `v1` from the header, compute HMAC-SHA256 over `"<t>.<body>"` with the secret,
/// compare (in constant time) with each `v1`, and refuse a `t` more than 5 minutes away.
/// Returns `t`.
fn verify_signature(header: &str, body: &str, secret: &str) -> Result<i64, String> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.parse::<i64>().map_err(|e| format!("t: {e}"))?),
            Some(("v1", value)) => signatures.push(hex::decode(value).map_err(|e| format!("v1: {e}"))?),
            _ => {}
        }
    }
    let t = t.ok_or("no t=")?;
    if signatures.is_empty() {
        return Err("no v1=".into());
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - t).abs() > 300 {
        return Err(format!("timestamp {t} is more than 5 minutes from now ({now})"));
    }
    let matches = signatures.iter().any(|sig| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        mac.verify_slice(sig).is_ok()
    });
    if matches { Ok(t) } else { Err("no v1 matches".into()) }
}

#[test]
fn the_receivers_check_refuses_what_it_must() {
    let body = r#"{"id":"evt_1"}"#;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sign = |secret: &str, t: i64, body: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    };
    assert_eq!(verify_signature(&sign("k", now, body), body, "k"), Ok(now));
    assert!(verify_signature(&sign("other", now, body), body, "k").is_err(), "wrong secret");
    assert!(verify_signature(&sign("k", now, body), r#"{"id":"evt_2"}"#, "k").is_err(), "changed body");
    assert!(verify_signature(&sign("k", now - 600, body), body, "k").is_err(), "stale");
    assert!(verify_signature(&format!("t={now}"), body, "k").is_err(), "no v1");
}

// ---------------------------------------------------------------- driving a login

/// `POST /api/logins`; returns the status and body.
async fn post_login(server: &TestServer, body: Value) -> (u16, Value) {
    let response = server.admin_post("/api/logins", body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn next_json(ws: &mut Ws, limit: Duration) -> Value {
    loop {
        let message = tokio::time::timeout(limit, ws.next())
            .await
            .expect("a control message in time")
            .expect("the control channel is open")
            .expect("a control message");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("the control channel closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// Reads control messages until one of `kind`, within `limit` in all (other messages
/// keep coming meanwhile); returns it and the ones before.
async fn until(ws: &mut Ws, kind: &str, limit: Duration) -> (Value, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left, next_json(ws, limit))
            .await
            .unwrap_or_else(|_| panic!("no {kind} within {limit:?}; before it: {seen:?}"));
        if message["type"] == kind {
            return (message, seen);
        }
        seen.push(message);
    }
}

/// Opens the session's control channel, as the viewer would (that starts the desktop),
/// and waits until the desktop is ready.
async fn watch_as_viewer(server: &TestServer, session_id: &str) -> Ws {
    let token = server.mint_token(session_id).await;
    let mut control = ws_connect(server, &format!("/api/sessions/{session_id}/control?token={token}"), &[]).await;
    loop {
        let (status, _) = until(&mut control, "DESKTOP_STATUS", Duration::from_secs(90)).await;
        match status["status"].as_str() {
            Some("ready") => return control,
            Some("starting") => {}
            _ => panic!("the desktop did not start: {status}"),
        }
    }
}

/// Signs in on the remote login page as `user`, as an agent over the session's DevTools
/// endpoint: fills the form and submits it (the page then redirects to /home).
async fn sign_in(server: &TestServer, session_id: &str, user: &str) {
    let token = server.mint_token(session_id).await;
    let url = format!("ws://{}/api/sessions/{session_id}/cdp?token={token}", server.addr);
    let cdp = livesession_tasks::cdp::Cdp::connect_url(&url).await.expect("DevTools through the gateway");
    let page = livesession_tasks::cdp::Page::attach(&cdp).await.expect("the login tab");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = page.evaluate("!!document.getElementById('user') && document.readyState === 'complete'").await;
        if ready == Ok(json!(true)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the login form did not load: {ready:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let submitted = page
        .evaluate(&format!("document.getElementById('user').value = {user:?}; document.querySelector('form').requestSubmit(); true"))
        .await;
    assert_eq!(submitted, Ok(json!(true)));
    // Held until the capture closes it (the session's end), so the relay does not
    // matter to what the watcher sees.
    tokio::spawn(async move {
        let _keep = (cdp, page);
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

async fn wait_until<F: Fn() -> bool>(what: &str, limit: Duration, done: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks one delivered `login.captured` event; returns its body.
fn check_captured_event(delivery: &Delivery, session_id: &str, login_id: &str, profile: &str) -> Value {
    let signature = delivery.signature.as_deref().expect("a Livesession-Signature header");
    verify_signature(signature, &delivery.body, EVENTS_SECRET).unwrap_or_else(|e| panic!("signature: {e}: {signature}"));
    assert_eq!(delivery.content_type.as_deref(), Some("application/json"));
    let event: Value = serde_json::from_str(&delivery.body).unwrap();
    assert!(event["id"].as_str().unwrap().starts_with("evt_"), "{event}");
    assert_eq!(event["type"], "login.captured", "{event}");
    let created = event["created"].as_i64().expect("created: unix seconds");
    assert!((time::OffsetDateTime::now_utc().unix_timestamp() - created).abs() < 300, "{event}");
    let data = &event["data"];
    assert_eq!(data["session_id"], session_id, "{event}");
    assert_eq!(data["login_id"], login_id, "{event}");
    assert_eq!(data["profile"], profile, "{event}");
    let captured_at = data["captured_at"].as_str().expect("captured_at");
    time::OffsetDateTime::parse(captured_at, &time::format_description::well_known::Rfc3339).expect("captured_at is RFC 3339");
    event
}

/// Held by a capture test: if it fails, prints what the login watchers and the desktops
/// logged (all servers of this binary), so a failure in CI says what the watcher saw.
struct CaptureLogsOnFailure;

impl Drop for CaptureLogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let logs = logs();
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| ["login_capture", "livesession::desktops", "saved_state"].iter().any(|t| l.contains(t)))
            .collect();
        eprintln!("--- login capture and desktop logs (last {} of {}):", lines.len().min(300), lines.len());
        for line in &lines[lines.len().saturating_sub(300)..] {
            eprintln!("{line}");
        }
    }
}

// ---------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_captured_when_a_tab_reaches_the_url_prefix_and_its_signed_event_is_retried_until_taken() {
    let _logs = CaptureLogsOnFailure;
    let page = PageServer::start().await;
    // The endpoint answers 500 once: the event must come again, the same and signed anew.
    let receiver = EventReceiver::start(1).await;
    // Credentials in the URL (user:password, a key in the query) must never be logged.
    let events_url = format!("http://hookuser:hookpass-9f2c71@127.0.0.1:{}/hooks/in?key=querykey-51e0d3", receiver.port);
    let args = page.server_args();
    let server =
        TestServer::start(&[&args[0], &args[1], "--events-url", &events_url, "--events-secret", EVENTS_SECRET]).await;

    let (status, created) = post_login(
        &server,
        json!({"start_url": page.login_url(), "profile": "acme-login", "done": {"url_prefix": page.home_url()}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let login_id = created["id"].as_str().unwrap().to_owned();
    let session_id = created["session_id"].as_str().unwrap().to_owned();
    assert!(login_id.starts_with("lg_"), "{created}");
    assert_eq!(created["profile"], "acme-login");
    assert_eq!(created["done"], json!({"url_prefix": page.home_url()}));
    // The link for the person: the viewer, with the session's refresh token in the fragment.
    let viewer_url = created["viewer_url"].as_str().unwrap();
    let (viewer, fragment) = viewer_url.split_once('#').expect("a #token= fragment");
    assert_eq!(viewer, server.url(&format!("/s/{session_id}")));
    let refresh = fragment.strip_prefix("token=").expect("#token=");
    let exchanged = server
        .http
        .post(server.url(&format!("/api/sessions/{session_id}/token")))
        .bearer_auth(refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(exchanged.status(), 200, "the link's token opens the session");

    // The session: an API session persisting to the profile, for the login TTL (900 s).
    let session = server.get_session(&session_id).await;
    assert_eq!((session["state"].as_str(), session["source"].as_str()), (Some("active"), Some("api")), "{session}");
    assert_eq!((session["profile"].as_str(), session["profile_persist"].as_bool()), (Some("acme-login"), Some(true)), "{session}");
    assert_eq!(session["start_url"], page.login_url());
    let rfc = |v: &Value| time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(rfc(&session["expires_at"]) - rfc(&session["created_at"]), time::Duration::seconds(900));
    assert_eq!(created["expires_at"], session["expires_at"]);

    // The watcher does not start the desktop: the viewer does.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.get_session(&session_id).await["desktop"], "stopped");
    let mut control = watch_as_viewer(&server, &session_id).await;
    wait_until("the login page to load", Duration::from_secs(60), || page.login_log().login_pages >= 1).await;
    // The login page is not the prefix: a few polls later the session still runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.get_session(&session_id).await["state"], "active", "not captured before the login");
    assert!(receiver.deliveries().is_empty());

    // A token for a connection after the end (the token endpoint refuses ended sessions).
    let late_token = server.mint_token(&session_id).await;
    sign_in(&server, &session_id, "alice").await;
    let (ended, _) = until(&mut control, "SESSION_ENDED", Duration::from_secs(90)).await;
    assert_eq!(ended["reason"], "login_captured", "{ended}");
    assert_eq!(close_of(&mut control, Duration::from_secs(10)).await, (4008, "login captured".to_owned()));
    let log = page.login_log();
    assert_eq!(log.submitted, ["alice"]);
    assert!(log.homes.contains(&true), "the browser reached /home signed in: {log:?}");

    let session = server.get_session(&session_id).await;
    assert_eq!((session["state"].as_str(), session["end_reason"].as_str()), (Some("revoked"), Some("login captured")), "{session}");
    assert_eq!(session["desktop"], "stopped");
    // Reconnecting viewers learn the same.
    let mut late = ws_connect(&server, &format!("/api/sessions/{session_id}/control?token={late_token}"), &[]).await;
    assert_eq!(close_of(&mut late, Duration::from_secs(10)).await, (4008, "login captured".to_owned()));
    // The profile is free for its next writer.
    let (status, again) = post_login(
        &server,
        json!({"start_url": page.login_url(), "profile": "acme-login", "done": {"url_prefix": page.home_url()}}),
    )
    .await;
    assert_eq!(status, 201, "{again}");

    // The event: refused once (500), then delivered; the same event both times, each
    // signed, to the configured path and query, with the URL's credentials as Basic auth.
    let deliveries = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(deliveries.len(), 2, "one failed attempt and one retry: {deliveries:#?}");
    assert_eq!((deliveries[0].answered, deliveries[1].answered), (500, 200));
    assert_eq!(deliveries[0].body, deliveries[1].body, "a retry sends the same event");
    for delivery in &deliveries {
        assert_eq!(delivery.path_and_query, "/hooks/in?key=querykey-51e0d3");
        let event = check_captured_event(delivery, &session_id, &login_id, "acme-login");
        assert_eq!(event["data"]["url"], page.home_url(), "the tab that reached the prefix");
    }
    use base64::Engine;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("hookuser:hookpass-9f2c71"));
    assert_eq!(deliveries[1].authorization.as_deref(), Some(basic.as_str()));
    // Nothing more comes once it was taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.deliveries().len(), 2);

    // Capturing again into the profile: its session restores the saved tab at /home (and
    // the cookie), so the condition holds at once; that does not count. The watcher opens
    // the login page for the person, and only the new sign-in completes the login.
    let again_id = again["session_id"].as_str().unwrap().to_owned();
    let pages_before = page.login_log().login_pages;
    let mut control = watch_as_viewer(&server, &again_id).await;
    wait_until("the login page to open again", Duration::from_secs(60), || page.login_log().login_pages > pages_before).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.get_session(&again_id).await["state"], "active", "a restored tab at the prefix is not a login");
    assert_eq!(receiver.deliveries().len(), 2);
    sign_in(&server, &again_id, "dave").await;
    let (ended, _) = until(&mut control, "SESSION_ENDED", Duration::from_secs(90)).await;
    assert_eq!(ended["reason"], "login_captured", "{ended}");
    assert_eq!(page.login_log().submitted, ["alice", "dave"]);
    let deliveries = receiver.wait_for(3, Duration::from_secs(30)).await;
    let event = check_captured_event(&deliveries[2], &again_id, again["id"].as_str().unwrap(), "acme-login");
    assert_eq!(event["data"]["url"], page.home_url());

    let logs = logs();
    for secret in [EVENTS_SECRET, "hookpass-9f2c71", "querykey-51e0d3", "/hooks/in", refresh] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs");
    }
    assert!(logs.contains("event delivery failed; will retry"), "the failed attempt is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_captured_by_its_cookie_and_watched_again_after_a_restart() {
    let _logs = CaptureLogsOnFailure;
    let page = PageServer::start().await;
    let receiver = EventReceiver::start(0).await;
    let events_url = format!("http://127.0.0.1:{}/events", receiver.port);
    let args = page.server_args();
    let flags = [args[0].as_str(), args[1].as_str(), "--events-url", &events_url, "--events-secret", EVENTS_SECRET];
    let server = TestServer::start(&flags).await;
    let (status, created) = post_login(
        &server,
        json!({"start_url": page.login_url(), "profile": "cookie-login", "done": {"cookie": LOGIN_COOKIE}, "ttl_seconds": 600}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["done"], json!({"cookie": LOGIN_COOKIE}));
    let login_id = created["id"].as_str().unwrap().to_owned();
    let session_id = created["session_id"].as_str().unwrap().to_owned();

    // The server restarts before anyone opened the link: the login is still watched.
    let server = TestServer::start_in(server.stop().await, &flags).await;
    let session = server.get_session(&session_id).await;
    assert_eq!(session["state"], "active");
    let rfc = |v: &Value| time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(rfc(&session["expires_at"]) - rfc(&session["created_at"]), time::Duration::seconds(600), "ttl_seconds");

    let mut control = watch_as_viewer(&server, &session_id).await;
    wait_until("the login page to load", Duration::from_secs(60), || page.login_log().login_pages >= 1).await;
    // The login page set a cookie of another name: not the one the login waits for.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.get_session(&session_id).await["state"], "active", "another cookie does not count");

    sign_in(&server, &session_id, "bob").await;
    let (ended, _) = until(&mut control, "SESSION_ENDED", Duration::from_secs(90)).await;
    assert_eq!(ended["reason"], "login_captured", "{ended}");
    assert_eq!(close_of(&mut control, Duration::from_secs(10)).await, (4008, "login captured".to_owned()));
    assert_eq!(server.get_session(&session_id).await["end_reason"], "login captured");

    let deliveries = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    assert_eq!(deliveries[0].answered, 200);
    let event = check_captured_event(&deliveries[0], &session_id, &login_id, "cookie-login");
    let url = event["data"]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("http://127.0.0.1:{}/", page.port)), "the tab's URL: {event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_state_cannot_be_saved_ends_as_not_saved_and_sends_login_failed() {
    let _logs = CaptureLogsOnFailure;
    let page = PageServer::start().await;
    let receiver = EventReceiver::start(0).await;
    let events_url = format!("http://127.0.0.1:{}/events", receiver.port);
    let args = page.server_args();
    // A cap of 0 MiB: no browser state fits, so the save fails (the vault's size cap).
    let server = TestServer::start(&[
        &args[0], &args[1], "--profile-max-mib", "0", "--events-url", &events_url, "--events-secret", EVENTS_SECRET,
    ])
    .await;
    let (status, created) = post_login(
        &server,
        json!({"start_url": page.login_url(), "profile": "too-big", "done": {"url_prefix": page.home_url()}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let session_id = created["session_id"].as_str().unwrap().to_owned();
    let mut control = watch_as_viewer(&server, &session_id).await;
    sign_in(&server, &session_id, "carol").await;
    let (ended, _) = until(&mut control, "SESSION_ENDED", Duration::from_secs(90)).await;
    assert_eq!(ended["reason"], "login_not_saved", "{ended}");
    // The watcher looked before anyone could use the desktop (so the sign-in, made as
    // soon as the desktop was ready, came after its baseline).
    assert!(
        logs().lines().any(|l| l.contains(&session_id) && l.contains("first look at the new desktop, before it is published")),
        "no first look before the desktop was published"
    );
    assert_eq!(close_of(&mut control, Duration::from_secs(10)).await, (4008, "login not saved".to_owned()));
    assert_eq!(server.get_session(&session_id).await["end_reason"], "login not saved");

    let deliveries = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    let signature = deliveries[0].signature.as_deref().unwrap();
    verify_signature(signature, &deliveries[0].body, EVENTS_SECRET).unwrap();
    let event: Value = serde_json::from_str(&deliveries[0].body).unwrap();
    assert_eq!(event["type"], "login.failed", "{event}");
    assert_eq!(event["data"]["session_id"], session_id.as_str());
    assert_eq!(event["data"]["login_id"], created["id"]);
    assert_eq!(event["data"]["profile"], "too-big");
    assert_eq!(event["data"]["url"], page.home_url());
    assert_eq!(event["data"]["error"], "the browser's state could not be saved");
    assert!(event["data"]["failed_at"].is_string() && event["data"].get("captured_at").is_none(), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_requests_are_checked_field_by_field_and_a_profile_has_one_writer() {
    let receiver = EventReceiver::start(0).await;
    let events_url = format!("http://127.0.0.1:{}/events", receiver.port);
    // Many requests in a row: more than the create limit's default burst.
    let server =
        TestServer::start(&["--events-url", &events_url, "--events-secret", EVENTS_SECRET, "--create-burst", "1000"]).await;
    let ok_url = "https://accounts.example/login";
    let done = json!({"url_prefix": "https://accounts.example/home"});

    let anonymous = server.http.post(server.url("/api/logins")).json(&json!({})).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let long_name = "p".repeat(65);
    let cases = [
        (json!({"profile": "p", "done": done}), "invalid_start_url", "start_url"),
        (json!({"start_url": "file:///etc/passwd", "profile": "p", "done": done}), "invalid_start_url", "start_url"),
        (json!({"start_url": "javascript:alert(1)", "profile": "p", "done": done}), "invalid_start_url", "start_url"),
        (json!({"start_url": ok_url, "done": done}), "invalid_profile", "profile"),
        (json!({"start_url": ok_url, "profile": "", "done": done}), "invalid_profile", "profile"),
        (json!({"start_url": ok_url, "profile": ".hidden", "done": done}), "invalid_profile", "profile"),
        (json!({"start_url": ok_url, "profile": "-x", "done": done}), "invalid_profile", "profile"),
        (json!({"start_url": ok_url, "profile": "a/b", "done": done}), "invalid_profile", "profile"),
        (json!({"start_url": ok_url, "profile": long_name, "done": done}), "invalid_profile", "profile"),
        (json!({"start_url": ok_url, "profile": "p"}), "invalid_done", "done"),
        (json!({"start_url": ok_url, "profile": "p", "done": {}}), "invalid_done", "done"),
        (json!({"start_url": ok_url, "profile": "p", "done": "https://accounts.example/home"}), "invalid_done", "done"),
        (json!({"start_url": ok_url, "profile": "p", "done": {"url_prefix": "https://a.example/", "cookie": "sid"}}), "invalid_done", "done"),
        (json!({"start_url": ok_url, "profile": "p", "done": {"url_prefix": "ftp://a.example/"}}), "invalid_done", "done.url_prefix"),
        (json!({"start_url": ok_url, "profile": "p", "done": {"url_prefix": "/home"}}), "invalid_done", "done.url_prefix"),
        (json!({"start_url": ok_url, "profile": "p", "done": {"url_prefix": 5}}), "invalid_done", "done.url_prefix"),
        (json!({"start_url": ok_url, "profile": "p", "done": {"cookie": ""}}), "invalid_done", "done.cookie"),
        (json!({"start_url": ok_url, "profile": "p", "done": {"cookie": "a b"}}), "invalid_done", "done.cookie"),
        (json!({"start_url": ok_url, "profile": "p", "done": {"cookie": "sid=1"}}), "invalid_done", "done.cookie"),
        (json!({"start_url": ok_url, "profile": "p", "done": {"title": "Home"}}), "invalid_done", "done.title"),
        (json!({"start_url": ok_url, "profile": "p", "done": done, "ttl_seconds": 0}), "invalid_ttl", "ttl_seconds"),
        (json!({"start_url": ok_url, "profile": "p", "done": done, "ttl_seconds": 999_999_999}), "invalid_ttl", "ttl_seconds"),
        (json!({"start_url": ok_url, "profile": "p", "done": done, "ttl_seconds": "60"}), "invalid_ttl", "ttl_seconds"),
        (json!({"start_url": 7, "profile": "p", "done": done}), "invalid_start_url", "start_url"),
        (json!({"start_url": ok_url, "profile": ["p"], "done": done}), "invalid_profile", "profile"),
        (json!({"start_url": ok_url, "profile": "p", "done": done, "persist": false}), "invalid_json", "persist"),
    ];
    for (body, code, field) in cases {
        let (status, answer) = post_login(&server, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "the message names {field}: {body} → {message}");
    }
    let not_json = server
        .http
        .post(server.url("/api/logins"))
        .bearer_auth(crate::support::ADMIN)
        .body("start_url=x")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(server.admin_get("/api/sessions").await["sessions"], json!([]), "no refused request made a session");

    // One writer per profile: a second login, or a persistent session, on it → 409.
    let (status, first) = post_login(&server, json!({"start_url": ok_url, "profile": "shop", "done": done})).await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = post_login(&server, json!({"start_url": ok_url, "profile": "shop", "done": {"cookie": "sid"}})).await;
    assert_eq!(status, 409, "{second}");
    assert_eq!(second["error"]["code"], "profile_in_use");
    let persist = server.admin_post("/api/sessions", json!({"profile": {"name": "shop", "persist": true}})).await;
    assert_eq!(persist.status(), 409);
    // A reader is fine.
    let reader = server.admin_post("/api/sessions", json!({"profile": {"name": "shop", "persist": false}})).await;
    assert_eq!(reader.status(), 201);

    // Ended otherwise (here: revoked), a login stops being watched, sends nothing, and
    // frees its profile.
    let session_id = first["session_id"].as_str().unwrap();
    server.revoke(session_id).await;
    let stopped = format!("\"session_id\":\"{session_id}\"");
    wait_until("the watcher to stop", Duration::from_secs(10), || {
        logs().lines().any(|l| l.contains(&stopped) && l.contains("the session ended before the login was done"))
    })
    .await;
    let (status, again) = post_login(&server, json!({"start_url": ok_url, "profile": "shop", "done": done})).await;
    assert_eq!(status, 201, "{again}");
    assert!(receiver.deliveries().is_empty(), "no event for a login that was not captured");
}

#[tokio::test]
async fn an_events_url_without_its_secret_stops_the_start() {
    let error = crate::defences::startup_error(&["--events-url", "https://u:pw-7c1e@hooks.example/in"]).await;
    assert!(error.contains("LIVESESSION_EVENTS_SECRET"), "{error}");
    assert!(!error.contains("pw-7c1e"), "the URL's credentials are not repeated: {error}");
    let error = crate::defences::startup_error(&["--events-url", "ftp://hooks.example/in", "--events-secret", "s"]).await;
    assert!(error.contains("http:// or https://"), "{error}");
}
