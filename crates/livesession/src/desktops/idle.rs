//! Idle hibernation: the keeper hibernates a desktop that nothing has used for its
//! session's idle timeout, and (while anyone waits in line) the least recently used idle
//! desktop at once. At shutdown every running desktop is hibernated, within a bound.
//!
//! Hibernating: the browser's state is saved (`StateKeeper::save_and_stop`: Chromium is
//! closed gracefully, its state copied out, the desktop stopped, whatever the outcome),
//! and the session is recorded as hibernated. A failed save is logged and the session is
//! hibernated all the same: it resumes from what was last saved for it (its own state,
//! else its profile), or with a fresh browser.

use std::sync::Arc;
use std::time::{Duration, Instant};

use livesession_session::Session;
use livesession_tasks::TaskState;
use livesession_tasks::store::TaskFilter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{DesktopStatus, Desktops, Inner, queue};

/// How often the keeper looks at idle clocks (it is also woken at once when someone
/// waits in line or a desktop becomes idle).
const TICK: Duration = Duration::from_millis(500);

/// How long a graceful shutdown waits for running desktops to be saved; the rest are
/// stopped without saving.
pub const SHUTDOWN_SAVE_BOUND: Duration = Duration::from_secs(15);

/// Why a desktop hibernates (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Idle,
    MakeRoom,
    Shutdown,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Idle => "idle timeout",
            Why::MakeRoom => "making room for a session waiting in line",
            Why::Shutdown => "server shutting down",
        }
    }
}

