"""The Kubernetes deploy target against kmock's Kubernetes API emulator, the real serving app behind it.

kmock answers the Python client as an API server does (objects stored, read, patched, deleted), but
runs no controllers and no pods. ``ServingCluster`` adds the little the target relies on, the way
the API server, the deployment controller and kube-proxy behave: server-side apply creates what is
missing, ``metadata.generation`` moves when a spec changes, the controller reports the rollout in
``status`` (as each version's pods would let it: ready, crash-looping, stalled), and the Service
proxy reaches the version whose pods are ready — a real serving app on a real exported bundle.
Only ready versions take traffic, as readiness gates do. The EKS kubeconfig comes from moto's EKS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import aiohttp.web
import attrs
import kmock
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from asgard.core.errors import InputError
from asgard.deploy import kubernetes_target
from asgard.deploy.strategies import CANARY, REPLACING, SHADOW, Rollout
from asgard.serving.bundle import write_bundle
from asgard.serving.checks import DeployError, holdout_payload
from asgard.training import trainers
from asgard_serving.app import create_app
from conftest import emulated_cluster, sqlite_mlflow_home
from sample_data.models import SEED_FEATURES, register_sample_model, training_frame

NAMESPACE = "models"
APP = "churn-inference"
PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/:]+):http/proxy(/.*)$")
CONFIG_MAPS = kmock.resource("", "v1", "configmaps")
POD_PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/:]+):8080/proxy(/.*)$")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
PODS = kmock.resource("", "v1", "pods")
AUTOSCALERS = kmock.resource("autoscaling", "v2", "horizontalpodautoscalers")
# A database of the machine's Redis: other tests use 11 and 12, the production e2e 8 and 9, the benchmarks
# 10, 14 and 15.
ONLINE_REDIS_DB = 13


def image(version: str) -> str:
    return f"registry.test/asgard/models@sha256:{version * 64}"


@attrs.define(kw_only=True)
class ServingCluster(kmock.KubernetesEmulator):
    """kmock's emulator plus what a cluster does on its own for a Deployment and its Service."""

    # version -> "ready" | "crash" | "stall" | "deadline": how that version's pods behave.
    behaviour: dict[str, str] = attrs.field(factory=dict)
    # version -> its pods: a function (method, path, body) -> (status, body bytes).
    pods: dict[str, object] = attrs.field(factory=dict)
    # version -> a function (environment) -> its pods, started when the version rolls out with the
    # environment the kubelet gives its container (values, and Secrets' keys resolved).
    starts: dict[str, object] = attrs.field(factory=dict)
    serving: str | None = None
    served: list[str] = attrs.field(factory=list)
    # The canary Deployment's version and replicas, while one is ready beside the serving version.
    canary: tuple[str, int] | None = None
    _spread: int = 0
    # The shadow Deployment's version while it is ready; the file the serving pods see the mirror
    # ConfigMap as (the kubelet's projection), and cluster DNS names -> where those Services answer.
    shadow: str | None = None
    mirror_file: Path | None = None
    dns: dict[str, str] = attrs.field(factory=dict)
    # Called (with the emulator) once the model's Deployment is applied: what someone else does meanwhile.
    after_deployment_applied: object = None

    async def _handle(self, request):
        proxied = PROXY.match(request.url.path)
        if proxied and proxied.group(2).endswith("-shadow"):
            if self.shadow is None:
                return aiohttp.web.json_response({"message": "no endpoints available"}, status=503)
            return await self._call(self.pods[self.shadow], request, proxied.group(3))
        if proxied:
            return await self._proxy(request, proxied.group(3))
        to_pod = POD_PROXY.match(request.url.path)
        if to_pod:
            return await self._pod_proxy(request, to_pod.group(1), to_pod.group(2), to_pod.group(3))
        if (
            request.resource == CONFIG_MAPS
            and request.name == f"{APP}-mirror"
            and request.action in (kmock.action.UPDATE, kmock.action.DELETE)
            and self.mirror_file is not None
        ):
            self._project_mirror(request)
        if request.resource == DEPLOYMENTS and request.action == kmock.action.DELETE and request.name:
            async with self._lock:
                if request.name.endswith("-shadow"):
                    self.shadow = None
                if request.name.endswith("-canary") and self.canary is not None:
                    # The controller removes the canary's pods: they leave the Service's endpoints.
                    pod = (PODS, request.namespace, f"{request.name}-v{self.canary[0]}-x1")
                    if pod in self.objects:
                        self.objects[pod].delete()
                    self.canary = None
        key = spec_before = None
        if request.resource is not None and request.action == kmock.action.UPDATE and request.name:
            key = (request.resource, request.namespace, request.name)
            headers = {name.lower(): value for name, value in request.headers.items()}
            async with self._lock:
                if "apply-patch" in headers.get("content-type", "") and (
                    key not in self.objects or self.objects[key].deleted
                ):
                    # Server-side apply creates the object it does not find.
                    created = {k: request.data[k] for k in ("apiVersion", "kind")}
                    created["metadata"] = {"name": request.name, "namespace": request.namespace, "generation": 0}
                    if key in self.objects:
                        self.objects[key].create(created)
                    else:
                        self.objects[key] = created
                spec_before = json.dumps(self.objects[key].raw.get("spec"), sort_keys=True)
        response = await super()._handle(request)
        if key is not None and request.resource == DEPLOYMENTS:
            async with self._lock:
                self._control(key, spec_before)
                if self.after_deployment_applied is not None and key[2] == APP:
                    self.after_deployment_applied(self)
        return response

    def _control(self, key, spec_before: str) -> None:
        deployment = self.objects[key]
        spec, generation = deployment.raw["spec"], deployment.raw["metadata"].get("generation", 0)
        if json.dumps(spec, sort_keys=True) != spec_before:
            generation += 1
        version = spec["template"]["metadata"]["annotations"]["asgard.io/model-version"]
        desired, behaviour = spec["replicas"], self.behaviour.get(version, "ready")
        status = {"observedGeneration": generation, "conditions": []}
        is_canary = key[2].endswith("-canary")
        if behaviour == "ready":
            status |= {"replicas": desired, "updatedReplicas": desired, "availableReplicas": desired}
            if is_canary:
                self.canary = (version, desired)
            elif key[2].endswith("-shadow"):
                self.shadow = version
            else:
                self.serving = version
            if version in self.starts and version not in self.pods:
                container = spec["template"]["spec"]["containers"][0]
                self.pods[version] = self.starts[version](self._environment(key[1], container))
        else:  # one surge pod of the new version that never becomes ready; the old pods keep serving
            status |= {"replicas": desired + 1, "updatedReplicas": 1, "availableReplicas": desired}
        if behaviour == "deadline":
            status["conditions"] = [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{APP}-v{version}" has timed out progressing.',
                }
            ]
        deployment.patch({"metadata": {"generation": generation}, "status": status})
        # The pod the controller started for this version, as the kubelet reports it.
        waiting = {
            "ready": None,
            "crash": {"reason": "CrashLoopBackOff", "message": "back-off 40s"},
            "stall": {"reason": "ContainerCreating"},
            "deadline": {"reason": "ContainerCreating"},
        }[behaviour]
        pod_key = (PODS, key[1], f"{key[2]}-v{version}-x1")
        if pod_key in self.objects and not self.objects[pod_key].deleted:
            return
        self.objects[pod_key] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{key[2]}-v{version}-x1",
                "namespace": key[1],
                "labels": spec["template"]["metadata"]["labels"],
                "annotations": spec["template"]["metadata"]["annotations"],
            },
            "status": {
                "containerStatuses": [
                    {
                        "name": "model-server",
                        "ready": waiting is None,
                        "restartCount": 4 if behaviour == "crash" else 0,
                        "image": spec["template"]["spec"]["containers"][0]["image"],
                        "imageID": "",
                        "state": {"waiting": waiting} if waiting else {"running": {}},
                    }
                ]
            },
        }

    def _environment(self, namespace: str, container: dict) -> dict[str, str]:
        """The container's environment as the kubelet sets it: a ``secretKeyRef`` reads the Secret's key
        (an optional one that is missing leaves the variable out; a required one stops the pod)."""
        environment = {}
        for variable in container.get("env", []):
            if "value" in variable:
                environment[variable["name"]] = variable["value"]
                continue
            reference = variable["valueFrom"]["secretKeyRef"]
            secret = self.current("secrets", reference["name"], namespace)
            data = (secret or {}).get("data", {})
            if reference["key"] in data:
                environment[variable["name"]] = base64.b64decode(data[reference["key"]]).decode()
            elif not reference.get("optional"):
                raise RuntimeError(f"CreateContainerConfigError: secret {reference['name']} key {reference['key']}")
        return environment

    async def _proxy(self, request, path: str):
        if self.serving is None:
            return aiohttp.web.json_response({"message": "no endpoints available"}, status=503)
        version = self.serving
        if self.canary is not None:
            # kube-proxy spreads over every ready endpoint: the canary's pods among the stable ones.
            stable = (self.current("deployments") or {}).get("spec", {}).get("replicas", 1)
            canary, replicas = self.canary
            endpoints, self._spread = stable + replicas, self._spread + 1
            if (self._spread * replicas) // endpoints != ((self._spread - 1) * replicas) // endpoints:
                version = canary
        self.served.append(version)
        return await self._call(self.pods[version], request, path)

    def _project_mirror(self, request) -> None:
        """The ConfigMap as the serving pods see it: a file (gone when the ConfigMap is), its Service's
        cluster DNS name resolved to where that Service answers here."""
        if request.action == kmock.action.DELETE:
            self.mirror_file.unlink(missing_ok=True)
            return
        text = request.data["data"]["mirror.json"]
        for name, address in self.dns.items():
            text = text.replace(name, address)
        self.mirror_file.write_text(text)

    async def _pod_proxy(self, request, namespace: str, name: str, path: str):
        pod = self.current("pods", name, namespace)
        if pod is None:
            return aiohttp.web.json_response({"message": f'pods "{name}" not found'}, status=404)
        return await self._call(self.pods[pod["metadata"]["annotations"]["asgard.io/model-version"]], request, path)

    @staticmethod
    async def _call(pod, request, path: str):
        body = json.loads(request.body) if request.body else None
        status, content = await asyncio.to_thread(pod, request.method.value, path, body)
        return aiohttp.web.Response(status=status, body=content, content_type="application/json")

    def current(self, plural: str, name: str = APP, namespace: str | None = None) -> dict | None:
        group = "" if plural in ("services", "pods", "secrets") else {"deployments": "apps"}.get(plural)
        for (resource, stored_in, stored_name), stored in self.objects.items():
            if (
                resource.plural == plural
                and (group is None or resource.group == group)
                and stored_name == name
                and namespace in (None, stored_in)
            ):
                return None if stored.deleted else stored.raw
        return None


