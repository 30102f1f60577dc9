"""deploy_model's Docker target, for real: v1, then v2, then a broken v3, through the REST API, while
load loops keep calling the stable endpoint (small requests back to back, and large batches that
take seconds each). v2 must keep serving after v3 fails, and the loops must see no failed request
through all three deploys: a switch waits for the requests in flight to the old version.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from conftest import assert_models_name_what_answers
from sample_data.models import SEED_FEATURES, register_sample_model

pytestmark = pytest.mark.integration

ROW = {
    "total_purchases": [10],
    "avg_purchase_value": [50.0],
    "days_since_last_purchase": [5],
    "customer_lifetime_value": [500.0],
    "account_age_days": [365],
    "support_tickets_count": [2],
}


@pytest.fixture(scope="module")
def stack(embedded_stack):
    yield embedded_stack
    with contextlib.suppress(Exception):
        embedded_stack.api.pause("deploy_model")


class LoadLoop(threading.Thread):
    """Calls the stable endpoint back to back and counts what did not answer 200."""

    def __init__(self, url: str, rows: int = 1) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.ok, self.failures, self.versions = url, threading.Event(), 0, [], set()
        # Encoded once: a batch's JSON is megabytes, and encoding it for every request would take the cores the
        # deploys under test need.
        self.body = json.dumps({"inputs": {name: values * rows for name, values in ROW.items()}}).encode()
        self.seconds: list[float] = []

    def run(self) -> None:
        headers = {"content-type": "application/json"}
        with httpx.Client(timeout=300) as client:
            while not self.stop.is_set():
                try:
                    started = time.perf_counter()
                    response = client.post(self.url, content=self.body, headers=headers)
                    self.seconds.append(time.perf_counter() - started)
                    if response.status_code == 200:
                        self.ok += 1
                        self.versions.add(response.json()["model_version"])
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                time.sleep(0.02)


def register_broken_version(tracking_uri: str, name: str) -> str:
    """A model that starts and reports its version, but whose every prediction fails: its pipeline inverts
    the input matrix (which is not square). It cannot be converted to ONNX, so its native model serves."""
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    def broken(features, target):
        forest = RandomForestClassifier(n_estimators=5).fit(features, target)
        return Pipeline([("broken", FunctionTransformer(np.linalg.inv)), ("model", forest)])

    return register_version(tracking_uri, name, broken)


def register_version(tracking_uri: str, name: str, make_model) -> str:
    """Log and register ``make_model(features, target)`` with a holdout sample, as training does."""
    import mlflow
    from mlflow.models import infer_signature

    from asgard.registry.versions import HOLDOUT_ARTIFACT, ORIGIN_TAG, PLATFORM_ORIGIN
    from asgard.training import trainers
    from sample_data.models import training_frame

    features, target = training_frame(customers=500, features=SEED_FEATURES)
    model = make_model(features, target)
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=client.get_experiment_by_name("serving-samples").experiment_id) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(features.head(5), target.head(5)),
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
                pip_requirements=trainers.pip_requirements("sklearn"),
            )
            # The holdout sample training logs: deploy_model verifies a new version by predicting it.
            with tempfile.TemporaryDirectory() as scratch:
                sample = Path(scratch) / Path(HOLDOUT_ARTIFACT).name
                features.head(20).to_parquet(sample, index=False)
                mlflow.log_artifact(str(sample), str(Path(HOLDOUT_ARTIFACT).parent))
    finally:
        mlflow.set_tracking_uri(None)
    version = client.create_model_version(
        name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id, tags={ORIGIN_TAG: PLATFORM_ORIGIN}
    )
    return str(version.version)


def test_blue_green_deploys_and_a_broken_version_rolls_back_without_a_failed_request(stack):
    api, settings = stack.api, stack.settings
    name = f"bluegreen_{uuid.uuid4().hex[:6]}"
    client = MlflowClient(settings.mlflow_url)
    endpoint = f"{settings.router_url}/models/{name}"

    v1 = register_sample_model(settings.mlflow_url, name, customers=3000)
    first = api.run_and_wait("deploy_model", {"model_name": name, "version": v1}, timeout=900)
    assert first.state == "success", first.failure
    deployed = api.task_result("deploy_model", first.run_id, "deploy_image")
    assert deployed["endpoint"] == endpoint and deployed["version"] == v1 and deployed["changed"] is True
    assert httpx.get(f"{endpoint}/metadata").json()["model_version"] == v1
    assert_models_name_what_answers(stack, name)

    loop = LoadLoop(f"{endpoint}/predict")
    # Batches of 30,000 rows: each takes tens of 1-row requests' time, so switches happen while
    # several are in flight.
    slow = LoadLoop(f"{endpoint}/predict", rows=30_000)
    loop.start()
    slow.start()
    try:
        v2 = register_sample_model(settings.mlflow_url, name, customers=3000, features=SEED_FEATURES)
        second = api.run_and_wait("deploy_model", {"model_name": name, "version": v2}, timeout=900)
        assert second.state == "success", second.failure
        assert httpx.get(f"{endpoint}/metadata").json()["model_version"] == v2

        v3 = register_broken_version(settings.mlflow_url, name)
        client.set_registered_model_alias(name, "champion", v3)
        third = api.run_and_wait("deploy_model", {"model_name": name, "alias": "champion"}, timeout=900)
        time.sleep(1)
    finally:
        loop.stop.set()
        slow.stop.set()
        loop.join(timeout=30)
        slow.join(timeout=300)

    assert third.state == "failed" and third.task_states["deploy_image"] == "failed"
    log = api.task_log("deploy_model", third.run_id, "deploy_image")
    assert f"{name} v{v3} failed verification on docker and was rolled back (v{v2} keeps serving)" in log
    assert "/predict answered 500" in log
    assert httpx.get(f"{endpoint}/metadata").json()["model_version"] == v2
    # The alias the run deployed moves back to the version still serving; the outcome is on each version.
    assert client.get_model_version_by_alias(name, "champion").version == v2
    assert client.get_model_version(name, v3).tags["deploy.status"] == "rolled_back"
    assert client.get_model_version(name, v2).tags["deploy.status"] == "serving"
    assert client.get_model_version(name, v1).tags["deploy.status"] == "replaced"
    assert client.get_model_version(name, v1).tags["deploy.replaced_by"] == v2
    assert client.get_model_version(name, v2).tags["deploy.endpoint"] == endpoint
    # v2 answers and is the only one said to serve; v3 (the champion a moment) and v1 are not.
    states = {v["version"]: v["serving"] for v in assert_models_name_what_answers(stack, name)["versions"]}
    assert states[v2]["champion"] and states[v1]["state"] == states[v3]["state"] == "not_serving"

    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 50 and {v1, v2} <= loop.versions and v3 not in loop.versions
    assert slow.failures == [], slow.failures[:5]
    assert slow.ok >= 3 and v3 not in slow.versions, slow.versions
    assert statistics.median(slow.seconds) > 10 * statistics.median(loop.seconds), (slow.seconds, loop.seconds[:20])

    # Only v2's container is left; a re-run for the same version changes nothing.
    again = api.run_and_wait("deploy_model", {"model_name": name, "version": v2}, timeout=600)
    assert again.state == "success", again.failure
    assert api.task_result("deploy_model", again.run_id, "deploy_image")["changed"] is False
    import docker

    engine = docker.APIClient(base_url=settings.docker_url, version="auto")
    running = engine.containers(filters={"label": f"io.asgard.deploy.model={name}"})
    assert [c["Labels"]["io.asgard.deploy.version"] for c in running] == [v2]
    assert running[0]["Labels"]["io.asgard.profile"] == "embedded"  # its profile's, as its route is


def test_two_profiles_of_one_install_never_route_to_each_others_containers(stack):
    """The embedded profile serves a model; the production profile of the same home (its own router, the
    same Docker engine) deploys a model of the same name: each router forwards only to its own profile's
    container, each reconcile brings back only its own, and /mlops/models names only the profile's own."""
    import subprocess
    import sys

    import docker

    from asgard.core.settings import REPO_ROOT
    from asgard.deploy import docker_target
    from asgard.deploy.routes import PROFILE_LABEL, RouteTable, owner_of
    from asgard.local.reconcile import reconcile_serving
    from conftest import free_port

    embedded = stack.settings
    mine = RouteTable.for_settings(embedded)
    if not mine.routes():  # run alone: one deploy of the embedded profile to stand beside
        name = f"profiles_{uuid.uuid4().hex[:6]}"
        version = register_sample_model(embedded.mlflow_url, name, customers=500)
        deployed = stack.api.run_and_wait("deploy_model", {"model_name": name, "version": version}, timeout=900)
        assert deployed.state == "success", deployed.failure
    name, route = next(iter(sorted(mine.routes().items())))
    production = embedded.model_copy(update={"profile": "production", "router_port": free_port()})
    theirs = RouteTable.for_settings(production)
    assert theirs.path != mine.path and owner_of(production)["install"] == owner_of(embedded)["install"]

    engine = docker.APIClient(base_url=embedded.docker_url, version="auto")
    router = subprocess.Popen(
        [sys.executable, "-m", "asgard.local.router", str(theirs.path), production.bind_host,
         str(production.router_port), *owner_of(production).values()],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT / 'include' / 'serving'}"},
    )  # fmt: skip
    container = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{production.router_url}/health?profile=production", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        # The production profile deploys the same model name, from the same image (a version of its own).
        outcome = docker_target.deploy(
            engine, model_name=name, version=route["version"], image=route["image"], payload=None, routes=theirs,
            router_url=production.router_url, timeout=120, drain_seconds=0,
        )  # fmt: skip
        container = outcome["container"]
        assert outcome["previous"] is None  # the embedded profile's route is not its own to replace
        labels = engine.inspect_container(container)["Config"]["Labels"]
        assert labels[PROFILE_LABEL] == "production"

        # Each router names its own profile's containers only, and forwards to them.
        for settings, profile in ((embedded, "embedded"), (production, "production")):
            routed = httpx.get(f"{settings.router_url}/routes", timeout=10).json()
            for entry in routed.values():
                assert entry["owner"] == owner_of(settings), entry
                container_labels = engine.inspect_container(entry["container"])["Config"]["Labels"]
                assert container_labels[PROFILE_LABEL] == profile, (profile, entry)
            answer = httpx.get(f"{settings.router_url}/models/{name}/health", timeout=10)
            assert answer.status_code == 200, answer.text
        assert httpx.get(f"{embedded.router_url}/routes", timeout=10).json()[name]["container"] == route["container"]
        assert httpx.get(f"{production.router_url}/routes", timeout=10).json()[name]["container"] == container
        # The embedded router is not the production profile's (its health says so: a start would not take it).
        assert httpx.get(f"{embedded.router_url}/health?profile=production", timeout=10).status_code == 409

        # The embedded profile's reconcile leaves the production container stopped; production's brings it back.
        engine.stop(container, timeout=1)
        assert not any(container in action for action in reconcile_serving(embedded, health_timeout=30))
        assert not engine.inspect_container(container)["State"]["Running"]
        (action,) = reconcile_serving(production, health_timeout=60)
        assert container in action and "started again" in action
        # The embedded profile's /mlops/models names its own container, not the production one.
        details = assert_models_name_what_answers(stack, name)
        assert [item["where"] for item in details["serving"]] == [route["container"]]

        # Routes an older version wrote without owners into the embedded table (once both profiles'): the
        # embedded reconcile drops the one to the production container and adopts the one to its own.
        import json

        legacy = json.loads(mine.path.read_text())
        for model, entry in ((f"{name}_theirs", outcome), (f"{name}_mine", route)):
            legacy[model] = {key: entry[key] for key in ("container", "upstream", "image", "version")}
        mine.path.write_text(json.dumps(legacy))
        assert {f"{name}_theirs", f"{name}_mine"}.isdisjoint(httpx.get(f"{embedded.router_url}/routes").json())
        actions = reconcile_serving(embedded, health_timeout=30)
        assert any(line.startswith(f"{name}_theirs: route to {container} dropped") for line in actions), actions
        assert any(line.startswith(f"{name}_mine: route to {route['container']} adopted") for line in actions)
        routed = httpx.get(f"{embedded.router_url}/routes", timeout=10).json()
        assert f"{name}_theirs" not in routed and routed[f"{name}_mine"]["owner"] == owner_of(embedded)
        mine.set(f"{name}_mine", None)
    finally:
        router.terminate()
        router.wait(timeout=30)
        if container:
            docker_target.remove_serving_container(engine, container)
        theirs.path.unlink(missing_ok=True)


