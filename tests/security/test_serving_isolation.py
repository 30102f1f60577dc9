"""A trained model's serving container reaches nothing of the platform.

A hostile model — a pipeline whose first step runs on every prediction — is deployed through the real
``deploy_model`` DAG onto the real Docker engine. Its step tries MLflow, the Airflow API, PostgreSQL,
Redis, the image registry and the router (on its loopback and on the host's side of its bridge), the
Docker engine's socket, and writes outside ``/tmp``; it reports what it saw in its container's log.
Every attempt fails, yet it serves (its predictions are honest), and an honest model's rollout beside
it verifies. The container runs as the container's held: its own network, only its port published on
127.0.0.1, non-root, read-only, no capabilities, limited.

The same image deployed where the online store is Redis (the production profile's: the broker's server)
gets the router's door and nothing of Redis's login: every command but the serving reader's is the
door's own error. A model whose requirements.txt names a URL (``name @ https://…``) fails its deploy
naming the line, before anything is installed. No file of dags/ or plugins/ changes, and no secret
value appears in a deploy's task log.
"""

from __future__ import annotations

import json
import secrets
import uuid

import docker
import httpx
import pytest
import redis
from mlflow import MlflowClient
from tests.integration.test_docker_target import ROW, register_version
from tests.security.test_script_run_folders import changed, tree_hashes

from asgard.core.settings import REPO_ROOT
from asgard.deploy import docker_target
from asgard.deploy.docker_target import DEPLOY_LABEL, ONLINE_DOOR_INSIDE, PORT_INSIDE, SERVING_UID
from asgard.deploy.routes import RouteTable
from asgard.local.online_door import OnlineStoreDoor, Policy, reader_script
from asgard.training import trainers
from conftest import secrets_of
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
        door = "/run/asgard-online/redis.sock"
        if os.path.exists(door):  # the online store is Redis: what else may its door give?
            replies = {}
            for command in (["AUTH", "default", "x"], ["SELECT", "5"], ["KEYS", "*"], ["CONFIG", "GET", "requirepass"],
                            ["SET", "pwned", "1"], ["EVAL", "return redis.call('keys', '*')", "0"], ["HELLO", "3"],
                            ["ACL", "WHOAMI"]):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                s.connect(door)
                s.sendall(("*%d\r\n" % len(command) + "".join("$%d\r\n%s\r\n" % (len(p), p) for p in command)).encode())
                replies[command[0]] = s.recv(400).decode(errors="replace")
                s.close()
            seen["redis door"] = replies
        seen["environment"] = dict(os.environ)
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


# A database of the machine's Redis no other test empties, standing in for the online store's.
STORE_DB = 11
URL_REQUIREMENT = "evil @ https://example.invalid/evil-1.0.tar.gz"


def plain_forest(features, target):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=5, random_state=0).fit(features, target)


def deploy_logs(api, run_id: str) -> str:
    """Every task's log of a deploy_model run (those its failure left unrun have none)."""
    states = api.task_states("deploy_model", run_id)
    return "\n".join(
        api.task_log("deploy_model", run_id, task) for task, state in states.items() if state in ("success", "failed")
    )


def probe_report(engine, container: str) -> dict:
    logs = engine.logs(container).decode(errors="replace")
    probes = [line for line in logs.splitlines() if line.startswith("ASGARD-PROBE ")]
    assert probes, logs[-2000:]
    return json.loads(probes[0].removeprefix("ASGARD-PROBE "))