impl Desktops {
    /// Runs until `shutdown`: hibernates idle desktops (see the module's doc).
    pub async fn run_keeper(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            self.keep().await;
        }
    }

    async fn keep(self: &Arc<Self>) {
        let candidates = {
            let mut inner = self.inner.lock().unwrap();
            if inner.closing {
                return;
            }
            // A place may have freed since the line was last served.
            queue::pump(self, &mut inner);
            self.candidates(&inner)
        };
        for (id, why) in candidates {
            // An external worker's task reaches the browser over DevTools, but between
            // two connections it is still at work: its running task keeps the desktop.
            if self.has_task_at_work(&id).await {
                if let Some(slot) = self.inner.lock().unwrap().slots.get_mut(&id) {
                    slot.idle_since = Instant::now();
                }
                continue;
            }
            let mut inner = self.inner.lock().unwrap();
            self.begin_hibernate(&mut inner, &id, why);
        }
    }

    /// Idle desktops past their timeout, and the least recently used idle ones while
    /// sessions wait in line (as many as wait, less the places being freed already).
    fn candidates(&self, inner: &Inner) -> Vec<(String, Why)> {
        let now = Instant::now();
        let mut idle: Vec<(&String, Instant, bool)> = inner
            .slots
            .iter()
            .filter(|(id, slot)| inner.holds(id) == 0 && matches!(*slot.status.borrow(), DesktopStatus::Ready(_)))
            .map(|(id, slot)| {
                let timeout = (self.limits.idle_timeout)(slot.session.idle_timeout_seconds);
                let timed_out = timeout.is_some_and(|t| now.duration_since(slot.idle_since) >= t);
                (id, slot.idle_since, timed_out)
            })
            .collect();
        idle.sort_by_key(|(_, since, _)| *since);
        let freeing = inner
            .slots
            .values()
            .filter(|s| matches!(*s.status.borrow(), DesktopStatus::Hibernating))
            .count();
        let timed_out = idle.iter().filter(|(_, _, t)| *t).count();
        let mut room = inner.queue.len().saturating_sub(freeing + timed_out);
        idle.into_iter()
            .filter_map(|(id, _, timed_out)| {
                if timed_out {
                    Some((id.clone(), Why::Idle))
                } else if room > 0 {
                    room -= 1;
                    Some((id.clone(), Why::MakeRoom))
                } else {
                    None
                }
            })
            .collect()
    }

    async fn has_task_at_work(&self, id: &str) -> bool {
        for state in [TaskState::Running, TaskState::WaitingForPerson] {
            let filter = TaskFilter { session_id: Some(id.to_owned()), state: Some(state), limit: 1 };
            match self.task_queue.store().list_tasks(&filter).await {
                Ok(tasks) if !tasks.is_empty() => return true,
                Ok(_) => {}
                Err(e) => {
                    // Unknown: keep the desktop rather than cut a task off.
                    tracing::error!(session_id = %id, error = %e, "could not read the session's tasks; not hibernating it now");
                    return true;
                }
            }
        }
        false
    }

    /// Starts hibernating a ready desktop (for idleness and room only if nothing holds
    /// it). Returns a receiver that sees the end of the save.
    fn begin_hibernate(
        self: &Arc<Self>,
        inner: &mut Inner,
        id: &str,
        why: Why,
    ) -> Option<watch::Receiver<DesktopStatus>> {
        if why != Why::Shutdown && (inner.closing || inner.holds(id) > 0) {
            return None;
        }
        let slot = inner.slots.get_mut(id)?;
        if !matches!(slot.status(), DesktopStatus::Ready(_)) {
            return None;
        }
        slot.status.send_replace(DesktopStatus::Hibernating);
        let (status, session, generation) = (slot.status.clone(), slot.session.clone(), slot.generation);
        let rx = status.subscribe();
        let this = self.clone();
        self.tasks
            .spawn(async move { this.hibernate(session, status, generation, why).await });
        Some(rx)
    }

    async fn hibernate(
        self: Arc<Self>,
        session: Session,
        status: watch::Sender<DesktopStatus>,
        generation: u64,
        why: Why,
    ) {
        let id = session.id.clone();
        tracing::info!(session_id = %id, why = why.as_str(), "desktop hibernating: saving the browser's state");
        match self.states.save_and_stop(&session).await {
            Ok(()) => tracing::info!(session_id = %id, "desktop hibernated: its state is saved and the desktop stopped"),
            Err(e) => tracing::warn!(
                session_id = %id,
                error = %e,
                "desktop hibernated without saving its state: the desktop is stopped, and the session \
                 resumes from what was last saved for it, or with a fresh browser"
            ),
        }
        // `None` when the session ended meanwhile: nothing to record.
        if let Err(e) = self.sessions.set_hibernated(&id, true).await {
            tracing::error!(session_id = %id, error = %e, "could not record the hibernation; the desktop is stopped all the same");
        }
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        let closing = inner.closing;
        // Only a session someone still waits for goes back in line (`release` also clears
        // `resume_wanted` when the last holder leaves; this guards the same invariant).
        let held = inner.holds(&id) > 0;
        match inner.slots.get_mut(&id) {
            Some(slot) if slot.generation == generation && matches!(slot.status(), DesktopStatus::Hibernating) => {
                slot.hibernated = true;
                slot.idle_since = Instant::now();
                if slot.resume_wanted && held && !closing {
                    // Asked for while it was being saved: back in line (first served if a
                    // place is free, and its own place just freed).
                    // Its waiters see only what the pump below makes of it (a resume, or
                    // a place in line): a watch keeps the latest value.
                    slot.resume_wanted = false;
                    slot.status.send_replace(DesktopStatus::Queued(0));
                    inner.queue.push_back(id.clone());
                } else {
                    slot.resume_wanted = false;
                    slot.status.send_replace(DesktopStatus::Hibernated);
                }
            }
            // The session ended (or the server stops): whoever waits for the save learns it is done.
            _ => {
                status.send_replace(DesktopStatus::Hibernated);
            }
        }
        queue::pump(&self, inner);
        if !inner.queue.is_empty() {
            // More wait: the keeper looks for more room.
            self.wake.notify_one();
        }
    }

    /// Graceful shutdown: every running desktop is hibernated (concurrently, for at most
    /// `bound`), so a restarted server finds its sessions hibernated and resumable; the
    /// rest (starting, or not saved in time) are stopped. Nothing starts any more.
    pub async fn shut_down(self: &Arc<Self>, bound: Duration) {
        let saves: Vec<watch::Receiver<DesktopStatus>> = {
            let mut guard = self.inner.lock().unwrap();
            let inner = &mut *guard;
            inner.closing = true;
            for id in std::mem::take(&mut inner.queue) {
                if let Some(slot) = inner.slots.get(&id) {
                    slot.status.send_replace(slot.at_rest());
                }
            }
            let ready: Vec<String> = inner
                .slots
                .iter()
                .filter(|(_, s)| matches!(s.status(), DesktopStatus::Ready(_)))
                .map(|(id, _)| id.clone())
                .collect();
            let already: Vec<_> = inner
                .slots
                .values()
                .filter(|s| matches!(s.status(), DesktopStatus::Hibernating))
                .map(|s| s.status.subscribe())
                .collect();
            ready
                .iter()
                .filter_map(|id| self.begin_hibernate(inner, id, Why::Shutdown))
                .chain(already)
                .collect()
        };
        if !saves.is_empty() {
            tracing::info!(desktops = saves.len(), "shutting down: hibernating running desktops");
            let all = futures_util::future::join_all(saves.into_iter().map(|mut rx| async move {
                let _ = rx.wait_for(|s| !matches!(s, DesktopStatus::Hibernating)).await;
            }));
            if tokio::time::timeout(bound, all).await.is_err() {
                tracing::warn!(bound_seconds = bound.as_secs(), "some desktops were not saved in time; they are stopped without saving");
            }
        }
        self.stop_all().await;
    }
}
