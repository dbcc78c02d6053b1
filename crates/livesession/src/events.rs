//! Signed events to the operator's endpoint (`LIVESESSION_EVENTS_URL`): `login.captured`
//! and `login.failed`, POSTed as JSON with a `Livesession-Signature` header
//! (`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, as Stripe signs its webhooks), retried
//! with exponential backoff until delivered or a day has passed. Events are kept in the
//! store until then, so a restart resumes their retries. docs/profiles.md, "Events".
//!
//! Delivery never runs on a request's path, and neither the secret nor the endpoint's
//! full URL (which may carry credentials) is ever logged: only its scheme and host.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use livesession_session::store::{LoginStore, OutgoingEvent};
use serde_json::Value;
use sha2::Sha256;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ProfileArgs;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Livesession-Signature";
/// The first retry comes this long after a failed attempt; each next one twice as late…
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// …up to this.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// No attempt is made later than this after the event was created.
const GIVE_UP_AFTER: time::Duration = time::Duration::hours(24);
/// One attempt: connect, send, read the status.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint and its key, from the configuration.
#[derive(Clone)]
pub struct EventsTarget {
    url: reqwest::Url,
    secret: String,
}

impl std::fmt::Debug for EventsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsTarget")
            .field("url", &redact_url(self.url.as_str()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl EventsTarget {
    /// The configured endpoint, `None` when events are off, or why the configuration
    /// cannot start (never quoting the URL or the secret).
    pub fn from_config(args: &ProfileArgs) -> Result<Option<Self>, String> {
        let Some(url) = args.events_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let Some(secret) = args.events_secret.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Err("LIVESESSION_EVENTS_URL (--events-url) needs LIVESESSION_EVENTS_SECRET \
                        (--events-secret), the key events are signed with: without it the \
                        receiver could not tell our events from forged ones (docs/profiles.md#events)"
                .into());
        };
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
            .ok_or("LIVESESSION_EVENTS_URL (--events-url) must be an http:// or https:// URL with a host")?;
        Ok(Some(Self { url: parsed, secret: secret.to_owned() }))
    }
}

/// The `Livesession-Signature` value for `body` sent at unix time `t`.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A URL as it may be logged: scheme, host and port; no credentials, path or query.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            (Some(host), None) => format!("{}://{host}", u.scheme()),
            _ => format!("{}:…", u.scheme()),
        },
        Err(_) => "<invalid URL>".into(),
    }
}

/// How long to wait after the `attempts`-th failed attempt: 1 s doubling, at most 5 min.
fn retry_delay(attempts: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32.checked_shl(attempts.saturating_sub(1)).unwrap_or(u32::MAX));
    doubled.min(MAX_RETRY)
}

/// An id for an event: `evt_` and 128 random bits in hex.
fn new_event_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    format!("evt_{}", hex::encode(bytes))
}

struct Delivery {
    target: EventsTarget,
    client: reqwest::Client,
}

