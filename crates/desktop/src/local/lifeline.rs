//! No desktop outlives its server, however the server ends (SIGKILL, the OOM killer, a
//! panic, power loss of the process). The runtime makes one pipe when it starts and keeps
//! its only write end (close-on-exec) for as long as the process lives; the read end is
//! inherited by every program it starts, the desktops' supervisors and slirp4netns
//! among them, which are told its number. Nothing is ever written, so a read
//! there returns only at end of file: when the kernel has closed the write end, which it
//! does as the server's process goes. The desktop's supervisor (launcher.sh) watches it
//! from its first line and ends the desktop then; slirp4netns watches it with
//! `--exit-fd`.
//!
//! Being level-triggered, it holds at every moment of a desktop's life: a desktop whose
//! server died while it was still being started (before its supervisor ran) finds the end
//! of file as soon as it looks. bubblewrap's `--die-with-parent` alone did not: it is set
//! by bubblewrap after it starts, so a server that died before then left the desktop
//! running, and it follows the thread that started the desktop, not the process.
//!
//! One moment is not the supervisor's: bubblewrap's child, cloned into the sandbox's
//! namespaces, waits for its parent's word before anything runs in it. The user-namespace
//! limiter, outside the sandbox, keeps the lifeline for it until the supervisor runs
//! (`sandbox::limiter_script`), and the runtime kills such a sandbox whole when it stops
//! or drops a desktop that is still starting (`process::kill_unannounced_sandbox`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;

/// The read end's descriptor is at least this: clear of the small numbers the desktop's
/// scripts redirect (Xvnc's 3, the seccomp program's 9).
const MIN_FD: RawFd = 100;

pub(crate) struct Lifeline {
    /// Inherited by every program the server starts (a read end is harmless anywhere).
    read: OwnedFd,
    /// Close-on-exec, never written, never closed before the process ends.
    _write: OwnedFd,
}

impl Lifeline {
    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        // dup() gives the lowest free number, without close-on-exec: copy until one is
        // MIN_FD or above; the lower copies close again as `lower` goes.
        let mut lower = Vec::new();
        let read = loop {
            let copy = nix::unistd::dup(&read).map_err(io::Error::from)?;
            if copy.as_raw_fd() >= MIN_FD {
                break copy;
            }
            lower.push(copy);
        };
        drop(lower);
        Ok(Self { read, _write: write })
    }

    /// The read end's descriptor number, as the desktop's programs inherit it.
    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child sees the pipe open while the lifeline lives and its end once it is gone.
    #[tokio::test]
    async fn the_child_reads_end_of_file_only_when_the_write_end_is_gone() {
        let lifeline = Lifeline::new().unwrap();
        assert!(lifeline.fd() >= MIN_FD);
        let mut command = tokio::process::Command::new("/bin/bash");
        command
            .args(["-c", &format!("read -r -u {} _; echo eof", lifeline.fd())])
            .stdout(std::process::Stdio::piped());
        let child = command.spawn().unwrap();
        let waiting = tokio::spawn(child.wait_with_output());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the read must block while the write end is open");
        drop(lifeline);
        let output = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the child ends once the write end is closed")
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "eof\n");
    }
}
