//! `bench hibernate`: idle hibernation and resume, measured against a real server.
//!
//! One server with `--idle-timeout 1` and a loopback page that stores a login (a
//! persistent cookie and a localStorage value) on its first visit and is green on later
//! visits with both intact. Each run: a session on a persistent profile opens the page
//! (orange: the login is stored), its viewer leaves, and the desktop hibernates; the time
//! from the viewer leaving to `desktop: hibernated`, less the idle timeout, is the
//! hibernate time. Then a new VNC connection resumes it; the time from before the
//! connection to the first frame in which the restored page (green: login intact) covers
//! half the screen is the resume time. The profile's stored size is read from the
//! profiles API. Cold resumes (`--warm-desktops 0`) and with a warm pool.
//!
//! Then the hold: `--sessions N` (default 1,000; `--quick` 20) sessions created, each
//! opened once until its page is drawn and left, with `--max-desktops 4`, so that
//! sessions wait in line while idle desktops hibernate early; at the end every one is
//! hibernated, and the server's resident memory and the saved states' disk use are
//! divided by the number of sessions.

use std::time::{Duration, Instant};

use super::client::{connect_ws, rfb_over_ws, wait_for_colour};
use super::pages::{LOGIN_FIRST_RGB, LOGIN_KEPT_RGB, PageServer};
use super::report::{Table, fmt_ms};
use super::server::Server;
use super::stats::Summary;
use super::{Options, progress};

/// The idle timeout the benchmark's servers run with, seconds.
const IDLE_SECONDS: u64 = 1;

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: &'static str,
    pub flags: String,
    pub result: Result<Runs, String>,
}

#[derive(Debug, Clone, Default)]
pub struct Runs {
    /// Viewer gone → `desktop: hibernated`, less the idle timeout, ms.
    pub hibernate: Summary,
    /// Before the VNC connection → restored page drawn, ms.
    pub resume: Summary,
    /// Before the VNC connection → RFB handshake done (the desktop is up), ms.
    pub resume_handshake: Summary,
    /// Stored (encrypted, compressed) and unpacked bytes of one profile, and its files.
    pub stored_bytes: Summary,
    pub unpacked_bytes: Summary,
    pub files: Summary,
}

#[derive(Debug, Clone, Default)]
pub struct Hold {
    pub sessions: usize,
    pub hibernated: usize,
    pub elapsed: Duration,
    /// The server's resident memory before the first session and with all hibernated.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Bytes under the data directory's `profiles/` at the end.
    pub disk_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct HibernateReport {
    pub variants: Vec<Variant>,
    pub hold: Result<Hold, String>,
}

impl HibernateReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "Hibernation",
            "Server flags",
            "Runs",
            "hibernate p50 / p95",
            "resume to restored frame p50 / p95",
            "resume: desktop up (RFB) p50",
            "profile stored / unpacked (files)",
        ]);
        for v in &self.variants {
            let mut row = vec![v.name.to_owned(), format!("`{}`", v.flags)];
            match &v.result {
                Ok(r) => row.extend([
                    r.resume.count.to_string(),
                    format!("{} / {}", fmt_ms(r.hibernate.p50), fmt_ms(r.hibernate.p95)),
                    format!("{} / {}", fmt_ms(r.resume.p50), fmt_ms(r.resume.p95)),
                    fmt_ms(r.resume_handshake.p50),
                    format!(
                        "{:.0} KiB / {:.1} MiB ({:.0})",
                        r.stored_bytes.p50 / 1024.0,
                        r.unpacked_bytes.p50 / 1048576.0,
                        r.files.p50
                    ),
                ]),
                Err(e) => row.push(e.clone()),
            }
            t.row(row);
        }
        t
    }

    pub fn hold_table(&self) -> Table {
        let mut t = Table::new([
            "Hibernated sessions held",
            "Time to open all once",
            "Server RSS before → after",
            "Server memory per hibernated session",
            "Disk (profiles/) per hibernated session",
        ]);
        match &self.hold {
            Ok(h) => {
                let n = h.hibernated.max(1) as f64;
                t.row([
                    format!("{} of {}", h.hibernated, h.sessions),
                    format!("{:.0} s", h.elapsed.as_secs_f64()),
                    format!("{:.1} → {:.1} MiB", h.rss_before_kib as f64 / 1024.0, h.rss_after_kib as f64 / 1024.0),
                    format!("{:.1} KiB", h.rss_after_kib.saturating_sub(h.rss_before_kib) as f64 / n),
                    format!("{:.1} KiB", h.disk_bytes as f64 / 1024.0 / n),
                ]);
            }
            Err(e) => t.row([e.clone(), String::new(), String::new(), String::new(), String::new()]),
        }
        t
    }
}

pub async fn run(options: &Options) -> Result<HibernateReport, String> {
    let runs = options.runs.unwrap_or(if options.quick { 3 } else { 10 });
    let pages = PageServer::start().await?;
    let mut variants = Vec::new();
    for (name, warm) in [("cold resume", 0usize), ("resume with a warm pool", 2)] {
        let flags = vec![
            "--idle-timeout".to_owned(),
            IDLE_SECONDS.to_string(),
            "--warm-desktops".to_owned(),
            warm.to_string(),
        ];
        let result = variant(options, &pages, &flags, name, runs).await;
        variants.push(Variant { name, flags: flags.join(" "), result });
    }
    let sessions = options.max_sessions.unwrap_or(if options.quick { 20 } else { 1000 });
    let hold = hold(options, &pages, sessions).await;
    Ok(HibernateReport { variants, hold })
}

