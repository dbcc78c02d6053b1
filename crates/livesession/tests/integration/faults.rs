//! The fault-injection suite: the server's promises checked while it is killed. Each
//! round starts the real `livesession` binary on one data directory, creates sessions,
//! opens viewers (starting desktops, warm ones included) and posts Stripe webhooks, then
//! SIGKILLs the server at a random moment. Then: every desktop process is gone within 2 s
//! (the lifeline), and a restarted server on the same directory has every acknowledged
//! session exactly once and a session for every acknowledged webhook.
//!
//! `LIVESESSION_FAULT_ROUNDS` rounds (default 20; 100 or more by hand), seeded by
//! `LIVESESSION_FAULT_SEED` (printed, so a failing round can be replayed). The table of
//! what was tried and what held goes to stderr and to `<target tmp>/fault-report.txt`
//! (scripts/test.sh prints it):
//!
//! ```text
//! LIVESESSION_FAULT_ROUNDS=100 cargo test -p livesession --test integration faults:: -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::payments::completed;
use crate::support::{ADMIN, ApiClient, still_running};

const WEBHOOK_SECRET: &str = "whsec_faults";

/// A tiny deterministic generator (xorshift64*): the rounds are replayable from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// The real server binary, started as its own process.
struct ServerProcess {
    child: tokio::process::Child,
    api: ApiClient,
}

impl ServerProcess {
    fn start(data: &Path) -> Self {
        livesession_billing::install_tls_provider();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.join("server.log")).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_livesession"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LIVESESSION_LISTEN", format!("127.0.0.1:{port}"))
            .env("LIVESESSION_DATA_DIR", data)
            .env("LIVESESSION_ADMIN_TOKEN", ADMIN)
            .env("LIVESESSION_WARM_DESKTOPS", "1")
            .env("LIVESESSION_STRIPE_SECRET_KEY", "sk_test_faults")
            .env("LIVESESSION_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
            // Never called: no checkout is created here.
            .env("LIVESESSION_STRIPE_API_BASE", "http://127.0.0.1:9")
            .env("LIVESESSION_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the livesession binary starts");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        Self { child, api: ApiClient { base: format!("http://127.0.0.1:{port}"), http } }
    }

    fn kill(&mut self) {
        let pid = self.child.id().expect("still running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        assert!(status.is_ok(), "the server did not stop within 60 s of SIGTERM");
    }
}

/// What the clients were told succeeded before the kill.
#[derive(Default)]
struct Acknowledged {
    sessions: BTreeSet<String>,
    checkouts: BTreeSet<String>,
    viewers: usize,
}

