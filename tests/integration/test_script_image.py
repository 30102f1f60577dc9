"""train_script's pod runner image, for real: built on the embedded Docker engine, pushed to the registry,
then run the way the pod runs it (its command, environment, user, read-only root filesystem, the
ConfigMap's files mounted read-only) on the seed's example script, which logs a model to the real
MLflow server. No Kubernetes API server can run here; the pod spec itself is validated against the
official schemas in tests/plugins/test_script_pod.py.
"""

from __future__ import annotations

import base64
import uuid

import docker
import pytest
from mlflow import MlflowClient

from asgard.core.settings import REPO_ROOT
from asgard.operators.script_pod import SCRIPT_MOUNT, UserScriptPodOperator
from asgard.training.scripts import image as script_image
from asgard.training.scripts import runner as user_scripts

REQUIREMENTS = ["scikit-learn", "pandas"]


@pytest.fixture(scope="module")
def settings(embedded_stack):
    return embedded_stack.settings


@pytest.fixture(scope="module")
def pushed(embedded_stack, settings):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_ASGARD_REGISTRY", embedded_stack.manager.registry_connection())
        first = script_image.ensure_script_image(REQUIREMENTS, settings=settings)
        again = script_image.ensure_script_image(REQUIREMENTS, settings=settings)
    return first, again


def test_the_image_is_built_once_per_requirements_set_and_given_by_digest(pushed, settings, engine):
    first, again = pushed
    key = user_scripts.environment_key(REQUIREMENTS)
    assert first["built"] and not again["built"]
    assert first["image"] == again["image"] and first["image"].startswith(f"{settings.script_repository}@sha256:")
    assert first["environment_key"] == key
    labels = engine.inspect_image(first["image"])["Config"]["Labels"]
    assert labels[script_image.ENVIRONMENT_LABEL] == key


def test_the_pod_runs_the_example_script_from_its_config_map(pushed, settings, engine, tmp_path):
    image = pushed[0]["image"]
    client = MlflowClient(settings.mlflow_url)
    experiment_name = f"script-image-{uuid.uuid4().hex[:6]}"
    experiment = client.create_experiment(experiment_name)
    run = client.create_run(experiment)  # the run train_script makes for the job
    params = {
        "script_name": "train_with_feast.py",
        "script_content": base64.b64encode((REPO_ROOT / "include/examples/train_with_feast.py").read_bytes()).decode(),
        "experiment_name": experiment_name,
        "model_name": "churn_in_a_pod",
        "requirements": REQUIREMENTS,
        "timeout": 300,
        "memory_mb": 1024,
        "env_vars": {"N_CUSTOMERS": "400"},
        "use_feast": False,
    }
    operator = UserScriptPodOperator(task_id="run_script", settings=settings, image=image)
    injected = user_scripts.injected_variables(params, settings.mlflow_url, run.info.run_id, "/work/feature_repo")
    operator.configure(params, injected)
    # The ConfigMap's files, as the kubelet mounts them.
    mounted = tmp_path / "config-map"
    mounted.mkdir()
    for name, data in operator.script_config_map.binary_data.items():
        (mounted / name).write_bytes(base64.b64decode(data))
        (mounted / name).chmod(0o444)
    mounted.chmod(0o555)
    pod = operator.build_pod_request_obj(dry_run=True)
    (container,) = pod.spec.containers
    assert container.image == image
    security = pod.spec.security_context
    name = f"asgard-script-pod-{uuid.uuid4().hex[:6]}"
    created = engine.create_container(
        image,
        command=[*container.command, *container.args],
        environment={variable.name: variable.value for variable in container.env},
        user=f"{security.run_as_user}:{security.run_as_group}",
        name=name,
        host_config=engine.create_host_config(
            network_mode="host",  # the MLflow server is on the host's loopback
            read_only=container.security_context.read_only_root_filesystem,
            tmpfs={"/work": "size=512m,uid=10001", "/tmp": "size=256m,uid=10001"},
            binds={str(mounted): {"bind": SCRIPT_MOUNT, "mode": "ro"}},
            cap_drop=container.security_context.capabilities.drop,
            security_opt=["no-new-privileges"],
            mem_limit=container.resources.limits["memory"].replace("Mi", "m"),
        ),
    )
    try:
        engine.start(created)
        exit_code = engine.wait(created, timeout=300)["StatusCode"]
        output = engine.logs(created).decode(errors="replace")
    finally:
        engine.remove_container(created, force=True)

    assert exit_code == 0, output
    models = client.search_logged_models(experiment_ids=[experiment])
    assert [model.source_run_id for model in models] == [run.info.run_id], output
    with pytest.raises(docker.errors.NotFound):
        engine.inspect_container(name)
