"""monitor_version against a real MLflow registry (SQLite): reference loading, its failures, whole
runs, the serving prediction log shipped to S3 (moto's server), and what the daily sweep checks."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from asgard.hooks.mlflow import MlflowHook
from asgard.monitoring.reference import load_reference
from asgard.monitoring.run import _in_team_roots, deployed_models, monitor_version
from asgard.monitoring.store import MonitoringStore
from asgard.monitoring.thresholds import MonitoringError
from asgard.monitoring.windows import read_prediction_log
from asgard.registry.versions import PROFILE_ARTIFACT, REFERENCE_SAMPLE_ARTIFACT
from asgard.training import data as training_data
from conftest import sqlite_mlflow_home, team_folder
from sample_data.models import SEED_FEATURES, register_sample_model, training_frame

MODEL = "monitored_churn"
RUN_AFTER = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = tmp_path_factory.mktemp("monitoring-home")
    with sqlite_mlflow_home(path) as tracking_uri:
        version = register_sample_model(tracking_uri, MODEL, customers=2000)
        yield {"path": path, "version": version, "hook": MlflowHook()}


@pytest.fixture(scope="module")
def profiled(registry, tmp_path_factory):
    """A second version whose run logged the training reference, as train_model logs it."""
    hook = registry["hook"]
    with sqlite_mlflow_home(registry["path"]) as tracking_uri:
        version = register_sample_model(tracking_uri, MODEL, customers=2000)
    run_id = hook.client.get_model_version(MODEL, version).run_id
    features, target = training_frame(2000, SEED_FEATURES)
    hook.client.log_dict(run_id, training_data.reference_profile(features, target), PROFILE_ARTIFACT)
    sample = tmp_path_factory.mktemp("reference") / "sample.parquet"
    features.to_parquet(sample, index=False)
    hook.client.log_artifact(run_id, str(sample), "reference")
    assert REFERENCE_SAMPLE_ARTIFACT == "reference/sample.parquet"
    return version


def test_a_version_without_a_reference_profile_and_an_unknown_model_are_named(registry):
    with pytest.raises(MonitoringError, match=r"has no reference profile \(reference/profile.json"):
        load_reference(registry["hook"], MODEL, registry["version"])
    with pytest.raises(MonitoringError, match="no registered model named 'no_such_model'"):
        load_reference(registry["hook"], "no_such_model")
    with pytest.raises(MonitoringError, match="has no version 99"):
        load_reference(registry["hook"], MODEL, "99")


def test_a_whole_run_stores_reports_and_logs_to_the_versions_run(registry, profiled, data_folder):
    import mlflow

    hook, version = registry["hook"], profiled
    run_id = hook.client.get_model_version(MODEL, version).run_id

    window = data_folder / "window.parquet"  # the model's team's (the default team: it was registered untagged)
    drifted = training_frame(1500, SEED_FEATURES)[0]
    drifted["total_purchases"] = drifted["total_purchases"] * 3
    drifted.to_parquet(window, index=False)
    params = {"sources": [str(window)], "thresholds": {"persistence": 1}, "retrain": True}
    target_model = {"model_name": MODEL, "model_version": version}
    result = monitor_version(target_model, params, source_run="monitor_model/r1", run_after=RUN_AFTER)

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
    monitor_version(target_model, params, source_run="monitor_model/r1", run_after=RUN_AFTER)
    again = store.history(MODEL, model_version=version, metric_type="feature_drift")
    assert again["total_records"] == history["total_records"]


def test_a_run_reads_sources_and_labels_only_in_its_models_teams_data_roots(registry, profiled, data_folder):
    """The run acts for the model's team (default): another team's files, and the prediction logs (the
    platform's own), are refused by name before anything is read."""
    from asgard.core.errors import InputError
    from asgard.core.settings import get_settings

    theirs = team_folder("beta") / "window.parquet"
    training_frame(50, SEED_FEATURES)[0].to_parquet(theirs, index=False)
    target_model = {"model_name": MODEL, "model_version": profiled}
    for params in (
        {"sources": [str(theirs)]},
        {"sources": [f"../beta/{theirs.parent.name}/window.parquet"]},
        {"labels": [str(theirs)]},
    ):
        with pytest.raises(InputError, match="is outside the data roots of team 'default'"):
            monitor_version(target_model, params, source_run="monitor_model/teams", run_after=RUN_AFTER)
    # Batch outputs named by Asset events (anyone allowed to post one can name any asset): the team's only.
    ours = str(data_folder / "scored.parquet")
    assert _in_team_roots([str(theirs), ours], "default", get_settings()) == [ours]
    log = get_settings().prediction_log_folder(MODEL) / "predictions.parquet"
    with pytest.raises(InputError, match="inside the platform's own folder"):
        monitor_version(target_model, {"labels": [str(log)]}, source_run="monitor_model/teams", run_after=RUN_AFTER)


def _log_predictions(destination: str, version: str, rows: int) -> list[str]:
    """Log ``rows`` predictions of ``version`` (and as many of another) through the serving app's PredictionLog."""
    from asgard_serving.prediction_log import PredictionLog

    features = training_frame(rows, SEED_FEATURES)[0]
    columns = {name: features[name].tolist() for name in SEED_FEATURES}
    half = rows // 2
    ids = [f"first-{index}" for index in range(half)] + [f"second-{index}" for index in range(rows - half)]
    result = {"predictions": [index % 2 for index in range(rows)], "probabilities": [[0.4, 0.6]] * rows}
    for model_version in (version, "99"):  # another version's rows share the prefix and are left out
        prediction_log = PredictionLog(
            destination, model={"model_name": MODEL, "model_version": model_version}, flush_seconds=0.05
        )
        prediction_log.record("first", {k: v[:half] for k, v in columns.items()}, _rows(result, 0, half))
        time.sleep(0.3)  # two batches, two objects
        prediction_log.record("second", {k: v[half:] for k, v in columns.items()}, _rows(result, half, rows))
        prediction_log.close()
    return ids


def _rows(result: dict, start: int, stop: int) -> dict:
    return {key: values[start:stop] for key, values in result.items()}


def test_the_prediction_log_shipped_to_s3_is_read_as_the_local_one(
    registry, profiled, moto_server, tmp_path, monkeypatch
):
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_server,  # where the serving pod's boto3 sends the log
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps({"conn_type": "aws", "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"}}),
    )
    boto3.client("s3").create_bucket(Bucket="serving-logs")
    monkeypatch.setenv("ASGARD_PREDICTION_LOG_URI", "s3://serving-logs/cluster")
    start = datetime.now(UTC).replace(microsecond=0)
    ids = _log_predictions(f"s3://serving-logs/cluster/{MODEL}", profiled, 600)
    _log_predictions(str(tmp_path / "local"), profiled, 600)
    end = datetime.now(UTC) + timedelta(seconds=1)

    keys = [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket="serving-logs")["Contents"]]
    assert len(keys) == 4 and all(key.startswith(f"cluster/{MODEL}/predictions-") for key in keys)
    location = f"s3://serving-logs/cluster/{MODEL}"
    from_s3 = read_prediction_log(location, start, end, profiled)
    local = read_prediction_log(tmp_path / "local", start, end, profiled)
    assert sorted(from_s3["prediction_id"]) == sorted(ids)
    pd.testing.assert_frame_equal(
        from_s3.sort_values("prediction_id", ignore_index=True), local.sort_values("prediction_id", ignore_index=True)
    )
    assert read_prediction_log(location, end, end + timedelta(hours=1), profiled).empty
    with pytest.raises(MonitoringError, match=r"cannot read the prediction log s3://no-such-bucket/x: "):
        read_prediction_log("s3://no-such-bucket/x", start, end, profiled)

    # A whole run finds the pods' log through ASGARD_PREDICTION_LOG_URI, and only this version's rows.
    params = {"window_start": start.isoformat(), "window_end": end.isoformat(), "retrain": False}
    target_model = {"model_name": MODEL, "model_version": profiled}
    result = monitor_version(target_model, params, source_run="monitor_model/s3", run_after=end)
    assert result["window"]["rows"] == 600


