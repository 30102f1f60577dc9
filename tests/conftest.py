"""Test configuration shared by the whole suite.

Airflow reads its configuration at import time, so the environment for in-process DAG parsing is
set here, before any test module imports airflow: a throwaway AIRFLOW_HOME, no examples, and the
project's dags/ and plugins/ folders. Tests that need running services share the session's embedded
stack (``embedded_stack``), which runs on free ports under a temporary ASGARD_HOME.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

_airflow_home = Path(tempfile.mkdtemp(prefix="asgard-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_airflow_home)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO_ROOT / "plugins")
# Never let a developer's running stack leak into tests through the environment.
_asgard_home = None if "ASGARD_HOME" in os.environ else Path(tempfile.mkdtemp(prefix="asgard-test-home-"))
if _asgard_home is not None:
    os.environ["ASGARD_HOME"] = str(_asgard_home)
# Tests write their inputs and outputs in a temporary folder and a moto bucket: those are their data
# roots, each with one folder per team (<root>/<team>/; team_folder makes one for a test).
_data_root = Path(tempfile.mkdtemp(prefix="asgard-test-data-"))
TEST_DATA_BUCKET = "asgard-test-data"
TEST_DATA_ROOTS = f"{_data_root},s3://{TEST_DATA_BUCKET}"
os.environ["ASGARD_DATA_ROOTS"] = TEST_DATA_ROOTS


def team_folder(team: str = "default") -> Path:
    """A fresh folder of the test's own inside ``team``'s folder of the suite's local data root."""
    (_data_root / team).mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(dir=_data_root / team))


@pytest.fixture
def data_folder() -> Path:
    """A fresh folder in the default team's local data root: where a test's inputs and outputs go."""
    return team_folder()


def pytest_sessionfinish(session, exitstatus):
    """The throwaway homes this process made go with it (pytest keeps its own tmp_path folders)."""
    for folder in (_airflow_home, _asgard_home, _data_root):
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """In one pytest process the end-to-end tests run last: a failure anywhere else shows within
    minutes. (The whole suite, ./asgard test, runs them in a stream of their own beside the rest:
    scripts/test_suite.sh.)"""
    items.sort(key=lambda item: item.nodeid.startswith("tests/e2e/"))


def postgres_url(database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
    """The machine's PostgreSQL (what ``./asgard setup`` installed and started) as its admin, in ``database``."""
    from sqlalchemy.engine import make_url

    from asgard.core.settings import Settings

    url = make_url(Settings().postgres_admin_url.get_secret_value())
    return url.set(drivername=driver, database=database).render_as_string(hide_password=False)


@pytest.fixture
def profile_databases():
    """The production profile's roles and databases under a fresh prefix in the machine's PostgreSQL
    (dropped after); yields the profile and the roles' passwords."""
    import secrets
    import uuid

    from asgard.core.settings import Settings
    from asgard.local.postgres import ProfileDatabases

    prefix = f"asgard_doors_{uuid.uuid4().hex[:8]}"
    passwords = {"postgres_password": secrets.token_urlsafe(12), "reader_password": secrets.token_urlsafe(12)}
    profile = ProfileDatabases(Settings(database_prefix=prefix), lambda: passwords)
    profile.prepare(log=lambda message: None)
    try:
        yield profile, passwords
    finally:
        profile.drop()


def secrets_of(stack) -> list[str]:
    """Every secret value of a stack: what may appear in no task log."""
    import json

    settings, manager = stack.settings, stack.manager
    found = [manager.admin_credentials()[1], manager.registry_credentials()[1]]
    found += json.loads((settings.state_dir / "airflow-secrets.json").read_text()).values()
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The session stack's users besides the admin and the viewer (the default team): one user per team.
TEAM_USERS = "alice:user:alpha,bob:user:beta,olaf:op:alpha"  # olaf: an operator of team alpha

# The session's shared stacks, so a test that needs the machine to itself can stop them early.
_SHARED_STACKS: list = []


@pytest.fixture
def machine_to_itself():
    """Stops the session's shared stack first (its teardown then finds it stopped): a test that times
    the machine, or starts a whole stack of its own, does not share two cores with an idle one."""
    for manager in _SHARED_STACKS:
        manager.stop(log=lambda _: None)


@dataclass
class EmbeddedStack:
    settings: object  # asgard.core.settings.Settings (imported late: after Airflow's environment above)
    manager: object  # asgard.local.services.ServiceManager
    api: object  # asgard.hooks.airflow_api.AirflowApi


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory) -> EmbeddedStack:
    """The real embedded stack (Airflow standalone, MLflow, Docker engine, registry, router), started
    once per session and stopped at its end: the session fails if any of its processes outlive it."""
    import psutil

    from asgard.core.settings import Settings
    from asgard.hooks.airflow_api import AirflowApi
    from asgard.local.services import ServiceManager

    settings = Settings(
        home=tmp_path_factory.mktemp("asgard-home"),
        profile="embedded",
        airflow_port=free_port(),
        mlflow_port=free_port(),
        registry_port=free_port(),
        router_port=free_port(),
        data_roots=TEST_DATA_ROOTS,
        # Two teams beside the admin's default one, for tests/integration/test_teams.py: users of one
        # stack cost nothing, a second Airflow minutes.
        airflow_users=TEAM_USERS,
    )
    # The suite's own Airflow settings (unit-test mode, a scratch AIRFLOW_HOME) must not leak into
    # the real services: they get exactly what the embedded profile gives them.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    manager = ServiceManager(settings, base_env=base_env)
    family = []
    try:
        manager.start()
        started = [psutil.Process(status.pid) for status in manager.status()]
        family = [p for proc in started for p in (proc, *proc.children(recursive=True))]
        _SHARED_STACKS.append(manager)
        yield EmbeddedStack(settings, manager, AirflowApi.login(settings.airflow_url, *manager.admin_credentials()))
    finally:
        manager.stop()
    survivors = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, f"processes left running after stop: {survivors}"


