//! The PostgreSQL task store: the same database as the session store (its pool may be
//! shared), its own migrations recorded in `_tasks_migrations`.
//!
//! SQLite serializes every writer with its one write lock, and the SQLite store leans on
//! that (`BEGIN IMMEDIATE`). Here several processes and many connections write at once,
//! so each write takes only the locks it needs, always in the same order:
//!
//! 1. the *session lock*: a transaction-scoped advisory lock per session
//!    ([`lock_session`]), taken by every write that changes a session's tasks or writes
//!    an event (insert, claim, transition, cancel, lease expiry). It makes the per-session
//!    rules hold across processes (the open-task cap, one running task, FIFO) and keeps a
//!    session's event cursors in commit order (an identity is drawn at insert time, not at
//!    commit; a viewer resumes after a cursor and must not miss an event committed later
//!    with a smaller one);
//! 2. the task's row (`SELECT … FOR UPDATE`), which serializes the writes of one task, so
//!    its event `seq` stays gapless (read, incremented and written in one transaction under
//!    the row lock; `UNIQUE (task_id, seq)` backs it) and a late write of a worker whose
//!    lease ended is refused against the current row;
//! 3. the worker's row in `task_workers` (an upsert).
//!
//! A claim never waits: it picks the next candidate with `FOR UPDATE SKIP LOCKED` and takes
//! the session lock with `pg_try_advisory_xact_lock`, passing over a session another
//! transaction holds, then re-checks the session's rules under that lock. Every other write
//! takes the session lock before any row lock, so there is no cycle to deadlock on.
//!
//! Transactions run at READ COMMITTED: each statement sees what committed before it, so a
//! check made after taking a lock sees every write that held the lock before.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::common::{
    SEEN_GRANULARITY_MS, cancel_change, claim_change, clamp_limit, corrupt, count, expire_change,
    from_millis, heartbeat_change, kinds_list, lease_refusal, millis, transition_change, truncate,
};
use super::{
    Claimed, ExpiredLease, KindStats, StoreError, TaskFilter, TaskStore, Transition, WorkerSeen,
    WriteError,
};
use crate::model::{
    EventNote, Lease, NewTask, Task, TaskEvent, TaskKind, TaskState, limits, new_lease_id,
};

/// The PostgreSQL backend of [`TaskStore`].
#[derive(Clone)]
pub struct PgTaskStore {
    pool: PgPool,
}

/// How long a statement of this store may wait for a lock, and run at all, before it
/// fails (set per transaction too, so it holds on a pool shared with the session store).
macro_rules! lock_timeout {
    () => {
        "5s"
    };
}
macro_rules! statement_timeout {
    () => {
        "10s"
    };
}

impl PgTaskStore {
    /// The largest screenshot stored with an event; a larger one is dropped (the event is
    /// written without it, and its message says so).
    pub const MAX_SCREENSHOT_BYTES: usize = super::common::MAX_SCREENSHOT_BYTES;

    /// The store on an existing pool (the gateway shares the session store's): runs the
    /// task migrations, recorded in `_tasks_migrations` so they do not mix with the
    /// session store's `_sqlx_migrations`.
    pub async fn new(pool: PgPool) -> Result<Self, StoreError> {
        let mut migrator = sqlx::migrate!("migrations/postgres");
        migrator.dangerous_set_table_name("_tasks_migrations");
        migrator.run(&pool).await?;
        Ok(Self { pool })
    }

