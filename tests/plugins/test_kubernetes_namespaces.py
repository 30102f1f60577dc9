"""Each team's Kubernetes namespaces (``ASGARD_KUBERNETES_NAMESPACES``) and what marks an object as a
model's own; the deploy path against kmock's Kubernetes API emulator (``test_kubernetes_target``'s)."""

from __future__ import annotations

import pytest
from test_kubernetes_target import (  # noqa: F401 (the emulator's fixtures, used by name)
    APP,
    cluster,
    fitted,
    image,
    serving_apps,
)

from asgard.core.errors import InputError
from asgard.core.kubernetes_namespaces import namespace_for, team_namespaces
from asgard.core.settings import Settings
from asgard.deploy.kubernetes_ownership import problem
from conftest import sqlite_mlflow_home
from sample_data.models import register_sample_model

TEAMS = "default=ml-serving;a=ml-a, ml-a-canary;b=ml-b"


@pytest.fixture
def teams(monkeypatch) -> Settings:
    monkeypatch.setenv("ASGARD_KUBERNETES_NAMESPACES", TEAMS)
    return Settings.from_env()


def test_each_team_has_its_namespaces_its_default_first(teams):
    assert team_namespaces(teams) == {"default": ("ml-serving",), "a": ("ml-a", "ml-a-canary"), "b": ("ml-b",)}
    assert teams.allowed_serving_namespaces == ["ml-serving", "ml-a", "ml-a-canary", "ml-b"]
    assert namespace_for("a", None, teams) == "ml-a"
    assert namespace_for("a", "ml-a-canary", teams) == "ml-a-canary"
    assert namespace_for("default", None, teams) == "ml-serving"


def test_a_namespace_outside_the_teams_is_refused_naming_it_the_team_and_what_it_may_use(teams):
    refused = (
        r"^namespace 'ml-b' is not one the deploy may use: model 'churn' belongs to team 'a', which may deploy "
        r"to ml-a, ml-a-canary only \(ASGARD_KUBERNETES_NAMESPACES\)$"
    )
    with pytest.raises(InputError, match=refused):
        namespace_for("a", "ml-b", teams, model_name="churn")
    with pytest.raises(InputError, match=r"team 'c', which may deploy to no Kubernetes namespace"):
        namespace_for("c", None, teams)


def test_without_the_setting_the_default_team_deploys_where_it_always_did(monkeypatch):
    for name in ("ASGARD_KUBERNETES_NAMESPACES", "ASGARD_SERVING_NAMESPACE", "ASGARD_DEFAULT_TEAM"):
        monkeypatch.delenv(name, raising=False)
    assert team_namespaces(Settings.from_env()) == {"default": ("asgard",)}
    assert namespace_for("default", None, Settings.from_env()) == "asgard"
    monkeypatch.setenv("ASGARD_SERVING_NAMESPACE", "models")
    assert namespace_for("default", None, Settings.from_env()) == "models"
    # Naming other teams only: the default team keeps its namespace; a team not named has none.
    monkeypatch.setenv("ASGARD_KUBERNETES_NAMESPACES", "a=ml-a")
    assert team_namespaces(Settings.from_env()) == {"a": ("ml-a",), "default": ("models",)}
    with pytest.raises(InputError, match="team 'b', which may deploy to no Kubernetes namespace"):
        namespace_for("b", "models", Settings.from_env())


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("a", r"entry 'a' is not 'team=namespace\[,namespace...\]'"),
        ("a=", r"entry 'a=' is not 'team=namespace"),
        ("=ml-a", r"entry '=ml-a' is not 'team=namespace"),
        ("a=ml-a,,ml-b", r"entry 'a=ml-a,,ml-b' is not"),
        ("a=ML_A", r"namespace 'ML_A' of team 'a' is not a Kubernetes namespace name"),
        ("a=ml-a;a=ml-b", r"names team 'a' twice"),
        ("a=ml-x;b=ml-x", r"gives namespace 'ml-x' to team 'a' and to team 'b': a namespace belongs to one team"),
    ],
)
def test_a_bad_setting_stops_the_settings_naming_the_problem(monkeypatch, value, named):
    monkeypatch.setenv("ASGARD_KUBERNETES_NAMESPACES", value)
    with pytest.raises(ValueError, match=f"^ASGARD_KUBERNETES_NAMESPACES {named}"):
        Settings.from_env()


