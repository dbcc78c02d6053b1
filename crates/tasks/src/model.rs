//! What a task is: its kind, input, state and events, and the steps a `steps` task runs.
//! The JSON shapes here are the API's (`docs/tasks.md`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// Limits on what a client may submit, so one request cannot fill the store or hold a
/// worker for ever.
pub mod limits {
    /// Steps in one `steps` task.
    pub const MAX_STEPS: usize = 200;
    /// Characters in a goal of an `agent` task.
    pub const MAX_GOAL_CHARS: usize = 4000;
    /// Characters in one string field of a step (selector, text, key, name).
    pub const MAX_FIELD_CHARS: usize = 2000;
    /// Characters in a URL.
    pub const MAX_URL_CHARS: usize = 4096;
    /// `sleep.ms` and `wait_for.timeout_ms`.
    pub const MAX_SLEEP_MS: u64 = 60_000;
    pub const MAX_WAIT_MS: u64 = 300_000;
    /// `scroll.dy`, either way.
    pub const MAX_SCROLL: i64 = 100_000;
    /// Bytes of a task's result.
    pub const MAX_RESULT_BYTES: usize = 256 * 1024;
    /// Characters in an event's message or an error.
    pub const MAX_MESSAGE_CHARS: usize = 2000;
    /// Tasks queued or running in one session at a time.
    pub const MAX_OPEN_PER_SESSION: usize = 50;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A scripted list of [`Step`]s.
    Steps,
    /// A goal in words, worked towards by a model.
    Agent,
}

impl TaskKind {
    pub const ALL: [TaskKind; 2] = [TaskKind::Steps, TaskKind::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Steps => "steps",
            TaskKind::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "steps" => Some(TaskKind::Steps),
            "agent" => Some(TaskKind::Agent),
            _ => None,
        }
    }
}

/// `queued → running → (waiting_for_person ⇄ running) → succeeded | failed | cancelled`;
/// a running task whose worker is lost goes back to `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Running,
    WaitingForPerson,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::WaitingForPerson => "waiting_for_person",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "waiting_for_person" => TaskState::WaitingForPerson,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }

    /// No change follows.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }

    /// A worker holds it (running, or waiting for the person).
    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Running | TaskState::WaitingForPerson)
    }
}

/// A task as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Task {
    pub id: String,
    pub session_id: String,
    pub kind: TaskKind,
    /// `{"steps": [...]}` or `{"goal": "..."}`.
    pub input: Value,
    pub state: TaskState,
    /// Claims so far (a lost worker's claim counts).
    pub attempts: u32,
    pub max_attempts: u32,
    /// The worker holding the task while it is running or waiting for the person.
    pub lease: Option<Lease>,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// The sequence number of the task's latest event.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// Who holds a running task, and until when. A worker's writes name the lease id; once
/// the lease has run out (or the task was cancelled) they are refused.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Lease {
    /// Secret to the worker: never shown by the API, only given to the claimant.
    #[serde(skip)]
    pub id: String,
    pub worker: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// One change of a task, kept for ever with the task. `seq` counts from 1 per task;
/// `cursor` orders every event of the store (a viewer resumes a session's updates after
/// the last cursor it saw).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskEvent {
    pub task_id: String,
    pub session_id: String,
    pub seq: u64,
    pub cursor: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The task's state after this event.
    pub state: TaskState,
    /// The index of the step this event is about (steps tasks), or the agent's turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether a screenshot was stored with this event (served by the API at
    /// `/api/tasks/{task_id}/screenshots/{seq}`).
    #[serde(default)]
    pub screenshot: bool,
}

/// What a new event says: written with a state change or on its own (progress).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventNote {
    pub step: Option<u32>,
    pub message: Option<String>,
    /// A JPEG or PNG image, stored with the event.
    pub screenshot: Option<Vec<u8>>,
}

impl EventNote {
    pub fn message(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            ..Self::default()
        }
    }
}

/// A new task, validated.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub session_id: String,
    pub kind: TaskKind,
    pub input: Value,
    pub max_attempts: u32,
    pub created_at: OffsetDateTime,
}

/// A new random task id: 22 URL-safe characters (128 bits).
pub fn new_task_id() -> String {
    random_id("t_")
}

/// A new random lease id.
pub fn new_lease_id() -> String {
    random_id("l_")
}