def assert_models_name_what_answers(stack: EmbeddedStack, name: str) -> dict:
    """``/mlops/models`` and ``/mlops/models/{name}`` name exactly the version that answers on the router
    (from the router and the engine, not the registry's tags); the model's details."""
    api, settings = stack.api, stack.settings
    auth = {"Authorization": f"Bearer {api.token}"}
    answering = httpx.get(f"{settings.router_url}/models/{name}/metadata", timeout=30).json()["model_version"]
    details = httpx.get(f"{api.base_url}/mlops/models/{name}", headers=auth, timeout=60).json()
    serving = [version["version"] for version in details["versions"] if version["serving"]["state"] == "serving"]
    assert serving == [answering], [(v["version"], v["serving"]) for v in details["versions"]]
    assert [(item["version"], item["role"]) for item in details["serving"]] == [(answering, "stable")]
    assert details["serving_state"] == {"state": "known", "unknown": {}}
    listed = httpx.get(f"{api.base_url}/mlops/models", headers=auth, timeout=60).json()
    (model,) = [model for model in listed["models"] if model["model_name"] == name]
    assert [item["version"] for item in model["serving"]] == [answering]
    return details


@contextlib.contextmanager
def sqlite_mlflow_home(path: Path):
    """ASGARD_HOME at ``path`` and ``mlflow_default`` on a SQLite registry there; the environment restored after."""
    import json

    tracking_uri = f"sqlite:///{path / 'mlflow.db'}"
    saved = {name: os.environ.get(name) for name in ("ASGARD_HOME", "AIRFLOW_CONN_MLFLOW_DEFAULT")}
    os.environ["ASGARD_HOME"] = str(path)
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "http", "extra": {"tracking_uri": tracking_uri}}
    )
    try:
        yield tracking_uri
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def feature_home(path: Path, spec):
    """``path`` as this process's ASGARD_HOME, holding ``spec``'s sample gold layer with the feature
    repo applied to it; the previous ASGARD_HOME is restored after."""
    from asgard.features import store as feature_store
    from sample_data.gold_layer import write_gold_layer

    previous = os.environ.get("ASGARD_HOME")
    os.environ["ASGARD_HOME"] = str(path)
    try:
        write_gold_layer(spec, log=lambda _: None)
        report = feature_store.apply_repo()
        assert "customer_features" in report
        yield path
    finally:
        if previous is None:
            os.environ.pop("ASGARD_HOME")
        else:
            os.environ["ASGARD_HOME"] = previous


@contextlib.contextmanager
def running_moto(environment: dict[str, str] | None = None):
    """moto's server (AWS's control plane, S3 and ECR) on a free loopback port, with ``environment``
    added to its own (``INITIAL_NO_AUTH_ACTION_COUNT``: keys and signatures checked after that many
    requests): its URL."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(environment or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/moto-api/")
                break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def moto_server():
    """moto's server on a free loopback port, checking no keys: its URL."""
    with running_moto() as url:
        yield url


@contextlib.contextmanager
def emulated_cluster(emulator):
    """A kmock Kubernetes emulator served on a loopback port from its own event loop: (emulator, kubeconfig).

    The Kubernetes client and the provider's hooks are synchronous, so the emulator cannot share the
    test's thread; the kubeconfig (a dict) reaches it with a bearer token.
    """
    import asyncio
    import threading

    import kmock

    started, holder = threading.Event(), {}

    async def serve():
        stop = asyncio.Event()
        async with emulator, kmock.Server(emulator) as server:
            holder.update(url=str(server.url).rstrip("/"), loop=asyncio.get_running_loop(), stop=stop)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the Kubernetes emulator did not start")
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": holder["url"]}}],
        "users": [{"name": "deployer", "user": {"token": "deployer-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "deployer"}}],
        "current-context": "emulator",
    }
    try:
        yield emulator, kubeconfig
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
