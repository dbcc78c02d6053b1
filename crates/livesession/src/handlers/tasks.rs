//! The task API (`docs/tasks.md`):
//!
//! - `POST /api/sessions/{id}/tasks` `{"kind": "steps", "steps": [...]}` or
//!   `{"kind": "agent", "goal": "..."}` → `201` and the task, `queued`;
//! - `GET /api/sessions/{id}/tasks`: the session's tasks, oldest first;
//! - `GET /api/tasks/{id}` (with its events; `?after=SEQ` for the later ones only) and
//!   `GET /api/sessions/{id}/tasks/{task_id}` (the same, under the session's path, where
//!   the viewer's cookie goes);
//! - `POST /api/tasks/{id}/cancel` (and under the session's path);
//! - `GET /api/sessions/{id}/tasks/{task_id}/screenshots/{seq}`: the image of an event.
//!
//! Who may do what: the admin token anything; a session's interactive or agent access
//! token create and cancel in its own session; its view tokens read.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use livesession_session::{Session, SessionState};
use livesession_tasks::queue::CreateError;
use livesession_tasks::{Task, TaskEvent, TaskInput, WriteError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{App, AppState};
use crate::auth::Role;
use crate::error::{ApiError, ApiQuery};
use crate::proxy::ClientInfo;

/// Events returned by one `GET /api/tasks/{id}`; a client pages with `?after=`.
const EVENTS_PER_PAGE: u32 = 500;

/// Who is calling, for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    Admin,
    Token(Role),
}

impl Caller {
    /// Creating and cancelling tasks: the admin, or a token that may drive the browser.
    fn may_change(self) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Token(role) => matches!(role, Role::Interactive | Role::Agent),
        }
    }
}

/// The admin token, or an access token of session `id` (bearer, `?token=`, or the
/// viewer's cookie from our own pages), whose viewer link, if any, is not revoked.
pub(crate) async fn session_caller(
    app: &App,
    client: &ClientInfo,
    headers: &HeaderMap,
    query_token: Option<&str>,
    id: &str,
) -> Result<Caller, ApiError> {
    // A wrong admin token is counted (and a locked-out address refused) here.
    if crate::handlers::admin::is_admin(app, client.ip, headers)? {
        return Ok(Caller::Admin);
    }
    let claims = crate::handlers::session_token(app, headers, query_token, id)?;
    if let Some(link) = &claims.lnk {
        crate::handlers::links::check_link(app, id, link)
            .await
            .map_err(|refused| refused.api_error())?;
    }
    Ok(Caller::Token(claims.role))
}

fn forbidden_change() -> ApiError {
    ApiError::forbidden(
        "role_forbidden",
        "a view-only token can read tasks but not create or cancel them",
    )
}

pub(crate) async fn existing_session(app: &App, id: &str) -> Result<Session, ApiError> {
    app.sessions.get(id).await?.ok_or_else(ApiError::session_not_found)
}

fn task_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "task_not_found", "no task has this id")
}

/// A task as the API shows it, with the URLs a client follows.
/// A task as the API shows it: the stored task and where to read it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TaskView {
    #[serde(flatten)]
    task: Task,
    /// `/api/tasks/{id}`.
    url: String,
    /// With `GET` of one task: its events after `?after=` (at most a page).
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<Value>>,
}

impl TaskView {
    pub(crate) fn of(task: Task) -> Self {
        TaskView { url: format!("/api/tasks/{}", task.id), task, events: None }
    }
}

/// `GET /api/tasks`, `GET /api/sessions/{id}/tasks`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TaskList {
    tasks: Vec<TaskView>,
}

pub(crate) fn task_view(task: &Task) -> Value {
    serde_json::to_value(TaskView::of(task.clone())).expect("serializable")
}

/// An event as the API shows it: with the URL of its screenshot, if it has one.
pub(crate) fn event_view(event: &TaskEvent) -> Value {
    let mut view = serde_json::to_value(event).expect("serializable");
    if let Some(url) = screenshot_url(event) {
        view["screenshot_url"] = json!(url);
    }
    view
}

pub(crate) fn screenshot_url(event: &TaskEvent) -> Option<String> {
    event.screenshot.then(|| {
        format!(
            "/api/sessions/{}/tasks/{}/screenshots/{}",
            event.session_id, event.task_id, event.seq
        )
    })
}

