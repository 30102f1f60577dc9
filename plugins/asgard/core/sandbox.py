"""Running code the platform does not trust: a non-root process that sees only what it was handed.

A sandboxed command runs under bubblewrap (Debian's ``bwrap``) as uid 65534, with the privileges of
that uid on the host too (it is dropped before the namespaces are made), in namespaces of its own:

- mounts: the system's programs and libraries read-only (``/usr``), a fresh ``/proc`` and ``/dev``,
  a private ``/tmp``, a minimal ``/etc``, and exactly the paths it is given (read-only unless
  marked writable) — nothing else of the host exists for it;
- PID: it sees only its own processes, and every process it starts dies with it, on success too;
- network: its own loopback and nothing else; a TCP port inside can be forwarded to a unix
  socket outside (:class:`Forward`), which the caller serves (so what it reaches is stated exactly);
- IPC and UTS of its own; no user namespace of its own making (bubblewrap's ``--disable-userns``).

Every system call it makes passes a seccomp filter (``include/sandbox/seccomp_filter.py``, built with
libseccomp): new namespaces, mounts, ptrace, kernel modules and kexec, eBPF, perf, the keyring,
userfaultfd, swap, reboot and the clock answer EPERM. bubblewrap loads it just before it executes the
command, so it holds for everything the command runs, whatever its interpreter.

Its whole process tree is capped by a cgroup (v1 ``memory`` and ``pids`` controllers, or v2): memory
and process count for the tree, not per process. What it may write is capped too: ``/tmp`` and each
writable folder are filesystems of ``disk_mb`` each (tmpfs, so inside the memory cap as well), and a
write beyond fails with ENOSPC; a writable folder is copied in before the command and back to the host
only when the command succeeded, so a failed run leaves nothing on the host's disk and a successful one
at most ``disk_mb`` per folder. Time and output (in bytes, partial lines included) are capped by the
caller's side, which kills the tree when either runs out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from asgard.core.cgroups import CGROUP_ROOT, ProcessTreeLimits
from asgard.core.sandbox_output import OutputReader
from asgard.core.settings import REPO_ROOT, get_settings

log = logging.getLogger(__name__)

SANDBOX_UID = 65534  # nobody
# --disable-userns and --size (of a tmpfs) came in bubblewrap 0.8.
MIN_BWRAP = (0, 8)
# The seccomp filter's builder, run by Debian's Python: python3-seccomp (libseccomp) is built for it.
SECCOMP_FILTER = REPO_ROOT / "include" / "sandbox" / "seccomp_filter.py"
SYSTEM_PYTHON = "/usr/bin/python3"
# A writable folder with less room than this left is full (tmpfs gives out whole pages).
FULL_BELOW_BYTES = 1024 * 1024
# What a sandbox always gets: the system's programs and libraries (Debian keeps them all in /usr).
SYSTEM_LINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}
ETC_FILES = {
    "passwd": f"root:x:0:0::/nonexistent:/usr/sbin/nologin\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}::/work:/bin/sh\n",
    "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n",
    "hosts": "127.0.0.1 localhost\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}


class SandboxError(RuntimeError):
    """The sandbox could not be set up on this machine (the message says what is missing)."""


@dataclass(frozen=True)
class Bind:
    """A host path the sandbox sees at ``target`` (the same path by default), read-only unless writable."""

    source: Path
    target: str | None = None
    writable: bool = False

    @property
    def inside(self) -> str:
        return self.target or str(self.source)


@dataclass(frozen=True)
class Forward:
    """TCP ``port`` on the sandbox's loopback, relayed to the unix socket ``socket`` outside."""

    port: int
    socket: Path


def _operator_disk_cap() -> int:
    return get_settings().script_max_disk_mb


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 600
    memory_mb: int = 4096
    max_processes: int = 256
    max_output_bytes: int = 5_000_000
    # What /tmp and each writable folder may hold (MB each); the operator's cap unless a caller asks less.
    disk_mb: int = field(default_factory=_operator_disk_cap)


@dataclass
class Outcome:
    """How a sandboxed command ended: its exit code, or which limit stopped it."""

    exit_code: int | None
    seconds: float
    output_bytes: int
    tail: list[str] = field(default_factory=list)
    stopped_by: str | None = None  # timeout | output | memory | processes | disk

    @property
    def ok(self) -> bool:
        return self.stopped_by is None and self.exit_code == 0


def available() -> str | None:
    """Why sandboxes cannot run here (None: they can)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    if bwrap_version() < MIN_BWRAP:
        return f"bubblewrap {'.'.join(map(str, bwrap_version()))} is too old: 0.8 or newer is needed"
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    if os.geteuid() != 0:
        return "the worker does not run as root (a sandbox is set up as root, then runs as uid 65534)"
    if not ProcessTreeLimits.supported():
        return f"no writable cgroup memory and pids controllers under {CGROUP_ROOT} (run the worker as root)"
    try:
        seccomp_program()
    except SandboxError as error:
        return str(error)
    return None


@functools.cache
def bwrap_version() -> tuple[int, ...]:
    """bubblewrap's version, as numbers (``bubblewrap 0.8.0`` -> (0, 8, 0))."""
    words = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False).stdout.split()
    return tuple(int(part) for part in words[-1].split(".") if part.isdigit()) if words else ()


