"""The trigger form of ``monitor_model``: each conf key with its schema, title and meaning. It opens
ready to monitor every serving champion over the last day, as the daily schedule does."""

from __future__ import annotations

from airflow.sdk import Param

from asgard.core.param_schemas import MODEL_NAME_PATTERN, TIMESTAMP, aws_connection_field, field, version_fields
from asgard.monitoring.thresholds import Thresholds

MODEL, WINDOW, DATA, POLICY = "Model", "Window", "Extra data", "Thresholds and retraining"
# In the model's team's data roots: absolute, s3://, or relative to the team's first root.
DATA_PATH = {"type": "string", "pattern": "^(s3://|/|(?!s3:)[^/\\s])\\S*\\.parquet$"}


def monitor_model_params() -> dict[str, Param]:
    defaults = Thresholds().as_dict()
    return {
        "model_name": field(
            None,
            title="Registered model",
            description="The model to monitor; empty: every model whose @champion is serving. Seed field: model_name.",
            section=MODEL,
            type=["null", "string"],
            pattern=MODEL_NAME_PATTERN,
        ),
        **version_fields(MODEL),
        "window_start": field(
            None,
            title="Window start",
            description="Start of the window of scored data (ISO 8601); empty: the run's data interval "
            "(the last day on the daily schedule).",
            section=WINDOW,
            **TIMESTAMP,
        ),
        "window_end": field(
            None,
            title="Window end",
            description="End of the window (ISO 8601); empty: the end of the run's data interval.",
            section=WINDOW,
            **TIMESTAMP,
        ),
        "sources": field(
            [],
            title="Extra scored data",
            description="Parquet files (in the model's team's data roots: absolute, s3://, or relative to "
            "its first root) of rows the model scored elsewhere, read beside the serving log and the batch outputs.",
            section=DATA,
            type="array",
            items=DATA_PATH,
            uniqueItems=True,
        ),
        "labels": field(
            [],
            title="Labels",
            description="Parquet files of arrived labels (prediction_id, label), for accuracy or RMSE.",
            section=DATA,
            type="array",
            items=DATA_PATH,
            uniqueItems=True,
        ),
        "aws_conn_id": aws_connection_field(DATA),
        "thresholds": field(
            {},
            title="Thresholds",
            description="Overrides of the alert thresholds; the defaults: "
            + ", ".join(f"{name} {value}" for name, value in defaults.items())
            + " (drift: PSI; missing, out_of_range, unseen: shares of rows; persistence: windows a breach "
            "must last before it alerts).",
            section=POLICY,
            type="object",
            properties={name: {"type": ["number", "null"], "minimum": 0} for name in defaults},
            additionalProperties=False,
        ),
        "retrain": field(
            True,
            title="Ask for retraining",
            description="Persistent drift asks retrain_model for a new version (once per cool-down).",
            section=POLICY,
            type="boolean",
        ),
    }