@pytest.fixture(scope="module")
def fitted():
    features, target = training_frame(customers=1500)
    spec = trainers.ModelSpec.from_request(
        {"framework": "sklearn", "model_type": "classification", "hyperparameters": {"params": {"n_estimators": 10}}}
    )
    return spec.fit(features[:1200], target[:1200]), features[1200:]


@pytest.fixture(scope="module")
def serving_apps(fitted, tmp_path_factory):
    """Real serving apps for v1 and v2; v4 starts and is healthy but fails every prediction."""
    model, holdout = fitted
    columns = [{"name": name, "type": "double", "required": True} for name in SEED_FEATURES]
    apps, stack = {}, contextlib.ExitStack()
    for version in ("1", "2"):
        folder = tmp_path_factory.mktemp(f"bundle-v{version}")
        identity = {"model_name": "churn", "version": version, "run_id": f"run{version}", "source": "models:/m"}
        write_bundle(folder, model, columns, "classification", holdout, identity=identity, labels={})
        apps[version] = stack.enter_context(TestClient(create_app(str(folder))))
    # v6: a real server whose model fails every 1-row request (the holdout's batch verifies).
    folder = tmp_path_factory.mktemp("bundle-v6")
    identity = {"model_name": "churn", "version": "6", "run_id": "run6", "source": "models:/m"}
    failing = Pipeline([("fail_single_rows", FunctionTransformer(_refuse_single_rows)), ("model", model)])
    write_bundle(folder, failing, columns, "classification", None, identity=identity, labels={})
    apps["6"] = stack.enter_context(TestClient(create_app(str(folder))))
    broken = FastAPI()
    broken.get("/health")(lambda: {"status": "ok", "model_loaded": True})
    broken.get("/metadata")(lambda: {"model_name": "churn", "model_version": "4"})
    broken.post("/predict")(lambda: JSONResponse({"detail": "model raised ValueError"}, status_code=500))
    apps["4"] = stack.enter_context(TestClient(broken))
    with stack:
        yield {
            version: (lambda method, path, body, client=client: _answer(client.request(method, path, json=body)))
            for version, client in apps.items()
        }


