//! Configuration: every setting is a flag and a `LIVESESSION_*` environment variable.
//! `docs/config.md` is the operator's copy of this file; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};
use livesession_desktop::egress::{Cidr, EgressMode, EgressPolicy};
use livesession_desktop::{LocalRuntimeConfig, ResourceLimits, ToolPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, human-readable when it is.
    Auto,
    Json,
    Pretty,
}

/// Settings every command shares.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Directory for the SQLite database, generated secrets and desktops' private dirs.
    #[arg(
        long,
        env = "LIVESESSION_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,
    #[arg(
        long,
        env = "LIVESESSION_LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub log_format: LogFormat,
}

/// How desktops are made (used by `serve` and `doctor`).
#[derive(Debug, Clone, Args)]
pub struct DesktopArgs {
    /// Screen size of each desktop, WIDTHxHEIGHT (depth is 24).
    #[arg(long, env = "LIVESESSION_DESKTOP_SIZE", default_value = "1280x720")]
    pub desktop_size: DesktopSize,
    /// The TigerVNC X server binary.
    #[arg(long, env = "LIVESESSION_XVNC", default_value = "Xvnc")]
    pub xvnc: String,
    #[arg(long, env = "LIVESESSION_OPENBOX", default_value = "openbox")]
    pub openbox: String,
    #[arg(long, env = "LIVESESSION_CHROMIUM", default_value = "chromium")]
    pub chromium: String,
    /// socat, which relays Chromium's DevTools out of the desktop.
    #[arg(long, env = "LIVESESSION_SOCAT", default_value = "socat")]
    pub socat: String,
    /// bubblewrap, the desktops' sandbox.
    #[arg(long, env = "LIVESESSION_BWRAP", default_value = "bwrap")]
    pub bwrap: String,
    /// slirp4netns, the user-mode network stack of desktops with `--egress internet`.
    #[arg(long, env = "LIVESESSION_SLIRP4NETNS", default_value = "slirp4netns")]
    pub slirp4netns: String,
    /// Seconds a desktop may take to become ready.
    #[arg(long, env = "LIVESESSION_DESKTOP_START_TIMEOUT", default_value_t = 60)]
    pub desktop_start_timeout: u64,
    /// Extra Chromium switches for every desktop, space-separated, after the built-in
    /// ones (a later switch wins), e.g. "--lang=de --force-dark-mode".
    #[arg(long, env = "LIVESESSION_CHROMIUM_FLAGS", default_value = "", allow_hyphen_values = true)]
    pub chromium_flags: String,
    /// Run each desktop in its own bubblewrap sandbox (user, PID, IPC, network
    /// namespaces; no view of the data directory or other desktops). Turning it off lets
    /// a session's browser read this machine's files: only for hosts without user namespaces.
    #[arg(long, env = "LIVESESSION_SANDBOX", default_value_t = true, action = ArgAction::Set)]
    pub sandbox: bool,
    /// What a desktop's browser can reach: `none` (only itself) or `internet` (through
    /// slirp4netns, never the host's loopback, private ranges or link-local/metadata).
    #[arg(long, env = "LIVESESSION_EGRESS", default_value = "none")]
    pub egress: EgressMode,
    /// With `--egress internet`: the only destinations allowed (IPv4 addresses or CIDRs);
    /// a listed private address is allowed even though its range is blocked.
    #[arg(long, env = "LIVESESSION_EGRESS_ALLOW", value_delimiter = ',')]
    pub egress_allow: Vec<Cidr>,
    /// With `--egress internet`: destinations refused on top of the built-in blocked ranges.
    #[arg(long, env = "LIVESESSION_EGRESS_DENY", value_delimiter = ',')]
    pub egress_deny: Vec<Cidr>,
    /// Ports of this machine's loopback that every desktop's browser may open, as
    /// http://127.0.0.1:PORT (e.g. a local web app under test). Nothing else of the host
    /// is reachable.
    #[arg(long, env = "LIVESESSION_DESKTOP_HOST_PORTS", value_delimiter = ',')]
    pub desktop_host_ports: Vec<u16>,
    /// Memory limit per desktop in MiB (cgroups; 0 for none).
    #[arg(long, env = "LIVESESSION_DESKTOP_MEMORY_MIB", default_value_t = 2048)]
    pub desktop_memory_mib: u64,
    /// Hard CPU cap per desktop in cores, e.g. 1.5 (cgroup quota; 0 for none). Without a
    /// cap, desktops still share the CPU equally under contention (each has its own
    /// cgroup, all of the same weight); a cap of one core doubled cold starts on a
    /// two-core machine.
    #[arg(long, env = "LIVESESSION_DESKTOP_CPUS", default_value_t = 0.0)]
    pub desktop_cpus: f64,
    /// Limit on processes and threads per desktop (cgroups; 0 for none).
    #[arg(long, env = "LIVESESSION_DESKTOP_PIDS_MAX", default_value_t = 4096)]
    pub desktop_pids_max: u64,
    /// Size cap of a desktop's writable space, MiB: its home (browser profile, downloads)
    /// is a tmpfs of this size, its run directory one of 64 MiB (0 for no cap;
    /// applied when the server runs as root with the sandbox on). Counts toward the
    /// desktop's memory limit as it fills.
    #[arg(long, env = "LIVESESSION_DESKTOP_DISK_MIB", default_value_t = 1024)]
    pub desktop_disk_mib: u64,
    /// Desktops kept started in advance and handed to new sessions (each to one session
    /// only, never reused). Each costs an idle desktop's memory.
    #[arg(long, env = "LIVESESSION_WARM_DESKTOPS", default_value_t = 1)]
    pub warm_desktops: usize,
    /// When the server runs as root, desktop n runs as host uid BASE+n: a uid range no
    /// account on this machine uses.
    #[arg(long, env = "LIVESESSION_SANDBOX_UID_BASE", default_value_t = 2_000_000_000)]
    pub sandbox_uid_base: u32,
}