/// Creates a task in an active session (also used by the checkout and free-start flows).
pub(crate) async fn create_task(app: &App, session: &Session, input: &TaskInput) -> Result<Task, ApiError> {
    match session.state {
        SessionState::Active if session.end_at(time::OffsetDateTime::now_utc()).is_none() => {}
        SessionState::Pending => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "session_not_active",
                "the session's payment is not confirmed yet",
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "session_ended",
                "the session has ended; its tasks were cancelled",
            ));
        }
    }
    let task = app.queue.create(&session.id, input).await.map_err(|e| match e {
        CreateError::SessionFull(max) => ApiError::new(
            StatusCode::CONFLICT,
            "too_many_tasks",
            format!("a session can have at most {max} tasks queued or running; wait for some to finish"),
        ),
        CreateError::Store(e) => ApiError::internal("the task store failed", e),
    })?;
    tracing::info!(session_id = %session.id, task_id = %task.id, kind = task.kind.as_str(), "task queued");
    Ok(task)
}

/// `POST /api/sessions/{id}/tasks`.
#[utoipa::path(post, path = "/api/sessions/{id}/tasks", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id")),
    request_body(content = Object, description = "`{\"kind\": \"steps\", \"steps\": [...]}` or `{\"kind\": \"agent\", \"goal\": \"...\"}` (docs/tasks.md)"),
    responses((status = 201, description = "Queued", body = TaskView), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody),
        (status = 409, description = "The session is not active yet, or has too many tasks", body = crate::error::ErrorBody), (status = 410, description = "The session has ended", body = crate::error::ErrorBody)))]
pub async fn post_task(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = session_caller(&app, &client, &headers, None, &id).await?;
    if !caller.may_change() {
        return Err(forbidden_change());
    }
    let body: Value = serde_json::from_slice(&body?).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("request body: {e}; expected {{\"kind\": \"steps\", \"steps\": [...]}} or {{\"kind\": \"agent\", \"goal\": \"...\"}}"),
        )
    })?;
    let input = TaskInput::parse(&body).map_err(|e| ApiError::bad_request("invalid_task", e.to_string()))?;
    let session = existing_session(&app, &id).await?;
    let task = create_task(&app, &session, &input).await?;
    Ok((StatusCode::CREATED, Json(task_view(&task))).into_response())
}

/// `GET /api/sessions/{id}/tasks`.
#[utoipa::path(get, path = "/api/sessions/{id}/tasks", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id"), crate::handlers::TokenQuery),
    responses((status = 200, description = "The session's tasks, oldest first", body = TaskList), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody)))]
