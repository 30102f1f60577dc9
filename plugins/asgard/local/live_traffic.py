"""Callers of a stable endpoint while the main job deploys: live traffic for a canary to meet."""

from __future__ import annotations

import threading
from collections import Counter

import httpx

from sample_data.models import SEED_PREDICTION


class LiveTraffic:
    """Callers of the stable endpoint while a deploy runs: the seed's request, back to back, on a thread.

    ``summary()`` counts their answers by status and the version that gave them.
    """

    def __init__(self, url: str) -> None:
        self.url, self.answers = url, Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._call, daemon=True)

    def __enter__(self) -> LiveTraffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _call(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(self.url, json=SEED_PREDICTION)
                    self.answers[(answer.status_code, answer.headers.get("x-asgard-model-version"))] += 1
                except httpx.HTTPError as error:
                    self.answers[(type(error).__name__, None)] += 1
                self._stop.wait(0.01)

    def summary(self) -> str:
        return ", ".join(
            f"{count} x {status} from v{version}" for (status, version), count in sorted(self.answers.items(), key=str)
        )
