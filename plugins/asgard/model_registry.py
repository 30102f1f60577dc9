"""Model versions in the MLflow registry: registering a run's model once, and the champion gate.

Shared by ``train_model`` and ``train_script``: however a model was trained, it is registered,
gated and promoted the same way. Aliases (``@champion``, ``@challenger``) carry the decision;
stages are not used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from asgard import trainers
from asgard.errors import InputError
from asgard.hooks.mlflow import AIRFLOW_DAG_ID_TAG, AIRFLOW_RUN_ID_TAG, MlflowHook, _literal

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# Promotions are announced as Assets under this URI scheme, one per model, through this alias
# (``deploy_model`` is scheduled by it).
MODEL_ASSET_PREFIX = "mlflow://asgard/models/"
CHAMPION_MODELS_ALIAS = "asgard-champion-models"
HOLDOUT_TAG_PREFIX = "asgard.holdout."


def model_asset_uri(model_name: str) -> str:
    return f"{MODEL_ASSET_PREFIX}{model_name}"


@dataclass(frozen=True)
class GateDecision:
    model_name: str
    version: str
    promoted: bool
    metric: str
    score: float
    champion_version: str | None
    champion_score: float | None
    min_improvement: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def alias(self) -> str:
        return CHAMPION if self.promoted else CHALLENGER


class ModelRegistry:
    """Registers and gates model versions through the MLflow hook's client."""

    def __init__(self, hook: MlflowHook) -> None:
        self.hook = hook
        self.client = hook.client

    def register(
        self,
        model_name: str,
        model_uri: str,
        mlflow_run_id: str,
        tags: dict[str, Any],
        *,
        model_id: str | None = None,
    ) -> tuple[ModelVersion, bool]:
        """The version of ``model_name`` made from ``mlflow_run_id``'s model, and whether it is new.

        A retried task finds the version its first try created (by run id) instead of adding a
        second one for the same DAG run.
        """
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model_name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        existing = self.client.search_model_versions(
            f"name = {_literal(model_name)} and run_id = {_literal(mlflow_run_id)}"
        )
        if existing:
            return existing[0], False
        version = self.client.create_model_version(
            model_name,
            source=model_uri,
            run_id=mlflow_run_id,
            tags={k: str(v) for k, v in tags.items()},
            model_id=model_id,
        )
        return version, True

    def champion(self, model_name: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(model_name, CHAMPION)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def gate(
        self,
        model_name: str,
        version: str,
        *,
        holdout: pd.DataFrame | None,
        target: pd.Series | None,
        model_type: str | None,
        metric: str,
        score: float,
        min_improvement: float = 0.0,
    ) -> GateDecision:
        """Compare ``version`` with the current champion on the same holdout and set the aliases.

        The new version takes ``@champion`` when it is at least as good as the champion by
        ``min_improvement`` on ``metric`` (or when there is no champion); otherwise it gets
        ``@challenger``. The decision and both scores are tagged on the version. With no
        ``holdout`` the champion's recorded score stands in for a fresh one.
        """
        champion = self.champion(model_name)
        champion_version = champion.version if champion else None
        champion_score: float | None = None
        if champion is None:
            promoted, reason = True, "no current champion"
        elif str(champion.version) == str(version):
            promoted, reason, champion_score = True, "already the champion (a retried gate)", score
        else:
            champion_score, how = self._champion_score(champion, holdout, target, model_type, metric)
            if champion_score is None:
                promoted, reason = True, f"champion v{champion.version} {how}"
            else:
                promoted = trainers.better(metric, score, champion_score, min_improvement)
                verdict = "at least as good as" if promoted else "not better than"
                reason = (
                    f"{metric} {score:.4f} is {verdict} champion v{champion.version}'s {champion_score:.4f} "
                    f"({how}) with min_improvement {min_improvement}"
                )
        decision = GateDecision(
            model_name, str(version), promoted, metric, score, champion_version, champion_score, min_improvement, reason
        )
        self._record(decision)
        return decision

    def _champion_score(
        self,
        champion: ModelVersion,
        holdout: pd.DataFrame | None,
        target: pd.Series | None,
        model_type: str | None,
        metric: str,
    ) -> tuple[float | None, str]:
        """The champion's ``metric`` on this holdout; else its recorded score; else None and why.

        Without a holdout (a user script evaluates its own model) both sides are recorded scores.
        """
        if holdout is None:
            problem = "has no shared holdout with this model"
        else:
            try:
                model = self.hook.load_model(f"models:/{champion.name}/{champion.version}")
                columns = _input_columns(model, holdout)
                value = trainers.evaluate(model, holdout[columns], target, model_type).get(metric)
                if value is not None:
                    return value, "scored on the same holdout"
                problem = f"cannot produce {metric}"
            except Exception as error:  # a champion from other features or another framework
                problem = f"could not be scored on this holdout ({type(error).__name__}: {error})"
                log.warning("champion v%s %s", champion.version, problem)
        recorded = self.recorded_score(champion, metric)
        if recorded is not None:
            return recorded, f"{problem}; compared with its recorded {metric}"
        return None, f"{problem} and has no recorded {metric}"

    def recorded_score(self, version: ModelVersion, metric: str) -> float | None:
        """``metric`` as recorded for a version: its holdout tag, else the metric its run logged."""
        tagged = (version.tags or {}).get(f"{HOLDOUT_TAG_PREFIX}{metric}")
        if tagged is not None:
            return float(tagged)
        if version.run_id:
            return self.client.get_run(version.run_id).data.metrics.get(metric)
        return None

    def _record(self, decision: GateDecision) -> None:
        self.client.set_registered_model_alias(decision.model_name, decision.alias, decision.version)
        tags = {
            "gate.decision": "promoted" if decision.promoted else "challenger",
            "gate.metric": decision.metric,
            "gate.score": decision.score,
            "gate.champion_version": decision.champion_version or "",
            "gate.champion_score": "" if decision.champion_score is None else decision.champion_score,
            "gate.reason": decision.reason,
        }
        for key, value in tags.items():
            self.client.set_model_version_tag(decision.model_name, decision.version, key, str(value))


def lineage_tags(
    *, dag_id: str, run_id: str, feature_views: list[str], gold_snapshots: dict[str, Any], extra: dict[str, Any]
) -> dict[str, str]:
    """The tags that tie a model version to the Airflow run and the data it was trained on."""
    return {
        AIRFLOW_DAG_ID_TAG: dag_id,
        AIRFLOW_RUN_ID_TAG: run_id,
        "feast.feature_views": ",".join(feature_views),
        "gold.snapshots": json.dumps(gold_snapshots, sort_keys=True),
        **{key: str(value) for key, value in extra.items()},
    }


def _input_columns(model: Any, holdout: pd.DataFrame) -> list[str]:
    """The columns the model was fitted on (all of the holdout's when it does not say)."""
    names = getattr(model, "feature_names_in_", None)
    return list(names) if names is not None else list(holdout.columns)


def announce_promotion(decision: GateDecision, outlet_events: Any) -> None:
    """Emit the model's Asset (through the champion-models alias) when the gate promoted it."""
    if not decision.promoted:
        return
    from airflow.sdk import Asset, AssetAlias

    outlet_events[AssetAlias(CHAMPION_MODELS_ALIAS)].add(
        Asset(model_asset_uri(decision.model_name)),
        extra={"model_name": decision.model_name, "version": decision.version, decision.metric: decision.score},
    )


def champions(hook: MlflowHook) -> Iterator[ModelVersion]:
    """The ``@champion`` version of every registered model that has one (every page of the registry)."""
    from mlflow.exceptions import MlflowException

    token = None
    while True:
        page = hook.client.search_registered_models(max_results=1000, page_token=token)
        for model in page:
            try:
                yield hook.client.get_model_version_by_alias(model.name, "champion")
            except MlflowException:
                continue
        token = page.token
        if not token:
            return


class ModelNotFoundError(InputError):
    """A model, version or run the caller named is not in the registry."""


def find_logged_model(hook: MlflowHook, mlflow_run_id: str, model_name: str, *, who: str = "the run"):
    """The one model ``mlflow_run_id`` logged, or the one named ``model_name`` among several."""
    models = hook.logged_models(mlflow_run_id)
    if not models:
        raise ModelNotFoundError(
            f"{who} logged no model to MLflow run {mlflow_run_id} "
            "(log one with mlflow.<flavor>.log_model inside mlflow.start_run())"
        )
    if len(models) == 1:
        return models[0]
    named = [model for model in models if model.name == model_name]
    if len(named) != 1:
        names = ", ".join(sorted(model.name for model in models))
        raise ModelNotFoundError(
            f"{who} logged {len(models)} models ({names}); name the one to register {model_name!r}"
        )
    return named[0]


def register_run_model(
    hook: MlflowHook, model_name: str, mlflow_run_id: str, *, description: str = "", tags: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Register the model an MLflow run logged as a version of ``model_name`` (once per run), ungated."""
    from mlflow.exceptions import MlflowException

    try:
        hook.client.get_run(mlflow_run_id)
    except MlflowException as error:
        raise ModelNotFoundError(f"MLflow run {mlflow_run_id!r} does not exist") from error
    model = find_logged_model(hook, mlflow_run_id, model_name)
    version, created = ModelRegistry(hook).register(
        model_name, model.model_uri, mlflow_run_id, {"source": "registry", **(tags or {})}, model_id=model.model_id
    )
    if description:
        hook.client.update_model_version(model_name, version.version, description=description)
    return {
        "model_name": model_name,
        "version": str(version.version),
        "run_id": mlflow_run_id,
        "model_uri": f"models:/{model_name}/{version.version}",
        "status": "registered" if created else "already_registered",
    }


def describe_models(hook: MlflowHook) -> list[dict[str, Any]]:
    """Every registered model: its aliases, newest version and what serves."""
    return [_model_summary(hook, model) for model in hook.client.search_registered_models(max_results=1000)]


def describe_model(hook: MlflowHook, model_name: str) -> dict[str, Any]:
    """One registered model with every version: aliases, metrics, gate decision and deployed endpoint."""
    from mlflow.exceptions import MlflowException

    try:
        model = hook.client.get_registered_model(model_name)
    except MlflowException as error:
        raise ModelNotFoundError(f"model {model_name!r} is not registered") from error
    versions = hook.client.search_model_versions(f"name = {_literal(model_name)}", order_by=["version_number DESC"])
    return {
        **_model_summary(hook, model),
        "versions": [_version_details(hook, version) for version in versions],
    }


def _model_summary(hook: MlflowHook, model: Any) -> dict[str, Any]:
    aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
    latest = max((int(version.version) for version in model.latest_versions or []), default=None)
    return {
        "model_name": model.name,
        "description": model.description or "",
        "aliases": aliases,
        "latest_version": None if latest is None else str(latest),
        "created_at": _millis_iso(model.creation_timestamp),
        "updated_at": _millis_iso(model.last_updated_timestamp),
        "tags": dict(model.tags or {}),
    }


def _version_details(hook: MlflowHook, version: ModelVersion) -> dict[str, Any]:
    from asgard.deployment import DEPLOY_TAG_PREFIX

    tags = dict(version.tags or {})
    metrics = hook.client.get_run(version.run_id).data.metrics if version.run_id else {}
    deployment = {
        key.removeprefix(DEPLOY_TAG_PREFIX): value for key, value in tags.items() if key.startswith(DEPLOY_TAG_PREFIX)
    }
    return {
        "version": str(version.version),
        "aliases": list(version.aliases or []),
        "run_id": version.run_id,
        "status": version.status,
        "description": version.description or "",
        "created_at": _millis_iso(version.creation_timestamp),
        "metrics": metrics,
        "gate": {key.removeprefix("gate."): value for key, value in tags.items() if key.startswith("gate.")},
        "deployment": deployment or None,
        "tags": {key: value for key, value in tags.items() if not key.startswith((DEPLOY_TAG_PREFIX, "gate."))},
    }


def _millis_iso(millis: int | None) -> str | None:
    from datetime import UTC, datetime

    return None if millis is None else datetime.fromtimestamp(millis / 1000, UTC).isoformat()