def test_the_daily_sweep_leaves_out_serving_models_without_a_reference(registry, profiled, caplog):
    from asgard.registry.versions import DEPLOY_TAG_PREFIX

    hook = registry["hook"]
    with sqlite_mlflow_home(registry["path"]) as tracking_uri:
        unprofiled = register_sample_model(tracking_uri, "script_churn", customers=500)
    for name, version in ((MODEL, profiled), ("script_churn", unprofiled)):
        hook.client.set_registered_model_alias(name, "champion", version)
        hook.client.set_model_version_tag(name, version, f"{DEPLOY_TAG_PREFIX}status", "serving")
    with caplog.at_level("WARNING", logger="asgard.monitoring.run"):
        assert deployed_models(hook) == [{"model_name": MODEL, "model_version": profiled}]
    assert f"script_churn v{unprofiled} is serving but cannot be monitored" in caplog.text
    assert "logged no reference profile (reference/profile.json)" in caplog.text


def _event(uri: str, extra: dict, timestamp: datetime, source_dag_id: str | None = "monitor_model"):
    """An Asset event as a triggered run's ``triggering_asset_events`` holds it (the Task SDK's model);
    ``source_dag_id`` None: one posted through Airflow's REST API, which has no source task."""
    from airflow.sdk.api.datamodels._generated import AssetEventDagRunReference

    return AssetEventDagRunReference.model_validate(
        {
            "asset": {"name": uri, "uri": uri, "extra": {}},
            "extra": extra,
            "source_task_id": "request_retraining" if source_dag_id else None,
            "source_dag_id": source_dag_id,
            "source_run_id": "r" if source_dag_id else None,
            "source_map_index": -1,
            "source_aliases": [],
            "timestamp": timestamp,
        }
    )


