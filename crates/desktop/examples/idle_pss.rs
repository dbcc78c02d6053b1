//! Starts one desktop and prints its idle PSS by process: for trying Chromium and Xvnc
//! settings. `cargo run -p livesession-desktop --example idle_pss -- [chromium flags…]`

use std::collections::BTreeMap;
use std::time::Duration;

use livesession_desktop::egress::EgressPolicy;
use livesession_desktop::{
    DesktopRuntime, DesktopSpec, LocalRuntime, LocalRuntimeConfig, ResourceLimits, ToolPaths,
    members,
};

#[tokio::main]
async fn main() {
    let root = std::env::temp_dir().join(format!("idle-pss-{}", std::process::id()));
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        root: root.clone(),
        tools: ToolPaths::default(),
        start_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(3),
        sandbox: true,
        egress: EgressPolicy::default(),
        host_ports: Vec::new(),
        limits: ResourceLimits::default(),
        uid_base: 2_000_000_000,
        warm: 0,
        warm_size: (1280, 720),
        warm_url: "about:blank".into(),
        chromium_flags: std::env::args().skip(1).collect(),
        writable_mib: Some(1024),
    })
    .unwrap();
    let page = "data:text/html,<h1>idle</h1><p>Some text on a page.</p>";
    // PSS_DESKTOPS=n: n desktops side by side; shared pages (Chromium's binary) are then
    // split between them, as on a server holding several sessions. Figures are per desktop.
    let n: usize = std::env::var("PSS_DESKTOPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut handles = Vec::new();
    for i in 0..n {
        let started = std::time::Instant::now();
        let h = rt
            .start(
                DesktopSpec { id: format!("pss{i}"), width: 1280, height: 720, start_url: page.into(), restore: None },
                &|_| {},
            )
            .await
            .unwrap();
        println!("ready in {} ms", started.elapsed().as_millis());
        handles.push(h);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut by: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    let pids: Vec<i32> = handles.iter().flat_map(|h| members(h.pgid, h.pidns)).collect();
    for pid in pids {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned();
        let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Pss:").map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0))))
            .unwrap_or(0);
        if std::env::var_os("PSS_DETAIL").is_some() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let kind = cmd.split('\0').find(|a| a.starts_with("--type=")).unwrap_or("(main)");
            println!("    {pid:>7} {name:<16} {kind:<24} {:>7.1} MiB", pss as f64 / 1024.0);
        }
        let e = by.entry(name).or_default();
        e.0 += pss;
        e.1 += 1;
    }
    let total: u64 = by.values().map(|v| v.0).sum();
    let per = n as f64 * 1024.0;
    println!("PSS per desktop, {n} running:");
    for (name, (kib, c)) in &by {
        println!("  {name:<16} {:>7.1} MiB ({} process(es))", *kib as f64 / per, c / n);
    }
    println!("  total            {:>7.1} MiB", total as f64 / per);
    rt.stop_all().await;
    let _ = std::fs::remove_dir_all(root);
}
