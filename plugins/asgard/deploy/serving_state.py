"""What serves each model version, asked of the targets themselves rather than read from registry tags.

A version's ``deploy.status`` tag says what its last deploy recorded; a container may have died since,
a deploy of the other profile may have replaced it, or a tag may be older than the rule that marks
replaced versions. So ``/mlops/models`` and the Models page say "serving" from what runs:

- the Docker target: the router's routes (``GET /routes``: exactly what it forwards, its profile's only)
  and the engine's running serving containers of this profile and installation, one listing each per
  request, whatever the number of versions. A route serves when its container runs.
- the Kubernetes target (only when a version records a deploy there): the Deployments the target owns
  (``app.kubernetes.io/part-of=asgard``, component ``model-server``) with a ready replica, one listing per
  allowed namespace.

A target that does not answer makes its versions' state ``unknown`` (with why), never a guess. Each
serving version has a role: ``stable`` (answers the endpoint), ``canary`` (answers its share),
``shadow`` (gets copies, answers nobody); one that serves without being ``@champion`` says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgard.deploy.routes import RouteTable

if TYPE_CHECKING:
    from asgard.core.settings import Settings

log = logging.getLogger(__name__)

SERVING, NOT_SERVING, UNKNOWN = "serving", "not_serving", "unknown"
STABLE = "stable"
DOCKER, KUBERNETES = "docker", "kubernetes"
# How long a target may take to say what runs: the page must not hang on an engine that is down.
ASK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Served:
    """One version answering (or shadowing) on a target."""

    model_name: str
    version: str
    target: str
    role: str
    endpoint: str | None = None
    where: str | None = None  # the container or Deployment

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "target": self.target, "role": self.role, "endpoint": self.endpoint,
                "where": self.where}  # fmt: skip


@dataclass
class Observation:
    """What the asked targets run: the versions serving, and the targets that could not be asked (why)."""

    served: list[Served] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)
    asked: set[str] = field(default_factory=set)

    def of(self, model_name: str) -> list[Served]:
        return [item for item in self.served if item.model_name == model_name]


def observe(settings: Settings, *, targets: set[str] | frozenset[str] = frozenset({DOCKER})) -> Observation:
    """Ask each of ``targets`` once what it serves."""
    observation = Observation()
    for target, ask in ((DOCKER, _docker), (KUBERNETES, _kubernetes)):
        if target not in targets:
            continue
        observation.asked.add(target)
        try:
            observation.served.extend(ask(settings))
        except Exception as error:  # any failure to ask is "unknown", never a crash or a guess
            log.warning("cannot tell what the %s target serves: %s", target, error)
            observation.unknown[target] = f"{type(error).__name__}: {error}"[:300]
    return observation


def _docker(settings: Settings) -> list[Served]:
    """The router's routes whose container runs (this profile's and installation's only)."""
    import docker
    import httpx

    from asgard.deploy.docker_target import DEPLOY_LABEL

    table = RouteTable.for_settings(settings)
    answer = httpx.get(f"{settings.router_url}/routes", timeout=ASK_TIMEOUT)
    answer.raise_for_status()
    # The router answers its own profile's routes; a router of another profile filters them out here.
    routes = {name: route for name, route in answer.json().items() if table.owns(route)}
    client = docker.APIClient(base_url=settings.docker_url, version="auto", timeout=ASK_TIMEOUT)
    try:
        containers = client.containers(filters={"label": DEPLOY_LABEL, "status": "running"})
    finally:
        client.close()
    # This profile's and installation's containers (one deployed before containers carried them: its own too).
    owner = table.owner_labels()
    running = {
        name.lstrip("/")
        for container in containers
        if all((container.get("Labels") or {}).get(key, value) == value for key, value in owner.items())
        for name in container.get("Names") or []
    }
    served = []
    for model, route in sorted(routes.items()):
        endpoint = f"{settings.router_url}/models/{model}"
        candidate = route.get("candidate") or {}
        for entry, role in ((route, STABLE), (candidate, candidate.get("strategy"))):
            if entry and entry.get("container") in running:
                served.append(Served(model, str(entry.get("version")), DOCKER, role, endpoint, entry["container"]))
    return served