fn random_id(prefix: &str) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// One step of a `steps` task. The JSON shape (`{"action": ..., ...}`) is relied upon by
/// clients: see `docs/tasks.md`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Step {
    Goto {
        url: String,
    },
    /// By CSS selector, or by the visible text of the element.
    Click {
        #[serde(flatten)]
        target: Target,
    },
    Type {
        selector: String,
        text: String,
    },
    /// One key, named as Playwright and Puppeteer name it (`Enter`, `Tab`, `ArrowDown`) or
    /// a single character; no modifier combinations.
    Press {
        key: String,
    },
    WaitFor {
        #[serde(flatten)]
        until: WaitUntil,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// The element's text (an input's value), kept as `result.extracted[name]`.
    Extract {
        selector: String,
        name: String,
    },
    Screenshot,
    Scroll {
        dy: i64,
    },
    Sleep {
        ms: u64,
    },
    /// The page's visible text contains `text`.
    AssertText {
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Selector(String),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitUntil {
    Selector(String),
    Text(String),
    /// The page's URL contains this.
    Url(String),
}

impl Step {
    pub fn action(&self) -> &'static str {
        match self {
            Step::Goto { .. } => "goto",
            Step::Click { .. } => "click",
            Step::Type { .. } => "type",
            Step::Press { .. } => "press",
            Step::WaitFor { .. } => "wait_for",
            Step::Extract { .. } => "extract",
            Step::Screenshot => "screenshot",
            Step::Scroll { .. } => "scroll",
            Step::Sleep { .. } => "sleep",
            Step::AssertText { .. } => "assert_text",
        }
    }

    /// One line for people: `click "#submit"`, `goto https://…`.
    pub fn describe(&self) -> String {
        let short = |s: &str| {
            let mut out: String = s.chars().take(80).collect();
            if s.chars().count() > 80 {
                out.push('…');
            }
            out
        };
        match self {
            Step::Goto { url } => format!("goto {}", short(url)),
            Step::Click { target: Target::Selector(s) } => format!("click {:?}", short(s)),
            Step::Click { target: Target::Text(t) } => format!("click text {:?}", short(t)),
            Step::Type { selector, text } => {
                format!("type {} characters into {:?}", text.chars().count(), short(selector))
            }
            Step::Press { key } => format!("press {}", short(key)),
            Step::WaitFor { until, .. } => match until {
                WaitUntil::Selector(s) => format!("wait for {:?}", short(s)),
                WaitUntil::Text(t) => format!("wait for text {:?}", short(t)),
                WaitUntil::Url(u) => format!("wait for URL {:?}", short(u)),
            },
            Step::Extract { selector, name } => format!("extract {:?} as {}", short(selector), short(name)),
            Step::Screenshot => "screenshot".into(),
            Step::Scroll { dy } => format!("scroll {dy}"),
            Step::Sleep { ms } => format!("sleep {ms} ms"),
            Step::AssertText { text } => format!("assert text {:?}", short(text)),
        }
    }
}

/// Bad input, naming where: `steps[3].selector: must be a non-empty string`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

impl InputError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a client asked for, validated: `{"kind": "steps", "steps": [...]}` or
/// `{"kind": "agent", "goal": "..."}`.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskInput {
    Steps(Vec<Step>),
    Agent { goal: String },
}

impl TaskInput {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskInput::Steps(_) => TaskKind::Steps,
            TaskInput::Agent { .. } => TaskKind::Agent,
        }
    }

    /// The input as stored (`Task::input`).
    pub fn to_value(&self) -> Value {
        match self {
            TaskInput::Steps(steps) => serde_json::json!({ "steps": steps }),
            TaskInput::Agent { goal } => serde_json::json!({ "goal": goal }),
        }
    }

    /// Parses a request body (already JSON).
    pub fn parse(body: &Value) -> Result<Self, InputError> {
        let object = body
            .as_object()
            .ok_or_else(|| InputError::new("body", "must be a JSON object"))?;
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| InputError::new("kind", "required: \"steps\" or \"agent\""))?;
        match kind {
            "steps" => {
                only_fields(object, "", &["kind", "steps"])?;
                let steps = object
                    .get("steps")
                    .and_then(Value::as_array)
                    .ok_or_else(|| InputError::new("steps", "required: an array of steps"))?;
                Ok(TaskInput::Steps(parse_steps(steps)?))
            }
            "agent" => {
                only_fields(object, "", &["kind", "goal"])?;
                let goal = object
                    .get("goal")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .ok_or_else(|| InputError::new("goal", "required: a non-empty string"))?;
                check_goal(goal)?;
                Ok(TaskInput::Agent { goal: goal.to_owned() })
            }
            other => Err(InputError::new(
                "kind",
                format!("unknown kind {:?}: expected \"steps\" or \"agent\"", short(other)),
            )),
        }
    }

    /// Reads a stored input back.
    pub fn from_stored(kind: TaskKind, input: &Value) -> Result<Self, InputError> {
        let mut body = input.clone();
        if let Value::Object(o) = &mut body {
            o.insert("kind".into(), Value::String(kind.as_str().into()));
        }
        Self::parse(&body)
    }
}