def _refuse_single_rows(matrix):
    if len(matrix) == 1:
        raise ValueError("this version cannot score a single row")
    return matrix


def _answer(response) -> tuple[int, bytes]:
    return response.status_code, response.content


@pytest.fixture(scope="module")
def online_version(fitted, tmp_path_factory):
    """v5 trained on ``customer_features``: its bundle can read them by id (what the image builder writes,
    made with Feast's functions); the view materialized into the machine's Redis, as production's online
    store. Yields a start function (environment -> pods, as the emulator calls it) and what
    ``get_online_features`` reads for customers 1-3."""
    from datetime import timedelta

    import redis

    from asgard.features import materialization
    from asgard.features import store as feature_store
    from asgard.features.online_reading import online_read_spec
    from conftest import feature_home
    from sample_data.gold_layer import GoldSpec

    gold = GoldSpec(customers=40, days=1, seed=5)
    redis.Redis(host="127.0.0.1", port=6379, db=ONLINE_REDIS_DB).flushdb()
    with feature_home(tmp_path_factory.mktemp("k8s-feast-home"), gold):
        online = {"type": "redis", "connection_string": f"127.0.0.1:6379,db={ONLINE_REDIS_DB}"}
        store = feature_store.open_store(online_store=online)
        window = materialization.Window("customer_features", gold.start_time, gold.end_time + timedelta(seconds=1))
        materialization.materialize_window(store, window)
        spec = online_read_spec(store, ["customer_features"], list(SEED_FEATURES))
        expected = store.get_online_features(
            features=[f"customer_features:{name}" for name in SEED_FEATURES],
            entity_rows=[{"customer_id": customer} for customer in (1, 2, 3)],
        ).to_dict()
    model, holdout = fitted
    folder = tmp_path_factory.mktemp("bundle-v5")
    columns = [{"name": name, "type": "double", "required": True} for name in SEED_FEATURES]
    identity = {"model_name": "churn", "version": "5", "run_id": "run5", "source": "models:/m"}
    info = write_bundle(folder, model, columns, "classification", holdout, identity=identity, labels={})
    (folder / "serving.json").write_text(json.dumps({**info, "online_features": spec}))

    with contextlib.ExitStack() as pods:

        def start(environment: dict[str, str]):
            # The app reads its environment as it starts (the lifespan): only the container's own.
            with pytest.MonkeyPatch.context() as patch:
                for name in [name for name in os.environ if name.startswith("ASGARD_")]:
                    patch.delenv(name)
                for name, value in environment.items():
                    patch.setenv(name, value)
                client = pods.enter_context(TestClient(create_app(str(folder))))
            return lambda method, path, body: _answer(client.request(method, path, json=body))

        yield start, expected
    redis.Redis(host="127.0.0.1", port=6379, db=ONLINE_REDIS_DB).flushdb()


@pytest.fixture
def cluster(serving_apps, monkeypatch):
    """The emulator, and the Airflow connection that reaches it."""
    with emulated_cluster(ServingCluster(pods=dict(serving_apps))) as (emulator, kubeconfig):
        connection = {"conn_type": "kubernetes", "extra": {"kube_config": kubeconfig}}
        monkeypatch.setenv("AIRFLOW_CONN_ASGARD_TEST_CLUSTER", json.dumps(connection))
        yield emulator


@pytest.fixture
def payload(fitted):
    return holdout_payload(fitted[1][SEED_FEATURES], rows=15)


def deploy(version: str, payload, **options):
    with kubernetes_target.cluster_hook(
        kubernetes_conn_id="asgard_test_cluster", eks_cluster_name=None, aws_conn_id="aws_default", namespace=NAMESPACE
    ) as hook:
        return kubernetes_target.deploy(
            hook,
            model_name="churn",
            version=version,
            run_id=f"run{version}",
            image=image(version),
            payload=payload,
            namespace=NAMESPACE,
            poll_seconds=0.05,
            **options,
        )


def lineage(emulator: ServingCluster) -> dict[str, str]:
    """The model version each object of the workload names."""
    return {
        plural: (emulator.current(plural) or {}).get("metadata", {}).get("labels", {}).get("asgard.io/model-version")
        for plural in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets")
    }


def template_image(emulator: ServingCluster) -> str:
    return emulator.current("deployments")["spec"]["template"]["spec"]["containers"][0]["image"]


