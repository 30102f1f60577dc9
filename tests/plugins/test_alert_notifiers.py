"""ASGARD_ALERT_NOTIFIERS: the documented webhook notifier (include/examples/alert_notifiers.py, the HTTP
provider's HttpNotifier) delivers a monitoring run's alert text to a real HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from asgard.core.settings import REPO_ROOT
from asgard.monitoring.alerts import LogAlertNotifier, alert_message, configured_notifiers


@pytest.fixture
def webhook_server():
    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()


def test_the_documented_webhook_notifier_posts_the_alerts(webhook_server, monkeypatch):
    url, received = webhook_server
    monkeypatch.syspath_prepend(str(REPO_ROOT / "include" / "examples"))
    monkeypatch.setenv("ASGARD_ALERT_NOTIFIERS", "alert_notifiers:webhook")
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", json.dumps({"conn_type": "http", "host": f"{url}/alerts"}))
    results = [
        {"model_name": "churn_predictor", "model_version": 3, "alerts": ["feature drift on total_purchases: 0.31"],
         "report": "reports/churn_predictor/2026-12-01.html"},
    ]  # fmt: skip
    message = alert_message(results)
    notifiers = configured_notifiers()
    assert isinstance(notifiers[0], LogAlertNotifier) and len(notifiers) == 2
    notifiers[1]({"asgard_alert_message": message, "asgard_alerts": results})
    assert received == [("/alerts", {"text": message})]
    assert "churn_predictor v3: feature drift on total_purchases: 0.31" in message


def test_an_entry_that_is_not_module_factory_is_named(monkeypatch):
    monkeypatch.setenv("ASGARD_ALERT_NOTIFIERS", "alert_notifiers.webhook")
    with pytest.raises(ValueError, match=r"module:factory, got 'alert_notifiers.webhook'"):
        configured_notifiers()
