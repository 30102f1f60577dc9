"""Runs of the platform's model DAGs are changed only by their model's team (and admins), in Airflow's
own UI and REST API too.

The job DAGs are shared by every team, and Airflow authorizes per DAG, never per run: any user who may
edit ``train_model`` runs could clear, mark, delete or edit the XComs of another team's run (a clear runs
it again as the user who triggered it). This pure ASGI middleware sits in front of the whole API server
(a plugin's root middleware): a request that changes runs of a model DAG is let through only when the
caller may act on the model each run concerns (its conf's ``model_name``, or the models its Asset events
name); changes that reach several runs at once, or the DAG itself (pause, delete), are admins'. A
refusal is a 403 naming the run, the model and its team. Everything else passes untouched: reads,
triggers (a run's first task checks its model's team), the Execution API, and approval responses (the
approval task checks who decides). A request without a valid token is left to Airflow's own 401.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asgard.api.teams import MODEL_DAGS

if TYPE_CHECKING:
    from asgard.core.teams import Actor

log = logging.getLogger(__name__)

CHANGES = frozenset({"POST", "PATCH", "PUT", "DELETE"})
PREFIX = "/api/v2/dags"
# A body read to find the runs it changes (a bulk change, clearTaskInstances) may be at most this long.
MAX_READ_BODY = 1_000_000
ANY = "~"  # Airflow's wildcard for "every DAG" or "every run" in a path


@dataclass(frozen=True)
class Change:
    """A request that changes runs: of DAG ``dag_id``, run ``run_id`` (None: more than one, or the DAG)."""

    dag_id: str
    run_id: str | None
    what: str  # words for a refusal


class Refused(Exception):
    """The caller may not make this change: a 403 with this message."""


def needs_body(method: str, path: str) -> bool:
    """Whether the runs a change reaches are named in its body (bulk changes and clearTaskInstances)."""
    parts = _parts(path)
    if method not in CHANGES or not parts:
        return False
    rest = parts[1:]
    return rest == ["clearTaskInstances"] or (
        method == "PATCH"
        and (rest in ([], ["dagRuns"]) or (len(rest) == 3 and rest[0::2] == ["dagRuns", "taskInstances"]))
    )


def changes_of(method: str, path: str, body: Any = None) -> list[Change]:
    """The run changes a request to Airflow's REST API makes on the platform's model DAGs ([]: none)."""
    parts = _parts(path)
    if method not in CHANGES or parts is None:
        return []
    if not parts:  # PATCH /api/v2/dags: pause or unpause every DAG a pattern matches
        return [Change(ANY, None, "pause or unpause DAGs by pattern")] if method == "PATCH" else []
    dag_id, rest = parts[0], parts[1:]
    if dag_id != ANY and dag_id not in MODEL_DAGS:
        return []
    if rest[-1:] == ["list"] or rest in (["favorite"], ["unfavorite"]) or (method == "POST" and rest == ["dagRuns"]):
        return []  # a read sent as POST; a user's own star; a trigger (its first task checks the model's team)
    if not rest:
        if method == "PATCH" and body == {"is_paused": False}:
            return []  # unpausing lets every team's runs go on (a job started through /mlops unpauses its DAG)
        return [Change(dag_id, None, "pause or delete the DAG")]
    if rest == ["clearTaskInstances"]:
        run_id = body.get("dag_run_id") if isinstance(body, dict) else None
        return [Change(dag_id, run_id if isinstance(run_id, str) and run_id != ANY else None, "clear task instances")]
    if rest == ["dagRuns"]:  # PATCH: a bulk change, each entity naming its run
        return _bulk(dag_id, None, body, "change runs in bulk")
    if rest[0] != "dagRuns":  # clearDagRuns, clearPartitions, queued Asset events
        return [Change(dag_id, None, f"{method} {'/'.join(rest)}")]
    run_id = rest[1]
    if "hitlDetails" in rest:
        return []  # an approval's answer: deploy_model's approval task checks who may decide
    if len(rest) == 3 and rest[2] == "taskInstances" and method == "PATCH":
        return _bulk(dag_id, run_id, body, "change task instances in bulk")
    if ANY in (dag_id, run_id):
        return [Change(dag_id, None, "change task instances across runs")]
    return [Change(dag_id, run_id, f"{method} {'/'.join(rest[2:]) or 'the run'}")]


def _parts(path: str) -> list[str] | None:
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return None
    return [unquote(part) for part in path[len(PREFIX) :].strip("/").split("/") if part]


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
            else:
                dag, run = dag_id, (entity if run_id is None else run_id) if isinstance(entity, str) else None
            if dag == ANY or dag in MODEL_DAGS:
                changes.append(Change(dag, run if isinstance(run, str) and run != ANY and dag != ANY else None, what))
    return changes


def check(actor: Actor, changes: list[Change], token: str) -> None:
    """Refuse (:class:`Refused`) unless ``actor`` may make every change: an admin any; anyone else changes
    one run at a time, of a model of their teams (a model not registered yet: a run its own user, or a
    teammate of theirs, started)."""
    from asgard.core.settings import get_settings
    from asgard.core.teams import user_actor
    from asgard.hooks.airflow_api import AirflowApi, AirflowApiError
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import model_team, refusal

    if actor.admin:
        return
    settings = get_settings()
    api, hook = AirflowApi(settings.airflow_url, token), MlflowHook()
    for change in changes:
        if change.run_id is None:
            raise Refused(
                f"{actor.describe()} may not {change.what} ({change.dag_id}): that reaches every team's runs "
                "(admins only; change one run at a time)"
            )
        try:
            subject = api.run_subject(change.dag_id, change.run_id)
        except AirflowApiError as error:
            if error.status in (403, 404):
                continue  # Airflow's own answer stands: it does not exist, or the caller may not see it
            raise
        name = subject["conf"].get("model_name")
        models = [name] if isinstance(name, str) and name else subject["event_models"]
        if not models:
            raise Refused(
                f"{actor.describe()} may not {change.what} of run {change.run_id!r} of {change.dag_id}: "
                "it names no model, so it concerns every team's models (admins only)"
            )
        for model in models:
            team = model_team(hook, model, settings)
            if team is None:
                starter = user_actor(subject["user"], settings)
                if subject["user"] == actor.name or starter.teams & actor.teams:
                    continue
                team = ", ".join(sorted(starter.teams)) or "none"
            if not actor.may_act_for(team):
                message = str(refusal(actor, model, team))
                raise Refused(f"{message}; {change.what} of run {change.run_id!r} of {change.dag_id} refused")


class RunGuard:
    """The API server's root middleware (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGES or _parts(scope["path"]) is None:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        body, replay = None, receive
        if needs_body(method, path):
            raw = await _read(receive)
            if raw is None:
                await _answer(send, 413, f"a body over {MAX_READ_BODY} bytes changing runs is not read")
                return
            replay = _replaying(raw, receive)
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None  # Airflow answers the malformed body itself
        changes = changes_of(method, path, body)
        if changes:
            token = _token(scope)
            actor = await _actor(token) if token else None
            if actor is not None:
                try:
                    import anyio

                    await anyio.to_thread.run_sync(check, actor, changes, token)
                except Refused as refused:
                    log.warning("refused %s %s: %s", method, path, refused)
                    await _answer(send, 403, str(refused))
                    return
        await self.app(scope, replay, send)


async def _actor(token: str) -> Actor | None:
    """Who the token is for (None: not a token Airflow accepts, left to Airflow's own 401)."""
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
    """Airflow's JWT: the bearer header, else the UI's session cookie."""
    from http.cookies import CookieError, SimpleCookie

    headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except CookieError:  # a malformed cookie header holds no token
        return None
    morsel = cookie.get("_token")
    return morsel.value if morsel else None


async def _read(receive: Receive) -> bytes | None:
    """The whole body (None: longer than MAX_READ_BODY)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_READ_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


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
