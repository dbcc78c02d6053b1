//! `bench cluster`: three nodes on one PostgreSQL store, measured from outside.
//!
//! Starts a PostgreSQL server on loopback (initdb and pg_ctl in a temporary directory, as
//! the `postgres` user when run as root, trust authentication on 127.0.0.1, a free port)
//! and three `livesession serve` children of this binary (nodes `a`, `b`, `c`, each on its
//! own loopback port and data directory, one shared directory, one cluster secret, one
//! admin token, a heartbeat every second). Then:
//!
//! 1. **Placement**: N sessions (`--max-sessions`, default 30) created through node a, one
//!    control connection each opened at once through a, b, c in turn; after the first
//!    `DESKTOP_STATUS`, each session's `node` is read.
//! 2. **Relay latency**: control-channel PING → PONG on one session, directly on its node and
//!    through another node, in alternating rounds (`--runs`, default 500 each).
//! 3. **Relay throughput**: a 64 MiB file uploaded to that session on its node, then
//!    downloaded 3 times directly and 3 times through another node, alternately.
//! 4. **Fan-out**: for each session, one control connection directly on its node and one
//!    through a second node; the session is revoked through the third; the time from the
//!    DELETE's answer to each connection's close (4008).
//!
//! Desktops: each node runs at most one (`--max-desktops 1`, no warm pool), and a "holder"
//! session on each node keeps its desktop in use for the whole run, so every measured
//! session waits in line (`DESKTOP_STATUS queued`) and no desktop starts, hibernates or
//! stops while something is measured. Placement counts placed sessions, not desktops, so
//! the line does not change where sessions go. Three desktops in all, on a small machine.
//!
//! The nodes' logs (JSON) and PostgreSQL's are kept in the run's directory, printed at
//! the start; the data directories are removed at the end. Dropping the [`Cluster`] (an
//! error, Ctrl-C) stops the nodes (SIGTERM, then wait) and PostgreSQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::client::{Ws, connect_ws_with};
use super::report::{Table, fmt_ms};
use super::server::{BENCH_LIMITS as LIMITS, free_port, tail};
use super::stats::Summary;
use super::{Options, progress};

pub const NODE_IDS: [&str; 3] = ["a", "b", "c"];


/// The file the throughput step moves.
const FILE_BYTES: usize = 64 << 20;
const DOWNLOADS: usize = 3;

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------ PostgreSQL

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `argv` as PostgreSQL's user: `postgres` when we are root (initdb refuses root).
fn as_postgres(argv: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
            .args(argv);
        c
    } else {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    }
}

fn run_command(mut command: Command, what: &str) -> Result<String, String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A PostgreSQL server on 127.0.0.1, its cluster in `dir`; stopped and removed on drop.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    running: bool,
}

