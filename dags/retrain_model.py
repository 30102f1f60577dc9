"""
### Retrain models

Runs `train_model` again, with the conf that trained the version it replaces, when the data says so:

- **drift**: `monitor_model` emits one `asgard-retraining-requests` Asset event per model whose drift
  or accuracy breach persisted (at most once per cool-down);
- **new features**: a materialization of a feature view (its `feast://asgard/feature_view/<name>`
  Asset) retrains the `@champion`s trained on it whose conf asked for it, unless a version is newer
  than those features or younger than the interval:
  `"retraining": {"on_new_features": true, "min_interval_hours": 24}`.

Each training run gets the id fixed when it was asked for (`retrain__<model>__<run id>__<mac>`, the
MAC keyed by the platform so no one can take the id first), so a retried hop never trains twice.
One run at a time, each waiting for the training it started, so the next one sees the new version.
The new version goes through the usual gate; a promotion deploys itself.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, AssetAlias, dag, task

from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.features.store import FEATURE_VIEWS_ALIAS
from asgard.training.retraining import RETRAINING_REQUESTS


@dag(
    schedule=Asset(RETRAINING_REQUESTS) | AssetAlias(FEATURE_VIEWS_ALIAS),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "training"],
    doc_md=__doc__,
)
def retrain_model():
    @task
    def requests(triggering_asset_events=None, dag_run=None) -> list[dict]:
        from asgard.training.retraining import requests_for

        return requests_for(triggering_asset_events, dag_run.run_id)

    TriggerDagRunOperator.partial(
        task_id="train",
        trigger_dag_id="train_model",
        skip_when_already_exists=True,
        wait_for_completion=True,  # deferred: no worker slot is held while the model trains
        deferrable=True,
        poke_interval=10,
    ).expand_kwargs(requests())


retrain_model()
