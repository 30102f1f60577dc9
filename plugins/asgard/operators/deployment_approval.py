"""The approval task of ``deploy_model`` and deciding it through Airflow's REST API (HITL).

What a decision needs and who may make it are :mod:`asgard.deploy.approval`'s; this is the Airflow side:
the operator (Airflow's ``ApprovalOperator``, parked in "awaiting input" without a worker slot), what
started the version (its lineage and, for a drift retrain, the monitoring store's alerts), and the REST
helpers the main job and tests decide with.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowSkipException

from asgard.core.errors import InputError
from asgard.deploy.approval import (
    APPROVED,
    NO_ONE,
    NOT_DEPLOYED,
    REJECTED,
    Origin,
    approval_body,
    decision_refusal,
    duration_text,
    eligible_deciders,
    model_policy,
    model_team,
    record_decision,
    serving_version,
    superseded_by,
)
from asgard.training import retraining

if TYPE_CHECKING:
    from asgard.core.settings import Settings
    from asgard.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)


# The run waiting for a person's decision on the version, and the rollout its approval approves (JSON).
AWAITING_TAG = "deploy.awaiting"


def await_decision(hook: MlflowHook, model_name: str, version: str, run: str, rollout: dict[str, Any] | None) -> None:
    """Mark the version as the one ``run`` waits for a person's decision on, with the rollout plan its approval
    would approve: a platform tag, which no XCom changed while the run waits can move to another version."""
    value = json.dumps({"run": run, "rollout": rollout}, sort_keys=True)
    hook.client.set_model_version_tag(model_name, version, AWAITING_TAG, value)


def awaited_decision(hook: MlflowHook, model_name: str, version: str, run: str) -> dict[str, Any] | None:
    """The rollout plan of the decision ``run`` waits for on this version (:func:`await_decision`); an
    :class:`InputError` when the version is not the one it waits for (what the wait handed on was changed)."""
    tags = hook.client.get_model_version(model_name, version).tags or {}
    awaited = json.loads(tags[AWAITING_TAG]) if tags.get(AWAITING_TAG) else {}
    if awaited.get("run") != run:
        raise InputError(
            f"{model_name} v{version} is not the version {run} asked a person to decide on: refused (what the "
            "wait handed on was changed after it began)"
        )
    return awaited.get("rollout")


def version_origin(hook: MlflowHook, version: Any, settings: Settings) -> Origin:
    """What started ``version``: read from its lineage tags and the Airflow run that trained it."""
    from asgard.hooks.mlflow import AIRFLOW_DAG_ID_TAG, AIRFLOW_RUN_ID_TAG
    from asgard.registry.versions import FEATURE_VIEWS_TAG

    tags = dict(version.tags or {})
    dag_id, run_id = tags.get(AIRFLOW_DAG_ID_TAG), tags.get(AIRFLOW_RUN_ID_TAG)
    if not dag_id or not run_id:
        return Origin("registered", "registered by hand (no Airflow run trained it)")
    trained_by, run_type = _run_trigger(dag_id, run_id)
    requested_by = retraining.requested_by(run_id, version.name)
    if requested_by is not None:  # a retraining's run (a run named alike by someone is a person's)
        alerts = drift_alerts(settings, version.name, requested_by)
        if alerts:
            return Origin(
                "drift",
                f"a drift alert of monitor_model run {requested_by}: " + "; ".join(alerts),
                trained_by,
                dag_id,
                run_id,
            )
        views = tags.get(FEATURE_VIEWS_TAG) or "its feature views"
        return Origin(
            "new features", f"new features in {views} (retrain_model run {requested_by})", trained_by, dag_id, run_id
        )
    who = trained_by or "a person"
    how = "uploaded a script (train_script)" if dag_id == "train_script" else f"triggered {dag_id}"
    return Origin(
        "person", f"{who} {how}, run {run_id}" + (f" ({run_type})" if run_type else ""), trained_by, dag_id, run_id
    )


def _run_trigger(dag_id: str, run_id: str) -> tuple[str | None, str | None]:
    """Who triggered a DAG run and how, asked through the task's own Execution API (None outside a task)."""
    try:
        from airflow.sdk.execution_time.comms import _fetch_dag_run

        run = _fetch_dag_run(dag_id=dag_id, run_id=run_id)
    except Exception:  # not in a task, or the run is gone: the body says "a person"
        log.info("could not read run %s/%s", dag_id, run_id, exc_info=True)
        return None, None
    run_type = getattr(run, "run_type", None)
    return getattr(run, "triggering_user_name", None), str(getattr(run_type, "value", run_type) or "") or None


