"""The embedded profile's stable model endpoint: ``/models/<name>/<path>`` → that model's live container.

The Docker deploy target (``asgard.deploy.docker_target``) starts a new version's container beside the
old one, verifies it, then switches the model's route in ``routes.json`` (one atomic rename) and
only then stops the old container. Every request is forwarded on its own, so requests after the
switch reach the new version and requests in flight finish on the old one: clients of the stable
endpoint never see the deploy. A connection refused by an upstream that just went away is retried
once against a freshly read table.

Run as ``python -m asgard.local.router ROUTES_FILE HOST PORT`` (a service of ``./asgard start``).
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgard.deploy.routes import RouteTable

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization", "host"}


def create_app(routes_file: Path) -> Starlette:
    table = RouteTable(routes_file)
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=2.0))
    # Requests forwarded to each upstream and not yet answered: a deploy stops the old container only
    # once its count is 0 (``GET /inflight``), so no request in flight is cut at a switch.
    inflight: Counter[str] = Counter()

    async def forward(request: Request) -> Response:
        name, path = request.path_params["name"], request.path_params["path"]
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for attempt in (1, 2):
            route = table.routes().get(name)
            if route is None:
                return JSONResponse({"detail": f"no model named {name!r} is deployed here"}, status_code=404)
            upstream = route["upstream"]
            inflight[upstream] += 1
            try:
                answer = await client.request(
                    request.method, f"{upstream}/{path}", content=body, headers=headers, params=request.query_params
                )
            except httpx.ConnectError:
                if attempt == 2:
                    return JSONResponse({"detail": f"model {name!r} is not answering"}, status_code=502)
                continue  # the route may have just switched away from a stopped container
            finally:
                inflight[upstream] -= 1
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            return Response(answer.content, status_code=answer.status_code, headers=kept)
        raise AssertionError("unreachable")

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(table.routes())})

    async def routes(_: Request) -> Response:
        return JSONResponse(table.routes())

    async def in_flight(_: Request) -> Response:
        return JSONResponse({upstream: count for upstream, count in inflight.items() if count})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/routes", routes),
            Route("/inflight", in_flight),
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
