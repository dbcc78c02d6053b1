//! The desktop's seccomp filter: a classic-BPF program that bubblewrap installs
//! (`--seccomp FD`) on the sandbox's first process, so that every process of the desktop
//! (Xvnc, openbox, Chromium, socat, and anything they start) runs under it. Chromium
//! installs its own, stricter filters on its renderers on top; filters only ever add up.
//!
//! What it does, in order:
//! - a system call of another architecture (the 32-bit `int 0x80` entry, or x32 numbers)
//!   fails with `EPERM`: the numbers below only mean something for the native one;
//! - the calls in [`BLOCKED`] fail with `EPERM`: kernel keyrings, eBPF, userfaultfd,
//!   io_uring, tracing other processes, kernel modules, every mount call, kexec, perf
//!   events, `setns`, and a few more that only an administrator uses;
//! - `clone3` fails with `ENOSYS` (glibc and Chromium then use `clone`, whose flags a
//!   filter can read; `clone3` keeps them in memory a filter cannot see);
//! - everything else is allowed. New user namespaces (`clone`/`unshare` with
//!   `CLONE_NEWUSER`) stay allowed because Chromium's own sandbox needs them; their number
//!   is bounded separately (see [`super::USER_NAMESPACES_MAX`]).
//!
//! Written by hand (a few dozen instructions) rather than with a library: the program is
//! a list of comparisons, and tests read it back.

use nix::libc;

/// `SECCOMP_RET_*` actions.
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// `AUDIT_ARCH_*` of the architectures the numbers below are for.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// x32 system calls share x86_64's audit arch and set this bit in the number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Classic BPF opcodes used here.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

/// System calls that fail with `EPERM` inside the desktop, by name (for the docs and the
/// test's report) and number.
pub const BLOCKED: &[(&str, libc::c_long)] = &[
    // Kernel keyrings: a frequent source of kernel bugs, and nothing here uses them.
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    // eBPF programs and maps.
    ("bpf", libc::SYS_bpf),
    // Page-fault handling in user space: a classic exploitation aid.
    ("userfaultfd", libc::SYS_userfaultfd),
    // io_uring: a second system-call interface that filters cannot see into.
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    // Reading or changing another process.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    // Kernel modules.
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    // Mounts, old and new API, and joining other namespaces.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("fsconfig", libc::SYS_fsconfig),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("setns", libc::SYS_setns),
    // Replacing the kernel, profiling it.
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("perf_event_open", libc::SYS_perf_event_open),
    // Administration: nothing a desktop does.
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("fanotify_init", libc::SYS_fanotify_init),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
];

/// Calls that fail with `ENOSYS`, so that callers fall back to an older call a filter can
/// read (`clone3` → `clone`).
pub const UNSUPPORTED: &[(&str, libc::c_long)] = &[("clone3", libc::SYS_clone3)];

/// One classic-BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

/// The filter as instructions.
pub fn program() -> Vec<Insn> {
    let deny = RET_ERRNO | libc::EPERM as u32;
    let nosys = RET_ERRNO | libc::ENOSYS as u32;
    let listed: Vec<(u32, u32)> = BLOCKED
        .iter()
        .map(|(_, nr)| (*nr as u32, deny))
        .chain(UNSUPPORTED.iter().map(|(_, nr)| (*nr as u32, nosys)))
        .collect();
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        // Native architecture: go on; otherwise straight to the final "deny".
        Insn { code: BPF_JEQ_K, jt: 1, jf: 0, k: AUDIT_ARCH },
        stmt(BPF_RET_K, deny),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([
        Insn { code: BPF_JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        stmt(BPF_RET_K, deny),
    ]);
    // Each listed number: if equal, fall through to its return, else skip it.
    for (nr, action) in listed {
        p.push(Insn { code: BPF_JEQ_K, jt: 0, jf: 1, k: nr });
        p.push(stmt(BPF_RET_K, action));
    }
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p
}

/// The filter as bubblewrap reads it from `--seccomp FD`: `struct sock_filter`s in native
/// byte order.
pub fn bytes() -> Vec<u8> {
    program()
        .iter()
        .flat_map(|i| {
            let mut b = Vec::with_capacity(8);
            b.extend(i.code.to_ne_bytes());
            b.push(i.jt);
            b.push(i.jf);
            b.extend(i.k.to_ne_bytes());
            b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel does, for one (arch, nr).
    fn run(arch: u32, nr: u32) -> u32 {
        let p = program();
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    acc = match i.k {
                        OFFSET_ARCH => arch,
                        OFFSET_NR => nr,
                        other => panic!("unexpected load at {other}"),
                    };
                    pc += 1;
                }
                BPF_JEQ_K | BPF_JGE_K => {
                    let taken = if i.code == BPF_JEQ_K { acc == i.k } else { acc >= i.k };
                    pc += 1 + if taken { i.jt } else { i.jf } as usize;
                }
                BPF_RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn blocked_calls_get_eperm_clone3_enosys_and_the_rest_is_allowed() {
        for (name, nr) in BLOCKED {
            assert_eq!(run(AUDIT_ARCH, *nr as u32), EPERM, "{name}");
        }
        assert_eq!(run(AUDIT_ARCH, libc::SYS_clone3 as u32), RET_ERRNO | libc::ENOSYS as u32);
        for nr in [libc::SYS_read, libc::SYS_write, libc::SYS_clone, libc::SYS_unshare, libc::SYS_execve, libc::SYS_chroot] {
            assert_eq!(run(AUDIT_ARCH, nr as u32), RET_ALLOW, "{nr}");
        }
    }

    #[test]
    fn another_architecture_gets_nothing() {
        // i386 (int 0x80 from a 64-bit process): even its "read" is refused.
        assert_eq!(run(0x4000_0003, 3), EPERM);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(run(AUDIT_ARCH, X32_SYSCALL_BIT | libc::SYS_read as u32), EPERM);
    }

    #[test]
    fn the_program_fits_the_kernels_limits_and_serialises_to_eight_bytes_each() {
        let p = program();
        assert!(p.len() < 4096);
        assert_eq!(bytes().len(), p.len() * 8);
        assert_eq!(&bytes()[..8], &[0x20, 0, 0, 0, 4, 0, 0, 0]);
    }
}
