//! The built-in workers: steps runners and agent runners, each a loop that claims a task
//! from the queue, opens the task's session's browser over its DevTools socket, and runs
//! the task there as an agent (the person watching sees it work; their input is held back
//! while the runner drives, and the runner waits while they hold control).
//!
//! A runner is a worker like any other: it holds a lease, heartbeats, and its writes are
//! refused once the lease is gone. A cancel, a lost lease or the session's end stops the
//! run at once.

use std::sync::Arc;
use std::time::Duration;

use livesession_desktop::DesktopHandle;
use livesession_session::Holder;
use livesession_tasks::agent::{self, AgentError, AgentSettings};
use livesession_tasks::cdp::Page;
use livesession_tasks::steps::{self, StepSettings, StepsError};
use livesession_tasks::store::{Claimed, Transition};
use livesession_tasks::{EventNote, RunContext, Stopped, TaskInput, TaskKind, TaskState, WriteError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::desktops::{DesktopStatus, Desktops};

/// How long one claim waits before the runner asks again (it is seen alive each time).
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// What the runners need from the configuration.
#[derive(Clone)]
pub struct RunnerSettings {
    pub steps: StepSettings,
    /// `None` when no model is configured: agent tasks are left to external workers.
    pub agent: Option<AgentSettings>,
}

/// The name a built-in runner claims under (`workers` in `/readyz`).
pub fn builtin_worker(kind: TaskKind, n: usize) -> String {
    format!("builtin-{}-{n}", kind.as_str())
}

/// Starts the configured runners; they stop when the server shuts down.
pub fn spawn(app: &Arc<App>) {
    let settings = &app.runner_settings;
    let agents = if settings.agent.is_some() { app.config.tasks.agent_runners } else { 0 };
    let runners = (1..=app.config.tasks.steps_runners)
        .map(|n| (TaskKind::Steps, n))
        .chain((1..=agents).map(|n| (TaskKind::Agent, n)));
    for (kind, n) in runners {
        let app = app.clone();
        app.tasks.clone().spawn(async move { run_worker(app, kind, builtin_worker(kind, n)).await });
    }
}

async fn run_worker(app: Arc<App>, kind: TaskKind, worker: String) {
    let http = reqwest_client(&app);
    while !app.shutdown.is_cancelled() {
        match app.queue.claim(&[kind], &worker, CLAIM_WAIT, &app.shutdown).await {
            Ok(Some(claimed)) => run_claimed(&app, &http, claimed, &worker).await,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(worker = %worker, error = %e, "a runner could not claim from the task store; retrying");
                tokio::select! {
                    _ = app.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

fn reqwest_client(app: &App) -> Option<reqwest::Client> {
    app.runner_settings.agent.as_ref().map(agent::http_client)
}

/// Why a run ended without a result.
enum RunError {
    /// The task failed: this is its error.
    Failed(String),
    /// Someone else already wrote the task's end (cancel, lost lease) or the server stops.
    Stopped(Stopped),
}

async fn run_claimed(app: &Arc<App>, http: &Option<reqwest::Client>, claimed: Claimed, worker: &str) {
    let task = claimed.task;
    let lease = claimed.lease.id;
    // The run is activity on the session's desktop: it neither hibernates nor is taken
    // to make room while the run lasts (and a hibernated one resumes for it).
    let _activity = app.desktops.hold(&task.session_id);
    let stop = app.queue.stop_token(&task.id);
    tracing::info!(worker, task_id = %task.id, session_id = %task.session_id, kind = task.kind.as_str(), attempt = task.attempts, "task started");
    let heartbeat = tokio::spawn(keep_lease(app.clone(), task.id.clone(), lease.clone(), stop.clone()));
    let ctx = LocalRun {
        app: app.clone(),
        task_id: task.id.clone(),
        session_id: task.session_id.clone(),
        lease: lease.clone(),
        stop: stop.clone(),
        asked: Default::default(),
    };
    let outcome = tokio::select! {
        outcome = execute(app, http, &task, &ctx) => outcome,
        why = ctx.stopped() => Err(RunError::Stopped(why)),
    };
    heartbeat.abort();
    // A request for the person ends with the run that made it.
    if ctx.asked.load(std::sync::atomic::Ordering::Relaxed) {
        app.control.withdraw_request(&task.session_id);
    }
    let written = match outcome {
        Ok(result) => {
            let note = EventNote::message("done");
            Some(app.queue.update(&task.id, &lease, Transition::Succeed(result), note).await)
        }
        Err(RunError::Failed(error)) => {
            tracing::warn!(task_id = %task.id, error = %error, "task failed");
            let note = EventNote::message(error.clone());
            Some(app.queue.update(&task.id, &lease, Transition::Fail(error), note).await)
        }
        Err(RunError::Stopped(why)) => {
            tracing::info!(task_id = %task.id, why = %why, "task run stopped");
            None
        }
    };
    match written {
        Some(Ok(task)) => tracing::info!(task_id = %task.id, state = task.state.as_str(), "task finished"),
        Some(Err(WriteError::LeaseLost(_) | WriteError::WrongState(_))) => {
            tracing::info!(task_id = %task.id, "task ended elsewhere (cancelled or re-queued) before its result was written");
        }
        Some(Err(e)) => tracing::error!(task_id = %task.id, error = %e, "could not write the task's end"),
        None => {}
    }
}

/// Heartbeats a third of the lease apart; a refused heartbeat (cancelled, re-queued) stops
/// the run.
async fn keep_lease(app: Arc<App>, task_id: String, lease: String, stop: CancellationToken) {
    let every = (app.queue.config().lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match app.queue.heartbeat(&task_id, &lease).await {
            Ok(_) => {}
            Err(WriteError::Store(e)) => tracing::error!(task_id = %task_id, error = %e, "heartbeat failed; retrying"),
            Err(_) => {
                stop.cancel();
                return;
            }
        }
    }
}

async fn execute(app: &Arc<App>, http: &Option<reqwest::Client>, task: &livesession_tasks::Task, ctx: &LocalRun) -> Result<Value, RunError> {
    let input = TaskInput::from_stored(task.kind, &task.input)
        .map_err(|e| RunError::Failed(format!("the stored task is invalid: {e}")))?;
    let browser = match crate::cluster::route(app, &task.session_id, true).await {
        crate::cluster::Route::Local => {
            let handle = session_desktop(app, &task.session_id, ctx).await?;
            crate::cdp_relay::browser_client(app, &handle).await.map_err(RunError::Failed)?
        }
        // The session's desktop runs on another node: the run drives it from here as an
        // agent would, through this node's relay to that node's DevTools endpoint (which
        // holds its commands back while the person has control there).
        crate::cluster::Route::Relay { node_id, .. } => remote_browser(app, &task.session_id, &node_id).await?,
    };
    let page = Page::attach(&browser)
        .await
        .map_err(|e| RunError::Failed(format!("could not open the browser's page: {e}")))?;
    // The runner is an agent of the session while it runs: the person's input is held back
    // unless they take control.
    let _presence = app.control.agent_joined(&task.session_id);
    let settings = &app.runner_settings;
    match input {
        TaskInput::Steps(list) => steps::run_steps(&page, &list, &settings.steps, ctx).await.map_err(|e| match e {
            StepsError::Stopped(why) => RunError::Stopped(why),
            failed => RunError::Failed(failed.to_string()),
        }),
        TaskInput::Agent { goal } => {
            let (Some(agent_settings), Some(http)) = (&settings.agent, http) else {
                return Err(RunError::Failed("no model is configured for the built-in agent".into()));
            };
            agent::run_agent(&page, &goal, agent_settings, http, ctx).await.map_err(|e| match e {
                AgentError::Stopped(why) => RunError::Stopped(why),
                AgentError::Failed(error) => RunError::Failed(error),
            })
        }
    }
}

/// The browser of a session whose desktop runs on another node, reached with an agent
/// token through this node's own relay (cluster/relay.rs).
async fn remote_browser(app: &Arc<App>, session_id: &str, node_id: &str) -> Result<livesession_tasks::cdp::Cdp, RunError> {
    let session = match app.sessions.get(session_id).await {
        Ok(Some(session)) => session,
        Ok(None) => return Err(RunError::Failed("the session no longer exists".into())),
        Err(e) => return Err(RunError::Failed(format!("the session store failed: {e}"))),
    };
    let (token, _) = app.tokens.access(session_id, crate::auth::Role::Agent, session.expires_at);
    let port = app.local_addr.port();
    let url = format!("ws://127.0.0.1:{port}/api/sessions/{session_id}/cdp?token={token}");
    livesession_tasks::cdp::Cdp::connect_url(&url)
        .await
        .map_err(|e| RunError::Failed(format!("could not reach the session's browser on node {node_id}: {}", crate::cluster::redact_token(&e.to_string()))))
}

/// The session's desktop, started (or resumed) if it is not running, after a wait in
/// line when every desktop is in use.
async fn session_desktop(app: &Arc<App>, session_id: &str, ctx: &LocalRun) -> Result<Arc<DesktopHandle>, RunError> {
    let session = match app.sessions.get(session_id).await {
        Ok(Some(session)) => session,
        Ok(None) => return Err(RunError::Failed("the session no longer exists".into())),
        Err(e) => return Err(RunError::Failed(format!("the session store failed: {e}"))),
    };
    let end = app.sessions.subscribe(session_id);
    app.desktops.forget_if_dead(session_id).await;
    let status = app
        .desktops
        .watch(&session, &end)
        .map_err(|e| RunError::Failed(format!("desktop unavailable: {e}")))?;
    let note = match &*status.borrow() {
        DesktopStatus::Ready(_) => None,
        DesktopStatus::Queued(n) => Some(format!("every desktop is in use; waiting in line (place {n})")),
        DesktopStatus::Resuming(_) | DesktopStatus::Hibernating => Some("resuming the session's desktop".to_owned()),
        DesktopStatus::Restarting(_) => Some("the session's browser is starting again".to_owned()),
        _ => Some("starting the session's desktop".to_owned()),
    };
    if let Some(note) = note {
        let _ = ctx.report(EventNote::message(note)).await;
    }
    Desktops::ready(status)
        .await
        .map_err(|e| RunError::Failed(format!("desktop unavailable: {e}")))
}

/// A run on this node: progress goes to the queue under the lease; control comes from the
/// session's control board.
struct LocalRun {
    app: Arc<App>,
    task_id: String,
    session_id: String,
    lease: String,
    stop: CancellationToken,
    /// Whether this run asked for the person (its request is withdrawn when it ends).
    asked: std::sync::atomic::AtomicBool,
}

impl LocalRun {
    async fn write(&self, change: Transition, note: EventNote) -> Result<(), Stopped> {
        match self.app.queue.update(&self.task_id, &self.lease, change, note).await {
            Ok(_) => Ok(()),
            Err(WriteError::Store(e)) => {
                // Progress is not worth failing the task over; the end is retried by the
                // lease if the store stays down.
                tracing::error!(task_id = %self.task_id, error = %e, "could not record task progress");
                Ok(())
            }
            Err(_) => Err(self.why_stopped().await),
        }
    }

    async fn why_stopped(&self) -> Stopped {
        if self.app.shutdown.is_cancelled() {
            return Stopped::Shutdown;
        }
        match self.app.queue.store().get_task(&self.task_id).await {
            Ok(Some(task)) if task.state == TaskState::Cancelled => {
                Stopped::Cancelled(task.error.unwrap_or_else(|| "cancelled".into()))
            }
            _ => Stopped::LeaseLost,
        }
    }

    /// Waits until `done` says the holder is right, or the run stops.
    async fn wait_for_holder(&self, done: impl Fn(Holder) -> bool) -> Result<(), Stopped> {
        let mut control = self.app.control.subscribe(&self.session_id);
        loop {
            if done(control.borrow_and_update().holder) {
                return Ok(());
            }
            tokio::select! {
                changed = control.changed() => if changed.is_err() { return Err(Stopped::Shutdown) },
                why = self.stopped() => return Err(why),
            }
        }
    }
}

#[async_trait::async_trait]
impl RunContext for LocalRun {
    async fn report(&self, note: EventNote) -> Result<(), Stopped> {
        self.write(Transition::Progress, note).await
    }

    async fn wait_for_control(&self) -> Result<(), Stopped> {
        self.wait_for_holder(|holder| holder != Holder::Person).await
    }

    async fn ask_person(&self, reason: &str) -> Result<(), Stopped> {
        self.write(Transition::WaitForPerson, EventNote::message(reason)).await?;
        let already_holding = self.app.control.current(&self.session_id).holder == Holder::Person;
        if !already_holding {
            self.asked.store(true, std::sync::atomic::Ordering::Relaxed);
            self.app.control.request_human(&self.session_id, reason);
            self.wait_for_holder(|holder| holder == Holder::Person).await?;
        }
        self.wait_for_holder(|holder| holder != Holder::Person).await?;
        self.write(Transition::Resume, EventNote::message("the person handed control back")).await
    }

    async fn stopped(&self) -> Stopped {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.app.shutdown.cancelled() => {}
        }
        self.why_stopped().await
    }
}

/// The runners' settings from the configuration.
pub fn settings(config: &crate::config::TaskArgs) -> RunnerSettings {
    let a = &config.agent;
    let agent = a.agent_api_base.as_ref().map(|base| AgentSettings {
        api_base: base.trim_end_matches('/').to_owned(),
        api_key: a.agent_api_key.clone().filter(|k| !k.is_empty()),
        model: a.agent_model.clone(),
        images: a.agent_images,
        max_turns: a.agent_max_turns.max(1),
        max_duration: Duration::from_secs(a.agent_max_seconds.max(1)),
        max_tokens: a.agent_max_tokens.max(1),
        request_timeout: Duration::from_secs(a.agent_request_timeout.max(1)),
        step_timeout: config.step_timeout(),
    });
    RunnerSettings {
        steps: StepSettings { step_timeout: config.step_timeout() },
        agent,
    }
}

/// Cancels the open tasks of every session that is no longer active (after session ends
/// arrived faster than they were handled).
pub async fn cancel_tasks_of_ended_sessions(sessions: &livesession_session::Sessions, queue: &livesession_tasks::TaskQueue) {
    let mut open = Vec::new();
    for state in [TaskState::Queued, TaskState::Running, TaskState::WaitingForPerson] {
        let filter = livesession_tasks::store::TaskFilter { session_id: None, state: Some(state), limit: 1000 };
        match queue.store().list_tasks(&filter).await {
            Ok(tasks) => open.extend(tasks.into_iter().map(|t| t.session_id)),
            Err(e) => tracing::error!(error = %e, "could not list open tasks"),
        }
    }
    open.sort();
    open.dedup();
    for id in open {
        let active = matches!(sessions.get(&id).await, Ok(Some(s)) if s.end_at(time::OffsetDateTime::now_utc()).is_none() && s.state == livesession_session::SessionState::Active);
        if !active && let Err(e) = queue.cancel_session(&id, "the session ended").await {
            tracing::error!(session_id = %id, error = %e, "could not cancel the ended session's tasks");
        }
    }
}