pub async fn list_tasks(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> Result<Json<TaskList>, ApiError> {
    session_caller(&app, &client, &headers, query.token.as_deref(), &id).await?;
    existing_session(&app, &id).await?;
    let tasks = app
        .queue
        .store()
        .list_tasks(&livesession_tasks::store::TaskFilter {
            session_id: Some(id),
            state: None,
            limit: 1000,
        })
        .await
        .map_err(|e| ApiError::internal("the task store failed", e))?;
    Ok(Json(TaskList { tasks: tasks.into_iter().map(TaskView::of).collect() }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub session_id: Option<String>,
    pub state: Option<String>,
    pub limit: Option<u32>,
}

/// `GET /api/tasks` (admin): recent tasks of every session, most recent first, or one
/// session's (`?session_id=`, oldest first); `?state=` filters.
#[utoipa::path(get, path = "/api/tasks", tag = "tasks", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, description = "Recent tasks, most recent first (one session's: oldest first)", body = TaskList), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody)))]
pub async fn list_all_tasks(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    crate::handlers::admin::require_admin(&app, client.ip, &headers)?;
    let state = match query.state.as_deref() {
        None => None,
        Some(s) => Some(livesession_tasks::TaskState::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_state",
                "state: queued, running, waiting_for_person, succeeded, failed or cancelled",
            )
        })?),
    };
    let filter = livesession_tasks::store::TaskFilter {
        session_id: query.session_id,
        state,
        limit: query.limit.unwrap_or(100).clamp(1, 1000),
    };
    let tasks = app.queue.store().list_tasks(&filter).await?;
    Ok(Json(TaskList { tasks: tasks.into_iter().map(TaskView::of).collect() }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// Only events with a greater `seq`.
    pub after: Option<u64>,
    pub token: Option<String>,
}

/// The task, and the caller's right to it: the token's session must be the task's.
async fn task_for(
    app: &App,
    client: &ClientInfo,
    headers: &HeaderMap,
    query_token: Option<&str>,
    task_id: &str,
    session_in_path: Option<&str>,
) -> Result<(Task, Caller), ApiError> {
    let task = app
        .queue
        .store()
        .get_task(task_id)
        .await
        .map_err(|e| ApiError::internal("the task store failed", e))?;
    // A task of another session is "not found" to a session's token, as an unknown id is.
    let Some(task) = task.filter(|t| session_in_path.is_none_or(|s| s == t.session_id)) else {
        // Under a session's path the credentials are checked first, as for a known task.
        if let Some(session) = session_in_path {
            session_caller(app, client, headers, query_token, session).await?;
        }
        return Err(task_not_found());
    };
    let caller = session_caller(app, client, headers, query_token, &task.session_id)
        .await
        .map_err(|e| if e.code == "token_invalid" { task_not_found() } else { e })?;
    Ok((task, caller))
}

async fn show(app: &App, task: Task, after: u64) -> Result<Json<Value>, ApiError> {
    let events = app
        .queue
        .store()
        .task_events(&task.id, after, EVENTS_PER_PAGE)
        .await
        .map_err(|e| ApiError::internal("the task store failed", e))?;
    let mut view = task_view(&task);
    view["events"] = Value::Array(events.iter().map(event_view).collect());
    Ok(Json(view))
}

/// `GET /api/tasks/{id}`.
#[utoipa::path(get, path = "/api/tasks/{id}", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The task's id"), TaskQuery),
    responses((status = 200, description = "The task with its `events` after `after`", body = TaskView), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No task has this id", body = crate::error::ErrorBody)))]
pub async fn get_task(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> Result<Json<Value>, ApiError> {
    let (task, _) = task_for(&app, &client, &headers, query.token.as_deref(), &task_id, None).await?;
    show(&app, task, query.after.unwrap_or(0)).await
}

/// `GET /api/sessions/{id}/tasks/{task_id}`.
#[utoipa::path(get, path = "/api/sessions/{id}/tasks/{task_id}", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id"), ("task_id" = String, Path, description = "The task's id"), TaskQuery),
    responses((status = 200, description = "The task with its `events` after `after`", body = TaskView), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No such session or task", body = crate::error::ErrorBody)))]
pub async fn get_session_task(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path((id, task_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> Result<Json<Value>, ApiError> {
    let (task, _) = task_for(&app, &client, &headers, query.token.as_deref(), &task_id, Some(&id)).await?;
    show(&app, task, query.after.unwrap_or(0)).await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: Option<String>,
}

async fn cancel(
    app: &App,
    client: &ClientInfo,
    headers: &HeaderMap,
    task_id: &str,
    session_in_path: Option<&str>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (task, caller) = task_for(app, client, headers, None, task_id, session_in_path).await?;
    if !caller.may_change() {
        return Err(forbidden_change());
    }
    let request: CancelRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}; expected {{\"reason\": \"...\"}} or nothing")))?
    };
    let by = match caller {
        Caller::Admin => "the operator",
        Caller::Token(Role::Agent) => "the session's agent",
        Caller::Token(_) => "the person",
    };
    let reason = match request.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) if r.chars().count() > 300 || r.chars().any(char::is_control) => {
            return Err(ApiError::bad_request("invalid_reason", "reason: at most 300 characters, no control characters"));
        }
        Some(r) => format!("cancelled by {by}: {r}"),
        None => format!("cancelled by {by}"),
    };
    let was_waiting = task.state == livesession_tasks::TaskState::WaitingForPerson;
    let task = app.queue.cancel(&task.id, &reason).await.map_err(|e| match e {
        WriteError::WrongState(state) => ApiError::new(
            StatusCode::CONFLICT,
            "task_finished",
            format!("the task is already {state}"),
        ),
        WriteError::NotFound => task_not_found(),
        e => ApiError::internal("the task store failed", e),
    })?;
    tracing::info!(task_id = %task.id, session_id = %task.session_id, "task cancelled");
    if was_waiting {
        // Nobody needs to take control for a task that no longer runs.
        app.control.withdraw_request(&task.session_id);
    }
    Ok(Json(task_view(&task)))
}

/// `POST /api/tasks/{id}/cancel` `{"reason"?}`.
#[utoipa::path(post, path = "/api/tasks/{id}/cancel", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The task's id")),
    request_body(content = CancelRequest, description = "Optional"),
    responses((status = 200, description = "The task, cancelled (or as it was, if it had finished)", body = TaskView), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody),
(status = 404, description = "No task has this id", body = crate::error::ErrorBody), (status = 409, description = "The task has already finished", body = crate::error::ErrorBody)))]
pub async fn cancel_task(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(task_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    cancel(&app, &client, &headers, &task_id, None, body?).await
}

/// `POST /api/sessions/{id}/tasks/{task_id}/cancel`.
#[utoipa::path(post, path = "/api/sessions/{id}/tasks/{task_id}/cancel", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id"), ("task_id" = String, Path, description = "The task's id")),
    request_body(content = CancelRequest, description = "Optional"),
    responses((status = 200, description = "The task, cancelled (or as it was, if it had finished)", body = TaskView), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody),
(status = 404, description = "No such session or task", body = crate::error::ErrorBody), (status = 409, description = "The task has already finished", body = crate::error::ErrorBody)))]
pub async fn cancel_session_task(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path((id, task_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    cancel(&app, &client, &headers, &task_id, Some(&id), body?).await
}

/// `GET /api/sessions/{id}/tasks/{task_id}/screenshots/{seq}`.
#[utoipa::path(get, path = "/api/sessions/{id}/tasks/{task_id}/screenshots/{seq}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id"), ("task_id" = String, Path, description = "The task's id"), ("seq" = u64, Path, description = "The event's sequence number"), TaskQuery),
    responses(
        (status = 200, description = "The event's screenshot", content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"))),
        (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No such session, task or screenshot", body = crate::error::ErrorBody),
    ))]
pub async fn screenshot(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path((id, task_id, seq)): Path<(String, String, u64)>,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> Result<Response, ApiError> {
    let (task, _) = task_for(&app, &client, &headers, query.token.as_deref(), &task_id, Some(&id)).await?;
    let image = app
        .queue
        .store()
        .screenshot(&task.id, seq)
        .await
        .map_err(|e| ApiError::internal("the task store failed", e))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "screenshot_not_found", "this event has no screenshot"))?;
    let content_type = if image.starts_with(&[0x89, b'P', b'N', b'G']) { "image/png" } else { "image/jpeg" };
    let mut response = image.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // An event's image never changes; it is private to the session.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400, immutable"));
    Ok(response)
}

/// The landing page's forms as the OpenAPI spec shows them; read by [`form_goal`].
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct GoalForm {
    /// A goal in words: an agent task that starts in the new session.
    goal: Option<String>,
}

/// The one field [`form_goal`] reads; [`GoalForm`] shows it (a test ties them).
const GOAL_FIELD: &str = "goal";

/// The optional `goal` field of the landing page's forms (`application/x-www-form-urlencoded`;
/// an empty body has none). A blank goal is none.
pub(crate) fn form_goal(body: &[u8]) -> Result<Option<String>, ApiError> {
    let goal = form_urlencoded::parse(body)
        .find(|(name, _)| name == GOAL_FIELD)
        // A browser posts a textarea's line breaks as CR LF; the page counted them as one.
        .map(|(_, value)| value.trim().replace("\r\n", "\n"))
        .filter(|goal| !goal.is_empty());
    if let Some(goal) = &goal {
        livesession_tasks::model::check_goal(goal)
            .map_err(|e| ApiError::bad_request("invalid_goal", e.to_string()))?;
    }
    Ok(goal)
}

/// Starts the agent task of a goal written on the landing page, in its new session.
pub(crate) async fn start_goal(app: &App, session: &Session, goal: &str) -> Result<Task, ApiError> {
    create_task(app, session, &TaskInput::Agent { goal: goal.to_owned() }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specs_goal_form_has_the_field_the_parser_reads() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(GoalForm::schema()).unwrap();
        let shown: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(shown, [GOAL_FIELD]);
        assert!(schema.get("required").is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)), "the goal is optional: {schema}");
    }

    #[test]
    fn a_forms_goal_is_read_trimmed_with_its_line_breaks_and_a_blank_one_is_none() {
        assert_eq!(form_goal(b"").unwrap(), None);
        assert_eq!(form_goal(b"goal=+++").unwrap(), None);
        assert_eq!(form_goal(b"other=x").unwrap(), None);
        assert_eq!(form_goal(b"goal=+find+a+flight%0D%0Ato+Oslo+").unwrap().as_deref(), Some("find a flight\nto Oslo"));
        let too_long = format!("goal={}", "x".repeat(livesession_tasks::model::limits::MAX_GOAL_CHARS + 1));
        let refused = form_goal(too_long.as_bytes()).unwrap_err();
        assert_eq!((refused.status, refused.code), (axum::http::StatusCode::BAD_REQUEST, "invalid_goal"));
    }
}
