//! Which session has which desktop: starts a desktop on first use (once, however many
//! connections ask at the same moment), publishes its progress, keeps the cap on live
//! desktops with a wait queue (`queue.rs`), hibernates idle desktops and resumes them
//! (`idle.rs`), and stops (or saves and stops) a desktop when its session ends.
//!
//! Who uses a session's desktop is counted with [`ActivityGuard`]s ([`Desktops::hold`]):
//! every VNC, control and DevTools connection of the session, and every local task run.
//! When the last guard goes, the session's idle clock starts (docs/profiles.md).

mod browser;
mod idle;
mod queue;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use livesession_desktop::{DesktopError, DesktopHandle, DesktopRuntime, DesktopSpec, Piece};
use livesession_session::{EndSignal, Session, Sessions};
use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use crate::config::DesktopSize;
use crate::saved_state::StateKeeper;

pub use idle::SHUTDOWN_SAVE_BOUND;

#[derive(Debug, Clone)]
pub enum DesktopStatus {
    /// Waiting for a free desktop: the session's place in line (1: next).
    Queued(usize),
    Starting(Piece),
    /// Starting again after a hibernation, from the session's saved state.
    Resuming(Piece),
    Ready(Arc<DesktopHandle>),
    /// Its browser exited unasked (a crash, its last window closed) and is being started
    /// again inside the same desktop: the screen stays, DevTools comes back.
    Restarting(Arc<DesktopHandle>),
    /// Its browser's state is being saved and the desktop stopped.
    Hibernating,
    /// Saved and stopped; the next connection or task resumes it.
    Hibernated,
    Failed(Arc<DesktopError>),
    Stopped,
}

impl DesktopStatus {
    pub fn name(&self) -> &'static str {
        match self {
            DesktopStatus::Queued(_) => "queued",
            DesktopStatus::Starting(_) => "starting",
            DesktopStatus::Resuming(_) => "resuming",
            DesktopStatus::Ready(_) => "ready",
            DesktopStatus::Restarting(_) => "restarting",
            DesktopStatus::Hibernating => "hibernating",
            DesktopStatus::Hibernated => "hibernated",
            DesktopStatus::Failed(_) => "failed",
            DesktopStatus::Stopped => "stopped",
        }
    }

    /// Starting or running: what a connection can wait on without asking again.
    fn is_live(&self) -> bool {
        matches!(
            self,
            DesktopStatus::Starting(_)
                | DesktopStatus::Resuming(_)
                | DesktopStatus::Ready(_)
                | DesktopStatus::Restarting(_)
        )
    }

    /// Takes one of the `--max-desktops` places: its processes run (a hibernating
    /// desktop until its state is saved).
    fn occupies(&self) -> bool {
        self.is_live() || matches!(self, DesktopStatus::Hibernating)
    }
}

/// Why a connection cannot have its desktop.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error("every desktop is in use and the wait queue is full ({0} sessions waiting); try again later")]
    QueueFull(usize),
    #[error("{0}")]
    Failed(Arc<DesktopError>),
    #[error("the desktop was stopped")]
    Stopped,
}

/// What [`Desktops`] is configured with.
pub struct DesktopLimits {
    /// Desktops that may be live (starting, running, saving) at once.
    pub max: usize,
    /// Sessions that may wait in line for one.
    pub max_queued: usize,
    pub size: DesktopSize,
    /// A session's idle timeout from its own setting (`ServeConfig::idle_timeout`).
    pub idle_timeout: Box<dyn Fn(Option<u32>) -> Option<Duration> + Send + Sync>,
}

struct Slot {
    status: watch::Sender<DesktopStatus>,
    /// Tells a finished start (or save) whether its slot is still the one it worked for.
    generation: u64,
    /// The session as last asked for (what a start or a save needs of it).
    session: Session,
    /// Its state is saved and its desktop stopped (the store's `hibernated_at` is set).
    hibernated: bool,
    /// Someone asked for the desktop while it was being saved: resume it once saved.
    resume_wanted: bool,
    /// When the last guard on the session was let go, or its desktop became ready: the
    /// idle clock.
    idle_since: Instant,
}