def test_first_deploy_server_side_applies_every_object_and_proves_the_version_serves(cluster, payload):
    outcome = deploy("1", payload)

    assert outcome["changed"] and outcome["previous"] is None
    assert outcome["endpoint"] == f"http://{APP}.{NAMESPACE}.svc.cluster.local"
    assert lineage(cluster) == dict.fromkeys(lineage(cluster), "1")
    assert template_image(cluster) == image("1")
    applies = [request for request in cluster if request.method == "PATCH"]
    # The pods' NetworkPolicy first (no pod of the model runs unfenced), then the workload.
    assert [request.resource.plural for request in applies] == [
        "networkpolicies", "deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"
    ]  # fmt: skip
    assert cluster.current("networkpolicies")["spec"]["podSelector"]["matchExpressions"][0]["values"][0] == APP
    for request in applies:
        headers = {name.lower(): value for name, value in request.headers.items()}
        assert headers["content-type"] == "application/apply-patch+yaml"
        # Nothing of these names existed: the apply creates them, forcing nothing over anyone.
        assert (request.params["fieldManager"], request.params["force"]) == (
            "asgard",
            "False",
        )  # the client sends Python bools; ParseBool reads them
        assert headers["authorization"] == "Bearer deployer-token"
    # Verification went through the Service: health, metadata, then a prediction per holdout row.
    assert cluster.served == ["1"] * 3
    # The next deploy forces its fields over its own objects only (an autoscaler may hold some).
    deploy("2", payload)
    again = [request for request in cluster if request.method == "PATCH"][5:]
    assert len(again) == 5 and {request.params["force"] for request in again} == {"True"}


def test_reapplying_the_serving_version_changes_nothing(cluster, payload):
    deploy("1", payload)
    generation = cluster.current("deployments")["metadata"]["generation"]

    outcome = deploy("1", payload)

    assert not outcome["changed"] and outcome["previous"] == {"version": "1", "image": image("1")}
    assert cluster.current("deployments")["metadata"]["generation"] == generation == 1


def test_a_new_version_rolls_out_and_serves(cluster, payload):
    deploy("1", payload)
    outcome = deploy("2", payload)

    assert outcome["changed"] and outcome["previous"]["version"] == "1"
    assert cluster.current("deployments")["metadata"]["generation"] == 2
    assert template_image(cluster) == image("2") and set(lineage(cluster).values()) == {"2"}
    assert cluster.serving == "2"
    # What /mlops/models says serves is what the Deployments the target owns run: v2 alone, stable.
    from asgard.core.settings import Settings
    from asgard.deploy.serving_state import observe

    settings = Settings(kubernetes_conn_id="asgard_test_cluster", serving_namespace=NAMESPACE)
    observed = observe(settings, targets={"kubernetes"})
    assert observed.unknown == {}
    assert [(item.model_name, item.version, item.role) for item in observed.served] == [("churn", "2", "stable")]


class ServiceTraffic:
    """Callers of the model's Service while a deploy runs: 1-row requests through the service proxy."""

    def __init__(self, row: dict) -> None:
        self.row, self.answers, self.stop = row, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with kubernetes_target.cluster_hook(
            kubernetes_conn_id="asgard_test_cluster", eks_cluster_name=None, aws_conn_id="", namespace=NAMESPACE
        ) as hook:
            call = kubernetes_target.Cluster(hook, NAMESPACE).service_call(APP)
            while not self.stop.is_set():
                status, text = call("POST", "/predict", {"inputs": self.row, "return_probabilities": True})
                self.answers.append((status, json.loads(text).get("model_version")))
                time.sleep(0.005)

    def __enter__(self) -> ServiceTraffic:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def one_row(payload) -> dict:
    return {name: values[:1] for name, values in payload["inputs"].items()}


def test_a_canary_takes_its_share_of_the_service_and_is_promoted(cluster, payload):
    deploy("1", payload)
    canary = Rollout(strategy=CANARY, percent=30, min_requests=15, duration=60, max_p99_ratio=50)
    with ServiceTraffic(one_row(payload)) as traffic:
        outcome = deploy("2", payload, rollout=canary)

    trial = outcome["trial"]
    assert trial["decision"] == "promoted" and trial["requests"] >= 15 and trial["errors"] == 0, trial
    # 2 stable pods and round(2 * 30 / 70) = 1 canary pod: a third of the Service's endpoints.
    assert (trial["replicas"], trial["endpoint_share"]) == (1, 33.3)
    assert trial["stable_requests"] >= trial["requests"] and trial["p99_ms"] > 0
    assert {status for status, _ in traffic.answers} == {200}  # no caller failed
    assert {"1", "2"} <= {version for _, version in traffic.answers}
    # Promoted: the stable Deployment serves v2 on every pod, the canary Deployment is gone.
    assert template_image(cluster) == image("2") and cluster.serving == "2" and cluster.canary is None
    assert cluster.current("deployments", f"{APP}-canary", NAMESPACE) is None


def test_a_canary_failing_its_share_is_removed_and_the_stable_version_never_changed(cluster, payload):
    deploy("1", payload)
    generation = cluster.current("deployments")["metadata"]["generation"]
    canary = Rollout(strategy=CANARY, percent=30, min_requests=50, duration=60, max_error_rate=0.1)
    with ServiceTraffic(one_row(payload)) as traffic, pytest.raises(DeployError) as failure:
        deploy("6", payload, rollout=canary)

    breached = r"the canary breached max_error_rate: (\d+) of the new version's first \1 requests"
    assert re.match(breached, str(failure.value)), str(failure.value)
    assert failure.value.serving == "1" and failure.value.rollback_problem is None
    assert failure.value.figures["limit"] == "max_error_rate" and failure.value.figures["replicas"] == 1
    # Callers saw failures only from the canary's pods; the stable Deployment was never touched.
    assert {answer for answer in traffic.answers if answer[0] != 200} == {(500, None)}
    assert {version for status, version in traffic.answers if status == 200} == {"1"}
    assert cluster.current("deployments")["metadata"]["generation"] == generation
    assert template_image(cluster) == image("1") and cluster.canary is None
    assert cluster.current("deployments", f"{APP}-canary", NAMESPACE) is None