def test_a_kubernetes_request_is_resolved_to_the_teams_namespace_before_approval_or_build(teams, tmp_path):
    from asgard.deploy.rollout import deployment_request
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import claim

    with sqlite_mlflow_home(tmp_path):  # the model's team is the registry's (a name not registered: the default)
        assert deployment_request({"model_name": "churn", "target": "kubernetes"}).namespace == "ml-serving"
        with pytest.raises(InputError, match=r"namespace 'ml-a' is not one .* model 'churn' belongs to team 'default'"):
            deployment_request({"model_name": "churn", "target": "kubernetes", "namespace": "ml-a"})
        claim(MlflowHook(), "churn_a", "a", teams)
        assert deployment_request({"model_name": "churn_a", "target": "kubernetes"}).namespace == "ml-a"
        with pytest.raises(InputError, match=r"namespace 'ml-b' is not one .* model 'churn_a' belongs to team 'a'"):
            deployment_request({"model_name": "churn_a", "target": "kubernetes", "namespace": "ml-b"})


OURS = {"app.kubernetes.io/part-of": "asgard", "asgard.io/model": "churn"}


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ({"labels": OURS, "annotations": {"asgard.io/model-name": "churn"}}, None),
        ({"labels": OURS}, None),  # the autoscaler and the disruption budget carry the label only
        ({}, "Asgard did not create it (it has no app.kubernetes.io/part-of=asgard label)"),
        ({"labels": {"asgard.io/model": "churn"}}, "Asgard did not create it"),
        ({"labels": OURS, "annotations": {"asgard.io/model-name": "fraud"}}, "it serves model 'fraud'"),
        ({"labels": {**OURS, "asgard.io/model": "fraud"}}, "it belongs to model 'fraud'"),
        ({"labels": {"app.kubernetes.io/part-of": "asgard"}}, "it names no model"),
    ],
)
def test_only_an_object_marked_as_the_models_is_its_own(metadata, why):
    found = problem({"kind": "Service", "metadata": {"name": APP, **metadata}}, "churn")
    assert found == why if why is None else found.startswith(why)
    assert problem(None, "churn") is None  # absent: the deploy creates it


def test_a_deploy_goes_to_its_teams_namespace_never_to_another_teams(cluster, tmp_path, monkeypatch):  # noqa: F811
    """deploy_model's last step on the emulator: the team's second namespace takes the workload; another
    team's namespace is refused before the cluster is asked anything."""
    from asgard.deploy.rollout import DeployRequest, deploy_to_target
    from asgard.hooks.mlflow import MlflowHook
    from asgard.serving.image import BuiltImage, PushedImage

    monkeypatch.setenv("ASGARD_KUBERNETES_CONN_ID", "asgard_test_cluster")
    monkeypatch.setenv("ASGARD_KUBERNETES_NAMESPACES", "default=models-main,models;b=models-b")
    with sqlite_mlflow_home(tmp_path) as tracking_uri:
        version = register_sample_model(tracking_uri, "churn", customers=600)
        run_id = MlflowHook().client.get_model_version("churn", version).run_id
        build = BuiltImage("unused:tag", "churn", version, run_id, source="", built=True, flavor="onnx")
        push = PushedImage("unused:tag", digest=image("1").split("@")[1], reference=image("1"))

        def deploy_to(namespace: str) -> dict:
            request = DeployRequest("churn", version, "champion", "kubernetes", replicas=2, namespace=namespace)
            return deploy_to_target(request, build, push)

        assert deploy_to("models")["endpoint"] == f"http://{APP}.models.svc.cluster.local"
        asked = len(list(cluster))
        refused = r"namespace 'models-b' is not one .*team 'default', which may deploy to models-main, models only"
        with pytest.raises(InputError, match=refused):
            deploy_to("models-b")

    assert cluster.current("deployments", APP, "models")["metadata"]["namespace"] == "models"
    assert cluster.current("deployments", APP, "models-b") is None
    assert len(list(cluster)) == asked  # the cluster was not asked anything
