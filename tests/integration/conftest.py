"""Fixtures of the tests against the real embedded stack (``embedded_stack``, tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def engine(embedded_stack):
    """A client of the stack's Docker engine, logged in to its registry."""
    import docker

    settings = embedded_stack.settings
    client = docker.APIClient(base_url=settings.docker_url, version="auto")
    user, password = embedded_stack.manager.registry_credentials()
    client.login(username=user, password=password, registry=settings.registry_address)
    return client
