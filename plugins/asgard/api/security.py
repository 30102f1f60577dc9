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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from asgard.hooks.airflow_api import AirflowApi

bearer = HTTPBearer(
    auto_error=False,
    description="The JWT of Airflow's REST API: `POST /auth/token` with the Airflow user and password.",
)
# Threads the endpoints' work may take at once (the API server's own pool is 40 by default).
WORKERS = 8
# A request body larger than this is refused before it is read (the largest is a script upload).
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


async def limit_body_size(request: Request, call_next: Callable) -> Any:
    """Refuse a body over MAX_BODY_BYTES (413) before reading it."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return JSONResponse({"detail": f"the request body is larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
    return await call_next(request)
