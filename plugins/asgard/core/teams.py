"""Who acts, and for which teams: Airflow's own teams (``[core] multi_team``) as its auth manager knows them.

A platform team runs one Airflow for many ML teams. Users belong to teams in the auth manager (the
simple auth manager's ``user:role:team1|team2``); a model belongs to the team that first registered it
(:mod:`asgard.registry.ownership`). Everything acting on a model asks :meth:`Actor.may_act_for`.

- An API call acts as its caller (Airflow's JWT). A DAG run acts as the user who triggered it:
  Airflow's own ``DagRun.triggering_user_name``, which the conf cannot set.
- A run an Asset, a schedule or a backfill started has no person behind it: it acts for the model's
  team (a drift retrain, a promotion's deployment, the daily monitoring).
- Admins act for every team. A user the directory does not know belongs to no team.

The directory is the simple auth manager's user list when Airflow uses it (the same list its JWTs are
issued from, readable on every worker); with another auth manager, the ``team_members`` setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError

if TYPE_CHECKING:
    from asgard.core.settings import Settings

ADMIN_ROLE = "admin"
VIEWER_ROLE = "viewer"
# Airflow's run types that a person starts; the others (asset_triggered, scheduled, backfill) act for the model.
PERSON_RUN_TYPES = ("manual",)


class TeamRefusal(InputError):
    """The acting user may not act on this model: not in its team. Retrying cannot help."""


@dataclass(frozen=True)
class Member:
    name: str
    teams: frozenset[str]
    admin: bool
    # Airflow's role, where the auth manager says it (the simple one): a viewer acts on nothing.
    role: str = ""

    @property
    def reads_only(self) -> bool:
        return self.role == VIEWER_ROLE


@dataclass(frozen=True)
class Actor:
    """Who a request or a DAG run acts as."""

    name: str
    teams: frozenset[str]
    admin: bool = False
    # A run no person started (Asset, schedule): it acts for whichever team owns the model it concerns.
    for_the_model: bool = False

    def may_act_for(self, team: str) -> bool:
        return self.admin or self.for_the_model or team in self.teams

    def describe(self) -> str:
        if self.for_the_model:
            return f"{self.name} (acting for the model's team)"
        if self.admin:
            return f"{self.name} (admin)"
        teams = ", ".join(sorted(self.teams)) or "none"
        return f"{self.name} (teams: {teams})"

    def team_for_new_model(self, requested: str | None, settings: Settings) -> str:
        """The team a model this actor registers first belongs to: ``requested`` when given (one of the
        actor's), else the actor's only team; an admin (or a run acting for a model) without one, the
        default team."""
        if requested:
            if not (self.admin or requested in self.teams):
                raise TeamRefusal(f"{self.describe()} is not a member of team {requested!r}")
            return requested
        if len(self.teams) == 1:
            return next(iter(self.teams))
        if not self.teams:
            if self.admin or self.for_the_model:
                return settings.default_team
            raise TeamRefusal(f"{self.describe()} belongs to no team: a model of theirs would have no owner")
        raise TeamRefusal(
            f"{self.describe()} belongs to several teams: name the new model's team in the request ('team')"
        )


def directory(settings: Settings) -> dict[str, Member]:
    """Every user the platform knows, with their teams: the auth manager's own list where it has one."""
    from airflow.providers.common.compat.sdk import conf

    members: dict[str, Member] = {}
    if "SimpleAuthManager" in (conf.get("core", "auth_manager", fallback="") or "SimpleAuthManager"):
        members.update(_simple_auth_manager_users(conf.get("core", "simple_auth_manager_users", fallback="") or ""))
    members.update(parse_team_members(settings.team_members))
    return members


def _simple_auth_manager_users(users: str) -> dict[str, Member]:
    # The simple auth manager's own format, "user:role[:team1|team2]" (its get_users() refuses teams
    # unless multi_team is on: read the text so a worker without that flag still knows the teams).
    members = {}
    for entry in users.split(","):
        name, _, rest = entry.strip().partition(":")
        role, _, teams = rest.partition(":")
        if name:
            members[name] = Member(name, _team_set(teams), role.strip().lower() == ADMIN_ROLE, role.strip().lower())
    return members


def parse_team_members(text: str) -> dict[str, Member]:
    """The ``team_members`` setting: ``"alice=a;bob=b|c;root=*"`` (``*``: an admin). Bad entries are an
    error naming them, at start-up, not a silent stranger."""
    members = {}
    for entry in (item.strip() for item in text.split(";")):
        if not entry:
            continue
        name, sep, teams = entry.partition("=")
        if not sep or not name.strip() or not teams.strip():
            raise ValueError(f"team_members entry {entry!r} is not 'user=team1|team2' (or 'user=*' for an admin)")
        admin = teams.strip() == "*"
        members[name.strip()] = Member(name.strip(), frozenset() if admin else _team_set(teams), admin)
    return members


def _team_set(text: str) -> frozenset[str]:
    return frozenset(team.strip() for team in text.split("|") if team.strip())


def user_actor(name: str | None, settings: Settings) -> Actor:
    """The actor a user name stands for (no name, or one the directory does not know: no team)."""
    member = directory(settings).get(name or "")
    if member is None:
        return Actor(name or "an unnamed user", frozenset())
    return Actor(member.name, member.teams, member.admin)


def run_actor(dag_run: Any, settings: Settings) -> Actor:
    """Who a DAG run acts as: the user who triggered it (Airflow keeps the name through runs a
    TriggerDagRunOperator starts), or, for a run no person started (an Asset, a schedule), the model's team.

    A manual run with no user name (``airflow dags trigger`` on a scheduler host) has no team: only
    the REST API and the UI say who asked.
    """
    user = getattr(dag_run, "triggering_user_name", None)
    if user:
        return user_actor(user, settings)
    run_type = str(getattr(dag_run, "run_type", "") or "").lower().rsplit(".", 1)[-1]
    if run_type in PERSON_RUN_TYPES:
        return Actor("an unnamed user", frozenset())
    return Actor(f"a {run_type or 'system'} run", frozenset(), for_the_model=True)


def visible(actor: Actor, teams_by_name: Mapping[str, str]) -> list[str]:
    """The names (of models) among ``teams_by_name`` whose team the actor may act for, in order."""
    return [name for name, team in teams_by_name.items() if actor.may_act_for(team)]