def test_a_hostile_models_container_reaches_nothing_and_an_honest_rollout_beside_it_verifies(
    embedded_stack, tmp_path, monkeypatch
):
    api, settings = embedded_stack.api, embedded_stack.settings
    platform_before = {name: tree_hashes(REPO_ROOT / name) for name in ("dags", "plugins")}
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
    # A model logged with a URL among its requirements (a source archive: its build code would run as
    # root wherever it is installed).
    fetching = f"fetching_{uuid.uuid4().hex[:6]}"
    MlflowClient(settings.mlflow_url).create_registered_model(fetching)
    with monkeypatch.context() as patch:
        patch.setattr(trainers, "pip_requirements", lambda framework: ["scikit-learn", URL_REQUIREMENT])
        fetching_version = register_version(settings.mlflow_url, fetching, plain_forest)
    fetching_run = api.trigger("deploy_model", {"model_name": fetching, "version": fetching_version})
    run = api.run_and_wait("deploy_model", {"model_name": hostile, "version": version}, timeout=900)
    assert run.state == "success", run.failure
    deploy_runs = [run.run_id]
    endpoint = f"{settings.router_url}/models/{hostile}"
    answer = httpx.post(f"{endpoint}/predict", json={"inputs": ROW}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_version"] == version

    engine = docker.APIClient(base_url=settings.docker_url, version="auto")
    (container,) = engine.containers(filters={"label": f"{DEPLOY_LABEL}={hostile}"})
    seen = probe_report(engine, container["Id"])
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

    # The URL requirement: refused naming its line, before any image is built or anything installed.
    outcome = api.wait_for_run("deploy_model", fetching_run, timeout=600)
    deploy_runs.append(fetching_run)
    assert outcome.state == "failed", outcome
    assert "requirements.txt has a line that is not a plain requirement" in outcome.failure, outcome.failure
    assert URL_REQUIREMENT in outcome.failure, outcome.failure
    assert not engine.containers(all=True, filters={"label": f"{DEPLOY_LABEL}={fetching}"})

    # The same image where the online store is Redis: the door, never the login behind it.
    redis_served_by_door(engine, settings, inspected["Config"]["Image"], version, hostile, tmp_path)

    # An honest model's rollout beside it verifies, and a platform file the probe aimed at is untouched.
    run = api.run_and_wait("deploy_model", {"model_name": honest, "version": v1}, timeout=900)
    assert run.state == "success", run.failure
    deploy_runs.append(run.run_id)
    assert httpx.get(f"{settings.router_url}/models/{honest}/metadata", timeout=30).json()["model_version"] == v1
    logs = {run_id: deploy_logs(api, run_id) for run_id in deploy_runs}
    assert all(logs.values())
    for secret in secrets_of(embedded_stack):
        assert not [run_id for run_id, text in logs.items() if secret in text], "a secret value is in a deploy's log"
    for name, before in platform_before.items():
        assert changed(before, tree_hashes(REPO_ROOT / name)) == [], f"{name}/ changed"


def redis_served_by_door(engine, settings, image: str, version: str, hostile: str, tmp_path) -> None:
    """Serve ``image`` with a Redis online store behind a login of its own, as the production profile's
    router does, and check what the model got: the door's socket, read-only, and none of the login."""
    admin = redis.Redis(host="127.0.0.1", port=6379)
    user, password = f"asgard_online_{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    upstream = f"redis://{user}:{password}@127.0.0.1:6379/{STORE_DB}"
    door = tmp_path / "online-door"
    OnlineStoreDoor(door, upstream, Policy(reader_script())).serve_forever()
    routes, name = RouteTable.for_settings(settings), f"{hostile}_redis"
    try:
        served = docker_target.deploy(
            engine,
            model_name=name,
            version=version,
            image=image,
            payload={"inputs": ROW},
            routes=routes,
            router_url=settings.router_url,
            online_store=upstream,
            online_door=door,
        )
        inspected = engine.inspect_container(served["container"])
        seen = probe_report(engine, served["container"])
    finally:
        routes.set(name, None)
        for container in engine.containers(all=True, filters={"label": f"{DEPLOY_LABEL}={name}"}):
            docker_target.remove_serving_container(engine, container["Names"][0].lstrip("/"))
        admin.acl_deluser(user)
    assert password not in json.dumps(inspected) and password not in json.dumps(seen)
    environment = seen["environment"]
    assert environment["ASGARD_ONLINE_STORE"] == f"unix://{ONLINE_DOOR_INSIDE}/redis.sock?protocol=2"
    assert not [key for key, value in environment.items() if "redis://" in value or user in value], environment
    mounts = {mount["Destination"]: mount for mount in inspected["Mounts"]}
    assert mounts[ONLINE_DOOR_INSIDE]["RW"] is False and mounts[ONLINE_DOOR_INSIDE]["Source"] == str(door)
    passed = {command: reply for command, reply in seen["redis door"].items() if not reply.startswith("-ERR asgard")}
    assert passed == {}, f"the door passed {passed}"
    assert {what: outcome for what, outcome in seen.items() if outcome == "open"} == {}
