//! Saved browser state: what a hibernating or ending session keeps, and what a resuming
//! session starts from. Ties the desktop runtime (which copies a browser's files out of a
//! desktop and into a new one) to the vault (`livesession-profiles`: compressed, encrypted
//! at rest). See docs/profiles.md.
//!
//! Where a session's state goes, and comes from:
//! - saved to its profile when it persists to one (`profile_persist`), else to the
//!   session's own state (deleted when the session ends);
//! - restored from the session's own state if there is one, else from its profile (a
//!   reader gets a copy: its own state is what it saves), else nothing (a fresh browser).

use std::path::PathBuf;
use std::sync::Arc;

use livesession_desktop::{DesktopRuntime, RestoreFrom};
use livesession_session::Session;

/// Why a state could not be saved. The desktop is stopped either way.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("saving the browser's state failed: {0}")]
    Failed(String),
}

/// Files staged for a desktop start; removed when dropped (after the start copied them).
pub struct Staged {
    pub restore: RestoreFrom,
    dir: Option<PathBuf>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub struct StateKeeper {
    runtime: Arc<dyn DesktopRuntime>,
    /// Server-owned scratch space on the data disk: states being packed or unpacked.
    staging: PathBuf,
    max_bytes: u64,
}

impl StateKeeper {
    pub fn new(runtime: Arc<dyn DesktopRuntime>, staging: PathBuf, max_bytes: u64) -> Arc<Self> {
        Arc::new(Self { runtime, staging, max_bytes })
    }

    /// Saves the running desktop's state for `session` (to its profile when it persists
    /// to one, else to its own state) and stops the desktop, whatever the outcome.
    pub async fn save_and_stop(&self, session: &Session) -> Result<(), SaveError> {
        // Filled in once the vault and the runtime's save land.
        let _ = (&self.staging, self.max_bytes);
        self.runtime.stop(&session.id).await;
        Err(SaveError::Failed("not available yet".into()))
    }

    /// What a new desktop for `session` starts from: its own saved state, else its
    /// profile's, else `None` (a fresh browser). A saved state that cannot be read (tampered,
    /// truncated) is logged and skipped: the browser starts clean, never with other state.
    pub async fn restore_for(&self, session: &Session) -> Option<Staged> {
        let _ = session;
        None
    }

    /// Whether the session has its own saved state (it hibernated).
    pub fn has_own_state(&self, session_id: &str) -> bool {
        let _ = session_id;
        false
    }

    /// The session ended: its own state is deleted (a persistent profile keeps what was
    /// saved to it).
    pub async fn forget_session(&self, session_id: &str) {
        let _ = session_id;
    }
}
