"""MlflowHook against the real MLflow server: connection → URI, one run per DAG run."""

from __future__ import annotations

import json

import pytest

from asgard.hooks.mlflow import MlflowHook

pytestmark = pytest.mark.integration


@pytest.fixture
def hook(embedded_stack, monkeypatch):
    settings = embedded_stack.settings
    conn = {"conn_type": "http", "host": settings.bind_host, "port": settings.mlflow_port, "schema": "http"}
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_TEST", json.dumps(conn))
    return MlflowHook("mlflow_test")


def test_tracking_uri_comes_from_the_connection(hook, embedded_stack):
    assert hook.tracking_uri == embedded_stack.settings.mlflow_url
    ok, message = hook.test_connection()
    assert ok, message


def test_one_run_per_dag_run_even_on_retry(hook):
    first = hook.get_or_create_run(experiment_name="hook-test", dag_id="train_model", run_id="manual__1")
    retried = hook.get_or_create_run(experiment_name="hook-test", dag_id="train_model", run_id="manual__1")
    other = hook.get_or_create_run(experiment_name="hook-test", dag_id="train_model", run_id="manual__2")
    assert first.info.run_id == retried.info.run_id
    assert other.info.run_id != first.info.run_id
    assert first.info.run_name == "train_model__manual__1"
    assert first.data.tags["airflow.run_id"] == "manual__1"


def test_quotes_in_run_ids_do_not_break_the_lookup(hook):
    run_id = "manual__it's"
    first = hook.get_or_create_run(experiment_name="hook-test", dag_id="d", run_id=run_id)
    assert (
        hook.get_or_create_run(experiment_name="hook-test", dag_id="d", run_id=run_id).info.run_id == first.info.run_id
    )


def test_unreachable_server_fails_the_connection_test(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DOWN", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9}))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    ok, message = MlflowHook("mlflow_down").test_connection()
    assert not ok and "127.0.0.1:9" in message


def test_connection_without_host_is_named(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_EMPTY", json.dumps({"conn_type": "http"}))
    with pytest.raises(ValueError, match="connection 'mlflow_empty' has no host"):
        _ = MlflowHook("mlflow_empty").tracking_uri
