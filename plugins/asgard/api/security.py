"""Who may call the plugin's endpoints, and how they call back into Airflow without stalling it.

Authentication is Airflow's own JWT (a bearer token, or the UI's session cookie), checked by
Airflow's auth manager. Authorization is the auth manager's too, with the permission each action
needs on the DAG it concerns: starting a job is creating a run of its DAG (``POST`` on its runs);
reading a job, a model or monitoring history is reading that DAG's runs (``GET``); registering a
model version is the permission to train one (``POST`` on ``train_model`` runs); storing monitoring
records, the permission to run monitoring.

Requests that start work become DAG runs through Airflow's REST API on this same server, as the
caller (so Airflow's own checks apply too): the URL comes from the settings, never from the
request, and every call has a timeout. The endpoints' work runs in a thread pool of its own with a
few threads: a burst of calls waits its turn there instead of taking every thread the API server
has, so Airflow's own API keeps answering (the endpoints call it back).
"""

from __future__ import annotations

import functools
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asgard.hooks.airflow_api import AirflowApi

bearer = HTTPBearer(
    auto_error=False,
    description="The JWT of Airflow's REST API: `POST /auth/token` with the Airflow user and password.",
)
# Threads the endpoints' work may take at once (the API server's own pool is 40 by default).
WORKERS = 8
# A request body larger than this is refused (BodyLimit) before the app reads it: the largest is a script upload.
MAX_BODY_BYTES = 2_000_000
VERBS = {"GET": "read", "POST": "start", "PUT": "change", "DELETE": "delete"}

_limiter: anyio.CapacityLimiter | None = None


def limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:  # created inside the running event loop
        _limiter = anyio.CapacityLimiter(WORKERS)
    return _limiter


def offloaded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """A route whose blocking work runs on the endpoints' own threads (see the module's docstring)."""

    @functools.wraps(handler)
    async def route(**kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(handler, **kwargs), limiter=limiter())

    route.__signature__ = inspect.signature(handler)  # FastAPI reads the handler's parameters from it
    return route


@dataclass(frozen=True)
class Caller:
    token: str
    user: Any

    @property
    def name(self) -> str:
        return self.user.get_name()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    """The caller: Airflow's JWT (bearer header, else the Airflow UI's session cookie), once Airflow accepts it.

    Plugin apps are mounted without Airflow's own auth dependencies, so every route depends on this.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from jwt import ExpiredSignatureError, InvalidTokenError

    if credentials is not None and credentials.scheme.lower() == "bearer":
        token = credentials.credentials
    else:
        token = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        raise _unauthorized("not authenticated: send Airflow's JWT as 'Authorization: Bearer <token>'")
    try:
        user = await get_auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise _unauthorized("the token has expired: get a new one from POST /auth/token") from None
    except InvalidTokenError:
        raise _unauthorized("the token is not one this Airflow issued") from None
    return Caller(token, user)


CallerIdentity = Annotated[Caller, Depends(caller)]


def authorize(who: Caller, method: str, dag_id: str) -> None:
    """Refuse (403) unless Airflow's auth manager lets ``who`` do ``method`` on ``dag_id``'s runs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    if not get_auth_manager().is_authorized_dag(
        method=method, access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=who.user
    ):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"{who.name} may not {VERBS.get(method, method)} {dag_id} runs"
        )


def requires(method: str, dag_id: str) -> Any:
    """A route dependency: the caller may do ``method`` on ``dag_id``'s runs."""

    async def check(who: CallerIdentity) -> None:
        authorize(who, method, dag_id)

    return Depends(check)


def airflow_as_caller(who: CallerIdentity) -> AirflowApi:
    """Airflow's REST API on this server (its URL from the settings), acting as the caller."""
    from asgard.core.settings import get_settings

    return AirflowApi(get_settings().airflow_url, who.token)


CallerAirflow = Annotated[AirflowApi, Depends(airflow_as_caller)]


class BodyLimit:
    """Pure ASGI middleware: a request body over ``max_bytes`` is a 413 before the app sees the request.

    It runs before routing, so before the routes' auth and body parsing: an unauthenticated oversized
    body is a 413 too. A declared ``Content-Length`` over the limit is refused without reading a byte;
    a body without one (chunked) is counted as it arrives and refused as soon as the count passes the
    limit, so no more than the limit is ever held. The 413 closes the connection: the server stops
    reading the rest instead of parsing it for nobody. A body within the limit is handed to the app
    whole. (Not Starlette's ``BaseHTTPMiddleware``: it sees the body only as the app reads it, after
    routing, and runs the app in a task of its own.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if any(not value.isdigit() or int(value) > self.max_bytes for value in declared):
            await self._refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            chunk = message.get("body", b"")
            if len(body) + len(chunk) > self.max_bytes:
                await self._refuse(send)
                return
            body += chunk
            if not message.get("more_body", False):
                break
        whole: Message | None = {"type": "http.request", "body": bytes(body), "more_body": False}
        del body

        async def replay() -> Message:
            nonlocal whole
            if whole is None:  # after the body: what the server says next (a disconnect)
                return await receive()
            message, whole = whole, None
            return message

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        answer = json.dumps({"detail": f"the request body is larger than {self.max_bytes} bytes"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


class ServerTiming:
    """Pure ASGI middleware: every answer carries ``Server-Timing: app;dur=<ms>``, the milliseconds from the
    request's head reaching the app to its answer starting, reading its body included (the W3C header:
    browsers' developer tools show it). Outermost, so a refusal by ``BodyLimit`` is timed too: what a
    refused body cost the server is read from its answer, not from the client's clock."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                spent = (time.perf_counter() - started) * 1000
                message["headers"] = [*message.get("headers", ()), (b"server-timing", b"app;dur=%.3f" % spent)]
            await send(message)

        await self.app(scope, receive, timed)
