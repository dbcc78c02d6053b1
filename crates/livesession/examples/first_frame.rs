//! Measures what a newcomer waits for and what a desktop costs, on this machine:
//! time from `POST /api/sessions` to the first frame (through the VNC proxy) in which the
//! start page is drawn, and the memory (PSS) of one idle desktop by process.
//!
//! `cargo run --release -p livesession --example first_frame -- [runs]`
//! (debug builds measure the debug proxy; use --release for figures you report).

#[path = "../tests/integration/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use livesession::bench::{percentile, pss_kib};
use serde_json::json;
use support::{PageServer, TestServer, rfb_over_ws, ws_connect};

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let page = PageServer::start().await;
    let args = page.server_args();
    let mut flags: Vec<&str> = vec![&args[0], &args[1]];
    // `first_frame -- N --sandbox false` measures the unsandboxed desktop for comparison.
    let extra: Vec<String> = std::env::args().skip(2).collect();
    flags.extend(extra.iter().map(String::as_str));
    let server = TestServer::start(&flags).await;
    let mut times = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        let created = server
            .create_session(json!({ "start_url": page.url }))
            .await;
        let (id, token) = (
            created["id"].as_str().unwrap().to_owned(),
            created["token"].as_str().unwrap().to_owned(),
        );
        let ws = ws_connect(
            &server,
            &format!("/api/sessions/{id}/vnc?token={token}"),
            &[],
        )
        .await;
        let mut rfb = rfb_over_ws(ws).await;
        loop {
            rfb.request_update(false).await.unwrap();
            rfb.read_update().await.unwrap();
            if rfb.share_of_colour((255, 0, 255), 8) >= 0.5 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the page was never drawn"
            );
        }
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "run {}: POST /api/sessions -> page drawn in {elapsed:.0} ms",
            run + 1
        );
        times.push(elapsed);

        if run == 0 {
            // Let the desktop settle, then weigh it.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let mut by_process: BTreeMap<String, (u64, usize)> = BTreeMap::new();
            for pid in server.desktop_procs(&id).members() {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let entry = by_process.entry(name).or_default();
                entry.0 += pss_kib(pid as u32).unwrap_or(0);
                entry.1 += 1;
            }
            let total: u64 = by_process.values().map(|(kib, _)| kib).sum();
            println!("idle desktop PSS by process:");
            for (name, (kib, count)) in &by_process {
                println!(
                    "  {name:<16} {:>7.1} MiB  ({count} process{})",
                    *kib as f64 / 1024.0,
                    if *count == 1 { "" } else { "es" }
                );
            }
            println!("  {:<16} {:>7.1} MiB", "total", total as f64 / 1024.0);
        }
        drop(rfb);
        server.revoke(&id).await;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "POST -> page drawn over {runs} cold starts: p50 {:.0} ms, p95 {:.0} ms, min {:.0} ms, max {:.0} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        times[0],
        times[times.len() - 1]
    );
    server.stop().await;
}
