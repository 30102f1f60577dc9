"""Model versions in the MLflow registry: registering a run's model once, and the champion gate.

Shared by ``train_model`` and ``train_script``: however a model was trained, it is registered,
gated and promoted the same way. Aliases (``@champion``, ``@challenger``) carry the decision;
stages are not used.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.core.locks import held
from asgard.core.settings import get_settings
from asgard.hooks.mlflow import MlflowHook, mlflow_literal
from asgard.registry import metrics
from asgard.registry.ownership import TEAM_TAG, claim
from asgard.registry.versions import (
    CHALLENGER,
    CHAMPION,
    DEPLOY_TAG_PREFIX,
    GATE_TAG_PREFIX,
    HOLDOUT_TAG_PREFIX,
    alias_version,
    prefixed_tags,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

# Promotions are announced as Assets under this URI scheme, one per model, through this alias
# (``deploy_model`` is scheduled by it).
MODEL_ASSET_PREFIX = "mlflow://asgard/models/"
CHAMPION_MODELS_ALIAS = "asgard-champion-models"


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
    # Who measured ``score``: the platform on its own holdout, or the script about itself.
    metric_source: str = "platform"

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
        team: str,
        model_id: str | None = None,
    ) -> tuple[ModelVersion, bool]:
        """The version of ``model_name`` made from ``mlflow_run_id``'s model, and whether it is new.

        A new model name becomes ``team``'s; an existing one must be ``team``'s already
        (:func:`asgard.registry.ownership.claim`). A retried task finds the version its first try
        created (by run id) instead of adding a second one for the same DAG run.
        """
        claim(self.hook, model_name, team, get_settings())
        existing = self.client.search_model_versions(
            f"name = {mlflow_literal(model_name)} and run_id = {mlflow_literal(mlflow_run_id)}"
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
        return alias_version(self.hook, model_name, CHAMPION)

    def gate(
        self,
        model_name: str,
        version: str,
        *,
        metric: str,
        score: float,
        min_improvement: float = 0.0,
        score_champion: Callable[[ModelVersion], float | None] | None = None,
        metric_source: str = "platform",
        may_replace_champion: bool = True,
    ) -> GateDecision:
        """Compare ``version`` with the current champion on the same holdout and set the aliases.

        The new version takes ``@champion`` when it is at least as good as the champion by
        ``min_improvement`` on ``metric`` (or when there is no champion); otherwise it gets
        ``@challenger``. ``score_champion`` gives the champion's ``metric`` on the holdout ``score``
        came from; without it (or when it cannot) the champion's recorded score stands in. A score
        the platform did not measure itself (``metric_source`` "script") may make a first champion,
        but replaces one only when ``may_replace_champion``. The decision and both scores are
        tagged on the version.

        One gate of a model at a time (a lock in the platform's database, whichever worker runs it):
        two runs gating at once would both compare with the same champion, and the later alias
        write would win whatever the scores.
        """
        with held(get_settings().monitoring_db_url, f"gate:{model_name}", f"{model_name} v{version}"):
            return self._gate(
                model_name, str(version), metric, score, min_improvement, score_champion, metric_source,
                may_replace_champion,
            )  # fmt: skip

    def _gate(
        self,
        model_name: str,
        version: str,
        metric: str,
        score: float,
        min_improvement: float,
        score_champion: Callable[[ModelVersion], float | None] | None,
        metric_source: str,
        may_replace_champion: bool,
    ) -> GateDecision:
        champion = self.champion(model_name)
        champion_version = champion.version if champion else None
        champion_score: float | None = None
        if champion is None:
            promoted, reason = True, "no current champion"
        elif str(champion.version) == str(version):
            promoted, reason, champion_score = True, "already the champion (a retried gate)", score
        elif not may_replace_champion:
            promoted = False
            reason = (
                f"{metric} {score:.4f} is the figure the script reported about itself; it replaces champion "
                f"v{champion.version} only when the request says promotion.trust_script_metric: true"
            )
        else:
            champion_score, how = self._champion_score(champion, metric, score_champion)
            if champion_score is None:
                promoted, reason = True, f"champion v{champion.version} {how}"
            else:
                promoted = metrics.better(metric, score, champion_score, min_improvement)
                verdict = "at least as good as" if promoted else "not better than"
                reason = (
                    f"{metric} {score:.4f} is {verdict} champion v{champion.version}'s {champion_score:.4f} "
                    f"({how}) with min_improvement {min_improvement}"
                )
        decision = GateDecision(
            model_name,
            str(version),
            promoted,
            metric,
            score,
            champion_version,
            champion_score,
            min_improvement,
            reason,
            metric_source,
        )
        self._record(decision)
        return decision

    def _champion_score(
        self, champion: ModelVersion, metric: str, score_champion: Callable[[ModelVersion], float | None] | None
    ) -> tuple[float | None, str]:
        """The champion's ``metric`` on this holdout; else its recorded score; else None and why."""
        if score_champion is None:
            problem = "has no shared holdout with this model"
        else:
            try:
                value = score_champion(champion)
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
            "decision": "promoted" if decision.promoted else "challenger",
            "metric": decision.metric,
            "score": decision.score,
            "champion_version": decision.champion_version or "",
            "champion_score": "" if decision.champion_score is None else decision.champion_score,
            "reason": decision.reason,
            "metric_source": decision.metric_source,
        }
        for key, value in tags.items():
            self.client.set_model_version_tag(
                decision.model_name, decision.version, f"{GATE_TAG_PREFIX}{key}", str(value)
            )


