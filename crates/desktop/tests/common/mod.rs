//! What the desktop crate's test binaries share: a runtime configured like a server's,
//! and playing the desktop's own user for real (the hostile-desktop tests).

#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::time::Duration;

use livesession_desktop::egress::EgressPolicy;
use livesession_desktop::{
    DesktopHandle, DesktopSpec, LocalRuntime, LocalRuntimeConfig, ResourceLimits, ToolPaths, members,
};

pub fn config(root: &Path, tools: ToolPaths) -> LocalRuntimeConfig {
    LocalRuntimeConfig {
        root: root.to_owned(),
        tools,
        start_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(3),
        sandbox: true,
        egress: EgressPolicy::default(),
        host_ports: Vec::new(),
        limits: ResourceLimits::default(),
        uid_base: 2_000_000_000,
        warm: 0,
        warm_size: (1280, 720),
        warm_url: "about:blank".into(),
        chromium_flags: Vec::new(),
        writable_mib: Some(1024),
    }
}

pub fn runtime(root: &Path, tools: ToolPaths) -> LocalRuntime {
    LocalRuntime::new(config(root, tools)).unwrap()
}

pub fn spec(id: &str, url: &str) -> DesktopSpec {
    DesktopSpec {
        id: id.into(),
        width: 1280,
        height: 720,
        start_url: url.into(),
        restore: None,
    }
}

pub const MAGENTA_PAGE: &str = "data:text/html,<body style='background:rgb(255,0,255)'>";
pub const GREEN_PAGE: &str = "data:text/html,<body style='background:rgb(0,255,0)'>";

/// The uid desktop `h` runs as (the owner of its run directory).
pub fn desktop_uid(h: &DesktopHandle) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(h.vnc_socket.path().parent().unwrap()).unwrap().uid()
}

/// Runs `script` as the desktop's user, in its mount and network namespaces (it sees
/// `/run/desktop`, `/home/desktop`, the X socket in the sandbox's `/tmp`). Not under the
/// seccomp filter: it stands for what a program inside could do with files and X.
pub async fn as_desktop_user(h: &DesktopHandle, script: &str) -> std::process::Output {
    let pid = *members(0, h.pidns).first().expect("the desktop has processes");
    let uid = desktop_uid(h).to_string();
    tokio::process::Command::new("nsenter")
        .arg(format!("--target={pid}"))
        .args(["--mount", "--net", "--", "setpriv"])
        .args([format!("--reuid={uid}"), format!("--regid={uid}")])
        .args(["--clear-groups", "--", "/bin/bash", "-c", script])
        .output()
        .await
        .unwrap()
}
