"""A trained model's serving container reaches nothing of the platform.

A hostile model — a pipeline whose first step runs on every prediction — is deployed through the real
``deploy_model`` DAG onto the real Docker engine. Its step tries MLflow, the Airflow API, PostgreSQL,
Redis, the image registry and the router (on its loopback and on the host's side of its bridge), the
Docker engine's socket, and writes outside ``/tmp``; it reports what it saw in its container's log.
Every attempt fails, yet it serves (its predictions are honest), and an honest model's rollout beside
it verifies. The container runs as the container's held: its own network, only its port published on
127.0.0.1, non-root, read-only, no capabilities, limited.
"""

from __future__ import annotations

import json
import uuid

import docker
import httpx
import pytest
from mlflow import MlflowClient
from tests.integration.test_docker_target import ROW, register_version

from asgard.deploy.docker_target import DEPLOY_LABEL, PORT_INSIDE, SERVING_UID
from sample_data.models import register_sample_model

pytestmark = pytest.mark.integration

PROBE = r"""
def probe(features):
    import json, os, socket, sys
    if not globals().get("reported"):
        globals()["reported"] = True
        seen = {}
        gateway = None
        with open("/proc/net/route") as routes:
            for line in routes.read().splitlines()[1:]:
                fields = line.split()
                if fields[1] == "00000000":
                    gateway = socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
        for host in ("127.0.0.1", gateway):
            for name, port in PORTS.items():
                s = socket.socket()
                s.settimeout(2)
                try:
                    s.connect((host, port))
                    seen[f"{name}@{host}"] = "open"
                except OSError as error:
                    seen[f"{name}@{host}"] = type(error).__name__
                finally:
                    s.close()
        for path in ("/var/run/docker.sock", "/run/docker.sock", DOCKER_SOCKET):
            seen[f"socket {path}"] = os.path.exists(path)
        for path in ("/opt/asgard/pwned", "/etc/pwned", "/home/pwned", "/tmp/allowed"):
            try:
                with open(path, "w") as handle:
                    handle.write("x")
                seen[f"write {path}"] = "written"
            except OSError as error:
                seen[f"write {path}"] = type(error).__name__
        seen["uid"] = os.getuid()
        with open("/proc/self/status") as status:
            seen["capabilities"] = [l.split()[1] for l in status if l.startswith("CapEff")][0]
        print("ASGARD-PROBE " + json.dumps(seen), file=sys.stderr, flush=True)
    return features
"""


def hostile_model(ports: dict[str, int], docker_socket: str):
    """A classifier whose first step probes the platform once, then passes the features on unchanged."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    # Defined in a namespace no container can import: cloudpickle carries the function by value.
    namespace = {"__name__": "asgard_hostile_probe", "PORTS": ports, "DOCKER_SOCKET": docker_socket}
    exec(PROBE, namespace)

    def make(features, target):
        forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(features, target)
        return Pipeline([("probe", FunctionTransformer(namespace["probe"])), ("model", forest)])

    return make


def test_a_hostile_models_container_reaches_nothing_and_an_honest_rollout_beside_it_verifies(embedded_stack):
    api, settings = embedded_stack.api, embedded_stack.settings
    ports = {
        "mlflow": settings.mlflow_port,
        "airflow": settings.airflow_port,
        "registry": settings.registry_port,
        "router": settings.router_port,
        "postgres": 5432,
        "redis": 6379,
    }
    hostile = f"hostile_{uuid.uuid4().hex[:6]}"
    honest = f"honest_{uuid.uuid4().hex[:6]}"
    v1 = register_sample_model(settings.mlflow_url, honest, customers=2000)  # makes the samples' experiment
    MlflowClient(settings.mlflow_url).create_registered_model(hostile)
    version = register_version(
        settings.mlflow_url, hostile, hostile_model(ports, settings.docker_url.removeprefix("unix://"))
    )
    run = api.run_and_wait("deploy_model", {"model_name": hostile, "version": version}, timeout=900)
    assert run.state == "success", run.failure
    endpoint = f"{settings.router_url}/models/{hostile}"
    answer = httpx.post(f"{endpoint}/predict", json={"inputs": ROW}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_version"] == version

    engine = docker.APIClient(base_url=settings.docker_url, version="auto")
    (container,) = engine.containers(filters={"label": f"{DEPLOY_LABEL}={hostile}"})
    logs = engine.logs(container["Id"]).decode(errors="replace")
    probes = [line for line in logs.splitlines() if line.startswith("ASGARD-PROBE ")]
    assert probes, logs[-2000:]
    seen = json.loads(probes[0].removeprefix("ASGARD-PROBE "))
    reached = {what: outcome for what, outcome in seen.items() if outcome == "open"}
    assert reached == {}, f"the model reached {reached}"
    assert not any(seen[key] for key in seen if key.startswith("socket ")), seen
    for path in ("/opt/asgard/pwned", "/etc/pwned", "/home/pwned"):
        assert seen[f"write {path}"] in ("OSError", "PermissionError"), seen
    assert seen["write /tmp/allowed"] == "written"
    assert seen["uid"] == SERVING_UID and int(seen["capabilities"], 16) == 0, seen

    # How it is held, as the engine reports it.
    inspected = engine.inspect_container(container["Id"])
    host = inspected["HostConfig"]
    assert host["NetworkMode"] not in ("host", "default", "bridge") and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == settings.serving_memory_mb * 2**20 and host["PidsLimit"] == settings.serving_max_processes
    assert host["NanoCpus"] == int(settings.serving_cpus * 1e9)
    assert list(host["PortBindings"]) == [f"{PORT_INSIDE}/tcp"]
    assert [binding["HostIp"] for binding in host["PortBindings"][f"{PORT_INSIDE}/tcp"]] == ["127.0.0.1"]
    network = engine.inspect_network(host["NetworkMode"])
    assert list(network["Containers"]) == [container["Id"]], "a serving network holds one container"

    # An honest model's rollout beside it verifies, and a platform file the probe aimed at is untouched.
    run = api.run_and_wait("deploy_model", {"model_name": honest, "version": v1}, timeout=900)
    assert run.state == "success", run.failure
    assert httpx.get(f"{settings.router_url}/models/{honest}/metadata", timeout=30).json()["model_version"] == v1