impl Postgres {
    /// Debian's newest `/usr/lib/postgresql/<N>/bin` with initdb and pg_ctl.
    fn binaries() -> Result<PathBuf, String> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
            .collect();
        found.sort();
        found.pop().ok_or_else(|| {
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); install it with: apt-get install -y postgresql".to_owned()
        })
    }

    /// initdb, pg_ctl start (a few ports tried), CREATE DATABASE livesession. Blocking.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let bin = Self::binaries()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(dir);
            run_command(chown, "chown of PostgreSQL's directory")?;
        }
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let data = s(&dir.join("data"));
        run_command(
            as_postgres(&[
                &s(&bin.join("initdb")),
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]),
            "initdb",
        )?;
        let mut pg = Self { port: 0, bin, dir: dir.to_owned(), running: false };
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| e.to_string())?;
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                s(dir)
            );
            let start = as_postgres(&[
                &s(&pg.bin.join("pg_ctl")),
                "-D",
                &data,
                "-l",
                &s(&dir.join("postgres.log")),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ]);
            match run_command(start, "pg_ctl start") {
                Ok(_) => {
                    pg.port = port;
                    pg.running = true;
                    break;
                }
                Err(e) => last = e,
            }
        }
        if !pg.running {
            return Err(format!(
                "PostgreSQL did not start on loopback: {last}\n{}",
                tail(&dir.join("postgres.log"), 20)
            ));
        }
        let mut psql = Command::new(pg.bin.join("psql"));
        psql.args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg("CREATE DATABASE livesession");
        run_command(psql, "CREATE DATABASE")?;
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/livesession", self.port)
    }

    /// pg_ctl stop (fast), then removes the cluster. Blocking; once.
    pub fn stop(&mut self) {
        if self.running {
            self.running = false;
            let data = self.dir.join("data").to_string_lossy().into_owned();
            let pg_ctl = self.bin.join("pg_ctl").to_string_lossy().into_owned();
            let _ = as_postgres(&[&pg_ctl, "-D", &data, "-m", "fast", "-w", "-t", "30", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(self.dir.join("data"));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------ the nodes

pub struct Node {
    pub id: &'static str,
    pub port: u16,
    pub base: String,
    pub log: PathBuf,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

/// How a node's stop went: exit status and seconds from SIGTERM, or that it was killed.
fn stop_nodes(nodes: &mut [Node]) -> Vec<String> {
    let now = Instant::now();
    for node in nodes.iter() {
        if let Some(child) = &node.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    let mut outcomes = Vec::new();
    for node in nodes.iter_mut() {
        let Some(mut child) = node.child.take() else { continue };
        let mut outcome = None;
        // Draining saves running desktops (each within 15 s): up to 90 s, then SIGKILL.
        while now.elapsed() < Duration::from_secs(90) {
            if let Ok(Some(status)) = child.try_wait() {
                outcome = Some(format!(
                    "node {} stopped in {:.1} s ({status})",
                    node.id,
                    now.elapsed().as_secs_f64()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        outcomes.push(outcome.unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            format!("node {} did not stop within 90 s of SIGTERM: killed", node.id)
        }));
        let _ = std::fs::remove_dir_all(&node.data_dir);
    }
    outcomes
}

/// Three nodes on one PostgreSQL store. Field order is drop order: nodes, then PostgreSQL.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub pg: Postgres,
    pub root: PathBuf,
    pub admin: String,
    pub http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_nodes(&mut self.nodes);
        self.pg.stop();
        let _ = std::fs::remove_dir_all(self.root.join("shared"));
    }
}

impl Cluster {
    pub async fn start(options: &Options) -> Result<Self, String> {
        let root = PathBuf::from(format!("/tmp/lsb-cluster-{}", random_hex(4)));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        progress(format!("cluster: logs in {}", root.display()));
        let pg_dir = root.join("pg");
        let pg = tokio::task::spawn_blocking(move || Postgres::start(&pg_dir))
            .await
            .map_err(|e| e.to_string())??;
        progress(format!("cluster: PostgreSQL on 127.0.0.1:{}", pg.port));
        let shared = root.join("shared");
        std::fs::create_dir_all(&shared).map_err(|e| e.to_string())?;
        let secret = random_hex(32);
        let admin = random_hex(24);
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cluster = Self { nodes: Vec::new(), pg, root: root.clone(), admin, http: reqwest::Client::new() };
        for id in NODE_IDS {
            let port = free_port().map_err(|e| e.to_string())?;
            let data_dir = root.join(format!("data-{id}"));
            std::fs::create_dir_all(&data_dir).map_err(|e| e.to_string())?;
            let log = root.join(format!("node-{id}.log"));
            let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let addr = format!("127.0.0.1:{port}");
            let child = Command::new(&exe)
                .arg("serve")
                .args(LIMITS)
                .args(["--warm-desktops", "0", "--max-desktops", "1", "--max-queued", "1000"])
                .args(&options.serve_args)
                .env("LIVESESSION_DATABASE_URL", cluster.pg.url())
                .env("LIVESESSION_CLUSTER_SECRET", &secret)
                .env("LIVESESSION_NODE_ID", id)
                .env("LIVESESSION_NODE_ADDR", &addr)
                .env("LIVESESSION_LISTEN", &addr)
                .env("LIVESESSION_DATA_DIR", &data_dir)
                .env("LIVESESSION_SHARED_DIR", &shared)
                .env("LIVESESSION_ADMIN_TOKEN", &cluster.admin)
                .env("LIVESESSION_NODE_HEARTBEAT", "1")
                .env("LIVESESSION_LOG_FORMAT", "json")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("cannot start node {id}: {e}"))?;
            cluster.nodes.push(Node {
                id,
                port,
                base: format!("http://{addr}"),
                log,
                data_dir,
                child: Some(child),
            });
        }
        // Every node ready, and every node seeing three live nodes.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            for node in &mut cluster.nodes {
                if let Some(status) = node.exited() {
                    return Err(format!("node {} exited ({status}) at start:\n{}", node.id, tail(&node.log, 20)));
                }
            }
            let mut ready = 0;
            for node in &cluster.nodes {
                let readyz = cluster.http.get(format!("{}/readyz", node.base)).send().await;
                if readyz.is_ok_and(|r| r.status().is_success()) {
                    let alive = cluster
                        .get(node, "/api/nodes")
                        .await
                        .map(|v| v["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["alive"] == true).count()))
                        .unwrap_or(0);
                    if alive == NODE_IDS.len() {
                        ready += 1;
                    }
                }
            }
            if ready == cluster.nodes.len() {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = cluster.nodes.iter().map(|n| format!("node {}:\n{}", n.id, tail(&n.log, 10))).collect();
                return Err(format!("the nodes were not all ready with three live nodes within 90 s:\n{}", logs.join("\n")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn node(&self, id: &str) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("a node of the cluster")
    }

    /// An admin GET on a node.
    pub async fn get(&self, node: &Node, path: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("{}{path}", node.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("GET {path} on node {} answered {status}: {body}", node.id));
        }
        Ok(body)
    }

    /// `POST /api/sessions` on a node: (id, access token).
    pub async fn create(&self, node: &Node) -> Result<(String, String), String> {
        let response = self
            .http
            .post(format!("{}/api/sessions", node.base))
            .bearer_auth(&self.admin)
            .json(&json!({ "ttl_seconds": 3600 }))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("POST /api/sessions on node {} answered {status}: {body}", node.id));
        }
        Ok((
            body["id"].as_str().unwrap_or_default().to_owned(),
            body["token"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// The node a session is placed on, as node a answers.
    pub async fn placed(&self, id: &str) -> Result<Option<String>, String> {
        let session = self.get(self.node("a"), &format!("/api/sessions/{id}")).await?;
        Ok(session["node"].as_str().map(str::to_owned))
    }

    /// Stops the nodes (SIGTERM together, then waits) and PostgreSQL; removes the data.
    pub async fn stop(mut self) -> Vec<String> {
        let mut nodes = std::mem::take(&mut self.nodes);
        let outcomes = tokio::task::spawn_blocking(move || stop_nodes(&mut nodes))
            .await
            .unwrap_or_default();
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
        outcomes
    }

    /// WARN and ERROR lines in each node's log (JSON lines), with a few examples.
    pub fn log_summary(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| log_summary(n.id, &n.log))
            .collect()
    }
}

fn log_summary(id: &str, log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let level = if line.contains("\"level\":\"ERROR\"") {
            "ERROR"
        } else if line.contains("\"level\":\"WARN\"") {
            "WARN"
        } else {
            continue;
        };
        *counts.entry(level).or_default() += 1;
        let message = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["fields"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| line.chars().take(160).collect());
        *examples.entry(format!("{level} {message}")).or_default() += 1;
    }
    let mut out = format!(
        "node {id}: {} ERROR, {} WARN log lines",
        counts.get("ERROR").unwrap_or(&0),
        counts.get("WARN").unwrap_or(&0)
    );
    let mut examples: Vec<(String, usize)> = examples.into_iter().collect();
    examples.sort_by_key(|e| std::cmp::Reverse(e.1));
    for (message, n) in examples.into_iter().take(5) {
        out.push_str(&format!("\n    {n}× {message}"));
    }
    out
}

// ------------------------------------------------------------------ control connections

async fn control(node: &Node, id: &str, token: &str) -> Result<Ws, String> {
    let url = format!("{}/api/sessions/{id}/control", node.ws_base());
    tokio::time::timeout(Duration::from_secs(30), connect_ws_with(&url, Some(token), None))
        .await
        .map_err(|_| format!("control connection to {id} through node {}: no answer in 30 s", node.id))?
        .map_err(|e| format!("control connection to {id} through node {}: {e}", node.id))
}

/// Reads until a message of `kind`; returns it. A close or an error ends it with an error.
async fn until(ws: &mut Ws, kind: &str, limit: Duration) -> Result<Value, String> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let msg: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if msg["type"] == kind {
                        return Ok(msg);
                    }
                }
                Some(Ok(Message::Close(frame))) => return Err(format!("closed before {kind}: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("before {kind}: {e}")),
                None => return Err(format!("ended before {kind}")),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| format!("no {kind} within {limit:?}"))?
}

/// A control connection opened and its first `DESKTOP_STATUS` read.
async fn open_until_status(node: &Node, id: &str, token: &str) -> Result<(Ws, String), String> {
    let mut ws = control(node, id, token).await?;
    let status = until(&mut ws, "DESKTOP_STATUS", Duration::from_secs(30))
        .await
        .map_err(|e| format!("session {id} through node {}: {e}", node.id))?;
    Ok((ws, status["status"].as_str().unwrap_or_default().to_owned()))
}

/// Keeps a connection alive in the background (PING every 20 s, messages read).
fn hold(mut ws: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(20));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if ws.send(Message::text(r#"{"type":"PING"}"#)).await.is_err() {
                        return;
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    _ => {}
                },
            }
        }
    })
}

async fn ping(ws: &mut Ws) -> Result<f64, String> {
    let sent = Instant::now();
    ws.send(Message::text(r#"{"type":"PING"}"#)).await.map_err(|e| e.to_string())?;
    until(ws, "PONG", Duration::from_secs(10)).await?;
    Ok(sent.elapsed().as_secs_f64() * 1000.0)
}

/// Waits for the close; returns when it came and its code (`None`: no close frame).
async fn closed(mut ws: Ws, limit: Duration) -> Result<(Instant, Option<u16>), String> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return (Instant::now(), frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (Instant::now(), None),
            }
        }
    };
    tokio::time::timeout(limit, read).await.map_err(|_| format!("no close within {limit:?}"))
}

// ------------------------------------------------------------------ the report

#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub sessions: usize,
    /// Node → sessions placed on it, of them opened through it (not relayed).
    pub per_node: BTreeMap<String, (usize, usize)>,
    pub unplaced: usize,
    /// First DESKTOP_STATUS after the upgrade, direct and relayed, ms.
    pub first_status_direct: Summary,
    pub first_status_relayed: Summary,
    pub elapsed: Duration,
    pub statuses: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub session_node: String,
    pub relayed_through: String,
    pub direct: Summary,
    pub relayed: Summary,
}

#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub session_node: String,
    pub relayed_through: String,
    pub upload_mb_s: f64,
    /// MB/s (10^6 bytes per second) of each download.
    pub direct: Vec<f64>,
    pub relayed: Vec<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct FanOut {
    pub sessions: usize,
    /// DELETE answered → close, ms (negative: the close came first).
    pub direct: Summary,
    pub relayed: Summary,
    /// The DELETE's own round trip, ms.
    pub delete: Summary,
    /// Closes that came before the DELETE's answer.
    pub closed_first: usize,
    /// Close codes seen other than 4008, with counts.
    pub other_codes: BTreeMap<String, usize>,
}

#[derive(Debug, Clone)]
pub struct ClusterReport {
    pub placement: Result<Placement, String>,
    pub latency: Result<Latency, String>,
    pub throughput: Result<Throughput, String>,
    pub fanout: Result<FanOut, String>,
    pub notes: Vec<String>,
}

fn median(values: &[f64]) -> f64 {
    Summary::of(values).p50
}

impl ClusterReport {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mut t = Table::new(["Node", "Sessions placed", "of them opened through this node", "through another (relayed)"]);
        match &self.placement {
            Ok(p) => {
                for id in NODE_IDS {
                    let (placed, direct) = p.per_node.get(id).copied().unwrap_or_default();
                    t.row([id.to_owned(), placed.to_string(), direct.to_string(), (placed - direct).to_string()]);
                }
                if p.unplaced > 0 {
                    t.row(["(none)".to_owned(), p.unplaced.to_string(), String::new(), String::new()]);
                }
                out.push_str(&format!(
                    "**Placement**: {} sessions, one control connection each opened at once through a, b, c in turn ({:.1} s to all first `DESKTOP_STATUS`; statuses {})\n\n",
                    p.sessions,
                    p.elapsed.as_secs_f64(),
                    p.statuses.iter().map(|(s, n)| format!("{s} ×{n}")).collect::<Vec<_>>().join(", ")
                ));
                out.push_str(&t.render());
                let mut f = Table::new(["Upgrade → first DESKTOP_STATUS", "Connections", "p50", "p99", "max"]);
                for (name, s) in [("on the session's node", &p.first_status_direct), ("through another node", &p.first_status_relayed)] {
                    f.row([name.to_owned(), s.count.to_string(), fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.max)]);
                }
                out.push('\n');
                out.push_str(&f.render());
            }
            Err(e) => out.push_str(&format!("**Placement**: failed: {e}\n")),
        }
        out.push('\n');
        match &self.latency {
            Ok(l) => {
                let mut t = Table::new(["Control PING → PONG", "Round trips", "p50", "p99", "max"]);
                for (name, s) in [
                    (format!("direct on the session's node ({})", l.session_node), &l.direct),
                    (format!("through node {} (relayed to {})", l.relayed_through, l.session_node), &l.relayed),
                ] {
                    t.row([name, s.count.to_string(), fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.max)]);
                }
                out.push_str(&t.render());
                out.push_str(&format!(
                    "\nRelay added: {} at p50, {} at p99.\n",
                    fmt_ms(l.relayed.p50 - l.direct.p50),
                    fmt_ms(l.relayed.p99 - l.direct.p99)
                ));
            }
            Err(e) => out.push_str(&format!("**Relay latency**: failed: {e}\n")),
        }
        out.push('\n');
        match &self.throughput {
            Ok(r) => {
                let mut t = Table::new(["64 MiB session file", "Runs", "MB/s (median)", "each"]);
                let each = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
                t.row([format!("upload on the session's node ({})", r.session_node), "1".to_owned(), format!("{:.0}", r.upload_mb_s), String::new()]);
                t.row([format!("download direct ({})", r.session_node), r.direct.len().to_string(), format!("{:.0}", median(&r.direct)), each(&r.direct)]);
                t.row([format!("download through node {} (relayed)", r.relayed_through), r.relayed.len().to_string(), format!("{:.0}", median(&r.relayed)), each(&r.relayed)]);
                out.push_str(&t.render());
            }
            Err(e) => out.push_str(&format!("**Relay throughput**: failed: {e}\n")),
        }
        out.push('\n');
        match &self.fanout {
            Ok(f) => {
                let mut t = Table::new(["Revocation through a third node → close (4008)", "Connections", "min", "p50", "p99", "max"]);
                for (name, s) in [("direct on the session's node", &f.direct), ("relayed through another node", &f.relayed)] {
                    t.row([name.to_owned(), s.count.to_string(), fmt_ms(s.min), fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.max)]);
                }
                t.row([
                    "(the DELETE's own round trip)".to_owned(),
                    f.delete.count.to_string(),
                    fmt_ms(f.delete.min),
                    fmt_ms(f.delete.p50),
                    fmt_ms(f.delete.p99),
                    fmt_ms(f.delete.max),
                ]);
                out.push_str(&t.render());
                out.push_str(&format!(
                    "\nTimes from the DELETE's answer to the close frame (negative: the close came first; {} of {}); {} sessions, one revoked at a time. Close codes other than 4008: {}.\n",
                    f.closed_first,
                    f.direct.count + f.relayed.count,
                    f.sessions,
                    if f.other_codes.is_empty() {
                        "none".to_owned()
                    } else {
                        f.other_codes.iter().map(|(c, n)| format!("{c} ×{n}")).collect::<Vec<_>>().join(", ")
                    }
                ));
            }
            Err(e) => out.push_str(&format!("**Fan-out**: failed: {e}\n")),
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }
}

