"""Runs of the platform's model DAGs are changed only by their model's team (and admins), in Airflow's
own UI and REST API too.

The job DAGs are shared by every team, and Airflow authorizes per DAG, never per run: any user who may
edit ``train_model`` runs could clear, mark, delete or edit the XComs of another team's run (a clear runs
it again as the user who triggered it). This pure ASGI middleware sits in front of the whole API server
(a plugin's root middleware): a request that changes runs of a model DAG is let through only when the
caller may act on the model each run concerns (its conf's ``model_name``, or the models its Asset events
name); changes that reach several runs at once (bulk bodies naming other DAGs' runs, include_past and
include_future, clears without a run, backfills of a model DAG) or the DAG itself (pause, delete), and
every change of Assets (an event starts runs that act for a model's team), are admins'. A refusal is a
403 naming the run, the model and its team. Reads are checked too (:mod:`asgard.api.run_reads`: one run's
the same way, many runs' answered with other teams' runs withheld). Everything else passes untouched:
triggers (a run's first task checks its model's team), the Execution API, and approval responses (the
approval task checks who decides). A change the guard sees with no token Airflow accepts is a 401 here: it
fails closed. The token and the path are read as Airflow reads them (the first bearer header, else the
session cookie as Starlette parses it; the path without a root path), so that both name the same caller
and run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asgard.api.run_subjects import stored_subject
from asgard.api.teams import MODEL_DAGS, platform_mlflow

if TYPE_CHECKING:
    from asgard.core.teams import Actor

log = logging.getLogger(__name__)

CHANGES = frozenset({"POST", "PATCH", "PUT", "DELETE"})
API = "/api/v2"
# A body read to find the runs it changes (a bulk change, clearTaskInstances) may be at most this long.
MAX_READ_BODY = 1_000_000
ANY = "~"  # Airflow's wildcard for "every DAG" or "every run" in a path
POOLS = f"{API}/pools"


@dataclass(frozen=True)
class Change:
    """A request that changes runs: of DAG ``dag_id``, run ``run_id`` (None: more than one, or the DAG)."""

    dag_id: str
    run_id: str | None
    what: str  # words for a refusal


class Refused(Exception):
    """The caller may not make this change: a 403 with this message."""


def changes_platform_pool(method: str, path: str) -> bool:
    """A write that may change the memory pool every team's large tasks share (its size, its team, that it
    exists): its own path, or a bulk change of pools. Airflow lets its ``op`` role change any pool, and a
    pool shrunk below a task's share, or deleted, holds that task for ever (asgard.core.memory_pool)."""
    from asgard.core.memory_pool import MEMORY_POOL

    path = path.rstrip("/")
    return method in CHANGES and (path == f"{POOLS}/{MEMORY_POOL}" or (path == POOLS and method != "POST"))


def needs_body(method: str, path: str) -> bool:
    """Whether what a change reaches is said in its body: bulk changes (each entity names its DAG and run),
    clearTaskInstances (the run), a task instance's or group's state (include_past/include_future reach other
    runs), a DAG's PATCH (an unpause passes) and a backfill (its DAG)."""
    if method not in CHANGES:
        return False
    area, parts = _route(path)
    if area == "backfills":
        return method == "POST" and not parts
    if area != "dags" or not parts:
        return False
    rest = parts[1:]
    return rest == ["clearTaskInstances"] or (method == "PATCH" and (not rest or rest[0] == "dagRuns"))


def changes_of(method: str, path: str, body: Any = None) -> list[Change]:
    """The run changes a request to Airflow's REST API makes on the platform's model DAGs ([]: none).

    ``path`` is the route's path as Airflow matches it (decoded once by the server, without a root path).
    """
    if method not in CHANGES:
        return []
    area, parts = _route(path)
    if area == "assets":  # events start runs (a forged promotion, a retraining request); queues and state
        return [Change(ANY, None, f"{method} Asset events, queues or state")]
    if area == "backfills":
        return _backfill(method, parts, body)
    if area != "dags":
        return []
    if not parts:  # PATCH /api/v2/dags: pause or unpause every DAG a pattern matches
        return [Change(ANY, None, "pause or unpause DAGs by pattern")] if method == "PATCH" else []
    dag_id, rest = parts[0], parts[1:]
    # A bulk body names each entity's DAG and run, and Airflow acts on those, whatever DAG the path names.
    if method == "PATCH" and rest == ["dagRuns"]:
        return _bulk(dag_id, None, body, "change runs in bulk")
    if method == "PATCH" and len(rest) == 3 and rest[0] == "dagRuns" and rest[2] == "taskInstances":
        return _bulk(dag_id, rest[1], body, "change task instances in bulk")
    if (dag_id != ANY and dag_id not in MODEL_DAGS) or _changes_no_run(method, rest, body):
        return []
    if not rest:
        return [Change(dag_id, None, "pause or delete the DAG")]
    if rest == ["clearTaskInstances"]:
        run_id = body.get("dag_run_id") if isinstance(body, dict) else None
        whole = not isinstance(run_id, str) or run_id == ANY or _reaches_other_runs(body)
        return [Change(dag_id, None if whole else run_id, "clear task instances")]
    if rest[0] != "dagRuns" or len(rest) == 1:  # clearDagRuns, clearPartitions, queued Asset events
        return [Change(dag_id, None, f"{method} {'/'.join(rest)}")]
    run_id = rest[1]
    if ANY in (dag_id, run_id) or _reaches_other_runs(body):
        return [Change(dag_id, None, "change task instances across runs (include_past, include_future, ~)")]
    return [Change(dag_id, run_id, f"{method} {'/'.join(rest[2:]) or 'the run'}")]


