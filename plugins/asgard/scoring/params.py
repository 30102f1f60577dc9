"""The trigger form of ``score_batch``: each conf key with its schema, title and meaning. It opens
with the sample model's champion and three sample customers, and writes to a file of the run's own
unless told where, so pressing Trigger on a fresh install scores the sample batch."""

from __future__ import annotations

from airflow.sdk import Param

from asgard.core.param_schemas import (
    IDENTIFIER,
    MODEL_NAME_PATTERN,
    SCALAR,
    TIMESTAMP,
    aws_connection_field,
    field,
    version_fields,
)
from asgard.scoring.plan import FEATURE_SOURCES, OUTPUT_PATTERN
from asgard.scoring.sources import SAMPLE_ENTITIES

MODEL, INPUT, OUTPUT, SCALE = "Model", "Entities and features", "Output", "Scale"


def score_batch_params() -> dict[str, Param]:
    return {
        "model_name": field(
            "churn_predictor",
            title="Registered model",
            description="The MLflow registered model to score with. Seed field: model_name. Default: "
            "churn_predictor, the sample model.",
            section=MODEL,
            type="string",
            pattern=MODEL_NAME_PATTERN,
        ),
        **version_fields(MODEL),
        "feature_views": field(
            None,
            title="Feature views",
            description="The Feast views the features are read from; empty: the views the version was "
            "trained on. Seed field: feature_views.",
            section=INPUT,
            type=["null", "array"],
            items=IDENTIFIER,
            uniqueItems=True,
        ),
        "entities_df": field(
            SAMPLE_ENTITIES,
            title="Entities",
            description="Inline entity keys (up to 100,000 per column). Seed field: entities_df. Default: "
            "three sample customers, which an entity_source replaces; any other entities beside an "
            "entity_source are refused as ambiguous.",
            section=INPUT,
            type=["null", "object"],
            minProperties=1,
            additionalProperties={"type": "array", "items": SCALAR, "minItems": 1, "maxItems": 100_000},
        ),
        "entity_source": field(
            None,
            title="Entity source",
            description='Large jobs: {"table": a gold-layer table} or {"path": a Parquet file or folder in '
            "the model's team's data roots: absolute, s3://, or relative to the team's first root}, not both; "
            "timestamp_column: each row's as-of time. Empty: entities_df.",
            section=INPUT,
            type=["null", "object"],
            properties={
                "table": IDENTIFIER,
                "path": {"type": "string", "pattern": "^(s3://|/|(?!s3:)[^/\\s])\\S*$"},
                "timestamp_column": IDENTIFIER,
            },
            # A table or a path, not both (null: the entities are inline).
            anyOf=[
                {"type": "null"},
                {"type": "object", "required": ["table"], "not": {"required": ["path"]}},
                {"type": "object", "required": ["path"], "not": {"required": ["table"]}},
            ],
            additionalProperties=False,
        ),
        "feature_source": field(
            "feast",
            title="Feature source",
            description="feast: features from the Feast offline store, point in time; input: the rows "
            "already carry the model's features. Default: feast.",
            section=INPUT,
            type="string",
            enum=list(FEATURE_SOURCES),
        ),
        "as_of": field(
            None,
            title="As of",
            description="The moment features are read as of (ISO 8601); empty: the run's data interval end.",
            section=INPUT,
            **TIMESTAMP,
        ),
        "output_path": field(
            None,
            title="Output file",
            description="Where the predictions are written, as one Parquet file in the model's team's data "
            "roots (<root>/<team>/): an absolute path, s3://bucket/key.parquet, or a path relative to the "
            "team's first root (predictions/batch.parquet). Written whole or not at all; a re-run "
            "replaces it. Seed field: output_path. Empty: a file of the run's own in the team's first root "
            "(predictions/score_batch/), named in the run's result.",
            section=OUTPUT,
            type=["null", "string"],
            pattern=OUTPUT_PATTERN,
        ),
        "aws_conn_id": aws_connection_field(OUTPUT),
        "chunk_rows": field(
            100_000,
            title="Rows per chunk",
            description="Rows scored at once inside a partition (bounds a worker's memory). Default: 100,000.",
            section=SCALE,
            type="integer",
            minimum=1,
            maximum=5_000_000,
        ),
        "partition_rows": field(
            1_000_000,
            title="Rows per partition",
            description="Rows per mapped scoring task (partitions run in parallel). Default: 1,000,000.",
            section=SCALE,
            type="integer",
            minimum=1,
        ),
    }
