//! Processes of one desktop: spawned into one process group, stderr kept in a log file
//! whose tail goes into errors, stopped with SIGTERM then SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::{DesktopError, Piece};

pub(crate) struct PieceProcess {
    pub piece: Piece,
    pub child: Child,
    pub log: PathBuf,
}

impl PieceProcess {
    /// Spawns `piece` with a clean environment (the server's own variables, which may hold
    /// secrets, never reach the desktop). `pgid` 0 makes it the leader of a new group.
    pub fn spawn(
        piece: Piece,
        binary: &str,
        args: &[String],
        env: &[(&str, String)],
        log: PathBuf,
        pgid: i32,
        stdout: Stdio,
    ) -> Result<Self, DesktopError> {
        let stderr = std::fs::File::create(&log)
            .map_err(|e| DesktopError::Setup(format!("cannot create {}: {e}", log.display())))?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(pgid)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DesktopError::MissingBinary {
                piece,
                binary: binary.to_owned(),
            },
            _ => DesktopError::PieceFailed {
                piece,
                reason: format!("could not start {binary}: {e}"),
                stderr_tail: String::new(),
            },
        })?;
        Ok(Self { piece, child, log })
    }

    pub fn pid(&self) -> i32 {
        self.child.id().map(|p| p as i32).unwrap_or(0)
    }

    /// `Some(error)` if the process has exited (a desktop piece must keep running).
    pub fn check_running(&mut self) -> Option<DesktopError> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(self.failed(format!("exited early ({status})"))),
            Err(e) => Some(self.failed(format!("cannot be waited for: {e}"))),
        }
    }

    pub fn failed(&self, reason: String) -> DesktopError {
        DesktopError::PieceFailed {
            piece: self.piece,
            reason,
            stderr_tail: tail_of(&self.log, 20),
        }
    }
}

/// The last `lines` lines of a log file (at most 4 KiB of it).
pub(crate) fn tail_of(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(4096);
    let text = String::from_utf8_lossy(&bytes[start..]);
    // Chromium complains about the missing D-Bus on every start; that noise would push
    // the line that explains a failure out of the tail.
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(":ERROR:dbus/"))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops a whole process group: SIGTERM, up to `grace` for the direct children to exit,
/// then SIGKILL for whatever is left (including grandchildren such as Chromium's
/// renderers, which share the group).
pub(crate) async fn stop_group(pgid: i32, children: &mut [PieceProcess], grace: Duration) {
    if pgid <= 0 {
        return;
    }
    let group = Pid::from_raw(pgid);
    let _ = killpg(group, Signal::SIGTERM);
    let all_exited = async {
        for p in children.iter_mut() {
            let _ = p.child.wait().await;
        }
    };
    let _ = tokio::time::timeout(grace, all_exited).await;
    // Always SIGKILL the group: grandchildren may outlive their parents.
    let _ = killpg(group, Signal::SIGKILL);
    for p in children.iter_mut() {
        let _ = p.child.wait().await;
    }
    wait_group_gone(pgid, Duration::from_secs(2)).await;
}

/// Waits until no process is left in the group (killed grandchildren are reaped by init,
/// which takes a moment).
async fn wait_group_gone(pgid: i32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while !group_members(pgid).is_empty() && tokio::time::Instant::now() < deadline {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
