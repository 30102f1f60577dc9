"""MLflow hook: the tracking server and model registry behind an Airflow connection.

The connection (``mlflow_default``) names the server; tasks never read or set
``MLFLOW_TRACKING_URI`` themselves, so two tasks in one worker can talk to two servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
# Tags only the platform writes (lineage, the gate's and the deploy's records): how the platform finds
# a DAG run's MLflow run and trusts a version. A caller's or a script's own tags never set them.
PLATFORM_TAG_PREFIXES = ("airflow.", "asgard.", "feast.", "gold.", "gate.", "deploy.")
ALLOW_DESERIALIZATION = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


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
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException as error:
            # Another run created it between the lookup and the create (runs start side by side).
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

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
                f"tags.`{AIRFLOW_DAG_ID_TAG}` = {mlflow_literal(dag_id)} "
                f"AND tags.`{AIRFLOW_RUN_ID_TAG}` = {mlflow_literal(run_id)}"
            ),
            max_results=1,
        )
        if found:
            return found[0]
        # The Airflow tags last: a caller's own tags never replace them (they are how a retry finds its run).
        run_tags = {**(tags or {}), AIRFLOW_DAG_ID_TAG: dag_id, AIRFLOW_RUN_ID_TAG: run_id}
        return self.client.create_run(
            experiment_id, run_name=f"{dag_id}__{run_id}", tags={k: str(v) for k, v in run_tags.items()}
        )

    @contextmanager
    def using_server(self) -> Iterator[None]:
        """Point MLflow's fluent APIs (``log_model``, ``load_model``) at this server for the block.

        They read a process-wide URI. ``mlflow.set_tracking_uri`` also exports it as
        ``MLFLOW_TRACKING_URI`` for subprocesses, so the block restores the environment exactly as it
        was (unset stays unset) rather than pinning MLflow's resolved default into it.
        """
        import os

        import mlflow

        previous = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous[0])  # None: back to MLflow's own resolution, variable unset
            mlflow.set_registry_uri(previous[1])
            if previous[1] is None:  # set_registry_uri(None) leaves the exported variable behind
                os.environ.pop("MLFLOW_REGISTRY_URI", None)

    @contextmanager
    def active_run(self, run_id: str) -> Iterator[Run]:
        """Resume ``run_id`` as MLflow's active run for the block (an exception marks it FAILED)."""
        import mlflow

        with self.using_server(), mlflow.start_run(run_id=run_id) as run:
            yield run

    def logged_models(self, run_id: str) -> list[Any]:
        """The models logged to ``run_id`` that finished uploading (MLflow 3 logged models)."""
        from mlflow.entities import LoggedModelStatus

        run = self.client.get_run(run_id)
        outputs = run.outputs.model_outputs if run.outputs else []
        models = [self.client.get_logged_model(output.model_id) for output in outputs]
        return [model for model in models if model.status == LoggedModelStatus.READY]

    def load_model(self, model_uri: str) -> Any:
        """A model from this server's registry, with ``predict`` (and ``predict_proba`` for classifiers).

        MLflow refuses to deserialize any model unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set,
        because a model file can run code. Models in the platform's own registry are the platform's
        own, so the permission is granted for this one load and withdrawn after it.
        """
        import mlflow

        with self.using_server(), _allow_deserialization():
            flavors = mlflow.models.get_model_info(model_uri).flavors
            if "sklearn" in flavors:
                return mlflow.sklearn.load_model(model_uri)
            return mlflow.pyfunc.load_model(model_uri)

    def logged_json(self, run_id: str, artifact_path: str) -> Any | None:
        """A JSON artifact of a run, or None when the run has none at that path."""
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            with self.using_server():
                return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_path}")
        except (MlflowException, OSError):
            return None

    def logged_frame(self, run_id: str, artifact_path: str, columns: list[str] | None = None) -> Any | None:
        """A Parquet artifact of a run as a DataFrame (those columns), or None when it has none."""
        import tempfile

        import mlflow
        import pandas as pd
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as scratch:
            try:
                with self.using_server():
                    path = mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path=artifact_path, dst_path=scratch
                    )
                return pd.read_parquet(path, columns=columns)
            except (MlflowException, OSError, KeyError, ValueError):  # ValueError: a column it lacks
                return None

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test connection" button: one cheap call to the server."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as error:
            return False, f"MLflow at {self.tracking_uri} did not answer: {error}"
        return True, f"MLflow at {self.tracking_uri} answered"


@contextmanager
def _allow_deserialization() -> Iterator[None]:
    import os

    previous = os.environ.get(ALLOW_DESERIALIZATION)
    os.environ[ALLOW_DESERIALIZATION] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ALLOW_DESERIALIZATION, None)
        else:
            os.environ[ALLOW_DESERIALIZATION] = previous


def mlflow_literal(value: str) -> str:
    """``value`` as an MLflow filter string literal (its grammar has quotes but no escapes)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"cannot search MLflow for a value with both quote characters: {value!r}")
