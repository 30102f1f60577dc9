"""Drive Airflow the way a user's script does: the official REST client against ``/api/v2``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import airflow_client.client as af
import httpx
from airflow_client.client.exceptions import ApiException

TERMINAL_STATES = {"success", "failed"}


class AirflowApiError(RuntimeError):
    """The Airflow API refused a call, or a run did not end well; the message says why."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class RunOutcome:
    dag_id: str
    run_id: str
    state: str
    seconds: float
    task_states: dict[str, str]
    failure: str | None = None


class AirflowApi:
    """A logged-in client of one Airflow API server."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        token = self._token(username, password)
        config = af.Configuration(host=self.base_url, access_token=token)
        self._client = af.ApiClient(config)
        self.dags = af.DAGApi(self._client)
        self.runs = af.DagRunApi(self._client)
        self.task_instances = af.TaskInstanceApi(self._client)
        self.assets = af.AssetApi(self._client)
        self.xcoms = af.XComApi(self._client)

    def _token(self, username: str, password: str) -> str:
        # The token endpoint belongs to the auth manager, outside the generated /api/v2 client.
        response = httpx.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        if response.status_code not in (200, 201):
            raise AirflowApiError(
                f"login to {self.base_url} as {username!r} refused ({response.status_code})",
                status=response.status_code,
            )
        return response.json()["access_token"]

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

    def unpause(self, dag_id: str) -> None:
        self.dags.patch_dag(dag_id, af.DAGPatchBody(is_paused=False))

    def pause(self, dag_id: str) -> None:
        """Stop scheduling ``dag_id`` (Asset events no longer start runs of it)."""
        self.dags.patch_dag(dag_id, af.DAGPatchBody(is_paused=True))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, *, run_id: str | None = None) -> str:
        """Create a run of ``dag_id`` with ``conf``; a conf the Params reject raises with the API's message."""
        body = af.TriggerDAGRunPostBody(conf=conf or {}, dag_run_id=run_id)
        try:
            return self.runs.trigger_dag_run(dag_id, body).dag_run_id
        except ApiException as error:
            raise AirflowApiError(
                f"trigger of {dag_id!r} refused ({error.status}): {error.body}", status=error.status, body=error.body
            ) from error

    def list_run_ids(self, dag_id: str) -> list[str]:
        return [run.dag_run_id for run in self.runs.get_dag_runs(dag_id, limit=100).dag_runs]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """State of each task (mapped tasks as ``task_id[i]``)."""
        result = {}
        for ti in self.task_instances.get_task_instances(dag_id, run_id, limit=1000).task_instances:
            label = getattr(ti, "rendered_map_index", None) or ti.map_index
            key = ti.task_id if ti.map_index in (None, -1) else f"{ti.task_id}[{label}]"
            result[key] = "pending" if ti.state is None else str(getattr(ti.state, "value", ti.state))
        return result

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float = 900.0,
        on_progress: Callable[[dict[str, str]], None] | None = None,
    ) -> RunOutcome:
        """Poll until the run ends; report task states as they change."""
        started = time.monotonic()
        last: dict[str, str] = {}
        while True:
            run = self.runs.get_dag_run(dag_id, run_id)
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
                return RunOutcome(dag_id, run_id, state, time.monotonic() - started, states, failure)
            if time.monotonic() - started > timeout:
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
        response = self.assets.get_asset_events(limit=limit, order_by=["-timestamp"], name_pattern=uri)
        return [event.to_dict() for event in response.asset_events if event.uri == uri]

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
        # Raw JSON: the generated model drops the structured fields (error_detail) of each record.
        response = self.task_instances.get_log_without_preload_content(
            dag_id, run_id, task_id, try_number, map_index=map_index, full_content=True
        )
        content = json.loads(response.read())["content"]
        if isinstance(content, list):
            return "\n".join(_render_log_line(line) for line in content)
        return str(content)


def _render_log_line(line: Any) -> str:
    """One structured log record as text, with the exception it carries (type and message)."""
    if not isinstance(line, dict):
        return str(line)
    text = str(line.get("event", ""))
    for detail in line.get("error_detail") or []:
        text += f"\n{detail.get('exc_type')}: {detail.get('exc_value')}"
    return text
