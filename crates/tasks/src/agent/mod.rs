//! The built-in agent: a loop against an OpenAI-compatible Chat Completions API (OpenAI,
//! or a local server such as llama.cpp's, vLLM or Ollama) that works towards a goal in the
//! session's browser while the person watches.
//!
//! Each turn sends the goal, the page's URL and title, a compact digest of the page
//! ([`digest`]) and, when the model takes images, a screenshot; the model answers with tool
//! calls: the browser steps of a `steps` task (`goto`, `click`, `type`, `press`,
//! `wait_for`, `extract`, `scroll`, validated the same way), `ask_person {reason}` (the task
//! waits for the person through the hand-over, then goes on) and `finish {result}`.
//!
//! Bounded: turns, time and tokens per task ([`AgentSettings`]); calls per turn
//! ([`MAX_CALLS_PER_TURN`]); browser actions failing in a row ([`MAX_FAILED_IN_A_ROW`]); the
//! conversation kept ([`conversation`]). The API key is sent only in the `Authorization`
//! header: never logged, never in an error, redacted from `Debug`.

pub mod conversation;
pub mod digest;
pub mod model_api;
pub mod tools;

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::cdp::Page;
use crate::model::{EventNote, Step, limits};
use crate::runner::{RunContext, Stopped};
use crate::steps::{human_duration, run_step};
use conversation::{Conversation, PageState};
use digest::{Digest, clip};
use model_api::{CallError, ModelApi, ToolCall};
use tools::{Action, Problem};

/// Tool calls run per turn; further ones are answered "not run".
pub const MAX_CALLS_PER_TURN: usize = 5;
/// Browser actions failing one after the other before the task fails.
pub const MAX_FAILED_IN_A_ROW: u32 = 5;
/// How long reading the page's state (digest, screenshot) may take before the turn goes
/// on without it.
const STATE_TIMEOUT: Duration = Duration::from_secs(15);
/// Characters of a tool's outcome told to the model.
const MAX_OUTCOME_CHARS: usize = 2000;
/// Characters of the model's own words shown to the viewers.
const MAX_THOUGHT_CHARS: usize = 300;

/// How the agent reaches its model, and its bounds per task.
#[derive(Clone)]
pub struct AgentSettings {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`; requests go to
    /// `{api_base}/chat/completions`.
    pub api_base: String,
    /// Sent as `Authorization: Bearer`; none for local servers that want none.
    pub api_key: Option<String>,
    pub model: String,
    /// Send a screenshot (JPEG, as an `image_url` data URL) each turn: for models that
    /// take images.
    pub images: bool,
    /// Model calls per task.
    pub max_turns: u32,
    /// The agent's own time per task (time waiting for the person is not counted).
    pub max_duration: Duration,
    /// `usage.total_tokens` summed over the task's model calls.
    pub max_tokens: u64,
    /// One model call (both tries, when it is retried).
    pub request_timeout: Duration,
    /// One browser action (`wait_for.timeout_ms` takes its place for that action).
    pub step_timeout: Duration,
}

impl AgentSettings {
    pub const DEFAULT_MAX_TURNS: u32 = 30;
    pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(10 * 60);
    pub const DEFAULT_MAX_TOKENS: u64 = 200_000;
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
    pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

    /// The given endpoint and model, no key, images on, the default bounds.
    pub fn new(api_base: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            api_base: api_base.into(),
            api_key: None,
            model: model.into(),
            images: true,
            max_turns: Self::DEFAULT_MAX_TURNS,
            max_duration: Self::DEFAULT_MAX_DURATION,
            max_tokens: Self::DEFAULT_MAX_TOKENS,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            step_timeout: Self::DEFAULT_STEP_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSettings")
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("model", &self.model)
            .field("images", &self.images)
            .field("max_turns", &self.max_turns)
            .field("max_duration", &self.max_duration)
            .field("max_tokens", &self.max_tokens)
            .field("request_timeout", &self.request_timeout)
            .field("step_timeout", &self.step_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    /// The run was stopped from outside (cancel, lost lease, shutdown).
    #[error("{0}")]
    Stopped(Stopped),
    /// The task's error, for people.
    #[error("{0}")]
    Failed(String),
}

impl From<Stopped> for AgentError {
    fn from(stopped: Stopped) -> Self {
        AgentError::Stopped(stopped)
    }
}

/// An HTTP client for the model's API (rustls with ring). The timeouts are applied per
/// call by [`run_agent`]; this one only bounds connecting. Redirects are not followed: the
/// API does not redirect, and a redirect would carry the request (and its key) elsewhere;
/// one shows as the task's error (`the model's API answered 301: …`).
pub fn http_client(settings: &AgentSettings) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.request_timeout.min(Duration::from_secs(30)))
        .build()
        .expect("an HTTP client with the installed TLS provider")
}

