//! `bench cdp`: what the gateway's DevTools relay costs an agent. One session shows the
//! page server's solid page, filled by script with static blocks of coloured text; two
//! WebSockets to its page target stay open side by side: one through the gateway
//! (`/api/sessions/{id}/cdp/page/{target}?token=`, over loopback TCP) and one straight to
//! the desktop's `run/devtools.sock` (as the server itself connects, Host `localhost`).
//! Both are measured in the same run, in alternating rounds (which goes first swaps every
//! round), so that whatever else the machine does falls on both alike:
//!
//! - `Runtime.evaluate` `{"expression":"1+1","returnByValue":true}`, one call at a time
//!   after a warm-up: the time from sending the command to reading its reply;
//! - `Page.captureScreenshot` (PNG) of the whole 1280x720 page (each connection sets
//!   `Emulation.setDeviceMetricsOverride` 1280x720), back to back: screenshots per second.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::client::connect_ws_with;
use super::pages::{PageServer, SOLID_RGB};
use super::procfs::cpu_seconds;
use super::report::Table;
use super::server::Server;
use super::stats::Summary;
use super::{Options, open_session, progress};

/// The screenshot's size: the screen's, which the page is emulated at.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 720;
/// The issue's goals: the gateway adds at most this much to a round trip's p50, and keeps
/// at least this share of direct's screenshot rate.
pub const GOAL_ADDED_P50_MS: f64 = 0.3;
pub const GOAL_SCREENSHOT_RATIO: f64 = 0.9;

const EVALUATE: &str = r#"{"expression":"1+1","returnByValue":true}"#;
/// Static content for the screenshots: a solid page compresses to almost nothing, a page
/// of text is what agents look at.
const FILL_PAGE: &str = r#"(() => {
  const colours = ['#f4d35e', '#ee964b', '#f95738', '#0d3b66', '#faf0ca', '#83c5be', '#264653'];
  document.documentElement.style.background = '#fff';
  document.body.style.cssText = 'margin:0;background:#fff;font:16px/1.4 sans-serif';
  document.body.innerHTML = '';
  for (let i = 0; i < 12; i++) {
    const d = document.createElement('div');
    d.style.cssText = 'height:60px;padding:8px;overflow:hidden;background:' + colours[i % 7] +
      ';color:' + (i % 7 === 3 || i % 7 === 6 ? '#fff' : '#111');
    d.textContent = ('Block ' + i + ': the quick brown fox jumps over the lazy dog. ').repeat(12);
    document.body.appendChild(d);
  }
  return document.body.children.length;
})()"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Gateway,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct (devtools.sock)",
            Path::Gateway => "gateway (/cdp/page, loopback TCP)",
        }
    }
}

/// Which path goes first in a round: they swap every round.
pub fn round_order(round: usize) -> [Path; 2] {
    if round.is_multiple_of(2) {
        [Path::Gateway, Path::Direct]
    } else {
        [Path::Direct, Path::Gateway]
    }
}

