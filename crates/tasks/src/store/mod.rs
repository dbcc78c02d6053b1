//! The task store: a trait with one module per backend (SQLite, PostgreSQL), each with
//! its own migrations; what they share (columns, conversions, the changes each write makes
//! to a task) is in `common`, and one test suite runs against both (`tests`).
//!
//! Every method that changes a task does so in one transaction together with the event
//! that records the change, so the events are the task's complete history. SQLite takes
//! the database's write lock (`BEGIN IMMEDIATE`) for each write; PostgreSQL claims with
//! `SELECT … FOR UPDATE SKIP LOCKED` and serializes a session's writes with a
//! per-session advisory lock (see `postgres`).

#[macro_use]
mod common;
mod postgres;
mod sqlite;

pub use common::MAX_SCREENSHOT_BYTES;
pub use postgres::PgTaskStore;
pub use sqlite::SqliteTaskStore;

#[cfg(test)]
mod tests;

use crate::model::{EventNote, Lease, NewTask, Task, TaskEvent, TaskKind, TaskState};
use time::OffsetDateTime;

/// How stale a claiming worker's recorded sighting may be: an idle worker's long poll
/// looks every second, and rewriting its sighting each time would be a write per second
/// per worker for nothing. Readers of [`TaskStore::workers_seen_since`] allow for it.
pub const SEEN_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database's own error, if that is what failed.
    pub fn database(&self) -> Option<&sqlx::Error> {
        match self {
            StoreError::Database(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a worker's write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no task has this id")]
    NotFound,
    /// The lease named is not the task's current one: it ran out and the task was claimed
    /// again, or the task was cancelled or finished.
    #[error("this worker no longer holds the task (its lease ended{0})")]
    LeaseLost(String),
    /// The change is not allowed from the task's state (e.g. cancelling a finished task).
    #[error("the task is {0}")]
    WrongState(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A successful claim: the task (now `running`) and its lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task: Task,
    pub lease: Lease,
    /// The claim's event (state `running`).
    pub event: TaskEvent,
}

/// What a state change written by the lease holder is.
#[derive(Debug, Clone)]
pub enum Transition {
    /// Progress only: the state stays as it is.
    Progress,
    /// `running → waiting_for_person`.
    WaitForPerson,
    /// `waiting_for_person → running`.
    Resume,
    /// `→ succeeded` with a result.
    Succeed(serde_json::Value),
    /// `→ failed` with an error.
    Fail(String),
}

/// A lease that ran out, and what became of its task.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    pub task: Task,
    pub event: TaskEvent,
}

/// Counts of one kind's queue, for `/readyz`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindStats {
    pub queued: u64,
    pub running: u64,
    pub waiting_for_person: u64,
    /// The oldest queued task's creation time.
    pub oldest_queued_at: Option<OffsetDateTime>,
    /// Running or waiting tasks whose lease ran out and has not been swept yet.
    pub stalled_leases: u64,
}

/// A worker that claimed or heartbeated recently (built-in or external).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSeen {
    pub worker: String,
    pub kinds: Vec<TaskKind>,
    pub last_seen: OffsetDateTime,
}

/// Which tasks a listing wants.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub session_id: Option<String>,
    pub state: Option<TaskState>,
    /// Most recent first, at most this many (capped by the store at 1000).
    pub limit: u32,
}

#[async_trait::async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Inserts a `queued` task and its first event (seq 1, state `queued`), unless its
    /// session already has `max_open` tasks that are not final. Returns the task and event,
    /// or `None` when the session is full.
    async fn insert_task(
        &self,
        task: &NewTask,
        max_open: usize,
    ) -> Result<Option<(Task, TaskEvent)>, StoreError>;
    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError>;
    /// Oldest first within a session; most recent first otherwise.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError>;
    /// A task's events with `seq > after`, in order, at most `limit`.
    async fn task_events(
        &self,
        task_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<TaskEvent>, StoreError>;
    /// Every event of the session's tasks with `cursor > after`, in cursor order, at most
    /// `limit`.
    async fn session_events(
        &self,
        session_id: &str,
        after_cursor: u64,
        limit: u32,
    ) -> Result<Vec<TaskEvent>, StoreError>;
    /// The screenshot stored with an event, if any.
    async fn screenshot(&self, task_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Claims the next task of one of `kinds` for `worker`: the oldest queued task (by
    /// creation, then id) that is first in its session's queue, in a session that has no
    /// task running or waiting for a person (a session has one browser). Sets it
    /// `running`, counts an attempt, gives it a new lease until `lease_until`, and writes
    /// the event. Also records that `worker` was seen, with `kinds`. `None` when nothing
    /// can be claimed.
    async fn claim(
        &self,
        kinds: &[TaskKind],
        worker: &str,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<Claimed>, StoreError>;
    /// Extends the lease `lease_id` of a running or waiting task to `until`; records the
    /// worker as seen. Returns the task.
    async fn heartbeat(
        &self,
        task_id: &str,
        lease_id: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Task, WriteError>;
    /// Writes a change by the holder of `lease_id` (refused if it is not the current
    /// lease or the lease has run out at `now`): progress, waiting for the person,
    /// resuming, success or failure. A final state clears the lease. Returns the task
    /// after the change and the event.
    async fn transition(
        &self,
        task_id: &str,
        lease_id: &str,
        change: Transition,
        note: EventNote,
        now: OffsetDateTime,
    ) -> Result<(Task, TaskEvent), WriteError>;
    /// Cancels a queued, running or waiting task with `reason` (the lease, if any, ends:
    /// the worker's next write is refused). `WrongState` if it is already final.
    async fn cancel(
        &self,
        task_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(Task, TaskEvent), WriteError>;
    /// Cancels every task of the session that is not final, with `reason`; returns the
    /// events written.
    async fn cancel_session(
        &self,
        session_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<(Task, TaskEvent)>, StoreError>;
    /// Every running or waiting task whose lease ended before `now` goes back to
    /// `queued` (lease cleared, event "worker lost: …"), or to `failed` with error
    /// "worker lost" once it has had `max_attempts` attempts.
    async fn expire_leases(&self, now: OffsetDateTime) -> Result<Vec<ExpiredLease>, StoreError>;
    /// Per kind (every kind present, zero counts included).
    async fn stats(&self, now: OffsetDateTime) -> Result<Vec<(TaskKind, KindStats)>, StoreError>;
    /// Records that `worker` is alive and serves `kinds` (also done by heartbeat, and by
    /// claim, where a backend may keep the time to within [`SEEN_GRANULARITY`] so that an
    /// idle worker's repeated looks write nothing).
    async fn worker_seen(
        &self,
        worker: &str,
        kinds: &[TaskKind],
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Workers seen at or after `since`.
    async fn workers_seen_since(&self, since: OffsetDateTime) -> Result<Vec<WorkerSeen>, StoreError>;
}
