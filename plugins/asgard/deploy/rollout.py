"""What a ``deploy_model`` run deploys, and the verified rollout on its target with rollback on failure."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.core.kubernetes_namespaces import parse_serving_egress
from asgard.core.xcom import XComRecord
from asgard.deploy.strategies import REPLACING, Rollout
from asgard.registry.versions import CHAMPION, DEPLOY_TAG_PREFIX

if TYPE_CHECKING:
    from asgard.hooks.mlflow import MlflowHook
    from asgard.serving.image import BuiltImage, PushedImage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployRequest(XComRecord):
    """Which model version a ``deploy_model`` run deploys, where, and how large."""

    model_name: str
    version: str | None
    alias: str
    target: str
    replicas: int
    namespace: str | None = None
    resources: dict[str, Any] | None = None
    # ``strategies.Rollout`` as a dict: replace, or a canary/shadow trial with its window and limits.
    rollout: dict[str, Any] | None = None
    # Whether answers by entity id may return stored features and name unknown ids (off: they never do).
    expose_features: bool = False

    @property
    def rollout_plan(self) -> Rollout:
        return Rollout.from_dict(self.rollout) if self.rollout else REPLACING

    def as_approved(self, approved_rollout: dict[str, Any] | None) -> DeployRequest:
        """This request with the rollout plan its approval was given for (None: the approval named none)."""
        if approved_rollout is None or approved_rollout == self.rollout:
            return self
        log.warning("the rollout changed since the approval (%s); the approved %s runs", self.rollout, approved_rollout)
        return dataclasses.replace(self, rollout=Rollout.from_dict(approved_rollout).to_dict())


def recheck_image_model(context: Any, model_name: str) -> None:
    """``build_image``'s check before it reads a model: the model is the one the run's conf (or Asset event)
    names, which the run's user may deploy; a hand-off changed to name another model is refused."""
    from asgard.registry.ownership import recheck

    asked = deployment_request(context["params"], context.get("triggering_asset_events"))
    recheck(context["dag_run"], asked.model_name, {"model_name": model_name})


def deployment_request(params: dict[str, Any], triggering_asset_events: Any = None) -> DeployRequest:
    """Model name and version (or alias), target and sizing of this run.

    A run started by a promotion carries no conf: the newest model Asset event names the model and
    the version the gate promoted, so a later promotion cannot change what this run deploys, and the
    model's deployment policy says how it rolls out (:func:`promotion_rollout`).
    """
    model_name, version = params.get("model_name"), params.get("version")
    rollout = params
    if not model_name:
        newest = deployed_promotion(triggering_asset_events)
        if newest is None:
            raise InputError(
                "model_name is required when the run was not started by a model Asset event naming a model"
            )
        model_name, version = newest.extra["model_name"], newest.extra.get("version")
        rollout = promotion_rollout(model_name)
    target, namespace = params.get("target") or "docker", params.get("namespace")
    if target == "kubernetes":
        # A namespace the model's team may not use fails the run here: before an approval or a build.
        namespace = serving_namespace(model_name, namespace)
    return DeployRequest(
        model_name=model_name,
        version=str(version) if version else None,
        alias=params.get("alias") or CHAMPION,
        target=target,
        replicas=int(params.get("replicas") or 2),
        namespace=namespace,
        resources=params.get("resources"),
        rollout=Rollout.from_params(rollout).to_dict(),
        expose_features=params.get("expose_features") is True,
    )


def promotion_rollout(model_name: str) -> dict[str, Any]:
    """How a promotion of ``model_name`` rolls out: its deployment policy's rollout (the model's own, else
    the ``promotion_strategy`` setting); a run by hand rolls out as its conf says."""
    from asgard.core.settings import get_settings
    from asgard.deploy.approval import model_policy
    from asgard.hooks.mlflow import MlflowHook

    return model_policy(MlflowHook(), model_name, get_settings()).rollout


def other_promotions(params: dict[str, Any], triggering_asset_events: Any = None) -> list[dict[str, Any]]:
    """The promotions of other models a promotion's run also carries (the newest event of each), which
    :func:`deployment_request` does not deploy: two promotions that land in one scheduler loop share one
    run, and each is handed on as a promotion of its own (a new event, so a run of its own deploys it)."""
    if params.get("model_name"):
        return []  # a run by hand deploys what its conf names; its events (none) promote nothing
    promotions = _promotions(triggering_asset_events)
    deployed = _newest(promotions)
    return [dict(event.extra) for event in promotions.values() if event is not deployed]


def deployed_promotion(triggering_asset_events: Any) -> Any | None:
    """Of the promotions a run started by model Asset events carries (:func:`_promotions`), the one it deploys
    itself, the newest (None: none); the others are handed on to runs of their own. Who may read and decide
    the run (asgard.api.run_subjects) follows the same choice."""
    return _newest(_promotions(triggering_asset_events))


