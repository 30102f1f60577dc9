"""Retraining driven by data: persistent drift (``monitor_model``) and fresh features.

Both end the same way: a train_model run with the conf that trained the version being replaced
(``training/request.json`` on its run), under a run id fixed when the request is made, so a
retried hop cannot start a second training and a caller can follow the one it asked for.

- Drift: ``monitor_model`` emits one ``asgard-retraining-requests`` Asset event per model whose
  breach persisted (once per cool-down, claimed in the monitoring database).
- Features: a ``@champion`` trained with ``retraining.on_new_features`` is retrained when one of
  its feature views is materialized again (their ``feast://asgard/feature_view/<name>`` Assets),
  unless the model already has a version newer than those features, or one younger than
  ``retraining.min_interval_hours`` (default 24). ``retrain_model`` runs one at a time and waits
  for the training it starts, so the next run sees that version: no retrain storm.

``retrain_model`` is scheduled by both and runs train_model once per request.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

RETRAINING_REQUESTS = "asgard-retraining-requests"
# The one DAG whose events on RETRAINING_REQUESTS are retraining requests (its request_retraining task).
MONITORING_DAG = "monitor_model"
DEFAULT_MIN_INTERVAL_HOURS = 24.0


def train_run_id(model_name: str, requested_by: str) -> str:
    """``retrain__<model>__<the run that asked>__<mac>``: the same for every retry of the request, and
    unguessable before it is made (the MAC's key is derived from Airflow's JWT secret), so no user can
    take the id first with a run of their own (which the retraining would take for its own and skip)."""
    return f"retrain__{model_name}__{requested_by}__{_mac(model_name, requested_by)}"


def requested_by(run_id: str, model_name: str) -> str | None:
    """The run that asked for the retraining ``run_id`` is; None when no retraining made that id (a run
    someone named alike)."""
    import hmac

    prefix = f"retrain__{model_name}__"
    asker, _, mac = run_id.removeprefix(prefix).rpartition("__")
    if not run_id.startswith(prefix) or not asker or not hmac.compare_digest(mac, _mac(model_name, asker)):
        return None
    return asker


def _mac(model_name: str, asker: str) -> str:
    import hashlib
    import hmac

    from airflow.configuration import conf

    secret = conf.get("api_auth", "jwt_secret", fallback="") or ""
    if not secret:  # every profile and compose sets it; an install that does not has guessable retraining ids
        log.warning("[api_auth] jwt_secret is not set: retraining run ids are keyed by a known constant")
    key = hmac.new(secret.encode(), b"asgard retraining run ids", hashlib.sha256).digest()
    return hmac.new(key, f"{model_name}\0{asker}".encode(), hashlib.sha256).hexdigest()[:20]


def drift_requests(results: list[dict[str, Any]], monitor_run_id: str) -> list[dict[str, Any]]:
    """What a monitoring run announces on the retraining Asset: per model, train_model's conf and
    the run id that training will get."""
    return [
        {
            "model_name": result["model_name"],
            "model_version": result["model_version"],
            "reason": "persistent drift or low accuracy",
            "conf": result["retrain"],
            "train_run_id": train_run_id(result["model_name"], monitor_run_id),
        }
        for result in results
        if result["retrain"]
    ]


def requests_for(triggering_asset_events: Any, run_id: str, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The train_model runs a retrain_model run starts: one per drift request, one per opted-in
    champion whose feature views were materialized; once each, oldest first."""
    from asgard.features.store import FEATURE_VIEW_ASSET_PREFIX

    events = sorted(
        (event for per_asset in (triggering_asset_events or {}).values() for event in per_asset),
        key=lambda event: event.timestamp,
    )
    requests = []
    for event in events:
        if event.asset.uri != RETRAINING_REQUESTS:
            continue
        # A retrain acts for the model's team with the conf the event carries: only monitoring may ask.
        # Airflow's REST API lets any user post an event on an Asset, with any extra, but never sets its
        # source task: such an event would train another team's model with a conf of the poster's choosing.
        source = getattr(event, "source_dag_id", None)
        if source != MONITORING_DAG:
            log.warning("a retraining request not emitted by %s (source: %s) was left out", MONITORING_DAG, source)
            continue
        recorded = recorded_request(event.extra or {}, str(getattr(event, "source_run_id", "") or ""))
        if recorded is not None:
            requests.append(recorded)
    materialized: dict[str, datetime] = {}  # feature view -> when its newest event was emitted
    for event in events:
        if event.asset.uri.startswith(FEATURE_VIEW_ASSET_PREFIX):
            materialized[event.asset.uri.removeprefix(FEATURE_VIEW_ASSET_PREFIX)] = event.timestamp
    if materialized:
        requests += feature_requests(materialized, run_id, now=now or datetime.now(UTC))
    triggers: dict[str, dict[str, Any]] = {}
    for request in requests:
        if not request.get("conf") or not request.get("train_run_id"):
            log.warning("a retraining request without conf or run id was left out: %s", request)
            continue
        log.info(
            "%s v%s (%s): retraining as train_model run %s",
            request.get("model_name"),
            request.get("model_version"),
            request.get("reason"),
            request["train_run_id"],
        )
        triggers[request["train_run_id"]] = {"conf": request["conf"], "trigger_run_id": request["train_run_id"]}
    return list(triggers.values())


