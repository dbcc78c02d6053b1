//! Tokens that expire and refresh, connection limits, heartbeat and shutdown closes, and
//! a short soak of the control channel.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::{ADMIN, TestServer, close_of, ws_connect};

fn no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` part of each Set-Cookie header.
fn cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn pair(cookie: &str) -> &str {
    cookie.split(';').next().unwrap()
}

#[tokio::test]
async fn access_tokens_expire_and_only_a_refresh_credential_renews_them() {
    let server = TestServer::start(&["--access-token-ttl", "1"]).await;
    let started = no_redirect()
        .post(server.url("/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    let id = started.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches("/s/")
        .to_owned();
    let set = cookies(&started);
    let access = set
        .iter()
        .find(|c| c.starts_with(&format!("ls_{id}=")))
        .expect("access cookie");
    let refresh = set
        .iter()
        .find(|c| c.starts_with(&format!("lsr_{id}=")))
        .expect("refresh cookie");
    assert!(
        access.contains(&format!("Path=/api/sessions/{id};")) && access.contains("HttpOnly"),
        "{access}"
    );
    assert!(
        refresh.contains(&format!("Path=/api/sessions/{id}/token;"))
            && refresh.contains("HttpOnly"),
        "{refresh}"
    );

    // The access token inside the cookie lives one second (whole seconds: at most two).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control"),
        &[("Cookie", pair(access))],
    )
    .await;
    assert_eq!(close_of(&mut ws, Duration::from_secs(5)).await.0, 4003);

    // The refresh cookie gets a new one (and renews both cookies).
    let token_url = server.url(&format!("/api/sessions/{id}/token"));
    let refreshed = server
        .http
        .post(&token_url)
        .header("cookie", pair(refresh))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let renewed = cookies(&refreshed);
    let body: Value = refreshed.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    let new_access = renewed
        .iter()
        .find(|c| c.starts_with(&format!("ls_{id}=")))
        .unwrap();
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control"),
        &[("Cookie", pair(new_access))],
    )
    .await;
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("CONNECTED"));
    drop(ws);

    // An access token alone never renews itself, valid or expired: 401 refresh_required,
    // and no cookie. (Before issue 16 a still-valid one got a new token and refresh
    // cookies, so one leaked access token lasted as long as the session.)
    for _ in 0..2 {
        let by_access = server
            .http
            .post(&token_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(by_access.status(), 401);
        assert!(
            cookies(&by_access).is_empty(),
            "no cookie for an access token"
        );
        assert_eq!(
            by_access.json::<Value>().await.unwrap()["error"]["code"],
            "refresh_required"
        );
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
    // The refresh token works as a bearer too (a `#token=` link's), and keeps working.
    let refresh_value = pair(refresh).split_once('=').unwrap().1;
    for _ in 0..2 {
        let by_refresh = server
            .http
            .post(&token_url)
            .bearer_auth(refresh_value)
            .send()
            .await
            .unwrap();
        assert_eq!(by_refresh.status(), 200);
        let minted: Value = by_refresh.json().await.unwrap();
        let minted = minted["token"].as_str().unwrap().to_owned();
        // The token it minted cannot mint another either.
        let chained = server
            .http
            .post(&token_url)
            .bearer_auth(&minted)
            .send()
            .await
            .unwrap();
        assert_eq!(chained.status(), 401);
    }
    // The operator can always mint one.
    assert_eq!(
        server
            .http
            .post(&token_url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // With a refresh token of the role asked for, to hand on; it renews as that role.
    let minted: Value = server
        .http
        .post(&token_url)
        .bearer_auth(ADMIN)
        .json(&json!({ "role": "view" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let handed_on = server
        .http
        .post(&token_url)
        .bearer_auth(minted["refresh_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(handed_on.status(), 200);
    assert_eq!(handed_on.json::<Value>().await.unwrap()["role"], "view");
    // Nothing, another site, a refresh token used as an access token: refused.
    assert_eq!(
        server.http.post(&token_url).send().await.unwrap().status(),
        401
    );
    let cross = server
        .http
        .post(&token_url)
        .header("cookie", pair(refresh))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={refresh_value}"),
        &[],
    )
    .await;
    assert_eq!(close_of(&mut ws, Duration::from_secs(5)).await.0, 4002);
    // After revocation, no more tokens.
    server.revoke(&id).await;
    let gone = server
        .http
        .post(&token_url)
        .header("cookie", pair(refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410);
    server.stop().await;
}

#[tokio::test]
async fn connection_attempts_and_caps_are_limited_with_4009_and_a_retry_time() {
    let server = TestServer::start(&[
        "--connect-rate",
        "1",
        "--connect-burst",
        "3",
        "--max-connections-per-session",
        "1",
    ])
    .await;
    let created = server.create_session(json!({})).await;
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let path = format!("/api/sessions/{id}/vnc?token={token}");
    // The first holds the session's only place.
    let mut first = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    let _ = first.next().await; // CONNECTED
    let mut second = ws_connect(&server, &path, &[]).await;
    let (code, reason) = close_of(&mut second, Duration::from_secs(5)).await;
    assert_eq!(code, 4009);
    assert!(
        reason.contains("too many connections to this session"),
        "{reason}"
    );
    // The burst is spent: the next attempt is refused before anything else is checked.
    let mut third = ws_connect(&server, &path, &[]).await;
    let (code, reason) = close_of(&mut third, Duration::from_secs(5)).await;
    assert_eq!(code, 4009);
    assert!(reason.contains("retry in"), "{reason}");
    // Session starts are counted in their own class: the spent WebSocket budget does not
    // stop them (defences::requests_are_limited_per_class covers their own limit).
    let started = no_redirect()
        .post(server.url("/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    // Normal use continues once the rate allows.
    drop(first);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut again = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    let hello = again.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("CONNECTED"), "{hello:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4006_and_shutdown_closes_with_4011() {
    let server = TestServer::start(&["--heartbeat-timeout", "2"]).await;
    let created = server.create_session(json!({})).await;
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    // Timed from before the connection: the server's clock starts once it has accepted,
    // and on a loaded machine the client may see the handshake finish well after that.
    let started = std::time::Instant::now();
    let mut silent = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    let (code, reason) = close_of(&mut silent, Duration::from_secs(10)).await;
    assert_eq!(code, 4006, "{reason}");
    assert!(started.elapsed() >= Duration::from_millis(1900));

    let mut live = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    let _ = live.next().await; // CONNECTED
    let stopping = tokio::spawn(server.stop());
    assert_eq!(
        close_of(&mut live, Duration::from_secs(10)).await,
        (4011, "server shutting down".into())
    );
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_control_connections_hold_for_a_minute() {
    let server = TestServer::start(&[
        "--max-connections-per-session",
        "250",
        "--max-connections-per-ip",
        "300",
        "--connect-rate",
        "1000",
        "--connect-burst",
        "1000",
        // Tokens end every 20 s: the soak renews them with AUTH, as a real client does.
        "--access-token-ttl",
        "20",
    ])
    .await;
    let soak = livesession::bench::ControlSoak {
        url: server.base.clone(),
        admin_token: ADMIN.into(),
        connections: 200,
        duration: Duration::from_secs(60),
        sessions: 1,
        ping_interval: Duration::from_secs(5),
        open_rate: 100.0,
        server_pid: Some(std::process::id()),
    };
    let report = livesession::bench::run(&soak).await.unwrap();
    report.print(&soak);
    assert_eq!(report.opened, 200);
    assert_eq!(report.unexpected_closes, Vec::<String>::new());
    assert_eq!(report.held_to_the_end, 200);
    assert!(
        report.pongs >= 200 * 10,
        "every connection kept its heartbeat: {} pongs",
        report.pongs
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_connection_lives_as_long_as_its_token_unless_renewed_with_auth() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start(&["--access-token-ttl", "3"]).await;
    let created = server.create_session(json!({})).await;
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let path = format!("/api/sessions/{id}/control?token={token}");
    let mut lapsing = ws_connect(&server, &path, &[]).await;
    let mut renewed = ws_connect(&server, &path, &[]).await;

    // Renew one of them with a fresh token over the channel (minted later, so it ends later).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = server.mint_token(id).await;
    let auth = json!({ "type": "AUTH", "token": fresh }).to_string();
    renewed.send(Message::text(auth)).await.unwrap();
    let mut auth_ok = false;
    while !auth_ok {
        let message = tokio::time::timeout(Duration::from_secs(10), renewed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_ne!(v["type"], "ERROR", "{v}");
            auth_ok = v["type"] == "AUTH_OK";
        }
    }
    // A token for another session, or garbage, is answered with ERROR and changes nothing.
    renewed
        .send(Message::text(r#"{"type":"AUTH","token":"nope"}"#))
        .await
        .unwrap();

    let (code, reason) = close_of(&mut lapsing, Duration::from_secs(10)).await;
    assert_eq!((code, reason.as_str()), (4003, "access token expired"));
    // The renewed one is still open after the first token's end...
    renewed
        .send(Message::text(r#"{"type":"PING"}"#))
        .await
        .unwrap();
    let mut saw_pong = false;
    let mut saw_error = false;
    while !saw_pong {
        let message = tokio::time::timeout(Duration::from_secs(2), renewed.next())
            .await
            .expect("still open")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            saw_pong |= text.contains("\"PONG\"");
            saw_error |= text.contains("\"ERROR\"");
        }
    }
    assert!(saw_error, "the bad AUTH was answered with ERROR");
    // ...until its renewed token ends too.
    assert_eq!(
        close_of(&mut renewed, Duration::from_secs(10)).await.0,
        4003
    );
    server.stop().await;
}
