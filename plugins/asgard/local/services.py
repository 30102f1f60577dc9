"""The embedded services: MLflow, a private Docker engine, the OCI registry, the router and Airflow.

How each is run and when it is up; :mod:`asgard.local.processes` starts, watches and stops them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from asgard.core.settings import LOCAL_BASE_IMAGE, REPO_ROOT, Settings
from asgard.local.processes import ProcessSupervisor, Service, ServiceError, write_private

ADMIN_USER = "admin"
# A read-only login (Airflow's viewer role): for dashboards, and to prove what a reader may not do.
VIEWER_USER = "viewer"
REGISTRY_USER = "asgard"
BASE_IMAGE_TARBALL = REPO_ROOT / ".cache" / "python-base-bookworm.tar"


def venv_bin() -> Path:
    """The bin folder of the interpreter running us: Airflow's components spawn ``airflow`` from PATH."""
    return Path(sys.executable).parent


class ServiceManager(ProcessSupervisor):
    """The embedded services of one :class:`Settings`: what they are, and how they are started."""

    @staticmethod
    def for_settings(settings: Settings, *, base_env: dict[str, str] | None = None) -> ServiceManager:
        """The services of the settings' profile (production: :mod:`asgard.local.production`)."""
        if settings.profile == "production":
            from asgard.local.production import ProductionServices

            return ProductionServices(settings, base_env=base_env)
        return ServiceManager(settings, base_env=base_env)

    # ----------------------------------------------------------------- definitions
    def services(self) -> list[Service]:
        """The services in start order (Airflow last: its tasks talk to all the others)."""
        return [self._mlflow(), self._docker(), self._registry(), self._router(), self._airflow()]

    def _mlflow(self) -> Service:
        s = self.settings
        backend, artifacts, stores_env = self.mlflow_stores()
        return Service(
            name="mlflow",
            argv=[
                str(venv_bin() / "mlflow"),
                "server",
                # Artifacts go through the server (mlflow-artifacts:/), as they do in production,
                # so clients never need the artifact store's own credentials.
                "--artifacts-destination",
                artifacts,
                "--serve-artifacts",
                "--host",
                s.bind_host,
                "--port",
                str(s.mlflow_port),
                "--workers",
                "1",
            ],
            health_url=f"{s.mlflow_url}/health",
            port=s.mlflow_port,
            env={
                # Through the environment, not the command line: no password in the process list.
                "MLFLOW_BACKEND_STORE_URI": backend,
                # MLflow's job runner (four huey consumer processes, for GenAI scorers and trace archival)
                # does nothing for the platform and costs ~20 s of CPU at start on a two-core machine.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                **stores_env,
            },
            stop_signal=signal.SIGTERM,
            prepare=lambda: s.mlflow_dir.mkdir(parents=True, exist_ok=True),
        )

    def mlflow_stores(self) -> tuple[str, str, dict[str, str]]:
        """MLflow's backend store URI, its artifacts' destination, and what else its process needs to reach them."""
        s = self.settings
        return f"sqlite:///{s.mlflow_dir / 'mlflow.db'}", str(s.mlflow_dir / "artifacts"), {}

    def _docker(self) -> Service:
        """A private Docker engine: its own socket, data and exec roots; host networking left alone."""
        s = self.settings
        socket_path = s.state_dir / "docker.sock"
        exec_root = self.docker_exec_root
        return Service(
            name="docker",
            argv=[
                "dockerd",
                "--host",
                f"unix://{socket_path}",
                "--data-root",
                str(s.home / "docker"),
                "--exec-root",
                str(exec_root),
                "--pidfile",
                str(s.state_dir / "dockerd.pid"),
                # No default bridge, no iptables, no forwarding: builds use the host network (loopback);
                # each serving container gets a bridge of its own (asgard.deploy.docker_target).
                "--iptables=false",
                "--ip-forward=false",
                "--bridge=none",
                # A /28 per serving network: an engine's default pools hold 31 networks, and bridges an
                # engine leaves behind when it is killed keep their subnets from the next one. Not in
                # 172.16/12, where Docker's default pools put other engines' /16 networks: Docker 20.10
                # tries a pool's subnets in order, checking each against the host's routes with a route
                # dump of its own, so one /16 in the way cost 4,096 checks per network created (a
                # minute and more on a busy machine).
                "--default-address-pool",
                "base=10.213.0.0/16,size=28",
            ],
            health_url="http://docker/_ping",
            health_socket=str(socket_path),
            port=0,
            stop_signal=signal.SIGTERM,
            stops_its_children=True,
            start_timeout=60.0,
            prepare=lambda: self.settings.state_dir.mkdir(parents=True, exist_ok=True),
            after_start=self._load_base_image,
            after_stop=self._release_docker_mounts,
            # Run by its supervisor after every (re)start and on a timer: an engine that came back
            # finds its routed serving containers exited.
            reconcile=self.reconcile_serving,
        )

    def reconcile_serving(self) -> None:
        """Every serving container the route table names running and answering (:mod:`asgard.local.reconcile`)."""
        from asgard.local.reconcile import reconcile_serving

        reconcile_serving(self.settings)

    @property
    def docker_exec_root(self) -> Path:
        """The engine's runtime folder: short and outside ASGARD_HOME, since containerd's unix sockets
        live in it and a socket path may not exceed 107 bytes; one per home (a hash of its path)."""
        digest = hashlib.sha256(str(self.settings.home).encode()).hexdigest()[:12]
        base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
        return base / f"asgard-docker-{digest}"

    def _release_docker_mounts(self) -> None:
        """Stop what a stopped engine may leave running (a container's shim) and unmount what it may leave
        mounted (its network namespace, overlay layers), so nothing outlives it and ASGARD_HOME can be
        deleted."""
        import psutil

        roots = (str(self.docker_exec_root), str(self.settings.home / "docker"))
        leftovers = [
            process
            for process in psutil.process_iter(["cmdline"])
            if any(root in part for part in process.info["cmdline"] or [] for root in roots)
        ]
        for process in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        psutil.wait_procs(leftovers, timeout=10)
        with open("/proc/self/mounts") as mounts:
            targets = [line.split()[1] for line in mounts if line.split()[1].startswith(roots)]
        for target in sorted(targets, key=len, reverse=True):  # nested mounts first
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        shutil.rmtree(self.docker_exec_root, ignore_errors=True)

    def _load_base_image(self) -> None:
        """Import the local serving base (built by ./asgard setup) when the engine does not have it."""
        import docker

        client = docker.APIClient(base_url=self.settings.docker_url, version="auto")
        try:
            client.inspect_image(LOCAL_BASE_IMAGE)
            return
        except docker.errors.ImageNotFound:
            pass
        if not BASE_IMAGE_TARBALL.exists():
            raise ServiceError(f"docker: {BASE_IMAGE_TARBALL} is missing; run ./asgard setup (as root) to build it")
        repository, tag = LOCAL_BASE_IMAGE.split(":")
        client.import_image(
            src=str(BASE_IMAGE_TARBALL),
            repository=repository,
            tag=tag,
            changes=["ENV LANG=C.UTF-8", 'CMD ["python3"]'],
        )

    def _registry(self) -> Service:
        """A local OCI registry (distribution) standing in for ECR, with basic auth like a real one."""
        s = self.settings
        config = s.state_dir / "registry.yml"
        return Service(
            name="registry",
            argv=["docker-registry", "serve", str(config)],
            health_url=f"http://{s.registry_address}/",
            port=s.registry_port,
            stop_signal=signal.SIGTERM,
            start_timeout=30.0,
            prepare=lambda: self._prepare_registry(config),
        )

    def registry_credentials(self) -> tuple[str, str]:
        """The login of the local registry (created on first start)."""
        path = self.settings.state_dir / "registry-secrets.json"
        if not path.exists():
            write_private(path, json.dumps({"user": REGISTRY_USER, "password": secrets.token_urlsafe(18)}))
        record = json.loads(path.read_text())
        return record["user"], record["password"]

    def _prepare_registry(self, config: Path) -> None:
        s = self.settings
        user, password = self.registry_credentials()
        htpasswd = s.state_dir / "registry.htpasswd"
        # distribution only accepts bcrypt; the password goes through stdin, never the command line.
        result = subprocess.run(["htpasswd", "-niB", user], input=password, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(f"registry: htpasswd failed: {result.stderr.strip()} (apt-get install apache2-utils)")
        write_private(htpasswd, result.stdout)
        storage = s.home / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        write_private(
            config,
            json.dumps(  # JSON is YAML: no YAML writer needed
                {
                    "version": 0.1,
                    "log": {"level": "warn"},
                    "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
                    "http": {"addr": s.registry_address, "secret": secrets.token_urlsafe(24)},
                    "auth": {"htpasswd": {"realm": "asgard", "path": str(htpasswd)}},
                }
            ),
        )

    def online_door_environment(self) -> dict[str, str]:
        """What makes the router open the online store's door: nothing here (the embedded store is a
        SQLite file, mounted read-only into serving containers); the production profile's is Redis."""
        return {}

    def _router(self) -> Service:
        """The stable model endpoint the Docker deploy target switches between containers."""
        from asgard.deploy.routes import owner_of

        s = self.settings
        # Its profile and installation last: it forwards to their routes only.
        owner = [s.profile, owner_of(s)["install"]]
        return Service(
            name="router",
            argv=[
                sys.executable,
                "-m",
                "asgard.local.router",
                str(s.routes_file),
                s.bind_host,
                str(s.router_port),
                *owner,
            ],
            # A router of the home's other profile on this port is not this profile's (it answers 409).
            health_url=f"{s.router_url}/health?profile={s.profile}",
            port=s.router_port,
            # The serving app's package too: the router compares a shadow's answers as the image does.
            env={
                "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT / 'include' / 'serving'}",
                **self.online_door_environment(),
            },
            stop_signal=signal.SIGTERM,
            start_timeout=30.0,
            prepare=lambda: s.state_dir.mkdir(parents=True, exist_ok=True),
        )

    def _airflow(self) -> Service:
        s = self.settings
        return Service(
            name="airflow",
            # airflow standalone, without the log servers that would listen on every interface
            argv=[str(venv_bin() / "python"), "-m", "asgard.local.airflow_standalone"],
            health_url=f"{s.airflow_url}/api/v2/monitor/health",
            port=s.airflow_port,
            env={**self.airflow_env(), "PYTHONPATH": str(REPO_ROOT / "plugins")},
            prepare=self._prepare_airflow,
            stops_its_children=True,
        )

    def platform_env(self) -> dict[str, str]:
        """Where the stores are and how to log in, beyond the settings (embedded: all in the settings)."""
        return {}

    def airflow_env(self) -> dict[str, str]:
        """The environment of every Airflow component (and so of every task) in the embedded profile."""
        s = self.settings
        secrets_ = self._airflow_secrets()
        return {
            # Every setting of this installation (ports, home, data roots...): tasks and the API
            # server's /mlops routes see the same platform as the command that started them.
            **s.as_env(),
            "AIRFLOW_HOME": str(s.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(s.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(s.plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Two cores: a small parallelism keeps idle memory ~1.8 GiB instead of ~5.6 GiB.
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
            "AIRFLOW__API__HOST": s.bind_host,
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__WORKERS": "1",
            # Workers report task state to the API server: it must follow the configured port.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url}/execution/",
            # Teams are Airflow's own (multi_team): the simple auth manager's "user:role:team1|team2".
            "AIRFLOW__CORE__MULTI_TEAM": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(self.airflow_users()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets_["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": secrets_["secret_key"],
            # New DAG files show up within seconds, not minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "15",
            # An unchanged DAG file is parsed again every 10 minutes, not every 30 s (Airflow's default):
            # the platform's DAGs are static, and parsing all of them every 30 s took ~17% of one core
            # (measured on two cores). An edited file is parsed at once all the same: the processor queues
            # files modified since their last parse whatever this interval.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            # The scheduler's own health server would listen on every interface, on a port two
            # stacks on one machine would share; /api/v2/monitor/health reports the scheduler anyway.
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # The scheduler loop sleeps this long when idle: it is the gap between one task ending and
            # the next starting. One machine, few DAGs: a short sleep costs little CPU.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            # A crashed scheduler takes its LocalExecutor's tasks with it. Its successor resets the tasks a
            # dead scheduler queued (so they run again) when it checks for them: every 30 s, not Airflow's
            # 5 minutes; a task whose process is gone otherwise is failed, so retried, after a minute
            # (ASGARD_LOST_TASK_TIMEOUT) rather than five.
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(s.lost_task_timeout),
            # Connections of the embedded profile; production sets its own (secrets backend or env).
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
                {"conn_type": "http", "host": s.bind_host, "port": s.mlflow_port, "schema": "http"}
            ),
            "AIRFLOW_CONN_ASGARD_REGISTRY": self.registry_connection(),
            "PATH": f"{venv_bin()}{os.pathsep}{self.base_env.get('PATH', '')}",
        }

    def registry_connection(self) -> str:
        """The Docker connection (basic auth) of the local registry, as an AIRFLOW_CONN_* value."""
        user, password = self.registry_credentials()
        return json.dumps(
            {
                "conn_type": "docker",
                "host": self.settings.bind_host,
                "port": self.settings.registry_port,
                "login": user,
                "password": password,
            }
        )

    def airflow_users(self) -> list[str]:
        """The simple auth manager's users: the admin and the viewer in the default team, then the
        ``airflow_users`` setting's (``alice:user:a,bob:user:b|c``)."""
        team = self.settings.default_team
        return [f"{ADMIN_USER}:admin:{team}", f"{VIEWER_USER}:viewer:{team}", *self.settings.airflow_user_list]

    @property
    def passwords_file(self) -> Path:
        return self.settings.airflow_home / "simple_auth_manager_passwords.json"

    def admin_credentials(self) -> tuple[str, str]:
        """The UI/API login of the embedded Airflow (created on first start)."""
        return self.credentials(ADMIN_USER)

    def credentials(self, user: str) -> tuple[str, str]:
        """A login of the embedded Airflow (``admin``, or the read-only ``viewer``), created on first start."""
        if not self.passwords_file.exists():
            raise ServiceError(f"no Airflow login yet: {self.passwords_file} is created by `start`")
        return user, json.loads(self.passwords_file.read_text())[user]

    def _prepare_airflow(self) -> None:
        self.settings.airflow_home.mkdir(parents=True, exist_ok=True)
        passwords = json.loads(self.passwords_file.read_text()) if self.passwords_file.exists() else {}
        users = [entry.split(":", 1)[0] for entry in self.airflow_users()]
        missing = {user: secrets.token_urlsafe(12) for user in users if user not in passwords}
        if missing:
            write_private(self.passwords_file, json.dumps({**passwords, **missing}))
        self._sync_airflow_teams()

    def _sync_airflow_teams(self) -> None:
        """The metadata database created or migrated, and the users' teams in it (asgard.local.airflow_teams)."""
        from asgard.local.airflow_teams import sync_in_subprocess, teams_named

        environment = {**self.base_env, **self.airflow_env(), "PYTHONPATH": str(self.settings.plugins_folder)}
        sync_in_subprocess(teams_named(self.airflow_users(), self.settings.default_team), environment)

    def _airflow_secrets(self) -> dict[str, str]:
        path = self.settings.state_dir / "airflow-secrets.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(
                path, json.dumps({"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)})
            )
        return json.loads(path.read_text())
