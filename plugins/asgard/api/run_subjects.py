"""What a run of Airflow's acts on and for whom, read from Airflow's database: the run guard's and the run
reads' subject (the guard runs inside the API server; a request to the API would pass through it again)."""

from __future__ import annotations

from typing import Any

DEPLOY_DAG = "deploy_model"  # a promotion's run of it deploys one model, whatever else its events carry


def stored_subject(dag_id: str, run_id: str) -> dict[str, Any] | None:
    """What a run acts on and for whom, from Airflow's database (the guard runs inside the API server; a
    request to the API would pass through the guard again): its conf, its user and the models its Asset
    events name. None: no such run."""
    return stored_subjects([(dag_id, run_id)]).get((dag_id, run_id))


def stored_subjects(runs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """:func:`stored_subject` of each of ``runs`` (DAG id, run id) that exists, in one query."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select, tuple_
    from sqlalchemy.orm import selectinload

    if not runs:
        return {}
    with create_session() as session:
        found = session.scalars(
            select(DagRun)
            .where(tuple_(DagRun.dag_id, DagRun.run_id).in_(runs))
            .options(selectinload(DagRun.consumed_asset_events))
        ).all()
        subjects = {}
        for run in found:
            subjects[(run.dag_id, run.run_id)] = {
                "conf": dict(run.conf) if isinstance(run.conf, dict) else {},
                "user": run.triggering_user_name,
                "event_models": named_models(run.consumed_asset_events),
                "read_models": read_models(run.dag_id, run.consumed_asset_events),
            }
        return subjects


def named_models(events: Any) -> list[str]:
    """Every model a run's Asset ``events`` name: whose teams must all allow a change of the run."""
    return [name for event in events if isinstance(name := (event.extra or {}).get("model_name"), str)]


def read_models(dag_id: str, events: Any) -> list[str]:
    """The models whose team may read a run started by Asset ``events``: a promotion's ``deploy_model`` run's
    is the one it deploys (the others it carries are handed on to runs of their own, which their teams read and
    decide), so that team reads its own approval; any other run's, every model its events name. A change of a
    run carrying several teams' promotions stays every one's (:func:`named_models`): one team must not drop
    or re-announce another's promotion."""
    if dag_id == DEPLOY_DAG:
        from asgard.deploy.rollout import deployed_promotion

        deployed = deployed_promotion({"events": list(events)})
        return [deployed.extra["model_name"]] if deployed is not None else []
    return named_models(events)