/// The width and height of a PNG from the start of its base64 (signature, then IHDR).
pub fn png_size(base64_png: &str) -> Option<(u32, u32)> {
    use base64::Engine as _;
    // 32 characters are the first 24 bytes: signature (8), IHDR length and type (8),
    // width (4), height (4).
    let head = base64::engine::general_purpose::STANDARD
        .decode(base64_png.get(..32)?)
        .ok()?;
    if head[..8] != *b"\x89PNG\r\n\x1a\n" || &head[12..16] != b"IHDR" {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    Some((word(16), word(20)))
}

/// One path's figures over all rounds.
#[derive(Debug, Clone, Default)]
pub struct PathFigures {
    /// Milliseconds per `Runtime.evaluate` round trip.
    pub evaluate: Summary,
    /// Milliseconds per screenshot (command sent → reply read).
    pub screenshot: Summary,
    pub screenshots: usize,
    /// Seconds spent taking them, and the bytes of their replies.
    pub screenshot_seconds: f64,
    pub screenshot_bytes: u64,
    /// Per round: the round trip's p50, and screenshots per second.
    pub round_p50: Vec<f64>,
    pub round_rate: Vec<f64>,
    /// The gateway's CPU seconds while this path was measured (its own process).
    pub gateway_cpu_evaluate: Option<f64>,
    pub gateway_cpu_screenshots: Option<f64>,
    /// The first screenshot's PNG size.
    pub png: Option<(u32, u32)>,
}

impl PathFigures {
    pub fn screenshots_per_s(&self) -> f64 {
        self.screenshots as f64 / self.screenshot_seconds.max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub struct CdpReport {
    pub direct: PathFigures,
    pub gateway: PathFigures,
    pub rounds: usize,
    pub calls_per_round: usize,
    pub warmup_calls: usize,
    pub screenshot_seconds_per_round: f64,
    /// The page's size as the page saw it (`innerWidth`x`innerHeight`) while emulated.
    pub viewport: String,
}

fn ms3(ms: f64) -> String {
    format!("{ms:.3} ms")
}

fn spread(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() {
        "—".into()
    } else {
        format!("{} to {}", fmt(min), fmt(max))
    }
}

impl CdpReport {
    /// What the gateway adds to the round trip's p50, ms.
    pub fn added_p50(&self) -> f64 {
        self.gateway.evaluate.p50 - self.direct.evaluate.p50
    }

    pub fn added_p99(&self) -> f64 {
        self.gateway.evaluate.p99 - self.direct.evaluate.p99
    }

    /// The gateway's screenshot rate over direct's.
    pub fn screenshot_ratio(&self) -> f64 {
        self.gateway.screenshots_per_s() / self.direct.screenshots_per_s().max(1e-9)
    }

    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "Path",
            "Runtime.evaluate p50 / p99",
            "Calls",
            "Screenshots/s",
            "Per screenshot p50 / p99",
            "Screenshots",
            "Reply size, relayed",
            "Gateway CPU per call / per screenshot",
        ]);
        for (path, f) in [(Path::Direct, &self.direct), (Path::Gateway, &self.gateway)] {
            let per = |cpu: Option<f64>, n: usize, scale: f64, unit: &str| {
                cpu.map_or("—".into(), |c| {
                    format!("{:.1} {unit}", c * scale / n.max(1) as f64)
                })
            };
            let cpu = match path {
                Path::Direct => "—".into(),
                Path::Gateway => format!(
                    "{} / {}",
                    per(f.gateway_cpu_evaluate, f.evaluate.count, 1e6, "µs"),
                    per(f.gateway_cpu_screenshots, f.screenshots, 1e3, "ms")
                ),
            };
            t.row([
                path.name().to_owned(),
                format!("{} / {}", ms3(f.evaluate.p50), ms3(f.evaluate.p99)),
                f.evaluate.count.to_string(),
                format!("{:.2}", f.screenshots_per_s()),
                format!("{:.1} ms / {:.1} ms", f.screenshot.p50, f.screenshot.p99),
                f.screenshots.to_string(),
                format!(
                    "{:.0} KB each, {:.1} MB/s",
                    f.screenshot_bytes as f64 / 1e3 / f.screenshots.max(1) as f64,
                    f.screenshot_bytes as f64 / 1e6 / f.screenshot_seconds.max(1e-9)
                ),
                cpu,
            ]);
        }
        t.row([
            "gateway − direct, gateway ÷ direct".into(),
            format!("{:+.3} ms / {:+.3} ms", self.added_p50(), self.added_p99()),
            String::new(),
            format!("{:.3}×", self.screenshot_ratio()),
            format!(
                "{:+.1} ms / {:+.1} ms",
                self.gateway.screenshot.p50 - self.direct.screenshot.p50,
                self.gateway.screenshot.p99 - self.direct.screenshot.p99
            ),
        ]);
        let added: Vec<f64> = self
            .gateway
            .round_p50
            .iter()
            .zip(&self.direct.round_p50)
            .map(|(g, d)| g - d)
            .collect();
        let ratios: Vec<f64> = self
            .gateway
            .round_rate
            .iter()
            .zip(&self.direct.round_rate)
            .map(|(g, d)| g / d.max(1e-9))
            .collect();
        t.row([
            format!("the same, per round (min to max of {})", self.rounds),
            format!("p50 {}", spread(&added, |a| format!("{a:+.3} ms"))),
            String::new(),
            spread(&ratios, |r| format!("{r:.3}×")),
        ]);
        t
    }

    /// How it was measured, in a sentence or two, for under the table.
    pub fn note(&self) -> String {
        let png = self
            .gateway
            .png
            .or(self.direct.png)
            .map_or("unknown".into(), |(w, h)| format!("{w}x{h}"));
        format!(
            "{} alternating rounds (which path goes first swaps each round), both \
             connections open throughout: {} `Runtime.evaluate` calls per path per round, one \
             at a time, after {} per path to warm up; then {:.1} s of back-to-back \
             `Page.captureScreenshot` (PNG, {png}; the page reported {}) per path per round. \
             Gateway CPU is the server process's own user+sys time while the gateway path was \
             measured.",
            self.rounds,
            self.calls_per_round,
            self.warmup_calls,
            self.screenshot_seconds_per_round,
            self.viewport
        )
    }
}

