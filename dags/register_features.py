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
    def apply_feature_view(request: dict, params=None, dag_run=None) -> dict:
        from asgard.core.settings import get_settings
        from asgard.core.teams import run_actor
        from asgard.features.registration import register_feature_view
        from asgard.features.store import open_store

        # The run's user registers for one of their teams; an admin, or a run no person started, any view.
        actor = run_actor(dag_run, get_settings())
        any_view = actor.admin or actor.for_the_model
        team = params.get("team") if any_view else actor.team_for_new_model(params.get("team"), get_settings())
        return register_feature_view(request, open_store(), team=team or get_settings().default_team, any_view=any_view)

    apply_feature_view(validate_request())


register_features()
