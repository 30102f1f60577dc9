"""What the ``train_model`` tasks do, kept out of the DAG file and testable without a scheduler.

One MLflow run per DAG run: the dataset task creates it (found again on a retry), every later task
logs into it. Data moves between tasks as run-scoped Parquet files; XCom carries only their paths,
the MLflow run id, the model URI, the version and the gate's decision.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.core.storage import Location
from asgard.features import store as feature_store
from asgard.hooks.mlflow import MlflowHook
from asgard.registry import metrics
from asgard.registry.models import GateDecision, ModelRegistry
from asgard.registry.ownership import run_access
from asgard.registry.versions import (
    FEATURES_ARTIFACT,
    GATE_TAG_PREFIX,
    GOLD_SNAPSHOTS_TAG,
    HOLDOUT_ARTIFACT,
    HOLDOUT_SAMPLE_ROWS,
    HOLDOUT_TAG_PREFIX,
    MODEL_ARTIFACT,
    PLATFORM_ORIGIN,
    PROFILE_ARTIFACT,
    REFERENCE_SAMPLE_ARTIFACT,
    REFERENCE_SAMPLE_ROWS,
    REQUEST_ARTIFACT,
    lineage_tags,
    prepare_features,
    reserved_tag,
)
from asgard.training import data as training_data
from asgard.training import evaluation, trainers

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def validate_request(params: dict[str, Any], dag_run: Any) -> dict[str, Any]:
    """Everything a request can get wrong, checked before anything is created; the normalised request.

    First of all, whether the run's user may train into the model (its team's members and admins):
    ``team`` becomes the team the version is registered for.
    """
    request = json.loads(json.dumps(dict(params)))  # plain JSON: what XCom carries
    request["team"] = run_access(dag_run, request["model_name"], may_create=True, new_model_team=request.get("team"))
    check_tags(request.get("tags") or {})
    spec = trainers.ModelSpec.from_request(request)
    promotion = dict(request.get("promotion") or {})
    metric = promotion.get("metric") or metrics.DEFAULT_METRIC[spec.model_type]
    metrics.check_metric(spec.model_type, metric)
    source = training_data.check_data_source(request["data_source"], feature_store.open_store())
    request.update(
        algorithm=spec.algorithm,
        data_source=source.as_dict(),
        promotion={"metric": metric, "min_improvement": float(promotion.get("min_improvement") or 0.0)},
    )
    log.info(
        "training %s: %s %s (%s) on %d features of %s, target %s; gate on %s",
        request["model_name"],
        spec.framework,
        spec.model_type,
        spec.algorithm,
        len(source.features),
        ", ".join(source.feature_views),
        source.target_column,
        metric,
    )
    return request


def check_tags(tags: dict[str, str]) -> None:
    """A request's own tags may not take the names of the platform's lineage and outcome tags."""
    refused = sorted(key for key in tags if reserved_tag(key))
    if refused:
        raise InputError(f"tags {', '.join(refused)} are the platform's own (lineage, origin, gate, deployment)")


def build_training_set(request: dict[str, Any], *, dag_id: str, run_id: str) -> dict[str, Any]:
    """Join, split and store the training set; open the DAG run's MLflow run and log the data's lineage."""
    source = training_data.DataSource.from_dict(request["data_source"])
    frame, lineage = training_data.build_training_set(source, feature_store.open_store())
    train, holdout = training_data.split(
        frame,
        source.target_column,
        request["model_type"],
        test_size=float(request.get("test_size", 0.2)),
        seed=int(request.get("random_state", 42)),
    )
    # The next tasks may run on another worker: the splits go to the run's shared storage.
    storage = training_data.run_storage(dag_id, run_id)
    paths = {
        "train_path": storage.child("train.parquet").write_parquet(train).uri,
        "holdout_path": storage.child("holdout.parquet").write_parquet(holdout).uri,
    }
    hook = MlflowHook()
    run = hook.get_or_create_run(
        experiment_name=request["experiment_name"], dag_id=dag_id, run_id=run_id, tags=request.get("tags") or {}
    )
    mlflow_run_id = run.info.run_id
    _log_params(
        hook,
        mlflow_run_id,
        {
            "framework": request["framework"],
            "model_type": request["model_type"],
            "algorithm": request["algorithm"],
            "feature_views": ",".join(source.feature_views),
            "target_column": source.target_column,
            "label_table": source.label_table,
            "training_rows": len(train),
            "holdout_rows": len(holdout),
            "test_size": request.get("test_size", 0.2),
            **{f"hp.{key}": value for key, value in (request.get("hyperparameters") or {}).get("params", {}).items()},
        },
    )
    hook.client.set_tag(mlflow_run_id, GOLD_SNAPSHOTS_TAG, json.dumps(lineage["gold_snapshots"], sort_keys=True))
    log.info(
        "training set: %d rows (%d train, %d holdout) from %s; MLflow run %s",
        len(frame),
        len(train),
        len(holdout),
        lineage["gold_snapshots"],
        mlflow_run_id,
    )
    return {"mlflow_run_id": mlflow_run_id, **paths, "lineage": lineage}


def fit_model(request: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """Fit on the train split, score on the holdout, log model, metrics and reference profile to MLflow."""
    import mlflow

    spec = trainers.ModelSpec.from_request(request)
    hook = MlflowHook()
    earlier = _logged_model(hook, dataset["mlflow_run_id"], spec.model_type)
    if earlier is not None:  # a retry after the model was logged: one model per run, not one per try
        log.info("model already logged by an earlier try: %s", earlier["model_uri"])
        return earlier
    source = training_data.DataSource.from_dict(request["data_source"])
    train, holdout = _split(dataset, "train_path"), _split(dataset, "holdout_path")
    x_train = prepare_features(train[source.feature_names])
    x_holdout = prepare_features(holdout[source.feature_names])
    y_train, y_holdout = train[source.target_column], holdout[source.target_column]

    model = spec.fit(x_train, y_train)
    scores = metrics.evaluate(model, x_holdout, y_holdout, spec.model_type)
    baseline = metrics.baseline_metrics(y_train, y_holdout, spec.model_type)
    log.info("holdout metrics %s; trivial baseline %s", _rounded(scores), _rounded(baseline))

    example = x_holdout.dropna().head(5)
    with hook.active_run(dataset["mlflow_run_id"]):
        mlflow.log_metrics(scores)
        mlflow.log_metrics({f"baseline_{name}": value for name, value in baseline.items()})
        mlflow.log_dict(training_data.reference_profile(x_train, y_train), PROFILE_ARTIFACT)
        mlflow.log_dict(
            {"features": source.features, "target": source.target_column, "model_type": spec.model_type},
            FEATURES_ARTIFACT,
        )
        mlflow.log_dict({**request, "data_source": source.as_conf()}, REQUEST_ARTIFACT)
        _log_frame(x_holdout.head(HOLDOUT_SAMPLE_ROWS), HOLDOUT_ARTIFACT)
        _log_frame(x_train.sample(min(len(x_train), REFERENCE_SAMPLE_ROWS), random_state=0), REFERENCE_SAMPLE_ARTIFACT)
        info = mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=trainers.model_signature(model, example),
            input_example=example,
            pip_requirements=trainers.pip_requirements(spec.framework),
            # skops, MLflow's default, cannot hold XGBoost/LightGBM estimators and scans every loaded
            # module for each save; loading is gated by MlflowHook.load_model either way.
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
    log.info("logged %s to MLflow run %s", info.model_uri, dataset["mlflow_run_id"])
    return {"model_uri": info.model_uri, "model_id": info.model_id, "metrics": scores, "baseline": baseline}


def _split(dataset: dict[str, Any], key: str) -> pd.DataFrame:
    from asgard.core.settings import get_settings

    return Location(dataset[key], get_settings().aws_conn_id).read_parquet()


def _log_frame(frame: Any, artifact: str) -> None:
    import tempfile
    from pathlib import Path

    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / Path(artifact).name
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(artifact).parent))


def register_model(
    request: dict[str, Any], dataset: dict[str, Any], fitted: dict[str, Any], *, dag_id: str, run_id: str
) -> dict[str, Any]:
    """Register the run's model as a new version with lineage tags (once per DAG run, even on retry)."""
    source = training_data.DataSource.from_dict(request["data_source"])
    tags = lineage_tags(
        dag_id=dag_id,
        run_id=run_id,
        origin=PLATFORM_ORIGIN,
        feature_views=list(source.feature_views),
        gold_snapshots=dataset["lineage"]["gold_snapshots"],
        extra={
            "framework": request["framework"],
            "model_type": request["model_type"],
            "algorithm": request["algorithm"],
            "training.rows": dataset["lineage"]["rows"],
            **{f"{HOLDOUT_TAG_PREFIX}{name}": value for name, value in fitted["metrics"].items()},
        },
    )
    version, created = ModelRegistry(MlflowHook()).register(
        request["model_name"],
        fitted["model_uri"],
        dataset["mlflow_run_id"],
        tags,
        team=request["team"],
        model_id=fitted.get("model_id"),
    )
    log.info("%s %s version %s", "registered" if created else "found already registered", version.name, version.version)
    return {"model_name": version.name, "version": str(version.version), "created": created}


