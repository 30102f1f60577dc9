"""
### Check the platform

Proves that every service the pipeline depends on answers and does real work (MLflow
tracking and artifacts, the data folder, the script sandbox, and Trino where the profile runs
it), one mapped task per check, so a broken installation fails here with the service's name
instead of halfway through a training run.

Conf: `checks` (which services, default all), e.g. `{"checks": ["mlflow"]}`.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from asgard.api.platform_checks import CHECK_NAMES
from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.core.param_schemas import field


@dag(
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "platform"],
    doc_md=__doc__,
    params={
        "checks": field(
            list(CHECK_NAMES),
            title="Checks",
            description="The services to check (each answers, with what it needs to work); default: all.",
            section="Checks",
            type="array",
            items={"type": "string", "enum": list(CHECK_NAMES)},
            minItems=1,
            uniqueItems=True,
        ),
    },
)
def check_platform():
    @task
    def list_checks(params=None) -> list[str]:
        return list(params["checks"])

    @task(map_index_template="{{ name }}")
    def run_check(name: str, dag_run=None) -> dict:
        from asgard.api.platform_checks import run_check

        return run_check(name, dag_id=dag_run.dag_id, run_id=dag_run.run_id)

    run_check.expand(name=list_checks())


check_platform()
