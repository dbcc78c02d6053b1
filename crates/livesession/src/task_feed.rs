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
        Self {
            queue,
            session_id: session_id.to_owned(),
            live,
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
            match self.live.recv().await {
                // Already read from the store.
                Ok(event) if event.cursor <= self.last => {}
                Ok(_) | Err(RecvError::Lagged(_)) => self.behind = true,
                // The queue is gone (shutdown): nothing more will come.
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}
