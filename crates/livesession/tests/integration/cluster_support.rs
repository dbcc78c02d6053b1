//! Harness for the multi-node tests (cluster.rs): three real `livesession serve` processes,
//! each in its own network namespace, joined by veth pairs to a bridge on a private /24
//! picked per test; one PostgreSQL database (the test's loopback server, reached from the
//! namespaces through a forwarder on the bridge address); one shared directory; a test page
//! served inside every namespace on the same loopback port (so a desktop on any node opens
//! the same origin, and its cookies are the same origin's wherever it resumes).
//!
//! Everything is removed on drop, also when the test panics: node processes (their process
//! groups and whatever is left in their namespaces), the namespaces, the veths, the bridge.
//! A failing test prints every node's log.
//!
//! Needs root and `ip` (iproute2): without either it fails with a clear message, never
//! skips.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::Html;
use futures_util::{SinkExt, StreamExt};
use livesession_desktop::rfb::RfbClient;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{ADMIN, ApiClient, Ws, still_running};

/// Shared by every node (relayed requests are authenticated with it).
pub const CLUSTER_SECRET: &str = "cluster-test-secret-5f1e9a7c3b2d4e6f8a0c1e3b5d7f9a2c";
/// The port every node listens on, inside its namespace.
pub const NODE_PORT: u16 = 8080;
/// The test page's port, on the loopback of every node's namespace (desktops reach it
/// through `--desktop-host-ports`).
pub const PAGE_PORT: u16 = 8088;
/// Stripe stand-in settings every node gets (test 2).
pub const STRIPE_WEBHOOK_SECRET: &str = crate::payments::SECRET;

pub const NODE_IDS: [&str; 3] = ["a", "b", "c"];

/// The page a desktop opens (the same URL on every node).
pub fn page_url() -> String {
    format!("http://127.0.0.1:{PAGE_PORT}/page")
}

// ---------------------------------------------------------------- the network

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running `ip {}`: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("`ip {}` failed ({}): {}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("setting up the test network: {e}");
    }
}

/// The test's bridge and namespaces. Dropping it kills whatever still runs in the
/// namespaces and removes them, their veths and the bridge.
pub struct Net {
    /// `10.213.N`: the bridge is `.1`, the nodes `.2`, `.3`, `.4`.
    pub prefix: String,
    pub bridge: String,
    pub namespaces: Vec<String>,
    veths: Vec<String>,
}

impl Net {
    pub fn create(nodes: usize) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the cluster tests need root (network namespaces, a bridge, sandboxed desktops); CI runs them as root"
        );
        match std::process::Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "the cluster tests need `ip` (iproute2: apt-get install iproute2) to build their network; it did not run: {other:?}"
            ),
        }
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // A /24 no interface of this machine has yet.
        let used = ip(&["-4", "-o", "addr"]).unwrap_or_default();
        let mut third = (pid.wrapping_mul(7).wrapping_add(n * 13)) % 240 + 10;
        for _ in 0..240 {
            if !used.contains(&format!("10.213.{third}.")) {
                break;
            }
            third = (third - 10 + 1) % 240 + 10;
        }
        let prefix = format!("10.213.{third}");
        // Names ≤ 15 characters, unique per process and test.
        let tag = format!("{:x}{:x}", pid & 0xff_ffff, n & 0xff);
        let mut net = Net { prefix, bridge: format!("lsbr{tag}"), namespaces: Vec::new(), veths: Vec::new() };
        must(&["link", "add", &net.bridge, "type", "bridge"]);
        must(&["addr", "add", &format!("{}/24", net.bridge_ip()), "dev", &net.bridge]);
        must(&["link", "set", &net.bridge, "up"]);
        for i in 0..nodes {
            let ns = format!("lsns{tag}{i}");
            must(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            let (host, peer) = (format!("lsv{tag}{i}"), format!("lsp{tag}{i}"));
            must(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
            net.veths.push(host.clone());
            must(&["link", "set", &peer, "netns", &ns]);
            must(&["link", "set", &host, "master", &net.bridge]);
            must(&["link", "set", &host, "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            must(&["-n", &ns, "addr", "add", &format!("{}/24", net.node_ip(i)), "dev", &peer]);
            must(&["-n", &ns, "link", "set", &peer, "up"]);
        }
        net
    }

    pub fn bridge_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 2)
    }

    /// The inode of a namespace (to find the processes that run in it).
    pub fn netns_inode(&self, i: usize) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.namespaces[i])).ok().map(|m| m.ino())
    }
}

