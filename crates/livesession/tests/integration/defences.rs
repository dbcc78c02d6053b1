//! Web defences: the CSRF layer, security headers and frame-ancestors, built-in TLS,
//! trusted reverse proxies, per-class rate limits, input limits, and no secret in the logs.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{ADMIN, TestServer, close_of, logs, ws_connect};

fn no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
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

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The `name=value` part of each Set-Cookie header.
fn cookie_pairs(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect()
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A value no other test uses, so finding it in the logs means this test leaked it.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{nanos:x}{:x}", std::process::id())
}

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    config: livesession::config::ServeConfig,
}

fn parse_serve(args: &[&str]) -> Result<livesession::config::ServeConfig, String> {
    let mut argv = vec!["serve", "--admin-token", ADMIN, "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(args);
    Serve::try_parse_from(argv)
        .map(|s| s.config)
        .map_err(|e| e.to_string())
}

/// Starts a server that must refuse to start; returns its start-up error.
pub(crate) async fn startup_error(args: &[&str]) -> String {
    startup_error_of(parse_serve(args).expect("the flags parse")).await
}

/// Starts a server with this configuration, which must refuse to start; returns its
/// start-up error.
async fn startup_error_of(mut config: livesession::config::ServeConfig) -> String {
    let data = tempfile::Builder::new()
        .prefix("ls")
        .tempdir_in("/tmp")
        .unwrap();
    config.data_dir = data.path().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        livesession::launch(config, listener, std::future::pending()),
    )
    .await
    .expect("a bad configuration stops the start at once");
    result.expect_err("the server must not start").to_string()
}

// ---------------------------------------------------------------- CSRF

