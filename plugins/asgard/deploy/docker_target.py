"""The Docker deploy target: a verified blue/green switch behind the router's stable endpoint.

The new version's container starts beside the one serving; it must become healthy, report the
intended version in ``/metadata`` and answer ``/predict`` on holdout rows, first directly and then
through the stable endpoint. Only then is the old container stopped (after a short drain). Any
failure removes the new container and leaves the route — and so the old version — untouched.

A serving container runs a model's own code (it deserializes the model and calls it on every request),
so it is held like one: its own network namespace on a bridge of its own (no masquerading, and the
engine forwards nothing between bridges, so it reaches no other container and nothing beyond this
host; the platform's services listen on loopback only, which is not its loopback), only its port
published on 127.0.0.1 (the router's way in), a non-root user, a read-only root filesystem, no new
privileges, no capabilities, and memory, CPU and process limits (``ASGARD_SERVING_*``).
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

from asgard.deploy.routes import RouteTable
from asgard.deploy.strategies import CANARY, REPLACING, Rollout, watch
from asgard.serving.checks import DeployError, http_call, verify, warm_up

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

SERVING_UID = 10001
DEPLOY_LABEL = "io.asgard.deploy.model"
ONLINE_STORE_INSIDE = "/var/lib/asgard/online-store"
ONLINE_DOOR_INSIDE = "/run/asgard-online"
# The port the serving app listens on inside its own network namespace.
PORT_INSIDE = 8080


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
    online_store: str | None = None,
    online_door: Path | None = None,
    expose_features: bool = False,
    rollout: Rollout = REPLACING,
    timeout: float = 120.0,
    drain_seconds: float = 1.0,
    drain_timeout: float = 600.0,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Serve ``image`` as ``model_name`` behind ``router_url/models/<model_name>``; the outcome.

    ``online_store`` is where the container reads features by entity id: a SQLite file (its folder is
    mounted read-only, so the container never writes it; SQLite's journal beside it stays visible) or
    a Redis URL, which the container reaches through the door in ``online_door`` (default: the settings').
    ``expose_features`` lets answers by entity id return the stored features and name unknown ids.

    With a canary or shadow ``rollout`` and a version serving, the verified container first meets its
    share of live traffic through the router; the outcome's ``trial`` holds the verdict's figures. A
    breach is a DeployError (with those figures), after the route is back and the candidate drained.
    """
    import docker

    from asgard.core.settings import get_settings

    endpoint = f"{router_url}/models/{model_name}"
    previous = routes.routes().get(model_name)
    same_exposure = bool((previous or {}).get("expose_features")) == expose_features
    if previous and previous.get("image") == image and previous.get("version") == version and same_exposure:
        with contextlib.suppress(DeployError):
            verify(http_call(endpoint), version, payload, where=endpoint, timeout=10)
            progress(f"{model_name} v{version} already serves at {endpoint} from {image}")
            return {**previous, "endpoint": endpoint, "changed": False, "previous": previous}
    name = f"asgard-serving-{model_name.replace('_', '-')}-v{version}-{uuid.uuid4().hex[:6]}"
    binds = {}
    environment = {"ASGARD_SERVING_EXPOSE_FEATURES": "true" if expose_features else "false"}
    if prediction_log is not None:
        prediction_log.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            import os

            os.chown(prediction_log, SERVING_UID, SERVING_UID)
        binds[str(prediction_log)] = {"bind": "/var/log/asgard/predictions", "mode": "rw"}
        environment["ASGARD_PREDICTION_LOG"] = "/var/log/asgard/predictions"
    if online_store and online_store.startswith("sqlite:///"):
        database = Path(online_store.removeprefix("sqlite:///"))
        binds[str(database.parent)] = {"bind": ONLINE_STORE_INSIDE, "mode": "ro"}
        environment["ASGARD_ONLINE_STORE"] = f"sqlite:///{ONLINE_STORE_INSIDE}/{database.name}"
    elif online_store:
        # Redis listens where the container cannot reach (and holds the broker): the router's door
        # passes on the serving reader's commands only, logged in with a login the container never sees.
        door = online_door or get_settings().online_door_folder
        if not (door / "redis.sock").exists():
            raise DeployError(
                f"the online store is Redis, but its door for serving containers is not open at {door}/redis.sock "
                "(the router opens it: ./asgard start router)"
            )
        binds[str(door)] = {"bind": ONLINE_DOOR_INSIDE, "mode": "ro"}
        environment["ASGARD_ONLINE_STORE"] = f"unix://{ONLINE_DOOR_INSIDE}/redis.sock?protocol=2"  # RESP2 only
    # The route table's owner (profile, installation) too: another profile's router and reconcile leave it be.
    labels = {DEPLOY_LABEL: model_name, "io.asgard.deploy.version": version, **routes.owner_labels()}
    container, port = create_serving_container(client, name, image, environment, binds, labels)
    progress(f"created {name} from {image}, published on 127.0.0.1:{port}")

    def exited() -> str | None:
        state = client.inspect_container(container)["State"]
        if state["Status"] in ("exited", "dead") or state.get("Restarting"):
            tail = client.logs(container, tail=15).decode(errors="replace").strip()
            return f"the new container exited with code {state['ExitCode']} during start-up:\n{tail}"
        return None

    switched, trial, upstream = False, None, f"http://127.0.0.1:{port}"
    # (expose_features: what a re-created container gets again, asgard.local.reconcile)
    route = {"upstream": upstream, "version": version, "image": image, "container": name}
    route["expose_features"] = expose_features
    try:
        client.start(container)
        # The router reaches it on its bridge: no proxy between them (the published port stays for users).
        upstream = serving_upstream(client.inspect_container(container)) or upstream
        route["upstream"] = upstream
        progress(f"started {name} at {upstream}")
        verify(http_call(upstream), version, payload, where=upstream, timeout=timeout, exited=exited)
        if rollout.trial and previous:
            warm_up(http_call(upstream), payload)
            switched = True  # from here on, a failure puts the previous route back
            trial = _trial(routes, model_name, previous, route, rollout, router_url, drain_timeout, progress)
        elif rollout.trial:
            progress(f"nothing serves {model_name} yet: no live traffic to {rollout.strategy} against, replacing")
        routes.set(model_name, route)
        switched = True
        verify(http_call(endpoint), version, payload, where=endpoint, timeout=30)
    except BaseException as error:
        if switched:
            routes.set(model_name, previous)
        with contextlib.suppress(docker.errors.APIError):
            remove_serving_container(client, name)
        serving = (previous or {}).get("version")
        if isinstance(error, DeployError):
            error.serving = serving
            raise
        if isinstance(error, docker.errors.APIError):
            raise DeployError(f"the Docker engine refused the new container: {error}", serving=serving) from error
        raise
    progress(f"{endpoint} now serves {model_name} v{version}")
    if previous and previous.get("container") and previous["container"] != name:
        _drain(router_url, previous["upstream"], drain_seconds, drain_timeout, progress)
        remove_serving_container(client, previous["container"])
        progress(f"stopped the previous version v{previous.get('version')} ({previous['container']})")
    return {**route, "endpoint": endpoint, "changed": True, "previous": previous, "trial": trial}


