//! Session lifetimes: expiry on time with every connection closed, warnings, extension,
//! and sessions surviving a server restart.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{ADMIN, TestServer, Ws, close_of, rfb_over_ws, ws_connect};

fn deadline_of(created: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        created["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// Reads until the close and returns (code, reason, when it arrived).
async fn close_time(mut ws: Ws) -> (u16, String, time::OffsetDateTime) {
    let (code, reason) = close_of(&mut ws, Duration::from_secs(30)).await;
    (code, reason, time::OffsetDateTime::now_utc())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_expiry_every_connection_closes_within_a_second_and_the_desktop_is_gone() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({ "ttl_seconds": 8 })).await;
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let deadline = deadline_of(&created);

    // A live VNC connection (desktop running) and a control connection. The TTL leaves
    // room for a sandboxed desktop to start on a loaded two-core machine.
    let vnc = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc?token={token}"),
        &[],
    )
    .await;
    let (vnc_tx, mut vnc_rx) = vnc.split();
    let first = tokio::time::timeout(Duration::from_secs(30), vnc_rx.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.is_binary(), "RFB greeting through the proxy");
    let vnc = vnc_tx.reunite(vnc_rx).unwrap();
    let pgid = server.desktop_procs(id);
    let control = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    assert!(
        time::OffsetDateTime::now_utc() < deadline,
        "connections opened before the deadline"
    );

    let (vnc_close, control_close) = tokio::join!(close_time(vnc), close_time(control));
    for (code, reason, at) in [vnc_close, control_close] {
        assert_eq!((code, reason.as_str()), (4007, "session expired"));
        let late = at - deadline;
        assert!(
            late >= time::Duration::ZERO - time::Duration::milliseconds(50),
            "closed {late} before the deadline"
        );
        assert!(
            late <= time::Duration::seconds(1),
            "closed {late} after the deadline"
        );
    }
    let gone = Instant::now();
    while !pgid.members().is_empty() && gone.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pgid.members().is_empty(),
        "the expired session's desktop processes are gone"
    );
    let session = server.get_session(id).await;
    assert_eq!(session["state"], "expired");
    assert_eq!(session["end_reason"], "time to live elapsed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_are_warned_five_minutes_before_expiry() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({ "ttl_seconds": 302 })).await;
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let mut control = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    let mut warning = None;
    let until = Instant::now() + Duration::from_secs(8);
    while warning.is_none() && Instant::now() < until {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(8), control.next()).await
        else {
            break;
        };
        if let Message::Text(text) = message {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "SESSION_EXPIRING" {
                warning = Some(v);
            }
        }
    }
    let warning = warning.expect("a SESSION_EXPIRING message");
    let left = warning["seconds_left"].as_i64().unwrap();
    assert!((295..=300).contains(&left), "seconds_left {left}");
    server.stop().await;
}

#[tokio::test]
async fn sessions_can_be_extended_through_the_api() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({ "ttl_seconds": 60 })).await;
    let id = created["id"].as_str().unwrap();
    let url = server.url(&format!("/api/sessions/{id}/extend"));
    let extended: Value = server
        .http
        .post(&url)
        .bearer_auth(ADMIN)
        .json(&json!({ "seconds": 3600 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        deadline_of(&extended) - deadline_of(&created),
        time::Duration::seconds(3600)
    );
    let bad = server
        .http
        .post(&url)
        .bearer_auth(ADMIN)
        .json(&json!({ "seconds": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    server.revoke(id).await;
    let ended = server
        .http
        .post(&url)
        .bearer_auth(ADMIN)
        .json(&json!({ "seconds": 60 }))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 409);
    let unknown = server
        .http
        .post(server.url("/api/sessions/00ff/extend"))
        .bearer_auth(ADMIN)
        .json(&json!({ "seconds": 60 }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_active_sessions_open_and_overdue_ones_are_expired() {
    let server = TestServer::start(&[]).await;
    let lasting = server.create_session(json!({ "ttl_seconds": 3600 })).await;
    let brief = server.create_session(json!({ "ttl_seconds": 2 })).await;
    let (id, token) = (
        lasting["id"].as_str().unwrap(),
        lasting["token"].as_str().unwrap(),
    );
    // Its desktop runs before the restart...
    drop(
        rfb_over_ws(
            ws_connect(
                &server,
                &format!("/api/sessions/{id}/vnc?token={token}"),
                &[],
            )
            .await,
        )
        .await,
    );
    let old_group = server.desktop_procs(id);
    let data = server.stop().await;
    assert!(
        old_group.members().is_empty(),
        "no desktop process survives the restart"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let server = TestServer::start_in(data, &[]).await;
    // ...and starts again when a viewer reconnects, with the token issued before.
    let mut rfb = rfb_over_ws(
        ws_connect(
            &server,
            &format!("/api/sessions/{id}/vnc?token={token}"),
            &[],
        )
        .await,
    )
    .await;
    rfb.request_update(false).await.unwrap();
    rfb.read_update().await.unwrap();
    assert_eq!(server.get_session(id).await["state"], "active");
    // The session that expired while the server was down is expired at start-up.
    let brief_id = brief["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.get_session(brief_id).await["state"] != "expired" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.get_session(brief_id).await["state"], "expired");
    drop(rfb);
    server.stop().await;
}
