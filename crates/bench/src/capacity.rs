//! `bench capacity`: sessions started one after another, each with a viewer reading
//! incremental updates of an animated page, until a new session fails to start, an
//! existing one gets no update for 5 s, memory in use reaches 80 % of MemTotal, or a
//! bound of the run (3 sessions with --quick, --max-sessions, or a time budget).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::pages::{ANIMATED_RGB, PageServer};
use super::procfs::{meminfo_kib, memory_of};
use super::report::{Table, fmt_mib};
use super::server::Server;
use super::stats::Summary;
use super::{Options, open_session, progress};

const STALL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct CapacityReport {
    /// Sessions that were all getting frames at once.
    pub held: usize,
    pub stop_reason: String,
    /// The most sessions at which every viewer still got at least 10 and 25 updates/s
    /// (before the first count at which one did not).
    pub held_at_10: usize,
    pub held_at_25: usize,
    /// Whether the stop was a bound of the benchmark, not a limit of the machine.
    pub bounded: bool,
    /// Updates per second each session's viewer got over the last observation with
    /// `held` sessions.
    pub fps: Summary,
    /// Memory in use (MemTotal − MemAvailable) with `held` sessions.
    pub memory_used_kib: u64,
    pub memory_total_kib: u64,
    pub start_ms: Summary,
    /// PSS of each desktop (all its processes), KiB, when the run stopped: with many
    /// running, shared pages are split among them.
    pub desktop_pss_kib: Summary,
}

impl CapacityReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new(["Capacity", "Value"]);
        t.row([
            "Concurrent live sessions held".to_owned(),
            format!("{}{}", if self.bounded { "≥ " } else { "" }, self.held),
        ]);
        t.row(["Stopped because".to_owned(), self.stop_reason.clone()]);
        t.row([
            "Sessions while every viewer got ≥ 10 / ≥ 25 updates/s".to_owned(),
            format!("{} / {}", self.held_at_10, self.held_at_25),
        ]);
        t.row([
            "Viewer updates/s per session at that count".to_owned(),
            format!("median {:.1}, min {:.1}", self.fps.p50, self.fps.min),
        ]);
        t.row([
            "Memory in use at that count".to_owned(),
            format!(
                "{} of {} ({:.0} %)",
                fmt_mib(self.memory_used_kib),
                fmt_mib(self.memory_total_kib),
                self.memory_used_kib as f64 * 100.0 / self.memory_total_kib.max(1) as f64
            ),
        ]);
        t.row([
            "Desktop PSS each, all running".to_owned(),
            format!(
                "median {}, max {}",
                fmt_mib(self.desktop_pss_kib.p50 as u64),
                fmt_mib(self.desktop_pss_kib.max as u64)
            ),
        ]);
        t.row([
            "Session start under that load".to_owned(),
            format!(
                "median {:.0} ms, max {:.0} ms",
                self.start_ms.p50, self.start_ms.max
            ),
        ]);
        t
    }
}

struct Viewer {
    frames: Arc<AtomicU64>,
    /// Milliseconds since the run's start at the last update.
    last_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn memory_used_kib() -> (u64, u64) {
    let total = meminfo_kib("MemTotal").unwrap_or(0);
    (
        total.saturating_sub(meminfo_kib("MemAvailable").unwrap_or(total)),
        total,
    )
}

pub async fn run(options: &Options) -> Result<CapacityReport, String> {
    let max = options
        .max_sessions
        .unwrap_or(if options.quick { 3 } else { 60 });
    let budget = Duration::from_secs(if options.quick { 60 } else { 300 });
    let observe = Duration::from_secs(if options.quick { 2 } else { 3 });
    let pages = PageServer::start().await?;
    let server = Server::start(&options.server_flags(&pages, &["--max-desktops", "1000"])).await?;
    server.settle(Duration::from_secs(120)).await;
    let t0 = Instant::now();
    let now_ms = move || t0.elapsed().as_millis() as u64;
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut starts = Vec::new();
    let mut sessions = Vec::new();
    let (mut held_at_10, mut held_at_25, mut done_10, mut done_25) = (0, 0, false, false);
    let (mut fps, mut memory) = (Summary::default(), memory_used_kib());
    let (stop_reason, bounded, held) = loop {
        let n = viewers.len() + 1;
        let (used, total) = memory_used_kib();
        if n > max {
            break (
                format!("the benchmark's bound of {max} sessions"),
                true,
                n - 1,
            );
        }
        if t0.elapsed() > budget {
            break (
                format!("the benchmark's time budget of {} s", budget.as_secs()),
                true,
                n - 1,
            );
        }
        if used * 10 >= total * 8 {
            break (
                "memory in use reached 80 % of MemTotal".into(),
                false,
                n - 1,
            );
        }
        progress(format!("  capacity: starting session {n}"));
        let (created, mut rfb, took) =
            match open_session(&server, Some(&pages.url("animated")), ANIMATED_RGB).await {
                Ok(s) => s,
                Err(e) => break (format!("session {n} failed to start: {e}"), false, n - 1),
            };
        starts.push(took.drawn.as_secs_f64() * 1000.0);
        sessions.push(created.id);
        let (frames, last_ms) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(now_ms())),
        );
        let (f, l) = (frames.clone(), last_ms.clone());
        let task = tokio::spawn(async move {
            loop {
                if rfb.request_update(true).await.is_err() {
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(60), rfb.read_update()).await {
                    Ok(Ok(_)) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        l.store(now_ms(), Ordering::Relaxed);
                    }
                    _ => return,
                }
            }
        });
        viewers.push(Viewer {
            frames,
            last_ms,
            task,
        });
        // Watch every session for a while: each must keep getting updates.
        let counts: Vec<u64> = viewers
            .iter()
            .map(|v| v.frames.load(Ordering::Relaxed))
            .collect();
        let watched = Instant::now();
        let mut stalled = None;
        while watched.elapsed() < observe && stalled.is_none() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            stalled = viewers.iter().position(|v| {
                now_ms().saturating_sub(v.last_ms.load(Ordering::Relaxed))
                    > STALL.as_millis() as u64
            });
        }
        if let Some(k) = stalled {
            break (
                format!("session {} got no update for 5 s with {n} running", k + 1),
                false,
                n - 1,
            );
        }
        let seconds = watched.elapsed().as_secs_f64();
        let rates: Vec<f64> = viewers
            .iter()
            .zip(&counts)
            .map(|(v, before)| (v.frames.load(Ordering::Relaxed) - before) as f64 / seconds)
            .collect();
        fps = Summary::of(&rates);
        for (threshold, held, done) in [
            (10.0, &mut held_at_10, &mut done_10),
            (25.0, &mut held_at_25, &mut done_25),
        ] {
            *done |= fps.min < threshold;
            if !*done {
                *held = n;
            }
        }
        memory = memory_used_kib();
        progress(format!(
            "  capacity: {n} sessions live, median {:.1} updates/s, min {:.1}",
            fps.p50, fps.min
        ));
    };
    let pss: Vec<f64> = sessions
        .iter()
        .map(|id| memory_of(&server.desktop_pids(id)).pss as f64)
        .collect();
    progress(format!("  capacity: stopping {} desktops", viewers.len()));
    for v in &viewers {
        v.task.abort();
    }
    server.stop().await;
    Ok(CapacityReport {
        held,
        stop_reason,
        held_at_10,
        held_at_25,
        bounded,
        fps,
        memory_used_kib: memory.0,
        memory_total_kib: memory.1,
        start_ms: Summary::of(&starts),
        desktop_pss_kib: Summary::of(&pss),
    })
}
