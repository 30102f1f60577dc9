"""A deploy_model run that promotions start: it deploys the newest, rolled out as its model's deployment
policy says, and hands each other model's newest promotion on (several that landed in one scheduler loop
share a run), on Airflow's own event records and a real (SQLite) MLflow registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetAlias
from airflow.sdk.api.datamodels._generated import AssetEventDagRunReference, AssetReferenceAssetEventDagRun

from asgard.deploy.rollout import deployment_request, other_promotions
from asgard.registry.models import CHAMPION_MODELS_ALIAS, model_asset_uri
from conftest import sqlite_mlflow_home

START = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def promotion(model: str, version: str, seconds: int) -> AssetEventDagRunReference:
    uri = model_asset_uri(model)
    return AssetEventDagRunReference(
        asset=AssetReferenceAssetEventDagRun(name=uri, uri=uri, extra={}),
        extra={"model_name": model, "version": version, "roc_auc": 0.9},
        source_task_id="gate_model",
        source_dag_id="train_model",
        source_run_id=f"manual__{model}_{version}",
        source_map_index=-1,
        source_aliases=[],
        timestamp=START + timedelta(seconds=seconds),
    )


def test_the_newest_promotion_is_deployed_as_its_model_rolls_out_and_each_other_is_handed_on(tmp_path):
    from asgard.core.settings import get_settings
    from asgard.deploy.approval import set_model_policy
    from asgard.hooks.mlflow import MlflowHook

    events = {
        model_asset_uri("churn"): [promotion("churn", "3", 1), promotion("churn", "4", 5)],
        model_asset_uri("fraud"): [promotion("fraud", "7", 9)],
        model_asset_uri("sales"): [promotion("sales", "2", 3)],
    }
    with sqlite_mlflow_home(tmp_path):
        request = deployment_request({}, events)
        assert (request.model_name, request.version) == ("fraud", "7")
        assert request.rollout["strategy"] == "canary" and request.rollout["percent"] == 10  # the setting's
        shadow = {"strategy": "shadow", "percent": 50, "max_difference": 2.0}
        set_model_policy(MlflowHook(), "fraud", get_settings(), team="default", policy="approve", rollout=shadow)
        rollout = deployment_request({}, events).rollout
        assert (rollout["strategy"], rollout["percent"], rollout["max_difference"]) == ("shadow", 50, 2.0)
        # A run by hand rolls out as its conf says, whatever the model's policy.
        assert deployment_request({"model_name": "fraud"}, None).rollout["strategy"] == "replace"
    handed_on = other_promotions({}, events)
    assert sorted((extra["model_name"], extra["version"]) for extra in handed_on) == [("churn", "4"), ("sales", "2")]
    assert all(extra["roc_auc"] == 0.9 for extra in handed_on)  # announced again as the gate announced it


def test_one_promotion_or_a_run_by_hand_hands_nothing_on():
    assert (
        other_promotions({}, {model_asset_uri("churn"): [promotion("churn", "3", 1), promotion("churn", "4", 2)]}) == []
    )
    events = {model_asset_uri("fraud"): [promotion("fraud", "7", 9)]}
    assert other_promotions({"model_name": "churn", "version": "3"}, events) == []
    assert other_promotions({}, None) == []


def test_a_promotion_is_chosen_by_version_and_an_event_naming_no_model_is_no_promotion():
    churn = model_asset_uri("churn")
    # v3 handed on late (a newer timestamp) does not pass v4; a script's metric named like a field, or an
    # event without a version, promotes nothing.
    forged = promotion("fraud", "9", 30)
    forged.extra["model_name"] = 0.93
    events = {churn: [promotion("churn", "4", 1), promotion("churn", "3", 7)], model_asset_uri("fraud"): [forged]}
    assert other_promotions({}, events) == []  # one model promoted: churn v4, deployed by the run itself
    versionless = promotion("sales", "2", 40)
    versionless.extra.pop("version")
    events[model_asset_uri("sales")] = [versionless]
    assert other_promotions({}, events) == []


def test_only_a_version_still_its_models_champion_is_handed_on(tmp_path):
    from airflow.sdk.execution_time.context import OutletEventAccessors
    from mlflow import MlflowClient

    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.models import announce_promotion, hand_on_promotions

    with sqlite_mlflow_home(tmp_path) as tracking_uri:
        client = MlflowClient(tracking_uri)
        run = client.create_run(client.create_experiment("e")).info.run_id
        for name in ("churn", "sales"):
            client.create_registered_model(name)
            for _ in range(2):
                client.create_model_version(name, f"runs:/{run}/model", run_id=run)
        client.set_registered_model_alias("churn", "champion", "2")
        client.set_registered_model_alias("sales", "champion", "2")
        events = OutletEventAccessors()
        stale, current = {"model_name": "churn", "version": "1"}, {"model_name": "sales", "version": "2"}
        assert hand_on_promotions(MlflowHook(), [stale, current], events) == ["sales v2"]
        (announced,) = events[AssetAlias(CHAMPION_MODELS_ALIAS)].asset_alias_events
        assert announced.extra == current and announced.dest_asset_key.name == model_asset_uri("sales")

    # The gate's announcement keeps the fields that say what to deploy, whatever its metric is named.
    from asgard.registry.models import GateDecision

    decision = GateDecision("churn", "5", True, "model_name", 0.93, None, None, 0.0, "better")
    events = OutletEventAccessors()
    announce_promotion(decision, events)
    (announced,) = events[AssetAlias(CHAMPION_MODELS_ALIAS)].asset_alias_events
    assert announced.extra["model_name"] == "churn" and announced.extra["version"] == "5"


def test_a_scripts_own_metric_may_not_be_named_like_the_promotions_fields():
    import jsonschema
    import pytest

    from asgard.core.param_schemas import promotion

    schema = promotion(script=True)
    jsonschema.validate({"metric": "r2", "trust_script_metric": True}, schema)
    for name in ("model_name", "version"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"metric": name}, schema)
