"""Drive Airflow the way a user's script does: the official REST client against ``/api/v2``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import airflow_client.client as af
import httpx
from airflow_client.client.exceptions import ApiException
from urllib3.util.retry import Retry

from asgard.hooks.task_errors import exception_summary, render_log_record

TERMINAL_STATES = {"success", "failed"}
# How long a queued run waits before its DAG is checked for being paused (the scheduler needs a few seconds).
PAUSED_CHECK_AFTER = 30.0
# How long a finished task's log may take to reach remote storage (uploaded after its state is set).
REMOTE_LOG_WAIT_SECONDS = 30.0
UNREAD_SERVED_LOG = "Could not read served logs"
# (connect, read) seconds: a call the API server cannot answer in time fails, rather than hanging its caller.
REQUEST_TIMEOUT = (10.0, 120.0)
# A refused connection is tried again this many times, up to 16 s apart (about two minutes in all): an
# API server that crashed is started again by its supervisor and answers within seconds on an idle
# machine, but took 63 s on CI's two cores busy with three test streams; a connection that never
# opened sent nothing, so any call (a POST too) may be repeated.
CONNECT_RETRIES = 12
RETRY_WAIT_MAX = 16.0


class _TimedApiClient(af.ApiClient):
    """The generated client, with a timeout on every call that does not set its own."""

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        return super().call_api(method, url, header_params, body, post_params, _request_timeout or REQUEST_TIMEOUT)


class AirflowApiError(RuntimeError):
    """The Airflow API refused a call, or a run did not end well; the message says why."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def fetch_token(base_url: str, username: str, password: str) -> str:
    """A JWT for ``username`` from the auth manager's token endpoint (outside the generated /api/v2 client)."""
    base_url = base_url.rstrip("/")
    try:
        response = httpx.post(f"{base_url}/auth/token", json={"username": username, "password": password}, timeout=30)
    except httpx.TransportError as error:
        raise AirflowApiError(f"cannot reach the Airflow API server at {base_url}: {error}") from error
    if response.status_code not in (200, 201):
        raise AirflowApiError(
            f"login to {base_url} as {username!r} refused ({response.status_code})", status=response.status_code
        )
    return response.json()["access_token"]


@dataclass(frozen=True)
class RunOutcome:
    dag_id: str
    run_id: str
    state: str
    seconds: float
    task_states: dict[str, str]
    failure: str | None = None


