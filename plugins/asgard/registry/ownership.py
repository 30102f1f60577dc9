"""Which team a model belongs to, and the one check of whether an actor may act on it.

A model name belongs to the team that first registered it: the registered model's ``asgard.team``
tag, set in the same call that creates it (MLflow's create is atomic: of two teams registering one
name at once, one creates it and the other is refused). A model registered before teams existed has
no tag and belongs to the default team. The tag is reserved: only the platform sets it (the MLflow
door refuses scripts every registry write, and the /mlops API never takes tags).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.core.teams import Actor, TeamRefusal, run_actor, visible

if TYPE_CHECKING:
    from asgard.core.settings import Settings
    from asgard.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

TEAM_TAG = "asgard.team"
# A registered model's team is set in the call that creates it, and only the platform sets it: for reads
# (fresh=False), a found one is kept this long per process, so that every read the API server guards (a
# history, a page of runs) does not ask MLflow again. Writes ask MLflow each time: a model an operator
# deleted and another team registered again is the new team's at once.
KNOWN_TEAM_SECONDS = 60.0
_known_teams: dict[tuple[str, str], tuple[float, str]] = {}


def model_team(hook: MlflowHook, model_name: str, settings: Settings, *, fresh: bool = True) -> str | None:
    """The team ``model_name`` belongs to, or None when no such model is registered (a name no model
    can have, too: MLflow's refusal of it is no reason for a 500). ``fresh=False``: as known at most
    :data:`KNOWN_TEAM_SECONDS` ago (reads only)."""
    import time

    from mlflow.exceptions import MlflowException

    if not is_model_name(model_name):
        return None
    key, now = (hook.tracking_uri, model_name), time.monotonic()
    known = None if fresh else _known_teams.get(key)
    if known is not None and now - known[0] < KNOWN_TEAM_SECONDS:
        return known[1] or settings.default_team
    try:
        model = hook.client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            _known_teams.pop(key, None)
            return None
        raise
    tag = (model.tags or {}).get(TEAM_TAG) or ""  # none: registered before teams, the default team's
    if len(_known_teams) >= 10_000:  # names come from requests: bounded
        _known_teams.clear()
    _known_teams[key] = (now, tag)
    return tag or settings.default_team


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a model name as a whole (the Params' pattern ends in ``$``, which Python's re and
    jsonschema let match before a final newline: "churn\\n" would be a second, look-alike model)."""
    import re

    from asgard.core.param_schemas import MODEL_NAME_PATTERN

    return (
        isinstance(name, str) and re.fullmatch(MODEL_NAME_PATTERN.removeprefix("^").removesuffix("$"), name) is not None
    )


def refusal(actor: Actor, model_name: str, team: str) -> TeamRefusal:
    return TeamRefusal(f"{actor.describe()} may not act on model {model_name!r}: it belongs to team {team!r}")


def check_access(
    hook: MlflowHook,
    model_name: str,
    actor: Actor,
    settings: Settings,
    *,
    new_model_team: str | None = None,
    may_create: bool = False,
    fresh: bool = True,
) -> str | None:
    """The team ``actor`` acts for on ``model_name`` (a :class:`TeamRefusal` when they may not).

    An existing model: its team, if the actor may act for it. A name not yet registered: with
    ``may_create`` (training), the team the new model will belong to (``new_model_team`` or the
    actor's only team); without, None (the caller's own "no such model" error applies). ``fresh=False``
    for a read: the team as known a moment ago (:func:`model_team`).
    """
    if not is_model_name(model_name):
        raise InputError(f"{model_name!r} is not a model name (letters, digits, '_', '.', '-'; nothing after)")
    team = model_team(hook, model_name, settings, fresh=fresh)
    if team is None:
        return actor.team_for_new_model(new_model_team, settings) if may_create else None
    if not actor.may_act_for(team):
        raise refusal(actor, model_name, team)
    if new_model_team and new_model_team != team:
        raise TeamRefusal(f"model {model_name!r} belongs to team {team!r}, not {new_model_team!r}")
    return team


def claim(hook: MlflowHook, model_name: str, team: str, settings: Settings) -> bool:
    """Create ``model_name`` as ``team``'s (True), or check the existing one is ``team``'s (False).

    Called where a version is registered: whoever created the name between the run's first check and
    its registration wins it, and this run is refused.
    """
    from mlflow.exceptions import MlflowException

    try:
        hook.client.create_registered_model(model_name, tags={TEAM_TAG: team})
        return True
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    owner = model_team(hook, model_name, settings)
    if owner != team:
        raise TeamRefusal(f"model {model_name!r} belongs to team {owner!r}: team {team!r} may not register into it")
    return False


def teams_of_models(hook: MlflowHook, names: list[str], settings: Settings) -> dict[str, str]:
    """Each named (registered) model's team, in the order given."""
    teams = {}
    for name in names:
        team = model_team(hook, name, settings)
        if team is not None:
            teams[name] = team
    return teams


def run_access(
    dag_run: Any,
    model_name: str,
    *,
    may_create: bool = False,
    new_model_team: str | None = None,
    hook: MlflowHook | None = None,
    settings: Settings | None = None,
) -> str | None:
    """:func:`check_access` for the user a DAG run acts as (:func:`asgard.core.teams.run_actor`): the
    first thing a job's first task does, so a refused run fails at once, naming the model and its team."""
    from asgard.core.settings import get_settings
    from asgard.hooks.mlflow import MlflowHook

    settings = settings or get_settings()
    actor = run_actor(dag_run, settings)
    team = check_access(
        hook or MlflowHook(), model_name, actor, settings, new_model_team=new_model_team, may_create=may_create
    )
    log.info("%s acts on model %r of team %s", actor.describe(), model_name, team or "(not registered)")
    return team


def models_for_run(dag_run: Any, model_names: list[str], *, hook: MlflowHook | None = None) -> list[str]:
    """Of ``model_names``, those the run's user may act on (all for a scheduled run): what a run that
    names no model (the daily monitoring) covers when a person starts it."""
    from asgard.core.settings import get_settings
    from asgard.hooks.mlflow import MlflowHook

    settings = get_settings()
    actor = run_actor(dag_run, settings)
    teams = teams_of_models(hook or MlflowHook(), list(dict.fromkeys(model_names)), settings)
    allowed = set(visible(actor, teams))
    left_out = sorted(set(model_names) - allowed)
    if left_out:
        log.info("%s: left out, not of its teams: %s", actor.describe(), ", ".join(left_out))
    return [name for name in model_names if name in allowed]


def recheck(
    dag_run: Any,
    model_name: str,
    handed: dict[str, Any],
    *,
    may_create: bool = False,
    new_model_team: str | None = None,
) -> str | None:
    """The ownership check again, in a task that acts on what an earlier task handed it (``handed``: its
    XCom, with ``model_name`` and maybe ``team``).

    A task's XCom, and whether a task ran at all, can be changed through Airflow's REST API by users who
    may edit the job DAGs' runs: a later task never trusts the first task's check. It derives the model
    from what cannot change after the trigger (``model_name``: the run's conf, or its Asset event), asks
    again whether the run's user may act on it, and refuses a hand-off naming another model or team.
    """
    if handed.get("model_name") != model_name:
        raise TeamRefusal(
            f"this run is for model {model_name!r}, but what its earlier task handed on names "
            f"{handed.get('model_name')!r}: refused (a task's output was changed after it ran)"
        )
    team = run_access(dag_run, model_name, may_create=may_create, new_model_team=new_model_team)
    if "team" in handed and team is not None and handed["team"] != team:
        raise TeamRefusal(f"model {model_name!r} is team {team!r}'s, not {handed['team']!r} as handed on: refused")
    return team
