//! `bench proxy`: Raw full-screen updates (non-incremental requests for the whole screen,
//! one outstanding per connection) from one desktop, with 1 and 8 connections, through:
//! a direct connection to its vnc.sock, livesession's WebSocket proxy, and websockify
//! (`--unix-target` to the same socket). Throughput, latency per update (request sent →
//! last byte received), and CPU time per GB of the proxy, the client and Xvnc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{FramingClient, Transport, connect_ws};
use super::pages::{PageServer, SOLID_RGB};
use super::procfs::{comm, cpu_seconds, own_cpu_seconds, tree_cpu_seconds};
use super::report::{Table, fmt_ms};
use super::server::{Server, free_port, tail};
use super::stats::Summary;
use super::{Options, open_session, progress, wire};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct,
    Livesession,
    Websockify,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct (vnc.sock)",
            Via::Livesession => "livesession",
            Via::Websockify => "websockify",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub path: Via,
    pub conns: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// Milliseconds per full update.
    pub latency: Summary,
    /// CPU seconds over the measurement: the proxy's (none for direct), the benchmark
    /// client's, and Xvnc's.
    pub proxy_cpu: Option<f64>,
    pub client_cpu: f64,
    pub xvnc_cpu: Option<f64>,
}

impl Row {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    fn per_gb(&self, cpu: f64) -> f64 {
        cpu / (self.bytes as f64 / 1e9).max(1e-9)
    }

    pub fn proxy_cpu_per_gb(&self) -> Option<f64> {
        self.proxy_cpu.map(|c| self.per_gb(c))
    }
}

#[derive(Debug, Clone)]
pub struct ProxyReport {
    pub rows: Vec<Row>,
    /// websockify's version, or why it was not measured.
    pub websockify: Result<String, String>,
    pub seconds: f64,
}

impl ProxyReport {
    pub fn row(&self, path: Via, conns: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.path == path && r.conns == conns)
    }

    /// Throughput relative to direct, same number of connections.
    pub fn ratio(&self, path: Via, conns: usize) -> Option<f64> {
        Some(self.row(path, conns)?.mb_per_s() / self.row(Via::Direct, conns)?.mb_per_s())
    }

    /// p50 latency added over direct, ms.
    pub fn added_p50(&self, path: Via, conns: usize) -> Option<f64> {
        Some(self.row(path, conns)?.latency.p50 - self.row(Via::Direct, conns)?.latency.p50)
    }

    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "Path",
            "Conns",
            "Throughput",
            "× direct",
            "Per update p50 / p99",
            "Proxy CPU",
            "Client CPU",
            "Xvnc CPU",
        ]);
        for r in &self.rows {
            let per_gb =
                |c: Option<f64>| c.map_or("—".into(), |c| format!("{:.2} s/GB", r.per_gb(c)));
            t.row([
                r.path.name().to_owned(),
                r.conns.to_string(),
                format!(
                    "{:.0} MB/s ({:.2} GB/s)",
                    r.mb_per_s(),
                    r.mb_per_s() / 1000.0
                ),
                self.ratio(r.path, r.conns)
                    .map_or("—".into(), |x| format!("{x:.2}×")),
                format!("{} / {}", fmt_ms(r.latency.p50), fmt_ms(r.latency.p99)),
                per_gb(r.proxy_cpu),
                per_gb(Some(r.client_cpu)),
                per_gb(r.xvnc_cpu),
            ]);
        }
        if let Err(why) = &self.websockify {
            t.row([
                "websockify".into(),
                "—".into(),
                format!("not measured: {why}"),
            ]);
        }
        t
    }
}

/// websockify: the given path, or `websockify` on PATH.
fn find_websockify(given: Option<&Path>) -> Result<PathBuf, String> {
    let how = "install it with `python3 -m venv target/bench-venv && \
               target/bench-venv/bin/pip install websockify` and pass \
               --websockify target/bench-venv/bin/websockify (scripts/bench.sh does this)";
    if let Some(p) = given {
        return if p.exists() {
            Ok(p.to_owned())
        } else {
            Err(format!("{} does not exist; {how}", p.display()))
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("websockify"))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("websockify is not on PATH; {how}"))
}

/// websockify's version, from the Python its script runs with.
fn websockify_version(path: &Path) -> String {
    let script = std::fs::read_to_string(path).unwrap_or_default();
    let python = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| "python3".into());
    let mut argv = python.split_whitespace();
    let version = argv.next().and_then(|exe| {
        Command::new(exe)
            .args(argv)
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('websockify'))",
            ])
            .output()
            .ok()
    });
    version
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .map_or_else(|| "version unknown".into(), |v| format!("websockify {v}"))
}

struct Websockify {
    child: Child,
    port: u16,
}

impl Websockify {
    async fn start(exe: &Path, socket: &Path, log: &Path) -> Result<Self, String> {
        let port = free_port().map_err(|e| e.to_string())?;
        let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(format!("--unix-target={}", socket.display()))
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Self { child, port });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("websockify exited ({status}): {}", tail(log, 5)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        Err("websockify did not listen within 10 s".into())
    }
}

