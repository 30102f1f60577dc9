"""The production profile on one machine: Airflow on the CeleryExecutor, PostgreSQL, Redis and S3.

What runs (``./asgard start --profile production``), each a service of its own:

- ``s3``: moto's server, the S3 API this machine can run; everything reaches it through the
  ``aws_default`` connection's ``endpoint_url``, so real S3 is a change of connection.
- ``trino``: a single-node Trino over the gold layer's Iceberg tables (:mod:`asgard.local.trino`),
  launched first and waited for last: it is the slowest to start and no task needs it before then.
- ``mlflow``: its backend store in PostgreSQL, its artifacts in S3, served through the server.
- ``docker``, ``registry``, ``router``: as in the embedded profile (in the cloud: Kaniko and ECR).
- Airflow's components as separate processes, as separate hosts would run them: ``api-server``,
  ``scheduler``, ``dag-processor``, ``triggerer`` and ``worker-1`` … ``worker-N`` (Celery), the
  metadata database in PostgreSQL, the broker on Redis (its own db index), the task logs in S3
  (remote logging: no component reads another's log folder). Each worker has its own HOME,
  scratch folder and host name (the task instances show which worker ran them).

PostgreSQL and Redis are the machine's (or a managed service's): the profile creates its own role
and databases in the server ``ASGARD_POSTGRES_ADMIN_URL`` names, idempotently, and keeps the role's
password in its state folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from asgard.features.gold import PRODUCTION_CATALOG_NAME
from asgard.local.postgres import ProfileDatabases
from asgard.local.processes import Service, ServiceError, write_private
from asgard.local.services import ServiceManager, venv_bin
from asgard.training.scripts.store_doors import STORE_ACCESS_VARIABLE, StoreAccess

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# The components /api/v2/monitor/health reports on, by service name.
HEALTH_COMPONENTS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
WORKER_NAME_VARIABLE = "ASGARD_WORKER_NAME"
# Slots per Celery worker: with two workers, the embedded profile's parallelism of four.
WORKER_CONCURRENCY = 2
# Who the platform's processes are to Trino (a user script reading features is another user).
TRINO_PLATFORM_USER = "asgard"


def worker_hostname() -> str:
    """Airflow's ``hostname_callable`` here: each worker is a host of its own, named for it."""
    return os.environ.get(WORKER_NAME_VARIABLE) or socket.getfqdn()