impl DesktopArgs {
    pub fn tools(&self) -> ToolPaths {
        ToolPaths {
            xvnc: self.xvnc.clone(),
            openbox: self.openbox.clone(),
            chromium: self.chromium.clone(),
            socat: self.socat.clone(),
            bwrap: self.bwrap.clone(),
            slirp4netns: self.slirp4netns.clone(),
            ..ToolPaths::default()
        }
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.desktop_start_timeout)
    }

    /// Where desktops' directories go; see [`desktops_root`].
    pub fn desktops_root(&self, data_dir: &Path) -> PathBuf {
        desktops_root(data_dir, self.sandbox)
    }

    /// The local runtime's configuration, with its desktops' directories under `root`.
    pub fn runtime_config(&self, root: PathBuf, stop_grace: Duration) -> LocalRuntimeConfig {
        let nonzero = |v: u64| (v > 0).then_some(v);
        LocalRuntimeConfig {
            root,
            tools: self.tools(),
            start_timeout: self.start_timeout(),
            stop_grace,
            sandbox: self.sandbox,
            egress: EgressPolicy {
                mode: self.egress,
                allow: self.egress_allow.clone(),
                deny: self.egress_deny.clone(),
            },
            host_ports: self.desktop_host_ports.clone(),
            limits: ResourceLimits {
                memory_bytes: nonzero(self.desktop_memory_mib).map(|m| m * 1024 * 1024),
                cpus: (self.desktop_cpus > 0.0).then_some(self.desktop_cpus),
                pids: nonzero(self.desktop_pids_max),
            },
            writable_mib: nonzero(self.desktop_disk_mib),
            uid_base: self.sandbox_uid_base,
            warm: self.warm_desktops,
            warm_size: (self.desktop_size.width, self.desktop_size.height),
            warm_url: "about:blank".into(),
            chromium_flags: self.chromium_flags.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

pub use livesession_desktop::desktops_root;

/// A PostgreSQL connection URL. It may hold a password: its `Debug` and `Display` show
/// it without one, and only [`DatabaseUrl::expose`] gives the whole text.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(text).map_err(|_| {
            "not a URL; expected postgres://user:password@host:port/database (leave it unset for SQLite)".to_owned()
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "unsupported scheme {:?}: only postgres:// (or postgresql://) is taken; leave it unset for the SQLite file in the data directory",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host".into());
        }
        Ok(Self(text.to_owned()))
    }

    /// The whole URL, password included: for the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match reqwest::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.set_query(None);
                f.write_str(url.as_str())
            }
            Err(_) => f.write_str("(unparsable URL)"),
        }
    }
}

