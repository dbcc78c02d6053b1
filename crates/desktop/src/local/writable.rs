//! Size caps on what a desktop can write. A sandboxed desktop of a root server writes only
//! to its `home/` and `run/`; each is a tmpfs of its own, mounted by the server with a
//! `size=` cap (and `nosuid,nodev,noexec`), so a page that writes without end (downloads,
//! IndexedDB, the cache) gets `ENOSPC` at the cap instead of filling the data disk or the
//! host's `/run`. Its pages are charged to the desktop's memory cgroup as they fill.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// The cap on `run/` (sockets, status files, the pieces' logs), MiB.
pub(crate) const RUN_MIB: u64 = 64;

/// Mounts a tmpfs of `mib` MiB on `dir`, owned by `uid` with mode 0700.
pub(crate) fn mount_tmpfs(dir: &Path, mib: u64, uid: u32) -> std::io::Result<()> {
    let options = format!("size={mib}m,mode=0700,uid={uid},gid={uid}");
    nix::mount::mount(
        Some("livesession-desktop"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| std::io::Error::other(format!("cannot mount a {mib} MiB tmpfs on {}: {e}", dir.display())))
}

/// Detaches whatever is mounted on the desktop's `home/` and `run/` (nothing, when they
/// were not capped). The sandbox's own view goes when its last process does.
pub(crate) fn unmount(desktop_dir: &Path) {
    for sub in ["home", "run"] {
        let path = desktop_dir.join(sub);
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            // EINVAL: not a mount point; ENOENT: not there; EPERM: not root, nothing mounted.
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT | nix::errno::Errno::EPERM) => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not unmount a desktop's writable space"),
        }
    }
}

/// Removes a desktop's directory, unmounting its writable space first.
pub(crate) fn remove_desktop_dir(desktop_dir: &Path) {
    unmount(desktop_dir);
    let _ = std::fs::remove_dir_all(desktop_dir);
}
