//! Follows the browser inside a ready desktop. The desktop's supervisor starts Chromium
//! again when it exits unasked (a crash, its last window closed: launcher.sh); this
//! publishes that as [`DesktopStatus::Restarting`] and then `Ready` again, so viewers see
//! `DESKTOP_STATUS restarting` then `ready`, and DevTools connections made meanwhile wait
//! for the new browser instead of failing. A desktop found stopped altogether is stopped
//! here at once, so its viewers hear of it now rather than on their next connection.

use std::sync::Arc;
use std::time::Duration;

use livesession_desktop::{BrowserState, DesktopHandle, devtools};

use super::{DesktopStatus, Desktops};

/// How often the supervisor's report is read: a restart shows within this.
const POLL: Duration = Duration::from_millis(250);

/// Runs while the session's slot still holds this start (`generation`) and its desktop
/// is `handle`, ready or restarting.
pub(super) async fn follow(
    desktops: Arc<Desktops>,
    id: String,
    generation: u64,
    handle: Arc<DesktopHandle>,
    start_url: String,
) {
    let mut restarting = false;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(status) = current(&desktops, &id, generation) else {
            return;
        };
        let ours = match &status {
            DesktopStatus::Ready(h) | DesktopStatus::Restarting(h) => Arc::ptr_eq(h, &handle),
            _ => false,
        };
        if !ours {
            return;
        }
        match desktops.runtime.browser_state(&id).await {
            BrowserState::Restarting { starts } if !restarting => {
                tracing::warn!(session_id = %id, starts, "the desktop's browser exited unasked; it is starting again");
                restarting = true;
                publish(&desktops, &id, generation, &handle, DesktopStatus::Restarting(handle.clone()));
            }
            BrowserState::Running { starts } if restarting => {
                tracing::info!(session_id = %id, starts, "the desktop's browser is back");
                restarting = false;
                if let Err(e) = reopen_if_empty(&handle, &start_url).await {
                    tracing::warn!(session_id = %id, error = %e, "could not reopen the start page in the restarted browser");
                }
                publish(&desktops, &id, generation, &handle, DesktopStatus::Ready(handle.clone()));
            }
            // Its saver (a login capture) stops it and ends the session next.
            BrowserState::Saving => return,
            BrowserState::Gone => {
                tracing::warn!(session_id = %id, "desktop stopped unexpectedly; a new one will start on the next connection");
                desktops.stop_if_current(&id, generation).await;
                return;
            }
            BrowserState::Restarting { .. } | BrowserState::Running { .. } => {}
        }
    }
}

/// The slot's status, if the slot still holds this start and the server is not closing.
fn current(desktops: &Desktops, id: &str, generation: u64) -> Option<DesktopStatus> {
    let inner = desktops.inner.lock().unwrap();
    if inner.closing {
        return None;
    }
    inner
        .slots
        .get(id)
        .filter(|slot| slot.generation == generation)
        .map(|slot| slot.status())
}

/// Publishes `next` if the slot still shows this desktop (ready or restarting): never over
/// a hibernation or a stop that began meanwhile.
fn publish(desktops: &Desktops, id: &str, generation: u64, handle: &Arc<DesktopHandle>, next: DesktopStatus) {
    let inner = desktops.inner.lock().unwrap();
    if let Some(slot) = inner.slots.get(id).filter(|slot| slot.generation == generation) {
        slot.status.send_if_modified(|status| match status {
            DesktopStatus::Ready(h) | DesktopStatus::Restarting(h) if Arc::ptr_eq(h, handle) => {
                *status = next;
                true
            }
            _ => false,
        });
    }
}

/// Chromium restores its last session's tabs, but only once it has written them (a few
/// seconds after a change): a browser that crashed sooner comes back with a new-tab page.
/// Then the session's start page is opened, as at its first start.
async fn reopen_if_empty(handle: &DesktopHandle, start_url: &str) -> std::io::Result<()> {
    // The restored tabs are listed once Chromium has opened them.
    let mut targets = Vec::new();
    for _ in 0..20 {
        targets = devtools::list_targets(&handle.devtools_socket).await?;
        if targets.iter().any(|t| t.kind == "page") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tabs = devtools::tabs_of(&targets);
    if tabs.is_empty() || tabs == ["about:blank"] {
        devtools::navigate(&handle.devtools_socket, start_url).await?;
    }
    Ok(())
}
