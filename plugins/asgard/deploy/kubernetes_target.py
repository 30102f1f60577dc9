"""The Kubernetes (EKS) deploy target: server-side apply, a watched rollout, verification, rollback.

The version's objects (``asgard.deploy.kubernetes_manifests``) are server-side applied under one field
manager, so re-applying the same version changes nothing. Only the model's own objects are ever
changed or removed (``asgard.deploy.kubernetes_ownership``): an object of one of its names that is
not its own fails the deploy before anything changes. The rolling update never goes below the
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
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from asgard.deploy import kubernetes_manifests, kubernetes_ownership, kubernetes_trials
from asgard.deploy.kubernetes_manifests import VERSION_ANNOTATION
from asgard.deploy.kubernetes_ownership import ForeignObject
from asgard.deploy.kubernetes_rollback import roll_back, served
from asgard.deploy.strategies import REPLACING, Rollout
from asgard.serving.checks import Call, DeployError, verify

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

log = logging.getLogger(__name__)

FIELD_MANAGER = "asgard"
APPLY_PATCH = "application/apply-patch+yaml"
# The kinds a serving workload is made of: the client API class and its method suffix.
KINDS = {
    "Deployment": ("AppsV1Api", "deployment"),
    "Service": ("CoreV1Api", "service"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
    "PodDisruptionBudget": ("PolicyV1Api", "pod_disruption_budget"),
    "NetworkPolicy": ("NetworkingV1Api", "network_policy"),
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
    """The calls a deploy makes, on one namespace, through the hook's API client; it changes and removes
    ``model_name``'s own objects only."""

    def __init__(self, hook: KubernetesHook, namespace: str, model_name: str | None = None) -> None:
        from kubernetes import client

        self.api_client = hook.get_conn()
        self.namespace = namespace
        self.model_name = model_name
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
        """Server-side apply: creates or updates, idempotent, this manager owns the fields it sets.

        Forced only over the model's own object (an autoscaler or a person may have set its fields since);
        a ForeignObject, nothing sent, when the object of that name is someone else's.
        """
        kind, name = body["kind"], body["metadata"]["name"]
        current = self.read(kind, name)
        if why := kubernetes_ownership.problem(current, self._owner()):
            raise kubernetes_ownership.refusal(kind, self.namespace, name, self._owner(), why)
        applied = self._method("patch", kind)(
            name,
            self.namespace,
            body,
            field_manager=FIELD_MANAGER,
            force=current is not None,
            _content_type=APPLY_PATCH,
        )
        return self.api_client.sanitize_for_serialization(applied)

    def delete(self, kind: str, name: str) -> None:
        """Remove the model's own object of that name; one that is not its own is left as it is."""
        from kubernetes.client.exceptions import ApiException

        current = self.read(kind, name)
        if why := kubernetes_ownership.problem(current, self._owner()):
            log.warning("left %s %s/%s in place: %s", kind, self.namespace, name, why)
            return
        if current is None:
            return
        try:
            self._method("delete", kind)(name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    def _owner(self) -> str:
        if self.model_name is None:
            raise RuntimeError("a Cluster without a model_name changes nothing")
        return self.model_name

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
    expose_features: bool = False,
    egress: tuple[tuple[str, int], ...] = (),
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
        expose_features=expose_features,
        egress=egress,
    )
    app = kubernetes_manifests.app_name(model_name)
    cluster = Cluster(hook, namespace, model_name)
    # Every object the run may apply is read first: one that is not the model's own (another team's, a
    # hand-made Service, another model's of the same Kubernetes name) refuses the deploy before any change.
    found = {(body["kind"], app): cluster.read(body["kind"], app) for body in objects}
    if rollout.trial:
        found |= {(kind, name): cluster.read(kind, name) for kind, name in kubernetes_manifests.trial_objects(app)}
    kubernetes_ownership.check_all(found, namespace, model_name)
    before = {body["kind"]: found[(body["kind"], app)] for body in objects}
    if before["Deployment"] is not None and before["HorizontalPodAutoscaler"] is not None:
        # The autoscaler owns the replica count once it exists: a deploy leaves it as it is.
        objects[0]["spec"]["replicas"] = before["Deployment"]["spec"].get("replicas", replicas)
    previous = served(before["Deployment"])
    endpoint = f"http://{app}.{namespace}.svc.cluster.local"
    where = f"service {namespace}/{app}"
    trying, trial = rollout.trial and previous is not None, None
    try:
        # The fence first: no pod of this version (a trial's included) runs a moment without it.
        fence = next(body for body in objects if body["kind"] == "NetworkPolicy")
        cluster.apply(fence)
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
            if body is not fence:
                cluster.apply(body)
        progress(f"applied {', '.join(body['kind'] for body in objects)} {namespace}/{app} for v{version} ({image})")
        cluster.wait_for_rollout(app, timeout=rollout_timeout, poll_seconds=poll_seconds)
        progress(f"deployment {namespace}/{app} rolled out v{version}")
        verify(cluster.service_call(app), version, payload, where=where, timeout=60)
        if trying:
            kubernetes_trials.remove(cluster, app)
            progress(f"removed the {rollout.strategy}'s objects: {where} serves v{version} on every pod")
    except (DeployError, ApiException, ForeignObject) as error:
        # (a ForeignObject here: an object of the model's names appeared after the first read)
        reason = (
            f"the API server refused: {error.status} {error.reason}" if isinstance(error, ApiException) else str(error)
        )
        if trying:
            kubernetes_trials.remove(cluster, app)
        problem = None
        if trial is not None or not trying:
            # The stable objects changed (a promoted trial, or a replace): put them back.
            problem = roll_back(cluster, app, before, objects, rollout_timeout, poll_seconds, progress)
        raise DeployError(
            reason,
            serving=(previous or {}).get("version"),
            rollback_problem=problem,
            figures=getattr(error, "figures", None),
        ) from error
    except BaseException:
        # Anything else (a timeout of the task, a lost connection): the trial's pods take no more traffic.
        if trying:
            with contextlib.suppress(Exception):
                kubernetes_trials.remove(cluster, app)
        raise
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
