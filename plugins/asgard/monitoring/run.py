"""Monitoring one model version over one window: drift, data quality, performance, alerts, retraining.

The steps live beside this module (reference, windows, evaluation, alerts); this is the run that
ties them together for ``monitor_model``, and the daily sweep's list of what to monitor.

A window's scored data is what the serving app logged (JSON lines with the features, the prediction
and its id: the embedded Docker target's in ``<data_dir>/prediction-logs/<model>``, cluster pods' under
``ASGARD_PREDICTION_LOG_URI``/<model> on S3) and any Parquet files the run names (batch
inputs with their features, ``score_batch`` outputs with their predictions: in the model's team's data
roots, since the run acts for that team). It is compared with
the version's training reference (``reference/profile.json`` and ``reference/sample.parquet``);
the reference predictions are the model's own on that sample, through :class:`asgard.scoring.scorer.Scorer`.

No crying wolf: below ``min_samples`` rows there is no drift verdict, and a breach alerts only once
it has held for ``persistence`` consecutive windows (a schema change alerts at once).
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from asgard.core.storage import Location, checked_connection, checked_data_path
from asgard.monitoring.alerts import decide_alerts, retrain_reason
from asgard.monitoring.evaluation import evaluate
from asgard.monitoring.reference import Reference, load_reference
from asgard.monitoring.store import Record
from asgard.monitoring.thresholds import MonitoringError, Thresholds
from asgard.monitoring.windows import assemble_window, batch_outputs, default_window, read_prediction_log, read_sources
from asgard.registry.ownership import model_team
from asgard.registry.versions import (
    DEPLOY_TAG_PREFIX,
    ORIGIN_TAG,
    PROFILE_ARTIFACT,
    REQUEST_ARTIFACT,
    champions,
    training_request,
)

log = logging.getLogger(__name__)


def deployed_models(hook: Any) -> list[dict[str, str]]:
    """Models whose ``@champion`` is serving (``deploy.status`` tag) and has a training reference:
    what the daily run checks. A serving version without one is logged and left out."""
    found = []
    for version in champions(hook):
        if (version.tags or {}).get(f"{DEPLOY_TAG_PREFIX}status") != "serving":
            continue
        if not hook.logged_json(version.run_id, PROFILE_ARTIFACT):
            # A script-trained version that logged no profile: the sweep goes on with the others.
            log.warning(
                "%s v%s is serving but cannot be monitored: its run %s logged no reference profile (%s)",
                version.name,
                version.version,
                version.run_id,
                PROFILE_ARTIFACT,
            )
            continue
        found.append({"model_name": version.name, "model_version": str(version.version)})
    return found


def _in_team_roots(paths: list[str], team: str, settings: Any) -> list[str]:
    """Of the batch outputs the Asset events name, those in the team's data roots: an event's asset is
    anyone's who may post Asset events, so it is checked as a path the request names would be."""
    from asgard.core.errors import InputError

    kept = []
    for path in paths:
        try:
            kept.append(checked_data_path(path, what="batch output", team=team, settings=settings))
        except InputError as error:
            log.warning("left out: %s", error)
    return kept


