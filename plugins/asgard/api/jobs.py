"""Jobs: DAG runs started through the API, and what became of them (model version, deployment)."""

from __future__ import annotations

import uuid
from typing import Any

from asgard.hooks.airflow_api import AirflowApi, AirflowApiError
from asgard.registry.models import model_asset_uri

# What each job DAG's result is: the return value of this task (of each of its mapped instances).
RESULT_TASKS = {
    "train_script": "gate_model",
    "train_model": "gate_model",
    "score_batch": "publish",
    "register_features": "apply_feature_view",
    "monitor_model": "alert",
    "deploy_model": "deploy_image",
    "materialize_features": "materialize",
    "retrain_model": "requests",
}
_SEPARATOR = "--"
_STATUS = {"queued": "queued", "running": "running", "success": "completed", "failed": "failed"}


class JobNotFoundError(LookupError):
    """The job id names no run of a job DAG."""


def submit(api: AirflowApi, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Start ``dag_id`` with ``conf``; the job id names the DAG and the run (``<dag_id>--<hex>``).

    The DAG is unpaused once the run exists: a request through the API is an explicit ask to run
    it, and a conf the Params refuse changes nothing.
    """
    run_id = f"{dag_id}{_SEPARATOR}{uuid.uuid4().hex[:16]}"
    api.trigger(dag_id, conf, run_id=run_id)
    api.unpause(dag_id)
    return {"job_id": run_id, "dag_id": dag_id, "run_id": run_id, "status": "queued"}


def locate(job_id: str) -> str:
    """The DAG a job id belongs to."""
    dag_id, separator, _ = job_id.rpartition(_SEPARATOR)
    if not separator or dag_id not in RESULT_TASKS:
        raise JobNotFoundError(f"job {job_id!r} is not a job id this API gave out (<dag_id>--<hex>)")
    return dag_id


def locate_run(dag_id: str) -> str:
    """``dag_id``, if it is a DAG whose runs are jobs (any run: from this API, the UI, REST or a schedule)."""
    if dag_id not in RESULT_TASKS:
        raise JobNotFoundError(f"{dag_id!r} is not a job DAG ({', '.join(sorted(RESULT_TASKS))})")
    return dag_id


def status(api: AirflowApi, job_id: str, *, logs: bool = True, dag_id: str | None = None) -> dict[str, Any]:
    """A job's state, each task's state, the finished tasks' logs, its result and, for a promoted
    model, the ``deploy_model`` run the promotion started. ``job_id`` is a job id this API gave out,
    or with ``dag_id`` any run id of that DAG."""
    dag_id = locate_run(dag_id) if dag_id else locate(job_id)
    try:
        report = api.run_report(dag_id, job_id, logs=logs)
    except AirflowApiError as error:
        if error.status == 404:
            raise JobNotFoundError(f"run {job_id!r} of {dag_id} does not exist") from error
        raise
    job: dict[str, Any] = {
        "job_id": job_id,
        **report,
        "status": _STATUS.get(report["state"], report["state"]),
        "logs": "\n".join(f"===== {task} =====\n{text}" for task, text in report["logs"].items()),
        "result": None,
    }
    if report["state"] == "success":
        job["result"] = _result(api, dag_id, job_id, report["tasks"])
    if dag_id in ("train_model", "train_script"):
        job.update(_training_outcome(api, job_id, job["result"]))
    return job


def _result(api: AirflowApi, dag_id: str, run_id: str, tasks: dict[str, str]) -> Any:
    """The result task's return value; a mapped one's, as a list in map order."""
    task_id = RESULT_TASKS[dag_id]
    if task_id in tasks:
        return api.task_result(dag_id, run_id, task_id)
    if not any(key.startswith(f"{task_id}[") for key in tasks):
        return None
    instances = api.task_instances.get_task_instances(dag_id, run_id, limit=1000).task_instances
    indexes = sorted(ti.map_index for ti in instances if ti.task_id == task_id and (ti.map_index or 0) >= 0)
    return [api.task_result(dag_id, run_id, task_id, map_index=index) for index in indexes]


def _training_outcome(api: AirflowApi, run_id: str, decision: dict[str, Any] | None) -> dict[str, Any]:
    if not decision:
        return {"model_name": None, "model_version": None, "promoted": None, "deployment": None}
    outcome = {
        "model_name": decision["model_name"],
        "model_version": str(decision["version"]),
        "promoted": decision["promoted"],
        "deployment": None,
    }
    if decision["promoted"]:
        outcome["deployment"] = _deployment(api, decision["model_name"], run_id)
    return outcome


def _deployment(api: AirflowApi, model_name: str, run_id: str) -> dict[str, Any]:
    """The ``deploy_model`` run this promotion's Asset event started (none while deploy_model is paused)."""
    try:
        events = api.asset_events(model_asset_uri(model_name))
    except AirflowApiError as error:
        if error.status != 500:
            raise
        # Airflow 3.3.2 answers 500 while a run an event created is queued (its start_date is still
        # None, which the response model refuses): the run exists and starts within seconds.
        return {"status": "starting", "detail": "deploy_model has created a run for this promotion"}
    for event in events:
        if event.get("source_run_id") != run_id:
            continue
        for created in event.get("created_dagruns") or []:
            if created["dag_id"] != "deploy_model":
                continue
            deploy = api.run_report("deploy_model", created["run_id"], logs=False)
            result = None
            if deploy["state"] == "success":
                result = api.task_result("deploy_model", created["run_id"], "deploy_image")
            return {
                "dag_id": "deploy_model",
                "run_id": created["run_id"],
                "status": _STATUS.get(deploy["state"], deploy["state"]),
                "tasks": deploy["tasks"],
                "endpoint": (result or {}).get("endpoint"),
                "result": result,
            }
        return {"status": "waiting", "detail": "deploy_model has not started a run for this promotion (is it paused?)"}
    return {"status": "not_started", "detail": "no model Asset event of this run yet"}
