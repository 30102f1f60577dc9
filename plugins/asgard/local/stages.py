"""The main job's stages as the user sees them: a heading, progress, the time each took, and a
timings file per run so runs can be compared."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asgard.core.storage import write_text


class MainJobError(RuntimeError):
    """A stage of the main job failed; the message names the stage and the cause."""


class StageClock:
    """Runs named stages, timing each; a failure becomes a :class:`MainJobError` naming the stage."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"\n==> {name}", flush=True)
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
        print(f"    done in {self.timings[-1][1]:.1f}s", flush=True)

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.timings)

    def print_timings(self, setup_seconds: float | None) -> None:
        if setup_seconds is not None:
            print(f"    {'set-up (./asgard setup)':<45} {setup_seconds:7.1f}s")
        for name, seconds in self.timings:
            print(f"    {name:<45} {seconds:7.1f}s")
        print(f"    {'total':<45} {self.total:7.1f}s")

    def write(self, home: Path, **about: Any) -> Path:
        """The run's stage timings as JSON (``<home>/main-job.json``, and one line per run in
        ``main-job-history.jsonl``)."""
        record = {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **about,
            "stages": [{"name": name, "seconds": round(seconds, 1)} for name, seconds in self.timings],
            "pipeline_seconds": round(self.total, 1),
        }
        path = write_text(home / "main-job.json", json.dumps(record, indent=2))
        with (home / "main-job-history.jsonl").open("a") as history:
            history.write(json.dumps(record) + "\n")
        return path
