"""Test configuration shared by the whole suite.

Airflow reads its configuration at import time, so the environment for in-process DAG parsing is
set here, before any test module imports airflow: a throwaway AIRFLOW_HOME, no examples, and the
project's dags/ and plugins/ folders. Tests that need running services start their own (see
tests/integration/conftest.py) on free ports under a temporary ASGARD_HOME.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
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
os.environ.setdefault("ASGARD_HOME", str(Path(tempfile.mkdtemp(prefix="asgard-test-home-"))))


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


@pytest.fixture(scope="module")
def moto_server():
    """moto's server (AWS's control plane, S3 and ECR) on a free loopback port: its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
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
