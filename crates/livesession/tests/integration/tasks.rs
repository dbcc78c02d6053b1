//! Tasks: the API, the queue's order and leases through the worker protocol, live
//! TASK_UPDATEs with replay, the built-in steps runner and agent runner in the session's
//! real browser (the model's API is the one stand-in), and the paid goal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{ADMIN, TestServer, Ws, ws_connect};

// ---------------------------------------------------------------- helpers

async fn post_task(server: &TestServer, session: &str, body: Value) -> reqwest::Response {
    server.admin_post(&format!("/api/sessions/{session}/tasks"), body).await
}

async fn new_task(server: &TestServer, session: &str, body: Value) -> Value {
    let response = post_task(server, session, body).await;
    assert_eq!(response.status(), 201, "create task");
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["state"], "queued");
    task
}

async fn get_task(server: &TestServer, id: &str) -> Value {
    server.admin_get(&format!("/api/tasks/{id}")).await
}

/// Polls the task until `done` holds (or panics after `limit`, showing the task).
async fn wait_task(server: &TestServer, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let task = get_task(server, id).await;
        if done(&task) {
            return task;
        }
        assert!(tokio::time::Instant::now() < deadline, "task never got there: {task:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_final(task: &Value) -> bool {
    matches!(task["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

async fn worker_token(server: &TestServer, name: &str) -> String {
    let response = server.admin_post("/api/workers/tokens", json!({ "name": name })).await;
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned()
}

async fn worker_post(server: &TestServer, token: &str, path: &str, body: Value) -> reqwest::Response {
    server.http.post(server.url(path)).bearer_auth(token).json(&body).send().await.unwrap()
}

/// A claim that must return a task.
async fn claim(server: &TestServer, token: &str, kinds: &[&str], wait: u64) -> Value {
    let response = worker_post(server, token, "/api/workers/claim", json!({ "kinds": kinds, "wait_seconds": wait })).await;
    assert_eq!(response.status(), 200, "a task was claimed");
    response.json().await.unwrap()
}

/// Opens the session's control channel and reads up to CONNECTED.
pub async fn control(server: &TestServer, session: &str, token: &str, after: Option<u64>) -> Ws {
    let after = after.map(|c| format!("&tasks_after={c}")).unwrap_or_default();
    let mut ws = ws_connect(server, &format!("/api/sessions/{session}/control?token={token}{after}"), &[]).await;
    let hello = next_json(&mut ws, Duration::from_secs(10)).await.expect("CONNECTED");
    assert_eq!(hello["type"], "CONNECTED");
    ws
}

async fn next_json(ws: &mut Ws, limit: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        if let Message::Text(text) = message {
            return Some(serde_json::from_str(&text).unwrap());
        }
    }
}

/// Reads TASK_UPDATEs (answering nothing else) until `stop` holds for one, or `limit`.
pub async fn task_updates(ws: &mut Ws, limit: Duration, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut updates = Vec::new();
    while let Some(message) = next_json(ws, deadline - tokio::time::Instant::now()).await {
        if message["type"] == "TASK_UPDATE" {
            let done = stop(&message);
            updates.push(message);
            if done {
                break;
            }
        }
    }
    updates
}

fn final_update(update: &Value) -> bool {
    is_final(update)
}

/// A page the desktops open: a form whose submission the server answers with a code.
struct FormServer {
    base: String,
    port: u16,
    submitted: Arc<Mutex<Vec<String>>>,
}

const FORM: &str = r#"<!doctype html><html><head><title>Sign-up form</title></head><body>
<h1>Sign up</h1>
<form action="/submit" method="get"><label>Name <input id="name" name="name"></label>
<button type="submit">Submit</button></form></body></html>"#;

impl FormServer {
    async fn start() -> Self {
        let submitted = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/form", axum::routing::get(|| async { axum::response::Html(FORM) }))
            .route(
                "/submit",
                axum::routing::get(
                    |State(s): State<Arc<Mutex<Vec<String>>>>, axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| async move {
                        let name = q.get("name").cloned().unwrap_or_default();
                        s.lock().unwrap().push(name.clone());
                        let code = name.len() * 7;
                        axum::response::Html(format!(
                            "<!doctype html><title>Done</title><p id=\"answer\">Thanks, {name}! Your code is {code}</p>"
                        ))
                    },
                ),
            )
            .with_state(submitted.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base: format!("http://127.0.0.1:{port}"), port, submitted }
    }

    fn submissions(&self) -> Vec<String> {
        self.submitted.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- the API

#[tokio::test]
async fn bad_task_input_is_refused_naming_the_step_and_field_and_roles_are_enforced() {
    let server = TestServer::start(&["--steps-runners", "0"]).await;
    let session = server.create_session(json!({})).await;
    let id = session["id"].as_str().unwrap();

    let bad = |body: Value| {
        let server = &server;
        async move {
            let response = post_task(server, id, body).await;
            assert_eq!(response.status(), 400);
            let body: Value = response.json().await.unwrap();
            body["error"]["message"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(
        bad(json!({"kind": "steps", "steps": [{"action": "goto", "url": "http://a/"}, {"action": "type", "selector": "#q"}]})).await,
        "steps[1].text: required"
    );
    assert!(bad(json!({"kind": "steps", "steps": [{"action": "teleport"}]})).await.starts_with("steps[0].action: unknown action"));
    assert!(bad(json!({"kind": "agent", "goal": ""})).await.starts_with("goal:"));
    assert!(bad(json!({"kind": "nope"})).await.starts_with("kind:"));

    // A view token reads; it cannot create or cancel. The interactive token creates.
    let view = server.admin_post(&format!("/api/sessions/{id}/links"), json!({"role": "view"})).await;
    assert_eq!(view.status(), 201);
    let interactive = session["token"].as_str().unwrap();
    let created = server
        .http
        .post(server.url(&format!("/api/sessions/{id}/tasks")))
        .bearer_auth(interactive)
        .json(&json!({"kind": "agent", "goal": "find the weather in Paris"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let task: Value = created.json().await.unwrap();
    assert_eq!(task["kind"], "agent");
    assert_eq!(task["input"]["goal"], "find the weather in Paris");

    // Another session's token sees nothing of this one's tasks.
    let other = server.create_session(json!({})).await;
    let foreign = server
        .http
        .get(server.url(&format!("/api/tasks/{}", task["id"].as_str().unwrap())))
        .bearer_auth(other["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
    let listed: Value = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/tasks")))
        .bearer_auth(interactive)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1);

    // With no model configured and no worker, the agent task waits and /readyz says why.
    let ready = server.readyz().await;
    assert_eq!(ready["status"], "degraded", "{ready:#}");
    assert!(ready["degraded"][0].as_str().unwrap().contains("agent task(s) queued and no worker"), "{ready:#}");
    assert_eq!(ready["tasks"]["kinds"]["agent"]["queued"], 1);

    // Cancelled by the person; a second cancel is a conflict.
    let cancel_url = server.url(&format!("/api/tasks/{}/cancel", task["id"].as_str().unwrap()));
    let cancelled = server.http.post(&cancel_url).bearer_auth(interactive).send().await.unwrap();
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["error"], "cancelled by the person");
    let again = server.http.post(&cancel_url).bearer_auth(interactive).send().await.unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(server.readyz().await["status"], "ready");
    server.stop().await;
}

// ---------------------------------------------------------------- the queue, through workers

#[tokio::test]
async fn a_worker_that_dies_loses_its_task_to_the_next_and_its_late_writes_are_refused() {
    let server = TestServer::start(&["--steps-runners", "0", "--task-lease", "2", "--task-max-attempts", "3"]).await;
    let session = server.create_session(json!({})).await;
    let id = session["id"].as_str().unwrap();
    let task = new_task(&server, id, json!({"kind": "steps", "steps": [{"action": "screenshot"}]})).await;
    let task_id = task["id"].as_str().unwrap();

    let first = worker_token(&server, "worker-a").await;
    let second = worker_token(&server, "worker-b").await;
    let claimed = claim(&server, &first, &["steps"], 5).await;
    assert_eq!(claimed["task"]["id"], task_id);
    assert_eq!(claimed["task"]["attempts"], 1);
    assert_eq!(claimed["cdp_url"], format!("ws://{}/api/sessions/{id}/cdp", server.addr));
    let lease_a = claimed["lease"]["id"].as_str().unwrap().to_owned();
    // The agent token opens this session's DevTools discovery, and no other session's.
    let agent_token = claimed["token"].as_str().unwrap();
    let other = server.create_session(json!({})).await;
    let foreign = server
        .http
        .get(server.url(&format!("/api/sessions/{}/cdp/json/version", other["id"].as_str().unwrap())))
        .bearer_auth(agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 401);

    // Worker A dies (no heartbeat). After its lease, B gets the task.
    let again = claim(&server, &second, &["steps"], 20).await;
    assert_eq!(again["task"]["id"], task_id);
    assert_eq!(again["task"]["attempts"], 2);
    let lease_b = again["lease"]["id"].as_str().unwrap().to_owned();
    assert_ne!(lease_a, lease_b);

    let progress = worker_post(&server, &second, &format!("/api/tasks/{task_id}/events"), json!({"lease": lease_b, "message": "working", "step": 0})).await;
    assert_eq!(progress.status(), 200);
    let done = worker_post(&server, &second, &format!("/api/tasks/{task_id}/complete"), json!({"lease": lease_b, "result": {"ok": true}})).await;
    assert_eq!(done.status(), 200);

    // A comes back: everything it says is refused, and nothing changes.
    for (path, body) in [
        ("complete", json!({"lease": lease_a, "result": {"late": true}})),
        ("heartbeat", json!({"lease": lease_a})),
        ("fail", json!({"lease": lease_a, "error": "late"})),
    ] {
        let late = worker_post(&server, &first, &format!("/api/tasks/{task_id}/{path}"), body).await;
        assert_eq!(late.status(), 409, "late {path}");
        assert_eq!(late.json::<Value>().await.unwrap()["error"]["code"], "lease_lost");
    }
    let task = get_task(&server, task_id).await;
    assert_eq!(task["state"], "succeeded");
    assert_eq!(task["result"], json!({"ok": true}));
    let messages: Vec<&str> = task["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages.iter().any(|m| m.contains("worker lost")), "{messages:?}");

    // A task whose every worker dies fails as "worker lost" after its attempts.
    let doomed = new_task(&server, id, json!({"kind": "steps", "steps": [{"action": "screenshot"}]})).await;
    for attempt in 1..=3 {
        let c = claim(&server, &first, &["steps"], 20).await;
        assert_eq!(c["task"]["id"], doomed["id"]);
        assert_eq!(c["task"]["attempts"], attempt);
    }
    let failed = wait_task(&server, doomed["id"].as_str().unwrap(), Duration::from_secs(20), is_final).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"], "worker lost");
    server.stop().await;
}

#[tokio::test]
async fn twenty_tasks_over_five_sessions_run_in_order_and_cancels_hold() {
    let server = TestServer::start(&["--steps-runners", "0"]).await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(server.create_session(json!({})).await["id"].as_str().unwrap().to_owned());
    }
    // Four tasks per session, created interleaved.
    let mut created: HashMap<String, Vec<String>> = HashMap::new();
    for n in 0..20 {
        let session = &sessions[n % 5];
        let task = new_task(&server, session, json!({"kind": "steps", "steps": [{"action": "sleep", "ms": n}]})).await;
        created.entry(session.clone()).or_default().push(task["id"].as_str().unwrap().to_owned());
    }
    // Cancel a queued one (the last of session 0) before any worker runs.
    let queued_cancel = created[&sessions[0]][3].clone();
    let r = server.admin_post(&format!("/api/tasks/{queued_cancel}/cancel"), json!({"reason": "not needed"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "cancelled by the operator: not needed");

    // Two workers claim and complete concurrently; the order per session is recorded.
    let token = worker_token(&server, "pool").await;
    let order: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let running_cancel: Arc<Mutex<Option<String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..2 {
        let (http, base, token, order, running_cancel) =
            (server.http.clone(), server.base.clone(), token.clone(), order.clone(), running_cancel.clone());
        let cancel_target = created[&sessions[1]][1].clone();
        workers.push(tokio::spawn(async move {
            loop {
                let response = http
                    .post(format!("{base}/api/workers/claim"))
                    .bearer_auth(&token)
                    .json(&json!({"kinds": ["steps"], "wait_seconds": 2}))
                    .send()
                    .await
                    .unwrap();
                if response.status() == 204 {
                    return;
                }
                assert_eq!(response.status(), 200);
                let claimed: Value = response.json().await.unwrap();
                let task_id = claimed["task"]["id"].as_str().unwrap().to_owned();
                let session = claimed["task"]["session_id"].as_str().unwrap().to_owned();
                order.lock().unwrap().push((session, task_id.clone()));
                let lease = claimed["lease"]["id"].as_str().unwrap();
                if task_id == cancel_target {
                    // Cancelled while running: the worker's completion is refused.
                    let r = http.post(format!("{base}/api/tasks/{task_id}/cancel")).bearer_auth(ADMIN).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    *running_cancel.lock().unwrap() = Some(task_id.clone());
                }
                tokio::time::sleep(Duration::from_millis(20 * (w + 1))).await;
                let done = http
                    .post(format!("{base}/api/tasks/{task_id}/complete"))
                    .bearer_auth(&token)
                    .json(&json!({"lease": lease, "result": {"by": w}}))
                    .send()
                    .await
                    .unwrap();
                let expected = if task_id == cancel_target { 409 } else { 200 };
                assert_eq!(done.status(), expected, "completion of {task_id}");
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 19, "every task but the cancelled queued one was claimed once");
    for session in &sessions {
        let ran: Vec<&String> = order.iter().filter(|(s, _)| s == session).map(|(_, t)| t).collect();
        let expected: Vec<&String> = created[session].iter().filter(|t| **t != queued_cancel).collect();
        assert_eq!(ran, expected, "tasks of {session} ran in the order they were created");
    }
    let running_cancel = running_cancel.lock().unwrap().clone().expect("the running cancel happened");
    assert_eq!(get_task(&server, &running_cancel).await["state"], "cancelled");
    assert_eq!(get_task(&server, &queued_cancel).await["state"], "cancelled");
    server.stop().await;
}

// ---------------------------------------------------------------- the paid goal

#[tokio::test]
async fn a_paid_checkout_with_a_goal_starts_the_agent_task() {
    let stripe = crate::payments::fake_stripe().await;
    let server = TestServer::start(&[
        "--stripe-secret-key",
        "sk_test_x",
        "--stripe-webhook-secret",
        "whsec_integration",
        "--stripe-api-base",
        &stripe,
    ])
    .await;
    let started = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(server.url("/api/checkout"))
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("goal=Book+a+table+for+two+at+8pm")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 303);
    // Before the payment: no session to run in, no task.
    let tasks = server.admin_get("/api/tasks").await;
    assert!(tasks["tasks"].as_array().unwrap().is_empty());

    let event = crate::payments::completed("cs_fake_1", "pi_fake_1", 100);
    assert_eq!(crate::payments::deliver(&server, event.clone()).await, 200);
    // A redelivery starts nothing more.
    assert_eq!(crate::payments::deliver(&server, event).await, 200);
    let tasks = server.admin_get("/api/tasks").await;
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["kind"], "agent");
    assert_eq!(tasks[0]["input"]["goal"], "Book a table for two at 8pm");
    let session = server.admin_get("/api/sessions?checkout_session_id=cs_fake_1").await;
    assert_eq!(tasks[0]["session_id"], session["sessions"][0]["id"]);

    // A goal that is too long is refused before anything is paid.
    let long = format!("goal={}", "x".repeat(4001));
    let refused = server
        .http
        .post(server.url("/api/checkout"))
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(long)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "invalid_goal");
    server.stop().await;
}

// ---------------------------------------------------------------- the steps runner, live

#[tokio::test]
async fn a_steps_task_fills_a_form_and_a_reconnecting_viewer_misses_nothing() {
    let form = FormServer::start().await;
    let port = form.port.to_string();
    let server = TestServer::start(&["--desktop-host-ports", &port, "--steps-runners", "1", "--step-timeout", "5"]).await;
    let session = server.create_session(json!({ "start_url": format!("{}/form", form.base) })).await;
    let id = session["id"].as_str().unwrap();
    let token = session["token"].as_str().unwrap();

    // Viewer A watches throughout; viewer B drops after the first updates and comes back.
    let mut a = control(&server, id, token, None).await;
    let mut b = control(&server, id, token, None).await;
    let task = new_task(&server, id, json!({"kind": "steps", "steps": [
        {"action": "goto", "url": format!("{}/form", form.base)},
        {"action": "type", "selector": "#name", "text": "Ada"},
        {"action": "sleep", "ms": 1500},
        {"action": "click", "text": "Submit"},
        {"action": "wait_for", "selector": "#answer", "timeout_ms": 20000},
        {"action": "extract", "selector": "#answer", "name": "answer"},
        {"action": "assert_text", "text": "Your code is 21"}
    ]})).await;
    let task_id = task["id"].as_str().unwrap();

    let limit = Duration::from_secs(120);
    let b_first = task_updates(&mut b, limit, |u| u["state"] == "running" && u["step"] == 1).await;
    let seen = b_first.last().expect("B saw updates")["cursor"].as_u64().unwrap();
    b.close(None).await.unwrap();
    let a_all = task_updates(&mut a, limit, final_update).await;
    let mut b = control(&server, id, token, Some(seen)).await;
    let b_rest = task_updates(&mut b, Duration::from_secs(20), final_update).await;

    let last = a_all.last().expect("A saw updates");
    assert_eq!(last["state"], "succeeded", "{a_all:#?}");
    let key = |u: &Value| (u["task_id"].as_str().unwrap().to_owned(), u["seq"].as_u64().unwrap());
    let a_keys: Vec<_> = a_all.iter().map(key).collect();
    let b_keys: Vec<_> = b_first.iter().chain(&b_rest).map(key).collect();
    assert_eq!(a_keys, b_keys, "the reconnected viewer got every update once, in order");
    let seqs: Vec<u64> = a_keys.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    // One event per step, each with a thumbnail that the viewer's token can fetch.
    let stepped: Vec<&Value> = a_all.iter().filter(|u| u["step"].is_u64()).collect();
    assert!(stepped.len() >= 7, "{a_all:#?}");
    let shot = stepped[0]["screenshot_url"].as_str().expect("a thumbnail");
    let image = server.http.get(server.url(&format!("{shot}?token={token}"))).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/jpeg");
    assert_eq!(&image.bytes().await.unwrap()[..2], &[0xFF, 0xD8]);

    let task = get_task(&server, task_id).await;
    assert_eq!(task["state"], "succeeded", "{task:#}");
    assert_eq!(task["result"]["extracted"]["answer"], "Thanks, Ada! Your code is 21");
    assert_eq!(form.submissions(), vec!["Ada".to_owned()]);

    // A failing step names itself.
    let failing = new_task(&server, id, json!({"kind": "steps", "steps": [
        {"action": "click", "selector": "#missing"}
    ]})).await;
    let failed = wait_task(&server, failing["id"].as_str().unwrap(), Duration::from_secs(90), is_final).await;
    assert_eq!(failed["state"], "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.starts_with("step 1 (click \"#missing\")"), "{error}");
    server.stop().await;
}

// ---------------------------------------------------------------- the agent runner

/// What the stand-in answers: the scripted tool calls, or a fault.
#[derive(Clone, Copy, PartialEq)]
enum ModelMode {
    Script,
    Error500,
    Garbage,
    UnknownTool,
}

struct StandIn {
    mode: ModelMode,
    /// Requests seen (bodies), and whether the person had handed back before each.
    requests: Vec<(Value, bool)>,
    handed_back: bool,
    turn: usize,
    form: String,
    problems: Vec<String>,
}

const MODEL: &str = "stand-in-model-1";
const API_KEY: &str = "sk-standin-9f3b2a7c5d1e";

/// A stand-in for an OpenAI-compatible `POST /v1/chat/completions`: checks the documented
/// request and answers a scripted sequence of tool calls.
async fn stand_in_model(state: Arc<Mutex<StandIn>>) -> String {
    async fn answer(
        State(state): State<Arc<Mutex<StandIn>>>,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut s = state.lock().unwrap();
        let request: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return (axum::http::StatusCode::BAD_REQUEST, format!("not JSON: {e}")).into_response(),
        };
        let mut problems = Vec::new();
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {API_KEY}")) {
            problems.push("missing or wrong Authorization bearer".to_owned());
        }
        if request["model"] != MODEL {
            problems.push(format!("model is {}", request["model"]));
        }
        let messages = request["messages"].as_array().cloned().unwrap_or_default();
        if messages.first().map(|m| m["role"].clone()) != Some(json!("system")) {
            problems.push("no system message first".into());
        }
        if !messages.iter().any(|m| m.to_string().contains("Sign up as Grace")) {
            problems.push("the goal is not in the messages".into());
        }
        let tools: Vec<String> = request["tools"]
            .as_array()
            .map(|t| t.iter().filter(|t| t["type"] == "function" && t["function"]["parameters"].is_object()).filter_map(|t| t["function"]["name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        for needed in ["goto", "click", "type", "press", "ask_person", "finish"] {
            if !tools.iter().any(|t| t == needed) {
                problems.push(format!("no function tool {needed} with parameters"));
            }
        }
        let last_user = messages.iter().rev().find(|m| m["role"] == "user").cloned().unwrap_or_default();
        let image = last_user["content"].as_array().and_then(|parts| {
            parts.iter().find(|p| p["type"] == "image_url").and_then(|p| p["image_url"]["url"].as_str().map(str::to_owned))
        });
        match image.as_deref().and_then(|u| u.strip_prefix("data:image/jpeg;base64,")) {
            Some(b64) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                if !bytes.starts_with(&[0xFF, 0xD8]) {
                    problems.push("the image part is not a JPEG".into());
                }
            }
            None => problems.push("the latest user message has no data:image/jpeg image_url part".into()),
        }
        let handed_back = s.handed_back;
        s.requests.push((request.clone(), handed_back));
        if !problems.is_empty() {
            s.problems.extend(problems.clone());
            return (axum::http::StatusCode::BAD_REQUEST, problems.join("; ")).into_response();
        }
        let call = |name: &str, args: Value| {
            json!({"id": format!("call_{name}"), "type": "function", "function": {"name": name, "arguments": args.to_string()}})
        };
        let reply = |calls: Vec<Value>| {
            axum::Json(json!({
                "id": "chatcmpl-standin", "object": "chat.completion", "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "content": null, "tool_calls": calls}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
            }))
            .into_response()
        };
        match s.mode {
            ModelMode::Error500 => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "upstream overloaded").into_response(),
            ModelMode::Garbage => "<html>this is not JSON</html>".into_response(),
            ModelMode::UnknownTool => reply(vec![call("fly", json!({"to": "the moon"}))]),
            ModelMode::Script => {
                s.turn += 1;
                let form = s.form.clone();
                match s.turn {
                    1 => reply(vec![call("goto", json!({"url": format!("{form}/form")}))]),
                    2 => reply(vec![call("type", json!({"selector": "#name", "text": "Grace"}))]),
                    3 => reply(vec![call("ask_person", json!({"reason": "please solve the captcha"}))]),
                    4 => reply(vec![call("click", json!({"text": "Submit"}))]),
                    _ => reply(vec![call("finish", json!({"result": {"signed_up": "Grace"}}))]),
                }
            }
        }
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn the_agent_runner_works_in_the_real_browser_asks_the_person_and_survives_a_bad_model() {
    let form = FormServer::start().await;
    let state = Arc::new(Mutex::new(StandIn {
        mode: ModelMode::Script,
        requests: Vec::new(),
        handed_back: false,
        turn: 0,
        form: form.base.clone(),
        problems: Vec::new(),
    }));
    let api = stand_in_model(state.clone()).await;
    let port = form.port.to_string();
    let server = TestServer::start(&[
        "--desktop-host-ports", &port,
        "--steps-runners", "0",
        "--agent-runners", "1",
        "--agent-api-base", &api,
        "--agent-api-key", API_KEY,
        "--agent-model", MODEL,
    ])
    .await;
    let info: Value = server.http.get(server.url("/api/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["agent"], true, "the landing page offers the agent");
    let session = server.create_session(json!({ "start_url": format!("{}/form", form.base) })).await;
    let id = session["id"].as_str().unwrap();
    let token = session["token"].as_str().unwrap();
    let mut viewer = control(&server, id, token, None).await;
    let task = new_task(&server, id, json!({"kind": "agent", "goal": "Sign up as Grace on the form"})).await;
    let task_id = task["id"].as_str().unwrap();

    // The agent asks for the person: the task waits, and the viewers are asked to take over.
    let updates = task_updates(&mut viewer, Duration::from_secs(120), |u| u["state"] == "waiting_for_person").await;
    let waiting = updates.last().unwrap_or_else(|| panic!("no waiting_for_person: {updates:#?}"));
    assert_eq!(waiting["message"], "please solve the captcha");
    let current = get_task(&server, task_id).await;
    assert_eq!(current["state"], "waiting_for_person");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = state.lock().unwrap().requests.len();
    assert_eq!(before, 3, "the model is not asked again while the person is wanted");
    viewer.send(Message::text(json!({"type": "TAKE_CONTROL"}).to_string())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    state.lock().unwrap().handed_back = true;
    viewer.send(Message::text(json!({"type": "RELEASE_CONTROL"}).to_string())).await.unwrap();

    let done = wait_task(&server, task_id, Duration::from_secs(120), is_final).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["result"]["result"], json!({"signed_up": "Grace"}));
    assert_eq!(form.submissions(), vec!["Grace".to_owned()], "the real browser submitted the form");
    {
        let s = state.lock().unwrap();
        assert!(s.problems.is_empty(), "the stand-in found: {:?}", s.problems);
        assert!(s.requests[3..].iter().all(|(_, handed_back)| *handed_back), "the agent resumed only after the hand-back");
    }

    // A model that fails makes the task fail with the reason; the server carries on.
    for (mode, expected) in [
        (ModelMode::Error500, "500"),
        (ModelMode::Garbage, "not valid"),
        (ModelMode::UnknownTool, "unknown tool \"fly\""),
    ] {
        state.lock().unwrap().mode = mode;
        let task = new_task(&server, id, json!({"kind": "agent", "goal": "Sign up as Grace on the form"})).await;
        let failed = wait_task(&server, task["id"].as_str().unwrap(), Duration::from_secs(120), is_final).await;
        assert_eq!(failed["state"], "failed", "{failed:#}");
        let error = failed["error"].as_str().unwrap();
        assert!(error.contains(expected), "{expected:?} in {error:?}");
        assert!(!error.contains(API_KEY));
    }
    assert_eq!(server.http.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    assert!(!crate::support::logs().contains(API_KEY), "the model's API key is never logged");
    server.stop().await;
}

#[tokio::test]
async fn a_viewer_resumes_task_updates_across_a_server_restart_without_gap_or_repeat() {
    let server = TestServer::start(&["--steps-runners", "0", "--task-lease", "60"]).await;
    let session = server.create_session(json!({})).await;
    let id = session["id"].as_str().unwrap().to_owned();
    let token = session["token"].as_str().unwrap().to_owned();
    let task = new_task(&server, &id, json!({"kind": "steps", "steps": [{"action": "screenshot"}]})).await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let worker = worker_token(&server, "restart-worker").await;
    let claimed = claim(&server, &worker, &["steps"], 5).await;
    let lease = claimed["lease"]["id"].as_str().unwrap().to_owned();
    for n in 0..3 {
        let r = worker_post(&server, &worker, &format!("/api/tasks/{task_id}/events"), json!({"lease": lease, "message": format!("before {n}")})).await;
        assert_eq!(r.status(), 200);
    }
    let mut viewer = control(&server, &id, &token, None).await;
    let before = task_updates(&mut viewer, Duration::from_secs(20), |u| u["message"] == "before 2").await;
    let seqs: Vec<u64> = before.iter().map(|u| u["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "queued, claimed and three events");
    let cursor = before.last().unwrap()["cursor"].as_u64().unwrap();
    drop(viewer);

    // The server restarts on the same data; the lease is still good, so the worker goes on.
    let data = server.stop().await;
    let server = TestServer::start_in(data, &["--steps-runners", "0", "--task-lease", "60"]).await;
    let worker = worker_token(&server, "restart-worker").await;
    let r = worker_post(&server, &worker, &format!("/api/tasks/{task_id}/events"), json!({"lease": lease, "message": "after"})).await;
    assert_eq!(r.status(), 200);
    let r = worker_post(&server, &worker, &format!("/api/tasks/{task_id}/complete"), json!({"lease": lease, "result": 1})).await;
    assert_eq!(r.status(), 200);

    let mut viewer = control(&server, &id, &token, Some(cursor)).await;
    let after = task_updates(&mut viewer, Duration::from_secs(20), final_update).await;
    let seqs: Vec<u64> = after.iter().map(|u| u["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![6, 7], "only what came after the last update seen");
    assert_eq!(after[0]["message"], "after");
    assert_eq!(after[1]["state"], "succeeded");
    server.stop().await;
}
