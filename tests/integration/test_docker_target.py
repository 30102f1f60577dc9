"""deploy_model's Docker target, for real: v1, then v2, then a broken v3, through the REST API, while
load loops keep calling the stable endpoint (small requests back to back, and large batches that
take seconds each). v2 must keep serving after v3 fails, and the loops must see no failed request
through all three deploys: a switch waits for the requests in flight to the old version.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

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
        self.body = {"inputs": {name: values * rows for name, values in ROW.items()}}
        self.seconds: list[float] = []

    def run(self) -> None:
        with httpx.Client(timeout=300) as client:
            while not self.stop.is_set():
                try:
                    started = time.perf_counter()
                    response = client.post(self.url, json=self.body)
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
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from asgard.registry.versions import HOLDOUT_ARTIFACT, ORIGIN_TAG, PLATFORM_ORIGIN
    from asgard.training import trainers
    from sample_data.models import training_frame

    features, target = training_frame(customers=500, features=SEED_FEATURES)
    forest = RandomForestClassifier(n_estimators=5).fit(features, target)
    model = Pipeline([("broken", FunctionTransformer(np.linalg.inv)), ("model", forest)])
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

    loop = LoadLoop(f"{endpoint}/predict")
    # Batches of 90,000 rows: each takes tens of 1-row requests' time, so switches happen while
    # several are in flight.
    slow = LoadLoop(f"{endpoint}/predict", rows=90_000)
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
    assert client.get_model_version(name, v2).tags["deploy.endpoint"] == endpoint

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