/// Works towards `goal` in `page` until the model calls `finish`, and answers
/// `{"result": <the model's result>, "turns": n, "tokens": total, "url": <final URL>}`
/// (plus `"extracted": {name: value}` when the model used `extract`). Before each browser
/// action it waits until the agent may drive ([`RunContext::wait_for_control`]); it reports
/// the model's words and each action (with a thumbnail) as progress; it returns
/// [`AgentError::Stopped`] as soon as [`RunContext::stopped`] resolves.
pub async fn run_agent(
    page: &Page,
    goal: &str,
    settings: &AgentSettings,
    client: &reqwest::Client,
    ctx: &dyn RunContext,
) -> Result<Value, AgentError> {
    let mut run = Run {
        page,
        settings,
        ctx,
        api: ModelApi::new(client, &settings.api_base, settings.api_key.as_deref()),
        conversation: Conversation::new(goal),
        started: Instant::now(),
        paused: Duration::ZERO,
        turn: 0,
        tokens: 0,
        failed_in_a_row: 0,
        bad_arguments_in_a_row: 0,
        silent_in_a_row: 0,
        extracted: Map::new(),
        next_note: None,
    };
    let outcome = tokio::select! {
        stopped = ctx.stopped() => Err(AgentError::Stopped(stopped)),
        outcome = run.run() => outcome,
    };
    match &outcome {
        Ok(_) => tracing::info!(turns = run.turn, tokens = run.tokens, "agent finished"),
        Err(AgentError::Failed(error)) => {
            tracing::info!(turns = run.turn, tokens = run.tokens, %error, "agent failed")
        }
        Err(AgentError::Stopped(why)) => tracing::info!(turns = run.turn, %why, "agent stopped"),
    }
    outcome
}

struct Run<'a> {
    page: &'a Page,
    settings: &'a AgentSettings,
    ctx: &'a dyn RunContext,
    api: ModelApi<'a>,
    conversation: Conversation,
    started: Instant,
    /// Time spent waiting for the person, not counted against `max_duration`.
    paused: Duration,
    turn: u32,
    tokens: u64,
    failed_in_a_row: u32,
    bad_arguments_in_a_row: u32,
    silent_in_a_row: u32,
    extracted: Map<String, Value>,
    /// Said with the next page state.
    next_note: Option<&'static str>,
}

/// How a turn's calls ended.
enum TurnEnd {
    Continue,
    Finished(Value),
}

