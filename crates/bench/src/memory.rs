//! `bench memory`: PSS by process name of one desktop showing a page, after 5 s idle (its
//! processes found through its process group and sandbox PID namespace); and the
//! gateway's PSS per idle WebSocket connection (control and VNC).

use std::collections::BTreeMap;
use std::time::Duration;

use super::client::{connect_ws, connect_ws_with};
use super::pages::{PageServer, SOLID_RGB};
use super::procfs::{Memory, memory_by_name, pss_kib};
use super::report::{Table, fmt_mib};
use super::server::{Server, warm_pool_default};
use super::{Options, open_session, progress};

#[derive(Debug, Clone)]
pub struct PerConnection {
    pub kind: &'static str,
    pub connections: usize,
    pub before_kib: u64,
    pub after_kib: u64,
}

impl PerConnection {
    pub fn kib_each(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / self.connections.max(1) as f64
    }
}

#[derive(Debug, Clone)]
pub struct MemoryReport {
    /// The desktop's memory by process name.
    pub desktop: BTreeMap<String, Memory>,
    pub gateway: Vec<PerConnection>,
}

impl MemoryReport {
    pub fn total(&self) -> Memory {
        let mut total = Memory::default();
        for m in self.desktop.values() {
            total.pss += m.pss;
            total.uss += m.uss;
            total.processes += m.processes;
        }
        total
    }

    /// Process names by PSS, largest first.
    pub fn by_size(&self) -> Vec<(&String, &Memory)> {
        let mut v: Vec<_> = self.desktop.iter().collect();
        v.sort_by_key(|(_, m)| std::cmp::Reverse(m.pss));
        v
    }

    pub fn table(&self) -> Table {
        let mut t = Table::new(["Idle desktop, by process", "PSS", "USS", "Processes"]);
        for (name, m) in self.by_size() {
            t.row([
                name.clone(),
                fmt_mib(m.pss),
                fmt_mib(m.uss),
                m.processes.to_string(),
            ]);
        }
        let total = self.total();
        t.row([
            "**total**".into(),
            format!("**{}**", fmt_mib(total.pss)),
            fmt_mib(total.uss),
            total.processes.to_string(),
        ]);
        for g in &self.gateway {
            t.row([
                format!("Gateway, per idle {} connection", g.kind),
                format!("{:.1} KiB", g.kib_each()),
                String::new(),
                format!(
                    "{} connections: {} → {}",
                    g.connections,
                    fmt_mib(g.before_kib),
                    fmt_mib(g.after_kib)
                ),
            ]);
        }
        t
    }
}

pub async fn run(options: &Options) -> Result<MemoryReport, String> {
    let pages = PageServer::start().await?;
    // One desktop alone: with others running (a warm pool) its shared pages would be split
    // among them, and its PSS would look smaller than what one more desktop costs alone.
    let flags: &[&str] = if warm_pool_default().is_some() {
        &["--warm-desktops", "0"]
    } else {
        &[]
    };
    let server = Server::start(&options.server_flags(&pages, flags)).await?;
    server.settle(Duration::from_secs(120)).await;
    progress("  memory: starting a desktop");
    let (created, _viewer, _) = open_session(&server, Some(&pages.url("solid")), SOLID_RGB).await?;
    server.settle(Duration::from_secs(120)).await;
    progress("  memory: desktop idle for 5 s");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let desktop = memory_by_name(&server.desktop_pids(&created.id));

    // The connections are held until the end: memory freed in between would be reused by
    // the next kind and hide its cost.
    let mut gateway = Vec::new();
    let mut held = Vec::new();
    let control = if options.quick { 100 } else { 200 };
    for (kind, count) in [("control", control), ("VNC", 50)] {
        progress(format!("  memory: {count} idle {kind} connections"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = pss_kib(server.pid).ok_or("cannot read the server's PSS")?;
        for _ in 0..count {
            let ws = match kind {
                "control" => {
                    connect_ws_with(&created.control_url, Some(&created.token), None).await
                }
                _ => connect_ws(&created.vnc_url, Some(&created.token)).await,
            }
            .map_err(|e| format!("{kind} connection: {e}"))?;
            held.push(ws);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = pss_kib(server.pid).ok_or("cannot read the server's PSS")?;
        gateway.push(PerConnection {
            kind,
            connections: count,
            before_kib: before,
            after_kib: after,
        });
    }
    drop(held);
    drop(_viewer);
    server.stop().await;
    Ok(MemoryReport { desktop, gateway })
}
