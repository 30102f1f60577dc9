"""The memory the platform's tasks take while the main job runs, stage by stage.

A task runs as a process Airflow's Task SDK titles ``airflow worker -- <task instance id>`` (under a
LocalExecutor worker or a Celery worker alike); what a task holds is that process and everything it
started (a sandboxed script, a subprocess). An installation's tasks are those descending from its
services' leaders (its Airflow's, its Celery workers'): another installation's on the same machine, a
test stack's say, are not counted. (Not by their environment: the title is written over it.) A thread
samples the installation's tasks twice a second: the largest task's resident set, all tasks' together,
and the machine's used memory (what is not available). Resident sets count pages a task shares with the
worker it was forked from, so they are an upper bound, and a peak shorter than the interval can be
missed: the figures show how memory grows with the work, which is what they are for
(``./asgard run --customers N``), not an exact high-water mark.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from asgard.local.processes import ProcessSupervisor

# The Task SDK's title of a running task's process (task_runner.startup): a task instance's UUID.
TASK_TITLE = re.compile(r"^airflow worker -- [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MIB = 1024 * 1024


@dataclass(frozen=True)
class MemoryPeaks:
    """Peaks over a span of time, in MiB."""

    largest_task_mb: float = 0.0
    all_tasks_mb: float = 0.0
    machine_used_mb: float = 0.0

    def merged(self, other: MemoryPeaks) -> MemoryPeaks:
        return MemoryPeaks(
            max(self.largest_task_mb, other.largest_task_mb),
            max(self.all_tasks_mb, other.all_tasks_mb),
            max(self.machine_used_mb, other.machine_used_mb),
        )


def sample(leaders: set[int]) -> MemoryPeaks:
    """The tasks descending from ``leaders`` (process ids) and the machine's used memory, now."""
    tasks = []
    for process in psutil.process_iter(["cmdline"]):
        if TASK_TITLE.match(" ".join(process.info["cmdline"] or ())) and _descends(process, leaders):
            tasks.append(_tree_rss(process))
    memory = psutil.virtual_memory()
    return MemoryPeaks(max(tasks, default=0) / MIB, sum(tasks) / MIB, (memory.total - memory.available) / MIB)


def _descends(process: psutil.Process, leaders: set[int]) -> bool:
    try:
        return any(parent.pid in leaders for parent in process.parents())
    except psutil.Error:  # it ended since
        return False


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.Error:  # it ended between the listing and now
        return 0
    for member in family:
        with contextlib.suppress(psutil.Error):  # it ended since
            total += member.memory_info().rss
    return total


class TaskMemory:
    """Samples :func:`sample` on a thread of its own; :meth:`take` hands over the peaks since the last take."""

    def __init__(self, leaders: Callable[[], set[int]], interval: float = 0.5) -> None:
        self.leaders, self.interval = leaders, interval  # asked at each sample: a restarted service has a new one
        self._peaks = MemoryPeaks()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, services: ProcessSupervisor) -> TaskMemory:
        """The tasks of the installation whose services ``services`` runs."""
        names = [service.name for service in services.services()]
        return cls(lambda: services.leader_pids(names))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="task-memory", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def take(self) -> MemoryPeaks:
        self.record()  # the span's last moment too: a stage shorter than the interval gets a sample
        with self._lock:
            peaks, self._peaks = self._peaks, MemoryPeaks()
        return peaks

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.record()

    def record(self) -> None:
        """Sample now (the thread does twice a second; a stage's end does too)."""
        now = sample(self.leaders())
        with self._lock:
            self._peaks = self._peaks.merged(now)
