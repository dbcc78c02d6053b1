//! `bench tasks`: what the task system costs. Three measurements, each against this
//! binary's own `serve`:
//!
//! 1. **Steps tasks per minute** with the built-in steps runners (`--steps-runners 2`, the
//!    default): sessions whose desktops are already up (started by fetching their DevTools
//!    discovery, then one warm-up task each), tasks queued round-robin over them as fast
//!    as the API takes them, the clock from the first task's `created_at` to the last
//!    one's `finished_at` (the server's own timestamps). Two kinds of trivial task: one
//!    `assert_text` step on the page already open, and `goto` the same page then
//!    `assert_text`. Also each task's latency (created → succeeded) and its parts: queued
//!    (created → claimed) and run (claimed → succeeded).
//! 2. **Overhead per step against raw CDP**: a task of many identical `assert_text` steps,
//!    the time per step read from its step events' `at` (the gap between consecutive
//!    steps); against the same `Runtime.evaluate` (same expression and parameters, by the
//!    same DevTools client, on a flattened session of the same tab) sent straight through
//!    the gateway's CDP endpoint, alone and followed by the thumbnail the runner takes
//!    after every step. Alternating rounds.
//! 3. **Claim latency with 1,000 queued tasks**: a server without built-in runners
//!    (`--steps-runners 0`), 1,000 tasks created one after another over 25 sessions
//!    (no desktops: nothing runs them), then one external worker (a worker token)
//!    claiming (`wait_seconds` 0) and completing them one at a time over HTTP: the round
//!    trip of each claim, over the first 200 (800 or more still queued), and over all.

use std::time::{Duration, Instant};

use livesession_tasks::cdp::{Cdp, Page};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::report::{Table, fmt_ms};
use super::server::{Created, Server};
use super::stats::Summary;
use super::{Options, progress};

/// The built-in steps runners of the throughput server (`serve`'s default).
pub const RUNNERS: usize = 2;
/// The text the page shows and the tasks look for.
const TEXT: &str = "livesession bench tasks: the quick brown fox";
const PAGE: &str = r#"<!doctype html><html><head><title>bench: tasks</title>
<style>body{margin:40px;font:20px/1.5 sans-serif;background:#fff;color:#111}</style></head>
<body><h1>Tasks</h1><p id="value">livesession bench tasks: the quick brown fox</p>
<p>jumps over the lazy dog.</p></body></html>"#;
/// The claim benchmark: tasks queued, sessions they are spread over (at most 50 open
/// tasks each), and the claims measured while the queue is still deep.
pub const QUEUED: usize = 1000;
pub const CLAIM_SESSIONS: usize = 25;
pub const DEEP_CLAIMS: usize = 200;

/// One kind of trivial task, run many times.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// What each task's steps are, for people.
    pub steps: String,
    pub sessions: usize,
    pub runners: usize,
    pub tasks: usize,
    pub succeeded: usize,
    /// Tasks that did not succeed, with the first error.
    pub failed: usize,
    pub first_error: Option<String>,
    /// First `created_at` to last `finished_at`, seconds.
    pub seconds: f64,
    /// Milliseconds: created → succeeded, created → claimed, claimed → succeeded.
    pub latency: Summary,
    pub queued: Summary,
    pub run: Summary,
}

impl Throughput {
    pub fn per_minute(&self) -> f64 {
        self.succeeded as f64 * 60.0 / self.seconds.max(1e-9)
    }
}

/// The steps runner's time per step against the same CDP commands sent directly.
#[derive(Debug, Clone, Default)]
pub struct StepOverhead {
    pub rounds: usize,
    pub steps_per_task: usize,
    /// Milliseconds between consecutive step events (1 ms resolution), all rounds.
    pub runner: Summary,
    /// Sum of those gaps over their count: the mean per step.
    pub runner_mean: f64,
    /// Milliseconds per raw `Runtime.evaluate`, and per evaluate + thumbnail.
    pub raw_evaluate: Summary,
    pub raw_evaluate_mean: f64,
    pub raw_thumbnail: Summary,
    pub raw_thumbnail_mean: f64,
    /// The many-step tasks' claimed → succeeded, ms.
    pub task_run: Summary,
}

