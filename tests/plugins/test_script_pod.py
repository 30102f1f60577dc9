"""train_script's pod runner: the pod it would create, validated against the official Kubernetes schemas.

No Kubernetes API server can run here; the pod spec is rendered by the real KubernetesPodOperator
code path (``build_pod_request_obj``) and checked with ``kubernetes-validate --strict``.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
from airflow.models import DagBag
from kubernetes.client import ApiClient

from asgard.core.settings import Settings
from asgard.operators.script_pod import RUN_LABEL, SCRIPT_MOUNT, UserScriptPodOperator
from asgard.training.scripts import runner as user_scripts
from conftest import emulated_cluster

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


DOOR = ("10.20.30.40", 41234)


def _pod_operator(settings: Settings, params: dict) -> UserScriptPodOperator:
    operator = UserScriptPodOperator(task_id="run_script", settings=settings)
    door_url = f"http://{DOOR[0]}:{DOOR[1]}"
    injected = user_scripts.injected_variables(params, door_url, "0123abcd", "/work/feature_repo")
    operator.configure(params, injected, door=DOOR)
    return operator


@pytest.fixture
def operator(tmp_path, monkeypatch):
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
    return _pod_operator(settings, PARAMS)


@pytest.fixture
def pod(operator):
    return ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))


@pytest.fixture
def config_map(operator):
    return ApiClient().sanitize_for_serialization(operator.script_config_map)


@pytest.fixture
def policy(operator):
    return ApiClient().sanitize_for_serialization(operator.network_policy)


def test_pod_spec_is_valid_against_the_kubernetes_schemas(pod, config_map, policy):
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["script"]["configMap"]["name"] == config_map["metadata"]["name"] == "train-script-0123abcd"
    assert config_map["immutable"] is True


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
    assert {mount["mountPath"]: mount.get("readOnly", False) for mount in container["volumeMounts"]} == {
        "/work": False,
        "/tmp": False,
        "/script": True,
    }


def test_pod_environment_is_the_contract_and_nothing_of_the_platform(pod, config_map):
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(user_scripts.INJECTED) <= set(env)
    assert env["N_CUSTOMERS"] == "500" and env["MLFLOW_RUN_ID"] == "0123abcd"
    assert not [name for name in env if name.startswith(("AIRFLOW", "AWS_"))]
    assert "platform-secret" not in str(pod) and "platform-secret" not in str(config_map)
    # The production feature_store.yaml goes in with its ${VAR} placeholders, never their values.
    store_yaml = base64.b64decode(config_map["binaryData"]["feature_store.yaml"]).decode()
    assert "${" in store_yaml


def test_the_pod_command_rebuilds_a_script_too_big_for_an_environment_variable(operator, tmp_path):
    """The container's command, run by sh over the ConfigMap's files as the kubelet mounts them."""
    rows = "\n".join(f"ROW_{i} = {i!r} * 3  # padding a user script can carry" for i in range(17_000))
    script = f"{rows}\nprint('rebuilt', len(open(__file__).read()))\n".encode()
    assert len(script) > 900_000  # seven times what Linux allows a single environment variable
    params = {**PARAMS, "script_content": base64.b64encode(script).decode()}
    operator.configure(params, user_scripts.injected_variables(params, "http://m", "0123abcd", "/work/feature_repo"))
    mounted, work = tmp_path / "script", tmp_path / "work"
    mounted.mkdir()
    work.mkdir()
    for name, data in operator.script_config_map.binary_data.items():
        (mounted / name).write_bytes(base64.b64decode(data))
    pod = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    env |= {"WORKDIR": str(work), "FEAST_REPO_PATH": str(work / "feature_repo")}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    command = container["args"][0].replace(f"{SCRIPT_MOUNT}/", f"{mounted}/")

    finished = subprocess.run([*container["command"], command], env=env, capture_output=True, text=True, timeout=60)

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == f"rebuilt {len(script)}"
    assert (work / PARAMS["script_name"]).read_bytes() == script
    assert "${" in (work / "feature_repo" / "feature_store.yaml").read_text()
    assert len(operator.script_config_map.binary_data["script.py.gz"]) < 1_000_000  # a ConfigMap's limit is 1 MiB


def test_the_pods_one_way_out_is_the_runs_mlflow_door(pod, policy):
    """Its tracking URI is the worker's door, never the tracking server; its NetworkPolicy selects exactly
    this run's pod, takes no connection in, and lets it out to the door's address and port only."""
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == f"http://{DOOR[0]}:{DOOR[1]}"
    assert "mlflow:5050" not in str(pod)
    assert pod["metadata"]["labels"][RUN_LABEL] == "0123abcd"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {RUN_LABEL: "0123abcd"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    assert spec["egress"] == [
        {"to": [{"ipBlock": {"cidr": f"{DOOR[0]}/32"}}], "ports": [{"protocol": "TCP", "port": DOOR[1]}]}
    ]


def test_the_door_on_tcp_refuses_what_is_not_the_runs_before_reaching_mlflow():
    """The pod's door is the local sandbox's (tested against a real MLflow in tests/security), served on
    TCP: a climbing path is refused by the door itself (its upstream here answers nothing at all)."""
    import socket

    from asgard.hooks.mlflow_gateway import RunScope, serving_on_tcp

    scope = RunScope("a" * 32, "1", "feast_deployment")
    with (
        serving_on_tcp("http://127.0.0.1:9", scope, "127.0.0.1") as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
    ):
        target = b"/api/2.0/mlflow-artifacts/artifacts/1/" + b"a" * 32 + b"/artifacts/%2e%2e/%2e%2e/x"
        raw.sendall(b"PUT " + target + b" HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403") and b"PERMISSION_DENIED" in answer


def test_the_script_config_map_is_created_once_per_run_and_removed(operator, monkeypatch):
    """Against the Kubernetes API emulator: a retry finds its objects and replaces them with its own (its
    door's address changed: the old policy would let the pod out to it); removal tolerates a second try."""
    import json

    import kmock

    with emulated_cluster(kmock.KubernetesEmulator()) as (emulator, kubeconfig):
        connection = {"conn_type": "kubernetes", "extra": {"kube_config": kubeconfig}}
        monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(connection))
        operator.publish_script()
        # A retried task: its door listens elsewhere now.
        retried_door = {"to": [{"ipBlock": {"cidr": "10.9.9.9/32"}}], "ports": [{"protocol": "TCP", "port": 4242}]}
        operator.network_policy.spec.egress[0].to[0].ip_block.cidr = "10.9.9.9/32"
        operator.network_policy.spec.egress[0].ports[0].port = 4242
        operator.publish_script()
        stored = {obj.raw["kind"]: obj.raw for obj in emulator.objects.values() if not obj.deleted}
        assert sorted(stored) == ["ConfigMap", "NetworkPolicy"]
        assert stored["ConfigMap"]["metadata"]["name"] == "train-script-0123abcd"
        assert stored["ConfigMap"]["metadata"]["namespace"] == operator.namespace == "asgard-training"
        assert stored["ConfigMap"]["binaryData"] == operator.script_config_map.binary_data
        assert stored["NetworkPolicy"]["spec"]["podSelector"] == {"matchLabels": {RUN_LABEL: "0123abcd"}}
        assert stored["NetworkPolicy"]["spec"]["egress"] == [retried_door]
        creates = [request for request in emulator if request.method == "POST"]
        assert len(creates) == 4 and len([request for request in emulator if request.method == "PATCH"]) == 2
        operator.remove_script()
        operator.remove_script()
        assert all(obj.deleted for obj in emulator.objects.values())


def test_kubernetes_runner_is_chosen_by_configuration(monkeypatch):
    monkeypatch.setenv("ASGARD_SCRIPT_RUNNER", "kubernetes")
    dagbag = DagBag(str(REPO / "dags" / "train_script.py"))
    assert not dagbag.import_errors, dagbag.import_errors
    task = dagbag.dags["train_script"].get_task("run_script")
    assert isinstance(task, UserScriptPodOperator)
    assert task.upstream_task_ids == {"prepare_environment"}
