"""The main job's deploy decisions through the REST API: a model's deployment policy (``/mlops``) and
the drift retrain's approval (Airflow's HITL API), as a person of the model's team gives it."""

from __future__ import annotations

from typing import Any

import httpx

from asgard.core.settings import Settings
from asgard.hooks.airflow_api import AirflowApi
from asgard.local.examples import CHURN_MODEL_REQUEST
from asgard.local.live_traffic import LiveTraffic, predict
from asgard.local.stages import MainJobError
from sample_data.models import SEED_PREDICTION


def set_deploy_policy(
    settings: Settings, api: AirflowApi, model_name: str, policy: str | None, rollout: dict[str, Any] | None = None
) -> None:
    """The model's deployment policy through ``/mlops`` (None: the platform's setting again), and how its
    promotions roll out (None: the platform's promotion strategy)."""
    answer = httpx.put(
        f"{settings.airflow_url}/mlops/models/{model_name}/deploy-policy",
        json={"policy": policy, "rollout": rollout},
        headers={"Authorization": f"Bearer {api.token}"},
        timeout=60,
    )
    if answer.status_code != 200:
        raise MainJobError(f"setting {model_name}'s deploy policy answered {answer.status_code}: {answer.text}")
    chosen = answer.json()
    strategy = chosen["rollout"]["strategy"]
    print(f"    {model_name}: deploy policy {chosen['policy']} ({chosen['source']}), promotions {strategy}", flush=True)


def approve_drift_deploy(
    settings: Settings, api: AirflowApi, training_run: str, decision: dict[str, Any], in_ui: bool = False
) -> str:
    """The drift retrain's promotion waits in deploy_model's approval: approve it through Airflow's HITL
    REST API as the admin (of the model's team), or (``in_ui``) wait for a person to decide it in the
    Airflow UI, and follow the rollout (a canary, the promotion strategy's default) to its decision, with
    callers of the endpoint meanwhile; what serves then."""
    from asgard.hooks import airflow_hitl as approval
    from asgard.registry.models import model_asset_uri

    name = CHURN_MODEL_REQUEST["model_name"]
    if not decision["promoted"]:
        return f"the drift retrain v{decision['version']} was not promoted ({decision['reason']}): nothing to approve"
    run_id = api.run_started_by(model_asset_uri(name), training_run, "deploy_model", within=300)
    pending = approval.pending_approval(settings.airflow_url, api.token, run_id, timeout=600)
    print(f"    deploy_model {run_id} waits: {pending['subject']}", flush=True)
    reason = f"drift retrain v{decision['version']} approved by the main job ({decision['reason']})"
    if in_ui:
        link = f"{settings.airflow_url}{approval.decision_link(run_id)}"
        print(f"    waiting for a person to decide {pending['subject']!r} in the Airflow UI: {link}", flush=True)
        _wait_for_the_decision(api, run_id, timeout=1800)
    else:
        approval.respond(settings.airflow_url, api.token, run_id, approve=True, reason=reason)
    # Callers only once it is decided: the rollout meets them; a wait for a person sends the model nothing.
    with LiveTraffic(f"{settings.router_url}/models/{name}/predict") as traffic:
        outcome = api.wait_for_run("deploy_model", run_id, timeout=1800)
    if outcome.state != "success":
        raise MainJobError(f"deploy_model run {run_id} ended {outcome.state}: {outcome.failure}")
    decided = _decision(settings, name, str(decision["version"]))
    who = decided.get("by")
    if outcome.task_states.get("deploy_image") != "success":
        return (
            f"the drift retrain v{decision['version']} was {decided.get('outcome')} by {who}: {decided.get('reason')}"
        )
    deployed = api.task_result("deploy_model", run_id, "deploy_image")
    served = predict(deployed["endpoint"], SEED_PREDICTION)
    trial = deployed.get("trial") or {}
    rollout = (
        f"{deployed['strategy']} of {trial.get('percent')}% {trial.get('decision')} after {trial.get('requests')} "
        f"requests, {trial.get('errors')} errors; callers saw {traffic.summary()}"
        if trial
        else f"{deployed['strategy']}"
    )
    return (
        f"{name} v{served['model_version']} serves at {deployed['endpoint']} "
        f"(drift retrain v{decision['version']}, approved by {who} in deploy_model {run_id}; "
        f"replaced v{deployed['previous_version']}; {rollout})"
    )


def _decision(settings: Settings, model_name: str, version: str) -> dict[str, str]:
    """The decision recorded on the version (who, when, why: ``asgard.deploy.approval``)."""
    from mlflow import MlflowClient

    from asgard.deploy.approval import version_decision

    tags = MlflowClient(settings.mlflow_url, settings.mlflow_url).get_model_version(model_name, version).tags
    return version_decision(tags) or {}


def _wait_for_the_decision(api: AirflowApi, run_id: str, *, timeout: float) -> None:
    """Until deploy_model's approval task no longer waits for a person (MainJobError after ``timeout`` s)."""
    import time

    from asgard.hooks.airflow_hitl import APPROVAL_TASK

    deadline = time.monotonic() + timeout
    waiting = ("pending", "scheduled", "queued", "running", "deferred", "awaiting_input", "up_for_retry")
    while api.task_states("deploy_model", run_id).get(APPROVAL_TASK, "pending") in waiting:
        if time.monotonic() > deadline:
            raise MainJobError(f"no one decided deploy_model {run_id} in the Airflow UI within {timeout:.0f}s")
        time.sleep(2.0)


def earlier_version(settings: Settings, name: str) -> str:
    """The newest version of ``name`` that the champion alias does not name."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_url)
    champion = client.get_model_version_by_alias(name, "champion").version
    versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
    earlier = [version for version in versions if str(version) != str(champion)]
    if not earlier:
        raise MainJobError(f"{name} has no version besides the champion v{champion} to serve before it")
    return str(max(earlier))