/// Queueing and claiming with a deep queue.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub queued: usize,
    pub sessions: usize,
    /// Milliseconds per `POST /api/sessions/{id}/tasks`, one at a time.
    pub create: Summary,
    pub creates_per_s: f64,
    /// Claim round trips (ms): the first `DEEP_CLAIMS`, then every claim made.
    pub deep: Summary,
    pub all: Summary,
    /// The last 100 claims (queue nearly empty), when the queue was drained.
    pub shallow: Option<Summary>,
    /// `POST /api/tasks/{id}/complete` round trips, ms.
    pub complete: Summary,
}

#[derive(Debug, Clone)]
pub struct TasksReport {
    pub throughput: Vec<Throughput>,
    pub steps: StepOverhead,
    pub claims: Claims,
}

fn p50_p99(s: &Summary) -> String {
    format!("p50 {}, p99 {}", fmt_ms(s.p50), fmt_ms(s.p99))
}

impl TasksReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new(["Measure", "Result", "Detail"]);
        for r in &self.throughput {
            let failed = match (&r.first_error, r.failed) {
                (_, 0) => String::new(),
                (Some(e), n) => format!("; {n} did not succeed, e.g. {e}"),
                (None, n) => format!("; {n} did not succeed"),
            };
            t.row([
                format!("Steps tasks per minute: {}", r.steps),
                format!("{:.0} per minute", r.per_minute()),
                format!(
                    "{} tasks in {:.1} s over {} sessions, {} built-in runners{failed}",
                    r.succeeded, r.seconds, r.sessions, r.runners
                ),
            ]);
            t.row([
                "  each task, created → succeeded".to_owned(),
                p50_p99(&r.latency),
                format!(
                    "queued (created → claimed) {}; run (claimed → succeeded) {}",
                    p50_p99(&r.queued),
                    p50_p99(&r.run)
                ),
            ]);
        }
        let s = &self.steps;
        t.row([
            format!(
                "Per step, steps runner (`assert_text`, {} steps a task)",
                s.steps_per_task
            ),
            format!("{} mean", fmt_ms(s.runner_mean)),
            format!(
                "{} ({} gaps between step events, 1 ms resolution, {} rounds); the whole \
                 task, claimed → succeeded, p50 {}",
                p50_p99(&s.runner),
                s.runner.count,
                s.rounds,
                fmt_ms(s.task_run.p50)
            ),
        ]);
        t.row([
            "Per step, raw CDP: the same Runtime.evaluate through the gateway".to_owned(),
            format!("{} mean", fmt_ms(s.raw_evaluate_mean)),
            format!(
                "{} ({} calls)",
                p50_p99(&s.raw_evaluate),
                s.raw_evaluate.count
            ),
        ]);
        t.row([
            "Per step, raw CDP: evaluate + the runner's thumbnail".to_owned(),
            format!("{} mean", fmt_ms(s.raw_thumbnail_mean)),
            format!(
                "{} ({} calls)",
                p50_p99(&s.raw_thumbnail),
                s.raw_thumbnail.count
            ),
        ]);
        t.row([
            "Runner overhead per step".to_owned(),
            format!("{:+.2} ms mean", s.runner_mean - s.raw_evaluate_mean),
            format!(
                "over the raw evaluate; {:+.2} ms over evaluate + thumbnail",
                s.runner_mean - s.raw_thumbnail_mean
            ),
        ]);
        let c = &self.claims;
        t.row([
            format!(
                "Task creates, {} over {} sessions, one at a time",
                c.queued, c.sessions
            ),
            format!("{:.0} per second", c.creates_per_s),
            format!("POST round trip {}", p50_p99(&c.create)),
        ]);
        t.row([
            format!(
                "Claim latency, {} queued (first {} claims)",
                c.queued, c.deep.count
            ),
            p50_p99(&c.deep),
            format!(
                "`POST /api/workers/claim`, wait_seconds 0, ≥ {} still queued; max {}",
                c.queued - c.deep.count,
                fmt_ms(c.deep.max)
            ),
        ]);
        if let Some(shallow) = &c.shallow {
            t.row([
                format!("Claim latency, all {} claims", c.all.count),
                p50_p99(&c.all),
                format!(
                    "the last {} (≤ {} queued): {}",
                    shallow.count,
                    shallow.count,
                    p50_p99(shallow)
                ),
            ]);
        }
        t.row([
            "Complete (worker)".to_owned(),
            p50_p99(&c.complete),
            format!(
                "`POST /api/tasks/{{id}}/complete` after each claim ({} calls)",
                c.complete.count
            ),
        ]);
        t
    }

    /// How it was measured, for under the table.
    pub fn note(&self) -> String {
        let first = self.throughput.first();
        format!(
            "Throughput: {} sessions on one server with {} built-in steps runners, each \
             session's desktop started on a short page of text (the bench's own loopback page \
             server) and one warm-up task run in each before the clock starts; \
             tasks created round-robin over the sessions one after another, the clock from the \
             first `created_at` to the last `finished_at`. A session runs one task at a time, \
             so a task waits in the queue behind the ones created before it in its session. \
             Every step ends with a 320-pixel JPEG thumbnail and an event written to SQLite. \
             Per step: {} rounds of a task of {} `assert_text` steps and {} raw calls each \
             way, raw first in even rounds; raw calls go through `/api/sessions/{{id}}/cdp` \
             (browser target, flattened session on the tab, the runner's own DevTools client), \
             the runner talks to `devtools.sock` directly. Claims: {} tasks over {} sessions \
             on a server with `--steps-runners 0`, one worker claiming and completing in turn \
             over keep-alive HTTP on loopback.",
            first.map_or(0, |r| r.sessions),
            first.map_or(RUNNERS, |r| r.runners),
            self.steps.rounds,
            self.steps.steps_per_task,
            self.steps.steps_per_task,
            self.claims.queued,
            self.claims.sessions,
        )
    }
}

