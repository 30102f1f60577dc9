"""The production profile on this machine, as a user starts it: ./asgard start --profile production.

Airflow's components as separate processes on the CeleryExecutor (two workers that share no
folder), the metadata database and MLflow's store in PostgreSQL, the broker on Redis, MLflow's
artifacts and the task logs in S3 (moto's server): runs driven over the REST API land on both
workers, and a stop leaves nothing running.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def asgard(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "asgard"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def production_env(tmp_path, machine_to_itself):
    from asgard.core.settings import Settings
    from asgard.local.production import ProductionServices

    settings = Settings(
        home=tmp_path / "home",
        profile="production",
        database_prefix=f"asgard_t{uuid.uuid4().hex[:8]}",
        broker_redis_db=13,
        airflow_port=free_port(),
        mlflow_port=free_port(),
        registry_port=free_port(),
        router_port=free_port(),
        s3_port=free_port(),
    )
    # What the user's shell holds: these settings, none of the suite's own Airflow configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ASGARD"))} | settings.as_env()
    services = ProductionServices(settings, base_env=env)
    try:
        yield env, services
    finally:
        asgard("stop", "--profile", "production", env=env, timeout=300)
        services.drop_databases()


@pytest.mark.timeout(900)
def test_production_profile_runs_on_celery_workers_postgres_redis_and_s3(production_env):
    import boto3
    import psycopg
    import redis

    from asgard.hooks.airflow_api import AirflowApi

    env, services = production_env
    started = asgard("start", "--profile", "production", env=env)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    assert f"postgres: role {services.settings.database_prefix}" in started.stdout

    status = asgard("status", "--profile", "production", env=env)
    expected = ("s3", "mlflow", "docker", "registry", "router", "api-server", "scheduler", "dag-processor",
                "triggerer", "worker-1", "worker-2")  # fmt: skip
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line and not line.startswith("Airflow")}
    assert set(expected) <= set(lines), status.stdout
    assert all(" healthy " in lines[name] for name in expected), status.stdout
    pids = [int(lines[name].split("pid ")[1].split()[0]) for name in expected]
    family = [p for pid in pids for p in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True))]

    api = AirflowApi.login(services.settings.airflow_url, *services.admin_credentials())
    api.wait_for_dag("check_platform")
    api.unpause("check_platform")
    # Two runs at once: more tasks than one worker's slots, so the scheduler's batch spreads over both.
    runs = [api.trigger("check_platform", {"checks": ["mlflow", "sandbox"]}) for _ in range(2)]
    hosts = set()
    for run_id in runs:
        outcome = api.wait_for_run("check_platform", run_id, timeout=300)
        assert outcome.state == "success", outcome
        for ti in api.task_instances.get_task_instances("check_platform", run_id).task_instances:
            hosts.add(ti.hostname)
    assert hosts == {"worker-1", "worker-2"}, hosts

    # Task logs come from S3, not from a worker's folder.
    log = api.task_log("check_platform", runs[0], "run_check", map_index=0)
    assert f"s3://{services.settings.s3_bucket}/airflow-logs/dag_id=check_platform" in log, log[:2000]
    # The mlflow check's run: its store is PostgreSQL, its artifacts are in S3.
    mlflow_run_id = api.task_result("check_platform", runs[0], "run_check", map_index=0)["mlflow_run_id"]
    with psycopg.connect(services.database_url("mlflow", driver="postgresql")) as connection:
        assert connection.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (mlflow_run_id,)).fetchone() == (1,)
    with psycopg.connect(services.database_url("airflow", driver="postgresql")) as connection:
        stored = connection.execute("SELECT count(*) FROM dag_run WHERE dag_id = 'check_platform'").fetchone()[0]
        assert stored == 2
    keys = services.aws_environment()
    s3 = boto3.client(
        "s3", endpoint_url=services.settings.s3_url, region_name="us-east-1",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    objects = s3.list_objects_v2(Bucket=services.settings.s3_bucket, Prefix="airflow-logs/")
    assert objects["KeyCount"] >= 6  # 2 runs x (list_checks + 2 checks)
    # The broker is the profile's own Redis db.
    assert redis.Redis.from_url(f"{services.settings.redis_url}/13").ping()
    # No password on a command line.
    secrets_ = json.loads((services.settings.state_dir / "production-secrets.json").read_text())
    for process in family:
        if process.is_running():
            assert secrets_["postgres_password"] not in " ".join(process.cmdline())

    stopped = asgard("stop", "--profile", "production", env=env, timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    survivors = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, f"processes left running after stop: {survivors}"
