"""docker-compose.yaml: valid for the real Compose implementation, and consistent with the settings.

No image can be pulled on these machines, so the stack is checked by validation, not by running it:
``docker-compose config`` (the Compose implementation itself) resolves and validates the file, then
the resolved model is checked against the project's own settings and files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from asgard.core.settings import ENV_VARS

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_SERVICES = [
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
]


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def published(port: str) -> dict[str, str]:
    """``127.0.0.1:8080:8080/tcp`` (Compose's resolved short syntax) as its parts."""
    host_ip, host_port, target = port.split("/")[0].rsplit(":", 2)
    return {"host_ip": host_ip, "published": host_port, "target": target}


@pytest.fixture(scope="module")
def resolved() -> dict:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is installed by scripts/bootstrap.sh"
    result = subprocess.run(
        [compose, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_every_variable_is_documented():
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    assert referenced, "the file reads its secrets from .env"
    assert referenced <= set(env_example()), f"not in .env.example: {referenced - set(env_example())}"


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY"])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_a_missing_or_empty_secret_is_refused(tmp_path, secret, how):
    env = {k: v for k, v in env_example().items() if k != secret}
    if how == "empty":
        env[secret] = ""
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode != 0
    assert secret in result.stderr


def test_the_admin_password_file_is_written_for_its_owner_only(resolved):
    """airflow-init writes the login file 0600 (created so, not chmod-ed after a window of 0644)."""
    command = " ".join(resolved["services"]["airflow-init"]["command"])
    assert "os.O_CREAT" in command and "0o600" in command and " open(" not in command


def test_production_stack_is_complete(resolved):
    services = resolved["services"]
    for name in [*AIRFLOW_SERVICES, "postgres", "redis", "mlflow", "s3", "registry"]:
        assert name in services, f"{name} missing"
    commands = {name: " ".join(services[name]["command"]) for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "airflow api-server"
    assert commands["airflow-worker"] == "airflow celery worker"


def test_airflow_services_share_production_settings(resolved):
    services = resolved["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["ASGARD_PROFILE"] == "production", name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379"), name
        unknown = {k for k in env if k.startswith("ASGARD_")} - set(ENV_VARS)
        assert not unknown, f"{name} sets ASGARD_ variables the settings do not read: {unknown}"


def test_airflows_teams_are_on_and_created_before_airflow_starts(resolved, monkeypatch):
    """Issue 51: compose runs Airflow with its teams as ./asgard's profiles do; airflow-init (which the
    API server waits for) migrates the database and creates every team the users name."""
    from asgard.local.airflow_teams import teams_in_environment

    services = resolved["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__MULTI_TEAM"] == "True", name
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin:default", name
    init = services["airflow-init"]
    assert "python -m asgard.local.airflow_teams &&" in init["command"][-1]
    assert services["airflow-apiserver"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    for name, value in init["environment"].items():
        monkeypatch.setenv(name, str(value))
    assert teams_in_environment() == ["default"]
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin:default,alice:user:alpha|beta")
    assert teams_in_environment() == ["alpha", "beta", "default"]


def test_compose_sets_what_the_native_production_profile_hands_its_processes(resolved, tmp_path):
    """One set of settings: every store variable ./asgard run --profile production gives Airflow's
    components, compose gives its Airflow services too."""
    from asgard.core.settings import Settings
    from asgard.local.production import ProductionServices

    native = ProductionServices(Settings(home=tmp_path, profile="production")).platform_env()
    for name in AIRFLOW_SERVICES:
        env = resolved["services"][name]["environment"]
        missing = sorted(set(native) - set(env))
        assert not missing, f"{name} lacks {missing}"


def test_ports_agree(resolved):
    services = resolved["services"]
    scheduler_env = services["airflow-scheduler"]["environment"]
    mlflow_conn = json.loads(scheduler_env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    mlflow_command = services["mlflow"]["command"]
    assert mlflow_conn["host"] == "mlflow"
    assert str(mlflow_conn["port"]) == mlflow_command[mlflow_command.index("--port") + 1]
    (api_port,) = [published(p) for p in services["airflow-apiserver"]["ports"]]
    execution_url = scheduler_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    assert execution_url == f"http://airflow-apiserver:{api_port['target']}/execution/"
    for name in ("airflow-apiserver", "mlflow", "registry"):
        for port in map(published, services[name]["ports"]):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on {port['host_ip']}"


def test_referenced_files_exist(resolved):
    for name, service in resolved["services"].items():
        build = service.get("build")
        if build:
            assert (Path(build["context"]) / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("/"):  # a bind mount of a project file (named volumes have no slash)
                assert Path(source).exists(), f"{name} mounts missing {source}"