    /// Connects to `url` (`postgres://…`) on its own pool: at most 16 connections, 5 s to
    /// get one, and on each connection a lock timeout and a statement timeout so that
    /// nothing waits for ever.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.options([
            ("lock_timeout", lock_timeout!()),
            ("statement_timeout", statement_timeout!()),
            ("idle_in_transaction_session_timeout", "60s"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Self::new(pool).await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A READ COMMITTED transaction with this store's timeouts (in one round trip).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with(concat!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '",
                lock_timeout!(),
                "'; SET LOCAL statement_timeout = '",
                statement_timeout!(),
                "'"
            ))
            .await?)
    }

    /// Runs `f` in a transaction ([`Self::begin`]): commits what it did if it succeeds,
    /// rolls back at once if it fails. (A dropped transaction is rolled back only when
    /// its connection goes back to the pool, in a task of its own: until then it would
    /// keep its session locks, and a claim right after would pass the session over.)
    async fn in_transaction<T, E>(
        &self,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut tx = self.begin().await?;
        match f(&mut tx).await {
            Ok(done) => {
                tx.commit().await.map_err(StoreError::from)?;
                Ok(done)
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rolling back a task store transaction failed");
                }
                Err(e)
            }
        }
    }
}

/// The first key of the session locks (`pg_advisory_xact_lock(int, int)`): "task" in ASCII,
/// apart from other users of advisory locks in the database (sqlx's migrator uses the
/// one-key `bigint` form, a different space).
const SESSION_LOCK_SPACE: i32 = 0x7461_736b;

/// The second key of a session's lock: FNV-1a of its id, the same in every process and
/// every version. Two sessions that share a key only serialize each other's writes.
fn session_key(session_id: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in session_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

/// Takes the session's lock until the transaction ends (waits for it).
async fn lock_session(conn: &mut PgConnection, session_id: &str) -> Result<(), StoreError> {
    lock_key(conn, session_key(session_id)).await
}

async fn lock_key(conn: &mut PgConnection, key: i32) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(SESSION_LOCK_SPACE)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the session's lock until the transaction ends, if nobody holds it.
async fn try_lock_session(conn: &mut PgConnection, session_id: &str) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(SESSION_LOCK_SPACE)
            .bind(session_key(session_id))
            .fetch_one(conn)
            .await?,
    )
}

/// PostgreSQL's `text` cannot hold U+0000 (SQLite's can): free text written by workers
/// (messages, errors, worker names) gets U+FFFD in its place rather than failing the write.
fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn task_from_row(row: &PgRow) -> Result<Task, StoreError> {
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

fn event_from_row(row: &PgRow) -> Result<TaskEvent, StoreError> {
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
        screenshot: row.try_get::<bool, _>("has_screenshot")?,
    })
}

/// The session of a task (it never changes), to take its lock before the row's.
async fn session_of(conn: &mut PgConnection, id: &str) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT session_id FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

