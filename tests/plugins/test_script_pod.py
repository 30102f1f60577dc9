"""train_script's pod runner: the pod it would create, validated against the official Kubernetes schemas.

No Kubernetes API server can run here; the pod spec is rendered by the real KubernetesPodOperator
code path (``build_pod_request_obj``) and checked with ``kubernetes-validate --strict``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import kubernetes_validate
import pytest
from airflow.models import DagBag
from kubernetes.client import ApiClient

from asgard import user_scripts
from asgard.operators.script_pod import UserScriptPodOperator
from asgard.settings import Settings

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"
PARAMS = {
    "script_name": "train_with_feast.py",
    "script_content": base64.b64encode(b"print('hello')\n").decode(),
    "experiment_name": "feast_deployment",
    "model_name": "churn_predictor_feast",
    "requirements": ["scikit-learn", "pandas"],
    "timeout": 900,
    "memory_mb": 2048,
    "env_vars": {"N_CUSTOMERS": "500"},
    "use_feast": True,
}


@pytest.fixture
def pod(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-secret")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", "aws://platform:secret@")
    settings = Settings(
        home=tmp_path,
        profile="production",
        airflow_port=8080,
        mlflow_port=5050,
        script_runner="kubernetes",
        script_image_repository="registry.example/asgard/script-env",
    )
    operator = UserScriptPodOperator(task_id="run_script", settings=settings)
    injected = user_scripts.injected_variables(PARAMS, "http://mlflow:5050", "0123abcd", "/work/feature_repo")
    operator.configure(PARAMS, injected)
    request = operator.build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(request)


def test_pod_spec_is_valid_against_the_kubernetes_schemas(pod):
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"


def test_pod_is_locked_down_and_bounded(pod):
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["restartPolicy"] == "Never"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"] == "2048Mi"
    key = user_scripts.environment_key(PARAMS["requirements"])
    assert container["image"] == f"registry.example/asgard/script-env:{key}"
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/work", "/tmp"}


def test_pod_environment_is_the_contract_and_nothing_of_the_platform(pod):
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(user_scripts.INJECTED) <= set(env)
    assert env["N_CUSTOMERS"] == "500" and env["MLFLOW_RUN_ID"] == "0123abcd"
    assert not [name for name in env if name.startswith(("AIRFLOW", "AWS_"))]
    assert "platform-secret" not in str(pod)
    # The production feature_store.yaml goes in with its ${VAR} placeholders, never their values.
    store_yaml = base64.b64decode(env["FEATURE_STORE_YAML_B64"]).decode()
    assert "${" in store_yaml


def test_kubernetes_runner_is_chosen_by_configuration(monkeypatch):
    monkeypatch.setenv("ASGARD_SCRIPT_RUNNER", "kubernetes")
    dagbag = DagBag(str(REPO / "dags" / "train_script.py"))
    assert not dagbag.import_errors, dagbag.import_errors
    task = dagbag.dags["train_script"].get_task("run_script")
    assert isinstance(task, UserScriptPodOperator)
    assert task.upstream_task_ids == {"prepare_environment"}
