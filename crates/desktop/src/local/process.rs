//! Finding and stopping a desktop's processes: its process group (the supervisor and, when
//! not sandboxed, everything it starts) and its PID namespace (everything inside the
//! sandbox, which runs in a session of its own).

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;

/// How much of a log's end is read for its tail.
pub(crate) const TAIL_BYTES: u64 = 4096;

/// The last `lines` lines of a log's bytes (at most its last 4 KiB).
pub(crate) fn tail_of(bytes: &[u8], lines: usize) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES as usize);
    let text = String::from_utf8_lossy(&bytes[start..]);
    // Chromium complains about the missing D-Bus on every start; that noise would push
    // the line that explains a failure out of the tail.
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(":ERROR:dbus/"))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops a desktop: SIGTERM to its group, up to `grace` for the supervisor to exit, then
/// SIGKILL for whatever is left, until no process of the group or of the sandbox's PID
/// namespace remains (killed grandchildren are reaped by init, which takes a moment).
/// A sandbox whose PID namespace is not known yet (stopped while starting) is killed at
/// once: see [`kill_unannounced_sandbox`].
pub(crate) async fn stop_desktop(pgid: i32, pidns: Option<u64>, sandboxed: bool, child: &mut Child, grace: Duration) {
    if sandboxed && pidns.is_none() && pgid > 0 {
        kill_unannounced_sandbox(pgid);
    }
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    }
    let _ = tokio::time::timeout(grace, child.wait()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = kill_now(pgid, pidns);
        let _ = child.try_wait();
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.wait().await;
}

/// SIGKILL for every process of the group `pgid` and of the PID namespace `pidns`;
/// answers those it found (killed processes linger a moment until reaped).
pub(crate) fn kill_now(pgid: i32, pidns: Option<u64>) -> Vec<i32> {
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    let left = members(pgid, pidns);
    for pid in &left {
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    left
}

/// Kills a sandbox that the runtime has not seen yet, with bubblewrap (`outer`, the
/// group's leader). bubblewrap's child waits on an eventfd for its parent's word before it
/// sets `--die-with-parent` or starts anything; killing bubblewrap in between left that
/// child waiting forever, in a session of its own and a PID namespace the runtime had not
/// recorded. So: stop bubblewrap (a stopped process cannot clone), find its children in
/// another PID namespace, kill them, then bubblewrap's whole group. Nothing of such a
/// desktop has run yet, so there is nothing to stop gracefully.
pub(crate) fn kill_unannounced_sandbox(outer: i32) {
    let leader = Pid::from_raw(outer);
    if nix::sys::signal::kill(leader, Signal::SIGSTOP).is_err() {
        return;
    }
    // The signal takes effect when the process next leaves the kernel: wait for that.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !matches!(state_of(outer).as_deref(), None | Some("T" | "t" | "Z" | "X"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let ours = pidns_of(std::process::id() as i32);
    let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
        if pidns_of(child).is_some_and(|ns| Some(ns) != ours) {
            let _ = nix::sys::signal::kill(Pid::from_raw(child), Signal::SIGKILL);
        }
    }
    let _ = killpg(leader, Signal::SIGKILL);
}

/// Live processes of a desktop: those in process group `pgid` and, for a sandboxed
/// desktop, those in the PID namespace with inode `pidns`.
pub fn members(pgid: i32, pidns: Option<u64>) -> Vec<i32> {
    let mut pids = if pgid > 0 { group_members(pgid) } else { Vec::new() };
    if let Some(ns) = pidns {
        pids.extend(
            live_pids()
                .filter(|pid| pidns_of(*pid) == Some(ns))
                .filter(|pid| !pids.contains(pid))
                .collect::<Vec<_>>(),
        );
    }
    pids
}

/// The inode of a process's PID namespace.
pub fn pidns_of(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok().map(|m| m.ino())
}

fn live_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| state_of(*pid).is_some_and(|s| s != "Z"))
}

fn state_of(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().next().map(str::to_owned)
}

/// Pids of live (non-zombie) processes whose process group is `pgid`, read from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised command name: state, ppid, pgrp, ...
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
            pgrp == Some(pgid) && state != Some("Z")
        })
        .collect()
}