/// The nodes' shared secret (`--cluster-secret`): never shown.
#[derive(Clone)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    pub const MIN_CHARS: usize = 32;

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.chars().count() < Self::MIN_CHARS {
            return Err(format!(
                "too short: at least {} characters, the same on every node (e.g. `openssl rand -hex 32`)",
                Self::MIN_CHARS
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(***)")
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Filled from the common `--data-dir`.
    #[arg(skip)]
    pub data_dir: PathBuf,
    /// Address and port to listen on.
    #[arg(long, env = "LIVESESSION_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The store: unset, a SQLite file in the data directory; `postgres://…` (or
    /// `postgresql://…`), a PostgreSQL database, which several servers can share.
    #[arg(long, env = "LIVESESSION_DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrl::parse)]
    pub database_url: Option<DatabaseUrl>,
    /// This server's id among the nodes sharing the store (`GET /api/nodes`). Defaults to
    /// the host's name and the listening port.
    #[arg(long, env = "LIVESESSION_NODE_ID")]
    pub node_id: Option<String>,
    /// The address other nodes reach this one at (host:port). Defaults to the listening
    /// address.
    #[arg(long, env = "LIVESESSION_NODE_ADDR")]
    pub node_addr: Option<String>,
    /// Seconds between this node's heartbeats in the store.
    #[arg(long, env = "LIVESESSION_NODE_HEARTBEAT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub node_heartbeat: u64,
    /// A node whose last heartbeat is older than this many seconds is dead to the others.
    #[arg(long, env = "LIVESESSION_NODE_DEAD_AFTER", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub node_dead_after: u64,
    /// The secret the nodes sharing a PostgreSQL store authenticate their relayed
    /// requests with (docs/scaling.md): set (the same on every node, at least 32
    /// characters), each session's desktop is placed on one node and the others relay
    /// its WebSockets there; unset, every node serves the sessions it is asked for itself.
    #[arg(long, env = "LIVESESSION_CLUSTER_SECRET", hide_env_values = true, value_parser = ClusterSecret::parse)]
    pub cluster_secret: Option<ClusterSecret>,
    /// Where what every node must see is kept: secrets, saved profiles and hibernated
    /// sessions' states (encrypted), session files and recordings. Defaults to the data
    /// directory; with several nodes, a directory they all mount (docs/scaling.md).
    #[arg(long, env = "LIVESESSION_SHARED_DIR")]
    pub shared_dir: Option<PathBuf>,
    /// The admin bearer token. If unset, one is generated on first start and kept in
    /// `<data dir>/secrets/admin.token`.
    #[arg(long, env = "LIVESESSION_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The URL browsers use to reach this server (scheme, host, port), e.g. behind a
    /// reverse proxy. Defaults to `http://<listen address>`.
    #[arg(long, env = "LIVESESSION_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Extra origins allowed to open WebSockets, comma-separated (the public URL's origin
    /// and the request's own host are always allowed).
    #[arg(long, env = "LIVESESSION_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Free mode: the landing page offers "Start a session" to anyone who can open it.
    /// Defaults to on without payment keys and off with them.
    #[arg(long, env = "LIVESESSION_FREE_MODE", action = ArgAction::Set)]
    pub free_mode: Option<bool>,
    /// The page a new session's Chromium opens when none is given.
    #[arg(long, env = "LIVESESSION_START_URL", default_value = "about:blank")]
    pub start_url: String,
    /// Default session lifetime, in seconds.
    #[arg(long, env = "LIVESESSION_SESSION_TTL", default_value_t = 86_400)]
    pub session_ttl: u64,
    /// Lifetime of a free-mode session (the landing page's "Start a session"), in
    /// seconds; at most `--max-session-ttl`.
    #[arg(long, env = "LIVESESSION_FREE_SESSION_TTL", default_value_t = 3_600)]
    pub free_session_ttl: u64,
    /// Free-mode sessions one client address may have live (not ended) at once; one
    /// more gets 429 `free_session_limit`. 0 for no limit.
    #[arg(long, env = "LIVESESSION_MAX_FREE_SESSIONS_PER_IP", default_value_t = 2)]
    pub max_free_sessions_per_ip: u32,
    /// Longest lifetime the admin API may ask for, in seconds.
    #[arg(long, env = "LIVESESSION_MAX_SESSION_TTL", default_value_t = 7 * 86_400)]
    pub max_session_ttl: u64,
    /// Lifetime of access tokens, in seconds; browsers refresh them with their refresh cookie.
    #[arg(long, env = "LIVESESSION_ACCESS_TOKEN_TTL", default_value_t = 900)]
    pub access_token_ttl: u64,
    /// WebSocket connections one client address may hold.
    #[arg(
        long,
        env = "LIVESESSION_MAX_CONNECTIONS_PER_IP",
        default_value_t = 100
    )]
    pub max_connections_per_ip: usize,
    /// WebSocket connections one session may have (control and VNC together).
    #[arg(
        long,
        env = "LIVESESSION_MAX_CONNECTIONS_PER_SESSION",
        default_value_t = 20
    )]
    pub max_connections_per_session: usize,
    /// WebSocket connection attempts per second per client address, sustained.
    #[arg(long, env = "LIVESESSION_CONNECT_RATE", default_value_t = 10.0)]
    pub connect_rate: f64,
    /// WebSocket connection attempts a client address may make in a burst.
    #[arg(long, env = "LIVESESSION_CONNECT_BURST", default_value_t = 40.0)]
    pub connect_burst: f64,
    /// Session creations (`POST /api/sessions`, free-mode `POST /start`) per second per
    /// client address, sustained.
    #[arg(long, env = "LIVESESSION_CREATE_RATE", default_value_t = 1.0)]
    pub create_rate: f64,
    /// Session creations a client address may make in a burst.
    #[arg(long, env = "LIVESESSION_CREATE_BURST", default_value_t = 20.0)]
    pub create_burst: f64,
    /// Checkout starts and claims (`POST /api/checkout`, `POST /api/checkout/claim`) per
    /// second per client address, sustained.
    #[arg(long, env = "LIVESESSION_CHECKOUT_RATE", default_value_t = 2.0)]
    pub checkout_rate: f64,
    /// Checkout requests a client address may make in a burst.
    #[arg(long, env = "LIVESESSION_CHECKOUT_BURST", default_value_t = 30.0)]
    pub checkout_burst: f64,
    /// Token requests (`POST /api/sessions/{id}/token`) per second per client address.
    #[arg(long, env = "LIVESESSION_TOKEN_RATE", default_value_t = 5.0)]
    pub token_rate: f64,
    /// Token requests a client address may make in a burst.
    #[arg(long, env = "LIVESESSION_TOKEN_BURST", default_value_t = 30.0)]
    pub token_burst: f64,
    /// Stripe webhook requests with a bad signature per second per client address;
    /// beyond it they get 429. Correctly signed deliveries are never limited.
    #[arg(long, env = "LIVESESSION_WEBHOOK_FAILURE_RATE", default_value_t = 1.0)]
    pub webhook_failure_rate: f64,
    /// Badly signed webhook requests a client address may make in a burst.
    #[arg(
        long,
        env = "LIVESESSION_WEBHOOK_FAILURE_BURST",
        default_value_t = 20.0
    )]
    pub webhook_failure_burst: f64,
    /// Wrong admin tokens per second per client address, sustained. Once the burst is
    /// spent, every admin-token request from that address (the right token too) gets 429
    /// until the bucket refills.
    #[arg(long, env = "LIVESESSION_ADMIN_FAILURE_RATE", default_value_t = 0.1)]
    pub admin_failure_rate: f64,
    /// Wrong admin tokens a client address may present in a burst.
    #[arg(long, env = "LIVESESSION_ADMIN_FAILURE_BURST", default_value_t = 10.0)]
    pub admin_failure_burst: f64,
    /// Seconds after which a checkout that was never paid is deleted (Stripe's Checkout
    /// Sessions expire after 24 hours by default). A payment confirmed later still gets
    /// its session.
    #[arg(long, env = "LIVESESSION_PENDING_CHECKOUT_TTL", default_value_t = 86_400)]
    pub pending_checkout_ttl: u64,
    /// Seconds without any message from a control-channel client before it is closed (4006).
    #[arg(long, env = "LIVESESSION_HEARTBEAT_TIMEOUT", default_value_t = 90)]
    pub heartbeat_timeout: u64,
    /// Largest CDP message, either way, in bytes (full-page screenshots are large).
    #[arg(long, env = "LIVESESSION_CDP_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub cdp_max_message_bytes: usize,
    /// DevTools (CDP) connections one session may have at once.
    #[arg(long, env = "LIVESESSION_MAX_CDP_PER_SESSION", default_value_t = 8)]
    pub max_cdp_per_session: usize,
    /// DevTools (CDP) connections one client address may have at once.
    #[arg(long, env = "LIVESESSION_MAX_CDP_PER_IP", default_value_t = 16)]
    pub max_cdp_per_ip: usize,
    /// Desktops that may run at once (hibernated sessions do not count); further viewers
    /// wait in order while an idle desktop is hibernated to make room. Default: from this
    /// machine's memory ([`default_max_desktops`]; `livesession doctor` prints it).
    #[arg(long, env = "LIVESESSION_MAX_DESKTOPS")]
    pub max_desktops: Option<usize>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "LIVESESSION_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Largest request head (URL and headers together) accepted, in bytes; larger ones
    /// get 431.
    #[arg(long, env = "LIVESESSION_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Reverse proxies whose `X-Forwarded-For`/`-Proto`/`-Host` headers are believed,
    /// comma-separated addresses or CIDR ranges (e.g. `127.0.0.1,10.0.0.0/8`). From any
    /// other peer those headers are ignored.
    #[arg(long, env = "LIVESESSION_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// Who may show our pages in a frame (CSP frame-ancestors): 'none', 'self', or
    /// origins such as https://portal.example.com, separated by commas or spaces.
    #[arg(long, env = "LIVESESSION_FRAME_ANCESTORS", default_value = "'none'")]
    pub frame_ancestors: crate::security::FrameAncestors,
    /// Seconds a client may take to send a request's headers (the whole head, from the
    /// first byte, and between requests on a kept-alive connection); slower connections
    /// are closed.
    #[arg(long, env = "LIVESESSION_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    pub header_read_timeout: f64,
    /// Seconds a client may take, from connecting, to complete the TLS handshake (built-in
    /// TLS only); slower connections are closed.
    #[arg(long, env = "LIVESESSION_TLS_HANDSHAKE_TIMEOUT", default_value_t = 10.0)]
    pub tls_handshake_timeout: f64,
    /// TLS handshakes one client address may have in progress at once (built-in TLS
    /// only); further connections from it are closed at once.
    #[arg(long, env = "LIVESESSION_TLS_HANDSHAKES_PER_IP", default_value_t = 16)]
    pub tls_handshakes_per_ip: usize,
    /// Serve HTTPS with this certificate chain (PEM). Needs --tls-key.
    #[arg(long, env = "LIVESESSION_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, RSA or EC). Needs --tls-cert.
    #[arg(long, env = "LIVESESSION_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Also serve `GET /metrics` here, without a token (plain HTTP, nothing else served),
    /// for a Prometheus scraper on a private network. The main listener's `/metrics`
    /// always needs the admin token.
    #[arg(long, env = "LIVESESSION_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub desktop: DesktopArgs,
    #[command(flatten)]
    pub stripe: StripeArgs,
    #[command(flatten)]
    pub tasks: TaskArgs,
    #[command(flatten)]
    pub profiles: ProfileArgs,
    #[command(flatten)]
    pub recording: RecordingArgs,
}

