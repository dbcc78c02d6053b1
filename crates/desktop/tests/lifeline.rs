//! No sandbox outlives what started it, even one caught in bubblewrap's own start-up:
//! bubblewrap's child waits on an eventfd for its parent's word before it sets
//! `--die-with-parent` or runs anything. A parent that dies in between (killed with the
//! server, or with the desktop's group) left that child waiting forever.
//!
//! These tests hold the real bubblewrap at exactly that point: a wrapper adds
//! `--userns-block-fd` on a FIFO nobody writes, so the parent blocks before its word and the
//! child waits. Then they end it the ways a server ends one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use livesession_desktop::{DesktopRuntime, LocalRuntime, ToolPaths, pidns_of};

mod common;
use common::{GREEN_PAGE, config, spec};

/// A bubblewrap that never lets its sandbox run (see the module's comment).
struct HeldBubblewrap {
    dir: tempfile::TempDir,
}

impl HeldBubblewrap {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("lsheld").tempdir_in("/tmp").unwrap();
        // The desktop's own uid runs the wrapper and opens the FIFO.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fifo = dir.path().join("never-written");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666)).unwrap();
        let bwrap = livesession_desktop::toolchain::find_binary("bwrap").expect("bubblewrap is installed");
        let script = format!(
            "#!/bin/sh\n# Open read-write: the read never sees an end, as we hold a writer.\nexec 7<>{fifo:?}\n# bubblewrap wants an info fd with a block fd.\nexec {bwrap:?} --info-fd 8 --userns-block-fd 7 \"$@\" 8>/dev/null\n",
            fifo = fifo.display(),
            bwrap = bwrap.display(),
        );
        let wrapper = dir.path().join("bwrap");
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn tools(&self) -> ToolPaths {
        ToolPaths { bwrap: self.dir.path().join("bwrap").to_string_lossy().into_owned(), ..ToolPaths::default() }
    }
}

