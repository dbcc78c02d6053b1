//! `GET /metrics`: the server's figures in the Prometheus text format, through the
//! Prometheus project's own client (`prometheus-client`). docs/operations.md lists every
//! metric, its labels, and alerts on them.
//!
//! Two kinds of figures:
//! - **read at scrape**, from where they already live: sessions by state (the store),
//!   desktops by status, the warm pool and the wait queue ([`crate::desktops::Desktops`]),
//!   the task queues (the task store), and the rate limits' refusal counts
//!   ([`crate::limits`], read by [`LimitsCollector`]);
//! - **counted where things happen**: desktop start and resume times (`desktops::start`),
//!   open WebSockets by kind ([`crate::app::ConnectionGuard`]), bytes relayed (the VNC
//!   proxy's and the CDP relay's client side, one atomic add per chunk or message),
//!   webhook deliveries by result, and the close codes the server sends ([`crate::ws`]).
//!
//! Labels carry only small fixed sets of values (kinds, states, results, close codes):
//! never a session id, a token, an address or anything a client chooses.
//!
//! Who may read it: the admin token on the main listener, or anyone who reaches
//! `--metrics-listen` (a private address for the scraper), where nothing else is served.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::app::{App, AppState};
use crate::error::ApiError;
use crate::limits::{ConnectionCaps, ConnectionLimits, RateClass};
use crate::proxy::ClientInfo;

/// What a WebSocket connection is for (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnKind {
    Vnc,
    Control,
    Cdp,
}

impl ConnKind {
    pub const ALL: [ConnKind; 3] = [ConnKind::Vnc, ConnKind::Control, ConnKind::Cdp];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnKind::Vnc => "vnc",
            ConnKind::Control => "control",
            ConnKind::Cdp => "cdp",
        }
    }
}

/// A webhook delivery's outcome (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// Verified and handled (a retried or duplicated event is handled again, idempotently).
    Processed,
    /// Verified, and its event id was already recorded: a retry or a duplicate.
    Duplicate,
    /// A missing, malformed, wrong or stale `Stripe-Signature` (400).
    InvalidSignature,
    /// Badly signed deliveries over their rate limit (429).
    RateLimited,
    /// Correctly signed, but not an event we can read (400).
    InvalidEvent,
    /// The body could not be read (400).
    BadRequest,
    /// The store failed or was busy (5xx): Stripe retries.
    Error,
    /// Checkout is not configured here (404).
    Disabled,
}