/// A CDP client on one WebSocket: one command at a time.
struct Cdp<S> {
    ws: WebSocketStream<S>,
    next_id: u64,
    path: Path,
}

/// Only what a reply's envelope says; the rest is skipped without being kept.
#[derive(serde::Deserialize)]
struct Envelope {
    id: Option<u64>,
    error: Option<Value>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Cdp<S> {
    /// Sends a command (params as JSON text) and reads until its reply, skipping events
    /// (the gateway's `Livesession.controlChanged` among them). Returns the reply's text.
    async fn call_raw(&mut self, method: &str, params: &str) -> Result<Utf8Bytes, String> {
        self.next_id += 1;
        let id = self.next_id;
        let command = format!(r#"{{"id":{id},"method":"{method}","params":{params}}}"#);
        let name = self.path.name();
        let exchange = async {
            self.ws
                .send(Message::text(command))
                .await
                .map_err(|e| format!("{name}: sending {method}: {e}"))?;
            loop {
                let message = self
                    .ws
                    .next()
                    .await
                    .ok_or_else(|| format!("{name}: closed while waiting for {method}"))?
                    .map_err(|e| format!("{name}: {method}: {e}"))?;
                let text = match message {
                    Message::Text(t) => t,
                    Message::Close(c) => {
                        return Err(format!("{name}: closed ({c:?}) during {method}"));
                    }
                    _ => continue,
                };
                let envelope: Envelope = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("{name}: {method}: unreadable reply: {e}"))?;
                if envelope.id != Some(id) {
                    continue;
                }
                if let Some(error) = envelope.error {
                    return Err(format!("{name}: {method} failed: {error}"));
                }
                return Ok(text);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| format!("{name}: no reply to {method} within 30 s"))?
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let text = self.call_raw(method, &params.to_string()).await?;
        let mut reply: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
        Ok(reply["result"].take())
    }

    /// The page at 1280x720, whatever the window's size.
    async fn emulate(&mut self) -> Result<(), String> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await
        .map(drop)
    }

    /// `n` round trips; milliseconds each.
    async fn evaluate(&mut self, n: usize) -> Result<Vec<f64>, String> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let sent = Instant::now();
            self.call_raw("Runtime.evaluate", EVALUATE).await?;
            times.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(times)
    }

