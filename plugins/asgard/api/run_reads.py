"""What a user reads of another team's runs through Airflow's own REST API (the read side of
:mod:`asgard.api.run_guard`).

Airflow authorizes reads per DAG: anyone who may read ``train_model`` runs reads every team's, with
their conf (the model, its hyperparameters, data paths, the uploaded script's name), their logs and
XComs. For a caller who is not an admin:

- a read of one run of a model DAG (``/api/v2/dags/<dag>/dagRuns/<run>`` and everything under it: task
  instances, logs, XComs, approvals; ``~`` for the DAG: that run of any model DAG) is the run's model's
  team's: anyone else gets the 403 a change gets, naming the model and its team;
- an answer listing many runs' items is given with what another team's would tell withheld: a run's
  ``conf`` and ``note``, a task instance's rendered fields and note, an audit entry's ``extra`` (the
  conf a trigger sent), an approval's body (the evidence), form and answer, an Asset event's ``extra`` (a
  retraining request carries a training conf). Ids, states and times stay: the lists still work and
  say nothing a run id does not. Only the items of the list the answer is (``dag_runs``,
  ``task_instances``, ...) are looked at, never what a conf or an extra holds, and whose each run is
  comes from Airflow's database, never from the answer;
- a filter or an order that would tell a withheld field by the answer's size or order (``conf_contains``,
  ``order_by=conf``, ``body_search``, ...) is a 403.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asgard.api.teams import MODEL_DAGS

if TYPE_CHECKING:
    from asgard.api.run_guard import Change
    from asgard.core.teams import Actor

log = logging.getLogger(__name__)

MAX_ANSWER = 20_000_000
WITHHELD = "withheld: another team's run"
UNKNOWN = object()  # a model whose team could not be found out: what names it is withheld
# The list an answer is -> what its items would tell of another team's run (a withheld field is emptied).
LISTS = {
    "dag_runs": ("conf", "note"),
    "task_instances": ("rendered_fields", "rendered_map_index", "note"),
    "event_logs": ("extra",),
    # The subject stays ("Deploy <model> v<n>?"): model names are no secret (their Assets are listed).
    "hitl_details": ("body", "params", "params_input", "chosen_options", "responded_by_user"),
    "asset_events": ("extra",),
}
# Filters and orders that read a withheld field: with them, whether a run is listed (or where) tells it.
TELLING_FILTERS = frozenset({"conf_contains", "body_search", "rendered_map_index_pattern"})
TELLING_ORDERS = frozenset({"conf", "extra", "note", "rendered_map_index"})
# The areas of /api/v2 whose answers list such items.
LISTING_AREAS = frozenset({"dags", "eventLogs", "assets", "hitlDetails"})


async def guarded_read(app: ASGIApp, scope: Scope, receive: Receive, send: Send, path: str) -> None:
    """A read by someone not an admin: of one model-DAG run, checked as a change is; of many, answered
    with other teams' runs redacted (:mod:`asgard.api.run_reads`)."""
    import anyio

    from asgard.api.run_guard import MAX_READ_BODY, Refused, _actor, _answer, _token, check, read_json

    token = _token(scope)
    actor = await _actor(token) if token else None
    if actor is None or actor.admin:  # Airflow refuses a caller it does not know itself
        await app(scope, receive, send)
        return
    one = read_of_one_run(scope["method"], path)
    if one is not None:
        try:
            await anyio.to_thread.run_sync(lambda: check(actor, runs_named(one)))
        except Refused as refused:
            await _answer(send, 403, str(refused))
            return
        except Exception:  # closed: a read whose run could not be told apart is not answered
            log.warning("could not check a read of %s", path, exc_info=True)
            await _answer(send, 503, "could not tell whose run this is; try again")
            return
        # A promotion's deploy_model run is its deployed model's team's to read, but the other teams'
        # promotions it carries (handed on to runs of their own) are theirs: the lists in the answer (its
        # upstream Asset events) are withheld as in a list of many runs. A log lists nothing and is passed on.
        rest = one.what.removeprefix("read ").split("/")  # taskInstances/<task>/logs/<try>: a log
        log_read = rest[0] == "taskInstances" and rest[2:3] == ["logs"]
        await app(scope, receive, send if log_read else redacting(send, RunReader(actor)))
        return
    body = None
    if scope["method"] == "POST":
        read = await read_json(receive)
        if read is None:
            await _answer(send, 413, f"a body over {MAX_READ_BODY} bytes listing runs is not read")
            return
        body, receive = read
    telling = telling_filter(scope.get("query_string", b"").decode("latin-1"), body)
    if telling:
        detail = f"{actor.describe()} may not filter or sort runs by {telling}: it tells other teams' runs"
        await _answer(send, 403, detail + " (admins only)")
        return
    await app(scope, receive, redacting(send, RunReader(actor)))