/// Clients working against the server until it dies: each step is recorded only once
/// the server answered it.
async fn clients(api: ApiClient, round: usize, seen: Arc<Mutex<Acknowledged>>) {
    let mut viewers = Vec::new();
    for step in 0.. {
        // A session, a viewer on it (starts its desktop), and a paid checkout's webhook.
        // Not `create_session`: a refusal or the server's death ends the clients here.
        let created = api
            .http
            .post(api.url("/api/sessions"))
            .bearer_auth(ADMIN)
            .json(&json!({}))
            .send()
            .await;
        let Ok(created) = created else { return };
        if created.status() != 201 {
            return;
        }
        let Ok(body) = created.json::<Value>().await else { return };
        let (id, token) = (body["id"].as_str().unwrap().to_owned(), body["token"].as_str().unwrap().to_owned());
        seen.lock().unwrap().sessions.insert(id.clone());
        if step < 2 {
            let url = format!("{}/api/sessions/{id}/vnc?token={token}", api.base.replace("http://", "ws://"));
            if let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await {
                seen.lock().unwrap().viewers += 1;
                viewers.push(ws);
            }
        }
        let cs = format!("cs_fault_{round}_{step}");
        let event = completed(&cs, &format!("pi_fault_{round}_{step}"), 100);
        let payload = event.to_string();
        let header = livesession_billing::signature_header(
            payload.as_bytes(),
            WEBHOOK_SECRET,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        );
        let delivered = api
            .http
            .post(api.url("/api/stripe/webhook"))
            .header("stripe-signature", header)
            .body(payload)
            .send()
            .await;
        match delivered {
            Ok(r) if r.status().is_success() => {
                seen.lock().unwrap().checkouts.insert(cs);
            }
            _ => return,
        }
        // Spread over the round, so the kill can land between any two of them.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Live (not zombie) processes that belong to the data directory's desktops: those
/// naming it on their command line (bubblewrap, its shells) and every member of the
/// process groups and PID namespaces its desktops recorded since `since` (older records
/// are of desktops a restart reaped: their numbers may belong to others by now).
fn desktop_processes(data: &Path, since: std::time::SystemTime) -> Vec<(i32, String)> {
    let needle = data.to_string_lossy().into_owned();
    let mut pids: BTreeSet<i32> = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.insert(pid);
        }
    }
    if let Ok(dirs) = std::fs::read_dir(data.join("desktops")) {
        for dir in dirs.flatten() {
            let recent = std::fs::metadata(dir.path().join("desktop.pgid"))
                .and_then(|m| m.modified())
                .is_ok_and(|at| at >= since);
            if !recent {
                continue;
            }
            let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).ok().and_then(|s| s.trim().parse::<u64>().ok());
            let pgid = read("desktop.pgid").unwrap_or(0) as i32;
            let pidns = read("desktop.pidns");
            pids.extend(livesession_desktop::members(pgid, pidns));
        }
    }
    pids.into_iter()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.is_empty() && !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r.split(' ').collect()).unwrap_or_default();
            // ppid, pgid, and the first words of the command (the launcher's is a whole script).
            let first: String = text.chars().take(60).collect();
            (pid, format!("ppid {} pgid {} {}", fields.get(1).unwrap_or(&"?"), fields.get(2).unwrap_or(&"?"), first.lines().next().unwrap_or("")))
        })
        .collect()
}

