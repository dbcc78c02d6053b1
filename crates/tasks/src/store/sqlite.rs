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

/// The SQLite backend of [`TaskStore`].
#[derive(Clone)]
pub struct SqliteTaskStore {
    pool: SqlitePool,
}

impl SqliteTaskStore {
    /// The largest screenshot stored with an event; a larger one is dropped (the event is
    /// written without it, and its message says so).
    pub const MAX_SCREENSHOT_BYTES: usize = super::common::MAX_SCREENSHOT_BYTES;

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
    let reason = cancel_change(&mut task, reason, now);
    let task = save_task(&mut *conn, &task).await?;
    let event = add_event(conn, &task, now, None, Some(reason), None).await?;
    Ok((task, event))
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
        // SQLite holds the write lock already; PostgreSQL selects the candidate with
        // `FOR UPDATE SKIP LOCKED` and re-checks the session conditions under a
        // per-session advisory lock, so claimers skip each other's rows instead of
        // waiting (postgres.rs).
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
        let message = claim_change(&mut task, worker, new_lease_id(), lease_until, now);
        let task = save_task(&mut tx, &task).await?;
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
        // A heartbeat never shortens the lease.
        let worker = heartbeat_change(&mut task, until);
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
        let parts = transition_change(&mut task, change, note, now)?;
        let task = save_task(&mut tx, &task).await?;
        let event = add_event(
            &mut tx,
            &task,
            now,
            parts.step,
            parts.message,
            parts.screenshot.as_deref(),
        )
        .await?;
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
            let message = expire_change(&mut task, now);
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
    use crate::store::tests::{insert, t0};

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
}