impl Run<'_> {
    async fn run(&mut self) -> Result<Value, AgentError> {
        let mut need_state = true;
        loop {
            if self.turn >= self.settings.max_turns {
                return Err(fail(format!(
                    "no result after {} turns",
                    self.settings.max_turns
                )));
            }
            if self.tokens >= self.settings.max_tokens {
                return Err(fail(format!(
                    "token budget of {} used up",
                    self.settings.max_tokens
                )));
            }
            self.check_time()?;
            self.turn += 1;
            if need_state {
                let mut state = self.page_state().await;
                state.note = self.next_note.take().map(str::to_owned);
                self.conversation
                    .begin_turn(self.turn, self.settings.max_turns, state);
            }
            let reply = self.ask_model().await?;
            self.tokens += reply.tokens;
            if let Some(content) = &reply.content {
                self.report(Some(clip(content, MAX_THOUGHT_CHARS)), None)
                    .await?;
            }
            if reply.calls.is_empty() {
                self.silent_in_a_row += 1;
                if self.silent_in_a_row >= 2 {
                    return Err(fail("the model answered twice without calling a tool"));
                }
                self.conversation
                    .push(model_api::assistant_message(reply.content.as_deref(), &[]));
                self.conversation.push(json!({
                    "role": "user",
                    "content": "Call one of the tools: act on the page, ask_person if you need \
                                the person, or finish with the result.",
                }));
                need_state = false;
                continue;
            }
            self.silent_in_a_row = 0;
            let (calls, dropped) = if reply.calls.len() > MAX_CALLS_PER_TURN {
                (
                    &reply.calls[..MAX_CALLS_PER_TURN],
                    reply.calls.len() - MAX_CALLS_PER_TURN,
                )
            } else {
                (&reply.calls[..], 0)
            };
            self.conversation.push(model_api::assistant_message(
                reply.content.as_deref(),
                calls,
            ));
            match self.run_calls(calls, dropped).await? {
                TurnEnd::Finished(result) => return self.finish(result).await,
                TurnEnd::Continue => {}
            }
            need_state = true;
        }
    }

    /// Runs a turn's calls in order, answering each (the API wants one `tool` message per
    /// call). After a failure, a hand-over or `finish`, the rest are not run: the page may
    /// not be what the model expected.
    async fn run_calls(
        &mut self,
        calls: &[ToolCall],
        dropped: usize,
    ) -> Result<TurnEnd, AgentError> {
        let mut skip: Option<&'static str> = None;
        for (i, call) in calls.iter().enumerate() {
            let mut outcome = match skip {
                Some(why) => format!("not run: {why}"),
                None => match tools::action_of(call) {
                    Err(Problem::UnknownTool(name)) => {
                        return Err(fail(format!("the model called an unknown tool {name:?}")));
                    }
                    Err(Problem::BadArguments(error)) => {
                        self.bad_arguments_in_a_row += 1;
                        if self.bad_arguments_in_a_row >= 2 {
                            return Err(fail(clip(
                                &format!(
                                    "the model called {} with bad arguments again: {error}",
                                    call.name
                                ),
                                limits::MAX_MESSAGE_CHARS,
                            )));
                        }
                        skip = Some("an earlier call of this turn failed");
                        format!("error: bad arguments for {}: {error}", call.name)
                    }
                    Ok(action) => {
                        self.bad_arguments_in_a_row = 0;
                        match action {
                            Action::Finish(result) => return Ok(TurnEnd::Finished(result)),
                            Action::AskPerson(reason) => {
                                self.ask_person(&reason).await?;
                                self.next_note = Some("The person had control until just now.");
                                skip = Some("the person had control; look at the page again");
                                "The person handed control back. The page may have changed: \
                                 look at its new state."
                                    .to_owned()
                            }
                            Action::Step(step) => match self.act(&step).await? {
                                Ok(outcome) => outcome,
                                Err(error) => {
                                    skip = Some("an earlier call of this turn failed");
                                    format!("error: {error}")
                                }
                            },
                        }
                    }
                },
            };
            if i + 1 == calls.len() && dropped > 0 {
                outcome.push_str(&format!(
                    "\n({dropped} more calls of this turn were not run: at most {MAX_CALLS_PER_TURN} a turn.)"
                ));
            }
            self.conversation.push(model_api::tool_message(
                &call.id,
                &clip(&outcome, MAX_OUTCOME_CHARS),
            ));
        }
        Ok(TurnEnd::Continue)
    }

    /// One browser action: waits for control, runs it, reports it with a thumbnail. A
    /// failed action is the inner `Err` (told to the model) until too many fail in a row.
    async fn act(&mut self, step: &Step) -> Result<Result<String, String>, AgentError> {
        let waited = Instant::now();
        self.ctx.wait_for_control().await?;
        self.paused += waited.elapsed();
        let remaining = self.check_time()?;
        let mut step = step.clone();
        if let Step::WaitFor {
            timeout_ms: Some(ms),
            ..
        } = &mut step
        {
            *ms = (*ms).min(remaining.as_millis() as u64).max(1);
        }
        let timeout = self.settings.step_timeout.min(remaining);
        let result = run_step(self.page, &step, timeout).await;
        let thumbnail = self.thumbnail().await;
        match result {
            Ok(output) => {
                self.failed_in_a_row = 0;
                self.report(Some(step.describe()), thumbnail).await?;
                match output.extracted {
                    Some((name, value)) => {
                        let shown = clip(&value.to_string(), MAX_OUTCOME_CHARS - 100);
                        self.extracted.insert(name.clone(), value);
                        Ok(Ok(format!("ok: {name} = {shown}")))
                    }
                    None => Ok(Ok("ok".to_owned())),
                }
            }
            Err(error) => {
                self.failed_in_a_row += 1;
                let message = format!("{} failed: {error}", step.describe());
                self.report(Some(clip(&message, limits::MAX_MESSAGE_CHARS)), thumbnail)
                    .await?;
                if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW {
                    return Err(fail(clip(
                        &format!(
                            "{MAX_FAILED_IN_A_ROW} browser actions in a row failed; the last: {message}"
                        ),
                        limits::MAX_MESSAGE_CHARS,
                    )));
                }
                Ok(Err(error))
            }
        }
    }

    /// A thumbnail of the page after an action. Right after a click that navigates, the
    /// capture can fail while the new document attaches: it is tried a few times.
    async fn thumbnail(&self) -> Option<Vec<u8>> {
        for _ in 0..4 {
            match self.page.thumbnail().await {
                Ok(image) => return Some(image),
                Err(e) if e.is_closed() => return None,
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        None
    }

    async fn ask_person(&mut self, reason: &str) -> Result<(), AgentError> {
        let asked = Instant::now();
        self.ctx.ask_person(reason).await?;
        self.paused += asked.elapsed();
        Ok(())
    }

    async fn ask_model(&mut self) -> Result<model_api::Reply, AgentError> {
        let remaining = self.check_time()?;
        let (messages, estimate) = self.conversation.render();
        let body = model_api::request_body(
            &self.settings.model,
            messages,
            &model_api::tool_definitions(),
        );
        let timeout = self.settings.request_timeout.min(remaining);
        match self.api.complete(&body, timeout, estimate, self.turn).await {
            Ok(reply) => Ok(reply),
            Err(CallError::Failed(error)) => Err(fail(clip(&error, limits::MAX_MESSAGE_CHARS))),
            Err(CallError::Timeout) if timeout < self.settings.request_timeout => {
                Err(self.time_up())
            }
            Err(CallError::Timeout) => Err(fail(format!(
                "the model's API did not answer within {}",
                human(self.settings.request_timeout)
            ))),
        }
    }

    /// The page's URL, title, digest and (when images are on) screenshot; what cannot be
    /// read is said so, and the turn goes on.
    async fn page_state(&self) -> PageState {
        let read = async {
            let mut state = PageState::default();
            match self
                .page
                .evaluate(digest::DIGEST_JS)
                .await
                .map_err(|e| e.to_string())
            {
                Ok(value) => match Digest::from_value(&value) {
                    Ok(digest) => {
                        state.url = digest.url.clone();
                        state.title = digest.title.clone();
                        state.digest = digest.render();
                    }
                    Err(e) => state.digest = format!("(The page could not be read: {e}.)"),
                },
                Err(e) => {
                    state.digest = format!("(The page could not be read: {}.)", clip(&e, 300))
                }
            }
            if state.url.is_empty() {
                state.url = self.page.url().await.unwrap_or_default();
            }
            if self.settings.images {
                state.screenshot = self.page.screenshot().await.ok();
            }
            state
        };
        match tokio::time::timeout(STATE_TIMEOUT, read).await {
            Ok(state) => state,
            Err(_) => PageState {
                digest: format!(
                    "(The page did not answer within {}; it may be busy or showing a dialog.)",
                    human(STATE_TIMEOUT)
                ),
                ..PageState::default()
            },
        }
    }

    async fn finish(&mut self, result: Value) -> Result<Value, AgentError> {
        let url = self
            .page
            .url()
            .await
            .map(Value::String)
            .unwrap_or(Value::Null);
        let mut answer = json!({
            "result": result,
            "turns": self.turn,
            "tokens": self.tokens,
            "url": url,
        });
        if !self.extracted.is_empty() {
            answer["extracted"] = Value::Object(std::mem::take(&mut self.extracted));
        }
        let size = answer.to_string().len();
        if size > limits::MAX_RESULT_BYTES {
            return Err(fail(format!(
                "the model's result is too large ({size} bytes; at most {})",
                limits::MAX_RESULT_BYTES
            )));
        }
        self.report(Some("finished".to_owned()), None).await?;
        Ok(answer)
    }

    async fn report(
        &self,
        message: Option<String>,
        screenshot: Option<Vec<u8>>,
    ) -> Result<(), Stopped> {
        let note = EventNote {
            step: Some(self.turn),
            message,
            screenshot,
        };
        self.ctx.report(note).await
    }

    /// The agent's time left, or the task's error when there is none.
    fn check_time(&self) -> Result<Duration, AgentError> {
        let used = self.started.elapsed().saturating_sub(self.paused);
        match self.settings.max_duration.checked_sub(used) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(self.time_up()),
        }
    }

    fn time_up(&self) -> AgentError {
        fail(format!(
            "time limit of {} used up",
            human(self.settings.max_duration)
        ))
    }
}

fn fail(message: impl Into<String>) -> AgentError {
    AgentError::Failed(message.into())
}

/// `10 min`, `90 s`, `250 ms`.
fn human(d: Duration) -> String {
    if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) && d.subsec_nanos() == 0 {
        format!("{} min", d.as_secs() / 60)
    } else {
        human_duration(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let mut settings = AgentSettings::new("http://127.0.0.1:1/v1", "m");
        settings.api_key = Some("sk-very-secret".into());
        let debug = format!("{settings:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
        assert_eq!(human(Duration::from_secs(600)), "10 min");
        assert_eq!(human(Duration::from_secs(90)), "90 s");
    }
}
