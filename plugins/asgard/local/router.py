"""The embedded profile's stable model endpoint: ``/models/<name>/<path>`` → that model's live container.

The Docker deploy target (``asgard.deploy.docker_target``) starts a new version's container beside the
old one, verifies it, then switches the model's route in its profile's ``routes.json`` (one atomic rename) and
only then stops the old container. Every request is forwarded on its own, so requests after the
switch reach the new version and requests in flight finish on the old one: clients of the stable
endpoint never see the deploy. A connection refused by an upstream that just went away is retried
once against a freshly read table (on the stable version).

During a trial the route also names a candidate (``asgard.deploy.strategies``): a canary answers its
share of the prediction requests; a shadow gets a copy of its share, in the background, and its
answers are only compared with the stable ones, by the kind of model the candidate names (its
``model_type``, from the deploy): a classifier's classes agree or not, a regressor's predictions are
some distance apart (mean and p95, and both over the stable predictions' spread), counted in a
bounded histogram however long the trial. ``GET /traffic/<name>`` reports the trial's counts, which
the deploy decides on (``?candidate=<upstream>``: also once that trial has ended); every answer names
the version that gave it (``x-asgard-model-version``).

Each profile of an installation has its own table, and the router forwards only to the routes of the
profile and installation it was started for (``asgard.deploy.routes``): never to another's containers.

Run as ``python -m asgard.local.router ROUTES_FILE HOST PORT [PROFILE INSTALL]`` (a service of
``./asgard start``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgard.deploy.routes import RouteTable
from asgard.deploy.strategies import CANARY, SHADOW
from asgard.deploy.trial_metrics import comparison
from asgard_serving.agreement import Agreement

PREDICTION_PATHS = frozenset({"predict", "invocations"})
# Which version answered: callers (and load tests) can tell a canary's answers from the stable ones.
VERSION_HEADER = "x-asgard-model-version"
# Latencies kept per side for its p99: enough for any trial window, bounded for a router that runs for weeks.
LATENCIES_KEPT = 50_000
# Shadow requests outstanding at once; beyond this a mirror is dropped (and counted), not queued.
MIRRORS_IN_FLIGHT = 32
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization", "host"}


# What the router holds of a request or an answer: the serving app's own body limit (requests beyond
# it are refused there anyway), and answers of the largest batch it allows with room to spare.
MAX_BODY_BYTES = int(os.environ.get("ASGARD_SERVING_MAX_BODY_BYTES", "20000000"))
MAX_ANSWER_BYTES = 4 * MAX_BODY_BYTES


class AnswerTooLarge(Exception):
    """An upstream answered more than the router holds."""


async def bounded_body(request: Request) -> bytes | None:
    """The request's body, or None once it is over MAX_BODY_BYTES (read no further)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return None
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_BODY_BYTES:
            return None
    return bytes(received)


