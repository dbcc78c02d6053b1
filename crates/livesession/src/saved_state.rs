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

use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livesession_desktop::{DesktopRuntime, RestoreFrom};
use livesession_profiles::{StateKey, StateMeta, Vault, VaultError};
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
    /// Which saved state it came from, for the log.
    pub from: StateKey,
    dir: Option<PathBuf>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            remove_staging(&dir);
        }
    }
}

fn remove_staging(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a staging directory");
    }
}

pub struct StateKeeper {
    runtime: Arc<dyn DesktopRuntime>,
    vault: Arc<Vault>,
    /// Server-owned scratch space on the data disk: states being packed or unpacked.
    staging: PathBuf,
    max_bytes: u64,
    next: AtomicU64,
    /// Profiles a save is being written to: not read, handed to a new writer, imported
    /// into or deleted until it lands (an ending writer's save takes seconds, and the
    /// store has already let the profile go).
    saving: Mutex<HashSet<String>>,
    saved: tokio::sync::Notify,
}

/// Marks a profile as being saved for as long as it lives.
struct SavingProfile<'a> {
    keeper: &'a StateKeeper,
    name: Option<String>,
}

impl Drop for SavingProfile<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.keeper.saving.lock().unwrap().remove(&name);
            self.keeper.saved.notify_waiters();
        }
    }
}

/// Where a session saves its state.
pub fn save_key(session: &Session) -> StateKey {
    match &session.profile {
        Some(name) if session.profile_persist => StateKey::Profile(name.clone()),
        _ => StateKey::Session(session.id.clone()),
    }
}

impl StateKeeper {
    /// Opens the vault in `vault_dir` and empties `staging` (what a crash left there is
    /// plaintext nobody needs).
    pub fn new(
        runtime: Arc<dyn DesktopRuntime>,
        vault_dir: &Path,
        master_key: [u8; 32],
        staging: PathBuf,
        max_bytes: u64,
    ) -> std::io::Result<Arc<Self>> {
        let vault = Arc::new(Vault::open(vault_dir, master_key, max_bytes)?);
        // Staged states are browser files in the clear: on a root server they live in a
        // tmpfs of their own (memory, gone with the machine), never on the data disk.
        let _ = nix::mount::umount2(&staging, nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&staging)?;
        if nix::unistd::geteuid().is_root() {
            // A cap, not a reservation: what is staged at once is a few saves or starts.
            if let Err(e) = nix::mount::mount(
                Some("livesession-staging"),
                &staging,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
                Some("size=50%,mode=0700"),
            ) {
                tracing::warn!(error = %e, "cannot mount a tmpfs for staged browser states; they are staged on the data disk");
            }
        } else {
            tracing::info!("not root: browser states are staged on the data disk while they are packed or unpacked");
        }
        Ok(Arc::new(Self {
            runtime,
            vault,
            staging,
            max_bytes,
            next: AtomicU64::new(0),
            saving: Mutex::default(),
            saved: tokio::sync::Notify::new(),
        }))
    }

    /// Server shutdown: empties the staging space and unmounts its tmpfs, so the data
    /// directory can be removed or moved.
    pub fn close(&self) {
        let _ = nix::mount::umount2(&self.staging, nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW);
        let _ = std::fs::remove_dir_all(&self.staging);
    }

    /// Whether a save to this profile is being written now.
    pub fn profile_busy(&self, name: &str) -> bool {
        self.saving.lock().unwrap().contains(name)
    }