def read_of_one_run(method: str, path: str) -> Change | None:
    """The one model-DAG run a read concerns (``~`` for its DAG: any model DAG's; None: not such a read).
    ``path`` as Airflow matches it."""
    from asgard.api.run_guard import ANY, Change, _route

    area, parts = _route(path)
    if area != "dags" or len(parts) < 3 or parts[1] != "dagRuns":
        return None
    dag_id, run_id, rest = parts[0], parts[2], parts[3:]
    listing = run_id == "list" and not rest and method == "POST"  # POST .../dagRuns/list: many runs
    if (dag_id != ANY and dag_id not in MODEL_DAGS) or run_id == ANY or listing:
        return None
    is_read = method == "GET" or (method == "POST" and rest[-1:] == ["list"])
    return Change(dag_id, run_id, f"read {'/'.join(rest) or 'the run'}") if is_read else None


def runs_named(read: Change) -> list[Change]:
    """The runs a read of one run reaches: its own, or with ``~`` for the DAG, that run id's in any model DAG."""
    import dataclasses

    from asgard.api.run_guard import ANY
    from asgard.api.run_subjects import stored_subject

    if read.dag_id != ANY:
        return [read]
    return [
        dataclasses.replace(read, dag_id=dag_id)
        for dag_id in MODEL_DAGS
        if stored_subject(dag_id, read.run_id) is not None
    ]


def redacts(method: str, path: str) -> bool:
    """Whether this request is a read whose answer may list other teams' runs' items."""
    from asgard.api.run_guard import _route

    area, _ = _route(path)
    return area in LISTING_AREAS and (method == "GET" or (method == "POST" and path.endswith("/list")))


def telling_filter(query: str, body: Any) -> str | None:
    """The filter or order (in the query string or a list's body) that would tell withheld fields, if any."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if isinstance(body, dict):
        pairs += [
            (key, value) for key, values in body.items() for value in (values if isinstance(values, list) else [values])
        ]
    for key, value in pairs:
        if key in TELLING_FILTERS and value not in (None, ""):
            return key
        if key == "order_by" and isinstance(value, str):
            for field in value.split(","):
                if field.strip().lstrip("-") in TELLING_ORDERS:
                    return f"order_by={value}"
    return None


def redact(document: Any, reader: RunReader) -> Any:
    """``document`` (a decoded answer) with what other teams' runs would tell withheld, in place."""
    if not isinstance(document, dict):
        return document
    reader.read_runs(  # every run the answer's items name, in one query
        (dag_id, run_id)
        for key in LISTS
        for item in (document.get(key) if isinstance(document.get(key), list) else [])
        if isinstance(item, dict)
        for dag_id, run_id in [_run_of(key, item)]
        if dag_id in MODEL_DAGS and isinstance(run_id, str) and run_id
    )
    for key, fields in LISTS.items():
        items = document.get(key)
        if not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict) and not reader.may_read_item(key, item):
                for field in fields:
                    if field in item:
                        item[field] = _emptied(item[field])
    return document


def _emptied(value: Any) -> Any:
    return {} if isinstance(value, dict) else [] if isinstance(value, list) else None


def _run_of(kind: str, item: dict[str, Any]) -> tuple[Any, Any]:
    """The DAG and run an item of the list ``kind`` belongs to."""
    if kind == "hitl_details":
        instance = item.get("task_instance")
        return (instance.get("dag_id"), instance.get("dag_run_id")) if isinstance(instance, dict) else (None, None)
    if kind == "asset_events":
        return item.get("source_dag_id"), item.get("source_run_id")
    return item.get("dag_id"), item.get("dag_run_id") or item.get("run_id")