@pytest.fixture
def shadow_cluster(fitted, tmp_path, monkeypatch):
    """v1 serving with the mirror file its pods would see; v7, a version that predicts the opposite, as
    a real server on loopback (where the shadow Service's cluster DNS name resolves here)."""
    import uvicorn

    from conftest import free_port

    model, _ = fitted
    columns = [{"name": name, "type": "double", "required": True} for name in SEED_FEATURES]
    folders = {}
    for version, served in (("1", model), ("7", _Opposite(model))):
        folders[version] = tmp_path / f"bundle-v{version}"
        folders[version].mkdir()
        identity = {"model_name": "churn", "version": version, "run_id": f"run{version}", "source": "models:/m"}
        write_bundle(folders[version], served, columns, "classification", None, identity=identity, labels={})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(str(folders["7"])), host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    shadow_url = f"http://127.0.0.1:{port}"
    mirror_file = tmp_path / "mirror" / "mirror.json"
    mirror_file.parent.mkdir()

    def shadow_pod(method, path, body):
        import httpx

        answer = httpx.request(method, f"{shadow_url}{path}", json=body, timeout=30)
        return answer.status_code, answer.content

    with contextlib.ExitStack() as pods:

        def start_v1(environment):
            # The pod's mounted ConfigMap folder, as the kubelet projects it, is this test's file.
            assert environment["ASGARD_MIRROR_CONFIG"] == "/etc/asgard/mirror/mirror.json"
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("ASGARD_MIRROR_CONFIG", str(mirror_file))
                client = pods.enter_context(TestClient(create_app(str(folders["1"]))))
            return lambda method, path, body: _answer(client.request(method, path, json=body))

        emulator = ServingCluster(
            pods={"7": shadow_pod},
            starts={"1": start_v1},
            mirror_file=mirror_file,
            dns={f"http://{APP}-shadow.{NAMESPACE}.svc.cluster.local": shadow_url},
        )
        with emulated_cluster(emulator) as (emulator, kubeconfig):
            connection = {"conn_type": "kubernetes", "extra": {"kube_config": kubeconfig}}
            monkeypatch.setenv("AIRFLOW_CONN_ASGARD_TEST_CLUSTER", json.dumps(connection))
            yield emulator
    server.should_exit = True
    thread.join(timeout=10)


class _Opposite:
    """A classifier that answers the other class, with the probabilities swapped."""

    def __init__(self, model) -> None:
        self.model, self.classes_ = model, model.classes_

    def predict(self, frame):
        return 1 - self.model.predict(frame)

    def predict_proba(self, frame):
        return self.model.predict_proba(frame)[:, ::-1]


def test_a_shadow_is_copied_requests_by_the_serving_pods_and_never_answers_a_caller(shadow_cluster, payload):
    deploy("1", payload)
    generation = shadow_cluster.current("deployments")["metadata"]["generation"]
    strict = Rollout(strategy=SHADOW, percent=50, min_requests=20, duration=60, max_p99_ratio=50, min_agreement=0.9)
    with ServiceTraffic(one_row(payload)) as traffic, pytest.raises(DeployError) as failure:
        deploy("7", payload, rollout=strict)

    figures = failure.value.figures
    assert str(failure.value).startswith("the shadow breached min_agreement: agreement 0.00% < 90.00%"), failure.value
    assert figures["agreement"] == 0.0 and figures["compared_rows"] >= 15 and figures["requests"] >= 20
    assert figures["mean_abs_probability_diff"] > 0 and figures["stable_requests"] >= figures["requests"]
    # Every caller got the serving version's answer; the stable Deployment was never touched.
    assert traffic.answers and set(traffic.answers) == {(200, "1")}
    assert shadow_cluster.current("deployments")["metadata"]["generation"] == generation
    # The mirror, the shadow Deployment and its Service are gone: the serving pods copy nothing more.
    assert not shadow_cluster.mirror_file.exists() and shadow_cluster.shadow is None
    for plural in ("deployments", "services"):
        assert shadow_cluster.current(plural, f"{APP}-shadow", NAMESPACE) is None
    assert shadow_cluster.current("configmaps", f"{APP}-mirror", NAMESPACE) is None

    # Without an agreement limit the disagreement is reported, and the version promoted.
    reported = Rollout(strategy=SHADOW, percent=50, min_requests=20, duration=60, max_p99_ratio=50)
    with ServiceTraffic(one_row(payload)) as traffic:
        outcome = deploy("7", payload, rollout=reported)
    assert outcome["trial"]["decision"] == "promoted" and outcome["trial"]["agreement"] == 0.0
    assert template_image(shadow_cluster) == image("7") and shadow_cluster.serving == "7"
    assert not shadow_cluster.mirror_file.exists()


@pytest.mark.parametrize(
    ("behaviour", "options", "reason"),
    [
        ("crash", {}, r"pod churn-inference-v3-x1 of the new version is in CrashLoopBackOff: back-off 40s"),
        ("deadline", {}, r"exceeded its progress deadline: ReplicaSet .* has timed out progressing"),
        ("stall", {"rollout_timeout": 0.5}, r"timed out after 0s: 1 of 2 replicas updated"),
    ],
)
def test_a_version_whose_pods_never_get_ready_is_rolled_back_while_the_old_one_serves(
    cluster, payload, behaviour, options, reason
):
    deploy("2", payload)
    cluster.behaviour["3"] = behaviour
    before = {plural: cluster.current(plural)["spec"] for plural in ("deployments", "services")}

    with pytest.raises(DeployError, match=reason) as failure:
        deploy("3", payload, **options)

    assert failure.value.serving == "2"
    assert template_image(cluster) == image("2") and set(lineage(cluster).values()) == {"2"}
    assert {plural: cluster.current(plural)["spec"] for plural in ("deployments", "services")} == before
    assert set(cluster.served) == {"2"}  # v3 never answered a request


