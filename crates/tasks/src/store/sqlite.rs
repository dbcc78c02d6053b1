//! The SQLite task store: the same file as the session store (its pool is shared), its
//! own migrations recorded in `_tasks_migrations`.
//!
//! Every write that must hold against a concurrent claim (insert, claim, transition,
//! cancel, lease expiry) reads and writes inside one `BEGIN IMMEDIATE` transaction: the
//! database's write lock is taken before the first read, so two claimers cannot pick the
//! same task and a cancel cannot interleave with a worker's write. The task row and the
//! event recording its change are written in the same transaction.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::{
    Claimed, ExpiredLease, KindStats, StoreError, TaskFilter, TaskStore, Transition, WorkerSeen,
    WriteError,
};
use crate::model::{
    EventNote, Lease, NewTask, Task, TaskEvent, TaskKind, TaskState, limits, new_lease_id,
};

/// The SQLite backend of [`TaskStore`].
#[derive(Clone)]
pub struct SqliteTaskStore {
    pool: SqlitePool,
}

impl SqliteTaskStore {
    /// The largest screenshot stored with an event; a larger one is dropped (the event is
    /// written without it, and its message says so).
    pub const MAX_SCREENSHOT_BYTES: usize = 2 * 1024 * 1024;

    /// The store on an existing pool (the gateway shares the session store's): runs the
    /// task migrations, recorded in `_tasks_migrations` so they do not mix with the
    /// session store's `_sqlx_migrations`.
    pub async fn new(pool: SqlitePool) -> Result<Self, StoreError> {
        let mut migrator = sqlx::migrate!("migrations/sqlite");
        migrator.dangerous_set_table_name("_tasks_migrations");
        migrator.run(&pool).await?;
        Ok(Self { pool })
    }