def monitor_version(
    target: dict[str, Any],
    params: dict[str, Any],
    *,
    source_run: str,
    run_after: datetime,
    batch_events: Any = None,
) -> dict[str, Any]:
    """Check one model version over the run's window; store, report, alert, and say whether to retrain.

    The window's data: the serving prediction log, the ``sources`` named in the conf, and the batch
    outputs ``score_batch`` published for this version within the window (``batch_events``).
    """
    from asgard.core.settings import get_settings
    from asgard.hooks.mlflow import MlflowHook
    from asgard.monitoring.report import render
    from asgard.monitoring.store import MonitoringStore

    settings, hook = get_settings(), MlflowHook()
    thresholds = Thresholds.from_dict(params.get("thresholds"))
    start, end = default_window(run_after, params.get("window_start"), params.get("window_end"))
    reference = load_reference(hook, target["model_name"], target.get("model_version"), target.get("alias"))
    name, version = reference.model_name, reference.model_version
    aws_conn_id = checked_connection(params.get("aws_conn_id") or "aws_default")
    frames = [
        read_prediction_log(location, start, end, version, aws_conn_id) for location in settings.prediction_logs(name)
    ]
    # The run acts for the model's team: the files it names lie in that team's data roots.
    team = model_team(hook, name, settings) or settings.default_team
    sources = [checked_data_path(path, what="sources", team=team) for path in params.get("sources") or []]
    published = [
        path
        for path in _in_team_roots(batch_outputs(batch_events, name, version, start, end), team, settings)
        if path not in sources
    ]
    if published:
        log.info("%s v%s: batch outputs of the window: %s", name, version, ", ".join(published))
    frames += read_sources(sources + published, aws_conn_id)
    label_files = [checked_data_path(path, what="labels", team=team) for path in params.get("labels") or []]
    labels = pd.concat(read_sources(label_files, aws_conn_id) or [pd.DataFrame()])
    if not labels.empty and not {"prediction_id", "label"} <= set(labels.columns):
        raise MonitoringError("label files need the columns prediction_id and label")
    window = assemble_window(reference, frames, start, end, labels)

    records, skipped = evaluate(reference, window, thresholds)
    for reason in skipped:
        log.info("%s v%s: %s", name, version, reason)
    store = MonitoringStore(settings.monitoring_db_url)
    alerts = decide_alerts(records, thresholds, store)
    for record in records:
        record.tags = {"source": "monitor_model", "source_run": source_run}
    store.replace_run(source_run, name, version, records)

    summary = {"start": start.isoformat(), "end": end.isoformat(), "rows": window.rows, "batch_outputs": published}
    report = report_location(name, f"v{version}-{end:%Y%m%dT%H%M%SZ}.html", settings)
    html = render(name, version, records, skipped, summary)
    report.write_bytes(html.encode())
    _log_to_mlflow(hook, reference.run_id, records, report, html, end)
    log.info("report: %s", report.asset_uri)
    reason = retrain_reason(alerts)
    retrain = None
    conf = _retrain_conf(hook, reference) if reason and params.get("retrain", True) else None
    if conf is not None:
        claimed = store.claim_retrain(
            name,
            version,
            reason=reason,
            source_run=source_run,
            now=datetime.now(UTC),
            cooldown=timedelta(hours=thresholds.retrain_cooldown_hours),
        )
        retrain = conf if claimed else None
        if not claimed:
            log.info("%s: persistent drift, but a retraining was requested within the cool-down", name)
    return {
        "model_name": name,
        "model_version": version,
        "window": summary,
        "checks": len(records),
        "breaches": sum(record.breached for record in records),
        "alerts": [text for record in alerts for text in record.alerts],
        "skipped": skipped,
        "report": report.uri,
        "retrain": retrain,
    }


def _retrain_conf(hook: Any, reference: Reference) -> dict[str, Any] | None:
    version = hook.client.get_model_version(reference.model_name, str(reference.model_version))
    request = training_request(hook, version)
    if request is None:
        log.warning(
            "%s v%s drifted, but it has no training request to run again (origin %s; only train_model's "
            "own %s is trusted): retrain it by hand",
            reference.model_name, reference.model_version, (version.tags or {}).get(ORIGIN_TAG, "unknown"),
            REQUEST_ARTIFACT,
        )  # fmt: skip
    return request


def report_location(model_name: str, report_name: str, settings: Any) -> Location:
    """Where one monitoring report lives (local, or S3 in production)."""
    return Location(settings.reports_root, settings.aws_conn_id).child(model_name, report_name)


def _log_to_mlflow(hook: Any, run_id: str, records: list[Record], report: Location, html: str, end: datetime) -> None:
    """Monitoring metrics on the version's training run (one point per window) and the report beside them."""
    from mlflow.entities import Metric

    stamp = int(end.timestamp() * 1000)
    metrics = [
        Metric(f"monitoring.{record.metric_type}.{record.subject or 'model'}.{key}"[:250], float(value), stamp, 0)
        for record in records
        for key, value in record.metrics.items()
        if key in ("drift_score", "missing_rate", "accuracy", "rmse")
    ]
    for offset in range(0, len(metrics), 1000):
        hook.client.log_batch(run_id, metrics=metrics[offset : offset + 1000])
    with tempfile.TemporaryDirectory() as folder:  # MLflow logs a local file, under its own name
        copy = Path(folder) / posixpath.basename(report.uri)
        copy.write_text(html)
        hook.client.log_artifact(run_id, str(copy), "monitoring")