def _newest(promotions: dict[str, Any]) -> Any | None:
    """The newest of ``promotions`` (a tie goes to the name, whatever order the events came in)."""
    if not promotions:
        return None
    return max(promotions.values(), key=lambda event: (event.timestamp, event.extra["model_name"]))


def hand_on_other_promotions(params: dict[str, Any], triggering_asset_events: Any, outlet_events: Any) -> int:
    """deploy_model's task apart from the run's own model: hand each other promotion on (skipped when the
    run carries none: a run by hand, or one promotion). How many were handed on: the run is its deployed
    model's team's to read (asgard.api.run_subjects), and the others are other teams' models, so neither its
    result nor its log names them."""
    from airflow.sdk.exceptions import AirflowSkipException

    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.models import hand_on_promotions

    others = other_promotions(params, triggering_asset_events)
    if not others:
        raise AirflowSkipException("this run carries no other model's promotion")
    handed = len(hand_on_promotions(MlflowHook(), others, outlet_events))
    log.info(
        "handed on %d of the %d other promotion(s) this run carried, each to a run of its own", handed, len(others)
    )
    return handed


def _promotions(triggering_asset_events: Any) -> dict[str, Any]:
    """Each model's promotion among the run's events: the one of its highest version (an older one handed
    on late must not pass a newer), of the events that name a model and a version as the gate does."""
    from asgard.registry.ownership import is_model_name

    chosen: dict[str, Any] = {}
    for per_asset in (triggering_asset_events or {}).values():
        for event in per_asset:
            extra = event.extra or {}
            name, version = extra.get("model_name"), str(extra.get("version") or "")
            if not (is_model_name(name) and version.isascii() and version.isdigit()):
                continue
            held = chosen.get(name)
            # The same choice whatever order the events come in (the task's and the run guard's queries
            # order them differently): the highest version, then the newest event of it.
            if held is None or (int(version), event.timestamp) > (int(held.extra["version"]), held.timestamp):
                chosen[name] = event
    return chosen


def serving_namespace(model_name: str, requested: str | None) -> str:
    """The namespace ``model_name``'s workload goes to: ``requested`` when the model's team may use it,
    else the team's default; an InputError naming the namespace, the team and its namespaces."""
    from asgard.core.kubernetes_namespaces import namespace_for
    from asgard.core.settings import get_settings
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.ownership import model_team

    settings = get_settings()
    # The one place a deploy asks which team a model belongs to (a name not registered yet: the default team's).
    team = model_team(MlflowHook(), model_name, settings) or settings.default_team
    return namespace_for(team, requested, settings, model_name=model_name)


def deploy_to_target(
    request: DeployRequest, build: BuiltImage, push: PushedImage, *, holder: str = "deploy_model"
) -> dict[str, Any]:
    """Serve the pushed image (by digest) on the requested target, verified; roll back on any failure.

    One deploy of a model at a time (``holder``, the DAG run, holds the model's lock in the platform's
    database, whichever worker it runs on): two runs never switch one model's route or objects at once.
    The outcome is recorded on the model version (``deploy.*`` tags). When the run deployed an alias
    (``@champion``) and the new version fails, the alias moves back to the version still serving.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from asgard.core.locks import held
    from asgard.core.settings import get_settings
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import holdout_frame
    from asgard.serving.checks import DeployError, holdout_payload

    hook = MlflowHook()
    name, version, target = build.model_name, build.version, request.target
    payload = holdout_payload(holdout_frame(hook, build.run_id))
    deploy = _deploy_kubernetes if target == "kubernetes" else _deploy_docker
    try:
        with held(get_settings().monitoring_db_url, f"deploy:{target}:{name}", holder):
            outcome = deploy(request, build, push, payload)
    except DeployError as error:
        if error.rollback_problem:
            reason = (
                f"{name} v{version} failed verification on {target}: {error}; "
                f"rolling back did not complete: {error.rollback_problem}"
            )
            status = "rollback_failed"
        else:
            kept = f"v{error.serving} keeps serving" if error.serving else "nothing was serving it before"
            reason = f"{name} v{version} failed verification on {target} and was rolled back ({kept}): {error}"
            status = "rolled_back"
        _record(hook, name, version, {"status": status, "reason": reason[:4000], "digest": push.digest})
        _record_trial(hook, name, version, request.rollout_plan, error.figures)
        if error.serving and not error.rollback_problem and not request.version:
            _restore_alias(hook, name, request.alias, version, error.serving)
        raise AirflowFailException(reason) from error
    _record(
        hook,
        name,
        version,
        {"status": "serving", "endpoint": outcome["endpoint"], "digest": push.digest, "target": target},
    )
    _record_trial(hook, name, version, request.rollout_plan, outcome.get("trial"))
    replaced = (outcome["previous"] or {}).get("version")
    if outcome["changed"] and replaced and str(replaced) != str(version):
        # The version switched away from serves no more: its tags say so, and by what and when.
        _record_replaced(hook, name, str(replaced), version, target)
    log.info("%s v%s serves at %s (image %s)", name, version, outcome["endpoint"], push.reference)
    return {
        "model_name": name,
        "version": version,
        "target": target,
        "endpoint": outcome["endpoint"],
        "digest": push.digest,
        "changed": outcome["changed"],
        "previous_version": (outcome["previous"] or {}).get("version"),
        "strategy": request.rollout_plan.strategy if outcome.get("trial") else "replace",
        # The plan followed (a trial's falls back to replace when nothing serves).
        "rollout": request.rollout or REPLACING.to_dict(),
        "trial": outcome.get("trial"),
    }


def _deploy_docker(request: DeployRequest, build: BuiltImage, push: PushedImage, payload: Any) -> dict:
    """The embedded default: a container beside the serving one, behind the router's stable endpoint."""
    from asgard.core.settings import get_settings
    from asgard.deploy import docker_target
    from asgard.deploy.routes import RouteTable
    from asgard.features.online_reading import serving_location
    from asgard.features.store import load_repo_config
    from asgard.hooks.docker import docker_client

    settings, name = get_settings(), build.model_name
    return docker_target.deploy(
        docker_client(),
        model_name=name,
        version=build.version,
        image=push.reference,
        payload=payload,
        routes=RouteTable.for_settings(settings),
        router_url=settings.router_url,
        prediction_log=settings.prediction_log_folder(name),
        online_store=serving_location(load_repo_config(settings)),
        expose_features=request.expose_features,
        rollout=request.rollout_plan,
    )


