"""
### Score a batch

The seed's `POST /mlops/serve/batch` as a conf: scores entities with a registered model version
(or alias) on their Feast features as of the run's data interval end (or `as_of`), and writes the
predictions as one Parquet file, locally or on S3 (the `aws_conn_id` connection). Large inputs —
a gold-layer table or a Parquet path in `entity_source` — are split into partitions scored by
mapped tasks, each in bounded chunks; the output appears only once every partition is scored
(never a partial file), and a re-run replaces it. Columns: the entity keys, `prediction`,
`probability_<class>` for classifiers, `model_name`, `model_version`, `scored_at`, `prediction_id`.

```json
{"model_name": "churn_predictor", "model_version": "1",
 "feature_views": ["customer_features"],
 "entities_df": {"customer_id": [1, 2, 3]},
 "output_path": "s3://my-bucket/predictions/batch_2025_10_17.parquet"}
```
Large jobs: `"entity_source": {"table": "customer_features"}` or `{"path": "s3://bucket/entities.parquet"}`;
rows that already carry the model's features: `"feature_source": "input"`. Every path lies in the model's
team's data roots (`<root>/<team>/`); a relative one is in the team's first root, as is the default output.
"""

from __future__ import annotations

from airflow.sdk import AssetAlias, dag, task

from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.core.memory_pool import SCORING_GB, takes
from asgard.scoring.params import score_batch_params
from asgard.scoring.plan import BATCH_PREDICTIONS_ALIAS


@dag(
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "scoring"],
    doc_md=__doc__,
    params=score_batch_params(),
)
def score_batch():
    @task
    def plan(params=None, dag_run=None, data_interval_end=None) -> list[dict]:
        """One entry per partition, each with the (small) job it belongs to: what the scoring tasks map over."""
        from asgard.core.settings import get_settings
        from asgard.registry.ownership import run_access
        from asgard.scoring.plan import plan_job

        # The run's user scores with their teams' models only, and reads and writes in the model's team's
        # data roots (an unregistered model: the default team's, until plan_job says there is no such model).
        team = run_access(dag_run, params["model_name"]) or get_settings().default_team
        # Manual runs have no data interval: their features are as of the time they were asked for.
        as_of = data_interval_end or dag_run.run_after
        planned = plan_job(params, dag_id=dag_run.dag_id, run_id=dag_run.run_id, as_of=as_of, team=team)
        job = planned.job.to_dict()
        return [{"job": job, "partition": partition.to_dict()} for partition in planned.partitions]

    # The UI names each mapped task after its partition rather than a bare index.
    @task(map_index_template="{{ partition_label }}", **takes(SCORING_GB))
    def score_partition(job: dict, partition: dict) -> dict:
        from airflow.sdk import get_current_context

        from asgard.scoring.batch import score_partition
        from asgard.scoring.plan import BatchJob, recheck_job
        from asgard.scoring.sources import Partition

        context = get_current_context()
        context["partition_label"] = f"partition {partition['index']} ({partition['rows']} rows)"
        checked = BatchJob.from_dict(job)
        recheck_job(checked, context["params"], context["dag_run"])
        return score_partition(checked, Partition.from_dict(partition)).to_dict()

    @task(outlets=[AssetAlias(BATCH_PREDICTIONS_ALIAS)])
    def publish(planned: list, parts: list, params=None, dag_run=None, outlet_events=None) -> dict:
        from asgard.scoring.batch import ScoredPart
        from asgard.scoring.plan import BatchJob, recheck_job
        from asgard.scoring.publish import announce, publish

        job = BatchJob.from_dict(planned[0]["job"])
        recheck_job(job, params, dag_run)
        published = publish(job, [ScoredPart.from_dict(part) for part in parts])
        announce(published, job, outlet_events[AssetAlias(BATCH_PREDICTIONS_ALIAS)])
        return published.to_dict()

    planned = plan()
    publish(planned, score_partition.expand_kwargs(planned))


score_batch()