    /// Screenshots back to back for `duration`: milliseconds each, reply bytes, seconds.
    async fn screenshots(&mut self, duration: Duration) -> Result<(Vec<f64>, u64, f64), String> {
        let started = Instant::now();
        let (mut times, mut bytes) = (Vec::new(), 0u64);
        while started.elapsed() < duration {
            let sent = Instant::now();
            let reply = self
                .call_raw("Page.captureScreenshot", r#"{"format":"png"}"#)
                .await?;
            times.push(sent.elapsed().as_secs_f64() * 1000.0);
            bytes += reply.len() as u64;
        }
        Ok((times, bytes, started.elapsed().as_secs_f64()))
    }

    /// One screenshot's PNG size.
    async fn png_size(&mut self) -> Result<Option<(u32, u32)>, String> {
        let result = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        Ok(result["data"].as_str().and_then(png_size))
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1 << 20)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// The desktop's DevTools socket, reached as the server reaches it (checked, no links).
fn devtools_socket(dir: &std::path::Path) -> Result<livesession_desktop::DesktopSocket, String> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(dir.join("run"))
        .map_err(|e| format!("{}: {e}", dir.join("run").display()))?
        .uid();
    Ok(livesession_desktop::DesktopDir::new(dir, owner).socket("run/devtools.sock"))
}

/// Accumulates one path's rounds.
#[derive(Default)]
struct Tally {
    evaluate: Vec<f64>,
    screenshot: Vec<f64>,
    bytes: u64,
    seconds: f64,
    round_p50: Vec<f64>,
    round_rate: Vec<f64>,
    cpu_evaluate: Option<f64>,
    cpu_screenshots: Option<f64>,
}

impl Tally {
    fn figures(self, png: Option<(u32, u32)>) -> PathFigures {
        PathFigures {
            evaluate: Summary::of(&self.evaluate),
            screenshot: Summary::of(&self.screenshot),
            screenshots: self.screenshot.len(),
            screenshot_seconds: self.seconds,
            screenshot_bytes: self.bytes,
            round_p50: self.round_p50,
            round_rate: self.round_rate,
            gateway_cpu_evaluate: self.cpu_evaluate,
            gateway_cpu_screenshots: self.cpu_screenshots,
            png,
        }
    }
}

fn add(total: &mut Option<f64>, before: Option<f64>, after: Option<f64>) {
    if let (Some(b), Some(a)) = (before, after) {
        *total = Some(total.unwrap_or(0.0) + (a - b));
    }
}

pub async fn run(options: &Options) -> Result<CdpReport, String> {
    let rounds = if options.quick { 4 } else { 10 };
    let calls_per_round = options
        .runs
        .map_or(if options.quick { 100 } else { 500 }, |n| {
            (n / rounds).max(1)
        });
    let warmup_calls = if options.quick { 50 } else { 200 };
    let per_round = options.seconds(20.0, 4.0).as_secs_f64() / rounds as f64;
    let screenshot_time = Duration::from_secs_f64(per_round);

    let pages = PageServer::start().await?;
    let server = Server::start(&options.server_flags(&pages, &[])).await?;
    server.settle(Duration::from_secs(120)).await;
    progress("  cdp: starting a desktop");
    let page_url = pages.url("solid");
    // The viewer stays connected but asks for no frames: it only keeps the desktop up.
    let (created, viewer, _) = open_session(&server, Some(&page_url), SOLID_RGB).await?;
    let dir = server
        .desktop_dir(&created.id)
        .ok_or_else(|| format!("no desktop directory for session {}", created.id))?;
    let socket = devtools_socket(&dir)?;
    let targets = livesession_desktop::devtools::list_targets(&socket)
        .await
        .map_err(|e| format!("DevTools /json/list: {e}"))?;
    let target = targets
        .iter()
        .find(|t| t.kind == "page" && t.url.starts_with(&page_url))
        .or_else(|| targets.iter().find(|t| t.kind == "page"))
        .ok_or("DevTools lists no page target")?
        .id
        .clone();

    // Direct: the page's WebSocket over the Unix socket, as a local client.
    let stream = socket
        .connect()
        .await
        .map_err(|e| format!("{}: {e}", socket.path().display()))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://localhost/devtools/page/{target}"),
        stream,
        Some(ws_config()),
    )
    .await
    .map_err(|e| format!("direct DevTools WebSocket: {e}"))?;
    let mut direct = Cdp {
        ws,
        next_id: 0,
        path: Path::Direct,
    };
    // Through the gateway, token in the query string as agents pass it.
    let url = format!(
        "{}/api/sessions/{}/cdp/page/{target}?token={}",
        server.ws_base(),
        created.id,
        created.token
    );
    let ws = connect_ws_with(&url, None, None)
        .await
        .map_err(|e| format!("gateway DevTools WebSocket: {e}"))?;
    let mut gateway = Cdp {
        ws,
        next_id: 0,
        path: Path::Gateway,
    };

