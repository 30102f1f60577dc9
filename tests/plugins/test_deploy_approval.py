"""Who may decide a deployment, and a model's policy (tags over settings), without Airflow running."""

from __future__ import annotations

import pytest

from asgard.core.errors import InputError
from asgard.core.settings import Settings
from asgard.deploy.approval import (
    DeployPolicy,
    decision_refusal,
    eligible_deciders,
    model_policy,
    model_team,
    set_model_policy,
)
from conftest import sqlite_mlflow_home

APPROVE = DeployPolicy("approve", second_person=False, timeout_seconds=60, source="setting")
SECOND = DeployPolicy("approve", second_person=True, timeout_seconds=60, source="setting")


def test_only_the_team_decides_and_the_trainer_not_under_the_second_person_rule():
    team = {"admin", "alice", "bob"}
    assert decision_refusal("alice", model_name="m", policy=APPROVE, team=team, trained_by="alice") is None
    assert "not in m's team" in decision_refusal("mallory", model_name="m", policy=APPROVE, team=team, trained_by=None)
    assert "second person" in decision_refusal("alice", model_name="m", policy=SECOND, team=team, trained_by="alice")
    assert decision_refusal(None, model_name="m", policy=APPROVE, team=team, trained_by=None)
    assert eligible_deciders("m", SECOND, team, "alice") == ["admin", "bob"]
    assert eligible_deciders("m", SECOND, {"admin"}, "admin") == []


def test_team_is_the_models_team_the_admins_and_the_named_approvers(monkeypatch, tmp_path):
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import claim

    users = "root:admin,reader:viewer:alpha,ops:Admin,alice:user:alpha,bob:user:beta,carol:user:alpha|beta"
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", users)
    with sqlite_mlflow_home(tmp_path):
        settings, hook = Settings(deploy_approvers=" dave, ,"), MlflowHook()
        claim(hook, "m", "alpha", settings)
        assert model_team("m", settings, hook) == {"root", "ops", "alice", "carol", "dave"}
        # A model not registered yet: the default team's (only admins and the approvers here).
        assert model_team("new", settings, hook) == {"root", "ops", "dave"}


def test_a_model_tag_overrides_the_setting_and_null_restores_it(tmp_path):
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import model_team as owning_team

    with sqlite_mlflow_home(tmp_path):
        settings = Settings(home=tmp_path, deploy_policy="approve", deploy_approval_timeout=3600)
        hook = MlflowHook()
        assert model_policy(hook, "not_yet", settings).to_dict() == {
            "policy": "approve",
            "second_person": False,
            "approval_timeout": 3600,
            "source": "setting",
            "rollout": {"strategy": "canary"},  # the promotion_strategy setting, deploy_model's limits
        }
        # Set before the model's first training: the model is registered for it, as the team's.
        policy = set_model_policy(
            hook, "m", settings, team="alpha", policy="auto", second_person=True, approval_timeout=90
        )
        assert (policy.mode, policy.second_person, policy.timeout_seconds, policy.source) == (
            "auto", True, 90, "model tag"
        )  # fmt: skip
        assert owning_team(hook, "m", settings) == "alpha"
        back = set_model_policy(hook, "m", settings, team="alpha", policy=None)
        assert (back.mode, back.source, back.second_person, back.timeout_seconds) == ("approve", "setting", False, 3600)
        with pytest.raises(InputError, match="one of auto, approve, manual"):
            set_model_policy(hook, "m", settings, team="alpha", policy="sometimes")

        # The model's own rollout of a promotion, checked as deploy_model's Params are; null: the setting.
        canary = {"strategy": "canary", "percent": 25, "min_requests": 40}
        assert set_model_policy(hook, "m", settings, team="alpha", policy="approve", rollout=canary).rollout == canary
        assert model_policy(hook, "m", settings).rollout == canary
        for bad, named in (
            ({"strategy": "blue-green"}, "the rollout.s strategy: .blue-green. is not one of"),
            ({"strategy": "canary", "max_difference": 2}, "max_difference applies to the shadow strategy only"),
            ({"strategy": "canary", "window": 5}, "names a strategy and percent"),
            ({"strategy": "canary", "percent": "x", "duration": [1]}, "the rollout's percent"),
            ({"strategy": "canary", "max_p99_ratio": float("inf")}, "must be a finite number"),
            ({"strategy": "canary", "percent": 80}, "the rollout's percent"),
        ):
            with pytest.raises(InputError, match=named):
                set_model_policy(hook, "m", settings, team="alpha", policy="approve", rollout=bad)
        assert model_policy(hook, "m", settings).rollout == canary  # a refused change changed nothing
        replaced = Settings(home=tmp_path, promotion_strategy="replace")
        assert set_model_policy(hook, "m", replaced, team="alpha", policy="approve").rollout == {"strategy": "replace"}


