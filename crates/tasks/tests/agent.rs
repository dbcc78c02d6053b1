//! The agent loop in a real headless Chromium against pages served on loopback. The one
//! stand-in is the model's API: a local Chat Completions endpoint that checks each request
//! has the documented shape and answers a scripted sequence of tool calls.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine;
use livesession_tasks::agent::{AgentError, AgentSettings, http_client, run_agent};
use livesession_tasks::cdp::{Cdp, Page};
use livesession_tasks::{EventNote, RunContext, Stopped};
use serde_json::{Value, json};
use support::{Chromium, Served, launch_chromium, serve};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk-test-0123456789abcdef-do-not-leak";
const MODEL: &str = "test-model-1";
const GOAL: &str = "Sign up on the test form as Ada Lovelace and tell me what the page answers.";

// ---------------------------------------------------------------------------------------
// The stand-in of the model's API.

/// One scripted answer of the stand-in.
enum Answer {
    /// Tool calls (name, arguments), after checking that the latest user message (the page's
    /// state, or a nudge) contains `expect`.
    Calls {
        expect: Option<String>,
        content: Option<String>,
        calls: Vec<(String, Value)>,
    },
    /// Words only, no tool call.
    Words(String),
    /// A raw answer.
    Raw { status: u16, body: String },
    /// Never answers (until the client gives up).
    Hang,
}

fn calls(expect: Option<&str>, calls: &[(&str, Value)]) -> Answer {
    Answer::Calls {
        expect: expect.map(str::to_owned),
        content: None,
        calls: calls
            .iter()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect(),
    }
}

struct Recorded {
    at: Instant,
    body: Value,
}

struct StandInState {
    images: bool,
    script: Mutex<VecDeque<Answer>>,
    requests: Mutex<Vec<Recorded>>,
    /// Why a request was refused (400), for the test's message.
    refusals: Mutex<Vec<String>>,
}

struct StandIn {
    served: Served,
    state: Arc<StandInState>,
}

impl StandIn {
    async fn start(images: bool, script: Vec<Answer>) -> StandIn {
        let state = Arc::new(StandInState {
            images,
            script: Mutex::new(script.into()),
            requests: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(state.clone());
        StandIn {
            served: serve(router).await,
            state,
        }
    }

    fn settings(&self) -> AgentSettings {
        let mut settings = AgentSettings::new(self.served.url("/v1"), MODEL);
        settings.api_key = Some(KEY.into());
        settings.images = self.state.images;
        settings
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.state.requests.lock().unwrap()
    }

    fn refusals(&self) -> Vec<String> {
        self.state.refusals.lock().unwrap().clone()
    }
}

async fn completions(
    State(state): State<Arc<StandInState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(Recorded {
            at: Instant::now(),
            body: parsed.clone(),
        });
        requests.len()
    };
    let answer = state.script.lock().unwrap().pop_front();
    let expect = match &answer {
        Some(Answer::Calls { expect, .. }) => expect.clone(),
        _ => None,
    };
    if let Err(why) = check_request(&state, &headers, &parsed, expect.as_deref()) {
        state.refusals.lock().unwrap().push(why.clone());
        return (
            StatusCode::BAD_REQUEST,
            format!("stand-in refused request {n}: {why}"),
        )
            .into_response();
    }
    let (content, calls) = match answer {
        None => return (StatusCode::BAD_REQUEST, "the script has no more answers").into_response(),
        Some(Answer::Raw { status, body }) => {
            return (StatusCode::from_u16(status).unwrap(), body).into_response();
        }
        Some(Answer::Hang) => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        Some(Answer::Words(words)) => (Some(words), Vec::new()),
        Some(Answer::Calls { content, calls, .. }) => (content, calls),
    };
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            json!({
                "id": format!("call_{n}_{i}"),
                "type": "function",
                // The API sends the arguments as a JSON *string*.
                "function": {"name": name, "arguments": arguments.to_string()},
            })
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    axum::Json(json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" },
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }))
    .into_response()
}

