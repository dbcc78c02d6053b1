//! The wait queue: when every desktop (`--max-desktops`) is in use, a session that needs
//! one waits in line, first come first served, its connections told their place
//! (`Queued(n)`). A place frees when a desktop stops, fails or finishes hibernating; the
//! keeper (`idle.rs`) hibernates the least recently used idle desktop early while anyone
//! waits. A session whose last connection goes away leaves the line.
//!
//! Everything here runs with the desktops' lock held.

use std::sync::Arc;

use super::{DesktopStatus, Desktops, Inner, Unavailable};

/// Puts the session at the end of the line, then serves the line as far as places allow.
/// Refused when the line is full and the session did not get a place.
pub(super) fn join(desktops: &Arc<Desktops>, inner: &mut Inner, id: &str) -> Result<(), Unavailable> {
    if !inner.queue.iter().any(|q| q == id) {
        inner.queue.push_back(id.to_owned());
    }
    pump(desktops, inner);
    let waiting = inner.queue.len();
    if waiting > desktops.limits.max_queued && inner.queue.back().is_some_and(|last| last == id) {
        inner.queue.pop_back();
        if let Some(slot) = inner.slots.get_mut(id) {
            slot.status.send_replace(slot.at_rest());
        }
        tracing::warn!(session_id = %id, waiting = waiting - 1, "no desktop free and the wait queue is full; connection refused");
        return Err(Unavailable::QueueFull(waiting - 1));
    }
    if inner.queue.iter().any(|q| q == id) {
        // The keeper makes room: an idle desktop is hibernated early.
        desktops.wake.notify_one();
        tracing::info!(session_id = %id, position = inner.queue.iter().position(|q| q == id).map(|p| p + 1), "every desktop is in use; waiting in line");
    }
    Ok(())
}

/// Starts the first in line while places are free, then tells the rest their place.
/// (It does not wake the keeper: the keeper serves the line itself on each round.)
pub(super) fn pump(desktops: &Arc<Desktops>, inner: &mut Inner) {
    if inner.closing {
        return;
    }
    let mut occupied = inner.occupied();
    while occupied < desktops.limits.max {
        let Some(id) = inner.queue.pop_front() else { break };
        if let Some(slot) = inner.slots.get_mut(&id) {
            desktops.begin_start(slot);
            occupied += 1;
        }
    }
    renumber(inner);
}

/// Tells each session in line its place, where it changed.
fn renumber(inner: &mut Inner) {
    for (i, id) in inner.queue.iter().enumerate() {
        if let Some(slot) = inner.slots.get(id) {
            slot.status.send_if_modified(|s| {
                if matches!(s, DesktopStatus::Queued(p) if *p == i + 1) {
                    false
                } else {
                    *s = DesktopStatus::Queued(i + 1);
                    true
                }
            });
        }
    }
}

/// Takes the session out of the line (its status is left to the caller).
pub(super) fn remove(inner: &mut Inner, id: &str) -> bool {
    let before = inner.queue.len();
    inner.queue.retain(|q| q != id);
    let removed = inner.queue.len() != before;
    if removed {
        renumber(inner);
    }
    removed
}

/// The session's last connection went away while it waited: it leaves the line and its
/// desktop rests as it was (stopped or hibernated).
pub(super) fn leave(inner: &mut Inner, id: &str) -> bool {
    if !remove(inner, id) {
        return false;
    }
    if let Some(slot) = inner.slots.get_mut(id) {
        slot.status.send_replace(slot.at_rest());
    }
    true
}
