//! What a session's browser can reach: a page inside the desktop probes the gateway and
//! another loopback listener of this test; both must fail while the page's own server
//! (forwarded with `--desktop-host-ports`) works. No traffic leaves 127.0.0.0/8.

use std::time::Duration;

use serde_json::json;

use crate::support::{PageServer, TestServer, rfb_over_ws, ws_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_in_the_desktop_cannot_reach_the_gateway_or_other_loopback_services() {
    let page = PageServer::start().await;
    // Another service on this machine's loopback, e.g. a database: it must see nothing.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_port = other.local_addr().unwrap().port();
    let other_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = other_hits.clone();
    tokio::spawn(async move {
        while other.accept().await.is_ok() {
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1]]).await;

    let gateway = format!("http://127.0.0.1:{}/healthz", server.addr.port());
    let service = format!("http://127.0.0.1:{other_port}/");
    let own = format!("http://127.0.0.1:{}/page?own", page.port);
    let start_url = format!(
        "{}?probe={}&probe={}&probe={}",
        page.url,
        urlencode(&gateway),
        urlencode(&service),
        urlencode(&own)
    );
    let created = server.create_session(json!({ "start_url": start_url })).await;
    let (id, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    let ws = ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    let _rfb = rfb_over_ws(ws).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let verdict = |url: &str| {
        page.reports()
            .iter()
            .find_map(|r| r.strip_prefix(&format!("probe {url} ")).map(str::to_owned))
    };
    while [&gateway, &service, &own].iter().any(|u| verdict(u).is_none())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(verdict(&own).as_deref(), Some("reached"), "the page's own server works: {:?}", page.reports());
    assert_eq!(verdict(&gateway).as_deref(), Some("blocked"), "{:?}", page.reports());
    assert_eq!(verdict(&service).as_deref(), Some("blocked"), "{:?}", page.reports());
    assert_eq!(
        other_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the other loopback service saw no connection"
    );
    server.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
