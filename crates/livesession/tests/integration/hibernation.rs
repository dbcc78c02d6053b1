//! Idle hibernation, resume and the wait queue (docs/profiles.md): a viewer, a DevTools
//! client or a running task keeps a desktop up; when the last one leaves, the idle clock
//! runs and the desktop hibernates (its processes gone, the session still active with its
//! deadline unchanged); the next connection resumes it, also after a restart; with every
//! desktop in use a viewer waits in line while an idle desktop makes room.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{PageServer, TestServer, Ws, close_of, logs, rfb_over_ws, still_running, wait_for_colour, ws_connect};

const MAGENTA: (u8, u8, u8) = (255, 0, 255);

fn ids(created: &Value) -> (String, String) {
    (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned())
}

/// The next JSON text message, or `None` at the end of `limit` or of the stream.
pub(crate) async fn next_json(ws: &mut Ws, limit: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        if let Message::Text(text) = message {
            return Some(serde_json::from_str(&text).unwrap());
        }
    }
}

/// Opens the session's control channel and reads its CONNECTED.
pub(crate) async fn control(server: &TestServer, id: &str, token: &str) -> Ws {
    let mut ws = ws_connect(server, &format!("/api/sessions/{id}/control?token={token}"), &[]).await;
    let hello = next_json(&mut ws, Duration::from_secs(10)).await.expect("CONNECTED");
    assert_eq!(hello["type"], "CONNECTED");
    ws
}

/// Reads DESKTOP_STATUS messages until one says `until` (or a final one: failed,
/// stopped); returns them all.
pub(crate) async fn statuses_until(ws: &mut Ws, until: &str, limit: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(message) = next_json(ws, deadline - tokio::time::Instant::now()).await {
        if message["type"] != "DESKTOP_STATUS" {
            continue;
        }
        let status = message["status"].as_str().unwrap_or_default().to_owned();
        seen.push(message);
        if status == until || status == "failed" || status == "stopped" {
            break;
        }
    }
    seen
}

pub(crate) fn names(statuses: &[Value]) -> Vec<&str> {
    statuses.iter().map(|s| s["status"].as_str().unwrap_or("?")).collect()
}

