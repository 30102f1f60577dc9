"""
### Register features

Registers a feature view over a gold-layer table in the Feast registry (the seed's
`POST /feast/features`). The request is checked against the gold layer first: the table, the
timestamp, entity and feature columns must exist with compatible types, or the run fails naming
every problem and the registry is left unchanged. Registering the same definition again is a
no-op; a changed definition updates the view.

```json
{"name": "customer_features", "entities": ["customer_id"],
 "features": [{"name": "total_purchases", "dtype": "int64"}],
 "source": {"table_name": "customer_features", "timestamp_field": "event_timestamp"},
 "ttl_days": 365}
```
"""

from __future__ import annotations

from airflow.sdk import dag, task

from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.features.params import register_features_params


@dag(
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "features"],
    doc_md=__doc__,
    params=register_features_params(),
)
def register_features():
    @task
    def validate_request(params=None) -> dict:
        from asgard.features.registration import validate_request

        return validate_request(dict(params))

    @task
    def apply_feature_view(request: dict) -> dict:
        from asgard.features.registration import register_feature_view
        from asgard.features.store import open_store

        return register_feature_view(request, open_store())

    apply_feature_view(validate_request())


register_features()
