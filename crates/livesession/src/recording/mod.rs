//! Screen recordings (docs/recordings.md): the server records a session's screen from its
//! own connection to the desktop, so a recording does not depend on anyone watching.
//! A session is recorded when it asked to be (`"record": true`) or the server records
//! every session (`--record`). `format.rs` is the file, `recorder.rs` one session's
//! recorder, `retention.rs` the sweep that deletes old recordings.
//!
//! A recorder never starts a desktop and holds no activity guard: a recorded session's
//! idle desktop hibernates as any other, and the recorder follows it when it resumes.

pub mod format;
mod recorder;
mod retention;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livesession_session::{Session, SessionState, Sessions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::desktops::Desktops;
use recorder::{Backoff, Entry, SegmentEnd, WriterEnd};

/// How often, with `--record`, the active sessions are looked over for one without a
/// recorder (a paid session just activated, a recorder that stopped on an error).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// What [`Recordings`] is configured with (`RecordingArgs`).
#[derive(Debug, Clone)]
pub struct RecordingSettings {
    /// `<data dir>/recordings`.
    pub dir: PathBuf,
    /// Record every session (`--record`).
    pub record_all: bool,
    /// A recording stops when its file reaches this size.
    pub max_bytes: u64,
    /// Recordings not written to for this long are deleted; `None`: kept.
    pub retention: Option<Duration>,
    /// How often the retention sweep runs.
    pub sweep_every: Duration,
}

pub struct Recordings {
    settings: RecordingSettings,
    desktops: Arc<Desktops>,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Sessions with a recorder running on this server.
    running: Mutex<HashSet<String>>,
}

/// Removes a session from the running set when its recorder ends, however it ends.
struct Running {
    recordings: Arc<Recordings>,
    id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.recordings.running.lock().unwrap().remove(&self.id);
    }
}

/// Session ids are hex (`new_session_id`); anything else names no recording (and no path
/// outside the recordings directory).
fn is_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

pub const FILE_SUFFIX: &str = ".lsrec.gz";

impl Recordings {
    pub fn new(
        settings: RecordingSettings,
        desktops: Arc<Desktops>,
        sessions: Arc<Sessions>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&settings.dir)?;
        // Sessions' screens: this server's user only.
        std::fs::set_permissions(
            &settings.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        Ok(Arc::new(Self {
            settings,
            desktops,
            sessions,
            shutdown,
            tasks,
            running: Mutex::default(),
        }))
    }

    /// The session's recording file, if it has one.
    pub fn file(&self, id: &str) -> Option<PathBuf> {
        if !is_session_id(id) {
            return None;
        }
        let path = self.path(id);
        path.is_file().then_some(path)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.settings.dir.join(format!("{id}{FILE_SUFFIX}"))
    }

    /// Whether a recorder is writing the session's recording now.
    pub fn is_recording(&self, id: &str) -> bool {
        self.running.lock().unwrap().contains(id)
    }

    /// Whether this session is to be recorded.
    pub fn wanted(&self, session: &Session) -> bool {
        session.state == SessionState::Active && (self.settings.record_all || session.record)
    }