    /// Waits (up to `limit`) until no save to this profile is being written.
    async fn wait_profile_saved(&self, name: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let saved = self.saved.notified();
            if !self.profile_busy(name) {
                return;
            }
            if tokio::time::timeout_at(deadline, saved).await.is_err() {
                tracing::warn!(profile = %name, "a save to the profile is still being written; reading the previous version");
                return;
            }
        }
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    fn staging_dir(&self, what: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.staging.join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Saves the running desktop's state for `session` (to its profile when it persists
    /// to one, else to its own state) and stops the desktop, whatever the outcome. A
    /// failed save keeps the previous version of the state.
    pub async fn save_and_stop(&self, session: &Session) -> Result<(), SaveError> {
        let key = save_key(session);
        let _saving = SavingProfile {
            keeper: self,
            name: match &key {
                StateKey::Profile(name) => {
                    self.saving.lock().unwrap().insert(name.clone());
                    Some(name.clone())
                }
                StateKey::Session(_) => None,
            },
        };
        let dir = self.staging_dir("save");
        let started = std::time::Instant::now();
        let saved = self.runtime.save_and_stop(&session.id, &dir, self.max_bytes).await;
        let copied_ms = started.elapsed().as_millis() as u64;
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                remove_staging(&dir);
                tracing::error!(session_id = %session.id, state = %key, error = %e, "could not read the browser's state; the previous saved state is kept");
                return Err(SaveError::Failed(e.to_string()));
            }
        };
        let meta = StateMeta {
            tabs: saved.tabs,
            cookies: saved.cookies,
            // Applied at this desktop's start: they are among its cookies now.
            imported_cookies: Vec::new(),
            saved_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .ok(),
            saved_by_session: Some(session.id.clone()),
        };
        let vault_key = key.clone();
        let files = dir.clone();
        let states = self.vault.clone();
        let result = tokio::task::spawn_blocking(move || states.save(&vault_key, &files, &meta)).await;
        remove_staging(&dir);
        match result {
            Ok(Ok(info)) => {
                tracing::info!(session_id = %session.id, state = %key, files = info.files,
                    unpacked_bytes = info.unpacked_bytes, stored_bytes = info.stored_bytes,
                    copy_ms = copied_ms, total_ms = started.elapsed().as_millis() as u64,
                    "browser state saved");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(session_id = %session.id, state = %key, error = %e, "could not save the browser's state; the previous saved state is kept");
                Err(SaveError::Failed(e.to_string()))
            }
            Err(e) => Err(SaveError::Failed(format!("the save task failed: {e}"))),
        }
    }

    /// What a new desktop for `session` starts from: its own saved state, else its
    /// profile's, else `None` (a fresh browser). A saved state that cannot be read
    /// (tampered, truncated, another key's) is logged and skipped: the browser starts
    /// clean, never with other state.
    pub async fn restore_for(&self, session: &Session) -> Option<Staged> {
        let mut keys = vec![StateKey::Session(session.id.clone())];
        if let Some(name) = &session.profile {
            keys.push(StateKey::Profile(name.clone()));
        }
        for key in keys {
            if let StateKey::Profile(name) = &key {
                self.wait_profile_saved(name, Duration::from_secs(60)).await;
            }
            // Nothing saved under the key: `restore` says so without creating `dir`.
            let dir = self.staging_dir("restore");
            let vault = self.vault.clone();
            let (k, d) = (key.clone(), dir.clone());
            let started = std::time::Instant::now();
            let restored = tokio::task::spawn_blocking(move || vault.restore(&k, &d)).await;
            let meta = match restored {
                Ok(Ok(Some(meta))) => meta,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    remove_staging(&dir);
                    match e {
                        VaultError::Corrupt(_) => tracing::error!(session_id = %session.id, state = %key, error = %e,
                            "a saved browser state cannot be read; the browser starts clean"),
                        e => tracing::error!(session_id = %session.id, state = %key, error = %e,
                            "could not restore a saved browser state; the browser starts clean"),
                    }
                    return None;
                }
                Err(e) => {
                    remove_staging(&dir);
                    tracing::error!(session_id = %session.id, error = %e, "the restore task failed");
                    return None;
                }
            };
            let has_files = std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(false);
            tracing::info!(session_id = %session.id, state = %key, tabs = meta.tabs.len(),
                elapsed_ms = started.elapsed().as_millis() as u64, "browser state unpacked for a start");
            // Session cookies (no expiry) are set again over DevTools before the tabs load:
            // Chromium drops them from its files at start, and a login often is one. The
            // others are in the restored files (without any, all of them are set). Then
            // the imported ones, which win. With none to set, the tabs open on Chromium's
            // command line, the faster start.
            let mut cookies: Vec<serde_json::Value> = meta
                .cookies
                .into_iter()
                .filter(|c| !has_files || c.get("session").and_then(serde_json::Value::as_bool).unwrap_or(true))
                .map(cookie_param)
                .collect();
            cookies.extend(meta.imported_cookies);
            return Some(Staged {
                restore: RestoreFrom {
                    user_data: has_files.then(|| dir.clone()),
                    tabs: meta.tabs,
                    cookies,
                },
                from: key,
                dir: Some(dir),
            });
        }
        None
    }

    /// Whether the session has its own saved state (it hibernated).
    pub fn has_own_state(&self, session_id: &str) -> bool {
        self.vault.info(&StateKey::Session(session_id.to_owned())).is_some()
    }

    /// The session ended: its own state is deleted (a persistent profile keeps what was
    /// saved to it).
    pub async fn forget_session(&self, session_id: &str) {
        let vault = self.vault.clone();
        let key = StateKey::Session(session_id.to_owned());
        match tokio::task::spawn_blocking(move || vault.delete(&key)).await {
            Ok(Ok(true)) => tracing::info!(session_id, "the ended session's saved state was deleted"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(session_id, error = %e, "could not delete the ended session's saved state"),
            Err(e) => tracing::warn!(session_id, error = %e, "the delete task failed"),
        }
    }
}

/// A saved `Network.Cookie` as a `Network.CookieParam` (`Storage.setCookies` takes
/// those): the fields a cookie is set with, without the ones Chromium computes.
fn cookie_param(cookie: serde_json::Value) -> serde_json::Value {
    const KEEP: &[&str] = &["name", "value", "domain", "path", "secure", "httpOnly", "sameSite", "expires", "priority", "sourceScheme", "sourcePort", "partitionKey"];
    match cookie {
        serde_json::Value::Object(mut map) => {
            map.retain(|k, _| KEEP.contains(&k.as_str()));
            // A session cookie is reported with expires -1; a param leaves it out.
            if map.get("expires").and_then(serde_json::Value::as_f64).is_some_and(|e| e < 0.0) {
                map.remove("expires");
            }
            serde_json::Value::Object(map)
        }
        other => other,
    }
}
