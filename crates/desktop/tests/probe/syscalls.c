/* The seccomp test's probe (crates/desktop/tests/nothing_to_launch.rs): calls each system
 * call the desktop's filter blocks, with arguments for which the kernel itself would not
 * answer EPERM where that is possible, and prints "<name> <result> <errno>" per call.
 *
 * First it nests new user namespaces until the kernel refuses ("userns <count> <errno>"),
 * then, in the deepest one (where it holds every capability) and a new mount namespace,
 * makes the mount calls: so that without the filter they succeed, and with it, fail. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long r) {
    printf("%s %ld %d\n", name, r, r < 0 ? errno : 0);
    fflush(stdout);
}

#define TRY(name, ...) do { errno = 0; long r_ = syscall(__VA_ARGS__); report(name, r_); } while (0)

int main(void) {
    /* Allowed: the probe itself works. */
    TRY("getpid", SYS_getpid);

    /* Each level maps our uid to itself, as Chromium's zygote does, so that the next
     * level may be created (the kernel wants the creator's uid mapped). */
    int depth = 0, err = 0;
    while (depth < 40) {
        unsigned ids[2] = {getuid(), getgid()};
        if (unshare(CLONE_NEWUSER) != 0) { err = errno; break; }
        depth++;
        const char *files[3] = {"/proc/self/setgroups", "/proc/self/uid_map", "/proc/self/gid_map"};
        for (int f = 0; f < 3 && !err; f++) {
            char text[64];
            int n = f == 0 ? snprintf(text, sizeof text, "deny")
                           : snprintf(text, sizeof text, "%u %u 1\n", ids[f - 1], ids[f - 1]);
            int fd = open(files[f], O_WRONLY);
            if (fd < 0 || write(fd, text, n) != n) err = -errno;
            if (fd >= 0) close(fd);
        }
        if (err) break;
    }
    printf("userns %d %d\n", depth, err);
    fflush(stdout);
    errno = 0;
    long r = unshare(CLONE_NEWNS);
    report("unshare_newns", r);

    TRY("keyctl", SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -2 /* process keyring */, 1);
    TRY("add_key", SYS_add_key, "user", "livesession", "x", 1, -2);
    TRY("request_key", SYS_request_key, "user", "livesession-none", NULL, -2);
    TRY("bpf", SYS_bpf, 0, NULL, 0);
    TRY("userfaultfd", SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
    TRY("io_uring_setup", SYS_io_uring_setup, 1, NULL);
    TRY("io_uring_enter", SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0);
    TRY("io_uring_register", SYS_io_uring_register, -1, 0, NULL, 0);
    TRY("process_vm_readv", SYS_process_vm_readv, getpid(), NULL, 0, NULL, 0, 0);
    TRY("process_vm_writev", SYS_process_vm_writev, getpid(), NULL, 0, NULL, 0, 0);
    TRY("pidfd_getfd", SYS_pidfd_getfd, -1, 0, 0);
    TRY("init_module", SYS_init_module, NULL, 0, "");
    TRY("finit_module", SYS_finit_module, -1, "", 0);
    TRY("delete_module", SYS_delete_module, "livesession_none", 0);
    TRY("mount", SYS_mount, "none", "/tmp", "tmpfs", 0, NULL);
    TRY("umount2", SYS_umount2, "/tmp", 0);
    TRY("pivot_root", SYS_pivot_root, "/nonexistent", "/nonexistent");
    TRY("open_tree", SYS_open_tree, AT_FDCWD, "/", 0);
    TRY("move_mount", SYS_move_mount, -1, "", -1, "", 0);
    TRY("fsopen", SYS_fsopen, "tmpfs", 0);
    TRY("fsconfig", SYS_fsconfig, -1, 0, NULL, NULL, 0);
    TRY("fsmount", SYS_fsmount, -1, 0, 0);
    TRY("fspick", SYS_fspick, AT_FDCWD, "/", 0);
    TRY("mount_setattr", SYS_mount_setattr, -1, "", 0, NULL, 0);
    TRY("setns", SYS_setns, -1, 0);
    TRY("kexec_load", SYS_kexec_load, 0, 0, NULL, 0);
    TRY("kexec_file_load", SYS_kexec_file_load, -1, -1, 0, NULL, 0);
    TRY("perf_event_open", SYS_perf_event_open, NULL, 0, -1, -1, 0);
    TRY("clone3", SYS_clone3, NULL, 0);
    /* Last: PTRACE_TRACEME makes this process traceable by its parent, nothing more. */
    TRY("ptrace", SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, NULL, NULL);
    TRY("getppid", SYS_getppid);
    return 0;
}
