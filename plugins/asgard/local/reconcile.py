"""Serving reconciliation: every version the route table names runs and answers, whatever the engine did.

A Docker engine killed and started again leaves its containers exited (``restart=unless-stopped``
notwithstanding, when the engine died with its containerd); a container may die on its own. The
Docker service's supervisor (:mod:`asgard.local.supervisor`) calls :func:`reconcile_serving` once the
engine is healthy after each start, then on a timer: a routed container that is not running is started
again; one that is gone (or will not start) is re-created from its image, held as the deploy target
holds it, and its route pointed at the new port. A route that switched meanwhile (a deploy) is left
alone: only what the table still names is touched. Only the profile's own table is read (its routes,
its containers): another profile of the same home, on the same engine, is never brought back here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from typing import TYPE_CHECKING, Any

from asgard.deploy import docker_target
from asgard.deploy.routes import INSTALL_LABEL, PROFILE_LABEL, RouteTable

if TYPE_CHECKING:
    import docker

    from asgard.core.settings import Settings

log = logging.getLogger(__name__)


def reconcile_serving(settings: Settings, *, health_timeout: float = 60.0) -> list[str]:
    """Bring every routed serving container (stable versions, and a trial's candidate when it only needs
    starting) back to running and answering; what was done, one line per container."""
    import docker

    client = docker.APIClient(base_url=settings.docker_url, version="auto", timeout=60)
    done = []
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # One reconcile at a time (the supervisor's timer, a restart, a caller): two would both re-create a
    # missing container, and the second would find its name taken.
    with open(settings.state_dir / "reconcile.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Routes an older version wrote without an owner are given one first, from their containers.
        table = RouteTable.for_settings(settings)
        for line in table.adopt_unowned(lambda name: _container_owner(client, name)):
            log.warning("%s", line)
            done.append(line)
        # Only this profile's routes: another profile's containers on the same engine are not ours.
        for model, route in table.routes().items():
            for entry, stable in ((route, True), (route.get("candidate"), False)):
                if not entry or not entry.get("container"):
                    continue
                try:
                    action = _reconcile_one(client, settings, model, entry, stable=stable, timeout=health_timeout)
                except (docker.errors.APIError, OSError) as error:
                    action = f"could not bring back {entry['container']}: {error}"
                if action:
                    log.warning("%s: %s", model, action)
                    done.append(f"{model}: {action}")
    return done


def _reconcile_one(
    client: docker.APIClient, settings: Settings, model: str, entry: dict[str, Any], *, stable: bool, timeout: float
) -> str | None:
    import docker

    name = entry["container"]
    try:
        info = client.inspect_container(name)
    except docker.errors.NotFound:
        info = None
    if info is not None and info["State"]["Running"] and not info["State"].get("Restarting"):
        upstream = docker_target.serving_upstream(info) or entry["upstream"]
        if upstream != entry["upstream"] and _still_routed(settings, model, name, stable):
            _point_route(settings, model, name, upstream)
            return f"{name} answers at {upstream}: route updated"
        return None
    if not _still_routed(settings, model, name, stable):
        return None  # a deploy switched away from it (and removes it): not ours to bring back
    if info is not None:
        with contextlib.suppress(docker.errors.APIError):
            client.start(name)
            upstream = docker_target.serving_upstream(client.inspect_container(name)) or entry["upstream"]
            if _answers(upstream, timeout):
                if upstream != entry["upstream"]:  # a restart may give it another address on its bridge
                    _point_route(settings, model, name, upstream)
                return f"{name} was {info['State']['Status']}: started again, answering at {upstream}"
    if not stable:
        return None  # a candidate that will not start: the deploy's trial decides its fate
    environment, binds, labels = _held_as(info, settings, model, entry)
    docker_target.remove_serving_container(client, name)
    container, port = docker_target.create_serving_container(
        client, name, entry["image"], environment, binds, labels, settings=settings
    )
    client.start(container)
    upstream = docker_target.serving_upstream(client.inspect_container(container)) or f"http://127.0.0.1:{port}"
    answering = _answers(upstream, timeout)
    if _still_routed(settings, model, name, stable):
        _point_route(settings, model, name, upstream)
    was = "gone" if info is None else "not starting"
    state = "answering" if answering else "NOT answering yet"
    return f"{name} was {was}: re-created from {entry['image']}, {state} at {upstream}"


def _container_owner(client: docker.APIClient, name: str) -> dict[str, str] | None:
    """The profile and installation a serving container belongs to, as far as it tells: its owner labels;
    else (a container from before those labels) its online store, a door socket being only the production
    profile's; ``None`` when it is gone."""
    import docker

    try:
        config = client.inspect_container(name)["Config"]
    except docker.errors.NotFound:
        return None
    labels = config.get("Labels") or {}
    if PROFILE_LABEL in labels:
        return {"profile": labels[PROFILE_LABEL], "install": labels.get(INSTALL_LABEL)}
    environment = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    store = environment.get("ASGARD_ONLINE_STORE", "")
    return {"profile": "production" if store.startswith("unix://") else "embedded"} if store else {}


