"""Alert notifiers for ``ASGARD_ALERT_NOTIFIERS`` (docs: how-to/notifier.md): each factory returns an Airflow
notifier, and ``{{ asgard_alert_message }}`` in its templates is the monitoring run's alert text."""

# --8<-- [start:webhook]
from airflow.providers.http.notifications.http import HttpNotifier


def webhook() -> HttpNotifier:
    """POST {"text": <the alerts>} to the connection ``alerts_webhook`` (its host: the webhook's whole URL)."""
    return HttpNotifier(http_conn_id="alerts_webhook", json={"text": "{{ asgard_alert_message }}"})


# --8<-- [end:webhook]