impl ServeConfig {
    pub fn free_mode(&self) -> bool {
        self.free_mode.unwrap_or(self.stripe.secret_key.is_none())
    }

    /// `--header-read-timeout` as a duration (at least 10 ms).
    pub fn header_read_timeout(&self) -> Duration {
        seconds(self.header_read_timeout)
    }

    /// `--tls-handshake-timeout` as a duration (at least 10 ms).
    pub fn tls_handshake_timeout(&self) -> Duration {
        seconds(self.tls_handshake_timeout)
    }
}

/// A timeout setting: fractions allowed (tests use short ones), never zero or unusable.
fn seconds(s: f64) -> Duration {
    if s.is_finite() {
        Duration::from_secs_f64(s.clamp(0.01, 86_400.0))
    } else {
        Duration::from_secs(86_400)
    }
}

/// Selling sessions through Stripe Checkout (see docs/payments.md).
#[derive(Debug, Clone, Args)]
pub struct StripeArgs {
    /// Stripe secret key (`sk_live_…`/`sk_test_…`). Setting it turns on checkout.
    #[arg(
        long = "stripe-secret-key",
        env = "LIVESESSION_STRIPE_SECRET_KEY",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// The webhook endpoint's signing secret (`whsec_…`). Required with the secret key.
    #[arg(
        long = "stripe-webhook-secret",
        env = "LIVESESSION_STRIPE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
    #[arg(
        long = "stripe-api-base",
        env = "LIVESESSION_STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub api_base: String,
    /// Largest age, in seconds, of a webhook signature's timestamp.
    #[arg(
        long = "stripe-webhook-tolerance",
        env = "LIVESESSION_STRIPE_WEBHOOK_TOLERANCE",
        default_value_t = 300
    )]
    pub webhook_tolerance: u64,
    /// Price of one session, in the currency's smallest unit.
    #[arg(
        long = "price-cents",
        env = "LIVESESSION_PRICE_CENTS",
        default_value_t = 100
    )]
    pub price_cents: u64,
    #[arg(long, env = "LIVESESSION_CURRENCY", default_value = "usd")]
    pub currency: String,
    #[arg(
        long = "product-name",
        env = "LIVESESSION_PRODUCT_NAME",
        default_value = "Live browser session (24 hours)"
    )]
    pub product_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesktopSize {
    pub width: u16,
    pub height: u16,
}

