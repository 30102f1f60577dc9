"""The Docker deploy target: a verified blue/green switch behind the router's stable endpoint.

The new version's container starts beside the one serving; it must become healthy, report the
intended version in ``/metadata`` and answer ``/predict`` on holdout rows, first directly and then
through the stable endpoint. Only then is the old container stopped (after a short drain). Any
failure removes the new container and leaves the route — and so the old version — untouched.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.embedded.router import RouteTable
from asgard.serving_checks import DeployError, http_call, verify

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

SERVING_UID = 10001
DEPLOY_LABEL = "io.asgard.deploy.model"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def deploy(
    client: docker.APIClient,
    *,
    model_name: str,
    version: str,
    image: str,
    payload: dict[str, Any] | None,
    routes: RouteTable,
    router_url: str,
    prediction_log: Path | None = None,
    timeout: float = 120.0,
    drain_seconds: float = 3.0,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Serve ``image`` as ``model_name`` behind ``router_url/models/<model_name>``; the outcome."""
    import docker

    endpoint = f"{router_url}/models/{model_name}"
    previous = routes.routes().get(model_name)
    if previous and previous.get("image") == image and previous.get("version") == version:
        with contextlib.suppress(DeployError):
            verify(http_call(endpoint), version, payload, where=endpoint, timeout=10)
            progress(f"{model_name} v{version} already serves at {endpoint} from {image}")
            return {**previous, "endpoint": endpoint, "changed": False, "previous": previous}
    port = _free_port()
    name = f"asgard-serving-{model_name.replace('_', '-')}-v{version}-{uuid.uuid4().hex[:6]}"
    binds = {}
    environment = {"ASGARD_SERVING_PORT": str(port)}
    if prediction_log is not None:
        prediction_log.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            import os

            os.chown(prediction_log, SERVING_UID, SERVING_UID)
        binds[str(prediction_log)] = {"bind": "/var/log/asgard/predictions", "mode": "rw"}
        environment["ASGARD_PREDICTION_LOG"] = "/var/log/asgard/predictions"
    container = client.create_container(
        image,
        name=name,
        environment=environment,
        labels={DEPLOY_LABEL: model_name, "io.asgard.deploy.version": version},
        host_config=client.create_host_config(
            network_mode="host",
            read_only=True,
            tmpfs={"/tmp": "size=64m"},
            binds=binds,
            restart_policy={"Name": "unless-stopped"},
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
        ),
    )
    upstream = f"http://127.0.0.1:{port}"
    progress(f"started {name} from {image} at {upstream}")

    def exited() -> str | None:
        state = client.inspect_container(container)["State"]
        if state["Status"] in ("exited", "dead") or state.get("Restarting"):
            tail = client.logs(container, tail=15).decode(errors="replace").strip()
            return f"the new container exited with code {state['ExitCode']} during start-up:\n{tail}"
        return None

    route = {"upstream": upstream, "version": version, "image": image, "container": name}
    switched = False
    try:
        client.start(container)
        verify(http_call(upstream), version, payload, where=upstream, timeout=timeout, exited=exited)
        routes.set(model_name, route)
        switched = True
        verify(http_call(endpoint), version, payload, where=endpoint, timeout=30)
    except BaseException as error:
        if switched:
            routes.set(model_name, previous)
        with contextlib.suppress(docker.errors.APIError):
            client.remove_container(container, force=True)
        serving = (previous or {}).get("version")
        if isinstance(error, DeployError):
            error.serving = serving
            raise
        if isinstance(error, docker.errors.APIError):
            raise DeployError(f"the Docker engine refused the new container: {error}", serving=serving) from error
        raise
    progress(f"{endpoint} now serves {model_name} v{version}")
    if previous and previous.get("container") and previous["container"] != name:
        time.sleep(drain_seconds)  # requests already sent to the old version finish there
        with contextlib.suppress(docker.errors.NotFound):
            client.remove_container(previous["container"], force=True)
        progress(f"stopped the previous version v{previous.get('version')} ({previous['container']})")
    return {**route, "endpoint": endpoint, "changed": True, "previous": previous}
