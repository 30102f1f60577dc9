"""deploy_model's build and push, for real: a registered model -> image on the Docker engine ->
the local OCI registry (basic auth, and an ECR token from moto) -> pulled by digest -> run.

Everything here is real except AWS's control plane (moto): the MLflow server, the Docker engine,
the registry (distribution), the container and the serving app in it.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
import uuid

import docker
import httpx
import pytest
from airflow.sdk.exceptions import AirflowFailException

from asgard.core.settings import Settings
from asgard.hooks.airflow_api import AirflowApiError
from asgard.hooks.docker import RegistryError
from asgard.local.services import ServiceManager
from asgard.operators.serving_image import DockerBuildServingImageOperator, RegistryPushImageOperator
from conftest import free_port
from sample_data.models import SEED_PREDICTION, register_sample_model

pytestmark = pytest.mark.integration


SEED_PAYLOAD = SEED_PREDICTION


@pytest.fixture(scope="module")
def stack(embedded_stack):
    yield embedded_stack
    # Asset events from later tests' promotions must not start image builds in the background.
    with contextlib.suppress(AirflowApiError, Exception):
        embedded_stack.api.pause("deploy_model")


@pytest.fixture(scope="module")
def registered(stack) -> tuple[str, str]:
    name = f"serving_churn_{uuid.uuid4().hex[:6]}"
    return name, register_sample_model(stack.settings.mlflow_url, name, customers=5000)


@pytest.fixture(scope="module")
def deployed(stack, registered):
    """One deploy_model run through the REST API, and what its build and push tasks returned."""
    api = stack.api
    name, version = registered
    outcome = api.run_and_wait("deploy_model", {"model_name": name, "version": version}, timeout=900)
    assert outcome.state == "success", outcome.failure
    build = api.task_result("deploy_model", outcome.run_id, "build_image")
    push = api.task_result("deploy_model", outcome.run_id, "push_image")
    return build, {**push, "run_id": outcome.run_id}


@contextlib.contextmanager
def running(engine: docker.APIClient, image: str, **environment: str):
    port = free_port()
    container = engine.create_container(
        image,
        environment={"ASGARD_SERVING_PORT": str(port), **environment},
        host_config=engine.create_host_config(network_mode="host"),
    )
    engine.start(container)
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() - started < 60, engine.logs(container).decode()[-2000:]
            time.sleep(0.1)
        yield url, container
    finally:
        engine.remove_container(container, force=True)


def test_built_and_pushed_by_digest_then_served_from_a_pull(stack, engine, registered, deployed):
    name, version = registered
    build, push = deployed
    repository = stack.settings.serving_repository
    assert build["image"] == f"{repository}:{name}-v{version}" and build["built"] is True
    assert build["flavor"] == "onnx"
    assert push["digest"].startswith("sha256:") and push["reference"] == f"{repository}@{push['digest']}"

    # Gone from the engine, then pulled back by digest from the registry.
    engine.remove_image(build["image"], force=True)
    engine.pull(repository, tag=push["digest"])
    image = engine.inspect_image(push["reference"])
    labels = image["Config"]["Labels"]
    assert labels["io.asgard.model.name"] == name and labels["io.asgard.model.version"] == version
    assert labels["io.asgard.model.run_id"] == build["run_id"] and labels["org.opencontainers.image.revision"]
    assert image["Config"]["User"] == "10001:10001" and image["Config"]["Healthcheck"]["Test"]

    with running(engine, push["reference"]) as (url, container):
        exec_id = engine.exec_create(container, ["id", "-u"])
        assert engine.exec_start(exec_id).decode().strip() == "10001"

        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        metadata = httpx.get(f"{url}/metadata").json()
        assert (metadata["model_name"], metadata["model_version"]) == (name, version)
        assert metadata["labels"]["io.asgard.model.run_id"] == build["run_id"] and metadata["flavor"] == "onnx"

        predicted = httpx.post(f"{url}/predict", json=SEED_PAYLOAD).json()
        assert len(predicted["predictions"]) == 2 and set(predicted["predictions"]) <= {0, 1}
        assert all(abs(sum(p) - 1) < 1e-5 for p in predicted["probabilities"])
        invocations = httpx.post(f"{url}/invocations", json={"inputs": SEED_PAYLOAD["inputs"]}).json()
        assert invocations == {"predictions": predicted["predictions"]}

        missing = httpx.post(f"{url}/predict", json={"inputs": {"total_purchases": [1]}})
        assert missing.status_code == 422 and "missing column(s): avg_purchase_value" in missing.text
        extra = httpx.post(f"{url}/predict", json={"inputs": {**SEED_PAYLOAD["inputs"], "age": [1, 2]}})
        assert extra.status_code == 422 and "unexpected column(s): age" in extra.text
        typed = httpx.post(f"{url}/predict", json={"inputs": {**SEED_PAYLOAD["inputs"], "account_age_days": ["x", 1]}})
        assert typed.status_code == 422 and "'account_age_days' is double: row 0 holds 'x'" in typed.text


def test_registry_password_is_in_no_task_log(stack, deployed):
    _, push = deployed
    _, password = stack.manager.registry_credentials()
    for task in ("resolve_request", "build_image", "push_image"):
        log = stack.api.task_log("deploy_model", push["run_id"], task)
        assert log and password not in log, task
    assert "Login into Docker Registry" in stack.api.task_log("deploy_model", push["run_id"], "push_image")


def test_a_second_run_reuses_the_image_and_the_digest(stack, registered, deployed):
    name, version = registered
    _, first_push = deployed
    outcome = stack.api.run_and_wait("deploy_model", {"model_name": name, "version": version}, timeout=600)
    assert outcome.state == "success", outcome.failure
    build = stack.api.task_result("deploy_model", outcome.run_id, "build_image")
    push = stack.api.task_result("deploy_model", outcome.run_id, "push_image")
    assert build["built"] is False and push["digest"] == first_push["digest"]


def test_bad_conf_is_a_400_and_an_unknown_model_fails_naming_it(stack):
    api = stack.api
    with pytest.raises(AirflowApiError) as error:
        api.trigger("deploy_model", {"model_name": "m", "target": "mainframe"})
    assert error.value.status == 400 and "mainframe" in error.value.body
    for bad, named in (({"strategy": "blue"}, "blue"), ({"strategy": "canary", "percent": 80}, "80")):
        with pytest.raises(AirflowApiError) as error:
            api.trigger("deploy_model", {"model_name": "m", **bad})
        assert error.value.status == 400 and named in error.value.body, error.value.body
    outcome = api.run_and_wait("deploy_model", {"model_name": "no_such_model_here"}, timeout=300)
    # The approval step resolves the version first (what is decided on is what is built): it fails there.
    assert outcome.state == "failed" and outcome.task_states["approve_deployment"] == "failed", outcome.task_states
    assert outcome.task_states["build_image"] == "upstream_failed"
    log = api.task_log("deploy_model", outcome.run_id, "approve_deployment")
    assert "no registered model named 'no_such_model_here'" in log


def test_version_without_signature_or_unknown_version_fails_naming_it(stack, registered, monkeypatch):
    monkeypatch.setenv("ASGARD_HOME", str(stack.settings.home))
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": stack.settings.mlflow_port}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_ASGARD_REGISTRY", stack.manager.registry_connection())
    name, _ = registered
    with pytest.raises(AirflowFailException, match=f"registered model '{name}' has no version 99"):
        DockerBuildServingImageOperator(task_id="build", model_name=name, version="99").execute({})
    unsigned = f"unsigned_{uuid.uuid4().hex[:6]}"
    version = register_sample_model(stack.settings.mlflow_url, unsigned, customers=500, with_signature=False)
    with pytest.raises(AirflowFailException, match=f"{unsigned} version {version} has no input signature"):
        DockerBuildServingImageOperator(task_id="build", model_name=unsigned, version=version).execute({})


def test_refused_login_and_unreachable_registry_fail_naming_the_registry(stack, engine, deployed, monkeypatch):
    build, _ = deployed
    settings = stack.settings
    monkeypatch.setenv("ASGARD_HOME", str(settings.home))
    connection = json.loads(stack.manager.registry_connection())
    monkeypatch.setenv("AIRFLOW_CONN_WRONG_PASSWORD", json.dumps({**connection, "password": "not-the-password"}))
    refused = f"{settings.serving_repository}:refused-login"
    engine.tag(build["image"], settings.serving_repository, "refused-login")
    with pytest.raises(AirflowFailException, match=f"registry {settings.registry_address} refused the login"):
        RegistryPushImageOperator(task_id="push", image=refused, docker_conn_id="wrong_password").execute({})
    # Nothing of the refused push is visible in the registry: no tag was created.
    tags = httpx.get(
        f"http://{settings.registry_address}/v2/asgard/models/tags/list", auth=stack.manager.registry_credentials()
    ).json()["tags"]
    assert "refused-login" not in tags and build["image"].rsplit(":", 1)[1] in tags

    closed = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_NOWHERE", json.dumps({**connection, "port": closed}))
    nowhere = f"127.0.0.1:{closed}/asgard/models:nowhere"
    engine.tag(build["image"], f"127.0.0.1:{closed}/asgard/models", "nowhere")
    # Unreachable is "not now": the task's retries may still succeed, so it is not a failure without retry.
    with pytest.raises(RegistryError, match=f"registry 127.0.0.1:{closed} is unreachable"):
        RegistryPushImageOperator(task_id="push", image=nowhere, docker_conn_id="nowhere").execute({})


def test_ecr_token_pushes_and_no_secret_reaches_the_image(stack, engine, deployed, moto_server, tmp_path, monkeypatch):
    """The ECR path: the amazon provider's EcrHook gets the token (moto), the push goes to a real registry
    that accepts exactly that token (moto has no /v2 API), and the AWS secret is nowhere in the image."""
    build, _ = deployed
    secret = f"asgard-test-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ASGARD_HOME", str(stack.settings.home))
    monkeypatch.setenv(
        "AIRFLOW_CONN_MOTO_AWS",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIDASGARDTEST",
                "password": secret,
                "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"},
            }
        ),
    )
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook

    token = EcrHook(aws_conn_id="moto_aws").get_temporary_credentials()[0]
    # A second real registry whose only login is the ECR token's.
    ecr_settings = Settings(
        home=tmp_path / "ecr",
        profile="embedded",
        airflow_port=free_port(),
        mlflow_port=free_port(),
        registry_port=free_port(),
    )
    ecr_registry = ServiceManager(ecr_settings)
    ecr_settings.state_dir.mkdir(parents=True)
    (ecr_settings.state_dir / "registry-secrets.json").write_text(
        json.dumps({"user": token.username, "password": token.password})
    )
    ecr_registry.start(["registry"], log=lambda _: None)
    try:
        image = f"{ecr_settings.registry_address}/asgard/models:ecr-test"
        engine.tag(build["image"], f"{ecr_settings.registry_address}/asgard/models", "ecr-test")
        pushed = RegistryPushImageOperator(
            task_id="push", image=image, registry_type="ecr", aws_conn_id="moto_aws"
        ).execute({})
        assert pushed["digest"].startswith("sha256:")
        engine.remove_image(image, force=True)
        engine.pull(
            f"{ecr_settings.registry_address}/asgard/models",
            tag=pushed["digest"],
            auth_config={"username": token.username, "password": token.password},
        )
    finally:
        ecr_registry.stop(["registry"], log=lambda _: None)

    # Nothing of the AWS credentials in any layer, the config, the environment or the history.
    saved = b"".join(engine.get_image(pushed["reference"]))
    with tarfile.open(fileobj=io.BytesIO(saved)) as archive:
        for member in archive.getmembers():
            if member.isfile():
                content = archive.extractfile(member).read()
                if member.name.endswith(".tar"):
                    with tarfile.open(fileobj=io.BytesIO(content)) as layer:
                        for entry in layer.getmembers():
                            if entry.isfile():
                                data = layer.extractfile(entry).read()
                                assert secret.encode() not in data and token.password.encode() not in data, entry.name
                else:
                    assert secret.encode() not in content and token.password.encode() not in content, member.name
    inspected = json.dumps([engine.inspect_image(pushed["reference"]), engine.history(pushed["reference"])])
    assert secret not in inspected and token.password not in inspected
