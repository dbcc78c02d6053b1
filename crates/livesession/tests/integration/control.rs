//! The control channel: hello, desktop progress, heartbeat replies, errors, session end.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestServer, Ws, close_of, ws_connect};

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a message in time")
            .unwrap()
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_channel_reports_progress_answers_pings_and_ends_with_the_session() {
    let server = TestServer::start(&[]).await;
    let created = server.create_session(json!({})).await;
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;

    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "CONNECTED");
    assert_eq!(hello["session_id"], id);
    assert_eq!(hello["expires_at"], created["expires_at"]);
    assert!(hello["server_time"].is_string());
    let control = next_json(&mut ws).await;
    assert_eq!((control["type"].as_str(), control["holder"].as_str(), control["agents"].as_u64()), (Some("CONTROL"), Some("none"), Some(0)), "{control}");

    // Progress through the pieces, then ready.
    let mut steps = Vec::new();
    loop {
        let status = next_json(&mut ws).await;
        assert_eq!(status["type"], "DESKTOP_STATUS", "{status}");
        match status["status"].as_str().unwrap() {
            "starting" => steps.push(status["step"].as_str().unwrap().to_owned()),
            "ready" => break,
            other => panic!("unexpected desktop status {other}: {status}"),
        }
    }
    assert!(
        !steps.is_empty()
            && steps
                .iter()
                .all(|s| ["xvnc", "openbox", "chromium"].contains(&s.as_str())),
        "{steps:?}"
    );

    ws.send(Message::text(r#"{"type":"PING"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({ "type": "PONG" }));
    ws.send(Message::text(r#"{"type":"SHUTDOWN_EVERYTHING"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ERROR");
    ws.send(Message::text("not even json")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ERROR");
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ERROR");

    server.revoke(id).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "SESSION_ENDED", "reason": "revoked" })
    );
    assert_eq!(
        close_of(&mut ws, Duration::from_secs(5)).await,
        (4008, "session revoked".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn a_desktop_that_cannot_start_is_reported_by_piece_and_closed_with_4010() {
    let server = TestServer::start(&["--chromium", "/nonexistent/chromium"]).await;
    let created = server.create_session(json!({})).await;
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let mut ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "CONNECTED");
    let failed = loop {
        let status = next_json(&mut ws).await;
        if status["status"] == "failed" {
            break status;
        }
    };
    assert_eq!(failed["step"], "chromium");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("apt-get install -y chromium"),
        "{failed}"
    );
    let (code, reason) = close_of(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(code, 4010);
    assert!(reason.contains("Chromium"), "{reason}");

    // The VNC proxy says the same, by piece.
    let mut vnc = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc?token={token}"),
        &[],
    )
    .await;
    let (code, reason) = close_of(&mut vnc, Duration::from_secs(30)).await;
    assert_eq!(code, 4010);
    assert!(reason.contains("Chromium"), "{reason}");
    server.stop().await;
}