impl Drop for Websockify {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(options: &Options) -> Result<ProxyReport, String> {
    let seconds = options.seconds(6.0, 1.5);
    let pages = PageServer::start().await?;
    let server = Server::start(&options.server_flags(&pages, &[])).await?;
    server.settle(Duration::from_secs(120)).await;
    progress("  proxy: starting a desktop");
    let (created, _viewer, _) = open_session(&server, Some(&pages.url("solid")), SOLID_RGB).await?;
    let socket = server.vnc_socket(&created.id)?;
    let xvnc = server
        .desktop_pids(&created.id)
        .into_iter()
        .map(|p| p as u32)
        .find(|p| comm(*p) == "Xvnc");
    server.settle(Duration::from_secs(120)).await;
    // Chromium keeps busy for a moment after drawing its first page.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let websockify_exe = find_websockify(options.websockify.as_deref());
    let websockify = match &websockify_exe {
        Ok(exe) => Websockify::start(exe, &socket, &server.data_dir.join("websockify.log"))
            .await
            .map(|w| (w, websockify_version(exe))),
        Err(e) => Err(e.clone()),
    };
    if let Err(e) = &websockify {
        progress(format!("  proxy: websockify not measured: {e}"));
    }

    let mut rows = Vec::new();
    for conns in [1, 8] {
        for path in [Via::Direct, Via::Livesession, Via::Websockify] {
            let proxy_pid = match path {
                Via::Direct => None,
                Via::Livesession => Some(server.pid),
                Via::Websockify => match &websockify {
                    Ok((w, _)) => Some(w.child.id()),
                    Err(_) => continue,
                },
            };
            progress(format!(
                "  proxy: {} with {conns} connection(s), {:.1} s",
                path.name(),
                seconds.as_secs_f64()
            ));
            let mut clients = Vec::new();
            for _ in 0..conns {
                let transport = match path {
                    Via::Direct => Transport::unix(&socket).await,
                    Via::Livesession => connect_ws(&created.vnc_url, Some(&created.token))
                        .await
                        .map(|ws| Transport::Ws(Box::new(ws))),
                    Via::Websockify => {
                        let port = websockify.as_ref().map(|(w, _)| w.port).unwrap_or(0);
                        connect_ws(&format!("ws://127.0.0.1:{port}/"), None)
                            .await
                            .map(|ws| Transport::Ws(Box::new(ws)))
                    }
                }
                .map_err(|e| format!("{}: connect: {e}", path.name()))?;
                let mut c = FramingClient::handshake(transport, &[wire::RAW])
                    .await
                    .map_err(|e| format!("{}: RFB handshake: {e}", path.name()))?;
                // Warm up: the first updates carry the whole screen anyway.
                for _ in 0..3 {
                    c.request(false).await.map_err(|e| e.to_string())?;
                    c.read_update().await.map_err(|e| e.to_string())?;
                }
                clients.push(c);
            }
            let row = measure(path, clients, seconds, proxy_pid, xvnc).await?;
            progress(format!(
                "    {:.0} MB/s, {:.2} MB per update, p50 {:.2} ms",
                row.mb_per_s(),
                row.bytes as f64 / 1e6 / row.latency.count.max(1) as f64,
                row.latency.p50
            ));
            rows.push(row);
        }
    }
    let websockify = websockify.map(|(w, version)| {
        drop(w);
        version
    });
    drop(_viewer);
    server.stop().await;
    Ok(ProxyReport {
        rows,
        websockify,
        seconds: seconds.as_secs_f64(),
    })
}

/// Each client requests and reads full updates back to back for `duration`.
async fn measure(
    path: Via,
    clients: Vec<FramingClient>,
    duration: Duration,
    proxy_pid: Option<u32>,
    xvnc: Option<u32>,
) -> Result<Row, String> {
    let conns = clients.len();
    // websockify forks a process per connection: count its whole tree.
    let proxy_cpu = |pid: u32| match path {
        Via::Websockify => Some(tree_cpu_seconds(pid)),
        _ => cpu_seconds(pid),
    };
    let proxy_before = proxy_pid.and_then(proxy_cpu);
    let xvnc_before = xvnc.and_then(cpu_seconds);
    let client_before = own_cpu_seconds();
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (mut bytes, mut latencies) = (0u64, Vec::new());
                while Instant::now() < end {
                    let sent = Instant::now();
                    c.request(false).await?;
                    bytes += c.read_update().await? as u64;
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<_, std::io::Error>((bytes, latencies))
            })
        })
        .collect();
    let (mut bytes, mut latencies) = (0, Vec::new());
    for t in tasks {
        let (b, l) = t
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", path.name()))?;
        bytes += b;
        latencies.extend(l);
    }
    let seconds = started.elapsed().as_secs_f64();
    let delta = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    Ok(Row {
        path,
        conns,
        bytes,
        seconds,
        latency: Summary::of(&latencies),
        proxy_cpu: delta(proxy_before, proxy_pid.and_then(proxy_cpu)),
        client_cpu: own_cpu_seconds() - client_before,
        xvnc_cpu: delta(xvnc_before, xvnc.and_then(cpu_seconds)),
    })
}
