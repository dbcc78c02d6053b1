//! `GET /metrics`: who may read it, and that its figures follow what happens (a real
//! desktop started for a real viewer, webhook deliveries, refusals, closes).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ADMIN, TestServer, close_of, rfb_over_ws, ws_connect};

/// The samples of a Prometheus text exposition: `name{labels}` as written → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {l:?}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("a number in {l:?}")),
            };
            (series.to_owned(), value)
        })
        .collect()
}

/// The server's figures, read as the admin.
async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let response = server.http.get(server.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    parse(&response.text().await.unwrap())
}

/// One sample's value; the series must be there.
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| {
        let mut names: Vec<&String> = samples.keys().collect();
        names.sort();
        panic!("{series} is not in the scrape; it has {names:#?}")
    })
}

/// Scrapes until `series` has `expected`, for up to `limit`; returns the last scrape.
async fn wait_for(server: &TestServer, series: &str, expected: f64, limit: Duration) -> HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let samples = scrape(server).await;
        if samples.get(series) == Some(&expected) || tokio::time::Instant::now() >= deadline {
            assert_eq!(samples.get(series), Some(&expected), "{series} within {limit:?}");
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_token_and_follow_a_live_viewer() {
    let server = TestServer::start(&[]).await;

    // Without the admin token (none, or a wrong one): 401 in the usual shape.
    for bearer in [None, Some("not-the-admin-token")] {
        let mut request = server.http.get(server.url("/metrics"));
        if let Some(b) = bearer {
            request = request.bearer_auth(b);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{bearer:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }

    // With it: the Prometheus text format, every family typed.
    let response = server.http.get(server.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for line in [
        "# TYPE livesession_sessions gauge",
        "# TYPE livesession_desktops gauge",
        "# TYPE livesession_desktops_live gauge",
        "# TYPE livesession_desktops_warm gauge",
        "# TYPE livesession_desktops_hibernated gauge",
        "# TYPE livesession_desktops_queued gauge",
        "# TYPE livesession_desktop_start_seconds histogram",
        "# TYPE livesession_connections gauge",
        "# TYPE livesession_relayed_bytes_total counter",
        "# TYPE livesession_webhook_events_total counter",
        "# TYPE livesession_rate_limited_total counter",
        "# TYPE livesession_websocket_closes_total counter",
        "# TYPE livesession_tasks gauge",
        "# TYPE livesession_store_up gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
    }
    let before = parse(&text);
    assert_eq!(value(&before, "livesession_store_up"), 1.0);
    assert_eq!(value(&before, "livesession_sessions{state=\"active\"}"), 0.0);
    assert_eq!(value(&before, "livesession_desktops_live"), 0.0);
    assert_eq!(value(&before, "livesession_connections{kind=\"vnc\"}"), 0.0);
    assert_eq!(value(&before, "livesession_desktop_start_seconds_count{kind=\"start\",result=\"ok\"}"), 0.0);
    assert_eq!(value(&before, "livesession_relayed_bytes_total{kind=\"vnc\",direction=\"to_client\"}"), 0.0);
    assert_eq!(value(&before, "livesession_tasks{kind=\"steps\",state=\"queued\"}"), 0.0);
    // The wrong token above was counted toward the lockout, not refused by it.
    assert_eq!(value(&before, "livesession_rate_limited_total{class=\"admin_failure\"}"), 0.0);

    // A session and a viewer: a real desktop starts for it.
    let created = server.create_session(json!({})).await;
    let (id, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert_eq!(value(&scrape(&server).await, "livesession_sessions{state=\"active\"}"), 1.0);
    let vnc = format!("/api/sessions/{id}/vnc?token={token}");
    let ws = ws_connect(&server, &vnc, &[("Sec-WebSocket-Protocol", "binary")]).await;
    let mut rfb = rfb_over_ws(ws).await;
    rfb.request_update(false).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(20), rfb.read_update())
        .await
        .expect("a frame in time")
        .unwrap();
    assert!(frame > 0, "a frame came");

    let live = scrape(&server).await;
    assert_eq!(value(&live, "livesession_connections{kind=\"vnc\"}"), 1.0);
    assert_eq!(value(&live, "livesession_connections_opened_total{kind=\"vnc\"}"), 1.0);
    assert_eq!(value(&live, "livesession_connections{kind=\"control\"}"), 0.0);
    assert_eq!(value(&live, "livesession_desktops_live"), 1.0);
    assert_eq!(value(&live, "livesession_desktops{status=\"ready\"}"), 1.0);
    assert_eq!(value(&live, "livesession_desktops{status=\"starting\"}"), 0.0);
    assert_eq!(value(&live, "livesession_desktops_warm"), 0.0, "the tests run without a warm pool");
    assert_eq!(value(&live, "livesession_desktop_start_seconds_count{kind=\"start\",result=\"ok\"}"), 1.0);
    assert_eq!(value(&live, "livesession_desktop_start_seconds_count{kind=\"start\",result=\"failed\"}"), 0.0);
    let took = value(&live, "livesession_desktop_start_seconds_sum{kind=\"start\",result=\"ok\"}");
    assert!(took > 0.0 && took < 120.0, "the start took {took} s");
    assert_eq!(
        value(&live, "livesession_desktop_start_seconds_bucket{kind=\"start\",result=\"ok\",le=\"+Inf\"}"),
        1.0
    );
    // The screen's bytes (the frame above, at least) and the client's handshake and request.
    let to_client = value(&live, "livesession_relayed_bytes_total{kind=\"vnc\",direction=\"to_client\"}");
    assert!(to_client >= frame as f64, "{to_client} bytes counted to the client, a frame alone was {frame}");
    let from_client = value(&live, "livesession_relayed_bytes_total{kind=\"vnc\",direction=\"from_client\"}");
    assert!(from_client >= 12.0 + 10.0, "{from_client} bytes from the client (version, update request)");
    assert_eq!(value(&live, "livesession_relayed_bytes_total{kind=\"cdp\",direction=\"to_client\"}"), 0.0);

    // The viewer goes: its connection is no longer counted.
    drop(rfb);
    wait_for(&server, "livesession_connections{kind=\"vnc\"}", 0.0, Duration::from_secs(10)).await;

    // A second viewer, then the session is revoked: the close the server sends is counted.
    let mut ws = ws_connect(&server, &vnc, &[("Sec-WebSocket-Protocol", "binary")]).await;
    wait_for(&server, "livesession_connections{kind=\"vnc\"}", 1.0, Duration::from_secs(10)).await;
    server.revoke(id).await;
    assert_eq!(close_of(&mut ws, Duration::from_secs(10)).await.0, 4008);
    let after = wait_for(&server, "livesession_connections{kind=\"vnc\"}", 0.0, Duration::from_secs(10)).await;
    assert_eq!(value(&after, "livesession_websocket_closes_total{kind=\"vnc\",code=\"4008\"}"), 1.0);
    assert_eq!(value(&after, "livesession_connections_opened_total{kind=\"vnc\"}"), 2.0);
    assert_eq!(value(&after, "livesession_sessions{state=\"revoked\"}"), 1.0);
    assert_eq!(value(&after, "livesession_sessions{state=\"active\"}"), 0.0);
    assert!(
        !after.keys().any(|k| k.contains(id) || k.contains(token) || k.contains(ADMIN)),
        "no session id or token in a label"
    );
    wait_for(&server, "livesession_desktops_live", 0.0, Duration::from_secs(15)).await;
    server.stop().await;
}

const SECRET: &str = "whsec_metrics";

#[tokio::test]
async fn webhooks_refusals_and_a_separate_listener_are_counted() {
    // A free port for the metrics listener (bound, then given to the server).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let server = TestServer::start(&[
        "--stripe-secret-key",
        "sk_test_x",
        "--stripe-webhook-secret",
        SECRET,
        "--stripe-api-base",
        "http://127.0.0.1:9",
        "--create-burst",
        "1",
        "--create-rate",
        "0.01",
        "--metrics-listen",
        &listen,
    ])
    .await;

    // Webhook deliveries: a bad signature, a good one, the same event again.
    let post = |body: String, signature: String| {
        server
            .http
            .post(server.url("/api/stripe/webhook"))
            .header("stripe-signature", signature)
            .body(body)
            .send()
    };
    let event = json!({ "id": "evt_metrics", "type": "checkout.session.completed", "data": { "object": {
        "id": "cs_metrics", "object": "checkout.session", "payment_status": "paid", "payment_intent": "pi_metrics",
        "amount_total": 100, "currency": "usd", "metadata": {}
    }}})
    .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let bad = livesession_billing::signature_header(event.as_bytes(), "whsec_wrong", now);
    let good = livesession_billing::signature_header(event.as_bytes(), SECRET, now);
    assert_eq!(post(event.clone(), bad).await.unwrap().status(), 400);
    assert_eq!(post(event.clone(), good.clone()).await.unwrap().status(), 200);
    assert_eq!(post(event.clone(), good).await.unwrap().status(), 200);

    // Session creations over their rate limit.
    server.create_session(json!({})).await;
    assert_eq!(server.admin_post("/api/sessions", json!({})).await.status(), 429);

    let samples = scrape(&server).await;
    assert_eq!(value(&samples, "livesession_webhook_events_total{result=\"invalid_signature\"}"), 1.0);
    assert_eq!(value(&samples, "livesession_webhook_events_total{result=\"processed\"}"), 1.0);
    assert_eq!(value(&samples, "livesession_webhook_events_total{result=\"duplicate\"}"), 1.0);
    assert_eq!(value(&samples, "livesession_webhook_events_total{result=\"rate_limited\"}"), 0.0);
    assert_eq!(value(&samples, "livesession_rate_limited_total{class=\"create\"}"), 1.0);
    assert_eq!(value(&samples, "livesession_rate_limited_total{class=\"webhook_failure\"}"), 0.0);
    // The paid checkout's session and the API's.
    assert_eq!(value(&samples, "livesession_sessions{state=\"active\"}"), 2.0);

    // The metrics listener: no token needed, nothing else served; the main listener's
    // /metrics still needs the admin token.
    let metrics_url = format!("http://{listen}/metrics");
    let response = server.http.get(&metrics_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let open = parse(&response.text().await.unwrap());
    assert_eq!(value(&open, "livesession_webhook_events_total{result=\"invalid_signature\"}"), 1.0);
    assert_eq!(value(&open, "livesession_sessions{state=\"active\"}"), 2.0);
    assert_eq!(server.http_get_status("/metrics", None).await, 401);
    for path in ["/api/sessions", "/healthz", "/"] {
        let status = server.http.get(format!("http://{listen}{path}")).bearer_auth(ADMIN).send().await.unwrap().status();
        assert_eq!(status, 404, "{path} on the metrics listener");
    }
    // A scraper that asks for OpenMetrics gets it.
    let response = server
        .http
        .get(&metrics_url)
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"),
        "{:?}",
        response.headers()
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(text.lines().any(|l| l == "livesession_webhook_events_total{result=\"duplicate\"} 1"), "{text}");

    server.stop().await;
    // The metrics listener stops with the server.
    assert!(
        tokio::net::TcpStream::connect(listen.as_str()).await.is_err(),
        "the metrics listener closed at shutdown"
    );
}