def test_new_features_retrain_the_champions_that_asked_unless_a_newer_version_exists(registry):
    from asgard.features.store import feature_view_asset_uri
    from asgard.registry.versions import REQUEST_ARTIFACT
    from asgard.training import retraining

    hook = registry["hook"]
    policies = {
        "fresh_churn": {"retraining": {"on_new_features": True, "min_interval_hours": 0}},
        "steady_churn": {},  # trained on the same view without the policy: left alone
        "other_view_churn": {"retraining": {"on_new_features": True, "min_interval_hours": 0}},
        "slow_churn": {"retraining": {"on_new_features": True}},  # at most once a day (the default)
    }
    confs = {}

    def register(name: str) -> None:
        version = register_sample_model(tracking_uri, name, customers=300)
        hook.client.log_dict(hook.client.get_model_version(name, version).run_id, confs[name], REQUEST_ARTIFACT)
        hook.client.set_registered_model_alias(name, "champion", version)

    with sqlite_mlflow_home(registry["path"]) as tracking_uri:
        for name, policy in policies.items():
            views = ["order_features"] if name == "other_view_churn" else ["customer_features"]
            confs[name] = {"model_name": name, "data_source": {"feature_views": views, "target_column": "churned"}}
            confs[name].update(policy)
            register(name)

        now = datetime.now(UTC)
        materialized = {"features": [_event(feature_view_asset_uri("customer_features"), {"rows_written": 10}, now)]}
        # A drift request whose conf was changed on its way (a monitoring task's output rewritten through the
        # REST API): the retrain runs the conf the registry holds for the version, under the monitoring run's id.
        forged = {"model_name": "victims_churn", "data_source": {"feature_views": ["x"], "target_column": "y"}}
        drift = retraining.drift_requests(
            [{"model_name": "steady_churn", "model_version": "1", "retrain": forged}], "scheduled__x"
        )
        unrecorded = retraining.drift_requests(
            [{"model_name": MODEL, "model_version": "2", "retrain": {"model_name": MODEL}}], "scheduled__x"
        )  # a version with no training request of the platform's: nothing to run again
        asked = [_event(retraining.RETRAINING_REQUESTS, drift[0], now)] * 2
        events = {**materialized, "requests": [*asked, _event(retraining.RETRAINING_REQUESTS, unrecorded[0], now)]}
        posted = {"requests": [_event(retraining.RETRAINING_REQUESTS, {**drift[0], "train_run_id": "x"}, now, None)]}
        # A request posted through the REST API (no source task) retrains nothing: only monitoring may ask.
        assert retraining.requests_for(posted, "asset_triggered__0", now=now) == []
        first = retraining.requests_for(events, "asset_triggered__1", now=now)
        assert first == [
            {"conf": confs["steady_churn"], "trigger_run_id": retraining.train_run_id("steady_churn", "r")},
            {
                "conf": confs["fresh_churn"],
                "trigger_run_id": retraining.train_run_id("fresh_churn", "asset_triggered__1"),
            },
        ]
        # A retried run asks for the same run again.
        assert retraining.requests_for(materialized, "asset_triggered__1", now=now) == first[1:]
        # Once the retraining registered a version, the same features ask for nothing.
        register("fresh_churn")
        assert retraining.requests_for(materialized, "asset_triggered__2", now=now) == []
        # A day later, newer features retrain what waits a day between trainings too.
        later = datetime.now(UTC) + timedelta(hours=25)
        newer = {"features": [_event(feature_view_asset_uri("customer_features"), {}, later)]}
        triggers = retraining.requests_for(newer, "asset_triggered__3", now=later)
        assert sorted(trigger["trigger_run_id"] for trigger in triggers) == [
            retraining.train_run_id("fresh_churn", "asset_triggered__3"),
            retraining.train_run_id("slow_churn", "asset_triggered__3"),
        ]