def drift_alerts(settings: Settings, model_name: str, monitor_run: str) -> list[str]:
    """The alerts (with their scores) a monitor_model run raised on ``model_name`` (its records name the run
    as ``monitor_model/<run id>``)."""
    import sqlalchemy as sa

    from asgard.monitoring.store import MonitoringStore, records_table

    try:
        store = MonitoringStore(settings.monitoring_db_url)
        query = sa.select(records_table.c.subject, records_table.c.metrics, records_table.c.alerts).where(
            records_table.c.model_name == model_name,
            records_table.c.source_run == f"monitor_model/{monitor_run}",
            records_table.c.alert_triggered.is_(True),
        )
        with store.engine.connect() as connection:
            rows = connection.execute(query).all()
    except Exception:  # the store unreachable: the body says a drift run started it, without scores
        log.warning("could not read the monitoring records of %s", monitor_run, exc_info=True)
        return []
    found = []
    for subject, metrics, alerts in rows:
        scores = ", ".join(f"{key} {value:.3f}" for key, value in (metrics or {}).items() if isinstance(value, float))
        found.append(
            f"{'; '.join(alerts or []) or subject} ({scores})" if scores else "; ".join(alerts or []) or subject
        )
    return found


# --------------------------------------------------------------------------- the approval task
class DeploymentApprovalOperator(ApprovalOperator):
    """Decide whether this ``deploy_model`` run deploys: by the model's policy, a hand trigger, or a person.

    Waits (Airflow's "awaiting input", no worker slot held) only when a person must decide; approve lets
    the build and rollout run, reject (or no decision in time) skips them and records the reason.
    """

    def __init__(self, *, request_task_id: str = "resolve_request", params: Any = None, **kwargs: Any) -> None:
        from airflow.sdk.definitions.param import ParamsDict

        # The DAG's own params arrive here too; the form shows only the task's (source "task").
        form = params if isinstance(params, ParamsDict) else ParamsDict(params or {})
        form["reason"] = Param(
            "",
            type="string",
            title="Reason",
            description="Why you approve or reject (recorded on the model version).",
            maxLength=2000,
            source="task",
        )
        # The wait is response_timeout's (set per model when the run waits), never the DAG's execution_timeout.
        kwargs["execution_timeout"] = None
        super().__init__(
            subject="Deploy a model version",
            # What a timeout (no decision) resolves to: a rejection, and no version changes.
            defaults=ApprovalOperator.REJECT,
            params=form,
            ignore_downstream_trigger_rules=True,
            **kwargs,
        )
        self.request_task_id = request_task_id

    def execute(self, context: Any) -> Any:
        from asgard.core.settings import get_settings
        from asgard.deploy.rollout import deployment_request
        from asgard.hooks.mlflow import MlflowHook
        from asgard.registry.ownership import recheck
        from asgard.registry.versions import resolve_model_version

        settings, hook = get_settings(), MlflowHook()
        ti, dag_run = context["ti"], context["dag_run"]
        # What is decided comes from the run's conf (or its Asset events) again: the request task's XCom can be
        # changed through the REST API after it ran, and one naming another model is refused here.
        request = deployment_request(context["params"], context.get("triggering_asset_events")).to_dict()
        name = request["model_name"]
        # The run's user may deploy only their teams' models (a promotion's run acts for the model's team).
        recheck(dag_run, name, ti.xcom_pull(task_ids=self.request_task_id) or {})
        # The model and the version (or alias) must exist: an error naming them fails the run here.
        number = resolve_model_version(hook, name, request.get("version"), request.get("alias")).version
        # The build deploys what was decided on, even if the alias moves while a person decides.
        ti.xcom_push(key="version", value=number)
        candidate = hook.client.get_model_version(name, number)
        policy = model_policy(hook, name, settings)
        run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
        by_promotion = run_type == "asset_triggered"
        run = f"{dag_run.dag_id}/{dag_run.run_id}"
        if policy.mode == "auto" and by_promotion:
            record_decision(
                hook,
                name,
                number,
                outcome=APPROVED,
                by="policy auto",
                policy=policy.mode,
                run=run,
                reason="the model's deployment policy is auto: a promotion deploys",
                rollout=request.get("rollout"),
            )
            return {"decision": APPROVED, "by": "policy auto"}
        if policy.mode == "manual" and by_promotion:
            record_decision(
                hook,
                name,
                number,
                outcome=NOT_DEPLOYED,
                by="policy manual",
                policy=policy.mode,
                run=run,
                reason="the model's deployment policy is manual: trigger deploy_model by hand to deploy",
            )
            raise AirflowSkipException(f"{name}'s deployment policy is manual: v{number} is not deployed")
        origin = version_origin(hook, candidate, settings)
        team = model_team(name, settings, hook)
        if not by_promotion:
            # A person who triggers deploy_model by hand asks for this deploy: their own approval, when they
            # may decide (auto: anyone who may trigger it).
            user = getattr(dag_run, "triggering_user_name", None)
            refusal = decision_refusal(user, model_name=name, policy=policy, team=team, trained_by=origin.trained_by)
            if policy.mode == "auto" or refusal is None:
                record_decision(
                    hook,
                    name,
                    number,
                    outcome=APPROVED,
                    by=user or "a hand trigger",
                    policy=policy.mode,
                    run=run,
                    reason="triggered deploy_model by hand",
                    rollout=request.get("rollout"),
                )
                return {"decision": APPROVED, "by": user}
            log.info("%s's hand trigger is not an approval (%s): waiting for one who may decide", user, refusal)
        deciders = eligible_deciders(name, policy, team, origin.trained_by)
        serving = serving_version(hook, name, request.get("target") or "docker")
        from airflow.providers.common.compat.sdk import conf

        airflow_url = conf.get("api", "base_url", fallback=None) or settings.airflow_url
        self.subject = f"Deploy {name} v{number}?" + (f" (v{serving.version} serves now)" if serving else "")
        self.body = approval_body(
            hook, candidate, serving, origin, request, policy, deciders=deciders, airflow_url=airflow_url
        )
        self.assigned_users = [{"id": user, "name": user} for user in deciders] or [NO_ONE]
        self.response_timeout = timedelta(seconds=policy.timeout_seconds)
        await_decision(hook, name, number, run, request.get("rollout"))
        ti.xcom_push(
            key="approval",
            value={
                "model_name": name,
                "version": number,
                "policy": policy.to_dict(),
                "trained_by": origin.trained_by,
                "deciders": deciders,
                "by_promotion": by_promotion,
                "rollout": request.get("rollout"),  # the plan the body shows: what an approval approves
            },
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from asgard.core.settings import get_settings
        from asgard.deploy.rollout import deployment_request
        from asgard.hooks.mlflow import MlflowHook
        from asgard.registry.ownership import recheck

        ti, dag_run = context["ti"], context["dag_run"]
        settings, hook, run = get_settings(), MlflowHook(), f"{dag_run.dag_id}/{dag_run.run_id}"
        # What the wait handed on (its XCom) can be changed through the REST API while it waits: the model
        # comes from the run's conf (or events) again, and who trained the version and the model's policy
        # (who may decide) are read again. Only the version decided on is the XCom's (the alias may move while
        # a person decides), and it must be one of that model's.
        waiting = ti.xcom_pull(task_ids=self.task_id, key="approval") or {}
        name = deployment_request(context["params"], context.get("triggering_asset_events")).model_name
        recheck(dag_run, name, waiting)
        number = str(hook.client.get_model_version(name, str(waiting.get("version"))).version)
        rollout = awaited_decision(hook, name, number, run)  # the version this run waits on, or refused
        policy = model_policy(hook, name, settings)
        trained_by = version_origin(hook, hook.client.get_model_version(name, number), settings).trained_by
        user = (event.get("responded_by_user") or {}).get("name") if "error" not in event else None
        reason = str((event.get("params_input") or {}).get("reason") or "").strip()
        chosen = (event.get("chosen_options") or [self.REJECT])[0] if "error" not in event else self.REJECT
        if event.get("timedout") or "error" in event or user is None:
            self._reject(context, hook, name, number, "timeout", policy.mode, run,
                         f"no decision in {duration_text(policy.timeout_seconds)}")  # fmt: skip
            return {"decision": REJECTED, "by": None}
        team = model_team(name, settings, hook)
        refusal = decision_refusal(user, model_name=name, policy=policy, team=team, trained_by=trained_by)
        if chosen == self.APPROVE and refusal is not None:
            # Airflow refuses users outside the assigned ones; this holds when its check is off (all admins).
            self._reject(context, hook, name, number, user, policy.mode, run, f"approval refused: {refusal}")
            return {"decision": REJECTED, "by": user}
        by_promotion = str(getattr(dag_run.run_type, "value", dag_run.run_type)) == "asset_triggered"
        newer = superseded_by(hook, name, number) if by_promotion else None
        if chosen == self.APPROVE and newer is not None:
            # Approved late: a newer version was promoted meanwhile. Deploying this one would put the older
            # version back over it; the newer one's own run asks for its decision.
            why = f"superseded: v{newer} was promoted since (its own deploy_model run decides it)"
            self._reject(context, hook, name, number, user, policy.mode, run, why)
            return {"decision": REJECTED, "by": user, "superseded_by": newer}
        outcome = APPROVED if chosen == self.APPROVE else REJECTED
        record_decision(
            hook,
            name,
            number,
            outcome=outcome,
            by=user,
            policy=policy.mode,
            run=run,
            reason=reason or ("approved" if outcome == APPROVED else "rejected, no reason given"),
            rollout=rollout if outcome == APPROVED else None,
        )
        super().execute_complete(context, event)  # a rejection skips the build and rollout
        return {"decision": outcome, "by": user, "reason": reason}

    def _reject(
        self, context: Any, hook: Any, name: str, number: str, by: str, policy: str, run: str, reason: str
    ) -> None:
        """Record a rejection on the version and skip the build and rollout."""
        record_decision(hook, name, number, outcome=REJECTED, by=by, policy=policy, run=run, reason=reason)
        self._skip_deploy(context)

    def _skip_deploy(self, context: Any) -> None:
        tasks = [task for task in context["task"].get_flat_relatives(upstream=False) if not task.is_teardown]
        if tasks:
            self.skip(ti=context["ti"], tasks=tasks)