// ------------------------------------------------------------------ the run

pub async fn run(options: &Options) -> Result<ClusterReport, String> {
    let sessions = options.max_sessions.unwrap_or(if options.quick { 9 } else { 30 }).max(3);
    let pings = options.runs.unwrap_or(if options.quick { 100 } else { 500 }).max(10);
    let started = Instant::now();
    let cluster = Cluster::start(options).await?;
    progress(format!("cluster: three nodes ready in {:.1} s", started.elapsed().as_secs_f64()));
    let result = measure(&cluster, sessions, pings).await;
    let mut notes = cluster.log_summary();
    let logs = cluster.root.display().to_string();
    notes.extend(cluster.stop().await);
    notes.push(format!("logs: {logs}; the whole run took {:.0} s", started.elapsed().as_secs_f64()));
    let (placement, latency, throughput, fanout, mut measured_notes) = result?;
    measured_notes.extend(notes);
    Ok(ClusterReport { placement, latency, throughput, fanout, notes: measured_notes })
}

type Measured = (
    Result<Placement, String>,
    Result<Latency, String>,
    Result<Throughput, String>,
    Result<FanOut, String>,
    Vec<String>,
);

async fn measure(cluster: &Cluster, sessions: usize, pings: usize) -> Result<Measured, String> {
    let a = cluster.node("a");
    let mut notes = Vec::new();

    // The holders: one session per node whose desktop stays in use all along.
    progress("cluster: a holder session per node (the only desktops of the run)");
    let mut holders = Vec::new();
    let mut holder_nodes = Vec::new();
    for _ in NODE_IDS {
        let (id, token) = cluster.create(a).await?;
        let (ws, _) = open_until_status(a, &id, &token).await?;
        holder_nodes.push(cluster.placed(&id).await?.unwrap_or_else(|| "(none)".into()));
        holders.push((id, token, ws));
    }
    notes.push(format!("holder sessions placed on: {}", holder_nodes.join(", ")));
    let mut held = Vec::new();
    for (id, token, mut ws) in holders {
        let ready = async {
            loop {
                let status = until(&mut ws, "DESKTOP_STATUS", Duration::from_secs(120)).await?;
                match status["status"].as_str() {
                    Some("ready") => return Ok(()),
                    Some("failed" | "stopped") => return Err(format!("holder {id}: desktop {status}")),
                    _ => {}
                }
            }
        };
        if let Err(e) = ready.await {
            notes.push(format!("holder {id}: its desktop was not ready: {e}"));
        }
        held.push((id, token, hold(ws)));
    }
    progress(format!("cluster: holders' desktops up ({:?})", holder_nodes));

    // 1. Placement.
    progress(format!("cluster: placement of {sessions} sessions"));
    let mut created = Vec::new();
    for _ in 0..sessions {
        created.push(cluster.create(a).await?);
    }
    let began = Instant::now();
    let opens = created.iter().enumerate().map(|(i, (id, token))| {
        let node = &cluster.nodes[i % cluster.nodes.len()];
        async move {
            let t = Instant::now();
            let r = open_until_status(node, id, token).await;
            r.map(|(ws, status)| (ws, status, t.elapsed().as_secs_f64() * 1000.0, node.id))
        }
    });
    let opened = futures_util::future::join_all(opens).await;
    let elapsed = began.elapsed();
    let placement = async {
        let mut per_node: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let (mut direct, mut relayed) = (Vec::new(), Vec::new());
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        let mut unplaced = 0;
        let mut owners = Vec::new();
        for ((id, _), result) in created.iter().zip(&opened) {
            let (_, status, ms, through) = result.as_ref().map_err(Clone::clone)?;
            *statuses.entry(status.clone()).or_default() += 1;
            let node = cluster.placed(id).await?;
            match &node {
                Some(n) => {
                    let e = per_node.entry(n.clone()).or_default();
                    e.0 += 1;
                    if n.as_str() == *through {
                        e.1 += 1;
                        direct.push(*ms);
                    } else {
                        relayed.push(*ms);
                    }
                }
                None => unplaced += 1,
            }
            owners.push(node);
        }
        Ok::<_, String>((
            Placement {
                sessions,
                per_node,
                unplaced,
                first_status_direct: Summary::of(&direct),
                first_status_relayed: Summary::of(&relayed),
                elapsed,
                statuses,
            },
            owners,
        ))
    }
    .await;
    // Placement is done: the connections go (their sessions leave the line).
    for ws in opened.into_iter().flatten().map(|(ws, ..)| ws) {
        let mut ws = ws;
        let _ = ws.close(None).await;
    }
    let (placement, owners) = match placement {
        Ok((p, owners)) => (Ok(p), owners),
        Err(e) => (Err(e), Vec::new()),
    };
    if owners.len() != sessions || owners.iter().any(Option::is_none) {
        let error = "not every session was placed; relay and fan-out not measured".to_owned();
        for (_, _, task) in &held {
            task.abort();
        }
        return Ok((placement, Err(error.clone()), Err(error.clone()), Err(error), notes));
    }
    let owners: Vec<String> = owners.into_iter().flatten().collect();
    let other = |owner: &str, skip: usize| -> &Node {
        let i = NODE_IDS.iter().position(|n| *n == owner).unwrap_or(0);
        &cluster.nodes[(i + 1 + skip) % cluster.nodes.len()]
    };

    // 2. Relay latency on the first session.
    let (id, token) = &created[0];
    let owner = cluster.node(&owners[0]);
    let via = other(&owners[0], 0);
    progress(format!("cluster: PING → PONG ×{pings} on node {} and through node {}", owner.id, via.id));
    let latency = async {
        let (mut direct_ws, _) = open_until_status(owner, id, token).await?;
        let (mut relayed_ws, _) = open_until_status(via, id, token).await?;
        let (mut direct, mut relayed) = (Vec::new(), Vec::new());
        // Warm-up, then alternating rounds of 50.
        for _ in 0..10 {
            ping(&mut direct_ws).await?;
            ping(&mut relayed_ws).await?;
        }
        while direct.len() < pings {
            let n = 50.min(pings - direct.len());
            for _ in 0..n {
                direct.push(ping(&mut direct_ws).await?);
            }
            for _ in 0..n {
                relayed.push(ping(&mut relayed_ws).await?);
            }
        }
        let _ = direct_ws.close(None).await;
        let _ = relayed_ws.close(None).await;
        Ok::<_, String>(Latency {
            session_node: owner.id.to_owned(),
            relayed_through: via.id.to_owned(),
            direct: Summary::of(&direct),
            relayed: Summary::of(&relayed),
        })
    }
    .await;

    // 3. Relay throughput on the same session.
    progress(format!("cluster: a 64 MiB file, uploaded on node {} and downloaded {DOWNLOADS}× on it and through node {}", owner.id, via.id));
    let throughput = async {
        let mut body = vec![0u8; FILE_BYTES];
        getrandom::fill(&mut body).map_err(|e| e.to_string())?;
        let body = bytes::Bytes::from(body);
        let t = Instant::now();
        let response = cluster
            .http
            .post(format!("{}/api/sessions/{id}/files?name=bench.bin", owner.base))
            .bearer_auth(&cluster.admin)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        let answer = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("upload on node {} answered {status}: {answer}", owner.id));
        }
        let upload_mb_s = FILE_BYTES as f64 / 1e6 / t.elapsed().as_secs_f64();
        let (mut direct, mut relayed) = (Vec::new(), Vec::new());
        for _ in 0..DOWNLOADS {
            for (node, into) in [(owner, &mut direct), (via, &mut relayed)] {
                let t = Instant::now();
                let mut response = cluster
                    .http
                    .get(format!("{}/api/sessions/{id}/files/bench.bin", node.base))
                    .bearer_auth(&cluster.admin)
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                if !response.status().is_success() {
                    let status = response.status();
                    return Err(format!(
                        "download through node {} answered {status}: {}",
                        node.id,
                        response.text().await.unwrap_or_default()
                    ));
                }
                let mut got = 0usize;
                let mut same = true;
                while let Some(chunk) = response.chunk().await.map_err(|e| format!("download through node {}: {}", node.id, e.without_url()))? {
                    same &= body.get(got..got + chunk.len()) == Some(&chunk[..]);
                    got += chunk.len();
                }
                let secs = t.elapsed().as_secs_f64();
                if got != FILE_BYTES || !same {
                    return Err(format!("download through node {}: {got} bytes, same as uploaded: {same}", node.id));
                }
                into.push(FILE_BYTES as f64 / 1e6 / secs);
            }
        }
        Ok::<_, String>(Throughput {
            session_node: owner.id.to_owned(),
            relayed_through: via.id.to_owned(),
            upload_mb_s,
            direct,
            relayed,
        })
    }
    .await;

    // 4. Fan-out: each session revoked through the third node.
    progress(format!("cluster: fan-out of {sessions} revocations"));
    let fanout = async {
        let (mut direct, mut relayed, mut delete) = (Vec::new(), Vec::new(), Vec::new());
        let mut other_codes: BTreeMap<String, usize> = BTreeMap::new();
        for ((id, token), owner_id) in created.iter().zip(&owners) {
            let owner = cluster.node(owner_id);
            let (via, third) = (other(owner_id, 0), other(owner_id, 1));
            let (direct_ws, _) = open_until_status(owner, id, token).await?;
            let (relayed_ws, _) = open_until_status(via, id, token).await?;
            let limit = Duration::from_secs(15);
            let direct_close = tokio::spawn(closed(direct_ws, limit));
            let relayed_close = tokio::spawn(closed(relayed_ws, limit));
            let sent = Instant::now();
            let response = cluster
                .http
                .delete(format!("{}/api/sessions/{id}", third.base))
                .bearer_auth(&cluster.admin)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            let answered = Instant::now();
            if !response.status().is_success() {
                return Err(format!("DELETE on node {} answered {}", third.id, response.status()));
            }
            delete.push((answered - sent).as_secs_f64() * 1000.0);
            for (task, into, what) in [(direct_close, &mut direct, "direct"), (relayed_close, &mut relayed, "relayed")] {
                let (at, code) = task.await.map_err(|e| e.to_string())?.map_err(|e| format!("session {id} ({what}): {e}"))?;
                let ms = if at >= answered {
                    (at - answered).as_secs_f64() * 1000.0
                } else {
                    -((answered - at).as_secs_f64() * 1000.0)
                };
                into.push(ms);
                if code != Some(4008) {
                    *other_codes.entry(format!("{what}: {code:?}")).or_default() += 1;
                }
            }
        }
        Ok::<_, String>(FanOut {
            sessions: created.len(),
            direct: Summary::of(&direct),
            relayed: Summary::of(&relayed),
            delete: Summary::of(&delete),
            closed_first: direct.iter().chain(&relayed).filter(|ms| **ms < 0.0).count(),
            other_codes,
        })
    }
    .await;

    for (id, _, task) in held {
        task.abort();
        let response = cluster
            .http
            .delete(format!("{}/api/sessions/{id}", a.base))
            .bearer_auth(&cluster.admin)
            .send()
            .await;
        if let Err(e) = response {
            notes.push(format!("revoking holder {id}: {}", e.without_url()));
        }
    }
    // The holders' desktops stop with their sessions' end before the nodes are stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &cluster.nodes {
        loop {
            let readyz = match cluster.http.get(format!("{}/readyz", node.base)).send().await {
                Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if readyz["desktops"].as_u64() == Some(0) {
                break;
            }
            if Instant::now() > deadline {
                notes.push(format!("node {}: desktops still live 20 s after the holders' revocation: {}", node.id, readyz["desktops"]));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // `desktops` drops at once; the stop (processes, mounts, directory) may still run.
        let waited = Instant::now();
        loop {
            let left: usize = [true, false]
                .map(|sandbox| livesession_desktop::desktops_root(&node.data_dir, sandbox))
                .iter()
                .map(|root| std::fs::read_dir(root).map(|d| d.count()).unwrap_or(0))
                .sum();
            if left == 0 {
                if waited.elapsed() > Duration::from_millis(200) {
                    notes.push(format!(
                        "node {}: its desktop's directory went {:.1} s after `/readyz` counted no live desktop",
                        node.id,
                        waited.elapsed().as_secs_f64()
                    ));
                }
                break;
            }
            if Instant::now() > deadline {
                notes.push(format!("node {}: {left} desktop directories still there 20 s after the holders' revocation", node.id));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((placement, latency, throughput, fanout, notes))
}
