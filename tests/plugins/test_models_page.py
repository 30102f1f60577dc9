"""The Models page's rendering, on records shaped as the monitoring store answers them."""

from __future__ import annotations

import re

from asgard.api import models_page


def _record(feature: str, score: float, end: str, run: str = "scheduled__1", **extra) -> dict:
    return {
        "monitoring_id": f"mon-{feature}-{end}",
        "model_name": "churn",
        "model_version": "3",
        "metric_type": "feature_drift",
        "subject": feature,
        "metrics": {"drift_score": score, "psi": score},
        "tags": {"source": "monitor_model", "source_run": run},
        "alert_triggered": False,
        "alerts": [],
        "window": {"start": None, "end": end},
        "timestamp": end,
        **extra,
    }


RECORDS = [  # newest first, as the store answers
    _record(
        "total_purchases",
        0.31,
        "2026-12-02T00:00:00+00:00",
        "scheduled__2",
        alert_triggered=True,
        alerts=["total_purchases drift detected: 0.310"],
    ),
    _record("<b>odd</b>", 0.02, "2026-12-02T00:00:00+00:00", "scheduled__2"),
    _record("total_purchases", 0.05, "2026-12-01T00:00:00+00:00"),
    _record("<b>odd</b>", 0.01, "2026-12-01T00:00:00+00:00"),
    {**_record("score", 0.4, "2026-12-01T00:00:00+00:00"), "metric_type": "prediction_drift"},
]


def test_each_feature_is_one_line_over_time_with_the_threshold_and_names_escaped():
    series = models_page.drift_series(RECORDS)
    assert list(series) == ["<b>odd</b>", "total_purchases"]  # prediction drift is not a feature
    assert [score for _, score in series["total_purchases"]] == [0.05, 0.31]  # oldest first
    chart = models_page.drift_chart(RECORDS, threshold=0.1)
    assert chart.count("<polyline class='drift-series'") == 2
    assert "alert threshold 0.1" in chart and "<b>odd" not in chart and "&lt;b&gt;odd&lt;/b&gt;" in chart
    assert models_page.drift_chart([], threshold=0.1) == "<p>No feature drift measured yet.</p>"


def test_the_verdict_is_the_newest_runs_and_links_its_report():
    model = {"model_name": "churn", "aliases": {"champion": "3"}, "versions": []}
    page = models_page.model_page(model, {"records": RECORDS}, mlflow_url="http://mlflow")
    assert "Alert: total_purchases drift detected: 0.310" in page
    report = models_page.report_name("3", "2026-12-02T00:00:00+00:00")
    assert report == "v3-20261202T000000Z.html" and models_page.REPORT_NAME.match(report)
    assert f"href='../reports/churn/{report}'" in page
    logged = {**RECORDS[0], "tags": {"deployment": "production"}, "alerts": ["logged by a caller"], "window": None}
    page = models_page.model_page(model, {"records": [logged, *RECORDS]}, mlflow_url="http://mlflow")
    assert "Alert: total_purchases drift detected: 0.310" in page and "logged by a caller" not in page
    quiet = models_page.model_page(model, {"records": RECORDS[1:2]}, mlflow_url="http://mlflow")
    assert "No alert: 1 checks within their thresholds." in quiet
    assert not models_page.REPORT_NAME.match("../../etc/passwd") and not models_page.REPORT_NAME.match("v3-x.html")


RUN_ID = "manual__2026-12-02T00:00:00+00:00"


def test_versions_show_the_gate_the_deployment_and_the_links():
    version = {
        "version": "3",
        "aliases": ["champion"],
        "run_id": "abc",
        "experiment_id": "7",
        "metrics": {"roc_auc": 0.91234, "baseline_roc_auc": 0.5},
        "gate": {"decision": "promoted", "reason": "first champion"},
        "deployment": {
            "status": "serving",
            "target": "docker",
            "endpoint": "http://r/models/churn",
            "digest": "sha256:1",
            "canary": {
                "decision": "promoted",
                "reason": "within every limit over 100 requests",
                "requests": "100",
                "p99_ms": "4.2",
            },
            "decision": {"outcome": "approved", "by": "alice", "at": "2026-12-06T10:00:00Z", "reason": "<better>"},
        },
        "tags": {
            "framework": "sklearn",
            "airflow.dag_id": "train_model",
            "airflow.run_id": "manual__2026-12-02T00:00:00+00:00",
        },
    }
    model = {"model_name": "churn", "aliases": {"champion": "3"}, "versions": [version]}
    page = models_page.model_page(model, {"records": []}, mlflow_url="http://mlflow")
    assert "roc_auc 0.9123" in page and "baseline" not in page
    assert "promoted" in page and "serving on docker" in page and "sha256:1" in page
    assert "href='http://mlflow/#/experiments/7/runs/abc'" in page
    assert re.search(r"href='/dags/train_model/runs/manual__2026-12-02T00%3A00%3A00%2B00%3A00'", page)
    assert "canary: promoted<br><small>within every limit over 100 requests; requests 100, p99_ms 4.2" in page
    assert "deploy decision: approved by alice at 2026-12-06T10:00:00Z: &lt;better&gt;" in page
    assert "Not monitored yet" in page
    summary = {"model_name": "churn", "aliases": {"champion": "3"}, "latest_version": "3", "updated_at": None}
    index = models_page.models_index([summary])
    assert "href='models/churn'" in index and "@champion" in index


def test_deployments_waiting_for_a_decision_come_first_with_their_form():
    from asgard.hooks.airflow_hitl import approval_model, decision_link

    run_id = "asset_triggered__2026-12-06T07:00:00+00:00"
    waiting = [
        {
            "run_id": run_id,
            "subject": "Deploy churn v5? (v4 serves now) <script>",
            "since": "2026-12-06T07:00:01Z",
            "link": decision_link(run_id),
        }
    ]
    page = models_page.models_index([], waiting)
    assert page.index("Waiting for a decision") < page.index("No model is registered yet")
    assert "Deploy churn v5? (v4 serves now) &lt;script&gt;" in page and "<script>" not in page
    link = "/dags/deploy_model/runs/asset_triggered__2026-12-06T07%3A00%3A00%2B00%3A00/tasks/approve_deployment/"
    # The form opens as the UI's own page, not inside the Models page's frame.
    assert f"href='{link}required_actions' target='_top'" in page and "./asgard approve MODEL VERSION" in page
    assert "Waiting for a decision" not in models_page.models_index([])
    assert approval_model("Deploy churn v5? (v4 serves now)") == "churn"
    assert approval_model("Deploy a model version") is None
