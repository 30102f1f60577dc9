"""monitor_version against a real MLflow registry (SQLite): reference loading, its failures, and one whole run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from asgard import monitoring, training_data
from asgard.hooks.mlflow import MlflowHook
from asgard.monitoring_store import MonitoringStore
from asgard.training import REFERENCE_SAMPLE_ARTIFACT
from conftest import sqlite_mlflow_home
from sample_data.models import SEED_FEATURES, register_sample_model, training_frame

MODEL = "monitored_churn"
RUN_AFTER = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = tmp_path_factory.mktemp("monitoring-home")
    with sqlite_mlflow_home(path) as tracking_uri:
        version = register_sample_model(tracking_uri, MODEL, customers=2000)
        yield {"path": path, "version": version, "hook": MlflowHook()}


def test_a_version_without_a_reference_profile_and_an_unknown_model_are_named(registry):
    with pytest.raises(monitoring.MonitoringError, match=r"has no reference profile \(reference/profile.json"):
        monitoring.load_reference(registry["hook"], MODEL, registry["version"])
    with pytest.raises(monitoring.MonitoringError, match="no registered model named 'no_such_model'"):
        monitoring.load_reference(registry["hook"], "no_such_model")
    with pytest.raises(monitoring.MonitoringError, match="has no version 99"):
        monitoring.load_reference(registry["hook"], MODEL, "99")


def test_a_whole_run_stores_reports_and_logs_to_the_versions_run(registry, tmp_path):
    import mlflow

    hook, version = registry["hook"], registry["version"]
    run_id = hook.client.get_model_version(MODEL, version).run_id
    features, target = training_frame(2000, SEED_FEATURES)
    hook.client.log_dict(run_id, training_data.reference_profile(features, target), monitoring.PROFILE_ARTIFACT)
    sample = tmp_path / "sample.parquet"
    features.to_parquet(sample, index=False)
    hook.client.log_artifact(run_id, str(sample), "reference")
    assert REFERENCE_SAMPLE_ARTIFACT == "reference/sample.parquet"

    window = tmp_path / "window.parquet"
    drifted = training_frame(1500, SEED_FEATURES)[0]
    drifted["total_purchases"] = drifted["total_purchases"] * 3
    drifted.to_parquet(window, index=False)
    params = {"sources": [str(window)], "thresholds": {"persistence": 1}, "retrain": True}
    target_model = {"model_name": MODEL, "model_version": version}
    result = monitoring.monitor_version(target_model, params, source_run="monitor_model/r1", run_after=RUN_AFTER)

    assert result["window"]["rows"] == 1500
    assert any("total_purchases: drift_score drift detected" in text for text in result["alerts"])
    assert result["retrain"] is None  # drifted, but this version has no training request to run again
    assert "total_purchases: reference (blue) vs window (orange)" in Path(result["report"]).read_text()
    store = MonitoringStore(f"sqlite:///{registry['path'] / 'monitoring.db'}")
    history = store.history(MODEL, model_version=version, metric_type="feature_drift")
    assert history["summary"]["total_alerts"] >= 1
    assert history["records"][0]["window"]["end"] == "2026-11-02T00:00:00Z"
    logged = hook.client.get_metric_history(run_id, "monitoring.feature_drift.total_purchases.drift_score")
    assert [point.timestamp for point in logged] == [int(RUN_AFTER.timestamp() * 1000)]
    with hook.using_server():
        artifacts = [item.path for item in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="monitoring")]
    assert artifacts == [f"monitoring/v{version}-20261102T000000Z.html"]
    # Nothing was retrainable, so no request holds the cool-down; a retry of the run replaces its records.
    assert store.last_retrain(MODEL) is None
    monitoring.monitor_version(target_model, params, source_run="monitor_model/r1", run_after=RUN_AFTER)
    again = store.history(MODEL, model_version=version, metric_type="feature_drift")
    assert again["total_records"] == history["total_records"]
