"""Asgard's feature definitions: the customer entity, its gold-layer features, the churn feature service.

`feast apply` runs this file; the data source class follows ASGARD_PROFILE (Iceberg through pyiceberg
in the embedded default, Trino in production), so the definitions are the same in both.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

from asgard.features.store import gold_source

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A customer account (gold.customer_features.customer_id).",
)

customer_features = FeatureView(
    name="customer_features",
    entities=[customer],
    ttl=timedelta(days=365),
    schema=[
        Field(name="total_purchases", dtype=Int64),
        Field(name="avg_purchase_value", dtype=Float64),
        Field(name="days_since_last_purchase", dtype=Int64),
        Field(name="customer_lifetime_value", dtype=Float64),
        Field(name="account_age_days", dtype=Int64),
        Field(name="support_tickets_count", dtype=Int64),
        Field(name="segment", dtype=String),
    ],
    source=gold_source("customer_features", "event_timestamp", "created_timestamp"),
    online=True,
    description="Daily customer activity snapshots from the gold layer.",
    tags={"team": "data-science", "layer": "gold"},
)

# The labels, for user scripts that train through Feast alone (train_script): joined point-in-time
# like any feature, never served online.
customer_labels = FeatureView(
    name="customer_labels",
    entities=[customer],
    ttl=timedelta(days=365),
    schema=[Field(name="churned", dtype=Int64), Field(name="spend_next_30d", dtype=Float64)],
    source=gold_source("customer_labels", "event_timestamp"),
    online=False,
    description="Observed outcomes per customer (churn, next-30-day spend) from the gold layer.",
    tags={"team": "data-science", "layer": "gold", "kind": "labels"},
)

# Named after the model that consumes it: the churn model reads exactly these features.
churn_predictor = FeatureService(
    name="churn_predictor",
    features=[customer_features],
    description="Features of the churn_predictor model.",
)
