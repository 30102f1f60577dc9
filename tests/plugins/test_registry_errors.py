"""Which registry answers are "not now" (the task's retries may help) and which are "no" (fail at once).

The messages are the engine's own, as the integration tests met them; the ports in them must not be
read as HTTP statuses (a registry on 127.0.0.1:50383 is not a 503).
"""

from __future__ import annotations

import pytest

from asgard.hooks.docker import is_transient

ANSWERS = {
    "login attempt to http://127.0.0.1:50383/v2/ failed with status: 401 Unauthorized": False,
    "Get http://127.0.0.1:54011/v2/: dial tcp 127.0.0.1:54011: connect: connection refused": True,
    "received unexpected HTTP status: 503 Service Unavailable": True,
    "Get https://registry/v2/: net/http: request canceled (Client.Timeout exceeded)": True,
    "denied: requested access to the resource is denied": False,
    "unknown: repository asgard/models not found": False,
    "unauthorized: authentication required (timeout 30s)": False,
}


@pytest.mark.parametrize("message", list(ANSWERS))
def test_a_port_is_not_a_status_and_a_refusal_is_never_retried(message):
    assert is_transient(message) is ANSWERS[message]
