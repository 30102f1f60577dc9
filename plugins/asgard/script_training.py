"""What the ``train_script`` tasks do: check the upload, prepare its environment, run it, then
register, gate and promote its model with the same code as ``train_model``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from asgard import features, training_data, user_scripts
from asgard.hooks.mlflow import MlflowHook
from asgard.model_registry import GateDecision, ModelRegistry, find_logged_model, lineage_tags
from asgard.settings import get_settings

log = logging.getLogger(__name__)

# The gate's metric when the conf names none: the first of these the script logged.
DEFAULT_METRICS = ("roc_auc", "accuracy", "f1", "r2", "rmse", "mae")


def check_upload(params: dict[str, Any], *, dag_id: str, run_id: str) -> dict[str, Any]:
    """Decode and check the script (no side effect but storing it in the run's folder)."""
    script = user_scripts.decode_script(params["script_name"], params["script_content"])
    user_scripts.check_env_vars(params.get("env_vars") or {})
    folder = training_data.run_folder(dag_id, run_id)
    path = folder / "script" / script.name
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{script.name}.partial")
    partial.write_text(script.source)
    partial.replace(path)
    log.info("script %s: %d bytes, sha256 %s", script.name, len(script.source), script.sha256)
    return {"script_name": script.name, "script_path": str(path), "sha256": script.sha256}


def prepare_environment(params: dict[str, Any]) -> dict[str, Any]:
    """The environment for the script's requirements, built once per requirements set, then reused.

    Locally a virtualenv; for the pod runner an image of the same key, built on the Docker engine and
    pushed to the registry (ECR in production), given to the pod by digest.
    """
    settings = get_settings()
    requirements = list(params.get("requirements") or [])
    if settings.script_runner == "kubernetes":
        from asgard.script_image import ensure_script_image

        return ensure_script_image(requirements, settings=settings)
    return {"python": str(user_scripts.ScriptEnvironments(settings=settings).ensure(requirements))}


def run_uploaded_script(
    params: dict[str, Any], upload: dict[str, Any], environment: dict[str, Any], *, dag_id: str, run_id: str
) -> dict[str, Any]:
    """Run the script against the DAG run's MLflow run; its output goes to this task's log."""
    hook = MlflowHook()
    run = hook.get_or_create_run(
        experiment_name=params["experiment_name"], dag_id=dag_id, run_id=run_id, tags=params.get("tags") or {}
    )
    workdir = training_data.run_folder(dag_id, run_id) / "workdir"
    repo = features.write_script_repo(workdir / "feature_repo")
    injected = user_scripts.injected_variables(params, hook.tracking_uri, run.info.run_id, str(repo))
    python = Path(environment["python"])
    script = user_scripts.UserScript(upload["script_name"], Path(upload["script_path"]).read_text())
    limits = user_scripts.Limits(
        timeout_seconds=int(params.get("timeout", 600)),
        memory_mb=int(params.get("memory_mb", 4096)),
    )
    env = user_scripts.script_environment(python, workdir, injected, params.get("env_vars") or {})
    outcome = user_scripts.run_script(script, python, workdir, env, limits, output=lambda line: log.info("| %s", line))
    log.info("%s finished in %.1fs (%d bytes of output)", script.name, outcome.seconds, outcome.output_bytes)
    return {"mlflow_run_id": run.info.run_id}


def register_script_model(params: dict[str, Any], ran: dict[str, Any], *, dag_id: str, run_id: str) -> dict[str, Any]:
    """Find the model the script logged in its run and register it (once per DAG run)."""
    hook = MlflowHook()
    model = find_logged_model(hook, ran["mlflow_run_id"], params["model_name"], who="the script")
    gate_metric(params, hook.client.get_run(ran["mlflow_run_id"]).data.metrics)  # fail before registering
    tags = lineage_tags(
        dag_id=dag_id,
        run_id=run_id,
        feature_views=[params.get("feature_view_name") or "customer_features"] if params.get("use_feast", True) else [],
        gold_snapshots={},
        extra={"source": "train_script", "script_name": params["script_name"]},
    )
    version, created = ModelRegistry(hook).register(
        params["model_name"], model.model_uri, ran["mlflow_run_id"], tags, model_id=model.model_id
    )
    log.info("%s %s version %s", "registered" if created else "found already registered", version.name, version.version)
    return {"model_name": version.name, "version": str(version.version), "created": created}


def gate_script_model(params: dict[str, Any], ran: dict[str, Any], registered: dict[str, Any]) -> GateDecision:
    """Gate on the metric the script logged against the champion's recorded score."""
    hook = MlflowHook()
    logged = hook.client.get_run(ran["mlflow_run_id"]).data.metrics
    promotion = params.get("promotion") or {}
    metric = gate_metric(params, logged)
    decision = ModelRegistry(hook).gate(
        registered["model_name"],
        registered["version"],
        holdout=None,
        target=None,
        model_type=None,
        metric=metric,
        score=logged[metric],
        min_improvement=float(promotion.get("min_improvement") or 0.0),
    )
    log.info("gate: %s v%s -> @%s: %s", decision.model_name, decision.version, decision.alias, decision.reason)
    return decision


def gate_metric(params: dict[str, Any], logged: dict[str, float]) -> str:
    """The metric the gate compares: the conf's, else the first of DEFAULT_METRICS the script logged."""
    metric = (params.get("promotion") or {}).get("metric") or next((m for m in DEFAULT_METRICS if m in logged), None)
    if metric is None or metric not in logged:
        wanted = metric or " or ".join(DEFAULT_METRICS)
        raise user_scripts.ScriptError(
            f"the script logged no {wanted} metric to gate on; it logged: {', '.join(sorted(logged)) or 'none'}"
        )
    return metric