class RunReader:
    """What one caller may read: each run decided once per answer, from Airflow's database."""

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self._runs: dict[tuple[str, str], bool] = {}
        self._models: dict[str, Any] = {}
        self._subjects: dict[tuple[str, str], dict] | None = None

    def read_runs(self, runs: Iterable[tuple[str, str]]) -> None:
        """Read these runs from Airflow's database at once (a run not read then is looked up alone)."""
        from asgard.api.run_subjects import stored_subjects

        try:
            self._subjects = stored_subjects(sorted(set(runs)))
        except Exception:  # each is looked up (and withheld if that fails too) as it comes
            log.warning("could not read an answer's runs at once", exc_info=True)

    def may_read_item(self, kind: str, item: dict[str, Any]) -> bool:
        dag_id, run_id = _run_of(kind, item)
        if kind == "event_logs" and item.get("owner") == self.actor.name:
            return True  # the caller's own actions
        if kind == "asset_events":
            # An event that names a model in its extra (a retraining request, a promotion) is that model's team's,
            # whatever run sent it: a promotion handed on comes from a run of another team's deploy.
            extra = item.get("extra") if isinstance(item.get("extra"), dict) else {}
            model = extra.get("model_name")
            team = self.team_of(model) if model is not None else None
            if team is not None:
                return team is not UNKNOWN and self.actor.may_act_for(team)
            # Naming no registered model: whoever may read the run that sent it (none: admins only).
        if dag_id not in MODEL_DAGS:
            return True
        if not isinstance(run_id, str) or not run_id:  # of the model DAG, of no run: nothing says whose
            return False
        return self.may_read_run(dag_id, run_id)

    def may_read_run(self, dag_id: str, run_id: str) -> bool:
        from asgard.api.run_guard import Change, Refused, check

        key = (dag_id, run_id)
        if key not in self._runs:
            try:
                check(self.actor, [Change(dag_id, run_id, "read")], self._subjects)
                self._runs[key] = True
            except Refused:
                self._runs[key] = False
            except Exception:  # closed: a run whose team could not be told is withheld
                log.warning("could not tell whose run %s/%s is: withheld", dag_id, run_id, exc_info=True)
                self._runs[key] = False
        return self._runs[key]

    def may_act_on(self, model: Any) -> bool:
        team = self.team_of(model)
        return team is not None and team is not UNKNOWN and self.actor.may_act_for(team)

    def team_of(self, model: Any) -> Any:
        """The registered model's team (None: not a registered model's name; :data:`UNKNOWN`: not found out)."""
        from asgard.api.run_guard import team_of

        if not isinstance(model, str):
            return None
        if model not in self._models:
            try:
                self._models[model] = team_of(model, fresh=False)
            except Exception:
                log.warning("could not tell whose model %r is: withheld", model, exc_info=True)
                self._models[model] = UNKNOWN
        return self._models[model]


def rewritten(raw: bytes, reader: RunReader) -> bytes | None:
    """The answer with other teams' runs redacted (None: not JSON, passed on as it is)."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    return json.dumps(redact(document, reader)).encode()


def redacting(send: Send, reader: RunReader) -> Send:
    """A send that holds a JSON answer until it is whole and passes it on redacted; others as they come.
    (This middleware is inside Airflow's gzip: what it holds is not compressed.)"""
    import anyio

    from asgard.api.run_guard import _answer

    start: Message | None = None
    chunks: list[bytes] = []
    size, done = 0, False

    async def redacted(message: Message) -> None:
        nonlocal start, size, done
        if done:
            return
        if message["type"] == "http.response.start":
            kinds = {key.lower(): value for key, value in message.get("headers", [])}
            json_answer = kinds.get(b"content-type", b"").startswith(b"application/json")
            if message["status"] == 200 and json_answer and b"content-encoding" not in kinds:
                start = message
                return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_ANSWER:
            done = True
            await _answer(send, 502, f"an answer over {MAX_ANSWER} bytes is not read to withhold other teams' runs")
            return
        if message.get("more_body"):
            return
        done = True
        raw = b"".join(chunks)
        body = await anyio.to_thread.run_sync(rewritten, raw, reader)
        body = raw if body is None else body
        kept = [(key, value) for key, value in start["headers"] if key.lower() != b"content-length"]
        await send({**start, "headers": [*kept, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return redacted
