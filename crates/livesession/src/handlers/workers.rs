//! The worker protocol (`docs/tasks.md`): external workers claim tasks over HTTP, drive
//! the session's browser through the DevTools endpoint with the agent token they are
//! given, and report back under their lease.
//!
//! - `POST /api/workers/tokens` (admin) `{"name", "days"?}`: a worker token;
//! - `POST /api/workers/claim` (worker token or admin) `{"kinds", "wait_seconds"?}`: a
//!   long poll; `200` with a task, its lease, a CDP URL and an agent token scoped to the
//!   task's session, or `204` when nothing came within the wait;
//! - `POST /api/tasks/{id}/heartbeat|events|complete|fail` `{"lease", ...}`: refused with
//!   `409 lease_lost` once the lease has ended (ran out and the task went back to the
//!   queue, or it was cancelled), so a late worker never overwrites a newer attempt.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use livesession_tasks::store::Transition;
use livesession_tasks::{EventNote, Task, TaskKind, WriteError};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::app::{App, AppState};
use crate::auth::{Role, TokenError};
use crate::error::ApiError;
use crate::handlers::admin::{Bearer, admin_bearer, require_admin};
use crate::handlers::tasks::TaskView;
use crate::proxy::ClientInfo;

/// The longest long poll: proxies cut idle requests after a minute or so.
const MAX_WAIT_SECONDS: u64 = 50;
const MAX_WORKER_NAME_CHARS: usize = 64;
/// A screenshot sent with an event, decoded.
pub const MAX_SCREENSHOT_BYTES: usize = 2 << 20;

/// The worker a request comes from: a worker token's name, or the admin's.
fn worker_of(app: &App, client: &ClientInfo, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = |code: &'static str, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    match admin_bearer(app, client.ip, headers)? {
        Bearer::Admin => Ok("admin".to_owned()),
        Bearer::None => Err(unauthorized("auth_required", "a worker token (or the admin token) is required as a bearer")),
        Bearer::Other(token) => match app.tokens.verify_worker(token) {
            Ok(claims) => Ok(claims.sub),
            Err(TokenError::Expired) => Err(unauthorized("token_expired", "the worker token expired; ask the operator for a new one")),
            Err(TokenError::Invalid) => Err(unauthorized("token_invalid", "the token is not a worker token of this server")),
        },
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}; expected {expected}")))
}

/// Built-in runners claim as `builtin-…` (`/readyz` counts them apart); external workers
/// may not take such a name.
fn valid_worker_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with("builtin-")
        && name.chars().count() <= MAX_WORKER_NAME_CHARS
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    name: String,
    days: Option<u64>,
}

/// `POST /api/workers/tokens` (admin).
#[utoipa::path(post, path = "/api/workers/tokens", tag = "workers", security(("bearer" = [])), request_body = MintRequest,
    responses((status = 201, description = "`{\"worker\", \"token\", \"expires_at\"}`", body = Object), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody)))]
