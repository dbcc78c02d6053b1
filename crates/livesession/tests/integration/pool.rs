//! The warm pool: a session gets a desktop started before it existed, showing the session's
//! own start page; the next session gets another, fresh one, never the first one again.

use std::time::Duration;

use serde_json::json;

use crate::support::{PageServer, TestServer, logs, rfb_over_ws, wait_for_colour, ws_connect};

async fn wait_warm(server: &TestServer, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.readyz().await["warm_desktops"].as_u64() != Some(count) {
        assert!(tokio::time::Instant::now() < deadline, "the pool never held {count}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_get_fresh_warm_desktops_that_open_their_start_page() {
    let page = PageServer::start().await;
    let args = page.server_args();
    // Warm desktops show the default start page already; a session asking for another
    // page gets its desktop navigated there.
    let server =
        TestServer::start(&[&args[0], &args[1], "--warm-desktops", "1", "--start-url", &page.url]).await;
    wait_warm(&server, 1).await;

    let mut previous: Option<(String, Option<u64>)> = None;
    for round in 0..2 {
        let body = match round {
            0 => json!({}),
            _ => json!({ "start_url": format!("{}?another", page.url) }),
        };
        let created = server.create_session(body).await;
        let (id, token) = (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap());
        let ws = ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
        let mut rfb = rfb_over_ws(ws).await;
        let share = wait_for_colour(&mut rfb, (255, 0, 255), 0.5, Duration::from_secs(20)).await;
        assert!(share > 0.5, "round {round}: the session's start page is drawn ({share:.2})");
        assert!(
            logs().lines().any(|l| l.contains("warm desktop handed out") && l.contains(&id)),
            "round {round}: the session got a warm desktop"
        );
        let procs = server.desktop_procs(&id);
        let home = server.desktop_dir(&id).join("home");
        assert!(home.join("profile").is_dir(), "the warm directory now bears the session's id");
        assert!(!home.join("left-by-the-previous-session").exists(), "round {round}: a fresh home");
        std::fs::write(home.join("left-by-the-previous-session"), "x").unwrap();
        if let Some((prev_id, prev_ns)) = &previous {
            assert_ne!(prev_ns, &procs.pidns, "a different desktop");
            assert!(!server.desktop_dir(prev_id).exists());
        }
        drop(rfb);
        server.revoke(&id).await;
        assert!(procs.members().is_empty(), "a used warm desktop is stopped, not pooled again");
        previous = Some((id, procs.pidns));
        wait_warm(&server, 1).await;
    }
    server.stop().await;
}