def recorded_request(extra: dict[str, Any], monitor_run_id: str) -> dict[str, Any] | None:
    """A drift request with the conf the registry holds for its version (the platform's own record of
    what trained it), never the event's: a monitoring task's output can be changed through Airflow's
    REST API before its event is emitted. The run id is made here too, from the monitoring run's."""
    from mlflow.exceptions import MlflowException

    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import training_request

    name, version = extra.get("model_name"), extra.get("model_version")
    if not isinstance(name, str) or not name or version is None or not monitor_run_id:
        log.warning("a retraining request naming no model version (or no monitoring run) was left out: %s", extra)
        return None
    hook = MlflowHook()
    try:
        conf = training_request(hook, hook.client.get_model_version(name, str(version)))
    except MlflowException:
        conf = None
    if conf is None:
        log.warning("%s v%s: no training request of the platform's to run again; not retrained", name, version)
        return None
    return {**extra, "conf": conf, "train_run_id": train_run_id(name, monitor_run_id)}


def feature_requests(materialized: dict[str, datetime], run_id: str, *, now: datetime) -> list[dict[str, Any]]:
    """Champions that asked to be retrained on new features of the ``materialized`` views and have
    no version trained since (nor within their minimum interval)."""
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import champions, training_request

    hook = MlflowHook()
    requests = []
    for champion in champions(hook):
        conf = training_request(hook, champion) or {}
        policy = conf.get("retraining") or {}
        fresh = sorted(set(materialized) & set((conf.get("data_source") or {}).get("feature_views") or []))
        if not policy.get("on_new_features") or not fresh:
            continue
        newest = hook.client.search_model_versions(
            f"name = '{champion.name}'", max_results=1, order_by=["creation_timestamp DESC"]
        )[0]
        trained = datetime.fromtimestamp(newest.creation_timestamp / 1000, UTC)
        interval = timedelta(hours=float(policy.get("min_interval_hours", DEFAULT_MIN_INTERVAL_HOURS)))
        features_at = max(materialized[view] for view in fresh)
        if trained >= features_at or now - trained < interval:
            log.info(
                "%s: new features in %s (materialized at %s), but v%s was trained at %s (minimum interval %s)",
                champion.name, ", ".join(fresh), features_at.isoformat(), newest.version, trained.isoformat(), interval,
            )  # fmt: skip
            continue
        requests.append(
            {
                "model_name": champion.name,
                "model_version": str(champion.version),
                "reason": f"new features in {', '.join(fresh)}",
                "conf": conf,
                "train_run_id": train_run_id(champion.name, run_id),
            }
        )
    return requests
