"""
### Materialize features

Loads the latest feature values of the run's data interval from the gold layer into the Feast
online store: hourly on schedule, or as a backfill with `start`/`end`. One mapped task per feature
view, each reading its window in bounded time chunks (memory does not grow with the window).
The window comes from the run, never from the clock. Each materialized view emits its Asset
(`feast://asgard/feature_view/<name>`), which schedules whatever consumes it.

Conf (all optional): `feature_views` (default: all registered), `start`, `end` (ISO timestamps).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import AssetAlias, dag, task

from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.core.memory_pool import MATERIALIZATION_GB, takes
from asgard.features.params import materialize_features_params
from asgard.features.store import FEATURE_VIEWS_ALIAS


@dag(
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Windows are applied in order: the watermark of a view only moves forward.
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "features"],
    doc_md=__doc__,
    params=materialize_features_params(),
)
def materialize_features():
    @task
    def plan_windows(params=None, data_interval_start=None, data_interval_end=None, dag_run=None) -> list[dict]:
        from asgard.features.materialization import plan_run

        return plan_run(params, data_interval_start, data_interval_end, dag_run.run_after)

    @task(
        outlets=[AssetAlias(FEATURE_VIEWS_ALIAS)],
        map_index_template="{{ window['feature_view'] }}",
        **takes(MATERIALIZATION_GB),
    )
    def materialize(window: dict, outlet_events=None) -> dict:
        from asgard.features.materialization import materialize_and_announce

        return materialize_and_announce(window, outlet_events[AssetAlias(FEATURE_VIEWS_ALIAS)])

    materialize.expand(window=plan_windows())


materialize_features()
