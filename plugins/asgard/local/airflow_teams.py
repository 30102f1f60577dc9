"""Airflow's database holds every team the auth manager names: with ``[core] multi_team`` on, Airflow
refuses to start while its users name a team the ``team`` table lacks.

Run as ``python -m asgard.local.airflow_teams [TEAM...]`` in the Airflow components' environment
before they start (no team named: every team its auth manager's users name, and the default team):
it creates (or brings up to date) the metadata database, as ``airflow standalone`` and ``airflow db
migrate`` would (a no-op when it is), then adds the teams it lacks. Teams are never removed here: a
team's Variables and Connections stay with it.
"""

from __future__ import annotations

import subprocess
import sys


def ensure_teams(names: list[str], *, migrate: bool) -> list[str]:
    """The teams added (those of ``names`` the database lacked)."""
    from airflow.models.team import Team
    from airflow.utils import db
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if migrate:
        db.initdb()
    with create_session() as session:
        present = set(session.scalars(select(Team.name)))
        added = sorted(set(names) - present)
        session.add_all(Team(name=name) for name in added)
    return added


def teams_named(users: list[str], default_team: str) -> list[str]:
    """Every team the simple auth manager's ``user:role:team1|team2`` entries name, and the default team."""
    named = {default_team}
    for entry in users:
        teams = entry.split(":")[2:3]
        named.update(team for listed in teams for team in listed.split("|") if team)
    return sorted(named)


def teams_in_environment() -> list[str]:
    """The teams the environment's simple auth manager users and ``ASGARD_DEFAULT_TEAM`` name."""
    import os

    users = [entry for entry in os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "").split(",") if entry]
    return teams_named(users, os.environ.get("ASGARD_DEFAULT_TEAM") or "default")


def sync_in_subprocess(teams: list[str], environment: dict[str, str]) -> None:
    """:func:`ensure_teams` in a process of the Airflow components' ``environment`` (Airflow reads its
    configuration once, at import: the caller's own may be another installation's)."""
    from asgard.local.processes import ServiceError
    from asgard.local.services import venv_bin

    result = subprocess.run(
        [str(venv_bin() / "python"), "-m", "asgard.local.airflow_teams", *teams],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise ServiceError(f"Airflow's database and teams: failed\n{(result.stdout + result.stderr)[-3000:]}")


def main(argv: list[str]) -> int:
    migrate = "--no-migrate" not in argv
    # No team named: those of the auth manager's users in this environment (compose's airflow-init).
    names = [name for name in argv if not name.startswith("--")] or teams_in_environment()
    added = ensure_teams(names, migrate=migrate)
    print(f"teams added: {', '.join(added) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
