"""The trigger forms of ``register_features`` and ``materialize_features``: each conf key with its schema,
title and meaning. ``register_features`` opens filled with the seed's example view (support features
over the sample gold table); ``materialize_features`` with "every view, the run's interval"."""

from __future__ import annotations

from airflow.sdk import Param

from asgard.core.param_schemas import IDENTIFIER, TIMESTAMP, field, team_field
from asgard.features.store import DTYPES

VIEW, SOURCE, OPTIONS, WINDOW = "Feature view", "Gold-layer source", "Options", "Window"

# The seed's POST /feast/features payload: a second view over the sample gold layer.
EXAMPLE_VIEW = {
    "name": "customer_support",
    "entities": ["customer_id"],
    "features": [
        {"name": "support_tickets_count", "dtype": "int64"},
        {"name": "days_since_last_purchase", "dtype": "int64"},
    ],
    "source": {"table_name": "customer_features", "timestamp_field": "event_timestamp"},
    "ttl_days": 365,
    "tags": {"team": "customer-success"},
}


def register_features_params() -> dict[str, Param]:
    return {
        "name": field(
            EXAMPLE_VIEW["name"],
            title="View name",
            description="The feature view's name in the Feast registry (letters, digits, '_'); registering "
            f"a name again updates that view. Seed field: name. Default: {EXAMPLE_VIEW['name']}.",
            section=VIEW,
            type="string",
            pattern=IDENTIFIER["pattern"],
            maxLength=128,
        ),
        "entities": field(
            EXAMPLE_VIEW["entities"],
            title="Entities (join keys)",
            description='The columns that identify a row\'s entity, e.g. ["customer_id"]. Seed field: entities.',
            section=VIEW,
            type="array",
            items=IDENTIFIER,
            minItems=1,
            uniqueItems=True,
        ),
        "features": field(
            EXAMPLE_VIEW["features"],
            title="Features",
            description='Each feature column and its type: [{"name": ..., "dtype": one of '
            f"{', '.join(DTYPES)}}}]. Every column must exist in the source table with a compatible type. "
            "Seed field: features.",
            section=VIEW,
            type="array",
            minItems=1,
            items={
                "type": "object",
                "properties": {"name": IDENTIFIER, "dtype": {"type": "string", "enum": list(DTYPES)}},
                "required": ["name", "dtype"],
                "additionalProperties": False,
            },
        ),
        "source": field(
            EXAMPLE_VIEW["source"],
            title="Source table",
            description="table_name: the gold-layer table; timestamp_field: its event-time column; "
            "created_timestamp_column: optional, breaks ties between rows of one event time. Seed field: "
            "source. Default: the sample's customer_features table.",
            section=SOURCE,
            type="object",
            properties={
                "table_name": IDENTIFIER,
                "timestamp_field": IDENTIFIER,
                "created_timestamp_column": IDENTIFIER,
            },
            required=["table_name", "timestamp_field"],
            additionalProperties=False,
        ),
        "ttl_days": field(
            365,
            title="Time to live (days)",
            description="How old a feature value may be and still be served or joined (1 to 3650 days). "
            "Seed field: ttl_days. Default: 365.",
            section=OPTIONS,
            type="integer",
            minimum=1,
            maximum=3650,
        ),
        "description": field(
            "",
            title="Description",
            description="Free text stored with the view in the registry.",
            section=OPTIONS,
            type="string",
        ),
        "tags": field(
            EXAMPLE_VIEW["tags"],
            title="Tags",
            description='Tags stored with the view, e.g. {"team": "customer-success"} (names starting with '
            '"asgard." are the platform\'s). Seed field: tags.',
            section=OPTIONS,
            type="object",
            additionalProperties={"type": "string"},
            propertyNames={"not": {"pattern": "^asgard\\."}},
        ),
        "team": team_field(
            OPTIONS,
            what="feature view",
            afterwards="Only its members (and admins) change it; a view no team registered (the sample's) only admins.",
        ),
    }


def materialize_features_params() -> dict[str, Param]:
    return {
        "feature_views": field(
            [],
            title="Feature views",
            description="The views to load into the online store; empty: every registered view.",
            section=WINDOW,
            type="array",
            items={"type": "string", "minLength": 1},
            uniqueItems=True,
        ),
        "start": field(
            None,
            **TIMESTAMP,
            title="From",
            description="Backfill from this moment (ISO 8601, UTC if no offset). Empty: the run's data "
            "interval (the last hour for the hourly schedule).",
            section=WINDOW,
        ),
        "end": field(
            None,
            **TIMESTAMP,
            title="Until",
            description="Backfill until this moment (ISO 8601). Empty: the end of the run's data interval.",
            section=WINDOW,
        ),
    }
