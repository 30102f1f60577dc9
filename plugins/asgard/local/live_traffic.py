"""The main job's callers of serving endpoints: one prediction, waiting out a restart, and live traffic
for a canary to meet while a deploy runs."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx

from asgard.local.stages import MainJobError
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


def predict(endpoint: str, request: dict, *, within: float = 60.0) -> dict:
    """``POST /predict``'s answer, or the main job's error quoting the endpoint's. A router or serving
    container coming back from a crash (a refused or dropped connection, 502/503 from the router) is
    waited for, ``within`` seconds at most: the supervisor restarts the one and reconciles the other in
    seconds. (A prediction changes nothing: asking again is safe.)"""
    deadline = time.monotonic() + within
    with httpx.Client(timeout=60) as client:
        while True:
            try:
                answer = client.post(f"{endpoint}/predict", json=request)
                if answer.status_code not in (502, 503):
                    break
                trouble = f"answered {answer.status_code}: {answer.text[:500]}"
            except httpx.TransportError as error:
                trouble = f"could not be reached: {error}"
            if time.monotonic() + 1.0 > deadline:
                raise MainJobError(f"{endpoint}/predict {trouble} (for {within:g} s)")
            time.sleep(1.0)
    if answer.status_code != 200:
        raise MainJobError(f"{endpoint}/predict answered {answer.status_code} to {request}: {answer.text[:500]}")
    return answer.json()
