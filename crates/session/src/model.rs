use serde::{Deserialize, Serialize};
use sha2::Digest;
use time::OffsetDateTime;

/// Where a session came from: recorded so operators can tell free, API and paid sessions apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionSource {
    /// Started from the landing page while the server runs in free mode.
    Free,
    /// Created by an operator through the admin API or CLI.
    Api,
    /// Paid for through Stripe Checkout (or a Payment Link).
    Checkout,
}

impl SessionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionSource::Free => "free",
            SessionSource::Api => "api",
            SessionSource::Checkout => "checkout",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "free" => Some(SessionSource::Free),
            "api" => Some(SessionSource::Api),
            "checkout" => Some(SessionSource::Checkout),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Waiting for its payment to be confirmed.
    Pending,
    Active,
    Expired,
    Revoked,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::Active => "active",
            SessionState::Expired => "expired",
            SessionState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(SessionState::Pending),
            "active" => Some(SessionState::Active),
            "expired" => Some(SessionState::Expired),
            "revoked" => Some(SessionState::Revoked),
            _ => None,
        }
    }
}

/// Why a session ended; every connection of the session is closed with this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    Expired,
    Revoked,
}

impl SessionEnd {
    pub fn state(self) -> SessionState {
        match self {
            SessionEnd::Expired => SessionState::Expired,
            SessionEnd::Revoked => SessionState::Revoked,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub id: String,
    pub state: SessionState,
    pub source: SessionSource,
    pub start_url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
    /// The Stripe Checkout Session (`cs_…`) that paid for it.
    pub checkout_session_id: Option<String>,
    /// The Stripe PaymentIntent (`pi_…`), which refunds name.
    pub payment_intent: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub activated_at: Option<OffsetDateTime>,
    /// When a browser claimed a paid session (one browser per checkout).
    #[serde(with = "time::serde::rfc3339::option")]
    pub claimed_at: Option<OffsetDateTime>,
    /// The goal written at checkout: an agent task starts with it once the payment is
    /// confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    /// The named profile the session's browser starts from (docs/profiles.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Whether the session saves its browser's state back to `profile` when it
    /// hibernates or ends (the profile's one writer).
    pub profile_persist: bool,
    /// Seconds without a viewer, DevTools client or running task before the desktop
    /// hibernates; `None`: the server's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u32>,
    /// When the desktop was hibernated (state saved, desktop stopped); `None` while it
    /// runs, or before it first started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub hibernated_at: Option<OffsetDateTime>,
    /// Whether the session asked for its screen to be recorded (docs/recordings.md).
    pub record: bool,
    /// The node its desktop is placed on (docs/scaling.md, "Placement"); `None` before
    /// its first placement, and always with one node.
    pub node: Option<String>,
}

impl Session {
    /// The end that applies to this session at `now`, if any: a recorded end, or an
    /// expiry deadline that has passed but was not yet recorded.
    pub fn end_at(&self, now: OffsetDateTime) -> Option<SessionEnd> {
        match self.state {
            SessionState::Revoked => Some(SessionEnd::Revoked),
            SessionState::Expired => Some(SessionEnd::Expired),
            SessionState::Active if now >= self.expires_at => Some(SessionEnd::Expired),
            SessionState::Active | SessionState::Pending => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub source: SessionSource,
    pub start_url: String,
    pub ttl: time::Duration,
    /// A named profile to start from, and whether to save back to it.
    pub profile: Option<ProfileUse>,
    pub idle_timeout_seconds: Option<u32>,
    /// Record the session's screen (docs/recordings.md).
    pub record: bool,
}

/// How a session uses a named profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileUse {
    pub name: String,
    /// Save the session's state back (one writer per profile); otherwise the session
    /// reads a copy and its changes are not kept.
    pub persist: bool,
}

/// A new session id: 128 bits from the OS RNG, hex encoded. Ids are not secrets (the
/// access token is), but unguessable ids keep one session's URLs from naming another's.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a viewer link lets its holder do: drive the desktop, or only watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkRole {
    Interactive,
    View,
}

impl LinkRole {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkRole::Interactive => "interactive",
            LinkRole::View => "view",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "interactive" => Some(LinkRole::Interactive),
            "view" => Some(LinkRole::View),
            _ => None,
        }
    }
}

/// An extra way into a session: a link with its own role, revocable on its own. The
/// link's secret is not part of it: only a hash of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewerLink {
    pub id: String,
    pub session_id: String,
    pub role: LinkRole,
    pub label: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A viewer link's secret: 256 bits from the OS RNG, hex encoded. Shown once, never stored.
pub fn new_link_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    hex(&bytes)
}

/// What the store keeps of a link's secret: its SHA-256, hex encoded. The secret has 256
/// random bits, so an unsalted hash cannot be reversed; a copy of the database opens nothing.
pub fn link_secret_hash(secret: &str) -> String {
    hex(&sha2::Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_hex() {
        let a = new_session_id();
        let b = new_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn link_secrets_are_random_and_only_their_hash_is_kept() {
        let secret = new_link_secret();
        assert_eq!(secret.len(), 64);
        assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(secret, new_link_secret());
        let hash = link_secret_hash(&secret);
        assert_eq!(hash.len(), 64);
        assert_ne!(hash, secret);
        assert_eq!(hash, link_secret_hash(&secret));
        // SHA-256 of "abc", the standard test vector.
        assert_eq!(
            link_secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn an_active_session_past_its_deadline_counts_as_expired() {
        let now = OffsetDateTime::now_utc();
        let mut s = Session {
            id: new_session_id(),
            state: SessionState::Active,
            source: SessionSource::Api,
            start_url: "about:blank".into(),
            created_at: now,
            expires_at: now + time::Duration::seconds(10),
            ended_at: None,
            end_reason: None,
            checkout_session_id: None,
            payment_intent: None,
            activated_at: Some(now),
            claimed_at: None,
            goal: None,
            profile: None,
            profile_persist: false,
            idle_timeout_seconds: None,
            hibernated_at: None,
            record: false,
            node: None,
        };
        assert_eq!(s.end_at(now), None);
        assert_eq!(
            s.end_at(now + time::Duration::seconds(10)),
            Some(SessionEnd::Expired)
        );
        s.state = SessionState::Revoked;
        assert_eq!(s.end_at(now), Some(SessionEnd::Revoked));
    }
}