def test_a_version_that_fails_verification_is_rolled_back(cluster, payload):
    deploy("2", payload)

    with pytest.raises(DeployError, match=r"service models/churn-inference/predict answered 500: .*ValueError"):
        deploy("4", payload)

    assert template_image(cluster) == image("2") and set(lineage(cluster).values()) == {"2"}
    assert cluster.serving == "2"
    assert not deploy("2", payload)["changed"]  # the rolled-back version verifies as it is
    assert cluster.served[-3:] == ["2", "2", "2"]


def test_a_failed_first_deploy_leaves_no_workload_behind(cluster, payload):
    cluster.behaviour["3"] = "crash"

    with pytest.raises(DeployError, match="CrashLoopBackOff") as failure:
        deploy("3", payload)

    assert failure.value.serving is None
    assert set(lineage(cluster).values()) == {None}
    # Only the fence stays: the failed version's pods may still be terminating, and they run the model's code.
    fence = cluster.current("networkpolicies")
    assert fence is not None and fence["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_an_image_by_tag_is_refused_before_anything_is_applied(cluster, payload):
    with (
        kubernetes_target.cluster_hook(
            kubernetes_conn_id="asgard_test_cluster", eks_cluster_name=None, aws_conn_id="x", namespace=NAMESPACE
        ) as hook,
        pytest.raises(Exception, match="not pinned by digest"),
    ):
        kubernetes_target.deploy(
            hook, model_name="churn", version="1", run_id="r", image="repo:latest", payload=None, namespace=NAMESPACE
        )
    assert not [request for request in cluster if request.method == "PATCH"]


def test_a_model_whose_name_maps_to_another_models_workload_is_refused(cluster, payload):
    deploy("1", payload)
    before = cluster.current("deployments")["spec"]

    with (
        kubernetes_target.cluster_hook(
            kubernetes_conn_id="asgard_test_cluster", eks_cluster_name=None, aws_conn_id="x", namespace=NAMESPACE
        ) as hook,
        pytest.raises(
            InputError,
            match=r"5 objects model 'Churn' would apply are not its own \(Deployment models/churn-inference: it "
            r"serves model 'churn'; Service .*; HorizontalPodAutoscaler models/churn-inference: it belongs to model "
            r"'churn'; PodDisruptionBudget .*\)",
        ),
    ):
        kubernetes_target.deploy(
            hook, model_name="Churn", version="2", run_id="r2", image=image("2"), payload=payload, namespace=NAMESPACE
        )

    assert cluster.current("deployments")["spec"] == before
    assert template_image(cluster) == image("1")


def test_an_object_asgard_did_not_create_is_never_taken_over(cluster, payload):
    """Another team's (or a hand-made) Service of the workload's name: the deploy is refused, nothing applied."""
    with kubernetes_target.cluster_hook(
        kubernetes_conn_id="asgard_test_cluster", eks_cluster_name=None, aws_conn_id="x", namespace=NAMESPACE
    ) as hook:
        theirs = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "churn-inference", "namespace": NAMESPACE, "labels": {"team": "payments"}},
            "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80}]},
        }
        hook.core_v1_client.create_namespaced_service(NAMESPACE, theirs)
        refused = (
            r"^Service models/churn-inference does not belong to model 'churn': Asgard did not create it \(it has no "
            r"app.kubernetes.io/part-of=asgard label\). Asgard never overwrites or removes"
        )
        with pytest.raises(InputError, match=refused):
            kubernetes_target.deploy(
                hook,
                model_name="churn",
                version="1",
                run_id="r1",
                image=image("1"),
                payload=payload,
                namespace=NAMESPACE,
            )
    assert not [request for request in cluster if request.method == "PATCH"]
    assert cluster.current("services")["metadata"]["labels"] == {"team": "payments"}


def changes(emulator: ServingCluster) -> list:
    """The requests that changed (or tried to change) an object: applies and deletes."""
    return [request for request in emulator if request.method in ("PATCH", "DELETE", "POST", "PUT")]


def test_a_trial_is_refused_before_any_change_when_one_of_its_names_is_someone_elses(cluster, payload):
    """A hand-made Deployment named like the model's canary: the canary never starts, and the object is
    neither taken over nor removed by the trial's clean-up; a replace deploy (which needs no such name) runs."""
    deploy("1", payload)
    theirs = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{APP}-canary", "namespace": NAMESPACE, "labels": {"team": "payments"}},
        "spec": {
            "selector": {"matchLabels": {"app": "payments"}},
            "template": {"spec": {"containers": [{"name": "payments", "image": "payments:1"}]}},
        },
    }
    cluster.objects[DEPLOYMENTS, NAMESPACE, f"{APP}-canary"] = theirs
    changed_before = len(changes(cluster))

    with pytest.raises(
        InputError, match=rf"^Deployment models/{APP}-canary does not belong to model 'churn': Asgard did"
    ):
        deploy("2", payload, rollout=Rollout(strategy=CANARY, percent=30, min_requests=15, duration=60))

    assert len(changes(cluster)) == changed_before  # nothing applied, nothing deleted
    assert cluster.current("deployments", f"{APP}-canary", NAMESPACE)["metadata"]["labels"] == {"team": "payments"}
    assert template_image(cluster) == image("1")
    assert deploy("2", payload)["version"] == "2"
    assert cluster.current("deployments", f"{APP}-canary", NAMESPACE)["metadata"]["labels"] == {"team": "payments"}


