//! What both backends share: the column lists (the two schemas keep the same columns,
//! and times as milliseconds since the Unix epoch in 64-bit integers), the conversions,
//! and the changes a claim, a transition, a cancel or a lease expiry makes to a task,
//! so the two stores cannot drift apart in what they write.

use time::OffsetDateTime;

use super::{StoreError, Transition, WriteError};
use crate::model::{EventNote, Lease, Task, TaskKind, TaskState, limits};

// Macros rather than consts so queries stay `&'static str` (sqlx 0.9 refuses built strings).
macro_rules! columns {
    () => {
        "id, session_id, kind, input, state, attempts, max_attempts, lease_id, lease_worker, \
         lease_until, result, error, seq, created_at, updated_at, finished_at"
    };
}

macro_rules! event_columns {
    () => {
        "cursor, task_id, session_id, seq, at, state, step, message, has_screenshot"
    };
}

/// The states in which a task is not final (`queued`, `running`, `waiting_for_person`).
macro_rules! open_states {
    () => {
        "('queued', 'running', 'waiting_for_person')"
    };
}

macro_rules! active_states {
    () => {
        "('running', 'waiting_for_person')"
    };
}

/// The largest screenshot stored with an event; a larger one is dropped (the event is
/// written without it, and its message says so).
pub const MAX_SCREENSHOT_BYTES: usize = 2 * 1024 * 1024;

/// A claim rewrites its worker's last sighting only once it is [`super::SEEN_GRANULARITY`]
/// old (or the kinds change), so an idle worker's empty look commits no change. Heartbeats
/// (a third of a lease apart) always write.
pub(super) const SEEN_GRANULARITY_MS: i64 = super::SEEN_GRANULARITY.as_millis() as i64;

pub(super) fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(super) fn from_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

pub(super) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(super) fn corrupt(what: &str, value: impl std::fmt::Debug) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

/// At most `max` characters of `s`.
pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => s[..at].to_owned(),
        None => s.to_owned(),
    }
}

