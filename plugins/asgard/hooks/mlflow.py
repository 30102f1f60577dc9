"""MLflow hook: the tracking server and model registry behind an Airflow connection.

The connection (``mlflow_default``) names the server; tasks never read or set
``MLFLOW_TRACKING_URI`` themselves, so two tasks in one worker can talk to two servers.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# Tags that tie an MLflow run to the Airflow run that made it: the lookup key that makes
# "one MLflow run per DAG run" hold across task retries.
AIRFLOW_DAG_ID_TAG = "airflow.dag_id"
AIRFLOW_RUN_ID_TAG = "airflow.run_id"


class MlflowHook(BaseHook):
    """Talks to an MLflow tracking server and registry named by an Airflow connection.

    Connection fields: ``host`` and ``port`` of the server, ``schema`` as the URL scheme
    (``http`` unless set). ``extra.tracking_uri`` overrides all of them (any URI MLflow accepts).
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        """The tracking URI the connection points at."""
        conn = self.get_connection(self.mlflow_conn_id)
        explicit = conn.extra_dejson.get("tracking_uri")
        if explicit:
            return explicit
        if not conn.host:
            raise ValueError(f"connection {self.mlflow_conn_id!r} has no host: set host/port or extra.tracking_uri")
        scheme = conn.schema or "http"
        port = f":{conn.port}" if conn.port else ""
        return f"{scheme}://{conn.host}{port}"

    def get_conn(self) -> MlflowClient:
        """A client bound to this connection's server (tracking and registry)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @cached_property
    def client(self) -> MlflowClient:
        return self.get_conn()

    def get_or_create_experiment(self, name: str) -> str:
        """The id of the experiment called ``name``, created on first use."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name)

    def get_or_create_run(
        self, *, experiment_name: str, dag_id: str, run_id: str, tags: dict[str, Any] | None = None
    ) -> Run:
        """The one MLflow run of this DAG run: found by its Airflow tags, created if absent.

        Every task of a DAG run logs into this run, and a retried task finds the run its first
        try made instead of starting a second one.
        """
        experiment_id = self.get_or_create_experiment(experiment_name)
        found = self.client.search_runs(
            experiment_ids=[experiment_id],
            filter_string=(
                f"tags.`{AIRFLOW_DAG_ID_TAG}` = {_literal(dag_id)} AND tags.`{AIRFLOW_RUN_ID_TAG}` = {_literal(run_id)}"
            ),
            max_results=1,
        )
        if found:
            return found[0]
        run_tags = {AIRFLOW_DAG_ID_TAG: dag_id, AIRFLOW_RUN_ID_TAG: run_id, **(tags or {})}
        return self.client.create_run(
            experiment_id, run_name=f"{dag_id}__{run_id}", tags={k: str(v) for k, v in run_tags.items()}
        )

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test connection" button: one cheap call to the server."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as error:
            return False, f"MLflow at {self.tracking_uri} did not answer: {error}"
        return True, f"MLflow at {self.tracking_uri} answered"


def _literal(value: str) -> str:
    """``value`` as an MLflow filter string literal (its grammar has quotes but no escapes)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"cannot search MLflow for a value with both quote characters: {value!r}")
