"""JSON-schema pieces shared by the DAGs' Params: one definition of each kind of value a conf carries."""

from __future__ import annotations

# A feature view, column, table or entity name.
IDENTIFIER = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 128}
# One value of an entity column.
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

# train_model's retraining policy: retrain the version, while it is @champion, when one of its
# feature views is materialized again (at most once per interval). See asgard.retraining.
RETRAINING_POLICY = {
    "type": "object",
    "properties": {"on_new_features": {"type": "boolean"}, "min_interval_hours": {"type": "number", "minimum": 0}},
    "additionalProperties": False,
}
