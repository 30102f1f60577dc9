"""Monitoring alerts through Airflow notifiers.

The default notifier writes each alert to the task log. More are configured with
``ASGARD_ALERT_NOTIFIERS``: comma-separated ``module:factory`` paths, each factory returning an
Airflow notifier; the alert text is in the context as ``asgard_alert_message`` (so a provider's
notifier is configured with a template, e.g. ``SlackNotifier(text="{{ asgard_alert_message }}")``).
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

log = logging.getLogger(__name__)

NOTIFIERS_ENV = "ASGARD_ALERT_NOTIFIERS"


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
    for path in filter(None, (item.strip() for item in os.environ.get(NOTIFIERS_ENV, "").split(","))):
        module, _, factory = path.partition(":")
        if not factory:
            raise ValueError(f"{NOTIFIERS_ENV} entries are module:factory, got {path!r}")
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
