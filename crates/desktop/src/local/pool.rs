//! The warm pool: desktops started in advance on the server's default start page, so a new
//! session gets one in the time it takes to rename a directory (and, if it asked for
//! another page, to tell Chromium where to go; to set its cookies and open its tabs). A
//! desktop that starts from a saved profile never comes from the pool: the warm browser
//! already runs on a profile of its own. A warm desktop
//! is handed to exactly one session and stopped with it; it is never returned to the pool,
//! so every session has a fresh profile, home and uid. A background task refills the pool
//! one desktop at a time, which keeps it from competing with a burst of cold starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::Inner;
use crate::{DesktopHandle, DesktopSpec, devtools};

#[derive(Default)]
pub(super) struct WarmPool {
    /// Started desktops waiting for a session, by their warm id.
    ready: std::sync::Mutex<Vec<(String, DesktopHandle)>>,
    wake: Notify,
    closed: AtomicBool,
    next: AtomicU64,
}

impl WarmPool {
    pub fn ready(&self) -> usize {
        self.ready.lock().expect("pool").len()
    }

    /// Stops refilling (server shutdown); the desktops themselves are stopped with the rest.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.lock().expect("pool").clear();
        self.wake.notify_one();
    }
}

pub(super) fn spawn_refill(inner: &Arc<Inner>) {
    if inner.config.warm == 0 {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let inner = inner.clone();
    runtime.spawn(async move {
        let pool = &inner.pool;
        let (width, height) = inner.config.warm_size;
        while !pool.closed.load(Ordering::SeqCst) {
            if pool.ready() >= inner.config.warm {
                pool.wake.notified().await;
                continue;
            }
            let n = pool.next.fetch_add(1, Ordering::Relaxed);
            let id = format!("warm-{}-{n}", std::process::id());
            let spec = DesktopSpec {
                id: id.clone(),
                width,
                height,
                start_url: inner.config.warm_url.clone(),
                restore: None,
            };
            match inner.start_cold(spec, &|_| {}).await {
                Ok(handle) if !pool.closed.load(Ordering::SeqCst) => {
                    pool.ready.lock().expect("pool").push((id, handle));
                }
                Ok(_) => inner.stop(&id).await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not start a warm desktop; retrying in 10 s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    });
}

/// Hands a warm desktop to the session in `spec`, if one of its size is ready: renames its
/// directory to the session's, sets the cookies it restores, and navigates its page to the
/// session's first tab (its start URL), opening any further tabs.
pub(super) async fn take(inner: &Inner, spec: &DesktopSpec) -> Option<DesktopHandle> {
    if inner.config.warm == 0 || (spec.width, spec.height) != inner.config.warm_size {
        return None;
    }
    if spec.restore.as_ref().is_some_and(|r| r.user_data.is_some()) {
        return None;
    }
    let started = std::time::Instant::now();
    loop {
        let (warm_id, handle) = inner.pool.ready.lock().expect("pool").pop()?;
        inner.pool.wake.notify_one();
        if !inner.is_alive(&warm_id).await {
            inner.stop(&warm_id).await;
            continue;
        }
        match adopt(inner, &warm_id, handle, spec).await {
            Ok(handle) => {
                tracing::info!(session_id = %spec.id, warm_id = %warm_id,
                    elapsed_ms = started.elapsed().as_millis() as u64, "warm desktop handed out");
                return Some(handle);
            }
            Err(e) => {
                tracing::warn!(session_id = %spec.id, error = %e, "a warm desktop could not be handed out; starting one cold");
                inner.stop(&warm_id).await;
                inner.stop(&spec.id).await;
                return None;
            }
        }
    }
}

async fn adopt(
    inner: &Inner,
    warm_id: &str,
    mut handle: DesktopHandle,
    spec: &DesktopSpec,
) -> std::io::Result<DesktopHandle> {
    let new_dir = inner
        .desktop_dir(&spec.id)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let files = {
        let mut desktops = inner.desktops.lock().await;
        let mut desktop = desktops
            .remove(warm_id)
            .ok_or_else(|| std::io::Error::other("the warm desktop is gone"))?;
        // The sandbox mounted the directories by inode: renaming them on the host changes
        // nothing inside, and the sockets keep working under their new path.
        if let Err(e) = std::fs::rename(&desktop.dir, &new_dir) {
            desktops.insert(warm_id.to_owned(), desktop);
            return Err(e);
        }
        desktop.dir = new_dir.clone();
        let files = desktop.files();
        desktops.insert(spec.id.clone(), desktop);
        files
    };
    handle.id = spec.id.clone();
    handle.vnc_socket = files.socket("run/vnc.sock");
    handle.devtools_socket = files.socket("run/devtools.sock");
    let tabs = super::tabs_to_open(spec);
    let cookies = super::cookies_to_set(spec);
    // With cookies to set, the first tab loads (again) once they are.
    let first = (!cookies.is_empty() || tabs[0] != inner.config.warm_url).then_some(tabs[0].as_str());
    devtools::restore_tabs(&handle.devtools_socket, cookies, first, &tabs[1..]).await?;
    Ok(handle)
}