def create_app(routes_file: Path, owner: dict[str, str] | None = None) -> Starlette:
    """The router over ``routes_file``; with an ``owner`` (``asgard.deploy.routes.owner_of``), its routes only."""
    table = RouteTable(routes_file, owner)
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=2.0))
    # Requests forwarded to each upstream and not yet answered: a deploy stops the old container only
    # once its count is 0 (``GET /inflight``), so no request in flight is cut at a switch.
    inflight: Counter[str] = Counter()
    trials = Trials()
    mirrors = asyncio.Semaphore(MIRRORS_IN_FLIGHT)
    background: set[asyncio.Task] = set()

    async def send(upstream: str, request: Request, path: str, body: bytes, headers: dict) -> httpx.Response:
        """The upstream's answer, read up to MAX_ANSWER_BYTES (the model's own code answers: a container
        that streams without end gets a 502, not the router's memory)."""
        inflight[upstream] += 1
        try:
            outgoing = client.build_request(
                request.method, f"{upstream}/{path}", content=body, headers=headers, params=request.query_params
            )
            answer = await client.send(outgoing, stream=True)
            try:
                received = bytearray()
                async for chunk in answer.aiter_raw():
                    received += chunk
                    if len(received) > MAX_ANSWER_BYTES:
                        raise AnswerTooLarge(f"the model's answer is over {MAX_ANSWER_BYTES} bytes")
            finally:
                await answer.aclose()
            return httpx.Response(answer.status_code, headers=answer.headers, content=bytes(received))
        finally:
            inflight[upstream] -= 1

    async def mirror(window: TrafficWindow, upstream: str, request: Request, path: str, body: bytes, headers: dict):
        """The shadow's copy of a request: timed and compared, never answered, never awaited by the caller."""
        async with mirrors:
            started = time.perf_counter()
            try:
                answer = await send(upstream, request, path, body, headers)
            except httpx.HTTPError:
                window.tried.record(None, time.perf_counter() - started)
                return None
            window.tried.record(answer.status_code, time.perf_counter() - started)
            return answer

    async def compare(window: TrafficWindow, shadow: asyncio.Task, stable: httpx.Response) -> None:
        answer = await shadow
        if answer is not None and answer.status_code == 200 and stable.status_code == 200:
            window.agreement.compare(stable.content, answer.content)

    def in_background(coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        background.add(task)
        task.add_done_callback(background.discard)
        return task

    async def forward(request: Request) -> Response:
        name, path = request.path_params["name"], request.path_params["path"]
        if name not in table.routes():  # before a byte of the body is read
            return JSONResponse({"detail": f"no model named {name!r} is deployed here"}, status_code=404)
        body = await bounded_body(request)
        if body is None:
            detail = f"a request body over {MAX_BODY_BYTES} bytes (ASGARD_SERVING_MAX_BODY_BYTES)"
            return JSONResponse({"detail": detail}, status_code=413)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        predicting = request.method == "POST" and path in PREDICTION_PATHS
        for attempt in (1, 2):
            route = table.routes().get(name)
            if route is None:
                return JSONResponse({"detail": f"no model named {name!r} is deployed here"}, status_code=404)
            candidate = route.get("candidate")
            window = trials.window(name, candidate) if predicting else None
            target, side, shadow = route, None, None
            if window is not None:
                side = window.stable
                # A retry (after a canary went away) goes to the stable version and is not offered again.
                chosen = attempt == 1 and window.choose()
                if candidate["strategy"] == CANARY and chosen:
                    target, side = candidate, window.tried
                elif candidate["strategy"] == SHADOW and chosen:
                    if mirrors.locked():
                        window.mirrors_dropped += 1  # the stable path never waits for the shadow
                    else:
                        shadow = in_background(mirror(window, candidate["upstream"], request, path, body, headers))
            started = time.perf_counter()
            try:
                answer = await send(target["upstream"], request, path, body, headers)
            except AnswerTooLarge as error:
                if side is not None:
                    side.record(None, time.perf_counter() - started)
                return JSONResponse({"detail": f"model {name!r}: {error}"}, status_code=502)
            except httpx.ConnectError:
                if window is not None and side is window.tried:
                    side.record(None, time.perf_counter() - started)  # a canary that went away: its error
                if attempt == 2:
                    return JSONResponse({"detail": f"model {name!r} is not answering"}, status_code=502)
                continue  # the route may have just switched away from a stopped container (or the canary)
            if side is not None:
                side.record(answer.status_code, time.perf_counter() - started)
            if shadow is not None:
                in_background(compare(window, shadow, answer))
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            kept[VERSION_HEADER] = str(target.get("version"))
            return Response(answer.content, status_code=answer.status_code, headers=kept)
        raise AssertionError("unreachable")

    async def health(request: Request) -> Response:
        profile = (owner or {}).get("profile")
        asked = request.query_params.get("profile")
        if asked and profile and asked != profile:
            detail = f"this router serves the {profile} profile's routes, not the {asked} profile's"
            return JSONResponse({"status": "other profile", "profile": profile, "detail": detail}, status_code=409)
        return JSONResponse({"status": "ok", "profile": profile, "models": sorted(table.routes())})

    async def routes(_: Request) -> Response:
        return JSONResponse(table.routes())

    async def in_flight(_: Request) -> Response:
        return JSONResponse({upstream: count for upstream, count in inflight.items() if count})

    async def traffic(request: Request) -> Response:
        name = request.path_params["name"]
        window = trials.window(name, (table.routes().get(name) or {}).get("candidate"))
        ended = request.query_params.get("candidate")
        if ended and (window is None or window.candidate != ended):
            window = trials.ended(name, ended)
        return JSONResponse(window.summary() if window is not None else None)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/routes", routes),
            Route("/inflight", in_flight),
            Route("/traffic/{name}", traffic),
            Route("/models/{name}/{path:path}", forward, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )


class Side:
    """One side of a trial (the stable version or the candidate): requests, server errors, latencies."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)

    def record(self, status: int | None, seconds: float) -> None:
        """``status`` None: the version could not be reached. A 4xx is the caller's mistake, not an error."""
        self.requests += 1
        if status is None or status >= 500:
            self.errors += 1
        else:
            self.latencies.append(seconds)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.latencies)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
        }