async fn fetch_task(conn: &mut PgConnection, id: &str) -> Result<Option<Task>, StoreError> {
    let row = sqlx::query(concat!("SELECT ", columns!(), " FROM tasks WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(task_from_row).transpose()
}

/// The task, its row locked until the transaction ends: its writes are serialized, so
/// the lease check and the next `seq` hold until the commit.
async fn lock_task(conn: &mut PgConnection, id: &str) -> Result<Option<Task>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM tasks WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(task_from_row).transpose()
}

/// Writes the changeable fields of `task` and returns the row as stored.
async fn save_task(conn: &mut PgConnection, task: &Task) -> Result<Task, StoreError> {
    let row = sqlx::query(concat!(
        "UPDATE tasks SET state = $1, attempts = $2, lease_id = $3, lease_worker = $4, \
         lease_until = $5, result = $6, error = $7, seq = $8, updated_at = $9, \
         finished_at = $10 WHERE id = $11 RETURNING ",
        columns!()
    ))
    .bind(task.state.as_str())
    .bind(i64::from(task.attempts))
    .bind(task.lease.as_ref().map(|l| l.id.as_str()))
    .bind(task.lease.as_ref().map(|l| text(&l.worker)))
    .bind(task.lease.as_ref().map(|l| millis(l.until)))
    .bind(task.result.as_ref().map(|r| r.to_string()))
    .bind(task.error.as_deref().map(text))
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

/// Writes the event of the task's latest change (its `seq` and `state`). The caller holds
/// the session's lock (cursor order) and the task's row (its `seq`).
async fn add_event(
    conn: &mut PgConnection,
    task: &Task,
    at: OffsetDateTime,
    step: Option<u32>,
    message: Option<String>,
    screenshot: Option<&[u8]>,
) -> Result<TaskEvent, StoreError> {
    let message = message.map(|m| text(&truncate(&m, limits::MAX_MESSAGE_CHARS)).into_owned());
    let row = sqlx::query(concat!(
        "INSERT INTO task_events (task_id, session_id, seq, at, state, step, message, \
         has_screenshot) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        event_columns!()
    ))
    .bind(&task.id)
    .bind(&task.session_id)
    .bind(task.seq as i64)
    .bind(millis(at))
    .bind(task.state.as_str())
    .bind(step.map(i64::from))
    .bind(message)
    .bind(screenshot.is_some())
    .fetch_one(&mut *conn)
    .await?;
    if let Some(image) = screenshot {
        sqlx::query("INSERT INTO task_screenshots (task_id, seq, image) VALUES ($1, $2, $3)")
            .bind(&task.id)
            .bind(task.seq as i64)
            .bind(image)
            .execute(&mut *conn)
            .await?;
    }
    event_from_row(&row)
}

async fn record_worker(
    conn: &mut PgConnection,
    worker: &str,
    kinds: Option<&[TaskKind]>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    match kinds {
        Some(kinds) => {
            sqlx::query(
                "INSERT INTO task_workers (worker, kinds, last_seen) VALUES ($1, $2, $3) \
                 ON CONFLICT (worker) DO UPDATE SET kinds = excluded.kinds, \
                 last_seen = GREATEST(task_workers.last_seen, excluded.last_seen) \
                 WHERE task_workers.kinds <> excluded.kinds OR task_workers.last_seen < $4",
            )
            .bind(text(worker))
            .bind(kinds_list(kinds))
            .bind(millis(now))
            .bind(millis(now) - SEEN_GRANULARITY_MS)
            .execute(conn)
            .await?;
        }
        // A heartbeat does not say which kinds the worker serves: keep what it said.
        None => {
            sqlx::query(
                "INSERT INTO task_workers (worker, kinds, last_seen) VALUES ($1, '', $2) \
                 ON CONFLICT (worker) DO UPDATE SET \
                 last_seen = GREATEST(task_workers.last_seen, excluded.last_seen)",
            )
            .bind(text(worker))
            .bind(millis(now))
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

/// Sets `task` to `cancelled` with `reason` and writes the event (session and row locked).
async fn cancel_in(
    conn: &mut PgConnection,
    mut task: Task,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(Task, TaskEvent), StoreError> {
    let reason = cancel_change(&mut task, reason, now);
    let task = save_task(&mut *conn, &task).await?;
    let event = add_event(conn, &task, now, None, Some(reason), None).await?;
    Ok((task, event))
}

/// Claim candidates: queued, of the kinds (`$1`), first open task of its session (no
/// earlier open task, of any kind) in a session with nothing running or waiting, not in
/// a session passed over (`$2`). Oldest first. At most one task per session qualifies.
macro_rules! candidate {
    () => {
        concat!(
            " FROM tasks AS t \
             WHERE t.state = 'queued' \
               AND t.kind = ANY($1) \
               AND t.session_id <> ALL($2) \
               AND NOT EXISTS (SELECT 1 FROM tasks AS e WHERE e.session_id = t.session_id \
                   AND e.state IN ",
            open_states!(),
            " AND e.position < t.position) \
               AND NOT EXISTS (SELECT 1 FROM tasks AS a WHERE a.session_id = t.session_id \
                   AND a.state IN ",
            active_states!(),
            ")"
        )
    };
}

#[async_trait::async_trait]
impl TaskStore for PgTaskStore {
    async fn insert_task(
        &self,
        new: &NewTask,
        max_open: usize,
    ) -> Result<Option<(Task, TaskEvent)>, StoreError> {
        self.in_transaction(async |tx: &mut PgConnection| -> Result<_, StoreError> {
            // Under the session's lock the count stays true until the insert commits (two
            // inserts cannot both see room for one), and the position drawn is after every
            // other task of the session, committed or not.
            lock_session(&mut *tx, &new.session_id).await?;
            let open: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM tasks WHERE session_id = $1 AND state IN ",
                open_states!()
            ))
            .bind(&new.session_id)
            .fetch_one(&mut *tx)
            .await?;
            if usize::try_from(open).unwrap_or(usize::MAX) >= max_open {
                return Ok(None);
            }
            let row = sqlx::query(concat!(
                "INSERT INTO tasks (id, session_id, kind, input, state, attempts, max_attempts, \
                 seq, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'queued', 0, $5, 1, $6, $6) RETURNING ",
                columns!()
            ))
            .bind(&new.id)
            .bind(&new.session_id)
            .bind(new.kind.as_str())
            .bind(new.input.to_string())
            .bind(i64::from(new.max_attempts))
            .bind(millis(new.created_at))
            .fetch_one(&mut *tx)
            .await?;
            let task = task_from_row(&row)?;
            let event = add_event(&mut *tx, &task, new.created_at, None, None, None).await?;
            Ok(Some((task, event)))
        })
        .await
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
                    " FROM tasks WHERE session_id = $1 AND ($2::text IS NULL OR state = $2) \
                     ORDER BY position LIMIT $3"
                ))
                .bind(session_id)
                .bind(state)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM tasks WHERE ($1::text IS NULL OR state = $1) \
                     ORDER BY position DESC LIMIT $2"
                ))
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
            " FROM task_events WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
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
            " FROM task_events WHERE session_id = $1 AND cursor > $2 ORDER BY cursor LIMIT $3"
        ))
        .bind(session_id)
        .bind(i64::try_from(after_cursor).unwrap_or(i64::MAX))
        .bind(clamp_limit(limit, 1000, 10_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn screenshot(&self, task_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let image = sqlx::query_scalar(
            "SELECT image FROM task_screenshots WHERE task_id = $1 AND seq = $2",
        )
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
        let kinds_array: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        self.in_transaction(async |tx: &mut PgConnection| -> Result<_, StoreError> {
            // Sessions passed over: another transaction holds their lock, or their rules no
            // longer held once locked. Each pass excludes one more, so the loop ends.
            let mut passed: Vec<String> = Vec::new();
            let claimed = loop {
                // The oldest candidate, its row locked; rows other claimers locked are skipped
                // rather than waited for (SQLite instead holds the one write lock throughout).
                let row = sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    candidate!(),
                    " ORDER BY t.created_at, t.position LIMIT 1 FOR UPDATE OF t SKIP LOCKED"
                ))
                .bind(&kinds_array)
                .bind(&passed)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    break None;
                };
                let task = task_from_row(&row)?;
                // Never wait for a session's lock while holding a row: pass it over instead.
                if !try_lock_session(&mut *tx, &task.session_id).await? {
                    passed.push(task.session_id);
                    continue;
                }
                // The candidate was chosen from what committed before that statement: under
                // the session's lock, the session's rules are checked again against what has
                // committed since (every write that could break them holds that lock).
                let row = sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    candidate!(),
                    " AND t.id = $3"
                ))
                .bind(&kinds_array)
                .bind(&passed)
                .bind(&task.id)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    Some(row) => break Some(task_from_row(&row)?),
                    None => passed.push(task.session_id),
                }
            };
            let Some(mut task) = claimed else {
                record_worker(&mut *tx, worker, Some(kinds), now).await?;
                return Ok(None);
            };
            let message = claim_change(&mut task, worker, new_lease_id(), lease_until, now);
            let task = save_task(&mut *tx, &task).await?;
            let event = add_event(&mut *tx, &task, now, None, Some(message), None).await?;
            // Last, so the worker's row is locked only briefly (claims of one worker name from
            // several connections queue on it).
            record_worker(&mut *tx, worker, Some(kinds), now).await?;
            let lease = task.lease.clone().ok_or_else(|| {
                StoreError::Corrupt(format!("claimed task {} has no lease", task.id))
            })?;
            Ok(Some(Claimed { task, lease, event }))
        })
        .await
    }

    async fn heartbeat(
        &self,
        task_id: &str,
        lease_id: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Task, WriteError> {
        // No event, no change to the session: the row's lock is enough.
        self.in_transaction(async |tx: &mut PgConnection| -> Result<_, WriteError> {
            let mut task = lock_task(&mut *tx, task_id)
                .await?
                .ok_or(WriteError::NotFound)?;
            if let Some(refused) = lease_refusal(&task, lease_id, now) {
                return Err(refused);
            }
            // A heartbeat never shortens the lease.
            let worker = heartbeat_change(&mut task, until);
            let task = save_task(&mut *tx, &task).await?;
            record_worker(&mut *tx, &worker, None, now).await?;
            Ok(task)
        })
        .await
    }

    async fn transition(
        &self,
        task_id: &str,
        lease_id: &str,
        change: Transition,
        note: EventNote,
        now: OffsetDateTime,
    ) -> Result<(Task, TaskEvent), WriteError> {
        self.in_transaction(async |tx: &mut PgConnection| -> Result<_, WriteError> {
            let session = session_of(&mut *tx, task_id)
                .await?
                .ok_or(WriteError::NotFound)?;
            lock_session(&mut *tx, &session).await?;
            // The lease is checked against the row as it is now, locked: a claim, cancel or
            // expiry that committed first is seen, and none can commit in between.
            let mut task = lock_task(&mut *tx, task_id)
                .await?
                .ok_or(WriteError::NotFound)?;
            if let Some(refused) = lease_refusal(&task, lease_id, now) {
                return Err(refused);
            }
            let parts = transition_change(&mut task, change, note, now)?;
            let task = save_task(&mut *tx, &task).await?;
            let event = add_event(
                &mut *tx,
                &task,
                now,
                parts.step,
                parts.message,
                parts.screenshot.as_deref(),
            )
            .await?;
            Ok((task, event))
        })
        .await
    }

    async fn cancel(
        &self,
        task_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(Task, TaskEvent), WriteError> {
        self.in_transaction(async |tx: &mut PgConnection| -> Result<_, WriteError> {
            let session = session_of(&mut *tx, task_id)
                .await?
                .ok_or(WriteError::NotFound)?;
            lock_session(&mut *tx, &session).await?;
            let task = lock_task(&mut *tx, task_id)
                .await?
                .ok_or(WriteError::NotFound)?;
            if task.state.is_final() {
                return Err(WriteError::WrongState(task.state.as_str()));
            }
            let done = cancel_in(&mut *tx, task, reason, now).await?;
            Ok(done)
        })
        .await
    }

    async fn cancel_session(
        &self,
        session_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<(Task, TaskEvent)>, StoreError> {
        self.in_transaction(async |tx: &mut PgConnection| -> Result<_, StoreError> {
            // No task can be added to the session or claimed in it until this commits.
            lock_session(&mut *tx, session_id).await?;
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM tasks WHERE session_id = $1 AND state IN ",
                open_states!(),
                " ORDER BY position FOR UPDATE"
            ))
            .bind(session_id)
            .fetch_all(&mut *tx)
            .await?;
            let mut done = Vec::with_capacity(rows.len());
            for row in &rows {
                let task = task_from_row(row)?;
                done.push(cancel_in(&mut *tx, task, reason, now).await?);
            }
            Ok(done)
        })
        .await
    }

    async fn expire_leases(&self, now: OffsetDateTime) -> Result<Vec<ExpiredLease>, StoreError> {
        // Most sweeps find nothing: look without any lock first.
        let sessions: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT DISTINCT session_id FROM tasks WHERE state IN ",
            active_states!(),
            " AND lease_until < $1"
        ))
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await?;
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        self.in_transaction(async |tx: &mut PgConnection| -> Result<_, StoreError> {
            // The sessions' locks in key order, the one order every transaction that takes
            // more than one of them uses (sweepers of other processes), then the rows.
            let mut keys: Vec<i32> = sessions.iter().map(|s| session_key(s)).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                lock_key(&mut *tx, key).await?;
            }
            // Read again under the locks: another sweeper, a heartbeat or the holder's last
            // write may have come first. Only the sessions locked: one whose lease ran out
            // since is the next sweep's.
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM tasks WHERE state IN ",
                active_states!(),
                " AND lease_until < $1 AND session_id = ANY($2) ORDER BY position FOR UPDATE"
            ))
            .bind(millis(now))
            .bind(&sessions)
            .fetch_all(&mut *tx)
            .await?;
            let mut expired = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut task = task_from_row(row)?;
                let message = expire_change(&mut task, now);
                let task = save_task(&mut *tx, &task).await?;
                let event = add_event(&mut *tx, &task, now, None, Some(message), None).await?;
                expired.push(ExpiredLease { task, event });
            }
            Ok(expired)
        })
        .await
    }

    async fn stats(&self, now: OffsetDateTime) -> Result<Vec<(TaskKind, KindStats)>, StoreError> {
        let mut stats: Vec<(TaskKind, KindStats)> = TaskKind::ALL
            .iter()
            .map(|&k| (k, KindStats::default()))
            .collect();
        let rows = sqlx::query(concat!(
            "SELECT kind, state, COUNT(*) AS n, MIN(created_at) AS oldest, \
             SUM(CASE WHEN lease_until < $1 THEN 1 ELSE 0 END) AS stalled \
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
            "SELECT worker, kinds, last_seen FROM task_workers WHERE last_seen >= $1 \
             ORDER BY last_seen DESC, worker COLLATE \"C\"",
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
    use crate::store::tests::{insert, t0};

    async fn open_store() -> PgTaskStore {
        PgTaskStore::connect(&livesession_pgtest::database())
            .await
            .unwrap()
    }

    fn sqlstate(e: sqlx::Error) -> String {
        e.as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned())
            .unwrap_or_else(|| panic!("not a database error: {e}"))
    }

    #[tokio::test]
    async fn migrations_are_recorded_apart_from_the_session_stores() {
        let url = livesession_pgtest::database();
        let store = PgTaskStore::connect(&url).await.unwrap();
        let task = insert(&store, "s1", TaskKind::Agent, t0()).await;
        // A second store on the same pool (as the gateway shares it) migrates nothing new.
        let again = PgTaskStore::new(store.pool().clone()).await.unwrap();
        assert_eq!(again.get_task(&task.id).await.unwrap(), Some(task.clone()));
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _tasks_migrations")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(applied, 1);
        let default_table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(
            default_table, None,
            "the session store's table is left to it"
        );
        drop((store, again));
        let reopened = PgTaskStore::connect(&url).await.unwrap();
        assert_eq!(reopened.get_task(&task.id).await.unwrap(), Some(task));
    }

    #[tokio::test]
    async fn connections_and_transactions_carry_the_timeouts() {
        let store = open_store().await;
        let (lock, statement): (String, String) = sqlx::query_as(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!((lock.as_str(), statement.as_str()), ("5s", "10s"));
        // On a pool without them (the session store's), each transaction sets its own.
        let bare = PgPoolOptions::new()
            .max_connections(1)
            .connect(&livesession_pgtest::database())
            .await
            .unwrap();
        let bare = PgTaskStore::new(bare).await.unwrap();
        let mut tx = bare.begin().await.unwrap();
        let (lock, statement): (String, String) = sqlx::query_as(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!((lock.as_str(), statement.as_str()), ("5s", "10s"));
        tx.rollback().await.unwrap();
        let lock: String = sqlx::query_scalar("SELECT current_setting('lock_timeout')")
            .fetch_one(bare.pool())
            .await
            .unwrap();
        assert_eq!(lock, "0", "SET LOCAL ends with the transaction");
    }

    #[tokio::test]
    async fn a_refused_write_lets_go_of_the_session_at_once() {
        let store = open_store().await;
        let task = insert(&store, "s1", TaskKind::Steps, t0()).await;
        store.cancel(&task.id, "no", t0()).await.unwrap();
        assert!(matches!(
            store.cancel(&task.id, "again", t0()).await,
            Err(WriteError::WrongState("cancelled"))
        ));
        // Rolled back before the call returned, not when its connection is next used: the
        // session's lock is free for any other connection now.
        let mut tx = store.pool().begin().await.unwrap();
        assert!(try_lock_session(&mut tx, "s1").await.unwrap());
        tx.rollback().await.unwrap();
        let next = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let c = store
            .claim(
                &TaskKind::ALL,
                "w1",
                t0() + time::Duration::seconds(30),
                t0(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.task.id, next.id);
    }

    #[tokio::test]
    async fn the_database_enforces_what_must_be_unique() {
        let store = open_store().await;
        let a = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let b = insert(&store, "s1", TaskKind::Steps, t0()).await;
        let c = store
            .claim(
                &TaskKind::ALL,
                "w1",
                t0() + time::Duration::seconds(30),
                t0(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.task.id, a.id);
        // A second running task in the session, behind the store's back.
        let err = sqlx::query("UPDATE tasks SET state = 'running' WHERE id = $1")
            .bind(&b.id)
            .execute(store.pool())
            .await
            .unwrap_err();
        assert_eq!(sqlstate(err), "23505");
        // A second event with a seq the task already has.
        let err = sqlx::query(
            "INSERT INTO task_events (task_id, session_id, seq, at, state) \
             VALUES ($1, 's1', 2, 0, 'running')",
        )
        .bind(&a.id)
        .execute(store.pool())
        .await
        .unwrap_err();
        assert_eq!(sqlstate(err), "23505");
        // A lease on a queued task.
        let err = sqlx::query(
            "UPDATE tasks SET lease_id = 'l', lease_worker = 'w', lease_until = 0 WHERE id = $1",
        )
        .bind(&b.id)
        .execute(store.pool())
        .await
        .unwrap_err();
        assert_eq!(sqlstate(err), "23514");
    }

    #[tokio::test]
    async fn nul_characters_in_free_text_are_replaced() {
        let store = open_store().await;
        let task = insert(&store, "s1", TaskKind::Agent, t0()).await;
        let c = store
            .claim(
                &TaskKind::ALL,
                "w\0x",
                t0() + time::Duration::seconds(30),
                t0(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.lease.worker, "w\u{fffd}x");
        assert_eq!(
            c.event.message.as_deref(),
            Some("claimed by w\u{fffd}x, attempt 1 of 3")
        );
        let (_, event) = store
            .transition(
                &task.id,
                &c.lease.id,
                Transition::Progress,
                EventNote::message("a\0b"),
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(event.message.as_deref(), Some("a\u{fffd}b"));
        let (failed, _) = store
            .transition(
                &task.id,
                &c.lease.id,
                Transition::Fail("bad\0".into()),
                EventNote::default(),
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(failed.error.as_deref(), Some("bad\u{fffd}"));
        // JSON keeps it escaped.
        let input = serde_json::json!({"goal": "a\u{0}b"});
        let new = NewTask {
            id: crate::model::new_task_id(),
            session_id: "s2".into(),
            kind: TaskKind::Agent,
            input: input.clone(),
            max_attempts: 1,
            created_at: t0(),
        };
        let (task, _) = store.insert_task(&new, 5).await.unwrap().unwrap();
        assert_eq!(task.input, input);
    }
}