def _changes_no_run(method: str, rest: list[str], body: Any) -> bool:
    """Requests to a model DAG that change no run, by their exact route: reads sent as POST, the user's own
    star, a trigger (its first task checks the model's team), an approval's answer (deploy_model's approval
    task checks who may decide) and an unpause (every team's runs go on; a job /mlops starts unpauses)."""
    if method == "POST" and rest in (["dagRuns"], ["dagRuns", "list"], ["favorite"], ["unfavorite"]):
        return True
    if method == "POST" and len(rest) == 4 and rest[0] == "dagRuns" and rest[2:] == ["taskInstances", "list"]:
        return True
    answer = method == "PATCH" and len(rest) == 6 and rest[0] == "dagRuns" and rest[2] == "taskInstances"
    return (answer and rest[5] == "hitlDetails") or (method == "PATCH" and not rest and body == {"is_paused": False})


def _reaches_other_runs(body: Any) -> bool:
    """A task instance's state or clear that also reaches earlier or later runs."""
    return isinstance(body, dict) and any(body.get(flag) for flag in ("include_past", "include_future"))


def _backfill(method: str, parts: list[str], body: Any) -> list[Change]:
    """A backfill of a model DAG re-runs finished runs with its own conf (every team's): admins only; so
    are cancelling, pausing and unpausing a backfill (its runs may be any team's)."""
    if method == "POST" and parts == ["dry_run"]:
        return []  # which runs a backfill would make: a read
    if method == "POST" and not parts:
        dag = body.get("dag_id") if isinstance(body, dict) else None
        if isinstance(dag, str) and dag != ANY and dag not in MODEL_DAGS:
            return []
        return [Change(ANY, None, "backfill a model DAG (it runs finished runs again, with its own conf)")]
    return [Change(ANY, None, f"{method} a backfill")]


def _route(path: str) -> tuple[str | None, list[str]]:
    """The area of Airflow's REST API a path is in (``dags``, ``backfills``, ``assets``, ...) and the segments
    after it. The server has percent-decoded the path once, as Airflow's routes read it: decoding again
    would name another run than Airflow acts on."""
    if path != API and not path.startswith(API + "/"):
        return None, []
    segments = [part for part in path[len(API) :].strip("/").split("/") if part]
    return (segments[0] if segments else None), segments[1:]


def _bulk(dag_id: str, run_id: str | None, body: Any, what: str) -> list[Change]:
    """The runs a bulk body's entities change: each entity's own ``dag_id``/``dag_run_id``, else the path's
    (a delete may list bare ids: run ids for runs, task ids within the path's run)."""
    actions = body.get("actions") if isinstance(body, dict) else None
    if not isinstance(actions, list):
        return [Change(dag_id, None, what)]
    changes = []
    for action in actions:
        entities = action.get("entities") if isinstance(action, dict) else None
        for entity in entities if isinstance(entities, list) else [None]:
            if isinstance(entity, dict):
                dag, run = entity.get("dag_id") or dag_id, entity.get("dag_run_id") or run_id
                run = None if _reaches_other_runs(entity) else run
            else:
                dag, run = dag_id, (entity if run_id is None else run_id) if isinstance(entity, str) else None
            if dag == ANY or dag in MODEL_DAGS:
                changes.append(Change(dag, run if isinstance(run, str) and run != ANY and dag != ANY else None, what))
    return changes


def check(actor: Actor, changes: list[Change], subjects: dict[tuple[str, str], dict] | None = None) -> None:
    """Refuse (:class:`Refused`) unless ``actor`` may make every change: an admin any; anyone else changes
    one run at a time, of a model of their teams (a model not registered yet: a run its own user, or a
    teammate of theirs, started). Each run is read from Airflow's database (:func:`stored_subject`; ``subjects``:
    those already read, by DAG and run id)."""
    from asgard.core.settings import get_settings
    from asgard.core.teams import user_actor
    from asgard.registry.ownership import refusal

    if actor.admin:
        return
    settings = get_settings()
    for change in changes:
        if change.run_id is None:
            raise Refused(
                f"{actor.describe()} may not {change.what} ({change.dag_id}): that reaches every team's runs "
                "(admins only; change one run at a time)"
            )
        key = (change.dag_id, change.run_id)
        found = subjects.get(key) if subjects is not None else stored_subject(*key)
        if found is None:  # closed, not open: a run the guard cannot find is not let through
            raise Refused(
                f"{actor.describe()} may not {change.what} of run {change.run_id!r} of {change.dag_id}: no such run"
            )
        reading = change.what.startswith("read")
        name = found["conf"].get("model_name")
        models = [name] if isinstance(name, str) and name else found["read_models" if reading else "event_models"]
        if not models:
            raise Refused(
                f"{actor.describe()} may not {change.what} of run {change.run_id!r} of {change.dag_id}: "
                "it names no model, so it concerns every team's models (admins only)"
            )
        for model in models:
            team = team_of(model, fresh=not reading)
            if team is None:
                starter = user_actor(found["user"], settings)
                if found["user"] == actor.name or starter.teams & actor.teams:
                    continue
                team = ", ".join(sorted(starter.teams)) or "none"
            if not actor.may_act_for(team):
                message = str(refusal(actor, model, team))
                raise Refused(f"{message}; {change.what} of run {change.run_id!r} of {change.dag_id} refused")


