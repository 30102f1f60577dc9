"""The Kubernetes target's rollback: the model's workload put back as it was before a failed deploy.

Objects the run changed are re-applied as they were read before it; objects it created are removed.
Both go through ``Cluster``, which changes and removes the model's own objects only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgard.deploy.kubernetes_manifests import VERSION_ANNOTATION
from asgard.deploy.kubernetes_ownership import ForeignObject
from asgard.serving.checks import DeployError

if TYPE_CHECKING:
    from asgard.deploy.kubernetes_target import Cluster

log = logging.getLogger(__name__)


def restorable(current: dict[str, Any]) -> dict[str, Any]:
    """An object read before the run, as an apply body that puts it back."""
    metadata = current["metadata"]
    body = {
        "apiVersion": current["apiVersion"],
        "kind": current["kind"],
        "metadata": {key: metadata[key] for key in ("name", "namespace", "labels", "annotations") if key in metadata},
        "spec": current["spec"],
    }
    return json.loads(json.dumps(body))


def served(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    """The version and image a Deployment (as read) serves; None for none."""
    if deployment is None:
        return None
    template = deployment["spec"]["template"]
    return {
        "version": (template["metadata"].get("annotations") or {}).get(VERSION_ANNOTATION),
        "image": template["spec"]["containers"][0]["image"],
    }


def roll_back(
    cluster: Cluster,
    app: str,
    before: dict[str, dict[str, Any] | None],
    objects: list[dict[str, Any]],
    rollout_timeout: float,
    poll_seconds: float,
    progress: Callable[[str], None],
) -> str | None:
    """Put every object back as it was before the run; remove the ones the run created.

    None when the old state is back (its rollout complete); else what went wrong, which the caller
    reports beside the reason the deploy failed (it never replaces it).
    """
    from kubernetes.client.exceptions import ApiException

    try:
        for body in objects:
            kind = body["kind"]
            if before[kind] is None and kind == "NetworkPolicy":
                # The fence stays: the version's pods may still be terminating (and run the model's code).
                continue
            if before[kind] is None:
                cluster.delete(kind, app)
            else:
                cluster.apply(restorable(before[kind]))
    except ApiException as error:
        log.error("rolling %s/%s back failed: %s %s", cluster.namespace, app, error.status, error.reason)
        return f"the API server refused the rollback: {error.status} {error.reason}"
    except ForeignObject as error:
        return f"the rollback left an object that is not the model's own as it is: {error}"
    if before["Deployment"] is None:
        progress(f"removed {cluster.namespace}/{app}: nothing served before this run")
        return None
    restored = served(before["Deployment"])
    progress(f"rolling {cluster.namespace}/{app} back to v{restored['version']} ({restored['image']})")
    try:
        cluster.wait_for_rollout(app, timeout=rollout_timeout, poll_seconds=poll_seconds)
    except (DeployError, ApiException) as error:
        log.error("the rollback of %s/%s did not complete: %s", cluster.namespace, app, error)
        return f"the rollback's own rollout did not complete: {error}"
    progress(f"rolled {cluster.namespace}/{app} back to v{restored['version']}")
    return None
