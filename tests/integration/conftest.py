"""The real embedded stack (Airflow standalone, MLflow, Docker engine, registry), started once per session.

It runs on free ports under a temporary ASGARD_HOME, so it never collides with a developer's own
stack, and is stopped at the end: the test session fails if any of its processes outlive it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil
import pytest

from asgard.airflow_api import AirflowApi
from asgard.embedded.services import ServiceManager
from asgard.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedStack:
    settings: Settings
    manager: ServiceManager
    api: AirflowApi


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory) -> EmbeddedStack:
    settings = Settings(
        home=tmp_path_factory.mktemp("asgard-home"),
        profile="embedded",
        airflow_port=free_port(),
        mlflow_port=free_port(),
        registry_port=free_port(),
        router_port=free_port(),
    )
    # The suite's own Airflow settings (unit-test mode, a scratch AIRFLOW_HOME) must not leak into
    # the real services: they get exactly what the embedded profile gives them.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    manager = ServiceManager(settings, base_env=base_env)
    try:
        manager.start()
        started = [psutil.Process(status.pid) for status in manager.status()]
        family = [p for proc in started for p in (proc, *proc.children(recursive=True))]
        yield EmbeddedStack(settings, manager, AirflowApi.login(settings.airflow_url, *manager.admin_credentials()))
    finally:
        manager.stop()
    survivors = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, f"processes left running after stop: {survivors}"


@pytest.fixture(scope="module")
def engine(embedded_stack):
    """A client of the stack's Docker engine, logged in to its registry."""
    import docker

    settings = embedded_stack.settings
    client = docker.APIClient(base_url=settings.docker_url, version="auto")
    user, password = embedded_stack.manager.registry_credentials()
    client.login(username=user, password=password, registry=settings.registry_address)
    return client