class AirflowApi:
    """A client of one Airflow API server, holding a JWT (from a login, or passed on by a caller)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        # Airflow on SQLite (the embedded profile) answers 500 "database is locked" under bursts of
        # writes; calls that are safe to repeat are repeated (a trigger, in `trigger`).
        retry = Retry(
            total=CONNECT_RETRIES + 4,
            connect=CONNECT_RETRIES,
            read=2,
            status=4,
            other=0,
            backoff_factor=0.5,
            backoff_max=RETRY_WAIT_MAX,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "PATCH", "DELETE"}),
            raise_on_status=False,
        )
        config = af.Configuration(host=self.base_url, access_token=token, retries=retry)
        self._client = _TimedApiClient(config)
        self.dags = af.DAGApi(self._client)
        self.runs = af.DagRunApi(self._client)
        self.task_instances = af.TaskInstanceApi(self._client)
        self.assets = af.AssetApi(self._client)
        self.xcoms = af.XComApi(self._client)
        self.pools = af.PoolApi(self._client)

    @classmethod
    def login(cls, base_url: str, username: str, password: str) -> AirflowApi:
        """Log in as ``username`` and keep the token."""
        return cls(base_url, fetch_token(base_url, username, password))

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> None:
        """Wait until the dag-processor has parsed ``dag_id`` (a fresh install parses in seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.dags.get_dag(dag_id)
                return
            except ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise AirflowApiError(
                        f"DAG {dag_id!r} is not available after {timeout:.0f}s ({error.status}): "
                        "check `./asgard logs airflow` for import errors",
                        status=error.status,
                        body=error.body,
                    ) from error
            time.sleep(2.0)

    def dag_state(self, dag_id: str) -> dict[str, Any]:
        """Whether ``dag_id`` is parsed and whether it is paused (an import error shows as not found)."""
        try:
            dag = self.dags.get_dag(dag_id)
        except ApiException as error:
            if error.status == 404:
                return {"available": False, "paused": None}
            raise AirflowApiError(f"DAG {dag_id!r}: {error.status}", status=error.status, body=error.body) from error
        return {"available": True, "paused": bool(dag.is_paused)}

    def unpause(self, dag_id: str) -> None:
        self.dags.patch_dag(dag_id, af.DAGPatchBody(is_paused=False))

    def pause(self, dag_id: str) -> None:
        """Stop scheduling ``dag_id`` (Asset events no longer start runs of it)."""
        self.dags.patch_dag(dag_id, af.DAGPatchBody(is_paused=True))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, *, run_id: str | None = None) -> str:
        """Create a run of ``dag_id`` with ``conf``; a conf the Params reject raises with the API's message.

        The run is always named here (as Airflow would name it), so a try that answered a server error
        can be repeated without risking a second run.
        """
        run_id = run_id or f"manual__{datetime.now(UTC).isoformat()}"
        body = af.TriggerDAGRunPostBody(conf=conf or {}, dag_run_id=run_id)
        for attempt in range(1, 5):
            try:
                return self.runs.trigger_dag_run(dag_id, body).dag_run_id
            except ApiException as error:
                if attempt > 1 and error.status == 409:
                    return run_id  # the try that answered a server error had created it after all
                if (error.status or 0) < 500 or attempt == 4:
                    failure = error
                    break
            time.sleep(0.5 * 2**attempt)
        raise AirflowApiError(
            f"trigger of {dag_id!r} refused ({failure.status}): {_detail(failure.body)}",
            status=failure.status,
            body=failure.body,
        ) from failure

    def list_run_ids(self, dag_id: str, *, newest_first: bool = False) -> list[str]:
        order = ["-id"] if newest_first else ["id"]
        return [run.dag_run_id for run in self.runs.get_dag_runs(dag_id, limit=100, order_by=order).dag_runs]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """State of each task (mapped tasks as ``task_id[i]``)."""
        result = {}
        for ti in self.task_instances.get_task_instances(dag_id, run_id, limit=1000).task_instances:
            result[_task_key(ti)] = _task_state(ti)
        return result

    def task_hosts(self, dag_id: str, run_id: str, task_id: str | None = None) -> dict[str, str]:
        """The host (worker) each task instance ran on (mapped ones as ``task_id[i]``)."""
        instances = self.task_instances.get_task_instances(dag_id, run_id, limit=1000).task_instances
        chosen = sorted((ti for ti in instances if task_id in (None, ti.task_id)), key=lambda ti: ti.map_index)
        return {_task_key(ti): ti.hostname or "-" for ti in chosen}

    def run_report(self, dag_id: str, run_id: str, *, logs: bool = True) -> dict[str, Any]:
        """One run as a job: its state and times, each task's state, and the finished tasks' logs."""
        run = self._dag_run(dag_id, run_id)
        instances = self.task_instances.get_task_instances(dag_id, run_id, limit=1000).task_instances
        tasks, texts = {}, {}
        for ti in instances:
            key, state = _task_key(ti), _task_state(ti)
            tasks[key] = state
            if logs and state in ("success", "failed", "up_for_retry") and ti.try_number:
                texts[key] = self.task_log(dag_id, run_id, ti.task_id, ti.map_index, ti.try_number)
        state = str(getattr(run.state, "value", run.state))
        return {
            "dag_id": dag_id,
            "run_id": run_id,
            "state": state,
            "queued_at": _iso(run.queued_at),
            "started_at": _iso(run.start_date),
            "ended_at": _iso(run.end_date),
            "tasks": tasks,
            "error": self._first_error(dag_id, run_id, instances) if state == "failed" else None,
            "logs": texts,
        }

    def run_conf(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The conf a run was started with ({} for a run without one)."""
        return dict(self._dag_run(dag_id, run_id).conf or {})

    def _dag_run(self, dag_id: str, run_id: str) -> Any:
        try:
            return self.runs.get_dag_run(dag_id, run_id)
        except ApiException as error:
            raise AirflowApiError(
                f"run {dag_id}/{run_id}: {error.status} {error.reason}", status=error.status, body=error.body
            ) from error

    def run_error(self, dag_id: str, run_id: str) -> dict[str, str] | None:
        """Why a run failed: the task that failed first, its exception's first lines and the last exception line."""
        instances = self.task_instances.get_task_instances(dag_id, run_id, limit=1000).task_instances
        return self._first_error(dag_id, run_id, instances)

    def _first_error(self, dag_id: str, run_id: str, instances: list[Any]) -> dict[str, str] | None:
        failed = [ti for ti in instances if _task_state(ti) == "failed"]  # not the upstream_failed after them
        if not failed:
            return None
        first = min(failed, key=lambda ti: ti.end_date or datetime.max.replace(tzinfo=UTC))
        content = self._log_content(dag_id, run_id, first.task_id, first.map_index, first.try_number or 1)
        return {"task": _task_key(first), "message": exception_summary(content)}

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float = 900.0,
        on_progress: Callable[[dict[str, str]], None] | None = None,
        appear_within: float = 0.0,
    ) -> RunOutcome:
        """Poll until the run ends; report task states as they change.

        ``appear_within``: how long a run that another DAG starts (an Asset-scheduled hop) may take
        to exist before its absence is an error.
        """
        started = time.monotonic()
        last: dict[str, str] = {}
        while True:
            try:
                run = self.runs.get_dag_run(dag_id, run_id)
            except ApiException as error:
                if error.status != 404 or time.monotonic() - started > appear_within:
                    raise AirflowApiError(
                        f"run {dag_id}/{run_id}: {error.status} {error.reason}", status=error.status, body=error.body
                    ) from error
                time.sleep(1.0)
                continue
            state = str(run.state.value if hasattr(run.state, "value") else run.state)
            states = self.task_states(dag_id, run_id)
            if states != last and on_progress:
                on_progress(states)
            last = states
            if state in TERMINAL_STATES:
                failure = None
                if state != "success":
                    failed = [
                        task for task, task_state in states.items() if task_state in ("failed", "upstream_failed")
                    ]
                    failure = f"tasks not successful: {', '.join(failed) or 'none recorded'}"
                    if error := self.run_error(dag_id, run_id):
                        failure += f"; {error['task']} failed with {error['message']}"
                return RunOutcome(dag_id, run_id, state, time.monotonic() - started, states, failure)
            waited = time.monotonic() - started
            # A paused DAG's runs stay queued for ever: say so instead of waiting out the timeout.
            if state == "queued" and waited > PAUSED_CHECK_AFTER and self.dag_state(dag_id)["paused"]:
                raise AirflowApiError(f"run {dag_id}/{run_id} stays queued: {dag_id} is paused (unpause it)")
            if waited > timeout:
                raise AirflowApiError(f"run {dag_id}/{run_id} still {state} after {timeout:.0f}s")
            time.sleep(1.0)

    def run_and_wait(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        timeout: float = 900.0,
        on_progress: Callable[[dict[str, str]], None] | None = None,
    ) -> RunOutcome:
        """Wait for the DAG, unpause it, trigger it with ``conf`` and wait for the run to end."""
        self.wait_for_dag(dag_id)
        self.unpause(dag_id)
        run_id = self.trigger(dag_id, conf)
        return self.wait_for_run(dag_id, run_id, timeout=timeout, on_progress=on_progress)

    def asset_events(self, uri: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events of the Asset with ``uri`` (who emitted them, when, with what extra)."""
        try:
            response = self.assets.get_asset_events(limit=limit, order_by=["-timestamp"], name_pattern=uri)
        except ApiException as error:
            raise AirflowApiError(
                f"asset events of {uri}: {error.status} {error.reason}", status=error.status, body=error.body
            ) from error
        return [event.to_dict() for event in response.asset_events if event.uri == uri]

    def run_started_by(self, uri: str, source_run_id: str, dag_id: str, *, within: float = 120.0) -> str:
        """The ``dag_id`` run that an event of Asset ``uri`` emitted by ``source_run_id`` created."""
        deadline = time.monotonic() + within
        while True:
            try:
                for event in self.asset_events(uri):
                    if event.get("source_run_id") != source_run_id:
                        continue
                    for created in event.get("created_dagruns") or []:
                        if created["dag_id"] == dag_id:
                            return created["run_id"]
            except AirflowApiError as error:
                # Airflow 3.3.2 answers 500 while a run an event created is queued (its start_date
                # is still None, which the response model refuses); it starts within seconds.
                if error.status != 500:
                    raise
            if time.monotonic() > deadline:
                raise AirflowApiError(
                    f"no {dag_id} run was started by {uri} events of run {source_run_id} within {within:.0f}s "
                    f"(is {dag_id} paused?)"
                )
            time.sleep(1.0)

    def task_result(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value"
    ) -> Any:
        """What a task returned (its ``return_value`` XCom, or another key), as JSON data."""
        entry = self.xcoms.get_xcom_entry(dag_id, task_id, run_id, key, map_index=map_index)
        value = entry.actual_instance.value if hasattr(entry, "actual_instance") else entry.value
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:  # a plain string XCom (a triggered run's id) comes back as it is
            return value

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int = 1) -> str:
        """The text of one task try's log, exceptions included (for failure messages)."""
        content = self._log_content(dag_id, run_id, task_id, map_index, try_number)
        if isinstance(content, list):
            return "\n".join(render_log_record(line) for line in content)
        return str(content)

    def _log_content(self, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> Any:
        """One task try's log as Airflow stores it: structured records (or text); empty if it never ran."""
        deadline = time.monotonic() + REMOTE_LOG_WAIT_SECONDS
        while True:
            # Raw JSON: the generated model drops the structured fields (error_detail) of each record.
            response = self.task_instances.get_log_without_preload_content(
                dag_id, run_id, task_id, try_number, map_index=map_index, full_content=True
            )
            body = json.loads(response.read())
            # With remote logging (the production profile) a worker uploads the log just after it
            # reports the task's state: until then the API server finds it in neither place.
            if UNREAD_SERVED_LOG not in json.dumps(body.get("content"))[:4000] or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if "content" not in body:
            if response.status == 404:  # the task never ran (upstream failed): it has no log
                return ""
            raise AirflowApiError(
                f"log of {dag_id}/{run_id}/{task_id}: {response.status} {body.get('detail')}",
                status=response.status,
                body=str(body),
            )
        return body["content"]


def _task_key(ti: Any) -> str:
    """A task instance's name in reports: ``task_id``, or ``task_id[i]`` for a mapped one."""
    label = getattr(ti, "rendered_map_index", None) or ti.map_index
    return ti.task_id if ti.map_index in (None, -1) else f"{ti.task_id}[{label}]"


def _task_state(ti: Any) -> str:
    return "pending" if ti.state is None else str(getattr(ti.state, "value", ti.state))


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()


def _detail(body: str | None) -> str:
    """The ``detail`` of an API error body (Params name the refused param there), else the body."""
    try:
        detail = json.loads(body or "")["detail"]
    except (ValueError, KeyError, TypeError):
        return str(body)
    return detail if isinstance(detail, str) else json.dumps(detail)
