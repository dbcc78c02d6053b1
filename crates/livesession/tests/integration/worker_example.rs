//! The example worker of docs/tasks.md (`docs/examples/worker.py`) against the real
//! server: it claims a steps task with a worker token, opens the session's DevTools with
//! the claim's agent token (which starts the real desktop), reports an event and
//! completes the task. Needs `python3`: without it the test fails.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ADMIN, TestServer};

/// The desktop starts on the worker's first DevTools request: be generous on a loaded
/// two-core machine.
const WORKER_LIMIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn the_example_worker_claims_reports_and_completes_a_steps_task() {
    let server = TestServer::start(&["--steps-runners", "0"]).await;
    let session = server.create_session(json!({})).await;
    let session_id = session["id"].as_str().unwrap();
    let created = server
        .admin_post(
            &format!("/api/sessions/{session_id}/tasks"),
            json!({"kind": "steps", "steps": [
                {"action": "goto", "url": "about:blank"},
                {"action": "screenshot"}
            ]}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let task: Value = created.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap();

    let minted = server
        .admin_post("/api/workers/tokens", json!({"name": "example-worker"}))
        .await;
    assert_eq!(minted.status(), 201);
    let worker_token = minted.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples/worker.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .arg("--once")
        .env("LIVESESSION_SERVER", &server.base)
        .env("LIVESESSION_WORKER_TOKEN", &worker_token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("python3 must be installed to run {script}: {e}"));
    let output = tokio::time::timeout(WORKER_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the example worker did not finish within {WORKER_LIMIT:?}"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the example worker failed ({}): {stderr}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );

    let response = server
        .http
        .get(server.url(&format!("/api/tasks/{task_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["state"], "succeeded", "{task:#}\nworker: {stderr}");
    assert_eq!(task["attempts"], 1);
    assert!(
        task["lease"].is_null(),
        "a finished task holds no lease: {task:#}"
    );
    let result = &task["result"];
    assert_eq!(result["worker"], "docs/examples/worker.py");
    assert_eq!(result["steps_received"], 2);
    assert_eq!(result["steps_run"], 0);
    // The session's own Chromium answered through the CDP URL with the agent token.
    let browser = result["browser"]
        .as_str()
        .unwrap_or_else(|| panic!("no browser in {result}"));
    assert!(
        browser.contains("Chrome/"),
        "a Chromium version: {browser:?}"
    );
    assert!(
        result["protocol_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{result}"
    );

    // The events: queued, claimed by the worker, its one progress event, done.
    let events = task["events"].as_array().unwrap();
    let said: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["state"].as_str().unwrap(),
                e["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(said.first().map(|e| e.0), Some("queued"), "{said:?}");
    assert!(
        said.iter()
            .any(|(state, m)| *state == "running" && m.starts_with("claimed by example-worker")),
        "{said:?}"
    );
    let progress =
        format!("example worker: 2 step(s) for {browser}; a real worker runs them over cdp_url");
    assert!(
        said.iter()
            .any(|(state, m)| *state == "running" && *m == progress),
        "{said:?}"
    );
    assert_eq!(said.last(), Some(&("succeeded", "done")), "{said:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    server.stop().await;
}