impl WebhookResult {
    pub const ALL: [WebhookResult; 8] = [
        WebhookResult::Processed,
        WebhookResult::Duplicate,
        WebhookResult::InvalidSignature,
        WebhookResult::RateLimited,
        WebhookResult::InvalidEvent,
        WebhookResult::BadRequest,
        WebhookResult::Error,
        WebhookResult::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Processed => "processed",
            WebhookResult::Duplicate => "duplicate",
            WebhookResult::InvalidSignature => "invalid_signature",
            WebhookResult::RateLimited => "rate_limited",
            WebhookResult::InvalidEvent => "invalid_event",
            WebhookResult::BadRequest => "bad_request",
            WebhookResult::Error => "error",
            WebhookResult::Disabled => "disabled",
        }
    }

    /// The result of a refused delivery, from the error it was answered with.
    pub fn of_error(e: &ApiError) -> Self {
        match e.code {
            "invalid_signature" => WebhookResult::InvalidSignature,
            "rate_limited" => WebhookResult::RateLimited,
            "invalid_event" => WebhookResult::InvalidEvent,
            "checkout_off" => WebhookResult::Disabled,
            _ if e.status.is_client_error() => WebhookResult::BadRequest,
            _ => WebhookResult::Error,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    kind: &'static str,
    runner: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabels {
    kind: &'static str,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    kind: &'static str,
    code: u16,
}

/// Desktop start and resume times, seconds: a warm desktop's hand-over is well under a
/// second, a cold start about one on two cores (docs/performance.md), a resume more.
const START_BUCKETS: [f64; 13] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0];

fn start_histogram() -> Histogram {
    Histogram::new(START_BUCKETS)
}

type StartFamily = Family<StartLabels, Histogram, fn() -> Histogram>;

/// The counters of one relayed connection's two directions, taken once per connection
/// so the hot path is one atomic add per chunk.
#[derive(Clone)]
pub struct RelayCounters {
    /// Bytes sent to the client (the desktop's screen, Chromium's messages).
    pub to_client: Counter,
    /// Bytes received from the client (RFB input before the filter, CDP commands).
    pub from_client: Counter,
}

pub struct Metrics {
    registry: Registry,
    /// One scrape at a time: the gauges read at scrape are set, then encoded.
    scrape: tokio::sync::Mutex<()>,
    // Read at scrape.
    store_up: Gauge,
    sessions: Family<StateLabel, Gauge>,
    desktops: Family<StatusLabel, Gauge>,
    desktops_live: Gauge,
    desktops_max: Gauge,
    desktops_warm: Gauge,
    desktops_hibernated: Gauge,
    desktops_queued: Gauge,
    desktops_queued_connections: Gauge,
    desktops_max_queued: Gauge,
    tasks: Family<TaskLabels, Gauge>,
    tasks_oldest_queued: Family<KindLabel, Gauge<f64, AtomicU64>>,
    tasks_stalled_leases: Family<KindLabel, Gauge>,
    task_workers: Family<WorkerLabels, Gauge>,
    // Counted where things happen.
    desktop_starts: StartFamily,
    connections: Family<KindLabel, Gauge>,
    connections_opened: Family<KindLabel, Counter>,
    relayed: Family<RelayLabels, Counter>,
    webhooks: Family<ResultLabel, Counter>,
    closes: Family<CloseLabels, Counter>,
    node_relays: Family<ResultLabel, Counter>,
    node_relays_open: Gauge,
}

/// What became of a request this node relayed to another (cluster/relay.rs).
pub const NODE_RELAY_RESULTS: [&str; 5] = ["websocket", "http", "unreachable", "failed", "moved"];

impl Metrics {
    /// The families, registered; the limits' refusal counts are read from `limits` (the
    /// WebSocket limits) and `cdp` (the DevTools endpoint's caps) at each scrape.
    pub fn new(limits: Arc<ConnectionLimits>, cdp: Arc<ConnectionCaps>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("livesession");
        let metrics = Metrics {
            scrape: tokio::sync::Mutex::new(()),
            store_up: Gauge::default(),
            sessions: Family::default(),
            desktops: Family::default(),
            desktops_live: Gauge::default(),
            desktops_max: Gauge::default(),
            desktops_warm: Gauge::default(),
            desktops_hibernated: Gauge::default(),
            desktops_queued: Gauge::default(),
            desktops_queued_connections: Gauge::default(),
            desktops_max_queued: Gauge::default(),
            tasks: Family::default(),
            tasks_oldest_queued: Family::default(),
            tasks_stalled_leases: Family::default(),
            task_workers: Family::default(),
            desktop_starts: Family::new_with_constructor(start_histogram as fn() -> Histogram),
            connections: Family::default(),
            connections_opened: Family::default(),
            relayed: Family::default(),
            webhooks: Family::default(),
            closes: Family::default(),
            node_relays: Family::default(),
            node_relays_open: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("store_up", "Whether the stores answered this scrape's queries (1) or not (0)", metrics.store_up.clone());
        r.register("sessions", "Sessions in the store by state", metrics.sessions.clone());
        r.register(
            "desktops",
            "Desktops of this server by status (failed: its last start failed, retried on the next connection)",
            metrics.desktops.clone(),
        );
        r.register(
            "desktops_live",
            "Desktops starting, running or being saved: what --max-desktops counts",
            metrics.desktops_live.clone(),
        );
        r.register("desktops_max", "The --max-desktops cap", metrics.desktops_max.clone());
        r.register("desktops_warm", "Warm desktops ready to be handed to a new session", metrics.desktops_warm.clone());
        r.register(
            "desktops_hibernated",
            "Active sessions whose desktop is hibernated (state saved, desktop stopped)",
            metrics.desktops_hibernated.clone(),
        );
        r.register("desktops_queued", "Sessions waiting in line for a desktop", metrics.desktops_queued.clone());
        r.register(
            "desktops_queued_connections",
            "Connections and task runs waiting with the sessions in line",
            metrics.desktops_queued_connections.clone(),
        );
        r.register("desktops_max_queued", "The --max-queued cap on sessions in line", metrics.desktops_max_queued.clone());
        r.register("tasks", "Tasks by kind and state (queued, running, waiting_for_person)", metrics.tasks.clone());
        r.register_with_unit(
            "tasks_oldest_queued",
            "Age of the oldest queued task of each kind (0 when none is queued)",
            Unit::Seconds,
            metrics.tasks_oldest_queued.clone(),
        );
        r.register(
            "tasks_stalled_leases",
            "Running or waiting tasks whose lease ran out and that were not swept yet",
            metrics.tasks_stalled_leases.clone(),
        );
        r.register(
            "task_workers",
            "Workers seen within two leases, by the kind they serve and whether they are built in",
            metrics.task_workers.clone(),
        );
        r.register_with_unit(
            "desktop_start",
            "Time from a desktop's start (kind=start) or resume from hibernation (kind=resume) to ready or failed",
            Unit::Seconds,
            metrics.desktop_starts.clone(),
        );
        r.register("connections", "Open WebSocket connections by kind", metrics.connections.clone());
        r.register("connections_opened", "WebSocket connections accepted by kind (refused ones included)", metrics.connections_opened.clone());
        r.register_with_unit(
            "relayed",
            "Bytes relayed between clients and desktops, by kind and direction (to_client, from_client)",
            Unit::Bytes,
            metrics.relayed.clone(),
        );
        r.register("webhook_events", "Stripe webhook deliveries by result", metrics.webhooks.clone());
        r.register("websocket_closes", "WebSocket close frames the server sent, by kind and close code", metrics.closes.clone());
        r.register(
            "node_relays",
            "Requests for a session's desktop relayed to the node running it, by result: websocket (relayed WebSocket), http (other relayed request), unreachable (the node could not be reached), failed (it failed the request), moved (a relayed request refused here: the session is placed elsewhere)",
            metrics.node_relays.clone(),
        );
        r.register("node_relays_open", "WebSockets relayed through this node to the nodes running their desktops, open now", metrics.node_relays_open.clone());
        r.register_collector(Box::new(LimitsCollector { limits, cdp }));
        for result in NODE_RELAY_RESULTS {
            let _ = metrics.node_relays.get_or_create(&ResultLabel { result });
        }

        // Every fixed label value is present from the start: a rate of a series that
        // appears with its first event is never seen by `rate()`.
        for kind in ConnKind::ALL {
            let _ = metrics.connections.get_or_create(&KindLabel { kind: kind.as_str() });
            let _ = metrics.connections_opened.get_or_create(&KindLabel { kind: kind.as_str() });
        }
        for kind in [ConnKind::Vnc, ConnKind::Cdp] {
            for direction in ["to_client", "from_client"] {
                let _ = metrics.relayed.get_or_create(&RelayLabels { kind: kind.as_str(), direction });
            }
        }
        for kind in ConnKind::ALL {
            for code in crate::ws::CloseCode::ALL {
                let _ = metrics.closes.get_or_create(&CloseLabels { kind: kind.as_str(), code: code.code() });
            }
        }
        for result in WebhookResult::ALL {
            let _ = metrics.webhooks.get_or_create(&ResultLabel { result: result.as_str() });
        }
        for kind in ["start", "resume"] {
            for result in ["ok", "failed"] {
                let _ = metrics.desktop_starts.get_or_create(&StartLabels { kind, result });
            }
        }
        Arc::new(Metrics { registry, ..metrics })
    }

    /// A desktop finished starting (or resuming): ready (`ok`) or failed, after `took`.
    pub fn desktop_started(&self, resuming: bool, ok: bool, took: Duration) {
        let labels = StartLabels {
            kind: if resuming { "resume" } else { "start" },
            result: if ok { "ok" } else { "failed" },
        };
        self.desktop_starts.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts a WebSocket connection of `kind` as open; the returned gauge is decremented
    /// when the connection ends ([`crate::app::ConnectionGuard`]).
    pub fn connection_opened(&self, kind: ConnKind) -> Gauge {
        let labels = KindLabel { kind: kind.as_str() };
        self.connections_opened.get_or_create(&labels).inc();
        let open = self.connections.get_or_create_owned(&labels);
        open.inc();
        open
    }

    /// The byte counters of one relayed connection of `kind`.
    pub fn relay_counters(&self, kind: ConnKind) -> RelayCounters {
        let counter = |direction| self.relayed.get_or_create_owned(&RelayLabels { kind: kind.as_str(), direction });
        RelayCounters {
            to_client: counter("to_client"),
            from_client: counter("from_client"),
        }
    }

    /// A request relayed to another node ended as `result` ([`NODE_RELAY_RESULTS`]).
    pub fn node_relay(&self, result: &'static str) {
        self.node_relays.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a relayed WebSocket as open; decrement the returned gauge when it ends.
    pub fn node_relay_opened(&self) -> Gauge {
        self.node_relays_open.inc();
        self.node_relays_open.clone()
    }

    pub fn webhook(&self, result: WebhookResult) {
        self.webhooks.get_or_create(&ResultLabel { result: result.as_str() }).inc();
    }

    /// The server sent a close frame with `code` on a connection of `kind`.
    pub fn close_sent(&self, kind: ConnKind, code: u16) {
        self.closes.get_or_create(&CloseLabels { kind: kind.as_str(), code }).inc();
    }

    /// Reads the figures kept elsewhere and encodes everything: the Prometheus text
    /// format (0.0.4), or OpenMetrics when `openmetrics`.
    pub async fn render(&self, app: &App, openmetrics: bool) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        self.read_at_scrape(app).await;
        let mut text = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        };
        // Writing into a String fails only if a metric's own encoding does.
        if let Err(e) = encoded {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        text
    }

    async fn read_at_scrape(&self, app: &App) {
        let mut store_up = true;
        match app.sessions.store().count_sessions().await {
            Ok(counts) => {
                for (state, n) in [
                    ("pending", counts.pending),
                    ("active", counts.active),
                    ("expired", counts.expired),
                    ("revoked", counts.revoked),
                ] {
                    self.sessions.get_or_create(&StateLabel { state }).set(gauge(n));
                }
                self.desktops_hibernated.set(gauge(counts.hibernated));
            }
            Err(e) => {
                store_up = false;
                tracing::error!(error = %e, "metrics: could not count sessions");
            }
        }

        let desktops = &app.desktops;
        for (status, n) in desktops.by_status() {
            self.desktops.get_or_create(&StatusLabel { status }).set(gauge(n));
        }
        self.desktops_live.set(gauge(desktops.live()));
        self.desktops_max.set(gauge(desktops.max()));
        self.desktops_warm.set(gauge(desktops.runtime().warm_ready()));
        let (queued, queued_connections) = desktops.queued();
        self.desktops_queued.set(gauge(queued));
        self.desktops_queued_connections.set(gauge(queued_connections));
        self.desktops_max_queued.set(gauge(desktops.max_queued()));

        let now = time::OffsetDateTime::now_utc();
        let store = app.queue.store();
        let since = now - crate::handlers::health::worker_alive_window(app);
        match (store.stats(now).await, store.workers_seen_since(since).await) {
            (Ok(stats), Ok(workers)) => {
                for (kind, s) in stats {
                    let k = kind.as_str();
                    for (state, n) in [
                        ("queued", s.queued),
                        ("running", s.running),
                        ("waiting_for_person", s.waiting_for_person),
                    ] {
                        self.tasks.get_or_create(&TaskLabels { kind: k, state }).set(gauge(n));
                    }
                    let oldest = s.oldest_queued_at.map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0));
                    self.tasks_oldest_queued.get_or_create(&KindLabel { kind: k }).set(oldest);
                    self.tasks_stalled_leases.get_or_create(&KindLabel { kind: k }).set(gauge(s.stalled_leases));
                    let serving: Vec<&str> = workers.iter().filter(|w| w.kinds.contains(&kind)).map(|w| w.worker.as_str()).collect();
                    let builtin = serving.iter().filter(|w| w.starts_with("builtin-")).count();
                    self.task_workers.get_or_create(&WorkerLabels { kind: k, runner: "builtin" }).set(gauge(builtin));
                    self.task_workers
                        .get_or_create(&WorkerLabels { kind: k, runner: "external" })
                        .set(gauge(serving.len() - builtin));
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                store_up = false;
                tracing::error!(error = %e, "metrics: could not read the task queues");
            }
        }
        self.store_up.set(i64::from(store_up));
    }
}

fn gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The rate limits' and connection caps' refusal counts, read at each scrape from the
/// limits themselves (which count them with plain atomics).
struct LimitsCollector {
    limits: Arc<ConnectionLimits>,
    cdp: Arc<ConnectionCaps>,
}

impl std::fmt::Debug for LimitsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitsCollector").finish_non_exhaustive()
    }
}

