//! `livesession bench`: whole-system measurements.
//!
//! - `control`: a soak of a running server's control channel ([`control`]).
//! - `proxy`, `start`, `memory`, `capacity`, `scroll`, `cdp`, `tasks`, `all`: each starts this
//!   binary's own `serve` as a child process (temporary data directory, loopback port,
//!   generated admin token) and a loopback page server, measures, and prints Markdown
//!   tables; `all` runs every one and writes the tables into docs/performance.md between
//!   markers.
//!
//! They measure; they do not judge (the summary shows the goals beside the figures).

pub mod capacity;
pub mod cdp;
pub mod client;
pub mod cluster;
pub mod control;
pub mod hibernate;
pub mod memory;
pub mod pages;
pub mod procfs;
pub mod proxy;
pub mod report;
pub mod scroll;
pub mod server;
pub mod start;
pub mod stats;
pub mod summary;
pub mod tasks;
pub mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use control::{ControlSoak, SoakReport, run};
pub use procfs::{pid_listening_on, pss_kib};
pub use stats::percentile;

use client::{connect_ws, rfb_over_ws, wait_for_colour};
use livesession_desktop::rfb::RfbClient;
use server::{Created, Server};

/// Settings shared by the whole-system benchmarks.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Fewer runs and shorter measurements.
    pub quick: bool,
    /// websockify to compare the proxy with; `websockify` on PATH if unset.
    pub websockify: Option<PathBuf>,
    /// Extra `serve` flags for every server under test.
    pub serve_args: Vec<String>,
    /// Overrides: session starts per variant, seconds per measurement, most sessions for
    /// `capacity`.
    pub runs: Option<usize>,
    pub seconds: Option<f64>,
    pub max_sessions: Option<usize>,
}

impl Options {
    /// Seconds per measurement: `full` normally, `quick` with --quick, or --seconds.
    pub fn seconds(&self, full: f64, quick: f64) -> Duration {
        Duration::from_secs_f64(
            self.seconds
                .unwrap_or(if self.quick { quick } else { full })
                .max(0.2),
        )
    }

    /// The flags for a server: the page server's port, `flags`, then the user's.
    pub fn server_flags(&self, pages: &pages::PageServer, flags: &[&str]) -> Vec<String> {
        let mut all = pages.server_args();
        all.extend(flags.iter().map(|f| f.to_string()));
        all.extend(self.serve_args.iter().cloned());
        all
    }
}

/// A progress line on stderr (stdout carries the tables).
pub fn progress(line: impl AsRef<str>) {
    eprintln!("bench: {}", line.as_ref());
}

/// When each step of opening a session was done, counted from before the POST.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// `POST /api/sessions` answered.
    pub created: Duration,
    /// The RFB handshake through the proxy completed (the desktop is ready).
    pub handshake: Duration,
    /// The page covers half the screen in a frame.
    pub drawn: Duration,
}

/// Creates a session showing `url` (`None`: the server's start page), opens its VNC WebSocket (which starts its desktop) and
/// reads full frames until `rgb` covers half the screen. Returns the session, the open
/// client, and when each step was done.
pub async fn open_session(
    server: &Server,
    url: Option<&str>,
    rgb: (u8, u8, u8),
) -> Result<(Created, RfbClient<tokio::io::DuplexStream>, Opened), String> {
    let started = Instant::now();
    let created = server.create_session(url).await?;
    let posted = started.elapsed();
    let ws = connect_ws(&created.vnc_url, Some(&created.token))
        .await
        .map_err(|e| format!("VNC WebSocket: {e}"))?;
    let mut rfb = rfb_over_ws(ws)
        .await
        .map_err(|e| format!("RFB through the proxy: {e}"))?;
    let handshake = started.elapsed();
    wait_for_colour(&mut rfb, rgb, 0.5, Duration::from_secs(60))
        .await
        .map_err(|e| format!("session {}: {e}", created.id))?;
    let opened = Opened {
        created: posted,
        handshake,
        drawn: started.elapsed(),
    };
    Ok((created, rfb, opened))
}

/// Runs every benchmark and returns the report (`capacity` last: it loads the machine most).
pub async fn all(options: &Options) -> summary::Report {
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut report = summary::Report {
        quick: options.quick,
        load_at_start: load
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(", "),
        ..summary::Report::default()
    };
    progress("proxy throughput and latency");
    report.proxy = Some(proxy::run(options).await);
    progress("session start");
    report.start = Some(start::run(options).await);
    progress("memory");
    report.memory = Some(memory::run(options).await);
    progress("scrolling");
    report.scroll = Some(scroll::run(options).await);
    progress("DevTools (CDP) through the gateway and direct");
    report.cdp = Some(cdp::run(options).await);
    progress("tasks: steps runners, per-step overhead, claims with a deep queue");
    report.tasks = Some(tasks::run(options).await);
    progress("capacity");
    report.capacity = Some(capacity::run(options).await);
    report.elapsed = started.elapsed();
    report
}