def test_only_a_version_the_platform_trained_has_a_training_request_to_run_again(registry, caplog):
    """A user script logs into its own run, so a ``training/request.json`` there is whatever the script
    wrote: a forged one (another model's name, retrain on every materialization) starts nothing."""
    from asgard.features.store import feature_view_asset_uri
    from asgard.monitoring.run import _retrain_conf
    from asgard.registry.versions import ORIGIN_TAG, REQUEST_ARTIFACT, SCRIPT_ORIGIN, training_request
    from asgard.training import retraining

    hook, name = registry["hook"], "scripted_churn"
    forged = {
        "model_name": "victims_churn",
        "data_source": {"feature_views": ["customer_features"], "target_column": "churned"},
        "retraining": {"on_new_features": True, "min_interval_hours": 0},
    }
    with sqlite_mlflow_home(registry["path"]) as tracking_uri:
        version = register_sample_model(tracking_uri, name, customers=300)
        hook.client.set_model_version_tag(name, version, ORIGIN_TAG, SCRIPT_ORIGIN)  # as train_script registers
        hook.client.log_dict(hook.client.get_model_version(name, version).run_id, forged, REQUEST_ARTIFACT)
        hook.client.set_registered_model_alias(name, "champion", version)
        script_version = hook.client.get_model_version(name, version)
        assert training_request(hook, script_version) is None
        now = datetime.now(UTC)
        materialized = {"features": [_event(feature_view_asset_uri("customer_features"), {}, now)]}
        triggers = retraining.requests_for(materialized, "asset_triggered__forged", now=now)
        assert [
            t for t in triggers if name in t["trigger_run_id"] or t["conf"].get("model_name") == "victims_churn"
        ] == []
        reference = type("Ref", (), {"model_name": name, "model_version": version})()
        assert _retrain_conf(hook, reference) is None
        assert f"{name} v{version} drifted, but it has no training request to run again (origin train_script" in (
            caplog.text
        )
        # The platform's own version of a model whose request names another model is not trusted either.
        own = register_sample_model(tracking_uri, "platform_churn", customers=300)
        run_id = hook.client.get_model_version("platform_churn", own).run_id
        hook.client.log_dict(run_id, forged, REQUEST_ARTIFACT)
        assert training_request(hook, hook.client.get_model_version("platform_churn", own)) is None
        hook.client.log_dict(run_id, {**forged, "model_name": "platform_churn"}, REQUEST_ARTIFACT)
        assert training_request(hook, hook.client.get_model_version("platform_churn", own))["model_name"] == (
            "platform_churn"
        )


def test_a_retrainings_run_id_cannot_be_guessed_or_taken_first(monkeypatch):
    """Issue 51: the id of a retraining's train_model run is fixed when it is asked for, yet a user who
    knows the model and the monitoring run cannot make it (and so cannot start a run of that id first,
    which the retraining would skip as its own); a run named alike is nobody's retraining."""
    from asgard.training import retraining

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "the-platforms-secret")
    run_id = retraining.train_run_id("churn", "scheduled__2026-12-06T10:00:00+00:00")
    assert run_id == retraining.train_run_id("churn", "scheduled__2026-12-06T10:00:00+00:00")  # retries agree
    assert run_id.startswith("retrain__churn__scheduled__2026-12-06T10:00:00+00:00__")
    assert retraining.requested_by(run_id, "churn") == "scheduled__2026-12-06T10:00:00+00:00"
    for named_alike in (
        "retrain__churn__scheduled__2026-12-06T10:00:00+00:00",
        "retrain__churn__scheduled__2026-12-06T10:00:00+00:00__" + "0" * 20,
        run_id.replace("retrain__churn__", "retrain__other__"),
    ):
        assert retraining.requested_by(named_alike, "churn") is None, named_alike
    assert retraining.requested_by(run_id, "other") is None
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "another-installation")
    assert retraining.train_run_id("churn", "scheduled__2026-12-06T10:00:00+00:00") != run_id