/// The desktop's group leader (bubblewrap) once it runs, and the sandbox's first process
/// (bubblewrap's child in a PID namespace of its own) once it exists.
async fn held_sandbox(desktop_dir: &Path) -> (i32, i32) {
    let ours = pidns_of(std::process::id() as i32);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = std::fs::read_to_string(desktop_dir.join("desktop.pgid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(leader) = leader {
            let children = std::fs::read_to_string(format!("/proc/{leader}/task/{leader}/children")).unwrap_or_default();
            let child = children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
                .find(|c| pidns_of(*c).is_some_and(|ns| Some(ns) != ours));
            if let Some(child) = child {
                return (leader, child);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "bubblewrap did not clone its sandbox within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What is mounted below `root` (a desktop's capped home and run, while it lives).
fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(root.as_str()))
        .map(str::to_owned)
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Every live process whose command line names `needle` (the desktop's directory).
fn naming(needle: &Path) -> Vec<(i32, String)> {
    let needle = needle.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| alive(*pid))
        .filter_map(|pid| {
            let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?).replace('\0', " ");
            cmdline.contains(&needle).then(|| (pid, cmdline.chars().take(80).collect()))
        })
        .collect()
}

async fn gone_within(pids: &[i32], limit: Duration) -> Result<Duration, Vec<i32>> {
    let started = tokio::time::Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(left);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn runtime(root: &Path, held: &HeldBubblewrap) -> Arc<LocalRuntime> {
    Arc::new(LocalRuntime::new(config(root, held.tools())).unwrap())
}

fn desktops_root() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::Builder::new().prefix("lslife").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = root.path().to_owned();
    (root, path)
}

/// The server dies while bubblewrap's child waits: bubblewrap goes with it (its own
/// `--die-with-parent`, set before its word), and the child, which never got that far,
/// must go too. Here bubblewrap is killed alone, as its parent-death signal would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_waiting_for_bubblewraps_word_ends_when_bubblewrap_dies() {
    let held = HeldBubblewrap::new();
    let (_root, root) = desktops_root();
    let rt = runtime(&root, &held);
    // The runtime stands for a server that is gone: once paused, nothing polls the start,
    // so nothing of the runtime notices bubblewrap's end (the lifeline itself stays open:
    // what must act is what watches the sandbox from outside).
    let paused = Arc::new(AtomicBool::new(false));
    let starting = tokio::spawn({
        let rt = rt.clone();
        let paused = paused.clone();
        async move {
            let start = rt.start(spec("held1", GREEN_PAGE), &|_| {});
            tokio::pin!(start);
            loop {
                if paused.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                tokio::select! {
                    done = &mut start => return done.map(|_| ()),
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    });
    let (bubblewrap, sandbox) = held_sandbox(&root.join("held1")).await;
    paused.store(true, Ordering::SeqCst);
    // Time for the limiter to join the sandbox's namespace and set its limit: then it
    // watches the sandbox.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(sandbox), "the sandbox waits for bubblewrap's word");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bubblewrap), nix::sys::signal::Signal::SIGKILL).unwrap();
    let gone = gone_within(&[sandbox], Duration::from_secs(1)).await;
    assert!(gone.is_ok(), "the sandbox outlived bubblewrap by over 1 s: {gone:?}");
    starting.abort();
    let _ = starting.await;
    let left = naming(&root);
    assert!(left.is_empty(), "processes of the desktop were left: {left:?}");
}

/// The server stops (or gives up on) a desktop still starting: the start's future is
/// dropped with bubblewrap's child waiting. The whole desktop goes, not only bubblewrap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_dropped_while_bubblewraps_child_waits_leaves_nothing() {
    let held = HeldBubblewrap::new();
    let (_root, root) = desktops_root();
    let rt = runtime(&root, &held);
    let starting = tokio::spawn({
        let rt = rt.clone();
        async move { rt.start(spec("held2", GREEN_PAGE), &|_| {}).await.map(|_| ()) }
    });
    let (bubblewrap, sandbox) = held_sandbox(&root.join("held2")).await;
    starting.abort();
    let _ = starting.await;
    let gone = gone_within(&[bubblewrap, sandbox], Duration::from_secs(1)).await;
    assert!(gone.is_ok(), "a dropped start left bubblewrap or its child: {gone:?}");
    let left = naming(&root);
    assert!(left.is_empty(), "processes of the desktop were left: {left:?}");
    let mounted = mounts_under(&root);
    assert!(mounted.is_empty(), "a dropped start left its writable space mounted: {mounted:?}");
}

/// A start that times out while bubblewrap's child waits stops the desktop, child and all,
/// and says which step did not happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_timing_out_while_bubblewraps_child_waits_leaves_nothing() {
    let held = HeldBubblewrap::new();
    let (_root, root) = desktops_root();
    let mut cfg = config(&root, held.tools());
    cfg.start_timeout = Duration::from_secs(3);
    let rt = LocalRuntime::new(cfg).unwrap();
    let err = rt.start(spec("held3", GREEN_PAGE), &|_| {}).await.err().expect("the start times out");
    assert!(err.to_string().contains("did not"), "the error names what did not happen: {err}");
    let left = naming(&root);
    assert!(left.is_empty(), "processes of the desktop were left: {left:?}");
}

/// Starts dropped at moments around bubblewrap's clone (before the runtime has seen the
/// sandbox, or just after): every time, nothing of the desktop is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_dropped_around_bubblewraps_clone_leave_nothing() {
    let held = HeldBubblewrap::new();
    let (_root, root) = desktops_root();
    let rt = runtime(&root, &held);
    for (n, delay_ms) in [0u64, 1, 2, 5, 10, 20].into_iter().enumerate() {
        let id = format!("held4-{n}");
        let starting = tokio::spawn({
            let rt = rt.clone();
            let id = id.clone();
            async move { rt.start(spec(&id, GREEN_PAGE), &|_| {}).await.map(|_| ()) }
        });
        let pgid_file = root.join(&id).join("desktop.pgid");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !pgid_file.exists() {
            assert!(tokio::time::Instant::now() < deadline, "the desktop's process did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        starting.abort();
        let _ = starting.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut left = naming(&root);
        while !left.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = naming(&root);
        }
        assert!(left.is_empty(), "dropped {delay_ms} ms after bubblewrap started: processes left: {left:?}");
    }
}