class ProductionServices(ServiceManager):
    """The production profile's services of one :class:`Settings`."""

    def services(self) -> list[Service]:
        return [
            self._s3(),
            self._trino(),
            self._mlflow(),
            self._docker(),
            self._registry(),
            self._router(),
            *(self._airflow_component(name) for name in AIRFLOW_COMPONENTS),
            *(self._worker(index) for index in range(1, self.settings.celery_workers + 1)),
        ]

    def start(self, names: Iterable[str] | None = None, *, log: Callable[[str], None] = print) -> None:
        self.prepare_databases(log=log)
        if names is None or "router" in names:
            from asgard.local.online_door import prepare_reader_login

            log(prepare_reader_login(self.settings, *self._online_reader()))
        if names is None or "trino" in names:
            from asgard.local.trino import ensure_server

            ensure_server(self.settings)  # fetched by the set-up already; a no-op then
        super().start(names, log=log)

    def stop(self, names: Iterable[str] | None = None, *, log: Callable[[str], None] = print) -> None:
        super().stop(names, log=log)
        if names is None:  # everything stopped: the components' scratch folders go too
            shutil.rmtree(self.scratch_dir("-").parent, ignore_errors=True)

    def online_door_environment(self) -> dict[str, str]:
        """Serving containers read Feast's Redis through the router's door, never with this login: the door
        logs in as a read-only ACL user of its own (``prepare_reader_login``, at each start)."""
        from asgard.local.online_door import DOOR_FOLDER_VARIABLE, DOOR_UPSTREAM_VARIABLE, reader_login_url

        upstream = reader_login_url(self.settings.online_redis_url, *self._online_reader())
        return {DOOR_FOLDER_VARIABLE: str(self.settings.online_door_folder), DOOR_UPSTREAM_VARIABLE: upstream}

    def _online_reader(self) -> tuple[str, str]:
        return f"{self.settings.database_prefix}_online_reader", self._secrets()["online_reader_password"]

    # ----------------------------------------------------------------- PostgreSQL
    @property
    def databases(self) -> ProfileDatabases:
        return ProfileDatabases(self.settings, self._secrets)

    def database_url(self, purpose: str, driver: str = "postgresql+psycopg2") -> str:
        return self.databases.url(purpose, driver)

    def prepare_databases(self, *, log: Callable[[str], None] = print) -> None:
        self.databases.prepare(log=log)

    def drop_databases(self) -> None:
        self.databases.drop()

    def store_access(self) -> StoreAccess:
        """The reader's login that a user script reading the feature store is given (through doors)."""
        from sqlalchemy.engine import make_url

        databases, keys = self.databases, self._secrets()
        server = make_url(databases.admin_url())
        return StoreAccess(
            postgres_host=server.host or "127.0.0.1",
            postgres_port=server.port or 5432,
            user=databases.reader_role,
            password=keys["reader_password"],
            registry_database=databases.name("feast"),
            gold_database=databases.name("gold"),
            s3_endpoint=self.settings.s3_url,
            s3_access_key=keys["s3_reader_access_key"],
            s3_secret_key=keys["s3_reader_secret_key"],
            s3_readable=self.settings.gold_warehouse_uri.removeprefix("s3://"),
        )

    def _secrets(self) -> dict[str, str]:
        """The profile's generated credentials (the role's password, the S3 API's keys), created once."""
        path = self.settings.state_dir / "production-secrets.json"
        kept = json.loads(path.read_text()) if path.exists() else {}
        wanted = {
            "postgres_password": lambda: secrets.token_urlsafe(18),
            "reader_password": lambda: secrets.token_urlsafe(18),
            "online_reader_password": lambda: secrets.token_urlsafe(18),
            "s3_access_key": lambda: f"ASGARD{secrets.token_hex(7).upper()}",
            "s3_secret_key": lambda: secrets.token_urlsafe(30),
            "s3_reader_access_key": lambda: f"ASGARDR{secrets.token_hex(6).upper()}",
            "s3_reader_secret_key": lambda: secrets.token_urlsafe(30),
        }
        missing = {name: make() for name, make in wanted.items() if name not in kept}
        if missing:
            kept.update(missing)
            write_private(path, json.dumps(kept))
        return kept

    # ----------------------------------------------------------------- S3
    def _s3(self) -> Service:
        s = self.settings
        return Service(
            name="s3",
            argv=[str(venv_bin() / "moto_server"), "-H", s.bind_host, "-p", str(s.s3_port)],
            health_url=f"{s.s3_url}/moto-api/",
            port=s.s3_port,
            stop_signal=signal.SIGTERM,
            start_timeout=60.0,
            after_start=self._create_bucket,
        )

    def aws_environment(self) -> dict[str, str]:
        """What a client of the S3 API outside Airflow (the MLflow server) is given."""
        keys = self._secrets()
        return {
            "AWS_ACCESS_KEY_ID": keys["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": keys["s3_secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.settings.s3_url,
        }

    def aws_connection(self) -> str:
        """``aws_default``: the S3 API's keys and endpoint, as an AIRFLOW_CONN_* value."""
        keys = self._secrets()
        return json.dumps(
            {
                "conn_type": "aws",
                "login": keys["s3_access_key"],
                "password": keys["s3_secret_key"],
                "extra": {"endpoint_url": self.settings.s3_url, "region_name": "us-east-1"},
            }
        )

    def platform_env(self) -> dict[str, str]:
        """Where the stores are and how to log in, as their clients read it from the environment: every
        Airflow component's (and so every task's) and the main job's. Never a user script's."""
        s, keys = self.settings, self._secrets()
        gold = f"PYICEBERG_CATALOG__{PRODUCTION_CATALOG_NAME.upper()}__"
        return {
            f"{gold}URI": self.database_url("gold", driver="postgresql+psycopg"),
            f"{gold}S3__ENDPOINT": s.s3_url,
            f"{gold}S3__ACCESS_KEY_ID": keys["s3_access_key"],
            f"{gold}S3__SECRET_ACCESS_KEY": keys["s3_secret_key"],
            f"{gold}S3__REGION": "us-east-1",
            "ASGARD_FEAST_REGISTRY_URI": self.database_url("feast", driver="postgresql+psycopg"),
            "ASGARD_FEAST_REDIS": s.online_redis_connection,
            # Feast's Trino offline store (feature_store.production.yaml; used when ASGARD_OFFLINE_STORE=trino).
            "TRINO_HOST": s.bind_host,
            "TRINO_PORT": str(s.trino_port),
            "TRINO_USER": TRINO_PLATFORM_USER,
            "ASGARD_MONITORING_DATABASE_URL": self.database_url("monitoring"),
            f"AIRFLOW_CONN_{s.aws_conn_id.upper()}": self.aws_connection(),
        }

    def _create_bucket(self) -> None:
        import boto3

        env = self.aws_environment()
        client = boto3.client(
            "s3",
            endpoint_url=self.settings.s3_url,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        buckets = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
        if self.settings.s3_bucket not in buckets:
            client.create_bucket(Bucket=self.settings.s3_bucket)

    # ----------------------------------------------------------------- Trino
    def _trino(self) -> Service:
        from asgard.local import trino

        s = self.settings
        return Service(
            name="trino",
            argv=trino.launcher_argv(s),
            health_url=f"{s.trino_url}/v1/info",
            # /v1/info answers while the server is still starting: up once it says it is not.
            health_check=lambda: trino.server_answers(s),
            port=s.trino_port,
            env=self._trino_env(),
            stop_signal=signal.SIGTERM,
            start_timeout=300.0,
            prepare=self._prepare_trino,
            slow_start=True,
        )

    def _trino_env(self) -> dict[str, str]:
        """The secrets its iceberg catalog names (``${ENV:…}``), and the JDK it runs on."""
        from sqlalchemy.engine import make_url

        from asgard.local import trino

        keys = self._secrets()
        env = {
            "ASGARD_GOLD_CATALOG_PASSWORD": make_url(self.database_url("gold")).password or "",
            "AWS_ACCESS_KEY_ID": keys["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": keys["s3_secret_key"],
        }
        try:
            java_home = trino.find_java_home(self.settings)
        except ServiceError:  # said when it is started (prepare); status and stop need no JDK
            return env
        return env | trino.java_environment(java_home, self.base_env.get("PATH", os.defpath))

    def _prepare_trino(self) -> None:
        """Its configuration, the iceberg catalog made exactly as ``./asgard trino-catalog`` makes it."""
        from unittest import mock

        from asgard.features.gold import GoldLayerError, trino_catalog
        from asgard.local import trino

        trino.find_java_home(self.settings)  # no JDK new enough: a clear error before the launch
        # The catalog configuration the platform's processes get (pyiceberg reads it from the environment).
        with mock.patch.dict(os.environ, self.platform_env()):
            try:
                catalog = trino_catalog(self.settings)
            except GoldLayerError as error:
                raise ServiceError(f"trino: {error}") from None
        trino.write_config(
            self.settings, catalog, platform_user=TRINO_PLATFORM_USER, reader_user=self.databases.reader_role
        )

    # ----------------------------------------------------------------- MLflow
    def mlflow_stores(self) -> tuple[str, str, dict[str, str]]:
        return self.database_url("mlflow"), f"s3://{self.settings.s3_bucket}/mlflow", self.aws_environment()

    # ----------------------------------------------------------------- Airflow
    def airflow_env(self) -> dict[str, str]:
        """The embedded profile's Airflow environment, on Celery, PostgreSQL, Redis and S3."""
        s = self.settings
        return {
            **super().airflow_env(),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url("airflow"),
            "AIRFLOW__CELERY__BROKER_URL": f"{s.redis_url.rstrip('/')}/{s.broker_redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.database_url("airflow", driver="postgresql"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
            # Task logs go to S3 when a task ends: the API server reads them there, not from a worker.
            "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
            "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{s.s3_bucket}/airflow-logs",
            "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": s.aws_conn_id,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # A worker that stops heartbeating (a lost host) has its tasks failed, so retried on another
            # worker, after a minute (ASGARD_LOST_TASK_TIMEOUT) rather than Airflow's five.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(s.lost_task_timeout),
            **self.platform_env(),
        }

    def _airflow_component(self, name: str) -> Service:
        s = self.settings
        command = [name, *(["--skip-serve-logs"] if name in ("scheduler", "triggerer") else [])]
        return Service(
            name=name,
            argv=[str(venv_bin() / "airflow"), *command],
            health_url=f"{s.airflow_url}/api/v2/monitor/health",
            health_check=None if name == "api-server" else self._component_check(HEALTH_COMPONENTS[name]),
            port=s.airflow_port if name == "api-server" else 0,
            env=self._component_env(name),
            stop_signal=signal.SIGTERM,
            prepare=self._migrate if name == "api-server" else None,
        )

    def _worker(self, index: int) -> Service:
        name = f"worker-{index}"
        return Service(
            name=name,
            argv=[
                str(venv_bin() / "airflow"),
                "celery",
                "worker",
                "--celery-hostname",
                self.celery_node(name),
                "--skip-serve-logs",
                "--without-mingle",
                "--without-gossip",
            ],
            health_url=f"celery://{self.celery_node(name)}",
            health_check=lambda: self.celery_node_answers(name),
            port=0,
            # Only workers run user scripts: only they hold the reader's login those are given.
            env={
                **self._component_env(name),
                WORKER_NAME_VARIABLE: name,
                STORE_ACCESS_VARIABLE: self.store_access().as_env_value(),
            },
            # Celery's warm shutdown: running tasks finish (within the grace), none is taken.
            stop_signal=signal.SIGTERM,
            start_timeout=120.0,
        )

    def celery_node(self, worker: str) -> str:
        return f"{worker}@{self.settings.database_prefix}"

    def celery_node_answers(self, worker: str) -> bool:
        """Whether a worker answers a ping over the broker (it consumes tasks)."""
        from celery import Celery

        app = Celery(broker=self.airflow_env()["AIRFLOW__CELERY__BROKER_URL"])
        try:
            replies = app.control.ping(destination=[self.celery_node(worker)], timeout=1.0)
        except Exception:  # the broker not answering is an unhealthy worker, whatever the error
            return False
        finally:
            app.close()
        return bool(replies)

    def _component_env(self, name: str) -> dict[str, str]:
        """A component's environment: its own HOME, scratch folder and log folder, as on a host of its own."""
        host, scratch = self.host_dir(name), self.scratch_dir(name)
        for folder in (host / "home", host / "logs", scratch):
            folder.mkdir(parents=True, exist_ok=True)
        return {
            **self.airflow_env(),
            "PYTHONPATH": str(self.settings.plugins_folder),
            "HOME": str(host / "home"),
            "TMPDIR": str(scratch),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(host / "logs"),
        }

    def host_dir(self, name: str) -> Path:
        return self.settings.home / "hosts" / name

    def scratch_dir(self, name: str) -> Path:
        """A component's temporary folder: short and outside ASGARD_HOME, since the unix sockets of a
        script's doors live in it (at most 107 bytes a path); one per home (a hash of its path)."""
        digest = hashlib.sha256(str(self.settings.home).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"asgard-{digest}" / name

    def _component_check(self, component: str) -> Callable[[], bool]:
        def healthy() -> bool:
            import httpx

            try:
                body = httpx.get(f"{self.settings.airflow_url}/api/v2/monitor/health", timeout=3.0).json()
            except (httpx.HTTPError, ValueError):
                return False
            return (body.get(component) or {}).get("status") == "healthy"

        return healthy

    def _migrate(self) -> None:
        """The logins, then the metadata database migrated (idempotent) and the users' teams in it, before
        the API server starts (:meth:`_sync_airflow_teams`, in the API server's environment)."""
        self._prepare_airflow()