impl FromStr for DesktopSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("expected WIDTHxHEIGHT such as 1280x720, got {s:?}");
        let (w, h) = s.split_once('x').ok_or_else(err)?;
        let (width, height): (u16, u16) =
            (w.parse().map_err(|_| err())?, h.parse().map_err(|_| err())?);
        if !(320..=7680).contains(&width) || !(200..=4320).contains(&height) {
            return Err(format!("desktop size {s} is outside 320x200..7680x4320"));
        }
        Ok(Self { width, height })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desktop_sizes_parse_and_are_bounded() {
        assert_eq!(
            "1280x720".parse::<DesktopSize>().unwrap(),
            DesktopSize {
                width: 1280,
                height: 720
            }
        );
        assert!("1280".parse::<DesktopSize>().is_err());
        assert!("10x10".parse::<DesktopSize>().is_err());
    }

    #[test]
    fn a_database_url_is_postgres_and_never_shows_its_password() {
        let url = DatabaseUrl::parse("postgres://ls:s3cr3t-pw@db.internal:5432/livesession?sslmode=require&password=q-pw").unwrap();
        assert_eq!(url.expose(), "postgres://ls:s3cr3t-pw@db.internal:5432/livesession?sslmode=require&password=q-pw");
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("s3cr3t-pw") && !shown.contains("q-pw"), "{shown}");
            assert!(shown.contains("db.internal:5432/livesession"), "{shown}");
        }
        assert!(DatabaseUrl::parse("postgresql://localhost/x").is_ok());
        let sqlite = DatabaseUrl::parse("sqlite:///data/livesession.db").unwrap_err();
        assert!(sqlite.contains("leave it unset"), "{sqlite}");
        assert!(DatabaseUrl::parse("not a url").is_err());
    }
}

