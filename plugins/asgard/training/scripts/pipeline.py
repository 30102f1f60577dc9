"""What the ``train_script`` tasks do: check the upload, prepare its environment, run it, then
register, gate and promote its model with the same code as ``train_model``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asgard.core import sandbox
from asgard.core.errors import InputError, redact_url
from asgard.core.sandbox import Bind
from asgard.core.settings import Settings, get_settings
from asgard.core.storage import Location
from asgard.features import store as feature_store
from asgard.hooks.mlflow import MlflowHook
from asgard.hooks.mlflow_gateway import Gateway, RunScope
from asgard.registry.models import GateDecision, ModelRegistry, find_logged_model
from asgard.registry.ownership import run_access
from asgard.registry.versions import SCRIPT_ORIGIN, SCRIPT_REQUIREMENTS_TAG, lineage_tags
from asgard.training import data as training_data
from asgard.training import evaluation, holdback, production_views
from asgard.training.pipeline import check_tags
from asgard.training.scripts import run_folders, runner, store_doors
from asgard.training.scripts import secrets as script_secrets

log = logging.getLogger(__name__)

# Where a sandboxed script finds its feature_store.yaml (read-only).
FEATURE_REPO_INSIDE = "/asgard/feature_repo"
# The gate's metric when the conf names none: the first of these the script logged.
DEFAULT_METRICS = ("roc_auc", "accuracy", "f1", "r2", "rmse", "mae")


def check_upload(params: dict[str, Any], dag_run: Any) -> dict[str, Any]:
    """Decode and check the script (no side effect but storing it in the run's folder); its sha256 is
    recorded beside it, and ``run_script`` runs only those bytes. Before anything, whether the run's
    user may train into the model: the team it is registered for is recorded with the upload."""
    dag_id, run_id = dag_run.dag_id, dag_run.run_id
    team = run_access(dag_run, params["model_name"], may_create=True, new_model_team=params.get("team"))
    script = runner.decode_script(params["script_name"], params["script_content"])
    runner.check_env_vars(params.get("env_vars") or {})
    references = params.get("secret_env_vars") or {}
    runner.check_env_vars(dict.fromkeys(references, ""))  # the same names a script may be given
    if shared := sorted(set(references) & set(params.get("env_vars") or {})):
        raise InputError(f"{', '.join(shared)} set both in env_vars and in secret_env_vars")
    script_secrets.checked_references(references, team)
    check_tags(params.get("tags") or {})
    # The task that runs it may be on another worker: the script goes to the run's shared storage.
    stored = run_folders.script_storage(dag_id, run_id).child(script.name)
    stored.write_bytes(script.source.encode())
    log.info("script %s: %d bytes, sha256 %s, stored at %s", script.name, len(script.source), script.sha256, stored.uri)
    return {"script_name": script.name, "script_path": stored.uri, "sha256": script.sha256, "team": team}


def stored_script(upload: dict[str, Any], aws_conn_id: str) -> runner.UserScript:
    """The script ``check_upload`` stored, refused unless its bytes still have the sha256 recorded then."""
    stored = Location(upload["script_path"], aws_conn_id)
    with stored.filesystem().open_input_stream(stored.path) as stream:
        raw = stream.read(runner.MAX_SCRIPT_BYTES + 1)  # more than that cannot match what was checked
    digest = hashlib.sha256(raw).hexdigest()
    if digest != upload["sha256"]:
        raise runner.ScriptError(
            f"the stored script {upload['script_name']} has sha256 {digest}, not the {upload['sha256']} recorded "
            f"when check_upload checked and stored it ({stored.uri}): it changed since, and does not run"
        )
    return runner.UserScript(upload["script_name"], raw.decode())


def prepare_environment(params: dict[str, Any]) -> dict[str, Any]:
    """The environment for the script's requirements, built once per requirements set, then reused.

    Locally a virtualenv; for the pod runner an image of the same key, built on the Docker engine and
    pushed to the registry (ECR in production), given to the pod by digest.
    """
    settings = get_settings()
    requirements = list(params.get("requirements") or [])
    if settings.script_runner == "kubernetes":
        from asgard.training.scripts.image import ensure_script_image

        return ensure_script_image(requirements, settings=settings)
    return {"python": str(runner.ScriptEnvironments(settings=settings).ensure(requirements))}


def run_uploaded_script(
    params: dict[str, Any], upload: dict[str, Any], environment: dict[str, Any], *, dag_id: str, run_id: str
) -> dict[str, Any]:
    """Run the script in a sandbox against the DAG run's MLflow run; its output goes to this task's log.

    It sees its working folder (new for each attempt: a retry never finds what the last one left),
    its environment, the feature store's configuration and (embedded) data read-only, and reaches
    MLflow only through a door scoped to its own run.
    """
    task_id, map_index, try_number = _this_attempt()
    with run_folders.fresh_attempt(run_folders.task_folder(dag_id, run_id, task_id, map_index), try_number) as folder:
        return _run_in(folder, params, upload, environment, dag_id=dag_id, run_id=run_id)


def acting_team(params: dict[str, Any], upload: dict[str, Any]) -> str:
    """The team this run acts for, asked again from its conf and its user (whose secrets it may read):
    ``check_upload``'s hand-off could have been changed since (:func:`asgard.registry.ownership.recheck`)."""
    from airflow.sdk import get_current_context

    from asgard.registry.ownership import recheck

    handed = {**upload, "model_name": params["model_name"]}
    dag_run = get_current_context()["dag_run"]
    return recheck(dag_run, params["model_name"], handed, may_create=True, new_model_team=params.get("team"))


def _this_attempt() -> tuple[str, int, int]:
    """This task instance's id, map index and try number (a retry, or a cleared task, is a new try)."""
    from airflow.sdk import get_current_context

    ti = get_current_context()["ti"]
    return ti.task_id, -1 if ti.map_index is None else ti.map_index, ti.try_number


def _run_in(
    folder: Path,
    params: dict[str, Any],
    upload: dict[str, Any],
    environment: dict[str, Any],
    *,
    dag_id: str,
    run_id: str,
) -> dict[str, Any]:
    settings, hook = get_settings(), MlflowHook()
    run = hook.get_or_create_run(
        experiment_name=params["experiment_name"], dag_id=dag_id, run_id=run_id, tags=params.get("tags") or {}
    )
    repo = feature_store.write_script_repo(folder / "feature_repo")
    python = Path(environment["python"])
    injected = runner.injected_variables(params, runner.mlflow_uri_inside(), run.info.run_id, FEATURE_REPO_INSIDE)
    env = runner.script_environment(python, injected, params.get("env_vars") or {})
    env.update(script_secrets.resolve(params.get("secret_env_vars") or {}, acting_team(params, upload)))
    # Production's feature store is network services: a reader's login to them, through doors.
    access = store_doors.StoreAccess.from_env() if params.get("use_feast", True) else None
    if access is not None:
        env.update(access.script_variables())
    limits = sandbox.Limits(
        timeout_seconds=int(params.get("timeout", 600)),
        memory_mb=int(params.get("memory_mb", 4096)),
    )
    binds = [Bind(repo, FEATURE_REPO_INSIDE), *script_data_binds(folder / "gold_view", settings)]
    scope = RunScope(
        run.info.run_id,
        run.info.experiment_id,
        params["experiment_name"],
        max_artifact_bytes=settings.script_max_disk_mb * 1024 * 1024,
    )
    script = stored_script(upload, settings.aws_conn_id)  # checked right before it runs
    # MLflow prints its run links from the URI it was given (the door, port 5000 inside the sandbox):
    # the task log shows them at the tracking server users reach instead.
    shown = redact_url(hook.tracking_uri) if hook.tracking_uri.startswith("http") else "<the MLflow server>"
    links = (f"{runner.mlflow_uri_inside()}/#/", f"{shown.rstrip('/')}/#/")
    # A short path: a unix socket's may not exceed 107 bytes.
    with tempfile.TemporaryDirectory(prefix="asgard-doors-") as sockets, production_view(access) as access:
        Path(sockets).chmod(0o755)
        with (
            Gateway(hook.tracking_uri, scope, Path(sockets) / "mlflow.sock").serving(),
            store_doors.opened(access, Path(sockets)) if access else contextlib.nullcontext({}) as doors,
        ):
            outcome = runner.run_script(
                script,
                python,
                folder / "workdir",
                env,
                limits,
                binds=binds,
                sockets=Path(sockets),
                doors=doors,
                output=lambda line: log.info("| %s", line.replace(*links)),
            )
    log.info("%s finished in %.1fs (%d bytes of output)", script.name, outcome.seconds, outcome.output_bytes)
    return {"mlflow_run_id": run.info.run_id}


@contextlib.contextmanager
def production_view(access: store_doors.StoreAccess | None) -> Iterator[store_doors.StoreAccess | None]:
    """``access`` (production's reader, or None) narrowed to this run's view of the gold layer: the labels the
    gate holds back are in no file its doors open (:func:`asgard.training.production_views.production_script_view`).
    The embedded profile's view is bound into the sandbox instead (:func:`script_data_binds`)."""
    if access is None:
        yield None
        return
    settings = get_settings()
    keys = holdback.key_columns(settings)
    run_key = uuid.uuid4().hex[:16]  # one view per try, and no other install's or run's name
    label_table = training_data.DEFAULT_LABEL_TABLE
    with production_views.production_script_view(run_key, access.user, label_table, keys, settings=settings) as view:
        yield dataclasses.replace(access, gold_schema=view.schema, s3_files=view.files, s3_own=view.own)


def script_data_binds(folder: Path, settings: Settings) -> list[Bind]:
    """What of the platform's data a sandboxed script reads, read-only: embedded, the Feast registry
    and a view of the gold layer without the labels the gate holds back (``folder`` receives it);
    production, nothing (its stores are services behind doors, see store_doors)."""
    paths = feature_store.script_data_paths(settings)  # creates the store folders the registry points into
    if settings.profile != "embedded":
        return [Bind(path) for path in paths]
    feature_store.open_store(settings)  # opening the store makes its registry when there is none
    keys = holdback.key_columns(settings)  # the same keys the gate picks its rows by
    # The registry alone of the Feast folder: scripts train offline, and an online store may hold any
    # materialized view, labels included.
    registry = settings.data_dir / "feast" / "registry.db"
    binds = [Bind(registry)] if registry.exists() else []
    return [*binds, *holdback.script_gold_view(folder, training_data.DEFAULT_LABEL_TABLE, keys, settings=settings)]


def register_script_model(
    params: dict[str, Any], ran: dict[str, Any], upload: dict[str, Any], *, dag_id: str, run_id: str
) -> dict[str, Any]:
    """Find the model the script logged in its run and register it (once per DAG run), for the team
    ``check_upload`` found the run's user may train for."""
    team = upload["team"]
    hook = MlflowHook()
    model = find_logged_model(hook, ran["mlflow_run_id"], params["model_name"], who="the script")
    if not params.get("use_feast", True):  # the script's own metric is all the gate will have: fail before registering
        gate_metric(params, hook.client.get_run(ran["mlflow_run_id"]).data.metrics)
    tags = lineage_tags(
        dag_id=dag_id,
        run_id=run_id,
        origin=SCRIPT_ORIGIN,
        feature_views=[params.get("feature_view_name") or "customer_features"] if params.get("use_feast", True) else [],
        gold_snapshots={},
        extra={
            "source": "train_script",
            "script_name": params["script_name"],
            SCRIPT_REQUIREMENTS_TAG: json.dumps(sorted(params.get("requirements") or [])),
        },
    )
    version, created = ModelRegistry(hook).register(
        params["model_name"], model.model_uri, ran["mlflow_run_id"], tags, team=team, model_id=model.model_id
    )
    log.info("%s %s version %s", "registered" if created else "found already registered", version.name, version.version)
    return {"model_name": version.name, "version": str(version.version), "created": created}


def gate_script_model(params: dict[str, Any], ran: dict[str, Any], registered: dict[str, Any]) -> GateDecision:
    """Gate the script's model on a score the platform measured itself, where it can.

    When the script trained on a feature view the platform knows (``use_feast``), the platform scores
    the model in a sandbox on its own point-in-time holdout of that view, and the champion on the
    same rows. Otherwise only the metric the script logged about itself exists: it may make the first
    champion of a model, but replaces a champion only when the request trusts it
    (``promotion.trust_script_metric``).
    """
    hook = MlflowHook()
    registry = ModelRegistry(hook)
    promotion = params.get("promotion") or {}
    min_improvement = float(promotion.get("min_improvement") or 0.0)
    name, number = registered["model_name"], registered["version"]
    holdout, why = platform_holdout(params) if params.get("use_feast", True) else (None, "the script did not use Feast")
    if holdout is not None:
        features, target = holdout
        try:
            predictions, probabilities = evaluation.predict(hook, hook.client.get_model_version(name, number), features)
        except InputError as error:
            holdout, why = None, str(error)
    if holdout is not None:
        measured = evaluation.scores(target, predictions, probabilities)
        metric = promotion.get("metric") or ("roc_auc" if probabilities is not None else "rmse")
        if metric not in measured:
            raise runner.ScriptError(f"the platform's holdout gives no {metric} for this model: {sorted(measured)}")
        log.info(
            "held-back rows (%d, which the script could not read): %s",
            len(target),
            {key: round(value, 4) for key, value in measured.items()},
        )
        decision = registry.gate(
            name,
            number,
            metric=metric,
            score=measured[metric],
            min_improvement=min_improvement,
            score_champion=lambda champion: evaluation.metric_on(hook, champion, features, target, metric),
            metric_source="platform",
        )
    else:
        log.info("gating on the script's own metric: %s", why)
        logged = hook.client.get_run(ran["mlflow_run_id"]).data.metrics
        metric = gate_metric(params, logged)
        decision = registry.gate(
            name,
            number,
            metric=metric,
            score=logged[metric],
            min_improvement=min_improvement,
            metric_source="script",
            may_replace_champion=bool(promotion.get("trust_script_metric")),
        )
    log.info("gate: %s v%s -> @%s: %s", decision.model_name, decision.version, decision.alias, decision.reason)
    return decision


def platform_holdout(params: dict[str, Any]) -> tuple[tuple[Any, Any] | None, str]:
    """The platform's own holdout for a script that trained on a feature view: the label table's
    held-back rows (:mod:`asgard.training.holdback`, which no script reads) with the view's features
    as of each row (the label table's point-in-time join); or why there is none."""
    view = params.get("feature_view_name") or "customer_features"
    target = params.get("target_column") or "churned"
    store = feature_store.open_store()
    keys, share = holdback.key_columns(), holdback.fraction()

    def held_rows(labels: Any) -> Any:
        return labels[holdback.held_back(labels, share, keys)]

    try:
        source = training_data.check_data_source({"feature_views": [view], "target_column": target}, store)
        frame, _ = training_data.build_training_set(source, store, label_rows=held_rows)
    except InputError as error:
        return None, f"no platform holdout for feature view {view!r}: {error}"
    return (frame[source.feature_names], frame[target]), ""


def gate_metric(params: dict[str, Any], logged: dict[str, float]) -> str:
    """The metric the gate compares: the conf's, else the first of DEFAULT_METRICS the script logged."""
    metric = (params.get("promotion") or {}).get("metric") or next((m for m in DEFAULT_METRICS if m in logged), None)
    if metric is None or metric not in logged:
        wanted = metric or " or ".join(DEFAULT_METRICS)
        raise runner.ScriptError(
            f"the script logged no {wanted} metric to gate on; it logged: {', '.join(sorted(logged)) or 'none'}"
        )
    return metric