pub(super) fn kinds_list(kinds: &[TaskKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `limit` for a listing: 0 means `default`; never more than `max`.
pub(super) fn clamp_limit(limit: u32, default: u32, max: u32) -> i64 {
    i64::from(if limit == 0 { default } else { limit.min(max) })
}

/// Why a write naming `lease_id` is refused, or `None` if the lease is current at `now`.
pub(super) fn lease_refusal(
    task: &Task,
    lease_id: &str,
    now: OffsetDateTime,
) -> Option<WriteError> {
    let reason = match &task.lease {
        Some(lease) if lease.id == lease_id => {
            if millis(lease.until) < millis(now) {
                ": it ran out"
            } else {
                return None;
            }
        }
        _ if task.state == TaskState::Cancelled => ": it was cancelled",
        _ if task.state.is_final() => ": the task is finished",
        // Another lease, or none (queued again after this one ran out).
        _ => ": it ran out",
    };
    Some(WriteError::LeaseLost(reason.to_owned()))
}

/// A claim of `task` by `worker`: running, one more attempt, a new lease (`lease_id`).
/// Returns the event's message.
pub(super) fn claim_change(
    task: &mut Task,
    worker: &str,
    lease_id: String,
    lease_until: OffsetDateTime,
    now: OffsetDateTime,
) -> String {
    task.state = TaskState::Running;
    task.attempts += 1;
    task.lease = Some(Lease {
        id: lease_id,
        worker: worker.to_owned(),
        until: lease_until,
    });
    task.seq += 1;
    task.updated_at = now;
    format!(
        "claimed by {worker}, attempt {} of {}",
        task.attempts, task.max_attempts
    )
}

/// A heartbeat of the task's (checked) lease to `until`: never shortens it. Returns the
/// lease's worker.
pub(super) fn heartbeat_change(task: &mut Task, until: OffsetDateTime) -> String {
    match &mut task.lease {
        Some(lease) => {
            if millis(until) > millis(lease.until) {
                lease.until = until;
            }
            lease.worker.clone()
        }
        None => unreachable!("lease_refusal passed, so the task has a lease"),
    }
}

/// What an event is written with, besides the task's seq and state.
pub(super) struct EventParts {
    pub step: Option<u32>,
    pub message: Option<String>,
    pub screenshot: Option<Vec<u8>>,
}

/// A lease holder's change (the lease already checked): the new state, result or error,
/// and the event's parts (an oversized screenshot dropped, with a note in the message).
pub(super) fn transition_change(
    task: &mut Task,
    change: Transition,
    note: EventNote,
    now: OffsetDateTime,
) -> Result<EventParts, WriteError> {
    let EventNote {
        step,
        mut message,
        screenshot,
    } = note;
    match change {
        Transition::Progress => {}
        Transition::WaitForPerson => {
            if task.state != TaskState::Running {
                return Err(WriteError::WrongState(task.state.as_str()));
            }
            task.state = TaskState::WaitingForPerson;
        }
        Transition::Resume => {
            if task.state != TaskState::WaitingForPerson {
                return Err(WriteError::WrongState(task.state.as_str()));
            }
            task.state = TaskState::Running;
        }
        Transition::Succeed(result) => {
            let size = result.to_string().len();
            if size > limits::MAX_RESULT_BYTES {
                // Refusing would leave the task running with nothing the worker can
                // do about it; a failure says what happened.
                let error = format!(
                    "the result is too large: {size} bytes (at most {})",
                    limits::MAX_RESULT_BYTES
                );
                tracing::warn!(task = %task.id, size, "task result over the limit; the task fails");
                message = Some(error.clone());
                task.state = TaskState::Failed;
                task.error = Some(error);
            } else {
                task.state = TaskState::Succeeded;
                task.result = Some(result);
            }
        }
        Transition::Fail(error) => {
            let error = truncate(&error, limits::MAX_MESSAGE_CHARS);
            if message.is_none() {
                message = Some(error.clone());
            }
            task.state = TaskState::Failed;
            task.error = Some(error);
        }
    }
    if task.state.is_final() {
        task.lease = None;
        task.finished_at = Some(now);
    }
    let screenshot = match screenshot {
        Some(image) if image.len() > MAX_SCREENSHOT_BYTES => {
            tracing::warn!(task = %task.id, bytes = image.len(), "screenshot over 2 MiB dropped");
            let dropped = format!("(screenshot of {} bytes dropped: over 2 MiB)", image.len());
            message = Some(match message {
                Some(m) => format!("{} {dropped}", truncate(&m, limits::MAX_MESSAGE_CHARS)),
                None => dropped,
            });
            None
        }
        other => other,
    };
    task.seq += 1;
    task.updated_at = now;
    Ok(EventParts {
        step,
        message,
        screenshot,
    })
}

/// Cancelling `task` with `reason`: returns the (truncated) reason, the event's message.
pub(super) fn cancel_change(task: &mut Task, reason: &str, now: OffsetDateTime) -> String {
    let reason = truncate(reason, limits::MAX_MESSAGE_CHARS);
    task.state = TaskState::Cancelled;
    task.lease = None;
    task.error = Some(reason.clone());
    task.seq += 1;
    task.updated_at = now;
    task.finished_at = Some(now);
    reason
}

/// A lease that ran out: queued again, or failed once the attempts are used up. Returns
/// the event's message.
pub(super) fn expire_change(task: &mut Task, now: OffsetDateTime) -> String {
    let worker = task
        .lease
        .take()
        .map(|l| l.worker)
        .unwrap_or_else(|| "?".into());
    let message = if task.attempts >= task.max_attempts {
        task.state = TaskState::Failed;
        task.error = Some("worker lost".into());
        task.finished_at = Some(now);
        format!(
            "worker lost: lease of {worker} ran out; failed after {} of {} attempts",
            task.attempts, task.max_attempts
        )
    } else {
        task.state = TaskState::Queued;
        format!(
            "worker lost: lease of {worker} ran out; queued again (attempt {} of {})",
            task.attempts + 1,
            task.max_attempts
        )
    };
    task.seq += 1;
    task.updated_at = now;
    message
}
