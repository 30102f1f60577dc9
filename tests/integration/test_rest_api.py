"""Drive the real Airflow REST API like a user's script: conf payloads, 400s, outcomes in MLflow."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from mlflow import MlflowClient

from asgard.api.platform_checks import CHECK_EXPERIMENT
from asgard.hooks.airflow_api import AirflowApiError

pytestmark = pytest.mark.integration


def test_trigger_with_conf_runs_to_success_and_does_the_work(embedded_stack):
    api = embedded_stack.api
    outcome = api.run_and_wait("check_platform", {"checks": ["mlflow", "storage", "sandbox"]}, timeout=300)
    assert outcome.state == "success", outcome
    assert outcome.task_states == {
        "list_checks": "success",
        "run_check[mlflow]": "success",
        "run_check[storage]": "success",
        "run_check[sandbox]": "success",
    }
    sandbox = api.task_result("check_platform", outcome.run_id, "run_check", map_index=2)
    assert sandbox["saw"].startswith("65534 ")  # the sandbox's uid, and only its own root
    # The conf reached the task and the task did real work: the MLflow run of this DAG run exists.
    client = MlflowClient(tracking_uri=embedded_stack.settings.mlflow_url)
    experiment = client.get_experiment_by_name(CHECK_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`airflow.run_id` = '{outcome.run_id}'")
    assert len(runs) == 1
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id)] == ["probe.txt"]


def test_conf_selects_the_checks(embedded_stack):
    outcome = embedded_stack.api.run_and_wait("check_platform", {"checks": ["storage"]}, timeout=300)
    assert outcome.state == "success"
    assert set(outcome.task_states) == {"list_checks", "run_check[storage]"}


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"checks": ["nope"]}, "nope"),
        ({"checks": "mlflow"}, "checks"),
        ({"checks": []}, "checks"),
    ],
    ids=["unknown-check", "wrong-type", "empty"],
)
def test_bad_conf_is_a_400_naming_the_field_and_creates_no_run(embedded_stack, conf, named):
    api = embedded_stack.api
    api.wait_for_dag("check_platform")
    before = set(api.list_run_ids("check_platform"))
    with pytest.raises(AirflowApiError) as error:
        api.trigger("check_platform", conf)
    assert error.value.status == 400
    assert named in error.value.body
    assert set(api.list_run_ids("check_platform")) == before


SEED_BATCH = {
    "model_name": "churn_predictor",
    "model_version": "1",
    "feature_views": ["customer_features"],
    "entities_df": {"customer_id": [1, 2, 3]},
    "output_path": "s3://my-bucket/predictions/batch_2025_10_17.parquet",
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"output_path": 42}, "output_path"),
        ({"output_path": "predictions/batch.csv"}, "output_path"),  # relative is fine (the team's root): not .csv
        ({"feature_source": "spark"}, "feature_source"),
        ({"model_version": "latest"}, "model_version"),
        ({"entities_df": None, "entity_source": {"table": "t", "path": "/p.parquet"}}, "entity_source"),
        ({"entities_df": {"customer_id": []}}, "entities_df"),
    ],
    ids=["number-output", "csv-output", "unknown-feature-source", "bad-version", "two-sources", "no-rows"],
)
def test_bad_score_batch_conf_is_a_400_and_creates_no_run(embedded_stack, change, named):
    api = embedded_stack.api
    api.wait_for_dag("score_batch")
    before = set(api.list_run_ids("score_batch"))
    conf = {key: value for key, value in {**SEED_BATCH, **change}.items() if value is not None}
    with pytest.raises(AirflowApiError) as error:
        api.trigger("score_batch", conf)
    assert error.value.status == 400
    assert named in error.value.body
    assert set(api.list_run_ids("score_batch")) == before


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"model_name": "churn_predictor", "thresholds": {"driftt": 0.2}}, "thresholds"),
        ({"model_name": "churn_predictor", "thresholds": {"drift": -1}}, "thresholds"),
        ({"model_name": "churn_predictor", "sources": ["window.csv"]}, "sources"),
        ({"model_name": "churn_predictor", "window_end": "yesterday"}, "window_end"),
        ({"model_name": "churn predictor"}, "model_name"),
    ],
    ids=["unknown-threshold", "negative-threshold", "csv-source", "bad-time", "bad-model-name"],
)
def test_bad_monitor_model_conf_is_a_400_and_creates_no_run(embedded_stack, conf, named):
    api = embedded_stack.api
    api.wait_for_dag("monitor_model")
    before = set(api.list_run_ids("monitor_model"))
    with pytest.raises(AirflowApiError) as error:
        api.trigger("monitor_model", conf)
    assert error.value.status == 400
    assert named in error.value.body
    assert set(api.list_run_ids("monitor_model")) == before


def test_a_scheduler_that_dies_is_started_again_and_runs_go_on(embedded_stack):
    """Airflow's standalone starts each component once; the embedded profile's supervises them: the
    scheduler killed with SIGKILL comes back, and a run triggered after it completes."""
    import signal

    import psutil

    airflow = next(status for status in embedded_stack.manager.status() if status.name == "airflow")

    def scheduler() -> psutil.Process | None:
        """The scheduler the standalone process started (its own forks share its command line)."""
        for child in psutil.Process(airflow.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if "scheduler" in child.cmdline():
                    return child
        return None

    killed = scheduler()
    assert killed is not None
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    deadline = time.monotonic() + 60
    while ((started := scheduler()) is None or started.pid == killed.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert started is not None and started.pid != killed.pid, "no scheduler was started again"
    outcome = embedded_stack.api.run_and_wait("check_platform", {"checks": ["storage"]}, timeout=300)
    assert outcome.state == "success", outcome.failure


def test_an_edited_dag_file_is_parsed_again_at_once(embedded_stack):
    """Unchanged DAG files are parsed every 10 minutes (AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL),
    which must not delay an edit: a file modified since its last parse is parsed within seconds."""
    api = embedded_stack.api
    assert embedded_stack.manager.airflow_env()["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] == "600"
    before = api.dags.get_dag("check_platform").last_parsed_time
    os.utime(embedded_stack.settings.dags_folder / "check_platform.py")  # edited, its content kept
    deadline = time.monotonic() + 60
    while api.dags.get_dag("check_platform").last_parsed_time == before:
        assert time.monotonic() < deadline, f"check_platform.py not parsed again since {before}"
        time.sleep(0.5)
