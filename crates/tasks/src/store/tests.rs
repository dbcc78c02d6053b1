//! The task store suite, run against both backends: every test body takes a [`Backend`]
//! and is instantiated once per backend by [`suite!`] (`store::tests::sqlite::<name>` and
//! `store::tests::postgres::<name>`). PostgreSQL is a real server
//! ([`livesession_pgtest::database`]), with a fresh database per store: nothing is skipped.
//!
//! Backend-specific tests live with their backend (migrations; PostgreSQL's constraints).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tempfile::TempDir;
use time::OffsetDateTime;

use super::{
    Claimed, KindStats, MAX_SCREENSHOT_BYTES, PgTaskStore, SqliteTaskStore, TaskFilter, TaskStore,
    Transition, WorkerSeen, WriteError,
};
use crate::model::{EventNote, NewTask, Task, TaskKind, TaskState, limits, new_task_id};

/// Where a test's stores live: a backend, and the databases it made for the test.
pub(super) struct Backend {
    postgres: bool,
    dirs: Mutex<Vec<TempDir>>,
    /// The latest database: a SQLite file or a PostgreSQL URL.
    last: Mutex<Option<(PathBuf, String)>>,
}

impl Backend {
    pub(super) fn sqlite() -> Self {
        Self {
            postgres: false,
            dirs: Mutex::new(Vec::new()),
            last: Mutex::new(None),
        }
    }

    pub(super) fn postgres() -> Self {
        Self {
            postgres: true,
            ..Self::sqlite()
        }
    }

    /// A store on a new, empty database.
    pub(super) async fn store(&self) -> Arc<dyn TaskStore> {
        if self.postgres {
            let url = livesession_pgtest::database();
            *self.last.lock().unwrap() = Some((PathBuf::new(), url.clone()));
            Arc::new(PgTaskStore::connect(&url).await.unwrap())
        } else {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("livesession.db");
            self.dirs.lock().unwrap().push(dir);
            *self.last.lock().unwrap() = Some((path.clone(), String::new()));
            Arc::new(SqliteTaskStore::open(&path).await.unwrap())
        }
    }

    /// Another store, on its own pool, on the database of the latest [`Backend::store`]:
    /// what another process of the gateway would have.
    pub(super) async fn peer(&self) -> Arc<dyn TaskStore> {
        let (path, url) = self.last.lock().unwrap().clone().expect("a store first");
        if self.postgres {
            Arc::new(PgTaskStore::connect(&url).await.unwrap())
        } else {
            Arc::new(SqliteTaskStore::open(&path).await.unwrap())
        }
    }
}

/// Instantiates each backend-generic test body for SQLite and PostgreSQL.
macro_rules! suite {
    ($($(($($arg:tt)*))? $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test$(($($arg)*))?]
                async fn $name() {
                    super::$name(&super::Backend::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test$(($($arg)*))?]
                async fn $name() {
                    super::$name(&super::Backend::postgres()).await;
                }
            )*
        }
    };
}

suite! {
    a_task_round_trips_with_its_events_in_order,
    a_claim_takes_the_oldest_task_that_is_first_in_a_free_session,
    tasks_with_the_same_timestamp_keep_their_insertion_order,
    a_lost_lease_queues_the_task_again_then_fails_it,
    a_write_with_the_lease_before_a_new_claim_is_refused,
    waiting_resuming_and_heartbeats_check_state_and_lease,
    cancelling_queued_running_and_finished_tasks,
    cancelling_a_session_cancels_its_open_tasks_only,
    stats_count_each_kind,
    session_events_resume_after_a_cursor,
    a_session_holds_at_most_max_open_tasks,
    results_messages_and_screenshots_are_bounded,
    listings_and_workers,
    times_keep_their_milliseconds,
    (flavor = "multi_thread", worker_threads = 4)
    concurrent_claimers_run_each_task_once_in_session_order,
    (flavor = "multi_thread", worker_threads = 4)
    concurrent_claims_never_share_a_task,
    (flavor = "multi_thread", worker_threads = 4)
    concurrent_writes_keep_a_tasks_seq_gapless,
    (flavor = "multi_thread", worker_threads = 4)
    concurrent_inserts_keep_the_session_cap,
}

