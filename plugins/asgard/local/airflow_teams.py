"""Airflow's database holds every team the auth manager names: with ``[core] multi_team`` on, Airflow
refuses to start while its users name a team the ``team`` table lacks.

Run as ``python -m asgard.local.airflow_teams [TEAM...]`` in the Airflow components' environment
before they start (no team named: every team its auth manager's users name, and the default team):
it creates (or brings up to date) the metadata database, as ``airflow standalone`` and ``airflow db
migrate`` would (a no-op when it is), then adds the teams it lacks. Teams are never removed here: a
team's Variables and Connections stay with it. It also sizes the memory pool (asgard.core.memory_pool)
from this environment's settings, creating it when missing: a task whose pool is missing never runs.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any


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


def ensure_memory_pool() -> tuple[str, int]:
    """The memory pool, created or resized to the settings' budget: its name and slots."""
    from airflow.models.pool import Pool

    from asgard.core import memory_pool
    from asgard.core.settings import get_settings

    slots = memory_pool.pool_slots(get_settings())
    Pool.create_or_update_pool(memory_pool.MEMORY_POOL, slots, memory_pool.DESCRIPTION, include_deferred=False)
    return memory_pool.MEMORY_POOL, slots


def check_memory_pool(api: Any, settings: Any) -> str:
    """The memory pool as Airflow reports it (``api``: an :class:`~asgard.hooks.airflow_api.AirflowApi`):
    a line saying so, or an error when it is missing or smaller than the largest task's slots (such a
    task would wait for ever, with only a scheduler warning to say why)."""
    from airflow_client.client.exceptions import ApiException

    from asgard.core import memory_pool
    from asgard.local.stages import MainJobError

    try:
        pool = api.pools.get_pool(memory_pool.MEMORY_POOL)
    except ApiException as error:
        raise MainJobError(
            f"Airflow's pool {memory_pool.MEMORY_POOL!r} cannot be read ({error.status}): the tasks that take it "
            "would never run; `./asgard start` creates it"
        ) from None
    largest = memory_pool.largest_task_gb(settings)
    if pool.slots < largest:
        raise MainJobError(
            f"Airflow's pool {pool.name!r} has {pool.slots} slots, fewer than the {largest} GiB one task takes: "
            "that task would never run; raise ASGARD_TASK_MEMORY_GB and restart"
        )
    return f"memory pool {pool.name}: {pool.slots} slots (GiB) for the tasks that hold large frames"


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
    pool, slots = ensure_memory_pool()
    print(f"pool {pool}: {slots} slots (GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
