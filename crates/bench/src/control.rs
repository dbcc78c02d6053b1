//! `livesession bench control`: a soak of the control channel against a running server.
//! Opens N control connections, keeps the protocol's heartbeat (PING → PONG) for M
//! minutes, and reports connections held, unexpected closes, PONG latency and the
//! server's memory per connection. It measures; it does not judge (the tests do that).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::procfs::{pid_listening_on, pss_kib};
use super::stats::percentile;

#[derive(Debug, Clone)]
pub struct ControlSoak {
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub admin_token: String,
    pub connections: usize,
    pub duration: Duration,
    /// Sessions to spread the connections over (each session's desktop starts once).
    pub sessions: usize,
    pub ping_interval: Duration,
    /// Connections opened per second while ramping up.
    pub open_rate: f64,
    /// The server's process, for memory figures; found by its listening port if unset.
    pub server_pid: Option<u32>,
}

#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub opened: usize,
    pub held_to_the_end: usize,
    pub failed_to_open: usize,
    /// Closes or errors before the end of the run, with their codes.
    pub unexpected_closes: Vec<String>,
    pub pongs: usize,
    pub pong_p50_ms: f64,
    pub pong_p99_ms: f64,
    pub server_pss_before_kib: Option<u64>,
    pub server_pss_during_kib: Option<u64>,
}

impl SoakReport {
    pub fn memory_per_connection_kib(&self) -> Option<f64> {
        let (before, during) = (self.server_pss_before_kib?, self.server_pss_during_kib?);
        Some((during as f64 - before as f64) / self.opened.max(1) as f64)
    }

    pub fn print(&self, soak: &ControlSoak) {
        println!(
            "control channel soak: {} connections over {} session(s) for {:?}, PING every {:?}",
            soak.connections, soak.sessions, soak.duration, soak.ping_interval
        );
        println!("  connections opened:        {}", self.opened);
        println!("  failed to open:            {}", self.failed_to_open);
        println!("  held to the end:           {}", self.held_to_the_end);
        println!(
            "  unexpected closes:         {}",
            self.unexpected_closes.len()
        );
        for close in self.unexpected_closes.iter().take(10) {
            println!("    {close}");
        }
        println!(
            "  PONG latency:              p50 {:.2} ms, p99 {:.2} ms ({} pongs)",
            self.pong_p50_ms, self.pong_p99_ms, self.pongs
        );
        match (
            self.server_pss_before_kib,
            self.server_pss_during_kib,
            self.memory_per_connection_kib(),
        ) {
            (Some(before), Some(during), Some(per)) => println!(
                "  server memory (PSS):       {:.1} MiB idle, {:.1} MiB with the connections: {per:.1} KiB per connection",
                before as f64 / 1024.0,
                during as f64 / 1024.0
            ),
            _ => println!("  server memory:             unknown (pass --server-pid)"),
        }
    }
}

struct Shared {
    latencies: Mutex<Vec<f64>>,
    unexpected: Mutex<Vec<String>>,
    held: AtomicUsize,
}