def test_an_object_made_by_someone_else_during_a_deploy_is_not_forced_over_nor_removed_by_the_rollback(
    cluster, payload
):
    """Another team creates an autoscaler of the model's name while its first deploy runs: the apply stops
    there (never forced over it), the rollback removes what the run created and leaves theirs alone."""
    theirs = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": APP, "namespace": NAMESPACE, "labels": {"team": "payments"}},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "payments"}, "maxReplicas": 3},
    }

    def someone_else_creates_an_autoscaler(emulator: ServingCluster) -> None:
        emulator.after_deployment_applied = None
        emulator.objects[AUTOSCALERS, NAMESPACE, APP] = theirs

    cluster.after_deployment_applied = someone_else_creates_an_autoscaler
    with pytest.raises(DeployError) as failure:
        deploy("1", payload)

    assert str(failure.value).startswith(
        f"HorizontalPodAutoscaler models/{APP} does not belong to model 'churn': Asgard did not create it"
    ), failure.value
    assert failure.value.serving is None and failure.value.rollback_problem is None
    assert not [request for request in changes(cluster) if request.resource == AUTOSCALERS]
    assert cluster.current("horizontalpodautoscalers")["metadata"]["labels"] == {"team": "payments"}
    # What the run itself created is gone again.
    assert cluster.current("deployments") is None and cluster.current("services") is None


def test_a_deploy_keeps_the_replica_count_the_autoscaler_set(cluster, payload):
    deploy("1", payload, replicas=2)
    # The HorizontalPodAutoscaler scaled the workload out under load.
    cluster.current("deployments")["spec"]["replicas"] = 5

    deploy("2", payload, replicas=2)

    deployment = cluster.current("deployments")
    assert deployment["spec"]["replicas"] == 5 and deployment["status"]["availableReplicas"] == 5
    assert template_image(cluster) == image("2")


@pytest.mark.parametrize("exposed", [True, False])
def test_pods_read_the_online_store_url_from_the_secret_and_predict_by_id(cluster, payload, online_version, exposed):
    """The operator's Secret holds the Redis URL; the Deployment names it, the pods' app reads features
    by id through the Service, equal to Feast's; the URL is in no manifest. Only a deploy that exposes
    features (``expose_features``, the pods' environment) returns them; by default they are refused."""
    start, expected = online_version
    cluster.starts["5"] = start
    with kubernetes_target.cluster_hook(
        kubernetes_conn_id="asgard_test_cluster", eks_cluster_name=None, aws_conn_id="aws_default", namespace=NAMESPACE
    ) as hook:
        api = kubernetes_target.Cluster(hook, NAMESPACE)
        url = f"redis://127.0.0.1:6379/{ONLINE_REDIS_DB}"
        secret = {"metadata": {"name": "asgard-online-store"}, "stringData": {"url": url}, "type": "Opaque"}
        secret["data"] = {"url": base64.b64encode(url.encode()).decode()}  # what the API server stores
        api.core.create_namespaced_secret(NAMESPACE, secret)

        deploy("5", payload, online_store_secret="asgard-online-store", expose_features=exposed)
        call = api.service_call(APP)
        status, text = call("POST", "/predict", {"entities": {"customer_id": [1, 2, 3]}, "return_features": True})
        _, plain = call("POST", "/predict", {"entities": {"customer_id": [1, 2, 3]}})

    container = cluster.current("deployments")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "ASGARD_SERVING_EXPOSE_FEATURES", "value": json.dumps(exposed)} in container["env"]
    if exposed:
        assert status == 200, text
        answer = json.loads(text)
        assert answer["model_version"] == "5" and answer["entities"] == {"customer_id": [1, 2, 3]}
        assert answer["features"] == {name: expected[name] for name in SEED_FEATURES}
    else:
        assert status == 403 and "expose_features" in json.loads(text)["detail"], text
        assert json.loads(plain)["model_version"] == "5" and "features" not in json.loads(plain)
    assert url not in json.dumps(cluster.current("deployments"))
    assert {
        "name": "ASGARD_ONLINE_STORE",
        "valueFrom": {"secretKeyRef": {"name": "asgard-online-store", "key": "url", "optional": True}},
    } in container["env"]


def test_without_the_secret_pods_still_serve_features_and_say_why_ids_cannot_be_read(cluster, payload, online_version):
    cluster.starts["5"] = online_version[0]
    outcome = deploy("5", payload, online_store_secret="asgard-online-store")  # optional: the pods start, verified

    # (asked of the pod itself: the Service proxy's 503 would read as "no endpoint" to the client)
    status, body = cluster.pods["5"]("POST", "/predict", {"entities": {"customer_id": [1]}})
    assert outcome["version"] == "5" and cluster.serving == "5"
    assert status == 503 and "no online store" in json.loads(body)["detail"], body


def test_a_rollback_that_does_not_complete_is_reported_beside_the_failure(cluster, payload):
    deploy("2", payload)
    cluster.behaviour["3"] = "crash"
    # The old version's pods no longer come up either (say its image was pruned from the registry).
    cluster.behaviour["2"] = "stall"

    with pytest.raises(DeployError, match="CrashLoopBackOff") as failure:
        deploy("3", payload, rollout_timeout=0.5)

    assert failure.value.serving == "2"
    assert failure.value.rollback_problem.startswith("the rollback's own rollout did not complete: ")
    assert "1 of 2 replicas updated" in failure.value.rollback_problem
    assert template_image(cluster) == image("2")  # the old objects are back, even if not yet ready