impl Slot {
    fn new(session: &Session) -> Self {
        let hibernated = session.hibernated_at.is_some();
        let (status, _) = watch::channel(if hibernated {
            DesktopStatus::Hibernated
        } else {
            DesktopStatus::Stopped
        });
        Self {
            status,
            generation: 0,
            session: session.clone(),
            hibernated,
            resume_wanted: false,
            idle_since: Instant::now(),
        }
    }

    /// Where a slot rests when nothing runs or waits for it.
    fn at_rest(&self) -> DesktopStatus {
        if self.hibernated {
            DesktopStatus::Hibernated
        } else {
            DesktopStatus::Stopped
        }
    }

    fn status(&self) -> DesktopStatus {
        self.status.borrow().clone()
    }
}

#[derive(Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Guards held per session (connections and local task runs); absent: none.
    holds: HashMap<String, usize>,
    /// Sessions waiting for a desktop, first come first served.
    queue: VecDeque<String>,
    /// The server is stopping: nothing starts any more.
    closing: bool,
}

impl Inner {
    fn holds(&self, id: &str) -> usize {
        self.holds.get(id).copied().unwrap_or(0)
    }

    fn occupied(&self) -> usize {
        self.slots.values().filter(|s| s.status.borrow().occupies()).count()
    }
}

pub struct Desktops {
    runtime: Arc<dyn DesktopRuntime>,
    states: Arc<StateKeeper>,
    sessions: Arc<Sessions>,
    /// Tasks of a session running on an external worker keep its desktop up.
    task_queue: Arc<livesession_tasks::TaskQueue>,
    inner: Mutex<Inner>,
    /// Session ends in progress: a second caller waits for the first.
    endings: Mutex<HashMap<String, watch::Receiver<bool>>>,
    generations: AtomicU64,
    limits: DesktopLimits,
    tasks: TaskTracker,
    /// Wakes the keeper (`idle.rs`): someone waits in line, or a desktop became idle.
    wake: Notify,
    /// The sessions' files, copied into each desktop and out of its Downloads.
    files: Arc<crate::downloads::DesktopFiles>,
    /// Start and resume times (`/metrics`).
    metrics: Arc<crate::metrics::Metrics>,
    /// Done on every new desktop before it is published ready ([`BeforeReady`]).
    before_ready: OnceLock<Arc<dyn BeforeReady>>,
}

/// Work on a new desktop after it started and before anyone can use it: a login capture
/// takes its first look at the browser there (login_capture.rs), so nothing a person or an
/// agent does in the desktop can come before that look. The implementer bounds its time.
#[async_trait::async_trait]
pub trait BeforeReady: Send + Sync {
    async fn before_ready(&self, session: &Session, handle: &Arc<DesktopHandle>, resuming: bool);
}

/// Counts a connection or task run as activity on its session's desktop while held: a
/// desktop with a guard never hibernates for idleness, nor to make room.
pub struct ActivityGuard {
    desktops: Arc<Desktops>,
    id: String,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.desktops.release(&self.id);
    }
}

impl std::fmt::Debug for ActivityGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityGuard").field("session_id", &self.id).finish()
    }
}

