"""train_model through the real Airflow REST API: the seed payload, the Asset a promotion emits, bad conf."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from asgard.features import gold
from asgard.features import store as feature_store
from asgard.hooks.airflow_api import AirflowApiError
from asgard.local.examples import CHURN_MODEL_REQUEST
from asgard.registry.models import model_asset_uri
from asgard.registry.versions import CHAMPION
from sample_data.gold_layer import GoldSpec, write_gold_layer

pytestmark = pytest.mark.integration

SPEC = GoldSpec(customers=800, days=3, end="2026-11-01T00:00:00+00:00", seed=13)


@pytest.fixture(scope="module")
def train_stack(embedded_stack):
    settings = embedded_stack.settings
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(settings), log=lambda _: None)
    feature_store.apply_repo(settings)
    return embedded_stack


def test_seed_payload_trains_registers_promotes_and_emits_the_model_asset(train_stack):
    api, settings = train_stack.api, train_stack.settings
    request = {**CHURN_MODEL_REQUEST, "model_name": f"churn_{uuid.uuid4().hex[:6]}"}
    outcome = api.run_and_wait("train_model", request, timeout=600)
    assert outcome.state == "success", outcome
    assert set(outcome.task_states.values()) == {"success"}
    decision = api.task_result("train_model", outcome.run_id, "gate_model")
    assert decision["promoted"] and decision["metric"] == "roc_auc"

    client = MlflowClient(settings.mlflow_url, settings.mlflow_url)
    champion = client.get_model_version_by_alias(request["model_name"], CHAMPION)
    assert champion.version == decision["version"]
    assert champion.tags["airflow.run_id"] == outcome.run_id
    runs = client.search_runs(
        [client.get_experiment_by_name("customer_churn").experiment_id],
        filter_string=f"tags.`airflow.run_id` = '{outcome.run_id}'",
    )
    assert len(runs) == 1  # one MLflow run for the whole DAG run, every task logged into it
    assert runs[0].info.run_id == champion.run_id
    assert {"roc_auc", "accuracy", "baseline_roc_auc"} <= set(runs[0].data.metrics)

    events = api.asset_events(model_asset_uri(request["model_name"]))
    assert any(e["source_run_id"] == outcome.run_id and e["extra"]["version"] == decision["version"] for e in events)

    # A worse model for the same name: @challenger, and no Asset event (nothing to deploy).
    weak = {**request, "hyperparameters": {"params": {"n_estimators": 1, "max_depth": 1, "random_state": 1}}}
    worse = api.run_and_wait("train_model", weak, timeout=600)
    assert worse.state == "success", worse
    rejected = api.task_result("train_model", worse.run_id, "gate_model")
    assert not rejected["promoted"] and rejected["champion_version"] == decision["version"]
    assert "not better than" in api.task_log("train_model", worse.run_id, "gate_model")
    events = api.asset_events(model_asset_uri(request["model_name"]))
    assert not any(e["source_run_id"] == worse.run_id for e in events)
    assert client.get_model_version_by_alias(request["model_name"], CHAMPION).version == decision["version"]


def test_unknown_framework_is_a_400(train_stack):
    api = train_stack.api
    api.wait_for_dag("train_model")
    before = set(api.list_run_ids("train_model"))
    for conf, named in (
        ({**CHURN_MODEL_REQUEST, "framework": "pytorch"}, "pytorch"),
        ({**CHURN_MODEL_REQUEST, "model_type": "ranking"}, "ranking"),
        ({**CHURN_MODEL_REQUEST, "model_name": "churn predictor/../x"}, "churn predictor/../x"),
    ):
        with pytest.raises(AirflowApiError) as error:
            api.trigger("train_model", conf)
        assert error.value.status == 400 and named in error.value.body
    assert set(api.list_run_ids("train_model")) == before


def test_unknown_hyperparameter_fails_the_run_naming_it_and_registers_nothing(train_stack):
    api, settings = train_stack.api, train_stack.settings
    name = f"bad_{uuid.uuid4().hex[:6]}"
    request = {**CHURN_MODEL_REQUEST, "model_name": name, "hyperparameters": {"params": {"max_dept": 4}}}
    outcome = api.run_and_wait("train_model", request, timeout=300)
    assert outcome.state == "failed"
    assert outcome.task_states["validate_request"] == "failed"
    log = api.task_log("train_model", outcome.run_id, "validate_request")
    assert "RandomForestClassifier does not accept hyperparameter(s) max_dept" in log
    # The run's failure names the task and the exception's first line, without reading any log.
    error = api.run_error("train_model", outcome.run_id)
    assert error["task"] == "validate_request"
    assert error["message"].startswith("InputError: RandomForestClassifier does not accept hyperparameter(s) max_dept")
    assert "validate_request failed with InputError: RandomForestClassifier" in outcome.failure
    assert not MlflowClient(settings.mlflow_url, settings.mlflow_url).search_model_versions(f"name = '{name}'")
