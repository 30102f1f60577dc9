"""The /mlops side of teams: a caller acts on their teams' models only (admins on all).

Airflow's auth manager says whether a caller may start or read a job DAG's runs at all
(:mod:`asgard.api.security`); this says whether the model a request names is one of the caller's
teams'. A refusal is a 403 naming the model and its team; the job's own first task checks again,
for runs started from the UI or Airflow's REST API directly.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, status

from asgard.core.teams import Actor, TeamRefusal, user_actor

if TYPE_CHECKING:
    from asgard.api.security import Caller
    from asgard.hooks.mlflow import MlflowHook

# The job DAGs whose runs act on one model (its conf's model_name), or, without one, on every model.
MODEL_DAGS = ("train_model", "train_script", "score_batch", "monitor_model", "deploy_model", "retrain_model")


@functools.cache
def platform_mlflow() -> MlflowHook:
    """The API server's MLflow hook: its connection looked up once per process, not per request."""
    from asgard.hooks.mlflow import MlflowHook

    return MlflowHook()


def caller_actor(who: Caller) -> Actor:
    from asgard.core.settings import get_settings

    return user_actor(who.name, get_settings())


def forbidden(error: TeamRefusal) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail=str(error))


def guard_model(
    who: Caller, model_name: str, *, may_create: bool = False, team: str | None = None, reading: bool = False
) -> str | None:
    """The team ``who`` acts for on ``model_name`` (403 when not theirs); see
    :func:`asgard.registry.ownership.check_access` (``reading``: for a read, as known a moment ago)."""
    from asgard.core.settings import get_settings
    from asgard.registry.ownership import check_access

    try:
        return check_access(
            platform_mlflow(),
            model_name,
            caller_actor(who),
            get_settings(),
            new_model_team=team,
            may_create=may_create,
            fresh=not reading,
        )
    except TeamRefusal as error:
        raise forbidden(error) from None


def guard_run(who: Caller, dag_id: str, run_id: str) -> None:
    """403 unless ``who`` may read the run: the model its conf names is one of the caller's teams'. A run
    that names no model (the daily monitoring of every served model) is the platform's: admins only.

    The conf is read from Airflow's database: the caller's own read through the API would meet the run
    guard's refusal (:mod:`asgard.api.run_reads`) before this one, which names the model and its team."""
    from asgard.api.jobs import JobNotFoundError
    from asgard.api.run_subjects import stored_subject

    if dag_id not in MODEL_DAGS:  # feature jobs: the feature store is shared by every team
        return
    subject = stored_subject(dag_id, run_id)
    if subject is None:
        raise JobNotFoundError(f"run {run_id!r} of {dag_id} does not exist")
    model_name = subject["conf"].get("model_name")
    # A run a promotion started names its model in the Asset event, not in a conf.
    models = [model_name] if isinstance(model_name, str) and model_name else subject["read_models"]
    for model in models:
        guard_model(who, model, reading=True)
    if not models and not caller_actor(who).admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"run {run_id!r} of {dag_id} names no model: it concerns every team's models (admins only)",
        )


def visible_models(who: Caller, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The models (each with its ``team``) of the caller's teams; every model for an admin."""
    actor = caller_actor(who)
    return [model for model in models if actor.may_act_for(model["team"])]
