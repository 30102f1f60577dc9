"""
### Monitor models

Daily (and on demand, the seed's `/mlops/monitoring`): for every model whose `@champion` is
serving — or the one named in the conf — compares the window's scored data (the serving app's
prediction log, the `score_batch` outputs of that version published in the window, found through
their `asgard-batch-predictions` Asset events, and any Parquet `sources`, in the model's team's data
roots like the `labels`) with the
version's training reference: feature and prediction drift (PSI, Jensen-Shannon, KS, Wasserstein;
chi-square for categories), data quality (missing, out of range, unseen categories, schema) and,
where labels have arrived (`labels`: Parquet with `prediction_id`, `label`), accuracy or RMSE.
Results go to the monitoring database and to MLflow; an HTML report is kept per run. Breaches
alert once they last `persistence` windows; persistent drift asks for retraining (once per
cool-down) through the `asgard-retraining-requests` Asset, which schedules `retrain_model`.

```json
{"model_name": "churn_predictor", "alias": "champion",
 "window_start": "2025-10-16T00:00:00Z", "window_end": "2025-10-17T00:00:00Z",
 "sources": ["/data/predictions/batch_2025_10_17.parquet"],
 "thresholds": {"drift": 0.1, "missing": 0.05, "accuracy": 0.7, "persistence": 2}}
```
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias, dag, task

from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.core.memory_pool import MONITORING_GB, takes
from asgard.monitoring.params import monitor_model_params
from asgard.scoring.plan import BATCH_PREDICTIONS_ALIAS
from asgard.training.retraining import RETRAINING_REQUESTS


@dag(
    schedule="@daily",
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "monitoring"],
    doc_md=__doc__,
    params=monitor_model_params(),
)
def monitor_model():
    @task
    def targets(params=None, dag_run=None) -> list[dict]:
        from asgard.hooks.mlflow import MlflowHook
        from asgard.monitoring.run import deployed_models
        from asgard.registry.ownership import models_for_run, run_access

        if params["model_name"]:
            run_access(dag_run, params["model_name"])
            return [{k: params[k] for k in ("model_name", "model_version", "alias")}]
        # Every serving model for the schedule; a person's run covers their teams' models.
        hook = MlflowHook()
        deployed = deployed_models(hook)
        allowed = set(models_for_run(dag_run, [target["model_name"] for target in deployed], hook=hook))
        return [target for target in deployed if target["model_name"] in allowed]

    @task(
        map_index_template="{{ target['model_name'] }}",
        inlets=[AssetAlias(BATCH_PREDICTIONS_ALIAS)],
        **takes(MONITORING_GB),
    )
    def check(target: dict, params=None, dag_run=None, data_interval_end=None, inlet_events=None) -> dict:
        from asgard.monitoring.run import monitor_version
        from asgard.registry.ownership import recheck

        # The target as handed on: the conf's model when it names one, and one the run's user may act on.
        recheck(dag_run, params["model_name"] or target["model_name"], target)
        run_after = data_interval_end or dag_run.run_after
        source_run = f"{dag_run.dag_id}/{dag_run.run_id}"
        batch_events = inlet_events[AssetAlias(BATCH_PREDICTIONS_ALIAS)]  # score_batch's published outputs
        return monitor_version(target, params, source_run=source_run, run_after=run_after, batch_events=batch_events)

    @task
    def alert(results: list, dag_run=None) -> list[dict]:
        """Send each alert through the configured notifiers; what to retrain is what drifted persistently."""
        from asgard.monitoring.alerts import send_alerts
        from asgard.training.retraining import drift_requests

        send_alerts(list(results))
        return drift_requests(list(results), dag_run.run_id)

    @task(outlets=[Asset(RETRAINING_REQUESTS)], map_index_template="{{ request['model_name'] }}")
    def request_retraining(request: dict, outlet_events=None) -> dict:
        """One Asset event per model: retrain_model, scheduled by it, runs train_model with its conf."""
        outlet_events[Asset(RETRAINING_REQUESTS)].extra = request
        return request

    request_retraining.expand(request=alert(check.expand(target=targets())))


monitor_model()