/// Tasks, their queue and the built-in workers (see docs/tasks.md).
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// Built-in steps runners on this node: how many `steps` tasks run at once (each in
    /// its own session). 0 leaves steps tasks to external workers.
    #[arg(long, env = "LIVESESSION_STEPS_RUNNERS", default_value_t = 2)]
    pub steps_runners: usize,
    /// Built-in agent runners on this node (only with LIVESESSION_AGENT_API_BASE set).
    #[arg(long, env = "LIVESESSION_AGENT_RUNNERS", default_value_t = 2)]
    pub agent_runners: usize,
    /// Seconds a worker's lease lasts without a heartbeat; a worker that is not heard from
    /// for this long loses its task, which goes back to the queue.
    #[arg(long, env = "LIVESESSION_TASK_LEASE", default_value_t = 30.0)]
    pub task_lease: f64,
    /// Claims of one task before a lost worker fails it ("worker lost").
    #[arg(long, env = "LIVESESSION_TASK_MAX_ATTEMPTS", default_value_t = 3)]
    pub task_max_attempts: u32,
    /// Seconds one step of a steps task may take (a `wait_for` may set its own).
    #[arg(long, env = "LIVESESSION_STEP_TIMEOUT", default_value_t = 30.0)]
    pub step_timeout: f64,
    /// `/readyz` reports the task queue degraded once a queued task has waited this many
    /// seconds.
    #[arg(long, env = "LIVESESSION_TASK_STALL_SECONDS", default_value_t = 300)]
    pub task_stall_seconds: u64,
    /// Days a worker token lasts (`POST /api/workers/tokens` may ask for less).
    #[arg(long, env = "LIVESESSION_WORKER_TOKEN_DAYS", default_value_t = 30)]
    pub worker_token_days: u64,
    #[command(flatten)]
    pub agent: AgentArgs,
}

