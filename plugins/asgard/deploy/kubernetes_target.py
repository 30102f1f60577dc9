"""The Kubernetes (EKS) deploy target: server-side apply, a watched rollout, verification, rollback.

The version's objects (``asgard.deploy.kubernetes_manifests``) are server-side applied under one field
manager, so re-applying the same version changes nothing. The rolling update never goes below the
replicas asked for and only sends traffic to pods whose ``/health`` is ready, so a version that
cannot start never takes traffic. Once the rollout completes, the version must prove it serves
through its Service (the API server's service proxy: the worker needs no route into the cluster).
Any failure re-applies the objects as they were before the run (``kubectl rollout undo`` for the
whole set), or removes them when nothing served before, and waits for that rollout.

The cluster is reached through the cncf-kubernetes provider's ``KubernetesHook``; on EKS its
kubeconfig comes from the amazon provider's ``EksHook`` (a token from the AWS connection, no
kubeconfig written by hand).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.deploy import kubernetes_manifests, kubernetes_trials
from asgard.deploy.strategies import REPLACING, Rollout
from asgard.serving.checks import Call, DeployError, verify

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

log = logging.getLogger(__name__)

FIELD_MANAGER = "asgard"
APPLY_PATCH = "application/apply-patch+yaml"
VERSION_ANNOTATION = "asgard.io/model-version"
# The kinds a serving workload is made of: the client API class and its method suffix.
KINDS = {
    "Deployment": ("AppsV1Api", "deployment"),
    "Service": ("CoreV1Api", "service"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
    "PodDisruptionBudget": ("PolicyV1Api", "pod_disruption_budget"),
    "ConfigMap": ("CoreV1Api", "config_map"),  # a shadow's mirror settings
}
# Pod states that will not heal by waiting: the rollout fails at once, naming the pod.
STUCK_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}


@contextlib.contextmanager
def cluster_hook(
    *, kubernetes_conn_id: str, eks_cluster_name: str | None, aws_conn_id: str, namespace: str
) -> Iterator[KubernetesHook]:
    """The hook for the serving cluster: the Kubernetes connection, or EKS through the AWS connection."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    if not eks_cluster_name:
        yield KubernetesHook(conn_id=kubernetes_conn_id)
        return
    from airflow.providers.amazon.aws.hooks.eks import EksHook

    eks = EksHook(aws_conn_id=aws_conn_id)
    # The files (kubeconfig, short-lived credentials for its token command) are removed on exit.
    with eks.generate_config_file_with_credentials(eks_cluster_name=eks_cluster_name, pod_namespace=namespace) as (
        config_file,
        _credentials_file,
    ):
        yield KubernetesHook(conn_id=None, kubernetes_conn_id=None, config_file=config_file)


