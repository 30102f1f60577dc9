"""The Kubernetes objects that serve one model version, rendered from ``include/deploy/kubernetes``.

Deployment (readiness/liveness on ``/health``, requests/limits, non-root, read-only root
filesystem, no privilege escalation), Service (ClusterIP 80 → 8080), HorizontalPodAutoscaler
(autoscaling/v2), PodDisruptionBudget and NetworkPolicy (the pods reach cluster DNS, the shadow and
``ASGARD_KUBERNETES_SERVING_EGRESS``, nothing else), each carrying the model's lineage; the image is pinned
by digest, never by a mutable tag.
"""

from __future__ import annotations

import re
from typing import Any

from asgard.core.errors import InputError
from asgard.core.settings import REPO_ROOT

TEMPLATE = REPO_ROOT / "include" / "deploy" / "kubernetes" / "serving.yaml.j2"
DIGEST_REFERENCE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
DEFAULT_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
# A Kubernetes quantity as a request may give one (no exponents, no signs).
QUANTITY = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,6})?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
# What a model's workload is, and nothing else.
KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy")
# The version a pod template (and so each pod) serves.
VERSION_ANNOTATION = "asgard.io/model-version"


def app_name(model_name: str) -> str:
    """A DNS-1123 name for the model's objects (the seed's ``<model>-inference``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:53].strip("-")
    if not name:
        raise InputError(f"model name {model_name!r} gives no usable Kubernetes name")
    return f"{name}-inference"


def model_label(model_name: str) -> str:
    """The model's name as a label value (63 characters at most): what marks its objects as its own."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", model_name)[:63].strip("-_.")


def render(
    *,
    model_name: str,
    version: str,
    run_id: str,
    image: str,
    namespace: str = "asgard",
    replicas: int = 2,
    max_replicas: int | None = None,
    resources: dict[str, Any] | None = None,
    workers: int = 1,
    prediction_log: str | None = None,
    online_store_secret: str | None = None,
    expose_features: bool = False,
    egress: tuple[tuple[str, int], ...] = (),
) -> list[dict[str, Any]]:
    """The objects as dicts, ready for server-side apply.

    ``online_store_secret`` names the Secret whose ``url`` is the online store the pods read features
    by entity id from: the URL (a password in it) reaches the pod from the Secret, never from the image
    or the manifest. It is optional: without it, the server answers entity requests 503, saying so.
    ``expose_features`` lets answers by entity id return the stored features and name unknown ids.
    ``egress``: the (cidr, port) pairs the pods may connect to beyond cluster DNS and the shadow's pods.
    """
    import jinja2
    import yaml

    if not DIGEST_REFERENCE.match(image):
        raise InputError(f"image {image!r} is not pinned by digest (repository@sha256:...): deploys never use a tag")
    merged = checked_resources(resources)
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    app = app_name(model_name)
    labels = {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/part-of": "asgard",
        "app.kubernetes.io/component": "model-server",
        "asgard.io/model": model_label(model_name),
        "asgard.io/model-version": str(version),
    }
    annotations = {
        "asgard.io/model-name": model_name,
        "asgard.io/model-version": str(version),
        "asgard.io/mlflow-run-id": run_id,
        "asgard.io/image-digest": image.split("@", 1)[1],
    }
    text = environment.from_string(TEMPLATE.read_text()).render(
        app=app,
        labels=labels,
        annotations=annotations,
        image=image,
        namespace=namespace,
        replicas=replicas,
        max_replicas=max(max_replicas or replicas * 3, replicas),
        resources=merged,
        workers=workers,
        prediction_log=prediction_log,
        online_store_secret=online_store_secret,
        expose_features=expose_features,
        egress=egress,
    )
    objects = [document for document in yaml.safe_load_all(text) if document]
    kinds = [(body.get("kind"), body.get("metadata", {}).get("name")) for body in objects]
    if kinds != [(kind, app) for kind in KINDS] or any(
        body["metadata"].get("namespace") != namespace for body in objects
    ):
        raise InputError(f"the rendered manifests are not the model's objects in {namespace}: {kinds}")
    return objects


