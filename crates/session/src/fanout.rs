//! Fan-out between servers that share a PostgreSQL store: what one server records and
//! another server's connections must hear of (a session's end, a viewer link's
//! revocation, a session's new deadline) goes out as a PostgreSQL notification on one
//! channel, and every other server applies it to its own subscribers.
//!
//! Notifications are transient: those sent while a server's listening connection was down
//! are gone. So after every reconnection the server resynchronises from the store: every
//! session and link its connections follow is read again, and every active session's
//! deadline scheduled again.
//!
//! With SQLite (one server) there is no fan-out: [`Sessions`] signals its own subscribers,
//! as it always does.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};

use crate::lifecycle::Sessions;
use crate::model::SessionEnd;

/// The one channel every server listens on.
pub const CHANNEL: &str = "livesession";

/// What one server tells the others. Ids only: each receiver reads what it needs from
/// the store (a notification's payload is limited to 8000 bytes, and is not a secret
/// channel: nothing in it is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// The session ended (the store recorded it): close its connections, stop its desktop.
    SessionEnded { session_id: String, end: EndKind },
    /// A viewer link was revoked: close the connections opened through it.
    LinkRevoked { session_id: String, link_id: String },
    /// The session's deadline moved (an extension): schedule its expiry anew.
    SessionExtended { session_id: String },
    /// One of the session's tasks has a new event (its cursor): followers of the
    /// session's tasks read on.
    TaskEvent { session_id: String, cursor: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    Expired,
    Revoked,
}

impl From<SessionEnd> for EndKind {
    fn from(end: SessionEnd) -> Self {
        match end {
            SessionEnd::Expired => EndKind::Expired,
            SessionEnd::Revoked => EndKind::Revoked,
        }
    }
}

impl From<EndKind> for SessionEnd {
    fn from(end: EndKind) -> Self {
        match end {
            EndKind::Expired => SessionEnd::Expired,
            EndKind::Revoked => SessionEnd::Revoked,
        }
    }
}

/// A notice as sent: with the sending server's id, so it skips its own.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    notice: Notice,
}

/// Sends notices to the other servers.
#[async_trait::async_trait]
pub trait Fanout: Send + Sync {
    async fn publish(&self, notice: Notice);
}

/// Fan-out through PostgreSQL's `NOTIFY` on the store's own database.
pub struct PgFanout {
    pool: PgPool,
    /// This server's id in notices (random per process).
    node: String,
}

impl PgFanout {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self { pool, node: crate::model::new_session_id() })
    }

    /// Listens for the other servers' notices and applies them to `sessions` until
    /// `shutdown`; resynchronises from the store after every (re)connection.
    pub async fn listen(self: Arc<Self>, sessions: Arc<Sessions>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut listener: Option<PgListener> = None;
        loop {
            let Some(l) = listener.as_mut() else {
                let connected = async {
                    let mut l = PgListener::connect_with(&self.pool).await?;
                    l.listen(CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                tokio::select! {
                    _ = &mut shutdown => return,
                    connected = connected => match connected {
                        Ok(l) => {
                            listener = Some(l);
                            // Whatever was sent before this connection listened is gone.
                            sessions.resync().await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "fan-out: cannot listen for the other servers' notices; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    },
                }
                continue;
            };
            tokio::select! {
                _ = &mut shutdown => return,
                received = l.try_recv() => match received {
                    Ok(Some(n)) => match serde_json::from_str::<Envelope>(n.payload()) {
                        Ok(envelope) if envelope.from != self.node => sessions.apply(envelope.notice).await,
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "fan-out: a notice that is not ours; ignored"),
                    },
                    // The connection was lost; try_recv reconnects on the next call, then
                    // we resynchronise.
                    Ok(None) => {
                        tracing::warn!("fan-out: the listening connection was lost; reconnecting and resynchronising");
                        listener = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "fan-out: listening failed; reconnecting in 1 s");
                        listener = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }
}

#[async_trait::async_trait]
impl Fanout for PgFanout {
    async fn publish(&self, notice: Notice) {
        let payload = serde_json::to_string(&Envelope { from: self.node.clone(), notice }).expect("serializable");
        // The others resynchronise when they reconnect; a notice that cannot be sent now is
        // logged, not retried (the store has what happened).
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&payload).execute(&self.pool).await {
            tracing::warn!(error = %e, "fan-out: a notice could not be sent to the other servers");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back_as_written_and_name_no_secret() {
        let notices = [
            Notice::SessionEnded { session_id: "s1".into(), end: EndKind::Revoked },
            Notice::LinkRevoked { session_id: "s1".into(), link_id: "l1".into() },
            Notice::SessionExtended { session_id: "s1".into() },
            Notice::TaskEvent { session_id: "s1".into(), cursor: 42 },
        ];
        for notice in notices {
            let text = serde_json::to_string(&Envelope { from: "n".into(), notice: notice.clone() }).unwrap();
            let back: Envelope = serde_json::from_str(&text).unwrap();
            assert_eq!(back.notice, notice, "{text}");
        }
        let text = serde_json::to_string(&Envelope {
            from: "n".into(),
            notice: Notice::SessionEnded { session_id: "s1".into(), end: EndKind::Expired },
        })
        .unwrap();
        assert_eq!(text, r#"{"from":"n","kind":"session_ended","session_id":"s1","end":"expired"}"#);
    }
}