impl Desktops {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Arc<dyn DesktopRuntime>,
        states: Arc<StateKeeper>,
        sessions: Arc<Sessions>,
        task_queue: Arc<livesession_tasks::TaskQueue>,
        limits: DesktopLimits,
        tasks: TaskTracker,
        files: Arc<crate::downloads::DesktopFiles>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            states,
            sessions,
            task_queue,
            inner: Mutex::default(),
            endings: Mutex::default(),
            generations: AtomicU64::new(1),
            limits,
            tasks,
            wake: Notify::new(),
            files,
            metrics,
            before_ready: OnceLock::new(),
        })
    }

    /// Sets the work done on every new desktop before it is published ready (once).
    pub fn set_before_ready(&self, hook: Arc<dyn BeforeReady>) {
        if self.before_ready.set(hook).is_err() {
            tracing::error!("a second before-ready hook was ignored");
        }
    }

    /// The sessions' files and their `FILE_ADDED` events (downloads.rs).
    pub fn files(&self) -> &Arc<crate::downloads::DesktopFiles> {
        &self.files
    }

    pub fn runtime(&self) -> &Arc<dyn DesktopRuntime> {
        &self.runtime
    }

    pub fn max(&self) -> usize {
        self.limits.max
    }

    pub fn max_queued(&self) -> usize {
        self.limits.max_queued
    }

    /// Desktops starting, running or being saved (the places `--max-desktops` counts).
    pub fn live(&self) -> usize {
        self.inner.lock().unwrap().occupied()
    }

    /// This server's desktops by status (`/metrics`): the live ones, and those whose
    /// last start failed. Queued, stopped and hibernated slots are counted elsewhere.
    pub fn by_status(&self) -> [(&'static str, usize); 6] {
        let mut counts = ["starting", "resuming", "ready", "restarting", "hibernating", "failed"].map(|s| (s, 0));
        let inner = self.inner.lock().unwrap();
        for slot in inner.slots.values() {
            let name = slot.status.borrow().name();
            if let Some((_, n)) = counts.iter_mut().find(|(status, _)| *status == name) {
                *n += 1;
            }
        }
        counts
    }

    /// The current status, without starting anything.
    pub fn status(&self, id: &str) -> DesktopStatus {
        self.inner
            .lock()
            .unwrap()
            .slots
            .get(id)
            .map(Slot::status)
            .unwrap_or(DesktopStatus::Stopped)
    }

    /// Follows the session's desktop without starting it and without counting as
    /// activity (the recorder): its status, while this server has a desktop (or a place
    /// in line) for the session. The channel closes when the desktop is stopped and
    /// forgotten; a later start makes a new one.
    pub fn follow(&self, id: &str) -> Option<watch::Receiver<DesktopStatus>> {
        self.inner.lock().unwrap().slots.get(id).map(|s| s.status.subscribe())
    }

    /// The session's desktop as the API shows it (`desktop` of a session): also
    /// "hibernated" for a session the store says hibernated and this process has not
    /// touched yet (after a restart), and "stopped" for a session that ended (its desktop
    /// is being stopped, if it is not yet).
    pub fn status_name(&self, session: &Session) -> &'static str {
        if session.state != livesession_session::SessionState::Active {
            return "stopped";
        }
        match self.status(&session.id) {
            DesktopStatus::Stopped if session.hibernated_at.is_some() => "hibernated",
            status => status.name(),
        }
    }

    /// Counts activity on the session's desktop until the guard is dropped.
    pub fn hold(self: &Arc<Self>, session_id: &str) -> ActivityGuard {
        let mut inner = self.inner.lock().unwrap();
        *inner.holds.entry(session_id.to_owned()).or_default() += 1;
        ActivityGuard {
            desktops: self.clone(),
            id: session_id.to_owned(),
        }
    }

    fn release(&self, id: &str) {
        let mut inner = self.inner.lock().unwrap();
        let Some(holds) = inner.holds.get_mut(id) else { return };
        *holds -= 1;
        if *holds > 0 {
            return;
        }
        inner.holds.remove(id);
        if let Some(slot) = inner.slots.get_mut(id) {
            slot.idle_since = Instant::now();
            // Asked for during a hibernation by connections that all left: the save ends
            // with the desktop at rest, not back in line with nobody waiting for it.
            slot.resume_wanted = false;
        }
        // Nobody waits for it any more: it leaves the line.
        if queue::leave(&mut inner, id) {
            tracing::info!(session_id = %id, "left the wait queue: nobody waits for the desktop any more");
        }
        if !inner.queue.is_empty() {
            // An idle desktop may now make room for the first in line.
            self.wake.notify_one();
        }
    }

    /// Follows a session's desktop, starting it (or resuming it from its saved state) if
    /// it is neither starting nor running; a failed desktop is started again. When every
    /// desktop is in use, the session waits in line (`Queued`) while the least recently
    /// used idle desktop is hibernated to make room.
    ///
    /// `end` is the asking connection's end signal: a session that has ended never starts
    /// a desktop. (The end is signalled before the desktop cleanup runs, so either this
    /// sees it, or the cleanup removes the slot and the start stops what it made.)
    pub fn watch(
        self: &Arc<Self>,
        session: &Session,
        end: &EndSignal,
    ) -> Result<watch::Receiver<DesktopStatus>, Unavailable> {
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        if end.is_ended() || inner.closing {
            return Err(Unavailable::Stopped);
        }
        let slot = inner
            .slots
            .entry(session.id.clone())
            .or_insert_with(|| Slot::new(session));
        let rx = slot.status.subscribe();
        match slot.status() {
            DesktopStatus::Queued(_)
            | DesktopStatus::Starting(_)
            | DesktopStatus::Resuming(_)
            | DesktopStatus::Ready(_)
            | DesktopStatus::Restarting(_) => return Ok(rx),
            DesktopStatus::Hibernating => {
                slot.resume_wanted = true;
                return Ok(rx);
            }
            DesktopStatus::Hibernated | DesktopStatus::Failed(_) | DesktopStatus::Stopped => {}
        }
        slot.session = session.clone();
        slot.hibernated |= session.hibernated_at.is_some();
        match queue::join(self, inner, &session.id) {
            Ok(()) => Ok(rx),
            Err(full) => Err(full),
        }
    }

    /// Starts the desktop of a slot that has a place (called with the lock held).
    fn begin_start(self: &Arc<Self>, slot: &mut Slot) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        slot.generation = generation;
        slot.resume_wanted = false;
        // From a saved state: a hibernation's, or (with several nodes) the last save of a
        // session whose node died, which leaves `hibernated_at` clear.
        let resuming = slot.hibernated || self.states.has_own_state(&slot.session.id);
        slot.status.send_replace(if resuming {
            DesktopStatus::Resuming(Piece::Xvnc)
        } else {
            DesktopStatus::Starting(Piece::Xvnc)
        });
        let (status, session) = (slot.status.clone(), slot.session.clone());
        // The start runs on its own task: a viewer that goes away mid-start does not
        // cancel it for the others, and shutdown waits for it.
        let this = self.clone();
        self.tasks
            .spawn(async move { this.start(session, status, generation, resuming).await });
    }

    fn is_current(&self, id: &str, generation: u64) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.slots.get(id).is_some_and(|s| s.generation == generation)
    }

    async fn start(
        self: Arc<Self>,
        session: Session,
        status: watch::Sender<DesktopStatus>,
        generation: u64,
        resuming: bool,
    ) {
        let id = session.id.clone();
        tracing::info!(session_id = %id, resuming, "desktop starting");
        let began = Instant::now();
        // A profile's state, or the session's own after a hibernation (None: fresh).
        let staged = self.states.restore_for(&session).await;
        let spec = DesktopSpec {
            id: id.clone(),
            width: self.limits.size.width,
            height: self.limits.size.height,
            start_url: session.start_url.clone(),
            restore: staged.as_ref().map(|s| s.restore.clone()),
        };
        let progress = |piece: Piece| {
            status.send_replace(if resuming {
                DesktopStatus::Resuming(piece)
            } else {
                DesktopStatus::Starting(piece)
            });
        };
        let result = self.runtime.start(spec, &progress).await;
        drop(staged);
        let handle = match result {
            Ok(handle) if self.is_current(&id, generation) => handle,
            Ok(_) => {
                // The session ended (or the server began to stop) while this desktop started.
                self.runtime.stop(&id).await;
                return;
            }
            Err(e) => {
                self.metrics.desktop_started(resuming, false, began.elapsed());
                tracing::error!(session_id = %id, error = %e, stderr_tail = e.stderr_tail().unwrap_or(""), "desktop failed to start");
                let mut inner = self.inner.lock().unwrap();
                if inner.slots.get(&id).is_some_and(|s| s.generation == generation) {
                    status.send_replace(DesktopStatus::Failed(Arc::new(e)));
                }
                queue::pump(&self, &mut inner);
                return;
            }
        };
        if resuming {
            // Recorded before anyone can use it: a hibernation that follows writes after.
            match self.sessions.set_hibernated(&id, false).await {
                Ok(_) => tracing::info!(session_id = %id, "desktop resumed"),
                Err(e) => tracing::error!(session_id = %id, error = %e, "could not record the resume; the session still reads hibernated"),
            }
        }
        // The session's files are in the desktop's Downloads before anyone can use it.
        let files = self.files.bind(&id, &handle).await;
        let handle = Arc::new(handle);
        if let Some(hook) = self.before_ready.get() {
            hook.before_ready(&session, &handle, resuming).await;
        }
        let published = {
            let mut inner = self.inner.lock().unwrap();
            match inner.slots.get_mut(&id) {
                Some(slot) if slot.generation == generation => {
                    slot.hibernated = false;
                    slot.idle_since = Instant::now();
                    status.send_replace(DesktopStatus::Ready(handle.clone()));
                    self.metrics.desktop_started(resuming, true, began.elapsed());
                    true
                }
                _ => false,
            }
        };
        if published {
            // Not on `self.tasks`: shutdown need not wait for it; it ends with the slot.
            drop(tokio::spawn(files.run(self.clone(), handle.clone())));
            drop(tokio::spawn(browser::follow(self.clone(), id, generation, handle, session.start_url)));
        } else {
            self.runtime.stop(&id).await;
        }
    }

    /// Waits until the desktop followed by `rx` (from [`Desktops::watch`]) is ready,
    /// through its place in line, its start or its resume.
    pub async fn ready(
        mut rx: watch::Receiver<DesktopStatus>,
    ) -> Result<Arc<DesktopHandle>, Unavailable> {
        loop {
            match rx.borrow_and_update().clone() {
                DesktopStatus::Ready(handle) => return Ok(handle),
                DesktopStatus::Failed(e) => return Err(Unavailable::Failed(e)),
                DesktopStatus::Stopped | DesktopStatus::Hibernated => {
                    return Err(Unavailable::Stopped);
                }
                DesktopStatus::Queued(_)
                | DesktopStatus::Starting(_)
                | DesktopStatus::Resuming(_)
                | DesktopStatus::Restarting(_)
                | DesktopStatus::Hibernating => {}
            }
            if rx.changed().await.is_err() {
                return Err(Unavailable::Stopped);
            }
        }
    }

    /// A connection found the desktop's VNC server gone: forget the desktop so the next
    /// connection starts a fresh one.
    pub async fn lost(&self, id: &str, handle: &Arc<DesktopHandle>) {
        let is_current = matches!(self.status(id), DesktopStatus::Ready(h) if Arc::ptr_eq(&h, handle));
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

    /// [`Desktops::stop`], if the slot still holds the start `generation` (its desktop was
    /// found stopped by the browser follower).
    async fn stop_if_current(&self, id: &str, generation: u64) {
        if self.is_current(id, generation) {
            self.stop(id).await;
        }
    }

    /// Stops the session's desktop without saving anything (lost, tampered with).
    pub async fn stop(&self, id: &str) {
        let removed = {
            let mut inner = self.inner.lock().unwrap();
            queue::remove(&mut inner, id);
            inner.slots.remove(id)
        };
        if let Some(slot) = removed {
            slot.status.send_replace(DesktopStatus::Stopped);
        }
        self.runtime.stop(id).await;
        // Its place is free now.
        self.wake.notify_one();
    }

    /// The session ended (expiry, revocation): a session persisting to a profile saves
    /// to it before its desktop stops, others just stop; then its own saved state is
    /// deleted. A hibernation in progress is waited for. Once per session: a second
    /// caller waits for the first to finish.
    pub async fn end_session(&self, id: &str) {
        let leader = {
            let mut endings = self.endings.lock().unwrap();
            match endings.get(id) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(false);
                    endings.insert(id.to_owned(), rx);
                    Ok(tx)
                }
            }
        };
        let done = match leader {
            Ok(done) => done,
            Err(mut follower) => {
                let _ = follower.wait_for(|done| *done).await;
                return;
            }
        };
        let removed = {
            let mut inner = self.inner.lock().unwrap();
            queue::remove(&mut inner, id);
            inner.slots.remove(id)
        };
        if let Some(slot) = removed {
            let status = slot.status();
            match status {
                DesktopStatus::Hibernating => {
                    // Its save finishes first (it publishes Hibernated when done).
                    let mut rx = slot.status.subscribe();
                    let _ = rx.wait_for(|s| !matches!(s, DesktopStatus::Hibernating)).await;
                }
                DesktopStatus::Ready(_)
                    if slot.session.profile_persist
                        && slot.session.profile.is_some()
                        && self.runtime.is_alive(id).await =>
                {
                    slot.status.send_replace(DesktopStatus::Stopped);
                    tracing::info!(session_id = %id, "session ended; saving its browser to its profile before the desktop stops");
                    if let Err(e) = self.states.save_and_stop(&slot.session).await {
                        tracing::warn!(session_id = %id, error = %e, "the ended session's state could not be saved to its profile; the profile keeps its previous version");
                    }
                }
                _ => {
                    slot.status.send_replace(DesktopStatus::Stopped);
                }
            }
        }
        self.runtime.stop(id).await;
        self.states.forget_session(id).await;
        self.wake.notify_one();
        self.endings.lock().unwrap().remove(id);
        done.send_replace(true);
    }

    /// Ends the desktop of every session that is no longer active.
    pub async fn end_ended(&self, sessions: &Sessions) {
        let ids: Vec<String> = self.inner.lock().unwrap().slots.keys().cloned().collect();
        for id in ids {
            let active = matches!(sessions.get(&id).await, Ok(Some(s)) if s.state == livesession_session::SessionState::Active);
            if !active {
                self.end_session(&id).await;
            }
        }
    }

    /// Deletes the own saved states (a hibernation's) of sessions that are no longer
    /// active: a restart, the lagged sweep or an aborted cleanup can leave them behind,
    /// since only [`Desktops::end_session`] deletes one. `sessions_dir` is the vault's
    /// `sessions/` directory (`<id>.lsstate` each); a session the store cannot be asked
    /// about keeps its state.
    pub async fn forget_states_of_ended(&self, sessions: &Sessions, sessions_dir: &std::path::Path) {
        let dir = sessions_dir.to_owned();
        let ids = match tokio::task::spawn_blocking(move || saved_session_ids(&dir)).await {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
            Ok(Err(e)) => {
                tracing::warn!(dir = %sessions_dir.display(), error = %e, "could not list the sessions' saved states");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the listing task failed");
                return;
            }
        };
        for id in ids {
            let ended = match sessions.is_over(&id).await {
                Ok(over) => over,
                Err(e) => {
                    tracing::warn!(session_id = %id, error = %e, "the session store failed; its saved state is kept");
                    false
                }
            };
            if ended {
                self.states.forget_session(&id).await;
            }
        }
    }

    pub async fn stop_all(&self) {
        let slots: Vec<Slot> = {
            let mut inner = self.inner.lock().unwrap();
            inner.closing = true;
            inner.queue.clear();
            inner.slots.drain().map(|(_, s)| s).collect()
        };
        for slot in slots {
            slot.status.send_replace(DesktopStatus::Stopped);
        }
        self.runtime.stop_all().await;
    }

    /// Sessions waiting in line, and connections (and task runs) waiting with them.
    pub fn queued(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        let connections = inner.queue.iter().map(|id| inner.holds(id)).sum();
        (inner.queue.len(), connections)
    }

    /// Whether a new session would find no desktop and no place in line: every desktop
    /// is in use and `--max-queued` sessions wait.
    pub fn queue_full(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.occupied() >= self.limits.max && inner.queue.len() >= self.limits.max_queued
    }
}

/// The ids of the sessions with an own saved state: the stems of `<dir>/*.lsstate`.
fn saved_session_ids(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".lsstate").filter(|id| !id.is_empty()) {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}