pub async fn run(soak: &ControlSoak) -> Result<SoakReport, String> {
    let base = soak.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for _ in 0..soak.sessions.max(1) {
        let response = http
            .post(format!("{base}/api/sessions"))
            .bearer_auth(&soak.admin_token)
            .json(&serde_json::json!({ "ttl_seconds": soak.duration.as_secs() + 600 }))
            .send()
            .await
            .map_err(|e| format!("cannot reach {base}: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("creating a session answered {}", response.status()));
        }
        let created: Value = response.json().await.map_err(|e| e.to_string())?;
        let token = created["token"].as_str().unwrap_or_default().to_owned();
        sessions.push((
            created["id"].as_str().unwrap_or_default().to_owned(),
            created["control_url"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            tokio::sync::watch::channel(token).0,
        ));
    }
    // Like a real client, renew access tokens before they end and hand them to every
    // connection (which sends AUTH), so runs longer than a token's life hold.
    let renewal = tokio::spawn(renew_tokens(
        http.clone(),
        base.clone(),
        soak.admin_token.clone(),
        sessions
            .iter()
            .map(|(id, _, tx)| (id.clone(), tx.clone()))
            .collect(),
    ));
    let port = reqwest::Url::parse(&base)
        .ok()
        .and_then(|u| u.port_or_known_default());
    let pid = soak.server_pid.or_else(|| port.and_then(pid_listening_on));
    let mut report = SoakReport {
        server_pss_before_kib: pid.and_then(pss_kib),
        ..SoakReport::default()
    };

    let shared = Arc::new(Shared {
        latencies: Mutex::default(),
        unexpected: Mutex::default(),
        held: AtomicUsize::new(0),
    });
    let end = tokio::time::Instant::now()
        + soak.duration
        + Duration::from_secs_f64(soak.connections as f64 / soak.open_rate.max(0.1));
    let mut tasks = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / soak.open_rate.max(0.1));
    for i in 0..soak.connections {
        let (_, url, tokens) = &sessions[i % sessions.len()];
        let token = tokens.borrow().clone();
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().map_err(|_| "bad token")?,
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => {
                report.opened += 1;
                tasks.push(tokio::spawn(hold(
                    ws,
                    shared.clone(),
                    soak.ping_interval,
                    end,
                    tokens.subscribe(),
                )));
            }
            Err(e) => {
                report.failed_to_open += 1;
                shared
                    .unexpected
                    .lock()
                    .await
                    .push(format!("connection {i} failed to open: {e}"));
            }
        }
        tokio::time::sleep(gap).await;
    }
    // Let the connections settle (desktop start, first pings), then weigh the server.
    tokio::time::sleep(Duration::from_secs(5).min(soak.duration)).await;
    report.server_pss_during_kib = pid.and_then(pss_kib);
    for t in tasks {
        let _ = t.await;
    }
    renewal.abort();
    let mut latencies = std::mem::take(&mut *shared.latencies.lock().await);
    latencies.sort_by(f64::total_cmp);
    report.pongs = latencies.len();
    report.pong_p50_ms = percentile(&latencies, 0.5);
    report.pong_p99_ms = percentile(&latencies, 0.99);
    report.held_to_the_end = shared.held.load(Ordering::Relaxed);
    report.unexpected_closes = std::mem::take(&mut *shared.unexpected.lock().await);
    Ok(report)
}

use super::client::Ws;

/// Renews each session's access token at half its remaining life.
async fn renew_tokens(
    http: reqwest::Client,
    base: String,
    admin_token: String,
    sessions: Vec<(String, tokio::sync::watch::Sender<String>)>,
) {
    loop {
        let mut next = Duration::from_secs(300);
        for (id, tx) in &sessions {
            let response = http
                .post(format!("{base}/api/sessions/{id}/token"))
                .bearer_auth(&admin_token)
                .send()
                .await;
            let Ok(body) = async { response?.json::<Value>().await }.await else {
                continue;
            };
            let (Some(token), Some(expires)) =
                (body["token"].as_str(), body["expires_at"].as_str())
            else {
                continue;
            };
            tx.send_replace(token.to_owned());
            if let Ok(at) =
                time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
            {
                let half: time::Duration = (at - time::OffsetDateTime::now_utc()) / 2;
                let half: Duration = half.try_into().unwrap_or(Duration::from_secs(1));
                next = next.min(half.max(Duration::from_secs(1)));
            }
        }
        tokio::time::sleep(next).await;
    }
}

/// Holds one connection until `end`, sending PING on schedule, timing each PONG, and
/// sending AUTH whenever the session's token is renewed.
async fn hold(
    mut ws: Ws,
    shared: Arc<Shared>,
    interval: Duration,
    end: tokio::time::Instant,
    mut tokens: tokio::sync::watch::Receiver<String>,
) {
    let mut ping = tokio::time::interval(interval);
    let mut sent: Option<Instant> = None;
    let mut latencies = Vec::new();
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break None,
            Ok(()) = tokens.changed() => {
                let auth = serde_json::json!({ "type": "AUTH", "token": *tokens.borrow_and_update() }).to_string();
                if ws.send(Message::text(auth)).await.is_err() {
                    break Some("send failed".to_owned());
                }
            }
            _ = ping.tick() => {
                if ws.send(Message::text(r#"{"type":"PING"}"#)).await.is_err() {
                    break Some("send failed".to_owned());
                }
                sent = Some(Instant::now());
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if text.contains("\"PONG\"")
                        && let Some(at) = sent.take() {
                            latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                        }
                }
                Some(Ok(Message::Close(frame))) => {
                    break Some(frame.map(|f| format!("closed {} {}", u16::from(f.code), f.reason)).unwrap_or_else(|| "closed".into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("error: {e}")),
                None => break Some("stream ended".into()),
            }
        }
    };
    match outcome {
        None => {
            shared.held.fetch_add(1, Ordering::Relaxed);
            let _ = ws.close(None).await;
        }
        Some(what) => shared.unexpected.lock().await.push(what),
    }
    shared.latencies.lock().await.extend(latencies);
}