pub async fn mint_worker_token(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    let request: MintRequest = json_body(&body?, "{\"name\": \"...\", \"days\"?: N}")?;
    if !valid_worker_name(&request.name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("name: 1 to {MAX_WORKER_NAME_CHARS} letters, digits or - _ . : @, not starting with \"builtin-\""),
        ));
    }
    let max_days = app.config.tasks.worker_token_days.max(1);
    let days = request.days.unwrap_or(max_days);
    if days == 0 || days > max_days {
        return Err(ApiError::bad_request("invalid_days", format!("days: from 1 to {max_days}")));
    }
    let expires_at = OffsetDateTime::now_utc() + time::Duration::days(days as i64);
    let token = app.tokens.worker(&request.name, expires_at);
    tracing::info!(worker = %request.name, days, "worker token issued");
    let body = json!({
        "worker": request.name,
        "token": token,
        "expires_at": rfc3339(expires_at),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /api/workers/claim`: the claimed task and what the worker needs to run it. No
/// `Debug`: it holds the lease id and a token.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Claimed {
    task: TaskView,
    lease: ClaimedLease,
    session_id: String,
    /// The session's browser-level DevTools WebSocket (add `?token=`).
    cdp_url: String,
    /// Its HTTP discovery base (`/json/version`, `/json/list`).
    cdp_http_url: String,
    /// An agent token of the task's session.
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    token_expires_at: OffsetDateTime,
}

/// The lease: its id (secret to the worker; every write names it) and until when it holds.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ClaimedLease {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    until: OffsetDateTime,
}

/// `POST /api/tasks/{id}/heartbeat`: the lease extended, and a fresh agent token.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Renewed {
    task: TaskView,
    lease: RenewedLease,
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    token_expires_at: OffsetDateTime,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RenewedLease {
    #[serde(with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
}

/// A worker's write answered: the task as it is now.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TaskAfter {
    task: TaskView,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WorkerClaimRequest {
    kinds: Vec<String>,
    wait_seconds: Option<u64>,
}

/// The agent token a worker drives the task's session with, and when it ends.
async fn agent_token(app: &App, session_id: &str) -> Result<(String, OffsetDateTime), ApiError> {
    let session = app.sessions.get(session_id).await?.ok_or_else(ApiError::session_not_found)?;
    Ok(app.tokens.access(session_id, Role::Agent, session.expires_at))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("formattable")
}

/// `POST /api/workers/claim`.
#[utoipa::path(post, path = "/api/workers/claim", tag = "workers", security(("bearer" = [])), request_body = WorkerClaimRequest,
    responses(
        (status = 200, description = "A task, its lease, and an agent token for its session (docs/tasks.md)", body = Claimed),
        (status = 204, description = "No task came within `wait_seconds`"),
        (status = 401, description = "No valid worker token or admin token", body = crate::error::ErrorBody),
    ))]
pub async fn claim(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let worker = worker_of(&app, &client, &headers)?;
    let request: WorkerClaimRequest = json_body(&body?, "{\"kinds\": [\"steps\" | \"agent\"], \"wait_seconds\"?: N}")?;
    let mut kinds = Vec::new();
    for (i, kind) in request.kinds.iter().enumerate() {
        let kind = TaskKind::parse(kind).ok_or_else(|| {
            ApiError::bad_request("invalid_kinds", format!("kinds[{i}]: unknown kind; expected \"steps\" or \"agent\""))
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err(ApiError::bad_request("invalid_kinds", "kinds: name at least one of \"steps\", \"agent\""));
    }
    let wait = request.wait_seconds.unwrap_or(30);
    if wait > MAX_WAIT_SECONDS {
        return Err(ApiError::bad_request("invalid_wait", format!("wait_seconds: from 0 to {MAX_WAIT_SECONDS}")));
    }
    let claimed = app
        .queue
        .claim(&kinds, &worker, Duration::from_secs(wait), &app.shutdown)
        .await
        .map_err(|e| ApiError::internal("the task store failed", e))?;
    let Some(claimed) = claimed else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let task = &claimed.task;
    let (token, token_expires_at) = agent_token(&app, &task.session_id).await?;
    let ws_base = app.public_url.replacen("http", "ws", 1);
    tracing::info!(worker = %worker, task_id = %task.id, session_id = %task.session_id, attempt = task.attempts, "task claimed by a worker");
    Ok(Json(Claimed {
        lease: ClaimedLease { id: claimed.lease.id, until: claimed.lease.until },
        session_id: task.session_id.clone(),
        cdp_url: format!("{ws_base}/api/sessions/{}/cdp", task.session_id),
        cdp_http_url: format!("{}/api/sessions/{}/cdp", app.public_url, task.session_id),
        token,
        token_expires_at,
        task: TaskView::of(claimed.task),
    })
    .into_response())
}

fn lease_refused(e: WriteError) -> ApiError {
    match e {
        WriteError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "task_not_found", "no task has this id"),
        WriteError::LeaseLost(_) => ApiError::new(StatusCode::CONFLICT, "lease_lost", e.to_string()),
        WriteError::WrongState(state) => {
            ApiError::new(StatusCode::CONFLICT, "wrong_state", format!("not allowed while the task is {state}"))
        }
        WriteError::Store(e) => ApiError::internal("the task store failed", e),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HeartbeatRequest {
    lease: String,
}

/// `POST /api/tasks/{id}/heartbeat` `{"lease"}`: extends the lease; answers a fresh agent
/// token.
#[utoipa::path(post, path = "/api/tasks/{id}/heartbeat", tag = "workers", security(("bearer" = [])), params(("id" = String, Path, description = "The task's id")), request_body = HeartbeatRequest,
    responses((status = 200, description = "The lease, extended; a fresh agent token", body = Renewed), (status = 401, description = "No valid worker token or admin token", body = crate::error::ErrorBody), (status = 404, description = "No task has this id", body = crate::error::ErrorBody),
        (status = 409, description = "The lease was lost (ran out, or the task was cancelled), or the task is not in a state for this", body = crate::error::ErrorBody)))]
pub async fn heartbeat(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Renewed>, ApiError> {
    worker_of(&app, &client, &headers)?;
    let request: HeartbeatRequest = json_body(&body?, "{\"lease\": \"...\"}")?;
    let task = app.queue.heartbeat(&task_id, &request.lease).await.map_err(lease_refused)?;
    let (token, token_expires_at) = agent_token(&app, &task.session_id).await?;
    Ok(Json(Renewed {
        lease: RenewedLease { until: task.lease.as_ref().map(|l| l.until) },
        token,
        token_expires_at,
        task: TaskView::of(task),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EventRequest {
    lease: String,
    message: Option<String>,
    step: Option<u32>,
    /// A JPEG or PNG, base64.
    screenshot: Option<String>,
    /// `waiting_for_person` (the message says why; viewers are asked to take control) or
    /// `running` (the person is done).
    state: Option<String>,
}

/// `POST /api/tasks/{id}/events`.
#[utoipa::path(post, path = "/api/tasks/{id}/events", tag = "workers", security(("bearer" = [])), params(("id" = String, Path, description = "The task's id")), request_body = EventRequest,
    responses((status = 200, description = "The task after the event", body = TaskAfter), (status = 401, description = "No valid worker token or admin token", body = crate::error::ErrorBody), (status = 404, description = "No task has this id", body = crate::error::ErrorBody),
        (status = 409, description = "The lease was lost (ran out, or the task was cancelled), or the task is not in a state for this", body = crate::error::ErrorBody)))]
pub async fn post_event(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskAfter>, ApiError> {
    worker_of(&app, &client, &headers)?;
    let request: EventRequest = json_body(
        &body?,
        "{\"lease\": \"...\", \"message\"?, \"step\"?, \"screenshot\"? (base64), \"state\"?: \"waiting_for_person\" | \"running\"}",
    )?;
    let screenshot = match &request.screenshot {
        None => None,
        Some(b64) => {
            let image = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ApiError::bad_request("invalid_screenshot", format!("screenshot: not base64 ({e})")))?;
            let known = image.starts_with(&[0xFF, 0xD8, 0xFF]) || image.starts_with(&[0x89, b'P', b'N', b'G']);
            if !known || image.len() > MAX_SCREENSHOT_BYTES {
                return Err(ApiError::bad_request(
                    "invalid_screenshot",
                    format!("screenshot: a JPEG or PNG of at most {} MiB", MAX_SCREENSHOT_BYTES >> 20),
                ));
            }
            Some(image)
        }
    };
    let change = match request.state.as_deref() {
        None => Transition::Progress,
        Some("waiting_for_person") => Transition::WaitForPerson,
        Some("running") => Transition::Resume,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_state",
                "state: \"waiting_for_person\" or \"running\" (finish with /complete or /fail)",
            ));
        }
    };
    let asks_person = matches!(change, Transition::WaitForPerson);
    let resumes = matches!(change, Transition::Resume);
    let reason = request.message.clone();
    let note = EventNote { step: request.step, message: request.message, screenshot };
    let task = app.queue.update(&task_id, &request.lease, change, note).await.map_err(lease_refused)?;
    if asks_person {
        // The viewers show the reason and offer "Take control", as for an agent's
        // Livesession.requestHuman.
        app.control.request_human(&task.session_id, reason.as_deref().unwrap_or("the agent needs a person"));
    } else if resumes {
        // The worker goes on (the person is done, or was never needed after all).
        app.control.withdraw_request(&task.session_id);
    }
    Ok(Json(TaskAfter { task: TaskView::of(task) }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CompleteRequest {
    lease: String,
    #[serde(default)]
    result: Value,
}

/// `POST /api/tasks/{id}/complete` `{"lease", "result"}`.
#[utoipa::path(post, path = "/api/tasks/{id}/complete", tag = "workers", security(("bearer" = [])), params(("id" = String, Path, description = "The task's id")), request_body = CompleteRequest,
    responses((status = 200, description = "The task, succeeded", body = TaskAfter), (status = 401, description = "No valid worker token or admin token", body = crate::error::ErrorBody), (status = 404, description = "No task has this id", body = crate::error::ErrorBody),
        (status = 409, description = "The lease was lost (ran out, or the task was cancelled), or the task is not in a state for this", body = crate::error::ErrorBody)))]
pub async fn complete(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskAfter>, ApiError> {
    let worker = worker_of(&app, &client, &headers)?;
    let request: CompleteRequest = json_body(&body?, "{\"lease\": \"...\", \"result\": ...}")?;
    let task = finish(&app, &task_id, &request.lease, Transition::Succeed(request.result), "done").await?;
    tracing::info!(worker = %worker, task_id = %task.id, "task completed by a worker");
    Ok(Json(TaskAfter { task: TaskView::of(task) }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct FailRequest {
    lease: String,
    error: String,
}

/// `POST /api/tasks/{id}/fail` `{"lease", "error"}`.
#[utoipa::path(post, path = "/api/tasks/{id}/fail", tag = "workers", security(("bearer" = [])), params(("id" = String, Path, description = "The task's id")), request_body = FailRequest,
    responses((status = 200, description = "The task, failed (or queued again while attempts remain)", body = TaskAfter), (status = 401, description = "No valid worker token or admin token", body = crate::error::ErrorBody), (status = 404, description = "No task has this id", body = crate::error::ErrorBody),
        (status = 409, description = "The lease was lost (ran out, or the task was cancelled), or the task is not in a state for this", body = crate::error::ErrorBody)))]
pub async fn fail(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskAfter>, ApiError> {
    let worker = worker_of(&app, &client, &headers)?;
    let request: FailRequest = json_body(&body?, "{\"lease\": \"...\", \"error\": \"...\"}")?;
    if request.error.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_error", "error: say why the task failed"));
    }
    let message = request.error.clone();
    let task = finish(&app, &task_id, &request.lease, Transition::Fail(request.error), &message).await?;
    tracing::info!(worker = %worker, task_id = %task.id, "task failed by a worker");
    Ok(Json(TaskAfter { task: TaskView::of(task) }))
}

async fn finish(app: &App, task_id: &str, lease: &str, change: Transition, message: &str) -> Result<Task, ApiError> {
    let note = EventNote::message(message.chars().take(500).collect::<String>());
    let task = app.queue.update(task_id, lease, change, note).await.map_err(lease_refused)?;
    // A request for the person ends with the task that made it.
    app.control.withdraw_request(&task.session_id);
    Ok(task)
}
