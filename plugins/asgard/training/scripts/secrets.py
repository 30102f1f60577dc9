"""Secrets a script reads: references to Airflow Variables and Connections its model's team owns.

A ``train_script`` conf never carries a secret's value: the conf is stored with the run and shown to
whoever reads it (the UI, the REST API). ``secret_env_vars`` names instead, per environment variable,
an Airflow Variable (``"variable:<team>.<key>"``) or Connection (``"connection:<team>.<id>"``, as its
URI). The platform's operators create them (in Airflow, Variables and Connections are theirs to write,
not a user's); the ``<team>.`` prefix is what makes one a team's: a run may name only those of the
team its model belongs to. The values are read in the task that runs the script, registered with
Airflow's secrets masker (a script that prints one shows ``***`` in the task log), and handed to the
script's environment only. The conf, the logs and XCom carry the names.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from asgard.core.errors import InputError

log = logging.getLogger(__name__)

REFERENCE = re.compile(r"^(variable|connection):([A-Za-z0-9_-]{3,50})\.([A-Za-z0-9_.-]{1,200})$")
# The form's schema for one reference (the Param checks the shape; the team is checked in the task).
REFERENCE_PATTERN = REFERENCE.pattern


class SecretReferenceError(InputError):
    """A secret reference the run may not use, or one that names nothing."""


def checked_references(references: dict[str, str], team: str) -> dict[str, tuple[str, str]]:
    """Each environment variable's (kind, name), if every reference is well-formed and ``team``'s."""
    checked, foreign = {}, []
    for variable, reference in sorted(references.items()):
        match = REFERENCE.match(str(reference))
        if match is None:
            raise SecretReferenceError(
                f"secret_env_vars[{variable}] is not 'variable:<team>.<key>' or 'connection:<team>.<id>'"
            )
        kind, owner, _ = match.groups()
        if owner != team:
            foreign.append(f"{variable} ({reference})")
        checked[variable] = (kind, reference.split(":", 1)[1])
    if foreign:
        raise SecretReferenceError(
            f"secret_env_vars may name only team {team!r}'s Variables and Connections ('{team}.' names): "
            f"{', '.join(foreign)}"
        )
    return checked


def resolve(references: dict[str, str], team: str) -> dict[str, str]:
    """The values of ``references`` (checked for ``team``), masked in every log from now on."""
    from airflow.sdk import Connection, Variable
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError
    from airflow.sdk.log import mask_secret

    values, missing = {}, []
    for variable, (kind, name) in checked_references(references, team).items():
        try:
            value: Any = Variable.get(name, default=None) if kind == "variable" else Connection.get(name).get_uri()
        except (AirflowNotFoundException, AirflowRuntimeError):
            value = None
        if value is None:
            missing.append(f"{kind} {name!r} (for {variable})")
            continue
        mask_secret(value, name)
        values[variable] = str(value)
    if missing:
        raise SecretReferenceError(f"secret_env_vars name what does not exist: {', '.join(missing)}")
    if values:
        log.info("secrets given to the script (values hidden): %s", ", ".join(sorted(values)))
    return values
