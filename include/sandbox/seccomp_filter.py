"""Outside a sandbox, as the platform: write the sandbox's seccomp filter, compiled, to stdout.

    /usr/bin/python3 seccomp_filter.py > filter.bpf

bubblewrap loads it (``--seccomp FD``) just before it executes the sandboxed command, so everything
in the sandbox runs under it and nothing there can lift it. The filter is built by libseccomp
(Debian's ``python3-seccomp``, importable by the system's Python only, hence a program of its own):
it resolves syscall numbers and checks the architecture, so nothing here is hand-written BPF.

What it refuses, with EPERM (an error the program can report, not a kill): new namespaces (``unshare``,
``setns``, ``clone`` with a namespace flag), mounting (old and new mount API), tracing other processes,
loading kernel code (modules, kexec, eBPF), perf events, the kernel keyring, userfaultfd, file handles,
swap, reboot, setting the clock, io_uring. ``clone3`` answers ENOSYS: its flags are behind a pointer
that seccomp cannot read, and ENOSYS makes the C library fall back to ``clone``, which it can.
A syscall of another architecture (a 32-bit ``int 0x80``) kills the process (libseccomp's default).
"""

import errno
import sys

import seccomp

# Namespace flags of clone(2) and unshare(2) (linux/sched.h).
NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
# Refused whatever their arguments.
REFUSED = (
    "setns",
    # mounting, old and new API
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # other processes' memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    # kernel code and kernel-side programs
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    # the kernel keyring
    "keyctl",
    "add_key",
    "request_key",
    # kernel attack surface a training script has no use for
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "acct",
    "quotactl",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "uselib",
    "vhangup",
    "syslog",
    # the machine
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
)


def build() -> seccomp.SyscallFilter:
    """The filter: everything allowed but what is listed above."""
    refuse = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in REFUSED:
        rules.add_rule(refuse, name)
    for name in ("unshare", "clone"):  # the flags are the first argument of both (x86_64, arm64)
        for flag in NAMESPACE_FLAGS.values():
            rules.add_rule(refuse, name, seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return rules


if __name__ == "__main__":
    build().export_bpf(sys.stdout)
    sys.stdout.flush()