/// Live (not zombie) processes whose network namespace is `inode`.
pub fn processes_in_netns(inode: u64) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode))
        .filter(|pid| state_and_start(*pid).is_some())
        .collect()
}

/// A process's start time (field 22 of its stat), if it runs and is not a zombie.
fn state_and_start(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first()? == &"Z" {
        return None;
    }
    Some((*fields.get(19)?).to_owned())
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and every live process descending from it.
fn descendants(root: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.namespaces.len() {
            if let Some(inode) = self.netns_inode(i) {
                for pid in processes_in_netns(inode) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        for veth in &self.veths {
            // Usually gone with its peer's namespace already.
            let _ = ip(&["link", "del", veth]);
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("cleanup: {e}");
        }
    }
}

// ---------------------------------------------------------------- the database forwarder

/// Forwards TCP from the bridge address to PostgreSQL on loopback.
pub struct Forwarder {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(listen_ip: &str, target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind((listen_ip, 0)).await.expect("the forwarder binds the bridge address");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- the page, in every namespace

// The page is support.rs's: an input whose every change is reported to `/typed`.
use crate::support::PAGE;

/// The test page served on `127.0.0.1:PAGE_PORT` inside each namespace; what any copy
/// reports lands in one list.
#[derive(Clone, Default)]
pub struct Pages {
    typed: Arc<Mutex<Vec<String>>>,
}

impl Pages {
    /// Serves the page on the bridge address (root namespace), and returns its address;
    /// [`Pages::forward_in`] makes it `127.0.0.1:PAGE_PORT` inside a namespace.
    async fn serve(&self, bridge_ip: &str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((bridge_ip, 0)).await.expect("the page binds the bridge address");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/page", axum::routing::get(|| async { Html(PAGE) }))
            .route(
                "/typed",
                axum::routing::get(
                    |State(t): State<Arc<Mutex<Vec<String>>>>, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                        t.lock().unwrap().extend(q.get("value").cloned());
                        "ok"
                    },
                ),
            )
            .with_state(self.typed.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }

    /// `socat` inside namespace `ns`: its `127.0.0.1:PAGE_PORT` to the page on the bridge.
    /// (Tests may not use `unsafe`, so no setns from this process.) Killed with the
    /// namespace.
    fn forward_in(ns: &str, page: SocketAddr) -> std::process::Child {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns, "socat"])
            .arg(format!("TCP-LISTEN:{PAGE_PORT},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("TCP:{page}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("socat (apt-get install socat) runs in the namespace")
    }

    pub fn reports(&self) -> Vec<String> {
        self.typed.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- nodes

pub struct Node {
    pub id: &'static str,
    pub index: usize,
    pub ip: String,
    pub api: ApiClient,
    pub data: tempfile::TempDir,
    pub log: PathBuf,
    child: Option<tokio::process::Child>,
    pub pid: i32,
    env: Vec<(String, String)>,
    ns: String,
}

impl Node {
    pub fn ws_base(&self) -> String {
        format!("ws://{}:{NODE_PORT}", self.ip)
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = tokio::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_livesession"), "serve"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", "/root");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("`ip netns exec … livesession serve` starts");
        // `ip netns exec` execs the command: this is the server's pid.
        self.pid = child.id().expect("running") as i32;
        self.child = Some(child);
    }

    /// Waits for `GET /readyz` to answer 200.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("node {} exited before it was ready: {status}", self.id));
            }
            match self.api.http.get(self.api.url("/readyz")).timeout(Duration::from_secs(2)).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(format!("node {} not ready within {limit:?}: {last}", self.id));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every process of this node that runs now, with its start time: the server and its
    /// descendants, whatever runs in its namespace, and the members of the desktops it
    /// recorded (process groups, PID namespaces).
    pub fn processes(&self, netns: Option<u64>, exclude: &BTreeSet<i32>) -> Vec<(i32, String)> {
        let mut pids: BTreeSet<i32> = BTreeSet::new();
        if self.pid > 0 && state_and_start(self.pid).is_some() {
            pids.extend(descendants(self.pid));
        }
        if let Some(inode) = netns {
            pids.extend(processes_in_netns(inode).into_iter().filter(|p| !exclude.contains(p)));
        }
        let root = livesession::config::desktops_root(&self.data.path().canonicalize().unwrap(), true);
        if let Ok(dirs) = std::fs::read_dir(root) {
            for dir in dirs.flatten() {
                let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).ok().and_then(|s| s.trim().parse::<u64>().ok());
                let (Some(pgid), pidns) = (read("desktop.pgid"), read("desktop.pidns")) else { continue };
                pids.extend(livesession_desktop::members(pgid as i32, pidns));
            }
        }
        pids.into_iter().filter_map(|pid| Some((pid, state_and_start(pid)?))).collect()
    }

    fn kill_everything(&mut self) {
        if self.pid > 0 {
            // The server's process group (its own), then anything it left.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        }
        self.child = None;
    }
}

/// Three nodes on one database and one shared directory.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub pages: Pages,
    pub shared: tempfile::TempDir,
    pub database_url: String,
    _forwarder: Forwarder,
    /// The page forwarders (socat) in the namespaces: not the nodes' processes.
    helpers: Vec<std::process::Child>,
    _logs: tempfile::TempDir,
    // Last: removed after the nodes are killed.
    pub net: Net,
}

/// The settings every node gets (the contract's, and what desktops need here).
fn node_env(net: &Net, i: usize, database: &str, data: &Path, shared: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let ip = net.node_ip(i);
    let mut env: Vec<(String, String)> = [
        ("LIVESESSION_DATABASE_URL", database.to_owned()),
        ("LIVESESSION_CLUSTER_SECRET", CLUSTER_SECRET.to_owned()),
        ("LIVESESSION_NODE_ID", NODE_IDS[i].to_owned()),
        ("LIVESESSION_NODE_ADDR", format!("{ip}:{NODE_PORT}")),
        ("LIVESESSION_LISTEN", format!("{ip}:{NODE_PORT}")),
        ("LIVESESSION_DATA_DIR", data.to_string_lossy().into_owned()),
        ("LIVESESSION_SHARED_DIR", shared.to_string_lossy().into_owned()),
        ("LIVESESSION_ADMIN_TOKEN", ADMIN.to_owned()),
        ("LIVESESSION_NODE_HEARTBEAT", "1".to_owned()),
        ("LIVESESSION_NODE_DEAD_AFTER", "3".to_owned()),
        // Desktops one at a time on a small machine: no warm pool.
        ("LIVESESSION_WARM_DESKTOPS", "0".to_owned()),
        ("LIVESESSION_DESKTOP_HOST_PORTS", PAGE_PORT.to_string()),
        ("LIVESESSION_START_URL", page_url()),
        ("LIVESESSION_LOG_FORMAT", "json".to_owned()),
        ("LIVESESSION_STRIPE_SECRET_KEY", "sk_test_cluster".to_owned()),
        ("LIVESESSION_STRIPE_WEBHOOK_SECRET", STRIPE_WEBHOOK_SECRET.to_owned()),
        // Never called: no checkout is created.
        ("LIVESESSION_STRIPE_API_BASE", "http://127.0.0.1:9".to_owned()),
        // A viewer opened on any node: its WebSockets carry that node's origin, and the
        // node running the desktop (which checks the Origin of a relayed request) is
        // usually another one. A real deployment has one public URL in front instead.
        ("LIVESESSION_ALLOWED_ORIGINS", (0..3).map(|n| format!("http://{}:{NODE_PORT}", net.node_ip(n))).collect::<Vec<_>>().join(",")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

impl Cluster {
    /// Builds the network, the forwarder and the pages, and starts three nodes (A first,
    /// then B and C), each ready. `extra` are settings for every node (e.g. an idle
    /// timeout).
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        livesession_billing::install_tls_provider();
        let net = Net::create(3);
        let database = livesession_pgtest::database();
        // postgres://user@127.0.0.1:PORT/name → through the forwarder on the bridge.
        let rest = database.split_once("@").expect("a database URL with a user").1;
        let hostport = rest.split('/').next().unwrap();
        let target: SocketAddr = hostport.parse().expect("PostgreSQL on a loopback address");
        assert!(target.ip().is_loopback(), "the test database is on loopback: {database}");
        let forwarder = Forwarder::start(&net.bridge_ip(), target).await;
        let database_url = database.replacen(hostport, &forwarder.addr.to_string(), 1);
        let pages = Pages::default();
        let page_addr = pages.serve(&net.bridge_ip()).await;
        let mut helpers = Vec::new();
        for ns in &net.namespaces {
            helpers.push(Pages::forward_in(ns, page_addr));
        }
        let shared = tempfile::Builder::new().prefix("lsshared").tempdir_in("/tmp").unwrap();
        let logs = tempfile::Builder::new().prefix("lslogs").tempdir_in("/tmp").unwrap();
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
        let mut nodes = Vec::new();
        for (i, id) in NODE_IDS.iter().enumerate() {
            let data = tempfile::Builder::new().prefix(&format!("lsnode{id}")).tempdir_in("/tmp").unwrap();
            let env = node_env(&net, i, &database_url, data.path(), shared.path(), extra);
            let ip = net.node_ip(i);
            nodes.push(Node {
                id,
                index: i,
                api: ApiClient { base: format!("http://{ip}:{NODE_PORT}"), http: http.clone() },
                ip,
                data,
                log: logs.path().join(format!("node-{id}.log")),
                child: None,
                pid: 0,
                env,
                ns: net.namespaces[i].clone(),
            });
        }
        let mut cluster = Self { nodes, pages, shared, database_url, _forwarder: forwarder, helpers, _logs: logs, net };
        for i in 0..3 {
            cluster.nodes[i].spawn();
            if let Err(e) = cluster.nodes[i].wait_ready(Duration::from_secs(60)).await {
                panic!("{e}");
            }
        }
        cluster.wait_nodes_listed(3, Duration::from_secs(15)).await;
        cluster
    }

    pub fn node(&self, id: &str) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn index_of(&self, id: &str) -> usize {
        NODE_IDS.iter().position(|n| *n == id).unwrap_or_else(|| panic!("no node {id:?}"))
    }

    /// A node that is alive, other than `not`.
    pub fn other_than(&self, not: &[&str]) -> &Node {
        self.nodes.iter().find(|n| n.alive() && !not.contains(&n.id)).expect("another live node")
    }

    /// `GET /api/nodes` through `via`.
    pub async fn nodes_listed(&self, via: usize) -> Value {
        self.nodes[via].api.admin_get("/api/nodes").await
    }

    /// Waits until `GET /api/nodes` (through every live node) lists `n` live nodes.
    pub async fn wait_nodes_listed(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        for node in self.nodes.iter().filter(|n| n.alive()) {
            loop {
                let listed = node.api.admin_get("/api/nodes").await;
                let alive = listed["nodes"].as_array().map(|a| a.iter().filter(|n| n["alive"] == true).count());
                if alive == Some(n) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} lists {alive:?} live nodes, not {n}: {listed}", node.id);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The node a session's desktop is placed on (`node` of `GET /api/sessions/{id}`,
    /// asked through `via`).
    pub async fn placed_on(&self, via: usize, id: &str) -> Option<String> {
        let session = self.nodes[via].api.get_session(id).await;
        assert!(session.get("node").is_some(), "GET /api/sessions/{{id}} carries a `node` field: {session}");
        session["node"].as_str().map(str::to_owned)
    }

    /// Which nodes have a desktop directory for session `id` (its runtime's files: a node
    /// that only relays has none).
    pub fn desktop_dirs(&self, id: &str) -> Vec<&'static str> {
        self.nodes
            .iter()
            .filter(|n| livesession::config::desktops_root(&n.data.path().canonicalize().unwrap(), true).join(id).join("desktop.pgid").exists())
            .map(|n| n.id)
            .collect()
    }

    /// The page forwarders' processes (in the namespaces, but not the nodes').
    pub fn helper_pids(&self) -> BTreeSet<i32> {
        self.helpers.iter().flat_map(|h| descendants(h.id() as i32)).collect()
    }

    /// Every node's log (for a failure).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            all.push_str(&format!("===== node {} ({}) log: {}\n{text}\n", node.id, node.ip, node.log.display()));
        }
        all
    }

    /// The log lines of node `id` containing every one of `needles`.
    pub fn log_lines(&self, id: &str, needles: &[&str]) -> Vec<String> {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
    }

    /// SIGKILLs node `i`, waits for it to exit, and asserts that nothing of it (the
    /// server, its descendants, its desktops' process groups and PID namespaces, anything
    /// in its network namespace) runs within `limit`. Returns the instant of the kill.
    pub async fn kill(&mut self, i: usize, limit: Duration) -> Instant {
        let netns = self.net.netns_inode(i);
        let helpers = self.helper_pids();
        let node = &mut self.nodes[i];
        let before = node.processes(netns, &helpers);
        assert!(!before.is_empty(), "node {} runs before it is killed", node.id);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(node.pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        let mut child = node.child.take().expect("the node runs");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("the node exits on SIGKILL").unwrap();
        eprintln!("node {} killed ({status}); {} processes of it ran", node.id, before.len());
        let left = loop {
            let mut left = still_running(&before);
            if let Some(inode) = netns {
                left.extend(processes_in_netns(inode).into_iter().filter(|p| !helpers.contains(p)).map(|p| format!("{p} (in the node's network namespace)")));
            }
            if left.is_empty() || killed.elapsed() > limit {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(left.is_empty(), "{:?} after node {} was SIGKILLed, its processes still run: {left:#?}", killed.elapsed(), node.id);
        eprintln!("nothing of node {} runs {} ms after the kill", node.id, killed.elapsed().as_millis());
        killed
    }

    /// Sends SIGTERM to node `i` (a drain) and returns what ran of it then (for
    /// [`Cluster::wait_stopped`]).
    pub fn terminate(&mut self, i: usize) -> Vec<(i32, String)> {
        let netns = self.net.netns_inode(i);
        let node = &self.nodes[i];
        let before = node.processes(netns, &self.helper_pids());
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(node.pid), nix::sys::signal::Signal::SIGTERM).unwrap();
        before
    }

    /// Waits for node `i` to exit within `limit` after [`Cluster::terminate`], and asserts
    /// it left no process (within 15 s more).
    pub async fn wait_stopped(&mut self, i: usize, before: &[(i32, String)], limit: Duration) -> std::process::ExitStatus {
        let node = &mut self.nodes[i];
        let mut child = node.child.take().expect("the node runs");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .unwrap_or_else(|_| panic!("node {} did not stop within {limit:?} of SIGTERM", node.id))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut left = still_running(before);
        while !left.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = still_running(before);
        }
        assert!(left.is_empty(), "node {} stopped gracefully but left processes: {left:#?}", node.id);
        status
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            eprintln!("database {}, shared dir {}", self.database_url, self.shared.path().display());
            // Kept for a look after the test (the logs directory is removed otherwise).
            let keep = std::env::temp_dir().join(format!("livesession-cluster-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for node in &self.nodes {
                let _ = std::fs::copy(&node.log, keep.join(node.log.file_name().unwrap()));
            }
            eprintln!("node logs copied to {}", keep.display());
        }
        for node in &mut self.nodes {
            node.kill_everything();
        }
        for helper in &mut self.helpers {
            let _ = helper.kill();
            let _ = helper.wait();
        }
        // The namespaces' remaining processes, the namespaces and links: Net's drop.
    }
}

// ---------------------------------------------------------------- WebSocket clients

/// Opens a WebSocket (no Origin header, as an agent or tool connects).
pub async fn ws_open(url: &str, protocols: Option<&str>) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(p) = protocols {
        request.headers_mut().insert("sec-websocket-protocol", axum::http::HeaderValue::from_str(p).unwrap());
    }
    match tokio::time::timeout(Duration::from_secs(20), tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Err(_) => Err(format!("{url}: no handshake within 20 s")),
    }
}

/// How a connection ended: the close code and reason (1006 for an abnormal end), and
/// when it was seen.
#[derive(Debug, Clone)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
    pub at: Instant,
}

/// Reads until the connection closes, or `limit`.
pub async fn closed_within(ws: &mut Ws, limit: Duration) -> Option<Closed> {
    let read = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => {
                    return Closed { code: u16::from(frame.code), reason: frame.reason.to_string(), at: Instant::now() };
                }
                Ok(Message::Close(None)) => return Closed { code: 1005, reason: String::new(), at: Instant::now() },
                Ok(_) => {}
                Err(e) => return Closed { code: 1006, reason: e.to_string(), at: Instant::now() },
            }
        }
        Closed { code: 1006, reason: "stream ended".into(), at: Instant::now() }
    };
    tokio::time::timeout(limit, read).await.ok()
}

