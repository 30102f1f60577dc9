"""train_script through the real Airflow REST API: the example upload end to end, and bad uploads."""

from __future__ import annotations

import base64
import uuid

import pytest
from mlflow import MlflowClient

from asgard import features, gold
from asgard.embedded.main_job import example_upload
from asgard.model_registry import CHAMPION, model_asset_uri
from sample_data.gold_layer import GoldSpec, write_gold_layer

pytestmark = pytest.mark.integration

SPEC = GoldSpec(customers=600, days=3, end="2026-11-01T00:00:00+00:00", seed=17)


@pytest.fixture(scope="module")
def script_stack(embedded_stack):
    settings = embedded_stack.settings
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(settings), log=lambda _: None)
    features.apply_repo(settings)
    return embedded_stack


def client_for(stack) -> MlflowClient:
    return MlflowClient(stack.settings.mlflow_url, stack.settings.mlflow_url)


def test_example_script_trains_on_feast_registers_promotes_and_emits_the_asset(script_stack):
    api = script_stack.api
    name = f"feast_{uuid.uuid4().hex[:6]}"
    outcome = api.run_and_wait("train_script", example_upload(SPEC.customers, model_name=name), timeout=1500)
    assert outcome.state == "success", outcome
    log = api.task_log("train_script", outcome.run_id, "run_script")
    assert f"fetched {SPEC.customers} rows from Feast view customer_features" in log
    decision = api.task_result("train_script", outcome.run_id, "gate_model")
    assert decision["promoted"] and decision["metric"] == "roc_auc" and decision["score"] > 0.6
    client = client_for(script_stack)
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert champion.version == decision["version"] and champion.tags["airflow.run_id"] == outcome.run_id
    assert champion.tags["source"] == "train_script"
    events = api.asset_events(model_asset_uri(name))
    assert any(event["source_run_id"] == outcome.run_id for event in events)


def test_script_that_logs_no_model_fails_and_registers_nothing(script_stack):
    api = script_stack.api
    name = f"nomodel_{uuid.uuid4().hex[:6]}"
    source = "import mlflow, os\nwith mlflow.start_run():\n    mlflow.log_metric('accuracy', 0.9)\n"
    conf = {
        **example_upload(model_name=name, requirements=[]),
        "script_name": "no_model.py",
        "script_content": base64.b64encode(source.encode()).decode(),
        "use_feast": False,
    }
    outcome = api.run_and_wait("train_script", conf, timeout=900)
    assert outcome.state == "failed"
    assert outcome.task_states["run_script"] == "success"
    assert outcome.task_states["register_model"] == "failed"
    assert "the script logged no model to MLflow run" in api.task_log("train_script", outcome.run_id, "register_model")
    assert not client_for(script_stack).search_model_versions(f"name = '{name}'")


def test_bad_base64_fails_first_and_builds_nothing(script_stack):
    api = script_stack.api
    name = f"bad_{uuid.uuid4().hex[:6]}"
    outcome = api.run_and_wait(
        "train_script", {**example_upload(model_name=name), "script_content": "%%% not base64"}, timeout=300
    )
    assert outcome.state == "failed"
    assert outcome.task_states["check_upload"] == "failed"
    assert outcome.task_states["prepare_environment"] == "upstream_failed"
    assert "script_content is not valid base64" in api.task_log("train_script", outcome.run_id, "check_upload")
    assert not client_for(script_stack).search_model_versions(f"name = '{name}'")