def _deploy_kubernetes(request: DeployRequest, build: BuiltImage, push: PushedImage, payload: Any) -> dict:
    """Production: the model's workload in a cluster (EKS through the AWS connection when configured)."""
    from asgard.core.settings import get_settings
    from asgard.deploy import kubernetes_target

    settings, name = get_settings(), build.model_name
    namespace = serving_namespace(name, request.namespace)
    egress = parse_serving_egress(settings.kubernetes_serving_egress)
    if settings.prediction_log_uri and not any(port == 443 for _, port in egress):
        # The pods' NetworkPolicy lets them out only where the setting says: S3 (and STS) among them.
        log.warning(
            "serving pods log predictions to %s, but ASGARD_KUBERNETES_SERVING_EGRESS names no address on port "
            "443: their NetworkPolicy stops those writes (name the S3 and STS endpoints' CIDRs, :443)",
            settings.prediction_log_uri,
        )
    with kubernetes_target.cluster_hook(
        kubernetes_conn_id=settings.kubernetes_conn_id,
        eks_cluster_name=settings.eks_cluster_name,
        aws_conn_id=settings.aws_conn_id,
        namespace=namespace,
    ) as cluster:
        return kubernetes_target.deploy(
            cluster,
            model_name=name,
            version=build.version,
            run_id=build.run_id,
            image=push.reference,
            payload=payload,
            namespace=namespace,
            replicas=request.replicas,
            resources=request.resources,
            prediction_log=settings.cluster_prediction_log(name),
            online_store_secret=settings.serving_online_store_secret,
            egress=egress,
            expose_features=request.expose_features,
            rollout=request.rollout_plan,
        )


def _record_replaced(hook: MlflowHook, name: str, replaced: str, by: str, target: str) -> None:
    """Mark ``replaced`` (the version that served before ``by`` on ``target``) as no longer serving."""
    from datetime import UTC, datetime

    from mlflow.exceptions import MlflowException

    try:
        tags = hook.client.get_model_version(name, replaced).tags or {}
    except MlflowException:  # the version is gone from the registry: nothing to mark
        return
    if tags.get(f"{DEPLOY_TAG_PREFIX}status") != "serving" or tags.get(f"{DEPLOY_TAG_PREFIX}target", target) != target:
        return
    when = datetime.now(UTC).isoformat(timespec="seconds")
    _record(hook, name, replaced, {"status": "replaced", "replaced_by": by, "replaced_at": when})


def _record(hook: MlflowHook, name: str, version: str, values: dict[str, str]) -> None:
    for key, value in values.items():
        hook.client.set_model_version_tag(name, version, f"{DEPLOY_TAG_PREFIX}{key}", str(value))


def _record_trial(hook: MlflowHook, name: str, version: str, rollout: Rollout, figures: dict[str, Any] | None) -> None:
    """A canary's or shadow's verdict and figures as ``deploy.canary.*`` / ``deploy.shadow.*`` tags."""
    if not figures:
        return
    values = {key: value for key, value in figures.items() if value is not None}
    _record(hook, name, version, {f"{rollout.strategy}.{key}": str(value)[:4000] for key, value in values.items()})


def _restore_alias(hook: MlflowHook, name: str, alias: str, failed: str, serving: str) -> None:
    from asgard.registry.versions import alias_version

    current = alias_version(hook, name, alias)
    if current is not None and str(current.version) == str(failed):
        hook.client.set_registered_model_alias(name, alias, str(serving))
        log.warning("moved @%s of %s back from v%s to v%s, the version still serving", alias, name, failed, serving)