def create_serving_container(
    client: docker.APIClient,
    name: str,
    image: str,
    environment: dict[str, str],
    binds: dict[str, dict[str, str]],
    labels: dict[str, str],
    *,
    settings: Any = None,
    restart: bool = True,
) -> tuple[str, int]:
    """A serving container of ``image`` held as the module's docstring says, on a bridge network of its own
    (both named ``name``); its id and the loopback port its app is published on."""
    from asgard.core.settings import get_settings

    settings = settings or get_settings()
    _remove_networks(client, name)  # one a failed attempt left (the engine allows two of one name)
    client.create_network(
        name,
        driver="bridge",
        options={
            "com.docker.network.bridge.enable_ip_masquerade": "false",
            "com.docker.network.bridge.enable_icc": "false",
        },
        labels=labels,
    )
    port = _free_port()
    memory = f"{settings.serving_memory_mb}m"
    try:
        container = client.create_container(
            image,
            name=name,
            user=f"{SERVING_UID}:{SERVING_UID}",
            environment={**environment, "ASGARD_SERVING_PORT": str(PORT_INSIDE), "ASGARD_SERVING_HOST": "0.0.0.0"},
            labels=labels,
            ports=[PORT_INSIDE],
            host_config=client.create_host_config(
                network_mode=name,
                port_bindings={PORT_INSIDE: ("127.0.0.1", port)},
                # tini as PID 1: it forwards the stop signal and reaps, so a stopped container leaves nothing.
                init=True,
                read_only=True,
                tmpfs={"/tmp": "size=64m"},
                binds=binds,
                restart_policy={"Name": "unless-stopped"} if restart else None,
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                mem_limit=memory,
                memswap_limit=memory,  # no swap beyond the limit
                nano_cpus=int(settings.serving_cpus * 1e9),
                pids_limit=settings.serving_max_processes,
            ),
        )["Id"]
    except BaseException:
        remove_serving_container(client, name)
        raise
    return container, port