/// The value of a `serve` flag as the last of `args` sets it (`--flag v` or `--flag=v`).
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut value = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == flag {
            value = it.next().cloned();
        } else if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            value = Some(v.to_owned());
        }
    }
    value
}

fn timestamp(v: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

fn ms_between(a: OffsetDateTime, b: OffsetDateTime) -> f64 {
    (b - a).as_seconds_f64() * 1000.0
}

/// Milliseconds between consecutive step events of a task (events as the API shows them:
/// `step`, `at`, `state`; a failed step's event counts too).
pub fn step_gaps(events: &[Value]) -> Vec<f64> {
    let at: Vec<OffsetDateTime> = events
        .iter()
        .filter(|e| e["step"].is_u64() && e["state"] == "running")
        .filter_map(|e| timestamp(&e["at"]))
        .collect();
    at.windows(2).map(|w| ms_between(w[0], w[1])).collect()
}

/// The first event that put the task in `running` (its claim).
fn claimed_at(task: &Value) -> Option<OffsetDateTime> {
    task["events"]
        .as_array()?
        .iter()
        .find(|e| e["state"] == "running")
        .and_then(|e| timestamp(&e["at"]))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The page the desktops open, on a loopback port of its own.
struct TextPage {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TextPage {
    async fn start() -> Result<Self, String> {
        let app = axum::Router::new().route(
            "/tasks",
            axum::routing::get(|| async { axum::response::Html(PAGE) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, task })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/tasks", self.port)
    }
}

impl Drop for TextPage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP call with a bearer token; the status and the body as JSON (`null` if none).
async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let mut request = server
        .http
        .request(method, format!("{}{path}", server.base));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{path}: {}", e.without_url()))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, value))
}

async fn create_task(server: &Server, session: &str, steps: &Value) -> Result<String, String> {
    let body = json!({"kind": "steps", "steps": steps});
    let path = format!("/api/sessions/{session}/tasks");
    let (status, task) = call(
        server,
        reqwest::Method::POST,
        &path,
        Some(&server.admin),
        Some(&body),
    )
    .await?;
    if status != 201 {
        return Err(format!("POST {path} answered {status}: {task}"));
    }
    task["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("POST {path} answered no id: {task}"))
}

/// `GET /api/tasks/{id}`, with its events (`with_events`) or without.
async fn get_task(server: &Server, id: &str, with_events: bool) -> Result<Value, String> {
    let path = if with_events {
        format!("/api/tasks/{id}")
    } else {
        format!("/api/tasks/{id}?after={}", u32::MAX)
    };
    match call(
        server,
        reqwest::Method::GET,
        &path,
        Some(&server.admin),
        None,
    )
    .await?
    {
        (200, task) => Ok(task),
        (status, body) => Err(format!("GET {path} answered {status}: {body}")),
    }
}

/// Waits until no task of the server is queued, running or waiting for a person (cheap
/// requests: one task at most each).
async fn wait_idle(server: &Server, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let mut open = false;
        for state in ["queued", "running", "waiting_for_person"] {
            let path = format!("/api/tasks?state={state}&limit=1");
            let (status, body) = call(
                server,
                reqwest::Method::GET,
                &path,
                Some(&server.admin),
                None,
            )
            .await?;
            if status != 200 {
                return Err(format!("GET {path} answered {status}: {body}"));
            }
            if body["tasks"].as_array().is_some_and(|t| !t.is_empty()) {
                open = true;
                break;
            }
        }
        if !open {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "tasks still open after {:.0} s",
                limit.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates the sessions on `url` and starts their desktops through DevTools discovery.
async fn sessions_with_desktops(
    server: &Server,
    url: &str,
    n: usize,
) -> Result<Vec<Created>, String> {
    let mut sessions = Vec::new();
    for i in 0..n {
        let created = server.create_session(Some(url)).await?;
        let path = format!(
            "/api/sessions/{}/cdp/json/list?token={}",
            created.id, created.token
        );
        let started = Instant::now();
        loop {
            // The token in the query only: a bearer would be taken for the credential.
            let (status, body) = call(server, reqwest::Method::GET, &path, None, None).await?;
            if status == 200 {
                break;
            }
            if status != 503 || started.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "session {}'s desktop did not start: {status} {body}",
                    created.id
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        progress(format!(
            "  tasks: desktop {}/{n} up in {:.1} s",
            i + 1,
            started.elapsed().as_secs_f64()
        ));
        sessions.push(created);
    }
    Ok(sessions)
}

/// Runs `per_session` tasks of `steps` in every session, created round-robin, and reads
/// what the server recorded of them.
async fn throughput(
    server: &Server,
    sessions: &[Created],
    runners: usize,
    per_session: usize,
    steps: &Value,
    name: &str,
) -> Result<Throughput, String> {
    let mut ids = Vec::new();
    for _ in 0..per_session {
        for s in sessions {
            ids.push(create_task(server, &s.id, steps).await?);
        }
    }
    wait_idle(server, Duration::from_secs(900)).await?;
    let (mut first, mut last) = (None::<OffsetDateTime>, None::<OffsetDateTime>);
    let (mut latency, mut queued, mut run) = (Vec::new(), Vec::new(), Vec::new());
    let (mut succeeded, mut first_error) = (0, None);
    for id in &ids {
        let task = get_task(server, id, true).await?;
        let created = timestamp(&task["created_at"]);
        let finished = timestamp(&task["finished_at"]);
        if let Some(c) = created {
            first = Some(first.map_or(c, |f| f.min(c)));
        }
        if task["state"] != "succeeded" {
            first_error.get_or_insert_with(|| {
                format!(
                    "{}: {}",
                    task["state"],
                    task["error"].as_str().unwrap_or("")
                )
            });
            continue;
        }
        let (Some(created), Some(finished)) = (created, finished) else {
            continue;
        };
        succeeded += 1;
        last = Some(last.map_or(finished, |l| l.max(finished)));
        latency.push(ms_between(created, finished));
        if let Some(claimed) = claimed_at(&task) {
            queued.push(ms_between(created, claimed));
            run.push(ms_between(claimed, finished));
        }
    }
    let seconds = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_seconds_f64(),
        _ => 0.0,
    };
    Ok(Throughput {
        steps: name.to_owned(),
        sessions: sessions.len(),
        runners,
        tasks: ids.len(),
        succeeded,
        failed: ids.len() - succeeded,
        first_error,
        seconds,
        latency: Summary::of(&latency),
        queued: Summary::of(&queued),
        run: Summary::of(&run),
    })
}

/// The poll expression of `assert_text` (crates/tasks steps.rs `poll_text`), verbatim.
fn assert_expression() -> String {
    let wanted = serde_json::to_string(TEXT).expect("a string serializes");
    format!(
        "(() => {{ const b = document.body; return !!b && b.innerText.includes({wanted}); }})()"
    )
}

/// `n` raw evaluates, then `n` evaluate + thumbnail, through the gateway: ms each.
async fn raw_round(
    server: &Server,
    session: &Created,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let url = format!(
        "{}/api/sessions/{}/cdp?token={}",
        server.ws_base(),
        session.id,
        session.token
    );
    let cdp = Cdp::connect_url(&url)
        .await
        .map_err(|e| format!("gateway DevTools: {e}"))?;
    let page = Page::attach(&cdp)
        .await
        .map_err(|e| format!("gateway DevTools: attaching to the tab: {e}"))?;
    let expression = assert_expression();
    let check = |v: Result<Value, _>| match v {
        Ok(Value::Bool(true)) => Ok(()),
        Ok(other) => Err(format!("the page does not show the text ({other})")),
        Err(e) => Err(format!("Runtime.evaluate: {e}")),
    };
    // A few to warm up, not counted.
    for _ in 0..5 {
        check(page.evaluate(&expression).await)?;
    }
    let (mut evaluate, mut thumbnail) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let sent = Instant::now();
        check(page.evaluate(&expression).await)?;
        evaluate.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    for _ in 0..n {
        let sent = Instant::now();
        check(page.evaluate(&expression).await)?;
        page.thumbnail()
            .await
            .map_err(|e| format!("thumbnail: {e}"))?;
        thumbnail.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = page.detach().await;
    drop(cdp);
    Ok((evaluate, thumbnail))
}

/// One task of `n` identical `assert_text` steps: the gaps between its step events, and
/// its run (claimed → succeeded), ms.
async fn steps_round(
    server: &Server,
    session: &Created,
    n: usize,
) -> Result<(Vec<f64>, f64), String> {
    let steps: Vec<Value> = (0..n)
        .map(|_| json!({"action": "assert_text", "text": TEXT}))
        .collect();
    let id = create_task(server, &session.id, &Value::Array(steps)).await?;
    let started = Instant::now();
    loop {
        let task = get_task(server, &id, false).await?;
        match task["state"].as_str() {
            Some("succeeded") => break,
            Some("failed" | "cancelled") => {
                return Err(format!(
                    "the {n}-step task {}: {}",
                    task["state"],
                    task["error"].as_str().unwrap_or_default()
                ));
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("the {n}-step task did not finish within 600 s"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let task = get_task(server, &id, true).await?;
    let events = task["events"].as_array().cloned().unwrap_or_default();
    let gaps = step_gaps(&events);
    if gaps.len() + 1 != n {
        return Err(format!(
            "the {n}-step task has {} step events",
            gaps.len() + 1
        ));
    }
    let run = match (claimed_at(&task), timestamp(&task["finished_at"])) {
        (Some(c), Some(f)) => ms_between(c, f),
        _ => 0.0,
    };
    Ok((gaps, run))
}

async fn step_overhead(
    server: &Server,
    session: &Created,
    rounds: usize,
    n: usize,
) -> Result<StepOverhead, String> {
    let (mut runner, mut evaluate, mut thumbnail, mut runs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let raw_first = round.is_multiple_of(2);
        if raw_first {
            let (e, t) = raw_round(server, session, n).await?;
            evaluate.extend(e);
            thumbnail.extend(t);
        }
        let (gaps, run) = steps_round(server, session, n).await?;
        runner.extend(gaps);
        runs.push(run);
        if !raw_first {
            let (e, t) = raw_round(server, session, n).await?;
            evaluate.extend(e);
            thumbnail.extend(t);
        }
        progress(format!(
            "  tasks: per-step round {}/{rounds}: runner {:.2} ms, raw evaluate {:.2} ms, \
             evaluate + thumbnail {:.2} ms (means so far)",
            round + 1,
            mean(&runner),
            mean(&evaluate),
            mean(&thumbnail)
        ));
    }
    Ok(StepOverhead {
        rounds,
        steps_per_task: n,
        runner_mean: mean(&runner),
        runner: Summary::of(&runner),
        raw_evaluate_mean: mean(&evaluate),
        raw_evaluate: Summary::of(&evaluate),
        raw_thumbnail_mean: mean(&thumbnail),
        raw_thumbnail: Summary::of(&thumbnail),
        task_run: Summary::of(&runs),
    })
}

/// Parts 1 and 2: a server with built-in runners and desktops.
async fn with_runners(options: &Options) -> Result<(Vec<Throughput>, StepOverhead), String> {
    let sessions = if options.quick { 2 } else { 4 };
    let per_session = if options.quick { 15 } else { 40 };
    let (rounds, steps) = if options.quick { (2, 30) } else { (8, 50) };
    let page = TextPage::start().await?;
    let mut flags: Vec<String> = [
        "--desktop-host-ports",
        &page.port.to_string(),
        "--warm-desktops",
        "0",
        "--max-desktops",
        &(sessions + 1).to_string(),
        "--steps-runners",
        &RUNNERS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.extend(options.serve_args.iter().cloned());
    let runners = flag_value(&flags, "--steps-runners")
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNNERS);
    let server = Server::start(&flags).await?;
    progress(format!("  tasks: starting {sessions} desktops"));
    let result = async {
        let created = sessions_with_desktops(&server, &page.url(), sessions).await?;
        // One task each: the page has loaded, and every path has run once.
        let one = json!([{"action": "assert_text", "text": TEXT}]);
        let warm = throughput(&server, &created, runners, 1, &one, "warm-up").await?;
        if warm.failed > 0 {
            return Err(format!(
                "a warm-up task failed: {}",
                warm.first_error.unwrap_or_default()
            ));
        }
        let two =
            json!([{"action": "goto", "url": page.url()}, {"action": "assert_text", "text": TEXT}]);
        let mut rows = Vec::new();
        for (steps, name) in [
            (&one, "1 step (`assert_text` on the open page)"),
            (&two, "2 steps (`goto` the page, `assert_text`)"),
        ] {
            progress(format!(
                "  tasks: {} tasks of {name}",
                per_session * created.len()
            ));
            let row = throughput(&server, &created, runners, per_session, steps, name).await?;
            progress(format!(
                "  tasks: {:.0} per minute ({} in {:.1} s); created → succeeded p50 {:.0} ms",
                row.per_minute(),
                row.succeeded,
                row.seconds,
                row.latency.p50
            ));
            rows.push(row);
        }
        progress(format!(
            "  tasks: per-step overhead, {rounds} rounds of {steps} steps"
        ));
        let overhead = step_overhead(&server, &created[0], rounds, steps).await?;
        for s in &created {
            server.revoke(&s.id).await;
        }
        Ok((rows, overhead))
    }
    .await;
    server.stop().await;
    result
}

/// Part 3: a deep queue and one external worker.
async fn claims(options: &Options) -> Result<Claims, String> {
    let mut flags: Vec<String> = ["--steps-runners", "0", "--warm-desktops", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.extend(options.serve_args.iter().cloned());
    let server = Server::start(&flags).await?;
    let result = async {
        let mut sessions = Vec::new();
        for _ in 0..CLAIM_SESSIONS {
            sessions.push(server.create_session(None).await?);
        }
        let steps = json!([{"action": "assert_text", "text": TEXT}]);
        progress(format!(
            "  tasks: queueing {QUEUED} tasks over {CLAIM_SESSIONS} sessions"
        ));
        let mut create = Vec::with_capacity(QUEUED);
        let started = Instant::now();
        for i in 0..QUEUED {
            let sent = Instant::now();
            create_task(&server, &sessions[i % sessions.len()].id, &steps).await?;
            create.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        let creates_per_s = QUEUED as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let (status, minted) = call(
            &server,
            reqwest::Method::POST,
            "/api/workers/tokens",
            Some(&server.admin),
            Some(&json!({"name": "bench-worker", "days": 1})),
        )
        .await?;
        let token = minted["token"]
            .as_str()
            .filter(|_| status == 201)
            .ok_or_else(|| format!("POST /api/workers/tokens answered {status}: {minted}"))?
            .to_owned();
        let drain = !options.quick;
        let claims_to_make = if drain { QUEUED } else { DEEP_CLAIMS };
        progress(format!("  tasks: {claims_to_make} claims by one worker"));
        let body = json!({"kinds": ["steps"], "wait_seconds": 0});
        let (mut claim, mut complete) = (Vec::new(), Vec::new());
        for _ in 0..claims_to_make {
            let sent = Instant::now();
            let (status, claimed) = call(
                &server,
                reqwest::Method::POST,
                "/api/workers/claim",
                Some(&token),
                Some(&body),
            )
            .await?;
            claim.push(sent.elapsed().as_secs_f64() * 1000.0);
            if status != 200 {
                return Err(format!(
                    "claim {} answered {status}: {claimed}",
                    claim.len()
                ));
            }
            let (Some(id), Some(lease)) = (
                claimed["task"]["id"].as_str(),
                claimed["lease"]["id"].as_str(),
            ) else {
                return Err(format!("a claim without a task or lease: {claimed}"));
            };
            let sent = Instant::now();
            let path = format!("/api/tasks/{id}/complete");
            let done = json!({"lease": lease, "result": {"ok": true}});
            let (status, answer) = call(
                &server,
                reqwest::Method::POST,
                &path,
                Some(&token),
                Some(&done),
            )
            .await?;
            complete.push(sent.elapsed().as_secs_f64() * 1000.0);
            if status != 200 {
                return Err(format!("POST {path} answered {status}: {answer}"));
            }
        }
        let deep = &claim[..DEEP_CLAIMS.min(claim.len())];
        let shallow = drain.then(|| Summary::of(&claim[claim.len().saturating_sub(100)..]));
        for s in &sessions {
            server.revoke(&s.id).await;
        }
        Ok(Claims {
            queued: QUEUED,
            sessions: CLAIM_SESSIONS,
            create: Summary::of(&create),
            creates_per_s,
            deep: Summary::of(deep),
            all: Summary::of(&claim),
            shallow,
            complete: Summary::of(&complete),
        })
    }
    .await;
    server.stop().await;
    result
}

pub async fn run(options: &Options) -> Result<TasksReport, String> {
    progress("  tasks: steps throughput and per-step overhead (built-in runners)");
    let (throughput, steps) = with_runners(options).await?;
    progress("  tasks: claim latency with a deep queue (external worker)");
    let claims = claims(options).await?;
    Ok(TasksReport {
        throughput,
        steps,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_step_gaps_are_read_as_the_server_would() {
        let args: Vec<String> = ["--steps-runners", "2", "--x", "--steps-runners=4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flag_value(&args, "--steps-runners").as_deref(), Some("4"));
        assert_eq!(
            flag_value(&args[..2], "--steps-runners").as_deref(),
            Some("2")
        );
        assert_eq!(flag_value(&args, "--steps"), None);

        let events = json!([
            {"seq": 1, "state": "queued", "at": "2026-11-28T10:00:00.000Z"},
            {"seq": 2, "state": "running", "at": "2026-11-28T10:00:00.010Z"},
            {"seq": 3, "state": "running", "step": 0, "at": "2026-11-28T10:00:00.050Z"},
            {"seq": 4, "state": "running", "step": 1, "at": "2026-11-28T10:00:00.070Z"},
            {"seq": 5, "state": "running", "step": 2, "at": "2026-11-28T10:00:00.095Z"},
            {"seq": 6, "state": "succeeded", "at": "2026-11-28T10:00:00.100Z"},
        ]);
        let events = events.as_array().unwrap();
        let gaps = step_gaps(events);
        assert_eq!(gaps.len(), 2);
        assert!(
            (gaps[0] - 20.0).abs() < 1e-6 && (gaps[1] - 25.0).abs() < 1e-6,
            "{gaps:?}"
        );
        let task = json!({"events": events});
        assert_eq!(
            claimed_at(&task).map(|t| t.millisecond()),
            Some(10),
            "the claim is the first running event"
        );
    }
}