async fn desktop_state(server: &Server, id: &str) -> String {
    server.admin_get(&format!("/api/sessions/{id}")).await.map(|s| s["desktop"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

/// Polls until the session's desktop is `state`; returns when it was seen.
async fn wait_desktop(server: &Server, id: &str, state: &str, limit: Duration) -> Result<Instant, String> {
    let started = Instant::now();
    loop {
        if desktop_state(server, id).await == state {
            return Ok(Instant::now());
        }
        if started.elapsed() > limit {
            return Err(format!("session {id}: desktop not {state} within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A session on the benchmark page, persisting to `profile` if given: (id, token).
async fn create(server: &Server, url: &str, profile: Option<&str>) -> Result<(String, String), String> {
    let mut body = serde_json::json!({"start_url": url, "ttl_seconds": 3600});
    if let Some(name) = profile {
        body["profile"] = serde_json::json!({"name": name, "persist": true});
    }
    let created = server.create_session_with(&body).await?;
    Ok((created.id, created.token))
}

/// Opens the session's VNC WebSocket and reads frames until `rgb` covers half the
/// screen. Returns (handshake done, drawn) since `started`.
async fn view(server: &Server, id: &str, token: &str, rgb: (u8, u8, u8), started: Instant) -> Result<(Duration, Duration), String> {
    let url = format!("{}/api/sessions/{id}/vnc", server.ws_base());
    let ws = connect_ws(&url, Some(token)).await.map_err(|e| format!("VNC WebSocket: {e}"))?;
    let mut rfb = rfb_over_ws(ws).await.map_err(|e| format!("RFB through the proxy: {e}"))?;
    let handshake = started.elapsed();
    wait_for_colour(&mut rfb, rgb, 0.5, Duration::from_secs(60)).await.map_err(|e| format!("session {id}: {e}"))?;
    Ok((handshake, started.elapsed()))
}

async fn variant(options: &Options, pages: &PageServer, flags: &[String], name: &str, runs: usize) -> Result<Runs, String> {
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(&options.server_flags(pages, &refs)).await?;
    let result = async {
        let (mut hibernate, mut resume, mut handshake) = (Vec::new(), Vec::new(), Vec::new());
        let (mut stored, mut unpacked, mut files) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=runs {
            server.settle(Duration::from_secs(120)).await;
            let profile = format!("bench-{run}");
            let (id, token) = create(&server, &pages.url("login"), Some(&profile)).await?;
            // First visit: the page stores its login (orange).
            view(&server, &id, &token, LOGIN_FIRST_RGB, Instant::now()).await?;
            let left = Instant::now();
            let hibernated = wait_desktop(&server, &id, "hibernated", Duration::from_secs(60)).await?;
            let hibernate_ms = (hibernated - left).as_secs_f64() * 1000.0 - IDLE_SECONDS as f64 * 1000.0;
            let info = server.admin_get(&format!("/api/profiles/{profile}")).await?;
            stored.push(info["stored_bytes"].as_f64().unwrap_or(0.0));
            unpacked.push(info["unpacked_bytes"].as_f64().unwrap_or(0.0));
            files.push(info["files"].as_f64().unwrap_or(0.0));
            server.settle(Duration::from_secs(120)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            // The resume: a new viewer, until the restored page (green) is drawn.
            let (rfb_ms, drawn_ms) = view(&server, &id, &token, LOGIN_KEPT_RGB, Instant::now()).await?;
            progress(format!(
                "  hibernate ({name}) run {run}/{runs}: hibernated in {hibernate_ms:.0} ms after the idle timeout; resumed, login intact, in {:.0} ms",
                drawn_ms.as_secs_f64() * 1000.0
            ));
            hibernate.push(hibernate_ms);
            resume.push(drawn_ms.as_secs_f64() * 1000.0);
            handshake.push(rfb_ms.as_secs_f64() * 1000.0);
            server.revoke(&id).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(Runs {
            hibernate: Summary::of(&hibernate),
            resume: Summary::of(&resume),
            resume_handshake: Summary::of(&handshake),
            stored_bytes: Summary::of(&stored),
            unpacked_bytes: Summary::of(&unpacked),
            files: Summary::of(&files),
        })
    }
    .await;
    server.stop().await;
    result
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

async fn hold(options: &Options, pages: &PageServer, sessions: usize) -> Result<Hold, String> {
    let flags = ["--idle-timeout", "1", "--warm-desktops", "0", "--max-desktops", "4", "--max-queued", "10000"];
    let server = Server::start(&options.server_flags(pages, &flags)).await?;
    let result = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before_kib = super::procfs::rss_kib(server.pid).unwrap_or(0);
        let started = Instant::now();
        let mut ids = Vec::with_capacity(sessions);
        for i in 1..=sessions {
            let (id, token) = create(&server, &pages.url("login"), None).await?;
            view(&server, &id, &token, LOGIN_FIRST_RGB, Instant::now()).await?;
            ids.push(id);
            if i % 10 == 0 || i == sessions {
                progress(format!("  hold: {i}/{sessions} sessions opened once ({:.0} s)", started.elapsed().as_secs_f64()));
            }
        }
        let elapsed = started.elapsed();
        // Every one hibernates once idle.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut hibernated = 0;
        while Instant::now() < deadline {
            hibernated = 0;
            for id in &ids {
                if desktop_state(&server, id).await == "hibernated" {
                    hibernated += 1;
                }
            }
            if hibernated == ids.len() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(Hold {
            sessions,
            hibernated,
            elapsed,
            rss_before_kib,
            rss_after_kib: super::procfs::rss_kib(server.pid).unwrap_or(0),
            disk_bytes: disk_bytes(&server.data_dir.join("profiles")),
        })
    }
    .await;
    server.stop().await;
    result
}