#[tokio::test]
async fn cross_site_state_changing_requests_are_refused_by_one_layer() {
    let server = TestServer::start(&["--allowed-origins", "https://portal.example.com"]).await;
    let client = no_redirect();
    let evil = [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ];

    // A bearer token is not a browser's ambient credential: agents keep working even if
    // they send an Origin.
    let mut create = client
        .post(server.url("/api/sessions"))
        .bearer_auth(ADMIN)
        .json(&json!({}));
    for (k, v) in evil {
        create = create.header(k, v);
    }
    let created = create.send().await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap();

    // Every state-changing route is covered, whatever its own authentication: the layer
    // answers before the handler (and its admin check) runs.
    let routes = [
        (reqwest::Method::POST, "/start".to_owned()),
        (reqwest::Method::POST, "/api/sessions".to_owned()),
        (reqwest::Method::POST, format!("/api/sessions/{id}/token")),
        (reqwest::Method::POST, format!("/api/sessions/{id}/extend")),
        (reqwest::Method::DELETE, format!("/api/sessions/{id}")),
        (reqwest::Method::POST, "/api/checkout".to_owned()),
        (reqwest::Method::POST, "/api/checkout/claim".to_owned()),
        (reqwest::Method::PUT, "/api/sessions".to_owned()),
        (reqwest::Method::PATCH, format!("/api/sessions/{id}")),
    ];
    for (method, path) in &routes {
        for headers in [
            &evil[..],
            &[("origin", "https://evil.example")][..],
            &[("sec-fetch-site", "same-site")][..],
            &[("origin", "null")][..],
        ] {
            let mut request = client
                .request(method.clone(), server.url(path))
                .header("cookie", format!("lsr_{id}=x; ls_{id}=y"));
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                error_of(response).await,
                (403, "cross_site_request".into()),
                "{method} {path} {headers:?}"
            );
        }
    }
    // The session is untouched.
    assert_eq!(server.get_session(id).await["state"], "active");

    // Our own pages pass: fetch metadata, or an allowed Origin (the public URL, or an
    // extra allowed origin even when the browser calls it cross-site).
    let ours = client
        .post(server.url("/start"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(ours.status(), 303);
    let portal = client
        .post(server.url("/start"))
        .header("origin", "https://portal.example.com")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(portal.status(), 303);
    // Safe methods and non-browser clients (no Origin, no fetch metadata) pass.
    let get = client
        .get(server.url("/api/info"))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let webhook = client
        .post(server.url("/api/stripe/webhook"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(webhook).await, (404, "checkout_off".into()));
    server.stop().await;
}

// ---------------------------------------------------------------- headers

#[tokio::test]
async fn security_headers_are_on_every_response_and_frame_ancestors_are_configurable() {
    let server = TestServer::start(&[]).await;
    for path in ["/", "/healthz", "/api/no-such-thing", "/static/missing.js"] {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        let csp = header(&response, "content-security-policy").unwrap();
        assert!(csp.ends_with("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert_eq!(
            header(&response, "x-frame-options").as_deref(),
            Some("DENY")
        );
        assert_eq!(
            header(&response, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(
            header(&response, "referrer-policy").as_deref(),
            Some("same-origin")
        );
        assert_eq!(
            header(&response, "cross-origin-opener-policy").as_deref(),
            Some("same-origin")
        );
        assert!(
            header(&response, "permissions-policy")
                .unwrap()
                .contains("camera=()")
        );
        assert_eq!(
            header(&response, "strict-transport-security"),
            None,
            "no HSTS over plain HTTP"
        );
    }
    server.stop().await;

    let server =
        TestServer::start(&["--frame-ancestors", "self, https://portal.example.com"]).await;
    let response = server.http.get(server.url("/s/abc")).send().await.unwrap();
    let csp = header(&response, "content-security-policy").unwrap();
    assert!(
        csp.ends_with("frame-ancestors 'self' https://portal.example.com"),
        "{csp}"
    );
    assert_eq!(
        header(&response, "x-frame-options"),
        None,
        "X-Frame-Options would forbid the framing the operator allowed"
    );
    server.stop().await;

    // Values that would allow any framer, or break out of the header, stop the start.
    for bad in [
        "*",
        "https:",
        "'none' https://a.example",
        "https://a.example; script-src *",
    ] {
        let err = parse_serve(&["--frame-ancestors", bad]).expect_err(bad);
        assert!(err.contains("frame-ancestors"), "{bad}: {err}");
    }
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn built_in_tls_serves_https_with_hsts_secure_cookies_and_wss() {
    let (cert, key) = self_signed();
    let server = TestServer::start_tls(&cert, &key, &[]).await;
    assert!(server.base.starts_with("https://"));
    let health = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        header(&health, "strict-transport-security").as_deref(),
        Some("max-age=31536000")
    );

    // The public URL is https: cookies are Secure and the WebSocket URLs are wss.
    let started = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only([reqwest::Certificate::from_pem(cert.as_bytes()).unwrap()])
        .build()
        .unwrap()
        .post(server.url("/start"))
        .header("origin", server.base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    let cookies = set_cookies(&started);
    assert!(
        !cookies.is_empty() && cookies.iter().all(|c| c.ends_with("; Secure")),
        "{cookies:?}"
    );
    let created = server.create_session(json!({})).await;
    let control_url = created["control_url"].as_str().unwrap();
    assert!(control_url.starts_with("wss://"), "{control_url}");

    // A client that never finishes its handshake, and one that speaks plain HTTP to the
    // TLS port, do not stop the server from accepting others.
    let _silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
        assert!(!String::from_utf8_lossy(&buf).contains("\"ok\""));
    }

    // The control channel over wss, token in the URL.
    let token = created["token"].as_str().unwrap();
    let path = format!(
        "{}?token={token}",
        control_url.split_once(&server.addr.to_string()).unwrap().1
    );
    let mut ws = wss_connect(&server, &cert, &path).await;
    let hello = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(hello.to_text().unwrap().contains("CONNECTED"), "{hello:?}");
    ws.send(Message::text(r#"{"type":"PING"}"#)).await.unwrap();
    let mut pong = false;
    while !pong {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        pong = m.to_text().is_ok_and(|t| t.contains("PONG"));
    }
    drop(ws);
    assert_eq!(
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A WebSocket over TLS to the server, trusting `cert_pem` only.
async fn wss_connect(server: &TestServer, cert_pem: &str, path: &str) -> Wss {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(server.addr.ip().into()), tcp)
        .await
        .expect("TLS handshake with the server's certificate");
    let request = format!("wss://{}{path}", server.addr)
        .into_client_request()
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("WebSocket handshake over TLS");
    ws
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (cert, key, other_key) = (
        path("cert.pem", &cert),
        path("key.pem", &key),
        path("other.pem", &other_key),
    );
    let missing = dir.path().join("nope.pem").to_str().unwrap().to_owned();

    let err = startup_error(&["--tls-cert", &missing, "--tls-key", &key]).await;
    assert!(
        err.contains("cannot read the TLS certificate") && err.contains("nope.pem"),
        "{err}"
    );
    let err = startup_error(&["--tls-cert", &cert, "--tls-key", &missing]).await;
    assert!(err.contains("cannot read the TLS private key"), "{err}");
    let err = startup_error(&["--tls-cert", &key, "--tls-key", &key]).await;
    assert!(err.contains("holds no certificate"), "{err}");
    let err = startup_error(&["--tls-cert", &cert, "--tls-key", &cert]).await;
    assert!(err.contains("holds no private key"), "{err}");
    let err = startup_error(&["--tls-cert", &cert, "--tls-key", &other_key]).await;
    assert!(err.contains("does not go with the certificate"), "{err}");
    let err = startup_error(&["--tls-cert", &cert]).await;
    assert!(err.contains("needs --tls-key"), "{err}");
    let err = startup_error(&["--tls-key", &key]).await;
    assert!(err.contains("needs --tls-cert"), "{err}");
}

// ---------------------------------------------------------------- trusted proxies

async fn create_from(server: &TestServer, forwarded_for: &str) -> u16 {
    server
        .http
        .post(server.url("/api/sessions"))
        .bearer_auth(ADMIN)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_an_untrusted_peer_cannot() {
    let limits = ["--create-rate", "0.01", "--create-burst", "2"];
    // 127.0.0.1 (the test client) is a trusted proxy.
    let mut args = vec!["--trusted-proxies", "10.0.0.0/8,127.0.0.1"];
    args.extend_from_slice(&limits);
    let server = TestServer::start(&args).await;
    assert_eq!(create_from(&server, "198.51.100.1").await, 201);
    assert_eq!(create_from(&server, "198.51.100.1").await, 201);
    assert_eq!(create_from(&server, "198.51.100.1").await, 429);
    // Another client behind the same proxy has its own bucket; a spoofed left-most entry
    // (written by the client) changes nothing.
    assert_eq!(create_from(&server, "198.51.100.2").await, 201);
    assert_eq!(create_from(&server, "6.6.6.6, 198.51.100.1").await, 429);
    assert_eq!(create_from(&server, "6.6.6.6, 198.51.100.2").await, 201);
    assert_eq!(create_from(&server, "198.51.100.2").await, 429);
    // The log names the client, not the proxy.
    assert!(
        logs().contains("\"client\":\"198.51.100.1\""),
        "request lines carry the forwarded client"
    );
    // The proxy terminated TLS: HSTS and Secure cookies.
    let health = server
        .http
        .get(server.url("/healthz"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(header(&health, "strict-transport-security").is_some());
    let started = no_redirect()
        .post(server.url("/start"))
        .header("x-forwarded-for", "198.51.100.3")
        .header("x-forwarded-proto", "https")
        .header("origin", server.base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    assert!(
        set_cookies(&started)
            .iter()
            .all(|c| c.ends_with("; Secure")),
        "{:?}",
        set_cookies(&started)
    );
    // The forwarded host is the request's own host for the Origin check.
    let forwarded_host = no_redirect()
        .post(server.url("/start"))
        .header("x-forwarded-for", "198.51.100.4")
        .header("x-forwarded-host", "localhost:9443")
        .header("origin", "https://localhost:9443")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded_host.status(), 303);
    server.stop().await;

    // The same headers from a peer that is not a trusted proxy are ignored entirely.
    let mut args = vec!["--trusted-proxies", "10.0.0.0/8"];
    args.extend_from_slice(&limits);
    let server = TestServer::start(&args).await;
    assert_eq!(create_from(&server, "198.51.100.1").await, 201);
    assert_eq!(create_from(&server, "198.51.100.2").await, 201);
    assert_eq!(
        create_from(&server, "198.51.100.3").await,
        429,
        "every request counts against the peer's own address"
    );
    let health = server
        .http
        .get(server.url("/healthz"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&health, "strict-transport-security"), None);
    let spoofed_host = no_redirect()
        .post(server.url("/start"))
        .header("x-forwarded-host", "localhost:9443")
        .header("origin", "https://localhost:9443")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(spoofed_host).await,
        (403, "cross_site_request".into())
    );
    server.stop().await;
}

// ---------------------------------------------------------------- rate limits

const WEBHOOK_SECRET: &str = "whsec_defences";

async fn webhook(server: &TestServer, secret: &str, event_id: &str) -> reqwest::Response {
    let body =
        json!({ "id": event_id, "type": "customer.created", "data": { "object": {} } }).to_string();
    let signature = livesession_billing::signature_header(
        body.as_bytes(),
        secret,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    );
    server
        .http
        .post(server.url("/api/stripe/webhook"))
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn requests_are_limited_per_class_with_429_and_recover_after_the_window() {
    let server = TestServer::start(&[
        "--stripe-secret-key",
        "sk_test_defences",
        "--stripe-webhook-secret",
        WEBHOOK_SECRET,
        "--stripe-api-base",
        "http://127.0.0.1:9",
        "--free-mode",
        "true",
        "--create-rate",
        "0.5",
        "--create-burst",
        "2",
        "--checkout-rate",
        "0.5",
        "--checkout-burst",
        "2",
        "--token-rate",
        "0.5",
        "--token-burst",
        "2",
        "--webhook-failure-rate",
        "0.5",
        "--webhook-failure-burst",
        "2",
    ])
    .await;
    let create = || {
        server
            .http
            .post(server.url("/api/sessions"))
            .bearer_auth(ADMIN)
            .send()
    };
    let first: Value = create().await.unwrap().json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(create().await.unwrap().status(), 201);
    let limited = create().await.unwrap();
    let retry_after: u64 = header(&limited, "retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(error_of(limited).await, (429, "rate_limited".into()));
    // Free-mode starts are session creations too.
    let start = server.http.post(server.url("/start")).send().await.unwrap();
    assert_eq!(error_of(start).await, (429, "rate_limited".into()));

    let token_url = server.url(&format!("/api/sessions/{id}/token"));
    let token = || server.http.post(&token_url).bearer_auth(ADMIN).send();
    assert_eq!(token().await.unwrap().status(), 200);
    assert_eq!(token().await.unwrap().status(), 200);
    assert_eq!(
        error_of(token().await.unwrap()).await,
        (429, "rate_limited".into())
    );

    let claim = || {
        server
            .http
            .post(server.url("/api/checkout/claim"))
            .json(&json!({ "checkout_session_id": "cs_test_unknown" }))
            .send()
    };
    assert_eq!(claim().await.unwrap().status(), 202);
    assert_eq!(claim().await.unwrap().status(), 202);
    assert_eq!(
        error_of(claim().await.unwrap()).await,
        (429, "rate_limited".into())
    );
    // Starting a checkout is in the same class.
    let checkout = server
        .http
        .post(server.url("/api/checkout"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(checkout).await, (429, "rate_limited".into()));

    // Badly signed webhooks: 400 twice, then 429. A correctly signed delivery from the
    // same address is never limited.
    for _ in 0..2 {
        let bad = webhook(&server, "whsec_wrong", "evt_bad").await;
        assert_eq!(error_of(bad).await, (400, "invalid_signature".into()));
    }
    let bad = webhook(&server, "whsec_wrong", "evt_bad").await;
    assert!(header(&bad, "retry-after").is_some());
    assert_eq!(error_of(bad).await, (429, "rate_limited".into()));
    for n in 0..5 {
        let good = webhook(&server, WEBHOOK_SECRET, &format!("evt_good_{n}")).await;
        assert_eq!(good.status(), 200);
    }

    // Normal use continues after the window (0.5/s: one more every two seconds).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(create().await.unwrap().status(), 201);
    assert_eq!(token().await.unwrap().status(), 200);
    assert_eq!(claim().await.unwrap().status(), 202);
    let bad = webhook(&server, "whsec_wrong", "evt_bad").await;
    assert_eq!(error_of(bad).await, (400, "invalid_signature".into()));
    server.stop().await;
}

// ---------------------------------------------------------------- the admin token

/// Wrong admin tokens as a client would send them: each a plausible guess, never logged.
fn wrong_admin_token(n: usize) -> String {
    format!("guess-{n}-5b1e0c7f9a2d4e6b8c3f1a0d9e7b2c4a")
}

#[tokio::test]
async fn wrong_admin_tokens_lock_the_address_out_of_every_admin_route_until_the_window_passes() {
    // Three wrong tokens, then one more every 5 s. The trusted proxy lets one test play
    // two client addresses.
    let server = TestServer::start(&[
        "--admin-failure-burst",
        "3",
        "--admin-failure-rate",
        "0.2",
        "--trusted-proxies",
        "127.0.0.1",
    ])
    .await;
    let created = server.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let refresh_token = created["refresh_token"].as_str().unwrap().to_owned();
    let routes: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (reqwest::Method::GET, "/api/sessions".into(), None),
        (reqwest::Method::GET, format!("/api/sessions/{id}"), None),
        (reqwest::Method::POST, "/api/sessions".into(), Some(json!({}))),
        (reqwest::Method::POST, format!("/api/sessions/{id}/extend"), Some(json!({ "seconds": 60 }))),
        (reqwest::Method::POST, format!("/api/sessions/{id}/token"), None),
        (reqwest::Method::GET, format!("/api/sessions/{id}/links"), None),
        (reqwest::Method::POST, format!("/api/sessions/{id}/links"), Some(json!({ "role": "view" }))),
        (reqwest::Method::POST, format!("/api/sessions/{id}/control"), Some(json!({ "holder": "none" }))),
        (reqwest::Method::DELETE, format!("/api/sessions/{id}"), None),
    ];
    let send = |route: &(reqwest::Method, String, Option<Value>), token: &str, from: Option<&str>| {
        let (method, path, body) = route;
        let mut request = server.http.request(method.clone(), server.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(from) = from {
            request = request.header("x-forwarded-for", from);
        }
        request.send()
    };

    // Three wrong tokens on three different admin routes: 401, as any wrong token.
    for (n, route) in routes.iter().take(3).enumerate() {
        let refused = send(route, &wrong_admin_token(n), None).await.unwrap();
        assert_eq!(refused.status(), 401, "{} {}", route.0, route.1);
    }
    // Now every admin route refuses this address with 429 and Retry-After: a fourth wrong
    // token, and the right one too, before it is even compared.
    let refused = send(&routes[0], &wrong_admin_token(3), None).await.unwrap();
    assert_eq!(error_of(refused).await, (429, "rate_limited".into()));
    let mut retry_after = 0;
    for route in &routes {
        let refused = send(route, ADMIN, None).await.unwrap();
        let after: u64 = header(&refused, "retry-after")
            .unwrap_or_else(|| panic!("Retry-After on {} {}", route.0, route.1))
            .parse()
            .unwrap();
        assert!((1..=5).contains(&after), "{after}");
        retry_after = retry_after.max(after);
        assert_eq!(
            error_of(refused).await,
            (429, "rate_limited".into()),
            "the right token from a locked-out address: {} {}",
            route.0,
            route.1
        );
    }
    let elsewhere = send(&routes[1], ADMIN, Some("192.0.2.80")).await.unwrap();
    assert_eq!(elsewhere.status(), 200, "another address is not locked out");
    let elsewhere: Value = elsewhere.json().await.unwrap();
    assert_eq!(elsewhere["state"], "active", "the refused DELETE did nothing");
    // A token this server signed is no guess at the admin token: a viewer's refresh token
    // still renews from the locked-out address.
    let renewed = server
        .http
        .post(server.url(&format!("/api/sessions/{id}/token")))
        .bearer_auth(&refresh_token)
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);

    // Once the window has passed, the right token works again from that address.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let listed = send(&routes[0], ADMIN, None).await.unwrap();
    assert_eq!(listed.status(), 200);

    // The attempts are logged, with the address; the tokens never are.
    let logs = logs();
    assert!(logs.contains("wrong admin token"), "the attempts are logged");
    for n in 0..4 {
        assert!(!logs.contains(&wrong_admin_token(n)), "a wrong admin token is in the logs");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_weak_configured_admin_token_refuses_to_start() {
    for weak in [
        "test-admin-token".to_owned(),
        "k".repeat(48),
        "0123abcd".repeat(5),
        "changeme-please-changeme-please-2024".to_owned(),
    ] {
        let mut config = parse_serve(&[]).unwrap();
        config.admin_token = Some(weak.clone());
        let error = startup_error_of(config).await;
        assert!(
            error.contains("LIVESESSION_ADMIN_TOKEN") && error.contains("--admin-token") && error.contains("32"),
            "the error names the setting and the minimum: {error}"
        );
        assert!(!error.contains(&weak), "the error does not repeat the token: {error}");
    }
    // The generated one, and a random one of the minimum length, start.
    let mut config = parse_serve(&[]).unwrap();
    config.admin_token = None;
    let data = tempfile::tempdir().unwrap();
    config.data_dir = data.path().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(livesession::launch(config, listener, async move {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished(), "a generated admin token starts");
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    let server = TestServer::start(&[]).await;
    assert_eq!(ADMIN.len(), 35);
    assert_eq!(server.http.get(server.url("/api/sessions")).bearer_auth(ADMIN).send().await.unwrap().status(), 200);
    server.stop().await;
}

// ---------------------------------------------------------------- input limits

#[tokio::test]
async fn oversized_headers_malformed_queries_and_unknown_routes_get_json_errors() {
    let server = TestServer::start(&[]).await;
    let big = "a".repeat(20 * 1024);
    let response = server
        .http
        .get(server.url("/healthz"))
        .header("x-padding", &big)
        .send()
        .await
        .unwrap();
    assert!(header(&response, "content-security-policy").is_some());
    assert_eq!(error_of(response).await, (431, "headers_too_large".into()));
    let long_url = server.url(&format!("/healthz?{}", "b".repeat(17 * 1024)));
    let response = server.http.get(long_url).send().await.unwrap();
    assert_eq!(error_of(response).await, (431, "headers_too_large".into()));
    let fine = server
        .http
        .get(server.url("/healthz"))
        .header("x-padding", "a".repeat(8 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);

    let bad_query = server
        .http
        .get(server.url("/api/sessions?limit=many"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(bad_query).await, (400, "invalid_query".into()));
    // A WebSocket endpoint's query (`token` twice) is answered in the same shape.
    let twice = server
        .http
        .get(server.url("/api/sessions/abc/vnc?token=a&token=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(twice).await, (400, "invalid_query".into()));
    let missing = server
        .http
        .get(server.url("/no/such/page"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(missing).await, (404, "not_found".into()));
    let wrong_method = server
        .http
        .put(server.url("/api/sessions"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(header(&wrong_method, "allow").is_some());
    assert_eq!(
        error_of(wrong_method).await,
        (405, "method_not_allowed".into())
    );
    server.stop().await;
}

// ---------------------------------------------------------------- secrets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_ever_reaches_the_logs() {
    let stripe_key = unique("sk_test_leakcheck");
    let webhook_secret = unique("whsec_leakcheck");
    let server = TestServer::start(&[
        "--stripe-secret-key",
        &stripe_key,
        "--stripe-webhook-secret",
        &webhook_secret,
        "--stripe-api-base",
        "http://127.0.0.1:9",
        "--free-mode",
        "true",
    ])
    .await;
    let mut secrets: Vec<String> =
        vec![ADMIN.to_owned(), stripe_key.clone(), webhook_secret.clone()];

    // Admin API: a session and its tokens; another minted; one refreshed by bearer (the
    // session's refresh token; an access token cannot renew itself).
    let created = server.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let first = created["token"].as_str().unwrap().to_owned();
    let refresh_token = created["refresh_token"].as_str().unwrap().to_owned();
    let minted = server.mint_token(&id).await;
    let token_url = server.url(&format!("/api/sessions/{id}/token"));
    let refreshed = server
        .http
        .post(&token_url)
        .bearer_auth(&refresh_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let refresh_cookies = cookie_pairs(&refreshed);
    let by_bearer: Value = refreshed.json().await.unwrap();
    let by_bearer = by_bearer["token"].as_str().unwrap().to_owned();

    // A browser: the start form's cookies, then a refresh by cookie.
    let started = no_redirect()
        .post(server.url("/start"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    let browser_id = started.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches("/s/")
        .to_owned();
    let browser_cookies = cookie_pairs(&started);
    let refresh_cookie = browser_cookies
        .iter()
        .find(|c| c.starts_with("lsr_"))
        .unwrap()
        .clone();
    let by_cookie = server
        .http
        .post(server.url(&format!("/api/sessions/{browser_id}/token")))
        .header("cookie", &refresh_cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);
    let renewed_cookies = cookie_pairs(&by_cookie);
    let by_cookie: Value = by_cookie.json().await.unwrap();
    let by_cookie = by_cookie["token"].as_str().unwrap().to_owned();

    // The control channel with the token in the URL (and an AUTH renewal), and with the
    // access cookie.
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={first}"),
        &[],
    )
    .await;
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("CONNECTED"));
    ws.send(Message::text(
        json!({ "type": "AUTH", "token": by_bearer }).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({ "type": "AUTH", "token": format!("{by_bearer}x") }).to_string(),
    ))
    .await
    .unwrap();
    let mut answers = 0;
    while answers < 2 {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let text = m.to_text().unwrap_or_default().to_owned();
        answers += usize::from(text.contains("AUTH_OK") || text.contains("\"ERROR\""));
    }
    drop(ws);
    let access_cookie = renewed_cookies
        .iter()
        .find(|c| c.starts_with("ls_"))
        .unwrap()
        .clone();
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{browser_id}/control"),
        &[("Cookie", access_cookie.as_str())],
    )
    .await;
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("CONNECTED"));
    drop(ws);
    // Refused connections: a tampered token in the URL, a token for another session.
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={first}x"),
        &[],
    )
    .await;
    assert_eq!(close_of(&mut ws, Duration::from_secs(5)).await.0, 4002);
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{browser_id}/control?token={minted}"),
        &[],
    )
    .await;
    assert_eq!(close_of(&mut ws, Duration::from_secs(5)).await.0, 4002);

    // Stripe: a bad signature, a good one, a checkout that cannot reach Stripe.
    let bad = webhook(&server, "whsec_wrong", "evt_leak_bad").await;
    assert_eq!(bad.status(), 400);
    let good = webhook(&server, &webhook_secret, "evt_leak_good").await;
    assert_eq!(good.status(), 200);
    let checkout = server
        .http
        .post(server.url("/api/checkout"))
        .send()
        .await
        .unwrap();
    assert_eq!(checkout.status(), 502);
    // A wrong admin token.
    let wrong = server
        .http
        .get(server.url("/api/sessions"))
        .bearer_auth(format!("{ADMIN}-wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // Over TLS too: the token in a wss URL.
    let (cert, key) = self_signed();
    let tls = TestServer::start_tls(&cert, &key, &[]).await;
    let tls_session = tls.create_session(json!({})).await;
    let tls_token = tls_session["token"].as_str().unwrap().to_owned();
    let mut ws = wss_connect(
        &tls,
        &cert,
        &format!(
            "/api/sessions/{}/control?token={tls_token}",
            tls_session["id"].as_str().unwrap()
        ),
    )
    .await;
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("CONNECTED"));
    drop(ws);
    tls.stop().await;
    server.stop().await;

    secrets.extend([first, minted, refresh_token, by_bearer, by_cookie, tls_token]);
    for pair in refresh_cookies
        .iter()
        .chain(&browser_cookies)
        .chain(&renewed_cookies)
    {
        secrets.push(pair.split_once('=').unwrap().1.to_owned());
    }
    // The private key's base64 body.
    secrets.extend(
        key.lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 40)
            .map(str::to_owned),
    );
    let logs = logs();
    assert!(
        logs.contains("Stripe webhook refused") && logs.contains("\"path\":\"/api/sessions/"),
        "the flow was logged"
    );
    for secret in &secrets {
        assert!(!secret.is_empty());
        assert!(
            !logs.contains(secret.as_str()),
            "a secret is in the logs: {secret}"
        );
        // A JWT's signature alone is as good as the token to nobody, but its presence
        // would mean the token was logged in pieces.
        if let Some((_, signature)) = secret.rsplit_once('.') {
            assert!(
                !logs.contains(signature),
                "a token's signature is in the logs"
            );
        }
    }
}
