//! Rows as both backends store them, and their mapping to the model, shared by SQLite and
//! PostgreSQL: times are Unix milliseconds (UTC) in 64-bit integers on both, flags are
//! booleans (SQLite's 0/1 integers decode as such), durations are whole seconds.

use time::OffsetDateTime;

use super::StoreError;
use super::logins::{Login, LoginOutcome, OutgoingEvent};
use crate::model::{LinkRole, Session, SessionSource, SessionState, ViewerLink};
use crate::nodes::Node;

pub(super) fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(super) fn from_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

fn from_millis_opt(ms: Option<i64>) -> Result<Option<OffsetDateTime>, StoreError> {
    ms.map(from_millis).transpose()
}

/// The columns of `columns!()` (sqlite.rs, postgres.rs), in that order.
#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    id: String,
    state: String,
    source: String,
    start_url: String,
    created_at: i64,
    expires_at: i64,
    ended_at: Option<i64>,
    end_reason: Option<String>,
    checkout_session_id: Option<String>,
    payment_intent: Option<String>,
    activated_at: Option<i64>,
    claimed_at: Option<i64>,
    goal: Option<String>,
    profile: Option<String>,
    profile_persist: bool,
    idle_timeout_seconds: Option<i64>,
    hibernated_at: Option<i64>,
    record: bool,
    node_id: Option<String>,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        Ok(Session {
            id: row.id,
            state: SessionState::parse(&row.state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown state {:?}", row.state)))?,
            source: SessionSource::parse(&row.source)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown source {:?}", row.source)))?,
            start_url: row.start_url,
            created_at: from_millis(row.created_at)?,
            expires_at: from_millis(row.expires_at)?,
            ended_at: from_millis_opt(row.ended_at)?,
            end_reason: row.end_reason,
            checkout_session_id: row.checkout_session_id,
            payment_intent: row.payment_intent,
            activated_at: from_millis_opt(row.activated_at)?,
            claimed_at: from_millis_opt(row.claimed_at)?,
            goal: row.goal,
            profile: row.profile,
            profile_persist: row.profile_persist,
            idle_timeout_seconds: row
                .idle_timeout_seconds
                .map(|s| {
                    u32::try_from(s)
                        .map_err(|_| StoreError::Corrupt(format!("idle_timeout_seconds {s}")))
                })
                .transpose()?,
            hibernated_at: from_millis_opt(row.hibernated_at)?,
            record: row.record,
            node: row.node_id,
        })
    }
}

/// The columns of `link_columns!()`.
#[derive(sqlx::FromRow)]
pub(super) struct LinkRow {
    id: String,
    session_id: String,
    role: String,
    label: Option<String>,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl TryFrom<LinkRow> for ViewerLink {
    type Error = StoreError;

    fn try_from(row: LinkRow) -> Result<Self, StoreError> {
        Ok(ViewerLink {
            id: row.id,
            session_id: row.session_id,
            role: LinkRole::parse(&row.role)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown link role {:?}", row.role)))?,
            label: row.label,
            created_at: from_millis(row.created_at)?,
            revoked_at: from_millis_opt(row.revoked_at)?,
        })
    }
}

/// `id, session_id, profile, done, created_at, outcome, finished_at` of `logins`.
#[derive(sqlx::FromRow)]
pub(super) struct LoginRow {
    id: String,
    session_id: String,
    profile: String,
    done: String,
    created_at: i64,
    outcome: Option<String>,
    finished_at: Option<i64>,
}

impl TryFrom<LoginRow> for Login {
    type Error = StoreError;

    fn try_from(row: LoginRow) -> Result<Self, StoreError> {
        Ok(Login {
            id: row.id,
            session_id: row.session_id,
            profile: row.profile,
            done: serde_json::from_str(&row.done)
                .map_err(|e| StoreError::Corrupt(format!("login done condition: {e}")))?,
            created_at: from_millis(row.created_at)?,
            outcome: row
                .outcome
                .map(|o| {
                    LoginOutcome::parse(&o)
                        .ok_or_else(|| StoreError::Corrupt(format!("unknown login outcome {o:?}")))
                })
                .transpose()?,
            finished_at: from_millis_opt(row.finished_at)?,
        })
    }
}

/// `id, type, body, created_at, attempts, next_attempt_at` of `outgoing_events`.
#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    id: String,
    #[sqlx(rename = "type")]
    kind: String,
    body: String,
    created_at: i64,
    attempts: i64,
    next_attempt_at: i64,
}

impl TryFrom<EventRow> for OutgoingEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(OutgoingEvent {
            id: row.id,
            kind: row.kind,
            body: row.body,
            created_at: from_millis(row.created_at)?,
            attempts: row.attempts.clamp(0, i64::from(u32::MAX)) as u32,
            next_attempt_at: from_millis(row.next_attempt_at)?,
        })
    }
}

/// The columns of `node_columns!()` (sqlite.rs, postgres.rs), in that order.
#[derive(sqlx::FromRow)]
pub(super) struct NodeRow {
    id: String,
    addr: String,
    capacity: i64,
    live_desktops: i64,
    started_at: i64,
    heartbeat_at: i64,
    draining: bool,
}

impl TryFrom<NodeRow> for Node {
    type Error = StoreError;

    fn try_from(row: NodeRow) -> Result<Self, StoreError> {
        let count = |name: &str, n: i64| {
            u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("node {name} {n}")))
        };
        Ok(Node {
            capacity: count("capacity", row.capacity)?,
            live_desktops: count("live_desktops", row.live_desktops)?,
            started_at: from_millis(row.started_at)?,
            heartbeat_at: from_millis(row.heartbeat_at)?,
            id: row.id,
            addr: row.addr,
            draining: row.draining,
        })
    }
}