/// The documented request: the key as a bearer token, the model, a system message, the
/// goal, the tools with their schemas, a screenshot in the latest state when images are
/// on, and one tool message answering every tool call.
fn check_request(
    state: &StandInState,
    headers: &HeaderMap,
    body: &Value,
    expect: Option<&str>,
) -> Result<(), String> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {KEY}")) {
        return Err("Authorization is not the configured bearer key".into());
    }
    if !body.is_object() {
        return Err("the body is not a JSON object".into());
    }
    if body["model"] != MODEL {
        return Err(format!("model is {}", body["model"]));
    }
    let messages = body["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or("no messages")?;
    if messages[0]["role"] != "system" || messages[0]["content"].as_str().is_none_or(str::is_empty)
    {
        return Err("the first message is not a system prompt".into());
    }
    if !messages
        .iter()
        .any(|m| m["role"] == "user" && m["content"].as_str().is_some_and(|c| c.contains(GOAL)))
    {
        return Err("no user message has the goal".into());
    }
    if body["tool_choice"] != "auto" && body["tool_choice"] != "required" {
        return Err(format!("tool_choice is {}", body["tool_choice"]));
    }
    let tools = body["tools"].as_array().ok_or("no tools")?;
    for name in [
        "goto",
        "click",
        "type",
        "press",
        "wait_for",
        "extract",
        "scroll",
        "ask_person",
        "finish",
    ] {
        let tool = tools
            .iter()
            .find(|t| t["type"] == "function" && t["function"]["name"] == name)
            .ok_or_else(|| format!("no function tool {name}"))?;
        let parameters = &tool["function"]["parameters"];
        if parameters["type"] != "object" || !parameters["properties"].is_object() {
            return Err(format!("{name} has no JSON-schema parameters object"));
        }
        if tool["function"]["description"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            return Err(format!("{name} has no description"));
        }
    }
    // Every tool call of an assistant message is answered by a tool message right after.
    for (i, message) in messages.iter().enumerate() {
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            let id = call["id"].as_str().ok_or("a tool call echoed without id")?;
            if !call["function"]["arguments"].is_string() {
                return Err("tool call arguments echoed as something else than a string".into());
            }
            let answered = messages[i + 1..]
                .iter()
                .take_while(|m| m["role"] == "tool")
                .any(|m| m["tool_call_id"] == id && m["content"].is_string());
            if !answered {
                return Err(format!("tool call {id} has no tool message"));
            }
        }
    }
    let latest = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .ok_or("no user message")?;
    let latest_text = match &latest["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return Err("the latest user message has no content".into()),
    };
    let images: Vec<&str> = messages
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|p| p["type"] == "image_url")
        .filter_map(|p| p["image_url"]["url"].as_str())
        .collect();
    let is_state = latest_text.contains("The page now:");
    if state.images && is_state {
        let url = latest["content"]
            .as_array()
            .and_then(|parts| parts.iter().find(|p| p["type"] == "image_url"))
            .and_then(|p| p["image_url"]["url"].as_str())
            .ok_or("the latest page state has no image_url part")?;
        let data = url
            .strip_prefix("data:image/jpeg;base64,")
            .ok_or("the image is not a JPEG data URL")?;
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("the image is not base64: {e}"))?;
        if jpeg.len() < 100 || jpeg[..2] != [0xFF, 0xD8] {
            return Err("the image is not a JPEG".into());
        }
        if images.len() != 1 {
            return Err(format!(
                "{} images in the conversation, expected only the latest",
                images.len()
            ));
        }
    }
    if !state.images && !images.is_empty() {
        return Err("an image was sent with images off".into());
    }
    if let Some(expect) = expect
        && !latest_text.contains(expect)
    {
        return Err(format!(
            "the latest user message lacks {expect:?}:\n{latest_text}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The test site and the run's context.

/// `/form`: a name field, a "captcha" checkbox only the person ticks, a "Send" button
/// posting to `/submit`, which records the form and thanks the name.
fn site(submits: Arc<Mutex<Vec<HashMap<String, String>>>>) -> Router {
    Router::new()
        .route(
            "/form",
            get(|| async {
                Html(
                    r#"<!doctype html><html><head><title>Join the club</title></head><body>
<h1>Join the club</h1>
<form method="post" action="/submit">
  <p><label>Your name <input id="name" name="name" placeholder="Jane Doe"></label></p>
  <p><label><input type="checkbox" id="captcha" name="captcha"> I am not a robot</label></p>
  <p><label>Password <input type="password" name="pw" value="hunter2-secret"></label></p>
  <p><button type="submit">Send</button></p>
</form></body></html>"#,
                )
            }),
        )
        .route(
            "/submit",
            post(move |Form(form): Form<HashMap<String, String>>| {
                let submits = submits.clone();
                async move {
                    let name = support::escape(form.get("name").map(String::as_str).unwrap_or(""));
                    submits.lock().unwrap().push(form);
                    Html(format!(
                        "<!doctype html><title>Welcome</title><p id=\"answer\">Thanks, {name}! You are member 42.</p>"
                    ))
                }
            }),
        )
}

/// Records reports and requests for the person; `ask_person` returns once the test hands
/// back (`hand_back`).
struct TestContext {
    notes: Mutex<Vec<EventNote>>,
    reasons: Mutex<Vec<String>>,
    controls: Mutex<u32>,
    asked: watch::Sender<bool>,
    handed_back: watch::Sender<bool>,
    stop: CancellationToken,
}

impl TestContext {
    fn new() -> Self {
        Self {
            notes: Mutex::new(Vec::new()),
            reasons: Mutex::new(Vec::new()),
            controls: Mutex::new(0),
            asked: watch::channel(false).0,
            handed_back: watch::channel(false).0,
            stop: CancellationToken::new(),
        }
    }

    fn messages(&self) -> Vec<String> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .filter_map(|n| n.message.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl RunContext for TestContext {
    async fn report(&self, note: EventNote) -> Result<(), Stopped> {
        self.notes.lock().unwrap().push(note);
        Ok(())
    }
    async fn wait_for_control(&self) -> Result<(), Stopped> {
        *self.controls.lock().unwrap() += 1;
        Ok(())
    }
    async fn ask_person(&self, reason: &str) -> Result<(), Stopped> {
        self.reasons.lock().unwrap().push(reason.to_owned());
        self.asked.send_replace(true);
        let mut handed_back = self.handed_back.subscribe();
        tokio::select! {
            _ = handed_back.wait_for(|back| *back) => Ok(()),
            _ = self.stop.cancelled() => Err(Stopped::Cancelled("stopped by the test".into())),
        }
    }
    async fn stopped(&self) -> Stopped {
        self.stop.cancelled().await;
        Stopped::Cancelled("stopped by the test".into())
    }
}

async fn open_page(chromium: &Chromium) -> Page {
    let cdp = Cdp::connect_url(&chromium.ws_url)
        .await
        .expect("connect to Chromium");
    Page::attach(&cdp).await.expect("attach to the blank tab")
}

/// Runs the agent against a stand-in answering `script`; fails the test if the stand-in
/// refused a request. Bounded by a generous timeout.
async fn run_script(
    page: &Page,
    script: Vec<Answer>,
    images: bool,
    tweak: impl FnOnce(&mut AgentSettings),
) -> (Result<Value, AgentError>, StandIn, TestContext) {
    let stand_in = StandIn::start(images, script).await;
    let mut settings = stand_in.settings();
    tweak(&mut settings);
    let ctx = TestContext::new();
    let client = http_client(&settings);
    let outcome = tokio::time::timeout(
        Duration::from_secs(180),
        run_agent(page, GOAL, &settings, &client, &ctx),
    )
    .await
    .expect("the agent ends within 3 min");
    assert_eq!(
        stand_in.refusals(),
        Vec::<String>::new(),
        "the stand-in refused a request"
    );
    (outcome, stand_in, ctx)
}

fn failure(outcome: Result<Value, AgentError>) -> String {
    match outcome {
        Err(AgentError::Failed(error)) => {
            assert!(
                !error.contains(KEY),
                "the key leaked into the error: {error}"
            );
            error
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_agent_fills_the_form_with_the_persons_help() {
    let chromium = launch_chromium().await;
    let submits = Arc::new(Mutex::new(Vec::new()));
    let site = serve(site(submits.clone())).await;
    let page = open_page(&chromium).await;

    let form = site.url("/form");
    let script = vec![
        calls(Some("URL: about:blank"), &[("goto", json!({"url": form}))]),
        // The digest lists the field by a selector the model can use back; never the
        // password's value.
        calls(
            Some("#name — input text, label \"Your name\", placeholder \"Jane Doe\""),
            &[("type", json!({"selector": "#name", "text": "Ada Lovelace"}))],
        ),
        calls(
            Some("value \"Ada Lovelace\""),
            &[("ask_person", json!({"reason": "please solve the captcha"}))],
        ),
        // The person ticked the box while they had control; two calls in one turn.
        calls(
            Some("#captcha — input checkbox, label \"I am not a robot\", checked"),
            &[
                ("click", json!({"text": "Send"})),
                ("wait_for", json!({"text": "Thanks", "timeout_ms": 20000})),
            ],
        ),
        Answer::Calls {
            expect: Some("Thanks, Ada Lovelace! You are member 42.".into()),
            content: Some("The form was sent.".into()),
            calls: vec![(
                "finish".into(),
                json!({"result": {"member": 42, "answer": "Thanks, Ada Lovelace! You are member 42."}}),
            )],
        },
    ];
    let stand_in = StandIn::start(true, script).await;
    let settings = stand_in.settings();
    let client = http_client(&settings);
    let ctx = TestContext::new();

    // The person: once asked, ticks the box in the page and hands back a little later.
    let person_page = page.clone();
    let person = async {
        ctx.asked
            .subscribe()
            .wait_for(|asked| *asked)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        person_page
            .evaluate("document.querySelector('#captcha').checked = true")
            .await
            .unwrap();
        let handed_back_at = Instant::now();
        ctx.handed_back.send_replace(true);
        handed_back_at
    };
    let run = tokio::time::timeout(
        Duration::from_secs(180),
        run_agent(&page, GOAL, &settings, &client, &ctx),
    );
    let (outcome, handed_back_at) = tokio::join!(run, person);
    let outcome = outcome.expect("the agent ends within 3 min");
    assert_eq!(
        stand_in.refusals(),
        Vec::<String>::new(),
        "the stand-in refused a request"
    );
    let result = outcome.unwrap_or_else(|e| panic!("the agent failed: {e}"));

    // The real browser did the work.
    let submitted = submits.lock().unwrap().clone();
    assert_eq!(submitted.len(), 1, "one form submit: {submitted:?}");
    assert_eq!(
        submitted[0].get("name").map(String::as_str),
        Some("Ada Lovelace")
    );
    assert_eq!(submitted[0].get("captcha").map(String::as_str), Some("on"));

    assert_eq!(
        result,
        json!({
            "result": {"member": 42, "answer": "Thanks, Ada Lovelace! You are member 42."},
            "turns": 5,
            "tokens": 600,
            "url": site.url("/submit"),
        })
    );

    // It waited for the person: the request after ask_person came after the hand-back.
    assert_eq!(*ctx.reasons.lock().unwrap(), ["please solve the captcha"]);
    let requests = stand_in.requests();
    assert_eq!(requests.len(), 5);
    assert!(requests[2].at < handed_back_at);
    assert!(
        requests[3].at > handed_back_at,
        "the agent went on before the person handed back"
    );
    // The outcome of each call went back to the model.
    let tool_messages = |i: usize| -> Vec<Value> {
        requests[i].body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "tool")
            .cloned()
            .collect()
    };
    let answers = tool_messages(4);
    let contents: Vec<&str> = answers
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 5, "one answer a call: {contents:?}");
    assert_eq!(contents[..2], ["ok", "ok"]);
    assert!(
        contents[2].starts_with("The person handed control back"),
        "{contents:?}"
    );
    assert_eq!(contents[3..], ["ok", "ok"]);
    assert_eq!(answers[3]["tool_call_id"], "call_4_0");
    assert_eq!(answers[4]["tool_call_id"], "call_4_1");
    let after = requests[3].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"][0]["text"]
        .clone();
    assert!(
        after
            .as_str()
            .unwrap()
            .contains("The person had control until just now."),
        "{after}"
    );
    let all = serde_json::to_string(&requests.iter().map(|r| &r.body).collect::<Vec<_>>()).unwrap();
    assert!(
        !all.contains("hunter2-secret"),
        "a password's value reached the model"
    );
    assert!(all.contains("filled (value hidden)"));
    drop(requests);

    // Each browser action waited for control and was reported with a thumbnail.
    assert_eq!(*ctx.controls.lock().unwrap(), 4);
    let messages = ctx.messages();
    for expected in [
        format!("goto {form}"),
        "type 12 characters into \"#name\"".to_owned(),
        "click text \"Send\"".to_owned(),
        "wait for text \"Thanks\"".to_owned(),
        "The form was sent.".to_owned(),
    ] {
        assert!(
            messages.contains(&expected),
            "no report {expected:?} in {messages:?}"
        );
    }
    let notes = ctx.notes.lock().unwrap();
    let click = notes
        .iter()
        .find(|n| n.message.as_deref() == Some("click text \"Send\""))
        .unwrap();
    assert_eq!(click.step, Some(4));
    assert_eq!(
        &click.screenshot.as_deref().expect("a thumbnail")[..2],
        &[0xFF, 0xD8]
    );
}

#[tokio::test]
async fn api_errors_fail_the_task_without_the_key() {
    let chromium = launch_chromium().await;
    let page = open_page(&chromium).await;

    // A 500 (tried once more after a pause), whose body echoes the key.
    let echo = format!("upstream exploded\n(you sent Authorization: Bearer {KEY})");
    let script = vec![
        Answer::Raw {
            status: 500,
            body: echo.clone(),
        },
        Answer::Raw {
            status: 500,
            body: echo,
        },
    ];
    let (outcome, stand_in, _) = run_script(&page, script, false, |_| {}).await;
    assert_eq!(
        failure(outcome),
        "the model's API answered 500: upstream exploded (you sent Authorization: Bearer [redacted])"
    );
    assert_eq!(stand_in.requests().len(), 2, "a 500 is tried once more");

    // A 401 is not retried.
    let script = vec![Answer::Raw {
        status: 401,
        body: "{\"error\": \"bad key\"}".into(),
    }];
    let (outcome, stand_in, _) = run_script(&page, script, false, |_| {}).await;
    assert_eq!(
        failure(outcome),
        "the model's API answered 401: {\"error\": \"bad key\"}"
    );
    assert_eq!(stand_in.requests().len(), 1);

    // A redirect is not followed (it would carry the key elsewhere).
    let script = vec![Answer::Raw { status: 307, body: "moved".into() }];
    let (outcome, stand_in, _) = run_script(&page, script, false, |_| {}).await;
    assert_eq!(failure(outcome), "the model's API answered 307: moved");
    assert_eq!(stand_in.requests().len(), 1);

    // Not JSON; JSON without choices.
    let script = vec![Answer::Raw {
        status: 200,
        body: "this is not JSON at all".into(),
    }];
    let (outcome, _, _) = run_script(&page, script, false, |_| {}).await;
    assert_eq!(failure(outcome), "the model's answer is not valid JSON");
    let script = vec![Answer::Raw {
        status: 200,
        body: "{\"object\": \"chat.completion\"}".into(),
    }];
    let (outcome, _, _) = run_script(&page, script, false, |_| {}).await;
    assert_eq!(
        failure(outcome),
        "the model's answer is not valid: no choices"
    );

    // Nothing listens.
    let mut settings = AgentSettings::new(support::closed_port_url() + "v1", MODEL);
    settings.api_key = Some(KEY.into());
    let ctx = TestContext::new();
    let error = failure(run_agent(&page, GOAL, &settings, &http_client(&settings), &ctx).await);
    assert!(
        error.starts_with("the model's API could not be reached"),
        "{error}"
    );

    // Nor in Debug.
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains(KEY) && debug.contains("[redacted]"),
        "{debug}"
    );
}

#[tokio::test]
async fn an_unknown_tool_fails_the_task() {
    let chromium = launch_chromium().await;
    let page = open_page(&chromium).await;
    let script = vec![calls(None, &[("fly", json!({"to": "the moon"}))])];
    let (outcome, _, _) = run_script(&page, script, true, |_| {}).await;
    assert_eq!(failure(outcome), "the model called an unknown tool \"fly\"");
}

#[tokio::test]
async fn bounds_end_a_runaway_model() {
    let chromium = launch_chromium().await;
    let site = serve(support::demo_site()).await;
    let page = open_page(&chromium).await;
    let scroll = || calls(None, &[("scroll", json!({"dy": 100}))]);

    // Turns.
    let (outcome, stand_in, _) = run_script(
        &page,
        vec![scroll(), scroll(), scroll(), scroll()],
        false,
        |s| s.max_turns = 3,
    )
    .await;
    assert_eq!(failure(outcome), "no result after 3 turns");
    assert_eq!(stand_in.requests().len(), 3);

    // Tokens: 120 a reply; the third reaches 360 of 250.
    let (outcome, stand_in, _) = run_script(
        &page,
        vec![scroll(), scroll(), scroll(), scroll()],
        false,
        |s| s.max_tokens = 250,
    )
    .await;
    assert_eq!(failure(outcome), "token budget of 250 used up");
    assert_eq!(stand_in.requests().len(), 3);

    // Bad arguments: told once, then the task fails.
    let script = vec![
        calls(None, &[("click", json!({}))]),
        calls(
            Some("URL:"),
            &[("click", json!({"selector": "#a", "text": "b"}))],
        ),
    ];
    let (outcome, stand_in, _) = run_script(&page, script, false, |_| {}).await;
    assert_eq!(
        failure(outcome),
        "the model called click with bad arguments again: needs only one of: selector, text"
    );
    let told = stand_in.requests()[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()["content"]
        .clone();
    assert_eq!(
        told,
        "error: bad arguments for click: needs one of: selector, text"
    );

    // Browser actions failing in a row: told each time, the fifth ends the task.
    let missing = || calls(None, &[("click", json!({"selector": "#nowhere"}))]);
    let mut script = vec![calls(None, &[("goto", json!({"url": site.url("/form")}))])];
    script.extend((0..5).map(|_| missing()));
    let (outcome, stand_in, ctx) = run_script(&page, script, false, |s| {
        s.step_timeout = Duration::from_millis(500)
    })
    .await;
    assert_eq!(
        failure(outcome),
        "5 browser actions in a row failed; the last: click \"#nowhere\" failed: \
         no element matches \"#nowhere\" within 500 ms"
    );
    let told = stand_in.requests()[2].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|m| m["role"] == "tool")
        .unwrap()["content"]
        .clone();
    assert_eq!(told, "error: no element matches \"#nowhere\" within 500 ms");
    assert_eq!(
        ctx.messages()
            .iter()
            .filter(|m| m.contains("failed"))
            .count(),
        5
    );

    // Words without a tool call: nudged once, then the task fails.
    let script = vec![
        Answer::Words("Let me think.".into()),
        Answer::Words("Still thinking.".into()),
    ];
    let (outcome, stand_in, _) = run_script(&page, script, false, |_| {}).await;
    assert_eq!(
        failure(outcome),
        "the model answered twice without calling a tool"
    );
    let nudge = stand_in.requests()[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        nudge["content"]
            .as_str()
            .unwrap()
            .starts_with("Call one of the tools"),
        "{nudge}"
    );

    // A nudge that works; finish may be a plain string.
    let script = vec![
        Answer::Words("I see the page.".into()),
        calls(
            Some("Call one of the tools"),
            &[("finish", json!({"result": "nothing to do"}))],
        ),
    ];
    let (outcome, _, _) = run_script(&page, script, false, |_| {}).await;
    let result = outcome.unwrap();
    assert_eq!(result["result"], "nothing to do");
    assert_eq!(result["turns"], 2);

    // Time: the model's API does not answer within the task's time.
    let started = Instant::now();
    let (outcome, _, _) = run_script(&page, vec![Answer::Hang], false, |s| {
        s.max_duration = Duration::from_secs(2)
    })
    .await;
    assert_eq!(failure(outcome), "time limit of 2 s used up");
    assert!(started.elapsed() < Duration::from_secs(30));

    // One model call's own limit.
    let (outcome, _, _) = run_script(&page, vec![Answer::Hang], false, |s| {
        s.request_timeout = Duration::from_secs(1)
    })
    .await;
    assert_eq!(
        failure(outcome),
        "the model's API did not answer within 1 s"
    );
}

#[tokio::test]
async fn extract_values_are_kept_and_more_than_five_calls_are_not_run() {
    let chromium = launch_chromium().await;
    let site = serve(support::demo_site()).await;
    let page = open_page(&chromium).await;
    let scroll = ("scroll", json!({"dy": 10}));
    let script = vec![
        calls(None, &[("goto", json!({"url": site.url("/form")}))]),
        calls(
            Some("Title: Sign up"),
            &[
                ("type", json!({"selector": "#name", "text": "Grace"})),
                ("extract", json!({"selector": "#name", "name": "typed"})),
                scroll.clone(),
                scroll.clone(),
                scroll.clone(),
                scroll.clone(),
                scroll,
            ],
        ),
        calls(None, &[("finish", json!({"result": {"ok": true}}))]),
    ];
    let (outcome, stand_in, _) = run_script(&page, script, true, |_| {}).await;
    let result = outcome.unwrap();
    assert_eq!(result["extracted"], json!({"typed": "Grace"}));
    assert_eq!(result["result"], json!({"ok": true}));
    let messages = stand_in.requests()[2].body["messages"]
        .as_array()
        .unwrap()
        .clone();
    let assistant = messages.iter().rfind(|m| m["role"] == "assistant").unwrap();
    assert_eq!(
        assistant["tool_calls"].as_array().unwrap().len(),
        5,
        "only five calls are kept"
    );
    let tools: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(tools[1], "ok");
    assert_eq!(tools[2], "ok: typed = \"Grace\"");
    assert!(
        tools[5].contains("2 more calls of this turn were not run"),
        "{tools:?}"
    );
}

#[tokio::test]
async fn a_cancel_stops_the_agent_at_once() {
    let chromium = launch_chromium().await;
    let page = open_page(&chromium).await;
    let stand_in = StandIn::start(false, vec![Answer::Hang]).await;
    let settings = stand_in.settings();
    let ctx = TestContext::new();
    let stop = ctx.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
    });
    let started = Instant::now();
    let outcome = run_agent(&page, GOAL, &settings, &http_client(&settings), &ctx).await;
    assert_eq!(
        outcome,
        Err(AgentError::Stopped(Stopped::Cancelled(
            "stopped by the test".into()
        )))
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// The digest's selectors are usable back: each finds exactly its element, on a page with
/// repeated ids, quotes in names and look-alike rows; elements out of view are marked.
#[tokio::test]
async fn every_digest_selector_finds_one_element() {
    let chromium = launch_chromium().await;
    let page_html = r#"<!doctype html><title>Tricky</title><body>
<div id="dup"><button>One</button></div><div id="dup"><button>Two</button></div>
<ul><li><a href="/a">A</a> <a href="/b">B</a></li><li><a href="/c">C</a></li></ul>
<input name='say "hi"'><textarea aria-label="Notes">x</textarea>
<select id="size"><option>S</option><option selected>M</option></select>
<span role="button" tabindex="0">Fancy</span><div onclick="1">Clickable div</div>
<input type="hidden" name="token" value="t"><button style="display:none">Hidden</button>
<div style="height:3000px"></div><button id="far">Far away</button></body>"#;
    let router = Router::new().route("/tricky", get(move || async move { Html(page_html) }));
    let site = serve(router).await;
    let page = open_page(&chromium).await;
    page.navigate(&site.url("/tricky"), Duration::from_secs(30))
        .await
        .unwrap();

    let answer = page
        .evaluate(livesession_tasks::agent::digest::DIGEST_JS)
        .await
        .unwrap();
    let digest = livesession_tasks::agent::digest::Digest::from_value(&answer).unwrap();
    let texts: Vec<String> = digest
        .elements
        .iter()
        .map(|e| e.text.clone().or(e.label.clone()).unwrap_or_default())
        .collect();
    assert_eq!(digest.elements.len(), 11, "{texts:?}");
    for element in &digest.elements {
        let count = page
            .evaluate(&format!(
                "document.querySelectorAll({}).length",
                json!(element.s)
            ))
            .await
            .unwrap();
        assert_eq!(count, 1, "{:?} finds {count} elements", element.s);
    }
    assert!(!texts.iter().any(|t| t == "Hidden"));
    let far = digest
        .elements
        .iter()
        .find(|e| e.s == "#far")
        .expect("#far listed");
    assert_eq!(far.position.as_deref(), Some("below"));
    let size = digest.elements.iter().find(|e| e.s == "#size").unwrap();
    assert_eq!(size.value.as_deref(), Some("M"));
    let rendered = digest.render();
    assert!(rendered.contains("Scrolled 0 of"), "{rendered}");
    assert!(
        rendered.contains("textarea, label \"Notes\", value \"x\""),
        "{rendered}"
    );
}
