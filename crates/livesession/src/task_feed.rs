//! A session's task updates for one control connection: every event after the cursor the
//! viewer last saw, then each new one, with no gap and no duplicate.
//!
//! The store is the truth: an event published by the queue only says "there is more",
//! and the feed reads the store after the last cursor it sent. SQLite commits one write
//! at a time and assigns cursors inside the write, so a later commit always has a larger
//! cursor and reading "after the last cursor" never skips one. (A store whose cursors can
//! commit out of order needs its own rule here.)

use std::collections::VecDeque;
use std::sync::Arc;

use livesession_tasks::{TaskEvent, TaskQueue};
use tokio::sync::broadcast::error::RecvError;

/// Events read from the store at a time.
const PAGE: u32 = 200;
/// How long the feed waits before reading again after the store failed.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

pub struct TaskFeed {
    queue: Arc<TaskQueue>,
    session_id: String,
    live: tokio::sync::broadcast::Receiver<TaskEvent>,
    /// Asks for a fresh read of the store (events written on other servers may have been
    /// missed: `TaskQueue::ask_followers_to_reread`).
    reread: tokio::sync::watch::Receiver<u64>,
    pending: VecDeque<TaskEvent>,
    /// The cursor of the last event handed out.
    last: u64,
    /// Whether the store may hold events after `last` not yet read.
    behind: bool,
}

impl TaskFeed {
    /// Follows the session's task events after `after` (0: all of them).
    pub fn new(queue: Arc<TaskQueue>, session_id: &str, after: u64) -> Self {
        // Subscribed before the first read: nothing committed in between is missed.
        let live = queue.subscribe(session_id);
        let reread = queue.rereads();
        Self {
            queue,
            session_id: session_id.to_owned(),
            live,
            reread,
            pending: VecDeque::new(),
            last: after,
            behind: true,
        }
    }

    /// The next event, waiting for one if there is none yet. A store that fails is read
    /// again after a pause: the feed resumes where it was, nothing is skipped.
    pub async fn next(&mut self) -> TaskEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last = event.cursor;
                return event;
            }
            if self.behind {
                match self.queue.store().session_events(&self.session_id, self.last, PAGE).await {
                    Ok(page) => {
                        self.behind = page.len() as u32 == PAGE;
                        self.pending.extend(page);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "task store failed while following task updates; retrying");
                        tokio::time::sleep(STORE_RETRY).await;
                    }
                }
                continue;
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    // Already read from the store.
                    Ok(event) if event.cursor <= self.last => {}
                    Ok(_) | Err(RecvError::Lagged(_)) => self.behind = true,
                    // The queue is gone (shutdown): nothing more will come.
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
                changed = self.reread.changed() => match changed {
                    Ok(()) => self.behind = true,
                    Err(_) => std::future::pending::<()>().await,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use livesession_tasks::queue::QueueConfig;
    use livesession_tasks::{SqliteTaskStore, TaskInput, TaskQueue};

    use super::TaskFeed;

    /// Two queues on one store play two servers: what one writes reaches the other's
    /// followers only when they are asked to read again (as after a resynchronisation).
    #[tokio::test]
    async fn a_follower_asked_to_reread_finds_events_written_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn livesession_tasks::TaskStore> =
            Arc::new(SqliteTaskStore::open(&dir.path().join("livesession.db")).await.unwrap());
        let here = TaskQueue::new(store.clone(), QueueConfig::default());
        let elsewhere = TaskQueue::new(store, QueueConfig::default());
        let mut feed = TaskFeed::new(here.clone(), "s1", 0);

        let input = TaskInput::parse(&serde_json::json!({"kind": "steps", "steps": [{"action": "screenshot"}]})).unwrap();
        let task = elsewhere.create("s1", &input).await.unwrap();
        // The store is read once at the start: the event is there already.
        let first = tokio::time::timeout(Duration::from_secs(2), feed.next()).await.expect("the event already written");
        assert_eq!(first.task_id, task.id);

        // Written elsewhere after the first read: not heard of here…
        let second = elsewhere.create("s1", &input).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), feed.next()).await.is_err(), "nothing heard without a notice");
        // …until the followers are asked to read again.
        here.ask_followers_to_reread();
        let next = tokio::time::timeout(Duration::from_secs(2), feed.next()).await.expect("read again");
        assert_eq!(next.task_id, second.id);
    }
}