def gate_model(
    request: dict[str, Any], dataset: dict[str, Any], fitted: dict[str, Any], registered: dict[str, Any]
) -> GateDecision:
    """Evaluate the current champion on this run's holdout and promote the new version or not."""

    source = training_data.DataSource.from_dict(request["data_source"])
    holdout = _split(dataset, "holdout_path")
    promotion = request["promotion"]
    hook = MlflowHook()
    features, target = prepare_features(holdout[source.feature_names]), holdout[source.target_column]
    decision = ModelRegistry(hook).gate(
        registered["model_name"],
        registered["version"],
        metric=promotion["metric"],
        score=fitted["metrics"][promotion["metric"]],
        min_improvement=promotion["min_improvement"],
        score_champion=lambda champion: evaluation.metric_on(hook, champion, features, target, promotion["metric"]),
    )
    hook.client.set_tag(
        dataset["mlflow_run_id"], f"{GATE_TAG_PREFIX}decision", "promoted" if decision.promoted else "challenger"
    )
    log.info(
        "gate: %s v%s -> @%s: %s",
        decision.model_name,
        decision.version,
        decision.alias,
        decision.reason,
    )
    return decision


def _logged_model(hook: MlflowHook, mlflow_run_id: str, model_type: str) -> dict[str, Any] | None:
    """The model an earlier try of ``fit_model`` logged to this run, with the metrics it logged."""
    for model in hook.logged_models(mlflow_run_id):
        if model.name == MODEL_ARTIFACT:
            logged = hook.client.get_run(mlflow_run_id).data.metrics
            names = metrics.METRICS[model_type]
            return {
                "model_uri": model.model_uri,
                "model_id": model.model_id,
                "metrics": {name: logged[name] for name in names if name in logged},
                "baseline": {name: logged[f"baseline_{name}"] for name in names if f"baseline_{name}" in logged},
            }
    return None


def _log_params(hook: MlflowHook, run_id: str, params: dict[str, Any]) -> None:
    """Log params once: a retried task finds them logged already (MLflow params are write-once)."""
    from mlflow.entities import Param

    logged = hook.client.get_run(run_id).data.params
    fresh = [Param(key, str(value)[:6000]) for key, value in params.items() if key not in logged]
    if fresh:
        hook.client.log_batch(run_id, params=fresh)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in values.items()}