impl TaskArgs {
    pub fn lease(&self) -> Duration {
        seconds(self.task_lease)
    }

    pub fn step_timeout(&self) -> Duration {
        seconds(self.step_timeout)
    }
}

/// The built-in agent's model: any OpenAI-compatible Chat Completions API (OpenAI,
/// llama.cpp's server, vLLM, Ollama). Without an API base, agent tasks wait for an
/// external worker.
#[derive(Clone, Args)]
pub struct AgentArgs {
    /// Base URL of the API, up to and including `/v1` (e.g. https://api.openai.com/v1,
    /// http://127.0.0.1:11434/v1 for Ollama).
    #[arg(long, env = "LIVESESSION_AGENT_API_BASE")]
    pub agent_api_base: Option<String>,
    /// Sent as `Authorization: Bearer`; never logged.
    #[arg(long, env = "LIVESESSION_AGENT_API_KEY", hide_env_values = true)]
    pub agent_api_key: Option<String>,
    #[arg(long, env = "LIVESESSION_AGENT_MODEL", default_value = "gpt-4o-mini")]
    pub agent_model: String,
    /// Send a screenshot each turn (models without image input: set false).
    #[arg(long, env = "LIVESESSION_AGENT_IMAGES", default_value_t = true, action = ArgAction::Set)]
    pub agent_images: bool,
    /// Model turns per task.
    #[arg(long, env = "LIVESESSION_AGENT_MAX_TURNS", default_value_t = 30)]
    pub agent_max_turns: u32,
    /// Seconds the agent may work on one task, from when its browser is ready; time
    /// waiting for the person is not counted.
    #[arg(long, env = "LIVESESSION_AGENT_MAX_SECONDS", default_value_t = 600)]
    pub agent_max_seconds: u64,
    /// Tokens (prompt and completion, as the API reports them) per task.
    #[arg(long, env = "LIVESESSION_AGENT_MAX_TOKENS", default_value_t = 200_000)]
    pub agent_max_tokens: u64,
    /// Seconds one request to the model may take.
    #[arg(long, env = "LIVESESSION_AGENT_REQUEST_TIMEOUT", default_value_t = 120)]
    pub agent_request_timeout: u64,
}

impl std::fmt::Debug for AgentArgs {
    // The API key is a secret: never in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentArgs")
            .field("agent_api_base", &self.agent_api_base)
            .field("agent_api_key", &self.agent_api_key.as_ref().map(|_| "<redacted>"))
            .field("agent_model", &self.agent_model)
            .field("agent_images", &self.agent_images)
            .field("agent_max_turns", &self.agent_max_turns)
            .finish_non_exhaustive()
    }
}

/// Profiles, idle hibernation, the wait queue for desktops, login capture and the events
/// sent about them (see docs/profiles.md).
#[derive(Clone, Args)]
pub struct ProfileArgs {
    /// Seconds a session's desktop stays up with no viewer, DevTools client or running
    /// task before it hibernates (its state saved, the desktop stopped); a session may set
    /// its own (`idle_timeout_seconds`). 0: never hibernate for idleness.
    #[arg(long, env = "LIVESESSION_IDLE_TIMEOUT", default_value_t = 600)]
    pub idle_timeout: u64,
    /// Largest saved state (a profile, or a hibernated session's own), MiB of files before
    /// compression.
    #[arg(long, env = "LIVESESSION_PROFILE_MAX_MIB", default_value_t = 200)]
    pub profile_max_mib: u64,
    /// Sessions that may wait in line for a desktop when all are in use (one place per
    /// session, however many of its connections wait). Once this many wait,
    /// `POST /api/sessions` and `/start` answer 503 with Retry-After.
    #[arg(long, env = "LIVESESSION_MAX_QUEUED", default_value_t = 100)]
    pub max_queued: usize,
    /// Default lifetime of a login-capture session (`POST /api/logins`), seconds.
    #[arg(long, env = "LIVESESSION_LOGIN_TTL", default_value_t = 900)]
    pub login_ttl: u64,
    /// Where events (`login.captured`) are POSTed, signed with LIVESESSION_EVENTS_SECRET.
    #[arg(long, env = "LIVESESSION_EVENTS_URL", hide_env_values = true)]
    pub events_url: Option<String>,
    /// The key events are signed with (HMAC-SHA256, header `Livesession-Signature`);
    /// required with LIVESESSION_EVENTS_URL. Never logged.
    #[arg(long, env = "LIVESESSION_EVENTS_SECRET", hide_env_values = true)]
    pub events_secret: Option<String>,
}

