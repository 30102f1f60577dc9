"""One place for the platform's configuration.

Everything that differs between the embedded default (one machine, no cloud) and production
(Postgres, Celery, S3, ECR, EKS, Trino) is read here from the environment, so switching is
configuration, never code. Connections to external systems are Airflow connections
(``AIRFLOW_CONN_*``); this module only holds what is not a connection: paths, ports, profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

PROFILES = ("embedded", "production")

# The environment variables this module reads (docker-compose.yaml and the docs use no others).
ENV_VARS = (
    "ASGARD_HOME",
    "ASGARD_PROFILE",
    "ASGARD_MONITORING_DATABASE_URL",
    "ASGARD_PREDICTION_LOG_URI",
    "ASGARD_AIRFLOW_PORT",
    "ASGARD_MLFLOW_PORT",
    "ASGARD_SCRIPT_RUNNER",
    "ASGARD_SCRIPT_IMAGE_REPOSITORY",
    "ASGARD_TRAINING_NAMESPACE",
    "ASGARD_DOCKER_HOST",
    "ASGARD_REGISTRY_PORT",
    "ASGARD_REGISTRY_TYPE",
    "ASGARD_IMAGE_REPOSITORY",
    "ASGARD_SERVING_BASE_IMAGE",
    "ASGARD_ROUTER_PORT",
    "ASGARD_KUBERNETES_CONN_ID",
    "ASGARD_EKS_CLUSTER_NAME",
    "ASGARD_SERVING_NAMESPACE",
)
REGISTRY_TYPES = ("docker", "ecr")
# What the project builds when no public base image can be pulled (see scripts/base_image.sh).
LOCAL_BASE_IMAGE = "asgard/python-base:bookworm"
SCRIPT_RUNNERS = ("local", "kubernetes")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Paths, ports and profile of one Asgard installation."""

    home: Path
    profile: str
    airflow_port: int
    mlflow_port: int
    bind_host: str = "127.0.0.1"
    # Where train_script runs user scripts: a local virtualenv, or a Kubernetes pod (production).
    script_runner: str = "local"
    # The image repository holding one image per requirements set, tagged with its environment key
    # (default: asgard/script-env on the platform's registry).
    script_image_repository: str | None = None
    training_namespace: str = "asgard-training"
    # The Docker engine that builds serving images (embedded: the one `./asgard start` runs).
    docker_host: str | None = None
    registry_port: int = 5000
    # How to log in to the image registry: a Docker connection (basic auth), or ECR's token.
    registry_type: str = "docker"
    image_repository: str | None = None
    serving_base_image: str = LOCAL_BASE_IMAGE
    # The embedded profile's stable model endpoint (/models/<name>/...) in front of the containers.
    router_port: int = 8700
    # Where monitoring results go (SQLAlchemy URL); embedded: a SQLite file under home.
    monitoring_database_url: str | None = None
    # Where serving pods in a cluster ship their prediction logs (``s3://bucket/prefix``, one prefix
    # per model below it); the embedded Docker target always logs to a folder under data_dir.
    prediction_log_uri: str | None = None
    # The `kubernetes` deploy target: the cluster's Airflow connection, or (when set) an EKS cluster
    # reached through the AWS connection; the namespace serving workloads go to by default.
    kubernetes_conn_id: str = "kubernetes_default"
    eks_cluster_name: str | None = None
    aws_conn_id: str = "aws_default"
    serving_namespace: str = "asgard"

    def __post_init__(self) -> None:
        if self.prediction_log_uri is not None and not self.prediction_log_uri.startswith("s3://"):
            raise ValueError(
                f"ASGARD_PREDICTION_LOG_URI must be an s3://bucket/prefix, got {self.prediction_log_uri!r}"
            )
        if self.profile not in PROFILES:
            raise ValueError(f"ASGARD_PROFILE must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.script_runner not in SCRIPT_RUNNERS:
            raise ValueError(
                f"ASGARD_SCRIPT_RUNNER must be one of {', '.join(SCRIPT_RUNNERS)}, got {self.script_runner!r}"
            )
        if self.registry_type not in REGISTRY_TYPES:
            raise ValueError(
                f"ASGARD_REGISTRY_TYPE must be one of {', '.join(REGISTRY_TYPES)}, got {self.registry_type!r}"
            )

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from ``ASGARD_*`` environment variables, with embedded defaults."""
        return cls(
            home=Path(os.environ.get("ASGARD_HOME") or REPO_ROOT / ".asgard").resolve(),
            profile=os.environ.get("ASGARD_PROFILE", "embedded"),
            airflow_port=_env_int("ASGARD_AIRFLOW_PORT", 8080),
            mlflow_port=_env_int("ASGARD_MLFLOW_PORT", 5050),
            script_runner=os.environ.get("ASGARD_SCRIPT_RUNNER") or "local",
            script_image_repository=os.environ.get("ASGARD_SCRIPT_IMAGE_REPOSITORY") or None,
            training_namespace=os.environ.get("ASGARD_TRAINING_NAMESPACE") or "asgard-training",
            docker_host=os.environ.get("ASGARD_DOCKER_HOST") or None,
            registry_port=_env_int("ASGARD_REGISTRY_PORT", 5000),
            registry_type=os.environ.get("ASGARD_REGISTRY_TYPE") or "docker",
            image_repository=os.environ.get("ASGARD_IMAGE_REPOSITORY") or None,
            serving_base_image=os.environ.get("ASGARD_SERVING_BASE_IMAGE") or LOCAL_BASE_IMAGE,
            router_port=_env_int("ASGARD_ROUTER_PORT", 8700),
            monitoring_database_url=os.environ.get("ASGARD_MONITORING_DATABASE_URL") or None,
            prediction_log_uri=os.environ.get("ASGARD_PREDICTION_LOG_URI") or None,
            kubernetes_conn_id=os.environ.get("ASGARD_KUBERNETES_CONN_ID") or "kubernetes_default",
            eks_cluster_name=os.environ.get("ASGARD_EKS_CLUSTER_NAME") or None,
            serving_namespace=os.environ.get("ASGARD_SERVING_NAMESPACE") or "asgard",
        )

    @property
    def monitoring_db_url(self) -> str:
        return self.monitoring_database_url or f"sqlite:///{self.home / 'monitoring.db'}"

    def prediction_log_folder(self, model_name: str) -> Path:
        """Where the embedded Docker target's containers log the predictions they serve."""
        return self.data_dir / "predictions" / model_name

    def cluster_prediction_log(self, model_name: str) -> str | None:
        """Where a model's pods in a cluster ship their prediction log (None: they keep none)."""
        return f"{self.prediction_log_uri.rstrip('/')}/{model_name}" if self.prediction_log_uri else None

    def prediction_logs(self, model_name: str) -> list[str]:
        """Every place a model's served predictions are logged: what monitoring reads."""
        cluster_log = self.cluster_prediction_log(model_name)
        return [str(self.prediction_log_folder(model_name)), *([cluster_log] if cluster_log else [])]

    # Everything the platform writes lives under ``home`` so one folder holds (and cleans) it all.
    @cached_property
    def state_dir(self) -> Path:
        return self.home / "run"

    @cached_property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @cached_property
    def data_dir(self) -> Path:
        return self.home / "data"

    @cached_property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @cached_property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def airflow_url(self) -> str:
        return f"http://{self.bind_host}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.bind_host}:{self.mlflow_port}"

    @property
    def docker_url(self) -> str:
        """The Docker engine's API address (embedded: a private socket, so no system engine is touched)."""
        return self.docker_host or f"unix://{self.state_dir / 'docker.sock'}"

    @property
    def registry_address(self) -> str:
        return f"{self.bind_host}:{self.registry_port}"

    @property
    def router_url(self) -> str:
        return f"http://{self.bind_host}:{self.router_port}"

    @property
    def routes_file(self) -> Path:
        return self.state_dir / "routes.json"

    @property
    def serving_repository(self) -> str:
        """Where serving images are pushed: one repository, one tag per model version."""
        return self.image_repository or f"{self.registry_address}/asgard/models"

    @property
    def script_repository(self) -> str:
        """Where train_script's pod runner images are pushed: one tag per requirements set."""
        return self.script_image_repository or f"{self.registry_address}/asgard/script-env"

    @property
    def dags_folder(self) -> Path:
        return REPO_ROOT / "dags"

    @property
    def plugins_folder(self) -> Path:
        return REPO_ROOT / "plugins"

    @property
    def include_folder(self) -> Path:
        return REPO_ROOT / "include"


def get_settings() -> Settings:
    """The settings of this process (read from the environment on each call: cheap, never stale)."""
    return Settings.from_env()


def redact_url(url: str) -> str:
    """A URL without the password it may carry (a database or server URL with credentials)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