def _kubernetes(settings: Settings) -> list[Served]:
    """The Deployments the Kubernetes target owns that have a ready replica, in every allowed namespace."""
    from kubernetes import client as kubernetes

    from asgard.deploy.kubernetes_manifests import TRACK_LABEL
    from asgard.deploy.kubernetes_target import VERSION_ANNOTATION, cluster_hook

    served = []
    selector = "app.kubernetes.io/part-of=asgard,app.kubernetes.io/component=model-server"
    for namespace in settings.allowed_serving_namespaces:
        with cluster_hook(
            kubernetes_conn_id=settings.kubernetes_conn_id,
            eks_cluster_name=settings.eks_cluster_name,
            aws_conn_id=settings.aws_conn_id,
            namespace=namespace,
        ) as hook:
            apps = kubernetes.AppsV1Api(hook.get_conn())
            found = apps.list_namespaced_deployment(namespace, label_selector=selector, _request_timeout=ASK_TIMEOUT)
        for deployment in found.items:
            if not (deployment.status.available_replicas or deployment.status.ready_replicas):
                continue
            annotations = deployment.spec.template.metadata.annotations or {}
            labels = deployment.metadata.labels or {}
            model = (deployment.metadata.annotations or {}).get("asgard.io/model-name") or annotations.get(
                "asgard.io/model-name"
            )
            version = annotations.get(VERSION_ANNOTATION) or labels.get("asgard.io/model-version")
            if not model or not version:
                continue
            app = labels.get("app.kubernetes.io/name", deployment.metadata.name)
            endpoint = f"http://{app}.{namespace}.svc.cluster.local"
            role = labels.get(TRACK_LABEL) or STABLE
            served.append(
                Served(model, str(version), KUBERNETES, role, endpoint, f"{namespace}/{deployment.metadata.name}")
            )
    return served


def targets_to_ask(settings: Settings, recorded: set[str]) -> set[str]:
    """The targets to ask: those versions were deployed to (``recorded``), and the embedded profile's own
    Docker target always (in a cluster-only installation there is no router to ask)."""
    return (recorded & {DOCKER, KUBERNETES}) | ({DOCKER} if settings.profile == "embedded" else set())


def targets_recorded(versions: list[dict[str, Any]]) -> set[str]:
    """The targets a model's versions were deployed to (their ``deploy.target`` tags)."""
    return {str((version.get("deployment") or {}).get("target")) for version in versions} - {"None"}


def with_serving_state(model: dict[str, Any], observation: Observation) -> dict[str, Any]:
    """``model`` (``describe_model``'s or ``describe_models``' answer) with what serves it, asked of the targets.

    The model gets ``serving`` (the versions that answer, each with target, role and endpoint) and
    ``serving_state`` (``known``, or ``unknown`` with the targets that did not answer). Each of its
    versions (when listed) gets ``serving``: its state, role, target, endpoint, whether it is
    ``@champion``, and a note when it serves without being the champion or its tag says otherwise.
    """
    champion = (model.get("aliases") or {}).get("champion")
    served = observation.of(model["model_name"])
    answer = dict(model)
    answer["serving"] = [
        {**item.as_dict(), "champion": item.version == champion, **_note(item, champion)} for item in served
    ]
    answer["serving_state"] = {"state": "unknown" if observation.unknown else "known", "unknown": observation.unknown}
    if "versions" in model:
        answer["versions"] = [_version_state(version, served, observation, champion) for version in model["versions"]]
    return answer


def _note(item: Served, champion: str | None) -> dict[str, str]:
    if item.version == champion or item.role == "shadow":
        return {}
    why = f"a {item.role}" if item.role != STABLE else "still the stable version (a rollback, or a pinned deploy)"
    return {"note": f"serves without being @champion ({why})"}


def _version_state(
    version: dict[str, Any], served: list[Served], observation: Observation, champion: str | None
) -> dict[str, Any]:
    number = str(version["version"])
    recorded = (version.get("deployment") or {}).get("status")
    mine = [item for item in served if item.version == number]
    if mine:
        state = {"state": SERVING, "places": [item.as_dict() for item in mine]}
        state.update(role=mine[0].role, target=mine[0].target, endpoint=mine[0].endpoint)
        state.update(_note(mine[0], champion))
    else:
        target = (version.get("deployment") or {}).get("target") or DOCKER
        if target in observation.unknown:
            state = {"state": UNKNOWN, "target": target, "reason": f"the {target} target did not answer"}
        elif target not in observation.asked:
            # Never deployed (nothing asked runs it, and no deploy recorded one), or a target not asked.
            reason = {"reason": f"the {target} target was not asked"}
            state = {"state": NOT_SERVING} if recorded is None else {"state": UNKNOWN, "target": target, **reason}
        else:
            state = {"state": NOT_SERVING}
        if recorded == SERVING and state["state"] == NOT_SERVING:
            state["note"] = f"its last deploy recorded serving on {target}; nothing there runs it now"
    state["champion"] = number == champion
    state["recorded_status"] = recorded
    return {**version, "serving": state}