class TrafficLoop(threading.Thread):
    """Live traffic for a trial: 1-row requests for customers of every purchase count, each answer kept
    with the version the router says gave it."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.answers = url, threading.Event(), []

    def run(self) -> None:
        purchases = 0
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                purchases = (purchases + 7) % 100
                body = {"inputs": {**ROW, "total_purchases": [purchases]}, "return_probabilities": True}
                try:
                    answer = client.post(self.url, json=body)
                    self.answers.append((answer.status_code, answer.headers.get("x-asgard-model-version")))
                except httpx.HTTPError as error:
                    self.answers.append((repr(error), None))
                time.sleep(0.01)

    def seen(self, since: int = 0, until: int | None = None) -> dict:
        """Answers by (status, version), from the ``since``-th to the ``until``-th."""
        from collections import Counter

        return dict(Counter(self.answers[since:until]))


def fails_every_fourth_customer(features, target):
    """A version that verifies (the holdout's 20-row batch) and then fails every 1-row request of a
    customer whose purchase count is a multiple of 4: a quarter of live traffic."""
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    def fail_some(matrix):
        values = np.asarray(matrix, dtype=float)
        if len(values) == 1 and int(values[0, 0]) % 4 == 0:
            raise ValueError("this version cannot score a customer whose purchases are a multiple of 4")
        return values

    return Pipeline(
        [("fail_some", FunctionTransformer(fail_some)), ("model", RandomForestClassifier(n_estimators=5))]
    ).fit(features, target)


def answers_the_opposite(features, target):
    """A healthy version whose predictions disagree with the sample model's."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=10, random_state=0).fit(features, 1 - target)


def test_canary_and_shadow_are_decided_by_live_traffic(stack):
    api, settings = stack.api, stack.settings
    name = f"trial_{uuid.uuid4().hex[:6]}"
    client = MlflowClient(settings.mlflow_url)
    endpoint = f"{settings.router_url}/models/{name}"
    trial = {"min_requests": 40, "duration": 120, "max_p99_ratio": 20}

    v1 = register_sample_model(settings.mlflow_url, name, customers=3000)
    first = api.run_and_wait("deploy_model", {"model_name": name, "version": v1}, timeout=900)
    assert first.state == "success", first.failure

    loop = TrafficLoop(f"{endpoint}/predict")
    loop.start()
    try:
        # A shadow that disagrees: callers keep v1's answers; its agreement breaches the limit asked for.
        v2 = register_version(settings.mlflow_url, name, answers_the_opposite)
        conf = {"model_name": name, "version": v2, "strategy": "shadow", "percent": 50, "min_agreement": 0.9}
        shadow = api.run_and_wait("deploy_model", {**conf, **trial}, timeout=900)
        after_shadow = len(loop.answers)

        # A good canary (a retrained v1) takes 20% of live traffic, then all of it.
        v3 = register_sample_model(settings.mlflow_url, name, customers=3000)
        conf = {"model_name": name, "version": v3, "strategy": "canary", "percent": 20}
        good = api.run_and_wait("deploy_model", {**conf, **trial}, timeout=900)
        after_good = len(loop.answers)

        # A canary failing a quarter of its requests, deployed through the champion alias: rolled back
        # within its window, the alias moved back.
        v4 = register_version(settings.mlflow_url, name, fails_every_fourth_customer)
        client.set_registered_model_alias(name, "champion", v4)
        conf = {"model_name": name, "alias": "champion", "strategy": "canary", "percent": 20, "max_error_rate": 0.05}
        bad = api.run_and_wait("deploy_model", {**conf, **trial, "min_requests": 200}, timeout=900)
        time.sleep(1)
    finally:
        loop.stop.set()
        loop.join(timeout=60)

    assert shadow.state == "failed", shadow.failure
    log = api.task_log("deploy_model", shadow.run_id, "deploy_image")
    assert "the shadow breached min_agreement: agreement" in log
    shadow_tags = client.get_model_version(name, v2).tags
    assert shadow_tags["deploy.shadow.decision"] == "rolled_back" and shadow_tags["deploy.status"] == "rolled_back"
    assert float(shadow_tags["deploy.shadow.agreement"]) < 0.9
    assert int(shadow_tags["deploy.shadow.requests"]) >= 40 and int(shadow_tags["deploy.shadow.compared_rows"]) >= 30
    assert float(shadow_tags["deploy.shadow.mean_abs_probability_diff"]) > 0
    # Never a caller's answer from the shadow, never a failure.
    assert after_shadow > 40 and loop.seen(0, after_shadow) == {(200, v1): after_shadow}

    assert good.state == "success", good.failure
    result = api.task_result("deploy_model", good.run_id, "deploy_image")
    assert result["strategy"] == "canary" and result["trial"]["decision"] == "promoted"
    assert result["trial"]["requests"] >= 40 and result["trial"]["errors"] == 0
    during_good = loop.seen(after_shadow, after_good)
    assert set(during_good) == {(200, v1), (200, v3)}, during_good  # 0 failed requests

    assert bad.state == "failed" and bad.task_states["deploy_image"] == "failed"
    log = api.task_log("deploy_model", bad.run_id, "deploy_image")
    assert "the canary breached max_error_rate:" in log, log[-2000:]
    assert httpx.get(f"{endpoint}/metadata").json()["model_version"] == v3
    assert client.get_model_version_by_alias(name, "champion").version == v3
    bad_tags = client.get_model_version(name, v4).tags
    assert bad_tags["deploy.canary.decision"] == "rolled_back" and bad_tags["deploy.canary.limit"] == "max_error_rate"
    # Rolled back within its window: the errors were caught before the 200 requests it asked for.
    assert int(bad_tags["deploy.canary.requests"]) < 200
    during_bad = loop.seen(after_good)
    failed = {key: count for key, count in during_bad.items() if key[0] != 200}
    # Callers saw failures only from the canary's share, and about a quarter of it.
    assert failed and set(failed) == {(500, v4)}, during_bad
    assert sum(failed.values()) == int(bad_tags["deploy.canary.errors"])
    canary_share = during_bad.get((200, v4), 0) + sum(failed.values())
    assert canary_share <= 0.2 * sum(during_bad.values()) + 1, during_bad

    auth = {"Authorization": f"Bearer {api.token}"}
    models = httpx.get(f"{api.base_url}/mlops/models/{name}", headers=auth, timeout=60).json()
    shown = {version["version"]: version["deployment"] for version in models["versions"]}
    assert shown[v3]["canary"]["decision"] == "promoted" and shown[v4]["canary"]["limit"] == "max_error_rate"
    assert shown[v2]["shadow"]["decision"] == "rolled_back"
    # The promoted canary serves alone; the version it replaced, the shadow and the bad canary do not.
    states = {v["version"]: v["serving"]["state"] for v in assert_models_name_what_answers(stack, name)["versions"]}
    assert states == {v1: "not_serving", v2: "not_serving", v3: "serving", v4: "not_serving"}

    import docker

    engine = docker.APIClient(base_url=settings.docker_url, version="auto")
    running = engine.containers(filters={"label": f"io.asgard.deploy.model={name}"})
    assert [c["Labels"]["io.asgard.deploy.version"] for c in running] == [v3]