/// The next JSON text message within `limit`.
pub async fn next_json(ws: &mut Ws, limit: Duration) -> Result<Value, Option<Closed>> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(None),
            Ok(None) => return Err(Some(Closed { code: 1006, reason: "stream ended".into(), at: Instant::now() })),
            Ok(Some(Err(e))) => return Err(Some(Closed { code: 1006, reason: e.to_string(), at: Instant::now() })),
            Ok(Some(Ok(Message::Close(frame)))) => {
                let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                return Err(Some(Closed { code, reason, at: Instant::now() }));
            }
            Ok(Some(Ok(Message::Text(text)))) => return Ok(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A control channel that has read its CONNECTED.
pub struct Control {
    pub ws: Ws,
    pub via: &'static str,
    pub statuses: Vec<String>,
}

impl Control {
    /// Opens `/api/sessions/{id}/control` on `node` and reads CONNECTED.
    pub async fn open(node: &Node, id: &str, token: &str) -> Result<Self, String> {
        let url = format!("{}/api/sessions/{id}/control?token={token}", node.ws_base());
        let mut ws = ws_open(&url, None).await?;
        match next_json(&mut ws, Duration::from_secs(15)).await {
            Ok(hello) if hello["type"] == "CONNECTED" => Ok(Self { ws, via: node.id, statuses: Vec::new() }),
            Ok(other) => Err(format!("control on {}: first message {other}", node.id)),
            Err(closed) => Err(format!("control on {}: no CONNECTED: {closed:?}", node.id)),
        }
    }

    /// Reads DESKTOP_STATUS messages until `ready`; the error says what came instead.
    pub async fn until_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match next_json(&mut self.ws, left).await {
                Ok(m) if m["type"] == "DESKTOP_STATUS" => {
                    let status = m["status"].as_str().unwrap_or("?").to_owned();
                    self.statuses.push(status.clone());
                    match status.as_str() {
                        "ready" => return Ok(()),
                        "failed" | "stopped" => return Err(format!("control on {}: {m} after {:?}", self.via, self.statuses)),
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(closed) => return Err(format!("control on {}: {closed:?} after {:?}", self.via, self.statuses)),
            }
        }
    }

    /// Opens a control channel through `node` and waits for `ready`, retrying (a new
    /// connection each time) until `limit`; returns it and the failures seen.
    pub async fn ready_retrying(node: &Node, id: &str, token: &str, limit: Duration) -> (Self, Vec<String>) {
        let deadline = Instant::now() + limit;
        let mut failures = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match Self::open(node, id, token).await {
                Ok(mut c) => match c.until_ready(left.max(Duration::from_secs(1))).await {
                    Ok(()) => return (c, failures),
                    Err(e) => failures.push(e),
                },
                Err(e) => failures.push(e),
            }
            assert!(Instant::now() < deadline, "no ready desktop through node {} within {limit:?}: {failures:#?}", node.id);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// An RFB client over the VNC WebSocket, with the connection's close recorded (the
/// bench's bridge drops it).
pub struct Vnc {
    pub rfb: RfbClient<DuplexStream>,
    closed: Arc<Mutex<Option<Closed>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Vnc {
    /// Opens `/api/sessions/{id}/vnc` (subprotocol `binary`) on `node` and does the RFB
    /// handshake (which waits for the desktop).
    pub async fn open(node: &Node, id: &str, token: &str) -> Result<Self, String> {
        let url = format!("{}/api/sessions/{id}/vnc?token={token}", node.ws_base());
        let ws = ws_open(&url, Some("binary")).await?;
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let closed = Arc::new(Mutex::new(None));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (mut tx, mut rx) = ws.split();
        let (mut read_half, mut write_half) = tokio::io::split(theirs);
        // Client → server.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match read_half.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tx.close().await;
        });
        // Server → client, and the close.
        {
            let (closed, notify) = (closed.clone(), notify.clone());
            tokio::spawn(async move {
                let end = loop {
                    match rx.next().await {
                        Some(Ok(Message::Binary(b))) => {
                            if write_half.write_all(&b).await.is_err() {
                                // The client side is gone: keep reading for the close.
                                continue;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                            break Closed { code, reason, at: Instant::now() };
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Closed { code: 1006, reason: e.to_string(), at: Instant::now() },
                        None => break Closed { code: 1006, reason: "stream ended".into(), at: Instant::now() },
                    }
                };
                *closed.lock().unwrap() = Some(end);
                notify.notify_waiters();
                let _ = write_half.shutdown().await;
            });
        }
        let rfb = match tokio::time::timeout(Duration::from_secs(90), RfbClient::handshake(ours)).await {
            Ok(Ok(rfb)) => rfb,
            Ok(Err(e)) => return Err(format!("RFB handshake through node {}: {e}; close: {:?}", node.id, closed.lock().unwrap().clone())),
            Err(_) => return Err(format!("no RFB handshake through node {} within 90 s", node.id)),
        };
        Ok(Self { rfb, closed, notify })
    }

    /// The close, once it came (waits up to `limit`).
    pub async fn closed_within(&self, limit: Duration) -> Option<Closed> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if let Some(c) = self.closed.lock().unwrap().clone() {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.closed.lock().unwrap().clone();
            }
        }
    }

    /// Requests full frames until `share` of the screen is `rgb` or `limit`; the share.
    pub async fn wait_for_colour(&mut self, rgb: (u8, u8, u8), share: f64, limit: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = 0.0;
        while tokio::time::Instant::now() < deadline {
            if self.rfb.request_update(false).await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(10), self.rfb.read_update()).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            seen = self.rfb.share_of_colour(rgb, 8);
            if seen >= share {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    }
}

/// A raw CDP client on `/api/sessions/{id}/cdp` (browser level), attached to the page.
pub struct Cdp {
    pub ws: Ws,
    next_id: i64,
    page: Option<String>,
}

impl Cdp {
    pub async fn open(node: &Node, id: &str, token: &str) -> Result<Self, String> {
        let url = format!("{}/api/sessions/{id}/cdp?token={token}", node.ws_base());
        let ws = ws_open(&url, None).await?;
        Ok(Self { ws, next_id: 0, page: None })
    }

    /// Sends a command and reads until its reply (events and other replies skipped).
    pub async fn call(&mut self, method: &str, params: Value, on_page: bool) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if on_page {
            message["sessionId"] = json!(self.page.clone().expect("attached to the page"));
        }
        self.ws.send(Message::text(message.to_string())).await.map_err(|e| format!("{method}: {e}"))?;
        loop {
            match next_json(&mut self.ws, Duration::from_secs(60)).await {
                Ok(v) if v["id"] == id => {
                    return match v.get("error") {
                        Some(e) => Err(format!("{method}: {e}")),
                        None => Ok(v["result"].clone()),
                    };
                }
                Ok(_) => {}
                Err(closed) => return Err(format!("{method}: no reply: {closed:?}")),
            }
        }
    }

    /// Attaches to the (first) page target.
    pub async fn attach_page(&mut self) -> Result<(), String> {
        let targets = self.call("Target.getTargets", json!({}), false).await?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            .ok_or_else(|| format!("no page target: {targets}"))?["targetId"]
            .clone();
        let attached = self.call("Target.attachToTarget", json!({ "targetId": page, "flatten": true }), false).await?;
        self.page = attached["sessionId"].as_str().map(str::to_owned);
        Ok(())
    }

    /// Evaluates `expression` in the page; its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }), true).await?;
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expression` until it gives `want` (or `limit`); the last value.
    pub async fn eval_until(&mut self, expression: &str, want: &Value, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(expression).await.unwrap_or_else(|e| json!({ "error": e }));
            if &v == want || Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A signed Stripe webhook delivery to a node; its status.
pub async fn deliver(node: &ApiClient, event: Value) -> u16 {
    let body = event.to_string();
    let header = livesession_billing::signature_header(body.as_bytes(), STRIPE_WEBHOOK_SECRET, time::OffsetDateTime::now_utc().unix_timestamp());
    match node.http.post(node.url("/api/stripe/webhook")).header("stripe-signature", header).body(body).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Creates a session through `node`; (id, an access token).
pub async fn create_session(node: &Node, body: Value) -> (String, String) {
    let created = node.api.create_session(body).await;
    (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned())
}

// ---------------------------------------------------------------- the real viewer

/// The repository's root (where `e2e/` is).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root")
}

/// The real viewer in headless Chromium: `node e2e/cluster-viewer.mjs` (playwright-core
/// from `e2e/node_modules`, Chromium from `/usr/bin/chromium`), run from the workspace
/// root in its own process group (killed with it on drop, Chromium included). It prints
/// one JSON line per phase (`typed`, then `ended` with `--wait-close`; `error` on a
/// failure); its stderr is echoed and kept for failure messages.
pub struct Viewer {
    child: tokio::process::Child,
    pgid: i32,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Exited and reaped: its pid is no longer ours to signal.
    done: bool,
}

impl Viewer {
    /// Checks that node, playwright-core and Chromium are there (fails loudly if not:
    /// scripts/test.sh installs them before `cargo test`), then starts the script on the
    /// viewer link `url` to type `text`, keeping the page open for up to `wait_close`
    /// after typing for the session's end.
    pub fn start(url: &str, text: &str, wait_close: Duration) -> Self {
        let root = workspace_root();
        match std::process::Command::new("node").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            other => panic!("the three-node viewer test needs Node.js (`node`, as scripts/test.sh installs it); it did not run: {other:?}"),
        }
        let playwright = root.join("e2e/node_modules/playwright-core/package.json");
        assert!(
            playwright.exists(),
            "the three-node viewer test needs playwright-core in e2e/node_modules: run `npm ci --prefix e2e` (scripts/test.sh does, before cargo test); {} is missing",
            playwright.display()
        );
        let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        assert!(Path::new(&chromium).exists(), "the three-node viewer test needs Chromium at {chromium} (never downloaded)");
        let mut child = tokio::process::Command::new("node")
            .arg("e2e/cluster-viewer.mjs")
            .args(["--url", url, "--text", text, "--wait-close"])
            .arg(wait_close.as_secs().max(1).to_string())
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("`node e2e/cluster-viewer.mjs` starts in {}: {e}", root.display()));
        let pgid = child.id().expect("running") as i32;
        let stdout = child.stdout.take().unwrap();
        let mut err_lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = err_lines.next_line().await {
                    eprintln!("[viewer] {line}");
                    stderr.lock().unwrap().push(line);
                }
            });
        }
        Self { child, pgid, lines: tokio::io::BufReader::new(stdout).lines(), stderr, done: false }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The script's next JSON line, which must be phase `phase`, within `limit`; panics
    /// with what the script said otherwise.
    pub async fn phase(&mut self, phase: &str, limit: Duration) -> Value {
        let line = match tokio::time::timeout(limit, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!("the viewer script ended ({status:?}) before its `{phase}` line; its stderr:\n{}", self.stderr());
            }
            Ok(Err(e)) => panic!("reading the viewer script's output: {e}; its stderr:\n{}", self.stderr()),
            Err(_) => panic!("no `{phase}` line from the viewer script within {limit:?}; its stderr:\n{}", self.stderr()),
        };
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("the viewer script printed {line:?}: {e}"));
        eprintln!("[viewer] {value}");
        if value["phase"] != phase {
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!("the viewer script failed (wanted its `{phase}` line): {:#}\nits stderr:\n{}", value, self.stderr());
        }
        value
    }

    /// Waits for the script to exit (within `limit`) and asserts it succeeded.
    pub async fn finish(mut self, limit: Duration) {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the viewer script did not exit within {limit:?}"))
            .expect("waiting for the viewer script");
        self.done = true;
        let rest = {
            let mut rest = Vec::new();
            while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(1), self.lines.next_line()).await {
                rest.push(line);
            }
            rest
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(status.success(), "the viewer script failed ({status}): {rest:#?}\nits stderr:\n{}", self.stderr());
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        if self.done || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM first: Playwright then closes the Chromium it launched (in a process
        // group of its own) before node exits. Then whatever is left of the script's group.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pgid), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Milliseconds since the epoch (to compare with times the viewer's page recorded).
pub fn epoch_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
