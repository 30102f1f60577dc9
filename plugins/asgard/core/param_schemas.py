"""JSON-schema pieces shared by the DAGs' Params: one definition of each kind of value a conf carries,
and ``field``, which gives each Param what the trigger form shows."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param
from airflow.sdk.definitions.param import NOTSET

# A feature view, column, table or entity name.
# (The lookahead: Python's "$" also matches before a final newline, and a name's SQL would read past it.)
IDENTIFIER = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*(?!\n)$", "maxLength": 128}
# One value of an entity column.
# Environment variable names a user's script may not be given: the platform's own, every family that
# carries secrets, and those that change how programs load or find code (the loader's, Python's, the
# shells' and libc's). The Param refuses them (a 400); the runner again, whatever the conf's way in.
RESERVED_ENV_PATTERN = (
    "^(AIRFLOW|AWS_|ASGARD_|MLFLOW_|AZURE_|GOOGLE_|GCP_|KUBE|PG|REDIS|DATABASE|SQL"
    "|LD_|PYTHON|GCONV_PATH$|LOCPATH$|NLSPATH$|HOSTALIASES$|RESOLV_|BASH_ENV$|ENV$|SHELLOPTS$|IFS$"
    "|PATH$|HOME$|TMPDIR$|USER$|LANG$|EXPERIMENT_NAME$|MODEL_NAME$|USE_FEAST$|FEAST_|FEATURE_VIEW_NAME$)"
)

SCALAR = {"type": ["string", "integer", "number", "boolean"]}
# MLflow registered model names as the platform accepts them (also image tags and URL path segments).
MODEL_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# An MLflow alias (no "latest"-style digits first: MLflow reserves version-like aliases).
ALIAS_PATTERN = "^[A-Za-z][A-Za-z0-9_-]{0,254}$"
# A model version number, as a string or an integer; null when an alias names it.
VERSION = {"type": ["null", "string", "integer"], "pattern": "^[0-9]+$", "minimum": 1}
# "format" draws the UI's date picker; Airflow does not enforce formats, so the pattern does.
TIMESTAMP = {
    "type": ["null", "string"],
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$",
}
# A pip requirement: a name with extras and version specifiers, never a pip option ("-e", "--index-url").
REQUIREMENT = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-\\[\\], <>=!~*]*$", "maxLength": 200}


def plain_requirements(lines: list[str], source: str) -> list[str]:
    """The requirements of an untrusted file (a model's ``requirements.txt``) held to the ``requirements``
    Param's own rule, comments and blank lines left out; a URL (``x @ https://…``), a path or a pip option
    is refused, naming the line and ``source``."""
    import re

    from asgard.core.errors import InputError

    pattern = re.compile(REQUIREMENT["pattern"])
    kept = []
    for line in lines:
        requirement = line.split("#", 1)[0].strip()
        if not requirement:
            continue
        if len(requirement) > REQUIREMENT["maxLength"] or not pattern.match(requirement):
            raise InputError(
                f"{source} has a line that is not a plain requirement (a name, extras and version "
                f"specifiers; no URL, path or pip option): {requirement[:120]!r}"
            )
        kept.append(requirement)
    return kept


# train_model's retraining policy: retrain the version, while it is @champion, when one of its
# feature views is materialized again (at most once per interval). See asgard.training.retraining.
RETRAINING_POLICY = {
    "type": "object",
    "properties": {"on_new_features": {"type": "boolean"}, "min_interval_hours": {"type": "number", "minimum": 0}},
    "additionalProperties": False,
}


def promotion(metric_names: list[str] | None = None, *, script: bool = False) -> dict:
    """The champion gate's policy (``promotion``): the metric to compare (one of ``metric_names`` when
    given) and by how much a challenger must beat the champion on it; for a script's model, whether
    the metric the script reports about itself may replace a champion (``trust_script_metric``)."""
    metric = (
        {"type": "string", "enum": sorted(metric_names)}
        if metric_names
        # A script's own metric: any name but those a promotion's announcement says what to deploy with.
        else {"type": "string", "minLength": 1, "maxLength": 250, "not": {"enum": ["model_name", "version"]}}
    )
    properties: dict = {"metric": metric, "min_improvement": {"type": "number", "minimum": 0}}
    if script:
        properties["trust_script_metric"] = {"type": "boolean"}
    return {"type": "object", "properties": properties, "additionalProperties": False}


# A Kubernetes quantity (500m, 2, 1Gi): what a deploy's resources may say, and nothing that could
# reach a manifest as anything else.
QUANTITY = {"type": "string", "pattern": "^[0-9]{1,9}(\\.[0-9]{1,6})?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"}
_CPU_MEMORY = {
    "type": "object",
    "properties": {"cpu": QUANTITY, "memory": QUANTITY},
    "additionalProperties": False,
}
# deploy_model's resources: requests and limits of cpu and memory (defaults fill what is left out).
RESOURCES = {
    "type": ["null", "object"],
    "properties": {"requests": _CPU_MEMORY, "limits": _CPU_MEMORY},
    "additionalProperties": False,
}


def field(default: Any = NOTSET, *, title: str, description: str, section: str, **schema: Any) -> Param:
    """One conf key as the trigger form draws it: its title, what it means (units, default, the seed's
    name for it) and the section it sits in; ``schema`` is its JSON schema, which the API enforces."""
    return Param(default, description=description, title=title, section=section, **schema)


def team_field(section: str, *, what: str, afterwards: str) -> Param:
    """The ``team`` a new ``what`` (a model, a feature view) belongs to: one of the caller's; empty, their only one."""
    return field(
        None,
        title="Team",
        description=f"The team a new {what} belongs to (one of yours); empty: your only team. {afterwards}",
        section=section,
        type=["null", "string"],
        pattern="^[A-Za-z0-9_-]{3,50}$",
    )


def version_fields(section: str, version_key: str = "model_version", *, alias_note: str = "") -> dict[str, Param]:
    """A model version by number (``version_key``), else by the alias that names it (default champion)."""
    seed = f" Seed field: {version_key}." if version_key == "model_version" else ""
    return {
        version_key: field(
            None,
            title="Version",
            description=f"The version number; empty: the version the alias names.{seed}",
            section=section,
            **VERSION,
        ),
        "alias": field(
            "champion",
            title="Alias",
            description=f"The alias that picks the version when {version_key} is empty{alias_note}. Default: champion.",
            section=section,
            type="string",
            pattern=ALIAS_PATTERN,
        ),
    }


def aws_connection_field(section: str) -> Param:
    """``aws_conn_id``: the connection s3:// paths are read and written with (only the allowed ones work)."""
    return field(
        "aws_default",
        title="AWS connection",
        description="The Airflow connection used for s3:// paths (one of the allowed connections).",
        section=section,
        type="string",
        minLength=1,
    )
