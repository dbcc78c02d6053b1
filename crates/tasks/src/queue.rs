//! The queue: creating tasks, claiming them with a lease (long poll), the lease holder's
//! writes, cancelling, the lease sweeper, and live events per session.
//!
//! The store is the truth; this adds what lives in one process: waking claimers when a
//! task may have become claimable, a broadcast of every event it writes per session, and a
//! stop token per task so a runner in this process stops at once when its task is
//! cancelled, finished or loses its lease.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::model::{self, EventNote, NewTask, Task, TaskEvent, TaskInput, TaskKind, TaskState, limits};
use crate::store::{self, StoreError, TaskStore, Transition, WriteError};

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a claim or a heartbeat holds a task.
    pub lease: Duration,
    /// Claims a task gets before a lost worker fails it.
    pub max_attempts: u32,
    /// How often the sweeper looks for leases that ran out.
    pub sweep_every: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_attempts: 3,
            sweep_every: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the session already has {0} tasks queued or running; wait for one to finish")]
    SessionFull(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Events buffered per session for a slow subscriber before it lags.
const EVENTS_BUFFER: usize = 256;
/// A waiting claimer looks again this often even if nobody woke it.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Maps are pruned of unused entries once they hold more than this.
const PRUNE_ABOVE: usize = 1024;
/// A fired stop token is kept this long, so a runner that asks for it just after the
/// task stopped still sees it fired.
const KEEP_FIRED: Duration = Duration::from_secs(60);

struct Stop {
    token: CancellationToken,
    fired_at: Option<Instant>,
}

pub struct TaskQueue {
    store: Arc<dyn TaskStore>,
    config: QueueConfig,
    sessions: Mutex<HashMap<String, broadcast::Sender<TaskEvent>>>,
    stops: Mutex<HashMap<String, Stop>>,
    wake: Notify,
    /// Held across each write and the publishing of its events, so subscribers receive
    /// events in cursor order (the store serializes writes anyway).
    write_order: tokio::sync::Mutex<()>,
    /// Told of every event this queue writes, to tell other servers sharing the store
    /// ([`TaskQueue::set_on_publish`]).
    on_publish: std::sync::OnceLock<Box<dyn Fn(&TaskEvent) + Send + Sync>>,
    /// Bumped when followers must read the store again: events written elsewhere may
    /// have been missed ([`TaskQueue::ask_followers_to_reread`]).
    reread: tokio::sync::watch::Sender<u64>,
}

impl TaskQueue {
    pub fn new(store: Arc<dyn TaskStore>, config: QueueConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            config,
            sessions: Mutex::new(HashMap::new()),
            stops: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            write_order: tokio::sync::Mutex::new(()),
            on_publish: std::sync::OnceLock::new(),
            reread: tokio::sync::watch::channel(0).0,
        })
    }

    /// Tells every follower of task events to read the store again (another server's
    /// announcements may have been lost while the server did not listen).
    pub fn ask_followers_to_reread(&self) {
        self.reread.send_modify(|n| *n += 1);
    }

    /// Changes whenever followers must read the store again.
    pub fn rereads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reread.subscribe()
    }

    /// Calls `hook` with every event this queue writes (the server sends it on to the
    /// other servers sharing the store). Set once.
    pub fn set_on_publish(&self, hook: Box<dyn Fn(&TaskEvent) + Send + Sync>) {
        let _ = self.on_publish.set(hook);
    }

    /// Another server wrote the event `cursor` of one of `session_id`'s tasks: it is read
    /// from the store and published here, as if this queue had written it, so live
    /// followers here read on (they read the store after their last cursor), claimers
    /// wake for a new task, and a run here stops when its task ended there.
    pub async fn publish_written_elsewhere(&self, session_id: &str, cursor: u64) -> Result<(), StoreError> {
        let page = self.store.session_events(session_id, cursor.saturating_sub(1), 1).await?;
        for event in page.into_iter().filter(|e| e.cursor == cursor) {
            let (task_id, state) = (event.task_id.clone(), event.state);
            self.deliver(event);
            match state {
                TaskState::Queued => self.wake_claimers(),
                s if s.is_final() => self.fire(&task_id),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Creates a queued task (at most [`limits::MAX_OPEN_PER_SESSION`] open per session),
    /// publishes its first event, wakes claimers.
    pub async fn create(&self, session_id: &str, input: &TaskInput) -> Result<Task, CreateError> {
        let new = NewTask {
            id: model::new_task_id(),
            session_id: session_id.to_owned(),
            kind: input.kind(),
            input: input.to_value(),
            max_attempts: self.config.max_attempts.max(1),
            created_at: OffsetDateTime::now_utc(),
        };
        let _order = self.write_order.lock().await;
        let Some((task, event)) = self
            .store
            .insert_task(&new, limits::MAX_OPEN_PER_SESSION)
            .await?
        else {
            return Err(CreateError::SessionFull(limits::MAX_OPEN_PER_SESSION));
        };
        self.publish(event);
        self.wake_claimers();
        Ok(task)
    }

    /// Long poll: claims a task of `kinds` for `worker`, waiting up to `wait` for one
    /// (woken when a task is queued, a task finishes or is cancelled, or a lease runs
    /// out; and looking again every second regardless), or until `stop` is cancelled.
    /// The lease lasts `config.lease`. Publishes the claim's event.
    pub async fn claim(
        &self,
        kinds: &[TaskKind],
        worker: &str,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<store::Claimed>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            // Registered before looking, so a wake-up between the look and the wait counts.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();

            let order = self.write_order.lock().await;
            let now = OffsetDateTime::now_utc();
            let claimed = self
                .store
                .claim(kinds, worker, now + self.config.lease, now)
                .await?;
            if let Some(claimed) = claimed {
                self.new_stop_token(&claimed.task.id);
                self.publish(claimed.event.clone());
                return Ok(Some(claimed));
            }
            drop(order);
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let next = (now + RECHECK_EVERY).min(deadline);
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.cancelled() => return Ok(None),
            }
        }
    }

    /// Extends the lease by `config.lease` from now.
    pub async fn heartbeat(&self, task_id: &str, lease_id: &str) -> Result<Task, WriteError> {
        let now = OffsetDateTime::now_utc();
        self.store
            .heartbeat(task_id, lease_id, now + self.config.lease, now)
            .await
    }

    /// A change by the lease holder. Publishes the event; a final state wakes claimers
    /// (the session's next task may run) and fires the task's stop token.
    pub async fn update(
        &self,
        task_id: &str,
        lease_id: &str,
        change: Transition,
        note: EventNote,
    ) -> Result<Task, WriteError> {
        let _order = self.write_order.lock().await;
        let now = OffsetDateTime::now_utc();
        let (task, event) = self
            .store
            .transition(task_id, lease_id, change, note, now)
            .await?;
        self.publish(event);
        if task.state.is_final() {
            self.fire(&task.id);
            self.wake_claimers();
        }
        Ok(task)
    }

    /// Cancels a task that is not final. Publishes the event, fires its stop token, wakes
    /// claimers.
    pub async fn cancel(&self, task_id: &str, reason: &str) -> Result<Task, WriteError> {
        let _order = self.write_order.lock().await;
        let (task, event) = self
            .store
            .cancel(task_id, reason, OffsetDateTime::now_utc())
            .await?;
        self.publish(event);
        self.fire(&task.id);
        self.wake_claimers();
        Ok(task)
    }

    /// Cancels every open task of a session; returns how many.
    pub async fn cancel_session(
        &self,
        session_id: &str,
        reason: &str,
    ) -> Result<usize, StoreError> {
        let _order = self.write_order.lock().await;
        let cancelled = self
            .store
            .cancel_session(session_id, reason, OffsetDateTime::now_utc())
            .await?;
        let n = cancelled.len();
        for (task, event) in cancelled {
            self.publish(event);
            self.fire(&task.id);
        }
        if n > 0 {
            self.wake_claimers();
        }
        Ok(n)
    }

    /// Live events of a session's tasks (every event this queue writes), in cursor order.
    /// Subscribe before reading the history from the store so nothing is missed; the
    /// receiver may then see events the history also returned: skip those with a cursor
    /// at or below the last one read. A receiver that falls more than 256 events behind
    /// gets `Lagged` (read the history again from the last cursor it has).
    pub fn subscribe(&self, session_id: &str) -> broadcast::Receiver<TaskEvent> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() > PRUNE_ABOVE {
            sessions.retain(|_, tx| tx.receiver_count() > 0);
        }
        sessions
            .entry(session_id.to_owned())
            .or_insert_with(|| broadcast::channel(EVENTS_BUFFER).0)
            .subscribe()
    }

    /// Cancelled when this task is cancelled, finishes, or its lease runs out, as seen by
    /// this queue: a runner in this process stops at once. Ask right after claiming (a
    /// token asked for long after the task stopped never fires).
    pub fn stop_token(&self, task_id: &str) -> CancellationToken {
        let mut stops = self.stops.lock().unwrap_or_else(|e| e.into_inner());
        Self::prune_stops(&mut stops);
        stops
            .entry(task_id.to_owned())
            .or_insert_with(|| Stop {
                token: CancellationToken::new(),
                fired_at: None,
            })
            .token
            .clone()
    }

    /// Sweeps leases that ran out every `config.sweep_every` until `shutdown` resolves:
    /// their tasks are queued again (or failed); publishes the events, fires the stop
    /// tokens, wakes claimers.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let every = self.config.sweep_every.max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "task lease sweep failed");
            }
        }
    }

    /// One sweep of leases that ran out; returns how many.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let _order = self.write_order.lock().await;
        let expired = self.store.expire_leases(OffsetDateTime::now_utc()).await?;
        let n = expired.len();
        for store::ExpiredLease { task, event } in expired {
            tracing::info!(
                task = %task.id,
                state = task.state.as_str(),
                message = event.message.as_deref().unwrap_or(""),
                "task lease ran out"
            );
            self.publish(event);
            self.fire(&task.id);
        }
        if n > 0 {
            self.wake_claimers();
        }
        Ok(n)
    }

    fn wake_claimers(&self) {
        self.wake.notify_waiters();
    }

    fn publish(&self, event: TaskEvent) {
        if let Some(hook) = self.on_publish.get() {
            hook(&event);
        }
        self.deliver(event);
    }

    /// To this queue's subscribers of the event's session.
    fn deliver(&self, event: TaskEvent) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = sessions.get(&event.session_id) {
            let session_id = event.session_id.clone();
            if tx.send(event).is_err() {
                // Nobody listens any more.
                sessions.remove(&session_id);
            }
        }
    }

    /// A fresh token for a task just claimed; the previous run's token (if still unfired:
    /// its lease ran out elsewhere) is fired, since that run is over.
    fn new_stop_token(&self, task_id: &str) {
        let mut stops = self.stops.lock().unwrap_or_else(|e| e.into_inner());
        Self::prune_stops(&mut stops);
        let fresh = Stop {
            token: CancellationToken::new(),
            fired_at: None,
        };
        if let Some(old) = stops.insert(task_id.to_owned(), fresh) {
            old.token.cancel();
        }
    }

    fn fire(&self, task_id: &str) {
        let mut stops = self.stops.lock().unwrap_or_else(|e| e.into_inner());
        match stops.get_mut(task_id) {
            Some(stop) => {
                stop.token.cancel();
                stop.fired_at.get_or_insert_with(Instant::now);
            }
            None => {
                // Nobody asked yet: a runner asking in a moment still learns it stopped.
                let token = CancellationToken::new();
                token.cancel();
                stops.insert(
                    task_id.to_owned(),
                    Stop {
                        token,
                        fired_at: Some(Instant::now()),
                    },
                );
            }
        }
        Self::prune_stops(&mut stops);
    }

    /// Drops tokens fired a while ago, once the map is large.
    fn prune_stops(stops: &mut HashMap<String, Stop>) {
        if stops.len() > PRUNE_ABOVE {
            stops.retain(|_, s| s.fired_at.is_none_or(|at| at.elapsed() < KEEP_FIRED));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskState;
    use crate::store::SqliteTaskStore;
    use serde_json::json;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tempfile::TempDir;

    /// Generous: the test machine is small and busy.
    const PATIENCE: Duration = Duration::from_secs(60);

    async fn queue(config: QueueConfig) -> (TempDir, Arc<TaskQueue>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteTaskStore::open(&dir.path().join("livesession.db"))
            .await
            .unwrap();
        (dir, TaskQueue::new(Arc::new(store), config))
    }

    fn steps() -> TaskInput {
        TaskInput::parse(&json!({"kind": "steps", "steps": [{"action": "screenshot"}]})).unwrap()
    }

    fn goal(text: &str) -> TaskInput {
        TaskInput::Agent { goal: text.into() }
    }

    async fn claim_now(q: &TaskQueue, worker: &str) -> Option<store::Claimed> {
        q.claim(
            &TaskKind::ALL,
            worker,
            Duration::ZERO,
            &CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sessions_tasks_run_in_order_and_one_at_a_time_with_two_claimers() {
        let (_dir, q) = queue(QueueConfig::default()).await;
        let sessions = ["s0", "s1", "s2", "s3", "s4"];
        let mut created: HashMap<&str, Vec<String>> = HashMap::new();
        for i in 0..20usize {
            let session = sessions[(i * 3 + i / 5) % 5];
            let input = if i % 2 == 0 {
                steps()
            } else {
                goal(&format!("goal {i}"))
            };
            let task = q.create(session, &input).await.unwrap();
            created.entry(session).or_default().push(task.id);
        }
        let mut events = q.subscribe("s0");

        let busy = Arc::new(Mutex::new(HashSet::<String>::new()));
        let ran = Arc::new(Mutex::new(HashMap::<String, Vec<String>>::new()));
        let done = Arc::new(AtomicUsize::new(0));
        let mut claimers = Vec::new();
        for worker in ["w1", "w2"] {
            let (q, busy, ran, done) = (q.clone(), busy.clone(), ran.clone(), done.clone());
            claimers.push(tokio::spawn(async move {
                let stop = CancellationToken::new();
                while done.load(Ordering::SeqCst) < 20 {
                    let Some(c) = q
                        .claim(&TaskKind::ALL, worker, Duration::from_millis(500), &stop)
                        .await
                        .unwrap()
                    else {
                        continue;
                    };
                    let session = c.task.session_id.clone();
                    assert!(
                        busy.lock().unwrap().insert(session.clone()),
                        "two tasks of {session} at once"
                    );
                    ran.lock()
                        .unwrap()
                        .entry(session.clone())
                        .or_default()
                        .push(c.task.id.clone());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    busy.lock().unwrap().remove(&session);
                    let task = q
                        .update(
                            &c.task.id,
                            &c.lease.id,
                            Transition::Succeed(json!(worker)),
                            EventNote::default(),
                        )
                        .await
                        .unwrap();
                    assert_eq!(task.state, TaskState::Succeeded);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        for claimer in claimers {
            tokio::time::timeout(PATIENCE * 2, claimer)
                .await
                .expect("all tasks ran")
                .unwrap();
        }
        let ran = ran.lock().unwrap().clone();
        for (session, ids) in &created {
            assert_eq!(ran.get(*session), Some(ids), "order in {session}");
        }
        assert_eq!(ran.values().map(Vec::len).sum::<usize>(), 20);
        // s0's subscriber saw each claim and success, in cursor order.
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        assert_eq!(seen.len(), created["s0"].len() * 2);
        assert!(
            seen.windows(2).all(|w| w[0].cursor < w[1].cursor),
            "{seen:?}"
        );
        assert!(seen.iter().all(|e| e.session_id == "s0"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_claim_wakes_when_a_task_is_created() {
        let (_dir, q) = queue(QueueConfig::default()).await;
        let stop = CancellationToken::new();
        let waiting = {
            let (q, stop) = (q.clone(), stop.clone());
            tokio::spawn(async move { q.claim(&[TaskKind::Agent], "w1", PATIENCE, &stop).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A steps task does not satisfy an agent worker; the agent task does.
        q.create("s1", &steps()).await.unwrap();
        let task = q.create("s2", &goal("look around")).await.unwrap();
        let claimed = tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("the claim returns")
            .unwrap()
            .unwrap()
            .expect("a task");
        assert_eq!(claimed.task.id, task.id);
        assert_eq!(claimed.task.state, TaskState::Running);
        assert_eq!(claimed.lease.worker, "w1");

        // Nothing left: a short wait returns nothing; a stopped claimer returns at once.
        let none = q
            .claim(&[TaskKind::Agent], "w1", Duration::from_millis(50), &stop)
            .await
            .unwrap();
        assert!(none.is_none());
        stop.cancel();
        let stopped =
            tokio::time::timeout(PATIENCE, q.claim(&[TaskKind::Agent], "w1", PATIENCE, &stop))
                .await
                .expect("a stopped claim returns");
        assert!(stopped.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_claim_wakes_when_the_sessions_task_finishes() {
        let (_dir, q) = queue(QueueConfig::default()).await;
        let first = q.create("s1", &steps()).await.unwrap();
        let second = q.create("s1", &steps()).await.unwrap();
        let c = claim_now(&q, "w1").await.unwrap();
        assert_eq!(c.task.id, first.id);
        assert!(claim_now(&q, "w2").await.is_none(), "the session is busy");
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move {
                q.claim(&TaskKind::ALL, "w2", PATIENCE, &CancellationToken::new())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.update(
            &first.id,
            &c.lease.id,
            Transition::Fail("broken".into()),
            EventNote::default(),
        )
        .await
        .unwrap();
        let next = tokio::time::timeout(PATIENCE, waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next.task.id, second.id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_stops_the_runner_and_refuses_its_writes() {
        let (_dir, q) = queue(QueueConfig::default()).await;
        let running = q.create("s1", &goal("a")).await.unwrap();
        let queued = q.create("s1", &goal("b")).await.unwrap();
        let c = claim_now(&q, "w1").await.unwrap();
        assert_eq!(c.task.id, running.id);
        let stop = q.stop_token(&running.id);
        assert!(!stop.is_cancelled());
        let mut events = q.subscribe("s1");

        // Cancel the queued one first: the running one goes on.
        let cancelled = q.cancel(&queued.id, "not needed").await.unwrap();
        assert_eq!(cancelled.state, TaskState::Cancelled);
        assert!(!stop.is_cancelled());
        assert!(
            q.stop_token(&queued.id).is_cancelled(),
            "a cancelled task's token is fired"
        );
        q.update(
            &running.id,
            &c.lease.id,
            Transition::Progress,
            EventNote::message("working"),
        )
        .await
        .unwrap();

        let cancelled = q
            .cancel(&running.id, "stopped by the viewer")
            .await
            .unwrap();
        assert_eq!(cancelled.state, TaskState::Cancelled);
        tokio::time::timeout(PATIENCE, stop.cancelled())
            .await
            .expect("the stop token fires");
        assert!(
            q.stop_token(&running.id).is_cancelled(),
            "asked again, still fired"
        );
        let err = q
            .update(
                &running.id,
                &c.lease.id,
                Transition::Progress,
                EventNote::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::LeaseLost(r) if r.contains("cancelled")),
            "{err:?}"
        );
        assert!(matches!(
            q.heartbeat(&running.id, &c.lease.id).await,
            Err(WriteError::LeaseLost(_))
        ));
        assert!(matches!(
            q.cancel(&running.id, "again").await,
            Err(WriteError::WrongState("cancelled"))
        ));

        let messages: Vec<(TaskState, Option<String>)> =
            std::iter::from_fn(|| events.try_recv().ok())
                .map(|e| (e.state, e.message))
                .collect();
        assert_eq!(
            messages,
            vec![
                (TaskState::Cancelled, Some("not needed".into())),
                (TaskState::Running, Some("working".into())),
                (TaskState::Cancelled, Some("stopped by the viewer".into())),
            ]
        );
    }

    #[tokio::test]
    async fn cancelling_a_session() {
        let (_dir, q) = queue(QueueConfig::default()).await;
        let a = q.create("s1", &steps()).await.unwrap();
        q.create("s1", &goal("b")).await.unwrap();
        let other = q.create("s2", &steps()).await.unwrap();
        let c = claim_now(&q, "w1").await.unwrap();
        assert_eq!(c.task.id, a.id);
        let stop = q.stop_token(&a.id);
        let mut events = q.subscribe("s1");
        assert_eq!(
            q.cancel_session("s1", "the session ended").await.unwrap(),
            2
        );
        assert!(stop.is_cancelled());
        let states: Vec<TaskState> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| e.state)
            .collect();
        assert_eq!(states, vec![TaskState::Cancelled, TaskState::Cancelled]);
        assert_eq!(q.cancel_session("s1", "again").await.unwrap(), 0);
        let left = q.store().get_task(&other.id).await.unwrap().unwrap();
        assert_eq!(left.state, TaskState::Queued);
        assert_eq!(claim_now(&q, "w1").await.unwrap().task.id, other.id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweeper_queues_a_lost_task_again_and_stops_its_runner() {
        let config = QueueConfig {
            lease: Duration::from_millis(1000),
            max_attempts: 2,
            sweep_every: Duration::from_millis(50),
        };
        let (_dir, q) = queue(config).await;
        let task = q.create("s1", &steps()).await.unwrap();
        let mut events = q.subscribe("s1");
        let shutdown = CancellationToken::new();
        let sweeper = tokio::spawn(q.clone().run_sweeper(shutdown.clone().cancelled_owned()));

        let first = claim_now(&q, "w1").await.unwrap();
        let stop = q.stop_token(&task.id);
        tokio::time::timeout(PATIENCE, stop.cancelled())
            .await
            .expect("the lease runs out");
        let requeued = q.store().get_task(&task.id).await.unwrap().unwrap();
        assert_eq!(requeued.state, TaskState::Queued);
        let err = q
            .update(
                &task.id,
                &first.lease.id,
                Transition::Succeed(json!(1)),
                EventNote::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::LeaseLost(_)), "{err:?}");

        // The second attempt runs out too: the task fails.
        let second = q
            .claim(&TaskKind::ALL, "w2", PATIENCE, &CancellationToken::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.task.attempts, 2);
        let stop = q.stop_token(&task.id);
        assert!(!stop.is_cancelled(), "a new claim has a new token");
        tokio::time::timeout(PATIENCE, stop.cancelled())
            .await
            .expect("the lease runs out");
        let failed = q.store().get_task(&task.id).await.unwrap().unwrap();
        assert_eq!(failed.state, TaskState::Failed);
        assert_eq!(failed.error.as_deref(), Some("worker lost"));

        let seen: Vec<TaskEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        let messages: Vec<&str> = seen.iter().filter_map(|e| e.message.as_deref()).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert_eq!(messages[0], "claimed by w1, attempt 1 of 2");
        assert_eq!(
            messages[1],
            "worker lost: lease of w1 ran out; queued again (attempt 2 of 2)"
        );
        assert_eq!(messages[2], "claimed by w2, attempt 2 of 2");
        assert!(
            messages[3].starts_with("worker lost: lease of w2 ran out; failed"),
            "{}",
            messages[3]
        );

        shutdown.cancel();
        tokio::time::timeout(PATIENCE, sweeper)
            .await
            .expect("the sweeper stops")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_keep_the_lease() {
        let config = QueueConfig {
            lease: Duration::from_millis(1500),
            max_attempts: 3,
            sweep_every: Duration::from_millis(50),
        };
        let (_dir, q) = queue(config).await;
        let task = q.create("s1", &steps()).await.unwrap();
        let c = claim_now(&q, "w1").await.unwrap();
        let before = c.lease.until;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let beat = q.heartbeat(&task.id, &c.lease.id).await.unwrap();
        assert!(beat.lease.unwrap().until > before);
        assert!(matches!(
            q.heartbeat(&task.id, "l_wrong").await,
            Err(WriteError::LeaseLost(_))
        ));
        assert!(matches!(
            q.heartbeat("t_nope", &c.lease.id).await,
            Err(WriteError::NotFound)
        ));
        let seen = q
            .store()
            .workers_seen_since(OffsetDateTime::now_utc() - time::Duration::minutes(1))
            .await
            .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].worker, "w1");
    }

    #[tokio::test]
    async fn a_session_takes_at_most_fifty_open_tasks() {
        let (_dir, q) = queue(QueueConfig::default()).await;
        for i in 0..limits::MAX_OPEN_PER_SESSION {
            q.create("s1", &goal(&format!("goal {i}"))).await.unwrap();
        }
        let err = q.create("s1", &steps()).await.unwrap_err();
        assert!(matches!(err, CreateError::SessionFull(50)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the session already has 50 tasks queued or running; wait for one to finish"
        );
        q.create("s2", &steps()).await.unwrap();
        let c = claim_now(&q, "w1").await.unwrap();
        assert_eq!(c.task.session_id, "s1");
        q.update(
            &c.task.id,
            &c.lease.id,
            Transition::Succeed(json!(null)),
            EventNote::default(),
        )
        .await
        .unwrap();
        let task = q.create("s1", &steps()).await.unwrap();
        assert_eq!(task.state, TaskState::Queued);
        assert_eq!(task.max_attempts, 3);
    }

    #[tokio::test]
    async fn an_oversized_result_fails_the_task() {
        let (_dir, q) = queue(QueueConfig::default()).await;
        let task = q.create("s1", &steps()).await.unwrap();
        let c = claim_now(&q, "w1").await.unwrap();
        let stop = q.stop_token(&task.id);
        let result = json!({"text": "x".repeat(limits::MAX_RESULT_BYTES + 1)});
        let failed = q
            .update(
                &task.id,
                &c.lease.id,
                Transition::Succeed(result),
                EventNote::default(),
            )
            .await
            .unwrap();
        assert_eq!(failed.state, TaskState::Failed);
        assert!(failed.error.unwrap().starts_with("the result is too large"));
        assert!(stop.is_cancelled());
    }
}