    /// Starts the session's recorder if it is to be recorded and has none yet.
    pub fn ensure(self: &Arc<Self>, session: &Session) {
        if !self.wanted(session) || !is_session_id(&session.id) || self.shutdown.is_cancelled() {
            return;
        }
        if !self.running.lock().unwrap().insert(session.id.clone()) {
            return;
        }
        let running = Running {
            recordings: self.clone(),
            id: session.id.clone(),
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            this.record(&running.id).await;
            drop(running);
        });
    }

    /// Runs until shutdown: starts the recorders of active sessions (at start-up, and
    /// every few seconds with `--record`) and sweeps old recordings.
    pub async fn run(self: Arc<Self>) {
        self.reconcile().await;
        let mut next_sweep = Instant::now();
        loop {
            if Instant::now() >= next_sweep {
                retention::sweep(&self).await;
                next_sweep = Instant::now() + self.settings.sweep_every;
            }
            let wait = if self.settings.record_all {
                RECONCILE_EVERY
            } else {
                next_sweep.saturating_duration_since(Instant::now())
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if self.settings.record_all {
                self.reconcile().await;
            }
        }
    }

    async fn reconcile(self: &Arc<Self>) {
        match self.sessions.store().list_active_sessions().await {
            Ok(sessions) => sessions.iter().for_each(|s| self.ensure(s)),
            Err(e) => tracing::warn!(error = %e, "could not list the active sessions to record"),
        }
    }

    /// One session's recording, until the session ends, the server stops, or the
    /// recording reaches its size limit.
    async fn record(&self, id: &str) {
        // Subscribed before the state is read: an end after the read still arrives.
        let mut end = self.sessions.subscribe(id);
        if end.is_ended() || self.sessions.is_over(id).await.unwrap_or(true) {
            return;
        }
        let path = self.path(id);
        let open = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<Option<format::Writer>> {
                if path.exists() {
                    // After a restart: continue what was recorded (unless it ended).
                    match format::Writer::resume(&path) {
                        Ok(format::Resume::Writer(writer)) => return Ok(Some(writer)),
                        Ok(format::Resume::Ended) => return Ok(None),
                        // Not a recording (or unreadable): start afresh.
                        Ok(format::Resume::NotARecording) | Err(_) => {}
                    }
                }
                format::Writer::create(&path, recorder::now_ms()).map(Some)
            })
            .await
        };
        let writer = match open {
            Ok(Ok(Some(writer))) => writer,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::error!(session_id = %id, error = %e, "could not open the session's recording");
                return;
            }
            Err(e) => {
                tracing::error!(session_id = %id, error = %e, "the recording task failed");
                return;
            }
        };
        tracing::info!(session_id = %id, "recording the session's screen");
        let (tx, rx) = mpsc::channel::<Entry>(256);
        let writer_id = id.to_owned();
        let max_bytes = self.settings.max_bytes;
        let writing = tokio::task::spawn_blocking(move || {
            recorder::write_loop(writer, rx, max_bytes, &writer_id)
        });

        let mut backoff = Backoff::new();
        let end_reason = loop {
            let (handle, mut status) = tokio::select! {
                ready = recorder::next_ready(&self.desktops, id) => ready,
                ended = end.ended() => break Some(ended),
                _ = self.shutdown.cancelled() => break None,
            };
            let began = Instant::now();
            let segment = tokio::select! {
                segment = recorder::record_segment(&handle, &mut status, &tx) => segment,
                ended = end.ended() => break Some(ended),
                _ = self.shutdown.cancelled() => break None,
            };
            match segment {
                SegmentEnd::WriterGone => break None,
                SegmentEnd::DesktopLeft => {
                    tracing::info!(session_id = %id, "recording: the desktop stopped; the next one starts a new segment");
                }
                SegmentEnd::Closed(why) => {
                    let wait = backoff.after(began.elapsed());
                    tracing::info!(session_id = %id, why = %why, retry_in_ms = wait.as_millis() as u64, "recording: the connection to the desktop ended");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        ended = end.ended() => break Some(ended),
                        _ = self.shutdown.cancelled() => break None,
                    }
                }
            }
        };
        if let Some(ended) = end_reason {
            let why = match ended {
                livesession_session::SessionEnd::Expired => "the session expired",
                livesession_session::SessionEnd::Revoked => "the session was revoked",
            };
            let _ = tx
                .send(Entry {
                    kind: format::END,
                    at_ms: recorder::now_ms(),
                    bytes: why.as_bytes().to_vec(),
                })
                .await;
        }
        drop(tx);
        match writing.await {
            Ok(WriterEnd::Finished) => tracing::info!(session_id = %id, "recording closed"),
            Ok(WriterEnd::SizeLimit) => {}
            Ok(WriterEnd::Failed(e)) => {
                tracing::error!(session_id = %id, error = %e, "writing the recording failed; recording stops")
            }
            Err(e) => {
                tracing::error!(session_id = %id, error = %e, "the recording's writer failed")
            }
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.settings.dir
    }

    pub(crate) fn retention(&self) -> Option<Duration> {
        self.settings.retention
    }
}
