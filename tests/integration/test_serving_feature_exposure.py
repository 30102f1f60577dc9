"""``deploy_model``'s ``expose_features`` through a real deployed container: the run's conf reaches the
serving container (the Docker target's environment), whose public ``/predict`` by entity id, behind
the router's stable endpoint, returns stored features and names unknown ids only when it was on.

The session's embedded stack, a gold layer with the feature repo applied, the online store written by
Feast, and a sample model whose lineage names ``customer_features`` (its image reads them by id).
"""

from __future__ import annotations

import docker
import httpx
import pytest
from mlflow import MlflowClient

from asgard.deploy.docker_target import DEPLOY_LABEL
from asgard.features import gold, materialization
from asgard.features import store as feature_store
from asgard.registry.versions import FEATURE_VIEWS_TAG
from sample_data.gold_layer import FEATURE_TABLE, GoldSpec, write_gold_layer
from sample_data.models import SEED_FEATURES, register_sample_model

pytestmark = pytest.mark.integration

# The gold layer tests/integration/test_feature_dags.py writes too (the stack is the session's).
SPEC = GoldSpec(customers=120, days=4, end="2026-11-01T00:00:00+00:00", seed=11)
# An id no test's gold layer holds (the benchmarks beside these tests write thousands of customers).
KNOWN, UNKNOWN = [1, 2, 3], 987_654_321


@pytest.fixture(scope="module")
def online_model(embedded_stack):
    """A registered version trained on the sample features, its lineage naming ``customer_features``,
    whose newest values Feast wrote to the stack's online store."""
    settings = embedded_stack.settings
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(settings), log=lambda _: None)
    feature_store.apply_repo(settings)
    store = feature_store.open_store(settings)
    materialization.ensure_online_table(store, store.get_feature_view("customer_features"))
    rows = gold.load_table(FEATURE_TABLE, gold.GoldLocation.for_settings(settings)).scan().to_pandas()
    newest = rows.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last")
    store.write_to_online_store("customer_features", newest)
    name = "exposure_churn"
    version = register_sample_model(settings.mlflow_url, name, customers=2000, features=SEED_FEATURES)
    MlflowClient(settings.mlflow_url).set_model_version_tag(name, version, FEATURE_VIEWS_TAG, "customer_features")
    return name, version, store


def deployed_environment(settings, name: str) -> dict[str, str]:
    engine = docker.APIClient(base_url=settings.docker_url, version="auto")
    (container,) = engine.containers(filters={"label": f"{DEPLOY_LABEL}={name}"})
    variables = engine.inspect_container(container["Id"])["Config"]["Env"]
    return dict(variable.split("=", 1) for variable in variables)


def test_a_deploy_returns_stored_features_by_id_only_when_its_conf_turns_it_on(embedded_stack, online_model):
    api, settings = embedded_stack.api, embedded_stack.settings
    name, version, store = online_model
    endpoint = f"{settings.router_url}/models/{name}/predict"

    # The default: nothing of the store in any answer, and an unknown id answered as a known one.
    run = api.run_and_wait("deploy_model", {"model_name": name, "version": version}, timeout=1200)
    assert run.state == "success", run.failure
    assert deployed_environment(settings, name)["ASGARD_SERVING_EXPOSE_FEATURES"] == "false"
    asked = httpx.post(endpoint, json={"entities": {"customer_id": KNOWN}, "return_features": True}, timeout=30)
    assert asked.status_code == 403 and "expose_features" in asked.json()["detail"], asked.text
    known = httpx.post(endpoint, json={"entities": {"customer_id": KNOWN[:1]}}, timeout=30)
    unknown = httpx.post(endpoint, json={"entities": {"customer_id": [UNKNOWN]}}, timeout=30)
    assert known.status_code == unknown.status_code == 200, (known.text, unknown.text)
    assert set(known.json()) == set(unknown.json()) and "feature_timestamps" not in known.json()

    # Turned on for the same version: a new container (the conf changed), today's answers.
    conf = {"model_name": name, "version": version, "expose_features": True}
    run = api.run_and_wait("deploy_model", conf, timeout=1200)
    assert run.state == "success", run.failure
    assert deployed_environment(settings, name)["ASGARD_SERVING_EXPOSE_FEATURES"] == "true"
    read = httpx.post(endpoint, json={"entities": {"customer_id": KNOWN}, "return_features": True}, timeout=30)
    assert read.status_code == 200, read.text
    expected = store.get_online_features(
        features=[f"customer_features:{feature}" for feature in SEED_FEATURES],
        entity_rows=[{"customer_id": customer} for customer in KNOWN],
    ).to_dict()
    assert read.json()["features"] == {feature: expected[feature] for feature in SEED_FEATURES}
    unknown = httpx.post(endpoint, json={"entities": {"customer_id": [UNKNOWN]}}, timeout=30)
    assert unknown.status_code == 422 and unknown.json()["missing"] == {"customer_id": [UNKNOWN]}
