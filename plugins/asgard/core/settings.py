"""One place for the platform's configuration: every ``ASGARD_*`` environment variable is read here.

Everything that differs between the embedded default (one machine, no cloud) and production
(Postgres, Celery, S3, ECR, EKS, Trino) is a setting, so switching is configuration, never code.
Connections to external systems are Airflow connections (``AIRFLOW_CONN_*``); settings hold only
what is not a connection: paths, ports, profile, where things run. Each field ``x`` is read from
``ASGARD_X`` (pydantic-settings); a bad value is an error that names the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from asgard.core.kubernetes_namespaces import checked_serving_egress
from asgard.core.team_settings import TeamSettings, settings_problems

REPO_ROOT = Path(__file__).resolve().parents[3]

PROFILES = ("embedded", "production")
REGISTRY_TYPES = ("docker", "ecr")
SCRIPT_RUNNERS = ("local", "kubernetes")
# What the project builds when no public base image can be pulled (see scripts/base_image.sh).
LOCAL_BASE_IMAGE = "asgard/python-base:bookworm"
ENV_PREFIX = "ASGARD_"
# Debian's own cluster on a machine whose set-up did not run (its `postgres` role, no password).
FALLBACK_POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def machine_postgres_admin_url(machine_dir: Path) -> SecretStr:
    """The admin login the set-up keeps for the machine's PostgreSQL, or Debian's ``postgres`` role."""
    try:
        return SecretStr((machine_dir / "postgres-admin-url").read_text().strip() or FALLBACK_POSTGRES_ADMIN_URL)
    except OSError:
        return SecretStr(FALLBACK_POSTGRES_ADMIN_URL)


class Settings(TeamSettings):
    """Paths, ports, profile and placement of one Asgard installation."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    home: Path = Field(default=REPO_ROOT / ".asgard")
    # What is built once per machine and shared by every home on it: uv's download cache, user-script
    # environments, image wheelhouses (each keyed by what it holds).
    cache_dir: Path = Field(default=REPO_ROOT / ".cache")

    profile: Literal["embedded", "production"] = "embedded"
    airflow_port: int = 8080
    mlflow_port: int = 5050
    bind_host: str = "127.0.0.1"
    # Where train_script runs user scripts: a local sandbox, or a Kubernetes pod (production).
    script_runner: Literal["local", "kubernetes"] = "local"
    # The interpreter of user-script environments: the system's, which every sandbox can reach and
    # which the serving images' Debian base runs too.
    script_python: str = "/usr/bin/python3.11"
    # The most a train_script request may ask for (a request above is refused, naming the cap).
    script_max_memory_mb: int = 8192
    script_max_timeout: int = 7200
    # The memory (GiB) the installation's tasks that hold large frames may take together: the size of
    # its memory pool (asgard.core.memory_pool); default half the machine's. Production: all workers'.
    task_memory_gb: int | None = Field(None, ge=1)
    # What a sandboxed script may write: its /work and its /tmp hold at most this much each (in
    # memory, inside its memory cap); a write beyond fails with ENOSPC, the host's disk untouched.
    script_max_disk_mb: int = Field(2048, ge=16)
    # The newest labels scripts never read, the gate's rows (asgard.training.holdback); never a request's.
    gate_holdback_fraction: float = Field(0.2, gt=0, lt=1)
    # What identifies a labelled row of the label table, the held-back rows' tie-break (comma-separated):
    # the operator's, never the feature store's entities, which any team may add to (a label as a key would
    # make the choice depend on the labels).
    gate_holdback_keys: str = "customer_id"
    # The image repository holding one image per requirements set, tagged with its environment key
    # (default: asgard/script-env on the platform's registry).
    script_image_repository: str | None = None
    training_namespace: str = "asgard-training"
    # The address script pods in the cluster reach a worker's MLflow door at (default: the worker's own).
    script_door_host: str | None = None
    # The Docker engine that builds serving images (embedded: the one `./asgard start` runs).
    docker_host: str | None = None
    registry_port: int = 5000
    # What builds serving images: the Docker engine (docker_host), or Kaniko pods in the cluster
    # (kubernetes_conn_id) from build contexts uploaded to s3_bucket, for clusters without a Docker socket.
    image_builder: Literal["docker", "kaniko"] = "docker"
    kaniko_namespace: str = "asgard-builds"
    # Kaniko's login to a basic-auth registry (a dockerconfigjson Secret there); none for ECR (IRSA).
    kaniko_registry_secret: str | None = None
    # How to log in to the image registry: a Docker connection (basic auth), or ECR's token.
    registry_type: Literal["docker", "ecr"] = "docker"
    image_repository: str | None = None
    serving_base_image: str = LOCAL_BASE_IMAGE
    # The embedded profile's stable model endpoint (/models/<name>/...) in front of the containers.
    router_port: int = 8700
    # What one serving container of the Docker target may use (a model's code runs in it): memory (MB,
    # no swap beyond it), CPUs, processes. A model needing more asks its operator to raise them.
    serving_memory_mb: int = Field(2048, ge=128)
    serving_cpus: float = Field(1.0, gt=0)
    serving_max_processes: int = Field(256, ge=16)
    # Where monitoring results go (SQLAlchemy URL); embedded: a SQLite file under home.
    monitoring_database_url: str | None = None
    # Where serving pods in a cluster ship their prediction logs (``s3://bucket/prefix``, one prefix
    # per model below it); the embedded Docker target always logs to a folder under data_dir.
    prediction_log_uri: str | None = None
    # The `kubernetes` deploy target: the cluster's Airflow connection, or (when set) an EKS cluster
    # reached through the AWS connection; the default team's namespace when kubernetes_namespaces leaves it out.
    kubernetes_conn_id: str = "kubernetes_default"
    eks_cluster_name: str | None = None
    aws_conn_id: str = "aws_default"
    serving_namespace: str = "asgard"
    # Per team, the namespaces its models may be served in, its default first: "default=ml-serving;
    # a=ml-a,ml-a-canary" (asgard.core.kubernetes_namespaces). A team not named may deploy nowhere.
    kubernetes_namespaces: str = ""
    # The Secret (in the serving namespace, key ``url``) that holds the online store's Redis URL, which
    # serving pods read features by entity id from; the platform's operator creates it.
    serving_online_store_secret: str = "asgard-online-store"
    # Serving pods reach cluster DNS and nothing else but these "cidr:port" (the online store, say).
    kubernetes_serving_egress: Annotated[str, AfterValidator(checked_serving_egress)] = ""
    # Extra monitoring alert notifiers: comma-separated ``module:factory`` paths.
    alert_notifiers: str = ""
    # Import the heavy libraries once where tasks fork, and settle the API server's heap ("0": neither).
    preload: bool = True
    # How long ``./asgard``'s set-up took before this command ran (the main job reports it).
    setup_seconds: float | None = None
    # The production profile on one machine (``./asgard start --profile production``): the PostgreSQL
    # server it creates its role and databases in (a login allowed to create them; only the command
    # that starts the services reads it), the prefix of their names (two installations can share a
    # server), Redis, the S3 API's port (moto's server) and bucket, and how many Celery workers run.
    # What the set-up made for every checkout on this machine (scripts/system_services.sh reads it too).
    machine_dir: Path = Path("/var/lib/asgard")
    # Default: the admin login (0600, in machine_dir) of the PostgreSQL scripts/system_services.sh installed.
    postgres_admin_url: SecretStr = Field(default_factory=lambda data: machine_postgres_admin_url(data["machine_dir"]))
    database_prefix: str = "asgard"
    redis_url: str = "redis://127.0.0.1:6379"
    broker_redis_db: int = 5
    s3_port: int = 5055
    s3_bucket: str = "asgard"
    celery_workers: int = 2
    # Seconds without a heartbeat from a running task (its worker's host or a crashed scheduler's executor
    # lost) before the scheduler fails it, so that it is retried (Airflow's own default is 300).
    lost_task_timeout: int = Field(60, ge=10)
    # Feast's registry database and online store (Redis connection string) in production: what
    # feature_store.production.yaml's ${ASGARD_FEAST_REGISTRY_URI} and ${ASGARD_FEAST_REDIS} expand to.
    feast_registry_uri: SecretStr | None = None
    feast_redis: SecretStr | None = None
    # The gold layer's Iceberg catalog: its kind (pyiceberg's sql, rest or glue; its uri and credentials
    # come from PYICEBERG_CATALOG__GOLD__* in the environment) and warehouse (production default:
    # s3://<s3_bucket>/gold). Embedded: a SQLite catalog over a local folder, whatever these say.
    gold_catalog: Literal["sql", "rest", "glue"] = "sql"
    gold_warehouse: str | None = None
    # How the platform's Feast reads the gold layer offline in production: Trino (iceberg.gold.*), or the
    # same Iceberg tables through DuckDB (one machine without Trino).
    offline_store: Literal["duckdb", "trino"] = "trino"
    # The production profile's single-node Trino (asgard.local.trino): port, JVM heap, JDK (476 needs
    # Java >= 24; default: the newest under /usr/lib/jvm), and quick start (the JVM's client compiler
    # only: less than half the CPU to start, slower long queries).
    trino_port: int = 8095
    trino_heap_mb: int = Field(1536, ge=512)
    trino_java_home: Path | None = None
    trino_quick_start: bool = False
    # The Redis db index of Feast's online store in production (the broker has its own).
    online_redis_db: int = 6
    # Where a DAG run's files that pass between its tasks go (production default: s3://<s3_bucket>/runs,
    # since tasks run on different workers; embedded: <home>/data/runs).
    runs_uri: str | None = None
    # The ``./asgard`` client of the /mlops API: where it is, and who calls it.
    api_url: str | None = None
    api_token: SecretStr | None = None
    api_username: str | None = None
    api_password: SecretStr | None = None

    @field_validator("home", "cache_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.resolve()

    @field_validator("database_prefix")
    @classmethod
    def _identifier(cls, prefix: str) -> str:
        # Role and database names are built from it: a plain lower-case identifier, nothing to quote.
        if not prefix.isidentifier() or not prefix.islower() or len(prefix) > 40:
            raise ValueError(f"must be a lower-case identifier of at most 40 characters, got {prefix!r}")
        return prefix

    @field_validator("kubernetes_namespaces")
    @classmethod
    def _kubernetes_namespaces(cls, text: str) -> str:
        from asgard.core.kubernetes_namespaces import checked_team_namespaces

        return checked_team_namespaces(text)

    @field_validator("prediction_log_uri")
    @classmethod
    def _s3_prefix(cls, uri: str | None) -> str | None:
        if uri is not None and not uri.startswith("s3://"):
            raise ValueError(f"must be an s3://bucket/prefix, got {uri!r}")
        return uri

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from ``ASGARD_*`` environment variables, with embedded defaults."""
        try:
            return cls()
        except ValidationError as error:
            raise ValueError(settings_problems(error, ENV_PREFIX)) from None

    def as_env(self) -> dict[str, str]:
        """The ``ASGARD_*`` variables that give another process these settings (secrets left out)."""
        values = self.model_dump(exclude_none=True)
        return {
            f"{ENV_PREFIX}{name.upper()}": str(value)
            for name, value in values.items()
            if not isinstance(value, SecretStr) and name not in ("setup_seconds",)
        }

    @property
    def data_root_list(self) -> list[str]:
        roots = [root.strip() for root in self.data_roots.split(",") if root.strip()]
        if roots:
            return roots
        # Production's tasks run on workers that share no folder: its data lives on S3.
        return [f"s3://{self.s3_bucket}/data"] if self.profile == "production" else [str(self.data_dir)]

    @property
    def protected_data_dirs(self) -> list[Path]:
        """The platform's own folders: no request reads or writes in them, whatever the roots say."""
        data = self.data_dir
        folders = [data / "gold", data / "feast", data / "runs", self.prediction_logs_dir]
        return [*folders, self.state_dir, self.airflow_home, self.mlflow_dir]

    @property
    def prediction_logs_dir(self) -> Path:
        """The serving containers' prediction logs, one folder per model: the platform's own, so that no
        request's path names one (a model named ``score_batch`` logs beside the others, never into the
        folder of score_batch's outputs)."""
        return self.data_dir / "prediction-logs"

    @property
    def monitoring_db_url(self) -> str:
        return self.monitoring_database_url or f"sqlite:///{self.home / 'monitoring.db'}"

    def prediction_log_folder(self, model_name: str) -> Path:
        """Where the embedded Docker target's containers log the predictions they serve."""
        return self.prediction_logs_dir / model_name

    def cluster_prediction_log(self, model_name: str) -> str | None:
        """Where a model's pods in a cluster ship their prediction log (None: they keep none)."""
        return f"{self.prediction_log_uri.rstrip('/')}/{model_name}" if self.prediction_log_uri else None

    def prediction_logs(self, model_name: str) -> list[str]:
        """Every place a model's served predictions are logged: what monitoring reads."""
        cluster_log = self.cluster_prediction_log(model_name)
        return [str(self.prediction_log_folder(model_name)), *([cluster_log] if cluster_log else [])]

    # Everything the platform writes lives under ``home`` so one folder holds (and cleans) it all.
    @property
    def state_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
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
    def runs_root(self) -> str:
        if self.runs_uri:
            return self.runs_uri.rstrip("/")
        return f"s3://{self.s3_bucket}/runs" if self.profile == "production" else str(self.data_dir / "runs")

    @property
    def reports_root(self) -> str:
        """Where monitoring reports go: S3 in production (a worker writes one, the API server serves it)."""
        if self.profile == "production":
            return f"s3://{self.s3_bucket}/monitoring/reports"
        return str(self.data_dir / "monitoring" / "reports")

    @property
    def gold_warehouse_uri(self) -> str:
        return self.gold_warehouse or f"s3://{self.s3_bucket}/gold"

    @property
    def allowed_serving_namespaces(self) -> list[str]:
        """Every namespace some team's models may be served in (``ASGARD_KUBERNETES_NAMESPACES``)."""
        from asgard.core.kubernetes_namespaces import team_namespaces

        return [namespace for namespaces in team_namespaces(self).values() for namespace in namespaces]

    @property
    def online_door_folder(self) -> Path:
        """Where the router serves the online store's door (``redis.sock``) that serving containers mount."""
        return self.state_dir / "online-door"

    @property
    def online_redis_url(self) -> str:
        """``redis_url`` at the online store's database (``ASGARD_ONLINE_REDIS_DB``)."""
        return f"{self.redis_url.rstrip('/')}/{self.online_redis_db}"

    @property
    def online_redis_connection(self) -> str:
        """Feast's Redis connection string (``host:port,db=N``) of ``redis_url`` and ``online_redis_db``."""
        from urllib.parse import urlparse

        url = urlparse(self.redis_url)
        options = [f"db={self.online_redis_db}", *([f"password={url.password}"] if url.password else [])]
        return ",".join([f"{url.hostname or '127.0.0.1'}:{url.port or 6379}", *options])

    @property
    def s3_url(self) -> str:
        """The production profile's S3 API on this machine (moto's server)."""
        return f"http://{self.bind_host}:{self.s3_port}"

    @property
    def trino_url(self) -> str:
        return f"http://{self.bind_host}:{self.trino_port}"

    @property
    def router_url(self) -> str:
        return f"http://{self.bind_host}:{self.router_port}"

    @property
    def routes_file(self) -> Path:
        """The route table of this profile's router: each profile of one home has its own."""
        return self.state_dir / ("routes.json" if self.profile == "embedded" else f"routes-{self.profile}.json")

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


def get_settings() -> Settings:
    """This process's settings, read again whenever an ``ASGARD_*`` variable or the working folder differs. A read
    resolves every path and reads a file: a third of the API server's time under load, before it was kept."""
    try:
        key = _environment()
        if (known := _read.get(key)) is not None:
            return known
        settings = Settings.from_env()
        if _environment() == key:  # kept only if nothing changed while it was read (another thread's setenv)
            if len(_read) >= 8:  # bounded
                _read.clear()
            _read[key] = settings
        return settings
    except FileNotFoundError:  # the working folder removed under the process: relative paths cannot resolve
        return Settings.from_env()


_read: dict[tuple, Settings] = {}


def _environment() -> tuple:
    return os.getcwd(), tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)))


# The environment variables the settings read (docker-compose.yaml and the docs use no others).
ENV_VARS = tuple(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)
