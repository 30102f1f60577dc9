"""A shadow's copies, sent by the serving version itself: where there is no router or mesh to mirror.

On Kubernetes the deploy of a ``shadow`` writes the model's mirror ConfigMap
(``{"url": <the shadow's Service>, "percent": N}``), which every serving pod has mounted (optional, so
it is usually absent). The file is looked at no more than once a second; while it names a shadow,
``percent`` of the prediction requests are copied to it after they were answered, in the background:
at most ``IN_FLIGHT`` copies at once, beyond that a copy is dropped (and counted), never queued in
front of a caller. The shadow's answers are timed and compared with the ones the caller got; the
counts are ``/metrics`` series (``asgard_shadow_*``), which the deploy reads to decide.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from asgard_serving.agreement import Agreement
from asgard_serving.metrics import RequestMetrics

log = logging.getLogger("asgard_serving.mirror")

IN_FLIGHT = 32
# How long a changed (or removed) mirror file may go unnoticed.
LOOK_EVERY_SECONDS = 1.0


class Mirror:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.url: str | None = None
        self.percent = 0
        self._looked, self._stamp = 0.0, None
        self._offered = 0
        self._in_flight = 0
        self._client: Any = None
        self._tasks: set[asyncio.Task] = set()
        self.shadow = RequestMetrics("asgard_shadow", "Requests copied to the shadow version")
        self.agreement = Agreement()
        self.dropped = 0

    def offer(self, path: str, body: bytes, stable_status: int, stable_answer: bytes) -> None:
        """A request the caller has been answered: copied to the shadow when it is this one's turn."""
        now = time.monotonic()
        if now - self._looked >= LOOK_EVERY_SECONDS:
            self._looked = now
            self._reload()
        if self.url is None:
            return
        self._offered += 1
        if (self._offered * self.percent) // 100 == ((self._offered - 1) * self.percent) // 100:
            return
        if self._in_flight >= IN_FLIGHT:
            self.dropped += 1
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._copy(self.url, path, body, stable_status, stable_answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reload(self) -> None:
        try:
            stamp = os.stat(self.config_path).st_mtime_ns if self.config_path else None
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        if stamp is None:
            if self.url:
                log.info("mirroring to %s stopped", self.url)
            self.url = None
            return
        try:
            with open(self.config_path) as config:
                settings = json.load(config)
            url, percent = str(settings["url"]).rstrip("/"), int(settings["percent"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.error("the mirror configuration %s is unusable (%s): not mirroring", self.config_path, error)
            self.url = None
            return
        if not url.startswith(("http://", "https://")) or not 0 < percent <= 100:
            log.error("the mirror configuration %s names %r at %r%%: not mirroring", self.config_path, url, percent)
            self.url = None
            return
        self.url, self.percent = url, percent
        log.info("mirroring %d%% of prediction requests to %s", percent, url)

    async def _copy(self, url: str, path: str, body: bytes, stable_status: int, stable_answer: bytes) -> None:
        try:
            if self._client is None:
                import httpx

                self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))
            started = time.perf_counter()
            try:
                answer = await self._client.post(
                    f"{url}{path}", content=body, headers={"content-type": "application/json"}
                )
            except Exception:  # unreachable, reset, timed out: the shadow's failure, never the caller's
                self.shadow.observe(599, time.perf_counter() - started)
                return
            self.shadow.observe(answer.status_code, time.perf_counter() - started)
            if answer.status_code == 200 and stable_status == 200:
                self.agreement.compare(stable_answer, answer.content)
        finally:
            self._in_flight -= 1

    def lines(self) -> list[str]:
        # The comparison's own counters (agreement for classes; the difference histogram and the stable
        # version's spread for numbers), as the router reports them: Kubernetes trials read these.
        lines = self.shadow.lines() + self.agreement.lines()
        return [*lines, "# TYPE asgard_shadow_dropped_total counter", f"asgard_shadow_dropped_total {self.dropped}"]

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._client is not None:
            await self._client.aclose()