def _held_as(
    info: dict[str, Any] | None, settings: Settings, model: str, entry: dict[str, Any]
) -> tuple[dict[str, str], dict[str, dict[str, str]], dict[str, str]]:
    """The environment, mounts and labels to re-create a container with: its own when the engine still
    knows it, else those the deploy target gives a container of ``model``."""
    if info is not None:
        environment = dict(item.split("=", 1) for item in info["Config"].get("Env") or [] if "=" in item)
        binds = {}
        for bind in info["HostConfig"].get("Binds") or []:
            source, inside, *mode = bind.split(":")
            binds[source] = {"bind": inside, "mode": mode[0] if mode else "rw"}
        owned = RouteTable.for_settings(settings).owner_labels()
        return environment, binds, {**(info["Config"].get("Labels") or {}), **owned}
    labels = {
        docker_target.DEPLOY_LABEL: model,
        "io.asgard.deploy.version": str(entry.get("version")),
        **RouteTable.for_settings(settings).owner_labels(),
    }
    folder = settings.prediction_log_folder(model)
    folder.mkdir(parents=True, exist_ok=True)
    binds = {str(folder): {"bind": "/var/log/asgard/predictions", "mode": "rw"}}
    environment = {"ASGARD_PREDICTION_LOG": "/var/log/asgard/predictions"}
    environment["ASGARD_SERVING_EXPOSE_FEATURES"] = "true" if entry.get("expose_features") else "false"
    online = _online_store(settings)
    if online and online.startswith("sqlite:///"):
        database = online.removeprefix("sqlite:///").rsplit("/", 1)
        binds[database[0]] = {"bind": docker_target.ONLINE_STORE_INSIDE, "mode": "ro"}
        environment["ASGARD_ONLINE_STORE"] = f"sqlite:///{docker_target.ONLINE_STORE_INSIDE}/{database[1]}"
    elif online:
        binds[str(settings.online_door_folder)] = {"bind": docker_target.ONLINE_DOOR_INSIDE, "mode": "ro"}
        environment["ASGARD_ONLINE_STORE"] = f"unix://{docker_target.ONLINE_DOOR_INSIDE}/redis.sock?protocol=2"
    return environment, binds, labels


def _online_store(settings: Settings) -> str | None:
    try:
        from asgard.features.online_reading import serving_location
        from asgard.features.store import load_repo_config

        return serving_location(load_repo_config(settings))
    except Exception:  # no feature repo (yet): the container serves without features by id
        log.warning("no online store for a re-created serving container", exc_info=True)
        return None


def _still_routed(settings: Settings, model: str, container: str, stable: bool) -> bool:
    """Whether the table, read afresh, still names ``container`` for ``model``."""
    route = RouteTable.for_settings(settings).routes().get(model) or {}
    entry = route if stable else route.get("candidate") or {}
    return entry.get("container") == container


def _point_route(settings: Settings, model: str, container: str, upstream: str) -> None:
    table = RouteTable.for_settings(settings)
    route = dict(table.routes().get(model) or {})
    if route.get("container") == container:
        table.set(model, {**route, "upstream": upstream})
    elif (route.get("candidate") or {}).get("container") == container:
        table.set(model, {**route, "candidate": {**route["candidate"], "upstream": upstream}})


def _answers(upstream: str, timeout: float) -> bool:
    """Whether ``upstream``'s /health answers 200 within ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{upstream}/health", timeout=2.0).status_code == 200:
                return True
        time.sleep(0.25)
    return False