/// Polls the session until its `desktop` is `want`; returns the session.
async fn wait_desktop(server: &TestServer, id: &str, want: &str, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let session = server.get_session(id).await;
        if session["desktop"] == want {
            return session;
        }
        assert!(tokio::time::Instant::now() < deadline, "the desktop never became {want}: {session:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A VNC viewer that has the session's page on screen.
async fn viewer_seeing_the_page(server: &TestServer, id: &str, token: &str) -> livesession_desktop::rfb::RfbClient<tokio::io::DuplexStream> {
    let ws = ws_connect(server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    let mut rfb = rfb_over_ws(ws).await;
    let share = wait_for_colour(&mut rfb, MAGENTA, 0.5, Duration::from_secs(30)).await;
    assert!(share > 0.5, "the session's page is on the screen ({share:.2})");
    rfb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_a_devtools_client_or_a_running_task_keeps_the_desktop_up_and_the_last_one_leaving_starts_the_idle_clock() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1], "--idle-timeout", "2", "--start-url", &page.url]).await;
    let created = server.create_session(json!({})).await;
    let (id, token) = ids(&created);

    // A viewer: the desktop stays up well past the idle timeout.
    let rfb = viewer_seeing_the_page(&server, &id, &token).await;
    let procs = server.desktop_procs(&id).members_with_start_times();
    let all = procs.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(still_running(&procs).len(), all, "a connected viewer keeps the desktop up");
    assert_eq!(server.get_session(&id).await["desktop"], "ready");

    // A DevTools client takes over from the viewer: still up.
    let mut cdp = ws_connect(&server, &format!("/api/sessions/{id}/cdp?token={token}"), &[]).await;
    let first = next_json(&mut cdp, Duration::from_secs(20)).await.expect("the relay speaks once connected");
    assert_eq!(first["method"], "Livesession.controlChanged");
    drop(rfb);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(still_running(&procs).len(), all, "a connected DevTools client keeps the desktop up");

    // A running task (the built-in steps runner) takes over from the DevTools client.
    let response = server
        .admin_post(&format!("/api/sessions/{id}/tasks"), json!({"kind": "steps", "steps": [{"action": "sleep", "ms": 12000}]}))
        .await;
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.admin_get(&format!("/api/tasks/{task_id}")).await["state"] != "running" {
        assert!(tokio::time::Instant::now() < deadline, "the task never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(cdp);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(server.admin_get(&format!("/api/tasks/{task_id}")).await["state"], "running", "the task still runs");
    assert_eq!(still_running(&procs).len(), all, "a running task keeps the desktop up");

    // The task ends: nothing is left, the clock runs, the desktop hibernates.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.admin_get(&format!("/api/tasks/{task_id}")).await["state"] != "succeeded" {
        assert!(tokio::time::Instant::now() < deadline, "the task never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let session = wait_desktop(&server, &id, "hibernated", Duration::from_secs(30)).await;
    assert_eq!(still_running(&procs), Vec::<String>::new(), "a hibernated desktop's processes are gone");
    assert_eq!(session["state"], "active", "hibernation does not end the session");
    assert_eq!(session["expires_at"], created["expires_at"], "nor move its deadline");
    assert!(session["hibernated_at"].is_string(), "the store records when: {session:#}");
    let ready = server.readyz().await;
    assert_eq!(ready["capacity"]["live"], 0, "{ready:#}");
    assert_eq!(ready["capacity"]["hibernated"], 1, "{ready:#}");
    assert!(
        logs().lines().any(|l| l.contains("desktop hibernating") && l.contains(&id) && l.contains("idle timeout")),
        "the log says why it hibernated"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_desktop_resumes_for_the_next_viewer_and_after_a_restart() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let argv = [args[0].as_str(), args[1].as_str(), "--idle-timeout", "2", "--start-url", page.url.as_str()];
    let server = TestServer::start(&argv).await;
    let created = server.create_session(json!({ "ttl_seconds": 3600 })).await;
    let (id, token) = ids(&created);

    // First use, then everyone leaves: it hibernates.
    let mut ws = control(&server, &id, &token).await;
    let first = statuses_until(&mut ws, "ready", Duration::from_secs(60)).await;
    assert_eq!(names(&first).last(), Some(&"ready"), "{first:?}");
    assert!(names(&first).contains(&"starting"), "a first start says starting: {first:?}");
    let rfb = viewer_seeing_the_page(&server, &id, &token).await;
    let procs = server.desktop_procs(&id).members_with_start_times();
    drop((rfb, ws));
    wait_desktop(&server, &id, "hibernated", Duration::from_secs(30)).await;
    assert_eq!(still_running(&procs), Vec::<String>::new(), "hibernated: its processes are gone");

    // The next viewer resumes it: "resuming" (with the steps), then "ready", and a desktop
    // that works.
    let mut ws = control(&server, &id, &token).await;
    let resumed = statuses_until(&mut ws, "ready", Duration::from_secs(60)).await;
    let seen = names(&resumed);
    assert_eq!(seen.last(), Some(&"ready"), "{resumed:?}");
    assert_eq!(seen.first(), Some(&"resuming"), "a resume says so first: {resumed:?}");
    assert!(!seen.contains(&"starting"), "a resume is not a fresh start: {resumed:?}");
    assert!(resumed.iter().any(|s| s["status"] == "resuming" && s["step"].is_string()), "with its steps: {resumed:?}");
    let rfb = viewer_seeing_the_page(&server, &id, &token).await;
    let session = server.get_session(&id).await;
    assert_eq!(session["desktop"], "ready");
    assert!(session["hibernated_at"].is_null(), "resumed: {session:#}");

    // A graceful shutdown hibernates the running desktop (its viewers are still there),
    // so the restarted server finds it hibernated.
    let procs = server.desktop_procs(&id).members_with_start_times();
    let data = server.stop().await;
    assert_eq!(still_running(&procs), Vec::<String>::new(), "shutdown stopped the desktop");
    drop((rfb, ws));
    let server = TestServer::start_in(data, &argv).await;
    let session = server.get_session(&id).await;
    assert_eq!(session["desktop"], "hibernated", "after a restart: {session:#}");
    assert_eq!(session["state"], "active");
    assert_eq!(session["expires_at"], created["expires_at"]);
    assert_eq!(server.readyz().await["capacity"]["hibernated"], 1);

    // And it resumes there too.
    let mut ws = control(&server, &id, &token).await;
    let resumed = statuses_until(&mut ws, "ready", Duration::from_secs(60)).await;
    assert_eq!(names(&resumed).first(), Some(&"resuming"), "{resumed:?}");
    assert_eq!(names(&resumed).last(), Some(&"ready"), "{resumed:?}");
    let rfb = viewer_seeing_the_page(&server, &id, &token).await;
    assert_eq!(server.get_session(&id).await["desktop"], "ready");
    drop((rfb, ws));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_desktop_in_use_a_viewer_waits_in_line_until_an_idle_desktop_makes_room() {
    // Idle desktops hibernate only to make room here (the idle timeout is long).
    let server = TestServer::start(&["--max-desktops", "2", "--max-queued", "2", "--idle-timeout", "600"]).await;
    let sessions: Vec<(String, String)> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(ids(&server.create_session(json!({})).await));
        }
        v
    };
    let [a, b, c, d, e] = [&sessions[0], &sessions[1], &sessions[2], &sessions[3], &sessions[4]];

    // Two viewers take both desktops.
    let mut ws_a = control(&server, &a.0, &a.1).await;
    let mut ws_b = control(&server, &b.0, &b.1).await;
    for ws in [&mut ws_a, &mut ws_b] {
        let seen = statuses_until(ws, "ready", Duration::from_secs(60)).await;
        assert_eq!(names(&seen).last(), Some(&"ready"), "{seen:?}");
    }
    let procs_a = server.desktop_procs(&a.0).members_with_start_times();
    assert!(!procs_a.is_empty());

    // A third and a fourth wait in line, told their place.
    let mut ws_c = control(&server, &c.0, &c.1).await;
    let seen = statuses_until(&mut ws_c, "queued", Duration::from_secs(10)).await;
    assert_eq!(seen.last().map(|s| (s["status"].clone(), s["position"].clone())), Some((json!("queued"), json!(1))), "{seen:?}");
    let mut ws_d = control(&server, &d.0, &d.1).await;
    let seen = statuses_until(&mut ws_d, "queued", Duration::from_secs(10)).await;
    assert_eq!(seen.last().map(|s| s["position"].clone()), Some(json!(2)), "{seen:?}");
    let ready = server.readyz().await;
    assert_eq!(ready["capacity"]["live"], 2, "{ready:#}");
    assert_eq!(ready["capacity"]["queued_sessions"], 2, "{ready:#}");
    assert_eq!(ready["capacity"]["queued"], 2, "two connections wait: {ready:#}");
    assert_eq!(server.get_session(&c.0).await["desktop"], "queued");

    // The line is full: a new session is refused with Retry-After, and so is a viewer of
    // a session not in line yet.
    let refused = server.admin_post("/api/sessions", json!({})).await;
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 0);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "desktops_busy", "{body:#}");
    let mut ws_e = control(&server, &e.0, &e.1).await;
    let seen = statuses_until(&mut ws_e, "queued", Duration::from_secs(10)).await;
    assert_eq!(names(&seen), ["failed"], "{seen:?}");
    assert!(seen[0]["error"].as_str().unwrap().contains("wait queue is full"), "{seen:?}");
    let (code, _) = close_of(&mut ws_e, Duration::from_secs(10)).await;
    assert_eq!(code, 4010);

    // A's viewer leaves: its idle desktop is hibernated to make room, and the first in
    // line is served; the second moves up.
    drop(ws_a);
    let served = statuses_until(&mut ws_c, "ready", Duration::from_secs(90)).await;
    let seen = names(&served);
    assert_eq!(seen.last(), Some(&"ready"), "{served:?}");
    assert!(seen.contains(&"starting"), "{served:?}");
    let moved = statuses_until(&mut ws_d, "queued", Duration::from_secs(30)).await;
    assert_eq!(moved.last().map(|s| s["position"].clone()), Some(json!(1)), "{moved:?}");
    let session_a = server.get_session(&a.0).await;
    assert_eq!(session_a["desktop"], "hibernated", "{session_a:#}");
    assert_eq!(session_a["state"], "active");
    assert_eq!(still_running(&procs_a), Vec::<String>::new(), "A's desktop made room");
    assert_eq!(server.get_session(&b.0).await["desktop"], "ready", "B's viewer keeps B");
    assert!(
        logs().lines().any(|l| l.contains("desktop hibernating") && l.contains(&a.0) && l.contains("making room")),
        "the log says why A hibernated"
    );

    // D gives up waiting: it leaves the line, and there is room in it again.
    drop(ws_d);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.readyz().await["capacity"]["queued_sessions"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "D never left the line");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(server.get_session(&d.0).await["desktop"], "queued");
    server.create_session(json!({})).await;
    drop((ws_b, ws_c));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_leaving_during_a_hibernation_leaves_nothing_in_line_and_a_restart_deletes_ended_sessions_states() {
    let argv = ["--idle-timeout", "2"];
    let server = TestServer::start(&argv).await;
    let (id, token) = ids(&server.create_session(json!({ "ttl_seconds": 3600 })).await);
    let mut ws = control(&server, &id, &token).await;
    let first = statuses_until(&mut ws, "ready", Duration::from_secs(60)).await;
    assert_eq!(names(&first).last(), Some(&"ready"), "{first:?}");
    drop(ws);

    // A connection arrives while the desktop is being saved, and leaves before the save ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.get_session(&id).await["desktop"] != "hibernating" {
        assert!(tokio::time::Instant::now() < deadline, "the desktop never hibernated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws = control(&server, &id, &token).await;
    let seen = statuses_until(&mut ws, "hibernating", Duration::from_secs(10)).await;
    assert_eq!(names(&seen).last(), Some(&"hibernating"), "{seen:?}");
    drop(ws);
    // Give the server a moment to see the connection gone (the save is still running).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.get_session(&id).await["desktop"], "hibernating", "the save outlasts the connection here");

    // The save ends with the session at rest: not back in line, not resumed for nobody.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut states = Vec::new();
    loop {
        let desktop = server.get_session(&id).await["desktop"].as_str().unwrap().to_owned();
        if states.last() != Some(&desktop) {
            states.push(desktop.clone());
        }
        if desktop == "hibernated" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never hibernated: {states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(states, ["hibernating", "hibernated"], "nobody waits for it");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = server.readyz().await;
    assert_eq!(ready["capacity"]["queued"], 0, "{ready:#}");
    assert_eq!(ready["capacity"]["queued_sessions"], 0, "{ready:#}");
    assert_eq!(server.get_session(&id).await["desktop"], "hibernated");

    // A session ended in the store, with an own saved state left behind (as a restart or
    // a lagged cleanup leaves it): the restarted server deletes it, and keeps the active one's.
    let (ended, _) = ids(&server.create_session(json!({})).await);
    server.revoke(&ended).await;
    let saved = server.data_path().join("profiles/sessions");
    let own = saved.join(format!("{id}.lsstate"));
    assert!(own.exists(), "the hibernated session has its own state");
    let data = server.stop().await;
    std::fs::copy(&own, saved.join(format!("{ended}.lsstate"))).unwrap();
    std::fs::copy(&own, saved.join("no-such-session.lsstate")).unwrap();
    let server = TestServer::start_in(data, &argv).await;
    assert!(!saved.join(format!("{ended}.lsstate")).exists(), "the ended session's state is deleted");
    assert!(!saved.join("no-such-session.lsstate").exists(), "an unknown session's state is deleted");
    assert!(own.exists(), "the active session keeps its state");
    assert_eq!(server.get_session(&id).await["desktop"], "hibernated");
    server.stop().await;
}
