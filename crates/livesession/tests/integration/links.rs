//! Viewer links: extra links into a session with their own role, revocable on their own.
//! Created and listed through the API, claimed by the join page, bound to their session,
//! and revoked: the link's connections close at once, its tokens stop working, the
//! session's other connections stay.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{ADMIN, TestServer, Ws, close_of, logs, ws_connect};

/// `Authorization` for a request: the admin token or an access token.
async fn create_link(server: &TestServer, id: &str, auth: &str, body: Value) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/api/sessions/{id}/links")))
        .bearer_auth(auth)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code, text)
}

/// Creates a link as the admin; returns the answer and the secret from its URL.
async fn new_link(server: &TestServer, id: &str, role: &str) -> (Value, String) {
    let response = create_link(server, id, ADMIN, json!({ "role": role })).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let secret = body["url"]
        .as_str()
        .unwrap()
        .split_once("/join#")
        .unwrap()
        .1
        .to_owned();
    (body, secret)
}

/// The join page's claim, from our own origin.
async fn claim(server: &TestServer, secret: &str) -> reqwest::Response {
    server
        .http
        .post(server.url("/api/links/claim"))
        .header("origin", server.base.as_str())
        .json(&json!({ "secret": secret }))
        .send()
        .await
        .unwrap()
}

/// The `name=value` of the Set-Cookie header whose name starts with `prefix`.
fn cookie(response: &reqwest::Response, prefix: &str) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("a {prefix}… cookie"))
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Claims a link; returns its access cookie (`ls_<id>=…`), refresh cookie and access token.
async fn claimed(server: &TestServer, id: &str, secret: &str) -> (String, String, String) {
    let response = claim(server, secret).await;
    assert_eq!(response.status(), 200);
    let access = cookie(&response, &format!("ls_{id}="));
    let refresh = cookie(&response, &format!("lsr_{id}="));
    let token = access.split_once('=').unwrap().1.to_owned();
    (access, refresh, token)
}

async fn refresh_with(server: &TestServer, id: &str, refresh_cookie: &str) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/api/sessions/{id}/token")))
        .header("cookie", refresh_cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap()
}

