"""Who may decide a deployment, and a model's policy (tags over settings), without Airflow running."""

from __future__ import annotations

from types import SimpleNamespace

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


def test_team_is_the_admins_and_the_named_approvers(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "root:admin,reader:viewer,ops:Admin")
    assert model_team("m", Settings(deploy_approvers=" alice, bob ,")) == {"root", "ops", "alice", "bob"}


class _Registry:
    """The registered-model tag calls of MLflow's client, in memory (MLflow itself: the integration test)."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}

    def get_registered_model(self, name: str) -> SimpleNamespace:
        from mlflow.exceptions import MlflowException

        if name not in self.tags:
            raise MlflowException(f"no model {name}", error_code="RESOURCE_DOES_NOT_EXIST")
        return SimpleNamespace(tags=dict(self.tags[name]))

    def create_registered_model(self, name: str) -> None:
        self.tags.setdefault(name, {})

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self.tags[name][key] = value

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        del self.tags[name][key]


def test_a_model_tag_overrides_the_setting_and_null_restores_it(tmp_path):
    settings = Settings(home=tmp_path, deploy_policy="approve", deploy_approval_timeout=3600)
    hook = SimpleNamespace(client=_Registry())
    assert model_policy(hook, "not_yet", settings).to_dict() == {
        "policy": "approve",
        "second_person": False,
        "approval_timeout": 3600,
        "source": "setting",
    }
    # Set before the model's first training: the model is registered for it.
    policy = set_model_policy(hook, "m", settings, policy="auto", second_person=True, approval_timeout=90)
    assert (policy.mode, policy.second_person, policy.timeout_seconds, policy.source) == ("auto", True, 90, "model tag")
    back = set_model_policy(hook, "m", settings, policy=None)
    assert (back.mode, back.source, back.second_person, back.timeout_seconds) == ("approve", "setting", False, 3600)
    with pytest.raises(InputError, match="one of auto, approve, manual"):
        set_model_policy(hook, "m", settings, policy="sometimes")