def test_the_rest_clients_options_are_the_approval_operators():
    """``./asgard approve`` answers without importing Airflow: its options must be the operator's."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from asgard.hooks import airflow_hitl

    assert (airflow_hitl.APPROVE, airflow_hitl.REJECT) == (ApprovalOperator.APPROVE, ApprovalOperator.REJECT)


def test_an_approval_a_newer_promotion_overtook_is_superseded(tmp_path):
    """Approving v1 after v2 was promoted would put v1 back over v2: the approval names v2 instead."""
    from mlflow import MlflowClient

    from asgard.deploy.approval import superseded_by
    from asgard.hooks.mlflow import MlflowHook

    with sqlite_mlflow_home(tmp_path) as tracking_uri:
        client, hook = MlflowClient(tracking_uri), MlflowHook()
        client.create_registered_model("m")
        assert superseded_by(hook, "m", "1") is None  # no champion yet
        run = client.create_run(client.create_experiment("e")).info.run_id
        for _ in range(2):
            client.create_model_version("m", f"runs:/{run}/model", run_id=run)
        client.set_registered_model_alias("m", "champion", "1")
        assert superseded_by(hook, "m", "1") is None
        client.set_registered_model_alias("m", "champion", "2")
        assert superseded_by(hook, "m", "1") == "2" and superseded_by(hook, "m", "2") is None


def test_only_the_version_approved_in_this_run_is_deployed(tmp_path):
    """deploy_image takes the version from a hand-off (an XCom Airflow's REST API can change): it deploys
    only the version whose recorded decision is this run's approval (found by a hostile review)."""
    from mlflow import MlflowClient

    from asgard.deploy.approval import APPROVED, REJECTED, record_decision, require_approval
    from asgard.hooks.mlflow import MlflowHook

    with sqlite_mlflow_home(tmp_path) as tracking_uri:
        client, hook = MlflowClient(tracking_uri), MlflowHook()
        client.create_registered_model("m")
        run = client.create_run(client.create_experiment("e")).info.run_id
        for _ in range(3):
            client.create_model_version("m", f"runs:/{run}/model", run_id=run)
        decision = {"by": "alice", "reason": "ok", "policy": "approve"}
        record_decision(hook, "m", "1", outcome=APPROVED, run="deploy_model/old", **decision)
        record_decision(hook, "m", "2", outcome=REJECTED, run="deploy_model/this", **decision)
        canary = {"strategy": "canary", "percent": 25, "min_requests": 40}
        record_decision(hook, "m", "3", outcome=APPROVED, run="deploy_model/this", rollout=canary, **decision)
        assert require_approval(hook, "m", "3", "deploy_model/this") == canary  # the plan approved
        for version, why in (("1", "approved in deploy_model/old"), ("2", "rejected in deploy_model/this")):
            with pytest.raises(InputError, match=f"m v{version} was not approved in this run .*{why}"):
                require_approval(hook, "m", version, "deploy_model/this")


def test_a_deploy_follows_the_rollout_its_approval_was_given_for():
    """A model's rollout changed while a person decided (its policy is the team's to change) is not what
    the approved deploy runs: the request takes the approved plan (found by a hostile review)."""
    from asgard.deploy.rollout import deployment_request

    asked = deployment_request({"model_name": "churn", "strategy": "shadow", "percent": 50})
    approved = {"strategy": "canary", "percent": 10, "min_requests": 100}
    followed = asked.as_approved(asked.rollout | approved)
    assert followed.rollout_plan.strategy == "canary" and followed.rollout_plan.percent == 10
    assert followed.rollout_plan.min_requests == 100 and followed.model_name == "churn"
    assert asked.as_approved(None) is asked and asked.as_approved(asked.rollout) is asked


def test_a_drift_retrains_origin_names_the_alerts_its_monitoring_run_stored(tmp_path):
    """The approval form says a drift alert started the version, with the scores, from the records of the
    monitor_model run that asked (stored as ``monitor_model/<run id>``, as monitor_model stores them)."""
    from asgard.monitoring.store import MonitoringStore, Record
    from asgard.operators.deployment_approval import drift_alerts

    settings = Settings(home=tmp_path)
    store = MonitoringStore(settings.monitoring_db_url)
    drifted = Record(
        "churn", "4", "feature_drift", {"psi": 0.4321}, subject="days_since_last_purchase",
        alert_triggered=True, alerts=["days_since_last_purchase drift detected: psi 0.432 > 0.2"],
    )  # fmt: skip
    calm = Record("churn", "4", "feature_drift", {"psi": 0.01}, subject="total_purchases")
    store.replace_run("monitor_model/manual__run-1", "churn", "4", [drifted, calm])
    assert drift_alerts(settings, "churn", "manual__run-1") == [
        "days_since_last_purchase drift detected: psi 0.432 > 0.2 (psi 0.432)"
    ]
    assert (
        drift_alerts(settings, "churn", "manual__run-2") == []
        and drift_alerts(settings, "other", "manual__run-1") == []
    )
