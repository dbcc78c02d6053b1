//! Which session has which desktop: starts a desktop on first use (once, however many
//! connections ask at the same moment), publishes its progress, enforces the cap on live
//! desktops, and stops it when the session ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use livesession_desktop::{DesktopError, DesktopHandle, DesktopRuntime, DesktopSpec, Piece};
use livesession_session::{EndSignal, Session};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::DesktopSize;

#[derive(Debug, Clone)]
pub enum DesktopStatus {
    Starting(Piece),
    Ready(Arc<DesktopHandle>),
    Failed(Arc<DesktopError>),
    Stopped,
}

impl DesktopStatus {
    pub fn name(&self) -> &'static str {
        match self {
            DesktopStatus::Starting(_) => "starting",
            DesktopStatus::Ready(_) => "ready",
            DesktopStatus::Failed(_) => "failed",
            DesktopStatus::Stopped => "stopped",
        }
    }

    fn is_live(&self) -> bool {
        matches!(self, DesktopStatus::Starting(_) | DesktopStatus::Ready(_))
    }
}

/// Why a connection cannot have its desktop.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error("the server is at capacity ({0} desktops running); try again later")]
    AtCapacity(usize),
    #[error("{0}")]
    Failed(Arc<DesktopError>),
    #[error("the desktop was stopped")]
    Stopped,
}

struct Slot {
    status: watch::Sender<DesktopStatus>,
    /// Tells a finished start whether its slot is still the one it started for.
    generation: u64,
}

pub struct Desktops {
    runtime: Arc<dyn DesktopRuntime>,
    slots: Mutex<HashMap<String, Slot>>,
    generations: AtomicU64,
    max: usize,
    size: DesktopSize,
    tasks: TaskTracker,
}

