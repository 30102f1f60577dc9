"""A canary on the Kubernetes target, with no service mesh: a second Deployment behind the same Service.

The share of traffic is the canary's pods among the Service's ready endpoints; the counts are the
serving pods' own ``/metrics`` (``asgard_serving.metrics``), read through the API server's pod proxy.
The verdict is ``strategies.decide``'s, as on the Docker target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgard.deploy import kubernetes_manifests
from asgard.deploy.strategies import Rollout, combine, parse_metrics, side_summary, watch
from asgard.serving.checks import DeployError, verify

if TYPE_CHECKING:
    from asgard.deploy.kubernetes_target import Cluster


def run(
    cluster: Cluster,
    deployment: dict[str, Any],
    version: str,
    payload: dict[str, Any] | None,
    rollout: Rollout,
    rollout_timeout: float,
    poll_seconds: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The new version as a canary Deployment behind the model's Service; the verdict's figures.

    With no mesh to split or count requests, the share is the canary's pods among the Service's ready
    endpoints (``canary_replicas``; the share that gives is recorded), and the counts are the pods'
    own ``/metrics``, read through the API server's pod proxy when the trial starts and as it goes.
    A breach (or a canary pod that restarts) is a DeployError carrying the figures; the caller
    removes the canary.
    """
    app = deployment["metadata"]["name"]
    stable_replicas = int((cluster.read("Deployment", app) or {}).get("spec", {}).get("replicas") or 1)
    replicas = kubernetes_manifests.canary_replicas(stable_replicas, rollout.percent)
    body = kubernetes_manifests.canary_deployment(deployment, replicas)
    name = body["metadata"]["name"]
    cluster.apply(body)
    progress(f"canary {cluster.namespace}/{name}: {replicas} pod(s) of v{version} beside {stable_replicas} serving")
    cluster.wait_for_rollout(name, timeout=rollout_timeout, poll_seconds=poll_seconds)
    track = kubernetes_manifests.TRACK_LABEL

    def counts() -> tuple[dict[str, Any], dict[str, Any], int]:
        stable, tried, restarts = [], [], 0
        for pod in cluster.pods(f"app.kubernetes.io/name={app}"):
            labels = pod["metadata"].get("labels") or {}
            if labels.get("app.kubernetes.io/name") != app:
                continue
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            if not statuses or not all(status.get("ready") for status in statuses):
                continue  # not an endpoint of the Service: it takes no traffic
            status, text = cluster.pod_call(pod["metadata"]["name"])("GET", "/metrics", None)
            if status != 200:
                raise DeployError(f"pod {pod['metadata']['name']} answered /metrics with {status}: {text[:200]}")
            is_canary = labels.get(track) == "canary"
            (tried if is_canary else stable).append(parse_metrics(text))
            if is_canary:
                restarts += sum(int(status.get("restartCount") or 0) for status in statuses)
        return combine(stable), combine(tried), restarts

    canary_pods = [
        pod
        for pod in cluster.pods(f"app.kubernetes.io/name={app},{track}=canary")
        if (pod["metadata"].get("labels") or {}).get(track) == "canary"
    ]
    if canary_pods:
        pod = canary_pods[0]["metadata"]["name"]
        verify(cluster.pod_call(pod), version, payload, where=f"canary pod {pod}", timeout=60)
    stable_start, canary_start, _ = counts()
    share = round(100 * replicas / (replicas + stable_replicas), 1)

    def traffic() -> dict[str, Any]:
        stable, tried, restarts = counts()
        if restarts:
            raise DeployError(f"the canary's pods restarted {restarts} time(s) while taking traffic")
        return {
            "stable": side_summary(combine([stable], minus=stable_start)),
            "candidate_side": side_summary(combine([tried], minus=canary_start)),
            "compared_rows": 0,
            "agreement": None,
            "mean_abs_probability_diff": None,
            "mirrors_dropped": 0,
        }

    progress(f"canary: v{version} takes {share}% of the Service's endpoints (asked: {rollout.percent}%)")
    verdict = watch(rollout, traffic, progress=progress, poll=max(poll_seconds, 0.05))
    figures = {**verdict.figures, "replicas": replicas, "endpoint_share": share}
    progress(f"canary of v{version}: {verdict.state}, {verdict.reason}")
    if verdict.state != "pass":
        raise DeployError(f"the canary breached {verdict.reason}", figures=figures)
    return figures
