"""The main job's stages as the user sees them: a heading, progress, the time each took and the memory
its tasks took, and a file per run so runs can be compared."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asgard.core.storage import write_text
from asgard.local.task_memory import MemoryPeaks, TaskMemory


class MainJobError(RuntimeError):
    """A stage of the main job failed; the message names the stage and the cause."""


class StageClock:
    """Runs named stages, timing each and (given a :class:`TaskMemory`) taking the peaks of the memory its tasks
    and the machine used; a failure becomes a :class:`MainJobError` naming the stage."""

    def __init__(self, memory: TaskMemory | None = None) -> None:
        self.timings: list[tuple[str, float]] = []
        self.memory: list[MemoryPeaks | None] = []
        self._sampler = memory

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"\n==> {name}", flush=True)
        if self._sampler is not None:
            self._sampler.start()
            self._sampler.take()  # what came before the stage is not the stage's
        started = time.perf_counter()
        try:
            yield
        except Exception as error:
            # Our own errors say what went wrong; anything else (a KeyError's message is only the key) is named.
            ours = isinstance(error, MainJobError) or type(error).__module__.startswith("asgard.")
            cause = str(error) if ours else f"{type(error).__name__}: {error}"
            raise MainJobError(f"stage '{name}' failed: {cause}") from error
        finally:
            self.timings.append((name, time.perf_counter() - started))
            self.memory.append(self._sampler.take() if self._sampler is not None else None)
        print(f"    done in {self.timings[-1][1]:.1f}s{_memory_note(self.memory[-1])}", flush=True)

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.timings)

    def print_timings(self, setup_seconds: float | None) -> None:
        rows = [(name, seconds, peaks) for (name, seconds), peaks in zip(self.timings, self.memory, strict=True)]
        if setup_seconds is not None:
            rows.insert(0, ("set-up (./asgard setup)", setup_seconds, None))
        width = max([45, *(len(name) for name, _, _ in rows)])
        if any(peaks is not None for _, _, peaks in rows):  # the columns' heads, over the rows' figures
            print(f"    {'':<{width}} {'':>8} {'largest task':>14} {'machine used':>14}")
        for name, seconds, peaks in rows:
            columns = f" {peaks.largest_task_mb:10.0f} MiB {peaks.machine_used_mb:10.0f} MiB" if peaks else ""
            print(f"    {name:<{width}} {seconds:7.1f}s{columns}")
        print(f"    {'total':<{width}} {self.total:7.1f}s")

    def write(self, home: Path, **about: Any) -> Path:
        """The run's stage timings and memory peaks as JSON (``<home>/main-job.json``, and one line per run in
        ``main-job-history.jsonl``)."""
        stages = []
        for (name, seconds), peaks in zip(self.timings, self.memory, strict=True):
            stage: dict[str, Any] = {"name": name, "seconds": round(seconds, 1)}
            if peaks is not None:
                stage |= {
                    "peak_task_rss_mb": round(peaks.largest_task_mb),
                    "peak_tasks_rss_mb": round(peaks.all_tasks_mb),
                    "peak_machine_used_mb": round(peaks.machine_used_mb),
                }
            stages.append(stage)
        record = {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **about,
            "stages": stages,
            "pipeline_seconds": round(self.total, 1),
        }
        path = write_text(home / "main-job.json", json.dumps(record, indent=2))
        with (home / "main-job-history.jsonl").open("a") as history:
            history.write(json.dumps(record) + "\n")
        return path

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()


def _memory_note(peaks: MemoryPeaks | None) -> str:
    if peaks is None:
        return ""
    return f" (largest task {peaks.largest_task_mb:.0f} MiB, tasks together {peaks.all_tasks_mb:.0f} MiB)"


def trino_check_line(result: dict[str, Any]) -> str:
    """check_platform's trino check, as the main job says it."""
    if "skipped" in result:
        return f"trino: skipped ({result['skipped']})"
    catalogs = ", ".join(result["catalogs"])
    return f"trino: {result['version']} at {result['url']}, catalogs {catalogs} (query {result['query_id']})"


# What asgard.features.trino_store logs for each query a read ran through Trino.
TRINO_QUERY_LOGGED = re.compile(r"Trino query (\w+) \(\w+\) read the ([\w ]+?): ")


def trino_reads_line(task: str, task_log: str) -> str:
    """The queries ``task`` ran through Trino (as its log names them, from Trino's system.runtime.queries)."""
    found = TRINO_QUERY_LOGGED.findall(task_log)
    if not found:
        return f"{task}: no read through Trino"
    purposes = sorted({purpose for _, purpose in found})
    return f"{task}: {', '.join(purposes)} read through Trino (queries {', '.join(query for query, _ in found)})"