class Cluster:
    """The calls a deploy makes, on one namespace, through the hook's API client."""

    def __init__(self, hook: KubernetesHook, namespace: str) -> None:
        from kubernetes import client

        self.api_client = hook.get_conn()
        self.namespace = namespace
        self._apis = {kind: getattr(client, api)(self.api_client) for kind, (api, _) in KINDS.items()}
        self.core = client.CoreV1Api(self.api_client)

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        return getattr(self._apis[kind], f"{verb}_namespaced_{KINDS[kind][1]}")

    def read(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object as the API server holds it (plain JSON), or None."""
        from kubernetes.client.exceptions import ApiException

        try:
            found = self._method("read", kind)(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self.api_client.sanitize_for_serialization(found)

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: creates or updates, idempotent, this manager owns the fields it sets."""
        applied = self._method("patch", body["kind"])(
            body["metadata"]["name"],
            self.namespace,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )
        return self.api_client.sanitize_for_serialization(applied)

    def delete(self, kind: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._method("delete", kind)(name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    def wait_for_rollout(self, name: str, *, timeout: float, poll_seconds: float = 2.0) -> None:
        """Wait as ``kubectl rollout status`` does: every replica updated and available, none old left."""
        deadline = time.monotonic() + timeout
        apps = self._apis["Deployment"]
        while True:
            deployment = apps.read_namespaced_deployment_status(name, self.namespace)
            waiting = _rollout_waiting_for(deployment)
            if waiting is None:
                return
            self._fail_on_stuck_pods(deployment)
            if time.monotonic() > deadline:
                raise DeployError(
                    f"the rollout of deployment {self.namespace}/{name} timed out after {timeout:.0f}s: {waiting}"
                )
            time.sleep(poll_seconds)

    def _fail_on_stuck_pods(self, deployment: Any) -> None:
        template = deployment.spec.template.metadata
        version = (template.annotations or {}).get(VERSION_ANNOTATION)
        selector = ",".join(f"{key}={value}" for key, value in deployment.spec.selector.match_labels.items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        for pod in pods:
            if (pod.metadata.annotations or {}).get(VERSION_ANNOTATION) != version or pod.status is None:
                continue
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting if status.state else None
                if waiting is not None and waiting.reason in STUCK_REASONS:
                    raise DeployError(
                        f"pod {pod.metadata.name} of the new version is in {waiting.reason}: {waiting.message or '-'}"
                    )

    def service_call(self, service: str) -> Call:
        """Reach the Service's pods through the API server's service proxy."""
        return self._proxy_call(
            f"/api/v1/namespaces/{self.namespace}/services/{service}:http/proxy", f"service {service}"
        )

    def pod_call(self, pod: str) -> Call:
        """Reach one pod's server through the API server's pod proxy."""
        return self._proxy_call(f"/api/v1/namespaces/{self.namespace}/pods/{pod}:8080/proxy", f"pod {pod}")

    def pods(self, selector: str) -> list[dict[str, Any]]:
        """The pods ``selector`` matches, as plain JSON."""
        found = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return [self.api_client.sanitize_for_serialization(pod) for pod in found]

    def _proxy_call(self, base: str, what: str) -> Call:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        def call(method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str]:
            try:
                answer = self.api_client.call_api(
                    base + path,
                    method,
                    header_params={"Accept": "application/json", "Content-Type": "application/json"},
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _return_http_data_only=True,
                    _request_timeout=30,
                )
            except ApiException as error:
                if error.status in (502, 503):  # no ready endpoint behind it (yet)
                    raise ConnectionError(f"{what}: {error.status} {error.reason}") from error
                text = error.body.decode(errors="replace") if isinstance(error.body, bytes) else str(error.body or "")
                return error.status, text
            except HTTPError as error:
                raise ConnectionError(str(error)) from error
            return answer.status, answer.data.decode(errors="replace")

        return call


def _rollout_waiting_for(deployment: Any) -> str | None:
    """What the rollout still waits for, None when complete; a DeployError past its progress deadline."""
    status, desired = deployment.status, deployment.spec.replicas or 0
    if status is None or (status.observed_generation or 0) < (deployment.metadata.generation or 0):
        return "the controller has not seen the new spec yet"
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            raise DeployError(
                f"deployment {deployment.metadata.name} exceeded its progress deadline: {condition.message}"
            )
    updated, total, available = status.updated_replicas or 0, status.replicas or 0, status.available_replicas or 0
    if updated < desired:
        return f"{updated} of {desired} replicas updated"
    if total > updated:
        return f"{total - updated} old replicas pending termination"
    if available < updated:
        return f"{available} of {updated} updated replicas available"
    return None


def _restorable(current: dict[str, Any]) -> dict[str, Any]:
    """An object read before the run, as an apply body that puts it back."""
    metadata = current["metadata"]
    body = {
        "apiVersion": current["apiVersion"],
        "kind": current["kind"],
        "metadata": {key: metadata[key] for key in ("name", "namespace", "labels", "annotations") if key in metadata},
        "spec": current["spec"],
    }
    return json.loads(json.dumps(body))


def deploy(
    hook: KubernetesHook,
    *,
    model_name: str,
    version: str,
    run_id: str,
    image: str,
    payload: dict[str, Any] | None,
    namespace: str,
    replicas: int = 2,
    resources: dict[str, Any] | None = None,
    prediction_log: str | None = None,
    online_store_secret: str | None = None,
    rollout: Rollout = REPLACING,
    rollout_timeout: float = 600.0,
    poll_seconds: float = 2.0,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Serve ``image`` (by digest) as the model's workload in ``namespace``; the outcome.

    A ``canary`` or ``shadow`` rollout with a version serving first tries the new version against live
    traffic (``kubernetes_trials``); within its limits, the stable Deployment rolls out the new version
    and the trial's objects are removed; past one, they are removed and the run fails, the stable
    Deployment untouched.
    """
    from kubernetes.client.exceptions import ApiException

    objects = kubernetes_manifests.render(
        model_name=model_name,
        version=version,
        run_id=run_id,
        image=image,
        namespace=namespace,
        replicas=replicas,
        resources=resources,
        prediction_log=prediction_log,
        online_store_secret=online_store_secret,
    )
    app = kubernetes_manifests.app_name(model_name)
    cluster = Cluster(hook, namespace)
    before = {body["kind"]: cluster.read(body["kind"], app) for body in objects}
    # Objects of that name that Asgard did not make (another team's, a hand-made Service) are never taken
    # over: a forced server-side apply would silently make them this model's.
    foreign = [kind for kind, body in before.items() if body and _labels(body).get(PART_OF) != "asgard"]
    if foreign:
        raise InputError(
            f"{namespace}/{app} exists as a {', '.join(foreign)} that Asgard did not create (no {PART_OF}=asgard "
            "label): it is never overwritten; remove it, or deploy this model to another namespace"
        )
    owner = (before["Deployment"] or {}).get("metadata", {}).get("annotations", {}).get("asgard.io/model-name")
    if owner is not None and owner != model_name:
        raise InputError(
            f"model {model_name!r} would be served as {namespace}/{app}, which already serves model {owner!r}: "
            "two model names that map to one Kubernetes name cannot both be deployed in a namespace"
        )
    if before["Deployment"] is not None and before["HorizontalPodAutoscaler"] is not None:
        # The autoscaler owns the replica count once it exists: a deploy leaves it as it is.
        objects[0]["spec"]["replicas"] = before["Deployment"]["spec"].get("replicas", replicas)
    previous = _served(before["Deployment"])
    endpoint = f"http://{app}.{namespace}.svc.cluster.local"
    where = f"service {namespace}/{app}"
    trying, trial = rollout.trial and previous is not None, None
    try:
        if trying:
            trial = kubernetes_trials.run(
                cluster,
                objects,
                version,
                payload,
                rollout,
                rollout_timeout=rollout_timeout,
                poll_seconds=poll_seconds,
                progress=progress,
            )
        elif rollout.trial:
            progress(f"nothing serves {app} yet: no live traffic to {rollout.strategy} against, replacing")
        for body in objects:
            cluster.apply(body)
        progress(f"applied {', '.join(body['kind'] for body in objects)} {namespace}/{app} for v{version} ({image})")
        cluster.wait_for_rollout(app, timeout=rollout_timeout, poll_seconds=poll_seconds)
        progress(f"deployment {namespace}/{app} rolled out v{version}")
        verify(cluster.service_call(app), version, payload, where=where, timeout=60)
        if trying:
            kubernetes_trials.remove(cluster, app)
            progress(f"removed the {rollout.strategy}'s objects: {where} serves v{version} on every pod")
    except (DeployError, ApiException) as error:
        reason = (
            str(error) if isinstance(error, DeployError) else f"the API server refused: {error.status} {error.reason}"
        )
        if trying:
            kubernetes_trials.remove(cluster, app)
        problem = None
        if trial is not None or not trying:
            # The stable objects changed (a promoted trial, or a replace): put them back.
            problem = _roll_back(cluster, app, before, objects, rollout_timeout, poll_seconds, progress)
        raise DeployError(
            reason,
            serving=(previous or {}).get("version"),
            rollback_problem=problem,
            figures=getattr(error, "figures", None),
        ) from error
    progress(f"{where} serves {model_name} v{version}")
    return {
        "endpoint": endpoint,
        "version": version,
        "image": image,
        "namespace": namespace,
        "changed": previous is None or previous["image"] != image,
        "previous": previous,
        "trial": trial,
    }


PART_OF = "app.kubernetes.io/part-of"


def _labels(body: dict[str, Any]) -> dict[str, str]:
    return (body.get("metadata") or {}).get("labels") or {}


def _served(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    if deployment is None:
        return None
    template = deployment["spec"]["template"]
    return {
        "version": (template["metadata"].get("annotations") or {}).get(VERSION_ANNOTATION),
        "image": template["spec"]["containers"][0]["image"],
    }


def _roll_back(
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
            if before[kind] is None:
                cluster.delete(kind, app)
            else:
                cluster.apply(_restorable(before[kind]))
    except ApiException as error:
        log.error("rolling %s/%s back failed: %s %s", cluster.namespace, app, error.status, error.reason)
        return f"the API server refused the rollback: {error.status} {error.reason}"
    if before["Deployment"] is None:
        progress(f"removed {cluster.namespace}/{app}: nothing served before this run")
        return None
    restored = _served(before["Deployment"])
    progress(f"rolling {cluster.namespace}/{app} back to v{restored['version']} ({restored['image']})")
    try:
        cluster.wait_for_rollout(app, timeout=rollout_timeout, poll_seconds=poll_seconds)
    except (DeployError, ApiException) as error:
        log.error("the rollback of %s/%s did not complete: %s", cluster.namespace, app, error)
        return f"the rollback's own rollout did not complete: {error}"
    progress(f"rolled {cluster.namespace}/{app} back to v{restored['version']}")
    return None