def serving_upstream(info: dict[str, Any]) -> str | None:
    """Where a running serving container's app answers on its own bridge (from the engine's inspect), the
    router's way in without the engine's userland proxy; None when it has no address there."""
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    address = (networks.get(info.get("HostConfig", {}).get("NetworkMode", "")) or {}).get("IPAddress")
    return f"http://{address}:{PORT_INSIDE}" if address else None


def remove_serving_container(client: docker.APIClient, name: str) -> None:
    """Remove a serving container and its network (either may be gone already)."""
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        client.remove_container(name, force=True)
    _remove_networks(client, name)


def _remove_networks(client: docker.APIClient, name: str) -> None:
    """Every network named ``name``, by id (the engine allows two of one name, and refuses a name then)."""
    import docker

    for network in client.networks(names=[name]):
        if network["Name"] == name:  # the engine's filter matches names by part too
            with contextlib.suppress(docker.errors.NotFound):
                client.remove_network(network["Id"])


def _trial(
    routes: RouteTable,
    model_name: str,
    previous: dict[str, Any],
    route: dict[str, Any],
    rollout: Rollout,
    router_url: str,
    drain_timeout: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The candidate meets its share of live traffic behind the stable endpoint; the verdict's figures.

    On a breach the stable route is put back and the candidate's requests in flight are let finish
    before the caller removes it, so a canary's callers are not cut off mid-answer.
    """
    import httpx

    def traffic() -> dict[str, Any] | None:
        try:
            asked = {"candidate": route["upstream"]}
            return httpx.get(f"{router_url}/traffic/{model_name}", params=asked, timeout=10).json()
        except httpx.HTTPError as error:
            raise DeployError(f"cannot read the trial's traffic from the router: {error}") from error

    from asgard.deploy.trial_metrics import served_model_type

    # The router compares a shadow's answers by the kind of model, which the version's /metadata names.
    candidate = {
        **route,
        "strategy": rollout.strategy,
        "percent": rollout.percent,
        "model_type": served_model_type(http_call(route["upstream"])),
    }
    routes.set(model_name, {**previous, "candidate": candidate})
    share = "of the prediction requests" if rollout.strategy == CANARY else "of the prediction requests mirrored"
    progress(
        f"{rollout.strategy}: v{route['version']} takes {rollout.percent}% {share} beside v{previous.get('version')} "
        f"(window: {rollout.min_requests} requests or {rollout.duration:.0f}s)"
    )
    verdict = watch(rollout, traffic, progress=progress)
    progress(f"{rollout.strategy} of v{route['version']}: {verdict.state}, {verdict.reason}; {verdict.figures}")
    if verdict.state == "pass":
        return verdict.figures
    routes.set(model_name, previous)
    _drain(router_url, route["upstream"], 1.0, drain_timeout, progress)
    # The verdict's counts stop at the decision; a caller's request already on its way still reached
    # the candidate. What is recorded is every request it served, so no failed answer goes unaccounted.
    served = (traffic() or {}).get("candidate_side") or {}
    figures = {**verdict.figures, **{key: served[key] for key in ("requests", "errors", "error_rate") if key in served}}
    raise DeployError(f"the {rollout.strategy} breached {verdict.reason}", figures=figures)


def _drain(router_url: str, upstream: str, settle: float, timeout: float, progress: Callable[[str], None]) -> None:
    """Wait until the router has no request in flight to ``upstream`` (the version switched away from).

    ``settle`` first: a request the router took just before the switch may still be on its way there.
    """
    import httpx

    time.sleep(settle)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            left = httpx.get(f"{router_url}/inflight", timeout=10).json().get(upstream, 0)
        except httpx.HTTPError as error:
            progress(f"cannot ask the router what is in flight ({error}); stopping the old version")
            return
        if not left:
            return
        progress(f"{left} request(s) in flight to the previous version: waiting for them")
        time.sleep(0.5)
    progress(f"requests still in flight to the previous version after {timeout:.0f}s: stopping it")