/// The next text message as JSON (WebSocket pings skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .expect("a message");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn links_are_created_listed_without_secrets_and_claimed_with_their_role() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap();
    let owner = created["token"].as_str().unwrap();

    // Both roles, by the admin; the secret is in the URL's fragment only.
    let response = create_link(
        &server,
        id,
        ADMIN,
        json!({ "role": "view", "label": "for Ann" }),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let view: Value = response.json().await.unwrap();
    let view_url = view["url"].as_str().unwrap();
    let (base, view_secret) = view_url.split_once("/join#").expect("a /join# URL");
    assert_eq!(base, server.base);
    assert!(
        view_secret.len() == 64 && view_secret.chars().all(|c| c.is_ascii_hexdigit()),
        "{view_secret}"
    );
    assert_eq!(view["role"], "view");
    assert_eq!(view["label"], "for Ann");
    let view_id = view["id"].as_str().unwrap();
    assert_eq!(view_id.len(), 32);
    assert!(view["created_at"].is_string());
    let (drive, drive_secret) = new_link(&server, id, "interactive").await;
    assert_eq!(
        (&drive["role"], &drive["label"]),
        (&json!("interactive"), &Value::Null)
    );

    // What a link request may not be.
    for (body, code) in [
        (json!({ "role": "owner" }), "invalid_json"),
        (json!({}), "invalid_json"),
        (json!({ "role": "view", "extra": 1 }), "invalid_json"),
        (
            json!({ "role": "view", "label": "x".repeat(101) }),
            "invalid_label",
        ),
        (
            json!({ "role": "view", "label": "a\u{0}b" }),
            "invalid_label",
        ),
    ] {
        let (status, got, _) = error_of(create_link(&server, id, ADMIN, body.clone()).await).await;
        assert_eq!((status, got.as_str()), (400, code), "{body}");
    }
    let nobody = server
        .http
        .post(server.url(&format!("/api/sessions/{id}/links")))
        .json(&json!({ "role": "view" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(nobody).await.0, 401);
    let unknown = "0123456789abcdef0123456789abcdef";
    let (status, code, _) =
        error_of(create_link(&server, unknown, ADMIN, json!({ "role": "view" })).await).await;
    assert_eq!((status, code.as_str()), (404, "session_not_found"));

    // The list has every link, never a secret.
    let list = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/links")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let text = list.text().await.unwrap();
    assert!(
        !text.contains(view_secret) && !text.contains(&drive_secret),
        "{text}"
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    let links = list["links"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    for link in links {
        let keys: Vec<&str> = link
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["created_at", "id", "label", "revoked_at", "role"],
            "{link}"
        );
        assert_eq!(link["revoked_at"], Value::Null);
    }
    assert!(
        links
            .iter()
            .any(|l| l["id"] == view_id && l["role"] == "view")
    );

    // Claiming the view link sets the session's cookies with the view role.
    let response = claim(&server, view_secret).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let set_cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        set_cookies
            .iter()
            .all(|c| c.contains("HttpOnly") && c.contains("SameSite=Lax")),
        "{set_cookies:?}"
    );
    let access = cookie(&response, &format!("ls_{id}="));
    let refresh = cookie(&response, &format!("lsr_{id}="));
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "session_id": id, "role": "view", "viewer_url": format!("/s/{id}") })
    );
    let view_token = access.split_once('=').unwrap().1.to_owned();

    // The view token opens the session, as a viewer...
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control"),
        &[
            ("Cookie", access.as_str()),
            ("Origin", server.base.as_str()),
        ],
    )
    .await;
    let hello = next_json(&mut ws).await;
    assert_eq!(
        (&hello["type"], &hello["role"]),
        (&json!("CONNECTED"), &json!("view"))
    );
    drop(ws);
    // ...but cannot manage links, by header or by cookie.
    let (status, code, _) =
        error_of(create_link(&server, id, &view_token, json!({ "role": "interactive" })).await)
            .await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let by_cookie = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/links")))
        .header("cookie", access.as_str())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(by_cookie).await.0, 403);

    // Refreshing keeps the role and the link: the new token is still view-only.
    let refreshed = refresh_with(&server, id, &refresh).await;
    assert_eq!(refreshed.status(), 200);
    let body: Value = refreshed.json().await.unwrap();
    assert_eq!(body["role"], "view");
    let renewed = body["token"].as_str().unwrap();
    let (status, _, _) =
        error_of(create_link(&server, id, renewed, json!({ "role": "view" })).await).await;
    assert_eq!(status, 403);

    // An interactive link's token drives the desktop but cannot mint links either (they
    // would outlive its own revocation).
    let (_, _, drive_token) = claimed(&server, id, &drive_secret).await;
    let (status, code, _) =
        error_of(create_link(&server, id, &drive_token, json!({ "role": "view" })).await).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));

    // The session's own interactive token may, by header or by the viewer's cookie.
    let response = create_link(&server, id, owner, json!({ "role": "view" })).await;
    assert_eq!(response.status(), 201);
    let by_owner_cookie = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/links")))
        .header("cookie", format!("ls_{id}={owner}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(by_owner_cookie.status(), 200);
    // Not from another site's page.
    let cross = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/links")))
        .header("cookie", format!("ls_{id}={owner}"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(cross).await.1, "cross_site_request");

    // Claims: not from another site; unknown and malformed secrets are not echoed.
    let cross = server
        .http
        .post(server.url("/api/links/claim"))
        .header("origin", "http://evil.example")
        .json(&json!({ "secret": view_secret }))
        .send()
        .await
        .unwrap();
    let (status, code, text) = error_of(cross).await;
    assert_eq!((status, code.as_str()), (403, "cross_site_request"));
    assert!(!text.contains(view_secret));
    let unknown_secret = "ab".repeat(32);
    for secret in [unknown_secret.as_str(), "not-a-secret-at-all", ""] {
        let (status, code, text) = error_of(claim(&server, secret).await).await;
        assert_eq!((status, code.as_str()), (404, "link_not_found"), "{secret}");
        assert!(secret.is_empty() || !text.contains(secret), "{text}");
    }
    let wrong_shape = server
        .http
        .post(server.url("/api/links/claim"))
        .header("origin", server.base.as_str())
        .body(format!("{{\"secret\": \"{view_secret}\", \"x\": 1}}"))
        .send()
        .await
        .unwrap();
    let (status, code, text) = error_of(wrong_shape).await;
    assert_eq!((status, code.as_str()), (400, "invalid_json"));
    assert!(!text.contains(view_secret), "{text}");

    // Ending the session ends its links: claims, refreshes and connections are refused.
    server.revoke(id).await;
    let (status, code, text) = error_of(claim(&server, &drive_secret).await).await;
    assert_eq!((status, code.as_str()), (410, "session_ended"));
    assert!(!text.contains(&drive_secret));
    assert_eq!(refresh_with(&server, id, &refresh).await.status(), 410);
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={view_token}"),
        &[],
    )
    .await;
    assert_eq!(
        close_of(&mut ws, Duration::from_secs(5)).await,
        (4008, "session revoked".into())
    );

    // Neither secret reached the log.
    let log = logs();
    assert!(log.contains("viewer link claimed"));
    assert!(!log.contains(view_secret) && !log.contains(&drive_secret));
    server.stop().await;
}

#[tokio::test]
async fn a_link_of_one_session_opens_nothing_of_another() {
    let server = TestServer::start(&[]).await;
    let a = server.create_session(json!({})).await;
    let b = server.create_session(json!({})).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let (_, a_secret) = new_link(&server, a_id, "interactive").await;
    let (a_access, a_refresh, a_token) = claimed(&server, a_id, &a_secret).await;
    assert!(a_access.starts_with(&format!("ls_{a_id}=")));

    // B's WebSockets refuse it in every place a token can travel.
    let bearer = format!("Bearer {a_token}");
    let as_b_cookie = format!("ls_{b_id}={a_token}");
    for channel in ["control", "vnc"] {
        for (path, headers) in [
            (
                format!("/api/sessions/{b_id}/{channel}?token={a_token}"),
                vec![],
            ),
            (
                format!("/api/sessions/{b_id}/{channel}"),
                vec![("Authorization", bearer.as_str())],
            ),
            (
                format!("/api/sessions/{b_id}/{channel}"),
                vec![
                    ("Cookie", as_b_cookie.as_str()),
                    ("Origin", server.base.as_str()),
                ],
            ),
        ] {
            let mut ws = ws_connect(&server, &path, &headers).await;
            let (code, reason) = close_of(&mut ws, Duration::from_secs(5)).await;
            assert_eq!(code, 4002, "{path} {headers:?}: {reason}");
            assert!(reason.contains("another session"), "{reason}");
        }
    }
    // B's API too: its links, its token endpoint.
    let (status, code, _) =
        error_of(create_link(&server, b_id, &a_token, json!({ "role": "view" })).await).await;
    assert_eq!((status, code.as_str()), (401, "token_invalid"));
    let list_b = server
        .http
        .get(server.url(&format!("/api/sessions/{b_id}/links")))
        .bearer_auth(&a_token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(list_b).await.1, "token_invalid");
    let as_b_refresh = format!("lsr_{b_id}={}", a_refresh.split_once('=').unwrap().1);
    let (status, code, _) = error_of(refresh_with(&server, b_id, &as_b_refresh).await).await;
    assert_eq!((status, code.as_str()), (401, "token_invalid"));
    let a_refresh_value = a_refresh.split_once('=').unwrap().1;
    let by_bearer = server
        .http
        .post(server.url(&format!("/api/sessions/{b_id}/token")))
        .bearer_auth(a_refresh_value)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(by_bearer).await.1, "token_invalid");
    // A link is revoked only through its own session.
    let (b_link, _) = new_link(&server, b_id, "view").await;
    let b_link_id = b_link["id"].as_str().unwrap();
    let cross_revoke = server
        .http
        .delete(server.url(&format!("/api/sessions/{a_id}/links/{b_link_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(cross_revoke).await.1, "link_not_found");

    // None of it touched B's desktop.
    assert_eq!(server.get_session(b_id).await["desktop"], "stopped");
    assert!(
        !server.desktop_dir(b_id).exists(),
        "B's desktop directory was created"
    );
    assert_eq!(server.readyz().await["desktops"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_link_closes_its_connections_at_once_and_its_tokens_stop_working() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap();
    let owner = created["token"].as_str().unwrap();
    let (link, secret) = new_link(&server, id, "view").await;
    let link_id = link["id"].as_str().unwrap();
    let (access, refresh, token) = claimed(&server, id, &secret).await;
    let origin = server.base.as_str();

    // The session owner's control channel, and the link holder's control and VNC.
    let mut owner_ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={owner}"),
        &[],
    )
    .await;
    assert_eq!(next_json(&mut owner_ws).await["role"], "interactive");
    let mut link_control = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control"),
        &[("Cookie", access.as_str()), ("Origin", origin)],
    )
    .await;
    assert_eq!(next_json(&mut link_control).await["type"], "CONNECTED");
    let mut link_vnc = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc"),
        &[
            ("Cookie", access.as_str()),
            ("Origin", origin),
            ("Sec-WebSocket-Protocol", "binary"),
        ],
    )
    .await;
    // The first RFB bytes: the relay is pumping.
    let first = tokio::time::timeout(Duration::from_secs(60), link_vnc.next())
        .await
        .expect("RFB bytes in time")
        .unwrap()
        .unwrap();
    assert!(first.is_binary(), "{first:?}");

    // The owner revokes the link with its own token.
    let started = Instant::now();
    let revoked = server
        .http
        .delete(server.url(&format!("/api/sessions/{id}/links/{link_id}")))
        .bearer_auth(owner)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let revoked: Value = revoked.json().await.unwrap();
    assert_eq!(revoked["id"], link_id);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let expected = (4008, "viewer link revoked".to_owned());
    assert_eq!(
        close_of(&mut link_control, Duration::from_secs(1)).await,
        expected
    );
    assert_eq!(
        close_of(&mut link_vnc, Duration::from_secs(1)).await,
        expected
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The owner's connection is still open and answers.
    owner_ws
        .send(Message::text(r#"{"type":"PING"}"#))
        .await
        .unwrap();
    loop {
        let message = next_json(&mut owner_ws).await;
        match message["type"].as_str().unwrap() {
            "PONG" => break,
            "DESKTOP_STATUS" => assert_ne!(message["status"], "failed", "{message}"),
            // Who holds control of the browser (docs/agents.md): sent on connecting.
            "CONTROL" => {}
            other => panic!("the owner's connection got {other}: {message}"),
        }
    }
    // AUTH with the revoked link's token cannot move the owner's connection to it.
    owner_ws
        .send(Message::text(
            json!({ "type": "AUTH", "token": token }).to_string(),
        ))
        .await
        .unwrap();
    loop {
        let message = next_json(&mut owner_ws).await;
        if message["type"] == "DESKTOP_STATUS" || message["type"] == "CONTROL" {
            continue;
        }
        assert_eq!(message["type"], "ERROR", "{message}");
        break;
    }

    // Its tokens stop working: refresh (cookie or bearer), reconnect, claim again. (Its
    // access token never renewed anything: an access token cannot renew itself.)
    let (status, code, _) = error_of(refresh_with(&server, id, &refresh).await).await;
    assert_eq!((status, code.as_str()), (410, "link_revoked"));
    let by_bearer = server
        .http
        .post(server.url(&format!("/api/sessions/{id}/token")))
        .bearer_auth(refresh.split_once('=').unwrap().1)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(by_bearer).await.1, "link_revoked");
    let by_access = server
        .http
        .post(server.url(&format!("/api/sessions/{id}/token")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(by_access).await.1, "refresh_required");
    for channel in ["control", "vnc"] {
        let mut ws = ws_connect(
            &server,
            &format!("/api/sessions/{id}/{channel}"),
            &[("Cookie", access.as_str()), ("Origin", origin)],
        )
        .await;
        assert_eq!(
            close_of(&mut ws, Duration::from_secs(5)).await,
            expected,
            "{channel}"
        );
    }
    let (status, code, text) = error_of(claim(&server, &secret).await).await;
    assert_eq!((status, code.as_str()), (410, "link_revoked"));
    assert!(!text.contains(&secret), "{text}");

    // Listed as revoked; revoking again changes nothing.
    let list: Value = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/links")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["links"][0]["revoked_at"], revoked["revoked_at"]);
    let again: Value = server
        .http
        .delete(server.url(&format!("/api/sessions/{id}/links/{link_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, revoked);

    // The session goes on.
    assert_eq!(server.get_session(id).await["state"], "active");
    assert!(
        !logs().contains(&secret),
        "the link's secret appears in the log"
    );
    drop(owner_ws);
    server.stop().await;
}