    direct
        .call(
            "Runtime.evaluate",
            json!({"expression": FILL_PAGE, "returnByValue": true}),
        )
        .await?;
    direct.emulate().await?;
    gateway.emulate().await?;
    let viewport = gateway
        .call(
            "Runtime.evaluate",
            json!({"expression": "innerWidth + 'x' + innerHeight", "returnByValue": true}),
        )
        .await?["result"]["value"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    let png_direct = direct.png_size().await?;
    let png_gateway = gateway.png_size().await?;
    server.settle(Duration::from_secs(120)).await;
    // Chromium keeps busy for a moment after drawing a page.
    tokio::time::sleep(Duration::from_secs(2)).await;

    progress(format!(
        "  cdp: warm-up, {warmup_calls} Runtime.evaluate calls and 3 screenshots per path"
    ));
    direct.evaluate(warmup_calls).await?;
    gateway.evaluate(warmup_calls).await?;
    for _ in 0..3 {
        direct.png_size().await?;
        gateway.png_size().await?;
    }

    let (mut d, mut g) = (Tally::default(), Tally::default());
    let gateway_cpu = || cpu_seconds(server.pid);
    for round in 0..rounds {
        for path in round_order(round) {
            let before = gateway_cpu();
            let times = match path {
                Path::Direct => direct.evaluate(calls_per_round).await?,
                Path::Gateway => gateway.evaluate(calls_per_round).await?,
            };
            let tally = if path == Path::Direct { &mut d } else { &mut g };
            add(&mut tally.cpu_evaluate, before, gateway_cpu());
            let mut sorted = times.clone();
            sorted.sort_by(f64::total_cmp);
            tally.round_p50.push(super::percentile(&sorted, 0.5));
            tally.evaluate.extend(times);
        }
        for path in round_order(round) {
            let before = gateway_cpu();
            let (times, bytes, seconds) = match path {
                Path::Direct => direct.screenshots(screenshot_time).await?,
                Path::Gateway => gateway.screenshots(screenshot_time).await?,
            };
            let tally = if path == Path::Direct { &mut d } else { &mut g };
            add(&mut tally.cpu_screenshots, before, gateway_cpu());
            tally
                .round_rate
                .push(times.len() as f64 / seconds.max(1e-9));
            tally.screenshot.extend(times);
            tally.bytes += bytes;
            tally.seconds += seconds;
        }
        progress(format!(
            "  cdp: round {}/{rounds}: evaluate p50 gateway {:.3} ms, direct {:.3} ms; \
             screenshots/s gateway {:.2}, direct {:.2}",
            round + 1,
            g.round_p50[round],
            d.round_p50[round],
            g.round_rate[round],
            d.round_rate[round]
        ));
    }
    let _ = direct.ws.close(None).await;
    let _ = gateway.ws.close(None).await;
    drop(viewer);
    server.revoke(&created.id).await;
    server.stop().await;
    Ok(CdpReport {
        direct: d.figures(png_direct),
        gateway: g.figures(png_gateway),
        rounds,
        calls_per_round,
        warmup_calls,
        screenshot_seconds_per_round: per_round,
        viewport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_sizes_come_from_the_header() {
        use base64::Engine as _;
        let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        png.extend(1280u32.to_be_bytes());
        png.extend(720u32.to_be_bytes());
        png.extend([8, 6, 0, 0, 0]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        assert_eq!(png_size(&b64), Some((1280, 720)));
        assert_eq!(png_size("iVBORw0K"), None, "too short");
        let jpeg = base64::engine::general_purpose::STANDARD.encode([0xffu8; 24]);
        assert_eq!(png_size(&jpeg), None);
    }

    #[test]
    fn rounds_alternate_which_path_goes_first() {
        assert_eq!(round_order(0), [Path::Gateway, Path::Direct]);
        assert_eq!(round_order(1), [Path::Direct, Path::Gateway]);
        let firsts = (0..10)
            .filter(|r| round_order(*r)[0] == Path::Gateway)
            .count();
        assert_eq!(firsts, 5);
    }

    #[test]
    fn the_comparison_reads_gateway_against_direct() {
        let path = |p50: f64, shots: usize| PathFigures {
            evaluate: Summary {
                p50,
                p99: p50 * 2.0,
                count: 10,
                ..Summary::default()
            },
            screenshots: shots,
            screenshot_seconds: 10.0,
            round_p50: vec![p50, p50 + 0.1],
            round_rate: vec![shots as f64 / 10.0; 2],
            ..PathFigures::default()
        };
        let report = CdpReport {
            direct: path(0.2, 100),
            gateway: path(0.35, 90),
            rounds: 2,
            calls_per_round: 5,
            warmup_calls: 1,
            screenshot_seconds_per_round: 5.0,
            viewport: "1280x720".into(),
        };
        assert!((report.added_p50() - 0.15).abs() < 1e-9);
        assert!((report.screenshot_ratio() - 0.9).abs() < 1e-9);
        let table = report.table().render();
        assert!(table.contains("+0.150 ms / +0.300 ms"), "{table}");
        assert!(table.contains("0.900×"), "{table}");
        assert!(table.contains("p50 +0.150 ms to +0.150 ms"), "{table}");
    }
}
