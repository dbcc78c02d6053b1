//! Saved browser state against real desktops: a login (cookie, localStorage, the tab's
//! URL) survives hibernation, a server restart and the end of a persistent session; a
//! reader's changes are not saved; nothing of it is in plaintext on disk; a tampered
//! profile starts a clean browser; the profiles API and cookie import.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{ADMIN, LOGIN_COOKIE, PageServer, TestServer, Ws, rfb_over_ws, wait_for_colour, ws_connect};

const SIGNED_IN: (u8, u8, u8) = (0, 160, 0);
const NOT_SIGNED_IN: (u8, u8, u8) = (200, 0, 0);
const LOGIN_FORM: (u8, u8, u8) = (0, 64, 255);

/// Runs `expression` in the session's page over the gateway's DevTools endpoint.
async fn evaluate(server: &TestServer, id: &str, expression: &str) -> Value {
    let token = server.mint_token(id).await;
    let mut ws: Ws = ws_connect(server, &format!("/api/sessions/{id}/cdp?token={token}"), &[]).await;
    let mut next = 0;
    let mut call = async |ws: &mut Ws, method: &str, params: Value, session: Option<&str>| -> Value {
        next += 1;
        let mut message = json!({"id": next, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        ws.send(Message::text(message.to_string())).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .expect("a DevTools reply in time")
                .unwrap()
                .unwrap();
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == next {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    };
    let targets = call(&mut ws, "Target.getTargets", json!({}), None).await;
    let page = targets["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page")["targetId"]
        .clone();
    let attached = call(&mut ws, "Target.attachToTarget", json!({"targetId": page, "flatten": true}), None).await;
    let session = attached["sessionId"].as_str().unwrap().to_owned();
    let result = call(
        &mut ws,
        "Runtime.evaluate",
        json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        Some(&session),
    )
    .await;
    let _ = ws.close(None).await;
    result["result"]["value"].clone()
}

/// Opens the session's desktop (starting or resuming it) and waits until `rgb` covers
/// most of the screen. Returns the open VNC connection.
async fn watch_until(server: &TestServer, id: &str, rgb: (u8, u8, u8), what: &str) -> livesession_desktop::rfb::RfbClient<tokio::io::DuplexStream> {
    let token = server.mint_token(id).await;
    let ws = ws_connect(server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    let mut rfb = rfb_over_ws(ws).await;
    let share = wait_for_colour(&mut rfb, rgb, 0.5, Duration::from_secs(60)).await;
    assert!(share >= 0.5, "{what}: the screen shows {rgb:?} on {share:.2} of it");
    rfb
}

/// Signs in on the test login page (open in the session's tab) as `user`.
async fn sign_in(server: &TestServer, id: &str, user: &str) {
    // A click on its button, as a person would (the button's id "submit" hides the
    // form's submit method).
    let script = format!("document.getElementById('user').value = {user:?}; setTimeout(() => document.getElementById('submit').click(), 20); true");
    assert_eq!(evaluate(server, id, &script).await, json!(true));
}

async fn wait_for_desktop(server: &TestServer, id: &str, state: &str, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let session = server.get_session(id).await;
        if session["desktop"] == state {
            return session;
        }
        assert!(tokio::time::Instant::now() < deadline, "desktop {state} within {limit:?}: {session}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every byte of every file under `dir` (links not followed).
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

fn args<'a>(page: &'a [String; 2], extra: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![page[0].as_str(), page[1].as_str(), "--warm-desktops", "0"];
    all.extend_from_slice(extra);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_survives_hibernation_and_a_server_restart_and_is_never_on_disk_in_plaintext() {
    let page = PageServer::start().await;
    let page_args = page.server_args();
    let server = TestServer::start(&args(&page_args, &["--idle-timeout", "2"])).await;
    let created = server.create_session(json!({"start_url": page.login_url()})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let user = "zq7user4hibernation";

    let rfb = watch_until(&server, &id, LOGIN_FORM, "the login form").await;
    sign_in(&server, &id, user).await;
    let mut rfb = rfb;
    let share = wait_for_colour(&mut rfb, SIGNED_IN, 0.5, Duration::from_secs(30)).await;
    assert!(share >= 0.5, "signed in ({share}): {:?} at {}", page.login_log(), evaluate(&server, &id, "location.href + ' ' + document.title").await);
    assert_eq!(evaluate(&server, &id, "localStorage.getItem('ls_test_login')").await, json!(user));
    let expires_at = server.get_session(&id).await["expires_at"].clone();
    drop(rfb);

    // Nobody left: after the idle timeout the desktop hibernates, the session stays.
    let procs = server.desktop_procs(&id);
    let hibernated = wait_for_desktop(&server, &id, "hibernated", Duration::from_secs(60)).await;
    assert_eq!(hibernated["state"], "active");
    assert_eq!(hibernated["expires_at"], expires_at, "hibernation leaves the deadline alone");
    assert!(hibernated["hibernated_at"].is_string(), "{hibernated}");
    assert!(procs.members().is_empty(), "the desktop's processes are gone");
    // At rest, nothing of the login is readable: not the cookie, not localStorage.
    let data = server.data_path();
    for place in [data.clone(), server.desktops_root()] {
        let leaks = files_containing(&place, user.as_bytes());
        assert!(leaks.is_empty(), "the login's value in plaintext under {}: {leaks:?}", place.display());
    }

    // The next viewer resumes it: signed in, same tab, same localStorage.
    let rfb = watch_until(&server, &id, SIGNED_IN, "signed in after resuming").await;
    assert_eq!(evaluate(&server, &id, "localStorage.getItem('ls_test_login')").await, json!(user));
    assert_eq!(evaluate(&server, &id, "location.href").await, json!(page.home_url()));
    assert_eq!(server.get_session(&id).await["desktop"], "ready");
    drop(rfb);

    // Hibernated again, then the server restarts: the session resumes on the new one.
    wait_for_desktop(&server, &id, "hibernated", Duration::from_secs(60)).await;
    let data = server.stop().await;
    let server = TestServer::start_in(data, &args(&page_args, &["--idle-timeout", "2"])).await;
    let session = server.get_session(&id).await;
    assert_eq!((session["state"].as_str(), session["desktop"].as_str()), (Some("active"), Some("hibernated")), "{session}");
    let _rfb = watch_until(&server, &id, SIGNED_IN, "signed in after a restart").await;
    assert_eq!(evaluate(&server, &id, "localStorage.getItem('ls_test_login')").await, json!(user));
    assert_eq!(
        page.login_log().homes.last(),
        Some(&true),
        "the page was loaded again, with the login cookie"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_writer_per_profile_and_a_readers_changes_are_not_saved() {
    let page = PageServer::start().await;
    let page_args = page.server_args();
    let server = TestServer::start(&args(&page_args, &[])).await;
    let login = page.login_url();
    let create = |profile: Value| server.admin_post("/api/sessions", json!({"start_url": login, "profile": profile}));

    let writer = create(json!({"name": "shop", "persist": true})).await;
    assert_eq!(writer.status(), 201);
    let writer: Value = writer.json().await.unwrap();
    let second = create(json!({"name": "shop", "persist": true})).await;
    assert_eq!(second.status(), 409);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "profile_in_use", "{body}");
    let bad = create(json!({"name": "../etc", "persist": true})).await;
    assert_eq!(bad.status(), 400);

    // The writer signs in; its end saves the profile.
    let writer_id = writer["id"].as_str().unwrap();
    let _rfb = watch_until(&server, writer_id, LOGIN_FORM, "the writer's login form").await;
    sign_in(&server, writer_id, "writerone").await;
    let mut rfb = _rfb;
    assert!(wait_for_colour(&mut rfb, SIGNED_IN, 0.5, Duration::from_secs(30)).await >= 0.5);
    drop(rfb);
    server.revoke(writer_id).await;
    let profile = server.admin_get("/api/profiles/shop").await;
    assert_eq!(profile["name"], "shop");
    assert_eq!(profile["in_use_by"], Value::Null);
    assert_eq!(profile["saved_by_session"], json!(writer_id));
    assert!(profile["stored_bytes"].as_u64().unwrap() > 0, "{profile}");
    assert_eq!(profile["tabs"], json!([page.home_url()]));
    let cookies = server.admin_get("/api/profiles/shop/cookies").await;
    assert!(
        cookies["cookies"].as_array().unwrap().iter().any(|c| c["name"] == LOGIN_COOKIE && c["value"] == "writerone"),
        "{cookies}"
    );

    // A reader starts from the profile, signs in as someone else, ends: not saved.
    let reader: Value = create(json!({"name": "shop"})).await.json().await.unwrap();
    let reader_id = reader["id"].as_str().unwrap();
    assert_eq!(server.get_session(reader_id).await["profile_persist"], json!(false));
    let _rfb = watch_until(&server, reader_id, SIGNED_IN, "the reader starts signed in").await;
    assert_eq!(evaluate(&server, reader_id, "document.getElementById('who').textContent").await, json!("Signed in as writerone"));
    evaluate(&server, reader_id, &format!("location.href = {:?}; true", page.login_url())).await;
    let mut rfb = _rfb;
    assert!(wait_for_colour(&mut rfb, LOGIN_FORM, 0.5, Duration::from_secs(30)).await >= 0.5);
    sign_in(&server, reader_id, "readertwo").await;
    assert!(wait_for_colour(&mut rfb, SIGNED_IN, 0.5, Duration::from_secs(30)).await >= 0.5);
    drop(rfb);
    server.revoke(reader_id).await;

    // The next session, a writer again now that the first has ended, finds writerone.
    let next = create(json!({"name": "shop", "persist": true})).await;
    assert_eq!(next.status(), 201, "the profile's writer ended: it is free");
    let next: Value = next.json().await.unwrap();
    let next_id = next["id"].as_str().unwrap();
    let _rfb = watch_until(&server, next_id, SIGNED_IN, "signed in from the profile").await;
    assert_eq!(evaluate(&server, next_id, "document.getElementById('who').textContent").await, json!("Signed in as writerone"));
    assert_eq!(server.admin_get("/api/profiles/shop").await["in_use_by"], json!(next_id));
    let delete = server.http_delete_admin("/api/profiles/shop").await;
    assert_eq!(delete, 409, "a profile in use is not deleted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_or_truncated_profile_starts_a_clean_browser_and_imported_cookies_sign_in() {
    let page = PageServer::start().await;
    let page_args = page.server_args();
    let server = TestServer::start(&args(&page_args, &[])).await;

    // The profiles API is the admin's.
    let anonymous = server.http_get_status("/api/profiles", None).await;
    assert_eq!(anonymous, 401);
    assert_eq!(server.admin_get("/api/profiles").await, json!({"profiles": []}));

    // An imported cookie signs the next session in before its page loads.
    let imported = server
        .admin_post(
            "/api/profiles/imp/cookies",
            json!({"cookies": [{"name": LOGIN_COOKIE, "value": "importedbob", "url": page.home_url()}]}),
        )
        .await;
    assert_eq!(imported.status(), 200);
    let bad = server.admin_post("/api/profiles/imp/cookies", json!({"cookies": [{"name": "x"}]})).await;
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert!(bad["error"]["message"].as_str().unwrap().contains("cookies[0].value"), "{bad}");
    let listed = server.admin_get("/api/profiles").await;
    assert_eq!(listed["profiles"][0]["name"], "imp", "{listed}");

    let session = server.create_session(json!({"start_url": page.home_url(), "profile": {"name": "imp", "persist": true}})).await;
    let id = session["id"].as_str().unwrap().to_owned();
    let rfb = watch_until(&server, &id, SIGNED_IN, "signed in by the imported cookie").await;
    assert_eq!(evaluate(&server, &id, "document.getElementById('who').textContent").await, json!("Signed in as importedbob"));
    drop(rfb);
    server.revoke(&id).await;

    // Tamper with the saved file: one byte in the middle. The next session starts clean.
    let file = server.data_path().join("profiles/profiles/imp.lsstate");
    let mut bytes = std::fs::read(&file).expect("the profile's file");
    let original = bytes.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    for (what, content) in [("tampered", bytes), ("truncated", original[..original.len() * 2 / 3].to_vec())] {
        std::fs::write(&file, &content).unwrap();
        let session = server.create_session(json!({"start_url": page.home_url(), "profile": {"name": "imp"}})).await;
        let id = session["id"].as_str().unwrap().to_owned();
        let rfb = watch_until(&server, &id, NOT_SIGNED_IN, &format!("a {what} profile: a clean browser")).await;
        drop(rfb);
        server.revoke(&id).await;
        assert!(crate::support::logs().contains("cannot be read"), "the log says the state was unreadable ({what})");
        let api = server.http_get_status("/api/profiles/imp/cookies", Some(ADMIN)).await;
        assert_eq!(api, 409, "the API tells an unreadable profile ({what})");
    }
    server.stop().await;
}
