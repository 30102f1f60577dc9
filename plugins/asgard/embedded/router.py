"""The embedded profile's stable model endpoint: ``/models/<name>/<path>`` → that model's live container.

The Docker deploy target (``asgard.docker_target``) starts a new version's container beside the
old one, verifies it, then switches the model's route in ``routes.json`` (one atomic rename) and
only then stops the old container. Every request is forwarded on its own, so requests after the
switch reach the new version and requests in flight finish on the old one: clients of the stable
endpoint never see the deploy. A connection refused by an upstream that just went away is retried
once against a freshly read table.

Run as ``python -m asgard.embedded.router ROUTES_FILE HOST PORT`` (a service of ``./asgard start``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization", "host"}


class RouteTable:
    """``{model_name: {"upstream": url, "version": ..., "digest": ...}}`` kept in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._routes: dict[str, dict[str, Any]] = {}

    def routes(self) -> dict[str, dict[str, Any]]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            self._routes, self._mtime = json.loads(self.path.read_text() or "{}"), mtime
        return self._routes

    def set(self, model_name: str, route: dict[str, Any] | None) -> None:
        """Point ``model_name`` at a new upstream (or remove it) with one atomic rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._mtime = None
        routes = dict(self.routes())
        if route is None:
            routes.pop(model_name, None)
        else:
            routes[model_name] = route
        partial = self.path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(routes, indent=2))
        os.replace(partial, self.path)


def create_app(routes_file: Path) -> Starlette:
    table = RouteTable(routes_file)
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0))

    async def forward(request: Request) -> Response:
        name, path = request.path_params["name"], request.path_params["path"]
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for attempt in (1, 2):
            route = table.routes().get(name)
            if route is None:
                return JSONResponse({"detail": f"no model named {name!r} is deployed here"}, status_code=404)
            try:
                answer = await client.request(
                    request.method,
                    f"{route['upstream']}/{path}",
                    content=body,
                    headers=headers,
                    params=request.query_params,
                )
            except httpx.ConnectError:
                if attempt == 2:
                    return JSONResponse({"detail": f"model {name!r} is not answering"}, status_code=502)
                continue  # the route may have just switched away from a stopped container
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            return Response(answer.content, status_code=answer.status_code, headers=kept)
        raise AssertionError("unreachable")

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(table.routes())})

    async def routes(_: Request) -> Response:
        return JSONResponse(table.routes())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/routes", routes),
            Route("/models/{name}/{path:path}", forward, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str]) -> None:
    import uvicorn

    routes_file, host, port = Path(argv[0]), argv[1], int(argv[2])
    uvicorn.run(create_app(routes_file), host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
