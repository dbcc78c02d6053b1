//! The admin API: shapes, errors, limits; the landing page's free-mode start.

use serde_json::{Value, json};

use crate::support::{ADMIN, TestServer};

#[tokio::test]
async fn sessions_are_created_listed_fetched_and_revoked() {
    let server = TestServer::start(&[]).await;
    let created = server
        .create_session(json!({ "start_url": "http://127.0.0.1:9/x", "ttl_seconds": 600 }))
        .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    for key in [
        "expires_at",
        "token",
        "viewer_url",
        "vnc_url",
        "control_url",
    ] {
        assert!(
            created[key].as_str().is_some_and(|s| !s.is_empty()),
            "{key} in {created}"
        );
    }
    assert_eq!(created["viewer_url"], format!("{}/s/{id}", server.base));
    assert_eq!(
        created["vnc_url"],
        format!("ws://{}/api/sessions/{id}/vnc", server.addr)
    );
    assert_eq!(
        created["control_url"],
        format!("ws://{}/api/sessions/{id}/control", server.addr)
    );
    let expires = time::OffsetDateTime::parse(
        created["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ttl = (expires - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!((590..=600).contains(&ttl), "ttl {ttl}");

    let fetched = server.get_session(id).await;
    assert_eq!(fetched["state"], "active");
    assert_eq!(fetched["source"], "api");
    assert_eq!(fetched["start_url"], "http://127.0.0.1:9/x");
    assert_eq!(fetched["desktop"], "stopped");

    // An empty body takes the defaults.
    let response = server
        .http
        .post(server.url("/api/sessions"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let list: Value = server
        .http
        .get(server.url("/api/sessions"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);

    let revoked = server.revoke(id).await;
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["end_reason"], "revoked by the operator");
    // Revoking again changes nothing and still answers with the session.
    assert_eq!(server.revoke(id).await["state"], "revoked");
    server.stop().await;
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("errors are JSON");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, body["error"]["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let server = TestServer::start(&["--max-body-bytes", "1024"]).await;
    let post = |body: String, token: &str| {
        server
            .http
            .post(server.url("/api/sessions"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        error_of(post("{}".into(), "wrong").await.unwrap()).await,
        (401, "unauthorized".into())
    );
    let no_auth = server
        .http
        .get(server.url("/api/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(no_auth).await, (401, "unauthorized".into()));
    assert_eq!(
        error_of(post("{not json".into(), ADMIN).await.unwrap()).await,
        (400, "invalid_json".into())
    );
    assert_eq!(
        error_of(post(r#"{"surprise": 1}"#.into(), ADMIN).await.unwrap()).await,
        (400, "invalid_json".into())
    );
    assert_eq!(
        error_of(
            post(r#"{"start_url": "file:///etc/passwd"}"#.into(), ADMIN)
                .await
                .unwrap()
        )
        .await,
        (400, "invalid_start_url".into())
    );
    assert_eq!(
        error_of(post(r#"{"ttl_seconds": 0}"#.into(), ADMIN).await.unwrap()).await,
        (400, "invalid_ttl".into())
    );
    let big = format!(
        r#"{{"start_url": "http://127.0.0.1/{}"}}"#,
        "a".repeat(4096)
    );
    assert_eq!(
        error_of(post(big, ADMIN).await.unwrap()).await,
        (413, "body_too_large".into())
    );
    let missing = server
        .http
        .get(server.url("/api/sessions/0123"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(missing).await, (404, "session_not_found".into()));
    let missing = server
        .http
        .delete(server.url("/api/sessions/0123"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(missing).await, (404, "session_not_found".into()));
    // A plain GET of a WebSocket endpoint is told what it needs.
    let plain = server
        .http
        .get(server.url("/api/sessions/0123/vnc"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(plain).await.1, "websocket_required");
    server.stop().await;
}

#[tokio::test]
async fn free_mode_starts_a_session_from_the_landing_page_with_a_cookie() {
    let server = TestServer::start(&[]).await;
    let info: Value = server
        .http
        .get(server.url("/api/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["free_mode"], true);
    assert_eq!(info["agent"], false, "no model is configured");
    let landing = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(landing.status(), 200);
    assert!(
        landing.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(landing.text().await.unwrap().contains("Start a session"));

    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let started = no_redirect
        .post(server.url("/start"))
        .header("origin", server.base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let id = location
        .strip_prefix("/s/")
        .expect("redirect to the viewer");
    let cookie = started.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with(&format!("ls_{id}=")), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert_eq!(server.get_session(id).await["source"], "free");

    // Another site's form (or a sandboxed frame, which sends `Origin: null`) cannot start sessions.
    for (header, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
        ("origin", "null"),
    ] {
        let cross = no_redirect
            .post(server.url("/start"))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(cross).await,
            (403, "cross_site_request".into()),
            "{header}: {value}"
        );
    }
    // What Chromium sends for our own form.
    let ours = no_redirect
        .post(server.url("/start"))
        .header("origin", "null")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(ours.status(), 303);

    // The viewer page and noVNC are served from the same origin.
    let viewer = server.http.get(server.url(&location)).send().await.unwrap();
    assert_eq!(viewer.status(), 200);
    let rfb = server
        .http
        .get(server.url("/vendor/novnc/core/rfb.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(rfb.status(), 200);
    assert!(
        rfb.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    server.stop().await;
}

#[tokio::test]
async fn free_mode_can_be_turned_off() {
    let server = TestServer::start(&["--free-mode", "false"]).await;
    let info: Value = server
        .http
        .get(server.url("/api/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["free_mode"], false);
    let started = server.http.post(server.url("/start")).send().await.unwrap();
    assert_eq!(error_of(started).await, (403, "free_mode_off".into()));
    server.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer_json() {
    let server = TestServer::start(&[]).await;
    let health: Value = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = server.readyz().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["store"]["ok"], true);
    assert_eq!(ready["checks"]["desktop_tools"]["ok"], true);
    assert_eq!(ready["desktops"], 0);
    assert_eq!(ready["connections"], 0);
    server.stop().await;

    // A missing piece makes the server not ready, and says which and how to fix it.
    let server = TestServer::start(&["--xvnc", "/nonexistent/Xvnc"]).await;
    let response = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let ready: Value = response.json().await.unwrap();
    let missing = &ready["checks"]["desktop_tools"]["missing"][0];
    assert_eq!(missing["piece"], "Xvnc");
    assert_eq!(
        missing["fix"],
        "apt-get install -y tigervnc-standalone-server"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_spec_describes_every_rest_operation_and_the_one_error_body() {
    let server = TestServer::start(&[]).await;
    // Anyone may read it: no token.
    let response = reqwest::get(server.url("/api/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    let spec: Value = response.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    // A few operations of each resource, at the paths the server serves.
    for (path, method) in [
        ("/api/sessions", "post"),
        ("/api/sessions", "get"),
        ("/api/sessions/{id}", "delete"),
        ("/api/sessions/{id}/token", "post"),
        ("/api/sessions/{id}/links/{link_id}", "delete"),
        ("/api/logins", "post"),
        ("/api/sessions/{id}/control", "post"),
        ("/api/sessions/{id}/files/{name}", "get"),
        ("/api/sessions/{id}/recording", "get"),
        ("/api/sessions/{id}/tasks/{task_id}/screenshots/{seq}", "get"),
        ("/api/profiles/{name}/cookies", "post"),
        ("/api/workers/claim", "post"),
        ("/api/tasks/{id}/events", "post"),
        ("/api/stripe/webhook", "post"),
        ("/readyz", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} in {:?}", paths.keys());
    }
    // The WebSockets are not REST operations; the control channel's POST is.
    assert!(paths["/api/sessions/{id}/control"].get("get").is_none());
    assert!(!paths.contains_key("/api/sessions/{id}/vnc") && !paths.contains_key("/api/sessions/{id}/cdp"));
    // Every operation answers its errors with the one error body, the layers' included.
    let error_body = &spec["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_body["required"], json!(["error"]), "{error_body}");
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            for status in ["400", "429", "503"] {
                if (path.as_str(), status) == ("/readyz", "503") {
                    continue; // not ready: its own report of what is missing
                }
                let schema = &operation["responses"][status]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
            }
        }
    }
    assert!(operations >= 40, "{operations} operations");
    // What the server answers has the shape the spec gives it.
    let (status, body) = error_of(server.http.get(server.url("/api/sessions/nope")).bearer_auth(ADMIN).send().await.unwrap()).await;
    assert_eq!((status, body.as_str()), (404, "session_not_found"));
    let created = server.create_session(json!({})).await;
    let session_created = &spec["components"]["schemas"]["SessionCreated"];
    for field in session_created["required"].as_array().unwrap() {
        assert!(created.get(field.as_str().unwrap()).is_some(), "{field} in {created}");
    }
}