impl Desktops {
    pub fn new(
        runtime: Arc<dyn DesktopRuntime>,
        max: usize,
        size: DesktopSize,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            slots: Mutex::default(),
            generations: AtomicU64::new(0),
            max,
            size,
            tasks,
        })
    }

    pub fn runtime(&self) -> &Arc<dyn DesktopRuntime> {
        &self.runtime
    }

    /// Desktops starting or running.
    pub fn live(&self) -> usize {
        self.slots
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.status.borrow().is_live())
            .count()
    }

    /// The current status, without starting anything.
    pub fn status(&self, id: &str) -> DesktopStatus {
        self.slots
            .lock()
            .unwrap()
            .get(id)
            .map(|s| s.status.borrow().clone())
            .unwrap_or(DesktopStatus::Stopped)
    }

    /// Follows a session's desktop, starting it if it is neither starting nor running
    /// (a failed desktop is started again).
    ///
    /// `end` is the asking connection's end signal: a session that has ended never starts
    /// a desktop. (The end is signalled before the desktop cleanup runs, so either this
    /// sees it, or the cleanup removes the slot and the start stops what it made.)
    pub fn watch(
        self: &Arc<Self>,
        session: &Session,
        end: &EndSignal,
    ) -> Result<watch::Receiver<DesktopStatus>, Unavailable> {
        let mut slots = self.slots.lock().unwrap();
        if end.is_ended() {
            return Err(Unavailable::Stopped);
        }
        if let Some(slot) = slots.get(&session.id)
            && slot.status.borrow().is_live()
        {
            return Ok(slot.status.subscribe());
        }
        let live = slots
            .values()
            .filter(|s| s.status.borrow().is_live())
            .count();
        if live >= self.max {
            return Err(Unavailable::AtCapacity(live));
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let starting = DesktopStatus::Starting(Piece::Xvnc);
        let status = match slots.get_mut(&session.id) {
            Some(slot) => {
                // Keep the sender: connections already watching a failed start see the retry.
                slot.generation = generation;
                slot.status.send_replace(starting);
                slot.status.clone()
            }
            None => {
                let (tx, _) = watch::channel(starting);
                slots.insert(
                    session.id.clone(),
                    Slot {
                        status: tx.clone(),
                        generation,
                    },
                );
                tx
            }
        };
        let rx = status.subscribe();
        drop(slots);

        let spec = DesktopSpec {
            id: session.id.clone(),
            width: self.size.width,
            height: self.size.height,
            start_url: session.start_url.clone(),
            restore: None,
        };
        // The start runs on its own task: a viewer that goes away mid-start does not
        // cancel it for the others, and shutdown waits for it.
        let this = self.clone();
        self.tasks
            .spawn(async move { this.start(spec, status, generation).await });
        Ok(rx)
    }

    async fn start(
        self: Arc<Self>,
        spec: DesktopSpec,
        status: watch::Sender<DesktopStatus>,
        generation: u64,
    ) {
        let id = spec.id.clone();
        tracing::info!(session_id = %id, "desktop starting");
        let progress = |piece: Piece| {
            status.send_replace(DesktopStatus::Starting(piece));
        };
        let result = self.runtime.start(spec, &progress).await;
        let current = {
            let slots = self.slots.lock().unwrap();
            slots.get(&id).is_some_and(|s| s.generation == generation)
        };
        match result {
            Ok(handle) if current => {
                status.send_replace(DesktopStatus::Ready(Arc::new(handle)));
            }
            Ok(_) => {
                // The session ended (or the server began to stop) while this desktop started.
                self.runtime.stop(&id).await;
            }
            Err(e) => {
                tracing::error!(session_id = %id, error = %e, stderr_tail = e.stderr_tail().unwrap_or(""), "desktop failed to start");
                if current {
                    status.send_replace(DesktopStatus::Failed(Arc::new(e)));
                }
            }
        }
    }

    /// Waits until the desktop followed by `rx` (from [`Desktops::watch`]) is ready.
    pub async fn ready(
        mut rx: watch::Receiver<DesktopStatus>,
    ) -> Result<Arc<DesktopHandle>, Unavailable> {
        loop {
            match rx.borrow_and_update().clone() {
                DesktopStatus::Ready(handle) => return Ok(handle),
                DesktopStatus::Failed(e) => return Err(Unavailable::Failed(e)),
                DesktopStatus::Stopped => return Err(Unavailable::Stopped),
                DesktopStatus::Starting(_) => {}
            }
            if rx.changed().await.is_err() {
                return Err(Unavailable::Stopped);
            }
        }
    }

    /// A connection found the desktop's VNC server gone: forget the desktop so the next
    /// connection starts a fresh one.
    pub async fn lost(&self, id: &str, handle: &Arc<DesktopHandle>) {
        let is_current = {
            let slots = self.slots.lock().unwrap();
            slots.get(id).is_some_and(|s| matches!(&*s.status.borrow(), DesktopStatus::Ready(h) if Arc::ptr_eq(h, handle)))
        };
        if is_current {
            self.forget_if_dead(id).await;
        }
    }

    /// Before a connection joins a "ready" desktop: if one of its pieces has exited (the
    /// user closed Chromium's window, a crash), stop what is left so a fresh one starts.
    pub async fn forget_if_dead(&self, id: &str) {
        let ready = matches!(self.status(id), DesktopStatus::Ready(_));
        if ready && !self.runtime.is_alive(id).await {
            tracing::warn!(session_id = %id, "desktop stopped unexpectedly; a new one will start");
            self.stop(id).await;
        }
    }

    pub async fn stop(&self, id: &str) {
        if let Some(slot) = self.slots.lock().unwrap().remove(id) {
            slot.status.send_replace(DesktopStatus::Stopped);
        }
        self.runtime.stop(id).await;
    }

    /// Stops the desktop of every session that is no longer active.
    pub async fn stop_ended(&self, sessions: &livesession_session::Sessions) {
        let ids: Vec<String> = self.slots.lock().unwrap().keys().cloned().collect();
        for id in ids {
            let active = matches!(sessions.get(&id).await, Ok(Some(s)) if s.state == livesession_session::SessionState::Active);
            if !active {
                self.stop(&id).await;
            }
        }
    }

    pub async fn stop_all(&self) {
        for (_, slot) in self.slots.lock().unwrap().drain() {
            slot.status.send_replace(DesktopStatus::Stopped);
        }
        self.runtime.stop_all().await;
    }
}
