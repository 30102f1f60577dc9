"""What ``./asgard`` prints by default: tables made from the API's answers (``--json`` prints them as they are)."""

from __future__ import annotations

import argparse

import pytest

from asgard.local import cli, summaries

MODEL = {
    "model_name": "store_sales",
    "aliases": {"champion": "2", "challenger": "3"},
    "latest_version": "3",
    "updated_at": "2026-12-01T10:00:00.123+00:00",
    "serving": [{"version": "2", "target": "docker", "role": "stable", "endpoint": "http://127.0.0.1:8080/models/s"}],
    "serving_state": {"state": "known", "unknown": {}},
    "versions": [
        {
            "version": "3",
            "aliases": ["challenger"],
            "metrics": {"rmse": 12.3456, "r2": 0.91, "baseline_rmse": 40.0},
            "gate": {"decision": "challenger"},
            "serving": {"state": "not_serving"},
            "created_at": "2026-12-01T10:00:00+00:00",
        },
        {
            "version": "2",
            "aliases": ["champion"],
            "metrics": {"rmse": 11.0},
            "gate": {"decision": "promoted"},
            "serving": {"state": "serving", "role": "stable", "target": "docker"},
            "created_at": "2026-11-30T10:00:00+00:00",
        },
        # An older server's answer: no serving state, only the recorded tag.
        {"version": "1", "deployment": {"status": "replaced"}, "metrics": {}, "gate": {}},
    ],
}


def test_models_and_a_model_are_tables():
    listed = summaries.models({"models": [MODEL], "total": 1})
    header, row, total = listed.splitlines()
    assert header.split() == ["MODEL", "ALIASES", "LATEST", "SERVING", "UPDATED"]
    assert "@challenger=v3, @champion=v2" in row and "v2 (stable, docker)" in row and "2026-12-01T10:00:00" in row
    assert total == "1 model(s)"
    shown = summaries.model(MODEL).splitlines()
    assert shown[0].startswith("model store_sales  aliases: @challenger=v3, @champion=v2")
    versions = {line.split()[0]: line for line in shown[2:]}
    assert (
        "rmse=12.35 r2=0.91" in versions["v3"] and "baseline" not in versions["v3"] and "challenger" in versions["v3"]
    )
    assert "serving (stable, docker)" in versions["v2"] and "promoted" in versions["v2"]
    assert "last deploy: replaced" in versions["v1"]
    assert summaries.models({"models": []}).startswith("(none)")


def test_a_job_and_history_read_as_text():
    job = {
        "dag_id": "materialize_features",
        "run_id": "manual__2026-12-06T00:00:00+00:00",
        "status": "failed",
        "queued_at": "2026-12-06T00:00:01+00:00",
        "started_at": None,
        "tasks": {"plan_windows": "success", "materialize[stores]": "failed"},
        "error": {"task": "materialize[stores]", "message": "FeatureRequestError: no such view"},
        "result": None,
    }
    text = summaries.job(job)
    assert text.splitlines()[0] == "materialize_features run manual__2026-12-06T00:00:00+00:00: failed"
    assert "started -" in text and "materialize[stores]  failed" in text
    assert text.endswith("failed in materialize[stores]:\nFeatureRequestError: no such view")
    history = {
        "total_records": 1,
        "records": [
            {
                "timestamp": "2026-12-05T00:00:00+00:00",
                "model_version": "2",
                "metric_type": "feature_drift",
                "subject": "footfall",
                "metrics": {"psi": 0.25, "drift_score": 0.25},
                "alerts": ["footfall drift detected: 0.250"],
            }
        ],
        "summary": {"total_alerts": 1, "metric_types": ["feature_drift"]},
    }
    lines = summaries.history(history).splitlines()
    assert "footfall drift detected" in lines[1] and "psi=0.25" in lines[1]
    assert lines[-1] == "1 record(s), 1 alert(s); metric types: feature_drift"


def test_job_wants_a_job_id_or_dag_and_run():
    client = cli.MlopsClient("http://127.0.0.1:9", "token")  # never reached: refused before sending
    with pytest.raises(cli.CliError, match="give DAG_ID RUN_ID for any other run"):
        cli.run(argparse.Namespace(command="job", job_id="manual__2026", run_id=None, logs=False), client)