# For reads, a name not registered is known as such for a few seconds: a run page's reads ask again and again.
UNREGISTERED_SECONDS = 10.0
_unregistered: dict[str, float] = {}


def team_of(model: str, *, fresh: bool = True) -> str | None:
    """The team ``model`` belongs to (None: not registered); ``fresh=False`` for a read: as known a moment ago
    (:func:`asgard.registry.ownership.model_team`)."""
    import time

    from asgard.core.settings import get_settings
    from asgard.registry.ownership import model_team

    now, seen = time.monotonic(), _unregistered.get(model)
    if not fresh and seen is not None and now - seen < UNREGISTERED_SECONDS:
        return None
    team = model_team(platform_mlflow(), model, get_settings(), fresh=fresh)
    if team is None:
        if len(_unregistered) >= 10_000:  # names from requests: bounded
            _unregistered.clear()
        _unregistered[model] = now
    else:
        _unregistered.pop(model, None)
    return team


class RunGuard:
    """The API server's root middleware (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from asgard.api.run_reads import guarded_read, redacts

        if scope["type"] == "lifespan":  # the server is built and starting: its long-lived heap, settled
            from asgard.core.preload import settle_server_heap

            settle_server_heap()
        path = _route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] == "http" and changes_platform_pool(scope["method"], path):
            token = _token(scope)
            actor = await _actor(token) if token else None
            if actor is None or not actor.admin:
                from asgard.core.memory_pool import MEMORY_POOL

                status, who = (401, "nobody authenticated") if actor is None else (403, actor.name)
                await _answer(send, status, f"{who} may not change the platform's pool {MEMORY_POOL!r}: admins only "
                              "(its size is ASGARD_TASK_MEMORY_GB, applied at each start)")  # fmt: skip
                return
        if scope["type"] != "http" or scope["method"] not in CHANGES or _route(path)[0] is None:
            if scope["type"] == "http" and redacts(scope["method"], path):
                await guarded_read(self.app, scope, receive, send, path)
                return
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        body, replay = None, receive
        if needs_body(method, path):
            read = await read_json(receive)
            if read is None:
                await _answer(send, 413, f"a body over {MAX_READ_BODY} bytes changing runs is not read")
                return
            body, replay = read
        changes = changes_of(method, path, body)
        if not changes and redacts(method, path):  # a read sent as POST (a list with filters)
            await guarded_read(self.app, scope, replay, send, path)
            return
        if changes:
            token = _token(scope)
            actor = await _actor(token) if token else None
            if actor is None:  # closed: Airflow would refuse it too, and the guard knows no one to check
                await _answer(send, 401, "not authenticated: send Airflow's JWT as 'Authorization: Bearer <token>'")
                return
            try:
                import anyio

                await anyio.to_thread.run_sync(check, actor, changes)
            except Refused as refused:
                log.warning("refused %s %s: %s", method, path, refused)
                await _answer(send, 403, str(refused))
                return
        await self.app(scope, replay, send)


def _route_path(scope: Scope) -> str:
    """The path Airflow's routes match: without the root path a prefixed ``[api] base_url`` puts before it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _actor(token: str) -> Actor | None:
    """Who the token is for (None: not a token Airflow accepts)."""
    from airflow.api_fastapi.app import get_auth_manager
    from jwt import InvalidTokenError

    from asgard.core.settings import get_settings
    from asgard.core.teams import user_actor

    try:
        user = await get_auth_manager().get_user_from_token(token)
    except InvalidTokenError:
        return None
    return user_actor(user.get_name(), get_settings())


def _token(scope: Scope) -> str | None:
    """Airflow's JWT, found as Airflow finds it: the first Authorization header when its scheme is bearer,
    else the UI's session cookie as Starlette parses every Cookie header (a reading of its own could be
    fooled into another token, or none, while Airflow acts as the caller)."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from fastapi.security.utils import get_authorization_scheme_param
    from starlette.requests import Request

    request = Request(scope)
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


async def read_json(receive: Receive) -> tuple[Any, Receive] | None:
    """The body, decoded (None for a malformed one: Airflow answers it itself, and the guard reads no run
    in it), and a receive that gives the app the same body; None: longer than MAX_READ_BODY."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_READ_BODY:
            return None
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        body = None
    return body, _replaying(raw, receive)


def _replaying(raw: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read here, then what the client sends next (a disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return again


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