/// Sends events; one task per event until it is delivered or given up.
pub struct Events {
    delivery: Option<Delivery>,
    store: Arc<dyn LoginStore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Events {
    pub fn new(
        target: Option<EventsTarget>,
        store: Arc<dyn LoginStore>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let delivery = target.map(|target| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                // A redirect is an answer other than 2xx: retried, never followed.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(ATTEMPT_TIMEOUT)
                .timeout(ATTEMPT_TIMEOUT)
                .user_agent(concat!("livesession/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("an HTTP client with the installed TLS provider");
            Delivery { target, client }
        });
        Arc::new(Self { delivery, store, tasks, shutdown })
    }

    /// Whether an endpoint is configured.
    pub fn enabled(&self) -> bool {
        self.delivery.is_some()
    }

    /// A new event of `kind` about `data`, ready to be stored and delivered; `None` when
    /// no endpoint is configured (nothing is kept then).
    pub fn compose(&self, kind: &str, data: Value, now: OffsetDateTime) -> Option<OutgoingEvent> {
        self.delivery.as_ref()?;
        let id = new_event_id();
        let body = serde_json::json!({
            "id": id,
            "type": kind,
            "created": now.unix_timestamp(),
            "data": data,
        })
        .to_string();
        Some(OutgoingEvent { id, kind: kind.to_owned(), body, created_at: now, attempts: 0, next_attempt_at: now })
    }

    /// Starts delivering a stored event, on its own task.
    pub fn deliver(self: &Arc<Self>, event: OutgoingEvent) {
        if self.delivery.is_none() {
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move { this.run(event).await });
    }

    /// At start-up: resumes the events a previous run left undelivered.
    pub async fn resume(self: &Arc<Self>) {
        let Some(delivery) = &self.delivery else { return };
        match self.store.pending_events().await {
            Ok(pending) => {
                if !pending.is_empty() {
                    tracing::info!(events = pending.len(), endpoint = %redact_url(delivery.target.url.as_str()), "resuming event deliveries");
                }
                for event in pending {
                    self.deliver(event);
                }
            }
            Err(e) => tracing::error!(error = %e, "could not read the events left to deliver"),
        }
    }

    async fn run(self: Arc<Self>, event: OutgoingEvent) {
        let Some(delivery) = &self.delivery else { return };
        let mut attempts = event.attempts;
        let mut next = event.next_attempt_at;
        loop {
            let wait = (next - OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            attempts += 1;
            let outcome = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                outcome = attempt(delivery, &event.body) => outcome,
            };
            let now = OffsetDateTime::now_utc();
            match outcome {
                Ok(status) => {
                    tracing::info!(event_id = %event.id, event_type = %event.kind, attempts, status, "event delivered");
                    if let Err(e) = self.store.event_delivered(&event.id, attempts, now).await {
                        tracing::error!(event_id = %event.id, error = %e, "could not record an event's delivery");
                    }
                    return;
                }
                Err(why) => {
                    let delay = retry_delay(attempts);
                    next = now + delay;
                    if next > event.created_at + GIVE_UP_AFTER {
                        tracing::error!(event_id = %event.id, event_type = %event.kind, attempts, error = %why,
                            "event not delivered within 24 h; given up");
                        if let Err(e) = self.store.event_given_up(&event.id, attempts, now, &why).await {
                            tracing::error!(event_id = %event.id, error = %e, "could not record an event given up");
                        }
                        return;
                    }
                    tracing::warn!(event_id = %event.id, event_type = %event.kind, attempts, error = %why,
                        retry_in_ms = delay.as_millis() as u64, "event delivery failed; will retry");
                    if let Err(e) = self.store.event_attempt_failed(&event.id, attempts, next, &why).await {
                        tracing::error!(event_id = %event.id, error = %e, "could not record a failed event delivery");
                    }
                }
            }
        }
    }
}

/// One POST of `body`, signed now. `Ok(status)` for a 2xx answer, else why not (never
/// the URL: reqwest's errors name it, and it may carry credentials).
async fn attempt(delivery: &Delivery, body: &str) -> Result<u16, String> {
    let t = OffsetDateTime::now_utc().unix_timestamp();
    let response = delivery
        .client
        .post(delivery.target.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sign(&delivery.target.secret, t, body))
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| describe_error(e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("the endpoint answered HTTP {}", status.as_u16()))
    }
}

/// A request error and its causes, without the URL.
fn describe_error(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>, secret: Option<&str>) -> ProfileArgs {
        ProfileArgs {
            idle_timeout: 600,
            profile_max_mib: 200,
            max_queued: 100,
            login_ttl: 900,
            events_url: url.map(str::to_owned),
            events_secret: secret.map(str::to_owned),
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"whsec_test", b"1700000000.{\"id\":\"evt_1\"}", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign("whsec_test", 1_700_000_000, r#"{"id":"evt_1"}"#),
            "t=1700000000,v1=c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925"
        );
    }

    #[test]
    fn retries_double_from_a_second_to_five_minutes() {
        let delays: Vec<u64> = (1..=12).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn urls_are_logged_by_scheme_and_host_only() {
        assert_eq!(redact_url("https://user:pw@hooks.example:8443/in?key=abc"), "https://hooks.example:8443");
        assert_eq!(redact_url("http://127.0.0.1/x"), "http://127.0.0.1");
        assert_eq!(redact_url("not a url"), "<invalid URL>");
    }

    #[test]
    fn an_endpoint_needs_a_secret_and_a_web_url() {
        assert!(EventsTarget::from_config(&args(None, None)).unwrap().is_none());
        assert!(EventsTarget::from_config(&args(None, Some("s"))).unwrap().is_none());
        let missing = EventsTarget::from_config(&args(Some("https://u:pw@x.example/h"), None)).unwrap_err();
        assert!(missing.contains("LIVESESSION_EVENTS_SECRET"), "{missing}");
        assert!(!missing.contains("pw@"), "the URL is not quoted: {missing}");
        assert!(EventsTarget::from_config(&args(Some("https://x.example/h"), Some(" "))).is_err());
        let scheme = EventsTarget::from_config(&args(Some("ftp://u:pw@x.example/h"), Some("s"))).unwrap_err();
        assert!(!scheme.contains("pw@"), "{scheme}");
        let ok = EventsTarget::from_config(&args(Some("https://u:pw@x.example/h"), Some("k"))).unwrap().unwrap();
        let debug = format!("{ok:?}");
        assert!(!debug.contains("pw") && !debug.contains("\"k\""), "{debug}");
    }
}