def announce_promotion(decision: GateDecision, outlet_events: Any) -> None:
    """Emit the model's Asset (through the champion-models alias) when the gate promoted it."""
    if not decision.promoted:
        return
    from airflow.sdk import Asset, AssetAlias

    outlet_events[AssetAlias(CHAMPION_MODELS_ALIAS)].add(
        Asset(model_asset_uri(decision.model_name)),
        # The score under its metric's name, then the fields that say what to deploy: a script's metric may be
        # named anything, "model_name" too, and must not rename the promotion.
        extra={decision.metric: decision.score, "model_name": decision.model_name, "version": decision.version},
    )


def hand_on_promotions(hook: MlflowHook, promotions: list[dict[str, Any]], outlet_events: Any) -> list[str]:
    """Announce again, each as the gate announced it, promotions a deploy_model run carried but does not
    deploy itself (``asgard.deploy.rollout.other_promotions``): each starts a deploy_model run of its own.
    A version that is no longer its model's champion is not (a newer promotion has a run of its own, and
    an older version handed on late must not replace it). What was handed on."""
    from airflow.sdk import Asset, AssetAlias

    handed = []
    for extra in promotions:
        name, version = extra["model_name"], str(extra["version"])
        champion = alias_version(hook, name, CHAMPION)
        if champion is None or str(champion.version) != version:
            # Not at INFO: the task log is the handing run's team's, and this is another team's model.
            log.debug("%s v%s is no longer the champion: not handed on", name, version)
            continue
        outlet_events[AssetAlias(CHAMPION_MODELS_ALIAS)].add(Asset(model_asset_uri(name)), extra=extra)
        handed.append(f"{name} v{version}")
    return handed


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


def describe_models(hook: MlflowHook) -> list[dict[str, Any]]:
    """Every registered model: its aliases, newest version and what serves."""
    return [_model_summary(hook, model) for model in hook.client.search_registered_models(max_results=1000)]


def recorded_targets(hook: MlflowHook) -> set[str]:
    """The deploy targets any version of any model was deployed to (its ``deploy.target`` tag)."""
    from mlflow.exceptions import MlflowException

    found = set()
    for target in ("docker", "kubernetes"):
        try:
            if hook.client.search_model_versions(f"tags.`{DEPLOY_TAG_PREFIX}target` = '{target}'", max_results=1):
                found.add(target)
        except MlflowException:  # a registry that cannot filter by tag: the default target only
            log.warning("cannot search model versions by deploy target", exc_info=True)
    return found


def describe_model(hook: MlflowHook, model_name: str) -> dict[str, Any]:
    """One registered model with every version: aliases, metrics, gate decision and deployed endpoint."""
    from mlflow.exceptions import MlflowException

    try:
        model = hook.client.get_registered_model(model_name)
    except MlflowException as error:
        raise ModelNotFoundError(f"model {model_name!r} is not registered") from error
    versions = hook.client.search_model_versions(
        f"name = {mlflow_literal(model_name)}", order_by=["version_number DESC"]
    )
    return {
        **_model_summary(hook, model),
        # search_model_versions leaves each version's aliases out: the model's own map has them.
        "versions": [_version_details(hook, version, model.aliases or {}) for version in versions],
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
        "team": (model.tags or {}).get(TEAM_TAG) or get_settings().default_team,
        "tags": dict(model.tags or {}),
    }


def _version_details(hook: MlflowHook, version: ModelVersion, aliases: dict[str, Any]) -> dict[str, Any]:
    tags = dict(version.tags or {})
    run = hook.client.get_run(version.run_id) if version.run_id else None
    deployment: dict[str, Any] = {}
    for key, value in prefixed_tags(tags, DEPLOY_TAG_PREFIX).items():
        # A canary's or shadow's figures (``deploy.canary.p99_ms``) are shown together, under its name.
        group, _, figure = key.partition(".")
        if figure:
            deployment.setdefault(group, {})[figure] = value
        else:
            deployment[key] = value
    return {
        "version": str(version.version),
        "aliases": sorted(alias for alias, number in aliases.items() if str(number) == str(version.version)),
        "run_id": version.run_id,
        "experiment_id": run.info.experiment_id if run else None,
        "status": version.status,
        "description": version.description or "",
        "created_at": _millis_iso(version.creation_timestamp),
        "metrics": run.data.metrics if run else {},
        "gate": prefixed_tags(tags, GATE_TAG_PREFIX),
        "deployment": deployment or None,
        "tags": {key: value for key, value in tags.items() if not key.startswith((DEPLOY_TAG_PREFIX, GATE_TAG_PREFIX))},
    }


def _millis_iso(millis: int | None) -> str | None:
    from datetime import UTC, datetime

    return None if millis is None else datetime.fromtimestamp(millis / 1000, UTC).isoformat()
