"""Monitoring alerts: which breaches alert (those that lasted), their text, and sending them.

A breach alerts only once it has held for ``persistence`` consecutive windows (a schema change
alerts at once). Alerts go through Airflow notifiers. The default notifier writes each alert to the
task log. More are configured with ``ASGARD_ALERT_NOTIFIERS``: comma-separated ``module:factory``
paths, each factory returning an Airflow notifier; the alert text is in the context as
``asgard_alert_message`` (so a provider's notifier is configured with a template, e.g.
``SlackNotifier(text="{{ asgard_alert_message }}")``).
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from asgard.monitoring.store import MonitoringStore, Record
from asgard.monitoring.thresholds import DRIFT_TYPES, MonitoringError, Thresholds

log = logging.getLogger(__name__)


class LogAlertNotifier(BaseNotifier):
    """Writes the alert message to the task log, one line per alert."""

    template_fields = ("message",)

    def __init__(self, message: str = "{{ asgard_alert_message }}") -> None:
        super().__init__()
        self.message = message

    def notify(self, context: Any) -> None:
        for line in str(self.message).splitlines():
            log.warning("ALERT %s", line)


def configured_notifiers() -> list[BaseNotifier]:
    notifiers: list[BaseNotifier] = [LogAlertNotifier()]
    from asgard.core.settings import get_settings

    for path in filter(None, (item.strip() for item in get_settings().alert_notifiers.split(","))):
        module, _, factory = path.partition(":")
        if not factory:
            raise ValueError(f"ASGARD_ALERT_NOTIFIERS entries are module:factory, got {path!r}")
        notifiers.append(getattr(importlib.import_module(module), factory)())
    return notifiers


def alert_message(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        for text in result["alerts"]:
            lines.append(f"{result['model_name']} v{result['model_version']}: {text} (report {result['report']})")
    return "\n".join(lines)


def send_alerts(results: list[dict[str, Any]], notifiers: list[BaseNotifier] | None = None) -> int:
    """Notify once per run with every alert of it; returns how many alerts were sent."""
    from airflow.sdk import get_current_context

    message = alert_message(results)
    if not message:
        log.info("no alert in this run")
        return 0
    context = {**get_current_context(), "asgard_alert_message": message, "asgard_alerts": results}
    for notifier in notifiers or configured_notifiers():
        notifier(context)
    return message.count("\n") + 1


def decide_alerts(records: list[Record], thresholds: Thresholds, store: MonitoringStore) -> list[Record]:
    """Set ``alert_triggered`` on the records whose breach has lasted ``persistence`` windows."""
    for record in records:
        if not record.breached or record.alert_triggered:
            continue
        earlier = store.recent_breaches(
            record.model_name,
            record.model_version,
            record.metric_type,
            record.subject,
            windows=thresholds.persistence - 1,
            before=record.window_end,
        )
        if len(earlier) == thresholds.persistence - 1 and all(earlier):
            record.alert_triggered = True
            record.alerts = [_alert_text(record, thresholds)]
    return [record for record in records if record.alert_triggered]


def _alert_text(record: Record, thresholds: Thresholds) -> str:
    lasting = f" for {thresholds.persistence} windows" if thresholds.persistence > 1 else ""
    subject = f" {record.subject}" if record.subject else ""
    metrics = record.metrics
    if record.metric_type in DRIFT_TYPES:
        what = f"drift_score drift detected: {metrics['drift_score']:.3f} > {thresholds.drift}"
    elif record.metric_type == "model_performance":
        what = f"accuracy below threshold: {metrics['accuracy']:.3f} < {thresholds.accuracy}"
    else:
        what = ", ".join(f"{key} {value:.3f}" for key, value in metrics.items()) + " over threshold"
    return f"{record.metric_type}{subject}: {what}{lasting}"


def external_record(request: dict[str, Any], thresholds: Thresholds) -> Record:
    """A ``POST /mlops/monitoring`` body as a record, its alerts decided by the same thresholds (no persistence)."""
    metrics = {key: float(value) for key, value in (request.get("metrics") or {}).items()}
    odd = sorted(key for key, value in metrics.items() if not math.isfinite(value))
    if odd:  # the API refuses them already (422); no other caller gets an "inf" alert either
        raise MonitoringError(f"metrics {', '.join(odd)} must be finite numbers")
    alerts = []
    for key, value in metrics.items():
        if (
            "drift" in key or key in ("psi", "js_divergence", "ks_statistic", "wasserstein")
        ) and value > thresholds.drift:
            alerts.append(f"{key} drift detected: {value:.3f}")
        elif "missing" in key and value > thresholds.missing:
            alerts.append(f"{key} missing data: {value:.3f}")
        elif key == "accuracy" and value < thresholds.accuracy:
            alerts.append(f"accuracy below threshold: {value:.3f}")
    return Record(
        model_name=request["model_name"],
        model_version=str(request["model_version"]),
        metric_type=request["metric_type"],
        metrics=metrics,
        reference_data=request.get("reference_data"),
        current_data=request.get("current_data"),
        tags=request.get("tags") or {},
        breached=bool(alerts),
        alert_triggered=bool(alerts),
        alerts=alerts,
    )


def retrain_reason(alerts: list[Record]) -> str | None:
    """Why the model should be retrained: persistent drift (not data-quality problems, which retraining hides)."""
    drifted = [
        record for record in alerts if record.metric_type in DRIFT_TYPES or record.metric_type == "model_performance"
    ]
    if not drifted:
        return None
    return "; ".join(text for record in drifted for text in record.alerts)
