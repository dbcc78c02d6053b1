//! The local runtime: each desktop is Xvnc + openbox + Chromium as processes on this
//! machine, in one process group, with a private directory under the runtime's root:
//!
//! ```text
//! <root>/<session id>/        mode 0700
//!   vnc.sock                  Xvnc's RFB socket (mode 0600; no TCP port is opened)
//!   profile/                  Chromium's user data dir
//!   home/ run/                HOME and XDG_RUNTIME_DIR of the desktop's processes
//!   logs/{xvnc,openbox,chromium}.log
//!   desktop.pgid              lets a restarted server find and stop what a crash left
//! ```

mod process;

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use process::group_members;
use process::{PieceProcess, stop_group};

use crate::toolchain::{self, ToolCheck, ToolPaths};
use crate::{
    DesktopError, DesktopHandle, DesktopRuntime, DesktopSpec, Piece, Progress, devtools, rfb,
};

#[derive(Debug, Clone)]
pub struct LocalRuntimeConfig {
    /// Parent of the desktops' private directories.
    pub root: PathBuf,
    pub tools: ToolPaths,
    /// How long a desktop may take to become ready.
    pub start_timeout: Duration,
    /// How long processes get between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

struct LocalDesktop {
    dir: PathBuf,
    pgid: i32,
    processes: Vec<PieceProcess>,
}

pub struct LocalRuntime {
    config: LocalRuntimeConfig,
    desktops: Mutex<HashMap<String, LocalDesktop>>,
}

// Unix socket paths are limited to 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

impl LocalRuntime {
    /// Creates the runtime and stops whatever desktops a previous run of the server left
    /// behind (a crash, a SIGKILL): their directories name their process groups.
    pub fn new(config: LocalRuntimeConfig) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.root)?;
        let runtime = Self {
            config,
            desktops: Mutex::default(),
        };
        runtime.reap_stale();
        Ok(runtime)
    }

    fn reap_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.config.root) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Some(pgid) = std::fs::read_to_string(dir.join("desktop.pgid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                // Only kill the group if one of its members is ours for this directory
                // (Xvnc names the socket in it, Chromium its profile): the group's pids may
                // have been reused by unrelated processes since. The leader may be gone
                // while its group lives on.
                let mentions_dir = |pid: i32| {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
                };
                if group_members(pgid).into_iter().any(mentions_dir) {
                    tracing::warn!(pgid, dir = %dir.display(), "stopping a desktop left by a previous run");
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn desktop_dir(&self, id: &str) -> Result<PathBuf, DesktopError> {
        // The id names a directory: allow nothing that could walk out of the root.
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(DesktopError::Setup(format!("invalid desktop id {id:?}")));
        }
        Ok(self.config.root.join(id))
    }

    async fn launch(
        &self,
        spec: &DesktopSpec,
        dir: &Path,
        progress: Progress<'_>,
    ) -> Result<(LocalDesktop, DesktopHandle), DesktopError> {
        let setup = |what: &str, e: std::io::Error| DesktopError::Setup(format!("{what}: {e}"));
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| setup("cannot clear the desktop directory", e))?;
        }
        let mkdir = |p: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
        };
        for sub in ["profile", "home", "run", "logs"] {
            mkdir(&dir.join(sub)).map_err(|e| setup("cannot create the desktop directory", e))?;
        }
        let socket = dir.join("vnc.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(DesktopError::Setup(format!(
                "the VNC socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter data directory",
                socket.display()
            )));
        }
        let deadline = Instant::now() + self.config.start_timeout;
        let tools = &self.config.tools;
        let mut desktop = LocalDesktop {
            dir: dir.to_owned(),
            pgid: 0,
            processes: Vec::new(),
        };

        // 1. Xvnc. `-displayfd 1` makes the X server pick a free display itself and print
        //    its number when ready, so concurrent desktops never collide. `-rfbport -1`
        //    disables the TCP listener: the Unix socket in the private dir is the only way in.
        progress(Piece::Xvnc);
        let geometry = format!("{}x{}", spec.width, spec.height);
        let xvnc_args: Vec<String> = [
            "-displayfd",
            "1",
            "-rfbunixpath",
            &socket.to_string_lossy(),
            "-rfbunixmode",
            "0600",
            "-rfbport",
            "-1",
            "-SecurityTypes",
            "None",
            "-geometry",
            &geometry,
            "-depth",
            "24",
            "-nolisten",
            "tcp",
            "-AlwaysShared",
            "-desktop",
            "livesession",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let env_base = vec![
            ("HOME", dir.join("home").to_string_lossy().into_owned()),
            (
                "XDG_RUNTIME_DIR",
                dir.join("run").to_string_lossy().into_owned(),
            ),
            ("LANG", "C.UTF-8".to_owned()),
        ];
        let mut xvnc = PieceProcess::spawn(
            Piece::Xvnc,
            &tools.xvnc,
            &xvnc_args,
            &env_base,
            dir.join("logs/xvnc.log"),
            0,
            Stdio::piped(),
        )?;
        desktop.pgid = xvnc.pid();
        let stdout = xvnc.child.stdout.take().expect("stdout is piped");
        desktop.processes.push(xvnc);
        std::fs::write(dir.join("desktop.pgid"), desktop.pgid.to_string())
            .map_err(|e| setup("cannot write desktop.pgid", e))?;

        let result = self
            .bring_up(
                spec,
                &mut desktop,
                stdout,
                &socket,
                env_base,
                deadline,
                progress,
            )
            .await;
        match result {
            Ok(handle) => Ok((desktop, handle)),
            Err(e) => {
                stop_group(desktop.pgid, &mut desktop.processes, self.config.stop_grace).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn bring_up(
        &self,
        spec: &DesktopSpec,
        desktop: &mut LocalDesktop,
        xvnc_stdout: tokio::process::ChildStdout,
        socket: &Path,
        mut env: Vec<(&'static str, String)>,
        deadline: Instant,
        progress: Progress<'_>,
    ) -> Result<DesktopHandle, DesktopError> {
        let dir = desktop.dir.clone();
        let tools = &self.config.tools;
        let timeout = |piece: Piece, what: &str| DesktopError::PieceFailed {
            piece,
            reason: format!("{what} within {:?}", self.config.start_timeout),
            stderr_tail: process::tail_of(
                &dir.join("logs").join(format!("{}.log", piece.step())),
                20,
            ),
        };

        let mut line = String::new();
        let read =
            tokio::time::timeout_at(deadline, BufReader::new(xvnc_stdout).read_line(&mut line))
                .await;
        let display: u32 = match read {
            Ok(Ok(n)) if n > 0 => line.trim().parse().map_err(|_| {
                desktop.processes[0].failed(format!("printed {line:?} instead of a display number"))
            })?,
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(desktop.processes[0].check_running().unwrap_or_else(|| {
                    desktop.processes[0].failed("closed its output without naming a display".into())
                }));
            }
            Err(_) => return Err(timeout(Piece::Xvnc, "did not open a display")),
        };
        loop {
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(socket)).await
                && tokio::time::timeout(Duration::from_secs(2), rfb::read_greeting(&mut s))
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                break;
            }
            if let Some(e) = desktop.processes[0].check_running() {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(timeout(
                    Piece::Xvnc,
                    "VNC socket did not answer an RFB handshake",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // 2. openbox on that display.
        progress(Piece::Openbox);
        env.push(("DISPLAY", format!(":{display}")));
        let openbox = PieceProcess::spawn(
            Piece::Openbox,
            &tools.openbox,
            &["--sm-disable".into()],
            &env,
            dir.join("logs/openbox.log"),
            desktop.pgid,
            Stdio::null(),
        )?;
        desktop.processes.push(openbox);

        // 3. Chromium with its own profile. DevTools on an ephemeral loopback port, which
        //    Chromium writes to <profile>/DevToolsActivePort.
        progress(Piece::Chromium);
        let profile = dir.join("profile");
        let mut args: Vec<String> = vec![
            format!("--user-data-dir={}", profile.display()),
            "--remote-debugging-address=127.0.0.1".into(),
            "--remote-debugging-port=0".into(),
            format!("--window-size={},{}", spec.width, spec.height),
            "--window-position=0,0".into(),
            "--start-maximized".into(),
            // Quiet on a closed network, and no first-run or keyring prompts in the viewer.
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--disable-breakpad".into(),
            "--password-store=basic".into(),
            "--disable-search-engine-choice-screen".into(),
            "--hide-crash-restore-bubble".into(),
        ];
        if nix::unistd::geteuid().is_root() {
            // Chromium refuses to run as root with its sandbox; the desktop's own isolation
            // has to come from outside it. `--test-type` hides the warning bar about it.
            args.push("--no-sandbox".into());
            args.push("--test-type".into());
        }
        args.push(spec.start_url.clone());
        let chromium = PieceProcess::spawn(
            Piece::Chromium,
            &tools.chromium,
            &args,
            &env,
            dir.join("logs/chromium.log"),
            desktop.pgid,
            Stdio::null(),
        )?;
        desktop.processes.push(chromium);

        let devtools = loop {
            for p in desktop.processes.iter_mut() {
                if let Some(e) = p.check_running() {
                    return Err(e);
                }
            }
            if let Some(port) = devtools::active_port(&profile).await {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                if devtools::list_targets(addr)
                    .await
                    .is_ok_and(|t| t.iter().any(|t| t.kind == "page"))
                {
                    break addr;
                }
            }
            if Instant::now() >= deadline {
                return Err(timeout(Piece::Chromium, "DevTools did not list a page"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        Ok(DesktopHandle {
            id: spec.id.clone(),
            vnc_socket: socket.to_owned(),
            devtools,
            display,
            pgid: desktop.pgid,
        })
    }
}

#[async_trait::async_trait]
impl DesktopRuntime for LocalRuntime {
    async fn start(
        &self,
        spec: DesktopSpec,
        progress: Progress<'_>,
    ) -> Result<DesktopHandle, DesktopError> {
        let dir = self.desktop_dir(&spec.id)?;
        // A desktop that is still running for this id is stopped first: one per id.
        self.stop(&spec.id).await;
        let started = Instant::now();
        let (desktop, handle) = match self.launch(&spec, &dir, progress).await {
            Ok(ok) => ok,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        tracing::info!(session_id = %spec.id, display = handle.display, pgid = handle.pgid,
            elapsed_ms = started.elapsed().as_millis() as u64, "desktop ready");
        self.desktops.lock().await.insert(spec.id, desktop);
        Ok(handle)
    }

    async fn stop(&self, id: &str) {
        let Some(mut desktop) = self.desktops.lock().await.remove(id) else {
            return;
        };
        stop_group(desktop.pgid, &mut desktop.processes, self.config.stop_grace).await;
        if let Err(e) = std::fs::remove_dir_all(&desktop.dir) {
            tracing::warn!(session_id = %id, error = %e, "could not remove the desktop directory");
        }
        tracing::info!(session_id = %id, "desktop stopped");
    }

    async fn stop_all(&self) {
        let ids: Vec<String> = self.desktops.lock().await.keys().cloned().collect();
        // Concurrently: one by one would multiply the stop grace period.
        futures_util::future::join_all(ids.iter().map(|id| self.stop(id))).await;
    }

    async fn is_alive(&self, id: &str) -> bool {
        let mut desktops = self.desktops.lock().await;
        let Some(desktop) = desktops.get_mut(id) else {
            return false;
        };
        desktop
            .processes
            .iter_mut()
            .all(|p| p.check_running().is_none())
    }

    fn check_tools(&self) -> Vec<ToolCheck> {
        toolchain::locate(&self.config.tools)
    }
}