/// Waits up to `limit` for no desktop process to remain; how long it took, or what is left.
async fn desktops_gone(data: &Path, since: std::time::SystemTime, limit: Duration) -> Result<Duration, Vec<(i32, String)>> {
    let started = Instant::now();
    loop {
        let left = desktop_processes(data, since);
        if left.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(left);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every session the server knows, by id (admin listing, newest first).
async fn all_sessions(server: &ServerProcess) -> Vec<Value> {
    let list = server.api.admin_get("/api/sessions?limit=1000").await;
    list["sessions"].as_array().expect("a session list").clone()
}

struct RoundReport {
    kill_after: Duration,
    sessions: usize,
    viewers: usize,
    webhooks: usize,
    processes_at_kill: usize,
    gone_after: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_at_any_moment_leaves_no_desktop_and_loses_nothing() {
    let rounds: usize = std::env::var("LIVESESSION_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("LIVESESSION_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    let mut rng = Rng(seed);
    let data = tempfile::Builder::new().prefix("lsf").tempdir_in("/tmp").unwrap();
    let mut all_acknowledged = Acknowledged::default();
    let mut reports = Vec::new();

    for round in 0..rounds {
        let round_began = std::time::SystemTime::now();
        let mut server = ServerProcess::start(data.path());
        // Anywhere from before the first answer to desktops running and webhooks arriving.
        let kill_after = rng.millis(100, 6000);
        let started = Instant::now();
        let seen = Arc::new(Mutex::new(Acknowledged::default()));
        let work = {
            let (api, seen) = (server.api.clone(), seen.clone());
            tokio::spawn(async move {
                // Clients begin once the server answers (or never, if it dies first).
                if api.healthy_within(Duration::from_secs(6)).await {
                    clients(api, round, seen).await;
                }
            })
        };
        tokio::time::sleep(kill_after.saturating_sub(started.elapsed())).await;
        let processes_at_kill = desktop_processes(data.path(), round_began).len();
        server.kill();
        let _ = server.child.wait().await;
        let gone = desktops_gone(data.path(), round_began, Duration::from_secs(2)).await;
        work.abort();
        let _ = work.await;
        let gone_after = gone.unwrap_or_else(|left| {
            panic!("round {round} (seed {seed}, killed after {kill_after:?}): desktop processes still running 2 s after the server was killed: {left:#?}")
        });
        {
            let seen = seen.lock().unwrap();
            all_acknowledged.sessions.extend(seen.sessions.iter().cloned());
            all_acknowledged.checkouts.extend(seen.checkouts.iter().cloned());
            reports.push(RoundReport {
                kill_after,
                sessions: seen.sessions.len(),
                viewers: seen.viewers,
                webhooks: seen.checkouts.len(),
                processes_at_kill,
                gone_after,
            });
        }

        // A restart on the same directory: the store is consistent.
        let restart_began = std::time::SystemTime::now();
        let restarted = ServerProcess::start(data.path());
        assert!(restarted.api.healthy_within(Duration::from_secs(60)).await, "the restarted server did not answer /healthz within 60 s");
        let sessions = all_sessions(&restarted).await;
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_checkout: BTreeMap<String, usize> = BTreeMap::new();
        for s in &sessions {
            *by_id.entry(s["id"].as_str().unwrap().to_owned()).or_default() += 1;
            if let Some(cs) = s["checkout_session_id"].as_str() {
                *by_checkout.entry(cs.to_owned()).or_default() += 1;
            }
        }
        for (id, n) in &by_id {
            assert_eq!(*n, 1, "round {round} (seed {seed}): session {id} is listed {n} times");
        }
        for id in &all_acknowledged.sessions {
            assert!(by_id.contains_key(id), "round {round} (seed {seed}): the acknowledged session {id} was lost");
        }
        for cs in &all_acknowledged.checkouts {
            assert_eq!(
                by_checkout.get(cs).copied().unwrap_or(0),
                1,
                "round {round} (seed {seed}): the acknowledged webhook for {cs} is not reflected by exactly one session"
            );
        }
        restarted.stop().await;
        // A graceful stop stops each desktop in turn (SIGTERM, a grace, SIGKILL), which
        // takes longer than the lifeline's cut on a loaded machine.
        let gone = desktops_gone(data.path(), restart_began, Duration::from_secs(15)).await;
        assert!(gone.is_ok(), "round {round}: a gracefully stopped server left desktop processes: {gone:?}");
    }

    let mut table = String::new();
    writeln!(table, "fault suite: {rounds} rounds, seed {seed} (LIVESESSION_FAULT_SEED replays them)").unwrap();
    writeln!(table, "round  killed after  sessions  viewers  webhooks  desktop procs at kill  all gone after").unwrap();
    for (n, r) in reports.iter().enumerate() {
        writeln!(
            table,
            "{n:>5}  {:>9} ms  {:>8}  {:>7}  {:>8}  {:>21}  {:>11} ms",
            r.kill_after.as_millis(),
            r.sessions,
            r.viewers,
            r.webhooks,
            r.processes_at_kill,
            r.gone_after.as_millis()
        )
        .unwrap();
    }
    let worst = reports.iter().map(|r| r.gone_after).max().unwrap_or_default();
    writeln!(
        table,
        "held: every round 0 desktop processes within 2 s of SIGKILL (worst {} ms); after each restart {} acknowledged sessions each listed once, {} acknowledged webhooks each reflected by one session",
        worst.as_millis(),
        all_acknowledged.sessions.len(),
        all_acknowledged.checkouts.len()
    )
    .unwrap();
    eprintln!("{table}");
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-report.txt");
    std::fs::write(&report, &table).unwrap();
    assert!(
        reports.iter().any(|r| r.processes_at_kill > 0),
        "no round killed the server while a desktop ran: the suite tried nothing"
    );
}

// ---------------------------------------------------------------- a full disk, a busy store

/// A data directory on a tmpfs of `mib` MiB of its own (so it can fill up), unmounted
/// when dropped.
struct SmallDisk {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl SmallDisk {
    fn new(mib: u32) -> Self {
        let dir = tempfile::Builder::new().prefix("lsd").tempdir_in("/tmp").unwrap();
        let path = dir.path().to_owned();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "livesession-test-disk"])
            .arg(&path)
            .status()
            .expect("mount(8) runs");
        assert!(status.success(), "mounting a tmpfs needs root (the suite runs as root)");
        Self { dir: Some(dir), path }
    }

    /// Fills the disk with one file until it is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
        drop(self.dir.take());
    }
}

async fn create_session(server: &crate::support::TestServer) -> reqwest::Response {
    server.admin_post("/api/sessions", json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_with_a_clear_error_and_the_server_recovers_when_space_returns() {
    let disk = SmallDisk::new(24);
    let data = tempfile::Builder::new().prefix("data").tempdir_in(&disk.path).unwrap();
    let server = crate::support::TestServer::start_in(data, &[]).await;
    let before = create_session(&server).await;
    assert_eq!(before.status(), 201);
    let kept: Value = before.json().await.unwrap();

    let filler = disk.fill();
    // Writes that need the disk are refused, clearly, with nothing half done.
    let refused = create_session(&server).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "60");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "storage_full", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("disk is full"), "{body}");
    let upload = server
        .http
        .post(server.url(&format!("/api/sessions/{}/files?name=big.bin", kept["id"].as_str().unwrap())))
        .bearer_auth(kept["token"].as_str().unwrap())
        .body(vec![7u8; 256 * 1024])
        .send()
        .await
        .unwrap();
    let status = upload.status();
    let body: Value = upload.json().await.unwrap();
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (503, Some("storage_full")), "{body}");
    // Reads go on.
    assert_eq!(server.get_session(kept["id"].as_str().unwrap()).await["state"], "active");
    assert_eq!(server.http_get_status("/healthz", None).await, 200);

    // Space returns: writes work again, and what was there is intact.
    std::fs::remove_file(filler).unwrap();
    let after = create_session(&server).await;
    assert_eq!(after.status(), 201, "{}", after.text().await.unwrap());
    let data = server.stop().await;
    let restarted = crate::support::TestServer::start_in(data, &[]).await;
    assert_eq!(restarted.get_session(kept["id"].as_str().unwrap()).await["state"], "active");
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_by_another_process_makes_writes_wait_a_bounded_time_then_fail_clearly() {
    let server = crate::support::TestServer::start(&[]).await;
    let kept: Value = create_session(&server).await.json().await.unwrap();
    let db = server.data_path().join("livesession.db");
    // Another process takes the database's write lock and holds it.
    let mut holder = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             time.sleep(60)",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(holder.stdout.take().unwrap()), &mut line)
        .await
        .unwrap();
    assert_eq!(line.trim(), "locked");

    let started = Instant::now();
    let refused = create_session(&server).await;
    let waited = started.elapsed();
    eprintln!("a write against the held lock was answered after {} ms", waited.as_millis());
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_busy", "{body}");
    assert!(waited >= Duration::from_secs(4), "it waited for the lock first ({waited:?})");
    assert!(waited < Duration::from_secs(30), "it did not hang ({waited:?})");
    // Reads and health go on meanwhile (WAL).
    assert_eq!(server.get_session(kept["id"].as_str().unwrap()).await["state"], "active");
    assert_eq!(server.http_get_status("/healthz", None).await, 200);

    holder.kill().await.unwrap();
    let _ = holder.wait().await;
    let after = create_session(&server).await;
    assert_eq!(after.status(), 201, "{}", after.text().await.unwrap());
    server.stop().await;
}

// ---------------------------------------------------------------- a piece of a desktop killed

/// Kills `program` inside a watched session's desktop; the viewer's two connections are
/// told why, and the next connection gets a working desktop. Returns how long the
/// control channel and the VNC connection took to hear of it.
async fn kill_piece_and_reconnect(program: &str) -> (Duration, Duration) {
    use crate::hibernation::{control, names, statuses_until};
    use crate::support::{close_of, rfb_over_ws, wait_for_colour, ws_connect};
    let page = crate::support::PageServer::start().await;
    let args = page.server_args();
    let server = crate::support::TestServer::start(&[&args[0], &args[1]]).await;
    let created = server.create_session(json!({ "start_url": page.url })).await;
    let (id, token) = (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned());
    let mut channel = control(&server, &id, &token).await;
    let seen = statuses_until(&mut channel, "ready", Duration::from_secs(60)).await;
    assert_eq!(names(&seen).last(), Some(&"ready"));
    let mut vnc = ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    let group = server.desktop_procs(&id);
    let victim = group
        .member_where(|argv| argv.first().is_some_and(|argv0| argv0.ends_with(program)))
        .unwrap_or_else(|| panic!("{program} runs in the desktop"));

    let before = group.members_with_start_times();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let (vnc_told, control_told) = tokio::join!(
        async {
            let (code, reason) = close_of(&mut vnc, Duration::from_secs(10)).await;
            (killed.elapsed(), code, reason)
        },
        async {
            let seen = statuses_until(&mut channel, "stopped", Duration::from_secs(10)).await;
            let at = killed.elapsed();
            let (code, reason) = close_of(&mut channel, Duration::from_secs(10)).await;
            (at, seen, code, reason)
        }
    );
    let (vnc_at, vnc_code, vnc_reason) = vnc_told;
    let (control_at, seen, control_code, control_reason) = control_told;
    eprintln!("{program} killed: VNC closed {vnc_code} {vnc_reason:?} after {} ms; control: {:?}, closed {control_code} {control_reason:?} after {} ms",
        vnc_at.as_millis(), names(&seen), control_at.as_millis());
    assert_eq!(vnc_code, 4010, "the viewer's VNC connection is closed with a reason: {vnc_reason}");
    assert!(vnc_reason.starts_with("desktop unavailable"), "{vnc_reason}");
    assert_eq!(names(&seen).last(), Some(&"stopped"), "{seen:#?}");
    assert_eq!((control_code, control_reason.as_str()), (4010, "desktop stopped"));

    // The next connection starts a fresh desktop that works.
    let mut channel = control(&server, &id, &token).await;
    let seen = statuses_until(&mut channel, "ready", Duration::from_secs(60)).await;
    assert_eq!(names(&seen).last(), Some(&"ready"), "{seen:#?}");
    assert_ne!(server.desktop_procs(&id), group, "a new desktop");
    let mut rfb = rfb_over_ws(ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await).await;
    let share = wait_for_colour(&mut rfb, (255, 0, 255), 0.5, Duration::from_secs(30)).await;
    assert!(share >= 0.5, "the new desktop shows the page ({share})");
    // Stopping the broken desktop may still be reaping its processes on a loaded machine.
    // Its processes as they were (a PID namespace's inode is reused by the next one, so
    // the group cannot be asked again).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut left = still_running(&before);
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = still_running(&before);
    }
    assert!(left.is_empty(), "nothing of the broken desktop is left: {left:#?}");
    server.stop().await;
    (vnc_at, control_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xvnc_killed_tells_the_viewer_at_once_and_the_next_connection_gets_a_working_desktop() {
    kill_piece_and_reconnect("Xvnc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_killed_tells_the_viewer_at_once_and_the_next_connection_gets_a_working_desktop() {
    kill_piece_and_reconnect("bwrap").await;
}
