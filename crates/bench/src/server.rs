//! The server under test: this binary's own `serve`, started as a child process (so its
//! CPU time and memory are its own) with a temporary data directory, a loopback port and
//! a generated admin token; and the admin API calls the benchmarks make.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// Flags every benchmark server gets: the benchmark opens many connections from one
/// address, to one session, quickly.
pub(crate) const BENCH_LIMITS: [&str; 12] = [
    "--max-connections-per-ip",
    "10000",
    "--max-connections-per-session",
    "1000",
    "--connect-rate",
    "10000",
    "--connect-burst",
    "10000",
    "--create-rate",
    "1000",
    "--create-burst",
    "1000",
];

pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub base: String,
    pub admin: String,
    /// The data directory (canonical), removed when the server stops.
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub http: reqwest::Client,
    /// Desktops the server keeps in its warm pool (0 without one).
    pub warm: usize,
}

/// A session as `POST /api/sessions` answers it.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub token: String,
    pub vnc_url: String,
    pub control_url: String,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `serve --help`, for flags that may not exist yet (e.g. `--warm-desktops`).
pub fn serve_help() -> String {
    std::env::current_exe()
        .and_then(|exe| Command::new(exe).args(["serve", "--help"]).output())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The default of a `serve` flag, from its help text, e.g. `[default: 1]`.
pub fn flag_default(help: &str, flag: &str) -> Option<String> {
    let after = &help[help.find(&format!("{flag} "))?..];
    // The flag's own text: up to the next line that starts another flag.
    let text: Vec<&str> = std::iter::once(after.lines().next()?)
        .chain(
            after
                .lines()
                .skip(1)
                .take_while(|l| !l.trim_start().starts_with('-')),
        )
        .collect();
    let text = text.join("\n");
    let start = text.find("[default: ")? + "[default: ".len();
    Some(text[start..start + text[start..].find(']')?].to_owned())
}

impl Server {
    /// Starts `serve` with the benchmark's limits and `extra` flags; waits for /healthz.
    pub async fn start(extra: &[String]) -> Result<Self, String> {
        let data_dir = PathBuf::from(format!("/tmp/lsb-{}", random_hex(4)));
        std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize().map_err(|e| e.to_string())?;
        let log = data_dir.join("server.log");
        let port = free_port().map_err(|e| e.to_string())?;
        let admin = random_hex(24);
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-token", &admin])
            .args(BENCH_LIMITS)
            .args(extra)
            .env("LIVESESSION_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let mut server = Self {
            pid: child.id(),
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            admin,
            data_dir,
            log,
            http: reqwest::Client::new(),
            warm: match extra.iter().position(|a| a == "--warm-desktops") {
                Some(i) => extra.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(0),
                None => warm_pool_default().unwrap_or(0),
            },
        };
        for _ in 0..300 {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "the server exited ({status}) at start:\n{}",
                    tail(&server.log, 20)
                ));
            }
            if server.get("/healthz").await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "the server did not answer /healthz:\n{}",
            tail(&server.log, 20)
        ))
    }

    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        response.json().await.map_err(|e| e.to_string())
    }

    /// A GET of the admin API.
    pub async fn admin_get(&self, path: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("GET {path} answered {status}: {body}"));
        }
        Ok(body)
    }

    pub async fn readyz(&self) -> Value {
        self.get("/readyz").await.unwrap_or(Value::Null)
    }

    /// `POST /api/sessions`, with this start URL or the server's (`None`).
    pub async fn create_session(&self, start_url: Option<&str>) -> Result<Created, String> {
        let mut body = json!({ "ttl_seconds": 3600 });
        if let Some(url) = start_url {
            body["start_url"] = url.into();
        }
        self.create_session_with(&body).await
    }

    /// `POST /api/sessions` with this body.
    pub async fn create_session_with(&self, body: &Value) -> Result<Created, String> {
        let response = self
            .http
            .post(format!("{}/api/sessions", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("POST /api/sessions answered {status}: {body}"));
        }
        let field = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
        Ok(Created {
            id: field("id"),
            token: field("token"),
            vnc_url: field("vnc_url"),
            control_url: field("control_url"),
        })
    }

    pub async fn revoke(&self, id: &str) {
        let _ = self
            .http
            .delete(format!("{}/api/sessions/{id}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await;
    }

    /// A running desktop's directory (sandboxed or not, wherever the server keeps it).
    pub fn desktop_dir(&self, id: &str) -> Option<PathBuf> {
        [true, false]
            .into_iter()
            .map(|sandbox| livesession_desktop::desktops_root(&self.data_dir, sandbox).join(id))
            .find(|dir| dir.join("run/vnc.sock").exists())
    }

    pub fn vnc_socket(&self, id: &str) -> Result<PathBuf, String> {
        self.desktop_dir(id)
            .map(|d| d.join("run/vnc.sock"))
            .ok_or_else(|| format!("no vnc.sock for session {id}"))
    }

    /// The live processes of a session's desktop, by its process group and PID namespace.
    pub fn desktop_pids(&self, id: &str) -> Vec<i32> {
        let Some(dir) = self.desktop_dir(id) else {
            return Vec::new();
        };
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let pgid = read("desktop.pgid").and_then(|s| s.trim().parse().ok());
        let pidns = read("desktop.pidns").and_then(|s| s.trim().parse().ok());
        pgid.map_or_else(Vec::new, |pgid| livesession_desktop::members(pgid, pidns))
    }

    /// Waits (up to `limit`) until the warm pool, if the server has one, is full, so that
    /// no desktop is starting while something is measured. Returns how long it waited.
    pub async fn settle(&self, limit: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        while started.elapsed() < limit {
            match self.readyz().await["warm_desktops"].as_u64() {
                Some(ready) if (ready as usize) < self.warm => {}
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        started.elapsed()
    }

    /// Stops the server as a signal would (it stops its desktops) and removes its data.
    pub async fn stop(mut self) {
        let child = self.child.take();
        let dir = self.data_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(child) = child {
                terminate(child);
            }
            let _ = std::fs::remove_dir_all(dir);
        })
        .await;
    }
}

/// SIGTERM, up to two minutes for a graceful stop (many desktops take a while), then SIGKILL.
fn terminate(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..1200 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Which `--warm-desktops` the server takes: `None` if it has no such flag.
pub fn warm_pool_default() -> Option<usize> {
    let help = serve_help();
    if !help.contains("--warm-desktops") {
        return None;
    }
    Some(
        flag_default(&help, "--warm-desktops")
            .and_then(|d| d.parse().ok())
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_come_from_the_help_text() {
        let help = "Options:\n      --max-desktops <MAX_DESKTOPS>\n          Desktops.\n          \
                    [env: LIVESESSION_MAX_DESKTOPS=]\n          [default: 4]\n\n      \
                    --warm-desktops <WARM_DESKTOPS>\n          Pool [env: X=] [default: 2]\n      \
                    --other <O>\n          [default: 9]\n";
        assert_eq!(flag_default(help, "--max-desktops").as_deref(), Some("4"));
        assert_eq!(flag_default(help, "--warm-desktops").as_deref(), Some("2"));
        assert_eq!(flag_default(help, "--missing"), None);
        let no_default = "      --a <A>\n          x\n      --b <B>\n          [default: 3]\n";
        assert_eq!(flag_default(no_default, "--a"), None);
    }
}
