//! `livesession doctor`: checks that this machine can run desktops, naming whatever is
//! missing and the command that installs it. Exits non-zero if anything is wrong.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use livesession_desktop::rfb::RfbClient;
use livesession_desktop::{DesktopRuntime, DesktopSpec, LocalRuntime, toolchain};

use crate::config::DesktopArgs;

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
    let _ = std::io::stdout().flush();
}

/// Runs every check and returns whether all passed.
pub async fn run(data_dir: &Path, desktop: &DesktopArgs) -> bool {
    let mut ok = true;

    say("Desktop toolchain:");
    let pieces = desktop
        .runtime_config(data_dir.to_owned(), Duration::ZERO)
        .needed_pieces();
    let checks = toolchain::check_versions(&desktop.tools(), &pieces).await;
    for check in &checks {
        match &check.path {
            Some(path) => say(format!(
                "  ok       {:<11} {} ({})",
                check.piece.to_string(),
                path.display(),
                check.version.as_deref().unwrap_or("version unknown")
            )),
            None => {
                ok = false;
                say(format!(
                    "  MISSING  {:<11} `{}` not found; install it with: {}",
                    check.piece.to_string(),
                    check.binary,
                    check.fix()
                ));
            }
        }
    }

    say("Web client:");
    if crate::web::novnc_present() {
        say("  ok       noVNC client embedded");
    } else {
        ok = false;
        say("  MISSING  noVNC client; run `npm ci --prefix web` and rebuild");
    }

    say("Capacity:");
    let max = crate::config::default_max_desktops();
    say(format!(
        "  ok       {max} desktops by default (this machine's memory at {} MiB per desktop after {} MiB; \
         set LIVESESSION_MAX_DESKTOPS to change it)",
        crate::config::PLANNED_DESKTOP_MIB,
        crate::config::RESERVED_MIB
    ));

    say("Data directory:");
    match check_writable(data_dir) {
        Ok(()) => say(format!("  ok       {} is writable", data_dir.display())),
        Err(e) => {
            ok = false;
            say(format!(
                "  FAILED   {} is not writable: {e}",
                data_dir.display()
            ));
        }
    }

    say("Throwaway desktop:");
    if checks.iter().any(|c| !c.found()) || !ok {
        say("  skipped  (fix the problems above first)");
        return false;
    }
    match throwaway_desktop(data_dir, desktop).await {
        Ok(report) => say(format!("  ok       {report}")),
        Err(e) => {
            ok = false;
            say(format!("  FAILED   {e}"));
        }
    }
    ok
}

fn check_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

async fn throwaway_desktop(data_dir: &Path, args: &DesktopArgs) -> Result<String, String> {
    // A root of its own: the server's desktops (in `desktops/`) are never touched.
    let base = data_dir
        .canonicalize()
        .map_err(|e| e.to_string())?
        .join("doctor");
    // Under the server's rules: the data directory's `doctor/desktops`, or a directory in
    // /run when desktops run as other users who cannot reach the data directory.
    let root = args.desktops_root(&base);
    let config = livesession_desktop::LocalRuntimeConfig {
        warm: 0,
        ..args.runtime_config(root.clone(), Duration::from_secs(3))
    };
    let limited = config.limits.any();
    let runtime = LocalRuntime::new(config)
        .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    match runtime.limits_status() {
        Ok(()) if limited => {
            say("  ok       per-desktop memory, CPU and process limits (cgroups)")
        }
        Ok(()) => say("  note     per-desktop limits are turned off"),
        Err(reason) => say(format!(
            "  warning  desktops will run without memory and CPU limits: {reason}"
        )),
    }
    let spec = DesktopSpec {
        id: "doctor".into(),
        width: args.desktop_size.width,
        height: args.desktop_size.height,
        start_url: "about:blank".into(),
        restore: None,
    };
    say(if args.sandbox {
        "  starting Xvnc, openbox and Chromium in a bubblewrap sandbox…"
    } else {
        "  starting Xvnc, openbox and Chromium WITHOUT a sandbox (--sandbox false)…"
    });
    let started = Instant::now();
    let result = async {
        let handle = runtime
            .start(spec, &|piece| say(format!("    {piece}")))
            .await
            .map_err(|e| match e.stderr_tail() {
                Some(tail) => format!(
                    "{e}\n    last lines of its stderr:\n      {}",
                    tail.replace('\n', "\n      ")
                ),
                None => e.to_string(),
            })?;
        let ready = started.elapsed();
        let stream = handle
            .vnc_socket
            .connect()
            .await
            .map_err(|e| format!("VNC socket: {e}"))?;
        let mut rfb = RfbClient::handshake(stream)
            .await
            .map_err(|e| format!("RFB handshake: {e}"))?;
        rfb.request_update(false).await.map_err(|e| e.to_string())?;
        let bytes = tokio::time::timeout(Duration::from_secs(10), rfb.read_update())
            .await
            .map_err(|_| "no frame within 10 s".to_string())?
            .map_err(|e| format!("reading a frame: {e}"))?;
        Ok::<_, String>(format!(
            "desktop ready in {} ms; read a {}x{} frame ({} KiB) in {} ms total",
            ready.as_millis(),
            rfb.width,
            rfb.height,
            bytes / 1024,
            started.elapsed().as_millis()
        ))
    }
    .await;
    runtime.stop_all().await;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&base);
    result
}
