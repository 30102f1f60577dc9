"""Canary and shadow on the Kubernetes target, with no service mesh.

- canary: a second Deployment (``<app>-canary``) whose pods the model's Service selects too, so the
  share of traffic is its pods among the Service's ready endpoints (``canary_replicas``);
- shadow: a Deployment and Service of its own (``<app>-shadow``) that the model's Service does not
  select, and the mirror ConfigMap, which the serving pods have mounted: while it exists they copy
  ``percent`` of their prediction requests to the shadow after answering, in the background
  (``asgard_serving.mirror``), and compare the answers with ``asgard_serving.agreement``, as the
  router does on the Docker target; the deploy reads the version's ``model_type`` from the shadow's
  ``/metadata`` to judge the counts as a classifier's (agreement) or a regressor's (difference).

Either way the counts are the serving pods' own ``/metrics``, read through the API server's pod
proxy when the trial starts and at every poll, and the verdict is ``strategies.decide``'s, as on the
Docker target. ``remove`` takes every trial object away again, whatever the outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgard.deploy import kubernetes_manifests as manifests
from asgard.deploy.strategies import SHADOW, Rollout, watch
from asgard.deploy.trial_metrics import combine, comparison, parse_metrics, served_model_type, side_summary
from asgard.serving.checks import DeployError, verify, warm_up

if TYPE_CHECKING:
    from asgard.deploy.kubernetes_target import Cluster

Progress = Callable[[str], None]


def run(
    cluster: Cluster,
    objects: list[dict[str, Any]],
    version: str,
    payload: dict[str, Any] | None,
    rollout: Rollout,
    *,
    rollout_timeout: float,
    poll_seconds: float,
    progress: Progress,
) -> dict[str, Any]:
    """The trial ``rollout`` asks for, against live traffic; the verdict's figures, or a DeployError
    carrying them. The caller promotes on return and calls ``remove`` either way."""
    deployment = objects[0]
    app = deployment["metadata"]["name"]
    stable_replicas = int((cluster.read("Deployment", app) or {}).get("spec", {}).get("replicas") or 1)
    replicas = manifests.canary_replicas(stable_replicas, rollout.percent)
    trial = _shadow if rollout.strategy == SHADOW else _canary
    figures = trial(cluster, objects, version, payload, rollout, replicas, rollout_timeout, poll_seconds, progress)
    # A canary's share is its pods among the Service's endpoints; a shadow's pods sit behind their own.
    figures["replicas"] = replicas
    if rollout.strategy != SHADOW:
        figures["endpoint_share"] = round(100 * replicas / (replicas + stable_replicas), 1)
    if figures["decision"] != "promoted":
        raise DeployError(f"the {rollout.strategy} breached {figures['reason']}", figures=figures)
    return figures


def remove(cluster: Cluster, app: str) -> None:
    """Every object a trial of ``app`` may have left: the mirror first, so the serving pods stop copying.
    (``Cluster.delete`` leaves an object of those names alone unless it is the model's own.)"""
    from kubernetes.client.exceptions import ApiException

    for kind, name in manifests.trial_objects(app):
        with contextlib.suppress(ApiException):
            cluster.delete(kind, name)


def remove_mirror(cluster: Cluster, app: str) -> None:
    from kubernetes.client.exceptions import ApiException

    with contextlib.suppress(ApiException):
        cluster.delete("ConfigMap", f"{app}{manifests.MIRROR_SUFFIX}")


def _canary(cluster, objects, version, payload, rollout, replicas, rollout_timeout, poll_seconds, progress) -> dict:
    deployment = objects[0]
    app = deployment["metadata"]["name"]
    body = manifests.canary_deployment(deployment, replicas)
    name = body["metadata"]["name"]
    cluster.apply(body)
    cluster.wait_for_rollout(name, timeout=rollout_timeout, poll_seconds=poll_seconds)
    canary_pods = [pod for pod, track, _ in _serving_pods(cluster, app) if track == "canary"]
    if canary_pods:
        verify(cluster.pod_call(canary_pods[0]), version, payload, where=f"canary pod {canary_pods[0]}", timeout=60)
    for pod in canary_pods:  # before the window's first counts: warm-up answers are not the trial's
        warm_up(cluster.pod_call(pod), payload)

    def counts() -> tuple[dict[str, Any], dict[str, Any]]:
        stable, tried, restarts = [], [], 0
        for pod, track, pod_restarts in _serving_pods(cluster, app):
            (tried if track == "canary" else stable).append(parse_metrics(_metrics(cluster, pod)))
            restarts += pod_restarts if track == "canary" else 0
        if restarts:
            raise DeployError(f"the canary's pods restarted {restarts} time(s) while taking traffic")
        return combine(stable), combine(tried)

    stable_start, canary_start = counts()
    progress(f"canary: {replicas} pod(s) of v{version} beside the serving ones (asked {rollout.percent}%)")

    def traffic() -> dict[str, Any]:
        stable, tried = counts()
        return _traffic(combine([stable], minus=stable_start), combine([tried], minus=canary_start))

    verdict = watch(rollout, traffic, progress=progress, poll=max(poll_seconds, 0.05))
    progress(f"canary of v{version}: {verdict.state}, {verdict.reason}")
    return dict(verdict.figures)


def _shadow(cluster, objects, version, payload, rollout, replicas, rollout_timeout, poll_seconds, progress) -> dict:
    deployment, service = objects[0], objects[1]
    app, namespace = deployment["metadata"]["name"], cluster.namespace
    workload = manifests.shadow_workload(deployment, service, replicas)
    name = workload[0]["metadata"]["name"]
    for body in workload:
        cluster.apply(body)
    cluster.wait_for_rollout(name, timeout=rollout_timeout, poll_seconds=poll_seconds)
    verify(cluster.service_call(name), version, payload, where=f"service {namespace}/{name}", timeout=60)
    model_type = served_model_type(cluster.service_call(name))

    def counts() -> tuple[dict[str, Any], dict[str, Any]]:
        texts = [_metrics(cluster, pod) for pod, track, _ in _serving_pods(cluster, app) if not track]
        return combine([parse_metrics(text) for text in texts]), combine(
            [parse_metrics(text, "asgard_shadow") for text in texts]
        )

    stable_start, shadow_start = counts()
    cluster.apply(manifests.mirror_config_map(deployment, rollout.percent))
    progress(f"shadow: the serving pods copy {rollout.percent}% of their prediction requests to {name}")

    def traffic() -> dict[str, Any]:
        stable, shadow = counts()
        stable = combine([stable], minus=stable_start)
        return _traffic(stable, combine([shadow], minus=shadow_start), stable["counters"], model_type)

    try:
        verdict = watch(rollout, traffic, progress=progress, poll=max(poll_seconds, 0.05))
    finally:
        remove_mirror(cluster, app)  # the serving pods stop copying, whatever the verdict
    progress(f"shadow of v{version}: {verdict.state}, {verdict.reason}")
    return verdict.figures


def _serving_pods(cluster: Cluster, app: str) -> list[tuple[str, str | None, int]]:
    """The ready pods behind the model's Service: name, track (None: stable) and restarts."""
    track_label, found = manifests.TRACK_LABEL, []
    for pod in cluster.pods(f"app.kubernetes.io/name={app}"):
        labels = pod["metadata"].get("labels") or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if labels.get("app.kubernetes.io/name") != app or not statuses:
            continue
        if not all(status.get("ready") for status in statuses):
            continue  # not an endpoint of the Service: it takes no traffic
        restarts = sum(int(status.get("restartCount") or 0) for status in statuses)
        found.append((pod["metadata"]["name"], labels.get(track_label), restarts))
    return found


def _metrics(cluster: Cluster, pod: str) -> str:
    status, text = cluster.pod_call(pod)("GET", "/metrics", None)
    if status != 200:
        raise DeployError(f"pod {pod} answered /metrics with {status}: {text[:200]}")
    return text


def _traffic(
    stable: dict[str, Any],
    tried: dict[str, Any],
    counters: dict[str, float] | None = None,
    model_type: str | None = None,
) -> dict[str, Any]:
    """``TrafficWindow.summary``'s shape, from pod counts: the serving pods' ``asgard_shadow_*`` counters
    (``Agreement.counters``, summed over the pods) compared as the router's are."""
    counters = counters or {}
    return {
        "stable": side_summary(stable),
        "candidate_side": side_summary(tried),
        **comparison(counters, model_type),
        "mirrors_dropped": int(counters.get("asgard_shadow_dropped_total", 0)),
    }
