//! The PostgreSQL login store ([`LoginStore`]), on [`super::PgStore`]'s pool: the tables
//! come with its migrations (0004). The same statements as SQLite's, with `$n` parameters.

use sqlx::FromRow;
use sqlx::postgres::{PgPool, PgRow};
use time::OffsetDateTime;

use super::StoreError;
use super::logins::{Login, LoginOutcome, LoginStore, OutgoingEvent};
use super::rows::{EventRow, LoginRow, millis};

/// The PostgreSQL login store, on the session store's pool (same database).
#[derive(Clone)]
pub struct PgLogins {
    pool: PgPool,
}

impl PgLogins {
    /// The tables come with the session store's migrations (`PgStore::connect`).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn login_from_row(row: &PgRow) -> Result<Login, StoreError> {
    LoginRow::from_row(row)?.try_into()
}

fn event_from_row(row: &PgRow) -> Result<OutgoingEvent, StoreError> {
    EventRow::from_row(row)?.try_into()
}

#[async_trait::async_trait]
impl LoginStore for PgLogins {
    async fn insert_login(&self, login: &Login) -> Result<(), StoreError> {
        let done = serde_json::to_string(&login.done).expect("serializable");
        sqlx::query(
            "INSERT INTO logins (id, session_id, profile, done, created_at, outcome, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
             FROM logins WHERE session_id = $1",
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
            "UPDATE logins SET outcome = $1, finished_at = $2 WHERE id = $3 AND outcome IS NULL",
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
                 VALUES ($1, $2, $3, $4, $5, $6)",
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
        sqlx::query("UPDATE outgoing_events SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4")
            .bind(i64::from(attempts))
            .bind(millis(next_attempt_at))
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn event_delivered(&self, id: &str, attempts: u32, at: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE outgoing_events SET attempts = $1, delivered_at = $2, body = '', last_error = NULL WHERE id = $3")
            .bind(i64::from(attempts))
            .bind(millis(at))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn event_given_up(&self, id: &str, attempts: u32, at: OffsetDateTime, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE outgoing_events SET attempts = $1, given_up_at = $2, body = '', last_error = $3 WHERE id = $4")
            .bind(i64::from(attempts))
            .bind(millis(at))
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