class TrafficWindow:
    """What the router saw of one trial: both sides and, for a shadow, how the answers compared.

    Kept by the router in memory, per model, for the candidate upstream in the route; a new candidate
    starts a new window. ``model_type`` (``classification``, ``regression``) decides which comparison
    is reported; None (a route written before the deploy named it): told by the answers' shape.
    """

    def __init__(self, candidate: str, strategy: str, percent: int, model_type: str | None = None) -> None:
        self.candidate, self.strategy, self.percent = candidate, strategy, percent
        self.model_type = model_type
        self.stable, self.tried = Side(), Side()
        self.offered = 0
        self.agreement = Agreement()
        self.mirrors_dropped = 0

    def choose(self) -> bool:
        """Whether this request goes to (or is mirrored to) the candidate: exactly ``percent`` of every
        100 in turn, evenly spread, so a small window still sees its share."""
        self.offered += 1
        return (self.offered * self.percent) // 100 != ((self.offered - 1) * self.percent) // 100

    def summary(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "percent": self.percent,
            "candidate": self.candidate,
            "stable": self.stable.summary(),
            "candidate_side": self.tried.summary(),
            **comparison(self.agreement.counters(), self.model_type),
            "mirrors_dropped": self.mirrors_dropped,
        }


class Trials:
    """The traffic window of each model's trial in progress, for the candidate its route names now.

    The last ended window of each model is kept too: requests in flight when the route switched away
    still count in it, so a rolled-back trial's final figures hold every request the candidate served.
    """

    def __init__(self) -> None:
        self._windows: dict[str, TrafficWindow] = {}
        self._ended: dict[str, TrafficWindow] = {}

    def window(self, name: str, candidate: dict | None) -> TrafficWindow | None:
        if not candidate:
            if name in self._windows:
                self._ended[name] = self._windows.pop(name)
            return None
        window = self._windows.get(name)
        if window is None or window.candidate != candidate["upstream"]:
            window = self._windows[name] = TrafficWindow(
                candidate["upstream"], candidate["strategy"], int(candidate["percent"]), candidate.get("model_type")
            )
        return window

    def ended(self, name: str, candidate: str) -> TrafficWindow | None:
        """The ended window of ``name``'s trial of the ``candidate`` upstream, if it was the last one."""
        window = self._ended.get(name)
        return window if window is not None and window.candidate == candidate else None


def main(argv: list[str]) -> None:
    import os

    import uvicorn

    routes_file, host, port = Path(argv[0]), argv[1], int(argv[2])
    owner = {"profile": argv[3], "install": argv[4]} if len(argv) >= 5 else None
    from asgard.local.online_door import DOOR_FOLDER_VARIABLE, DOOR_UPSTREAM_VARIABLE

    # The online store's door, when the profile's store is Redis (its login leaves the environment here).
    upstream = os.environ.pop(DOOR_UPSTREAM_VARIABLE, None)
    if upstream:
        from asgard.local.online_door import OnlineStoreDoor, Policy, reader_script

        OnlineStoreDoor(Path(os.environ[DOOR_FOLDER_VARIABLE]), upstream, Policy(reader_script())).serve_forever()
    uvicorn.run(create_app(routes_file, owner), host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
