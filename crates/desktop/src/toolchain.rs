//! The desktop toolchain: which binaries the local runtime runs and whether they are here.
//! An image that silently lacked its VNC server once gave every viewer a black screen;
//! so the server checks at start-up and names what is missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::Piece;

/// The binary used for each piece: a bare name is looked up in `PATH`.
#[derive(Debug, Clone)]
pub struct ToolPaths {
    pub xvnc: String,
    pub openbox: String,
    pub chromium: String,
    pub socat: String,
    pub bwrap: String,
    pub slirp4netns: String,
    pub ip: String,
}

impl Default for ToolPaths {
    fn default() -> Self {
        Self {
            xvnc: "Xvnc".into(),
            openbox: "openbox".into(),
            chromium: "chromium".into(),
            socat: "socat".into(),
            bwrap: "bwrap".into(),
            slirp4netns: "slirp4netns".into(),
            ip: "ip".into(),
        }
    }
}

impl ToolPaths {
    pub fn binary(&self, piece: Piece) -> &str {
        match piece {
            Piece::Xvnc => &self.xvnc,
            Piece::Openbox => &self.openbox,
            Piece::Chromium => &self.chromium,
            Piece::Socat => &self.socat,
            Piece::Bubblewrap => &self.bwrap,
            Piece::Network => &self.slirp4netns,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolCheck {
    pub piece: Piece,
    pub binary: String,
    /// Where it was found, if it was.
    pub path: Option<PathBuf>,
    /// The first line the binary printed about its version.
    pub version: Option<String>,
}

impl ToolCheck {
    pub fn found(&self) -> bool {
        self.path.is_some()
    }

    pub fn fix(&self) -> String {
        format!("apt-get install -y {}", self.piece.apt_package())
    }
}

/// Finds `binary` the way `execvp` would: as a path if it has a slash, else in `PATH`.
pub fn find_binary(binary: &str) -> Option<PathBuf> {
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
}

/// Checks presence only: cheap enough for `/readyz`.
pub fn locate(paths: &ToolPaths, pieces: &[Piece]) -> Vec<ToolCheck> {
    let mut checks: Vec<ToolCheck> = pieces
        .iter()
        .map(|&piece| {
            let binary = paths.binary(piece).to_owned();
            ToolCheck {
                piece,
                path: find_binary(&binary),
                binary,
                version: None,
            }
        })
        .collect();
    // The network piece is two programs; a missing `ip` is reported as the piece missing.
    if let Some(net) = checks.iter_mut().find(|c| c.piece == Piece::Network)
        && find_binary(&paths.ip).is_none()
    {
        net.path = None;
        net.binary = format!("{} and {}", paths.slirp4netns, paths.ip);
    }
    checks
}

/// Checks presence and asks each binary for its version (for `doctor`).
pub async fn check_versions(paths: &ToolPaths, pieces: &[Piece]) -> Vec<ToolCheck> {
    let mut checks = locate(paths, pieces);
    for check in &mut checks {
        if let Some(path) = &check.path {
            check.version = version_of(check.piece, path).await;
        }
    }
    checks
}

async fn version_of(piece: Piece, path: &Path) -> Option<String> {
    let arg = match piece {
        Piece::Xvnc => "-version",
        Piece::Socat => "-V",
        _ => "--version",
    };
    let out = tokio::process::Command::new(path)
        .arg(arg)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), out)
        .await
        .ok()?
        .ok()?;
    // Xvnc prints its version on stderr; the others on stdout. Debian's chromium wrapper
    // also writes shell noise on stderr, so look for the line naming the program.
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let needle = match piece {
        Piece::Xvnc => "TigerVNC",
        Piece::Openbox => "Openbox",
        Piece::Chromium => "Chromium",
        Piece::Socat => "socat version",
        Piece::Bubblewrap => "bubblewrap",
        Piece::Network => "slirp4netns version",
    };
    text.lines()
        .map(str::trim)
        .find(|l| l.contains(needle))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_reported_with_its_package() {
        let paths = ToolPaths {
            xvnc: "/nonexistent/Xvnc".into(),
            ..ToolPaths::default()
        };
        let checks = locate(&paths, &Piece::ALL);
        let xvnc = checks.iter().find(|c| c.piece == Piece::Xvnc).unwrap();
        assert!(!xvnc.found());
        assert_eq!(xvnc.fix(), "apt-get install -y tigervnc-standalone-server");
    }

    #[test]
    fn find_binary_searches_path() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("definitely-not-a-binary-here").is_none());
    }
}
