"""train_script: the example uploaded with the CLI through the /mlops plugin to serving, and bad uploads."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid

import httpx
import pytest
from mlflow import MlflowClient

from asgard.core.settings import REPO_ROOT
from asgard.features import gold
from asgard.features import store as feature_store
from asgard.local.examples import EXAMPLE_REQUIREMENTS, EXAMPLE_SCRIPT, example_upload
from asgard.local.mlops_client import MlopsClient
from asgard.registry.models import model_asset_uri
from asgard.registry.versions import CHAMPION
from sample_data.gold_layer import GoldSpec, write_gold_layer
from sample_data.models import SEED_PREDICTION

pytestmark = pytest.mark.integration

SPEC = GoldSpec(customers=600, days=3, end="2026-11-01T00:00:00+00:00", seed=17)


@pytest.fixture(scope="module")
def script_stack(embedded_stack):
    settings = embedded_stack.settings
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(settings), log=lambda _: None)
    feature_store.apply_repo(settings)
    return embedded_stack


def client_for(stack) -> MlflowClient:
    return MlflowClient(stack.settings.mlflow_url, stack.settings.mlflow_url)


def test_the_cli_uploads_the_example_and_follows_it_through_training_and_the_gate_to_serving(script_stack):
    """The seed's upload_and_deploy.py flow: ./asgard upload through the /mlops plugin, deploy_model
    started by the promotion's Asset event (unpaused, as in production), the model answering /predict."""
    api, settings = script_stack.api, script_stack.settings
    name = f"feast_{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable, "-m", "asgard.local", "upload", str(EXAMPLE_SCRIPT),
        "--model-name", name, "--experiment", "feast_deployment", "--timeout", "900",
        "--env", f"N_CUSTOMERS={SPEC.customers}", "--url", settings.airflow_url,
        *[argument for requirement in EXAMPLE_REQUIREMENTS for argument in ("-r", requirement)],
    ]  # fmt: skip
    python_path = f"{REPO_ROOT}/plugins:{REPO_ROOT}/include"
    environment = {**os.environ, "ASGARD_API_TOKEN": api.token, "PYTHONPATH": python_path}
    # The seed's flow deploys each promotion: this model's deployment policy is auto (the default asks a person).
    policy = httpx.put(
        f"{settings.airflow_url}/mlops/models/{name}/deploy-policy",
        json={"policy": "auto"},
        headers={"Authorization": f"Bearer {api.token}"},
        timeout=60,
    )
    assert policy.status_code == 200, policy.text
    api.unpause("deploy_model")
    try:
        cli = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=1800)
    finally:
        api.pause("deploy_model")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    followed = ("run_script: success", "gate_model: success", f"model {name} v1 -> @champion", "deploy_image: success")
    for line in followed:
        assert line in cli.stdout, cli.stdout
    job_id = cli.stdout.split()[1]

    job = MlopsClient(settings.airflow_url, api.token).get(f"/training/jobs/{job_id}")
    assert job["status"] == "completed" and job["model_version"] == "1" and job["promoted"] is True
    assert f"fetched {SPEC.customers} rows from Feast view customer_features" in job["logs"]
    assert job["result"]["metric"] == "roc_auc" and job["result"]["score"] > 0.6
    champion = client_for(script_stack).get_model_version_by_alias(name, CHAMPION)
    assert champion.version == "1" and champion.tags["airflow.run_id"] == job_id
    assert champion.tags["source"] == "train_script"
    events = api.asset_events(model_asset_uri(name))
    assert any(event["source_run_id"] == job_id for event in events)

    deployment = job["deployment"]
    assert deployment["status"] == "completed" and f"serving {name} v1 at {deployment['endpoint']}" in cli.stdout
    answer = httpx.post(f"{deployment['endpoint']}/predict", json=SEED_PREDICTION, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1", answer.text
    assert len(answer.json()["predictions"]) == 2


def test_script_that_logs_no_model_fails_registers_nothing_and_had_its_secrets_by_reference(script_stack):
    """A script given a secret by reference (an Airflow Variable of its model's team) reads the value; the
    task log shows *** where it printed it, and the run's conf holds only the reference."""
    api, settings = script_stack.api, script_stack.settings
    name = f"nomodel_{uuid.uuid4().hex[:6]}"
    token = f"tok-{uuid.uuid4().hex}"
    key = f"{settings.default_team}.api_token_{uuid.uuid4().hex[:6]}"
    created = httpx.post(
        f"{settings.airflow_url}/api/v2/variables",
        json={"key": key, "value": token},
        headers={"Authorization": f"Bearer {api.token}"},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    source = (
        "import mlflow, os\n"
        "secret = os.environ['API_TOKEN']\n"
        "print('the token is', secret, 'of length', len(secret))\n"
        "with mlflow.start_run():\n    mlflow.log_metric('accuracy', 0.9)\n"
    )
    conf = {
        **example_upload(model_name=name, requirements=[]),
        "script_name": "no_model.py",
        "script_content": base64.b64encode(source.encode()).decode(),
        "use_feast": False,
        "secret_env_vars": {"API_TOKEN": f"variable:{key}"},
    }
    outcome = api.run_and_wait("train_script", conf, timeout=900)
    assert outcome.state == "failed"
    assert outcome.task_states["run_script"] == "success"
    assert outcome.task_states["register_model"] == "failed"
    assert "the script logged no model to MLflow run" in api.task_log("train_script", outcome.run_id, "register_model")
    assert not client_for(script_stack).search_model_versions(f"name = '{name}'")
    # MLflow's printed run link points at the tracking server users reach, not the sandbox's door (port 5000).
    printed = api.task_log("train_script", outcome.run_id, "run_script")
    assert "View run" in printed and f"{script_stack.settings.mlflow_url}/#/experiments/" in printed, printed
    assert ":5000/#/" not in printed
    assert f"the token is *** of length {len(token)}" in printed and token not in printed, printed
    assert api.run_conf("train_script", outcome.run_id)["secret_env_vars"] == {"API_TOKEN": f"variable:{key}"}


def test_a_secret_of_another_team_is_refused_before_anything_runs(script_stack):
    api = script_stack.api
    name = f"foreign_{uuid.uuid4().hex[:6]}"
    conf = {**example_upload(model_name=name), "secret_env_vars": {"DB_PASSWORD": "connection:other_team.warehouse"}}
    outcome = api.run_and_wait("train_script", conf, timeout=300)
    assert outcome.state == "failed" and outcome.task_states["check_upload"] == "failed"
    assert outcome.task_states["prepare_environment"] == "upstream_failed"
    log = api.task_log("train_script", outcome.run_id, "check_upload")
    assert (
        "secret_env_vars may name only team 'default'" in log and "DB_PASSWORD (connection:other_team.warehouse)" in log
    )


def test_bad_base64_fails_first_and_builds_nothing(script_stack):
    api = script_stack.api
    name = f"bad_{uuid.uuid4().hex[:6]}"
    outcome = api.run_and_wait(
        "train_script", {**example_upload(model_name=name), "script_content": "%%% not base64"}, timeout=300
    )
    assert outcome.state == "failed"
    assert outcome.task_states["check_upload"] == "failed"
    assert outcome.task_states["prepare_environment"] == "upstream_failed"
    assert "script_content is not valid base64" in api.task_log("train_script", outcome.run_id, "check_upload")
    assert not client_for(script_stack).search_model_versions(f"name = '{name}'")
