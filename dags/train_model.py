"""
### Train a model

The seed's `POST /mlops/models` as a conf: trains a scikit-learn, XGBoost or LightGBM model on
point-in-time correct Feast features joined onto the gold layer's labels, tracks it in one MLflow
run, registers a version with lineage tags and promotes it to `@champion` only if it is at least
as good as the current champion on the same holdout (else `@challenger`). A promotion emits the
model's Asset, which schedules `deploy_model`; `retraining` opts the champion into
retraining on new features (`retrain_model`).

```json
{"experiment_name": "customer_churn", "model_name": "churn_predictor",
 "framework": "sklearn", "model_type": "classification",
 "data_source": {"feature_views": ["customer_features"], "target_column": "churned"},
 "hyperparameters": {"params": {"n_estimators": 100, "max_depth": 10, "random_state": 42}},
 "promotion": {"metric": "roc_auc", "min_improvement": 0.0}}
```
"""

from __future__ import annotations

from airflow.sdk import AssetAlias, dag, task

from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.core.memory_pool import FIT_GB, TRAINING_SET_GB, takes
from asgard.registry.models import CHAMPION_MODELS_ALIAS
from asgard.training.params import train_model_params


@dag(
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "training"],
    doc_md=__doc__,
    params=train_model_params(),
)
def train_model():
    @task
    def validate_request(params=None, dag_run=None) -> dict:
        from asgard.training import pipeline

        return pipeline.validate_request(params, dag_run)

    @task(**takes(TRAINING_SET_GB))
    def build_training_set(request: dict, dag_run=None) -> dict:
        from asgard.training import pipeline

        return pipeline.build_training_set(request, dag_id=dag_run.dag_id, run_id=dag_run.run_id)

    @task(**takes(FIT_GB))
    def fit_model(request: dict, dataset: dict) -> dict:
        from asgard.training import pipeline

        return pipeline.fit_model(request, dataset)

    @task
    def register_model(request: dict, dataset: dict, fitted: dict, params=None, dag_run=None) -> dict:
        from asgard.registry.ownership import recheck
        from asgard.training import pipeline

        recheck(dag_run, params["model_name"], request, may_create=True, new_model_team=params.get("team"))
        return pipeline.register_model(request, dataset, fitted, dag_id=dag_run.dag_id, run_id=dag_run.run_id)

    @task(outlets=[AssetAlias(CHAMPION_MODELS_ALIAS)])
    def gate_model(
        request: dict, dataset: dict, fitted: dict, registered: dict, params=None, dag_run=None, outlet_events=None
    ) -> dict:
        from asgard.registry.models import announce_promotion
        from asgard.registry.ownership import recheck
        from asgard.training import pipeline

        recheck(dag_run, params["model_name"], request)
        recheck(dag_run, params["model_name"], registered)

        decision = pipeline.gate_model(request, dataset, fitted, registered)
        announce_promotion(decision, outlet_events)
        return decision.as_dict()

    request = validate_request()
    dataset = build_training_set(request)
    fitted = fit_model(request, dataset)
    gate_model(request, dataset, fitted, register_model(request, dataset, fitted))


train_model()