    /// Opens (or creates) a database file on its own pool, set up as the session store
    /// sets up its own: WAL, a 5 s busy timeout, four connections.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            // WAL lets the API read while a write is in flight.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Self::new(pool).await
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction holding the write lock from its start.
    async fn begin_immediate(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

// Macros rather than consts so queries stay `&'static str` (sqlx 0.9 refuses built strings).
macro_rules! columns {
    () => {
        "id, session_id, kind, input, state, attempts, max_attempts, lease_id, lease_worker, \
         lease_until, result, error, seq, created_at, updated_at, finished_at"
    };
}

macro_rules! event_columns {
    () => {
        "cursor, task_id, session_id, seq, at, state, step, message, has_screenshot"
    };
}

/// The states in which a task is not final (`queued`, `running`, `waiting_for_person`).
macro_rules! open_states {
    () => {
        "('queued', 'running', 'waiting_for_person')"
    };
}

macro_rules! active_states {
    () => {
        "('running', 'waiting_for_person')"
    };
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn corrupt(what: &str, value: impl std::fmt::Debug) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

/// At most `max` characters of `s`.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => s[..at].to_owned(),
        None => s.to_owned(),
    }
}

fn task_from_row(row: &SqliteRow) -> Result<Task, StoreError> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let input: String = row.try_get("input")?;
    let result: Option<String> = row.try_get("result")?;
    let lease_id: Option<String> = row.try_get("lease_id")?;
    let lease_worker: Option<String> = row.try_get("lease_worker")?;
    let lease_until: Option<i64> = row.try_get("lease_until")?;
    let lease = match (lease_id, lease_worker, lease_until) {
        (Some(id), Some(worker), Some(until)) => Some(Lease {
            id,
            worker,
            until: from_millis(until)?,
        }),
        _ => None,
    };
    Ok(Task {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        kind: TaskKind::parse(&kind).ok_or_else(|| corrupt("unknown task kind", &kind))?,
        input: serde_json::from_str(&input).map_err(|e| corrupt("task input", e.to_string()))?,
        state: TaskState::parse(&state).ok_or_else(|| corrupt("unknown task state", &state))?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        max_attempts: u32::try_from(row.try_get::<i64, _>("max_attempts")?).unwrap_or(0),
        lease,
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| corrupt("task result", e.to_string()))?,
        error: row.try_get("error")?,
        seq: count(row.try_get("seq")?),
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
        finished_at: row
            .try_get::<Option<i64>, _>("finished_at")?
            .map(from_millis)
            .transpose()?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<TaskEvent, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(TaskEvent {
        task_id: row.try_get("task_id")?,
        session_id: row.try_get("session_id")?,
        seq: count(row.try_get("seq")?),
        cursor: count(row.try_get("cursor")?),
        at: from_millis(row.try_get("at")?)?,
        state: TaskState::parse(&state).ok_or_else(|| corrupt("unknown event state", &state))?,
        step: row
            .try_get::<Option<i64>, _>("step")?
            .and_then(|s| u32::try_from(s).ok()),
        message: row.try_get("message")?,
        screenshot: row.try_get::<i64, _>("has_screenshot")? != 0,
    })
}

fn kinds_list(kinds: &[TaskKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a write naming `lease_id` is refused, or `None` if the lease is current at `now`.
fn lease_refusal(task: &Task, lease_id: &str, now: OffsetDateTime) -> Option<WriteError> {
    let reason = match &task.lease {
        Some(lease) if lease.id == lease_id => {
            if millis(lease.until) < millis(now) {
                ": it ran out"
            } else {
                return None;
            }
        }
        _ if task.state == TaskState::Cancelled => ": it was cancelled",
        _ if task.state.is_final() => ": the task is finished",
        // Another lease, or none (queued again after this one ran out).
        _ => ": it ran out",
    };
    Some(WriteError::LeaseLost(reason.to_owned()))
}

async fn fetch_task(conn: &mut SqliteConnection, id: &str) -> Result<Option<Task>, StoreError> {
    let row = sqlx::query(concat!("SELECT ", columns!(), " FROM tasks WHERE id = ?"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(task_from_row).transpose()
}

/// Writes the changeable fields of `task` and returns the row as stored.
async fn save_task(conn: &mut SqliteConnection, task: &Task) -> Result<Task, StoreError> {
    let row = sqlx::query(concat!(
        "UPDATE tasks SET state = ?, attempts = ?, lease_id = ?, lease_worker = ?, \
         lease_until = ?, result = ?, error = ?, seq = ?, updated_at = ?, finished_at = ? \
         WHERE id = ? RETURNING ",
        columns!()
    ))
    .bind(task.state.as_str())
    .bind(i64::from(task.attempts))
    .bind(task.lease.as_ref().map(|l| l.id.as_str()))
    .bind(task.lease.as_ref().map(|l| l.worker.as_str()))
    .bind(task.lease.as_ref().map(|l| millis(l.until)))
    .bind(task.result.as_ref().map(|r| r.to_string()))
    .bind(task.error.as_deref())
    .bind(task.seq as i64)
    .bind(millis(task.updated_at))
    .bind(task.finished_at.map(millis))
    .bind(&task.id)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => task_from_row(&row),
        None => Err(StoreError::Corrupt(format!("task {} vanished", task.id))),
    }
}

/// Writes the event of the task's latest change (its `seq` and `state`).
async fn add_event(
    conn: &mut SqliteConnection,
    task: &Task,
    at: OffsetDateTime,
    step: Option<u32>,
    message: Option<String>,
    screenshot: Option<&[u8]>,
) -> Result<TaskEvent, StoreError> {
    let row = sqlx::query(concat!(
        "INSERT INTO task_events (task_id, session_id, seq, at, state, step, message, \
         has_screenshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING ",
        event_columns!()
    ))
    .bind(&task.id)
    .bind(&task.session_id)
    .bind(task.seq as i64)
    .bind(millis(at))
    .bind(task.state.as_str())
    .bind(step.map(i64::from))
    .bind(message.map(|m| truncate(&m, limits::MAX_MESSAGE_CHARS)))
    .bind(i64::from(screenshot.is_some()))
    .fetch_one(&mut *conn)
    .await?;
    if let Some(image) = screenshot {
        sqlx::query("INSERT INTO task_screenshots (task_id, seq, image) VALUES (?, ?, ?)")
            .bind(&task.id)
            .bind(task.seq as i64)
            .bind(image)
            .execute(&mut *conn)
            .await?;
    }
    event_from_row(&row)
}

/// A claim rewrites its worker's last sighting only once it is [`super::SEEN_GRANULARITY`]
/// old (or the kinds change), so an idle worker's empty look commits no change. Heartbeats
/// (a third of a lease apart) always write.
const SEEN_GRANULARITY_MS: i64 = super::SEEN_GRANULARITY.as_millis() as i64;

async fn record_worker(
    conn: &mut SqliteConnection,
    worker: &str,
    kinds: Option<&[TaskKind]>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    match kinds {
        Some(kinds) => {
            sqlx::query(
                "INSERT INTO task_workers (worker, kinds, last_seen) VALUES (?, ?, ?) \
                 ON CONFLICT (worker) DO UPDATE SET kinds = excluded.kinds, \
                 last_seen = MAX(task_workers.last_seen, excluded.last_seen) \
                 WHERE task_workers.kinds <> excluded.kinds OR task_workers.last_seen < ?",
            )
            .bind(worker)
            .bind(kinds_list(kinds))
            .bind(millis(now))
            .bind(millis(now) - SEEN_GRANULARITY_MS)
            .execute(conn)
            .await?;
        }
        // A heartbeat does not say which kinds the worker serves: keep what it said.
        None => {
            sqlx::query(
                "INSERT INTO task_workers (worker, kinds, last_seen) VALUES (?, '', ?) \
                 ON CONFLICT (worker) DO UPDATE SET \
                 last_seen = MAX(task_workers.last_seen, excluded.last_seen)",
            )
            .bind(worker)
            .bind(millis(now))
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

/// Sets `task` to `cancelled` with `reason` and writes the event.
async fn cancel_in(
    conn: &mut SqliteConnection,
    mut task: Task,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(Task, TaskEvent), StoreError> {
    let reason = truncate(reason, limits::MAX_MESSAGE_CHARS);
    task.state = TaskState::Cancelled;
    task.lease = None;
    task.error = Some(reason.clone());
    task.seq += 1;
    task.updated_at = now;
    task.finished_at = Some(now);
    let task = save_task(&mut *conn, &task).await?;
    let event = add_event(conn, &task, now, None, Some(reason), None).await?;
    Ok((task, event))
}

/// `limit` for a listing: 0 means `default`; never more than `max`.
fn clamp_limit(limit: u32, default: u32, max: u32) -> i64 {
    i64::from(if limit == 0 { default } else { limit.min(max) })
}

#[async_trait::async_trait]
impl TaskStore for SqliteTaskStore {
    async fn insert_task(
        &self,
        new: &NewTask,
        max_open: usize,
    ) -> Result<Option<(Task, TaskEvent)>, StoreError> {
        let mut tx = self.begin_immediate().await?;
        let open: i64 = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM tasks WHERE session_id = ? AND state IN ",
            open_states!()
        ))
        .bind(&new.session_id)
        .fetch_one(&mut *tx)
        .await?;
        if usize::try_from(open).unwrap_or(usize::MAX) >= max_open {
            return Ok(None);
        }
        let row = sqlx::query(concat!(
            "INSERT INTO tasks (id, position, session_id, kind, input, state, attempts, \
             max_attempts, seq, created_at, updated_at) \
             VALUES (?, COALESCE((SELECT MAX(position) FROM tasks), 0) + 1, ?, ?, ?, 'queued', \
             0, ?, 1, ?, ?) RETURNING ",
            columns!()
        ))
        .bind(&new.id)
        .bind(&new.session_id)
        .bind(new.kind.as_str())
        .bind(new.input.to_string())
        .bind(i64::from(new.max_attempts))
        .bind(millis(new.created_at))
        .bind(millis(new.created_at))
        .fetch_one(&mut *tx)
        .await?;
        let task = task_from_row(&row)?;
        let event = add_event(&mut tx, &task, new.created_at, None, None, None).await?;
        tx.commit().await?;
        Ok(Some((task, event)))
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_task(&mut conn, id).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let limit = clamp_limit(filter.limit, 100, 1000);
        let state = filter.state.map(TaskState::as_str);
        let rows = match &filter.session_id {
            Some(session_id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM tasks WHERE session_id = ? AND (? IS NULL OR state = ?) \
                     ORDER BY position LIMIT ?"
                ))
                .bind(session_id)
                .bind(state)
                .bind(state)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM tasks WHERE (? IS NULL OR state = ?) ORDER BY position DESC LIMIT ?"
                ))
                .bind(state)
                .bind(state)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(task_from_row).collect()
    }

    async fn task_events(
        &self,
        task_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<TaskEvent>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM task_events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(task_id)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(clamp_limit(limit, 1000, 10_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn session_events(
        &self,
        session_id: &str,
        after_cursor: u64,
        limit: u32,
    ) -> Result<Vec<TaskEvent>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM task_events WHERE session_id = ? AND cursor > ? ORDER BY cursor LIMIT ?"
        ))
        .bind(session_id)
        .bind(i64::try_from(after_cursor).unwrap_or(i64::MAX))
        .bind(clamp_limit(limit, 1000, 10_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn screenshot(&self, task_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let image =
            sqlx::query_scalar("SELECT image FROM task_screenshots WHERE task_id = ? AND seq = ?")
                .bind(task_id)
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .fetch_optional(&self.pool)
                .await?;
        Ok(image)
    }

    async fn claim(
        &self,
        kinds: &[TaskKind],
        worker: &str,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<Claimed>, StoreError> {
        let kinds_json =
            serde_json::to_string(&kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>())
                .expect("a list of strings serializes");
        let mut tx = self.begin_immediate().await?;
        record_worker(&mut tx, worker, Some(kinds), now).await?;
        // The oldest queued task of these kinds that is first in its session's queue (no
        // earlier open task, of any kind) in a session with nothing running or waiting.
        // SQLite holds the write lock already; PostgreSQL would select the candidates with
        // `FOR UPDATE SKIP LOCKED` (and `kind = ANY($1)`), re-checking the session
        // conditions under a per-session advisory lock, so claimers skip each other's rows
        // instead of waiting.
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks AS t \
             WHERE t.state = 'queued' \
               AND t.kind IN (SELECT value FROM json_each(?)) \
               AND NOT EXISTS (SELECT 1 FROM tasks AS e WHERE e.session_id = t.session_id \
                   AND e.state IN ",
            open_states!(),
            " AND e.position < t.position) \
               AND NOT EXISTS (SELECT 1 FROM tasks AS a WHERE a.session_id = t.session_id \
                   AND a.state IN ",
            active_states!(),
            ") ORDER BY t.created_at, t.position LIMIT 1"
        ))
        .bind(kinds_json)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let mut task = task_from_row(&row)?;
        task.state = TaskState::Running;
        task.attempts += 1;
        task.lease = Some(Lease {
            id: new_lease_id(),
            worker: worker.to_owned(),
            until: lease_until,
        });
        task.seq += 1;
        task.updated_at = now;
        let task = save_task(&mut tx, &task).await?;
        let message = format!(
            "claimed by {worker}, attempt {} of {}",
            task.attempts, task.max_attempts
        );
        let event = add_event(&mut tx, &task, now, None, Some(message), None).await?;
        tx.commit().await?;
        let lease = task
            .lease
            .clone()
            .ok_or_else(|| StoreError::Corrupt(format!("claimed task {} has no lease", task.id)))?;
        Ok(Some(Claimed { task, lease, event }))
    }

    async fn heartbeat(
        &self,
        task_id: &str,
        lease_id: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Task, WriteError> {
        let mut tx = self.begin_immediate().await?;
        let mut task = fetch_task(&mut tx, task_id)
            .await?
            .ok_or(WriteError::NotFound)?;
        if let Some(refused) = lease_refusal(&task, lease_id, now) {
            return Err(refused);
        }
        let worker = match &mut task.lease {
            Some(lease) => {
                // A heartbeat never shortens the lease.
                if millis(until) > millis(lease.until) {
                    lease.until = until;
                }
                lease.worker.clone()
            }
            None => unreachable!("lease_refusal passed, so the task has a lease"),
        };
        let task = save_task(&mut tx, &task).await?;
        record_worker(&mut tx, &worker, None, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(task)
    }

    async fn transition(
        &self,
        task_id: &str,
        lease_id: &str,
        change: Transition,
        note: EventNote,
        now: OffsetDateTime,
    ) -> Result<(Task, TaskEvent), WriteError> {
        let mut tx = self.begin_immediate().await?;
        let mut task = fetch_task(&mut tx, task_id)
            .await?
            .ok_or(WriteError::NotFound)?;
        if let Some(refused) = lease_refusal(&task, lease_id, now) {
            return Err(refused);
        }
        let EventNote {
            step,
            mut message,
            screenshot,
        } = note;
        match change {
            Transition::Progress => {}
            Transition::WaitForPerson => {
                if task.state != TaskState::Running {
                    return Err(WriteError::WrongState(task.state.as_str()));
                }
                task.state = TaskState::WaitingForPerson;
            }
            Transition::Resume => {
                if task.state != TaskState::WaitingForPerson {
                    return Err(WriteError::WrongState(task.state.as_str()));
                }
                task.state = TaskState::Running;
            }
            Transition::Succeed(result) => {
                let size = result.to_string().len();
                if size > limits::MAX_RESULT_BYTES {
                    // Refusing would leave the task running with nothing the worker can
                    // do about it; a failure says what happened.
                    let error = format!(
                        "the result is too large: {size} bytes (at most {})",
                        limits::MAX_RESULT_BYTES
                    );
                    tracing::warn!(task = %task.id, size, "task result over the limit; the task fails");
                    message = Some(error.clone());
                    task.state = TaskState::Failed;
                    task.error = Some(error);
                } else {
                    task.state = TaskState::Succeeded;
                    task.result = Some(result);
                }
            }
            Transition::Fail(error) => {
                let error = truncate(&error, limits::MAX_MESSAGE_CHARS);
                if message.is_none() {
                    message = Some(error.clone());
                }
                task.state = TaskState::Failed;
                task.error = Some(error);
            }
        }
        if task.state.is_final() {
            task.lease = None;
            task.finished_at = Some(now);
        }
        let screenshot = match screenshot {
            Some(image) if image.len() > Self::MAX_SCREENSHOT_BYTES => {
                tracing::warn!(task = %task.id, bytes = image.len(), "screenshot over 2 MiB dropped");
                let dropped = format!("(screenshot of {} bytes dropped: over 2 MiB)", image.len());
                message = Some(match message {
                    Some(m) => format!("{} {dropped}", truncate(&m, limits::MAX_MESSAGE_CHARS)),
                    None => dropped,
                });
                None
            }
            other => other,
        };
        task.seq += 1;
        task.updated_at = now;
        let task = save_task(&mut tx, &task).await?;
        let event = add_event(&mut tx, &task, now, step, message, screenshot.as_deref()).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok((task, event))
    }

    async fn cancel(
        &self,
        task_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(Task, TaskEvent), WriteError> {
        let mut tx = self.begin_immediate().await?;
        let task = fetch_task(&mut tx, task_id)
            .await?
            .ok_or(WriteError::NotFound)?;
        if task.state.is_final() {
            return Err(WriteError::WrongState(task.state.as_str()));
        }
        let done = cancel_in(&mut tx, task, reason, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(done)
    }

    async fn cancel_session(
        &self,
        session_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<(Task, TaskEvent)>, StoreError> {
        let mut tx = self.begin_immediate().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE session_id = ? AND state IN ",
            open_states!(),
            " ORDER BY position"
        ))
        .bind(session_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut done = Vec::with_capacity(rows.len());
        for row in &rows {
            let task = task_from_row(row)?;
            done.push(cancel_in(&mut tx, task, reason, now).await?);
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn expire_leases(&self, now: OffsetDateTime) -> Result<Vec<ExpiredLease>, StoreError> {
        // Most sweeps find nothing: look without the write lock first.
        let any: Option<i64> = sqlx::query_scalar(concat!(
            "SELECT 1 FROM tasks WHERE state IN ",
            active_states!(),
            " AND lease_until < ? LIMIT 1"
        ))
        .bind(millis(now))
        .fetch_optional(&self.pool)
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_immediate().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE state IN ",
            active_states!(),
            " AND lease_until < ? ORDER BY position"
        ))
        .bind(millis(now))
        .fetch_all(&mut *tx)
        .await?;
        let mut expired = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut task = task_from_row(row)?;
            let worker = task
                .lease
                .take()
                .map(|l| l.worker)
                .unwrap_or_else(|| "?".into());
            let message = if task.attempts >= task.max_attempts {
                task.state = TaskState::Failed;
                task.error = Some("worker lost".into());
                task.finished_at = Some(now);
                format!(
                    "worker lost: lease of {worker} ran out; failed after {} of {} attempts",
                    task.attempts, task.max_attempts
                )
            } else {
                task.state = TaskState::Queued;
                format!(
                    "worker lost: lease of {worker} ran out; queued again (attempt {} of {})",
                    task.attempts + 1,
                    task.max_attempts
                )
            };
            task.seq += 1;
            task.updated_at = now;
            let task = save_task(&mut tx, &task).await?;
            let event = add_event(&mut tx, &task, now, None, Some(message), None).await?;
            expired.push(ExpiredLease { task, event });
        }
        tx.commit().await?;
        Ok(expired)
    }

    async fn stats(&self, now: OffsetDateTime) -> Result<Vec<(TaskKind, KindStats)>, StoreError> {
        let mut stats: Vec<(TaskKind, KindStats)> = TaskKind::ALL
            .iter()
            .map(|&k| (k, KindStats::default()))
            .collect();
        let rows = sqlx::query(concat!(
            "SELECT kind, state, COUNT(*) AS n, MIN(created_at) AS oldest, \
             SUM(CASE WHEN lease_until < ? THEN 1 ELSE 0 END) AS stalled \
             FROM tasks WHERE state IN ",
            open_states!(),
            " GROUP BY kind, state"
        ))
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let kind: String = row.try_get("kind")?;
            let state: String = row.try_get("state")?;
            let n = count(row.try_get("n")?);
            let Some((_, s)) = stats.iter_mut().find(|(k, _)| k.as_str() == kind) else {
                continue;
            };
            match TaskState::parse(&state) {
                Some(TaskState::Queued) => {
                    s.queued = n;
                    s.oldest_queued_at = row
                        .try_get::<Option<i64>, _>("oldest")?
                        .map(from_millis)
                        .transpose()?;
                }
                Some(TaskState::Running) => s.running = n,
                Some(TaskState::WaitingForPerson) => s.waiting_for_person = n,
                _ => continue,
            }
            if state != "queued" {
                s.stalled_leases += count(row.try_get::<Option<i64>, _>("stalled")?.unwrap_or(0));
            }
        }
        Ok(stats)
    }

    async fn worker_seen(
        &self,
        worker: &str,
        kinds: &[TaskKind],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        record_worker(&mut conn, worker, Some(kinds), now).await
    }

    async fn workers_seen_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<WorkerSeen>, StoreError> {
        let rows = sqlx::query(
            "SELECT worker, kinds, last_seen FROM task_workers WHERE last_seen >= ? \
             ORDER BY last_seen DESC, worker",
        )
        .bind(millis(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kinds: String = row.try_get("kinds")?;
                Ok(WorkerSeen {
                    worker: row.try_get("worker")?,
                    kinds: kinds.split(',').filter_map(TaskKind::parse).collect(),
                    last_seen: from_millis(row.try_get("last_seen")?)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::new_task_id;
    use serde_json::json;
    use tempfile::TempDir;

    async fn open_store() -> (TempDir, SqliteTaskStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteTaskStore::open(&dir.path().join("livesession.db"))
            .await
            .unwrap();
        (dir, store)
    }

    /// A fixed, whole-millisecond time, so stored times compare equal.
    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn secs(n: i64) -> time::Duration {
        time::Duration::seconds(n)
    }

    fn new_task(session_id: &str, kind: TaskKind, created_at: OffsetDateTime) -> NewTask {
        let input = match kind {
            TaskKind::Steps => json!({"steps": [{"action": "screenshot"}]}),
            TaskKind::Agent => json!({"goal": "find the price"}),
        };
        NewTask {
            id: new_task_id(),
            session_id: session_id.into(),
            kind,
            input,
            max_attempts: 3,
            created_at,
        }
    }

    async fn insert(
        store: &SqliteTaskStore,
        session_id: &str,
        kind: TaskKind,
        at: OffsetDateTime,
    ) -> Task {
        store
            .insert_task(&new_task(session_id, kind, at), 50)
            .await
            .unwrap()
            .expect("room in the session")
            .0
    }

    async fn claim(
        store: &SqliteTaskStore,
        kinds: &[TaskKind],
        now: OffsetDateTime,
    ) -> Option<Claimed> {
        store.claim(kinds, "w1", now + secs(30), now).await.unwrap()
    }

    const ALL: &[TaskKind] = &TaskKind::ALL;

    #[tokio::test]
    async fn a_task_round_trips_with_its_events_in_order() {
        let (_dir, store) = open_store().await;
        let new = new_task("s1", TaskKind::Steps, t0());
        let (task, first) = store.insert_task(&new, 50).await.unwrap().unwrap();
        assert_eq!(task.id, new.id);
        assert_eq!(task.state, TaskState::Queued);
        assert_eq!(task.input, new.input);
        assert_eq!((task.attempts, task.max_attempts, task.seq), (0, 3, 1));
        assert_eq!(task.created_at, t0());
        assert_eq!(task.lease, None);
        assert_eq!(
            (first.seq, first.state, first.task_id.as_str()),
            (1, TaskState::Queued, task.id.as_str())
        );
        assert_eq!(store.get_task(&task.id).await.unwrap(), Some(task.clone()));
        assert_eq!(store.get_task("t_nope").await.unwrap(), None);

        let now = t0() + secs(1);
        let claimed = claim(&store, ALL, now).await.unwrap();
        assert_eq!(claimed.task.state, TaskState::Running);
        assert_eq!(claimed.task.attempts, 1);
        assert_eq!(claimed.lease.worker, "w1");
        assert_eq!(claimed.lease.until, now + secs(30));
        assert_eq!(claimed.task.lease.as_ref(), Some(&claimed.lease));
        assert_eq!(
            claimed.event.message.as_deref(),
            Some("claimed by w1, attempt 1 of 3")
        );
        let lease = claimed.lease.id.clone();
        let note = EventNote {
            step: Some(0),
            message: Some("screenshot".into()),
            screenshot: Some(vec![0xff, 0xd8, 0xff]),
        };
        let (_, progress) = store
            .transition(&task.id, &lease, Transition::Progress, note, now)
            .await
            .unwrap();
        assert_eq!(
            (
                progress.seq,
                progress.state,
                progress.step,
                progress.screenshot
            ),
            (3, TaskState::Running, Some(0), true)
        );
        let (done, last) = store
            .transition(
                &task.id,
                &lease,
                Transition::Succeed(json!({"ok": true})),
                EventNote::default(),
                now + secs(2),
            )
            .await
            .unwrap();
        assert_eq!(done.state, TaskState::Succeeded);
        assert_eq!(done.result, Some(json!({"ok": true})));
        assert_eq!(done.lease, None);
        assert_eq!(done.finished_at, Some(now + secs(2)));
        assert_eq!(done.seq, 4);
        assert_eq!(last.seq, 4);

        let events = store.task_events(&task.id, 0, 0).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(
            events.windows(2).all(|w| w[0].cursor < w[1].cursor),
            "{events:?}"
        );
        assert_eq!(
            events.iter().map(|e| e.state).collect::<Vec<_>>(),
            vec![
                TaskState::Queued,
                TaskState::Running,
                TaskState::Running,
                TaskState::Succeeded
            ]
        );
        assert_eq!(events[0], first);
        assert_eq!(events[1], claimed.event);
        let later = store.task_events(&task.id, 2, 1).await.unwrap();
        assert_eq!(later, vec![events[2].clone()]);
        assert_eq!(
            store.screenshot(&task.id, 3).await.unwrap(),
            Some(vec![0xff, 0xd8, 0xff])
        );
        assert_eq!(store.screenshot(&task.id, 2).await.unwrap(), None);
        assert_eq!(store.get_task(&task.id).await.unwrap(), Some(done));
    }

    #[tokio::test]
    async fn migrations_are_recorded_apart_from_the_session_stores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("livesession.db");
        let store = SqliteTaskStore::open(&path).await.unwrap();
        let task = insert(&store, "s1", TaskKind::Agent, t0()).await;
        // A second store on the same pool (as the gateway shares it) migrates nothing new.
        let again = SqliteTaskStore::new(store.pool().clone()).await.unwrap();
        assert_eq!(again.get_task(&task.id).await.unwrap(), Some(task.clone()));
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _tasks_migrations")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(applied, 1);
        let default_table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(store.pool())
        .await
        .unwrap();
        assert_eq!(
            default_table, None,
            "the session store's table is left to it"
        );
        drop((store, again));
        let reopened = SqliteTaskStore::open(&path).await.unwrap();
        assert_eq!(reopened.get_task(&task.id).await.unwrap(), Some(task));
    }

    #[tokio::test]
    async fn a_claim_takes_the_oldest_task_that_is_first_in_a_free_session() {
        let (_dir, store) = open_store().await;
        let a = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let b = insert(&store, "s1", TaskKind::Agent, t0() + secs(1)).await;
        let c = insert(&store, "s2", TaskKind::Steps, t0() + secs(2)).await;
        // s3: an agent task first, so its steps task waits even for a steps-only worker.
        let x = insert(&store, "s3", TaskKind::Agent, t0() + secs(3)).await;
        let y = insert(&store, "s3", TaskKind::Steps, t0() + secs(4)).await;
        let now = t0() + secs(10);

        assert_eq!(
            claim(&store, &[TaskKind::Steps], now)
                .await
                .unwrap()
                .task
                .id,
            a.id
        );
        // s1 is busy with a: b waits though it is older than c.
        assert_eq!(claim(&store, ALL, now).await.unwrap().task.id, c.id);
        // s3's steps task y is behind the agent task x.
        assert!(claim(&store, &[TaskKind::Steps], now).await.is_none());
        assert_eq!(
            claim(&store, &[TaskKind::Agent], now)
                .await
                .unwrap()
                .task
                .id,
            x.id
        );
        assert!(claim(&store, ALL, now).await.is_none());
        assert!(claim(&store, &[], now).await.is_none());

        let lease_a = store
            .get_task(&a.id)
            .await
            .unwrap()
            .unwrap()
            .lease
            .unwrap()
            .id;
        store
            .transition(
                &a.id,
                &lease_a,
                Transition::Fail("nope".into()),
                EventNote::default(),
                now,
            )
            .await
            .unwrap();
        assert!(
            claim(&store, &[TaskKind::Steps], now).await.is_none(),
            "b is an agent task"
        );
        assert_eq!(
            claim(&store, &[TaskKind::Agent], now)
                .await
                .unwrap()
                .task
                .id,
            b.id
        );
        let lease_x = store
            .get_task(&x.id)
            .await
            .unwrap()
            .unwrap()
            .lease
            .unwrap()
            .id;
        store
            .transition(
                &x.id,
                &lease_x,
                Transition::Succeed(json!(null)),
                EventNote::default(),
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            claim(&store, &[TaskKind::Steps], now)
                .await
                .unwrap()
                .task
                .id,
            y.id
        );
    }

    #[tokio::test]
    async fn tasks_with_the_same_timestamp_keep_their_insertion_order() {
        let (_dir, store) = open_store().await;
        let mut ids = Vec::new();
        for i in 0..8 {
            let kind = if i % 3 == 0 {
                TaskKind::Agent
            } else {
                TaskKind::Steps
            };
            ids.push(insert(&store, "s1", kind, t0()).await.id);
        }
        let listed: Vec<String> = store
            .list_tasks(&TaskFilter {
                session_id: Some("s1".into()),
                ..TaskFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(listed, ids);
        let mut ran = Vec::new();
        while let Some(c) = claim(&store, ALL, t0()).await {
            assert!(
                claim(&store, ALL, t0()).await.is_none(),
                "one at a time in a session"
            );
            store
                .transition(
                    &c.task.id,
                    &c.lease.id,
                    Transition::Succeed(json!(1)),
                    EventNote::default(),
                    t0(),
                )
                .await
                .unwrap();
            ran.push(c.task.id);
        }
        assert_eq!(ran, ids);
    }

    #[tokio::test]
    async fn a_lost_lease_queues_the_task_again_then_fails_it() {
        let (_dir, store) = open_store().await;
        let mut new = new_task("s1", TaskKind::Steps, t0());
        new.max_attempts = 2;
        let (task, _) = store.insert_task(&new, 50).await.unwrap().unwrap();

        let first = store
            .claim(ALL, "w1", t0() + secs(30), t0())
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .expire_leases(t0() + secs(30))
                .await
                .unwrap()
                .is_empty(),
            "not yet"
        );
        let stats = store.stats(t0() + secs(31)).await.unwrap();
        assert_eq!(stats[0].1.stalled_leases, 1);

        let expired = store.expire_leases(t0() + secs(31)).await.unwrap();
        assert_eq!(expired.len(), 1);
        let requeued = &expired[0];
        assert_eq!(requeued.task.state, TaskState::Queued);
        assert_eq!(requeued.task.lease, None);
        assert_eq!(requeued.task.attempts, 1);
        assert_eq!(
            requeued.event.message.as_deref(),
            Some("worker lost: lease of w1 ran out; queued again (attempt 2 of 2)")
        );
        assert_eq!(requeued.event.state, TaskState::Queued);
        // The lost worker's late write is refused.
        let err = store
            .transition(
                &task.id,
                &first.lease.id,
                Transition::Progress,
                EventNote::default(),
                t0() + secs(32),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::LeaseLost(r) if r == ": it ran out"),
            "{err:?}"
        );

        let second = store
            .claim(ALL, "w2", t0() + secs(60), t0() + secs(40))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.task.attempts, 2);
        assert_eq!(
            second.event.message.as_deref(),
            Some("claimed by w2, attempt 2 of 2")
        );
        let expired = store.expire_leases(t0() + secs(61)).await.unwrap();
        assert_eq!(expired.len(), 1);
        let failed = &expired[0].task;
        assert_eq!(failed.state, TaskState::Failed);
        assert_eq!(failed.error.as_deref(), Some("worker lost"));
        assert_eq!(failed.finished_at, Some(t0() + secs(61)));
        assert!(
            expired[0]
                .event
                .message
                .as_deref()
                .unwrap()
                .starts_with("worker lost: lease of w2 ran out; failed")
        );
        assert!(
            store
                .expire_leases(t0() + secs(100))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(claim(&store, ALL, t0() + secs(100)).await.is_none());
    }

    #[tokio::test]
    async fn a_write_with_the_lease_before_a_new_claim_is_refused() {
        let (_dir, store) = open_store().await;
        let task = insert(&store, "s1", TaskKind::Agent, t0()).await;
        let old = store
            .claim(ALL, "w1", t0() + secs(5), t0())
            .await
            .unwrap()
            .unwrap();
        // Within the lease, progress is accepted.
        store
            .transition(
                &task.id,
                &old.lease.id,
                Transition::Progress,
                EventNote::message("thinking"),
                t0() + secs(4),
            )
            .await
            .unwrap();
        // After the lease ran out but before the sweep, refused too.
        let err = store
            .transition(
                &task.id,
                &old.lease.id,
                Transition::Progress,
                EventNote::default(),
                t0() + secs(6),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::LeaseLost(r) if r == ": it ran out"),
            "{err:?}"
        );
        assert!(matches!(
            store
                .heartbeat(&task.id, &old.lease.id, t0() + secs(40), t0() + secs(6))
                .await,
            Err(WriteError::LeaseLost(_))
        ));
        store.expire_leases(t0() + secs(6)).await.unwrap();
        let new = store
            .claim(ALL, "w2", t0() + secs(40), t0() + secs(7))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(new.lease.id, old.lease.id);
        let err = store
            .transition(
                &task.id,
                &old.lease.id,
                Transition::Succeed(json!("late")),
                EventNote::default(),
                t0() + secs(8),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::LeaseLost(_)), "{err:?}");
        assert!(err.to_string().contains("no longer holds the task"));
        let (done, _) = store
            .transition(
                &task.id,
                &new.lease.id,
                Transition::Succeed(json!("w2")),
                EventNote::default(),
                t0() + secs(8),
            )
            .await
            .unwrap();
        assert_eq!(done.result, Some(json!("w2")));
        let err = store
            .transition(
                &task.id,
                &new.lease.id,
                Transition::Progress,
                EventNote::default(),
                t0() + secs(9),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::LeaseLost(r) if r == ": the task is finished"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn waiting_resuming_and_heartbeats_check_state_and_lease() {
        let (_dir, store) = open_store().await;
        let task = insert(&store, "s1", TaskKind::Agent, t0()).await;
        let c = store
            .claim(ALL, "w1", t0() + secs(30), t0())
            .await
            .unwrap()
            .unwrap();
        let lease = c.lease.id.as_str();
        let now = t0() + secs(1);
        let go = |change: Transition| {
            store.transition(&task.id, lease, change, EventNote::message("why"), now)
        };
        assert!(matches!(
            go(Transition::Resume).await,
            Err(WriteError::WrongState("running"))
        ));
        let (waiting, event) = go(Transition::WaitForPerson).await.unwrap();
        assert_eq!(waiting.state, TaskState::WaitingForPerson);
        assert_eq!(event.message.as_deref(), Some("why"));
        assert!(matches!(
            go(Transition::WaitForPerson).await,
            Err(WriteError::WrongState("waiting_for_person"))
        ));
        let (progress, _) = go(Transition::Progress).await.unwrap();
        assert_eq!(progress.state, TaskState::WaitingForPerson);

        let beat = store
            .heartbeat(&task.id, lease, t0() + secs(90), now)
            .await
            .unwrap();
        assert_eq!(beat.lease.as_ref().unwrap().until, t0() + secs(90));
        assert_eq!(beat.seq, progress.seq, "a heartbeat writes no event");
        // Never shortened.
        let beat = store
            .heartbeat(&task.id, lease, t0() + secs(10), now)
            .await
            .unwrap();
        assert_eq!(beat.lease.unwrap().until, t0() + secs(90));
        assert!(matches!(
            store
                .heartbeat(&task.id, "l_other", t0() + secs(90), now)
                .await,
            Err(WriteError::LeaseLost(_))
        ));
        assert!(matches!(
            store.heartbeat("t_nope", lease, now, now).await,
            Err(WriteError::NotFound)
        ));
        assert!(matches!(
            store
                .transition(
                    "t_nope",
                    lease,
                    Transition::Progress,
                    EventNote::default(),
                    now
                )
                .await,
            Err(WriteError::NotFound)
        ));

        let (running, _) = go(Transition::Resume).await.unwrap();
        assert_eq!(running.state, TaskState::Running);
        // The lease holds to the heartbeat's time, past the claim's.
        store
            .transition(
                &task.id,
                lease,
                Transition::Progress,
                EventNote::default(),
                t0() + secs(60),
            )
            .await
            .unwrap();
        let seen = store.workers_seen_since(t0()).await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].worker, "w1");
        assert_eq!(
            seen[0].kinds,
            TaskKind::ALL.to_vec(),
            "a heartbeat keeps the kinds the claim gave"
        );
        assert_eq!(seen[0].last_seen, now);
    }

    #[tokio::test]
    async fn cancelling_queued_running_and_finished_tasks() {
        let (_dir, store) = open_store().await;
        let running = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let queued = insert(&store, "s2", TaskKind::Steps, t0()).await;
        let c = claim(&store, &[TaskKind::Steps], t0()).await.unwrap();
        assert_eq!(c.task.id, running.id);
        let now = t0() + secs(1);

        let (cancelled, event) = store
            .cancel(&running.id, "stopped by the viewer", now)
            .await
            .unwrap();
        assert_eq!(cancelled.state, TaskState::Cancelled);
        assert_eq!(cancelled.error.as_deref(), Some("stopped by the viewer"));
        assert_eq!(cancelled.lease, None);
        assert_eq!(cancelled.finished_at, Some(now));
        assert_eq!(
            (event.state, event.message.as_deref()),
            (TaskState::Cancelled, Some("stopped by the viewer"))
        );
        let err = store
            .transition(
                &running.id,
                &c.lease.id,
                Transition::Progress,
                EventNote::default(),
                now,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::LeaseLost(r) if r == ": it was cancelled"),
            "{err:?}"
        );

        let (cancelled, _) = store
            .cancel(&queued.id, "changed my mind", now)
            .await
            .unwrap();
        assert_eq!(cancelled.state, TaskState::Cancelled);
        assert!(matches!(
            store.cancel(&queued.id, "again", now).await,
            Err(WriteError::WrongState("cancelled"))
        ));
        assert!(matches!(
            store.cancel("t_nope", "x", now).await,
            Err(WriteError::NotFound)
        ));
        assert!(claim(&store, ALL, now).await.is_none());
    }

    #[tokio::test]
    async fn cancelling_a_session_cancels_its_open_tasks_only() {
        let (_dir, store) = open_store().await;
        let done = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let c = claim(&store, ALL, t0()).await.unwrap();
        assert_eq!(c.task.id, done.id);
        store
            .transition(
                &done.id,
                &c.lease.id,
                Transition::Succeed(json!(1)),
                EventNote::default(),
                t0(),
            )
            .await
            .unwrap();
        let running = insert(&store, "s1", TaskKind::Agent, t0()).await;
        claim(&store, ALL, t0()).await.unwrap();
        let q1 = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let q2 = insert(&store, "s1", TaskKind::Agent, t0()).await;
        let other = insert(&store, "s2", TaskKind::Steps, t0()).await;

        let cancelled = store
            .cancel_session("s1", "the session ended", t0() + secs(1))
            .await
            .unwrap();
        let ids: Vec<&str> = cancelled.iter().map(|(t, _)| t.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![running.id.as_str(), q1.id.as_str(), q2.id.as_str()]
        );
        for (task, event) in &cancelled {
            assert_eq!(task.state, TaskState::Cancelled);
            assert_eq!(event.message.as_deref(), Some("the session ended"));
        }
        assert_eq!(
            store.get_task(&done.id).await.unwrap().unwrap().state,
            TaskState::Succeeded
        );
        assert_eq!(
            store.get_task(&other.id).await.unwrap().unwrap().state,
            TaskState::Queued
        );
        assert!(
            store
                .cancel_session("s1", "again", t0() + secs(2))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn stats_count_each_kind() {
        let (_dir, store) = open_store().await;
        insert(&store, "s1", TaskKind::Steps, t0()).await;
        insert(&store, "s1", TaskKind::Steps, t0() + secs(1)).await;
        insert(&store, "s2", TaskKind::Steps, t0() + secs(2)).await;
        insert(&store, "s3", TaskKind::Agent, t0() + secs(3)).await;
        insert(&store, "s4", TaskKind::Agent, t0() + secs(4)).await;
        let now = t0() + secs(10);
        // Runs s1's first steps task and s3's agent task.
        store
            .claim(&[TaskKind::Steps], "w", now + secs(30), now)
            .await
            .unwrap()
            .unwrap();
        let a = store
            .claim(&[TaskKind::Agent], "w", now + secs(5), now)
            .await
            .unwrap()
            .unwrap();
        store
            .transition(
                &a.task.id,
                &a.lease.id,
                Transition::WaitForPerson,
                EventNote::default(),
                now,
            )
            .await
            .unwrap();

        let stats = store.stats(now + secs(6)).await.unwrap();
        assert_eq!(stats.len(), 2);
        let (kind, steps) = &stats[0];
        assert_eq!(*kind, TaskKind::Steps);
        assert_eq!(
            steps,
            &KindStats {
                queued: 2,
                running: 1,
                waiting_for_person: 0,
                oldest_queued_at: Some(t0() + secs(1)),
                stalled_leases: 0,
            }
        );
        let (kind, agent) = &stats[1];
        assert_eq!(*kind, TaskKind::Agent);
        assert_eq!(
            agent,
            &KindStats {
                queued: 1,
                running: 0,
                waiting_for_person: 1,
                oldest_queued_at: Some(t0() + secs(4)),
                stalled_leases: 1,
            }
        );
        let (_dir2, empty) = open_store().await;
        let zero = empty.stats(now).await.unwrap();
        assert_eq!(
            zero,
            vec![
                (TaskKind::Steps, KindStats::default()),
                (TaskKind::Agent, KindStats::default())
            ]
        );
    }

    #[tokio::test]
    async fn session_events_resume_after_a_cursor() {
        let (_dir, store) = open_store().await;
        let a = insert(&store, "s1", TaskKind::Steps, t0()).await;
        insert(&store, "s2", TaskKind::Steps, t0()).await;
        let c = claim(&store, &[TaskKind::Steps], t0()).await.unwrap();
        assert_eq!(c.task.id, a.id);
        let b = insert(&store, "s1", TaskKind::Agent, t0()).await;
        for i in 0..3 {
            store
                .transition(
                    &a.id,
                    &c.lease.id,
                    Transition::Progress,
                    EventNote::message(format!("step {i}")),
                    t0(),
                )
                .await
                .unwrap();
        }
        insert(&store, "s2", TaskKind::Agent, t0()).await;
        store.cancel(&b.id, "no", t0()).await.unwrap();

        let all = store.session_events("s1", 0, 0).await.unwrap();
        assert_eq!(all.len(), 1 + 1 + 1 + 3 + 1);
        assert!(all.iter().all(|e| e.session_id == "s1"));
        assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));
        let cut = all[3].cursor;
        let later = store.session_events("s1", cut, 0).await.unwrap();
        assert_eq!(later, all[4..].to_vec());
        let page = store.session_events("s1", cut, 2).await.unwrap();
        assert_eq!(page, all[4..6].to_vec());
        assert!(
            store
                .session_events("s1", all.last().unwrap().cursor, 0)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.session_events("s9", 0, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_session_holds_at_most_max_open_tasks() {
        let (_dir, store) = open_store().await;
        for _ in 0..3 {
            assert!(
                store
                    .insert_task(&new_task("s1", TaskKind::Steps, t0()), 3)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert!(
            store
                .insert_task(&new_task("s1", TaskKind::Steps, t0()), 3)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .insert_task(&new_task("s2", TaskKind::Steps, t0()), 3)
                .await
                .unwrap()
                .is_some()
        );
        let c = claim(&store, ALL, t0()).await.unwrap();
        assert_eq!(c.task.session_id, "s1");
        assert!(
            store
                .insert_task(&new_task("s1", TaskKind::Steps, t0()), 3)
                .await
                .unwrap()
                .is_none(),
            "running counts"
        );
        store
            .transition(
                &c.task.id,
                &c.lease.id,
                Transition::Succeed(json!(1)),
                EventNote::default(),
                t0(),
            )
            .await
            .unwrap();
        assert!(
            store
                .insert_task(&new_task("s1", TaskKind::Steps, t0()), 3)
                .await
                .unwrap()
                .is_some()
        );
        let open = store
            .list_tasks(&TaskFilter {
                session_id: Some("s1".into()),
                state: Some(TaskState::Queued),
                limit: 0,
            })
            .await
            .unwrap();
        assert_eq!(open.len(), 3);
    }

    #[tokio::test]
    async fn results_messages_and_screenshots_are_bounded() {
        let (_dir, store) = open_store().await;
        let task = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let c = claim(&store, ALL, t0()).await.unwrap();
        let lease = c.lease.id.as_str();

        let long = "é".repeat(limits::MAX_MESSAGE_CHARS + 10);
        let (_, event) = store
            .transition(
                &task.id,
                lease,
                Transition::Progress,
                EventNote::message(long),
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(
            event.message.unwrap().chars().count(),
            limits::MAX_MESSAGE_CHARS
        );

        let big = vec![0u8; SqliteTaskStore::MAX_SCREENSHOT_BYTES + 1];
        let note = EventNote {
            step: Some(1),
            message: Some("shot".into()),
            screenshot: Some(big),
        };
        let (_, event) = store
            .transition(&task.id, lease, Transition::Progress, note, t0())
            .await
            .unwrap();
        assert!(!event.screenshot);
        assert!(
            event
                .message
                .as_deref()
                .unwrap()
                .starts_with("shot (screenshot of 2097153 bytes dropped")
        );
        assert_eq!(store.screenshot(&task.id, event.seq).await.unwrap(), None);

        let result = json!({"text": "x".repeat(limits::MAX_RESULT_BYTES)});
        let (failed, event) = store
            .transition(
                &task.id,
                lease,
                Transition::Succeed(result),
                EventNote::default(),
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(failed.state, TaskState::Failed);
        assert_eq!(failed.result, None);
        let error = failed.error.unwrap();
        assert!(error.starts_with("the result is too large:"), "{error}");
        assert_eq!(event.message.as_deref(), Some(error.as_str()));

        // Just under the limit is kept.
        let task = insert(&store, "s2", TaskKind::Steps, t0()).await;
        let c = claim(&store, ALL, t0()).await.unwrap();
        assert_eq!(c.task.id, task.id);
        let fits = json!("x".repeat(limits::MAX_RESULT_BYTES - 2));
        let (done, _) = store
            .transition(
                &task.id,
                &c.lease.id,
                Transition::Succeed(fits.clone()),
                EventNote::default(),
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(done.result, Some(fits));

        let error = "e".repeat(limits::MAX_MESSAGE_CHARS * 2);
        let task = insert(&store, "s3", TaskKind::Steps, t0()).await;
        let c = claim(&store, ALL, t0()).await.unwrap();
        let (failed, event) = store
            .transition(
                &task.id,
                &c.lease.id,
                Transition::Fail(error),
                EventNote::default(),
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(
            failed.error.as_ref().unwrap().len(),
            limits::MAX_MESSAGE_CHARS
        );
        assert_eq!(event.message, failed.error);
    }

    #[tokio::test]
    async fn listings_and_workers() {
        let (_dir, store) = open_store().await;
        let a = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let b = insert(&store, "s2", TaskKind::Steps, t0() + secs(1)).await;
        let c = insert(&store, "s1", TaskKind::Agent, t0() + secs(2)).await;
        let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
        let recent = store.list_tasks(&TaskFilter::default()).await.unwrap();
        assert_eq!(ids(recent), vec![c.id.clone(), b.id.clone(), a.id.clone()]);
        let limited = store
            .list_tasks(&TaskFilter {
                limit: 2,
                ..TaskFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(limited), vec![c.id.clone(), b.id.clone()]);
        let s1 = store
            .list_tasks(&TaskFilter {
                session_id: Some("s1".into()),
                ..TaskFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(s1), vec![a.id.clone(), c.id.clone()]);
        store
            .claim(&[TaskKind::Steps], "w1", t0() + secs(30), t0())
            .await
            .unwrap();
        let running = store
            .list_tasks(&TaskFilter {
                state: Some(TaskState::Running),
                ..TaskFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(running), vec![a.id.clone()]);

        store
            .worker_seen("w2", &[TaskKind::Agent], t0() + secs(5))
            .await
            .unwrap();
        store
            .worker_seen("w3", &[], t0() - secs(100))
            .await
            .unwrap();
        let seen = store.workers_seen_since(t0() - secs(1)).await.unwrap();
        assert_eq!(
            seen,
            vec![
                WorkerSeen {
                    worker: "w2".into(),
                    kinds: vec![TaskKind::Agent],
                    last_seen: t0() + secs(5)
                },
                WorkerSeen {
                    worker: "w1".into(),
                    kinds: vec![TaskKind::Steps],
                    last_seen: t0()
                },
            ]
        );
        // A later sighting updates the kinds.
        store
            .worker_seen("w1", &TaskKind::ALL, t0() + secs(9))
            .await
            .unwrap();
        let seen = store.workers_seen_since(t0() + secs(6)).await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].kinds, TaskKind::ALL.to_vec());
    }
}
