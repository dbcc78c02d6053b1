//! Login captures and the events sent about them (migration 0008): which active sessions
//! are watched for a done condition, what became of them, and the outgoing events kept
//! until the operator's endpoint took them. docs/profiles.md, "Login capture", "Events".

use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use time::OffsetDateTime;

use super::StoreError;
use super::rows::{EventRow, LoginRow, millis};

/// When a login counts as done, as `POST /api/logins` takes it: `{"url_prefix": "…"}` or
/// `{"cookie": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DoneCondition {
    /// A tab's URL starts with this.
    UrlPrefix(String),
    /// The browser has a cookie of this name.
    Cookie(String),
}

/// What became of a login whose condition held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginOutcome {
    /// The browser's state was saved to the profile.
    Captured,
    /// Saving it failed: nothing new is in the profile.
    Failed,
}

impl LoginOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginOutcome::Captured => "captured",
            LoginOutcome::Failed => "failed",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "captured" => Some(LoginOutcome::Captured),
            "failed" => Some(LoginOutcome::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Login {
    pub id: String,
    pub session_id: String,
    pub profile: String,
    pub done: DoneCondition,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub outcome: Option<LoginOutcome>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// An event on its way to the operator's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    pub id: String,
    pub kind: String,
    /// The JSON body, exactly as it is signed and sent.
    pub body: String,
    pub created_at: OffsetDateTime,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at: OffsetDateTime,
}

#[async_trait::async_trait]
pub trait LoginStore: Send + Sync + 'static {
    async fn insert_login(&self, login: &Login) -> Result<(), StoreError>;
    async fn login_for_session(&self, session_id: &str) -> Result<Option<Login>, StoreError>;
    /// The logins whose session is still active (watched, or finished but not yet ended).
    async fn logins_of_active_sessions(&self) -> Result<Vec<Login>, StoreError>;
    /// Records the outcome of a login that has none yet, with the event to send about it
    /// (if any) in the same transaction. `false` if it already had an outcome.
    async fn finish_login(
        &self,
        login_id: &str,
        outcome: LoginOutcome,
        at: OffsetDateTime,
        event: Option<&OutgoingEvent>,
    ) -> Result<bool, StoreError>;
    /// Events neither delivered nor given up, oldest first.
    async fn pending_events(&self) -> Result<Vec<OutgoingEvent>, StoreError>;
    /// A failed attempt: how many so far, when the next is due, why (no URL, no secret).
    async fn event_attempt_failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Delivered: the body is dropped.
    async fn event_delivered(&self, id: &str, attempts: u32, at: OffsetDateTime) -> Result<(), StoreError>;
    /// No more attempts: the body is dropped.
    async fn event_given_up(&self, id: &str, attempts: u32, at: OffsetDateTime, error: &str) -> Result<(), StoreError>;
}

/// The SQLite login store, on the session store's pool (same file).
#[derive(Clone)]
pub struct SqliteLogins {
    pool: SqlitePool,
}

impl SqliteLogins {
    /// The tables come with the session store's migrations (`SqliteStore::open`).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

fn login_from_row(row: &SqliteRow) -> Result<Login, StoreError> {
    LoginRow::from_row(row)?.try_into()
}

fn event_from_row(row: &SqliteRow) -> Result<OutgoingEvent, StoreError> {
    EventRow::from_row(row)?.try_into()
}

#[async_trait::async_trait]
impl LoginStore for SqliteLogins {
    async fn insert_login(&self, login: &Login) -> Result<(), StoreError> {
        let done = serde_json::to_string(&login.done).expect("serializable");
        sqlx::query(
            "INSERT INTO logins (id, session_id, profile, done, created_at, outcome, finished_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&login.id)
        .bind(&login.session_id)
        .bind(&login.profile)
        .bind(done)
        .bind(millis(login.created_at))
        .bind(login.outcome.map(LoginOutcome::as_str))
        .bind(login.finished_at.map(millis))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn login_for_session(&self, session_id: &str) -> Result<Option<Login>, StoreError> {
        let row = sqlx::query(
            "SELECT id, session_id, profile, done, created_at, outcome, finished_at \
             FROM logins WHERE session_id = ?",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(login_from_row).transpose()
    }

    async fn logins_of_active_sessions(&self) -> Result<Vec<Login>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.id, l.session_id, l.profile, l.done, l.created_at, l.outcome, l.finished_at \
             FROM logins l JOIN sessions s ON s.id = l.session_id \
             WHERE s.state = 'active' ORDER BY l.created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(login_from_row).collect()
    }

    async fn finish_login(
        &self,
        login_id: &str,
        outcome: LoginOutcome,
        at: OffsetDateTime,
        event: Option<&OutgoingEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE logins SET outcome = ?, finished_at = ? WHERE id = ? AND outcome IS NULL",
        )
        .bind(outcome.as_str())
        .bind(millis(at))
        .bind(login_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        if let Some(event) = event {
            sqlx::query(
                "INSERT INTO outgoing_events (id, type, body, created_at, attempts, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&event.id)
            .bind(&event.kind)
            .bind(&event.body)
            .bind(millis(event.created_at))
            .bind(i64::from(event.attempts))
            .bind(millis(event.next_attempt_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn pending_events(&self) -> Result<Vec<OutgoingEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, type, body, created_at, attempts, next_attempt_at FROM outgoing_events \
             WHERE delivered_at IS NULL AND given_up_at IS NULL ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn event_attempt_failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE outgoing_events SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?")
            .bind(i64::from(attempts))
            .bind(millis(next_attempt_at))
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn event_delivered(&self, id: &str, attempts: u32, at: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE outgoing_events SET attempts = ?, delivered_at = ?, body = '', last_error = NULL WHERE id = ?")
            .bind(i64::from(attempts))
            .bind(millis(at))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn event_given_up(&self, id: &str, attempts: u32, at: OffsetDateTime, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE outgoing_events SET attempts = ?, given_up_at = ?, body = '', last_error = ? WHERE id = ?")
            .bind(i64::from(attempts))
            .bind(millis(at))
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_conditions_read_as_the_api_writes_them() {
        let url: DoneCondition = serde_json::from_str(r#"{"url_prefix": "https://a.example/home"}"#).unwrap();
        assert_eq!(url, DoneCondition::UrlPrefix("https://a.example/home".into()));
        let cookie: DoneCondition = serde_json::from_str(r#"{"cookie": "sid"}"#).unwrap();
        assert_eq!(serde_json::to_string(&cookie).unwrap(), r#"{"cookie":"sid"}"#);
        assert!(serde_json::from_str::<DoneCondition>(r#"{"url_prefix": "x", "cookie": "y"}"#).is_err());
        assert!(serde_json::from_str::<DoneCondition>(r#"{}"#).is_err());
    }
}
