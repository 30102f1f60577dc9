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


def test_side_by_side_fits_queue_for_the_memory_pool_instead_of_sharing_the_machine(train_stack):
    """Two train_model runs at once on a pool that holds one fit: Airflow's scheduler runs their fits in turn."""
    from airflow_client.client import PoolPatchBody

    from asgard.core import memory_pool
    from asgard.local.airflow_teams import check_memory_pool
    from asgard.local.stages import MainJobError

    api, settings = train_stack.api, train_stack.settings
    pool = api.pools.get_pool(memory_pool.MEMORY_POOL)  # made by the stack's start, sized from its settings
    assert pool.slots == memory_pool.pool_slots(settings) and pool.slots >= memory_pool.largest_task_gb(settings)
    assert check_memory_pool(api, settings).startswith(f"memory pool asgard_memory: {pool.slots} slots (GiB)")

    def resize(slots: int) -> None:  # Airflow's PATCH asks for the whole pool, not only what changes
        body = PoolPatchBody(pool=pool.name, slots=slots, include_deferred=pool.include_deferred)
        api.pools.patch_pool(pool.name, body, update_mask=["slots"])

    resize(memory_pool.FIT_GB)
    try:
        # A pool smaller than the largest task's share is named before any DAG runs: that task would never run.
        with pytest.raises(MainJobError, match=r"has 3 slots, fewer than the 8 GiB one task takes"):
            check_memory_pool(api, settings)
        api.unpause("train_model")
        runs = [
            api.trigger("train_model", {**CHURN_MODEL_REQUEST, "model_name": f"pool_{uuid.uuid4().hex[:6]}"})
            for _ in range(2)
        ]
        for run_id in runs:
            assert api.wait_for_run("train_model", run_id, timeout=600).state == "success"
    finally:
        resize(pool.slots)
    fits = sorted(
        (api.task_instances.get_task_instance("train_model", run_id, "fit_model") for run_id in runs),
        key=lambda instance: instance.start_date,
    )
    assert {(fit.pool, fit.pool_slots) for fit in fits} == {(memory_pool.MEMORY_POOL, memory_pool.FIT_GB)}
    assert fits[0].end_date <= fits[1].start_date, [(fit.start_date, fit.end_date) for fit in fits]