@functools.cache
def seccomp_program() -> bytes:
    """The sandbox's seccomp filter, compiled to BPF by libseccomp (built once per process)."""
    try:
        built = subprocess.run([SYSTEM_PYTHON, str(SECCOMP_FILTER)], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SandboxError(f"cannot build the seccomp filter with {SYSTEM_PYTHON}: {error}") from None
    if built.returncode != 0 or not built.stdout:
        why = built.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SandboxError(
            f"cannot build the seccomp filter ({why[0]}): libseccomp's Python bindings are needed "
            "(apt-get install python3-seccomp)"
        )
    return built.stdout


# --------------------------------------------------------------------------- running
def bwrap_arguments(
    binds: list[Bind], staged: list[str], *, cwd: str, etc: str, seccomp_fd: int, tmp_bytes: int
) -> list[str]:
    """bubblewrap's arguments: the namespaces, the system's files, ``binds``, the seccomp filter read
    from ``seccomp_fd``, a ``/tmp`` of ``tmp_bytes`` and the working folder."""
    arguments = [
        "bwrap",
        "--unshare-user",
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_UID),
        "--disable-userns",  # no user namespace of its own: the way to capabilities, mounts, and more
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname", "sandbox",
        "--die-with-parent",
        "--new-session",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(tmp_bytes), "--tmpfs", "/tmp",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for link, target in SYSTEM_LINKS.items():
        arguments += ["--symlink", target, link]
    arguments += ["--ro-bind", etc, "/etc"]
    for bind, source in zip(binds, staged, strict=True):
        arguments += ["--bind" if bind.writable else "--ro-bind", source, bind.inside]
    return [*arguments, "--seccomp", str(seccomp_fd), "--chdir", cwd]


def launch_script(
    group: ProcessTreeLimits, binds: list[Bind], etc: Path, *, disk_bytes: int, report: Path
) -> tuple[str, list[str], str]:
    """The shell that sets a sandbox up as root, its staged bind sources, and the staged /etc.

    It runs in a mount namespace of its own: it joins the cgroup first (so every process of the tree
    is in it), then mounts every read-only bind source onto a private stage that the sandbox's uid can
    reach (a source may sit in a folder only root may enter), and gives every writable folder a tmpfs
    of ``disk_bytes`` there, holding a copy of it; then drops to that uid for bubblewrap. When the
    command has ended it writes each writable folder's free bytes to ``report`` and, only if the
    command succeeded, makes each host folder what the sandbox left in its copy.
    """
    stage = str(stage_root())
    lines = ["set -e", *[f"echo $$ >> {shlex.quote(str(procs))}" for procs in group.procs_files]]
    lines.append(f"mount -t tmpfs -o mode=0755,size=1m asgard-stage {shlex.quote(stage)}")
    staged, written_back = [], []
    for index, (source, writable) in enumerate([(etc, False), *((bind.source, bind.writable) for bind in binds)]):
        point, host = shlex.quote(f"{stage}/{index}"), shlex.quote(str(source))
        staged.append(f"{stage}/{index}")
        if writable:
            # Private and capped: the host's disk never holds more of it than a successful run leaves.
            options = f"size={disk_bytes},mode=0700,nosuid,nodev"
            lines += [f"mkdir {point}", f"mount -t tmpfs -o {options} asgard-disk {point}", f"cp -a {host}/. {point}/"]
            mode = f"{Path(source).stat().st_mode & 0o7777:o}"  # not what the sandbox made of its copy's
            written_back.append(
                f"{{ find {host} -mindepth 1 -delete && cp -a {point}/. {host}/ && chmod {mode} {host}; }}"
            )
            continue
        make = "mkdir" if Path(source).is_dir() else "touch"
        lines += [f"{make} {point}", f"mount --bind {host} {point}"]
    points = " ".join(shlex.quote(point) for point, bind in zip(staged[1:], binds, strict=True) if bind.writable)
    lines += ["set +e", '"$@"', "status=$?", f": > {shlex.quote(str(report))}"]
    if points:
        lines.append(f"stat -f -c '%a %S' {points} >> {shlex.quote(str(report))}")
    for copy in written_back:
        lines.append(f'[ "$status" != 0 ] || {copy} || status=70')
    lines.append('exit "$status"')
    return "\n".join(lines), staged[1:], staged[0]


# The root set-up's whole environment: the system's tools, found where the system keeps them.
LAUNCHER_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def environment_arguments(env: dict[str, str]) -> bytes:
    """bubblewrap's ``--args`` payload that gives the command exactly ``env``: NUL-separated arguments,
    so a value may hold anything but a NUL (which no environment can hold)."""
    arguments = ["--clearenv"]
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise SandboxError(f"an environment variable's name or value cannot be passed: {name[:40]!r}")
        arguments += ["--setenv", name, value]
    return b"".join(argument.encode() + b"\0" for argument in arguments)


def stage_root() -> Path:
    """An empty folder every sandbox mounts its private stage on (in its own mount namespace)."""
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    root = base / "asgard-sandbox"
    root.mkdir(mode=0o755, exist_ok=True)
    return root


def run(
    command: list[str],
    *,
    binds: list[Bind],
    env: dict[str, str],
    cwd: str,
    limits: Limits,
    scratch: Path,
    output: Callable[[str], None] = log.info,
) -> Outcome:
    """Run ``command`` in a sandbox and wait for it (or for a limit); never raises for what it does.

    ``scratch`` is a folder of the caller's (the sandbox's ``/etc`` is written there). ``env`` is the
    whole environment the command sees. What the command writes in a writable bind reaches the host
    folder only if it exits 0.
    """
    problem = available()
    if problem:
        raise SandboxError(f"cannot sandbox: {problem}")
    files = [bind.source for bind in binds if bind.writable and not Path(bind.source).is_dir()]
    if files:
        raise SandboxError(f"a writable bind must be a folder (it becomes a capped filesystem): {files[0]}")
    name = uuid.uuid4().hex[:8]
    etc, report = scratch / f"etc-{name}", scratch / f"disk-{name}"
    etc.mkdir(parents=True)
    for file, text in ETC_FILES.items():
        (etc / file).write_text(text)
    disk_bytes = limits.disk_mb * 1024 * 1024
    group = ProcessTreeLimits(
        f"{os.getpid()}-{name}",
        memory_bytes=limits.memory_mb * 1024 * 1024,
        max_processes=limits.max_processes,
    )
    group.create()
    setup, staged, staged_etc = launch_script(group, binds, etc, disk_bytes=disk_bytes, report=report)
    drop = ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"]
    # bubblewrap reads the compiled filter from this descriptor, inherited through the set-up.
    seccomp_fd = os.memfd_create("asgard-seccomp")
    # ...and the command's environment from this one: only the command gets it, never the root set-up
    # (its shell, mount, cp, setpriv: an LD_PRELOAD there runs as root), and never on a command line.
    environment_fd = os.memfd_create("asgard-environment")
    started = time.monotonic()
    try:
        os.write(seccomp_fd, seccomp_program())
        os.lseek(seccomp_fd, 0, os.SEEK_SET)
        os.write(environment_fd, environment_arguments(env))
        os.lseek(environment_fd, 0, os.SEEK_SET)
        bubblewrap = bwrap_arguments(
            binds, staged, cwd=cwd, etc=staged_etc, seccomp_fd=seccomp_fd, tmp_bytes=disk_bytes
        )
        bubblewrap[1:1] = ["--args", str(environment_fd)]
        launcher = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", setup, "sandbox"]
        process = subprocess.Popen(
            [*launcher, *drop, *bubblewrap, *command],
            env=LAUNCHER_ENVIRONMENT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(seccomp_fd, environment_fd),
        )
        reader = OutputReader(process, limits.max_output_bytes, output, on_overflow=group.kill_all)
        reader.start()
        try:
            process.wait(timeout=limits.timeout_seconds)
            stopped_by = None
        except subprocess.TimeoutExpired:
            stopped_by = "timeout"
        group.kill_all()  # what is left: a timed-out tree, or anything that outlived its parent
        process.wait(timeout=30)
        reader.join(timeout=30)
        # The cause before the symptom: a tree that hit its memory or process cap and then ran out of time
        # was stopped by the cap.
        stopped_by = ("output" if reader.overflowed else None) or group.hit() or stopped_by
        full = _full_folders(binds, report)
        if full and not stopped_by and process.returncode != 0:
            stopped_by = "disk"
            reader.note(
                f"{', '.join(full)} full: the sandbox may write {limits.disk_mb} MB there "
                "(ASGARD_SCRIPT_MAX_DISK_MB); the write that failed got ENOSPC"
            )
        return Outcome(process.returncode, time.monotonic() - started, reader.total, reader.tail(), stopped_by)
    finally:
        os.close(seccomp_fd)
        os.close(environment_fd)
        group.remove()
        shutil.rmtree(etc, ignore_errors=True)
        report.unlink(missing_ok=True)


def _full_folders(binds: list[Bind], report: Path) -> list[str]:
    """The writable folders (inside names) the set-up found full when the command ended."""
    try:
        rows = [[int(number) for number in line.split()] for line in report.read_text().splitlines()]
    except (OSError, ValueError):  # the set-up was killed (a timeout) before it could tell: nothing to say
        return []
    writable = [bind.inside for bind in binds if bind.writable]
    free = {inside: row[0] * row[-1] for inside, row in zip(writable, rows, strict=False) if len(row) == 2}
    return [inside for inside, room in free.items() if room < FULL_BELOW_BYTES]


@contextlib.contextmanager
def owned_by_sandbox(folder: Path) -> Iterator[Path]:
    """``folder`` (created) writable by the sandbox's uid for the block; back to root's after it."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, 0, 0, follow_symlinks=False)
