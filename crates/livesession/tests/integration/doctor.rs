//! `livesession doctor`, run as the operator would run it.

use std::process::Command;

fn doctor(path: &str, data_dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_livesession"))
        .args(["doctor", "--data-dir"])
        .arg(data_dir)
        .env("PATH", path)
        .env_remove("LIVESESSION_XVNC")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_names_a_missing_binary_and_how_to_install_it() {
    let data = tempfile::Builder::new()
        .prefix("ls")
        .tempdir_in("/tmp")
        .unwrap();
    // A PATH with openbox and Chromium but no Xvnc.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["openbox", "chromium"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{tool}"), bin.path().join(tool)).unwrap();
    }
    let path = bin.path().display().to_string();
    let (ok, out) = doctor(&path, data.path());
    assert!(!ok, "doctor must fail:\n{out}");
    assert!(out.contains("MISSING  Xvnc"), "{out}");
    assert!(
        out.contains("apt-get install -y tigervnc-standalone-server"),
        "{out}"
    );
    assert!(out.contains("ok       openbox"), "{out}");
}

#[test]
fn doctor_passes_on_a_complete_machine_and_reads_a_frame() {
    let data = tempfile::Builder::new()
        .prefix("ls")
        .tempdir_in("/tmp")
        .unwrap();
    let (ok, out) = doctor(&std::env::var("PATH").unwrap(), data.path());
    assert!(ok, "doctor must pass:\n{out}");
    assert!(
        out.contains("TigerVNC"),
        "prints the version it found:\n{out}"
    );
    assert!(out.contains("read a 1280x720 frame"), "{out}");
    // The default number of desktops, from this machine's memory.
    let expected = livesession::config::default_max_desktops();
    assert!(expected >= 1);
    assert!(out.contains(&format!("ok       {expected} desktops by default")), "{out}");
    assert!(
        !data.path().join("doctor").exists(),
        "the throwaway desktop is cleaned up"
    );
}