def test_eks_kubeconfig_comes_from_the_eks_hook_against_moto(moto_server, monkeypatch):
    """EksHook writes the kubeconfig (endpoint, CA, token command); the client signs in with an EKS token."""
    from airflow.providers.amazon.aws.hooks.eks import EksHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIDEPLOY",
                "password": "deploy-secret",
                "extra": {"endpoint_url": moto_server, "region_name": "eu-west-1"},
            }
        ),
    )
    # The kubeconfig's token command runs this interpreter's Airflow (python3.11 on PATH).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    eks = EksHook(aws_conn_id="aws_default")
    eks.conn.create_cluster(
        name="serving",
        roleArn="arn:aws:iam::123456789012:role/eks",
        resourcesVpcConfig={"subnetIds": ["subnet-1"]},
    )
    endpoint = eks.conn.describe_cluster(name="serving")["cluster"]["endpoint"]

    with kubernetes_target.cluster_hook(
        kubernetes_conn_id="unused", eks_cluster_name="serving", aws_conn_id="aws_default", namespace=NAMESPACE
    ) as hook:
        config_file = Path(hook.config_file)
        kubeconfig = config_file.read_text()
        api_client = hook.get_conn()
    assert not config_file.exists()  # removed with the short-lived credentials
    assert endpoint in kubeconfig and "deploy-secret" not in kubeconfig
    assert api_client.configuration.host == endpoint.rstrip("/")
    token = api_client.configuration.api_key["BearerToken"]
    assert token.startswith("Bearer k8s-aws-v1.")
    # The token is STS GetCallerIdentity presigned with the connection's key (never the secret itself).
    signed = base64.urlsafe_b64decode(token.removeprefix("Bearer k8s-aws-v1.") + "==").decode()
    assert "Action=GetCallerIdentity" in signed and "X-Amz-Credential=AKIDEPLOY" in signed
    assert "deploy-secret" not in signed


@pytest.mark.skipif(
    not os.environ.get("ASGARD_TEST_KUBECONFIG"),
    reason="a real cluster is used only when ASGARD_TEST_KUBECONFIG (and ASGARD_TEST_SERVING_IMAGE) are given",
)
def test_deploy_to_a_real_cluster(monkeypatch):
    """A real API server: a serving image by digest (ASGARD_TEST_SERVING_IMAGE, of ASGARD_TEST_SERVING_VERSION)."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    hook = KubernetesHook(conn_id=None, kubernetes_conn_id=None, config_file=os.environ["ASGARD_TEST_KUBECONFIG"])
    version = os.environ.get("ASGARD_TEST_SERVING_VERSION", "1")
    outcome = kubernetes_target.deploy(
        hook,
        model_name=os.environ.get("ASGARD_TEST_SERVING_MODEL", "churn_predictor"),
        version=version,
        run_id="real-cluster-test",
        image=os.environ["ASGARD_TEST_SERVING_IMAGE"],
        payload=None,
        namespace=os.environ.get("ASGARD_TEST_NAMESPACE", "asgard-test"),
        replicas=1,
    )
    assert outcome["version"] == version


def test_deploy_model_on_kubernetes_records_the_outcome_and_moves_the_alias_back(cluster, tmp_path, monkeypatch):
    """deploy_model's last step with target kubernetes, on a real MLflow registry (SQLite)."""
    from airflow.sdk.exceptions import AirflowFailException

    from asgard.deploy.rollout import DeployRequest, deploy_to_target
    from asgard.hooks.mlflow import MlflowHook
    from asgard.serving.image import BuiltImage, PushedImage

    monkeypatch.setenv("ASGARD_KUBERNETES_CONN_ID", "asgard_test_cluster")
    monkeypatch.setenv("ASGARD_SERVING_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("ASGARD_PREDICTION_LOG_URI", "s3://serving-logs/prod")
    with sqlite_mlflow_home(tmp_path) as tracking_uri:
        versions = [register_sample_model(tracking_uri, "churn", customers=600) for _ in range(3)]
        assert versions == ["1", "2", "3"]
        client = MlflowHook().client
        request = DeployRequest("churn", version=None, alias="champion", target="kubernetes", replicas=2)

        def promote_and_deploy(version: str) -> dict:
            client.set_registered_model_alias("churn", "champion", version)
            run_id = client.get_model_version("churn", version).run_id
            build = BuiltImage("unused:tag", "churn", version, run_id, source="", built=True, flavor="onnx")
            push = PushedImage("unused:tag", digest=image(version).split("@")[1], reference=image(version))
            return deploy_to_target(request, build, push)

        assert promote_and_deploy("1")["previous_version"] is None
        outcome = promote_and_deploy("2")
        cluster.behaviour["3"] = "crash"
        with pytest.raises(AirflowFailException) as failure:
            promote_and_deploy("3")

        assert outcome == {
            "model_name": "churn",
            "version": "2",
            "target": "kubernetes",
            "endpoint": f"http://{APP}.{NAMESPACE}.svc.cluster.local",
            "digest": image("2").split("@")[1],
            "changed": True,
            "previous_version": "1",
            "strategy": "replace",
            "rollout": REPLACING.to_dict(),  # the request named none: the verified switch
            "trial": None,
        }
        assert str(failure.value).startswith(
            "churn v3 failed verification on kubernetes and was rolled back (v2 keeps serving): pod churn-inference-v3"
        )
        assert str(client.get_model_version_by_alias("churn", "champion").version) == "2"
        tags = {version: client.get_model_version("churn", version).tags for version in versions}
        assert tags["2"]["deploy.status"] == "serving" and tags["2"]["deploy.target"] == "kubernetes"
        assert tags["2"]["deploy.endpoint"] == outcome["endpoint"]
        assert tags["3"]["deploy.status"] == "rolled_back" and "CrashLoopBackOff" in tags["3"]["deploy.reason"]
        # The version switched away from no longer says it serves: by what, and when.
        assert tags["1"]["deploy.status"] == "replaced" and tags["1"]["deploy.replaced_by"] == "2"
        assert tags["1"]["deploy.replaced_at"].startswith("20")
        assert template_image(cluster) == image("2")
        # The pods ship their predictions where monitor_model reads them.
        container = cluster.current("deployments")["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "ASGARD_PREDICTION_LOG", "value": "s3://serving-logs/prod/churn"} in container["env"]
