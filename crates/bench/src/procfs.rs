//! What the benchmarks read from /proc: memory (PSS), CPU time, process trees, MemTotal.

use std::collections::{BTreeMap, HashMap};

/// Linux reports CPU times in /proc in units of USER_HZ, which is 100 on every
/// architecture Linux exposes to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// A field of /proc/<pid>/smaps_rollup, KiB.
fn rollup_kib(rollup: &str, field: &str) -> Option<u64> {
    rollup
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Proportional set size of a process, KiB.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup_kib(&rollup, "Pss")
}

/// Memory of a set of processes, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Proportional set size: each shared page divided among the processes mapping it.
    pub pss: u64,
    /// Unique set size: pages no other process maps.
    pub uss: u64,
    pub processes: usize,
}

impl Memory {
    fn of(pid: u32) -> Self {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let kib = |f| rollup_kib(&rollup, f).unwrap_or(0);
        Self {
            pss: kib("Pss"),
            uss: kib("Private_Clean") + kib("Private_Dirty"),
            processes: 1,
        }
    }

    fn add(&mut self, other: Self) {
        self.pss += other.pss;
        self.uss += other.uss;
        self.processes += other.processes;
    }
}

/// Memory by process name over `pids`.
pub fn memory_by_name(pids: &[i32]) -> BTreeMap<String, Memory> {
    let mut by_name: BTreeMap<String, Memory> = BTreeMap::new();
    for &pid in pids {
        let pid = pid as u32;
        by_name.entry(comm(pid)).or_default().add(Memory::of(pid));
    }
    by_name
}

/// The sum over `pids`.
pub fn memory_of(pids: &[i32]) -> Memory {
    let mut total = Memory::default();
    for m in memory_by_name(pids).into_values() {
        total.add(m);
    }
    total
}

/// The process listening on a local TCP port, from /proc (so the soak needs no pid).
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
                (local_port == port && f.get(3) == Some(&"0A"))
                    .then(|| f.get(9).map(|s| s.to_string()))?
            })
        })?;
    let needle = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|proc_dir| {
            let pid: u32 = proc_dir.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(proc_dir.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle)
                })
                .then_some(pid)
        })
}

/// The fields of /proc/<pid>/stat after the command name, from `state` on.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // `state` is a letter; keep the numeric fields' positions by mapping it to 0.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// user+sys CPU seconds of a process (all its threads), without its children.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    Some((f.get(11)? + f.get(12)?) as f64 / TICKS_PER_SECOND)
}

/// user+sys CPU seconds of this process.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// user+sys CPU seconds of a process and all its descendants, live or exited (an exited
/// child's time is in its parent's cutime/cstime once reaped). For a proxy that forks a
/// worker per connection, such as websockify.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut own: HashMap<u32, u64> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Some(f) = stat_fields(pid) else { continue };
        let ticks = f.get(11..15).map_or(0, |t| t.iter().sum());
        own.insert(pid, ticks);
        if let Some(&ppid) = f.get(1) {
            children.entry(ppid as u32).or_default().push(pid);
        }
    }
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        total += own.get(&pid).copied().unwrap_or(0);
        stack.extend(children.get(&pid).into_iter().flatten());
    }
    total as f64 / TICKS_PER_SECOND
}

/// A process's short name (`comm`).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Resident set size of a process (`VmRSS` of /proc/<pid>/status), KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    rollup_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "VmRSS")
}

/// A field of /proc/meminfo, KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    rollup_kib(&std::fs::read_to_string("/proc/meminfo").ok()?, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        // Read in this order: CPU time only grows (other test threads run meanwhile).
        let own = cpu_seconds(me).unwrap();
        assert!(tree_cpu_seconds(me) >= own);
        assert!(pss_kib(me).unwrap() > 0);
        assert!(rss_kib(me).unwrap() > 0);
        let mine = memory_of(&[me as i32]);
        assert!(mine.pss > 0 && mine.uss > 0 && mine.uss <= mine.pss);
        assert_eq!(mine.processes, 1);
        assert!(meminfo_kib("MemTotal").unwrap() > 0);
        assert!(!comm(me).is_empty());
    }
}