/// A fixed, whole-millisecond time, so stored times compare equal.
pub(super) fn t0() -> OffsetDateTime {
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

pub(super) async fn insert(
    store: &dyn TaskStore,
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

async fn claim(store: &dyn TaskStore, kinds: &[TaskKind], now: OffsetDateTime) -> Option<Claimed> {
    store.claim(kinds, "w1", now + secs(30), now).await.unwrap()
}

const ALL: &[TaskKind] = &TaskKind::ALL;

async fn a_task_round_trips_with_its_events_in_order(backend: &Backend) {
    let store = backend.store().await;
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
    let claimed = claim(&*store, ALL, now).await.unwrap();
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

async fn a_claim_takes_the_oldest_task_that_is_first_in_a_free_session(backend: &Backend) {
    let store = backend.store().await;
    let a = insert(&*store, "s1", TaskKind::Steps, t0()).await;
    let b = insert(&*store, "s1", TaskKind::Agent, t0() + secs(1)).await;
    let c = insert(&*store, "s2", TaskKind::Steps, t0() + secs(2)).await;
    // s3: an agent task first, so its steps task waits even for a steps-only worker.
    let x = insert(&*store, "s3", TaskKind::Agent, t0() + secs(3)).await;
    let y = insert(&*store, "s3", TaskKind::Steps, t0() + secs(4)).await;
    let now = t0() + secs(10);

    assert_eq!(
        claim(&*store, &[TaskKind::Steps], now)
            .await
            .unwrap()
            .task
            .id,
        a.id
    );
    // s1 is busy with a: b waits though it is older than c.
    assert_eq!(claim(&*store, ALL, now).await.unwrap().task.id, c.id);
    // s3's steps task y is behind the agent task x.
    assert!(claim(&*store, &[TaskKind::Steps], now).await.is_none());
    assert_eq!(
        claim(&*store, &[TaskKind::Agent], now)
            .await
            .unwrap()
            .task
            .id,
        x.id
    );
    assert!(claim(&*store, ALL, now).await.is_none());
    assert!(claim(&*store, &[], now).await.is_none());

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
        claim(&*store, &[TaskKind::Steps], now).await.is_none(),
        "b is an agent task"
    );
    assert_eq!(
        claim(&*store, &[TaskKind::Agent], now)
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
        claim(&*store, &[TaskKind::Steps], now)
            .await
            .unwrap()
            .task
            .id,
        y.id
    );
}

async fn tasks_with_the_same_timestamp_keep_their_insertion_order(backend: &Backend) {
    let store = backend.store().await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let kind = if i % 3 == 0 {
            TaskKind::Agent
        } else {
            TaskKind::Steps
        };
        ids.push(insert(&*store, "s1", kind, t0()).await.id);
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
    while let Some(c) = claim(&*store, ALL, t0()).await {
        assert!(
            claim(&*store, ALL, t0()).await.is_none(),
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

async fn a_lost_lease_queues_the_task_again_then_fails_it(backend: &Backend) {
    let store = backend.store().await;
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
    assert!(claim(&*store, ALL, t0() + secs(100)).await.is_none());
}

async fn a_write_with_the_lease_before_a_new_claim_is_refused(backend: &Backend) {
    let store = backend.store().await;
    let task = insert(&*store, "s1", TaskKind::Agent, t0()).await;
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

async fn waiting_resuming_and_heartbeats_check_state_and_lease(backend: &Backend) {
    let store = backend.store().await;
    let task = insert(&*store, "s1", TaskKind::Agent, t0()).await;
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

async fn cancelling_queued_running_and_finished_tasks(backend: &Backend) {
    let store = backend.store().await;
    let running = insert(&*store, "s1", TaskKind::Steps, t0()).await;
    let queued = insert(&*store, "s2", TaskKind::Steps, t0()).await;
    let c = claim(&*store, &[TaskKind::Steps], t0()).await.unwrap();
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
    assert!(claim(&*store, ALL, now).await.is_none());
}

async fn cancelling_a_session_cancels_its_open_tasks_only(backend: &Backend) {
    let store = backend.store().await;
    let done = insert(&*store, "s1", TaskKind::Steps, t0()).await;
    let c = claim(&*store, ALL, t0()).await.unwrap();
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
    let running = insert(&*store, "s1", TaskKind::Agent, t0()).await;
    claim(&*store, ALL, t0()).await.unwrap();
    let q1 = insert(&*store, "s1", TaskKind::Steps, t0()).await;
    let q2 = insert(&*store, "s1", TaskKind::Agent, t0()).await;
    let other = insert(&*store, "s2", TaskKind::Steps, t0()).await;

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

async fn stats_count_each_kind(backend: &Backend) {
    let store = backend.store().await;
    insert(&*store, "s1", TaskKind::Steps, t0()).await;
    insert(&*store, "s1", TaskKind::Steps, t0() + secs(1)).await;
    insert(&*store, "s2", TaskKind::Steps, t0() + secs(2)).await;
    insert(&*store, "s3", TaskKind::Agent, t0() + secs(3)).await;
    insert(&*store, "s4", TaskKind::Agent, t0() + secs(4)).await;
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
    let empty = backend.store().await;
    let zero = empty.stats(now).await.unwrap();
    assert_eq!(
        zero,
        vec![
            (TaskKind::Steps, KindStats::default()),
            (TaskKind::Agent, KindStats::default())
        ]
    );
}

async fn session_events_resume_after_a_cursor(backend: &Backend) {
    let store = backend.store().await;
    let a = insert(&*store, "s1", TaskKind::Steps, t0()).await;
    insert(&*store, "s2", TaskKind::Steps, t0()).await;
    let c = claim(&*store, &[TaskKind::Steps], t0()).await.unwrap();
    assert_eq!(c.task.id, a.id);
    let b = insert(&*store, "s1", TaskKind::Agent, t0()).await;
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
    insert(&*store, "s2", TaskKind::Agent, t0()).await;
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

async fn a_session_holds_at_most_max_open_tasks(backend: &Backend) {
    let store = backend.store().await;
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
    let c = claim(&*store, ALL, t0()).await.unwrap();
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

async fn results_messages_and_screenshots_are_bounded(backend: &Backend) {
    let store = backend.store().await;
    let task = insert(&*store, "s1", TaskKind::Steps, t0()).await;
    let c = claim(&*store, ALL, t0()).await.unwrap();
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

    let big = vec![0u8; MAX_SCREENSHOT_BYTES + 1];
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
    let task = insert(&*store, "s2", TaskKind::Steps, t0()).await;
    let c = claim(&*store, ALL, t0()).await.unwrap();
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
    let task = insert(&*store, "s3", TaskKind::Steps, t0()).await;
    let c = claim(&*store, ALL, t0()).await.unwrap();
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

async fn listings_and_workers(backend: &Backend) {
    let store = backend.store().await;
    let a = insert(&*store, "s1", TaskKind::Steps, t0()).await;
    let b = insert(&*store, "s2", TaskKind::Steps, t0() + secs(1)).await;
    let c = insert(&*store, "s1", TaskKind::Agent, t0() + secs(2)).await;
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

async fn times_keep_their_milliseconds(backend: &Backend) {
    let store = backend.store().await;
    // Stored as whole milliseconds since the epoch: what is below is dropped.
    let at = t0() + time::Duration::nanoseconds(1_234_567_891);
    let ms = t0() + time::Duration::milliseconds(1_234);
    let (task, event) = store
        .insert_task(&new_task("s1", TaskKind::Steps, at), 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((task.created_at, task.updated_at, event.at), (ms, ms, ms));
    let c = store
        .claim(ALL, "w1", at + secs(30), at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.lease.until, ms + secs(30));
    assert_eq!(c.task.updated_at, ms);
    assert_eq!(
        store.get_task(&task.id).await.unwrap(),
        Some(c.task.clone())
    );
    // The lease holds through its last millisecond.
    let last = ms + secs(30) + time::Duration::nanoseconds(999_999);
    store
        .transition(
            &task.id,
            &c.lease.id,
            Transition::Progress,
            EventNote::default(),
            last,
        )
        .await
        .unwrap();
    let err = store
        .transition(
            &task.id,
            &c.lease.id,
            Transition::Progress,
            EventNote::default(),
            ms + secs(30) + time::Duration::milliseconds(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WriteError::LeaseLost(r) if r == ": it ran out"),
        "{err:?}"
    );
    let seen = store.workers_seen_since(ms).await.unwrap();
    assert_eq!(
        seen.iter()
            .map(|w| (w.worker.as_str(), w.last_seen))
            .collect::<Vec<_>>(),
        vec![("w1", ms)]
    );
    assert!(
        store
            .workers_seen_since(ms + time::Duration::milliseconds(1))
            .await
            .unwrap()
            .is_empty()
    );
    let expired = store.expire_leases(last).await.unwrap();
    assert!(
        expired.is_empty(),
        "not before the lease's last millisecond"
    );
    let expired = store
        .expire_leases(ms + secs(30) + time::Duration::milliseconds(1))
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        expired[0].task.updated_at,
        ms + secs(30) + time::Duration::milliseconds(1)
    );
}

/// `n` stores on the latest database, each on its own pool with a connection open, so
/// that what they do next starts together.
async fn warm_peers(backend: &Backend, n: usize) -> Vec<Arc<dyn TaskStore>> {
    let mut peers = Vec::new();
    for _ in 0..n {
        let peer = backend.peer().await;
        peer.get_task("t_warm").await.unwrap();
        peers.push(peer);
    }
    peers
}

/// Fails the test if `f` takes longer than a minute (a lock waited for ever, say).
async fn within_a_minute<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), f)
        .await
        .expect("finished within a minute")
}

async fn concurrent_claimers_run_each_task_once_in_session_order(backend: &Backend) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let store = backend.store().await;
    let sessions = ["s0", "s1", "s2", "s3", "s4"];
    let mut created: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..20usize {
        let session = sessions[(i * 3 + i / 5) % 5];
        let kind = if i % 2 == 0 {
            TaskKind::Steps
        } else {
            TaskKind::Agent
        };
        // Four tasks per millisecond: insertion order breaks the ties.
        let at = t0() + time::Duration::milliseconds((i / 4) as i64);
        let task = insert(&*store, session, kind, at).await;
        created.entry(session.to_owned()).or_default().push(task.id);
    }

    let busy = Arc::new(Mutex::new(HashSet::<String>::new()));
    let ran = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut claimers = Vec::new();
    // Each claimer on its own pool, as another process would be.
    for (w, store) in warm_peers(backend, 8).await.into_iter().enumerate() {
        let (busy, ran, done, start) = (busy.clone(), ran.clone(), done.clone(), start.clone());
        claimers.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            start.wait().await;
            let mut mine = 0usize;
            while done.load(Ordering::SeqCst) < 20 {
                let claimed = store
                    .claim(ALL, &worker, t0() + secs(300), t0())
                    .await
                    .unwrap();
                let Some(c) = claimed else {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    continue;
                };
                let session = c.task.session_id.clone();
                assert!(
                    busy.lock().unwrap().insert(session.clone()),
                    "two tasks running at once in {session}"
                );
                ran.lock()
                    .unwrap()
                    .push((session.clone(), c.task.id.clone()));
                assert_eq!(c.task.attempts, 1, "claimed once");
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                // Let go of the session before the success commits: the store keeps the
                // session busy until then, so nobody can take its next task in between.
                busy.lock().unwrap().remove(&session);
                store
                    .transition(
                        &c.task.id,
                        &c.lease.id,
                        Transition::Succeed(json!(worker)),
                        EventNote::default(),
                        t0(),
                    )
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::SeqCst);
                mine += 1;
            }
            mine
        }));
    }
    let mut total = 0;
    for claimer in claimers {
        total += within_a_minute(claimer).await.unwrap();
    }
    assert_eq!(total, 20);

    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.len(), 20);
    let unique: HashSet<&str> = ran.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(unique.len(), 20, "every task claimed exactly once");
    for (session, ids) in &created {
        let order: Vec<&String> = ran
            .iter()
            .filter(|(s, _)| s == session)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(order, ids.iter().collect::<Vec<_>>(), "{session} in order");
        // The session's events, in cursor order, tell the same story.
        let events = store.session_events(session, 0, 0).await.unwrap();
        assert!(events.windows(2).all(|w| w[0].cursor < w[1].cursor));
        let runs: Vec<(&str, TaskState)> = events
            .iter()
            .filter(|e| e.state != TaskState::Queued)
            .map(|e| (e.task_id.as_str(), e.state))
            .collect();
        let expected: Vec<(&str, TaskState)> = ids
            .iter()
            .flat_map(|id| {
                [
                    (id.as_str(), TaskState::Running),
                    (id.as_str(), TaskState::Succeeded),
                ]
            })
            .collect();
        assert_eq!(runs, expected);
        for id in ids {
            let task = store.get_task(id).await.unwrap().unwrap();
            assert_eq!(
                (task.state, task.attempts, task.seq),
                (TaskState::Succeeded, 1, 3)
            );
            let seqs: Vec<u64> = store
                .task_events(id, 0, 0)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(seqs, vec![1, 2, 3]);
        }
    }
    assert!(claim(&*store, ALL, t0()).await.is_none());
}

async fn concurrent_claims_never_share_a_task(backend: &Backend) {
    let store = backend.store().await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        let kind = if i % 3 == 0 {
            TaskKind::Agent
        } else {
            TaskKind::Steps
        };
        ids.insert(insert(&*store, &format!("s{i}"), kind, t0()).await.id);
    }
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut claimers = Vec::new();
    for (w, store) in warm_peers(backend, 8).await.into_iter().enumerate() {
        let start = start.clone();
        claimers.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut mine = Vec::new();
            start.wait().await;
            while let Some(c) = store
                .claim(ALL, &worker, t0() + secs(30), t0())
                .await
                .unwrap()
            {
                assert_eq!(c.lease.worker, worker);
                mine.push(c);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(within_a_minute(claimer).await.unwrap());
    }
    let got: HashSet<String> = claimed.iter().map(|c| c.task.id.clone()).collect();
    assert_eq!(claimed.len(), 20, "no task claimed twice");
    assert_eq!(got, ids, "every task claimed");
    assert!(claim(&*store, ALL, t0()).await.is_none());
    for c in &claimed {
        let task = store.get_task(&c.task.id).await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Running);
        assert_eq!(task.attempts, 1);
        assert_eq!(
            task.lease.as_ref(),
            Some(&c.lease),
            "the lease of its one claim"
        );
    }
}

async fn concurrent_writes_keep_a_tasks_seq_gapless(backend: &Backend) {
    let store = backend.store().await;
    let task = insert(&*store, "s1", TaskKind::Agent, t0()).await;
    let c = claim(&*store, ALL, t0()).await.unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut writers = Vec::new();
    for (w, store) in warm_peers(backend, 8).await.into_iter().enumerate() {
        let (id, lease, start) = (task.id.clone(), c.lease.id.clone(), start.clone());
        writers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            start.wait().await;
            for i in 0..10 {
                let (_, event) = store
                    .transition(
                        &id,
                        &lease,
                        Transition::Progress,
                        EventNote::message(format!("writer {w}, note {i}")),
                        t0(),
                    )
                    .await
                    .unwrap();
                seqs.push(event.seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for writer in writers {
        seqs.extend(within_a_minute(writer).await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (3..=82).collect::<Vec<u64>>());
    let events = store.task_events(&task.id, 0, 0).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=82).collect::<Vec<u64>>()
    );
    assert!(
        events.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "cursor order is seq order"
    );
    assert_eq!(store.get_task(&task.id).await.unwrap().unwrap().seq, 82);
}

async fn concurrent_inserts_keep_the_session_cap(backend: &Backend) {
    let store = backend.store().await;
    // Eight stores with a connection each, ready before the race starts.
    let peers = warm_peers(backend, 8).await;
    for round in 0..10 {
        let session = format!("s{round}");
        let start = Arc::new(tokio::sync::Barrier::new(peers.len()));
        let mut inserters = Vec::new();
        for peer in &peers {
            let (peer, start, session) = (peer.clone(), start.clone(), session.clone());
            inserters.push(tokio::spawn(async move {
                start.wait().await;
                peer.insert_task(&new_task(&session, TaskKind::Steps, t0()), 3)
                    .await
                    .unwrap()
                    .is_some()
            }));
        }
        let mut added = 0;
        for inserter in inserters {
            added += usize::from(within_a_minute(inserter).await.unwrap());
        }
        assert_eq!(added, 3, "{session}");
        let tasks = store
            .list_tasks(&TaskFilter {
                session_id: Some(session.clone()),
                ..TaskFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(tasks.len(), 3, "{session}");
    }
}
