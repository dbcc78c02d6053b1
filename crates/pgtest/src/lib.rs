//! Tests only: a real PostgreSQL server for the store suites (the non-negotiable "a real
//! PostgreSQL server where the store is tested"), started once per test process from
//! Debian's `postgresql` package on 127.0.0.1 and a free port, with a fresh database for
//! each caller.
//!
//! The cluster lives in a temporary directory. A watcher started with it stops the server
//! and removes the directory once the test process is gone, however it ends, so no
//! server is left behind. As root (CI), the server runs as the `postgres` user, which
//! `initdb` requires; otherwise as the current user.
//!
//! A missing PostgreSQL fails the test with the command that installs it: never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

struct Server {
    port: u16,
    bin: PathBuf,
    /// Kept alive with the process: removed by the watcher.
    _dir: PathBuf,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A URL (`postgres://…`) to a new, empty database on the test process's server.
pub fn database() -> String {
    let server = SERVER.get_or_init(start);
    let name = format!("t{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::SeqCst));
    let out = Command::new(server.bin.join("psql"))
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "CREATE DATABASE {name} failed: {}", String::from_utf8_lossy(&out.stderr));
    format!("postgres://postgres@127.0.0.1:{}/{name}", server.port)
}

/// Debian's versioned directory of server binaries (`/usr/lib/postgresql/<N>/bin`).
fn binaries() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); install it with: apt-get install -y postgresql")
    })
}

fn is_root() -> bool {
    // The effective uid, without a dependency: /proc/self/status's "Uid:" line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// `argv` as the server's user: `postgres` when we are root.
fn as_server_user(argv: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).args(argv);
        c
    } else {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start() -> Server {
    let bin = binaries();
    let dir = tempfile::Builder::new().prefix("lspg").tempdir_in("/tmp").unwrap().keep();
    let data = dir.join("data");
    if is_root() {
        let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).output().expect("chown runs");
        assert!(out.status.success(), "chown of {} failed", dir.display());
    }
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let initdb = path(&bin.join("initdb"));
    let out = as_server_user(&[&initdb, "-D", &path(&data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        .output()
        .expect("initdb runs");
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

    // A few tries: another process may take the free port first.
    for _ in 0..5 {
        let port = free_port();
        let pg_ctl = path(&bin.join("pg_ctl"));
        // Loopback only, no Unix socket outside the cluster's directory, durability off
        // (a test database), and enough connections for pools in concurrent tests.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            path(&dir)
        );
        let out = as_server_user(&[&pg_ctl, "-D", &path(&data), "-l", &path(&dir.join("server.log")), "-o", &options, "-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl runs");
        if !out.status.success() {
            continue;
        }
        // The watcher: when this process is gone, stop the server and remove its files.
        let watcher = format!(
            "while [ -d /proc/{pid} ]; do sleep 0.5; done; {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            data = path(&data),
            dir = path(&dir),
        );
        let mut w = as_server_user(&["/bin/sh", "-c", &watcher]);
        w.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        // Its own session: a test harness that kills its process group must not take it.
        use std::os::unix::process::CommandExt;
        w.process_group(0);
        w.spawn().expect("the watcher starts");
        return Server { port, bin, _dir: dir };
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    panic!("PostgreSQL did not start on loopback: {log}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_gets_its_own_database_on_a_live_server() {
        let a = database();
        let b = database();
        assert_ne!(a, b);
        let port = a.split(':').nth(2).unwrap().split('/').next().unwrap().to_owned();
        let name = a.rsplit('/').next().unwrap();
        let bin = binaries();
        let out = Command::new(bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", name, "-tAc", "SELECT current_database()"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
    }
}
