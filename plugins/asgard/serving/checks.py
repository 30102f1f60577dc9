"""The proof that a deployed model version serves, shared by every deploy target.

A target only says how to reach the version (a URL for the Docker target, the API server's
service proxy for Kubernetes); what "serves" means is defined once here: healthy, the intended
version in ``/metadata``, and one prediction per row for holdout rows on ``/predict``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

# (method, path, JSON body or None) -> (HTTP status, response text); raises OSError-like errors when
# the version cannot be reached at all.
Call = Callable[[str, str, "dict[str, Any] | None"], "tuple[int, str]"]


class DeployError(RuntimeError):
    """The new version did not prove it serves; the message says how it failed.

    ``serving`` is the version the target still serves after rolling back (None: none);
    ``rollback_problem`` says what went wrong while rolling back (None: the old state is back);
    ``figures``: a canary's or shadow's verdict, when live traffic decided.
    """

    def __init__(
        self,
        message: str,
        *,
        serving: str | None = None,
        rollback_problem: str | None = None,
        figures: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.serving = serving
        self.rollback_problem = rollback_problem
        self.figures = figures


def http_call(base_url: str) -> Call:
    """Reach a version over plain HTTP (the Docker target's containers and the router)."""
    import httpx

    def call(method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str]:
        try:
            answer = httpx.request(method, f"{base_url}{path}", json=body, timeout=30)
        except httpx.HTTPError as error:
            raise ConnectionError(str(error)) from error
        return answer.status_code, answer.text

    return call


def holdout_payload(frame: Any, rows: int = 20) -> dict[str, Any] | None:
    """A ``/predict`` body from holdout rows (missing values as null)."""
    if frame is None or len(frame) == 0:
        return None
    sample = frame.head(rows).astype(object).where(frame.head(rows).notna(), None)
    return {"inputs": {column: sample[column].tolist() for column in sample.columns}}


def verify(
    call: Call,
    version: str,
    payload: dict[str, Any] | None,
    *,
    where: str,
    timeout: float,
    exited: Callable[[], str | None] = lambda: None,
) -> None:
    """Healthy, the intended version, and a valid answer to ``payload`` — or a DeployError saying which.

    ``where`` names the endpoint in the messages; ``exited`` reports a start-up crash early instead
    of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        reason = exited()
        if reason:
            raise DeployError(reason)
        with contextlib.suppress(ConnectionError):
            if call("GET", "/health", None)[0] == 200:
                break
        if time.monotonic() > deadline:
            raise DeployError(f"{where}/health not ok after {timeout:.0f}s")
        time.sleep(0.2)
    status, text = call("GET", "/metadata", None)
    served = json.loads(text).get("model_version") if status == 200 else None
    if served != version:
        raise DeployError(f"{where}/metadata reports version {served!r}, not the intended {version!r}")
    if payload is None:
        return
    status, text = call("POST", "/predict", payload)
    rows = len(next(iter(payload["inputs"].values())))
    if status != 200:
        raise DeployError(f"{where}/predict answered {status}: {text[:300]}")
    returned = len(json.loads(text).get("predictions", []))
    if returned != rows:
        raise DeployError(f"{where}/predict returned {returned} predictions for {rows} rows")


# Requests a trial's candidate answers before live traffic measures it, within this many seconds in all.
WARM_UP_REQUESTS, WARM_UP_SECONDS = 20, 60.0


def warm_up(
    call: Call, payload: dict[str, Any] | None, *, requests: int = WARM_UP_REQUESTS, seconds: float = WARM_UP_SECONDS
) -> None:
    """Let a trial's candidate answer a few requests (one row, then the whole holdout sample, in turn)
    before its share of live traffic is measured: a fresh process's first answers pay one-time costs
    (code paths loaded, buffers allocated, the runtime's first runs), which are not its latency, and a
    window of a hundred requests takes its p99 from its slowest one or two. Answers are not checked
    here: ``verify`` did, and the trial's own limits judge what follows. A candidate that does not answer
    them, or not within ``seconds`` in all, fails the deploy (a DeployError) before it takes any traffic."""
    if payload is None:
        return
    one_row = {"inputs": {name: values[:1] for name, values in payload["inputs"].items()}}
    deadline = time.monotonic() + seconds
    for index in range(requests):
        try:
            call("POST", "/predict", one_row if index % 2 == 0 else payload)
        except ConnectionError as error:
            raise DeployError(f"the candidate did not answer its warm-up requests: {error}") from error
        if time.monotonic() > deadline:
            raise DeployError(f"the candidate took over {seconds:.0f}s to answer {index + 1} warm-up requests")