def checked_resources(resources: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """``requests``/``limits`` of ``cpu``/``memory`` as Kubernetes quantities over the defaults; any other
    key or value is refused, naming it."""
    resources = resources or {}
    unknown = sorted(set(resources) - set(DEFAULT_RESOURCES))
    if unknown:
        raise InputError(f"resources may set requests and limits, not {', '.join(unknown)}")
    merged = {}
    for kind, defaults in DEFAULT_RESOURCES.items():
        given = resources.get(kind) or {}
        if not isinstance(given, dict) or set(given) - set(defaults):
            raise InputError(f"resources.{kind} may set cpu and memory only, got {given!r}")
        for name, value in given.items():
            if not isinstance(value, str) or not QUANTITY.match(value):
                raise InputError(
                    f"resources.{kind}.{name} must be a Kubernetes quantity such as 500m or 1Gi, got {value!r}"
                )
        merged[kind] = {**defaults, **given}
    return merged


CANARY_SUFFIX = "-canary"
TRACK_LABEL = "asgard.io/track"
SHADOW_SUFFIX = "-shadow"
MIRROR_SUFFIX = "-mirror"
MIRROR_FILE = "mirror.json"


def trial_objects(app: str) -> list[tuple[str, str]]:
    """The kinds and names of the objects a canary or shadow of ``app`` may apply, the mirror first."""
    return [
        ("ConfigMap", f"{app}{MIRROR_SUFFIX}"),
        ("Deployment", f"{app}{CANARY_SUFFIX}"),
        ("Deployment", f"{app}{SHADOW_SUFFIX}"),
        ("Service", f"{app}{SHADOW_SUFFIX}"),
    ]


def canary_replicas(stable_replicas: int, percent: int) -> int:
    """Pods the canary needs beside ``stable_replicas`` for about ``percent`` of the Service's traffic
    (kube-proxy spreads connections over ready endpoints evenly): at least one."""
    return max(1, round(stable_replicas * percent / (100 - percent)))


def canary_deployment(deployment: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The new version's Deployment as a canary beside the stable one: its own name and selector, and
    pods the model's Service selects too (their ``app.kubernetes.io/name``), so they take their share
    of its traffic without a mesh. The stable Deployment does not adopt them: they are owned."""
    import copy

    canary = copy.deepcopy(deployment)
    app = deployment["metadata"]["name"]
    canary["metadata"]["name"] = f"{app}{CANARY_SUFFIX}"
    canary["metadata"]["labels"] = {**canary["metadata"]["labels"], TRACK_LABEL: "canary"}
    canary["spec"]["replicas"] = replicas
    canary["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": app, TRACK_LABEL: "canary"}}
    template = canary["spec"]["template"]["metadata"]
    template["labels"] = {**template["labels"], TRACK_LABEL: "canary"}
    return canary


def shadow_workload(deployment: dict[str, Any], service: dict[str, Any], replicas: int) -> list[dict[str, Any]]:
    """The new version as a shadow: a Deployment whose pods the model's Service does not select (their
    own ``app.kubernetes.io/name``), and a Service of their own for the serving pods to copy requests
    to. Its pods mirror nothing themselves: the mirror file is the stable pods' alone."""
    import copy

    app = deployment["metadata"]["name"]
    name = f"{app}{SHADOW_SUFFIX}"
    labels = {**deployment["metadata"]["labels"], "app.kubernetes.io/name": name, TRACK_LABEL: "shadow"}
    shadow = copy.deepcopy(deployment)
    shadow["metadata"]["name"] = name
    shadow["metadata"]["labels"] = labels
    shadow["spec"]["replicas"] = replicas
    shadow["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": name}}
    template = shadow["spec"]["template"]
    template["metadata"]["labels"] = labels
    pod = template["spec"]
    pod["volumes"] = [volume for volume in pod["volumes"] if volume["name"] != "mirror"]
    for container in pod["containers"]:
        container["env"] = [variable for variable in container["env"] if variable["name"] != "ASGARD_MIRROR_CONFIG"]
        container["volumeMounts"] = [mount for mount in container["volumeMounts"] if mount["name"] != "mirror"]
    front = copy.deepcopy(service)
    front["metadata"]["name"] = name
    front["metadata"]["labels"] = labels
    front["spec"]["selector"] = {"app.kubernetes.io/name": name}
    return [shadow, front]


def mirror_config_map(deployment: dict[str, Any], percent: int) -> dict[str, Any]:
    """What makes the serving pods copy ``percent`` of their prediction requests to the shadow's Service."""
    import json

    app, namespace = deployment["metadata"]["name"], deployment["metadata"]["namespace"]
    url = f"http://{app}{SHADOW_SUFFIX}.{namespace}.svc.cluster.local"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{app}{MIRROR_SUFFIX}",
            "namespace": namespace,
            "labels": {**deployment["metadata"]["labels"], TRACK_LABEL: "shadow"},
            "annotations": dict(deployment["metadata"]["annotations"]),
        },
        "data": {MIRROR_FILE: json.dumps({"url": url, "percent": percent})},
    }
