"""register_features and materialize_features through the real Airflow REST API, on real Feast."""

from __future__ import annotations

import pytest

from asgard.features import gold
from asgard.features import store as feature_store
from asgard.hooks.airflow_api import AirflowApiError
from asgard.local.examples import SUPPORT_FEATURES_REQUEST
from sample_data.gold_layer import GoldSpec, write_gold_layer

pytestmark = pytest.mark.integration

SPEC = GoldSpec(customers=120, days=4, end="2026-11-01T00:00:00+00:00", seed=11)


@pytest.fixture(scope="module")
def feature_stack(embedded_stack):
    """The session's stack with a gold layer and the feature repo applied, as the main job does."""
    settings = embedded_stack.settings
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(settings), log=lambda _: None)
    feature_store.apply_repo(settings)
    return embedded_stack


def test_register_features_with_the_seed_payload(feature_stack):
    api, settings = feature_stack.api, feature_stack.settings
    outcome = api.run_and_wait("register_features", SUPPORT_FEATURES_REQUEST, timeout=300)
    assert outcome.state == "success", outcome
    view = feature_store.open_store(settings).get_feature_view("customer_support")
    assert [f.name for f in view.features] == ["support_tickets_count", "days_since_last_purchase"]
    # The same payload again is a no-op run, not a second view or an error.
    assert api.run_and_wait("register_features", SUPPORT_FEATURES_REQUEST, timeout=300).state == "success"


def test_unknown_column_fails_the_run_and_leaves_the_registry_alone(feature_stack):
    api, settings = feature_stack.api, feature_stack.settings
    request = {
        **SUPPORT_FEATURES_REQUEST,
        "name": "broken_view",
        "features": [{"name": "total_orders", "dtype": "int64"}],
    }
    outcome = api.run_and_wait("register_features", request, timeout=300)
    assert outcome.state == "failed"
    assert outcome.task_states["validate_request"] == "failed"
    log = api.task_log("register_features", outcome.run_id, "validate_request")
    assert "feature column 'total_orders' is not in gold table 'customer_features'" in log
    error = api.run_report("register_features", outcome.run_id, logs=False)["error"]
    assert error["task"] == "validate_request"
    assert "feature column 'total_orders' is not in gold table 'customer_features'" in error["message"]
    names = [v.name for v in feature_store.open_store(settings).list_feature_views()]
    assert "broken_view" not in names


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({**SUPPORT_FEATURES_REQUEST, "name": "support view!"}, "support view!"),
        ({**SUPPORT_FEATURES_REQUEST, "features": [{"name": "x", "dtype": "decimal"}]}, "decimal"),
        ({**SUPPORT_FEATURES_REQUEST, "ttl_days": 0}, "ttl_days"),
    ],
    ids=["bad-name", "bad-dtype", "bad-ttl"],
)
def test_bad_register_conf_is_a_400(feature_stack, conf, named):
    api = feature_stack.api
    api.wait_for_dag("register_features")
    before = set(api.list_run_ids("register_features"))
    with pytest.raises(AirflowApiError) as error:
        api.trigger("register_features", conf)
    assert error.value.status == 400 and named in error.value.body
    assert set(api.list_run_ids("register_features")) == before


def test_materialize_a_backfill_window_loads_the_online_store_and_emits_assets(feature_stack):
    api, settings = feature_stack.api, feature_stack.settings
    conf = {
        "feature_views": ["customer_features"],
        "start": SPEC.start_time.isoformat(),
        "end": SPEC.end_time.isoformat(),
    }
    outcome = api.run_and_wait("materialize_features", conf, timeout=600)
    assert outcome.state == "success", outcome
    assert outcome.task_states["materialize[customer_features]"] == "success"
    store = feature_store.open_store(settings)
    values = store.get_online_features(
        features=["customer_features:total_purchases"],
        entity_rows=[{"customer_id": 1}, {"customer_id": SPEC.customers}],
    ).to_dict()
    assert None not in values["total_purchases"]
    events = api.asset_events(feature_store.feature_view_asset_uri("customer_features"))
    assert any(event["source_run_id"] == outcome.run_id for event in events)


def test_bad_materialize_conf(feature_stack):
    api = feature_stack.api
    api.wait_for_dag("materialize_features")
    with pytest.raises(AirflowApiError) as error:
        api.trigger("materialize_features", {"start": "yesterday"})
    assert error.value.status == 400 and "yesterday" in error.value.body
    outcome = api.run_and_wait("materialize_features", {"feature_views": ["nope"]}, timeout=300)
    assert outcome.state == "failed"
    assert "unknown feature view(s) nope" in api.task_log("materialize_features", outcome.run_id, "plan_windows")
