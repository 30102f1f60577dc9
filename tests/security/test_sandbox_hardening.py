"""Hostile scripts against the real sandbox: no namespaces of their own, no mounts, no ptrace, no kernel
interfaces a training script has no use for (EPERM from a seccomp filter), and a capped /work whose
overflow is an ENOSPC inside and nothing on the host's disk, while an honest numpy/scikit-learn
script still runs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from asgard.core.sandbox import SYSTEM_PYTHON, Limits
from asgard.core.settings import get_settings
from asgard.training.scripts import runner as user_scripts
from asgard.training.scripts.runner import ScriptEnvironments, ScriptError

PYTHON = Path(get_settings().script_python)
INJECTED = {name: f"injected-{name}" for name in user_scripts.INJECTED}
CAP_MB = 64
LIMITS = Limits(timeout_seconds=120, memory_mb=1024, disk_mb=CAP_MB)

# Every probe reports through one JSON line: {"what": [return value, errno name]}.
PRELUDE = r"""
import ctypes, errno, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
found = {}

def call(what, function, *arguments):
    ctypes.set_errno(0)
    result = function(*arguments)
    found[what] = [result, errno.errorcode.get(ctypes.get_errno(), "") if result == -1 else ""]

def command(what, argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    found[what] = [done.returncode, done.stderr.strip()]
"""
REPORT = "\nprint(json.dumps(found))\n"


def run(source: str, tmp_path: Path, limits: Limits = LIMITS, python: Path = PYTHON, lines: list | None = None):
    script = user_scripts.decode_script("probe.py", base64.b64encode(source.encode()).decode())
    env = user_scripts.script_environment(python, INJECTED, {})
    output = lines.append if lines is not None else (lambda line: None)
    return user_scripts.run_script(script, python, tmp_path / "work", env, limits, output=output)


def probe(body: str, tmp_path: Path) -> dict[str, list]:
    lines: list[str] = []
    run(PRELUDE + body + REPORT, tmp_path, lines=lines)
    return json.loads(lines[-1])


def host_bytes(folder: Path) -> int:
    """What a folder holds on the host's disk (allocated blocks, as du counts them)."""
    return sum(path.lstat().st_blocks * 512 for path in folder.rglob("*"))


def test_every_process_runs_under_the_seccomp_filter(tmp_path):
    found = probe(
        "status = dict(line.split(':\\t', 1) for line in open('/proc/self/status') if ':\\t' in line)"
        "\nfound['self'] = [status['Seccomp'].strip(), status['NoNewPrivs'].strip()]"
        "\nchild = subprocess.run(['grep', '^Seccomp:', '/proc/self/status'], capture_output=True, text=True)"
        "\nfound['child'] = [child.stdout.split()[-1], '']",
        tmp_path,
    )
    assert found == {"self": ["2", "1"], "child": ["2", ""]}  # 2: a filter; no new privileges (no setuid way out)


def test_no_user_namespace_can_be_made(tmp_path):
    found = probe(
        "command('unshare -U true', ['unshare', '-U', 'true'])"
        "\ncommand('unshare -Ur id', ['unshare', '-Ur', 'id'])"
        "\ncommand('unshare -Urm mount', ['unshare', '-Urm', 'mount', '-t', 'tmpfs', 'none', '/tmp'])"
        # Python 3.11 has no os.unshare: the C library's, as any extension module would call it.
        "\ncall('unshare(CLONE_NEWUSER)', libc.unshare, 0x10000000)"
        "\ncall('unshare(CLONE_NEWNS|CLONE_NEWNET)', libc.unshare, 0x00020000 | 0x40000000)"
        "\nfd = os.open('/proc/self/ns/user', os.O_RDONLY)"
        "\ncall('setns', libc.setns, fd, 0)",
        tmp_path,
    )
    for what in ("unshare -U true", "unshare -Ur id", "unshare -Urm mount"):
        code, stderr = found[what]
        assert code != 0 and "Operation not permitted" in stderr, (what, found[what])
    for what in ("unshare(CLONE_NEWUSER)", "unshare(CLONE_NEWNS|CLONE_NEWNET)", "setns"):
        assert found[what] == [-1, "EPERM"], (what, found[what])


def test_mount_and_ptrace_are_refused(tmp_path):
    found = probe(
        "call('mount', libc.mount, b'none', b'/tmp', b'tmpfs', 0, None)"
        "\ncall('umount2', libc.umount2, b'/tmp', 0)"
        "\ncall('pivot_root', libc.syscall, 155, b'/tmp', b'/tmp')"
        "\ncall('fsopen', libc.syscall, 430, b'tmpfs', 0)"  # the new mount API (same number on every arch)
        "\nsleeper = subprocess.Popen(['sleep', '30'])"
        "\ncall('ptrace(PTRACE_ATTACH) of its own child', libc.ptrace, 16, sleeper.pid, None, None)"
        "\nsleeper.kill()"
        "\ncommand('mount -t tmpfs', ['mount', '-t', 'tmpfs', 'none', '/tmp'])",
        tmp_path,
    )
    for what in ("mount", "umount2", "pivot_root", "fsopen", "ptrace(PTRACE_ATTACH) of its own child"):
        assert found[what] == [-1, "EPERM"], (what, found[what])
    assert found["mount -t tmpfs"][0] != 0


KERNEL_INTERFACES = (
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
)


def test_kernel_interfaces_answer_eperm(tmp_path):
    # The numbers of this machine's architecture, as libseccomp (the filter's builder) knows them.
    resolve = (
        "import json, seccomp; print(json.dumps({n: seccomp.resolve_syscall(seccomp.Arch.NATIVE, n) for n in %r}))"
    )
    numbers = json.loads(subprocess.check_output([SYSTEM_PYTHON, "-c", resolve % (KERNEL_INTERFACES,)]))
    # Arguments that are harmless where a call is allowed (keyctl(KEYCTL_GET_KEYRING_ID, session) succeeds
    # for anyone, userfaultfd(0) too on most kernels).
    calls = "\n".join(f"call({name!r}, libc.syscall, {number}, 0, 0, 0, 0, 0)" for name, number in numbers.items())
    calls += f"\ncall('keyctl(KEYCTL_GET_KEYRING_ID)', libc.syscall, {numbers['keyctl']}, 0, -3, 0)"
    found = probe(calls, tmp_path)
    assert {what: result for what, result in found.items() if result != [-1, "EPERM"]} == {}
    assert len(found) == len(KERNEL_INTERFACES) + 1


def test_filling_work_is_enospc_inside_and_costs_the_host_nothing(tmp_path):
    fill = (
        r"""
import errno, os, sys
written = {}
for folder in ("/work", "/tmp"):
    written[folder] = 0
    try:
        with open(f"{folder}/fill", "wb") as sink:
            for _ in range(3 * CAP_MB):
                written[folder] += sink.write(b"x" * 1024 * 1024)
                sink.flush()
    except OSError as error:
        print(folder, errno.errorcode[error.errno], written[folder] // (1024 * 1024), flush=True)
    os.remove(f"{folder}/fill")
"""
    ).replace("CAP_MB", str(CAP_MB))
    lines: list[str] = []
    run(fill, tmp_path, lines=lines)
    assert [line.split()[:2] for line in lines] == [["/work", "ENOSPC"], ["/tmp", "ENOSPC"]]
    assert all(CAP_MB - 2 <= int(line.split()[2]) <= CAP_MB for line in lines)

    # A script that dies of it: the run fails saying so, and nothing it wrote reaches the host's disk.
    with pytest.raises(ScriptError, match=rf"/work full: the sandbox may write {CAP_MB} MB there") as failed:
        run(f"open('/work/fill', 'wb').write(b'x' * {3 * CAP_MB} * 1024 * 1024)", tmp_path)
    assert "No space left on device" in str(failed.value)
    assert host_bytes(tmp_path) < 1024 * 1024
    assert sorted(path.name for path in (tmp_path / "work").iterdir()) == ["probe.py"]


def test_what_a_successful_run_writes_in_work_reaches_the_host_within_the_cap(tmp_path):
    keep = "import os\nopen('/work/model.bin', 'wb').write(b'm' * 1024 * 1024)\nos.makedirs('/work/out')"
    run(keep + "\nos.symlink('/etc/passwd', '/work/out/link')", tmp_path)
    work = tmp_path / "work"
    assert (work / "model.bin").stat().st_size == 1024 * 1024
    assert os.readlink(work / "out" / "link") == "/etc/passwd"  # copied as a link, never followed
    assert host_bytes(tmp_path) <= CAP_MB * 1024 * 1024
    # The same write, then a failure: nothing of it lands.
    with pytest.raises(ScriptError, match="exited with code 1"):
        run("open('/work/partial.bin', 'wb').write(b'p' * 1024)\nraise SystemExit(1)", tmp_path)
    assert not (work / "partial.bin").exists()


def test_an_honest_numpy_and_scikit_learn_script_still_runs(tmp_path):
    python = ScriptEnvironments().ensure(["numpy", "scikit-learn"], progress=lambda _: None)
    honest = r"""
import subprocess, tempfile, threading
import numpy as np
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(7)
x = rng.normal(size=(2000, 8))
y = (x @ rng.normal(size=8) > 0).astype(int)
model = LogisticRegression().fit(x, y)
product = (rng.normal(size=(400, 400)) @ rng.normal(size=(400, 400))).shape  # BLAS threads
worker = threading.Thread(target=lambda: None)
worker.start(), worker.join()
np.save("/work/weights.npy", model.coef_)
with tempfile.NamedTemporaryFile(dir="/tmp") as scratch:
    np.save(scratch, x)
print(round(model.score(x, y), 2) > 0.9, product, subprocess.run(["true"]).returncode)
"""
    lines: list[str] = []
    outcome = run(honest, tmp_path, Limits(timeout_seconds=300, memory_mb=2048, disk_mb=CAP_MB), python, lines)
    assert outcome.exit_code == 0 and lines[-1] == "True (400, 400) 0"
    assert (tmp_path / "work" / "weights.npy").exists()
