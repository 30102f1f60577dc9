"""
### Train with an uploaded script

The seed's `POST /mlops/training/upload` as a conf: a base64 script that trains a model and logs
it to MLflow. It runs in a virtualenv built once per `requirements` set (or, with
`ASGARD_SCRIPT_RUNNER=kubernetes`, as a locked-down pod), under a timeout and a memory limit, seeing
only the injected variables (`MLFLOW_TRACKING_URI`, `MLFLOW_RUN_ID`, `EXPERIMENT_NAME`, `MODEL_NAME`,
`USE_FEAST`, `FEAST_REPO_PATH`, `FEATURE_VIEW_NAME`) and your `env_vars`; its output is in the
`run_script` log. Its model is registered, gated and promoted like `train_model`'s.

```json
{"script_name": "train_with_feast.py", "script_content": "<base64>",
 "experiment_name": "feast_deployment", "model_name": "churn_predictor_feast",
 "requirements": ["scikit-learn", "pandas"], "timeout": 600, "env_vars": {"KEY": "value"}}
```
"""

from __future__ import annotations

from airflow.sdk import AssetAlias, dag, task

from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.core.memory_pool import script_task
from asgard.core.settings import get_settings
from asgard.registry.models import CHAMPION_MODELS_ALIAS
from asgard.training.params import train_script_params

SETTINGS = get_settings()


@dag(
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "training"],
    doc_md=__doc__,
    params=train_script_params(),
)
def train_script():
    @task
    def check_upload(params=None, dag_run=None) -> dict:
        from asgard.training.scripts import pipeline

        return pipeline.check_upload(params, dag_run)

    @task
    def prepare_environment(upload: dict, params=None) -> dict:
        from asgard.training.scripts import pipeline

        return pipeline.prepare_environment(params)

    @task(**script_task(SETTINGS))
    def run_script(upload: dict, environment: dict, params=None, dag_run=None) -> dict:
        from asgard.training.scripts import pipeline

        return pipeline.run_uploaded_script(params, upload, environment, dag_id=dag_run.dag_id, run_id=dag_run.run_id)

    @task
    def register_model(ran: dict, upload: dict, params=None, dag_run=None) -> dict:
        from asgard.registry.ownership import recheck
        from asgard.training.scripts import pipeline

        recheck(dag_run, params["model_name"], {**upload, "model_name": params["model_name"]}, may_create=True,
                new_model_team=params.get("team"))  # fmt: skip

        return pipeline.register_script_model(params, ran, upload, dag_id=dag_run.dag_id, run_id=dag_run.run_id)

    @task(outlets=[AssetAlias(CHAMPION_MODELS_ALIAS)])
    def gate_model(ran: dict, registered: dict, params=None, dag_run=None, outlet_events=None) -> dict:
        from asgard.registry.models import announce_promotion
        from asgard.registry.ownership import recheck
        from asgard.training.scripts import pipeline

        recheck(dag_run, params["model_name"], registered)

        decision = pipeline.gate_script_model(params, ran, registered)
        announce_promotion(decision, outlet_events)
        return decision.as_dict()

    upload = check_upload()  # nothing expensive happens before the upload is known to be sound
    environment = prepare_environment(upload)
    if SETTINGS.script_runner == "kubernetes":  # production: the same step as a locked-down pod
        from asgard.operators.script_pod import UserScriptPodOperator

        pod = UserScriptPodOperator(task_id="run_script", image="{{ ti.xcom_pull('prepare_environment')['image'] }}")
        environment >> pod
        ran = pod.output
    else:
        ran = run_script(upload, environment)
    gate_model(ran, register_model(ran, upload))


train_script()