impl Collector for LimitsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "rate_limited",
            "Requests and WebSocket attempts refused by a rate limit, by class (admin_failure: refused while the address was locked out for wrong admin tokens).",
            None,
            MetricType::Counter,
        )?;
        for class in RateClass::ALL {
            let labels = [("class", class.as_str())];
            ConstCounter::new(self.limits.refusals(class)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "connection_cap_refusals",
            "Connections refused by a cap on open connections, by endpoint (websocket: VNC and control; cdp) and cap (per_ip, per_session).",
            None,
            MetricType::Counter,
        )?;
        for (endpoint, caps) in [("websocket", self.limits.caps()), ("cdp", &*self.cdp)] {
            let (per_ip, per_session) = caps.refusals();
            for (cap, n) in [("per_ip", per_ip), ("per_session", per_session)] {
                let labels = [("endpoint", endpoint), ("cap", cap)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- serving

/// Whether the scraper asked for OpenMetrics (Prometheus asks for it first).
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn respond(app: &App, headers: &HeaderMap) -> Response {
    let openmetrics = wants_openmetrics(headers);
    let body = app.metrics.render(app, openmetrics).await;
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    ([(CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

/// `GET /metrics` on the main listener: the admin token only (`401 unauthorized`
/// otherwise; a wrong token counts toward the admin lockout).
pub async fn admin_metrics(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::handlers::admin::require_admin(&app, client.ip, &headers)?;
    Ok(respond(&app, &headers).await)
}

/// `GET /metrics` on `--metrics-listen`: no token (the address is the protection).
async fn open_metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    respond(&app, &headers).await
}

/// What `--metrics-listen` serves: `/metrics` and nothing else (errors in the usual shape).
pub fn listener_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(open_metrics))
        .layer(axum::middleware::map_response(crate::error::json_errors))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        let rate = crate::limits::Rate::new(1.0, 1.0);
        let limits = ConnectionLimits::new(crate::limits::LimitsConfig {
            per_ip: 1,
            per_session: 10,
            connect: rate,
            create: rate,
            checkout: rate,
            token: rate,
            webhook_failures: rate,
            admin_failures: rate,
        });
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        limits.check(RateClass::Create, ip).unwrap();
        assert!(limits.check(RateClass::Create, ip).is_err());
        let _held = limits.acquire(ip, "s").unwrap();
        assert!(limits.acquire(ip, "t").is_err());
        Metrics::new(limits, ConnectionCaps::new(1, 1))
    }

    fn encode(m: &Metrics, openmetrics: bool) -> String {
        let mut text = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &m.registry).unwrap();
        }
        text
    }

    #[test]
    fn events_show_in_the_text_with_their_labels() {
        let m = metrics();
        let open = m.connection_opened(ConnKind::Vnc);
        m.relay_counters(ConnKind::Vnc).to_client.inc_by(1234);
        m.webhook(WebhookResult::InvalidSignature);
        m.close_sent(ConnKind::Control, 4010);
        m.desktop_started(false, true, Duration::from_millis(700));
        let text = encode(&m, false);
        for line in [
            "# TYPE livesession_connections gauge",
            "livesession_connections{kind=\"vnc\"} 1",
            "livesession_connections{kind=\"cdp\"} 0",
            "livesession_connections_opened_total{kind=\"vnc\"} 1",
            "livesession_relayed_bytes_total{kind=\"vnc\",direction=\"to_client\"} 1234",
            "livesession_relayed_bytes_total{kind=\"cdp\",direction=\"from_client\"} 0",
            "livesession_webhook_events_total{result=\"invalid_signature\"} 1",
            "livesession_webhook_events_total{result=\"processed\"} 0",
            "livesession_websocket_closes_total{kind=\"control\",code=\"4010\"} 1",
            "# TYPE livesession_desktop_start_seconds histogram",
            "livesession_desktop_start_seconds_bucket{kind=\"start\",result=\"ok\",le=\"1\"} 1",
            "livesession_desktop_start_seconds_bucket{kind=\"start\",result=\"ok\",le=\"0.5\"} 0",
            "livesession_desktop_start_seconds_count{kind=\"start\",result=\"ok\"} 1",
            "livesession_desktop_start_seconds_count{kind=\"resume\",result=\"failed\"} 0",
            "# TYPE livesession_rate_limited_total counter",
            "livesession_rate_limited_total{class=\"create\"} 1",
            "livesession_rate_limited_total{class=\"connect\"} 0",
            "livesession_connection_cap_refusals_total{endpoint=\"websocket\",cap=\"per_ip\"} 1",
            "livesession_connection_cap_refusals_total{endpoint=\"cdp\",cap=\"per_session\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        open.dec();
        assert!(encode(&m, false).lines().any(|l| l == "livesession_connections{kind=\"vnc\"} 0"));
        // OpenMetrics: the same figures, ended by `# EOF`.
        let om = encode(&m, true);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.lines().any(|l| l == "livesession_webhook_events_total{result=\"invalid_signature\"} 1"));
    }

    #[test]
    fn webhook_results_follow_the_answer() {
        use axum::http::StatusCode;
        let of = |status, code| WebhookResult::of_error(&ApiError::new(status, code, ""));
        assert_eq!(of(StatusCode::BAD_REQUEST, "invalid_signature"), WebhookResult::InvalidSignature);
        assert_eq!(of(StatusCode::TOO_MANY_REQUESTS, "rate_limited"), WebhookResult::RateLimited);
        assert_eq!(of(StatusCode::BAD_REQUEST, "bad_body"), WebhookResult::BadRequest);
        assert_eq!(of(StatusCode::SERVICE_UNAVAILABLE, "store_busy"), WebhookResult::Error);
        assert_eq!(of(StatusCode::INTERNAL_SERVER_ERROR, "internal"), WebhookResult::Error);
    }
}
