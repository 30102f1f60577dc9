"""A cgroup per sandbox: its process tree's memory and process count, and a way to kill all of it.

cgroup v1 (``memory`` and ``pids`` controllers) and v2 (unified) are both supported; the caps hold
for the whole tree, not per process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "asgard-sandbox"


class ProcessTreeLimits:
    """A cgroup for one sandbox: its tree's memory and process count, and a way to kill all of it."""

    def __init__(self, name: str, *, memory_bytes: int, max_processes: int) -> None:
        self.name = name
        self.memory_bytes = memory_bytes
        self.max_processes = max_processes
        self.v2 = _cgroup_v2()
        if self.v2:
            self.groups = {"unified": CGROUP_ROOT / CGROUP_PARENT / name}
        else:
            self.groups = {c: CGROUP_ROOT / c / CGROUP_PARENT / name for c in ("memory", "pids")}

    @staticmethod
    def supported() -> bool:
        if _cgroup_v2():
            return os.access(CGROUP_ROOT, os.W_OK) and {"memory", "pids"} <= _v2_controllers()
        return all(os.access(CGROUP_ROOT / controller, os.W_OK) for controller in ("memory", "pids"))

    def create(self) -> None:
        if self.v2:
            parent = CGROUP_ROOT / CGROUP_PARENT
            parent.mkdir(exist_ok=True)
            for control in (CGROUP_ROOT / "cgroup.subtree_control", parent / "cgroup.subtree_control"):
                control.write_text("+memory +pids")
            group = self.groups["unified"]
            group.mkdir()
            (group / "memory.max").write_text(str(self.memory_bytes))
            if (group / "memory.swap.max").exists():  # swap would let the tree outgrow its memory
                (group / "memory.swap.max").write_text("0")
            (group / "pids.max").write_text(str(self.max_processes))
            return
        for group in self.groups.values():
            group.mkdir(parents=True)
        (self.groups["memory"] / "memory.limit_in_bytes").write_text(str(self.memory_bytes))
        (self.groups["pids"] / "pids.max").write_text(str(self.max_processes))

    @property
    def procs_files(self) -> list[Path]:
        return [group / "cgroup.procs" for group in self.groups.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(FileNotFoundError):
                found |= {int(pid) for pid in procs.read_text().split()}
        return found

    def kill_all(self, wait: float = 10.0) -> None:
        """SIGKILL every process in the group until none is left (a fork in flight joins it first)."""
        deadline = time.monotonic() + wait
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def hit(self) -> str | None:
        """Which limit the tree ran into, if any: ``memory`` (an OOM kill) or ``processes``."""
        if self.v2:
            events = _key_values(self.groups["unified"] / "memory.events")
            if events.get("oom_kill", 0) > 0:
                return "memory"
            if _key_values(self.groups["unified"] / "pids.events").get("max", 0) > 0:
                return "processes"
            return None
        if _key_values(self.groups["memory"] / "memory.oom_control").get("oom_kill", 0) > 0:
            return "memory"
        with contextlib.suppress(FileNotFoundError, ValueError):
            if int((self.groups["memory"] / "memory.failcnt").read_text()) > 0 and not self.pids():
                return "memory"
        if _key_values(self.groups["pids"] / "pids.events").get("max", 0) > 0:
            return "processes"
        return None

    def remove(self) -> None:
        self.kill_all()
        for group in self.groups.values():
            with contextlib.suppress(FileNotFoundError, OSError):
                group.rmdir()


def _cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _v2_controllers() -> set[str]:
    return set((CGROUP_ROOT / "cgroup.controllers").read_text().split())


def _key_values(path: Path) -> dict[str, int]:
    try:
        pairs = (line.split() for line in path.read_text().splitlines())
        return {parts[0]: int(parts[1]) for parts in pairs if len(parts) == 2 and parts[1].isdigit()}
    except FileNotFoundError:
        return {}
