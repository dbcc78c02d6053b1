//! Per-desktop memory, CPU and process-count limits through cgroups, where the host lets
//! the server create them (cgroup v2, or v1's memory/cpu/pids hierarchies). Where it does
//! not, desktops run without limits and `doctor` and the start-up log say why.

use std::path::{Path, PathBuf};

/// The limits of one desktop; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceLimits {
    pub memory_bytes: Option<u64>,
    /// CPU time as a number of cores, e.g. 1.5.
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

impl ResourceLimits {
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.cpus.is_some() || self.pids.is_some()
    }
}

const CPU_PERIOD_US: u64 = 100_000;

/// How this host's cgroups can be used.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// A unified hierarchy: one directory per desktop under `parent`.
    V2 { parent: PathBuf },
    /// Legacy hierarchies: one directory per desktop in each controller's tree.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
    Unavailable(String),
}

impl Cgroups {
    /// Finds a writable place for desktops' cgroups: under the server's own cgroup.
    pub fn detect() -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let fs = Path::new("/sys/fs/cgroup");
        if fs.join("cgroup.controllers").exists() {
            // Pure v2. A cgroup with processes cannot also have limited children, so
            // desktops go in a sibling tree at the root, which needs root.
            let parent = fs.join("livesession");
            return match enable_v2(fs, &parent) {
                Ok(()) => Cgroups::V2 { parent },
                Err(e) => Cgroups::Unavailable(format!("cgroup v2 at {}: {e}", fs.display())),
            };
        }
        let in_tree = |controller: &str| -> Option<PathBuf> {
            let rel = own.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, names, path) = (f.next()?, f.next()?, f.next()?);
                names.split(',').any(|n| n == controller).then(|| path.trim_start_matches('/').to_owned())
            })?;
            let dir = fs.join(controller).join(rel).join("livesession");
            std::fs::create_dir_all(&dir).ok()?;
            Some(dir)
        };
        match (in_tree("memory"), in_tree("cpu"), in_tree("pids")) {
            (Some(memory), Some(cpu), Some(pids)) => Cgroups::V1 { memory, cpu, pids },
            _ => Cgroups::Unavailable(
                "no writable cgroup hierarchy for memory, cpu and pids under /sys/fs/cgroup \
                 (run the server as root on a host that delegates cgroups)"
                    .into(),
            ),
        }
    }

    /// Creates the cgroups of desktop `id` with `limits`; returns the `cgroup.procs`
    /// files a process writes itself into.
    pub fn create(&self, id: &str, limits: &ResourceLimits) -> std::io::Result<DesktopCgroup> {
        let name = format!("desktop-{id}");
        let mut dirs = Vec::new();
        let set = |dir: &Path, file: &str, value: String| -> std::io::Result<()> {
            std::fs::write(dir.join(file), value)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
        };
        match self {
            Cgroups::V2 { parent } => {
                let dir = parent.join(&name);
                std::fs::create_dir_all(&dir)?;
                dirs.push(dir.clone());
                if let Some(m) = limits.memory_bytes {
                    set(&dir, "memory.max", m.to_string())?;
                    set(&dir, "memory.swap.max", "0".into()).ok();
                }
                if let Some(c) = limits.cpus {
                    set(&dir, "cpu.max", format!("{} {CPU_PERIOD_US}", quota(c)))?;
                }
                if let Some(p) = limits.pids {
                    set(&dir, "pids.max", p.to_string())?;
                }
            }
            Cgroups::V1 { memory, cpu, pids } => {
                for (root, limit) in [
                    (memory, limits.memory_bytes.map(|m| ("memory.limit_in_bytes", m.to_string()))),
                    (cpu, limits.cpus.map(|c| ("cpu.cfs_quota_us", quota(c).to_string()))),
                    (pids, limits.pids.map(|p| ("pids.max", p.to_string()))),
                ] {
                    let dir = root.join(&name);
                    std::fs::create_dir_all(&dir)?;
                    dirs.push(dir.clone());
                    if let Some((file, value)) = limit {
                        if file == "cpu.cfs_quota_us" {
                            set(&dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                        }
                        set(&dir, file, value)?;
                    }
                }
            }
            Cgroups::Unavailable(reason) => return Err(std::io::Error::other(reason.clone())),
        }
        Ok(DesktopCgroup { dirs })
    }
}

fn quota(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

fn enable_v2(fs: &Path, parent: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(parent)?;
    for dir in [fs, parent] {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
    }
    Ok(())
}

/// The cgroups of one running desktop.
#[derive(Debug)]
pub struct DesktopCgroup {
    dirs: Vec<PathBuf>,
}

impl DesktopCgroup {
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes the (empty) cgroups; called once the desktop's processes are gone.
    pub fn remove(&self) {
        for dir in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a desktop's cgroup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_is_cores_times_the_period() {
        assert_eq!(quota(1.0), 100_000);
        assert_eq!(quota(1.5), 150_000);
        assert_eq!(quota(0.0001), 1000, "the kernel's minimum quota");
    }

    #[test]
    fn limits_without_values_are_not_limits() {
        assert!(!ResourceLimits::default().any());
        assert!(ResourceLimits { pids: Some(10), ..Default::default() }.any());
    }
}