impl std::fmt::Debug for ProfileArgs {
    // The events secret is a secret, and the URL may hold one: never in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileArgs")
            .field("idle_timeout", &self.idle_timeout)
            .field("profile_max_mib", &self.profile_max_mib)
            .field("max_queued", &self.max_queued)
            .field("login_ttl", &self.login_ttl)
            // The URL may carry credentials (user:password@, a key in the query).
            .field("events_url", &self.events_url.as_ref().map(|_| "<redacted>"))
            .field("events_secret", &self.events_secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Memory a desktop is planned at when the default number of desktops is worked out: an
/// idle desktop measures ~240–490 MiB PSS (docs/performance.md), and pages grow.
pub const PLANNED_DESKTOP_MIB: u64 = 768;
/// Memory left to the server and the system when planning desktops.
pub const RESERVED_MIB: u64 = 1024;

/// The default `--max-desktops`: what this machine's memory holds at
/// [`PLANNED_DESKTOP_MIB`] per desktop after [`RESERVED_MIB`], at least 1, at most 256.
pub fn default_max_desktops() -> usize {
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(4 * PLANNED_DESKTOP_MIB + RESERVED_MIB);
    desktops_for_memory(total_mib)
}

/// How many desktops `total_mib` of memory holds (see [`default_max_desktops`]).
pub fn desktops_for_memory(total_mib: u64) -> usize {
    (total_mib.saturating_sub(RESERVED_MIB) / PLANNED_DESKTOP_MIB).clamp(1, 256) as usize
}

/// Screen recordings (docs/recordings.md).
#[derive(Debug, Clone, Args)]
pub struct RecordingArgs {
    /// Record every session's screen, not only those created with `"record": true`.
    #[arg(long = "record", env = "LIVESESSION_RECORD", num_args = 0..=1, default_missing_value = "true",
          default_value_t = false, action = ArgAction::Set)]
    pub record_all: bool,
    /// Hours a recording is kept after its last write; 0: kept until deleted by hand.
    #[arg(long, env = "LIVESESSION_RECORDING_RETENTION_HOURS", default_value_t = 168)]
    pub recording_retention_hours: u64,
    /// A recording stops (with a log line) when its file reaches this size, in MiB.
    #[arg(long, env = "LIVESESSION_RECORDING_MAX_MIB", default_value_t = 512)]
    pub recording_max_mib: u64,
}

impl RecordingArgs {
    pub fn settings(&self, data_dir: &Path) -> crate::recording::RecordingSettings {
        crate::recording::RecordingSettings {
            dir: data_dir.join("recordings"),
            record_all: self.record_all,
            max_bytes: self.recording_max_mib.max(1).saturating_mul(1 << 20),
            retention: (self.recording_retention_hours > 0)
                .then(|| Duration::from_secs(self.recording_retention_hours.saturating_mul(3600))),
            sweep_every: Duration::from_secs(600),
        }
    }
}

impl ServeConfig {
    /// `--max-desktops`, or the default for this machine's memory.
    pub fn max_desktops(&self) -> usize {
        self.max_desktops.unwrap_or_else(default_max_desktops).max(1)
    }

    /// A session's idle timeout: its own, else the server's; `None`: never.
    pub fn idle_timeout(&self, session_seconds: Option<u32>) -> Option<Duration> {
        let s = session_seconds.map(u64::from).unwrap_or(self.profiles.idle_timeout);
        (s > 0).then(|| Duration::from_secs(s))
    }

    pub fn profile_max_bytes(&self) -> u64 {
        self.profiles.profile_max_mib.saturating_mul(1 << 20)
    }
}

#[cfg(test)]
mod desktop_count_tests {
    use super::*;

    #[test]
    fn the_default_number_of_desktops_follows_memory() {
        assert_eq!(desktops_for_memory(512), 1, "at least one");
        assert_eq!(desktops_for_memory(4096), 4);
        assert_eq!(desktops_for_memory(24 * 1024), 30);
        assert_eq!(desktops_for_memory(u64::MAX / 2), 256, "at most 256");
        assert!(default_max_desktops() >= 1);
    }
}
