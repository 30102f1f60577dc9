"""What a ``deploy_model`` run deploys: its conf, or the model Asset event that started it."""

from __future__ import annotations

import logging
from typing import Any

from asgard.errors import InputError, fail_without_retry

log = logging.getLogger(__name__)
DEPLOY_TAG_PREFIX = "deploy."


def deployment_request(params: dict[str, Any], triggering_asset_events: Any = None) -> dict[str, Any]:
    """Model name and version (or alias), target and sizing of this run.

    A run started by a promotion carries no conf: the newest model Asset event names the model and
    the version the gate promoted, so a later promotion cannot change what this run deploys.
    """
    with fail_without_retry():
        model_name, version = params.get("model_name"), params.get("version")
        if not model_name:
            events = [event for per_asset in (triggering_asset_events or {}).values() for event in per_asset]
            if not events:
                raise InputError("model_name is required when the run was not started by a model Asset event")
            newest = max(events, key=lambda event: event.timestamp)
            model_name, version = newest.extra.get("model_name"), newest.extra.get("version")
            if not model_name:
                raise InputError(f"the model Asset event {newest.extra} names no model_name")
        return {
            "model_name": model_name,
            "version": str(version) if version else None,
            "alias": params.get("alias") or "champion",
            "target": params.get("target") or "docker",
            "replicas": int(params.get("replicas") or 2),
            "namespace": params.get("namespace"),
            "resources": params.get("resources"),
        }


def deploy_to_target(request: dict[str, Any], build: dict[str, Any], push: dict[str, Any]) -> dict[str, Any]:
    """Serve the pushed image (by digest) on the requested target, verified; roll back on any failure.

    The outcome is recorded on the model version (``deploy.*`` tags). When the run deployed an alias
    (``@champion``) and the new version fails, the alias moves back to the version still serving.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from asgard import serving_image
    from asgard.hooks.mlflow import MlflowHook
    from asgard.serving_checks import DeployError, holdout_payload

    hook = MlflowHook()
    name, version, target = build["model_name"], build["version"], request["target"]
    payload = holdout_payload(serving_image.holdout_frame(hook, build["run_id"]))
    deploy = _deploy_kubernetes if target == "kubernetes" else _deploy_docker
    try:
        outcome = deploy(request, build, push, payload)
    except DeployError as error:
        kept = f"v{error.serving} keeps serving" if error.serving else "nothing was serving it before"
        reason = f"{name} v{version} failed verification on {target} and was rolled back ({kept}): {error}"
        _record(hook, name, version, {"status": "rolled_back", "reason": str(error)[:4000], "digest": push["digest"]})
        if error.serving and not request.get("version"):
            _restore_alias(hook, name, request["alias"], version, error.serving)
        raise AirflowFailException(reason) from error
    _record(
        hook,
        name,
        version,
        {"status": "serving", "endpoint": outcome["endpoint"], "digest": push["digest"], "target": target},
    )
    log.info("%s v%s serves at %s (image %s)", name, version, outcome["endpoint"], push["reference"])
    return {
        "model_name": name,
        "version": version,
        "target": target,
        "endpoint": outcome["endpoint"],
        "digest": push["digest"],
        "changed": outcome["changed"],
        "previous_version": (outcome["previous"] or {}).get("version"),
    }


def _deploy_docker(request: dict[str, Any], build: dict[str, Any], push: dict[str, Any], payload: Any) -> dict:
    """The embedded default: a container beside the serving one, behind the router's stable endpoint."""
    from asgard import docker_target
    from asgard.embedded.router import RouteTable
    from asgard.operators.serving_image import docker_client
    from asgard.settings import get_settings

    settings, name = get_settings(), build["model_name"]
    return docker_target.deploy(
        docker_client(None),
        model_name=name,
        version=build["version"],
        image=push["reference"],
        payload=payload,
        routes=RouteTable(settings.routes_file),
        router_url=settings.router_url,
        prediction_log=settings.prediction_log_folder(name),
    )


def _deploy_kubernetes(request: dict[str, Any], build: dict[str, Any], push: dict[str, Any], payload: Any) -> dict:
    """Production: the model's workload in a cluster (EKS through the AWS connection when configured)."""
    from asgard import kubernetes_target
    from asgard.settings import get_settings

    settings, name = get_settings(), build["model_name"]
    namespace = request.get("namespace") or settings.serving_namespace
    with kubernetes_target.cluster_hook(
        kubernetes_conn_id=settings.kubernetes_conn_id,
        eks_cluster_name=settings.eks_cluster_name,
        aws_conn_id=settings.aws_conn_id,
        namespace=namespace,
    ) as cluster:
        return kubernetes_target.deploy(
            cluster,
            model_name=name,
            version=build["version"],
            run_id=build["run_id"],
            image=push["reference"],
            payload=payload,
            namespace=namespace,
            replicas=request["replicas"],
            resources=request.get("resources"),
            prediction_log=settings.cluster_prediction_log(name),
        )


def _record(hook: Any, name: str, version: str, values: dict[str, str]) -> None:
    for key, value in values.items():
        hook.client.set_model_version_tag(name, version, f"{DEPLOY_TAG_PREFIX}{key}", str(value))


def _restore_alias(hook: Any, name: str, alias: str, failed: str, serving: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        current = hook.client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        return
    if str(current) == str(failed):
        hook.client.set_registered_model_alias(name, alias, str(serving))
        log.warning("moved @%s of %s back from v%s to v%s, the version still serving", alias, name, failed, serving)