/// A goal as the agent receives it: non-empty, bounded.
pub fn check_goal(goal: &str) -> Result<(), InputError> {
    if goal.trim().is_empty() {
        return Err(InputError::new("goal", "must not be empty"));
    }
    if goal.chars().count() > limits::MAX_GOAL_CHARS {
        return Err(InputError::new(
            "goal",
            format!("at most {} characters", limits::MAX_GOAL_CHARS),
        ));
    }
    Ok(())
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn only_fields(
    object: &serde_json::Map<String, Value>,
    prefix: &str,
    allowed: &[&str],
) -> Result<(), InputError> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(InputError::new(
            format!("{prefix}{}", short(unknown)),
            format!("unknown field; expected one of: {}", allowed.join(", ")),
        )),
    }
}

/// Validates a list of steps; an error names the step's index and field.
pub fn parse_steps(steps: &[Value]) -> Result<Vec<Step>, InputError> {
    if steps.is_empty() {
        return Err(InputError::new("steps", "must have at least one step"));
    }
    if steps.len() > limits::MAX_STEPS {
        return Err(InputError::new(
            "steps",
            format!("at most {} steps (got {})", limits::MAX_STEPS, steps.len()),
        ));
    }
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| parse_step(i, step))
        .collect()
}

fn parse_step(index: usize, value: &Value) -> Result<Step, InputError> {
    let at = |field: &str| format!("steps[{index}].{field}");
    let object = value
        .as_object()
        .ok_or_else(|| InputError::new(format!("steps[{index}]"), "must be an object with an \"action\""))?;
    let action = object
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| InputError::new(at("action"), "required: a string"))?;
    let prefix = format!("steps[{index}].");
    let string = |field: &str, max: usize| -> Result<String, InputError> {
        match object.get(field) {
            Some(Value::String(s)) if s.is_empty() => Err(InputError::new(at(field), "must not be empty")),
            Some(Value::String(s)) if s.chars().count() > max => {
                Err(InputError::new(at(field), format!("at most {max} characters")))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(InputError::new(at(field), "must be a string")),
            None => Err(InputError::new(at(field), "required")),
        }
    };
    let integer = |field: &str, min: i64, max: i64| -> Result<Option<i64>, InputError> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(InputError::new(at(field), format!("must be a whole number from {min} to {max}"))),
            },
        }
    };
    // The index (in `names`) of the one field present.
    let exactly_one = |names: &[&str]| -> Result<usize, InputError> {
        let present: Vec<usize> = (0..names.len())
            .filter(|&i| !matches!(object.get(names[i]), None | Some(Value::Null)))
            .collect();
        match present.as_slice() {
            [one] => Ok(*one),
            [] => Err(InputError::new(format!("steps[{index}]"), format!("needs one of: {}", names.join(", ")))),
            _ => Err(InputError::new(format!("steps[{index}]"), format!("needs only one of: {}", names.join(", ")))),
        }
    };
    let f = limits::MAX_FIELD_CHARS;
    let step = match action {
        "goto" => {
            only_fields(object, &prefix, &["action", "url"])?;
            let url = string("url", limits::MAX_URL_CHARS)?;
            if !(url.starts_with("http://") || url.starts_with("https://") || url == "about:blank") {
                return Err(InputError::new(at("url"), "must be an http:// or https:// URL"));
            }
            Step::Goto { url }
        }
        "click" => {
            only_fields(object, &prefix, &["action", "selector", "text"])?;
            let target = match exactly_one(&["selector", "text"])? {
                0 => Target::Selector(string("selector", f)?),
                _ => Target::Text(string("text", f)?),
            };
            Step::Click { target }
        }
        "type" => {
            only_fields(object, &prefix, &["action", "selector", "text"])?;
            let selector = string("selector", f)?;
            // Typing nothing is allowed in principle, but an empty string is more
            // likely a mistake; a field is cleared by the page, not by this step.
            let text = string("text", f)?;
            Step::Type { selector, text }
        }
        "press" => {
            only_fields(object, &prefix, &["action", "key"])?;
            let key = string("key", 64)?;
            if !crate::cdp::is_known_key(&key) {
                return Err(InputError::new(at("key"), crate::cdp::unknown_key(&key)));
            }
            Step::Press { key }
        }
        "wait_for" => {
            only_fields(object, &prefix, &["action", "selector", "text", "url", "timeout_ms"])?;
            let until = match exactly_one(&["selector", "text", "url"])? {
                0 => WaitUntil::Selector(string("selector", f)?),
                1 => WaitUntil::Text(string("text", f)?),
                _ => WaitUntil::Url(string("url", limits::MAX_URL_CHARS)?),
            };
            let timeout_ms = integer("timeout_ms", 1, limits::MAX_WAIT_MS as i64)?.map(|n| n as u64);
            Step::WaitFor { until, timeout_ms }
        }
        "extract" => {
            only_fields(object, &prefix, &["action", "selector", "name"])?;
            let selector = string("selector", f)?;
            let name = string("name", 100)?;
            Step::Extract { selector, name }
        }
        "screenshot" => {
            only_fields(object, &prefix, &["action"])?;
            Step::Screenshot
        }
        "scroll" => {
            only_fields(object, &prefix, &["action", "dy"])?;
            let dy = integer("dy", -limits::MAX_SCROLL, limits::MAX_SCROLL)?
                .ok_or_else(|| InputError::new(at("dy"), "required: pixels to scroll, negative for up"))?;
            Step::Scroll { dy }
        }
        "sleep" => {
            only_fields(object, &prefix, &["action", "ms"])?;
            let ms = integer("ms", 0, limits::MAX_SLEEP_MS as i64)?
                .ok_or_else(|| InputError::new(at("ms"), "required: milliseconds"))?;
            Step::Sleep { ms: ms as u64 }
        }
        "assert_text" => {
            only_fields(object, &prefix, &["action", "text"])?;
            Step::AssertText { text: string("text", f)? }
        }
        other => {
            return Err(InputError::new(
                at("action"),
                format!(
                    "unknown action {:?}; expected goto, click, type, press, wait_for, extract, \
                     screenshot, scroll, sleep or assert_text",
                    short(other)
                ),
            ));
        }
    };
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_action_parses_and_serializes_back_to_its_shape() {
        let steps = json!([
            {"action": "goto", "url": "http://127.0.0.1:1/form"},
            {"action": "click", "selector": "#go"},
            {"action": "click", "text": "Sign in"},
            {"action": "type", "selector": "input[name=q]", "text": "hello"},
            {"action": "press", "key": "Enter"},
            {"action": "wait_for", "selector": "#answer", "timeout_ms": 5000},
            {"action": "wait_for", "url": "/done"},
            {"action": "press", "key": "a"},
            {"action": "extract", "selector": "#answer", "name": "answer"},
            {"action": "screenshot"},
            {"action": "scroll", "dy": -300},
            {"action": "sleep", "ms": 10},
            {"action": "assert_text", "text": "Thanks"}
        ]);
        let parsed = parse_steps(steps.as_array().unwrap()).unwrap();
        assert_eq!(parsed.len(), 13);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), steps);
        let input = TaskInput::parse(&json!({"kind": "steps", "steps": steps})).unwrap();
        assert_eq!(TaskInput::from_stored(TaskKind::Steps, &input.to_value()).unwrap(), input);
    }

    #[test]
    fn errors_name_the_step_and_the_field() {
        let err = |body: Value| TaskInput::parse(&body).unwrap_err().to_string();
        assert_eq!(
            err(json!({"kind": "steps", "steps": [{"action": "goto", "url": "http://a"}, {"action": "click"}]})),
            "steps[1]: needs one of: selector, text"
        );
        assert_eq!(
            err(json!({"kind": "steps", "steps": [{"action": "type", "selector": "#a", "text": 5}]})),
            "steps[0].text: must be a string"
        );
        assert!(err(json!({"kind": "steps", "steps": [{"action": "fly"}]})).starts_with("steps[0].action: unknown action \"fly\""));
        assert!(err(json!({"kind": "steps", "steps": [{"action": "sleep", "ms": 600000}]})).starts_with("steps[0].ms: must be a whole number"));
        assert!(err(json!({"kind": "steps", "steps": [{"action": "goto", "url": "file:///etc/passwd"}]})).starts_with("steps[0].url:"));
        assert!(err(json!({"kind": "steps", "steps": [{"action": "screenshot", "extra": 1}]})).starts_with("steps[0].extra: unknown field"));
        assert_eq!(err(json!({"kind": "steps", "steps": []})), "steps: must have at least one step");
        assert!(err(json!({"kind": "steps", "steps": [{"action": "press", "key": "Control+A"}]})).starts_with("steps[0].key: unknown key \"Control+A\""));
        let many: Vec<Value> = (0..201).map(|_| json!({"action": "screenshot"})).collect();
        assert!(err(json!({"kind": "steps", "steps": many})).starts_with("steps: at most 200 steps"));
        assert_eq!(err(json!({"kind": "agent"})), "goal: required: a non-empty string");
        assert!(err(json!({"kind": "agent", "goal": "x".repeat(4001)})).starts_with("goal: at most"));
        assert!(err(json!({"kind": "dance"})).starts_with("kind: unknown kind"));
        assert_eq!(err(json!([])), "body: must be a JSON object");
    }
}
